//! Router tests for auth, pagination, filters, rate limiting, faults, routing errors and stats.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use super::test_support::{admin, basic, call, demo, send, with_limit};
use super::{Sandbox, SandboxConfig, SANDBOX_API_KEY};

async fn get_with_auth(sandbox: &Sandbox, auth: Option<&str>) -> super::test_support::Answer {
    let mut builder = Request::builder().uri("/v1/properties");
    if let Some(value) = auth {
        builder = builder.header("authorization", value);
    }
    send(sandbox, builder.body(Body::empty()).expect("request")).await
}

/// Missing, malformed, unknown-key and non-empty-password credentials are all 401 with a JSON error.
#[tokio::test]
async fn bad_auth_is_401() {
    let sandbox = demo();
    let cases = [
        None,
        Some(basic("key_test_other")),
        Some("Bearer key_test_sandbox".to_string()),
        Some("Basic !!!".to_string()),
        Some(format!("Basic {}", "a2V5X3Rlc3Rfc2FuZGJveDpzZWNyZXQ=")), // key_test_sandbox:secret
    ];
    for auth in &cases {
        let answer = get_with_auth(&sandbox, auth.as_deref()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(!answer.error().is_empty(), "{auth:?}");
        assert!(answer.headers.get("ratelimit-limit").is_none());
    }
    let ok = get_with_auth(&sandbox, Some(&basic(SANDBOX_API_KEY))).await;
    assert_eq!(ok.status, StatusCode::OK);
}

/// Walking the property list 2 at a time returns every live property once, in creation order.
#[tokio::test]
async fn pagination_walks_all_pages() {
    let sandbox = demo();
    let mut uri = "/v1/properties?limit=2".to_string();
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let answer = call(&sandbox, "GET", &uri, None).await;
        assert_eq!(answer.status, StatusCode::OK);
        let data = answer.body["data"].as_array().expect("data array");
        assert!(data.len() <= 2);
        keys.extend(
            data.iter()
                .map(|p| p["key"].as_str().unwrap_or("").to_string()),
        );
        pages += 1;
        match &answer.body["next_cursor"] {
            Value::String(cursor) => uri = format!("/v1/properties?limit=2&cursor={cursor}"),
            Value::Null => break,
            other => panic!("next_cursor must be a string or null, got {other}"),
        }
    }
    let expected: Vec<String> = ["number_of_contacts", "is_professional", "last_contacted"]
        .into_iter()
        .chain([
            "preferred_name",
            "high_value_customers",
            "total_spend_180_days",
        ])
        .chain(["plan", "signed_up_on", "plan_tier"])
        .map(String::from)
        .collect();
    assert_eq!(keys, expected);
    assert_eq!(pages, 5);
}

/// A cursor keeps working after items are added behind it; the new item shows up on a later page.
#[tokio::test]
async fn cursor_survives_inserts() {
    let sandbox = demo();
    let first = call(&sandbox, "GET", "/v1/subscribers?limit=1", None).await;
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_string();
    sandbox.create_subscriber("new@example.com", "New");
    let rest = call(
        &sandbox,
        "GET",
        &format!("/v1/subscribers?cursor={cursor}&limit=100"),
        None,
    )
    .await;
    assert_eq!(rest.status, StatusCode::OK);
    let emails: Vec<&str> = rest.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|s| s["email"].as_str())
        .collect();
    assert_eq!(
        emails,
        [
            "jordan.reyes@example.com",
            "john.doe@example.com",
            "new@example.com"
        ]
    );
    assert_eq!(rest.body["next_cursor"], Value::Null);
}

/// `limit` outside 1..=100 or not an integer, and cursors we never issued, are 400.
#[tokio::test]
async fn bad_limit_and_cursor_are_400() {
    let sandbox = demo();
    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=garbage",
        "cursor=",
        "limit=2&limit=3",
    ] {
        let answer = call(&sandbox, "GET", &format!("/v1/subscribers?{query}"), None).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(!answer.error().is_empty(), "{query}");
    }
    let answer = call(&sandbox, "GET", "/v1/subscribers?limit=100", None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// The email filter is an exact match; platform_id filters too; unknown parameters are 400.
#[tokio::test]
async fn subscriber_filters() {
    let sandbox = demo();
    let maria = sandbox
        .subscriber_by_email("maria.lopez@example.com")
        .expect("seeded");
    let found = call(
        &sandbox,
        "GET",
        "/v1/subscribers?email=maria.lopez%40example.com",
        None,
    )
    .await;
    let data = found.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], maria.id.as_str());
    assert_eq!(data[0]["platform_id"], maria.platform_id.as_str());
    assert_eq!(found.body["next_cursor"], Value::Null);
    let upper = call(
        &sandbox,
        "GET",
        "/v1/subscribers?email=MARIA.LOPEZ@example.com",
        None,
    )
    .await;
    assert_eq!(upper.body["data"], json!([]));
    let by_platform = format!("/v1/subscribers?platform_id={}", maria.platform_id);
    let found = call(&sandbox, "GET", &by_platform, None).await;
    assert_eq!(found.body["data"][0]["email"], "maria.lopez@example.com");
    let typo = call(&sandbox, "GET", "/v1/subscribers?emial=x@example.com", None).await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert!(typo.error().contains("\"emial\""), "{}", typo.error());
}

