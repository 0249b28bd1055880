//! `POST /v1/tag`, `/healthz`, `/metrics` and the Rust intake API: every bad
//! input is refused with a 4xx and leaves the outbox unchanged.

#![cfg(feature = "server")]

use idtag::clock::{Clock, ManualClock};
use idtag::server::{
    Config, Enqueued, Idtag, IntakeError, MarketoConfig, MemoryStore, NewAssociation, OutboxItem,
    Outcome, Requeued, StatusReport, Store, StoreConfig, StoreError,
};
use idtag::tag_token::{Event, Keyring};
use idtag::wire::TagStatus;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const KEYS: &str = "k1:MDEyMzQ1Njc4OWFiY2RlZg";
const COOKIE: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";

struct Server {
    idtag: Idtag,
    url: String,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
}

async fn server() -> Server {
    server_with(vec!["https://app.example.com".into()], None).await
}

async fn server_with(cors_origins: Vec<String>, store: Option<Arc<dyn Store>>) -> Server {
    let clock = Arc::new(ManualClock::new(1_780_000_000_000));
    // Marketo is unreachable: nothing here may need it.
    let mut c = Config::new(MarketoConfig::new("http://127.0.0.1:9", "id", "secret"));
    c.store = StoreConfig::Memory;
    c.keys = Some(Keyring::parse(KEYS).unwrap());
    c.cors_origins = cors_origins;
    let mut b = Idtag::builder(c).clock(clock.clone());
    if let Some(store) = store {
        b = b.store(store);
    }
    let idtag = b.build().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = idtag.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        idtag,
        url,
        clock,
        http: reqwest::Client::new(),
    }
}

impl Server {
    fn token(&self, email: &str) -> String {
        self.idtag.issue_token("u1", email, Event::Login).unwrap()
    }

