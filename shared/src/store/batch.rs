//! Set-based forms of the hottest writes, for a group commit that carries many of them: the
//! first claim of a new run, the first claim of a child run its parent created `queued`, and a
//! completed step. Each is one statement over arrays (`unnest`, with data-modifying `WITH`
//! clauses for the rows it writes in several tables) whatever the batch size, where the
//! one-write forms cost several statements per run: Postgres's per-statement overhead was most
//! of its time at full load, and every statement is a round trip the batch waits for.
//!
//! They do exactly what [`super::claim`] (for a run that does not exist yet, or a child run
//! that has never run) and [`super::complete_step`] do, row for row. Anything unusual falls
//! back to those: a claim that finds its run already there (or, for a child, not fresh), and a
//! batch in which one completion no longer owns its run (the whole batch then fails, and the
//! writer commits its writes one by one).

use super::{Change, NewRun, StepDone, StepEnd, StoreError};
use crate::state::{self, RunStatus};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use std::collections::HashSet;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

/// Inserts the runs that do not exist yet as `running`, with their first transition. Returns,
/// for each, whether it was inserted; the others need the full [`super::claim`]. Runs with an
/// idempotency key must go through [`super::claim`].
pub async fn start_new_runs(
    tx: &Transaction<'_>,
    runs: &[NewRun<'_>],
) -> Result<Vec<bool>, StoreError> {
    state::check(None, RunStatus::Running)?;
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let message_ids: Vec<&str> = runs.iter().map(|r| r.message_id).collect();
    let tasks: Vec<&str> = runs.iter().map(|r| r.task).collect();
    let events: Vec<&str> = runs.iter().map(|r| r.event).collect();
    let attempts: Vec<i32> = runs.iter().map(|r| r.attempt).collect();
    let inputs: Vec<Option<Json<&serde_json::value::RawValue>>> =
        runs.iter().map(|r| r.input.map(Json)).collect();
    let tenants: Vec<Option<&str>> = runs.iter().map(|r| r.tenant).collect();
    let workers: Vec<&str> = runs.iter().map(|r| r.worker).collect();
    let published: Vec<Option<DateTime<Utc>>> = runs.iter().map(|r| r.published_at).collect();
    // No join and no scan: the plan Postgres caches for the statement does not depend on the
    // tables' statistics, so it cannot go stale as they grow.
    let insert = tx
        .prepare_cached(
            "WITH started AS (
                 INSERT INTO runs (id, message_id, task, event, status, attempt, input, tenant,
                                   worker, published_at, started_at)
                 SELECT id, message_id, task, event, 'running', attempt, input, tenant, worker,
                        published_at, now()
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[],
                             $6::jsonb[], $7::text[], $8::text[], $9::timestamptz[])
                      AS u(id, message_id, task, event, attempt, input, tenant, worker, published_at)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id, attempt, worker
             ), logged AS (
                 INSERT INTO run_transitions (run_id, from_status, to_status, attempt, worker, reason)
                 SELECT id, NULL, 'running', attempt, worker, 'started' FROM started
             )
             SELECT id FROM started",
        )
        .await?;
    let inserted: HashSet<Uuid> = tx
        .query(
            &insert,
            &[
                &ids,
                &message_ids,
                &tasks,
                &events,
                &attempts,
                &inputs,
                &tenants,
                &workers,
                &published,
            ],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(runs.iter().map(|r| inserted.contains(&r.id)).collect())
}

/// Starts child runs that their parent created `queued` and that have never run: `running`
/// for their message's attempt, with the transition [`super::claim`] logs for them. Returns,
/// for each, whether it started; the others (a child cancelled, already running elsewhere, or
/// replayed) need the full [`super::claim`], which finds out what they are. A child's run
/// always exists before its message is sent (the parent's transaction created it), so these
/// claims never insert. Runs with an idempotency key must go through [`super::claim`].
pub async fn start_queued_children(
    tx: &Transaction<'_>,
    runs: &[NewRun<'_>],
) -> Result<Vec<bool>, StoreError> {
    state::check(Some(RunStatus::Queued), RunStatus::Running)?;
    let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let attempts: Vec<i32> = runs.iter().map(|r| r.attempt).collect();
    let workers: Vec<&str> = runs.iter().map(|r| r.worker).collect();
    // Fresh: never claimed (attempt 1 of the first budget, no join, no checkpoint), which is
    // what makes the full claim's answer `Claim::Run` with no checkpoints and no join. Planned
    // for its arrays each time, like `complete_steps`, for the same reason: a join of `runs`
    // with `unnest`.
    let started: HashSet<Uuid> = tx
        .query_typed(
            "WITH fresh AS (
                 UPDATE runs SET status = 'running', attempt = u.attempt, worker = u.worker,
                        updated_at = now(), started_at = coalesce(runs.started_at, now()),
                        wake_token = NULL, next_attempt_at = NULL
                 FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempt, worker)
                 WHERE runs.id = u.id AND runs.status = 'queued' AND runs.attempt = 1
                       AND runs.attempt_base = 0 AND u.attempt >= 1 AND runs.join_step IS NULL
                       AND NOT EXISTS (SELECT 1 FROM run_steps s WHERE s.run_id = runs.id)
                 RETURNING runs.id, runs.attempt, runs.worker
             ), logged AS (
                 INSERT INTO run_transitions (run_id, from_status, to_status, attempt, worker, reason)
                 SELECT id, 'queued', 'running', attempt, worker, 'child run started' FROM fresh
             )
             SELECT id FROM fresh",
            &[
                (&ids, Type::UUID_ARRAY),
                (&attempts, Type::INT4_ARRAY),
                (&workers, Type::TEXT_ARRAY),
            ],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(runs.iter().map(|r| started.contains(&r.id)).collect())
}

