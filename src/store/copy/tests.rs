//! `store copy`'s rules, against a SQLite directory and a PostgreSQL schema of the test's own
//! (the PostgreSQL cases are skipped, saying so, without `RELAY_TEST_DATABASE_URL`).

use std::path::Path;
use std::time::Duration;

use super::{copy, CopyReport, Progress, Stage, Tally};
use crate::store::contract_tests::backends::{Backend, Postgres};
use crate::store::contract_tests::support::{delivered, deliverer, finish, identify};
use crate::store::{
    DeadLetterCause, IngestOutcome, Job, JobOutcome, PostgresStore, SqliteStore, Store, StoreError,
    StoreOptions,
};

/// A SQLite store with something of every kind: a delivered subscriber (applied values), one
/// retried with an error and waiting for its subscriber, one due, one dead letter, a
/// remembered email, and a seen id whose event was delivered.
async fn filled_sqlite(dir: &Path) {
    let s = SqliteStore::open(dir, StoreOptions::default()).expect("open");
    let lease = deliverer(&s).await;
    let batch = vec![
        identify("done-1", Some("u-done"), Some("done@x.io"), 100),
        identify("wait-1", Some("u-wait"), Some("Wait@X.io"), 200),
        identify("wait-2", Some("u-wait"), None, 300),
        identify("due-1", None, Some("due@x.io"), 400),
        identify("dead-1", Some("u-dead"), Some("dead@x.io"), 500),
    ];
    let stored = s.ingest(batch, 1_000).await.expect("ingest");
    assert!(
        stored.iter().all(|o| *o == IngestOutcome::Stored),
        "{stored:?}"
    );
    let done = job(&s, "done@x.io").await;
    finish(
        &s,
        &lease,
        "done@x.io",
        done.up_to_event_id(),
        delivered(&[("plan", 100)]),
        2_000,
    )
    .await;
    let waiting = JobOutcome::RetryAt {
        at_ms: 90_000,
        attempts: 3,
        waiting_since_ms: Some(1_500),
        error: "no subscriber yet".into(),
    };
    let wait = job(&s, "wait@x.io").await;
    finish(
        &s,
        &lease,
        "wait@x.io",
        wait.up_to_event_id(),
        waiting,
        2_000,
    )
    .await;
    let gave_up = JobOutcome::DeadLetter {
        reason: "refused".into(),
        attempts: 1,
        cause: DeadLetterCause::Rejected,
    };
    let dead = job(&s, "dead@x.io").await;
    finish(
        &s,
        &lease,
        "dead@x.io",
        dead.up_to_event_id(),
        gave_up,
        2_000,
    )
    .await;
    drop(s);
}

async fn job(s: &impl Store, email: &str) -> Job {
    s.job(email).await.expect("job").expect("queued")
}

/// Opens the directory for export once the relay that used it has let go of it.
async fn export(dir: &Path) -> super::Export {
    for _ in 0..250 {
        match SqliteStore::export(dir) {
            Err(StoreError::DataDir { reason, .. }) if reason.contains("relay.lock") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            opened => return opened.expect("export"),
        }
    }
    SqliteStore::export(dir).expect("export")
}

async fn run(dir: &Path, target: &PostgresStore, batch: usize) -> CopyReport {
    let source = export(dir).await;
    copy(&source, target, batch, &mut |_| {})
        .await
        .expect("copy")
}

/// Everything of every kind arrives, as it was: jobs with their schedules, attempts and
/// events, applied values, remembered emails, dedupe ids and dead letters.
#[tokio::test]
async fn copies_every_kind_as_it_was() {
    let Some(pg) = Postgres::new().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    filled_sqlite(tmp.path()).await;
    let target = pg.open(StoreOptions::default()).await.expect("open");
    // A batch of one row: every kind spans several transactions.
    let report = run(tmp.path(), &target, 1).await;
    let expected = CopyReport {
        events: tally(3, 0),
        jobs: tally(2, 0),
        seen_ids: tally(5, 0),
        remembered_emails: tally(3, 0),
        applied_values: tally(1, 0),
        dead_letters: tally(1, 0),
    };
    assert_eq!(report, expected);
    let source = SqliteStore::open_shared(tmp.path()).expect("reopen");
    for email in ["wait@x.io", "due@x.io"] {
        let (was, now) = (job(&source, email).await, job(&target, email).await);
        assert_eq!(was.attempts, now.attempts, "{email}");
        assert_eq!(was.waiting_since_ms, now.waiting_since_ms, "{email}");
        assert_eq!(was.first_queued_ms, now.first_queued_ms, "{email}");
        assert_eq!(was.spellings, now.spellings, "{email}");
        let ids = |j: &Job| -> Vec<(String, i64)> {
            j.events
                .iter()
                .map(|e| (e.message_id.clone(), e.timestamp_ms))
                .collect()
        };
        assert_eq!(ids(&was), ids(&now), "{email}");
        assert_eq!(was.events[0].traits, now.events[0].traits, "{email}");
    }
    assert_eq!(
        source.next_due_ms().await.ok(),
        target.next_due_ms().await.ok()
    );
    let (was, now) = (
        source.dead_letters().await.expect("dl"),
        target.dead_letters().await.expect("dl"),
    );
    assert_eq!(was.len(), 1);
    assert_eq!(
        (&was[0].email, &was[0].reason, &was[0].events),
        (&now[0].email, &now[0].reason, &now[0].events)
    );
    assert_eq!(now[0].cause, DeadLetterCause::Rejected);
    let last_error: Option<String> = pg
        .inspect()
        .await
        .query_one("SELECT last_error FROM jobs WHERE email = 'wait@x.io'", &[])
        .await
        .expect("last_error")
        .get(0);
    assert_eq!(last_error.as_deref(), Some("no subscriber yet"));
    let applied = job_applied(&target, "done@x.io").await;
    assert_eq!(applied, Some(100));
    // The target dedupes what the source saw, and remembers what it remembered.
    let again = target
        .ingest(
            vec![identify("done-1", Some("u-done"), Some("done@x.io"), 100)],
            3_000,
        )
        .await
        .expect("ingest");
    assert_eq!(again, [IngestOutcome::Duplicate]);
    let remembered = target
        .ingest(vec![identify("new-1", Some("u-done"), None, 600)], 3_000)
        .await
        .expect("ingest");
    assert_eq!(remembered, [IngestOutcome::Stored]);
}

