//! Every SQL statement on runs, steps and transitions. The worker writes through these functions
//! (batched into group-commit transactions by its state writer); the CLI and the console read
//! through them (pages of runs and one run's record in `runs`).
//!
//! Each write checks the state machine ([`crate::state::check`]) and fences on the row's current
//! status, so a write based on a stale view of a run changes nothing and says so.
//!
//! A running run's writes also fence on its owner (`runs.worker`, set by every claim: the owner
//! name of one process incarnation, see `replicas`). A replica
//! the fleet has given up for lost (its lease lapsed, or it stopped with runs still executing)
//! may go on executing a step while another replica takes the run over from its checkpoints;
//! without the owner in the fence, both would record the same steps. With it, whichever write
//! commits first decides: the takeover's claim refuses the late replica's checkpoint, or a
//! checkpoint committed before the claim is one the new owner sees and does not run again.

/// What a step's checkpoint row becomes when it already exists (the step ran again before its
/// checkpoint committed, or after a failed attempt): shared by the one-write and set-based forms.
macro_rules! step_checkpoint_upsert {
    () => {
        "ON CONFLICT (run_id, step) DO UPDATE SET
            status = excluded.status, attempt = excluded.attempt, output = excluded.output,
            worker = excluded.worker, started_at = excluded.started_at,
            finished_at = excluded.finished_at, error_code = NULL, error_message = NULL,
            executions = run_steps.executions + 1"
    };
}

mod batch;
pub mod cancel;
pub mod children;
mod claim;
pub mod concurrency;
pub mod logs;
pub mod outbox;
pub mod rate_limits;
mod replicas;
pub mod retention;
pub mod runs;
pub mod schedules;

pub use batch::{complete_steps, start_new_runs, start_queued_children};
pub use claim::{Checkpoint, Claim, NewRun, checkpoints, claim};
pub use replicas::{
    INCARNATION_SEPARATOR, STALE_LISTED_FOR, WorkerInfo, WorkerRecord, heartbeat, list_workers,
    register_worker, stop_worker,
};
pub use runs::{
    BadCursor, RunCursor, RunDetail, RunFilter, RunPage, RunSummary, StepRecord, TransitionRecord,
    find_runs, list_runs, page_runs, steps, transitions,
};

mod db_error;

use crate::state::{self, IllegalTransition, RunStatus};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// What can go wrong writing or reading run state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed.
    #[error("Postgres query failed: {}", db_error::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The change is not a legal transition.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The run was not in the status the write expected, or another replica owns it now
    /// (another worker moved it on or took it over).
    #[error("run {run} is no longer {expected} for this replica")]
    Conflict {
        /// The run.
        run: Uuid,
        /// The status the write expected.
        expected: RunStatus,
    },
    /// No connection could be had from the pool.
    #[error("cannot get a Postgres connection: {0}")]
    Connection(String),
    /// A stored value does not parse (a status written by a newer version, say).
    #[error("corrupt run row: {0}")]
    Corrupt(String),
}

/// Namespace for run ids derived from message ids (UUIDv5).
const RUN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5741_5252_454e_4000_8000_0000_0000_0001);

/// The run id of `task`'s run for a message: deterministic, so a redelivered message finds its
/// run, and distinct per task, so one event that triggers two tasks makes two runs.
pub fn run_id(task: &str, message_id: &str) -> Uuid {
    let mut name = Vec::with_capacity(task.len() + message_id.len() + 1);
    name.extend_from_slice(task.as_bytes());
    name.push(b'/');
    name.extend_from_slice(message_id.as_bytes());
    Uuid::new_v5(&RUN_ID_NAMESPACE, &name)
}

/// How long a replica's heartbeat keeps its runs its own. A run whose owner has not
/// heartbeated for this long (or has stopped) is taken over by whoever gets its message.
pub const OWNER_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// How often replicas heartbeat: well inside [`OWNER_LEASE`].
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

fn parse_status(text: &str) -> Result<RunStatus, StoreError> {
    text.parse()
        .map_err(|e: state::UnknownStatus| StoreError::Corrupt(e.to_string()))
}

async fn log_transition(
    client: &impl GenericClient,
    run: Uuid,
    from: Option<RunStatus>,
    to: RunStatus,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    state::check(from, to)?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO run_transitions (run_id, from_status, to_status, stage, step, attempt, worker, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &run,
                &from.map(RunStatus::as_str),
                &to.as_str(),
                &change.stage,
                &change.step,
                &change.attempt,
                &change.worker,
                &change.reason,
            ],
        )
        .await?;
    Ok(())
}

