//! The ceiling: what the raw broker moves with no job system at all. One durable queue of the
//! same type, a publisher with pipelined confirms and a consumer with manual acks (coalesced as
//! Warren coalesces them, or one per message) and the same prefetch, running at once, on
//! connections of their own; the same message size. No Postgres, no decoding, no Warren. As fast as confirms allow, for the throughput ceiling; or at a fixed
//! rate, for the latency the broker itself adds (publish to delivery) at that rate.

use crate::measure::Percentiles;
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
use warren_shared::topology::QueueType;
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
}

/// Messages through the raw broker, publish to ack.
pub(crate) async fn measure(c: Ceiling<'_>) -> Result<BrokerRun> {
    let publisher = warren_shared::amqp::connect(c.url, "warren-bench ceiling publisher").await?;
    let consumer = warren_shared::amqp::connect(c.url, "warren-bench ceiling consumer").await?;
    let channel = publisher.create_channel().await?;
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

    let consuming = consumer.create_channel().await?;
    consuming
        .basic_qos(c.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = consuming
        .basic_consume(
            c.queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let expected = c.messages;
    // When each message was sent, in microseconds since `started`; its message id is its index.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..expected).map(|_| AtomicU64::new(0)).collect());
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

    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
    for (index, sent) in sent.iter().enumerate() {
        if let Some(rate) = c.rate {
            let due = started + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        sent.store(started.elapsed().as_micros() as u64, Ordering::Release);
        let confirm = channel
            .basic_publish(
                "".into(),
                c.queue.as_str().into(),
                BasicPublishOptions::default(),
                c.body,
                properties.clone().with_message_id(index.to_string().into()),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= CONFIRM_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            anyhow::ensure!(
                oldest.await?.is_ack(),
                "the broker nacked a ceiling publish"
            );
        }
    }
    for confirm in pending {
        anyhow::ensure!(
            confirm.await?.is_ack(),
            "the broker nacked a ceiling publish"
        );
    }
    let (finished, latencies) = tokio::time::timeout(Duration::from_secs(600), drain)
        .await
        .context("the ceiling consumer did not finish")???;
    let rate = c.messages as f64 / (finished - started).as_secs_f64();

    channel
        .queue_delete(c.queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    warren_shared::amqp::close(&consumer, "done").await;
    warren_shared::amqp::close(&publisher, "done").await;
    Ok(BrokerRun {
        rate,
        latency: Percentiles::of(latencies),
    })
}
