//! Data-driven core tests over every vector file in `tests/vectors/`.
//! Runs natively and, compiled to wasm32, inside headless Chromium.

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use idtag::identity::normalize_email;
use idtag::munchkin::{select, Preferences};
use serde_json::Value;

const COOKIE_FILES: [(&str, &str); 2] = [
    (
        "munchkin-cookies.json",
        include_str!("vectors/munchkin-cookies.json"),
    ),
    (
        "extra-munchkin-cookies.json",
        include_str!("vectors/extra-munchkin-cookies.json"),
    ),
];
const EMAIL_FILES: [(&str, &str); 2] = [
    ("emails.json", include_str!("vectors/emails.json")),
    (
        "extra-emails.json",
        include_str!("vectors/extra-emails.json"),
    ),
];

fn cases(file: &str, text: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
    doc["cases"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{file}: no cases"))
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

#[test]
fn munchkin_cookie_vectors() {
    let mut n = 0;
    for (file, text) in COOKIE_FILES {
        for case in cases(file, text) {
            let name = format!("{file}: {}", case["name"]);
            let header = case["header"].as_str().expect("header");
            let prefs = Preferences {
                munchkin_id: opt_str(&case["munchkin_id"]),
                cookie_domain: opt_str(&case["cookie_domain"]),
            };
            let sel = select(header, &prefs);
            match &case["expect"] {
                Value::Null => {
                    assert!(
                        sel.selected.is_none(),
                        "{name}: expected none, got {:?}",
                        sel.selected
                    );
                    if let Some(reason) = case["reject"].as_str() {
                        assert!(
                            sel.rejected.iter().any(|r| r.reason.code() == reason),
                            "{name}: expected a rejection {reason}, got {:?}",
                            sel.rejected
                        );
                    }
                }
                Value::Object(expect) => {
                    let got = sel.selected.as_ref().unwrap_or_else(|| {
                        panic!("{name}: nothing selected; rejected {:?}", sel.rejected)
                    });
                    let got = serde_json::to_value(got).expect("serialise");
                    for (k, v) in expect {
                        assert_eq!(&got[k], v, "{name}: field {k}");
                    }
                    // The selected value is always one of the candidates.
                    assert!(
                        sel.candidates
                            .iter()
                            .any(|c| Some(c) == sel.selected.as_ref()),
                        "{name}"
                    );
                }
                other => panic!("{name}: bad expect {other}"),
            }
            n += 1;
        }
    }
    assert!(n >= 40, "only {n} cookie cases ran");
}

#[test]
fn email_vectors() {
    let mut n = 0;
    for (file, text) in EMAIL_FILES {
        for case in cases(file, text) {
            let input = case["input"].as_str().expect("input");
            let got = normalize_email(input);
            if let Some(expect) = case["expect"].as_str() {
                let got = got.unwrap_or_else(|e| panic!("{file}: {input:?}: {e}"));
                assert_eq!(got.as_str(), expect, "{file}: {input:?}");
            } else {
                let code = case["expect_error"]
                    .as_str()
                    .expect("expect or expect_error");
                let err = got.expect_err(&format!("{file}: {input:?} should fail"));
                assert_eq!(err.code(), code, "{file}: {input:?}: {err}");
            }
            n += 1;
        }
    }
    assert!(n >= 40, "only {n} email cases ran");
}

/// The same address in composed/decomposed form and with U-label/A-label domains is one key.
#[test]
fn one_key_per_address() {
    let forms = [
        "Jos\u{e9}@B\u{fc}cher.example",
        "Jose\u{301}@bu\u{308}cher.example",
        "jos\u{e9}@xn--bcher-kva.example",
        " JOS\u{c9}@XN--BCHER-KVA.EXAMPLE. ",
    ];
    let keys: Vec<String> = forms
        .iter()
        .map(|f| normalize_email(f).unwrap().key())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "{forms:?} -> {keys:?}"
    );
}

/// What the client must do with each Marketo body is checked by the server tests;
/// here: the vector file is well-formed and every body is a JSON object.
#[test]
fn marketo_response_vectors_parse() {
    let text = include_str!("vectors/marketo-responses.json");
    let cases = cases("marketo-responses.json", text);
    assert!(cases.len() >= 10);
    for c in cases {
        assert!(c["body"].is_object(), "{}", c["name"]);
    }
}
