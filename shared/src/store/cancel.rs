//! Cancelling a run (and its children), and retrying a dead or cancelled run from its first step.
//!
//! Cancellation is a state change that anyone with the database can make, not a message to a
//! worker: the run and every unfinished run below it become `cancelled` in one transaction. A
//! worker still executing one of them is fenced out (its next write expects `running` and
//! finds `cancelled`, so it records nothing and settles its message), and notices within half a
//! second (it watches its runs in flight) so that it stops the step instead of finishing it. A
//! message of a cancelled run that arrives later (a retry, a wake-up, a child's trigger still
//! in the outbox) finds the run finished and is acknowledged: nothing is dead-lettered.

use super::{Change, StoreError, children, log_transition, outbox, parse_status};
use crate::state::RunStatus;
use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// No run has this id.
    NotFound,
    /// The run had already finished: nothing changed.
    AlreadyFinished(RunStatus),
    /// The run and these of its descendants (in tree order, the run first) are now
    /// `cancelled`.
    Cancelled(Vec<Uuid>),
}

/// Cancels `run` and every unfinished run below it, on behalf of `by` (recorded on the runs
/// and in their transitions). Their open joins close, their held wake-ups go, and a run that
/// is itself a child counts as ended for its parent.
pub async fn cancel_run(
    client: &impl GenericClient,
    run: Uuid,
    by: &str,
) -> Result<Cancelled, StoreError> {
    let Some(row) = client
        .query_opt("SELECT status FROM runs WHERE id = $1 FOR UPDATE", &[&run])
        .await?
    else {
        return Ok(Cancelled::NotFound);
    };
    let status = parse_status(row.get(0))?;
    if status.is_terminal() {
        return Ok(Cancelled::AlreadyFinished(status));
    }
    let reason = format!("cancelled by {by}");
    let mut cancelled = Vec::new();
    // Set-based, whatever the size of the tree. Repeated until it finds nothing new: a child
    // that a concurrent transaction started (a sibling's end, under a limit) is not visible to
    // the statement that began before it committed, but is to the next one; and once this
    // transaction has closed a parent's join, nothing starts another child of it.
    loop {
        let round = client
            .query(
                "WITH RECURSIVE tree (id, depth) AS (
                     SELECT $1::uuid, 0
                     UNION ALL
                     SELECT r.id, t.depth + 1 FROM runs r JOIN tree t ON r.parent_id = t.id
                     WHERE t.depth < 64
                 ), doomed AS (
                     SELECT r.id, r.status, r.attempt FROM runs r JOIN tree t USING (id)
                     WHERE r.status NOT IN ('succeeded', 'halted', 'dead', 'cancelled')
                     ORDER BY r.id
                     FOR UPDATE OF r
                 ), done AS (
                     UPDATE runs SET status = 'cancelled', cancelled_by = $2, cancelled_at = now(),
                            finished_at = now(), updated_at = now(), wake_token = NULL,
                            next_attempt_at = NULL, error_code = 'cancelled', error_message = $3
                     FROM doomed WHERE runs.id = doomed.id
                     RETURNING runs.id
                 )
                 SELECT id, status, attempt FROM doomed",
                &[&run, &by, &reason],
            )
            .await?;
        if round.is_empty() {
            break;
        }
        let mut ids = Vec::with_capacity(round.len());
        let mut froms = Vec::with_capacity(round.len());
        let mut attempts = Vec::with_capacity(round.len());
        for row in &round {
            let from = parse_status(row.get(1))?;
            crate::state::check(Some(from), RunStatus::Cancelled)?;
            ids.push(row.get::<_, Uuid>(0));
            froms.push(from.as_str());
            attempts.push(row.get::<_, i32>(2));
        }
        client
            .execute(
                "INSERT INTO run_transitions (run_id, from_status, to_status, attempt, worker, reason)
                 SELECT id, f, 'cancelled', a, $4, $5
                 FROM unnest($1::uuid[], $2::text[], $3::int[]) AS x(id, f, a)",
                &[&ids, &froms, &attempts, &by, &reason],
            )
            .await?;
        children::close_joins(client, &ids).await?;
        cancelled.extend(ids);
    }
    // The root first, as the caller reports it.
    if let Some(at) = cancelled.iter().position(|id| *id == run) {
        cancelled.swap(0, at);
    }
    // The root may itself be a child: its parent counts it as ended (its descendants' parents
    // are cancelled with them).
    children::child_ended(client, run).await?;
    Ok(Cancelled::Cancelled(cancelled))
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// No run has this id.
    NotFound,
    /// The run is neither dead nor cancelled.
    NotRetryable(RunStatus),
    /// The run is `queued` again at this attempt, with no checkpoint; its message is in the
    /// outbox (this row).
    Queued {
        /// The attempt its new message carries.
        attempt: i32,
        /// Its outbox row.
        outbox_id: i64,
    },
}

