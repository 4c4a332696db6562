//! Retention: deleting what a long-lived deployment no longer needs, without getting in the
//! hot path's way. `warren prune` and the worker's scheduled prune both go through [`prune`].
//!
//! What goes, once older than the cutoff:
//! * finished runs (`succeeded`, `halted`, `dead`: [`RunStatus::is_terminal`]) that were
//!   created and finished before it, with their steps, transitions and log lines (deleted by
//!   `run_id`: there are no foreign keys to cascade since V6). Runs still `queued`, `running`,
//!   `retrying` or `waiting` are never touched, however old;
//! * idempotency keys reserved before it;
//! * replica incarnations that stopped, or last heartbeated, before it.
//!
//! Runs go in batches of a few thousand, one short transaction each: the batch locks only the
//! finished runs it deletes (`FOR UPDATE SKIP LOCKED`, so a run an operator is replaying right
//! now is skipped rather than waited for), never a live run. No index is added to the tables the
//! hot path writes: candidates are found through `runs_created_page_idx` (a run finishes after it
//! is created, so `created_at` before the cutoff is a precondition), and steps, transitions and
//! log lines through their primary keys, which lead with `run_id`.

use super::StoreError;
use crate::state::RunStatus;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

/// The shortest retention Warren accepts. A run just finished may still have its message
/// unacknowledged (acks follow the commit) or duplicates on their way; a redelivery that finds
/// no run starts it again. An hour is far beyond any of those.
pub const MIN_RETENTION: Duration = Duration::from_secs(60 * 60);

/// Runs deleted per transaction by default.
pub const DEFAULT_PRUNE_BATCH: i64 = 5_000;

/// The finished runs a batch deletes, oldest first, locked (`$1` the cutoff, `$2` where the
/// previous batch ended, `$3` the finished statuses, `$4` the batch size). The statements are
/// public so that a test can check their plans use the indexes.
/// (A finished child whose parent still waits for its join is kept: the join reads its outcome.)
pub const FINISHED_RUNS_SQL: &str = "SELECT id, created_at FROM runs
     WHERE created_at < $1 AND created_at >= coalesce($2::timestamptz, '-infinity')
       AND coalesce(finished_at, updated_at) < $1 AND status = ANY($3)
       AND NOT EXISTS (SELECT 1 FROM run_children c WHERE c.child_id = runs.id)
     ORDER BY created_at
     LIMIT $4
     FOR UPDATE SKIP LOCKED";

/// Deletes the steps of the runs `$1`.
pub const DELETE_STEPS_SQL: &str = "DELETE FROM run_steps WHERE run_id = ANY($1)";

/// Deletes the transitions of the runs `$1`.
pub const DELETE_TRANSITIONS_SQL: &str = "DELETE FROM run_transitions WHERE run_id = ANY($1)";

/// Deletes the log lines of the runs `$1`.
pub const DELETE_LOGS_SQL: &str = "DELETE FROM run_logs WHERE run_id = ANY($1)";

/// Deletes the runs `$1`.
pub const DELETE_RUNS_SQL: &str = "DELETE FROM runs WHERE id = ANY($1)";

/// Deletes up to `$2` idempotency keys reserved before `$1`, oldest first.
pub const DELETE_KEYS_SQL: &str = "DELETE FROM idempotency_keys WHERE (task, key) IN (
     SELECT task, key FROM idempotency_keys WHERE created_at < $1
     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// The statuses of finished runs, which a prune may delete.
pub fn finished_statuses() -> Vec<&'static str> {
    RunStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str())
        .collect()
}

/// What to prune.
#[derive(Debug, Clone)]
pub struct Prune {
    /// Finished runs and gone replicas older than this go.
    pub older_than: Duration,
    /// Idempotency keys older than this go (at least the idempotency window, or a key would
    /// stop deduplicating within it).
    pub keys_older_than: Duration,
    /// Runs per transaction.
    pub batch: i64,
    /// Rest between two batches, leaving Postgres to the hot path.
    pub pause: Duration,
}

impl Prune {
    /// Everything older than `older_than`, in batches of [`DEFAULT_PRUNE_BATCH`] with no pause.
    pub fn older_than(older_than: Duration) -> Prune {
        Prune {
            older_than,
            keys_older_than: older_than,
            batch: DEFAULT_PRUNE_BATCH,
            pause: Duration::ZERO,
        }
    }
}

/// What a prune deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Finished runs.
    pub runs: u64,
    /// Their step checkpoints.
    pub steps: u64,
    /// Their transitions.
    pub transitions: u64,
    /// Their log lines.
    pub log_lines: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
    /// Replica incarnations.
    pub replicas: u64,
    /// Schedule fire records (the newest ones of each schedule are kept).
    pub schedule_fires: u64,
    /// Whether it stopped before the end, when asked to.
    pub interrupted: bool,
}

impl PruneReport {
    /// Rows deleted in all.
    pub fn rows(&self) -> u64 {
        self.runs
            + self.steps
            + self.transitions
            + self.log_lines
            + self.idempotency_keys
            + self.replicas
            + self.schedule_fires
    }
}

/// One batch of finished runs deleted with their rows.
#[derive(Debug, Clone, Default)]
pub struct RunBatch {
    /// Runs deleted.
    pub runs: u64,
    /// Their steps.
    pub steps: u64,
    /// Their transitions.
    pub transitions: u64,
    /// Their log lines.
    pub log_lines: u64,
    /// The newest `created_at` among them: the next batch starts there.
    pub last_created: Option<DateTime<Utc>>,
}

