//! The Marketo Munchkin tracking cookie `_mkto_trk`: parsing, validation and
//! selection among duplicates.
//!
//! A value looks like `id:123-ABC-456&token:_mch-example.com-1700000000000-12345`
//! (or with a 32-hex tail instead of `<13-digit ms>-<random>`). The **token**
//! (`_mch-…`) is what Marketo associates with a lead; the `id:` part names the
//! Marketo instance. Tokens are kept byte-for-byte: nothing here rebuilds them
//! from numbers.

use crate::cookie;
use serde::{Deserialize, Serialize};

/// The cookie name Munchkin writes.
pub const COOKIE_NAME: &str = "_mkto_trk";

/// The hidden form field Marketo Forms 2.0 (and idtag's form hook) carry the value in.
pub const FORM_FIELD: &str = "_mkt_trk";

/// Longest value accepted (real ones are under 100 bytes).
pub const MAX_VALUE_LEN: usize = 512;

/// A valid `_mkto_trk` value, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingCookie {
    /// The whole value, decoded once if it arrived percent-encoded (`id:…&token:…`).
    pub value: String,
    /// The Munchkin id (`123-ABC-456`): which Marketo instance the cookie belongs to.
    pub munchkin_id: String,
    /// The visitor token (`_mch-<domain>-…`), the part Marketo keys on.
    pub token: String,
    /// The cookie domain written inside the token (`example.com`, `my-site.example.com`).
    pub domain: String,
}

/// Why a `_mkto_trk` value was not accepted. The string codes are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// Empty, or a placeholder a script wrote by mistake (`undefined`, `null`, `none`, …).
    Placeholder,
    /// Longer than [`MAX_VALUE_LEN`].
    TooLong,
    /// Contains a broken `%` escape, is encoded twice, or decodes to something that is not ASCII.
    BadEncoding,
    /// Not of the shape `id:<munchkin id>&token:<token>`.
    Malformed,
    /// The `id:` part is not a Munchkin id (`123-ABC-456`).
    BadMunchkinId,
    /// The `token:` part is missing (often: an unencoded `&` cut it off).
    MissingToken,
    /// The token is not `_mch-<domain>-<13-digit ms>-<1..5 digits>` or `_mch-<domain>-<32 hex>`.
    BadToken,
    /// Valid, but for another Marketo instance than the configured Munchkin id.
    OtherInstance,
}

impl RejectReason {
    /// The stable code (`placeholder`, `malformed`, …).
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Placeholder => "placeholder",
            RejectReason::TooLong => "too_long",
            RejectReason::BadEncoding => "bad_encoding",
            RejectReason::Malformed => "malformed",
            RejectReason::BadMunchkinId => "bad_munchkin_id",
            RejectReason::MissingToken => "missing_token",
            RejectReason::BadToken => "bad_token",
            RejectReason::OtherInstance => "other_instance",
        }
    }

    /// A sentence for people reading logs and CLI output.
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::Placeholder => {
                "empty or placeholder value (undefined, null, none, false, 0)"
            }
            RejectReason::TooLong => "value longer than 512 bytes",
            RejectReason::BadEncoding => "broken percent-encoding",
            RejectReason::Malformed => "not of the form id:<munchkin id>&token:<token>",
            RejectReason::BadMunchkinId => "id part is not a Munchkin id like 123-ABC-456",
            RejectReason::MissingToken => "token part missing (was an unencoded '&' lost?)",
            RejectReason::BadToken => {
                "token is not _mch-<domain>-<ms>-<random> or _mch-<domain>-<32 hex>"
            }
            RejectReason::OtherInstance => {
                "belongs to another Marketo instance (Munchkin id differs)"
            }
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for RejectReason {}

/// A value that was looked at and not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The value as it appeared in the header.
    pub value: String,
    /// Why it was not accepted.
    pub reason: RejectReason,
}

