//! Local Marketo-compatible REST server (native, feature `emulator`): the
//! stand-in for a Marketo instance that QA, the tests, the demo and the
//! benchmarks run against. Written from `MARKETO.md`, independently of idtag's
//! Marketo client (no code shared with `crate::server` or `crate::munchkin`),
//! so that a misreading in one is caught by the other.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use idtag::emulator::{Emulator, EmulatorConfig};
//! let emu = Emulator::start(EmulatorConfig::default()).await?;
//! println!("{} {} {}", emu.base_url(), emu.client_id(), emu.client_secret());
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Marketo surface
//! - `GET|POST /identity/oauth/token?grant_type=client_credentials&client_id=…&client_secret=…`
//!   (parameters in the query or, for POST, a form body): `{"access_token":"<uuid>:ab",
//!   "token_type":"bearer","expires_in":N,"scope":"…"}`; HTTP 401 on bad credentials,
//!   400 on a missing/unsupported `grant_type`. The same token comes back with a
//!   shrinking `expires_in` (it reaches 0 during its last second), a new one after.
//! - REST calls need `Authorization: Bearer <token>` (the `access_token` query
//!   parameter is not accepted): 601 unknown/revoked/missing token, 602 expired.
//!   Envelope: HTTP 200, `{"requestId":"…","success":true,"result":[…]}` or
//!   `{"requestId":"…","success":false,"errors":[{"code":"606","message":"…"}]}`.
//! - `GET /rest/v1/leads.json?filterType=email|id|cookies&filterValues=a,b[&fields=…]`
//!   (≤ 300 values, else 1003; unknown field 1006), also as
//!   `POST /rest/v1/leads.json?_method=GET` with the parameters as a form body.
//! - `POST /rest/v1/leads.json` `{"action":"createOrUpdate|createOnly|updateOnly",
//!   "lookupField":"email|id","input":[…]}` (≤ 300 records, else 1003; record-level
//!   `skipped` with 1003/1001/1004/1005/1007/1012 in input order).
//! - `POST /rest/v1/leads/{id}/associate.json?cookie=<_mkto_trk value, encoded once>`
//!   with `Content-Type: application/json` (else 612): 1012 invalid cookie, 1004 unknown lead.
//! - Limits: rolling window (606), concurrency (615), daily quota until 00:00
//!   America/Chicago (607); URI over 8 KB → HTTP 414; body over 1 MB → HTTP 413;
//!   wrong method → 605; unknown `/rest/` path → 610 (after auth and limits). 601/602/604/605/608/611
//!   and identity calls do not count against the window or quota; neither do
//!   calls refused with 606/607/615 (unconfirmed; the emulator's choice).
//! - `GET /munchkin.js`: a Munchkin-like script that sets `_mkto_trk` in the genuine format
//!   on the page's registrable domain (host-only on `localhost`/IP hosts) and reports page views to `GET /webevents/visitWebPage?_mchId=…&_mchTk=…&_mchRu=<url>&_mchRe=<referrer>`.
//!
//! # Admin and inspection API (`/__emulator/`, not counted, no auth)
//! - `GET /__emulator/` → `{"base_url","munchkin_id","client_id","rate_limit","rate_window_ms",
//!   "concurrency","daily_quota","token_ttl_s","time_scale"}`.
//! - `GET /__emulator/leads` →
//!   `{"leads":[{"id":1001,"email":"a@x.com","fields":{"email":"a@x.com",…},"created_at_ms":N,
//!   "updated_at_ms":N,"cookies":["_mch-…"],"activity":[A,…]}],"anonymous":[{"token":"_mch-…",
//!   "munchkin_id":"123-ABC-456","activity":[A,…]}]}` where an activity `A` is
//!   `{"type":"visitWebPage","at_ms":N,"at":"2026-…Z","url":"/pricing","referrer":"","token":"_mch-…","anonymous":bool}`
//!   (`anonymous`: the view was made before the token was associated).
//! - `GET /__emulator/calls` → `{"total":N,"ok":N,"in_flight":N,"quota_used":N,
//!   "by_endpoint":{"identity":N,"get_leads":N,"sync_leads":N,"associate":N,"unknown":N},
//!   "by_code":{"606":N,"401":N,"413":N,…},"by_record_code":{"1004":N,…}}`.
//!   `total` counts every API call (identity included, admin and web events
//!   excluded); `ok` those answered without an error; `by_code` the request-level
//!   Marketo code or, for non-200 answers, the HTTP status; `by_record_code` the
//!   record-level reasons inside successful answers; `quota_used` the calls counted
//!   against today's quota. Endpoints appear once called.
//! - `GET /__emulator/log?limit=N` → `{"calls":[{"seq","at_ms","request_id","method","endpoint",
//!   "path","http_status","code","record_codes","counted"}]}` (last N, default 100, at most 2000 kept).
//! - `GET /__emulator/faults` and `POST|PUT /__emulator/faults` with any subset of
//!   `{"share_502":0.1,"share_604":0,"share_608":0,"share_611":0,"latency_ms":0,"quota_exhausted":false,
//!   "share_1012":0,"associate_record_level":false}`
//!   → the full current fault set in that shape. Shares are fractions of REST
//!   calls (sum ≤ 1); `latency_ms` is real time added to every REST call while it
//!   holds a concurrency slot; `quota_exhausted:true` forces 607 until set false,
//!   a reset, or the next 00:00 US Central; `share_1012` is the fraction of
//!   admitted associate calls refused with 1012; `associate_record_level:true`
//!   answers associate refusals (1012, 1004) as `{"success":true,"result":[{"status":"skipped",
//!   "reasons":[{"code","message"}]}]}` instead of at the envelope level.
//! - `POST /__emulator/revoke-token` → `{"revoked":"<token>"|null}`: the current
//!   access token answers 601 from then on; the next identity call issues a new one.
//! - `POST /__emulator/reset` → `{"reset":true}`: clears leads, visitor tokens,
//!   activity, the call log and counters, the rate window, quota usage and faults
//!   (back to the configured ones). Access tokens stay valid.
//!
//! # Time
//! All windows and lifetimes run on the injected [`Clock`]. `time_scale` F makes
//! emulated time run F times faster than the clock: the rate window, the token
//! lifetime and the quota day all shrink by F, and `expires_in` is reported in
//! clock (real) seconds. Added latency is not scaled.