/// Deletes every finished run, idempotency key and gone replica older than the policy's
/// cutoffs, batch after batch, until there are none or `keep_going` says stop (checked between
/// batches, so that a caller stops without leaving a transaction half-way).
pub async fn prune(
    client: &mut impl GenericClient,
    policy: &Prune,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Result<PruneReport, StoreError> {
    // Postgres's clock, as every other age in the store.
    let row = client
        .query_one(
            "SELECT now() - make_interval(secs => $1), now() - make_interval(secs => $2)",
            &[
                &policy.older_than.as_secs_f64(),
                &policy.keys_older_than.as_secs_f64(),
            ],
        )
        .await?;
    let (runs_before, keys_before): (DateTime<Utc>, DateTime<Utc>) = (row.get(0), row.get(1));
    let mut report = PruneReport::default();
    let mut from = None;
    loop {
        if !keep_going() {
            report.interrupted = true;
            return Ok(report);
        }
        let batch = prune_runs_batch(client, runs_before, from, policy.batch).await?;
        report.runs += batch.runs;
        report.steps += batch.steps;
        report.transitions += batch.transitions;
        report.log_lines += batch.log_lines;
        if batch.runs < u64::try_from(policy.batch).unwrap_or(0) {
            break;
        }
        from = batch.last_created;
        tokio::time::sleep(policy.pause).await;
    }
    loop {
        if !keep_going() {
            report.interrupted = true;
            return Ok(report);
        }
        let keys = prune_idempotency_keys(client, keys_before, policy.batch).await?;
        report.idempotency_keys += keys;
        if keys < u64::try_from(policy.batch).unwrap_or(0) {
            break;
        }
        tokio::time::sleep(policy.pause).await;
    }
    report.replicas = prune_replicas(client, runs_before).await?;
    loop {
        if !keep_going() {
            report.interrupted = true;
            return Ok(report);
        }
        let fires = prune_schedule_fires(client, runs_before, policy.batch).await?;
        report.schedule_fires += fires;
        if fires < u64::try_from(policy.batch).unwrap_or(0) {
            break;
        }
        tokio::time::sleep(policy.pause).await;
    }
    Ok(report)
}

/// Deletes up to `limit` finished runs created and finished before `before` (and created at or
/// after `from`, where the previous batch ended), oldest first, with their steps, transitions
/// and log lines, in one transaction. Runs another transaction holds locked are skipped.
pub async fn prune_runs_batch(
    client: &mut impl GenericClient,
    before: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<RunBatch, StoreError> {
    let tx = client.transaction().await?;
    let batch = delete_runs(&tx, before, from, limit).await?;
    tx.commit().await?;
    Ok(batch)
}

/// The body of [`prune_runs_batch`], in the caller's transaction (the rows stay locked until it
/// ends).
pub async fn delete_runs(
    tx: &impl GenericClient,
    before: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<RunBatch, StoreError> {
    let doomed = tx
        .query(
            FINISHED_RUNS_SQL,
            &[&before, &from, &finished_statuses(), &limit],
        )
        .await?;
    let ids: Vec<Uuid> = doomed.iter().map(|row| row.get(0)).collect();
    let last_created = doomed.iter().map(|row| row.get(1)).max();
    if ids.is_empty() {
        return Ok(RunBatch::default());
    }
    let steps = tx.execute(DELETE_STEPS_SQL, &[&ids]).await?;
    let transitions = tx.execute(DELETE_TRANSITIONS_SQL, &[&ids]).await?;
    let log_lines = tx.execute(DELETE_LOGS_SQL, &[&ids]).await?;
    let runs = tx.execute(DELETE_RUNS_SQL, &[&ids]).await?;
    Ok(RunBatch {
        runs,
        steps,
        transitions,
        log_lines,
        last_created,
    })
}

/// Deletes up to `limit` idempotency keys reserved before `before`, oldest first. A key older
/// than the idempotency window deduplicates nothing any more (the next publish with it takes it
/// over), so only the window decides what deleting one changes.
pub async fn prune_idempotency_keys(
    client: &impl GenericClient,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(client.execute(DELETE_KEYS_SQL, &[&before, &limit]).await?)
}

/// Deletes the replica incarnations that stopped, or last heartbeated, before `before`. A run
/// that names one as its owner is then owned by nobody alive, as it already was.
pub async fn prune_replicas(
    client: &impl GenericClient,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM workers WHERE coalesce(stopped_at, last_heartbeat) < $1",
            &[&before],
        )
        .await?)
}

/// The fire records `warren schedules show` lists, kept whatever their age.
pub const KEPT_SCHEDULE_FIRES: i64 = 10;

/// Deletes up to `limit` schedule fire records made before `before`, except the newest
/// [`KEPT_SCHEDULE_FIRES`] of each schedule. A slot's record only guards against firing it
/// twice while it can still be due, which an old slot cannot be.
pub async fn prune_schedule_fires(
    client: &impl GenericClient,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM schedule_fires WHERE ctid IN (
                 SELECT f.ctid FROM schedule_fires f
                 WHERE f.fired_at < $1
                   AND f.slot < (SELECT g.slot FROM schedule_fires g WHERE g.schedule = f.schedule
                                 ORDER BY g.slot DESC OFFSET $3 LIMIT 1)
                 LIMIT $2)",
            &[&before, &limit, &(KEPT_SCHEDULE_FIRES - 1)],
        )
        .await?)
}
