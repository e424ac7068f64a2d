//! Budget: the one rate limiter per API key that every upstream request passes.
//!
//! In: `acquire()` before each request to ProsperStack; `observe()` with the `RateLimit-Remaining`
//! and `RateLimit-Reset` headers of every response; `pause_for()` after a 429.
//! Out: `acquire()` returns when a request may be sent; `last_remaining()` for metrics and health.
//! Across replicas: `snapshot()` is what this budget knows of the server's window, for the next
//! deliverer (`seed()` starts a budget from one), and `changed()` says when it moved.
//! Invariants:
//! - On its own, the limiter never lets more than `requests` acquisitions into ANY window of
//!   length `window` (sliding, so fixed windows too): see [`quota_for`] for the arithmetic.
//! - The server's headers are the truth, because other clients share the key: when it says the
//!   window is spent, or answers 429, every acquisition waits for the reset.
//! - Pauses only ever extend (the later of the current and the new end wins).
//! - The server's last `RateLimit-Remaining` and `RateLimit-Reset` (or a handed-over
//!   snapshot) are an allowance: each admission spends one, and when none is left every
//!   acquisition waits for its reset, so a deliverer that takes over mid-window spends only what
//!   its predecessor left.
//! - Time comes from the relay's [`Clock`], so tests run in simulated time instead of sleeping.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;
use crate::store::BudgetSnapshot;

/// Margin added to a server-announced reset, so our first request lands after the server's
/// window has really turned over (clocks and network latency differ by a few milliseconds).
pub const RESET_MARGIN: Duration = Duration::from_millis(50);

/// Longest pause one header or 429 can impose. ProsperStack's window is a minute; a larger value
/// is a server bug, and waiting an hour then asking again is safer than stalling forever (or
/// overflowing an `Instant`).
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// Adapts our clock to governor's, so the token bucket and the pauses share one time source.
#[derive(Clone)]
struct GovernorTime(SharedClock);

impl GovernorClock for GovernorTime {
    type Instant = Instant;

