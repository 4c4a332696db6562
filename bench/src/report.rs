//! The benchmark's report: a table on standard output as the scenarios finish, and the same as
//! Markdown (with the date, the machine and the exact command) for `docs/benchmarks.md`.

use crate::Args;
use crate::ceiling::BrokerRun;
use crate::fanout::FanOutcome;
use crate::measure::CpuSplit;
use crate::priority::LanesOutcome;
use crate::runs_query::{RunsQueryOutcome, TARGET_P95_MS};
use crate::scenario::Outcome;
use std::fmt::Write as _;

/// The raw broker's best runs.
#[derive(Default)]
pub(crate) struct Ceilings {
    /// Bare messages, acks coalesced: the ceiling.
    pub(crate) coalesced: Option<BrokerRun>,
    /// Bare messages, one ack per message.
    pub(crate) each_ack: Option<BrokerRun>,
    /// Warren's messages through Warren's exchange and queue, acks coalesced.
    pub(crate) warren_messages: Option<BrokerRun>,
}

fn rate(run: &Option<BrokerRun>) -> f64 {
    run.as_ref().map_or(0.0, |r| r.rate)
}

/// Where the CPU went, per job or message.
fn cpu(split: &CpuSplit, worker_us: Option<f64>, this_process: &str) -> String {
    let worker = worker_us.map_or(String::new(), |us| format!("worker {us:.0} µs, "));
    format!(
        "broker {:.0} µs, Postgres {:.0} µs, {worker}{this_process} {:.0} µs; machine {:.0} % busy",
        split.broker_us, split.postgres_us, split.this_process_us, split.machine_busy_percent
    )
}

pub(crate) struct Report {
    /// The ceilings' rates: coalesced acks, one ack per message, Warren's messages.
    ceilings: (f64, f64, f64),
    context: Vec<String>,
    rows: Vec<String>,
    /// The fan-out scenarios' figures against their targets: (figure, measured, target, met).
    targets: Vec<[String; 4]>,
    notes: Vec<String>,
    /// Sections of their own after the tables (the runs-query scenario's), as Markdown.
    sections: Vec<String>,
}

/// The fan-out's children run at least at this share of the rate of the same jobs published
/// directly (issue 13).
pub(crate) const FAN_OUT_TARGET_PERCENT: f64 = 70.0;

/// A join wakes its parent within this long of its last child's end, at p99 (issue 13).
pub(crate) const JOIN_WAKE_TARGET_MS: f64 = 50.0;

/// The target for a high job behind a backlog of 20,000 normal ones: p99 publish to
/// start.
pub(crate) const PRIORITY_TARGET_MS: f64 = 100.0;

/// Logging one line per step costs less than this share of the throughput (issue 15).
pub(crate) const LOG_COST_TARGET_PERCENT: f64 = 10.0;

fn met(ok: bool) -> String {
    if ok { "yes" } else { "**no**" }.to_owned()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let broker = std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .map_or_else(
            || "RabbitMQ (version unknown)".to_owned(),
            |v| format!("RabbitMQ {v}"),
        );
    format!(
        "{cores} cores, {memory_gib:.0} GiB, Linux {}, {broker}; broker, Postgres, workers and publisher all on this machine",
        kernel.trim()
    )
}

/// `part` as a percentage of `whole`.
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole * 100.0
    } else {
        0.0
    }
}

fn ms(p: &crate::measure::Percentiles) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.0}", p.p50, p.p95, p.p99, p.max)
}

