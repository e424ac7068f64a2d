//! What only a shared store must show: several replicas (several handles, each with its own
//! pool) on one database at once; and how PostgreSQL failures reach the caller.

use std::collections::BTreeSet;
use std::time::Duration;

use super::backends::{Backend, Postgres};
use super::support::{delivered, identify};
use crate::store::{IngestOutcome, JobResult, PostgresStore, Store, StoreError, StoreOptions};

async fn replica(b: &Postgres) -> PostgresStore {
    b.open(StoreOptions::default()).await.expect("open")
}

/// The same request posted to two replicas at once (a retry landing on another replica while
/// the first attempt is still in flight): its events are stored once.
#[tokio::test]
async fn one_message_id_on_two_replicas_is_stored_once() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let (one, two) = (replica(&b).await, replica(&b).await);
    for i in 0..20 {
        let batch = || {
            let (x, y) = (format!("x{i}"), format!("y{i}"));
            vec![
                identify(&x, Some("u"), Some("x@x.io"), 1),
                identify(&y, Some("u"), Some("y@x.io"), 1),
            ]
        };
        let (first, second) = tokio::join!(one.ingest(batch(), 5), two.ingest(batch(), 5));
        let outcomes = [first.expect("one"), second.expect("two")].concat();
        assert_eq!(stored(&outcomes), 2, "round {i}: {outcomes:?}");
    }
    assert_eq!(one.stats().await.expect("stats").events, 40);
}

/// Two replicas claiming the same ids in opposite orders, for events that take their email
/// from memory (so their groups cannot lock the emails up front), deadlock inside PostgreSQL,
/// which fails one of them after `deadlock_timeout` (1 s by default); that request is run
/// again, and every id is still stored once and every request answered.
#[tokio::test]
async fn crossed_ids_on_two_replicas_are_each_stored_once() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let (one, two) = (replica(&b).await, replica(&b).await);
    let teach = vec![
        identify("teach-x", Some("ux"), Some("x@x.io"), 1),
        identify("teach-y", Some("uy"), Some("y@x.io"), 1),
    ];
    one.ingest(teach, 5).await.expect("ingest");
    for i in 0..3 {
        let x = || identify(&format!("x{i}"), Some("ux"), None, 1);
        let y = || identify(&format!("y{i}"), Some("uy"), None, 1);
        let (first, second) =
            tokio::join!(one.ingest(vec![x(), y()], 5), two.ingest(vec![y(), x()], 5),);
        let outcomes = [first.expect("one"), second.expect("two")].concat();
        assert_eq!(stored(&outcomes), 2, "round {i}: {outcomes:?}");
    }
    assert_eq!(one.stats().await.expect("stats").events, 8);
}

/// Replicas ingesting events for the same emails in opposite orders all commit, each event
/// once (their groups lock the emails up front, in one order).
#[tokio::test]
async fn crossed_emails_on_two_replicas_all_commit() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let (one, two) = (replica(&b).await, replica(&b).await);
    for i in 0..20 {
        let x = |r: &str| identify(&format!("x{i}{r}"), Some("ux"), Some("x@x.io"), 1);
        let y = |r: &str| identify(&format!("y{i}{r}"), Some("uy"), Some("y@x.io"), 1);
        let (first, second) = tokio::join!(
            one.ingest(vec![x("a"), y("a")], 5),
            two.ingest(vec![y("b"), x("b")], 5),
        );
        let outcomes = [first.expect("one"), second.expect("two")].concat();
        assert_eq!(stored(&outcomes), 4, "round {i}: {outcomes:?}");
    }
    let stats = one.stats().await.expect("stats");
    assert_eq!((stats.events, stats.subscribers), (80, 2));
}

fn stored(outcomes: &[IngestOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| **o == IngestOutcome::Stored)
        .count()
}

/// Replicas starting together on a fresh schema all open it, and it is migrated once.
#[tokio::test]
async fn replicas_migrating_a_fresh_schema_together_migrate_it_once() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let opened = futures_join4(&b).await;
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    let rows = b
        .inspect()
        .await
        .query("SELECT version FROM schema_version", &[])
        .await
        .expect("read");
    assert_eq!(rows.len(), 1);
    assert_eq!(b.stored_version().await, b.latest());
}

