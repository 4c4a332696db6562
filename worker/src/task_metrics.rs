//! The metrics of one task on one replica, with their handles registered once so that the hot
//! path records without building label sets. Names and meanings: `warren_shared::metrics`.

use crate::task::StepInfo;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use std::time::Duration;
use warren_shared::metrics as names;

/// How an attempt ended, as the `outcome` label of the run duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEnd {
    Succeeded,
    Halted,
    Waiting,
    Retried,
    Dead,
}

impl AttemptEnd {
    const ALL: [AttemptEnd; 5] = [
        AttemptEnd::Succeeded,
        AttemptEnd::Halted,
        AttemptEnd::Waiting,
        AttemptEnd::Retried,
        AttemptEnd::Dead,
    ];

    fn label(self) -> &'static str {
        match self {
            AttemptEnd::Succeeded => "succeeded",
            AttemptEnd::Halted => "halted",
            AttemptEnd::Waiting => "waiting",
            AttemptEnd::Retried => "retried",
            AttemptEnd::Dead => "dead",
        }
    }
}

pub(crate) struct TaskMetrics {
    task: String,
    received: Counter,
    started: Counter,
    succeeded: Counter,
    duplicates: Counter,
    in_flight: Gauge,
    queue_wait: Histogram,
    run_duration: [Histogram; 5],
    /// Per step: (ok, error) durations.
    steps: Vec<(Histogram, Histogram)>,
}

impl TaskMetrics {
    pub(crate) fn new(task: &str, steps: &[StepInfo]) -> Self {
        let t = task.to_owned();
        let step = |name: &str, outcome: &'static str| histogram!(names::STEP_DURATION, "task" => t.clone(), "step" => name.to_owned(), "outcome" => outcome);
        TaskMetrics {
            received: counter!(names::RUNS_RECEIVED, "task" => t.clone()),
            started: counter!(names::RUNS_STARTED, "task" => t.clone()),
            succeeded: counter!(names::RUNS_SUCCEEDED, "task" => t.clone()),
            duplicates: counter!(names::DUPLICATES, "task" => t.clone()),
            in_flight: gauge!(names::RUNS_IN_FLIGHT, "task" => t.clone()),
            queue_wait: histogram!(names::QUEUE_WAIT, "task" => t.clone()),
            run_duration: AttemptEnd::ALL.map(|end| {
                histogram!(names::RUN_DURATION, "task" => t.clone(), "outcome" => end.label())
            }),
            steps: steps
                .iter()
                .map(|s| (step(&s.name, "ok"), step(&s.name, "error")))
                .collect(),
            task: t,
        }
    }

    /// A rate-limited delivery reserved its start and waits `wait` for it.
    pub(crate) fn rate_limited(&self, wait: Duration) {
        histogram!(names::RATE_LIMIT_WAIT, "task" => self.task.clone()).record(wait.as_secs_f64());
    }

    /// A rate-limited delivery went back to the broker until its turn is near.
    pub(crate) fn key_waited(&self) {
        counter!(names::KEY_WAITS, "task" => self.task.clone()).increment(1);
    }

    pub(crate) fn rate_limit_parked(&self) {
        counter!(names::RATE_LIMIT_PARKED, "task" => self.task.clone()).increment(1);
    }

    /// A step asked for `n` child runs.
    pub(crate) fn children_started(&self, n: usize) {
        counter!(names::CHILDREN_STARTED, "task" => self.task.clone()).increment(n as u64);
    }

    /// A parent woke from its join.
    pub(crate) fn joined(&self, timed_out: bool) {
        let outcome = if timed_out { "timed_out" } else { "joined" };
        counter!(names::JOINS_COMPLETED, "task" => self.task.clone(), "outcome" => outcome)
            .increment(1);
    }

    /// A running step was stopped because its run was cancelled.
    pub(crate) fn step_cancelled(&self) {
        counter!(names::STEPS_CANCELLED, "task" => self.task.clone()).increment(1);
    }

    /// A delivery arrived; the returned guard counts it in flight until dropped.
    pub(crate) fn received(&self) -> InFlight<'_> {
        self.received.increment(1);
        self.in_flight.increment(1.0);
        InFlight(&self.in_flight)
    }

    /// An attempt claimed its run and starts, `waited` after its publish or due time.
    pub(crate) fn started(&self, waited: Option<Duration>) {
        self.started.increment(1);
        if let Some(waited) = waited {
            self.queue_wait.record(waited.as_secs_f64());
        }
    }

    pub(crate) fn duplicate(&self) {
        self.duplicates.increment(1);
    }

    pub(crate) fn step(&self, index: usize, ok: bool, took: Duration) {
        if let Some((ok_histogram, error_histogram)) = self.steps.get(index) {
            let histogram = if ok { ok_histogram } else { error_histogram };
            histogram.record(took.as_secs_f64());
        }
    }

    /// An attempt ended; `outcome` names a halt's outcome, `reason` a failure's code.
    pub(crate) fn ended(&self, end: AttemptEnd, took: Duration, detail: Option<&str>) {
        let index = AttemptEnd::ALL
            .iter()
            .position(|e| *e == end)
            .unwrap_or_default();
        self.run_duration[index].record(took.as_secs_f64());
        // Labelled by a detail: looked up per call, which the common case (success) skips.
        let detail = || detail.unwrap_or("").to_owned();
        match end {
            AttemptEnd::Succeeded => self.succeeded.increment(1),
            AttemptEnd::Halted => {
                counter!(names::RUNS_HALTED, "task" => self.task.clone(), "outcome" => detail())
                    .increment(1);
            }
            AttemptEnd::Waiting => {}
            AttemptEnd::Retried => {
                self.failed(&detail());
                counter!(names::RUNS_RETRIED, "task" => self.task.clone(), "reason" => detail())
                    .increment(1);
            }
            AttemptEnd::Dead => self.failed(&detail()),
        }
    }

    fn failed(&self, reason: &str) {
        counter!(names::RUNS_FAILED, "task" => self.task.clone(), "reason" => reason.to_owned())
            .increment(1);
    }

    /// A message went to the dead-letter queue (with or without a run).
    pub(crate) fn dead_lettered(&self, reason: &str) {
        counter!(names::RUNS_DEAD_LETTERED, "task" => self.task.clone(), "reason" => reason.to_owned())
            .increment(1);
    }
}

/// Counts a delivery in flight while it lives.
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
