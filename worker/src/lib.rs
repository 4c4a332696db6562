//! # warren-worker: running tasks from RabbitMQ with their state in Postgres
//!
//! A task is a typed input, the events that trigger it, and an ordered pipeline of named steps.
//! A replica consumes one durable queue per task, runs the steps that have no checkpoint yet,
//! commits each step's output (in transactions shared with other runs: group commit), and acks a
//! message only once what it caused is committed. Any number of identical replicas may compete
//! for the same queues.
//!
//! ```no_run
//! use serde::Deserialize;
//! use serde_json::json;
//! use warren_worker::{Registry, StepOutcome, Task, step};
//!
//! #[derive(Deserialize)]
//! struct Report { day: String }
//!
//! let registry = Registry::new().register(
//!     Task::<Report>::new("report.daily")
//!         .step(step("collect", |ctx: warren_worker::StepContext<Report>| async move {
//!             Ok(StepOutcome::next(json!({ "day": ctx.input().day })))
//!         }).stage("COLLECTED")),
//! );
//! ```
//!
//! # Layout
//!
//! * [`step`]: the step abstraction, its context, outcomes and errors.
//! * [`task`]: task definitions and the registry.
//! * [`steps`]: steps that run outside the worker: HTTP endpoints and commands.
//! * [`declared`]: tasks declared in a TOML file (steps of those kinds, and waits), checked
//!   whole, every mistake at its line.
//! * [`runtime`]: the replica: connection, consumers, concurrency, drain.
//! * `execute`: one delivery from bytes to ack.
//! * `budget`: the memory message bodies may take (prefetch × size limit), capped and stated.
//! * `state_writer` and `writes`: group commit of run state to Postgres.
//! * [`run_log`]: the lines steps write to their run's log, stored with their checkpoints.
//! * `dead_letter`: the dead-letter format.
//! * `run_locks`: one delivery per run at a time inside a replica.
//! * `fleet`: the replica's registration (one incarnation per start) and heartbeat in Postgres.
//! * [`retention`]: the scheduled prune of finished runs.
//! * [`dlq`]: dead-letter queue operations (peek, replay, purge) for operators.
//! * [`demo`]: the demo tasks (`video.process`, `player.dump`).

pub mod children;
pub mod concurrency_key;
pub mod control;
pub mod declared;
pub mod demo;
pub mod dlq;
pub mod rate_limit;
pub mod retention;
pub mod run_log;
pub mod runtime;
pub mod schedule;
pub mod settle;
pub mod step;
pub mod steps;
pub mod task;

mod admission;
mod budget;
mod cancel;
mod dead_letter;
mod execute;
mod fleet;
mod http;
mod keys;
mod lane_pick;
mod lanes;
mod queue_gauges;
mod run_locks;
mod state_writer;
mod task_metrics;
mod writes;

pub use budget::DEFAULT_MESSAGE_BUDGET_BYTES;
pub use run_log::StepLog;
pub use runtime::{RunningWorker, Worker, WorkerConfig, WorkerError};
pub use state_writer::WRITE_TIMEOUT;
pub use step::{
    ErrorClass, RunInfo, Step, StepContext, StepDef, StepError, StepOutcome, StepResult,
    StepResultExt, code, step, wait_step,
};
pub use task::{FailedRun, InputCheck, Registry, Task, TaskRunner};
pub use warren_shared::retry::RetryPolicy;
