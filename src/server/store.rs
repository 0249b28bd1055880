//! The durable outbox: a [`Store`] interface with an embedded SQLite store
//! (WAL) and an in-memory one for tests. A PostgreSQL store implements the
//! same trait (claims with `FOR UPDATE SKIP LOCKED`).

use crate::clock::UnixMillis;
use crate::tag_token::Event;
use crate::wire::Consent;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A lock was poisoned by a panic elsewhere.
    #[error("store lock poisoned")]
    Poisoned,
    /// The intake writer is gone (shutting down).
    #[error("store writer stopped")]
    Closed,
    /// Another process holds the store (see [`StoreLock`]).
    #[error("{0}")]
    Locked(String),
    /// The outbox holds work done against another Marketo instance (see
    /// [`Store::bind_instance`]).
    #[error(
        "this outbox holds work for the Marketo instance {recorded}, not {wanted}: pairs done \
         there would be skipped here as duplicates and its lead ids mean other leads; use \
         another store (or delete this one if that work does not matter)"
    )]
    OtherInstance {
        /// The instance the outbox was used with.
        recorded: String,
        /// The instance this run talks to.
        wanted: String,
    },
}

impl StoreError {
    /// Whether trying again may succeed (busy database).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Db(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }
}

/// State of an outbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemState {
    /// Waiting to be associated.
    Pending,
    /// Associated.
    Done,
    /// Failed permanently (reason recorded).
    Dead,
    /// Not associated: the token belongs to another person (shared browser).
    Conflict,
}

impl ItemState {
    /// `pending`, `done`, `dead`, `conflict`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Done => "done",
            ItemState::Dead => "dead",
            ItemState::Conflict => "conflict",
        }
    }

    fn parse(s: &str) -> ItemState {
        match s {
            "done" => ItemState::Done,
            "dead" => ItemState::Dead,
            "conflict" => ItemState::Conflict,
            _ => ItemState::Pending,
        }
    }
}

/// An association to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAssociation {
    /// The visitor token (`_mch-…`): the dedup key with the person.
    pub token: String,
    /// The whole `_mkto_trk` value (sent to Marketo).
    pub cookie_value: String,
    /// The person's pseudonymous key (SHA-256 of the normalised email).
    pub person_key: String,
    /// The normalised email (kept until the lead id is known).
    pub email: String,
    /// Login or signup.
    pub event: Event,
    /// Consent as given.
    pub consent: Consent,
    /// When the cookie was captured (Unix ms).
    pub captured_at_ms: UnixMillis,
}

/// The result of enqueueing one association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new outbox item.
    Queued,
    /// The (token, person) pair was already in the outbox.
    Duplicate,
}

/// One outbox item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Item id.
    pub id: i64,
    /// Visitor token.
    pub token: String,
    /// Whole `_mkto_trk` value.
    pub cookie_value: String,
    /// Pseudonymous person key.
    pub person_key: String,
    /// Email, until the lead is resolved.
    pub email: Option<String>,
    /// Marketo lead id, once resolved.
    pub lead_id: Option<i64>,
    /// Login or signup.
    pub event: Event,
    /// Consent.
    pub consent: Consent,
    /// Capture time (Unix ms).
    pub captured_at_ms: UnixMillis,
    /// When the item was queued, or last revived or requeued (Unix ms): the
    /// start of its age, which bounds retries of transient failures.
    pub queued_at_ms: UnixMillis,
    /// State.
    pub state: ItemState,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before (Unix ms).
    pub next_attempt_ms: UnixMillis,
    /// Last failure reason.
    pub reason: Option<String>,
    /// An associate call was started and its outcome never recorded (a crash):
    /// check Marketo before calling again.
    pub in_flight: bool,
}

/// What became of an item after a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Associated.
    Done,
    /// Failed permanently.
    Dead(String),
    /// Shared-browser conflict, not associated.
    Conflict(String),
    /// Transient failure: try again at the time given (counts an attempt).
    Retry {
        /// Not before (Unix ms).
        at_ms: UnixMillis,
        /// Why.
        reason: String,
    },
    /// Not tried (e.g. quota pause): wait until the time given, no attempt counted.
    Defer {
        /// Not before (Unix ms).
        at_ms: UnixMillis,
    },
    /// Marketo says the item's lead is gone (merged or deleted): the person's
    /// cached lead id is forgotten (when it is the item's), and so is the item's.
    /// With the email still known the item is looked up again at `at_ms` (an
    /// attempt counted); without, it is dead-lettered with `reason` (revived
    /// when the person logs in again with that browser).
    LeadGone {
        /// The item's email, when still known.
        email: Option<String>,
        /// Not before (Unix ms), for the new lookup.
        at_ms: UnixMillis,
        /// Why (`"1004"`).
        reason: String,
    },
}

/// Dead items that [`Store::enqueue`] revives when their (token, person) pair
/// is enqueued again, and whose email is kept while they have no lead id:
/// transient failures that ran out of time, and items that lost their lead.
/// Other reasons (1012 invalid cookie, …) are final.
pub fn is_revivable(reason: &str) -> bool {
    reason.starts_with("retries_exhausted:") || reason == "1004" || reason == "no_identity"
}

