//! A recorder in front of the sandbox: every `/v1` request it answers, with its time, kind and
//! subscriber, so a report can say which requests were spent and when.
//!
//! In: requests passing the axum middleware [`record`]. Out: [`Recorded`] entries in arrival
//! order ([`Recorder::snapshot`]). Stays true: the sandbox's own answers are untouched; the
//! bench's admin calls (`/_sandbox`) are not recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

/// Which kind of ProsperStack request a recorded request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `GET /v1/properties`
    Catalogue,
    /// `GET /v1/subscribers` without `email`: a directory page.
    ListPage,
    /// `GET /v1/subscribers?email=…`
    Lookup,
    /// `PUT /v1/subscribers/{id}`
    Update,
    Other,
}

/// One request the sandbox answered, as the recorder saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Since the recorder's origin.
    pub at: Duration,
    pub kind: RequestKind,
    /// The subscriber id of an update.
    pub subscriber: Option<String>,
    /// A list page asked without a cursor: the first page of a directory walk.
    pub first_page: bool,
    pub status: u16,
}

/// Every `/v1` request a sandbox answered, with its time: the timeline behind a report.
#[derive(Clone)]
pub struct Recorder {
    origin: Instant,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn new(origin: Instant) -> Recorder {
        Recorder {
            origin,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn snapshot(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

pub async fn record(State(recorder): State<Recorder>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    let (kind, subscriber) = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/properties") => (RequestKind::Catalogue, None),
        ("GET", "/v1/subscribers") if has("email") => (RequestKind::Lookup, None),
        ("GET", "/v1/subscribers") => (RequestKind::ListPage, None),
        ("PUT", p) if p.starts_with("/v1/subscribers/") => (
            RequestKind::Update,
            Some(p.trim_start_matches("/v1/subscribers/").to_owned()),
        ),
        _ if path.starts_with("/v1") => (RequestKind::Other, None),
        // Admin routes are the bench's own, not the client's.
        _ => return response,
    };
    let entry = Recorded {
        at: recorder.origin.elapsed(),
        kind,
        subscriber,
        first_page: kind == RequestKind::ListPage && !has("cursor"),
        status: response.status().as_u16(),
    };
    recorder
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(entry);
    response
}
