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
// Two tag tokens of one person (the facade reads `sub` and `email` from the
// payload and hands them over as `CLAIMS`; the lifetime as `TTL`).
const T1: &str = "v1.eyJzdWIiOiJ1MSJ9.sig1";
const T2: &str = "v1.eyJzdWIiOiJ1MSJ9.sig2";
const CLAIMS: &str = "u1\na@example.com";
const TTL: Option<i64> = Some(600_000);

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

fn enq(t: &mut Tagger, token: &str, now: f64) -> String {
    t.enqueue(token, "https://p/", CLAIMS, TTL, now)
}

/// The send lines of a claim (token, cookie, page, ts).
fn lines(claimed: &str) -> Vec<Vec<String>> {
    claimed
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
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
    let bad = Tagger::new(Some("123-AB-456".into()), None, "granted", "a".into());
    assert_eq!(bad.config_error(), Some("invalid_munchkin_id"));
    assert_eq!(t.config_error(), None);
}

#[wasm_bindgen_test]
fn consent_pending_memory_granted_storage_denied_clears() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut t = Tagger::new(None, None, "pending", "a".into());
    assert_eq!(t.cookie(), None, "nothing handed over while pending");
    assert_eq!(enq(&mut t, T1, NOW), "queued", "held, not to be sent now");
    assert!(stored().is_none(), "pending holds work in memory only");
    assert!(t.claim(NOW).is_empty(), "nothing sent while pending");
    assert!(t.set_consent("granted"));
    assert!(
        stored().unwrap().contains(T1),
        "granted moves work to storage"
    );
    assert_eq!(lines(&t.claim(NOW))[0][0], T1, "and it is sent now");
    assert!(t.set_consent("denied"));
    assert!(stored().is_none(), "denied clears stored work");
    assert_eq!(enq(&mut t, T1, NOW), "consent_denied");
    assert!(!t.set_consent("maybe"));
}

#[wasm_bindgen_test]
fn a_tagger_that_stays_denied_does_not_wipe_work_stored_since() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut denied = Tagger::new(None, None, "denied", "a".into());
    let mut granted = tagger("b");
    assert!(enq(&mut granted, T1, NOW).starts_with("queued"));
    assert!(denied.claim(NOW).is_empty());
    assert_eq!(enq(&mut denied, T2, NOW), "consent_denied");
    assert!(
        stored().unwrap().contains(T1),
        "cleared once, when denial took effect"
    );
    assert!(denied.set_consent("denied"));
    assert!(stored().is_none(), "an explicit denial clears again");
}

#[wasm_bindgen_test]
fn opt_out_cookie_counts_as_denied() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut t = tagger("a");
    assert!(enq(&mut t, T1, NOW).starts_with("queued"));
    assert!(stored().is_some());
    doc().set_cookie("mkto_opt_out=true; path=/").unwrap();
    assert_eq!(t.consent(), "denied");
    assert_eq!(t.cookie(), None);
    assert!(t.claim(NOW).is_empty());
    assert!(stored().is_none(), "opt-out clears stored work");
    assert_eq!(enq(&mut t, T2, NOW), "consent_denied");
}

#[wasm_bindgen_test]
fn throwing_storage_falls_back_to_memory() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    js("Storage.prototype.setItem = function () { throw new DOMException('full', 'QuotaExceededError'); };");
    let mut t = tagger("a");
    let r = enq(&mut t, T1, NOW);
    assert!(!t.persistent());
    let sent = lines(r.split_once('\n').unwrap().1);
    assert_eq!(sent[0], [T1, COOKIE, "https://p/", "1700000000000"]);
    assert!(t.queued(T1), "the item lives on in memory");
    assert_eq!(t.complete(T1, 202, "queued", NOW, 0.5), "sent");
    assert!(!t.queued(T1));
    assert_eq!(
        enq(&mut t, T2, NOW),
        "duplicate",
        "memory remembers sent pairs"
    );

    js("Storage.prototype.getItem = function () { throw new DOMException('blocked', 'SecurityError'); };");
    let mut t = tagger("b");
    assert!(enq(&mut t, T1, NOW).starts_with("queued\n"));
    assert!(!t.persistent());
    assert!(t.queued(T1), "a second call still sees the memory queue");
    assert_eq!(t.complete(T1, 0, "", NOW, 0.5), "retry");
    assert_eq!(t.next_due(), Some(NOW as i64 + 2_000));
    assert_eq!(lines(&t.claim(NOW + 2_000.0))[0][0], T1);
    setup(&[]);
}

#[wasm_bindgen_test]
fn queue_survives_reload_and_waits_for_cookie() {
    setup(&[]);
    let mut page1 = tagger("tab-1");
    assert_eq!(
        page1.enqueue(T1, "https://p/1", CLAIMS, TTL, NOW),
        "queued",
        "no cookie: stored, nothing to send yet"
    );
    assert!(page1.claim(NOW).is_empty());
    assert_eq!(page1.next_due(), None);
    drop(page1);
    // A later page load (new instance) after Munchkin set the cookie.
    doc()
        .set_cookie(&["_mkto_trk=", COOKIE, "; path=/"].concat())
        .unwrap();
    let mut page2 = tagger("tab-1b");
    let claimed = lines(&page2.claim(NOW + 1000.0));
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0], [T1, COOKIE, "https://p/1", "1700000000000"]);
    // Network error: retried later with backoff, not immediately.
    assert_eq!(page2.complete(T1, 0, "", NOW + 1000.0, 0.5), "retry");
    assert!(page2.claim(NOW + 1001.0).is_empty());
    assert!(page2.next_due().unwrap() > NOW as i64 + 1000);
    let mut page3 = tagger("tab-1c");
    assert_eq!(lines(&page3.claim(NOW + 1000.0 + 2000.0)).len(), 1);
}

