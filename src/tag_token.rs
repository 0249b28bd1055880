//! Tag tokens: short-lived, signed statements by the product backend of who the
//! user is, forwarded by the browser to the tag endpoint.
//!
//! Format: `v1.<base64url(payload JSON)>.<base64url(HMAC-SHA256(key, "v1." + payload part))>`,
//! base64url without padding. Payload: `sub`, `email`, `evt` (`login`|`signup`),
//! `iat`, `exp` (Unix seconds) and `kid` (which key signed it, for rotation).
//!
//! Any language can sign one; in Node:
//! `const p = b64url(JSON.stringify(claims)); token = "v1." + p + "." + b64url(hmac("sha256", key, "v1." + p))`.

use crate::identity::normalize_email;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The version prefix of the current format.
pub const VERSION: &str = "v1";
/// Default lifetime of an issued token: 10 minutes.
pub const DEFAULT_TTL_SECS: i64 = 600;
/// Longest lifetime a token may claim: one day.
pub const MAX_TTL_SECS: i64 = 86_400;
/// Default clock-skew leeway when verifying.
pub const DEFAULT_LEEWAY_SECS: i64 = 60;
/// Default size cap on a token.
pub const DEFAULT_MAX_LEN: usize = 2048;
/// Longest key id accepted, in bytes.
pub const MAX_KID_LEN: usize = 64;
/// Shortest signing key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// The event that made the backend learn who the visitor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// An existing user logged in.
    Login,
    /// A new user signed up.
    Signup,
}

impl Event {
    /// `login` or `signup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Login => "login",
            Event::Signup => "signup",
        }
    }
}

impl std::str::FromStr for Event {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "login" => Ok(Event::Login),
            "signup" => Ok(Event::Signup),
            _ => Err(TokenError::InvalidClaims("evt must be login or signup")),
        }
    }
}

/// What a tag token states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The product's user id.
    pub sub: String,
    /// The user's email address (normalised on verification).
    pub email: String,
    /// Login or signup.
    pub evt: Event,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Id of the key that signed the token.
    pub kid: String,
}

/// Why a token was refused. Each variant has a distinct, stable [`code`](TokenError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three dot-separated base64url parts with a JSON payload.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// A version prefix other than `v1`.
    #[error("unsupported token version")]
    UnsupportedVersion,
    /// No key with the token's `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// Past `exp` (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `iat` lies in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// Claims missing, of the wrong type, or inconsistent.
    #[error("invalid claims: {0}")]
    InvalidClaims(&'static str),
    /// Longer than the size cap.
    #[error("token too large")]
    TooLarge,
}

impl TokenError {
    /// The stable code: `malformed`, `unsupported_version`, `unknown_key`,
    /// `bad_signature`, `expired`, `not_yet_valid`, `invalid_claims`, `too_large`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnsupportedVersion => "unsupported_version",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::InvalidClaims(_) => "invalid_claims",
            TokenError::TooLarge => "too_large",
        }
    }
}

/// Why a key list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No keys given.
    #[error("no keys: expected kid:base64key[,kid:base64key…]")]
    Empty,
    /// An entry without `kid:`, or with a key id longer than 64 bytes.
    #[error("key entry {0} is not kid:base64key (kid of 1..64 bytes)")]
    Syntax(usize),
    /// An entry whose key is not base64.
    #[error("key {0:?} is not valid base64")]
    Base64(String),
    /// A key shorter than [`MIN_KEY_LEN`] bytes.
    #[error("key {0:?} is shorter than 16 bytes")]
    TooShort(String),
    /// Two entries with one `kid`.
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
}

