//! The `/_sandbox` admin routes: look at the state, add subscribers and properties, inject faults,
//! reset the counters. In: small JSON bodies (any content type, for curl); out: the admin views.
//! No auth, no rate limit and not counted in the stats: they stand for the ProsperStack dashboard
//! and the payment-processor import, not for API traffic a client spends.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{created_property, parse_json, ApiError, BodyBytes};
use super::property::NewProperty;
use super::{Sandbox, SubscriberView};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/_sandbox/state", get(show_state))
        .route("/_sandbox/subscribers", post(create_subscriber))
        .route("/_sandbox/properties", post(create_property))
        .route("/_sandbox/faults", post(inject_faults))
        .route("/_sandbox/reset-stats", post(reset_stats))
        .with_state(sandbox)
}

/// Everything at once, under one lock so the three parts agree.
async fn show_state(State(sandbox): State<Sandbox>) -> Json<Value> {
    let state = sandbox.state();
    let properties: Vec<_> = state.live_properties().map(|p| p.view()).collect();
    let subscribers: Vec<_> = state
        .subscribers()
        .map(|s| state.subscriber_view(s))
        .collect();
    Json(json!({
        "properties": properties,
        "subscribers": subscribers,
        "stats": state.stats,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscriber {
    email: String,
    #[serde(default)]
    name: String,
}

async fn create_subscriber(
    State(sandbox): State<Sandbox>,
    body: BodyBytes,
) -> Result<(StatusCode, Json<SubscriberView>), ApiError> {
    let new: NewSubscriber = typed_body(body)?;
    if new.email.trim().is_empty() {
        return Err(ApiError::bad_request(r#""email" must not be empty"#));
    }
    let view = sandbox.create_subscriber(&new.email, &new.name);
    Ok((StatusCode::CREATED, Json(view)))
}

async fn create_property(
    State(sandbox): State<Sandbox>,
    body: BodyBytes,
) -> Result<Response, ApiError> {
    let new = NewProperty::from_json(&parse_json(body)?)?;
    let view = sandbox.state().create_property(new)?.view();
    Ok(created_property(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    status: u16,
    count: u32,
}

/// Faults are error answers, so only 4xx and 5xx statuses make sense here.
async fn inject_faults(
    State(sandbox): State<Sandbox>,
    body: BodyBytes,
) -> Result<StatusCode, ApiError> {
    let faults: Faults = typed_body(body)?;
    if !(400..=599).contains(&faults.status) {
        return Err(ApiError::bad_request(
            r#""status" must be an HTTP error status from 400 to 599"#,
        ));
    }
    sandbox.inject_failures(faults.status, faults.count);
    Ok(StatusCode::NO_CONTENT)
}

async fn reset_stats(State(sandbox): State<Sandbox>) -> StatusCode {
    sandbox.reset_stats();
    StatusCode::NO_CONTENT
}

/// A JSON body read into `T`; serde's message names the missing, unknown or mistyped field.
fn typed_body<T: serde::de::DeserializeOwned>(body: BodyBytes) -> Result<T, ApiError> {
    serde_json::from_value(parse_json(body)?)
        .map_err(|e| ApiError::bad_request(format!("Invalid body: {e}")))
}
