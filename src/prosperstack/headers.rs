//! Wire format of the delays ProsperStack announces: `RateLimit-Reset` and `Retry-After`.
//!
//! In: header values as text, and the current wall-clock time (for `Retry-After` dates).
//! Out: a delay, or `None` when a header is absent or unparsable.
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
