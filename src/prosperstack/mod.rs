//! ProsperStack API client: typed requests and responses over HTTP; knows nothing of Segment.
//!
//! In: calls such as `find_subscriber_by_email` or `update_subscriber`, with an [`ApiKey`], a
//! base URL (injectable: tests and the sandbox point it elsewhere), the shared [`Budget`] and
//! [`Metrics`].
//! Out: typed values ([`Property`], [`Subscriber`], [`Page`]) or an [`ApiError`] sorted by what
//! the caller must do: retry later, wait for the rate-limit window, fix the key, or give up.
//! Invariants:
//! - Every request first waits for `budget.acquire()`; every response, whatever its status,
//!   feeds `RateLimit-Remaining` / `RateLimit-Reset` back to the budget; a 429 pauses it.
//! - Redirects are not followed: each request the budget admits is exactly one request sent,
//!   unless the client's send gate ([`Client::with_send_gate`]) holds it back: a replica that
//!   lost the delivery lease while it waited for the budget sends nothing more.
//! - Metrics are labelled with endpoint templates ("PUT /v1/subscribers/{id}"), never raw paths;
//!   an update's label names the verb it was actually sent with.
//! - Updates use the configured [`UpdateMethod`]; an update answered 405 is sent once more with
//!   the other verb, and when that works every later update of every clone uses it (one warn
//!   says so). Both answered 405 is [`ApiError::Retryable`]: the work stays queued.
//! - The key never reaches a log; a failed call is logged once, here, at warn, without emails
//!   (callers need not log it again). Request URLs, which may hold an email, never reach a log.

mod headers;
mod observed;
mod types;
mod verb;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::budget::Budget;
use crate::metrics::Metrics;
use crate::telemetry::redact_emails;
use headers::delay_from_headers;
use verb::CurrentVerb;

pub use headers::RateLimitHeaders;
pub use observed::{KeyState, Observed, RateLimitSeen, Seen};
pub use types::{
    ApiKey, InvalidApiKey, NewProperty, Page, Property, PropertyType, PropertyValue, Subscriber,
};
pub use verb::UpdateMethod;

/// Page size for list endpoints: the API's maximum, so a directory warm-up spends the fewest
/// requests.
const PAGE_LIMIT: &str = "100";

/// How much of a non-JSON error body is kept in a message.
const MAX_MESSAGE_CHARS: usize = 200;

const LIST_PROPERTIES: &str = "GET /v1/properties";
const CREATE_PROPERTY: &str = "POST /v1/properties";
const LIST_SUBSCRIBERS: &str = "GET /v1/subscribers";

/// A failed ProsperStack call, sorted by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 5xx, 408, timeouts, connection errors, an unparsable 2xx body: try again later
    /// (after `retry_after` when the server named a delay).
    #[error("ProsperStack unavailable, retry later: {reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 429: the window is spent; nothing may be sent for `wait` (the budget is already paused).
    #[error("ProsperStack rate limit reached; the window resets in {wait:?}")]
    RateLimited { wait: Duration },
    /// 401/403: the key is wrong or revoked, an operator must fix the configuration.
    #[error("ProsperStack refused the API key ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// 404: the subscriber or property does not exist.
    #[error("not found in ProsperStack: {message}")]
    NotFound { message: String },
    /// Any other 4xx, with the API's `{"error": "..."}` message: sending it again cannot help.
    /// Status 0 means the request could not even be built (bad base URL, HTTP client setup).
    #[error("ProsperStack rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
}

/// The ProsperStack API client. Cheap to clone; clones share the connection pool and budget.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: ApiKey,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    observed: Arc<Observed>,
    /// The verb updates use now; shared by clones, so a switch after a 405 holds for all.
    update: Arc<CurrentVerb>,
    /// Asked after the budget admits a request, before it is sent; `None`: always send.
    gate: Option<SendGate>,
}

