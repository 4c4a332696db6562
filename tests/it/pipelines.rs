//! The demo pipelines run end to end and leave the right trail in Postgres.

use serde_json::json;
use warren_producer::PublishOptions;
use warren_tests::{TestEnv, video_payload};
use warren_worker::demo::{self, player, video};

/// A video job moves through all seven stages, in order, each logged as a transition, and
/// succeeds with the last step's output.
#[tokio::test(flavor = "multi_thread")]
async fn video_process_reaches_every_stage_in_order() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;

    let payload = video_payload(json!({}));
    let published = producer
        .publish(video::TASK, &payload, PublishOptions::default())
        .await
        .unwrap();
    let run = env.wait_finished(&published.message_id).await;

    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.summary.stage.as_deref(), Some("DELIVERED"));
    let stages: Vec<_> = run
        .transitions
        .iter()
        .filter_map(|t| t.stage.as_deref())
        .collect();
    assert_eq!(stages, video::STAGES);
    let statuses: Vec<_> = run
        .transitions
        .iter()
        .map(|t| (t.from_status.as_deref(), t.to_status.as_str()))
        .collect();
    assert_eq!(statuses.first(), Some(&(None, "running")));
    assert_eq!(statuses.last(), Some(&(Some("running"), "succeeded")));
    // One transition per step; the last step's is the run's success.
    assert_eq!(statuses.len(), 1 + video::STAGES.len());
    assert_eq!(
        run.transitions.last().and_then(|t| t.step.as_deref()),
        run.steps.last().map(|s| s.step.as_str())
    );
    assert_eq!(run.steps.len(), 7);
    assert!(
        run.steps
            .iter()
            .all(|s| s.status == "succeeded" && s.executions == 1)
    );
    assert_eq!(
        run.output.as_ref().and_then(|o| o.get("job_run_id")),
        payload.get("job_run_id")
    );
    worker.shutdown().await.unwrap();
}

/// A low-quality transcript ends the run early as `halted` with the outcome NEEDS_USER_INPUT:
/// not an error, nothing dead-lettered, and the steps after it never run.
#[tokio::test(flavor = "multi_thread")]
async fn a_low_quality_transcript_halts_with_needs_user_input() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;

    let published = producer
        .publish(
            video::TASK,
            &video_payload(json!({ "transcript_quality": "low" })),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let run = env.wait_finished(&published.message_id).await;

    assert_eq!(run.summary.status, "halted");
    assert_eq!(
        run.summary.outcome.as_deref(),
        Some(video::NEEDS_USER_INPUT)
    );
    // The halting step did not reach its stage: the job stays where it was.
    assert_eq!(run.summary.stage.as_deref(), Some("INGESTED"));
    let steps: Vec<_> = run
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("validate", "succeeded"),
            ("ingest", "succeeded"),
            ("transcribe", "halted")
        ]
    );
    // The halting step's one transition ends the run and names no stage.
    let last = run.transitions.last().map(|t| {
        (
            t.to_status.as_str(),
            t.step.as_deref(),
            t.stage.as_deref(),
            t.reason.as_deref(),
        )
    });
    assert_eq!(
        last,
        Some((
            "halted",
            Some("transcribe"),
            None,
            Some(video::NEEDS_USER_INPUT)
        ))
    );
    assert!(env.take_dead_letters(video::TASK).await.is_empty());
    worker.shutdown().await.unwrap();
}

/// player.dump stores one result per activity; when the profile call fails, teams and matches
/// never run, the run is dead with the profile's error, and the message is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn player_dump_skips_teams_and_matches_when_the_profile_fails() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;

    let ok = producer
        .publish(
            player::TASK,
            &json!({ "playerId": "p-42" }),
            PublishOptions::default(),
        )
        .await
        .unwrap();
    let failing = producer
        .publish(
            player::TASK,
            &json!({ "playerId": player::MISSING_PLAYER }),
            PublishOptions::default(),
        )
        .await
        .unwrap();

    let run = env.wait_finished(&ok.message_id).await;
    assert_eq!(run.summary.status, "succeeded");
    let results: Vec<_> = run.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(results, ["profile", "teams", "matches"]);
    assert_eq!(
        run.steps[1].output.as_ref().unwrap()["teams"][0],
        "p-42-team-a"
    );

    let run = env.wait_finished(&failing.message_id).await;
    assert_eq!(run.summary.status, "dead");
    assert_eq!(run.summary.error_code.as_deref(), Some("not_found"));
    let steps: Vec<_> = run
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(steps, [("profile", "failed")]);
    let letters = env.wait_dead_letters(player::TASK, 1).await;
    assert_eq!(
        letters[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(failing.message_id.as_str())
    );
    worker.shutdown().await.unwrap();
}

