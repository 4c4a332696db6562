//! The replica: connects, declares the topology, consumes each task's queue with a bounded
//! number of runs in flight, and drains on shutdown.

use crate::cancel::Cancellations;
use crate::children::Directory;
use crate::execute::Executor;
use crate::fleet;
use crate::http::Health;
use crate::lanes::Lanes;
use crate::run_locks::RunLocks;
use crate::settle::Settler;
use crate::state_writer::StateWriter;
use crate::task::Registry;
use crate::task_metrics::TaskMetrics;
use lapin::Connection;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_producer::relay::Relay;
use warren_producer::{PublishError, Publisher};
use warren_shared::contract::DEFAULT_MAX_MESSAGE_BYTES;
use warren_shared::db::{self, DbError};
use warren_shared::priority::Priority;
use warren_shared::retry::RetryPolicy;
use warren_shared::topology::{DelayLevels, Topology};

/// How a replica runs. Build with [`WorkerConfig::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker.
    pub amqp_url: String,
    /// The database (created and migrated at start-up).
    pub database_url: String,
    /// Names and queue type.
    pub topology: Topology,
    /// This replica's id. Each start of it is a new incarnation, and what it records (runs'
    /// owner, steps, transitions) carries `{worker_id}#{incarnation}`.
    pub worker_id: String,
    /// Overrides every task's concurrency on this replica.
    pub concurrency: Option<usize>,
    /// The concurrency of tasks that do not set their own (fleet-wide default).
    pub default_concurrency: usize,
    /// The longest one attempt may take, for tasks that do not set their own (fleet-wide
    /// default).
    pub default_max_duration: Duration,
    /// Messages the broker may push ahead per task; defaults to the task's concurrency, so
    /// that no message waits unstarted in a replica's buffer for long.
    pub prefetch: Option<u16>,
    /// Larger message bodies are dead-lettered.
    pub max_message_bytes: usize,
    /// The most memory the bodies of deliveries pushed ahead may take (Σ prefetch ×
    /// `max_message_bytes`): prefetches are lowered to fit (see `budget`).
    pub message_budget_bytes: usize,
    /// How long in-flight runs may take to finish after a shutdown signal.
    pub grace_period: Duration,
    /// Postgres connections.
    pub db_pool_size: usize,
    /// The retry policy of tasks that do not set their own.
    pub retry: RetryPolicy,
    /// How long an idempotency key makes later publishes with the same key duplicates.
    pub idempotency_window: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (port 0 picks a free port); `None`
    /// serves nothing.
    pub http_addr: Option<SocketAddr>,
    /// How long finished runs, idempotency keys and gone replicas are kept before the fleet
    /// prunes them (one replica at a time); `None` keeps everything.
    pub retention: Option<Duration>,
    /// How often the replica offers to prune.
    pub prune_every: Duration,
    /// The most log lines a run keeps (`StepContext::log`, an HTTP step's `logs`, a command
    /// step's standard error); the oldest are dropped, and counted, beyond it. 0 keeps none.
    pub max_log_lines: usize,
}

impl WorkerConfig {
    /// A configuration with Warren's defaults for everything but the URLs and topology.
    pub fn new(
        amqp_url: impl Into<String>,
        database_url: impl Into<String>,
        topology: Topology,
    ) -> Self {
        WorkerConfig {
            amqp_url: amqp_url.into(),
            database_url: database_url.into(),
            topology,
            worker_id: default_worker_id(),
            concurrency: None,
            default_concurrency: crate::task::DEFAULT_CONCURRENCY,
            default_max_duration: crate::task::DEFAULT_MAX_DURATION,
            prefetch: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            message_budget_bytes: crate::budget::DEFAULT_MESSAGE_BUDGET_BYTES,
            grace_period: Duration::from_secs(30),
            db_pool_size: 6,
            retry: RetryPolicy::default(),
            idempotency_window: Duration::from_secs(24 * 60 * 60),
            http_addr: None,
            retention: Some(crate::retention::DEFAULT_RETENTION),
            prune_every: crate::retention::DEFAULT_PRUNE_EVERY,
            max_log_lines: warren_shared::store::logs::DEFAULT_MAX_LINES,
        }
    }
}