/// Which cookie to prefer when a browser holds several.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// The site's Munchkin id; values of other instances are never selected.
    pub munchkin_id: Option<String>,
    /// The cookie domain Munchkin currently writes (`example.com`), preferred over stale ones.
    pub cookie_domain: Option<String>,
}

/// The outcome of looking at every `_mkto_trk` value in a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The value to use, if any.
    pub selected: Option<TrackingCookie>,
    /// Every valid value that could be selected, in header order.
    pub candidates: Vec<TrackingCookie>,
    /// Every value that was rejected, in header order, with the reason.
    pub rejected: Vec<Rejected>,
}

/// Values scripts and tag managers write when they meant "no value"; compared
/// ASCII-case-insensitively (the same words identity normalisation rejects).
const PLACEHOLDERS: [&str; 10] = [
    "",
    "undefined",
    "null",
    "none",
    "nil",
    "nan",
    "[object object]",
    "false",
    "true",
    "0",
];

/// Parses and validates one `_mkto_trk` value (from a cookie or the `_mkt_trk` form field).
///
/// A value percent-encoded as a whole is decoded exactly once first; a value that
/// still holds `%` after that (double-encoded) is rejected, not decoded again.
///
/// ```
/// use idtag::munchkin::{parse_value, RejectReason};
/// let c = parse_value("id%3A123-ABC-456%26token%3A_mch-my-site.example.com-1700000000000-7").unwrap();
/// assert_eq!(c.token, "_mch-my-site.example.com-1700000000000-7");
/// assert_eq!(c.domain, "my-site.example.com");
/// assert_eq!(parse_value("undefined"), Err(RejectReason::Placeholder));
/// assert_eq!(parse_value("id:123-ABC-456&"), Err(RejectReason::MissingToken));
/// ```
pub fn parse_value(raw: &str) -> Result<TrackingCookie, RejectReason> {
    Valid::parse(raw).map(TrackingCookie::from)
}

impl From<Valid> for TrackingCookie {
    fn from(v: Valid) -> Self {
        TrackingCookie {
            munchkin_id: v.munchkin_id().to_owned(),
            token: v.token().to_owned(),
            domain: v.domain().to_owned(),
            value: v.value,
        }
    }
}

/// A valid value with the places of its parts: the one parser behind
/// [`parse_value`], [`select`] and the browser's cookie capture.
///
/// Its layout is fixed once valid: `id:` (3 bytes), the 11-byte Munchkin id,
/// `&token:` (7 bytes), then the token `_mch-<domain>-…`. Only where the domain
/// ends varies. Written over bytes, not `char` patterns, which keeps the browser
/// build small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Valid {
    /// The whole (decoded) value.
    pub value: String,
    /// Byte offset just past the domain inside the token.
    domain_end: usize,
}

/// Where the token starts in a valid value (`id:` + id + `&token:`).
const TOKEN_AT: usize = 3 + 11 + 7;
/// Where the domain starts (`_mch-` after [`TOKEN_AT`]).
const DOMAIN_AT: usize = TOKEN_AT + 5;

impl Valid {
    pub(crate) fn parse(raw: &str) -> Result<Valid, RejectReason> {
        let trimmed = raw.trim_ascii();
        if is_placeholder(trimmed) {
            return Err(RejectReason::Placeholder);
        }
        if trimmed.len() > MAX_VALUE_LEN {
            return Err(RejectReason::TooLong);
        }
        let value = if trimmed.as_bytes().contains(&b'%') {
            let decoded = percent_decode_once(trimmed).ok_or(RejectReason::BadEncoding)?;
            if is_placeholder(&decoded) {
                return Err(RejectReason::Placeholder);
            }
            decoded
        } else {
            trimmed.to_owned()
        };
        let domain_end = check_decoded(&value)?;
        Ok(Valid { value, domain_end })
    }

    pub(crate) fn munchkin_id(&self) -> &str {
        self.value.get(3..14).unwrap_or_default()
    }

