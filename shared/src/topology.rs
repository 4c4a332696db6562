//! The broker topology: every exchange and queue name, and how each is declared.
//!
//! ```text
//! producer --(routing key = event)--> {ns}.events (topic)
//!     {ns}.events --event--> {ns}.lanes.{task} (headers)   one lane exchange per task, bound to its events
//!     {ns}.lanes.{task} --warren-priority=high--> {ns}.task-high.{task}   (tasks with lanes)
//!     {ns}.lanes.{task} --warren-priority=low--> {ns}.task-low.{task}     (tasks with lanes)
//!     {ns}.lanes.{task} --anything else--> {ns}.lanes-normal.{task} (fanout, alternate exchange)
//!         --> {ns}.task.{task}                  the task's normal queue
//!     {ns}.task{,-high,-low}.{task} --(broker dead-letters a poison message)--> {ns}.dlq.{task}
//!     worker --(publishes dead letters with reason headers, confirmed)--> {ns}.dlq.{task}
//!
//! delays (retries, "wait for", delayed publishing), held by the broker:
//!     publisher --(key = 28 delay bits + destination)--> {ns}.delay.{highest set bit}
//!     {ns}.delay.{n} --bit n is 1--> queue {ns}.delay.{n} (TTL 2^n s) --expired--> {ns}.delay.{n-1}
//!     {ns}.delay.{n} --bit n is 0--> {ns}.delay.{n-1}            (exchange-to-exchange, instant)
//!     {ns}.delay.0 ... --> {ns}.delayed --"task.{task}" or "event.{event}"--> lane exchanges
//!     {ns}.delayed --no queue matches--> {ns}.unrouted (alternate exchange; nothing is dropped)
//! ```
//!
//! Every way into a task (an event, the end of a delay, a copy Warren sends back with
//! [`Topology::task_route`]) passes its lane exchange, so the `warren-priority` header alone
//! picks the lane, and a retry or wake-up, which keeps its headers, comes back to its lane.
//! A message routed by an alternate exchange counts as routed: a publisher's mandatory flag
//! still reports an event no task listens to. See [`crate::priority`].
//!
//! The delay cascade is the design RabbitMQ users settled on (NServiceBus, then Celery 5.5):
//! every queue has one fixed TTL, so messages expire in the order they sit and a long delay
//! never blocks a short one, and a delay of `d` seconds visits only the levels of `d`'s set bits.
//! 28 levels reach 2^28 - 1 s (8.5 years) with one-second resolution.
//!
//! Every worker declares the topology at start-up; declarations are idempotent, so replicas may
//! start together. Queue arguments cannot change after a queue exists (RabbitMQ refuses the
//! redeclaration), which is why they are all here: see `docs/operations.md` on upgrades.

use crate::priority::Priority;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The default broker-side safety net: deliveries of one message to a quorum task queue before
/// the broker dead-letters it (RabbitMQ 4's own default). Warren's retries never use it up: they
/// publish a fresh message; only crashes, connection losses and hand-backs count.
pub const DEFAULT_DELIVERY_LIMIT: i64 = 20;

/// The delivery limit of a quorum dead-letter queue: never reached. RabbitMQ 4 gives a quorum
/// queue without one a limit of 20, and a dead-letter queue has nowhere to send a message past
/// it: it would drop a dead letter that operators looked at (`warren dlq list` reads and returns
/// letters) twenty times. RabbitMQ 3.x has no default and takes the explicit value as it is.
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// Delay levels: level `n` holds messages for 2^n seconds.
pub const DELAY_LEVELS: u32 = 28;

/// The longest delay the cascade can hold.
pub const MAX_DELAY_SECONDS: u64 = (1 << DELAY_LEVELS) - 1;

/// Where a delayed message goes when its delay is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// One task's queue (retries and waits of that task's runs).
    Task(&'a str),
    /// Every task that listens to the event (delayed publishing).
    Event(&'a str),
}

/// Which RabbitMQ queue type task queues use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, durable, with a delivery limit for poison messages (the default).
    #[default]
    Quorum,
    /// Single-node classic queues, for brokers without quorum queue support.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quorum" => Ok(QueueType::Quorum),
            "classic" => Ok(QueueType::Classic),
            other => Err(format!(
                "unknown queue type {other:?} (expected quorum or classic)"
            )),
        }
    }
}

