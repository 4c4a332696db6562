//! Tasks: a typed input, the events that trigger it, a concurrency, and an ordered pipeline.

use crate::step::{ErrorClass, Outbox, RunInfo, StepContext, StepDef, StepError, StepResult};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use warren_shared::retry::RetryPolicy;

/// How many runs of a task one replica executes at once unless the task or the replica's
/// default (`--default-concurrency`) says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How long one attempt of a run may take unless the task or the replica's default
/// (`--default-max-duration`) says otherwise: under RabbitMQ's default `consumer_timeout`
/// (30 min), which would otherwise close the channel under it.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(25 * 60);

/// What a failure handler learns about the run that died.
#[derive(Debug, Clone)]
pub struct FailedRun {
    /// The run.
    pub run_id: Uuid,
    /// The task.
    pub task: String,
    /// The message.
    pub message_id: String,
    /// The event.
    pub event: String,
    /// The tenant, if the message named one.
    pub tenant: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// The final error's code.
    pub code: String,
    /// The final error's message.
    pub message: String,
    /// The run's input, as sent.
    pub input: Option<Value>,
}

/// Runs once for each death of one of the task's runs (alerts, cleanup).
pub type FailureHandler = Arc<dyn Fn(FailedRun) -> BoxFuture<'static, ()> + Send + Sync>;

/// Checks a payload before it becomes the task's input (against a JSON Schema, say): the error
/// says why it is refused, and goes into the `invalid_input` dead letter.
pub type InputCheck = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// Decides whether an error is worth retrying, for tasks that know better than the error.
pub type Classifier = Arc<dyn Fn(&StepError) -> ErrorClass + Send + Sync>;

/// A task definition. `I` is its input type: a message whose payload does not deserialize into
/// `I` is an `invalid_input` failure that goes to the dead-letter queue, never a panic.
pub struct Task<I> {
    id: String,
    events: Vec<String>,
    concurrency: Option<usize>,
    steps: Vec<StepDef<I>>,
    retry: Option<RetryPolicy>,
    max_duration: Option<Duration>,
    classifier: Option<Classifier>,
    on_failure: Option<FailureHandler>,
    input_check: Option<InputCheck>,
    schedules: Vec<crate::schedule::Schedule>,
    rate_limit: Option<crate::rate_limit::RateLimit>,
    concurrency_key: Option<crate::concurrency_key::ConcurrencyKey>,
    priority_lanes: bool,
}

