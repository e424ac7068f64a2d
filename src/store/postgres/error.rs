//! PostgreSQL failures, sorted by what the caller must do, and the store's location without
//! its credentials.
//!
//! In: driver and pool errors, the connection configuration. Out: [`StoreError`]s and a
//! printable location.
//! Stays true: nothing here quotes a password, nor a row's values (a constraint's detail would
//! show them, and they can be emails): only SQLSTATEs and the server's one-line messages.
//! "Cannot reach the server" ([`StoreError::Unreachable`]) is told apart from "the server
//! refused" ([`StoreError::Postgres`]).

use std::error::Error as _;

use deadpool_postgres::PoolError;
use tokio_postgres::config::Host;

use crate::store::StoreError;

/// SQLSTATEs that mean the server is not there for us (rather than refusing a statement):
/// connection exceptions (class 08), shutting down or starting up, out of connections.
fn is_unreachable_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Deadlock or serialization failure: another transaction won a race; running the loser's
/// statements again is the documented remedy.
pub(super) fn is_contention(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { code: Some(code), .. } if code == "40P01" || code == "40001")
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            if is_unreachable_state(code) {
                return StoreError::Unreachable(format!("{} (SQLSTATE {code})", db.message()));
            }
            return StoreError::Postgres {
                code: Some(code.to_owned()),
                message: db.message().to_owned(),
            };
        }
        let io = e
            .source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        if e.is_closed() || io {
            return StoreError::Unreachable(describe(&e));
        }
        StoreError::Postgres {
            code: None,
            message: describe(&e),
        }
    }
}

/// The error with its causes ("error connecting to server: Connection refused"): the driver's
/// own message names only the kind of failure. Causes are I/O errors and the parser's and
/// type conversions' messages, which quote neither the URL nor row values.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    message
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) => {
                StoreError::Unreachable("no database connection became free in time".into())
            }
            PoolError::Closed => StoreError::Closed,
            other => StoreError::Postgres {
                code: None,
                message: other.to_string(),
            },
        }
    }
}

/// The same failure again, for each of the callers that shared one transaction.
pub(super) fn shared(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unreachable(m) => StoreError::Unreachable(m.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Postgres { code, message } => StoreError::Postgres {
            code: code.clone(),
            message: message.clone(),
        },
        other => StoreError::Commit(other.to_string()),
    }
}

/// Where the store is, for messages: `postgres://user@host:port/database`, never the password
/// (nor the options, which an operator may have used for one).
pub(super) fn location(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one per host, or none (the default).
            let ports = config.get_ports();
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    // The user is named apart: `user@host` reads as an email to whoever scans logs for them.
    let user = config
        .get_user()
        .map(|u| format!(" (user {u})"))
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or("");
    format!("postgres://{}/{database}{user}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The location keeps user, host, port and database, and drops the password and options.
    #[test]
    fn location_has_no_password() {
        let cases = [
            (
                "postgres://relay:s3cret@db.internal:5433/queue?options=-csearch_path%3Dx",
                "postgres://db.internal:5433/queue (user relay)",
            ),
            (
                "host=db port=5432 user=relay password=s3cret dbname=queue",
                "postgres://db:5432/queue (user relay)",
            ),
            ("postgres://db/queue", "postgres://db:5432/queue"),
        ];
        for (url, expected) in cases {
            let config: tokio_postgres::Config = url.parse().expect("a valid url");
            let shown = location(&config);
            assert_eq!(shown, expected);
            assert!(!shown.contains("s3cret"));
        }
    }

    /// Connection exceptions and shutdowns are "unreachable"; other states are refusals.
    #[test]
    fn sorts_sqlstates() {
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(is_unreachable_state(code), "{code}");
        }
        for code in ["23505", "40P01", "42P01", "28P01", "3D000"] {
            assert!(!is_unreachable_state(code), "{code}");
        }
    }
}
