//! HTTP steps against real endpoints (axum servers in the test, and one Node.js server built
//! with clients/node), on the real broker and database: what an endpoint is sent, what its
//! answers make of the run, and that no misbehaving endpoint panics the worker or leaves a
//! run stuck.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use warren_producer::PublishOptions;
use warren_shared::contract::{self, header as warren_header};
use warren_tests::TestEnv;
use warren_worker::steps::external;
use warren_worker::steps::http::{HttpStep, HttpStepConfig, Secret};
use warren_worker::{Registry, RetryPolicy, StepContext, StepDef, StepOutcome, Task, step};

const SECRET: &[u8] = b"it-secret-for-http-steps";

/// One request an endpoint received.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON request")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

type Answerer = dyn Fn(&Call, usize) -> Response + Send + Sync;

#[derive(Clone)]
struct Served {
    calls: Arc<Mutex<Vec<Call>>>,
    answer: Arc<Answerer>,
}

/// A local endpoint that records every request and answers with `answer(call, n)`, `n` the
/// number of earlier calls on the same path. A request whose input has `sleep_ms` is answered
/// that much later.
struct Endpoint {
    base: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Endpoint {
    async fn start(answer: impl Fn(&Call, usize) -> Response + Send + Sync + 'static) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        Endpoint::serve(listener, base, answer)
    }

    fn serve<L: Listener<Addr: std::fmt::Debug>>(
        listener: L,
        base: String,
        answer: impl Fn(&Call, usize) -> Response + Send + Sync + 'static,
    ) -> Endpoint {
        let served = Served {
            calls: Arc::default(),
            answer: Arc::new(answer),
        };
        let calls = Arc::clone(&served.calls);
        let app = Router::new().fallback(record).with_state(served);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint { base, calls }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn calls(&self, path: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

async fn record(
    State(served): State<Served>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    };
    let n = {
        let mut calls = served.calls.lock().unwrap();
        let n = calls.iter().filter(|c| c.path == call.path).count();
        calls.push(call.clone());
        n
    };
    let sleep = serde_json::from_slice::<Value>(&call.body)
        .ok()
        .and_then(|v| v["input"]["sleep_ms"].as_u64());
    if let Some(ms) = sleep {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    (served.answer)(&call, n)
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn http_step(name: &str, url: String) -> StepDef<Value> {
    let step = HttpStep::with_secret(HttpStepConfig::new(url), Secret::new(SECRET)).unwrap();
    external(name, Arc::new(step))
}

/// Retries at once (delays under half a second are not held), up to `max_attempts`.
fn immediate_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        factor: 1.0,
        jitter: false,
    }
}

async fn publish(env: &TestEnv, event: &str, id: &str, payload: Value, tenant: Option<&str>) {
    env.producer()
        .await
        .publish(
            event,
            &payload,
            PublishOptions {
                message_id: Some(id.into()),
                tenant: tenant.map(str::to_owned),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
}

/// Checks `Warren-Signature` as an endpoint in any language would: HMAC-SHA256 over
/// "{t}.{body}" with the shared secret, and a fresh timestamp.
fn signature_verifies(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1 && now.abs_diff(t) < 60
}

fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_is_sent_the_run_signed_with_one_idempotency_key_per_step_and_a_500_is_retried()
{
    let env = TestEnv::new().await;
    let endpoint = Endpoint::start(|call, n| match (call.path.as_str(), n) {
        ("/a", 0) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        ("/a", _) => reply(200, json!({"output": {"n": 1}})),
        _ => reply(200, json!({"output": {"seen": call.json()["outputs"]}})),
    })
    .await;
    let task = Task::<Value>::new("http.shape")
        .retry(immediate_retries(3))
        .step(http_step("a", endpoint.url("/a")))
        .step(http_step("b", endpoint.url("/b")));
    let worker = env.start_worker(Registry::new().register(task)).await;
    let input = json!({"url": "https://example.com/a.mp4"});
    publish(&env, "http.shape", "shape-1", input.clone(), Some("acme")).await;

    let run = env.wait_finished("shape-1").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.attempt, 2, "the 500 was retried once");
    assert_eq!(run.output, Some(json!({"seen": {"a": {"n": 1}}})));

    let a = endpoint.calls("/a");
    let b = endpoint.calls("/b");
    assert_eq!((a.len(), b.len()), (2, 1));
    let run_id = run.summary.id.to_string();
    for (call, step, attempt) in [(&a[0], "a", 1), (&a[1], "a", 2), (&b[0], "b", 2)] {
        assert_eq!(call.header("content-type"), "application/json");
        assert_eq!(call.header("idempotency-key"), format!("{run_id}/{step}"));
        assert!(
            signature_verifies(call.header("warren-signature"), &call.body),
            "signature {} of {:?}",
            call.header("warren-signature"),
            call.body
        );
        assert!(
            is_traceparent(call.header("traceparent")),
            "{}",
            call.header("traceparent")
        );
        let request = call.json();
        assert_eq!(
            request["run"],
            json!({
                "id": run_id, "task": "http.shape", "event": "http.shape", "attempt": attempt,
                "message_id": "shape-1", "tenant": "acme",
            })
        );
        assert_eq!(request["step"], step);
        assert_eq!(request["input"], input);
    }
    assert_eq!(a[0].json()["outputs"], json!({}));
    assert_eq!(b[0].json()["outputs"], json!({"a": {"n": 1}}));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_names_the_stage_emits_events_waits_and_halts_the_run() {
    let env = TestEnv::new().await;
    let endpoint = Endpoint::start(|call, _| match call.path.as_str() {
        "/validate" => reply(
            200,
            json!({"output": {"ok": true}, "stage": "VALIDATED",
                   "emit": [{"event": "http.reply.validated", "payload": {"video": 7}}]}),
        ),
        "/pause" => reply(200, json!({"output": null, "wait_seconds": 1})),
        "/review" => reply(
            200,
            json!({"output": {"why": "unclear audio"}, "halt": "NEEDS_USER_INPUT"}),
        ),
        _ => reply(200, json!({"output": "should not run"})),
    })
    .await;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&received);
    let listener = Task::<Value>::new("http.reply.validated").step(step(
        "count",
        move |ctx: StepContext<Value>| {
            let seen = Arc::clone(&seen);
            async move {
                assert_eq!(ctx.input(), &json!({"video": 7}));
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(StepOutcome::next(Value::Null))
            }
        },
    ));
    let task = Task::<Value>::new("http.reply")
        .step(http_step("validate", endpoint.url("/validate")))
        .step(http_step("pause", endpoint.url("/pause")))
        .step(http_step("review", endpoint.url("/review")))
        .step(http_step("never", endpoint.url("/never")));
    let worker = env
        .start_worker(Registry::new().register(task).register(listener))
        .await;
    publish(&env, "http.reply", "reply-1", json!({}), None).await;

    let run = env.wait_finished("reply-1").await;
    assert_eq!(run.summary.status, "halted", "{run:?}");
    assert_eq!(run.summary.outcome.as_deref(), Some("NEEDS_USER_INPUT"));
    assert_eq!(run.summary.stage.as_deref(), Some("VALIDATED"));
    assert_eq!(run.output, Some(json!({"why": "unclear audio"})));
    let waited = endpoint.calls("/review")[0].at - endpoint.calls("/pause")[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(endpoint.calls("/never").is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the emitted event never ran its task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_with_retry_after_2_is_retried_no_sooner_than_2_seconds_later() {
    let env = TestEnv::new().await;
    let endpoint = Endpoint::start(|_, n| match n {
        0 => (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "2")]).into_response(),
        _ => reply(200, json!({"output": "done"})),
    })
    .await;
    let task = Task::<Value>::new("http.busy")
        .retry(immediate_retries(3))
        .step(http_step("call", endpoint.url("/call")));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "http.busy", "busy-1", json!({}), None).await;

    let run = env.wait_finished("busy-1").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    let calls = endpoint.calls("/call");
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at - calls[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_or_an_error_body_saying_not_retryable_fails_the_run_at_once_with_its_code() {
    let env = TestEnv::new().await;
    let endpoint = Endpoint::start(|call, _| match call.json()["input"]["mode"].as_str() {
        Some("400") => (StatusCode::BAD_REQUEST, "missing field url").into_response(),
        Some("error_body") => reply(
            422,
            json!({"error": {"code": "video_too_long", "message": "the video is 3 h long; the limit is 2 h", "retryable": false}}),
        ),
        _ => reply(
            503,
            json!({"error": {"code": "model_retired", "message": "the model was retired", "retryable": false}}),
        ),
    })
    .await;
    let task = Task::<Value>::new("http.refuses")
        .retry(immediate_retries(3))
        .step(http_step("call", endpoint.url("/call")));
    let worker = env.start_worker(Registry::new().register(task)).await;
    for mode in ["400", "error_body", "503_error_body"] {
        publish(
            &env,
            "http.refuses",
            &format!("refuses-{mode}"),
            json!({"mode": mode}),
            None,
        )
        .await;
    }

    for (mode, code, message) in [
        (
            "400",
            "invalid_input",
            "answered 400 Bad Request: \"missing field url\"",
        ),
        (
            "error_body",
            "video_too_long",
            "the video is 3 h long; the limit is 2 h",
        ),
        ("503_error_body", "model_retired", "the model was retired"),
    ] {
        let run = env.wait_finished(&format!("refuses-{mode}")).await;
        assert_eq!(run.summary.status, "dead", "{mode}: {run:?}");
        assert_eq!(run.summary.attempt, 1, "{mode}: not retried");
        assert_eq!(run.summary.error_code.as_deref(), Some(code), "{mode}");
        let recorded = run.error_message.clone().unwrap_or_default();
        assert!(recorded.contains(message), "{mode}: {recorded}");
    }
    assert_eq!(endpoint.calls("/call").len(), 3, "one call each");
    let mut reasons: Vec<String> = env
        .wait_dead_letters("http.refuses", 3)
        .await
        .iter()
        .map(|l| {
            contract::string_header(
                l.delivery.properties.headers().as_ref(),
                warren_header::DEAD_REASON,
            )
            .unwrap()
            .unwrap()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["invalid_input", "model_retired", "video_too_long"]
    );
    worker.shutdown().await.unwrap();
}

/// A body of `size` bytes, sent in chunks with no Content-Length.
fn streamed_body(size: usize) -> Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = size.div_ceil(chunk.len());
    Body::from_stream(futures::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_endpoint_is_a_recorded_failure_with_a_readable_reason_and_the_worker_keeps_consuming()
 {
    let env = TestEnv::new().await;
    let endpoint = Endpoint::start(|call, _| match call.json()["input"]["mode"].as_str() {
        Some("not_json") => ([(header::CONTENT_TYPE, "text/plain")], "OK").into_response(),
        Some("html_502") => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>",
        )
            .into_response(),
        Some("huge") => Response::new(streamed_body(5 * 1024 * 1024)),
        Some("loop") => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, call.path.clone())],
        )
            .into_response(),
        _ => reply(200, json!({"output": "fine"})),
    })
    .await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_url = format!("http://{}/call", closed.local_addr().unwrap());
    drop(closed);

    let task = Task::<Value>::new("http.bad")
        .retry(immediate_retries(1))
        .step(http_step("call", endpoint.url("/call")).timeout(Duration::from_secs(1)));
    let refused = Task::<Value>::new("http.refused")
        .retry(immediate_retries(1))
        .step(http_step("call", refused_url));
    let worker = env
        .start_worker(Registry::new().register(task).register(refused))
        .await;
    for mode in ["not_json", "html_502", "huge", "loop"] {
        publish(
            &env,
            "http.bad",
            &format!("bad-{mode}"),
            json!({"mode": mode}),
            None,
        )
        .await;
    }
    publish(
        &env,
        "http.bad",
        "bad-slow",
        json!({"mode": "slow", "sleep_ms": 5000}),
        None,
    )
    .await;
    publish(&env, "http.refused", "bad-refused", json!({}), None).await;

    for (id, code, fragments) in [
        (
            "bad-not_json",
            "invalid_reply",
            vec![
                "answered 200 OK with a body that is not JSON (text/plain)",
                "\"OK\"",
            ],
        ),
        (
            "bad-html_502",
            "upstream_error",
            vec!["answered 502 Bad Gateway: an HTML page titled \"502 Bad Gateway\""],
        ),
        (
            "bad-huge",
            "response_too_large",
            vec!["answered 200 OK with a body over the 1048576-byte limit"],
        ),
        (
            "bad-loop",
            "redirect_loop",
            vec!["more than 3 redirects", "/call -> "],
        ),
        (
            "bad-slow",
            "timeout",
            vec!["step call was cancelled after 1.0 s"],
        ),
        ("bad-refused", "network", vec!["cannot connect", "refused"]),
    ] {
        let run = env.wait_finished(id).await;
        assert_eq!(run.summary.status, "dead", "{id}: {run:?}");
        assert_eq!(
            run.summary.error_code.as_deref(),
            Some(code),
            "{id}: {run:?}"
        );
        let recorded = run.error_message.clone().unwrap_or_default();
        for fragment in fragments {
            assert!(
                recorded.contains(fragment),
                "{id}: {recorded:?} lacks {fragment:?}"
            );
        }
    }
    assert_eq!(env.wait_dead_letters("http.bad", 5).await.len(), 5);
    assert_eq!(env.wait_dead_letters("http.refused", 1).await.len(), 1);

    // The same worker goes on with the next job.
    publish(&env, "http.bad", "bad-then-ok", json!({"mode": "ok"}), None).await;
    let run = env.wait_finished("bad-then-ok").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.output, Some(json!("fine")));
    worker.shutdown().await.unwrap();
}

/// A node process serving `script`, killed when dropped.
struct NodeServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_client_module() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/node/index.js")
}

/// Starts `node` on `script` (which must print the port it listens on, alone on a line).
fn start_node(script: &str, secret: &str) -> NodeServer {
    let mut child = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .env("WARREN_STEP_SECRET", secret)
        .env("WARREN_CLIENT", node_client_module())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs (scripts/test.sh installs it)");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("node printed {line:?}, not a port"));
    NodeServer { child, port }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_step_task_runs_against_a_node_endpoint_built_with_the_client_module() {
    let env = TestEnv::new().await;
    let node = start_node(
        r#"
        const { createServer, StepError } = require(process.env.WARREN_CLIENT);
        const server = createServer({
          '/validate': async ({ input, run }) => {
            if (!input.url) throw new StepError('invalid_input', 'no url', { retryable: false });
            return { output: { url: input.url, task: run.task }, stage: 'VALIDATED' };
          },
          '/transcribe': async ({ outputs }) => ({ words: outputs.validate.url.length }),
        });
        server.listen(0, '127.0.0.1', () => console.log(server.address().port));
        "#,
        std::str::from_utf8(SECRET).unwrap(),
    );
    let base = format!("http://127.0.0.1:{}", node.port);
    let task = Task::<Value>::new("http.node")
        .retry(immediate_retries(3))
        .step(http_step("validate", format!("{base}/validate")))
        .step(http_step("transcribe", format!("{base}/transcribe")));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(
        &env,
        "http.node",
        "node-ok",
        json!({"url": "https://x.test/v.mp4"}),
        None,
    )
    .await;
    publish(&env, "http.node", "node-bad", json!({}), None).await;

    let run = env.wait_finished("node-ok").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("VALIDATED"));
    assert_eq!(run.output, Some(json!({"words": 20})));
    assert_eq!(
        run.steps[0].output,
        Some(json!({"url": "https://x.test/v.mp4", "task": "http.node"}))
    );
    let run = env.wait_finished("node-bad").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.attempt, 1);
    assert_eq!(run.summary.error_code.as_deref(), Some("invalid_input"));
    assert_eq!(run.error_message.as_deref(), Some("no url"));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_does_not_share_the_secret_refuses_the_step_for_good() {
    let env = TestEnv::new().await;
    let node = start_node(
        r#"
        const { createServer } = require(process.env.WARREN_CLIENT);
        const server = createServer(async () => 'unreachable');
        server.listen(0, '127.0.0.1', () => console.log(server.address().port));
        "#,
        "another-secret",
    );
    let task = Task::<Value>::new("http.unsigned")
        .retry(immediate_retries(3))
        .step(http_step(
            "call",
            format!("http://127.0.0.1:{}/", node.port),
        ));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "http.unsigned", "unsigned-1", json!({}), None).await;
    let run = env.wait_finished("unsigned-1").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.attempt, 1);
    assert_eq!(run.summary.error_code.as_deref(), Some("invalid_signature"));
    worker.shutdown().await.unwrap();
}