pub mod tracking_cookie;

mod admin;
mod munchkin_js;
mod api;
mod query;
mod store;

use crate::clock::{Clock, SystemClock};
use chrono::NaiveDate;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest latency that can be added to calls.
pub const MAX_LATENCY: Duration = Duration::from_secs(600);

/// Faults the emulator injects into REST calls (identity calls are never faulted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Share of REST calls answered HTTP 502 (0.0–1.0).
    pub share_502: f64,
    /// Share of REST calls answered `604` (request timed out).
    pub share_604: f64,
    /// Share of REST calls answered `608` (API temporarily unavailable).
    pub share_608: f64,
    /// Share of REST calls answered `611` (system error).
    pub share_611: f64,
    /// Real time added to every admitted REST call (holds its concurrency slot).
    pub latency: Duration,
    /// Start with a forced quota day: 607 until cleared, reset or the next 00:00 US Central.
    pub quota_exhausted: bool,
    /// Share of admitted associate calls refused as an invalid cookie value
    /// (`1012`), as Marketo does for values it does not take (0.0–1.0).
    pub share_1012: f64,
    /// Associate refusals (`1012`, `1004` unknown lead) come back as a skipped
    /// record inside a `success:true` reply instead of at the envelope level
    /// (MARKETO.md: how record-level problems come back; which form associate
    /// uses is unconfirmed).
    pub associate_record_level: bool,
}

impl FaultConfig {
    /// Checks that every share is within 0..=1 and that they sum to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let shares = [self.share_502, self.share_604, self.share_608, self.share_611];
        if shares.iter().any(|s| !s.is_finite() || *s < 0.0 || *s > 1.0) {
            return Err("fault shares must be between 0 and 1".into());
        }
        if shares.iter().sum::<f64>() > 1.0 + 1e-9 {
            return Err("fault shares must sum to at most 1".into());
        }
        if !self.share_1012.is_finite() || !(0.0..=1.0).contains(&self.share_1012) {
            return Err("share_1012 must be between 0 and 1".into());
        }
        if self.latency > MAX_LATENCY {
            return Err("added latency must be at most 600 s".into());
        }
        Ok(())
    }
}

