//! HTTP steps: one signed JSON `POST` per step execution to the user's endpoint, whose answer
//! is the step's reply. The request and response are documented in `docs/steps.md`, the page
//! an endpoint is written from; the answer's mapping is [`answer`], the client [`client`].
//!
//! An execution is abandoned when its future is dropped (the step's timeout, a drain): the
//! connection goes with it, and nothing is left running. Every way an endpoint can misbehave
//! (a refused connection, a hang, a redirect loop, an HTML page, a body of gigabytes) ends as
//! a [`StepError`] that says what happened.
//!
//! The signing secret is read once, when the step is built: a step whose secret variable is
//! unset or empty is refused then (so a replica refuses to start), rather than sending unsigned
//! requests that a verifying endpoint would reject at every execution, or that an endpoint
//! which forgot to verify would take from anyone. Rotating it means restarting the replicas
//! (endpoints can accept the old and the new secret meanwhile).

mod answer;
mod client;

pub use answer::MAX_RETRY_AFTER;
pub use client::MAX_REDIRECTS;
use warren_shared::signature;
pub use warren_shared::signature::Secret;

use super::{ExternalStep, StepConfigError, StepReply, StepRequest};
use crate::run_log::StepLog;
use crate::step::{StepError, code};
use answer::{Answer, Body};
use futures::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{self, HeaderName, HeaderValue};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use warren_shared::trace_context::{self, TraceHeaders};

/// The largest response body read unless the step says otherwise: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
/// The environment variable holding the signing secret unless the step names another.
pub const DEFAULT_SECRET_ENV: &str = "WARREN_STEP_SECRET";

const SIGNATURE: HeaderName = HeaderName::from_static("warren-signature");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// An HTTP step as a task file declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStepConfig {
    /// The endpoint (http or https).
    pub url: String,
    /// The largest response body read (default 1 MiB); a larger one fails the step.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// The environment variable holding the signing secret (default `WARREN_STEP_SECRET`).
    /// Never the secret itself: a task file is not a place for secrets.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A PEM file of the certificate authorities trusted for an https endpoint, in place of
    /// the system's (an internal CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl HttpStepConfig {
    /// A configuration for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        HttpStepConfig {
            url: url.into(),
            max_response_bytes: None,
            secret_env: None,
            ca_file: None,
        }
    }

    /// Checks what can be checked without the environment or the file system (what
    /// `warren tasks validate` can say about a file), and gives the parsed URL.
    pub fn check(&self) -> Result<Url, StepConfigError> {
        let invalid = |why: String| StepConfigError::Invalid(why);
        let url = Url::parse(&self.url)
            .map_err(|e| invalid(format!("url {:?} is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(format!(
                "url {:?}: HTTP steps call http:// or https:// URLs with a host",
                self.url
            )));
        }
        if self.max_response_bytes == Some(0) {
            return Err(invalid("max_response_bytes must be at least 1".to_owned()));
        }
        if self.secret_env.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                "secret_env names no variable (leave it out for WARREN_STEP_SECRET)".to_owned(),
            ));
        }
        Ok(url)
    }

    fn secret_env(&self) -> &str {
        self.secret_env.as_deref().unwrap_or(DEFAULT_SECRET_ENV)
    }
}

/// An HTTP step, ready to call.
pub struct HttpStep {
    endpoint: Arc<Endpoint>,
}

/// What every execution of a step needs, shared by its calls.
struct Endpoint {
    url: Url,
    /// The URL as messages show it: no credentials, no query.
    shown: String,
    client: reqwest::Client,
    secret: Secret,
    max_response_bytes: usize,
}

impl HttpStep {
    /// Checks the configuration, reads the signing secret from the variable it names (refusing
    /// an unset or empty one) and prepares the client.
    pub fn new(config: HttpStepConfig) -> Result<Self, StepConfigError> {
        Self::with_secret_from(config, &|name| std::env::var_os(name))
    }

