//! Intake (group-committed durable enqueue) and the association worker.

use super::client::{MarketoClient, MarketoError, RecordOutcome};
use super::metrics::Metrics;
use super::store::{Enqueued, NewAssociation, Outcome, OutboxItem, Store, StoreError};
use crate::clock::{Clock, UnixMillis};
use crate::marketo::{Backoff, ErrorClass};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// What to do when a token is already associated with a different person
/// (a shared browser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Record a conflict and do not associate (default: keeps the first
    /// person's history from moving).
    #[default]
    Skip,
    /// Associate with the new person anyway (recorded as a conflict too).
    Reassociate,
}

impl ConflictPolicy {
    /// `skip` or `reassociate` (as recorded in the outbox and the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Skip => "skip",
            ConflictPolicy::Reassociate => "reassociate",
        }
    }
}

impl std::str::FromStr for ConflictPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(ConflictPolicy::Skip),
            "reassociate" => Ok(ConflictPolicy::Reassociate),
            _ => Err(format!("conflict policy must be skip or reassociate, not {s:?}")),
        }
    }
}

/// Worker tuning.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Items claimed per round (also the lead batch size; ≤ 300).
    pub batch: usize,
    /// Transient failures (outages, 5xx, 606/615, the network) dead-letter an
    /// item only once it has failed this many attempts (default 30) **and** is
    /// [`max_age`](Self::max_age) old: a long outage, or a stopped sidecar
    /// restarted on an old backlog, does not drop work early.
    pub max_attempts: u32,
    /// Age (since queued, revived or requeued) after which an item that only
    /// ever fails transiently is dead-lettered (`retries_exhausted:<reason>`;
    /// revivable). Default 7 days.
    pub max_age: Duration,
    /// Delay between attempts of one item.
    pub item_backoff: Backoff,
    /// How long work is put off, without counting an attempt, while Marketo
    /// fails for a setup reason (credentials, base URL, token endpoint).
    pub setup_retry: Duration,
    /// Longest idle wait between outbox polls.
    pub poll: Duration,
    /// What to do on a shared-browser conflict.
    pub conflict_policy: ConflictPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch: 300,
            max_attempts: 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
            item_backoff: Backoff {
                base_ms: 2_000,
                max_ms: 3_600_000,
                max_attempts: u32::MAX,
            },
            setup_retry: Duration::from_secs(60),
            poll: Duration::from_millis(200),
            conflict_policy: ConflictPolicy::Skip,
        }
    }
}

pub(crate) struct IntakeRequest {
    pub assoc: NewAssociation,
    pub reply: oneshot::Sender<Result<Enqueued, String>>,
}

/// Runs on its own thread: takes every request waiting and commits them in
/// one transaction (group commit), then answers each.
pub(crate) fn writer_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<IntakeRequest>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    const MAX_GROUP: usize = 4096;
    while let Some(first) = rx.blocking_recv() {
        let mut replies = Vec::with_capacity(64);
        let mut batch = Vec::with_capacity(64);
        batch.push(first.assoc);
        replies.push(first.reply);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => {
                    batch.push(r.assoc);
                    replies.push(r.reply);
                }
                Err(_) => break,
            }
        }
        let mut result = store.enqueue(&batch);
        if matches!(&result, Err(e) if e.is_retryable()) {
            std::thread::sleep(Duration::from_millis(20));
            result = store.enqueue(&batch);
        }
        match result {
            Ok(outcomes) => {
                let queued = outcomes.iter().filter(|o| **o == Enqueued::Queued).count();
                if queued > 0 {
                    metrics.queued(queued as u64);
                    wake.notify_one();
                }
                for (reply, o) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, n = batch.len(), "outbox enqueue failed");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&*s))
        .await
        .map_err(|_| StoreError::Closed)?
}

/// The association worker.
pub(crate) struct Worker {
    pub store: Arc<dyn Store>,
    pub client: Arc<MarketoClient>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub cfg: WorkerConfig,
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
}

