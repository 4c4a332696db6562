//! Bad input gets a clear reason on the dead-letter queue, and nothing else breaks: the worker
//! keeps consuming the messages behind it.

use lapin::BasicProperties;
use lapin::message::BasicGetMessage;
use serde_json::json;
use warren_producer::{PublishOptions, Publisher};
use warren_shared::contract::{self, header};
use warren_tests::TestEnv;
use warren_worker::demo::{self, player};

fn text_header(letter: &BasicGetMessage, name: &'static str) -> Option<String> {
    contract::string_header(letter.delivery.properties.headers().as_ref(), name).unwrap()
}

fn reason(letter: &BasicGetMessage) -> (String, String) {
    (
        text_header(letter, header::DEAD_REASON).unwrap_or_default(),
        text_header(letter, header::DEAD_MESSAGE).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_invalid_oversize_and_misrouted_messages_are_dead_lettered_and_consuming_goes_on()
{
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.max_message_bytes = 4096;
    let worker = env.start_worker_with(config, demo::registry()).await;
    let publisher = Publisher::connect(&env.amqp_url, "test-raw").await.unwrap();
    let exchange = env.topology().events_exchange();
    let raw = |id: &str| {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
    };

    publisher
        .send(
            &exchange,
            player::TASK,
            b"{\"playerId\": ",
            raw("broken-json"),
        )
        .await
        .unwrap();
    publisher
        .send(
            &exchange,
            player::TASK,
            br#"{"playerId": 42}"#,
            raw("wrong-type"),
        )
        .await
        .unwrap();
    let big = format!(r#"{{"playerId": "{}"}}"#, "x".repeat(8192));
    publisher
        .send(&exchange, player::TASK, big.as_bytes(), raw("too-big"))
        .await
        .unwrap();
    // Straight into the task queue under a routing key that is not one of its events.
    publisher
        .send(
            "",
            &env.topology().task_queue(player::TASK),
            br#"{"playerId": "p"}"#,
            raw("misrouted"),
        )
        .await
        .unwrap();
    let good = env
        .producer()
        .await
        .publish(
            player::TASK,
            &json!({ "playerId": "still-fine" }),
            PublishOptions::default(),
        )
        .await
        .unwrap();

    assert_eq!(
        env.wait_finished(&good.message_id).await.summary.status,
        "succeeded"
    );
    let letters = env.wait_dead_letters(player::TASK, 4).await;
    let by_id = |id: &str| {
        letters
            .iter()
            .find(|l| {
                l.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str())
                    == Some(id)
            })
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };

    let (code, message) = reason(by_id("broken-json"));
    assert_eq!(code, "malformed_message");
    assert!(message.starts_with("body is not valid JSON"), "{message}");
    assert_eq!(by_id("broken-json").delivery.data, b"{\"playerId\": ");

    let (code, message) = reason(by_id("wrong-type"));
    assert_eq!(code, "invalid_input");
    assert!(
        message.contains("playerId") || message.contains("invalid type"),
        "{message}"
    );

    let (code, message) = reason(by_id("too-big"));
    assert_eq!(code, "message_too_large");
    assert!(
        message.contains("exceeds the limit of 4096 bytes"),
        "{message}"
    );

    let (code, message) = reason(by_id("misrouted"));
    assert_eq!(code, "unknown_event");
    assert!(message.contains("does not handle event"), "{message}");

    let letter = by_id("wrong-type");
    assert_eq!(
        text_header(letter, header::DEAD_TASK).as_deref(),
        Some(player::TASK)
    );
    assert_eq!(
        text_header(letter, header::DEAD_ROUTING_KEY).as_deref(),
        Some(player::TASK)
    );
    assert_eq!(
        text_header(letter, header::DEAD_EXCHANGE),
        Some(exchange.clone())
    );

    // The schema-invalid message has a run, recorded dead with its reason; the others have none.
    let runs = env.runs_of("wrong-type").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].summary.status, "dead");
    assert_eq!(runs[0].summary.error_code.as_deref(), Some("invalid_input"));
    assert_eq!(runs[0].transitions.len(), 1);
    for id in ["broken-json", "too-big", "misrouted"] {
        assert!(env.runs_of(id).await.is_empty(), "{id} should have no run");
    }
    worker.shutdown().await.unwrap();
}

/// A CloudEvents 1.0 structured event runs like a plain one, its `id` being the message id.
#[tokio::test(flavor = "multi_thread")]
async fn a_cloudevents_structured_message_runs() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let publisher = Publisher::connect(&env.amqp_url, "test-ce").await.unwrap();
    let event = json!({
        "specversion": "1.0",
        "type": player::TASK,
        "source": "/tests/cloudevents",
        "id": "ce-0001",
        "time": "2026-11-23T10:00:00Z",
        "datacontenttype": "application/json",
        "data": { "playerId": "ce-player" }
    });
    publisher
        .send(
            &env.topology().events_exchange(),
            player::TASK,
            event.to_string().as_bytes(),
            BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        )
        .await
        .unwrap();
    let run = env.wait_finished("ce-0001").await;
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.input, Some(json!({ "playerId": "ce-player" })));
    assert_eq!(
        run.published_at.map(contract::format_time).as_deref(),
        Some("2026-11-23T10:00:00.000Z")
    );
    worker.shutdown().await.unwrap();
}
