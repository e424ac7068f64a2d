//! Helpers for the sandbox's router tests: build a sandbox, send one request through the real
//! router with `oneshot`, and read the answer as status, headers and JSON.

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Request, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use tower::ServiceExt;

use super::{Sandbox, SandboxConfig, SANDBOX_API_KEY};

/// A seeded sandbox with the default configuration.
pub(crate) fn demo() -> Sandbox {
    Sandbox::new(SandboxConfig::default())
}

/// A seeded sandbox admitting `requests` per minute.
pub(crate) fn with_limit(requests: u32) -> Sandbox {
    Sandbox::new(SandboxConfig {
        rate_limit_requests: requests,
        ..SandboxConfig::default()
    })
}

/// The `Authorization` value curl's `-u key:` sends.
pub(crate) fn basic(key: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{key}:")))
}

/// An answer, read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Answer {
    /// A header as a string, or "" when absent.
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `error` message of an error body, or "" when there is none.
    pub(crate) fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// Sends `request` through a fresh copy of the sandbox's router.
pub(crate) async fn send(sandbox: &Sandbox, request: Request<Body>) -> Answer {
    let response = sandbox
        .router()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body reads");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("every answer body is JSON")
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// An authenticated request with the sandbox key and, if given, a JSON body.
pub(crate) async fn call(
    sandbox: &Sandbox,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Answer {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", basic(SANDBOX_API_KEY));
    send(sandbox, with_json(builder, body)).await
}

/// An unauthenticated request (the admin routes), with an optional JSON body.
pub(crate) async fn admin(
    sandbox: &Sandbox,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> Answer {
    let builder = Request::builder().method(method).uri(uri);
    send(sandbox, with_json(builder, body)).await
}

fn with_json(builder: axum::http::request::Builder, body: Option<Value>) -> Request<Body> {
    match body {
        Some(json) => builder
            .header("content-type", "application/json")
            .body(Body::from(json.to_string())),
        None => builder.body(Body::empty()),
    }
    .expect("a valid test request")
}

/// The id of the demo subscriber with this email.
pub(crate) fn subscriber_id(sandbox: &Sandbox, email: &str) -> String {
    sandbox
        .subscriber_by_email(email)
        .expect("a demo subscriber")
        .id
}
