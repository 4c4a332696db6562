//! The fan-out scenarios: parent runs whose first step starts child runs of the 1-step no-op
//! task and waits for them, on one replica that runs both tasks.
//!
//! - **Fan-out**: one parent with many children. How fast the children run, counted from
//!   Postgres as the children over the span from the first child's start to the last one's
//!   finish, against the same number of 1-step jobs published directly (measured in the same
//!   invocation): what starting jobs through a parent's join and the outbox costs.
//! - **Join wake**: many parents with a few children each, published at a moderate rate so that
//!   they do not queue behind each other. For each parent, the time from its last child's end
//!   (the children's latest `finished_at`) to its wake-up (its transition from
//!   `waiting_for_children` to `running`, `run_transitions.at`): the join's own latency.

use crate::measure::{self, CpuSplit, MachineCpu, Percentiles};
use crate::scenario::{self, Bed, Setup};
use crate::tasks;
use anyhow::{Context, Result};
use std::time::Duration;
use warren_producer::Producer;

/// One fan-out measurement.
pub(crate) struct FanOut {
    pub(crate) name: String,
    /// Parent runs.
    pub(crate) parents: usize,
    /// Children of each parent.
    pub(crate) children: usize,
    /// Parents published per second (as fast as possible when `None`).
    pub(crate) rate: Option<f64>,
}

/// What a fan-out measurement found.
#[derive(Debug, Clone, Default)]
pub(crate) struct FanOutcome {
    /// Children that succeeded, of all children.
    pub(crate) children_succeeded: i64,
    pub(crate) children_total: i64,
    /// Children per second, from the first child's start to the last child's finish.
    pub(crate) children_per_sec: f64,
    /// Per parent: its last child's end to its wake-up, ms.
    pub(crate) wake: Percentiles,
    /// Per parent: its park (`running → waiting_for_children`) to its first child's start, ms:
    /// the outbox relay and the broker's delivery.
    pub(crate) park_to_first_child: Percentiles,
    /// Per parent: publish to finish, ms.
    pub(crate) parent_finish: Percentiles,
    /// The replica's peak resident memory, MiB.
    pub(crate) peak_rss_mib: f64,
    /// Worker CPU per child, µs.
    pub(crate) worker_us_per_child: f64,
    /// Postgres transactions per child (all of the database's, heartbeats included).
    pub(crate) transactions_per_child: f64,
    /// The replica's group commits per child.
    pub(crate) state_commits_per_child: Option<f64>,
    /// Where the machine's CPU went, per child.
    pub(crate) cpu: CpuSplit,
}

pub(crate) async fn run(setup: &Setup, fan_out: &FanOut) -> Result<FanOutcome> {
    let bed = Bed::new(setup).await?;
    let result = measure_fan_out(setup, fan_out, &bed).await;
    bed.teardown(setup, &[tasks::FAN_OUT, tasks::NOOP]).await;
    result
}

async fn measure_fan_out(setup: &Setup, fan_out: &FanOut, bed: &Bed) -> Result<FanOutcome> {
    let task_names = [tasks::FAN_OUT, tasks::NOOP];
    let mut replicas = scenario::start_replicas(
        setup,
        bed,
        &task_names,
        1,
        setup.concurrency,
        setup.prefetch,
    )?;
    scenario::wait_consumers(setup, &bed.topology, &task_names, 1).await?;

    let cpu_before = scenario::total_cpu(&replicas)?;
    let machine_before = MachineCpu::now();
    let pg_before = measure::pg_counters(&bed.admin, &bed.database).await?;
    let producer = Producer::connect_named(
        &setup.amqp_url,
        bed.topology.clone(),
        "warren-bench producer",
    )
    .await?;
    let body = serde_json::to_vec(&serde_json::json!({
        "children": fan_out.children,
        "child_bytes": setup.body.len(),
    }))?;
    scenario::publish(
        &producer,
        tasks::FAN_OUT,
        fan_out.parents,
        fan_out.rate,
        &body,
    )
    .await?;
    // Every parent and every child succeeds.
    let runs = fan_out.parents * (fan_out.children + 1);
    scenario::wait_done(&bed.pool, &replicas, runs).await?;
    let children = (fan_out.parents * fan_out.children).max(1);
    let worker_cpu = scenario::total_cpu(&replicas)?.saturating_sub(cpu_before);
    let cpu = MachineCpu::now().since(&machine_before, children);
    let state_commits = replicas
        .iter()
        .map(|r| scenario::scrape_counter(r.metrics_port(), warren_shared::metrics::STATE_COMMITS))
        .sum::<Option<f64>>();
    let peak_rss_mib = replicas
        .iter()
        .map(|r| measure::peak_rss_mib(r.pid()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(0.0, f64::max);
    scenario::stop_replicas(&mut replicas);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pg_after = measure::pg_counters(&bed.admin, &bed.database).await?;

    let client = bed.pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*),
                    coalesce(extract(epoch FROM max(finished_at) - min(started_at))::float8, 0)
             FROM runs WHERE parent_id IS NOT NULL",
            &[],
        )
        .await
        .context("cannot read the children's times")?;
    let (succeeded, total, span): (i64, i64, f64) = (row.get(0), row.get(1), row.get(2));
    anyhow::ensure!(
        total as usize == fan_out.parents * fan_out.children,
        "{total} child runs, where {} were started",
        fan_out.parents * fan_out.children
    );
    let per_parent = client
        .query(
            "SELECT extract(epoch FROM wake.at - c.last_end)::float8 * 1000,
                    extract(epoch FROM c.first_start - park.at)::float8 * 1000,
                    extract(epoch FROM p.finished_at - p.published_at)::float8 * 1000
             FROM runs p
             JOIN LATERAL (SELECT max(finished_at) AS last_end, min(started_at) AS first_start
                           FROM runs WHERE parent_id = p.id) c ON true
             JOIN LATERAL (SELECT min(at) AS at FROM run_transitions
                           WHERE run_id = p.id AND from_status = 'waiting_for_children'
                             AND to_status = 'running') wake ON true
             JOIN LATERAL (SELECT min(at) AS at FROM run_transitions
                           WHERE run_id = p.id AND to_status = 'waiting_for_children') park ON true
             WHERE p.parent_id IS NULL AND p.task = $1",
            &[&tasks::FAN_OUT],
        )
        .await
        .context("cannot read the parents' times")?;
    let column = |i: usize| -> Vec<f64> {
        per_parent
            .iter()
            .filter_map(|r| r.get::<_, Option<f64>>(i))
            .collect()
    };
    Ok(FanOutcome {
        children_succeeded: succeeded,
        children_total: total,
        children_per_sec: if span > 0.0 { total as f64 / span } else { 0.0 },
        wake: Percentiles::of(column(0)),
        park_to_first_child: Percentiles::of(column(1)),
        parent_finish: Percentiles::of(column(2)),
        peak_rss_mib,
        worker_us_per_child: worker_cpu.as_secs_f64() * 1e6 / children as f64,
        transactions_per_child: (pg_after.commits - pg_before.commits) as f64 / children as f64,
        state_commits_per_child: state_commits.map(|c| c / children as f64),
        cpu,
    })
}