/// Signing keys by id; the first one signs, every one verifies (key rotation).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Keyring")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring from `(kid, key)` pairs; the first signs.
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        for (i, (kid, key)) in keys.iter().enumerate() {
            if kid.is_empty() || kid.len() > MAX_KID_LEN {
                return Err(KeyError::Syntax(i + 1));
            }
            if key.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort(kid.clone()));
            }
            if keys[..i].iter().any(|(k, _)| k == kid) {
                return Err(KeyError::Duplicate(kid.clone()));
            }
        }
        Ok(Self { keys })
    }

    /// Parses the `IDTAG_TOKEN_KEYS` format: `kid:base64key,kid:base64key…`
    /// (standard or URL-safe base64, padding optional).
    ///
    /// ```
    /// let ring = idtag::tag_token::Keyring::parse("k2:MDEyMzQ1Njc4OWFiY2RlZg==, k1:ZmVkY2JhOTg3NjU0MzIxMA").unwrap();
    /// assert_eq!(ring.signing_kid(), "k2");
    /// ```
    pub fn parse(spec: &str) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (kid, b64) = entry.split_once(':').ok_or(KeyError::Syntax(i + 1))?;
            let (kid, b64) = (kid.trim(), b64.trim());
            let key = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|e| e.decode(b64).ok())
                .ok_or_else(|| KeyError::Base64(kid.to_owned()))?;
            keys.push((kid.to_owned(), key));
        }
        Self::new(keys)
    }

    /// The id of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].0
    }

    fn key(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, v)| v.as_slice())
    }

    /// Signs a token for `sub`/`email`/`evt`, valid from `now_secs` for `ttl_secs`,
    /// with the key `kid` (default: the first).
    ///
    /// ```
    /// use idtag::tag_token::{Event, Keyring, VerifyOptions};
    /// let ring = Keyring::parse("k1:MDEyMzQ1Njc4OWFiY2RlZg").unwrap();
    /// let t = ring.issue("u1", "Jane@Example.com", Event::Login, 1_700_000_000, 600, None).unwrap();
    /// let claims = ring.verify(&t, 1_700_000_100, &VerifyOptions::default()).unwrap();
    /// assert_eq!(claims.email, "jane@example.com");
    /// ```
    pub fn issue(
        &self,
        sub: &str,
        email: &str,
        evt: Event,
        now_secs: i64,
        ttl_secs: i64,
        kid: Option<&str>,
    ) -> Result<String, TokenError> {
        let kid = kid.unwrap_or_else(|| self.signing_kid());
        let key = self.key(kid).ok_or(TokenError::UnknownKey)?;
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(TokenError::InvalidClaims(
                "ttl must be between 1 s and one day",
            ));
        }
        let claims = Claims {
            sub: sub.to_owned(),
            email: email.to_owned(),
            evt,
            iat: now_secs,
            exp: now_secs
                .checked_add(ttl_secs)
                .ok_or(TokenError::InvalidClaims("exp out of range"))?,
            kid: kid.to_owned(),
        };
        let claims = checked_claims(claims)?;
        let payload = serde_json::to_vec(&claims)
            .map_err(|_| TokenError::InvalidClaims("claims do not serialise"))?;
        let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = URL_SAFE_NO_PAD.encode(mac(key, signed.as_bytes()).finalize().into_bytes());
        let token = format!("{signed}.{sig}");
        if token.len() > DEFAULT_MAX_LEN {
            return Err(TokenError::TooLarge);
        }
        Ok(token)
    }

    /// Verifies a token at `now_secs` and returns its claims, the email normalised.
    ///
    /// The signature is compared in constant time and checked before any claim is trusted.
    pub fn verify(
        &self,
        token: &str,
        now_secs: i64,
        opts: &VerifyOptions,
    ) -> Result<Claims, TokenError> {
        if token.len() > opts.max_len {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(version), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(match token.split_once('.') {
                Some((v, _)) if v != VERSION && looks_like_version(v) => {
                    TokenError::UnsupportedVersion
                }
                _ => TokenError::Malformed("expected v1.<payload>.<signature>"),
            });
        };
        if version != VERSION {
            return Err(if looks_like_version(version) {
                TokenError::UnsupportedVersion
            } else {
                TokenError::Malformed("missing version prefix")
            });
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let value: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|_| TokenError::Malformed("payload is not JSON"))?;
        let kid = value
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .ok_or(TokenError::InvalidClaims("kid missing"))?;
        let key = self.key(kid).ok_or(TokenError::UnknownKey)?;
        let signed_len = VERSION.len() + 1 + payload_b64.len();
        mac(key, &token.as_bytes()[..signed_len])
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_value(value)
            .map_err(|_| TokenError::InvalidClaims("claims of the wrong shape"))?;
        let claims = checked_claims(claims)?;
        if claims.iat > now_secs.saturating_add(opts.leeway_secs) {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp <= now_secs.saturating_sub(opts.leeway_secs) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn looks_like_version(v: &str) -> bool {
    v.len() <= 8 && v.starts_with('v') && v.len() > 1 && v[1..].bytes().all(|b| b.is_ascii_digit())
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m
}

/// Checks the claims for consistency and normalises the email.
fn checked_claims(mut c: Claims) -> Result<Claims, TokenError> {
    if c.sub.trim().is_empty() || c.sub.len() > 256 {
        return Err(TokenError::InvalidClaims("sub must be 1..256 bytes"));
    }
    if c.kid.is_empty() || c.kid.len() > MAX_KID_LEN {
        return Err(TokenError::InvalidClaims("kid must be 1..64 bytes"));
    }
    c.email = normalize_email(&c.email)
        .map_err(|_| TokenError::InvalidClaims("email is not a valid address"))?
        .as_str()
        .to_owned();
    // `checked_sub`: claims come from the payload, and i64::MIN must not wrap into "short".
    let life = c.exp.checked_sub(c.iat);
    if c.iat < 0 || !life.is_some_and(|l| (1..=MAX_TTL_SECS).contains(&l)) {
        return Err(TokenError::InvalidClaims(
            "exp must follow iat by at most one day",
        ));
    }
    Ok(c)
}

/// How strictly [`Keyring::verify`] checks time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Clock skew tolerated on `iat` and `exp`, in seconds.
    pub leeway_secs: i64,
    /// Longest token accepted, in bytes.
    pub max_len: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_len: DEFAULT_MAX_LEN,
        }
    }
}