    /// As [`HttpStep::new`], reading the secret's variable through `environment` (a task file
    /// read for a replica whose environment is not this process's own, or a test's).
    pub fn with_secret_from(
        config: HttpStepConfig,
        environment: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, StepConfigError> {
        config.check()?;
        let name = config.secret_env();
        let secret = match environment(name) {
            Some(value) if !value.is_empty() => Secret::new(value.as_encoded_bytes()),
            _ => {
                return Err(StepConfigError::Invalid(format!(
                    "HTTP step {}: the signing secret's variable {name} is not set (or empty): \
                     set it in the worker's environment to the secret the endpoint verifies \
                     signatures with (docs/steps.md, \"Verifying the signature\")",
                    config.url
                )));
            }
        };
        Self::with_secret(config, secret)
    }

    /// As [`HttpStep::new`], with the secret given rather than read from the environment (for
    /// a secret from a vault, and for tests); `secret_env` is ignored.
    pub fn with_secret(config: HttpStepConfig, secret: Secret) -> Result<Self, StepConfigError> {
        let url = config.check()?;
        let client = client::shared(config.ca_file.as_deref())
            .map_err(|why| StepConfigError::Invalid(format!("HTTP step {}: {why}", shown(&url))))?;
        Ok(HttpStep {
            endpoint: Arc::new(Endpoint {
                shown: shown(&url),
                url,
                client,
                secret,
                max_response_bytes: config
                    .max_response_bytes
                    .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            }),
        })
    }
}

impl ExternalStep for HttpStep {
    fn call(
        &self,
        request: StepRequest,
        log: StepLog,
    ) -> BoxFuture<'static, Result<StepReply, StepError>> {
        let endpoint = Arc::clone(&self.endpoint);
        // Read now, under the step's span: the future may be polled elsewhere.
        let trace = trace_headers(&request);
        Box::pin(async move { endpoint.call(&request, &trace, &log).await })
    }
}

impl Endpoint {
    async fn call(
        &self,
        request: &StepRequest,
        trace: &TraceHeaders,
        log: &StepLog,
    ) -> Result<StepReply, StepError> {
        let body = serde_json::to_vec(request).map_err(|e| {
            StepError::fatal(
                "invalid_request",
                format!("cannot encode the step request: {e}"),
            )
        })?;
        let now = SystemTime::now();
        let timestamp = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let signature = signature::sign(&self.secret, timestamp, &body);
        let mut headers = header::HeaderMap::with_capacity(7);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            IDEMPOTENCY_KEY,
            header_value("Idempotency-Key", &request.idempotency_key())?,
        );
        headers.insert(SIGNATURE, header_value("Warren-Signature", &signature)?);
        headers.insert(
            TRACEPARENT,
            header_value("traceparent", &trace.traceparent)?,
        );
        if let Some(state) = &trace.tracestate {
            headers.insert(TRACESTATE, header_value("tracestate", state)?);
        }
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let text_header = |name: header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = text_header(header::CONTENT_TYPE);
        let location = text_header(header::LOCATION);
        let retry_after = text_header(header::RETRY_AFTER)
            .and_then(|value| answer::retry_after(&value, SystemTime::now()));
        let body = read_capped(response, self.max_response_bytes)
            .await
            .map_err(|e| self.transport_error(&e))?;
        let answer = Answer {
            status,
            content_type,
            retry_after,
            location,
            body,
        };
        let replied = answer::reply(&self.shown, &answer, self.max_response_bytes);
        if replied.is_err() {
            // A failing endpoint's lines are the ones its run's reader needs most.
            answer::error_logs(&answer)
                .into_iter()
                .for_each(|line| log.line(line));
        }
        replied
    }

    /// A request that got no complete answer: a refused or broken connection, a connect
    /// timeout (all retryable), or a redirect loop (not: the same request loops again).
    fn transport_error(&self, error: &reqwest::Error) -> StepError {
        let why = causes(error);
        let endpoint = &self.shown;
        if error.is_redirect() {
            StepError::fatal("redirect_loop", format!("POST {endpoint}: {why}"))
        } else if error.is_timeout() {
            StepError::timeout(format!("POST {endpoint}: timed out connecting: {why}"))
        } else if error.is_connect() {
            StepError::retryable(
                code::NETWORK,
                format!("POST {endpoint}: cannot connect: {why}"),
            )
        } else if error.is_builder() {
            StepError::fatal("invalid_request", format!("POST {endpoint}: {why}"))
        } else {
            StepError::retryable(
                code::NETWORK,
                format!("POST {endpoint}: the connection failed before a complete answer: {why}"),
            )
        }
    }
}

