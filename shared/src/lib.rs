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
//! * [`priority`]: message priorities (`high`, `normal`, `low`), carried as lanes.
//! * [`state`]: the run state machine, the one table of legal status changes.
//! * [`retry`]: the retry policy (attempts, backoff, jitter).
//! * [`store`]: every SQL statement on runs, steps and transitions.
//! * [`db`]: Postgres pools and embedded migrations (`migrations/`).
//! * [`amqp`]: connecting to the broker.
//! * [`config`]: defaults and environment variable names.
//! * [`redact`]: connection strings without their passwords, for messages and logs.
//! * [`install_crypto_provider`]: the one TLS crypto library of the process.

pub mod amqp;
pub mod config;
pub mod contract;
pub mod db;
pub mod metrics;
pub mod priority;
pub mod redact;
pub mod retry;
pub mod schedule;
pub mod signature;
pub mod state;
pub mod store;
pub mod topology;
pub mod trace_context;

/// Makes ring the process's TLS crypto provider, for every rustls user that does not bring its
/// own: HTTP clients built with reqwest's defaults (the OTLP exporter's, HTTP steps', a test's)
/// find none otherwise, since the workspace builds reqwest without a provider of its own (one
/// crypto library for the broker, Postgres and HTTP alike), and would panic. Call it first
/// thing in every program; calling it again does nothing.
pub fn install_crypto_provider() {
    // Err only when a provider is already installed: then there is nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
