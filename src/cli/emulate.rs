//! `idtag emulate`: the local Marketo-compatible emulator.

use std::process::ExitCode;

/// Options of `idtag emulate`.
#[derive(Debug, clap::Args)]
pub struct EmulateArgs {}

/// Runs the emulator until interrupted.
pub fn run(_args: EmulateArgs) -> ExitCode {
    eprintln!("idtag emulate: not available in this build yet");
    ExitCode::from(2)
}
