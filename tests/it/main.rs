//! Integration tests: the real RabbitMQ and Postgres, one namespace and database per test.
//! Run them with `scripts/test.sh` (which starts the services, builds the `warren` binary and
//! installs the Python publisher's client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod broker_nodes;
mod children;
mod cli;
mod cli_operator;
mod command_steps;
mod concurrency_keys;
mod console_api;
mod console_browser;
mod dead_letters;
mod declared;
mod declared_children;
mod defaults;
mod deploy;
mod example_buster;
mod example_children;
mod example_clipinsight;
mod examples;
mod failures;
mod fleet;
mod http_steps;
mod identity;
mod observability;
mod ownership;
mod pg_timeouts;
mod pipelines;
mod poison;
mod polyglot;
mod priorities;
mod producer;
mod rate_limits;
mod replicas;
mod retention;
mod run_logs;
mod runs_query;
mod schedules;
mod schema;
mod settle;
mod tls;