/// Reads the claims of a token **without verifying it**: for the browser, which
/// only needs the identity to key its local de-duplication and never trusts it.
pub fn peek_claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let (Some(VERSION), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ring() -> Keyring {
        Keyring::parse("k1:MDEyMzQ1Njc4OWFiY2RlZg,k0:ZmVkY2JhOTg3NjU0MzIxMA").unwrap()
    }

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn error_codes_are_distinct() {
        let r = ring();
        let o = VerifyOptions::default();
        let t = r
            .issue("u", "a@example.com", Event::Login, NOW, 600, None)
            .unwrap();
        assert_eq!(
            r.verify(&t, NOW + 600 + 61, &o).unwrap_err().code(),
            "expired"
        );
        assert_eq!(
            r.verify(&t, NOW - 61, &o).unwrap_err().code(),
            "not_yet_valid"
        );
        assert!(r.verify(&t, NOW + 650, &o).is_ok(), "within leeway");
        assert_eq!(
            r.verify(&t.replacen("v1", "v2", 1), NOW, &o)
                .unwrap_err()
                .code(),
            "unsupported_version"
        );
        assert_eq!(
            r.verify("garbage", NOW, &o).unwrap_err().code(),
            "malformed"
        );
        assert_eq!(
            r.verify(&"a".repeat(5000), NOW, &o).unwrap_err().code(),
            "too_large"
        );
        let other = Keyring::parse("k9:MDEyMzQ1Njc4OWFiY2RlZg").unwrap();
        let t9 = other
            .issue("u", "a@example.com", Event::Login, NOW, 600, None)
            .unwrap();
        assert_eq!(r.verify(&t9, NOW, &o).unwrap_err().code(), "unknown_key");
        let forged = Keyring::parse("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let tf = forged
            .issue("u", "a@example.com", Event::Login, NOW, 600, None)
            .unwrap();
        assert_eq!(r.verify(&tf, NOW, &o).unwrap_err().code(), "bad_signature");
    }

    /// A token over any payload, validly signed with `ring()`'s key `k1`.
    fn signed_by_k1(payload: &str) -> String {
        let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = mac(b"0123456789abcdef", signed.as_bytes())
            .finalize()
            .into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn invalid_claims_after_signature() {
        let r = ring();
        let t = signed_by_k1(
            r#"{"sub":"u","email":"undefined","evt":"login","iat":1700000000,"exp":1700000600,"kid":"k1"}"#,
        );
        assert_eq!(
            r.verify(&t, NOW, &VerifyOptions::default())
                .unwrap_err()
                .code(),
            "invalid_claims"
        );
    }

    #[test]
    fn extreme_times_are_invalid_claims_not_overflow() {
        let r = ring();
        for (iat, exp) in [
            (i64::MIN, NOW + 600),
            (NOW, i64::MAX),
            (-5, 100),
            (NOW, NOW),
        ] {
            let body = format!(
                r#"{{"sub":"u","email":"a@example.com","evt":"login","iat":{iat},"exp":{exp},"kid":"k1"}}"#
            );
            let t = signed_by_k1(&body);
            assert_eq!(
                r.verify(&t, NOW, &VerifyOptions::default())
                    .unwrap_err()
                    .code(),
                "invalid_claims",
                "{iat} {exp}"
            );
        }
        assert!(r
            .issue("u", "a@example.com", Event::Login, i64::MAX - 10, 600, None)
            .is_err());
    }

    #[test]
    fn rotation_verifies_with_old_key() {
        let r = ring();
        let t = r
            .issue("u", "a@example.com", Event::Signup, NOW, 600, Some("k0"))
            .unwrap();
        assert_eq!(
            r.verify(&t, NOW, &VerifyOptions::default()).unwrap().kid,
            "k0"
        );
    }

    #[test]
    fn key_errors() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(Keyring::parse("nokid").unwrap_err(), KeyError::Syntax(1));
        assert!(matches!(
            Keyring::parse("k:c2hvcnQ=").unwrap_err(),
            KeyError::TooShort(_)
        ));
        assert!(matches!(
            Keyring::parse("k:!!!").unwrap_err(),
            KeyError::Base64(_)
        ));
    }
}
