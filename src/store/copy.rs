//! `store copy`: a SQLite data directory's state moved into a PostgreSQL store, for a
//! deployment outgrowing one node.
//!
//! In: a SQLite data directory no relay is running on, at exactly this release's schema
//! ([`SqliteStore::export`]); a [`PostgresStore`] (a new database is given its schema, one in
//! use must be at this release's). Out: the rows copied, stage by stage, each batch in one
//! transaction; a [`CopyReport`] of what was copied and what was already there; [`Progress`]
//! after every batch.
//!
//! Stays true:
//! - **Rows as stored.** Events, traits, raw JSON and dead letters are copied as the text SQLite
//!   holds, never decoded and re-encoded, so delivery from PostgreSQL sends what SQLite would.
//! - **Nothing doubled when rerun.** A queued event is copied only if its `messageId` is not
//!   already seen by the target, and copying it records the id as seen in the same transaction
//!   (ingest's own dedupe: an id a replica took meanwhile is a duplicate too). Other rows go
//!   by their natural keys: dedupe ids and remembered emails by id, applied values by (email,
//!   key), keeping the later; a dead letter is already there when one with the same email,
//!   time, reason and events is. A copy cut short (a crash, the database gone) is finished by
//!   running it again: committed batches are found there, the rest is copied.
//! - **Ordered so live replicas stay right.** Applied values and remembered emails go first:
//!   replicas delivering from the target while the copy runs already know what was sent. A
//!   queue batch takes the emails' queue locks (as ingest does), so its events take ids in
//!   commit order; a job that exists in the target already keeps the earlier schedule.
//! - Ids of dead letters are the target's own: `dead-letters list` shows new ones.

use std::collections::{HashMap, HashSet};

pub use super::sqlite::Export;
use super::{PostgresStore, StoreError};

/// Rows read and written per transaction.
pub const DEFAULT_BATCH: usize = 1_000;

/// One queued event as SQLite keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub message_id: String,
    /// The email's key; `sent_email` is the other spelling it was sent with, if any.
    pub email: String,
    pub sent_email: Option<String>,
    pub user_id: Option<String>,
    pub ts_ms: i64,
    pub received_ms: i64,
    pub traits: String,
    pub engage: Option<String>,
    pub raw: String,
    /// Its lane (`Lane::as_i64`): imported history stays behind live events after the move.
    pub lane: i64,
    /// When the source saw its `messageId` (its arrival when the id was pruned or never
    /// claimed: replayed events).
    pub seen_ms: i64,
}

/// One job with its schedule and its events, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredJob {
    pub email: String,
    pub next_attempt_ms: i64,
    pub attempts: i64,
    pub first_queued_ms: i64,
    pub waiting_since_ms: Option<i64>,
    pub last_error: Option<String>,
    pub lane: i64,
    pub events: Vec<StoredEvent>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SeenId {
    pub message_id: String,
    pub seen_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RememberedEmail {
    pub user_id: String,
    pub email: String,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AppliedValue {
    pub email: String,
    pub key: String,
    pub ts_ms: i64,
    pub updated_ms: i64,
}

/// A dead letter as SQLite keeps it (properties and events as JSON text).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub email: String,
    pub cause: Option<String>,
    pub reason: String,
    pub attempts: i64,
    pub created_ms: i64,
    pub properties: String,
    pub events: String,
}

/// The copy's stages, in the order they run (see the module's opening for why).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Applied,
    RememberedEmails,
    Queue,
    SeenIds,
    DeadLetters,
}

impl Stage {
    pub fn describe(self) -> &'static str {
        match self {
            Stage::Applied => "applied values",
            Stage::RememberedEmails => "remembered emails",
            Stage::Queue => "subscribers with queued events",
            Stage::SeenIds => "dedupe ids",
            Stage::DeadLetters => "dead letters",
        }
    }
}

/// How far a stage has got: rows of the source read so far, of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    pub total: u64,
}

/// Rows of one kind: copied now, or found in the target already (copied by an earlier run, or
/// the same id ingested there meanwhile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub copied: u64,
    pub already_there: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.copied += other.copied;
        self.already_there += other.already_there;
    }
}

/// What one run did, kind by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    pub events: Tally,
    /// Subscribers with queued events (jobs); one is copied when any of its events is.
    pub jobs: Tally,
    /// Seen message ids, queued events' included.
    pub seen_ids: Tally,
    pub remembered_emails: Tally,
    pub applied_values: Tally,
    pub dead_letters: Tally,
}

