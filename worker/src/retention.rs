//! The scheduled prune: every few minutes each replica offers to delete what the retention
//! policy no longer keeps (`warren_shared::store::retention::prune`), and the one that gets the fleet's
//! advisory lock does it while the others skip their turn. Batches are short and spaced out,
//! so a replica pruning a large backlog goes on serving its runs meanwhile.

use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use warren_shared::store::StoreError;
use warren_shared::store::retention::{
    self, DEFAULT_PRUNE_BATCH, MIN_RETENTION, Prune, PruneReport,
};

/// Finished runs are kept this long unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How often a replica offers to prune unless configured otherwise.
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// The session advisory lock that makes one replica at a time prune ("warrep" in ASCII).
pub const PRUNE_LOCK_KEY: i64 = 0x7761_7272_6570;

/// Rest between two batches: a backlog of a million runs takes a few minutes, and the hot
/// path gets Postgres between every two.
const PAUSE: Duration = Duration::from_millis(100);

/// What a replica prunes.
#[derive(Debug, Clone)]
pub(crate) struct Policy(Prune);

impl Policy {
    /// Runs older than `keep` (at least [`MIN_RETENTION`]); idempotency keys once older than
    /// both `keep` and the idempotency window, so that pruning never shortens the window.
    pub(crate) fn new(keep: Duration, idempotency_window: Duration) -> Policy {
        let keep = if keep < MIN_RETENTION {
            tracing::warn!(
                asked = ?keep,
                kept = ?MIN_RETENTION,
                "retention shorter than the minimum; keeping runs for the minimum"
            );
            MIN_RETENTION
        } else {
            keep
        };
        Policy(Prune {
            older_than: keep,
            keys_older_than: keep.max(idempotency_window),
            batch: DEFAULT_PRUNE_BATCH,
            pause: PAUSE,
        })
    }
}

/// Offers to prune every `every` until `stop` is cancelled (the replica's drain), which also
/// ends a prune in progress between two batches.
pub(crate) async fn run(pool: Pool, policy: Policy, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match prune_once(&pool, &policy, &stop).await {
            Ok(Some(report)) if report.rows() > 0 => tracing::info!(
                runs = report.runs,
                steps = report.steps,
                transitions = report.transitions,
                log_lines = report.log_lines,
                idempotency_keys = report.idempotency_keys,
                replicas = report.replicas,
                schedule_fires = report.schedule_fires,
                "pruned what the retention policy no longer keeps"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "scheduled prune failed; trying again later"),
        }
    }
}

/// One prune, if no other replica is pruning (`None` then).
async fn prune_once(
    pool: &Pool,
    policy: &Policy,
    stop: &CancellationToken,
) -> Result<Option<PruneReport>, StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connection(e.to_string()))?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let pruned = retention::prune(&mut client, &policy.0, &|| !stop.is_cancelled()).await;
    let unlocked = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK_KEY])
        .await
        .map(|row| row.get::<_, bool>(0));
    if !matches!(unlocked, Ok(true)) {
        // A session that may still hold the lock must not go back to the pool, where it would
        // keep every replica from pruning: closing it releases the lock.
        drop(deadpool_postgres::Object::take(client));
    }
    pruned.map(Some)
}
