//! Logs: `tracing` with a text or JSON format and `RUST_LOG`-style filtering.
//!
//! In: the configured [`LogFormat`]; every HTTP request through [`log_request`].
//! Out: a global subscriber on stderr; one line per request.
//! Stays true:
//! - the API key and shared secret are never logged (they are wrapped types whose `Debug`
//!   redacts them, and request lines record method, route template, status and latency, never
//!   headers or bodies);
//! - no email is logged at any level: where a subscriber must be told apart, [`email_tag`]
//!   gives a short hash of its email instead;
//! - text logs carry ANSI colours only when stderr is a terminal, so a log file stays plain;
//! - probes and scrapes (`/healthz`, `/readyz`, `/metrics`, `/status`) log at debug, everything
//!   else at info, so an orchestrator polling every few seconds does not drown the log.

use std::io::IsTerminal;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use sha1::{Digest, Sha1};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Routes asked by machines every few seconds: their lines go to debug.
const PROBE_ROUTES: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/status"];

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests, or a subcommand after another) is harmless: keep the first.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Middleware: one line per request with method, route template, status and latency.
pub async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if PROBE_ROUTES.contains(&route.as_str()) {
        tracing::debug!(%method, %route, status, latency_ms, "request");
    } else {
        tracing::info!(%method, %route, status, latency_ms, "request");
    }
    response
}

/// A short, stable tag for an email (the first 8 hex digits of the SHA-1 of its key,
/// [`crate::identify::email_key`]), so logs can tell subscribers apart without personal data.
pub fn email_tag(email: &str) -> String {
    let digest = Sha1::digest(crate::identify::email_key(email).as_bytes());
    hex::encode(&digest[..4])
}

/// Replaces every word containing `@`, so a message quoting an email (an API error, a value
/// that could not be converted) can be logged.
pub fn redact_emails(text: &str) -> String {
    text.split(' ')
        .map(|word| if word.contains('@') { "[email]" } else { word })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words with an @ are redacted before an error reaches the log.
    #[test]
    fn redact_emails_hides_addresses() {
        let text = "No subscriber jane@example.com (\"a@b\") here";
        assert_eq!(redact_emails(text), "No subscriber [email] [email] here");
    }

    /// The tag ignores case and surrounding spaces, and shows nothing of the address.
    #[test]
    fn email_tag_is_short_stable_and_opaque() {
        let tag = email_tag("Maria.Lopez@Example.com");
        assert_eq!(tag.len(), 8);
        assert_eq!(tag, email_tag(" maria.lopez@example.com "));
        assert_ne!(tag, email_tag("john.doe@example.com"));
        assert!(!tag.contains('@') && !tag.contains("maria"));
    }
}
