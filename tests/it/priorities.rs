//! Priority lanes: a message marked `warren-priority: high` starts before a task's normal
//! backlog, normal work is never starved by a sustained high load, retries come back to their
//! lane, a task without lanes runs a high message as normal, and a namespace declared by an
//! earlier release (the task queue bound straight to its events) is upgraded without a message
//! delivered twice.

use lapin::options::{ExchangeDeleteOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_producer::{PublishError, PublishOptions, Publisher};
use warren_shared::contract::{Outgoing, header};
use warren_shared::priority::Priority;
use warren_shared::topology::{Destination, QueueStats, Topology, inspect_queue};
use warren_tests::TestEnv;
use warren_worker::{Registry, RetryPolicy, StepContext, StepError, StepOutcome, Task, step};

/// The order runs started in, as `{kind}-{n}` from their input.
#[derive(Clone, Default)]
struct Starts(Arc<Mutex<Vec<String>>>);

impl Starts {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Where the first start whose name begins with `prefix` is in the order.
    fn position(&self, prefix: &str) -> Option<usize> {
        self.all().iter().position(|s| s.starts_with(prefix))
    }
}

/// A task with lanes (or without) that runs one job at a time, each taking `step_ms`, and
/// records the order of the starts. A job with `"fail_once": true` fails its first attempt.
fn one_at_a_time(id: &str, lanes: bool, step_ms: u64, starts: &Starts) -> Registry {
    let starts = starts.clone();
    let mut task = Task::<Value>::new(id)
        .concurrency(1)
        .retry(RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            factor: 1.0,
            jitter: false,
        })
        .step(step("work", move |ctx: StepContext<Value>| {
            let starts = starts.clone();
            async move {
                let name = ctx.input()["name"].as_str().unwrap_or("?").to_owned();
                starts
                    .0
                    .lock()
                    .unwrap()
                    .push(format!("{name}#{}", ctx.attempt));
                if ctx.input()["fail_once"] == json!(true) && ctx.attempt == 1 {
                    return Err(StepError::retryable("FLAKY", "first attempt fails"));
                }
                tokio::time::sleep(Duration::from_millis(step_ms)).await;
                Ok(StepOutcome::next(json!({})))
            }
        }));
    if lanes {
        task = task.priority_lanes();
    }
    Registry::new().register(task)
}

/// Publishes `count` jobs named `{kind}-{n}` with `priority`, pipelined, and waits for their
/// confirms.
async fn publish_jobs(env: &TestEnv, task: &str, kind: &str, count: usize, priority: Priority) {
    let producer = env.producer().await;
    let mut pending = Vec::new();
    for n in 0..count {
        let body = json!({ "name": format!("{kind}-{n}") }).to_string();
        let options = PublishOptions {
            priority,
            ..PublishOptions::default()
        };
        let (_, confirm) = producer
            .start_json(task, body.as_bytes(), options)
            .await
            .unwrap();
        pending.push(confirm);
    }
    for confirm in pending {
        confirm.wait().await.unwrap();
    }
}

async fn wait_for_starts(starts: &Starts, count: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while starts.all().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} starts",
            starts.all().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queue(env: &TestEnv, name: &str) -> Option<QueueStats> {
    let connection = warren_shared::amqp::connect(&env.amqp_url, "warren-tests")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let stats = inspect_queue(&channel, name).await.unwrap();
    warren_shared::amqp::close(&connection, "done").await;
    stats
}

/// Ready messages in each lane of `task`: (high, normal, low).
async fn lane_depths(env: &TestEnv, task: &str) -> (u32, u32, u32) {
    let t = env.topology();
    let depth = |stats: Option<QueueStats>| stats.map_or(0, |s| s.messages);
    (
        depth(queue(env, &t.lane_queue(task, Priority::High)).await),
        depth(queue(env, &t.lane_queue(task, Priority::Normal)).await),
        depth(queue(env, &t.lane_queue(task, Priority::Low)).await),
    )
}

