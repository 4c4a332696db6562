//! Acks coalesced into `multiple` acks settle exactly what was settled, on the real broker.

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use std::collections::BTreeSet;
use std::time::Duration;
use warren_tests::TestEnv;
use warren_worker::settle::Settler;

const MESSAGES: u16 = 100;
const REQUEUED: usize = 10;
const RUNNING: usize = 50;

/// A hundred deliveries settled out of order, one requeued and one still running: every other
/// one is acknowledged, the requeued one comes back, and the running one is never swept up by
/// a `multiple` ack.
#[tokio::test(flavor = "multi_thread")]
async fn coalesced_acks_settle_exactly_the_settled_deliveries() {
    let env = TestEnv::new().await;
    let queue = format!("{}.settle", env.namespace);
    let connection = warren_shared::amqp::connect(&env.amqp_url, "settle test")
        .await
        .unwrap();
    publish(&connection, &queue).await;

    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(MESSAGES, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "settle-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (settler, settling) = Settler::start(channel.clone(), "settle test");
    let mut pending = Vec::new();
    for _ in 0..MESSAGES {
        let delivery = next(&mut consumer).await;
        pending.push(settler.delivered(delivery.delivery_tag));
    }
    let mut running = None;
    for (index, delivery) in pending.into_iter().enumerate().rev() {
        match index {
            REQUEUED => delivery.requeue(),
            RUNNING => running = Some(delivery),
            _ => delivery.ack(),
        }
    }

    // The requeued message comes back (to this consumer: its prefetch has room again).
    let again = next(&mut consumer).await;
    assert_eq!(id_of(&again.properties), REQUEUED);
    assert!(again.redelivered);
    // Whatever is held behind the running delivery goes out; then the channel closes with the
    // running one and the redelivered one unsettled, and the broker takes them back.
    settler.flush().await;
    // A quorum queue applies a channel's acks and its closing separately: acks sent just before
    // the channel closes can lose the race and their messages come back (a redelivery, which a
    // worker acks as a duplicate). Give them time to land before asserting on what is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    channel.close(200, "done".into()).await.unwrap();
    drop((running, settler, settling));

    // Only the two unsettled messages are left in the queue.
    let look = connection.create_channel().await.unwrap();
    let mut left = BTreeSet::new();
    while let Some(message) = look
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        left.insert(id_of(&message.delivery.properties));
    }
    assert_eq!(left, BTreeSet::from([REQUEUED, RUNNING]));
    let _ = look
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    warren_shared::amqp::close(&connection, "done").await;
}

async fn publish(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..MESSAGES {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_message_id(i.to_string().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
        .unwrap()
}

fn id_of(properties: &BasicProperties) -> usize {
    properties
        .message_id()
        .as_ref()
        .and_then(|id| id.as_str().parse().ok())
        .unwrap()
}