/// A namespace's names and declarations.
#[derive(Clone, Debug)]
pub struct Topology {
    namespace: String,
    queue_type: QueueType,
    delivery_limit: i64,
    /// Nodes holding a replica of each quorum task, lane and dead-letter queue created from
    /// now on; `None`: the broker's default (every node of the cluster when the queue is
    /// declared: three on the usual three-node cluster).
    quorum_group_size: Option<u32>,
}

impl Topology {
    /// The topology of `namespace` (e.g. `warren`), with task queues of `queue_type`.
    pub fn new(namespace: impl Into<String>, queue_type: QueueType) -> Self {
        Topology {
            namespace: namespace.into(),
            queue_type,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            quorum_group_size: None,
        }
    }

    /// Sets how many nodes hold a replica of each quorum task, lane and dead-letter queue
    /// declared from now on (`x-quorum-initial-group-size`). Delay levels and `unrouted` keep
    /// the broker's default: producers declare them too, and do not know this setting. A queue
    /// that exists keeps its members (the broker refuses a declaration that adds the argument:
    /// see [`is_inequivalent`]); change them with `rabbitmq-queues grow` / `shrink`.
    pub fn with_quorum_group_size(mut self, size: Option<u32>) -> Self {
        self.quorum_group_size = size.map(|n| n.max(1));
        self
    }

    /// The group size set, if any.
    pub fn quorum_group_size(&self) -> Option<u32> {
        self.quorum_group_size
    }

    /// Sets the broker's delivery limit for task queues created from now on (quorum only).
    pub fn with_delivery_limit(mut self, limit: i64) -> Self {
        self.delivery_limit = limit.max(1);
        self
    }

    /// The namespace every name starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The queue type used for task queues.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The topic exchange producers publish events to.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// The durable queue a task consumes.
    pub fn task_queue(&self, task: &str) -> String {
        format!("{}.task.{task}", self.namespace)
    }

    /// The queue of one of a task's lanes: the normal lane is the task queue itself (a task
    /// without lanes has only that one). `-high`/`-low` sit before the dot so that no task's
    /// lane queue can be named like another task's queue (tasks have dotted names).
    pub fn lane_queue(&self, task: &str, priority: Priority) -> String {
        match priority {
            Priority::Normal => self.task_queue(task),
            other => format!("{}.task-{other}.{task}", self.namespace),
        }
    }

    /// The task's headers exchange that sorts its messages into lanes by `warren-priority`.
    pub fn lanes_exchange(&self, task: &str) -> String {
        format!("{}.lanes.{task}", self.namespace)
    }

    /// The fanout exchange behind [`Topology::lanes_exchange`] (its alternate exchange): what no
    /// lane binding takes goes to the normal queue.
    pub fn normal_lane_exchange(&self, task: &str) -> String {
        format!("{}.lanes-normal.{task}", self.namespace)
    }

    /// The exchanges of one task (its lane exchanges).
    pub fn task_exchanges(&self, task: &str) -> [String; 2] {
        [self.lanes_exchange(task), self.normal_lane_exchange(task)]
    }

    /// Where to publish a copy of a message that must reach `task` now (a sub-second retry, a
    /// wake-up, a child run, a replayed dead letter): the delivery exchange, as a delay of zero
    /// seconds would end. It keeps the lane its `warren-priority` header names, and unlike the
    /// task's own exchanges it exists wherever any task was declared (and keeps what no task
    /// wants in the unrouted queue).
    pub fn task_route(&self, task: &str) -> (String, String) {
        let mut key = "0.".repeat(DELAY_LEVELS as usize);
        key.push_str(&destination_words(Destination::Task(task)));
        (self.delivery_exchange(), key)
    }

    /// The task's dead-letter queue.
    pub fn dead_letter_queue(&self, task: &str) -> String {
        format!("{}.dlq.{task}", self.namespace)
    }

