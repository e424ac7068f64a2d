//! Disk: the data directory's free space in, "room for new events or not" out.
//!
//! Ingest asks before every request; the file system is asked (`fstatvfs`, a few microseconds)
//! at most once a second and the answer cached, so a burst of requests costs one system call.
//! Stays true: below `min_free_bytes` new events are refused (503, Segment retries), so the
//! space left is delivery's and the checkpoints': they need room to drain the queue, and a
//! store that filled the disk itself could not even record what it delivered. Nothing else is
//! refused, and it recovers by itself at the next reading once space returns. A file system
//! that cannot say (an error) is taken as having room: the store's own errors still answer 503.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// How long a reading of the free space is trusted.
const READ_EVERY: Duration = Duration::from_secs(1);

/// Why new events are refused: the data directory has less free space than the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the data directory has {free} bytes free, less than min_free_bytes ({min_free})")]
pub struct LowDisk {
    pub free: u64,
    pub min_free: u64,
}

/// The data directory's free space, read at most once a second.
pub struct FreeSpace {
    dir: Option<File>,
    min_free: u64,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    last: Mutex<Option<Reading>>,
}

#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    free: Option<u64>,
}

impl FreeSpace {
    /// Watches the file system holding `dir` (already created by the store).
    pub fn new(dir: &Path, min_free: u64, clock: SharedClock, metrics: Arc<Metrics>) -> FreeSpace {
        let dir = File::open(dir)
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot watch the data directory's free space"),
            )
            .ok();
        FreeSpace {
            dir,
            min_free,
            clock,
            metrics,
            last: Mutex::new(None),
        }
    }

    /// `Ok` while the data directory has at least `min_free` bytes free.
    pub fn check(&self) -> Result<(), LowDisk> {
        match self.free_bytes() {
            Some(free) if free < self.min_free => Err(LowDisk {
                free,
                min_free: self.min_free,
            }),
            _ => Ok(()),
        }
    }

    /// The cached reading, or a new one when it is older than [`READ_EVERY`]; logs the changes
    /// between room and no room once each.
    fn free_bytes(&self) -> Option<u64> {
        let now = self.clock.now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reading) = *last {
            if now.saturating_duration_since(reading.at) < READ_EVERY {
                return reading.free;
            }
        }
        let free = self.read();
        let was_low = last.and_then(|r| r.free).is_some_and(|f| f < self.min_free);
        let is_low = free.is_some_and(|f| f < self.min_free);
        if is_low && !was_low {
            tracing::warn!(free_bytes = free, min_free_bytes = self.min_free, "the data directory is nearly full: new events are answered 503 until space returns; delivery goes on");
        } else if was_low && !is_low {
            tracing::info!(
                free_bytes = free,
                "the data directory has room again: accepting events"
            );
        }
        if let Some(free) = free {
            self.metrics.set_data_dir_free(free);
        }
        *last = Some(Reading { at: now, free });
        free
    }

    fn read(&self) -> Option<u64> {
        let stats = rustix::fs::fstatvfs(self.dir.as_ref()?).ok()?;
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimulatedClock;

    fn watching(min_free: u64) -> (Arc<SimulatedClock>, FreeSpace) {
        let clock = Arc::new(SimulatedClock::new());
        let dir = std::env::temp_dir();
        let space = FreeSpace::new(&dir, min_free, clock.clone(), Arc::new(Metrics::new()));
        (clock, space)
    }

    /// A watermark of 0 always has room; one no disk has never does, and says so.
    #[test]
    fn watermark_decides() {
        assert_eq!(watching(0).1.check(), Ok(()));
        let err = watching(u64::MAX)
            .1
            .check()
            .expect_err("no disk has that much");
        assert_eq!(err.min_free, u64::MAX);
        assert!(err.free < u64::MAX);
    }

    /// Within a second the cached reading answers; after it, the file system is read again.
    #[test]
    fn reading_is_cached_for_a_second() {
        let (clock, space) = watching(0);
        assert!(space.free_bytes().is_some());
        let first = space.last.lock().unwrap().map(|r| r.at);
        clock.advance(Duration::from_millis(500));
        space.free_bytes();
        assert_eq!(space.last.lock().unwrap().map(|r| r.at), first);
        clock.advance(Duration::from_millis(600));
        space.free_bytes();
        assert_ne!(space.last.lock().unwrap().map(|r| r.at), first);
    }
}
