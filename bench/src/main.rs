//! `warren-bench`: Warren measured against the broker's own ceiling, in one run, on the real
//! RabbitMQ and Postgres of this machine.
//!
//! ```sh
//! cargo run --release -p warren-bench                 # the full run (a few minutes)
//! cargo run --release -p warren-bench -- --quick      # under a minute, small numbers
//! cargo run --release -p warren-bench -- --help
//! ```
//!
//! It prints throughput, the ratio of each throughput to the ceiling measured in the same run,
//! publish-to-start and publish-to-finish latency percentiles, worker CPU seconds per 1,000
//! jobs, peak worker memory, and Postgres transactions and rows per job. Speed is judged here,
//! by ratios, never by timed assertions in tests. `docs/benchmarks.md` holds a full run.
//!
//! The binary is also a complete `warren` with the benchmark's tasks: the worker replicas it
//! measures are its own `worker` command, started as processes.

mod ceiling;
mod endpoint;
mod fanout;
mod measure;
mod priority;
mod report;
mod runs_query;
mod scenario;
mod tasks;

use anyhow::{Context, Result};
use ceiling::{Acks, Shape};
use clap::Parser;
use scenario::{Outcome, Scenario, Setup};
use std::process::ExitCode;
use std::time::Duration;
use warren_shared::topology::QueueType;

#[derive(Parser, Debug)]
#[command(
    name = "warren-bench",
    version,
    about = "Warren against the broker's own ceiling, in one run"
)]
pub(crate) struct Args {
    /// Small numbers, finishing in under a minute (checks that the benchmark runs; its figures
    /// mean little).
    #[arg(long)]
    quick: bool,
    /// Jobs per Warren scenario (default 50,000; 2,000 with --quick).
    #[arg(long)]
    jobs: Option<usize>,
    /// Jobs of the I/O-bound scenario (default 30,000; 2,000 with --quick).
    #[arg(long)]
    io_jobs: Option<usize>,
    /// Messages through the raw broker for the ceiling (default 100,000; 5,000 with --quick).
    #[arg(long)]
    ceiling_messages: Option<usize>,
    /// Times each ceiling is measured; the best counts (default 3; 1 with --quick). One
    /// measurement moves by up to a fifth between runs minutes apart on a shared machine, and
    /// a ceiling measured low would flatter every ratio.
    #[arg(long)]
    ceiling_runs: Option<usize>,
    /// Size of each message body in bytes (a JSON object padded to this size).
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Queue type, for the ceiling and for Warren's task queues.
    #[arg(long, default_value = "quorum", value_parser = parse_queue_type)]
    queue_type: QueueType,
    /// Runs each replica executes at once in the no-op scenarios. Group commit needs runs in
    /// flight to fill its batches: every run waits for two commits, so it takes hundreds in
    /// flight to keep a replica busy (see docs/benchmarks.md).
    #[arg(long, default_value_t = 1000)]
    concurrency: u32,
    /// Prefetch per consumer, for the ceiling and the no-op scenarios (default: the concurrency).
    #[arg(long)]
    prefetch: Option<u16>,
    /// Runs one replica executes at once in the I/O-bound scenario.
    #[arg(long, default_value_t = 1000)]
    io_concurrency: u32,
    /// Jobs of each command scenario (default 5,000; 500 with --quick).
    #[arg(long)]
    command_jobs: Option<usize>,
    /// Runs one replica executes at once in the command scenarios: programs running at once
    /// (a few per core, as for real tools).
    #[arg(long, default_value_t = 4)]
    command_concurrency: u32,
    /// Runs one replica executes at once when the HTTP scenarios measure Warren's own time per
    /// HTTP step: few, so that the step times are the calls' and not queueing behind a
    /// thousand others on a shared machine (the throughput is measured at --concurrency).
    #[arg(long, default_value_t = 8)]
    http_latency_concurrency: u32,
    /// Children of the fan-out scenario's one parent (default 10,000; 500 with --quick).
    #[arg(long)]
    fanout_children: Option<usize>,
    /// Parents in the join-wake scenario (default 200; 20 with --quick).
    #[arg(long)]
    join_parents: Option<usize>,
    /// Children of each parent in the join-wake scenario (default 20; 5 with --quick).
    #[arg(long)]
    join_children: Option<usize>,
    /// Parents published per second in the join-wake scenario: few enough that the joins do
    /// not queue behind each other, so that what is measured is the join's own latency.
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    /// Normal jobs waiting on the lanes task when the priority scenario's replica starts
    /// (default 20,000; 2,000 with --quick).
    #[arg(long)]
    priority_backlog: Option<usize>,
    /// High jobs the priority scenario publishes while the backlog drains (default 200; 100
    /// with --quick).
    #[arg(long)]
    priority_high: Option<usize>,
    /// High jobs published per second in the priority scenario.
    #[arg(long, default_value_t = 50.0)]
    priority_rate: f64,
    /// Rounds of the logging scenario: each measures 1-step no-op jobs without, then with, a
    /// log line per step (default 2; 1 with --quick). The best of each side counts.
    #[arg(long)]
    log_rounds: Option<usize>,
    /// Runs seeded for the runs-query scenario (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    runs_query_runs: Option<i64>,
    /// Timed calls of each query in the runs-query scenario (default 200; 20 with --quick).
    #[arg(long)]
    runs_query_samples: Option<usize>,
    /// Replicas in the scaling scenario.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// The Warren scenarios to run, after the ceiling (comma-separated; `half` needs `noop`,
    /// whose maximum rate it halves).
    #[arg(long, value_delimiter = ',', default_values = ["noop", "three", "replicas", "half", "io", "command", "http", "fan-out", "join", "priority", "logs", "runs-query"])]
    scenarios: Vec<ScenarioKind>,
    /// Also write the results as a Markdown section to this file (appended).
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
    /// The broker.
    #[arg(long, env = "WARREN_AMQP_URL", default_value = warren_shared::config::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// The Postgres server (without a database: each scenario creates and drops its own).
    #[arg(
        long,
        env = "WARREN_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pg_url: String,
}