/// Waits until `task`'s lanes hold `expected` ready messages (a published message is confirmed
/// before a quorum queue counts it ready).
async fn wait_depths(env: &TestEnv, task: &str, expected: (u32, u32, u32)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let depths = lane_depths(env, task).await;
        if depths == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lanes (high, normal, low) hold {depths:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Declares `task`'s queues as a replica would, without consuming them.
async fn declare(env: &TestEnv, task: &str, lanes: bool) -> lapin::Connection {
    let connection = warren_shared::amqp::connect(&env.amqp_url, "warren-tests")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    env.topology()
        .declare_task(&channel, task, &[task.to_owned()], lanes)
        .await
        .unwrap();
    connection
}

async fn delete(topology: &Topology, connection: &lapin::Connection, task: &str) {
    let channel = connection.create_channel().await.unwrap();
    topology.delete_all(&channel, [task]).await;
    warren_shared::amqp::close(connection, "done").await;
}

/// 300 normal jobs wait for one slot; a high job published after them starts long before the
/// backlog drains (as soon as the slot frees, give or take the normal deliveries already taken).
#[tokio::test(flavor = "multi_thread")]
async fn a_high_job_starts_before_the_normal_backlog_drains() {
    let env = TestEnv::new().await;
    let task = "prio.backlog";
    let starts = Starts::default();
    let worker = env
        .start_worker(one_at_a_time(task, true, 10, &starts))
        .await;
    publish_jobs(&env, task, "normal", 300, Priority::Normal).await;
    publish_jobs(&env, task, "high", 1, Priority::High).await;
    wait_for_starts(&starts, 301, Duration::from_secs(60)).await;
    let high = starts.position("high-0").unwrap();
    let backlog_left = 300 - high;
    assert!(
        backlog_left > 200,
        "the high job started after {high} normal jobs: {:?}",
        &starts.all()[..high + 1]
    );
    worker.shutdown().await.unwrap();
}

/// With 100 high jobs and 20 normal ones ready, normal jobs keep starting (one start in five
/// while both lanes have work), and low ones too.
#[tokio::test(flavor = "multi_thread")]
async fn normal_and_low_work_start_under_a_sustained_high_load() {
    let env = TestEnv::new().await;
    let task = "prio.starve";
    let starts = Starts::default();
    // Declared and filled first, so that every lane has work when the replica starts.
    let connection = declare(&env, task, true).await;
    publish_jobs(&env, task, "high", 100, Priority::High).await;
    publish_jobs(&env, task, "normal", 20, Priority::Normal).await;
    publish_jobs(&env, task, "low", 10, Priority::Low).await;
    wait_depths(&env, task, (100, 20, 10)).await;
    let worker = env
        .start_worker(one_at_a_time(task, true, 5, &starts))
        .await;
    wait_for_starts(&starts, 60, Duration::from_secs(60)).await;
    let first: Vec<String> = starts.all().into_iter().take(60).collect();
    let count = |kind: &str| first.iter().filter(|s| s.starts_with(kind)).count();
    assert!(count("normal") >= 8, "normal starved: {first:?}");
    assert!(count("low") >= 3, "low starved: {first:?}");
    assert!(count("high") >= 35, "high did not come first: {first:?}");
    assert!(
        starts.position("normal").unwrap() <= 6,
        "normal waited too long: {first:?}"
    );
    worker.shutdown().await.unwrap();
    warren_shared::amqp::close(&connection, "done").await;
}

/// The copies Warren sends back to a task (a retry through the delay queues, an immediate
/// retry or wake-up, a replayed dead letter) carry the message's headers and enter through the
/// lane exchange: each comes back to the lane it came from.
#[tokio::test(flavor = "multi_thread")]
async fn copies_sent_back_to_a_task_return_to_their_lane() {
    let env = TestEnv::new().await;
    let task = "prio.copies";
    let topology = env.topology();
    let connection = declare(&env, task, true).await;
    let publisher = Publisher::open(&connection).await.unwrap();
    let levels = warren_shared::topology::DelayLevels::default();
    for (priority, delay) in [
        (Priority::High, Duration::ZERO),
        (Priority::High, Duration::from_secs(1)),
        (Priority::Low, Duration::from_secs(2)),
        (Priority::Normal, Duration::from_secs(1)),
    ] {
        let (exchange, key) = topology
            .delayed_route(delay, Destination::Task(task))
            .unwrap_or_else(|| topology.task_route(task));
        levels
            .ensure(&topology, publisher.channel(), &exchange)
            .await
            .unwrap();
        let properties = Outgoing::new()
            .with_header(header::EVENT, task)
            .with_priority(priority)
            .properties()
            .unwrap();
        publisher
            .send(&exchange, &key, b"{}", properties)
            .await
            .unwrap();
    }
    wait_depths(&env, task, (2, 1, 1)).await;
    delete(&topology, &connection, task).await;
}

/// A high job that fails its first attempt is retried in the high lane: its second attempt
/// starts before a normal backlog published meanwhile drains.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_a_high_job_stays_high() {
    let env = TestEnv::new().await;
    let task = "prio.retry";
    let starts = Starts::default();
    let worker = env
        .start_worker(one_at_a_time(task, true, 20, &starts))
        .await;
    let producer = env.producer().await;
    let options = PublishOptions {
        priority: Priority::High,
        ..PublishOptions::default()
    };
    producer
        .publish(
            task,
            &json!({ "name": "high-0", "fail_once": true }),
            options,
        )
        .await
        .unwrap();
    wait_for_starts(&starts, 1, Duration::from_secs(10)).await;
    // 150 jobs of 20 ms: 3 s of backlog, and the retry is due after 1 s.
    publish_jobs(&env, task, "normal", 150, Priority::Normal).await;
    wait_for_starts(&starts, 152, Duration::from_secs(60)).await;
    let retry = starts.position("high-0#2").unwrap();
    assert!(
        retry < 120,
        "the retry started after {retry} normal jobs: {:?}",
        &starts.all()[..retry + 1]
    );
    worker.shutdown().await.unwrap();
}

/// A task without lanes has only its normal queue, and runs a message marked high as any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_without_lanes_runs_a_high_job_as_normal() {
    let env = TestEnv::new().await;
    let task = "prio.plain";
    let starts = Starts::default();
    let worker = env
        .start_worker(one_at_a_time(task, false, 1, &starts))
        .await;
    publish_jobs(&env, task, "high", 1, Priority::High).await;
    wait_for_starts(&starts, 1, Duration::from_secs(10)).await;
    let topology = env.topology();
    assert!(
        queue(&env, &topology.lane_queue(task, Priority::High))
            .await
            .is_none(),
        "a task without lanes has no high queue"
    );
    worker.shutdown().await.unwrap();
}

