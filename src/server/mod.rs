//! Marketo client, association pipeline, stores and HTTP endpoint (native).
//!
//! ```no_run
//! # async fn demo() -> Result<(), idtag::server::ServerError> {
//! use idtag::server::{Config, Idtag};
//! use idtag::tag_token::Event;
//! let idtag = Idtag::builder(Config::from_env()?).build().await?;
//! let status = idtag
//!     .associate("jane@example.com", "_mkto_trk=id:123-ABC-456&token:_mch-example.com-1700000000000-12345", Event::Login)
//!     .await;
//! let app: axum::Router = idtag.router(); // mount POST /v1/tag, /healthz, /metrics
//! # let _ = (status, app);
//! idtag.shutdown().await;
//! # Ok(()) }
//! ```

mod client;
mod http;
mod metrics;
mod pacer;
mod pipeline;
mod store;

pub use client::{
    associate_path, parse_envelope, record_outcomes, FoundLead, MarketoClient, MarketoConfig, MarketoError,
    RecordOutcome, MAX_BATCH, MAX_URI_BYTES,
};
pub use metrics::{Gauges, Metrics};
pub use pacer::{next_central_midnight_ms, Pacer, PacingConfig, Paused};
pub use pipeline::{ConflictPolicy, WorkerConfig};
pub use store::{
    is_revivable, reason_matches, Enqueued, ItemState, MemoryStore, NewAssociation, OutboxItem,
    Outcome, Requeued, SqliteStore, StatusReport, Store, StoreError, StoreLock, instance_id,
};

use crate::clock::{Clock, SystemClock};
use crate::identity::normalize_email;
use crate::munchkin::{self, Preferences, RejectReason};
use crate::tag_token::{Event, Keyring, TokenError, VerifyOptions, DEFAULT_TTL_SECS};
use crate::wire::{Consent, TagStatus};
use pipeline::{IntakeRequest, Worker};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Why the server layer could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is missing or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Marketo client could not be built.
    #[error(transparent)]
    Marketo(#[from] MarketoError),
    /// No signing keys are configured (`IDTAG_TOKEN_KEYS`).
    #[error("no tag-token keys configured (IDTAG_TOKEN_KEYS)")]
    NoKeys,
    /// The token could not be issued.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Listening or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServerError::Store(e) => e.is_retryable(),
            ServerError::Marketo(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Why an association was not accepted. `code()` is stable and is what the
/// HTTP endpoint returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeError {
    /// No `_mkto_trk` cookie in the request.
    #[error("no _mkto_trk cookie")]
    NoCookie,
    /// The cookie was rejected.
    #[error("cookie rejected: {}", .0.message())]
    Cookie(RejectReason),
    /// The identity is not a usable email address.
    #[error("identity rejected: {0}")]
    Identity(&'static str),
    /// The visitor denied consent or opted out of tracking.
    #[error("consent denied")]
    ConsentDenied,
    /// Consent not decided yet: nothing is stored server-side.
    #[error("consent pending")]
    ConsentPending,
    /// The tag token was refused.
    #[error("tag token refused: {0}")]
    Token(TokenError),
    /// The outbox could not store the association (retry later).
    #[error("store unavailable: {0}")]
    Store(String),
}

impl IntakeError {
    /// The stable code (`no_cookie`, `placeholder`, `expired`, `consent_denied`, …).
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::NoCookie => "no_cookie",
            IntakeError::Cookie(r) => r.code(),
            IntakeError::Identity(_) => "invalid_identity",
            IntakeError::ConsentDenied => "consent_denied",
            IntakeError::ConsentPending => "consent_pending",
            IntakeError::Token(e) => e.code(),
            IntakeError::Store(_) => "store_unavailable",
        }
    }

    /// Whether the same request may succeed later (store trouble only).
    pub fn is_retryable(&self) -> bool {
        matches!(self, IntakeError::Store(_))
    }
}

/// Where the outbox lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite file (default `idtag-outbox.db`).
    Sqlite(PathBuf),
    /// In memory (tests; not durable).
    Memory,
}

/// Everything the server layer needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Marketo instance.
    pub marketo: MarketoConfig,
    /// Tag-token keys (`IDTAG_TOKEN_KEYS`); required for `/v1/tag` and `issue_token`.
    pub keys: Option<Keyring>,
    /// The outbox.
    pub store: StoreConfig,
    /// Listen address of `idtag serve`.
    pub listen: SocketAddr,
    /// Origins allowed to call `/v1/tag` from browsers (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Worker tuning and conflict policy.
    pub worker: WorkerConfig,
    /// Lifetime of issued tag tokens, seconds.
    pub token_ttl_secs: i64,
}

