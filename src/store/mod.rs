//! Store: the durable queue between ingest and delivery.
//!
//! In: normalised events from `ingest` ([`Incoming`]); job results from `delivery` ([`JobResult`]).
//! Out: per-outcome answers for ingest ([`IngestOutcome`]) and due [`Job`]s for delivery.
//!
//! The contract every implementation keeps:
//! - **Acknowledgement.** `ingest` returns only after the events are committed durably (SQLite:
//!   WAL with `synchronous=FULL`; PostgreSQL: the server's COMMIT); ingest answers 2xx only
//!   then. Many concurrent calls share one transaction (group commit).
//! - **Dedupe.** An event whose `messageId` was stored before is answered `Duplicate` and not
//!   stored again, also when the same id reaches two replicas of one shared store at once.
//!   Seen ids are kept for the retention window (`prune`).
//! - **Email memory.** An Identify with no email takes the one last stored for its `userId`;
//!   with an email, that email is remembered for the `userId`. A `delete` forgets the user's
//!   email, their queued events and what was applied for that email.
//! - **Emails.** The queue, the remembered emails' use, applied timestamps and dead letters are
//!   keyed by [`crate::identify::email_key`] (trimmed, lowercased): one job per person whatever
//!   the case Segment sent; each event keeps the spelling it was sent with, for look-ups. An
//!   Identify with no email (and none remembered) that carries a platform ID is queued under
//!   [`crate::identify::platform_id_key`] instead (kept as sent: platform IDs are
//!   case-sensitive), so it is one job per subscriber too; without one it is `NoEmail`.
//! - **Jobs.** Queued events are grouped per email: one job per email, holding every event not
//!   yet delivered. A job is due at `next_attempt_ms`; due jobs are listed live lane first
//!   ([`Lane`]: a job is live while any of its events is), then by due time; a job whose live
//!   events were delivered and whose imported ones remain goes back to the background lane.
//!   Delivery reads due jobs, then reports a
//!   [`JobResult`] that covers the events up to `up_to_event_id` (events that arrived meanwhile
//!   stay queued and make the job due again).
//! - **Removal.** Events leave the queue only through `finish`: delivered (their values are
//!   recorded in the applied table with their timestamps, so a stale event arriving later can
//!   be recognised) or moved to a dead letter. Nothing else deletes them, so a crash at any
//!   moment leaves every acknowledged event either queued or delivered.
//! - **Attempts.** A retried job keeps its attempt count, next-try time, the time its subscriber
//!   was first found missing and the last error; these survive restarts.
//! - **Dead letters** keep the reason, the attempts, the properties concerned and the original
//!   events' JSON; replay puts the original events back in the queue.
//! - **Schema versions.** The store records the version of its schema and moves it only through
//!   the ordered steps of `migrate`, each applied in one transaction with its version, by the
//!   process that owns the store (the relay, at start); a store written by a newer release is
//!   refused untouched ([`StoreError::NewerSchema`]), and a tool opening a store beside a
//!   running relay refuses one it would have to upgrade ([`StoreError::OlderSchema`]). Replicas
//!   starting together on one shared store apply each step once (PostgreSQL: an advisory lock).
//! - **One deliverer: the lease.** At most one holder delivers from a store at a time.
//!   `acquire_lease(holder, ttl)` takes the lease when it is free (never taken, released, or
//!   lapsed) or renews it when `holder` has it and it has not lapsed, until `ttl` from now; it
//!   answers the [`Lease`], or `None` while another holder has it. The lease's `epoch` is its
//!   fencing token: it grows by one whenever the lease is taken rather than renewed (by another
//!   holder, or by the same one after a lapse or a release), so one epoch names one unbroken
//!   tenure. Every write only the deliverer makes (`finish`, `save_budget`) carries the lease and
//!   is refused with [`StoreError::LeaseLost`], changing nothing, unless its tenure is current
//!   and unexpired when the write's transaction checks it; no one can take the lease until that
//!   transaction ends. So a paused old leader cannot write once its lease has lapsed, whoever
//!   holds it now. `release_lease` ends the tenure at once (on SIGTERM), so a standby takes over
//!   without waiting for the expiry.
//! - **Whose clock.** Lease expiry is judged by the store's clock: SQLite uses the caller's
//!   `now_ms` (one machine), PostgreSQL its server's clock (replicas' clocks may disagree), so a
//!   holder counts on its lease only until `ttl` after it *asked*, on its own monotonic clock.
//!   Holder ids must be unique per process: two processes under one id would share a tenure.
//! - **Budget handover.** The holder records what it knows of the upstream rate-limit window
//!   (`save_budget`: requests remaining, time until the reset); the record outlives the tenure,
//!   so the next holder starts from it (`load_budget`) instead of from a full window. It is
//!   forgotten once its window has passed. Times in it are durations, for the same clock reason.

