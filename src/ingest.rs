//! Ingest: Segment's HTTP requests in, durably stored events and Segment-shaped answers out.
//!
//! In: `POST /v1/segment` with one event, a JSON array of events (Webhooks (Actions) batching)
//! or `{"batch": [...]}` (the Tracking API shape), optionally signed (`X-Signature`) and/or
//! carrying a bearer token; and Segment's Tracking API itself (`/v1/batch`, `/v1/identify`, …,
//! with write keys and gzip: the `tracking` module), for backends and RudderStack.
//! Out: events handed to the store; the answer only after the store committed them.
//!
//! Stays true:
//! - 2xx means every accepted event is durably stored; when the store cannot store, or its
//!   volume has less than `min_free_bytes` free, 503 (so Segment retries) — never 2xx;
//! - 4xx only for input that can never succeed: 400 malformed, 401 unauthenticated, 413 too
//!   large, 422 an Identify with no email and none known for its userId;
//! - in a batch an invalid event never costs its valid neighbours: they are stored and the
//!   answer lists what was rejected and why;
//! - the signature is checked over the raw bytes (the first element's for an array, as
//!   Segment signs), in constant time; nothing here knows ProsperStack.
//!
//! Configured by [`SegmentSettings`], the `[segment]` section.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::SharedClock;
use crate::config::{self, ConfigError, Secret};
use crate::disk::{FreeSpace, LowDisk};
use crate::identify::{self, EventError};
use crate::metrics::Metrics;
use crate::store::{Incoming, IngestOutcome, Store, StoreError};
use crate::telemetry::redact_emails;

/// The `[segment]` section: how requests from Segment are authenticated and bounded.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentSettings {
    /// When set, `X-Signature` (HMAC-SHA1 of the raw body) is required.
    #[serde(deserialize_with = "config::optional_secret")]
    pub shared_secret: Option<Secret>,
    /// When set, `Authorization: Bearer <token>` is required.
    #[serde(deserialize_with = "config::optional_secret")]
    pub ingest_token: Option<Secret>,
    /// Larger bodies are answered 413 (after decompression, for gzipped bodies).
    pub max_body_bytes: usize,
    /// Write keys accepted on the Tracking API endpoints (`/v1/batch`, `/v1/identify`, …).
    pub write_keys: WriteKeys,
    /// How far past its arrival an event's time is believed for latest-wins; later times are
    /// held to the arrival plus this.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Bytes of request bodies read and parsed at once; others wait their turn (up to
    /// [`PARSING_WAIT`], then 503). Bounds the memory parsing takes whatever the load.
    pub max_parsing_bytes: usize,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        SegmentSettings {
            shared_secret: None,
            ingest_token: None,
            max_body_bytes: 5 * 1024 * 1024,
            write_keys: WriteKeys::default(),
            max_clock_skew: Duration::from_secs(5 * 60),
            // Three bodies of the largest size: the store, not parsing, bounds throughput, and
            // each body parses into several times its size (README, "Memory": 256 MB peak with
            // 32 maximum-size bodies at once, 1.5 GB with 64 MiB).
            max_parsing_bytes: 16 * 1024 * 1024,
        }
    }
}

