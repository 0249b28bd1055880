//! Browser facade (wasm32): the [`Tagger`] over the core, plus the browser I/O
//! that is synchronous — `document.cookie` and `localStorage`, imported from
//! four small functions in `js/io.js` (cheaper than web-sys and js-sys glue, and
//! they catch every browser exception on the JS side). Network sends (`fetch`
//! with `keepalive`, `sendBeacon`), timers, DOM events, reading a tag token's
//! claims (the browser's own `atob` and `JSON.parse`) and building the request
//! JSON live in the hand-written ESM facade (`js/index.js`); every decision
//! (which cookie, consent, what to store, what is due, what a reply means) is
//! made here or in [`crate::tag_queue`].
//!
//! The facade reaches the tagger through one exported entry point,
//! [`Handle::call`], with an operation code ([`op`]) and string arguments: each
//! wasm export costs its own glue and inlined copies, and one keeps the
//! package small. Rust code and the wasm tests use [`Tagger`]'s typed methods.
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
use crate::tag_queue::{self, Enqueued, Person, Queue, Reply, ReplyBody, STORAGE_KEY};
use crate::wire::Consent;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/io.js")]
extern "C" {
    #[wasm_bindgen(js_name = readCookie)]
    fn read_cookie() -> String;
    #[wasm_bindgen(js_name = storageGet)]
    fn storage_get(key: &str) -> Option<String>;
    #[wasm_bindgen(js_name = storageSet)]
    fn storage_set(key: &str, value: &str) -> bool;
}

/// Operation codes of [`Handle::call`] (mirrored in `js/index.js`).
pub mod op {
    /// `""` when the configuration is valid, else an error code.
    pub const CONFIG_ERROR: u32 = 0;
    /// The consent in force.
    pub const CONSENT: u32 = 1;
    /// `arg` = consent; `"1"` when accepted.
    pub const SET_CONSENT: u32 = 2;
    /// The selected `_mkto_trk` value, or `""`.
    pub const COOKIE: u32 = 3;
    /// `"1"` while the queue lives in localStorage.
    pub const PERSISTENT: u32 = 4;
    /// `arg` = token `\0` page `\0` claims, `x` = token lifetime in ms (NaN when
    /// unknown): the outcome, then (when this tab is to send it now) `\n` and
    /// the item's send line.
    pub const ENQUEUE: u32 = 5;
    /// Send lines of the items claimed by this tab, one per line.
    pub const CLAIM: u32 = 6;
    /// `arg` = token `\0` body (`queued`, `duplicate` or other), `x` = HTTP
    /// status (0: network error), `y` = random in [0, 1): `sent`, `duplicate`,
    /// `rejected` or `retry`.
    pub const COMPLETE: u32 = 7;
    /// `arg` = token: `"1"` while it waits in the queue.
    pub const QUEUED: u32 = 8;
    /// When the next item is due (Unix ms), or `""`.
    pub const NEXT_DUE: u32 = 9;
    /// Forgets queued work and sent pairs (logout).
    pub const RESET: u32 = 10;
}

/// The identity tagger of one page: selects the `_mkto_trk` cookie, applies
/// consent, and keeps the durable queue of tag requests.
pub struct Tagger {
    prefs: Preferences,
    consent: Consent,
    owner: String,
    memory: Queue,
    storage_ok: bool,
    /// Denied consent was applied (work cleared) and is still in force.
    cleared: bool,
}

/// The tagger as the JS facade sees it (`new Tagger(config)` and `call`).
#[wasm_bindgen(js_name = Tagger)]
pub struct Handle(Tagger);

#[wasm_bindgen(js_class = Tagger)]
impl Handle {
    /// `config` is `munchkin id \0 cookie domain \0 consent \0 owner` (empty
    /// parts for none; `owner` is a random id of this tab).
    #[wasm_bindgen(constructor)]
    pub fn new(config: &str) -> Handle {
        let mut parts = cookie::split_on(config, 0);
        let mut next = || parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
        let (id, domain, consent, owner) = (next(), next(), next(), next());
        Handle(Tagger::new(
            id,
            domain,
            consent.as_deref().unwrap_or(""),
            owner.unwrap_or_default(),
        ))
    }

