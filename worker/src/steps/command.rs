//! Command steps: a program run once per step execution, the step request as JSON on its
//! standard input, its standard output (JSON) the step's output. Documented in `docs/steps.md`.
//!
//! (Being built: the configuration below is fixed; `call` answers "not implemented".)

use super::{ExternalStep, StepConfigError, StepReply, StepRequest};
use crate::step::StepError;
use futures::future::BoxFuture;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A command step as a task file declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandStepConfig {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its whole environment (besides `PATH`): nothing of the worker's own leaks in.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The most standard output (and error) kept (default 1 MiB); more fails the step.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

/// A command step, ready to run.
pub struct CommandStep {
    config: CommandStepConfig,
}

impl CommandStep {
    /// Checks the configuration.
    pub fn new(config: CommandStepConfig) -> Result<Self, StepConfigError> {
        Ok(CommandStep { config })
    }
}

impl ExternalStep for CommandStep {
    fn call(&self, _request: StepRequest) -> BoxFuture<'static, Result<StepReply, StepError>> {
        let program = self.config.program.clone();
        Box::pin(async move {
            Err(StepError::fatal(
                "not_implemented",
                format!("command steps are not implemented yet ({program})"),
            ))
        })
    }
}