/// Publishing the same message id twice (a producer retrying after a lost confirm) makes one
/// run, executed once.
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_message_makes_one_run() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;
    let options = PublishOptions {
        message_id: Some("duplicate-me".into()),
        ..PublishOptions::default()
    };
    for _ in 0..2 {
        producer
            .publish(player::TASK, &json!({ "playerId": "p-1" }), options.clone())
            .await
            .unwrap();
    }
    let run = env.wait_finished("duplicate-me").await;
    // Give the second copy time to be consumed and acknowledged as a duplicate.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let runs = env.runs_of("duplicate-me").await;
    assert_eq!(runs.len(), 1);
    assert!(run.steps.iter().all(|s| s.executions == 1));
    assert_eq!(runs[0].transitions.len(), run.transitions.len());
    worker.shutdown().await.unwrap();
}

/// Publishes with the same idempotency key make one run; a run that died does not hold its key,
/// so publishing again with it makes a new run.
#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_makes_one_run_unless_that_run_died() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let producer = env.producer().await;
    let keyed = |message: &str, key: &str| PublishOptions {
        message_id: Some(message.into()),
        idempotency_key: Some(key.into()),
        ..PublishOptions::default()
    };
    producer
        .publish(
            player::TASK,
            &json!({ "playerId": "p-1" }),
            keyed("first", "order-1"),
        )
        .await
        .unwrap();
    assert_eq!(env.wait_finished("first").await.summary.status, "succeeded");
    producer
        .publish(
            player::TASK,
            &json!({ "playerId": "p-1" }),
            keyed("second", "order-1"),
        )
        .await
        .unwrap();

    producer
        .publish(
            player::TASK,
            &json!({ "playerId": player::MISSING_PLAYER }),
            keyed("doomed", "order-2"),
        )
        .await
        .unwrap();
    assert_eq!(env.wait_finished("doomed").await.summary.status, "dead");
    producer
        .publish(
            player::TASK,
            &json!({ "playerId": "p-2" }),
            keyed("retried", "order-2"),
        )
        .await
        .unwrap();
    assert_eq!(
        env.wait_finished("retried").await.summary.status,
        "succeeded"
    );
    assert!(
        env.runs_of("second").await.is_empty(),
        "a second publish with a live key made a run"
    );
    worker.shutdown().await.unwrap();
}

/// Under load, the group commit records many runs per transaction with its set-based writes.
/// The trail each run leaves must be the one it leaves alone (one write per transaction): the
/// same transitions in the same order, the same checkpoints, the same ending.
#[tokio::test(flavor = "multi_thread")]
async fn runs_recorded_together_leave_the_trail_they_leave_alone() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.concurrency = Some(64);
    let worker = env.start_worker_with(config, demo::registry()).await;
    let producer = env.producer().await;
    let low = json!({ "transcript_quality": "low" });

    // The trails of a run that succeeds and one that halts, each recorded on its own.
    let mut alone = Vec::new();
    for (id, extra) in [("alone-ok", json!({})), ("alone-low", low.clone())] {
        let options = PublishOptions {
            message_id: Some(id.into()),
            ..PublishOptions::default()
        };
        producer
            .publish(video::TASK, &video_payload(extra), options)
            .await
            .unwrap();
        alone.push(trail(&env.wait_finished(id).await));
    }

    // 120 more at once, a quarter of them halting.
    let mut pending = Vec::new();
    for i in 0..120 {
        let extra = if i % 4 == 0 { low.clone() } else { json!({}) };
        let options = PublishOptions {
            message_id: Some(format!("together-{i}")),
            ..PublishOptions::default()
        };
        let body = serde_json::to_vec(&video_payload(extra)).unwrap();
        pending.push(
            producer
                .start_json(video::TASK, &body, options)
                .await
                .unwrap()
                .1,
        );
    }
    for confirm in pending {
        confirm.wait().await.unwrap();
    }
    env.wait_for_finished_runs(122, std::time::Duration::from_secs(60))
        .await;

    for i in 0..120 {
        let run = env.wait_finished(&format!("together-{i}")).await;
        let expected = &alone[usize::from(i % 4 == 0)];
        assert_eq!(&trail(&run), expected, "run together-{i}");
    }
    // And they were recorded together: fewer transactions wrote the checkpoints than there are.
    let client = env.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT s.xmin::text) FROM run_steps s JOIN runs r ON r.id = s.run_id
             WHERE r.message_id LIKE 'together-%'",
            &[],
        )
        .await
        .unwrap();
    let (checkpoints, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        transactions < checkpoints,
        "{checkpoints} checkpoints in {transactions} transactions: nothing was batched"
    );
    worker.shutdown().await.unwrap();
}

/// What a run leaves in Postgres, without times and ids: its status, outcome and stage, its
/// checkpoints, and its transitions in order.
fn trail(run: &warren_shared::store::RunDetail) -> serde_json::Value {
    json!({
        "status": run.summary.status,
        "outcome": run.summary.outcome,
        "stage": run.summary.stage,
        "steps": run.steps.iter().map(|s| (&s.step, &s.status, s.executions)).collect::<Vec<_>>(),
        "transitions": run
            .transitions
            .iter()
            .map(|t| json!([t.from_status, t.to_status, t.stage, t.step, t.attempt, t.reason]))
            .collect::<Vec<_>>(),
    })
}
