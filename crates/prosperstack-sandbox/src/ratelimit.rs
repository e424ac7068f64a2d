//! The per-key rate limit, as a fixed window: a window of `window` opens at the first request after
//! the previous one ended, and admits `limit` requests. In: an API key and the current instant;
//! out: whether the request is admitted and the `RateLimit-*` header values to answer with.
//! Time is a parameter so tests can step it; the caller reads tokio's clock.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

/// Fixed-window counters, one window per API key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: u32,
    window: Duration,
    windows: HashMap<String, Window>,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    ends: Instant,
    used: u32,
}

/// The outcome of one request against the limit, and what the headers say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) admitted: bool,
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Whole seconds until the window resets, rounded up, at least 1.
    pub(crate) reset_secs: u64,
}

impl RateLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            limit,
            window,
            windows: HashMap::new(),
        }
    }

    /// Counts one request by `key` at `now`; a request beyond the limit is refused and not counted.
    pub(crate) fn check(&mut self, key: &str, now: Instant) -> Decision {
        let fresh = Window {
            ends: now + self.window,
            used: 0,
        };
        let window = self.windows.entry(key.to_string()).or_insert(fresh);
        if now >= window.ends {
            *window = fresh;
        }
        let admitted = window.used < self.limit;
        if admitted {
            window.used += 1;
        }
        Decision {
            admitted,
            limit: self.limit,
            remaining: self.limit - window.used,
            reset_secs: ceil_secs(window.ends - now).max(1),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Decision {
    /// Adds `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, and on a refusal `Retry-After`.
    pub(crate) fn write_headers(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: u64| {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        };
        put("ratelimit-limit", u64::from(self.limit));
        put("ratelimit-remaining", u64::from(self.remaining));
        put("ratelimit-reset", self.reset_secs);
        if !self.admitted {
            put("retry-after", self.reset_secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// Three requests pass, the fourth is refused, and a new window opens once the old one ends.
    #[test]
    fn fixed_window() {
        let mut limiter = RateLimiter::new(3, MINUTE);
        let start = Instant::now();
        for remaining in [2, 1, 0] {
            let d = limiter.check("k", start);
            assert!(d.admitted);
            assert_eq!(d.remaining, remaining);
        }
        let refused = limiter.check("k", start + Duration::from_secs(59));
        assert!(!refused.admitted);
        assert_eq!((refused.remaining, refused.reset_secs), (0, 1));
        let next = limiter.check("k", start + MINUTE);
        assert!(next.admitted);
        assert_eq!((next.remaining, next.reset_secs), (2, 60));
    }

    /// The window starts at the first request after the previous window, not on a fixed grid.
    #[test]
    fn window_starts_at_first_request() {
        let mut limiter = RateLimiter::new(1, MINUTE);
        let start = Instant::now();
        assert!(limiter.check("k", start).admitted);
        let later = start + Duration::from_secs(90);
        assert_eq!(limiter.check("k", later).reset_secs, 60);
        assert!(!limiter.check("k", later + Duration::from_secs(59)).admitted);
    }

    /// Reset rounds up to whole seconds; keys have separate windows.
    #[test]
    fn reset_rounds_up_and_keys_are_separate() {
        let mut limiter = RateLimiter::new(1, MINUTE);
        let start = Instant::now();
        limiter.check("a", start);
        let d = limiter.check("a", start + Duration::from_millis(500));
        assert_eq!(d.reset_secs, 60);
        assert!(limiter.check("b", start).admitted);
    }

    /// A refusal carries Retry-After equal to the reset; an admitted request does not.
    #[test]
    fn headers() {
        let mut headers = HeaderMap::new();
        let refused = Decision {
            admitted: false,
            limit: 3,
            remaining: 0,
            reset_secs: 42,
        };
        refused.write_headers(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "3");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["ratelimit-reset"], "42");
        assert_eq!(headers["retry-after"], "42");
        let mut headers = HeaderMap::new();
        Decision {
            admitted: true,
            ..refused
        }
        .write_headers(&mut headers);
        assert!(headers.get("retry-after").is_none());
    }
}
