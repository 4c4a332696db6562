//! Steps: the unit of work and of checkpointing.
//!
//! A step is anything that implements [`Step`]: a Rust closure today, an HTTP call to another
//! service or an external command tomorrow. It gets a [`StepContext`] (the run's typed input and
//! the outputs of the steps before it) and answers with a [`StepOutcome`] or a [`StepError`].
//! Once a step's output is committed to Postgres it is never run again for that run.

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use warren_shared::retry::RetryPolicy;

/// The run a step executes for: what a step running outside the worker (an HTTP endpoint, a
/// command) is told about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    /// The run.
    pub id: Uuid,
    /// Its task.
    pub task: String,
    /// The event that started it.
    pub event: String,
    /// The attempt being executed (1 for the first).
    pub attempt: u32,
    /// The message's identity.
    pub message_id: String,
    /// The tenant, if the message named one.
    pub tenant: Option<String>,
    /// On a run a schedule fired: the slot it fired for (docs/schedules.md), however late the
    /// run starts or how often it is retried. Left out of a step request when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a step gets: the run's identity, its typed input, and what earlier steps returned.
pub struct StepContext<I> {
    /// The run.
    pub run_id: Uuid,
    /// The attempt being executed (1 for the first).
    pub attempt: u32,
    run: Arc<RunInfo>,
    step: Arc<str>,
    input: Arc<I>,
    outputs: Arc<BTreeMap<String, Value>>,
    outbox: Outbox,
}

impl<I> Clone for StepContext<I> {
    fn clone(&self) -> Self {
        StepContext {
            run_id: self.run_id,
            attempt: self.attempt,
            run: Arc::clone(&self.run),
            step: Arc::clone(&self.step),
            input: Arc::clone(&self.input),
            outputs: Arc::clone(&self.outputs),
            outbox: self.outbox.clone(),
        }
    }
}

/// An event a step asked to publish.
#[derive(Debug, Clone)]
pub(crate) struct Emitted {
    pub(crate) event: String,
    pub(crate) body: Vec<u8>,
}

/// The events a step emits. They are written to the outbox in the transaction of the step's
/// checkpoint and published from there once it commits: an event goes out if and only if the
/// step's checkpoint commits, and a step that runs again (a crash before its checkpoint) emits
/// the same message ids, so the tasks downstream make one run of each.
///
/// It also carries the stage a step names at run time ([`StepContext::set_stage`]), which
/// replaces the stage its definition names.
///
/// And it carries the run's cancellation: [`StepContext::cancelled`], and the lines the step
/// writes to its run's log ([`StepContext::log`]), stored with its checkpoint or failure.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    effects: Arc<std::sync::Mutex<Effects>>,
    cancel: tokio_util::sync::CancellationToken,
}

/// What a step asked for besides its output.
#[derive(Debug, Default)]
struct Effects {
    emitted: Vec<Emitted>,
    stage: Option<String>,
    logs: crate::run_log::Lines,
}

impl Outbox {
    /// The effects of a step of a run that `cancel` cancels, keeping at most `log_lines` of
    /// the lines it logs.
    pub(crate) fn cancelled_by(
        cancel: tokio_util::sync::CancellationToken,
        log_lines: usize,
    ) -> Self {
        Outbox {
            effects: Arc::new(std::sync::Mutex::new(Effects {
                logs: crate::run_log::Lines::bounded(log_lines),
                ..Effects::default()
            })),
            cancel,
        }
    }

    fn effects(&self) -> std::sync::MutexGuard<'_, Effects> {
        self.effects.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn take(&self) -> Vec<Emitted> {
        std::mem::take(&mut self.effects().emitted)
    }

    /// The stage the step named at run time, if it named one.
    pub(crate) fn stage(&self) -> Option<String> {
        self.effects().stage.clone()
    }

    fn push(&self, emitted: Emitted) {
        self.effects().emitted.push(emitted);
    }

    pub(crate) fn log(&self, line: String) {
        self.effects().logs.push(line);
    }

    /// The lines the step logged so far, to store; `None` when it logged none.
    pub(crate) fn take_logs(&self) -> Option<Arc<crate::run_log::StepLines>> {
        self.effects().logs.take()
    }
}

impl<I> StepContext<I> {
    pub(crate) fn new(
        run: Arc<RunInfo>,
        step: Arc<str>,
        input: Arc<I>,
        outputs: Arc<BTreeMap<String, Value>>,
        outbox: Outbox,
    ) -> Self {
        StepContext {
            run_id: run.id,
            attempt: run.attempt,
            run,
            step,
            input,
            outputs,
            outbox,
        }
    }