    async fn post(&self, ctype: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/tag", self.url))
            .header("Content-Type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn items(&self) -> u64 {
        self.idtag.status().await.unwrap().counts.values().sum()
    }
}

fn request(token: &str, cookie: &str) -> String {
    json!({"v":1,"token":token,"cookies":{"_mkto_trk":cookie},"page":"/welcome","ts":1,"consent":"granted"})
        .to_string()
}

#[tokio::test]
async fn good_requests_are_queued_then_duplicate() {
    let s = server().await;
    let t = s.token("jane@example.com");
    let (code, body) = s.post("application/json", request(&t, COOKIE)).await;
    assert_eq!((code, body["status"].as_str()), (202, Some("queued")));
    let (code, body) = s
        .post("text/plain;charset=UTF-8", request(&t, COOKIE))
        .await;
    assert_eq!((code, body["status"].as_str()), (200, Some("duplicate")));
    let other = "id:123-ABC-456&token:_mch-example.com-0123456789abcdef0123456789abcdef";
    let (code, _) = s.post("text/plain", request(&t, other)).await;
    assert_eq!(code, 202);
    assert_eq!(s.items().await, 2);
    let health = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let metrics = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idtag_requests_total{outcome=\"queued\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("idtag_requests_total{outcome=\"duplicate\"} 1"));
    assert!(metrics.contains("idtag_pending 2"));
    assert!(metrics.contains("idtag_budget_left"));
}

#[tokio::test]
async fn every_bad_input_is_refused_and_stores_nothing() {
    let s = server().await;
    let good = s.token("jane@example.com");
    let forged = Keyring::parse("k1:ZmVkY2JhOTg3NjU0MzIxMA")
        .unwrap()
        .issue(
            "u1",
            "jane@example.com",
            Event::Login,
            s.clock.now_secs(),
            600,
            None,
        )
        .unwrap();
    // the claims changed (another email), the signature kept
    let tampered = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = good.split('.').collect();
        let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
        let forged = claims.replace("jane@example.com", "mallory@example.com");
        assert_ne!(claims, forged);
        format!("{}.{}.{}", parts[0], b64.encode(forged), parts[2])
    };
    let unknown_kid = Keyring::parse("k9:MDEyMzQ1Njc4OWFiY2RlZg")
        .unwrap()
        .issue(
            "u1",
            "jane@example.com",
            Event::Login,
            s.clock.now_secs(),
            600,
            None,
        )
        .unwrap();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "malformed json",
            "application/json",
            "{\"v\":1,".into(),
            400,
            "malformed_json",
        ),
        (
            "not a tag request",
            "application/json",
            "[1,2]".into(),
            400,
            "malformed_json",
        ),
        (
            "wrong content type",
            "application/x-www-form-urlencoded",
            request(&good, COOKIE),
            415,
            "unsupported_media_type",
        ),
        (
            "oversized",
            "application/json",
            format!("{{\"v\":1,\"token\":\"{}\"}}", "x".repeat(9000)),
            413,
            "too_large",
        ),
        (
            "wrong version",
            "application/json",
            request(&good, COOKIE).replace("\"v\":1", "\"v\":2"),
            400,
            "unsupported_version",
        ),
        (
            "forged",
            "application/json",
            request(&forged, COOKIE),
            401,
            "bad_signature",
        ),
        (
            "unknown key",
            "application/json",
            request(&unknown_kid, COOKIE),
            401,
            "unknown_key",
        ),
        (
            "tampered",
            "application/json",
            request(&tampered, COOKIE),
            401,
            "bad_signature",
        ),
        (
            "placeholder cookie",
            "application/json",
            request(&good, "undefined"),
            422,
            "placeholder",
        ),
        (
            "empty cookie",
            "application/json",
            request(&good, ""),
            422,
            "placeholder",
        ),
        (
            "malformed cookie",
            "application/json",
            request(&good, "hello"),
            422,
            "malformed",
        ),
        (
            "cut cookie",
            "application/json",
            request(&good, "id:123-ABC-456"),
            422,
            "missing_token",
        ),
        (
            "no cookie",
            "application/json",
            json!({"v":1,"token":good,"cookies":{}}).to_string(),
            422,
            "no_cookie",
        ),
        (
            "consent denied",
            "application/json",
            request(&good, COOKIE).replace("granted", "denied"),
            403,
            "consent_denied",
        ),
        (
            "opted out",
            "application/json",
            json!({"v":1,"token":good,"cookies":{"_mkto_trk":COOKIE,"mkto_opt_out":"true"}})
                .to_string(),
            403,
            "consent_denied",
        ),
    ];
    for (name, ctype, body, want_status, want_code) in cases {
        let (status, reply) = s.post(ctype, body).await;
        assert_eq!(status, want_status, "{name}: {reply}");
        let code = reply["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !reply["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{name}"
        );
        assert_eq!(code, want_code, "{name}");
        assert_eq!(s.items().await, 0, "{name} stored something");
    }
    // expired, and replayed after expiry
    let (status, _) = s.post("application/json", request(&good, COOKIE)).await;
    assert_eq!(status, 202);
    s.clock.advance_ms(3_600_000);
    for _ in 0..2 {
        let (status, reply) = s.post("application/json", request(&good, COOKIE)).await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (401, Some("expired"))
        );
    }
    assert_eq!(s.items().await, 1);
    let metrics = s.idtag.metrics_text().await;
    assert!(
        metrics.contains("idtag_requests_total{outcome=\"expired\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("idtag_requests_total{outcome=\"placeholder\"} 2"));
}

#[tokio::test]
async fn cors_only_for_configured_origins() {
    let s = server().await;
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, format!("{}/v1/tag", s.url))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example.com")
    );
    let no = preflight("https://evil.example").await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn no_cors_headers_when_no_origin_is_configured() {
    let s = server_with(Vec::new(), None).await;
    let origin = "https://app.example.com";
    let preflight = s
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/tag", s.url))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    let post = s
        .http
        .post(format!("{}/v1/tag", s.url))
        .header("Origin", origin)
        .header("Content-Type", "text/plain")
        .body(request(&s.token("jane@example.com"), COOKIE))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 202);
    for r in [&preflight, &post] {
        assert!(
            !r.headers()
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{:?}",
            r.headers()
        );
    }
}

#[tokio::test]
async fn a_streamed_body_over_8_kb_without_content_length_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server().await;
    let addr = s.url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/tag HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = "x".repeat(1024);
    for _ in 0..10 {
        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        if conn.write_all(framed.as_bytes()).await.is_err() {
            break; // refused early: fine, the answer is read below
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"too_large\""), "{reply}");
    assert_eq!(s.items().await, 0);
}

