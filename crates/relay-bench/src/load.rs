//! The load generator behind `bench ingest`: single-event POSTs over keep-alive connections.
//!
//! In: a URL, a body maker (sequence number → JSON, so every event has its own messageId), and
//! either a number of connections and a duration (closed loop: each connection sends its next
//! request when the last one is answered) or a rate and a duration (open loop: requests go out on
//! a fixed schedule whatever the answers; latency counts from the scheduled time, so a stalled
//! server cannot hide its stall by slowing the generator down).
//! Out: a [`LoadResult`]: requests, errors, throughput and latency quantiles.
//! Bounded: by its duration, and in-flight requests by a cap; each request has a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::measure::{ms, quantile};
use super::BenchError;

/// Makes the body of request number `n`.
pub type BodyMaker = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// At most this many open-loop requests in flight; beyond it the schedule slips (and the
/// slip is counted in the latency, measured from the schedule).
const MAX_IN_FLIGHT: usize = 1024;

#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Open loop only: latency from the moment the request was really sent (the generator's
    /// own lateness left out), for comparison.
    pub send_p99_ms: Option<f64>,
    /// Open loop only: runs of requests slower than [`STALL_MS`], in order.
    pub stalls: Vec<Stall>,
}

/// A request slower than this is part of a stall.
pub const STALL_MS: f64 = 10.0;

/// Consecutive slow requests (scheduled within 50 ms of each other).
#[derive(Clone, Debug, Serialize)]
pub struct Stall {
    /// When the first slow request was scheduled, in seconds since the caller's origin.
    pub at_secs: f64,
    pub requests: u64,
    pub max_ms: f64,
}

/// Groups slow (scheduled offset, latency) samples into stalls.
fn stalls(mut slow: Vec<(Duration, Duration)>) -> Vec<Stall> {
    slow.sort_unstable();
    let mut out: Vec<Stall> = Vec::new();
    let mut last: Option<Duration> = None;
    for (at, latency) in slow {
        let joins = last.is_some_and(|l| at.saturating_sub(l) <= Duration::from_millis(50));
        match out.last_mut() {
            Some(s) if joins => {
                s.requests += 1;
                s.max_ms = s.max_ms.max(ms(latency));
            }
            _ => out.push(Stall {
                at_secs: at.as_secs_f64(),
                requests: 1,
                max_ms: ms(latency),
            }),
        }
        last = Some(at);
    }
    out
}

impl LoadResult {
    pub fn from_samples(mut latencies: Vec<Duration>, errors: u64, secs: f64) -> LoadResult {
        latencies.sort_unstable();
        let n = latencies.len() as u64;
        LoadResult {
            requests: n,
            errors,
            secs,
            per_sec: (n - errors.min(n)) as f64 / secs.max(1e-9),
            p50_ms: ms(quantile(&latencies, 0.50)),
            p90_ms: ms(quantile(&latencies, 0.90)),
            p99_ms: ms(quantile(&latencies, 0.99)),
            max_ms: ms(latencies.last().copied().unwrap_or_default()),
            send_p99_ms: None,
            stalls: Vec::new(),
        }
    }
}

pub fn client(connections: usize) -> Result<reqwest::Client, BenchError> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(connections.max(1))
        .tcp_nodelay(true)
        .build()?)
}

/// One POST; whether it was answered 2xx.
async fn post(http: &reqwest::Client, url: &str, body: String) -> bool {
    match http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        // Read the body so the connection goes back to the pool.
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

/// `connections` tasks, each sending its next request as soon as the last is answered.
pub async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    connections: usize,
    duration: Duration,
    body: BodyMaker,
    seq: Arc<AtomicU64>,
) -> LoadResult {
    closed_loop_over(http, &[url.to_owned()], connections, duration, body, seq).await
}

/// [`closed_loop`] spread over several servers (replicas behind a load balancer): connection
/// `i` talks to `urls[i % urls.len()]`.
pub async fn closed_loop_over(
    http: &reqwest::Client,
    urls: &[String],
    connections: usize,
    duration: Duration,
    body: BodyMaker,
    seq: Arc<AtomicU64>,
) -> LoadResult {
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|i| {
            let url = urls[i % urls.len().max(1)].clone();
            let (http, body, seq) = (http.clone(), body.clone(), seq.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(65_536);
                let mut errors = 0u64;
                while Instant::now() < end {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    if !post(&http, &url, body(n)).await {
                        errors += 1;
                    }
                    latencies.push(sent.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((l, e)) = task.await {
            all.extend(l);
            errors += e;
        }
    }
    LoadResult::from_samples(all, errors, start.elapsed().as_secs_f64())
}

/// `rate` requests a second for `duration`, on schedule; latency counts from the schedule.
/// Stalls are timed from `origin`.
pub async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    rate: u32,
    duration: Duration,
    body: BodyMaker,
    seq: Arc<AtomicU64>,
    origin: Instant,
) -> LoadResult {
    let urls = [url.to_owned()];
    open_loop_over(http, &urls, rate, duration, body, seq, origin).await
}

/// [`open_loop`] spread over several servers: request `k` goes to `urls[k % urls.len()]`.
pub async fn open_loop_over(
    http: &reqwest::Client,
    urls: &[String],
    rate: u32,
    duration: Duration,
    body: BodyMaker,
    seq: Arc<AtomicU64>,
    origin: Instant,
) -> LoadResult {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let results = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new(), 0u64)));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for k in 0..total {
        let scheduled = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (http, url, body, seq, results) = (
            http.clone(),
            urls[k as usize % urls.len().max(1)].clone(),
            body.clone(),
            seq.clone(),
            results.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let n = seq.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            let ok = post(&http, &url, body(n)).await;
            let done = Instant::now();
            drop(permit);
            let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
            r.0.push(done - scheduled);
            r.1.push(done - sent);
            r.2.push(scheduled);
            r.3 += u64::from(!ok);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (from_schedule, mut from_send, scheduled_at, errors) = {
        let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *r)
    };
    from_send.sort_unstable();
    let slow = scheduled_at
        .iter()
        .zip(&from_schedule)
        .filter(|(_, l)| ms(**l) > STALL_MS)
        .map(|(at, l)| (at.saturating_duration_since(origin), *l))
        .collect();
    let mut result = LoadResult::from_samples(from_schedule, errors, secs);
    result.send_p99_ms = Some(ms(quantile(&from_send, 0.99)));
    result.stalls = stalls(slow);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slow requests close together form one stall; a gap over 50 ms starts another.
    #[test]
    fn groups_stalls() {
        let at = Duration::from_millis;
        let got = stalls(vec![
            (at(5010), at(40)),
            (at(5000), at(45)),
            (at(5030), at(20)),
            (at(10_000), at(30)),
        ]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].requests, 3);
        assert_eq!(got[0].max_ms, 45.0);
        assert!((got[0].at_secs - 5.0).abs() < 1e-9);
        assert_eq!(got[1].requests, 1);
    }
}
