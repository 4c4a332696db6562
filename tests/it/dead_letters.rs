//! Dead-letter replay as an operator uses it: a letter replayed as often as it dies again, a
//! replay of everything that stops at what was there, and dead-letter queues that looking at
//! cannot empty.

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use warren_producer::PublishOptions;
use warren_tests::TestEnv;
use warren_worker::{Registry, RetryPolicy, StepContext, StepError, StepOutcome, Task, code, step};

/// A task that dies at once (one attempt) while `broken` holds.
fn stubborn(broken: &Arc<AtomicBool>, executions: &Arc<AtomicUsize>) -> Task<Value> {
    let (broken, executions) = (Arc::clone(broken), Arc::clone(executions));
    Task::<Value>::new("stubborn")
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .step(step("call", move |_ctx: StepContext<Value>| {
            let (broken, executions) = (Arc::clone(&broken), Arc::clone(&executions));
            async move {
                executions.fetch_add(1, Ordering::SeqCst);
                if broken.load(Ordering::SeqCst) {
                    return Err(StepError::new(code::QUOTA_EXCEEDED, "quota used up"));
                }
                Ok(StepOutcome::next(json!("done")))
            }
        }))
}

async fn wait_attempt(env: &TestEnv, id: &str, attempt: i32, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = env.runs_of(id).await;
        if let [run] = runs.as_slice()
            && run.summary.attempt == attempt
            && run.summary.status == status
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never reached {status} at attempt {attempt}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn warren_ok(env: &TestEnv, args: &[&str]) -> String {
    let output = env.warren().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "warren {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_can_be_replayed_again_each_time_it_dies_again() {
    let env = TestEnv::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let executions = Arc::new(AtomicUsize::new(0));
    let worker = env
        .start_worker(Registry::new().register(stubborn(&broken, &executions)))
        .await;
    let producer = env.producer().await;
    let options = PublishOptions {
        message_id: Some("again".into()),
        ..PublishOptions::default()
    };
    producer
        .publish("stubborn", &json!({}), options)
        .await
        .unwrap();
    wait_attempt(&env, "again", 1, "dead").await;

    for (replay, attempt) in [(1, 2), (2, 3)] {
        let out = warren_ok(&env, &["dlq", "replay", "stubborn", "--id", "again"]);
        assert!(
            out.contains("replayed 1 dead letter(s)"),
            "replay {replay}: {out}"
        );
        wait_attempt(&env, "again", attempt, "dead").await;
    }
    let listing = warren_ok(&env, &["dlq", "list", "stubborn"]);
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    assert!(
        listing.contains("quota_exceeded"),
        "the step's reason, not unknown_event: {listing}"
    );

    broken.store(false, Ordering::SeqCst);
    warren_ok(&env, &["dlq", "replay", "stubborn", "--id", "again"]);
    wait_attempt(&env, "again", 4, "succeeded").await;
    assert_eq!(executions.load(Ordering::SeqCst), 4);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_everything_while_the_cause_is_not_fixed_stops_at_what_was_there() {
    let env = TestEnv::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let executions = Arc::new(AtomicUsize::new(0));
    let worker = env
        .start_worker(Registry::new().register(stubborn(&broken, &executions)))
        .await;
    let producer = env.producer().await;
    for n in 0..20 {
        let options = PublishOptions {
            message_id: Some(format!("all-{n}")),
            ..PublishOptions::default()
        };
        producer
            .publish("stubborn", &json!({}), options)
            .await
            .unwrap();
    }
    for n in 0..20 {
        wait_attempt(&env, &format!("all-{n}"), 1, "dead").await;
    }
    // Without the bound this never ends: the worker dead-letters each replayed run again.
    let mut replay = env
        .warren()
        .args(["dlq", "replay", "stubborn", "--all"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while replay.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            replay.kill().unwrap();
            panic!("dlq replay --all did not stop within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = replay.wait_with_output().unwrap();
    assert!(output.status.success());
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("replayed 20 dead letter(s)"), "{out}");
    for n in 0..20 {
        wait_attempt(&env, &format!("all-{n}"), 2, "dead").await;
    }
    // Each looked at many times, none lost (RabbitMQ 4 would drop a letter returned 20 times
    // to a quorum queue without an explicit delivery limit).
    for _ in 0..3 {
        let listing = warren_ok(&env, &["dlq", "list", "stubborn", "--limit", "5"]);
        assert!(listing.contains("20 dead letter(s)"), "{listing}");
    }
    let shown = warren_ok(&env, &["dlq", "show", "all-19", "--task", "stubborn"]);
    assert!(shown.contains("reason       quota_exceeded"), "{shown}");
    worker.shutdown().await.unwrap();
}

/// The dead-letter queue carries an explicit delivery limit it never reaches.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_queues_are_declared_with_a_delivery_limit_that_is_never_reached() {
    let env = TestEnv::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let executions = Arc::new(AtomicUsize::new(0));
    let worker = env
        .start_worker(Registry::new().register(stubborn(&broken, &executions)))
        .await;
    let dlq = env.topology().dead_letter_queue("stubborn");
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "arguments", "-q"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let line = listing
        .lines()
        .find(|l| l.split('\t').next() == Some(dlq.as_str()))
        .unwrap_or_else(|| panic!("no queue {dlq} in {listing}"));
    assert!(
        line.contains("x-delivery-limit") && line.contains("1000000000"),
        "{line}"
    );
    worker.shutdown().await.unwrap();
}

/// A dead letter whose input fails the task's schema, replayed, dies again as `invalid_input`:
/// its run goes `queued -> dead`, never left queued with no message behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_letter_whose_input_is_still_invalid_leaves_no_run_queued() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(warren_worker::demo::registry()).await;
    let task = warren_worker::demo::player::TASK;
    let options = PublishOptions {
        message_id: Some("still-invalid".into()),
        ..PublishOptions::default()
    };
    env.producer()
        .await
        .publish(task, &json!({ "playerId": 42 }), options)
        .await
        .unwrap();
    wait_attempt(&env, "still-invalid", 1, "dead").await;
    let out = warren_ok(&env, &["dlq", "replay", task, "--id", "still-invalid"]);
    assert!(out.contains("replayed 1 dead letter(s)"), "{out}");
    wait_attempt(&env, "still-invalid", 2, "dead").await;
    let run = &env.runs_of("still-invalid").await[0];
    let path: Vec<_> = run
        .transitions
        .iter()
        .map(|t| t.to_status.as_str())
        .collect();
    assert_eq!(path, ["dead", "queued", "dead"]);
    assert_eq!(run.summary.error_code.as_deref(), Some("invalid_input"));
    let listing = warren_ok(&env, &["dlq", "list", task]);
    assert!(listing.contains("1 dead letter(s)"), "{listing}");
    worker.shutdown().await.unwrap();
}
