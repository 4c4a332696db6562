//! The replica's place in the fleet: registered in Postgres at start, heartbeating while alive,
//! marked stopped on the way out. A run's owner is alive while its heartbeat is fresh.
//!
//! Each start is a new incarnation with an owner name of its own (`{id}#{n}`, see
//! `warren_shared::store::register_worker`): a process restarted under the same id does not
//! inherit its predecessor's runs as if it were still executing them, it frees them.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_shared::store::{self, HEARTBEAT_INTERVAL, StoreError, WorkerInfo};

/// Registers a new incarnation of the replica; returns the owner name it writes under.
pub(crate) async fn register(
    pool: &Pool,
    id: &str,
    tasks: &[String],
) -> Result<String, StoreError> {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    store::register_worker(
        &mut client,
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

/// Heartbeats as `owner`, with the runs in flight (`in_flight`'s tasks), until `stop` is
/// cancelled, then marks the incarnation stopped. A failed heartbeat is logged and tried again
/// next time: the lease is several intervals long.
pub(crate) async fn heartbeat(
    pool: Pool,
    owner: String,
    in_flight: TaskTracker,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut superseded = false;
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let result = match pool.get().await {
            Ok(client) => {
                let runs = i32::try_from(in_flight.len()).unwrap_or(i32::MAX);
                store::heartbeat(&client, &owner, runs).await
            }
            Err(e) => Err(StoreError::Connection(e.to_string())),
        };
        match result {
            Ok(alive) if !alive && !superseded => {
                // Nothing this process can do makes it the owner again: its runs are taken
                // over by whoever gets their messages, and its writes to them are refused.
                superseded = true;
                tracing::error!(
                    %owner,
                    "this replica is no longer registered as alive: another process started \
                     with the same worker id, or the fleet gave it up for lost; the runs it \
                     holds are taken over elsewhere"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
    if let Ok(client) = pool.get().await
        && let Err(e) = store::stop_worker(&client, &owner).await
    {
        tracing::warn!(error = %e, "could not mark the replica stopped");
    }
}
