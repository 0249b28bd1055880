//! `idtag token issue|verify`: sign and check tag tokens with the keys in `IDTAG_TOKEN_KEYS`.

use idtag::clock::{Clock, SystemClock};
use idtag::tag_token::{Event, Keyring, VerifyOptions, DEFAULT_TTL_SECS};
use serde_json::json;
use std::process::ExitCode;

/// Tag-token subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Sign a tag token and print it.
    Issue {
        /// The product's user id.
        #[arg(long)]
        user_id: String,
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// `login` or `signup`.
        #[arg(long, value_parser = ["login", "signup"])]
        event: String,
        /// Lifetime in seconds (1..86400).
        #[arg(long, default_value_t = DEFAULT_TTL_SECS)]
        ttl: i64,
        /// Key id to sign with (default: the first key).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Verify a tag token: print its claims as JSON (exit 0) or the error code (exit 1).
    Verify {
        /// The token.
        token: String,
    },
}

fn keyring() -> Result<Keyring, String> {
    let spec = std::env::var("IDTAG_TOKEN_KEYS")
        .map_err(|_| "IDTAG_TOKEN_KEYS is not set (kid:base64key,…; the first signs)".to_owned())?;
    Keyring::parse(&spec).map_err(|e| format!("IDTAG_TOKEN_KEYS: {e}"))
}

/// Runs a token subcommand.
pub fn run(cmd: TokenCommand) -> ExitCode {
    let ring = match keyring() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("idtag: {e}");
            return ExitCode::from(2);
        }
    };
    let now = SystemClock.now_secs();
    match cmd {
        TokenCommand::Issue {
            user_id,
            email,
            event,
            ttl,
            kid,
        } => {
            let event: Event = match event.parse() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("idtag: {e}");
                    return ExitCode::from(2);
                }
            };
            match ring.issue(&user_id, &email, event, now, ttl, kid.as_deref()) {
                Ok(t) => {
                    out!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    out!(
                        "{}",
                        json!({"error": {"code": e.code(), "message": e.to_string()}})
                    );
                    ExitCode::from(1)
                }
            }
        }
        TokenCommand::Verify { token } => {
            match ring.verify(token.trim(), now, &VerifyOptions::default()) {
                Ok(claims) => {
                    out!("{}", json!(claims));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    out!("{}", e.code());
                    eprintln!("idtag: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