/// Records completed steps: their checkpoints, their runs' new states, and the transitions.
/// Fails with [`StoreError::Conflict`] if any run is no longer `running` in that attempt, or no
/// longer owned by the step's replica, and the caller rolls the whole transaction back.
pub async fn complete_steps(
    tx: &Transaction<'_>,
    steps: &[(StepDone<'_>, Change<'_>)],
) -> Result<(), StoreError> {
    let len = steps.len();
    let mut runs = Vec::with_capacity(len);
    let mut names = Vec::with_capacity(len);
    let mut positions = Vec::with_capacity(len);
    let mut step_statuses = Vec::with_capacity(len);
    let mut attempts = Vec::with_capacity(len);
    let mut outputs = Vec::with_capacity(len);
    let mut workers = Vec::with_capacity(len);
    let mut started = Vec::with_capacity(len);
    let mut to_statuses = Vec::with_capacity(len);
    let mut stages = Vec::with_capacity(len);
    let mut outcomes = Vec::with_capacity(len);
    let mut wake_tokens = Vec::with_capacity(len);
    let mut next_attempts = Vec::with_capacity(len);
    let mut logged_steps = Vec::with_capacity(len);
    let mut reasons = Vec::with_capacity(len);
    for (done, change) in steps {
        let (to, outcome, stage, wake) = super::step_end(done.end, change.stage);
        state::check(Some(RunStatus::Running), to)?;
        runs.push(done.run);
        names.push(done.step);
        positions.push(done.position);
        step_statuses.push(match done.end {
            StepEnd::Halt { .. } => "halted",
            _ => "succeeded",
        });
        attempts.push(change.attempt);
        outputs.push(Json(done.output));
        workers.push(change.worker);
        started.push(done.started_at);
        to_statuses.push(to.as_str());
        stages.push(stage);
        outcomes.push(outcome);
        wake_tokens.push(wake.map(|(token, _)| token));
        next_attempts.push(wake.map(|(_, until)| until));
        // One transition per step (`super::step_transition`): to the run's new status, with
        // the stage the step reached (`stage`: none for a halting step).
        let logged = super::step_transition(done.end, change, stage);
        logged_steps.push(logged.step);
        reasons.push(logged.reason);
    }
    // Sent with its types and planned for these arrays each time, never prepared: under the
    // generic plan Postgres settles on for a statement run many times (made while the table
    // was small), the join of `runs` with `unnest` turned out several times slower.
    let statement = concat!(
        "WITH checkpoints AS (
             INSERT INTO run_steps (run_id, step, position, status, attempt, output, worker,
                                    started_at, finished_at)
             SELECT run_id, step, position, status, attempt, output, worker, started_at, now()
             FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::int4[], $6::jsonb[],
                         $7::text[], $8::timestamptz[])
                  AS u(run_id, step, position, status, attempt, output, worker, started_at) ",
        step_checkpoint_upsert!(),
        "
         ), moved AS (
             UPDATE runs SET status = u.status, stage = coalesce(u.stage, runs.stage),
                    outcome = u.outcome,
                    output = CASE WHEN u.status IN ('succeeded', 'halted') THEN u.output ELSE runs.output END,
                    finished_at = CASE WHEN u.status IN ('succeeded', 'halted') THEN now() ELSE NULL END,
                    wake_token = u.wake_token, next_attempt_at = u.next_attempt_at, updated_at = now()
             FROM unnest($1::uuid[], $9::text[], $10::text[], $11::text[], $6::jsonb[], $5::int4[],
                         $12::text[], $13::timestamptz[], $7::text[])
                  AS u(id, status, stage, outcome, output, attempt, wake_token, next_attempt_at, worker)
             WHERE runs.id = u.id AND runs.status = 'running' AND runs.attempt = u.attempt
                   AND runs.worker = u.worker
             RETURNING runs.id
         ), logged AS (
             INSERT INTO run_transitions (run_id, from_status, to_status, stage, step, attempt,
                                          worker, reason)
             SELECT run_id, 'running', to_status, stage, step, attempt, worker, reason
             FROM unnest($1::uuid[], $9::text[], $10::text[], $15::text[], $5::int4[], $7::text[],
                         $14::text[])
                  AS u(run_id, to_status, stage, step, attempt, worker, reason)
         )
         SELECT id FROM moved"
    );
    let updated = tx
        .query_typed(
            statement,
            &[
                (&runs, Type::UUID_ARRAY),
                (&names, Type::TEXT_ARRAY),
                (&positions, Type::INT4_ARRAY),
                (&step_statuses, Type::TEXT_ARRAY),
                (&attempts, Type::INT4_ARRAY),
                (&outputs, Type::JSONB_ARRAY),
                (&workers, Type::TEXT_ARRAY),
                (&started, Type::TIMESTAMPTZ_ARRAY),
                (&to_statuses, Type::TEXT_ARRAY),
                (&stages, Type::TEXT_ARRAY),
                (&outcomes, Type::TEXT_ARRAY),
                (&wake_tokens, Type::TEXT_ARRAY),
                (&next_attempts, Type::TIMESTAMPTZ_ARRAY),
                (&reasons, Type::TEXT_ARRAY),
                (&logged_steps, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    // Any run that was not `running` in this attempt fails the whole batch, which the caller
    // rolls back (the checkpoints and transitions above with it).
    if updated.len() != len {
        let moved_on: HashSet<Uuid> = updated.iter().map(|row| row.get(0)).collect();
        let run = runs
            .iter()
            .copied()
            .find(|r| !moved_on.contains(r))
            .unwrap_or_default();
        return Err(StoreError::Conflict {
            run,
            expected: RunStatus::Running,
        });
    }
    Ok(())
}
