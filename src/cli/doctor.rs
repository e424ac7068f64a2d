//! `doctor`: checks a setup against the real API and says, line by line, what to fix.
//!
//! In: the configuration (file and environment, as `serve` reads it), the data directory, and
//! ProsperStack's answer to one `GET /v1/properties?entity=subscriber&limit=100` (a second page
//! only when the first names a `next_cursor`).
//! Out: one line per check (`ok`, `warning`, `problem` with what to do), then how many
//! requests it spent; exit 1 when any check found a problem, else 0.
//! Stays true: at most 2 requests of the key's budget; nothing is written upstream; the store
//! is opened shared (a running relay keeps serving; a store needing a schema upgrade is
//! reported, never upgraded); the key, and its basic-auth form, are never printed.

mod checks;

use std::path::PathBuf;
use std::process::ExitCode;

use super::{hide_key, upstream_client};
use crate::clock::{Clock, TokioClock};
use crate::config::{self, Settings};
use crate::mapping::{Catalogue, Rules};
use crate::prosperstack::{ApiError, ApiKey, Client, Property};
use crate::store::StoreError;
use checks::{Finding, Level};

/// What the doctor found, and what it spent finding it.
#[derive(Default)]
struct Report {
    findings: Vec<Finding>,
    requests: u32,
}