#[wasm_bindgen_test]
fn one_tab_sends_an_item_and_pairs_are_remembered() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut a = tagger("tab-a");
    let mut b = tagger("tab-b");
    assert!(
        enq(&mut a, T1, NOW).starts_with("queued\n"),
        "the enqueuing tab sends at once"
    );
    assert!(a.claim(NOW).is_empty(), "not handed out twice");
    assert!(b.claim(NOW + 10.0).is_empty(), "leased by tab a");
    assert_eq!(a.complete(T1, 202, "queued", NOW + 20.0, 0.5), "sent");
    assert!(!b.queued(T1));
    // A repeat login (new token, same person, same cookie) sends nothing, in any tab.
    assert_eq!(enq(&mut b, T2, NOW + 30.0), "duplicate");
    assert!(stored().unwrap().contains("\ns\t"));
    // The same token twice in one page is stored and sent once.
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut c = tagger("tab-c");
    assert!(enq(&mut c, T1, NOW).starts_with("queued\n"));
    assert_eq!(enq(&mut c, T1, NOW), "queued");
    // Endpoint says duplicate / rejects / answers something that is no tag reply.
    assert_eq!(c.complete(T1, 200, "duplicate", NOW, 0.5), "duplicate");
    assert_eq!(enq(&mut c, T2, NOW), "duplicate");
    for (status, body) in [(401, ""), (200, "")] {
        setup(&[&["_mkto_trk=", COOKIE].concat()]);
        enq(&mut c, T1, NOW);
        assert_eq!(c.complete(T1, status, body, NOW, 0.5), "rejected");
        assert!(!c.queued(T1));
        assert!(
            enq(&mut c, T2, NOW).starts_with("queued"),
            "not remembered as sent"
        );
    }
    assert_eq!(enq(&mut c, "not-a-token", NOW), "rejected:malformed");
}

#[wasm_bindgen_test]
fn reset_forgets_the_identity() {
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut t = tagger("a");
    enq(&mut t, T1, NOW);
    t.complete(T1, 202, "queued", NOW, 0.5);
    assert_eq!(enq(&mut t, T2, NOW), "duplicate");
    t.reset();
    assert!(stored().is_none());
    assert!(
        enq(&mut t, T2, NOW).starts_with("queued\n"),
        "after logout the pair is handed over again (the server decides)"
    );
    assert!(t.cookie().is_some(), "Munchkin's cookie stays");
}

#[wasm_bindgen_test]
fn the_facade_entry_point_dispatches_every_operation() {
    use idtag::browser::{op, Handle};
    setup(&[&["_mkto_trk=", COOKIE].concat()]);
    let mut h = Handle::new("123-ABC-456\0\0granted\0tab-h");
    let mut call = |o: u32, arg: &str, x: f64, y: f64| h.call(o, arg, NOW, x, y);
    assert_eq!(call(op::CONFIG_ERROR, "", 0.0, 0.0), "");
    assert_eq!(call(op::CONSENT, "", 0.0, 0.0), "granted");
    assert_eq!(call(op::COOKIE, "", 0.0, 0.0), COOKIE);
    assert_eq!(call(op::PERSISTENT, "", 0.0, 0.0), "1");
    // Claims may hold a NUL: only the first two NULs separate arguments.
    let r = call(
        op::ENQUEUE,
        &[T1, "\0https://p/\0", CLAIMS, "\0x"].concat(),
        600_000.0,
        0.0,
    );
    assert_eq!(
        r,
        ["queued\n", T1, "\t", COOKIE, "\thttps://p/\t1700000000000"].concat()
    );
    assert_eq!(call(op::QUEUED, T1, 0.0, 0.0), "1");
    assert_eq!(
        call(op::CLAIM, "", 0.0, 0.0),
        "",
        "leased to this tab already"
    );
    assert_eq!(
        call(op::COMPLETE, &[T1, "\0"].concat(), 503.0, 0.5),
        "retry"
    );
    assert_eq!(call(op::NEXT_DUE, "", 0.0, 0.0), "1700000002000");
    assert_eq!(
        call(op::COMPLETE, &[T1, "\0queued"].concat(), 202.0, 0.5),
        "sent"
    );
    assert_eq!(call(op::NEXT_DUE, "", 0.0, 0.0), "");
    assert_eq!(call(op::SET_CONSENT, "maybe", 0.0, 0.0), "");
    assert_eq!(call(op::SET_CONSENT, "pending", 0.0, 0.0), "1");
    assert_eq!(call(op::COOKIE, "", 0.0, 0.0), "");
    assert_eq!(call(op::RESET, "", 0.0, 0.0), "");
    assert_eq!(call(99, "", 0.0, 0.0), "");
    let mut bad = Handle::new("1-2-3\0\0\0");
    assert_eq!(
        bad.call(op::CONFIG_ERROR, "", NOW, 0.0, 0.0),
        "invalid_munchkin_id"
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
    // Freed blocks of a class are handed out again.
    let a = Box::new([7u8; 100]);
    let addr = &*a as *const [u8; 100] as usize;
    drop(a);
    let b = Box::new([9u8; 100]);
    assert_eq!(&*b as *const [u8; 100] as usize, addr);
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let pages: Vec<Box<Page>> = (0..4).map(|i| Box::new(Page([i; 4096]))).collect();
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(&**p as *const Page as usize % 4096, 0);
        assert!(p.0.iter().all(|&b| usize::from(b) == i));
    }
}
