//! One delivery, from bytes to ack: decode, claim the run, run the steps that have no checkpoint,
//! record each, and settle the message only after what it caused is committed.
//!
//! Every path ends in exactly one of:
//! - ack: the outcome is committed (and any message it sends on is confirmed), or the message is
//!   a duplicate of a run that finished or moved on;
//! - forward, then ack: a retry or a wait sends a copy into the broker's delay cascade, a dead
//!   letter goes to the dead-letter queue; the copy is confirmed before the run's new state is
//!   committed, and both before the ack, so a crash in between repeats work but loses nothing;
//! - requeue: Postgres or the broker failed us, or another live replica holds the run.

use crate::cancel::Cancellations;
use crate::children::{self, Directory};
use crate::concurrency_key::ConcurrencyKey;
use crate::dead_letter::{self, DeadLetter};
use crate::rate_limit::RateLimit;
use crate::run_locks::RunLocks;
use crate::run_log::StepLines;
use crate::settle::Pending;
use crate::state_writer::{StateWriter, WriteError};
use crate::step::{ErrorClass, Outbox, RunInfo, StepError, StepOutcome, code};
use crate::task::{FailedRun, StepInfo, TaskInput, TaskRunner};
use crate::task_metrics::{AttemptEnd, TaskMetrics};
use crate::writes::{
    ClaimRun, CompleteStep, DeadOnArrival, End, FailRun, MarkFailureHandled, ReleaseRun, RunFields,
    StartJoin, StillOwned,
};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warren_producer::relay::Relay;
use warren_producer::{PublishError, Publisher};
use warren_shared::contract::{self, Envelope, Outgoing, format_time, header};
use warren_shared::priority::Priority;
use warren_shared::retry::RetryPolicy;
use warren_shared::store::{self, AfterFailure, Claim, StoreError, outbox};
use warren_shared::topology::{DelayLevels, Destination, Topology};
use warren_shared::trace_context::{self, TraceHeaders};

/// How long a worker waits before handing back a message it could not settle, so that an outage
/// does not turn into a tight redelivery loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// How much later a delivery of a run that another live replica holds comes back to look
/// again. It waits in the broker's delay cascade, not here: a delivery waiting in the worker
/// would hold a run slot (and a prefetch place) that other work could use, for as long as the
/// owner's run or lease lasts. Short, because a crashed owner's runs are free to take as soon
/// as its lease lapses, and a copy costs one confirmed publish and one ack.
const BUSY_RECHECK: Duration = Duration::from_secs(3);

/// One attempt at a run: the run, when the attempt claimed it, and where its retry budget
/// started.
struct Attempt<'a> {
    run: &'a Arc<RunFields>,
    started: Instant,
    attempt_base: i32,
}

/// Which retry policy a failure is judged by, and how much of it is used.
struct Budget {
    policy: RetryPolicy,
    /// The step's own policy (its executions are carried on the retry copy).
    own: bool,
    /// Attempts (or executions of the step) made in this budget, the failing one included.
    used: u32,
}

