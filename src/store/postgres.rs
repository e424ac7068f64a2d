//! The PostgreSQL implementation of [`Store`], for several replicas sharing one database: every
//! replica ingests, the holder of the lease delivers.
//!
//! In: a connection URL (`postgres://user:password@host:port/database`, or `host=… user=…`; a
//! schema of its own with `options=-csearch_path%3Dname`) and [`StoreOptions`]. Out: the
//! contract of [`Store`], kept with any number of handles on any number of replicas.
//!
//! How, when several processes write at once (details in each submodule's opening):
//! - **Group commit** (`writer`): one task per handle runs every waiting ingest in one
//!   transaction on one pooled connection, a savepoint each, and answers after COMMIT. Other
//!   calls run on pooled connections, each in a transaction of its own.
//! - **Dedupe across replicas** (`queue`): `seen.message_id` is the primary key; an id another
//!   replica inserted but has not committed makes the insert wait for that commit and then
//!   answer duplicate. Two groups claiming crossed ids may deadlock: the loser is run again.
//! - **Queue order** (`queue`): one email's events take their ids in commit order, so
//!   `finish`'s "up to `up_to_event_id`" covers exactly what delivery read.
//! - **Migrations** (`schema`): a one-row version table; each step with its version in one
//!   transaction under a per-schema advisory lock.
//! - **Lease** (`lease`): one row, expiry by the server's clock, writes fenced by `FOR SHARE`.
//!
//! Differences from SQLite, all within the contract:
//! - A COMMIT is as durable as the server's `synchronous_commit` makes it (a warning is logged
//!   at connect when it is `off`).
//! - Lease and budget times are the server's clock; their `now_ms` arguments are not used.
//! - PostgreSQL text cannot hold NUL: one in an id, email, property key or error message is
//!   stored as U+FFFD. JSON keeps it escaped, so traits and raw events are exact.
//! - JSON is kept as `text`, as the relay wrote it: `jsonb` would refuse `\u0000`, reorder keys
//!   and rewrite numbers, and nothing queries inside it.
//! - No TLS yet: a URL asking for `sslmode=require` is refused.
//! - Timeouts (connect, waiting for a pooled connection) run on tokio's clock: under a paused
//!   test clock they fire at once, so tests of this store run in real time.

use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::codec::Encoded;
use super::{
    BudgetSnapshot, DeadLetter, Incoming, IngestOutcome, Job, JobResult, Lane, LaneStats, Lease,
    QueueStats, SavedStatus, Store, StoreError, StoreOptions,
};
use crate::clock::millis;

mod error;
mod import;
mod lease;
mod queue;
mod read;
mod schema;
mod writer;

/// The schema's steps, for the contract's schema cases.
#[cfg(test)]
pub(super) use schema::MIGRATIONS;

/// Connections per handle: the writer's, the deliverer's, reads and probes.
const POOL_SIZE: usize = 8;

/// How long connecting, or waiting for a free pooled connection, may take before the store
/// answers [`StoreError::Unreachable`] (ingest then answers 503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The setting a URL comes from, named in refusals.
const URL_SETTING: &str = "RELAY_DATABASE_URL";

/// Handle to the store; cheap to clone, all clones share one pool and one writer.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    writes: mpsc::UnboundedSender<writer::Write>,
    options: StoreOptions,
}

impl PostgresStore {
    /// Connects to the store at `url` as the relay does at start: applies the migrations it
    /// lacks (one replica at a time), refuses a newer one untouched.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<PostgresStore, StoreError> {
        Self::open(parse_url(url)?, options, true).await
    }

    /// Connects for a tool beside running replicas: never changes the schema, and refuses a
    /// store not at exactly this release's version.
    pub async fn connect_shared(url: &str) -> Result<PostgresStore, StoreError> {
        Self::open(parse_url(url)?, StoreOptions::default(), false).await
    }

    /// `may_upgrade`: the relay, which brings the schema to the latest version.
    pub(crate) async fn open(
        mut config: tokio_postgres::Config,
        options: StoreOptions,
        may_upgrade: bool,
    ) -> Result<PostgresStore, StoreError> {
        let location = error::location(&config);
        if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::DatabaseUrl {
                setting: URL_SETTING,
                reason: NO_TLS.into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("prosperstack-relay");
        }
        let pool = pool(config)?;
        let mut client = pool.get().await?;
        warn_unless_durable(&client, &location).await?;
        if may_upgrade {
            schema::upgrade(&mut client, &location).await?;
        } else {
            schema::check(&client, &location).await?;
        }
        drop(client);
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(pool.clone(), options.clone(), queue));
        Ok(PostgresStore {
            pool,
            writes,
            options,
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Whether `url` is one this store can connect with (not connecting): the reason if not, never
/// quoting the URL.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let config = parse_url(url).map_err(|e| match e {
        StoreError::DatabaseUrl { reason, .. } => reason,
        other => other.to_string(),
    })?;
    if config.get_ssl_mode() == SslMode::Require {
        return Err(NO_TLS.into());
    }
    Ok(())
}

/// `url` as messages show it: user, hosts, port and database; never the password.
pub(crate) fn display_location(url: &str) -> String {
    parse_url(url).map_or_else(
        |_| "(an unparsable PostgreSQL URL)".to_owned(),
        |config| error::location(&config),
    )
}

const NO_TLS: &str = "sslmode=require is not supported yet (this build has no TLS)";

fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    // The parser's messages name the option or position at fault, never the URL itself.
    url.parse()
        .map_err(|e: tokio_postgres::Error| StoreError::DatabaseUrl {
            setting: URL_SETTING,
            reason: error::describe(&e),
        })
}

