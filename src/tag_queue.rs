//! The browser's durable tag-request queue, as pure bookkeeping: items waiting to
//! be sent, leases that make one tab the sender of an item, retry backoff, and the
//! memory of (cookie token, person) pairs already sent.
//!
//! Nothing here does I/O or reads the clock: the browser layer loads the stored
//! text, calls these functions with `now` (Unix ms) and a random number, and
//! stores the result. The stored form is a small versioned, line-based text
//! ([`FORMAT`]) rather than JSON so that the wasm build needs no JSON parser.
//! The person behind a tag token is given by the caller (the browser facade
//! reads the token's `sub` and `email` claims with the browser's own JSON
//! parser) and kept only as a SHA-256 key.
//!
//! ```
//! use idtag::tag_queue::{Queue, Enqueued, Reply, Person};
//! let cookie = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
//! let jane = Person::new("u-42\njane@example.com", "v1.e30.sig");
//! let mut q = Queue::default();
//! let now = 1_700_000_000_000;
//! assert_eq!(q.enqueue("v1.e30.sig", &jane, Some(600_000), Some(cookie), "https://x.test/", "tab-a", now), Enqueued::Queued);
//! assert!(q.leased_to("v1.e30.sig", "tab-a"), "the enqueuing tab sends it at once");
//! assert!(q.claim("tab-b", None, now).is_empty(), "leased to tab-a");
//! q.complete("v1.e30.sig", Reply::Sent, now, 0.5);
//! let again = Person::new("u-42\njane@example.com", "v1.e30.sig2");
//! assert_eq!(q.enqueue("v1.e30.sig2", &again, None, Some(cookie), "https://x.test/", "tab-a", now), Enqueued::Duplicate);
//! let stored = q.to_text();
//! assert_eq!(Queue::from_text(&stored), q);
//! ```

use crate::cookie::split_on;
use crate::munchkin;

/// First line of the stored text; a different first line means "start empty".
pub const FORMAT: &str = "idtag-q2";
/// localStorage key the browser keeps the queue under (versioned with [`FORMAT`],
/// so SDK builds with another format in other tabs never overwrite this one).
pub const STORAGE_KEY: &str = "idtag:q2";
/// Most items kept; the oldest are dropped first.
pub const MAX_ITEMS: usize = 16;
/// Most sent-pair keys remembered; the oldest are dropped first.
pub const MAX_SENT: usize = 64;
/// How long a sent (cookie token, person) pair is remembered: 30 days.
pub const SENT_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long an item lives when its token's lifetime cannot be read: 10 minutes.
pub const DEFAULT_ITEM_TTL_MS: i64 = 10 * 60 * 1000;
/// Upper bound on an item's life whatever its token claims: one day.
pub const MAX_ITEM_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a claimed item belongs to the tab that claimed it. A request handed
/// to `fetch(keepalive)` or `sendBeacon` just before a navigation has an unknown
/// fate; no other page retries it before the lease runs out.
pub const LEASE_MS: i64 = 30_000;
/// Longest token accepted from the page.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Longest page address kept in a request.
pub const MAX_PAGE_LEN: usize = 1024;
/// First retry delay; doubled per attempt up to [`MAX_BACKOFF_MS`], with ±50 % jitter.
pub const BASE_BACKOFF_MS: i64 = 2_000;
/// Longest retry delay.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;
/// Attempts after which an item is dropped.
pub const MAX_ATTEMPTS: u32 = 8;

/// The person a tag token names, as a pseudonymous key (hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person(String);

