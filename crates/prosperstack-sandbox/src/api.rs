//! The `/v1` routes. In: HTTP requests; out: JSON answers shaped like the API reference.
//!
//! Every `/v1` request passes the [`gate`] first, in this order: count it in the stats (whatever
//! its outcome), check basic auth (401, not counted against any key), apply the key's rate limit
//! (429), answer an injected fault if one is pending, and only then route it. Every answer after
//! auth carries the `RateLimit-*` headers. [`json_errors`] wraps the whole router so that even
//! axum's own answers (405, 404 outside `/v1`, body rejections) have a JSON `{"error"}` body.

use std::collections::HashMap;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{MatchedPath, OriginalUri, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::page::PageRequest;
use super::property::{Entity, NewProperty};
use super::state::{Page, SubscriberFilter};
use super::{PropertyView, Sandbox, SandboxError, UpdateVerb};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    let subscriber = get(get_subscriber);
    let subscriber = match sandbox.config().update_verb {
        UpdateVerb::Put => subscriber.put(update_subscriber),
        UpdateVerb::Patch => subscriber.patch(update_subscriber),
    };
    let v1 = Router::new()
        .route("/properties", get(list_properties).post(create_property))
        .route(
            "/properties/{id}",
            get(get_property).delete(delete_property),
        )
        .route("/subscribers", get(list_subscribers))
        .route("/subscribers/{id}", subscriber)
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(sandbox.clone(), gate))
        .with_state(sandbox);
    Router::new().nest("/v1", v1)
}

/// An error answer: a status and a `{"error": message}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<SandboxError> for ApiError {
    fn from(error: SandboxError) -> ApiError {
        ApiError::new(error.status(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

// ----- the gate: stats, auth, rate limit, faults -----

async fn gate(State(sandbox): State<Sandbox>, request: Request, next: Next) -> Response {
    let route = route_label(&request);
    let response = admit(&sandbox, request, next).await;
    sandbox.state().record(route, response.status());
    response
}

/// `"METHOD /v1/route/{template}"`: a label that never contains ids or emails.
fn route_label(request: &Request) -> String {
    let method = request.method();
    match request.extensions().get::<MatchedPath>() {
        Some(path) => format!("{method} {}", path.as_str()),
        None => format!("{method} (unmatched)"),
    }
}

async fn admit(sandbox: &Sandbox, request: Request, next: Next) -> Response {
    let key = match authenticate(&sandbox.config().api_keys, request.headers()) {
        Ok(key) => key,
        Err(message) => return unauthorized(message),
    };
    // One lock for the limiter and the faults; released before the handler runs.
    let (decision, fault) = {
        let mut state = sandbox.state();
        let now = Instant::now() + state.clock_skew;
        let decision = state.limiter.check(&key, now);
        let fault = decision.admitted.then(|| state.take_fault()).flatten();
        (decision, fault)
    };
    let mut response = if !decision.admitted {
        let message = format!(
            "Rate limit of {} requests per window exceeded; retry in {} s",
            decision.limit, decision.reset_secs
        );
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response()
    } else if let Some(status) = fault {
        ApiError::new(status, "Injected failure (sandbox fault injection)").into_response()
    } else {
        next.run(request).await
    };
    decision.write_headers(response.headers_mut());
    response
}

/// The API key from `Authorization: Basic base64(key:)`, if it is one we accept.
fn authenticate(api_keys: &[String], headers: &HeaderMap) -> Result<String, &'static str> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or("Missing API key: use HTTP basic auth with the API key as the username")?;
    let (username, password) = basic_credentials(header)
        .ok_or("Malformed Authorization header: expected HTTP basic auth")?;
    if !password.is_empty() {
        return Err("The API key goes in the basic auth username; the password must be empty");
    }
    if api_keys.contains(&username) {
        Ok(username)
    } else {
        Err("Invalid API key")
    }
}

fn basic_credentials(header: &HeaderValue) -> Option<(String, String)> {
    let (scheme, encoded) = header.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some((username.to_string(), password.to_string()))
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    let challenge = HeaderValue::from_static(r#"Basic realm="ProsperStack API""#);
    response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    response
}

// ----- request parsing -----

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;
pub(crate) type BodyBytes = Result<Bytes, BytesRejection>;

/// The endpoint's documented query parameters, each at most once. Anything else is a 400, so a
/// misspelt filter fails loudly instead of silently listing everything.
fn query_params(query: QueryPairs, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Query(pairs) = query
        .map_err(|e| ApiError::bad_request(format!("Invalid query string: {}", e.body_text())))?;
    let mut params = HashMap::new();
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                r#"Unknown query parameter "{name}""#
            )));
        }
        if params.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!(
                r#"Query parameter "{name}" given more than once"#
            )));
        }
    }
    Ok(params)
}