/// How many runs of `task` this replica executes at once: the replica's override, or the
/// task's own, or the replica's default.
fn concurrency_of(config: &WorkerConfig, task: &Arc<dyn crate::task::TaskRunner>) -> usize {
    config
        .concurrency
        .or_else(|| task.concurrency())
        .unwrap_or(config.default_concurrency)
        .max(1)
}

/// Each task's prefetch (its concurrency unless set) for each of its lane consumers, lowered
/// to fit the message memory budget; says at start what the bodies of pushed deliveries may
/// take at most.
///
/// A task with lanes asks once per lane, and each lane asks its concurrency more than the
/// prefetch: a lane's runs in flight hold its prefetch until they are acked, and a lane whose
/// every delivery is running has none ready when a slot frees (the next one is a broker round
/// trip away), so the slot would go to a lower lane. With the headroom a lane keeps `prefetch`
/// deliveries ready beside its runs.
fn message_budget(config: &WorkerConfig, registry: &Registry) -> BTreeMap<String, u16> {
    let asked: Vec<(String, u16)> = registry
        .tasks()
        .flat_map(|task| {
            let concurrency = u16::try_from(concurrency_of(config, task)).unwrap_or(u16::MAX);
            let mut prefetch = config.prefetch.unwrap_or(concurrency);
            if task.priority_lanes() {
                prefetch = prefetch.saturating_add(concurrency);
            }
            let lanes = crate::lanes::of_task(task.priority_lanes()).len();
            std::iter::repeat_n((task.id().to_owned(), prefetch), lanes)
        })
        .collect();
    let plan = crate::budget::plan(
        &asked,
        config.max_message_bytes,
        config.message_budget_bytes,
    );
    let worst = crate::budget::mib(plan.worst_case_bytes);
    let budget = crate::budget::mib(config.message_budget_bytes);
    let deliveries: usize = plan.prefetch.iter().map(|(_, p)| usize::from(*p)).sum();
    if plan.capped {
        tracing::warn!(
            deliveries,
            max_message_mib = crate::budget::mib(config.max_message_bytes),
            budget_mib = budget,
            "prefetch lowered to fit the message memory budget; lower --max-message-bytes or raise --message-budget-bytes to push more ahead"
        );
    }
    tracing::info!(
        deliveries,
        worst_case_mib = worst,
        budget_mib = budget,
        "message bodies in memory at most: prefetch x max message size"
    );
    plan.prefetch.into_iter().collect()
}

/// `host-pid-xxxx`: unique per process, readable in `warren runs show`.
pub fn default_worker_id() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..4])
}

