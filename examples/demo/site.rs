//! The demo product's routes: marketing pages, signup (form hook), login (SPA
//! header), SSO landing (tag token), app, logout, and idtag's coverage page.

use crate::pages::{self, PageEnv};
use crate::users::{Seen, UserError, Users};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idtag::clock::{Clock, SystemClock};
use idtag::identity::normalize_email;
use idtag::server::Idtag;
use idtag::tag_token::Event;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The header idtag's `headers()` puts on SPA login calls.
pub const TAG_HEADER: &str = "x-idtag-mkto-trk";

/// Shared by every handler.
pub struct AppState {
    pub idtag: Idtag,
    pub users: Users,
    pub munchkin_script: String,
    pub munchkin_id: String,
    /// The emulator's base URL when the demo runs on it.
    pub emulator: Option<String>,
}

type St = State<Arc<AppState>>;

impl AppState {
    fn env(&self) -> PageEnv<'_> {
        PageEnv {
            munchkin_script: &self.munchkin_script,
            munchkin_id: &self.munchkin_id,
        }
    }
}

/// The product's router, with idtag's endpoint (`/v1/tag`, `/healthz`, `/metrics`) mounted.
pub fn router(state: Arc<AppState>, pkg_dir: &std::path::Path) -> Router {
    Router::new()
        .route("/", get(marketing))
        .route("/pricing", get(marketing))
        .route("/features", get(marketing))
        .route("/signup", get(signup_page).post(signup))
        .route("/login", get(login_page))
        .route("/api/login", post(api_login))
        .route("/sso", get(sso_page))
        .route("/idp/authorize", get(idp_page).post(idp_authorize))
        .route("/sso/callback", get(sso_callback))
        .route("/app", get(app_page))
        .route("/logout", get(logout))
        .route("/coverage", get(coverage_page))
        .route("/api/coverage", get(coverage_json))
        .nest_service(
            "/static/idtag",
            tower_http::services::ServeDir::new(pkg_dir),
        )
        .with_state(state.clone())
        .merge(state.idtag.router())
}

/// True for a path on this site (`/x`), never another origin (`//evil`, `https://…`):
/// redirect targets taken from query strings must stay local.
fn is_local_path(t: &str) -> bool {
    t.starts_with('/') && !t.starts_with("//") && !t.starts_with("/\\")
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::COOKIE)?.to_str().ok()?;
    idtag::cookie::values_named(h, "demo_sid")
        .next()
        .map(str::to_owned)
}

fn cookie_header(headers: &HeaderMap) -> String {
    headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn set_session(sid: &str) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("demo_sid={sid}; Path=/; HttpOnly; SameSite=Lax"),
    )
}

fn current_user(
    st: &AppState,
    headers: &HeaderMap,
) -> Option<(crate::users::User, Option<String>)> {
    st.users.session(&session_id(headers)?).ok().flatten()
}

async fn marketing(State(st): St, uri: axum::http::Uri, headers: HeaderMap) -> Html<String> {
    let user = current_user(&st, &headers);
    Html(pages::marketing(
        &st.env(),
        uri.path(),
        user.as_ref().map(|(u, _)| u.name.as_str()),
    ))
}

async fn signup_page(State(st): St) -> Html<String> {
    Html(pages::signup(&st.env(), None))
}

/// Associates `email` with the `_mkto_trk` value the SDK handed over (form field or
/// header), falling back to the request's own Cookie header (same-site cookies
/// ride along). The Munchkin opt-out cookie is honoured either way.
async fn associate(
    st: &AppState,
    email: &str,
    handed: Option<&str>,
    headers: &HeaderMap,
    event: Event,
    mode: &'static str,
) -> String {
    let raw = cookie_header(headers);
    let header = match handed.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => {
            let opt_out = idtag::cookie::values_named(&raw, "mkto_opt_out").any(|v| v == "true");
            format!(
                "_mkto_trk={v}{}",
                if opt_out { "; mkto_opt_out=true" } else { "" }
            )
        }
        None => raw,
    };
    let had_cookie = idtag::cookie::values_named(&header, "_mkto_trk")
        .next()
        .is_some();
    let outcome = match st.idtag.associate(email, &header, event).await {
        Ok(status) => serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        Err(e) => e.code().to_owned(),
    };
    let kind = if event == Event::Signup {
        "signup"
    } else {
        "login"
    };
    let _ = st.users.record(
        &Seen {
            kind,
            mode,
            had_cookie,
            outcome: outcome.clone(),
        },
        now_ms(),
    );
    outcome
}

#[derive(Deserialize)]
struct SignupForm {
    name: String,
    email: String,
    password: String,
    #[serde(rename = "_mkt_trk")]
    mkt_trk: Option<String>,
}

