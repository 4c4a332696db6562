//! The outbox relay: publishes the outbox's due rows with confirms and deletes them, in batches.
//!
//! A batch is taken `FOR UPDATE SKIP LOCKED` in one transaction that lives until its messages
//! are confirmed and its rows deleted, so relays in several replicas never send the same row at
//! once, and a relay that dies mid-batch leaves its rows to the next (which sends them again:
//! message ids are deterministic, so the receiving task makes one run of each).
//!
//! A replica's relay wakes when its own commits wrote rows ([`Relay::nudge`]: no added latency
//! on the path from a child's end to its parent's wake-up) and sweeps every [`SWEEP_EVERY`] for
//! the rest: rows other processes wrote (the CLI's retries and cancellations), wake-ups whose
//! wait timed out, and rows a failed publish postponed.

use crate::{PublishError, Publisher};
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use warren_shared::metrics as names;
use warren_shared::store::{StoreError, outbox};

/// The most rows one relay transaction sends.
pub const BATCH: i64 = 500;

/// How often a relay looks for due rows without being nudged.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often the lag gauges are refreshed (one query over the outbox's due rows).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// After a publish that was returned unroutable (no queue bound: the task that listens is not
/// deployed yet), the row waits this long, doubling with each failure up to [`MAX_POSTPONE`].
const UNROUTABLE_POSTPONE: Duration = Duration::from_secs(5);
const MAX_POSTPONE: Duration = Duration::from_secs(300);

/// Why a relay pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Postgres failed (pool or transaction).
    #[error("Postgres: {0}")]
    Db(String),
    /// The broker failed; the rows not confirmed stay in the outbox.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The broker did not confirm a batch in time; the rows not confirmed stay in the outbox.
    #[error("the broker did not confirm the batch within {} s", .0.as_secs())]
    ConfirmTimeout(Duration),
}

impl From<deadpool_postgres::tokio_postgres::Error> for RelayError {
    fn from(e: deadpool_postgres::tokio_postgres::Error) -> Self {
        RelayError::Store(StoreError::Db(e))
    }
}

/// A handle to wake a replica's relay after a commit that wrote outbox rows.
#[derive(Debug, Clone, Default)]
pub struct Relay {
    nudge: Arc<Notify>,
}

impl Relay {
    /// A relay handle; [`Relay::run`] starts the loop that serves it.
    pub fn new() -> Self {
        Relay::default()
    }

    /// Tells the relay that due rows were committed.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Sends due rows until `stop`: whenever nudged, and every [`SWEEP_EVERY`]; once more when
    /// stopped, for what the last commits wrote.
    pub async fn run(&self, pool: Pool, publisher: Publisher, stop: CancellationToken) {
        let mut since_lag = LAG_EVERY;
        loop {
            send_all_due(&pool, &publisher).await;
            if since_lag >= LAG_EVERY {
                since_lag = Duration::ZERO;
                if let Ok(client) = pool.get().await
                    && let Ok(lag) = outbox::lag(&client).await
                {
                    metrics::gauge!(names::OUTBOX_DUE).set(lag.due as f64);
                    metrics::gauge!(names::OUTBOX_LAG).set(lag.oldest_seconds);
                }
            }
            let started = tokio::time::Instant::now();
            tokio::select! {
                () = stop.cancelled() => {
                    send_all_due(&pool, &publisher).await;
                    return;
                }
                () = self.nudge.notified() => {}
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            since_lag += started.elapsed();
        }
    }
}

/// Relay passes until the due rows are sent or a pass fails.
async fn send_all_due(pool: &Pool, publisher: &Publisher) {
    loop {
        match relay_due(pool, publisher).await {
            Ok(sent) if sent < BATCH as usize => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: will try again");
                return;
            }
        }
    }
}