    /// The exchange of delay level `level`.
    pub fn delay_exchange(&self, level: u32) -> String {
        format!("{}.delay.{level}", self.namespace)
    }

    /// The queue of delay level `level` (TTL 2^level seconds).
    pub fn delay_queue(&self, level: u32) -> String {
        format!("{}.delay.{level}", self.namespace)
    }

    /// The exchange a delayed message reaches when its delay is over.
    pub fn delivery_exchange(&self) -> String {
        format!("{}.delayed", self.namespace)
    }

    /// Where delayed messages that no task queue wants are kept (exchange and queue).
    pub fn unrouted(&self) -> String {
        format!("{}.unrouted", self.namespace)
    }

    /// Every queue of the namespace for these tasks, delay and unrouted queues included.
    pub fn all_queues<'a>(&self, tasks: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut queues: Vec<String> = tasks
            .into_iter()
            .flat_map(|t| {
                [
                    self.task_queue(t),
                    self.lane_queue(t, Priority::High),
                    self.lane_queue(t, Priority::Low),
                    self.dead_letter_queue(t),
                ]
            })
            .collect();
        queues.extend((0..DELAY_LEVELS).map(|n| self.delay_queue(n)));
        queues.push(self.unrouted());
        queues
    }

    /// Checks that every name and binding key the namespace needs for these tasks (and the events
    /// they listen to) fits an AMQP short string: the AMQP library panics on a longer one, and
    /// the namespace, task ids and event names all come from users.
    pub fn check_names<'a>(
        &self,
        tasks: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<(), crate::contract::ContractError> {
        let mut names = self.all_exchanges();
        for (task, events) in tasks {
            names.extend(self.all_queues([task]));
            names.extend(self.task_exchanges(task));
            names.push(delivered_pattern(Destination::Task(task)));
            names.extend(
                events
                    .iter()
                    .map(|event| delivered_pattern(Destination::Event(event))),
            );
        }
        match names
            .into_iter()
            .find(|name| name.len() > crate::contract::MAX_SHORT_STRING_LEN)
        {
            Some(name) => Err(crate::contract::ContractError::ShortStringTooLong {
                what: format!(
                    "the queue, exchange or binding name {:?}... (namespace {:?})",
                    name.chars().take(60).collect::<String>(),
                    self.namespace.chars().take(40).collect::<String>()
                ),
                len: name.len(),
            }),
            None => Ok(()),
        }
    }

    /// Every exchange of the namespace.
    pub fn all_exchanges(&self) -> Vec<String> {
        let mut exchanges = vec![
            self.events_exchange(),
            self.delivery_exchange(),
            self.unrouted(),
        ];
        exchanges.extend((0..DELAY_LEVELS).map(|n| self.delay_exchange(n)));
        exchanges
    }

    /// Where to publish a message that must reach `destination` after `delay`: the exchange and
    /// routing key, or `None` when the delay is under half a second (publish directly). Delays
    /// round to whole seconds and are capped at [`MAX_DELAY_SECONDS`].
    pub fn delayed_route(
        &self,
        delay: Duration,
        destination: Destination<'_>,
    ) -> Option<(String, String)> {
        let seconds = delay.as_secs_f64().round().min(MAX_DELAY_SECONDS as f64) as u64;
        if seconds == 0 {
            return None;
        }
        let highest = 63 - seconds.leading_zeros();
        let mut key = String::with_capacity(2 * DELAY_LEVELS as usize + 64);
        for level in (0..DELAY_LEVELS).rev() {
            key.push(if seconds & (1 << level) != 0 {
                '1'
            } else {
                '0'
            });
            key.push('.');
        }
        key.push_str(&destination_words(destination));
        Some((self.delay_exchange(highest), key))
    }

    /// Declares the delivery exchange (where delays end) and the unrouted queue. Idempotent.
    pub async fn declare_delivery(&self, channel: &Channel) -> lapin::Result<()> {
        let unrouted = self.unrouted();
        declare_exchange(
            channel,
            &unrouted,
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;
        channel
            .queue_declare(
                unrouted.as_str().into(),
                QueueDeclareOptions::durable(),
                self.plain_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                unrouted.as_str().into(),
                unrouted.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut delivery_args = FieldTable::default();
        delivery_args.insert("alternate-exchange".into(), text(&unrouted));
        declare_exchange(
            channel,
            &self.delivery_exchange(),
            ExchangeKind::Topic,
            delivery_args,
        )
        .await
    }

    /// Declares delay level `level`: its exchange, its queue (TTL 2^level s, dead-lettering to
    /// the level below), and the bindings that route by the level's bit. Idempotent. A delay
    /// needs every level from its highest set bit down to 0; see [`DelayLevels`].
    pub async fn declare_delay_level(&self, channel: &Channel, level: u32) -> lapin::Result<()> {
        let exchange = self.delay_exchange(level);
        let next = match level {
            0 => self.delivery_exchange(),
            n => self.delay_exchange(n - 1),
        };
        declare_exchange(
            channel,
            &exchange,
            ExchangeKind::Topic,
            FieldTable::default(),
        )
        .await?;
        let queue = self.delay_queue(level);
        let mut args = self.plain_queue_arguments();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(1000_i64 << level),
        );
        args.insert("x-dead-letter-exchange".into(), text(&next));
        self.add_safe_dead_lettering(&mut args);
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                bit_pattern(level, '1').as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_bind(
                next.as_str().into(),
                exchange.as_str().into(),
                bit_pattern(level, '0').as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Deletes the queues of `tasks` and every exchange of the namespace, as far as it can:
    /// for tests and benchmarks that clean up after themselves. Errors are ignored (what is gone
    /// is gone; a broker that cannot be reached keeps the rest).
    pub async fn delete_all<'a>(
        &self,
        channel: &Channel,
        tasks: impl IntoIterator<Item = &'a str>,
    ) {
        let tasks: Vec<&str> = tasks.into_iter().collect();
        for exchange in tasks.iter().flat_map(|t| self.task_exchanges(t)) {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        for queue in self.all_queues(tasks) {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in self.all_exchanges() {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    /// Declares the events exchange.
    pub async fn declare_exchange(&self, channel: &Channel) -> lapin::Result<()> {
        declare_exchange(
            channel,
            &self.events_exchange(),
            ExchangeKind::Topic,
            FieldTable::default(),
        )
        .await
    }

    /// Declares a task's queue and dead-letter queue (lane queues too when `lanes`), and routes
    /// each of its events to them, directly and through the delay cascade. Declares the
    /// exchanges and the cascade too.
    pub async fn declare_task(
        &self,
        channel: &Channel,
        task: &str,
        events: &[String],
        lanes: bool,
    ) -> lapin::Result<()> {
        self.declare_dead_letter_queue(channel, task).await?;
        self.declare_task_queue(channel, task, events, lanes).await
    }

    /// Declares a task's dead-letter queue. A queue created by an older Warren (without the
    /// explicit delivery limit) makes the broker refuse this with `PRECONDITION_FAILED` and
    /// close the channel: see [`is_inequivalent`] and `docs/operations.md` on upgrades.
    pub async fn declare_dead_letter_queue(
        &self,
        channel: &Channel,
        task: &str,
    ) -> lapin::Result<()> {
        let dlq = self.dead_letter_queue(task);
        channel
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions::durable(),
                self.dlq_arguments(),
            )
            .await?;
        Ok(())
    }

    /// Declares the exchanges, a task's queues (the high and low lanes when `lanes`) and its
    /// bindings; its dead-letter queue must exist (the queues' broker-side dead-lettering
    /// points at it).
    ///
    /// Every route into the task ends at its lane exchange. The direct bindings of the task
    /// queue that earlier releases made (events and delivery exchange straight to the queue)
    /// are removed here, after the new routes exist: the broker delivers a message routed to one
    /// queue by two paths once, so nothing is doubled or lost meanwhile.
    pub async fn declare_task_queue(
        &self,
        channel: &Channel,
        task: &str,
        events: &[String],
        lanes: bool,
    ) -> lapin::Result<()> {
        self.declare_exchange(channel).await?;
        self.declare_delivery(channel).await?;
        let dlq = self.dead_letter_queue(task);
        let queue = self.task_queue(task);
        let lanes_exchange = self.lanes_exchange(task);
        let normal = self.normal_lane_exchange(task);
        declare_exchange(
            channel,
            &normal,
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await?;
        let mut lane_args = FieldTable::default();
        lane_args.insert("alternate-exchange".into(), text(&normal));
        declare_exchange(channel, &lanes_exchange, ExchangeKind::Headers, lane_args).await?;
        let mut queues = vec![(queue.clone(), normal.clone(), FieldTable::default())];
        if lanes {
            for priority in [Priority::High, Priority::Low] {
                queues.push((
                    self.lane_queue(task, priority),
                    lanes_exchange.clone(),
                    lane_binding(priority),
                ));
            }
        }
        for (queue, exchange, binding) in queues {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    self.task_queue_arguments(&dlq),
                )
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    binding,
                )
                .await?;
        }
        let routes = self.task_routes(task, events);
        for (exchange, key) in &routes {
            channel
                .exchange_bind(
                    lanes_exchange.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for (exchange, key) in &routes {
            channel
                .queue_unbind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Unbinds a lane queue of `task` from its lane exchange (for a task whose lanes were
    /// turned off): nothing new reaches the lane, and what it holds can still be consumed.
    /// The queue must exist (a missing one makes the broker close the channel).
    pub async fn unbind_lane(
        &self,
        channel: &Channel,
        task: &str,
        priority: Priority,
    ) -> lapin::Result<()> {
        channel
            .queue_unbind(
                self.lane_queue(task, priority).as_str().into(),
                self.lanes_exchange(task).as_str().into(),
                "".into(),
                lane_binding(priority),
            )
            .await
    }

    /// The bindings (exchange, key) that bring a task's messages to it: each of its events from
    /// the events exchange, and from the delivery exchange the end of a delay for the task or
    /// for one of its events.
    fn task_routes(&self, task: &str, events: &[String]) -> Vec<(String, String)> {
        let mut routes = vec![(
            self.delivery_exchange(),
            delivered_pattern(Destination::Task(task)),
        )];
        for event in events {
            routes.push((self.events_exchange(), event.clone()));
            routes.push((
                self.delivery_exchange(),
                delivered_pattern(Destination::Event(event)),
            ));
        }
        routes
    }

    fn dlq_arguments(&self) -> FieldTable {
        let mut args = self.plain_queue_arguments();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
            );
        }
        self.add_group_size(&mut args);
        args
    }

    fn add_group_size(&self, args: &mut FieldTable) {
        if let (QueueType::Quorum, Some(size)) = (self.queue_type, self.quorum_group_size) {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(i64::from(size)),
            );
        }
    }

    fn plain_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text(self.queue_type.as_str()));
        args
    }

    /// Without both of these a quorum queue dead-letters at most once, and may lose a message on
    /// the way; classic queues have no safe mode.
    fn add_safe_dead_lettering(&self, args: &mut FieldTable) {
        if self.queue_type == QueueType::Quorum {
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
    }

    /// The task queue's arguments: its type, and where the broker sends a message it gives up on
    /// (the dead-letter queue, through the default exchange).
    fn task_queue_arguments(&self, dlq: &str) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text(self.queue_type.as_str()));
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(dlq));
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(self.delivery_limit),
            );
        }
        self.add_safe_dead_lettering(&mut args);
        self.add_group_size(&mut args);
        args
    }
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    arguments: FieldTable,
) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            arguments,
        )
        .await
}

