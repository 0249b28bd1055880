//! The Marketo client and the pipeline against a scripted stub: replies the
//! emulator does not give (a token reported at 0 s, a wrong base URL, record-
//! level skips on associate, short or odd replies) and what each call carried.

#![cfg(feature = "server")]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use idtag::clock::{Clock, ManualClock, SystemClock};
use idtag::marketo::ErrorClass;
use idtag::server::{
    Config, Idtag, MarketoClient, MarketoConfig, MarketoError, MemoryStore, Metrics,
    NewAssociation, Store, StoreConfig,
};
use idtag::tag_token::Event;
use idtag::wire::Consent;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the stub received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    auth: Option<String>,
    body: String,
}

type Reply = (u16, String);
type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;
/// What the stub's handler shares: the requests seen, and the script.
type StubState = (Arc<Mutex<Vec<Seen>>>, Arc<Script>);

struct Stub {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    /// Starts a stub answering each request with `script(request, n)`, `n`
    /// counting earlier requests to the same path.
    async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Stub {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let state: StubState = (seen.clone(), Arc::new(script));
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub { url, seen }
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

async fn handle(
    State((seen, script)): State<StubState>,
    _method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    String,
) {
    let req = Seen {
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        auth: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let n = {
        let mut g = seen.lock().unwrap();
        let n = g.iter().filter(|s| s.path == req.path).count();
        g.push(req.clone());
        n
    };
    let (status, body) = script(&req, n);
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
}

const TOKEN: &str = "/identity/oauth/token";
const LEADS: &str = "/rest/v1/leads.json";

fn token(t: &str, expires_in: i64) -> Reply {
    let body = json!({"access_token": t, "token_type": "bearer", "expires_in": expires_in});
    (200, body.to_string())
}

fn ok(result: Value) -> Reply {
    (
        200,
        json!({"requestId": "r", "success": true, "result": result}).to_string(),
    )
}

fn client(url: &str, clock: Arc<dyn Clock>) -> MarketoClient {
    let mut m = MarketoConfig::new(url, "id", "secret");
    m.backoff.base_ms = 10;
    m.backoff.max_ms = 20;
    m.http_timeout = Duration::from_secs(5);
    MarketoClient::new(m, clock, Arc::new(Metrics::default())).unwrap()
}

async fn lookup_of(c: &MarketoClient) -> Result<Vec<idtag::server::FoundLead>, MarketoError> {
    c.lookup_by_email(&["a@example.com".to_owned()]).await
}

#[tokio::test]
async fn token_at_zero_seconds_is_not_cached() {
    // Marketo reports the old token at 0 s (it counts as expired), then the new one.
    let stub = Stub::start(|r, n| match (r.path.as_str(), n) {
        (TOKEN, 0) => token("old", 0),
        (TOKEN, _) => token("new", 3599),
        _ => ok(json!([])),
    })
    .await;
    let c = client(&stub.url, Arc::new(SystemClock));
    lookup_of(&c).await.unwrap();
    lookup_of(&c).await.unwrap();
    let rest = stub.seen(LEADS);
    assert_eq!(rest.len(), 2);
    assert!(
        rest.iter().all(|r| r.auth.as_deref() == Some("Bearer new")),
        "a REST call used the token reported at 0 s: {rest:?}"
    );
    assert_eq!(stub.seen(TOKEN).len(), 2, "the new token is cached");
}

#[tokio::test]
async fn a_token_that_stays_at_zero_seconds_is_never_used() {
    let stub = Stub::start(|r, _| match r.path.as_str() {
        TOKEN => token("stale", 0),
        _ => ok(json!([])),
    })
    .await;
    let c = client(&stub.url, Arc::new(SystemClock));
    let e = lookup_of(&c).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Setup, "{e:?}");
    assert!(
        stub.seen(LEADS).is_empty(),
        "no REST call with a 0-second token"
    );
    assert_eq!(
        stub.seen(TOKEN).len(),
        2,
        "waited out once, asked once more"
    );
}

#[tokio::test]
async fn a_token_in_its_last_minute_is_used_and_cached_without_stalling() {
    // Inside the 60 s margin Marketo keeps handing out the same token.
    let stub = Stub::start(|r, _| match r.path.as_str() {
        TOKEN => token("last-minute", 30),
        _ => ok(json!([])),
    })
    .await;
    let c = client(&stub.url, Arc::new(SystemClock));
    let t = Instant::now();
    for _ in 0..3 {
        lookup_of(&c).await.unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stalled {:?}",
        t.elapsed()
    );
    assert_eq!(stub.seen(TOKEN).len(), 1);
    assert!(stub
        .seen(LEADS)
        .iter()
        .all(|r| r.auth.as_deref() == Some("Bearer last-minute")));
}

#[tokio::test]
async fn a_huge_expires_in_is_held_to_an_hour() {
    let stub = Stub::start(|r, n| match (r.path.as_str(), n) {
        (TOKEN, 0) => token("first", i64::MAX),
        (TOKEN, _) => token("second", 3599),
        _ => ok(json!([])),
    })
    .await;
    let clock = Arc::new(ManualClock::new(1_780_000_000_000));
    let c = client(&stub.url, clock.clone());
    lookup_of(&c).await.unwrap();
    clock.advance_ms(3_600_000);
    lookup_of(&c).await.unwrap();
    assert_eq!(stub.seen(TOKEN).len(), 2, "not trusted beyond an hour");
    assert_eq!(stub.seen(LEADS)[1].auth.as_deref(), Some("Bearer second"));
}

#[tokio::test]
async fn token_endpoint_failures_and_unexpected_4xx_are_setup_problems() {
    // a wrong base URL: the identity endpoint is not there
    let stub = Stub::start(|_, _| (404, "not found".into())).await;
    let e = lookup_of(&client(&stub.url, Arc::new(SystemClock)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class(), e.reason().as_str()),
        (ErrorClass::Setup, "identity_http_404")
    );
    assert!(e.is_retryable());
    // unreachable
    let e = lookup_of(&client("http://127.0.0.1:9", Arc::new(SystemClock)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.class(), e.reason().as_str()),
        (ErrorClass::Setup, "identity_transport")
    );
    // credentials refused
    let stub = Stub::start(|_, _| (401, "{}".into())).await;
    let e = lookup_of(&client(&stub.url, Arc::new(SystemClock)))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Setup);
    // REST answering 400 / 404 at the HTTP level: setup, not retried, not permanent
    for status in [400u16, 404] {
        let stub = Stub::start(move |r, _| match r.path.as_str() {
            TOKEN => token("t", 3599),
            _ => (status, "{}".into()),
        })
        .await;
        let e = lookup_of(&client(&stub.url, Arc::new(SystemClock)))
            .await
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Setup, "{status}");
        assert_eq!(e.reason(), format!("http_{status}"));
        assert_eq!(
            stub.seen(LEADS).len(),
            1,
            "{status}: not retried in the call"
        );
    }
}