impl Config {
    /// A configuration for a Marketo instance with every other setting at its default.
    pub fn new(marketo: MarketoConfig) -> Self {
        Self {
            marketo,
            keys: None,
            store: StoreConfig::Sqlite(PathBuf::from("idtag-outbox.db")),
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            cors_origins: Vec::new(),
            worker: WorkerConfig::default(),
            token_ttl_secs: DEFAULT_TTL_SECS,
        }
    }

    /// Reads `MARKETO_BASE_URL`, `MARKETO_CLIENT_ID`, `MARKETO_CLIENT_SECRET`,
    /// `MARKETO_MUNCHKIN_ID`, `IDTAG_TOKEN_KEYS`, `IDTAG_STORE` (path or `memory`),
    /// `IDTAG_LISTEN`, `IDTAG_CORS_ORIGINS` (comma-separated) and
    /// `IDTAG_CONFLICT_POLICY` (`skip` | `reassociate`).
    pub fn from_env() -> Result<Self, ServerError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let need = |k: &str| var(k).ok_or_else(|| ServerError::Config(format!("{k} is not set")));
        let mut m = MarketoConfig::new(
            need("MARKETO_BASE_URL")?,
            need("MARKETO_CLIENT_ID")?,
            need("MARKETO_CLIENT_SECRET")?,
        );
        m.munchkin_id = var("MARKETO_MUNCHKIN_ID");
        let mut c = Config::new(m);
        c.apply_env()?;
        Ok(c)
    }

    /// Applies the non-Marketo environment settings to `self`.
    pub fn apply_env(&mut self) -> Result<(), ServerError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(k) = var("IDTAG_TOKEN_KEYS") {
            self.keys = Some(
                Keyring::parse(&k).map_err(|e| ServerError::Config(format!("IDTAG_TOKEN_KEYS: {e}")))?,
            );
        }
        if let Some(s) = var("IDTAG_STORE") {
            self.store = if s == "memory" {
                StoreConfig::Memory
            } else {
                StoreConfig::Sqlite(PathBuf::from(s))
            };
        }
        if let Some(l) = var("IDTAG_LISTEN") {
            self.listen = l
                .parse()
                .map_err(|_| ServerError::Config(format!("IDTAG_LISTEN: {l:?} is not host:port")))?;
        }
        if let Some(o) = var("IDTAG_CORS_ORIGINS") {
            self.cors_origins = o.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(p) = var("IDTAG_CONFLICT_POLICY") {
            self.worker.conflict_policy = p.parse().map_err(ServerError::Config)?;
        }
        Ok(())
    }
}

/// Builds an [`Idtag`].
pub struct Builder {
    config: Config,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
}

impl Builder {
    /// Uses `clock` for wall time (tests pass a manual clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses this store instead of the configured one.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens the store, builds the client and starts the intake writer and the
    /// worker. Must run inside a tokio runtime.
    pub async fn build(self) -> Result<Idtag, ServerError> {
        let store: Arc<dyn Store> = match self.store {
            Some(s) => s,
            None => match &self.config.store {
                StoreConfig::Memory => Arc::new(MemoryStore::new()),
                StoreConfig::Sqlite(p) => {
                    let p = p.clone();
                    Arc::new(
                        tokio::task::spawn_blocking(move || SqliteStore::open(p))
                            .await
                            .map_err(|e| ServerError::Config(e.to_string()))??,
                    )
                }
            },
        };
        // Done pairs and lead ids are facts about one instance: an outbox used
        // with another (the embedded emulator, say) is refused.
        let instance = instance_id(&self.config.marketo.base_url);
        pipeline::blocking(&store, move |s| s.bind_instance(&instance)).await?;
        let metrics = Arc::new(Metrics::default());
        // Conflicts are recorded in the outbox: the counter goes on from there.
        let recorded = pipeline::blocking(&store, |s| s.status()).await?;
        for (policy, n) in &recorded.conflicts {
            metrics.conflicts(policy, *n);
        }
        let client = Arc::new(MarketoClient::new(
            self.config.marketo.clone(),
            self.clock.clone(),
            metrics.clone(),
        )?);
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel::<IntakeRequest>(16_384);
        let writer = {
            let (store, wake, metrics) = (store.clone(), wake.clone(), metrics.clone());
            std::thread::Builder::new()
                .name("idtag-outbox-writer".into())
                .spawn(move || pipeline::writer_loop(store, rx, wake, metrics))?
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = Worker {
            store: store.clone(),
            client: client.clone(),
            clock: self.clock.clone(),
            metrics: metrics.clone(),
            cfg: self.config.worker.clone(),
            wake: wake.clone(),
            stop: stop_rx,
        };
        let worker = tokio::spawn(worker.run());
        wake.notify_one();
        let prefs = Preferences {
            munchkin_id: self.config.marketo.munchkin_id.clone(),
            cookie_domain: None,
        };
        Ok(Idtag {
            inner: Arc::new(Inner {
                config: self.config,
                prefs,
                clock: self.clock,
                store,
                client,
                metrics,
                intake: Mutex::new(Some(tx)),
                stop: stop_tx,
                tasks: Mutex::new(Some((worker, writer))),
            }),
        })
    }
}

type Tasks = (tokio::task::JoinHandle<()>, std::thread::JoinHandle<()>);

pub(crate) struct Inner {
    pub config: Config,
    pub prefs: Preferences,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub client: Arc<MarketoClient>,
    pub metrics: Arc<Metrics>,
    intake: Mutex<Option<mpsc::Sender<IntakeRequest>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Option<Tasks>>,
}

/// The server-side SDK handle: intake, worker, HTTP router. Cheap to clone.
#[derive(Clone)]
pub struct Idtag {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Idtag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idtag").finish_non_exhaustive()
    }
}

