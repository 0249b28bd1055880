//! Request dispatch, the identity endpoint and the REST endpoints with their
//! limits and faults.

use super::query::Params;
use super::store::{CallEntry, Store};
use super::tracking_cookie::parse_value;
use super::{admin, munchkin_js, Shared};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Longest request target (path and query) accepted: 8 KB.
pub(crate) const MAX_URI: usize = 8 * 1024;
/// Largest request body accepted: 1 MB.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Bodies up to this size are read (and discarded) before a 413, so the client
/// gets the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
/// Most records / filter values per call.
const MAX_BATCH: usize = 300;

/// Fields a sync call may write (besides the lookup field `id` and `cookies`).
const WRITABLE: &[&str] = &[
    "email",
    "firstName",
    "lastName",
    "middleName",
    "company",
    "title",
    "phone",
    "mobilePhone",
    "leadSource",
    "website",
    "city",
    "state",
    "country",
    "postalCode",
    "address",
    "unsubscribed",
];
/// Read-only fields a lookup may ask for.
const SYSTEM: &[&str] = &["id", "createdAt", "updatedAt", "cookies"];
/// Fields returned when `fields` is not given.
const DEFAULT_FIELDS: &[&str] = &[
    "id",
    "email",
    "firstName",
    "lastName",
    "updatedAt",
    "createdAt",
];

/// The single entry point: admin, script, web events and the Marketo API.
pub(crate) async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let target_len = parts
        .uri
        .path_and_query()
        .map_or(path.len(), |p| p.as_str().len());
    if path == "/__emulator" || path.starts_with("/__emulator/") {
        return admin::handle(&sh, &parts.method, &parts.headers, &path, &raw_query, body).await;
    }
    if path == "/munchkin.js" {
        return munchkin_js::script(&sh, &parts.headers, &raw_query);
    }
    if path == "/webevents/visitWebPage" {
        return munchkin_js::visit(&sh, &raw_query);
    }
    let query = Params::parse(&raw_query);
    let Some(op) = classify(&parts.method, &path, &query) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let request_id = {
        let mut store = sh.lock();
        let seq = store.next_seq();
        format!("{:x}#{:x}", seq, sh.now() & 0xff_ffff_ffff)
    };
    let mut call = Call {
        sh: &sh,
        request_id,
        method: parts.method.clone(),
        path,
        endpoint: op.endpoint(),
        counted: false,
    };
    let answer = if target_len > MAX_URI {
        Answer::http(StatusCode::URI_TOO_LONG, "Request-URI Too Long")
    } else {
        match axum::body::to_bytes(body, DRAIN_LIMIT).await {
            Ok(bytes) if bytes.len() <= MAX_BODY => {
                call.run(op, &parts.headers, query, bytes).await
            }
            _ => Answer::http(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
        }
    };
    call.finish(answer)
}

/// What a request asks for.
enum Op {
    Identity,
    GetLeads { form: bool },
    SyncLeads,
    Associate(String),
    /// A known path with a method it does not take (605).
    BadMethod(&'static str),
    /// An unknown `/rest/` path (610).
    Unknown,
}

impl Op {
    fn endpoint(&self) -> &'static str {
        match self {
            Op::Identity => "identity",
            Op::GetLeads { .. } => "get_leads",
            Op::SyncLeads => "sync_leads",
            Op::Associate(_) => "associate",
            Op::BadMethod(e) => e,
            Op::Unknown => "unknown",
        }
    }
}

fn classify(method: &Method, path: &str, query: &Params) -> Option<Op> {
    if path == "/identity/oauth/token" {
        return Some(if method == Method::GET || method == Method::POST {
            Op::Identity
        } else {
            Op::BadMethod("identity")
        });
    }
    if path == "/rest/v1/leads.json" {
        return Some(match *method {
            Method::GET => Op::GetLeads { form: false },
            Method::POST if query.get("_method") == Some("GET") => Op::GetLeads { form: true },
            Method::POST => Op::SyncLeads,
            _ => Op::BadMethod("leads"),
        });
    }
    if let Some(id) = path
        .strip_prefix("/rest/v1/leads/")
        .and_then(|r| r.strip_suffix("/associate.json"))
    {
        return Some(if method == Method::POST {
            Op::Associate(id.to_string())
        } else {
            Op::BadMethod("associate")
        });
    }
    if path.starts_with("/rest/") {
        return Some(Op::Unknown);
    }
    None
}

