//! Identity normalisation: the key idtag looks leads up by and deduplicates on.
//!
//! An email address is trimmed, NFC-normalised and lowercased with
//! locale-independent rules; plus-tags and dots are kept (they are distinct
//! mailboxes at many providers); the domain is brought to one form whether it was
//! written as a U-label or an A-label (punycode). Placeholders that forms and
//! scripts produce by mistake are rejected.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// Longest address accepted (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest local part accepted (RFC 5321).
pub const MAX_LOCAL_LEN: usize = 64;

/// A normalised email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pseudonymous key of this person: lowercase hex SHA-256 of the address.
    /// Logs and metrics carry this, never the address.
    ///
    /// ```
    /// let e = idtag::identity::normalize_email("Jane@Example.com").unwrap();
    /// assert_eq!(e.key().len(), 64);
    /// ```
    pub fn key(&self) -> String {
        hex_sha256(self.0.as_bytes())
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// Why an identity was rejected. `code()` is stable: `placeholder` or `invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Empty, whitespace, or a value scripts write by mistake (`undefined`, `null`, …).
    #[error("placeholder value {0:?} is not an email address")]
    Placeholder(String),
    /// Not an email address; the text says why.
    #[error("not an email address: {0}")]
    Invalid(&'static str),
}

impl IdentityError {
    /// The stable code: `placeholder` or `invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::Placeholder(_) => "placeholder",
            IdentityError::Invalid(_) => "invalid",
        }
    }
}

const PLACEHOLDERS: [&str; 13] = [
    "",
    "null",
    "undefined",
    "none",
    "nan",
    "0",
    "true",
    "false",
    "[object object]",
    "nil",
    "n/a",
    "na",
    "-",
];

/// Invisible format characters that copy-paste, autofill and rich-text editors
/// bring along (zero-width spaces and joiners, bidi marks and isolates, the soft
/// hyphen, the byte-order mark): removed wherever they stand, so that one person
/// has one key.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
    )
}

/// Normalises an email address into the key idtag uses for the person.
///
/// ```
/// use idtag::identity::normalize_email;
/// assert_eq!(normalize_email(" Jane.Doe+promo@Example.COM\t").unwrap().as_str(), "jane.doe+promo@example.com");
/// assert_eq!(
///     normalize_email("ana@xn--caf-dma.example").unwrap(),
///     normalize_email("ANA@Cafe\u{301}.example").unwrap(),
/// );
/// assert_eq!(normalize_email("undefined").unwrap_err().code(), "placeholder");
/// assert_eq!(normalize_email("@example.com").unwrap_err().code(), "invalid");
/// ```
pub fn normalize_email(input: &str) -> Result<Email, IdentityError> {
    let visible: String = input.chars().filter(|&c| !is_invisible(c)).collect();
    let trimmed = visible.trim();
    let lowered: String = trimmed.nfc().collect::<String>().to_lowercase();
    if PLACEHOLDERS.contains(&lowered.as_str()) {
        return Err(IdentityError::Placeholder(trimmed.to_owned()));
    }
    if lowered.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdentityError::Invalid(
            "contains white space or control characters",
        ));
    }
    // Lowercasing can decompose (İ → i + U+0307): compose again.
    let lowered: String = lowered.nfc().collect();
    let (local, domain) = lowered
        .rsplit_once('@')
        .ok_or(IdentityError::Invalid("no '@'"))?;
    if local.is_empty() {
        return Err(IdentityError::Invalid("empty local part"));
    }
    if domain.is_empty() {
        return Err(IdentityError::Invalid("empty domain"));
    }
    check_local(local)?;
    let domain = normalize_domain(domain)?;
    let email = format!("{local}@{domain}");
    if email.len() > MAX_EMAIL_LEN {
        return Err(IdentityError::Invalid("longer than 254 bytes"));
    }
    Ok(Email(email))
}

fn check_local(local: &str) -> Result<(), IdentityError> {
    if local.len() > MAX_LOCAL_LEN {
        return Err(IdentityError::Invalid("local part longer than 64 bytes"));
    }
    if local.contains('@') && !(local.starts_with('"') && local.ends_with('"')) {
        return Err(IdentityError::Invalid("more than one '@'"));
    }
    if local.starts_with('"') {
        return Ok(());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(IdentityError::Invalid("misplaced '.' in local part"));
    }
    if local.chars().any(|c| "<>()[]\\,;:\"".contains(c)) {
        return Err(IdentityError::Invalid(
            "local part holds characters not allowed unquoted",
        ));
    }
    Ok(())
}

/// Brings a domain to one form: lowercase NFC U-labels, whether it was written
/// with U-labels or A-labels; one trailing dot (an absolute name) is dropped.
fn normalize_domain(domain: &str) -> Result<String, IdentityError> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.starts_with('[') {
        return Err(IdentityError::Invalid("address literals are not accepted"));
    }
    let ascii = idna::domain_to_ascii_strict(domain)
        .map_err(|_| IdentityError::Invalid("domain is not a valid host name"))?;
    if ascii.is_empty() || !ascii.contains('.') {
        return Err(IdentityError::Invalid("domain is not fully qualified"));
    }
    if ascii
        .split('.')
        .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(IdentityError::Invalid("domain is not a valid host name"));
    }
    if ascii
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(IdentityError::Invalid(
            "domain is an IP address, not a host name",
        ));
    }
    let (unicode, result) = idna::domain_to_unicode(&ascii);
    result.map_err(|_| IdentityError::Invalid("domain is not a valid host name"))?;
    Ok(unicode.nfc().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ok(s: &str) -> String {
        normalize_email(s).unwrap().0
    }

    #[test]
    fn composed_and_decomposed_local_part() {
        assert_eq!(ok("Jose\u{301}@example.com"), ok("jos\u{e9}@example.com"));
    }

    #[test]
    fn punycode_and_unicode_domain() {
        assert_eq!(ok("a@b\u{fc}cher.example"), ok("a@xn--bcher-kva.example"));
        assert_eq!(ok("a@XN--BCHER-KVA.EXAMPLE"), "a@b\u{fc}cher.example");
    }

    #[test]
    fn trailing_dot_and_zero_width() {
        assert_eq!(ok("\u{FEFF}a@example.com.\u{200B}"), "a@example.com");
    }

    #[test]
    fn invisible_characters_anywhere_give_one_key() {
        for s in [
            "\u{200E}jane@example.com",
            "ja\u{00AD}ne@example.com",
            "jane@exa\u{200B}mple.com",
            "\u{202E}jane@example.com\u{202C}",
        ] {
            assert_eq!(ok(s), "jane@example.com", "{s:?}");
        }
    }

    #[test]
    fn rejects() {
        for bad in [
            "a@b",
            "a b@example.com",
            "a@@example.com",
            "a@-x.com",
            "a@x..com",
            ".a@x.com",
            "a@[1.2.3.4]",
        ] {
            assert_eq!(normalize_email(bad).unwrap_err().code(), "invalid", "{bad}");
        }
        for p in ["  ", "NULL", "None", "NaN", "0", "false", "[object Object]"] {
            assert_eq!(normalize_email(p).unwrap_err().code(), "placeholder", "{p}");
        }
    }
}
