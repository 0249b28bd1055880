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
        s.note_conflict(due[1].id, "reassociate").unwrap();
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
    assert!(text.contains("shared-browser conflicts"), "{text}");
    assert!(text.contains("reassociate"), "{text}");
    let missing = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args(["status", "--store"])
        .arg(dir.join("nope.db"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `idtag serve` on `port` and `store` with the embedded emulator.
fn serve(port: u16, store: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_idtag"));
    c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--store"])
        .arg(store)
        .env("IDTAG_TOKEN_KEYS", KEYS)
        .env_remove("MARKETO_BASE_URL")
        .env_remove("MARKETO_CLIENT_ID")
        .env_remove("MARKETO_CLIENT_SECRET")
        .env("RUST_LOG", "info");
    c
}

fn assoc(token: &str, person: &str) -> NewAssociation {
    NewAssociation {
        token: token.into(),
        cookie_value: format!("id:123-ABC-456&token:{token}"),
        person_key: person.into(),
        email: format!("{person}@example.com"),
        event: Event::Login,
        consent: Consent::Granted,
        captured_at_ms: 1,
    }
}

#[test]
fn requeue_moves_dead_items_back_to_pending() {
    let dir = temp_dir("requeue");
    let path = dir.join("outbox.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.enqueue(&[assoc("a", "pa"), assoc("b", "pb"), assoc("c", "pc")])
            .unwrap();
        let due = s.due(0, 10).unwrap();
        s.record(
            due[0].id,
            &Outcome::Dead("retries_exhausted:http_502".into()),
        )
        .unwrap();
        s.record(due[1].id, &Outcome::Dead("1012".into())).unwrap();
        s.record(due[2].id, &Outcome::Done).unwrap();
    }
    let requeue = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_idtag"))
            .args(["requeue", "--store"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = requeue(&["--reason", "retries_exhausted"]);
    assert!(
        text.contains("requeued 1 dead item(s) with reason retries_exhausted"),
        "{text}"
    );
    let due = SqliteStore::open(&path).unwrap().due(i64::MAX, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].attempts, due[0].email.as_deref()),
        (0, Some("pa@example.com"))
    );
    // the 1012 item kept no email and has no lead id: it cannot be delivered
    let text = requeue(&[]);
    assert!(
        text.contains("requeued 0") && text.contains("left dead: 1"),
        "{text}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args(["requeue", "--store"])
        .arg(dir.join("nope.db"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_rate_window_is_a_usage_error() {
    for bad in ["inf", "NaN", "1e30", "0", "-1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_idtag"))
            .args(["serve", "--store", "memory"])
            .arg(format!("--rate-window-secs={bad}"))
            .env("IDTAG_TOKEN_KEYS", KEYS)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--rate-window-secs"),
            "{bad}: {out:?}"
        );
    }
}

#[test]
fn serve_on_a_taken_port_fails_before_working_the_outbox() {
    let dir = temp_dir("taken");
    let path = dir.join("outbox.db");
    SqliteStore::open(&path)
        .unwrap()
        .enqueue(&[assoc("_mch-example.com-1700000000000-7", "pt")])
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = serve(port, &path).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen on"),
        "{out:?}"
    );
    let st = SqliteStore::open(&path).unwrap().status().unwrap();
    assert_eq!(st.pending(), 1, "no worker ran: {st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_serve_on_the_same_store_fails_fast() {
    let dir = temp_dir("lock");
    let path = dir.join("outbox.db");
    let mut first = serve(free_port(), &path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("POST /v1/tag") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let t = Instant::now();
    let second = serve(free_port(), &path).output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another process is working the outbox"),
        "{err}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status();
    let _ = first.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_without_marketo_settings_runs_the_embedded_emulator_end_to_end() {
    let dir = temp_dir("serve");
    let port = free_port();
    let mut child = serve(port, &dir.join("outbox.db"))
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
    tag_and_wait_associated(
        port,
        "cli@example.com",
        "_mch-example.com-1700000000000-4242",
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // The same outbox pointed at a real instance later: refused before any
    // work, since its done pairs and lead ids belong to the emulator.
    let real = serve(free_port(), &dir.join("outbox.db"))
        .env("MARKETO_BASE_URL", "https://123-ABC-456.mktorest.invalid")
        .env("MARKETO_CLIENT_ID", "id")
        .env("MARKETO_CLIENT_SECRET", "secret")
        .output()
        .unwrap();
    assert!(!real.status.success());
    let err = String::from_utf8_lossy(&real.stderr);
    assert!(
        err.contains("holds work for the Marketo instance local"),
        "{err}"
    );
    let st = SqliteStore::open(dir.join("outbox.db"))
        .unwrap()
        .status()
        .unwrap();
    assert_eq!(st.counts.get("done").copied(), Some(1), "{st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Posts one tag request (signed with [`KEYS`]) to `idtag serve` on `port` and
/// waits until its metrics count the association.
fn tag_and_wait_associated(port: u16, email: &str, visitor: &str) {
    let token = idtag::tag_token::Keyring::parse(KEYS)
        .unwrap()
        .issue(
            "u1",
            email,
            Event::Login,
            idtag::clock::Clock::now_secs(&idtag::clock::SystemClock),
            600,
            None,
        )
        .unwrap();
    let body = serde_json::json!({"v":1,"token":token,"cookies":{"_mkto_trk":format!("id:123-ABC-456&token:{visitor}")}}).to_string();
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
}

#[test]
fn serve_against_a_separately_started_emulate_associates_end_to_end() {
    let dir = temp_dir("apart");
    let mut emu = Command::new(env!("CARGO_BIN_EXE_idtag"))
        .args([
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            "qa-id",
            "--client-secret",
            "qa-secret",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(emu.stdout.take().unwrap()).lines();
    let first = out.next().unwrap().unwrap();
    let base = first
        .strip_prefix("idtag emulator listening on ")
        .unwrap_or_else(|| panic!("first line: {first}"))
        .trim()
        .to_owned();
    std::thread::spawn(move || for _ in out {});
    let port = free_port();
    let mut child = serve(port, &dir.join("outbox.db"))
        .env("MARKETO_BASE_URL", &base)
        .env("MARKETO_CLIENT_ID", "qa-id")
        .env("MARKETO_CLIENT_SECRET", "qa-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        assert!(!line.contains("embedded Marketo emulator"), "{line}");
        if line.contains("POST /v1/tag") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let visitor = "_mch-example.com-1700000000000-5151";
    tag_and_wait_associated(port, "apart@example.com", visitor);
    let leads: serde_json::Value = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::get(format!("{base}/__emulator/leads"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
    let lead = leads["leads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["email"] == "apart@example.com")
        .unwrap_or_else(|| panic!("{leads}"));
    assert_eq!(lead["cookies"], serde_json::json!([visitor]), "{lead}");
    for pid in [child.id(), emu.id()] {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = child.wait();
    let _ = emu.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