impl CopyReport {
    /// The kinds with their names as the CLI prints them.
    pub fn rows(&self) -> [(&'static str, Tally); 6] {
        [
            ("queued events", self.events),
            ("subscribers with queued events", self.jobs),
            ("dedupe ids", self.seen_ids),
            ("remembered emails", self.remembered_emails),
            ("applied values", self.applied_values),
            ("dead letters", self.dead_letters),
        ]
    }

    /// Whether this run found everything there already (a rerun).
    pub fn nothing_copied(&self) -> bool {
        self.rows().iter().all(|(_, t)| t.copied == 0)
    }
}

/// What a queue batch did, for the report and for the ids the run claimed.
#[derive(Debug, Default)]
pub struct QueueBatch {
    pub events: Tally,
    pub jobs: Tally,
    /// Message ids this batch recorded as seen (for its events).
    pub claimed: Vec<String>,
}

/// Connects to the target as a tool does; a database with no store yet is given this release's
/// schema (a copy into a new database is how a deployment starts), any other must be at
/// exactly this release's version.
pub async fn open_target(url: &str) -> Result<PostgresStore, StoreError> {
    match PostgresStore::connect_shared(url).await {
        Err(StoreError::OlderSchema { found: 0, .. }) => {
            PostgresStore::connect(url, super::StoreOptions::default()).await
        }
        opened => opened,
    }
}

/// The target as messages show it: user, hosts, port and database, never the password.
pub fn target_location(url: &str) -> String {
    super::postgres::display_location(url)
}

/// Copies everything `source` holds into `target`, batch by batch, calling `progress` after
/// each batch.
pub async fn copy(
    source: &Export,
    target: &PostgresStore,
    batch: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<CopyReport, StoreError> {
    let batch = batch.max(1);
    let totals = source.totals().await?;
    let mut report = CopyReport::default();
    let mut run = Run {
        batch,
        totals,
        progress,
    };
    report.applied_values = run.applied(source, target).await?;
    report.remembered_emails = run.remembered(source, target).await?;
    let (events, jobs, claimed) = run.queue(source, target).await?;
    (report.events, report.jobs) = (events, jobs);
    report.seen_ids = run.seen(source, target, &claimed).await?;
    report.dead_letters = run.dead_letters(source, target).await?;
    Ok(report)
}

/// Row counts of the source, per stage, for progress.
pub type Totals = HashMap<Stage, u64>;

struct Run<'a> {
    batch: usize,
    totals: Totals,
    progress: &'a mut dyn FnMut(Progress),
}

impl Run<'_> {
    fn tell(&mut self, stage: Stage, done: u64) {
        let total = self.totals.get(&stage).copied().unwrap_or(0);
        (self.progress)(Progress { stage, done, total });
    }

    async fn applied(
        &mut self,
        source: &Export,
        target: &PostgresStore,
    ) -> Result<Tally, StoreError> {
        let (mut tally, mut done, mut after) = (Tally::default(), 0, None);
        loop {
            let rows = source.applied(after.clone(), self.batch).await?;
            let Some(last) = rows.last() else {
                return Ok(tally);
            };
            after = Some((last.email.clone(), last.key.clone()));
            tally.add(target.import_applied(&rows).await?);
            done += rows.len() as u64;
            self.tell(Stage::Applied, done);
        }
    }

    async fn remembered(
        &mut self,
        source: &Export,
        target: &PostgresStore,
    ) -> Result<Tally, StoreError> {
        let (mut tally, mut done, mut after) = (Tally::default(), 0, None);
        loop {
            let rows = source.remembered_emails(after.clone(), self.batch).await?;
            let Some(last) = rows.last() else {
                return Ok(tally);
            };
            after = Some(last.user_id.clone());
            tally.add(target.import_remembered_emails(&rows).await?);
            done += rows.len() as u64;
            self.tell(Stage::RememberedEmails, done);
        }
    }

    /// Jobs in batches of `batch` subscribers; answers the event and job tallies and the ids
    /// this run recorded as seen.
    async fn queue(
        &mut self,
        source: &Export,
        target: &PostgresStore,
    ) -> Result<(Tally, Tally, HashSet<String>), StoreError> {
        let (mut events, mut jobs, mut claimed) =
            (Tally::default(), Tally::default(), HashSet::new());
        let (mut done, mut after) = (0, None);
        loop {
            let batch = source.jobs(after.clone(), self.batch).await?;
            let Some(last) = batch.last() else {
                return Ok((events, jobs, claimed));
            };
            after = Some(last.email.clone());
            let outcome = target.import_jobs(&batch, &claimed).await?;
            events.add(outcome.events);
            jobs.add(outcome.jobs);
            claimed.extend(outcome.claimed);
            done += batch.len() as u64;
            self.tell(Stage::Queue, done);
        }
    }

    /// Seen ids; those this run recorded for its events count as copied, not sent again.
    async fn seen(
        &mut self,
        source: &Export,
        target: &PostgresStore,
        claimed: &HashSet<String>,
    ) -> Result<Tally, StoreError> {
        let mut tally = Tally::default();
        let (mut done, mut after) = (0, None);
        loop {
            let rows = source.seen_ids(after.clone(), self.batch).await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = Some(last.message_id.clone());
            done += rows.len() as u64;
            let rest: Vec<SeenId> = rows
                .into_iter()
                .filter(|r| !claimed.contains(&r.message_id))
                .collect();
            tally.add(target.import_seen_ids(&rest).await?);
            self.tell(Stage::SeenIds, done);
        }
        tally.copied += claimed.len() as u64;
        Ok(tally)
    }

    async fn dead_letters(
        &mut self,
        source: &Export,
        target: &PostgresStore,
    ) -> Result<Tally, StoreError> {
        let (mut tally, mut done, mut after) = (Tally::default(), 0, 0);
        loop {
            let rows = source.dead_letters(after, self.batch).await?;
            let Some(last) = rows.last() else {
                return Ok(tally);
            };
            after = last.id;
            tally.add(target.import_dead_letters(&rows).await?);
            done += rows.len() as u64;
            self.tell(Stage::DeadLetters, done);
        }
    }
}

#[cfg(test)]
mod tests;
