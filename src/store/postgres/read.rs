//! The PostgreSQL store's reads: due jobs, one job, queue figures, dead letters.
//!
//! In: a read-only REPEATABLE READ transaction, so a job's head, events and applied values, or
//! the queue's figures, come from one snapshot even while other replicas write.
//! Out: the same values SQLite answers for the same data.

use std::collections::HashMap;

use deadpool_postgres::Transaction;

use super::{one, rows, text};
use crate::identify::Engage;
use crate::store::codec::from_json;
use crate::store::{
    DeadLetter, Job, Lane, LaneStats, QueueStats, QueuedEvent, StateStats, StoreError,
};

/// The order jobs fall due in, live lane first; the email breaks ties so every replica lists
/// them alike.
const DUE: &str = "FROM jobs WHERE next_attempt_ms <= $1
     ORDER BY lane, next_attempt_ms, first_queued_ms, email LIMIT $2";

pub(super) async fn due_emails(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    rows(tx, &format!("SELECT email {DUE}"), &[&now_ms, &limit])
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
}

pub(super) async fn due_jobs(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let heads = rows(
        tx,
        &format!("SELECT email, attempts, first_queued_ms, waiting_since_ms, lane {DUE}"),
        &[&now_ms, &limit],
    )
    .await?;
    let mut jobs = Vec::with_capacity(heads.len());
    for head in &heads {
        jobs.push(load_job(tx, head).await?);
    }
    Ok(jobs)
}

pub(super) async fn job(tx: &Transaction<'_>, email: &str) -> Result<Option<Job>, StoreError> {
    let head = rows(
        tx,
        "SELECT email, attempts, first_queued_ms, waiting_since_ms, lane FROM jobs
         WHERE email = $1",
        &[&text(email)],
    )
    .await?;
    match head.first() {
        Some(head) => Ok(Some(load_job(tx, head).await?)),
        None => Ok(None),
    }
}

/// A job from its head row (email, attempts, first_queued_ms, waiting_since_ms, lane).
async fn load_job(tx: &Transaction<'_>, head: &tokio_postgres::Row) -> Result<Job, StoreError> {
    let email: String = head.try_get(0)?;
    let attempts: i64 = head.try_get(1)?;
    Ok(Job {
        events: queued_events(tx, &email).await?,
        applied: applied(tx, &email).await?,
        spellings: spellings(tx, &email).await?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("{attempts} attempts")))?,
        first_queued_ms: head.try_get(2)?,
        waiting_since_ms: head.try_get(3)?,
        lane: Lane::from_i64(head.try_get(4)?),
        email,
    })
}

/// The spellings an email's queued events were sent with, other than its key, latest first.
async fn spellings(tx: &Transaction<'_>, email: &str) -> Result<Vec<String>, StoreError> {
    rows(
        tx,
        "SELECT sent_email FROM events WHERE email = $1 AND sent_email IS NOT NULL
         GROUP BY sent_email ORDER BY MAX(id) DESC",
        &[&email],
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get(0)?))
    .collect()
}

async fn queued_events(tx: &Transaction<'_>, email: &str) -> Result<Vec<QueuedEvent>, StoreError> {
    let found = rows(
        tx,
        "SELECT id, message_id, ts_ms, traits, engage, user_id FROM events WHERE email = $1
         ORDER BY id",
        &[&email],
    )
    .await?;
    found
        .iter()
        .map(|r| {
            let engage: Option<&str> = r.try_get(4)?;
            Ok(QueuedEvent {
                id: r.try_get(0)?,
                message_id: r.try_get(1)?,
                timestamp_ms: r.try_get(2)?,
                traits: from_json(r.try_get(3)?)?,
                engage: engage.map(from_json::<Engage>).transpose()?,
                user_id: r.try_get(5)?,
            })
        })
        .collect()
}

