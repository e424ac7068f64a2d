//! Segment's HTTP Tracking API, for backends and RudderStack: requests in, the same durable path
//! as `POST /v1/segment` out.
//!
//! In: `POST /v1/batch` (`{"batch": [...]}`), `/v1/identify`, `/v1/track`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias` (one call, its type implied by the path), as
//! `@segment/analytics-node`, `@rudderstack/rudder-sdk-node` and most analytics libraries send
//! them: authenticated by a write key (HTTP basic auth with the key as the user and an empty
//! password, or `writeKey` in the body), optionally gzipped (`Content-Encoding: gzip`).
//! Out: events handed to the store through [`super::store_events`] (same normalisation,
//! dedupe and answers), and a `{"success": true, ...}` answer the libraries take as delivered.
//!
//! Stays true:
//! - a key is compared in constant time and never logged, nor stored: `writeKey` is taken out
//!   of every event before it is stored;
//! - no write key configured means every request is refused 401, and the answer says why;
//! - the body limit holds after decompression too: a gzip bomb is a 413, never memory;
//! - refusals are [`IngestError`]s, answered by the same mapping as `/v1/segment`, plus
//!   `"success": false` in the body.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::{admit_request, store_events, tracking_api_batch, IngestError, IngestState, RawEvent};
use crate::config::Secret;

/// The Tracking API's single-call endpoints, and the event type each implies.
const SINGLE_CALLS: &[&str] = &["identify", "track", "page", "screen", "group", "alias"];

/// `segment.write_keys`: the write keys senders authenticate with. The file takes a list or one
/// comma-separated string; the environment (and a `_FILE`) the string. `Debug` shows only how
/// many there are.
#[derive(Clone, Default)]
pub struct WriteKeys(Vec<Secret>);

impl WriteKeys {
    pub fn new<S: Into<String>>(keys: impl IntoIterator<Item = S>) -> WriteKeys {
        WriteKeys(keys.into_iter().map(Secret::new).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `presented` is one of the keys; every key is compared, each in constant time.
    fn accepts(&self, presented: &str) -> bool {
        self.0.iter().fold(false, |found, key| {
            found | bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes()))
        })
    }
}

impl std::fmt::Debug for WriteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteKeys({} redacted)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for WriteKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WriteKeys, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Joined(String),
            List(Vec<String>),
        }
        let keys: Vec<String> = match Written::deserialize(d)? {
            Written::Joined(text) => text.split([',', '\n']).map(str::to_owned).collect(),
            Written::List(list) => list,
        };
        // Trimmed: a list written `a, b` or a file with `\r\n` lines means `a` and `b`.
        let keys = keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty());
        Ok(WriteKeys::new(keys))
    }
}

pub(super) fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/batch", post(receive_batch))
        .route("/v1/{call}", post(receive_call))
        .with_state(state)
}

/// A refusal on the Tracking API: the shared mapping's status and body, with `"success": false`.
struct Refusal(IngestError);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, mut body) = self.0.answer();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("success".into(), Value::Bool(false));
        }
        (status, Json(body)).into_response()
    }
}

impl From<IngestError> for Refusal {
    fn from(e: IngestError) -> Refusal {
        Refusal(e)
    }
}

async fn receive_batch(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Refusal> {
    receive(state, headers, body, None).await
}

/// `/v1/identify`, `/v1/track`, …; any other `/v1/…` is not the Tracking API's.
async fn receive_call(
    State(state): State<IngestState>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Response> {
    let Some(call) = SINGLE_CALLS.iter().find(|c| **c == call) else {
        return Err(axum::http::StatusCode::NOT_FOUND.into_response());
    };
    receive(state, headers, body, Some(call))
        .await
        .map_err(IntoResponse::into_response)
}

/// Authenticates, reads and stores one request; `call` is the single call's type, `None` for
/// a batch.
async fn receive(
    state: IngestState,
    headers: HeaderMap,
    body: Body,
    call: Option<&str>,
) -> Result<Json<Value>, Refusal> {
    // Held until the answer: the parsed events are alive until then.
    let _parsing = admit_request(&state, &headers).await?;
    let events = read_events(&state, &headers, body, call)
        .await
        .inspect_err(|e| state.metrics.event_rejected(refusal_reason(e)))?;
    let answer = store_events(&state, events).await?;
    if answer.accepted == 0
        && !answer.rejected.is_empty()
        && answer.duplicates == 0
        && answer.ignored == 0
    {
        return Err(IngestError::AllRejected(answer).into());
    }
    let mut body = serde_json::to_value(&answer).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("success".into(), Value::Bool(true));
    }
    Ok(Json(body))
}

/// The metric reason of a request refused before any event was looked at.
fn refusal_reason(e: &IngestError) -> &'static str {
    match e {
        IngestError::Unauthorized(_) => "unauthorized",
        IngestError::TooLarge(_) => "too_large",
        _ => "malformed",
    }
}

