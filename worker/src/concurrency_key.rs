//! Concurrency keys: at most N runs of one key (each tenant, each value of the input, or the
//! task as a whole) running at once across the fleet, and keys taking turns.
//!
//! A run takes a slot of its key when it is claimed; when the key is full it waits in
//! `waiting_for_key`, holding no worker slot and no unacked message, its message held in the
//! outbox. A run leaving `running` hands its slot to the oldest waiter of its key, whose message
//! is then released. The bookkeeping is in Postgres (`warren_shared::store::concurrency`); this
//! module is the task's declaration and each replica's once-a-second safety sweep.
//!
//! ```no_run
//! # use warren_worker::{Task, concurrency_key::ConcurrencyKey};
//! # use serde_json::Value;
//! let task = Task::<Value>::new("report.build").concurrency_key(ConcurrencyKey::per_tenant(5));
//! ```

use crate::keys::KeyFrom;
use deadpool_postgres::Pool;
use metrics::{counter, gauge};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_producer::relay::Relay;
use warren_shared::metrics as names;
use warren_shared::store::{StoreError, concurrency};

/// How often each replica looks for keys with free slots and waiting runs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often each replica reads how many runs wait for their key, for the gauge.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// A limit on how many runs of one key run at once, fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyKey {
    limit: u32,
    key: KeyFrom,
}

impl ConcurrencyKey {
    /// At most `limit` runs of the task (at least one) at once across the fleet.
    pub fn whole_task(limit: u32) -> Self {
        ConcurrencyKey {
            limit: limit.max(1),
            key: KeyFrom::Task,
        }
    }

    /// At most `limit` runs of each tenant (`warren-tenant`) at once across the fleet.
    pub fn per_tenant(limit: u32) -> Self {
        ConcurrencyKey {
            limit: limit.max(1),
            key: KeyFrom::Tenant,
        }
    }

    /// At most `limit` runs for each value of the input at `pointer` (RFC 6901), e.g. `/userId`.
    pub fn per_input(pointer: impl Into<String>, limit: u32) -> Self {
        ConcurrencyKey {
            limit: limit.max(1),
            key: KeyFrom::Input(pointer.into()),
        }
    }

    /// How many runs of one key may run at once.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The key a run of `task` counts against.
    pub(crate) fn key(&self, task: &str, tenant: Option<&str>, input: Option<&RawValue>) -> String {
        self.key.key(task, tenant, input)
    }
}

/// As `warren tasks` shows it: `5 per tenant`, `2 per /userId`, `10`.
impl std::fmt::Display for ConcurrencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.limit, self.key.suffix())
    }
}

/// Each replica's safety sweep, until `stop`: hands free slots to waiting runs the moment a run
/// ending could not (see `store::concurrency`), and keeps the waiting-runs gauge of `tasks`.
pub(crate) async fn sweep(pool: Pool, tasks: Vec<String>, relay: Relay, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counts_every = (COUNT_EVERY.as_secs() / SWEEP_EVERY.as_secs()).max(1);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match release(&pool).await {
            Ok(0) => {}
            Ok(released) => {
                counter!(names::KEY_SWEEP_RELEASED).increment(u64::from(released));
                relay.nudge();
            }
            Err(e) => {
                tracing::debug!(error = %e, "the concurrency-key sweep failed; next second again")
            }
        }
        if round.is_multiple_of(counts_every)
            && let Err(e) = count(&pool, &tasks).await
        {
            tracing::debug!(error = %e, "could not count the runs waiting for their key");
        }
        round += 1;
    }
}

/// One sweep: each key with waiters in a transaction of its own (its row lock the only one).
async fn release(pool: &Pool) -> Result<u32, StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    let keys = concurrency::keys_with_waiters(&client).await?;
    let mut released = 0;
    for key in keys {
        let tx = client.transaction().await?;
        let n = concurrency::release_free_slots(&tx, &key).await?;
        tx.commit().await?;
        released += u32::try_from(n).unwrap_or(0);
    }
    Ok(released)
}

async fn count(pool: &Pool, tasks: &[String]) -> Result<(), StoreError> {
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    let waiting = concurrency::waiting_by_task(&client).await?;
    let mut seen = HashSet::new();
    for (task, n) in waiting {
        if tasks.contains(&task) {
            gauge!(names::RUNS_WAITING_FOR_KEY, "task" => task.clone()).set(n as f64);
            seen.insert(task);
        }
    }
    for task in tasks.iter().filter(|t| !seen.contains(*t)) {
        gauge!(names::RUNS_WAITING_FOR_KEY, "task" => task.clone()).set(0.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_as_written() {
        assert_eq!(ConcurrencyKey::per_tenant(5).to_string(), "5 per tenant");
        assert_eq!(
            ConcurrencyKey::per_input("/userId", 2).to_string(),
            "2 per /userId"
        );
        assert_eq!(ConcurrencyKey::whole_task(10).to_string(), "10");
        assert_eq!(ConcurrencyKey::per_tenant(0).limit(), 1);
    }
}
