//! Marketo REST decisions without I/O: error classification, retry/backoff
//! decisions (jitter from an injected random value) and rate-limit bookkeeping.
//!
//! The native client (`server` feature) carries these decisions out; keeping
//! them here makes them testable without a network or a clock.

use std::collections::VecDeque;

/// What to do about a Marketo error code (`"606"`, `"1004"`, …) or HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// 601/602: drop the access token, get a new one, replay once.
    Reauthenticate,
    /// 606: rate limit; back off and slow down.
    RateLimited,
    /// 615: concurrency limit; back off and lower in-flight calls.
    ConcurrencyLimited,
    /// 502, 604, 608, 611, 614, 713 and HTTP 5xx: back off and retry (bounded).
    Transient,
    /// 607 daily quota, 1029 export/queue quota: stop until the daily reset.
    Quota,
    /// Not the item's fault and not over by itself: refused credentials, a
    /// failing token endpoint, an unexpected HTTP 4xx (wrong base URL, 400,
    /// 403, 404, …). Defer all work without counting an attempt and alert.
    Setup,
    /// 603, 605, 609, 610, 612, 1001–1004, 1006, 1012, …: permanent for this item.
    Permanent,
}

impl ErrorClass {
    /// Classifies a Marketo error code string (codes are strings on the wire).
    ///
    /// ```
    /// use idtag::marketo::ErrorClass;
    /// assert_eq!(ErrorClass::of_code("602"), ErrorClass::Reauthenticate);
    /// assert_eq!(ErrorClass::of_code("1012"), ErrorClass::Permanent);
    /// ```
    pub fn of_code(code: &str) -> ErrorClass {
        match code.trim() {
            "601" | "602" => ErrorClass::Reauthenticate,
            "606" => ErrorClass::RateLimited,
            "615" => ErrorClass::ConcurrencyLimited,
            "502" | "604" | "608" | "611" | "614" | "713" => ErrorClass::Transient,
            "607" | "1029" => ErrorClass::Quota,
            _ => ErrorClass::Permanent,
        }
    }

    /// Classifies a non-200 HTTP status (`None` for 2xx). Marketo reports
    /// item-level problems inside HTTP 200, so no status is permanent for an
    /// item: any other 4xx (or 1xx/3xx) says the setup is wrong.
    ///
    /// ```
    /// use idtag::marketo::ErrorClass;
    /// assert_eq!(ErrorClass::of_http_status(404), Some(ErrorClass::Setup));
    /// assert_eq!(ErrorClass::of_http_status(503), Some(ErrorClass::Transient));
    /// ```
    pub fn of_http_status(status: u16) -> Option<ErrorClass> {
        match status {
            200..=299 => None,
            401 => Some(ErrorClass::Reauthenticate),
            429 => Some(ErrorClass::RateLimited),
            408 | 500..=599 => Some(ErrorClass::Transient),
            _ => Some(ErrorClass::Setup),
        }
    }

    /// Whether waiting and trying again may succeed soon.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited | ErrorClass::ConcurrencyLimited | ErrorClass::Transient
        )
    }

    /// Whether the call counted against the rate limit and daily quota
    /// (601/602/604/605/608/611 do not).
    pub fn code_counts_against_limits(code: &str) -> bool {
        !matches!(code, "601" | "602" | "604" | "605" | "608" | "611")
    }
}

/// Bounded, jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, in milliseconds.
    pub base_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
    /// Attempts in total (first try included) before giving up.
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 500,
            max_ms: 30_000,
            max_attempts: 4,
        }
    }
}

/// The outcome of a retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this many milliseconds, then try again.
    RetryAfter(u64),
    /// Stop trying.
    GiveUp,
}

impl Backoff {
    /// Decides after `attempts` failed tries (1 after the first failure);
    /// `random` in `[0, 1)` spreads the delay ("equal jitter": half fixed, half random).
    ///
    /// ```
    /// use idtag::marketo::{Backoff, RetryDecision};
    /// let b = Backoff { base_ms: 100, max_ms: 1_000, max_attempts: 3 };
    /// assert_eq!(b.decide(1, 0.0), RetryDecision::RetryAfter(50));
    /// assert_eq!(b.decide(2, 0.999), RetryDecision::RetryAfter(199));
    /// assert_eq!(b.decide(3, 0.5), RetryDecision::GiveUp);
    /// ```
    pub fn decide(&self, attempts: u32, random: f64) -> RetryDecision {
        if attempts >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        RetryDecision::RetryAfter(self.delay_ms(attempts, random))
    }

    /// The jittered delay after `attempts` failures, ignoring the attempt bound.
    pub fn delay_ms(&self, attempts: u32, random: f64) -> u64 {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self.base_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        let r = if random.is_finite() {
            random.clamp(0.0, 0.999_999)
        } else {
            0.5
        };
        let half = full / 2;
        half + ((full - half) as f64 * r) as u64
    }
}

