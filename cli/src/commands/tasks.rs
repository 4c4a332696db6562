//! `warren tasks`: each task's queue, depth and consumers (and each priority lane's depth),
//! read from the broker; and
//! `warren tasks validate FILE`, which checks a task file with nothing else.

use super::{redact, within_timeout};
use crate::args::{Global, TasksArgs};
use crate::output::{print_json, table};
use serde::Serialize;
use std::path::Path;
use warren_shared::priority::Priority;
use warren_shared::topology::{QueueStats, inspect_queues};
use warren_worker::Registry;
use warren_worker::declared::{self, LoadError};

/// Checks the task file `file` as a replica of this program would (its built-in tasks' names
/// are taken): each mistake on its own line on standard output, then one error line.
pub(crate) fn validate(file: &Path, registry: &Registry) -> anyhow::Result<()> {
    match declared::check(file, registry) {
        Ok(tasks) => {
            println!("{}: {tasks} task(s), valid", file.display());
            Ok(())
        }
        Err(LoadError::Invalid(mistakes)) => {
            for line in mistakes.lines() {
                println!("{line}");
            }
            anyhow::bail!("{}: {} mistake(s)", mistakes.file(), mistakes.len())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Serialize)]
struct TaskRow {
    task: String,
    events: Vec<String>,
    steps: usize,
    /// The task's own concurrency per replica; `None`: the replica's default
    /// (`--default-concurrency`).
    concurrency: Option<usize>,
    /// The task's own limit on one attempt, in seconds; `None`: the replica's default
    /// (`--default-max-duration`).
    max_duration_seconds: Option<u64>,
    /// The task's fleet-wide limit on starts (`20/s`, `5/s per tenant`), if it has one.
    rate_limit: Option<String>,
    /// The task's fleet-wide limit on runs of one key at once (`5 per tenant`), if it has one.
    concurrency_key: Option<String>,
    queue: String,
    /// The task's priority lanes with their queues and depths; empty for a task without lanes
    /// (every message runs as normal).
    lanes: Vec<LaneRow>,
    /// Ready in all its lanes together; `None` when no worker has declared the queue yet.
    ready: Option<u32>,
    consumers: Option<u32>,
    dead_letter_queue: String,
    dead_letters: Option<u32>,
}

#[derive(Serialize)]
struct LaneRow {
    lane: Priority,
    queue: String,
    /// `None` when no worker has declared the lane yet.
    ready: Option<u32>,
}

impl LaneRow {
    /// `high 3`, or `high not declared`.
    fn cell(&self) -> String {
        match self.ready {
            Some(n) => format!("{} {n}", self.lane),
            None => format!("{} not declared", self.lane),
        }
    }
}

pub(crate) async fn run(
    global: &Global,
    args: TasksArgs,
    registry: Registry,
) -> anyhow::Result<()> {
    let registry = match &args.tasks_file {
        Some(file) => super::worker::with_declared(file, registry)?,
        None => registry,
    };
    let topology = super::topology(global, &[])?;
    let connection = within_timeout(
        &format!("the broker at {}", redact(&global.amqp_url)),
        warren_shared::amqp::connect(&global.amqp_url, "warren-cli"),
    )
    .await?;
    let mut rows = Vec::new();
    for task in registry.tasks() {
        let queue = topology.task_queue(task.id());
        let dlq = topology.dead_letter_queue(task.id());
        let stats = inspect(&connection, &queue).await?;
        let dead = inspect(&connection, &dlq).await?;
        let mut lanes = Vec::new();
        if task.priority_lanes() {
            for lane in Priority::HIGHEST_FIRST {
                let queue = topology.lane_queue(task.id(), lane);
                let ready = inspect(&connection, &queue).await?.map(|s| s.messages);
                lanes.push(LaneRow { lane, queue, ready });
            }
        }
        let ready = match lanes.is_empty() {
            true => stats.map(|s| s.messages),
            false => lanes.iter().map(|l| l.ready).sum(),
        };
        rows.push(TaskRow {
            task: task.id().to_owned(),
            events: task.events(),
            steps: task.steps().len(),
            concurrency: task.concurrency(),
            max_duration_seconds: task.max_duration().map(|d| d.as_secs()),
            rate_limit: task.rate_limit().map(|limit| limit.to_string()),
            concurrency_key: task.concurrency_key().map(|key| key.to_string()),
            queue,
            lanes,
            ready,
            consumers: stats.map(|s| s.consumers),
            dead_letter_queue: dlq,
            dead_letters: dead.map(|s| s.messages),
        });
    }
    warren_shared::amqp::close(&connection, "bye").await;
    if args.json {
        return print_json(&rows);
    }
    let missing = "not declared";
    let mut t = table(&[
        "TASK",
        "EVENTS",
        "STEPS",
        "CONCURRENCY",
        "MAX DURATION",
        "RATE LIMIT",
        "KEY LIMIT",
        "LANES",
        "QUEUE",
        "READY",
        "CONSUMERS",
        "DEAD LETTERS",
    ]);
    for row in &rows {
        t.add_row(vec![
            row.task.clone(),
            row.events.join(", "),
            row.steps.to_string(),
            row.concurrency.map_or("default".into(), |n| n.to_string()),
            row.max_duration_seconds
                .map_or("default".into(), |s| format!("{s}s")),
            row.rate_limit.clone().unwrap_or_else(|| "-".into()),
            row.concurrency_key.clone().unwrap_or_else(|| "-".into()),
            match row.lanes.is_empty() {
                true => "-".into(),
                false => row
                    .lanes
                    .iter()
                    .map(LaneRow::cell)
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            row.queue.clone(),
            row.ready.map_or(missing.into(), |n| n.to_string()),
            row.consumers.map_or(missing.into(), |n| n.to_string()),
            row.dead_letters.map_or(missing.into(), |n| n.to_string()),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn inspect(
    connection: &lapin::Connection,
    queue: &str,
) -> anyhow::Result<Option<QueueStats>> {
    let mut stats = inspect_queues(connection, &[queue.to_owned()]).await?;
    Ok(stats.pop().flatten())
}
