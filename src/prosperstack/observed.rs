//! What the client has seen of ProsperStack: whether it accepts the key, the last success, the
//! last error and the last `RateLimit-*` headers, for `/status`, metrics and delivery's pauses.
//!
//! In: every response's status and headers, and every failure, from the client.
//! Out: a [`Seen`] snapshot (serialisable, no email, no key) and [`Observed::key_refused`].
//! Stays true: a refused key is logged at error at most once a [`KEY_LOG_INTERVAL`], however
//! often it is tried, and once more when the key works again; error texts are kept without
//! emails.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::telemetry::redact_emails;

/// How often a refused key is logged at error while it stays refused.
pub const KEY_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Whether ProsperStack accepts the configured key, as far as the relay has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// No answer yet.
    #[default]
    Unknown,
    Accepted,
    /// The last answer was 401 or 403.
    Refused,
}

/// The last `RateLimit-*` headers ProsperStack sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSeen {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub reset_secs: Option<u64>,
    pub seen_ms: i64,
}

/// A snapshot of what the client has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub key: KeyState,
    /// Since when the key has been refused, while it is.
    pub key_refused_since_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub rate_limit: Option<RateLimitSeen>,
    /// Requests sent since start.
    pub requests: u64,
}

/// Shared by every clone of the client.
pub struct Observed {
    clock: SharedClock,
    state: Mutex<(Seen, Option<Instant>)>,
}

impl Observed {
    pub fn new(clock: SharedClock) -> Observed {
        Observed {
            clock,
            state: Mutex::new((Seen::default(), None)),
        }
    }

    pub fn snapshot(&self) -> Seen {
        self.lock().0.clone()
    }

    /// Whether the last answer refused the key.
    pub fn key_refused(&self) -> bool {
        self.lock().0.key == KeyState::Refused
    }

    pub(super) fn rate_limit(
        &self,
        limit: Option<u32>,
        remaining: Option<u32>,
        reset: Option<u64>,
    ) {
        if limit.is_none() && remaining.is_none() && reset.is_none() {
            return;
        }
        let seen_ms = self.clock.wall_ms();
        self.lock().0.rate_limit = Some(RateLimitSeen {
            limit,
            remaining,
            reset_secs: reset,
            seen_ms,
        });
    }

    /// A request is about to go out.
    pub(super) fn request_sent(&self) {
        self.lock().0.requests += 1;
    }

    /// A 2xx answer: the key works.
    pub(super) fn success(&self) {
        let now = self.clock.wall_ms();
        let mut state = self.lock();
        if state.0.key == KeyState::Refused {
            tracing::info!("ProsperStack accepts the API key again; delivery resumes");
        }
        state.0.key = KeyState::Accepted;
        state.0.key_refused_since_ms = None;
        state.0.last_success_ms = Some(now);
        state.1 = None;
    }

    /// A failed call; a refused key is logged here, at error, at most once a minute.
    pub(super) fn failure(&self, error: &str, key_refused: bool) {
        let (now, now_ms) = (self.clock.now(), self.clock.wall_ms());
        let mut state = self.lock();
        let error = redact_emails(error);
        if key_refused {
            state.0.key = KeyState::Refused;
            state.0.key_refused_since_ms.get_or_insert(now_ms);
            let due = state
                .1
                .is_none_or(|at| now.duration_since(at) >= KEY_LOG_INTERVAL);
            if due {
                state.1 = Some(now);
                tracing::error!(%error, "ProsperStack refuses the API key: delivery is paused and events stay queued until PROSPERSTACK_API_KEY is fixed");
            }
        }
        state.0.last_error = Some(error);
        state.0.last_error_ms = Some(now_ms);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Seen, Option<Instant>)> {
        // Plain values, valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, SimulatedClock};

    /// A refused key is remembered since its first refusal, cleared by a success, and the
    /// error text keeps no email.
    #[test]
    fn key_state_follows_answers() {
        let clock = Arc::new(SimulatedClock::new());
        let observed = Observed::new(clock.clone());
        assert_eq!(observed.snapshot().key, KeyState::Unknown);
        observed.failure("401: bad key for ops@example.com", true);
        let first = clock.wall_ms();
        clock.advance(Duration::from_secs(5));
        observed.failure("401: bad key", true);
        let seen = observed.snapshot();
        assert!(observed.key_refused());
        assert_eq!(seen.key_refused_since_ms, Some(first));
        assert_eq!(seen.last_error.as_deref(), Some("401: bad key"));
        observed.failure("503: down for user@example.com", false);
        assert_eq!(
            observed.snapshot().last_error.as_deref(),
            Some("503: down for [email]")
        );
        observed.success();
        let seen = observed.snapshot();
        assert_eq!(
            (seen.key, seen.key_refused_since_ms),
            (KeyState::Accepted, None)
        );
        assert!(seen.last_success_ms.is_some());
    }

    /// Headers are kept when any is present, and a response without them keeps the last.
    #[test]
    fn rate_limit_headers_are_kept() {
        let observed = Observed::new(Arc::new(SimulatedClock::new()));
        observed.rate_limit(Some(100), Some(42), Some(17));
        observed.rate_limit(None, None, None);
        let seen = observed.snapshot().rate_limit.expect("headers seen");
        assert_eq!(
            (seen.limit, seen.remaining, seen.reset_secs),
            (Some(100), Some(42), Some(17))
        );
    }
}