#[tokio::test]
async fn a_skipped_record_inside_a_successful_associate_is_an_error() {
    let stub = Stub::start(|r, _| match r.path.as_str() {
        TOKEN => token("t", 3599),
        _ => ok(json!([{"status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]}])),
    })
    .await;
    let c = client(&stub.url, Arc::new(SystemClock));
    let e = c
        .associate(7, "id:123-ABC-456&token:_mch-example.com-1700000000000-1")
        .await
        .unwrap_err();
    assert_eq!(
        (e.reason().as_str(), e.class()),
        ("1004", ErrorClass::Permanent)
    );
    let call = &stub.seen("/rest/v1/leads/7/associate.json")[0];
    assert!(
        call.query.starts_with("cookie=id%3A123-ABC-456%26token"),
        "{}",
        call.query
    );
}

#[tokio::test]
async fn odd_replies_are_transient_not_permanent() {
    let stub = Stub::start(|r, _| match r.path.as_str() {
        TOKEN => token("t", 3599),
        // a sync reply with fewer results than records
        _ if r.query.is_empty() => ok(json!([{"id": 1, "status": "created"}])),
        // success:false without any error
        _ => (
            200,
            json!({"requestId": "r", "success": false, "errors": []}).to_string(),
        ),
    })
    .await;
    let c = client(&stub.url, Arc::new(SystemClock));
    let e = c
        .sync_by_email(&["a@example.com".into(), "b@example.com".into()])
        .await
        .unwrap_err();
    assert!(matches!(e, MarketoError::Decode(_)), "{e:?}");
    assert!(e.is_retryable());
    let e = lookup_of(&c).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
}

fn idtag_config(url: &str) -> Config {
    let mut c = Config::new({
        let mut m = MarketoConfig::new(url, "id", "secret");
        m.backoff.base_ms = 10;
        m.backoff.max_ms = 20;
        m
    });
    c.store = StoreConfig::Memory;
    c.worker.poll = Duration::from_millis(20);
    c.worker.item_backoff.base_ms = 10;
    c.worker.item_backoff.max_ms = 20;
    c.worker.setup_retry = Duration::from_millis(50);
    c
}

fn cookie(i: usize) -> String {
    format!("_mkto_trk=id:123-ABC-456&token:_mch-example.com-17000000{i:05}-1")
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_wrong_base_url_defers_the_backlog_without_dead_letters() {
    let stub = Stub::start(|_, _| (404, "not found".into())).await;
    let store = Arc::new(MemoryStore::new());
    let idtag = Idtag::builder(idtag_config(&stub.url))
        .store(store.clone())
        .build()
        .await
        .unwrap();
    for i in 0..3 {
        idtag
            .associate(&format!("p{i}@example.com"), &cookie(i), Event::Login)
            .await
            .unwrap();
    }
    wait_for("several rounds", || stub.seen(TOKEN).len() >= 3).await;
    let st = idtag.status().await.unwrap();
    assert_eq!((st.pending(), st.counts.get("dead")), (3, None), "{st:?}");
    let items = store.due(i64::MAX, 10).unwrap();
    assert!(
        items.iter().all(|i| i.attempts == 0 && i.email.is_some()),
        "{items:?}"
    );
    let m = idtag.metrics_text().await;
    assert!(
        m.contains(r#"idtag_setup_problem{reason="identity_http_404"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"idtag_deferred_total{reason="identity_http_404"}"#),
        "{m}"
    );
    idtag.shutdown().await;
}

#[tokio::test]
async fn one_bad_email_in_a_lookup_batch_fails_only_its_own_item() {
    // The lookup refuses any batch holding the bad address as a whole (1003).
    let stub = Stub::start(|r, n| match r.path.as_str() {
        TOKEN => token("t", 3599),
        LEADS if r.query.contains("bad%40example.com") => (
            200,
            json!({"success": false, "errors": [{"code": "1003", "message": "bad value"}]})
                .to_string(),
        ),
        LEADS if r.query.contains("filterType=email") => ok(json!([])),
        // sync (POST, no query): every record created, in input order
        LEADS => {
            let records = r.body.matches("{\"email\"").count();
            let base = 100 * (i64::try_from(n).unwrap() + 1);
            ok((0..records)
                .map(|i| json!({"id": base + i as i64, "status": "created"}))
                .collect())
        }
        _ => (200, json!({"requestId": "r", "success": true}).to_string()),
    })
    .await;
    // all four in the outbox before the worker starts: one round, one batch
    let store = Arc::new(MemoryStore::new());
    let batch: Vec<NewAssociation> = ["a", "b", "bad", "c"]
        .iter()
        .enumerate()
        .map(|(i, who)| NewAssociation {
            token: format!("_mch-example.com-17000000{i:05}-1"),
            cookie_value: format!("id:123-ABC-456&token:_mch-example.com-17000000{i:05}-1"),
            person_key: format!("key-{who}"),
            email: format!("{who}@example.com"),
            event: Event::Login,
            consent: Consent::Granted,
            captured_at_ms: SystemClock.now_ms(),
        })
        .collect();
    store.enqueue(&batch).unwrap();
    let idtag = Idtag::builder(idtag_config(&stub.url))
        .store(store.clone())
        .build()
        .await
        .unwrap();
    assert!(idtag.flush(Duration::from_secs(10)).await);
    let st = idtag.status().await.unwrap();
    assert_eq!(st.dead_reasons.get("1003"), Some(&1), "{st:?}");
    assert_eq!(st.counts.get("done"), Some(&3), "{st:?}");
    idtag.shutdown().await;
}
