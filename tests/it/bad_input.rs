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

/// Messages that decode but that Postgres could not store (a NUL in a string or a header, nesting
/// deeper than its stack, a number beyond `numeric`, a key too long for an index), and messages
/// that break the contract in quieter ways (an array for a body, a gzip body, a CloudEvents id
/// over 255 bytes): each is dead-lettered once, at once, with a precise reason, and the good
/// messages published among them all succeed.
#[tokio::test(flavor = "multi_thread")]
async fn input_postgres_cannot_store_is_dead_lettered_once_and_disturbs_no_other_run() {
    use lapin::types::{AMQPValue, FieldTable};
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let publisher = Publisher::connect(&env.amqp_url, "test-unstorable")
        .await
        .unwrap();
    let exchange = env.topology().events_exchange();
    let props = |id: &str, headers: &[(&str, &[u8])]| {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert((*name).into(), AMQPValue::LongString(value.to_vec().into()));
        }
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
            .with_headers(table)
    };
    let good = br#"{"playerId": "p"}"#.to_vec();
    let deep = format!(
        r#"{{"playerId": "p", "x": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let long_key = "k".repeat(3000);
    let ce_id = "c".repeat(300);
    let cloudevent = format!(
        r#"{{"specversion":"1.0","type":"{}","source":"/t","id":"{ce_id}","data":{{"playerId":"p"}}}}"#,
        player::TASK
    );
    let bad: Vec<(&str, Vec<u8>, BasicProperties, &str)> = vec![
        (
            "nul-string",
            br#"{"playerId": "a\u0000b"}"#.to_vec(),
            props("nul-string", &[]),
            "u0000",
        ),
        (
            "nul-tenant",
            good.clone(),
            props("nul-tenant", &[(header::TENANT, b"ac\0me")]),
            "NUL",
        ),
        (
            "nul-key",
            good.clone(),
            props("nul-key", &[(header::IDEMPOTENCY_KEY, b"k\0")]),
            "NUL",
        ),
        ("deep", deep.into_bytes(), props("deep", &[]), "nest deeper"),
        (
            "long-key",
            good.clone(),
            props(
                "long-key",
                &[(header::IDEMPOTENCY_KEY, long_key.as_bytes())],
            ),
            "3000 bytes",
        ),
        (
            "huge-number",
            br#"{"playerId": "p", "n": 1e999999}"#.to_vec(),
            props("huge-number", &[]),
            "exponent",
        ),
        (
            "array",
            br#"["p-arr"]"#.to_vec(),
            props("array", &[]),
            "must be a JSON object",
        ),
        (
            "gzip",
            good.clone(),
            props("gzip", &[]).with_content_encoding("gzip".into()),
            "content encoding",
        ),
        (
            "long-ce-id",
            cloudevent.into_bytes(),
            BasicProperties::default()
                .with_message_id("long-ce-id".into())
                .with_content_type("application/cloudevents+json".into()),
            "300 bytes",
        ),
    ];
    for (i, (id, body, properties, _)) in bad.iter().enumerate() {
        publisher
            .send(&exchange, player::TASK, body, properties.clone())
            .await
            .unwrap();
        for n in 0..2 {
            let good_id = format!("good-{i}-{n}");
            publisher
                .send(&exchange, player::TASK, &good, props(&good_id, &[]))
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    for i in 0..bad.len() {
        for n in 0..2 {
            let run = env.wait_finished(&format!("good-{i}-{n}")).await;
            assert_eq!(run.summary.status, "succeeded");
            assert_eq!(run.summary.attempt, 1, "its batch was never rolled back");
        }
    }
    let letters = env.wait_dead_letters(player::TASK, bad.len()).await;
    assert_eq!(letters.len(), bad.len());
    for (id, _, _, expected) in &bad {
        let letter = letters
            .iter()
            .find(|l| {
                l.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str())
                    == Some(*id)
            })
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        let (code, message) = reason(letter);
        assert_eq!(code, "malformed_message", "{id}: {message}");
        assert!(message.contains(expected), "{id}: {message}");
        assert!(env.runs_of(id).await.is_empty(), "{id} has no run");
    }
    // Dead-lettered once: nothing comes back through a requeue loop.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(env.take_dead_letters(player::TASK).await.is_empty());
    publisher.close().await;
    worker.shutdown().await.unwrap();
}

/// A step whose output Postgres refuses (here a NUL in a string) fails for good, once: the run
/// is dead with `unstorable_output` and Postgres's reason, one dead letter, and no loop of
/// redeliveries repeating the step.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_output_postgres_refuses_fails_the_run_once_with_the_reason() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use warren_worker::{Registry, StepContext, StepOutcome, Task, step};
    let env = TestEnv::new().await;
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&executions);
    let task = Task::<serde_json::Value>::new("nul.output").step(step(
        "emit_nul",
        move |_ctx: StepContext<serde_json::Value>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(StepOutcome::next(json!({ "text": "a\u{0}b" })))
            }
        },
    ));
    let worker = env.start_worker(Registry::new().register(task)).await;
    let options = PublishOptions {
        message_id: Some("nul-output".into()),
        ..PublishOptions::default()
    };
    env.producer()
        .await
        .publish("nul.output", &json!({}), options)
        .await
        .unwrap();
    let run = env.wait_finished("nul-output").await;
    assert_eq!(run.summary.status, "dead");
    assert_eq!(run.summary.error_code.as_deref(), Some("unstorable_output"));
    let letters = env.wait_dead_letters("nul.output", 1).await;
    let (code, message) = reason(&letters[0]);
    assert_eq!(code, "unstorable_output");
    assert!(
        message.contains("SQLSTATE"),
        "Postgres's own reason: {message}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(executions.load(Ordering::SeqCst), 1, "the step ran once");
    assert!(env.take_dead_letters("nul.output").await.is_empty());
    worker.shutdown().await.unwrap();
}

/// Names that would not fit AMQP's 255-byte short strings (a long namespace, task or event)
/// are an error at start or at the command line, never a panic in the AMQP library.
#[tokio::test(flavor = "multi_thread")]
async fn names_too_long_for_amqp_are_an_error_not_a_panic() {
    use warren_worker::{Registry, StepContext, StepOutcome, Task, Worker, step};
    let env = TestEnv::new().await;
    let long_event = "e".repeat(230);
    let task = Task::<serde_json::Value>::new("short")
        .on(long_event.as_str())
        .step(step(
            "s",
            |_ctx: StepContext<serde_json::Value>| async move { Ok(StepOutcome::next(json!(1))) },
        ));
    let started = Worker::new(env.worker_config(), Registry::new().register(task))
        .start()
        .await;
    let error = started
        .err()
        .expect("a worker with a name too long for AMQP must not start");
    assert!(
        error.to_string().contains("AMQP allows at most 255"),
        "{error}"
    );

    let output = env
        .warren()
        .args(["dlq", "list", &"t".repeat(260)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "an error, not a panic");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AMQP allows at most 255"), "{stderr}");
}
