//! Reading runs: the runs of `warren runs list` and one run with its steps and transitions
//! (`warren runs show`).

use super::StoreError;
use crate::state::RunStatus;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// One line of `warren runs list`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub id: Uuid,
    /// Task.
    pub task: String,
    /// Triggering event.
    pub event: String,
    /// Status.
    pub status: String,
    /// Last stage reached.
    pub stage: Option<String>,
    /// Named outcome of a halted run.
    pub outcome: Option<String>,
    /// Current attempt.
    pub attempt: i32,
    /// Error code of a failed run.
    pub error_code: Option<String>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Filters for [`list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this task.
    pub task: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only the children of this run (in the order they were created, not newest first).
    pub parent: Option<Uuid>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// The newest runs matching the filter (a parent's children in the order they were created).
pub async fn list_runs(
    client: &impl GenericClient,
    filter: &RunFilter,
) -> Result<Vec<RunSummary>, StoreError> {
    if let Some(parent) = filter.parent {
        // Its own statement, so that it goes through the parent index whatever the plan.
        let stmt = client
            .prepare_cached(
                "SELECT id, task, event, status, stage, outcome, attempt, error_code, created_at, finished_at
                 FROM runs
                 WHERE parent_id = $1 AND ($2::text IS NULL OR task = $2)
                       AND ($3::text IS NULL OR status = $3)
                 ORDER BY created_at, id
                 LIMIT $4",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &parent,
                    &filter.task,
                    &filter.status.map(RunStatus::as_str),
                    &filter.limit,
                ],
            )
            .await?;
        return Ok(rows.iter().map(run_summary).collect());
    }
    let stmt = client
        .prepare_cached(
            "SELECT id, task, event, status, stage, outcome, attempt, error_code, created_at, finished_at
             FROM runs
             WHERE ($1::text IS NULL OR task = $1) AND ($2::text IS NULL OR status = $2)
             ORDER BY created_at DESC, id
             LIMIT $3",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[
                &filter.task,
                &filter.status.map(RunStatus::as_str),
                &filter.limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(run_summary).collect())
}

/// A run summary from the first ten columns of a row (the `list_runs` column order).
fn run_summary(row: &tokio_postgres::Row) -> RunSummary {
    RunSummary {
        id: row.get(0),
        task: row.get(1),
        event: row.get(2),
        status: row.get(3),
        stage: row.get(4),
        outcome: row.get(5),
        attempt: row.get(6),
        error_code: row.get(7),
        created_at: row.get(8),
        finished_at: row.get(9),
    }
}

/// A run with everything `warren runs show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run's columns.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The message identity.
    pub message_id: String,
    /// Input payload.
    pub input: Option<Value>,
    /// Output of a finished run.
    pub output: Option<Value>,
    /// Error message of a failed run.
    pub error_message: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Last worker.
    pub worker: Option<String>,
    /// Publish time.
    pub published_at: Option<DateTime<Utc>>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// The run that started it, when it is a child.
    pub parent_id: Option<Uuid>,
    /// Who cancelled it, when it was cancelled.
    pub cancelled_by: Option<String>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Steps with a recorded result, in pipeline order.
    pub steps: Vec<StepRecord>,
    /// Every transition, oldest first.
    pub transitions: Vec<TransitionRecord>,
}

/// A step's recorded result.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Step name.
    pub step: String,
    /// Position.
    pub position: i32,
    /// `succeeded`, `halted` or `failed`.
    pub status: String,
    /// Attempt that wrote it.
    pub attempt: i32,
    /// How many times the step was executed to a result.
    pub executions: i32,
    /// Output.
    pub output: Option<Value>,
    /// Error code of a failed step.
    pub error_code: Option<String>,
    /// Error message of a failed step.
    pub error_message: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: DateTime<Utc>,
}

/// One line of the transition log.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRecord {
    /// Status before (`None` at creation).
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// Stage reached, if any.
    pub stage: Option<String>,
    /// Step involved, if any.
    pub step: Option<String>,
    /// Attempt.
    pub attempt: i32,
    /// Who.
    pub worker: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The run with this id, or the runs of the message with this id.
pub async fn find_runs(
    client: &impl GenericClient,
    id_or_message_id: &str,
) -> Result<Vec<RunDetail>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT id, task, event, status, stage, outcome, attempt, error_code, created_at, finished_at,
                    message_id, input, output, error_message, idempotency_key, tenant, worker,
                    published_at, started_at, parent_id, cancelled_by, cancelled_at
             FROM runs WHERE id = $2 OR message_id = $1 ORDER BY created_at, task",
        )
        .await?;
    // Both lookups go through an index (a run id compared as text would scan every run).
    let as_id = Uuid::parse_str(id_or_message_id).ok();
    let mut runs = Vec::new();
    for row in client.query(&stmt, &[&id_or_message_id, &as_id]).await? {
        let id: Uuid = row.get(0);
        runs.push(RunDetail {
            summary: run_summary(&row),
            message_id: row.get(10),
            input: row.get::<_, Option<Json<Value>>>(11).map(|j| j.0),
            output: row.get::<_, Option<Json<Value>>>(12).map(|j| j.0),
            error_message: row.get(13),
            idempotency_key: row.get(14),
            tenant: row.get(15),
            worker: row.get(16),
            published_at: row.get(17),
            started_at: row.get(18),
            parent_id: row.get(19),
            cancelled_by: row.get(20),
            cancelled_at: row.get(21),
            steps: steps(client, id).await?,
            transitions: transitions(client, id).await?,
        });
    }
    Ok(runs)
}

/// A run's recorded steps, in pipeline order.
pub async fn steps(client: &impl GenericClient, run: Uuid) -> Result<Vec<StepRecord>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT step, position, status, attempt, executions, output, error_code, error_message,
                    started_at, finished_at
             FROM run_steps WHERE run_id = $1 ORDER BY position",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&run])
        .await?
        .into_iter()
        .map(|row| StepRecord {
            step: row.get(0),
            position: row.get(1),
            status: row.get(2),
            attempt: row.get(3),
            executions: row.get(4),
            output: row.get::<_, Option<Json<Value>>>(5).map(|j| j.0),
            error_code: row.get(6),
            error_message: row.get(7),
            started_at: row.get(8),
            finished_at: row.get(9),
        })
        .collect())
}

/// A run's transitions, oldest first.
pub async fn transitions(
    client: &impl GenericClient,
    run: Uuid,
) -> Result<Vec<TransitionRecord>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT from_status, to_status, stage, step, attempt, worker, reason, at
             FROM run_transitions WHERE run_id = $1 ORDER BY id",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&run])
        .await?
        .into_iter()
        .map(|row| TransitionRecord {
            from_status: row.get(0),
            to_status: row.get(1),
            stage: row.get(2),
            step: row.get(3),
            attempt: row.get(4),
            worker: row.get(5),
            reason: row.get(6),
            at: row.get(7),
        })
        .collect())
}
