//! A declared task's failure handler: its `[task.on_failure]` step (HTTP or command), run once
//! when one of the task's runs dies, through [`crate::Task::on_failure`].
//!
//! It gets a step request like any step: the run, the step name `on_failure`, the run's input,
//! and no outputs. Once means once: the handler is an alert or a cleanup, and the run is already
//! dead, so its own failure is logged and nothing else (the runtime records that the handler ran
//! either way).

use crate::step::RunInfo;
use crate::steps::{ExternalStep, StepRequest};
use crate::task::FailedRun;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The name a failure handler's request carries as its step.
pub(super) const STEP_NAME: &str = "on_failure";

/// The handler: `step`, called once per dead run, given `timeout`.
pub(super) fn handler(
    step: Arc<dyn ExternalStep>,
    timeout: Duration,
) -> impl Fn(FailedRun) -> BoxFuture<'static, ()> + Send + Sync + 'static {
    move |run: FailedRun| {
        // The run is dead and its log closed: what the handler says goes nowhere.
        let call = step.call(request(&run), crate::run_log::StepLog::discard());
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(_)) => {
                    tracing::info!(run = %run.run_id, task = %run.task, "failure handler ran");
                }
                Ok(Err(e)) => tracing::error!(
                    run = %run.run_id,
                    task = %run.task,
                    code = %e.code,
                    error = %e.message,
                    "failure handler failed"
                ),
                Err(_) => tracing::error!(
                    run = %run.run_id,
                    task = %run.task,
                    timeout = ?timeout,
                    "failure handler timed out"
                ),
            }
        })
    }
}

/// The request a failure handler is sent about `run`.
fn request(run: &FailedRun) -> StepRequest {
    StepRequest {
        run: RunInfo {
            id: run.run_id,
            task: run.task.clone(),
            event: run.event.clone(),
            attempt: u32::try_from(run.attempts).unwrap_or(1).max(1),
            message_id: run.message_id.clone(),
            tenant: run.tenant.clone(),
            scheduled_for: warren_shared::schedule::slot_of_message_id(&run.message_id),
        },
        step: STEP_NAME.to_owned(),
        input: run.input.clone().unwrap_or(Value::Null),
        outputs: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::StepError;
    use crate::steps::StepReply;
    use serde_json::json;
    use std::sync::Mutex;

    /// Records the requests it gets, and answers with `answer`.
    struct Recorder {
        seen: Arc<Mutex<Vec<StepRequest>>>,
        answer: Result<StepReply, StepError>,
        delay: Duration,
    }

    impl ExternalStep for Recorder {
        fn call(
            &self,
            request: StepRequest,
            _log: crate::run_log::StepLog,
        ) -> BoxFuture<'static, Result<StepReply, StepError>> {
            self.seen.lock().unwrap().push(request);
            let (answer, delay) = (self.answer.clone(), self.delay);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            })
        }
    }

    fn dead_run() -> FailedRun {
        FailedRun {
            run_id: uuid::Uuid::nil(),
            task: "media.track".into(),
            message_id: "m-1".into(),
            event: "media.track".into(),
            tenant: Some("acme".into()),
            attempts: 3,
            code: "upstream_error".into(),
            message: "503".into(),
            input: Some(json!({ "url": "x" })),
        }
    }

    fn recorder(
        answer: Result<StepReply, StepError>,
        delay: Duration,
    ) -> (Arc<dyn ExternalStep>, Arc<Mutex<Vec<StepRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let step = Recorder {
            seen: Arc::clone(&seen),
            answer,
            delay,
        };
        (Arc::new(step), seen)
    }

    #[tokio::test]
    async fn the_handler_is_called_once_with_the_run_its_input_and_no_outputs() {
        let (step, seen) = recorder(Ok(StepReply::default()), Duration::ZERO);
        handler(step, Duration::from_secs(1))(dead_run()).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let request = &seen[0];
        assert_eq!(request.step, "on_failure");
        assert_eq!(request.input, json!({ "url": "x" }));
        assert!(request.outputs.is_empty());
        assert_eq!(request.run.attempt, 3);
        assert_eq!(request.run.tenant.as_deref(), Some("acme"));
        assert_eq!(
            request.idempotency_key(),
            format!("{}/on_failure", uuid::Uuid::nil())
        );
    }

    #[tokio::test]
    async fn a_failing_or_hanging_handler_is_logged_and_returns() {
        let (failing, _) = recorder(Err(StepError::fatal("boom", "no")), Duration::ZERO);
        handler(failing, Duration::from_secs(1))(dead_run()).await;
        let (hanging, _) = recorder(Ok(StepReply::default()), Duration::from_secs(3600));
        tokio::time::timeout(
            Duration::from_secs(5),
            handler(hanging, Duration::from_millis(20))(dead_run()),
        )
        .await
        .expect("the handler gives up after its timeout");
    }
}
