//! The PostgreSQL store's writes to the queue: ingest, delete, finish, replay.
//!
//! In: a transaction (the writer's savepoint for ingest, a transaction of its own otherwise).
//! Out: the same outcomes as SQLite's, for the same inputs.
//! Stays true, with other replicas writing at the same time:
//! - Each email has a queue lock (a transaction-level advisory lock on a 64-bit hash of it,
//!   seeded with the schema's name).
//!   Whatever queues an event for an email takes it first and holds it to COMMIT, and only then
//!   does the event take its id. So one email's event ids are handed out in commit order: when
//!   delivery reads a job, no event with a smaller id can still commit, and `finish` removing
//!   "up to `up_to_event_id`" removes exactly what was read.
//! - `finish` and `delete` take the email's lock before looking at its events: an event being
//!   queued meanwhile is waited for and seen, so a job is never dropped while it has events.
//! - Several locks are taken in the order of the emails, so two transactions that both take
//!   them cannot deadlock on them (a hash collision only makes two emails share a lock).

use deadpool_postgres::Transaction;

use super::{exec, one, rows, text};
use crate::identify::{self, Event, IdentifyUpdate};
use crate::store::codec::{self, platform_id_key_of, Email, Encoded};
use crate::store::{
    DeadLetter, DeadLetterCause, Incoming, IngestOutcome, JobOutcome, JobResult, Lane, StoreError,
    StoreOptions,
};

pub(super) async fn ingest(
    tx: &Transaction<'_>,
    o: &StoreOptions,
    events: &[Incoming],
    encoded: &[Option<Encoded>],
    now_ms: i64,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(events.len());
    for (incoming, encoded) in events.iter().zip(encoded) {
        outcomes.push(ingest_one(tx, o, incoming, encoded.as_ref(), now_ms).await?);
    }
    Ok(outcomes)
}

async fn ingest_one(
    tx: &Transaction<'_>,
    o: &StoreOptions,
    incoming: &Incoming,
    encoded: Option<&Encoded>,
    now_ms: i64,
) -> Result<IngestOutcome, StoreError> {
    match (&incoming.event, encoded) {
        (Event::Identify(update), Some(encoded)) => {
            let sent = match (&update.email, &update.user_id) {
                (Some(e), _) => e.clone(),
                (None, Some(user)) => match remembered_email(tx, user).await? {
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
            if !claim_message_id(tx, &update.message_id, now_ms).await? {
                return Ok(IngestOutcome::Duplicate);
            }
            let email = Email::sent_as(&sent);
            let queued = Queued {
                update,
                encoded,
                raw: &incoming.raw,
                lane: incoming.lane,
            };
            enqueue(tx, o, &queued, &email, now_ms).await?;
            if let (Some(e), Some(user)) = (&update.email, &update.user_id) {
                exec(
                    tx,
                    "INSERT INTO user_emails (user_id, email, updated_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET email = excluded.email,
                     updated_ms = excluded.updated_ms",
                    &[&text(user), &text(e), &now_ms],
                )
                .await?;
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
            if !claim_message_id(tx, message_id, now_ms).await? {
                return Ok(IngestOutcome::Duplicate);
            }
            forget_user(tx, user_id).await?;
            Ok(IngestOutcome::Forgotten)
        }
        _ => Ok(IngestOutcome::Ignored),
    }
}

/// Records a message id as seen; answers false when it was seen before (a duplicate). An id
/// another replica inserted and has not committed yet makes this wait for that commit.
async fn claim_message_id(
    tx: &Transaction<'_>,
    message_id: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let inserted = exec(
        tx,
        "INSERT INTO seen (message_id, seen_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&text(message_id), &now_ms],
    )
    .await?;
    Ok(inserted == 1)
}

async fn remembered_email(
    tx: &Transaction<'_>,
    user_id: &str,
) -> Result<Option<String>, StoreError> {
    let found = rows(
        tx,
        "SELECT email FROM user_emails WHERE user_id = $1",
        &[&text(user_id)],
    )
    .await?;
    found.first().map(|r| Ok(r.try_get(0)?)).transpose()
}

/// Queues one event. The email's lock comes first: held to COMMIT, it is what keeps this
/// email's ids in commit order (see the module's opening).
/// One event on its way into the queue.
struct Queued<'a> {
    update: &'a IdentifyUpdate,
    encoded: &'a Encoded,
    raw: &'a str,
    lane: Lane,
}

async fn enqueue(
    tx: &Transaction<'_>,
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
    let (email, spelling) = (text(&email.key), email.spelling.map(text));
    lock_emails(tx, std::slice::from_ref(&email)).await?;
    // An existing job keeps its schedule: new events must not cut short a backoff. A live
    // event makes the job live.
    exec(
        tx,
        "INSERT INTO jobs (email, next_attempt_ms, first_queued_ms, lane) VALUES ($1, $2, $3, $4)
         ON CONFLICT (email) DO UPDATE SET lane = LEAST(jobs.lane, excluded.lane)",
        &[&email, &(now_ms + o.coalesce_ms), &now_ms, &lane.as_i64()],
    )
    .await?;
    exec(
        tx,
        "INSERT INTO events (message_id, email, sent_email, user_id, ts_ms, received_ms, traits,
                             engage, raw, lane)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &text(&update.message_id),
            &email,
            &spelling,
            &update.user_id.as_deref().map(text),
            &update.timestamp_ms,
            &now_ms,
            &encoded.traits,
            &encoded.engage,
            &text(raw),
            &lane.as_i64(),
        ],
    )
    .await?;
    Ok(())
}