/// An answer plus what the call log needs to know about it.
struct Answer {
    response: Response,
    code: Option<String>,
    record_codes: Vec<String>,
}

impl Answer {
    fn http(status: StatusCode, text: &'static str) -> Answer {
        Answer {
            response: (status, format!("{text}\n")).into_response(),
            code: Some(status.as_u16().to_string()),
            record_codes: Vec::new(),
        }
    }

    fn json(status: StatusCode, body: Value, code: Option<String>) -> Answer {
        Answer {
            response: json_response(status, &body),
            code,
            record_codes: Vec::new(),
        }
    }
}

/// A JSON response with Marketo's content type.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

/// One API call on its way through auth, faults and limits.
struct Call<'a> {
    sh: &'a Arc<Shared>,
    request_id: String,
    method: Method,
    path: String,
    endpoint: &'static str,
    counted: bool,
}

/// Holds one concurrency slot; gives it back when dropped (also on cancellation).
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut store = self.0.lock();
        store.in_flight = store.in_flight.saturating_sub(1);
    }
}

impl Call<'_> {
    fn error(&self, code: &str, message: &str) -> Answer {
        Answer::json(
            StatusCode::OK,
            json!({
                "requestId": self.request_id,
                "success": false,
                "errors": [{"code": code, "message": message}],
            }),
            Some(code.to_string()),
        )
    }

    fn success(&self, result: Option<Vec<Value>>, record_codes: Vec<String>) -> Answer {
        let body = match result {
            Some(r) => json!({"requestId": self.request_id, "result": r, "success": true}),
            None => json!({"requestId": self.request_id, "success": true}),
        };
        Answer {
            response: json_response(StatusCode::OK, &body),
            code: None,
            record_codes,
        }
    }

    fn finish(self, answer: Answer) -> Response {
        let sh = self.sh;
        let mut store = sh.lock();
        let seq = store.next_seq();
        let entry = CallEntry {
            seq,
            at_ms: sh.now(),
            request_id: self.request_id,
            method: self.method.to_string(),
            endpoint: self.endpoint,
            path: self.path,
            http_status: answer.response.status().as_u16(),
            code: answer.code,
            record_codes: answer.record_codes,
            counted: self.counted,
        };
        store.record(entry);
        answer.response
    }

    async fn run(&mut self, op: Op, headers: &HeaderMap, query: Params, body: Bytes) -> Answer {
        let form_body = || Params::parse(&String::from_utf8_lossy(&body));
        match op {
            Op::Identity => {
                let params = if self.method == Method::POST && is_form(headers) {
                    query.overlay(form_body())
                } else {
                    query
                };
                return self.identity(&params);
            }
            Op::BadMethod(_) => {
                let msg = format!("Request method '{}' not supported", self.method);
                return self.error("605", &msg);
            }
            _ => {}
        }
        let fault = self.roll_fault();
        if fault == Some("502") {
            return Answer::http(StatusCode::BAD_GATEWAY, "Bad Gateway");
        }
        if let Err(answer) = self.authenticate(headers) {
            return *answer;
        }
        match fault {
            Some("604") => return self.error("604", "Request timed out"),
            Some("608") => return self.error("608", "API Temporarily Unavailable"),
            Some("611") => return self.error("611", "System error"),
            _ => {}
        }
        let (slot, latency) = match self.admit() {
            Ok(admitted) => admitted,
            Err(answer) => return *answer,
        };
        let answer = match op {
            Op::GetLeads { form } => {
                if form && !is_form(headers) {
                    self.error("612", "Invalid Content Type")
                } else {
                    sleep(latency).await;
                    let params = if form { query.overlay(form_body()) } else { query };
                    self.get_leads(&params)
                }
            }
            Op::SyncLeads => self.sync_leads(headers, &body, latency).await,
            Op::Associate(id) => {
                sleep(latency).await;
                self.associate(&id, headers, &query)
            }
            Op::Unknown => self.error("610", "Requested resource not found"),
            Op::Identity | Op::BadMethod(_) => self.error("611", "System error"),
        };
        drop(slot);
        answer
    }

    /// Picks at most one injected fault for this call.
    fn roll_fault(&self) -> Option<&'static str> {
        let f = self.sh.lock().faults.clone();
        let total = f.share_502 + f.share_604 + f.share_608 + f.share_611;
        if total <= 0.0 {
            return None;
        }
        let r: f64 = rand::thread_rng().gen();
        let mut acc = 0.0;
        for (share, code) in [
            (f.share_502, "502"),
            (f.share_604, "604"),
            (f.share_608, "608"),
            (f.share_611, "611"),
        ] {
            acc += share;
            if r < acc {
                return Some(code);
            }
        }
        None
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Box<Answer>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .unwrap_or("");
        let now = self.sh.now();
        let store = self.sh.lock();
        match store.tokens.get(token) {
            Some(t) if t.revoked => Err(Box::new(self.error("601", "Access token invalid"))),
            Some(t) if now >= t.expires_ms => Err(Box::new(self.error("602", "Access token expired"))),
            Some(_) => Ok(()),
            None => Err(Box::new(self.error("601", "Access token invalid"))),
        }
    }

    /// Quota (607), rolling window (606), concurrency (615); on admission the
    /// call is counted and holds a slot.
    fn admit(&mut self) -> Result<(Slot, Duration), Box<Answer>> {
        let cfg = &self.sh.config;
        let now = self.sh.now();
        let today = self.sh.day(now);
        let mut store = self.sh.lock();
        store.roll_day(today);
        if store.forced_quota_day.is_some() || store.quota_used >= cfg.daily_quota {
            return Err(Box::new(self.error("607", "Daily quota reached")));
        }
        let window_ms = i64::try_from(cfg.rate_window.as_millis()).unwrap_or(i64::MAX);
        while store
            .window
            .front()
            .is_some_and(|t| *t <= now.saturating_sub(window_ms))
        {
            store.window.pop_front();
        }
        if store.window.len() >= cfg.rate_limit as usize {
            let w = cfg.rate_window;
            let window = if w.subsec_millis() == 0 {
                format!("{}", w.as_secs())
            } else {
                format!("{}", w.as_secs_f64())
            };
            let msg = format!(
                "Max rate limit '{}' exceeded with in '{window}' secs",
                cfg.rate_limit
            );
            return Err(Box::new(self.error("606", &msg)));
        }
        if store.in_flight >= cfg.concurrency {
            return Err(Box::new(self.error("615", "Concurrent access limit reached")));
        }
        store.quota_used += 1;
        store.window.push_back(now);
        store.in_flight += 1;
        self.counted = true;
        Ok((Slot(self.sh.clone()), store.faults.latency))
    }

    fn identity(&self, params: &Params) -> Answer {
        let cfg = &self.sh.config;
        if params.get("grant_type") != Some("client_credentials") {
            return Answer::json(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "grant_type must be client_credentials"}),
                Some("400".into()),
            );
        }
        if params.get("client_id") != Some(cfg.client_id.as_str())
            || params.get("client_secret") != Some(cfg.client_secret.as_str())
        {
            return Answer::json(
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "error_description": "Bad client credentials"}),
                Some("401".into()),
            );
        }
        let now = self.sh.now();
        let mut store = self.sh.lock();
        let live = store.current_token.clone().filter(|t| {
            store
                .tokens
                .get(t)
                .is_some_and(|i| !i.revoked && now < i.expires_ms)
        });
        let token = match live {
            Some(t) => t,
            None => {
                let t = new_access_token();
                let ttl = i64::try_from(cfg.token_ttl.as_millis()).unwrap_or(i64::MAX);
                store.tokens.insert(
                    t.clone(),
                    super::store::IssuedToken {
                        expires_ms: now.saturating_add(ttl),
                        revoked: false,
                    },
                );
                store.current_token = Some(t.clone());
                t
            }
        };
        let remaining = store.tokens.get(&token).map_or(0, |i| i.expires_ms - now);
        let real_ms = self.sh.to_real_ms(remaining);
        let expires_in = ((real_ms - 1.0) / 1000.0).floor().max(0.0) as u64;
        Answer::json(
            StatusCode::OK,
            json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": format!("{}@{}", cfg.client_id, cfg.munchkin_id),
            }),
            None,
        )
    }

    fn get_leads(&self, params: &Params) -> Answer {
        let filter_type = params.get("filterType").unwrap_or("");
        let raw_values = params.get("filterValues").unwrap_or("");
        let values: Vec<&str> = raw_values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if filter_type.is_empty() {
            return self.error("1003", "filterType is required");
        }
        if values.is_empty() {
            return self.error("1003", "filterValues is required");
        }
        if values.len() > MAX_BATCH {
            let msg = format!("Too many filterValues: {} (at most 300)", values.len());
            return self.error("1003", &msg);
        }
        let fields: Vec<String> = match params.get("fields").filter(|f| !f.trim().is_empty()) {
            None => DEFAULT_FIELDS.iter().map(|f| f.to_string()).collect(),
            Some(list) => {
                let mut out = vec!["id".to_string()];
                for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if !WRITABLE.contains(&f) && !SYSTEM.contains(&f) {
                        return self.error("1006", &format!("Field '{f}' not found"));
                    }
                    if !out.iter().any(|o| o == f) {
                        out.push(f.to_string());
                    }
                }
                out
            }
        };
        let store = self.sh.lock();
        let mut ids = BTreeSet::new();
        match filter_type {
            "email" => {
                for v in &values {
                    ids.extend(store.leads_by_email(v));
                }
            }
            "id" => {
                for v in &values {
                    match v.parse::<u64>() {
                        Ok(id) if store.leads.contains_key(&id) => {
                            ids.insert(id);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            return self.error("1003", &format!("Invalid id filter value '{v}'"))
                        }
                    }
                }
            }
            "cookies" => {
                for v in &values {
                    let token = match parse_value(v) {
                        Some(p) => p.token,
                        None => v.to_string(),
                    };
                    if let Some(id) = store.visitors.get(&token).and_then(|vis| vis.lead) {
                        ids.insert(id);
                    }
                }
            }
            other => {
                return self.error("1003", &format!("Unsupported filterType '{other}'"));
            }
        }
        let result = ids
            .iter()
            .filter_map(|id| store.leads.get(id))
            .map(|lead| {
                let mut m = Map::new();
                for f in &fields {
                    m.insert(f.clone(), lead.field(f));
                }
                Value::Object(m)
            })
            .collect();
        drop(store);
        self.success(Some(result), Vec::new())
    }

    async fn sync_leads(&self, headers: &HeaderMap, body: &[u8], latency: Duration) -> Answer {
        if !is_json(headers) {
            return self.error("612", "Invalid Content Type");
        }
        let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
            return self.error("609", "Invalid JSON");
        };
        let action = req
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("createOrUpdate");
        if !matches!(action, "createOrUpdate" | "createOnly" | "updateOnly") {
            return self.error("1003", &format!("Invalid action '{action}'"));
        }
        let lookup = req
            .get("lookupField")
            .and_then(Value::as_str)
            .unwrap_or("email");
        if !matches!(lookup, "email" | "id") {
            return self.error("1003", &format!("lookupField '{lookup}' not supported"));
        }
        let input = match req.get("input") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => return self.error("1003", "input must be a non-empty array"),
        };
        if input.len() > MAX_BATCH {
            let msg = format!("Batch size {} exceeds 300", input.len());
            return self.error("1003", &msg);
        }
        for rec in input.iter().filter_map(Value::as_object) {
            for key in rec.keys() {
                let k = key.as_str();
                if !WRITABLE.contains(&k) && k != "cookies" && !(k == "id" && lookup == "id") {
                    return self.error("1006", &format!("Field '{k}' not found"));
                }
            }
        }
        // Phase 1: look every record up (as a real instance does before writing;
        // concurrent upserts of one email can both miss and create duplicates).
        let snapshot: Vec<Vec<u64>> = {
            let store = self.sh.lock();
            input.iter().map(|r| lookup_record(&store, r, lookup)).collect()
        };
        sleep(latency).await;
        // Phase 2: write.
        let now = self.sh.now();
        let mut store = self.sh.lock();
        let mut created_here: HashMap<String, u64> = HashMap::new();
        let mut result = Vec::with_capacity(input.len());
        let mut record_codes = Vec::new();
        for (rec, found) in input.iter().zip(snapshot) {
            let r = sync_one(&mut store, rec, found, action, lookup, now, &mut created_here);
            if let Err((code, _)) = &r {
                record_codes.push(code.to_string());
            }
            result.push(match r {
                Ok((id, status)) => json!({"id": id, "status": status}),
                Err((code, message)) => json!({
                    "status": "skipped",
                    "reasons": [{"code": code, "message": message}],
                }),
            });
        }
        drop(store);
        self.success(Some(result), record_codes)
    }

    /// An associate refusal, at the envelope level or (fault
    /// `associate_record_level`) as a skipped record inside a success.
    fn refuse_associate(&self, code: &str, message: &str) -> Answer {
        if !self.sh.lock().faults.associate_record_level {
            return self.error(code, message);
        }
        let record = json!({"status": "skipped", "reasons": [{"code": code, "message": message}]});
        self.success(Some(vec![record]), vec![code.to_string()])
    }

    fn associate(&self, id: &str, headers: &HeaderMap, query: &Params) -> Answer {
        if !is_json(headers) {
            return self.error("612", "Invalid Content Type");
        }
        let Ok(lead_id) = id.parse::<u64>() else {
            return self.refuse_associate("1004", "Lead not found");
        };
        let raw = query.get("cookie").unwrap_or("");
        let share_1012 = self.sh.lock().faults.share_1012;
        let refused = share_1012 > 0.0 && rand::thread_rng().gen::<f64>() < share_1012;
        let value = parse_value(raw).filter(|_| !refused);
        let Some(value) = value else {
            let shown: String = raw.chars().take(200).collect();
            return self.refuse_associate("1012", &format!("Invalid cookie value '{shown}'"));
        };
        let mut store = self.sh.lock();
        if !store.leads.contains_key(&lead_id) {
            drop(store);
            return self.refuse_associate("1004", "Lead not found");
        }
        store.associate(lead_id, &value.munchkin_id, &value.token, false);
        drop(store);
        self.success(None, Vec::new())
    }
}

