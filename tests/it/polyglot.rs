//! A service in another language publishes by following docs/protocol.md alone.

use std::process::Command;
use warren_tests::{TestEnv, video_payload};
use warren_worker::demo::{self, video};

fn python() -> String {
    std::env::var("WARREN_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Python's pika publishes a `video.process` event with a message id and Warren's headers; the
/// run succeeds and carries the tenant and idempotency key the headers named.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_pika_publisher_triggers_a_run() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/publish_pika.py");
    let payload = video_payload(serde_json::json!({}));
    let output = Command::new(python())
        .arg(script)
        .args([&env.amqp_url, &env.namespace, video::TASK, "from-python-1"])
        .arg(payload.to_string())
        .output()
        .expect("python runs (scripts/test.sh sets WARREN_TEST_PYTHON to a venv with pika)");
    assert!(
        output.status.success(),
        "pika publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = env.wait_finished("from-python-1").await;
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.summary.tenant.as_deref(), Some("python-tenant"));
    assert_eq!(run.idempotency_key.as_deref(), Some("py-from-python-1"));
    assert!(run.published_at.is_some());
    assert_eq!(run.input.as_ref(), Some(&payload));
    worker.shutdown().await.unwrap();
}