/// Forgets a user: their remembered email, their events, their email's events and applied
/// values; then drops the jobs left with nothing to deliver.
async fn forget_user(tx: &Transaction<'_>, user_id: &str) -> Result<(), StoreError> {
    let email = remembered_email(tx, user_id)
        .await?
        .map(|e| identify::email_key(&e));
    let user_id = text(user_id);
    exec(
        tx,
        "DELETE FROM user_emails WHERE user_id = $1",
        &[&user_id],
    )
    .await?;
    let mut touched: Vec<String> = rows(
        tx,
        "DELETE FROM events WHERE user_id = $1 RETURNING email",
        &[&user_id],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?;
    if let Some(email) = email {
        exec(tx, "DELETE FROM events WHERE email = $1", &[&email]).await?;
        exec(tx, "DELETE FROM applied WHERE email = $1", &[&email]).await?;
        touched.push(email);
    }
    touched.sort();
    touched.dedup();
    lock_emails(tx, &touched).await?;
    for email in &touched {
        drop_job_if_empty(tx, email).await?;
    }
    Ok(())
}

/// Waits for, and holds to COMMIT, the queue locks of `emails`, taken in the order given
/// (callers sort them; see the module's opening). Taking a lock the transaction holds already
/// is free.
pub(super) async fn lock_emails(tx: &Transaction<'_>, emails: &[String]) -> Result<(), StoreError> {
    if emails.is_empty() {
        return Ok(());
    }
    exec(
        tx,
        // Seeded with the schema's name: stores in other schemas of the database have locks of
        // their own.
        "SELECT pg_advisory_xact_lock(
             hashtextextended(e, hashtext(coalesce(current_schema(), ''))))
         FROM (SELECT e FROM unnest($1::text[]) WITH ORDINALITY AS t (e, n) ORDER BY n) AS s",
        &[&emails],
    )
    .await?;
    Ok(())
}

/// Drops the job if none of its events is left; answers whether any is.
async fn drop_job_if_empty(tx: &Transaction<'_>, email: &str) -> Result<bool, StoreError> {
    let remaining: bool = one(
        tx,
        "SELECT EXISTS (SELECT 1 FROM events WHERE email = $1)",
        &[&email],
    )
    .await?
    .try_get(0)?;
    if !remaining {
        exec(tx, "DELETE FROM jobs WHERE email = $1", &[&email]).await?;
    }
    Ok(remaining)
}

/// Records results; the caller has checked the lease in this transaction. Answers the ids of
/// the dead letters made, in the order of the results.
pub(super) async fn finish(
    tx: &Transaction<'_>,
    o: &StoreOptions,
    results: Vec<JobResult>,
    now_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    // Emails are locked in one order, so that two transactions cannot deadlock on them.
    let mut emails: Vec<String> = results.iter().map(|r| text(&r.email)).collect();
    emails.sort();
    emails.dedup();
    lock_emails(tx, &emails).await?;
    let mut dead_letters = Vec::new();
    for result in &results {
        dead_letters.extend(finish_one(tx, o, result, now_ms).await?);
    }
    Ok(dead_letters)
}

