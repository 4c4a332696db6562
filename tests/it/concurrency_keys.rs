//! Concurrency keys: at most N runs of one key running at once across the fleet, and keys
//! taking turns. Measured from Postgres: each run's step interval lies inside the time its run
//! held a slot, so no more of a key's step intervals overlap than its limit allows.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_tests::TestEnv;
use warren_worker::concurrency_key::ConcurrencyKey;
use warren_worker::{Registry, StepContext, StepOutcome, Task, control, step};

/// A task whose one step takes `work`, limited per tenant.
fn keyed(id: &str, key: ConcurrencyKey, work: Duration) -> Registry {
    Registry::new().register(
        Task::<Value>::new(id)
            .concurrency(8)
            .concurrency_key(key)
            .step(step("work", move |_ctx: StepContext<Value>| async move {
                tokio::time::sleep(work).await;
                Ok(StepOutcome::next(json!({})))
            })),
    )
}

async fn publish(env: &TestEnv, task: &str, tenant: &str, count: usize) {
    let producer = env.producer().await;
    let mut confirms = Vec::with_capacity(count);
    for n in 0..count {
        let body = serde_json::to_vec(&json!({ "n": n })).unwrap();
        let options = PublishOptions {
            tenant: Some(tenant.into()),
            ..PublishOptions::default()
        };
        let (_, confirm) = producer.start_json(task, &body, options).await.unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.wait().await.unwrap();
    }
}

async fn count(env: &TestEnv, sql: &str, task: &str, tenant: &str) -> i64 {
    let client = env.pool.get().await.unwrap();
    client
        .query_one(sql, &[&task, &tenant])
        .await
        .unwrap()
        .get(0)
}

async fn wait_until(env: &TestEnv, what: &str, sql: &str, task: &str, tenant: &str, at_least: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let n = count(env, sql, task, tenant).await;
        if n >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} of {at_least} {what} of tenant {tenant}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SUCCEEDED: &str =
    "SELECT count(*) FROM runs WHERE task = $1 AND tenant = $2 AND status = 'succeeded'";
const STARTED: &str =
    "SELECT count(*) FROM runs WHERE task = $1 AND tenant = $2 AND started_at IS NOT NULL";

/// The most step intervals of one tenant's runs that overlap at any instant.
async fn most_at_once(env: &TestEnv, task: &str, tenant: &str) -> (usize, usize) {
    let client = env.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT s.started_at, s.finished_at FROM run_steps s JOIN runs r ON r.id = s.run_id
             WHERE r.task = $1 AND r.tenant = $2 AND s.status = 'succeeded'",
            &[&task, &tenant],
        )
        .await
        .unwrap();
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for row in &rows {
        edges.push((row.get(0), 1));
        edges.push((row.get(1), -1));
    }
    // Ends before starts at the same instant: a slot handed on is not two at once.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    (usize::try_from(most).unwrap(), rows.len())
}

/// Tenant A publishes 5,000 jobs, then tenant B 50; three replicas, each able to run 8 at once,
/// a limit of 5 runs per tenant. All of B's runs finish before A's 1,000th starts, and neither
/// tenant ever has more than 5 runs going.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_with_a_backlog_does_not_hold_up_another_and_neither_exceeds_its_limit() {
    let _turn = warren_tests::heavy().await;
    let env = TestEnv::new().await;
    let task = "keys.fair";
    let work = Duration::from_millis(20);
    let mut replicas = Vec::new();
    for i in 0..3 {
        let mut config = env.worker_config();
        config.worker_id = format!("keyed-{i}");
        replicas.push(
            env.start_worker_with(config, keyed(task, ConcurrencyKey::per_tenant(5), work))
                .await,
        );
    }
    publish(&env, task, "A", 5000).await;
    publish(&env, task, "B", 50).await;

    wait_until(&env, "runs succeeded", SUCCEEDED, task, "B", 50).await;
    let client = env.pool.get().await.unwrap();
    let b_done: DateTime<Utc> = client
        .query_one(
            "SELECT max(finished_at) FROM runs WHERE task = $1 AND tenant = 'B'",
            &[&task],
        )
        .await
        .unwrap()
        .get(0);
    wait_until(&env, "runs started", STARTED, task, "A", 1000).await;
    let a_thousandth: DateTime<Utc> = client
        .query_one(
            "SELECT started_at FROM runs WHERE task = $1 AND tenant = 'A' AND started_at IS NOT NULL
             ORDER BY started_at OFFSET 999 LIMIT 1",
            &[&task],
        )
        .await
        .unwrap()
        .get(0);
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM runs WHERE task = $1 AND status = 'waiting_for_key'",
            &[&task],
        )
        .await
        .unwrap()
        .get(0);
    let (a_most, a_runs) = most_at_once(&env, task, "A").await;
    let (b_most, b_runs) = most_at_once(&env, task, "B").await;
    println!(
        "keys: B's 50 done {:.2} s before A's 1,000th start; at most {a_most} of A's {a_runs} runs and {b_most} of B's {b_runs} at once; {waiting} runs waiting for their key",
        (a_thousandth - b_done).num_milliseconds() as f64 / 1000.0
    );
    assert!(
        b_done < a_thousandth,
        "B's last run finished at {b_done}, after A's 1,000th started at {a_thousandth}"
    );
    assert!(a_most <= 5, "{a_most} of tenant A's runs at once");
    assert!(b_most <= 5, "{b_most} of tenant B's runs at once");
    assert!(
        a_most >= 3,
        "tenant A, with a backlog, only ever ran {a_most} at once"
    );
    assert!(
        waiting > 0,
        "A's backlog should wait for its key in Postgres, not in the queue"
    );
    for replica in replicas {
        replica.shutdown().await.unwrap();
    }
}

