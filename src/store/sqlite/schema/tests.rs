use std::path::Path;

use rusqlite::OpenFlags;
use serde_json::{json, Value};

use super::*;
use crate::identify;
use crate::store::sqlite::{SqliteStore, StoreOptions};
use crate::store::{Incoming, IngestOutcome, QueueStats, Store};

/// A store written by the relay at commit b6012cf, before schema versions (see its README).
const FIXTURE_V0: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-v0/relay.db"
);

/// Far enough ahead that every queued job is due.
const LATER: i64 = i64::MAX;

/// A copy of the v0 fixture in a directory of its own (opening it upgrades it in place).
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(FIXTURE_V0, dir.path().join("relay.db")).expect("copy the fixture");
    dir
}

/// The version recorded in `dir`'s store, read on a connection of its own.
fn stored_version(dir: &Path) -> u32 {
    let c = Connection::open_with_flags(dir.join("relay.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open read-only");
    version(&c).expect("version")
}

/// A store as a later release might leave it: version `v`, with a table this release ignores.
fn store_at_version(dir: &Path, v: u32) {
    let c = Connection::open(dir.join("relay.db")).expect("create");
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; CREATE TABLE from_the_future (x); PRAGMA user_version = {v};"
    ))
    .expect("write a newer store");
}

fn identify(message_id: &str, user_id: &str, traits: Value) -> Incoming {
    let v = json!({"type": "identify", "messageId": message_id, "userId": user_id,
                   "timestamp": "2024-07-01T00:00:00Z", "traits": traits});
    Incoming::live(
        identify::normalise(&v, 0).expect("a valid identify"),
        v.to_string(),
    )
}

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, StoreOptions::default()).expect("open")
}

/// The steps are numbered 1, 2, 3… in order, as planning assumes.
#[test]
fn migrations_are_numbered_in_order() {
    assert!(migrate::numbered_in_order(MIGRATIONS));
}

/// A new store is created at the latest version.
#[tokio::test]
async fn fresh_store_gets_the_latest_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let stats = store.stats().await.expect("stats");
    assert_eq!(QueueStats { bytes: 0, ..stats }, QueueStats::default());
    assert_eq!(stored_version(dir.path()), migrate::latest(MIGRATIONS));
}

/// Upgrading a store that is current applies nothing and changes nothing.
#[test]
fn upgrading_twice_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Connection::open(dir.path().join("relay.db")).expect("create");
    let schema_sql = |c: &Connection| -> Vec<String> {
        let mut stmt = c
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    };
    let all: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(upgrade(&mut c, "here").expect("first"), all);
    let after_first = schema_sql(&c);
    assert_eq!(upgrade(&mut c, "here").expect("second"), Vec::<u32>::new());
    assert_eq!(schema_sql(&c), after_first);
    assert_eq!(version(&c).expect("version"), migrate::latest(MIGRATIONS));
}

/// A step that fails leaves the store at the version before it, with none of its statements.
#[test]
fn failed_step_leaves_the_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Connection::open(dir.path().join("relay.db")).expect("create");
    let steps = [
        MIGRATIONS[0],
        Migration {
            version: 2,
            name: "fails halfway",
            sql: "CREATE TABLE half_done (x); INSERT INTO no_such_table VALUES (1);",
        },
    ];
    assert!(apply(&mut c, "here", &steps).is_err());
    assert_eq!(version(&c).expect("version"), 1);
    let half_done: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(half_done, 0);
}

/// The v0 fixture opened by the relay is upgraded to the latest version.
#[tokio::test]
async fn v0_fixture_is_upgraded() {
    let dir = fixture_copy();
    assert_eq!(stored_version(dir.path()), 0);
    let store = open(dir.path());
    assert_eq!(stored_version(dir.path()), migrate::latest(MIGRATIONS));
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        (stats.events, stats.subscribers, stats.dead_letters),
        (3, 2, 1)
    );
}