async fn signup(State(st): St, headers: HeaderMap, Form(f): Form<SignupForm>) -> Response {
    let email = match normalize_email(&f.email) {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::signup(&st.env(), Some(&e.to_string()))),
            )
                .into_response()
        }
    };
    let users_st = st.clone();
    let (name, password, em) = (
        f.name.trim().to_owned(),
        f.password,
        email.as_str().to_owned(),
    );
    let created =
        tokio::task::spawn_blocking(move || users_st.users.create(&em, &name, &password, now_ms()))
            .await;
    let user = match created {
        Ok(Ok(u)) => u,
        Ok(Err(e @ (UserError::Exists | UserError::Invalid(_)))) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Html(pages::signup(&st.env(), Some(&e.to_string()))),
            )
                .into_response()
        }
        _ => return (StatusCode::INTERNAL_SERVER_ERROR, "signup failed").into_response(),
    };
    associate(
        &st,
        &user.email,
        f.mkt_trk.as_deref(),
        &headers,
        Event::Signup,
        "form",
    )
    .await;
    match st.users.start_session(user.id, None, now_ms()) {
        Ok(sid) => ([set_session(&sid)], Redirect::to("/app")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "session failed").into_response(),
    }
}

async fn login_page(State(st): St) -> Html<String> {
    Html(pages::login(&st.env()))
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn check_password(
    st: &Arc<AppState>,
    email: &str,
    password: String,
) -> Result<crate::users::User, Response> {
    let email = normalize_email(email)
        .map_err(|e| json_error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), &e.to_string()))?;
    let users_st = st.clone();
    let em = email.as_str().to_owned();
    match tokio::task::spawn_blocking(move || users_st.users.login(&em, &password)).await {
        Ok(Ok(u)) => Ok(u),
        Ok(Err(UserError::BadCredentials)) => Err(json_error(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "email or password is wrong",
        )),
        _ => Err(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "login failed",
        )),
    }
}

async fn api_login(State(st): St, headers: HeaderMap, Json(b): Json<LoginBody>) -> Response {
    let user = match check_password(&st, &b.email, b.password).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let handed = headers.get(TAG_HEADER).and_then(|v| v.to_str().ok());
    let outcome = associate(&st, &user.email, handed, &headers, Event::Login, "spa").await;
    match st.users.start_session(user.id, None, now_ms()) {
        Ok(sid) => (
            [set_session(&sid)],
            Json(json!({"ok": true, "idtag": outcome})),
        )
            .into_response(),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "session failed",
        ),
    }
}

async fn sso_page(State(st): St) -> Html<String> {
    Html(pages::sso_start(&st.env()))
}

async fn idp_page(Query(q): Query<HashMap<String, String>>) -> Html<String> {
    Html(pages::idp_login(
        q.get("return")
            .map(String::as_str)
            .unwrap_or("/sso/callback"),
        None,
    ))
}

#[derive(Deserialize)]
struct IdpForm {
    email: String,
    password: String,
    #[serde(rename = "return")]
    ret: String,
}

/// The simulated identity provider: checks the password and sends the browser
/// back to the product with a one-time code.
async fn idp_authorize(State(st): St, Form(f): Form<IdpForm>) -> Response {
    let ret = if f.ret.starts_with("/sso/callback") {
        f.ret.clone()
    } else {
        "/sso/callback".to_owned()
    };
    let user = match check_password(&st, &f.email, f.password).await {
        Ok(u) => u,
        Err(_) => {
            return (
                StatusCode::UNAUTHORIZED,
                Html(pages::idp_login(&ret, Some("email or password is wrong"))),
            )
                .into_response()
        }
    };
    match st.users.sso_code(user.id, now_ms()) {
        Ok(code) => {
            let sep = if ret.contains('?') { '&' } else { '?' };
            Redirect::to(&format!("{ret}{sep}code={code}")).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "idp failed").into_response(),
    }
}

async fn sso_callback(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(code) = q.get("code") else {
        return (StatusCode::BAD_REQUEST, "missing code").into_response();
    };
    let Ok(Some(uid)) = st.users.redeem_sso_code(code, now_ms()) else {
        return (StatusCode::UNAUTHORIZED, "invalid or used code").into_response();
    };
    let had_cookie = idtag::cookie::values_named(&cookie_header(&headers), "_mkto_trk")
        .next()
        .is_some();
    let _ = st.users.record(
        &Seen {
            kind: "login",
            mode: "sso",
            had_cookie,
            outcome: "tag_token".into(),
        },
        now_ms(),
    );
    let then = q.get("then").filter(|t| is_local_path(t));
    match st.users.start_session(uid, Some("login"), now_ms()) {
        Ok(sid) => {
            let to = match then {
                Some(t) => format!(
                    "/app?then={}",
                    percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC)
                ),
                None => "/app".to_owned(),
            };
            ([set_session(&sid)], Redirect::to(&to)).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "session failed").into_response(),
    }
}

