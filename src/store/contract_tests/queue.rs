//! The queue's contract: ingest, dedupe, email memory, delete, jobs, finish, dead letters,
//! prune, figures and the readiness round trip.

use serde_json::json;

use super::backends::Backend;
use super::support::{delete, delivered, deliverer, finish, identify, incoming};
use crate::store::{
    DeadLetterCause, IngestOutcome, JobOutcome, JobResult, QueueStats, RejectedProperty,
    StateStats, Store, StoreOptions,
};

contract!(
    stores_and_dedupes,
    remembers_email_per_user_id,
    delete_forgets_user,
    coalesce_delay_holds_a_new_job,
    job_reads_what_is_queued_now,
    finish_delivered_keeps_later_events,
    applied_keeps_the_latest_timestamp,
    retry_reschedules,
    dead_letter_replay_and_purge,
    property_dead_letter_replays_only_that_property,
    prune_forgets_old_ids,
    stats_count_the_queue,
    emails_match_whatever_their_case,
    finish_answers_the_dead_letters_it_made,
    status_documents_are_kept_per_replica,
    ping_round_trips,
    concurrent_ingests_commit,
    nul_characters_do_not_stop_the_queue,
    platform_ids_queue_email_less_identifies,
);

async fn open<B: Backend>(b: &B) -> B::Store {
    b.open(StoreOptions::default()).await.expect("open")
}

/// A stored event is queued as a job for its email; its messageId is then a duplicate.
async fn stores_and_dedupes(b: &impl Backend) {
    let s = open(b).await;
    let out = s
        .ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1000)], 5)
        .await
        .expect("ingest");
    assert_eq!(out, vec![IngestOutcome::Stored]);
    let again = s
        .ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1000)], 6)
        .await
        .expect("ingest");
    assert_eq!(again, vec![IngestOutcome::Duplicate]);
    let jobs = s.due_jobs(10, 10).await.expect("due");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].email, "a@x.io");
    assert_eq!(jobs[0].events.len(), 1);
    assert_eq!(jobs[0].events[0].timestamp_ms, 1000);
    assert_eq!(jobs[0].events[0].traits.get("plan"), Some(&json!("pro")));
}

/// Within one batch, a later event without email uses the email an earlier one taught.
async fn remembers_email_per_user_id(b: &impl Backend) {
    let s = open(b).await;
    let batch = vec![
        identify("m1", Some("u1"), Some("a@x.io"), 1),
        identify("m2", Some("u1"), None, 2),
        identify("m3", Some("u2"), None, 3),
    ];
    let out = s.ingest(batch, 5).await.expect("ingest");
    assert_eq!(
        out,
        [
            IngestOutcome::Stored,
            IngestOutcome::Stored,
            IngestOutcome::NoEmail
        ]
    );
    let jobs = s.due_jobs(10, 10).await.expect("due");
    assert_eq!(jobs[0].events.len(), 2);
}

/// A delete forgets the remembered email, the user's queued events and what was applied for
/// the email; its messageId is deduped like any other.
async fn delete_forgets_user(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    finish(&s, &lease, "a@x.io", i64::MAX, delivered(&[("plan", 1)]), 6).await;
    s.ingest(vec![identify("m2", Some("u1"), Some("a@x.io"), 2)], 7)
        .await
        .expect("ingest");
    let out = s.ingest(vec![delete("d1", "u1")], 8).await.expect("delete");
    assert_eq!(out, [IngestOutcome::Forgotten]);
    assert!(s.due_jobs(100, 10).await.expect("due").is_empty());
    let stats = s.stats().await.expect("stats");
    assert_eq!(QueueStats { bytes: 0, ..stats }, QueueStats::default());
    let again = s.ingest(vec![delete("d1", "u1")], 9).await.expect("delete");
    assert_eq!(again, [IngestOutcome::Duplicate]);
    let no_email = s
        .ingest(vec![identify("m3", Some("u1"), None, 3)], 10)
        .await;
    assert_eq!(no_email.expect("ingest"), [IngestOutcome::NoEmail]);
    s.ingest(vec![identify("m4", Some("u9"), Some("a@x.io"), 4)], 11)
        .await
        .expect("ingest");
    let job = s.job("a@x.io").await.expect("read").expect("a new job");
    assert!(job.applied.is_empty(), "{:?}", job.applied);
}