/// A run waiting for its key can be cancelled: its held message is dropped, it never runs, and
/// the run behind it still gets its turn.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_waiting_for_its_key_can_be_cancelled_and_the_line_moves_on() {
    let env = TestEnv::new().await;
    let task = "keys.cancel";
    let worker = env
        .start_worker(keyed(
            task,
            ConcurrencyKey::whole_task(1),
            Duration::from_millis(1500),
        ))
        .await;
    let producer = env.producer().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = format!("line-{n}");
        producer
            .publish(
                task,
                &json!({ "n": n }),
                PublishOptions {
                    message_id: Some(id.clone()),
                    ..PublishOptions::default()
                },
            )
            .await
            .unwrap();
        ids.push(id);
        // In order of arrival.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = env.pool.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let second = loop {
        let rows = env.runs_of(&ids[1]).await;
        if let Some(run) = rows.first()
            && run.summary.status == "waiting_for_key"
        {
            break run.summary.id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second run never waited for its key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    control::cancel(&env.pool, second, "operator:test")
        .await
        .unwrap();
    let held: i64 = client
        .query_one("SELECT count(*) FROM outbox WHERE run_id = $1", &[&second])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 0, "the cancelled run's held message is dropped");
    let third = env.wait_finished(&ids[2]).await;
    assert_eq!(third.summary.status, "succeeded");
    let first = env.wait_finished(&ids[0]).await;
    assert_eq!(first.summary.status, "succeeded");
    let second_run = &env.runs_of(&ids[1]).await[0];
    assert_eq!(second_run.summary.status, "cancelled");
    assert_eq!(
        second_run.steps.len(),
        0,
        "a cancelled waiting run never runs a step"
    );
    let line: i64 = client
        .query_one("SELECT count(*) FROM key_waiters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(line, 0);
    worker.shutdown().await.unwrap();
}

mod store_level {
    //! The claim's slot bookkeeping, one transaction at a time, as two replicas would do it.

    use super::*;
    use warren_shared::store::concurrency::{self, Admission};
    use warren_shared::store::{self, Claim, NewRun, outbox};

    fn new_run<'a>(message_id: &'a str, worker: &'a str) -> NewRun<'a> {
        NewRun {
            id: store::run_id("keyed.job", message_id),
            message_id,
            task: "keyed.job",
            event: "keyed.job",
            input: None,
            attempt: 1,
            idempotency_key: None,
            tenant: None,
            published_at: None,
            worker,
            wake: None,
            idempotency_window: Duration::from_secs(60),
        }
    }

    fn held(run: &NewRun<'_>) -> outbox::Message {
        outbox::Message {
            run_id: run.id,
            kind: outbox::Kind::KeyTurn,
            exchange: String::new(),
            routing_key: "keyed.queue".into(),
            body: b"{}".to_vec(),
            properties: lapin::BasicProperties::default(),
        }
    }

    /// Claims `run` for a task whose key allows one run at once.
    async fn claim(client: &deadpool_postgres::Client, run: NewRun<'_>) -> Claim {
        let held = held(&run);
        let admission = Admission {
            key: "keyed.job",
            max_running: 1,
            held: &held,
        };
        store::claim(client, &run, Some(&admission)).await.unwrap()
    }

    async fn slots(client: &deadpool_postgres::Client) -> Vec<(String, Option<String>)> {
        client
            .query(
                "SELECT s.run_id::text, s.worker FROM concurrency_slots s ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// A duplicate delivery of a run another live replica is running (a publish retried, a
    /// message in two lanes during an upgrade) leaves that replica's slot alone: the key still
    /// counts the run, and the next run waits.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_duplicate_of_a_running_run_leaves_its_slot_to_the_replica_running_it() {
        let env = TestEnv::new().await;
        let mut client = env.pool.get().await.unwrap();
        let first = warren_tests::register_replica(&mut client, "first", "keyed.job").await;
        let second = warren_tests::register_replica(&mut client, "second", "keyed.job").await;
        let one = claim(&client, new_run("one", &first)).await;
        assert!(matches!(one, Claim::Run { .. }), "{one:?}");
        let duplicate = claim(&client, new_run("one", &second)).await;
        assert!(matches!(duplicate, Claim::Busy { .. }), "{duplicate:?}");
        let held_by = slots(&client).await;
        assert_eq!(held_by.len(), 1, "{held_by:?}");
        assert_eq!(held_by[0].1.as_deref(), Some(first.as_str()));
        let two = claim(&client, new_run("two", &second)).await;
        assert_eq!(
            two,
            Claim::WaitingForKey,
            "the key's one slot is still taken"
        );
    }

    /// Postgres decides on its own whether a replica is alive (in the key trigger): it must use
    /// the workers' lease.
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_and_the_workers_agree_on_the_owner_lease() {
        let env = TestEnv::new().await;
        let client = env.pool.get().await.unwrap();
        assert_eq!(
            concurrency::owner_lease_in_postgres(&client).await.unwrap(),
            store::OWNER_LEASE
        );
    }
}