    /// Runs operation `op` (see [`op`]) and returns its string result.
    pub fn call(&mut self, op: u32, arg: &str, now: f64, x: f64, y: f64) -> String {
        let t = &mut self.0;
        let flag = |b: bool| if b { "1" } else { "" }.to_owned();
        // Arguments are NUL-separated; the last one (claims) keeps any NUL it holds.
        let (first, rest) = cookie::split_at_byte(arg, 0);
        let (second, rest) = cookie::split_at_byte(rest.unwrap_or_default(), 0);
        match op {
            op::CONFIG_ERROR => t.config_error().unwrap_or_default().to_owned(),
            op::CONSENT => t.consent().to_owned(),
            op::SET_CONSENT => flag(t.set_consent(arg)),
            op::COOKIE => t.cookie().unwrap_or_default(),
            op::PERSISTENT => flag(t.persistent()),
            op::ENQUEUE => {
                let ttl = x.is_finite().then_some(x as i64);
                t.enqueue(first, second, rest.unwrap_or_default(), ttl, now)
            }
            op::CLAIM => t.claim(now),
            op::COMPLETE => {
                t.complete(first, x as u16, second, now, y).to_owned()
            }
            op::QUEUED => flag(t.queued(arg)),
            op::NEXT_DUE => t.next_due().map_or_else(String::new, |ms| {
                let mut s = String::new();
                tag_queue::push_i64(&mut s, ms);
                s
            }),
            op::RESET => {
                t.reset();
                String::new()
            }
            _ => String::new(),
        }
    }
}

fn parse_consent(s: &str) -> Option<Consent> {
    match s {
        "granted" => Some(Consent::Granted),
        "denied" => Some(Consent::Denied),
        "pending" => Some(Consent::Pending),
        _ => None,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim_ascii().to_owned()).filter(|s| !s.is_empty())
}

