//! The emulator's own reading of `_mkto_trk` values, written from MARKETO.md and
//! deliberately independent of [`crate::munchkin`]: the emulator checks idtag's
//! client, so it must not share its parser (a misreading shared by both would
//! hide itself).
//!
//! A value is `id:<munchkin id>&token:<token>`; a munchkin id is
//! `<3 digits>-<3 letters>-<3 digits>`; a token is
//! `_mch-<domain>-<13-digit ms>-<1..5 digits>` or `_mch-<domain>-<32 lowercase hex>`,
//! where the domain may itself contain `-`.

/// A `_mkto_trk` value the emulator accepts, split into its two parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrkValue {
    /// The Munchkin id from the `id:` part.
    pub munchkin_id: String,
    /// The visitor token (`_mch-…`), kept byte for byte.
    pub token: String,
}

/// Parses a whole `_mkto_trk` value (already percent-decoded once by the caller).
///
/// ```
/// use idtag::emulator::tracking_cookie::parse_value;
/// let v = parse_value("id:123-ABC-456&token:_mch-example.com-1700000000000-12345").unwrap();
/// assert_eq!(v.token, "_mch-example.com-1700000000000-12345");
/// assert!(parse_value("id:123-ABC-456").is_none()); // the `&token:` part was lost
/// ```
pub fn parse_value(value: &str) -> Option<TrkValue> {
    let rest = value.strip_prefix("id:")?;
    let (munchkin_id, token) = rest.split_once("&token:")?;
    if !is_munchkin_id(munchkin_id) || !is_token(token) {
        return None;
    }
    Some(TrkValue {
        munchkin_id: munchkin_id.to_string(),
        token: token.to_string(),
    })
}

/// Whether `s` looks like a Munchkin id (`123-ABC-456`).
///
/// ```
/// use idtag::emulator::tracking_cookie::is_munchkin_id;
/// assert!(is_munchkin_id("123-ABC-456"));
/// assert!(!is_munchkin_id("123-AB1-456"));
/// ```
pub fn is_munchkin_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b[3] == b'-'
        && b[7] == b'-'
        && b[0..3].iter().all(u8::is_ascii_digit)
        && b[4..7].iter().all(u8::is_ascii_alphabetic)
        && b[8..11].iter().all(u8::is_ascii_digit)
}

/// Whether `s` is a visitor token in either of the two genuine shapes.
///
/// ```
/// use idtag::emulator::tracking_cookie::is_token;
/// assert!(is_token("_mch-my-site.example.com-1700000000000-12345"));
/// assert!(is_token("_mch-example.com-1261fb15c0ebbd00867a136414ae0516"));
/// assert!(!is_token("_mch-example.com-17000-12345"));
/// ```
pub fn is_token(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("_mch-") else {
        return false;
    };
    let Some((head, last)) = rest.rsplit_once('-') else {
        return false;
    };
    if last.len() == 32 && last.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return is_domain(head);
    }
    if (1..=5).contains(&last.len()) && last.bytes().all(|c| c.is_ascii_digit()) {
        if let Some((domain, ms)) = head.rsplit_once('-') {
            return ms.len() == 13 && ms.bytes().all(|c| c.is_ascii_digit()) && is_domain(domain);
        }
    }
    false
}

/// The cookie domain inside a token: host name characters only, not empty.
fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_genuine_shapes() {
        for v in [
            "id:123-ABC-456&token:_mch-example.com-1700000000000-12345",
            "id:123-ABC-456&token:_mch-example.com-1700000000000-1",
            "id:123-abc-456&token:_mch-my-site.example.co.uk-1700000000000-99999",
            "id:123-ABC-456&token:_mch-localhost-1700000000000-42",
            "id:123-ABC-456&token:_mch-127.0.0.1-1700000000000-42",
            "id:123-ABC-456&token:_mch-example.com-1261fb15c0ebbd00867a136414ae0516",
        ] {
            assert!(parse_value(v).is_some(), "{v}");
        }
    }

    #[test]
    fn rejects_broken_values() {
        for v in [
            "",
            "undefined",
            "id:123-ABC-456",
            "id:123-ABC-456&",
            "id%3A123-ABC-456%26token%3A_mch-example.com-1700000000000-12345",
            "id:12-ABC-456&token:_mch-example.com-1700000000000-12345",
            "id:123-ABC-456&token:_mch-example.com-170000000000-12345",
            "id:123-ABC-456&token:_mch-example.com-1700000000000-123456",
            "id:123-ABC-456&token:_mch--1700000000000-12345",
            "id:123-ABC-456&token:_mch-example.com-1261FB15C0EBBD00867A136414AE0516",
            "id:123-ABC-456&token:mch-example.com-1700000000000-12345",
            "token:_mch-example.com-1700000000000-12345",
        ] {
            assert!(parse_value(v).is_none(), "{v}");
        }
    }
}