    fn now(&self) -> Instant {
        self.0.now()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, GovernorTime, NoOpMiddleware<Instant>>;

/// The token bucket's shape for `requests` per `window`: `(burst, replenish period)`.
///
/// Governor's GCRA admits at most `burst + floor(L / period)` cells in any closed interval of
/// length `L` (the burst, then one cell per period). To keep that at or under `requests` for
/// `L = window`: `burst = max(1, requests / 50)` and `period = window / (requests - burst)`,
/// rounded UP to the nanosecond so rounding can never add a cell. For 100 per minute that is a
/// burst of 2 and one request every 612.2 ms: at most 2 + 98 = 100 in any minute.
/// Why so small a burst: the relay is a steady consumer of a backlog, and the sustained rate
/// (`requests - burst` per window) is what drains it, so a larger burst would cost throughput;
/// but a burst of at least 2 lets a request that woke a little late (timer granularity) be
/// made up by the next one instead of the slot being lost.
/// With `requests = 1` the burst alone is the quota, so the period must be strictly longer than
/// the window (`window + 1 ns`), else both ends of a closed window could hold a cell.
/// Degenerate input (0 requests, zero window) is raised to 1 request per 1 ms rather than
/// panicking; configuration rejects it before it gets here.
pub fn quota_for(requests: u32, window: Duration) -> (u32, Duration) {
    let requests = requests.max(1);
    let window = window.max(Duration::from_millis(1));
    let burst = (requests / 50).max(1);
    let spaced = requests - burst;
    if spaced == 0 {
        return (burst, window + Duration::from_nanos(1));
    }
    let window_nanos = window.as_nanos();
    let period_nanos = window_nanos.div_ceil(u128::from(spaced));
    let period = Duration::from_nanos(u64::try_from(period_nanos).unwrap_or(u64::MAX));
    (burst, period)
}

/// What the server said is left of its window (or a predecessor handed over), counted down by
/// each admission since.
#[derive(Clone, Copy)]
struct Allowance {
    remaining: u32,
    until: Instant,
}

#[derive(Default)]
struct ServerView {
    paused_until: Option<Instant>,
    allowance: Option<Allowance>,
    last_remaining: Option<u32>,
    /// When each request of the last window was admitted (at most `requests` of them), so
    /// status can say how much of the window is spent.
    admitted: VecDeque<Instant>,
}

/// One limiter per API key shared by every upstream request; share it as `Arc<Budget>`.
pub struct Budget {
    requests: u32,
    window: Duration,
    clock: SharedClock,
    limiter: Limiter,
    server: Mutex<ServerView>,
    changed: tokio::sync::Notify,
}

impl Budget {
    /// `requests` per `window` on `clock` (see [`quota_for`] for how bursts are bounded).
    pub fn new(requests: u32, window: Duration, clock: SharedClock) -> Budget {
        let (burst, period) = quota_for(requests, window);
        // quota_for never returns a zero period or burst, so these fallbacks are never taken.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Budget {
            requests,
            window,
            limiter: RateLimiter::direct_with_clock(quota, GovernorTime(clock.clone())),
            clock,
            server: Mutex::new(ServerView::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Waits until a request may be sent: first any pause imposed by the server, then a token.
    pub async fn acquire(&self) {
        loop {
            // Checked again after every sleep: a 429 seen by another task may have paused us.
            if let Some(until) = self.paused_until().or_else(|| self.allowance_spent()) {
                self.clock.sleep_until(until).await;
                continue;
            }
            match self.limiter.check() {
                Ok(()) => {
                    self.record_admitted();
                    return;
                }
                Err(not_until) => {
                    let deadline = not_until.earliest_possible();
                    self.clock.sleep_until(deadline).await;
                }
            }
        }
    }

    /// Feed it `RateLimit-Remaining` / `RateLimit-Reset` from every response. When the server
    /// says the window is spent, every acquisition waits for the reset (plus [`RESET_MARGIN`]);
    /// without a reset, for a whole window.
    pub fn observe(&self, remaining: Option<u32>, reset: Option<Duration>) {
        let mut view = self.view();
        if remaining.is_some() {
            view.last_remaining = remaining;
        }
        if let (Some(remaining), Some(reset)) = (remaining, reset) {
            let until = self.clock.now() + reset.min(MAX_PAUSE);
            view.allowance = Some(Allowance { remaining, until });
        }
        if remaining == Some(0) {
            let wait = reset.unwrap_or(self.window) + RESET_MARGIN;
            self.extend_pause(&mut view, wait);
        }
        drop(view);
        self.changed.notify_one();
    }

    /// What this budget knows of the server's window, for whoever delivers next: the server's
    /// allowance counted down, else the limit less this process's own requests in the last
    /// window, for a whole window; nothing while paused. One less than known, as one request
    /// may be on its way whose answer (and whose snapshot) never comes.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let now = self.clock.now();
        if let Some(until) = self.paused_until() {
            return BudgetSnapshot {
                remaining: 0,
                reset_in: until.saturating_duration_since(now),
            };
        }
        let used = self.used_in_window();
        let (remaining, reset_in) = match self.allowance(now) {
            Some(a) => (a.remaining, a.until.saturating_duration_since(now)),
            None => (self.requests.saturating_sub(used), self.window),
        };
        BudgetSnapshot {
            remaining: remaining.saturating_sub(1),
            reset_in,
        }
    }

    /// Starts from what a previous deliverer knew of the window: at most `remaining` requests
    /// until the reset (a stricter allowance this budget already has is kept).
    pub fn seed(&self, snapshot: BudgetSnapshot) {
        let now = self.clock.now();
        let mut view = self.view();
        let mut seeded = Allowance {
            remaining: snapshot.remaining,
            until: now + snapshot.reset_in.min(MAX_PAUSE),
        };
        if let Some(current) = view.allowance.filter(|a| a.until > now) {
            seeded.remaining = seeded.remaining.min(current.remaining);
            seeded.until = seeded.until.max(current.until);
        }
        view.allowance = Some(seeded);
    }

    /// Resolves when the budget has moved (a request admitted, a response's headers seen)
    /// since the last call returned.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// After a 429: pause all acquisitions for `wait` (never shortening a longer pause).
    pub fn pause_for(&self, wait: Duration) {
        let mut view = self.view();
        self.extend_pause(&mut view, wait);
    }

    /// The last `RateLimit-Remaining` the server reported, if any.
    pub fn last_remaining(&self) -> Option<u32> {
        self.view().last_remaining
    }

    /// Requests admitted in the last `window` (the sliding window the limiter keeps to).
    pub fn used_in_window(&self) -> u32 {
        let now = self.clock.now();
        let mut view = self.view();
        forget_older(&mut view.admitted, now, self.window);
        u32::try_from(view.admitted.len()).unwrap_or(u32::MAX)
    }

    /// The rate the limiter sustains, in requests a second (what a backlog drains at).
    pub fn sustained_per_sec(&self) -> f64 {
        let (_, period) = quota_for(self.requests, self.window);
        1.0 / period.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn record_admitted(&self) {
        let now = self.clock.now();
        let mut view = self.view();
        forget_older(&mut view.admitted, now, self.window);
        view.admitted.push_back(now);
        if let Some(allowance) = view.allowance.as_mut() {
            allowance.remaining = allowance.remaining.saturating_sub(1);
        }
        drop(view);
        self.changed.notify_one();
    }

    /// The allowance still running at `now`, if any.
    fn allowance(&self, now: Instant) -> Option<Allowance> {
        self.view().allowance.filter(|a| a.until > now)
    }

    /// When the running allowance resets (plus [`RESET_MARGIN`]), if none of it is left.
    fn allowance_spent(&self) -> Option<Instant> {
        self.allowance(self.clock.now())
            .filter(|a| a.remaining == 0)
            .map(|a| a.until + RESET_MARGIN)
    }

    /// The clock this budget waits on (the client reads the time of day from it too).
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The configured limit: `requests` per `window`.
    pub fn limit(&self) -> (u32, Duration) {
        (self.requests, self.window)
    }

    fn extend_pause(&self, view: &mut ServerView, wait: Duration) {
        let wait = wait.min(MAX_PAUSE);
        let until = self.clock.now() + wait;
        tracing::debug!(wait_ms = wait.as_millis() as u64, "upstream budget paused");
        view.paused_until = Some(
            view.paused_until
                .map_or(until, |current| current.max(until)),
        );
    }

    /// The end of the current pause, if it is still in the future.
    fn paused_until(&self) -> Option<Instant> {
        let now = self.clock.now();
        self.view().paused_until.filter(|until| *until > now)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ServerView> {
        // The guarded data is two plain values, valid even if a holder panicked.
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops the admissions that fell out of the window ending at `now`.
fn forget_older(admitted: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while admitted
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        admitted.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, SimulatedClock, TokioClock};

    fn simulated(requests: u32, window: Duration) -> (Arc<SimulatedClock>, Budget) {
        let clock = Arc::new(SimulatedClock::new());
        let budget = Budget::new(requests, window, clock.clone());
        (clock, budget)
    }

    /// The largest number of instants that fit in one closed window of length `window`.
    fn max_in_any_window(mut times: Vec<Instant>, window: Duration) -> usize {
        times.sort();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.duration_since(times[i]) <= window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The quota arithmetic admits at most `requests` per window for every size of limit.
    #[test]
    fn quota_never_exceeds_the_limit_in_a_window() {
        for requests in 1..=1000u32 {
            for window in [Duration::from_millis(500), Duration::from_secs(60)] {
                let (burst, period) = quota_for(requests, window);
                let admitted = u128::from(burst) + window.as_nanos() / period.as_nanos();
                assert!(
                    admitted <= u128::from(requests),
                    "{requests} per {window:?}"
                );
                assert!(burst >= 1);
            }
        }
    }

    /// Concrete quotas: 100/min is a burst of 2 then one per 612.2 ms; 1/s waits just over 1 s.
    #[test]
    fn quota_table() {
        let cases = [
            (100, 60_000, 2, Duration::from_nanos(612_244_898)),
            (10, 1_000, 1, Duration::from_nanos(111_111_112)),
            (2, 1_000, 1, Duration::from_secs(1)),
            (1, 1_000, 1, Duration::from_nanos(1_000_000_001)),
            (0, 1_000, 1, Duration::from_nanos(1_000_000_001)),
        ];
        for (requests, window_ms, burst, period) in cases {
            let got = quota_for(requests, Duration::from_millis(window_ms));
            assert_eq!(got, (burst, period), "{requests} per {window_ms} ms");
        }
    }

    /// Over 3 simulated seconds at 10/s, no 1-second sliding window sees more than 10, and the
    /// limiter still lets traffic flow (it does not just block).
    #[tokio::test]
    async fn no_sliding_window_sees_more_than_the_limit() {
        let (clock, budget) = simulated(10, Duration::from_secs(1));
        let start = clock.now();
        let mut times = Vec::new();
        while clock.now().duration_since(start) < Duration::from_secs(3) {
            budget.acquire().await;
            times.push(clock.now());
        }
        assert!(times.len() >= 25, "only {} acquisitions", times.len());
        assert!(max_in_any_window(times, Duration::from_secs(1)) <= 10);
    }

    /// Several tasks sharing one budget still stay within the limit together.
    #[tokio::test]
    async fn concurrent_acquirers_share_the_limit() {
        let (clock, budget) = simulated(10, Duration::from_secs(1));
        let budget = Arc::new(budget);
        let times = Arc::new(Mutex::new(Vec::new()));
        let start = clock.now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (clock, budget, times) = (clock.clone(), budget.clone(), times.clone());
                tokio::spawn(async move {
                    while clock.now().duration_since(start) < Duration::from_secs(3) {
                        budget.acquire().await;
                        // No await between the token and this read: the instant is exact.
                        times
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(clock.now());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task panicked");
        }
        let times = times.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(max_in_any_window(times, Duration::from_secs(1)) <= 10);
    }

    /// A spent window reported by the server delays the next acquisition until the reset.
    #[tokio::test]
    async fn observe_zero_remaining_waits_for_the_reset() {
        let (clock, budget) = simulated(10, Duration::from_secs(1));
        budget.observe(Some(0), Some(Duration::from_secs(1)));
        let start = clock.now();
        budget.acquire().await;
        let waited = clock.now().duration_since(start);
        assert!(waited >= Duration::from_secs(1), "waited {waited:?}");
        assert!(waited <= Duration::from_millis(1100), "waited {waited:?}");
        assert_eq!(budget.last_remaining(), Some(0));
    }

    /// Remaining requests left in the window impose no wait, and a response without the header
    /// keeps the last reported value.
    #[tokio::test]
    async fn observe_nonzero_remaining_does_not_pause() {
        let (clock, budget) = simulated(10, Duration::from_secs(1));
        budget.observe(Some(7), Some(Duration::from_secs(30)));
        budget.observe(None, None);
        let start = clock.now();
        budget.acquire().await;
        assert_eq!(clock.now(), start);
        assert_eq!(budget.last_remaining(), Some(7));
    }

    /// A spent window without a reset header waits a whole window.
    #[tokio::test]
    async fn observe_without_reset_waits_a_window() {
        let (clock, budget) = simulated(10, Duration::from_secs(2));
        budget.observe(Some(0), None);
        let start = clock.now();
        budget.acquire().await;
        assert!(clock.now().duration_since(start) >= Duration::from_secs(2));
    }

    /// A shorter pause never cuts a longer one short; a longer one extends it.
    #[tokio::test]
    async fn pause_for_extends_but_never_shortens() {
        let (clock, budget) = simulated(10, Duration::from_secs(1));
        budget.pause_for(Duration::from_secs(2));
        budget.pause_for(Duration::from_secs(1));
        let start = clock.now();
        budget.acquire().await;
        assert!(clock.now().duration_since(start) >= Duration::from_secs(2));

        budget.pause_for(Duration::from_secs(1));
        budget.pause_for(Duration::from_secs(3));
        let start = clock.now();
        budget.acquire().await;
        assert!(clock.now().duration_since(start) >= Duration::from_secs(3));
    }

    /// An absurd server delay is capped, so it can neither stall the relay forever nor panic.
    #[tokio::test]
    async fn huge_pauses_are_capped() {
        let (clock, budget) = simulated(10, Duration::from_secs(1));
        budget.pause_for(Duration::from_secs(u64::MAX / 2));
        let start = clock.now();
        budget.acquire().await;
        assert!(clock.now().duration_since(start) <= MAX_PAUSE);
    }

    /// Status's figures: admissions in the sliding window, and the sustained rate (98 a minute
    /// at 100 a minute).
    #[tokio::test]
    async fn used_in_window_slides() {
        let (clock, budget) = simulated(100, Duration::from_secs(60));
        for _ in 0..5 {
            budget.acquire().await;
        }
        assert_eq!(budget.used_in_window(), 5);
        clock.advance(Duration::from_secs(61));
        assert_eq!(budget.used_in_window(), 0);
        let per_minute = budget.sustained_per_sec() * 60.0;
        assert!((per_minute - 98.0).abs() < 0.01, "{per_minute}");
    }

    /// A handed-over budget is an allowance: its requests pass, the next waits for its reset.
    #[tokio::test]
    async fn seeded_allowance_is_spent_then_waits_for_the_reset() {
        let (clock, budget) = simulated(100, Duration::from_secs(60));
        budget.seed(BudgetSnapshot {
            remaining: 2,
            reset_in: Duration::from_secs(30),
        });
        let start = clock.now();
        budget.acquire().await;
        budget.acquire().await;
        assert!(clock.now().duration_since(start) < Duration::from_secs(30));
        budget.acquire().await;
        assert!(clock.now().duration_since(start) >= Duration::from_secs(30));
    }

    /// The snapshot counts the server's allowance down by each admission, keeps one back for a
    /// request in flight, and without headers falls back to the limit less its own requests.
    #[tokio::test]
    async fn snapshot_from_headers_or_own_count() {
        let (_clock, budget) = simulated(100, Duration::from_secs(60));
        budget.acquire().await;
        budget.acquire().await;
        let own = budget.snapshot();
        assert_eq!(own.remaining, 97);
        assert_eq!(own.reset_in, Duration::from_secs(60));
        budget.observe(Some(10), Some(Duration::from_secs(30)));
        budget.acquire().await;
        let seen = budget.snapshot();
        assert_eq!(seen.remaining, 8);
        assert!(seen.reset_in <= Duration::from_secs(30));
        budget.pause_for(Duration::from_secs(5));
        assert_eq!(budget.snapshot().remaining, 0);
    }

    /// One request per window: the second waits more than a full window.
    #[tokio::test]
    async fn one_request_per_window() {
        let (clock, budget) = simulated(1, Duration::from_secs(1));
        budget.acquire().await;
        let first = clock.now();
        budget.acquire().await;
        assert!(clock.now().duration_since(first) > Duration::from_secs(1));
        assert_eq!(budget.limit(), (1, Duration::from_secs(1)));
    }

    /// The real clock really waits: 10 acquisitions at 5 per 200 ms (one per 50 ms after a burst
    /// of 1) take at least 450 ms. A lower bound on elapsed time, which a slow machine can't break.
    #[tokio::test]
    async fn real_clock_really_waits() {
        let budget = Budget::new(5, Duration::from_millis(200), TokioClock::shared());
        let start = Instant::now();
        for _ in 0..10 {
            budget.acquire().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(450));
    }
}
