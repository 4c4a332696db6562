//! Several broker addresses in one URL (`amqp://…node-1…,amqp://…node-2…`): a replica and a
//! producer connect to a node that answers, whichever of the listed nodes do not; when none
//! answers, the command line says so in one line that shows no password.

use serde_json::{Value, json};
use warren_producer::{Producer, PublishOptions};
use warren_tests::{TestEnv, free_port};
use warren_worker::{Registry, StepContext, StepOutcome, Task, step};

/// A URL of this machine's broker, and two of nodes that are not there.
fn listing_dead_nodes(env: &TestEnv) -> String {
    let dead = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    format!(
        "{},{},{}",
        dead(free_port()),
        env.amqp_url,
        dead(free_port())
    )
}

/// Three replicas (three names, so three first choices) and a producer, each given a list in
/// which only one node answers: every job runs.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_and_producers_connect_to_whichever_listed_node_answers() {
    let env = TestEnv::new().await;
    let task = "nodes.job";
    let url = listing_dead_nodes(&env);
    let mut replicas = Vec::new();
    for i in 0..3 {
        let mut config = env.worker_config();
        config.amqp_url = url.clone();
        config.worker_id = format!("node-picker-{i}");
        let registry = Registry::new().register(
            Task::<Value>::new(task).step(step("one", |_ctx: StepContext<Value>| async move {
                Ok(StepOutcome::next(json!("done")))
            })),
        );
        replicas.push(env.start_worker_with(config, registry).await);
    }
    let producer = Producer::connect(&url, env.topology())
        .await
        .expect("the producer connects through the list");
    for n in 0..30 {
        let options = PublishOptions {
            message_id: Some(format!("listed-{n}")),
            ..PublishOptions::default()
        };
        producer
            .publish(task, &json!({ "n": n }), options)
            .await
            .unwrap();
    }
    for n in 0..30 {
        let run = env.wait_finished(&format!("listed-{n}")).await;
        assert_eq!(run.summary.status, "succeeded");
    }
    for replica in replicas {
        replica.shutdown().await.unwrap();
    }
}

/// No listed node answers: one line on standard error, a non-zero exit, and no password.
#[test]
fn when_no_listed_node_answers_the_command_line_says_so_in_one_line_without_passwords() {
    let url = format!(
        "amqp://app:first-secret@127.0.0.1:{}/%2f,amqp://app:second-secret@127.0.0.1:{}/%2f",
        free_port(),
        free_port()
    );
    let output = std::process::Command::new(warren_tests::warren_binary())
        .args(["publish", "nodes.job", "--data", "{}"])
        .env("WARREN_AMQP_URL", &url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("none of the 2 broker nodes answered"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("first-secret") && !stderr.contains("second-secret"),
        "{stderr}"
    );
}

/// A node that accepts the TCP connection and then says nothing (what a partitioned node looks
/// like from a client, or an overloaded one) is given up after a few seconds and the next node
/// is tried: a connection does not wait minutes for the operating system's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_swallows_the_handshake_is_passed_over_within_seconds() {
    let env = TestEnv::new().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket); // held open, never answered
        }
    });
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{silent_port}/%2f,{}",
        env.amqp_url
    );
    // A name whose first choice is the silent node (the first of the two).
    let name = (0..)
        .map(|i| format!("silent-probe-{i}"))
        .find(|name| warren_shared::amqp::first_node(name, 2) == 0)
        .unwrap();
    let started = std::time::Instant::now();
    let connection = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        warren_shared::amqp::connect(&url, &name),
    )
    .await
    .expect("connected within 30 s")
    .expect("the live node answers");
    let waited = started.elapsed();
    assert!(
        waited >= warren_shared::amqp::NODE_CONNECT_TIMEOUT,
        "the silent node was tried first: {waited:?}"
    );
    assert!(
        waited < warren_shared::amqp::NODE_CONNECT_TIMEOUT + std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    warren_shared::amqp::close(&connection, "done").await;
    held.abort();
}
