//! The lanes' contract: imported (background) jobs are listed after every due live one, a live
//! event makes its email's job live, and what is left after the live events are delivered goes
//! back to the background.

use super::backends::Backend;
use super::support::{delivered, deliverer, finish, identify};
use crate::store::{Incoming, Lane, LaneStats, Store, StoreOptions};

contract!(
    live_jobs_are_listed_before_imported_ones,
    a_live_event_makes_its_job_live,
    imported_events_left_behind_go_back_to_the_background,
);

fn imported(message_id: &str, email: &str, ts: i64) -> Incoming {
    Incoming {
        lane: Lane::Background,
        ..identify(message_id, None, Some(email), ts)
    }
}

/// Three imported jobs queued first, then a live one: the live one is listed first, by both
/// listings, and `live_due` says so; the imported ones follow in their own order.
async fn live_jobs_are_listed_before_imported_ones(b: &impl Backend) {
    let s = b.open(StoreOptions::default()).await.expect("open");
    let backlog: Vec<Incoming> = (0..3)
        .map(|i| imported(&format!("i{i}"), &format!("old{i}@x.io"), 1))
        .collect();
    s.ingest(backlog, 10).await.expect("ingest");
    assert!(!s.live_due(100).await.expect("live due"));
    s.ingest(vec![identify("live", None, Some("new@x.io"), 2)], 50)
        .await
        .expect("ingest");
    assert!(!s.live_due(49).await.expect("not yet due"));
    assert!(s.live_due(100).await.expect("live due"));
    let emails = s.due_emails(100, 10).await.expect("due");
    assert_eq!(emails, ["new@x.io", "old0@x.io", "old1@x.io", "old2@x.io"]);
    let jobs = s.due_jobs(100, 2).await.expect("due jobs");
    let lanes: Vec<(&str, Lane)> = jobs.iter().map(|j| (j.email.as_str(), j.lane)).collect();
    assert_eq!(
        lanes,
        [("new@x.io", Lane::Live), ("old0@x.io", Lane::Background)]
    );
    let counted = s.lane_stats(Lane::Background).await.expect("lane stats");
    assert_eq!(
        counted,
        LaneStats {
            due: 3,
            waiting: 0,
            retrying: 0
        }
    );
    assert_eq!(s.lane_stats(Lane::Live).await.expect("lane stats").due, 1);
}

/// A live event for an email whose imported job is queued makes that job live.
async fn a_live_event_makes_its_job_live(b: &impl Backend) {
    let s = b.open(StoreOptions::default()).await.expect("open");
    s.ingest(
        vec![imported("i1", "a@x.io", 1), imported("i2", "b@x.io", 1)],
        10,
    )
    .await
    .expect("ingest");
    s.ingest(vec![identify("live", None, Some("B@x.io"), 2)], 20)
        .await
        .expect("ingest");
    let job = s.job("b@x.io").await.expect("job").expect("queued");
    assert_eq!((job.lane, job.events.len()), (Lane::Live, 2));
    assert_eq!(
        s.due_emails(100, 10).await.expect("due"),
        ["b@x.io", "a@x.io"]
    );
    // An imported event after a live one leaves the job live.
    s.ingest(vec![imported("i3", "b@x.io", 3)], 30)
        .await
        .expect("ingest");
    assert_eq!(
        s.job("b@x.io").await.expect("job").expect("queued").lane,
        Lane::Live
    );
}

/// Once a job's live events are delivered, imported ones that arrived meanwhile wait in the
/// background again; once everything is delivered, the lane's figures are empty.
async fn imported_events_left_behind_go_back_to_the_background(b: &impl Backend) {
    let s = b.open(StoreOptions::default()).await.expect("open");
    let lease = deliverer(&s).await;
    s.ingest(vec![identify("live", None, Some("a@x.io"), 1)], 10)
        .await
        .expect("ingest");
    let live = s.job("a@x.io").await.expect("job").expect("queued");
    s.ingest(vec![imported("i1", "a@x.io", 2)], 20)
        .await
        .expect("ingest");
    let up_to = live.up_to_event_id();
    finish(&s, &lease, "a@x.io", up_to, delivered(&[("plan", 1)]), 30).await;
    let left = s.job("a@x.io").await.expect("job").expect("still queued");
    assert_eq!((left.lane, left.events.len()), (Lane::Background, 1));
    assert!(!s.live_due(1_000).await.expect("live due"));
    let up_to = left.up_to_event_id();
    finish(&s, &lease, "a@x.io", up_to, delivered(&[("plan", 2)]), 40).await;
    let counted = s.lane_stats(Lane::Background).await.expect("lane stats");
    assert_eq!(counted, LaneStats::default());
}
