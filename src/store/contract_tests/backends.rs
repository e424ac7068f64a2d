//! The backends the contract runs against, each a fresh store of its own per test.

use std::time::Duration;

use crate::store::{SqliteStore, Store, StoreError, StoreOptions};

/// A place for one store, and what the schema cases need to look at it from outside.
pub trait Backend {
    type Store: Store + Clone;
    /// Opens the store as the relay does (upgrading it). Opened again, the same store.
    async fn open(&self, options: StoreOptions) -> Result<Self::Store, StoreError>;
    /// The schema version recorded in the store, read without the store's code.
    async fn stored_version(&self) -> u32;
    /// Records `version` as the store's, as a later release would.
    async fn set_version(&self, version: u32);
    /// The version this release's migrations end at.
    fn latest(&self) -> u32;
}

/// A SQLite store in a temporary directory.
pub struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    pub fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("relay.db")).expect("open relay.db")
    }
}

impl Backend for Sqlite {
    type Store = SqliteStore;

    async fn open(&self, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        // A store dropped just before is released by its writer thread a moment later.
        for _ in 0..250 {
            match SqliteStore::open(self.dir.path(), options.clone()) {
                Err(StoreError::DataDir { reason, .. }) if reason.contains("relay.lock") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                opened => return opened,
            }
        }
        SqliteStore::open(self.dir.path(), options)
    }

    async fn stored_version(&self) -> u32 {
        let v: i64 = self
            .db()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version");
        u32::try_from(v).expect("a relay's version")
    }

    async fn set_version(&self, version: u32) {
        self.db()
            .execute_batch(&format!("PRAGMA user_version = {version}"))
            .expect("set user_version");
    }

    fn latest(&self) -> u32 {
        crate::store::migrate::latest(crate::store::sqlite::MIGRATIONS)
    }
}
