//! The state writes a run makes, as values the group-commit writer can batch. Each one owns its
//! data and calls one function of `warren_shared::store`, where the SQL lives.

use crate::run_log::StepLines;
use crate::state_writer::Write;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;
use uuid::Uuid;
use warren_shared::state::RunStatus;
use warren_shared::store::{
    self, AfterFailure, Change, Claim, Failure, NewRun, StepDone, StepEnd, StoreError, children,
    outbox,
};

/// What a run knows about itself from its message; shared by all of its writes.
#[derive(Debug)]
pub(crate) struct RunFields {
    pub(crate) id: Uuid,
    pub(crate) message_id: String,
    pub(crate) task: Arc<str>,
    pub(crate) event: String,
    pub(crate) input: Option<Box<RawValue>>,
    pub(crate) attempt: i32,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) published_at: Option<DateTime<Utc>>,
    pub(crate) worker: Arc<str>,
    pub(crate) wake: Option<String>,
    pub(crate) first_failed_at: Option<DateTime<Utc>>,
    pub(crate) idempotency_window: std::time::Duration,
    /// The step whose own retry budget this message carries, and its executions so far.
    pub(crate) step_attempt: Option<(String, u32)>,
    /// The run that started this one, when it is a child: its end counts in that run's join.
    pub(crate) parent: Option<Uuid>,
}

impl RunFields {
    /// In the transaction of a write that ends the run: a child's end counts in its parent's
    /// join (and may start the next child or wake the parent).
    async fn ended(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        if self.parent.is_some() {
            children::child_ended(tx, self.id).await?;
        }
        Ok(())
    }
}

impl RunFields {
    fn new_run(&self) -> NewRun<'_> {
        NewRun {
            id: self.id,
            message_id: &self.message_id,
            task: &self.task,
            event: &self.event,
            input: self.input.as_deref(),
            attempt: self.attempt,
            idempotency_key: self.idempotency_key.as_deref(),
            tenant: self.tenant.as_deref(),
            published_at: self.published_at,
            worker: &self.worker,
            wake: self.wake.as_deref(),
            idempotency_window: self.idempotency_window,
        }
    }
}

/// Create or take over the run.
pub(crate) struct ClaimRun {
    pub(crate) run: Arc<RunFields>,
    /// For a task with a concurrency key: the run's key and what waiting for it needs.
    pub(crate) key: Option<KeyTurn>,
}

/// A claim's part in a concurrency key (see `store::concurrency`).
pub(crate) struct KeyTurn {
    pub(crate) key: String,
    pub(crate) max_running: i32,
    /// The copy of the message held in the outbox while the run waits for a slot.
    pub(crate) held: outbox::Message,
}

impl Write for ClaimRun {
    type Output = Claim;
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let admission = self.key.as_ref().map(|k| store::concurrency::Admission {
                key: &k.key,
                max_running: k.max_running,
                held: &k.held,
            });
            store::claim(tx, &self.run.new_run(), admission.as_ref()).await
        })
    }

    /// A run without an idempotency key to reserve or a concurrency key to admit it starts in
    /// the set-based form when it is new.
    fn batchable(&self) -> Option<Batchable<'_>> {
        (self.run.idempotency_key.is_none() && self.key.is_none())
            .then_some(Batchable::Claim(&self.run))
    }

    fn batched_output(&self) -> Option<Claim> {
        Some(Claim::Run {
            attempt_base: 0,
            checkpoints: Vec::new(),
            joined: None,
        })
    }

    fn key_row(&self) -> Option<(&str, i32)> {
        self.key.as_ref().map(|k| (k.key.as_str(), k.max_running))
    }
}

