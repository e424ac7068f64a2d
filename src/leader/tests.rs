//! The leader task against a real (SQLite) store: one holder at a time, handover on release,
//! a lost tenure stops delivery, a new leader starts from the budget handed over.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::TokioClock;
use crate::store::{BudgetSnapshot, SqliteStore, StoreOptions};

const TTL: Duration = Duration::from_secs(30);

fn task(store: Arc<dyn Store>, holder: &str) -> LeaderTask {
    let clock = TokioClock::shared();
    LeaderTask {
        store,
        leadership: Leadership::new(holder.to_owned(), TTL, clock.clone()),
        budget: Arc::new(Budget::new(100, Duration::from_secs(60), clock)),
        metrics: Arc::new(Metrics::new()),
    }
}

fn stores() -> (tempfile::TempDir, Arc<dyn Store>, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = SqliteStore::open(dir.path(), StoreOptions::default()).expect("open");
    let second = SqliteStore::open_shared(dir.path()).expect("open shared");
    (dir, Arc::new(first), Arc::new(second))
}

/// The first to ask leads; the other waits; a release hands over at once, with a new epoch.
#[tokio::test]
async fn one_leader_and_handover_on_release() {
    let (_dir, a_store, b_store) = stores();
    let (a, b) = (task(a_store, "a"), task(b_store, "b"));
    a.renew().await;
    b.renew().await;
    let first = a.leadership.current().expect("a leads");
    assert!(b.leadership.current().is_none());
    a.renew().await;
    assert_eq!(
        a.leadership.current(),
        Some(first.clone()),
        "a renewal keeps the epoch"
    );

    a.release().await;
    assert!(a.leadership.current().is_none());
    b.renew().await;
    let second = b.leadership.current().expect("b leads after the release");
    assert!(second.epoch() > first.epoch());
    a.renew().await;
    assert!(a.leadership.current().is_none());
}

/// A write refused under a lease ends that tenure for delivery until a renewal asks again.
#[tokio::test]
async fn lost_stops_delivery_until_renewed() {
    let (_dir, store, _) = stores();
    let a = task(store, "a");
    a.renew().await;
    let lease = a.leadership.current().expect("a leads");
    a.leadership.lost(&lease);
    assert!(a.leadership.current().is_none());
    a.renew().await;
    assert!(a.leadership.current().is_some());
}

/// What the leader saved of the window seeds the next leader's budget.
#[tokio::test]
async fn new_leader_starts_from_the_saved_budget() {
    let (_dir, a_store, b_store) = stores();
    let (a, b) = (task(a_store, "a"), task(b_store, "b"));
    a.renew().await;
    a.budget.observe(Some(7), Some(Duration::from_secs(40)));
    a.save_budget().await;
    a.release().await;
    b.renew().await;
    assert!(b.leadership.current().is_some());
    let seeded: BudgetSnapshot = b.budget.snapshot();
    assert!(seeded.remaining <= 6, "{seeded:?}");
    assert!(seeded.reset_in <= Duration::from_secs(40), "{seeded:?}");
}