mod codec;
pub mod copy;
mod lease;
mod migrate;
mod postgres;
mod settings;
mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::identify::{Engage, Event};

pub use lease::{BudgetSnapshot, Lease};
pub use postgres::PostgresStore;
pub use settings::StoreSettings;
pub use sqlite::SqliteStore;

/// Tunables shared by every store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// A new job waits this long before its first attempt, so that events for the same
    /// subscriber arriving close together go out as one update.
    pub coalesce_ms: i64,
}

/// One event as ingest hands it to the store.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub event: Event,
    /// The event's JSON as received, kept for dead letters and replay.
    pub raw: String,
    /// Live from Segment, or imported history that waits behind live events.
    pub lane: Lane,
}

impl Incoming {
    /// An event as Segment sent it, in the live lane.
    pub fn live(event: Event, raw: String) -> Incoming {
        Incoming {
            event,
            raw,
            lane: Lane::Live,
        }
    }
}

/// Which queue an event waits in. Due jobs are delivered live lane first, so a long backfill
/// never holds back a change Segment just sent; a job holding any live event is live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Segment's events (and replayed dead letters): first.
    #[default]
    Live,
    /// Imported history (`prosperstack-relay import`): when no live job is due.
    Background,
}

impl Lane {
    /// As stored: 0 live, 1 background (ascending order is delivery order).
    pub fn as_i64(self) -> i64 {
        match self {
            Lane::Live => 0,
            Lane::Background => 1,
        }
    }

    pub fn from_i64(n: i64) -> Lane {
        if n == 0 {
            Lane::Live
        } else {
            Lane::Background
        }
    }
}

/// What became of one incoming event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored,
    Duplicate,
    /// A delete request that was applied.
    Forgotten,
    Ignored,
    /// An Identify without an email and none remembered for its `userId`.
    NoEmail,
}

/// An event waiting to be delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedEvent {
    pub id: i64,
    pub message_id: String,
    pub timestamp_ms: i64,
    pub traits: Map<String, Value>,
    pub engage: Option<Engage>,
    /// The event's `userId`: where its platform ID is when `mapping.platform_id_trait` is `userId`.
    pub user_id: Option<String>,
}

/// Everything queued for one email.
#[derive(Clone, Debug)]
pub struct Job {
    /// The email's key ([`crate::identify::email_key`]): one job per person whatever the case.
    pub email: String,
    /// Other spellings the queued events were sent with (latest first), for look-ups by an
    /// API whose email filter may compare exactly.
    pub spellings: Vec<String>,
    pub attempts: u32,
    pub first_queued_ms: i64,
    /// When delivery first found no subscriber with this email.
    pub waiting_since_ms: Option<i64>,
    /// Live while any of its events is.
    pub lane: Lane,
    pub events: Vec<QueuedEvent>,
    /// Property key → timestamp of the value last delivered for this email.
    pub applied: HashMap<String, i64>,
}

impl Job {
    pub fn up_to_event_id(&self) -> i64 {
        self.events.iter().map(|e| e.id).max().unwrap_or(0)
    }
}

/// A property ProsperStack refused, to be kept as a dead letter.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedProperty {
    pub key: String,
    pub value: Value,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// Sent (or nothing needed sending): the events leave the queue; `applied` records the
    /// timestamp of each property value now in ProsperStack; `rejected` become dead letters.
    Delivered {
        applied: Vec<(String, i64)>,
        rejected: Vec<RejectedProperty>,
        attempts: u32,
    },
    /// Try again later; the events stay queued.
    RetryAt {
        at_ms: i64,
        attempts: u32,
        waiting_since_ms: Option<i64>,
        error: String,
    },
    /// Give up: the events become one dead letter.
    DeadLetter {
        reason: String,
        attempts: u32,
        cause: DeadLetterCause,
    },
}

impl JobOutcome {
    /// The dead letters recording this outcome makes: one per refused property of a delivery,
    /// one for a job given up on, none for a retry. Both stores write exactly these.
    pub(crate) fn letters(&self) -> Vec<Letter> {
        match self {
            JobOutcome::RetryAt { .. } => Vec::new(),
            JobOutcome::Delivered {
                rejected, attempts, ..
            } => rejected
                .iter()
                .map(|r| Letter {
                    cause: DeadLetterCause::PropertyRefused,
                    reason: r.reason.clone(),
                    attempts: *attempts,
                    properties: Map::from_iter([(r.key.clone(), r.value.clone())]),
                })
                .collect(),
            JobOutcome::DeadLetter {
                reason,
                attempts,
                cause,
            } => vec![Letter {
                cause: *cause,
                reason: reason.clone(),
                attempts: *attempts,
                properties: Map::new(),
            }],
        }
    }
}

