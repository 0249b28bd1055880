//! `idtag cookie inspect`: which `_mkto_trk` value idtag would pick from a header, and why.

use idtag::munchkin::{self, Preferences};
use serde_json::json;
use std::io::Read;
use std::process::ExitCode;

/// Tracking-cookie subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CookieCommand {
    /// Print the selected `_mkto_trk` value, the candidates and the rejected values
    /// of a Cookie header as JSON. Exit 0 when a value is selected, 1 when none.
    Inspect {
        /// The Munchkin id of your Marketo instance; other instances' cookies are never selected.
        #[arg(long)]
        munchkin_id: Option<String>,
        /// The cookie domain Munchkin writes (`example.com`); preferred over stale subdomain cookies.
        #[arg(long)]
        cookie_domain: Option<String>,
        /// The Cookie header (or document.cookie string); read from stdin when absent.
        header: Option<String>,
    },
}

/// Runs a cookie subcommand.
pub fn run(cmd: CookieCommand) -> ExitCode {
    let CookieCommand::Inspect {
        munchkin_id,
        cookie_domain,
        header,
    } = cmd;
    if let Some(id) = munchkin_id.as_deref() {
        if !munchkin::is_munchkin_id(id.trim()) {
            eprintln!("idtag: --munchkin-id {id:?} is not a Munchkin id like 123-ABC-456");
            return ExitCode::from(2);
        }
    }
    let header = match header {
        Some(h) => h,
        None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("idtag: cannot read the header from stdin: {e}");
                return ExitCode::from(2);
            }
            // A header piped in may carry a "Cookie:" prefix and line breaks.
            let s = s.trim();
            let s = s
                .strip_prefix("Cookie:")
                .or_else(|| s.strip_prefix("cookie:"))
                .unwrap_or(s);
            s.lines().collect::<Vec<_>>().join(";")
        }
    };
    let prefs = Preferences {
        munchkin_id,
        cookie_domain,
    };
    let selection = munchkin::select(&header, &prefs);
    let rejected: Vec<_> = selection
        .rejected
        .iter()
        .map(
            |r| json!({"value": r.value, "reason": r.reason.code(), "message": r.reason.message()}),
        )
        .collect();
    let out = json!({"marketo": {
        "selected": selection.selected,
        "candidates": selection.candidates,
        "rejected": rejected,
    }});
    println!("{out}");
    if selection.selected.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