fn pool(config: tokio_postgres::Config) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::DatabaseUrl {
            setting: URL_SETTING,
            reason: e.to_string(),
        })
}

/// 2xx means committed: say so loudly if the server would lose commits in a crash.
async fn warn_unless_durable(client: &Object, location: &str) -> Result<(), StoreError> {
    let setting: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .try_get(0)?;
    if setting == "off" {
        tracing::warn!(
            location,
            "synchronous_commit is off: a server crash can lose events already acknowledged"
        );
    }
    Ok(())
}

/// Text as PostgreSQL can hold it: NUL, which it cannot, becomes U+FFFD.
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Runs a statement (prepared once per connection) and answers the rows it changed.
async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

async fn one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_one(&statement, params).await?)
}

/// Commits `tx`, reporting a failure as the commit's (the outcome of a COMMIT whose answer was
/// lost is unknown, which is what [`StoreError::Commit`] tells the caller).
async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.commit()
        .await
        .map_err(|e| StoreError::Commit(StoreError::from(e).to_string()))
}

/// Runs `$body` with `$tx` bound to a read-only REPEATABLE READ transaction: one snapshot.
macro_rules! snapshot {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut client = $store.client().await?;
        let $tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let value = $body;
        $tx.commit().await?;
        Ok(value)
    }};
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn ingest(
        &self,
        events: Vec<Incoming>,
        now_ms: i64,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let encoded = Encoded::all(&events)?;
        let (reply, answer) = oneshot::channel();
        let write = writer::Write {
            events,
            encoded,
            now_ms,
            reply,
        };
        self.writes.send(write).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn due_jobs(&self, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        snapshot!(self, |tx| read::due_jobs(&tx, now_ms, limit).await?)
    }

    async fn due_emails(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        snapshot!(self, |tx| read::due_emails(&tx, now_ms, limit).await?)
    }

    async fn live_due(&self, now_ms: i64) -> Result<bool, StoreError> {
        snapshot!(self, |tx| read::live_due(&tx, now_ms).await?)
    }

    async fn lane_stats(&self, lane: Lane) -> Result<LaneStats, StoreError> {
        snapshot!(self, |tx| read::lane_stats(&tx, lane).await?)
    }

    async fn job(&self, email: &str) -> Result<Option<Job>, StoreError> {
        snapshot!(self, |tx| read::job(&tx, email).await?)
    }

    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        snapshot!(self, |tx| read::next_due_ms(&tx).await?)
    }

    async fn finish(
        &self,
        lease: &Lease,
        results: Vec<JobResult>,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lease::check(&tx, lease).await?;
        let dead_letters = queue::finish(&tx, &self.options, results, now_ms).await?;
        commit(tx).await?;
        Ok(dead_letters)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        snapshot!(self, |tx| read::stats(&tx).await?)
    }

    async fn ping(&self, at: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let read: i64 = one(
            &client,
            "INSERT INTO health (id, at_ms) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms RETURNING at_ms",
            &[&at],
        )
        .await?
        .try_get(0)?;
        if read == at {
            Ok(())
        } else {
            Err(StoreError::Corrupt("health row did not read back".into()))
        }
    }

    async fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seen = exec(&tx, "DELETE FROM seen WHERE seen_ms < $1", &[&before_ms]).await?;
        let applied = exec(
            &tx,
            "DELETE FROM applied WHERE updated_ms < $1",
            &[&before_ms],
        )
        .await?;
        commit(tx).await?;
        Ok(seen + applied)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        snapshot!(self, |tx| read::dead_letters(&tx).await?)
    }

    async fn replay_dead_letters(
        &self,
        ids: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let replayed = queue::replay_dead_letters(&tx, &self.options, ids, now_ms).await?;
        commit(tx).await?;
        Ok(replayed)
    }

    async fn purge_dead_letters(&self, created_before_ms: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let purged = exec(
            &client,
            "DELETE FROM dead_letters WHERE created_ms < $1",
            &[&created_before_ms],
        )
        .await?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    async fn save_status(
        &self,
        replica: String,
        body: String,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        exec(
            &tx,
            "INSERT INTO status (replica, saved_ms, body) VALUES ($1, $2, $3)
             ON CONFLICT (replica) DO UPDATE SET saved_ms = excluded.saved_ms,
             body = excluded.body",
            &[&text(&replica), &now_ms, &text(&body)],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM status WHERE saved_ms < $1",
            &[&forget_before_ms],
        )
        .await?;
        commit(tx).await
    }

    async fn saved_statuses(&self) -> Result<Vec<SavedStatus>, StoreError> {
        let client = self.client().await?;
        rows(
            &client,
            "SELECT replica, saved_ms, body FROM status ORDER BY saved_ms DESC",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(SavedStatus {
                replica: r.try_get(0)?,
                saved_ms: r.try_get(1)?,
                body: r.try_get(2)?,
            })
        })
        .collect()
    }

    async fn acquire_lease(
        &self,
        holder: &str,
        ttl: Duration,
        _now_ms: i64,
    ) -> Result<Option<Lease>, StoreError> {
        lease::acquire(&self.client().await?, holder, millis(ttl)).await
    }

    async fn release_lease(&self, lease: &Lease, _now_ms: i64) -> Result<bool, StoreError> {
        lease::release(&self.client().await?, lease).await
    }

    async fn save_budget(
        &self,
        lease: &Lease,
        budget: BudgetSnapshot,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        lease::save_budget(&self.client().await?, lease, budget).await
    }

    async fn load_budget(&self, _now_ms: i64) -> Result<Option<BudgetSnapshot>, StoreError> {
        lease::load_budget(&self.client().await?).await
    }
}