/// How the emulated Marketo instance is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// OAuth client id the identity endpoint accepts.
    pub client_id: String,
    /// OAuth client secret the identity endpoint accepts.
    pub client_secret: String,
    /// The instance's Munchkin id (`123-ABC-456`), used by the served script.
    pub munchkin_id: String,
    /// Calls allowed per rolling window (Marketo: 100).
    pub rate_limit: u32,
    /// Length of the rolling window (Marketo: 20 s).
    pub rate_window: Duration,
    /// Concurrent REST calls allowed (Marketo: 10).
    pub concurrency: u32,
    /// Calls allowed per US Central day (commonly 50,000).
    pub daily_quota: u64,
    /// Lifetime of an access token (Marketo: 3600 s).
    pub token_ttl: Duration,
    /// Emulated time runs this many times faster than the clock (> 0).
    pub time_scale: f64,
    /// Injected faults at start (changeable through `/__emulator/faults`).
    pub faults: FaultConfig,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            client_id: "idtag-emulator".into(),
            client_secret: "emulator-secret".into(),
            munchkin_id: "123-ABC-456".into(),
            rate_limit: 100,
            rate_window: Duration::from_secs(20),
            concurrency: 10,
            daily_quota: 50_000,
            token_ttl: Duration::from_secs(3600),
            time_scale: 1.0,
            faults: FaultConfig::default(),
        }
    }
}

impl EmulatorConfig {
    /// Checks the settings a server cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if !tracking_cookie::is_munchkin_id(&self.munchkin_id) {
            return Err(format!(
                "munchkin id {:?} is not like 123-ABC-456",
                self.munchkin_id
            ));
        }
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err("client id and secret must not be empty".into());
        }
        if !self.time_scale.is_finite() || self.time_scale <= 0.0 {
            return Err("time scale must be a positive number".into());
        }
        if self.rate_limit == 0 || self.concurrency == 0 {
            return Err("rate limit and concurrency must be at least 1".into());
        }
        if self.rate_window.is_zero() || self.token_ttl.is_zero() {
            return Err("rate window and token lifetime must be positive".into());
        }
        self.faults.validate()
    }
}

/// State shared by every request handler.
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    pub(crate) base_url: String,
    clock: Arc<dyn Clock>,
    origin_ms: i64,
    store: Mutex<Store>,
}

impl Shared {
    /// Emulated now (ms): the clock, sped up by `time_scale` from the start.
    pub(crate) fn now(&self) -> i64 {
        let real = self.clock.now_ms();
        if self.config.time_scale == 1.0 {
            return real;
        }
        let elapsed = (real - self.origin_ms) as f64 * self.config.time_scale;
        self.origin_ms.saturating_add(elapsed as i64)
    }

    /// Converts an emulated span (ms) into real ms.
    pub(crate) fn to_real_ms(&self, emulated_ms: i64) -> f64 {
        emulated_ms as f64 / self.config.time_scale
    }

    /// The US Central calendar day at emulated time `now_ms`.
    pub(crate) fn day(&self, now_ms: i64) -> NaiveDate {
        chrono::DateTime::from_timestamp_millis(now_ms)
            .map(|d| d.with_timezone(&chrono_tz::America::Chicago).date_naive())
            .unwrap_or_default()
    }

    /// Locks the store; a poisoned lock (a panic elsewhere) is recovered, not propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh store for a start or a reset, with the configured faults applied.
    pub(crate) fn reset_store(&self, store: &mut Store) {
        store.reset(self.config.faults.clone());
        if self.config.faults.quota_exhausted {
            store.forced_quota_day = Some(self.day(self.now()));
        }
    }
}

/// A running emulator. Dropping it stops the server too.
pub struct Emulator {
    base_url: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Starts on an ephemeral port of 127.0.0.1 with the system clock.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Emulator::start_with(config, listen, Arc::new(SystemClock)).await
    }

    /// Starts on `listen` (port 0: ephemeral) with the given clock, e.g. a
    /// [`crate::clock::ManualClock`] in tests. Fails on an invalid config
    /// (`InvalidInput`) or when the address cannot be bound.
    pub async fn start_with(
        config: EmulatorConfig,
        listen: SocketAddr,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Emulator> {
        config
            .validate()
            .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidInput, m))?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let origin_ms = clock.now_ms();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(config.faults.clone())),
            config,
            base_url: base_url.clone(),
            clock,
            origin_ms,
        });
        {
            let mut store = shared.lock();
            shared.reset_store(&mut store);
        }
        let app = axum::Router::new()
            .fallback(api::handle)
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!("emulator server stopped: {e}");
            }
        });
        Ok(Emulator {
            base_url,
            addr,
            shared,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OAuth client id the identity endpoint accepts.
    pub fn client_id(&self) -> &str {
        &self.shared.config.client_id
    }

    /// The OAuth client secret the identity endpoint accepts.
    pub fn client_secret(&self) -> &str {
        &self.shared.config.client_secret
    }

    /// The emulated instance's Munchkin id.
    pub fn munchkin_id(&self) -> &str {
        &self.shared.config.munchkin_id
    }

    /// Stops accepting connections, lets calls in flight finish (up to 2 s), then stops.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}