/// A write in one of the set-based forms of the hot path.
pub(crate) enum Batchable<'a> {
    /// The first claim of a run that may not exist yet.
    Claim(&'a RunFields),
    /// A completed step.
    Step(&'a CompleteStep),
}

/// Records a group commit's claims and completed steps in the set-based forms, the statements
/// pipelined: new runs' claims, child runs' claims (their parent created them `queued`), the
/// completed steps, the lines those steps logged (no statement when none did), and the ends of
/// the child runs those steps finished, counted in their parents' joins. Returns, for each claim, whether it started its run (the others need the
/// full claim).
pub(crate) async fn apply_batched(
    tx: &Transaction<'_>,
    claims: &[&RunFields],
    steps: &[&CompleteStep],
) -> Result<Vec<bool>, StoreError> {
    let (children, runs): (Vec<&RunFields>, Vec<&RunFields>) =
        claims.iter().partition(|run| run.parent.is_some());
    let children: Vec<NewRun<'_>> = children.iter().map(|run| run.new_run()).collect();
    let runs: Vec<NewRun<'_>> = runs.iter().map(|run| run.new_run()).collect();
    let reasons: Vec<String> = steps.iter().map(|s| s.reason()).collect();
    let parts: Vec<(StepDone<'_>, Change<'_>)> = steps
        .iter()
        .zip(&reasons)
        .map(|(step, reason)| step.parts(reason))
        .collect();
    let ended: Vec<Uuid> = steps
        .iter()
        .filter(|step| step.ends_run() && step.run.parent.is_some())
        .map(|step| step.run.id)
        .collect();
    let logged: Vec<store::logs::NewLines<'_>> =
        steps.iter().filter_map(|step| step.new_lines()).collect();
    let start = async {
        if runs.is_empty() {
            Ok(Vec::new())
        } else {
            store::start_new_runs(tx, &runs).await
        }
    };
    let start_children = async {
        if children.is_empty() {
            Ok(Vec::new())
        } else {
            store::start_queued_children(tx, &children).await
        }
    };
    let complete = async {
        if parts.is_empty() {
            Ok(())
        } else {
            store::complete_steps(tx, &parts).await
        }
    };
    let log = async {
        if logged.is_empty() {
            Ok(())
        } else {
            store::logs::append(tx, &logged).await
        }
    };
    // Last, so that the joins' rows are locked as briefly as the batch allows.
    let count_ends = async {
        children::children_ended(tx, &ended).await?;
        Ok(())
    };
    let (inserted, started, (), (), ()) =
        futures::try_join!(start, start_children, complete, log, count_ends)?;
    let (mut inserted, mut started) = (inserted.into_iter(), started.into_iter());
    Ok(claims
        .iter()
        .map(|run| {
            let next = if run.parent.is_some() {
                started.next()
            } else {
                inserted.next()
            };
            next.unwrap_or(false)
        })
        .collect())
}

/// How a completed step ends the run, owned.
#[derive(Debug, Clone)]
pub(crate) enum End {
    Continue,
    Succeed,
    Halt(String),
    /// Wait, to be woken by a message carrying this token, due at this time.
    Wait(String, DateTime<Utc>),
}

/// A step finished: store its checkpoint and stage, and the run's end if it is the last.
pub(crate) struct CompleteStep {
    pub(crate) run: Arc<RunFields>,
    pub(crate) step: String,
    pub(crate) position: i32,
    pub(crate) stage: Option<String>,
    pub(crate) output: Value,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) end: End,
    /// The events the step emitted, to the outbox with its checkpoint.
    pub(crate) emitted: Vec<outbox::Message>,
    /// The step is a join whose outcome this checkpoint records: the join closes with it.
    pub(crate) joined: bool,
    /// The lines the step logged, if any.
    pub(crate) logs: Option<Arc<StepLines>>,
}

impl CompleteStep {
    /// The store's view of the lines the step logged, if it logged any.
    fn new_lines(&self) -> Option<store::logs::NewLines<'_>> {
        let logs = self.logs.as_deref()?;
        Some(logs.new_lines(self.run.id, &self.step, self.run.attempt))
    }

    /// Whether the run ends with this step.
    fn ends_run(&self) -> bool {
        matches!(self.end, End::Succeed | End::Halt(_))
    }

    fn reason(&self) -> String {
        format!("step {} succeeded", self.step)
    }

    /// The store's view of this write, with `reason` (from [`CompleteStep::reason`]).
    fn parts<'a>(&'a self, reason: &'a str) -> (StepDone<'a>, Change<'a>) {
        let end = match &self.end {
            End::Continue => StepEnd::Continue,
            End::Succeed => StepEnd::Succeed,
            End::Halt(outcome) => StepEnd::Halt { outcome },
            End::Wait(token, until) => StepEnd::Wait {
                token,
                until: *until,
            },
        };
        let change = Change {
            attempt: self.run.attempt,
            worker: &self.run.worker,
            reason,
            step: Some(&self.step),
            stage: self.stage.as_deref(),
        };
        let done = StepDone {
            run: self.run.id,
            step: &self.step,
            position: self.position,
            output: &self.output,
            started_at: self.started_at,
            end,
        };
        (done, change)
    }
}

