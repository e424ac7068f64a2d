//! The client against a scripted fake ProsperStack: statuses sorted into errors, the budget fed
//! by every answer, requests shaped as the API reference says, and no secret or email in logs.

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
use crate::clock::{Clock, SimulatedClock, TokioClock};

pub(super) const SECRET: &str = "key_test_SECRETSECRET";

/// Requests the fake API saw, as "METHOD /path?query" (raw, as sent on the wire).
pub(super) type Seen = Arc<Mutex<Vec<String>>>;

pub(super) fn seen(log: &Seen) -> Vec<String> {
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
pub(super) async fn serve(routes: Router) -> (Url, Seen) {
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

pub(super) struct Rig {
    pub(super) client: Client,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: Arc<SimulatedClock>,
}

/// A client for `base` with SECRET, a simulated-time budget of 100/min and fresh metrics.
pub(super) fn rig(base: Url, key: &str, timeout: Duration) -> Rig {
    let clock = Arc::new(SimulatedClock::new());
    let budget = Arc::new(Budget::new(100, Duration::from_secs(60), clock.clone()));
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

pub(super) fn subscriber(id: &str, email: &str) -> serde_json::Value {
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

/// An update uses the default verb (PUT) on the escaped id with {"properties": …}, and
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
    let method = rig.client.update_method().as_str();
    assert_eq!(method, "PUT");
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
        let budget = Arc::new(Budget::new(
            100,
            Duration::from_secs(60),
            TokioClock::shared(),
        ));
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
        match classify(status, &HeaderMap::new(), b"", window, SystemTime::now()) {
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

/// A closed send gate (a deliverer that lost its lease while waiting for the budget) holds the
/// request back: nothing reaches the API, and the caller gets a retryable error.
#[tokio::test]
async fn closed_send_gate_sends_nothing() {
    let routes = Router::new().route(
        "/v1/properties",
        get(|| async { Json(json!({"data": [], "next_cursor": null})) }),
    );
    let (base, log) = serve(routes).await;
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = open.clone();
    let client = rig(base, SECRET, Duration::from_secs(5))
        .client
        .with_send_gate(Arc::new(move || {
            gate.load(std::sync::atomic::Ordering::SeqCst)
        }));
    client.all_properties().await.expect("sent while open");
    assert_eq!(seen(&log).len(), 1);
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    let held = client.all_properties().await.expect_err("held back");
    assert!(matches!(held, ApiError::Retryable { .. }), "{held:?}");
    assert_eq!(seen(&log).len(), 1, "nothing more was sent");
}
