//! The Marketo client and the association pipeline against the emulator.

#![cfg(all(feature = "server", feature = "emulator"))]

use idtag::clock::{Clock, ManualClock, SystemClock};
use idtag::emulator::{Emulator, EmulatorConfig};
use idtag::marketo::ErrorClass;
use idtag::server::{
    next_central_midnight_ms, parse_envelope, record_outcomes, Config, ConflictPolicy, Idtag,
    MarketoClient, MarketoConfig, Metrics, RecordOutcome, SqliteStore, Store, StoreConfig,
};
use idtag::tag_token::Event;
use idtag::wire::TagStatus;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn marketo_config(emu: &Emulator) -> MarketoConfig {
    let mut m = MarketoConfig::new(emu.base_url(), emu.client_id(), emu.client_secret());
    m.token_margin = Duration::from_secs(1);
    m.backoff.base_ms = 20;
    m.backoff.max_ms = 200;
    m.http_timeout = Duration::from_secs(2);
    m
}

fn config(emu: &Emulator) -> Config {
    let mut c = Config::new(marketo_config(emu));
    c.store = StoreConfig::Memory;
    c.keys = Some(idtag::tag_token::Keyring::parse("k1:MDEyMzQ1Njc4OWFiY2RlZg").unwrap());
    c.worker.poll = Duration::from_millis(20);
    c.worker.item_backoff.base_ms = 20;
    c.worker.item_backoff.max_ms = 200;
    c
}