/// Why a message goes back to the queue instead of being settled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Requeue {
    #[error("state write failed: {0}")]
    Write(#[from] WriteError),
    #[error("publish failed: {0}")]
    Publish(#[from] PublishError),
    /// The run is busy on another replica and this one is draining: the message goes straight
    /// back to the queue for a replica that stays, rather than 30 s into the delay queues.
    #[error("run busy on {owner} while this replica drains")]
    BusyWhileDraining { owner: String },
}

/// Everything a task's deliveries are processed with; one per task per replica.
pub(crate) struct Executor {
    pub(crate) task: Arc<dyn TaskRunner>,
    pub(crate) events: HashSet<String>,
    /// The pipeline, read once per replica rather than once per delivery.
    pub(crate) steps: Vec<StepInfo>,
    pub(crate) writer: StateWriter,
    pub(crate) publisher: Publisher,
    pub(crate) topology: Topology,
    pub(crate) worker_id: Arc<str>,
    pub(crate) task_id: Arc<str>,
    pub(crate) max_message_bytes: usize,
    pub(crate) run_locks: Arc<RunLocks>,
    pub(crate) retry: RetryPolicy,
    /// The longest one attempt may take: the task's own, or the replica's default.
    pub(crate) max_duration: Duration,
    /// The task's fleet-wide limit on starts, if it has one.
    pub(crate) rate_limit: Option<RateLimit>,
    /// The task's fleet-wide limit on runs of one key at once, if it has one.
    pub(crate) concurrency_key: Option<ConcurrencyKey>,
    pub(crate) delay_levels: Arc<DelayLevels>,
    pub(crate) idempotency_window: Duration,
    pub(crate) metrics: TaskMetrics,
    /// Cancelled when the replica starts draining: a delivery whose run is busy elsewhere stops
    /// waiting for it and hands the message back, so the drain is not held up by others' runs.
    pub(crate) draining: CancellationToken,
    /// Cancelled when the grace period is over: runs still in flight stop where they are and
    /// hand their messages back, before the replica gives up its connection and its lease.
    /// A run left going after that would race the replica that takes it over.
    pub(crate) abandon: CancellationToken,
    /// Sends the outbox rows this replica's commits write (events, children, wake-ups).
    pub(crate) relay: Relay,
    /// The tasks a step may start children of.
    pub(crate) directory: Arc<Directory>,
    /// The runs executing here, to stop the steps of those someone cancels.
    pub(crate) cancellations: Arc<Cancellations>,
    /// The most log lines a run keeps (0: none).
    pub(crate) max_log_lines: usize,
}

impl Executor {
    /// Processes a delivery and settles it. Never panics, whatever the message or the step does.
    pub(crate) async fn handle(&self, delivery: Delivery, pending: Pending) {
        let _in_flight = self.metrics.received();
        let decoded = contract::decode(
            delivery.routing_key.as_str(),
            &delivery.properties,
            &delivery.data,
            self.max_message_bytes,
        );
        let span = tracing::info_span!(
            "run",
            task = %self.task_id,
            run_id = tracing::field::Empty,
            event = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        if let Ok(envelope) = &decoded {
            // Before the span is first entered: a started span cannot take a parent.
            if let Some(traceparent) = &envelope.traceparent {
                let headers = TraceHeaders {
                    traceparent: traceparent.clone(),
                    tracestate: envelope.tracestate.clone(),
                };
                trace_context::follow(&span, &headers);
            }
            span.record("event", envelope.event.as_str());
            span.record("attempt", envelope.attempt);
        }
        let processed = tokio::select! {
            biased;
            () = self.abandon.cancelled() => {
                // Dropping `pending` hands the message back; the run resumes from its
                // checkpoints wherever it goes next.
                tracing::info!(task = %self.task_id, "grace period over: run abandoned, message handed back");
                return;
            }
            processed = self.process(&delivery, decoded).instrument(span) => processed,
        };
        if self.concurrency_key.is_some() {
            // A run of this task that left `running` handed its slot to the next run of its key
            // in the commit just made: send that run's held message now.
            self.relay.nudge();
        }
        match processed {
            // An ack that does not reach the broker means a redelivery, which the run's state
            // makes a no-op.
            Ok(()) => pending.ack(),
            Err(reason) => {
                tracing::warn!(%reason, task = %self.task_id, "message requeued");
                // The pause keeps an outage from becoming a redelivery loop; a draining
                // replica's hand-back goes to the replicas that stay, and need not wait.
                if !matches!(reason, Requeue::BusyWhileDraining { .. }) {
                    tokio::time::sleep(REQUEUE_PAUSE).await;
                }
                pending.requeue();
            }
        }
    }

    async fn process(
        &self,
        delivery: &Delivery,
        decoded: Result<Envelope, contract::ContractError>,
    ) -> Result<(), Requeue> {
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(e) => {
                return self
                    .dead_letter(delivery, DeadLetter::new(e.code(), e.to_string()))
                    .await;
            }
        };
        if !self.events.contains(&envelope.event) {
            let message = format!(
                "task {} does not handle event {:?} (it handles: {})",
                self.task_id,
                envelope.event,
                self.task.events().join(", ")
            );
            return self
                .dead_letter(delivery, DeadLetter::new("unknown_event", message))
                .await;
        }
        let decoded = self.task.decode_input(&envelope.payload);
        let waited_since = envelope.due_at.or(envelope.published_at);
        let run = Arc::new(self.run_fields(envelope));
        tracing::Span::current().record("run_id", tracing::field::display(run.id));
        let input = match decoded {
            Ok(input) => input,
            Err(e) => return self.dead_on_arrival(delivery, run, e).await,
        };

        if let Some(limit) = &self.rate_limit
            && !self.wait_for_turn(delivery, &run, limit).await?
        {
            return Ok(());
        }
        let _exclusive = self.run_locks.lock(run.id).await;
        let claimed = match self.claim(delivery, &run).await {
            Ok(claimed) => claimed,
            Err(Requeue::Write(WriteError::Store(e))) if e.is_refused_data() => {
                // What the contract let through and Postgres still refuses would be refused
                // on every delivery: dead-letter it once, now, with Postgres's own words.
                let message = format!("Postgres cannot store this message: {e}");
                return self
                    .dead_letter(delivery, DeadLetter::new("malformed_message", message))
                    .await;
            }
            Err(e) => {
                // The claim may have committed after all (its commit's outcome unknown): do
                // not keep a run this replica is not going to work on.
                self.release(&run).await;
                return Err(e);
            }
        };
        match claimed {
            Claim::Run {
                attempt_base,
                checkpoints,
                joined,
            } => {
                let waited = waited_since.and_then(|at| (Utc::now() - at).to_std().ok());
                self.metrics.started(waited);
                let attempt = Attempt {
                    run: &run,
                    started: Instant::now(),
                    attempt_base,
                };
                let cancel = self.cancellations.register(run.id);
                let result = self
                    .run_steps(
                        delivery,
                        &attempt,
                        &input,
                        (checkpoints, joined),
                        cancel.token(),
                    )
                    .await;
                if result.is_err() {
                    self.release(&run).await;
                }
                result
            }
            Claim::Finished {
                status,
                failure_handled,
                error_code,
                error_message,
            } => {
                tracing::debug!(run = %run.id, %status, "duplicate of a finished run; acknowledged");
                self.metrics.duplicate();
                if status == warren_shared::state::RunStatus::Dead && !failure_handled {
                    // A crash came between the run's death and its failure handler.
                    let code = error_code.unwrap_or_default();
                    let message = error_message.unwrap_or_default();
                    self.handle_failure(&run, &code, &message).await?;
                }
                Ok(())
            }
            Claim::Duplicate { original } => {
                tracing::info!(run = %run.id, %original, "idempotency key already used; no new run");
                self.metrics.duplicate();
                Ok(())
            }
            Claim::WaitingForKey => {
                // Its message waits in the outbox until a run of its key hands it a slot.
                tracing::debug!(run = %run.id, "concurrency key full: waiting for a slot");
                self.metrics.key_waited();
                Ok(())
            }
            Claim::Stale { current } => {
                tracing::debug!(run = %run.id, current, "superseded copy; acknowledged");
                self.metrics.duplicate();
                Ok(())
            }
            Claim::Busy { owner } if self.draining.is_cancelled() => {
                // Once per drain, this spends one of the message's deliveries (on brokers that
                // count requeues towards the delivery limit): cheaper than holding the drain
                // for up to an owner lease, or parking a run's only message for 30 s.
                Err(Requeue::BusyWhileDraining { owner })
            }
            Claim::Busy { owner } => {
                // Another live replica is still running this run (a duplicate, a message the
                // broker took back from a run longer than its consumer_timeout, or the run of a
                // replica whose lease has not lapsed yet). Look again later through the delay
                // cascade: a requeue would spend the poison budget, and waiting here a slot.
                tracing::debug!(run = %run.id, %owner, "run busy elsewhere; looking again later");
                let properties = copy_properties(
                    delivery,
                    &run,
                    u32::try_from(run.attempt).unwrap_or(1),
                    &keep_wake(&run),
                );
                self.send_later(BUSY_RECHECK, &delivery.data, properties)
                    .await
            }
        }
    }

    /// Whether this replica still owns the run, before it sends a copy of the run's message on
    /// (a retry, a dead letter, a wake-up) that the fenced write after it could not take back.
    /// A run lost to a takeover is left to its new owner, and this delivery acknowledged.
    pub(crate) async fn still_owned(&self, run: &Arc<RunFields>) -> Result<bool, Requeue> {
        let owned = self.writer.write(StillOwned(Arc::clone(run))).await?;
        if !owned {
            tracing::warn!(run = %run.id, "run was moved on or taken over by another replica; leaving it");
        }
        Ok(owned)
    }

    /// The message goes back to the queue: give up the run, so that the next replica takes it
    /// over at once. Best effort; without it, the run waits for this replica to get the
    /// message again or for its lease to lapse.
    async fn release(&self, run: &Arc<RunFields>) {
        if let Err(e) = self.writer.write(ReleaseRun(Arc::clone(run))).await {
            tracing::debug!(run = %run.id, error = %e, "could not release the run");
        }
    }

    /// Claims the run (see [`Claim`]), with a slot of its concurrency key if the task has one.
    async fn claim(&self, delivery: &Delivery, run: &Arc<RunFields>) -> Result<Claim, Requeue> {
        let claim = ClaimRun {
            run: Arc::clone(run),
            key: self.key_turn(delivery, run),
        };
        Ok(self.writer.write(claim).await?)
    }

    async fn run_steps(
        &self,
        delivery: &Delivery,
        attempt: &Attempt<'_>,
        input: &TaskInput,
        (checkpoints, joined): (Vec<store::Checkpoint>, Option<store::children::Joined>),
        cancel: &CancellationToken,
    ) -> Result<(), Requeue> {
        let run = attempt.run;
        let steps = &self.steps;
        let mut outputs: BTreeMap<String, Value> = checkpoints
            .into_iter()
            .map(|c| (c.step, c.output))
            .collect();
        if let Some(joined) = joined {
            match self.record_join(delivery, attempt, joined).await? {
                Some((step, output)) => {
                    outputs.insert(step, output);
                }
                None => return Ok(()),
            }
        }
        let attempt_no = u32::try_from(run.attempt).unwrap_or(1);
        let info_for_steps = Arc::new(RunInfo {
            id: run.id,
            task: self.task_id.to_string(),
            event: run.event.clone(),
            attempt: attempt_no,
            message_id: run.message_id.clone(),
            tenant: run.tenant.clone(),
            scheduled_for: warren_shared::schedule::slot_of_message_id(&run.message_id),
        });
        let deadline = tokio::time::Instant::now() + self.max_duration;
        for (index, info) in steps.iter().enumerate() {
            if outputs.contains_key(&info.name) {
                continue;
            }
            if let Some(limit) = &info.rate_limit
                && !self
                    .wait_for_step_turn(delivery, run, &info.name, limit)
                    .await?
            {
                return Ok(());
            }
            let started_at = Utc::now();
            let step_started = Instant::now();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let limit = info.timeout.map_or(left, |t| t.min(left));
            let outbox = Outbox::cancelled_by(cancel.clone(), self.max_log_lines);
            let step_span = tracing::info_span!("step", step = %info.name, index);
            let future = self.task.run_step(
                index,
                Arc::clone(&info_for_steps),
                input,
                Arc::new(outputs.clone()),
                outbox.clone(),
            );
            let guarded = AssertUnwindSafe(future).catch_unwind();
            let timed = tokio::time::timeout(limit, guarded.instrument(step_span.clone()));
            let finished = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                finished = timed => Some(finished),
            };
            let Some(finished) = finished else {
                // Dropping the step's future stopped it (an HTTP request aborted, a command's
                // process group terminated). The cancellation committed before it was
                // announced, so the run is no longer ours: settle the message, record nothing.
                self.metrics.step_cancelled();
                if !self.still_owned(run).await? {
                    tracing::info!(run = %run.id, step = %info.name, "step stopped: the run was cancelled");
                    return Ok(());
                }
                let error = StepError::retryable("interrupted", "the step was interrupted");
                let step = (info.name.clone(), i32::try_from(index).unwrap_or(i32::MAX));
                let logs = outbox.take_logs();
                return self
                    .fail(delivery, attempt, step, started_at, error, logs)
                    .await;
            };
            let mut result = match finished {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(StepError::retryable(code::PANIC, panic_message(&panic))),
                Err(_) => Err(StepError::timeout(format!(
                    "step {} was cancelled after {:.1} s",
                    info.name,
                    limit.as_secs_f64()
                ))),
            };
            let stage = outbox.stage().or_else(|| info.stage.clone());
            // What the step emitted goes to the outbox with its checkpoint.
            let emitted = match &result {
                Ok(_) => match self.emitted_messages(run, info, &outbox, &step_span) {
                    Ok(emitted) => emitted,
                    Err(error) => {
                        result = Err(error);
                        Vec::new()
                    }
                },
                Err(_) => Vec::new(),
            };
            let logs = outbox.take_logs();
            self.metrics
                .step(index, result.is_ok(), step_started.elapsed());
            let position = i32::try_from(index).unwrap_or(i32::MAX);
            let last = index + 1 == steps.len();
            let (output, end) = match result {
                Ok(StepOutcome::Continue(output)) if last => (output, End::Succeed),
                Ok(StepOutcome::Continue(output)) => (output, End::Continue),
                Ok(StepOutcome::Halt { outcome, output }) => (output, End::Halt(outcome)),
                Ok(StepOutcome::WaitFor { output, .. }) if last => (output, End::Succeed),
                Ok(StepOutcome::WaitFor { duration, output }) => {
                    if self
                        .topology
                        .delayed_route(duration, Destination::Task(&self.task_id))
                        .is_none()
                    {
                        (output, End::Continue)
                    } else if !self.still_owned(run).await? {
                        return Ok(());
                    } else {
                        // The copy that will wake the run goes out first: if we die before the
                        // commit, the redelivered original repeats this step, never loses the run.
                        let wake = [(header::WAKE, info.name.clone())];
                        let properties = copy_properties(delivery, run, attempt_no, &wake);
                        self.send_later(duration, &delivery.data, properties)
                            .await?;
                        let until = later(duration);
                        (output, End::Wait(info.name.clone(), until))
                    }
                }
                Ok(StepOutcome::WaitForChildren(children)) => {
                    let parked = self
                        .wait_for_children(
                            delivery,
                            attempt,
                            (info, position),
                            children,
                            (emitted, logs.clone()),
                            &step_span,
                        )
                        .await?;
                    match parked {
                        Ok(()) => return Ok(()),
                        Err(error) => {
                            let step = (info.name.clone(), position);
                            return self
                                .fail(delivery, attempt, step, started_at, error, logs)
                                .await;
                        }
                    }
                }
                Err(error) => {
                    let step = (info.name.clone(), position);
                    return self
                        .fail(delivery, attempt, step, started_at, error, logs)
                        .await;
                }
            };
            let goes_on = matches!(end, End::Continue);
            let ended = match &end {
                End::Continue => None,
                End::Succeed => Some((AttemptEnd::Succeeded, None)),
                End::Halt(outcome) => Some((AttemptEnd::Halted, Some(outcome.clone()))),
                End::Wait(..) => Some((AttemptEnd::Waiting, None)),
            };
            let write = CompleteStep {
                run: Arc::clone(run),
                step: info.name.clone(),
                position,
                stage,
                output: output.clone(),
                started_at,
                end,
                emitted,
                joined: false,
                logs: logs.clone(),
            };
            let sends = !write.emitted.is_empty() || (!goes_on && run.parent.is_some());
            match self.writer.write(write).await {
                Ok(()) if sends => self.relay.nudge(),
                Ok(()) => {}
                Err(WriteError::Store(StoreError::Conflict { .. })) => {
                    tracing::warn!(run = %run.id, "run was moved on or taken over by another replica; leaving it");
                    return Ok(());
                }
                Err(WriteError::Store(e)) if e.is_refused_data() => {
                    // Running the step again would produce the same output: a failure for good.
                    let error = StepError::fatal(
                        code::UNSTORABLE_OUTPUT,
                        format!(
                            "Postgres cannot store the output of step {}: {e}",
                            info.name
                        ),
                    );
                    let step = (info.name.clone(), position);
                    return self
                        .fail(delivery, attempt, step, started_at, error, logs)
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
            if let Some((end, detail)) = ended {
                self.metrics
                    .ended(end, attempt.started.elapsed(), detail.as_deref());
            }
            if !goes_on {
                return Ok(());
            }
            outputs.insert(info.name.clone(), output);
        }
        Ok(())
    }

    /// The outbox rows of the events a step emitted. Each gets the message id
    /// `{run}/{step}/{event}/{n}` (the n-th of that event by the step), so a step executed again
    /// emits the same ids and the downstream tasks make one run of each. An event no task
    /// listens to stays in the outbox, retried and visible (`warren runs show`, the outbox lag
    /// gauge), until a task that listens is deployed.
    fn emitted_messages(
        &self,
        run: &RunFields,
        step: &StepInfo,
        outbox: &Outbox,
        span: &tracing::Span,
    ) -> Result<Vec<outbox::Message>, StepError> {
        let emitted = outbox.take();
        if emitted.is_empty() {
            return Ok(Vec::new());
        }
        let trace = trace_context::of_span(span);
        let exchange = self.topology.events_exchange();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut messages = Vec::with_capacity(emitted.len());
        for event in &emitted {
            let n = seen.entry(event.event.as_str()).or_default();
            let mut outgoing = Outgoing::new();
            outgoing.message_id =
                contract::bounded_id(format!("{}/{}/{}/{n}", run.id, step.name, event.event));
            *n += 1;
            outgoing.tenant = run.tenant.clone();
            if let Some(trace) = &trace {
                outgoing.traceparent = Some(trace.traceparent.clone());
                outgoing.tracestate = trace.tracestate.clone();
            }
            let properties = outgoing
                .properties()
                .map_err(|e| StepError::fatal("invalid_event", e.to_string()))?;
            messages.push(outbox::Message {
                run_id: run.id,
                kind: outbox::Kind::Event,
                exchange: exchange.clone(),
                routing_key: event.event.clone(),
                body: event.body.clone(),
                properties,
            });
        }
        Ok(messages)
    }

    /// A step started children: park the run until they end. The children's runs and
    /// messages, the events the step emitted and the parent's held wake-up commit in one
    /// transaction with the run's move to `waiting_for_children`, and the message is then
    /// acknowledged: the parent holds no slot and no message while it waits. `Err` is the
    /// step's failure (a child of a task no replica runs).
    async fn wait_for_children(
        &self,
        delivery: &Delivery,
        attempt: &Attempt<'_>,
        (info, position): (&StepInfo, i32),
        requested: children::Children,
        (emitted, logs): (Vec<outbox::Message>, Option<Arc<StepLines>>),
        span: &tracing::Span,
    ) -> Result<Result<(), StepError>, Requeue> {
        let run = attempt.run;
        let trace = trace_context::of_span(span);
        if requested.runs.len() > children::MAX_CHILDREN {
            return Ok(Err(StepError::fatal(
                "too_many_children",
                format!(
                    "step {} asked for {} child runs; one step may start at most {} (fan out in stages)",
                    info.name,
                    requested.runs.len(),
                    children::MAX_CHILDREN
                ),
            )));
        }
        let parent = children::Parent {
            max_message_bytes: self.max_message_bytes,
            run: run.id,
            step: &info.name,
            generation: attempt.attempt_base,
            tenant: run.tenant.as_deref(),
            priority: Priority::of_headers(delivery.properties.headers().as_ref()),
            trace: trace.as_ref(),
            topology: &self.topology,
            directory: &self.directory,
        };
        let max_running = requested.max_running;
        let single = requested.single;
        let timeout = requested.timeout;
        let planned = match children::plan(&parent, requested.runs) {
            Ok(planned) => planned,
            Err(error) => return Ok(Err(error)),
        };
        let wake_token = format!("{}/children/{}", info.name, uuid::Uuid::now_v7());
        let attempt_no = u32::try_from(run.attempt).unwrap_or(1);
        let (exchange, routing_key) = self.topology.task_route(&self.task_id);
        let wake = outbox::Message {
            run_id: run.id,
            kind: outbox::Kind::Wake,
            exchange,
            routing_key,
            body: delivery.data.clone(),
            properties: copy_properties(
                delivery,
                run,
                attempt_no,
                &[(header::WAKE, wake_token.clone())],
            ),
        };
        let deadline = timeout.map(later);
        let count = planned.len();
        let write = StartJoin {
            run: Arc::clone(run),
            step: info.name.clone(),
            position,
            children: planned,
            max_running: max_running.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            single,
            deadline,
            wake,
            wake_token,
            emitted,
            logs,
        };
        match self.writer.write(write).await {
            Ok(_) => {}
            Err(WriteError::Store(StoreError::Conflict { .. })) => {
                tracing::warn!(run = %run.id, "run was moved on or taken over by another replica; leaving it");
                return Ok(Ok(()));
            }
            Err(WriteError::Store(e)) if e.is_refused_data() => {
                return Ok(Err(StepError::fatal(
                    code::UNSTORABLE_OUTPUT,
                    format!(
                        "Postgres cannot store the children of step {}: {e}",
                        info.name
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.relay.nudge();
        tracing::debug!(run = %run.id, step = %info.name, children = count, "waiting for children");
        self.metrics.children_started(count);
        self.metrics
            .ended(AttemptEnd::Waiting, attempt.started.elapsed(), None);
        Ok(Ok(()))
    }

    /// The run woke from waiting for its children: their outcomes become the waiting step's
    /// checkpoint (closing the join), and the run goes on after it, or succeeds when it was
    /// the last step. Returns the step and its output, or `None` when the run is done here.
    async fn record_join(
        &self,
        delivery: &Delivery,
        attempt: &Attempt<'_>,
        joined: store::children::Joined,
    ) -> Result<Option<(String, Value)>, Requeue> {
        let run = attempt.run;
        let index = usize::try_from(joined.position).unwrap_or(usize::MAX);
        let Some(info) = self.steps.get(index).filter(|s| s.name == joined.step) else {
            // The pipeline changed under a waiting run: it fails for good (dead-lettered, its
            // failure handler run, its join closed) rather than guess which step goes on.
            let error = StepError::fatal(
                "pipeline_changed",
                format!(
                    "the run waited for the children of step {:?}, which is no longer step {} of task {}",
                    joined.step, joined.position, self.task_id
                ),
            );
            let step = (joined.step.clone(), joined.position);
            self.fail(delivery, attempt, step, joined.started_at, error, None)
                .await?;
            return Ok(None);
        };
        let last = index + 1 == self.steps.len();
        self.metrics.joined(joined.timed_out);
        let write = CompleteStep {
            run: Arc::clone(run),
            step: joined.step.clone(),
            position: joined.position,
            stage: info.stage.clone(),
            output: joined.output.clone(),
            started_at: joined.started_at,
            end: if last { End::Succeed } else { End::Continue },
            emitted: Vec::new(),
            joined: true,
            logs: None,
        };
        match self.writer.write(write).await {
            Ok(()) => {}
            Err(WriteError::Store(StoreError::Conflict { .. })) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if last {
            if run.parent.is_some() {
                self.relay.nudge();
            }
            self.metrics
                .ended(AttemptEnd::Succeeded, attempt.started.elapsed(), None);
            return Ok(None);
        }
        Ok(Some((joined.step, joined.output)))
    }

    /// A step failed: retry later while the budget lasts and the error is worth it, otherwise
    /// dead-letter the message and mark the run dead. What the step logged is kept either way.
    async fn fail(
        &self,
        delivery: &Delivery,
        attempt: &Attempt<'_>,
        step: (String, i32),
        started_at: DateTime<Utc>,
        error: StepError,
        logs: Option<Arc<StepLines>>,
    ) -> Result<(), Requeue> {
        let run = attempt.run;
        let attempt_base = attempt.attempt_base;
        let retryable = self.task.classify(&error) == ErrorClass::Retryable;
        let budget = self.budget(run, attempt_base, &step.0);
        let delay = if retryable {
            budget
                .policy
                .delay_after(budget.used, rand::random::<f64>())
                .map(|delay| error.retry_after.map_or(delay, |least| delay.max(least)))
        } else {
            None
        };
        let first_failed_at = run.first_failed_at.unwrap_or(started_at);
        tracing::info!(run = %run.id, step = %step.0, code = %error.code, attempt = run.attempt, retryable, ?delay, "step failed");
        if !self.still_owned(run).await? {
            return Ok(());
        }

        let after = match delay {
            Some(delay) => {
                let next_attempt = run.attempt + 1;
                let mut carried = vec![(header::FIRST_FAILED_AT, format_time(first_failed_at))];
                if budget.own {
                    let executions = budget.used.saturating_add(1);
                    carried.push((header::STEP_ATTEMPT, format!("{executions}/{}", step.0)));
                }
                let properties = copy_properties(
                    delivery,
                    run,
                    u32::try_from(next_attempt).unwrap_or(u32::MAX),
                    &carried,
                );
                self.send_later(delay, &delivery.data, properties).await?;
                let at = later(delay);
                AfterFailure::Retry { next_attempt, at }
            }
            None => {
                let letter = DeadLetter::new(error.code.clone(), error.message.clone())
                    .for_run(run)
                    .failed_at(first_failed_at);
                self.dead_letter(delivery, letter).await?;
                AfterFailure::Dead
            }
        };
        let write = FailRun {
            run: Arc::clone(run),
            after,
            code: error.code.clone(),
            message: error.message.clone(),
            step: Some(step),
            step_started_at: Some(started_at),
            logs,
        };
        match self.writer.write(write).await {
            Ok(()) => {}
            Err(WriteError::Store(StoreError::Conflict { .. })) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if matches!(after, AfterFailure::Dead) && run.parent.is_some() {
            // A child's death counts in its parent's join.
            self.relay.nudge();
        }
        let end = match after {
            AfterFailure::Dead => AttemptEnd::Dead,
            AfterFailure::Retry { .. } => AttemptEnd::Retried,
        };
        self.metrics
            .ended(end, attempt.started.elapsed(), Some(&error.code));
        if matches!(after, AfterFailure::Dead) {
            self.handle_failure(run, &error.code, &error.message)
                .await?;
        }
        Ok(())
    }

    /// The retry budget a failure of `step` spends: the step's own, counted by its executions
    /// (carried on the retry copies of its message), or the run's, counted by its attempts.
    fn budget(&self, run: &RunFields, attempt_base: i32, step: &str) -> Budget {
        let own = self
            .steps
            .iter()
            .find(|s| s.name == step)
            .and_then(|s| s.retry);
        match own {
            Some(policy) => Budget {
                policy,
                own: true,
                used: match &run.step_attempt {
                    Some((carried, executions)) if carried == step => *executions,
                    _ => 1,
                },
            },
            None => Budget {
                policy: self.retry,
                own: false,
                used: u32::try_from(run.attempt - attempt_base)
                    .unwrap_or(1)
                    .max(1),
            },
        }
    }

    /// The payload does not fit the task: dead-letter it, record the run dead, run the handler.
    async fn dead_on_arrival(
        &self,
        delivery: &Delivery,
        run: Arc<RunFields>,
        error: String,
    ) -> Result<(), Requeue> {
        let message = format!(
            "payload does not match the input of task {}: {error}",
            self.task_id
        );
        let letter = DeadLetter::new(code::INVALID_INPUT, message.clone()).for_run(&run);
        self.dead_letter(delivery, letter).await?;
        let handled = self
            .writer
            .write(DeadOnArrival {
                run: Arc::clone(&run),
                code: code::INVALID_INPUT.into(),
                message: message.clone(),
            })
            .await?;
        if run.parent.is_some() {
            self.relay.nudge();
        }
        if !handled {
            self.handle_failure(&run, code::INVALID_INPUT, &message)
                .await?;
        }
        Ok(())
    }

    /// Runs the task's failure handler for a dead run and records that it ran. A crash before
    /// the record runs it again on redelivery: at least once, and once in the absence of crashes.
    async fn handle_failure(
        &self,
        run: &RunFields,
        code: &str,
        message: &str,
    ) -> Result<(), Requeue> {
        let Some(handler) = self.task.failure_handler() else {
            return Ok(());
        };
        let failed = FailedRun {
            run_id: run.id,
            task: self.task_id.to_string(),
            message_id: run.message_id.clone(),
            event: run.event.clone(),
            tenant: run.tenant.clone(),
            attempts: run.attempt,
            code: code.to_owned(),
            message: message.to_owned(),
            input: run
                .input
                .as_deref()
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
        };
        if let Err(panic) = AssertUnwindSafe(handler(failed)).catch_unwind().await {
            tracing::error!(run = %run.id, panic = %panic_message(&panic), "failure handler panicked");
        }
        self.writer.write(MarkFailureHandled(run.id)).await?;
        Ok(())
    }

    /// Sends a copy of the message back to this task's queue after `delay`, through the broker's
    /// delay cascade (or at once for a delay under half a second), and waits for the confirm.
    pub(crate) async fn send_later(
        &self,
        delay: Duration,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Requeue> {
        let (exchange, routing_key) = self
            .topology
            .delayed_route(delay, Destination::Task(&self.task_id))
            .unwrap_or_else(|| self.topology.task_route(&self.task_id));
        self.delay_levels
            .ensure(&self.topology, self.publisher.channel(), &exchange)
            .await
            .map_err(PublishError::from)?;
        let due = later(delay);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            header::DUE_AT.into(),
            lapin::types::AMQPValue::LongString(format_time(due).into_bytes().into()),
        );
        self.publisher
            .send(
                &exchange,
                &routing_key,
                body,
                properties.with_headers(headers),
            )
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, letter: DeadLetter) -> Result<(), Requeue> {
        tracing::info!(task = %self.task_id, reason = %letter.code, message = %letter.message, "dead-lettering message");
        let properties = dead_letter::properties(delivery, &self.task_id, &letter);
        self.publisher
            .send(
                "",
                &self.topology.dead_letter_queue(&self.task_id),
                &delivery.data,
                properties,
            )
            .await?;
        self.metrics.dead_lettered(&letter.code);
        Ok(())
    }

    fn run_fields(&self, envelope: Envelope) -> RunFields {
        let message_id = envelope
            .message_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        RunFields {
            id: store::run_id(&self.task_id, &message_id),
            message_id,
            task: Arc::clone(&self.task_id),
            event: envelope.event,
            input: Some(envelope.payload),
            attempt: i32::try_from(envelope.attempt).unwrap_or(i32::MAX),
            idempotency_key: envelope.idempotency_key,
            tenant: envelope.tenant,
            published_at: envelope.published_at,
            worker: Arc::clone(&self.worker_id),
            wake: envelope.wake,
            first_failed_at: envelope.first_failed_at,
            idempotency_window: self.idempotency_window,
            step_attempt: envelope.step_attempt,
            parent: envelope.parent,
        }
    }
}

/// The properties of a copy of the run's message that Warren sends on (a retry, a wake-up, a
/// look-again): the original's, with the identity Warren gave the run. A message published
/// without a message id got one invented on its first delivery; a copy without it would start
/// a second run instead of resuming this one.
pub(crate) fn copy_properties(
    delivery: &Delivery,
    run: &RunFields,
    attempt: u32,
    extra: &[(&str, String)],
) -> BasicProperties {
    contract::forwarded_properties(&delivery.properties, &run.event, attempt, extra)
        .with_message_id(run.message_id.as_str().into())
}

/// The wake token a delivery carries, for a copy of it sent back to look again later: without
/// it, a copy of a wake-up would no longer end the wait it was sent to end, and the run would
/// stay parked.
pub(crate) fn keep_wake(run: &RunFields) -> Vec<(&'static str, String)> {
    run.wake
        .iter()
        .map(|token| (header::WAKE, token.clone()))
        .collect()
}

/// Now plus `delay`, saturating at the latest time chrono represents rather than panicking on a
/// delay too long to add (a step may ask for any `Duration`).
pub(crate) fn later(delay: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("step panicked: {text}")
}