/// Whether a dead item's `reason` is selected by the filter `want` of
/// [`Store::requeue`]: equal, or `want` is its prefix before a `:`
/// (`retries_exhausted` selects `retries_exhausted:http_502`).
pub fn reason_matches(reason: &str, want: &str) -> bool {
    reason == want
        || reason
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// What an enqueue of a pair already in the outbox does to its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Dead for a revivable reason: pending again, with the identity given now.
    Revive,
    /// Pending but with neither lead id nor email left: take the email given now.
    GiveIdentity,
    /// Nothing to do (a plain duplicate).
    Nothing,
}

fn on_repeat(state: ItemState, reason: Option<&str>, lead_id: Option<i64>, email: Option<&str>) -> Repeat {
    match state {
        ItemState::Dead if reason.is_some_and(is_revivable) => Repeat::Revive,
        ItemState::Pending if lead_id.is_none() && email.is_none() => Repeat::GiveIdentity,
        _ => Repeat::Nothing,
    }
}

/// How a dead item is delivered once requeued: with the person's cached lead
/// id, else its own, else its email; `None` when it has neither left.
fn requeue_identity(
    cached: Option<i64>,
    lead_id: Option<i64>,
    email: Option<String>,
) -> Option<(Option<i64>, Option<String>)> {
    match cached.or(lead_id) {
        Some(lead) => Some((Some(lead), None)),
        None => email.map(|e| (None, Some(e))),
    }
}

/// What [`Store::requeue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Dead items made pending again.
    pub requeued: u64,
    /// Dead items selected but left dead: neither a lead id nor an email is
    /// known to deliver them with (they revive at the person's next login
    /// with that browser, which brings the email).
    pub undeliverable: u64,
}

/// Outbox figures for `idtag status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Items by state.
    pub counts: BTreeMap<&'static str, u64>,
    /// Capture time of the oldest pending item.
    pub oldest_pending_ms: Option<UnixMillis>,
    /// Dead items by reason.
    pub dead_reasons: BTreeMap<String, u64>,
    /// Shared-browser conflicts recorded, by the policy applied (`skip`, `reassociate`).
    pub conflicts: BTreeMap<String, u64>,
}

impl StatusReport {
    /// Pending items.
    pub fn pending(&self) -> u64 {
        self.counts.get("pending").copied().unwrap_or(0)
    }
}

/// The outbox. Calls are synchronous and short; async callers run them on a
/// blocking thread. Implementations must make `enqueue` durable before returning.
///
/// The embedded stores assume one worker per store: `due` reads without a lease,
/// and lead resolution is serialised by that single worker. A store shared by
/// several replicas (PostgreSQL) should make `due` a claim
/// (`FOR UPDATE SKIP LOCKED`, pushing `next_attempt_ms` forward by a lease) and
/// serialise lead creation per email (e.g. an advisory lock on the person key).
pub trait Store: Send + Sync + 'static {
    /// Inserts a batch in one transaction (a group commit), deduplicating on
    /// (token, person). A pair already present whose item is dead for a
    /// revivable reason ([`is_revivable`]) is pending again (`Queued`).
    fn enqueue(&self, batch: &[NewAssociation]) -> Result<Vec<Enqueued>, StoreError>;
    /// Up to `limit` pending items due at `now_ms`, oldest first.
    fn due(&self, now_ms: UnixMillis, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;
    /// The earliest `next_attempt_ms` of any pending item.
    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError>;
    /// The lead id known for a person.
    fn lead_of(&self, person_key: &str) -> Result<Option<i64>, StoreError>;
    /// Records a person's lead id, sets it on their items and drops their email.
    fn set_lead(&self, person_key: &str, lead_id: i64) -> Result<(), StoreError>;
    /// The person a token was last associated with (a `done` item).
    fn token_owner(&self, token: &str) -> Result<Option<String>, StoreError>;
    /// Marks items whose associate call is about to start (cleared by `record`).
    fn mark_in_flight(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Records what became of an item.
    fn record(&self, id: i64, outcome: &Outcome) -> Result<(), StoreError>;
    /// Records that the item's token belonged to another person and `policy`
    /// was applied; `true` the first time for this item.
    fn note_conflict(&self, id: i64, policy: &str) -> Result<bool, StoreError>;
    /// Makes dead items pending again (those whose reason matches `reason`,
    /// see [`reason_matches`]; all with `None`), attempts reset, their age
    /// starting at `now_ms`.
    fn requeue(&self, reason: Option<&str>, now_ms: UnixMillis) -> Result<Requeued, StoreError>;
    /// Counts by state, oldest pending, dead reasons, conflicts.
    fn status(&self) -> Result<StatusReport, StoreError>;
    /// Ties the outbox to one Marketo instance (its [`instance_id`]): recorded
    /// on first use; another instance later is refused
    /// ([`StoreError::OtherInstance`]), because the outbox's done pairs and
    /// lead ids are facts about the instance they were made on.
    fn bind_instance(&self, instance: &str) -> Result<(), StoreError>;
}

/// What an outbox is tied to for a Marketo REST base URL: its scheme, host and
/// port (lowercase; the path is left out, so fixing a wrong path keeps the
/// outbox), or `local` for any stand-in on a loopback address (the emulator,
/// whatever port it has this time).
///
/// ```
/// use idtag::server::instance_id;
/// assert_eq!(instance_id("https://123-ABC-456.mktorest.com/rest"), "https://123-abc-456.mktorest.com");
/// assert_eq!(instance_id("http://127.0.0.1:40123"), "local");
/// assert_eq!(instance_id("http://localhost:8080/"), "local");
/// ```
pub fn instance_id(base_url: &str) -> String {
    let Ok(u) = reqwest::Url::parse(base_url.trim()) else {
        return base_url.trim().to_ascii_lowercase();
    };
    let host = u.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return "local".into();
    }
    let mut id = format!("{}://{host}", u.scheme());
    if let Some(port) = u.port() {
        id.push_str(&format!(":{port}"));
    }
    id.to_ascii_lowercase()
}

