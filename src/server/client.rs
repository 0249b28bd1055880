//! The Marketo REST client: access-token cache, pacing, envelope and
//! record-level parsing, bounded jittered retries.
//!
//! Written from MARKETO.md alone (it shares no code with the emulator).

use super::metrics::Metrics;
use super::pacer::{Pacer, PacingConfig, Paused};
use crate::clock::{Clock, UnixMillis};
use crate::marketo::{Backoff, ErrorClass, RetryDecision};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Characters left as they are in a query value (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest URI sent as a GET; longer lookups go as POST with `_method=GET`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest lead batch Marketo accepts.
pub const MAX_BATCH: usize = 300;

/// Where and how to reach one Marketo instance. `Debug` never shows the secret.
#[derive(Clone)]
pub struct MarketoConfig {
    /// REST base URL, e.g. `https://123-ABC-456.mktorest.com` (no trailing `/rest`).
    pub base_url: String,
    /// API client id.
    pub client_id: String,
    /// API client secret (never logged).
    pub client_secret: String,
    /// The instance's Munchkin id, when known (cookies of other instances are refused).
    pub munchkin_id: Option<String>,
    /// Pacing limits.
    pub pacing: PacingConfig,
    /// Retry bounds for one call.
    pub backoff: Backoff,
    /// A token with less than this left is treated as expired.
    pub token_margin: Duration,
    /// Timeout of one HTTP request.
    pub http_timeout: Duration,
}

impl std::fmt::Debug for MarketoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketoConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("munchkin_id", &self.munchkin_id)
            .field("pacing", &self.pacing)
            .field("backoff", &self.backoff)
            .field("token_margin", &self.token_margin)
            .field("http_timeout", &self.http_timeout)
            .finish()
    }
}

impl MarketoConfig {
    /// A configuration with default limits for `base_url` and the given credentials.
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            munchkin_id: None,
            pacing: PacingConfig::default(),
            backoff: Backoff::default(),
            token_margin: Duration::from_secs(60),
            http_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a Marketo call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarketoError {
    /// The identity endpoint refused the credentials.
    #[error("authentication failed (HTTP {0})")]
    Auth(u16),
    /// The identity (token) endpoint failed otherwise: unreachable, a non-200
    /// status (e.g. 404 for a wrong base URL), or no usable token in its reply.
    #[error("identity endpoint: {0}")]
    Identity(Box<MarketoError>),
    /// Marketo answered with an error code.
    #[error("marketo error {code}: {message}")]
    Api {
        /// The code (`"606"`, `"1012"`, …).
        code: String,
        /// Marketo's message.
        message: String,
    },
    /// A non-200 HTTP status.
    #[error("HTTP status {0}")]
    Http(u16),
    /// Connection, timeout or body transport failure.
    #[error("transport: {0}")]
    Transport(String),
    /// A response that is not the documented shape.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// Calls are paused until the daily reset (607, or the daily budget is spent).
    #[error("daily quota: paused until {until_ms}")]
    Quota {
        /// When calls may start again (Unix ms).
        until_ms: UnixMillis,
    },
}

impl MarketoError {
    /// The error class per MARKETO.md.
    pub fn class(&self) -> ErrorClass {
        match self {
            MarketoError::Auth(_) | MarketoError::Identity(_) => ErrorClass::Setup,
            MarketoError::Api { code, .. } => ErrorClass::of_code(code),
            MarketoError::Http(s) => ErrorClass::of_http_status(*s).unwrap_or(ErrorClass::Transient),
            MarketoError::Transport(_) => ErrorClass::Transient,
            MarketoError::Decode(_) => ErrorClass::Transient,
            MarketoError::Quota { .. } => ErrorClass::Quota,
        }
    }

    /// Whether trying again later may succeed (transient, rate, concurrency,
    /// quota, setup problems once fixed).
    pub fn is_retryable(&self) -> bool {
        let c = self.class();
        c.is_retryable() || c == ErrorClass::Quota || c == ErrorClass::Setup
    }

    /// For quota errors: when calls may start again (Unix ms).
    pub fn retry_after(&self) -> Option<UnixMillis> {
        match self {
            MarketoError::Quota { until_ms } => Some(*until_ms),
            _ => None,
        }
    }