/// Whether a request may still go out, asked just before it is sent.
pub type SendGate = Arc<dyn Fn() -> bool + Send + Sync>;

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("key", &self.key)
            .field("update_method", &self.update.get())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the API at `base_url` (paths `/v1/…` are appended, keeping any path prefix).
    /// `timeout` bounds each request, connecting included.
    pub fn new(
        base_url: Url,
        key: ApiKey,
        budget: Arc<Budget>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Result<Client, ApiError> {
        let base = normalise_base(base_url)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("prosperstack-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup_error(format!("cannot build the HTTP client: {e}")))?;
        let observed = Arc::new(Observed::new(budget.clock().clone()));
        Ok(Client {
            http,
            base,
            key,
            budget,
            metrics,
            observed,
            update: Arc::new(CurrentVerb::new(UpdateMethod::default())),
            gate: None,
        })
    }

    /// The same client asking `gate` before each request goes out (after the budget's wait):
    /// when it says no, the request is not sent and is answered [`ApiError::Retryable`]. The
    /// relay's deliverer gates on holding the delivery lease, so a leader that lost it while
    /// it waited cannot overwrite what its successor sent.
    pub fn with_send_gate(mut self, gate: SendGate) -> Client {
        self.gate = Some(gate);
        self
    }

    /// The same client sending updates with `method` first (`update_method`); the returned
    /// client and its clones share the verb, not with this one.
    pub fn with_update_method(mut self, method: UpdateMethod) -> Client {
        self.update = Arc::new(CurrentVerb::new(method));
        self
    }

    /// The verb the next update is sent with.
    pub fn update_method(&self) -> UpdateMethod {
        self.update.get()
    }

    /// The budget every request of this client passes.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// What this client (and its clones) has seen of ProsperStack.
    pub fn observed(&self) -> &Arc<Observed> {
        &self.observed
    }

    /// One page of subscriber properties: `GET /v1/properties?entity=subscriber&limit=100`.
    pub async fn list_properties(&self, cursor: Option<&str>) -> Result<Page<Property>, ApiError> {
        Ok(self.properties_page(cursor).await?.0)
    }

    /// One page of subscriber properties with the rate-limit headers of its answer, for a
    /// setup check that wants to see what the server says of this key.
    pub async fn properties_page(
        &self,
        cursor: Option<&str>,
    ) -> Result<(Page<Property>, RateLimitHeaders), ApiError> {
        let mut url = self.url(&["properties"]);
        url.query_pairs_mut()
            .append_pair("entity", "subscriber")
            .append_pair("limit", PAGE_LIMIT);
        append_cursor(&mut url, cursor);
        let (headers, page) = self
            .fetch_quietly(LIST_PROPERTIES, self.http.get(url))
            .await;
        let page = page.map_err(|e| self.failed(LIST_PROPERTIES, e))?;
        Ok((page, rate_limit_headers(&headers)))
    }

    /// Every subscriber property, walking all pages.
    pub async fn all_properties(&self) -> Result<Vec<Property>, ApiError> {
        let mut all = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.list_properties(cursor.as_deref()).await?;
            all.extend(page.data);
            match page.next_cursor {
                None => return Ok(all),
                // A cursor seen before would loop forever, spending the whole budget.
                Some(next) if !seen.insert(next.clone()) => {
                    let reason = "the property list repeated a cursor".to_owned();
                    return Err(self.failed(LIST_PROPERTIES, retryable(reason)));
                }
                Some(next) => cursor = Some(next),
            }
        }
    }

    /// Creates a custom property: `POST /v1/properties`.
    pub async fn create_property(&self, new: &NewProperty) -> Result<Property, ApiError> {
        let request = self.http.post(self.url(&["properties"])).json(new);
        self.fetch(CREATE_PROPERTY, request).await
    }

    /// The subscriber with this email, if any: `GET /v1/subscribers?email=…&limit=1`.
    ///
    /// Only a subscriber whose email matches (ignoring ASCII case) is returned: should the API
    /// ever ignore the filter, updating its first subscriber would write to the wrong person.
    pub async fn find_subscriber_by_email(
        &self,
        email: &str,
    ) -> Result<Option<Subscriber>, ApiError> {
        let found = self
            .find_one("email", email, |s| {
                s.email.trim().eq_ignore_ascii_case(email.trim())
            })
            .await?;
        let subscriber = crate::telemetry::email_tag(email);
        tracing::debug!(%subscriber, found = found.is_some(), "subscriber look-up");
        Ok(found)
    }

    /// The subscriber with this platform ID, if any: `GET /v1/subscribers?platform_id=…&limit=1`.
    /// Only one whose platform ID is exactly this one is returned (platform IDs are
    /// case-sensitive), for the same reason as [`Client::find_subscriber_by_email`].
    pub async fn find_subscriber_by_platform_id(
        &self,
        platform_id: &str,
    ) -> Result<Option<Subscriber>, ApiError> {
        let found = self
            .find_one("platform_id", platform_id, |s| {
                s.platform_id.as_deref() == Some(platform_id)
            })
            .await?;
        tracing::debug!(found = found.is_some(), "subscriber look-up by platform ID");
        Ok(found)
    }

    /// `GET /v1/subscribers?<filter>=<value>&limit=1`, keeping the subscriber only if `is_it`
    /// says it is the one asked for.
    async fn find_one(
        &self,
        filter: &str,
        value: &str,
        is_it: impl Fn(&Subscriber) -> bool,
    ) -> Result<Option<Subscriber>, ApiError> {
        let mut url = self.url(&["subscribers"]);
        url.query_pairs_mut()
            .append_pair(filter, value)
            .append_pair("limit", "1");
        let page: Page<Subscriber> = self.fetch(LIST_SUBSCRIBERS, self.http.get(url)).await?;
        let returned = page.data.len();
        let found = page.data.into_iter().find(|s| is_it(s));
        if found.is_none() && returned > 0 {
            tracing::warn!(
                filter,
                "ProsperStack answered a subscriber look-up with a different subscriber"
            );
        }
        Ok(found)
    }

    /// One page of subscribers: `GET /v1/subscribers?limit=100[&cursor=…]`.
    pub async fn list_subscribers(
        &self,
        cursor: Option<&str>,
    ) -> Result<Page<Subscriber>, ApiError> {
        let mut url = self.url(&["subscribers"]);
        url.query_pairs_mut().append_pair("limit", PAGE_LIMIT);
        append_cursor(&mut url, cursor);
        self.fetch(LIST_SUBSCRIBERS, self.http.get(url)).await
    }

    /// Sets custom properties (by property key; `null` or `""` deletes a value):
    /// `PUT` (or `PATCH`, see [`UpdateMethod`]) `/v1/subscribers/{id}` with
    /// `{"properties": {...}}`. A 405 is answered by trying the other verb once.
    pub async fn update_subscriber(
        &self,
        id: &str,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Subscriber, ApiError> {
        let url = self.url(&["subscribers", id]);
        let body = serde_json::json!({ "properties": properties });
        let first = self.update.get();
        let refused = match self.send_update(first, &url, &body).await {
            Err(ApiError::Rejected {
                status: 405,
                message,
            }) => message,
            other => return other.map_err(|e| self.failed(first.endpoint(), e)),
        };
        let second = first.other();
        match self.send_update(second, &url, &body).await {
            Ok(subscriber) => {
                if self.update.switch(first, second) {
                    tracing::warn!("ProsperStack answered 405 to {first} updates; {second} works — set update_method = \"{second}\" (RELAY_UPDATE_METHOD)");
                }
                Ok(subscriber)
            }
            Err(ApiError::Rejected { status: 405, .. }) => {
                let error = both_verbs_refused(first, second, &refused);
                Err(self.failed(second.endpoint(), error))
            }
            Err(e) => Err(self.failed(second.endpoint(), e)),
        }
    }

    /// One update request with `method`; a failure is handed back unlogged (the caller decides
    /// whether a 405 is a failure at all).
    async fn send_update(
        &self,
        method: UpdateMethod,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<Subscriber, ApiError> {
        let request = self.http.request(method.method(), url.clone()).json(body);
        self.fetch_quietly(method.endpoint(), request).await.1
    }

    /// `base/v1/<segments…>`, each segment percent-escaped by `url`.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // normalise_base() rejected URLs that cannot take path segments, so this always applies.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    /// Sends a request and decodes a 2xx body as `T`; a failure is logged once, here.
    async fn fetch<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<T, ApiError> {
        let (_, result) = self.fetch_quietly(endpoint, request).await;
        result.map_err(|e| self.failed(endpoint, e))
    }

    /// Sends a request and decodes a 2xx body as `T`, with the answer's headers (empty when
    /// none came); a failure is handed back unlogged, for the caller to log once.
    async fn fetch_quietly<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> (HeaderMap, Result<T, ApiError>) {
        let (headers, body) = match self.send(endpoint, request).await {
            Ok(answer) => answer,
            Err(e) => return (HeaderMap::new(), Err(e)),
        };
        let decoded = serde_json::from_slice(&body)
            .map_err(|e| retryable(format!("unparsable response from {endpoint}: {e}")));
        (headers, decoded)
    }

    /// The one place a request goes out: budget first, then HTTP; headers back to the budget,
    /// one metric per request, the status sorted into an [`ApiError`] (not logged here).
    async fn send(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<(HeaderMap, Bytes), ApiError> {
        self.budget.acquire().await;
        if self.gate.as_ref().is_some_and(|may_send| !may_send()) {
            return Err(retryable(
                "not sent: this replica no longer holds the delivery lease".into(),
            ));
        }
        self.observed.request_sent();
        let started = Instant::now();
        let sent = request.basic_auth(self.key.expose(), Some("")).send().await;
        let response = sent.map_err(|e| self.no_response(endpoint, e, started))?;
        let status = response.status();
        let headers = response.headers().clone();
        self.observe(&headers);
        if status.is_success() {
            self.observed.success();
            self.metrics.set_key_refused(false);
        }
        let body = response.bytes().await;
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics
            .upstream_response(endpoint, status.as_str(), elapsed);
        let body = match body {
            Ok(body) => body,
            Err(e) if status.is_success() => return Err(transport_error(e)),
            // The status already says what went wrong; the message is a nicety.
            Err(_) => Bytes::new(),
        };
        let body = self.judge(status, &headers, body)?;
        Ok((headers, body))
    }

    /// A request that got no response at all: counted by error class, made an error.
    fn no_response(&self, endpoint: &'static str, e: reqwest::Error, started: Instant) -> ApiError {
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics
            .upstream_response(endpoint, transport_class(&e), elapsed);
        transport_error(e)
    }

    /// The body of a success; for anything else the error, after pausing the budget on a 429.
    fn judge(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        let now = wall_time(self.budget.clock().wall_ms());
        let Some(error) = classify(status, headers, &body, self.budget.limit().1, now) else {
            return Ok(body);
        };
        if let ApiError::RateLimited { wait } = &error {
            self.budget.pause_for(*wait);
        }
        Err(error)
    }

    /// The server's view of the budget is the truth: pass it on with every response.
    fn observe(&self, headers: &HeaderMap) {
        let seen = rate_limit_headers(headers);
        self.budget.observe(seen.remaining, seen.reset);
        self.observed
            .rate_limit(seen.limit, seen.remaining, seen.reset.map(|d| d.as_secs()));
        if let Some(remaining) = seen.remaining {
            self.metrics.set_budget_remaining(remaining);
        }
    }

    /// Logs a failed call once, without the key, URL or any email, and hands the error back.
    /// A refused key is logged by [`Observed`], at error and at most once a minute, since
    /// every request fails the same way until an operator fixes it.
    fn failed(&self, endpoint: &'static str, error: ApiError) -> ApiError {
        let key_refused = matches!(error, ApiError::Unauthorized { .. });
        self.observed.failure(&error.to_string(), key_refused);
        if key_refused {
            self.metrics.set_key_refused(true);
        } else {
            tracing::warn!(endpoint, error = %redact_emails(&error.to_string()), "ProsperStack call failed");
        }
        error
    }
}

/// Sorts a response by status: `None` for success, else the error the caller must handle.
/// `window` is the wait for a 429 whose headers name no delay; `now` dates a `Retry-After` date.
fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    window: Duration,
    now: SystemTime,
) -> Option<ApiError> {
    if status.is_success() {
        return None;
    }
    let reset = header(headers, "ratelimit-reset");
    let retry_after = header(headers, "retry-after");
    let message = || error_message(status, body);
    Some(match status.as_u16() {
        429 => ApiError::RateLimited {
            wait: delay_from_headers(reset, retry_after, now).unwrap_or(window),
        },
        401 | 403 => ApiError::Unauthorized {
            status: status.as_u16(),
            message: message(),
        },
        404 => ApiError::NotFound { message: message() },
        // RateLimit-Reset speaks of the rate window, not of an outage: only Retry-After counts.
        408 | 500..=599 => ApiError::Retryable {
            reason: format!("{}: {}", status.as_u16(), message()),
            retry_after: delay_from_headers(None, retry_after, now),
        },
        // Other 4xx, and 1xx/3xx that a JSON API should never send (redirects are not followed).
        code => ApiError::Rejected {
            status: code,
            message: message(),
        },
    })
}

/// The API's `{"error": "..."}` message, else the body's text (truncated), else the status text.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A request that never got a response. Timeouts and connection failures are transient; the
/// URL (which may hold an email) is stripped from the message.
fn transport_error(error: reqwest::Error) -> ApiError {
    if error.is_builder() {
        return setup_error(error.without_url().to_string());
    }
    let class = transport_class(&error);
    retryable(format!("{class}: {}", error.without_url()))
}

/// The metric's status label for a request without a response.
fn transport_class(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "error"
    }
}

fn retryable(reason: String) -> ApiError {
    ApiError::Retryable {
        reason,
        retry_after: None,
    }
}

fn setup_error(message: String) -> ApiError {
    ApiError::Rejected { status: 0, message }
}

/// Drops query and fragment, and refuses URLs that cannot take path segments (`mailto:`…).
fn normalise_base(mut base: Url) -> Result<Url, ApiError> {
    if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
        return Err(setup_error(format!(
            "the ProsperStack base URL must be http(s) with a host, not {base}"
        )));
    }
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

fn append_cursor(url: &mut Url, cursor: Option<&str>) {
    if let Some(cursor) = cursor {
        url.query_pairs_mut().append_pair("cursor", cursor);
    }
}

/// Both verbs answered 405. Retryable, not Rejected: nothing is wrong with the data, so the
/// work must stay queued (a Rejected update would become dead letters at once) while an
/// operator looks at what answers at the API's URL; delivery backs off meanwhile.
fn both_verbs_refused(first: UpdateMethod, second: UpdateMethod, message: &str) -> ApiError {
    retryable(format!(
        "405 to both {first} and {second} /v1/subscribers/{{id}} ({message}); the updates stay \
         queued: check that PROSPERSTACK_API_URL is the ProsperStack API"
    ))
}

fn rate_limit_headers(headers: &HeaderMap) -> RateLimitHeaders {
    RateLimitHeaders::parse(
        header(headers, "ratelimit-limit"),
        header(headers, "ratelimit-remaining"),
        header(headers, "ratelimit-reset"),
    )
}

/// Milliseconds since the epoch as a `SystemTime` (the epoch itself for an impossible value).
fn wall_time(ms: i64) -> SystemTime {
    let since_epoch = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    SystemTime::UNIX_EPOCH + since_epoch
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_verb;
