//! Status: what an operator asks of a running relay, as one JSON document, and the progress
//! line a backlog logs.
//!
//! In: the store's queue figures, the budget, what the client has seen of ProsperStack, and
//! delivery's [`Activity`] (what it delivered, which traits matched nothing).
//! Out: [`Status`] for `GET /status` (on the metrics listener), saved to the store every few
//! seconds so `prosperstack-relay status` can read it while `serve` runs; and, from
//! [`progress`], an info line at `progress_interval` while a backlog exists and one when it is
//! drained.
//! Stays true: no email anywhere in it (trait names and counts only; subscribers are counted,
//! never named); the ETA is computed from the budget's sustained rate, the one thing that bounds
//! a drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, SharedClock};
use crate::leader::Leadership;
use crate::prosperstack::{Client, KeyState, RateLimitSeen};
use crate::store::{QueueStats, StateStats, Store};

/// Trait names kept for the "unmatched" list; past this many, new names are not counted (the
/// list is for spotting the few properties to create, not an unbounded map).
const MAX_UNMATCHED_NAMES: usize = 1000;
/// Unmatched names shown in a status.
const TOP_UNMATCHED: usize = 10;

/// What delivery did, shared with status and progress.
#[derive(Default)]
pub struct Activity {
    delivered: AtomicU64,
    last_delivered_ms: AtomicI64,
    unmatched: Mutex<HashMap<String, u64>>,
    resolved_by_email: AtomicU64,
    resolved_by_platform_id: AtomicU64,
}

/// Which key found the subscribers delivery resolved: its email, or its platform ID (an
/// Identify without a usable email, or whose email found no one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedBy {
    pub email: u64,
    pub platform_id: u64,
}

