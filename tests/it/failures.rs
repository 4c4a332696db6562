//! Failure handling, on the real broker and database: retries held by the broker, checkpoints,
//! timeouts, waits, dead letters and their tools.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_shared::contract::{self, header};
use warren_shared::store::TransitionRecord;
use warren_tests::{Ledger, TestEnv};
use warren_worker::demo::{self, player};
use warren_worker::{
    Registry, RetryPolicy, StepContext, StepError, StepOutcome, Task, code, step, wait_step,
};

#[derive(Deserialize)]
struct Job {
    #[serde(default)]
    wait: bool,
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
        factor: 2.0,
        jitter: false,
    }
}

async fn publish(env: &TestEnv, event: &str, id: &str, payload: Value) {
    env.producer()
        .await
        .publish(
            event,
            &payload,
            PublishOptions {
                message_id: Some(id.into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
}

fn at(
    transitions: &[TransitionRecord],
    from: Option<&str>,
    to: &str,
    attempt: i32,
) -> DateTime<Utc> {
    transitions
        .iter()
        .find(|t| t.from_status.as_deref() == from && t.to_status == to && t.attempt == attempt)
        .unwrap_or_else(|| panic!("no {from:?} -> {to} at attempt {attempt} in {transitions:#?}"))
        .at
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// With 3 attempts, 1 s doubling and no jitter, the second attempt starts about 1 s after the
/// first failed and the third about 2 s after the second: the broker held each delay.
#[tokio::test(flavor = "multi_thread")]
async fn attempts_are_spaced_as_the_policy_says() {
    let env = TestEnv::new().await;
    let task = Task::<Value>::new("flaky.spacing")
        .retry(quick_retries(3))
        .step(step("call", |_ctx: StepContext<Value>| async move {
            Err(StepError::new(code::UPSTREAM, "upstream answered 503"))
        }));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "flaky.spacing", "spacing-1", json!({})).await;

    let run = env.wait_finished("spacing-1").await;
    assert_eq!(run.summary.status, "dead");
    assert_eq!(run.summary.attempt, 3);
    let t = &run.transitions;
    let first_wait = seconds(
        at(t, Some("running"), "retrying", 1),
        at(t, Some("retrying"), "running", 2),
    );
    let second_wait = seconds(
        at(t, Some("running"), "retrying", 2),
        at(t, Some("retrying"), "running", 3),
    );
    assert!(
        (0.9..=2.3).contains(&first_wait),
        "first retry after {first_wait} s, expected ~1 s"
    );
    assert!(
        (1.9..=3.3).contains(&second_wait),
        "second retry after {second_wait} s, expected ~2 s"
    );

    let letters = env.wait_dead_letters("flaky.spacing", 1).await;
    let headers = letters[0].delivery.properties.headers().as_ref();
    assert_eq!(
        contract::int_header(headers, header::DEAD_ATTEMPTS).unwrap(),
        Some(3)
    );
    assert_eq!(
        contract::string_header(headers, header::DEAD_REASON)
            .unwrap()
            .as_deref(),
        Some(code::UPSTREAM)
    );
    let first = contract::time_header(headers, header::DEAD_FIRST_FAILED_AT)
        .unwrap()
        .unwrap();
    let last = contract::time_header(headers, header::DEAD_LAST_FAILED_AT)
        .unwrap()
        .unwrap();
    assert!(seconds(first, last) >= 2.9, "first {first}, last {last}");
    worker.shutdown().await.unwrap();
}

/// A three-step job whose second step fails twice then succeeds runs step 1 once, step 2 three
/// times and step 3 once: each retry resumes at the failed step with the stored outputs.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_resumes_at_the_failed_step_with_the_outputs_before_it() {
    let env = TestEnv::new().await;
    let ledger = Ledger::default();
    let (l1, l2, l3) = (ledger.clone(), ledger.clone(), ledger.clone());
    let task = Task::<Value>::new("flaky.resume")
        .retry(quick_retries(3))
        .step(step("first", move |_ctx: StepContext<Value>| {
            let l = l1.clone();
            async move {
                l.record("first");
                Ok(StepOutcome::next(json!({ "token": "from-first" })))
            }
        }))
        .step(step("second", move |ctx: StepContext<Value>| {
            let l = l2.clone();
            async move {
                assert_eq!(ctx.output("first"), Some(&json!({ "token": "from-first" })));
                if l.record("second") <= 2 {
                    return Err(StepError::new(code::NETWORK, "connection reset"));
                }
                Ok(StepOutcome::next(json!({ "attempt": ctx.attempt })))
            }
        }))
        .step(step("third", move |_ctx: StepContext<Value>| {
            let l = l3.clone();
            async move {
                l.record("third");
                Ok(StepOutcome::next(json!("done")))
            }
        }));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "flaky.resume", "resume-1", json!({})).await;

    let run = env.wait_finished("resume-1").await;
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.summary.attempt, 3);
    assert_eq!(
        (
            ledger.count("first"),
            ledger.count("second"),
            ledger.count("third")
        ),
        (1, 3, 1)
    );
    let executions: Vec<_> = run
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.executions))
        .collect();
    assert_eq!(executions, [("first", 1), ("second", 3), ("third", 1)]);
    assert_eq!(run.steps[1].output, Some(json!({ "attempt": 3 })));
    let statuses: Vec<_> = run
        .transitions
        .iter()
        .map(|t| t.to_status.as_str())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "retrying").count(), 2);
    assert!(env.take_dead_letters("flaky.resume").await.is_empty());
    worker.shutdown().await.unwrap();
}