fn page_request(params: &HashMap<String, String>) -> Result<PageRequest, ApiError> {
    let limit = params.get("limit").map(String::as_str);
    let cursor = params.get("cursor").map(String::as_str);
    Ok(PageRequest::parse(limit, cursor)?)
}

/// A JSON request body; the API accepts JSON only, so another content type is a 415.
fn json_body(headers: &HeaderMap, body: BodyBytes) -> Result<Value, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected a JSON body with Content-Type: application/json",
        ));
    }
    parse_json(body)
}

/// Parses a body as JSON whatever its content type (the admin routes are meant for curl).
pub(crate) fn parse_json(body: BodyBytes) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The changes of an update body: exactly `{"properties": {...}}`; the reference allows changing
/// nothing but custom properties, so any other field is a 400 rather than silently ignored.
fn update_changes(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("The body must be a JSON object"))?;
    if let Some(other) = object.keys().find(|k| *k != "properties") {
        return Err(ApiError::bad_request(format!(
            r#"Unknown field "{other}": only "properties" can be updated"#
        )));
    }
    match object.get("properties") {
        Some(Value::Object(changes)) => Ok(changes),
        Some(_) => Err(ApiError::bad_request(r#""properties" must be an object"#)),
        None => Err(ApiError::bad_request(r#""properties" is required"#)),
    }
}

// ----- handlers -----

async fn list_properties(
    State(sandbox): State<Sandbox>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let params = query_params(query, &["entity", "cursor", "limit"])?;
    let entity = match params.get("entity") {
        None => None,
        Some(raw) => Some(Entity::parse(raw).ok_or_else(|| {
            ApiError::bad_request(format!(r#""entity" must be {}"#, Entity::EXPECTED))
        })?),
    };
    let page = page_request(&params)?;
    let page = sandbox.state().list_properties(entity, &page)?;
    Ok(page_json(page))
}

async fn create_property(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Result<Response, ApiError> {
    let new = NewProperty::from_json(&json_body(&headers, body)?)?;
    let view = sandbox.state().create_property(new)?.view();
    Ok(created_property(view))
}

/// 201 with the property and a `Location` header naming it.
pub(crate) fn created_property(view: PropertyView) -> Response {
    let location = format!("/v1/properties/{}", view.id);
    (StatusCode::CREATED, [(LOCATION, location)], Json(view)).into_response()
}

async fn get_property(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
) -> Result<Json<PropertyView>, ApiError> {
    Ok(Json(sandbox.state().property(&id)?.view()))
}

async fn delete_property(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    sandbox.state().delete_property(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_subscribers(
    State(sandbox): State<Sandbox>,
    query: QueryPairs,
) -> Result<Json<Value>, ApiError> {
    let mut params = query_params(query, &["email", "platform_id", "cursor", "limit"])?;
    let page = page_request(&params)?;
    let filter = SubscriberFilter {
        email: params.remove("email"),
        platform_id: params.remove("platform_id"),
    };
    let page = sandbox.state().list_subscribers(&filter, &page)?;
    Ok(page_json(page))
}

async fn get_subscriber(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let state = sandbox.state();
    Ok(Json(state.subscriber_json(state.subscriber(&id)?)))
}

async fn update_subscriber(
    State(sandbox): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: BodyBytes,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&headers, body)?;
    let changes = update_changes(&body)?;
    let mut state = sandbox.state();
    state.update_subscriber(&id, changes)?;
    state.stats.subscriber_updates += 1;
    Ok(Json(state.subscriber_json(state.subscriber(&id)?)))
}

fn page_json(page: Page) -> Json<Value> {
    Json(json!({ "data": page.data, "next_cursor": page.next_cursor }))
}

async fn no_route(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("No route for {method} {}", uri.path()),
    )
}

// ----- JSON error bodies everywhere -----

/// Rewrites any error answer whose body is not JSON (axum's own 405, 404 and rejections) as
/// `{"error": …}`, keeping its status and headers (e.g. `Allow`), so clients can always parse errors.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejection texts are short; anything unreadable falls back to the status's reason.
    let text = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("Method {method} is not allowed on this path")
    } else if !text.is_empty() {
        text
    } else {
        status.canonical_reason().unwrap_or("Error").to_string()
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = json!({ "error": message }).to_string();
    Response::from_parts(parts, Body::from(body))
}