/// A store whose queries fail on demand (a broken disk, a locked database).
struct Flaky {
    inner: MemoryStore,
    broken: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }
}

impl Store for Flaky {
    fn enqueue(&self, b: &[NewAssociation]) -> Result<Vec<Enqueued>, StoreError> {
        self.check()?;
        self.inner.enqueue(b)
    }
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        self.check()?;
        self.inner.due(now, limit)
    }
    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.check()?;
        self.inner.next_due()
    }
    fn lead_of(&self, p: &str) -> Result<Option<i64>, StoreError> {
        self.inner.lead_of(p)
    }
    fn set_lead(&self, p: &str, id: i64) -> Result<(), StoreError> {
        self.inner.set_lead(p, id)
    }
    fn token_owner(&self, t: &str) -> Result<Option<String>, StoreError> {
        self.inner.token_owner(t)
    }
    fn mark_in_flight(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.inner.mark_in_flight(ids)
    }
    fn record(&self, id: i64, o: &Outcome) -> Result<(), StoreError> {
        self.inner.record(id, o)
    }
    fn note_conflict(&self, id: i64, policy: &str) -> Result<bool, StoreError> {
        self.inner.note_conflict(id, policy)
    }
    fn requeue(&self, reason: Option<&str>, now: i64) -> Result<Requeued, StoreError> {
        self.inner.requeue(reason, now)
    }
    fn status(&self) -> Result<StatusReport, StoreError> {
        self.inner.status()
    }
    fn bind_instance(&self, instance: &str) -> Result<(), StoreError> {
        self.inner.bind_instance(instance)
    }
}

#[tokio::test]
async fn healthz_reports_a_stopped_worker_or_a_silent_store() {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        broken: AtomicBool::new(false),
    });
    let s = server_with(Vec::new(), Some(store.clone())).await;
    let health = || async {
        let r = s
            .http
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    assert_eq!(health().await, (200, "ok\n".to_owned()));
    store.broken.store(true, Ordering::SeqCst);
    let (status, body) = health().await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (v["status"].as_str(), v["worker"].as_str()),
        (Some("unhealthy"), Some("ok"))
    );
    assert!(v["store"].as_str().unwrap().contains("poisoned"), "{body}");
    store.broken.store(false, Ordering::SeqCst);
    assert_eq!(health().await.0, 200);
    s.idtag.abort();
    let (status, body) = health().await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(v["worker"], "stopped", "{body}");
}

#[tokio::test]
async fn rust_api_validates_before_enqueueing() {
    let s = server().await;
    let h = format!("_ga=1; _mkto_trk={COOKIE}");
    assert_eq!(
        s.idtag
            .associate("Jane@Example.com", &h, Event::Login)
            .await,
        Ok(TagStatus::Queued)
    );
    assert_eq!(
        s.idtag
            .associate("jane@example.com", &h, Event::Signup)
            .await,
        Ok(TagStatus::Duplicate)
    );
    let bad = [
        ("jane@example.com", "_mkto_trk=undefined", "placeholder"),
        ("jane@example.com", "_ga=1", "no_cookie"),
        (
            "jane@example.com",
            &format!("mkto_opt_out=true; _mkto_trk={COOKIE}") as &str,
            "consent_denied",
        ),
        ("not an email", &h as &str, "invalid_identity"),
        ("undefined", &h as &str, "invalid_identity"),
    ];
    for (email, header, code) in bad {
        let e: IntakeError = s
            .idtag
            .associate(email, header, Event::Login)
            .await
            .unwrap_err();
        assert_eq!(e.code(), code);
        assert!(!e.is_retryable());
    }
    assert_eq!(s.items().await, 1);
    // the form hook's field value, percent-encoded once by the browser
    let encoded = COOKIE.replace(':', "%3A").replace('&', "%26");
    assert_eq!(
        s.idtag
            .associate_value("jane@example.com", &encoded, Event::Login)
            .await,
        Ok(TagStatus::Duplicate)
    );
    assert_eq!(
        s.idtag
            .associate_value("jane@example.com", "null", Event::Login)
            .await
            .unwrap_err()
            .code(),
        "placeholder"
    );
    assert_eq!(s.items().await, 1);
    s.idtag.shutdown().await;
    let e = s
        .idtag
        .associate("x@example.com", &h, Event::Login)
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "after shutdown: {e}");
}