/// The Warren scenarios, by the name `--scenarios` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScenarioKind {
    /// 1-step no-op jobs, 1 replica, as fast as possible.
    Noop,
    /// 3-step no-op jobs, 1 replica.
    Three,
    /// 1-step no-op jobs on several replicas.
    Replicas,
    /// 1-step no-op jobs published at half the `noop` rate (open loop).
    Half,
    /// 1-step no-op jobs without, then with, one `ctx.log` line per step, `--log-rounds`
    /// times, 1 replica: what storing a log line with each checkpoint costs in throughput.
    Logs,
    /// I/O-bound jobs at a high concurrency.
    Io,
    /// 1-step command jobs (a tiny program that prints `{}`), after the same program spawned
    /// bare from a Rust step: the command step's cost against the spawn's.
    Command,
    /// 1-step HTTP jobs against a local no-op endpoint, after the same POST made bare from a
    /// Rust step: the HTTP step's cost against the call's, and its throughput against `noop`.
    Http,
    /// One parent fanning out to `--fanout-children` 1-step no-op children, 1 replica: the
    /// children's rate against the same number of 1-step jobs published directly (the `noop`
    /// scenario's, when it ran with as many jobs, else measured for it).
    FanOut,
    /// `--join-parents` parents of `--join-children` children each, at `--join-rate` parents
    /// per second, 1 replica: the time from a parent's last child's end to its wake-up.
    Join,
    /// `--priority-backlog` normal 1-step no-op jobs on a task with priority lanes, then
    /// `--priority-high` high jobs at `--priority-rate` per second while they drain, 1
    /// replica: the high jobs' publish-to-start and the normal jobs' rate meanwhile.
    Priority,
    /// No broker, no worker: `--runs-query-runs` runs seeded in a database of their own, then
    /// each query of the runs list (first page, each filter, a page deep through its cursor,
    /// one run by id and by message id) timed `--runs-query-samples` times.
    RunsQuery,
}

impl ScenarioKind {
    /// Whether the scenario moves messages (and so wants the broker's ceiling measured first).
    fn uses_broker(self) -> bool {
        self != ScenarioKind::RunsQuery
    }
}

fn parse_queue_type(s: &str) -> Result<QueueType, String> {
    match s {
        "quorum" => Ok(QueueType::Quorum),
        "classic" => Ok(QueueType::Classic),
        other => Err(format!("{other:?} is not a queue type (quorum or classic)")),
    }
}

