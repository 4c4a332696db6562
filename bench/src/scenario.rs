//! One Warren measurement: real worker processes (this binary's `worker` command) consume a
//! task's queue and record everything in a fresh Postgres database, while the Warren producer
//! publishes N jobs, either as fast as confirms allow or at a fixed rate (open loop). Throughput
//! and latencies come from the runs' own timestamps in Postgres; CPU and memory from `/proc`;
//! transactions and rows from Postgres's statistics for the database.

use crate::ceiling::{self, Acks, CONFIRM_WINDOW, Ceiling, Shape};
use crate::measure::{self, CpuSplit, MachineCpu, Percentiles, PgCounters};
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use warren_producer::{Producer, PublishOptions};
use warren_shared::topology::{QueueType, Topology, inspect_queue};

/// What every scenario shares.
pub(crate) struct Setup {
    pub(crate) amqp_url: String,
    pub(crate) pg_url: String,
    pub(crate) queue_type: QueueType,
    pub(crate) body: Vec<u8>,
    pub(crate) concurrency: u32,
    pub(crate) prefetch: u16,
    pub(crate) exe: PathBuf,
    pub(crate) idle_window: Duration,
    /// The local no-op endpoint of the HTTP scenarios, handed to the replicas.
    pub(crate) endpoint: Option<String>,
}

/// One scenario.
pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) task: &'static str,
    pub(crate) jobs: usize,
    pub(crate) replicas: usize,
    /// Publish at this many jobs per second instead of as fast as possible.
    pub(crate) rate: Option<f64>,
    pub(crate) concurrency: Option<u32>,
    pub(crate) measure_idle: bool,
}

/// What a scenario measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) jobs_per_sec: f64,
    /// Jobs over the span from the first start to the last finish (the first publish's trip to
    /// the worker left out): how the fan-out's children are counted, for a like comparison.
    pub(crate) jobs_per_sec_from_start: f64,
    pub(crate) queue_wait: Percentiles,
    pub(crate) finish: Percentiles,
    pub(crate) cpu_seconds_per_1000: f64,
    pub(crate) peak_rss_mib: f64,
    pub(crate) idle_cpu_percent: Option<f64>,
    pub(crate) transactions_per_job: f64,
    pub(crate) state_commits_per_job: Option<f64>,
    pub(crate) rows_per_job: f64,
    /// At a fixed rate: the broker's own publish-to-delivery latency meanwhile, measured by a
    /// probe on a queue of its own.
    pub(crate) broker_probe: Option<Percentiles>,
    /// The step's own time in microseconds, for tasks whose step reports it (`{"us": ...}` as its
    /// output): finer than the worker's histogram buckets.
    pub(crate) step_us: Option<Percentiles>,
    /// Where the machine's CPU went, per job, from the first publish until every job was done
    /// ("this process" is the publisher).
    pub(crate) cpu: CpuSplit,
}

/// Messages per second of the latency probe: few enough to add no load worth counting (its
/// publisher and consumer run in this process, so their CPU is in the publisher's share).
pub(crate) const PROBE_RATE: f64 = 100.0;

pub(crate) struct Replica {
    child: Child,
    metrics_port: u16,
}

