//! Pacing of Marketo calls: a rolling-window rate budget, a cap on calls in
//! flight, a daily call budget and the pause after a 607 until 00:00 US Central.

use crate::clock::{Clock, UnixMillis};
use crate::marketo::RateWindow;
use chrono::{DateTime, TimeZone};
use chrono_tz::America::Chicago;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The next 00:00 in America/Chicago strictly after `now_ms` (DST-aware), in Unix ms.
///
/// ```
/// // 2026-03-08 is the day US Central springs forward: CST before, CDT after.
/// let before = 1_772_949_600_000; // 2026-03-08T06:00:00Z = 00:00 CST
/// let next = idtag::server::next_central_midnight_ms(before + 1);
/// assert_eq!(next, 1_773_032_400_000); // 2026-03-09T05:00:00Z = 00:00 CDT
/// ```
pub fn next_central_midnight_ms(now_ms: UnixMillis) -> UnixMillis {
    let Some(now) = DateTime::from_timestamp_millis(now_ms) else {
        return now_ms.saturating_add(86_400_000);
    };
    let local = now.with_timezone(&Chicago);
    let Some(next_day) = local.date_naive().succ_opt() else {
        return now_ms.saturating_add(86_400_000);
    };
    let Some(midnight) = next_day.and_hms_opt(0, 0, 0) else {
        return now_ms.saturating_add(86_400_000);
    };
    Chicago
        .from_local_datetime(&midnight)
        .earliest()
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|| now_ms.saturating_add(86_400_000))
}

/// Limits the client keeps to (its share of the instance's limits).
#[derive(Debug, Clone)]
pub struct PacingConfig {
    /// Calls per window (default 50: half of Marketo's 100 per 20 s).
    pub rate_limit: usize,
    /// The rolling window (default 20 s).
    pub rate_window: Duration,
    /// Calls in flight at most (default 5: half of Marketo's 10).
    pub concurrency: usize,
    /// Calls per US Central day this client may spend (default 40,000).
    pub daily_budget: u64,
    /// After a 607, try again after this long instead of waiting for 00:00 US
    /// Central (default `None`: wait for the reset). For instances whose quota an
    /// administrator may raise during the day, and for demos that end a forced
    /// quota day early; each probe costs at most the calls then in flight.
    pub quota_probe_interval: Option<Duration>,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            rate_limit: 50,
            rate_window: Duration::from_secs(20),
            concurrency: 5,
            daily_budget: 40_000,
            quota_probe_interval: None,
        }
    }
}

/// Why a call may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// When calls may start again (Unix ms, the next daily reset).
    pub until_ms: UnixMillis,
}

/// Shared pacing state of one client.
pub struct Pacer {
    cfg: PacingConfig,
    window: Mutex<RateWindow>,
    in_flight: Arc<Semaphore>,
    /// In-flight slots held back after 615s (always fewer than all of them).
    held: Arc<AtomicUsize>,
    epoch: Instant,
    clock: Arc<dyn Clock>,
    paused_until: AtomicI64,
    day_reset_at: AtomicI64,
    used_today: AtomicU64,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer").field("cfg", &self.cfg).finish()
    }
}