/// A new job waits the coalesce delay before it is due; so does one made due again by events
/// that arrived during an attempt.
async fn coalesce_delay_holds_a_new_job(b: &impl Backend) {
    let s = b
        .open(StoreOptions { coalesce_ms: 1000 })
        .await
        .expect("open");
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    assert!(s.due_emails(1004, 10).await.expect("due").is_empty());
    assert_eq!(s.next_due_ms().await.expect("next"), Some(1005));
    let job = s.due_jobs(1005, 10).await.expect("due").remove(0);
    s.ingest(vec![identify("m2", Some("u1"), Some("a@x.io"), 2)], 1006)
        .await
        .expect("ingest");
    finish(
        &s,
        &lease,
        "a@x.io",
        job.up_to_event_id(),
        delivered(&[]),
        1010,
    )
    .await;
    assert!(s.due_emails(2009, 10).await.expect("due").is_empty());
    assert_eq!(s.due_emails(2010, 10).await.expect("due"), ["a@x.io"]);
}

/// `job` answers one email's job as it is now, events queued since it was listed included.
async fn job_reads_what_is_queued_now(b: &impl Backend) {
    let s = open(b).await;
    assert!(s.job("a@x.io").await.expect("read").is_none());
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    let listed = s.due_emails(10, 10).await.expect("due");
    s.ingest(vec![identify("m2", Some("u1"), Some("a@x.io"), 2)], 6)
        .await
        .expect("ingest");
    let job = s.job(&listed[0]).await.expect("read").expect("the job");
    let ids: Vec<&str> = job.events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2"]);
    assert!(job.events[0].id < job.events[1].id);
    assert_eq!((job.attempts, job.first_queued_ms), (0, 5));
}

/// Delivered events leave the queue and record applied timestamps; later arrivals stay;
/// refused properties become dead letters holding the original events.
async fn finish_delivered_keeps_later_events(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    let job = s.due_jobs(10, 10).await.expect("due").remove(0);
    s.ingest(vec![identify("m2", Some("u1"), Some("a@x.io"), 2)], 6)
        .await
        .expect("ingest");
    let outcome = JobOutcome::Delivered {
        applied: vec![("plan".into(), 1)],
        rejected: vec![RejectedProperty {
            key: "n".into(),
            value: json!("x"),
            reason: "bad".into(),
        }],
        attempts: 1,
    };
    finish(&s, &lease, &job.email, job.up_to_event_id(), outcome, 7).await;
    let jobs = s.due_jobs(100, 10).await.expect("due");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].events.len(), 1);
    assert_eq!(jobs[0].events[0].message_id, "m2");
    assert_eq!(jobs[0].applied.get("plan"), Some(&1));
    let dead = s.dead_letters().await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].properties.get("n"), Some(&json!("x")));
    assert_eq!(dead[0].events.len(), 1);
    assert_eq!(dead[0].events[0]["messageId"], json!("m1"));
    assert_eq!((dead[0].attempts, dead[0].created_ms), (1, 7));
}

