//! Fuzzes identity normalisation: no panic, and normalising is idempotent.
#![no_main]

use idtag::identity::normalize_email;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(e) = normalize_email(s) {
        assert_eq!(normalize_email(e.as_str()).as_ref(), Ok(&e));
    }
});
