//! `warren prune`: deletes finished runs (with their steps, transitions and logs), expired
//! idempotency keys and gone replicas older than a cutoff, in short batches that leave the
//! fleet running. Also the `--retention` value of `warren worker`, which schedules the same.

use crate::args::Global;
use crate::output::print_json;
use clap::Args;
use std::time::{Duration, Instant};
use warren_shared::store::retention::{self, DEFAULT_PRUNE_BATCH, MIN_RETENTION, Prune};

#[derive(Args, Debug)]
pub(crate) struct PruneArgs {
    /// Delete runs that finished (succeeded, halted or dead), idempotency keys reserved and
    /// replicas last seen longer ago than this (e.g. 30d; at least 1h). Runs still queued,
    /// running, retrying or waiting are kept, however old.
    #[arg(long, value_parser = parse_age)]
    older_than: Duration,
    /// The workers' idempotency window (the same setting): keys are kept at least this long,
    /// whatever the cutoff.
    #[arg(long, env = "WARREN_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_window)]
    idempotency_window: Duration,
    /// Runs deleted per transaction.
    #[arg(long, default_value_t = DEFAULT_PRUNE_BATCH, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch_size: i64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(global: &Global, args: PruneArgs) -> anyhow::Result<()> {
    let pool = super::database(global).await?;
    let mut client = pool.get().await?;
    let policy = Prune {
        keys_older_than: args.older_than.max(args.idempotency_window),
        batch: args.batch_size,
        ..Prune::older_than(args.older_than)
    };
    let started = Instant::now();
    let report = retention::prune(&mut client, &policy, &|| true).await?;
    if args.json {
        return print_json(&report);
    }
    println!(
        "pruned {} run(s) ({} step(s), {} transition(s), {} log line(s)), {} idempotency \
         key(s), {} replica(s) and {} schedule fire record(s) older than {} in {:.1} s",
        report.runs,
        report.steps,
        report.transitions,
        report.log_lines,
        report.idempotency_keys,
        report.replicas,
        report.schedule_fires,
        humantime::format_duration(args.older_than),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An age of at least [`MIN_RETENTION`].
fn parse_age(s: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30d, 12h)"))?;
    if age < MIN_RETENTION {
        return Err(format!(
            "{s} is too short: at least {} (a run just finished may still have its message on \
             its way, and would run again)",
            humantime::format_duration(MIN_RETENTION)
        ));
    }
    Ok(age)
}

fn parse_window(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 24h, 7d)"))
}

/// `warren worker --retention`: an age, or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention(pub(crate) Option<Duration>);

/// Parses `--retention`.
pub(crate) fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Retention(None));
    }
    parse_age(s).map(|age| Retention(Some(age)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_an_age_of_at_least_an_hour_or_off() {
        assert_eq!(
            parse_retention("30d").map(|r| r.0),
            Ok(Some(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(parse_retention("off").map(|r| r.0), Ok(None));
        assert!(parse_retention("10m").is_err());
        assert!(parse_age("forever").is_err());
    }
}