impl Write for CompleteStep {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let reason = self.reason();
            let (done, change) = self.parts(&reason);
            store::complete_step(tx, &done, &change).await?;
            if let Some(lines) = self.new_lines() {
                store::logs::append(tx, &[lines]).await?;
            }
            if self.joined {
                children::close_join(tx, self.run.id).await?;
            }
            outbox::insert(tx, &self.emitted, None).await?;
            if self.ends_run() {
                self.run.ended(tx).await?;
            }
            Ok(())
        })
    }

    fn lock_key(&self) -> Option<Uuid> {
        self.run.parent.filter(|_| self.ends_run())
    }

    /// The set-based form records the checkpoint, the run's change and a child run's end in
    /// its parent's join: a step with more to write (events, a join) goes through
    /// [`store::complete_step`].
    fn batchable(&self) -> Option<Batchable<'_>> {
        let plain = self.emitted.is_empty() && !self.joined;
        plain.then_some(Batchable::Step(self))
    }

    fn batched_output(&self) -> Option<()> {
        Some(())
    }
}

/// The run's attempt failed: record the error and move it to `dead` or `retrying`.
pub(crate) struct FailRun {
    pub(crate) run: Arc<RunFields>,
    pub(crate) after: AfterFailure,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) step: Option<(String, i32)>,
    pub(crate) step_started_at: Option<DateTime<Utc>>,
    /// The lines the failing step logged, if any: kept, for whoever reads why it failed.
    pub(crate) logs: Option<Arc<StepLines>>,
}

impl Write for FailRun {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let reason = format!("{}: {}", self.code, self.message);
            let change = Change {
                attempt: self.run.attempt,
                worker: &self.run.worker,
                reason: &reason,
                step: self.step.as_ref().map(|(s, _)| s.as_str()),
                stage: None,
            };
            let failure = Failure {
                code: &self.code,
                message: &self.message,
                step: self.step.as_ref().map(|(s, p)| (s.as_str(), *p)),
                step_started_at: self.step_started_at,
            };
            store::fail_run(tx, self.run.id, self.after, &failure, &change).await?;
            if let (Some(logs), Some((step, _))) = (&self.logs, &self.step) {
                let lines = logs.new_lines(self.run.id, step, self.run.attempt);
                store::logs::append(tx, &[lines]).await?;
            }
            if matches!(self.after, AfterFailure::Dead) {
                // A run that dies while waiting for children (its wake-up found its pipeline
                // changed) starts no more of them.
                children::close_join(tx, self.run.id).await?;
                self.run.ended(tx).await?;
            }
            Ok(())
        })
    }

    fn lock_key(&self) -> Option<Uuid> {
        self.run
            .parent
            .filter(|_| matches!(self.after, AfterFailure::Dead))
    }
}

/// A step started children: park the run until they end (see `store::children`).
pub(crate) struct StartJoin {
    pub(crate) run: Arc<RunFields>,
    pub(crate) step: String,
    pub(crate) position: i32,
    pub(crate) children: Vec<children::NewChild>,
    pub(crate) max_running: Option<i32>,
    pub(crate) single: bool,
    pub(crate) deadline: Option<DateTime<Utc>>,
    pub(crate) wake: outbox::Message,
    pub(crate) wake_token: String,
    /// Events the step emitted besides.
    pub(crate) emitted: Vec<outbox::Message>,
    /// The lines the step logged, if any.
    pub(crate) logs: Option<Arc<StepLines>>,
}

