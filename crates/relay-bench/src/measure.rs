//! Report pieces: targets with their verdicts, where and how a run was made, and what this
//! process's threads spent (CPU, writes) while it ran.
//!
//! In: figures and `/proc`. Out: small serialisable values and their text form.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// One figure against its target.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub value: String,
    pub met: bool,
}

impl Target {
    pub fn at_most(name: &str, value: f64, limit: f64, unit: &str) -> Target {
        Target {
            name: name.to_owned(),
            target: format!("≤ {limit}{unit}"),
            value: format!("{value:.4}{unit}"),
            met: value <= limit,
        }
    }

    /// A count that must not exceed `limit`.
    pub fn count_at_most(name: &str, value: u64, limit: u64) -> Target {
        Target {
            name: name.to_owned(),
            target: format!("≤ {limit}"),
            value: value.to_string(),
            met: value <= limit,
        }
    }

    pub fn at_least(name: &str, value: f64, limit: f64, unit: &str) -> Target {
        Target {
            name: name.to_owned(),
            target: format!("≥ {limit}{unit}"),
            value: format!("{value:.4}{unit}"),
            met: value >= limit,
        }
    }

    pub fn print(targets: &[Target]) {
        println!("targets:");
        for t in targets {
            println!(
                "  {:<4} {:<44} {:>14}  (target {})",
                if t.met { "MET" } else { "MISS" },
                t.name,
                t.value,
                t.target
            );
        }
    }
}

/// Where and how a report was produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub command: String,
    pub date_utc: String,
    pub machine: String,
    /// `/proc/loadavg` when the report was made: other work on a shared machine skews figures.
    pub load_average: String,
    pub version: &'static str,
}

impl RunInfo {
    pub fn now() -> RunInfo {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                let kb: u64 = t
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_default();
        let profile = if cfg!(debug_assertions) {
            "DEBUG build (figures meaningless: use --release)"
        } else {
            "release build"
        };
        RunInfo {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            date_utc: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            machine: format!(
                "{} {}, {cores} cores, {cpu}, {memory}, {profile}",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    pub fn print(&self, title: &str) {
        println!("== {title} ==");
        println!("command: {}", self.command);
        println!("date:    {} UTC", self.date_utc);
        println!("machine: {}", self.machine);
        println!(
            "load:    {} (1, 5, 15 min averages when the report was made)",
            self.load_average
        );
    }
}

/// The filesystem type holding `path` (from /proc/mounts): fsync costs differ a lot by it.
pub fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _device = f.next()?;
            let mount = f.next()?;
            let fs = f.next()?;
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown".into())
}

/// CPU seconds (user + system) used so far by this process's threads, by thread name
/// (`store-writer` is the SQLite writer, `tokio-runtime-w` the async workers). Assumes the
/// kernel's usual 100 clock ticks a second.
pub fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.filter_map(Result::ok) {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name.entry(name.trim().to_owned()).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    by_name
}

/// Bytes and calls written so far (`wchar`, `syscw` of `/proc/self/task/*/io`) by this
/// process's threads named `name`.
pub fn thread_writes(name: &str) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.filter_map(Result::ok) {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io")).unwrap_or_default();
        let field = |key: &str| -> u64 {
            io.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("wchar:");
        total.1 += field("syscw:");
    }
    total
}

/// CPU seconds per thread name between two [`thread_cpu`] readings.
pub fn cpu_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v >= 0.01)
        .collect()
}

/// The `q` quantile (0..=1) of sorted samples, nearest-rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank quantiles: p50 of 1..=100 ms is 50 ms, p99 is 99 ms, p100 the max.
    #[test]
    fn quantiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
