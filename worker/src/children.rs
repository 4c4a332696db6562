//! Child runs: a step starts runs of other tasks and the run waits for them.
//!
//! A step answers [`StepOutcome::WaitForChildren`](crate::StepOutcome::WaitForChildren) with
//! the [`Children`] to start. The run parks (`waiting_for_children`), holding no worker slot and
//! no message, while its children run as runs of their own; when the last one ends (or the
//! wait's timeout passes) the run wakes, the children's outcomes in list order become the
//! step's checkpoint, and the next step reads them ([`StepContext::child_result`],
//! [`StepContext::children`]). A failed child is data, not a failure of the parent: the step
//! after the join decides.
//!
//! ```no_run
//! # use warren_worker::{StepContext, StepOutcome, StepResult, children::{Children, ChildRun}};
//! # use serde_json::json;
//! async fn transcribe(ctx: StepContext<serde_json::Value>) -> StepResult {
//!     let child = ChildRun::new("story.transcribe", &json!({ "story": ctx.input()["story"] }))?;
//!     Ok(StepOutcome::WaitForChildren(Children::one(child)))
//! }
//! async fn embed(ctx: StepContext<serde_json::Value>) -> StepResult {
//!     let transcript = ctx.child_result("transcribe")?; // the child's output, or its failure
//!     Ok(StepOutcome::next(transcript))
//! }
//! ```

use crate::step::{StepContext, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;
use warren_shared::priority::Priority;
use warren_shared::topology::Topology;

/// One child run to start: a task and its input.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRun {
    pub(crate) task: String,
    pub(crate) body: Vec<u8>,
    /// The child's lane; `None` inherits the parent's priority.
    pub(crate) priority: Option<Priority>,
}

impl ChildRun {
    /// A run of `task` with `input` (a JSON object, checked against the wire contract here, so
    /// that a mistake fails the step that makes it rather than the child).
    pub fn new<T: Serialize + ?Sized>(task: &str, input: &T) -> Result<Self, StepError> {
        Ok(ChildRun {
            task: task.to_owned(),
            body: crate::step::message_body(input, "invalid_child")?,
            priority: None,
        })
    }

    /// Runs the child in this priority's lane rather than the parent's (a child inherits the
    /// priority of the message that started its parent's run).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The child's task.
    pub fn task(&self) -> &str {
        &self.task
    }
}

/// The children a step starts and waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub(crate) runs: Vec<ChildRun>,
    pub(crate) single: bool,
    pub(crate) max_running: Option<u32>,
    pub(crate) timeout: Option<Duration>,
}

impl Children {
    /// Trigger and wait: one child, whose outcome is the step's output
    /// ([`StepContext::child_result`] reads it).
    pub fn one(child: ChildRun) -> Self {
        Children {
            runs: vec![child],
            single: true,
            max_running: None,
            timeout: None,
        }
    }

    /// Fan-out and join: these children, whose outcomes in this order are the step's output
    /// ([`StepContext::children`] reads them).
    pub fn all(children: impl IntoIterator<Item = ChildRun>) -> Self {
        Children {
            runs: children.into_iter().collect(),
            single: false,
            max_running: None,
            timeout: None,
        }
    }

    /// A run of `task` for each input.
    pub fn each<T: Serialize>(
        task: &str,
        inputs: impl IntoIterator<Item = T>,
    ) -> Result<Self, StepError> {
        let runs = inputs
            .into_iter()
            .map(|input| ChildRun::new(task, &input))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Children::all(runs))
    }

    /// At most `n` of these children run at once; the others start, in list order, as earlier
    /// ones end. Waiting children are rows in Postgres, not messages or tasks.
    pub fn at_most(mut self, n: u32) -> Self {
        self.max_running = Some(n.max(1));
        self
    }

    /// Wake the run after `timeout` even if children are still running (whole seconds). Their
    /// outcomes then say `running` (or `pending` for children that never started, and never
    /// will); children still running go on, and their ends no longer count.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many children.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// No children (the run goes on at once with an empty join).
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// How one child ended, as the join step's output records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildOutcome {
    /// The child run.
    pub run_id: Uuid,
    /// Its task.
    pub task: String,
    /// Its message id (`{parent}/{step}/{generation}/{position}`).
    pub message_id: String,
    /// `succeeded`, `halted`, `dead`, `cancelled`; `running`, `retrying`, ... or `pending`
    /// when the wait timed out first.
    pub status: String,
    /// Its output, when it succeeded or halted.
    #[serde(default)]
    pub output: Option<Value>,
    /// Its named outcome, when it halted.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Why it failed, when it is dead or cancelled.
    #[serde(default)]
    pub error: Option<ChildError>,
}

