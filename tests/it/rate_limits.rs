//! Fleet-wide rate limits: a task limited to 20 starts a second keeps to it across three
//! replicas with 2,000 jobs queued, measured from the runs' start times in Postgres; per-tenant
//! limits count each tenant on its own.

use serde_json::{Value, json};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_tests::TestEnv;
use warren_worker::rate_limit::RateLimit;
use warren_worker::{Registry, StepContext, StepOutcome, Task, step};

fn limited(id: &str, limit: RateLimit) -> Registry {
    Registry::new().register(
        Task::<Value>::new(id)
            .rate_limit(limit)
            .step(step("call", |_ctx: StepContext<Value>| async move {
                Ok(StepOutcome::next(json!({})))
            })),
    )
}

/// Starts per task, oldest first, from the runs' start times.
async fn starts(env: &TestEnv, task: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let client = env.pool.get().await.unwrap();
    client
        .query(
            "SELECT started_at FROM runs WHERE task = $1 AND started_at IS NOT NULL ORDER BY started_at",
            &[&task],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The most starts in any one-second window.
fn busiest_second(starts: &[chrono::DateTime<chrono::Utc>]) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (last, at) in starts.iter().enumerate() {
        while *at - starts[first] >= chrono::Duration::seconds(1) {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

async fn wait_succeeded(env: &TestEnv, task: &str, count: i64, within: Duration) {
    let client = env.pool.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM runs WHERE task = $1 AND status = 'succeeded'",
                &[&task],
            )
            .await
            .unwrap()
            .get(0);
        if done >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {count} runs of {task} finished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// 2,000 jobs, 3 replicas, 20 starts a second for the whole fleet: no second holds more than
/// 22 starts, and the average is at least 18 a second.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_starts_a_second_hold_across_three_replicas() {
    let _turn = warren_tests::heavy().await;
    let env = TestEnv::new().await;
    let task = "limits.api";
    let mut replicas = Vec::new();
    for i in 0..3 {
        let mut config = env.worker_config();
        config.worker_id = format!("limited-{i}");
        replicas.push(
            env.start_worker_with(config, limited(task, RateLimit::per_second(20)))
                .await,
        );
    }
    let producer = env.producer().await;
    let mut confirms = Vec::new();
    for i in 0..2000 {
        let body = serde_json::to_vec(&json!({ "n": i })).unwrap();
        let (_, confirm) = producer
            .start_json(task, &body, PublishOptions::default())
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.wait().await.unwrap();
    }
    wait_succeeded(&env, task, 2000, Duration::from_secs(180)).await;
    let starts = starts(&env, task).await;
    assert_eq!(starts.len(), 2000);
    let busiest = busiest_second(&starts);
    let span = (*starts.last().unwrap() - starts[0]).to_std().unwrap();
    let rate = (starts.len() - 1) as f64 / span.as_secs_f64();
    println!("rate limit: {rate:.2} starts/s on average, at most {busiest} in one second");
    assert!(busiest <= 22, "{busiest} starts in one second");
    assert!(rate >= 18.0, "only {rate:.2} starts a second");
    for replica in replicas {
        replica.shutdown().await.unwrap();
    }
}

/// A per-tenant limit counts each tenant on its own: 20 runs each of two tenants at 5 a second
/// take about 3.8 s together (7.6 s if they shared a limit), and neither starts more than its 5
/// (6 with a window's edge) in a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_tenant_limit_counts_each_tenant_on_its_own() {
    let _turn = warren_tests::heavy().await;
    let env = TestEnv::new().await;
    let task = "limits.tenant";
    let worker = env
        .start_worker(limited(task, RateLimit::per_second(5).per_tenant()))
        .await;
    let producer = env.producer().await;
    for i in 0..40 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        producer
            .publish(
                task,
                &json!({ "n": i }),
                PublishOptions {
                    tenant: Some(tenant.into()),
                    ..PublishOptions::default()
                },
            )
            .await
            .unwrap();
    }
    wait_succeeded(&env, task, 40, Duration::from_secs(30)).await;
    let client = env.pool.get().await.unwrap();
    for tenant in ["acme", "globex"] {
        let starts: Vec<chrono::DateTime<chrono::Utc>> = client
            .query(
                "SELECT started_at FROM runs WHERE task = $1 AND tenant = $2 ORDER BY started_at",
                &[&task, &tenant],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(busiest_second(&starts) <= 6, "{tenant}");
    }
    let all = starts(&env, task).await;
    let span = (*all.last().unwrap() - all[0]).to_std().unwrap();
    assert!(
        span < Duration::from_secs(5),
        "two tenants took {span:?}: they waited for each other"
    );
    worker.shutdown().await.unwrap();
}

/// A step can have a rate limit of its own: 30 runs on two replicas whose second step is limited
/// to 5 starts a second. The first steps all run at once; the limited step keeps to its limit
/// (at most 6 starts in any second, about 5 a second on average), and the runs that wait for its
/// turn keep their first step's checkpoint: it runs once per run.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_with_a_rate_limit_of_its_own_waits_for_its_turn_and_keeps_earlier_checkpoints() {
    let _turn = warren_tests::heavy().await;
    let env = TestEnv::new().await;
    let task = "limits.step";
    let registry = || {
        Registry::new().register(
            Task::<Value>::new(task)
                .step(step("prepare", |_ctx: StepContext<Value>| async move {
                    Ok(StepOutcome::next(json!({ "prepared": true })))
                }))
                .step(
                    step("call", |_ctx: StepContext<Value>| async move {
                        Ok(StepOutcome::next(json!({})))
                    })
                    .rate_limit(RateLimit::per_second(5)),
                ),
        )
    };
    let mut replicas = Vec::new();
    for i in 0..2 {
        let mut config = env.worker_config();
        config.worker_id = format!("step-limited-{i}");
        replicas.push(env.start_worker_with(config, registry()).await);
    }
    let producer = env.producer().await;
    for n in 0..30 {
        producer
            .publish(task, &json!({ "n": n }), PublishOptions::default())
            .await
            .unwrap();
    }
    wait_succeeded(&env, task, 30, Duration::from_secs(60)).await;
    let client = env.pool.get().await.unwrap();
    let step_starts = |step: &'static str| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT s.started_at, s.executions FROM run_steps s JOIN runs r ON r.id = s.run_id
                     WHERE r.task = $1 AND s.step = $2 ORDER BY s.started_at",
                    &[&task, &step],
                )
                .await
                .unwrap()
        }
    };
    let calls = step_starts("call").await;
    let starts: Vec<chrono::DateTime<chrono::Utc>> = calls.iter().map(|row| row.get(0)).collect();
    assert_eq!(starts.len(), 30);
    let busiest = busiest_second(&starts);
    let span = (*starts.last().unwrap() - starts[0]).to_std().unwrap();
    let rate = (starts.len() - 1) as f64 / span.as_secs_f64();
    let prepares = step_starts("prepare").await;
    let executions: Vec<i32> = prepares.iter().map(|row| row.get(1)).collect();
    let prepared: Vec<chrono::DateTime<chrono::Utc>> =
        prepares.iter().map(|row| row.get(0)).collect();
    let prepare_span = (*prepared.last().unwrap() - prepared[0]).to_std().unwrap();
    let waited: i64 = client
        .query_one(
            "SELECT count(DISTINCT t.run_id) FROM run_transitions t JOIN runs r ON r.id = t.run_id
             WHERE r.task = $1 AND t.to_status = 'waiting'",
            &[&task],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "step rate limit: {rate:.2} calls/s, at most {busiest} in a second; 30 prepares within {:.2} s; {waited} runs parked for their turn",
        prepare_span.as_secs_f64()
    );
    assert!(busiest <= 6, "{busiest} calls in one second");
    assert!(rate >= 4.0, "only {rate:.2} calls a second");
    assert!(
        prepare_span < Duration::from_secs(3),
        "the unlimited first step should not wait for the limited one ({prepare_span:?})"
    );
    assert!(waited > 0, "turns over 2 s away should park their runs");
    assert!(
        executions.iter().all(|n| *n == 1),
        "a parked run's earlier step ran again: {executions:?}"
    );
    for replica in replicas {
        replica.shutdown().await.unwrap();
    }
}
