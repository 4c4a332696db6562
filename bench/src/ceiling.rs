//! The ceiling: what the raw broker moves with no job system at all. One durable queue of the
//! same type, a publisher with pipelined confirms and a consumer with manual acks and the same
//! prefetch, running at once, on connections of their own; the same message size. No Postgres,
//! no decoding, no Warren.

use anyhow::{Context, Result};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use warren_shared::topology::QueueType;

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
}

/// Messages per second through the raw broker, publish to ack.
pub(crate) async fn measure(c: Ceiling<'_>) -> Result<f64> {
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
    let drain = tokio::spawn(async move {
        let mut seen = 0;
        while seen < expected {
            let delivery = match deliveries.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => anyhow::bail!("the ceiling consumer was cancelled"),
            };
            delivery.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        Ok(Instant::now())
    });

    let started = Instant::now();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
    for _ in 0..c.messages {
        let confirm = channel
            .basic_publish(
                "".into(),
                c.queue.as_str().into(),
                BasicPublishOptions::default(),
                c.body,
                properties.clone(),
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
    let finished = tokio::time::timeout(Duration::from_secs(600), drain)
        .await
        .context("the ceiling consumer did not finish")???;
    let rate = c.messages as f64 / (finished - started).as_secs_f64();

    channel
        .queue_delete(c.queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    warren_shared::amqp::close(&consumer, "done").await;
    warren_shared::amqp::close(&publisher, "done").await;
    Ok(rate)
}
