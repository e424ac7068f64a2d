//! The backends the contract runs against, each a fresh store of its own per test.

use std::io::Write as _;
use std::sync::Once;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::store::{PostgresStore, SqliteStore, Store, StoreError, StoreOptions};

/// The variable naming the PostgreSQL server the tests use (`.ci/run` sets it).
pub const DATABASE_URL_VAR: &str = "RELAY_TEST_DATABASE_URL";

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

/// A PostgreSQL store in a schema of its own, dropped when the test ends.
pub struct Postgres {
    /// The server as `RELAY_TEST_DATABASE_URL` names it (default schema).
    admin: tokio_postgres::Config,
    /// The same, with the test's schema first on the search path.
    pub config: tokio_postgres::Config,
    pub schema: String,
}

impl Postgres {
    /// A fresh schema, or `None` (once saying so on stderr) when no server is configured. A
    /// configured server that does not answer fails the test: CI must not skip silently.
    pub async fn new() -> Option<Postgres> {
        let url = std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty());
        let Some(url) = url else {
            say_skipped();
            return None;
        };
        let admin: tokio_postgres::Config = url
            .parse()
            .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is not a PostgreSQL URL: {e}"));
        let schema = format!("relay_test_{:016x}", rand::random::<u64>());
        let client = connect(&admin).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create the test's schema");
        let mut config = admin.clone();
        config.options(format!("-c search_path={schema}"));
        Some(Postgres {
            admin,
            config,
            schema,
        })
    }

    /// A connection outside the store's code, with the test's schema on its search path.
    pub async fn inspect(&self) -> tokio_postgres::Client {
        connect(&self.config).await
    }
}

impl Backend for Postgres {
    type Store = PostgresStore;

    async fn open(&self, options: StoreOptions) -> Result<PostgresStore, StoreError> {
        PostgresStore::open(self.config.clone(), options, true).await
    }

    async fn stored_version(&self) -> u32 {
        let row = self
            .inspect()
            .await
            .query_one("SELECT version FROM schema_version", &[])
            .await
            .expect("read the version");
        let v: i32 = row.get(0);
        u32::try_from(v).expect("a relay's version")
    }

    async fn set_version(&self, version: u32) {
        let version = i32::try_from(version).expect("a small version");
        self.inspect()
            .await
            .execute("UPDATE schema_version SET version = $1", &[&version])
            .await
            .expect("set the version");
    }

    fn latest(&self) -> u32 {
        crate::store::migrate::latest(crate::store::postgres::MIGRATIONS)
    }
}

impl Drop for Postgres {
    /// Drops the schema from a thread of its own (a test's runtime cannot be blocked on).
    fn drop(&mut self) {
        let (admin, schema) = (self.admin.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                connect(&admin)
                    .await
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                    ))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test schema {}",
                self.schema
            );
        }
    }
}

/// Connects outside the store's code; panics (failing the test) when the server is not there.
async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        let e = crate::store::StoreError::from(e);
        panic!("{DATABASE_URL_VAR} is set but the PostgreSQL server does not answer: {e}")
    });
    tokio::spawn(connection);
    client
}

/// Says once per test binary that the PostgreSQL cases were skipped. Written to the process's
/// stderr directly, past the test harness's capture, so `cargo test` shows it.
fn say_skipped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // One write, so the line is not cut by the harness's own output.
        let line = format!("skipped: PostgreSQL tests (set {DATABASE_URL_VAR})\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    });
}