/// An applied timestamp only moves forward: a late result for older values keeps the newer.
async fn applied_keeps_the_latest_timestamp(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    for (i, applied_ts) in [1000, 500, 2000].into_iter().enumerate() {
        let id = format!("m{i}");
        s.ingest(vec![identify(&id, Some("u1"), Some("a@x.io"), 1)], 5)
            .await
            .expect("ingest");
        let job = s.job("a@x.io").await.expect("read").expect("job");
        let outcome = delivered(&[("plan", applied_ts), ("seats", 7)]);
        finish(&s, &lease, "a@x.io", job.up_to_event_id(), outcome, 6).await;
    }
    s.ingest(vec![identify("last", Some("u1"), Some("a@x.io"), 1)], 7)
        .await
        .expect("ingest");
    let job = s.job("a@x.io").await.expect("read").expect("job");
    assert_eq!(job.applied.get("plan"), Some(&2000));
    assert_eq!(job.applied.get("seats"), Some(&7));
}

/// A retried job is not due before its time and keeps its attempts and waiting time.
async fn retry_reschedules(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    let retry = JobOutcome::RetryAt {
        at_ms: 1000,
        attempts: 3,
        waiting_since_ms: Some(5),
        error: "503".into(),
    };
    finish(&s, &lease, "a@x.io", 1, retry, 6).await;
    assert!(s.due_jobs(999, 10).await.expect("due").is_empty());
    assert!(s.due_emails(999, 10).await.expect("due").is_empty());
    assert_eq!(s.due_emails(1000, 10).await.expect("due"), ["a@x.io"]);
    assert_eq!(s.next_due_ms().await.expect("next"), Some(1000));
    let job = s.due_jobs(1000, 10).await.expect("due").remove(0);
    assert_eq!(job.attempts, 3);
    assert_eq!(job.waiting_since_ms, Some(5));
    assert_eq!(job.events.len(), 1);
}

/// Dead-lettered events can be replayed into the queue and purged by age.
async fn dead_letter_replay_and_purge(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    let gone = || JobOutcome::DeadLetter {
        reason: "gone".into(),
        attempts: 9,
        cause: DeadLetterCause::NoSubscriber,
    };
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    let job = s.job("a@x.io").await.expect("read").expect("job");
    finish(&s, &lease, "a@x.io", job.up_to_event_id(), gone(), 6).await;
    let stats = s.stats().await.expect("stats");
    assert_eq!((stats.events, stats.dead_letters), (0, 1));
    let letter = s.dead_letters().await.expect("list").remove(0);
    assert_eq!(
        (letter.reason.as_str(), letter.cause),
        ("gone", DeadLetterCause::NoSubscriber)
    );
    assert_eq!(s.replay_dead_letters(None, 10).await.expect("replay"), 1);
    let jobs = s.due_jobs(10, 10).await.expect("due");
    assert_eq!(jobs[0].events[0].message_id, "m1");
    assert_eq!(s.stats().await.expect("stats").dead_letters, 0);
    finish(&s, &lease, "a@x.io", jobs[0].up_to_event_id(), gone(), 20).await;
    assert_eq!(s.purge_dead_letters(15).await.expect("purge"), 0);
    assert_eq!(s.purge_dead_letters(21).await.expect("purge"), 1);
    assert!(s.dead_letters().await.expect("list").is_empty());
}

/// Replaying a dead letter for one refused property re-queues only that property, at the time
/// of its latest original event; a replayed letter is gone.
async fn property_dead_letter_replays_only_that_property(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1000)], 5)
        .await
        .expect("ingest");
    let job = s.job("a@x.io").await.expect("read").expect("job");
    let outcome = JobOutcome::Delivered {
        applied: vec![("plan".into(), 1000)],
        rejected: vec![RejectedProperty {
            key: "score".into(),
            value: json!("42"),
            reason: "400: expected a number".into(),
        }],
        attempts: 1,
    };
    finish(&s, &lease, "a@x.io", job.up_to_event_id(), outcome, 6).await;
    let id = s.dead_letters().await.expect("list")[0].id;
    let replayed = s.replay_dead_letters(Some(vec![id + 1]), 10).await;
    assert_eq!(replayed.expect("replay"), 0);
    let replayed = s.replay_dead_letters(Some(vec![id]), 10).await;
    assert_eq!(replayed.expect("replay"), 1);
    let job = s.due_jobs(10, 10).await.expect("due").remove(0);
    assert_eq!(job.events.len(), 1);
    assert_eq!(json!(job.events[0].traits), json!({"score": "42"}));
    assert_eq!(job.events[0].timestamp_ms, 1000);
    assert_eq!(s.replay_dead_letters(None, 11).await.expect("replay"), 0);
}

