//! SQLite's own: the file, the directory lock, and a tool sharing the file with the relay.
//! The queue and lease contract both backends keep is in `store::contract_tests`.

use std::time::Duration;

use serde_json::json;

use super::*;

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    (dir, store)
}

fn identify(message_id: &str, email: &str) -> Incoming {
    let v = json!({"type": "identify", "messageId": message_id, "userId": "u1",
                   "traits": {"plan": "pro", "email": email}});
    Incoming::live(
        crate::identify::normalise(&v, 0).expect("valid"),
        v.to_string(),
    )
}

/// A second store on the same directory is refused while the first is open.
#[tokio::test]
async fn data_dir_is_locked() {
    let (dir, s) = open();
    assert!(SqliteStore::open(dir.path(), StoreOptions::default()).is_err());
    s.ping(1).await.expect("ping");
}

/// Events survive closing and reopening the store.
#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
        s.ingest(vec![identify("m1", "a@x.io")], 5)
            .await
            .expect("ingest");
    }
    // The writer thread releases the lock once every handle is gone.
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(s) = SqliteStore::open(dir.path(), StoreOptions::default()) {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = reopened.expect("reopened");
    assert_eq!(s.stats().await.expect("stats").events, 1);
}

/// A tool opening the relay's file (`open_shared`, as `import` will) sees the relay's lease:
/// it cannot take it while the relay holds it, and takes it at once when the relay releases it.
#[tokio::test]
async fn a_tool_on_the_same_file_shares_the_lease() {
    let (dir, relay) = open();
    let tool = SqliteStore::open_shared(dir.path()).expect("open shared");
    let hour = Duration::from_secs(3600);
    let held = relay
        .acquire_lease("relay", hour, 10)
        .await
        .expect("acquire");
    let held = held.expect("granted");
    assert!(tool
        .acquire_lease("import", hour, 11)
        .await
        .expect("tool")
        .is_none());
    assert!(relay.release_lease(&held, 12).await.expect("release"));
    let taken = tool.acquire_lease("import", hour, 13).await.expect("tool");
    assert!(taken.expect("granted").epoch() > held.epoch());
}
