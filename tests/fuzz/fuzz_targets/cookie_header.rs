//! Fuzzes Cookie-header parsing and `_mkto_trk` selection.
#![no_main]

use idtag::munchkin::{parse_value, select, selected_value, Preferences};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else { return };
    let (prefs_part, header) = header.split_once('\n').unwrap_or(("", header));
    let mut it = prefs_part.splitn(2, ' ');
    let prefs = Preferences {
        munchkin_id: it.next().filter(|s| !s.is_empty()).map(str::to_owned),
        cookie_domain: it.next().map(str::to_owned),
    };
    let s = select(header, &prefs);
    // The browser's lean selection agrees with the full one.
    assert_eq!(
        selected_value(header, &prefs),
        s.selected.as_ref().map(|c| c.value.clone())
    );
    if let Some(sel) = &s.selected {
        assert!(s.candidates.contains(sel));
        // Decoded once: the selected value parses to itself.
        assert_eq!(parse_value(&sel.value).as_ref(), Ok(sel));
        assert!(sel.value.ends_with(&sel.token));
    }
});