/// Who makes a change and why: the common part of every transition.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// Attempt number.
    pub attempt: i32,
    /// Worker replica (or `operator`).
    pub worker: &'a str,
    /// Why, in words.
    pub reason: &'a str,
    /// The step involved, if any.
    pub step: Option<&'a str>,
    /// The stage reached, if any.
    pub stage: Option<&'a str>,
}

/// How a finished step ends its run, if it does.
#[derive(Debug, Clone, Copy)]
pub enum StepEnd<'a> {
    /// More steps follow.
    Continue,
    /// The last step: the run succeeded with this output.
    Succeed,
    /// The step ended the run early with a named outcome.
    Halt {
        /// E.g. `NEEDS_USER_INPUT`.
        outcome: &'a str,
    },
    /// More steps follow after a wait: the run is `waiting` until a message carrying `token`
    /// wakes it.
    Wait {
        /// Names the wait; only a message carrying it resumes the run.
        token: &'a str,
        /// When the wait is over.
        until: DateTime<Utc>,
    },
}

/// A step that finished, with its output.
#[derive(Debug, Clone)]
pub struct StepDone<'a> {
    /// The run.
    pub run: Uuid,
    /// Step name.
    pub step: &'a str,
    /// Position in the pipeline.
    pub position: i32,
    /// What it returned.
    pub output: &'a Value,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Whether the run ends here.
    pub end: StepEnd<'a>,
}

/// Records a finished step: its checkpoint, the stage it reached, and the run's end when it is
/// the last (one transaction with the caller's batch).
pub async fn complete_step(
    client: &impl GenericClient,
    done: &StepDone<'_>,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    let step_status = match done.end {
        StepEnd::Halt { .. } => "halted",
        _ => "succeeded",
    };
    let upsert = client
        .prepare_cached(
            concat!(
                "INSERT INTO run_steps (run_id, step, position, status, attempt, output, worker, started_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()) ",
                step_checkpoint_upsert!()
            ),
        )
        .await?;
    client
        .execute(
            &upsert,
            &[
                &done.run,
                &done.step,
                &done.position,
                &step_status,
                &change.attempt,
                &Json(done.output),
                &change.worker,
                &done.started_at,
            ],
        )
        .await?;
    let (to, outcome, stage, wake) = step_end(done.end, change.stage);
    let update = client
        .prepare_cached(
            "UPDATE runs SET status = $2, stage = coalesce($3, stage), outcome = $4,
                    output = CASE WHEN $2 IN ('succeeded', 'halted') THEN $5 ELSE output END,
                    finished_at = CASE WHEN $2 IN ('succeeded', 'halted') THEN now() ELSE NULL END,
                    wake_token = $7, next_attempt_at = $8, join_step = NULL, updated_at = now()
             WHERE id = $1 AND status = 'running' AND attempt = $6 AND worker = $9",
        )
        .await?;
    let updated = client
        .execute(
            &update,
            &[
                &done.run,
                &to.as_str(),
                &stage,
                &outcome,
                &Json(done.output),
                &change.attempt,
                &wake.map(|(token, _)| token),
                &wake.map(|(_, until)| until),
                &change.worker,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(StoreError::Conflict {
            run: done.run,
            expected: RunStatus::Running,
        });
    }
    let logged = step_transition(done.end, change, stage);
    log_transition(client, done.run, Some(RunStatus::Running), to, &logged).await?;
    Ok(())
}

/// The one transition a completed step logs: `running -> running` with the stage it reached
/// when the run goes on, or the run's move to its end (`succeeded`, `halted`, `waiting`)
/// naming the step and the stage it reached (`stage`; none for a halting step, which did not
/// reach its stage).
fn step_transition<'a>(
    end: StepEnd<'a>,
    change: &Change<'a>,
    stage: Option<&'a str>,
) -> Change<'a> {
    match end {
        StepEnd::Continue => *change,
        _ => Change {
            reason: end_reason(end),
            stage,
            ..*change
        },
    }
}

/// What a completed step makes of its run: the run's new status, its outcome, the stage it
/// reaches (a halting step did not reach its stage: the run stops where it was), and the wait.
type RunAfterStep<'a> = (
    RunStatus,
    Option<&'a str>,
    Option<&'a str>,
    Option<(&'a str, DateTime<Utc>)>,
);