/// The destination words of a delayed route's routing key (`task.{task}` or `event.{event}`),
/// without the delay bits: what a delayed message is for, in a bounded set of values (the raw key
/// has one value per delay in seconds). `None` when `routing_key` is not a delayed route's.
pub fn delayed_destination(routing_key: &str) -> Option<&str> {
    let mut rest = routing_key;
    for _ in 0..DELAY_LEVELS {
        rest = rest
            .strip_prefix("0.")
            .or_else(|| rest.strip_prefix("1."))?;
    }
    Some(rest)
}

/// The headers-exchange binding of a lane: exactly its `warren-priority` value.
fn lane_binding(priority: Priority) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-match".into(), text("all"));
    args.insert(
        crate::contract::header::PRIORITY.into(),
        text(priority.as_str()),
    );
    args
}

/// The routing-key words naming a destination.
fn destination_words(destination: Destination<'_>) -> String {
    match destination {
        Destination::Task(task) => format!("task.{task}"),
        Destination::Event(event) => format!("event.{event}"),
    }
}

/// Matches keys whose bit for `level` is `bit`, whatever the other bits and the destination.
fn bit_pattern(level: u32, bit: char) -> String {
    let mut pattern = String::new();
    for l in (0..DELAY_LEVELS).rev() {
        pattern.push(if l == level { bit } else { '*' });
        pattern.push('.');
    }
    pattern.push('#');
    pattern
}

