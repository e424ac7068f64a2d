//! Clock: the one source of time for everything that waits or records a time.
//!
//! In: nothing but the runtime's timer. Out: a monotonic [`Instant`] (windows, pauses, cache
//! ages), wall-clock milliseconds (what the store records: arrival, next attempt, dead letters)
//! and sleeps.
//! Stays true: the budget, delivery, resolve, mapping, ingest and the maintenance task all read
//! the clock they were given, never the system directly, so tests can run them in simulated
//! time. [`TokioClock`] follows tokio's clock: real time in production, and in tests under
//! `#[tokio::test(start_paused = true)]` a paused clock that jumps to the next timer whenever
//! the runtime is idle, wall-clock milliseconds included. [`SimulatedClock`] stands still until
//! someone sleeps, for unit tests and benchmarks that drive time by hand.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where time is read and how it is waited for.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for windows, pauses and ages.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, for what is stored.
    fn wall_ms(&self) -> i64;
    /// Waits until `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Sleep<'_>;
}

/// The clock the relay shares among its stages.
pub type SharedClock = Arc<dyn Clock>;

/// Waits `duration` on `clock`.
pub fn sleep(clock: &dyn Clock, duration: Duration) -> Sleep<'_> {
    clock.sleep_until(clock.now() + duration)
}

/// Tokio's clock: real time, or tokio's paused clock in tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl TokioClock {
    /// The real clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(TokioClock)
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// The system's wall clock, moved by as much as tokio's clock has run ahead of (or behind)
    /// real time. Unpaused, the two agree and this is the wall clock; paused, wall time moves
    /// with the simulated time, so stored times agree with the waits that produced them.
    fn wall_ms(&self) -> i64 {
        let tokio_now = tokio::time::Instant::now().into_std();
        let real_now = Instant::now();
        let wall = system_ms();
        match tokio_now.checked_duration_since(real_now) {
            Some(ahead) => wall.saturating_add(millis(ahead)),
            None => wall.saturating_sub(millis(real_now.duration_since(tokio_now))),
        }
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep<'_> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// Simulated time: it stands still until someone sleeps, and a sleep jumps straight to its
/// deadline. Lets unit tests and benchmarks run minutes of rate-limited traffic in microseconds.
#[derive(Debug)]
pub struct SimulatedClock {
    origin: Instant,
    origin_wall_ms: i64,
    elapsed_nanos: AtomicU64,
}

impl SimulatedClock {
    pub fn new() -> SimulatedClock {
        SimulatedClock {
            origin: Instant::now(),
            origin_wall_ms: system_ms(),
            elapsed_nanos: AtomicU64::new(0),
        }
    }

    /// Moves time forward by `by` (never backwards).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }
}

impl Default for SimulatedClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimulatedClock {
    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }

    fn wall_ms(&self) -> i64 {
        self.origin_wall_ms.saturating_add(millis(self.elapsed()))
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep<'_> {
        let target = deadline.saturating_duration_since(self.origin);
        let nanos = u64::try_from(target.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_max(nanos, Ordering::SeqCst);
        // Yield so that other tasks interleave as they would while really sleeping.
        Box::pin(tokio::task::yield_now())
    }
}

/// A duration in whole milliseconds, saturating (for arithmetic on stored times).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The system's wall clock in milliseconds since the epoch (0 for a clock set before 1970).
fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a paused tokio clock, a sleep moves wall time as far as monotonic time.
    #[tokio::test(start_paused = true)]
    async fn paused_tokio_clock_moves_wall_time() {
        let clock = TokioClock;
        let (start, start_wall) = (clock.now(), clock.wall_ms());
        sleep(&clock, Duration::from_secs(3600)).await;
        assert_eq!(clock.now() - start, Duration::from_secs(3600));
        let moved = clock.wall_ms() - start_wall;
        // Real time passes too while the test runs, a little, and each read rounds to the ms.
        assert!((3_599_990..3_600_000 + 5_000).contains(&moved), "{moved}");
    }

    /// Unpaused, the tokio clock's wall time is the system's.
    #[tokio::test]
    async fn real_tokio_clock_is_the_system_clock() {
        let difference = (TokioClock.wall_ms() - system_ms()).abs();
        assert!(difference < 5_000, "{difference}");
    }

    /// The simulated clock jumps to a sleep's deadline and moves its wall time with it.
    #[tokio::test]
    async fn simulated_clock_jumps() {
        let clock = SimulatedClock::new();
        let (start, wall) = (clock.now(), clock.wall_ms());
        sleep(&clock, Duration::from_secs(60)).await;
        assert_eq!(clock.now() - start, Duration::from_secs(60));
        assert_eq!(clock.wall_ms() - wall, 60_000);
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.wall_ms() - wall, 60_005);
    }
}
