//! # warren-shared: the contract every Warren program agrees on
//!
//! Warren is a background-job fleet: producers publish events to RabbitMQ, identical worker
//! replicas consume one durable queue per task, run the task's pipeline of steps, and record
//! every state change in Postgres. This crate holds what producers, workers and the operator
//! CLI must agree on, and nothing that runs by itself.
//!
//! # Layout
//!
//! * [`contract`]: the wire format (body, properties, headers, CloudEvents), a public API
//!   documented in `docs/protocol.md`.
//! * [`topology`]: exchange and queue names, and how they are declared.
//! * [`state`]: the run state machine, the one table of legal status changes.
//! * [`retry`]: the retry policy (attempts, backoff, jitter).
//! * [`store`]: every SQL statement on runs, steps and transitions.
//! * [`db`]: Postgres pools and embedded migrations (`migrations/`).
//! * [`amqp`]: connecting to the broker.
//! * [`config`]: defaults and environment variable names.
//! * [`redact`]: connection strings without their passwords, for messages and logs.

pub mod amqp;
pub mod config;
pub mod contract;
pub mod db;
pub mod metrics;
pub mod redact;
pub mod retry;
pub mod state;
pub mod store;
pub mod topology;
pub mod trace_context;