impl Tagger {
    /// A tagger for this page. `owner` is a random id of this tab (its leases on
    /// queue items); `consent` is `granted`, `denied` or `pending` (anything else
    /// counts as `pending`).
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
            cleared: false,
        };
        t.enforce_denied();
        t
    }

    /// `invalid_munchkin_id` when the configured Munchkin id is not like `123-ABC-456`.
    pub fn config_error(&self) -> Option<&'static str> {
        self.prefs
            .munchkin_id
            .as_deref()
            .is_some_and(|id| !munchkin::is_munchkin_id(id))
            .then_some("invalid_munchkin_id")
    }

    /// True when the Munchkin opt-out cookie (`mkto_opt_out=true`) is present.
    pub fn opted_out(&self) -> bool {
        cookie::values_named(&read_cookie(), "mkto_opt_out").any(|v| v == "true")
    }

    /// The consent in force: `denied` when opted out, else what the page set.
    pub fn consent(&self) -> &'static str {
        self.effective().as_str()
    }

    /// Changes consent. `denied` clears stored and held work; `granted` moves
    /// work held in memory into storage. Returns false for an unknown value.
    pub fn set_consent(&mut self, consent: &str) -> bool {
        let Some(c) = parse_consent(consent) else {
            return false;
        };
        self.consent = c;
        if c == Consent::Denied {
            // An explicit denial always clears.
            self.cleared = false;
        }
        if self.enforce_denied() == Consent::Granted && !self.memory.is_empty() {
            // An empty update merges the memory queue into storage.
            self.with_queue(|_| ());
        }
        true
    }

    /// The selected `_mkto_trk` value to hand over, or `None` when there is
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

    /// Stores a tag request for `token` before anything is sent. `claims` is the
    /// token's `sub` and `email` joined by a newline (empty when unreadable) and
    /// `ttl_ms` its lifetime (`exp - iat`). Returns `queued`, `duplicate` (pair
    /// sent before), `consent_denied` or `rejected:malformed`; a `queued` item
    /// this tab is to send at once (the cookie is there) is followed by `\n` and
    /// its send line. With consent pending the request is held in memory.
    pub fn enqueue(
        &mut self,
        token: &str,
        page: &str,
        claims: &str,
        ttl_ms: Option<i64>,
        now: f64,
    ) -> String {
        if self.enforce_denied() == Consent::Denied {
            return "consent_denied".into();
        }
        let cookie = self.selected();
        let person = Person::new(claims, token);
        // Only a granted tagger sends: held (pending) work is leased by nobody.
        let owner = if self.consent == Consent::Granted {
            self.owner.clone()
        } else {
            String::new()
        };
        let now = now as i64;
        self.with_queue(|q| {
            let known = q.contains(token);
            match q.enqueue(token, &person, ttl_ms, cookie.as_deref(), page, &owner, now) {
                // Newly stored and leased to this tab: it sends it now.
                Enqueued::Queued => match q.get(token) {
                    Some(it) if !known && !owner.is_empty() && it.owner == owner => {
                        tag_queue::cat(&["queued\n", &it.send_line()])
                    }
                    _ => "queued".into(),
                },
                Enqueued::Duplicate => "duplicate".into(),
                Enqueued::Malformed => "rejected:malformed".into(),
            }
        })
    }

    /// Leases every due item to this tab (filling in the cookie for items that
    /// waited for Munchkin) and returns their send lines (token, cookie, page,
    /// creation time; tab-separated), one per line. Empty unless consent is
    /// granted.
    pub fn claim(&mut self, now: f64) -> String {
        if self.enforce_denied() != Consent::Granted {
            return String::new();
        }
        let cookie = self.selected();
        let owner = self.owner.clone();
        self.with_queue(|q| {
            let mut out = String::new();
            for it in q.claim(&owner, cookie.as_deref(), now as i64) {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&it.send_line());
            }
            out
        })
    }

    /// Records the endpoint's reply for `token` (`status` 0 for a network error;
    /// `body` the reply's `status` field) and returns `sent`, `duplicate`,
    /// `rejected` or `retry`. `rand` in [0, 1) jitters the retry delay.
    pub fn complete(
        &mut self,
        token: &str,
        status: u16,
        body: &str,
        now: f64,
        rand: f64,
    ) -> &'static str {
        let body = match body {
            "queued" => ReplyBody::Queued,
            "duplicate" => ReplyBody::Duplicate,
            _ => ReplyBody::Other,
        };
        let reply = Reply::from_status(status, body);
        if self.enforce_denied() != Consent::Denied {
            self.with_queue(|q| q.complete(token, reply, now as i64, rand));
        }
        match reply {
            Reply::Sent => "sent",
            Reply::Duplicate => "duplicate",
            Reply::Rejected => "rejected",
            Reply::Retry => "retry",
        }
    }

    /// True while `token` waits in the queue.
    pub fn queued(&mut self, token: &str) -> bool {
        self.with_queue(|q| q.contains(token))
    }

    /// When the next queued item becomes due (Unix ms), or `None` when none
    /// waits with a cookie.
    pub fn next_due(&mut self) -> Option<i64> {
        self.with_queue(|q| q.next_due_ms())
    }

    /// Forgets the last identity (logout): clears queued work and the memory of
    /// sent pairs, so the next user of this browser is handed over on their own.
    /// (The facade expires Munchkin's cookie too when asked to forget the visitor.)
    pub fn reset(&mut self) {
        self.clear_all();
    }

    fn effective(&self) -> Consent {
        if self.opted_out() {
            Consent::Denied
        } else {
            self.consent
        }
    }

    /// Applies denied consent (page choice or opt-out cookie): what is stored or
    /// held is cleared once, when denial takes effect. Later calls of a denied
    /// tagger leave storage alone, so one that stays denied never wipes work
    /// another tagger (another tab, granted there) stored meanwhile.
    fn enforce_denied(&mut self) -> Consent {
        let c = self.effective();
        if c != Consent::Denied {
            self.cleared = false;
        } else if !self.cleared {
            self.clear_all();
            self.cleared = true;
        }
        c
    }

    fn clear_all(&mut self) {
        self.memory = Queue::default();
        storage_set(STORAGE_KEY, "");
    }

    fn selected(&self) -> Option<String> {
        munchkin::selected_value(&read_cookie(), &self.prefs)
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
