//! Retry decisions: pure functions from a failed upstream call to what to do next.
//!
//! In: an [`ApiError`] from the ProsperStack client with the attempt number, response headers,
//! a backoff policy and a jitter sample in `[0, 1)` (passed in, so every function is pure).
//! Out: a [`Decision`] (retry after a delay, wait for the rate-limit window, give up) or a delay.
//! Invariants: the server's own delay (headers) wins over our backoff; backoff never exceeds the
//! policy's cap; no delay exceeds [`MAX_SERVER_DELAY`]; nothing here reads a clock or a RNG.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::prosperstack::ApiError;

/// Longest delay taken from a header. ProsperStack's window is a minute; a larger value is a
/// server bug, and asking again after an hour beats stalling for a year (or overflowing a date).
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(3600);

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

/// The delay a response asks for, headers first: `RateLimit-Reset` (seconds), then `Retry-After`
/// (seconds or an HTTP-date, relative to `now`; a date in the past means "now"). `None` when both
/// are absent or unparsable. Capped at [`MAX_SERVER_DELAY`].
pub fn delay_from_headers(
    ratelimit_reset: Option<&str>,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let from_reset = ratelimit_reset.and_then(parse_seconds);
    let from_retry_after = || retry_after.and_then(|v| parse_retry_after(v, now));
    from_reset
        .or_else(from_retry_after)
        .map(|d| d.min(MAX_SERVER_DELAY))
}

/// Non-negative delta-seconds, as both headers use. Fractions are accepted (some servers send
/// them) and rounded up, so we never come back early.
pub fn parse_seconds(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let secs = value.parse::<f64>().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs(secs.ceil().min(u64::MAX as f64) as u64))
}

fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Some(d) = parse_seconds(value) {
        return Some(d);
    }
    let at = parse_http_date(value.trim())?;
    // A date already past asks for an immediate retry.
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// An HTTP-date in any of the three forms RFC 9110 says a recipient must accept:
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 and asctime.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc2822(value) {
        return Some(d.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
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

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test date")
            .with_timezone(&Utc)
    }

    const NOW: &str = "2015-10-21T07:28:00Z";

    /// Header parsing: RateLimit-Reset first, then Retry-After in seconds or as a date; garbage
    /// falls through; past dates mean now; huge values are capped.
    #[test]
    fn delay_from_headers_table() {
        let secs = |s| Some(Duration::from_secs(s));
        let cases: &[(Option<&str>, Option<&str>, Option<Duration>)] = &[
            (None, None, None),
            (Some("30"), None, secs(30)),
            (Some(" 7 "), Some("99"), secs(7)),
            (Some("0"), None, secs(0)),
            (Some("1.2"), None, secs(2)),
            (Some("soon"), Some("12"), secs(12)),
            (Some("-5"), Some("12"), secs(12)),
            (None, Some("120"), secs(120)),
            (None, Some("Wed, 21 Oct 2015 07:28:45 GMT"), secs(45)),
            (None, Some("Wednesday, 21-Oct-15 07:29:00 GMT"), secs(60)),
            (None, Some("Wed Oct 21 07:30:00 2015"), secs(120)),
            (None, Some("Wed, 21 Oct 2015 07:00:00 GMT"), secs(0)),
            (None, Some("tomorrow-ish"), None),
            (Some(""), Some(""), None),
            (Some("NaN"), Some("inf"), None),
            (Some("99999999999"), None, Some(MAX_SERVER_DELAY)),
        ];
        for (reset, retry_after, want) in cases {
            let got = delay_from_headers(*reset, *retry_after, at(NOW));
            assert_eq!(got, *want, "reset={reset:?} retry_after={retry_after:?}");
        }
    }

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
