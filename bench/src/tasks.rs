//! The benchmark's tasks: no work at all (with or without a log line), so that what is
//! measured is Warren itself, 50 ms of waiting, for I/O-bound jobs, a tiny program run as a
//! command step, against the same program spawned bare, a parent that fans out to no-op
//! children and joins them, and a no-op task with priority lanes.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_worker::children::Children;
use warren_worker::steps::command::{CommandStep, CommandStepConfig};
use warren_worker::steps::http::{HttpStep, HttpStepConfig, Secret};
use warren_worker::steps::{ExternalStep, StepRequest};
use warren_worker::{Registry, StepContext, StepError, StepOutcome, Task, code, step};

/// One no-op step.
pub(crate) const NOOP: &str = "bench.noop";
/// One no-op step that writes one line to its run's log (`ctx.log`): [`NOOP`] plus the cost
/// of a log line, stored with the checkpoint.
pub(crate) const LOGGED: &str = "bench.logged";
/// Three no-op steps, each passing data on.
pub(crate) const THREE_STEPS: &str = "bench.three";
/// One step that awaits 50 ms (a call to a slow service).
pub(crate) const IO: &str = "bench.io";

/// One step that runs [`TINY_PROGRAM`] as a command step.
pub(crate) const COMMAND: &str = "bench.command";
/// One step that spawns [`TINY_PROGRAM`] bare and reads its output: the baseline of
/// [`COMMAND`], measured in the same worker under the same load.
pub(crate) const SPAWN: &str = "bench.spawn";
/// The `/bin/true` of command steps: prints `{}` and exits.
pub(crate) const TINY_PROGRAM: (&str, &str) = ("echo", "{}");

/// One step that calls the benchmark's no-op endpoint as an HTTP step.
pub(crate) const HTTP: &str = "bench.http";
/// One step that POSTs the same request to the same endpoint bare and reads the reply: the
/// baseline of [`HTTP`].
pub(crate) const HTTP_BARE: &str = "bench.http_bare";
/// Where a replica finds the endpoint of the HTTP scenarios (set by the benchmark).
pub(crate) const ENDPOINT_ENV: &str = "WARREN_BENCH_ENDPOINT";
/// The endpoint of replicas started for other scenarios: never called.
pub(crate) const NO_ENDPOINT: &str = "http://127.0.0.1:9/step";

/// A parent run: its first step starts `children` runs of [`NOOP`] (no limit), each with a
/// JSON object of `child_bytes` bytes as its input (the job of the 1-step scenario, so that
/// the rates compare), and waits for them; its last step counts their outcomes.
pub(crate) const FAN_OUT: &str = "bench.fanout";

/// One no-op step, on a task with priority lanes (the priority scenario).
pub(crate) const LANES: &str = "bench.lanes";

/// How long an I/O-bound step waits.
pub(crate) const IO_WAIT: Duration = Duration::from_millis(50);