/// What a retried run's message is made from: the run as Postgres has it.
#[derive(Debug, Clone)]
pub struct RetrySource {
    /// The run's task.
    pub task: String,
    /// Its event.
    pub event: String,
    /// Its message id.
    pub message_id: String,
    /// Its input, as JSON text.
    pub input: String,
    /// Its tenant.
    pub tenant: Option<String>,
    /// Its parent, when it is a child.
    pub parent: Option<Uuid>,
    /// The attempt the new message carries.
    pub attempt: i32,
}

/// Starts a dead or cancelled run again from its first step: `queued` with a fresh retry
/// budget, every checkpoint and any leftover join gone, and its message (built by `message`
/// from the run) in the outbox, all in one transaction. The caller relays the message.
pub async fn retry_run(
    client: &impl GenericClient,
    run: Uuid,
    by: &str,
    message: impl FnOnce(&RetrySource) -> outbox::Message,
) -> Result<Retried, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT status, attempt, task, event, message_id, input::text, tenant, parent_id
             FROM runs WHERE id = $1 FOR UPDATE",
            &[&run],
        )
        .await?
    else {
        return Ok(Retried::NotFound);
    };
    let status = parse_status(row.get(0))?;
    if !matches!(status, RunStatus::Dead | RunStatus::Cancelled) {
        return Ok(Retried::NotRetryable(status));
    }
    let attempt: i32 = row.get(1);
    let next = attempt + 1;
    let source = RetrySource {
        task: row.get(2),
        event: row.get(3),
        message_id: row.get(4),
        input: row
            .get::<_, Option<String>>(5)
            .unwrap_or_else(|| "{}".to_owned()),
        tenant: row.get(6),
        parent: row.get(7),
        attempt: next,
    };
    client
        .execute(
            "UPDATE runs SET status = 'queued', attempt = $2, attempt_base = $3, stage = NULL,
                    outcome = NULL, output = NULL, error_code = NULL, error_message = NULL,
                    failure_handled_at = NULL, finished_at = NULL, next_attempt_at = NULL,
                    wake_token = NULL, join_step = NULL, cancelled_by = NULL,
                    cancelled_at = NULL, worker = NULL, updated_at = now()
             WHERE id = $1",
            &[&run, &next, &attempt],
        )
        .await?;
    client
        .execute("DELETE FROM run_steps WHERE run_id = $1", &[&run])
        .await?;
    children::close_join(client, run).await?;
    let reason = format!("retried from the first step by {by}");
    let change = Change {
        attempt: next,
        worker: by,
        reason: &reason,
        step: None,
        stage: None,
    };
    log_transition(client, run, Some(status), RunStatus::Queued, &change).await?;
    let ids = outbox::insert(client, &[message(&source)], None).await?;
    let outbox_id = ids
        .first()
        .copied()
        .ok_or_else(|| StoreError::Corrupt("the retried run's message was not written".into()))?;
    Ok(Retried::Queued {
        attempt: next,
        outbox_id,
    })
}
