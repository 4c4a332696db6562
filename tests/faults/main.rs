//! The fault-injection suite: real worker processes, thousands of jobs, and the faults a fleet
//! meets in production injected while they run. It restarts the broker, so it runs as a test
//! binary of its own (cargo runs test binaries one after another), one scenario at a time.
//!
//! Every step execution appends a row to a side-effect ledger, so the assertions can tell "ran
//! once", "ran again before its checkpoint" (allowed) and "ran again after its checkpoint"
//! (never allowed) apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::Rng;
use serde_json::json;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use warren_producer::PublishOptions;
use warren_shared::state::{self, RunStatus};
use warren_shared::topology::inspect_queue;
use warren_tests::{TestEnv, TestWorker, close_broker_connections};

const BINARY: &str = env!("CARGO_BIN_EXE_warren-test-worker");
const LEDGER_TASKS: [&str; 3] = ["ledger.2", "ledger.3", "ledger.4"];

/// One scenario at a time: they share the broker they restart.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three replicas, restarted as they die, each with a fresh id (or, in one scenario, the same).
struct Fleet<'a> {
    env: &'a TestEnv,
    slots: Vec<(String, TestWorker)>,
    started: usize,
    faults: HashMap<&'static str, usize>,
}

impl<'a> Fleet<'a> {
    fn start(env: &'a TestEnv, replicas: usize) -> Fleet<'a> {
        let mut fleet = Fleet {
            env,
            slots: Vec::new(),
            started: 0,
            faults: HashMap::new(),
        };
        for _ in 0..replicas {
            let replica = fleet.spawn();
            fleet.slots.push(replica);
        }
        fleet
    }

    fn spawn(&mut self) -> (String, TestWorker) {
        self.started += 1;
        let id = format!("fault-{}", self.started);
        let child = self.env.spawn_test_worker(
            BINARY,
            &id,
            &["--grace-period", "3s", "--concurrency", "8"],
        );
        (id, child)
    }

    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// SIGKILL a random replica, and start a new one in its place.
    fn kill_one(&mut self) {
        let i = rand::rng().random_range(0..self.slots.len());
        let (_, mut child) = self.slots.remove(i);
        let _ = child.kill();
        let _ = child.wait();
        let replica = self.spawn();
        self.slots.push(replica);
        self.fault("kill -9 and restart");
    }

    /// SIGKILL replica `i` and start a new process under the same id in its place, as
    /// Kubernetes restarts a container in its pod after an OOM kill.
    fn kill_and_restart_under_the_same_id(&mut self, i: usize) {
        let (id, mut child) = self.slots.remove(i);
        let _ = child.kill();
        let _ = child.wait();
        let restarted = self.env.spawn_test_worker(
            BINARY,
            &id,
            &["--grace-period", "3s", "--concurrency", "8"],
        );
        self.slots.insert(i, (id, restarted));
        self.fault("kill -9 and restart under the same id");
    }

    /// SIGTERM the longest-running replica (one just spawned may not have installed its signal
    /// handlers yet, and would die of the signal before it took anything), wait for its clean
    /// exit, and start a new one in its place.
    fn drain_one(&mut self) {
        let (id, mut child) = self.slots.remove(0);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{id} did not drain within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{id} exited with {status} after SIGTERM");
        let replica = self.spawn();
        self.slots.push(replica);
        self.fault("SIGTERM drain and restart");
    }

    /// Closes every replica's broker connection from the broker's side.
    fn cut_broker_connections(&mut self) {
        for (id, child) in &mut self.slots {
            if child.try_wait().unwrap().is_none() {
                close_broker_connections_if_any(&format!("warren-worker {id}"));
            }
        }
        self.fault("broker closed the connections");
    }

    fn stop(mut self) -> HashMap<&'static str, usize> {
        for (_, child) in &mut self.slots {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (_, child) in &mut self.slots {
            let _ = child.wait();
        }
        self.slots.clear();
        std::mem::take(&mut self.faults)
    }
}

/// Like [`close_broker_connections`], but a replica still connecting is not an error.
fn close_broker_connections_if_any(name: &str) {
    let result = std::panic::catch_unwind(|| close_broker_connections(name));
    let _ = result;
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn publish_jobs(env: &TestEnv, count: usize) {
    env.wait_consuming(&LEDGER_TASKS).await;
    let producer = env.producer().await;
    warren_tests::publish_when_declared(
        &producer,
        "ledger.2",
        &json!({ "ms": 1 }),
        PublishOptions {
            message_id: Some("warm-up".into()),
            ..PublishOptions::default()
        },
    )
    .await;
    // Pipelined publishes; one that is not confirmed is an error the producer reports, and a
    // producer publishes it again with the same message id (which makes no second run).
    let mut batch: Vec<usize> = Vec::new();
    for i in 1..count {
        batch.push(i);
        if batch.len() == 256 || i + 1 == count {
            let mut tries = 0;
            while !batch.is_empty() {
                let mut pending = Vec::new();
                for &job in &batch {
                    let task = LEDGER_TASKS[job % 3];
                    let body = serde_json::to_vec(&json!({ "ms": 5 + (job % 4) * 5 })).unwrap();
                    let options = PublishOptions {
                        message_id: Some(format!("job-{job}")),
                        ..PublishOptions::default()
                    };
                    match producer.start_json(task, &body, options).await {
                        Ok((_, confirm)) => pending.push((job, Some(confirm))),
                        Err(e) => {
                            eprintln!("publish of job-{job} failed: {e}");
                            pending.push((job, None));
                        }
                    }
                }
                let mut failed = Vec::new();
                for (job, confirm) in pending {
                    let confirmed = match confirm {
                        Some(confirm) => confirm
                            .wait()
                            .await
                            .map_err(|e| eprintln!("job-{job} not confirmed: {e}"))
                            .is_ok(),
                        None => false,
                    };
                    if !confirmed {
                        failed.push(job);
                    }
                }
                tries += 1;
                assert!(tries < 10, "jobs {failed:?} could not be published");
                batch = failed;
            }
        }
    }
}

async fn terminal_runs(env: &TestEnv) -> i64 {
    let client = env.pool.get().await.unwrap();
    client
        .query_one(
            "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'halted', 'dead', 'cancelled')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn create_ledger(env: &TestEnv) {
    let client = env.pool.get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, run_id uuid NOT NULL, step text NOT NULL,
                                  worker text, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await
        .unwrap();
}

/// The assertions both scenarios end with; prints what it counted.
async fn assert_exactly_once(
    env: &TestEnv,
    jobs: i64,
    faults: &HashMap<&'static str, usize>,
    elapsed: Duration,
) {
    let client = env.pool.get().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let runs = count("SELECT count(*) FROM runs").await;
    let succeeded = count("SELECT count(*) FROM runs WHERE status = 'succeeded'").await;
    let steps = count("SELECT count(*) FROM run_steps").await;
    // `ledger.N` has N steps; the fan-out parent `ledger.fan` and `ledger.keyed` have two.
    let expected_steps = count(
        "SELECT coalesce(sum(CASE WHEN task IN ('ledger.fan', 'ledger.keyed') THEN 2
                                  ELSE split_part(task, '.', 2)::int END), 0)::bigint FROM runs",
    )
    .await;
    let executions = count("SELECT count(*) FROM ledger").await;
    let after_checkpoint = count(
        "SELECT count(*) FROM ledger l JOIN run_steps s ON s.run_id = l.run_id AND s.step = l.step
         WHERE l.at > s.finished_at",
    )
    .await;
    let recorded_twice =
        count("SELECT count(*) FROM run_steps WHERE executions <> 1 OR status <> 'succeeded'")
            .await;
    let unexecuted = count(
        "SELECT count(*) FROM run_steps s WHERE NOT EXISTS
           (SELECT 1 FROM ledger l WHERE l.run_id = s.run_id AND l.step = s.step)",
    )
    .await;
    let mut illegal = 0;
    let mut previous: HashMap<uuid::Uuid, RunStatus> = HashMap::new();
    for row in client
        .query(
            "SELECT run_id, from_status, to_status FROM run_transitions ORDER BY id",
            &[],
        )
        .await
        .unwrap()
    {
        let run: uuid::Uuid = row.get(0);
        let from: Option<RunStatus> = row.get::<_, Option<String>>(1).map(|s| s.parse().unwrap());
        let to: RunStatus = row.get::<_, String>(2).parse().unwrap();
        let consistent = previous.get(&run).copied() == from;
        if !consistent || state::check(from, to).is_err() {
            illegal += 1;
        }
        previous.insert(run, to);
    }
    let connection = warren_shared::amqp::connect(&env.amqp_url, "fault-suite")
        .await
        .unwrap();
    let topology = env.topology();
    let left_in_queues = messages_in_flight(env);
    let mut dead_letters = 0;
    for task in LEDGER_TASKS
        .into_iter()
        .chain(["ledger.fan", "ledger.keyed"])
    {
        let channel = connection.create_channel().await.unwrap();
        dead_letters += inspect_queue(&channel, &topology.dead_letter_queue(task))
            .await
            .unwrap()
            .map_or(0, |s| s.messages);
    }
    warren_shared::amqp::close(&connection, "done").await;

    println!(
        "fault suite: {jobs} jobs in {:.1} s; faults {faults:?}; runs {runs}, succeeded {succeeded}; \
         steps {steps}/{expected_steps} checkpointed, {executions} executions ({} repeated before a checkpoint, \
         {after_checkpoint} after); illegal transitions {illegal}; left in queues {left_in_queues}; dead letters {dead_letters}",
        elapsed.as_secs_f64(),
        executions - steps,
    );
    if recorded_twice > 0 {
        explain_steps_recorded_twice(&client).await;
    }
    assert_eq!(runs, jobs, "one run per job");
    assert_eq!(succeeded, jobs, "every job succeeded");
    assert_eq!(steps, expected_steps, "every step checkpointed once");
    assert_eq!(recorded_twice, 0, "a step completed twice");
    assert_eq!(unexecuted, 0, "a checkpoint without its side effect");
    assert_eq!(
        after_checkpoint, 0,
        "a step ran again after its checkpoint committed"
    );
    assert_eq!(illegal, 0, "illegal transitions in the log");
    assert_eq!(left_in_queues, 0, "messages left in task queues");
    assert_eq!(dead_letters, 0, "nothing may be dead-lettered");
}

/// Prints, for each step recorded more than once, its executions (replica and time, from the
/// ledger) and its run's transitions: the trail that says which replicas raced.
async fn explain_steps_recorded_twice(client: &deadpool_postgres::Client) {
    let rows = client
        .query(
            "SELECT s.run_id, s.step, s.executions, s.status, s.worker,
                    (SELECT string_agg(l.worker || ' at ' || l.at::time::text, ', ' ORDER BY l.at)
                     FROM ledger l WHERE l.run_id = s.run_id AND l.step = s.step),
                    (SELECT string_agg(coalesce(t.from_status, 'new') || '->' || t.to_status || ' by '
                                       || coalesce(t.worker, '-') || ' (' || coalesce(t.reason, '') || ') at '
                                       || t.at::time::text, '; ' ORDER BY t.id)
                     FROM run_transitions t WHERE t.run_id = s.run_id)
             FROM run_steps s WHERE s.executions <> 1 OR s.status <> 'succeeded'",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        eprintln!(
            "run {} step {}: recorded {} time(s), {} by {}; executed by {}; transitions: {}",
            row.get::<_, uuid::Uuid>(0),
            row.get::<_, String>(1),
            row.get::<_, i32>(2),
            row.get::<_, String>(3),
            row.get::<_, Option<String>>(4).unwrap_or_default(),
            row.get::<_, Option<String>>(5).unwrap_or_default(),
            row.get::<_, Option<String>>(6).unwrap_or_default(),
        );
    }
}

