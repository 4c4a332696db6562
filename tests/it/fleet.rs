//! Fleet reliability, one behaviour at a time: drain, crash, reconnects. Replicas are the real
//! binary where a process must die; faults are injected with the broker's and Postgres's own
//! tools.

use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use warren_producer::{Producer, PublishOptions};
use warren_shared::store::RunDetail;
use warren_shared::topology::inspect_queue;
use warren_tests::{TestEnv, TestWorker, video_payload};
use warren_worker::demo::{self, player, video};
use warren_worker::{Registry, StepContext, StepError, StepOutcome, Task};

fn spawn_worker(env: &TestEnv, id: &str, extra: &[&str]) -> TestWorker {
    env.spawn_test_worker(env!("CARGO_BIN_EXE_warren-test-worker"), id, extra)
}

fn signal(child: &TestWorker, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut TestWorker, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes a slow video job once the worker's queue exists.
async fn publish_slow_video(env: &TestEnv, id: &str, step_ms: u64) {
    let producer = env.producer().await;
    let options = PublishOptions {
        message_id: Some(id.into()),
        ..PublishOptions::default()
    };
    let payload = video_payload(json!({ "step_ms": step_ms }));
    warren_tests::publish_when_declared(&producer, video::TASK, &payload, options).await;
}

/// Waits until the run has committed at least `steps` step checkpoints.
async fn wait_checkpoints(env: &TestEnv, id: &str, steps: usize) -> RunDetail {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(run) = env.runs_of(id).await.pop()
            && run.steps.iter().filter(|s| s.status == "succeeded").count() >= steps
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never reached {steps} checkpoints"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On SIGTERM a replica takes no new message, lets the run in flight finish, and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_run_in_flight_finish_and_exits_zero() {
    let env = TestEnv::new().await;
    let mut worker = spawn_worker(&env, "drain-a", &["--grace-period", "20s"]);
    publish_slow_video(&env, "drain-1", 300).await;
    wait_checkpoints(&env, "drain-1", 1).await;
    signal(&worker, "-TERM");
    let status = wait_exit(&mut worker, Duration::from_secs(25));
    assert!(status.success(), "exit status {status}");
    let run = env.wait_finished("drain-1").await;
    assert_eq!(run.summary.status, "succeeded");
    assert!(run.steps.iter().all(|s| s.executions == 1));

    let output = env
        .warren()
        .args(["workers", "--all", "--json"])
        .output()
        .unwrap();
    let workers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(workers[0]["id"], "drain-a");
    assert_eq!(workers[0]["state"], "stopped");
}

/// When the grace period runs out, the unfinished run goes back to the queue; another replica
/// resumes it from its last checkpoint: no finished step runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cut_short_by_the_grace_period_resumes_elsewhere_from_its_checkpoint() {
    let env = TestEnv::new().await;
    let mut first = spawn_worker(&env, "grace-a", &["--grace-period", "1s"]);
    publish_slow_video(&env, "grace-1", 800).await;
    let before = wait_checkpoints(&env, "grace-1", 2).await;
    signal(&first, "-TERM");
    assert!(wait_exit(&mut first, Duration::from_secs(10)).success());
    let done_before: Vec<String> = before.steps.iter().map(|s| s.step.clone()).collect();

    let mut second = spawn_worker(&env, "grace-b", &[]);
    let run = env.wait_finished("grace-1").await;
    assert_eq!(run.summary.status, "succeeded");
    for step in &run.steps {
        let expected = if done_before.contains(&step.step) {
            1
        } else {
            2
        };
        assert!(
            step.executions <= expected,
            "{} ran {} times",
            step.step,
            step.executions
        );
    }
    assert!(run.transitions.iter().any(|t| {
        t.worker
            .as_deref()
            .is_some_and(|w| w.starts_with("grace-b#"))
    }));
    signal(&second, "-TERM");
    wait_exit(&mut second, Duration::from_secs(10));
}

