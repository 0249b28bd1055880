//! The browser's durable tag-request queue, as pure bookkeeping: items waiting to
//! be sent, leases that make one tab the sender of an item, retry backoff, and the
//! memory of (cookie token, person) pairs already sent.
//!
//! Nothing here does I/O or reads the clock: the browser layer loads the stored
//! text, calls these functions with `now` (Unix ms) and a random number, and
//! stores the result. The stored form is a small versioned, line-based text
//! ([`FORMAT`]) rather than JSON so that the wasm build needs no JSON parser.
//!
//! ```
//! use idtag::tag_queue::{Queue, Enqueued, Reply};
//! let cookie = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
//! let mut q = Queue::default();
//! let now = 1_700_000_000_000;
//! assert_eq!(q.enqueue("v1.e30.sig", Some(cookie), "https://x.test/", now), Enqueued::Queued);
//! let claimed = q.claim("tab-a", None, now);
//! assert_eq!(claimed.len(), 1);
//! assert!(q.claim("tab-b", None, now).is_empty(), "leased to tab-a");
//! q.complete("v1.e30.sig", Reply::Sent, now, 0.5);
//! assert_eq!(q.enqueue("v1.e30.sig", Some(cookie), "https://x.test/", now), Enqueued::Duplicate);
//! let stored = q.to_text();
//! assert_eq!(Queue::from_text(&stored), q);
//! ```

use crate::munchkin;

/// First line of the stored text; a different first line means "start empty".
pub const FORMAT: &str = "idtag-q1";
/// localStorage key the browser keeps the queue under.
pub const STORAGE_KEY: &str = "idtag:q";
/// Most items kept; the oldest are dropped first.
pub const MAX_ITEMS: usize = 16;
/// Most sent-pair keys remembered; the oldest are dropped first.
pub const MAX_SENT: usize = 64;
/// How long a sent (cookie token, person) pair is remembered: 30 days.
pub const SENT_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long an item lives when its token's `exp` cannot be read: 10 minutes.
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

/// One tag request waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The tag token the backend signed (also the item's identity in the queue).
    pub token: String,
    /// The selected `_mkto_trk` value, empty until Munchkin has set the cookie.
    pub cookie: String,
    /// The page the request was made on.
    pub page: String,
    /// When the page asked for it, Unix ms.
    pub created_ms: i64,
    /// When it stops being worth sending (the token's `exp`), Unix ms.
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
    /// Sent pairs: (hex key, sent at Unix ms), oldest first.
    pub sent: Vec<(String, i64)>,
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored (or already stored) and waiting to be sent.
    Queued,
    /// This (cookie token, person) pair was sent before: nothing stored.
    Duplicate,
    /// The token is not of the shape `v1.<base64url>.<base64url>`: nothing stored.
    Malformed,
}

/// How a send attempt ended, as the browser layer read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The endpoint queued it (202).
    Sent,
    /// The endpoint already had the pair (200 duplicate).
    Duplicate,
    /// The endpoint refused it for good (4xx other than 408/429).
    Rejected,
    /// Network error, timeout, 408, 429 or 5xx: try again later.
    Retry,
}

impl Reply {
    /// Classifies an HTTP status (0 for a network error).
    ///
    /// ```
    /// use idtag::tag_queue::Reply;
    /// assert_eq!(Reply::from_status(202, false), Reply::Sent);
    /// assert_eq!(Reply::from_status(200, true), Reply::Duplicate);
    /// assert_eq!(Reply::from_status(400, false), Reply::Rejected);
    /// assert_eq!(Reply::from_status(429, false), Reply::Retry);
    /// assert_eq!(Reply::from_status(0, false), Reply::Retry);
    /// ```
    pub fn from_status(status: u16, duplicate: bool) -> Reply {
        match status {
            200..=299 if duplicate => Reply::Duplicate,
            200..=299 => Reply::Sent,
            408 | 429 => Reply::Retry,
            400..=499 => Reply::Rejected,
            _ => Reply::Retry,
        }
    }
}