async fn admin(emu: &Emulator, path: &str) -> Value {
    reqwest::get(format!("{}/__emulator/{path}", emu.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn admin_post(emu: &Emulator, path: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{}/__emulator/{path}", emu.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

fn cookie(i: usize) -> String {
    format!(
        "id:123-ABC-456&token:_mch-example.com-17000000{i:05}-{}",
        i % 9000 + 1
    )
}

fn header(i: usize) -> String {
    format!("_mkto_trk={}", cookie(i))
}

fn client(emu: &Emulator, clock: Arc<dyn Clock>) -> (MarketoClient, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    (
        MarketoClient::new(marketo_config(emu), clock, metrics.clone()).unwrap(),
        metrics,
    )
}

#[test]
fn every_vector_body_is_read_as_marketo_md_says() {
    let root = env!("CARGO_MANIFEST_DIR");
    let raw = [
        format!("{root}/tests/vectors/marketo-responses.json"),
        format!("{root}/../shared/vectors/marketo-responses.json"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .expect("marketo-responses.json in tests/vectors/ or ../shared/vectors/");
    let v: Value = serde_json::from_str(&raw).unwrap();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let body = serde_json::to_vec(&case["body"]).unwrap();
        match name {
            "token fresh" | "token about to expire" => {
                assert!(case["body"]["expires_in"].is_i64())
            }
            "token invalid" | "token expired" => assert_eq!(
                parse_envelope(&body).unwrap_err().class(),
                ErrorClass::Reauthenticate
            ),
            "rate limited" => {
                assert_eq!(
                    parse_envelope(&body).unwrap_err().class(),
                    ErrorClass::RateLimited
                )
            }
            "concurrency limited" => assert_eq!(
                parse_envelope(&body).unwrap_err().class(),
                ErrorClass::ConcurrencyLimited
            ),
            "daily quota" => {
                assert_eq!(
                    parse_envelope(&body).unwrap_err().class(),
                    ErrorClass::Quota
                )
            }
            "lead not found inside success" => {
                let r = parse_envelope(&body).unwrap();
                assert!(
                    matches!(&record_outcomes(&r)[0], RecordOutcome::Failed { code, .. } if code == "1004")
                );
            }
            "invalid cookie" => {
                let e = parse_envelope(&body).unwrap_err();
                assert_eq!(e.class(), ErrorClass::Permanent);
                assert!(!e.is_retryable());
            }
            "associate ok" => assert!(parse_envelope(&body).is_ok()),
            "sync result in input order" => {
                let r = record_outcomes(&parse_envelope(&body).unwrap());
                assert_eq!(r.len(), 3);
                assert!(
                    matches!(&r[0], RecordOutcome::Ok { id: 1001, status } if status == "created")
                );
                assert!(
                    matches!(&r[1], RecordOutcome::Ok { id: 1002, status } if status == "updated")
                );
                assert!(matches!(&r[2], RecordOutcome::Failed { code, .. } if code == "1003"));
            }
            other => panic!("unhandled vector {other}"),
        }
    }
    for req in v["requests"].as_array().unwrap() {
        assert_eq!(req["name"], "associate");
        let path = idtag::server::associate_path(
            1234,
            "id:123-ABC-456&token:_mch-example.com-1700000000000-12345",
        );
        assert!(path.starts_with("/rest/v1/leads/1234/associate.json?cookie="));
        let query = path.split_once('?').unwrap().1;
        assert!(!query.contains('&'), "one parameter: {query}");
        assert!(
            query.contains("%26token") && !query.contains("%25"),
            "encoded once: {query}"
        );
    }
}

#[tokio::test]
async fn client_rows_against_the_emulator() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let (c, metrics) = client(&emu, Arc::new(SystemClock));
    // sync in input order, one invalid record skipped
    let out = c
        .sync_by_email(&[
            "a@example.com".into(),
            "b@example.com".into(),
            "not-an-email".into(),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], RecordOutcome::Ok { .. }));
    assert!(matches!(out[1], RecordOutcome::Ok { .. }));
    assert!(matches!(out[2], RecordOutcome::Failed { .. }), "{out:?}");
    let RecordOutcome::Ok { id: lead, .. } = out[0].clone() else {
        unreachable!()
    };
    // lookup finds them; unknown ones are absent
    let found = c
        .lookup_by_email(&["a@example.com".into(), "zz@example.com".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, lead);
    // associate ok, with `&` sent as %26 exactly once
    c.associate(lead, &cookie(1)).await.unwrap();
    let leads = admin(&emu, "leads").await;
    let lead_json = leads["leads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"].as_i64() == Some(lead))
        .unwrap()
        .clone();
    assert_eq!(
        lead_json["cookies"][0].as_str().unwrap(),
        "_mch-example.com-1700000000001-2"
    );
    assert_eq!(c.leads_with_cookie(&cookie(1)).await.unwrap(), vec![lead]);
    // invalid cookie: permanent (1012)
    let e = c.associate(lead, "id:123-ABC-456").await.unwrap_err();
    assert_eq!(e.reason(), "1012");
    assert!(!e.is_retryable());
    // unknown lead: permanent
    let e = c.associate(999_999, &cookie(2)).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    // a lookup whose URI would pass 8 KB goes as POST _method=GET and still works
    let long: Vec<String> = (0..300)
        .map(|i| format!("someone.with.a.rather.long.address.{i:04}@example.com"))
        .collect();
    assert!(c.lookup_by_email(&long).await.unwrap().is_empty());
    let calls = admin(&emu, "calls").await;
    assert_eq!(n(&calls, &["by_code", "414"]), 0);
    // one token for everything
    assert_eq!(n(&calls, &["by_endpoint", "identity"]), 1);
    assert_eq!(metrics.marketo_calls(Some("identity"), None), 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn token_invalid_601_refreshes_once_and_replays_with_the_new_token() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let (c, metrics) = client(&emu, Arc::new(SystemClock));
    c.lookup_by_email(&["a@example.com".into()]).await.unwrap();
    let revoked = admin_post(&emu, "revoke-token", Value::Null).await;
    assert!(revoked["revoked"].is_string());
    c.lookup_by_email(&["a@example.com".into()]).await.unwrap();
    let calls = admin(&emu, "calls").await;
    assert_eq!(n(&calls, &["by_endpoint", "identity"]), 2);
    assert_eq!(n(&calls, &["by_code", "601"]), 1);
    assert_eq!(metrics.marketo_calls(Some("leads_lookup"), Some("601")), 1);
    assert_eq!(metrics.marketo_calls(Some("leads_lookup"), Some("ok")), 2);
    emu.shutdown().await;
}

#[tokio::test]
async fn token_expired_602_refreshes_once_and_replays_with_the_new_token() {
    // The emulator's clock runs ahead of the client's: its token expires while
    // the client still holds it as valid.
    let emu_clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let cfg = EmulatorConfig {
        token_ttl: Duration::from_secs(30),
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start_with(cfg, "127.0.0.1:0".parse().unwrap(), emu_clock.clone())
        .await
        .unwrap();
    let (c, _) = client(&emu, Arc::new(SystemClock));
    c.lookup_by_email(&["a@example.com".into()]).await.unwrap();
    emu_clock.advance_ms(31_000);
    c.lookup_by_email(&["a@example.com".into()]).await.unwrap();
    let calls = admin(&emu, "calls").await;
    assert_eq!(n(&calls, &["by_code", "602"]), 1);
    assert_eq!(n(&calls, &["by_endpoint", "identity"]), 2);
    assert_eq!(n(&calls, &["by_endpoint", "get_leads"]), 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn a_token_in_its_last_second_is_waited_out_and_replaced() {
    // (`token_at_zero_seconds_is_not_cached` in server_client.rs checks, against
    // a scripted stub, which token each REST call carried.)
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let emu = Emulator::start_with(
        EmulatorConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
        clock.clone(),
    )
    .await
    .unwrap();
    let (c, _) = client(&emu, clock.clone());
    c.lookup_by_email(&["a@example.com".into()]).await.unwrap();
    // half a second before the token's end the emulator reports it at 0 s
    clock.advance_ms(3_599_500);
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                clock.advance_ms(100);
            }
        })
    };
    c.lookup_by_email(&["a@example.com".into()]).await.unwrap();
    ticker.abort();
    let calls = admin(&emu, "calls").await;
    assert_eq!(n(&calls, &["by_code", "602"]), 0, "{calls}");
    assert_eq!(n(&calls, &["by_endpoint", "identity"]), 3, "{calls}");
    assert_eq!(n(&calls, &["by_endpoint", "get_leads"]), 2, "{calls}");
    emu.shutdown().await;
}

#[tokio::test]
async fn rate_and_concurrency_limits_back_off_to_a_typed_error() {
    // Emulated time 20× faster (1 s window); the emulator allows 2 calls per window.
    let cfg = EmulatorConfig {
        rate_limit: 2,
        concurrency: 1,
        time_scale: 20.0,
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start(cfg).await.unwrap();
    let mut m = marketo_config(&emu);
    m.pacing.rate_window = Duration::from_secs(1);
    let metrics = Arc::new(Metrics::default());
    let c = MarketoClient::new(m, Arc::new(SystemClock), metrics.clone()).unwrap();
    let mut last = None;
    for _ in 0..4 {
        if let Err(e) = c.lookup_by_email(&["a@example.com".into()]).await {
            last = Some(e);
            break;
        }
    }
    let e = last.expect("606 after the emulator's window is used up");
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert!(e.is_retryable());
    // bounded: 4 attempts for the failing call, then the typed error
    assert_eq!(metrics.marketo_calls(Some("leads_lookup"), Some("606")), 4);
    emu.shutdown().await;
}

#[tokio::test]
async fn one_hundred_fifty_at_once_stay_within_budget() {
    // Emulated time 20× faster: the 20 s window lasts 1 s; the client keeps 50 per 1 s.
    let cfg = EmulatorConfig {
        time_scale: 20.0,
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start(cfg).await.unwrap();
    let mut c = config(&emu);
    c.marketo.pacing.rate_window = Duration::from_millis(1_000);
    let idtag = Idtag::builder(c).build().await.unwrap();
    let mut joins = Vec::new();
    for i in 0..150 {
        let t = idtag.clone();
        joins.push(tokio::spawn(async move {
            t.associate(&format!("p{i}@example.com"), &header(i), Event::Login)
                .await
        }));
    }
    for j in joins {
        assert_eq!(j.await.unwrap().unwrap(), TagStatus::Queued);
    }
    assert!(idtag.flush(Duration::from_secs(30)).await, "drained");
    let calls = admin(&emu, "calls").await;
    assert_eq!(n(&calls, &["by_code", "606"]), 0, "{calls}");
    assert_eq!(n(&calls, &["by_code", "615"]), 0, "{calls}");
    assert_eq!(n(&calls, &["by_endpoint", "associate"]), 150);
    assert_eq!(idtag.status().await.unwrap().counts.get("done"), Some(&150));
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_quota_day_pauses_everything_and_resumes_after_the_reset() {
    let clock = Arc::new(ManualClock::new(1_768_478_400_000)); // 2026-01-15 06:00 CST
    let cfg = EmulatorConfig {
        daily_quota: 6,
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start_with(cfg, "127.0.0.1:0".parse().unwrap(), clock.clone())
        .await
        .unwrap();
    let mut c = config(&emu);
    c.marketo.pacing.concurrency = 1;
    let idtag = Idtag::builder(c)
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    for i in 0..10 {
        idtag
            .associate("same@example.com", &header(i), Event::Login)
            .await
            .unwrap();
    }
    // lookup + create + 4 associates spend the 6 calls; the next call gets 607
    assert!(!idtag.flush(Duration::from_millis(600)).await);
    let calls = admin(&emu, "calls").await;
    assert_eq!(
        n(&calls, &["by_code", "607"]),
        1,
        "exactly one 607: {calls}"
    );
    let total = n(&calls, &["total"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n(&admin(&emu, "calls").await, &["total"]), total, "paused");
    assert!(idtag.metrics_text().await.contains("idtag_paused 1"));
    // the day turns in US Central time
    clock.set_ms(next_central_midnight_ms(clock.now_ms()) + 1_000);
    assert!(
        idtag.flush(Duration::from_secs(10)).await,
        "resumed after the reset"
    );
    let st = idtag.status().await.unwrap();
    assert_eq!(st.counts.get("done"), Some(&10));
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn two_concurrent_logins_of_one_new_person_create_one_lead() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let idtag = Idtag::builder(config(&emu)).build().await.unwrap();
    let (h1, h2) = (header(1), header(2));
    let (a, b) = tokio::join!(
        idtag.associate("New.Person@Example.com", &h1, Event::Signup),
        idtag.associate("new.person@example.com", &h2, Event::Login),
    );
    assert_eq!(a.unwrap(), TagStatus::Queued);
    assert_eq!(b.unwrap(), TagStatus::Queued);
    assert!(idtag.flush(Duration::from_secs(10)).await);
    let leads = admin(&emu, "leads").await;
    let matching: Vec<&Value> = leads["leads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["email"].as_str() == Some("new.person@example.com"))
        .collect();
    assert_eq!(matching.len(), 1, "{leads}");
    assert_eq!(matching[0]["cookies"].as_array().unwrap().len(), 2);
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_repeat_login_costs_zero_marketo_calls() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let idtag = Idtag::builder(config(&emu)).build().await.unwrap();
    assert_eq!(
        idtag
            .associate("r@example.com", &header(7), Event::Login)
            .await
            .unwrap(),
        TagStatus::Queued
    );
    assert!(idtag.flush(Duration::from_secs(10)).await);
    let before = n(&admin(&emu, "calls").await, &["total"]);
    for _ in 0..5 {
        assert_eq!(
            idtag
                .associate("R@example.com", &header(7), Event::Login)
                .await
                .unwrap(),
            TagStatus::Duplicate
        );
    }
    assert!(idtag.flush(Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(n(&admin(&emu, "calls").await, &["total"]), before);
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_known_person_on_a_new_browser_costs_one_call() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let idtag = Idtag::builder(config(&emu)).build().await.unwrap();
    idtag
        .associate("k@example.com", &header(1), Event::Login)
        .await
        .unwrap();
    assert!(idtag.flush(Duration::from_secs(10)).await);
    let before = n(&admin(&emu, "calls").await, &["total"]);
    idtag
        .associate("k@example.com", &header(2), Event::Login)
        .await
        .unwrap();
    assert!(idtag.flush(Duration::from_secs(10)).await);
    assert_eq!(n(&admin(&emu, "calls").await, &["total"]), before + 1);
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_shared_browser_is_recorded_as_a_conflict() {
    for (policy, associates) in [(ConflictPolicy::Skip, 1), (ConflictPolicy::Reassociate, 2)] {
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        let mut c = config(&emu);
        c.worker.conflict_policy = policy;
        let idtag = Idtag::builder(c).build().await.unwrap();
        idtag
            .associate("first@example.com", &header(3), Event::Login)
            .await
            .unwrap();
        assert!(idtag.flush(Duration::from_secs(10)).await);
        idtag
            .associate("second@example.com", &header(3), Event::Login)
            .await
            .unwrap();
        assert!(idtag.flush(Duration::from_secs(10)).await);
        let st = idtag.status().await.unwrap();
        let calls = admin(&emu, "calls").await;
        assert_eq!(
            n(&calls, &["by_endpoint", "associate"]),
            associates,
            "{policy:?}"
        );
        if policy == ConflictPolicy::Skip {
            assert_eq!(st.counts.get("conflict"), Some(&1));
        }
        assert_eq!(
            st.conflicts.get(policy.as_str()),
            Some(&1),
            "{policy:?}: {st:?}"
        );
        assert!(idtag
            .metrics_text()
            .await
            .contains("idtag_conflicts_total{policy="));
        idtag.shutdown().await;
        emu.shutdown().await;
    }
}

#[tokio::test]
async fn reassociated_conflicts_are_kept_in_the_outbox_across_restarts() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let mut c = config(&emu);
    c.worker.conflict_policy = ConflictPolicy::Reassociate;
    let store = Arc::new(idtag::server::MemoryStore::new());
    let first = Idtag::builder(c.clone())
        .store(store.clone())
        .build()
        .await
        .unwrap();
    for who in ["first@example.com", "second@example.com"] {
        first
            .associate(who, &header(3), Event::Login)
            .await
            .unwrap();
        assert!(first.flush(Duration::from_secs(10)).await);
    }
    first.shutdown().await;
    let second = Idtag::builder(c).store(store).build().await.unwrap();
    assert_eq!(
        second.status().await.unwrap().conflicts.get("reassociate"),
        Some(&1)
    );
    let m = second.metrics_text().await;
    assert!(
        m.contains(r#"idtag_conflicts_total{policy="reassociate"} 1"#),
        "{m}"
    );
    second.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn permanent_failures_are_dead_lettered_with_the_reason() {
    // The emulator refuses every associate as an invalid cookie value (1012):
    // at the envelope level, then as a skipped record inside `success:true`.
    for record_level in [false, true] {
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        admin_post(
            &emu,
            "faults",
            serde_json::json!({"share_1012": 1.0, "associate_record_level": record_level}),
        )
        .await;
        let idtag = Idtag::builder(config(&emu)).build().await.unwrap();
        idtag
            .associate("d@example.com", &header(9), Event::Login)
            .await
            .unwrap();
        assert!(idtag.flush(Duration::from_secs(10)).await);
        let st = idtag.status().await.unwrap();
        let total: u64 = st.counts.values().sum();
        assert_eq!(total, 1);
        assert_eq!(st.pending(), 0);
        assert_eq!(
            st.counts.get("dead"),
            Some(&1),
            "record level {record_level}: {st:?}"
        );
        assert_eq!(st.dead_reasons.get("1012"), Some(&1), "{st:?}");
        assert!(idtag
            .metrics_text()
            .await
            .contains(r#"idtag_dead_total{reason="1012"} 1"#));
        let calls = admin(&emu, "calls").await;
        assert_eq!(
            n(&calls, &["by_endpoint", "associate"]),
            1,
            "not retried: {calls}"
        );
        // a permanent reason is final: the same pair is a duplicate, not revived
        assert_eq!(
            idtag
                .associate("d@example.com", &header(9), Event::Login)
                .await
                .unwrap(),
            TagStatus::Duplicate
        );
        idtag.shutdown().await;
        emu.shutdown().await;
    }
}

#[tokio::test]
async fn outages_dead_letter_by_age_not_attempts_and_a_new_login_revives() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    admin_post(&emu, "faults", serde_json::json!({"share_502": 1.0})).await;
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let mut c = config(&emu);
    c.marketo.backoff.max_attempts = 1;
    c.worker.max_attempts = 3;
    let store = Arc::new(idtag::server::MemoryStore::new());
    let idtag = Idtag::builder(c)
        .clock(clock.clone())
        .store(store.clone())
        .build()
        .await
        .unwrap();
    idtag
        .associate("o@example.com", &header(5), Event::Login)
        .await
        .unwrap();
    // every call fails 502: far past max_attempts, the item is still pending
    let attempts = || {
        store
            .due(i64::MAX, 10)
            .unwrap()
            .first()
            .map_or(0, |i| i.attempts)
    };
    let start = std::time::Instant::now();
    while attempts() < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{:?}",
            idtag.status().await
        );
        clock.advance_ms(1_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idtag.status().await.unwrap().counts.get("dead"), None);
    // a week later it is dead-lettered, its email kept (no lead id yet) ...
    clock.advance_ms(8 * 24 * 3_600_000);
    let start = std::time::Instant::now();
    loop {
        let st = idtag.status().await.unwrap();
        if st.counts.get("dead") == Some(&1) {
            assert_eq!(
                st.dead_reasons.get("retries_exhausted:http_502"),
                Some(&1),
                "{st:?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{st:?}");
        clock.advance_ms(1_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and the next login with that browser revives it
    admin_post(&emu, "faults", serde_json::json!({"share_502": 0.0})).await;
    assert_eq!(
        idtag
            .associate("o@example.com", &header(5), Event::Login)
            .await
            .unwrap(),
        TagStatus::Queued
    );
    let start = std::time::Instant::now();
    while idtag.status().await.unwrap().counts.get("done") != Some(&1) {
        assert!(start.elapsed() < Duration::from_secs(10));
        clock.advance_ms(1_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_lead_gone_at_marketo_is_forgotten_and_resolved_again() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let idtag = Idtag::builder(config(&emu)).build().await.unwrap();
    idtag
        .associate("m@example.com", &header(1), Event::Login)
        .await
        .unwrap();
    assert!(idtag.flush(Duration::from_secs(10)).await);
    // the lead disappears (merged away, deleted): here, the whole instance is reset
    admin_post(&emu, "reset", Value::Null).await;
    // a new browser: queued with the cached lead id, no email; Marketo says 1004
    idtag
        .associate("m@example.com", &header(2), Event::Login)
        .await
        .unwrap();
    assert!(idtag.flush(Duration::from_secs(10)).await);
    let st = idtag.status().await.unwrap();
    assert_eq!(st.dead_reasons.get("1004"), Some(&1), "{st:?}");
    // the next login resolves the person again instead of dying on the stale id
    idtag
        .associate("m@example.com", &header(3), Event::Login)
        .await
        .unwrap();
    // and the browser whose item died is revived by its next login
    assert_eq!(
        idtag
            .associate("m@example.com", &header(2), Event::Login)
            .await
            .unwrap(),
        TagStatus::Queued
    );
    assert!(idtag.flush(Duration::from_secs(10)).await);
    let st = idtag.status().await.unwrap();
    assert_eq!(st.counts.get("done"), Some(&3), "{st:?}");
    assert_eq!(st.counts.get("dead"), None, "{st:?}");
    let leads = admin(&emu, "leads").await;
    let lead = &leads["leads"][0];
    assert_eq!(lead["email"], "m@example.com");
    assert_eq!(lead["cookies"].as_array().unwrap().len(), 2, "{leads}");
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn transient_faults_are_retried_until_done() {
    let cfg = EmulatorConfig {
        rate_limit: 10_000,
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start(cfg).await.unwrap();
    admin_post(
        &emu,
        "faults",
        serde_json::json!({"share_502": 0.3, "share_608": 0.2}),
    )
    .await;
    let mut c = config(&emu);
    c.marketo.pacing.rate_limit = 1_000;
    let store = Arc::new(idtag::server::MemoryStore::new());
    let idtag = Idtag::builder(c)
        .store(store.clone())
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        idtag
            .associate(&format!("t{i}@example.com"), &header(i), Event::Login)
            .await
            .unwrap();
    }
    let drained = idtag.flush(Duration::from_secs(20)).await;
    assert!(
        drained,
        "{:?}\n{:?}\n{}\n{}",
        store.due(i64::MAX, 10),
        idtag.status().await,
        idtag.metrics_text().await,
        admin(&emu, "calls").await
    );
    assert_eq!(idtag.status().await.unwrap().counts.get("done"), Some(&20));
    idtag.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn a_crash_mid_drain_then_restart_delivers_each_association_exactly_once() {
    let dir = std::env::temp_dir().join(format!("idtag-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outbox.db");
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    admin_post(&emu, "faults", serde_json::json!({"latency_ms": 40})).await;
    let mut c = config(&emu);
    c.store = StoreConfig::Sqlite(path.clone());
    let first = Idtag::builder(c.clone()).build().await.unwrap();
    let pairs = 30;
    for i in 0..pairs {
        first
            .associate(
                &format!("c{}@example.com", i % 10),
                &header(i),
                Event::Login,
            )
            .await
            .unwrap();
    }
    // wait for the drain to be under way (every person resolved) with calls
    // in flight, then kill the worker mid-round
    let probe = SqliteStore::open(&path).unwrap();
    for _ in 0..400 {
        let done = first
            .status()
            .await
            .unwrap()
            .counts
            .get("done")
            .copied()
            .unwrap_or(0);
        let left = probe.due(i64::MAX, 100).unwrap();
        let resolved = left.iter().all(|i| i.lead_id.is_some());
        if done >= 8 && resolved && left.iter().any(|i| i.in_flight) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    drop(first);
    // Blocking store calls the aborted worker had already started finish on
    // their own; let them land before reading what the crash left.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = probe.due(i64::MAX, 100).unwrap();
    assert!(!left.is_empty(), "killed mid-drain");
    let interrupted = left.iter().filter(|i| i.in_flight).count();
    assert!(interrupted > 0, "killed with associate calls in flight");
    drop(probe);
    admin_post(&emu, "faults", serde_json::json!({"latency_ms": 0})).await;
    let second = Idtag::builder(c).build().await.unwrap();
    assert!(second.flush(Duration::from_secs(20)).await);
    assert_eq!(
        second.status().await.unwrap().counts.get("done").copied(),
        Some(pairs as u64)
    );
    let leads = admin(&emu, "leads").await;
    let tokens: usize = leads["leads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["cookies"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(tokens, pairs);
    let calls = admin(&emu, "calls").await;
    assert_eq!(
        n(&calls, &["by_endpoint", "associate"]),
        pairs as u64,
        "{calls}"
    );
    // the recovery path ran: every person was resolved before the crash, so
    // each lookup after it is the check of one interrupted item by its cookie
    assert!(left.iter().all(|i| i.lead_id.is_some()));
    assert_eq!(
        second.metrics().marketo_calls(Some("leads_lookup"), None),
        interrupted as u64
    );
    second.shutdown().await;
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn graceful_shutdown_is_prompt_and_the_next_start_finishes_the_work() {
    let dir = std::env::temp_dir().join(format!("idtag-graceful-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let mut c = config(&emu);
    c.store = StoreConfig::Sqlite(dir.join("outbox.db"));
    // a slow budget: 6 calls per 20 s, so the backlog cannot drain now
    c.marketo.pacing.rate_limit = 6;
    let first = Idtag::builder(c.clone()).build().await.unwrap();
    for i in 0..20 {
        first
            .associate("g@example.com", &header(i), Event::Login)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    first.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    let left = first.status().await.unwrap().pending();
    assert!(left > 0);
    c.marketo.pacing.rate_limit = 50;
    let second = Idtag::builder(c).build().await.unwrap();
    assert!(second.flush(Duration::from_secs(10)).await);
    let calls = admin(&emu, "calls").await;
    assert_eq!(n(&calls, &["by_endpoint", "associate"]), 20, "{calls}");
    second.shutdown().await;
    emu.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
