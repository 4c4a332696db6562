//! The replica's place in the fleet: registered in Postgres at start, heartbeating while alive,
//! marked stopped on the way out. A run's owner is alive while its heartbeat is fresh.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_shared::store::{self, HEARTBEAT_INTERVAL, StoreError, WorkerInfo};

/// Registers the replica.
pub(crate) async fn register(pool: &Pool, id: &str, tasks: &[String]) -> Result<(), StoreError> {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    store::register_worker(
        &client,
        &WorkerInfo {
            id,
            host: &host,
            pid: i32::try_from(std::process::id()).unwrap_or(-1),
            tasks,
            version: env!("CARGO_PKG_VERSION"),
        },
    )
    .await
}

/// Heartbeats, with the runs in flight (`in_flight`'s tasks), until `stop` is cancelled, then
/// marks the replica stopped. A failed heartbeat
/// is logged and tried again next time: the lease is several intervals long.
pub(crate) async fn heartbeat(
    pool: Pool,
    id: String,
    in_flight: TaskTracker,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let result = match pool.get().await {
            Ok(client) => {
                let runs = i32::try_from(in_flight.len()).unwrap_or(i32::MAX);
                store::heartbeat(&client, &id, runs).await
            }
            Err(e) => Err(StoreError::Connection(e.to_string())),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
    if let Ok(client) = pool.get().await
        && let Err(e) = store::stop_worker(&client, &id).await
    {
        tracing::warn!(error = %e, "could not mark the replica stopped");
    }
}
