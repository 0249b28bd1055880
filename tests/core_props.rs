//! Property tests (native): no input panics the parsers or the verifier;
//! tokens round-trip; flipping any byte of a token fails verification.
#![cfg(not(target_arch = "wasm32"))]

use idtag::identity::normalize_email;
use idtag::munchkin::{parse_value, select, selected_value, Preferences};
use idtag::tag_token::{Event, Keyring, VerifyOptions};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000;

fn ring() -> Keyring {
    Keyring::parse("k1:cHJvcHRlc3Qta2V5LTAxMjM0NTY3ODk,k2:c2Vjb25kLWtleS0wMTIzNDU2Nzg5").unwrap()
}

/// Strings built from the pieces real cookie headers are made of.
fn header_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("_mkto_trk=".to_owned()),
        Just("id:".to_owned()),
        Just("&token:".to_owned()),
        Just("_mch-".to_owned()),
        Just("; ".to_owned()),
        Just("%".to_owned()),
        Just("%26".to_owned()),
        Just("\"".to_owned()),
        "[0-9]{1,13}",
        "[a-z.-]{1,12}",
        "[A-Z]{3}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cookie_select_never_panics(h in header_like(), id in proptest::option::of("[0-9A-Za-z-]{0,12}"), dom in proptest::option::of("[a-z.]{0,12}")) {
        let prefs = Preferences { munchkin_id: id, cookie_domain: dom };
        let s = select(&h, &prefs);
        // The browser's lean path picks exactly what the full selection picks.
        prop_assert_eq!(selected_value(&h, &prefs), s.selected.as_ref().map(|c| c.value.clone()));
        if let Some(sel) = &s.selected {
            prop_assert!(s.candidates.contains(sel));
            // A selected value re-parses to itself: decoding happened once, not twice.
            let reparsed = parse_value(&sel.value);
            prop_assert_eq!(reparsed.as_ref(), Ok(sel));
        }
    }

    #[test]
    fn cookie_select_any_string(h in any::<String>()) {
        let _ = select(&h, &Preferences::default());
    }

    #[test]
    fn valid_values_are_found_and_kept_byte_for_byte(
        id in "[0-9]{3}-[A-Z]{3}-[0-9]{3}",
        dom in "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}",
        ms in "[0-9]{13}", rnd in "[0-9]{1,5}", hex in "[0-9a-f]{32}", newer in any::<bool>(),
        encode in any::<bool>(), before in "[a-z]{1,5}=[a-z0-9]{0,5}",
    ) {
        let token = if newer { format!("_mch-{dom}-{hex}") } else { format!("_mch-{dom}-{ms}-{rnd}") };
        let value = format!("id:{id}&token:{token}");
        let raw = if encode { value.replace(':', "%3A").replace('&', "%26") } else { value.clone() };
        let header = format!("{before}; _mkto_trk={raw}");
        let s = select(&header, &Preferences::default());
        let sel = s.selected.expect("valid value selected");
        prop_assert_eq!(sel.value, value);
        prop_assert_eq!(sel.token, token);
        prop_assert_eq!(sel.domain, dom);
    }

    #[test]
    fn email_normaliser_never_panics_and_is_idempotent(s in any::<String>()) {
        if let Ok(e) = normalize_email(&s) {
            let again = normalize_email(e.as_str()).expect("a normalised address stays valid");
            prop_assert_eq!(again, e);
        }
    }

    #[test]
    fn verifier_never_panics(s in any::<String>(), dots in "(v1)?\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,44}") {
        let r = ring();
        let _ = r.verify(&s, NOW, &VerifyOptions::default());
        let _ = r.verify(&dots, NOW, &VerifyOptions::default());
    }

    #[test]
    fn issue_then_verify_round_trips(
        sub in "[a-zA-Z0-9_-]{1,40}", local in "[a-z0-9]{1,10}([._+][a-z0-9]{1,10}){0,3}", ttl in 1i64..86_400,
        signup in any::<bool>(), second_key in any::<bool>(), skew in -60i64..60,
    ) {
        let r = ring();
        let email = format!("{local}@example.com");
        prop_assume!(normalize_email(&email).is_ok());
        let evt = if signup { Event::Signup } else { Event::Login };
        let kid = if second_key { Some("k2") } else { None };
        let t = r.issue(&sub, &email, evt, NOW, ttl, kid).unwrap();
        let c = r.verify(&t, NOW + skew.min(ttl - 1).max(-60), &VerifyOptions::default()).unwrap();
        prop_assert_eq!(c.sub, sub);
        prop_assert_eq!(c.evt, evt);
        prop_assert_eq!(c.exp - c.iat, ttl);
    }

    #[test]
    fn flipping_any_byte_fails(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let r = ring();
        let t = r.issue("user-7", "flip@example.com", Event::Login, NOW, 600, None).unwrap();
        let mut bytes = t.clone().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let tampered = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(r.verify(&tampered, NOW, &VerifyOptions::default()).is_err(), "byte {} bit {} accepted", i, bit);
    }
}

/// Exhaustive over every byte position and every replacement of the printable range.
#[test]
fn every_single_byte_substitution_fails() {
    let r = ring();
    let t = r
        .issue("u", "x@example.com", Event::Signup, NOW, 600, None)
        .unwrap();
    let o = VerifyOptions::default();
    for i in 0..t.len() {
        for b in 0x20u8..0x7f {
            if t.as_bytes()[i] == b {
                continue;
            }
            let mut bytes = t.clone().into_bytes();
            bytes[i] = b;
            let s = String::from_utf8(bytes).unwrap();
            assert!(
                r.verify(&s, NOW, &o).is_err(),
                "position {i} byte {b} accepted"
            );
        }
    }
}