/// How long a relay pass waits for the broker's confirms before it gives up the batch (its
/// rows stay, and are sent again): its transaction holds the rows' locks meanwhile.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// One relay pass: takes up to [`BATCH`] due rows, publishes them pipelined, and deletes the
/// confirmed ones in the same transaction. Returns how many rows it took. A row the broker
/// returned unroutable or refused stays, postponed, with the reason (visible in `warren runs
/// show` and the lag gauges); a broker failure, or confirms that do not come within
/// [`CONFIRM_TIMEOUT`], leave the unconfirmed rows for the next pass.
pub async fn relay_due(pool: &Pool, publisher: &Publisher) -> Result<usize, RelayError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| RelayError::Db(e.to_string()))?;
    let tx = client.transaction().await?;
    let due = outbox::take_due(&tx, BATCH).await?;
    for (id, error) in &due.unreadable {
        tracing::error!(outbox_row = id, %error, "outbox message cannot be read; set aside");
        metrics::counter!(names::OUTBOX_FAILURES, "reason" => "unreadable").increment(1);
        outbox::postpone(&tx, *id, error, MAX_POSTPONE).await?;
    }
    let rows = due.pending;
    let taken = rows.len() + due.unreadable.len();
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(taken);
    }
    let (sent, broken) = publish(&tx, &rows, publisher).await?;
    outbox::delete_sent(&tx, &sent).await?;
    tx.commit().await?;
    metrics::counter!(names::OUTBOX_SENT).increment(sent.len() as u64);
    match broken {
        Some(e) => {
            metrics::counter!(names::OUTBOX_FAILURES, "reason" => "broker").increment(1);
            Err(e)
        }
        None => Ok(taken),
    }
}

/// Publishes the rows pipelined and waits for their confirms; postpones the rows the broker
/// returned or refused. Returns the ids of the confirmed rows, and the broker failure that
/// stopped the pass, if one did.
async fn publish(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[outbox::Pending],
    publisher: &Publisher,
) -> Result<(Vec<i64>, Option<RelayError>), RelayError> {
    let mut confirms = Vec::with_capacity(rows.len());
    let mut broken = None;
    for row in rows {
        match publisher
            .start(
                &row.exchange,
                &row.routing_key,
                &row.body,
                row.properties.clone(),
            )
            .await
        {
            Ok(confirm) => confirms.push((row, confirm)),
            Err(e) => {
                broken = Some(e.into());
                break;
            }
        }
    }
    let mut sent = Vec::with_capacity(confirms.len());
    // The rows stay locked until the pass ends: bounded, and what was confirmed by then is
    // kept (deleted), the rest sent again by a later pass.
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    for (row, confirm) in confirms {
        let Ok(confirmed) = tokio::time::timeout_at(deadline, confirm.wait()).await else {
            broken.get_or_insert(RelayError::ConfirmTimeout(CONFIRM_TIMEOUT));
            break;
        };
        match confirmed {
            Ok(()) => sent.push(row.id),
            Err(e @ PublishError::Unroutable { .. }) => {
                metrics::counter!(names::OUTBOX_FAILURES, "reason" => "unroutable").increment(1);
                let delay = postpone_delay(row.attempts);
                tracing::warn!(error = %e, retry_in = ?delay, "outbox message unroutable; kept");
                outbox::postpone(tx, row.id, &e.to_string(), delay).await?;
            }
            Err(e @ PublishError::Nacked { .. }) => {
                metrics::counter!(names::OUTBOX_FAILURES, "reason" => "nacked").increment(1);
                outbox::postpone(tx, row.id, &e.to_string(), Duration::from_secs(1)).await?;
            }
            Err(e) => {
                broken.get_or_insert(e.into());
            }
        }
    }
    Ok((sent, broken))
}

/// The wait after the `attempts`-th failed publish of a row: 5 s, doubling, at most 5 min.
fn postpone_delay(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.clamp(0, 16)).unwrap_or(0);
    UNROUTABLE_POSTPONE
        .saturating_mul(1 << doublings)
        .min(MAX_POSTPONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_that_keeps_failing_waits_longer_each_time_up_to_five_minutes() {
        assert_eq!(postpone_delay(0), Duration::from_secs(5));
        assert_eq!(postpone_delay(1), Duration::from_secs(10));
        assert_eq!(postpone_delay(3), Duration::from_secs(40));
        assert_eq!(postpone_delay(10), MAX_POSTPONE);
        assert_eq!(postpone_delay(-1), Duration::from_secs(5));
    }
}
