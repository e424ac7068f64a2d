//! `serve` and `sandbox`: the relay, and the ProsperStack simulator, as long-running processes.
//!
//! In: the configuration (for `serve`) and the commands' flags. Out: a process that serves until
//! SIGTERM or Ctrl-C, then exits 0; exit 2 for a configuration it cannot start with, 1 when it
//! cannot listen or fails while running.
//! Stays true: with `--sandbox`, the simulator is the upstream whatever the environment says
//! (its own URL and key), so a demo can never reach a real ProsperStack account.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::check_config::startable;
use super::config_failure;
use crate::config;
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
    if args.sandbox && !serve_sandbox(args.sandbox_listen, &shutdown).await {
        return ExitCode::FAILURE;
    }
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %settings.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let stop = shutdown.clone();
    let result = crate::app::run(settings, listener, async move {
        termination_signal().await;
        stop.cancel();
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay failed");
            ExitCode::FAILURE
        }
    }
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

/// Starts the built-in simulator for `serve --sandbox`; answers whether it listens.
async fn serve_sandbox(addr: SocketAddr, stop: &tokio_util::sync::CancellationToken) -> bool {
    match start_sandbox(addr, SandboxConfig::default(), stop.clone()).await {
        Ok(addr) => {
            tracing::info!(address = %addr, api_key = SANDBOX_API_KEY, state = %format!("http://{addr}/_sandbox/state"), "ProsperStack sandbox listening");
            true
        }
        Err(e) => {
            tracing::error!(address = %addr, error = %e, "cannot start the sandbox");
            false
        }
    }
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
            eprintln!("cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
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