impl Report {
    pub(crate) fn new(
        args: &Args,
        jobs: usize,
        io_jobs: usize,
        ceiling_messages: usize,
        prefetch: u16,
    ) -> Self {
        let command: Vec<String> = std::env::args().collect();
        let mut context = vec![
            format!(
                "Run {} on {}.",
                chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
                machine()
            ),
            format!("Command: `{}`", command.join(" ")),
        ];
        if args.scenarios.iter().any(|kind| kind.uses_broker()) {
            context.push(format!(
                "{} queues, {}-byte JSON bodies, persistent, publisher confirms pipelined (1,000 outstanding); \
                 {jobs} jobs per Warren scenario ({io_jobs} I/O-bound), {ceiling_messages} messages for the ceiling; \
                 concurrency {} and prefetch {prefetch} per replica (I/O-bound: {}). Warren records every run, \
                 step checkpoint and transition in Postgres and acks after the commit.",
                args.queue_type, args.payload_bytes, args.concurrency, args.io_concurrency
            ));
        }
        Report {
            ceilings: (0.0, 0.0, 0.0),
            context,
            rows: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            sections: Vec::new(),
        }
    }

    pub(crate) fn header(&self) {
        for line in &self.context {
            println!("{line}");
        }
        println!();
    }

    /// The ceilings, each the best of `runs` measurements.
    pub(crate) fn ceiling(&mut self, ceilings: Ceilings, runs: usize) {
        let (coalesced, each_ack, warren_messages) = (
            rate(&ceilings.coalesced),
            rate(&ceilings.each_ack),
            rate(&ceilings.warren_messages),
        );
        self.ceilings = (coalesced, each_ack, warren_messages);
        let split = |run: &Option<BrokerRun>| {
            run.as_ref().map_or(String::new(), |r| {
                format!(
                    " (CPU per message: {})",
                    cpu(&r.cpu, None, "publisher and consumer")
                )
            })
        };
        println!(
            "ceiling (raw broker: publish with confirms + consume with coalesced acks, at once; best of {runs}): {coalesced:.0} msg/s{}",
            split(&ceilings.coalesced)
        );
        println!(
            "  with one ack per message instead: {each_ack:.0} msg/s{}",
            split(&ceilings.each_ack)
        );
        println!(
            "  with Warren's messages (its producer, exchange, headers and queue arguments; no Postgres, no Warren logic): {warren_messages:.0} msg/s{}",
            split(&ceilings.warren_messages)
        );
        self.notes.push(format!(
            "Each ceiling is the best of {runs} measurements, taken before the scenarios."
        ));
        let row = |name: &str, run: &Option<BrokerRun>| {
            let rate = rate(run);
            let split = run.as_ref().map_or(String::new(), |r| {
                cpu(&r.cpu, None, "publisher and consumer")
            });
            format!(
                "| {name} | {rate:.0} | {:.0} % | {:.0} % | {:.0} % | | | | | | | {split} |",
                ratio(rate, coalesced),
                ratio(rate, each_ack),
                ratio(rate, warren_messages)
            )
        };
        self.rows.push(row(
            "ceiling: raw broker, no job system, acks coalesced",
            &ceilings.coalesced,
        ));
        self.rows
            .push(row("raw broker, one ack per message", &ceilings.each_ack));
        self.rows.push(row(
            "raw broker moving Warren's messages (its producer, exchange, queue), acks coalesced",
            &ceilings.warren_messages,
        ));
    }

    /// The raw broker's publish-to-delivery latency at a fixed rate.
    pub(crate) fn broker_latency(&mut self, rate: f64, latency: &crate::measure::Percentiles) {
        println!(
            "raw broker at {rate:.0} msg/s: publish-to-delivery ms p50/p95/p99/max {}",
            ms(latency)
        );
        self.rows.push(format!(
            "| raw broker at {rate:.0} msg/s, no job system (publish→delivery) | | | | | {} | | | | | | |",
            ms(latency)
        ));
    }

