//! Tasks: every task the fleet consumes (from the replicas' registrations, and the schedules),
//! with its queue's depth and consumers from the broker, its dead letters, and its rates from
//! Postgres; and a task's per-minute throughput and failures over the last hour.

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;
use crate::tokens::Scope;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use warren_shared::priority::Priority;
use warren_shared::store::{self, schedules};
use warren_shared::topology::{QueueStats, Topology, inspect_queues};

/// A task as the tasks page shows it.
#[derive(Serialize)]
pub(super) struct TaskRow {
    task: String,
    queue: String,
    /// Ready messages, in all its lanes; `None` when the queue does not exist (yet) or the
    /// broker is away.
    ready: Option<u32>,
    consumers: Option<u32>,
    dead_letters: Option<u32>,
    /// Replicas alive that consume it.
    replicas: usize,
    /// Runs created in the last minute.
    started_last_minute: i64,
    /// Of those, succeeded and dead so far.
    succeeded_last_minute: i64,
    dead_last_minute: i64,
}

/// The tasks the fleet knows: those of the replicas listed by `warren workers`, and those with
/// schedules. Sorted.
pub(crate) async fn known_tasks(
    client: &deadpool_postgres::Client,
) -> ApiResult<BTreeMap<String, usize>> {
    let mut tasks: BTreeMap<String, usize> = BTreeMap::new();
    for worker in store::list_workers(client, false).await? {
        for task in worker.tasks {
            *tasks.entry(task).or_default() += usize::from(worker.state == "alive");
        }
    }
    for schedule in schedules::list(client).await? {
        tasks.entry(schedule.definition.task).or_default();
    }
    Ok(tasks)
}

/// Each task's queue (its lanes' depths added, as `warren tasks` shows them) and its
/// dead-letter queue; `None`s when the broker cannot be reached, so that the page still shows
/// what Postgres knows.
async fn queue_stats(
    state: &AppState,
    topology: &Topology,
    tasks: &BTreeSet<String>,
) -> Vec<(Option<QueueStats>, Option<QueueStats>)> {
    let queues: Vec<String> = tasks
        .iter()
        .flat_map(|t| {
            [
                topology.task_queue(t),
                topology.lane_queue(t, Priority::High),
                topology.lane_queue(t, Priority::Low),
                topology.dead_letter_queue(t),
            ]
        })
        .collect();
    let read = async {
        let connection = state.broker().await?;
        inspect_queues(&connection, &queues)
            .await
            .map_err(ApiError::broker)
    };
    match read.await {
        Ok(stats) => stats
            .chunks(4)
            .map(|q| {
                let lanes = [q[1], q[2]].into_iter().flatten();
                let queue = q[0].map(|main| QueueStats {
                    messages: main.messages + lanes.map(|l| l.messages).sum::<u32>(),
                    consumers: main.consumers,
                });
                (queue, q[3])
            })
            .collect(),
        Err(_) => vec![(None, None); tasks.len()],
    }
}

/// `GET /api/v1/tasks`.
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<TaskRow>>> {
    principal.require(Scope::Read)?;
    let client = state.pool.get().await?;
    let tasks = known_tasks(&client).await?;
    let mut rates: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for row in client
        .query(
            "SELECT task, count(*), count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status = 'dead')
             FROM runs WHERE created_at > now() - interval '1 minute' GROUP BY task",
            &[],
        )
        .await?
    {
        rates.insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
    }
    drop(client);
    let names: BTreeSet<String> = tasks.keys().cloned().collect();
    let stats = queue_stats(&state, &state.topology, &names).await;
    let rows = tasks
        .into_iter()
        .zip(stats)
        .map(|((task, replicas), (queue, dlq))| {
            let (started, succeeded, dead) = rates.get(&task).copied().unwrap_or_default();
            TaskRow {
                queue: state.topology.task_queue(&task),
                ready: queue.map(|q| q.messages),
                consumers: queue.map(|q| q.consumers),
                dead_letters: dlq.map(|q| q.messages),
                replicas,
                started_last_minute: started,
                succeeded_last_minute: succeeded,
                dead_last_minute: dead,
                task,
            }
        })
        .collect();
    Ok(Json(rows))
}

#[derive(Deserialize)]
pub(super) struct StatsParams {
    minutes: Option<i32>,
}

/// One minute of a task's history.
#[derive(Serialize)]
pub(super) struct Minute {
    minute: DateTime<Utc>,
    /// Runs created in that minute.
    started: i64,
    /// Of those, how many have succeeded (or halted with an outcome).
    succeeded: i64,
    /// Of those, how many are dead.
    failed: i64,
    /// Of those, how many needed more than one attempt.
    retried: i64,
}

/// `GET /api/v1/tasks/{task}/stats?minutes=60`: per minute, oldest first, minutes with no run
/// included as zeros so that a chart's axis is the whole window.
pub(super) async fn stats(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(task): ApiPath<String>,
    ApiQuery(params): ApiQuery<StatsParams>,
) -> ApiResult<Json<Vec<Minute>>> {
    principal.require(Scope::Read)?;
    let minutes = params.minutes.unwrap_or(60);
    if !(1..=1_440).contains(&minutes) {
        return Err(ApiError::BadRequest(format!(
            "minutes {minutes}: between 1 and 1440"
        )));
    }
    let client = state.pool.get().await?;
    let rows = client
        .query(
            "WITH window_ AS (
                 SELECT generate_series(date_trunc('minute', now()) - make_interval(mins => $2 - 1),
                                        date_trunc('minute', now()), interval '1 minute') AS minute
             ), counted AS (
                 SELECT date_trunc('minute', created_at) AS minute, count(*) AS started,
                        count(*) FILTER (WHERE status IN ('succeeded', 'halted')) AS succeeded,
                        count(*) FILTER (WHERE status = 'dead') AS failed,
                        count(*) FILTER (WHERE attempt > 1) AS retried
                 FROM runs
                 WHERE task = $1
                   AND created_at >= date_trunc('minute', now()) - make_interval(mins => $2 - 1)
                 GROUP BY 1
             )
             SELECT w.minute, coalesce(c.started, 0), coalesce(c.succeeded, 0),
                    coalesce(c.failed, 0), coalesce(c.retried, 0)
             FROM window_ w LEFT JOIN counted c USING (minute) ORDER BY w.minute",
            &[&task, &minutes],
        )
        .await?;
    Ok(Json(
        rows.iter()
            .map(|row| Minute {
                minute: row.get(0),
                started: row.get(1),
                succeeded: row.get(2),
                failed: row.get(3),
                retried: row.get(4),
            })
            .collect(),
    ))
}