/// Calls `call` on `batch`; when that fails permanently at the batch level
/// and the batch holds more than one email, calls it on each half instead, so
/// one bad record cannot fail the others. Each final part comes back with its
/// result.
async fn split_on_permanent<T, F, Fut>(
    batch: Vec<String>,
    call: F,
) -> Vec<(Vec<String>, Result<T, MarketoError>)>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = (Vec<String>, Result<T, MarketoError>)>,
{
    let mut done = Vec::new();
    let mut todo = vec![batch];
    while let Some(part) = todo.pop() {
        match call(part).await {
            (mut part, Err(e)) if e.class() == ErrorClass::Permanent && part.len() > 1 => {
                tracing::info!(n = part.len(), reason = %e.reason(), "batch refused; trying each half");
                let second = part.split_off(part.len() / 2);
                todo.push(second);
                todo.push(part);
            }
            finished => done.push(finished),
        }
    }
    done
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Worker {
    pub async fn run(mut self) {
        let mut logged_pause = None;
        loop {
            if *self.stop.borrow() {
                break;
            }
            if let Some(p) = self.client.pacer().paused() {
                if logged_pause != Some(p.until_ms) {
                    logged_pause = Some(p.until_ms);
                    let left = p.until_ms.saturating_sub(self.clock.now_ms());
                    tracing::warn!(until_ms = p.until_ms, left_ms = left, "Marketo calls paused until the daily reset");
                }
                if !self.idle(Duration::from_millis(50)).await {
                    break;
                }
                continue;
            }
            let mut stop = self.stop.clone();
            let round = tokio::select! {
                r = self.round() => r,
                // Graceful stop (or the handle dropped): drop the round (its calls
                // are cancelled; items marked in flight are checked against
                // Marketo on the next start).
                _ = stop.changed() => break,
            };
            let wait = match round {
                Ok(true) => continue,
                Ok(false) => match blocking(&self.store, |s| s.next_due()).await {
                    Ok(Some(at)) => {
                        let left = at.saturating_sub(self.clock.now_ms()).max(1);
                        Duration::from_millis(u64::try_from(left).unwrap_or(1)).min(self.cfg.poll)
                    }
                    _ => self.cfg.poll,
                },
                Err(e) => {
                    tracing::error!(error = %e, "worker round failed");
                    self.cfg.poll
                }
            };
            if !self.idle(wait).await {
                break;
            }
        }
    }

    /// Waits for new work, `d`, or a stop; `false` when the worker must stop
    /// (asked to, or its handle is gone and nobody can ask any more).
    async fn idle(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = self.wake.notified() => true,
            _ = tokio::time::sleep(d) => true,
            changed = self.stop.changed() => changed.is_ok() && !*self.stop.borrow(),
        }
    }

    /// Tracks whether Marketo currently fails for a setup reason: logged
    /// loudly once when it starts or changes, once when it is over, and shown
    /// in the metrics (`idtag_setup_problem`).
    fn note_setup(&self, problem: Option<&MarketoError>) {
        let reason = problem.map(MarketoError::reason);
        if !self.metrics.set_setup_problem(reason.as_deref()) {
            return;
        }
        match problem {
            Some(e) => tracing::error!(
                reason = %e.reason(),
                error = %e,
                "Marketo refuses calls for a setup reason (check MARKETO_BASE_URL and the API credentials); all work is put off, nothing is dead-lettered"
            ),
            None => tracing::info!("Marketo calls work again"),
        }
    }

    fn retry_at(&self, now: UnixMillis, attempts: u32) -> UnixMillis {
        let d = self.cfg.item_backoff.delay_ms(attempts, rand::random::<f64>());
        now.saturating_add(i64::try_from(d).unwrap_or(60_000))
    }

    fn failure_outcome(&self, item: &OutboxItem, err: &MarketoError) -> Outcome {
        let now = self.clock.now_ms();
        match err.class() {
            ErrorClass::Setup => {
                // Not the item's fault: no attempt counted, nothing dead-lettered.
                self.note_setup(Some(err));
                self.metrics.deferred(&err.reason());
                Outcome::Defer {
                    at_ms: now.saturating_add(ms(self.cfg.setup_retry)),
                }
            }
            ErrorClass::Quota => {
                self.metrics.deferred("quota");
                Outcome::Defer {
                    at_ms: err.retry_after().unwrap_or(now + 60_000),
                }
            }
            ErrorClass::Permanent => Outcome::Dead(err.reason()),
            _ if self.exhausted(item, now) => {
                Outcome::Dead(format!("retries_exhausted:{}", err.reason()))
            }
            _ => Outcome::Retry {
                at_ms: self.retry_at(now, item.attempts.saturating_add(1)),
                reason: err.reason(),
            },
        }
    }

    /// Whether one more failed attempt ends the item's retries: transient
    /// failures are shared by every item while they last, so they are bounded
    /// by the item's age as well as its attempts.
    fn exhausted(&self, item: &OutboxItem, now: UnixMillis) -> bool {
        item.attempts.saturating_add(1) >= self.cfg.max_attempts
            && now.saturating_sub(item.queued_at_ms) >= ms(self.cfg.max_age)
    }

    /// What a failed associate call makes of its item. `1004` says the lead id
    /// is stale (the lead was merged or deleted): it is forgotten, and the item
    /// looked up afresh while its email is known (within its retry bounds).
    fn associate_failure(&self, item: &OutboxItem, err: &MarketoError) -> Outcome {
        let now = self.clock.now_ms();
        match err {
            MarketoError::Api { code, .. } if code == "1004" => match &item.email {
                Some(email) if !self.exhausted(item, now) => Outcome::LeadGone {
                    email: Some(email.clone()),
                    at_ms: self.retry_at(now, item.attempts.saturating_add(1)),
                    reason: err.reason(),
                },
                Some(_) => Outcome::LeadGone {
                    email: None,
                    at_ms: now,
                    reason: format!("retries_exhausted:{}", err.reason()),
                },
                None => Outcome::LeadGone {
                    email: None,
                    at_ms: now,
                    reason: err.reason(),
                },
            },
            _ => self.failure_outcome(item, err),
        }
    }

    async fn record(&self, id: i64, outcome: Outcome) -> Result<(), StoreError> {
        match &outcome {
            Outcome::Dead(r) | Outcome::LeadGone { email: None, reason: r, .. } => self.metrics.dead(r),
            Outcome::Done => self.metrics.associated(),
            _ => {}
        }
        blocking(&self.store, move |s| s.record(id, &outcome)).await
    }

    /// Lead ids of `emails` (lower-cased), or why there is none: a batched
    /// lookup, then one createOrUpdate for those not found. A batch refused as
    /// a whole is split rather than failing every person in it.
    async fn resolve(&self, emails: Vec<String>) -> HashMap<String, Result<i64, MarketoError>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        let lookup = |part: Vec<String>| {
            let client = self.client.clone();
            async move {
                let r = client.lookup_by_email(&part).await;
                (part, r)
            }
        };
        for (part, r) in split_on_permanent(emails, lookup).await {
            match r {
                Ok(found) => {
                    self.note_setup(None);
                    let mut best: HashMap<String, i64> = HashMap::new();
                    for f in found {
                        let slot = best.entry(f.email.to_lowercase()).or_insert(f.id);
                        *slot = (*slot).min(f.id);
                    }
                    for email in part {
                        match best.get(&email) {
                            Some(id) => {
                                out.insert(email, Ok(*id));
                            }
                            None => missing.push(email),
                        }
                    }
                }
                Err(e) => out.extend(part.into_iter().map(|email| (email, Err(e.clone())))),
            }
        }
        if missing.is_empty() {
            return out;
        }
        let sync = |part: Vec<String>| {
            let client = self.client.clone();
            async move {
                let r = client.sync_by_email(&part).await;
                (part, r)
            }
        };
        for (part, r) in split_on_permanent(missing, sync).await {
            match r {
                Ok(outcomes) => {
                    for (email, o) in part.into_iter().zip(outcomes) {
                        let r = match o {
                            RecordOutcome::Ok { id, .. } => Ok(id),
                            RecordOutcome::Failed { code, message } => Err(MarketoError::Api { code, message }),
                        };
                        out.insert(email, r);
                    }
                }
                Err(e) => out.extend(part.into_iter().map(|email| (email, Err(e.clone())))),
            }
        }
        out
    }

    /// One round: claim due items, resolve their leads, associate. `Ok(false)` when idle.
    async fn round(&self) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let limit = self.cfg.batch.clamp(1, 300);
        let mut items = blocking(&self.store, move |s| s.due(now, limit)).await?;
        if items.is_empty() {
            return Ok(false);
        }
        // 1. resolve lead ids, serialised here (one worker): lookup, then create.
        let mut unresolved: BTreeMap<String, String> = BTreeMap::new();
        for i in &items {
            if i.lead_id.is_none() {
                if let Some(e) = &i.email {
                    unresolved.insert(e.to_lowercase(), i.person_key.clone());
                }
            }
        }
        let mut resolved: HashMap<String, i64> = HashMap::new();
        let mut failed: HashMap<String, MarketoError> = HashMap::new();
        if !unresolved.is_empty() {
            let emails: Vec<String> = unresolved.keys().cloned().collect();
            for (email, r) in self.resolve(emails).await {
                let Some(pk) = unresolved.get(&email) else { continue };
                match r {
                    Ok(id) => {
                        resolved.insert(pk.clone(), id);
                    }
                    Err(e) => {
                        failed.insert(pk.clone(), e);
                    }
                }
            }
            for (pk, id) in &resolved {
                let (pk, id) = (pk.clone(), *id);
                tracing::debug!(person = %pk, lead = id, "lead resolved");
                blocking(&self.store, move |s| s.set_lead(&pk, id)).await?;
            }
        }
        // 2. associate each new pair once (one item per token per round).
        let mut seen_tokens = HashSet::new();
        let mut calls = tokio::task::JoinSet::new();
        let mut to_call = Vec::new();
        for item in items.iter_mut() {
            if item.lead_id.is_none() {
                item.lead_id = resolved.get(&item.person_key).copied();
            }
            if let Some(err) = failed.get(&item.person_key) {
                let o = self.failure_outcome(item, err);
                self.record(item.id, o).await?;
                continue;
            }
            let Some(lead_id) = item.lead_id else {
                self.record(item.id, Outcome::Dead("no_identity".to_owned())).await?;
                continue;
            };
            if !seen_tokens.insert(item.token.clone()) {
                continue;
            }
            let token = item.token.clone();
            let owner = blocking(&self.store, move |s| s.token_owner(&token)).await?;
            if let Some(owner) = owner.filter(|o| *o != item.person_key) {
                tracing::warn!(person = %item.person_key, previous = %owner, "token already associated with another person");
                let (id, policy) = (item.id, self.cfg.conflict_policy.as_str());
                if blocking(&self.store, move |s| s.note_conflict(id, policy)).await? {
                    self.metrics.conflict(policy);
                }
                if self.cfg.conflict_policy == ConflictPolicy::Skip {
                    self.record(item.id, Outcome::Conflict("token_owned_by_other_person".to_owned()))
                        .await?;
                    continue;
                }
            }
            to_call.push((lead_id, item.clone()));
        }
        // At most `concurrency` calls are marked in flight at a time, so a crash
        // leaves only those few to be checked against Marketo on restart.
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.client.config().pacing.concurrency.max(1),
        ));
        for (lead_id, item) in to_call {
            let client = self.client.clone();
            let store = self.store.clone();
            let slots = slots.clone();
            calls.spawn(async move {
                let _slot = slots.acquire_owned().await;
                if item.in_flight {
                    // A call was started before a crash: ask Marketo before repeating it.
                    if let Ok(leads) = client.leads_with_cookie(&item.cookie_value).await {
                        if leads.contains(&lead_id) {
                            return (item, Ok(()));
                        }
                    }
                }
                let id = item.id;
                if let Err(e) = blocking(&store, move |s| s.mark_in_flight(&[id])).await {
                    return (item, Err(MarketoError::Transport(format!("store: {e}"))));
                }
                let r = client.associate(lead_id, &item.cookie_value).await;
                (item, r)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let Ok((item, r)) = joined else { continue };
            let outcome = match r {
                Ok(()) => {
                    tracing::debug!(person = %item.person_key, lead = ?item.lead_id, "associated");
                    self.note_setup(None);
                    Outcome::Done
                }
                Err(e) => {
                    tracing::info!(person = %item.person_key, reason = %e.reason(), "associate failed");
                    self.associate_failure(&item, &e)
                }
            };
            self.record(item.id, outcome).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::server::{MarketoConfig, MemoryStore};

    fn worker(stop: watch::Receiver<bool>) -> Worker {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = Arc::new(Metrics::default());
        let client = MarketoClient::new(
            MarketoConfig::new("http://127.0.0.1:9", "id", "secret"),
            clock.clone(),
            metrics.clone(),
        )
        .unwrap();
        Worker {
            store: Arc::new(MemoryStore::new()),
            client: Arc::new(client),
            clock,
            metrics,
            cfg: WorkerConfig {
                poll: Duration::from_millis(20),
                ..WorkerConfig::default()
            },
            wake: Arc::new(Notify::new()),
            stop,
        }
    }

    #[tokio::test]
    async fn the_worker_stops_when_its_handle_is_gone_even_while_paused() {
        let (tx, rx) = watch::channel(false);
        let w = worker(rx);
        w.client.pacer().pause_for_day();
        let task = tokio::spawn(w.run());
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stopped = task.is_finished();
        task.abort();
        assert!(stopped, "the worker kept looping with nobody left to stop it");
    }

    #[tokio::test]
    async fn a_failing_batch_is_split_until_the_culprit_is_alone() {
        let calls = std::sync::Mutex::new(0);
        let bad = "e@x".to_owned();
        let emails: Vec<String> = ["a@x", "b@x", "c@x", "d@x", "e@x", "f@x", "g@x"]
            .map(String::from)
            .to_vec();
        let parts = split_on_permanent(emails, |part: Vec<String>| {
            *calls.lock().unwrap() += 1;
            let r = if part.contains(&bad) {
                Err(MarketoError::Api {
                    code: "1003".into(),
                    message: String::new(),
                })
            } else {
                Ok(part.len())
            };
            async move { (part, r) }
        })
        .await;
        let failed: Vec<&Vec<String>> = parts.iter().filter(|(_, r)| r.is_err()).map(|(p, _)| p).collect();
        assert_eq!(failed, vec![&vec![bad.clone()]]);
        let ok: usize = parts.iter().filter_map(|(_, r)| r.as_ref().ok()).sum();
        assert_eq!(ok, 6);
        assert!(*calls.lock().unwrap() <= 7, "bisected, not one call per email");
        // a transient failure is not split: it is everyone's, and retried
        let parts = split_on_permanent(vec!["a@x".into(), "b@x".into()], |part: Vec<String>| async move {
            (part, Err::<(), _>(MarketoError::Transport("down".into())))
        })
        .await;
        assert_eq!(parts.len(), 1);
    }
}
