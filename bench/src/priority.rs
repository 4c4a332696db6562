//! The priority scenario: a backlog of normal 1-step no-op jobs on a task with priority lanes,
//! then high jobs trickled in while the backlog drains, 1 replica. For each high job, the time
//! from its publish to its start (`runs.started_at - runs.published_at`): how long a high job
//! waits behind a backlog it jumps. And the normal jobs' rate meanwhile, from their first start
//! to their last finish, to set against the 1-step no-op scenario's: what the lanes cost the
//! normal path.
//!
//! The backlog is published before the replica starts, so that it is all waiting when the
//! first high job arrives; the high jobs are published at a fixed rate until they are all out.

use crate::measure::Percentiles;
use crate::scenario::{self, Bed, Setup};
use crate::tasks;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::time::Duration;
use warren_producer::{Producer, PublishOptions};
use warren_shared::priority::Priority;

/// One priority measurement.
pub(crate) struct Lanes {
    pub(crate) name: String,
    /// Normal jobs waiting when the replica starts.
    pub(crate) backlog: usize,
    /// High jobs published while it drains.
    pub(crate) high: usize,
    /// High jobs published per second.
    pub(crate) high_rate: f64,
}

/// What a priority measurement found.
#[derive(Debug, Clone, Default)]
pub(crate) struct LanesOutcome {
    /// High jobs' publish to start, ms.
    pub(crate) high_wait: Percentiles,
    /// High jobs that started while normal jobs were still waiting to start.
    pub(crate) high_during_backlog: usize,
    pub(crate) high_total: usize,
    /// Normal jobs per second, from their first start to their last finish.
    pub(crate) normal_per_sec: f64,
    /// Normal jobs' publish to start, ms.
    pub(crate) normal_wait: Percentiles,
}

pub(crate) async fn run(setup: &Setup, lanes: &Lanes) -> Result<LanesOutcome> {
    let bed = Bed::new(setup).await?;
    let result = measure_lanes(setup, lanes, &bed).await;
    bed.teardown(setup, &[tasks::LANES]).await;
    result
}

async fn measure_lanes(setup: &Setup, lanes: &Lanes, bed: &Bed) -> Result<LanesOutcome> {
    // Declared here (as the replica will), so that the backlog waits before the replica starts.
    let connection = warren_shared::amqp::connect(&setup.amqp_url, "warren-bench").await?;
    let channel = connection.create_channel().await?;
    bed.topology
        .declare_task(&channel, tasks::LANES, &[tasks::LANES.to_owned()], true)
        .await
        .context("cannot declare the lanes task")?;
    warren_shared::amqp::close(&connection, "declared").await;
    let producer = Producer::connect_named(
        &setup.amqp_url,
        bed.topology.clone(),
        "warren-bench producer",
    )
    .await?;
    scenario::publish(&producer, tasks::LANES, lanes.backlog, None, &setup.body).await?;

    let mut replicas = scenario::start_replicas(
        setup,
        bed,
        &[tasks::LANES],
        1,
        setup.concurrency,
        setup.prefetch,
    )?;
    scenario::wait_consumers(setup, &bed.topology, &[tasks::LANES], 1).await?;
    publish_high(&producer, lanes, &setup.body).await?;
    scenario::wait_done(&bed.pool, &replicas, lanes.backlog + lanes.high).await?;
    scenario::stop_replicas(&mut replicas);

    let client = bed.pool.get().await?;
    let high_wait = start_waits(&client, "high")
        .await
        .context("cannot read the high jobs")?;
    let normal_wait = start_waits(&client, "job")
        .await
        .context("cannot read the normal jobs")?;
    let row = client
        .query_one(
            "WITH normal AS (SELECT * FROM runs WHERE message_id LIKE 'job-%')
             SELECT (SELECT count(*) FROM runs h WHERE h.message_id LIKE 'high-%'
                       AND h.started_at < (SELECT max(started_at) FROM normal)),
                    (SELECT count(*) FROM normal)::float8
                      / nullif(extract(epoch FROM (SELECT max(finished_at) - min(started_at)
                                                   FROM normal))::float8, 0)",
            &[],
        )
        .await
        .context("cannot read the normal jobs' rate")?;
    Ok(LanesOutcome {
        high_total: high_wait.len(),
        high_wait: Percentiles::of(high_wait),
        high_during_backlog: usize::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        normal_per_sec: row.get::<_, Option<f64>>(1).unwrap_or(0.0),
        normal_wait: Percentiles::of(normal_wait),
    })
}

/// Publish to start, ms, of the runs whose message id is `{prefix}-{n}`.
async fn start_waits(client: &tokio_postgres::Client, prefix: &str) -> Result<Vec<f64>> {
    let rows = client
        .query(
            "SELECT extract(epoch FROM started_at - published_at)::float8 * 1000
             FROM runs WHERE message_id LIKE $1 || '-%'",
            &[&prefix],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, f64>(0)).collect())
}

/// Publishes the high jobs at their rate (open loop), `high-{n}`.
async fn publish_high(producer: &Producer, lanes: &Lanes, body: &[u8]) -> Result<()> {
    let start = tokio::time::Instant::now();
    let mut pending = VecDeque::new();
    for i in 0..lanes.high {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / lanes.high_rate)).await;
        let options = PublishOptions {
            message_id: Some(format!("high-{i}")),
            priority: Priority::High,
            ..PublishOptions::default()
        };
        let (_, confirm) = producer.start_json(tasks::LANES, body, options).await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        confirm.wait().await?;
    }
    Ok(())
}
