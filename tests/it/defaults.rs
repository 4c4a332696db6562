//! Fleet-wide defaults: a replica's default concurrency and max duration apply to the tasks
//! that do not set their own, and a task's own setting wins.

use serde_json::{Value, json};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_tests::TestEnv;
use warren_worker::{Registry, RetryPolicy, StepContext, StepOutcome, Task, step};

/// A one-step task whose step sleeps for the input's `ms`.
fn sleeper(id: &str) -> Task<Value> {
    Task::<Value>::new(id)
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .step(step("sleep", |ctx: StepContext<Value>| async move {
            let ms = ctx.input()["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(StepOutcome::next(json!({ "slept": ms })))
        }))
}

async fn publish(env: &TestEnv, event: &str, id: &str, ms: u64) {
    env.producer()
        .await
        .publish(
            event,
            &json!({ "ms": ms }),
            PublishOptions {
                message_id: Some(id.into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
}

/// The most runs of `task` whose step ran at the same time, from the steps' times in Postgres.
async fn most_at_once(env: &TestEnv, task: &str) -> i64 {
    let client = env.pool.get().await.unwrap();
    client
        .query_one(
            "SELECT max((SELECT count(*) FROM run_steps o JOIN runs r2 ON r2.id = o.run_id
                         WHERE r2.task = $1 AND o.started_at <= s.started_at
                               AND o.finished_at > s.started_at))
             FROM run_steps s JOIN runs r ON r.id = s.run_id WHERE r.task = $1",
            &[&task],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replicas_default_max_duration_stops_tasks_without_their_own_and_spares_the_others() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.default_max_duration = Duration::from_secs(1);
    let registry = Registry::new()
        .register(sleeper("defaults.plain"))
        .register(sleeper("defaults.long").max_duration(Duration::from_secs(20)));
    let worker = env.start_worker_with(config, registry).await;
    publish(&env, "defaults.plain", "plain", 3000).await;
    publish(&env, "defaults.long", "long", 2000).await;
    let plain = env.wait_finished("plain").await;
    assert_eq!(plain.summary.status, "dead");
    assert_eq!(plain.summary.error_code.as_deref(), Some("timeout"));
    let long = env.wait_finished("long").await;
    assert_eq!(long.summary.status, "succeeded");
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replicas_default_concurrency_bounds_tasks_without_their_own_and_spares_the_others() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.default_concurrency = 2;
    let registry = Registry::new()
        .register(sleeper("defaults.narrow"))
        .register(sleeper("defaults.wide").concurrency(4));
    let worker = env.start_worker_with(config, registry).await;
    for i in 0..8 {
        publish(&env, "defaults.narrow", &format!("narrow-{i}"), 400).await;
        publish(&env, "defaults.wide", &format!("wide-{i}"), 400).await;
    }
    for i in 0..8 {
        env.wait_finished(&format!("narrow-{i}")).await;
        env.wait_finished(&format!("wide-{i}")).await;
    }
    assert_eq!(most_at_once(&env, "defaults.narrow").await, 2);
    let wide = most_at_once(&env, "defaults.wide").await;
    assert!((3..=4).contains(&wide), "{wide} wide runs at once");
    worker.shutdown().await.unwrap();
}

#[test]
fn a_default_max_duration_of_zero_is_refused_in_one_line() {
    let output = std::process::Command::new(warren_tests::warren_binary())
        .args(["worker", "--default-max-duration", "0s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must be longer than zero"), "{stderr}");
}
