//! Reading a whole SQLite store out, for `store copy`.
//!
//! In: a data directory. Out: its rows, kind by kind, in batches ordered by their keys
//! ([`Export`]), as the file holds them (text, never decoded).
//! Stays true: the export holds the directory's lock, so no relay runs on the store while it
//! is read (nor starts); it never changes the schema: a store not at exactly this release's
//! version is refused untouched (an older one is upgraded by starting this release's relay on
//! it once). Every batch is read in one transaction opened at the start, so the copy sees one
//! state of the store.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

use super::{lock_dir, schema, SqliteStore};
use crate::store::copy::{
    AppliedValue, RememberedEmail, SeenId, Stage, StoredDeadLetter, StoredEvent, StoredJob, Totals,
};
use crate::store::StoreError;

/// A store opened for reading it out; dropping it releases the directory.
pub struct Export {
    conn: Arc<Mutex<Connection>>,
    _lock: File,
}

impl SqliteStore {
    /// Opens the store in `dir` for export: refused when no store is there, when a relay holds
    /// the directory, or when its schema is not this release's.
    pub fn export(dir: &Path) -> Result<Export, StoreError> {
        let location = dir.display().to_string();
        let refused = |reason: String| StoreError::DataDir {
            path: location.clone(),
            reason,
        };
        if !dir.join("relay.db").exists() {
            return Err(refused("no relay.db here".into()));
        }
        let lock = lock_dir(dir).map_err(refused)?;
        let conn = Connection::open(dir.join("relay.db"))?;
        conn.execute_batch("PRAGMA busy_timeout=5000;")?;
        schema::check(schema::version(&conn)?, &location, false)?;
        conn.execute_batch("BEGIN")?;
        Ok(Export {
            conn: Arc::new(Mutex::new(conn)),
            _lock: lock,
        })
    }
}

impl Export {
    /// Runs `f` on the connection from the blocking pool.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// How many rows each stage will read.
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        self.read(|c| {
            let count = |table: &str| -> Result<u64, StoreError> {
                let n: i64 =
                    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
                Ok(n as u64)
            };
            Ok(Totals::from([
                (Stage::Applied, count("applied")?),
                (Stage::RememberedEmails, count("user_emails")?),
                (Stage::Queue, count("jobs")?),
                (Stage::SeenIds, count("seen")?),
                (Stage::DeadLetters, count("dead_letters")?),
            ]))
        })
        .await
    }

    /// Applied values after `(email, key)`, in key order.
    pub async fn applied(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<AppliedValue>, StoreError> {
        let (email, key) = after.unwrap_or_default();
        let first = email.is_empty() && key.is_empty();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT email, key, ts_ms, updated_ms FROM applied
                 WHERE ?1 OR (email, key) > (?2, ?3) ORDER BY email, key LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![first, email, key, limit as i64], |r| {
                Ok(AppliedValue {
                    email: r.get(0)?,
                    key: r.get(1)?,
                    ts_ms: r.get(2)?,
                    updated_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Remembered emails after `user_id`, in id order.
    pub async fn remembered_emails(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<RememberedEmail>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, email, updated_ms FROM user_emails
                 WHERE ?1 IS NULL OR user_id > ?1 ORDER BY user_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok(RememberedEmail {
                    user_id: r.get(0)?,
                    email: r.get(1)?,
                    updated_ms: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Jobs after `email`, in email order, each with its events oldest first.
    pub async fn jobs(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredJob>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT email, next_attempt_ms, attempts, first_queued_ms, waiting_since_ms,
                        last_error, lane
                 FROM jobs WHERE ?1 IS NULL OR email > ?1 ORDER BY email LIMIT ?2",
            )?;
            let heads = stmt
                .query_map(params![after, limit as i64], |r| {
                    Ok(StoredJob {
                        email: r.get(0)?,
                        next_attempt_ms: r.get(1)?,
                        attempts: r.get(2)?,
                        first_queued_ms: r.get(3)?,
                        waiting_since_ms: r.get(4)?,
                        last_error: r.get(5)?,
                        lane: r.get(6)?,
                        events: Vec::new(),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            heads
                .into_iter()
                .map(|job| {
                    let events = events(c, &job.email)?;
                    Ok(StoredJob { events, ..job })
                })
                .collect()
        })
        .await
    }

    /// Seen message ids after `message_id`, in id order.
    pub async fn seen_ids(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<SeenId>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT message_id, seen_ms FROM seen
                 WHERE ?1 IS NULL OR message_id > ?1 ORDER BY message_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok(SeenId {
                    message_id: r.get(0)?,
                    seen_ms: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Dead letters with ids above `after`, in id order.
    pub async fn dead_letters(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, email, cause, reason, attempts, created_ms, properties, events
                 FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok(StoredDeadLetter {
                    id: r.get(0)?,
                    email: r.get(1)?,
                    cause: r.get(2)?,
                    reason: r.get(3)?,
                    attempts: r.get(4)?,
                    created_ms: r.get(5)?,
                    properties: r.get(6)?,
                    events: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

/// One email's events, oldest first, with when their ids were seen.
fn events(c: &Connection, email: &str) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT e.message_id, e.email, e.sent_email, e.user_id, e.ts_ms, e.received_ms,
                e.traits, e.engage, e.raw, s.seen_ms, e.lane
         FROM events e LEFT JOIN seen s ON s.message_id = e.message_id
         WHERE e.email = ?1 ORDER BY e.id",
    )?;
    let rows = stmt.query_map([email], |r| {
        let received_ms: i64 = r.get(5)?;
        Ok(StoredEvent {
            message_id: r.get(0)?,
            email: r.get(1)?,
            sent_email: r.get(2)?,
            user_id: r.get(3)?,
            ts_ms: r.get(4)?,
            received_ms,
            traits: r.get(6)?,
            engage: r.get(7)?,
            raw: r.get(8)?,
            seen_ms: r.get::<_, Option<i64>>(9)?.unwrap_or(received_ms),
            lane: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
