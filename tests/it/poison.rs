//! A message that kills the worker process on every delivery is dead-lettered by the broker
//! after a bounded number of deliveries, and the fleet goes on.

use serde_json::json;
use std::process::Command;
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_tests::{TestEnv, TestWorker};
use warren_worker::dlq::DeadLetter;

fn start_worker(env: &TestEnv) -> TestWorker {
    env.spawn_test_worker(
        env!("CARGO_BIN_EXE_warren-test-worker"),
        "poison-worker",
        &["--delivery-limit", "3", "--grace-period", "2s"],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_stops_being_redelivered() {
    let env = TestEnv::new().await;
    let mut worker = start_worker(&env);
    // Wait until the worker has declared its queues, then publish the pill.
    let producer = env.producer().await;
    let pill = PublishOptions {
        message_id: Some("pill".into()),
        ..PublishOptions::default()
    };
    warren_tests::publish_when_declared(&producer, "poison.pill", &json!({ "crash": true }), pill)
        .await;

    // Each delivery kills the worker; a supervisor restarts it, until the broker gives up.
    let mut crashes = 0;
    let letters = loop {
        let letters = env.take_dead_letters("poison.pill").await;
        if !letters.is_empty() {
            break letters;
        }
        if let Ok(Some(_)) = worker.try_wait() {
            crashes += 1;
            assert!(crashes <= 6, "still redelivered after {crashes} crashes");
            worker = start_worker(&env);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        crashes >= 2,
        "the pill crashed the worker only {crashes} time(s)"
    );
    let letter = DeadLetter::from_message(&letters[0]);
    assert_eq!(letter.reason, "delivery_limit", "{letter:?}");
    assert_eq!(letter.message_id, "pill");
    assert_eq!(letter.event, "poison.pill");
    assert!(
        letter.message.contains("probably crashes the worker"),
        "{letter:?}"
    );

    // The fleet goes on: a harmless message is processed by a fresh worker.
    if let Ok(Some(_)) = worker.try_wait() {
        worker = start_worker(&env);
    }
    producer
        .publish(
            "poison.pill",
            &json!({ "crash": false }),
            PublishOptions {
                message_id: Some("harmless".into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        env.wait_finished("harmless").await.summary.status,
        "succeeded"
    );
    let _ = Command::new("kill").arg(worker.id().to_string()).status();
    let _ = worker.wait();
}
