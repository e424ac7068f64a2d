use serde_json::json;

use super::*;
use crate::store::RejectedProperty;

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    (dir, store)
}

/// Records one job's result.
async fn finish(
    s: &SqliteStore,
    email: &str,
    up_to_event_id: i64,
    outcome: JobOutcome,
    now_ms: i64,
) {
    let result = JobResult {
        email: email.to_owned(),
        up_to_event_id,
        outcome,
    };
    s.finish(vec![result], now_ms).await.expect("finish");
}

fn identify(message_id: &str, user: Option<&str>, email: Option<&str>, ts: i64) -> Incoming {
    let mut v = json!({"type": "identify", "messageId": message_id, "traits": {"plan": "pro"},
                       "timestamp": chrono::DateTime::from_timestamp_millis(ts).unwrap().to_rfc3339()});
    if let Some(u) = user {
        v["userId"] = json!(u);
    } else {
        v["anonymousId"] = json!("anon");
    }
    if let Some(e) = email {
        v["traits"]["email"] = json!(e);
    }
    Incoming {
        event: identify::normalise(&v, 0).expect("valid"),
        raw: v.to_string(),
    }
}

/// A stored event is queued as a job for its email; its messageId is then a duplicate.
#[tokio::test]
async fn stores_and_dedupes() {
    let (_d, s) = open();
    let out = s
        .ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1000)], 5)
        .await
        .unwrap();
    assert_eq!(out, vec![IngestOutcome::Stored]);
    let again = s
        .ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1000)], 6)
        .await
        .unwrap();
    assert_eq!(again, vec![IngestOutcome::Duplicate]);
    let jobs = s.due_jobs(10, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].email, "a@x.io");
    assert_eq!(jobs[0].events.len(), 1);
    assert_eq!(jobs[0].events[0].timestamp_ms, 1000);
}

/// Within one batch, a later event without email uses the email an earlier one taught.
#[tokio::test]
async fn remembers_email_per_user_id() {
    let (_d, s) = open();
    let out = s
        .ingest(
            vec![
                identify("m1", Some("u1"), Some("a@x.io"), 1),
                identify("m2", Some("u1"), None, 2),
                identify("m3", Some("u2"), None, 3),
            ],
            5,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            IngestOutcome::Stored,
            IngestOutcome::Stored,
            IngestOutcome::NoEmail
        ]
    );
    let jobs = s.due_jobs(10, 10).await.unwrap();
    assert_eq!(jobs[0].events.len(), 2);
}

/// Delivered events leave the queue and record applied timestamps; later arrivals stay.
#[tokio::test]
async fn finish_delivered_keeps_later_events() {
    let (_d, s) = open();
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .unwrap();
    let job = s.due_jobs(10, 10).await.unwrap().remove(0);
    s.ingest(vec![identify("m2", Some("u1"), Some("a@x.io"), 2)], 6)
        .await
        .unwrap();
    finish(
        &s,
        &job.email,
        job.up_to_event_id(),
        JobOutcome::Delivered {
            applied: vec![("plan".into(), 1)],
            rejected: vec![RejectedProperty {
                key: "n".into(),
                value: json!("x"),
                reason: "bad".into(),
            }],
            attempts: 1,
        },
        7,
    )
    .await;
    let jobs = s.due_jobs(100, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].events.len(), 1);
    assert_eq!(jobs[0].events[0].message_id, "m2");
    assert_eq!(jobs[0].applied.get("plan"), Some(&1));
    let dead = s.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].properties.get("n"), Some(&json!("x")));
    assert_eq!(dead[0].events.len(), 1);
}

/// A retried job is not due before its time and keeps its attempts.
#[tokio::test]
async fn retry_reschedules() {
    let (_d, s) = open();
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .unwrap();
    finish(
        &s,
        "a@x.io",
        1,
        JobOutcome::RetryAt {
            at_ms: 1000,
            attempts: 3,
            waiting_since_ms: Some(5),
            error: "503".into(),
        },
        6,
    )
    .await;
    assert!(s.due_jobs(999, 10).await.unwrap().is_empty());
    assert!(s.due_emails(999, 10).await.unwrap().is_empty());
    assert_eq!(
        s.due_emails(1000, 10).await.unwrap(),
        vec!["a@x.io".to_string()]
    );
    assert_eq!(s.next_due_ms().await.unwrap(), Some(1000));
    let job = s.due_jobs(1000, 10).await.unwrap().remove(0);
    assert_eq!(job.attempts, 3);
    assert_eq!(job.waiting_since_ms, Some(5));
}

