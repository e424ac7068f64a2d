//! Server: a bound listener and a router in, HTTP/1.1 answers out, with limits no slow or
//! hostile client can get past, until a stop token is cancelled.
//!
//! Stays true:
//! - a client has `header_read_timeout` to send a request's headers, then the connection is
//!   closed: slow headers (one line a second) cannot hold a connection for ever. The same timer
//!   starts when a kept-alive connection goes idle after an answer, so it is also the idle
//!   keep-alive timeout (hyper arms it whenever it waits for a request head);
//! - at most `max_connections` connections are served at once; past that, new ones wait in
//!   the kernel's accept queue rather than taking file descriptors the store needs;
//! - a body that arrives too slowly is answered 408 by the router's request timeout (app.rs);
//! - on stop, no new connection is accepted, idle ones are closed, and in-flight requests
//!   finish before [`serve`] returns (the drain in app.rs relies on it).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// How long to wait after an accept error (out of file descriptors, most often) before the
/// next accept: retrying at once would spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The `[http]` section: what one client may hold of the server.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Time to send a request's headers, and to send the next one on a kept-alive connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once, per listener.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

impl HttpSettings {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::at(
                "http.header_read_timeout",
                "must be more than 0",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::at(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Serves `router` on `listener` within `limits` until `stop` is cancelled, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpSettings,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    while let Some((stream, permit)) = next_connection(&listener, &permits, &stop).await {
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts and clients that went away: theirs, not the relay's, to worry about.
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The next connection to serve and the permit it holds, once one is free; `None` on stop.
async fn next_connection(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        _ = stop.cancelled() => return None,
        permit = permits.clone().acquire_owned() => permit.ok()?,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some((stream, permit)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
}