/// A non-retryable failure is dead-lettered after one attempt, with the reason in the headers
/// and the run dead in Postgres.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_retryable_failure_goes_straight_to_the_dead_letter_queue() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    publish(
        &env,
        player::TASK,
        "fatal-1",
        json!({ "playerId": player::MISSING_PLAYER }),
    )
    .await;

    let run = env.wait_finished("fatal-1").await;
    assert_eq!(run.summary.status, "dead");
    assert_eq!(run.summary.attempt, 1);
    assert_eq!(run.summary.error_code.as_deref(), Some(code::NOT_FOUND));
    let statuses: Vec<_> = run
        .transitions
        .iter()
        .map(|t| (t.from_status.as_deref(), t.to_status.as_str()))
        .collect();
    assert_eq!(statuses, [(None, "running"), (Some("running"), "dead")]);

    let letters = env.wait_dead_letters(player::TASK, 1).await;
    let headers = letters[0].delivery.properties.headers().as_ref();
    let text = |name| contract::string_header(headers, name).unwrap();
    assert_eq!(text(header::DEAD_REASON).as_deref(), Some(code::NOT_FOUND));
    assert!(text(header::DEAD_MESSAGE).unwrap().contains("404"));
    assert_eq!(text(header::DEAD_TASK).as_deref(), Some(player::TASK));
    assert_eq!(
        text(header::DEAD_ROUTING_KEY).as_deref(),
        Some(player::TASK)
    );
    assert_eq!(text(header::DEAD_RUN_ID), Some(run.summary.id.to_string()));
    assert_eq!(
        contract::int_header(headers, header::DEAD_ATTEMPTS).unwrap(),
        Some(1)
    );
    assert!(
        contract::time_header(headers, header::DEAD_LAST_FAILED_AT)
            .unwrap()
            .is_some()
    );
    assert_eq!(
        letters[0].delivery.data,
        br#"{"playerId":"missing-player"}"#
    );
    worker.shutdown().await.unwrap();
}

/// A publish delayed by 3 s starts no run before then, and one soon after.
#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_publish_fires_after_its_delay_and_not_before() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let published_at = Utc::now();
    env.producer()
        .await
        .publish(
            player::TASK,
            &json!({ "playerId": "later" }),
            PublishOptions {
                message_id: Some("delayed-1".into()),
                delay: Some(Duration::from_secs(3)),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        env.runs_of("delayed-1").await.is_empty(),
        "ran before its delay"
    );
    let run = env.wait_finished("delayed-1").await;
    let started = at(&run.transitions, None, "running", 1);
    let waited = seconds(published_at, started);
    assert!(
        (2.9..=4.5).contains(&waited),
        "started {waited} s after publishing, expected ~3 s"
    );
    assert_eq!(run.summary.status, "succeeded");
    worker.shutdown().await.unwrap();
}