/// Accepts TLS connections for axum, skipping clients whose handshake fails.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A CA file, and a TLS acceptor with a certificate for 127.0.0.1 that it signed.
fn tls_pki() -> (PathBuf, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let ca_file =
        std::env::temp_dir().join(format!("warren-http-step-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca_file, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_endpoint_is_called_over_tls_and_its_certificate_is_checked() {
    let env = TestEnv::new().await;
    let (ca_file, acceptor) = tls_pki();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/call", tcp.local_addr().unwrap());
    let endpoint = Endpoint::serve(TlsListener { tcp, acceptor }, String::new(), |_, _| {
        reply(200, json!({"output": "over tls"}))
    });
    let mut trusting = HttpStepConfig::new(url.clone());
    trusting.ca_file = Some(ca_file.clone());
    let trusting = HttpStep::with_secret(trusting, Secret::new(SECRET)).unwrap();
    let task = Task::<Value>::new("http.tls")
        .retry(immediate_retries(1))
        .step(external("call", Arc::new(trusting)));
    // Trusting only the system's authorities, which did not sign the endpoint's certificate.
    let untrusting = Task::<Value>::new("http.tls.untrusted")
        .retry(immediate_retries(1))
        .step(http_step("call", url));
    let worker = env
        .start_worker(Registry::new().register(task).register(untrusting))
        .await;
    publish(&env, "http.tls", "tls-1", json!({}), None).await;
    publish(&env, "http.tls.untrusted", "tls-2", json!({}), None).await;

    let run = env.wait_finished("tls-1").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.output, Some(json!("over tls")));
    let run = env.wait_finished("tls-2").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("network"));
    let recorded = run.error_message.unwrap_or_default();
    assert!(recorded.contains("certificate"), "{recorded}");
    assert_eq!(
        endpoint.calls("/call").len(),
        1,
        "only the trusting step got through"
    );
    worker.shutdown().await.unwrap();
    let _ = std::fs::remove_file(ca_file);
}