impl ChildOutcome {
    /// It succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }
}

/// A failed child's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildError {
    /// Its code (`not_found`, `timeout`, `cancelled`, ...).
    pub code: String,
    /// Its message.
    pub message: String,
}

/// A fan-out's join: every child's outcome in list order, with counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The outcomes, in the order the children were listed.
    pub children: Vec<ChildOutcome>,
    /// How many succeeded.
    pub succeeded: u64,
    /// How many are dead or cancelled.
    pub failed: u64,
    /// How many halted.
    pub halted: u64,
    /// How many had not ended when the wait's timeout woke the run.
    pub unfinished: u64,
    /// The timeout woke the run before every child ended.
    pub timed_out: bool,
}

impl<I> StepContext<I> {
    /// The output of the child that step `step` triggered and waited for, or its failure as a
    /// non-retryable error (`child_failed`, `child_cancelled`, `child_halted`, `child_timeout`)
    /// that names the child and its own code. A parent that wants to decide for itself reads
    /// [`StepContext::child_outcome`] instead.
    pub fn child_result(&self, step: &str) -> Result<Value, StepError> {
        let outcome = self.child_outcome(step)?;
        let failure = |code: &str, what: &str| {
            let detail = outcome
                .error
                .as_ref()
                .map(|e| format!(": {}: {}", e.code, e.message))
                .unwrap_or_default();
            StepError::fatal(
                code,
                format!(
                    "child run {} of task {} {what}{detail}",
                    outcome.run_id, outcome.task
                ),
            )
        };
        match outcome.status.as_str() {
            "succeeded" => Ok(outcome.output.clone().unwrap_or(Value::Null)),
            "dead" => Err(failure("child_failed", "is dead")),
            "cancelled" => Err(failure("child_cancelled", "was cancelled")),
            "halted" => Err(failure(
                "child_halted",
                &format!("halted ({})", outcome.outcome.as_deref().unwrap_or("?")),
            )),
            other => Err(failure(
                "child_timeout",
                &format!("had not ended when the wait timed out ({other})"),
            )),
        }
    }

    /// How the child that step `step` triggered ended.
    pub fn child_outcome(&self, step: &str) -> Result<ChildOutcome, StepError> {
        self.output_as(step)
    }

    /// The outcomes of the children step `step` fanned out to, in list order.
    pub fn children(&self, step: &str) -> Result<Joined, StepError> {
        self.output_as(step)
    }
}

/// The task a child trigger names, and the event its message carries: the first event the task
/// handles. Every replica of a fleet registers the same tasks, so any replica knows them.
/// Whether the task has priority lanes says which queue a child's message goes to.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    events: std::collections::HashMap<String, (String, bool)>,
}

impl Directory {
    /// From each task's id, events and whether it has priority lanes.
    pub(crate) fn new(tasks: impl IntoIterator<Item = (String, Vec<String>, bool)>) -> Self {
        Directory {
            events: tasks
                .into_iter()
                .filter_map(|(task, events, lanes)| {
                    Some((task, (events.into_iter().next()?, lanes)))
                })
                .collect(),
        }
    }

    /// The queue a child of `task` with `priority` goes to: its lane's, or the task queue for
    /// a task without lanes. Children are started from rows that name a queue of the default
    /// exchange (`run_children` keeps no exchange), so the lane is chosen here rather than by
    /// the lane exchange; the child's `warren-priority` header keeps its retries in the lane.
    fn queue_of(&self, topology: &Topology, task: &str, priority: Priority) -> String {
        match self.events.get(task) {
            Some((_, true)) => topology.lane_queue(task, priority),
            _ => topology.task_queue(task),
        }
    }

    fn event_of(&self, task: &str) -> Option<&str> {
        self.events.get(task).map(|(event, _)| event.as_str())
    }
}

/// The most children one step may start: a join's rows and its children's runs are written in
/// one transaction, which must stay well inside the state writer's commit timeout.
pub const MAX_CHILDREN: usize = 100_000;

/// What a parent's step needs to start its children: who it is and where messages go.
pub(crate) struct Parent<'a> {
    /// The largest message a worker accepts: a child's input must fit, or its message would be
    /// dead-lettered without a run and the parent would wait for it in vain.
    pub(crate) max_message_bytes: usize,
    pub(crate) run: Uuid,
    pub(crate) step: &'a str,
    /// Distinguishes the children of a retried or replayed run from those of earlier budgets
    /// (the run's `attempt_base`).
    pub(crate) generation: i32,
    pub(crate) tenant: Option<&'a str>,
    /// The priority of the parent's message, which children inherit unless they set one.
    pub(crate) priority: Priority,
    pub(crate) trace: Option<&'a warren_shared::trace_context::TraceHeaders>,
    pub(crate) topology: &'a Topology,
    pub(crate) directory: &'a Directory,
}