async fn wait_all_terminal(env: &TestEnv, jobs: i64, within: Duration) {
    let deadline = Instant::now() + within;
    while terminal_runs(env).await < jobs {
        if Instant::now() >= deadline {
            let client = env.pool.get().await.unwrap();
            let stuck = client
                .query(
                    "SELECT r.id::text, r.status, r.attempt, coalesce(r.worker, '-'),
                            coalesce((SELECT t.reason FROM run_transitions t WHERE t.run_id = r.id ORDER BY t.id DESC LIMIT 1), '-')
                     FROM runs r WHERE r.status NOT IN ('succeeded', 'halted', 'dead', 'cancelled')",
                    &[],
                )
                .await
                .unwrap();
            for row in &stuck {
                eprintln!(
                    "unfinished run {} {} attempt {} worker {} last: {}",
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, i32>(2),
                    row.get::<_, String>(3),
                    row.get::<_, String>(4)
                );
            }
            eprintln!(
                "queues (name, ready, unacked, consumers):\n{}",
                queue_report(env)
            );
            panic!(
                "only {} of {jobs} jobs finished in {within:?}",
                terminal_runs(env).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Duplicates the broker handed back (acks lost with a connection) are still being acked as
    // duplicates of finished runs, some after a pass through the delay queues (a duplicate of a
    // run still busy elsewhere looks again 30 s later): wait until every queue but the
    // dead-letter queues is empty.
    let deadline = Instant::now() + Duration::from_secs(90);
    while messages_in_flight(env) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every queue of the namespace with its ready and unacked messages and its consumers.
fn queue_report(env: &TestEnv) -> String {
    let output = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "-q",
        ])
        .output()
        .unwrap();
    let prefix = format!("{}.", env.namespace);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Messages in the namespace's task and delay queues, ready or delivered but not yet acked
/// (`rabbitmqctl list_queues`: a passive declaration counts only the ready ones).
fn messages_in_flight(env: &TestEnv) -> u64 {
    let output = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "messages", "-q"])
        .output()
        .unwrap();
    let prefix = format!("{}.", env.namespace);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(name, _)| name.starts_with(&prefix) && !name.contains(".dlq."))
        .filter_map(|(_, count)| count.trim().parse::<u64>().ok())
        .sum()
}

