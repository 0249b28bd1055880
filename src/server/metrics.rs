//! Counters exposed at `GET /metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Labelled counters of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    setup_problem: Mutex<Option<String>>,
}

/// A label value as the text format wants it (`\\`, `\"` and newlines escaped).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Point-in-time figures rendered next to the counters.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Outbox items waiting.
    pub pending: u64,
    /// Daily call budget left.
    pub budget_left: u64,
    /// Calls started in the current rate window.
    pub calls_in_window: u64,
    /// 1 while paused for the daily quota.
    pub paused: u64,
}

impl Metrics {
    fn add(&self, family: &'static str, label: String, n: u64) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((family, label)).or_insert(0) += n;
        }
    }

    /// A tag request ended with `outcome` (`queued`, `duplicate`, or a rejection code).
    pub fn request(&self, outcome: &str) {
        self.add("idtag_requests_total", format!("outcome=\"{}\"", esc(outcome)), 1);
    }

    /// Items queued in the outbox.
    pub fn queued(&self, n: u64) {
        self.add("idtag_queued_total", String::new(), n);
    }

    /// Associations done.
    pub fn associated(&self) {
        self.add("idtag_associated_total", String::new(), 1);
    }

    /// A shared-browser conflict, handled per `policy` (`skip` or `reassociate`).
    pub fn conflict(&self, policy: &str) {
        self.conflicts(policy, 1);
    }

    /// `n` shared-browser conflicts handled per `policy` (e.g. those a previous
    /// run recorded in the outbox, counted at start).
    pub fn conflicts(&self, policy: &str, n: u64) {
        self.add("idtag_conflicts_total", format!("policy=\"{}\"", esc(policy)), n);
    }

    /// An item dead-lettered for `reason`.
    pub fn dead(&self, reason: &str) {
        self.add("idtag_dead_total", format!("reason=\"{}\"", esc(reason)), 1);
    }

    /// An item put off without counting an attempt (a setup problem, the daily quota).
    pub fn deferred(&self, reason: &str) {
        self.add("idtag_deferred_total", format!("reason=\"{}\"", esc(reason)), 1);
    }

    /// Sets the setup problem Marketo calls currently fail with (`None`: they
    /// work); `true` when that changed.
    pub fn set_setup_problem(&self, reason: Option<&str>) -> bool {
        let Ok(mut cur) = self.setup_problem.lock() else {
            return false;
        };
        if cur.as_deref() == reason {
            return false;
        }
        *cur = reason.map(str::to_owned);
        true
    }

    /// The setup problem Marketo calls currently fail with, if any.
    pub fn setup_problem(&self) -> Option<String> {
        self.setup_problem.lock().ok().and_then(|g| g.clone())
    }

    /// A Marketo HTTP call to `endpoint` that ended with `code` (`ok`, `606`, `http_502`, …).
    pub fn marketo_call(&self, endpoint: &str, code: &str) {
        self.add(
            "idtag_marketo_calls_total",
            format!("endpoint=\"{}\",code=\"{}\"", esc(endpoint), esc(code)),
            1,
        );
    }

    /// The count of one family/label pair (tests and benchmarks).
    pub fn get(&self, family: &str, label: &str) -> u64 {
        self.counters
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|((f, l), _)| *f == family && l == label)
                    .map(|(_, v)| *v)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Sum of Marketo calls with `code`, over every endpoint (`None`: all codes).
    pub fn marketo_calls(&self, endpoint: Option<&str>, code: Option<&str>) -> u64 {
        self.counters
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|((f, l), _)| {
                        *f == "idtag_marketo_calls_total"
                            && endpoint.is_none_or(|e| l.contains(&format!("endpoint=\"{e}\"")))
                            && code.is_none_or(|k| l.contains(&format!("code=\"{k}\"")))
                    })
                    .map(|(_, v)| *v)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let helps: [(&str, &str); 7] = [
            ("idtag_requests_total", "Tag requests by outcome or rejection reason."),
            ("idtag_queued_total", "Associations accepted into the outbox."),
            ("idtag_associated_total", "Associations done at Marketo."),
            ("idtag_conflicts_total", "Tokens already associated with another person."),
            ("idtag_dead_total", "Associations dead-lettered, by reason."),
            ("idtag_deferred_total", "Associations put off without an attempt (setup problem, daily quota), by reason."),
            ("idtag_marketo_calls_total", "Marketo REST calls by endpoint and result code."),
        ];
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        for (family, help) in helps {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            let mut any = false;
            for ((f, label), v) in &counters {
                if *f == family {
                    any = true;
                    if label.is_empty() {
                        let _ = writeln!(out, "{family} {v}");
                    } else {
                        let _ = writeln!(out, "{family}{{{label}}} {v}");
                    }
                }
            }
            if !any
                && !matches!(
                    family,
                    "idtag_requests_total"
                        | "idtag_dead_total"
                        | "idtag_deferred_total"
                        | "idtag_marketo_calls_total"
                        | "idtag_conflicts_total"
                )
            {
                let _ = writeln!(out, "{family} 0");
            }
        }
        for (name, help, v) in [
            ("idtag_pending", "Outbox items waiting.", g.pending),
            ("idtag_budget_left", "Marketo daily call budget left.", g.budget_left),
            ("idtag_calls_in_window", "Marketo calls started in the current rate window.", g.calls_in_window),
            ("idtag_paused", "1 while Marketo calls are paused for the daily quota.", g.paused),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "idtag_setup_problem";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while Marketo calls fail for a setup reason (credentials, base URL, token endpoint); work is deferred, not dead-lettered.\n# TYPE {name} gauge"
        );
        match self.setup_problem() {
            Some(r) => {
                let _ = writeln!(out, "{name}{{reason=\"{}\"}} 1", esc(&r));
            }
            None => {
                let _ = writeln!(out, "{name} 0");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_the_setup_problem_is_shown() {
        let m = Metrics::default();
        m.marketo_call("leads_lookup", "a\"b\\c\nd");
        let text = m.render(&Gauges::default());
        assert!(text.contains(r#"code="a\"b\\c\nd"} 1"#), "{text}");
        assert!(text.contains("idtag_setup_problem 0"));
        assert!(m.set_setup_problem(Some("identity_http_404")));
        assert!(!m.set_setup_problem(Some("identity_http_404")), "unchanged");
        let text = m.render(&Gauges::default());
        assert!(text.contains(r#"idtag_setup_problem{reason="identity_http_404"} 1"#), "{text}");
        assert!(m.set_setup_problem(None));
        assert!(m.render(&Gauges::default()).contains("idtag_setup_problem 0"));
    }
}
