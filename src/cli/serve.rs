//! `idtag serve`, `idtag status` and `idtag requeue`: the sidecar, its outbox
//! report and the way back out of the dead-letter state.

use idtag::clock::{Clock, SystemClock};
use idtag::server::{
    Config, ConflictPolicy, Idtag, MarketoConfig, SqliteStore, Store, StoreConfig, StoreLock,
};
use idtag::tag_token::Keyring;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `idtag serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address the tag endpoint listens on.
    #[arg(long, env = "IDTAG_LISTEN", default_value = "127.0.0.1:8787", value_parser = super::parse_listen)]
    listen: SocketAddr,
    /// SQLite outbox file (`memory` for a throwaway in-memory outbox). Default
    /// `idtag-outbox.db`; with the embedded emulator `memory`, since the
    /// emulator's leads do not outlive the process either.
    #[arg(long, env = "IDTAG_STORE")]
    store: Option<String>,
    /// Marketo REST base URL (`https://123-ABC-456.mktorest.com`); unset: embedded emulator.
    #[arg(long, env = "MARKETO_BASE_URL")]
    marketo_base_url: Option<String>,
    /// Marketo API client id.
    #[arg(long, env = "MARKETO_CLIENT_ID")]
    marketo_client_id: Option<String>,
    /// Marketo API client secret.
    #[arg(long, env = "MARKETO_CLIENT_SECRET", hide_env_values = true)]
    marketo_client_secret: Option<String>,
    /// The instance's Munchkin id; cookies of other instances are refused.
    #[arg(long, env = "MARKETO_MUNCHKIN_ID")]
    munchkin_id: Option<String>,
    /// Tag-token keys `kid:base64key,…` (the first signs).
    #[arg(long, env = "IDTAG_TOKEN_KEYS", hide_env_values = true)]
    token_keys: Option<String>,
    /// Browser origins allowed to call /v1/tag (comma-separated).
    #[arg(long, env = "IDTAG_CORS_ORIGINS", value_delimiter = ',')]
    cors_origin: Vec<String>,
    /// Shared-browser conflicts: `skip` or `reassociate`.
    #[arg(long, env = "IDTAG_CONFLICT_POLICY", default_value = "skip")]
    conflict_policy: String,
    /// Marketo calls per rate window this process may start.
    #[arg(long, default_value_t = 50)]
    rate_limit: usize,
    /// The rate window, seconds.
    #[arg(long, default_value = "20", value_parser = parse_window)]
    rate_window_secs: Duration,
    /// Marketo calls in flight at most.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Marketo calls per US Central day this process may spend.
    #[arg(long, default_value_t = 40_000)]
    daily_budget: u64,
    /// After a 607, try again after this many seconds instead of waiting for
    /// 00:00 US Central (unset: wait for the daily reset).
    #[arg(long, env = "IDTAG_QUOTA_PROBE_SECS")]
    quota_probe_secs: Option<u64>,
}

/// Options of `idtag status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// SQLite outbox file.
    #[arg(long, env = "IDTAG_STORE", default_value = "idtag-outbox.db")]
    store: PathBuf,
}

/// Options of `idtag requeue`.
#[derive(Debug, clap::Args)]
pub struct RequeueArgs {
    /// SQLite outbox file.
    #[arg(long, env = "IDTAG_STORE", default_value = "idtag-outbox.db")]
    store: PathBuf,
    /// Only dead items with this reason (`retries_exhausted` also selects
    /// `retries_exhausted:http_502`, …); all dead items when unset.
    #[arg(long)]
    reason: Option<String>,
}