/// Dead-lettered events can be replayed into the queue and purged by age.
#[tokio::test]
async fn dead_letter_replay_and_purge() {
    let (_d, s) = open();
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .unwrap();
    finish(
        &s,
        "a@x.io",
        1,
        JobOutcome::DeadLetter {
            reason: "gone".into(),
            attempts: 9,
            cause: DeadLetterCause::NoSubscriber,
        },
        6,
    )
    .await;
    assert_eq!(s.stats().await.unwrap().events, 0);
    assert_eq!(s.stats().await.unwrap().dead_letters, 1);
    assert_eq!(s.replay_dead_letters(None, 10).await.unwrap(), 1);
    let jobs = s.due_jobs(10, 10).await.unwrap();
    assert_eq!(jobs[0].events[0].message_id, "m1");
    assert_eq!(s.stats().await.unwrap().dead_letters, 0);
    finish(
        &s,
        "a@x.io",
        jobs[0].up_to_event_id(),
        JobOutcome::DeadLetter {
            reason: "gone".into(),
            attempts: 9,
            cause: DeadLetterCause::NoSubscriber,
        },
        20,
    )
    .await;
    assert_eq!(s.purge_dead_letters(15).await.unwrap(), 0);
    assert_eq!(s.purge_dead_letters(21).await.unwrap(), 1);
}

/// A delete forgets the remembered email and the user's queued events.
#[tokio::test]
async fn delete_forgets_user() {
    let (_d, s) = open();
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .unwrap();
    let del = Incoming {
        event: identify::normalise(&json!({"type":"delete","userId":"u1","messageId":"d1"}), 0)
            .unwrap(),
        raw: "{}".into(),
    };
    assert_eq!(
        s.ingest(vec![del], 6).await.unwrap(),
        vec![IngestOutcome::Forgotten]
    );
    assert!(s.due_jobs(100, 10).await.unwrap().is_empty());
    assert_eq!(
        s.ingest(vec![identify("m2", Some("u1"), None, 2)], 7)
            .await
            .unwrap(),
        vec![IngestOutcome::NoEmail]
    );
}

/// Seen ids older than the retention window are forgotten by prune.
#[tokio::test]
async fn prune_forgets_old_ids() {
    let (_d, s) = open();
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .unwrap();
    assert_eq!(s.prune(6).await.unwrap(), 1);
    let again = s
        .ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 7)
        .await
        .unwrap();
    assert_eq!(again, vec![IngestOutcome::Stored]);
}

/// A second store on the same directory is refused while the first is open.
#[tokio::test]
async fn data_dir_is_locked() {
    let (dir, s) = open();
    assert!(SqliteStore::open(dir.path(), StoreOptions::default()).is_err());
    s.ping(1).await.unwrap();
}

/// Many concurrent ingests all commit (group commit answers each after its commit).
#[tokio::test]
async fn concurrent_ingests_commit() {
    let (_d, s) = open();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.ingest(
                vec![identify(
                    &format!("m{i}"),
                    Some("u"),
                    Some(&format!("{i}@x.io")),
                    i,
                )],
                1,
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), vec![IngestOutcome::Stored]);
    }
    assert_eq!(s.stats().await.unwrap().events, 200);
}

/// Events survive closing and reopening the store.
#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path(), StoreOptions::default()).unwrap();
        s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
            .await
            .unwrap();
    }
    // The writer thread releases the lock once every handle is gone.
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = SqliteStore::open(dir.path(), StoreOptions::default()) {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let s = reopened.expect("reopened");
    assert_eq!(s.stats().await.unwrap().events, 1);
}

/// Replaying a dead letter for one refused property re-queues only that property, at the time
/// of its latest original event.
#[tokio::test]
async fn property_dead_letter_replays_only_that_property() {
    let (_d, s) = open();
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1000)], 5)
        .await
        .unwrap();
    finish(
        &s,
        "a@x.io",
        1,
        JobOutcome::Delivered {
            applied: vec![("plan".into(), 1000)],
            rejected: vec![RejectedProperty {
                key: "score".into(),
                value: json!("42"),
                reason: "400: expected a number".into(),
            }],
            attempts: 1,
        },
        6,
    )
    .await;
    assert_eq!(s.replay_dead_letters(Some(vec![1]), 10).await.unwrap(), 1);
    let job = s.due_jobs(10, 10).await.unwrap().remove(0);
    assert_eq!(job.events.len(), 1);
    assert_eq!(json!(job.events[0].traits), json!({"score": "42"}));
    assert_eq!(job.events[0].timestamp_ms, 1000);
    // Replaying again finds nothing: the dead letter is gone.
    assert_eq!(s.replay_dead_letters(None, 11).await.unwrap(), 0);
}