    /// The run this step executes for.
    pub fn run(&self) -> &RunInfo {
        &self.run
    }

    /// This step's name.
    pub fn step_name(&self) -> &str {
        &self.step
    }

    /// Cancelled when someone cancels the run (`warren runs cancel`) while this step runs. The
    /// worker stops awaiting the step at once (dropping its future); a step that spawned work
    /// of its own, or holds something to clean up, watches this token to stop it.
    pub fn cancelled(&self) -> tokio_util::sync::CancellationToken {
        self.outbox.cancel.clone()
    }

    /// Writes `line` to the run's log, attributed to this step and attempt: stored with the
    /// step's checkpoint (or its failure, so the lines of a failing step are there to read), in
    /// the same commit, and shown by `warren runs show`. A run keeps its newest lines (1,000 by
    /// default, `--max-log-lines`); a line longer than 4 KiB is cut, with a marker.
    pub fn log(&self, line: impl Into<String>) {
        self.outbox.log(line.into());
    }

    /// A handle on this step's log, for code that runs for the step without its context (a
    /// task it spawned, an external step): see [`crate::run_log::StepLog`].
    pub fn logger(&self) -> crate::run_log::StepLog {
        crate::run_log::StepLog::of(&self.outbox)
    }

    /// Every earlier step's output, by step name.
    pub fn outputs(&self) -> &BTreeMap<String, Value> {
        &self.outputs
    }

    /// Names the stage the run reaches when this step completes, in place of the one the
    /// step's definition names (for steps that learn their stage as they run: an HTTP
    /// endpoint's answer, say).
    pub fn set_stage(&self, stage: impl Into<String>) {
        self.outbox.effects().stage = Some(stage.into());
    }

    /// Publishes `payload` as event `event` once this step's checkpoint commits (it is written
    /// to the outbox in the checkpoint's transaction, and sent from there). Its message id,
    /// `{run id}/{step}/{event}/{n}` (the n-th `event` this step emits), is the same when the
    /// step runs again, so downstream tasks make one run of it: emit the same events in the
    /// same order each time (the protocol doc has the details). The run's
    /// trace context goes with it, so the downstream run joins the same trace.
    pub fn emit<T: serde::Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &T,
    ) -> Result<(), StepError> {
        warren_shared::contract::validate_event_name(event)
            .map_err(|e| StepError::fatal("invalid_event", e.to_string()))?;
        let body = message_body(payload, "invalid_event")?;
        self.outbox.push(Emitted {
            event: event.to_owned(),
            body,
        });
        Ok(())
    }

    /// The run's input, as the task's type.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// The output an earlier step returned (in this attempt or restored from its checkpoint).
    pub fn output(&self, step: &str) -> Option<&Value> {
        self.outputs.get(step)
    }

    /// An earlier step's output as a type; a missing or mistyped output is a non-retryable error,
    /// since retrying cannot fix it.
    pub fn output_as<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let value = self.output(step).ok_or_else(|| {
            StepError::fatal(
                "missing_step_output",
                format!("no output from step {step:?}"),
            )
        })?;
        T::deserialize(value).map_err(|e| {
            StepError::fatal(
                "invalid_step_output",
                format!("output of step {step:?} does not fit: {e}"),
            )
        })
    }
}

/// `payload` as the body of a message Warren sends on (an event, a child run's input), checked
/// against the wire contract: the task that receives it would dead-letter it, so the mistake
/// fails the step that makes it, non-retryably, with `code`.
pub(crate) fn message_body<T: serde::Serialize + ?Sized>(
    payload: &T,
    code: &str,
) -> Result<Vec<u8>, StepError> {
    let body = serde_json::to_vec(payload).map_err(|e| StepError::fatal(code, e.to_string()))?;
    std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|json| warren_shared::contract::check_payload(json).map_err(|e| e.to_string()))
        .map_err(|e| StepError::fatal(code, e))?;
    Ok(body)
}

/// A step's successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Go on to the next step; this output is the checkpoint and is passed on.
    Continue(Value),
    /// End the run now with a named outcome that is not an error (e.g. `NEEDS_USER_INPUT`).
    Halt {
        /// The outcome's name, recorded on the run.
        outcome: String,
        /// The step's output.
        output: Value,
    },
    /// This step is done (its output is checkpointed); go on to the next step after `duration`.
    /// The run waits in the broker, holding no worker slot, and survives every restart.
    WaitFor {
        /// How long to wait (whole seconds; up to 8.5 years).
        duration: Duration,
        /// The step's output.
        output: Value,
    },
    /// Start these child runs and wait for them: the run waits holding no worker slot and no
    /// message, and goes on with the next step once every child has ended (or the wait timed
    /// out), with the children's outcomes as this step's output (see [`crate::children`]).
    WaitForChildren(crate::children::Children),
}

