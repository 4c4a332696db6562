//! The test harness: every test gets its own namespace (exchange and queue names) and its own
//! database on the real RabbitMQ and Postgres, so tests run in parallel and leave nothing behind.
//!
//! Connection settings come from `WARREN_TEST_AMQP_URL` and `WARREN_TEST_PG_URL` (a server URL
//! whose database part is replaced per test), defaulting to the local services.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod console;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;
use warren_producer::Producer;
use warren_shared::store::{self, RunDetail, RunFilter, RunSummary};
use warren_shared::topology::{QueueType, Topology};
use warren_worker::{Registry, RunningWorker, Worker, WorkerConfig};

/// The tasks of the `warren-test-worker` binary (for cleanup of what it declares).
pub const TEST_WORKER_TASKS: [&str; 8] = [
    "video.process",
    "player.dump",
    "poison.pill",
    "chain.first",
    "chain.second",
    "ledger.2",
    "ledger.3",
    "ledger.4",
];

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| warren_shared::config::DEFAULT_AMQP_URL.to_owned())
}

/// The Postgres server the tests use, without a database name.
pub fn pg_server_url() -> String {
    std::env::var("WARREN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// One test's private corner of the broker and the database.
pub struct TestEnv {
    /// Prefix of every exchange and queue of this test.
    pub namespace: String,
    /// The broker.
    pub amqp_url: String,
    /// This test's database.
    pub database_url: String,
    database: String,
    /// A pool on this test's database.
    pub pool: deadpool_postgres::Pool,
    tasks: std::sync::Mutex<Vec<String>>,
}

impl TestEnv {
    /// Creates the namespace and a fresh, migrated database.
    pub async fn new() -> TestEnv {
        warren_shared::install_crypto_provider();
        let id = Uuid::new_v4().simple().to_string();
        let namespace = format!("t{}", &id[..12]);
        let database = format!("warren_test_{}", &id[..12]);
        let database_url = format!("{}/{database}", pg_server_url());
        let pool = warren_shared::db::prepare(&database_url, 4).await.expect(
            "Postgres must be reachable for the integration tests (scripts/test.sh starts it)",
        );
        TestEnv {
            namespace,
            amqp_url: amqp_url(),
            database_url,
            database,
            pool,
            tasks: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// This test's topology (quorum queues).
    pub fn topology(&self) -> Topology {
        Topology::new(self.namespace.clone(), QueueType::Quorum)
    }

    /// A worker configuration for this test, with a short grace period.
    pub fn worker_config(&self) -> WorkerConfig {
        let mut config = WorkerConfig::new(&self.amqp_url, &self.database_url, self.topology());
        config.grace_period = Duration::from_secs(5);
        config
    }

    /// Starts an in-process replica with `registry`'s tasks.
    pub async fn start_worker(&self, registry: Registry) -> RunningWorker {
        self.start_worker_with(self.worker_config(), registry).await
    }

    /// Starts an in-process replica with a custom configuration.
    pub async fn start_worker_with(
        &self,
        config: WorkerConfig,
        registry: Registry,
    ) -> RunningWorker {
        self.tasks
            .lock()
            .unwrap()
            .extend(registry.tasks().map(|t| t.id().to_owned()));
        Worker::new(config, registry)
            .start()
            .await
            .expect("worker starts")
    }

    /// A producer on this test's exchange.
    pub async fn producer(&self) -> Producer {
        Producer::connect(&self.amqp_url, self.topology())
            .await
            .expect("producer connects")
    }

    /// Every run of the message, with steps and transitions.
    pub async fn runs_of(&self, id_or_message_id: &str) -> Vec<RunDetail> {
        let client = self.pool.get().await.unwrap();
        store::find_runs(&client, id_or_message_id).await.unwrap()
    }

    /// Waits until the message's run (of its only task) is in a terminal status.
    pub async fn wait_finished(&self, message_id: &str) -> RunDetail {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let runs = self.runs_of(message_id).await;
            if let [run] = runs.as_slice()
                && matches!(
                    run.summary.status.as_str(),
                    "succeeded" | "halted" | "dead" | "cancelled"
                )
            {
                return run.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run of message {message_id} did not finish in 30 s: {runs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `count` runs are terminal, and returns all runs.
    pub async fn wait_for_finished_runs(&self, count: usize, timeout: Duration) -> Vec<RunSummary> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let client = self.pool.get().await.unwrap();
            let runs = store::list_runs(
                &client,
                &RunFilter {
                    limit: 100_000,
                    ..RunFilter::default()
                },
            )
            .await
            .unwrap();
            let finished = runs
                .iter()
                .filter(|r| {
                    matches!(
                        r.status.as_str(),
                        "succeeded" | "halted" | "dead" | "cancelled"
                    )
                })
                .count();
            if finished >= count {
                return runs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {finished} of {count} runs finished within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes every message now in the task's dead-letter queue (acked: they are consumed).
    pub async fn take_dead_letters(&self, task: &str) -> Vec<lapin::message::BasicGetMessage> {
        let connection = warren_shared::amqp::connect(&self.amqp_url, "warren-tests")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queue = self.topology().dead_letter_queue(task);
        let mut letters = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            letters.push(message);
        }
        warren_shared::amqp::close(&connection, "bye").await;
        letters
    }

    /// Waits until the task's dead-letter queue holds `count` messages, and takes them.
    pub async fn wait_dead_letters(
        &self,
        task: &str,
        count: usize,
    ) -> Vec<lapin::message::BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut letters = Vec::new();
        while letters.len() < count {
            letters.extend(self.take_dead_letters(task).await);
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} dead letters in {task}, got {}",
                letters.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        letters
    }

    /// Runs the real `warren` binary with this test's connection settings.
    pub fn warren(&self) -> std::process::Command {
        let mut command = std::process::Command::new(warren_binary());
        command
            .env("WARREN_AMQP_URL", &self.amqp_url)
            .env("WARREN_DATABASE_URL", &self.database_url)
            .env("WARREN_NAMESPACE", &self.namespace)
            .env("WARREN_HTTP_ADDR", "127.0.0.1:0")
            .env_remove("RUST_LOG");
        command
    }

    /// Runs `warren args` with `vars` set, which must fail with one line on standard error
    /// containing `expected` and no password (every case's password is `secret`).
    pub fn assert_fails_in_one_line(&self, args: &[&str], vars: &[(&str, &str)], expected: &str) {
        let mut command = self.warren();
        command.args(args);
        for (k, v) in vars {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("secret"), "password leaked: {stderr}");
    }

    /// Runs the `warren-test-worker` binary at `binary` as replica `id` of this test.
    pub fn spawn_test_worker(&self, binary: &str, id: &str, extra: &[&str]) -> TestWorker {
        self.spawn_test_worker_with_env(binary, id, extra, &[])
    }

    /// Like [`TestEnv::spawn_test_worker`], with more environment variables.
    pub fn spawn_test_worker_with_env(
        &self,
        binary: &str,
        id: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> TestWorker {
        for task in TEST_WORKER_TASKS {
            self.declared(task);
        }
        std::process::Command::new(binary)
            .args(["worker", "--worker-id", id])
            .args(extra)
            .env("WARREN_AMQP_URL", &self.amqp_url)
            .env("WARREN_DATABASE_URL", &self.database_url)
            .env("WARREN_NAMESPACE", &self.namespace)
            .env("WARREN_WORKER_ID", id)
            .env("WARREN_HTTP_ADDR", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(match std::env::var("WARREN_TEST_WORKER_LOG") {
                Ok(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from),
                Err(_) => std::process::Stdio::null(),
            })
            .spawn()
            .map(TestWorker)
            .expect("the test worker binary starts")
    }

    /// Notes task queues declared by something other than [`TestEnv::start_worker`], so that
    /// cleanup removes them too.
    pub fn declared(&self, task: &str) {
        self.tasks.lock().unwrap().push(task.to_owned());
    }
}

/// A worker process started by a test. Killed when dropped, so that a test that fails leaves no
/// replica running into the tests after it.
#[derive(Debug)]
pub struct TestWorker(std::process::Child);

impl std::ops::Deref for TestWorker {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TestWorker {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<std::process::Child> for TestWorker {
    /// Any process a test started, killed when dropped like the test workers.
    fn from(child: std::process::Child) -> Self {
        TestWorker(child)
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The broker's ids of the open connections whose client named itself `name`
/// (`rabbitmqctl list_connections`).
pub fn broker_connections(name: &str) -> Vec<String> {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl runs (the fault tests need the local broker's tools)");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let needle = format!("\"{name}\"");
    listing
        .lines()
        .filter(|line| line.contains(&needle))
        .filter_map(|line| line.split('\t').next())
        .map(str::to_owned)
        .collect()
}

/// The names of the broker's queues that start with `prefix` (`rabbitmqctl list_queues`).
pub fn broker_queues(prefix: &str) -> Vec<String> {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "-q"])
        .output()
        .expect("rabbitmqctl runs (these tests need the local broker's tools)");
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Closes, from the broker's side, every connection whose client named itself `name`
/// (`rabbitmqctl close_connection`): the fault a broker restart or a network cut causes.
pub fn close_broker_connections(name: &str) {
    let pids = broker_connections(name);
    assert!(!pids.is_empty(), "no broker connection named {name}");
    for pid in pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "fault injection"])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
}

impl TestEnv {
    /// Terminates every Postgres session on this test's database but the caller's
    /// (`pg_terminate_backend`), as a database restart or a failover would.
    pub async fn terminate_postgres_sessions(&self) -> i64 {
        let client = self.pool.get().await.unwrap();
        client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// The `warren` binary built next to this test binary (`cargo build --bins` builds it).
pub fn warren_binary() -> PathBuf {
    workspace_binary("warren")
}

/// A binary of another workspace package, built next to this test binary (`cargo build
/// --workspace --bins` builds them, as scripts/test.sh does).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: build it first (cargo build --workspace --bins), as scripts/test.sh does",
        binary.display()
    );
    binary
}

impl Drop for TestEnv {
    /// Deletes the test's queues, exchange and database, even when the test panicked.
    fn drop(&mut self) {
        let topology = self.topology();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let amqp_url = self.amqp_url.clone();
        let database = self.database.clone();
        let pool = self.pool.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                pool.close();
                if let Ok(connection) =
                    warren_shared::amqp::connect(&amqp_url, "warren-tests-cleanup").await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        topology
                            .delete_all(&channel, tasks.iter().map(String::as_str))
                            .await;
                    }
                    warren_shared::amqp::close(&connection, "bye").await;
                }
                drop_database(&database).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Publishes once a worker process has declared the event's queue: until then the broker returns
/// the message as unroutable. For tests that start the real binary, which declares on its own.
pub async fn publish_when_declared(
    producer: &Producer,
    event: &str,
    payload: &serde_json::Value,
    options: warren_producer::PublishOptions,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while producer
        .publish(event, payload, options.clone())
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker declared the queue of {event} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl TestEnv {
    /// Waits until a replica consumes from each task's queue (for tests that start the real
    /// binary, which declares and consumes on its own), so that publishes route.
    pub async fn wait_consuming(&self, tasks: &[&str]) {
        let connection = warren_shared::amqp::connect(&self.amqp_url, "warren-tests")
            .await
            .unwrap();
        let topology = self.topology();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for task in tasks {
            loop {
                let channel = connection.create_channel().await.unwrap();
                let stats =
                    warren_shared::topology::inspect_queue(&channel, &topology.task_queue(task))
                        .await
                        .unwrap();
                if stats.is_some_and(|s| s.consumers > 0) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no replica consumes {task} within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        warren_shared::amqp::close(&connection, "done").await;
    }
}

/// Registers a replica process `id` running `task`, as a starting replica does: the name its
/// runs are owned under, for tests that call the store as several replicas would.
pub async fn register_replica(
    client: &mut deadpool_postgres::Client,
    id: &str,
    task: &str,
) -> String {
    let tasks = [task.to_owned()];
    let info = warren_shared::store::WorkerInfo {
        id,
        host: "test",
        pid: 1,
        tasks: &tasks,
        version: "test",
    };
    warren_shared::store::register_worker(client, &info)
        .await
        .expect("the replica registers")
}

/// Tests that load the whole machine (a million rows, thousands of runs on three replicas) and
/// tests that measure rates take turns with each other: a rate measured while another test
/// stalls Postgres measures that test. Hold the guard for the test's length.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// `node {script}` on `port` (its `PORT`), with `envs`, once it says it listens on
/// 127.0.0.1:`port`; killed when dropped. The examples' Node.js servers.
pub fn start_node_server(script: &std::path::Path, port: u16, envs: &[(&str, &str)]) -> TestWorker {
    use std::io::BufRead;
    let mut child = std::process::Command::new("node")
        .arg(script)
        .env("PORT", port.to_string())
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs (scripts/test.sh installs it)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{} said {line:?}",
        script.display()
    );
    TestWorker(child)
}

/// A port that was free a moment ago on 127.0.0.1, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Drops a test database, disconnecting whoever still uses it.
pub async fn drop_database(name: &str) {
    let admin_url = format!("{}/postgres", pg_server_url());
    if let Ok((client, connection)) =
        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

/// A valid `video.process` payload with fresh ids, merged with `extra` fields.
pub fn video_payload(extra: serde_json::Value) -> serde_json::Value {
    let mut payload = serde_json::json!({
        "job_id": Uuid::new_v4(),
        "job_run_id": Uuid::new_v4(),
        "workspace_id": Uuid::new_v4(),
        "user_id": Uuid::new_v4(),
        "step_ms": 1,
    });
    if let (Some(map), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    payload
}

/// Counts step executions by name: the side effects a test can see.
#[derive(Clone, Default)]
pub struct Ledger(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

impl Ledger {
    /// Records one execution of `step`; returns how many there have been, this one included.
    pub fn record(&self, step: &str) -> usize {
        let mut counts = self.0.lock().unwrap();
        let n = counts.entry(step.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// How many executions of `step` were recorded.
    pub fn count(&self, step: &str) -> usize {
        self.0.lock().unwrap().get(step).copied().unwrap_or(0)
    }
}
