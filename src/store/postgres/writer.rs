//! Group commit for PostgreSQL: one task per store handle turns waiting ingests into one
//! transaction.
//!
//! In: [`Write`]s from `PostgresStore::ingest`. Out: each one's outcomes, sent only after the
//! transaction that holds them has committed (or the error that stopped it).
//! Stays true:
//! - Each request runs in a savepoint: one that fails is rolled back alone and answered its
//!   error, and its neighbours still commit.
//! - A request that lost a race with another replica (deadlock, serialization failure) is
//!   rolled back to its savepoint and run again, up to [`ATTEMPTS`] times in all: the other
//!   transaction then goes first, and this one sees what it committed (a duplicate, say).
//! - Before any request runs, the group takes the queue locks of every email its events name,
//!   in order: groups on two replicas naming the same emails then wait for each other rather
//!   than deadlock (each would otherwise lock its emails in its own arrival order).
//! - When no connection or no transaction can be had, nothing runs, and every request of the
//!   group is answered the reason.

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{error, queue, text};
use crate::identify::{email_key, Event};
use crate::store::codec::Encoded;
use crate::store::{Incoming, IngestOutcome, StoreError, StoreOptions};

/// How many waiting requests one transaction takes at most.
const MAX_GROUP: usize = 256;

/// Runs of one request after losing races with other transactions, at most.
const ATTEMPTS: u32 = 3;

/// One ingest request waiting for the writer.
pub(super) struct Write {
    pub events: Vec<Incoming>,
    pub encoded: Vec<Option<Encoded>>,
    pub now_ms: i64,
    pub reply: oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>,
}

/// The writer: waits for one request, takes every other waiting one (up to [`MAX_GROUP`]),
/// commits them together, answers them all. Ends when every store handle is gone.
pub(super) async fn run(
    pool: Pool,
    options: StoreOptions,
    mut writes: mpsc::UnboundedReceiver<Write>,
) {
    while let Some(first) = writes.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match writes.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        commit_group(&pool, &options, group).await;
    }
}

async fn commit_group(pool: &Pool, options: &StoreOptions, group: Vec<Write>) {
    let mut client = match pool.get().await {
        Ok(client) => client,
        Err(e) => return refuse(group, &e.into()),
    };
    let mut tx = match client.transaction().await {
        Ok(tx) => tx,
        // Without a transaction each statement would commit on its own: run nothing.
        Err(e) => return refuse(group, &e.into()),
    };
    prelock(&mut tx, &group).await;
    let mut results = Vec::with_capacity(group.len());
    for write in &group {
        results.push(ingest_in_savepoint(&mut tx, options, write).await);
    }
    // The error is described once and told to every request of the group.
    let commit = tx
        .commit()
        .await
        .map_err(|e| StoreError::from(e).to_string());
    for (write, result) in group.into_iter().zip(results) {
        let answer = match &commit {
            Ok(()) => result,
            Err(reason) => Err(StoreError::Commit(reason.clone())),
        };
        let _ = write.reply.send(answer);
    }
}

/// Takes the queue locks of the emails the group's events name, in order, held to COMMIT.
/// Best effort: an event whose email comes from memory takes its lock only when it runs, so a
/// group can still deadlock with another; if the pre-locking itself is the one PostgreSQL
/// fails, the group goes on without it, each request locking as it goes (and run again if it
/// loses a race).
async fn prelock(tx: &mut Transaction<'_>, group: &[Write]) {
    let mut emails: Vec<String> = group
        .iter()
        .flat_map(|w| &w.events)
        .filter_map(|e| match &e.event {
            Event::Identify(update) => update.email.as_deref().map(|e| text(&email_key(e))),
            _ => None,
        })
        .collect();
    emails.sort();
    emails.dedup();
    let Ok(savepoint) = tx.savepoint("prelock").await else {
        return;
    };
    match queue::lock_emails(&savepoint, &emails).await {
        // Released, the savepoint hands its locks to the transaction.
        Ok(()) => {
            let _ = savepoint.commit().await;
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not lock the group's emails up front");
            let _ = savepoint.rollback().await;
        }
    }
}

async fn ingest_in_savepoint(
    tx: &mut Transaction<'_>,
    options: &StoreOptions,
    write: &Write,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let mut attempt = 1;
    loop {
        let savepoint = tx.savepoint("ingest").await?;
        let result = queue::ingest(
            &savepoint,
            options,
            &write.events,
            &write.encoded,
            write.now_ms,
        )
        .await;
        match result {
            Ok(outcomes) => {
                savepoint.commit().await?;
                return Ok(outcomes);
            }
            Err(e) => {
                savepoint.rollback().await?;
                if !error::is_contention(&e) || attempt >= ATTEMPTS {
                    return Err(e);
                }
                attempt += 1;
                tracing::debug!(attempt, error = %e, "ingest lost a race with another transaction; running it again");
            }
        }
    }
}

/// Answers every request of a group that could not run (each caller logs its answer).
fn refuse(group: Vec<Write>, reason: &StoreError) {
    for write in group {
        let _ = write.reply.send(Err(error::shared(reason)));
    }
}