/// Leads a sync record would hit through `lookup`, by id.
fn lookup_record(store: &Store, rec: &Value, lookup: &str) -> Vec<u64> {
    match (lookup, rec.get(lookup)) {
        ("email", Some(Value::String(e))) => store.leads_by_email(e),
        ("id", Some(v)) => v
            .as_u64()
            .filter(|id| store.leads.contains_key(id))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

type RecordResult = Result<(u64, &'static str), (&'static str, String)>;

/// Applies one sync record.
fn sync_one(
    store: &mut Store,
    rec: &Value,
    found: Vec<u64>,
    action: &str,
    lookup: &str,
    now: i64,
    created_here: &mut HashMap<String, u64>,
) -> RecordResult {
    let Some(obj) = rec.as_object() else {
        return Err(("1003", "Invalid data".into()));
    };
    if obj.values().any(|v| v.is_object() || v.is_array()) {
        return Err(("1003", "Invalid data".into()));
    }
    let mut found = found;
    match (lookup, obj.get(lookup)) {
        ("email", Some(Value::String(e))) if !e.trim().is_empty() => {
            if let Some(id) = created_here.get(&e.to_ascii_lowercase()) {
                if !found.contains(id) {
                    found.push(*id);
                }
            }
        }
        ("id", Some(v)) if v.as_u64().is_some() => {}
        _ => return Err(("1003", format!("Value for lookup field '{lookup}' is missing"))),
    }
    if let Some(e) = obj.get("email") {
        if !e.as_str().is_some_and(|s| s.contains('@')) {
            return Err(("1001", "Invalid value for field 'email'".into()));
        }
    }
    let cookie = match obj.get("cookies") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(parse_value) {
            Some(c) => Some(c),
            None => return Err(("1012", "Invalid cookie value".into())),
        },
    };
    let fields: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| k.as_str() != "id" && k.as_str() != "cookies")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (id, status) = match (action, found.len(), lookup) {
        ("createOnly", n, _) if n > 0 => return Err(("1005", "Lead already exists".into())),
        ("updateOnly", 0, _) | (_, 0, "id") => return Err(("1004", "Lead not found".into())),
        (_, 0, _) => {
            let email = obj
                .get("email")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            let id = store.create_lead(fields, now);
            created_here.insert(email, id);
            (id, "created")
        }
        (_, 1, _) => {
            let id = found[0];
            store.update_lead(id, fields, now);
            (id, "updated")
        }
        _ => return Err(("1007", "Multiple leads match the lookup criteria".into())),
    };
    if let Some(c) = cookie {
        // Documented harm: a cookie pushed in a sync record loses its anonymous history.
        store.associate(id, &c.munchkin_id, &c.token, true);
    }
    Ok((id, status))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(headers: &HeaderMap) -> bool {
    content_type(headers).starts_with("application/json")
}

fn is_form(headers: &HeaderMap) -> bool {
    content_type(headers).starts_with("application/x-www-form-urlencoded")
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// `<uuid>:ab`, like Marketo's.
fn new_access_token() -> String {
    let n: u128 = rand::thread_rng().gen();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}:ab",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
