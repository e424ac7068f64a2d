//! The naive relay the real one is compared with: for each event in arrival order, look the
//! subscriber up by email, then update it. No cache, no coalescing, no dedupe.
//!
//! In: the workload (its arrival order) and the limit. Out: a [`NaiveRun`]: what it spent on a
//! sample of the events, and those figures scaled to the whole workload (the naive relay spends
//! exactly two requests per event, so requests scale exactly; time scales with them).
//! It uses the real [`Client`] and [`Budget`] with the same limit, against a fresh sandbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::harness::start_sandbox;
use super::recorder::{Recorded, RequestKind};
use super::workload::{pair_of, Workload, AUDIENCES};
use super::BenchError;
use prosperstack_relay::budget::Budget;
use prosperstack_relay::clock::TokioClock;
use prosperstack_relay::metrics::Metrics;
use prosperstack_relay::prosperstack::{ApiKey, Client};
use prosperstack_sandbox::SANDBOX_API_KEY;

/// Requests by kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct KindCounts {
    pub catalogue: u64,
    pub list_pages: u64,
    pub lookups: u64,
    pub updates: u64,
    pub other: u64,
    pub total: u64,
    /// Requests answered other than 2xx (429s included).
    pub failed: u64,
}

impl KindCounts {
    pub fn from_log(log: &[Recorded]) -> KindCounts {
        let mut c = KindCounts::default();
        for r in log {
            match r.kind {
                RequestKind::Catalogue => c.catalogue += 1,
                RequestKind::ListPage => c.list_pages += 1,
                RequestKind::Lookup => c.lookups += 1,
                RequestKind::Update => c.updates += 1,
                RequestKind::Other => c.other += 1,
            }
            c.total += 1;
            c.failed += u64::from(!(200..300).contains(&r.status));
        }
        c
    }
}

#[derive(Debug, Serialize)]
pub struct NaiveRun {
    pub sample_events: usize,
    pub total_events: usize,
    /// total ÷ sample: the factor applied to the measured figures.
    pub scale: f64,
    /// Measured on the sample.
    pub requests: KindCounts,
    pub rate_limited: u64,
    pub failed_events: u64,
    pub elapsed_secs: f64,
    pub achieved_rate_per_sec: f64,
    /// Every value the sample should set is `true` in the sandbox afterwards.
    pub values_ok: bool,
    pub extrapolated: Extrapolated,
}

#[derive(Debug, Serialize)]
pub struct Extrapolated {
    pub total: f64,
    pub drain_secs: f64,
}

pub async fn run(
    workload: &Workload,
    limit: (u32, Duration),
    sample: usize,
) -> Result<NaiveRun, BenchError> {
    let origin = Instant::now();
    let sandbox = start_sandbox(limit.0, limit.1, origin).await?;
    workload.install(&sandbox.sandbox)?;
    let key = ApiKey::parse(SANDBOX_API_KEY)
        .map_err(|e| BenchError::Setup(format!("sandbox key: {e}")))?;
    let url = url::Url::parse(&sandbox.url).map_err(|e| BenchError::Setup(e.to_string()))?;
    let client = Client::new(
        url,
        key,
        Arc::new(Budget::new(limit.0, limit.1, TokioClock::shared())),
        Arc::new(Metrics::new()),
        Duration::from_secs(10),
    )?;
    let events = &workload.arrival[..sample.min(workload.arrival.len())];
    let started = Instant::now();
    let mut failed = 0u64;
    for &id in events {
        let pair = pair_of(id);
        let email = &workload.emails[pair.subscriber];
        let mut properties = Map::new();
        properties.insert(AUDIENCES[pair.audience].to_owned(), Value::Bool(true));
        let done = match client.find_subscriber_by_email(email).await {
            Ok(Some(s)) => client.update_subscriber(&s.id, &properties).await.is_ok(),
            _ => false,
        };
        failed += u64::from(!done);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let log = sandbox.recorder.snapshot();
    let requests = KindCounts::from_log(&log);
    let span = match (log.first(), log.last()) {
        (Some(a), Some(b)) => (b.at - a.at).as_secs_f64(),
        _ => 0.0,
    };
    let values_ok = events.iter().all(|&id| {
        let pair = pair_of(id);
        sandbox
            .sandbox
            .subscriber_by_email(&workload.emails[pair.subscriber])
            .and_then(|s| s.properties.get(AUDIENCES[pair.audience]).cloned())
            == Some(Value::Bool(true))
    });
    let scale = workload.arrival.len() as f64 / events.len().max(1) as f64;
    Ok(NaiveRun {
        sample_events: events.len(),
        total_events: workload.arrival.len(),
        scale,
        rate_limited: sandbox.sandbox.stats().rate_limited_total,
        failed_events: failed,
        elapsed_secs: elapsed,
        achieved_rate_per_sec: log.len() as f64 / span.max(1e-9),
        values_ok,
        extrapolated: Extrapolated {
            total: requests.total as f64 * scale,
            drain_secs: elapsed * scale,
        },
        requests,
    })
}