    pub(crate) fn scenario(&mut self, name: &str, o: &Outcome) {
        let (coalesced, each_ack, warren_messages) = self.ceilings;
        let of_each = ratio(o.jobs_per_sec, each_ack);
        let of_ceiling = ratio(o.jobs_per_sec, coalesced);
        let of_shaped = ratio(o.jobs_per_sec, warren_messages);
        let split = cpu(&o.cpu, Some(o.cpu_seconds_per_1000 * 1000.0), "publisher");
        let tx = match o.state_commits_per_job {
            Some(state) => format!("{:.3} ({:.3} state)", o.transactions_per_job, state),
            None => format!("{:.3}", o.transactions_per_job),
        };
        println!(
            "{name}: {:.0} jobs/s ({of_ceiling:.0} % of the ceiling, {of_each:.0} % of the one-ack-per-message one, {of_shaped:.0} % of the broker moving Warren's messages); publish-to-start ms p50/p95/p99/max {}; \
             publish-to-finish {}; {:.2} CPU s per 1,000 jobs; peak RSS {:.1} MiB; \
             Postgres {tx} transactions and {:.1} rows per job; CPU per job: {split}",
            o.jobs_per_sec,
            ms(&o.queue_wait),
            ms(&o.finish),
            o.cpu_seconds_per_1000,
            o.peak_rss_mib,
            o.rows_per_job
        );
        if let Some(probe) = &o.broker_probe {
            let rate = crate::scenario::PROBE_RATE;
            println!(
                "  meanwhile, the broker alone (a probe at {rate:.0} msg/s on a queue of its own): publish-to-delivery ms p50/p95/p99/max {}",
                ms(probe)
            );
            self.notes.push(format!(
                "While \"{name}\" ran, a probe through the broker alone ({rate:.0} msg/s on a queue of its own) measured publish-to-delivery p50 / p95 / p99 / max {} ms; its CPU is in that row's broker and publisher shares.",
                ms(probe)
            ));
        }
        if let Some(idle) = o.idle_cpu_percent {
            println!("  idle worker afterwards: {idle:.2} % of a core");
            self.notes.push(format!(
                "Idle worker (after the first scenario): {idle:.2} % of a core."
            ));
        }
        self.rows.push(format!(
            "| {name} | {:.0} | {of_ceiling:.0} % | {of_each:.0} % | {of_shaped:.0} % | {} | {} | {:.2} | {:.1} | {tx} | {:.1} | {split} |",
            o.jobs_per_sec,
            ms(&o.queue_wait),
            ms(&o.finish),
            o.cpu_seconds_per_1000,
            o.peak_rss_mib,
            o.rows_per_job
        ));
    }

    /// What a command step costs beyond spawning its program: both measured by a step in the
    /// worker, under the same load, in this run (the target: at most 1 ms more at p50).
    pub(crate) fn command_cost(&mut self, spawn: &Outcome, command: &Outcome) {
        let (Some(spawn), Some(command)) = (&spawn.step_us, &command.step_us) else {
            println!("  (the command scenarios reported no step times)");
            return;
        };
        let us = |p: &crate::measure::Percentiles| {
            format!("{:.0} / {:.0} / {:.0} / {:.0}", p.p50, p.p95, p.p99, p.max)
        };
        let extra_ms = (command.p50 - spawn.p50) / 1000.0;
        let line = format!(
            "Command step: its own time µs p50/p95/p99/max {} against the bare spawn's {}: \
             {extra_ms:+.2} ms at p50 over the spawn itself (target: at most +1 ms).",
            us(command),
            us(spawn)
        );
        println!("  {line}");
        self.notes.push(line);
    }

    /// The HTTP step's cost against a bare POST to the same endpoint (Warren's own overhead per
    /// HTTP step: the endpoint's time is in both), and its throughput against no-op Rust steps.
    pub(crate) fn http_cost(
        &mut self,
        bare: &Outcome,
        http: &Outcome,
        throughput: &Outcome,
        noop: Option<&Outcome>,
    ) {
        let (Some(bare_us), Some(http_us)) = (&bare.step_us, &http.step_us) else {
            println!("  (the HTTP scenarios reported no step times)");
            return;
        };
        let us = |p: &crate::measure::Percentiles| {
            format!("{:.0} / {:.0} / {:.0} / {:.0}", p.p50, p.p95, p.p99, p.max)
        };
        let extra_ms = (http_us.p50 - bare_us.p50) / 1000.0;
        let share = noop.map_or_else(
            || "no noop scenario in this run to compare throughput with".to_owned(),
            |noop| {
                format!(
                    "at full concurrency {:.0} jobs/s, {:.0} % of the no-op Rust step's {:.0} (target: at least 50 %)",
                    throughput.jobs_per_sec,
                    100.0 * throughput.jobs_per_sec / noop.jobs_per_sec.max(f64::MIN_POSITIVE),
                    noop.jobs_per_sec
                )
            },
        );
        let line = format!(
            "HTTP step: its own time µs p50/p95/p99/max {} against the bare POST's {}: \
             {extra_ms:+.2} ms at p50 of Warren's own (target: under 1 ms); {share}.",
            us(http_us),
            us(bare_us)
        );
        println!("  {line}");
        self.notes.push(line);
    }