impl<I: DeserializeOwned + Send + Sync + 'static> Task<I> {
    /// A task named `id`, triggered by the event of the same name until [`Task::on`] says
    /// otherwise.
    pub fn new(id: impl Into<String>) -> Self {
        Task {
            id: id.into(),
            events: Vec::new(),
            concurrency: None,
            steps: Vec::new(),
            retry: None,
            max_duration: None,
            classifier: None,
            on_failure: None,
            input_check: None,
            schedules: Vec::new(),
            rate_limit: None,
            concurrency_key: None,
            priority_lanes: false,
        }
    }

    /// Starts runs of this task on a schedule (docs/schedules.md); may be called more than once.
    /// Each replica writes its tasks' schedules to Postgres when it starts.
    pub fn schedule(mut self, schedule: crate::schedule::Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Limits this task's starts across the whole fleet (docs/rate-limits.md).
    pub fn rate_limit(mut self, limit: crate::rate_limit::RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Limits how many runs of one key (a tenant, a value of the input) run at once across the
    /// whole fleet, each key's runs taking their turns (docs/concurrency-keys.md).
    pub fn concurrency_key(mut self, key: crate::concurrency_key::ConcurrencyKey) -> Self {
        self.concurrency_key = Some(key);
        self
    }

    /// Gives this task priority lanes (docs/priorities.md): a high and a low queue beside its
    /// queue, so that a message marked `warren-priority: high` starts before the normal backlog
    /// and one marked `low` after it. Off by default: each lane is a queue more on the broker
    /// (a quorum queue is a replicated log, with memory on every node); a task without lanes
    /// runs every message as normal.
    pub fn priority_lanes(mut self) -> Self {
        self.priority_lanes = true;
        self
    }

    /// This task's retry policy (otherwise the replica's default).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The longest one attempt may take; the running step is cancelled when it is over, as a
    /// retryable `timeout` failure.
    pub fn max_duration(mut self, max: Duration) -> Self {
        self.max_duration = Some(max);
        self
    }

    /// Classifies this task's errors (otherwise each error's own class decides).
    pub fn classify(
        mut self,
        classifier: impl Fn(&StepError) -> ErrorClass + Send + Sync + 'static,
    ) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// Runs `handler` once each time one of this task's runs is dead-lettered.
    pub fn on_failure<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(FailedRun) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.on_failure = Some(Arc::new(move |run| Box::pin(handler(run))));
        self
    }

    /// Checks each payload with `check` before it is decoded: a payload it refuses is an
    /// `invalid_input` failure, dead-lettered with `check`'s reason. For what the input type
    /// cannot say (a declared task's input is any JSON; its schema says more).
    pub fn validate_input(
        mut self,
        check: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.input_check = Some(Arc::new(check));
        self
    }

    /// Adds an event that triggers this task.
    pub fn on(mut self, event: impl Into<String>) -> Self {
        self.events.push(event.into());
        self
    }

    /// How many runs of this task one replica executes at once (otherwise the replica's
    /// default).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency.max(1));
        self
    }

    /// Appends a step to the pipeline.
    pub fn step(mut self, step: StepDef<I>) -> Self {
        self.steps.push(step);
        self
    }
}

/// A step's name, the stage it reaches, and its time limit.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Step name.
    pub name: String,
    /// Stage reached when it completes.
    pub stage: Option<String>,
    /// Its own time limit, if any.
    pub timeout: Option<Duration>,
    /// Its own retry policy, if any (a budget of its own rather than the run's).
    pub retry: Option<RetryPolicy>,
    /// Its own fleet-wide limit on starts, if any.
    pub rate_limit: Option<crate::rate_limit::RateLimit>,
}

/// A decoded task input, type-erased so that the runtime can hold tasks of any input type.
pub struct TaskInput(Arc<dyn Any + Send + Sync>);

/// What the runtime needs of a task, whatever its input type.
pub trait TaskRunner: Send + Sync + 'static {
    /// The task id.
    fn id(&self) -> &str;
    /// The events that trigger it (the id itself when none were named).
    fn events(&self) -> Vec<String>;
    /// Runs of this task one replica executes at once, if the task says (otherwise the
    /// replica's default).
    fn concurrency(&self) -> Option<usize>;
    /// The pipeline.
    fn steps(&self) -> Vec<StepInfo>;
    /// Parses a payload into the task's input type.
    fn decode_input(&self, payload: &RawValue) -> Result<TaskInput, String>;
    /// The task's own retry policy, if it has one.
    fn retry_policy(&self) -> Option<RetryPolicy>;
    /// The longest one attempt may take, if the task says (otherwise the replica's default).
    fn max_duration(&self) -> Option<Duration>;
    /// Whether an error is worth retrying.
    fn classify(&self, error: &StepError) -> ErrorClass;
    /// The failure handler, if the task has one.
    fn failure_handler(&self) -> Option<FailureHandler>;
    /// The schedules declared on it.
    fn schedules(&self) -> Vec<crate::schedule::Schedule> {
        Vec::new()
    }
    /// The limit on its starts, if it has one.
    fn rate_limit(&self) -> Option<crate::rate_limit::RateLimit> {
        None
    }
    /// The limit on its runs per key running at once, if it has one.
    fn concurrency_key(&self) -> Option<crate::concurrency_key::ConcurrencyKey> {
        None
    }
    /// Whether it has high and low lanes beside its normal queue.
    fn priority_lanes(&self) -> bool {
        false
    }
    /// Runs step `index` with the earlier outputs.
    fn run_step(
        &self,
        index: usize,
        run: Arc<RunInfo>,
        input: &TaskInput,
        outputs: Arc<BTreeMap<String, Value>>,
        outbox: Outbox,
    ) -> BoxFuture<'static, StepResult>;
}