/// Injects `schedule`'s faults (at their milliseconds from now: `kill`, `drain`, `broker`,
/// `postgres`), stopping early once `jobs` runs have ended.
async fn inject(env: &TestEnv, fleet: &mut Fleet<'_>, jobs: i64, schedule: &[(u64, &str)]) {
    let t0 = Instant::now();
    for &(at, fault) in schedule {
        if terminal_runs(env).await >= jobs {
            break;
        }
        let wait = Duration::from_millis(at).saturating_sub(t0.elapsed());
        tokio::time::sleep(wait).await;
        match fault {
            "kill" => fleet.kill_one(),
            "drain" => fleet.drain_one(),
            "broker" => fleet.cut_broker_connections(),
            _ => {
                env.terminate_postgres_sessions().await;
                fleet.fault("Postgres terminated the sessions");
            }
        }
    }
}

/// 3 replicas, 2,000 jobs of 2 to 4 steps; meanwhile replicas are killed and restarted, one is
/// drained with SIGTERM, the broker closes their connections and Postgres terminates their
/// sessions. Every job must succeed exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_jobs_survive_kills_drains_and_dropped_connections() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let started = Instant::now();
    let mut fleet = Fleet::start(&env, 3);
    publish_jobs(&env, 2000).await;

    let schedule: [(u64, &str); 8] = [
        (300, "kill"),
        (700, "broker"),
        (1100, "postgres"),
        (1500, "kill"),
        (1900, "drain"),
        (2300, "kill"),
        (2700, "broker"),
        (3100, "postgres"),
    ];
    inject(&env, &mut fleet, 2000, &schedule).await;
    wait_all_terminal(&env, 2000, Duration::from_secs(240)).await;
    let faults = fleet.stop();
    assert_exactly_once(&env, 2000, &faults, started.elapsed()).await;
}