    /// What a log line per step costs: the best throughput with one against the best without,
    /// over rounds of the two measured one after the other (the machine's noise moves either by
    /// more than the cost, so each round's ratio is shown too).
    pub(crate) fn log_cost(&mut self, pairs: &[(Outcome, Outcome)]) {
        let best = |pick: fn(&(Outcome, Outcome)) -> &Outcome| {
            pairs
                .iter()
                .map(|pair| pick(pair).jobs_per_sec)
                .fold(0.0, f64::max)
        };
        let (plain, logged) = (best(|p| &p.0), best(|p| &p.1));
        let share = ratio(logged, plain);
        let cost = 100.0 - share;
        let rounds: Vec<String> = pairs
            .iter()
            .map(|(p, l)| {
                format!(
                    "{:.0} against {:.0} ({:.0} %)",
                    l.jobs_per_sec,
                    p.jobs_per_sec,
                    ratio(l.jobs_per_sec, p.jobs_per_sec)
                )
            })
            .collect();
        let rows = |pick: fn(&(Outcome, Outcome)) -> &Outcome| {
            pairs.iter().map(|p| pick(p).rows_per_job).sum::<f64>() / pairs.len().max(1) as f64
        };
        let commits = |pick: fn(&(Outcome, Outcome)) -> &Outcome| {
            pairs
                .iter()
                .map(|p| pick(p).transactions_per_job)
                .sum::<f64>()
                / pairs.len().max(1) as f64
        };
        let line = format!(
            "Logging one line per step (`ctx.log`): best {logged:.0} jobs/s against {plain:.0} \
             without, {share:.1} % of it, a cost of {cost:.1} % (target: under \
             {LOG_COST_TARGET_PERCENT:.0} %); by round, logged against plain: {}; Postgres rows \
             per job {:.2} against {:.2}, transactions per job {:.3} against {:.3}.",
            rounds.join(", "),
            rows(|p| &p.1),
            rows(|p| &p.0),
            commits(|p| &p.1),
            commits(|p| &p.0),
        );
        println!("  {line}");
        self.notes.push(line);
        self.targets.push([
            "1-step no-op jobs logging one line per step, against none: throughput".to_owned(),
            format!("{logged:.0} against {plain:.0} jobs/s: {share:.1} %"),
            format!("cost < {LOG_COST_TARGET_PERCENT:.0} %"),
            met(cost < LOG_COST_TARGET_PERCENT),
        ]);
    }

