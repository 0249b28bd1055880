//! The Marketo emulator driven over raw HTTP/1.1, the way Marketo's
//! documentation describes the API (not through idtag's client).

#![cfg(all(not(target_arch = "wasm32"), feature = "emulator"))]

use idtag::clock::ManualClock;
use idtag::emulator::{Emulator, EmulatorConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 2026-12-03T12:00:00Z.
const T0: i64 = 1_796_299_200_000;
const COOKIE: &str = "id:123-ABC-456&token:_mch-example.com-1700000000000-12345";
const COOKIE_ENC: &str = "id%3A123-ABC-456%26token%3A_mch-example.com-1700000000000-12345";
const TOKEN: &str = "_mch-example.com-1700000000000-12345";

// ---------------------------------------------------------------- raw client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The request-level error code of a Marketo envelope, if any.
    fn code(&self) -> Option<String> {
        let v = self.json();
        v["errors"][0]["code"].as_str().map(str::to_string)
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let mut chunked = false;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let raw = &buf[split + 4..];
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&raw[..eol]).to_string();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || raw.len() < eol + 4 + size {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}

/// A test's emulator, its manual clock and a cached access token.
struct Env {
    emu: Emulator,
    clock: Arc<ManualClock>,
    token: String,
}

impl Env {
    async fn start(config: EmulatorConfig) -> Env {
        Env::start_at(config, T0).await
    }

    async fn start_at(config: EmulatorConfig, t: i64) -> Env {
        let clock = Arc::new(ManualClock::new(t));
        let emu = Emulator::start_with(config, "127.0.0.1:0".parse().unwrap(), clock.clone())
            .await
            .expect("start emulator");
        let mut env = Env {
            emu,
            clock,
            token: String::new(),
        };
        env.token = env.identity().await.json()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        env
    }

    fn addr(&self) -> SocketAddr {
        self.emu.local_addr()
    }

    async fn identity(&self) -> Resp {
        let t = format!(
            "/identity/oauth/token?grant_type=client_credentials&client_id={}&client_secret={}",
            self.emu.client_id(),
            self.emu.client_secret()
        );
        send(self.addr(), "GET", &t, &[], b"").await
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    async fn get(&self, target: &str) -> Resp {
        send(
            self.addr(),
            "GET",
            target,
            &[("Authorization", &self.auth())],
            b"",
        )
        .await
    }

    async fn post_json(&self, target: &str, body: &Value) -> Resp {
        let b = body.to_string();
        send(
            self.addr(),
            "POST",
            target,
            &[
                ("Authorization", &self.auth()),
                ("Content-Type", "application/json"),
            ],
            b.as_bytes(),
        )
        .await
    }

    async fn sync(&self, action: &str, input: Value) -> Resp {
        self.post_json(
            "/rest/v1/leads.json",
            &json!({"action": action, "lookupField": "email", "input": input}),
        )
        .await
    }

    async fn create(&self, email: &str) -> u64 {
        let r = self
            .sync("createOrUpdate", json!([{"email": email}]))
            .await
            .json();
        r["result"][0]["id"].as_u64().expect("created id")
    }

    async fn associate(&self, lead: u64, cookie_query: &str) -> Resp {
        self.post_json(
            &format!("/rest/v1/leads/{lead}/associate.json?cookie={cookie_query}"),
            &json!({}),
        )
        .await
    }

    async fn visit(&self, token: &str, url: &str) -> Resp {
        let t = format!("/webevents/visitWebPage?_mchNc=1&_mchId=123-ABC-456&_mchTk={token}&_mchHo=www.example.com&_mchRu={url}&_mchRe=");
        send(self.addr(), "GET", &t, &[], b"").await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let b = body.map(|v| v.to_string()).unwrap_or_default();
        let r = send(
            self.addr(),
            method,
            &format!("/__emulator/{path}"),
            &[("Content-Type", "application/json")],
            b.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    async fn lookup_email(&self, email: &str) -> Resp {
        self.get(&format!(
            "/rest/v1/leads.json?filterType=email&filterValues={email}"
        ))
        .await
    }
}

fn small_quota() -> EmulatorConfig {
    EmulatorConfig {
        daily_quota: 3,
        ..EmulatorConfig::default()
    }
}

// ---------------------------------------------------------------- identity

#[tokio::test]
async fn identity_rejects_bad_credentials_with_401() {
    let env = Env::start(EmulatorConfig::default()).await;
    let r = send(env.addr(), "GET", "/identity/oauth/token?grant_type=client_credentials&client_id=idtag-emulator&client_secret=wrong", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = send(env.addr(), "POST", "/identity/oauth/token?grant_type=client_credentials&client_id=nobody&client_secret=emulator-secret", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = send(
        env.addr(),
        "GET",
        "/identity/oauth/token?client_id=idtag-emulator&client_secret=emulator-secret",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    // POST with the credentials as a form body works too.
    let form =
        b"grant_type=client_credentials&client_id=idtag-emulator&client_secret=emulator-secret";
    let r = send(
        env.addr(),
        "POST",
        "/identity/oauth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["access_token"], env.token);
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["by_endpoint"]["identity"], 5);
    assert_eq!(calls["by_code"]["401"], 2);
    assert_eq!(calls["quota_used"], 0, "identity calls do not count");
}

#[tokio::test]
async fn token_is_reused_with_shrinking_expires_in_then_replaced() {
    let env = Env::start(EmulatorConfig::default()).await;
    let first = env.identity().await.json();
    assert_eq!(first["token_type"], "bearer");
    assert_eq!(first["expires_in"], 3599);
    let token = first["access_token"].as_str().unwrap().to_string();
    assert_eq!(token, env.token);
    let (uuid, pod) = token.split_once(':').unwrap();
    assert_eq!(uuid.len(), 36);
    assert!(!pod.is_empty());

    env.clock.advance_ms(1_000_000);
    let again = env.identity().await.json();
    assert_eq!(again["access_token"], token.as_str(), "no early refresh");
    assert_eq!(again["expires_in"], 2599);

    env.clock.set_ms(T0 + 3_599_500);
    let last = env.identity().await.json();
    assert_eq!(last["access_token"], token.as_str());
    assert_eq!(last["expires_in"], 0, "expires_in can reach 0");
    assert_eq!(
        env.lookup_email("a@x.com").await.json()["success"],
        true,
        "still valid at 0"
    );

    env.clock.set_ms(T0 + 3_600_000);
    let r = env.lookup_email("a@x.com").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.code().as_deref(), Some("602"));
    let fresh = env.identity().await.json();
    assert_ne!(fresh["access_token"], token.as_str());
    assert_eq!(fresh["expires_in"], 3599);

    let r = send(
        env.addr(),
        "GET",
        "/rest/v1/leads.json?filterType=email&filterValues=a@x.com",
        &[("Authorization", "Bearer nope:ab")],
        b"",
    )
    .await;
    assert_eq!(r.code().as_deref(), Some("601"));
    let r = send(
        env.addr(),
        "GET",
        "/rest/v1/leads.json?filterType=email&filterValues=a@x.com",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.code().as_deref(), Some("601"), "no Authorization header");
    let q =
        format!("/rest/v1/leads.json?filterType=email&filterValues=a@x.com&access_token={token}");
    let r = send(env.addr(), "GET", &q, &[], b"").await;
    assert_eq!(
        r.code().as_deref(),
        Some("601"),
        "access_token query parameter is not accepted"
    );
}

#[tokio::test]
async fn revoked_token_answers_601_and_a_new_one_is_issued() {
    let env = Env::start(EmulatorConfig::default()).await;
    let v = env.admin("POST", "revoke-token", None).await;
    assert_eq!(v["revoked"], env.token.as_str());
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("601")
    );
    let fresh = env.identity().await.json();
    assert_ne!(fresh["access_token"], env.token.as_str());
}

// ---------------------------------------------------------------- envelope and leads

#[tokio::test]
async fn envelope_is_http_200_with_string_codes_and_request_id() {
    let env = Env::start(EmulatorConfig::default()).await;
    let ok = env.lookup_email("nobody@x.com").await;
    assert_eq!(ok.status, 200);
    let v = ok.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["result"], json!([]));
    assert!(v["requestId"].as_str().unwrap().contains('#'));
    let bad = env.get("/rest/v1/leads.json?filterType=email").await;
    assert_eq!(bad.status, 200);
    let v = bad.json();
    assert_eq!(v["success"], false);
    assert!(v["errors"][0]["code"].is_string());
    assert!(v["errors"][0]["message"].is_string());
    // Wrong method: 605; unknown REST path: 610.
    let r = send(
        env.addr(),
        "GET",
        "/rest/v1/leads/1/associate.json?cookie=x",
        &[("Authorization", &env.auth())],
        b"",
    )
    .await;
    assert_eq!(r.code().as_deref(), Some("605"));
    assert_eq!(
        env.get("/rest/v1/nothing.json").await.code().as_deref(),
        Some("610")
    );
}

#[tokio::test]
async fn sync_leads_results_in_input_order_with_record_level_reasons() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("a@x.com").await;
    let r = env
        .sync("createOrUpdate", json!([{"email": "b@x.com", "firstName": "B"}, {"email": "A@X.com", "lastName": "Ay"}, {"firstName": "no email"}, {"email": "not-an-email"}]))
        .await;
    let v = r.json();
    assert_eq!(v["success"], true);
    let res = v["result"].as_array().unwrap();
    assert_eq!(res[0]["status"], "created");
    assert_eq!(res[1], json!({"id": a, "status": "updated"}));
    assert_eq!(res[2]["status"], "skipped");
    assert_eq!(res[2]["reasons"][0]["code"], "1003");
    assert_eq!(res[3]["reasons"][0]["code"], "1001");

    let v = env
        .sync(
            "createOnly",
            json!([{"email": "a@x.com"}, {"email": "c@x.com"}]),
        )
        .await
        .json();
    assert_eq!(v["result"][0]["status"], "skipped");
    assert_eq!(v["result"][0]["reasons"][0]["code"], "1005");
    assert_eq!(v["result"][1]["status"], "created");

    let v = env
        .sync(
            "updateOnly",
            json!([{"email": "zz@x.com"}, {"email": "c@x.com", "company": "C"}]),
        )
        .await
        .json();
    assert_eq!(v["result"][0]["reasons"][0]["code"], "1004");
    assert_eq!(v["result"][1]["status"], "updated");

    let many: Vec<Value> = (0..301)
        .map(|i| json!({"email": format!("u{i}@x.com")}))
        .collect();
    assert_eq!(
        env.sync("createOrUpdate", json!(many))
            .await
            .code()
            .as_deref(),
        Some("1003")
    );
    assert_eq!(
        env.sync(
            "createOrUpdate",
            json!([{"email": "d@x.com", "favouriteColour": "red"}])
        )
        .await
        .code()
        .as_deref(),
        Some("1006")
    );
    let r = send(
        env.addr(),
        "POST",
        "/rest/v1/leads.json",
        &[
            ("Authorization", &env.auth()),
            ("Content-Type", "application/json"),
        ],
        b"{not json",
    )
    .await;
    assert_eq!(r.code().as_deref(), Some("609"));
    let r = send(
        env.addr(),
        "POST",
        "/rest/v1/leads.json",
        &[
            ("Authorization", &env.auth()),
            ("Content-Type", "text/plain"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.code().as_deref(), Some("612"));

    let lead = env.lookup_email("a@x.com").await.json();
    assert_eq!(lead["result"][0]["id"], a);
    assert_eq!(lead["result"][0]["lastName"], "Ay");
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["by_record_code"]["1004"], 1);
    assert_eq!(calls["by_record_code"]["1005"], 1);
}

#[tokio::test]
async fn a_cookie_pushed_in_a_sync_record_loses_its_anonymous_history() {
    let env = Env::start(EmulatorConfig::default()).await;
    env.visit(TOKEN, "%2Fbefore").await;
    let v = env
        .sync("createOrUpdate", json!([{"email": "a@x.com", "cookies": COOKIE}, {"email": "b@x.com", "cookies": "id:123-ABC-456"}]))
        .await
        .json();
    assert_eq!(v["result"][0]["status"], "created");
    assert_eq!(v["result"][1]["reasons"][0]["code"], "1012");
    env.visit(TOKEN, "%2Fafter").await;
    let leads = env.admin("GET", "leads", None).await;
    assert_eq!(leads["anonymous"], json!([]));
    let urls: Vec<&str> = leads["leads"][0]["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        vec!["/after"],
        "the anonymous view before the push is gone"
    );
}

#[tokio::test]
async fn concurrent_upserts_of_one_email_can_create_duplicates() {
    let env = Env::start(EmulatorConfig::default()).await;
    env.admin("POST", "faults", Some(json!({"latency_ms": 800})))
        .await;
    let (x, y) = tokio::join!(
        env.sync("createOrUpdate", json!([{"email": "dup@x.com"}])),
        env.sync("createOrUpdate", json!([{"email": "dup@x.com"}]))
    );
    assert_eq!(x.json()["result"][0]["status"], "created");
    assert_eq!(y.json()["result"][0]["status"], "created");
    env.admin("POST", "faults", Some(json!({"latency_ms": 0})))
        .await;
    assert_eq!(
        env.lookup_email("dup@x.com").await.json()["result"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let v = env
        .sync("updateOnly", json!([{"email": "dup@x.com"}]))
        .await
        .json();
    assert_eq!(v["result"][0]["reasons"][0]["code"], "1007");
}

#[tokio::test]
async fn get_leads_by_email_id_and_limits_on_values_and_fields() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("a@x.com").await;
    let b = env.create("b@x.com").await;
    let v = env
        .get("/rest/v1/leads.json?filterType=email&filterValues=a@x.com,B@x.com,none@x.com")
        .await
        .json();
    let ids: Vec<u64> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![a, b]);
    let v = env
        .get(&format!(
            "/rest/v1/leads.json?filterType=id&filterValues={b},999999&fields=email,firstName"
        ))
        .await
        .json();
    assert_eq!(
        v["result"],
        json!([{"id": b, "email": "b@x.com", "firstName": null}])
    );
    let values: Vec<String> = (0..301).map(|i| format!("{i}")).collect();
    let r = env
        .get(&format!(
            "/rest/v1/leads.json?filterType=id&filterValues={}",
            values.join(",")
        ))
        .await;
    assert_eq!(r.code().as_deref(), Some("1003"));
    let r = env
        .get("/rest/v1/leads.json?filterType=email&filterValues=a@x.com&fields=shoeSize")
        .await;
    assert_eq!(r.code().as_deref(), Some("1006"));
    let r = env
        .get("/rest/v1/leads.json?filterType=id&filterValues=abc")
        .await;
    assert_eq!(r.code().as_deref(), Some("1003"));
}

#[tokio::test]
async fn uri_over_8kb_is_414_and_post_with_method_get_form_works() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env
        .create("someone.with.a.rather.long.address0@example.com")
        .await;
    let emails: Vec<String> = (0..250)
        .map(|i| format!("someone.with.a.rather.long.address{i}@example.com"))
        .collect();
    let query = format!(
        "filterType=email&filterValues={}&fields=email",
        emails.join(",")
    );
    assert!(query.len() > 8192);
    let r = env.get(&format!("/rest/v1/leads.json?{query}")).await;
    assert_eq!(r.status, 414);
    let r = send(
        env.addr(),
        "POST",
        "/rest/v1/leads.json?_method=GET",
        &[
            ("Authorization", &env.auth()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        query.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"][0]["id"], a);
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["by_code"]["414"], 1);
    assert_eq!(calls["by_endpoint"]["get_leads"], 2);
}

#[tokio::test]
async fn body_over_1mb_is_413() {
    let env = Env::start(EmulatorConfig::default()).await;
    let mut body =
        br#"{"action":"createOrUpdate","input":[{"email":"a@x.com","firstName":""#.to_vec();
    body.resize(1024 * 1024 + 1, b'x');
    let r = send(
        env.addr(),
        "POST",
        "/rest/v1/leads.json",
        &[
            ("Authorization", &env.auth()),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(env.admin("GET", "calls", None).await["by_code"]["413"], 1);
}

// ---------------------------------------------------------------- associate and web activity

#[tokio::test]
async fn associate_validates_cookie_and_lead() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("a@x.com").await;
    // The `&` not encoded: the token part becomes another parameter.
    let r = env.associate(a, COOKIE).await;
    assert_eq!(r.code().as_deref(), Some("1012"));
    assert_eq!(
        r.json()["errors"][0]["message"],
        "Invalid cookie value 'id:123-ABC-456'"
    );
    // Encoded twice.
    let twice = COOKIE_ENC.replace('%', "%25");
    assert_eq!(
        env.associate(a, &twice).await.code().as_deref(),
        Some("1012")
    );
    assert_eq!(
        env.associate(a, "undefined").await.code().as_deref(),
        Some("1012")
    );
    assert_eq!(
        env.associate(999_999, COOKIE_ENC).await.code().as_deref(),
        Some("1004")
    );
    // Bare POST without a JSON content type.
    let r = send(
        env.addr(),
        "POST",
        &format!("/rest/v1/leads/{a}/associate.json?cookie={COOKIE_ENC}"),
        &[("Authorization", &env.auth())],
        b"",
    )
    .await;
    assert_eq!(r.code().as_deref(), Some("612"));

    let r = env.associate(a, COOKIE_ENC).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["success"], true);
    assert!(v.get("result").is_none());
    assert!(v["requestId"].is_string());

    // filterType=cookies finds the lead; fields=cookies lists its tokens.
    let v = env
        .get(&format!(
            "/rest/v1/leads.json?filterType=cookies&filterValues={COOKIE_ENC}&fields=email,cookies"
        ))
        .await
        .json();
    assert_eq!(
        v["result"],
        json!([{"id": a, "email": "a@x.com", "cookies": TOKEN}])
    );
    // Same token under another munchkin id part is the same visitor.
    let other = "id%3A999-ZZZ-999%26token%3A_mch-example.com-1700000000000-12345";
    let v = env
        .get(&format!(
            "/rest/v1/leads.json?filterType=cookies&filterValues={other}"
        ))
        .await
        .json();
    assert_eq!(v["result"][0]["id"], a);
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["by_code"]["1012"], 3);
    assert_eq!(calls["by_code"]["1004"], 1);
}

#[tokio::test]
async fn anonymous_page_views_move_onto_the_lead_at_association() {
    let env = Env::start(EmulatorConfig::default()).await;
    assert_eq!(env.visit(TOKEN, "%2Fpricing").await.status, 200);
    env.clock.advance_ms(1000);
    assert_eq!(env.visit(TOKEN, "%2Fdocs").await.status, 200);
    assert_eq!(env.visit("not-a-token", "%2Fx").await.status, 400);
    let before = env.admin("GET", "leads", None).await;
    assert_eq!(before["anonymous"][0]["token"], TOKEN);
    assert_eq!(
        before["anonymous"][0]["activity"].as_array().unwrap().len(),
        2
    );

    let a = env.create("a@x.com").await;
    assert_eq!(env.associate(a, COOKIE_ENC).await.json()["success"], true);
    env.clock.advance_ms(1000);
    env.visit(TOKEN, "%2Fpricing%3Fplan%3Dteam").await;

    let after = env.admin("GET", "leads", None).await;
    assert_eq!(after["anonymous"], json!([]));
    let lead = &after["leads"][0];
    assert_eq!(lead["id"], a);
    assert_eq!(lead["cookies"], json!([TOKEN]));
    let urls: Vec<(&str, bool)> = lead["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["url"].as_str().unwrap(),
                x["anonymous"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        urls,
        vec![
            ("/pricing", true),
            ("/docs", true),
            ("/pricing?plan=team", false)
        ]
    );
}

#[tokio::test]
async fn reassociation_sends_later_activity_to_the_new_lead_only() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("a@x.com").await;
    let b = env.create("b@x.com").await;
    env.associate(a, COOKIE_ENC).await;
    env.visit(TOKEN, "%2Fby-a").await;
    assert_eq!(env.associate(b, COOKIE_ENC).await.json()["success"], true);
    env.visit(TOKEN, "%2Fby-b").await;
    let leads = env.admin("GET", "leads", None).await;
    let act = |i: usize| -> Vec<String> {
        leads["leads"][i]["activity"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["url"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(act(0), vec!["/by-a"]);
    assert_eq!(act(1), vec!["/by-b"]);
    let v = env
        .get(&format!(
            "/rest/v1/leads.json?filterType=cookies&filterValues={COOKIE_ENC}"
        ))
        .await
        .json();
    assert_eq!(v["result"][0]["id"], b);
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn call_101_inside_one_window_gets_606() {
    let env = Env::start(EmulatorConfig::default()).await;
    // Calls answered 601 and identity calls do not count.
    for _ in 0..3 {
        let r = send(
            env.addr(),
            "GET",
            "/rest/v1/leads.json?filterType=email&filterValues=a@x.com",
            &[("Authorization", "Bearer bad")],
            b"",
        )
        .await;
        assert_eq!(r.code().as_deref(), Some("601"));
        env.identity().await;
    }
    for i in 0..100 {
        env.clock.advance_ms(100); // 100 calls over 10 s: one window
        let r = env.lookup_email("a@x.com").await;
        assert_eq!(r.json()["success"], true, "call {}", i + 1);
    }
    let r = env.lookup_email("a@x.com").await;
    assert_eq!(r.code().as_deref(), Some("606"));
    assert_eq!(
        r.json()["errors"][0]["message"],
        "Max rate limit '100' exceeded with in '20' secs"
    );
    // The window rolls: 20 s after the first call, one slot frees up.
    env.clock.set_ms(T0 + 100 + 20_000);
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("606")
    );
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["by_code"]["606"], 2);
    assert_eq!(calls["quota_used"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_concurrent_call_gets_615() {
    let env = Arc::new(Env::start(EmulatorConfig::default()).await);
    env.admin("POST", "faults", Some(json!({"latency_ms": 2500})))
        .await;
    let mut slow = Vec::new();
    for _ in 0..10 {
        let e = env.clone();
        slow.push(tokio::spawn(async move { e.lookup_email("a@x.com").await }));
    }
    let mut waited = 0;
    loop {
        if env.admin("GET", "calls", None).await["in_flight"] == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 10;
        assert!(waited < 2300, "the 10 slow calls did not all start");
    }
    let r = env.lookup_email("a@x.com").await;
    assert_eq!(r.code().as_deref(), Some("615"));
    for s in slow {
        assert_eq!(s.await.unwrap().json()["success"], true);
    }
    assert_eq!(env.admin("GET", "calls", None).await["in_flight"], 0);
}

#[tokio::test]
async fn daily_quota_607_until_midnight_us_central_summer() {
    // 23:59 CDT (UTC-5) on 2026-07-14.
    let env = Env::start_at(small_quota(), 1_784_091_540_000).await;
    for _ in 0..3 {
        assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
    }
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("607")
    );
    env.clock.set_ms(1_784_091_600_000 - 1);
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("607")
    );
    env.clock.set_ms(1_784_091_600_000); // 05:00 UTC = 00:00 CDT
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
}

#[tokio::test]
async fn daily_quota_607_until_midnight_us_central_winter() {
    // 23:59 CST (UTC-6) on 2026-01-14; 05:00 UTC is still the same day there.
    let env = Env::start_at(small_quota(), 1_768_456_740_000).await;
    for _ in 0..3 {
        env.lookup_email("a@x.com").await;
    }
    env.clock.set_ms(1_768_456_800_000 - 3_600_000);
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("607")
    );
    env.clock.set_ms(1_768_456_800_000); // 06:00 UTC = 00:00 CST
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
}

#[tokio::test]
async fn forced_quota_day_until_cleared_reset_or_midnight() {
    let env = Env::start(EmulatorConfig::default()).await;
    let f = env
        .admin("POST", "faults", Some(json!({"quota_exhausted": true})))
        .await;
    assert_eq!(f["quota_exhausted"], true);
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("607")
    );
    env.admin("POST", "faults", Some(json!({"quota_exhausted": false})))
        .await;
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
    env.admin("POST", "faults", Some(json!({"quota_exhausted": true})))
        .await;
    env.admin("POST", "reset", None).await;
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
    env.admin("POST", "faults", Some(json!({"quota_exhausted": true})))
        .await;
    env.clock.advance_ms(24 * 3_600_000);
    let mut env = env;
    env.token = env.identity().await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
}

#[tokio::test]
async fn injected_faults_do_not_count_against_limits() {
    let env = Env::start(EmulatorConfig::default()).await;
    env.admin("POST", "faults", Some(json!({"share_502": 1.0})))
        .await;
    assert_eq!(env.lookup_email("a@x.com").await.status, 502);
    for code in ["604", "608", "611"] {
        let mut f = json!({"share_502": 0.0, "share_604": 0.0, "share_608": 0.0, "share_611": 0.0});
        f[format!("share_{code}")] = json!(1.0);
        env.admin("POST", "faults", Some(f)).await;
        assert_eq!(
            env.lookup_email("a@x.com").await.code().as_deref(),
            Some(code)
        );
    }
    let r = send(
        env.addr(),
        "POST",
        "/__emulator/faults",
        &[],
        br#"{"share_502":0.7,"share_604":0.7}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["quota_used"], 0);
    assert_eq!(
        calls["by_code"],
        json!({"502": 1, "604": 1, "608": 1, "611": 1})
    );
    env.admin("POST", "reset", None).await;
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["total"], 0);
    assert_eq!(
        env.lookup_email("a@x.com").await.json()["success"],
        true,
        "reset restores configured faults"
    );
}

#[tokio::test]
async fn time_scale_shrinks_windows_and_lifetimes() {
    let config = EmulatorConfig {
        time_scale: 100.0,
        rate_limit: 2,
        ..EmulatorConfig::default()
    };
    let env = Env::start(config).await;
    assert_eq!(env.identity().await.json()["expires_in"], 35);
    env.lookup_email("a@x.com").await;
    env.lookup_email("a@x.com").await;
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("606")
    );
    env.clock.advance_ms(200); // 20 s of emulated time
    assert_eq!(env.lookup_email("a@x.com").await.json()["success"], true);
    env.clock.advance_ms(36_000); // 3600 s of emulated time
    assert_eq!(
        env.lookup_email("a@x.com").await.code().as_deref(),
        Some("602")
    );
}

#[tokio::test]
async fn admin_config_and_log() {
    let env = Env::start(EmulatorConfig::default()).await;
    let c = env.admin("GET", "", None).await;
    assert_eq!(c["munchkin_id"], "123-ABC-456");
    assert_eq!(c["base_url"], env.emu.base_url());
    env.lookup_email("a@x.com").await;
    let log = env.admin("GET", "log?limit=1", None).await;
    assert_eq!(log["calls"].as_array().unwrap().len(), 1);
    assert_eq!(log["calls"][0]["endpoint"], "get_leads");
    assert_eq!(log["calls"][0]["counted"], true);
}

#[tokio::test]
async fn admin_changes_from_another_origin_are_refused() {
    let env = Env::start(EmulatorConfig::default()).await;
    let addr = env.emu.local_addr();
    let evil = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let r = send(
        addr,
        "POST",
        "/__emulator/faults",
        &evil,
        br#"{"share_502":1}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(addr, "POST", "/__emulator/reset", &evil, b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(env.admin("GET", "faults", None).await["share_502"], 0.0);
    // Reads carry no CORS header, so other origins cannot read leads.
    let r = send(
        addr,
        "GET",
        "/__emulator/leads",
        &[("Origin", "http://evil.example")],
        b"",
    )
    .await;
    assert!(!r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("access-control-allow-origin")));
    // The emulator's own origin and origin-less clients may change things.
    let own = [
        ("Origin", env.emu.base_url()),
        ("Content-Type", "application/json"),
    ];
    let r = send(
        addr,
        "POST",
        "/__emulator/faults",
        &own,
        br#"{"share_502":0.5}"#,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn start_rejects_a_bad_config_and_shutdown_stops_the_server() {
    let bad = EmulatorConfig {
        munchkin_id: "123".into(),
        ..EmulatorConfig::default()
    };
    assert!(Emulator::start(bad).await.is_err());
    for bad in [
        EmulatorConfig {
            concurrency: 0,
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            rate_limit: 0,
            ..EmulatorConfig::default()
        },
    ] {
        assert!(Emulator::start(bad).await.is_err());
    }
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let addr = emu.local_addr();
    assert!(emu.base_url().starts_with("http://127.0.0.1:"));
    emu.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------- the served script

#[tokio::test]
async fn munchkin_script_is_served_with_the_instance_id_and_base_url() {
    let env = Env::start(EmulatorConfig::default()).await;
    let r = send(env.addr(), "GET", "/munchkin.js", &[], b"").await;
    assert_eq!(r.status, 200);
    let js = String::from_utf8(r.body).unwrap();
    assert!(js.contains("\"123-ABC-456\""));
    assert!(js.contains(&format!("\"http://{}\"", env.addr())));
    assert!(js.contains("var AUTO = true;"));
    let r = send(env.addr(), "GET", "/munchkin.js?manual=1", &[], b"").await;
    assert!(String::from_utf8(r.body)
        .unwrap()
        .contains("var AUTO = false;"));
}

// ---------------------------------------------------------------- hostile input

#[tokio::test]
async fn bad_input_gets_an_answer_never_a_dropped_connection() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("a@x.com").await;
    let auth = env.auth();
    let json_h: &[(&str, &str)] = &[
        ("Authorization", &auth),
        ("Content-Type", "application/json"),
    ];
    let cases: Vec<(&str, String, &[u8], Option<&str>)> = vec![
        (
            "GET",
            "/rest/v1/leads.json?filterType=%FF%FE&filterValues=%ZZ".into(),
            b"",
            Some("1003"),
        ),
        (
            "GET",
            "/rest/v1/leads.json?filterType=id&filterValues=99999999999999999999999".into(),
            b"",
            Some("1003"),
        ),
        (
            "GET",
            "/rest/v1/leads.json?filterType=email&filterValues=,,,".into(),
            b"",
            Some("1003"),
        ),
        (
            "POST",
            "/rest/v1/leads.json".into(),
            br#"{"input":[1,"x",null,[],{"email":{"a":1}}]}"#,
            None,
        ),
        (
            "POST",
            "/rest/v1/leads.json".into(),
            br#"{"action":5,"input":"x"}"#,
            Some("1003"),
        ),
        ("POST", "/rest/v1/leads.json".into(), b"[]", Some("609")),
        (
            "POST",
            "/rest/v1/leads.json".into(),
            br#"{"lookupField":"id","input":[{"id":-1},{"id":"x"},{"id":1e300}]}"#,
            None,
        ),
        (
            "POST",
            "/rest/v1/leads/%FF/associate.json?cookie=%".into(),
            b"",
            Some("1004"),
        ),
        (
            "POST",
            "/rest/v1/leads/18446744073709551616/associate.json".into(),
            b"",
            Some("1004"),
        ),
        (
            "POST",
            "/rest/v1/leads//associate.json".into(),
            b"",
            Some("1004"),
        ),
        (
            "POST",
            format!("/rest/v1/leads/{a}/associate.json?cookie=%E2%82"),
            b"",
            Some("1012"),
        ),
        (
            "POST",
            format!(
                "/rest/v1/leads/{a}/associate.json?cookie={}",
                "x".repeat(8000)
            ),
            b"",
            Some("1012"),
        ),
        ("DELETE", "/rest/v1/leads.json".into(), b"", Some("605")),
    ];
    for (method, target, body, code) in cases {
        let r = send(env.addr(), method, &target, json_h, body).await;
        assert_eq!(r.status, 200, "{method} {target}");
        let v = r.json();
        match code {
            Some(c) => assert_eq!(v["errors"][0]["code"], c, "{method} {target}: {v}"),
            None => assert_eq!(v["success"], true, "{method} {target}: {v}"),
        }
    }
    for h in ["Bearer", "Basic abc", "bearer  "] {
        let r = send(
            env.addr(),
            "GET",
            "/rest/v1/leads.json?filterType=id&filterValues=1",
            &[("Authorization", h)],
            b"",
        )
        .await;
        assert_eq!(r.code().as_deref(), Some("601"), "{h:?}");
    }
    let r = send(
        env.addr(),
        "GET",
        "/identity/oauth/token?grant_type=client_credentials&client_id=%FF&client_secret=",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    for body in [
        &br#"{"latency_ms":-1}"#[..],
        br#"{"share_502":"x"}"#,
        b"not json",
        br#"{"latency_ms":999999999}"#,
    ] {
        let r = send(env.addr(), "POST", "/__emulator/faults", &[], body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(
        send(env.addr(), "GET", "/webevents/visitWebPage", &[], b"")
            .await
            .status,
        400
    );
    assert_eq!(
        send(
            env.addr(),
            "GET",
            "/__emulator/log?limit=999999999999999999999",
            &[],
            b""
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(env.addr(), "GET", "/__emulator/nothing", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        send(env.addr(), "GET", "/favicon.ico", &[], b"")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn update_by_id_can_change_the_email_a_lead_is_found_by() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("old@x.com").await;
    let v = env
        .post_json(
            "/rest/v1/leads.json",
            &json!({"action": "updateOnly", "lookupField": "id", "input": [{"id": a, "email": "New@x.com"}, {"id": 424242}]}),
        )
        .await
        .json();
    assert_eq!(v["result"][0], json!({"id": a, "status": "updated"}));
    assert_eq!(v["result"][1]["reasons"][0]["code"], "1004");
    assert_eq!(
        env.lookup_email("old@x.com").await.json()["result"],
        json!([])
    );
    assert_eq!(
        env.lookup_email("new@X.com").await.json()["result"][0]["id"],
        a
    );
}

#[tokio::test]
async fn associate_refusals_can_come_as_skipped_records() {
    let env = Env::start(EmulatorConfig::default()).await;
    let a = env.create("r@x.com").await;
    env.admin("POST", "faults", Some(json!({"share_1012": 1.0})))
        .await;
    assert_eq!(
        env.associate(a, COOKIE_ENC).await.code().as_deref(),
        Some("1012")
    );
    let f = env
        .admin(
            "POST",
            "faults",
            Some(json!({"share_1012": 0.0, "associate_record_level": true})),
        )
        .await;
    assert_eq!(f["associate_record_level"], true);
    let r = env.associate(999_999, COOKIE_ENC).await.json();
    assert_eq!(r["success"], true);
    assert_eq!(r["result"][0]["status"], "skipped");
    assert_eq!(r["result"][0]["reasons"][0]["code"], "1004");
    assert_eq!(env.associate(a, COOKIE_ENC).await.json()["success"], true);
    let calls = env.admin("GET", "calls", None).await;
    assert_eq!(calls["by_record_code"]["1004"], 1);
    let r = send(
        env.addr(),
        "POST",
        "/__emulator/faults",
        &[],
        br#"{"share_1012":2}"#,
    )
    .await;
    assert_eq!(r.status, 400);
}
