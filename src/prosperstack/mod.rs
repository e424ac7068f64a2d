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
//! - Redirects are not followed: each request the budget admits is exactly one request sent.
//! - Metrics are labelled with endpoint templates ("PUT /v1/subscribers/{id}"), never raw paths.
//! - The key never reaches a log; a failed call is logged once, here, at warn, without emails
//!   (callers need not log it again). Request URLs, which may hold an email, never reach a log.

mod types;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::budget::Budget;
use crate::metrics::Metrics;
use crate::retry::{delay_from_headers, parse_seconds};

pub use types::{
    ApiKey, InvalidApiKey, NewProperty, Page, Property, PropertyType, PropertyValue, Subscriber,
};

/// The HTTP method of "Update a subscriber". The seed reference lost the verbs; this is the one
/// place to change it.
pub const UPDATE_SUBSCRIBER_METHOD: Method = Method::PUT;

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
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("key", &self.key)
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
        Ok(Client {
            http,
            base,
            key,
            budget,
            metrics,
        })
    }

    /// The budget every request of this client passes.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// One page of subscriber properties: `GET /v1/properties?entity=subscriber&limit=100`.
    pub async fn list_properties(&self, cursor: Option<&str>) -> Result<Page<Property>, ApiError> {
        let mut url = self.url(&["properties"]);
        url.query_pairs_mut()
            .append_pair("entity", "subscriber")
            .append_pair("limit", PAGE_LIMIT);
        append_cursor(&mut url, cursor);
        self.fetch(LIST_PROPERTIES, self.http.get(url)).await
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
        let mut url = self.url(&["subscribers"]);
        url.query_pairs_mut()
            .append_pair("email", email)
            .append_pair("limit", "1");
        let page: Page<Subscriber> = self.fetch(LIST_SUBSCRIBERS, self.http.get(url)).await?;
        let returned = page.data.len();
        let found = page
            .data
            .into_iter()
            .find(|s| s.email.trim().eq_ignore_ascii_case(email.trim()));
        if found.is_none() && returned > 0 {
            tracing::warn!("ProsperStack answered an email look-up with a different subscriber");
        }
        tracing::debug!(%email, found = found.is_some(), "subscriber look-up");
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
    /// `UPDATE_SUBSCRIBER_METHOD /v1/subscribers/{id}` with `{"properties": {...}}`.
    pub async fn update_subscriber(
        &self,
        id: &str,
        properties: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Subscriber, ApiError> {
        let url = self.url(&["subscribers", id]);
        let body = serde_json::json!({ "properties": properties });
        let request = self.http.request(UPDATE_SUBSCRIBER_METHOD, url).json(&body);
        self.fetch(update_endpoint(), request).await
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

    /// Sends a request and decodes a 2xx body as `T`.
    async fn fetch<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<T, ApiError> {
        let body = self.send(endpoint, request).await?;
        serde_json::from_slice(&body).map_err(|e| {
            let reason = format!("unparsable response from {endpoint}: {e}");
            self.failed(endpoint, retryable(reason))
        })
    }

    /// The one place a request goes out: budget first, then HTTP; headers back to the budget,
    /// one metric per request, the status sorted into an [`ApiError`].
    async fn send(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<Bytes, ApiError> {
        self.budget.acquire().await;
        let started = Instant::now();
        let sent = request.basic_auth(self.key.expose(), Some("")).send().await;
        let response = sent.map_err(|e| self.no_response(endpoint, e, started))?;
        let status = response.status();
        let headers = response.headers().clone();
        self.observe(&headers);
        let body = response.bytes().await;
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics
            .upstream_response(endpoint, status.as_str(), elapsed);
        let body = match body {
            Ok(body) => body,
            Err(e) if status.is_success() => return Err(self.failed(endpoint, transport_error(e))),
            // The status already says what went wrong; the message is a nicety.
            Err(_) => Bytes::new(),
        };
        self.judge(endpoint, status, &headers, body)
    }

    /// A request that got no response at all: counted by error class, logged, made an error.
    fn no_response(&self, endpoint: &'static str, e: reqwest::Error, started: Instant) -> ApiError {
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics
            .upstream_response(endpoint, transport_class(&e), elapsed);
        self.failed(endpoint, transport_error(e))
    }

    /// The body of a success; for anything else the error, after pausing the budget on a 429.
    fn judge(
        &self,
        endpoint: &'static str,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, ApiError> {
        let Some(error) = classify(status, headers, &body, self.budget.limit().1) else {
            return Ok(body);
        };
        if let ApiError::RateLimited { wait } = &error {
            self.budget.pause_for(*wait);
        }
        Err(self.failed(endpoint, error))
    }

    /// The server's view of the budget is the truth: pass it on with every response.
    fn observe(&self, headers: &HeaderMap) {
        let remaining = header(headers, "ratelimit-remaining").and_then(|v| v.parse().ok());
        let reset = header(headers, "ratelimit-reset").and_then(parse_seconds);
        self.budget.observe(remaining, reset);
        if let Some(remaining) = remaining {
            self.metrics.set_budget_remaining(remaining);
        }
    }

    /// Logs a failed call once, without the key, URL or any email, and hands the error back.
    fn failed(&self, endpoint: &'static str, error: ApiError) -> ApiError {
        tracing::warn!(endpoint, error = %redact_emails(&error.to_string()), "ProsperStack call failed");
        error
    }
}

/// Sorts a response by status: `None` for success, else the error the caller must handle.
/// `window` is the wait for a 429 whose headers name no delay.
fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    window: Duration,
) -> Option<ApiError> {
    if status.is_success() {
        return None;
    }
    let reset = header(headers, "ratelimit-reset");
    let retry_after = header(headers, "retry-after");
    let message = || error_message(status, body);
    Some(match status.as_u16() {
        429 => ApiError::RateLimited {
            wait: delay_from_headers(reset, retry_after, Utc::now()).unwrap_or(window),
        },
        401 | 403 => ApiError::Unauthorized {
            status: status.as_u16(),
            message: message(),
        },
        404 => ApiError::NotFound { message: message() },
        // RateLimit-Reset speaks of the rate window, not of an outage: only Retry-After counts.
        408 | 500..=599 => ApiError::Retryable {
            reason: format!("{}: {}", status.as_u16(), message()),
            retry_after: delay_from_headers(None, retry_after, Utc::now()),
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

/// The metric label for updates, following [`UPDATE_SUBSCRIBER_METHOD`] if it ever changes.
fn update_endpoint() -> &'static str {
    match UPDATE_SUBSCRIBER_METHOD.as_str() {
        "PATCH" => "PATCH /v1/subscribers/{id}",
        "POST" => "POST /v1/subscribers/{id}",
        _ => "PUT /v1/subscribers/{id}",
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Replaces every word containing `@` so an API message quoting an email can be logged.
pub(crate) fn redact_emails(text: &str) -> String {
    text.split(' ')
        .map(|word| if word.contains('@') { "[email]" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::extract::{Path, Query, Request, State};
    use axum::http::StatusCode as AxumStatus;
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{any, get};
    use axum::{Json, Router};
    use base64::Engine;
    use serde_json::json;

    use super::*;
    use crate::budget::{Clock, SimulatedClock};

    const SECRET: &str = "key_test_SECRETSECRET";

    /// Requests the fake API saw, as "METHOD /path?query" (raw, as sent on the wire).
    type Seen = Arc<Mutex<Vec<String>>>;

    fn seen(log: &Seen) -> Vec<String> {
        log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records every request and refuses any without basic auth for SECRET and an empty password.
    async fn check_auth(State(log): State<Seen>, request: Request, next: Next) -> Response {
        let line = format!("{} {}", request.method(), request.uri());
        log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{SECRET}:"))
        );
        let auth = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(expected.as_str()) {
            let body = Json(json!({"error": "Invalid API key"}));
            return (AxumStatus::UNAUTHORIZED, body).into_response();
        }
        next.run(request).await
    }

    /// Serves `routes` under `/prefix` on an ephemeral port; returns the base URL and request log.
    async fn serve(routes: Router) -> (Url, Seen) {
        let log: Seen = Arc::default();
        let app = Router::new()
            .nest("/prefix", routes)
            .layer(middleware::from_fn_with_state(log.clone(), check_auth));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = Url::parse(&format!("http://{addr}/prefix")).expect("url");
        (base, log)
    }

    struct Rig {
        client: Client,
        metrics: Arc<Metrics>,
        clock: Arc<SimulatedClock>,
    }

    /// A client for `base` with SECRET, a simulated-time budget of 100/min and fresh metrics.
    fn rig(base: Url, key: &str, timeout: Duration) -> Rig {
        let clock = Arc::new(SimulatedClock::new());
        let budget = Arc::new(Budget::with_clock(
            100,
            Duration::from_secs(60),
            clock.clone(),
        ));
        let metrics = Arc::new(Metrics::new());
        let key = ApiKey::parse(key).expect("valid key");
        let client = Client::new(base, key, budget, metrics.clone(), timeout).expect("client");
        Rig {
            client,
            metrics,
            clock,
        }
    }

    fn property(key: &str) -> serde_json::Value {
        json!({"id": format!("prop_{key}"), "key": key, "name": key, "entity": "subscriber",
               "type": "text", "format": null})
    }

    fn subscriber(id: &str, email: &str) -> serde_json::Value {
        json!({"id": id, "email": email, "name": "Jane Doe", "status": "active",
               "properties": [{"property": property("plan"), "value": "pro"}]})
    }

    fn rate_headers(remaining: &str) -> [(&'static str, String); 2] {
        [
            ("ratelimit-remaining", remaining.to_owned()),
            ("ratelimit-reset", "30".to_owned()),
        ]
    }

    /// all_properties walks every page with the cursor, sends basic auth, and the budget and
    /// metrics see RateLimit-Remaining from each response.
    #[tokio::test]
    async fn all_properties_walks_every_page() {
        let routes = Router::new().route(
            "/v1/properties",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                match q.get("cursor").map(String::as_str) {
                    None => (
                        rate_headers("99"),
                        Json(json!({"data": [property("a"), property("b")], "next_cursor": "c2"})),
                    ),
                    _ => (
                        rate_headers("98"),
                        Json(json!({"data": [property("c")], "next_cursor": null})),
                    ),
                }
            }),
        );
        let (base, log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let all = rig.client.all_properties().await.expect("properties");
        let keys: Vec<_> = all.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(
            seen(&log),
            [
                "GET /prefix/v1/properties?entity=subscriber&limit=100",
                "GET /prefix/v1/properties?entity=subscriber&limit=100&cursor=c2",
            ]
        );
        assert_eq!(rig.client.budget().last_remaining(), Some(98));
        let text = rig.metrics.render();
        assert!(text.contains("relay_budget_remaining 98"), "{text}");
        assert!(
            text.contains(r#"endpoint="GET /v1/properties",status="200"} 2"#),
            "{text}"
        );
    }

    /// A pagination loop (the server repeats a cursor) stops with an error instead of spinning.
    #[tokio::test]
    async fn repeated_cursor_stops_the_walk() {
        let routes = Router::new().route(
            "/v1/properties",
            get(|| async { Json(json!({"data": [property("a")], "next_cursor": "same"})) }),
        );
        let (base, log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let err = rig
            .client
            .all_properties()
            .await
            .expect_err("loop detected");
        assert!(matches!(err, ApiError::Retryable { .. }), "{err:?}");
        assert_eq!(seen(&log).len(), 2);
    }

    /// A wrong key gets the API's 401 message as Unauthorized; the Debug of key and client
    /// never shows the secret.
    #[tokio::test]
    async fn wrong_key_is_unauthorized_and_secrets_stay_hidden() {
        let (base, _log) = serve(Router::new()).await;
        let rig = rig(base, "key_test_WRONGWRONG", Duration::from_secs(5));
        let err = rig.client.list_subscribers(None).await.expect_err("401");
        match err {
            ApiError::Unauthorized { status, message } => {
                assert_eq!((status, message.as_str()), (401, "Invalid API key"));
            }
            other => panic!("expected Unauthorized, got {other:?}"),
        }
        let key = ApiKey::parse(SECRET).expect("valid key");
        assert!(!format!("{key:?}").contains("SECRETSECRET"));
        assert!(!format!("{:?}", rig.client).contains("WRONGWRONG"));
    }

    /// An email look-up escapes the email in the query and returns the match, or None.
    #[tokio::test]
    async fn find_subscriber_by_email_escapes_and_decodes() {
        let routes = Router::new().route(
            "/v1/subscribers",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                let data = match q.get("email").map(String::as_str) {
                    Some("jane+vip@example.com") => {
                        vec![subscriber("subr_1", "Jane+VIP@example.com")]
                    }
                    _ => vec![],
                };
                Json(json!({"data": data, "next_cursor": null}))
            }),
        );
        let (base, log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let found = rig
            .client
            .find_subscriber_by_email("jane+vip@example.com")
            .await;
        let found = found.expect("look-up").expect("found");
        assert_eq!(found.id, "subr_1");
        assert_eq!(found.values().get("plan"), Some(&json!("pro")));
        let missing = rig
            .client
            .find_subscriber_by_email("nobody@example.com")
            .await;
        assert!(missing.expect("look-up").is_none());
        assert_eq!(
            seen(&log)[0],
            "GET /prefix/v1/subscribers?email=jane%2Bvip%40example.com&limit=1"
        );
    }

    /// A look-up answered with someone else (a filter the API ignored) is not a match.
    #[tokio::test]
    async fn find_subscriber_ignores_a_different_email() {
        let routes = Router::new().route(
            "/v1/subscribers",
            get(|| async { Json(json!({"data": [subscriber("subr_9", "other@example.com")]})) }),
        );
        let (base, _log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let found = rig
            .client
            .find_subscriber_by_email("jane@example.com")
            .await;
        assert!(found.expect("look-up").is_none());
    }

    /// list_subscribers asks for 100 at a time and passes the cursor on.
    #[tokio::test]
    async fn list_subscribers_pages_by_cursor() {
        let routes = Router::new().route(
            "/v1/subscribers",
            get(|| async {
                Json(json!({"data": [subscriber("subr_1", "a@example.com")], "next_cursor": "n"}))
            }),
        );
        let (base, log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let page = rig
            .client
            .list_subscribers(Some("c 1"))
            .await
            .expect("page");
        assert_eq!(
            (page.data.len(), page.next_cursor.as_deref()),
            (1, Some("n"))
        );
        assert_eq!(
            seen(&log),
            ["GET /prefix/v1/subscribers?limit=100&cursor=c+1"]
        );
    }

    /// An update uses UPDATE_SUBSCRIBER_METHOD on the escaped id with {"properties": …}, and
    /// metrics carry the template, never the id.
    #[tokio::test]
    async fn update_subscriber_sends_properties() {
        let body_seen: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
        let sink = body_seen.clone();
        let routes = Router::new().route(
            "/v1/subscribers/{id}",
            any(
                move |Path(id): Path<String>, Json(body): Json<serde_json::Value>| async move {
                    *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
                    Json(subscriber(&id, "jane@example.com"))
                },
            ),
        );
        let (base, log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let mut props = serde_json::Map::new();
        props.insert("plan".into(), json!("enterprise"));
        props.insert("nickname".into(), serde_json::Value::Null);
        let updated = rig
            .client
            .update_subscriber("subr_7/x", &props)
            .await
            .expect("update");
        assert_eq!(updated.id, "subr_7/x");
        let sent = body_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            sent,
            Some(json!({"properties": {"plan": "enterprise", "nickname": null}}))
        );
        let method = UPDATE_SUBSCRIBER_METHOD.as_str();
        assert_eq!(
            seen(&log),
            [format!("{method} /prefix/v1/subscribers/subr_7%2Fx")]
        );
        let text = rig.metrics.render();
        assert!(
            text.contains(&format!(r#"endpoint="{method} /v1/subscribers/{{id}}""#)),
            "{text}"
        );
        assert!(!text.contains("subr_7"));
    }

    /// create_property posts the new property's JSON and returns the created one.
    #[tokio::test]
    async fn create_property_posts_json() {
        let routes = Router::new().route(
            "/v1/properties",
            axum::routing::post(|Json(body): Json<serde_json::Value>| async move {
                assert_eq!(body["type"], "boolean");
                let key = body["key"].as_str().unwrap_or_default().to_owned();
                (AxumStatus::CREATED, Json(property(&key)))
            }),
        );
        let (base, log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let new = NewProperty {
            key: "vip".into(),
            name: "VIP".into(),
            entity: "subscriber".into(),
            kind: PropertyType::Boolean,
        };
        let created = rig.client.create_property(&new).await.expect("created");
        assert_eq!(created.key, "vip");
        assert_eq!(seen(&log), ["POST /prefix/v1/properties"]);
    }

    /// A 429 is RateLimited for RateLimit-Reset, and the shared budget holds every request until
    /// then (the next acquire waits in simulated time).
    #[tokio::test]
    async fn rate_limited_pauses_the_budget() {
        let routes = Router::new().route(
            "/v1/subscribers",
            get(|| async {
                let headers = [("ratelimit-remaining", "0"), ("ratelimit-reset", "7")];
                (
                    AxumStatus::TOO_MANY_REQUESTS,
                    headers,
                    Json(json!({"error": "slow down"})),
                )
            }),
        );
        let (base, _log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let err = rig.client.list_subscribers(None).await.expect_err("429");
        assert!(matches!(err, ApiError::RateLimited { wait } if wait == Duration::from_secs(7)));
        assert_eq!(rig.client.budget().last_remaining(), Some(0));
        let before = rig.clock.now();
        rig.client.budget().acquire().await;
        assert!(rig.clock.now().duration_since(before) >= Duration::from_secs(7));
        assert!(rig
            .metrics
            .render()
            .contains("relay_upstream_rate_limited_total 1"));
    }

    /// A 429 without headers waits a whole window, and pauses the budget for it, rather than
    /// letting anything retry at once.
    #[tokio::test]
    async fn rate_limited_without_headers_waits_a_window() {
        let routes = Router::new().route(
            "/v1/subscribers",
            get(|| async { AxumStatus::TOO_MANY_REQUESTS }),
        );
        let (base, _log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let err = rig.client.list_subscribers(None).await.expect_err("429");
        assert!(matches!(err, ApiError::RateLimited { wait } if wait == Duration::from_secs(60)));
        let before = rig.clock.now();
        rig.client.budget().acquire().await;
        assert!(rig.clock.now().duration_since(before) >= Duration::from_secs(60));
    }

    /// 5xx is Retryable (with Retry-After when given); 404 and 400 carry the API's message.
    #[tokio::test]
    async fn error_statuses_map_to_typed_errors() {
        let routes = Router::new()
            .route(
                "/v1/subscribers",
                get(|| async {
                    let headers = [("retry-after", "3")];
                    (AxumStatus::INTERNAL_SERVER_ERROR, headers, "boom")
                }),
            )
            .route(
                "/v1/subscribers/{id}",
                any(|Path(id): Path<String>| async move {
                    if id == "missing" {
                        let body = json!({"error": "Subscriber not found"});
                        (AxumStatus::NOT_FOUND, Json(body))
                    } else {
                        let body = json!({"error": "Invalid value for property plan"});
                        (AxumStatus::BAD_REQUEST, Json(body))
                    }
                }),
            );
        let (base, _log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let props = serde_json::Map::new();

        match rig.client.list_subscribers(None).await {
            Err(ApiError::Retryable {
                reason,
                retry_after,
            }) => {
                assert!(
                    reason.contains("500") && reason.contains("boom"),
                    "{reason}"
                );
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            other => panic!("expected Retryable, got {other:?}"),
        }
        match rig.client.update_subscriber("missing", &props).await {
            Err(ApiError::NotFound { message }) => assert_eq!(message, "Subscriber not found"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        match rig.client.update_subscriber("subr_1", &props).await {
            Err(ApiError::Rejected { status, message }) => {
                assert_eq!(
                    (status, message.as_str()),
                    (400, "Invalid value for property plan")
                );
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    /// A 2xx whose body is not the expected JSON is Retryable, not a panic or a silent default.
    #[tokio::test]
    async fn unparsable_success_body_is_retryable() {
        let routes = Router::new().route("/v1/properties", get(|| async { "<html>oops</html>" }));
        let (base, _log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let err = rig
            .client
            .list_properties(None)
            .await
            .expect_err("bad body");
        assert!(matches!(err, ApiError::Retryable { .. }), "{err:?}");
    }

    /// A server that answers too slowly is a Retryable timeout, counted as such in metrics.
    #[tokio::test]
    async fn timeout_is_retryable() {
        let routes = Router::new().route(
            "/v1/properties",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let (base, _log) = serve(routes).await;
        let rig = rig(base, SECRET, Duration::from_millis(200));
        let err = rig.client.list_properties(None).await.expect_err("timeout");
        assert!(matches!(err, ApiError::Retryable { .. }), "{err:?}");
        assert!(rig.metrics.render().contains(r#"status="timeout""#));
    }

    /// A refused connection is Retryable, and its message carries no URL (which may hold an email).
    #[tokio::test]
    async fn connection_refused_is_retryable_without_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let base = Url::parse(&format!("http://{addr}/")).expect("url");
        let rig = rig(base, SECRET, Duration::from_secs(5));
        let err = rig
            .client
            .find_subscriber_by_email("jane@example.com")
            .await;
        match err {
            Err(ApiError::Retryable { reason, .. }) => {
                assert!(!reason.contains("jane"), "{reason}")
            }
            other => panic!("expected Retryable, got {other:?}"),
        }
        assert!(rig.metrics.render().contains(r#"status="connect""#));
    }

    /// Paths are appended to the base, keeping its prefix with or without a trailing slash.
    #[test]
    fn urls_keep_the_base_prefix() {
        let cases = [
            ("http://h/", "http://h/v1/properties"),
            ("http://h", "http://h/v1/properties"),
            ("http://h/api", "http://h/api/v1/properties"),
            ("http://h/api/?x=1#f", "http://h/api/v1/properties"),
        ];
        for (base, want) in cases {
            let rig = rig(
                Url::parse(base).expect("url"),
                SECRET,
                Duration::from_secs(1),
            );
            assert_eq!(rig.client.url(&["properties"]).as_str(), want, "{base}");
        }
    }

    /// A base URL that cannot hold paths is refused at construction.
    #[test]
    fn unusable_base_url_is_refused() {
        for base in ["mailto:ops@example.com", "ftp://h/"] {
            let budget = Arc::new(Budget::new(100, Duration::from_secs(60)));
            let key = ApiKey::parse(SECRET).expect("valid key");
            let url = Url::parse(base).expect("url");
            let made = Client::new(
                url,
                key,
                budget,
                Arc::new(Metrics::new()),
                Duration::from_secs(1),
            );
            assert!(
                matches!(made, Err(ApiError::Rejected { status: 0, .. })),
                "{base}"
            );
        }
    }

    /// Each status sorts into the variant that says what the caller must do.
    #[test]
    fn classify_table() {
        let window = Duration::from_secs(60);
        let kind = |code: u16| {
            let status = StatusCode::from_u16(code).expect("status");
            match classify(status, &HeaderMap::new(), b"", window) {
                None => "ok",
                Some(ApiError::Retryable { .. }) => "retryable",
                Some(ApiError::RateLimited { .. }) => "rate_limited",
                Some(ApiError::Unauthorized { .. }) => "unauthorized",
                Some(ApiError::NotFound { .. }) => "not_found",
                Some(ApiError::Rejected { .. }) => "rejected",
            }
        };
        let cases = [
            (200, "ok"),
            (201, "ok"),
            (204, "ok"),
            (301, "rejected"),
            (400, "rejected"),
            (401, "unauthorized"),
            (403, "unauthorized"),
            (404, "not_found"),
            (408, "retryable"),
            (409, "rejected"),
            (422, "rejected"),
            (429, "rate_limited"),
            (500, "retryable"),
            (502, "retryable"),
            (503, "retryable"),
            (599, "retryable"),
        ];
        for (code, want) in cases {
            assert_eq!(kind(code), want, "{code}");
        }
    }

    /// Error messages: the API's {"error"}, else the raw text truncated, else the status text.
    #[test]
    fn error_message_table() {
        let long = "x".repeat(500);
        let status = StatusCode::BAD_REQUEST;
        assert_eq!(
            error_message(status, br#"{"error": "Bad value"}"#),
            "Bad value"
        );
        assert_eq!(error_message(status, b"  plain text "), "plain text");
        assert_eq!(error_message(status, b""), "Bad Request");
        let truncated = error_message(status, long.as_bytes());
        assert_eq!(truncated.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(
            error_message(status, br#"{"error": {"nested": 1}}"#),
            r#"{"error": {"nested": 1}}"#
        );
    }

    /// Words with an @ are redacted before an error reaches the log.
    #[test]
    fn redact_emails_hides_addresses() {
        let text = "No subscriber jane@example.com (\"a@b\") here";
        assert_eq!(redact_emails(text), "No subscriber [email] [email] here");
    }
}
