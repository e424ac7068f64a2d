//! `status [--json] [--watch] [--sandbox]`: what a running relay is doing, read from its store.
//!
//! In: the configured store (the data directory, or `database_url`; other secrets are not read). Out: the status `serve` saved last (every
//! 5 s), with the queue figures read afresh from the store, as text or JSON; with `--watch`,
//! redrawn every 2 s with a bar toward an empty backlog, until Ctrl-C.
//! Stays true: nothing here writes to the store; no email is printed (the status has none).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::tool_store;
use crate::clock::{Clock, TokioClock};
use crate::status::{queue_view, QueueView, StateView, Status};
use crate::store::{QueueStats, Store};

/// A saved status older than this comes from a relay that is not running (it saves every 5 s).
const STALE_AFTER_MS: i64 = 30_000;
/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Width of the `--watch` bar, in characters.
const BAR_WIDTH: usize = 40;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON (the document `GET /status` serves).
    #[arg(long)]
    pub json: bool,
    /// Redraw every 2 s with a progress bar toward an empty backlog (Ctrl-C to stop).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// Read the store `serve --sandbox` uses (`./data/sandbox` unless RELAY_DATA_DIR is set).
    #[arg(long)]
    pub sandbox: bool,
}

/// What `status` shows: the last saved status (if any) and the queue as it is now.
struct Reading {
    saved: Option<Status>,
    /// Serving processes that saved a status lately.
    replicas: usize,
    queue: QueueView,
    dead_letters: u64,
    now_ms: i64,
}

