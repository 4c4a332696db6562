//! The fleet in Postgres: one row per process incarnation of a replica.
//!
//! A replica's id (`--worker-id`) names it for people and orchestrators, and may outlive its
//! process: Kubernetes gives a container restarted after an OOM kill its pod's name again.
//! Ownership must not outlive the process. A run owned by a killed process has to be free the
//! moment that process is known to be gone, and two live processes started with one id must be
//! two owners, never one. So every start registers a new incarnation (a number from a sequence,
//! never reused) and the process writes under its owner name, `{id}#{incarnation}`: in
//! `runs.worker`, which the claim and every fenced write compare (the same single text
//! predicate as before, at no cost to the hot path), and in the steps and transitions it
//! records, which therefore say which process did what. Registering marks every earlier
//! incarnation of the id stopped, so that their runs are taken over by the next delivery.

use super::{OWNER_LEASE, StoreError};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::time::Duration;

/// Separates a replica id from its incarnation number in an owner name.
pub const INCARNATION_SEPARATOR: char = '#';

/// How long a replica that stopped heartbeating without stopping cleanly (killed, or cut off)
/// stays in the default listing of the fleet, marked `stale`. Stopped replicas, and those silent
/// for longer, are listed with `--all` until they are pruned.
pub const STALE_LISTED_FOR: Duration = Duration::from_secs(60 * 60);

/// Serialises the registrations of one replica id (with the id's hash as the second key), so
/// that two processes starting with one id at once each see the other's row: the later one
/// marks the earlier stopped.
const REGISTER_LOCK_CLASS: i32 = 0x7761_7272; // "warr"

/// A replica's registration.
#[derive(Debug, Clone)]
pub struct WorkerInfo<'a> {
    /// Replica id.
    pub id: &'a str,
    /// Host name.
    pub host: &'a str,
    /// Process id.
    pub pid: i32,
    /// Task ids it consumes.
    pub tasks: &'a [String],
    /// Warren version.
    pub version: &'a str,
}

/// Registers a new incarnation of the replica, marks the earlier ones of its id stopped (their
/// runs may be taken over at once), and returns the owner name the process must write under.
pub async fn register_worker(
    client: &mut impl GenericClient,
    worker: &WorkerInfo<'_>,
) -> Result<String, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&REGISTER_LOCK_CLASS, &worker.id],
    )
    .await?;
    // Rows of releases before incarnations have no `replica`: their id is the replica id.
    tx.execute(
        "UPDATE workers SET stopped_at = now()
         WHERE coalesce(replica, id) = $1 AND stopped_at IS NULL",
        &[&worker.id],
    )
    .await?;
    let row = tx
        .query_one(
            "INSERT INTO workers (id, replica, incarnation, host, pid, tasks, version)
             SELECT $1 || $6 || n, $1, n, $2, $3, $4, $5 FROM nextval('worker_incarnations') AS n
             RETURNING id",
            &[
                &worker.id,
                &worker.host,
                &worker.pid,
                &worker.tasks,
                &worker.version,
                &INCARNATION_SEPARATOR.to_string(),
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(row.get(0))
}

/// Records that a replica incarnation (by its owner name) is still alive. Returns `false` when
/// it is no longer registered as alive: a later start of its id superseded it, or the fleet
/// marked it stopped or pruned it. A heartbeat never revives it; its runs are the fleet's.
pub async fn heartbeat(
    client: &impl GenericClient,
    owner: &str,
    in_flight: i32,
) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached(
            "UPDATE workers SET last_heartbeat = now(), in_flight = $2
             WHERE id = $1 AND stopped_at IS NULL",
        )
        .await?;
    Ok(client.execute(&stmt, &[&owner, &in_flight]).await? == 1)
}

/// Records that a replica incarnation (by its owner name) stopped: its unfinished runs may be
/// taken over at once.
pub async fn stop_worker(client: &impl GenericClient, owner: &str) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE workers SET stopped_at = now() WHERE id = $1 AND stopped_at IS NULL",
            &[&owner],
        )
        .await?;
    Ok(())
}

/// One line of `warren workers`: one incarnation of a replica.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRecord {
    /// Replica id (`--worker-id`).
    pub id: String,
    /// Which start of the replica this is (none for a replica of a release before
    /// incarnations).
    pub incarnation: Option<i64>,
    /// The name its runs, steps and transitions carry: `{id}#{incarnation}`.
    pub owner: String,
    /// Host.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// Tasks it consumes.
    pub tasks: Vec<String>,
    /// Warren version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// When it stopped (cleanly, or superseded by a later start of its id), if it did.
    pub stopped_at: Option<DateTime<Utc>>,
    /// `alive`, `stale` (no heartbeat within the owner lease: crashed or cut off) or `stopped`.
    pub state: String,
    /// Runs it holds in status `running`.
    pub runs_in_flight: i64,
}

/// The fleet, newest first: by default the replicas that have not stopped and heartbeated
/// within [`STALE_LISTED_FOR`]; with `all`, every incarnation still on record.
pub async fn list_workers(
    client: &impl GenericClient,
    all: bool,
) -> Result<Vec<WorkerRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT coalesce(w.replica, w.id), w.incarnation, w.id, w.host, w.pid, w.tasks,
                    w.version, w.started_at, w.last_heartbeat, w.stopped_at,
                    CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
                         WHEN w.last_heartbeat > now() - make_interval(secs => $1) THEN 'alive'
                         ELSE 'stale' END,
                    CASE WHEN w.stopped_at IS NULL THEN w.in_flight::bigint ELSE 0 END
             FROM workers w
             WHERE $2 OR (w.stopped_at IS NULL
                          AND w.last_heartbeat > now() - make_interval(secs => $3))
             ORDER BY w.started_at DESC, w.id",
            &[
                &OWNER_LEASE.as_secs_f64(),
                &all,
                &STALE_LISTED_FOR.as_secs_f64(),
            ],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| WorkerRecord {
            id: row.get(0),
            incarnation: row.get(1),
            owner: row.get(2),
            host: row.get(3),
            pid: row.get(4),
            tasks: row.get(5),
            version: row.get(6),
            started_at: row.get(7),
            last_heartbeat: row.get(8),
            stopped_at: row.get(9),
            state: row.get(10),
            runs_in_flight: row.get(11),
        })
        .collect())
}
