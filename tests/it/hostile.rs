//! Hostile time and space: clients whose clocks, connections, bodies or disks misbehave.
//!
//! - a time from the future is held to the arrival plus `max_clock_skew`, so a later event lands;
//! - slow headers and idle kept-alive connections are closed by the header read timeout, and at
//!   most `max_connections` are served at once, while a normal POST is still answered;
//! - a data volume that fills up refuses new events with 503 while delivery drains the queue,
//!   and accepts them again by itself once space returns (on a small tmpfs, when this machine
//!   lets the test mount one);
//! - bodies being parsed at once are bounded in bytes: past the budget a request waits its turn,
//!   and gets 503 (never a 4xx) if its turn does not come in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use prosperstack_relay::clock::{Clock, TokioClock};
use serde_json::{json, Value};

/// The probe that found it: an Identify dated 2038 was applied, and every later one lost to it
/// for ever. Now its time is held to its arrival plus 5 minutes; an event sent after that wins.
#[tokio::test(start_paused = true)]
async fn a_time_from_the_future_cannot_pin_a_value() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let email = "john.doe@example.com";
    let future = identify(
        "m1",
        email,
        json!({"plan": "future"}),
        "2038-01-19T03:14:08Z",
    );
    assert_eq!(relay.post_json(&future).await.0, 200);
    let plan_is = |value: &'static str| {
        let sandbox = &sb.sandbox;
        move || async move { property(sandbox, email, "plan") == Some(Value::from(value)) }
    };
    assert!(eventually(PATIENCE, plan_is("future")).await);
    assert_eq!(relay.metric("relay_timestamps_clamped_total").await, 1);

    // Past the tolerated skew, a client with a right clock sends the next value.
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    let now = chrono::DateTime::from_timestamp_millis(TokioClock.wall_ms())
        .expect("a valid time")
        .to_rfc3339();
    let later = identify("m2", email, json!({"plan": "now"}), &now);
    let (status, answer) = relay.post_json(&later).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");
    assert!(
        eventually(PATIENCE, plan_is("now")).await,
        "the later event never landed: {:?}",
        property(&sb.sandbox, email, "plan")
    );
    assert_eq!(relay.metric("relay_timestamps_clamped_total").await, 1);
}

/// Far past any limit the relay sets: a connection still open by then was never cut off.
const FOREVER: Duration = Duration::from_secs(600);

/// A connection that starts a request and then sends one header line a second, never ending
/// its headers; answers how long the relay kept it open (`None`: still open after [`FOREVER`]).
async fn slow_headers(address: String, closed: Arc<AtomicUsize>) -> Option<Duration> {
    let stream = TcpStream::connect(&address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = tokio::time::Instant::now();
    let drip = tokio::spawn(async move {
        let mut line = 0;
        let mut next = b"POST /v1/segment HTTP/1.1\r\nHost: relay\r\n".to_vec();
        while writer.write_all(&next).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            line += 1;
            next = format!("X-Slow-{line}: still typing\r\n").into_bytes();
        }
    });
    let mut answer = Vec::new();
    let open_for = tokio::time::timeout(FOREVER, reader.read_to_end(&mut answer))
        .await
        .ok()
        .map(|_| started.elapsed());
    drip.abort();
    closed.fetch_add(usize::from(open_for.is_some()), Ordering::SeqCst);
    open_for
}

fn address(relay: &TestRelay) -> String {
    relay.url.trim_start_matches("http://").to_owned()
}

/// The probe that found it: a connection sending one header line a second stayed open for 75 s
/// and more, and enough of them exhaust file descriptors. Now each is closed by the header read
/// timeout, and a normal POST sent while they drip is answered.
#[tokio::test(start_paused = true)]
async fn slow_headers_are_cut_off_and_a_normal_post_still_answers() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let closed = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..20)
        .map(|_| tokio::spawn(slow_headers(address(&relay), closed.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let event = identify(
        "m-fast",
        "john.doe@example.com",
        json!({"plan": "fast"}),
        &event_time(0),
    );
    let (status, answer) = relay.post_json(&event).await;
    assert_eq!(status, 200, "{answer}");
    let mut open_for = Vec::new();
    for connection in slow {
        open_for.push(connection.await.expect("slow client"));
    }
    println!("slow-header connections kept open for {open_for:?} (simulated time)");
    assert!(open_for.iter().all(Option::is_some), "{open_for:?}");
    assert_eq!(relay.get("/healthz").await.0, 200);
}

/// A kept-alive connection that sends nothing after its answer is closed too: the header read
/// timer starts again as soon as the relay waits for the next request.
#[tokio::test(start_paused = true)]
async fn an_idle_kept_alive_connection_is_closed() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[]).await;
    let mut stream = TcpStream::connect(address(&relay)).await.expect("connect");
    let request = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n";
    stream.write_all(request).await.expect("request");
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).await.expect("answer");
    let head = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(FOREVER, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle connection was kept open");
}

