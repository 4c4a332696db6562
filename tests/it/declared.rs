//! Declared tasks through the real `warren` binary: a task file run by `warren worker --tasks`,
//! checked by `warren tasks validate`, and refused by a replica when it has mistakes.

use lapin::message::BasicGetMessage;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_shared::contract::{self, header};
use warren_tests::{TestEnv, TestWorker, publish_when_declared};

/// A directory of its own for a test's task files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("warren-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TASK: &str = "declared.pause";

/// Two waits, each reaching a stage (a wait step holds back the steps after it, so the run
/// takes a second), and an input schema that wants an `id`.
const TASK_FILE: &str = r#"
[[task]]
name = "declared.pause"
concurrency = 2
input_schema = { type = "object", required = ["id"], properties = { id = { type = "string" } } }

[[task.step]]
name = "first_pause"
kind = "wait"
duration = "1s"
stage = "PAUSED_ONCE"

[[task.step]]
name = "second_pause"
kind = "wait"
duration = "1s"
stage = "PAUSED_TWICE"
"#;

/// `warren worker --tasks FILE` for this test, with its log on standard error.
fn spawn_worker(env: &TestEnv, id: &str, file: &Path) -> TestWorker {
    env.declared(TASK);
    let child = env
        .warren()
        .args(["worker", "--worker-id", id, "--tasks"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    TestWorker::from(child)
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn text_header(letter: &BasicGetMessage, name: &'static str) -> String {
    contract::string_header(letter.delivery.properties.headers().as_ref(), name)
        .unwrap()
        .unwrap_or_default()
}

fn options(message_id: &str) -> PublishOptions {
    PublishOptions {
        message_id: Some(message_id.into()),
        ..PublishOptions::default()
    }
}

/// The new user's path of docs/tasks.md: a file, a replica running it beside the built-in
/// tasks, a publish, and the timeline in `warren runs show`.
#[tokio::test(flavor = "multi_thread")]
async fn a_declared_task_with_waits_and_a_schema_runs_end_to_end_on_the_worker_binary() {
    let env = TestEnv::new().await;
    let dir = TempDir::new("declared-run");
    let file = dir.write("tasks.toml", TASK_FILE);
    let _worker = spawn_worker(&env, "declared-run", &file);
    env.wait_consuming(&[TASK]).await;

    let producer = env.producer().await;
    publish_when_declared(&producer, TASK, &json!({ "id": "a-1" }), options("pause-1")).await;
    let run = env.wait_finished("pause-1").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("PAUSED_TWICE"));
    let steps: Vec<&str> = run.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(steps, ["first_pause", "second_pause"]);
    assert_eq!(run.input, Some(json!({ "id": "a-1" })));
    // The first wait held the run back from its second step.
    let took = run.summary.finished_at.unwrap() - run.summary.created_at;
    assert!(took >= chrono::Duration::seconds(1), "{took}");

    let output = env
        .warren()
        .args(["runs", "show", "pause-1"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("status     succeeded"), "{stdout}");
    let timeline = &stdout[stdout.find("timeline").expect("a timeline")..];
    let once = timeline
        .find("PAUSED_ONCE")
        .expect("first stage in the timeline");
    let over = timeline
        .find("wait is over")
        .expect("the wait in the timeline");
    let twice = timeline
        .find("PAUSED_TWICE")
        .expect("second stage in the timeline");
    assert!(once < over && over < twice, "{stdout}");
}

/// The schema's own words reach the dead letter and the run.
#[tokio::test(flavor = "multi_thread")]
async fn a_payload_the_input_schema_refuses_is_dead_lettered_as_invalid_input_with_the_schema_error()
 {
    let env = TestEnv::new().await;
    let dir = TempDir::new("declared-schema");
    let file = dir.write("tasks.toml", TASK_FILE);
    let _worker = spawn_worker(&env, "declared-schema", &file);
    env.wait_consuming(&[TASK]).await;

    let producer = env.producer().await;
    publish_when_declared(&producer, TASK, &json!({ "id": 7 }), options("bad-id")).await;
    let letters = env.wait_dead_letters(TASK, 1).await;
    assert_eq!(
        text_header(&letters[0], header::DEAD_REASON),
        "invalid_input"
    );
    let message = text_header(&letters[0], header::DEAD_MESSAGE);
    assert!(
        message.contains("the input schema refuses it: at /id: 7 is not of type \"string\""),
        "{message}"
    );
    let run = env.wait_finished("bad-id").await;
    assert_eq!(run.summary.status, "dead");
    assert_eq!(run.summary.error_code.as_deref(), Some("invalid_input"));
    assert!(run.steps.is_empty(), "no step ran: {:?}", run.steps);
}

const BAD_FILE: &str = r#"[[task]]
name = "declared.bad"
concurency = 2

[[task.step]]
name = "a"
kind = "ftp"

[[task.step]]
name = "a"
kind = "wait"
duration = "soon"
"#;

/// What `validate` says of the file above, line by line.
const BAD_FILE_MISTAKES: [&str; 4] = [
    ":3:1: unknown key `concurency` in [[task]]",
    ":7:8: unknown step kind `ftp`",
    ":10:8: duplicate step name `a` (first declared at line 6)",
    ":12:12: `duration`: \"soon\" is not a duration",
];

/// `warren tasks validate` needs no broker and no database (both point nowhere here).
#[test]
fn tasks_validate_prints_each_mistake_at_its_line_and_exits_1() {
    let dir = TempDir::new("declared-validate");
    let bad = dir.write("bad.toml", BAD_FILE);
    let good = dir.write("good.toml", TASK_FILE);
    let warren = || {
        let mut command = std::process::Command::new(warren_tests::warren_binary());
        command
            .env("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env(
                "WARREN_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nowhere",
            )
            .env_remove("RUST_LOG");
        command
    };

    let output = warren()
        .args(["tasks", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), BAD_FILE_MISTAKES.len(), "{stdout}");
    for (line, expected) in lines.iter().zip(BAD_FILE_MISTAKES) {
        assert!(
            line.starts_with(&format!("{}{expected}", bad.display())),
            "{line:?} should start with the file and {expected:?}"
        );
    }
    assert_eq!(
        stderr.trim_end(),
        format!("error: {}: 4 mistake(s)", bad.display())
    );

    let output = warren()
        .args(["tasks", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stdout.trim_end(),
        format!("{}: 1 task(s), valid", good.display())
    );
}

/// A replica refuses a file with mistakes before it takes anything from the broker, in one
/// error line that lists them; so does one whose file takes a built-in task's name.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_refuses_to_start_on_an_invalid_task_file() {
    let env = TestEnv::new().await;
    let dir = TempDir::new("declared-refused");
    let bad = dir.write("bad.toml", BAD_FILE);
    let taken = dir.write(
        "taken.toml",
        &TASK_FILE.replace("declared.pause", warren_worker::demo::video::TASK),
    );
    for (file, says) in [
        (&bad, "bad.toml is not a valid task file (4 mistake(s)): "),
        (&taken, "task `video.process` is built into this program"),
    ] {
        let mut worker = env.warren();
        worker
            .args(["worker", "--worker-id", "declared-refused", "--tasks"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = TestWorker::from(worker.spawn().unwrap());
        let output = tokio::task::spawn_blocking(move || {
            let mut child = child;
            let start = std::time::Instant::now();
            while child.try_wait().unwrap().is_none() {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "the replica started"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            (child.try_wait().unwrap(), stderr)
        })
        .await
        .unwrap();
        let (status, stderr) = output;
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(says), "{stderr}");
        if file == &bad {
            for expected in BAD_FILE_MISTAKES {
                assert!(
                    errors[0].contains(expected),
                    "{expected:?} missing: {stderr}"
                );
            }
        }
    }
    let queues = warren_tests::broker_queues(env.topology().namespace());
    assert!(queues.is_empty(), "a refused replica declared {queues:?}");
}

/// `--tasks` used to filter the built-in tasks; `--only` does now, and an old filter given to
/// `--tasks` is told so (both before anything connects).
#[test]
fn the_task_filter_is_only_now_and_an_old_filter_given_to_tasks_says_so() {
    let warren = |args: &[&str], vars: &[(&str, &str)]| {
        let output = std::process::Command::new(warren_tests::warren_binary())
            .args(args)
            .env("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env(
                "WARREN_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nowhere",
            )
            .env_remove("RUST_LOG")
            .env_remove("WARREN_TASKS")
            .env_remove("WARREN_ONLY")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        text(&output).1
    };
    let stderr = warren(
        &["worker"],
        &[("WARREN_TASKS", "video.process,player.dump")],
    );
    assert!(
        stderr.contains("--tasks (WARREN_TASKS) names a task file now")
            && stderr.contains("use --only video.process,player.dump (WARREN_ONLY)"),
        "{stderr}"
    );
    let stderr = warren(&["worker", "--only", "video.process,no.such"], &[]);
    assert!(stderr.contains("unknown task(s): no.such"), "{stderr}");
    let stderr = warren(&["worker"], &[("WARREN_ONLY", "no.such")]);
    assert!(stderr.contains("unknown task(s): no.such"), "{stderr}");
}