fn step_end<'a>(end: StepEnd<'a>, stage: Option<&'a str>) -> RunAfterStep<'a> {
    match end {
        StepEnd::Continue => (RunStatus::Running, None, stage, None),
        StepEnd::Succeed => (RunStatus::Succeeded, None, stage, None),
        StepEnd::Halt { outcome } => (RunStatus::Halted, Some(outcome), None, None),
        StepEnd::Wait { token, until } => (RunStatus::Waiting, None, stage, Some((token, until))),
    }
}

/// The reason logged when a step ends its run.
fn end_reason(end: StepEnd<'_>) -> &str {
    match end {
        StepEnd::Halt { outcome } => outcome,
        StepEnd::Wait { .. } => "waiting",
        _ => "all steps succeeded",
    }
}

/// A failure to record: the error class and where it happened.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// Stable reason code (`invalid_input`, `timeout`, `not_found`, ...).
    pub code: &'a str,
    /// Human-readable message.
    pub message: &'a str,
    /// The failing step and its position, when a step failed.
    pub step: Option<(&'a str, i32)>,
    /// When the failing step started.
    pub step_started_at: Option<DateTime<Utc>>,
}

/// What becomes of a run whose attempt failed.
#[derive(Debug, Clone, Copy)]
pub enum AfterFailure {
    /// It is dead: its message is in the dead-letter queue.
    Dead,
    /// It is `retrying`: attempt `next_attempt` is due at `at` (its message is in the delay
    /// cascade).
    Retry {
        /// The next attempt's number.
        next_attempt: i32,
        /// When it is due.
        at: DateTime<Utc>,
    },
}

/// Moves a running run to `dead` or `retrying` with its error, recording the failed step.
pub async fn fail_run(
    client: &impl GenericClient,
    run: Uuid,
    after: AfterFailure,
    failure: &Failure<'_>,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    let (to, next_attempt, next_at) = match after {
        AfterFailure::Dead => (RunStatus::Dead, change.attempt, None),
        AfterFailure::Retry { next_attempt, at } => (RunStatus::Retrying, next_attempt, Some(at)),
    };
    if let Some((step, position)) = failure.step {
        let upsert = client
            .prepare_cached(
                "INSERT INTO run_steps (run_id, step, position, status, attempt, error_code, error_message,
                                        worker, started_at, finished_at)
                 VALUES ($1, $2, $3, 'failed', $4, $5, $6, $7, coalesce($8, now()), now())
                 ON CONFLICT (run_id, step) DO UPDATE SET
                    status = 'failed', attempt = excluded.attempt, error_code = excluded.error_code,
                    error_message = excluded.error_message, worker = excluded.worker,
                    started_at = excluded.started_at, finished_at = excluded.finished_at,
                    executions = run_steps.executions + 1",
            )
            .await?;
        client
            .execute(
                &upsert,
                &[
                    &run,
                    &step,
                    &position,
                    &change.attempt,
                    &failure.code,
                    &failure.message,
                    &change.worker,
                    &failure.step_started_at,
                ],
            )
            .await?;
    }
    let update = client
        .prepare_cached(
            "UPDATE runs SET status = $2, error_code = $3, error_message = $4, updated_at = now(),
                    finished_at = CASE WHEN $2 = 'dead' THEN now() ELSE NULL END,
                    attempt = $6, next_attempt_at = $7
             WHERE id = $1 AND status = 'running' AND attempt = $5 AND worker = $8",
        )
        .await?;
    let updated = client
        .execute(
            &update,
            &[
                &run,
                &to.as_str(),
                &failure.code,
                &failure.message,
                &change.attempt,
                &next_attempt,
                &next_at,
                &change.worker,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(StoreError::Conflict {
            run,
            expected: RunStatus::Running,
        });
    }
    log_transition(client, run, Some(RunStatus::Running), to, change).await
}

/// A replica that hands a claimed run's message back (it could not record or send what the run
/// did) gives up its ownership, so that whichever replica the message reaches next takes the
/// run over at once instead of waiting for this live replica's lease to run out.
pub async fn release_run(
    client: &impl GenericClient,
    run: Uuid,
    worker: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE runs SET worker = NULL WHERE id = $1 AND worker = $2 AND status = 'running'",
            &[&run, &worker],
        )
        .await?;
    Ok(())
}

/// Whether `worker` still owns the run in this attempt: checked before a failing or waiting
/// run sends a copy of its message on (a retry, a dead letter, a wake-up), which the write that
/// follows could no longer take back if the fence refused it. It narrows, not closes, the window
/// in which a replica given up for lost sends one.
pub async fn owns(
    client: &impl GenericClient,
    run: Uuid,
    attempt: i32,
    worker: &str,
) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM runs
                            WHERE id = $1 AND status = 'running' AND attempt = $2 AND worker = $3)",
        )
        .await?;
    Ok(client
        .query_one(&stmt, &[&run, &attempt, &worker])
        .await?
        .get(0))
}

