//! The sandbox: an in-process simulator of the ProsperStack API v1, strict enough that a client
//! which works against it works against the real service.
//!
//! What it simulates: the `/v1/properties` and `/v1/subscribers` endpoints of ProsperStack's
//! API v1 reference, with HTTP basic authentication, cursor pagination, the per-key rate limit
//! and its `RateLimit-*` headers, and the type checks ProsperStack applies to custom property values.
//!
//! What flows in: HTTP requests under `/v1` (authenticated with an API key as the basic-auth
//! username and an empty password), admin requests under `/_sandbox` (no auth; used by the README
//! demo, tests and benchmarks), and the same admin operations as Rust calls on [`Sandbox`].
//! What flows out: JSON answers shaped like the reference, and [`SandboxStats`] counting what the
//! client under test spent (requests per route template, answers per status, 429s, updates).
//!
//! Strictness rules (each is at least as strict as the reference; where it is silent, we reject):
//! - every error answer is JSON `{"error": "…"}`, including 404 for unknown `/v1` paths and 405 for
//!   wrong methods;
//! - auth is checked first; bad auth is answered 401 and counts against no key's rate limit;
//! - at most `rate_limit_requests` requests per key per fixed window; every authenticated answer
//!   carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, a 429 also `Retry-After`;
//! - list endpoints accept only their documented query parameters, each at most once; `limit` must
//!   be an integer in 1..=100 and `cursor` one this sandbox issued;
//! - request bodies must be `Content-Type: application/json` objects without unknown fields;
//! - a subscriber update is atomic: every key must name a live subscriber property and every value
//!   must have the property's exact JSON type (no numeric strings, no `"true"`, dates only as a real
//!   `YYYY-MM-DD`), or nothing changes and the 400 names each offending key in double quotes;
//! - property keys are unique among live properties of both entities, so a key never means two things.
//!
//! Files: `api.rs` the `/v1` routes and the auth / rate-limit / fault gate, `admin.rs` the
//! `/_sandbox` routes, `state.rs` the data and its operations, `property.rs` the property model and
//! create validation, `values.rs` value checks and formatting, `page.rs` cursors, `ratelimit.rs`.

mod admin;
mod api;
mod page;
mod property;
mod ratelimit;
mod state;
mod values;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_api;
#[cfg(test)]
mod tests_update;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use serde::Serialize;

use property::NewProperty;
use ratelimit::RateLimiter;
use state::State;

/// The API key a default sandbox accepts (a test-mode key, by ProsperStack's `key_test_` prefix).
pub const SANDBOX_API_KEY: &str = "key_test_sandbox";

/// How a sandbox behaves: which keys it accepts, its rate limit, and whether it starts with demo data.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Accepted basic-auth usernames.
    pub api_keys: Vec<String>,
    /// Requests allowed per key per window (ProsperStack: 100).
    pub rate_limit_requests: u32,
    /// Length of a rate-limit window (ProsperStack: one minute).
    pub rate_limit_window: Duration,
    /// Start with demo data: eight subscriber properties (one of each type and format), one
    /// subscription property (`plan_tier`) and three subscribers.
    pub seed_demo: bool,
    /// The one verb "Update a subscriber" answers to; the other gets 405 with an `Allow` header.
    pub update_verb: UpdateVerb,
}

/// The HTTP verb of "Update a subscriber". The API reference does not name it, and a real server
/// accepts one: the sandbox accepts exactly the configured one, so a client that guesses wrong
/// meets the 405 it would meet in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateVerb {
    #[default]
    Put,
    Patch,
}

impl std::str::FromStr for UpdateVerb {
    type Err = String;

    fn from_str(s: &str) -> Result<UpdateVerb, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PUT" => Ok(UpdateVerb::Put),
            "PATCH" => Ok(UpdateVerb::Patch),
            other => Err(format!("{other:?} is not PUT or PATCH")),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            api_keys: vec![SANDBOX_API_KEY.to_string()],
            rate_limit_requests: 100,
            rate_limit_window: Duration::from_secs(60),
            seed_demo: true,
            update_verb: UpdateVerb::Put,
        }
    }
}

/// Failures of sandbox operations, shared by the HTTP API and the programmatic admin calls.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// No live object with that id (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The input breaks a rule; the message names the field or property key (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The input clashes with existing data, e.g. a duplicate property key (HTTP 409).
    #[error("{0}")]
    Conflict(String),
}

impl SandboxError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            SandboxError::NotFound(_) => StatusCode::NOT_FOUND,
            SandboxError::Invalid(_) => StatusCode::BAD_REQUEST,
            SandboxError::Conflict(_) => StatusCode::CONFLICT,
        }
    }
}