/// Cancelling a run whose HTTP step is waiting for its endpoint aborts the request: the
/// endpoint sees its connection closed within moments, and the run ends `cancelled`.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_run_aborts_its_http_steps_request() {
    use tokio::io::AsyncReadExt;
    let env = TestEnv::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    // An endpoint that never answers: it reads until the worker hangs up, and says when.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (received_tx, received_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut received = Some(received_tx);
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(tx) = received.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        let _ = closed_tx.send(Instant::now());
    });
    let task = Task::<Value>::new("http.cancel")
        .step(http_step("call", url).timeout(Duration::from_secs(120)));
    let worker = env.start_worker(Registry::new().register(task)).await;
    let message = env
        .producer()
        .await
        .publish("http.cancel", &json!({}), PublishOptions::default())
        .await
        .unwrap()
        .message_id;
    tokio::time::timeout(Duration::from_secs(20), received_rx)
        .await
        .expect("the endpoint was called")
        .unwrap();
    let run = env.runs_of(&message).await[0].summary.id;
    let cancelled_at = Instant::now();
    warren_worker::control::cancel(&env.pool, run, "operator:test")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the request was not aborted within 5 s")
        .unwrap();
    assert!(closed.duration_since(cancelled_at) < Duration::from_secs(3));
    assert_eq!(
        env.wait_finished(&message).await.summary.status,
        "cancelled"
    );
    assert!(env.take_dead_letters("http.cancel").await.is_empty());
    worker.shutdown().await.unwrap();
}