pub(crate) fn registry() -> Registry {
    let noop = |ctx: StepContext<Value>| async move {
        let _ = ctx.input();
        Ok(StepOutcome::next(Value::Null))
    };
    let logged = |ctx: StepContext<Value>| async move {
        ctx.log(format!(
            "attempt {} of run {}: nothing to do",
            ctx.attempt, ctx.run_id
        ));
        Ok(StepOutcome::next(Value::Null))
    };
    let pass_on = |ctx: StepContext<Value>| async move {
        let seen = ctx.output("one").is_some() as u8 + ctx.output("two").is_some() as u8;
        Ok(StepOutcome::next(json!(seen)))
    };
    let command: Arc<dyn ExternalStep> = Arc::new(
        CommandStep::new(CommandStepConfig {
            program: TINY_PROGRAM.0.to_owned(),
            args: vec![TINY_PROGRAM.1.to_owned()],
            env: Default::default(),
            max_output_bytes: None,
            retry_exit_code: None,
        })
        .expect("a fixed, valid command step"),
    );
    // Each step's own time, in its output ({"us": ...}), read back from Postgres: the worker's
    // histogram buckets are too coarse for a millisecond's difference.
    let run_command = move |ctx: StepContext<Value>| {
        let command = Arc::clone(&command);
        async move {
            let started = Instant::now();
            // What `warren_worker::steps::external` does, timed.
            let reply = command
                .call(StepRequest::from_context(&ctx), ctx.logger())
                .await?;
            reply.apply(&ctx)?;
            Ok(StepOutcome::next(
                json!({"us": started.elapsed().as_micros() as u64}),
            ))
        }
    };
    let spawn_bare = |_ctx: StepContext<Value>| async move {
        let started = Instant::now();
        let out = tokio::process::Command::new(TINY_PROGRAM.0)
            .arg(TINY_PROGRAM.1)
            .output()
            .await
            .map_err(|e| StepError::fatal(code::NOT_FOUND, e.to_string()))?;
        let _: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| StepError::fatal("invalid_output", e.to_string()))?;
        Ok(StepOutcome::next(
            json!({"us": started.elapsed().as_micros() as u64}),
        ))
    };
    let endpoint = std::env::var(ENDPOINT_ENV).unwrap_or_else(|_| NO_ENDPOINT.to_owned());
    let http: Arc<dyn ExternalStep> = Arc::new(
        HttpStep::with_secret(HttpStepConfig::new(endpoint.clone()), Secret::new(b"bench"))
            .expect("a fixed, valid HTTP step"),
    );
    let call_http = move |ctx: StepContext<Value>| {
        let http = Arc::clone(&http);
        async move {
            let started = Instant::now();
            let reply = http
                .call(StepRequest::from_context(&ctx), ctx.logger())
                .await?;
            reply.apply(&ctx)?;
            Ok(StepOutcome::next(
                json!({"us": started.elapsed().as_micros() as u64}),
            ))
        }
    };
    // The same request, POSTed with a plain pooled client and no signature, no checks. The
    // workspace's reqwest has TLS without a crypto provider of its own: give it ring's (the
    // endpoint is plain http; the client is only built with one).
    let client = bare_client().expect("a plain HTTP client builds");
    let post_bare = move |ctx: StepContext<Value>| {
        let (client, endpoint) = (client.clone(), endpoint.clone());
        async move {
            let started = Instant::now();
            let body = serde_json::to_vec(&StepRequest::from_context(&ctx))
                .map_err(|e| StepError::fatal("invalid_input", e.to_string()))?;
            let reply = client
                .post(&endpoint)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| StepError::retryable(code::NETWORK, e.to_string()))?
                .bytes()
                .await
                .map_err(|e| StepError::retryable(code::NETWORK, e.to_string()))?;
            let _: Value = serde_json::from_slice(&reply)
                .map_err(|e| StepError::fatal("invalid_reply", e.to_string()))?;
            Ok(StepOutcome::next(
                json!({"us": started.elapsed().as_micros() as u64}),
            ))
        }
    };
    let fan_out = |ctx: StepContext<Value>| async move {
        let count = ctx.input()["children"].as_u64().unwrap_or(0);
        let bytes = ctx.input()["child_bytes"].as_u64().unwrap_or(0);
        let input: Value = serde_json::from_slice(&crate::payload(
            usize::try_from(bytes).unwrap_or(usize::MAX),
        ))
        .map_err(|e| StepError::fatal("invalid_input", e.to_string()))?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let children = Children::each(NOOP, std::iter::repeat_n(&input, count))?;
        Ok(StepOutcome::WaitForChildren(children))
    };
    let joined = |ctx: StepContext<Value>| async move {
        let joined = ctx.children("fan")?;
        Ok(StepOutcome::next(json!({
            "succeeded": joined.succeeded,
            "failed": joined.failed,
            "unfinished": joined.unfinished,
        })))
    };
    Registry::new()
        .register(Task::<Value>::new(NOOP).step(step("noop", noop)))
        .register(Task::<Value>::new(LOGGED).step(step("noop", logged)))
        .register(
            Task::<Value>::new(LANES)
                .priority_lanes()
                .step(step("noop", noop)),
        )
        .register(
            Task::<Value>::new(FAN_OUT)
                .step(step("fan", fan_out))
                .step(step("joined", joined)),
        )
        .register(Task::<Value>::new(HTTP).step(step("http", call_http)))
        .register(Task::<Value>::new(HTTP_BARE).step(step("post", post_bare)))
        .register(Task::<Value>::new(COMMAND).step(step("command", run_command)))
        .register(Task::<Value>::new(SPAWN).step(step("spawn", spawn_bare)))
        .register(
            Task::<Value>::new(THREE_STEPS)
                .step(step("one", pass_on))
                .step(step("two", pass_on))
                .step(step("three", pass_on)),
        )
        .register(Task::<Value>::new(IO).step(step(
            "call",
            |_ctx: StepContext<Value>| async move {
                tokio::time::sleep(IO_WAIT).await;
                Ok(StepOutcome::next(Value::Null))
            },
        )))
}

/// A pooled HTTP client with nothing of Warren's: the HTTP scenarios' baseline.
fn bare_client() -> Result<reqwest::Client, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| e.to_string())
}
