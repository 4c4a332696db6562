//! What operators watch: a worker's `/metrics` scraped by a real Prometheus server and read back
//! through Prometheus's query API, its health endpoints, and one trace that runs from a producer
//! through a chain of two tasks to an OTLP receiver, across the real broker.
//!
//! The workers here are processes of their own: metrics are per process, and the in-process
//! workers of the other tests would count into them.

use axum::body::Bytes;
use axum::routing::post;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_tests::{TestEnv, free_port, video_payload};

const BINARY: &str = env!("CARGO_BIN_EXE_warren-test-worker");

async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Waits until `url` answers `status`.
async fn wait_status(url: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(url).await;
        if got.as_ref().is_some_and(|(s, _)| *s == status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not answer {status}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Prometheus server scraping one target every second; stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: warren\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the prometheus server runs (Debian package prometheus; scripts/test.sh installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of an instant query that yields one series, if it yields one.
    async fn value(&self, query: &str) -> Option<f64> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `query` yields `expected` (scrapes take a moment), and asserts it does.
    async fn expect(&self, query: &str, expected: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value(query).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{query} = {value:?} in Prometheus, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("warren-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_reads_what_a_worker_did_from_its_metrics_endpoint() {
    let env = TestEnv::new().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let _worker = env.spawn_test_worker(BINARY, "metrics-worker", &["--http-addr", &addr]);
    wait_status(&format!("http://{addr}/healthz"), 200).await;
    env.wait_consuming(&["video.process"]).await;
    wait_status(&format!("http://{addr}/readyz"), 200).await;

    // 5 runs succeed, 2 halt with NEEDS_USER_INPUT, 1 payload does not fit the task.
    let producer = env.producer().await;
    let low = json!({ "transcript_quality": "low" });
    for (i, extra) in std::iter::repeat_n(json!({}), 5)
        .chain(std::iter::repeat_n(low, 2))
        .enumerate()
    {
        let options = PublishOptions {
            message_id: Some(format!("metrics-{i}")),
            ..PublishOptions::default()
        };
        producer
            .publish("video.process", &video_payload(extra), options)
            .await
            .unwrap();
    }
    producer
        .publish(
            "video.process",
            &json!({ "nope": 1 }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    env.wait_for_finished_runs(8, Duration::from_secs(30)).await;

    let prometheus = Prometheus::start(&addr);
    let task = r#"task="video.process""#;
    prometheus
        .expect(&format!("sum(warren_runs_received_total{{{task}}})"), 8.0)
        .await;
    for (query, expected) in [
        (format!("sum(warren_runs_started_total{{{task}}})"), 7.0),
        (format!("sum(warren_runs_succeeded_total{{{task}}})"), 5.0),
        (
            format!(r#"sum(warren_runs_halted_total{{{task},outcome="NEEDS_USER_INPUT"}})"#),
            2.0,
        ),
        (
            format!(r#"sum(warren_runs_dead_lettered_total{{{task},reason="invalid_input"}})"#),
            1.0,
        ),
        (
            format!(r#"sum(warren_run_duration_seconds_count{{{task},outcome="succeeded"}})"#),
            5.0,
        ),
        (
            format!(
                r#"sum(warren_run_duration_seconds_bucket{{{task},outcome="halted",le="+Inf"}})"#
            ),
            2.0,
        ),
        (
            format!(
                r#"sum(warren_step_duration_seconds_count{{{task},step="validate",outcome="ok"}})"#
            ),
            7.0,
        ),
        (
            format!("sum(warren_queue_wait_seconds_count{{{task}}})"),
            7.0,
        ),
        (format!("sum(warren_runs_in_flight{{{task}}})"), 0.0),
        (format!("max(warren_queue_consumers{{{task}}})"), 1.0),
        (format!("max(warren_queue_messages{{{task}}})"), 0.0),
        (
            format!("max(warren_dead_letter_queue_messages{{{task}}})"),
            1.0,
        ),
        // The dead letter was published with a confirm.
        (
            "sum(warren_publish_confirms_total{route=\"queue\",destination=~\".*dlq.video.process\"})".into(),
            1.0,
        ),
        ("max(warren_worker_ready)".into(), 1.0),
    ] {
        prometheus.expect(&query, expected).await;
    }
    // Every state write is counted: a claim per run that started, a checkpoint per step, the
    // dead-on-arrival record; and no transaction commits without one.
    let client = env.pool.get().await.unwrap();
    let checkpoints: i64 = client
        .query_one("SELECT count(*) FROM run_steps", &[])
        .await
        .unwrap()
        .get(0);
    let commits = prometheus.value("sum(warren_state_commits_total)").await;
    let writes = prometheus.value("sum(warren_state_writes_total)").await;
    let least = 7.0 + 1.0 + checkpoints as f64;
    assert!(
        writes.is_some_and(|w| w >= least)
            && commits.is_some_and(|c| c >= 1.0 && Some(c) <= writes),
        "commits {commits:?}, writes {writes:?}, expected at least {least} writes"
    );
    // Quantiles come out of the histogram buckets.
    let p99 = prometheus
        .value(&format!(
            "histogram_quantile(0.99, sum by (le) (warren_queue_wait_seconds_bucket{{{task}}}))"
        ))
        .await;
    assert!(p99.is_some_and(f64::is_finite), "queue wait p99 {p99:?}");

    // Every series the endpoint shows is one of the catalogue's, with its HELP text.
    let (_, text) = get(&format!("http://{addr}/metrics")).await.unwrap();
    for line in text.lines().filter(|l| l.starts_with("warren_")) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        assert!(
            warren_shared::metrics::is_exported(name),
            "{name} is exported but not in the catalogue"
        );
    }
    assert!(
        text.contains("# HELP warren_runs_succeeded_total"),
        "{text}"
    );
}

/// An OTLP/HTTP (JSON) trace receiver: what it received, one request body per entry.
async fn start_otlp_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                    store.lock().unwrap().push(value);
                }
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn spans_of(bodies: &[Value]) -> Vec<Span> {
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut spans = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| text(&a["value"]["stringValue"]))
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    spans.push(Span {
                        service: service.clone(),
                        name: text(&span["name"]),
                        trace_id: text(&span["traceId"]),
                        span_id: text(&span["spanId"]),
                        parent_span_id: span["parentSpanId"].as_str().unwrap_or("").to_owned(),
                        attributes: span["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                let value = &a["value"];
                                let value = value
                                    .get("stringValue")
                                    .map(text)
                                    .unwrap_or_else(|| value.to_string());
                                (text(&a["key"]), value)
                            })
                            .collect(),
                    });
                }
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_from_the_producer_through_a_chain_of_tasks() {
    let env = TestEnv::new().await;
    let (collector, received) = start_otlp_receiver().await;
    let otel = |service: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
        ]
    };
    let worker_env = otel("chain-worker");
    let worker_env: Vec<(&str, &str)> = worker_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut worker = env.spawn_test_worker_with_env(BINARY, "trace-worker", &[], &worker_env);
    env.wait_consuming(&["chain.first", "chain.second"]).await;

    // The producer is the `warren publish` command, exporting its own span.
    let output = env
        .warren()
        .args([
            "publish",
            "chain.start",
            "--message-id",
            "trace-1",
            "--data",
            "{}",
        ])
        .envs(otel("chain-producer"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs = env.wait_for_finished_runs(2, Duration::from_secs(30)).await;
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:?}");
    assert_eq!(
        runs.len(),
        2,
        "the emitted event made exactly one downstream run"
    );

    // A drained worker exports what it still holds.
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let _ = worker.wait();

    let spans = spans_of(&received.lock().unwrap());
    let find = |what: &str, pred: &dyn Fn(&Span) -> bool| {
        spans
            .iter()
            .find(|s| pred(s))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} span among {spans:#?}"))
    };
    let publish = find("producer publish", &|s| {
        s.service == "chain-producer" && s.name == "publish"
    });
    let first = find("chain.first run", &|s| {
        s.name == "run" && s.attribute("task") == Some("chain.first")
    });
    let hand_off = find("hand_off step", &|s| {
        s.name == "step" && s.parent_span_id == first.span_id
    });
    let second = find("chain.second run", &|s| {
        s.name == "run" && s.attribute("task") == Some("chain.second")
    });
    assert_eq!(first.service, "chain-worker");
    assert_eq!(hand_off.attribute("step"), Some("hand_off"));
    assert_eq!(first.trace_id, publish.trace_id, "one trace");
    assert_eq!(
        first.parent_span_id, publish.span_id,
        "the producer's span is the run's parent"
    );
    assert_eq!(
        second.trace_id, publish.trace_id,
        "the emitted event carries the trace on"
    );
    assert_eq!(
        second.parent_span_id, hand_off.span_id,
        "the downstream run is a child of the step that emitted its event"
    );
    assert!(first.attribute("run_id").is_some(), "{first:?}");
}