/// The fixture's queued events survive the upgrade, with their traits and Engage computation.
#[tokio::test]
async fn v0_fixture_keeps_its_queue() {
    let dir = fixture_copy();
    let store = open(dir.path());
    let mut emails = store.due_emails(LATER, 10).await.expect("due");
    emails.sort();
    assert_eq!(emails, ["john.doe@example.com", "jordan.reyes@example.com"]);

    let jordan = store
        .job("jordan.reyes@example.com")
        .await
        .expect("read")
        .expect("jordan's job");
    let ids: Vec<&str> = jordan
        .events
        .iter()
        .map(|e| e.message_id.as_str())
        .collect();
    assert_eq!(ids, ["fx-jordan-1", "fx-jordan-2"]);
    assert_eq!(jordan.events[0].traits.get("plan"), Some(&json!("Pro")));
    assert_eq!(
        jordan.events[0].traits.get("Number of contacts"),
        Some(&json!(12))
    );
    assert_eq!(
        jordan.events[1].traits.get("preferredName"),
        Some(&json!("Jordy"))
    );
    // It failed once against a 503 before the fixture's relay stopped.
    assert_eq!(jordan.attempts, 1);

    let john = store.due_jobs(LATER, 10).await.expect("due jobs");
    let john = john
        .iter()
        .find(|j| j.email == "john.doe@example.com")
        .expect("john's job");
    assert_eq!(john.events.len(), 1);
    let engage = john.events[0]
        .engage
        .as_ref()
        .expect("an Engage computation");
    assert_eq!(engage.class, "audience");
    assert_eq!(engage.key, "high_value_customers");
    assert_eq!(
        john.events[0].traits.get("high_value_customers"),
        Some(&json!(true))
    );
}

/// The fixture's seen messageIds still make a re-sent event a duplicate.
#[tokio::test]
async fn v0_fixture_keeps_its_dedupe_ids() {
    let dir = fixture_copy();
    let store = open(dir.path());
    let again = identify(
        "fx-jordan-1",
        "user-jordan",
        json!({"email": "jordan.reyes@example.com", "plan": "Pro"}),
    );
    assert_eq!(
        store.ingest(vec![again], 1).await.expect("ingest"),
        [IngestOutcome::Duplicate]
    );
}

/// The fixture's remembered userId → email still gives an email to an Identify without one,
/// and what was applied for that email is still known.
#[tokio::test]
async fn v0_fixture_keeps_remembered_emails() {
    let dir = fixture_copy();
    let store = open(dir.path());
    let no_email = identify("after-upgrade-1", "user-maria", json!({"plan": "Pro"}));
    assert_eq!(
        store.ingest(vec![no_email], 1).await.expect("ingest"),
        [IngestOutcome::Stored]
    );
    let maria = store
        .job("maria.lopez@example.com")
        .await
        .expect("read")
        .expect("maria's job");
    assert_eq!(maria.events.len(), 1);
    assert_eq!(maria.events[0].message_id, "after-upgrade-1");
    assert!(maria.applied.contains_key("plan"), "{:?}", maria.applied);
}

/// The fixture's dead letter is listed after the upgrade and can be replayed into the queue.
#[tokio::test]
async fn v0_fixture_keeps_its_dead_letters() {
    let dir = fixture_copy();
    let store = open(dir.path());
    let letters = store.dead_letters().await.expect("list");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].email, "ghost@example.com");
    assert_eq!(letters[0].events.len(), 1);
    assert_eq!(letters[0].events[0]["messageId"], json!("fx-ghost-1"));

    assert_eq!(store.replay_dead_letters(None, 1).await.expect("replay"), 1);
    assert!(store.dead_letters().await.expect("list").is_empty());
    let ghost = store
        .job("ghost@example.com")
        .await
        .expect("read")
        .expect("the replayed job");
    assert_eq!(ghost.events[0].message_id, "fx-ghost-1");
    assert_eq!(ghost.events[0].traits.get("plan"), Some(&json!("Basic")));
}