impl Replica {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn metrics_port(&self) -> u16 {
        self.metrics_port
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` worker replicas (this binary's `worker` command) running `tasks`.
pub(crate) fn start_replicas(
    setup: &Setup,
    bed: &Bed,
    tasks: &[&str],
    count: usize,
    concurrency: u32,
    prefetch: u16,
) -> Result<Vec<Replica>> {
    let mut replicas = Vec::new();
    for i in 0..count {
        let port = free_port()?;
        let child = Command::new(&setup.exe)
            .args(["worker", "--worker-id", &format!("bench-{i}")])
            .args(["--only", &tasks.join(",")])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--prefetch", &prefetch.to_string()])
            .args(["--queue-type", setup.queue_type.as_str()])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("WARREN_AMQP_URL", &setup.amqp_url)
            .env("WARREN_DATABASE_URL", &bed.database_url)
            .env("WARREN_NAMESPACE", bed.topology.namespace())
            .env(
                crate::tasks::ENDPOINT_ENV,
                setup
                    .endpoint
                    .as_deref()
                    .unwrap_or(crate::tasks::NO_ENDPOINT),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a worker replica")?;
        replicas.push(Replica {
            child,
            metrics_port: port,
        });
    }
    Ok(replicas)
}

/// Stops the replicas with SIGTERM and waits for them (stopped replicas have flushed their
/// statistics to Postgres).
pub(crate) fn stop_replicas(replicas: &mut [Replica]) {
    for replica in replicas.iter_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &replica.child.id().to_string()])
            .status();
    }
    for replica in replicas.iter_mut() {
        let _ = replica.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh namespace and database for one measurement, dropped afterwards.
pub(crate) struct Bed {
    pub(crate) topology: Topology,
    pub(crate) pool: deadpool_postgres::Pool,
    /// A connection to the server's `postgres` database: statistics, and the final drop.
    pub(crate) admin: tokio_postgres::Client,
    pub(crate) database: String,
    pub(crate) database_url: String,
}

impl Bed {
    pub(crate) async fn new(setup: &Setup) -> Result<Bed> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let namespace = format!("bench{id}");
        let database = format!("warren_bench_{id}");
        let database_url = format!("{}/{database}", setup.pg_url);
        let topology = Topology::new(namespace, setup.queue_type);
        let pool = warren_shared::db::prepare(&database_url, 2)
            .await
            .context("cannot prepare the benchmark database")?;
        let (admin, connection) =
            tokio_postgres::connect(&format!("{}/postgres", setup.pg_url), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(connection);
        Ok(Bed {
            topology,
            pool,
            admin,
            database,
            database_url,
        })
    }

    /// Deletes the tasks' queues and exchanges and drops the database.
    pub(crate) async fn teardown(self, setup: &Setup, tasks: &[&str]) {
        cleanup(setup, &self.topology, tasks).await;
        self.pool.close();
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            ))
            .await;
    }
}

pub(crate) async fn run(setup: &Setup, scenario: &Scenario) -> Result<Outcome> {
    let bed = Bed::new(setup).await?;
    let result = measure_scenario(setup, scenario, &bed).await;
    bed.teardown(setup, &[scenario.task]).await;
    result
}

async fn measure_scenario(setup: &Setup, scenario: &Scenario, bed: &Bed) -> Result<Outcome> {
    let Bed {
        topology,
        pool,
        admin,
        database,
        ..
    } = bed;
    let concurrency = scenario.concurrency.unwrap_or(setup.concurrency);
    let prefetch = if scenario.concurrency.is_some() {
        u16::try_from(concurrency).unwrap_or(u16::MAX)
    } else {
        setup.prefetch
    };
    let mut replicas = start_replicas(
        setup,
        bed,
        &[scenario.task],
        scenario.replicas,
        concurrency,
        prefetch,
    )?;
    wait_consumers(setup, topology, &[scenario.task], scenario.replicas).await?;

    let cpu_before = total_cpu(&replicas)?;
    let machine_before = MachineCpu::now();
    let pg_before = measure::pg_counters(admin, database).await?;
    let producer =
        Producer::connect_named(&setup.amqp_url, topology.clone(), "warren-bench producer").await?;
    let broker_probe = match scenario.rate.filter(|r| r.is_finite() && *r > 0.0) {
        None => {
            publish(&producer, scenario.task, scenario.jobs, None, &setup.body).await?;
            None
        }
        Some(rate) => {
            // A probe through the broker alone, for as long as the publisher runs: the latency
            // the broker itself adds under this load, which Warren's publish-to-start includes.
            let probe = Ceiling {
                url: &setup.amqp_url,
                queue: format!("{}.probe", topology.namespace()),
                queue_type: setup.queue_type,
                messages: (scenario.jobs as f64 / rate * PROBE_RATE * 0.9).max(1.0) as usize,
                body: &setup.body,
                prefetch: setup.prefetch,
                rate: Some(PROBE_RATE),
                acks: Acks::Coalesced,
                shape: Shape::Bare,
            };
            let (published, probed) = tokio::join!(
                publish(
                    &producer,
                    scenario.task,
                    scenario.jobs,
                    Some(rate),
                    &setup.body
                ),
                ceiling::measure(probe)
            );
            published?;
            // The probe only explains the scenario's figures: without it, they still stand.
            match probed {
                Ok(probe) => Some(probe.latency),
                Err(e) => {
                    eprintln!("the broker latency probe failed ({e:#}); going on without it");
                    None
                }
            }
        }
    };
    wait_done(pool, &replicas, scenario.jobs).await?;
    let cpu_after = total_cpu(&replicas)?;
    let cpu = MachineCpu::now().since(&machine_before, scenario.jobs);

    let idle_cpu_percent = if scenario.measure_idle {
        let start = total_cpu(&replicas)?;
        tokio::time::sleep(setup.idle_window).await;
        let used = total_cpu(&replicas)?.saturating_sub(start);
        Some(used.as_secs_f64() / setup.idle_window.as_secs_f64() * 100.0 / replicas.len() as f64)
    } else {
        None
    };
    let peak_rss_mib = replicas
        .iter()
        .map(|r| measure::peak_rss_mib(r.child.id()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(0.0, f64::max);
    let state_commits = replicas
        .iter()
        .map(|r| scrape_counter(r.metrics_port, warren_shared::metrics::STATE_COMMITS))
        .sum::<Option<f64>>();

    stop_replicas(&mut replicas);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pg_after = measure::pg_counters(admin, database).await?;

    let (span, started_span, queue_wait, finish) = latencies(pool).await?;
    let step_us = step_times(pool).await?;
    let jobs = scenario.jobs as f64;
    Ok(Outcome {
        jobs_per_sec: jobs / span,
        jobs_per_sec_from_start: jobs / started_span,
        queue_wait,
        finish,
        cpu_seconds_per_1000: cpu_after.saturating_sub(cpu_before).as_secs_f64() / jobs * 1000.0,
        peak_rss_mib,
        idle_cpu_percent,
        transactions_per_job: (pg_after.commits - pg_before.commits) as f64 / jobs,
        state_commits_per_job: state_commits.map(|c| c / jobs),
        rows_per_job: rows(pg_before, pg_after) / jobs,
        broker_probe,
        step_us,
        cpu,
    })
}

/// The steps' own times (microseconds), when they reported them as `{"us": ...}`.
async fn step_times(pool: &deadpool_postgres::Pool) -> Result<Option<Percentiles>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT (output->>'us')::float8 FROM run_steps WHERE output ? 'us'",
            &[],
        )
        .await?;
    let times: Vec<f64> = rows.iter().map(|r| r.get::<_, f64>(0)).collect();
    Ok((!times.is_empty()).then(|| Percentiles::of(times)))
}

fn rows(before: PgCounters, after: PgCounters) -> f64 {
    (after.rows_written - before.rows_written) as f64
}

pub(crate) fn total_cpu(replicas: &[Replica]) -> Result<Duration> {
    replicas
        .iter()
        .map(|r| measure::cpu_time(r.child.id()))
        .sum()
}

/// Waits until every task's queue has `replicas` consumers.
pub(crate) async fn wait_consumers(
    setup: &Setup,
    topology: &Topology,
    tasks: &[&str],
    replicas: usize,
) -> Result<()> {
    let connection = warren_shared::amqp::connect(&setup.amqp_url, "warren-bench").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ready = true;
        for task in tasks {
            // A queue not declared yet closes the channel that asked.
            let channel = connection.create_channel().await?;
            let stats = inspect_queue(&channel, &topology.task_queue(task)).await?;
            ready &= stats.is_some_and(|s| s.consumers as usize >= replicas);
        }
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker replicas did not start consuming within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warren_shared::amqp::close(&connection, "done").await;
    Ok(())
}

/// Publishes `jobs` jobs of `task` with the Warren producer, keeping up to [`CONFIRM_WINDOW`]
/// confirms outstanding; at a fixed rate, each job is sent at its due time (open loop: a slow
/// consumer does not slow the publisher down).
pub(crate) async fn publish(
    producer: &Producer,
    task: &str,
    jobs: usize,
    rate: Option<f64>,
    body: &[u8],
) -> Result<()> {
    let start = tokio::time::Instant::now();
    let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..jobs {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let options = PublishOptions {
            message_id: Some(format!("job-{i}")),
            ..PublishOptions::default()
        };
        let (_, confirm) = producer.start_json(task, body, options).await?;
        pending.push_back(confirm);
        if pending.len() >= CONFIRM_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            oldest.wait().await?;
        }
    }
    for confirm in pending {
        confirm.wait().await?;
    }
    Ok(())
}

/// Waits until every job has succeeded. Watches the replicas' own counters rather than counting
/// rows in Postgres, which would load the database being measured (a count over the runs
/// table every few hundred milliseconds took a fair share of a core); Postgres confirms once.
pub(crate) async fn wait_done(
    pool: &deadpool_postgres::Pool,
    replicas: &[Replica],
    jobs: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120 + jobs as u64 / 100);
    let counted = || {
        replicas
            .iter()
            .map(|r| scrape_counter(r.metrics_port, warren_shared::metrics::RUNS_SUCCEEDED))
            .sum::<Option<f64>>()
            .unwrap_or(0.0)
    };
    loop {
        let done = counted() as usize;
        if done >= jobs {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {jobs} jobs finished in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = pool.get().await?;
    let done: i64 = client
        .query_one("SELECT count(*) FROM runs WHERE status = 'succeeded'", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        done as usize >= jobs,
        "the replicas counted {jobs} successes, Postgres holds {done}"
    );
    Ok(())
}

/// The whole run's span (first publish to last finish, seconds), the span from the first start
/// to the last finish, and the per-job latencies (milliseconds), from the runs' timestamps.
async fn latencies(pool: &deadpool_postgres::Pool) -> Result<(f64, f64, Percentiles, Percentiles)> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT extract(epoch FROM started_at - published_at)::float8 * 1000,
                    extract(epoch FROM finished_at - published_at)::float8 * 1000
             FROM runs",
            &[],
        )
        .await?;
    let spans = client
        .query_one(
            "SELECT extract(epoch FROM max(finished_at) - min(published_at))::float8,
                    extract(epoch FROM max(finished_at) - min(started_at))::float8
             FROM runs",
            &[],
        )
        .await?;
    let wait = rows.iter().map(|r| r.get::<_, f64>(0)).collect();
    let finish = rows.iter().map(|r| r.get::<_, f64>(1)).collect();
    Ok((
        spans.get(0),
        spans.get(1),
        Percentiles::of(wait),
        Percentiles::of(finish),
    ))
}

/// Reads one counter (summed over its series) from a replica's `/metrics`.
pub(crate) fn scrape_counter(port: u16, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Deletes the scenario's queues and exchanges.
async fn cleanup(setup: &Setup, topology: &Topology, tasks: &[&str]) {
    let Ok(connection) =
        warren_shared::amqp::connect(&setup.amqp_url, "warren-bench cleanup").await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        topology.delete_all(&channel, tasks.iter().copied()).await;
    }
    warren_shared::amqp::close(&connection, "done").await;
}