/// 40 parents each fanning out 50 ledgered children (at most 5 at once), 3 replicas, while
/// replicas are killed with SIGKILL and restarted and the broker closes their connections:
/// counted from Postgres, every child ran once, every parent finished once with all 50
/// children joined, no step ran again after its checkpoint, and nothing is left to send.
#[tokio::test(flavor = "multi_thread")]
async fn parents_and_children_survive_kills_and_dropped_connections() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let started = Instant::now();
    let mut fleet = Fleet::start(&env, 3);
    env.wait_consuming(&["ledger.fan", "ledger.2"]).await;
    let producer = env.producer().await;
    const PARENTS: usize = 40;
    const CHILDREN: usize = 50;
    for i in 0..PARENTS {
        let options = PublishOptions {
            message_id: Some(format!("parent-{i}")),
            ..PublishOptions::default()
        };
        let mut tries = 0;
        while let Err(e) = producer
            .publish(
                "ledger.fan",
                &json!({ "children": CHILDREN }),
                options.clone(),
            )
            .await
        {
            tries += 1;
            assert!(tries < 10, "parent-{i} could not be published: {e}");
        }
    }
    let jobs = (PARENTS * (CHILDREN + 1)) as i64;
    let schedule: [(u64, &str); 6] = [
        (400, "kill"),
        (900, "broker"),
        (1500, "kill"),
        (2200, "broker"),
        (3000, "kill"),
        (4000, "kill"),
    ];
    inject(&env, &mut fleet, jobs, &schedule).await;
    wait_all_terminal(&env, jobs, Duration::from_secs(240)).await;
    let faults = fleet.stop();
    assert_exactly_once(&env, jobs, &faults, started.elapsed()).await;

    let client = env.pool.get().await.unwrap();
    let per_parent = client
        .query(
            "SELECT p.id, p.output, (SELECT count(*) FROM runs c WHERE c.parent_id = p.id),
                    (SELECT count(*) FROM run_transitions t
                     WHERE t.run_id = p.id AND t.to_status = 'succeeded')
             FROM runs p WHERE p.task = 'ledger.fan'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(per_parent.len(), PARENTS);
    for row in per_parent {
        let output: serde_json::Value = row.get(1);
        assert_eq!(output["succeeded"], CHILDREN, "{output}");
        assert_eq!(
            row.get::<_, i64>(2),
            CHILDREN as i64,
            "children of one parent"
        );
        assert_eq!(row.get::<_, i64>(3), 1, "a parent finished more than once");
    }
    let leftovers: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM run_joins)
                    + (SELECT count(*) FROM run_children)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "unsent messages or open joins left");
}

/// 600 jobs of a task with a concurrency key (at most 3 runs per tenant), 4 tenants, 3 replicas,
/// while replicas are killed with SIGKILL and restarted and the broker closes their
/// connections: every job ran once, no step again after its checkpoint, no tenant ever had
/// more than 3 steps going (from the step intervals in Postgres), and no slot, waiter or held
/// message is left.
#[tokio::test(flavor = "multi_thread")]
async fn runs_waiting_for_their_key_survive_kills_and_dropped_connections() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let started = Instant::now();
    let mut fleet = Fleet::start(&env, 3);
    env.wait_consuming(&["ledger.keyed"]).await;
    let producer = env.producer().await;
    const JOBS: usize = 600;
    let mut pending = Vec::new();
    for i in 0..JOBS {
        let body = serde_json::to_vec(&json!({ "ms": 5 + (i % 4) * 5 })).unwrap();
        let options = PublishOptions {
            message_id: Some(format!("keyed-{i}")),
            tenant: Some(format!("tenant-{}", i % 4)),
            ..PublishOptions::default()
        };
        let (_, confirm) = producer
            .start_json("ledger.keyed", &body, options)
            .await
            .unwrap();
        pending.push(confirm);
    }
    for confirm in pending {
        confirm.wait().await.unwrap();
    }
    let schedule: [(u64, &str); 4] = [
        (400, "kill"),
        (1000, "broker"),
        (1800, "kill"),
        (2800, "kill"),
    ];
    inject(&env, &mut fleet, JOBS as i64, &schedule).await;
    wait_all_terminal(&env, JOBS as i64, Duration::from_secs(240)).await;
    let faults = fleet.stop();
    assert_exactly_once(&env, JOBS as i64, &faults, started.elapsed()).await;

    let client = env.pool.get().await.unwrap();
    let most: i64 = client
        .query_one(
            "WITH edges AS (
                 SELECT r.tenant, s.started_at AS at, 1 AS delta
                 FROM run_steps s JOIN runs r ON r.id = s.run_id
                 UNION ALL
                 SELECT r.tenant, s.finished_at, -1
                 FROM run_steps s JOIN runs r ON r.id = s.run_id),
             running AS (
                 SELECT sum(delta) OVER (PARTITION BY tenant ORDER BY at, delta) AS n FROM edges)
             SELECT coalesce(max(n), 0)::bigint FROM running",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let leftovers: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM key_waiters)
                    + (SELECT count(*) FROM concurrency_slots)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("concurrency keys under faults: at most {most} steps of one tenant at once");
    assert!(most <= 3, "{most} steps of one tenant at once (limit 3)");
    assert_eq!(leftovers, 0, "slots, waiters or held messages left");
}

