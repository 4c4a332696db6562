//! Stopping the steps of cancelled runs.
//!
//! Cancellation itself is a committed state change (`warren_shared::store::cancel`): the
//! cancelled run's next write is refused by its fence whatever happens here. This module makes
//! it prompt: every replica listens on the cancellation channel, and a replica executing a
//! cancelled run cancels the step's token, so the executor stops awaiting the step (an HTTP
//! request is dropped, a command's process group terminated) and settles the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_shared::store::cancel::CANCEL_CHANNEL;

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

    /// A run was cancelled: stop its step if it runs here.
    fn cancel(&self, run: Uuid) {
        if let Some(token) = self.map().get(&run) {
            tracing::info!(%run, "run cancelled: stopping its step");
            token.cancel();
        }
    }

    fn running(&self) -> Vec<Uuid> {
        self.map().keys().copied().collect()
    }
}

/// Listens for cancellations until `stop`, reconnecting after a lost connection. After every
/// (re)connection it checks the runs executing here once, so a cancellation committed while
/// it was not listening still stops its step.
pub(crate) async fn listen(
    database_url: String,
    pool: deadpool_postgres::Pool,
    registry: Arc<Cancellations>,
    stop: CancellationToken,
) {
    loop {
        let listening = tokio::select! {
            () = stop.cancelled() => return,
            listening = warren_shared::db::listen(&database_url, CANCEL_CHANNEL) => listening,
        };
        match listening {
            Ok((_client, mut notifications)) => {
                catch_up(&pool, &registry).await;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        payload = notifications.recv() => match payload {
                            Some(payload) => {
                                if let Ok(run) = Uuid::parse_str(&payload) {
                                    registry.cancel(run);
                                }
                            }
                            None => break,
                        },
                    }
                }
                tracing::debug!("cancellation listener lost its connection; listening again");
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for cancellations yet"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Stops the steps of runs executing here that were cancelled while nobody listened.
async fn catch_up(pool: &deadpool_postgres::Pool, registry: &Cancellations) {
    let running = registry.running();
    if running.is_empty() {
        return;
    }
    let Ok(client) = pool.get().await else { return };
    let cancelled = client
        .query(
            "SELECT id FROM runs WHERE id = ANY($1) AND status = 'cancelled'",
            &[&running],
        )
        .await;
    for row in cancelled.into_iter().flatten() {
        registry.cancel(row.get(0));
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