impl Pacer {
    /// A pacer keeping to `cfg`, reading wall time (for the daily reset) from `clock`.
    pub fn new(cfg: PacingConfig, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now_ms();
        let window_ms = u64::try_from(cfg.rate_window.as_millis()).unwrap_or(20_000);
        Self {
            window: Mutex::new(RateWindow::new(cfg.rate_limit, window_ms)),
            in_flight: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            held: Arc::new(AtomicUsize::new(0)),
            epoch: Instant::now(),
            paused_until: AtomicI64::new(0),
            day_reset_at: AtomicI64::new(next_central_midnight_ms(now)),
            used_today: AtomicU64::new(0),
            clock,
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PacingConfig {
        &self.cfg
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn roll_day(&self, now: UnixMillis) {
        let reset = self.day_reset_at.load(Ordering::SeqCst);
        if now >= reset {
            self.day_reset_at
                .store(next_central_midnight_ms(now), Ordering::SeqCst);
            self.used_today.store(0, Ordering::SeqCst);
        }
    }

    /// `Some` while calls are paused (607 seen, or the daily budget spent).
    pub fn paused(&self) -> Option<Paused> {
        let now = self.clock.now_ms();
        self.roll_day(now);
        let until = self.paused_until.load(Ordering::SeqCst);
        if now < until {
            return Some(Paused { until_ms: until });
        }
        if self.used_today.load(Ordering::SeqCst) >= self.cfg.daily_budget {
            return Some(Paused {
                until_ms: self.day_reset_at.load(Ordering::SeqCst),
            });
        }
        None
    }

    /// Calls left in today's budget.
    pub fn budget_left(&self) -> u64 {
        self.roll_day(self.clock.now_ms());
        self.cfg
            .daily_budget
            .saturating_sub(self.used_today.load(Ordering::SeqCst))
    }

    /// Calls started in the current rate window.
    pub fn in_window(&self) -> usize {
        let now = self.mono_ms();
        self.window.lock().map(|mut w| w.in_window(now)).unwrap_or(0)
    }

    /// Waits for a slot (in-flight cap and rate window) and counts the call;
    /// `Err` while paused for the day.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, Paused> {
        if let Some(p) = self.paused() {
            return Err(p);
        }
        let permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Paused { until_ms: i64::MAX })?;
        loop {
            if let Some(p) = self.paused() {
                return Err(p);
            }
            let now = self.mono_ms();
            let wait = match self.window.lock() {
                Ok(mut w) => {
                    let wait = w.wait_ms(now);
                    if wait == 0 {
                        w.record(now);
                    }
                    wait
                }
                Err(_) => 0,
            };
            if wait == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        self.used_today.fetch_add(1, Ordering::SeqCst);
        Ok(permit)
    }

    /// Gives back the quota of a call that did not count (601/602/604/605/608/611).
    pub fn refund(&self) {
        let _ = self
            .used_today
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
    }

    /// The platform said 606/615: lower the rate for a while.
    pub fn slow_down(&self) {
        let now = self.mono_ms();
        if let Ok(mut w) = self.window.lock() {
            w.slow_down(now);
        }
    }

    /// The platform said 615: hold one in-flight slot back for two rate windows
    /// (never the last one: at most `concurrency - 1` are held at a time).
    /// Needs a tokio runtime.
    pub fn lower_concurrency(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let most = self.cfg.concurrency.max(1) - 1;
        let claimed = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| (h < most).then_some(h + 1));
        if claimed.is_err() {
            return;
        }
        let (sem, held) = (self.in_flight.clone(), self.held.clone());
        let hold = self.cfg.rate_window * 2;
        handle.spawn(async move {
            if let Ok(permit) = sem.acquire_owned().await {
                tokio::time::sleep(hold).await;
                drop(permit);
            }
            held.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// In-flight slots currently held back after 615s.
    pub fn held_back(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// The platform said 607: no calls until the next 00:00 US Central (or the
    /// next probe, when [`PacingConfig::quota_probe_interval`] is set).
    pub fn pause_for_day(&self) -> Paused {
        let now = self.clock.now_ms();
        let mut until = next_central_midnight_ms(now);
        if let Some(probe) = self.cfg.quota_probe_interval {
            let probe_ms = i64::try_from(probe.as_millis()).unwrap_or(i64::MAX);
            until = until.min(now.saturating_add(probe_ms.max(1)));
        }
        self.paused_until.store(until, Ordering::SeqCst);
        Paused { until_ms: until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn central_midnight_in_winter_and_summer() {
        // 2026-01-15T12:00:00Z (06:00 CST) → 2026-01-16T06:00:00Z
        assert_eq!(next_central_midnight_ms(1_768_478_400_000), 1_768_543_200_000);
        // 2026-07-15T12:00:00Z (07:00 CDT) → 2026-07-16T05:00:00Z
        assert_eq!(next_central_midnight_ms(1_784_116_800_000), 1_784_178_000_000);
        // fall back: 2026-11-01 is 25 h long; from 2026-11-01T05:00:00Z (00:00 CDT)
        assert_eq!(next_central_midnight_ms(1_793_509_200_000), 1_793_599_200_000);
    }

    #[tokio::test]
    async fn many_615s_never_hold_back_the_last_slot() {
        let cfg = PacingConfig {
            concurrency: 5,
            rate_window: Duration::from_secs(60),
            ..PacingConfig::default()
        };
        let pacer = Pacer::new(cfg, Arc::new(crate::clock::SystemClock));
        for _ in 0..10 {
            pacer.lower_concurrency();
        }
        assert_eq!(pacer.held_back(), 4);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let permit = tokio::time::timeout(Duration::from_secs(1), pacer.acquire()).await;
        assert!(matches!(permit, Ok(Ok(_))), "one slot is always left for calls");
        let single = Pacer::new(
            PacingConfig {
                concurrency: 1,
                ..PacingConfig::default()
            },
            Arc::new(crate::clock::SystemClock),
        );
        single.lower_concurrency();
        assert_eq!(single.held_back(), 0);
    }

    #[test]
    fn quota_pause_lasts_until_midnight_or_the_probe() {
        use crate::clock::ManualClock;
        let clock = Arc::new(ManualClock::new(1_768_478_400_000));
        let pacer = Pacer::new(PacingConfig::default(), clock.clone());
        assert_eq!(pacer.pause_for_day().until_ms, 1_768_543_200_000);
        clock.advance_ms(3_600_000);
        assert!(pacer.paused().is_some(), "still paused an hour later");
        clock.set_ms(1_768_543_200_000);
        assert!(pacer.paused().is_none(), "free at 00:00 US Central");

        let cfg = PacingConfig {
            quota_probe_interval: Some(Duration::from_secs(5)),
            ..PacingConfig::default()
        };
        let pacer = Pacer::new(cfg, clock.clone());
        let now = clock.now_ms();
        assert_eq!(pacer.pause_for_day().until_ms, now + 5_000);
        clock.advance_ms(5_000);
        assert!(pacer.paused().is_none(), "probe due");
    }
}