impl Report {
    fn add(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    /// Prints every line (the key hidden from any server message quoted) and the exit code.
    fn finish(self, key: Option<&ApiKey>) -> ExitCode {
        for f in &self.findings {
            println!("{:<8} {}", f.level.as_str(), hide_key(&f.text, key));
        }
        let count = |level| self.findings.iter().filter(|f| f.level == level).count();
        let (problems, warnings) = (count(Level::Problem), count(Level::Warning));
        let plural = if self.requests == 1 { "" } else { "s" };
        println!(
            "doctor sent {} request{plural} to ProsperStack with this key; {problems} problem(s), {warnings} warning(s)",
            self.requests
        );
        if problems > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

pub(super) async fn doctor(config_file: Option<PathBuf>) -> ExitCode {
    let mut report = Report::default();
    let settings = match Settings::load(config_file.as_deref(), &config::process_env) {
        Ok(settings) => settings,
        Err(e) => {
            report.add(Finding::problem(format!(
                "{e}: fix it, then run doctor again"
            )));
            return report.finish(None);
        }
    };
    report.add(configuration(&settings));
    report.add(store(&settings).await);
    upstream(&settings, &mut report).await;
    report.finish(settings.prosperstack.api_key.as_ref())
}

fn configuration(settings: &Settings) -> Finding {
    Finding::ok(format!(
        "configuration is valid (upstream {}, listen {}, store {})",
        config::display_url(&settings.prosperstack.api_url),
        settings.listen,
        crate::app::store_location(settings)
    ))
}

/// The store opens and takes a write: the data directory's (writable, and the store in it if
/// any), or the PostgreSQL database's.
async fn store(settings: &Settings) -> Finding {
    let place = crate::app::store_location(settings);
    if let Err(e) = settings.check_can_start() {
        return Finding::problem(e.to_string());
    }
    let store = match crate::app::open_store_shared(settings).await {
        Ok(store) => store,
        // The directory is writable (checked above): there is simply no store yet.
        Err(StoreError::DataDir { .. }) => {
            return Finding::ok(format!(
                "data directory {place} is writable; no store in it yet (serve creates it)"
            ))
        }
        // These already say what to do (start this release's relay, or upgrade it).
        Err(e @ (StoreError::OlderSchema { .. } | StoreError::NewerSchema { .. })) => {
            return Finding::problem(e.to_string())
        }
        Err(e) => return Finding::problem(format!("the store in {place} cannot be opened: {e}")),
    };
    if let Err(e) = store.ping(TokioClock.wall_ms()).await {
        return Finding::problem(format!(
            "the store in {place} opens but cannot be written: {e}; check the disk (or the \
             database's permissions)"
        ));
    }
    let figures = match store.stats().await {
        Ok(s) => format!(
            "{} events queued for {} subscribers, {} dead letters",
            s.events, s.subscribers, s.dead_letters
        ),
        Err(e) => format!("queue figures unreadable: {e}"),
    };
    Finding::ok(format!(
        "store in {place} opens and is writable ({figures})"
    ))
}

/// The key, the mode, the rate limit and the catalogue, from at most two requests.
async fn upstream(settings: &Settings, report: &mut Report) {
    let url = config::display_url(&settings.prosperstack.api_url);
    let client = match upstream_client(&settings.prosperstack) {
        Ok(client) => client,
        Err(e) => return report.add(Finding::problem(format!("no ProsperStack client: {e}"))),
    };
    let mode = match settings.prosperstack.api_key.as_ref() {
        Some(key) if key.is_test() => "test mode (a key_test_ key)",
        _ => "live mode (a key_ key)",
    };
    report.requests += 1;
    let (page, seen) = match client.properties_page(None).await {
        Ok(answer) => answer,
        Err(e) => return report.add(refused(&e, &url)),
    };
    report.add(Finding::ok(format!(
        "ProsperStack at {url} accepted the API key: {mode}"
    )));
    let p = &settings.prosperstack;
    report.add(checks::rate_limit(
        &seen,
        p.rate_limit_requests,
        p.rate_limit_window,
    ));
    let mut properties = page.data;
    if let Some(cursor) = page.next_cursor {
        match second_page(&client, &cursor, report).await {
            Ok(more) => properties.extend(more),
            Err(e) => return report.add(refused(&e, &url)),
        }
    }
    catalogue_checks(settings, properties, report);
}

/// The second (and last) page of properties; a third is not read, and that is said.
async fn second_page(
    client: &Client,
    cursor: &str,
    report: &mut Report,
) -> Result<Vec<Property>, ApiError> {
    report.requests += 1;
    let (page, _) = client.properties_page(Some(cursor)).await?;
    if page.next_cursor.is_some() {
        report.add(Finding::warning(
            "more than 200 subscriber properties: only the first 200 were checked (doctor \
             spends at most 2 requests)",
        ));
    }
    Ok(page.data)
}

fn catalogue_checks(settings: &Settings, properties: Vec<Property>, report: &mut Report) {
    let catalogue = Catalogue::new(properties);
    let rules = Rules::new(&settings.mapping, &settings.trait_mappings);
    report.add(Finding::ok(format!(
        "{} subscriber properties read",
        catalogue.properties().count()
    )));
    for finding in checks::mapping_targets(&catalogue, &rules) {
        report.add(finding);
    }
    for finding in checks::near_misses(&catalogue, &rules) {
        report.add(finding);
    }
}

/// A failed properties request, as a problem saying what to check.
fn refused(error: &ApiError, url: &str) -> Finding {
    match error {
        ApiError::Unauthorized { status, message } => Finding::problem(format!(
            "the API key was refused: {status} {message} (by {url}); check PROSPERSTACK_API_KEY \
             (or PROSPERSTACK_API_KEY_FILE): a live key_… or test key_test_… key from \
             ProsperStack's API Keys settings"
        )),
        ApiError::RateLimited { wait } => Finding::problem(format!(
            "ProsperStack at {url} answered 429: this key's window is spent (resets in {} s); \
             another client may share the key — run doctor again after the reset",
            wait.as_secs()
        )),
        ApiError::Retryable { .. } => Finding::problem(format!(
            "ProsperStack at {url} could not be used: {error}; check PROSPERSTACK_API_URL and \
             that this machine can reach it"
        )),
        _ => Finding::problem(format!(
            "ProsperStack at {url} refused GET /v1/properties: {error}; check \
             PROSPERSTACK_API_URL (it must be the API's base URL; /v1/… is appended)"
        )),
    }
}