async fn applied(tx: &Transaction<'_>, email: &str) -> Result<HashMap<String, i64>, StoreError> {
    rows(
        tx,
        "SELECT key, ts_ms FROM applied WHERE email = $1",
        &[&email],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect()
}

pub(super) async fn live_due(tx: &Transaction<'_>, now_ms: i64) -> Result<bool, StoreError> {
    let found = rows(
        tx,
        "SELECT 1 FROM jobs WHERE lane = $1 AND next_attempt_ms <= $2 LIMIT 1",
        &[&Lane::Live.as_i64(), &now_ms],
    )
    .await?;
    Ok(!found.is_empty())
}

/// A lane's events by their job's state, as SQLite counts them.
pub(super) async fn lane_stats(tx: &Transaction<'_>, lane: Lane) -> Result<LaneStats, StoreError> {
    let found = rows(
        tx,
        "SELECT CASE WHEN j.waiting_since_ms IS NOT NULL THEN 'waiting'
                     WHEN j.attempts > 0 THEN 'retrying' ELSE 'due' END AS state, COUNT(*)
         FROM events e JOIN jobs j ON j.email = e.email WHERE e.lane = $1 GROUP BY state",
        &[&lane.as_i64()],
    )
    .await?;
    let mut stats = LaneStats::default();
    for r in &found {
        let (state, n): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        let n = u64::try_from(n).unwrap_or(0);
        match state.as_str() {
            "waiting" => stats.waiting = n,
            "retrying" => stats.retrying = n,
            _ => stats.due = n,
        }
    }
    Ok(stats)
}

pub(super) async fn next_due_ms(tx: &Transaction<'_>) -> Result<Option<i64>, StoreError> {
    Ok(one(tx, "SELECT MIN(next_attempt_ms) FROM jobs", &[])
        .await?
        .try_get(0)?)
}

pub(super) async fn stats(tx: &Transaction<'_>) -> Result<QueueStats, StoreError> {
    let count = |table: &'static str| async move {
        let n: i64 = one(tx, &format!("SELECT COUNT(*) FROM {table}"), &[])
            .await?
            .try_get(0)?;
        Ok::<u64, StoreError>(u64::try_from(n).unwrap_or(0))
    };
    // Ids grow with arrival, so the oldest event is the first by id: no scan needed.
    let oldest = rows(
        tx,
        "SELECT received_ms FROM events ORDER BY id LIMIT 1",
        &[],
    )
    .await?;
    let mut stats = QueueStats {
        events: count("events").await?,
        subscribers: count("jobs").await?,
        oldest_received_ms: oldest.first().map(|r| r.try_get(0)).transpose()?,
        dead_letters: count("dead_letters").await?,
        bytes: bytes(tx).await?,
        ..QueueStats::default()
    };
    for (state, figures) in state_stats(tx).await? {
        match state.as_str() {
            "waiting" => stats.waiting = figures,
            "retrying" => stats.retrying = figures,
            _ => stats.due = figures,
        }
    }
    Ok(stats)
}

/// Subscribers, events and the oldest arrival per state (as SQLite counts them): waiting for
/// a subscriber, retrying after a failure, or due (never attempted). One pass over the jobs;
/// each job's events are counted on the `events (email, id)` index.
async fn state_stats(tx: &Transaction<'_>) -> Result<Vec<(String, StateStats)>, StoreError> {
    let found = rows(
        tx,
        "SELECT state, COUNT(*), COALESCE(SUM(n), 0)::bigint, MIN(oldest) FROM (
            SELECT CASE WHEN j.waiting_since_ms IS NOT NULL THEN 'waiting'
                        WHEN j.attempts > 0 THEN 'retrying' ELSE 'due' END AS state,
                   (SELECT COUNT(*) FROM events e WHERE e.email = j.email) AS n,
                   (SELECT received_ms FROM events e WHERE e.email = j.email
                    ORDER BY id LIMIT 1) AS oldest
            FROM jobs j) AS per_job
         GROUP BY state",
        &[],
    )
    .await?;
    found
        .iter()
        .map(|r| {
            let (subscribers, events): (i64, i64) = (r.try_get(1)?, r.try_get(2)?);
            let figures = StateStats {
                subscribers: u64::try_from(subscribers).unwrap_or(0),
                events: u64::try_from(events).unwrap_or(0),
                oldest_received_ms: r.try_get(3)?,
            };
            Ok((r.try_get(0)?, figures))
        })
        .collect()
}

/// What the store's tables take on disk, indexes and TOAST included: the tables of its schema,
/// not the whole database (which may hold other things).
async fn bytes(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let total: i64 = one(
        tx,
        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r'",
        &[],
    )
    .await?
    .try_get(0)?;
    Ok(u64::try_from(total).unwrap_or(0))
}

pub(super) async fn dead_letters(tx: &Transaction<'_>) -> Result<Vec<DeadLetter>, StoreError> {
    rows(
        tx,
        "SELECT id, email, cause, reason, attempts, created_ms, properties, events
         FROM dead_letters ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(super::queue::dead_letter)
    .collect()
}
