//! `check-config`: what `serve` would refuse at start, refused the same way, without serving.
//!
//! In: the configuration file (if any) and the environment. Out: one line and exit 0 when the
//! relay could start with them; else the one-line refusal `serve` would print, exit 2.
//! Stays true: `check-config` and `serve` go through [`startable`], so they refuse the same
//! things with the same line.

use std::path::Path;
use std::process::ExitCode;

use super::config_failure;
use crate::config::{self, ConfigError, Settings};

pub(super) fn check_config(config_file: Option<&Path>) -> ExitCode {
    match startable(config_file, &config::process_env) {
        Ok(s) => {
            println!(
                "configuration is valid (upstream {}, listen {}, store {})",
                config::display_url(&s.prosperstack.api_url),
                s.listen,
                crate::app::store_location(&s)
            );
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

/// Settings `serve` can start with: valid, and a data directory this process can write.
pub(super) fn startable(
    config_file: Option<&Path>,
    env: config::Env<'_>,
) -> Result<Settings, ConfigError> {
    let settings = Settings::load(config_file, env)?;
    settings.check_can_start()?;
    Ok(settings)
}