impl Person {
    /// The key of the person described by `claims` (the token's `sub` and
    /// `email` claims joined by a newline), or, when they could not be read
    /// (empty), of the token itself.
    ///
    /// ```
    /// use idtag::tag_queue::Person;
    /// assert_eq!(Person::new("u1\na@x.com", "v1.a.b"), Person::new("u1\na@x.com", "v1.c.d"));
    /// assert_ne!(Person::new("", "v1.a.b"), Person::new("", "v1.c.d"));
    /// ```
    pub fn new(claims: &str, tag_token: &str) -> Person {
        let (tag, text) = if claims.is_empty() {
            ("idtag-token1\n", tag_token)
        } else {
            ("idtag-person1\n", claims)
        };
        Person(hex_sha256(cat(&[tag, text]).as_bytes()))
    }

    /// The hex key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One tag request waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The tag token the backend signed (also the item's identity in the queue).
    pub token: String,
    /// The selected `_mkto_trk` value, empty until Munchkin has set the cookie.
    pub cookie: String,
    /// The page the request was made on.
    pub page: String,
    /// The [`Person`] key of the token's person.
    pub person: String,
    /// When the page asked for it, Unix ms.
    pub created_ms: i64,
    /// When it stops being worth sending, Unix ms: the token's lifetime counted
    /// from `created_ms` on this browser's clock (so a skewed clock does not
    /// drop it at once).
    pub expires_ms: i64,
    /// Send attempts that ended in a retryable failure.
    pub attempts: u32,
    /// Not to be sent before this time, Unix ms.
    pub next_ms: i64,
    /// The tab holding the lease, empty when none.
    pub owner: String,
    /// The lease ends at this time, Unix ms.
    pub lease_until_ms: i64,
}

/// The queue and the memory of sent pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    /// Items, oldest first.
    pub items: Vec<Item>,
    /// Sent pairs: (hex key, sent at Unix ms), oldest first. Keys never hold a
    /// tab or newline (they are hex, or read back from the stored form).
    pub sent: Vec<(String, i64)>,
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored (or already stored) and waiting to be sent.
    Queued,
    /// This (cookie token, person) pair was sent before: nothing stored.
    Duplicate,
    /// The token is not of the shape `v1.<base64url>.<base64url>`, or its
    /// lifetime is not positive: nothing stored.
    Malformed,
}

/// How a send attempt ended, as the browser layer read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The endpoint queued it (202 `{"status":"queued"}`).
    Sent,
    /// The endpoint already had the pair (200 `{"status":"duplicate"}`).
    Duplicate,
    /// The endpoint refused it for good (4xx other than 408/429), or answered
    /// 2xx with something that is not a tag reply (a misrouted endpoint).
    Rejected,
    /// Network error, timeout, 408, 429 or 5xx: try again later.
    Retry,
}

/// What the body of a 2xx reply said, as far as the browser layer could read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyBody {
    /// `{"v":1,"status":"queued"}`.
    Queued,
    /// `{"v":1,"status":"duplicate"}`.
    Duplicate,
    /// No body, or not a tag reply.
    Other,
}

impl Reply {
    /// Classifies an HTTP status (0 for a network error) and the reply body.
    ///
    /// ```
    /// use idtag::tag_queue::{Reply, ReplyBody};
    /// assert_eq!(Reply::from_status(202, ReplyBody::Queued), Reply::Sent);
    /// assert_eq!(Reply::from_status(200, ReplyBody::Duplicate), Reply::Duplicate);
    /// assert_eq!(Reply::from_status(200, ReplyBody::Other), Reply::Rejected);
    /// assert_eq!(Reply::from_status(400, ReplyBody::Other), Reply::Rejected);
    /// assert_eq!(Reply::from_status(429, ReplyBody::Other), Reply::Retry);
    /// assert_eq!(Reply::from_status(0, ReplyBody::Other), Reply::Retry);
    /// ```
    pub fn from_status(status: u16, body: ReplyBody) -> Reply {
        match (status, body) {
            (200..=299, ReplyBody::Queued) => Reply::Sent,
            (200..=299, ReplyBody::Duplicate) => Reply::Duplicate,
            (200..=299, ReplyBody::Other) => Reply::Rejected,
            (408 | 429, _) => Reply::Retry,
            (400..=499, _) => Reply::Rejected,
            _ => Reply::Retry,
        }
    }
}

