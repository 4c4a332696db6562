//! The producer never loses a message silently.

use serde_json::json;
use warren_producer::{Producer, PublishError, PublishOptions};
use warren_tests::TestEnv;
use warren_worker::demo;

/// An event no task listens to is returned by the broker, and the producer reports it.
#[tokio::test(flavor = "multi_thread")]
async fn publishing_an_event_no_task_listens_to_is_an_error() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;
    let err = producer
        .publish("nobody.listens", &json!({}), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PublishError::Unroutable { routing_key, .. } if routing_key == "nobody.listens"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("no task listens to \"nobody.listens\"")
    );
    // A routable publish on the same producer still works.
    producer
        .publish(
            "player.dump",
            &json!({ "playerId": "p" }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    worker.shutdown().await.unwrap();
}

/// Invalid event names and unreachable brokers are errors, not panics.
#[tokio::test(flavor = "multi_thread")]
async fn bad_event_names_and_unreachable_brokers_are_errors() {
    let env = TestEnv::new().await;
    let producer = env.producer().await;
    let err = producer
        .publish("video.*", &json!({}), PublishOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::InvalidEvent(_)), "{err}");

    let unreachable =
        warren_producer::Producer::connect("amqp://guest:guest@127.0.0.1:1/%2f", env.topology())
            .await;
    assert!(matches!(unreachable, Err(PublishError::Broker(_))));
}

/// A producer whose connection the broker knows as `name`, after one successful publish.
async fn named_producer_that_published(env: &TestEnv, name: &str) -> Producer {
    let producer = Producer::connect_named(&env.amqp_url, env.topology(), name)
        .await
        .unwrap();
    producer
        .publish(
            "player.dump",
            &json!({ "playerId": "before" }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    producer
}

/// The broker dropping the producer's connection: the next publish reconnects and succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn the_producer_reconnects_after_losing_its_connection() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let name = format!("warren-producer {}", env.namespace);
    let producer = named_producer_that_published(&env, &name).await;
    warren_tests::close_broker_connections(&name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // The client learns of the close asynchronously; a publish racing it fails loudly, never
    // silently, and the next one reconnects.
    loop {
        match producer
            .publish(
                "player.dump",
                &json!({ "playerId": "after" }),
                PublishOptions::default(),
            )
            .await
        {
            Ok(_) => break,
            Err(PublishError::Broker(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish after reconnect failed: {e}"),
        }
    }
    let runs = env
        .wait_for_finished_runs(2, std::time::Duration::from_secs(10))
        .await;
    assert!(runs.len() >= 2);
    worker.shutdown().await.unwrap();
}

/// Closing a producer closes its connection on the broker (a benchmark or a short-lived script
/// leaves nothing behind); a publish afterwards opens a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_producer_leaves_no_connection_and_reconnects_to_publish() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let name = format!("warren-producer closing {}", env.namespace);
    let producer = named_producer_that_published(&env, &name).await;
    assert_eq!(warren_tests::broker_connections(&name).len(), 1);

    producer.close().await;
    assert!(
        warren_tests::broker_connections(&name).is_empty(),
        "the closed producer's connection is still open"
    );

    producer
        .publish(
            "player.dump",
            &json!({ "playerId": "after" }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(warren_tests::broker_connections(&name).len(), 1);
    let runs = env
        .wait_for_finished_runs(2, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(runs.len(), 2);
    worker.shutdown().await.unwrap();
}
