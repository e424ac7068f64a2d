//! Writing rows another store held into this one, for `store copy` (the rules are in
//! `store::copy`'s opening).
//!
//! In: batches of rows as SQLite keeps them. Out: each batch committed in one transaction, and
//! a [`Tally`] of what was copied and what was there already.
//! Stays true: rows are sent as arrays (`unnest`), one statement per kind and batch, so a
//! batch of a thousand rows is a few round trips; a queue batch takes its emails' queue locks
//! in order before anything else, as ingest does, so replicas ingesting or delivering the same
//! emails meanwhile wait for it rather than interleave.

use std::collections::HashSet;

use deadpool_postgres::Transaction;

use super::queue::lock_emails;
use super::{commit, exec, rows, text, PostgresStore};
use crate::store::copy::{
    AppliedValue, QueueBatch, RememberedEmail, SeenId, StoredDeadLetter, StoredEvent, StoredJob,
    Tally,
};
use crate::store::StoreError;

impl PostgresStore {
    /// Applied values: a value there already keeps the later of the two timestamps.
    pub(crate) async fn import_applied(&self, batch: &[AppliedValue]) -> Result<Tally, StoreError> {
        let emails: Vec<String> = batch.iter().map(|r| text(&r.email)).collect();
        let keys: Vec<String> = batch.iter().map(|r| text(&r.key)).collect();
        let ts: Vec<i64> = batch.iter().map(|r| r.ts_ms).collect();
        let updated: Vec<i64> = batch.iter().map(|r| r.updated_ms).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inserted = exec(
            &tx,
            "INSERT INTO applied (email, key, ts_ms, updated_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
             ON CONFLICT (email, key) DO NOTHING",
            &[&emails, &keys, &ts, &updated],
        )
        .await?;
        exec(
            &tx,
            "UPDATE applied a SET ts_ms = GREATEST(a.ts_ms, s.ts_ms),
                                  updated_ms = GREATEST(a.updated_ms, s.updated_ms)
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                  AS s (email, key, ts_ms, updated_ms)
             WHERE a.email = s.email AND a.key = s.key
               AND (a.ts_ms < s.ts_ms OR a.updated_ms < s.updated_ms)",
            &[&emails, &keys, &ts, &updated],
        )
        .await?;
        commit(tx).await?;
        Ok(tally(batch.len(), inserted))
    }

    /// Remembered emails: one the target learnt later than the source is kept.
    pub(crate) async fn import_remembered_emails(
        &self,
        batch: &[RememberedEmail],
    ) -> Result<Tally, StoreError> {
        let users: Vec<String> = batch.iter().map(|r| text(&r.user_id)).collect();
        let emails: Vec<String> = batch.iter().map(|r| text(&r.email)).collect();
        let updated: Vec<i64> = batch.iter().map(|r| r.updated_ms).collect();
        let client = self.client().await?;
        let written = exec(
            &client,
            "INSERT INTO user_emails (user_id, email, updated_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
             ON CONFLICT (user_id) DO UPDATE SET email = excluded.email,
                 updated_ms = excluded.updated_ms
             WHERE user_emails.updated_ms < excluded.updated_ms",
            &[&users, &emails, &updated],
        )
        .await?;
        Ok(tally(batch.len(), written))
    }

    /// Seen message ids that are not there yet.
    pub(crate) async fn import_seen_ids(&self, batch: &[SeenId]) -> Result<Tally, StoreError> {
        if batch.is_empty() {
            return Ok(Tally::default());
        }
        let ids: Vec<String> = batch.iter().map(|r| text(&r.message_id)).collect();
        let seen: Vec<i64> = batch.iter().map(|r| r.seen_ms).collect();
        let client = self.client().await?;
        let inserted = exec(
            &client,
            "INSERT INTO seen (message_id, seen_ms)
             SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
            &[&ids, &seen],
        )
        .await?;
        Ok(tally(batch.len(), inserted))
    }

    /// Dead letters not there yet (same email, time, reason and events), in the source's order.
    pub(crate) async fn import_dead_letters(
        &self,
        batch: &[StoredDeadLetter],
    ) -> Result<Tally, StoreError> {
        let col = |f: fn(&StoredDeadLetter) -> &str| -> Vec<String> {
            batch.iter().map(|r| text(f(r))).collect()
        };
        let (emails, reasons) = (col(|r| &r.email), col(|r| &r.reason));
        let (properties, events) = (col(|r| &r.properties), col(|r| &r.events));
        let causes: Vec<Option<String>> =
            batch.iter().map(|r| r.cause.as_deref().map(text)).collect();
        let attempts: Vec<i64> = batch.iter().map(|r| r.attempts).collect();
        let created: Vec<i64> = batch.iter().map(|r| r.created_ms).collect();
        let client = self.client().await?;
        let inserted = exec(
            &client,
            "INSERT INTO dead_letters (email, cause, reason, attempts, created_ms, properties,
                                       events)
             SELECT s.email, s.cause, s.reason, s.attempts, s.created_ms, s.properties, s.events
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[])
                  WITH ORDINALITY AS s (email, cause, reason, attempts, created_ms, properties,
                                        events, n)
             WHERE NOT EXISTS (SELECT 1 FROM dead_letters d
                               WHERE d.email = s.email AND d.created_ms = s.created_ms
                                 AND d.reason = s.reason AND d.events = s.events)
             ORDER BY s.n",
            &[
                &emails,
                &causes,
                &reasons,
                &attempts,
                &created,
                &properties,
                &events,
            ],
        )
        .await?;
        Ok(tally(batch.len(), inserted))
    }

    /// Jobs and their events, in one transaction: an event goes in only if this transaction
    /// records its message id as seen, or an earlier batch of this run did (`claimed`).
    pub(crate) async fn import_jobs(
        &self,
        batch: &[StoredJob],
        claimed: &HashSet<String>,
    ) -> Result<QueueBatch, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut emails: Vec<String> = batch.iter().map(|j| text(&j.email)).collect();
        emails.sort();
        emails.dedup();
        lock_emails(&tx, &emails).await?;
        let mut outcome = QueueBatch::default();
        let ours = claim(&tx, batch, claimed).await?;
        for job in batch {
            let events: Vec<&StoredEvent> = job
                .events
                .iter()
                .filter(|e| ours.contains(&text(&e.message_id)))
                .collect();
            let copied = events.len() as u64;
            outcome.events.copied += copied;
            outcome.events.already_there += job.events.len() as u64 - copied;
            if events.is_empty() {
                outcome.jobs.already_there += 1;
                continue;
            }
            outcome.jobs.copied += 1;
            insert_job(&tx, job).await?;
            insert_events(&tx, &events).await?;
        }
        commit(tx).await?;
        outcome.claimed = ours
            .into_iter()
            .filter(|id| !claimed.contains(id))
            .collect();
        Ok(outcome)
    }
}