/// Seen ids and applied values older than the retention window are forgotten by prune.
async fn prune_forgets_old_ids(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    assert_eq!(s.prune(5).await.expect("prune"), 0);
    assert_eq!(s.prune(6).await.expect("prune"), 1);
    let again = s
        .ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 7)
        .await
        .expect("ingest");
    assert_eq!(again, [IngestOutcome::Stored]);
    finish(&s, &lease, "a@x.io", i64::MAX, delivered(&[("plan", 1)]), 8).await;
    // The seen id (7) and the applied value (8) are both older than 9.
    assert_eq!(s.prune(9).await.expect("prune"), 2);
}

/// The figures count queued events, subscribers with a job, the oldest arrival, dead letters,
/// the store's size, and each state: due (never tried), retrying, waiting for a subscriber.
async fn stats_count_the_queue(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    let stats = s.stats().await.expect("stats");
    assert_eq!(QueueStats { bytes: 0, ..stats }, QueueStats::default());
    let events = vec![
        identify("m1", Some("u1"), Some("a@x.io"), 1),
        identify("m2", Some("u2"), Some("b@x.io"), 2),
        identify("m3", Some("u2"), Some("b@x.io"), 3),
    ];
    for (i, event) in events.into_iter().enumerate() {
        s.ingest(vec![event], 5 + i as i64).await.expect("ingest");
    }
    s.ingest(vec![identify("m4", Some("u3"), Some("c@x.io"), 4)], 8)
        .await
        .expect("ingest");
    s.ingest(vec![identify("m5", Some("u4"), Some("d@x.io"), 5)], 9)
        .await
        .expect("ingest");
    let dead = JobOutcome::DeadLetter {
        reason: "gone".into(),
        attempts: 1,
        cause: DeadLetterCause::Rejected,
    };
    finish(&s, &lease, "a@x.io", i64::MAX, dead, 10).await;
    let retry = |waiting_since_ms| JobOutcome::RetryAt {
        at_ms: 100,
        attempts: 1,
        waiting_since_ms,
        error: "503".into(),
    };
    finish(&s, &lease, "c@x.io", i64::MAX, retry(None), 10).await;
    finish(&s, &lease, "d@x.io", i64::MAX, retry(Some(10)), 10).await;
    let stats = s.stats().await.expect("stats");
    let one = |events, oldest| StateStats {
        subscribers: 1,
        events,
        oldest_received_ms: Some(oldest),
    };
    let expected = QueueStats {
        events: 4,
        subscribers: 3,
        oldest_received_ms: Some(6),
        due: one(2, 6),
        retrying: one(1, 8),
        waiting: one(1, 9),
        dead_letters: 1,
        bytes: 0,
    };
    assert_eq!(QueueStats { bytes: 0, ..stats }, expected);
    assert!(stats.bytes > 0);
}

