//! The wasm `Tagger` in headless Chromium: cookie capture, consent, storage
//! fallback, queue persistence across instances (reloads) and tabs, and dedup.
#![cfg(target_arch = "wasm32")]

use idtag::browser::Tagger;
use idtag::tag_queue::STORAGE_KEY;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const NOW: f64 = 1_700_000_000_000.0;
const COOKIE: &str = "id:123-ABC-456&token:_mch-localhost-1700000000000-12345";
const OTHER: &str = "id:999-XYZ-999&token:_mch-localhost-1700000000000-777";
// Payloads {"sub":"u1","email":"a@example.com","exp":1700000600} and a second token
// for the same person ({"sub":"u1","email":"a@example.com","exp":1700000660}).
const T1: &str = "v1.eyJzdWIiOiJ1MSIsImVtYWlsIjoiYUBleGFtcGxlLmNvbSIsImV4cCI6MTcwMDAwMDYwMH0.sig1";
const T2: &str = "v1.eyJzdWIiOiJ1MSIsImVtYWlsIjoiYUBleGFtcGxlLmNvbSIsImV4cCI6MTcwMDAwMDY2MH0.sig2";

fn doc() -> web_sys::HtmlDocument {
    web_sys::window()
        .unwrap()
        .document()
        .unwrap()
        .unchecked_into()
}

fn js(src: &str) {
    js_sys::Function::new_no_args(src)
        .call0(&wasm_bindgen::JsValue::NULL)
        .unwrap();
}

/// Clean slate: no cookies of ours, empty storage, storage methods restored.
fn setup(cookies: &[&str]) {
    js("if (globalThis.__idtagSetItem) { Storage.prototype.setItem = globalThis.__idtagSetItem; Storage.prototype.getItem = globalThis.__idtagGetItem; }
        globalThis.__idtagSetItem = Storage.prototype.setItem; globalThis.__idtagGetItem = Storage.prototype.getItem;");
    for name in ["_mkto_trk", "mkto_opt_out"] {
        doc()
            .set_cookie(&[name, "=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/"].concat())
            .unwrap();
    }
    for c in cookies {
        doc().set_cookie(&[c, "; path=/"].concat()).unwrap();
    }
    web_sys::window()
        .unwrap()
        .local_storage()
        .unwrap()
        .unwrap()
        .clear()
        .unwrap();
}

fn stored() -> Option<String> {
    web_sys::window()
        .unwrap()
        .local_storage()
        .unwrap()
        .unwrap()
        .get_item(STORAGE_KEY)
        .unwrap()
}

fn tagger(owner: &str) -> Tagger {
    Tagger::new(Some("123-ABC-456".into()), None, "granted", owner.into())
}

#[wasm_bindgen_test]
fn cookie_capture_selects_configured_instance() {
    setup(&[&["_mkto_trk=", OTHER].concat()]);
    let mut t = tagger("a");
    assert_eq!(t.cookie(), None, "other instance only");
    let mut any = Tagger::new(None, None, "granted", "a".into());
    assert_eq!(any.cookie().as_deref(), Some(OTHER));
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    assert_eq!(t.cookie().as_deref(), Some(COOKIE));
    setup(&["_mkto_trk=undefined"]);
    assert_eq!(t.cookie(), None, "placeholder");
}

#[wasm_bindgen_test]
fn consent_pending_memory_granted_storage_denied_clears() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut t = Tagger::new(None, None, "pending", "a".into());
    assert_eq!(t.cookie(), None, "nothing handed over while pending");
    assert_eq!(t.enqueue(T1, "https://p/", NOW), "queued");
    assert!(stored().is_none(), "pending holds work in memory only");
    assert!(t.claim(NOW).is_empty(), "nothing sent while pending");
    assert!(t.set_consent("granted"));
    assert!(
        stored().unwrap().contains(T1),
        "granted moves work to storage"
    );
    assert_eq!(t.claim(NOW).len(), 2);
    assert!(t.set_consent("denied"));
    assert!(stored().is_none(), "denied clears stored work");
    assert_eq!(t.enqueue(T1, "https://p/", NOW), "consent_denied");
    assert!(!t.set_consent("maybe"));
}

#[wasm_bindgen_test]
fn opt_out_cookie_counts_as_denied() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut t = tagger("a");
    assert_eq!(t.enqueue(T1, "https://p/", NOW), "queued");
    assert!(stored().is_some());
    doc().set_cookie("mkto_opt_out=true; path=/").unwrap();
    assert_eq!(t.consent(), "denied");
    assert_eq!(t.cookie(), None);
    assert!(t.claim(NOW).is_empty());
    assert!(stored().is_none(), "opt-out clears stored work");
    assert_eq!(t.enqueue(T2, "https://p/", NOW), "consent_denied");
}

