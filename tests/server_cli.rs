//! `idtag serve` (embedded emulator) and `idtag status`, run as the binary.

#![cfg(all(feature = "cli", not(target_arch = "wasm32")))]

use idtag::server::{NewAssociation, Outcome, SqliteStore, Store};
use idtag::tag_token::Event;
use idtag::wire::Consent;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEYS: &str = "k1:MDEyMzQ1Njc4OWFiY2RlZg";

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("idtag-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn status_prints_counts_oldest_pending_and_dead_reasons() {
    let dir = temp_dir("status");
    let path = dir.join("outbox.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        let item = |t: &str| NewAssociation {
            token: t.into(),
            cookie_value: format!("id:123-ABC-456&token:{t}"),
            person_key: "p".into(),
            email: "p@example.com".into(),
            event: Event::Login,
            consent: Consent::Granted,
            captured_at_ms: 1,
        };
        s.enqueue(&[item("a"), item("b"), item("c")]).unwrap();
        let due = s.due(0, 10).unwrap();
        s.record(due[0].id, &Outcome::Dead("1012".into())).unwrap();
        s.record(due[1].id, &Outcome::Done).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args(["status", "--store"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pending   1"), "{text}");
    assert!(text.contains("done      1"), "{text}");
    assert!(text.contains("dead      1"), "{text}");
    assert!(text.contains("oldest pending:") && !text.contains("oldest pending: none"));
    assert!(text.contains("1012"), "{text}");
    let missing = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args(["status", "--store"])
        .arg(dir.join("nope.db"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_without_marketo_settings_runs_the_embedded_emulator_end_to_end() {
    let dir = temp_dir("serve");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store"])
        .arg(dir.join("outbox.db"))
        .env("IDTAG_TOKEN_KEYS", KEYS)
        .env_remove("MARKETO_BASE_URL")
        .env_remove("MARKETO_CLIENT_ID")
        .env_remove("MARKETO_CLIENT_SECRET")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("embedded Marketo emulator"),
        "first log line: {first}"
    );
    // wait until it listens
    for line in lines.by_ref() {
        if line.unwrap().contains("POST /v1/tag") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let token = idtag::tag_token::Keyring::parse(KEYS)
        .unwrap()
        .issue(
            "u1",
            "cli@example.com",
            Event::Login,
            idtag::clock::Clock::now_secs(&idtag::clock::SystemClock),
            600,
            None,
        )
        .unwrap();
    let body = serde_json::json!({"v":1,"token":token,"cookies":{"_mkto_trk":"id:123-ABC-456&token:_mch-example.com-1700000000000-4242"}}).to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("http://127.0.0.1:{port}/v1/tag"))
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let start = Instant::now();
        loop {
            let m = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if m.contains("idtag_associated_total 1") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{m}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