impl SegmentSettings {
    /// A body limit below 1 KiB would refuse Segment's smallest real events.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::at(
                "segment.max_body_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

/// How long a request waits for its turn to be parsed: Segment gives up after 5 s, and a 503
/// before then is retried, where a timeout might be taken for a slow relay.
pub const PARSING_WAIT: Duration = Duration::from_secs(4);

/// Bodies are counted in KiB against the parsing budget (the semaphore counts in `u32`).
const BUDGET_UNIT: usize = 1024;

/// The semaphore of body bytes being parsed at once, for `settings`: never smaller than one
/// body of the largest size accepted, which would otherwise wait for ever.
pub fn parsing_budget(settings: &SegmentSettings) -> Arc<Semaphore> {
    let bytes = settings.max_parsing_bytes.max(settings.max_body_bytes);
    Arc::new(Semaphore::new(bytes.div_ceil(BUDGET_UNIT)))
}

/// What the ingest handler needs; cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<SegmentSettings>,
    /// Poked after events are stored, so delivery starts at once.
    pub wake: Arc<Notify>,
    /// Set while shutting down: new events are refused with 503 so Segment retries them.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Dates each event's arrival.
    pub clock: SharedClock,
    /// Where Identifies carry a platform ID (`mapping.platform_id_trait`), if anywhere.
    pub platform_ids: Option<identify::PlatformIdSource>,
    /// Whether the data directory has room for new events.
    pub free_space: Arc<FreeSpace>,
    /// Body bytes being parsed at once, in KiB ([`parsing_budget`]).
    pub parsing: Arc<Semaphore>,
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/segment", post(receive))
        .with_state(state.clone())
        .merge(tracking::router(state))
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
    #[error("{0}")]
    LowDisk(#[from] LowDisk),
    #[error("waited {PARSING_WAIT:?} for a turn to parse the body")]
    Busy,
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (status, body) = self.answer();
        (status, Json(body)).into_response()
    }
}

impl IngestError {
    /// The refusal logged, and its status and body: the one mapping every intake answers with.
    fn answer(self) -> (StatusCode, Value) {
        self.log();
        let status = self.status();
        let body = match self {
            IngestError::AllRejected(answer) => {
                let first = answer.rejected.first().map(|r| r.error.clone());
                let mut body = serde_json::to_value(&answer).unwrap_or_default();
                if let (Some(obj), Some(first)) = (body.as_object_mut(), first) {
                    obj.insert("message".into(), Value::String(first));
                }
                body
            }
            // The body does not leak internals; the log has them.
            IngestError::Store(_) => {
                message("the relay cannot store events right now; retry later")
            }
            IngestError::Draining => message("the relay is shutting down; retry later"),
            IngestError::Busy => {
                message("the relay is parsing as much as it may at once; retry later")
            }
            IngestError::LowDisk(_) => {
                message("the relay's data volume is nearly full; delivery goes on, retry later")
            }
            other => message(&other.to_string()),
        };
        (status, body)
    }

    /// The answer's status; a request whose every event was refused takes the first refusal's.
    fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Malformed(_) => StatusCode::BAD_REQUEST,
            IngestError::AllRejected(answer) => answer
                .rejected
                .first()
                .and_then(|r| StatusCode::from_u16(r.status).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            IngestError::Store(_)
            | IngestError::Draining
            | IngestError::LowDisk(_)
            | IngestError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Logs a refusal once, with its reason (never the body): a refused request is either
    /// Segment's event lost for good (4xx) or retried (503), and an operator must see which.
    fn log(&self) {
        let status = self.status().as_u16();
        match self {
            IngestError::Store(e) => {
                tracing::error!(error = %e, "cannot store events; answering 503 so Segment retries")
            }
            IngestError::Draining => tracing::info!(status, "refused a request while draining"),
            // The change to and from low space is logged once, as a warning, where it is read.
            IngestError::LowDisk(e) => tracing::info!(status, reason = %e, "refused a request"),
            IngestError::Busy => {
                tracing::warn!(
                    status,
                    "refused a request: too many large bodies being parsed at once"
                )
            }
            IngestError::AllRejected(answer) => {
                let first = answer.rejected.first().map(|r| redact_emails(&r.error));
                let reason = first.as_deref().unwrap_or("?");
                let rejected = answer.rejected.len();
                tracing::info!(status, rejected, reason, "refused every event of a request");
            }
            _ => {
                let reason = redact_emails(&self.to_string());
                tracing::info!(status, %reason, "refused a request");
            }
        }
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
    // Held until the answer: the parsed events are alive until then.
    let _parsing = admit_request(&state, &headers).await?;
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

/// What every intake checks before reading a body: not draining, room on the disk, and a turn
/// in the parsing budget (held until the request is answered).
pub(crate) async fn admit_request(
    state: &IngestState,
    headers: &HeaderMap,
) -> Result<OwnedSemaphorePermit, IngestError> {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(IngestError::Draining);
    }
    state
        .free_space
        .check()
        .inspect_err(|_| state.metrics.refused_low_disk())?;
    wait_for_parsing_turn(state, headers).await
}

/// Reserves the body's declared size (the largest allowed when it declares none, or when it
/// is compressed: what it inflates to is unknown) in the parsing budget, waiting up to
/// [`PARSING_WAIT`] for it; then `Busy` (503, Segment retries).
async fn wait_for_parsing_turn(
    state: &IngestState,
    headers: &HeaderMap,
) -> Result<OwnedSemaphorePermit, IngestError> {
    let limit = state.settings.max_body_bytes;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .filter(|_| !headers.contains_key(axum::http::header::CONTENT_ENCODING))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    // A body longer than it declared is cut by HTTP framing; one over the limit gets 413.
    let bytes = declared.unwrap_or(limit).clamp(1, limit);
    let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
    let turn = state.parsing.clone().acquire_many_owned(units);
    match tokio::time::timeout(PARSING_WAIT, turn).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            state.metrics.refused_busy();
            Err(IngestError::Busy)
        }
    }
}

