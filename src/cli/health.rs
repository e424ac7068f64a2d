//! `healthcheck`: asks a running relay's `/healthz`, for container health checks (no curl in a
//! distroless image).
//!
//! In: `--url`, else the configured `listen` address (secrets are not read). Out: exit 0 on a
//! 2xx answer within 3 s, else 1 with the reason on stderr.
//! Stays true: it never exits 2 (container runtimes reserve it), even for a bad configuration.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::{self, Settings};

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to check; default: /healthz on RELAY_LISTEN (0.0.0.0 asked as 127.0.0.1).
    #[arg(long)]
    pub url: Option<String>,
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

pub(super) async fn healthcheck(config_file: Option<PathBuf>, args: HealthcheckArgs) -> ExitCode {
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
}
