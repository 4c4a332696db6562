//! Steps that run outside the worker: a user's HTTP endpoint ([`http`]) or a program
//! ([`command`]). The worker stays the source of truth: it sends each execution of a step a
//! [`StepRequest`] (the run, the step, the input, the outputs before it), reads back a
//! [`StepReply`] (the output, and what else the step asks for: a stage, a halt, a wait, events),
//! and does everything that makes a step a Warren step around the call: checkpoints, retries
//! held by the broker, dead letters, group commit, traces, metrics.
//!
//! Both kinds implement [`ExternalStep`]; [`external`] turns one into a step of a pipeline.
//! What a step says while it runs or fails (a command's standard error, an HTTP error body's
//! `logs`) goes to the [`StepLog`] it is called with; a reply's `logs` are the run's log lines
//! once the reply is applied.
//! How long a step may take is the pipeline step's own `timeout` (one setting for every kind):
//! when it runs out the call's future is dropped, so dropping it must stop the work (an HTTP
//! request is abandoned, a command's whole process group is killed).
//! The request and reply are a public contract, documented for any language in `docs/steps.md`.

pub mod command;
pub mod http;

use crate::run_log::StepLog;
use crate::step::{RunInfo, StepContext, StepDef, StepError, StepOutcome, step};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What one execution of an external step is sent.
#[derive(Debug, Clone, Serialize)]
pub struct StepRequest {
    /// The run.
    pub run: RunInfo,
    /// The step's name.
    pub step: String,
    /// The run's input.
    pub input: Value,
    /// The outputs of the steps before this one, by step name.
    pub outputs: BTreeMap<String, Value>,
}

impl StepRequest {
    /// The request for the step `ctx` is executing.
    pub fn from_context(ctx: &StepContext<Value>) -> Self {
        StepRequest {
            run: ctx.run().clone(),
            step: ctx.step_name().to_owned(),
            input: ctx.input().clone(),
            outputs: ctx.outputs().clone(),
        }
    }

    /// The idempotency key of this step of this run: the same for every execution of it, so
    /// that the endpoint can recognise an execution repeated after a crash.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.run.id, self.step)
    }
}

/// What an external step answered, once read: its output, and what else it asks for.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepReply {
    /// The step's output: its checkpoint, passed on to the steps after it.
    #[serde(default)]
    pub output: Value,
    /// The stage the run reaches (instead of the one the task file names).
    #[serde(default)]
    pub stage: Option<String>,
    /// End the run with this outcome (e.g. `NEEDS_USER_INPUT`).
    #[serde(default)]
    pub halt: Option<String>,
    /// Go on with the next step only after this many seconds.
    #[serde(default)]
    pub wait_seconds: Option<u64>,
    /// Events to publish once the step's checkpoint is about to commit.
    #[serde(default)]
    pub emit: Vec<EmitRequest>,
    /// Lines for the run's log, stored with the step's checkpoint.
    #[serde(default)]
    pub logs: Vec<String>,
}

/// An event an external step asks Warren to publish.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitRequest {
    /// The event name.
    pub event: String,
    /// Its payload (a JSON object).
    pub payload: Value,
}

impl StepReply {
    /// What the reply makes of the step: log lines written, events emitted and the stage named
    /// through `ctx`, and the outcome.
    pub fn apply(self, ctx: &StepContext<Value>) -> Result<StepOutcome, StepError> {
        for line in self.logs {
            ctx.log(line);
        }
        for emit in &self.emit {
            ctx.emit(&emit.event, &emit.payload)?;
        }
        if let Some(stage) = self.stage {
            ctx.set_stage(stage);
        }
        Ok(match (self.halt, self.wait_seconds) {
            (Some(outcome), _) => StepOutcome::halt(outcome, self.output),
            (None, Some(seconds)) => {
                StepOutcome::wait_for(Duration::from_secs(seconds), self.output)
            }
            (None, None) => StepOutcome::next(self.output),
        })
    }
}

/// A step that runs outside the worker.
pub trait ExternalStep: Send + Sync + 'static {
    /// Executes the step once for `request`, writing what it says on the way (not its reply's
    /// `logs`, which [`StepReply::apply`] writes) to `log`.
    fn call(
        &self,
        request: StepRequest,
        log: StepLog,
    ) -> BoxFuture<'static, Result<StepReply, StepError>>;
}

/// A pipeline step named `name` that runs `external` (for tasks whose input is JSON, as
/// declared tasks' is).
pub fn external(name: impl Into<String>, external: Arc<dyn ExternalStep>) -> StepDef<Value> {
    step(name, move |ctx: StepContext<Value>| {
        let external = Arc::clone(&external);
        async move {
            let reply = external
                .call(StepRequest::from_context(&ctx), ctx.logger())
                .await?;
            reply.apply(&ctx)
        }
    })
}

/// Why a step's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StepConfigError {
    /// A setting is wrong; the text says which and why.
    #[error("{0}")]
    Invalid(String),
}

/// Durations in configuration, written as people write them (`30s`, `2m`, `1h 30m`).
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Reads an optional duration such as `"30s"`.
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                humantime::parse_duration(&text).map_err(|e| {
                    serde::de::Error::custom(format!("{text:?} is not a duration (30s, 2m): {e}"))
                })
            })
            .transpose()
    }
}