/// Reads a body up to `limit` bytes, stopping (and dropping the connection) past it: an
/// endpoint that answers gigabytes costs the worker at most `limit` bytes of memory.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Body, reqwest::Error> {
    let declared = response.content_length();
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok(Body::OverLimit);
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - body.len() {
            return Ok(Body::OverLimit);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body::Complete(body))
}

/// The step span's trace context when Warren exports traces; otherwise a context of the run's
/// own (its id as the trace id, not sampled), so that an endpoint's tracing still groups each
/// run's calls.
fn trace_headers(request: &StepRequest) -> TraceHeaders {
    trace_context::of_span(&tracing::Span::current()).unwrap_or_else(|| TraceHeaders {
        traceparent: format!(
            "00-{}-{:016x}-00",
            request.run.id.simple(),
            rand::random::<u64>() | 1
        ),
        tracestate: None,
    })
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, StepError> {
    HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
        StepError::fatal(
            "invalid_request",
            format!("{name} {value:?} cannot be sent as an HTTP header (control characters?)"),
        )
    })
}

/// The causes of a transport error, innermost last, without reqwest's generic outer words.
fn causes(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

/// A URL fit for messages and logs: scheme, host, port and path; no credentials, no query.
fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_must_be_http_or_https_with_a_host() {
        for url in [
            "ftp://example.com/x",
            "not a url",
            "unix:/tmp/socket",
            "http://",
        ] {
            let error = HttpStepConfig::new(url).check().unwrap_err();
            assert!(error.to_string().contains(url), "{error}");
        }
        assert!(
            HttpStepConfig::new("https://example.com/steps/a")
                .check()
                .is_ok()
        );
    }

    #[test]
    fn a_zero_response_limit_and_an_empty_secret_variable_are_refused() {
        let mut config = HttpStepConfig::new("http://127.0.0.1:1/x");
        config.max_response_bytes = Some(0);
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("max_response_bytes")
        );
        let mut config = HttpStepConfig::new("http://127.0.0.1:1/x");
        config.secret_env = Some(String::new());
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("secret_env")
        );
    }

    #[test]
    fn a_step_whose_secret_variable_is_unset_is_refused_naming_the_variable() {
        let mut config = HttpStepConfig::new("http://127.0.0.1:1/x");
        config.secret_env = Some("WARREN_TEST_SECRET_THAT_IS_NEVER_SET".to_owned());
        let error = HttpStep::new(config).err().expect("refused");
        assert!(
            error
                .to_string()
                .contains("WARREN_TEST_SECRET_THAT_IS_NEVER_SET is not set"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_is_refused_at_construction() {
        let mut config = HttpStepConfig::new("https://127.0.0.1:1/x");
        config.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        let error = HttpStep::with_secret(config, Secret::new(b"s"))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn messages_show_urls_without_credentials_or_query() {
        let url = Url::parse("https://user:pw@example.com:8443/steps/a?token=t#f").unwrap();
        assert_eq!(shown(&url), "https://example.com:8443/steps/a");
    }

    #[test]
    fn without_exported_tracing_the_trace_id_is_the_run_id() {
        let request = StepRequest {
            run: crate::step::RunInfo {
                id: uuid::Uuid::now_v7(),
                task: "t".into(),
                event: "t".into(),
                attempt: 1,
                message_id: "m".into(),
                tenant: None,
                scheduled_for: None,
            },
            step: "a".into(),
            input: serde_json::Value::Null,
            outputs: Default::default(),
        };
        let trace = trace_headers(&request);
        let parts: Vec<&str> = trace.traceparent.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], request.run.id.simple().to_string());
        assert_eq!(parts[2].len(), 16);
        assert_ne!(parts[2], "0000000000000000");
        assert_eq!(parts[3], "00");
    }
}