pub(super) async fn status(config_file: Option<PathBuf>, args: StatusArgs) -> ExitCode {
    let store = match tool_store(config_file.as_deref(), args.sandbox).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = if args.watch {
        watch(store.as_ref()).await
    } else {
        read(store.as_ref()).await.map(|r| print(&r, args.json))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn read(store: &dyn Store) -> Result<Reading, crate::store::StoreError> {
    let now_ms = TokioClock.wall_ms();
    let stats: QueueStats = store.stats().await?;
    let statuses: Vec<Status> = store
        .saved_statuses()
        .await?
        .into_iter()
        .filter_map(|s| serde_json::from_str::<Status>(&s.body).ok())
        .collect();
    let fresh = |s: &&Status| now_ms - s.at_ms <= STALE_AFTER_MS;
    // The leader's status is the one whose budget and ETA move; else the latest saved.
    let saved = statuses
        .iter()
        .filter(fresh)
        .find(|s| s.leader.leading)
        .or(statuses.first())
        .cloned();
    let replicas = statuses.iter().filter(fresh).count();
    Ok(Reading {
        saved,
        replicas,
        queue: queue_view(&stats, now_ms),
        dead_letters: stats.dead_letters,
        now_ms,
    })
}

fn print(reading: &Reading, json: bool) {
    if json {
        let document = reading.saved.as_ref().map(|s| Status {
            queue: reading.queue.clone(),
            dead_letters: reading.dead_letters,
            ..s.clone()
        });
        let value = match document {
            Some(status) => serde_json::to_value(status).unwrap_or_default(),
            None => {
                serde_json::json!({"queue": reading.queue, "dead_letters": reading.dead_letters})
            }
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", render(reading));
    }
}

/// Redraws the status until interrupted, with a bar of how much of the backlog seen at the
/// start (or the largest since) has been delivered.
async fn watch(store: &dyn Store) -> Result<(), crate::store::StoreError> {
    let mut largest = 0u64;
    loop {
        let reading = read(store).await?;
        let left = backlog(&reading.queue);
        largest = largest.max(left);
        // Clear the screen and home the cursor, so the figures redraw in place.
        print!("\x1b[2J\x1b[H{}", render(&reading));
        println!("{}", bar(largest, left));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

/// Subscribers still to deliver (due and retrying; waiting ones wait for ProsperStack).
fn backlog(queue: &QueueView) -> u64 {
    queue.due.subscribers + queue.retrying.subscribers
}

/// `[#####-----]  45%  550 of 1,000 subscribers delivered, 450 left`.
fn bar(largest: u64, left: u64) -> String {
    if largest == 0 {
        return "backlog: empty".to_owned();
    }
    let done = largest.saturating_sub(left);
    let filled = (done as usize * BAR_WIDTH) / largest as usize;
    format!(
        "[{}{}] {:>3}%  {} of {} subscribers delivered, {} left",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        done * 100 / largest,
        count(done),
        count(largest),
        count(left)
    )
}

/// The text form: one line a topic.
fn render(r: &Reading) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, text: String| {
        out.push_str(&format!("{label:<13}{text}\n"));
    };
    match &r.saved {
        Some(s) if r.now_ms - s.at_ms <= STALE_AFTER_MS => line(
            &mut out,
            "relay",
            format!("{} on {}, up {}", s.version, s.replica, secs(s.uptime_secs)),
        ),
        Some(s) => line(
            &mut out,
            "relay",
            format!(
                "not running? its last status is {} old; the queue below is read now",
                age_ms(r.now_ms - s.at_ms)
            ),
        ),
        None => line(
            &mut out,
            "relay",
            "no status saved yet (serve has not run on this store); the queue is read now".into(),
        ),
    }
    if let Some(s) = r
        .saved
        .as_ref()
        .filter(|s| r.now_ms - s.at_ms <= STALE_AFTER_MS)
    {
        line(&mut out, "delivering", leader_line(s, r.replicas));
    }
    render_queue(&mut out, &r.queue);
    if let Some(s) = &r.saved {
        render_saved(&mut out, s);
    }
    line(&mut out, "dead letters", count(r.dead_letters));
    out
}

/// Which replica delivers, out of how many serving.
fn leader_line(s: &Status, replicas: usize) -> String {
    let of = match replicas {
        0 | 1 => String::new(),
        n => format!(" (of {n} replicas serving)"),
    };
    match (s.leader.leading, s.leader.epoch) {
        (true, Some(epoch)) => format!("{} holds the lease, epoch {epoch}{of}", s.leader.holder),
        _ => format!("no replica holds the delivery lease right now{of}"),
    }
}

fn render_queue(out: &mut String, q: &QueueView) {
    out.push_str(&format!(
        "{:<13}{:>12} {:>9}  oldest\n",
        "queue", "subscribers", "events"
    ));
    let state = |out: &mut String, name: &str, s: &StateView| {
        let oldest = s.oldest_age_secs.map_or("-".to_owned(), secs);
        out.push_str(&format!(
            "  {name:<11}{:>12} {:>9}  {oldest}\n",
            count(s.subscribers),
            count(s.events)
        ));
    };
    state(out, "due", &q.due);
    state(out, "waiting", &q.waiting);
    state(out, "retrying", &q.retrying);
}

fn render_saved(out: &mut String, s: &Status) {
    let b = &s.budget;
    let eta = match (s.eta_secs, s.upstream.key) {
        (Some(eta), _) => format!(
            "{} at {:.0} requests a minute",
            secs(eta),
            b.sustained_per_minute
        ),
        (None, crate::prosperstack::KeyState::Refused) => "none: the API key is refused".into(),
        (None, _) => "nothing to deliver".into(),
    };
    out.push_str(&format!("{:<13}{eta}\n", "ETA"));
    let mut budget = format!(
        "{} of {} used in the current {}s window",
        b.used_in_window, b.limit, b.window_secs
    );
    if let Some(seen) = &b.last_seen {
        if let (Some(remaining), Some(reset)) = (seen.remaining, seen.reset_secs) {
            budget.push_str(&format!(
                "; ProsperStack said {remaining} left, reset in {reset}s"
            ));
        }
    }
    out.push_str(&format!("{:<13}{budget}\n", "budget"));
    out.push_str(&format!("{:<13}{}\n", "upstream", upstream(s)));
    let by = s.resolved_by;
    if by.platform_id > 0 {
        let line = format!(
            "{} by email, {} by platform ID",
            count(by.email),
            count(by.platform_id)
        );
        out.push_str(&format!("{:<13}{line}\n", "resolved"));
    }
    if !s.unmatched_traits.is_empty() {
        let names: Vec<String> = s
            .unmatched_traits
            .iter()
            .map(|u| format!("{} ({})", u.name, count(u.count)))
            .collect();
        out.push_str(&format!("{:<13}{}\n", "unmatched", names.join(", ")));
    }
}

fn upstream(s: &Status) -> String {
    let u = &s.upstream;
    let ago = |t: Option<i64>| {
        t.map_or("never".to_owned(), |t| {
            format!("{} ago", age_ms(s.at_ms - t))
        })
    };
    let key = match u.key {
        crate::prosperstack::KeyState::Accepted => "key accepted".to_owned(),
        crate::prosperstack::KeyState::Unknown => "key not tried yet".to_owned(),
        crate::prosperstack::KeyState::Refused => format!(
            "KEY REFUSED since {} (fix PROSPERSTACK_API_KEY)",
            ago(u.key_refused_since_ms)
        ),
    };
    let mut text = format!(
        "{key}; last delivery {}; {} requests",
        ago(u.last_delivery_ms),
        count(u.requests)
    );
    if let Some(error) = &u.last_error {
        text.push_str(&format!("; last error {} ({error})", ago(u.last_error_ms)));
    }
    text
}

fn secs(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

fn age_ms(ms: i64) -> String {
    secs(u64::try_from(ms / 1000).unwrap_or(0))
}

/// 1234567 → "1,234,567".
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts get thousands separators; the bar fills with what was delivered.
    #[test]
    fn counts_and_bar() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bar(0, 0), "backlog: empty");
        let half = bar(1000, 500);
        assert!(half.starts_with(&format!("[{}{}]", "#".repeat(20), "-".repeat(20))));
        assert!(half.contains(" 50%") && half.contains("500 left"), "{half}");
        assert!(bar(10, 0).contains("100%"));
    }
}

#[cfg(test)]
mod leader_tests {
    use super::*;
    use crate::status::LeaderView;

    /// The delivering line names the lease's holder and epoch, or says no replica holds it.
    #[test]
    fn leader_line_names_the_holder() {
        let mut status: Status = serde_json::from_value(serde_json::json!({
            "version": "0", "replica": "r", "at_ms": 0, "uptime_secs": 0,
            "queue": {"subscribers": 0, "events": 0,
                "due": {"subscribers": 0, "events": 0, "oldest_age_secs": null},
                "waiting": {"subscribers": 0, "events": 0, "oldest_age_secs": null},
                "retrying": {"subscribers": 0, "events": 0, "oldest_age_secs": null}},
            "budget": {"limit": 100, "window_secs": 60.0, "used_in_window": 0,
                "sustained_per_minute": 98.0, "last_seen": null},
            "eta_secs": null,
            "upstream": {"key": "unknown", "key_refused_since_ms": null, "last_success_ms": null,
                "last_delivery_ms": null, "last_error": null, "last_error_ms": null, "requests": 0},
            "dead_letters": 0, "unmatched_traits": [], "store_bytes": 0
        }))
        .expect("a status saved before leader views existed still reads");
        assert_eq!(status.leader, LeaderView::default());
        assert_eq!(
            leader_line(&status, 2),
            "no replica holds the delivery lease right now (of 2 replicas serving)"
        );
        status.leader = LeaderView {
            holder: "pod-a/7/1f".into(),
            leading: true,
            epoch: Some(3),
        };
        assert_eq!(
            leader_line(&status, 1),
            "pod-a/7/1f holds the lease, epoch 3"
        );
    }
}
