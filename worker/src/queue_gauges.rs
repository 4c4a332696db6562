//! Polls the broker for each task queue's depth and consumers and its dead-letter queue's depth,
//! and publishes them as gauges. Every replica polls (the values are the broker's, the same
//! from each); dashboards take `max by (task)`. Passive declarations are cheap, and polling
//! keeps Warren independent of the broker's management plugin.

use lapin::Connection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_shared::metrics as names;
use warren_shared::topology::{Topology, inspect_queue};

/// How often the queues are polled.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(5);

/// Polls until `stop` or until the connection fails (the next session polls again).
pub(crate) async fn poll(
    connection: &Connection,
    topology: Topology,
    tasks: Vec<String>,
    stop: CancellationToken,
) {
    let mut channel = None;
    loop {
        for task in &tasks {
            for (queue, depth, consumers) in [
                (
                    topology.task_queue(task),
                    names::QUEUE_MESSAGES,
                    Some(names::QUEUE_CONSUMERS),
                ),
                (
                    topology.dead_letter_queue(task),
                    names::DEAD_LETTER_MESSAGES,
                    None,
                ),
            ] {
                if channel.is_none() {
                    channel = bounded(&stop, connection.create_channel())
                        .await
                        .and_then(Result::ok);
                }
                let Some(open) = &channel else { break };
                match bounded(&stop, inspect_queue(open, &queue)).await {
                    Some(Ok(Some(stats))) => {
                        metrics::gauge!(depth, "task" => task.clone())
                            .set(f64::from(stats.messages));
                        if let Some(consumers) = consumers {
                            metrics::gauge!(consumers, "task" => task.clone())
                                .set(f64::from(stats.consumers));
                        }
                    }
                    // A missing queue closed the channel; open another next time.
                    _ => channel = None,
                }
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

/// Awaits `work` unless the session stops or the broker takes longer than a poll interval to
/// answer: a poller must never keep a dead session's connection alive.
async fn bounded<T>(stop: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        result = tokio::time::timeout(POLL_EVERY, work) => result.ok(),
    }
}