/// With every connection slot held by slow clients, a new connection waits to be accepted
/// (it takes no file descriptor in the relay meanwhile) and is served once the header read
/// timeout has freed a slot.
#[tokio::test(start_paused = true)]
async fn connections_beyond_the_cap_wait_their_turn() {
    let sb = demo_sandbox().await;
    let relay = TestRelay::start(&sb.url, &[("RELAY_MAX_CONNECTIONS", "3")]).await;
    let closed = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(slow_headers(address(&relay), closed.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let event = identify(
        "m-cap",
        "john.doe@example.com",
        json!({"plan": "cap"}),
        &event_time(0),
    );
    let (status, answer) = relay.post_json(&event).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        closed.load(Ordering::SeqCst) > 0,
        "answered while every slot was held by a slow client"
    );
    for connection in slow {
        assert!(connection.await.expect("slow client").is_some());
    }
}

/// A small tmpfs, mounted for one test and unmounted (lazily: the relay may still hold files)
/// when dropped. `None` where mounting is refused (not root, a container without the right).
struct SmallVolume {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl SmallVolume {
    fn mount(size: &str) -> Option<SmallVolume> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("volume");
        std::fs::create_dir(&path).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallVolume { _dir: dir, path })
    }

    fn free_bytes(&self) -> u64 {
        let stats = rustix::fs::statvfs(&self.path).expect("statvfs");
        stats.f_bavail * stats.f_frsize
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The probe that found it: on a 4 MiB volume the store's own write-ahead log filled the disk,
/// then every POST was 503 and delivery stalled until an operator grew the volume. Now, below
/// `min_free_bytes`, new events are refused with 503 while delivery goes on (an event waiting
/// for its subscriber lands meanwhile), and once space returns events are accepted again;
/// everything acknowledged is delivered.
#[tokio::test]
async fn a_full_volume_refuses_new_events_delivers_and_recovers() {
    let Some(volume) = SmallVolume::mount("16m") else {
        println!("skipped: this machine refuses to mount a tmpfs (run as root to include it)");
        return;
    };
    let sb = demo_sandbox().await;
    let data_dir = volume.path.join("data");
    let extra = [("RELAY_MIN_FREE_BYTES", "4194304")];
    let relay = TestRelay::start_in(settings(&sb.url, &data_dir, &extra)).await;
    let late = "late0@example.com";
    let before = identify("d-before", late, json!({"plan": "before"}), &event_time(0));
    assert_eq!(relay.post_json(&before).await.0, 200);

    // Fill the volume to 1 MiB free, under the 4 MiB watermark.
    let ballast = volume.path.join("ballast");
    let fill = volume.free_bytes().saturating_sub(1024 * 1024) as usize;
    std::fs::write(&ballast, vec![0u8; fill]).expect("fill the volume");
    let during = identify(
        "d-during",
        "john.doe@example.com",
        json!({"plan": "during"}),
        &event_time(1),
    );
    // Until the next reading of the free space (at most a second), it is still accepted.
    let accepted_while_filling = std::cell::Cell::new(false);
    let (accepted, relay_ref, during_ref) = (&accepted_while_filling, &relay, &during);
    let refused = eventually(PATIENCE, move || async move {
        let status = relay_ref.post_json(during_ref).await.0;
        accepted.set(accepted.get() || status == 200);
        status == 503
    })
    .await;
    assert!(
        refused,
        "never refused with {} bytes free",
        volume.free_bytes()
    );
    assert!(relay.metric("relay_requests_refused_low_disk_total").await >= 1);

    // Delivery goes on below the watermark: the waiting event lands once its subscriber exists.
    create_members(&sb.sandbox, "late", 1);
    let plan_of = |email: &'static str, value: &'static str| {
        let sandbox = &sb.sandbox;
        move || async move { property(sandbox, email, "plan") == Some(Value::from(value)) }
    };
    assert!(eventually(PATIENCE, plan_of(late, "before")).await);
    assert_eq!(relay.post_json(&during).await.0, 503);

    // Space returns: accepted again, with no operator.
    std::fs::remove_file(&ballast).expect("free the volume");
    let after = identify("d-after", late, json!({"plan": "after"}), &event_time(2));
    assert!(
        eventually(PATIENCE, || async {
            relay.post_json(&after).await.0 == 200
        })
        .await
    );
    assert!(eventually(PATIENCE, plan_of(late, "after")).await);
    if accepted_while_filling.get() {
        assert!(eventually(PATIENCE, plan_of("john.doe@example.com", "during")).await);
    }
    assert_eq!(relay.get("/readyz").await.0, 200);
}

/// A body of `size` bytes that is one valid Identify padded with spaces.
fn padded_identify(message_id: &str, size: usize) -> String {
    let event = identify(
        message_id,
        "john.doe@example.com",
        json!({"plan": message_id}),
        &event_time(0),
    )
    .to_string();
    format!("{event}{}", " ".repeat(size.saturating_sub(event.len())))
}

/// The probe that found it: nothing bounded how many large bodies were parsed at once. Now, with
/// most of the parsing budget held by a body still arriving, a request that does not fit waits
/// its turn and is answered 503 (Segment retries) rather than 4xx; once the slow body is gone
/// (the request timeout answers it 408), the same request is accepted.
#[tokio::test(start_paused = true)]
async fn bodies_beyond_the_parsing_budget_wait_then_get_503() {
    let sb = demo_sandbox().await;
    let limits = [
        ("RELAY_MAX_BODY_BYTES", "65536"),
        ("RELAY_MAX_PARSING_BYTES", "65536"),
    ];
    let relay = TestRelay::start(&sb.url, &limits).await;
    let mut slow = TcpStream::connect(address(&relay)).await.expect("connect");
    let head = "POST /v1/segment HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
                Content-Length: 60000\r\n\r\n{";
    slow.write_all(head.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, answer) = relay.post(padded_identify("m-wait", 10_000), &[]).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(relay.metric("relay_requests_refused_busy_total").await, 1);
    // A small body still fits beside the slow one.
    let (status, answer) = relay.post(padded_identify("m-small", 1_000), &[]).await;
    assert_eq!(status, 200, "{answer}");

    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest).await;
    let answered = String::from_utf8_lossy(&rest).into_owned();
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    let (status, answer) = relay.post(padded_identify("m-wait", 10_000), &[]).await;
    assert_eq!(status, 200, "{answer}");
}
