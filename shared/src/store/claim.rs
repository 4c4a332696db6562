//! The claim: what a delivered message may do with its run, decided in the transaction that
//! creates the run or takes it over. The one place where a run starts running.

use super::{Change, OWNER_LEASE, StoreError, children, concurrency, log_transition, parse_status};
use crate::state::RunStatus;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// The fields of a run taken from its message when a worker first sees it.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// From [`run_id`].
    pub id: Uuid,
    /// The message identity.
    pub message_id: &'a str,
    /// The task.
    pub task: &'a str,
    /// The event that triggered it.
    pub event: &'a str,
    /// The task input (the JSON payload), when it is JSON.
    pub input: Option<&'a RawValue>,
    /// The attempt the message carries.
    pub attempt: i32,
    /// Idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// Publish time.
    pub published_at: Option<DateTime<Utc>>,
    /// The worker replica.
    pub worker: &'a str,
    /// The wait this message ends, if it resumes a waiting run.
    pub wake: Option<&'a str>,
    /// How long an idempotency key keeps making later publishes duplicates.
    pub idempotency_window: std::time::Duration,
}

/// A finished step's stored output.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Step name.
    pub step: String,
    /// Position in the pipeline (0-based).
    pub position: i32,
    /// What the step returned.
    pub output: Value,
}

/// What a worker may do with a delivered message, decided by the run's state in Postgres.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The run is now `running` for this message's attempt (new, redelivered, retried, woken or
    /// replayed): execute the steps after its checkpoints.
    Run {
        /// Attempts up to this number belong to earlier retry budgets.
        attempt_base: i32,
        /// Finished steps, in pipeline order (empty for a new run).
        checkpoints: Vec<Checkpoint>,
        /// The run was woken from waiting for its children: their outcomes, to record as the
        /// waiting step's checkpoint before the steps after it run.
        joined: Option<children::Joined>,
    },
    /// The run already finished: acknowledge the message and do nothing more (but see
    /// `failure_handled`).
    Finished {
        /// Its status.
        status: RunStatus,
        /// For a dead run: whether the task's failure handler has run for this death.
        failure_handled: bool,
        /// The run's last error code.
        error_code: Option<String>,
        /// The run's last error message.
        error_message: Option<String>,
    },
    /// The message carries an older attempt than the run has reached (a copy superseded by a
    /// retry): acknowledge it and do nothing.
    Stale {
        /// The run's current attempt.
        current: i32,
    },
    /// Another message with the same idempotency key already made a run (within the window, and
    /// that run is not dead): acknowledge this one and make no run.
    Duplicate {
        /// The run the key belongs to.
        original: Uuid,
    },
    /// The run's concurrency key has no free slot: the run waits in `waiting_for_key`, its
    /// message held in the outbox until a slot frees. Acknowledge this delivery.
    WaitingForKey,
    /// Another live replica is running this run right now (this delivery is a duplicate, or
    /// the owner lost its channel but goes on): hand the message back and look again later.
    Busy {
        /// The replica that owns the run.
        owner: String,
    },
}

