//! Intake (group-committed durable enqueue) and the association worker.

use super::client::{MarketoClient, MarketoError, RecordOutcome};
use super::metrics::Metrics;
use super::store::{Enqueued, NewAssociation, Outcome, OutboxItem, Store, StoreError};
use crate::clock::Clock;
use crate::marketo::{Backoff, ErrorClass};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Failed attempts before an item is dead-lettered (default 30: with the
    /// default backoff, about a day of outage).
    pub max_attempts: u32,
    /// Delay between attempts of one item.
    pub item_backoff: Backoff,
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
            item_backoff: Backoff {
                base_ms: 2_000,
                max_ms: 3_600_000,
                max_attempts: u32::MAX,
            },
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
                self.idle(Duration::from_millis(50)).await;
                continue;
            }
            let mut stop = self.stop.clone();
            let round = tokio::select! {
                r = self.round() => r,
                // Graceful stop: drop the round (its calls are cancelled; items
                // marked in flight are checked against Marketo on the next start).
                _ = stop.changed() => break,
            };
            match round {
                Ok(true) => continue,
                Ok(false) => {
                    let wait = match blocking(&self.store, |s| s.next_due()).await {
                        Ok(Some(at)) => {
                            let left = at.saturating_sub(self.clock.now_ms()).max(1);
                            Duration::from_millis(u64::try_from(left).unwrap_or(1)).min(self.cfg.poll)
                        }
                        _ => self.cfg.poll,
                    };
                    self.idle(wait).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "worker round failed");
                    self.idle(self.cfg.poll).await;
                }
            }
        }
    }

    async fn idle(&mut self, d: Duration) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.changed() => {}
        }
    }

    fn failure_outcome(&self, item: &OutboxItem, err: &MarketoError) -> Outcome {
        let now = self.clock.now_ms();
        if err.class() == ErrorClass::Setup {
            // Credentials refused, the token endpoint failing, an unexpected
            // HTTP 4xx: a configuration problem, not the item's fault.
            return Outcome::Defer { at_ms: now + 60_000 };
        }
        match err.class() {
            ErrorClass::Quota => Outcome::Defer {
                at_ms: err.retry_after().unwrap_or(now + 60_000),
            },
            c if c.is_retryable() || c == ErrorClass::Reauthenticate => {
                let attempts = item.attempts + 1;
                if attempts >= self.cfg.max_attempts {
                    Outcome::Dead(format!("retries_exhausted:{}", err.reason()))
                } else {
                    let d = self.cfg.item_backoff.delay_ms(attempts, rand::random::<f64>());
                    Outcome::Retry {
                        at_ms: now + i64::try_from(d).unwrap_or(60_000),
                        reason: err.reason(),
                    }
                }
            }
            _ => Outcome::Dead(err.reason()),
        }
    }

    async fn record(&self, id: i64, outcome: Outcome) -> Result<(), StoreError> {
        match &outcome {
            Outcome::Dead(r) => self.metrics.dead(r),
            Outcome::Done => self.metrics.associated(),
            _ => {}
        }
        blocking(&self.store, move |s| s.record(id, &outcome)).await
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
            match self.client.lookup_by_email(&emails).await {
                Ok(found) => {
                    let mut best: HashMap<String, i64> = HashMap::new();
                    for f in found {
                        let e = f.email.to_lowercase();
                        let slot = best.entry(e).or_insert(f.id);
                        *slot = (*slot).min(f.id);
                    }
                    for (email, id) in best {
                        if let Some(pk) = unresolved.get(&email) {
                            resolved.insert(pk.clone(), id);
                        }
                    }
                    let missing: Vec<String> = emails
                        .iter()
                        .filter(|e| unresolved.get(*e).is_some_and(|pk| !resolved.contains_key(pk)))
                        .cloned()
                        .collect();
                    if !missing.is_empty() {
                        match self.client.sync_by_email(&missing).await {
                            Ok(outcomes) => {
                                for (email, o) in missing.iter().zip(outcomes) {
                                    let Some(pk) = unresolved.get(email) else { continue };
                                    match o {
                                        RecordOutcome::Ok { id, .. } => {
                                            resolved.insert(pk.clone(), id);
                                        }
                                        RecordOutcome::Failed { code, message } => {
                                            failed.insert(pk.clone(), MarketoError::Api { code, message });
                                        }
                                    }
                                }
                            }
                            Err(e) => {
                                for email in &missing {
                                    if let Some(pk) = unresolved.get(email) {
                                        failed.insert(pk.clone(), e.clone());
                                    }
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    for pk in unresolved.values() {
                        failed.insert(pk.clone(), e.clone());
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
                match self.cfg.conflict_policy {
                    ConflictPolicy::Skip => {
                        self.metrics.conflict("skip");
                        self.record(item.id, Outcome::Conflict("token_owned_by_other_person".to_owned()))
                            .await?;
                        continue;
                    }
                    ConflictPolicy::Reassociate => self.metrics.conflict("reassociate"),
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
                    Outcome::Done
                }
                Err(e) => {
                    tracing::info!(person = %item.person_key, reason = %e.reason(), "associate failed");
                    self.failure_outcome(&item, &e)
                }
            };
            self.record(item.id, outcome).await?;
        }
        Ok(true)
    }
}