    pub(crate) fn token(&self) -> &str {
        self.value.get(TOKEN_AT..).unwrap_or_default()
    }

    pub(crate) fn domain(&self) -> &str {
        self.value
            .get(DOMAIN_AT..self.domain_end)
            .unwrap_or_default()
    }
}

fn is_placeholder(s: &str) -> bool {
    PLACEHOLDERS.iter().any(|p| s.eq_ignore_ascii_case(p))
}

/// Decodes every `%XX` once. `None` for a broken escape, a result that is not
/// ASCII (no valid value holds anything else), or one that still holds `%`
/// (double encoding: never decoded twice).
fn percent_decode_once(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let (d, step) = if c == b'%' {
            let hi = hex_digit(*b.get(i + 1)?)?;
            let lo = hex_digit(*b.get(i + 2)?)?;
            (hi << 4 | lo, 3)
        } else {
            (c, 1)
        };
        if d == b'%' || !d.is_ascii() {
            return None;
        }
        out.push(char::from(d));
        i += step;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Validates a decoded value; returns where the token's domain ends.
fn check_decoded(value: &str) -> Result<usize, RejectReason> {
    // Valid values are printable ASCII: spaces, controls and anything else are not.
    let b = value.as_bytes();
    if !b.iter().all(u8::is_ascii_graphic) {
        return Err(RejectReason::Malformed);
    }
    let rest = b.strip_prefix(b"id:").ok_or(RejectReason::Malformed)?;
    let amp = rest.iter().position(|&c| c == b'&');
    if !is_munchkin_id_bytes(rest.get(..amp.unwrap_or(rest.len())).unwrap_or_default()) {
        return Err(RejectReason::BadMunchkinId);
    }
    // The id is 11 bytes: the `&` (when present) is at 14, the token at 21.
    let token_part = match b.get(15..) {
        Some(t) if amp.is_some() && !t.is_empty() => t,
        _ => return Err(RejectReason::MissingToken),
    };
    let token = token_part
        .strip_prefix(b"token:")
        .ok_or(RejectReason::Malformed)?;
    if token.is_empty() {
        return Err(RejectReason::MissingToken);
    }
    let len = token_domain_len(token).ok_or(RejectReason::BadToken)?;
    Ok(DOMAIN_AT + len)
}

/// True for `123-ABC-456`: three digits, three ASCII letters, three digits.
///
/// ```
/// assert!(idtag::munchkin::is_munchkin_id("123-ABC-456"));
/// assert!(!idtag::munchkin::is_munchkin_id("123-AB1-456"));
/// ```
pub fn is_munchkin_id(s: &str) -> bool {
    is_munchkin_id_bytes(s.as_bytes())
}

fn is_munchkin_id_bytes(b: &[u8]) -> bool {
    b.len() == 11
        && b.iter().enumerate().all(|(i, c)| match i {
            3 | 7 => *c == b'-',
            4..=6 => c.is_ascii_alphabetic(),
            _ => c.is_ascii_digit(),
        })
}

/// The cookie domain inside a visitor token, when the token is well-formed.
///
/// ```
/// use idtag::munchkin::token_domain;
/// assert_eq!(token_domain("_mch-my-site.example.com-1700000000000-12345"), Some("my-site.example.com"));
/// assert_eq!(token_domain("_mch-example.com-1261fb15c0ebbd00867a136414ae0516"), Some("example.com"));
/// assert_eq!(token_domain("_mch-example.com-17-12345"), None);
/// ```
pub fn token_domain(token: &str) -> Option<&str> {
    let len = token_domain_len(token.as_bytes())?;
    token.get(5..5 + len)
}

/// The length of the domain inside a well-formed token (`_mch-<domain>-<tail>`).
fn token_domain_len(token: &[u8]) -> Option<usize> {
    let body = token.strip_prefix(b"_mch-")?;
    let dash = rfind_dash(body)?;
    let last = body.get(dash + 1..)?;
    let all = |s: &[u8], f: fn(&u8) -> bool| s.iter().all(f);
    // Munchkin writes the newer tail as 32 lowercase hex digits; Marketo rejects others (1012).
    let end = if last.len() == 32 && all(last, |c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        dash
    } else if (1..=5).contains(&last.len()) && all(last, u8::is_ascii_digit) {
        let head = body.get(..dash)?;
        let ms_dash = rfind_dash(head)?;
        let ms = head.get(ms_dash + 1..)?;
        if ms.len() != 13 || !all(ms, u8::is_ascii_digit) {
            return None;
        }
        ms_dash
    } else {
        return None;
    };
    is_cookie_domain(body.get(..end)?).then_some(end)
}

fn rfind_dash(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'-')
}