/// What `GET /healthz` checks: the intake writer and the worker still run, and
/// the store answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The intake writer (group commits) is running.
    pub writer: bool,
    /// The association worker is running.
    pub worker: bool,
    /// The store answered a query (`Err`: why not).
    pub store: Result<(), String>,
}

impl Health {
    /// Everything is running and the store answers.
    pub fn is_ok(&self) -> bool {
        self.writer && self.worker && self.store.is_ok()
    }
}

/// An association to enqueue, already validated.
struct Validated {
    assoc: NewAssociation,
}

impl Idtag {
    /// Starts building from `config` (system clock, configured store).
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            clock: Arc::new(SystemClock),
            store: None,
        }
    }

    /// Enqueues the association of `email`'s lead with the `_mkto_trk` cookie in
    /// `cookie_header` (a `Cookie` header). Returns once the item is durable;
    /// Marketo is called later by the worker. Opted-out browsers
    /// (`mkto_opt_out=true`) are refused with `consent_denied`.
    pub async fn associate(
        &self,
        email: &str,
        cookie_header: &str,
        event: Event,
    ) -> Result<TagStatus, IntakeError> {
        if crate::cookie::values_named(cookie_header, "mkto_opt_out")
            .any(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return self.rejected(IntakeError::ConsentDenied);
        }
        let sel = munchkin::select(cookie_header, &self.inner.prefs);
        let cookie = match sel.selected {
            Some(c) => c,
            None => {
                let err = match sel.rejected.first() {
                    Some(r) => IntakeError::Cookie(r.reason),
                    None if !sel.candidates.is_empty() => IntakeError::Cookie(RejectReason::OtherInstance),
                    None => IntakeError::NoCookie,
                };
                return self.rejected(err);
            }
        };
        self.enqueue_value(email, cookie, event, Consent::Granted, None).await
    }

    /// Like [`associate`](Self::associate), for a bare `_mkto_trk` value, e.g. the
    /// `_mkt_trk` hidden field the form hook adds (percent-encoded or raw).
    pub async fn associate_value(
        &self,
        email: &str,
        value: &str,
        event: Event,
    ) -> Result<TagStatus, IntakeError> {
        match munchkin::parse_value(value) {
            Ok(cookie) => {
                self.enqueue_value(email, cookie, event, Consent::Granted, None)
                    .await
            }
            Err(r) => self.rejected(IntakeError::Cookie(r)),
        }
    }

    fn rejected(&self, e: IntakeError) -> Result<TagStatus, IntakeError> {
        self.inner.metrics.request(e.code());
        Err(e)
    }

    pub(crate) async fn enqueue_value(
        &self,
        email: &str,
        cookie: munchkin::TrackingCookie,
        event: Event,
        consent: Consent,
        captured_at_ms: Option<i64>,
    ) -> Result<TagStatus, IntakeError> {
        match consent {
            Consent::Denied => return self.rejected(IntakeError::ConsentDenied),
            Consent::Pending => return self.rejected(IntakeError::ConsentPending),
            Consent::Granted => {}
        }
        if let Some(want) = &self.inner.prefs.munchkin_id {
            if !cookie.munchkin_id.eq_ignore_ascii_case(want) {
                return self.rejected(IntakeError::Cookie(RejectReason::OtherInstance));
            }
        }
        let email = match normalize_email(email) {
            Ok(e) => e,
            Err(_) => return self.rejected(IntakeError::Identity("not a usable email address")),
        };
        let now = self.inner.clock.now_ms();
        let v = Validated {
            assoc: NewAssociation {
                person_key: email.key(),
                email: email.as_str().to_owned(),
                token: cookie.token,
                cookie_value: cookie.value,
                event,
                consent,
                captured_at_ms: captured_at_ms.filter(|t| (now - 86_400_000..=now + 60_000).contains(t)).unwrap_or(now),
            },
        };
        let tx = self
            .inner
            .intake
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| IntakeError::Store("shutting down".to_owned()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(IntakeRequest { assoc: v.assoc, reply })
            .await
            .map_err(|_| IntakeError::Store("shutting down".to_owned()))?;
        let r = rx
            .await
            .map_err(|_| IntakeError::Store("writer stopped".to_owned()))?
            .map_err(IntakeError::Store);
        match r {
            Ok(Enqueued::Queued) => {
                self.inner.metrics.request("queued");
                Ok(TagStatus::Queued)
            }
            Ok(Enqueued::Duplicate) => {
                self.inner.metrics.request("duplicate");
                Ok(TagStatus::Duplicate)
            }
            Err(e) => self.rejected(e),
        }
    }

    /// Signs a tag token for the user, for pages that hand it to the browser SDK.
    pub fn issue_token(&self, user_id: &str, email: &str, event: Event) -> Result<String, ServerError> {
        let keys = self.inner.config.keys.as_ref().ok_or(ServerError::NoKeys)?;
        Ok(keys.issue(
            user_id,
            email,
            event,
            self.inner.clock.now_secs(),
            self.inner.config.token_ttl_secs,
            None,
        )?)
    }

    /// Verifies a tag token at the current time.
    pub fn verify_token(&self, token: &str) -> Result<crate::tag_token::Claims, IntakeError> {
        let keys = self
            .inner
            .config
            .keys
            .as_ref()
            .ok_or(IntakeError::Token(TokenError::UnknownKey))?;
        keys.verify(token, self.inner.clock.now_secs(), &VerifyOptions::default())
            .map_err(IntakeError::Token)
    }

    /// Waits until no item is pending (true) or `timeout` passes (false).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            match pipeline::blocking(&self.inner.store, |s| s.status()).await {
                Ok(st) if st.pending() == 0 => return true,
                _ => {}
            }
            if start.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops intake (new calls fail with `store_unavailable`), commits what was
    /// accepted, and stops the worker after its current round. Pending items
    /// stay in the store for the next start.
    pub async fn shutdown(&self) {
        if let Ok(mut g) = self.inner.intake.lock() {
            g.take();
        }
        let _ = self.inner.stop.send(true);
        let tasks = self.inner.tasks.lock().ok().and_then(|mut g| g.take());
        if let Some((worker, writer)) = tasks {
            let _ = worker.await;
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    /// Stops the worker at once, mid-round (simulates a crash in tests; the
    /// store keeps whatever was committed).
    pub fn abort(&self) {
        if let Ok(mut g) = self.inner.intake.lock() {
            g.take();
        }
        if let Some((worker, _writer)) = self.inner.tasks.lock().ok().and_then(|mut g| g.take()) {
            worker.abort();
        }
    }

    /// Whether the intake writer and the worker run and the store answers
    /// (within 2 s). After [`shutdown`](Self::shutdown) or [`abort`](Self::abort)
    /// nothing runs.
    pub async fn health(&self) -> Health {
        let (worker, writer) = self
            .inner
            .tasks
            .lock()
            .ok()
            .and_then(|g| {
                g.as_ref()
                    .map(|(worker, writer)| (!worker.is_finished(), !writer.is_finished()))
            })
            .unwrap_or((false, false));
        let probe = pipeline::blocking(&self.inner.store, |s| s.next_due());
        let store = match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".to_owned()),
        };
        Health {
            writer,
            worker,
            store,
        }
    }

    /// Counters of this process.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Outbox figures.
    pub async fn status(&self) -> Result<StatusReport, StoreError> {
        pipeline::blocking(&self.inner.store, |s| s.status()).await
    }

    /// The Prometheus text for `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let pending = self.status().await.map(|s| s.pending()).unwrap_or(0);
        let pacer = self.inner.client.pacer();
        let g = Gauges {
            pending,
            budget_left: pacer.budget_left(),
            calls_in_window: pacer.in_window() as u64,
            paused: u64::from(pacer.paused().is_some()),
        };
        self.inner.metrics.render(&g)
    }

    /// The axum router: `POST /v1/tag`, `GET /healthz`, `GET /metrics`.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}