/// A property as the admin API and tests see it; the same fields as the API's property JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PropertyView {
    pub id: String,
    pub key: String,
    pub name: String,
    pub entity: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub format: Option<String>,
}

/// A subscriber as the admin API and tests see it: its stored values keyed by property key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubscriberView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub platform_id: String,
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// What clients spent against the sandbox's `/v1` API since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    /// Every request to `/v1`, whatever its outcome (401 and 429 included).
    pub requests_total: u64,
    /// Requests per `"METHOD /route/{template}"`; `"METHOD (unmatched)"` for unknown paths.
    pub by_route: BTreeMap<String, u64>,
    /// Requests answered 429.
    pub rate_limited_total: u64,
    /// Requests per answer status.
    pub by_status: BTreeMap<u16, u64>,
    /// Successful `PUT /v1/subscribers/{id}`.
    pub subscriber_updates: u64,
}

/// A running simulator's handle: cheap to clone, every clone sees the same data.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    state: Mutex<State>,
}

impl Sandbox {
    /// A sandbox with the given configuration, seeded with demo data when `seed_demo` is set.
    pub fn new(config: SandboxConfig) -> Sandbox {
        let limiter = RateLimiter::new(config.rate_limit_requests, config.rate_limit_window);
        let mut state = State::new(limiter);
        if config.seed_demo {
            state::seed_demo(&mut state);
        }
        Sandbox {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// The `/v1` API and the `/_sandbox` admin routes; every error answer has a JSON body.
    pub fn router(&self) -> Router {
        api::router(self.clone())
            .merge(admin::router(self.clone()))
            .layer(axum::middleware::from_fn(api::json_errors))
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Creates a property without a format, with the same validation as `POST /v1/properties`.
    pub fn create_property(
        &self,
        key: &str,
        name: &str,
        entity: &str,
        kind: &str,
    ) -> Result<PropertyView, SandboxError> {
        let new = NewProperty::from_parts(key, name, entity, kind, None)?;
        self.state().create_property(new).map(|p| p.view())
    }

    /// Creates a subscriber as the payment-processor import would, with a fresh `cus_…` platform id.
    /// Emails need not be unique: real accounts can hold two customers with one email.
    pub fn create_subscriber(&self, email: &str, name: &str) -> SubscriberView {
        self.state().create_subscriber(email, name)
    }

    /// Sets (or with `null` / `""` deletes) one property value, validated like `PUT /v1/subscribers/{id}`.
    pub fn set_subscriber_property(
        &self,
        subscriber_id: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<(), SandboxError> {
        let mut changes = serde_json::Map::new();
        changes.insert(key.to_string(), value);
        self.state().update_subscriber(subscriber_id, &changes)
    }

    /// The first subscriber (in creation order) with exactly this email.
    pub fn subscriber_by_email(&self, email: &str) -> Option<SubscriberView> {
        let state = self.state();
        let found = state.subscribers().find(|s| s.email == email);
        found.map(|s| state.subscriber_view(s))
    }

    /// Every live property of both entities, in creation order, as `GET /v1/properties` lists them.
    pub fn properties(&self) -> Vec<PropertyView> {
        self.state().live_properties().map(|p| p.view()).collect()
    }

    /// Every subscriber, in creation order.
    pub fn subscribers(&self) -> Vec<SubscriberView> {
        let state = self.state();
        state
            .subscribers()
            .map(|s| state.subscriber_view(s))
            .collect()
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> SandboxStats {
        self.state().stats.clone()
    }

    /// Zeroes the request counters (rate-limit windows are left alone: they model the server).
    pub fn reset_stats(&self) {
        self.state().stats = SandboxStats::default();
    }

    /// The next `count` authenticated /v1 requests answer `status` (e.g. 503) with an error body,
    /// before any other processing (they still count against the rate limit). A `status` that is
    /// not a valid HTTP status code is answered as 500.
    pub fn inject_failures(&self, status: u16, count: u32) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.state().inject_failures(status, count);
    }

    /// Moves the sandbox's rate-limit clock forward, so a test can end a window without waiting.
    /// (Pausing tokio's clock needs tokio's `test-util` feature; this works without it.)
    pub fn advance_clock(&self, by: Duration) {
        self.state().clock_skew += by;
    }

    fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Locks the state. A panic while holding the lock cannot leave it half-changed (every
    /// operation validates before it mutates), so a poisoned lock is safe to recover.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