/// Matches a delayed message for `destination`, whatever its delay bits.
fn delivered_pattern(destination: Destination<'_>) -> String {
    let mut pattern = "*.".repeat(DELAY_LEVELS as usize);
    pattern.push_str(&destination_words(destination));
    pattern
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// The delay levels one process has declared. Levels are declared when a delay first needs them
/// (a 30 s retry needs levels 0 to 4), so a namespace that never waits long keeps few queues.
#[derive(Debug, Default)]
pub struct DelayLevels {
    /// How many levels, from 0 up, are known to exist.
    declared: tokio::sync::Mutex<u32>,
}

impl DelayLevels {
    /// Makes sure every level a message routed to `exchange` (a delay exchange of `topology`)
    /// passes through exists, and the delivery exchange below them.
    pub async fn ensure(
        &self,
        topology: &Topology,
        channel: &Channel,
        exchange: &str,
    ) -> lapin::Result<()> {
        let Some(level) = exchange
            .rsplit('.')
            .next()
            .and_then(|l| l.parse::<u32>().ok())
        else {
            return Ok(());
        };
        let mut declared = self.declared.lock().await;
        if *declared > level {
            return Ok(());
        }
        if *declared == 0 {
            topology.declare_delivery(channel).await?;
        }
        for l in *declared..=level {
            topology.declare_delay_level(channel, l).await?;
        }
        *declared = level + 1;
        Ok(())
    }
}

/// Depth and consumers of a queue, read with a passive declaration (no management plugin needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery.
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// Reads a queue's depth and consumer count; `Ok(None)` if the queue does not exist.
///
/// A passive declaration of a missing queue closes the channel, so pass a channel you can lose.
pub async fn inspect_queue(channel: &Channel, queue: &str) -> lapin::Result<Option<QueueStats>> {
    match channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => Ok(Some(QueueStats {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        })),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Depths of `queues`, `None` for one that does not exist, on channels of `connection`: one
/// channel for them all, and a new one after each missing queue (whose passive declaration
/// closed the channel).
pub async fn inspect_queues(
    connection: &lapin::Connection,
    queues: &[String],
) -> lapin::Result<Vec<Option<QueueStats>>> {
    let mut stats = Vec::with_capacity(queues.len());
    let mut channel = connection.create_channel().await?;
    for queue in queues {
        if !channel.status().connected() {
            channel = connection.create_channel().await?;
        }
        stats.push(inspect_queue(&channel, queue).await?);
    }
    if channel.status().connected() {
        crate::amqp::close_channel(&channel, "inspected").await;
    }
    Ok(stats)
}

/// Did the broker refuse a declaration because the queue exists with other arguments?
pub fn is_inequivalent(error: &lapin::Error) -> bool {
    error.to_string().contains("PRECONDITION_FAILED")
}

/// Did the broker answer 404 NOT_FOUND?
pub fn is_not_found(error: &lapin::Error) -> bool {
    error.to_string().contains("NOT_FOUND")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_and_per_task() {
        let t = Topology::new("warren", QueueType::Quorum);
        assert_eq!(t.events_exchange(), "warren.events");
        assert_eq!(t.task_queue("video.process"), "warren.task.video.process");
        assert_eq!(
            t.dead_letter_queue("video.process"),
            "warren.dlq.video.process"
        );
    }

    #[test]
    fn a_group_size_goes_on_task_and_dead_letter_queues_only() {
        let key = "x-quorum-initial-group-size";
        let plain = Topology::new("w", QueueType::Quorum);
        assert!(
            !plain
                .task_queue_arguments("w.dlq.a")
                .inner()
                .contains_key(key)
        );
        let sized = plain.clone().with_quorum_group_size(Some(3));
        assert!(
            sized
                .task_queue_arguments("w.dlq.a")
                .inner()
                .contains_key(key)
        );
        assert!(sized.dlq_arguments().inner().contains_key(key));
        assert!(!sized.plain_queue_arguments().inner().contains_key(key));
        let classic = Topology::new("w", QueueType::Classic).with_quorum_group_size(Some(3));
        assert!(
            !classic
                .task_queue_arguments("w.dlq.a")
                .inner()
                .contains_key(key)
        );
    }

    #[test]
    fn quorum_task_queues_get_a_poison_limit_and_safe_dead_lettering() {
        let t = Topology::new("w", QueueType::Quorum);
        let args = t.task_queue_arguments("w.dlq.a");
        let keys: Vec<_> = args.inner().keys().map(|k| k.as_str().to_owned()).collect();
        for key in [
            "x-queue-type",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-delivery-limit",
            "x-dead-letter-strategy",
            "x-overflow",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key} missing");
        }
        let classic = Topology::new("w", QueueType::Classic).task_queue_arguments("w.dlq.a");
        assert!(!classic.contains_key("x-delivery-limit"));
    }

    /// Matches a topic routing key against a binding pattern (`*` one word, `#` zero or more).
    fn topic_match(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.first(), key.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                topic_match(&pattern[1..], key)
                    || (!key.is_empty() && topic_match(pattern, &key[1..]))
            }
            (Some(&"*"), Some(_)) => topic_match(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k => topic_match(&pattern[1..], &key[1..]),
            _ => false,
        }
    }

    fn matches(pattern: &str, key: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let k: Vec<&str> = key.split('.').collect();
        topic_match(&p, &k)
    }

    /// Follows a delayed message through the cascade as the broker would, returning the total
    /// time spent in delay queues and whether it reached the destination's binding.
    fn walk(t: &Topology, delay_s: u64, destination: Destination<'_>) -> (u64, bool) {
        let (exchange, key) = t
            .delayed_route(Duration::from_secs(delay_s), destination)
            .unwrap();
        let mut level: u32 = exchange.rsplit('.').next().unwrap().parse().unwrap();
        let mut waited = 0;
        loop {
            let in_queue = matches(&bit_pattern(level, '1'), &key);
            let passes = matches(&bit_pattern(level, '0'), &key);
            assert!(in_queue != passes, "exactly one route at level {level}");
            if in_queue {
                waited += 1 << level;
            }
            if level == 0 {
                break;
            }
            level -= 1;
        }
        (waited, matches(&delivered_pattern(destination), &key))
    }

    #[test]
    fn a_delay_spends_exactly_its_seconds_in_the_cascade_and_reaches_its_destination() {
        let t = Topology::new("w", QueueType::Quorum);
        for delay in [1, 2, 3, 5, 10, 600, 86_400, 7 * 86_400, MAX_DELAY_SECONDS] {
            assert_eq!(
                walk(&t, delay, Destination::Task("video.process")),
                (delay, true),
                "{delay}"
            );
        }
        assert_eq!(walk(&t, 37, Destination::Event("player.dump")), (37, true));
    }

    #[test]
    fn a_delay_starts_at_its_highest_bit_and_sub_second_delays_are_not_delayed() {
        let t = Topology::new("w", QueueType::Quorum);
        let (exchange, key) = t
            .delayed_route(Duration::from_secs(5), Destination::Task("a"))
            .unwrap();
        assert_eq!(exchange, "w.delay.2");
        assert!(key.ends_with("1.0.1.task.a"), "{key}");
        assert_eq!(key.split('.').count(), 28 + 2);
        assert!(
            t.delayed_route(Duration::from_millis(400), Destination::Task("a"))
                .is_none()
        );
        assert!(
            t.delayed_route(Duration::from_secs(u64::MAX / 2), Destination::Task("a"))
                .is_some()
        );
    }

    #[test]
    fn a_delayed_route_names_its_destination_whatever_the_delay() {
        let t = Topology::new("w", QueueType::Quorum);
        for seconds in [1, 5, 30, 3600, MAX_DELAY_SECONDS] {
            let (_, key) = t
                .delayed_route(Duration::from_secs(seconds), Destination::Task("a.b"))
                .unwrap();
            assert_eq!(delayed_destination(&key), Some("task.a.b"), "{key}");
        }
        assert_eq!(delayed_destination("player.dump"), None);
        assert_eq!(delayed_destination("w.dlq.a"), None);
        assert_eq!(delayed_destination("1.0.task.a"), None);
    }

    #[test]
    fn delivered_patterns_do_not_confuse_tasks_with_dotted_names() {
        let t = Topology::new("w", QueueType::Quorum);
        let (_, key) = t
            .delayed_route(
                Duration::from_secs(1),
                Destination::Task("x.task.video.process"),
            )
            .unwrap();
        assert!(!matches(
            &delivered_pattern(Destination::Task("video.process")),
            &key
        ));
        assert!(matches(
            &delivered_pattern(Destination::Task("x.task.video.process")),
            &key
        ));
    }

    #[test]
    fn a_copy_sent_back_to_a_task_ends_where_a_delay_for_it_ends() {
        let t = Topology::new("w", QueueType::Quorum);
        let (exchange, key) = t.task_route("video.process");
        assert_eq!(exchange, t.delivery_exchange());
        assert!(matches(
            &delivered_pattern(Destination::Task("video.process")),
            &key
        ));
        assert!(!matches(
            &delivered_pattern(Destination::Task("video")),
            &key
        ));
        assert_eq!(delayed_destination(&key), Some("task.video.process"));
    }

    #[test]
    fn lane_queues_never_take_another_tasks_name() {
        let t = Topology::new("w", QueueType::Quorum);
        assert_eq!(t.lane_queue("a", Priority::Normal), t.task_queue("a"));
        assert_eq!(t.lane_queue("a", Priority::High), "w.task-high.a");
        let queues = t.all_queues(["a", "a.high", "a.low", "high.a"]);
        let unique: std::collections::BTreeSet<_> = queues.iter().collect();
        assert_eq!(unique.len(), queues.len(), "{queues:?}");
        assert_ne!(t.lanes_exchange("a-normal.b"), t.normal_lane_exchange("b"));
    }

    #[test]
    fn lane_bindings_match_the_exact_header_value() {
        let binding = lane_binding(Priority::High);
        assert_eq!(binding.inner().get("x-match"), Some(&text("all")));
        assert_eq!(
            binding.inner().get(crate::contract::header::PRIORITY),
            Some(&text("high"))
        );
    }

    #[test]
    fn queue_types_parse() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("stream".parse::<QueueType>().is_err());
    }

    #[test]
    fn names_longer_than_amqp_allows_are_found_before_the_library_panics_on_them() {
        let t = Topology::new("warren", QueueType::Quorum);
        let events = vec!["video.process".to_owned()];
        assert!(
            t.check_names([("video.process", events.as_slice())])
                .is_ok()
        );
        let long_task = "t".repeat(250);
        assert!(
            t.check_names([(long_task.as_str(), events.as_slice())])
                .is_err()
        );
        let long_event = vec!["e".repeat(200)];
        let err = t.check_names([("a", long_event.as_slice())]).unwrap_err();
        assert!(err.to_string().contains("AMQP allows at most 255"), "{err}");
        let long_namespace = Topology::new("n".repeat(250), QueueType::Quorum);
        assert!(long_namespace.check_names([]).is_err());
    }
}
