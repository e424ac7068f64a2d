//! The SQLite implementation of [`Store`]: one file `relay.db` in the data directory, WAL mode,
//! `synchronous=FULL`, owned by one writer thread that commits whatever requests are waiting
//! in one transaction (group commit). Each request runs inside a savepoint, so one failing
//! request never spoils its neighbours; replies are sent only after the commit.
//!
//! The schema is versioned (`schema`): `open`, the relay, upgrades an older store before using
//! it; `open_shared`, for tools, accepts only a store already at the latest version.
//!
//! The delivery lease (`lease`) is a row in the same file, so a relay and a tool sharing the
//! file (`open` and `open_shared`) agree on who delivers; its expiry is judged by the callers'
//! `now_ms`, which on one machine read one clock.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Map;
use tokio::sync::oneshot;

use super::codec::{self, from_json, platform_id_key_of, to_json, Email, Encoded};
use super::{
    BudgetSnapshot, DeadLetter, DeadLetterCause, Incoming, IngestOutcome, Job, JobOutcome,
    JobResult, Lane, LaneStats, Lease, QueueStats, QueuedEvent, SavedStatus, StateStats, Store,
    StoreError, StoreOptions,
};
use crate::clock::millis;
use crate::identify::{self, Engage, Event, IdentifyUpdate};

mod export;
mod lease;
mod schema;
mod tools;

pub use export::Export;

/// The schema's steps, for the contract's schema cases.
#[cfg(test)]
pub(super) use schema::MIGRATIONS;

/// How many waiting requests one transaction takes at most.
const MAX_GROUP: usize = 256;
/// Bytes the WAL file is cut back to after a checkpoint.
const JOURNAL_SIZE_LIMIT: u64 = 4 * 1024 * 1024;
/// The writer idle this long after a write (ingest and delivery have stopped: the queue is
/// drained, or nothing arrives), it checkpoints the whole WAL and truncates it.
const CHECKPOINT_WHEN_IDLE: Duration = Duration::from_secs(1);
/// While writes never pause, a truncating checkpoint still runs this often.
const CHECKPOINT_AT_LEAST_EVERY: Duration = Duration::from_secs(30);

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Op = Box<dyn FnOnce(&Connection, &StoreOptions) -> Completion + Send>;