/// What was applied for an email, seen through a job: queue one event and read it back.
async fn job_applied(s: &PostgresStore, email: &str) -> Option<i64> {
    s.ingest(vec![identify("probe", None, Some(email), 1)], 3_000)
        .await
        .expect("ingest");
    job(s, email).await.applied.get("plan").copied()
}

/// A second run finds everything there and adds nothing; the first run's counts come back as
/// "already there".
#[tokio::test]
async fn rerun_copies_nothing_twice() {
    let Some(pg) = Postgres::new().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    filled_sqlite(tmp.path()).await;
    let target = pg.open(StoreOptions::default()).await.expect("open");
    let first = run(tmp.path(), &target, 2).await;
    let stats = target.stats().await.expect("stats");
    let second = run(tmp.path(), &target, 2).await;
    assert!(second.nothing_copied(), "{second:?}");
    for ((name, one), (_, two)) in first.rows().into_iter().zip(second.rows()) {
        assert_eq!(one.copied, two.already_there, "{name}");
    }
    let after = target.stats().await.expect("stats");
    assert_eq!(
        (stats.events, stats.subscribers, stats.dead_letters),
        (after.events, after.subscribers, after.dead_letters)
    );
}

/// An event delivered from the target after the copy is not queued again by a rerun, and an
/// event whose messageId a replica took meanwhile counts as there already.
#[tokio::test]
async fn dedupes_by_message_id_against_the_target() {
    let Some(pg) = Postgres::new().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    filled_sqlite(tmp.path()).await;
    let target = pg.open(StoreOptions::default()).await.expect("open");
    // A replica ingested Segment's retry of due-1 before the copy.
    let meanwhile = target
        .ingest(vec![identify("due-1", None, Some("due@x.io"), 400)], 1_500)
        .await
        .expect("ingest");
    assert_eq!(meanwhile, [IngestOutcome::Stored]);
    let first = run(tmp.path(), &target, 10).await;
    assert_eq!(first.events, tally(2, 1));
    let lease = deliverer(&target).await;
    let due = job(&target, "due@x.io").await;
    assert_eq!(due.events.len(), 1, "due-1 once");
    finish(
        &target,
        &lease,
        "due@x.io",
        due.up_to_event_id(),
        delivered(&[]),
        4_000,
    )
    .await;
    let second = run(tmp.path(), &target, 10).await;
    assert!(second.nothing_copied(), "{second:?}");
    assert!(target.job("due@x.io").await.expect("job").is_none());
}

/// Progress is told per batch, stage by stage in order, ending at each stage's total.
#[tokio::test]
async fn progress_reaches_each_total() {
    let Some(pg) = Postgres::new().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    filled_sqlite(tmp.path()).await;
    let target = pg.open(StoreOptions::default()).await.expect("open");
    let source = export(tmp.path()).await;
    let mut told: Vec<Progress> = Vec::new();
    copy(&source, &target, 1, &mut |p| told.push(p))
        .await
        .expect("copy");
    let stages: Vec<Stage> = told.iter().map(|p| p.stage).collect();
    let mut order = stages.clone();
    order.dedup();
    assert_eq!(
        order,
        [
            Stage::Applied,
            Stage::RememberedEmails,
            Stage::Queue,
            Stage::SeenIds,
            Stage::DeadLetters
        ]
    );
    for stage in order {
        let last = told.iter().rev().find(|p| p.stage == stage).expect("told");
        assert_eq!(last.done, last.total, "{stage:?}");
    }
}

/// The source is refused while a relay runs on it, and when its schema is not this release's;
/// nothing about it is changed.
#[tokio::test]
async fn refuses_a_running_relay_and_other_schemas() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = SqliteStore::export(tmp.path()).err().expect("no store");
    assert!(missing.to_string().contains("no relay.db"), "{missing}");
    let relay = SqliteStore::open(tmp.path(), StoreOptions::default()).expect("open");
    let running = SqliteStore::export(tmp.path()).err().expect("a relay runs");
    assert!(running.to_string().contains("another relay"), "{running}");
    drop(relay);
    drop(export(tmp.path()).await);
    let db = || rusqlite::Connection::open(tmp.path().join("relay.db")).expect("db");
    let latest: i64 = db()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("v");
    db().execute_batch(&format!("PRAGMA user_version = {}", latest - 1))
        .expect("older");
    let older = SqliteStore::export(tmp.path()).err().expect("older");
    assert!(matches!(older, StoreError::OlderSchema { .. }), "{older}");
    db().execute_batch(&format!("PRAGMA user_version = {}", latest + 1))
        .expect("newer");
    let newer = SqliteStore::export(tmp.path()).err().expect("newer");
    assert!(matches!(newer, StoreError::NewerSchema { .. }), "{newer}");
    let kept: i64 = db()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("v");
    assert_eq!(kept, latest + 1, "the refused store is untouched");
}

fn tally(copied: u64, already_there: u64) -> Tally {
    Tally {
        copied,
        already_there,
    }
}
