//! The idtag demo: a small product site (marketing pages, signup, login, SSO, app)
//! that embeds idtag's server side, running against the local Marketo emulator
//! (or a real instance when `MARKETO_BASE_URL`, `MARKETO_CLIENT_ID`,
//! `MARKETO_CLIENT_SECRET` are set), with SQLite stores.
//!
//! `cargo run --example demo --features server,emulator -- [--listen 127.0.0.1:8080] [--data-dir DIR] [--pkg-dir pkg] [--check]`
//!
//! `--check` drives the QA journeys headless (examples/demo/journeys.mjs, Playwright
//! with the Debian Chromium), prints the report and exits 0 only when every journey
//! was verified through the emulator's inspection endpoints.

mod pages;
mod site;
mod users;

use idtag::emulator::{Emulator, EmulatorConfig};
use idtag::server::{Config, Idtag, MarketoConfig, StoreConfig};
use idtag::tag_token::Keyring;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

struct Args {
    listen: SocketAddr,
    data_dir: PathBuf,
    pkg_dir: PathBuf,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: "127.0.0.1:8080".parse().expect("literal address"),
        data_dir: PathBuf::from("target/demo"),
        pkg_dir: PathBuf::from("pkg"),
        check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                a.listen = val("--listen")?
                    .parse()
                    .map_err(|_| "--listen wants host:port".to_owned())?
            }
            "--data-dir" => a.data_dir = PathBuf::from(val("--data-dir")?),
            "--pkg-dir" => a.pkg_dir = PathBuf::from(val("--pkg-dir")?),
            "--check" => a.check = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

fn random_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("demo: {e}");
            }
            eprintln!("usage: demo [--listen 127.0.0.1:8080] [--data-dir target/demo] [--pkg-dir pkg] [--check]");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if !args.pkg_dir.join("index.js").exists() {
        return Err(format!(
            "{} has no index.js: build the npm package first (make pkg)",
            args.pkg_dir.display()
        )
        .into());
    }
    if args.check && args.data_dir.exists() {
        // Journeys assert on counts: start them from empty stores.
        std::fs::remove_dir_all(&args.data_dir)?;
    }
    std::fs::create_dir_all(&args.data_dir)?;

    // Marketo: a real instance when configured, else the embedded emulator.
    let (marketo, emulator) = match (
        env("MARKETO_BASE_URL"),
        env("MARKETO_CLIENT_ID"),
        env("MARKETO_CLIENT_SECRET"),
    ) {
        (Some(base), Some(id), Some(secret)) => {
            let mut m = MarketoConfig::new(base, id, secret);
            m.munchkin_id = env("MARKETO_MUNCHKIN_ID");
            (m, None)
        }
        _ => {
            let mut cfg = EmulatorConfig::default();
            if let Some(id) = env("MARKETO_MUNCHKIN_ID") {
                cfg.munchkin_id = id;
            }
            let emu = Emulator::start(cfg).await?;
            let mut m = MarketoConfig::new(
                emu.base_url().to_owned(),
                emu.client_id().to_owned(),
                emu.client_secret().to_owned(),
            );
            m.munchkin_id = Some(emu.munchkin_id().to_owned());
            (m, Some(emu))
        }
    };
    let munchkin_id = marketo
        .munchkin_id
        .clone()
        .unwrap_or_else(|| "123-ABC-456".to_owned());
    let munchkin_script = match &emulator {
        Some(e) => format!("{}/munchkin.js", e.base_url()),
        None => env("MUNCHKIN_SCRIPT_URL")
            .unwrap_or_else(|| "https://munchkin.marketo.net/munchkin.js".to_owned()),
    };

    let outbox = args.data_dir.join("idtag.sqlite");
    if emulator.is_some() {
        // The embedded emulator starts empty every run: an outbox kept from an
        // earlier run would call its pairs done and its lead ids known, and
        // returning users would never be associated in this emulator. The
        // demo's user accounts (users.sqlite) are kept.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = outbox.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    let mut config = Config::new(marketo);
    config.store = StoreConfig::Sqlite(outbox);
    let keys = env("IDTAG_TOKEN_KEYS").unwrap_or_else(|| format!("demo:{}", random_key()));
    config.keys = Some(Keyring::parse(&keys)?);
    if args.check {
        demo_check_tuning(&mut config);
    }
    let idtag = Idtag::builder(config).build().await?;
    let users = users::Users::open(&args.data_dir.join("users.sqlite"))?;
    let state = Arc::new(site::AppState {
        idtag: idtag.clone(),
        users,
        munchkin_script,
        munchkin_id,
        emulator: emulator.as_ref().map(|e| e.base_url().to_owned()),
    });
    let app = site::router(state, &args.pkg_dir);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let site_url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    println!(
        "idtag demo is up (store: SQLite in {})",
        args.data_dir.display()
    );
    println!("  site:          {site_url}/");
    println!("  coverage:      {site_url}/coverage");
    match &emulator {
        Some(e) => {
            println!(
                "  emulator:      {} (Marketo-compatible, embedded)",
                e.base_url()
            );
            println!("  emulator leads: {}/__emulator/leads", e.base_url());
        }
        None => println!(
            "  marketo:       {}",
            env("MARKETO_BASE_URL").unwrap_or_default()
        ),
    }

    let code = if args.check {
        let Some(emu) = &emulator else {
            return Err("--check needs the embedded emulator (unset MARKETO_BASE_URL)".into());
        };
        let mut cmd = std::process::Command::new("node");
        cmd.arg("examples/demo/journeys.mjs")
            .arg(&site_url)
            .arg(emu.base_url())
            .arg(emu.client_id())
            .arg(emu.client_secret());
        let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
        idtag.flush(Duration::from_secs(5)).await;
        let c = reqwest::get(format!("{site_url}/api/coverage"))
            .await?
            .text()
            .await?;
        println!("coverage after the journeys: {c}");
        if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    } else {
        println!("press Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
        ExitCode::SUCCESS
    };
    server.abort();
    idtag.shutdown().await;
    if let Some(e) = emulator {
        e.shutdown().await;
    }
    Ok(code)
}

/// Journeys run in seconds, not hours: after a forced quota day the client probes
/// again after two seconds instead of waiting for 00:00 US Central.
fn demo_check_tuning(config: &mut Config) {
    config.marketo.pacing.quota_probe_interval = Some(Duration::from_secs(2));
}
