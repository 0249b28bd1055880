//! Fuzzes claim checking behind a valid signature: whatever JSON a key holder
//! signs (extreme times, odd types, huge strings), verification must not panic.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use idtag::tag_token::{Keyring, VerifyOptions};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzz-key-0123456789abcdef";

fuzz_target!(|payload: &[u8]| {
    let signed = format!("v1.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).expect("key");
    mac.update(signed.as_bytes());
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    let ring = Keyring::new(vec![("k1".to_owned(), KEY.to_vec())]).expect("ring");
    if let Ok(c) = ring.verify(&token, 1_800_000_000, &VerifyOptions::default()) {
        assert!(c.exp > c.iat && c.exp - c.iat <= idtag::tag_token::MAX_TTL_SECS);
    }
});