/// Authenticates the request and splits its body into events.
async fn read_events(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<RawEvent>, IngestError> {
    check_token(state, headers)?;
    let limit = state.settings.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| IngestError::TooLarge(limit))?;
    parse_body(&bytes, headers, state.settings.shared_secret.as_ref())
}

fn check_token(state: &IngestState, headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(token) = &state.settings.ingest_token else {
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
    let text = body_text(bytes)?;
    if is_array(text) {
        let elements = array_elements(text)?;
        if let Some(secret) = secret {
            // Segment signs a batch's first element; an empty array has none, so its own bytes
            // must be signed: an unsigned request is refused whatever it holds.
            let signed = elements.first().map_or(&bytes[..], |e| e.get().as_bytes());
            verify_signature(secret, signed, headers)?;
        }
        return Ok(array_events(&elements));
    }
    if let Some(secret) = secret {
        verify_signature(secret, bytes, headers)?;
    }
    object_events(text)
}

/// Splits a body into events as `POST /v1/segment` does (one event, a JSON array, or
/// `{"batch": [...]}`), without authenticating it: for tools that explain a payload.
pub fn split_body(bytes: &[u8]) -> Result<Vec<RawEvent>, IngestError> {
    let text = body_text(bytes)?;
    if is_array(text) {
        return Ok(array_events(&array_elements(text)?));
    }
    object_events(text)
}

fn body_text(bytes: &[u8]) -> Result<&str, IngestError> {
    std::str::from_utf8(bytes).map_err(|_| IngestError::Malformed("body is not UTF-8".into()))
}

fn is_array(text: &str) -> bool {
    text.trim_start().starts_with('[')
}

fn array_elements(text: &str) -> Result<Vec<&RawValue>, IngestError> {
    serde_json::from_str(text).map_err(|e| IngestError::Malformed(format!("invalid JSON: {e}")))
}

/// Each element parsed on its own, so one malformed element costs only itself.
fn array_events(elements: &[&RawValue]) -> Vec<RawEvent> {
    elements
        .iter()
        .map(|raw| (parse_element(raw.get()), raw.get().to_owned()))
        .collect()
}

/// A body that is not an array: one event, or the Tracking API's `{"batch": [...]}`.
fn object_events(text: &str) -> Result<Vec<RawEvent>, IngestError> {
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
        if let Some((event, meta)) = admit(state, &mut answer, index, parsed, received) {
            sent.push(meta);
            incoming.push(Incoming::live(event, raw));
        }
    }
    let outcomes = if incoming.is_empty() {
        Vec::new()
    } else {
        state.store.ingest(incoming, received).await?
    };
    for (event, outcome) in sent.into_iter().zip(outcomes) {
        tally(state, &mut answer, event, outcome);
    }
    answer.rejected.sort_by_key(|r| r.index);
    if answer.accepted > 0 {
        state.wake.notify_one();
    }
    Ok(answer)
}

