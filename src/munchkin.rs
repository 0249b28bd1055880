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
    /// Contains a broken `%` escape, or decodes to something that is not UTF-8.
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
    let trimmed = raw.trim();
    if PLACEHOLDERS.iter().any(|p| trimmed.eq_ignore_ascii_case(p)) {
        return Err(RejectReason::Placeholder);
    }
    if trimmed.len() > MAX_VALUE_LEN {
        return Err(RejectReason::TooLong);
    }
    let decoded;
    let value = if trimmed.contains('%') {
        decoded = percent_encoding::percent_decode_str(trimmed)
            .decode_utf8()
            .map_err(|_| RejectReason::BadEncoding)?;
        if !valid_escapes(trimmed) || decoded.contains('%') {
            return Err(RejectReason::BadEncoding);
        }
        if PLACEHOLDERS.iter().any(|p| decoded.eq_ignore_ascii_case(p)) {
            return Err(RejectReason::Placeholder);
        }
        &*decoded
    } else {
        trimmed
    };
    parse_decoded(value)
}

/// True when every `%` starts a two-hex-digit escape.
fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn parse_decoded(value: &str) -> Result<TrackingCookie, RejectReason> {
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RejectReason::Malformed);
    }
    let rest = value.strip_prefix("id:").ok_or(RejectReason::Malformed)?;
    let (munchkin_id, token_part) = match rest.split_once('&') {
        Some((id, t)) => (id, Some(t)),
        None => (rest, None),
    };
    if !is_munchkin_id(munchkin_id) {
        return Err(RejectReason::BadMunchkinId);
    }
    let token = match token_part {
        None | Some("") => return Err(RejectReason::MissingToken),
        Some(t) => t.strip_prefix("token:").ok_or(RejectReason::Malformed)?,
    };
    if token.is_empty() {
        return Err(RejectReason::MissingToken);
    }
    let domain = token_domain(token).ok_or(RejectReason::BadToken)?;
    Ok(TrackingCookie {
        value: value.to_owned(),
        munchkin_id: munchkin_id.to_owned(),
        token: token.to_owned(),
        domain: domain.to_owned(),
    })
}

/// True for `123-ABC-456`: three digits, three ASCII letters, three digits.
///
/// ```
/// assert!(idtag::munchkin::is_munchkin_id("123-ABC-456"));
/// assert!(!idtag::munchkin::is_munchkin_id("123-AB1-456"));
/// ```
pub fn is_munchkin_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b[3] == b'-'
        && b[7] == b'-'
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[4..7].iter().all(u8::is_ascii_alphabetic)
        && b[8..].iter().all(u8::is_ascii_digit)
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
    let body = token.strip_prefix("_mch-")?;
    let (head, last) = body.rsplit_once('-')?;
    // Munchkin writes the newer tail as 32 lowercase hex digits; Marketo rejects others (1012).
    let domain = if last.len() == 32 && last.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        head
    } else if (1..=5).contains(&last.len()) && last.bytes().all(|c| c.is_ascii_digit()) {
        let (domain, ms) = head.rsplit_once('-')?;
        if ms.len() != 13 || !ms.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        domain
    } else {
        return None;
    };
    is_cookie_domain(domain).then_some(domain)
}

/// A host name as Munchkin writes it into tokens: dot-separated labels of ASCII
/// letters, digits and `-` (IP addresses and `localhost` included).
fn is_cookie_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

fn same_domain(a: &str, b: &str) -> bool {
    let strip = |s: &str| {
        s.trim()
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_owned()
    };
    strip(a).eq_ignore_ascii_case(&strip(b))
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
    let wanted_id = prefs
        .munchkin_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    for raw in values {
        match parse_value(raw) {
            Ok(c) if wanted_id.is_some_and(|id| !c.munchkin_id.eq_ignore_ascii_case(id)) => {
                out.rejected.push(Rejected {
                    value: raw.to_owned(),
                    reason: RejectReason::OtherInstance,
                });
            }
            Ok(c) => out.candidates.push(c),
            Err(reason) => out.rejected.push(Rejected {
                value: raw.to_owned(),
                reason,
            }),
        }
    }
    let wanted_domain = prefs
        .cookie_domain
        .as_deref()
        .filter(|d| !d.trim().trim_matches('.').is_empty());
    let rank = |c: &TrackingCookie| {
        let domain_match = wanted_domain.is_some_and(|d| same_domain(&c.domain, d));
        // Higher is better: the configured domain first, then fewer labels.
        (domain_match, std::cmp::Reverse(c.domain.split('.').count()))
    };
    // `max_by_key` returns the last of equal maxima: the later value wins ties.
    out.selected = out.candidates.iter().max_by_key(|c| rank(c)).cloned();
    out
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