/// The check behind [`Store::bind_instance`] once the recorded instance is read.
fn check_instance(recorded: Option<String>, wanted: &str) -> Result<(), StoreError> {
    match recorded {
        Some(r) if r != wanted => Err(StoreError::OtherInstance {
            recorded: r,
            wanted: wanted.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn event_str(e: Event) -> &'static str {
    e.as_str()
}

fn parse_event(s: &str) -> Event {
    if s == "signup" {
        Event::Signup
    } else {
        Event::Login
    }
}

fn parse_consent(s: &str) -> Consent {
    match s {
        "denied" => Consent::Denied,
        "pending" => Consent::Pending,
        _ => Consent::Granted,
    }
}

// ---------------------------------------------------------------- in memory

#[derive(Debug, Default)]
struct MemInner {
    items: BTreeMap<i64, OutboxItem>,
    conflicts: HashMap<i64, String>,
    pairs: HashMap<(String, String), i64>,
    leads: HashMap<String, i64>,
    owners: HashMap<String, String>,
    next_id: i64,
    instance: Option<String>,
}

/// An outbox in memory (tests; not durable).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemInner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn enqueue(&self, batch: &[NewAssociation]) -> Result<Vec<Enqueued>, StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        let mut out = Vec::with_capacity(batch.len());
        for a in batch {
            let key = (a.token.clone(), a.person_key.clone());
            let lead_id = g.leads.get(&a.person_key).copied();
            if let Some(id) = g.pairs.get(&key).copied() {
                let Some(item) = g.items.get_mut(&id) else {
                    continue;
                };
                let repeat = on_repeat(item.state, item.reason.as_deref(), item.lead_id, item.email.as_deref());
                if repeat != Repeat::Nothing {
                    item.lead_id = lead_id;
                    item.email = lead_id.is_none().then(|| a.email.clone());
                }
                if repeat == Repeat::Revive {
                    item.state = ItemState::Pending;
                    item.attempts = 0;
                    item.next_attempt_ms = 0;
                    item.reason = None;
                    item.in_flight = false;
                    item.captured_at_ms = a.captured_at_ms;
                    item.queued_at_ms = a.captured_at_ms;
                    out.push(Enqueued::Queued);
                } else {
                    out.push(Enqueued::Duplicate);
                }
                continue;
            }
            g.next_id += 1;
            let id = g.next_id;
            g.pairs.insert(key, id);
            g.items.insert(
                id,
                OutboxItem {
                    id,
                    token: a.token.clone(),
                    cookie_value: a.cookie_value.clone(),
                    person_key: a.person_key.clone(),
                    email: lead_id.is_none().then(|| a.email.clone()),
                    lead_id,
                    event: a.event,
                    consent: a.consent,
                    captured_at_ms: a.captured_at_ms,
                    queued_at_ms: a.captured_at_ms,
                    state: ItemState::Pending,
                    attempts: 0,
                    next_attempt_ms: 0,
                    reason: None,
                    in_flight: false,
                },
            );
            out.push(Enqueued::Queued);
        }
        Ok(out)
    }

    fn due(&self, now_ms: UnixMillis, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(g.items
            .values()
            .filter(|i| i.state == ItemState::Pending && i.next_attempt_ms <= now_ms)
            .take(limit)
            .cloned()
            .collect())
    }

    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        let g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(g.items
            .values()
            .filter(|i| i.state == ItemState::Pending)
            .map(|i| i.next_attempt_ms)
            .min())
    }

    fn lead_of(&self, person_key: &str) -> Result<Option<i64>, StoreError> {
        let g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(g.leads.get(person_key).copied())
    }

    fn set_lead(&self, person_key: &str, lead_id: i64) -> Result<(), StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        g.leads.insert(person_key.to_owned(), lead_id);
        for i in g.items.values_mut() {
            if i.person_key == person_key {
                i.lead_id = Some(lead_id);
                i.email = None;
            }
        }
        Ok(())
    }

    fn token_owner(&self, token: &str) -> Result<Option<String>, StoreError> {
        let g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(g.owners.get(token).cloned())
    }

    fn mark_in_flight(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        for id in ids {
            if let Some(i) = g.items.get_mut(id) {
                i.in_flight = true;
            }
        }
        Ok(())
    }

    fn record(&self, id: i64, outcome: &Outcome) -> Result<(), StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        let Some(item) = g.items.get_mut(&id) else {
            return Ok(());
        };
        item.in_flight = false;
        let mut owner = None;
        let mut forget = None;
        match outcome {
            Outcome::Done => {
                item.state = ItemState::Done;
                item.reason = None;
                owner = Some((item.token.clone(), item.person_key.clone()));
            }
            Outcome::Dead(r) => {
                item.state = ItemState::Dead;
                item.reason = Some(r.clone());
                if !is_revivable(r) {
                    item.email = None;
                }
            }
            Outcome::Conflict(r) => {
                item.state = ItemState::Conflict;
                item.reason = Some(r.clone());
                item.email = None;
            }
            Outcome::Retry { at_ms, reason } => {
                item.attempts += 1;
                item.next_attempt_ms = *at_ms;
                item.reason = Some(reason.clone());
            }
            Outcome::Defer { at_ms } => item.next_attempt_ms = *at_ms,
            Outcome::LeadGone { email, at_ms, reason } => {
                forget = Some((item.person_key.clone(), item.lead_id.take()));
                item.reason = Some(reason.clone());
                match email {
                    Some(e) => {
                        item.email = Some(e.clone());
                        item.attempts += 1;
                        item.next_attempt_ms = *at_ms;
                    }
                    None => {
                        item.state = ItemState::Dead;
                        item.email = None;
                    }
                }
            }
        }
        if let Some((t, p)) = owner {
            g.owners.insert(t, p);
        }
        if let Some((person, Some(stale))) = forget {
            if g.leads.get(&person) == Some(&stale) {
                g.leads.remove(&person);
            }
            for i in g.items.values_mut() {
                if i.person_key == person && i.state == ItemState::Pending && i.lead_id == Some(stale) {
                    i.lead_id = None;
                }
            }
        }
        Ok(())
    }

    fn note_conflict(&self, id: i64, policy: &str) -> Result<bool, StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        if !g.items.contains_key(&id) || g.conflicts.contains_key(&id) {
            return Ok(false);
        }
        g.conflicts.insert(id, policy.to_owned());
        Ok(true)
    }

    fn requeue(&self, reason: Option<&str>, now_ms: UnixMillis) -> Result<Requeued, StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        let g = &mut *g;
        let mut r = Requeued::default();
        for item in g.items.values_mut() {
            let selected = item.state == ItemState::Dead
                && reason.is_none_or(|want| reason_matches(item.reason.as_deref().unwrap_or(""), want));
            if !selected {
                continue;
            }
            let cached = g.leads.get(&item.person_key).copied();
            match requeue_identity(cached, item.lead_id, item.email.clone()) {
                Some((lead_id, email)) => {
                    item.lead_id = lead_id;
                    item.email = email;
                    item.state = ItemState::Pending;
                    item.attempts = 0;
                    item.next_attempt_ms = 0;
                    item.reason = None;
                    item.in_flight = false;
                    item.queued_at_ms = now_ms;
                    r.requeued += 1;
                }
                None => r.undeliverable += 1,
            }
        }
        Ok(r)
    }

    fn bind_instance(&self, instance: &str) -> Result<(), StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        check_instance(g.instance.clone(), instance)?;
        g.instance = Some(instance.to_owned());
        Ok(())
    }

    fn status(&self) -> Result<StatusReport, StoreError> {
        let g = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        let mut r = StatusReport::default();
        for i in g.items.values() {
            *r.counts.entry(i.state.as_str()).or_insert(0) += 1;
            if i.state == ItemState::Pending {
                r.oldest_pending_ms = Some(
                    r.oldest_pending_ms
                        .map_or(i.captured_at_ms, |o| o.min(i.captured_at_ms)),
                );
            }
            if i.state == ItemState::Dead {
                *r.dead_reasons
                    .entry(i.reason.clone().unwrap_or_default())
                    .or_insert(0) += 1;
            }
        }
        for policy in g.conflicts.values() {
            *r.conflicts.entry(policy.clone()).or_insert(0) += 1;
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------- SQLite

/// The embedded outbox: one SQLite file in WAL mode, `synchronous=FULL`
/// (each group commit is on disk before its requests are acknowledged).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL,
    cookie_value TEXT NOT NULL,
    person_key TEXT NOT NULL,
    email TEXT,
    lead_id INTEGER,
    event TEXT NOT NULL,
    consent TEXT NOT NULL,
    captured_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    in_flight INTEGER NOT NULL DEFAULT 0,
    queued_at_ms INTEGER NOT NULL DEFAULT 0,
    conflict TEXT,
    UNIQUE (token, person_key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS outbox_person ON outbox (person_key);
CREATE TABLE IF NOT EXISTS leads (
    person_key TEXT PRIMARY KEY,
    lead_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS token_owners (
    token TEXT PRIMARY KEY,
    person_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// Opens the store read-only-ish for reports (same schema, no writes of its own).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// An exclusive advisory lock on an outbox file (`<store>.lock` next to it),
/// taken by the one process that works that outbox (`idtag serve`): the
/// embedded stores assume a single worker. Released when dropped or when the
/// process ends, however it ends. Reports (`idtag status`) need no lock.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

impl StoreLock {
    /// Takes the lock for the store at `store_path`, failing at once
    /// ([`StoreError::Locked`]) when another process holds it.
    pub fn acquire(store_path: impl AsRef<Path>) -> Result<StoreLock, StoreError> {
        let mut name = store_path.as_ref().as_os_str().to_owned();
        name.push(".lock");
        let path = std::path::PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Locked(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
                "another process is working the outbox {} (it holds {}): one worker per store",
                store_path.as_ref().display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Locked(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }
}

/// Adds the columns later versions introduced to an outbox made by an earlier one.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mut st = conn.prepare("SELECT name FROM pragma_table_info('outbox')")?;
    let columns = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let has = |c: &str| columns.iter().any(|x| x == c);
    if !has("queued_at_ms") {
        conn.execute_batch(
            "ALTER TABLE outbox ADD COLUMN queued_at_ms INTEGER NOT NULL DEFAULT 0;
             UPDATE outbox SET queued_at_ms = captured_at_ms;",
        )?;
    }
    if !has("conflict") {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN conflict TEXT;")?;
    }
    Ok(())
}

const ITEM_COLUMNS: &str = "id, token, cookie_value, person_key, email, lead_id, event, consent, captured_at_ms,
    state, attempts, next_attempt_ms, reason, in_flight, queued_at_ms";

fn row_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxItem> {
    Ok(OutboxItem {
        id: r.get(0)?,
        token: r.get(1)?,
        cookie_value: r.get(2)?,
        person_key: r.get(3)?,
        email: r.get(4)?,
        lead_id: r.get(5)?,
        event: parse_event(&r.get::<_, String>(6)?),
        consent: parse_consent(&r.get::<_, String>(7)?),
        captured_at_ms: r.get(8)?,
        state: ItemState::parse(&r.get::<_, String>(9)?),
        attempts: r.get(10)?,
        next_attempt_ms: r.get(11)?,
        reason: r.get(12)?,
        in_flight: r.get::<_, i64>(13)? != 0,
        queued_at_ms: r.get(14)?,
    })
}

impl Store for SqliteStore {
    fn enqueue(&self, batch: &[NewAssociation]) -> Result<Vec<Enqueued>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut lead = tx.prepare_cached("SELECT lead_id FROM leads WHERE person_key = ?1")?;
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (token, cookie_value, person_key, email, lead_id, event, consent, captured_at_ms, queued_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            )?;
            let mut existing = tx.prepare_cached(
                "SELECT id, state, reason, lead_id, email FROM outbox WHERE token = ?1 AND person_key = ?2",
            )?;
            let mut identity =
                tx.prepare_cached("UPDATE outbox SET lead_id = ?2, email = ?3 WHERE id = ?1")?;
            let mut revive = tx.prepare_cached(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = 0, reason = NULL,
                        in_flight = 0, captured_at_ms = ?2, queued_at_ms = ?2
                 WHERE id = ?1",
            )?;
            for a in batch {
                let lead_id: Option<i64> = lead
                    .query_row(params![a.person_key], |r| r.get(0))
                    .optional()?;
                let email = lead_id.is_none().then_some(a.email.as_str());
                let n = ins.execute(params![
                    a.token,
                    a.cookie_value,
                    a.person_key,
                    email,
                    lead_id,
                    event_str(a.event),
                    a.consent.as_str(),
                    a.captured_at_ms
                ])?;
                if n == 1 {
                    out.push(Enqueued::Queued);
                    continue;
                }
                let repeat = existing
                    .query_row(params![a.token, a.person_key], |r| {
                        let state = ItemState::parse(&r.get::<_, String>(1)?);
                        let reason: Option<String> = r.get(2)?;
                        let old_lead: Option<i64> = r.get(3)?;
                        let old_email: Option<String> = r.get(4)?;
                        Ok((
                            r.get::<_, i64>(0)?,
                            on_repeat(state, reason.as_deref(), old_lead, old_email.as_deref()),
                        ))
                    })
                    .optional()?;
                let Some((id, repeat)) = repeat else {
                    out.push(Enqueued::Duplicate);
                    continue;
                };
                if repeat != Repeat::Nothing {
                    identity.execute(params![id, lead_id, email])?;
                }
                if repeat == Repeat::Revive {
                    revive.execute(params![id, a.captured_at_ms])?;
                    out.push(Enqueued::Queued);
                } else {
                    out.push(Enqueued::Duplicate);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn due(&self, now_ms: UnixMillis, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM outbox
             WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = st.query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], row_item)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn next_due(&self) -> Result<Option<UnixMillis>, StoreError> {
        let conn = self.conn()?;
        Ok(conn.query_row(
            "SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    fn lead_of(&self, person_key: &str) -> Result<Option<i64>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT lead_id FROM leads WHERE person_key = ?1",
                params![person_key],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn set_lead(&self, person_key: &str, lead_id: i64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO leads (person_key, lead_id) VALUES (?1, ?2)
             ON CONFLICT (person_key) DO UPDATE SET lead_id = excluded.lead_id",
            params![person_key, lead_id],
        )?;
        tx.execute(
            "UPDATE outbox SET lead_id = ?2, email = NULL WHERE person_key = ?1",
            params![person_key, lead_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn token_owner(&self, token: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT person_key FROM token_owners WHERE token = ?1",
                params![token],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn mark_in_flight(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("UPDATE outbox SET in_flight = 1 WHERE id = ?1")?;
            for id in ids {
                st.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn record(&self, id: i64, outcome: &Outcome) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute("UPDATE outbox SET in_flight = 0 WHERE id = ?1", params![id])?;
        match outcome {
            Outcome::Done => {
                tx.execute(
                    "UPDATE outbox SET state = 'done', reason = NULL, email = NULL WHERE id = ?1",
                    params![id],
                )?;
                tx.execute(
                    "INSERT INTO token_owners (token, person_key)
                     SELECT token, person_key FROM outbox WHERE id = ?1
                     ON CONFLICT (token) DO UPDATE SET person_key = excluded.person_key",
                    params![id],
                )?;
            }
            Outcome::Dead(r) => {
                // A revivable item keeps its email while it has no lead id: it
                // is needed to deliver the item once revived or requeued.
                tx.execute(
                    "UPDATE outbox SET state = 'dead', reason = ?2,
                            email = CASE WHEN ?3 THEN email ELSE NULL END
                     WHERE id = ?1",
                    params![id, r, is_revivable(r)],
                )?;
            }
            Outcome::Conflict(r) => {
                tx.execute(
                    "UPDATE outbox SET state = 'conflict', reason = ?2, email = NULL WHERE id = ?1",
                    params![id, r],
                )?;
            }
            Outcome::Retry { at_ms, reason } => {
                tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, reason = ?3 WHERE id = ?1",
                    params![id, at_ms, reason],
                )?;
            }
            Outcome::Defer { at_ms } => {
                tx.execute(
                    "UPDATE outbox SET next_attempt_ms = ?2 WHERE id = ?1",
                    params![id, at_ms],
                )?;
            }
            Outcome::LeadGone { email, at_ms, reason } => {
                let stale: Option<(String, Option<i64>)> = tx
                    .query_row(
                        "SELECT person_key, lead_id FROM outbox WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((person, Some(lead))) = stale {
                    tx.execute(
                        "DELETE FROM leads WHERE person_key = ?1 AND lead_id = ?2",
                        params![person, lead],
                    )?;
                    tx.execute(
                        "UPDATE outbox SET lead_id = NULL
                         WHERE person_key = ?1 AND lead_id = ?2 AND state = 'pending'",
                        params![person, lead],
                    )?;
                }
                match email {
                    Some(e) => tx.execute(
                        "UPDATE outbox SET lead_id = NULL, email = ?2, attempts = attempts + 1,
                                next_attempt_ms = ?3, reason = ?4
                         WHERE id = ?1",
                        params![id, e, at_ms, reason],
                    )?,
                    None => tx.execute(
                        "UPDATE outbox SET state = 'dead', lead_id = NULL, email = NULL, reason = ?2
                         WHERE id = ?1",
                        params![id, reason],
                    )?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn note_conflict(&self, id: i64, policy: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE outbox SET conflict = ?2 WHERE id = ?1 AND conflict IS NULL",
            params![id, policy],
        )?;
        Ok(n == 1)
    }

    fn requeue(&self, reason: Option<&str>, now_ms: UnixMillis) -> Result<Requeued, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let mut r = Requeued::default();
        {
            let mut dead = tx.prepare(
                "SELECT o.id, COALESCE(o.reason, ''), l.lead_id, o.lead_id, o.email
                 FROM outbox o LEFT JOIN leads l ON l.person_key = o.person_key
                 WHERE o.state = 'dead'",
            )?;
            let rows = dead
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut pending = tx.prepare(
                "UPDATE outbox SET state = 'pending', lead_id = ?2, email = ?3, attempts = 0,
                        next_attempt_ms = 0, reason = NULL, in_flight = 0, queued_at_ms = ?4
                 WHERE id = ?1",
            )?;
            for (id, why, cached, lead_id, email) in rows {
                if reason.is_some_and(|want| !reason_matches(&why, want)) {
                    continue;
                }
                match requeue_identity(cached, lead_id, email) {
                    Some((lead_id, email)) => {
                        pending.execute(params![id, lead_id, email, now_ms])?;
                        r.requeued += 1;
                    }
                    None => r.undeliverable += 1,
                }
            }
        }
        tx.commit()?;
        Ok(r)
    }

    fn bind_instance(&self, instance: &str) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let recorded = conn
            .query_row("SELECT value FROM meta WHERE key = 'marketo_instance'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?;
        check_instance(recorded, instance)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('marketo_instance', ?1)",
            [instance],
        )?;
        Ok(())
    }

    fn status(&self) -> Result<StatusReport, StoreError> {
        let conn = self.conn()?;
        let mut r = StatusReport::default();
        let mut st = conn.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
        let rows = st.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
        for row in rows {
            let (s, n) = row?;
            r.counts
                .insert(ItemState::parse(&s).as_str(), u64::try_from(n).unwrap_or(0));
        }
        r.oldest_pending_ms = conn.query_row(
            "SELECT MIN(captured_at_ms) FROM outbox WHERE state = 'pending'",
            [],
            |row| row.get(0),
        )?;
        let mut st = conn.prepare(
            "SELECT COALESCE(reason, ''), COUNT(*) FROM outbox WHERE state = 'dead' GROUP BY reason",
        )?;
        let rows = st.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
        for row in rows {
            let (s, n) = row?;
            r.dead_reasons.insert(s, u64::try_from(n).unwrap_or(0));
        }
        let mut st = conn.prepare(
            "SELECT conflict, COUNT(*) FROM outbox WHERE conflict IS NOT NULL GROUP BY conflict",
        )?;
        let rows = st.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
        for row in rows {
            let (s, n) = row?;
            r.conflicts.insert(s, u64::try_from(n).unwrap_or(0));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assoc(token: &str, person: &str) -> NewAssociation {
        NewAssociation {
            token: token.into(),
            cookie_value: format!("id:123-ABC-456&token:{token}"),
            person_key: person.into(),
            email: format!("{person}@example.com"),
            event: Event::Login,
            consent: Consent::Granted,
            captured_at_ms: 5,
        }
    }

    #[test]
    fn an_outbox_serves_one_instance() {
        let dir = std::env::temp_dir().join(format!("idtag-inst-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("o.db");
        let mem = MemoryStore::new();
        let sql = SqliteStore::open(&path).unwrap();
        for s in [&mem as &dyn Store, &sql] {
            s.bind_instance("local").unwrap();
            s.bind_instance("local").unwrap();
            let e = s.bind_instance("https://x.mktorest.com").unwrap_err();
            assert!(matches!(e, StoreError::OtherInstance { .. }), "{e}");
            assert!(e.to_string().contains("instance local, not https://x.mktorest.com"));
        }
        drop(sql);
        let again = SqliteStore::open(&path).unwrap();
        assert!(again.bind_instance("https://x.mktorest.com").is_err(), "kept on disk");
        again.bind_instance("local").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(instance_id("http://[::1]:9/"), "local");
        assert_eq!(instance_id("http://127.5.0.1"), "local");
        assert_eq!(instance_id("HTTPS://AB.mktorest.com:8443/x"), "https://ab.mktorest.com:8443");
        assert_eq!(instance_id("not a url"), "not a url");
    }

    fn exercise(s: &dyn Store) {
        let r = s
            .enqueue(&[assoc("t1", "p1"), assoc("t1", "p1"), assoc("t2", "p1")])
            .unwrap();
        assert_eq!(r, vec![Enqueued::Queued, Enqueued::Duplicate, Enqueued::Queued]);
        let due = s.due(0, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].email.as_deref(), Some("p1@example.com"));
        s.set_lead("p1", 77).unwrap();
        let due = s.due(0, 10).unwrap();
        assert!(due.iter().all(|i| i.email.is_none() && i.lead_id == Some(77)));
        s.record(due[0].id, &Outcome::Done).unwrap();
        s.record(
            due[1].id,
            &Outcome::Retry {
                at_ms: 100,
                reason: "606".into(),
            },
        )
        .unwrap();
        assert_eq!(s.token_owner("t1").unwrap().as_deref(), Some("p1"));
        assert_eq!(s.due(50, 10).unwrap().len(), 0);
        assert_eq!(s.next_due().unwrap(), Some(100));
        s.record(due[1].id, &Outcome::Dead("1012".into())).unwrap();
        let st = s.status().unwrap();
        assert_eq!(st.counts.get("done"), Some(&1));
        assert_eq!(st.dead_reasons.get("1012"), Some(&1));
        assert_eq!(st.pending(), 0);
        // a known person's new item arrives resolved, without an email
        s.enqueue(&[assoc("t3", "p1")]).unwrap();
        let due = s.due(0, 10).unwrap();
        assert_eq!(due[0].lead_id, Some(77));
        assert_eq!(due[0].email, None);
    }

    /// Dead items come back: by a repeat enqueue when revivable, by `requeue`
    /// when they can still be delivered; a gone lead is forgotten.
    fn revive_and_requeue(s: &dyn Store) {
        s.enqueue(&[assoc("t1", "p1"), assoc("t2", "p2"), assoc("t3", "p3")])
            .unwrap();
        let due = s.due(0, 10).unwrap();
        let (i1, i2, i3) = (due[0].id, due[1].id, due[2].id);
        // transient failures ran out: revivable, the email kept (no lead id yet)
        s.record(i1, &Outcome::Dead("retries_exhausted:http_502".into())).unwrap();
        s.record(i2, &Outcome::Dead("1012".into())).unwrap();
        let r = s.enqueue(&[assoc("t1", "p1"), assoc("t2", "p2")]).unwrap();
        assert_eq!(r, vec![Enqueued::Queued, Enqueued::Duplicate], "1012 is final");
        let again = s.due(0, 10).unwrap();
        let revived = again.iter().find(|i| i.id == i1).unwrap();
        assert_eq!((revived.attempts, revived.reason.as_deref()), (0, None));
        assert_eq!(revived.email.as_deref(), Some("p1@example.com"));
        // requeue: a dead item that kept its email is deliverable, one without is not
        s.record(i1, &Outcome::Dead("retries_exhausted:606".into())).unwrap();
        let r = s.requeue(Some("retries_exhausted"), 1_000).unwrap();
        assert_eq!(r, Requeued { requeued: 1, undeliverable: 0 });
        let item = s.due(0, 10).unwrap().into_iter().find(|i| i.id == i1).unwrap();
        assert_eq!((item.queued_at_ms, item.email.as_deref()), (1_000, Some("p1@example.com")));
        let r = s.requeue(None, 1_000).unwrap();
        assert_eq!(r, Requeued { requeued: 0, undeliverable: 1 }, "1012 dropped its email");
        // a resolved person's item is requeued with the lead id, its email dropped
        s.set_lead("p2", 42).unwrap();
        assert_eq!(s.requeue(Some("1012"), 2_000).unwrap().requeued, 1);
        let item = s.due(0, 10).unwrap().into_iter().find(|i| i.id == i2).unwrap();
        assert_eq!((item.lead_id, item.email.as_deref()), (Some(42), None));
        // the lead is gone (1004) and no email is known: lead forgotten, item dead
        s.record(i3, &Outcome::Defer { at_ms: 0 }).unwrap();
        s.set_lead("p3", 9).unwrap();
        s.enqueue(&[assoc("t4", "p3")]).unwrap();
        let gone = Outcome::LeadGone { email: None, at_ms: 0, reason: "1004".into() };
        s.record(i3, &gone).unwrap();
        assert_eq!(s.lead_of("p3").unwrap(), None);
        let t4 = s.due(0, 10).unwrap().into_iter().find(|i| i.token == "t4").unwrap();
        assert_eq!((t4.lead_id, t4.email.as_deref()), (None, None), "stale lead cleared");
        // the next login with that browser brings the email back: revived
        assert_eq!(s.enqueue(&[assoc("t3", "p3")]).unwrap(), vec![Enqueued::Queued]);
        // and a pending item without identity takes the email of a repeat login
        assert_eq!(s.enqueue(&[assoc("t4", "p3")]).unwrap(), vec![Enqueued::Duplicate]);
        let due = s.due(0, 10).unwrap();
        for t in ["t3", "t4"] {
            let i = due.iter().find(|i| i.token == t).unwrap();
            assert_eq!((i.lead_id, i.email.as_deref()), (None, Some("p3@example.com")), "{t}");
        }
        // the lead is gone but the email is known: looked up again, attempt counted
        let t3 = due.iter().find(|i| i.token == "t3").unwrap().id;
        let gone = Outcome::LeadGone { email: Some("p3@example.com".into()), at_ms: 77, reason: "1004".into() };
        s.record(t3, &gone).unwrap();
        let i = s.due(100, 10).unwrap().into_iter().find(|i| i.id == t3).unwrap();
        assert_eq!((i.attempts, i.next_attempt_ms, i.email.as_deref()), (1, 77, Some("p3@example.com")));
        // conflicts are recorded once per item, by policy
        assert!(s.note_conflict(t3, "reassociate").unwrap());
        assert!(!s.note_conflict(t3, "reassociate").unwrap());
        assert_eq!(s.status().unwrap().conflicts.get("reassociate"), Some(&1));
    }

    #[test]
    fn reasons() {
        assert!(is_revivable("retries_exhausted:transport") && is_revivable("1004"));
        assert!(!is_revivable("1012") && !is_revivable("retries_exhausted"));
        assert!(reason_matches("retries_exhausted:606", "retries_exhausted"));
        assert!(reason_matches("1012", "1012") && !reason_matches("10123", "1012"));
    }

    #[test]
    fn memory_store() {
        exercise(&MemoryStore::new());
        revive_and_requeue(&MemoryStore::new());
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("idtag-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir.join("outbox.db")
    }

    #[test]
    fn sqlite_store_revives_and_requeues() {
        let path = temp_path("revive");
        revive_and_requeue(&SqliteStore::open(&path).unwrap());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_outbox_of_an_earlier_version_is_migrated() {
        let path = temp_path("migrate");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE outbox (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL, cookie_value TEXT NOT NULL,
                    person_key TEXT NOT NULL, email TEXT, lead_id INTEGER, event TEXT NOT NULL,
                    consent TEXT NOT NULL, captured_at_ms INTEGER NOT NULL,
                    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt_ms INTEGER NOT NULL DEFAULT 0, reason TEXT,
                    in_flight INTEGER NOT NULL DEFAULT 0, UNIQUE (token, person_key));
                 INSERT INTO outbox (token, cookie_value, person_key, email, event, consent, captured_at_ms)
                 VALUES ('t', 'v', 'p', 'p@example.com', 'login', 'granted', 1234);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let due = s.due(0, 10).unwrap();
        assert_eq!(due[0].queued_at_ms, 1234);
        assert!(s.note_conflict(due[0].id, "skip").unwrap());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn one_process_holds_the_store_lock() {
        let path = temp_path("lock");
        let first = StoreLock::acquire(&path).unwrap();
        let second = StoreLock::acquire(&path).unwrap_err();
        assert!(second.to_string().contains("another process"), "{second}");
        drop(first);
        assert!(StoreLock::acquire(&path).is_ok());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn sqlite_store_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("idtag-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("outbox.db");
        let _ = std::fs::remove_file(&path);
        exercise(&SqliteStore::open(&path).unwrap());
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.status().unwrap().pending(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