/// Emails are keys whatever their case: one job per person, found by its key, which remembers
/// the other spellings its events were sent with, latest first.
async fn emails_match_whatever_their_case(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    let batch = vec![
        identify("m1", Some("u1"), Some("Ann@X.io"), 1),
        identify("m2", Some("u1"), Some("ann@x.io"), 2),
        identify("m3", Some("u1"), Some("ANN@x.io"), 3),
    ];
    s.ingest(batch, 5).await.expect("ingest");
    assert_eq!(s.due_emails(10, 10).await.expect("due"), ["ann@x.io"]);
    let job = s.job("ann@x.io").await.expect("read").expect("one job");
    assert_eq!(job.events.len(), 3);
    assert_eq!(job.spellings, ["ANN@x.io", "Ann@X.io"]);
    finish(
        &s,
        &lease,
        "ann@x.io",
        job.up_to_event_id(),
        delivered(&[("plan", 3)]),
        6,
    )
    .await;
    // The remembered email keeps its spelling; the event it gives is queued under the key.
    s.ingest(vec![identify("m4", Some("u1"), None, 4)], 7)
        .await
        .expect("ingest");
    let job = s.job("ann@x.io").await.expect("read").expect("the job");
    assert_eq!(job.spellings, ["ANN@x.io"]);
    assert_eq!(job.applied.get("plan"), Some(&3));
}

/// `finish` answers the ids of the dead letters it made, in the order of the results, a
/// result's refused properties first; each is listed with its cause.
async fn finish_answers_the_dead_letters_it_made(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    let batch = vec![
        identify("m1", Some("u1"), Some("a@x.io"), 1),
        identify("m2", Some("u2"), Some("b@x.io"), 2),
    ];
    s.ingest(batch, 5).await.expect("ingest");
    let refused = |key: &str| RejectedProperty {
        key: key.into(),
        value: json!(1),
        reason: "400".into(),
    };
    let results = vec![
        JobResult {
            email: "b@x.io".into(),
            up_to_event_id: i64::MAX,
            outcome: JobOutcome::DeadLetter {
                reason: "no one".into(),
                attempts: 3,
                cause: DeadLetterCause::NoSubscriber,
            },
        },
        JobResult {
            email: "a@x.io".into(),
            up_to_event_id: i64::MAX,
            outcome: JobOutcome::Delivered {
                applied: vec![],
                rejected: vec![refused("x"), refused("y")],
                attempts: 1,
            },
        },
    ];
    let ids = s.finish(&lease, results, 6).await.expect("finish");
    let letters = s.dead_letters().await.expect("list");
    let by_id = |id: i64| letters.iter().find(|l| l.id == id).expect("listed");
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(by_id(ids[0]).cause, DeadLetterCause::NoSubscriber);
    assert_eq!(by_id(ids[0]).email, "b@x.io");
    for (id, key) in ids[1..].iter().zip(["x", "y"]) {
        assert_eq!(by_id(*id).cause, DeadLetterCause::PropertyRefused);
        assert!(by_id(*id).properties.contains_key(key));
    }
}

/// Each serving process's status document replaces its previous one; those of processes
/// silent too long are forgotten; the most recent comes first.
async fn status_documents_are_kept_per_replica(b: &impl Backend) {
    let s = open(b).await;
    let save = |replica: &str, body: &str, now: i64, forget: i64| {
        s.save_status(replica.into(), body.into(), now, forget)
    };
    save("a", "{\"n\":1}", 10, 0).await.expect("save");
    save("b", "{\"n\":2}", 20, 0).await.expect("save");
    save("a", "{\"n\":3}", 30, 0).await.expect("save");
    let saved = s.saved_statuses().await.expect("read");
    let seen: Vec<(&str, i64, &str)> = saved
        .iter()
        .map(|d| (d.replica.as_str(), d.saved_ms, d.body.as_str()))
        .collect();
    assert_eq!(seen, [("a", 30, "{\"n\":3}"), ("b", 20, "{\"n\":2}")]);
    save("c", "{}", 40, 25).await.expect("save");
    let replicas: Vec<String> = s
        .saved_statuses()
        .await
        .expect("read")
        .into_iter()
        .map(|d| d.replica)
        .collect();
    assert_eq!(replicas, ["c", "a"]);
}

/// The readiness probe writes and reads back, again and again.
async fn ping_round_trips(b: &impl Backend) {
    let s = open(b).await;
    for at in [1, 2, 1] {
        s.ping(at).await.expect("ping");
    }
}