/// `warren publish --priority high` puts the message in the high lane; an unknown priority is
/// one line on standard error and a failure exit, and nothing is published.
#[tokio::test(flavor = "multi_thread")]
async fn warren_publish_takes_a_priority_and_refuses_an_unknown_one() {
    let env = TestEnv::new().await;
    let task = "prio.cli";
    let connection = declare(&env, task, true).await;
    let output = env
        .warren()
        .args(["publish", task, "--priority", "high", "--data", "{}"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    wait_depths(&env, task, (1, 0, 0)).await;

    let output = env
        .warren()
        .args(["publish", task, "--priority", "urgent", "--data", "{}"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("urgent") && stderr.contains("high, normal or low"),
        "{stderr}"
    );
    wait_depths(&env, task, (1, 0, 0)).await;
    delete(&env.topology(), &connection, task).await;
}

/// A namespace from an earlier release binds the task queue straight to its events. Declaring
/// the task again (with lanes) replaces that binding by the lane exchange: a high message is
/// then in the high lane only, not also in the normal queue, and an event nobody listens to is
/// still reported unroutable.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgraded_namespace_delivers_each_message_once() {
    let env = TestEnv::new().await;
    let task = "prio.upgrade";
    let topology = env.topology();
    // The earlier release's shape: the queues, and the task queue bound to its event.
    let connection = declare(&env, task, false).await;
    let channel = connection.create_channel().await.unwrap();
    for exchange in topology.task_exchanges(task) {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    channel
        .queue_bind(
            topology.task_queue(task).as_str().into(),
            topology.events_exchange().as_str().into(),
            task.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_jobs(&env, task, "before", 1, Priority::High).await;
    wait_depths(&env, task, (0, 1, 0)).await;

    topology
        .declare_task(&channel, task, &[task.to_owned()], true)
        .await
        .unwrap();
    publish_jobs(&env, task, "high", 1, Priority::High).await;
    publish_jobs(&env, task, "normal", 1, Priority::Normal).await;
    // A raw publisher that sets only the header, with an unknown value: normal.
    let mut headers = FieldTable::default();
    headers.insert(
        header::PRIORITY.into(),
        AMQPValue::LongString(LongString::from(b"URGENT".to_vec())),
    );
    let publisher = Publisher::open(&connection).await.unwrap();
    publisher
        .send(
            &topology.events_exchange(),
            task,
            b"{}",
            lapin::BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    wait_depths(&env, task, (1, 3, 0)).await;

    let unheard = env
        .producer()
        .await
        .publish("prio.nobody", &json!({}), PublishOptions::default())
        .await;
    assert!(
        matches!(unheard, Err(PublishError::Unroutable { .. })),
        "{unheard:?}"
    );
    delete(&topology, &connection, task).await;
}

/// A task whose lanes are turned off: what its lane queues hold still runs, and new messages
/// marked high go to its normal queue (the lane queues are unbound, not deleted).
#[tokio::test(flavor = "multi_thread")]
async fn turning_lanes_off_runs_what_the_lanes_hold_and_routes_the_rest_to_normal() {
    let env = TestEnv::new().await;
    let task = "prio.off";
    let starts = Starts::default();
    let connection = declare(&env, task, true).await;
    publish_jobs(&env, task, "held", 1, Priority::High).await;
    wait_depths(&env, task, (1, 0, 0)).await;

    let worker = env
        .start_worker(one_at_a_time(task, false, 1, &starts))
        .await;
    wait_for_starts(&starts, 1, Duration::from_secs(10)).await;
    worker.shutdown().await.unwrap();

    publish_jobs(&env, task, "later", 1, Priority::High).await;
    wait_depths(&env, task, (0, 1, 0)).await;
    delete(&env.topology(), &connection, task).await;
}