/// Handle to the store; cheap to clone, all clones talk to the same writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    ops: mpsc::Sender<Op>,
    reader: Arc<std::sync::Mutex<Connection>>,
    /// The data directory, for the store's size on disk.
    dir: Arc<PathBuf>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, taking an exclusive lock on the
    /// directory so that two relays can never deliver from the same queue, and upgrades its
    /// schema to the latest version. A store written by a newer release is refused untouched.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        Self::open_with(dir, options, true)
    }

    /// Opens the store without the directory lock, for administration (dead letters) while
    /// a relay runs: SQLite serialises the two processes' writes. It never changes the schema:
    /// a store not exactly at this release's version is refused untouched, since upgrading it
    /// under a running older relay would leave that relay on a schema it does not know (and
    /// the relay, which upgrades when it starts, is the one that decides when the store moves).
    pub fn open_shared(dir: &Path) -> Result<SqliteStore, StoreError> {
        if !dir.join("relay.db").exists() {
            return Err(StoreError::DataDir {
                path: dir.display().to_string(),
                reason: "no relay.db here (set RELAY_DATA_DIR or data_dir)".into(),
            });
        }
        Self::open_with(dir, StoreOptions::default(), false)
    }

    /// Opens the store as [`open`](Self::open) does when no relay holds the directory, else
    /// beside the running relay as [`open_shared`](Self::open_shared) does; answers whether
    /// this process owns the store (and so may deliver from it: no relay can start meanwhile).
    pub fn open_or_share(
        dir: &Path,
        options: StoreOptions,
    ) -> Result<(SqliteStore, bool), StoreError> {
        match Self::open_with(dir, options, true) {
            Ok(store) => Ok((store, true)),
            Err(StoreError::DataDir { reason, .. }) if reason == LOCK_HELD => {
                Ok((Self::open_shared(dir)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// `exclusive`: the relay itself, which holds the directory lock and may upgrade the schema.
    fn open_with(
        dir: &Path,
        options: StoreOptions,
        exclusive: bool,
    ) -> Result<SqliteStore, StoreError> {
        let location = dir.display().to_string();
        let data_dir_error = |reason: String| StoreError::DataDir {
            path: location.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| data_dir_error(e.to_string()))?;
        let lock = if exclusive {
            Some(lock_dir(dir).map_err(data_dir_error)?)
        } else {
            None
        };
        let mut conn = Connection::open(dir.join("relay.db"))?;
        conn.execute_batch("PRAGMA busy_timeout=5000;")?;
        // Judged before any setting is written: a store this release may not use stays as it is.
        schema::check(schema::version(&conn)?, &location, exclusive)?;
        // temp_store=MEMORY keeps each request's savepoint journal off the disk: it is only
        // for rolling one request back, the WAL is what makes a commit durable.
        // journal_size_limit: after a checkpoint the WAL file is cut back to this size instead of
        // keeping the largest size a burst ever gave it (a small volume filled up with it).
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY; \
             PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT};"
        ))?;
        if exclusive {
            schema::upgrade(&mut conn, &location)?;
        }
        // Queue figures are counted on a reader of their own: WAL lets it read while the
        // writer commits, so a count over a million queued events never holds up ingest.
        let reader = Connection::open_with_flags(
            dir.join("relay.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.execute_batch("PRAGMA busy_timeout=5000;")?;
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, lock, options))
            .map_err(|e| data_dir_error(e.to_string()))?;
        Ok(SqliteStore {
            ops: tx,
            reader: Arc::new(std::sync::Mutex::new(reader)),
            dir: Arc::new(dir.to_path_buf()),
        })
    }

    /// Runs `f` in the writer's current transaction and answers after the commit.
    async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &StoreOptions) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Op = Box::new(move |conn: &Connection, options: &StoreOptions| {
            let result = in_savepoint(conn, |c| f(c, options));
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = reply.send(commit.and(result));
            })
        });
        self.ops.send(op).map_err(|_| StoreError::Closed)?;
        // The commit happens on the writer thread, out of tokio's sight. Waiting for it from the
        // blocking pool tells tokio that work is under way, so a paused test clock does not
        // jump to the next timer (a request timeout, say) while a commit is being written.
        let answered = tokio::task::spawn_blocking(move || answer.blocking_recv()).await;
        match answered {
            Ok(Ok(result)) => result,
            _ => Err(StoreError::Closed),
        }
    }
}

/// Why a data directory cannot be owned: another process owns it.
const LOCK_HELD: &str = "another relay process is using it (relay.lock is held)";

fn lock_dir(dir: &Path) -> Result<File, String> {
    let path: PathBuf = dir.join("relay.lock");
    let file = File::create(&path).map_err(|e| e.to_string())?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LOCK_HELD.into()),
        Err(std::fs::TryLockError::Error(e)) => Err(e.to_string()),
    }
}

/// The writer thread: waits for one request, takes every other waiting one (up to
/// [`MAX_GROUP`]), runs them in one transaction, commits, then answers them all.
fn writer_loop(
    conn: Connection,
    ops: mpsc::Receiver<Op>,
    _lock: Option<File>,
    options: StoreOptions,
) {
    let mut checkpoints = Checkpoints::new();
    loop {
        let first = match ops.recv_timeout(checkpoints.wait()) {
            Ok(op) => op,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                checkpoints.run(&conn);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match ops.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Without a transaction each statement would commit on its own: run nothing.
            // Dropping the requests answers each caller that the store is unavailable.
            tracing::error!(error = %e, "cannot begin a store transaction");
            drop(group);
            continue;
        }
        let completions: Vec<Completion> =
            group.into_iter().map(|op| op(&conn, &options)).collect();
        let commit = conn.execute_batch("COMMIT").map_err(StoreError::from);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for complete in completions {
            let outcome = match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Commit(e.to_string())),
            };
            complete(outcome);
        }
        checkpoints.wrote(&conn);
    }
    // All handles dropped: the connection closes here and the lock is released.
}