/// Records the batch's message ids as seen, answering those the run owns: the ones this
/// insert added, and those an earlier batch of the run added (`claimed`). An id another
/// transaction is inserting makes this wait for its commit, as in ingest.
async fn claim(
    tx: &Transaction<'_>,
    batch: &[StoredJob],
    claimed: &HashSet<String>,
) -> Result<HashSet<String>, StoreError> {
    let (mut ids, mut seen) = (Vec::new(), Vec::new());
    let mut ours = HashSet::new();
    let mut asked = HashSet::new();
    for event in batch.iter().flat_map(|j| &j.events) {
        let id = text(&event.message_id);
        if claimed.contains(&id) {
            ours.insert(id);
        } else if asked.insert(id.clone()) {
            ids.push(id);
            seen.push(event.seen_ms);
        }
    }
    let added = rows(
        tx,
        "INSERT INTO seen (message_id, seen_ms)
         SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING
         RETURNING message_id",
        &[&ids, &seen],
    )
    .await?;
    for row in &added {
        ours.insert(row.try_get(0)?);
    }
    Ok(ours)
}

/// A job with its schedule; one there already (queued by a replica meanwhile) keeps the
/// earlier schedule and first arrival, the larger attempt count and an error it has.
async fn insert_job(tx: &Transaction<'_>, job: &StoredJob) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO jobs (email, next_attempt_ms, attempts, first_queued_ms, waiting_since_ms,
                           last_error, lane)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (email) DO UPDATE SET
             lane = LEAST(jobs.lane, excluded.lane),
             next_attempt_ms = LEAST(jobs.next_attempt_ms, excluded.next_attempt_ms),
             attempts = GREATEST(jobs.attempts, excluded.attempts),
             first_queued_ms = LEAST(jobs.first_queued_ms, excluded.first_queued_ms),
             waiting_since_ms = LEAST(jobs.waiting_since_ms, excluded.waiting_since_ms),
             last_error = COALESCE(jobs.last_error, excluded.last_error)",
        &[
            &text(&job.email),
            &job.next_attempt_ms,
            &job.attempts,
            &job.first_queued_ms,
            &job.waiting_since_ms,
            &job.last_error.as_deref().map(text),
            &job.lane,
        ],
    )
    .await?;
    Ok(())
}

/// One job's events, in the order given (their ids are taken in that order).
async fn insert_events(tx: &Transaction<'_>, events: &[&StoredEvent]) -> Result<(), StoreError> {
    let col = |f: fn(&StoredEvent) -> &str| -> Vec<String> {
        events.iter().map(|e| text(f(e))).collect()
    };
    let opt = |f: fn(&StoredEvent) -> Option<&str>| -> Vec<Option<String>> {
        events.iter().map(|e| f(e).map(text)).collect()
    };
    let num = |f: fn(&StoredEvent) -> i64| -> Vec<i64> { events.iter().map(|e| f(e)).collect() };
    exec(
        tx,
        "INSERT INTO events (message_id, email, sent_email, user_id, ts_ms, received_ms, traits,
                             engage, raw, lane)
         SELECT s.message_id, s.email, s.sent_email, s.user_id, s.ts_ms, s.received_ms,
                s.traits, s.engage, s.raw, s.lane
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                     $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[])
              WITH ORDINALITY AS s (message_id, email, sent_email, user_id, ts_ms, received_ms,
                                    traits, engage, raw, lane, n)
         ORDER BY s.n",
        &[
            &col(|e| &e.message_id),
            &col(|e| &e.email),
            &opt(|e| e.sent_email.as_deref()),
            &opt(|e| e.user_id.as_deref()),
            &num(|e| e.ts_ms),
            &num(|e| e.received_ms),
            &col(|e| &e.traits),
            &opt(|e| e.engage.as_deref()),
            &col(|e| &e.raw),
            &num(|e| e.lane),
        ],
    )
    .await?;
    Ok(())
}

/// `written` of `total` rows went in; the rest were there already.
fn tally(total: usize, written: u64) -> Tally {
    Tally {
        copied: written,
        already_there: (total as u64).saturating_sub(written),
    }
}
