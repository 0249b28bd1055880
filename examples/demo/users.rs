//! The demo product's own user database (SQLite): accounts with Argon2id password
//! hashes, sessions, and the log of logins and signups the coverage page reads.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// A product user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
}

/// One login or signup as the product saw it, for the coverage page.
#[derive(Debug, Clone)]
pub struct Seen {
    pub kind: &'static str,
    pub mode: &'static str,
    pub had_cookie: bool,
    pub outcome: String,
}

/// Counts of one kind of event over a time bucket.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Bucket {
    pub minute: String,
    pub logins: u64,
    pub signups: u64,
    pub with_cookie: u64,
    pub queued: u64,
}

/// The user database.
pub struct Users {
    db: Mutex<Connection>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("an account with this email already exists")]
    Exists,
    #[error("email or password is wrong")]
    BadCredentials,
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("password hashing failed")]
    Hash,
}

impl Users {
    pub fn open(path: &Path) -> Result<Self, UserError> {
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS users(
                id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
                pw_hash TEXT NOT NULL, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sessions(
                sid TEXT PRIMARY KEY, user_id INTEGER NOT NULL, pending_tag TEXT, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sso_codes(
                code TEXT PRIMARY KEY, user_id INTEGER NOT NULL, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS seen(
                at_ms INTEGER NOT NULL, kind TEXT NOT NULL, mode TEXT NOT NULL,
                had_cookie INTEGER NOT NULL, outcome TEXT NOT NULL);",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates an account; `email` must already be normalised.
    pub fn create(
        &self,
        email: &str,
        name: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<User, UserError> {
        if password.len() < 8 {
            return Err(UserError::Invalid(
                "password must have at least 8 characters".into(),
            ));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|_| UserError::Hash)?
            .to_string();
        let db = self.db();
        let r = db.execute(
            "INSERT INTO users(email, name, pw_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![email, name, hash, now_ms],
        );
        match r {
            Ok(_) => Ok(User {
                id: db.last_insert_rowid(),
                email: email.into(),
                name: name.into(),
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(UserError::Exists)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a password; `email` must already be normalised.
    pub fn login(&self, email: &str, password: &str) -> Result<User, UserError> {
        let row: Option<(i64, String, String)> = self
            .db()
            .query_row(
                "SELECT id, name, pw_hash FROM users WHERE email = ?1",
                [email],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((id, name, hash)) = row else {
            return Err(UserError::BadCredentials);
        };
        let parsed = PasswordHash::new(&hash).map_err(|_| UserError::Hash)?;
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .map_err(|_| UserError::BadCredentials)?;
        Ok(User {
            id,
            email: email.into(),
            name,
        })
    }

    pub fn user(&self, id: i64) -> Result<Option<User>, UserError> {
        Ok(self
            .db()
            .query_row(
                "SELECT id, email, name FROM users WHERE id = ?1",
                [id],
                |r| {
                    Ok(User {
                        id: r.get(0)?,
                        email: r.get(1)?,
                        name: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Starts a session; `pending_tag` names the event a tag token must still be sent for.
    pub fn start_session(
        &self,
        user_id: i64,
        pending_tag: Option<&str>,
        now_ms: i64,
    ) -> Result<String, UserError> {
        let sid = random_hex();
        self.db().execute(
            "INSERT INTO sessions(sid, user_id, pending_tag, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![sid, user_id, pending_tag, now_ms],
        )?;
        Ok(sid)
    }

    /// The user of a session and the pending tag event, which is cleared (sent once).
    pub fn session(&self, sid: &str) -> Result<Option<(User, Option<String>)>, UserError> {
        let row: Option<(i64, Option<String>)> = self
            .db()
            .query_row(
                "SELECT user_id, pending_tag FROM sessions WHERE sid = ?1",
                [sid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((uid, pending)) = row else {
            return Ok(None);
        };
        if pending.is_some() {
            self.db().execute(
                "UPDATE sessions SET pending_tag = NULL WHERE sid = ?1",
                [sid],
            )?;
        }
        Ok(self.user(uid)?.map(|u| (u, pending)))
    }

    pub fn end_session(&self, sid: &str) -> Result<(), UserError> {
        self.db()
            .execute("DELETE FROM sessions WHERE sid = ?1", [sid])?;
        Ok(())
    }

    /// A one-time code the simulated identity provider hands back to the product.
    pub fn sso_code(&self, user_id: i64, now_ms: i64) -> Result<String, UserError> {
        let code = random_hex();
        self.db().execute(
            "INSERT INTO sso_codes(code, user_id, created_ms) VALUES (?1, ?2, ?3)",
            params![code, user_id, now_ms],
        )?;
        Ok(code)
    }

    /// Redeems a code once, within five minutes.
    pub fn redeem_sso_code(&self, code: &str, now_ms: i64) -> Result<Option<i64>, UserError> {
        let db = self.db();
        let uid: Option<i64> = db
            .query_row(
                "DELETE FROM sso_codes WHERE code = ?1 AND created_ms > ?2 RETURNING user_id",
                params![code, now_ms - 300_000],
                |r| r.get(0),
            )
            .optional()?;
        Ok(uid)
    }

    pub fn record(&self, seen: &Seen, now_ms: i64) -> Result<(), UserError> {
        self.db().execute(
            "INSERT INTO seen(at_ms, kind, mode, had_cookie, outcome) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms, seen.kind, seen.mode, seen.had_cookie, seen.outcome],
        )?;
        Ok(())
    }

    /// Totals and per-minute buckets of what the product saw.
    pub fn coverage(&self) -> Result<(Bucket, Vec<Bucket>), UserError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT strftime('%Y-%m-%d %H:%M', at_ms / 1000, 'unixepoch') AS minute,
                    SUM(kind = 'login'), SUM(kind = 'signup'), SUM(had_cookie), SUM(outcome = 'queued')
             FROM seen GROUP BY minute ORDER BY minute",
        )?;
        let buckets = stmt
            .query_map([], |r| {
                Ok(Bucket {
                    minute: r.get(0)?,
                    logins: r.get::<_, i64>(1)? as u64,
                    signups: r.get::<_, i64>(2)? as u64,
                    with_cookie: r.get::<_, i64>(3)? as u64,
                    queued: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut total = Bucket {
            minute: "total".into(),
            ..Bucket::default()
        };
        for b in &buckets {
            total.logins += b.logins;
            total.signups += b.signups;
            total.with_cookie += b.with_cookie;
            total.queued += b.queued;
        }
        Ok((total, buckets))
    }
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
