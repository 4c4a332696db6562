//! The ceiling: what the raw broker moves with no job system at all. One durable queue of the
//! same type, a publisher with pipelined confirms and a consumer with manual acks (coalesced as
//! Warren coalesces them, or one per message) and the same prefetch, running at once, on
//! connections of their own; the same message size. No Postgres, no decoding, no Warren. As fast
//! as confirms allow, for the throughput ceiling; or at a fixed rate, for the latency the broker
//! itself adds (publish to delivery) at that rate.
//!
//! The same measurement with Warren's own messages ([`Shape::Warren`]) tells the broker's share
//! of Warren's cost from Warren's own: the broker routes them through a topic exchange, parses
//! their headers and keeps a queue with dead-lettering arguments, which costs it more per
//! message than a bare message to a bare queue.

use crate::measure::{CpuSplit, MachineCpu, Percentiles};
use anyhow::{Context, Result};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use warren_producer::{PendingConfirm, Producer, PublishOptions};
use warren_shared::topology::{QueueType, Topology};
use warren_worker::settle::Settler;

/// Unconfirmed publishes allowed at once, in the ceiling's publisher and in the benchmark's
/// Warren producer alike.
pub(crate) const CONFIRM_WINDOW: usize = 1000;

pub(crate) struct Ceiling<'a> {
    pub(crate) url: &'a str,
    pub(crate) queue: String,
    pub(crate) queue_type: QueueType,
    pub(crate) messages: usize,
    pub(crate) body: &'a [u8],
    pub(crate) prefetch: u16,
    /// Publish at this many messages per second (open loop) instead of as fast as possible.
    pub(crate) rate: Option<f64>,
    pub(crate) acks: Acks,
    pub(crate) shape: Shape,
}

/// What the ceiling's messages look like, and the way they take to their queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A body with a message id, published to the default exchange straight into a queue that
    /// has only its type: the least a broker can be asked to do.
    Bare,
    /// Published by Warren's producer (its headers, the events topic exchange) into a queue
    /// declared by Warren's topology (its dead-lettering and delivery-limit arguments), and
    /// consumed without decoding, Postgres or any Warren logic.
    Warren,
}

/// The task and event of the [`Shape::Warren`] ceiling.
const SHAPED_TASK: &str = "bench.ceiling";

/// A publish whose confirm is still to come.
enum Confirm {
    Bare(lapin::PublisherConfirm),
    Warren(PendingConfirm),
}

impl Confirm {
    async fn wait(self) -> Result<()> {
        match self {
            Confirm::Bare(confirm) => anyhow::ensure!(
                confirm.await?.is_ack(),
                "the broker nacked a ceiling publish"
            ),
            Confirm::Warren(confirm) => confirm.wait().await?,
        }
        Ok(())
    }
}

/// Where the ceiling's publisher sends its messages.
enum Sender {
    Bare {
        channel: lapin::Channel,
        queue: String,
        properties: Box<BasicProperties>,
    },
    Warren(Producer),
}

impl Sender {
    async fn send(&self, index: usize, body: &[u8]) -> Result<Confirm> {
        let message_id = index.to_string();
        Ok(match self {
            Sender::Bare {
                channel,
                queue,
                properties,
            } => Confirm::Bare(
                channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        (**properties).clone().with_message_id(message_id.into()),
                    )
                    .await?,
            ),
            Sender::Warren(producer) => {
                let options = PublishOptions {
                    message_id: Some(message_id),
                    ..PublishOptions::default()
                };
                Confirm::Warren(producer.start_json(SHAPED_TASK, body, options).await?.1)
            }
        })
    }
}

/// How the ceiling's consumer acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acks {
    /// Consecutive acks coalesced into one frame, as Warren's replicas send them
    /// (`warren_worker::settle`): the ceiling no consumer on this broker can beat.
    Coalesced,
    /// One `basic.ack` per message, as the issue that asked for the benchmark defines the
    /// ceiling: a lower bar, reported for comparison.
    EachMessage,
}

/// What the raw broker did.
pub(crate) struct BrokerRun {
    /// Messages per second, first publish to last ack.
    pub(crate) rate: f64,
    /// Publish to delivery, in milliseconds.
    pub(crate) latency: Percentiles,
    /// Where the CPU went, per message ("this process" is the publisher and the consumer).
    pub(crate) cpu: CpuSplit,
}