/// A host name as Munchkin writes it into tokens: dot-separated labels of ASCII
/// letters, digits and `-` (IP addresses and `localhost` included).
fn is_cookie_domain(d: &[u8]) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split(|&c| c == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `d` without surrounding ASCII whitespace and dots (`.example.com.` → `example.com`).
fn bare_domain(d: &str) -> &str {
    cookie::trim_bytes(d, |c| *c == b'.' || c.is_ascii_whitespace())
}

/// Looks at every `_mkto_trk` value in a `Cookie` header (or `document.cookie`)
/// and selects the one to associate.
///
/// Rules: only valid values are candidates; with a Munchkin id configured, values
/// of other instances are rejected as [`RejectReason::OtherInstance`]; a value
/// whose token domain equals the configured cookie domain wins; otherwise the
/// token domain with the fewest labels (the broadest, current cookie) wins; a
/// remaining tie goes to the value that comes last in the header.
///
/// ```
/// use idtag::munchkin::{select, Preferences};
/// let header = "_mkto_trk=id:123-ABC-456&token:_mch-www.example.io-1500000000000-11111; \
///               _mkto_trk=id:123-ABC-456&token:_mch-example.io-1600000000000-22222";
/// let s = select(header, &Preferences::default());
/// assert_eq!(s.selected.unwrap().token, "_mch-example.io-1600000000000-22222");
/// assert_eq!(s.candidates.len(), 2);
/// ```
pub fn select(header: &str, prefs: &Preferences) -> Selection {
    select_values(cookie::values_named(header, COOKIE_NAME), prefs)
}

/// Like [`select`], over values already taken out of a header or a form.
pub fn select_values<'a>(
    values: impl IntoIterator<Item = &'a str>,
    prefs: &Preferences,
) -> Selection {
    let mut out = Selection::default();
    let mut best = Picker::new(prefs);
    for raw in values {
        match best.offer(raw) {
            Ok(v) => out.candidates.push(v.into()),
            Err(reason) => out.rejected.push(Rejected {
                value: raw.to_owned(),
                reason,
            }),
        }
    }
    out.selected = best
        .chosen
        .and_then(|(i, _)| out.candidates.get(i).cloned());
    out
}

/// The selected `_mkto_trk` value of a `document.cookie` string, by the rules
/// of [`select`] without keeping the candidates and rejections (the browser's
/// cookie capture).
///
/// ```
/// use idtag::munchkin::{selected_value, Preferences};
/// let h = "_mkto_trk=undefined; _mkto_trk=id:123-ABC-456&token:_mch-example.io-1600000000000-2";
/// assert_eq!(selected_value(h, &Preferences::default()).as_deref(),
///            Some("id:123-ABC-456&token:_mch-example.io-1600000000000-2"));
/// ```
pub fn selected_value(header: &str, prefs: &Preferences) -> Option<String> {
    let mut best = Picker::new(prefs);
    let mut value = None;
    for raw in cookie::values_named(header, COOKIE_NAME) {
        if let Ok(v) = best.offer(raw) {
            if best.chosen.is_some_and(|(i, _)| i + 1 == best.seen) {
                value = Some(v.value);
            }
        }
    }
    value
}

