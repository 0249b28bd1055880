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
    /// Inserts a batch in one transaction (a group commit), deduplicating on (token, person).
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
    /// Counts by state, oldest pending, dead reasons.
    fn status(&self) -> Result<StatusReport, StoreError>;
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
    pairs: HashMap<(String, String), i64>,
    leads: HashMap<String, i64>,
    owners: HashMap<String, String>,
    next_id: i64,
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
            if g.pairs.contains_key(&key) {
                out.push(Enqueued::Duplicate);
                continue;
            }
            g.next_id += 1;
            let id = g.next_id;
            let lead_id = g.leads.get(&a.person_key).copied();
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
        match outcome {
            Outcome::Done => {
                item.state = ItemState::Done;
                item.reason = None;
                owner = Some((item.token.clone(), item.person_key.clone()));
            }
            Outcome::Dead(r) => {
                item.state = ItemState::Dead;
                item.reason = Some(r.clone());
                item.email = None;
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
        }
        if let Some((t, p)) = owner {
            g.owners.insert(t, p);
        }
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
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

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
                "INSERT OR IGNORE INTO outbox (token, cookie_value, person_key, email, lead_id, event, consent, captured_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
                out.push(if n == 1 {
                    Enqueued::Queued
                } else {
                    Enqueued::Duplicate
                });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn due(&self, now_ms: UnixMillis, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT id, token, cookie_value, person_key, email, lead_id, event, consent, captured_at_ms,
                    state, attempts, next_attempt_ms, reason, in_flight
             FROM outbox WHERE state = 'pending' AND next_attempt_ms <= ?1 ORDER BY id LIMIT ?2",
        )?;
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
                tx.execute(
                    "UPDATE outbox SET state = 'dead', reason = ?2, email = NULL WHERE id = ?1",
                    params![id, r],
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
        }
        tx.commit()?;
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

    #[test]
    fn memory_store() {
        exercise(&MemoryStore::new());
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
