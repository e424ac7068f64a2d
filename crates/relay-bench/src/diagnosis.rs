//! Where an engage-sync run's requests above the floor went, and when.
//!
//! In: the sandbox's request log (time, kind, subscriber), the workload, and when each batch
//! was posted and acknowledged. Out: a [`Diagnosis`]: directory walks, look-ups during and after
//! ingest, repeat updates sorted by cause (an event posted after the subscriber's previous
//! update, or one the delivery round's snapshot of due jobs missed), and upstream pacing.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::engage_sync::{Floor, Posted, RelayRun};
use super::recorder::{Recorded, RequestKind};
use super::workload::{pair_of, Workload};

/// Where the requests above the floor went, and when.
#[derive(Debug, Default, Serialize)]
pub struct Diagnosis {
    /// Directory walks: (start, pages) in seconds since the first event was posted.
    pub walks: Vec<(f64, u64)>,
    pub subscribers_updated: usize,
    /// Updates beyond the first for a subscriber.
    pub repeat_updates: usize,
    /// …of which the subscriber had an event posted after its previous update.
    pub repeat_updates_after_late_event: usize,
    /// …of which every event of the subscriber had been acknowledged (so stored) before its
    /// previous update went out: the update was built from an older snapshot of its job.
    pub repeat_updates_from_stale_snapshot: usize,
    /// …of which went out while ingest was still running.
    pub repeat_updates_during_ingest: usize,
    /// …of which the previous update was among the first 200 updates of the run (delivery
    /// reads 200 due jobs at a time: the first round).
    pub repeat_updates_after_first_round: usize,
    /// When the previous updates of repeat-updated subscribers went out (min, max seconds).
    pub repeat_previous_update_secs: Option<(f64, f64)>,
    /// When the last event of each repeat-updated subscriber was acknowledged (min, max seconds).
    pub repeat_last_event_acked_secs: Option<(f64, f64)>,
    /// Updates to subscribers none of whose values change.
    pub updates_to_unchanged: usize,
    pub lookups_during_ingest: usize,
    pub lookups_after_ingest: usize,
    /// Longest pause between two upstream requests after the first one.
    pub longest_gap_secs: f64,
    pub longest_gap_at_secs: f64,
    /// Upstream requests per second of the run (from the first event posted).
    pub per_second: Vec<u64>,
}

