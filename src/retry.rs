//! Retry decisions: pure functions from a failed upstream call to what to do next.
//!
//! In: an [`ApiError`] from the ProsperStack client (which already read any delay the server
//! announced) with the attempt number, a backoff policy and a jitter sample in `[0, 1)` (passed
//! in, so every function is pure).
//! Out: a [`Decision`] (retry after a delay, wait for the rate-limit window, give up) or a delay.
//! Invariants: the server's own delay (headers) wins over our backoff; backoff never exceeds the
//! policy's cap; nothing here reads a clock or a RNG.

use std::time::Duration;

use crate::prosperstack::ApiError;

/// What to do after a failed upstream call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try this call again after the delay.
    RetryAfter(Duration),
    /// The rate-limit window is spent: nothing may be sent before the delay (the budget is
    /// already paused); the call itself was fine and should be sent again then.
    WaitForWindow(Duration),
    /// Retrying cannot help: dead-letter the work.
    GiveUp,
}

/// Exponential backoff: attempt `n` waits up to `base · 2ⁿ`, never above `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
        }
    }
}

/// Exponential backoff with full jitter, capped: attempt 0 waits up to `base`, each attempt
/// doubles the ceiling, which never exceeds `cap`. Full jitter (uniform in `[0, ceiling)`)
/// spreads retries of many failed calls instead of bunching them. `jitter` is clamped to `[0, 1)`.
pub fn backoff(policy: &Backoff, attempt: u32, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling(policy, attempt).mul_f64(jitter)
}

/// `min(cap, base · 2^attempt)`, without overflowing for any attempt.
fn ceiling(policy: &Backoff, attempt: u32) -> Duration {
    2u32.checked_pow(attempt)
        .and_then(|factor| policy.base.checked_mul(factor))
        .map_or(policy.cap, |d| d.min(policy.cap))
}

/// What to do after a failed upstream call, by what the error says the caller must do.
///
/// A 401/403 retries with backoff instead of giving up: a revoked or mistyped key is an
/// operator's problem, fixed by configuration, and the queued data is still good. So the relay
/// keeps the work and keeps trying slowly (the backoff reaches its cap of minutes after a few
/// attempts), instead of dead-lettering everything during the outage.
pub fn decide(error: &ApiError, attempt: u32, policy: &Backoff, jitter: f64) -> Decision {
    match error {
        ApiError::RateLimited { wait } => Decision::WaitForWindow(*wait),
        ApiError::Retryable {
            retry_after: Some(delay),
            ..
        } => Decision::RetryAfter(*delay),
        ApiError::Retryable {
            retry_after: None, ..
        }
        | ApiError::Unauthorized { .. } => Decision::RetryAfter(backoff(policy, attempt, jitter)),
        ApiError::NotFound { .. } | ApiError::Rejected { .. } => Decision::GiveUp,
    }
}

/// Delay before looking again for a subscriber that does not exist yet (ProsperStack imports
/// subscribers from the payment processor in the background): `min, 2·min, 4·min, …`, capped at
/// `max`. No jitter: these waits are long and few, and checking sooner gains nothing.
pub fn waiting_subscriber_delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    ceiling(
        &Backoff {
            base: min,
            cap: max,
        },
        attempt,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff ceilings double from the base and stop at the cap, even for absurd attempts.
    #[test]
    fn backoff_table() {
        let policy = Backoff::default();
        let almost_one = 0.999;
        let cases = [
            (0, 0.5, Duration::from_millis(500)),
            (1, 0.5, Duration::from_secs(1)),
            (3, 0.5, Duration::from_secs(4)),
            (9, 0.5, Duration::from_secs(256)),
            (10, 0.5, Duration::from_secs(300)),
            (40, 0.5, Duration::from_secs(300)),
            (u32::MAX, 0.5, Duration::from_secs(300)),
            (0, 0.0, Duration::ZERO),
        ];
        for (attempt, jitter, want) in cases {
            assert_eq!(backoff(&policy, attempt, jitter), want, "attempt {attempt}");
        }
        assert!(backoff(&policy, 0, almost_one) < policy.base);
        assert!(backoff(&policy, 50, almost_one) < policy.cap);
    }

    /// Jitter outside [0, 1) (or NaN) can never push the delay past the ceiling or below zero.
    #[test]
    fn backoff_jitter_bounds() {
        let policy = Backoff::default();
        for attempt in 0..64 {
            for jitter in [-1.0, 0.0, 0.25, 0.999, 1.0, 7.0, f64::NAN, f64::INFINITY] {
                let d = backoff(&policy, attempt, jitter);
                assert!(d <= ceiling(&policy, attempt), "{attempt} {jitter}");
                assert!(d <= policy.cap);
            }
        }
    }

    /// Every kind of failure maps to the decision its variant promises.
    #[test]
    fn decide_table() {
        let policy = Backoff::default();
        let msg = |s: &str| s.to_owned();
        let cases = [
            (
                ApiError::RateLimited {
                    wait: Duration::from_secs(42),
                },
                Decision::WaitForWindow(Duration::from_secs(42)),
            ),
            (
                ApiError::Retryable {
                    reason: msg("503"),
                    retry_after: Some(Duration::from_secs(9)),
                },
                Decision::RetryAfter(Duration::from_secs(9)),
            ),
            (
                ApiError::Retryable {
                    reason: msg("timeout"),
                    retry_after: None,
                },
                Decision::RetryAfter(Duration::from_secs(2)),
            ),
            (
                ApiError::Unauthorized {
                    status: 401,
                    message: msg("bad key"),
                },
                Decision::RetryAfter(Duration::from_secs(2)),
            ),
            (
                ApiError::NotFound {
                    message: msg("no such subscriber"),
                },
                Decision::GiveUp,
            ),
            (
                ApiError::Rejected {
                    status: 400,
                    message: msg("bad value"),
                },
                Decision::GiveUp,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(decide(&error, 2, &policy, 0.5), want, "{error:?}");
        }
    }

    /// Waiting for a subscriber grows min, 2·min, 4·min… up to max, without overflow.
    #[test]
    fn waiting_subscriber_delay_table() {
        let min = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        let cases = [
            (0, 60),
            (1, 120),
            (2, 240),
            (5, 1920),
            (6, 3600),
            (30, 3600),
            (u32::MAX, 3600),
        ];
        for (attempt, want) in cases {
            let got = waiting_subscriber_delay(attempt, min, max);
            assert_eq!(got, Duration::from_secs(want), "attempt {attempt}");
        }
    }
}