/// A replica killed with SIGKILL mid-run: another replica takes the run over once the dead
/// one's heartbeat lease runs out, and resumes it from its last checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_a_killed_replica_resumes_on_another_from_its_checkpoint() {
    let env = TestEnv::new().await;
    let mut doomed = spawn_worker(&env, "kill-a", &[]);
    publish_slow_video(&env, "kill-1", 600).await;
    let before = wait_checkpoints(&env, "kill-1", 2).await;
    signal(&doomed, "-KILL");
    wait_exit(&mut doomed, Duration::from_secs(5));
    let done_before: Vec<String> = before.steps.iter().map(|s| s.step.clone()).collect();

    let mut survivor = spawn_worker(&env, "kill-b", &[]);
    let run = env.wait_finished("kill-1").await;
    assert_eq!(run.summary.status, "succeeded");
    for step in &run.steps {
        if done_before.contains(&step.step) {
            assert_eq!(
                step.executions, 1,
                "{} ran again after its checkpoint",
                step.step
            );
        }
    }
    let reasons: Vec<_> = run
        .transitions
        .iter()
        .filter_map(|t| t.reason.as_deref())
        .collect();
    assert!(
        reasons.contains(&"redelivered: resuming from the last checkpoint"),
        "{reasons:?}"
    );
    signal(&survivor, "-TERM");
    wait_exit(&mut survivor, Duration::from_secs(10));
}