/// Why a replica could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The database could not be prepared.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The replica could not register in Postgres.
    #[error("cannot register the replica: {0}")]
    Register(#[from] warren_shared::store::StoreError),
    /// The dead-letter publisher could not be opened.
    #[error(transparent)]
    Publisher(#[from] PublishError),
    /// No task to run.
    #[error("no tasks to run")]
    NoTasks,
    /// A queue, exchange or binding name would not fit AMQP (namespace, task or event too long).
    #[error(transparent)]
    Names(#[from] warren_shared::contract::ContractError),
    /// The HTTP endpoint could not listen.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The tasks' declared schedules could not be written.
    #[error(transparent)]
    Schedules(#[from] crate::schedule::DeclareError),
    /// A consumer ended without being asked to (connection lost).
    #[error("consumer of task {task} stopped: {reason}")]
    ConsumerLost {
        /// The task.
        task: String,
        /// What happened.
        reason: String,
    },
}

/// A replica, not yet started.
pub struct Worker {
    config: WorkerConfig,
    registry: Registry,
}

/// A started replica.
pub struct RunningWorker {
    id: String,
    owner: String,
    http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    done: JoinHandle<Result<(), WorkerError>>,
}

/// What outlives a broker connection: the database side, the runs in flight and their limits.
struct Shared {
    config: WorkerConfig,
    registry: Registry,
    pool: deadpool_postgres::Pool,
    writer: StateWriter,
    /// This incarnation's owner name (not the configured id): what its writes carry.
    worker_id: Arc<str>,
    run_locks: Arc<RunLocks>,
    delay_levels: Arc<DelayLevels>,
    tracker: TaskTracker,
    /// Stops the runs in flight when the grace period is over (see `Executor::abandon`).
    abandon: CancellationToken,
    /// Run slots per task, shared by every session so that runs still finishing from a lost
    /// connection count against the concurrency of the next one.
    slots: BTreeMap<String, Arc<Semaphore>>,
    /// Prefetch per task, within the message memory budget.
    prefetch: BTreeMap<String, u16>,
    health: Arc<Health>,
    /// Wakes the session's outbox relay after commits that wrote outbox rows.
    relay: Relay,
    /// The tasks steps may start children of.
    directory: Arc<Directory>,
    /// The runs executing here, for cancellation.
    cancellations: Arc<Cancellations>,
}

/// One broker connection and the consumers on it.
struct Session {
    connection: Option<Arc<Connection>>,
    consumers: Vec<JoinHandle<Result<(), WorkerError>>>,
    /// The consumer channels' settlers, flushed before the connection closes.
    settlers: Vec<Settler>,
    /// Stops this session's consumers (a child of the replica's shutdown token).
    stop: CancellationToken,
    /// Stops this session's outbox relay: only once the runs have drained, just before the
    /// connection closes, so that what their last commits wrote goes out from here.
    relay: (CancellationToken, JoinHandle<()>),
}

impl Session {
    /// Stops the relay after one last pass, before the connection closes.
    async fn stop_relay(&mut self) {
        let (stop, relay) = &mut self.relay;
        stop.cancel();
        if tokio::time::timeout(warren_shared::amqp::CLOSE_TIMEOUT, relay)
            .await
            .is_err()
        {
            tracing::warn!("the outbox relay did not finish; another replica's sends what is left");
        }
    }
}

impl Worker {
    /// A replica that will run `registry`'s tasks.
    pub fn new(config: WorkerConfig, registry: Registry) -> Self {
        Worker { config, registry }
    }

    /// Prepares the database and topology and starts consuming. Returns once every consumer is
    /// attached, so a caller may publish right away.
    pub async fn start(self) -> Result<RunningWorker, WorkerError> {
        let Worker { config, registry } = self;
        if registry.tasks().next().is_none() {
            return Err(WorkerError::NoTasks);
        }
        let events: Vec<(String, Vec<String>)> = registry
            .tasks()
            .map(|task| (task.id().to_owned(), task.events()))
            .collect();
        config.topology.check_names(
            events
                .iter()
                .map(|(task, events)| (task.as_str(), events.as_slice())),
        )?;
        // Before any metric handle is registered, so that they all record into it.
        crate::http::prometheus();
        let listener = match config.http_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| WorkerError::Http { addr, source })?,
            ),
            None => None,
        };
        let pool = db::prepare(&config.database_url, config.db_pool_size).await?;
        let task_ids: Vec<String> = registry.tasks().map(|t| t.id().to_owned()).collect();
        let owner = fleet::register(&pool, &config.worker_id, &task_ids).await?;
        let declared: Vec<(String, Vec<crate::schedule::Schedule>)> = registry
            .tasks()
            .map(|task| (task.id().to_owned(), task.schedules()))
            .collect();
        crate::schedule::declare(&pool, &declared).await?;
        let schedule_targets = events
            .iter()
            .filter_map(|(task, events)| {
                Some((
                    task.clone(),
                    warren_shared::store::schedules::Target {
                        event: events.first()?.clone(),
                        queue: config.topology.task_queue(task),
                    },
                ))
            })
            .collect();
        let directory = Arc::new(Directory::new(
            registry
                .tasks()
                .map(|t| (t.id().to_owned(), t.events(), t.priority_lanes())),
        ));
        let (writer, writer_task) = StateWriter::start(pool.clone());
        let slots = registry
            .tasks()
            .map(|task| {
                let concurrency = concurrency_of(&config, task);
                (task.id().to_owned(), Arc::new(Semaphore::new(concurrency)))
            })
            .collect();
        let prefetch = message_budget(&config, &registry);
        let health = Arc::new(Health::new(writer.health()));
        let shared = Arc::new(Shared {
            worker_id: Arc::from(owner.as_str()),
            config,
            registry,
            pool: pool.clone(),
            health: Arc::clone(&health),
            writer,
            run_locks: Arc::new(RunLocks::default()),
            delay_levels: Arc::new(DelayLevels::default()),
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
            slots,
            prefetch,
            relay: Relay::new(),
            directory,
            cancellations: Arc::new(Cancellations::default()),
        });
        let shutdown = CancellationToken::new();
        let stop_http = CancellationToken::new();
        let http_addr = match listener {
            Some(listener) => {
                let addr = listener.local_addr().ok();
                tokio::spawn(crate::http::serve(
                    listener,
                    Arc::clone(&health),
                    stop_http.clone(),
                ));
                addr
            }
            None => None,
        };
        // A replica that starts while the broker restarts or drops connections tries again a
        // few times before giving up.
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        let session = loop {
            match open_session(&shared, &shutdown).await {
                Ok(session) => break session,
                Err(e) if attempts < START_ATTEMPTS => {
                    attempts += 1;
                    tracing::warn!(error = %e, "could not start consuming; trying again");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => {
                    stop_http.cancel();
                    return Err(e);
                }
            }
        };
        tracing::info!(worker = %shared.worker_id, tasks = session.consumers.len(), ?http_addr, "worker consuming");

        let stop_heartbeat = CancellationToken::new();
        if let Some(keep) = shared.config.retention {
            tokio::spawn(crate::retention::run(
                pool.clone(),
                crate::retention::Policy::new(keep, shared.config.idempotency_window),
                shared.config.prune_every,
                shutdown.clone(),
            ));
        }
        tokio::spawn(crate::schedule::run(
            pool.clone(),
            schedule_targets,
            shared.relay.clone(),
            shutdown.clone(),
        ));
        let keyed: Vec<String> = shared
            .registry
            .tasks()
            .filter(|task| task.concurrency_key().is_some())
            .map(|task| task.id().to_owned())
            .collect();
        if !keyed.is_empty() {
            tokio::spawn(crate::concurrency_key::sweep(
                pool.clone(),
                keyed,
                shared.relay.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(crate::cancel::watch(
            pool.clone(),
            Arc::clone(&shared.worker_id),
            Arc::clone(&shared.cancellations),
            stop_heartbeat.clone(),
        ));
        let heartbeat = tokio::spawn(fleet::heartbeat(
            pool,
            owner.clone(),
            shared.tracker.clone(),
            stop_heartbeat.clone(),
        ));
        let id = shared.config.worker_id.clone();
        let done = tokio::spawn(supervise(
            shared,
            session,
            shutdown.clone(),
            writer_task,
            (stop_heartbeat, heartbeat),
            stop_http,
        ));
        Ok(RunningWorker {
            id,
            owner,
            http_addr,
            shutdown,
            done,
        })
    }
}

/// Connects, declares the topology, and attaches one consumer per task with its prefetch set
/// before `basic.consume` (a prefetch set afterwards would not apply to the consumer).
async fn open_session(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<Session, WorkerError> {
    let config = &shared.config;
    let connection = warren_shared::amqp::connect(
        &config.amqp_url,
        &format!("warren-worker {}", config.worker_id),
    )
    .await?;
    let connection = Arc::new(connection);
    match attach(shared, &connection, shutdown).await {
        Ok((consumers, settlers, stop)) => {
            let tasks = shared
                .registry
                .tasks()
                .map(|t| (t.id().to_owned(), t.priority_lanes()))
                .collect();
            let poller = Arc::clone(&connection);
            let topology = config.topology.clone();
            let stop_polling = stop.clone();
            tokio::spawn(async move {
                crate::queue_gauges::poll(&poller, topology, tasks, stop_polling).await;
            });
            // The outbox relay publishes on a confirm channel of its own on this connection.
            let relay = match Publisher::open(&connection).await {
                Ok(publisher) => {
                    let relay = shared.relay.clone();
                    let pool = shared.pool.clone();
                    let stop_relay = CancellationToken::new();
                    let stopped = stop_relay.clone();
                    let task =
                        tokio::spawn(async move { relay.run(pool, publisher, stopped).await });
                    (stop_relay, task)
                }
                Err(e) => {
                    stop.cancel();
                    warren_shared::amqp::close(&connection, "setup failed").await;
                    return Err(e.into());
                }
            };
            shared.health.set_consuming(true);
            Ok(Session {
                connection: Some(connection),
                consumers,
                settlers,
                stop,
                relay,
            })
        }
        Err(e) => {
            warren_shared::amqp::close(&connection, "setup failed").await;
            Err(e)
        }
    }
}

type Consumers = Vec<JoinHandle<Result<(), WorkerError>>>;

async fn attach(
    shared: &Arc<Shared>,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> Result<(Consumers, Vec<Settler>, CancellationToken), WorkerError> {
    let config = &shared.config;
    let lanes_of =
        declare_topology(&shared.pool, connection, &config.topology, &shared.registry).await?;
    let publisher = Publisher::open(connection).await?;
    let stop = shutdown.child_token();
    let mut consumers = Vec::new();
    let mut settlers = Vec::new();
    for task in shared.registry.tasks() {
        let slots = shared
            .slots
            .get(task.id())
            .cloned()
            .unwrap_or_else(|| Arc::new(Semaphore::new(1)));
        let prefetch = shared.prefetch.get(task.id()).copied().unwrap_or(1);
        let consumed = lanes_of
            .get(task.id())
            .map_or(&[Priority::Normal][..], Vec::as_slice);
        let (lanes, lane_settlers) = Lanes::attach(
            connection,
            &config.topology,
            (task.id(), consumed),
            &format!("{}/{}", config.worker_id, task.id()),
            prefetch,
        )
        .await?;
        settlers.extend(lane_settlers);
        let executor = Arc::new(Executor {
            task: Arc::clone(task),
            events: task.events().into_iter().collect(),
            steps: task.steps(),
            writer: shared.writer.clone(),
            publisher: publisher.clone(),
            topology: config.topology.clone(),
            worker_id: Arc::clone(&shared.worker_id),
            task_id: Arc::from(task.id()),
            max_message_bytes: config.max_message_bytes,
            run_locks: Arc::clone(&shared.run_locks),
            retry: task.retry_policy().unwrap_or(config.retry),
            max_duration: task.max_duration().unwrap_or(config.default_max_duration),
            rate_limit: task.rate_limit(),
            concurrency_key: task.concurrency_key(),
            delay_levels: Arc::clone(&shared.delay_levels),
            idempotency_window: config.idempotency_window,
            metrics: TaskMetrics::new(task.id(), &task.steps()),
            draining: shutdown.clone(),
            abandon: shared.abandon.clone(),
            relay: shared.relay.clone(),
            directory: Arc::clone(&shared.directory),
            cancellations: Arc::clone(&shared.cancellations),
            max_log_lines: config.max_log_lines,
        });
        consumers.push(tokio::spawn(consume(
            lanes,
            executor,
            slots,
            shared.tracker.clone(),
            stop.clone(),
            shared.writer.clone(),
        )));
    }
    Ok((consumers, settlers, stop))
}

impl RunningWorker {
    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The owner name of this start of the replica (`{id}#{incarnation}`): what its runs,
    /// steps and transitions record.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Where the HTTP endpoints listen, if they do.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A token that starts the drain when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops taking messages, lets in-flight runs finish within the grace period, returns the
    /// rest to the broker, and waits until the replica has stopped.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the replica stops (after a shutdown).
    pub async fn wait(self) -> Result<(), WorkerError> {
        match self.done.await {
            Ok(result) => result,
            Err(e) => Err(WorkerError::ConsumerLost {
                task: "*".into(),
                reason: e.to_string(),
            }),
        }
    }
}

/// The advisory lock key that serialises topology declarations across replicas.
const TOPOLOGY_LOCK_KEY: i64 = 0x7761_7272_656f;

/// Declares every task's queues, one replica at a time, and says which lanes of each to
/// consume (see [`crate::lanes::to_consume`]): replicas of a fleet often start (and
/// reconnect) together, and a broker asked to create the same quorum queues from many
/// connections at once is put under needless strain.
///
/// The lock is transaction-scoped on purpose: a reconnect attempt that times out drops this
/// future mid-way, and a session-level lock acquired by a dropped future would stay held by a
/// pooled connection forever, blocking every replica's next declaration. Dropping the
/// transaction rolls it back and releases the lock.
async fn declare_topology(
    pool: &deadpool_postgres::Pool,
    connection: &Connection,
    topology: &Topology,
    registry: &Registry,
) -> Result<BTreeMap<String, Vec<Priority>>, WorkerError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOPOLOGY_LOCK_KEY])
        .await
        .map_err(DbError::from)?;
    let declared = async {
        let mut channel = connection.create_channel().await?;
        let mut consumed = BTreeMap::new();
        for task in registry.tasks() {
            if let Err(e) = topology.declare_dead_letter_queue(&channel, task.id()).await {
                if !warren_shared::topology::is_inequivalent(&e) {
                    return Err(e);
                }
                // Created by an older Warren, or before the quorum group size was set: it
                // keeps its arguments (a queue's arguments cannot change), and the refusal
                // closed the channel.
                tracing::warn!(
                    queue = %topology.dead_letter_queue(task.id()),
                    "dead-letter queue has no explicit delivery limit; on RabbitMQ 4.0-4.2 set one by policy (docs/operations.md)"
                );
                channel = connection.create_channel().await?;
            }
            let declared = topology
                .declare_task_queue(
                    &channel,
                    task.id(),
                    &task.events(),
                    task.priority_lanes(),
                )
                .await;
            match declared {
                Err(e)
                    if topology.quorum_group_size().is_some()
                        && warren_shared::topology::is_inequivalent(&e) =>
                {
                    // Created before the group size was set: it keeps its members (the
                    // refusal closed the channel).
                    tracing::warn!(
                        queue = %topology.task_queue(task.id()),
                        "task queue exists without the quorum group size: it keeps its replicas (rabbitmq-queues grow/shrink changes them; docs/operations.md)"
                    );
                    channel = connection.create_channel().await?;
                    topology
                        .clone()
                        .with_quorum_group_size(None)
                        .declare_task_queue(
                            &channel,
                            task.id(),
                            &task.events(),
                            task.priority_lanes(),
                        )
                        .await?;
                }
                other => other?,
            }
            let lanes = crate::lanes::to_consume(
                connection,
                &channel,
                topology,
                (task.id(), task.priority_lanes()),
            )
            .await?;
            consumed.insert(task.id().to_owned(), lanes);
        }
        warren_shared::amqp::close_channel(&channel, "declared").await;
        Ok::<_, lapin::Error>(consumed)
    }
    .await;
    tx.commit().await.map_err(DbError::from)?;
    Ok(declared?)
}

/// Takes deliveries while a run slot is free and Postgres is reachable, each from the lane
/// the picking rule chooses, and hands each to its own task. Returns `Ok` when stopped, an
/// error when the broker took a consumer away.
async fn consume(
    mut lanes: Lanes,
    executor: Arc<Executor>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
    writer: StateWriter,
) -> Result<(), WorkerError> {
    let lost = |reason: String| WorkerError::ConsumerLost {
        task: executor.task_id.to_string(),
        reason,
    };
    let result = loop {
        // While Postgres is down nothing taken now could be recorded: leave messages in the
        // broker instead of taking them only to hand them back.
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = writer.healthy() => {}
        }
        let slot = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(e) => break Err(lost(e.to_string())),
            },
        };
        let taken = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            taken = lanes.next() => taken,
        };
        match taken {
            Ok(taken) => {
                let executor = Arc::clone(&executor);
                tracker.spawn(async move {
                    executor.handle(taken.delivery, taken.pending).await;
                    drop(slot);
                });
            }
            Err(reason) => break Err(lost(reason)),
        }
    };
    lanes.cancel().await;
    result
}