/// A rolling-window call budget: at most `limit` call starts per `window_ms`,
/// lowered for a while after the platform says 606/615.
///
/// Times are passed in (monotonic milliseconds), so this is pure bookkeeping.
///
/// ```
/// use idtag::marketo::RateWindow;
/// let mut w = RateWindow::new(2, 1_000);
/// assert_eq!(w.wait_ms(0), 0);
/// w.record(0);
/// w.record(10);
/// assert_eq!(w.wait_ms(20), 980);
/// assert_eq!(w.wait_ms(1_000), 0);
/// ```
#[derive(Debug, Clone)]
pub struct RateWindow {
    limit: usize,
    window_ms: u64,
    starts: VecDeque<u64>,
    /// Effective limit while slowed down, and until when.
    slowed: Option<(usize, u64)>,
}

impl RateWindow {
    /// A window allowing `limit` starts per `window_ms` milliseconds.
    pub fn new(limit: usize, window_ms: u64) -> Self {
        Self {
            limit: limit.max(1),
            window_ms: window_ms.max(1),
            starts: VecDeque::new(),
            slowed: None,
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn effective_limit(&self, now: u64) -> usize {
        match self.slowed {
            Some((l, until)) if now < until => l,
            _ => self.limit,
        }
    }

    fn prune(&mut self, now: u64) {
        while let Some(&t) = self.starts.front() {
            if t + self.window_ms <= now {
                self.starts.pop_front();
            } else {
                break;
            }
        }
    }

    /// Milliseconds to wait before a call may start at `now` (0: go now).
    pub fn wait_ms(&mut self, now: u64) -> u64 {
        self.prune(now);
        let limit = self.effective_limit(now);
        if self.starts.len() < limit {
            return 0;
        }
        let idx = self.starts.len() - limit;
        self.starts
            .get(idx)
            .map(|t| (t + self.window_ms).saturating_sub(now).max(1))
            .unwrap_or(1)
    }

    /// Records a call start at `now`.
    pub fn record(&mut self, now: u64) {
        self.starts.push_back(now);
    }

    /// Calls started in the window ending at `now`.
    pub fn in_window(&mut self, now: u64) -> usize {
        self.prune(now);
        self.starts.len()
    }

    /// Halves the effective limit for two windows after a 606/615.
    pub fn slow_down(&mut self, now: u64) {
        let current = self.effective_limit(now);
        let lowered = (current / 2).max(1);
        self.slowed = Some((lowered, now + 2 * self.window_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_matches_marketo_md() {
        for c in ["601", "602"] {
            assert_eq!(ErrorClass::of_code(c), ErrorClass::Reauthenticate);
        }
        for c in ["502", "604", "608", "611", "614", "713"] {
            assert_eq!(ErrorClass::of_code(c), ErrorClass::Transient, "{c}");
            assert!(ErrorClass::of_code(c).is_retryable());
        }
        assert_eq!(ErrorClass::of_code("606"), ErrorClass::RateLimited);
        assert_eq!(ErrorClass::of_code("615"), ErrorClass::ConcurrencyLimited);
        assert_eq!(ErrorClass::of_code("607"), ErrorClass::Quota);
        assert_eq!(ErrorClass::of_code("1029"), ErrorClass::Quota);
        for c in [
            "603", "605", "609", "610", "612", "1001", "1002", "1003", "1004", "1006", "1012",
        ] {
            assert_eq!(ErrorClass::of_code(c), ErrorClass::Permanent, "{c}");
            assert!(!ErrorClass::of_code(c).is_retryable());
        }
        for s in [400, 403, 404, 405, 413, 414, 302] {
            assert_eq!(
                ErrorClass::of_http_status(s),
                Some(ErrorClass::Setup),
                "{s}"
            );
        }
        assert_eq!(
            ErrorClass::of_http_status(401),
            Some(ErrorClass::Reauthenticate)
        );
        assert_eq!(ErrorClass::of_http_status(502), Some(ErrorClass::Transient));
        assert!(!ErrorClass::code_counts_against_limits("601"));
        assert!(ErrorClass::code_counts_against_limits("606"));
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let b = Backoff {
            base_ms: 1_000,
            max_ms: 8_000,
            max_attempts: 10,
        };
        assert_eq!(b.delay_ms(1, 0.0), 500);
        assert_eq!(b.delay_ms(4, 0.0), 4_000);
        assert!(b.delay_ms(20, 0.99) <= 8_000);
        assert!(b.delay_ms(20, 0.0) >= 4_000);
        assert_eq!(b.decide(10, 0.1), RetryDecision::GiveUp);
        assert_eq!(b.delay_ms(2, f64::NAN), 1_500);
    }

    #[test]
    fn window_slows_down_and_recovers() {
        let mut w = RateWindow::new(4, 100);
        w.slow_down(0);
        w.record(0);
        w.record(0);
        assert!(w.wait_ms(1) > 0);
        assert_eq!(w.wait_ms(100), 0);
        for _ in 0..3 {
            w.record(201);
        }
        assert_eq!(w.wait_ms(201), 0);
    }
}
