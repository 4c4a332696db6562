//! Operators' actions on runs, as a Rust API (`warren runs cancel | retry` are these): they
//! need Postgres only. What they send (a retried run's message) goes through the outbox, which
//! every replica's relay sends within a second; [`warren_producer::relay::relay_due`] sends it
//! at once for a caller with a broker connection.

use deadpool_postgres::Pool;
use uuid::Uuid;
use warren_shared::contract::{Outgoing, header};
use warren_shared::store::cancel::{self, Cancelled, Retried, RetrySource};
use warren_shared::store::{StoreError, outbox};
use warren_shared::topology::Topology;

/// Why an operator's action failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No connection could be had.
    #[error("cannot get a Postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The transaction failed.
    #[error("Postgres: {0}")]
    Db(#[from] deadpool_postgres::tokio_postgres::Error),
}

/// Cancels `run` and its unfinished descendants on behalf of `by` (see
/// `warren_shared::store::cancel`): queued and waiting runs never start their next step,
/// running steps are stopped by the replicas executing them, and nothing is dead-lettered.
pub async fn cancel(pool: &Pool, run: Uuid, by: &str) -> Result<Cancelled, ControlError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let cancelled = cancel_in(&tx, run, by).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// [`cancel`] inside the caller's transaction, for a caller that records more with it (the
/// console's audit log).
pub async fn cancel_in(
    tx: &deadpool_postgres::Transaction<'_>,
    run: Uuid,
    by: &str,
) -> Result<Cancelled, ControlError> {
    Ok(cancel::cancel_run(tx, run, by).await?)
}

/// Starts a dead or cancelled run again from its first step, with no checkpoint, on behalf of
/// `by`: its message (rebuilt from the run as Postgres has it) is written to the outbox in the
/// same transaction as the run's move to `queued`.
pub async fn retry(
    pool: &Pool,
    topology: &Topology,
    run: Uuid,
    by: &str,
) -> Result<Retried, ControlError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let retried = retry_in(&tx, topology, run, by).await?;
    tx.commit().await?;
    Ok(retried)
}

/// [`retry`] inside the caller's transaction, for a caller that records more with it.
pub async fn retry_in(
    tx: &deadpool_postgres::Transaction<'_>,
    topology: &Topology,
    run: Uuid,
    by: &str,
) -> Result<Retried, ControlError> {
    Ok(cancel::retry_run(tx, run, by, |source| message(topology, run, source)).await?)
}

/// The message of a retried run: its identity, event, tenant and parent, a new attempt, and
/// its input as the body, to its task's queue.
fn message(topology: &Topology, run: Uuid, source: &RetrySource) -> outbox::Message {
    let mut outgoing = Outgoing::new();
    outgoing.message_id = source.message_id.clone();
    outgoing.tenant = source.tenant.clone();
    outgoing.attempt = u32::try_from(source.attempt).unwrap_or(1);
    let mut outgoing = outgoing.with_header(header::EVENT, source.event.clone());
    if let Some(parent) = source.parent {
        outgoing = outgoing.with_header(header::PARENT_RUN, parent.to_string());
    }
    // The run's identity was accepted once, so its short strings fit.
    let properties = outgoing.properties().unwrap_or_default();
    let (exchange, routing_key) = topology.task_route(&source.task);
    outbox::Message {
        run_id: run,
        kind: outbox::Kind::Retry,
        exchange,
        routing_key,
        body: source.input.clone().into_bytes(),
        properties,
    }
}
