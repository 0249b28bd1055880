//! The `/__emulator/` inspection and control API (shapes documented on the module).

use super::api::{json_response, MAX_BODY};
use super::query::Params;
use super::Shared;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn handle(
    sh: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    raw_query: &str,
    body: Body,
) -> Response {
    let sub = path
        .trim_start_matches("/__emulator")
        .trim_matches('/')
        .to_string();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MB"),
    };
    let get = method == Method::GET;
    let post = method == Method::POST || method == Method::PUT;
    // Browsers send `Origin` on cross-origin requests: a web page the tester happens
    // to visit must not be able to inject faults, reset or revoke (CSRF).
    if post && !same_origin(sh, headers) {
        return error(StatusCode::FORBIDDEN, "admin changes are refused from other origins");
    }
    match (sub.as_str(), get, post) {
        ("", true, _) => ok(config_json(sh)),
        ("leads", true, _) => ok(sh.lock().leads_json()),
        ("calls", true, _) => ok(sh.lock().calls_json()),
        ("log", true, _) => {
            let limit = Params::parse(raw_query)
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(100);
            ok(sh.lock().log_json(limit))
        }
        ("faults", true, _) => ok(faults_json(sh)),
        ("faults", _, true) => set_faults(sh, &body),
        ("reset", _, true) => {
            let mut store = sh.lock();
            sh.reset_store(&mut store);
            ok(json!({"reset": true}))
        }
        ("revoke-token", _, true) => {
            let mut store = sh.lock();
            let current = store.current_token.take();
            if let Some(t) = current.as_ref().and_then(|t| store.tokens.get_mut(t)) {
                t.revoked = true;
            }
            ok(json!({"revoked": current}))
        }
        ("" | "leads" | "calls" | "log" | "faults" | "reset" | "revoke-token", _, _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

/// True when the request carries no `Origin` (curl, test clients) or the emulator's own.
fn same_origin(sh: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get(header::ORIGIN)
        .is_none_or(|o| o.as_bytes() == sh.base_url.as_bytes())
}

/// Admin answers carry no CORS header: other origins cannot read leads or the log.
fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({"error": {"code": status.as_u16(), "message": message}}))
}

fn config_json(sh: &Shared) -> Value {
    let c = &sh.config;
    json!({
        "base_url": sh.base_url,
        "munchkin_id": c.munchkin_id,
        "client_id": c.client_id,
        "rate_limit": c.rate_limit,
        "rate_window_ms": c.rate_window.as_millis() as u64,
        "concurrency": c.concurrency,
        "daily_quota": c.daily_quota,
        "token_ttl_s": c.token_ttl.as_secs(),
        "time_scale": c.time_scale,
    })
}

fn faults_json(sh: &Shared) -> Value {
    let today = sh.day(sh.now());
    let mut store = sh.lock();
    store.roll_day(today);
    let f = &store.faults;
    json!({
        "share_502": f.share_502,
        "share_604": f.share_604,
        "share_608": f.share_608,
        "share_611": f.share_611,
        "latency_ms": f.latency.as_millis() as u64,
        "quota_exhausted": store.forced_quota_day.is_some(),
        "share_1012": f.share_1012,
        "associate_record_level": f.associate_record_level,
    })
}

fn set_faults(sh: &Shared, body: &[u8]) -> Response {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    };
    let mut faults = sh.lock().faults.clone();
    let mut quota: Option<bool> = None;
    for (k, v) in &m {
        let share = |v: &Value| v.as_f64().ok_or(());
        let r = match k.as_str() {
            "share_502" => share(v).map(|s| faults.share_502 = s),
            "share_604" => share(v).map(|s| faults.share_604 = s),
            "share_608" => share(v).map(|s| faults.share_608 = s),
            "share_611" => share(v).map(|s| faults.share_611 = s),
            "share_1012" => share(v).map(|s| faults.share_1012 = s),
            "associate_record_level" => v
                .as_bool()
                .map(|b| faults.associate_record_level = b)
                .ok_or(()),
            "latency_ms" => v
                .as_u64()
                .map(|ms| faults.latency = Duration::from_millis(ms))
                .ok_or(()),
            "quota_exhausted" => v.as_bool().map(|b| quota = Some(b)).ok_or(()),
            _ => Err(()),
        };
        if r.is_err() {
            return error(StatusCode::BAD_REQUEST, &format!("bad or unknown fault '{k}'"));
        }
    }
    if let Err(e) = faults.validate() {
        return error(StatusCode::BAD_REQUEST, &e);
    }
    let today = sh.day(sh.now());
    {
        let mut store = sh.lock();
        store.roll_day(today);
        store.faults = faults;
        match quota {
            Some(true) => store.forced_quota_day = Some(today),
            Some(false) => store.forced_quota_day = None,
            None => {}
        }
    }
    ok(faults_json(sh))
}