/// A rate window in seconds: a positive number up to a day.
fn parse_window(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("{s} s is not between 0.001 and 86400"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the sidecar until interrupted.
pub fn run(args: ServeArgs) -> ExitCode {
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idtag serve: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("idtag serve: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let embedded = args.marketo_base_url.is_none()
        && args.marketo_client_id.is_none()
        && args.marketo_client_secret.is_none();
    let store = match &args.store {
        Some(s) => s.clone(),
        None if embedded => "memory".to_owned(),
        None => "idtag-outbox.db".to_owned(),
    };
    // One worker per outbox: a second `idtag serve` on this store stops here.
    let _lock = match store.as_str() {
        "memory" => None,
        path => Some(StoreLock::acquire(path).map_err(|e| e.to_string())?),
    };
    // Listen before the worker starts: a taken port must not leave a worker
    // draining the outbox with no endpoint.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let keys = match &args.token_keys {
        Some(k) => Keyring::parse(k).map_err(|e| format!("IDTAG_TOKEN_KEYS: {e}"))?,
        None => {
            return Err(
                "IDTAG_TOKEN_KEYS (or --token-keys) is required to verify tag tokens".into(),
            )
        }
    };
    let mut emulator = None;
    let mut marketo = match (
        &args.marketo_base_url,
        &args.marketo_client_id,
        &args.marketo_client_secret,
    ) {
        (Some(url), Some(id), Some(secret)) => MarketoConfig::new(url, id, secret),
        (None, None, None) => {
            tracing::warn!(
                store = %store,
                "no Marketo settings (MARKETO_BASE_URL, MARKETO_CLIENT_ID, MARKETO_CLIENT_SECRET): starting the embedded Marketo emulator; nothing reaches a real instance"
            );
            let emu = idtag::emulator::Emulator::start(idtag::emulator::EmulatorConfig::default())
                .await
                .map_err(|e| format!("embedded emulator: {e}"))?;
            tracing::info!(base_url = emu.base_url(), "embedded emulator listening");
            let m = MarketoConfig::new(emu.base_url(), emu.client_id(), emu.client_secret());
            emulator = Some(emu);
            m
        }
        _ => {
            return Err(
                "set all of MARKETO_BASE_URL, MARKETO_CLIENT_ID and MARKETO_CLIENT_SECRET, or none (embedded emulator)"
                    .into(),
            )
        }
    };
    marketo.munchkin_id = args.munchkin_id.clone();
    marketo.pacing.rate_limit = args.rate_limit.max(1);
    marketo.pacing.rate_window = args.rate_window_secs;
    marketo.pacing.concurrency = args.concurrency.max(1);
    marketo.pacing.daily_budget = args.daily_budget;
    marketo.pacing.quota_probe_interval =
        args.quota_probe_secs.map(|s| Duration::from_secs(s.max(1)));
    let mut config = Config::new(marketo);
    config.keys = Some(keys);
    config.listen = args.listen;
    config.cors_origins = args.cors_origin.clone();
    config.store = if store == "memory" {
        StoreConfig::Memory
    } else {
        StoreConfig::Sqlite(PathBuf::from(&store))
    };
    config.worker.conflict_policy = args.conflict_policy.parse::<ConflictPolicy>()?;
    let idtag = Idtag::builder(config)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, store = %store, "idtag serve: POST /v1/tag, GET /healthz, GET /metrics");
    let served = axum::serve(listener, idtag.router())
        .with_graceful_shutdown(shutdown_signal())
        .await;
    tracing::info!("shutting down: committing accepted work, stopping the worker");
    idtag.shutdown().await;
    if let Some(emu) = emulator {
        emu.shutdown().await;
    }
    served.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// Opens an existing outbox for `command`, or the exit code to end with.
fn open_outbox(command: &str, path: &std::path::Path) -> Result<SqliteStore, ExitCode> {
    if !path.exists() {
        eprintln!("idtag {command}: no outbox at {}", path.display());
        return Err(ExitCode::from(2));
    }
    SqliteStore::open_existing(path).map_err(|e| {
        eprintln!("idtag {command}: {}: {e}", path.display());
        ExitCode::from(1)
    })
}

/// Prints the outbox report.
pub fn status(args: StatusArgs) -> ExitCode {
    let store = match open_outbox("status", &args.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let report = match store.status() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("idtag status: {e}");
            return ExitCode::from(1);
        }
    };
    out!("outbox {}", args.store.display());
    for state in ["pending", "done", "dead", "conflict"] {
        out!(
            "  {state:<9} {}",
            report.counts.get(state).copied().unwrap_or(0)
        );
    }
    match report.oldest_pending_ms {
        Some(t) => out!(
            "oldest pending: {} ago",
            age(SystemClock.now_ms().saturating_sub(t))
        ),
        None => out!("oldest pending: none"),
    }
    if report.dead_reasons.is_empty() {
        out!("dead-letter reasons: none");
    } else {
        out!("dead-letter reasons:");
        for (reason, n) in &report.dead_reasons {
            out!("  {reason:<24} {n}");
        }
    }
    if report.conflicts.is_empty() {
        out!("shared-browser conflicts: none");
    } else {
        out!("shared-browser conflicts (by policy applied):");
        for (policy, n) in &report.conflicts {
            out!("  {policy:<24} {n}");
        }
    }
    ExitCode::SUCCESS
}

/// Moves dead items back to pending (a running `idtag serve` picks them up).
pub fn requeue(args: RequeueArgs) -> ExitCode {
    let store = match open_outbox("requeue", &args.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let r = match store.requeue(args.reason.as_deref(), SystemClock.now_ms()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("idtag requeue: {e}");
            return ExitCode::from(1);
        }
    };
    let which = args
        .reason
        .as_deref()
        .map(|r| format!(" with reason {r}"))
        .unwrap_or_default();
    out!("requeued {} dead item(s){which}", r.requeued);
    if r.undeliverable > 0 {
        out!(
            "left dead: {} item(s) with neither a lead id nor an email to deliver them with (they revive at the person's next login from that browser)",
            r.undeliverable
        );
    }
    ExitCode::SUCCESS
}