/// True for `v1.<base64url>.<base64url>` no longer than [`MAX_TOKEN_LEN`].
pub fn token_shape_ok(token: &str) -> bool {
    let b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    let mut parts = token.split('.');
    token.len() <= MAX_TOKEN_LEN
        && parts.next() == Some("v1")
        && parts.next().is_some_and(b64)
        && parts.next().is_some_and(b64)
        && parts.next().is_none()
}

/// The pseudonymous key of a (cookie token, person) pair: hex SHA-256 over the
/// visitor token and the `sub` and `email` claims read from the tag token
/// without verifying it. A token whose claims cannot be read keys on itself.
///
/// ```
/// use idtag::tag_queue::pair_key;
/// // {"sub":"u1","email":"a@x.com"} and the same person in a later token:
/// let a = pair_key("_mch-x.com-1700000000000-1", "v1.eyJzdWIiOiJ1MSIsImVtYWlsIjoiYUB4LmNvbSJ9.s1");
/// let b = pair_key("_mch-x.com-1700000000000-1", "v1.eyJlbWFpbCI6ImFAeC5jb20iLCJzdWIiOiJ1MSJ9.s2");
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 64);
/// ```
pub fn pair_key(visitor_token: &str, tag_token: &str) -> String {
    let mut input = String::with_capacity(128);
    input.push_str("idtag-pair1\n");
    input.push_str(visitor_token);
    input.push('\n');
    match peek_person(tag_token) {
        Some((sub, email)) => {
            input.push_str(&sub);
            input.push('\n');
            input.push_str(&email);
        }
        None => input.push_str(tag_token),
    }
    hex_sha256(input.as_bytes())
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

/// Reads `sub`, `email` and `exp` claims of a tag token without verifying it, with a
/// tiny decoder instead of serde_json so the browser build stays small.
fn peek_person(tag_token: &str) -> Option<(String, String)> {
    let json = payload_json(tag_token)?;
    Some((
        json_top_string(&json, "sub")?,
        json_top_string(&json, "email")?,
    ))
}

/// The `exp` claim (Unix seconds) of a tag token, read without verifying it.
///
/// ```
/// // {"exp":1700000600}
/// assert_eq!(idtag::tag_queue::peek_exp("v1.eyJleHAiOjE3MDAwMDA2MDB9.s"), Some(1_700_000_600));
/// ```
pub fn peek_exp(tag_token: &str) -> Option<i64> {
    let json = payload_json(tag_token)?;
    json_top_number(&json, "exp")
}

fn payload_json(tag_token: &str) -> Option<Vec<u8>> {
    let mut parts = tag_token.split('.');
    if parts.next()? != "v1" {
        return None;
    }
    b64url_decode(parts.next()?)
}

/// Decodes unpadded base64url (padding tolerated).
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A small JSON scanner over one object: finds a top-level member and returns
/// where its value starts. Strings are skipped escape-aware, nested values by depth.
fn json_member<'a>(json: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(json, i)?;
        let key = json.get(i + 1..key_end - 1)?;
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(json, i + 1);
        if key == name.as_bytes() {
            return json.get(i..);
        }
        i = value_end(json, i)?;
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the string starting at `start` (which holds `"`).
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match *json.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Index just past the value starting at `start`.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        match *json.get(i)? {
            b'"' => {
                i = string_end(json, i)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(i),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
}

/// A top-level string member, unescaped.
fn json_top_string(json: &[u8], name: &str) -> Option<String> {
    let v = json_member(json, name)?;
    if v.first() != Some(&b'"') {
        return None;
    }
    let end = string_end(v, 0)?;
    unescape(v.get(1..end - 1)?)
}

/// A top-level integer member.
fn json_top_number(json: &[u8], name: &str) -> Option<i64> {
    let v = json_member(json, name)?;
    let end = v
        .iter()
        .position(|c| !(c.is_ascii_digit() || *c == b'-'))
        .unwrap_or(v.len());
    parse_i64(core::str::from_utf8(v.get(..end)?).ok()?)
}

fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) && raw.get(i..i + 2) == Some(b"\\u") {
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo.checked_sub(0xDC00)? & 0x3FF)
                } else {
                    hi
                };
                char::from_u32(code)?
            }
            _ => return None,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).ok()
}