/// Keeps the best valid value seen so far: the selection rules in one place.
struct Picker<'p> {
    wanted_id: Option<&'p str>,
    wanted_domain: Option<&'p str>,
    /// Valid values seen (candidates), and the index and rank of the best one.
    seen: usize,
    chosen: Option<(usize, (bool, core::cmp::Reverse<usize>))>,
}

impl<'p> Picker<'p> {
    fn new(prefs: &'p Preferences) -> Self {
        Picker {
            wanted_id: prefs
                .munchkin_id
                .as_deref()
                .map(str::trim_ascii)
                .filter(|s| !s.is_empty()),
            wanted_domain: prefs
                .cookie_domain
                .as_deref()
                .map(bare_domain)
                .filter(|d| !d.is_empty()),
            seen: 0,
            chosen: None,
        }
    }

    /// Parses `raw`; a valid value of the wanted instance becomes a candidate and
    /// is ranked: the configured domain first, then fewer labels; a later value
    /// wins a tie.
    fn offer(&mut self, raw: &str) -> Result<Valid, RejectReason> {
        let v = Valid::parse(raw)?;
        if self
            .wanted_id
            .is_some_and(|id| !v.munchkin_id().eq_ignore_ascii_case(id))
        {
            return Err(RejectReason::OtherInstance);
        }
        // A token's domain is valid, hence already bare (no dots or spaces at
        // its ends); only the configured one needed `bare_domain`.
        let domain = v.domain();
        let rank = (
            self.wanted_domain
                .is_some_and(|d| domain.eq_ignore_ascii_case(d)),
            core::cmp::Reverse(domain.bytes().filter(|&c| c == b'.').count()),
        );
        if self.chosen.is_none_or(|(_, r)| rank >= r) {
            self.chosen = Some((self.seen, rank));
        }
        self.seen += 1;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn double_encoded_is_not_decoded_twice() {
        let v = "id%253A123-ABC-456%2526token%253A_mch-example.com-1700000000000-12345";
        assert_eq!(parse_value(v), Err(RejectReason::BadEncoding));
    }

    #[test]
    fn broken_escapes() {
        assert_eq!(
            parse_value("id%3A123-ABC-456%2"),
            Err(RejectReason::BadEncoding)
        );
        assert_eq!(parse_value("id%ZZ"), Err(RejectReason::BadEncoding));
        assert_eq!(parse_value("%"), Err(RejectReason::BadEncoding));
    }

    #[test]
    fn token_tail_shapes() {
        assert!(token_domain("_mch-example.com-1700000000000-1").is_some());
        assert!(token_domain("_mch-example.com-1700000000000-123456").is_none());
        assert!(token_domain("_mch-example.com-170000000000-12345").is_none());
        assert!(token_domain("_mch-example.com-1261fb15c0ebbd00867a136414ae051").is_none());
        assert!(token_domain("_mch-example.com-1261FB15C0EBBD00867A136414AE0516").is_none());
        assert!(token_domain("_mch--1700000000000-12345").is_none());
        assert!(token_domain("_mch-localhost-1700000000000-12345").is_some());
        assert!(token_domain("_mch-127.0.0.1-1700000000000-12345").is_some());
        assert!(token_domain("_mch-exa mple.com-1700000000000-12345").is_none());
        assert!(token_domain("_mch-example..com-1700000000000-12345").is_none());
    }

    #[test]
    fn token_kept_byte_for_byte() {
        let c = parse_value("id:123-ABC-456&token:_mch-example.com-0000000000001-00042").unwrap();
        assert_eq!(c.token, "_mch-example.com-0000000000001-00042");
        assert_eq!(
            c.value,
            "id:123-ABC-456&token:_mch-example.com-0000000000001-00042"
        );
    }
}