    /// The fan-out of one parent: its children's rate against the same number of 1-step jobs
    /// published directly (`direct`, described by `direct_name`), both counted from the first
    /// start to the last finish.
    pub(crate) fn fan_out(
        &mut self,
        name: &str,
        o: &FanOutcome,
        direct: &Outcome,
        direct_name: &str,
    ) {
        let (coalesced, each_ack, warren_messages) = self.ceilings;
        let share = ratio(o.children_per_sec, direct.jobs_per_sec_from_start);
        let split = cpu(&o.cpu, Some(o.worker_us_per_child), "publisher");
        let tx = match o.state_commits_per_child {
            Some(state) => format!("{:.3} ({:.3} state)", o.transactions_per_child, state),
            None => format!("{:.3}", o.transactions_per_child),
        };
        println!(
            "{name}: {:.0} children/s ({} of {} succeeded), {share:.0} % of the {:.0} jobs/s of {direct_name} \
             (both from the first start to the last finish; target: at least {FAN_OUT_TARGET_PERCENT:.0} %); \
             parent parked to first child started {:.0} ms; last child's end to the parent's wake {:.1} ms; \
             parent publish-to-finish {:.0} ms; peak RSS {:.1} MiB; Postgres {tx} transactions per child; CPU per child: {split}",
            o.children_per_sec,
            o.children_succeeded,
            o.children_total,
            direct.jobs_per_sec_from_start,
            o.park_to_first_child.max,
            o.wake.max,
            o.parent_finish.max,
            o.peak_rss_mib,
        );
        self.rows.push(format!(
            "| {name} (children/s) | {:.0} | {:.0} % | {:.0} % | {:.0} % | | | {:.2} | {:.1} | {tx} | | {split} |",
            o.children_per_sec,
            ratio(o.children_per_sec, coalesced),
            ratio(o.children_per_sec, each_ack),
            ratio(o.children_per_sec, warren_messages),
            o.worker_us_per_child / 1000.0,
            o.peak_rss_mib,
        ));
        self.targets.push([
            format!("{name}: children/s against {direct_name}"),
            format!(
                "{:.0} against {:.0} jobs/s: {share:.0} %",
                o.children_per_sec, direct.jobs_per_sec_from_start
            ),
            format!("≥ {FAN_OUT_TARGET_PERCENT:.0} %"),
            met(share >= FAN_OUT_TARGET_PERCENT),
        ]);
        self.notes.push(format!(
            "{name}: the parent parked {:.0} ms before its first child started (the relay and the broker) and woke {:.1} ms after its last child's end; publish to finish {:.0} ms.",
            o.park_to_first_child.max, o.wake.max, o.parent_finish.max
        ));
    }

    /// Many parents joining a few children each: the time from each parent's last child's end
    /// to its wake-up.
    pub(crate) fn join_wake(&mut self, name: &str, o: &FanOutcome) {
        let ok = o.wake.p99 <= JOIN_WAKE_TARGET_MS;
        println!(
            "{name}: last child's end to the parent's wake ms p50/p95/p99/max {} (target: p99 at most {JOIN_WAKE_TARGET_MS:.0} ms); \
             parent parked to first child started {}; parent publish-to-finish {}; {} of {} children succeeded",
            ms(&o.wake),
            ms(&o.park_to_first_child),
            ms(&o.parent_finish),
            o.children_succeeded,
            o.children_total,
        );
        let split = cpu(&o.cpu, Some(o.worker_us_per_child), "publisher");
        self.rows.push(format!(
            "| {name} (parents' publish→finish; children/s) | {:.0} | | | | | {} | {:.2} | | {:.3} | | {split} |",
            o.children_per_sec,
            ms(&o.parent_finish),
            o.worker_us_per_child / 1000.0,
            o.transactions_per_child,
        ));
        self.targets.push([
            format!("{name}: last child's end → parent's wake, ms p50 / p95 / p99 / max"),
            ms(&o.wake),
            format!("p99 ≤ {JOIN_WAKE_TARGET_MS:.0} ms"),
            met(ok),
        ]);
    }

    /// High jobs jumping a normal backlog: their publish-to-start, and the normal jobs' rate
    /// meanwhile against the 1-step no-op scenario's (`noop`), when it ran.
    pub(crate) fn priority(&mut self, name: &str, o: &LanesOutcome, noop: Option<&Outcome>) {
        let ok = o.high_wait.p99 <= PRIORITY_TARGET_MS;
        let against = match noop {
            Some(noop) => format!(
                " ({:.0} % of the 1-step no-op scenario's {:.0} jobs/s from first start to last finish)",
                ratio(o.normal_per_sec, noop.jobs_per_sec_from_start),
                noop.jobs_per_sec_from_start
            ),
            None => String::new(),
        };
        let line = format!(
            "{name}: high jobs' publish to start ms p50/p95/p99/max {} (target: p99 at most {PRIORITY_TARGET_MS:.0} ms), \
             {} of {} high jobs started while normal jobs still waited; normal jobs {:.0}/s meanwhile{against}, \
             their publish to start {}",
            ms(&o.high_wait),
            o.high_during_backlog,
            o.high_total,
            o.normal_per_sec,
            ms(&o.normal_wait),
        );
        println!("{line}");
        self.notes.push(line);
        self.targets.push([
            format!("{name}: high jobs' publish → start, ms p50 / p95 / p99 / max"),
            ms(&o.high_wait),
            format!("p99 ≤ {PRIORITY_TARGET_MS:.0} ms"),
            met(ok),
        ]);
    }