/// What a new dead letter says beside its events.
pub(crate) struct Letter {
    pub cause: DeadLetterCause,
    pub reason: String,
    pub attempts: u32,
    /// The properties concerned (`{}` when the whole update failed).
    pub properties: Map<String, Value>,
}

/// Why work became a dead letter: a closed set, for metrics and for sorting dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterCause {
    /// No subscriber had the email by the end of `subscriber_wait`.
    NoSubscriber,
    /// ProsperStack refused the update (a 4xx other than 401/403/404/429).
    Rejected,
    /// ProsperStack refused one property's value; the rest of the update went.
    PropertyRefused,
    /// 5xx, timeouts or a refused key for longer than `retry_window`.
    RetriesExhausted,
    /// Written before causes were recorded.
    Unknown,
}

impl DeadLetterCause {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterCause::NoSubscriber => "no_subscriber",
            DeadLetterCause::Rejected => "rejected",
            DeadLetterCause::PropertyRefused => "property_refused",
            DeadLetterCause::RetriesExhausted => "retries_exhausted",
            DeadLetterCause::Unknown => "unknown",
        }
    }

    /// The cause a stored name stands for (`Unknown` for none or an unknown one).
    pub fn parse(name: Option<&str>) -> DeadLetterCause {
        [
            DeadLetterCause::NoSubscriber,
            DeadLetterCause::Rejected,
            DeadLetterCause::PropertyRefused,
            DeadLetterCause::RetriesExhausted,
        ]
        .into_iter()
        .find(|c| Some(c.as_str()) == name)
        .unwrap_or(DeadLetterCause::Unknown)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub email: String,
    pub up_to_event_id: i64,
    pub outcome: JobOutcome,
}

/// Queue figures for metrics, status and progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct QueueStats {
    pub events: u64,
    pub subscribers: u64,
    pub oldest_received_ms: Option<i64>,
    /// Never attempted yet: the live backlog (due now, or within the coalescing delay).
    pub due: StateStats,
    /// Found no subscriber with the email yet: retried on the waiting schedule.
    pub waiting: StateStats,
    /// Failed (5xx, timeout, 429, refused key) and retried with backoff.
    pub retrying: StateStats,
    pub dead_letters: u64,
    /// What the store takes on disk (files of the data directory, or the database's size).
    pub bytes: u64,
}

impl QueueStats {
    /// The three states with their names as metrics and status show them.
    pub fn states(&self) -> [(&'static str, StateStats); 3] {
        [
            ("due", self.due),
            ("waiting", self.waiting),
            ("retrying", self.retrying),
        ]
    }
}

/// The queued events of one lane by their job's state, for following an import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Never attempted yet.
    pub due: u64,
    /// Found no subscriber yet.
    pub waiting: u64,
    /// Failed and retried with backoff.
    pub retrying: u64,
}

/// One state's share of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateStats {
    pub subscribers: u64,
    pub events: u64,
    /// When the oldest event in this state arrived.
    pub oldest_received_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub email: String,
    pub cause: DeadLetterCause,
    pub reason: String,
    pub attempts: u32,
    pub created_ms: i64,
    /// The properties concerned (`{}` when the whole update failed).
    pub properties: Map<String, Value>,
    /// The original events' JSON.
    pub events: Vec<Value>,
}

/// A status document as a serving process saved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedStatus {
    pub replica: String,
    pub saved_ms: i64,
    /// The JSON of [`crate::status::Status`].
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("cannot use data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("the store is closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the transaction could not be committed: {0}")]
    Commit(String),
    /// The store's schema is newer than this release knows; nothing in it was changed.
    /// `setting` names where the store's location is configured.
    #[error(
        "the store in {location} was written by a newer prosperstack-relay (schema version \
         {found}; this release knows up to {known}): upgrade the relay, or point {setting} elsewhere"
    )]
    NewerSchema {
        location: String,
        setting: &'static str,
        found: u32,
        known: u32,
    },
    /// The store needs an upgrade that only the relay performs when it opens the store (a tool
    /// opening it beside a running older relay must not change the schema under it).
    #[error(
        "the store in {location} is at schema version {found} and this release needs {latest}: \
         only the relay upgrades a store, when it starts; start this release's relay on it \
         (`prosperstack-relay serve`, after stopping any older one), then try again"
    )]
    OlderSchema {
        location: String,
        found: u32,
        latest: u32,
    },
    /// A deliverer-only write carried a lease whose tenure is over (lapsed, released, or taken
    /// by another holder): nothing was written. The caller stops delivering until it holds the
    /// lease again.
    #[error("the delivery lease has moved on: nothing was written")]
    LeaseLost,
    /// The database server cannot be reached, or the connection broke (refused, timed out,
    /// closed, shutting down): retry later. Ingest answers 503 and `/readyz` is not ready.
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// PostgreSQL refused a statement: the server's message and SQLSTATE (`None` for a failure
    /// on the client's side), never credentials nor the values of a row (they can be emails).
    #[error("PostgreSQL: {message}{}", sqlstate(.code))]
    Postgres {
        code: Option<String>,
        message: String,
    },
    /// The database URL cannot be used; `reason` never quotes the URL (it holds the password).
    #[error("{setting} is not usable: {reason}")]
    DatabaseUrl {
        setting: &'static str,
        reason: String,
    },
}