/// True for `v1.<base64url>.<base64url>` no longer than [`MAX_TOKEN_LEN`].
pub fn token_shape_ok(token: &str) -> bool {
    let mut parts = token.as_bytes().split(|&c| c == b'.');
    let b64 = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
    };
    token.len() <= MAX_TOKEN_LEN
        && parts.next() == Some(b"v1")
        && parts.next().is_some_and(b64)
        && parts.next().is_some_and(b64)
        && parts.next().is_none()
}

/// The pseudonymous key of a (cookie token, person) pair: hex SHA-256 over the
/// visitor token and the [`Person`] key.
///
/// ```
/// use idtag::tag_queue::{pair_key, Person};
/// let a = pair_key("_mch-x.com-1700000000000-1", &Person::new("u1\na@x.com", "v1.a.b"));
/// let b = pair_key("_mch-x.com-1700000000000-1", &Person::new("u1\na@x.com", "v1.c.d"));
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 64);
/// ```
pub fn pair_key(visitor_token: &str, person: &Person) -> String {
    pair_key_of(visitor_token, person.as_str())
}

fn pair_key_of(visitor_token: &str, person_key: &str) -> String {
    hex_sha256(cat(&["idtag-pair2\n", visitor_token, "\n", person_key]).as_bytes())
}