/// A replica killed mid-run and restarted under the same id, as a container restarted in its
/// pod is: the run's message comes back to another replica, which takes the run over as soon
/// as the restart registers, instead of waiting out the lease of an owner that the restarted
/// process kept looking alive (and then parking the message, 45 s and more in all).
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_restarted_under_the_same_id_frees_the_run_its_predecessor_held() {
    let env = TestEnv::new().await;
    let mut doomed = spawn_worker(&env, "pod-a", &[]);
    publish_slow_video(&env, "restart-1", 600).await;
    wait_checkpoints(&env, "restart-1", 1).await;
    let mut other = spawn_worker(&env, "pod-b", &[]);
    wait_consumers(&env, video::TASK, 2).await;
    signal(&doomed, "-KILL");
    wait_exit(&mut doomed, Duration::from_secs(5));
    let killed = Instant::now();
    // The message goes back to the queue and on to `pod-b`, its only consumer now.
    let mut restarted = spawn_worker(&env, "pod-a", &[]);

    let within = Duration::from_secs(20);
    let run = loop {
        if let Some(run) = env.runs_of("restart-1").await.pop()
            && run.summary.status == "succeeded"
        {
            break run;
        }
        assert!(
            killed.elapsed() < within,
            "the run was not finished {within:?} after the kill: {:?}",
            env.runs_of("restart-1").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "run of the killed replica finished {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let owners: Vec<&str> = run
        .transitions
        .iter()
        .filter_map(|t| t.worker.as_deref())
        .collect();
    assert!(
        owners
            .iter()
            .all(|w| w.starts_with("pod-a#") || w.starts_with("pod-b#")),
        "transitions name the process incarnation that made them: {owners:?}"
    );
    signal(&other, "-TERM");
    signal(&restarted, "-TERM");
    wait_exit(&mut other, Duration::from_secs(10));
    wait_exit(&mut restarted, Duration::from_secs(10));
}

/// Waits until `task`'s queue has at least `count` consumers.
async fn wait_consumers(env: &TestEnv, task: &str, count: u32) {
    let connection = warren_shared::amqp::connect(&env.amqp_url, "fleet-test")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let channel = connection.create_channel().await.unwrap();
        let stats = inspect_queue(&channel, &env.topology().task_queue(task))
            .await
            .unwrap();
        if stats.is_some_and(|s| s.consumers >= count) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{task} never had {count} consumers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warren_shared::amqp::close(&connection, "inspected").await;
}

/// The broker closing a replica's connection: it reconnects with backoff, declares its topology
/// again, and goes on consuming.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_reconnects_when_the_broker_drops_its_connection() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.worker_id = format!("reconnect-{}", env.namespace);
    let name = format!("warren-worker {}", config.worker_id);
    let worker = env.start_worker_with(config, demo::registry()).await;
    let producer = env.producer().await;
    producer
        .publish(
            player::TASK,
            &json!({ "playerId": "before" }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    env.wait_for_finished_runs(1, Duration::from_secs(10)).await;

    warren_tests::close_broker_connections(&name);
    // The replica comes back on its own; publishes meanwhile wait in the queue.
    for i in 0..20 {
        producer
            .publish(
                player::TASK,
                &json!({ "playerId": format!("after-{i}") }),
                PublishOptions::default(),
            )
            .await
            .unwrap();
    }
    let runs = env
        .wait_for_finished_runs(21, Duration::from_secs(30))
        .await;
    assert!(runs.iter().all(|r| r.status == "succeeded"));
    worker.shutdown().await.unwrap();
}

/// Postgres dropping a replica's sessions: the writes in progress are retried on new
/// connections and nothing is lost or run twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_survives_its_postgres_sessions_being_terminated() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;
    for i in 0..40 {
        producer
            .publish(
                player::TASK,
                &json!({ "playerId": format!("p-{i}") }),
                PublishOptions::default(),
            )
            .await
            .unwrap();
        if i % 10 == 5 {
            env.terminate_postgres_sessions().await;
        }
    }
    let runs = env
        .wait_for_finished_runs(40, Duration::from_secs(60))
        .await;
    assert_eq!(runs.len(), 40);
    assert!(runs.iter().all(|r| r.status == "succeeded"));
    let client = env.pool.get().await.unwrap();
    let extra: i64 = client
        .query_one("SELECT count(*) FROM run_steps WHERE executions > 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(extra, 0, "no step ran twice");
    worker.shutdown().await.unwrap();
}

/// A replica that the fleet gave up for lost (its lease lapsed: marked stopped here) but that
/// is still executing a step when another replica takes the run over: the late replica's
/// checkpoint is refused, the new owner's counts, and no step is recorded twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_lost_its_run_cannot_record_the_step_it_was_running() {
    let env = TestEnv::new().await;
    let named = |id: &str| {
        let mut config = env.worker_config();
        config.worker_id = format!("{id}-{}", env.namespace);
        config
    };
    let late = env.start_worker_with(named("late"), demo::registry()).await;
    publish_slow_video(&env, "lapse-1", 2_500).await;
    wait_checkpoints(&env, "lapse-1", 1).await;
    // The second step is now running on `late`, for 2.5 s.
    let owner = env
        .start_worker_with(named("owner"), demo::registry())
        .await;
    give_up_for_lost(&env, late.owner()).await;
    // Its message goes back to the queue and reaches `owner` (the only consumer until `late`
    // reconnects), which takes the run over from the checkpoint.
    warren_tests::close_broker_connections(&format!("warren-worker {}", late.id()));

    let run = env.wait_finished("lapse-1").await;
    assert_succeeded_once(&run);
    let takeover = run
        .transitions
        .iter()
        .position(|t| t.worker.as_deref() == Some(owner.owner()))
        .expect("the run was taken over");
    assert!(
        run.transitions[takeover..]
            .iter()
            .all(|t| t.worker.as_deref() == Some(owner.owner())),
        "the replica that lost the run recorded a transition after the takeover: {:?}",
        run.transitions
    );
    late.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}

/// A three-step task whose steps each take `step` and count, in `finished`, the executions
/// that ran to their end on this replica.
fn counted_task(step: Duration, finished: Arc<AtomicUsize>) -> Registry {
    let counted = |name: &'static str| {
        let finished = Arc::clone(&finished);
        warren_worker::step(name, move |_ctx: StepContext<serde_json::Value>| {
            let finished = Arc::clone(&finished);
            async move {
                tokio::time::sleep(step).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(StepOutcome::next(json!(name)))
            }
        })
    };
    Registry::new().register(
        Task::new("counted.job")
            .step(counted("one"))
            .step(counted("two"))
            .step(counted("three")),
    )
}

/// `counted.job` as a replica with a broken first step sees it: the step fails for good after
/// `step`, which dead-letters the run's message.
fn broken_task(step: Duration) -> Registry {
    Registry::new().register(Task::new("counted.job").step(warren_worker::step(
        "one",
        move |_ctx: StepContext<serde_json::Value>| async move {
            tokio::time::sleep(step).await;
            Err::<StepOutcome, _>(StepError::fatal("broken", "this replica's step is broken"))
        },
    )))
}

/// Publishes a `counted.job` with message id `id` once its queue exists, and waits until its
/// run has started.
async fn start_counted_job(env: &TestEnv, producer: &Producer, id: &str) {
    let options = PublishOptions {
        message_id: Some(id.into()),
        ..PublishOptions::default()
    };
    warren_tests::publish_when_declared(producer, "counted.job", &json!({}), options).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.runs_of(id).await.is_empty() {
        assert!(Instant::now() < deadline, "run {id} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fleet gives the replica (by its owner name) up for lost, as when its lease lapses: it is
/// marked stopped (which its heartbeat does not undo), so that whoever gets one of its runs'
/// messages takes the run over while it goes on executing.
async fn give_up_for_lost(env: &TestEnv, worker: &str) {
    let client = env.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE workers SET stopped_at = now() WHERE id = $1",
            &[&worker],
        )
        .await
        .unwrap();
}

/// Publishes another copy of `counted.job` message `id`.
async fn publish_copy(producer: &Producer, id: &str) {
    let same_message = PublishOptions {
        message_id: Some(id.into()),
        ..PublishOptions::default()
    };
    producer
        .publish("counted.job", &json!({}), same_message)
        .await
        .unwrap();
}

/// Messages waiting in `task`'s queue, not delivered to anyone.
async fn ready_messages(env: &TestEnv, task: &str) -> u32 {
    let connection = warren_shared::amqp::connect(&env.amqp_url, "fleet-test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let stats = inspect_queue(&channel, &env.topology().task_queue(task))
        .await
        .unwrap()
        .expect("the task queue exists");
    warren_shared::amqp::close(&connection, "inspected").await;
    stats.messages
}

/// The run succeeded and each of its steps was recorded once.
fn assert_succeeded_once(run: &RunDetail) {
    assert_eq!(run.summary.status, "succeeded");
    assert!(
        run.steps.iter().all(|s| s.executions == 1),
        "a step was recorded twice: {:?}",
        run.steps
    );
}

/// When the grace period runs out, the runs still in flight stop where they are before the
/// replica lets go of their messages and its lease: nothing is left executing on a replica that
/// another one may take the run over from.
#[tokio::test(flavor = "multi_thread")]
async fn runs_cut_short_by_the_grace_period_stop_executing_before_the_replica_lets_go() {
    let env = TestEnv::new().await;
    let on_first = Arc::new(AtomicUsize::new(0));
    let mut config = env.worker_config();
    config.grace_period = Duration::from_millis(500);
    let first = env
        .start_worker_with(
            config,
            counted_task(Duration::from_secs(2), Arc::clone(&on_first)),
        )
        .await;
    start_counted_job(&env, &env.producer().await, "cut-1").await;
    // Step one is running, with about 2 s to go: far more than the grace period.
    first.shutdown().await.unwrap();
    let when_stopped = on_first.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        on_first.load(Ordering::SeqCst),
        when_stopped,
        "a step went on executing on the replica after it stopped"
    );

    let on_second = Arc::new(AtomicUsize::new(0));
    let second = env
        .start_worker_with(
            env.worker_config(),
            counted_task(Duration::from_millis(10), Arc::clone(&on_second)),
        )
        .await;
    assert_succeeded_once(&env.wait_finished("cut-1").await);
    assert_eq!(on_second.load(Ordering::SeqCst), 3 - when_stopped);
    second.shutdown().await.unwrap();
}

/// A draining replica does not sit on a duplicate of a run another replica is executing (it
/// would otherwise look again for up to an owner lease, holding the drain up): it hands the
/// message back to the queue at once, and stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_replica_passes_on_a_run_busy_elsewhere_instead_of_waiting_for_it() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.concurrency = Some(1);
    let owner = env
        .start_worker_with(config, counted_task(Duration::from_secs(2), Arc::default()))
        .await;
    let producer = env.producer().await;
    start_counted_job(&env, &producer, "busy-1").await;
    let mut config = env.worker_config();
    config.grace_period = Duration::from_secs(30);
    let duplicate = env
        .start_worker_with(
            config,
            counted_task(Duration::from_millis(10), Arc::default()),
        )
        .await;
    // The owner takes one message at a time: the copy goes to the other replica, which finds
    // the run busy.
    publish_copy(&producer, "busy-1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ready_messages(&env, "counted.job").await,
        0,
        "nobody took the copy"
    );
    let started = Instant::now();
    duplicate.shutdown().await.unwrap();
    // Far below an owner lease (15 s); a connection close that times out (3 s) is not the
    // drain waiting for the run.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the drain waited {:?} for a run busy elsewhere",
        started.elapsed()
    );
    // The copy waits in the broker (the delay queues), and reaches the owner once its run is
    // over, as a duplicate of a finished run.
    assert_succeeded_once(&env.wait_finished("busy-1").await);
    owner.shutdown().await.unwrap();
}

/// A duplicate of a run that another replica is executing waits in the broker, not in a run
/// slot: a replica with one slot runs the next job at once instead of sitting on the duplicate
/// for the owner's whole run (or lease).
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_of_a_run_busy_elsewhere_holds_no_run_slot() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.concurrency = Some(1);
    let owner = env
        .start_worker_with(config, counted_task(Duration::from_secs(2), Arc::default()))
        .await;
    let producer = env.producer().await;
    start_counted_job(&env, &producer, "long-1").await;
    let mut config = env.worker_config();
    config.concurrency = Some(1);
    let other = env
        .start_worker_with(
            config,
            counted_task(Duration::from_millis(10), Arc::default()),
        )
        .await;
    // The owner takes one message at a time: the copy, then the fresh job, go to the other.
    publish_copy(&producer, "long-1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = Instant::now();
    publish_copy(&producer, "fresh-1").await;
    let fresh = env.wait_finished("fresh-1").await;
    assert_succeeded_once(&fresh);
    assert!(
        published.elapsed() < Duration::from_secs(3),
        "the fresh job waited {:?} behind a duplicate",
        published.elapsed()
    );
    let long = env.runs_of("long-1").await;
    assert_eq!(
        long[0].summary.status, "running",
        "the long run is still going"
    );
    assert_succeeded_once(&env.wait_finished("long-1").await);
    other.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}

/// A replica that lost its run to a takeover and whose step then fails sends nothing on: no
/// dead letter (nor retry) for a run its new owner carries to success.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_lost_its_run_sends_no_dead_letter_for_it() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.concurrency = Some(1);
    let late = env
        .start_worker_with(config, broken_task(Duration::from_secs(2)))
        .await;
    let producer = env.producer().await;
    start_counted_job(&env, &producer, "lost-1").await;
    let owner = env
        .start_worker_with(
            env.worker_config(),
            counted_task(Duration::from_millis(10), Arc::default()),
        )
        .await;
    // The fleet gives `late` up while its step runs; a copy of the message (`late` takes one
    // at a time) reaches `owner`, which takes the run over and finishes it.
    give_up_for_lost(&env, late.owner()).await;
    publish_copy(&producer, "lost-1").await;
    assert_succeeded_once(&env.wait_finished("lost-1").await);
    // `late`'s step fails about 2 s after it started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    late.shutdown().await.unwrap();
    assert!(
        env.take_dead_letters("counted.job").await.is_empty(),
        "the replica that lost the run dead-lettered it"
    );
    assert_succeeded_once(&env.runs_of("lost-1").await.pop().unwrap());
    owner.shutdown().await.unwrap();
}