/// The children's runs and messages. Each child's message id is
/// `{parent}/{step}/{generation}/{position}`, so the same step executed again (before its park
/// committed) names the same children. A task no replica knows fails the step, not retryable.
pub(crate) fn plan(
    parent: &Parent<'_>,
    children: Vec<ChildRun>,
) -> Result<Vec<warren_shared::store::children::NewChild>, StepError> {
    use warren_shared::contract::{self, Outgoing, header};
    use warren_shared::store::{self, outbox};
    // The inputs move into the messages: a fan-out's list is held once, not twice.
    children
        .into_iter()
        .enumerate()
        .map(|(position, child)| {
            if child.body.len() > parent.max_message_bytes {
                return Err(StepError::fatal(
                    "invalid_child",
                    format!(
                        "the input of child {position} ({} bytes) exceeds the message limit of {} bytes",
                        child.body.len(),
                        parent.max_message_bytes
                    ),
                ));
            }
            let event = parent.directory.event_of(&child.task).ok_or_else(|| {
                StepError::fatal(
                    "unknown_task",
                    format!(
                        "step {} started a child of task {:?}, which no replica of this fleet runs",
                        parent.step, child.task
                    ),
                )
            })?;
            let message_id = contract::bounded_id(format!(
                "{}/{}/{}/{position}",
                parent.run, parent.step, parent.generation
            ));
            let mut outgoing = Outgoing::new();
            outgoing.message_id = message_id.clone();
            outgoing.tenant = parent.tenant.map(str::to_owned);
            if let Some(trace) = parent.trace {
                outgoing.traceparent = Some(trace.traceparent.clone());
                outgoing.tracestate = trace.tracestate.clone();
            }
            let priority = child.priority.unwrap_or(parent.priority);
            let properties = outgoing
                .with_header(header::EVENT, event)
                .with_header(header::PARENT_RUN, parent.run.to_string())
                .with_priority(priority)
                .properties()
                .map_err(|e| StepError::fatal("invalid_child", e.to_string()))?;
            let routing_key = parent
                .directory
                .queue_of(parent.topology, &child.task, priority);
            Ok(store::children::NewChild {
                id: store::run_id(&child.task, &message_id),
                task: child.task,
                event: event.to_owned(),
                message_id,
                message: outbox::Message {
                    run_id: parent.run,
                    kind: outbox::Kind::Child,
                    exchange: String::new(),
                    routing_key,
                    body: child.body,
                    properties,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_input_must_be_a_json_object() {
        assert!(ChildRun::new("t", &serde_json::json!({"a": 1})).is_ok());
        let err = ChildRun::new("t", &serde_json::json!([1, 2])).unwrap_err();
        assert_eq!(err.code, "invalid_child");
    }

    #[test]
    fn children_inherit_the_parents_priority_unless_they_set_one() {
        use warren_shared::topology::QueueType;
        let topology = Topology::new("w", QueueType::Quorum);
        let directory = Directory::new([
            ("lanes".to_owned(), vec!["lanes".to_owned()], true),
            ("plain".to_owned(), vec!["plain".to_owned()], false),
        ]);
        let parent = Parent {
            max_message_bytes: 1 << 20,
            run: Uuid::nil(),
            step: "s",
            generation: 1,
            tenant: None,
            priority: Priority::High,
            trace: None,
            topology: &topology,
            directory: &directory,
        };
        let child = |task: &str| ChildRun::new(task, &serde_json::json!({})).unwrap();
        let planned = plan(
            &parent,
            vec![
                child("lanes"),
                child("lanes").priority(Priority::Low),
                child("plain"),
            ],
        )
        .unwrap();
        let queues: Vec<&str> = planned
            .iter()
            .map(|c| c.message.routing_key.as_str())
            .collect();
        assert_eq!(
            queues,
            ["w.task-high.lanes", "w.task-low.lanes", "w.task.plain"]
        );
        let marked: Vec<Priority> = planned
            .iter()
            .map(|c| Priority::of_headers(c.message.properties.headers().as_ref()))
            .collect();
        // A task without lanes runs it as normal; the mark goes on to its own children.
        assert_eq!(marked, [Priority::High, Priority::Low, Priority::High]);
    }

    #[test]
    fn a_limit_of_zero_means_one_at_a_time() {
        let children = Children::each("t", [serde_json::json!({})])
            .unwrap()
            .at_most(0);
        assert_eq!(children.max_running, Some(1));
    }
}