/// Messages through the raw broker, publish to ack. Whatever happens, the measurement leaves
/// nothing on the broker: its queues and exchanges are deleted and its connections closed.
pub(crate) async fn measure(c: Ceiling<'_>) -> Result<BrokerRun> {
    let publisher = warren_shared::amqp::connect(c.url, "warren-bench ceiling publisher").await?;
    let consumer = match warren_shared::amqp::connect(c.url, "warren-bench ceiling consumer").await
    {
        Ok(consumer) => consumer,
        Err(e) => {
            warren_shared::amqp::close(&publisher, "done").await;
            return Err(e.into());
        }
    };
    let topology = Topology::new(c.queue.clone(), c.queue_type);
    let mut producer = None;
    let result = run(&c, &publisher, &consumer, &topology, &mut producer).await;
    if let Some(producer) = producer {
        producer.close().await;
    }
    if let Ok(channel) = publisher.create_channel().await {
        match c.shape {
            Shape::Bare => {
                let _ = channel
                    .queue_delete(c.queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            Shape::Warren => topology.delete_all(&channel, [SHAPED_TASK]).await,
        }
    }
    warren_shared::amqp::close(&consumer, "done").await;
    warren_shared::amqp::close(&publisher, "done").await;
    result
}

async fn run(
    c: &Ceiling<'_>,
    publisher: &lapin::Connection,
    consumer: &lapin::Connection,
    topology: &Topology,
    producer: &mut Option<Producer>,
) -> Result<BrokerRun> {
    let channel = publisher.create_channel().await?;
    let (sender, queue) = match c.shape {
        Shape::Bare => {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(c.queue_type.as_str().into()),
            );
            channel
                .queue_declare(
                    c.queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let sender = Sender::Bare {
                channel: channel.clone(),
                queue: c.queue.clone(),
                properties: Box::new(
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                ),
            };
            (sender, c.queue.clone())
        }
        Shape::Warren => {
            topology
                .declare_task(&channel, SHAPED_TASK, &[SHAPED_TASK.to_owned()], false)
                .await?;
            let connected =
                Producer::connect_named(c.url, topology.clone(), "warren-bench ceiling producer")
                    .await?;
            *producer = Some(connected.clone());
            (Sender::Warren(connected), topology.task_queue(SHAPED_TASK))
        }
    };

    let consuming = consumer.create_channel().await?;
    consuming
        .basic_qos(c.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = consuming
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let expected = c.messages;
    // When each message was sent, in microseconds since `started`; its message id is its index.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..expected).map(|_| AtomicU64::new(0)).collect());
    let cpu_before = MachineCpu::now();
    let started = Instant::now();
    let sent_at = Arc::clone(&sent);
    // Acks coalesced the way Warren's replicas coalesce theirs: the ceiling must be what no
    // consumer on this broker can beat.
    let settler = (c.acks == Acks::Coalesced).then(|| Settler::start(consuming.clone(), "ceiling"));
    let drain = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        while latencies.len() < expected {
            let delivery = match deliveries.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => anyhow::bail!("the ceiling consumer was cancelled"),
            };
            let now = started.elapsed().as_micros() as u64;
            let index: usize = delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|id| id.as_str().parse().ok())
                .context("a ceiling message without its index")?;
            let sent = sent_at.get(index).context("a ceiling index out of range")?;
            latencies.push(now.saturating_sub(sent.load(Ordering::Acquire)) as f64 / 1000.0);
            match &settler {
                Some((settler, _)) => settler.delivered(delivery.delivery_tag).ack(),
                None => {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
            }
        }
        if let Some((settler, settling)) = settler {
            drop(settler);
            settling.await?;
        }
        Ok((Instant::now(), latencies))
    });

    let mut pending: VecDeque<Confirm> = VecDeque::with_capacity(CONFIRM_WINDOW);
    for (index, sent) in sent.iter().enumerate() {
        if let Some(rate) = c.rate {
            let due = started + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        sent.store(started.elapsed().as_micros() as u64, Ordering::Release);
        pending.push_back(sender.send(index, c.body).await?);
        if pending.len() >= CONFIRM_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            oldest.wait().await?;
        }
    }
    for confirm in pending {
        confirm.wait().await?;
    }
    let (finished, latencies) = tokio::time::timeout(Duration::from_secs(600), drain)
        .await
        .context("the ceiling consumer did not finish")???;
    let rate = c.messages as f64 / (finished - started).as_secs_f64();
    let cpu = MachineCpu::now().since(&cpu_before, c.messages);

    Ok(BrokerRun {
        rate,
        latency: Percentiles::of(latencies),
        cpu,
    })
}
