//! The HTTP endpoint: `POST /v1/tag`, `GET /healthz`, `GET /metrics`.

use super::{Idtag, IntakeError};
use crate::munchkin;
use crate::wire::{ErrorBody, TagReply, TagRequest, TagStatus, MAX_TAG_REQUEST_BYTES, TAG_REQUEST_VERSION};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub(crate) fn router(idtag: Idtag) -> Router {
    let origins: Vec<HeaderValue> = idtag
        .inner
        .config
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let tag = post(tag);
    let tag = if origins.is_empty() {
        tag
    } else {
        tag.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::POST])
                .allow_headers([header::CONTENT_TYPE]),
        )
    };
    Router::new()
        .route("/v1/tag", tag)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(idtag)
}

/// `ok` while the writer and the worker run and the store answers; else 503
/// with `{"status":"unhealthy","writer","worker","store"}` (`ok`, `stopped`, or
/// the store's error).
async fn healthz(State(idtag): State<Idtag>) -> Response {
    let h = idtag.health().await;
    if h.is_ok() {
        return "ok\n".into_response();
    }
    let running = |ok: bool| if ok { "ok" } else { "stopped" };
    let body = serde_json::json!({
        "status": "unhealthy",
        "writer": running(h.writer),
        "worker": running(h.worker),
        "store": h.store.err().unwrap_or_else(|| "ok".to_owned()),
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(idtag): State<Idtag>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        idtag.metrics_text().await,
    )
        .into_response()
}

fn error(idtag: &Idtag, status: StatusCode, code: &str, message: &str) -> Response {
    idtag.inner.metrics.request(code);
    (status, Json(ErrorBody::new(code, message))).into_response()
}

fn intake_error(e: &IntakeError) -> StatusCode {
    match e {
        IntakeError::Token(_) => StatusCode::UNAUTHORIZED,
        IntakeError::ConsentDenied | IntakeError::ConsentPending => StatusCode::FORBIDDEN,
        IntakeError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

async fn tag(State(idtag): State<Idtag>, headers: HeaderMap, body: Body) -> Response {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ctype != "application/json" && ctype != "text/plain" {
        return error(
            &idtag,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json or text/plain",
        );
    }
    let too_large = || {
        error(
            &idtag,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "tag request larger than 8 KB",
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_TAG_REQUEST_BYTES)
    {
        return too_large();
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_TAG_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let req: TagRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(_) => {
            return error(
                &idtag,
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "body is not a tag request",
            )
        }
    };
    if req.v != TAG_REQUEST_VERSION {
        return error(
            &idtag,
            StatusCode::BAD_REQUEST,
            "unsupported_version",
            "tag request version must be 1",
        );
    }
    let claims = match idtag.verify_token(&req.token) {
        Ok(c) => c,
        Err(e) => return error(&idtag, intake_error(&e), e.code(), &e.to_string()),
    };
    if req
        .cookies
        .get("mkto_opt_out")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        let e = IntakeError::ConsentDenied;
        return error(&idtag, intake_error(&e), e.code(), &e.to_string());
    }
    let cookie = match req.tracking_value() {
        None => {
            let e = IntakeError::NoCookie;
            return error(&idtag, intake_error(&e), e.code(), &e.to_string());
        }
        Some(v) => match munchkin::parse_value(v) {
            Ok(c) => c,
            Err(r) => {
                let e = IntakeError::Cookie(r);
                return error(&idtag, intake_error(&e), e.code(), &e.to_string());
            }
        },
    };
    // `enqueue_value` counts its own outcomes in the metrics.
    match idtag
        .enqueue_value(&claims.email, cookie, claims.evt, req.consent, req.ts)
        .await
    {
        Ok(status) => {
            let code = if status == TagStatus::Queued {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            (
                code,
                Json(TagReply {
                    v: TAG_REQUEST_VERSION,
                    status,
                }),
            )
                .into_response()
        }
        Err(e) => (intake_error(&e), Json(ErrorBody::new(e.code(), e.to_string()))).into_response(),
    }
}
