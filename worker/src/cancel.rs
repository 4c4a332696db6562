//! Stopping the steps of cancelled runs.
//!
//! Cancellation itself is a committed state change (`warren_shared::store::cancel`): the
//! cancelled run's next write is refused by its fence whatever happens here. This module makes
//! it prompt: while a replica executes runs, it looks every [`WATCH_EVERY`] which of them are no
//! longer its own running runs (one indexed query for all of them): cancelled, or cancelled and
//! already retried, or taken over by another replica. It cancels their steps' tokens, so the
//! executor stops awaiting the step (an HTTP request is dropped, a command's process group
//! terminated) and settles the message. Asking "still mine?" rather than "cancelled?" matters:
//! a run cancelled and retried at once is `queued` again by the time the replica looks, and its
//! old step must stop all the same.
//!
//! Polling rather than `LISTEN`: it needs no connection outside the pool (the connection budget
//! stays the pool size) and works through a pooler in transaction mode, where `LISTEN` does not;
//! an idle replica makes no query at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The runs this replica is executing, each with the token that stops its current step.
#[derive(Debug, Default)]
pub(crate) struct Cancellations {
    running: Mutex<HashMap<Uuid, (u64, CancellationToken)>>,
    /// Numbers the registrations, so that a look that began during one delivery of a run
    /// cannot cancel the next one (a run parked and woken again within the look).
    registrations: std::sync::atomic::AtomicU64,
}

/// A run registered as executing here; unregistered when dropped.
pub(crate) struct Registered {
    registry: Arc<Cancellations>,
    run: Uuid,
    number: u64,
    token: CancellationToken,
}

impl Registered {
    /// Cancelled when the run is.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut map = self.registry.map();
        if map.get(&self.run).is_some_and(|(n, _)| *n == self.number) {
            map.remove(&self.run);
        }
    }
}

impl Cancellations {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (u64, CancellationToken)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a run this replica starts executing (one delivery of a run at a time holds
    /// the run's lock here, so there is one registration per run).
    pub(crate) fn register(self: &Arc<Self>, run: Uuid) -> Registered {
        let token = CancellationToken::new();
        let number = self
            .registrations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map().insert(run, (number, token.clone()));
        Registered {
            registry: Arc::clone(self),
            run,
            number,
            token,
        }
    }

    /// A run was cancelled (or is no longer this replica's): stop its step if the same
    /// registration (`number`, from [`Cancellations::running`]) still runs it here.
    fn cancel(&self, run: Uuid, number: u64) {
        if let Some((registered, token)) = self.map().get(&run)
            && *registered == number
            && !token.is_cancelled()
        {
            tracing::info!(%run, "run cancelled or taken over: stopping its step");
            token.cancel();
        }
    }

    /// The runs executing here, each with its registration's number.
    fn running(&self) -> Vec<(Uuid, u64)> {
        self.map().iter().map(|(run, (n, _))| (*run, *n)).collect()
    }
}

/// How often a replica with runs in flight looks for cancelled ones: the longest a cancelled
/// run's step goes on.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Stops the steps of runs executing here that are no longer this replica's (`owner`'s)
/// running runs, until `stop`.
pub(crate) async fn watch(
    pool: deadpool_postgres::Pool,
    owner: Arc<str>,
    registry: Arc<Cancellations>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let running: HashMap<Uuid, u64> = registry.running().into_iter().collect();
        if running.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = running.keys().copied().collect();
        let Ok(client) = pool.get().await else {
            continue;
        };
        let cancelled = client
            .query(
                "SELECT id FROM runs WHERE id = ANY($1)
                 AND (status <> 'running' OR worker IS DISTINCT FROM $2)",
                &[&ids, &&*owner],
            )
            .await;
        for row in cancelled.into_iter().flatten() {
            let run: Uuid = row.get(0);
            if let Some(number) = running.get(&run) {
                registry.cancel(run, *number);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancellation_reaches_the_registered_run_only_while_it_is_registered() {
        let registry = Arc::new(Cancellations::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let run_a = registry.register(a);
        let run_b = registry.register(b);
        let seen: HashMap<Uuid, u64> = registry.running().into_iter().collect();
        registry.cancel(a, seen[&a]);
        assert!(run_a.token().is_cancelled());
        assert!(!run_b.token().is_cancelled());
        drop(run_b);
        registry.cancel(b, seen[&b]);
        assert_eq!(registry.running(), vec![(a, seen[&a])]);
    }

    #[test]
    fn a_look_taken_during_one_delivery_does_not_cancel_the_next() {
        let registry = Arc::new(Cancellations::default());
        let run = Uuid::now_v7();
        let first = registry.register(run);
        let seen: HashMap<Uuid, u64> = registry.running().into_iter().collect();
        drop(first);
        let next = registry.register(run);
        registry.cancel(run, seen[&run]);
        assert!(!next.token().is_cancelled());
    }
}