/// A replica killed with runs in flight and restarted under the same id: the restart frees its
/// predecessor's runs, so whichever replica their messages reach takes them over at once. When
/// ownership was by id, the restarted process kept them looking owned: their messages waited a
/// 15 s lease on the other replicas, were parked 30 s, and so on until a copy happened to reach
/// the restarted process (runs finished 50 to 230 s after the kill).
#[tokio::test(flavor = "multi_thread")]
async fn runs_of_a_replica_restarted_under_the_same_id_finish_at_once() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let started = Instant::now();
    let mut fleet = Fleet::start(&env, 3);
    publish_jobs(&env, 600).await;
    let client = env.pool.get().await.unwrap();
    // The first replica's runs in flight when it is killed.
    let (victim, mut in_flight) = (fleet.slots[0].0.clone(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_flight.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{victim} never had a run in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        in_flight = client
            .query(
                "SELECT id FROM runs WHERE status = 'running' AND split_part(worker, '#', 1) = $1",
                &[&victim],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, uuid::Uuid>(0))
            .collect();
    }
    fleet.kill_and_restart_under_the_same_id(0);
    let killed = Instant::now();
    let bound = Duration::from_secs(20);
    loop {
        let unfinished: i64 = client
            .query_one(
                "SELECT count(*) FROM runs
                 WHERE id = ANY($1) AND status NOT IN ('succeeded', 'halted', 'dead')",
                &[&in_flight],
            )
            .await
            .unwrap()
            .get(0);
        if unfinished == 0 {
            break;
        }
        assert!(
            killed.elapsed() < bound,
            "{unfinished} of the {} runs in flight on the killed replica were not finished \
             {bound:?} after its restart under the same id",
            in_flight.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "restart under the same id: the {} runs in flight on the killed replica finished within \
         {:.1} s of the kill",
        in_flight.len(),
        killed.elapsed().as_secs_f64()
    );
    wait_all_terminal(&env, 600, Duration::from_secs(120)).await;
    let faults = fleet.stop();
    assert_exactly_once(&env, 600, &faults, started.elapsed()).await;
}

/// The broker itself stops and starts while 500 jobs run: replicas reconnect and finish them.
#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_jobs_survive_a_broker_restart() {
    five_hundred_jobs_across_an_outage(
        ("broker stop_app", || rabbitmqctl(&["stop_app"])),
        Duration::from_secs(2),
        ("broker start_app", || {
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup"]);
        }),
    )
    .await;
}