/// Runs sessions until shutdown: when the broker connection is lost, reconnects with backoff
/// and jitter, declares the topology again and goes on; runs in flight keep running meanwhile
/// (their messages, returned by the broker, wait for them on the run locks). Then drains.
async fn supervise(
    shared: Arc<Shared>,
    mut session: Session,
    shutdown: CancellationToken,
    writer_task: JoinHandle<()>,
    (stop_heartbeat, heartbeat): (CancellationToken, JoinHandle<()>),
    stop_http: CancellationToken,
) -> Result<(), WorkerError> {
    loop {
        let lost = wait_for_loss(&mut session).await;
        shared.health.set_consuming(false);
        session.stop.cancel();
        for consumer in session.consumers.drain(..) {
            let _ = consumer.await;
        }
        if shutdown.is_cancelled() {
            break;
        }
        tracing::warn!(reason = %lost, "broker connection lost; reconnecting");
        session.stop_relay().await;
        if let Some(connection) = session.connection.take() {
            warren_shared::amqp::close(&connection, "reconnecting").await;
        }
        let mut backoff = Backoff::new();
        session = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
            let attempt = tokio::time::timeout(RECONNECT_TIMEOUT, open_session(&shared, &shutdown));
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break None,
                opened = attempt => opened,
            };
            match opened {
                Ok(Ok(session)) => break Some(session),
                Ok(Err(e)) => tracing::warn!(error = %e, "reconnect failed; trying again"),
                Err(_) => tracing::warn!("reconnect timed out; trying again"),
            }
        }
        .map_or_else(
            || Session {
                connection: None,
                consumers: Vec::new(),
                settlers: Vec::new(),
                stop: CancellationToken::new(),
                relay: (CancellationToken::new(), tokio::spawn(async {})),
            },
            |s| {
                tracing::info!("reconnected; consuming again");
                s
            },
        );
        if shutdown.is_cancelled() {
            break;
        }
    }

    shared.health.set_draining();
    let tracker = &shared.tracker;
    let grace = shared.config.grace_period;
    tracker.close();
    tracing::info!(
        in_flight = tracker.len(),
        grace_seconds = grace.as_secs_f64(),
        "draining"
    );
    let drained = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if !drained {
        tracing::warn!(
            left = tracker.len(),
            "grace period over: unfinished runs go back to the queue and resume from their checkpoints"
        );
        // Before the connection closes and the replica is marked stopped: once it is, another
        // replica may take these runs over, and must not find them still executing here.
        shared.abandon.cancel();
        if tokio::time::timeout(warren_shared::amqp::CLOSE_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "runs still busy after being abandoned (a step that never yields)"
            );
        }
    }
    // What is settled goes out before the connection closes (held acks included).
    let flushed = futures::future::join_all(session.settlers.iter().map(Settler::flush));
    if tokio::time::timeout(warren_shared::amqp::CLOSE_TIMEOUT, flushed)
        .await
        .is_err()
    {
        tracing::warn!("acks still unsent at shutdown; the broker redelivers those messages");
    }
    session.stop_relay().await;
    if let Some(connection) = session.connection.take() {
        warren_shared::amqp::close(&connection, "worker shutting down").await;
    }
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    stop_http.cancel();
    drop(shared);
    // The writer stops once the last handle (held by finished runs) is gone.
    if drained {
        let _ = writer_task.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// How many times a starting replica tries again to connect and consume.
const START_ATTEMPTS: u32 = 4;

/// How long one reconnect attempt (connect, declare, consume) may take.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until a consumer of the session ends: a shutdown (they all stop) or a loss.
async fn wait_for_loss(session: &mut Session) -> String {
    if session.consumers.is_empty() {
        session.stop.cancelled().await;
        return "stopped".into();
    }
    let (result, index, _) = futures::future::select_all(session.consumers.iter_mut()).await;
    session.consumers.remove(index);
    match result {
        Ok(Ok(())) => "stopped".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Exponential backoff with jitter for reconnects: 0.5 s doubling to 30 s, each wait drawn
/// from [half, all] of its step so that a fleet does not reconnect in lockstep.
struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Backoff { step: Self::FIRST }
    }

    fn next(&mut self) -> Duration {
        let wait = self.step.mul_f64(0.5 + 0.5 * rand::random::<f64>());
        self.step = (self.step * 2).min(Self::MAX);
        wait
    }
}