/// Lowercase hex SHA-256, written as a plain loop: the `sha2` crate's unrolled
/// compression and `digest` plumbing cost ~6 KB of wasm, this ~1 KB. Checked
/// against [`crate::identity::hex_sha256`] in the tests.
fn hex_sha256(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let t1 = hh
                .wrapping_add(e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25))
                .wrapping_add((e & f) ^ (!e & g))
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let t2 = (a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22))
                .wrapping_add((a & b) ^ (a & c) ^ (b & c));
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h.iter().flat_map(|x| x.to_be_bytes()) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Parses a decimal integer without pulling in the formatting machinery.
pub(crate) fn parse_i64(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for c in digits.bytes() {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Some(if neg { -n } else { n })
}

/// Appends a decimal integer (no `format!`, which the browser build avoids).
pub(crate) fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut v = n.unsigned_abs();
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// The parts joined. One plain loop instead of `concat`/`join`, whose generic
/// copies cost ~1 KB each in the browser build.
pub(crate) fn cat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// Appends `s` as one field of the stored form: no tabs, newlines or other
/// control characters, at most `max` bytes (cut on a character boundary).
fn push_field(out: &mut String, s: &str, max: usize) {
    let start = out.len();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() - start + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
}

/// `s` as a field of the stored form (see [`push_field`]).
fn field(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    push_field(&mut out, s, max);
    out
}

/// The visitor token inside a `_mkto_trk` value (the part Marketo keys on).
fn visitor_token(cookie: &str) -> Option<String> {
    munchkin::parse_value(cookie).ok().map(|c| c.token)
}

/// The retry delay after `attempts` failures: 2 s doubling up to one hour, then
/// scaled by a jitter factor in [0.5, 1.5) taken from `rand` in [0, 1).
///
/// ```
/// use idtag::tag_queue::backoff_ms;
/// assert_eq!(backoff_ms(1, 0.5), 2_000);
/// assert_eq!(backoff_ms(3, 0.5), 8_000);
/// assert_eq!(backoff_ms(40, 0.5), 3_600_000);
/// assert_eq!(backoff_ms(1, 0.0), 1_000);
/// ```
pub fn backoff_ms(attempts: u32, rand: f64) -> i64 {
    let exp = attempts.saturating_sub(1).min(20);
    let base = (BASE_BACKOFF_MS << exp).min(MAX_BACKOFF_MS);
    let r = if rand.is_finite() {
        rand.clamp(0.0, 0.999_999)
    } else {
        0.5
    };
    // base * (0.5 + r) in integer arithmetic: r in thousandths.
    let milli = (r * 1000.0) as i64;
    base * (500 + milli) / 1000
}

impl Item {
    /// The key of this item's (cookie token, person) pair, once it has a cookie.
    fn pair(&self) -> Option<String> {
        visitor_token(&self.cookie).map(|vt| pair_key_of(&vt, &self.person))
    }

    /// The fields the browser layer sends for this item, tab-separated:
    /// token, `_mkto_trk` value, page, creation time (Unix ms).
    pub fn send_line(&self) -> String {
        let mut out = cat(&[&self.token, "\t", &self.cookie, "\t", &self.page, "\t"]);
        push_i64(&mut out, self.created_ms);
        out
    }
}

impl Queue {
    /// Reads the stored text; anything unreadable (another version, corrupt
    /// lines) is skipped, never an error.
    pub fn from_text(text: &str) -> Queue {
        let mut q = Queue::default();
        let mut lines = split_on(text, b'\n');
        if lines.next() != Some(FORMAT) {
            return q;
        }
        for line in lines {
            let f: Vec<&str> = split_on(line, b'\t').collect();
            let num = |i: usize| f.get(i).and_then(|s| parse_i64(s));
            match (f.first(), f.len()) {
                (Some(&"s"), 3) => {
                    if let Some(at) = num(2) {
                        q.sent.push((f[1].to_owned(), at));
                    }
                }
                (Some(&"i"), 11) => {
                    let (Some(created_ms), Some(expires_ms), Some(attempts), Some(next_ms)) =
                        (num(5), num(6), num(7), num(8))
                    else {
                        continue;
                    };
                    let Some(lease_until_ms) = num(10) else {
                        continue;
                    };
                    if !token_shape_ok(f[1]) {
                        continue;
                    }
                    q.items.push(Item {
                        token: f[1].to_owned(),
                        cookie: f[2].to_owned(),
                        page: f[3].to_owned(),
                        person: f[4].to_owned(),
                        created_ms,
                        expires_ms,
                        attempts: u32::try_from(attempts).unwrap_or(MAX_ATTEMPTS),
                        next_ms,
                        owner: f[9].to_owned(),
                        lease_until_ms,
                    });
                }
                _ => {}
            }
        }
        q
    }

    /// The stored text: [`FORMAT`], then one line per item and per sent pair.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(64 + self.items.len() * 400 + self.sent.len() * 80);
        out.push_str(FORMAT);
        for it in &self.items {
            out.push_str("\ni");
            // Token, cookie, page and person were made fit for the format when
            // the item was created (or read back from it).
            for s in [&it.token, &it.cookie, &it.page, &it.person] {
                out.push('\t');
                out.push_str(s);
            }
            for n in [
                it.created_ms,
                it.expires_ms,
                i64::from(it.attempts),
                it.next_ms,
            ] {
                out.push('\t');
                push_i64(&mut out, n);
            }
            out.push('\t');
            push_field(&mut out, &it.owner, 64);
            out.push('\t');
            push_i64(&mut out, it.lease_until_ms);
        }
        for (key, at) in &self.sent {
            out.push_str("\ns\t");
            out.push_str(key);
            out.push('\t');
            push_i64(&mut out, *at);
        }
        out
    }

    /// True when nothing is queued and nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.sent.is_empty()
    }

    /// Drops expired items and sent pairs, and trims both lists to their bounds.
    pub fn prune(&mut self, now: i64) {
        self.items
            .retain(|it| it.expires_ms > now && it.attempts < MAX_ATTEMPTS);
        self.sent
            .retain(|(_, at)| now.saturating_sub(*at) < SENT_TTL_MS);
        let extra = self.items.len().saturating_sub(MAX_ITEMS);
        self.items.drain(..extra);
        let extra = self.sent.len().saturating_sub(MAX_SENT);
        self.sent.drain(..extra);
    }

    /// True when the pair `key` was sent within [`SENT_TTL_MS`] (expired
    /// entries are pruned before every change).
    pub fn was_sent(&self, key: &str) -> bool {
        self.sent.iter().any(|(k, _)| k == key)
    }

    fn remember_sent(&mut self, key: String, now: i64) {
        self.sent.retain(|(k, _)| *k != key);
        self.sent.push((key, now));
    }

    /// Stores a tag request for `token` (its person's key and lifetime read by
    /// the caller; `ttl_ms` `None` when unknown), with the selected `_mkto_trk`
    /// value when there is one yet. With a cookie the new item is leased to
    /// `owner` (when not empty) at once, so the enqueuing tab sends it and no
    /// other tab does. A token already queued is not stored twice.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &mut self,
        token: &str,
        person: &Person,
        ttl_ms: Option<i64>,
        cookie: Option<&str>,
        page: &str,
        owner: &str,
        now: i64,
    ) -> Enqueued {
        if !token_shape_ok(token) || ttl_ms.is_some_and(|t| t <= 0) {
            return Enqueued::Malformed;
        }
        self.prune(now);
        let vt = cookie.and_then(visitor_token);
        if vt
            .as_ref()
            .is_some_and(|vt| self.was_sent(&pair_key(vt, person)))
        {
            return Enqueued::Duplicate;
        }
        // Only a valid value is kept (it also never holds a tab or newline).
        let cookie = cookie.filter(|_| vt.is_some()).unwrap_or("");
        if self.contains(token) {
            return Enqueued::Queued;
        }
        let ttl = ttl_ms.unwrap_or(DEFAULT_ITEM_TTL_MS).min(MAX_ITEM_TTL_MS);
        let leased = !cookie.is_empty() && !owner.is_empty();
        self.items.push(Item {
            token: token.to_owned(),
            cookie: cookie.to_owned(),
            page: field(page, MAX_PAGE_LEN),
            person: person.as_str().to_owned(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl),
            attempts: 0,
            next_ms: now,
            owner: if leased {
                owner.to_owned()
            } else {
                String::new()
            },
            lease_until_ms: if leased { now + LEASE_MS } else { 0 },
        });
        self.prune(now);
        Enqueued::Queued
    }

    /// True when `token` is queued and leased to `owner`.
    pub fn leased_to(&self, token: &str, owner: &str) -> bool {
        self.get(token).is_some_and(|it| it.owner == owner)
    }

    /// The queued item of `token`.
    pub fn get(&self, token: &str) -> Option<&Item> {
        self.items.iter().find(|it| it.token == token)
    }

    /// Takes the lease on every item that is due, not leased (by any tab) and
    /// has a cookie (items still waiting for one get `cookie` when given). An
    /// item whose pair turns out to be sent already (by another tab, or before
    /// consent was granted) is dropped. Returns the claimed items.
    pub fn claim(&mut self, owner: &str, cookie: Option<&str>, now: i64) -> Vec<&Item> {
        self.prune(now);
        if let Some(c) = cookie.filter(|c| visitor_token(c).is_some()) {
            for it in self.items.iter_mut().filter(|it| it.cookie.is_empty()) {
                it.cookie = c.to_owned();
            }
        }
        let sent = &self.sent;
        self.items
            .retain(|it| it.pair().is_none_or(|k| !sent.iter().any(|(s, _)| *s == k)));
        let mut out = Vec::new();
        for it in &mut self.items {
            // A leased item is not claimed again before the lease ends, not even
            // by its owner: a page may hand one item to fetch and, on pagehide,
            // be asked again; the pair must go out once.
            if !it.cookie.is_empty() && it.next_ms <= now && it.lease_until_ms <= now {
                it.owner = owner.to_owned();
                it.lease_until_ms = now + LEASE_MS;
                out.push(&*it);
            }
        }
        out
    }

    /// Records how sending `token` ended: sent, duplicate and rejected items leave
    /// the queue (the first two remember their pair); a retryable failure frees
    /// the lease and schedules the next attempt with backoff.
    pub fn complete(&mut self, token: &str, reply: Reply, now: i64, rand: f64) {
        let Some(pos) = self.items.iter().position(|it| it.token == token) else {
            return;
        };
        match reply {
            Reply::Sent | Reply::Duplicate => {
                if let Some(key) = self.items.remove(pos).pair() {
                    self.remember_sent(key, now);
                }
            }
            Reply::Rejected => {
                self.items.remove(pos);
            }
            Reply::Retry => {
                let it = &mut self.items[pos];
                it.attempts = it.attempts.saturating_add(1);
                it.next_ms = now + backoff_ms(it.attempts, rand);
                it.owner.clear();
                it.lease_until_ms = 0;
            }
        }
        self.prune(now);
    }

    /// The earliest time an item becomes due (for an in-page retry timer).
    pub fn next_due_ms(&self) -> Option<i64> {
        self.items
            .iter()
            .filter(|it| !it.cookie.is_empty())
            .map(|it| it.next_ms.max(it.lease_until_ms))
            .min()
    }

    /// True when `token` is still queued.
    pub fn contains(&self, token: &str) -> bool {
        self.get(token).is_some()
    }

    /// Moves every item and sent pair of `other` into this queue (pending-consent
    /// memory joining storage once consent is granted).
    pub fn merge(&mut self, other: Queue, now: i64) {
        for it in other.items {
            if !self.contains(&it.token) {
                self.items.push(it);
            }
        }
        for (k, at) in other.sent {
            self.remember_sent(k, at);
        }
        self.prune(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: i64 = 1_700_000_000_000;
    const COOKIE: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
    const COOKIE2: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-99999";
    const VT: &str = "_mch-example.com-1700000000000-12345";
    const TTL: Option<i64> = Some(600_000);

    fn tok(n: i64) -> String {
        let mut t = String::from("v1.payload");
        push_i64(&mut t, n);
        t.push_str(".sig");
        t
    }

    fn jane(token: &str) -> Person {
        Person::new("u1\na@example.com", token)
    }

    fn enq(q: &mut Queue, t: &str, cookie: Option<&str>, now: i64) -> Enqueued {
        q.enqueue(t, &jane(t), TTL, cookie, "p", "tab", now)
    }

    #[test]
    fn repeat_login_is_duplicate_by_person_not_token() {
        let mut q = Queue::default();
        let (t1, t2) = (tok(1), tok(2));
        assert_eq!(enq(&mut q, &t1, Some(COOKIE), NOW), Enqueued::Queued);
        assert!(q.leased_to(&t1, "tab"));
        q.complete(&t1, Reply::Sent, NOW, 0.5);
        assert!(q.items.is_empty());
        assert_eq!(enq(&mut q, &t2, Some(COOKIE), NOW + 1), Enqueued::Duplicate);
        // Another visitor token or another person is a new pair.
        assert_eq!(enq(&mut q, &t2, Some(COOKIE2), NOW + 1), Enqueued::Queued);
        let t3 = tok(3);
        let bob = Person::new("u2\nb@example.com", &t3);
        assert_eq!(
            q.enqueue(&t3, &bob, TTL, Some(COOKIE), "p", "tab", NOW + 1),
            Enqueued::Queued
        );
        // The memory has a time limit.
        let mut later = q.clone();
        later.items.clear();
        assert_eq!(
            enq(&mut later, &t2, Some(COOKIE), NOW + SENT_TTL_MS + 1),
            Enqueued::Queued
        );
    }

    #[test]
    fn unreadable_claims_key_on_the_token() {
        assert_ne!(Person::new("", "v1.a.b"), Person::new("", "v1.a.c"));
        assert_ne!(Person::new("", "u1\na@x"), Person::new("u1\na@x", "v1.a.b"));
        assert_eq!(Person::new("u1\na@x", "v1.a.b").as_str().len(), 64);
    }

    #[test]
    fn cookie_filled_at_claim_and_sent_pair_dropped() {
        let mut q = Queue::default();
        let t = tok(1);
        assert_eq!(enq(&mut q, &t, None, NOW), Enqueued::Queued);
        assert!(!q.leased_to(&t, "tab"), "no cookie: not leased at enqueue");
        assert!(q.claim("a", None, NOW).is_empty(), "no cookie yet");
        assert_eq!(q.next_due_ms(), None);
        assert_eq!(q.claim("a", Some(COOKIE), NOW).len(), 1);
        assert_eq!(q.items[0].cookie, COOKIE);

        let mut q2 = Queue::default();
        q2.remember_sent(pair_key(VT, &jane(&t)), NOW);
        enq(&mut q2, &t, None, NOW);
        assert!(q2.claim("a", Some(COOKIE), NOW).is_empty());
        assert!(q2.items.is_empty());
    }

    #[test]
    fn claim_drops_items_whose_pair_was_sent_meanwhile() {
        // Queued with a cookie while another tab (or the pending-consent memory)
        // sent the same pair under another token.
        let mut q = Queue::default();
        let (t1, t2) = (tok(1), tok(2));
        enq(&mut q, &t1, Some(COOKIE), NOW);
        q.complete(&t1, Reply::Retry, NOW, 0.5);
        q.remember_sent(pair_key(VT, &jane(&t2)), NOW);
        assert!(q.claim("a", None, NOW + 10_000).is_empty());
        assert!(q.items.is_empty());
    }

    #[test]
    fn leases_and_backoff() {
        let mut q = Queue::default();
        let t = tok(1);
        enq(&mut q, &t, Some(COOKIE), NOW);
        assert!(
            q.claim("b", None, NOW + 1).is_empty(),
            "leased to the enqueuing tab"
        );
        assert!(
            q.claim("tab", None, NOW + 1).is_empty(),
            "not even the owner re-claims"
        );
        let t0 = NOW + LEASE_MS;
        assert!(q.claim("b", None, t0 - 1).is_empty());
        assert_eq!(q.claim("b", None, t0).len(), 1, "lease ran out");
        assert!(q.leased_to(&t, "b"));
        q.complete(&t, Reply::Retry, t0, 0.5);
        assert_eq!(q.items[0].attempts, 1);
        assert_eq!(q.next_due_ms(), Some(t0 + 2_000));
        assert!(q.claim("a", None, t0 + 1_999).is_empty());
        assert_eq!(q.claim("a", None, t0 + 2_000).len(), 1);
        q.complete(&t, Reply::Rejected, t0 + 2_000, 0.5);
        assert!(q.is_empty(), "rejected is not remembered as sent");
    }

    #[test]
    fn lifetime_counts_on_this_clock_and_bounds_hold() {
        let mut q = Queue::default();
        assert_eq!(enq(&mut q, "nope", Some(COOKIE), NOW), Enqueued::Malformed);
        assert_eq!(enq(&mut q, "v1..x", Some(COOKIE), NOW), Enqueued::Malformed);
        let t = tok(1);
        assert_eq!(
            q.enqueue(&t, &jane(&t), Some(0), None, "p", "tab", NOW),
            Enqueued::Malformed,
            "a token whose exp is not after its iat"
        );
        // A browser clock hours ahead of the server still keeps the item for the
        // token's lifetime.
        enq(&mut q, &t, Some(COOKIE), NOW + 5 * 3600 * 1000);
        assert_eq!(q.items[0].expires_ms, NOW + 5 * 3600 * 1000 + 600_000);
        q.prune(NOW + 5 * 3600 * 1000 + 600_000);
        assert!(q.items.is_empty());
        q.enqueue(&t, &jane(&t), None, None, "p", "tab", NOW);
        assert_eq!(q.items[0].expires_ms, NOW + DEFAULT_ITEM_TTL_MS);
        q.items.clear();
        q.enqueue(&t, &jane(&t), Some(i64::MAX), None, "p", "tab", NOW);
        assert_eq!(q.items[0].expires_ms, NOW + MAX_ITEM_TTL_MS);
        for i in 0..(MAX_ITEMS as i64 + 5) {
            enq(&mut q, &tok(100 + i), None, NOW);
        }
        assert_eq!(q.items.len(), MAX_ITEMS);
        for i in 0..(MAX_SENT + 5) {
            q.remember_sent(i.to_string(), NOW);
        }
        q.prune(NOW);
        assert_eq!(q.sent.len(), MAX_SENT);
        assert_eq!(q.sent[0].0, "5");
    }

    #[test]
    fn text_round_trip_and_garbage() {
        let mut q = Queue::default();
        let t = tok(1);
        q.enqueue(
            &t,
            &jane(&t),
            TTL,
            Some(COOKIE),
            "https://x.test/a?b=c\td\ne",
            "tab\t1",
            NOW,
        );
        q.remember_sent("k".into(), NOW - 5);
        let text = q.to_text();
        let back = Queue::from_text(&text);
        assert_eq!(back.items[0].page, "https://x.test/a?b=cde");
        assert_eq!(back.items[0].owner, "tab1");
        assert_eq!(back.items[0].person, jane(&t).as_str());
        assert_eq!(back.sent, q.sent);
        assert_eq!(Queue::from_text(&back.to_text()), back);
        assert!(Queue::from_text("idtag-q1\ni\tx").is_empty());
        assert!(Queue::from_text("").is_empty());
        let mixed = [
            FORMAT,
            "junk",
            "i\tv1.a.b\t\t\t\t1\t2",
            "i\tnot-a-token\t\t\t\t1\t2\t0\t0\t\t0",
            "s\tk\tnotanumber",
            "s\tk2\t7",
        ]
        .join("\n");
        let q = Queue::from_text(&mixed);
        assert!(q.items.is_empty());
        assert_eq!(q.sent, vec![("k2".to_owned(), 7)]);
    }

    #[test]
    fn send_line_carries_what_the_request_needs() {
        let mut q = Queue::default();
        let t = tok(1);
        enq(&mut q, &t, Some(COOKIE), NOW);
        let line = q.get(&t).unwrap().send_line();
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f, [t.as_str(), COOKIE, "p", "1700000000000"]);
    }

    #[test]
    fn replies() {
        assert_eq!(Reply::from_status(202, ReplyBody::Queued), Reply::Sent);
        assert_eq!(Reply::from_status(204, ReplyBody::Other), Reply::Rejected);
        assert_eq!(Reply::from_status(503, ReplyBody::Queued), Reply::Retry);
        assert_eq!(Reply::from_status(408, ReplyBody::Other), Reply::Retry);
        assert_eq!(Reply::from_status(413, ReplyBody::Other), Reply::Rejected);
    }

    #[test]
    fn sha256_matches_core() {
        for len in [0usize, 1, 55, 56, 63, 64, 65, 200] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(hex_sha256(&data), crate::identity::hex_sha256(&data));
        }
    }

    #[test]
    fn numbers() {
        for n in [0, 7, -7, 1_700_000_000_000, i64::MIN + 1] {
            let mut s = String::new();
            push_i64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        assert_eq!(parse_i64("-"), None);
        assert_eq!(parse_i64("12a"), None);
    }

    #[test]
    fn merge_keeps_both() {
        let mut a = Queue::default();
        let mut b = Queue::default();
        let (t1, t2) = (tok(1), tok(2));
        enq(&mut a, &t1, None, NOW);
        enq(&mut b, &t2, None, NOW);
        enq(&mut b, &t1, None, NOW);
        b.remember_sent("k".into(), NOW);
        a.merge(b, NOW);
        assert_eq!(a.items.len(), 2);
        assert!(a.was_sent("k"));
    }
}
