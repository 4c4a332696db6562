//! Identical replicas compete for one queue: each takes a share, every run is recorded once.

use std::collections::HashMap;
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_tests::TestEnv;
use warren_worker::demo::{self, player};

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_queue_and_every_run_is_recorded_once() {
    let env = TestEnv::new().await;
    let replica = |id: &str| {
        let mut config = env.worker_config();
        config.worker_id = id.into();
        config.concurrency = Some(4);
        config
    };
    // Started together on a fresh database: migrations and declarations must not collide.
    let (a, b) = tokio::join!(
        env.start_worker_with(replica("replica-a"), demo::registry()),
        env.start_worker_with(replica("replica-b"), demo::registry()),
    );

    let producer = env.producer().await;
    for i in 0..200 {
        producer
            .publish(
                player::TASK,
                &serde_json::json!({ "playerId": format!("p-{i}") }),
                PublishOptions {
                    message_id: Some(format!("msg-{i}")),
                    ..PublishOptions::default()
                },
            )
            .await
            .unwrap();
    }
    let runs = env
        .wait_for_finished_runs(200, Duration::from_secs(60))
        .await;
    assert_eq!(runs.len(), 200, "one run per message");
    assert!(runs.iter().all(|r| r.status == "succeeded"));

    let client = env.pool.get().await.unwrap();
    let rows = client
        // Owners are `{replica id}#{incarnation}`: count by replica.
        .query(
            "SELECT split_part(worker, '#', 1), count(*) FROM runs GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    let share: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        share.get("replica-a").copied().unwrap_or(0) > 0,
        "{share:?}"
    );
    assert!(
        share.get("replica-b").copied().unwrap_or(0) > 0,
        "{share:?}"
    );
    let executions: i64 = client
        .query_one("SELECT sum(executions)::bigint FROM run_steps", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        executions, 600,
        "each of the 3 steps of 200 runs executed exactly once"
    );
    let messages: i64 = client
        .query_one("SELECT count(DISTINCT message_id) FROM runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(messages, 200);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