impl StepOutcome {
    /// Continue with `output`.
    pub fn next(output: Value) -> Self {
        StepOutcome::Continue(output)
    }

    /// Halt with a named outcome.
    pub fn halt(outcome: impl Into<String>, output: Value) -> Self {
        StepOutcome::Halt {
            outcome: outcome.into(),
            output,
        }
    }

    /// Continue with `output` after `duration`.
    pub fn wait_for(duration: Duration, output: Value) -> Self {
        StepOutcome::WaitFor { duration, output }
    }
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Timeouts, network errors, rate limits, upstream 5xx, anything unclassified.
    Retryable,
    /// Invalid input, quota exceeded, invalid credentials, policy violations: the same input
    /// will fail the same way.
    Fatal,
}

/// Stable error codes with a meaning Warren knows. Any other code is allowed.
pub mod code {
    /// A step (or the run) took longer than allowed. Retryable.
    pub const TIMEOUT: &str = "timeout";
    /// A network error reaching another service. Retryable.
    pub const NETWORK: &str = "network";
    /// The other side asked us to slow down (HTTP 429). Retryable.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The other side failed (HTTP 5xx). Retryable.
    pub const UPSTREAM: &str = "upstream_error";
    /// The step panicked. Retryable.
    pub const PANIC: &str = "panic";
    /// The input cannot be processed. Not retryable.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// A quota or plan limit is exhausted. Not retryable.
    pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
    /// Credentials were refused (HTTP 401/403). Not retryable.
    pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
    /// A content policy refused the input. Not retryable.
    pub const CONTENT_POLICY: &str = "content_policy";
    /// The thing asked for does not exist (HTTP 404). Not retryable.
    pub const NOT_FOUND: &str = "not_found";
    /// Postgres refused to store the step's output (a NUL in a string, a document nested too
    /// deep): the step would produce it again. Not retryable.
    pub const UNSTORABLE_OUTPUT: &str = "unstorable_output";
}

impl ErrorClass {
    /// The class Warren gives a code when the step does not say: the codes of things retrying
    /// cannot fix are fatal; everything else, unclassified codes included, is retryable.
    pub fn of_code(code: &str) -> ErrorClass {
        match code {
            code::INVALID_INPUT
            | code::QUOTA_EXCEEDED
            | code::INVALID_CREDENTIALS
            | code::CONTENT_POLICY
            | code::NOT_FOUND
            | code::UNSTORABLE_OUTPUT => ErrorClass::Fatal,
            _ => ErrorClass::Retryable,
        }
    }
}

/// A step's failure: a class that decides what happens next, a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    /// Retryable or not.
    pub class: ErrorClass,
    /// Stable, machine-readable code (`timeout`, `not_found`, ...).
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// The least time to wait before the next attempt, when the failed side said (an HTTP
    /// `Retry-After`): the retry waits for the longer of this and the retry policy's delay.
    pub retry_after: Option<Duration>,
}

impl StepError {
    /// A failure classified by its code (see [`ErrorClass::of_code`]).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        StepError {
            class: ErrorClass::of_code(&code),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The failure an HTTP answer with this status means: 429 rate limited and 5xx upstream
    /// errors are retryable; 401/403 credentials, 402 quota, 404 not found and other 4xx
    /// invalid input are not.
    pub fn from_http_status(status: u16, message: impl Into<String>) -> Self {
        let code = match status {
            429 => code::RATE_LIMITED,
            401 | 403 => code::INVALID_CREDENTIALS,
            402 => code::QUOTA_EXCEEDED,
            404 => code::NOT_FOUND,
            408 => code::TIMEOUT,
            400..=499 => code::INVALID_INPUT,
            _ => code::UPSTREAM,
        };
        StepError::new(code, message)
    }

    /// A step that overran its time.
    pub fn timeout(message: impl Into<String>) -> Self {
        StepError::retryable(code::TIMEOUT, message)
    }

