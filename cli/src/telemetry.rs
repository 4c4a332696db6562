//! Logs and traces. Logs go to standard error, human-readable or JSON (`--log-format`,
//! `WARREN_LOG_FORMAT`), filtered by `RUST_LOG`, else by `-v`: the worker logs at `info`, and
//! every other command logs only its own warnings unless asked, so that its answer (or its one
//! `error:` line) is all an operator sees; a library's complaint about the connection it is
//! closing is not news to them. Every line passes through [`Secrets::scrub`] first: no password reaches a log.
//!
//! Spans are exported over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard variables for the rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf` (default) or `http/json`, headers, timeouts,
//! `OTEL_BSP_*` batching); when neither is set nothing is exported and no exporter is built.

use crate::args::{Cli, Command, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::Write;
use std::sync::Arc;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use warren_shared::redact::Secrets;

/// Flushes exported spans when the program ends.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered. Call outside the async runtime (the exporter's HTTP
    /// client is a blocking one).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: could not export the last spans: {e}");
        }
    }
}

/// Installs the log subscriber and, when configured, the OTLP trace exporter.
pub(crate) fn init(cli: &Cli) -> Telemetry {
    let worker = matches!(cli.command, Command::Worker(_));
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(worker, cli.global.verbose)));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(ScrubbedStderr(Arc::new(cli.global.secrets())))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match cli.global.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (provider, otel_error) = match otlp_provider() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("warren"))
            .with_filter(EnvFilter::new(
                "info,lapin=off,h2=off,hyper=off,reqwest=off",
            ))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    if let Some(error) = otel_error {
        tracing::warn!(%error, "traces will not be exported");
    }
    Telemetry { provider }
}

/// The log filter when `RUST_LOG` is not set.
fn default_filter(worker: bool, verbose: u8) -> &'static str {
    match (worker, verbose) {
        (true, 0) => "info",
        // The command's own warnings (something it could not show), no library's.
        (false, 0) => "off,warren_cli=warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        (_, _) => "trace",
    }
}

/// Standard error, through [`Secrets::scrub`]. Each log line is gathered whole and scrubbed when
/// the formatter lets go of it, so a password split across two writes is still found.
struct ScrubbedStderr(Arc<Secrets>);

struct ScrubbedLine {
    secrets: Arc<Secrets>,
    line: Vec<u8>,
}

impl<'a> MakeWriter<'a> for ScrubbedStderr {
    type Writer = ScrubbedLine;

    fn make_writer(&'a self) -> ScrubbedLine {
        ScrubbedLine {
            secrets: Arc::clone(&self.0),
            line: Vec::new(),
        }
    }
}

impl Write for ScrubbedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbedLine {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        let _ = std::io::stderr()
            .lock()
            .write_all(self.secrets.scrub(&line).as_bytes());
    }
}

fn otlp_provider() -> Result<Option<SdkTracerProvider>, String> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        Ok("http/json") => Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
        Ok(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use http/protobuf or http/json"
            ));
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| e.to_string())?;
    // The service name comes from OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES when set.
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let mut resource = Resource::builder();
    if !named {
        resource = resource.with_service_name("warren");
    }
    let resource = resource.build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