fn hex4(b: &[u8]) -> Option<u32> {
    b.iter()
        .try_fold(0u32, |acc, &c| Some(acc * 16 + char::from(c).to_digit(16)?))
}

/// Parses a decimal integer without pulling in the formatting machinery.
fn parse_i64(s: &str) -> Option<i64> {
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
fn push_i64(out: &mut String, n: i64) {
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

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(char::from(HEX[(c as usize) >> 4]));
                out.push(char::from(HEX[(c as usize) & 15]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Keeps text fit for one field of the stored form: no tabs, newlines or other
/// control characters, at most `max` bytes (cut on a character boundary).
fn field(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
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

impl Queue {
    /// Reads the stored text; anything unreadable (another version, corrupt
    /// lines) is skipped, never an error.
    pub fn from_text(text: &str) -> Queue {
        let mut q = Queue::default();
        let mut lines = text.split('\n');
        if lines.next() != Some(FORMAT) {
            return q;
        }
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["s", key, at] => {
                    if let Some(at) = parse_i64(at) {
                        q.sent.push(((*key).to_owned(), at));
                    }
                }
                ["i", token, cookie, page, created, expires, attempts, next, owner, lease] => {
                    let num = |s: &str| parse_i64(s);
                    let (
                        Some(created_ms),
                        Some(expires_ms),
                        Some(attempts),
                        Some(next_ms),
                        Some(lease_until_ms),
                    ) = (
                        num(created),
                        num(expires),
                        num(attempts),
                        num(next),
                        num(lease),
                    )
                    else {
                        continue;
                    };
                    if !token_shape_ok(token) {
                        continue;
                    }
                    q.items.push(Item {
                        token: (*token).to_owned(),
                        cookie: (*cookie).to_owned(),
                        page: (*page).to_owned(),
                        created_ms,
                        expires_ms,
                        attempts: u32::try_from(attempts).unwrap_or(MAX_ATTEMPTS),
                        next_ms,
                        owner: (*owner).to_owned(),
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
            out.push_str("\ni\t");
            for s in [&it.token, &it.cookie, &it.page] {
                out.push_str(&field(s, MAX_TOKEN_LEN));
                out.push('\t');
            }
            for n in [
                it.created_ms,
                it.expires_ms,
                i64::from(it.attempts),
                it.next_ms,
            ] {
                push_i64(&mut out, n);
                out.push('\t');
            }
            out.push_str(&field(&it.owner, 64));
            out.push('\t');
            push_i64(&mut out, it.lease_until_ms);
        }
        for (key, at) in &self.sent {
            out.push_str("\ns\t");
            out.push_str(&field(key, 64));
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
        if self.items.len() > MAX_ITEMS {
            let extra = self.items.len() - MAX_ITEMS;
            self.items.drain(..extra);
        }
        if self.sent.len() > MAX_SENT {
            let extra = self.sent.len() - MAX_SENT;
            self.sent.drain(..extra);
        }
    }

    /// True when the pair `key` was sent within [`SENT_TTL_MS`].
    pub fn was_sent(&self, key: &str, now: i64) -> bool {
        self.sent
            .iter()
            .any(|(k, at)| k == key && now.saturating_sub(*at) < SENT_TTL_MS)
    }

    fn remember_sent(&mut self, key: String, now: i64) {
        self.sent.retain(|(k, _)| *k != key);
        self.sent.push((key, now));
    }

    /// Stores a tag request for `token`, with the selected `_mkto_trk` value when
    /// there is one yet. A token already queued is not stored twice.
    pub fn enqueue(&mut self, token: &str, cookie: Option<&str>, page: &str, now: i64) -> Enqueued {
        if !token_shape_ok(token) {
            return Enqueued::Malformed;
        }
        self.prune(now);
        let cookie = cookie.unwrap_or("");
        if let Some(vt) = visitor_token(cookie) {
            if self.was_sent(&pair_key(&vt, token), now) {
                return Enqueued::Duplicate;
            }
        }
        if self.items.iter().any(|it| it.token == token) {
            return Enqueued::Queued;
        }
        let expires_ms = peek_exp(token)
            .map(|s| s.saturating_mul(1000))
            .unwrap_or(now + DEFAULT_ITEM_TTL_MS)
            .min(now + MAX_ITEM_TTL_MS);
        self.items.push(Item {
            token: token.to_owned(),
            cookie: cookie.to_owned(),
            page: field(page, MAX_PAGE_LEN),
            created_ms: now,
            expires_ms,
            attempts: 0,
            next_ms: now,
            owner: String::new(),
            lease_until_ms: 0,
        });
        self.prune(now);
        Enqueued::Queued
    }

    /// Takes the lease on every item that is due, not leased (by any tab) and
    /// has a cookie (items still waiting for one get `cookie` when given; an item
    /// whose pair turns out to be sent already is dropped). Returns the claimed
    /// items' tokens.
    pub fn claim(&mut self, owner: &str, cookie: Option<&str>, now: i64) -> Vec<String> {
        self.prune(now);
        let vt = cookie.and_then(visitor_token);
        if let (Some(cookie), Some(vt)) = (cookie, vt.as_deref()) {
            let sent = &self.sent;
            self.items.retain_mut(|it| {
                if !it.cookie.is_empty() {
                    return true;
                }
                let key = pair_key(vt, &it.token);
                if sent.iter().any(|(k, _)| *k == key) {
                    return false;
                }
                it.cookie = cookie.to_owned();
                true
            });
        }
        let mut out = Vec::new();
        for it in &mut self.items {
            // A leased item is not claimed again before the lease ends, not even
            // by its owner: a page may hand one item to fetch and, on pagehide,
            // be asked again; the pair must go out once.
            if !it.cookie.is_empty() && it.next_ms <= now && it.lease_until_ms <= now {
                it.owner = owner.to_owned();
                it.lease_until_ms = now + LEASE_MS;
                out.push(it.token.clone());
            }
        }
        out
    }

    /// The JSON tag request for a queued token (the wire format of
    /// [`crate::wire::TagRequest`]), built without a JSON library.
    pub fn request_body(&self, token: &str) -> Option<String> {
        let it = self.items.iter().find(|it| it.token == token)?;
        let mut out = String::with_capacity(it.token.len() + it.cookie.len() + it.page.len() + 96);
        out.push_str("{\"v\":1,\"token\":");
        push_json_str(&mut out, &it.token);
        out.push_str(",\"cookies\":{\"");
        out.push_str(munchkin::COOKIE_NAME);
        out.push_str("\":");
        push_json_str(&mut out, &it.cookie);
        out.push('}');
        if !it.page.is_empty() {
            out.push_str(",\"page\":");
            push_json_str(&mut out, &it.page);
        }
        out.push_str(",\"ts\":");
        push_i64(&mut out, it.created_ms);
        out.push_str(",\"consent\":\"granted\"}");
        Some(out)
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
                let it = self.items.remove(pos);
                if let Some(vt) = visitor_token(&it.cookie) {
                    self.remember_sent(pair_key(&vt, &it.token), now);
                }
            }
            Reply::Rejected => {
                self.items.remove(pos);
            }
            Reply::Retry => {
                let it = &mut self.items[pos];
                it.attempts += 1;
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
        self.items.iter().any(|it| it.token == token)
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
    use crate::tag_token::{peek_claims, Event, Keyring};
    use crate::wire::TagRequest;

    const NOW: i64 = 1_700_000_000_000;
    const COOKIE: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
    const COOKIE2: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-99999";

    fn ring() -> Keyring {
        Keyring::parse("k1:MDEyMzQ1Njc4OWFiY2RlZg").unwrap()
    }

    fn token(sub: &str, email: &str, iat: i64) -> String {
        ring()
            .issue(sub, email, Event::Login, iat, 600, None)
            .unwrap()
    }

    #[test]
    fn peek_agrees_with_core_claims() {
        for (sub, email) in [
            ("u1", "a@example.com"),
            ("ü \"q\" \\ \u{1F600}", "x+tag@ex.com"),
            ("x", "b@b.co"),
        ] {
            let t = token(sub, email, NOW / 1000);
            let claims = peek_claims(&t).unwrap();
            assert_eq!(
                peek_person(&t),
                Some((claims.sub.clone(), claims.email.clone()))
            );
            assert_eq!(peek_exp(&t), Some(claims.exp));
        }
        assert_eq!(peek_person("v1.!!.x"), None);
        assert_eq!(peek_person("v2.e30.x"), None);
        assert_eq!(peek_person("v1.e30.x"), None);
    }

    #[test]
    fn scanner_skips_nested_values() {
        let json = br#" { "a" : [1,{"sub":"no"}], "b":{"c":"}"}, "sub" : "yes\u00e9\ud83d\ude00", "n": -12 } "#;
        assert_eq!(
            json_top_string(json, "sub").as_deref(),
            Some("yes\u{e9}\u{1F600}")
        );
        assert_eq!(json_top_number(json, "n"), Some(-12));
        assert_eq!(json_top_string(json, "c"), None);
        assert_eq!(json_top_string(b"{\"sub\":\"unterminated", "sub"), None);
        assert_eq!(json_top_string(b"[]", "sub"), None);
    }

    #[test]
    fn repeat_login_is_duplicate_by_person_not_token() {
        let mut q = Queue::default();
        let t1 = token("u1", "a@example.com", NOW / 1000);
        let t2 = token("u1", "a@example.com", NOW / 1000 + 5);
        assert_ne!(t1, t2);
        assert_eq!(q.enqueue(&t1, Some(COOKIE), "p", NOW), Enqueued::Queued);
        assert_eq!(q.claim("a", Some(COOKIE), NOW), vec![t1.clone()]);
        q.complete(&t1, Reply::Sent, NOW, 0.5);
        assert!(q.items.is_empty());
        assert_eq!(
            q.enqueue(&t2, Some(COOKIE), "p", NOW + 1),
            Enqueued::Duplicate
        );
        // Another visitor token or another person is a new pair.
        assert_eq!(
            q.enqueue(&t2, Some(COOKIE2), "p", NOW + 1),
            Enqueued::Queued
        );
        let t3 = token("u2", "b@example.com", NOW / 1000);
        assert_eq!(q.enqueue(&t3, Some(COOKIE), "p", NOW + 1), Enqueued::Queued);
        // The memory has a time limit.
        let mut later = q.clone();
        later.items.clear();
        assert_eq!(
            later.enqueue(&t2, Some(COOKIE), "p", NOW + SENT_TTL_MS + 1),
            Enqueued::Queued
        );
    }

    #[test]
    fn cookie_filled_at_claim_and_sent_pair_dropped() {
        let mut q = Queue::default();
        let t = token("u1", "a@example.com", NOW / 1000);
        assert_eq!(q.enqueue(&t, None, "p", NOW), Enqueued::Queued);
        assert!(q.claim("a", None, NOW).is_empty(), "no cookie yet");
        assert_eq!(q.next_due_ms(), None);
        assert_eq!(q.claim("a", Some(COOKIE), NOW), vec![t.clone()]);
        assert_eq!(q.items[0].cookie, COOKIE);

        let mut q2 = Queue::default();
        q2.remember_sent(pair_key("_mch-example.com-1700000000000-12345", &t), NOW);
        q2.enqueue(&t, None, "p", NOW);
        assert!(q2.claim("a", Some(COOKIE), NOW).is_empty());
        assert!(q2.items.is_empty());
    }

    #[test]
    fn leases_and_backoff() {
        let mut q = Queue::default();
        let t = token("u1", "a@example.com", NOW / 1000);
        q.enqueue(&t, Some(COOKIE), "p", NOW);
        assert_eq!(q.claim("a", None, NOW).len(), 1);
        assert!(q.claim("b", None, NOW + 1).is_empty());
        assert!(
            q.claim("a", None, NOW + 1).is_empty(),
            "not even the owner re-claims"
        );
        let t0 = NOW + LEASE_MS;
        assert!(q.claim("b", None, t0 - 1).is_empty());
        assert_eq!(q.claim("b", None, t0).len(), 1, "lease ran out");
        q.complete(&t, Reply::Retry, t0, 0.5);
        assert_eq!(q.items[0].attempts, 1);
        assert_eq!(q.next_due_ms(), Some(t0 + 2_000));
        assert!(q.claim("a", None, t0 + 1_999).is_empty());
        assert_eq!(q.claim("a", None, t0 + 2_000).len(), 1);
        q.complete(&t, Reply::Rejected, t0 + 2_000, 0.5);
        assert!(q.is_empty(), "rejected is not remembered as sent");
    }

    #[test]
    fn expiry_bounds_and_malformed() {
        let mut q = Queue::default();
        assert_eq!(
            q.enqueue("nope", Some(COOKIE), "p", NOW),
            Enqueued::Malformed
        );
        assert_eq!(
            q.enqueue("v1..x", Some(COOKIE), "p", NOW),
            Enqueued::Malformed
        );
        let t = token("u1", "a@example.com", NOW / 1000);
        q.enqueue(&t, Some(COOKIE), "p", NOW);
        assert_eq!(q.items[0].expires_ms, NOW + 600_000);
        q.prune(NOW + 600_000);
        assert!(q.items.is_empty());
        for i in 0..(MAX_ITEMS as i64 + 5) {
            q.enqueue(&token("u", "a@example.com", NOW / 1000 + i), None, "p", NOW);
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
        let t = token("u1", "a@example.com", NOW / 1000);
        q.enqueue(&t, Some(COOKIE), "https://x.test/a?b=c\td\ne", NOW);
        q.claim("tab\t1", None, NOW);
        q.remember_sent("k".into(), NOW - 5);
        let text = q.to_text();
        let back = Queue::from_text(&text);
        assert_eq!(back.items[0].page, "https://x.test/a?b=cde");
        assert_eq!(back.items[0].owner, "tab1");
        assert_eq!(back.sent, q.sent);
        assert_eq!(Queue::from_text(&back.to_text()), back);
        assert!(Queue::from_text("idtag-q0\ni\tx").is_empty());
        assert!(Queue::from_text("").is_empty());
        let mixed = [
            FORMAT,
            "junk",
            "i\tv1.a.b\t\t\t1\t2",
            "s\tk\tnotanumber",
            "s\tk2\t7",
        ]
        .join("\n");
        let q = Queue::from_text(&mixed);
        assert!(q.items.is_empty());
        assert_eq!(q.sent, vec![("k2".to_owned(), 7)]);
    }

    #[test]
    fn request_body_is_the_wire_format() {
        let mut q = Queue::default();
        let t = token("u1", "a@example.com", NOW / 1000);
        q.enqueue(&t, Some(COOKIE), "https://x.test/\"q\"\\é", NOW);
        let body = q.request_body(&t).unwrap();
        let r: TagRequest = serde_json::from_str(&body).unwrap();
        assert_eq!(r.token, t);
        assert_eq!(r.tracking_value(), Some(COOKIE));
        assert_eq!(r.page.as_deref(), Some("https://x.test/\"q\"\\é"));
        assert_eq!(r.ts, Some(NOW));
        assert_eq!(r.v, 1);
        let mut s = String::new();
        push_json_str(&mut s, "\u{1}");
        assert_eq!(s, "\"\\u0001\"");
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
        let t1 = token("u1", "a@example.com", NOW / 1000);
        let t2 = token("u2", "b@example.com", NOW / 1000);
        a.enqueue(&t1, None, "p", NOW);
        b.enqueue(&t2, None, "p", NOW);
        b.enqueue(&t1, None, "p", NOW);
        b.remember_sent("k".into(), NOW);
        a.merge(b, NOW);
        assert_eq!(a.items.len(), 2);
        assert!(a.was_sent("k", NOW));
    }
}