    /// The runs list's queries over a large history: a table of latencies per case, each
    /// against the target.
    pub(crate) fn runs_query(&mut self, o: &RunsQueryOutcome) {
        let intro = format!(
            "runs query: {} runs seeded in {:.1} s (table {:.0} MiB, its indexes {:.0} MiB), {} timed calls per query, one connection, planned with the values each time",
            o.runs, o.seed_secs, o.table_mib, o.indexes_mib, o.samples
        );
        println!("{intro}");
        let header =
            "| query | via | rows | ms p50 / p95 / p99 / max | read through | p95 < 50 ms |";
        let mut md = vec![
            intro.clone() + ":",
            String::new(),
            header.to_owned(),
            "|---|---|---|---|---|---|".to_owned(),
        ];
        for m in &o.measured {
            let plan = o
                .plans
                .iter()
                .find(|(case, _)| case == &m.case)
                .map_or("", |(_, plan)| plan.as_str());
            let ok = met(m.ms.p95 < TARGET_P95_MS);
            println!(
                "  {:<48} {:<6} {:>4} rows  ms p50/p95/p99/max {:<28} {ok:<6} {plan}",
                m.case,
                m.via,
                m.rows,
                ms2(&m.ms)
            );
            md.push(format!(
                "| {} | {} | {} | {} | {} | {ok} |",
                m.case,
                m.via,
                m.rows,
                ms2(&m.ms),
                if plan.is_empty() {
                    String::new()
                } else {
                    format!("`{plan}`")
                }
            ));
        }
        self.sections.push(md.join("\n"));
    }

    pub(crate) fn footer(&self) {
        println!();
        println!("done");
    }

    pub(crate) fn write_markdown(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut md = String::new();
        let _ = writeln!(md);
        for line in &self.context {
            let _ = writeln!(md, "{line}\n");
        }
        if self.rows.is_empty() && self.targets.is_empty() {
            for section in &self.sections {
                let _ = writeln!(md, "{section}\n");
            }
            return append(path, &md);
        }
        let _ = writeln!(
            md,
            "| scenario | jobs/s | of ceiling | of one-ack-per-message ceiling | of the broker moving Warren's messages | publish→start ms p50 / p95 / p99 / max | publish→finish ms p50 / p95 / p99 / max | worker CPU s per 1,000 jobs | peak worker RSS MiB | Postgres transactions per job (state commits) | rows written per job | CPU per job or message |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let _ = writeln!(md, "{row}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(md);
            let _ = writeln!(md, "| figure | measured | target | met |");
            let _ = writeln!(md, "|---|---|---|---|");
            for [figure, measured, target, met] in &self.targets {
                let _ = writeln!(md, "| {figure} | {measured} | {target} | {met} |");
            }
        }
        let _ = writeln!(md);
        for note in &self.notes {
            let _ = writeln!(md, "{note}\n");
        }
        for section in &self.sections {
            let _ = writeln!(md, "{section}\n");
        }
        append(path, &md)
    }
}

fn append(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())
}

/// Milliseconds to two decimals: the runs list's queries take well under one.
fn ms2(p: &crate::measure::Percentiles) -> String {
    format!("{:.2} / {:.2} / {:.2} / {:.2}", p.p50, p.p95, p.p99, p.max)
}
