//! `idtag serve` and `idtag status`: the sidecar and its outbox report.

use std::process::ExitCode;

/// Options of `idtag serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Options of `idtag status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Runs the sidecar until interrupted.
pub fn run(_args: ServeArgs) -> ExitCode {
    eprintln!("idtag serve: not available in this build yet");
    ExitCode::from(2)
}

/// Prints the outbox report.
pub fn status(_args: StatusArgs) -> ExitCode {
    eprintln!("idtag status: not available in this build yet");
    ExitCode::from(2)
}
