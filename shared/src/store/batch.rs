//! Set-based forms of the two hottest writes, for a group commit that carries many of them: the
//! first claim of a new run, and a completed step. Each is a handful of statements over arrays
//! (`unnest`) whatever the batch size, where the one-write forms cost several statements per
//! run; Postgres's per-statement overhead was most of its time at full load.
//!
//! They do exactly what [`super::claim`] (for a run that does not exist yet) and
//! [`super::complete_step`] do, row for row. Anything unusual falls back to those: a claim that
//! finds its run already there, and a batch in which one completion no longer owns its run (the
//! whole batch then fails, and the writer commits its writes one by one).

use super::{Change, NewRun, StepDone, StepEnd, StoreError};
use crate::state::{self, RunStatus};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use std::collections::HashSet;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// Inserts the runs that do not exist yet as `running`, with their first transition. Returns,
/// for each, whether it was inserted; the others need the full [`super::claim`]. Runs with an
/// idempotency key must go through [`super::claim`].
pub async fn start_new_runs(
    client: &impl GenericClient,
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
    let insert = client
        .prepare_cached(
            "INSERT INTO runs (id, message_id, task, event, status, attempt, input, tenant, worker,
                               published_at, started_at)
             SELECT id, message_id, task, event, 'running', attempt, input, tenant, worker,
                    published_at, now()
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::jsonb[],
                         $7::text[], $8::text[], $9::timestamptz[])
                  AS u(id, message_id, task, event, attempt, input, tenant, worker, published_at)
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .await?;
    let inserted: HashSet<Uuid> = client
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
    let started: Vec<&NewRun<'_>> = runs.iter().filter(|r| inserted.contains(&r.id)).collect();
    if !started.is_empty() {
        let log = client
            .prepare_cached(
                "INSERT INTO run_transitions (run_id, from_status, to_status, attempt, worker, reason)
                 SELECT run_id, NULL, 'running', attempt, worker, 'started'
                 FROM unnest($1::uuid[], $2::int4[], $3::text[]) WITH ORDINALITY
                      AS u(run_id, attempt, worker, n)
                 ORDER BY n",
            )
            .await?;
        let ids: Vec<Uuid> = started.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = started.iter().map(|r| r.attempt).collect();
        let workers: Vec<&str> = started.iter().map(|r| r.worker).collect();
        client.execute(&log, &[&ids, &attempts, &workers]).await?;
    }
    Ok(runs.iter().map(|r| inserted.contains(&r.id)).collect())
}

/// Records completed steps: their checkpoints, their runs' new states, and the transitions.
/// Fails with [`StoreError::Conflict`] if any run is no longer `running` in that attempt, and
/// the caller rolls the whole transaction back.
pub async fn complete_steps(
    client: &impl GenericClient,
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
    // Transitions, in order: each step's own, then its run's end when there is one.
    let mut log = TransitionLog::default();
    for (done, change) in steps {
        let (to, outcome, stage, wake) = super::step_end(done.end, change.stage);
        state::check(Some(RunStatus::Running), RunStatus::Running)?;
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
        log.push(done.run, RunStatus::Running, change);
        if to != RunStatus::Running {
            let end = Change {
                reason: super::end_reason(done.end),
                stage: None,
                ..*change
            };
            log.push(done.run, to, &end);
        }
    }
    let upsert = client
        .prepare_cached(
            concat!(
                "INSERT INTO run_steps (run_id, step, position, status, attempt, output, worker,
                                        started_at, finished_at)
                 SELECT run_id, step, position, status, attempt, output, worker, started_at, now()
                 FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::int4[], $6::jsonb[],
                             $7::text[], $8::timestamptz[])
                      AS u(run_id, step, position, status, attempt, output, worker, started_at) ",
                step_checkpoint_upsert!()
            ),
        )
        .await?;
    client
        .execute(
            &upsert,
            &[
                &runs,
                &names,
                &positions,
                &step_statuses,
                &attempts,
                &outputs,
                &workers,
                &started,
            ],
        )
        .await?;
    // Not a cached statement: a join with `unnest` under a generic plan (which Postgres picks
    // for a statement prepared once and run many times) turned out several times slower.
    let updated = client
        .query(
            "UPDATE runs SET status = u.status, stage = coalesce(u.stage, runs.stage),
                    outcome = u.outcome,
                    output = CASE WHEN u.status IN ('succeeded', 'halted') THEN u.output ELSE runs.output END,
                    finished_at = CASE WHEN u.status IN ('succeeded', 'halted') THEN now() ELSE NULL END,
                    wake_token = u.wake_token, next_attempt_at = u.next_attempt_at, updated_at = now()
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::int4[],
                         $7::text[], $8::timestamptz[])
                  AS u(id, status, stage, outcome, output, attempt, wake_token, next_attempt_at)
             WHERE runs.id = u.id AND runs.status = 'running' AND runs.attempt = u.attempt
             RETURNING runs.id",
            &[
                &runs,
                &to_statuses,
                &stages,
                &outcomes,
                &outputs,
                &attempts,
                &wake_tokens,
                &next_attempts,
            ],
        )
        .await?;
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
    log.insert(client).await
}

/// Transitions to insert in one statement, in order.
#[derive(Default)]
struct TransitionLog<'a> {
    runs: Vec<Uuid>,
    to: Vec<&'static str>,
    stages: Vec<Option<&'a str>>,
    steps: Vec<Option<&'a str>>,
    attempts: Vec<i32>,
    workers: Vec<&'a str>,
    reasons: Vec<&'a str>,
}

impl<'a> TransitionLog<'a> {
    /// A transition from `running` to `to`.
    fn push(&mut self, run: Uuid, to: RunStatus, change: &Change<'a>) {
        self.runs.push(run);
        self.to.push(to.as_str());
        self.stages.push(change.stage);
        self.steps.push(change.step);
        self.attempts.push(change.attempt);
        self.workers.push(change.worker);
        self.reasons.push(change.reason);
    }

    async fn insert(&self, client: &impl GenericClient) -> Result<(), StoreError> {
        let insert = client
            .prepare_cached(
                "INSERT INTO run_transitions (run_id, from_status, to_status, stage, step, attempt,
                                              worker, reason)
                 SELECT run_id, 'running', to_status, stage, step, attempt, worker, reason
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[],
                             $6::text[], $7::text[]) WITH ORDINALITY
                      AS u(run_id, to_status, stage, step, attempt, worker, reason, n)
                 ORDER BY n",
            )
            .await?;
        client
            .execute(
                &insert,
                &[
                    &self.runs,
                    &self.to,
                    &self.stages,
                    &self.steps,
                    &self.attempts,
                    &self.workers,
                    &self.reasons,
                ],
            )
            .await?;
        Ok(())
    }
}
