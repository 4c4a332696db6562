//! `warren worker`: one replica, until a signal.

use super::{redact, within_timeout};
use crate::args::{Global, WorkerArgs};
use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use warren_shared::topology::Topology;
use warren_worker::{Registry, RetryPolicy, Worker, WorkerConfig};

pub(crate) async fn run(
    global: &Global,
    args: WorkerArgs,
    registry: Registry,
) -> anyhow::Result<()> {
    let registry = if args.tasks.is_empty() {
        registry
    } else {
        registry
            .only(&args.tasks)
            .map_err(|unknown| anyhow::anyhow!("unknown task(s): {}", unknown.join(", ")))?
    };
    let mut config = WorkerConfig::new(
        global.amqp_url.clone(),
        global.database_url.clone(),
        Topology::new(global.namespace.clone(), args.queue_type)
            .with_delivery_limit(args.delivery_limit),
    );
    config.retry = RetryPolicy {
        max_attempts: args.max_attempts,
        min_delay: args.retry_min_delay,
        max_delay: args.retry_max_delay,
        factor: args.retry_factor,
        jitter: args.retry_jitter,
    };
    if let Some(id) = args.worker_id {
        config.worker_id = id;
    }
    config.concurrency = args.concurrency.map(|c| c as usize);
    config.prefetch = args.prefetch;
    config.grace_period = args.grace_period;
    config.idempotency_window = args.idempotency_window;
    config.max_message_bytes = args.max_message_bytes;
    config.http_addr = args.http_addr.0;
    config.retention = args.retention.0;

    let what = format!(
        "the broker at {} or Postgres at {}",
        redact(&global.amqp_url),
        redact(&global.database_url)
    );
    // Listen before starting: a replica told to stop while it starts up exits cleanly too.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let worker = tokio::select! {
        worker = within_timeout(&what, Worker::new(config, registry).start()) => worker?,
        _ = terminate.recv() => return stopped_while_starting(),
        _ = interrupt.recv() => return stopped_while_starting(),
    };
    let token = worker.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("signal received: draining (send another to stop at once)");
        token.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        // Unsettled messages return to their queues when the connection drops, and resume from
        // their checkpoints elsewhere.
        tracing::warn!("second signal: stopping at once");
        std::process::exit(130);
    });
    worker.wait().await.context("worker stopped")
}

/// Nothing was taken from the broker yet: there is nothing to drain.
fn stopped_while_starting() -> anyhow::Result<()> {
    tracing::info!("signal received while starting: stopping");
    Ok(())
}
