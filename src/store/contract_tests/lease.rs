//! The lease's contract: one holder at a time, a token that grows with each new tenure, writes
//! refused once the tenure is over, release handing over at once, the budget handed over.
//!
//! Times here are real (SQLite judges expiry by the `now_ms` it is given, PostgreSQL by its own
//! clock): a lease that must lapse is given a TTL of a few tens of milliseconds and waited out
//! with room to spare; one that must not lapse is given an hour.

use std::time::Duration;

use super::backends::Backend;
use super::support::{delivered, identify, wall_ms};
use crate::store::{BudgetSnapshot, JobResult, Store, StoreError, StoreOptions};

contract!(
    one_holder_at_a_time_until_release,
    lapsed_lease_passes_with_a_higher_token,
    stale_token_cannot_finish,
    lapsed_token_cannot_write_even_if_unclaimed,
    budget_is_handed_over_with_the_lease,
);

const HOUR: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(50);

/// Waits until a lease given [`SHORT`] has surely lapsed, on any clock.
async fn outlive_short_lease() {
    tokio::time::sleep(SHORT * 4).await;
}

async fn open<B: Backend>(b: &B) -> B::Store {
    b.open(StoreOptions::default()).await.expect("open")
}

/// The holder renews under the same token; no one else gets the lease until it is released,
/// then the next holder gets it at once under a higher token, and the old one cannot release
/// it again.
async fn one_holder_at_a_time_until_release(b: &impl Backend) {
    let s = open(b).await;
    let a = s
        .acquire_lease("a", HOUR, wall_ms())
        .await
        .expect("acquire");
    let a = a.expect("a free lease is granted");
    assert_eq!(a.holder(), "a");
    assert!(s
        .acquire_lease("b", HOUR, wall_ms())
        .await
        .expect("b")
        .is_none());
    let renewed = s.acquire_lease("a", HOUR, wall_ms()).await.expect("renew");
    assert_eq!(renewed.as_ref(), Some(&a));
    assert!(s.release_lease(&a, wall_ms()).await.expect("release"));
    let b_lease = s.acquire_lease("b", HOUR, wall_ms()).await.expect("b");
    let b_lease = b_lease.expect("a released lease is taken at once");
    assert!(b_lease.epoch() > a.epoch());
    assert!(!s.release_lease(&a, wall_ms()).await.expect("release"));
    assert!(s
        .acquire_lease("a", HOUR, wall_ms())
        .await
        .expect("a")
        .is_none());
}

/// A lease not renewed within its TTL can be taken by another holder, under a higher token.
async fn lapsed_lease_passes_with_a_higher_token(b: &impl Backend) {
    let s = open(b).await;
    let a = s.acquire_lease("a", SHORT, wall_ms()).await.expect("a");
    let a = a.expect("granted");
    outlive_short_lease().await;
    let b_lease = s.acquire_lease("b", HOUR, wall_ms()).await.expect("b");
    let b_lease = b_lease.expect("a lapsed lease is taken");
    assert!(b_lease.epoch() > a.epoch());
    assert!(s
        .acquire_lease("a", HOUR, wall_ms())
        .await
        .expect("a")
        .is_none());
}

/// A deliverer whose lease passed to another cannot record results: nothing changes, and the
/// new holder records them.
async fn stale_token_cannot_finish(b: &impl Backend) {
    let s = open(b).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    let old = s.acquire_lease("old", SHORT, wall_ms()).await.expect("old");
    let old = old.expect("granted");
    let job = s.job("a@x.io").await.expect("read").expect("job");
    let result = JobResult {
        email: job.email.clone(),
        up_to_event_id: job.up_to_event_id(),
        outcome: delivered(&[("plan", 1)]),
    };
    outlive_short_lease().await;
    let new = s.acquire_lease("new", HOUR, wall_ms()).await.expect("new");
    let new = new.expect("granted");
    let refused = s.finish(&old, vec![result.clone()], wall_ms()).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let still = s.job("a@x.io").await.expect("read").expect("still queued");
    assert_eq!(still.events.len(), 1);
    assert!(still.applied.is_empty());
    s.finish(&new, vec![result], wall_ms())
        .await
        .expect("finish");
    assert!(s.job("a@x.io").await.expect("read").is_none());
}

/// A lapsed tenure is over even if no one took the lease: its writes are refused, and taking
/// the lease again starts a new tenure under a higher token.
async fn lapsed_token_cannot_write_even_if_unclaimed(b: &impl Backend) {
    let s = open(b).await;
    s.ingest(vec![identify("m1", Some("u1"), Some("a@x.io"), 1)], 5)
        .await
        .expect("ingest");
    let first = s.acquire_lease("a", SHORT, wall_ms()).await.expect("a");
    let first = first.expect("granted");
    outlive_short_lease().await;
    let result = JobResult {
        email: "a@x.io".into(),
        up_to_event_id: i64::MAX,
        outcome: delivered(&[]),
    };
    let refused = s.finish(&first, vec![result.clone()], wall_ms()).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let budget = BudgetSnapshot {
        remaining: 1,
        reset_in: HOUR,
    };
    let refused = s.save_budget(&first, budget, wall_ms()).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let second = s.acquire_lease("a", HOUR, wall_ms()).await.expect("again");
    let second = second.expect("granted");
    assert!(second.epoch() > first.epoch());
    s.finish(&second, vec![result], wall_ms())
        .await
        .expect("finish");
}

/// The budget the old holder saved reaches the next holder, with its reset still ahead; a stale
/// holder cannot overwrite it; once its window has passed it is gone.
async fn budget_is_handed_over_with_the_lease(b: &impl Backend) {
    let s = open(b).await;
    assert_eq!(s.load_budget(wall_ms()).await.expect("load"), None);
    let a = s.acquire_lease("a", HOUR, wall_ms()).await.expect("a");
    let a = a.expect("granted");
    let spent = BudgetSnapshot {
        remaining: 40,
        reset_in: Duration::from_secs(30),
    };
    s.save_budget(&a, spent, wall_ms()).await.expect("save");
    assert!(s.release_lease(&a, wall_ms()).await.expect("release"));
    let b_lease = s.acquire_lease("b", HOUR, wall_ms()).await.expect("b");
    let b_lease = b_lease.expect("granted");
    let loaded = s.load_budget(wall_ms()).await.expect("load");
    let loaded = loaded.expect("the old holder's budget");
    assert_eq!(loaded.remaining, 40);
    assert!(loaded.reset_in > Duration::from_secs(20) && loaded.reset_in <= spent.reset_in);
    let stale = s.save_budget(&a, spent, wall_ms()).await;
    assert!(matches!(stale, Err(StoreError::LeaseLost)), "{stale:?}");
    let short = BudgetSnapshot {
        remaining: 0,
        reset_in: SHORT,
    };
    s.save_budget(&b_lease, short, wall_ms())
        .await
        .expect("save");
    outlive_short_lease().await;
    assert_eq!(s.load_budget(wall_ms()).await.expect("load"), None);
}
