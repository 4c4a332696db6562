//! HTTP steps: one signed JSON `POST` per step execution to the user's endpoint, whose answer
//! is the step's reply. The request and response are documented in `docs/steps.md`.
//!
//! (Being built: the configuration below is fixed; `call` answers "not implemented".)

use super::{ExternalStep, StepConfigError, StepReply, StepRequest};
use crate::step::StepError;
use futures::future::BoxFuture;
use serde::Deserialize;

/// An HTTP step as a task file declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStepConfig {
    /// The endpoint (http or https).
    pub url: String,
    /// The largest response body read (default 1 MiB); a larger one fails the step.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// The environment variable holding the signing secret (default `WARREN_STEP_SECRET`).
    /// Never the secret itself: a task file is not a place for secrets.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// An HTTP step, ready to call.
pub struct HttpStep {
    config: HttpStepConfig,
}

impl HttpStep {
    /// Checks the configuration and prepares the client.
    pub fn new(config: HttpStepConfig) -> Result<Self, StepConfigError> {
        Ok(HttpStep { config })
    }
}

impl ExternalStep for HttpStep {
    fn call(&self, _request: StepRequest) -> BoxFuture<'static, Result<StepReply, StepError>> {
        let url = self.config.url.clone();
        Box::pin(async move {
            Err(StepError::fatal(
                "not_implemented",
                format!("HTTP steps are not implemented yet ({url})"),
            ))
        })
    }
}
