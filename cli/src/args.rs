//! The command line. Every connection flag also reads an environment variable, so a deployment
//! configures replicas by environment and a person overrides with flags.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;
use warren_shared::config;
use warren_shared::state::RunStatus;
use warren_shared::topology::QueueType;

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Warren: background jobs on RabbitMQ with their state in Postgres"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every subcommand takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// RabbitMQ URL.
    // The environment's value is never shown: it usually carries a password.
    #[arg(long, global = true, env = config::ENV_AMQP_URL, hide_env_values = true, default_value = config::DEFAULT_AMQP_URL)]
    pub(crate) amqp_url: String,
    /// Postgres URL (or libpq key=value string); the database is created if it does not exist.
    #[arg(long, global = true, env = config::ENV_DATABASE_URL, hide_env_values = true, default_value = config::DEFAULT_DATABASE_URL)]
    pub(crate) database_url: String,
    /// Prefix of every exchange and queue name.
    #[arg(long, global = true, env = config::ENV_NAMESPACE, default_value = config::DEFAULT_NAMESPACE)]
    pub(crate) namespace: String,
    /// Log format: `text` for a terminal, `json` for log pipelines.
    #[arg(long, global = true, env = "WARREN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Show log lines: a command prints only its answer and its error otherwise (-v: info,
    /// -vv: debug, -vvv: trace; RUST_LOG overrides). The worker logs at info without it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

