//! The store contract, as tests: one suite, run against every backend.
//!
//! In: a [`Backend`](backends::Backend) that opens a fresh store (SQLite: a temporary directory;
//! PostgreSQL: a schema of its own in the database `RELAY_TEST_DATABASE_URL` names, dropped
//! afterwards). Out: one test per case and backend, named `…::<case>::sqlite::<test>` and
//! `…::<case>::postgres::<test>`.
//! Stays true: every case is written once, against the `Store` trait only; what is particular
//! to one backend (SQLite's file and directory lock, PostgreSQL's replicas) is tested beside
//! that backend or in [`postgres_only`]. Without `RELAY_TEST_DATABASE_URL` the PostgreSQL tests
//! pass after saying once, on stderr, that they were skipped; with it set and the server not
//! answering, they fail.

/// Runs each named case (an `async fn(&impl Backend)` of the invoking module) on each backend.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&crate::store::contract_tests::backends::Sqlite::new()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let backend = crate::store::contract_tests::backends::Postgres::new().await;
                    if let Some(backend) = backend {
                        super::$case(&backend).await;
                    }
                }
            )*
        }
    };
}

pub(super) mod backends;
mod lanes;
mod lease;
mod postgres_only;
mod queue;
mod schema;
pub(super) mod support;
