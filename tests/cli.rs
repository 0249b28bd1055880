//! The `idtag` CLI gives the documented answers for every vector case.
#![cfg(all(not(target_arch = "wasm32"), feature = "cli"))]

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn idtag(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idtag"));
    cmd.args(args)
        .env_remove("IDTAG_TOKEN_KEYS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run idtag");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        pipe.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait idtag")
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn cases(text: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

#[test]
fn cookie_inspect_every_vector() {
    let files = [
        include_str!("vectors/munchkin-cookies.json"),
        include_str!("vectors/extra-munchkin-cookies.json"),
    ];
    for case in files.iter().flat_map(|t| cases(t)) {
        let name = case["name"].as_str().unwrap();
        let header = case["header"].as_str().unwrap();
        let mut args = vec!["cookie", "inspect"];
        if let Some(id) = case["munchkin_id"].as_str() {
            args.extend(["--munchkin-id", id]);
        }
        if let Some(d) = case["cookie_domain"].as_str() {
            args.extend(["--cookie-domain", d]);
        }
        // Every other case goes through stdin, the rest as the argument.
        let via_stdin = name.len() % 2 == 0;
        let out = if via_stdin {
            idtag(&args, Some(header), &[])
        } else {
            args.push("--");
            args.push(header);
            idtag(&args, None, &[])
        };
        let v = json_out(&out);
        let m = &v["marketo"];
        assert!(
            m["candidates"].is_array() && m["rejected"].is_array(),
            "{name}: {v}"
        );
        match &case["expect"] {
            Value::Null => {
                assert_eq!(out.status.code(), Some(1), "{name}: {v}");
                assert!(m["selected"].is_null(), "{name}: {v}");
                if let Some(reason) = case["reject"].as_str() {
                    assert!(
                        m["rejected"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|r| r["reason"] == reason),
                        "{name}: {v}"
                    );
                }
            }
            Value::Object(expect) => {
                assert_eq!(out.status.code(), Some(0), "{name}: {v}");
                for (k, want) in expect {
                    assert_eq!(&m["selected"][k], want, "{name}: {k}: {v}");
                }
                for k in ["value", "munchkin_id", "token", "domain"] {
                    assert!(m["selected"][k].is_string(), "{name}: {k}");
                }
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn cookie_inspect_reads_a_pasted_header_from_stdin() {
    let out = idtag(
        &["cookie", "inspect"],
        Some("Cookie: a=1;\n _mkto_trk=id:123-ABC-456&token:_mch-example.com-1700000000000-1\n"),
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn cookie_inspect_usage_errors_exit_2() {
    assert_eq!(
        idtag(
            &["cookie", "inspect", "--munchkin-id", "nope", "a=1"],
            None,
            &[]
        )
        .status
        .code(),
        Some(2)
    );
    assert_eq!(
        idtag(&["cookie", "inspect", "--bogus"], None, &[])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(idtag(&["cookie"], None, &[]).status.code(), Some(2));
}

#[test]
fn identity_normalize_every_vector() {
    let files = [
        include_str!("vectors/emails.json"),
        include_str!("vectors/extra-emails.json"),
    ];
    for case in files.iter().flat_map(|t| cases(t)) {
        let input = case["input"].as_str().unwrap();
        if input.contains('\0') {
            continue; // cannot be passed as a process argument
        }
        let out = idtag(&["identity", "normalize", "--", input], None, &[]);
        let v = json_out(&out);
        if let Some(want) = case["expect"].as_str() {
            assert_eq!(out.status.code(), Some(0), "{input:?}: {v}");
            assert_eq!(v, serde_json::json!({"email": want}), "{input:?}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{input:?}: {v}");
            assert_eq!(v["error"]["code"], case["expect_error"], "{input:?}: {v}");
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }
}

#[test]
fn token_issue_and_verify() {
    let keys = [(
        "IDTAG_TOKEN_KEYS",
        "k2:c2Vjb25kLWtleS0wMTIzNDU2Nzg5,k1:Zmlyc3Qta2V5LTAxMjM0NTY3ODk",
    )];
    let out = idtag(
        &[
            "token",
            "issue",
            "--user-id",
            "u-1",
            "--email",
            "Jane@Example.com",
            "--event",
            "signup",
            "--ttl",
            "120",
        ],
        None,
        &keys,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("v1."));
    let out = idtag(&["token", "verify", &token], None, &keys);
    assert_eq!(out.status.code(), Some(0));
    let c = json_out(&out);
    assert_eq!(
        (
            c["sub"].as_str(),
            c["email"].as_str(),
            c["evt"].as_str(),
            c["kid"].as_str()
        ),
        (
            Some("u-1"),
            Some("jane@example.com"),
            Some("signup"),
            Some("k2")
        )
    );
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);

    let out = idtag(
        &[
            "token",
            "issue",
            "--user-id",
            "u",
            "--email",
            "a@example.com",
            "--event",
            "login",
            "--kid",
            "k1",
        ],
        None,
        &keys,
    );
    let old = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        json_out(&idtag(&["token", "verify", &old], None, &keys))["kid"],
        "k1"
    );

    // Tampered: exit 1 with the error code.
    let mut t = token.clone().into_bytes();
    let last = t.len() - 2;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    let out = idtag(
        &["token", "verify", std::str::from_utf8(&t).unwrap()],
        None,
        &keys,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bad_signature");
    // Signed with a key that is no longer configured.
    let out = idtag(
        &["token", "verify", &token],
        None,
        &[("IDTAG_TOKEN_KEYS", "k1:Zmlyc3Qta2V5LTAxMjM0NTY3ODk")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unknown_key");
    let out = idtag(&["token", "verify", "nonsense"], None, &keys);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(1), "malformed")
    );
}

#[test]
fn token_usage_errors_exit_2() {
    let out = idtag(&["token", "verify", "x"], None, &[]);
    assert_eq!(out.status.code(), Some(2), "no keys configured");
    assert!(String::from_utf8_lossy(&out.stderr).contains("IDTAG_TOKEN_KEYS"));
    let keys = [("IDTAG_TOKEN_KEYS", "k1:short")];
    assert_eq!(
        idtag(&["token", "verify", "x"], None, &keys).status.code(),
        Some(2)
    );
    let keys = [("IDTAG_TOKEN_KEYS", "k1:Zmlyc3Qta2V5LTAxMjM0NTY3ODk")];
    assert_eq!(
        idtag(
            &[
                "token",
                "issue",
                "--user-id",
                "u",
                "--email",
                "a@example.com",
                "--event",
                "logout"
            ],
            None,
            &keys
        )
        .status
        .code(),
        Some(2)
    );
    let out = idtag(
        &[
            "token",
            "issue",
            "--user-id",
            "u",
            "--email",
            "null",
            "--event",
            "login",
        ],
        None,
        &keys,
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn closed_or_full_output_is_not_a_panic() {
    // The reader goes away before the answer is written (`idtag … | head -c0`).
    let mut child = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args(["cookie", "inspect"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run idtag");
    drop(child.stdout.take());
    let mut pipe = child.stdin.take().expect("stdin");
    let _ = pipe.write_all(["_mkto_trk=", &"x".repeat(100_000)].concat().as_bytes());
    drop(pipe);
    let out = child.wait_with_output().expect("wait idtag");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A full disk is reported, with the usage/IO exit code.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = Command::new(env!("CARGO_BIN_EXE_idtag"))
            .args(["identity", "normalize", "a@example.com"])
            .stdout(full)
            .output()
            .expect("run idtag");
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot write output") && !err.contains("panicked"),
            "{err}"
        );
    }
}

#[test]
fn cookie_inspect_dash_reads_stdin() {
    let v = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
    let o = idtag(
        &["cookie", "inspect", "-"],
        Some(&["_mkto_trk=", v].concat()),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(json_out(&o)["marketo"]["selected"]["value"], v);
}
