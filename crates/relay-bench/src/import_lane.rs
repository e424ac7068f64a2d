//! `relay-bench import-lane`: how long a live Identify waits when it arrives in the middle of a
//! large import's delivery.
//!
//! In: [`LaneArgs`]: subscribers imported, the limit (scaled), when the live event is posted.
//! Out: a [`LaneReport`]: the live update's delay in milliseconds and in request slots (the
//! window ÷ the requests it allows), the imported updates delivered while it waited, and the
//! backlog it overtook.
//!
//! How: a fresh in-process sandbox holds the subscribers; the real relay (`app::run`) serves
//! on a temporary data directory; the import is queued into that directory beside it, as
//! `prosperstack-relay import` does (`import::read_rows` and `import::queue_rows` on a shared
//! store: the background lane). Once `--post-after` of the imported updates are delivered, one
//! live Identify for another subscriber is posted to `/v1/segment`; the run ends when it has
//! landed in the sandbox.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::harness::{relay_settings, start_sandbox, temp_dir, RunningRelay};
use super::measure::{RunInfo, Target};
use super::{BenchError, Report};
use prosperstack_relay::import::{self, Format, ReadOptions};
use prosperstack_relay::store::SqliteStore;

#[derive(Debug, Clone, Args)]
pub struct LaneArgs {
    /// Subscribers in the import.
    #[arg(long, default_value_t = 2000)]
    pub subscribers: usize,
    /// Requests per window (the sandbox's and the relay's limit).
    #[arg(long, default_value_t = 100)]
    pub requests: u32,
    /// Window length in seconds (scaled: 1 s instead of ProsperStack's minute).
    #[arg(long, default_value_t = 1.0)]
    pub window_secs: f64,
    /// Post the live Identify once this many imported updates are delivered (default: half).
    #[arg(long)]
    pub post_after: Option<usize>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct LaneReport {
    pub run: RunInfo,
    pub subscribers: usize,
    pub requests: u32,
    pub window_secs: f64,
    /// Imported updates delivered when the live Identify was posted.
    pub imported_before: u64,
    /// Imported updates delivered between the post and the live update's landing.
    pub imported_while_waiting: u64,
    /// Imported updates still queued when the live one landed: the backlog it overtook.
    pub overtaken: u64,
    /// The coalescing delay every new job waits (scaled with the window).
    pub coalesce_ms: f64,
    pub live_delay_ms: f64,
    /// The delay in request slots (window ÷ requests): how many requests' time it waited.
    pub live_delay_slots: f64,
    pub targets: Vec<Target>,
}

pub async fn run(args: LaneArgs) -> Result<LaneReport, BenchError> {
    let window = Duration::from_secs_f64(args.window_secs);
    let sb = start_sandbox(args.requests, window, Instant::now()).await?;
    sb.sandbox
        .create_property("plan", "Plan", "subscriber", "text")
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let emails: Vec<String> = (0..args.subscribers)
        .map(|i| format!("history{i}@lane.example"))
        .collect();
    for email in &emails {
        sb.sandbox.create_subscriber(email, "Member");
    }
    let live = "live@lane.example";
    sb.sandbox.create_subscriber(live, "Live");

    let dir = temp_dir("lane", None)?;
    // The coalescing delay holds every new job, live ones too, so that events for one
    // subscriber go out together; it is scaled with the window like everything else (500 ms
    // in ProsperStack's minute), else it alone would be 50 slots of a 1 s window.
    let coalesce = Duration::from_millis(500).mul_f64(window.as_secs_f64() / 60.0);
    let overrides = [format!("RELAY_COALESCE_DELAY={}ms", coalesce.as_millis())];
    let settings = relay_settings(&sb.url, dir.path(), (args.requests, window), &overrides)?;
    let relay = RunningRelay::start(settings).await?;
    let queued = queue_import(dir.path(), &emails).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let post_after = args.post_after.unwrap_or(args.subscribers / 2) as u64;
    let updates = || sb.sandbox.stats().subscriber_updates;
    wait_until(
        deadline,
        || updates() >= post_after,
        "the import's first half",
    )
    .await?;
    let imported_before = updates();
    let posted = Instant::now();
    post_live(&relay.url, live).await?;
    let landed = || {
        sb.sandbox
            .subscriber_by_email(live)
            .is_some_and(|s| s.properties.contains_key("plan"))
    };
    wait_until(deadline, landed, "the live update").await?;
    let delay = posted.elapsed();
    let imported_at_landing = updates().saturating_sub(1);
    relay.stop().await;
    let slot = window.as_secs_f64() / f64::from(args.requests);
    let imported_while_waiting = imported_at_landing.saturating_sub(imported_before);
    let targets = vec![Target::count_at_most(
        "imported updates delivered while a live one waited",
        imported_while_waiting,
        3,
    )];
    Ok(LaneReport {
        run: RunInfo::now(),
        subscribers: queued,
        requests: args.requests,
        window_secs: args.window_secs,
        imported_before,
        imported_while_waiting,
        overtaken: (queued as u64).saturating_sub(imported_at_landing),
        coalesce_ms: coalesce.as_secs_f64() * 1000.0,
        live_delay_ms: delay.as_secs_f64() * 1000.0,
        live_delay_slots: delay.as_secs_f64() / slot,
        targets,
    })
}

/// Queues one CSV row per email (`plan = Imported`) into the relay's store, beside it.
async fn queue_import(dir: &std::path::Path, emails: &[String]) -> Result<usize, BenchError> {
    let mut csv = String::from("email,plan\n");
    for e in emails {
        csv.push_str(&format!("{e},Imported\n"));
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let options = ReadOptions {
        id_column: "email".into(),
        timestamp_ms: None,
        file_time_ms: now_ms,
    };
    let rows = import::read_rows(&csv, Format::Csv, &options).map_err(BenchError::Setup)?;
    let store = SqliteStore::open_shared(dir).map_err(|e| BenchError::Setup(e.to_string()))?;
    let tally = import::queue_rows(Some(&store), rows, now_ms, |_| {})
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(tally.queued)
}

async fn post_live(relay_url: &str, email: &str) -> Result<(), BenchError> {
    let event = json!({
        "type": "identify", "userId": "live-user", "messageId": "live-1",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "traits": {"email": email, "plan": "Live"},
    });
    let answer = reqwest::Client::new()
        .post(format!("{relay_url}/v1/segment"))
        .json(&event)
        .send()
        .await?;
    if !answer.status().is_success() {
        return Err(BenchError::Setup(format!(
            "the live event was answered {}",
            answer.status()
        )));
    }
    Ok(())
}

async fn wait_until(
    deadline: Instant,
    done: impl Fn() -> bool,
    what: &str,
) -> Result<(), BenchError> {
    while !done() {
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!("{what}: not delivered in time")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

impl Report for LaneReport {
    fn print_text(&self) {
        self.run.print("relay-bench import-lane");
        println!();
        println!(
            "import of {} subscribers at {} requests per {} s; live Identify posted after {} imported updates",
            self.subscribers, self.requests, self.window_secs, self.imported_before
        );
        println!(
            "live update landed after {:.0} ms = {:.1} request slots (coalescing delay {:.0} ms); {} imported updates delivered meanwhile; {} overtaken",
            self.live_delay_ms, self.live_delay_slots, self.coalesce_ms, self.imported_while_waiting, self.overtaken
        );
        println!();
        Target::print(&self.targets);
    }
}