impl Activity {
    /// Delivery found a job's subscriber, by its platform ID or else by its email.
    pub fn resolved(&self, by_platform_id: bool) {
        let counter = if by_platform_id {
            &self.resolved_by_platform_id
        } else {
            &self.resolved_by_email
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn resolved_by(&self) -> ResolvedBy {
        ResolvedBy {
            email: self.resolved_by_email.load(Ordering::Relaxed),
            platform_id: self.resolved_by_platform_id.load(Ordering::Relaxed),
        }
    }

    /// An update reached ProsperStack (or needed no request) at `now_ms`.
    pub fn delivered(&self, now_ms: i64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivered_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// A trait matched no property.
    pub fn unmatched(&self, name: &str) {
        let mut names = self.unmatched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = names.get_mut(name) {
            *count += 1;
        } else if names.len() < MAX_UNMATCHED_NAMES {
            names.insert(name.to_owned(), 1);
        }
    }

    fn delivered_total(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn last_delivered_ms(&self) -> Option<i64> {
        Some(self.last_delivered_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// The most frequent unmatched trait names, most frequent first.
    fn top_unmatched(&self) -> Vec<Unmatched> {
        let names = self.unmatched.lock().unwrap_or_else(|p| p.into_inner());
        let mut top: Vec<Unmatched> = names
            .iter()
            .map(|(name, count)| Unmatched {
                name: name.clone(),
                count: *count,
            })
            .collect();
        top.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
        top.truncate(TOP_UNMATCHED);
        top
    }
}

/// The status document (`GET /status`, `prosperstack-relay status --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// Which process wrote it (host and process id).
    pub replica: String,
    /// When it was made, ms since the epoch.
    pub at_ms: i64,
    pub uptime_secs: u64,
    pub queue: QueueView,
    pub budget: BudgetView,
    /// Time to deliver what is due and retrying at the budget's rate; `None` with nothing to
    /// deliver, or while the key is refused (nothing moves until it is fixed).
    pub eta_secs: Option<u64>,
    pub upstream: UpstreamView,
    pub dead_letters: u64,
    pub unmatched_traits: Vec<Unmatched>,
    pub store_bytes: u64,
    /// Subscribers resolved for delivery, by the key that found them (absent from documents
    /// saved before it was kept).
    #[serde(default)]
    pub resolved_by: ResolvedBy,
    /// Whether this replica delivers (holds the delivery lease).
    #[serde(default)]
    pub leader: LeaderView,
}

/// This replica's part in delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// The holder id this replica asks for the lease under.
    pub holder: String,
    /// It holds the lease: it delivers.
    pub leading: bool,
    /// The lease's epoch (its fencing token) while it leads.
    pub epoch: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    pub subscribers: u64,
    pub events: u64,
    pub due: StateView,
    pub waiting: StateView,
    pub retrying: StateView,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    pub subscribers: u64,
    pub events: u64,
    pub oldest_age_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetView {
    /// The configured limit: `limit` requests per `window_secs`.
    pub limit: u32,
    pub window_secs: f64,
    /// Requests sent in the last window.
    pub used_in_window: u32,
    /// What a backlog drains at, in requests a minute.
    pub sustained_per_minute: f64,
    /// The last `RateLimit-*` headers ProsperStack sent.
    pub last_seen: Option<RateLimitSeen>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamView {
    pub key: KeyState,
    pub key_refused_since_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    /// The last update ProsperStack accepted (or that needed no request).
    pub last_delivery_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub requests: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmatched {
    pub name: String,
    pub count: u64,
}

/// Where a status is made from.
#[derive(Clone)]
pub struct Sources {
    pub store: Arc<dyn Store>,
    pub client: Client,
    pub activity: Arc<Activity>,
    pub clock: SharedClock,
    pub started_ms: i64,
    pub replica: String,
    pub leadership: Arc<Leadership>,
}

impl Sources {
    /// A status as of now.
    pub async fn status(&self) -> Result<Status, crate::store::StoreError> {
        let stats = self.store.stats().await?;
        Ok(self.status_from(&stats))
    }

    /// A status from queue figures just read.
    pub fn status_from(&self, stats: &QueueStats) -> Status {
        let now = self.clock.wall_ms();
        let budget = self.client.budget();
        let (limit, window) = budget.limit();
        let seen = self.client.observed().snapshot();
        let per_sec = budget.sustained_per_sec();
        let eta_secs = (seen.key != KeyState::Refused)
            .then(|| eta(stats, per_sec))
            .flatten()
            .map(|d| d.as_secs());
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            replica: self.replica.clone(),
            at_ms: now,
            uptime_secs: u64::try_from((now - self.started_ms) / 1000).unwrap_or(0),
            queue: queue_view(stats, now),
            budget: BudgetView {
                limit,
                window_secs: window.as_secs_f64(),
                used_in_window: budget.used_in_window(),
                sustained_per_minute: per_sec * 60.0,
                last_seen: seen.rate_limit,
            },
            eta_secs,
            upstream: UpstreamView {
                key: seen.key,
                key_refused_since_ms: seen.key_refused_since_ms,
                last_success_ms: seen.last_success_ms,
                last_delivery_ms: self.activity.last_delivered_ms(),
                last_error: seen.last_error,
                last_error_ms: seen.last_error_ms,
                requests: seen.requests,
            },
            dead_letters: stats.dead_letters,
            unmatched_traits: self.activity.top_unmatched(),
            store_bytes: stats.bytes,
            resolved_by: self.activity.resolved_by(),
            leader: self.leader_view(),
        }
    }

    fn leader_view(&self) -> LeaderView {
        let epoch = self.leadership.held_epoch();
        LeaderView {
            holder: self.leadership.holder().to_owned(),
            leading: epoch.is_some(),
            epoch,
        }
    }
}

/// The queue figures with ages instead of times, as of `now_ms`.
pub fn queue_view(stats: &QueueStats, now_ms: i64) -> QueueView {
    let view = |s: StateStats| StateView {
        subscribers: s.subscribers,
        events: s.events,
        oldest_age_secs: s
            .oldest_received_ms
            .map(|t| u64::try_from((now_ms - t).max(0) / 1000).unwrap_or(0)),
    };
    QueueView {
        subscribers: stats.subscribers,
        events: stats.events,
        due: view(stats.due),
        waiting: view(stats.waiting),
        retrying: view(stats.retrying),
    }
}

/// How long the due and retrying subscribers take at `per_sec` requests a second (one update
/// each: the floor, since look-ups are mostly cached or paged 100 at a time).
pub fn eta(stats: &QueueStats, per_sec: f64) -> Option<Duration> {
    let left = stats.due.subscribers + stats.retrying.subscribers;
    (left > 0 && per_sec > 0.0).then(|| Duration::from_secs_f64(left as f64 / per_sec))
}

/// Logs progress every `interval` while a backlog exists, and once when it is drained.
pub async fn progress(sources: Sources, interval: Duration, stop: CancellationToken) {
    let mut tracker = Progress::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clock::sleep(sources.clock.as_ref(), interval) => {}
        }
        match sources.store.stats().await {
            Ok(stats) => tracker.report(&sources, &stats, interval),
            Err(e) => tracing::warn!(error = %e, "cannot read queue figures for progress"),
        }
    }
}

/// What the last progress line saw, to report what changed since.
#[derive(Default)]
struct Progress {
    /// Delivered and requests counts at the last line; `None` before the first.
    last: Option<(u64, u64)>,
    /// Delivered count when the current backlog was first seen, and when.
    backlog_started: Option<(u64, i64)>,
}

impl Progress {
    fn report(&mut self, sources: &Sources, stats: &QueueStats, interval: Duration) {
        // A standby delivers nothing: the leader's lines are the ones that say something.
        if sources.leadership.current().is_none() {
            return;
        }
        let delivered_total = sources.activity.delivered_total();
        let requests_total = sources.client.observed().snapshot().requests;
        // The first line counts from the start of the process, when progress began watching.
        let (last_delivered, last_requests) = self.last.unwrap_or((0, 0));
        self.last = Some((delivered_total, requests_total));
        let backlog = stats.due.subscribers + stats.retrying.subscribers;
        let now = sources.clock.wall_ms();
        if backlog == 0 {
            if let Some((delivered_before, since)) = self.backlog_started.take() {
                let took = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
                tracing::info!(
                    delivered = delivered_total - delivered_before,
                    took = %humantime::format_duration(round_secs(took)),
                    waiting = stats.waiting.subscribers,
                    dead_letters = stats.dead_letters,
                    "backlog drained"
                );
            }
            return;
        }
        self.backlog_started.get_or_insert((last_delivered, now));
        let per_minute = (requests_total - last_requests) as f64 * 60.0 / interval.as_secs_f64();
        let refused = sources.client.observed().key_refused();
        let eta = eta(stats, sources.client.budget().sustained_per_sec())
            .filter(|_| !refused)
            .map_or_else(
                || "none while the API key is refused".to_owned(),
                |d| humantime::format_duration(round_secs(d)).to_string(),
            );
        tracing::info!(
            due_subscribers = stats.due.subscribers,
            due_events = stats.due.events,
            retrying = stats.retrying.subscribers,
            waiting = stats.waiting.subscribers,
            delivered = delivered_total - last_delivered,
            requests_per_minute = per_minute.round() as u64,
            %eta,
            "backlog"
        );
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// This process, as a status names it: host and process id.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(due: u64, retrying: u64) -> QueueStats {
        QueueStats {
            due: StateStats {
                subscribers: due,
                events: due * 2,
                oldest_received_ms: Some(1_000),
            },
            retrying: StateStats {
                subscribers: retrying,
                ..StateStats::default()
            },
            ..QueueStats::default()
        }
    }

    /// The ETA is what is due and retrying at the sustained rate; nothing due, no ETA.
    #[test]
    fn eta_from_the_budget() {
        let per_sec = 98.0 / 60.0;
        assert_eq!(eta(&stats(0, 0), per_sec), None);
        let secs = eta(&stats(980, 0), per_sec).expect("an eta").as_secs_f64();
        assert!((secs - 600.0).abs() < 1.0, "{secs}");
        let with_retrying = eta(&stats(970, 10), per_sec).expect("an eta");
        assert_eq!(with_retrying.as_secs(), secs as u64);
    }

    /// Ages are counted from now; an empty state has no oldest age.
    #[test]
    fn queue_view_ages() {
        let view = queue_view(&stats(3, 0), 61_000);
        assert_eq!(view.due.oldest_age_secs, Some(60));
        assert_eq!(view.due.events, 6);
        assert_eq!(view.waiting.oldest_age_secs, None);
    }

    /// Unmatched names are counted, most frequent first, and bounded in number.
    #[test]
    fn unmatched_names_are_counted_and_bounded() {
        let activity = Activity::default();
        for _ in 0..3 {
            activity.unmatched("Favourite colour");
        }
        activity.unmatched("Shoe size");
        let top = activity.top_unmatched();
        assert_eq!(top[0].name, "Favourite colour");
        assert_eq!((top[0].count, top[1].count), (3, 1));
        for i in 0..(MAX_UNMATCHED_NAMES + 10) {
            activity.unmatched(&format!("t{i}"));
        }
        let names = activity.unmatched.lock().map(|n| n.len()).unwrap_or(0);
        assert_eq!(names, MAX_UNMATCHED_NAMES);
    }
}
