//! What the benchmark reads off the machine: a process's CPU time and peak memory (Linux
//! `/proc`), Postgres's own counters for a database, and latency percentiles.

use anyhow::{Context, Result};
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU time a process has used so far.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // positional: utime and stime are the 12th and 13th of them.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) / clock_ticks(),
    ))
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
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_time(me).is_ok());
        assert!(peak_rss_mib(me).unwrap() > 0.0);
    }
}
