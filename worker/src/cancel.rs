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
    running: Mutex<HashMap<Uuid, CancellationToken>>,
}

/// A run registered as executing here; unregistered when dropped.
pub(crate) struct Registered {
    registry: Arc<Cancellations>,
    run: Uuid,
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
        self.registry.map().remove(&self.run);
    }
}

impl Cancellations {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a run this replica starts executing (one delivery of a run at a time holds
    /// the run's lock here, so there is one registration per run).
    pub(crate) fn register(self: &Arc<Self>, run: Uuid) -> Registered {
        let token = CancellationToken::new();
        self.map().insert(run, token.clone());
        Registered {
            registry: Arc::clone(self),
            run,
            token,
        }
    }

    /// A run was cancelled (or is no longer this replica's): stop its step if it runs here.
    fn cancel(&self, run: Uuid) {
        if let Some(token) = self.map().get(&run)
            && !token.is_cancelled()
        {
            tracing::info!(%run, "run cancelled or taken over: stopping its step");
            token.cancel();
        }
    }

    fn running(&self) -> Vec<Uuid> {
        self.map().keys().copied().collect()
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
        let running = registry.running();
        if running.is_empty() {
            continue;
        }
        let Ok(client) = pool.get().await else {
            continue;
        };
        let cancelled = client
            .query(
                "SELECT id FROM runs WHERE id = ANY($1)
                 AND (status <> 'running' OR worker IS DISTINCT FROM $2)",
                &[&running, &&*owner],
            )
            .await;
        for row in cancelled.into_iter().flatten() {
            registry.cancel(row.get(0));
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
        registry.cancel(a);
        assert!(run_a.token().is_cancelled());
        assert!(!run_b.token().is_cancelled());
        drop(run_b);
        registry.cancel(b);
        assert!(registry.running() == vec![a]);
    }
}