impl Write for StartJoin {
    /// How many children started now.
    type Output = usize;
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let reason = format!(
                "step {} waits for {} child run(s)",
                self.step,
                self.children.len()
            );
            let change = Change {
                attempt: self.run.attempt,
                worker: &self.run.worker,
                reason: &reason,
                step: Some(&self.step),
                // The step reaches its stage when its children are joined.
                stage: None,
            };
            let join = children::NewJoin {
                parent: self.run.id,
                step: &self.step,
                position: self.position,
                children: &self.children,
                max_running: self.max_running,
                single: self.single,
                deadline: self.deadline,
                wake: &self.wake,
                wake_token: &self.wake_token,
                tenant: self.run.tenant.as_deref(),
            };
            let started = children::start_join(tx, &join, &change).await?;
            outbox::insert(tx, &self.emitted, None).await?;
            if let Some(logs) = &self.logs {
                let lines = logs.new_lines(self.run.id, &self.step, self.run.attempt);
                store::logs::append(tx, &[lines]).await?;
            }
            Ok(started)
        })
    }
}

/// A run whose message can never run: record it as dead right away.
pub(crate) struct DeadOnArrival {
    pub(crate) run: Arc<RunFields>,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl Write for DeadOnArrival {
    /// Whether the failure handler already ran.
    type Output = bool;
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let handled =
                store::dead_on_arrival(tx, &self.run.new_run(), &self.code, &self.message).await?;
            // Only a child that is dead now has ended: a copy of the message of a child that
            // runs elsewhere (decoded by a replica with another schema) has not.
            if self.run.parent.is_some()
                && store::status(tx, self.run.id).await? == Some(RunStatus::Dead)
            {
                self.run.ended(tx).await?;
            }
            Ok(handled)
        })
    }

    fn lock_key(&self) -> Option<Uuid> {
        self.run.parent
    }
}

/// Reads whether this replica still owns the run (see `store::owns`).
pub(crate) struct StillOwned(pub(crate) Arc<RunFields>);

impl Write for StillOwned {
    type Output = bool;
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(store::owns(tx, self.0.id, self.0.attempt, &self.0.worker))
    }
}

/// The task's failure handler ran for the run's death.
pub(crate) struct MarkFailureHandled(pub(crate) Uuid);

/// The replica hands the run's message back: give up ownership (see `store::release_run`).
pub(crate) struct ReleaseRun(pub(crate) Arc<RunFields>);

impl Write for ReleaseRun {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(store::release_run(tx, self.0.id, &self.0.worker))
    }
}

impl Write for MarkFailureHandled {
    type Output = ();
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(store::mark_failure_handled(tx, self.0))
    }
}

/// Reserves a start of a rate-limited key (see `store::rate_limits`).
pub(crate) struct ReserveStart {
    pub(crate) key: String,
    pub(crate) interval: std::time::Duration,
    pub(crate) hold: std::time::Duration,
}

impl Write for ReserveStart {
    type Output = store::rate_limits::Reservation;
    fn apply<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
    ) -> BoxFuture<'a, Result<store::rate_limits::Reservation, StoreError>> {
        Box::pin(store::rate_limits::reserve_start(
            tx,
            &self.key,
            self.interval,
            self.hold,
        ))
    }
}

/// A run waits for its rate-limited step's turn (see `store::rate_limits`).
pub(crate) struct WaitForStepTurn {
    pub(crate) run: Arc<RunFields>,
    pub(crate) step: String,
    pub(crate) token: String,
    pub(crate) until: DateTime<Utc>,
}

impl Write for WaitForStepTurn {
    type Output = bool;
    fn apply<'a>(&'a self, tx: &'a Transaction<'a>) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let reason = format!("step {} waits for its turn under its rate limit", self.step);
            let change = Change {
                attempt: self.run.attempt,
                worker: &self.run.worker,
                reason: &reason,
                step: Some(&self.step),
                stage: None,
            };
            store::rate_limits::wait_for_step_turn(
                tx,
                self.run.id,
                &self.token,
                self.until,
                &change,
            )
            .await
        })
    }
}