    /// A failure that may succeed if tried again.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Retryable,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure that will not go away by retrying.
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Fatal,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The next attempt waits at least `delay` (if there is one: a retry budget that is spent
    /// still dead-letters the run).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// What a step returns.
pub type StepResult = Result<StepOutcome, StepError>;

/// Classifies any error in one word at the call site:
/// `fetch(url).await.retryable("network")?`, `parse(doc).fatal("invalid_input")?`.
pub trait StepResultExt<T> {
    /// A failure here is retryable, with this code.
    fn retryable(self, code: &str) -> Result<T, StepError>;
    /// A failure here is not retryable, with this code.
    fn fatal(self, code: &str) -> Result<T, StepError>;
}

impl<T, E: std::fmt::Display> StepResultExt<T> for Result<T, E> {
    fn retryable(self, code: &str) -> Result<T, StepError> {
        self.map_err(|e| StepError::retryable(code, e.to_string()))
    }

    fn fatal(self, code: &str) -> Result<T, StepError> {
        self.map_err(|e| StepError::fatal(code, e.to_string()))
    }
}

/// A unit of work in a task's pipeline.
pub trait Step<I>: Send + Sync + 'static {
    /// Runs the step once.
    fn run(&self, ctx: StepContext<I>) -> BoxFuture<'static, StepResult>;
}

impl<I, F, Fut> Step<I> for F
where
    F: Fn(StepContext<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult> + Send + 'static,
{
    fn run(&self, ctx: StepContext<I>) -> BoxFuture<'static, StepResult> {
        Box::pin(self(ctx))
    }
}

/// A named step of a pipeline, with the stage a run reaches when it completes.
pub struct StepDef<I> {
    pub(crate) name: String,
    pub(crate) stage: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) rate_limit: Option<crate::rate_limit::RateLimit>,
    pub(crate) step: Box<dyn Step<I>>,
}

impl<I> StepDef<I> {
    /// Names the stage (e.g. `TRANSCRIBED`) the run reaches when this step completes.
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Cancels the step when it runs longer than `timeout`: a retryable `timeout` failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// This step's own retry policy: its failures are counted against a budget of its own
    /// (`max_attempts` executions of this step), not the run's, so that each step of a long
    /// pipeline may retry as often as the policy says.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Limits this step's starts across the whole fleet (docs/rate-limits.md): a run reaching
    /// it waits for its turn, its earlier steps' checkpoints kept, its task's other steps free.
    pub fn rate_limit(mut self, limit: crate::rate_limit::RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }
}

/// A step named `name` that runs `step`.
pub fn step<I>(name: impl Into<String>, step: impl Step<I>) -> StepDef<I> {
    StepDef {
        name: name.into(),
        stage: None,
        timeout: None,
        retry: None,
        rate_limit: None,
        step: Box::new(step),
    }
}

/// A step that only waits: the run goes on with the next step after `duration`, holding no
/// worker meanwhile.
pub fn wait_step<I: Send + Sync + 'static>(
    name: impl Into<String>,
    duration: Duration,
) -> StepDef<I> {
    step(name, move |_ctx: StepContext<I>| async move {
        Ok(StepOutcome::wait_for(duration, Value::Null))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclassified_codes_are_retryable_and_hopeless_ones_are_fatal() {
        for retryable in [
            code::TIMEOUT,
            code::NETWORK,
            code::RATE_LIMITED,
            code::UPSTREAM,
            "weird",
        ] {
            assert_eq!(
                StepError::new(retryable, "").class,
                ErrorClass::Retryable,
                "{retryable}"
            );
        }
        for fatal in [
            code::INVALID_INPUT,
            code::QUOTA_EXCEEDED,
            code::INVALID_CREDENTIALS,
            code::CONTENT_POLICY,
        ] {
            assert_eq!(
                StepError::new(fatal, "").class,
                ErrorClass::Fatal,
                "{fatal}"
            );
        }
    }

    #[test]
    fn http_statuses_map_to_error_classes() {
        let class = |status| StepError::from_http_status(status, "").class;
        assert_eq!(class(429), ErrorClass::Retryable);
        assert_eq!(class(503), ErrorClass::Retryable);
        assert_eq!(class(401), ErrorClass::Fatal);
        assert_eq!(class(402), ErrorClass::Fatal);
        assert_eq!(class(422), ErrorClass::Fatal);
        assert_eq!(StepError::from_http_status(404, "").code, code::NOT_FOUND);
    }

    #[test]
    fn results_are_classified_at_the_call_site() {
        let failed: Result<(), &str> = Err("connection reset");
        let err = failed.retryable(code::NETWORK).unwrap_err();
        assert_eq!(
            (err.class, err.code.as_str()),
            (ErrorClass::Retryable, "network")
        );
        assert_eq!(err.message, "connection reset");
        let err = failed.fatal(code::INVALID_INPUT).unwrap_err();
        assert_eq!(err.class, ErrorClass::Fatal);
    }
}
