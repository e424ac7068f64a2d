//! Metrics: every counter, gauge and histogram the relay exports, declared in one place.
//!
//! In: calls from the pipeline stages (`metrics.event_received(..)`, `metrics.upstream_response(..)`).
//! Out: the Prometheus text exposition served on `GET /metrics`.
//! Invariants: names follow Prometheus conventions (`_total` counters, `_seconds` durations);
//! labels are small closed sets (event type, outcome, route template, status) and never carry
//! emails, user ids or subscriber ids. The registry is owned (no global recorder), so tests can
//! build as many independent relays as they like in one process.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::QueueStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    endpoint: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolveLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The relay's metrics. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Mutex<Registry>,
    events_received: Family<EventLabels, Counter>,
    events_rejected: Family<ReasonLabels, Counter>,
    timestamps_clamped: Counter,
    refused_low_disk: Counter,
    refused_busy: Counter,
    data_dir_free: Gauge,
    queue_depth: Gauge,
    queue_subscribers: Gauge,
    oldest_queued_age: Gauge<f64, AtomicU64>,
    state_subscribers: Family<StateLabels, Gauge>,
    state_events: Family<StateLabels, Gauge>,
    state_oldest_age: Family<StateLabels, Gauge<f64, AtomicU64>>,
    store_bytes: Gauge,
    updates_sent: Counter,
    updates_coalesced: Counter,
    updates_skipped: Counter,
    properties_unmatched: Counter,
    values_dropped: Counter,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_latency: Family<EndpointLabels, Histogram>,
    upstream_rate_limited: Counter,
    budget_remaining: Gauge,
    key_refused: Gauge,
    cache_lookups: Family<CacheLabels, Counter>,
    subscribers_resolved: Family<ResolveLabels, Counter>,
    directory_pages: Counter,
    dead_letters: Gauge,
    dead_lettered: Family<ReasonLabels, Counter>,
    retries: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            events_received: Family::default(),
            events_rejected: Family::default(),
            timestamps_clamped: Counter::default(),
            refused_low_disk: Counter::default(),
            refused_busy: Counter::default(),
            data_dir_free: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_subscribers: Gauge::default(),
            oldest_queued_age: Gauge::default(),
            state_subscribers: Family::default(),
            state_events: Family::default(),
            state_oldest_age: Family::default(),
            store_bytes: Gauge::default(),
            updates_sent: Counter::default(),
            updates_coalesced: Counter::default(),
            updates_skipped: Counter::default(),
            properties_unmatched: Counter::default(),
            values_dropped: Counter::default(),
            upstream_requests: Family::default(),
            upstream_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            upstream_rate_limited: Counter::default(),
            budget_remaining: Gauge::default(),
            key_refused: Gauge::default(),
            cache_lookups: Family::default(),
            subscribers_resolved: Family::default(),
            directory_pages: Counter::default(),
            dead_letters: Gauge::default(),
            dead_lettered: Family::default(),
            retries: Counter::default(),
            leader: Gauge::default(),
        };
        m.register_events_and_queue(&mut registry);
        m.register_delivery(&mut registry);
        m.register_upstream(&mut registry);
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// Segment's events, and the queue's figures.
    fn register_events_and_queue(&self, r: &mut Registry) {
        r.register(
            "events_received",
            "Segment events received, by type and outcome (stored, duplicate, ignored, rejected)",
            self.events_received.clone(),
        );
        r.register(
            "events_rejected",
            "Segment events rejected, by reason",
            self.events_rejected.clone(),
        );
        r.register(
            "timestamps_clamped",
            "Identify events whose time was past their arrival plus max_clock_skew, held to that",
            self.timestamps_clamped.clone(),
        );
        r.register(
            "requests_refused_low_disk",
            "Requests answered 503 because the data directory had less than min_free_bytes free",
            self.refused_low_disk.clone(),
        );
        r.register(
            "requests_refused_busy",
            "Requests answered 503 after waiting too long for their turn to be parsed",
            self.refused_busy.clone(),
        );
        r.register(
            "data_dir_free_bytes",
            "Free space in the data directory's file system, at the last reading",
            self.data_dir_free.clone(),
        );
        r.register(
            "queue_depth",
            "Events stored and not yet delivered",
            self.queue_depth.clone(),
        );
        r.register(
            "queue_subscribers",
            "Subscribers (emails) with queued events",
            self.queue_subscribers.clone(),
        );
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued event",
            self.oldest_queued_age.clone(),
        );
        r.register(
            "queue_state_subscribers",
            "Subscribers with queued updates, by state (due, waiting, retrying)",
            self.state_subscribers.clone(),
        );
        r.register(
            "queue_state_events",
            "Queued events, by their subscriber's state (due, waiting, retrying)",
            self.state_events.clone(),
        );
        r.register(
            "queue_state_oldest_age_seconds",
            "Age of the oldest queued event, by state (due, waiting, retrying)",
            self.state_oldest_age.clone(),
        );
        r.register(
            "store_bytes",
            "What the store takes on disk",
            self.store_bytes.clone(),
        );
    }

    /// What delivery did: updates, left-out traits and values, dead letters, retries.
    fn register_delivery(&self, r: &mut Registry) {
        r.register(
            "updates_sent",
            "Subscriber updates sent to ProsperStack",
            self.updates_sent.clone(),
        );
        r.register(
            "updates_coalesced",
            "Upstream requests saved by merging several events for one subscriber into one update",
            self.updates_coalesced.clone(),
        );
        r.register(
            "updates_skipped",
            "Subscriber updates not sent because they would change nothing",
            self.updates_skipped.clone(),
        );
        r.register(
            "traits_unmatched",
            "Traits that matched no ProsperStack property and were not sent",
            self.properties_unmatched.clone(),
        );
        r.register(
            "values_dropped",
            "Trait values dropped because they could not be converted to the property's type",
            self.values_dropped.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters currently stored",
            self.dead_letters.clone(),
        );
        r.register(
            "dead_lettered",
            "Updates or properties that became dead letters, by reason",
            self.dead_lettered.clone(),
        );
        r.register(
            "delivery_retries",
            "Deliveries rescheduled after a failure",
            self.retries.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the delivery lease (it delivers), else 0",
            self.leader.clone(),
        );
    }

    /// ProsperStack: requests, latency, the budget, the key, finding subscribers.
    fn register_upstream(&self, r: &mut Registry) {
        r.register(
            "upstream_requests",
            "Requests to the ProsperStack API, by endpoint template and status",
            self.upstream_requests.clone(),
        );
        r.register(
            "upstream_request_duration_seconds",
            "Latency of requests to the ProsperStack API",
            self.upstream_latency.clone(),
        );
        r.register(
            "upstream_rate_limited",
            "429 answers from ProsperStack",
            self.upstream_rate_limited.clone(),
        );
        r.register(
            "budget_remaining",
            "RateLimit-Remaining as last reported by ProsperStack",
            self.budget_remaining.clone(),
        );
        r.register(
            "upstream_key_refused",
            "1 while ProsperStack refuses the API key (401/403): delivery is paused",
            self.key_refused.clone(),
        );
        r.register(
            "cache_lookups",
            "Cache look-ups, by cache and result (hit, miss)",
            self.cache_lookups.clone(),
        );
        r.register(
            "subscribers_resolved",
            "Emails (or platform IDs) resolved to subscriber ids, by method (lookup, platform_id, directory)",
            self.subscribers_resolved.clone(),
        );
        r.register(
            "directory_pages",
            "Subscriber list pages fetched to warm the directory",
            self.directory_pages.clone(),
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }

    pub fn event_received(&self, event_type: &str, outcome: &'static str) {
        // Segment's types are a closed set; anything else is folded so labels stay bounded.
        let known = [
            "identify", "track", "page", "screen", "group", "alias", "delete",
        ];
        let t = if known.contains(&event_type) {
            event_type
        } else {
            "other"
        };
        self.events_received
            .get_or_create(&EventLabels {
                r#type: t.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn refused_busy(&self) {
        self.refused_busy.inc();
    }

    pub fn refused_low_disk(&self) {
        self.refused_low_disk.inc();
    }

    pub fn set_data_dir_free(&self, bytes: u64) {
        self.data_dir_free
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn timestamp_clamped(&self) {
        self.timestamps_clamped.inc();
    }

    pub fn event_rejected(&self, reason: &'static str) {
        self.events_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Every queue gauge from one reading of the store at `now_ms`.
    pub fn set_queue(&self, stats: &QueueStats, now_ms: i64) {
        let age = |oldest: Option<i64>| oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        self.queue_depth.set(stats.events as i64);
        self.queue_subscribers.set(stats.subscribers as i64);
        self.oldest_queued_age.set(age(stats.oldest_received_ms));
        for (state, figures) in stats.states() {
            let labels = StateLabels { state };
            let subscribers = figures.subscribers as i64;
            self.state_subscribers
                .get_or_create(&labels)
                .set(subscribers);
            self.state_events
                .get_or_create(&labels)
                .set(figures.events as i64);
            let oldest = age(figures.oldest_received_ms);
            self.state_oldest_age.get_or_create(&labels).set(oldest);
        }
        self.dead_letters.set(stats.dead_letters as i64);
        self.store_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    }

    pub fn update_sent(&self, events_merged: u64) {
        self.updates_sent.inc();
        if events_merged > 1 {
            self.updates_coalesced.inc_by(events_merged - 1);
        }
    }

    pub fn update_skipped(&self) {
        self.updates_skipped.inc();
    }

    pub fn trait_unmatched(&self) {
        self.properties_unmatched.inc();
    }

    pub fn value_dropped(&self) {
        self.values_dropped.inc();
    }

    /// One finished upstream request; `status` is the HTTP status or an error class
    /// (`timeout`, `connect`, `error`).
    pub fn upstream_response(&self, endpoint: &'static str, status: &str, elapsed_secs: f64) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                endpoint,
                status: status.to_owned(),
            })
            .inc();
        self.upstream_latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed_secs);
        if status == "429" {
            self.upstream_rate_limited.inc();
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_key_refused(&self, refused: bool) {
        self.key_refused.set(i64::from(refused));
    }

    pub fn set_budget_remaining(&self, remaining: u32) {
        self.budget_remaining.set(i64::from(remaining));
    }

    pub fn cache_lookup(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels { cache, result })
            .inc();
    }

    pub fn subscriber_resolved(&self, method: &'static str) {
        self.subscribers_resolved
            .get_or_create(&ResolveLabels { method })
            .inc();
    }

    pub fn directory_page(&self) {
        self.directory_pages.inc();
    }

    /// One update or property became a dead letter, for a reason from a closed set.
    pub fn dead_lettered(&self, reason: &'static str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn retry_scheduled(&self) {
        self.retries.inc();
    }
}

/// Sums every sample of one metric family in a text exposition.
pub fn sum_series(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters show up in the exposition with the relay prefix and Prometheus suffixes.
    #[test]
    fn exposition_has_conventional_names() {
        let m = Metrics::new();
        m.event_received("identify", "stored");
        m.upstream_response("PUT /v1/subscribers/{id}", "200", 0.01);
        m.upstream_response("PUT /v1/subscribers/{id}", "429", 0.01);
        let text = m.render();
        assert!(
            text.contains("relay_events_received_total{type=\"identify\",outcome=\"stored\"} 1")
        );
        assert!(text.contains("relay_upstream_rate_limited_total 1"));
        assert!(text.contains("relay_upstream_request_duration_seconds_bucket"));
        assert_eq!(sum_series(&text, "relay_upstream_requests_total"), 2);
    }

    /// Unknown event types are folded into one label value.
    #[test]
    fn unknown_event_types_fold_into_other() {
        let m = Metrics::new();
        m.event_received("somethingelse", "ignored");
        assert!(m.render().contains("type=\"other\""));
    }
}
