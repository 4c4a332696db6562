//! Run ownership in the store: every write an execution makes on a running run is fenced on
//! the replica that owns it, in the one-write and the set-based forms alike, so a replica that
//! lost its run to a takeover records nothing more for it.

use chrono::Utc;
use serde_json::json;
use uuid::Uuid;
use warren_shared::store::{
    self, AfterFailure, Change, Claim, Failure, NewRun, StepDone, StepEnd, StoreError, WorkerInfo,
};
use warren_tests::TestEnv;

fn new_run<'a>(id: Uuid, worker: &'a str) -> NewRun<'a> {
    NewRun {
        id,
        message_id: "owned-1",
        task: "owned.job",
        event: "owned.job",
        input: None,
        attempt: 1,
        idempotency_key: None,
        tenant: None,
        published_at: None,
        worker,
        wake: None,
        idempotency_window: std::time::Duration::from_secs(60),
    }
}

fn change(worker: &str) -> Change<'_> {
    Change {
        attempt: 1,
        worker,
        reason: "step one succeeded",
        step: Some("one"),
        stage: None,
    }
}

fn is_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict { .. }))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_lost_its_run_to_a_takeover_can_record_nothing_more_for_it() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    let tasks = ["owned.job".to_owned()];
    for id in ["lost", "owner"] {
        let info = WorkerInfo {
            id,
            host: "test",
            pid: 1,
            tasks: &tasks,
            version: "test",
        };
        store::register_worker(&client, &info).await.unwrap();
    }
    let run = store::run_id("owned.job", "owned-1");
    let first = store::claim(&client, &new_run(run, "lost")).await.unwrap();
    assert!(matches!(first, Claim::Run { .. }), "{first:?}");
    // The fleet gives `lost` up (it stopped, or its lease lapsed), and `owner` takes over.
    store::stop_worker(&client, "lost").await.unwrap();
    let takeover = store::claim(&client, &new_run(run, "owner")).await.unwrap();
    assert!(matches!(takeover, Claim::Run { .. }), "{takeover:?}");

    let output = json!("one");
    let done = StepDone {
        run,
        step: "one",
        position: 0,
        output: &output,
        started_at: Utc::now(),
        end: StepEnd::Continue,
    };
    let failure = Failure {
        code: "network",
        message: "late",
        step: Some(("one", 0)),
        step_started_at: None,
    };
    // Each refused write is tried in a transaction of its own, rolled back as the state writer
    // rolls back a refused write.
    let tx = client.transaction().await.unwrap();
    assert!(is_conflict(
        store::complete_step(&tx, &done, &change("lost")).await
    ));
    drop(tx);
    let tx = client.transaction().await.unwrap();
    assert!(is_conflict(
        store::complete_steps(&tx, &[(done.clone(), change("lost"))]).await
    ));
    drop(tx);
    let tx = client.transaction().await.unwrap();
    assert!(is_conflict(
        store::fail_run(&tx, run, AfterFailure::Dead, &failure, &change("lost")).await
    ));
    drop(tx);

    let tx = client.transaction().await.unwrap();
    store::complete_steps(&tx, &[(done.clone(), change("owner"))])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let steps = store::steps(&client, run).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].executions, 1);
    let detail = env.runs_of("owned-1").await.pop().unwrap();
    assert_eq!(detail.summary.status, "running");
    assert!(
        detail
            .transitions
            .iter()
            .skip_while(|t| t.worker.as_deref() != Some("owner"))
            .all(|t| t.worker.as_deref() == Some("owner")),
        "{:?}",
        detail.transitions
    );
}
