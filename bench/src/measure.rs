//! What the benchmark reads off the machine: a process's CPU time and peak memory (Linux
//! `/proc`), Postgres's own counters for a database, and latency percentiles.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc` times (asked once).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU time a process has used so far.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let (_, ticks) = parse_stat(&stat).context("malformed /proc stat")?;
    Ok(Duration::from_secs_f64(ticks.own / clock_ticks()))
}

/// CPU clock ticks from a `/proc/<pid>/stat` line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    /// User plus system time of the process itself.
    own: f64,
    /// The same of its children that have ended and been waited for (a Postgres backend that
    /// exits shows up here, in the postmaster's line).
    children: f64,
}

/// A `/proc/<pid>/stat` line's command name and its CPU ticks.
fn parse_stat(stat: &str) -> Option<(&str, Ticks)> {
    // The command name (field 2) may hold spaces and parentheses; the fields after its last
    // closing parenthesis are positional: utime, stime, cutime and cstime are the 12th to the
    // 15th of them.
    let (head, after) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((
        name,
        Ticks {
            own: ticks(11)? + ticks(12)?,
            children: ticks(13)? + ticks(14)?,
        },
    ))
}

/// CPU time the machine's parts have used so far: what tells where a scenario's time went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MachineCpu {
    /// Every RabbitMQ process on this machine (`beam.smp`); zero for a broker elsewhere.
    broker: Duration,
    /// Every Postgres process (backends, WAL writer, checkpointer, autovacuum).
    postgres: Duration,
    /// This benchmark: the publisher (and, for a ceiling, the consumer).
    this_process: Duration,
    /// All CPUs' busy time (`/proc/stat`), whoever used it.
    busy: Duration,
    /// The CPUs `/proc/stat` counts.
    cpus: usize,
    at: Instant,
}

/// Where the CPU went between two [`MachineCpu`] readings, per job (or message).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSplit {
    pub(crate) broker_us: f64,
    pub(crate) postgres_us: f64,
    pub(crate) this_process_us: f64,
    /// The machine's busy share over the interval, in % of all its cores.
    pub(crate) machine_busy_percent: f64,
}

impl MachineCpu {
    pub(crate) fn now() -> MachineCpu {
        let hz = clock_ticks();
        let me = std::process::id().to_string();
        let (mut broker, mut postgres, mut this_process) = (0.0, 0.0, 0.0);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name();
            let Some(pid) = pid
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            // A process may end between the listing and the read: it is skipped.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Processes that ended and were waited for count in their parent's line (so a
            // Postgres backend that exits between two readings is not lost). This process's
            // own children are the worker replicas, measured on their own.
            match parse_stat(&stat) {
                Some((_, ticks)) if pid == me => this_process += ticks.own,
                Some(("beam.smp", ticks)) => broker += ticks.own + ticks.children,
                Some(("postgres", ticks)) => postgres += ticks.own + ticks.children,
                _ => {}
            }
        }
        let proc_stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let busy = busy_ticks(&proc_stat).unwrap_or(0.0);
        let cpus = proc_stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let time = |ticks: f64| Duration::from_secs_f64(ticks / hz);
        MachineCpu {
            broker: time(broker),
            postgres: time(postgres),
            this_process: time(this_process),
            busy: time(busy),
            cpus: cpus.max(1),
            at: Instant::now(),
        }
    }

    /// What was used since `earlier`, per each of `units` jobs or messages.
    pub(crate) fn since(&self, earlier: &MachineCpu, units: usize) -> CpuSplit {
        let per_unit = |now: Duration, then: Duration| {
            now.saturating_sub(then).as_secs_f64() * 1e6 / units.max(1) as f64
        };
        let cores = self.cpus as f64;
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        CpuSplit {
            broker_us: per_unit(self.broker, earlier.broker),
            postgres_us: per_unit(self.postgres, earlier.postgres),
            this_process_us: per_unit(self.this_process, earlier.this_process),
            machine_busy_percent: self.busy.saturating_sub(earlier.busy).as_secs_f64()
                / wall
                / cores
                * 100.0,
        }
    }
}

/// Busy clock ticks of all CPUs from `/proc/stat`'s first line: user, nice, system, irq and
/// softirq. Not idle or iowait, nor steal (time the hypervisor gave to someone else); guest
/// time is already in user and nice.
fn busy_ticks(proc_stat: &str) -> Option<f64> {
    let line = proc_stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| values.get(i).copied().unwrap_or(0.0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6))
}

/// The most resident memory a process has used (VmHWM), in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")?;
    Ok(kib / 1024.0)
}

/// Postgres's counters for one database.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PgCounters {
    pub(crate) commits: i64,
    pub(crate) rows_written: i64,
}

pub(crate) async fn pg_counters(
    admin: &tokio_postgres::Client,
    database: &str,
) -> Result<PgCounters> {
    let row = admin
        .query_one(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted
             FROM pg_stat_database WHERE datname = $1",
            &[&database],
        )
        .await?;
    Ok(PgCounters {
        commits: row.get(0),
        rows_written: row.get(1),
    })
}

/// p50, p95, p99 and max of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    pub(crate) fn of(mut sample: Vec<f64>) -> Percentiles {
        if sample.is_empty() {
            return Percentiles::default();
        }
        sample.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * sample.len() as f64).ceil() as usize;
            sample[rank.clamp(1, sample.len()) - 1]
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.max), (7.0, 7.0));
    }

    #[test]
    fn stat_lines_give_the_command_and_its_cpu_ticks() {
        let line = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 3 0";
        let ticks = Ticks {
            own: 300.0,
            children: 10.0,
        };
        assert_eq!(parse_stat(line), Some(("tokio rt", ticks)));
        let odd = "43 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 3 0";
        assert_eq!(parse_stat(odd), Some(("a) b", ticks)));
        let cpu = "cpu  100 5 50 1000 20 1 2 3 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(busy_ticks(cpu), Some(158.0));
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_time(me).is_ok());
        assert!(peak_rss_mib(me).unwrap() > 0.0);
    }
}