/// Reserves the run's idempotency key for it; `Some(original)` when another run holds the key.
async fn reserve_idempotency_key(
    client: &impl GenericClient,
    run: &NewRun<'_>,
    key: &str,
) -> Result<Option<Uuid>, StoreError> {
    let reserve = client
        .prepare_cached(
            "INSERT INTO idempotency_keys (task, key, run_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .await?;
    if client
        .execute(&reserve, &[&run.task, &key, &run.id])
        .await?
        == 1
    {
        return Ok(None);
    }
    let holder = client
        .prepare_cached(
            "SELECT k.run_id, k.created_at > now() - make_interval(secs => $3), r.status
             FROM idempotency_keys k LEFT JOIN runs r ON r.id = k.run_id
             WHERE k.task = $1 AND k.key = $2 FOR UPDATE OF k",
        )
        .await?;
    let row = client
        .query_one(
            &holder,
            &[&run.task, &key, &run.idempotency_window.as_secs_f64()],
        )
        .await?;
    let holder: Uuid = row.get(0);
    let fresh: bool = row.get(1);
    let status: Option<String> = row.get(2);
    if holder == run.id || (fresh && status.as_deref() != Some(RunStatus::Dead.as_str())) {
        return Ok((holder != run.id).then_some(holder));
    }
    // The key expired, or its run died: a failed run never satisfies an idempotency key.
    client
        .execute(
            "UPDATE idempotency_keys SET run_id = $3, created_at = now() WHERE task = $1 AND key = $2",
            &[&run.task, &key, &run.id],
        )
        .await?;
    Ok(None)
}

/// Inserts a run unless it exists: `running`, or `dead` with `error` (code, message) for a
/// message that can never run. Returns whether it was inserted.
pub(super) async fn insert_run(
    client: &impl GenericClient,
    run: &NewRun<'_>,
    status: InsertAs<'_>,
) -> Result<bool, StoreError> {
    let insert = client
        .prepare_cached(
            "INSERT INTO runs (id, message_id, task, event, status, attempt, input, idempotency_key,
                               tenant, worker, published_at, error_code, error_message,
                               started_at, finished_at, concurrency_key)
             VALUES ($1, $2, $3, $4, $13, $5, $6, $7, $8, $9, $10, $11, $12,
                     CASE WHEN $13 = 'running' THEN now() END,
                     CASE WHEN $13 = 'dead' THEN now() END,
                     $14)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    let (error, key) = match status {
        InsertAs::Running { key } => (None, key),
        InsertAs::Dead { code, message } => (Some((code, message)), None),
        InsertAs::WaitingForKey => (None, None),
    };
    let inserted = client
        .execute(
            &insert,
            &[
                &run.id,
                &run.message_id,
                &run.task,
                &run.event,
                &run.attempt,
                &run.input.map(Json),
                &run.idempotency_key,
                &run.tenant,
                &run.worker,
                &run.published_at,
                &error.map(|(code, _)| code),
                &error.map(|(_, message)| message),
                &status.status().as_str(),
                &key,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// The state a run is first recorded in.
#[derive(Debug, Clone, Copy)]
pub(super) enum InsertAs<'a> {
    /// Started, holding a slot of this concurrency key if it has one.
    Running { key: Option<&'a str> },
    /// Dead on arrival.
    Dead { code: &'a str, message: &'a str },
    /// Waiting for a slot of its concurrency key.
    WaitingForKey,
}

impl InsertAs<'_> {
    fn status(self) -> RunStatus {
        match self {
            InsertAs::Running { .. } => RunStatus::Running,
            InsertAs::Dead { .. } => RunStatus::Dead,
            InsertAs::WaitingForKey => RunStatus::WaitingForKey,
        }
    }
}

/// Creates the run as `running`, or takes over the existing one. See [`Claim`].
///
/// A run of a task with a concurrency key (`admission`) starts only with a slot of its key;
/// without one it waits in `waiting_for_key` (see [`concurrency`]) and the claim says
/// [`Claim::WaitingForKey`].
pub async fn claim(
    client: &impl GenericClient,
    run: &NewRun<'_>,
    admission: Option<&concurrency::Admission<'_>>,
) -> Result<Claim, StoreError> {
    if let Some(key) = run.idempotency_key
        && let Some(original) = reserve_idempotency_key(client, run, key).await?
    {
        return Ok(Claim::Duplicate { original });
    }
    let change = Change {
        attempt: run.attempt,
        worker: run.worker,
        reason: "started",
        step: None,
        stage: None,
    };
    // A slot for a new run; an existing one's is decided below, where its state is known.
    let slot = match admission {
        Some(admission) if !concurrency::run_exists(client, run.id).await? => {
            Some(concurrency::take_slot(client, run, admission).await?)
        }
        _ => None,
    };
    let first = match (admission, slot) {
        (Some(_), Some(false)) => InsertAs::WaitingForKey,
        (Some(admission), Some(true)) => InsertAs::Running {
            key: Some(admission.key),
        },
        _ => InsertAs::Running { key: None },
    };
    let inserted = insert_run(client, run, first).await?;
    match (inserted, admission) {
        (true, Some(admission)) if matches!(first, InsertAs::WaitingForKey) => {
            let waiting = Change {
                reason: "waiting for a slot of its concurrency key",
                ..change
            };
            log_transition(client, run.id, None, RunStatus::WaitingForKey, &waiting).await?;
            concurrency::wait_in_line(client, run.id, admission).await?;
            return Ok(Claim::WaitingForKey);
        }
        (true, _) => {
            log_transition(client, run.id, None, RunStatus::Running, &change).await?;
            return Ok(Claim::Run {
                attempt_base: 0,
                checkpoints: Vec::new(),
                joined: None,
            });
        }
        // The run exists: the slot taken for a new run is decided again below.
        (false, Some(_)) if slot == Some(true) => {
            concurrency::give_back(client, run.id, run.worker).await?
        }
        (false, _) => {}
    }

    let current = client
        .prepare_cached(
            "SELECT r.status, r.attempt, r.worker,
                    (w.stopped_at IS NULL AND w.last_heartbeat > now() - make_interval(secs => $2)) AS owner_alive,
                    r.attempt_base, r.wake_token, r.failure_handled_at IS NOT NULL,
                    r.error_code, r.error_message, r.join_step
             FROM runs r LEFT JOIN workers w ON w.id = r.worker
             WHERE r.id = $1 FOR UPDATE OF r",
        )
        .await?;
    let row = client
        .query_one(&current, &[&run.id, &OWNER_LEASE.as_secs_f64()])
        .await?;
    let status = parse_status(row.get(0))?;
    let attempt: i32 = row.get(1);
    let owner: Option<String> = row.get(2);
    let owner_alive: Option<bool> = row.get(3);
    let attempt_base: i32 = row.get(4);
    let wake_token: Option<String> = row.get(5);
    if status.is_terminal() {
        return Ok(Claim::Finished {
            status,
            failure_handled: row.get(6),
            error_code: row.get(7),
            error_message: row.get(8),
        });
    }
    let join_step: Option<String> = row.get(9);
    // An older attempt, or a copy that does not end the wait the run is in, was superseded.
    let parked = matches!(status, RunStatus::Waiting | RunStatus::WaitingForChildren);
    let wrong_wake = parked && run.wake != wake_token.as_deref();
    if run.attempt < attempt || wrong_wake {
        return Ok(Claim::Stale { current: attempt });
    }
    if status == RunStatus::Running
        && owner_alive == Some(true)
        && let Some(owner) = owner.filter(|o| o != run.worker)
    {
        return Ok(Claim::Busy { owner });
    }
    let reason = match status {
        RunStatus::Running => "redelivered: resuming from the last checkpoint",
        RunStatus::Retrying => "retry attempt started",
        RunStatus::Waiting => "wait is over",
        RunStatus::WaitingForChildren => "woken: children ended or the wait timed out",
        RunStatus::Queued if attempt_base == 0 && attempt == 1 => "child run started",
        RunStatus::Queued => "replayed run started",
        RunStatus::WaitingForKey => "its concurrency key had a free slot",
        _ => "picked up again",
    };
    if let Some(admission) = admission
        && !concurrency::take_slot(client, run, admission).await?
    {
        return concurrency::wait_for_key(client, run, status, admission, &change).await;
    }
    let update = client
        .prepare_cached(
            "UPDATE runs SET status = 'running', attempt = $2, worker = $3, updated_at = now(),
                             started_at = coalesce(started_at, now()), wake_token = NULL,
                             next_attempt_at = NULL, concurrency_key = $4
             WHERE id = $1",
        )
        .await?;
    client
        .execute(
            &update,
            &[
                &run.id,
                &run.attempt,
                &run.worker,
                &admission.map(|a| a.key),
            ],
        )
        .await?;
    log_transition(
        client,
        run.id,
        Some(status),
        RunStatus::Running,
        &Change { reason, ..change },
    )
    .await?;
    let joined = match join_step {
        Some(_) => children::joined(client, run.id).await?,
        None => None,
    };
    Ok(Claim::Run {
        attempt_base,
        checkpoints: checkpoints(client, run.id).await?,
        joined,
    })
}

/// The finished steps of a run, in pipeline order.
pub async fn checkpoints(
    client: &impl GenericClient,
    run: Uuid,
) -> Result<Vec<Checkpoint>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT step, position, output FROM run_steps
             WHERE run_id = $1 AND status = 'succeeded' ORDER BY position",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&run])
        .await?
        .into_iter()
        .map(|row| Checkpoint {
            step: row.get(0),
            position: row.get(1),
            output: row
                .get::<_, Option<Json<Value>>>(2)
                .map_or(Value::Null, |j| j.0),
        })
        .collect())
}
