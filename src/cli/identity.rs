//! `idtag identity normalize`: the key idtag uses for an email address.

use idtag::identity::normalize_email;
use serde_json::json;
use std::process::ExitCode;

/// Identity subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Print `{"email":…}` (exit 0) or `{"error":{"code","message"}}` (exit 1).
    Normalize {
        /// The address as a user typed it.
        #[arg(allow_hyphen_values = true)]
        email: String,
    },
}

/// Runs an identity subcommand.
pub fn run(cmd: IdentityCommand) -> ExitCode {
    let IdentityCommand::Normalize { email } = cmd;
    match normalize_email(&email) {
        Ok(e) => {
            out!("{}", json!({"email": e.as_str()}));
            ExitCode::SUCCESS
        }
        Err(err) => {
            out!(
                "{}",
                json!({"error": {"code": err.code(), "message": err.to_string()}})
            );
            ExitCode::from(1)
        }
    }
}