#[wasm_bindgen_test]
fn throwing_storage_falls_back_to_memory() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    js("Storage.prototype.setItem = function () { throw new DOMException('full', 'QuotaExceededError'); };");
    let mut t = tagger("a");
    assert_eq!(t.enqueue(T1, "https://p/", NOW), "queued");
    assert!(!t.persistent());
    let claimed = t.claim(NOW);
    assert_eq!(claimed[0], T1);
    assert!(claimed[1]
        .contains("\"_mkto_trk\":\"id:123-ABC-456&token:_mch-localhost-1700000000000-12345\""));
    assert_eq!(t.complete(T1, 202, false, NOW, 0.5), "sent");
    assert_eq!(
        t.enqueue(T2, "https://p/", NOW),
        "duplicate",
        "memory remembers sent pairs"
    );

    js("Storage.prototype.getItem = function () { throw new DOMException('blocked', 'SecurityError'); };");
    let mut t = tagger("b");
    assert_eq!(t.enqueue(T1, "https://p/", NOW), "queued");
    assert!(!t.persistent());
    setup(&[]);
}

#[wasm_bindgen_test]
fn queue_survives_reload_and_waits_for_cookie() {
    setup(&[]);
    let mut page1 = tagger("tab-1");
    assert_eq!(page1.enqueue(T1, "https://p/1", NOW), "queued");
    assert!(
        page1.claim(NOW).is_empty(),
        "no cookie yet: nothing to send"
    );
    drop(page1);
    // A later page load (new instance) after Munchkin set the cookie.
    doc()
        .set_cookie(&["_mkto_trk=", COOKIE, "; path=/"].concat())
        .unwrap();
    let mut page2 = tagger("tab-1b");
    let claimed = page2.claim(NOW + 1000.0);
    assert_eq!(claimed.len(), 2);
    assert!(claimed[1].contains("\"page\":\"https://p/1\""));
    // Network error: retried later with backoff, not immediately.
    assert_eq!(page2.complete(T1, 0, false, NOW + 1000.0, 0.5), "retry");
    assert!(page2.claim(NOW + 1001.0).is_empty());
    assert!(page2.next_due() > NOW + 1000.0);
    let mut page3 = tagger("tab-1c");
    assert_eq!(page3.claim(NOW + 1000.0 + 2000.0).len(), 2);
}

#[wasm_bindgen_test]
fn one_tab_sends_an_item_and_pairs_are_remembered() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut a = tagger("tab-a");
    let mut b = tagger("tab-b");
    assert_eq!(a.enqueue(T1, "https://p/", NOW), "queued");
    assert_eq!(a.claim(NOW).len(), 2);
    assert!(b.claim(NOW + 10.0).is_empty(), "leased by tab a");
    assert_eq!(a.complete(T1, 202, false, NOW + 20.0, 0.5), "sent");
    assert!(!b.queued(T1));
    // A repeat login (new token, same person, same cookie) sends nothing, in any tab.
    assert_eq!(b.enqueue(T2, "https://p/", NOW + 30.0), "duplicate");
    assert!(stored().unwrap().contains("\ns\t"));
    // Endpoint says duplicate / rejects.
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut c = tagger("tab-c");
    c.enqueue(T1, "https://p/", NOW);
    c.claim(NOW);
    assert_eq!(c.complete(T1, 200, true, NOW, 0.5), "duplicate");
    assert_eq!(c.enqueue(T2, "https://p/", NOW), "duplicate");
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    c.enqueue(T1, "https://p/", NOW);
    c.claim(NOW);
    assert_eq!(c.complete(T1, 401, false, NOW, 0.5), "rejected");
    assert!(!c.queued(T1));
    assert_eq!(
        c.enqueue("not-a-token", "https://p/", NOW),
        "rejected:malformed"
    );
}

#[wasm_bindgen_test]
fn reset_forgets_identity_and_keeps_or_forgets_the_visitor() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut t = tagger("a");
    t.enqueue(T1, "https://p/", NOW);
    t.claim(NOW);
    t.complete(T1, 202, false, NOW, 0.5);
    t.enqueue(T2, "https://p/", NOW);
    t.reset(false);
    assert!(stored().is_none());
    assert!(!t.queued(T2));
    assert!(t.cookie().is_some(), "Munchkin's cookie stays by default");
    t.reset(true);
    assert_eq!(
        t.cookie(),
        None,
        "_mkto_trk expired: Munchkin starts a new visitor"
    );
}

#[wasm_bindgen_test]
fn allocator_grows_reuses_and_aligns() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..200_000u64 {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), 199_999 * 200_000 / 2);
    drop(v);
    let s: Vec<String> = (0..2000).map(|i| "x".repeat(i % 97)).collect();
    assert!(s.iter().enumerate().all(|(i, x)| x.len() == i % 97));
    drop(s);
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let pages: Vec<Box<Page>> = (0..4).map(|i| Box::new(Page([i; 4096]))).collect();
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(&**p as *const Page as usize % 4096, 0);
        assert!(p.0.iter().all(|&b| usize::from(b) == i));
    }
}
