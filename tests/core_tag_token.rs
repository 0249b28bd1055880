//! Tag token behaviour on both targets: round trip, rotation, every error code.

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use idtag::tag_token::{Event, Keyring, TokenError, VerifyOptions};

const NOW: i64 = 1_800_000_000;
const KEYS: &str = "new:bmV3LWtleS0wMTIzNDU2Nzg5YWJjZGVm,old:b2xkLWtleS0wMTIzNDU2Nzg5YWJjZGVm";

fn ring() -> Keyring {
    Keyring::parse(KEYS).unwrap()
}

fn code(r: Result<idtag::tag_token::Claims, TokenError>) -> &'static str {
    r.unwrap_err().code()
}

#[test]
fn round_trip_and_format() {
    let t = ring()
        .issue("user-1", " Jane@Example.COM", Event::Signup, NOW, 600, None)
        .unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], "v1");
    assert!(!t.contains('='), "no padding");
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(payload["sub"], "user-1");
    assert_eq!(payload["evt"], "signup");
    assert_eq!(payload["kid"], "new");
    assert_eq!(payload["exp"], NOW + 600);
    let c = ring()
        .verify(&t, NOW + 1, &VerifyOptions::default())
        .unwrap();
    assert_eq!(c.email, "jane@example.com");
    assert_eq!(c.evt, Event::Signup);
}

/// A token signed by another implementation from the documented format verifies.
#[test]
fn documented_format_interoperates() {
    use hmac::{Hmac, Mac};
    let payload = r#"{"sub":"42","email":"a@example.com","evt":"login","iat":1800000000,"exp":1800000600,"kid":"old"}"#;
    let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"old-key-0123456789abcdef").unwrap();
    mac.update(signed.as_bytes());
    let token = format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    let c = ring()
        .verify(&token, NOW, &VerifyOptions::default())
        .unwrap();
    assert_eq!((c.sub.as_str(), c.kid.as_str()), ("42", "old"));
}

#[test]
fn every_error_code() {
    let r = ring();
    let o = VerifyOptions::default();
    let t = r
        .issue("u", "a@example.com", Event::Login, NOW, 600, None)
        .unwrap();
    assert_eq!(code(r.verify(&t, NOW + 600 + o.leeway_secs, &o)), "expired");
    assert_eq!(
        code(r.verify(&t, NOW - o.leeway_secs - 1, &o)),
        "not_yet_valid"
    );
    assert_eq!(code(r.verify("", NOW, &o)), "malformed");
    assert_eq!(code(r.verify("v1.abc", NOW, &o)), "malformed");
    assert_eq!(code(r.verify("v1.!!.!!", NOW, &o)), "malformed");
    assert_eq!(code(r.verify(&format!("{t}.extra"), NOW, &o)), "malformed");
    assert_eq!(
        code(r.verify(&t.replacen("v1.", "v2.", 1), NOW, &o)),
        "unsupported_version"
    );
    assert_eq!(
        code(r.verify(&"x".repeat(o.max_len + 1), NOW, &o)),
        "too_large"
    );
    let stranger = Keyring::parse("k9:c3RyYW5nZXIta2V5LTAxMjM0NTY3").unwrap();
    let ts = stranger
        .issue("u", "a@example.com", Event::Login, NOW, 600, None)
        .unwrap();
    assert_eq!(code(r.verify(&ts, NOW, &o)), "unknown_key");
    let forger = Keyring::parse("new:Zm9yZ2VkLWtleS0wMTIzNDU2Nzg5").unwrap();
    let tf = forger
        .issue("admin", "boss@example.com", Event::Login, NOW, 600, None)
        .unwrap();
    assert_eq!(code(r.verify(&tf, NOW, &o)), "bad_signature");
    // Payload swapped under a valid signature.
    let other = r
        .issue("v", "b@example.com", Event::Login, NOW, 600, None)
        .unwrap();
    let mixed = format!(
        "v1.{}.{}",
        other.split('.').nth(1).unwrap(),
        t.split('.').nth(2).unwrap()
    );
    assert_eq!(code(r.verify(&mixed, NOW, &o)), "bad_signature");
}

#[test]
fn issue_rejects_bad_claims() {
    let r = ring();
    assert_eq!(
        r.issue("", "a@example.com", Event::Login, NOW, 600, None)
            .unwrap_err()
            .code(),
        "invalid_claims"
    );
    assert_eq!(
        r.issue("u", "undefined", Event::Login, NOW, 600, None)
            .unwrap_err()
            .code(),
        "invalid_claims"
    );
    assert_eq!(
        r.issue("u", "a@example.com", Event::Login, NOW, 0, None)
            .unwrap_err()
            .code(),
        "invalid_claims"
    );
    assert_eq!(
        r.issue("u", "a@example.com", Event::Login, NOW, 600, Some("nope"))
            .unwrap_err()
            .code(),
        "unknown_key"
    );
}

#[test]
fn stricter_options() {
    let r = ring();
    let t = r
        .issue("u", "a@example.com", Event::Login, NOW, 600, None)
        .unwrap();
    let strict = VerifyOptions {
        leeway_secs: 0,
        max_len: t.len() - 1,
    };
    assert_eq!(code(r.verify(&t, NOW, &strict)), "too_large");
    let strict = VerifyOptions {
        leeway_secs: 0,
        max_len: 4096,
    };
    assert_eq!(code(r.verify(&t, NOW + 600, &strict)), "expired");
    assert!(r.verify(&t, NOW + 599, &strict).is_ok());
}
