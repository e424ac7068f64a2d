//! `serve` and `sandbox`: the relay, and the ProsperStack simulator, as long-running processes.
//!
//! In: the configuration (for `serve`) and the commands' flags. Out: a process that serves until
//! SIGTERM or Ctrl-C, then exits 0; exit 2 when it cannot start with what it was given (a
//! setting, the data directory, an address another process holds: one line naming what to
//! change), 1 when it fails while running.
//! Stays true: with `--sandbox`, the simulator is the upstream whatever the environment says
//! (its own URL and key), so a demo can never reach a real ProsperStack account; and its queue
//! belongs to that simulator: the default `./data/sandbox` starts afresh each run as the
//! simulator does, while a directory named with `RELAY_DATA_DIR` is kept (and a warning says
//! what that means for duplicates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::check_config::startable;
use super::config_failure;
use crate::app::AppError;
use crate::config::{self, Settings};
use crate::store::SqliteStore;
use prosperstack_sandbox::{Sandbox, SandboxConfig, UpdateVerb, SANDBOX_API_KEY};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Relay to a built-in ProsperStack simulator with demo data (no account needed).
    #[arg(long)]
    pub sandbox: bool,
    /// Where the built-in simulator listens with --sandbox.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub sandbox_listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:4010", env = "SANDBOX_LISTEN")]
    pub listen: SocketAddr,
    /// Requests allowed per window and key.
    #[arg(long, default_value_t = 100)]
    pub rate_limit_requests: u32,
    /// The rate-limit window in seconds (fractions allowed, for scaled trials).
    #[arg(long, default_value_t = 60.0)]
    pub rate_limit_window_secs: f64,
    /// Start empty instead of with the demo subscribers and properties.
    #[arg(long)]
    pub no_seed: bool,
    /// The one verb "Update a subscriber" accepts (PUT or PATCH); the other is answered 405.
    #[arg(long, default_value = "PUT")]
    pub update_method: UpdateVerb,
}

pub(super) async fn serve(config_file: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    let sandbox_url = format!("http://{}", args.sandbox_listen);
    let env = |name: &str| sandbox_env(args.sandbox.then_some(sandbox_url.as_str()), name);
    let settings = match startable(config_file.as_deref(), &env) {
        Ok(s) => s,
        Err(e) => return config_failure(&e),
    };
    crate::telemetry::init(settings.log_format);
    let shutdown = tokio_util::sync::CancellationToken::new();
    if args.sandbox {
        if let Err(line) = sandbox_queue(&settings) {
            return refuse(&line);
        }
        if let Err(line) = serve_sandbox(args.sandbox_listen, &shutdown).await {
            return refuse(&line);
        }
    }
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => return config_failure(&config::cannot_listen("listen", settings.listen, &e)),
    };
    let stop = shutdown.clone();
    let result = crate::app::run(settings, listener, async move {
        termination_signal().await;
        stop.cancel();
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Refused before serving (a metrics address another process holds): one line, as above.
        Err(AppError::Config(e)) => config_failure(&e),
        Err(e) => {
            tracing::error!(error = %e, "relay failed");
            ExitCode::FAILURE
        }
    }
}

/// Cannot start with what it was given: one line on stderr, exit 2.
fn refuse(line: &str) -> ExitCode {
    eprintln!("{line}");
    ExitCode::from(2)
}

/// The queue of `serve --sandbox`. The simulator starts with its demo data each run; a queue
/// kept from an earlier run would remember that run's messageIds and answer the README's demo
/// event as a duplicate, never delivered to the new simulator. So the default directory starts
/// afresh; a directory the operator named is theirs, kept, with a warning saying so.
fn sandbox_queue(settings: &Settings) -> Result<(), String> {
    let dir = &settings.data_dir;
    if config::process_env("RELAY_DATA_DIR").is_some() {
        tracing::warn!(data_dir = %dir.display(), "serve --sandbox keeps the queue in RELAY_DATA_DIR, but the sandbox starts afresh: events whose messageId an earlier run stored are answered as duplicates and not delivered again (unset RELAY_DATA_DIR for a fresh ./data/sandbox each run)");
        return Ok(());
    }
    SqliteStore::discard(dir).map_err(|e| {
        format!("cannot start the sandbox's queue afresh: {e}; stop the relay using it, or set RELAY_DATA_DIR to another directory")
    })?;
    tracing::info!(data_dir = %dir.display(), "the sandbox's queue starts afresh, as the simulated ProsperStack does");
    Ok(())
}

/// The process environment, except that with `--sandbox` (its URL given) the simulator is the
/// upstream, whatever the environment says, and the data directory defaults to its own.
fn sandbox_env(sandbox_url: Option<&str>, name: &str) -> Option<String> {
    let Some(url) = sandbox_url else {
        return config::process_env(name);
    };
    match name {
        "PROSPERSTACK_API_URL" => Some(url.to_owned()),
        "PROSPERSTACK_API_KEY" => Some(SANDBOX_API_KEY.to_owned()),
        "PROSPERSTACK_API_KEY_FILE" => None,
        _ => super::sandbox_data_env(name),
    }
}

/// Starts the built-in simulator for `serve --sandbox`; else the line saying what to change.
async fn serve_sandbox(
    addr: SocketAddr,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let local = start_sandbox(addr, SandboxConfig::default(), stop.clone())
        .await
        .map_err(|e| cannot_listen(addr, &e, "--sandbox-listen"))?;
    tracing::info!(address = %local, api_key = SANDBOX_API_KEY, state = %format!("http://{local}/_sandbox/state"), "ProsperStack sandbox listening");
    Ok(())
}

/// The line for a sandbox address that cannot be bound, naming the flag that changes it.
fn cannot_listen(addr: SocketAddr, e: &std::io::Error, flag: &str) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => "another process is listening there".to_owned(),
        _ => e.to_string(),
    };
    format!("cannot listen on {addr} for the ProsperStack sandbox: {why}; choose another address with {flag}")
}

async fn start_sandbox(
    addr: SocketAddr,
    config: SandboxConfig,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let sandbox = Sandbox::new(config);
    tokio::spawn(async move {
        if let Err(e) = sandbox.serve(listener, stop.cancelled_owned()).await {
            tracing::error!(error = %e, "sandbox stopped");
        }
    });
    Ok(local)
}

pub(super) async fn sandbox(args: SandboxArgs) -> ExitCode {
    crate::telemetry::init(crate::config::LogFormat::Text);
    if !(args.rate_limit_window_secs.is_finite() && args.rate_limit_window_secs > 0.0)
        || args.rate_limit_requests == 0
    {
        eprintln!("--rate-limit-requests and --rate-limit-window-secs must be more than 0");
        return ExitCode::from(2);
    }
    let config = SandboxConfig {
        rate_limit_requests: args.rate_limit_requests,
        rate_limit_window: Duration::from_secs_f64(args.rate_limit_window_secs),
        seed_demo: !args.no_seed,
        update_verb: args.update_method,
        ..SandboxConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    match start_sandbox(args.listen, config, stop.clone()).await {
        Ok(addr) => {
            tracing::info!(address = %addr, api_key = SANDBOX_API_KEY, "ProsperStack sandbox listening")
        }
        Err(e) => {
            return refuse(&cannot_listen(
                args.listen,
                &e,
                "--listen (or SANDBOX_LISTEN)",
            ))
        }
    }
    termination_signal().await;
    stop.cancel();
    ExitCode::SUCCESS
}

/// SIGTERM (orchestrators) or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