fn sqlstate(code: &Option<String>) -> String {
    code.as_ref()
        .map(|c| format!(" (SQLSTATE {c})"))
        .unwrap_or_default()
}

impl StoreError {
    /// Whether the database could not be reached at all (as opposed to refusing something).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable(_))
    }
}

/// The durable queue: SQLite on one machine, PostgreSQL shared by several replicas. The
/// contract at the top of this module holds for both.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores the events in one transaction and answers one outcome per event, in order.
    async fn ingest(
        &self,
        events: Vec<Incoming>,
        now_ms: i64,
    ) -> Result<Vec<IngestOutcome>, StoreError>;
    /// Jobs due at `now_ms`, live lane first, then oldest first, at most `limit`.
    async fn due_jobs(&self, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError>;
    /// The emails of the jobs due at `now_ms`, live lane first, then oldest first, at most
    /// `limit`.
    async fn due_emails(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Whether a live job is due at `now_ms`: delivery stops working through imported jobs
    /// when one is.
    async fn live_due(&self, now_ms: i64) -> Result<bool, StoreError>;
    /// The queued events of `lane` by state.
    async fn lane_stats(&self, lane: Lane) -> Result<LaneStats, StoreError>;
    /// One email's job as it is now (events queued since it was listed included), if any.
    async fn job(&self, email: &str) -> Result<Option<Job>, StoreError>;
    /// When the next job falls due, if any is queued.
    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError>;
    /// Records the results of delivery attempts, all in one transaction, if `lease` is still
    /// current ([`StoreError::LeaseLost`] otherwise, and nothing is recorded); answers the ids
    /// of the dead letters it created, in the order of the results (within one, its refused
    /// properties first).
    async fn finish(
        &self,
        lease: &Lease,
        results: Vec<JobResult>,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError>;
    async fn stats(&self) -> Result<QueueStats, StoreError>;
    /// A real round trip (write and read) for readiness, writing `now_ms`.
    async fn ping(&self, now_ms: i64) -> Result<(), StoreError>;
    /// Forgets seen message ids and applied timestamps older than `before_ms`.
    async fn prune(&self, before_ms: i64) -> Result<u64, StoreError>;
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;
    /// Puts the original events of the given dead letters (all when `None`) back in the queue.
    async fn replay_dead_letters(
        &self,
        ids: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError>;
    async fn purge_dead_letters(&self, created_before_ms: i64) -> Result<usize, StoreError>;
    /// Saves a serving process's status document (JSON), replacing its previous one, and
    /// forgets those of processes silent since `forget_before_ms`.
    async fn save_status(
        &self,
        replica: String,
        body: String,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<(), StoreError>;
    /// The saved status documents, the most recent first.
    async fn saved_statuses(&self) -> Result<Vec<SavedStatus>, StoreError>;
    /// Takes the delivery lease for `holder`, or renews it if `holder` has it unexpired, until
    /// `ttl` from now; `None` while another holder has it.
    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Option<Lease>, StoreError>;
    /// Ends `lease`'s tenure now, so another holder can take it at once; false when it had
    /// already ended.
    async fn release_lease(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError>;
    /// Records what the holder of `lease` knows of the upstream window, for whoever delivers
    /// next ([`StoreError::LeaseLost`] if the tenure is over).
    async fn save_budget(
        &self,
        lease: &Lease,
        budget: BudgetSnapshot,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The last recorded budget, with the time left until its reset; `None` when none was
    /// recorded or its window has passed.
    async fn load_budget(&self, now_ms: i64) -> Result<Option<BudgetSnapshot>, StoreError>;
}

#[cfg(test)]
mod contract_tests;