/// A step's "wait for" frees its worker slot: a concurrency-1 worker runs another job while the
/// first waits, and the first resumes after its wait without running its first step again.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_run_frees_its_worker_slot() {
    let env = TestEnv::new().await;
    let ledger = Ledger::default();
    let (l1, l2) = (ledger.clone(), ledger.clone());
    let task = Task::<Job>::new("wait.slot")
        .concurrency(1)
        .step(step("before", move |ctx: StepContext<Job>| {
            let l = l1.clone();
            async move {
                l.record(&format!("before-{}", ctx.run_id));
                if ctx.input().wait {
                    Ok(StepOutcome::wait_for(
                        Duration::from_secs(3),
                        json!("slept"),
                    ))
                } else {
                    Ok(StepOutcome::next(json!("no wait")))
                }
            }
        }))
        .step(step("after", move |_ctx: StepContext<Job>| {
            let l = l2.clone();
            async move {
                l.record("after");
                Ok(StepOutcome::next(json!("done")))
            }
        }));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "wait.slot", "waits", json!({ "wait": true })).await;
    publish(&env, "wait.slot", "quick", json!({ "wait": false })).await;

    let quick = env.wait_finished("quick").await;
    let waits = env.wait_finished("waits").await;
    assert_eq!(waits.summary.status, "succeeded");
    assert!(
        quick.summary.finished_at < waits.summary.finished_at,
        "the quick job ran while the other waited"
    );
    let t = &waits.transitions;
    let waited = seconds(
        at(t, Some("running"), "waiting", 1),
        at(t, Some("waiting"), "running", 1),
    );
    assert!(
        (2.9..=4.5).contains(&waited),
        "waited {waited} s, expected ~3 s"
    );
    assert_eq!(ledger.count(&format!("before-{}", waits.summary.id)), 1);
    assert_eq!(ledger.count("after"), 2);
    worker.shutdown().await.unwrap();
}

/// Also the ready-made wait step: the run is `waiting` in Postgres while the broker holds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_step_parks_the_run_in_the_broker() {
    let env = TestEnv::new().await;
    let task = Task::<Value>::new("wait.step")
        .step(wait_step("cool_down", Duration::from_secs(2)))
        .step(step("go", |_ctx: StepContext<Value>| async move {
            Ok(StepOutcome::next(json!(1)))
        }));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "wait.step", "parked", json!({})).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs = env.runs_of("parked").await;
    assert_eq!(runs[0].summary.status, "waiting");
    assert_eq!(
        env.wait_finished("parked").await.summary.status,
        "succeeded"
    );
    worker.shutdown().await.unwrap();
}

/// A step that overruns its timeout is cancelled and counts as a retryable `timeout` failure.
#[tokio::test(flavor = "multi_thread")]
async fn an_overrunning_step_is_cancelled_and_retried_as_a_timeout() {
    let env = TestEnv::new().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let task = Task::<Value>::new("slow.step")
        .retry(quick_retries(2))
        .step(
            step("slow", move |_ctx: StepContext<Value>| {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Ok(StepOutcome::next(json!("fast enough")))
                }
            })
            .timeout(Duration::from_millis(300)),
        );
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "slow.step", "slow-1", json!({})).await;
    let run = env.wait_finished("slow-1").await;
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.summary.attempt, 2);
    let retry = run
        .transitions
        .iter()
        .find(|t| t.to_status == "retrying")
        .unwrap();
    assert!(
        retry.reason.as_deref().unwrap().starts_with("timeout:"),
        "{retry:?}"
    );
    worker.shutdown().await.unwrap();
}