/// Records one result (its email locked); answers the ids of the dead letters it made.
async fn finish_one(
    tx: &Transaction<'_>,
    o: &StoreOptions,
    result: &JobResult,
    now_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    let email = text(&result.email);
    let mut dead_letters = Vec::new();
    match &result.outcome {
        JobOutcome::RetryAt {
            at_ms,
            attempts,
            waiting_since_ms,
            error,
        } => {
            exec(
                tx,
                "UPDATE jobs SET next_attempt_ms = $2, attempts = $3, waiting_since_ms = $4,
                 last_error = $5 WHERE email = $1",
                &[
                    &email,
                    at_ms,
                    &i64::from(*attempts),
                    waiting_since_ms,
                    &text(error),
                ],
            )
            .await?;
            return Ok(dead_letters);
        }
        JobOutcome::Delivered { applied, .. } => {
            for (key, ts) in applied {
                exec(
                    tx,
                    "INSERT INTO applied (email, key, ts_ms, updated_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (email, key) DO UPDATE SET
                     ts_ms = GREATEST(applied.ts_ms, excluded.ts_ms),
                     updated_ms = excluded.updated_ms",
                    &[&email, &text(key), ts, &now_ms],
                )
                .await?;
            }
        }
        JobOutcome::DeadLetter { .. } => {}
    }
    for letter in result.outcome.letters() {
        dead_letters.push(add_dead_letter(tx, result, &letter, now_ms).await?);
    }
    exec(
        tx,
        "DELETE FROM events WHERE email = $1 AND id <= $2",
        &[&email, &result.up_to_event_id],
    )
    .await?;
    settle_job(tx, o, &email, now_ms).await?;
    Ok(dead_letters)
}

/// After events left the queue: drop the job if nothing remains, else make it due again
/// (events that arrived during the attempt) with a fresh attempt count.
async fn settle_job(
    tx: &Transaction<'_>,
    o: &StoreOptions,
    email: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    if drop_job_if_empty(tx, email).await? {
        exec(
            tx,
            // The lane of what remains: imported events left behind a delivered live one
            // wait in the background again.
            "UPDATE jobs SET next_attempt_ms = $2, attempts = 0, waiting_since_ms = NULL,
             last_error = NULL,
             lane = (SELECT MIN(lane) FROM events WHERE events.email = jobs.email)
             WHERE email = $1",
            &[&email, &(now_ms + o.coalesce_ms)],
        )
        .await?;
    }
    Ok(())
}

/// Copies a result's events into a new dead letter; answers its id.
async fn add_dead_letter(
    tx: &Transaction<'_>,
    result: &JobResult,
    letter: &crate::store::Letter,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let email = text(&result.email);
    let raws: Vec<String> = rows(
        tx,
        "SELECT raw FROM events WHERE email = $1 AND id <= $2 ORDER BY id",
        &[&email, &result.up_to_event_id],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?;
    let events = codec::dead_letter_events(&raws);
    let id = one(
        tx,
        "INSERT INTO dead_letters (email, cause, reason, attempts, created_ms, properties, events)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            &email,
            &letter.cause.as_str(),
            &text(&letter.reason),
            &i64::from(letter.attempts),
            &now_ms,
            &codec::to_json(&letter.properties)?,
            &codec::to_json(&events)?,
        ],
    )
    .await?
    .try_get(0)?;
    Ok(id)
}

/// Takes the chosen dead letters out (all when `ids` is `None`) and queues what each replays.
/// Deleting first means two replays at once cannot both queue a letter: the second waits for
/// the first and finds it gone.
pub(super) async fn replay_dead_letters(
    tx: &Transaction<'_>,
    o: &StoreOptions,
    ids: Option<Vec<i64>>,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let taken = rows(
        tx,
        "DELETE FROM dead_letters WHERE $1::bigint[] IS NULL OR id = ANY($1)
         RETURNING id, email, cause, reason, attempts, created_ms, properties, events",
        &[&ids],
    )
    .await?;
    let mut letters = taken
        .iter()
        .map(dead_letter)
        .collect::<Result<Vec<_>, _>>()?;
    letters.sort_by_key(|l| l.id);
    for letter in &letters {
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
            enqueue(tx, o, &queued, &email, now_ms).await?;
        }
        // A job that was waiting keeps its place; a replay should be tried now.
        exec(
            tx,
            "UPDATE jobs SET next_attempt_ms = LEAST(next_attempt_ms, $2) WHERE email = $1",
            &[&letter.email, &now_ms],
        )
        .await?;
    }
    Ok(letters.len())
}

/// A dead letter from its row: id, email, cause, reason, attempts, created_ms, properties,
/// events.
pub(super) fn dead_letter(r: &tokio_postgres::Row) -> Result<DeadLetter, StoreError> {
    let attempts: i64 = r.try_get(4)?;
    Ok(DeadLetter {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        cause: DeadLetterCause::parse(r.try_get(2)?),
        reason: r.try_get(3)?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("{attempts} attempts")))?,
        created_ms: r.try_get(5)?,
        properties: codec::from_json(r.try_get(6)?)?,
        events: codec::from_json(r.try_get(7)?)?,
    })
}
