//! Wire format of what ProsperStack announces in headers: `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` and `Retry-After`.
//!
//! In: header values as text, and the current wall-clock time (for `Retry-After` dates).
//! Out: a delay or a count, or `None` when a header is absent or unparsable.
//! Stays true: a delay is never negative (a date in the past means "now") and never longer
//! than [`MAX_PAUSE`]; fractions of a second round up, so the relay never comes back early.

use std::time::{Duration, SystemTime};

pub use crate::budget::MAX_PAUSE;

/// The delay a response asks for, headers first: `RateLimit-Reset` (seconds), then `Retry-After`
/// (seconds or an HTTP-date, relative to `now`). `None` when both are absent or unparsable.
pub fn delay_from_headers(
    ratelimit_reset: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    let from_reset = ratelimit_reset.and_then(parse_seconds);
    let from_retry_after = || retry_after.and_then(|v| parse_retry_after(v, now));
    from_reset
        .or_else(from_retry_after)
        .map(|d| d.min(MAX_PAUSE))
}

/// Non-negative delta-seconds, as both headers use. Fractions are accepted (some servers send
/// them) and rounded up.
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

/// The `RateLimit-*` headers of one answer, each `None` when absent or unparsable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Requests allowed per window for this key.
    pub limit: Option<u32>,
    /// Requests left in the current window.
    pub remaining: Option<u32>,
    /// Time until the window resets.
    pub reset: Option<Duration>,
}

impl RateLimitHeaders {
    pub fn parse(limit: Option<&str>, remaining: Option<&str>, reset: Option<&str>) -> Self {
        RateLimitHeaders {
            limit: limit.and_then(parse_count),
            remaining: remaining.and_then(parse_count),
            reset: reset.and_then(parse_seconds),
        }
    }
}

/// A count; the draft also allows a policy after it (`100, 100;w=60`), of which the first
/// number is the one that counts.
fn parse_count(value: &str) -> Option<u32> {
    value.split([',', ';']).next()?.trim().parse().ok()
}

/// Delta-seconds, else an HTTP-date in any of the three forms RFC 9110 says a recipient must
/// accept (IMF-fixdate, RFC 850, asctime).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Some(d) = parse_seconds(value) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    // A date already past asks for an immediate retry.
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts are read from plain numbers and from the draft's policy form; garbage is None.
    #[test]
    fn rate_limit_seen_table() {
        let seen = RateLimitHeaders::parse(Some("100"), Some(" 42 "), Some("17"));
        assert_eq!(
            seen,
            RateLimitHeaders {
                limit: Some(100),
                remaining: Some(42),
                reset: Some(Duration::from_secs(17)),
            }
        );
        let policy = RateLimitHeaders::parse(Some("100, 100;w=60"), Some("-1"), None);
        assert_eq!((policy.limit, policy.remaining), (Some(100), None));
        assert_eq!(
            RateLimitHeaders::parse(None, None, None),
            RateLimitHeaders::default()
        );
    }

    /// 2015-10-21T07:28:00Z, the moment the table's dates are measured from.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    /// RateLimit-Reset first, then Retry-After in seconds or as a date in each of the three
    /// forms; garbage falls through; past dates mean now; huge values are capped.
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
            (Some("99999999999"), None, Some(MAX_PAUSE)),
            (None, Some("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_PAUSE)),
        ];
        for (reset, retry_after, want) in cases {
            let got = delay_from_headers(*reset, *retry_after, now());
            assert_eq!(got, *want, "reset={reset:?} retry_after={retry_after:?}");
        }
    }
}
