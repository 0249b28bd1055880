//! Browser facade (wasm32): the `#[wasm_bindgen]` [`Tagger`] over the core, plus
//! the browser I/O that is synchronous — `document.cookie` and `localStorage`,
//! imported from five small functions in `js/io.js` (cheaper than web-sys and
//! js-sys glue, and they catch every browser exception on the JS side). Network sends (`fetch` with `keepalive`, `sendBeacon`), timers
//! and DOM events live in the hand-written ESM facade (`js/index.js`), which calls
//! this type; every decision (which cookie, consent, what to store, what is due,
//! what a reply means) is made here or in [`crate::tag_queue`].
//!
//! Size rules (see STYLE.md): no `format!`, no `Debug`, no serde_json on these
//! paths; results are short codes the facade turns into `IdtagError`s or outcomes.
//! Nothing here unwraps a JS value: every missing global or throwing API falls
//! back (no cookie, memory-only queue).

mod alloc;

/// The browser build's allocator (see [`alloc`]): a few hundred bytes instead of dlmalloc's ~7 KB.
#[global_allocator]
static ALLOC: alloc::ClassAlloc = alloc::ClassAlloc::new();

use crate::cookie;
use crate::munchkin::{self, Preferences};
use crate::tag_queue::{Enqueued, Queue, Reply, STORAGE_KEY};
use crate::wire::Consent;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/io.js")]
extern "C" {
    #[wasm_bindgen(js_name = readCookie)]
    fn read_cookie() -> String;
    #[wasm_bindgen(js_name = writeCookie)]
    fn write_cookie(line: &str);
    #[wasm_bindgen(js_name = hostName)]
    fn host_name() -> String;
    #[wasm_bindgen(js_name = storageGet)]
    fn storage_get(key: &str) -> Option<String>;
    #[wasm_bindgen(js_name = storageSet)]
    fn storage_set(key: &str, value: &str) -> bool;
}

/// True for a Munchkin id such as `123-ABC-456` (the facade validates its config with it).
#[wasm_bindgen(js_name = isMunchkinId)]
pub fn is_munchkin_id(s: &str) -> bool {
    munchkin::is_munchkin_id(s)
}

/// The identity tagger of one page: selects the `_mkto_trk` cookie, applies
/// consent, and keeps the durable queue of tag requests.
#[wasm_bindgen]
pub struct Tagger {
    prefs: Preferences,
    consent: Consent,
    owner: String,
    memory: Queue,
    storage_ok: bool,
}

fn parse_consent(s: &str) -> Option<Consent> {
    match s {
        "granted" => Some(Consent::Granted),
        "denied" => Some(Consent::Denied),
        "pending" => Some(Consent::Pending),
        _ => None,
    }
}

