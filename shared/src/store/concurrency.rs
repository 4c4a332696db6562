//! Concurrency keys: at most N runs of one key (a tenant, a user, a value of the input) running
//! at once across the fleet, each key's runs taking their turns in order of arrival, and one
//! key's backlog never in the way of another key's runs.
//!
//! A run takes a slot of its key in the transaction that claims it (the key's row lock orders
//! the claims of one key). Without a free slot the run waits in `waiting_for_key`: its message
//! is acknowledged and a copy held in the outbox, its place kept in `key_waiters`. A slot frees
//! when its run leaves `running` for any reason (a trigger on `runs`, so that no write path can
//! forget it): the oldest waiter of the key gets it, reserved, and its copy is released to the
//! relay (if the key has room: a slot of a replica that died frees none). A slot held on a
//! replica that died counts no more once its heartbeat lapses. Each
//! replica also sweeps the keys with waiters every second ([`release_free_slots`]), for slots
//! freed where the trigger could not see a waiter (see `V11__concurrency_keys.sql`).

use super::claim::NewRun;
use super::{Change, Claim, StoreError, log_transition, outbox};
use crate::state::RunStatus;
use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// What a claim needs to admit a run of a task with a concurrency key.
#[derive(Debug)]
pub struct Admission<'a> {
    /// The key the run counts against.
    pub key: &'a str,
    /// How many runs of the key may run at once.
    pub max_running: i32,
    /// The copy of the run's message to hold until its turn, should it have to wait.
    pub held: &'a outbox::Message,
}

/// When a held copy would fall due on its own: never, in practice; its turn releases it.
fn held_until() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Locks the rows of `keys` (creating the missing ones with their limits) in the order of their
/// names: what a transaction claiming runs of several keys does first, so that two such
/// transactions never take the same two locks in opposite orders.
pub async fn lock_keys(
    client: &impl GenericClient,
    keys: &[(&str, i32)],
) -> Result<(), StoreError> {
    let mut sorted: Vec<(&str, i32)> = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup_by(|a, b| a.0 == b.0);
    let (names, limits): (Vec<&str>, Vec<i32>) = sorted.into_iter().unzip();
    let create = client
        .prepare_cached(
            "INSERT INTO concurrency_keys (key, max_running)
             SELECT k, m FROM unnest($1::text[], $2::int4[]) AS u(k, m) ORDER BY k
             ON CONFLICT (key) DO NOTHING",
        )
        .await?;
    client.execute(&create, &[&names, &limits]).await?;
    let lock = client
        .prepare_cached(
            "SELECT 1 FROM concurrency_keys WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .await?;
    client.query(&lock, &[&names]).await?;
    Ok(())
}

/// Whether the run has a row already.
pub(super) async fn run_exists(client: &impl GenericClient, run: Uuid) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
        .await?;
    Ok(client.query_one(&stmt, &[&run]).await?.get(0))
}

/// Takes a slot of the run's key, or keeps the one it has: `false` when the key is full.
pub(super) async fn take_slot(
    client: &impl GenericClient,
    run: &NewRun<'_>,
    admission: &Admission<'_>,
) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached("SELECT warren_take_slot($1, $2, $3, $4)")
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[&run.id, &admission.key, &admission.max_running, &run.worker],
        )
        .await?;
    Ok(row.get(0))
}

/// Gives back a slot `worker` took for a run that turned out to exist already (another replica's
/// slot for the run stays its own).
pub(super) async fn give_back(
    client: &impl GenericClient,
    run: Uuid,
    worker: &str,
) -> Result<(), StoreError> {
    let stmt = client
        .prepare_cached("DELETE FROM concurrency_slots WHERE run_id = $1 AND worker = $2")
        .await?;
    client.execute(&stmt, &[&run, &worker]).await?;
    Ok(())
}

/// Puts a run at the end of its key's line with its message held, unless it is in line already
/// (a duplicate delivery of a waiting run).
pub(super) async fn wait_in_line(
    client: &impl GenericClient,
    run: Uuid,
    admission: &Admission<'_>,
) -> Result<(), StoreError> {
    let in_line = client
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM key_waiters WHERE run_id = $1)")
        .await?;
    if client.query_one(&in_line, &[&run]).await?.get(0) {
        return Ok(());
    }
    let ids = outbox::insert(
        client,
        std::slice::from_ref(admission.held),
        Some(held_until()),
    )
    .await?;
    let outbox_id = ids
        .first()
        .copied()
        .ok_or_else(|| StoreError::Corrupt("the held message got no outbox row".into()))?;
    let stmt = client
        .prepare_cached("INSERT INTO key_waiters (key, run_id, outbox_id) VALUES ($1, $2, $3)")
        .await?;
    client
        .execute(&stmt, &[&admission.key, &run, &outbox_id])
        .await?;
    Ok(())
}

/// An existing run found its key full: it waits for a slot (it may be waiting already).
pub(super) async fn wait_for_key(
    client: &impl GenericClient,
    run: &NewRun<'_>,
    status: RunStatus,
    admission: &Admission<'_>,
    change: &Change<'_>,
) -> Result<Claim, StoreError> {
    if status != RunStatus::WaitingForKey {
        let stmt = client
            .prepare_cached(
                "UPDATE runs SET status = 'waiting_for_key', attempt = $2, updated_at = now(),
                                 wake_token = NULL, next_attempt_at = NULL
                 WHERE id = $1",
            )
            .await?;
        client.execute(&stmt, &[&run.id, &run.attempt]).await?;
        let waiting = Change {
            reason: "waiting for a slot of its concurrency key",
            ..*change
        };
        log_transition(
            client,
            run.id,
            Some(status),
            RunStatus::WaitingForKey,
            &waiting,
        )
        .await?;
    }
    wait_in_line(client, run.id, admission).await?;
    Ok(Claim::WaitingForKey)
}

/// The keys that have runs waiting.
pub async fn keys_with_waiters(client: &impl GenericClient) -> Result<Vec<String>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT DISTINCT key FROM key_waiters")
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Hands the free slots of `key` to its oldest waiters; returns how many were released. One
/// key per transaction: the key's row lock is the only one it takes.
pub async fn release_free_slots(client: &impl GenericClient, key: &str) -> Result<i32, StoreError> {
    let stmt = client
        .prepare_cached("SELECT warren_release_free_slots($1)")
        .await?;
    Ok(client.query_one(&stmt, &[&key]).await?.get(0))
}

/// How many runs of each task wait for a slot of their key.
pub async fn waiting_by_task(
    client: &impl GenericClient,
) -> Result<Vec<(String, i64)>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT task, count(*) FROM runs WHERE status = 'waiting_for_key' GROUP BY task",
        )
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Postgres's copy of [`super::OWNER_LEASE`] (`warren_owner_lease()`, used where SQL decides on its
/// own whether a replica is alive, as the key trigger does): the two must agree.
pub async fn owner_lease_in_postgres(
    client: &impl GenericClient,
) -> Result<std::time::Duration, StoreError> {
    let stmt = client
        .prepare_cached("SELECT extract(epoch FROM warren_owner_lease())::float8")
        .await?;
    let seconds: f64 = client.query_one(&stmt, &[]).await?.get(0);
    Ok(std::time::Duration::from_secs_f64(seconds))
}