/// One event of a request: normalised and handed back for the store, or counted here as
/// ignored or rejected.
fn admit(
    state: &IngestState,
    answer: &mut Answer,
    index: usize,
    parsed: Result<Value, String>,
    received: i64,
) -> Option<(identify::Event, Sent)> {
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            reject(state, answer, index, None, 400, "malformed", e);
            return None;
        }
    };
    let message_id = value
        .get("messageId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let normalised = identify::normalise(&value, received)
        .map(|event| hold_time(state, event, received))
        .map(|event| with_platform_id(state, event));
    match normalised {
        Ok(identify::Event::Ignored { event_type }) => {
            answer.ignored += 1;
            state.metrics.event_received(&event_type, "ignored");
            None
        }
        Ok(event) => {
            // Counted under the type Segment sent: an Engage Track is stored as the Identify it
            // stands for, but it arrived as a track.
            let sent_type = value.get("type").and_then(Value::as_str);
            let event_type =
                sent_type.map_or_else(|| event.type_name().to_owned(), str::to_ascii_lowercase);
            let meta = Sent {
                index,
                event_type,
                message_id,
            };
            Some((event, meta))
        }
        Err(e) => {
            let reason = match e {
                EventError::NotAnObject | EventError::MissingType => "not_an_event",
                EventError::Invalid(_) => "invalid",
            };
            reject(state, answer, index, message_id, 400, reason, e.to_string());
            None
        }
    }
}

/// An Identify with its platform ID filled in, when the settings say where it is.
fn with_platform_id(state: &IngestState, event: identify::Event) -> identify::Event {
    match (event, &state.platform_ids) {
        (identify::Event::Identify(mut update), Some(source)) => {
            update.platform_id = source.of(update.user_id.as_deref(), &update.traits);
            identify::Event::Identify(update)
        }
        (event, _) => event,
    }
}

/// Holds an Identify's time to its arrival plus the tolerated skew (see [`identify::clamp_time`]),
/// counting and logging each one held (times only: the event may carry an email).
fn hold_time(state: &IngestState, mut event: identify::Event, received: i64) -> identify::Event {
    if let identify::Event::Identify(update) = &mut event {
        let latest = received.saturating_add(crate::clock::millis(state.settings.max_clock_skew));
        if let Some(claimed_ms) = identify::clamp_time(update, latest) {
            state.metrics.timestamp_clamped();
            tracing::debug!(
                claimed_ms,
                held_to_ms = latest,
                "an event's time is past its arrival plus max_clock_skew; held to that"
            );
        }
    }
    event
}

/// Counts what the store made of one event in the answer and the metrics.
fn tally(state: &IngestState, answer: &mut Answer, event: Sent, outcome: IngestOutcome) {
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
            let why = "an Identify needs an email address (with an @) in traits.email or context.traits.email, and none is known for its userId (nor a platform ID, when mapping.platform_id_trait is set)";
            let (index, message_id) = (event.index, event.message_id);
            reject(
                state,
                answer,
                index,
                message_id,
                422,
                "no_email",
                why.into(),
            );
            return;
        }
    };
    state.metrics.event_received(&event.event_type, counted);
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
    // The request itself is answered 2xx when others in it were stored, so its access line
    // says nothing of this one: each refused event gets its own line.
    tracing::info!(
        status,
        reason,
        index,
        message_id = %crate::telemetry::redact_emails(message_id.as_deref().unwrap_or("-")),
        error = %crate::telemetry::redact_emails(&error),
        "refused an event"
    );
    answer.rejected.push(Rejection {
        index,
        message_id,
        status,
        error,
    });
}

mod tracking;
pub use tracking::WriteKeys;

#[cfg(test)]
mod tests;