/// When the writer checkpoints the WAL into the database and truncates it: once it has been
/// idle for [`CHECKPOINT_WHEN_IDLE`] after writing, and at least every
/// [`CHECKPOINT_AT_LEAST_EVERY`] while it writes. Between transactions only, on the writer.
struct Checkpoints {
    /// When the oldest write not yet checkpointed was committed; `None`: nothing to do.
    dirty_since: Option<std::time::Instant>,
}

impl Checkpoints {
    fn new() -> Checkpoints {
        Checkpoints { dirty_since: None }
    }

    /// How long to wait for the next request before checkpointing.
    fn wait(&self) -> Duration {
        match self.dirty_since {
            Some(_) => CHECKPOINT_WHEN_IDLE,
            // Nothing to checkpoint: wait as long as it takes (a day, then look again).
            None => Duration::from_secs(24 * 3600),
        }
    }

    /// After a commit: remembers there is something to checkpoint, and checkpoints now if
    /// writes have not paused for long.
    fn wrote(&mut self, conn: &Connection) {
        let since = *self.dirty_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= CHECKPOINT_AT_LEAST_EVERY {
            self.run(conn);
        }
    }

    fn run(&mut self, conn: &Connection) {
        if self.dirty_since.is_none() {
            return;
        }
        // A checkpoint that cannot finish (a reader in the way, no room to grow the database)
        // leaves the WAL as it is; the next one tries again.
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(0) => self.dirty_since = None,
            Ok(_) => tracing::debug!("WAL checkpoint could not finish (busy); retried later"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retried later"),
        }
    }
}

fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    conn.execute_batch("SAVEPOINT op")?;
    match f(conn) {
        Ok(r) => {
            conn.execute_batch("RELEASE op")?;
            Ok(r)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            Err(e)
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ingest(
        &self,
        events: Vec<Incoming>,
        now_ms: i64,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let encoded = Encoded::all(&events)?;
        self.call(move |c, o| {
            events
                .iter()
                .zip(&encoded)
                .map(|(e, enc)| ingest_one(c, o, e, enc.as_ref(), now_ms))
                .collect()
        })
        .await
    }

    async fn due_jobs(&self, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.call(move |c, _| due_jobs(c, now_ms, limit)).await
    }

    async fn due_emails(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.call(move |c, _| {
            let mut stmt = c.prepare_cached(
                "SELECT email FROM jobs WHERE next_attempt_ms <= ?1
                 ORDER BY lane, next_attempt_ms, first_queued_ms LIMIT ?2",
            )?;
            let emails = stmt
                .query_map(params![now_ms, limit as i64], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(emails)
        })
        .await
    }

    async fn live_due(&self, now_ms: i64) -> Result<bool, StoreError> {
        self.call(move |c, _| {
            let found: Option<i64> = c
                .prepare_cached(
                    "SELECT 1 FROM jobs WHERE lane = ?1 AND next_attempt_ms <= ?2 LIMIT 1",
                )?
                .query_row(params![Lane::Live.as_i64(), now_ms], |r| r.get(0))
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    async fn lane_stats(&self, lane: Lane) -> Result<LaneStats, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = reader.lock().unwrap_or_else(|p| p.into_inner());
            lane_stats(&c, lane)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    async fn job(&self, email: &str) -> Result<Option<Job>, StoreError> {
        let email = email.to_owned();
        self.call(move |c, _| {
            let head = c
                .prepare_cached(
                    "SELECT email, attempts, first_queued_ms, waiting_since_ms, lane FROM jobs
                     WHERE email = ?1",
                )?
                .query_row([&email], job_head)
                .optional()?;
            head.map(|h| load_job(c, h)).transpose()
        })
        .await
    }

    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.call(
            |c, _| Ok(c.query_row("SELECT MIN(next_attempt_ms) FROM jobs", [], |r| r.get(0))?),
        )
        .await
    }

    async fn finish(
        &self,
        lease: &Lease,
        results: Vec<JobResult>,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let lease = lease.clone();
        self.call(move |c, o| {
            lease::check(c, &lease, now_ms)?;
            let mut dead_letters = Vec::new();
            for result in &results {
                dead_letters.extend(finish_one(c, o, result, now_ms)?);
            }
            Ok(dead_letters)
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let (reader, dir) = (self.reader.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || {
            let c = reader.lock().unwrap_or_else(|p| p.into_inner());
            queue_stats(&c, &dir)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    async fn ping(&self, at: i64) -> Result<(), StoreError> {
        let read: i64 = self
            .call(move |c, _| {
                c.execute(
                    "INSERT INTO health (id, at_ms) VALUES (1, ?1)
                     ON CONFLICT(id) DO UPDATE SET at_ms = excluded.at_ms",
                    [at],
                )?;
                Ok(c.query_row("SELECT at_ms FROM health WHERE id = 1", [], |r| r.get(0))?)
            })
            .await?;
        if read == at {
            Ok(())
        } else {
            Err(StoreError::Corrupt("health row did not read back".into()))
        }
    }

    async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.call(move |c, _| {
            let seen = c.execute("DELETE FROM seen WHERE seen_ms < ?1", [before_ms])?;
            let applied = c.execute("DELETE FROM applied WHERE updated_ms < ?1", [before_ms])?;
            Ok((seen + applied) as u64)
        })
        .await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(|c, _| read_dead_letters(c)).await
    }

    async fn replay_dead_letters(
        &self,
        ids: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        // Read, re-queue and delete in one transaction, so two replays cannot queue twice.
        self.call(move |c, o| {
            let chosen: Vec<DeadLetter> = read_dead_letters(c)?
                .into_iter()
                .filter(|d| ids.as_ref().is_none_or(|ids| ids.contains(&d.id)))
                .collect();
            for letter in &chosen {
                requeue(c, o, letter, now_ms)?;
                c.execute("DELETE FROM dead_letters WHERE id = ?1", [letter.id])?;
            }
            Ok(chosen.len())
        })
        .await
    }

    async fn save_status(
        &self,
        replica: String,
        body: String,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        self.call(move |c, _| {
            c.prepare_cached(
                "INSERT INTO status (replica, saved_ms, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(replica) DO UPDATE SET saved_ms = excluded.saved_ms,
                 body = excluded.body",
            )?
            .execute(params![replica, now_ms, body])?;
            c.prepare_cached("DELETE FROM status WHERE saved_ms < ?1")?
                .execute([forget_before_ms])?;
            Ok(())
        })
        .await
    }

    async fn saved_statuses(&self) -> Result<Vec<SavedStatus>, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = reader.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = c.prepare_cached(
                "SELECT replica, saved_ms, body FROM status ORDER BY saved_ms DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(SavedStatus {
                    replica: r.get(0)?,
                    saved_ms: r.get(1)?,
                    body: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    async fn purge_dead_letters(&self, created_before_ms: i64) -> Result<usize, StoreError> {
        self.call(move |c, _| {
            Ok(c.execute(
                "DELETE FROM dead_letters WHERE created_ms < ?1",
                [created_before_ms],
            )?)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let holder = holder.to_owned();
        let ttl_ms = millis(ttl);
        self.call(move |c, _| lease::acquire(c, &holder, ttl_ms, now_ms))
            .await
    }

    async fn release_lease(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.call(move |c, _| lease::release(c, &lease, now_ms))
            .await
    }

    async fn save_budget(
        &self,
        lease: &Lease,
        budget: BudgetSnapshot,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.call(move |c, _| lease::save_budget(c, &lease, budget, now_ms))
            .await
    }

    async fn load_budget(&self, now_ms: i64) -> Result<Option<BudgetSnapshot>, StoreError> {
        self.call(move |c, _| lease::load_budget(c, now_ms)).await
    }
}

fn queue_stats(c: &Connection, dir: &Path) -> Result<QueueStats, StoreError> {
    let events: i64 = c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    // Ids grow with arrival, so the oldest event is the first by id: no scan needed.
    let oldest: Option<i64> = c
        .query_row(
            "SELECT received_ms FROM events ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let subscribers: i64 = c.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))?;
    let dead: i64 = c.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
    let mut stats = QueueStats {
        events: events as u64,
        subscribers: subscribers as u64,
        oldest_received_ms: oldest,
        dead_letters: dead as u64,
        bytes: bytes_on_disk(dir),
        ..QueueStats::default()
    };
    for (state, figures) in state_stats(c)? {
        match state {
            STATE_WAITING => stats.waiting = figures,
            STATE_RETRYING => stats.retrying = figures,
            _ => stats.due = figures,
        }
    }
    Ok(stats)
}

/// A lane's events by their job's state, in one pass over the lane's events.
fn lane_stats(c: &Connection, lane: Lane) -> Result<LaneStats, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT CASE WHEN j.waiting_since_ms IS NOT NULL THEN ?1
                     WHEN j.attempts > 0 THEN ?2 ELSE ?3 END AS state, COUNT(*)
         FROM events e JOIN jobs j ON j.email = e.email WHERE e.lane = ?4 GROUP BY state",
    )?;
    let rows = stmt.query_map(
        params![STATE_WAITING, STATE_RETRYING, STATE_DUE, lane.as_i64()],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)),
    )?;
    let mut stats = LaneStats::default();
    for row in rows {
        match row? {
            (STATE_WAITING, n) => stats.waiting = n,
            (STATE_RETRYING, n) => stats.retrying = n,
            (_, n) => stats.due = n,
        }
    }
    Ok(stats)
}

const STATE_DUE: i64 = 0;
const STATE_WAITING: i64 = 1;
const STATE_RETRYING: i64 = 2;

/// Subscribers, events and the oldest arrival per state. One pass over the jobs; each job's
/// events are counted on the `events(email, id)` index, and its oldest is its first by id.
fn state_stats(c: &Connection) -> Result<Vec<(i64, StateStats)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT state, COUNT(*), SUM(n), MIN(oldest) FROM (
            SELECT CASE WHEN j.waiting_since_ms IS NOT NULL THEN ?1
                        WHEN j.attempts > 0 THEN ?2 ELSE ?3 END AS state,
                   (SELECT COUNT(*) FROM events e WHERE e.email = j.email) AS n,
                   (SELECT received_ms FROM events e WHERE e.email = j.email
                    ORDER BY id LIMIT 1) AS oldest
            FROM jobs j)
         GROUP BY state",
    )?;
    let rows = stmt.query_map(params![STATE_WAITING, STATE_RETRYING, STATE_DUE], |r| {
        let figures = StateStats {
            subscribers: r.get::<_, i64>(1)? as u64,
            events: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
            oldest_received_ms: r.get(3)?,
        };
        Ok((r.get::<_, i64>(0)?, figures))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The store's files: the database, its write-ahead log and shared memory.
fn bytes_on_disk(dir: &Path) -> u64 {
    ["relay.db", "relay.db-wal", "relay.db-shm"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum()
}

fn read_dead_letters(c: &Connection) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, email, cause, reason, attempts, created_ms, properties, events
         FROM dead_letters ORDER BY id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let letter = DeadLetter {
                id: r.get(0)?,
                email: r.get(1)?,
                cause: DeadLetterCause::parse(r.get::<_, Option<String>>(2)?.as_deref()),
                reason: r.get(3)?,
                attempts: r.get(4)?,
                created_ms: r.get(5)?,
                properties: Map::new(),
                events: Vec::new(),
            };
            Ok((letter, r.get::<_, String>(6)?, r.get::<_, String>(7)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(letter, properties, events)| {
            Ok(DeadLetter {
                properties: from_json(&properties)?,
                events: from_json(&events)?,
                ..letter
            })
        })
        .collect()
}

/// Records a message id as seen; answers false when it was seen before (a duplicate).
fn claim_message_id(c: &Connection, message_id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let inserted = c
        .prepare_cached("INSERT OR IGNORE INTO seen (message_id, seen_ms) VALUES (?1, ?2)")?
        .execute(params![message_id, now_ms])?;
    Ok(inserted == 1)
}

fn remembered_email(c: &Connection, user_id: &str) -> Result<Option<String>, StoreError> {
    Ok(
        c.prepare_cached("SELECT email FROM user_emails WHERE user_id = ?1")?
            .query_row([user_id], |r| r.get(0))
            .optional()?,
    )
}

fn ingest_one(
    c: &Connection,
    o: &StoreOptions,
    incoming: &Incoming,
    encoded: Option<&Encoded>,
    now_ms: i64,
) -> Result<IngestOutcome, StoreError> {
    match (&incoming.event, encoded) {
        (Event::Identify(update), Some(encoded)) => {
            let sent = match (&update.email, &update.user_id) {
                (Some(e), _) => e.clone(),
                (None, Some(user)) => match remembered_email(c, user)? {
                    Some(e) => e,
                    None => match platform_id_key_of(update) {
                        Some(key) => key,
                        None => return Ok(IngestOutcome::NoEmail),
                    },
                },
                (None, None) => match platform_id_key_of(update) {
                    Some(key) => key,
                    None => return Ok(IngestOutcome::NoEmail),
                },
            };
            // Claiming the id is the dedupe check: nothing else is written for a duplicate.
            if !claim_message_id(c, &update.message_id, now_ms)? {
                return Ok(IngestOutcome::Duplicate);
            }
            let email = Email::sent_as(&sent);
            let queued = Queued {
                update,
                encoded,
                raw: &incoming.raw,
                lane: incoming.lane,
            };
            enqueue(c, o, &queued, &email, now_ms)?;
            if let (Some(e), Some(user)) = (&update.email, &update.user_id) {
                c.prepare_cached(
                    "INSERT INTO user_emails (user_id, email, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(user_id) DO UPDATE SET email = excluded.email,
                     updated_ms = excluded.updated_ms",
                )?
                .execute(params![user, e, now_ms])?;
            }
            Ok(IngestOutcome::Stored)
        }
        (
            Event::Delete {
                message_id,
                user_id,
            },
            _,
        ) => {
            if !claim_message_id(c, message_id, now_ms)? {
                return Ok(IngestOutcome::Duplicate);
            }
            forget_user(c, user_id)?;
            Ok(IngestOutcome::Forgotten)
        }
        _ => Ok(IngestOutcome::Ignored),
    }
}

/// One event on its way into the queue.
struct Queued<'a> {
    update: &'a IdentifyUpdate,
    encoded: &'a Encoded,
    raw: &'a str,
    lane: Lane,
}

fn enqueue(
    c: &Connection,
    o: &StoreOptions,
    queued: &Queued<'_>,
    email: &Email<'_>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let Queued {
        update,
        encoded,
        raw,
        lane,
    } = *queued;
    c.prepare_cached(
        "INSERT INTO events (message_id, email, sent_email, user_id, ts_ms, received_ms, traits,
                             engage, raw, lane)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        update.message_id,
        email.key,
        email.spelling,
        update.user_id,
        update.timestamp_ms,
        now_ms,
        encoded.traits,
        encoded.engage,
        raw,
        lane.as_i64()
    ])?;
    let email = email.key.as_str();
    // An existing job keeps its schedule: new events must not cut short a backoff. A live
    // event makes the job live.
    c.prepare_cached(
        "INSERT INTO jobs (email, next_attempt_ms, first_queued_ms, lane) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(email) DO UPDATE SET lane = MIN(jobs.lane, excluded.lane)",
    )?
    .execute(params![
        email,
        now_ms + o.coalesce_ms,
        now_ms,
        lane.as_i64()
    ])?;
    Ok(())
}

fn forget_user(c: &Connection, user_id: &str) -> Result<(), StoreError> {
    let email = remembered_email(c, user_id)?.map(|e| identify::email_key(&e));
    c.execute("DELETE FROM user_emails WHERE user_id = ?1", [user_id])?;
    c.execute("DELETE FROM events WHERE user_id = ?1", [user_id])?;
    if let Some(email) = &email {
        c.execute("DELETE FROM events WHERE email = ?1", [email])?;
        c.execute("DELETE FROM applied WHERE email = ?1", [email])?;
    }
    // Jobs whose events are all gone have nothing left to deliver.
    c.execute(
        "DELETE FROM jobs WHERE NOT EXISTS (SELECT 1 FROM events WHERE events.email = jobs.email)",
        [],
    )?;
    Ok(())
}

fn due_jobs(c: &Connection, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT email, attempts, first_queued_ms, waiting_since_ms, lane FROM jobs
         WHERE next_attempt_ms <= ?1 ORDER BY lane, next_attempt_ms, first_queued_ms LIMIT ?2",
    )?;
    let heads = stmt
        .query_map(params![now_ms, limit as i64], job_head)?
        .collect::<Result<Vec<_>, _>>()?;
    heads.into_iter().map(|h| load_job(c, h)).collect()
}

type JobHead = (String, u32, i64, Option<i64>, i64);

fn job_head(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobHead> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn load_job(
    c: &Connection,
    (email, attempts, first_queued_ms, waiting_since_ms, lane): JobHead,
) -> Result<Job, StoreError> {
    Ok(Job {
        events: queued_events(c, &email)?,
        applied: applied(c, &email)?,
        spellings: spellings(c, &email)?,
        email,
        attempts,
        first_queued_ms,
        waiting_since_ms,
        lane: Lane::from_i64(lane),
    })
}

/// The spellings an email's queued events were sent with, other than its key, latest first.
fn spellings(c: &Connection, email: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT sent_email FROM events WHERE email = ?1 AND sent_email IS NOT NULL
         GROUP BY sent_email ORDER BY MAX(id) DESC",
    )?;
    let rows = stmt.query_map([email], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn queued_events(c: &Connection, email: &str) -> Result<Vec<QueuedEvent>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, message_id, ts_ms, traits, engage, user_id FROM events WHERE email = ?1
         ORDER BY id",
    )?;
    let rows = stmt
        .query_map([email], |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, String>(1)?),
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |((id, message_id), timestamp_ms, traits, engage, user_id)| {
                Ok(QueuedEvent {
                    id,
                    message_id,
                    timestamp_ms,
                    traits: from_json(&traits)?,
                    engage: engage.as_deref().map(from_json::<Engage>).transpose()?,
                    user_id,
                })
            },
        )
        .collect()
}

fn applied(c: &Connection, email: &str) -> Result<HashMap<String, i64>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT key, ts_ms FROM applied WHERE email = ?1")?;
    let rows = stmt.query_map([email], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records one result; answers the ids of the dead letters it created.
fn finish_one(
    c: &Connection,
    o: &StoreOptions,
    result: &JobResult,
    now_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    let email = result.email.as_str();
    let mut dead_letters = Vec::new();
    match &result.outcome {
        JobOutcome::RetryAt {
            at_ms,
            attempts,
            waiting_since_ms,
            error,
        } => {
            c.execute(
                "UPDATE jobs SET next_attempt_ms = ?2, attempts = ?3, waiting_since_ms = ?4,
                 last_error = ?5 WHERE email = ?1",
                params![email, at_ms, attempts, waiting_since_ms, error],
            )?;
            return Ok(dead_letters);
        }
        JobOutcome::Delivered { applied, .. } => {
            for (key, ts) in applied {
                c.prepare_cached(
                    "INSERT INTO applied (email, key, ts_ms, updated_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(email, key) DO UPDATE SET ts_ms = MAX(ts_ms, excluded.ts_ms),
                     updated_ms = excluded.updated_ms",
                )?
                .execute(params![email, key, ts, now_ms])?;
            }
        }
        JobOutcome::DeadLetter { .. } => {}
    }
    for letter in result.outcome.letters() {
        dead_letters.push(add_dead_letter(c, result, &letter, now_ms)?);
    }
    c.execute(
        "DELETE FROM events WHERE email = ?1 AND id <= ?2",
        params![email, result.up_to_event_id],
    )?;
    settle_job(c, o, email, now_ms)?;
    Ok(dead_letters)
}

/// After events left the queue: drop the job if nothing remains, else make it due again
/// (events that arrived during the attempt) with a fresh attempt count.
fn settle_job(
    c: &Connection,
    o: &StoreOptions,
    email: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let remaining: i64 = c.query_row(
        "SELECT COUNT(*) FROM events WHERE email = ?1",
        [email],
        |r| r.get(0),
    )?;
    if remaining == 0 {
        c.execute("DELETE FROM jobs WHERE email = ?1", [email])?;
    } else {
        // The lane of what remains: imported events left behind a delivered live one wait
        // in the background again.
        c.execute(
            "UPDATE jobs SET next_attempt_ms = ?2, attempts = 0, waiting_since_ms = NULL,
             last_error = NULL,
             lane = (SELECT MIN(lane) FROM events WHERE events.email = jobs.email)
             WHERE email = ?1",
            params![email, now_ms + o.coalesce_ms],
        )?;
    }
    Ok(())
}

/// Moves a result's events into a new dead letter; answers its id.
fn add_dead_letter(
    c: &Connection,
    result: &JobResult,
    letter: &crate::store::Letter,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let mut stmt =
        c.prepare_cached("SELECT raw FROM events WHERE email = ?1 AND id <= ?2 ORDER BY id")?;
    let raws = stmt
        .query_map(params![result.email, result.up_to_event_id], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let events = codec::dead_letter_events(&raws);
    c.execute(
        "INSERT INTO dead_letters (email, cause, reason, attempts, created_ms, properties, events)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            result.email,
            letter.cause.as_str(),
            letter.reason,
            letter.attempts,
            now_ms,
            to_json(&letter.properties)?,
            to_json(&events)?
        ],
    )?;
    Ok(c.last_insert_rowid())
}

/// Puts a dead letter back in the queue under its email (what it queues: [`codec::replay`]).
fn requeue(
    c: &Connection,
    o: &StoreOptions,
    letter: &DeadLetter,
    now_ms: i64,
) -> Result<(), StoreError> {
    for (update, raw) in codec::replay(letter, now_ms)? {
        // The spelling the event was sent with, as the first time (an email-less event was
        // queued under the letter's key).
        let email = Email::sent_as(update.email.as_deref().unwrap_or(&letter.email));
        let encoded = Encoded::of(&update)?;
        // An operator's replay is wanted now: live, whatever lane the events came in.
        let queued = Queued {
            update: &update,
            encoded: &encoded,
            raw: &raw,
            lane: Lane::Live,
        };
        enqueue(c, o, &queued, &email, now_ms)?;
    }
    // A job that was waiting keeps its place; a replay should be tried now.
    c.execute(
        "UPDATE jobs SET next_attempt_ms = MIN(next_attempt_ms, ?2) WHERE email = ?1",
        params![letter.email, now_ms],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
