//! Polls the broker for each task queue's depth (each lane's, and their sum) and consumers and
//! its dead-letter queue's depth, and publishes them as gauges. Every replica polls (the values are the broker's, the same
//! from each); dashboards take `max by (task)`. Passive declarations are cheap, and polling
//! keeps Warren independent of the broker's management plugin.

use lapin::Connection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_shared::metrics as names;
use warren_shared::priority::Priority;
use warren_shared::topology::{QueueStats, Topology, inspect_queue};

/// How often the queues are polled.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(5);

/// Polls until `stop` or until the connection fails (the next session polls again). `tasks`
/// are the task ids with whether each has priority lanes.
pub(crate) async fn poll(
    connection: &Connection,
    topology: Topology,
    tasks: Vec<(String, bool)>,
    stop: CancellationToken,
) {
    let mut channel = None;
    loop {
        for (task, lanes) in &tasks {
            let mut ready = 0;
            let mut complete = true;
            for &lane in crate::lanes::of_task(*lanes) {
                let queue = topology.lane_queue(task, lane);
                let Some(stats) = inspect(connection, &mut channel, &queue, &stop).await else {
                    complete = false;
                    continue;
                };
                ready += stats.messages;
                if *lanes {
                    metrics::gauge!(names::LANE_QUEUE_MESSAGES, "task" => task.clone(), "lane" => lane.as_str())
                        .set(f64::from(stats.messages));
                }
                if lane == Priority::Normal {
                    metrics::gauge!(names::QUEUE_CONSUMERS, "task" => task.clone())
                        .set(f64::from(stats.consumers));
                }
            }
            if complete {
                metrics::gauge!(names::QUEUE_MESSAGES, "task" => task.clone())
                    .set(f64::from(ready));
            }
            let dlq = topology.dead_letter_queue(task);
            if let Some(stats) = inspect(connection, &mut channel, &dlq, &stop).await {
                metrics::gauge!(names::DEAD_LETTER_MESSAGES, "task" => task.clone())
                    .set(f64::from(stats.messages));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
    // (The channel, if any, is closed below; the session closes the connection.)
    if let Some(channel) = channel {
        warren_shared::amqp::close_channel(&channel, "done").await;
    }
}

/// One queue's depth and consumers, on the poller's channel (opened first if need be). `None`
/// when the broker did not say; a missing queue closed the channel, so another is opened next
/// time.
async fn inspect(
    connection: &Connection,
    channel: &mut Option<lapin::Channel>,
    queue: &str,
    stop: &CancellationToken,
) -> Option<QueueStats> {
    if channel.is_none() {
        *channel = bounded(stop, connection.create_channel())
            .await
            .and_then(Result::ok);
    }
    let open = channel.as_ref()?;
    match bounded(stop, inspect_queue(open, queue)).await {
        Some(Ok(Some(stats))) => Some(stats),
        _ => {
            *channel = None;
            None
        }
    }
}

/// Awaits `work` unless the session stops or the broker takes longer than a poll interval to
/// answer: a poller must never keep a dead session's connection alive.
async fn bounded<T>(stop: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        result = tokio::time::timeout(POLL_EVERY, work) => result.ok(),
    }
}
