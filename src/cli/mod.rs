//! Subcommands of the `idtag` binary.

/// `println!` that never panics: when the reader has gone (`idtag status | head`)
/// the program ends quietly; any other write error (a full disk) is reported
/// and exits 2.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($t)*) {
            crate::cli::output_failed(e)
        }
    }};
}

/// Ends the program after a failed write to standard output (see `out!`).
pub(crate) fn output_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("idtag: cannot write output: {e}");
    std::process::exit(2);
}

mod cookie;
mod emulate;
mod identity;
mod serve;
mod token;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// idtag: ties the Marketo tracking cookie to the known person at signup and login.
#[derive(Debug, Parser)]
#[command(name = "idtag", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect tracking cookies in a Cookie header.
    #[command(subcommand)]
    Cookie(cookie::CookieCommand),
    /// Normalise identities the way idtag keys people.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Issue and verify signed tag tokens (keys from IDTAG_TOKEN_KEYS).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run the local Marketo-compatible emulator.
    Emulate(emulate::EmulateArgs),
    /// Run the tag endpoint and association worker (sidecar).
    Serve(serve::ServeArgs),
    /// Print outbox counts, the oldest pending item's age and dead-letter reasons.
    Status(serve::StatusArgs),
    /// Move dead-lettered items back to pending (all, or those with --reason).
    Requeue(serve::RequeueArgs),
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Cookie(c) => cookie::run(c),
        Command::Identity(c) => identity::run(c),
        Command::Token(c) => token::run(c),
        Command::Emulate(a) => emulate::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Status(a) => serve::status(a),
        Command::Requeue(a) => serve::requeue(a),
    }
}

/// Parses a listen address `host:port`, resolving names such as `localhost`
/// (an IPv4 address is preferred when the name has several).
pub(crate) fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not host:port ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}
