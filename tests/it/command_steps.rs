//! Command steps on the real broker and database: a program per step execution, its output
//! checkpointed and passed on, its exit code deciding retries, and the worker protected from it
//! (output capped, process group killed at the timeout, environment explicit, files removed).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_shared::store::RunDetail;
use warren_tests::TestEnv;
use warren_worker::steps::command::{CommandStep, CommandStepConfig};
use warren_worker::steps::external;
use warren_worker::{Registry, RetryPolicy, StepDef, Task, TaskRunner};

/// A command step named `name` running `sh -c script` with `env`.
fn shell(name: &str, script: &str, env: &[(&str, &str)]) -> StepDef<Value> {
    let config = CommandStepConfig {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        max_output_bytes: None,
        retry_exit_code: None,
    };
    external(name, Arc::new(CommandStep::new(config).unwrap()))
}

fn attempts(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(5),
        factor: 2.0,
        jitter: false,
    }
}

/// Runs `task` on a replica, publishes `payload` once as message `id`, and waits for the run.
async fn run_once(env: &TestEnv, task: Task<Value>, id: &str, payload: Value) -> RunDetail {
    let event = task.id().to_owned();
    let worker = env.start_worker(Registry::new().register(task)).await;
    env.producer()
        .await
        .publish(
            &event,
            &payload,
            PublishOptions {
                message_id: Some(id.into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    let run = env.wait_finished(id).await;
    worker.shutdown().await.unwrap();
    run
}

/// Whether `pid` is a live process (a zombie only waits to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_steps_output_is_passed_on_to_the_next_step_with_the_runs_input() {
    let env = TestEnv::new().await;
    let task = Task::<Value>::new("cmd.chain")
        .step(shell("measure", r#"echo '{"seconds": 3}'"#, &[]))
        // `cat` answers with the request it was given: what a second step sees.
        .step(shell("report", "cat", &[]));
    let run = run_once(&env, task, "chain-1", json!({"clip": "a.mp4"})).await;

    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    let seen = run.steps[1].output.clone().unwrap();
    assert_eq!(seen["step"], "report");
    assert_eq!(seen["input"], json!({"clip": "a.mp4"}));
    assert_eq!(seen["outputs"], json!({"measure": {"seconds": 3}}));
    assert_eq!(seen["run"]["id"], json!(run.summary.id));
    assert_eq!(seen["run"]["message_id"], "chain-1");
    assert_eq!(run.steps[0].output, Some(json!({"seconds": 3})));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_75_retries_the_step_until_it_succeeds() {
    let env = TestEnv::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let tries = scratch.path().join("tries");
    let script = r#"echo x >> "$TRIES"
if [ "$(wc -l < "$TRIES")" -lt 2 ]; then echo 'encoder busy' >&2; exit 75; fi
echo '{"done": true}'"#;
    let task = Task::<Value>::new("cmd.flaky")
        .retry(attempts(3))
        .step(shell(
            "encode",
            script,
            &[("TRIES", tries.to_str().unwrap())],
        ));
    let run = run_once(&env, task, "flaky-1", json!({})).await;

    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    assert_eq!(run.summary.attempt, 2);
    assert_eq!(run.steps[0].output, Some(json!({"done": true})));
    let retried = run
        .transitions
        .iter()
        .find(|t| t.to_status == "retrying")
        .expect("a retry");
    assert!(
        retried.reason.as_deref().unwrap_or("").contains("exit_75"),
        "{retried:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_3_with_a_json_error_on_stderr_fails_the_run_for_good_with_that_code_and_message() {
    let env = TestEnv::new().await;
    let script = r#"echo 'probing...' >&2
echo '{"code": "bad_clip", "message": "no video stream in a.mp4"}' >&2
exit 3"#;
    let task = Task::<Value>::new("cmd.fatal")
        .retry(attempts(3))
        .step(shell("probe", script, &[]));
    let run = run_once(&env, task, "fatal-1", json!({})).await;

    assert_eq!(run.summary.status, "dead", "{run:#?}");
    assert_eq!(run.summary.attempt, 1, "a fatal failure is not retried");
    assert_eq!(run.summary.error_code.as_deref(), Some("bad_clip"));
    assert_eq!(
        run.error_message.as_deref(),
        Some("no video stream in a.mp4")
    );
    assert_eq!(run.steps[0].executions, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_program_fails_the_run_for_good_and_names_it() {
    let env = TestEnv::new().await;
    let config = CommandStepConfig {
        program: "./bin/no-such-encoder".into(),
        args: vec![],
        env: BTreeMap::new(),
        max_output_bytes: None,
        retry_exit_code: None,
    };
    let step = CommandStep::new(config)
        .unwrap()
        .with_base_dir("/opt/media");
    let task = Task::<Value>::new("cmd.missing")
        .retry(attempts(3))
        .step(external("encode", Arc::new(step)));
    let run = run_once(&env, task, "missing-1", json!({})).await;

    assert_eq!(run.summary.status, "dead", "{run:#?}");
    assert_eq!(run.summary.attempt, 1);
    assert_eq!(run.summary.error_code.as_deref(), Some("program_not_found"));
    let message = run.error_message.unwrap();
    assert!(
        message.contains("/opt/media/bin/no-such-encoder"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_writing_200_mib_fails_with_a_readable_reason_and_the_worker_stays_small() {
    let env = TestEnv::new().await;
    let task = Task::<Value>::new("cmd.flood")
        .retry(attempts(1))
        .step(shell("flood", "head -c 209715200 /dev/zero", &[]));
    let before = resident_bytes();
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = tokio::spawn({
        let peak = Arc::clone(&peak);
        async move {
            loop {
                peak.fetch_max(resident_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let run = run_once(&env, task, "flood-1", json!({})).await;
    sampler.abort();

    let grown = peak.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "the worker grew by {} MiB while the program wrote 200 MiB",
        grown / (1024 * 1024)
    );
    assert_eq!(run.summary.status, "dead", "{run:#?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("output_too_large"));
    let message = run.error_message.unwrap();
    assert!(message.contains("more than 1048576 bytes"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_timeout_kills_the_programs_whole_process_group() {
    let env = TestEnv::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let script = r#"sleep 300 & echo "$$ $!" > "$PIDS.tmp"; mv "$PIDS.tmp" "$PIDS"; wait"#;
    let task = Task::<Value>::new("cmd.stuck").retry(attempts(1)).step(
        shell("transcode", script, &[("PIDS", pids.to_str().unwrap())])
            .timeout(Duration::from_secs(1)),
    );
    let run = run_once(&env, task, "stuck-1", json!({})).await;

    assert_eq!(run.summary.status, "dead", "{run:#?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("timeout"));
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "the shell and its sleep");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running after the timeout: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_program_sees_only_its_configured_environment_and_no_warren_variables() {
    let env = TestEnv::new().await;
    // The names of the program's environment as a JSON array (no name needs escaping).
    let script = r#"printf '['; env | cut -d= -f1 | sort | sed 's/.*/"&"/' | paste -sd, - | tr -d '\n'; printf ']'"#;
    let task = Task::<Value>::new("cmd.env").step(shell("env", script, &[("LANG", "C")]));
    let run = run_once(&env, task, "env-1", json!({})).await;

    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    let names: Vec<String> = serde_json::from_value(run.steps[0].output.clone().unwrap()).unwrap();
    // `sh` adds PWD (and some shells SHLVL and `_`) itself.
    let foreign: Vec<&String> = names
        .iter()
        .filter(|n| !["LANG", "PATH", "HOME", "PWD", "SHLVL", "_"].contains(&n.as_str()))
        .collect();
    assert!(foreign.is_empty(), "not configured, yet seen: {foreign:?}");
    assert!(!names.iter().any(|n| n.starts_with("WARREN_")));
    assert!(names.contains(&"LANG".to_owned()) && names.contains(&"PATH".to_owned()));
    // The test process (the worker's) has more than that: cargo's variables at the least.
    assert!(std::env::vars().any(|(name, _)| !names.contains(&name)));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_execution_works_in_a_temporary_directory_that_is_gone_afterwards() {
    let env = TestEnv::new().await;
    let script = r#"echo frame > thumb.jpg; printf '{"dir": "%s", "home": "%s"}' "$PWD" "$HOME""#;
    let task = Task::<Value>::new("cmd.scratch").step(shell("thumbnail", script, &[]));
    let run = run_once(&env, task, "scratch-1", json!({})).await;

    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    let output = run.steps[0].output.clone().unwrap();
    let dir = output["dir"].as_str().unwrap();
    assert_eq!(output["home"], dir, "HOME is the working directory");
    assert!(
        Path::new(dir).starts_with(std::env::temp_dir()),
        "{dir} is not a temporary directory"
    );
    assert!(!Path::new(dir).exists(), "{dir} was left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_stops_kills_the_programs_it_is_running() {
    let env = TestEnv::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let script = r#"sleep 300 & echo "$$ $!" > "$PIDS.tmp"; mv "$PIDS.tmp" "$PIDS"; wait"#;
    let task = Task::<Value>::new("cmd.drain").step(shell(
        "transcode",
        script,
        &[("PIDS", pids.to_str().unwrap())],
    ));
    let mut config = env.worker_config();
    config.grace_period = Duration::from_secs(1);
    let worker = env
        .start_worker_with(config, Registry::new().register(task))
        .await;
    env.producer()
        .await
        .publish("cmd.drain", &json!({}), PublishOptions::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pids.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the program never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The grace period runs out with the step still running: the replica abandons it.
    worker.shutdown().await.unwrap();
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running after the replica stopped: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancelling a run whose command step is running kills the program's whole process group,
/// and the run ends `cancelled` with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_run_kills_its_programs_process_group() {
    let env = TestEnv::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let script = r#"sleep 300 & echo "$$ $!" > "$PIDS.tmp"; mv "$PIDS.tmp" "$PIDS"; wait"#;
    let task = Task::<Value>::new("cmd.cancel").step(shell(
        "transcode",
        script,
        &[("PIDS", pids.to_str().unwrap())],
    ));
    let worker = env.start_worker(Registry::new().register(task)).await;
    let message = env
        .producer()
        .await
        .publish("cmd.cancel", &json!({}), PublishOptions::default())
        .await
        .unwrap()
        .message_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pids.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the program never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = env.runs_of(&message).await[0].summary.id;
    warren_worker::control::cancel(&env.pool, run, "operator:test")
        .await
        .unwrap();
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running after the run was cancelled: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.wait_finished(&message).await.summary.status,
        "cancelled"
    );
    assert!(env.take_dead_letters("cmd.cancel").await.is_empty());
    worker.shutdown().await.unwrap();
}