/// Reads the request log against the ingest timeline.
pub fn diagnose(
    log: &[Recorded],
    workload: &Workload,
    batches: &[(Vec<usize>, String)],
    posted: &[Posted],
    ids: &HashMap<String, usize>,
    start: Duration,
    ingest_end: Duration,
) -> Diagnosis {
    let secs = |d: Duration| d.saturating_sub(start).as_secs_f64();
    let mut d = Diagnosis::default();
    // When each subscriber's change-bearing events were sent and acknowledged.
    let mut event_times: HashMap<usize, Vec<(Duration, Duration)>> = HashMap::new();
    for ((pairs, _), p) in batches.iter().zip(posted) {
        for &id in pairs {
            if !workload.preset[id] {
                event_times
                    .entry(pair_of(id).subscriber)
                    .or_default()
                    .push((p.sent, p.acked));
            }
        }
    }
    let mut updates: HashMap<usize, Vec<Duration>> = HashMap::new();
    let mut all_updates = Vec::new();
    let mut previous: Option<Duration> = None;
    for r in log {
        if let Some(prev) = previous {
            let gap = r.at.saturating_sub(prev).as_secs_f64();
            if gap > d.longest_gap_secs {
                d.longest_gap_secs = gap;
                d.longest_gap_at_secs = secs(prev);
            }
        }
        previous = Some(r.at);
        let second = secs(r.at) as usize;
        if d.per_second.len() <= second {
            d.per_second.resize(second + 1, 0);
        }
        d.per_second[second] += 1;
        match r.kind {
            RequestKind::ListPage if r.first_page => d.walks.push((secs(r.at), 1)),
            RequestKind::ListPage => {
                if let Some(w) = d.walks.last_mut() {
                    w.1 += 1;
                }
            }
            RequestKind::Lookup if r.at <= ingest_end => d.lookups_during_ingest += 1,
            RequestKind::Lookup => d.lookups_after_ingest += 1,
            RequestKind::Update => {
                all_updates.push(r.at);
                if let Some(&i) = r.subscriber.as_ref().and_then(|s| ids.get(s)) {
                    updates.entry(i).or_default().push(r.at);
                }
            }
            _ => {}
        }
    }
    d.subscribers_updated = updates.len();
    let first_round_end = all_updates.get(199).copied().unwrap_or(Duration::MAX);
    let widen = |range: &mut Option<(f64, f64)>, v: f64| {
        *range = Some(range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
    };
    for (subscriber, times) in &updates {
        let events = event_times.get(subscriber);
        if events.is_none() {
            d.updates_to_unchanged += times.len();
        }
        for pair in times.windows(2) {
            d.repeat_updates += 1;
            if events.is_some_and(|e| e.iter().any(|(sent, _)| *sent > pair[0])) {
                d.repeat_updates_after_late_event += 1;
            }
            if events.is_some_and(|e| e.iter().all(|(_, acked)| *acked <= pair[0])) {
                d.repeat_updates_from_stale_snapshot += 1;
            }
            if pair[1] <= ingest_end {
                d.repeat_updates_during_ingest += 1;
            }
            if pair[0] <= first_round_end {
                d.repeat_updates_after_first_round += 1;
            }
            widen(&mut d.repeat_previous_update_secs, secs(pair[0]));
            if let Some(last) = events.and_then(|e| e.iter().map(|(_, acked)| *acked).max()) {
                widen(&mut d.repeat_last_event_acked_secs, secs(last));
            }
        }
    }
    d
}

impl Diagnosis {
    /// Prints where the requests above the floor went.
    pub fn print(&self, relay: &RelayRun, floor: &Floor) {
        let d = self;
        let extra = relay.requests.total as i64 - floor.total as i64;
        println!("where the {extra} requests above the floor went:");
        let shown: Vec<String> = d
            .walks
            .iter()
            .take(10)
            .map(|(t, p)| format!("{p} pages at {t:.1} s"))
            .collect();
        let more = d.walks.len().saturating_sub(shown.len());
        println!(
            "  directory walks: {}: {}{}",
            d.walks.len(),
            shown.join(", "),
            if more > 0 {
                format!(", … {more} more (all in --json)")
            } else {
                String::new()
            }
        );
        let whole = floor.list_pages as u64;
        let partial = d.walks.iter().filter(|(_, p)| *p < whole).count();
        if partial > 0 {
            println!(
                "    {partial} walk(s) stopped before the directory's {whole} pages; each walk starts \
                 again at page 1"
            );
        }
        println!(
            "  list pages beyond the floor's {}: {}",
            floor.list_pages,
            relay.requests.list_pages as i64 - floor.list_pages as i64
        );
        println!(
            "  look-ups by email: {} during ingest, {} after",
            d.lookups_during_ingest, d.lookups_after_ingest
        );
        println!(
            "  updates: {} to {} subscribers ({} change); {} to subscribers with nothing to change",
            relay.requests.updates,
            d.subscribers_updated,
            floor.changing_subscribers,
            d.updates_to_unchanged
        );
        let range = |r: Option<(f64, f64)>| {
            r.map(|(lo, hi)| format!("{lo:.2}–{hi:.2} s"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "  repeat updates (a subscriber's second or later): {}",
            d.repeat_updates
        );
        println!(
            "    {:>6}  an event for the subscriber was posted after its previous update",
            d.repeat_updates_after_late_event
        );
        println!(
            "    {:>6}  every event of the subscriber was stored before its previous update \
             (that update was built from an older snapshot of the job)",
            d.repeat_updates_from_stale_snapshot
        );
        println!(
            "    {:>6}  the previous update was among the run's first 200 (the first delivery round)",
            d.repeat_updates_after_first_round
        );
        println!(
            "    {:>6}  the repeat went out while ingest was still running",
            d.repeat_updates_during_ingest
        );
        println!(
            "    previous updates went out at {}; those subscribers' last events were acknowledged \
             at {}; ingest ended at {:.2} s",
            range(d.repeat_previous_update_secs),
            range(d.repeat_last_event_acked_secs),
            relay.ingest_secs
        );
        println!(
            "  catalogue fetches: {}; longest pause between upstream requests: {:.2} s at {:.1} s",
            relay.requests.catalogue, d.longest_gap_secs, d.longest_gap_at_secs
        );
        println!("  relay metrics: {:?}", relay.relay_metrics);
    }
}
