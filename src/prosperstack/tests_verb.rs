//! The update verb against fake servers that accept only one verb (or none): a 405 is tried
//! once with the other verb, a verb that works is kept for every clone with one warning, and
//! two 405s leave the work to be retried.

use axum::http::StatusCode as AxumStatus;
use axum::response::IntoResponse;
use axum::routing::{patch, put, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use super::tests::{rig, seen, serve, subscriber, SECRET};
use super::*;
use crate::retry::{self, Backoff, Decision};

/// `/v1/subscribers/{id}` answering only `handler`'s verb; axum answers the other 405 with
/// an `Allow` header, as the sandbox does.
fn only(handler: MethodRouter) -> Router {
    Router::new().route("/v1/subscribers/{id}", handler)
}

fn ok_update() -> impl IntoResponse {
    Json(subscriber("subr_1", "jane@example.com"))
}

fn props() -> serde_json::Map<String, serde_json::Value> {
    let mut props = serde_json::Map::new();
    props.insert("plan".into(), json!("pro"));
    props
}

/// Configured PUT against a server that takes only PATCH: the update lands by PATCH, later
/// updates of every clone go straight to PATCH, and the metrics label each request with the
/// verb it was sent with. (The one warning is checked on the real binary's log, in
/// `tests/it/update_verb.rs`: capturing `tracing` here would race with parallel tests.)
#[tokio::test]
async fn a_405_to_put_switches_to_patch_once_for_every_clone() {
    let (base, requests) = serve(only(patch(|| async { ok_update() }))).await;
    let rig = rig(base, SECRET, Duration::from_secs(5));
    let updated = rig.client.update_subscriber("subr_1", &props()).await;
    assert_eq!(updated.expect("landed by PATCH").id, "subr_1");
    let clone = rig.client.clone();
    clone
        .update_subscriber("subr_1", &props())
        .await
        .expect("PATCH");
    rig.client
        .update_subscriber("subr_1", &props())
        .await
        .expect("PATCH");
    assert_eq!(
        seen(&requests),
        [
            "PUT /prefix/v1/subscribers/subr_1",
            "PATCH /prefix/v1/subscribers/subr_1",
            "PATCH /prefix/v1/subscribers/subr_1",
            "PATCH /prefix/v1/subscribers/subr_1",
        ]
    );
    assert_eq!(rig.client.update_method(), UpdateMethod::Patch);
    let metrics = rig.metrics.render();
    assert!(
        metrics.contains(r#"endpoint="PUT /v1/subscribers/{id}",status="405"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"endpoint="PATCH /v1/subscribers/{id}",status="200"} 3"#),
        "{metrics}"
    );
}

/// Configured PATCH against a server that takes only PUT switches the other way.
#[tokio::test]
async fn a_405_to_patch_switches_to_put() {
    let (base, requests) = serve(only(put(|| async { ok_update() }))).await;
    let client = rig(base, SECRET, Duration::from_secs(5))
        .client
        .with_update_method(UpdateMethod::Patch);
    client
        .update_subscriber("subr_1", &props())
        .await
        .expect("PUT");
    client
        .update_subscriber("subr_1", &props())
        .await
        .expect("PUT");
    assert_eq!(
        seen(&requests),
        [
            "PATCH /prefix/v1/subscribers/subr_1",
            "PUT /prefix/v1/subscribers/subr_1",
            "PUT /prefix/v1/subscribers/subr_1",
        ]
    );
}

/// Both verbs answered 405: Retryable (retried with backoff, never a dead letter at once), the
/// verb stays as configured, and exactly two requests were spent.
#[tokio::test]
async fn two_405s_are_retried_not_rejected() {
    let (base, requests) = serve(only(axum::routing::post(|| async { ok_update() }))).await;
    let rig = rig(base, SECRET, Duration::from_secs(5));
    let err = rig
        .client
        .update_subscriber("subr_1", &props())
        .await
        .expect_err("no verb works");
    assert!(matches!(err, ApiError::Retryable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("405 to both PUT and PATCH"),
        "{err}"
    );
    let decision = retry::decide(&err, 1, &Backoff::default(), 0.5);
    assert!(matches!(decision, Decision::RetryAfter(_)), "{decision:?}");
    assert_eq!(seen(&requests).len(), 2);
    assert_eq!(rig.client.update_method(), UpdateMethod::Put);
}

/// A 405 whose retry with the other verb fails otherwise reports that failure and keeps the
/// configured verb (nothing showed the other verb works).
#[tokio::test]
async fn other_verb_failing_otherwise_keeps_the_verb() {
    let refuse = || async {
        let body = Json(json!({"error": "Invalid value for property \"plan\""}));
        (AxumStatus::BAD_REQUEST, body)
    };
    let (base, _requests) = serve(only(patch(refuse))).await;
    let rig = rig(base, SECRET, Duration::from_secs(5));
    let err = rig.client.update_subscriber("subr_1", &props()).await;
    assert!(
        matches!(err, Err(ApiError::Rejected { status: 400, .. })),
        "{err:?}"
    );
    assert_eq!(rig.client.update_method(), UpdateMethod::Put);
}
