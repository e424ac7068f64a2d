//! The schema's contract: a new store is at the latest version, opening it again changes
//! nothing, and a store written by a newer release is refused untouched.

use super::backends::Backend;
use super::support::identify;
use crate::store::{IngestOutcome, Store, StoreError, StoreOptions};

contract!(
    fresh_store_is_at_the_latest_version,
    reopening_a_current_store_changes_nothing,
    newer_store_is_refused_untouched,
);

/// A new store is created at the latest version, empty.
async fn fresh_store_is_at_the_latest_version(b: &impl Backend) {
    let s = b.open(StoreOptions::default()).await.expect("open");
    assert_eq!(b.stored_version().await, b.latest());
    assert_eq!(s.stats().await.expect("stats").events, 0);
}

/// Opening a current store again applies nothing and keeps what it holds.
async fn reopening_a_current_store_changes_nothing(b: &impl Backend) {
    let first = b.open(StoreOptions::default()).await.expect("open");
    let event = || identify("m1", Some("u1"), Some("a@x.io"), 1);
    first.ingest(vec![event()], 5).await.expect("ingest");
    drop(first);
    let again = b.open(StoreOptions::default()).await.expect("reopen");
    assert_eq!(b.stored_version().await, b.latest());
    assert_eq!(again.stats().await.expect("stats").events, 1);
    let duplicate = again.ingest(vec![event()], 6).await.expect("ingest");
    assert_eq!(duplicate, [IngestOutcome::Duplicate]);
}

/// A store at a version beyond this release's is refused, naming both versions, and keeps its
/// version.
async fn newer_store_is_refused_untouched(b: &impl Backend) {
    drop(b.open(StoreOptions::default()).await.expect("open"));
    let found = b.latest() + 6;
    b.set_version(found).await;
    let Err(err) = b.open(StoreOptions::default()).await else {
        panic!("a newer store was opened");
    };
    assert!(
        matches!(err, StoreError::NewerSchema { found: f, known: k, .. } if f == found && k == b.latest()),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade the relay"), "{err}");
    assert_eq!(b.stored_version().await, found);
}