impl<I: DeserializeOwned + Send + Sync + 'static> TaskRunner for Task<I> {
    fn id(&self) -> &str {
        &self.id
    }

    fn events(&self) -> Vec<String> {
        if self.events.is_empty() {
            vec![self.id.clone()]
        } else {
            self.events.clone()
        }
    }

    fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }

    fn steps(&self) -> Vec<StepInfo> {
        self.steps
            .iter()
            .map(|s| StepInfo {
                name: s.name.clone(),
                stage: s.stage.clone(),
                timeout: s.timeout,
                retry: s.retry,
                rate_limit: s.rate_limit.clone(),
            })
            .collect()
    }

    fn retry_policy(&self) -> Option<RetryPolicy> {
        self.retry
    }

    fn max_duration(&self) -> Option<Duration> {
        self.max_duration
    }

    fn classify(&self, error: &StepError) -> ErrorClass {
        match &self.classifier {
            Some(classify) => classify(error),
            None => error.class,
        }
    }

    fn failure_handler(&self) -> Option<FailureHandler> {
        self.on_failure.clone()
    }

    fn schedules(&self) -> Vec<crate::schedule::Schedule> {
        self.schedules.clone()
    }

    fn rate_limit(&self) -> Option<crate::rate_limit::RateLimit> {
        self.rate_limit.clone()
    }

    fn concurrency_key(&self) -> Option<crate::concurrency_key::ConcurrencyKey> {
        self.concurrency_key.clone()
    }

    fn priority_lanes(&self) -> bool {
        self.priority_lanes
    }

    fn decode_input(&self, payload: &RawValue) -> Result<TaskInput, String> {
        let input = match &self.input_check {
            None => serde_json::from_str::<I>(payload.get()).map_err(|e| e.to_string())?,
            Some(check) => {
                let value: Value =
                    serde_json::from_str(payload.get()).map_err(|e| e.to_string())?;
                check(&value)?;
                serde_json::from_value::<I>(value).map_err(|e| e.to_string())?
            }
        };
        Ok(TaskInput(Arc::new(input)))
    }

    fn run_step(
        &self,
        index: usize,
        run: Arc<RunInfo>,
        input: &TaskInput,
        outputs: Arc<BTreeMap<String, Value>>,
        outbox: Outbox,
    ) -> BoxFuture<'static, StepResult> {
        let (Some(step), Ok(input)) = (self.steps.get(index), Arc::clone(&input.0).downcast::<I>())
        else {
            let err = StepError::fatal(
                "internal",
                format!("task {} has no step {index} for this input", self.id),
            );
            return Box::pin(async move { Err(err) });
        };
        let name: Arc<str> = Arc::from(step.name.as_str());
        step.step
            .run(StepContext::new(run, name, input, outputs, outbox))
    }
}

/// The tasks a worker knows, by id.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<dyn TaskRunner>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task (replacing one with the same id).
    pub fn register(mut self, task: impl TaskRunner) -> Self {
        self.tasks.insert(task.id().to_owned(), Arc::new(task));
        self
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Arc<dyn TaskRunner>> {
        self.tasks.values()
    }

    /// The task with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn TaskRunner>> {
        self.tasks.get(id)
    }

    /// Keeps only the named tasks; names that are not registered are returned as the error.
    pub fn only(mut self, ids: &[String]) -> Result<Self, Vec<String>> {
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| !self.tasks.contains_key(*id))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(unknown);
        }
        self.tasks.retain(|id, _| ids.contains(id));
        Ok(self)
    }
}
