//! `idtag emulate`: the local Marketo-compatible emulator.

use idtag::clock::SystemClock;
use idtag::emulator::{Emulator, EmulatorConfig, FaultConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Options of `idtag emulate`.
#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:0", value_parser = super::parse_listen)]
    listen: SocketAddr,
    /// OAuth client id the identity endpoint accepts.
    #[arg(long, default_value = "idtag-emulator")]
    client_id: String,
    /// OAuth client secret the identity endpoint accepts.
    #[arg(long, default_value = "emulator-secret")]
    client_secret: String,
    /// Munchkin id of the emulated instance (3 digits-3 letters-3 digits).
    #[arg(long, default_value = "123-ABC-456", value_parser = parse_munchkin_id)]
    munchkin_id: String,
    /// Rolling-window rate limit: CALLS/WINDOW, window in s, ms or m (606 beyond it).
    #[arg(long, default_value = "100/20s", value_parser = parse_rate)]
    rate: Rate,
    /// Concurrent REST calls allowed (615 beyond it).
    #[arg(long, default_value_t = 10)]
    concurrency: u32,
    /// Calls allowed per US Central day (607 beyond it, until 00:00 America/Chicago).
    #[arg(long, default_value_t = 50_000)]
    daily_quota: u64,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    token_ttl: u64,
    /// Run emulated time this many times faster: every window and lifetime shrinks by it.
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    time_scale: f64,
    /// Share (0..1) of REST calls answered HTTP 502.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    fail_502: f64,
    /// Share (0..1) of REST calls answered 604 (request timed out).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    fail_604: f64,
    /// Share (0..1) of REST calls answered 608 (API temporarily unavailable).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    fail_608: f64,
    /// Share (0..1) of REST calls answered 611 (system error).
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    fail_611: f64,
    /// Milliseconds added to every admitted REST call.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Start on a forced quota day: 607 until cleared, reset, or the next 00:00 US Central.
    #[arg(long)]
    quota_exhausted: bool,
}

/// A rate limit: so many calls per window.
#[derive(Debug, Clone, Copy)]
struct Rate {
    calls: u32,
    window: Duration,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    let err = || format!("{s:?} is not CALLS/WINDOW like 100/20s");
    let (calls, window) = s.split_once('/').ok_or_else(err)?;
    let calls: u32 = calls.trim().parse().map_err(|_| err())?;
    let window = window.trim();
    let (num, unit_ms) = if let Some(n) = window.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = window.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = window.strip_suffix('m') {
        (n, 60_000)
    } else {
        (window, 1000)
    };
    let n: u64 = num.trim().parse().map_err(|_| err())?;
    let ms = n
        .checked_mul(unit_ms)
        .filter(|ms| *ms > 0)
        .ok_or_else(err)?;
    Ok(Rate {
        calls,
        window: Duration::from_millis(ms),
    })
}

fn parse_munchkin_id(s: &str) -> Result<String, String> {
    if idtag::emulator::tracking_cookie::is_munchkin_id(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a Munchkin id like 123-ABC-456"))
    }
}

fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

/// Runs the emulator until interrupted (Ctrl-C or SIGTERM).
pub fn run(args: EmulateArgs) -> ExitCode {
    let config = EmulatorConfig {
        client_id: args.client_id,
        client_secret: args.client_secret,
        munchkin_id: args.munchkin_id,
        rate_limit: args.rate.calls,
        rate_window: args.rate.window,
        concurrency: args.concurrency,
        daily_quota: args.daily_quota,
        token_ttl: Duration::from_secs(args.token_ttl),
        time_scale: args.time_scale,
        faults: FaultConfig {
            share_502: args.fail_502,
            share_604: args.fail_604,
            share_608: args.fail_608,
            share_611: args.fail_611,
            latency: Duration::from_millis(args.latency_ms),
            quota_exhausted: args.quota_exhausted,
            ..FaultConfig::default()
        },
    };
    if let Err(e) = config.validate() {
        eprintln!("idtag emulate: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idtag emulate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config, args.listen))
}

async fn serve(config: EmulatorConfig, listen: SocketAddr) -> ExitCode {
    let summary = format!(
        "limits:        {} calls / {:?}, {} concurrent, {} per day, token {} s, time scale {}",
        config.rate_limit,
        config.rate_window,
        config.concurrency,
        config.daily_quota,
        config.token_ttl.as_secs(),
        config.time_scale
    );
    let emu = match Emulator::start_with(config, listen, Arc::new(SystemClock)).await {
        Ok(emu) => emu,
        Err(e) => {
            eprintln!("idtag emulate: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    let base = emu.base_url();
    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "idtag emulator listening on {base}\n\
         base URL:      {base}\n\
         identity:      {base}/identity/oauth/token\n\
         REST:          {base}/rest/v1/\n\
         client id:     {}\n\
         client secret: {}\n\
         munchkin id:   {}\n\
         munchkin.js:   {base}/munchkin.js\n\
         admin:         {base}/__emulator/  (leads, calls, log, faults, reset, revoke-token)\n\
         {summary}\n\
         Ctrl-C to stop.\n",
        emu.client_id(),
        emu.client_secret(),
        emu.munchkin_id(),
    );
    let _ = out.flush();
    drop(out);
    wait_for_signal().await;
    emu.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_parses_units() {
        let r = parse_rate("100/20s").unwrap();
        assert_eq!((r.calls, r.window), (100, Duration::from_secs(20)));
        assert_eq!(
            parse_rate("5/500ms").unwrap().window,
            Duration::from_millis(500)
        );
        assert_eq!(parse_rate("5/2m").unwrap().window, Duration::from_secs(120));
        assert_eq!(parse_rate("50/20").unwrap().window, Duration::from_secs(20));
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("x/20s").is_err());
        assert!(parse_rate("100/0s").is_err());
    }
}
