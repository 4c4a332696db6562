//! Every metric Warren exports, in one catalog: its name, kind, labels and meaning.
//!
//! Code records through the `metrics` facade with these constants, never with string literals,
//! so that `docs/metrics.md`, the Grafana dashboard and the alert rules can be checked against
//! this list (a test does). Names follow Prometheus conventions: base units in the name
//! (`_seconds`), `_total` on counters, and labels with a bounded set of values only (task, step,
//! event, reason codes, outcomes, routes; never run or message ids, nor a routing key, which for a
//! delayed message holds its delay).

/// The kind of a metric, as Prometheus shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One entry of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The full name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// What it means.
    pub help: &'static str,
}

macro_rules! catalog {
    ($( $(#[$doc:meta])* $constant:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal; )*) => {
        $( $(#[$doc])* pub const $constant: &str = $name; )*
        /// The whole catalog, in documentation order.
        pub const ALL: &[Metric] = &[
            $( Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help }, )*
        ];
    };
}

catalog! {
    /// Deliveries taken from a task queue.
    RUNS_RECEIVED = "warren_runs_received_total", Counter, ["task"],
        "Messages a replica took from the task's queue (first deliveries, redeliveries, retries and wake-ups).";
    /// Attempts that started running steps.
    RUNS_STARTED = "warren_runs_started_total", Counter, ["task"],
        "Run attempts that claimed their run and started (or resumed) its steps.";
    /// Runs that reached `succeeded`.
    RUNS_SUCCEEDED = "warren_runs_succeeded_total", Counter, ["task"],
        "Runs that completed their last step.";
    /// Runs that ended early in a named outcome.
    RUNS_HALTED = "warren_runs_halted_total", Counter, ["task", "outcome"],
        "Runs a step ended early in a named outcome that is not an error (e.g. NEEDS_USER_INPUT).";
    /// Failed attempts.
    RUNS_FAILED = "warren_runs_failed_total", Counter, ["task", "reason"],
        "Run attempts that failed, by error code (each is then retried or dead-lettered).";
    /// Failed attempts sent to a later retry.
    RUNS_RETRIED = "warren_runs_retried_total", Counter, ["task", "reason"],
        "Failed attempts scheduled for a retry through the delay queues, by error code.";
    /// Messages sent to a dead-letter queue.
    RUNS_DEAD_LETTERED = "warren_runs_dead_lettered_total", Counter, ["task", "reason"],
        "Messages sent to the task's dead-letter queue, by reason code.";
    /// Redeliveries that found their work done.
    DUPLICATES = "warren_duplicate_deliveries_total", Counter, ["task"],
        "Deliveries acknowledged without running anything: their run had finished or moved on, or their idempotency key was used.";
    /// Runs being executed.
    RUNS_IN_FLIGHT = "warren_runs_in_flight", Gauge, ["task"],
        "Deliveries a replica is processing right now.";
    /// One attempt's duration.
    RUN_DURATION = "warren_run_duration_seconds", Histogram, ["task", "outcome"],
        "Time from claiming a run to the end of the attempt (outcome: succeeded, halted, waiting, retried, dead).";
    /// One step execution's duration.
    STEP_DURATION = "warren_step_duration_seconds", Histogram, ["task", "step", "outcome"],
        "Time one step execution took (outcome: ok or error).";
    /// Publish-to-start latency.
    QUEUE_WAIT = "warren_queue_wait_seconds", Histogram, ["task"],
        "Time from the publish (or the due time of a retry or wake-up) to the start of the attempt.";
    /// Task queue depth, polled.
    QUEUE_MESSAGES = "warren_queue_messages", Gauge, ["task"],
        "Messages ready in the task's queues, all its lanes together (polled from the broker).";
    /// Lane queue depth, polled.
    LANE_QUEUE_MESSAGES = "warren_lane_queue_messages", Gauge, ["task", "lane"],
        "Messages ready in one lane (high, normal, low) of a task with priority lanes (polled from the broker).";
    /// Deliveries taken per lane.
    LANE_DELIVERIES = "warren_lane_deliveries_total", Counter, ["task", "lane"],
        "Deliveries a replica took for a free run slot from each lane of the task (normal only for a task without lanes).";
    /// Task queue consumers, polled.
    QUEUE_CONSUMERS = "warren_queue_consumers", Gauge, ["task"],
        "Consumers attached to the task's queue, all replicas together (polled from the broker).";
    /// Dead-letter queue depth, polled.
    DEAD_LETTER_MESSAGES = "warren_dead_letter_queue_messages", Gauge, ["task"],
        "Messages waiting in the task's dead-letter queue (polled from the broker).";
    /// Group-commit transactions.
    STATE_COMMITS = "warren_state_commits_total", Counter, [],
        "Postgres transactions the state writer committed (each carries a batch of state writes).";
    /// State writes committed.
    STATE_WRITES = "warren_state_writes_total", Counter, [],
        "State writes (claims, checkpoints, failures) committed; writes per commit is the group-commit factor.";
    /// Publishes sent.
    PUBLISHES = "warren_publishes_total", Counter, ["route", "destination"],
        "Messages published with a publisher confirm requested (events, retries, wake-ups, dead letters).";
    /// Publishes confirmed and routed.
    PUBLISH_CONFIRMS = "warren_publish_confirms_total", Counter, ["route", "destination"],
        "Publishes the broker confirmed and routed to a queue.";
    /// Publishes refused.
    PUBLISH_NACKS = "warren_publish_nacks_total", Counter, ["route", "destination"],
        "Publishes the broker refused (negative confirm).";
    /// Publishes returned unroutable.
    PUBLISH_RETURNS = "warren_publish_returns_total", Counter, ["route", "destination"],
        "Publishes returned as unroutable: no queue is bound to the event.";
    /// Publish confirm latency.
    PUBLISH_CONFIRM_LATENCY = "warren_publish_confirm_seconds", Histogram, ["route", "destination"],
        "Time from a publish to its confirm (ack, nack or return).";
    /// Child runs started.
    CHILDREN_STARTED = "warren_children_started_total", Counter, ["task"],
        "Child runs steps of the task asked for (trigger-and-wait or fan-out), counted when the parent's park commits; with a limit, some of them start later.";
    /// Joins completed.
    JOINS_COMPLETED = "warren_joins_completed_total", Counter, ["task", "outcome"],
        "Parents woken from waiting for their children (outcome: joined when every child ended, timed_out when the wait's timeout woke it).";
    /// Cancelled steps.
    STEPS_CANCELLED = "warren_steps_cancelled_total", Counter, ["task"],
        "Running steps this replica stopped because their run was cancelled (or taken over by another replica).";
    /// Waits for a reserved start under a rate limit.
    RATE_LIMIT_WAIT = "warren_rate_limit_wait_seconds", Histogram, ["task"],
        "Time a delivery of a rate-limited task waited in the worker for the start it reserved (at most 2 s).";
    /// Deliveries sent back to wait for their turn.
    RATE_LIMIT_PARKED = "warren_rate_limit_parked_total", Counter, ["task"],
        "Deliveries of a rate-limited task whose turn was further off than the worker waits: sent back through the delay queues until it is near.";
    /// Runs that found their concurrency key full and waited for a slot.
    KEY_WAITS = "warren_key_waits_total", Counter, ["task"],
        "Runs that found their concurrency key full (as many of the key's runs running as its limit allows) and went to wait for a slot.";
    /// Runs waiting for a slot of their concurrency key now.
    RUNS_WAITING_FOR_KEY = "warren_runs_waiting_for_key", Gauge, ["task"],
        "Runs in waiting_for_key, fleet-wide (read from Postgres every few seconds by each replica).";
    /// Key slots handed to waiters by the safety sweep.
    KEY_SWEEP_RELEASED = "warren_key_sweep_released_total", Counter, [],
        "Runs waiting for their key released by a replica's once-a-second sweep rather than at once by the run that freed the slot (a slot freed while its key's claim was queueing a run, or held by a replica that died).";
    /// Outbox rows sent.
    OUTBOX_SENT = "warren_outbox_sent_total", Counter, [],
        "Outbox messages (emitted events, child triggers, wake-ups, retries, scheduled runs) the relay published with a confirm and removed.";
    /// Outbox publishes that failed.
    OUTBOX_FAILURES = "warren_outbox_failures_total", Counter, ["reason"],
        "Outbox messages whose publish failed and that stay in the outbox to be tried again (reason: unroutable, nacked, broker, unreadable).";
    /// Outbox rows due and not sent.
    OUTBOX_DUE = "warren_outbox_due_messages", Gauge, [],
        "Outbox messages due and not sent yet, all replicas together (polled from Postgres every 5 s).";
    /// Age of the oldest due outbox row.
    OUTBOX_LAG = "warren_outbox_lag_seconds", Gauge, [],
        "Age of the oldest outbox message that is due and not sent (0 when none): the relay's lag, or a stuck message.";
    /// Schedule slots fired.
    SCHEDULE_FIRES = "warren_schedule_fires_total", Counter, ["task"],
        "Schedule slots fired (including manual triggers): each one's run message committed to the outbox with its slot record.";
    /// Missed schedule slots skipped by their policy.
    SCHEDULE_MISSED = "warren_schedule_missed_total", Counter, ["task"],
        "Schedule slots missed during downtime (over 60 s late) that their missed policy (skip, latest, all up to the limit) did not fire.";
    /// How late schedule slots fire.
    SCHEDULE_LATENESS = "warren_schedule_lateness_seconds", Histogram, ["task"],
        "How long after its slot time a schedule slot fired (Postgres clock); a manual trigger counts from its request.";
    /// Replica readiness.
    WORKER_READY = "warren_worker_ready", Gauge, [],
        "1 while the replica is connected to the broker and the database and consuming, else 0.";
}

/// Histogram buckets, in seconds: from sub-millisecond queue waits to half-hour runs. The
/// exporter renders histograms as summaries unless it is given buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
];

/// Registers every metric's help text with the installed recorder (call once, after installing
/// it), so that `/metrics` shows `# HELP` lines even before the first observation.
pub fn describe_all() {
    for metric in ALL {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => {
                metrics::describe_histogram!(metric.name, metrics::Unit::Seconds, metric.help)
            }
        }
    }
}

/// Is `name` (as it appears in a query: maybe with `_bucket`, `_sum` or `_count`) one of ours?
pub fn is_exported(name: &str) -> bool {
    ALL.iter().any(|m| {
        m.name == name
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(m.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for m in ALL {
            assert!(m.name.starts_with("warren_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            for label in m.labels {
                assert!(
                    !["run", "run_id", "message_id", "id", "routing_key"].contains(label),
                    "{} has an unbounded label {label}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn histogram_series_count_as_exported() {
        assert!(is_exported("warren_run_duration_seconds_bucket"));
        assert!(is_exported("warren_runs_received_total"));
        assert!(!is_exported("warren_runs_received_total_bucket"));
        assert!(!is_exported("warren_nonexistent_total"));
    }
}
