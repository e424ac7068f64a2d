//! The SQLite store's schema: its migration steps, and how a connection is brought to the latest.
//!
//! In: a connection to `relay.db`, before the store uses it. Out: the store at the latest
//! version ([`upgrade`]), or a refusal that changed nothing ([`check`]).
//!
//! Stays true:
//! - The version is `PRAGMA user_version`, kept in the database header: setting it inside a
//!   step's transaction commits or rolls back with the step's statements, there is no table to
//!   create before the first step, and `sqlite3 relay.db 'PRAGMA user_version'` shows it.
//! - A store newer than [`MIGRATIONS`] is refused before anything is written to it.
//! - Only the relay, holding the directory lock, upgrades; tools opening the store beside a
//!   running relay refuse a store that is not exactly at the latest version (see
//!   `SqliteStore::open_shared`).

use rusqlite::{Connection, TransactionBehavior};

use crate::store::migrate::{self, Migration, Plan};
use crate::store::StoreError;

/// The setting that says where a SQLite store lives, named in refusals.
const LOCATION_SETTING: &str = "RELAY_DATA_DIR";

/// Every step, in order. A released step is never edited: a change is a new step.
pub(in crate::store) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "queue, dedupe ids, remembered emails, applied values, dead letters",
        sql: V1,
    },
    Migration {
        version: 2,
        name: "emails keyed case-insensitively, spellings kept; dead letters' causes; status",
        sql: V2,
    },
    Migration {
        version: 3,
        name: "delivery lease and the budget handed over with it",
        sql: V3,
    },
    Migration {
        version: 4,
        name: "lanes: imported events wait behind live ones",
        sql: V4,
    },
];

/// The schema as it was before versions were recorded. Stores written then are at version 0
/// with these tables already in place, so this step creates only what is missing and a store
/// from then upgrades by recording version 1 (`IF NOT EXISTS` is for that reason alone: later
/// steps know exactly what they start from).
const V1: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    email TEXT NOT NULL,
    user_id TEXT,
    ts_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    traits TEXT NOT NULL,
    engage TEXT,
    raw TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_email ON events(email, id);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id);
