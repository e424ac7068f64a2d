//! Ingest: Segment's HTTP requests in, durably stored events and Segment-shaped answers out.
//!
//! In: `POST /v1/segment` with one event, a JSON array of events (Webhooks (Actions) batching)
//! or `{"batch": [...]}` (the Tracking API shape), optionally signed (`X-Signature`) and/or
//! carrying a bearer token.
//! Out: events handed to the store; the answer only after the store committed them.
//!
//! Stays true:
//! - 2xx means every accepted event is durably stored; when the store cannot store, 503 (so
//!   Segment retries) — never 2xx;
//! - 4xx only for input that can never succeed: 400 malformed, 401 unauthenticated, 413 too
//!   large, 422 an Identify with no email and none known for its userId;
//! - in a batch an invalid event never costs its valid neighbours: they are stored and the
//!   answer lists what was rejected and why;
//! - the signature is checked over the raw bytes (the first element's for an array, as
//!   Segment signs), in constant time; nothing here knows ProsperStack.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::config::Secret;
use crate::identify::{self, EventError};
use crate::metrics::Metrics;
use crate::store::{Incoming, IngestOutcome, Store, StoreError};

/// What the ingest handler needs; cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub shared_secret: Option<Secret>,
    pub ingest_token: Option<Secret>,
    pub max_body_bytes: usize,
    /// Poked after events are stored, so delivery starts at once.
    pub wake: Arc<Notify>,
    /// Set while shutting down: new events are refused with 503 so Segment retries them.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Dates each event's arrival.
    pub clock: SharedClock,
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/segment", post(receive))
        .with_state(state)
}

/// Why a request was refused: mapped to an HTTP answer in one place ([`IntoResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Malformed(String),
    #[error("no event was accepted")]
    AllRejected(Answer),
    #[error("the relay cannot store events right now: {0}")]
    Store(#[from] StoreError),
    #[error("the relay is shutting down")]
    Draining,
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            IngestError::Unauthorized(why) => (StatusCode::UNAUTHORIZED, message(why)),
            IngestError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, message(&self.to_string())),
            IngestError::Malformed(why) => (StatusCode::BAD_REQUEST, message(&why)),
            IngestError::AllRejected(answer) => {
                let status = answer.rejected.first().map(|r| r.status).unwrap_or(400);
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let mut body = serde_json::to_value(&answer).unwrap_or_default();
                if let (Some(obj), Some(first)) = (body.as_object_mut(), answer.rejected.first()) {
                    obj.insert("message".into(), Value::String(first.error.clone()));
                }
                (status, body)
            }
            IngestError::Store(e) => {
                // Logged once here; the body does not leak internals.
                tracing::error!(error = %e, "cannot store events; answering 503 so Segment retries");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    message("the relay cannot store events right now; retry later"),
                )
            }
            IngestError::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                message("the relay is shutting down; retry later"),
            ),
        };
        (status, Json(body)).into_response()
    }
}

fn message(text: &str) -> Value {
    serde_json::json!({ "message": text })
}

/// The answer to a request, listing what was rejected and why.
#[derive(Debug, Default, Serialize)]
pub struct Answer {
    pub accepted: usize,
    pub duplicates: usize,
    pub ignored: usize,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Serialize)]
pub struct Rejection {
    pub index: usize,
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub status: u16,
    pub error: String,
}

async fn receive(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Answer>, IngestError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(IngestError::Draining);
    }
    let events = read_events(&state, &headers, body).await.inspect_err(|e| {
        // Whole requests refused before any event was looked at are counted too.
        state.metrics.event_rejected(match e {
            IngestError::Unauthorized(_) => "unauthorized",
            IngestError::TooLarge(_) => "too_large",
            _ => "malformed",
        })
    })?;
    let answer = store_events(&state, events).await?;
    if answer.accepted == 0
        && !answer.rejected.is_empty()
        && answer.duplicates == 0
        && answer.ignored == 0
    {
        return Err(IngestError::AllRejected(answer));
    }
    Ok(Json(answer))
}

/// Authenticates the request and splits its body into events.
async fn read_events(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<RawEvent>, IngestError> {
    check_token(state, headers)?;
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| IngestError::TooLarge(state.max_body_bytes))?;
    parse_body(&bytes, headers, state.shared_secret.as_ref())
}

fn check_token(state: &IngestState, headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(token) = &state.ingest_token else {
        return Ok(());
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(IngestError::Unauthorized(
            "missing Authorization: Bearer token",
        ))?;
    if bool::from(presented.trim().as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(IngestError::Unauthorized("wrong bearer token"))
    }
}

/// One event of the body: its parsed JSON (or why it is not an event) and its raw text.
pub type RawEvent = (Result<Value, String>, String);

/// Splits the body into events, checking the signature over the bytes Segment signed.
/// Public so `relay-bench fuzz` can drive it in-process; the handler is its only other caller.
pub fn parse_body(
    bytes: &Bytes,
    headers: &HeaderMap,
    secret: Option<&Secret>,
) -> Result<Vec<RawEvent>, IngestError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| IngestError::Malformed("body is not UTF-8".into()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| IngestError::Malformed(format!("invalid JSON: {e}")))?;
        if let (Some(secret), Some(first)) = (secret, elements.first()) {
            verify_signature(secret, first.get().as_bytes(), headers)?;
        }
        return Ok(elements
            .iter()
            .map(|raw| (parse_element(raw.get()), raw.get().to_owned()))
            .collect());
    }
    if let Some(secret) = secret {
        verify_signature(secret, bytes, headers)?;
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| IngestError::Malformed(format!("invalid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(IngestError::Malformed(
            "body must be an event, an array of events or {\"batch\": [...]}".into(),
        ));
    };
    match obj.remove("batch") {
        Some(Value::Array(items)) => Ok(tracking_api_batch(items, &obj)),
        Some(_) => Err(IngestError::Malformed("\"batch\" must be an array".into())),
        None => Ok(vec![(Ok(Value::Object(obj)), text.to_owned())]),
    }
}

