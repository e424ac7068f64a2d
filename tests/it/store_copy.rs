//! `store copy`: a SQLite data directory with queued events and a dead letter, copied into
//! PostgreSQL by the real binary, copied again (nothing new), then delivered from PostgreSQL
//! by the relay, and the dead letter replayed from there. Skipped, saying so, without
//! `RELAY_TEST_DATABASE_URL`.

use std::io::Write as _;
use std::path::Path;

use prosperstack_relay::identify;
use prosperstack_relay::store::{
    DeadLetterCause, Incoming, JobOutcome, JobResult, Lane, SqliteStore, Store, StoreOptions,
};
use serde_json::{json, Value};

use crate::common::{
    all_have_plan, create_members, demo_sandbox, eventually, property, run_cli, settings,
    TestRelay, PATIENCE,
};

/// A schema of the test's own in the server `RELAY_TEST_DATABASE_URL` names, dropped at the end.
struct TestSchema {
    server: String,
    name: String,
    /// The server's URL with the schema first on the search path: what the relay is given.
    url: String,
}

impl TestSchema {
    async fn new() -> Option<TestSchema> {
        let Some(server) = std::env::var("RELAY_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            let _ = std::io::stderr()
                .write_all(b"skipped: store copy into PostgreSQL (set RELAY_TEST_DATABASE_URL)\n");
            return None;
        };
        let name = format!("relay_it_copy_{:016x}", rand::random::<u64>());
        run_sql(&server, &format!("CREATE SCHEMA {name}")).await;
        let joiner = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{joiner}options=-csearch_path%3D{name}");
        Some(TestSchema { server, name, url })
    }
}

impl Drop for TestSchema {
    /// Drops the schema from a thread of its own (the test's runtime cannot be blocked on).
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            // Bounded: a connection the stopped relay left open must not hold the test forever.
            let drop = format!("SET lock_timeout = '10s'; DROP SCHEMA {name} CASCADE");
            runtime.block_on(run_sql(&server, &drop));
        })
        .join();
    }
}

async fn run_sql(server: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("RELAY_TEST_DATABASE_URL is set but the server does not answer");
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

fn identify_event(message_id: &str, email: &str, plan: &str) -> Incoming {
    let raw = json!({"type": "identify", "messageId": message_id, "userId": message_id,
                     "traits": {"email": email, "plan": plan},
                     "timestamp": "2024-06-01T00:00:00Z"});
    Incoming {
        event: identify::normalise(&raw, 0).expect("a valid Identify"),
        raw: raw.to_string(),
        lane: Lane::Live,
    }
}

/// A relay's data directory as a stopped SQLite relay leaves it: `queued` subscribers each
/// with an undelivered event, and `dead` given up on (one dead letter).
async fn sqlite_with_backlog(dir: &Path, queued: &[String], dead: &str) {
    let store = SqliteStore::open(dir, StoreOptions::default()).expect("open");
    let mut events: Vec<Incoming> = queued
        .iter()
        .enumerate()
        .map(|(i, e)| identify_event(&format!("q{i}"), e, "Pro"))
        .collect();
    events.push(identify_event("dead-1", dead, "Gold"));
    store.ingest(events, 1_000).await.expect("ingest");
    let job = store.job(dead).await.expect("job").expect("queued");
    let lease = store
        .acquire_lease("setup", std::time::Duration::from_secs(60), 1_500)
        .await
        .expect("acquire")
        .expect("a fresh store's lease is free");
    let result = JobResult {
        email: dead.to_owned(),
        up_to_event_id: job.up_to_event_id(),
        outcome: JobOutcome::DeadLetter {
            reason: "ProsperStack was down for too long".into(),
            attempts: 9,
            cause: DeadLetterCause::RetriesExhausted,
        },
    };
    store
        .finish(&lease, vec![result], 2_000)
        .await
        .expect("finish");
}

/// `store copy --json` with the target from `RELAY_DATABASE_URL`; answers the report.
async fn copy(from: &Path, url: &str) -> Value {
    let from = from.display().to_string();
    let out = run_cli(
        &[("RELAY_DATABASE_URL", url)],
        &["store", "copy", "--from", &from, "--json"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "store copy failed: {stderr}");
    assert!(!stderr.contains(url), "the URL was printed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// Queued events and a dead letter survive the move: copied once (a rerun copies nothing), then
/// delivered by a relay on PostgreSQL; the dead letter is replayed from there.
#[tokio::test]
async fn copied_backlog_is_delivered_from_postgres() {
    let Some(schema) = TestSchema::new().await else {
        return;
    };
    let sb = demo_sandbox().await;
    let queued = create_members(&sb.sandbox, "copied", 20);
    let dead = create_members(&sb.sandbox, "gaveup", 1).remove(0);
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("sqlite");
    sqlite_with_backlog(&source, &queued, &dead).await;

    let first = copy(&source, &schema.url).await;
    assert_eq!(first["events"], json!({"copied": 20, "already_there": 0}));
    assert_eq!(first["jobs"], json!({"copied": 20, "already_there": 0}));
    assert_eq!(
        first["dead_letters"],
        json!({"copied": 1, "already_there": 0})
    );
    assert_eq!(first["seen_ids"], json!({"copied": 21, "already_there": 0}));
    let second = copy(&source, &schema.url).await;
    for kind in [
        "events",
        "jobs",
        "seen_ids",
        "remembered_emails",
        "dead_letters",
    ] {
        assert_eq!(second[kind]["copied"], 0, "{kind}: {second}");
        assert_eq!(
            second[kind]["already_there"], first[kind]["copied"],
            "{kind}"
        );
    }

    let scratch = tmp.path().join("scratch");
    let on_postgres = [("RELAY_DATABASE_URL", schema.url.as_str())];
    let relay = TestRelay::start_in(settings(&sb.url, &scratch, &on_postgres)).await;
    let delivered = eventually(PATIENCE, || async { all_have_plan(&sb.sandbox, &queued) }).await;
    assert!(
        delivered,
        "the copied backlog was not delivered from PostgreSQL"
    );
    assert_eq!(property(&sb.sandbox, &dead, "plan"), None);

    let listed = run_cli(&on_postgres, &["dead-letters", "list", "--json"]).await;
    let letters: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    assert_eq!(letters[0]["cause"], "retries_exhausted");
    let replay = run_cli(&on_postgres, &["dead-letters", "replay", "--all"]).await;
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let replayed = eventually(PATIENCE, || async {
        property(&sb.sandbox, &dead, "plan") == Some(Value::from("Gold"))
    })
    .await;
    assert!(
        replayed,
        "the copied dead letter was not delivered after replay"
    );
    drop(relay);
}