impl Global {
    /// The passwords of the connection strings, to keep out of every line printed.
    pub(crate) fn secrets(&self) -> warren_shared::redact::Secrets {
        warren_shared::redact::Secrets::of([self.amqp_url.as_str(), self.database_url.as_str()])
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run a worker replica until SIGTERM or SIGINT (a second signal stops at once).
    Worker(WorkerArgs),
    /// Publish an event: one with --data or --file, or one per line of NDJSON on standard input.
    Publish(PublishArgs),
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// List and inspect runs.
    Runs(RunsArgs),
    /// Each task's queue, depth, consumers and dead letters; `tasks validate FILE` checks a
    /// task file.
    Tasks(TasksArgs),
    /// Inspect, replay and purge dead letters.
    Dlq(DlqArgs),
    /// The fleet: every replica, its heartbeat and the runs it holds.
    Workers(WorkersArgs),
    /// Delete finished runs, expired idempotency keys and gone replicas older than a cutoff.
    Prune(crate::commands::prune::PruneArgs),
    /// Cron and interval schedules that start runs: create, list, show, pause, resume, delete,
    /// trigger (docs/schedules.md).
    Schedules(crate::commands::schedules::SchedulesArgs),
    /// Serve the web console and the HTTP API (docs/api.md) until SIGTERM or SIGINT.
    Console(crate::commands::console::ConsoleArgs),
    /// API tokens of the console and the HTTP API: create, list, revoke.
    Tokens(crate::commands::tokens::TokensArgs),
}

#[derive(Args, Debug)]
pub(crate) struct WorkersArgs {
    /// Include replicas that stopped (or were restarted) and those silent for over an hour.
    #[arg(long)]
    pub(crate) all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    pub(crate) command: DlqCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum DlqCommand {
    /// How many dead letters a task has, and a table of them.
    List {
        /// The task.
        task: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: headers, payload, and its run's timeline.
    Show {
        /// Message id or run id.
        id: String,
        /// Look only in this task's dead-letter queue (default: every task's).
        #[arg(long)]
        task: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the task's queue with a fresh retry budget; runs resume from
    /// their checkpoints.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// The task.
        task: String,
        /// Only the dead letter with this message id or run id.
        #[arg(long)]
        id: Option<String>,
        /// Every dead letter the queue holds when the replay starts (up to --limit); letters
        /// dead-lettered again meanwhile are left for the next replay.
        #[arg(long)]
        all: bool,
        /// Replay at most this many.
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        limit: usize,
    },
    /// Delete dead letters for good.
    Purge {
        /// The task.
        task: String,
        /// Only those dead-lettered longer ago than this (e.g. 7d).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Confirm: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Also run the tasks declared in this task file (docs/tasks.md), beside the built-in
    /// ones. A file with any mistake is refused (check one with `warren tasks validate`).
    #[arg(long = "tasks", env = "WARREN_TASKS", value_name = "FILE")]
    pub(crate) tasks_file: Option<std::path::PathBuf>,
    /// Run only these tasks (comma-separated ids, built-in or declared); all by default.
    #[arg(long, env = "WARREN_ONLY", value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Runs of each task this replica executes at once (overrides each task's own).
    #[arg(long, env = "WARREN_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) concurrency: Option<u32>,
    /// Runs of each task this replica executes at once, for tasks that do not set their own
    /// (a fleet-wide default: give every replica the same).
    #[arg(long, env = "WARREN_DEFAULT_CONCURRENCY", default_value_t = warren_worker::task::DEFAULT_CONCURRENCY as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) default_concurrency: u32,
    /// The longest one attempt of a run may take, for tasks that do not set their own (e.g.
    /// 25m, the default: under RabbitMQ's default consumer_timeout of 30 min).
    #[arg(long, env = "WARREN_DEFAULT_MAX_DURATION", default_value = "25m", value_parser = parse_positive_duration)]
    pub(crate) default_max_duration: Duration,
    /// Messages the broker may push ahead per task (defaults to the concurrency).
    #[arg(long, env = "WARREN_PREFETCH", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) prefetch: Option<u16>,
    /// Queue type of task queues created by this replica.
    #[arg(long, env = "WARREN_QUEUE_TYPE", default_value = "quorum", value_parser = parse_queue_type)]
    pub(crate) queue_type: QueueType,
    /// How long in-flight runs may take to finish after a shutdown signal (e.g. 30s, 2m).
    #[arg(long, env = "WARREN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub(crate) grace_period: Duration,
    /// Larger messages are dead-lettered.
    #[arg(long, env = "WARREN_MAX_MESSAGE_BYTES", default_value_t = warren_shared::contract::DEFAULT_MAX_MESSAGE_BYTES)]
    pub(crate) max_message_bytes: usize,
    /// The most memory message bodies pushed ahead by the broker may take (every task's
    /// prefetch × --max-message-bytes); prefetches are lowered to fit.
    #[arg(long, env = "WARREN_MESSAGE_BUDGET_BYTES", default_value_t = warren_worker::DEFAULT_MESSAGE_BUDGET_BYTES)]
    pub(crate) message_budget_bytes: usize,
    /// This replica's id (default: host-pid-random).
    #[arg(long, env = "WARREN_WORKER_ID")]
    pub(crate) worker_id: Option<String>,
    /// Keep finished runs, idempotency keys and gone replicas this long, then prune them (one
    /// replica at a time, every 10 minutes); "off" keeps everything.
    #[arg(long, env = "WARREN_RETENTION", default_value = "30d", value_parser = crate::commands::prune::parse_retention)]
    pub(crate) retention: crate::commands::prune::Retention,
    /// Log lines each run keeps (what steps write with ctx.log, an HTTP step's `logs`, a
    /// command step's standard error); beyond it the oldest are dropped and counted. 0 keeps
    /// none.
    #[arg(long, env = "WARREN_MAX_LOG_LINES", default_value_t = warren_shared::store::logs::DEFAULT_MAX_LINES as u32, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) max_log_lines: u32,
    /// Attempts per run, for tasks without their own retry policy (1 = never retry): with the
    /// four options after it, the fleet-wide default retry policy.
    #[arg(long, env = "WARREN_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_attempts: u32,
    /// Delay before the first retry.
    #[arg(long, env = "WARREN_RETRY_MIN_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub(crate) retry_min_delay: Duration,
    /// Longest delay between attempts.
    #[arg(long, env = "WARREN_RETRY_MAX_DELAY", default_value = "30s", value_parser = parse_duration)]
    pub(crate) retry_max_delay: Duration,
    /// Each delay is this many times the one before.
    #[arg(long, env = "WARREN_RETRY_FACTOR", default_value_t = 2.0)]
    pub(crate) retry_factor: f64,
    /// Spread retry delays randomly between half and all of their length.
    #[arg(long, env = "WARREN_RETRY_JITTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) retry_jitter: bool,
    /// How long an idempotency key makes later publishes with the same key (of the same task)
    /// duplicates that start no run.
    #[arg(long, env = "WARREN_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub(crate) idempotency_window: Duration,
    /// Deliveries of one message before the broker dead-letters it as poison (quorum task
    /// queues created by this replica).
    #[arg(long, env = "WARREN_DELIVERY_LIMIT", default_value_t = warren_shared::topology::DEFAULT_DELIVERY_LIMIT, value_parser = clap::value_parser!(i64).range(1..))]
    pub(crate) delivery_limit: i64,
    /// Nodes holding a replica of each quorum task, lane and dead-letter queue this replica
    /// creates. Default: the broker's, every node of the cluster (three on a three-node
    /// cluster). Queues that exist keep their members (docs/operations.md).
    #[arg(long, env = "WARREN_QUORUM_GROUP_SIZE", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) quorum_group_size: Option<u32>,
    /// Where to serve /metrics, /healthz and /readyz (host:port; port 0 picks a free one; "off"
    /// serves nothing). Default 0.0.0.0:9464, or a free port, logged, when another process
    /// (another replica on this host) has that one; an address given here is used or refused.
    #[arg(long, env = "WARREN_HTTP_ADDR", value_parser = parse_http_addr)]
    pub(crate) http_addr: Option<HttpAddr>,
    /// Postgres connections this replica may open. Budget them: replicas × this + other
    /// clients must stay under the server's max_connections (docs/operations.md).
    #[arg(long, env = "WARREN_DB_POOL_SIZE", default_value_t = DEFAULT_DB_POOL_SIZE, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub(crate) db_pool_size: u32,
}

/// The worker's default HTTP address, when neither --http-addr nor WARREN_HTTP_ADDR is given.
pub(crate) const DEFAULT_HTTP_ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 9464),
);

/// Postgres connections per replica unless told otherwise: three committers taking turns at group
/// commit, plus the heartbeat and reads beside them.
pub(crate) const DEFAULT_DB_POOL_SIZE: u32 = 6;

/// The worker's HTTP address, or none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpAddr(pub(crate) Option<std::net::SocketAddr>);

fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    s.parse()
        .map(|addr| HttpAddr(Some(addr)))
        .map_err(|e| format!("{e} (expected host:port such as 0.0.0.0:9464, or off)"))
}

#[derive(Args, Debug)]
pub(crate) struct PublishArgs {
    /// The event, e.g. video.process.
    pub(crate) event: String,
    /// The JSON payload.
    #[arg(long, conflicts_with = "file")]
    pub(crate) data: Option<String>,
    /// A file holding the JSON payload.
    #[arg(long)]
    pub(crate) file: Option<std::path::PathBuf>,
    /// The message id (a fresh UUIDv7 by default; single publish only).
    #[arg(long)]
    pub(crate) message_id: Option<String>,
    /// Idempotency key (single publish only).
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Tenant.
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Extra header, NAME=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// high, normal or low: the lane of each task that listens (tasks without priority lanes
    /// run every message as normal).
    #[arg(long, default_value = "normal")]
    pub(crate) priority: warren_shared::priority::Priority,
    /// Deliver after this long (e.g. 90s, 10m, 2h, 3days); held by the broker.
    #[arg(long, value_parser = parse_duration, conflicts_with = "at")]
    pub(crate) delay: Option<Duration>,
    /// Deliver at this time (RFC 3339, e.g. 2026-11-24T09:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub(crate) at: Option<chrono::DateTime<chrono::Utc>>,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RunsArgs {
    #[command(subcommand)]
    pub(crate) command: RunsCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RunsCommand {
    /// The newest runs.
    List {
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only this status (queued, running, retrying, waiting, waiting_for_children,
        /// waiting_for_key, succeeded, halted, dead, cancelled).
        #[arg(long, value_parser = parse_status)]
        status: Option<RunStatus>,
        /// Only the children of this run (oldest first).
        #[arg(long)]
        parent: Option<uuid::Uuid>,
        /// Only this tenant's runs.
        #[arg(long)]
        tenant: Option<String>,
        /// Only runs created at or after this time: RFC 3339 (2026-11-24T09:00:00Z), or a
        /// duration back from now (30m, 1h, 7d).
        #[arg(long, value_parser = parse_time_or_ago)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only runs created before this time: RFC 3339, or a duration back from now.
        #[arg(long, value_parser = parse_time_or_ago)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// The next page: the runs after this cursor (printed under a full page).
        #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
        after: Option<warren_shared::store::RunCursor>,
        /// At most this many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A run's steps and transition timeline, by run id or message id.
    Show {
        /// Run id, or the message id it was published with.
        id: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run and its unfinished children: a queued or waiting run never starts its next
    /// step, a running step is stopped. Nothing is dead-lettered.
    Cancel {
        /// The run.
        id: uuid::Uuid,
    },
    /// Start a dead or cancelled run again from its first step, without its checkpoints.
    Retry {
        /// The run.
        id: uuid::Uuid,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct TasksArgs {
    #[command(subcommand)]
    pub(crate) command: Option<TasksCommand>,
    /// Also list the tasks declared in this task file (docs/tasks.md), as `warren worker
    /// --tasks` runs them: their limits and lanes, their queues.
    #[arg(long = "tasks", env = "WARREN_TASKS", value_name = "FILE")]
    pub(crate) tasks_file: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TasksCommand {
    /// Check a task file (docs/tasks.md) without a broker or a database: each mistake on its
    /// own line as FILE:LINE:COL, and exit code 1 when there is any.
    Validate {
        /// The task file.
        file: std::path::PathBuf,
    },
}

fn parse_queue_type(s: &str) -> Result<QueueType, String> {
    s.parse()
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    s.parse()
        .map_err(|e: warren_shared::state::UnknownStatus| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 10m, 1h)"))
}

/// A duration longer than zero (a limit of zero would time every step out at once).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero (examples: 30s, 10m, 1h)".into()),
        d => Ok(d),
    }
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-24T09:00:00Z)"))
}

/// A time, or a duration back from now.
fn parse_time_or_ago(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    let back = humantime::parse_duration(s)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| {
            format!("{s:?} is neither a time (RFC 3339, e.g. 2026-11-24T09:00:00Z) nor a duration back from now (30m, 1h, 7d)")
        })?;
    chrono::Utc::now()
        .checked_sub_signed(back)
        .ok_or_else(|| format!("{s} back from now is before any run"))
}

fn parse_cursor(s: &str) -> Result<warren_shared::store::RunCursor, String> {
    s.parse()
        .map_err(|e: warren_shared::store::BadCursor| e.to_string())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Help and version go to standard output as usual; any other command-line error is one line.
pub(crate) fn report_usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = error.render().to_string();
            eprintln!("{} (see 'warren --help')", usage_line(&rendered));
            ExitCode::from(2)
        }
    }
}

/// clap's usage error as one line: its first line, with the items it lists below a line that
/// ends in a colon ("the following required arguments were not provided:") folded in, so that
/// the line names what is missing.
fn usage_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut line = lines
        .next()
        .unwrap_or("error: invalid command line")
        .to_owned();
    if line.ends_with(':') {
        let items: Vec<&str> = lines.map(str::trim).take_while(|l| !l.is_empty()).collect();
        line = format!("{} {}", line, items.join(", "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_that_lists_what_is_missing_names_it_on_its_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --id <ID>\n  --all\n\nUsage: warren dlq replay --id <ID> <TASK>\n";
        assert_eq!(
            usage_line(rendered),
            "error: the following required arguments were not provided: --id <ID>, --all"
        );
        assert_eq!(
            usage_line("error: unexpected argument '--x' found\n\n  tip"),
            "error: unexpected argument '--x' found"
        );
    }
}