    /// A short stable reason (`"1012"`, `"http_502"`, `"transport"`,
    /// `"identity_http_404"`, …) for dead letters and metrics. Only
    /// `[A-Za-z0-9_]`: a code Marketo sends in another shape becomes `"other"`.
    pub fn reason(&self) -> String {
        match self {
            MarketoError::Auth(s) => format!("auth_{s}"),
            MarketoError::Identity(e) => format!("identity_{}", e.reason()),
            MarketoError::Api { code, .. } => safe_code(code).to_owned(),
            MarketoError::Http(s) => format!("http_{s}"),
            MarketoError::Transport(_) => "transport".to_owned(),
            MarketoError::Decode(_) => "decode".to_owned(),
            MarketoError::Quota { .. } => "quota".to_owned(),
        }
    }
}

/// The outcome of one input record of a batch call, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Processed: the lead id and status (`created`, `updated`).
    Ok {
        /// The lead id.
        id: i64,
        /// Marketo's status word.
        status: String,
    },
    /// Skipped or failed, with the first reason code.
    Failed {
        /// The reason code (`"1004"`, `"1003"`, …).
        code: String,
        /// The reason message.
        message: String,
    },
}

/// `code` when it is 1–32 characters of `[A-Za-z0-9_]` (fit for a metric
/// label and a dead-letter reason), else `"other"`.
fn safe_code(code: &str) -> &str {
    let ok = (1..=32).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        code
    } else {
        "other"
    }
}

/// One lead found by a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLead {
    /// The lead id.
    pub id: i64,
    /// The email as Marketo holds it.
    pub email: String,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    result: Vec<Value>,
    #[serde(default)]
    errors: Vec<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Value,
    #[serde(default)]
    message: String,
}

fn code_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[derive(Debug, Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: i64,
}

/// A token needs more than this left to be used at all (a 0-second token is expired).
const TOKEN_GUARD_MS: i64 = 2_000;
/// The longest `expires_in` believed: a new token lives 3600 s.
const MAX_TOKEN_SECS: i64 = 3_600;

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    valid_until_ms: UnixMillis,
}

/// Parses a response body into the envelope's result, or the first error
/// (`success:false`); record-level outcomes are read with [`record_outcomes`].
/// `success:false` without an error code is an undocumented shape: a
/// (transient) decode error, never a permanent one.
pub fn parse_envelope(body: &[u8]) -> Result<Vec<Value>, MarketoError> {
    let env: Envelope =
        serde_json::from_slice(body).map_err(|e| MarketoError::Decode(e.to_string()))?;
    if !env.success {
        let first = env.errors.first();
        let code = first.map(|e| code_string(&e.code)).unwrap_or_default();
        if code.trim().is_empty() {
            return Err(MarketoError::Decode(
                "success:false without an error code".to_owned(),
            ));
        }
        return Err(MarketoError::Api {
            code,
            message: first.map(|e| e.message.clone()).unwrap_or_default(),
        });
    }
    Ok(env.result)
}

/// The first reason of a `skipped`/`failed` record: `(code, message)`, the code
/// `None` when the record gives none.
fn record_failure(r: &Value) -> Option<(Option<String>, String)> {
    let status = r.get("status").and_then(Value::as_str).unwrap_or("");
    if !matches!(status, "skipped" | "failed") {
        return None;
    }
    let reason = r
        .get("reasons")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let code = reason
        .and_then(|x| x.get("code"))
        .map(code_string)
        .filter(|c| !c.trim().is_empty());
    let message = reason
        .and_then(|x| x.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Some((code, message))
}

/// The outcome of an associate reply: `success:true` can still carry a
/// skipped record (`1004` lead not found, …), which is that record's error.
fn associate_outcome(result: &[Value]) -> Result<(), MarketoError> {
    match result.iter().find_map(record_failure) {
        None => Ok(()),
        Some((Some(code), message)) => Err(MarketoError::Api { code, message }),
        Some((None, _)) => Err(MarketoError::Decode(
            "associate record skipped without a reason".to_owned(),
        )),
    }
}

/// Maps batch results to outcomes, in input order (a `skipped` record is a failure).
pub fn record_outcomes(result: &[Value]) -> Vec<RecordOutcome> {
    result
        .iter()
        .map(|r| {
            let status = r.get("status").and_then(Value::as_str).unwrap_or("");
            match (record_failure(r), r.get("id").and_then(Value::as_i64)) {
                (None, Some(id)) => RecordOutcome::Ok {
                    id,
                    status: status.to_owned(),
                },
                (failure, _) => {
                    let (code, message) = failure.unwrap_or((None, String::new()));
                    RecordOutcome::Failed {
                        code: code.unwrap_or_else(|| "unknown".to_owned()),
                        message,
                    }
                }
            }
        })
        .collect()
}

enum Method {
    Get,
    PostForm(String),
    PostJson(Value),
}

/// A Marketo REST client. Cheap to share (`Arc`); every call is paced.
pub struct MarketoClient {
    cfg: MarketoConfig,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    pacer: Pacer,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MarketoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketoClient")
            .field("base_url", &self.cfg.base_url)
            .finish_non_exhaustive()
    }
}