fn main() -> ExitCode {
    warren_shared::install_crypto_provider();
    if std::env::args().nth(1).as_deref() == Some("worker") {
        return warren_cli::main(tasks::registry());
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A JSON object of exactly `bytes` bytes (at least the braces and one field).
pub(crate) fn payload(bytes: usize) -> Vec<u8> {
    let frame = r#"{"pad":""}"#.len();
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(bytes.saturating_sub(frame))).into_bytes()
}

async fn run(args: Args) -> Result<()> {
    let quick = args.quick;
    let jobs = args.jobs.unwrap_or(if quick { 2_000 } else { 50_000 });
    let io_jobs = args.io_jobs.unwrap_or(if quick { 2_000 } else { 30_000 });
    let command_jobs = args.command_jobs.unwrap_or(if quick { 500 } else { 5_000 });
    let ceiling_messages = args
        .ceiling_messages
        .unwrap_or(if quick { 5_000 } else { 100_000 });
    let prefetch = args
        .prefetch
        .unwrap_or_else(|| u16::try_from(args.concurrency).unwrap_or(u16::MAX));
    let body = payload(args.payload_bytes);
    let setup = Setup {
        amqp_url: args.amqp_url.clone(),
        pg_url: args.pg_url.clone(),
        queue_type: args.queue_type,
        body: body.clone(),
        concurrency: args.concurrency,
        prefetch,
        exe: std::env::current_exe().context("cannot find this program's path")?,
        idle_window: Duration::from_secs(if quick { 1 } else { 5 }),
        endpoint: None,
    };
    let mut setup = setup;
    if args.scenarios.contains(&ScenarioKind::Http) {
        setup.endpoint = Some(endpoint::serve().await?);
    }
    let setup = setup;
    let mut report = report::Report::new(&args, jobs, io_jobs, ceiling_messages, prefetch);
    report.header();

    let broker = |rate: Option<f64>, messages: usize, acks, shape| ceiling::Ceiling {
        url: &args.amqp_url,
        queue: format!(
            "bench-ceiling-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ),
        queue_type: args.queue_type,
        messages,
        body: &body,
        prefetch,
        rate,
        acks,
        shape,
    };
    let ceiling_runs = args
        .ceiling_runs
        .unwrap_or(if quick { 1 } else { 3 })
        .max(1);
    let mut best = report::Ceilings::default();
    let kinds = [
        (Acks::Coalesced, Shape::Bare, "the ceiling"),
        (
            Acks::EachMessage,
            Shape::Bare,
            "the ceiling with one ack per message",
        ),
        (
            Acks::Coalesced,
            Shape::Warren,
            "the ceiling with Warren's messages",
        ),
    ];
    // The ceiling is what the scenarios that move messages are measured against; nothing else
    // needs it.
    let ceiling_runs = if args.scenarios.iter().any(|kind| kind.uses_broker()) {
        ceiling_runs
    } else {
        0
    };
    for _ in 0..ceiling_runs {
        for (acks, shape, what) in kinds {
            let run = ceiling::measure(broker(None, ceiling_messages, acks, shape))
                .await
                .with_context(|| format!("measuring {what} failed"))?;
            let kept = match (acks, shape) {
                (Acks::EachMessage, _) => &mut best.each_ack,
                (_, Shape::Warren) => &mut best.warren_messages,
                (_, Shape::Bare) => &mut best.coalesced,
            };
            if kept.as_ref().is_none_or(|k| run.rate > k.rate) {
                *kept = Some(run);
            }
        }
    }
    if ceiling_runs > 0 {
        report.ceiling(best, ceiling_runs);
    }

    let single = |name: &str, task, jobs, replicas| Scenario {
        name: name.to_owned(),
        task,
        jobs,
        replicas,
        rate: None,
        concurrency: None,
        measure_idle: false,
    };
    let wanted = |kind| args.scenarios.contains(&kind);
    anyhow::ensure!(
        !wanted(ScenarioKind::Half) || wanted(ScenarioKind::Noop),
        "the half-rate scenario needs the noop scenario (it publishes at half its rate)"
    );
    let mut max = None;
    if wanted(ScenarioKind::Noop) {
        let mut noop = single("1-step no-op, 1 replica", tasks::NOOP, jobs, 1);
        noop.measure_idle = true;
        max = Some(measure(&setup, &noop, &mut report).await?);
    }
    if wanted(ScenarioKind::Three) {
        let three = single("3-step no-op, 1 replica", tasks::THREE_STEPS, jobs, 1);
        measure(&setup, &three, &mut report).await?;
    }
    if wanted(ScenarioKind::Replicas) {
        let name = format!("1-step no-op, {} replicas", args.replicas);
        let replicas = single(&name, tasks::NOOP, jobs, args.replicas);
        measure(&setup, &replicas, &mut report).await?;
    }
    if let Some(max) = max.as_ref().filter(|_| wanted(ScenarioKind::Half)) {
        let half = max.jobs_per_sec / 2.0;
        // What the broker alone adds at that rate: Warren's publish-to-start includes it.
        let raw = ceiling::measure(broker(
            Some(half),
            jobs.min(ceiling_messages),
            Acks::Coalesced,
            Shape::Bare,
        ))
        .await
        .context("the raw broker's latency measurement failed")?;
        report.broker_latency(half, &raw.latency);
        let mut open_loop = single(
            &format!("1-step no-op at half rate ({half:.0}/s), 1 replica"),
            tasks::NOOP,
            jobs,
            1,
        );
        open_loop.rate = Some(half);
        measure(&setup, &open_loop, &mut report).await?;
    }
    if wanted(ScenarioKind::Io) {
        let mut io = single(
            &format!(
                "I/O-bound ({} ms step), concurrency {}, 1 replica",
                tasks::IO_WAIT.as_millis(),
                args.io_concurrency
            ),
            tasks::IO,
            io_jobs,
            1,
        );
        io.concurrency = Some(args.io_concurrency);
        measure(&setup, &io, &mut report).await?;
    }

    if wanted(ScenarioKind::Command) {
        let (program, arg) = tasks::TINY_PROGRAM;
        let concurrency = args.command_concurrency;
        let mut spawn = single(
            &format!(
                "1-step bare spawn of `{program} {arg}` from a Rust step, concurrency {concurrency}, 1 replica"
            ),
            tasks::SPAWN,
            command_jobs,
            1,
        );
        spawn.concurrency = Some(concurrency);
        let spawned = measure(&setup, &spawn, &mut report).await?;
        let mut command = single(
            &format!("1-step command `{program} {arg}`, concurrency {concurrency}, 1 replica"),
            tasks::COMMAND,
            command_jobs,
            1,
        );
        command.concurrency = Some(concurrency);
        let commanded = measure(&setup, &command, &mut report).await?;
        report.command_cost(&spawned, &commanded);
    }

    if wanted(ScenarioKind::Http) {
        // Warren's own time per HTTP step: the HTTP step against the same POST made bare, both
        // at a low concurrency; then the throughput, at the full one.
        let low = args.http_latency_concurrency;
        let latency_jobs = (jobs / 10).max(500);
        let at = |name: &str, task, jobs, concurrency| {
            let mut scenario = single(
                &format!("{name}, concurrency {concurrency}, 1 replica"),
                task,
                jobs,
                1,
            );
            scenario.concurrency = Some(concurrency);
            scenario
        };
        let bare = at(
            "1-step bare POST to a local no-op endpoint from a Rust step",
            tasks::HTTP_BARE,
            latency_jobs,
            low,
        );
        let called = measure(&setup, &bare, &mut report).await?;
        let http = at(
            "1-step HTTP step to a local no-op endpoint",
            tasks::HTTP,
            latency_jobs,
            low,
        );
        let stepped = measure(&setup, &http, &mut report).await?;
        let full = at(
            "1-step HTTP step to a local no-op endpoint",
            tasks::HTTP,
            jobs,
            args.concurrency,
        );
        let throughput = measure(&setup, &full, &mut report).await?;
        report.http_cost(&called, &stepped, &throughput, max.as_ref());
    }

    if wanted(ScenarioKind::Logs) {
        let rounds = args.log_rounds.unwrap_or(if quick { 1 } else { 2 }).max(1);
        let mut pairs = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            let plain = single(
                &format!("1-step no-op, 1 replica (logging baseline, round {round})"),
                tasks::NOOP,
                jobs,
                1,
            );
            let plain = measure(&setup, &plain, &mut report).await?;
            let logged = single(
                &format!("1-step no-op logging one line, 1 replica (round {round})"),
                tasks::LOGGED,
                jobs,
                1,
            );
            let logged = measure(&setup, &logged, &mut report).await?;
            pairs.push((plain, logged));
        }
        report.log_cost(&pairs);
    }

    if wanted(ScenarioKind::FanOut) {
        let children = args
            .fanout_children
            .unwrap_or(if quick { 500 } else { 10_000 })
            .max(1);
        // The same number of the same jobs, published directly, in this invocation.
        let reused = max.as_ref().filter(|_| jobs == children);
        let (direct, direct_name) = match reused {
            Some(noop) => (noop.clone(), "the 1-step no-op scenario above".to_owned()),
            None => {
                let name = format!("1-step no-op, {children} jobs, 1 replica (fan-out baseline)");
                let baseline = single(&name, tasks::NOOP, children, 1);
                (measure(&setup, &baseline, &mut report).await?, name)
            }
        };
        let fan = fanout::FanOut {
            name: format!("fan-out: 1 parent, {children} children, 1 replica"),
            parents: 1,
            children,
            rate: None,
        };
        let outcome = fanout::run(&setup, &fan)
            .await
            .with_context(|| format!("scenario {:?} failed", fan.name))?;
        report.fan_out(&fan.name, &outcome, &direct, &direct_name);
    }
    if wanted(ScenarioKind::Join) {
        let parents = args.join_parents.unwrap_or(if quick { 20 } else { 200 });
        let children = args.join_children.unwrap_or(if quick { 5 } else { 20 });
        anyhow::ensure!(
            args.join_rate.is_finite() && args.join_rate > 0.0,
            "--join-rate must be a positive number of parents per second"
        );
        let fan = fanout::FanOut {
            name: format!(
                "join wake: {parents} parents of {children} children at {:.0} parents/s, 1 replica",
                args.join_rate
            ),
            parents: parents.max(1),
            children: children.max(1),
            rate: Some(args.join_rate),
        };
        let outcome = fanout::run(&setup, &fan)
            .await
            .with_context(|| format!("scenario {:?} failed", fan.name))?;
        report.join_wake(&fan.name, &outcome);
    }

    if wanted(ScenarioKind::Priority) {
        anyhow::ensure!(
            args.priority_rate.is_finite() && args.priority_rate > 0.0,
            "--priority-rate must be a positive number of jobs per second"
        );
        let high = args.priority_high.unwrap_or(if quick { 100 } else { 200 });
        let backlog = args
            .priority_backlog
            .unwrap_or(if quick { 2_000 } else { 20_000 });
        let lanes = priority::Lanes {
            name: format!(
                "priority: {} normal jobs waiting, {high} high at {:.0}/s, 1 replica",
                backlog, args.priority_rate
            ),
            backlog,
            high: high.max(1),
            high_rate: args.priority_rate,
        };
        let outcome = priority::run(&setup, &lanes)
            .await
            .with_context(|| format!("scenario {:?} failed", lanes.name))?;
        report.priority(&lanes.name, &outcome, max.as_ref());
    }

    if wanted(ScenarioKind::RunsQuery) {
        let query = runs_query::RunsQuery {
            runs: args
                .runs_query_runs
                .unwrap_or(if quick { 20_000 } else { 1_000_000 }),
            samples: args
                .runs_query_samples
                .unwrap_or(if quick { 20 } else { 200 }),
        };
        let outcome = runs_query::run(&setup, &query)
            .await
            .context("scenario \"runs query\" failed")?;
        report.runs_query(&outcome);
    }

    report.footer();
    if let Some(path) = &args.markdown {
        report
            .write_markdown(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn measure(
    setup: &Setup,
    scenario: &Scenario,
    report: &mut report::Report,
) -> Result<Outcome> {
    let outcome = scenario::run(setup, scenario)
        .await
        .with_context(|| format!("scenario {:?} failed", scenario.name))?;
    report.scenario(&scenario.name, &outcome);
    Ok(outcome)
}
