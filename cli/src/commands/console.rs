//! `warren console`: the web console and the HTTP API (crate `warren-console`), until SIGTERM
//! or SIGINT.

use super::{CONNECT_TIMEOUT, redact};
use crate::args::Global;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use warren_console::{Console, ConsoleConfig, StartError};

#[derive(Args, Debug)]
pub(crate) struct ConsoleArgs {
    /// Where to listen. The default serves this machine only: put a TLS-terminating reverse
    /// proxy in front to serve others (docs/api.md).
    #[arg(long, env = "WARREN_CONSOLE_ADDR", default_value = warren_console::DEFAULT_BIND)]
    addr: SocketAddr,
    /// A TOML file declaring webhook sources (docs/api.md, "Webhooks").
    #[arg(long, env = "WARREN_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
    /// Largest ingress body accepted, in bytes; larger ones are answered 413.
    #[arg(long, env = "WARREN_CONSOLE_MAX_BODY", default_value_t = warren_console::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Mark the session cookie Secure: set it when browsers reach the console over HTTPS.
    #[arg(long, env = "WARREN_CONSOLE_SECURE_COOKIES")]
    secure_cookies: bool,
}

pub(crate) async fn run(global: &Global, args: ConsoleArgs) -> anyhow::Result<()> {
    let mut config = ConsoleConfig::new(&global.database_url, &global.amqp_url, &global.namespace);
    config.bind = args.addr;
    if let Some(file) = &args.config {
        config.webhooks = warren_console::webhooks::load(file)?;
    }
    config.max_body_bytes = args.max_body_bytes;
    config.secure_cookies = args.secure_cookies;
    // Only Postgres is reached at start (the broker on first use): an address taken is its
    // own error, not "cannot reach Postgres".
    let postgres = format!("Postgres at {}", redact(&global.database_url));
    let console = match tokio::time::timeout(CONNECT_TIMEOUT, Console::start(config)).await {
        Err(_) => anyhow::bail!(
            "cannot reach {postgres}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Err(e @ StartError::Database(_))) => {
            return Err(anyhow::Error::new(e).context(format!("cannot reach {postgres}")));
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(console)) => console,
    };
    // The one line a person starting it needs (logs are off without -v).
    println!("console listening on http://{}", console.addr());
    let stop = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        stopper.cancel();
    });
    console
        .serve_until(stop)
        .await
        .context("the console's server failed")
}