/// 500 jobs on 3 replicas while something they depend on goes down for `down` and comes back.
async fn five_hundred_jobs_across_an_outage(
    (stop_label, stop): (&'static str, fn()),
    down: Duration,
    (start_label, start): (&'static str, fn()),
) {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let started = Instant::now();
    let mut fleet = Fleet::start(&env, 3);
    publish_jobs(&env, 500).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop();
    fleet.fault(stop_label);
    tokio::time::sleep(down).await;
    start();
    fleet.fault(start_label);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.pool.get().await.is_err() {
        assert!(Instant::now() < deadline, "Postgres did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_all_terminal(&env, 500, Duration::from_secs(150)).await;
    let faults = fleet.stop();
    assert_exactly_once(&env, 500, &faults, started.elapsed()).await;
}

/// A run longer than the broker's `consumer_timeout` (made 2 s here; 30 min by default): the
/// broker takes the message back and closes the channel, the replica reconnects, the run goes on
/// to completion, and the returned message finds it finished. The run is neither killed nor run
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_longer_than_the_consumer_timeout_completes_once() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    set_consumer_timeout_ms(2_000);
    let restore = scopeguard(|| set_consumer_timeout_ms(1_800_000));
    let fleet = Fleet::start(&env, 1);
    let producer = env.producer().await;
    let options = PublishOptions {
        message_id: Some("long-run".into()),
        ..PublishOptions::default()
    };
    // 7 steps of 12 s: longer than the timeout plus the broker's once-a-minute check.
    let payload = warren_tests::video_payload(json!({ "step_ms": 12_000 }));
    warren_tests::publish_when_declared(&producer, "video.process", &payload, options).await;
    let deadline = Instant::now() + Duration::from_secs(150);
    let run = loop {
        if let Some(run) = env.runs_of("long-run").await.pop()
            && run.summary.status != "running"
        {
            break run;
        }
        assert!(Instant::now() < deadline, "the long run did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let faults = fleet.stop();
    drop(restore);
    println!(
        "long run: {:?}, transitions {}",
        run.summary.status,
        run.transitions.len()
    );
    assert_eq!(run.summary.status, "succeeded", "{faults:?}");
    assert!(
        run.steps.iter().all(|s| s.executions == 1),
        "a step ran twice: {:?}",
        run.steps
    );
}

fn set_consumer_timeout_ms(ms: u64) {
    rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, consumer_timeout, {ms})."),
    ]);
}

/// Runs `f` when dropped, so a failed assertion still restores the broker.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Postgres itself stops for a few seconds while 500 jobs run: replicas hold the writes they
/// have, take no new messages, and go on when it is back.
#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_jobs_survive_a_postgres_outage() {
    five_hundred_jobs_across_an_outage(
        ("Postgres stopped", || pg_cluster("stop")),
        Duration::from_secs(4),
        ("Postgres started", || pg_cluster("start")),
    )
    .await;
}

fn pg_cluster(action: &str) {
    let versions = std::fs::read_dir("/etc/postgresql").expect("a Debian PostgreSQL cluster");
    let mut versions: Vec<String> = versions
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    let version = versions.last().expect("a PostgreSQL version");
    let mut command = Command::new("pg_ctlcluster");
    command.arg("--skip-systemctl-redirect");
    if action == "stop" {
        command.args(["--mode", "fast"]);
    }
    let output = command
        .args([version.as_str(), "main", action])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pg_ctlcluster {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Postgres is paused (SIGSTOP on the postmaster and every backend) for 20 s while a replica
/// has work: its connections stay open and their packets are acknowledged, but nothing answers.
/// The replica must turn unready within its write timeout rather than wait with it, lose
/// nothing, and go on once Postgres runs again (SIGCONT).
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_turns_unready_while_postgres_is_paused_and_resumes_after() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let data_directory: String = env
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let started = Instant::now();
    let addr = format!("127.0.0.1:{}", warren_tests::free_port());
    let _replica = env.spawn_test_worker(
        BINARY,
        "paused-pg",
        &[
            "--http-addr",
            &addr,
            "--grace-period",
            "3s",
            "--concurrency",
            "8",
        ],
    );
    publish_jobs(&env, 150).await;
    wait_readiness(&addr, 200, Duration::from_secs(30)).await;

    let paused = pause_postgres(&data_directory);
    let resume = scopeguard(move || resume_postgres(&paused));
    let paused_at = Instant::now();
    // More work arrives while Postgres is paused (the broker is not).
    let producer = env.producer().await;
    for i in 0..150 {
        let task = LEDGER_TASKS[i % 3];
        let options = PublishOptions {
            message_id: Some(format!("late-{i}")),
            ..PublishOptions::default()
        };
        producer
            .publish(task, &json!({ "ms": 5 }), options)
            .await
            .unwrap();
    }
    let within =
        (warren_worker::WRITE_TIMEOUT + Duration::from_secs(5)).saturating_sub(paused_at.elapsed());
    let unready = wait_readiness(&addr, 503, within).await;
    println!(
        "paused Postgres: the replica turned unready {:.1} s after the pause",
        unready.duration_since(paused_at).as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(paused_at.elapsed())).await;
    assert_ne!(
        readiness(&addr).await,
        Some(200),
        "ready while Postgres is paused"
    );
    drop(resume);

    wait_readiness(&addr, 200, Duration::from_secs(30)).await;
    wait_all_terminal(&env, 300, Duration::from_secs(120)).await;
    let mut faults = HashMap::new();
    faults.insert("Postgres paused 20 s", 1);
    assert_exactly_once(&env, 300, &faults, started.elapsed()).await;
}

/// The replica's `/readyz` status, if it answers.
async fn readiness(addr: &str) -> Option<u16> {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

/// Waits until `/readyz` answers `status`; returns when it did.
async fn wait_readiness(addr: &str, status: u16, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let got = readiness(addr).await;
        if got == Some(status) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answered {got:?}, not {status}, for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGSTOPs the postmaster (so it forks no one new), then its children; returns their pids.
fn pause_postgres(data_directory: &str) -> Vec<String> {
    let pid_file = std::fs::read_to_string(format!("{data_directory}/postmaster.pid"))
        .expect("the postmaster's pid file (the fault suite runs beside Postgres, as root)");
    let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
    signal("-STOP", std::slice::from_ref(&postmaster));
    let children = Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    signal("-STOP", &pids);
    pids.push(postmaster);
    pids
}

/// SIGCONTs what [`pause_postgres`] stopped, the postmaster last. Never panics: it also runs
/// while a failed assertion unwinds, and must leave the machine's Postgres running.
fn resume_postgres(pids: &[String]) {
    let _ = Command::new("kill").arg("-CONT").args(pids).status();
}

fn signal(signal: &str, pids: &[String]) {
    if pids.is_empty() {
        return;
    }
    let status = Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pids:?}");
}

/// `scripts/{script}` with `args`, which must succeed; its standard output.
fn script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash").arg(path).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `scripts/rabbit-cluster.sh` with `args`.
fn cluster(args: &[&str]) -> String {
    script("rabbit-cluster.sh", args)
}

/// Messages in the namespace's queues on the cluster, dead-letter queues aside.
fn cluster_messages(namespace: &str) -> u64 {
    let prefix = format!("{namespace}.");
    cluster(&["queues"])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(name, _)| name.starts_with(&prefix) && !name.contains(".dlq."))
        .filter_map(|(_, count)| count.trim().parse::<u64>().ok())
        .sum()
}

/// Three extra RabbitMQ nodes clustered on this machine (the broker on 5672 untouched), three
/// replicas given all three addresses and spread over the nodes by Warren's own choice (their
/// ids are picked so that it puts each on another node: checked from the broker), 2,000 jobs;
/// in the middle, the node leading a task queue is killed with kill -9, and restarted later.
/// Counted from Postgres: every job ran once, no step ran again after its checkpoint, and no
/// message is left in any queue. Prints the time from the node's death to the first job
/// finished after it.
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_jobs_survive_the_death_of_a_cluster_node_leading_their_queue() {
    let _serial = SERIAL.lock().await;
    cluster(&["start"]);
    let _stop = scopeguard(|| {
        cluster(&["stop"]);
    });
    let mut env = TestEnv::new().await;
    let nodes: Vec<String> = (1..=3)
        .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + n))
        .collect();
    env.amqp_url = nodes.join(",");
    create_ledger(&env).await;

    // One replica per node: ids whose connection names Warren sends to nodes 0, 1 and 2.
    let mut ids: Vec<Option<String>> = vec![None; 3];
    for candidate in 0.. {
        let id = format!("cluster-{candidate}");
        let node = warren_shared::amqp::first_node(&format!("warren-worker {id}"), 3);
        if ids[node].is_none() {
            ids[node] = Some(id);
        }
        if ids.iter().all(Option::is_some) {
            break;
        }
    }
    let mut replicas: Vec<TestWorker> = ids
        .iter()
        .flatten()
        .map(|id| {
            env.spawn_test_worker(BINARY, id, &["--grace-period", "3s", "--concurrency", "8"])
        })
        .collect();
    let started = Instant::now();
    publish_jobs(&env, 2000).await;
    let placed = cluster(&["connections"]);
    let mut nodes_used: Vec<&str> = placed
        .lines()
        .filter(|line| line.starts_with("warren-worker cluster-"))
        .filter_map(|line| line.split('\t').nth(1))
        .collect();
    nodes_used.sort_unstable();
    nodes_used.dedup();
    assert_eq!(
        nodes_used,
        ["1", "2", "3"],
        "replicas on every node:\n{placed}"
    );

    // The node leading the busiest task queue dies in the middle of the run.
    while terminal_runs(&env).await < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queue = format!("{}.task.ledger.3", env.namespace);
    let leader = cluster(&["leader", &queue]).trim().to_owned();
    assert!(
        ["1", "2", "3"].contains(&leader.as_str()),
        "leader {leader:?}"
    );
    let killed_at = chrono::Utc::now();
    cluster(&["kill", &leader]);
    eprintln!("killed node {leader} (leader of {queue}) with kill -9");
    let client = env.pool.get().await.unwrap();
    let first_after = loop {
        let row = client
            .query_one(
                "SELECT min(finished_at) FROM runs WHERE finished_at > $1",
                &[&killed_at],
            )
            .await
            .unwrap();
        if let Some(at) = row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(0) {
            break at;
        }
        assert!(
            chrono::Utc::now() - killed_at < chrono::Duration::seconds(60),
            "no job finished within 60 s of the node's death"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let recovery = (first_after - killed_at).num_milliseconds();
    // Runs delivered before the death may still finish (their acks are lost, and the broker
    // hands them out again as duplicates): the recovery that counts is the replicas back on the
    // surviving nodes, and a job delivered after that finished.
    let reconnected_at = loop {
        let placed = cluster(&["connections"]);
        let on_live_nodes = placed
            .lines()
            .filter(|line| line.starts_with("warren-worker cluster-"))
            .filter(|line| line.split('\t').nth(1) != Some(leader.as_str()))
            .count();
        if on_live_nodes == 3 {
            break chrono::Utc::now();
        }
        assert!(
            chrono::Utc::now() - killed_at < chrono::Duration::seconds(60),
            "the replicas did not reconnect within 60 s:\n{placed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivered_after = loop {
        let row = client
            .query_one(
                "SELECT min(finished_at) FROM runs WHERE created_at > $1 AND finished_at IS NOT NULL",
                &[&reconnected_at],
            )
            .await
            .unwrap();
        if let Some(at) = row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(0) {
            break at;
        }
        assert!(
            chrono::Utc::now() - killed_at < chrono::Duration::seconds(90),
            "no job delivered after the reconnection finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reconnection = (reconnected_at - killed_at).num_milliseconds();
    let led_recovery = (delivered_after - killed_at).num_milliseconds();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster(&["restart", &leader]);
    eprintln!("restarted node {leader}");

    wait_all_terminal_on_cluster(&env, 2000, Duration::from_secs(240)).await;
    for replica in &mut replicas {
        let _ = Command::new("kill")
            .args(["-TERM", &replica.id().to_string()])
            .status();
    }
    for replica in &mut replicas {
        let _ = replica.wait();
    }
    let mut faults = HashMap::new();
    faults.insert(
        "kill -9 of the node leading a task queue, restarted 5 s later",
        1,
    );
    println!(
        "cluster: node {leader} killed; a job finished {recovery} ms after its death (delivered before it), every replica was on a live node {reconnection} ms after, and the first job delivered after that finished {led_recovery} ms after the death"
    );
    assert_exactly_once(&env, 2000, &faults, started.elapsed()).await;
    // Replicated on every node by default, the restarted one included.
    assert_eq!(
        cluster(&["members", &queue]).trim(),
        "3",
        "members of {queue}"
    );
    // A group size applies to queues created from then on; a replica given one starts on the
    // queues that exist (they keep their members).
    let connection = warren_shared::amqp::connect(&env.amqp_url, "warren-tests")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let sized = env.topology().with_quorum_group_size(Some(2));
    sized
        .declare_dead_letter_queue(&channel, "sized.probe")
        .await
        .unwrap();
    let probe = sized.dead_letter_queue("sized.probe");
    assert_eq!(
        cluster(&["members", &probe]).trim(),
        "2",
        "members of {probe}"
    );
    let _ = channel
        .queue_delete(probe.as_str().into(), Default::default())
        .await;
    warren_shared::amqp::close(&connection, "done").await;
    let mut sized_replica = env.spawn_test_worker_with_env(
        BINARY,
        "cluster-sized",
        &["--grace-period", "3s"],
        &[("WARREN_QUORUM_GROUP_SIZE", "2")],
    );
    env.wait_consuming(&LEDGER_TASKS).await;
    assert!(
        sized_replica.try_wait().unwrap().is_none(),
        "the replica with a group size runs"
    );
    let _ = sized_replica.kill();
    assert_eq!(
        cluster_messages(&env.namespace),
        0,
        "messages left on the cluster"
    );
}

/// [`wait_all_terminal`] with the queues read from the cluster's nodes.
async fn wait_all_terminal_on_cluster(env: &TestEnv, jobs: i64, within: Duration) {
    let deadline = Instant::now() + within;
    while terminal_runs(env).await < jobs {
        assert!(
            Instant::now() < deadline,
            "only {} of {jobs} jobs finished in {within:?}; queues:\n{}",
            terminal_runs(env).await,
            cluster(&["queues"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while cluster_messages(&env.namespace) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `scripts/pg-standby.sh` with `args`.
fn standby(args: &[&str]) {
    script("pg-standby.sh", args);
}

/// A Postgres primary with a synchronous streaming standby on this machine
/// (`scripts/pg-standby.sh`), three replicas and the test given both hosts in one URL with
/// `target_session_attrs=read-write`, 2,000 jobs; in the middle the primary crashes
/// (`pg_ctl -m immediate`) and 2 s later the standby is promoted. Counted from the new primary:
/// every job ran once, no step ran again after its checkpoint (synchronous replication: every
/// commit a replica was told of, and acked a message for, is on the standby), nothing is left in
/// the queues. No replica is restarted: each reconnects to the new primary by itself.
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_jobs_survive_a_failover_to_a_synchronous_standby() {
    let _serial = SERIAL.lock().await;
    standby(&["start"]);
    let _stop = scopeguard(|| standby(&["stop"]));
    let mut env = TestEnv::new().await;
    env.database_url =
        "postgres://postgres@127.0.0.1:5491,127.0.0.1:5492/warren_failover?target_session_attrs=read-write"
            .into();
    env.pool = warren_shared::db::prepare(&env.database_url, 4)
        .await
        .unwrap();
    create_ledger(&env).await;
    let started = Instant::now();
    let mut fleet = Fleet::start(&env, 3);
    publish_jobs(&env, 2000).await;
    while terminal_runs(&env).await < 600 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    standby(&["crash-primary"]);
    fleet.fault("the primary crashed (pg_ctl -m immediate)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    standby(&["promote"]);
    let promoted_at = chrono::Utc::now();
    fleet.fault("the standby was promoted 2 s later");
    // The test's own pooled connections went down with the primary: the pool replaces them,
    // through the same URL, on the new primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, port) = loop {
        if let Ok(client) = env.pool.get().await
            && let Ok(row) = client.query_one("SELECT inet_server_port()", &[]).await
        {
            let port: i32 = row.get(0);
            break (client, port);
        }
        assert!(
            Instant::now() < deadline,
            "no connection to the new primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(port, 5492, "the URL now reaches the promoted standby");
    let first_after = loop {
        let row = client
            .query_one(
                "SELECT min(finished_at) FROM runs WHERE finished_at > $1",
                &[&promoted_at],
            )
            .await
            .unwrap();
        if let Some(at) = row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(0) {
            break at;
        }
        assert!(
            chrono::Utc::now() - promoted_at < chrono::Duration::seconds(60),
            "no job finished within 60 s of the promotion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(client);
    wait_all_terminal(&env, 2000, Duration::from_secs(240)).await;
    let faults = fleet.stop();
    println!(
        "failover: the first job finished {} ms after the promotion",
        (first_after - promoted_at).num_milliseconds()
    );
    assert_exactly_once(&env, 2000, &faults, started.elapsed()).await;
}