/// The run's status, if it exists.
pub async fn status(
    client: &impl GenericClient,
    run: Uuid,
) -> Result<Option<RunStatus>, StoreError> {
    let row = client
        .query_opt("SELECT status FROM runs WHERE id = $1", &[&run])
        .await?;
    row.map(|row| parse_status(row.get(0))).transpose()
}

/// Records that the task's failure handler ran for the run's current death.
pub async fn mark_failure_handled(
    client: &impl GenericClient,
    run: Uuid,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE runs SET failure_handled_at = now() WHERE id = $1 AND status = 'dead'",
            &[&run],
        )
        .await?;
    Ok(())
}

/// An operator's replay of a dead run: `dead → queued` with a fresh retry budget starting at the
/// next attempt, whose number is returned. Replaying a run that is already `queued` (a replay
/// interrupted before its message was sent) returns its attempt again. `None`: there is no such
/// run, or it is neither dead nor queued.
pub async fn replay_run(
    client: &impl GenericClient,
    run: Uuid,
    operator: &str,
) -> Result<Option<i32>, StoreError> {
    let row = client
        .query_opt(
            "SELECT status, attempt FROM runs WHERE id = $1 FOR UPDATE",
            &[&run],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let status = parse_status(row.get(0))?;
    let attempt: i32 = row.get(1);
    match status {
        RunStatus::Queued => Ok(Some(attempt)),
        RunStatus::Dead => {
            let next = attempt + 1;
            client
                .execute(
                    "UPDATE runs SET status = 'queued', attempt = $2, attempt_base = $3,
                            failure_handled_at = NULL, finished_at = NULL, next_attempt_at = NULL,
                            updated_at = now()
                     WHERE id = $1",
                    &[&run, &next, &attempt],
                )
                .await?;
            let change = Change {
                attempt: next,
                worker: operator,
                reason: "replayed from the dead-letter queue",
                step: None,
                stage: None,
            };
            log_transition(
                client,
                run,
                Some(RunStatus::Dead),
                RunStatus::Queued,
                &change,
            )
            .await?;
            Ok(Some(next))
        }
        _ => Ok(None),
    }
}

/// Records a run whose message can never run (its input fails the task's schema) straight as
/// `dead`. A redelivery of the same message changes nothing; a replay of its dead letter (the
/// run `queued`) makes it `dead` again, so that no run is left queued with no message behind
/// it. Returns whether the task's failure handler has already run for this death.
pub async fn dead_on_arrival(
    client: &impl GenericClient,
    run: &NewRun<'_>,
    code: &str,
    message: &str,
) -> Result<bool, StoreError> {
    let inserted = claim::insert_run(client, run, claim::InsertAs::Dead { code, message }).await?;
    if inserted {
        let change = Change {
            attempt: run.attempt,
            worker: run.worker,
            reason: message,
            step: None,
            stage: None,
        };
        log_transition(client, run.id, None, RunStatus::Dead, &change).await?;
        return Ok(false);
    }
    let replayed = client
        .query_opt(
            "UPDATE runs SET status = 'dead', error_code = $2, error_message = $3,
                    finished_at = now(), updated_at = now(), failure_handled_at = NULL
             WHERE id = $1 AND status = 'queued'
             RETURNING attempt",
            &[&run.id, &code, &message],
        )
        .await?;
    if let Some(row) = replayed {
        let change = Change {
            attempt: row.get(0),
            worker: run.worker,
            reason: message,
            step: None,
            stage: None,
        };
        log_transition(
            client,
            run.id,
            Some(RunStatus::Queued),
            RunStatus::Dead,
            &change,
        )
        .await?;
        return Ok(false);
    }
    let handled = client
        .query_opt(
            "SELECT failure_handled_at IS NOT NULL FROM runs WHERE id = $1",
            &[&run.id],
        )
        .await?;
    Ok(handled.is_some_and(|row| row.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_per_message_and_distinct_per_task() {
        assert_eq!(run_id("video.process", "m1"), run_id("video.process", "m1"));
        assert_ne!(run_id("video.process", "m1"), run_id("video.process", "m2"));
        assert_ne!(run_id("video.process", "m1"), run_id("video.audit", "m1"));
    }
}
