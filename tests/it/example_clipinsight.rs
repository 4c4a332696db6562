//! `examples/clipinsight` end to end: its Node.js service (`server.js`, built on clients/node)
//! and the real `warren worker --tasks examples/clipinsight/tasks.toml` on the real broker and
//! database, one run down each path of the pipeline, every run's trail read back from Postgres.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use warren_producer::PublishOptions;
use warren_shared::store::RunDetail;
use warren_tests::{TestEnv, TestWorker, publish_when_declared};

const TASK: &str = "clip.process";
const SECRET: &str = "it-secret-for-clipinsight";
/// Where tasks.toml says the service is (server.js's default port).
const DOCUMENTED_BASE: &str = "http://127.0.0.1:8787/";
const STEPS: [&str; 7] = [
    "validate",
    "ingest",
    "transcribe",
    "insights",
    "drafts",
    "qa_review",
    "deliver",
];
const STAGES: [&str; 7] = [
    "VALIDATED",
    "INGESTED",
    "TRANSCRIBED",
    "INSIGHTS",
    "DRAFTED",
    "REVIEWED",
    "DELIVERED",
];

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/clipinsight")
}

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example's task file as it is, but for the service's address: the port the test chose.
fn task_file_for(port: u16) -> (TempDir, PathBuf) {
    let text = std::fs::read_to_string(example_dir().join("tasks.toml")).unwrap();
    assert_eq!(
        text.matches(DOCUMENTED_BASE).count(),
        STEPS.len(),
        "every step of tasks.toml calls {DOCUMENTED_BASE}"
    );
    let dir =
        TempDir(std::env::temp_dir().join(format!("warren-clipinsight-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("tasks.toml");
    let text = text.replace(DOCUMENTED_BASE, &format!("http://127.0.0.1:{port}/"));
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

fn start_worker(env: &TestEnv, file: &Path) -> TestWorker {
    env.declared(TASK);
    let child = env
        .warren()
        .args(["worker", "--worker-id", "clipinsight", "--tasks"])
        .arg(file)
        .env("WARREN_STEP_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    TestWorker::from(child)
}

fn clip(job: &str, extra: Value) -> Value {
    let mut payload = json!({
        "job_id": job,
        "workspace_id": "ws-7",
        "user_id": "u-42",
        "source_url": format!("s3://clips/{job}.mp4"),
    });
    payload
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    payload
}

/// A step's record as `(name, status, attempt that wrote it, executions)`.
fn steps(run: &RunDetail) -> Vec<(&str, &str, i32, i32)> {
    run.steps
        .iter()
        .map(|s| (s.step.as_str(), s.status.as_str(), s.attempt, s.executions))
        .collect()
}

/// A transition as `(from, to, stage, step, attempt)`.
type Move<'a> = (
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    i32,
);

fn transitions(run: &RunDetail) -> Vec<Move<'_>> {
    run.transitions
        .iter()
        .map(|t| {
            (
                t.from_status.as_deref(),
                t.to_status.as_str(),
                t.stage.as_deref(),
                t.step.as_deref(),
                t.attempt,
            )
        })
        .collect()
}

/// The transitions of the first `n` steps succeeding in attempt 1, from the start.
fn started_then_succeeded(n: usize) -> Vec<Move<'static>> {
    let mut moves = vec![(None, "running", None, None, 1)];
    for i in 0..n {
        moves.push((
            Some("running"),
            "running",
            Some(STAGES[i]),
            Some(STEPS[i]),
            1,
        ));
    }
    moves
}

fn output<'a>(run: &'a RunDetail, step: &str) -> &'a Value {
    run.steps
        .iter()
        .find(|s| s.step == step)
        .and_then(|s| s.output.as_ref())
        .unwrap_or_else(|| panic!("no output of {step}: {run:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_of_the_clipinsight_pipeline_leaves_its_trail_in_postgres() {
    let env = TestEnv::new().await;
    let port = warren_tests::free_port();
    let _service = warren_tests::start_node_server(
        &example_dir().join("server.js"),
        port,
        &[("WARREN_STEP_SECRET", SECRET)],
    );
    let (_dir, file) = task_file_for(port);
    let _worker = start_worker(&env, &file);
    env.wait_consuming(&[TASK]).await;

    let producer = env.producer().await;
    let cases = [
        ("clip-ok", clip("ok", json!({}))),
        (
            "clip-low",
            clip("low", json!({ "transcript_quality": "low" })),
        ),
        ("clip-manual", clip("manual", json!({ "review": "manual" }))),
        ("clip-flaky", clip("flaky", json!({ "flaky": true }))),
        (
            "clip-bad-url",
            clip("bad", json!({ "source_url": "ftp://clips/bad.mp4" })),
        ),
        (
            "clip-no-source",
            json!({ "job_id": "x", "workspace_id": "ws-7", "user_id": "u-42" }),
        ),
    ];
    for (id, payload) in &cases {
        let options = PublishOptions {
            message_id: Some((*id).into()),
            ..PublishOptions::default()
        };
        publish_when_declared(&producer, TASK, payload, options).await;
    }

    // All seven steps, once each, every stage in order, each output built on the ones before.
    let run = env.wait_finished("clip-ok").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("DELIVERED"));
    assert_eq!(run.summary.outcome, None);
    assert_eq!(run.summary.attempt, 1);
    assert_eq!(run.summary.error_code, None);
    let all_once: Vec<_> = STEPS.iter().map(|s| (*s, "succeeded", 1, 1)).collect();
    assert_eq!(steps(&run), all_once);
    let mut moves = started_then_succeeded(6);
    moves.push((
        Some("running"),
        "succeeded",
        Some("DELIVERED"),
        Some("deliver"),
        1,
    ));
    assert_eq!(transitions(&run), moves);
    assert_eq!(output(&run, "ingest")["from"], "s3://clips/ok.mp4");
    assert_eq!(output(&run, "transcribe")["transcript_id"], "tr-ok");
    assert_eq!(output(&run, "insights")["transcript_id"], "tr-ok");
    assert_eq!(
        run.output,
        Some(json!({
            "delivered_to": "workspace/ws-7/user/u-42",
            "items": ["ok-onboarding", "ok-pricing", "ok-roadmap"],
            "transcript_id": "tr-ok",
        }))
    );

    // A poor transcript halts the run at transcribe: nothing after it runs.
    let run = env.wait_finished("clip-low").await;
    assert_eq!(run.summary.status, "halted", "{run:?}");
    assert_eq!(run.summary.outcome.as_deref(), Some("NEEDS_USER_INPUT"));
    assert_eq!(run.summary.stage.as_deref(), Some("INGESTED"));
    assert_eq!(run.summary.error_code, None);
    assert_eq!(
        steps(&run),
        [
            ("validate", "succeeded", 1, 1),
            ("ingest", "succeeded", 1, 1),
            ("transcribe", "halted", 1, 1),
        ]
    );
    let mut moves = started_then_succeeded(2);
    moves.push((Some("running"), "halted", None, Some("transcribe"), 1));
    assert_eq!(transitions(&run), moves);
    assert_eq!(
        run.transitions.last().unwrap().reason.as_deref(),
        Some("NEEDS_USER_INPUT")
    );
    assert_eq!(output(&run, "transcribe")["confidence"], 0.42);

    // A manual review halts the run at qa_review, with the drafts waiting for a person.
    let run = env.wait_finished("clip-manual").await;
    assert_eq!(run.summary.status, "halted", "{run:?}");
    assert_eq!(
        run.summary.outcome.as_deref(),
        Some("REQUIRES_MANUAL_REVIEW")
    );
    assert_eq!(run.summary.stage.as_deref(), Some("DRAFTED"));
    let mut expected: Vec<_> = STEPS[..5].iter().map(|s| (*s, "succeeded", 1, 1)).collect();
    expected.push(("qa_review", "halted", 1, 1));
    assert_eq!(steps(&run), expected);
    let mut moves = started_then_succeeded(5);
    moves.push((Some("running"), "halted", None, Some("qa_review"), 1));
    assert_eq!(transitions(&run), moves);
    assert_eq!(
        output(&run, "qa_review")["pending"],
        json!(["manual-onboarding", "manual-pricing", "manual-roadmap"])
    );

    // insights fails once and succeeds on its retry, the next attempt of the run; the three
    // steps before it ran once (their checkpoints were used), the three after it in attempt 2.
    let run = env.wait_finished("clip-flaky").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("DELIVERED"));
    assert_eq!(run.summary.attempt, 2);
    assert_eq!(
        steps(&run),
        [
            ("validate", "succeeded", 1, 1),
            ("ingest", "succeeded", 1, 1),
            ("transcribe", "succeeded", 1, 1),
            ("insights", "succeeded", 2, 2),
            ("drafts", "succeeded", 2, 1),
            ("qa_review", "succeeded", 2, 1),
            ("deliver", "succeeded", 2, 1),
        ]
    );
    let mut moves = started_then_succeeded(3);
    moves.extend([
        (Some("running"), "retrying", None, Some("insights"), 1),
        (Some("retrying"), "running", None, None, 2),
    ]);
    for i in 3..6 {
        moves.push((
            Some("running"),
            "running",
            Some(STAGES[i]),
            Some(STEPS[i]),
            2,
        ));
    }
    moves.push((
        Some("running"),
        "succeeded",
        Some("DELIVERED"),
        Some("deliver"),
        2,
    ));
    assert_eq!(transitions(&run), moves);
    assert_eq!(
        run.transitions[4].reason.as_deref(),
        Some("upstream_error: the insights model is overloaded, try again")
    );
    // The service counted two calls of insights for the run, and it echoed the transcript.
    assert_eq!(output(&run, "insights")["execution"], 2);
    assert_eq!(output(&run, "insights")["transcript_id"], "tr-flaky");

    // A source the pipeline cannot read fails validate for good: dead at attempt 1.
    let run = env.wait_finished("clip-bad-url").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.attempt, 1);
    assert_eq!(run.summary.stage, None);
    assert_eq!(run.summary.error_code.as_deref(), Some("invalid_input"));
    assert_eq!(
        run.error_message.as_deref(),
        Some("source_url \"ftp://clips/bad.mp4\" is not an http, https or s3 URL")
    );
    assert_eq!(steps(&run), [("validate", "failed", 1, 1)]);
    assert_eq!(
        transitions(&run),
        [
            (None, "running", None, None, 1),
            (Some("running"), "dead", None, Some("validate"), 1),
        ]
    );

    // A payload the task file's schema refuses never reaches the service.
    let run = env.wait_finished("clip-no-source").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("invalid_input"));
    assert!(
        run.error_message
            .as_deref()
            .is_some_and(|m| m.contains("\"source_url\" is a required property")),
        "{run:?}"
    );
    assert!(run.steps.is_empty(), "{run:?}");
    assert_eq!(transitions(&run), [(None, "dead", None, None, 1)]);

    let letters = env.wait_dead_letters(TASK, 2).await;
    assert_eq!(letters.len(), 2);
}