fn parse_element(raw: &str) -> Result<Value, String> {
    serde_json::from_str(raw).map_err(|e| format!("invalid JSON: {e}"))
}

/// The Tracking API's batch: top-level `context` and `integrations` apply to every item that
/// does not carry its own.
fn tracking_api_batch(items: Vec<Value>, envelope: &Map<String, Value>) -> Vec<RawEvent> {
    items
        .into_iter()
        .map(|mut item| {
            if let Value::Object(obj) = &mut item {
                for key in ["context", "integrations"] {
                    if let Some(shared) = envelope.get(key) {
                        obj.entry(key).or_insert_with(|| shared.clone());
                    }
                }
            }
            let raw = item.to_string();
            (Ok(item), raw)
        })
        .collect()
}

fn verify_signature(
    secret: &Secret,
    signed: &[u8],
    headers: &HeaderMap,
) -> Result<(), IngestError> {
    let header = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or(IngestError::Unauthorized("missing X-Signature"))?;
    let expected = hex::decode(header.trim())
        .map_err(|_| IngestError::Unauthorized("X-Signature is not hex"))?;
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| IngestError::Unauthorized("unusable shared secret"))?;
    mac.update(signed);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| IngestError::Unauthorized("X-Signature does not match"))
}

/// What the answer needs to know of an event handed to the store.
struct Sent {
    index: usize,
    event_type: String,
    message_id: Option<String>,
}

/// Normalises each event, stores the valid ones in one call, and builds the answer. Event
/// types the relay ignores are counted here and never reach the store.
async fn store_events(state: &IngestState, events: Vec<RawEvent>) -> Result<Answer, IngestError> {
    let received = state.clock.wall_ms();
    let mut answer = Answer::default();
    let mut sent: Vec<Sent> = Vec::new();
    let mut incoming: Vec<Incoming> = Vec::new();
    for (index, (parsed, raw)) in events.into_iter().enumerate() {
        let value = match parsed {
            Ok(v) => v,
            Err(e) => {
                reject(state, &mut answer, index, None, 400, "malformed", e);
                continue;
            }
        };
        let message_id = value
            .get("messageId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match identify::normalise(&value, received) {
            Ok(identify::Event::Ignored { event_type }) => {
                answer.ignored += 1;
                state.metrics.event_received(&event_type, "ignored");
            }
            Ok(event) => {
                let event_type = event.type_name().to_owned();
                sent.push(Sent {
                    index,
                    event_type,
                    message_id,
                });
                incoming.push(Incoming { event, raw });
            }
            Err(e) => {
                let reason = match e {
                    EventError::NotAnObject | EventError::MissingType => "not_an_event",
                    EventError::Invalid(_) => "invalid",
                };
                reject(
                    state,
                    &mut answer,
                    index,
                    message_id,
                    400,
                    reason,
                    e.to_string(),
                );
            }
        }
    }
    let outcomes = if incoming.is_empty() {
        Vec::new()
    } else {
        state.store.ingest(incoming, received).await?
    };
    for (event, outcome) in sent.into_iter().zip(outcomes) {
        let counted = match outcome {
            IngestOutcome::Stored | IngestOutcome::Forgotten => {
                answer.accepted += 1;
                "stored"
            }
            IngestOutcome::Duplicate => {
                answer.duplicates += 1;
                "duplicate"
            }
            IngestOutcome::Ignored => {
                answer.ignored += 1;
                "ignored"
            }
            IngestOutcome::NoEmail => {
                let why = "an Identify needs traits.email or context.traits.email, and no email is known for its userId";
                reject(
                    state,
                    &mut answer,
                    event.index,
                    event.message_id,
                    422,
                    "no_email",
                    why.into(),
                );
                continue;
            }
        };
        state.metrics.event_received(&event.event_type, counted);
    }
    answer.rejected.sort_by_key(|r| r.index);
    if answer.accepted > 0 {
        state.wake.notify_one();
    }
    Ok(answer)
}

fn reject(
    state: &IngestState,
    answer: &mut Answer,
    index: usize,
    message_id: Option<String>,
    status: u16,
    reason: &'static str,
    error: String,
) {
    state.metrics.event_rejected(reason);
    // Only a missing email is known to be an Identify; anything else never became an event.
    let event_type = if reason == "no_email" {
        "identify"
    } else {
        "other"
    };
    state.metrics.event_received(event_type, "rejected");
    answer.rejected.push(Rejection {
        index,
        message_id,
        status,
        error,
    });
}

#[cfg(test)]
mod tests;