/// `document.cookie`, or empty when there is no document or reading it throws
/// (sandboxed frames, cookies disabled).
fn cookie_string() -> String {
    read_cookie()
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[wasm_bindgen]
impl Tagger {
    /// A tagger for this page. `owner` is a random id of this tab (its leases on
    /// queue items); `consent` is `granted`, `denied` or `pending` (anything else
    /// counts as `pending`).
    #[wasm_bindgen(constructor)]
    pub fn new(
        munchkin_id: Option<String>,
        cookie_domain: Option<String>,
        consent: &str,
        owner: String,
    ) -> Tagger {
        let mut t = Tagger {
            prefs: Preferences {
                munchkin_id: non_empty(munchkin_id),
                cookie_domain: non_empty(cookie_domain),
            },
            consent: parse_consent(consent).unwrap_or(Consent::Pending),
            owner,
            memory: Queue::default(),
            storage_ok: true,
        };
        t.enforce_denied();
        t
    }

    /// True when the Munchkin opt-out cookie (`mkto_opt_out=true`) is present.
    #[wasm_bindgen(js_name = optedOut)]
    pub fn opted_out(&self) -> bool {
        cookie::values_named(&cookie_string(), "mkto_opt_out").any(|v| v == "true")
    }

    /// The consent in force: `denied` when opted out, else what the page set.
    pub fn consent(&self) -> String {
        self.effective().as_str().to_owned()
    }

    /// Changes consent. `denied` clears stored and held work; `granted` moves
    /// work held in memory into storage. Returns false for an unknown value.
    #[wasm_bindgen(js_name = setConsent)]
    pub fn set_consent(&mut self, consent: &str) -> bool {
        let Some(c) = parse_consent(consent) else {
            return false;
        };
        self.consent = c;
        if self.enforce_denied() == Consent::Granted && !self.memory.is_empty() {
            // An empty update merges the memory queue into storage.
            self.with_queue(|_| ());
        }
        true
    }

    /// The selected `_mkto_trk` value to hand over, or `undefined` when there is
    /// none or consent is not granted.
    pub fn cookie(&mut self) -> Option<String> {
        if self.enforce_denied() != Consent::Granted {
            return None;
        }
        self.selected()
    }

    /// True while the queue lives in `localStorage`; false once storage was
    /// missing or threw and the tagger fell back to memory.
    pub fn persistent(&self) -> bool {
        self.storage_ok && storage_get(STORAGE_KEY).is_some()
    }

    /// Stores a tag request for `token` before anything is sent. Returns
    /// `queued`, `duplicate` (pair sent before), `consent_denied` or
    /// `rejected:malformed`. With consent pending the request is held in memory.
    pub fn enqueue(&mut self, token: &str, page: &str, now: f64) -> String {
        if self.enforce_denied() == Consent::Denied {
            return "consent_denied".into();
        }
        let cookie = self.selected();
        let now = now as i64;
        let r = self.with_queue(|q| q.enqueue(token, cookie.as_deref(), page, now));
        match r {
            Enqueued::Queued => "queued",
            Enqueued::Duplicate => "duplicate",
            Enqueued::Malformed => "rejected:malformed",
        }
        .into()
    }

    /// Leases every due item to this tab (filling in the cookie for items that
    /// waited for Munchkin) and returns `[token, body, token, body, …]`: the JSON
    /// tag requests to send now. Empty unless consent is granted.
    pub fn claim(&mut self, now: f64) -> Vec<String> {
        if self.enforce_denied() != Consent::Granted {
            return Vec::new();
        }
        let cookie = self.selected();
        let owner = self.owner.clone();
        let now = now as i64;
        self.with_queue(|q| {
            let tokens = q.claim(&owner, cookie.as_deref(), now);
            let mut out = Vec::with_capacity(tokens.len() * 2);
            for t in tokens {
                if let Some(body) = q.request_body(&t) {
                    out.push(t);
                    out.push(body);
                }
            }
            out
        })
    }

    /// Records the endpoint's reply for `token` (`status` 0 for a network error,
    /// `duplicate` when the body said so) and returns `sent`, `duplicate`,
    /// `rejected` or `retry`. `rand` in [0, 1) jitters the retry delay.
    pub fn complete(
        &mut self,
        token: &str,
        status: u16,
        duplicate: bool,
        now: f64,
        rand: f64,
    ) -> String {
        let reply = Reply::from_status(status, duplicate);
        if self.enforce_denied() != Consent::Denied {
            self.with_queue(|q| q.complete(token, reply, now as i64, rand));
        }
        match reply {
            Reply::Sent => "sent",
            Reply::Duplicate => "duplicate",
            Reply::Rejected => "rejected",
            Reply::Retry => "retry",
        }
        .into()
    }

    /// True while `token` waits in the queue.
    pub fn queued(&mut self, token: &str) -> bool {
        self.with_queue(|q| q.contains(token))
    }

    /// When the next queued item becomes due (Unix ms), or -1 when none waits
    /// with a cookie.
    #[wasm_bindgen(js_name = nextDue)]
    pub fn next_due(&mut self) -> f64 {
        self.with_queue(|q| q.next_due_ms())
            .map_or(-1.0, |t| t as f64)
    }

    /// Forgets the last identity (logout): clears queued work and the memory of
    /// sent pairs, so the next user of this browser is handed over on their own.
    ///
    /// The `_mkto_trk` cookie is Munchkin's and stays by default: the visitor's
    /// history continues, a repeat login costs nothing, and if the next person
    /// logs in with it the server records a conflict instead of merging the two.
    /// With `forget_visitor` the cookie is expired on this host, its parent
    /// domains and the configured cookie domain, so Munchkin starts a new
    /// anonymous visitor (kiosks, shared machines).
    pub fn reset(&mut self, forget_visitor: bool) {
        self.clear_all();
        if !forget_visitor {
            return;
        }
        for line in expire_lines(&host_name(), self.prefs.cookie_domain.as_deref()) {
            write_cookie(&line);
        }
    }
}

/// `document.cookie` assignments that expire `_mkto_trk` on the host, on every
/// parent domain of it, and on the configured cookie domain.
fn expire_lines(host: &str, cookie_domain: Option<&str>) -> Vec<String> {
    const TAIL: &str = "=; expires=Thu, 01 Jan 1970 00:00:00 GMT; path=/";
    let mut domains: Vec<&str> = Vec::new();
    let mut rest = host;
    while !rest.is_empty() {
        domains.push(rest);
        rest = rest.split_once('.').map_or("", |(_, r)| r);
    }
    if let Some(d) = cookie_domain {
        domains.push(d.trim_start_matches('.'));
    }
    let mut out = Vec::with_capacity(domains.len() + 1);
    let base = [munchkin::COOKIE_NAME, TAIL].concat();
    for d in domains {
        out.push([base.as_str(), "; domain=", d].concat());
    }
    out.push(base);
    out
}

impl Tagger {
    fn effective(&self) -> Consent {
        if self.opted_out() {
            Consent::Denied
        } else {
            self.consent
        }
    }

    /// Applies denied consent (page choice or opt-out cookie): nothing stored or held.
    fn enforce_denied(&mut self) -> Consent {
        let c = self.effective();
        if c == Consent::Denied {
            self.clear_all();
        }
        c
    }

    fn clear_all(&mut self) {
        self.memory = Queue::default();
        storage_set(STORAGE_KEY, "");
    }

    fn selected(&self) -> Option<String> {
        munchkin::select(&cookie_string(), &self.prefs)
            .selected
            .map(|c| c.value)
    }

    /// Runs `f` on the queue: read-modify-write of `localStorage` in one
    /// synchronous step when consent is granted and storage works; the memory
    /// queue otherwise (consent pending, storage missing, blocked or full).
    /// Generic over `f` but thin: loading and storing are shared, not copied per caller.
    fn with_queue<R>(&mut self, f: impl FnOnce(&mut Queue) -> R) -> R {
        let (mut q, persist) = self.load();
        let r = f(&mut q);
        self.store(q, persist);
        r
    }

    /// The queue for this call, and whether it came from storage.
    #[inline(never)]
    fn load(&mut self) -> (Queue, bool) {
        if self.consent == Consent::Granted && self.storage_ok {
            if let Some(text) = storage_get(STORAGE_KEY) {
                let mut q = Queue::from_text(&text);
                let held = core::mem::take(&mut self.memory);
                if !held.is_empty() {
                    q.merge(held, i64::MIN);
                }
                return (q, true);
            }
            // Storage missing or throwing: memory from now on.
            self.storage_ok = false;
        }
        (core::mem::take(&mut self.memory), false)
    }

    /// Writes the queue back where [`Tagger::load`] found it; falls back to
    /// memory when the write fails (quota, blocked storage).
    #[inline(never)]
    fn store(&mut self, q: Queue, persist: bool) {
        if persist {
            let out = if q.is_empty() { String::new() } else { q.to_text() };
            if storage_set(STORAGE_KEY, &out) {
                return;
            }
            self.storage_ok = false;
        }
        self.memory = q;
    }
}