/// After the cause is fixed, `warren dlq replay` sends the dead letter back; the run resumes at
/// the failed step (the first step does not run again) with a fresh attempt budget.
/// `warren dlq purge` deletes what is left.
#[tokio::test(flavor = "multi_thread")]
async fn replay_after_fixing_the_cause_resumes_at_the_failed_step() {
    let env = TestEnv::new().await;
    let ledger = Ledger::default();
    let broken = Arc::new(AtomicBool::new(true));
    let (l1, l2, b) = (ledger.clone(), ledger.clone(), broken.clone());
    let task = Task::<Value>::new("fixable")
        .retry(quick_retries(1))
        .step(step("first", move |_ctx: StepContext<Value>| {
            let l = l1.clone();
            async move {
                l.record("first");
                Ok(StepOutcome::next(json!(1)))
            }
        }))
        .step(step("second", move |_ctx: StepContext<Value>| {
            let (l, b) = (l2.clone(), b.clone());
            async move {
                l.record("second");
                if b.load(Ordering::SeqCst) {
                    return Err(StepError::new(
                        code::QUOTA_EXCEEDED,
                        "monthly quota used up",
                    ));
                }
                Ok(StepOutcome::next(json!(2)))
            }
        }));
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "fixable", "fix-me", json!({})).await;
    publish(&env, "fixable", "leave-me", json!({})).await;
    assert_eq!(env.wait_finished("fix-me").await.summary.status, "dead");
    assert_eq!(env.wait_finished("leave-me").await.summary.status, "dead");

    let output = env
        .warren()
        .args(["dlq", "list", "fixable"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        listing.contains("2 dead letter(s) for task fixable"),
        "{listing}"
    );
    assert!(listing.contains("quota_exceeded"), "{listing}");

    let output = env
        .warren()
        .args(["dlq", "show", "fix-me", "--task", "fixable"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("reason       quota_exceeded"), "{shown}");
    assert!(shown.contains("timeline"), "{shown}");

    broken.store(false, Ordering::SeqCst);
    let output = env
        .warren()
        .args(["dlq", "replay", "fixable", "--id", "fix-me"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("replayed 1 dead letter(s)"));

    let run = loop {
        let run = env.wait_finished("fix-me").await;
        if run.summary.status != "dead" {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.summary.attempt, 2);
    let path: Vec<_> = run
        .transitions
        .iter()
        .map(|t| t.to_status.as_str())
        .collect();
    assert!(path.windows(2).any(|w| w == ["dead", "queued"]), "{path:?}");
    assert_eq!(
        ledger.count("first"),
        2,
        "once per job: the replay did not run it again"
    );
    assert_eq!(
        ledger.count("second"),
        3,
        "failed once per job, then succeeded on replay"
    );

    let output = env
        .warren()
        .args(["dlq", "purge", "fixable", "--older-than", "1h", "--yes"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("purged 0 dead letter(s)"));
    let output = env
        .warren()
        .args(["dlq", "purge", "fixable"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "purge without --yes must refuse");
    let output = env
        .warren()
        .args(["dlq", "purge", "fixable", "--yes"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("purged 1 dead letter(s)"));
    assert!(env.take_dead_letters("fixable").await.is_empty());
    worker.shutdown().await.unwrap();
}

/// The failure handler runs once when a run dies, and not again for a duplicate of its message.
#[tokio::test(flavor = "multi_thread")]
async fn the_failure_handler_runs_once() {
    let env = TestEnv::new().await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let task = Task::<Value>::new("doomed")
        .step(step("fail", |_ctx: StepContext<Value>| async move {
            Err(StepError::new(code::INVALID_CREDENTIALS, "API key revoked"))
        }))
        .on_failure(move |failed| {
            let h = h.clone();
            async move { h.lock().unwrap().push((failed.code, failed.attempts)) }
        });
    let worker = env.start_worker(Registry::new().register(task)).await;
    publish(&env, "doomed", "doomed-1", json!({ "n": 1 })).await;
    env.wait_finished("doomed-1").await;
    publish(&env, "doomed", "doomed-1", json!({ "n": 1 })).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        *handled.lock().unwrap(),
        [(code::INVALID_CREDENTIALS.to_owned(), 1)]
    );
    worker.shutdown().await.unwrap();
}

/// Each step with its own retry policy has a budget of its own: two steps that each fail twice
/// before succeeding both get through, where a run-wide budget of 3 attempts would have died
/// at the fourth; and a step that keeps failing dies after its own budget.
#[tokio::test(flavor = "multi_thread")]
async fn steps_with_their_own_retry_policy_each_get_their_own_budget() {
    let env = TestEnv::new().await;
    let ledger = Ledger::default();
    let flaky = |name: &'static str, failures: usize, ledger: &Ledger| {
        let ledger = ledger.clone();
        step(name, move |ctx: StepContext<Value>| {
            let ledger = ledger.clone();
            async move {
                assert_eq!(ctx.step_name(), name);
                assert!(ctx.run().task.starts_with("own."));
                if ledger.record(name) <= failures {
                    return Err(StepError::new(code::NETWORK, "connection reset"));
                }
                ctx.set_stage(format!("{}_DONE", name.to_uppercase()));
                Ok(StepOutcome::next(json!(name)))
            }
        })
        .retry(quick_retries(3))
    };
    let task = Task::<Value>::new("own.budgets")
        .retry(quick_retries(3))
        .step(flaky("a", 2, &ledger))
        .step(flaky("b", 2, &ledger));
    let doomed = Task::<Value>::new("own.doomed")
        .retry(quick_retries(5))
        .step(flaky("c", usize::MAX, &ledger).retry(quick_retries(2)));
    let worker = env
        .start_worker(Registry::new().register(task).register(doomed))
        .await;
    publish(&env, "own.budgets", "budgets-1", json!({})).await;
    publish(&env, "own.doomed", "doomed-1", json!({})).await;

    let run = env.wait_finished("budgets-1").await;
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.summary.attempt, 5, "two retries of a, then two of b");
    assert_eq!((ledger.count("a"), ledger.count("b")), (3, 3));
    assert_eq!(
        run.summary.stage.as_deref(),
        Some("B_DONE"),
        "the stage the step named"
    );

    let run = env.wait_finished("doomed-1").await;
    assert_eq!(run.summary.status, "dead");
    assert_eq!(
        ledger.count("c"),
        2,
        "its own budget of 2, not the task's 5"
    );
    worker.shutdown().await.unwrap();
}