/// Many concurrent ingests all commit (group commit answers each after its commit).
async fn concurrent_ingests_commit(b: &impl Backend) {
    let s = open(b).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let email = format!("{i}@x.io");
            let event = identify(&format!("m{i}"), Some("u"), Some(&email), i);
            s.ingest(vec![event], 1).await
        }));
    }
    for t in tasks {
        let outcome = t.await.expect("task").expect("ingest");
        assert_eq!(outcome, [IngestOutcome::Stored]);
    }
    let stats = s.stats().await.expect("stats");
    assert_eq!((stats.events, stats.subscribers), (200, 200));
}

/// NUL characters in ids, traits and refusals are stored (PostgreSQL text cannot hold them;
/// the store must not refuse the event for it) and JSON keeps them exactly.
async fn nul_characters_do_not_stop_the_queue(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    let v = json!({"type": "identify", "messageId": "m\u{0}1", "userId": "u\u{0}1",
                   "traits": {"email": "a@x.io", "note": "a\u{0}b", "k\u{0}": 1}});
    let out = s.ingest(vec![incoming(&v)], 5).await.expect("ingest");
    assert_eq!(out, [IngestOutcome::Stored]);
    let job = s.job("a@x.io").await.expect("read").expect("job");
    assert_eq!(job.events[0].traits.get("note"), Some(&json!("a\u{0}b")));
    assert_eq!(job.events[0].traits.get("k\u{0}"), Some(&json!(1)));
    let outcome = JobOutcome::Delivered {
        applied: vec![("k\u{0}".into(), 1)],
        rejected: vec![RejectedProperty {
            key: "note".into(),
            value: json!("a\u{0}b"),
            reason: "refused \u{0}".into(),
        }],
        attempts: 1,
    };
    finish(&s, &lease, "a@x.io", job.up_to_event_id(), outcome, 6).await;
    let dead = s.dead_letters().await.expect("list");
    assert_eq!(dead[0].properties.get("note"), Some(&json!("a\u{0}b")));
    assert_eq!(dead[0].events[0]["traits"]["note"], json!("a\u{0}b"));
    let again = s.ingest(vec![incoming(&v)], 7).await.expect("ingest");
    assert_eq!(again, [IngestOutcome::Duplicate]);
}

/// An Identify with no email (none remembered) but a platform ID is queued under the ID's key,
/// kept as sent, with its userId; a remembered email still wins; a delivered job leaves.
async fn platform_ids_queue_email_less_identifies(b: &impl Backend) {
    let s = open(b).await;
    let lease = deliverer(&s).await;
    let with_platform_id = |message_id: &str, user: &str| {
        let mut event = identify(message_id, Some(user), None, 1);
        if let crate::identify::Event::Identify(update) = &mut event.event {
            update.platform_id = Some("cus_AbC".into());
        }
        event
    };
    let batch = vec![
        with_platform_id("m1", "cus_AbC"),
        with_platform_id("m2", "cus_AbC"),
        identify("m3", Some("u2"), Some("b@x.io"), 1),
        with_platform_id("m4", "u2"),
    ];
    let out = s.ingest(batch, 5).await.expect("ingest");
    assert!(out.iter().all(|o| *o == IngestOutcome::Stored), "{out:?}");
    let key = crate::identify::platform_id_key("cus_AbC");
    let mut due = s.due_emails(10, 10).await.expect("due");
    due.sort();
    assert_eq!(due, ["b@x.io".to_owned(), key.clone()]);
    let job = s
        .job(&key)
        .await
        .expect("read")
        .expect("the platform ID's job");
    assert_eq!(job.events.len(), 2);
    assert_eq!(job.events[0].user_id.as_deref(), Some("cus_AbC"));
    let up_to = job.up_to_event_id();
    finish(&s, &lease, &key, up_to, delivered(&[("plan", 1)]), 6).await;
    assert!(s.job(&key).await.expect("read").is_none());
}