/// A store from a newer release is refused by the relay and by tools, and left as it was.
#[test]
fn newer_store_is_refused_untouched() {
    let known = migrate::latest(MIGRATIONS);
    let found = known + 6;
    for shared in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        store_at_version(dir.path(), found);
        let before = std::fs::read(dir.path().join("relay.db")).expect("read");
        let opened = if shared {
            SqliteStore::open_shared(dir.path())
        } else {
            SqliteStore::open(dir.path(), StoreOptions::default())
        };
        let Err(err) = opened else {
            panic!("a newer store was opened (shared: {shared})");
        };
        assert!(
            matches!(err, StoreError::NewerSchema { found: f, known: k, .. } if f == found && k == known),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the store in {} was written by a newer prosperstack-relay (schema version \
                 {found}; this release knows up to {known}): upgrade the relay, or point \
                 RELAY_DATA_DIR elsewhere",
                dir.path().display()
            )
        );
        let after = std::fs::read(dir.path().join("relay.db")).expect("read");
        assert!(before == after, "the file changed (shared: {shared})");
        assert_eq!(stored_version(dir.path()), found);
    }
}

/// A tool does not upgrade an old store (a relay of the old release may be running on it):
/// it refuses it untouched; once the relay has upgraded it, the tool opens it.
#[tokio::test]
async fn shared_open_leaves_upgrading_to_the_relay() {
    let dir = fixture_copy();
    let before = std::fs::read(dir.path().join("relay.db")).expect("read");
    let Err(err) = SqliteStore::open_shared(dir.path()) else {
        panic!("a tool opened a store it would have to upgrade");
    };
    assert!(
        matches!(err, StoreError::OlderSchema { found: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("prosperstack-relay serve"),
        "{err}"
    );
    let after = std::fs::read(dir.path().join("relay.db")).expect("read");
    assert!(before == after, "the file changed");
    assert_eq!(stored_version(dir.path()), 0);

    let _relay = open(dir.path());
    let tool = SqliteStore::open_shared(dir.path()).expect("a current store opens");
    assert_eq!(tool.dead_letters().await.expect("list").len(), 1);
}

/// A negative user_version was not written by the relay: refused as corrupt, not as newer.
#[test]
fn negative_version_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Connection::open(dir.path().join("relay.db")).expect("create");
    c.execute_batch("PRAGMA user_version = -3;").expect("set");
    assert!(matches!(version(&c), Err(StoreError::Corrupt(_))));
}

/// Version 2 makes emails keys: rows of a version-1 store that differ only in case merge into
/// one job (earliest schedule), one applied timestamp per property (the latest), and events
/// keep the spelling they were sent with for look-ups.
#[tokio::test]
async fn v2_merges_emails_that_differ_only_in_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Connection::open(dir.path().join("relay.db")).expect("create");
    apply(&mut c, "test", &MIGRATIONS[..1]).expect("version 1");
    c.execute_batch(
        "INSERT INTO events (message_id, email, ts_ms, received_ms, traits, raw)
             VALUES ('m1', 'Ann@X.io', 1, 1, '{}', '{}'), ('m2', 'ann@x.io', 2, 2, '{}', '{}');
         INSERT INTO jobs (email, next_attempt_ms, first_queued_ms, attempts)
             VALUES ('Ann@X.io', 50, 1, 2), ('ann@x.io', 10, 2, 0);
         INSERT INTO applied (email, key, ts_ms, updated_ms)
             VALUES ('Ann@X.io', 'plan', 7, 1), ('ann@x.io', 'plan', 9, 1);",
    )
    .expect("version-1 rows");
    drop(c);
    let store = open(dir.path());
    let jobs = store.due_jobs(LATER, 10).await.expect("due jobs");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(job.email, "ann@x.io");
    assert_eq!(job.events.len(), 2);
    assert_eq!(job.spellings, vec!["Ann@X.io".to_owned()]);
    assert_eq!(job.applied.get("plan"), Some(&9));
    assert_eq!(job.first_queued_ms, 1);
    assert_eq!(store.due_jobs(10, 10).await.expect("due at 10").len(), 1);
}
