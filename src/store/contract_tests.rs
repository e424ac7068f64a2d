//! The store contract, as tests: one suite, run against every backend.
//!
//! In: a [`Backend`](backends::Backend) that opens a fresh store (SQLite: a temporary
//! directory). Out: one test per case and backend, named `…::<case>::sqlite::<test>`.
//! Stays true: every case is written once, against the `Store` trait only; what is particular
//! to one backend (SQLite's file and directory lock) is tested beside that backend.

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
    };
}

mod backends;
mod lease;
mod queue;
mod schema;
mod support;
