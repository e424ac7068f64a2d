//! The command line: what each subcommand takes and does.
//!
//! In: arguments (clap) and the environment. Out: an exit code. `serve` runs the relay (with
//! `--sandbox`, against a built-in ProsperStack simulator); `sandbox` runs the simulator alone;
//! `check-config` refuses what `serve` would refuse at start (settings, an unwritable data
//! directory) without serving; `healthcheck` asks a running relay's `/healthz` (for container
//! health checks, no curl needed); `dead-letters` inspects, replays and purges dead letters in
//! the data directory. (The benchmarks are their own binary, `crates/relay-bench`.)
//!
//! Every command reads settings through [`Settings`]; `healthcheck` and `dead-letters` load them
//! without secrets, which they do not need. An invalid configuration exits 2 with one line
//! (`healthcheck`: 1, as container runtimes reserve 2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::clock::{Clock, TokioClock};
use crate::config::{self, ConfigError, Settings};
use crate::store::{DeadLetter, SqliteStore, Store};
use prosperstack_sandbox::{Sandbox, SandboxConfig, SANDBOX_API_KEY};

#[derive(Debug, Parser)]
#[command(
    name = "prosperstack-relay",
    version,
    about = "Segment Identify calls in, ProsperStack subscriber properties out"
)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, env = "RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Run the ProsperStack API simulator alone.
    Sandbox(SandboxArgs),
    /// Check the configuration and exit (0: valid, 2: invalid).
    CheckConfig,
    /// Ask a running relay's /healthz; exit 0 when healthy, 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

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
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to check; default: /healthz on RELAY_LISTEN (0.0.0.0 asked as 127.0.0.1).
    #[arg(long)]
    pub url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (a table, or JSON with --json).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters' original events back in the queue.
    Replay {
        /// Dead letter ids to replay (repeatable).
        #[arg(long = "id", required_unless_present = "all")]
        ids: Vec<i64>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters older than a duration (e.g. 30d).
    Purge {
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

/// Runs the parsed command line.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(cli.config, args).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::CheckConfig => check_config(cli.config.as_deref()),
        Command::Healthcheck(args) => healthcheck(cli.config, args).await,
        Command::DeadLetters(cmd) => dead_letters(cli.config, cmd).await,
    }
}

/// What `serve` would refuse at start, refused the same way, without serving.
fn check_config(config_file: Option<&Path>) -> ExitCode {
    match startable(config_file, &config::process_env) {
        Ok(s) => {
            println!(
                "configuration is valid (upstream {}, listen {}, data {})",
                config::display_url(&s.prosperstack.api_url),
                s.listen,
                s.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

/// Settings `serve` can start with: valid, and a data directory this process can write.
/// `check-config` and `serve` share it, so they refuse the same things with the same line.
fn startable(config_file: Option<&Path>, env: config::Env<'_>) -> Result<Settings, ConfigError> {
    let settings = Settings::load(config_file, env)?;
    settings.check_can_start()?;
    Ok(settings)
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}

async fn serve(config_file: Option<PathBuf>, args: ServeArgs) -> ExitCode {
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
        "RELAY_DATA_DIR" => {
            Some(config::process_env(name).unwrap_or_else(|| "./data/sandbox".into()))
        }
        _ => config::process_env(name),
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

async fn sandbox(args: SandboxArgs) -> ExitCode {
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

/// The URL `healthcheck` asks by default: `/healthz` on `listen`, any-address as loopback.
pub fn default_health_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

async fn healthcheck(config_file: Option<PathBuf>, args: HealthcheckArgs) -> ExitCode {
    let url = match args.url {
        Some(url) => url,
        // Secrets are not read: the check must work where the key's file is not readable.
        None => {
            match Settings::load_without_secrets(config_file.as_deref(), &config::process_env) {
                Ok(settings) => default_health_url(settings.listen),
                // Exit 1, not 2: container runtimes reserve 2, and a relay with this configuration
                // could not be healthy anyway.
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match probe(&url).await {
        Ok(()) => {
            println!("healthy: {url}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

/// GET `url`; `Ok` on a 2xx answer within 3 s.
async fn probe(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

async fn dead_letters(config_file: Option<PathBuf>, cmd: DeadLetterCommand) -> ExitCode {
    // Only the data directory is needed, so secrets are not read; the relay may be running
    // (SQLite serialises writers).
    let settings =
        match Settings::load_without_secrets(config_file.as_deref(), &config::process_env) {
            Ok(s) => s,
            Err(e) => return config_failure(&e),
        };
    let store = match SqliteStore::open_shared(&settings.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        DeadLetterCommand::List { json } => store
            .dead_letters()
            .await
            .map(|letters| print_dead_letters(&letters, json)),
        DeadLetterCommand::Replay { ids, all } => {
            let chosen = if all { None } else { Some(ids) };
            store
                .replay_dead_letters(chosen, TokioClock.wall_ms())
                .await
                .map(|n| println!("replayed {n} dead letter(s); their events are queued again"))
        }
        DeadLetterCommand::Purge { older_than } => {
            let before = TokioClock.wall_ms() - older_than.as_millis() as i64;
            store
                .purge_dead_letters(before)
                .await
                .map(|n| println!("purged {n} dead letter(s)"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn print_dead_letters(letters: &[DeadLetter], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(letters).unwrap_or_default()
        );
        return;
    }
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:>6}  {:<20}  {:<32}  {:>8}  {:>6}  reason",
        "id", "created (UTC)", "email", "attempts", "events"
    );
    for d in letters {
        let created = chrono::DateTime::from_timestamp_millis(d.created_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let props = if d.properties.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                d.properties.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        println!(
            "{:>6}  {:<20}  {:<32}  {:>8}  {:>6}  {}{}",
            d.id,
            created,
            d.email,
            d.attempts,
            d.events.len(),
            d.reason,
            props
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The health check asks loopback when the relay listens on every address.
    #[test]
    fn health_url_from_listen() {
        let url = |listen: &str| default_health_url(listen.parse().expect("an address"));
        assert_eq!(
            default_health_url(Settings::default().listen),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(url("0.0.0.0:9000"), "http://127.0.0.1:9000/healthz");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/healthz");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080/healthz");
    }

    /// The command line parses the documented forms.
    #[test]
    fn parses_commands() {
        assert!(Cli::try_parse_from(["p", "serve", "--sandbox"]).is_ok());
        assert!(Cli::try_parse_from(["p", "dead-letters", "replay", "--all"]).is_ok());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "replay", "--id", "3", "--id", "4"]).is_ok()
        );
        assert!(Cli::try_parse_from(["p", "dead-letters", "replay"]).is_err());
        assert!(Cli::try_parse_from(["p", "dead-letters", "purge", "--older-than", "30d"]).is_ok());
        assert!(
            Cli::try_parse_from(["p", "dead-letters", "purge", "--older-than", "soon"]).is_err()
        );
    }
}
