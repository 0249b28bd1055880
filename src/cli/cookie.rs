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
    let pasted = match header.filter(|h| h != "-") {
        Some(h) => h,
        // No argument, or `-` as usual for "standard input".
        None => {
            let mut bytes = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
                eprintln!("idtag: cannot read the header from stdin: {e}");
                return ExitCode::from(2);
            }
            // Other cookies may carry Latin-1 bytes; they must not hide `_mkto_trk`.
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let header = unfold_pasted_header(&pasted);
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
    out!("{out}");
    if selection.selected.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Turns a header as people paste it (one or several `Cookie:` lines from devtools,
/// `curl -v` or HTTP/2 logs, any case, `>` markers) into one cookie string.
fn unfold_pasted_header(pasted: &str) -> String {
    pasted
        .lines()
        .map(|line| {
            let line = line.trim().trim_start_matches(['>', '<']).trim_start();
            match line.split_once(':') {
                Some((name, rest)) if name.trim().eq_ignore_ascii_case("cookie") => rest,
                _ => line,
            }
        })
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::unfold_pasted_header;

    #[test]
    fn pasted_headers() {
        assert_eq!(unfold_pasted_header("Cookie: a=1; b=2"), " a=1; b=2");
        assert_eq!(
            unfold_pasted_header("cookie: a=1\nCOOKIE: b=2\n"),
            " a=1; b=2"
        );
        assert_eq!(unfold_pasted_header("> Cookie: a=1\r\n"), " a=1");
        // A cookie value holding ':' is not a header name.
        assert_eq!(
            unfold_pasted_header("_mkto_trk=id:1&token:x"),
            "_mkto_trk=id:1&token:x"
        );
    }
}