async fn futures_join4(b: &Postgres) -> Vec<Result<(), StoreError>> {
    let open = || async { b.open(StoreOptions::default()).await.map(drop) };
    let (r1, r2, r3, r4) = tokio::join!(open(), open(), open(), open());
    vec![r1, r2, r3, r4]
}

/// Two replicas asking for a free lease at once: exactly one gets it.
#[tokio::test]
async fn two_replicas_asking_for_the_lease_one_gets_it() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let (one, two) = (replica(&b).await, replica(&b).await);
    let hour = Duration::from_secs(3600);
    let (first, second) = tokio::join!(
        one.acquire_lease("one", hour, 0),
        two.acquire_lease("two", hour, 0),
    );
    let granted = [first.expect("one"), second.expect("two")];
    assert_eq!(granted.iter().flatten().count(), 1, "{granted:?}");
}

/// While one replica keeps ingesting events for an email and another keeps delivering and
/// finishing that email's job, every event is delivered exactly once: `finish` never removes
/// an event the deliverer did not read (ids are taken in commit order per email).
#[tokio::test]
async fn ingest_on_one_replica_and_finish_on_another_lose_nothing() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let (ingester, deliverer) = (replica(&b).await, replica(&b).await);
    let lease = deliverer
        .acquire_lease("deliverer", Duration::from_secs(3600), 0)
        .await
        .expect("acquire")
        .expect("granted");
    let mut writers = Vec::new();
    for w in 0..4 {
        let s = ingester.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                let event = identify(&format!("w{w}-{i}"), Some("u"), Some("a@x.io"), 1);
                s.ingest(vec![event], 5).await.expect("ingest");
            }
        }));
    }
    let mut delivered_ids = Vec::new();
    loop {
        let writing = writers.iter().any(|w| !w.is_finished());
        match deliverer.job("a@x.io").await.expect("read") {
            Some(job) => {
                delivered_ids.extend(job.events.iter().map(|e| e.message_id.clone()));
                let result = JobResult {
                    email: job.email.clone(),
                    up_to_event_id: job.up_to_event_id(),
                    outcome: delivered(&[]),
                };
                deliverer
                    .finish(&lease, vec![result], 6)
                    .await
                    .expect("finish");
            }
            None if !writing => break,
            None => tokio::task::yield_now().await,
        }
    }
    let unique: BTreeSet<&String> = delivered_ids.iter().collect();
    assert_eq!(unique.len(), delivered_ids.len(), "delivered twice");
    assert_eq!(
        delivered_ids.len(),
        100,
        "lost {}",
        100 - delivered_ids.len()
    );
}

/// A tool does not upgrade: on a fresh schema it is refused as older and creates nothing; once
/// a relay has migrated the schema, the tool connects.
#[tokio::test]
async fn tool_leaves_upgrading_to_the_relay() {
    let Some(b) = Postgres::new().await else {
        return;
    };
    let refused = PostgresStore::open(b.config.clone(), StoreOptions::default(), false).await;
    assert!(
        matches!(refused, Err(StoreError::OlderSchema { found: 0, .. })),
        "{:?}",
        refused.err()
    );
    let tables: i64 = b
        .inspect()
        .await
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&b.schema],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 0);
    drop(replica(&b).await);
    let tool = PostgresStore::open(b.config.clone(), StoreOptions::default(), false).await;
    assert!(tool.is_ok(), "{:?}", tool.err());
}

/// A server that refuses connections is `Unreachable` (ingest answers 503, readiness fails),
/// and the message does not carry the password. Needs no server.
#[tokio::test]
async fn unreachable_server_is_told_apart_without_the_password() {
    let url = "postgres://relay:s3cret@127.0.0.1:1/queue?connect_timeout=2";
    let Err(err) = PostgresStore::connect(url, StoreOptions::default()).await else {
        panic!("connected to a port nothing listens on");
    };
    assert!(err.is_unreachable(), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// A URL this build cannot honour (TLS required) or cannot parse is refused up front, naming
/// the setting and not the password. Needs no server.
#[tokio::test]
async fn unusable_urls_are_refused_without_the_password() {
    for url in [
        "postgres://relay:s3cret@db/queue?sslmode=require",
        "postgres://relay:s3cret@db/queue?no_such_option=1",
    ] {
        let Err(err) = PostgresStore::connect(url, StoreOptions::default()).await else {
            panic!("{url} was accepted");
        };
        assert!(matches!(err, StoreError::DatabaseUrl { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("RELAY_DATABASE_URL"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