async fn app_page(
    State(st): St,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((user, pending)) = current_user(&st, &headers) else {
        return Redirect::to("/login").into_response();
    };
    // A landing after SSO: hand the browser a short-lived tag token for `tag()`.
    let token = pending.and_then(|evt| {
        let evt = if evt == "signup" {
            Event::Signup
        } else {
            Event::Login
        };
        st.idtag
            .issue_token(&user.id.to_string(), &user.email, evt)
            .ok()
            .map(|t| (t, evt))
    });
    let then = q
        .get("then")
        .filter(|t| is_local_path(t))
        .map(String::as_str);
    let tag = token.as_ref().map(|(t, e)| (t.as_str(), e.as_str()));
    Html(pages::app(&st.env(), &user.name, tag, then)).into_response()
}

async fn logout(State(st): St, headers: HeaderMap) -> Response {
    if let Some(sid) = session_id(&headers) {
        let _ = st.users.end_session(&sid);
    }
    (
        [(
            header::SET_COOKIE,
            "demo_sid=; Path=/; Max-Age=0".to_owned(),
        )],
        Html(pages::logged_out(&st.env())),
    )
        .into_response()
}

/// Sums every sample of a Prometheus metric family.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

async fn coverage(st: &AppState) -> serde_json::Value {
    let (total, buckets) = st.users.coverage().unwrap_or_default();
    let status = st.idtag.status().await.ok();
    let metrics = st.idtag.metrics_text().await;
    let counts = status
        .as_ref()
        .map(|s| s.counts.clone())
        .unwrap_or_default();
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    let seen = total.logins + total.signups;
    let pairs: u64 = counts.values().sum();
    let share = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            (a as f64 * 1000.0 / b as f64).round() / 10.0
        }
    };
    json!({
        "seen": {"logins": total.logins, "signups": total.signups, "total": seen},
        "carried_cookie": {"count": total.with_cookie, "share_pct": share(total.with_cookie, seen)},
        "pairs": {"total": pairs, "associated": n("done"), "pending": n("pending"), "conflicts": n("conflict"), "dead": n("dead"),
                  "share_associated_pct": share(n("done"), pairs)},
        "dead_by_reason": status.as_ref().map(|s| s.dead_reasons.clone()).unwrap_or_default(),
        "oldest_pending_ms": status.as_ref().and_then(|s| s.oldest_pending_ms),
        "marketo": {
            "calls": st.idtag.metrics().marketo_calls(None, None),
            "budget_left": metric_sum(&metrics, "idtag_budget_left"),
        },
        "over_time": buckets,
        "emulator": st.emulator,
    })
}

async fn coverage_json(State(st): St) -> Json<serde_json::Value> {
    Json(coverage(&st).await)
}

async fn coverage_page(State(st): St) -> Html<String> {
    let c = coverage(&st).await;
    let rows: String = c["over_time"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        pages::esc(b["minute"].as_str().unwrap_or("")),
                        b["logins"],
                        b["signups"],
                        b["with_cookie"],
                        b["queued"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let dead: String = c["dead_by_reason"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("<li>{}: {v}</li>", pages::esc(k)))
                .collect()
        })
        .unwrap_or_default();
    let body = format!(
        r#"<h1>idtag coverage</h1>
<table id="coverage"><tr><th>Logins seen</th><td>{logins}</td></tr><tr><th>Signups seen</th><td>{signups}</td></tr>
<tr><th>Carried a Munchkin cookie</th><td>{cc} ({ccp} %)</td></tr>
<tr><th>(cookie, person) pairs</th><td>{pairs}</td></tr>
<tr><th class="ok">Associated</th><td>{assoc} ({ap} %)</td></tr>
<tr><th class="warn">Pending</th><td>{pending}</td></tr>
<tr><th class="warn">Conflicts (shared browser)</th><td>{conf}</td></tr>
<tr><th class="bad">Dead letters</th><td>{dead_n}</td></tr>
<tr><th>Marketo calls spent</th><td>{calls}</td></tr><tr><th>Daily budget left</th><td>{budget}</td></tr></table>
<h2>Dead letters by reason</h2><ul>{dead}</ul>
<h2>Over time</h2><table><tr><th>Minute (UTC)</th><th>Logins</th><th>Signups</th><th>With cookie</th><th>Queued</th></tr>{rows}</table>
<p><a href="/metrics">Prometheus metrics</a></p>"#,
        logins = c["seen"]["logins"],
        signups = c["seen"]["signups"],
        cc = c["carried_cookie"]["count"],
        ccp = c["carried_cookie"]["share_pct"],
        pairs = c["pairs"]["total"],
        assoc = c["pairs"]["associated"],
        ap = c["pairs"]["share_associated_pct"],
        pending = c["pairs"]["pending"],
        conf = c["pairs"]["conflicts"],
        dead_n = c["pairs"]["dead"],
        calls = c["marketo"]["calls"],
        budget = c["marketo"]["budget_left"],
    );
    Html(pages::layout(&st.env(), "Coverage", None, &body, ""))
}