CREATE TABLE IF NOT EXISTS jobs (
    email TEXT PRIMARY KEY,
    next_attempt_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_queued_ms INTEGER NOT NULL,
    waiting_since_ms INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(next_attempt_ms);
CREATE TABLE IF NOT EXISTS seen (
    message_id TEXT PRIMARY KEY,
    seen_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_age ON seen(seen_ms);
CREATE TABLE IF NOT EXISTS user_emails (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    email TEXT NOT NULL,
    key TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (email, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    properties TEXT NOT NULL,
    events TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
";

/// Emails become keys (trimmed, ASCII-lowercased, as `identify::email_key` makes them): one job
/// and one set of applied timestamps per person whatever the case Segment sent. Rows that
/// differed only in case are merged (the earliest schedule and first queue time, the latest
/// applied timestamp); an event keeps the spelling it was sent with in `sent_email`, because
/// ProsperStack's email filter may compare exactly. Remembered emails keep their spelling.
/// Dead letters also record their cause (`DeadLetterCause`; none for older ones), and each
/// serving process saves its status document, for `prosperstack-relay status`.
const V2: &str = "
ALTER TABLE events ADD COLUMN sent_email TEXT;
UPDATE events SET sent_email = email WHERE email <> lower(email);
UPDATE events SET email = lower(email);

CREATE TABLE jobs_v2 (
    email TEXT PRIMARY KEY,
    next_attempt_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_queued_ms INTEGER NOT NULL,
    waiting_since_ms INTEGER,
    last_error TEXT
);
INSERT INTO jobs_v2 (email, next_attempt_ms, attempts, first_queued_ms, waiting_since_ms, last_error)
    SELECT lower(email), MIN(next_attempt_ms), MAX(attempts), MIN(first_queued_ms),
           MIN(waiting_since_ms), MAX(last_error)
    FROM jobs GROUP BY lower(email);
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_due ON jobs(next_attempt_ms);

CREATE TABLE applied_v2 (
    email TEXT NOT NULL,
    key TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (email, key)
) WITHOUT ROWID;
INSERT INTO applied_v2 (email, key, ts_ms, updated_ms)
    SELECT lower(email), key, MAX(ts_ms), MAX(updated_ms) FROM applied GROUP BY lower(email), key;
DROP TABLE applied;
ALTER TABLE applied_v2 RENAME TO applied;

UPDATE dead_letters SET email = lower(email);
ALTER TABLE dead_letters ADD COLUMN cause TEXT;

CREATE TABLE status (
    replica TEXT PRIMARY KEY,
    saved_ms INTEGER NOT NULL,
    body TEXT NOT NULL
) WITHOUT ROWID;
";

/// The delivery lease: one row, created by the first holder. A released lease expires at
/// `i64::MIN`. The budget columns are kept across holders (they are the handover).
const V3: &str = "
CREATE TABLE lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    budget_remaining INTEGER,
    budget_reset_ms INTEGER
);
";

/// Each event and job records its lane (`Lane::as_i64`: 0 live, 1 background); everything
/// queued before was live. Due jobs are listed by lane, then due time.
const V4: &str = "
ALTER TABLE events ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_lane_due ON jobs(lane, next_attempt_ms);
";

/// The version recorded in the store (0 for a new file or one written before versions).
pub(super) fn version(c: &Connection) -> Result<u32, StoreError> {
    let raw: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // user_version is any 32-bit integer; a negative one was not written by the relay.
    u32::try_from(raw).map_err(|_| {
        StoreError::Corrupt(format!("schema version {raw} is not one the relay writes"))
    })
}

/// Whether a store at `stored` may be opened: never when it is newer than this release; when it
/// is older, only by the caller that will upgrade it (`may_upgrade`).
pub(super) fn check(stored: u32, location: &str, may_upgrade: bool) -> Result<(), StoreError> {
    match migrate::plan(stored, MIGRATIONS) {
        Plan::Newer { found, known } => Err(newer(location, found, known)),
        Plan::Apply(steps) if !steps.is_empty() && !may_upgrade => Err(StoreError::OlderSchema {
            location: location.to_owned(),
            found: stored,
            latest: migrate::latest(MIGRATIONS),
        }),
        Plan::Apply(_) => Ok(()),
    }
}

/// Applies the steps the store still needs, each in its own transaction with the version bump,
/// and logs each; answers the versions reached, in order (empty when it was current).
pub(super) fn upgrade(c: &mut Connection, location: &str) -> Result<Vec<u32>, StoreError> {
    apply(c, location, MIGRATIONS)
}

fn apply(c: &mut Connection, location: &str, steps: &[Migration]) -> Result<Vec<u32>, StoreError> {
    let mut reached = Vec::new();
    loop {
        // The version is read inside the step's write transaction, so two openers racing
        // cannot both apply the same step.
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let from = version(&tx)?;
        let step = match migrate::plan(from, steps) {
            Plan::Newer { found, known } => return Err(newer(location, found, known)),
            Plan::Apply([]) => return Ok(reached),
            Plan::Apply([step, ..]) => *step,
        };
        tx.execute_batch(step.sql)?;
        tx.pragma_update(None, "user_version", step.version)?;
        tx.commit().map_err(|e| StoreError::Commit(e.to_string()))?;
        tracing::info!(
            from,
            to = step.version,
            step = step.name,
            location,
            "store schema upgraded"
        );
        reached.push(step.version);
    }
}

fn newer(location: &str, found: u32, known: u32) -> StoreError {
    StoreError::NewerSchema {
        location: location.to_owned(),
        setting: LOCATION_SETTING,
        found,
        known,
    }
}

#[cfg(test)]
mod tests;