impl MarketoClient {
    /// A client for `cfg`, reading wall time from `clock`, counting into `metrics`.
    pub fn new(
        cfg: MarketoConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MarketoError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .pool_max_idle_per_host(cfg.pacing.concurrency.max(1))
            .build()
            .map_err(|e| MarketoError::Transport(e.to_string()))?;
        Ok(Self {
            pacer: Pacer::new(cfg.pacing.clone(), clock.clone()),
            cfg,
            http,
            token: tokio::sync::Mutex::new(None),
            clock,
            metrics,
        })
    }

    /// The pacer (for pause state and budget figures).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// The configuration.
    pub fn config(&self) -> &MarketoConfig {
        &self.cfg
    }

    /// A valid access token: the cached one while it has more than the safety
    /// margin left, otherwise a new one (one refresh at a time).
    ///
    /// Marketo cannot refresh early: in a token's last minute it hands out the
    /// same token with a small `expires_in`. Such a token is used and cached
    /// until [`TOKEN_GUARD_MS`] before its end; one with that little or nothing
    /// left (a 0-second token is expired) is waited out once, then replaced.
    async fn access_token(&self) -> Result<String, MarketoError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if self.clock.now_ms() < t.valid_until_ms {
                return Ok(t.token.clone());
            }
        }
        *cached = None;
        let margin = i64::try_from(self.cfg.token_margin.as_millis())
            .unwrap_or(60_000)
            .max(TOKEN_GUARD_MS);
        for waited in [false, true] {
            let reply = self.fetch_token().await?;
            let left_ms = reply.expires_in.clamp(0, MAX_TOKEN_SECS) * 1_000;
            let keep = if left_ms > margin { margin } else { TOKEN_GUARD_MS };
            if left_ms > keep {
                *cached = Some(CachedToken {
                    token: reply.access_token.clone(),
                    valid_until_ms: self.clock.now_ms().saturating_add(left_ms - keep),
                });
                return Ok(reply.access_token);
            }
            if waited {
                break;
            }
            // `expires_in` is whole seconds, rounded down: wait out the rest.
            let wait = u64::try_from(left_ms).unwrap_or(0) + 1_250;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        Err(MarketoError::Identity(Box::new(MarketoError::Decode(
            "the identity endpoint keeps handing out an expiring token".to_owned(),
        ))))
    }

    async fn fetch_token(&self) -> Result<TokenReply, MarketoError> {
        let url = format!(
            "{}/identity/oauth/token?grant_type=client_credentials&client_id={}&client_secret={}",
            self.cfg.base_url,
            utf8_percent_encode(&self.cfg.client_id, QUERY_VALUE),
            utf8_percent_encode(&self.cfg.client_secret, QUERY_VALUE),
        );
        let identity = |e: MarketoError| MarketoError::Identity(Box::new(e));
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.marketo_call("identity", "transport");
                return Err(identity(MarketoError::Transport(e.without_url().to_string())));
            }
        };
        let status = resp.status().as_u16();
        self.metrics.marketo_call("identity", &status_label(status));
        if status == 401 || status == 403 {
            return Err(MarketoError::Auth(status));
        }
        if status != 200 {
            return Err(identity(MarketoError::Http(status)));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| identity(MarketoError::Transport(e.without_url().to_string())))?;
        serde_json::from_slice::<TokenReply>(&body).map_err(|_| {
            identity(match parse_envelope(&body) {
                Err(e @ MarketoError::Api { .. }) => e,
                _ => MarketoError::Decode("identity reply without access_token".to_owned()),
            })
        })
    }

    async fn invalidate(&self, bad: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.token == bad) {
            *cached = None;
        }
    }

    /// One paced call with re-authentication and bounded retries.
    async fn call(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
        method: &Method,
    ) -> Result<Vec<Value>, MarketoError> {
        let mut failures = 0u32;
        let mut reauthed = false;
        loop {
            let token = self.access_token().await?;
            let result = {
                let _permit = self
                    .pacer
                    .acquire()
                    .await
                    .map_err(|Paused { until_ms }| MarketoError::Quota { until_ms })?;
                self.send_once(endpoint, path_and_query, method, &token)
                    .await
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let MarketoError::Api { code, .. } = &err {
                if !ErrorClass::code_counts_against_limits(code) {
                    self.pacer.refund();
                }
            }
            match err.class() {
                ErrorClass::Reauthenticate if !reauthed => {
                    reauthed = true;
                    self.invalidate(&token).await;
                    continue;
                }
                ErrorClass::Quota => {
                    let p = self.pacer.pause_for_day();
                    tracing::warn!(endpoint, until_ms = p.until_ms, "daily quota reached; pausing calls");
                    return Err(MarketoError::Quota { until_ms: p.until_ms });
                }
                class if class.is_retryable() => {
                    match class {
                        ErrorClass::RateLimited => self.pacer.slow_down(),
                        ErrorClass::ConcurrencyLimited => {
                            self.pacer.slow_down();
                            self.pacer.lower_concurrency();
                        }
                        _ => {}
                    }
                    failures += 1;
                    match self.cfg.backoff.decide(failures, rand::random::<f64>()) {
                        RetryDecision::RetryAfter(ms) => {
                            tracing::debug!(endpoint, reason = %err.reason(), ms, "retrying");
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        RetryDecision::GiveUp => return Err(err),
                    }
                }
                _ => return Err(err),
            }
        }
    }

    async fn send_once(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
        method: &Method,
        token: &str,
    ) -> Result<Vec<Value>, MarketoError> {
        let url = format!("{}{}", self.cfg.base_url, path_and_query);
        let req = match method {
            Method::Get => self.http.get(url),
            Method::PostForm(form) => self
                .http
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form.clone()),
            Method::PostJson(v) => self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .body(v.to_string()),
        };
        let resp = req
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.metrics.marketo_call(endpoint, "transport");
                return Err(MarketoError::Transport(e.without_url().to_string()));
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            self.metrics.marketo_call(endpoint, &status_label(status));
            return Err(MarketoError::Http(status));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| MarketoError::Transport(e.without_url().to_string()))?;
        let parsed = parse_envelope(&body);
        match &parsed {
            Ok(_) => self.metrics.marketo_call(endpoint, "ok"),
            Err(e) => self.metrics.marketo_call(endpoint, &e.reason()),
        }
        parsed
    }

    /// Looks leads up by email (≤ 300 per call; POST `_method=GET` when the URI
    /// would pass 8 KB). Returns the leads found; absent emails were not found.
    pub async fn lookup_by_email(&self, emails: &[String]) -> Result<Vec<FoundLead>, MarketoError> {
        let mut found = Vec::new();
        for chunk in emails.chunks(MAX_BATCH) {
            let values: Vec<String> = chunk
                .iter()
                .map(|e| utf8_percent_encode(e, QUERY_VALUE).to_string())
                .collect();
            let query = format!(
                "filterType=email&filterValues={}&fields=id,email",
                values.join(",")
            );
            let path = "/rest/v1/leads.json";
            let uri_len = self.cfg.base_url.len() + path.len() + 1 + query.len();
            let result = if uri_len > MAX_URI_BYTES {
                self.call(
                    "leads_lookup",
                    &format!("{path}?_method=GET"),
                    &Method::PostForm(query),
                )
                .await?
            } else {
                self.call("leads_lookup", &format!("{path}?{query}"), &Method::Get)
                    .await?
            };
            for r in result {
                if let (Some(id), Some(email)) = (
                    r.get("id").and_then(Value::as_i64),
                    r.get("email").and_then(Value::as_str),
                ) {
                    found.push(FoundLead {
                        id,
                        email: email.to_owned(),
                    });
                }
            }
        }
        Ok(found)
    }

    /// The ids of the leads a `_mkto_trk` value is associated with
    /// (`filterType=cookies`); used to check work interrupted by a crash.
    pub async fn leads_with_cookie(&self, cookie_value: &str) -> Result<Vec<i64>, MarketoError> {
        let path = format!(
            "/rest/v1/leads.json?filterType=cookies&filterValues={}&fields=id",
            utf8_percent_encode(cookie_value, QUERY_VALUE)
        );
        let result = self.call("leads_lookup", &path, &Method::Get).await?;
        Ok(result
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_i64))
            .collect())
    }

    /// createOrUpdate by email (≤ 300 per call); outcomes in input order. A
    /// reply with another number of results than records is a decode error.
    pub async fn sync_by_email(&self, emails: &[String]) -> Result<Vec<RecordOutcome>, MarketoError> {
        let mut out = Vec::with_capacity(emails.len());
        for chunk in emails.chunks(MAX_BATCH) {
            let input: Vec<Value> = chunk
                .iter()
                .map(|e| serde_json::json!({ "email": e }))
                .collect();
            let body = serde_json::json!({
                "action": "createOrUpdate",
                "lookupField": "email",
                "input": input,
            });
            let result = self
                .call("leads_sync", "/rest/v1/leads.json", &Method::PostJson(body))
                .await?;
            if result.len() != chunk.len() {
                return Err(MarketoError::Decode(format!(
                    "sync reply has {} results for {} records",
                    result.len(),
                    chunk.len()
                )));
            }
            out.extend(record_outcomes(&result));
        }
        Ok(out)
    }

    /// Associates the lead with a `_mkto_trk` value (sent percent-encoded once).
    /// A record skipped inside a `success:true` reply is that record's error
    /// (`1004`: the lead is gone, e.g. merged).
    pub async fn associate(&self, lead_id: i64, cookie_value: &str) -> Result<(), MarketoError> {
        let path = associate_path(lead_id, cookie_value);
        let result = self
            .call(
                "associate",
                &path,
                &Method::PostJson(Value::Object(Default::default())),
            )
            .await?;
        associate_outcome(&result)
    }
}