/// Checks the write key (the header's before reading anything, the body's after parsing),
/// decompresses and splits the body into events.
async fn read_events(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
    call: Option<&str>,
) -> Result<Vec<RawEvent>, IngestError> {
    let keys = &state.settings.write_keys;
    if keys.is_empty() {
        return Err(IngestError::Unauthorized(
            "no write keys are configured (segment.write_keys / RELAY_WRITE_KEYS): the Tracking \
             API endpoints refuse every request",
        ));
    }
    let header_key = basic_auth_user(headers)?;
    if let Some(key) = &header_key {
        check_key(keys, key)?;
    }
    let limit = state.settings.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| IngestError::TooLarge(limit))?;
    let bytes = decode(&bytes, headers, limit)?;
    let mut obj = parse_object(&bytes)?;
    let body_key = obj.remove("writeKey");
    if header_key.is_none() {
        match body_key.as_ref().and_then(Value::as_str) {
            Some(key) => check_key(keys, key)?,
            None => return Err(IngestError::Unauthorized(MISSING_KEY)),
        }
    }
    match call {
        Some(call) => Ok(vec![single_call(obj, call)]),
        None => batch(obj),
    }
}

const MISSING_KEY: &str = "missing write key: send it as the HTTP basic-auth user (empty \
                           password) or as \"writeKey\" in the body";

fn check_key(keys: &WriteKeys, presented: &str) -> Result<(), IngestError> {
    if keys.accepts(presented) {
        Ok(())
    } else {
        Err(IngestError::Unauthorized("unknown write key"))
    }
}

/// The basic-auth user, when the request carries basic auth; a malformed one is refused.
/// Any other scheme (an OAuth bearer token) leaves the key to the body, as Segment does.
fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, IngestError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let Some((scheme, encoded)) = text.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let malformed = || IngestError::Unauthorized("malformed basic Authorization header");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let credentials = String::from_utf8(decoded).map_err(|_| malformed())?;
    // The key is the user; the password is empty, though some clients send the key there too.
    let user = credentials
        .split_once(':')
        .map_or(&*credentials, |(u, _)| u);
    Ok(Some(user.to_owned()))
}

/// The body as sent: gzip is undone, bounded by `limit` after decompression.
fn decode(bytes: &Bytes, headers: &HeaderMap, limit: usize) -> Result<Bytes, IngestError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or_default().trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(bytes.clone()),
        Some("gzip" | "x-gzip") => gunzip(bytes, limit),
        Some(other) => Err(IngestError::Malformed(format!(
            "unsupported Content-Encoding {other:?}: send gzip or nothing"
        ))),
    }
}

/// Decompresses at most `limit` bytes; one byte more means the body is too large.
fn gunzip(bytes: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(bytes)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Malformed(format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, IngestError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(IngestError::Malformed("body must be a JSON object".into())),
        Err(e) => Err(IngestError::Malformed(format!("invalid JSON: {e}"))),
    }
}

/// One call: its type is the path's, whatever the body says, as the Tracking API does.
fn single_call(mut obj: Map<String, Value>, call: &str) -> RawEvent {
    obj.insert("type".into(), Value::String(call.to_owned()));
    let event = Value::Object(obj);
    let raw = event.to_string();
    (Ok(event), raw)
}

/// `{"batch": [...]}`: each item gets the envelope's `context` and `integrations`; a key an item
/// carries itself is taken out too.
fn batch(mut obj: Map<String, Value>) -> Result<Vec<RawEvent>, IngestError> {
    let items = match obj.remove("batch") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(IngestError::Malformed("\"batch\" must be an array".into())),
        None => {
            return Err(IngestError::Malformed(
                "body must be {\"batch\": [...]}".into(),
            ))
        }
    };
    let items = items.into_iter().map(|mut item| {
        if let Some(fields) = item.as_object_mut() {
            fields.remove("writeKey");
        }
        item
    });
    Ok(tracking_api_batch(items.collect(), &obj))
}

#[cfg(test)]
mod tests;
