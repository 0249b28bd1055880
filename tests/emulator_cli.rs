//! `idtag emulate` as a process: start time, printed block, flags, signals.

#![cfg(all(not(target_arch = "wasm32"), feature = "cli", unix))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn idtag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idtag"))
}

/// One HTTP/1.1 request over a plain socket; returns the status and the body.
fn http(base: &str, method: &str, target: &str, auth: Option<&str>) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect");
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Running {
    let mut child = idtag()
        .arg("emulate")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn idtag emulate");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running { child, lines }
}

#[test]
fn starts_in_under_a_second_prints_credentials_and_stops_on_sigterm() {
    let started = Instant::now();
    let mut run = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--client-id",
        "qa-client",
        "--client-secret",
        "qa-secret",
        "--rate",
        "2/20s",
    ]);
    let first = run
        .lines
        .recv_timeout(Duration::from_secs(5))
        .expect("first line");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let base = first
        .strip_prefix("idtag emulator listening on ")
        .expect("parseable first line")
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"));
    let mut block = Vec::new();
    while let Ok(l) = run.lines.recv_timeout(Duration::from_millis(500)) {
        let done = l.starts_with("Ctrl-C");
        block.push(l);
        if done {
            break;
        }
    }
    let block = block.join("\n");
    assert!(block.contains("client id:     qa-client"), "{block}");
    assert!(block.contains("client secret: qa-secret"), "{block}");
    assert!(block.contains("munchkin id:   123-ABC-456"), "{block}");

    let (status, _) = http(
        &base,
        "GET",
        "/identity/oauth/token?grant_type=client_credentials&client_id=qa-client&client_secret=nope",
        None,
    );
    assert_eq!(status, 401);
    let (status, body) = http(
        &base,
        "POST",
        "/identity/oauth/token?grant_type=client_credentials&client_id=qa-client&client_secret=qa-secret",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let token = body
        .split("\"access_token\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("token")
        .to_string();
    let q = "/rest/v1/leads.json?filterType=email&filterValues=a@x.com";
    for _ in 0..2 {
        let (_, body) = http(&base, "GET", q, Some(&token));
        assert!(body.contains("\"success\":true"), "{body}");
    }
    let (_, body) = http(&base, "GET", q, Some(&token));
    assert!(body.contains("\"606\""), "--rate 2/20s applies: {body}");

    let pid = run.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = run.child.try_wait().expect("wait") {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for args in [
        &["--rate", "lots"][..],
        &["--munchkin-id", "12-AB-3"],
        &["--time-scale", "0"],
        &["--fail-502", "1.5"],
        &["--fail-502", "0.6", "--fail-604", "0.6"],
        &["--listen", "not-an-address"],
        &["--no-such-flag"],
    ] {
        let out = idtag()
            .arg("emulate")
            .args(args)
            .output()
            .expect("run idtag");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?}: no message");
    }
}
