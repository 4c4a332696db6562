//! # warren-cli: the operator's command line
//!
//! One binary, `warren`, with subcommands: `worker` runs a replica, `publish` sends events,
//! `migrate` prepares the database, `runs` and `tasks` inspect (and `tasks validate` checks a
//! task file), `prune` deletes old runs, `console` serves the web console and the HTTP API,
//! `tokens` manages its API tokens. Errors
//! are one line on standard error and a non-zero exit.
//!
//! # Layout
//!
//! * `args`: the command line (clap), flags and environment variables.
//! * `commands`: one module per subcommand.
//! * `output`: tables and JSON.
//! * `report`: an error as one line, said once, without passwords.
//! * `telemetry`: logs (off for commands unless `-v`) and traces.

mod args;
mod commands;
mod output;
mod report;
mod telemetry;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;
use warren_worker::Registry;

/// Parses the command line, runs the command with `registry`'s tasks, and turns any error into
/// one line on standard error and exit code 1 (2 for a bad command line).
pub fn main(registry: Registry) -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return args::report_usage_error(e),
    };
    warren_shared::install_crypto_provider();
    let telemetry = telemetry::init(&cli);
    let secrets = cli.global.secrets();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, registry));
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report::print(&e, &secrets);
            ExitCode::FAILURE
        }
    }
}

/// `warren runs show RUN | head`: once the reader has gone, the next line printed panics in
/// `println!` ("failed printing to stdout: Broken pipe"). That is the reader's choice, not an
/// error: end quietly with success, as the tools such output is piped from do, instead of a
/// panic message. Every other panic goes to the usual hook.
fn quiet_on_closed_stdout() {
    let usual = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        usual(info);
    }));
}

async fn run(cli: Cli, registry: Registry) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Worker(args) => commands::worker::run(&global, args, registry).await,
        Command::Publish(args) => commands::publish::run(&global, args).await,
        Command::Migrate => commands::migrate::run(&global).await,
        Command::Runs(args) => commands::runs::run(&global, args, &registry).await,
        Command::Tasks(args) => match args.command {
            Some(args::TasksCommand::Validate { file }) => {
                commands::tasks::validate(&file, &registry)
            }
            None => commands::tasks::run(&global, args, registry).await,
        },
        Command::Dlq(args) => commands::dlq::run(&global, args, &registry).await,
        Command::Workers(args) => commands::workers::run(&global, args).await,
        Command::Prune(args) => commands::prune::run(&global, args).await,
        Command::Schedules(args) => commands::schedules::run(&global, args).await,
        Command::Console(args) => commands::console::run(&global, args).await,
        Command::Tokens(args) => commands::tokens::run(&global, args).await,
    }
}