/// The entity filter lists only that entity's properties; an unknown entity is 400.
#[tokio::test]
async fn property_entity_filter() {
    let sandbox = demo();
    let answer = call(&sandbox, "GET", "/v1/properties?entity=subscription", None).await;
    assert_eq!(answer.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(answer.body["data"][0]["key"], "plan_tier");
    let answer = call(
        &sandbox,
        "GET",
        "/v1/properties?entity=subscriber&limit=100",
        None,
    )
    .await;
    assert_eq!(answer.body["data"].as_array().map(Vec::len), Some(8));
    let answer = call(&sandbox, "GET", "/v1/properties?entity=customer", None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// With 3 requests a window the 4th is 429 with Retry-After; after the window requests pass again.
#[tokio::test]
async fn rate_limit_refuses_then_recovers() {
    let sandbox = with_limit(3);
    for remaining in ["2", "1", "0"] {
        let answer = call(&sandbox, "GET", "/v1/properties", None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("ratelimit-remaining"), remaining);
    }
    let refused = call(&sandbox, "GET", "/v1/properties", None).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("ratelimit-remaining"), "0");
    assert_eq!(refused.header("ratelimit-limit"), "3");
    let retry: u64 = refused
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        refused.header("ratelimit-reset"),
        refused.header("retry-after")
    );
    assert!(!refused.error().is_empty());

    sandbox.advance_clock(Duration::from_secs(retry));
    let again = call(&sandbox, "GET", "/v1/properties", None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("ratelimit-remaining"), "2");
    assert_eq!(again.header("ratelimit-reset"), "60");
}

/// A successful answer carries the RateLimit-* headers and no Retry-After.
#[tokio::test]
async fn rate_limit_headers_on_success() {
    let sandbox = demo();
    let answer = call(&sandbox, "GET", "/v1/subscribers", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("ratelimit-limit"), "100");
    assert_eq!(answer.header("ratelimit-remaining"), "99");
    assert_eq!(answer.header("ratelimit-reset"), "60");
    assert_eq!(answer.header("retry-after"), "");
    let missing = call(&sandbox, "GET", "/v1/subscribers/subr_nope", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("ratelimit-remaining"), "98");
}

/// Requests with bad auth use no key's budget; each key has its own window.
#[tokio::test]
async fn bad_auth_and_other_keys_do_not_spend_the_budget() {
    let sandbox = Sandbox::new(SandboxConfig {
        api_keys: vec![SANDBOX_API_KEY.to_string(), "key_test_two".to_string()],
        rate_limit_requests: 1,
        ..SandboxConfig::default()
    });
    for _ in 0..3 {
        let answer = get_with_auth(&sandbox, Some(&basic("key_test_wrong"))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    let first = get_with_auth(&sandbox, Some(&basic(SANDBOX_API_KEY))).await;
    assert_eq!(first.status, StatusCode::OK);
    let other = get_with_auth(&sandbox, Some(&basic("key_test_two"))).await;
    assert_eq!(other.status, StatusCode::OK);
    let second = get_with_auth(&sandbox, Some(&basic(SANDBOX_API_KEY))).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
}

/// Injected 503s answer exactly `count` requests, with rate-limit headers and budget spent.
#[tokio::test]
async fn injected_faults_answer_count_times() {
    let sandbox = demo();
    sandbox.inject_failures(503, 2);
    for remaining in ["99", "98"] {
        let answer = call(&sandbox, "GET", "/v1/subscribers", None).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!answer.error().is_empty());
        assert_eq!(answer.header("ratelimit-remaining"), remaining);
    }
    let answer = call(&sandbox, "GET", "/v1/subscribers", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let faults = admin(
        &sandbox,
        "POST",
        "/_sandbox/faults",
        Some(json!({"status": 500, "count": 1})),
    )
    .await;
    assert_eq!(faults.status, StatusCode::NO_CONTENT);
    let answer = call(&sandbox, "GET", "/v1/subscribers", None).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    let bad = admin(
        &sandbox,
        "POST",
        "/_sandbox/faults",
        Some(json!({"status": 200, "count": 1})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

/// Unknown /v1 paths are 404 and wrong methods 405 (with Allow), both with JSON bodies.
#[tokio::test]
async fn routing_errors_are_json() {
    let sandbox = demo();
    let missing = call(&sandbox, "GET", "/v1/customers", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.error().contains("/v1/customers"),
        "{}",
        missing.error()
    );
    let wrong = call(&sandbox, "DELETE", "/v1/subscribers", None).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.error().contains("DELETE"), "{}", wrong.error());
    assert!(wrong.header("allow").contains("GET"), "{:?}", wrong.headers);
    let wrong = call(&sandbox, "POST", "/v1/subscribers/subr_x", None).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    let outside = admin(&sandbox, "GET", "/nowhere", None).await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    assert!(!outside.error().is_empty());
}

/// Stats count every /v1 request by route template and status, 429s and updates, but not admin calls.
#[tokio::test]
async fn stats_count_by_template() {
    let sandbox = with_limit(4);
    let maria = sandbox
        .subscriber_by_email("maria.lopez@example.com")
        .expect("seeded");
    call(
        &sandbox,
        "GET",
        &format!("/v1/subscribers/{}", maria.id),
        None,
    )
    .await;
    let body = json!({"properties": {"plan": "pro"}});
    call(
        &sandbox,
        "PUT",
        &format!("/v1/subscribers/{}", maria.id),
        Some(body),
    )
    .await;
    call(&sandbox, "GET", "/v1/subscribers?email=x@example.com", None).await;
    call(&sandbox, "GET", "/v1/nothing", None).await;
    call(&sandbox, "GET", "/v1/subscribers", None).await; // 5th: rate limited
    get_with_auth(&sandbox, None).await; // 401, still counted
    admin(&sandbox, "GET", "/_sandbox/state", None).await;

    let stats = sandbox.stats();
    assert_eq!(stats.requests_total, 6);
    assert_eq!(stats.rate_limited_total, 1);
    assert_eq!(stats.subscriber_updates, 1);
    let routes: Vec<(&str, u64)> = stats
        .by_route
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        routes,
        [
            ("GET (unmatched)", 1),
            ("GET /v1/properties", 1),
            ("GET /v1/subscribers", 2),
            ("GET /v1/subscribers/{id}", 1),
            ("PUT /v1/subscribers/{id}", 1),
        ]
    );
    let statuses: Vec<(u16, u64)> = stats.by_status.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(statuses, [(200, 3), (401, 1), (404, 1), (429, 1)]);

    let reset = admin(&sandbox, "POST", "/_sandbox/reset-stats", None).await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT);
    assert_eq!(sandbox.stats(), super::SandboxStats::default());
}

/// The admin state shows properties, subscribers and stats; admin can add subscribers.
#[tokio::test]
async fn admin_state_and_subscribers() {
    let sandbox = demo();
    let created = admin(
        &sandbox,
        "POST",
        "/_sandbox/subscribers",
        Some(json!({"email": "ana@example.com"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(created.body["platform_id"]
        .as_str()
        .is_some_and(|p| p.starts_with("cus_")));
    let bad = admin(
        &sandbox,
        "POST",
        "/_sandbox/subscribers",
        Some(json!({"name": "No email"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("email"), "{}", bad.error());
    let state = admin(&sandbox, "GET", "/_sandbox/state", None).await;
    assert_eq!(state.body["properties"].as_array().map(Vec::len), Some(9));
    assert_eq!(state.body["subscribers"].as_array().map(Vec::len), Some(4));
    assert_eq!(state.body["subscribers"][3]["email"], "ana@example.com");
    assert_eq!(state.body["stats"]["requests_total"], 0);
}

/// `serve` answers real HTTP on an ephemeral port (reqwest's basic auth included) and stops on shutdown.
#[tokio::test]
async fn serve_on_ephemeral_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(demo().serve(listener, async {
        let _ = stopped.await;
    }));
    let response = reqwest::Client::new()
        .get(format!("http://{address}/v1/subscribers?limit=1"))
        .basic_auth(SANDBOX_API_KEY, None::<&str>)
        .send()
        .await
        .expect("the sandbox answers");
    assert_eq!(response.status().as_u16(), 200);
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}