/// The path and query of an associate call, the cookie percent-encoded exactly once.
///
/// ```
/// let p = idtag::server::associate_path(1234, "id:123-ABC-456&token:_mch-example.com-1700000000000-12345");
/// assert_eq!(p, "/rest/v1/leads/1234/associate.json?cookie=id%3A123-ABC-456%26token%3A_mch-example.com-1700000000000-12345");
/// ```
pub fn associate_path(lead_id: i64, cookie_value: &str) -> String {
    format!(
        "/rest/v1/leads/{lead_id}/associate.json?cookie={}",
        utf8_percent_encode(cookie_value, QUERY_VALUE)
    )
}

fn status_label(status: u16) -> String {
    if status == 200 {
        "ok".to_owned()
    } else {
        format!("http_{status}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let c = MarketoConfig::new("https://x.example", "id", "s3cr3t-value");
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn skipped_inside_success_is_a_failure() {
        let body = br#"{"requestId":"1","success":true,"result":[{"status":"skipped","reasons":[{"code":"1004","message":"Lead not found"}]}]}"#;
        let r = parse_envelope(body).unwrap();
        assert_eq!(
            record_outcomes(&r),
            vec![RecordOutcome::Failed {
                code: "1004".into(),
                message: "Lead not found".into()
            }]
        );
    }

    #[test]
    fn a_skipped_associate_record_is_its_error() {
        let skipped = parse_envelope(br#"{"success":true,"result":[{"status":"skipped","reasons":[{"code":"1004","message":"Lead not found"}]}]}"#).unwrap();
        let e = associate_outcome(&skipped).unwrap_err();
        assert_eq!((e.reason(), e.class()), ("1004".to_owned(), ErrorClass::Permanent));
        let no_reason = parse_envelope(br#"{"success":true,"result":[{"status":"skipped"}]}"#).unwrap();
        assert_eq!(associate_outcome(&no_reason).unwrap_err().class(), ErrorClass::Transient);
        for ok in [&br#"{"success":true}"#[..], br#"{"success":true,"result":[{"id":5,"status":"updated"}]}"#] {
            assert_eq!(associate_outcome(&parse_envelope(ok).unwrap()), Ok(()));
        }
    }

    #[test]
    fn success_false_without_a_code_is_transient() {
        for body in [
            &br#"{"success":false,"errors":[]}"#[..],
            br#"{"success":false}"#,
            br#"{"success":false,"errors":[{"message":"?"}]}"#,
        ] {
            let e = parse_envelope(body).unwrap_err();
            assert!(matches!(e, MarketoError::Decode(_)), "{e:?}");
            assert_eq!(e.class(), ErrorClass::Transient);
        }
    }

    #[test]
    fn reasons_are_safe_metric_labels() {
        let api = |code: &str| MarketoError::Api { code: code.into(), message: String::new() };
        assert_eq!(api("1012").reason(), "1012");
        assert_eq!(api("a\"} evil{x=\"").reason(), "other");
        assert_eq!(api(&"9".repeat(33)).reason(), "other");
        let e = MarketoError::Identity(Box::new(MarketoError::Http(404)));
        assert_eq!((e.reason().as_str(), e.class()), ("identity_http_404", ErrorClass::Setup));
        assert!(e.is_retryable());
        assert_eq!(MarketoError::Auth(401).class(), ErrorClass::Setup);
        assert_eq!(MarketoError::Http(400).class(), ErrorClass::Setup);
    }

    #[test]
    fn errors_are_classified() {
        let e = parse_envelope(br#"{"success":false,"errors":[{"code":"607","message":"q"}]}"#)
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Quota);
        let e = parse_envelope(br#"{"success":false,"errors":[{"code":606,"message":"q"}]}"#)
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::RateLimited);
    }
}
