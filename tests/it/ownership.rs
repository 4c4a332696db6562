//! Run ownership in the store: every write an execution makes on a running run is fenced on
//! the process incarnation that owns it, in the one-write and the set-based forms alike, so a
//! replica that lost its run to a takeover records nothing more for it, and a replica id
//! started twice is two owners, never one.

use chrono::Utc;
use deadpool_postgres::Client;
use serde_json::json;
use uuid::Uuid;
use warren_shared::store::{
    self, AfterFailure, Change, Claim, Failure, NewRun, StepDone, StepEnd, StoreError,
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

/// Starts a process of replica `id`: registers a new incarnation, returns its owner name.
async fn start_process(client: &mut Client, id: &str) -> String {
    warren_tests::register_replica(client, id, "owned.job").await
}

fn step_one(run: Uuid, output: &serde_json::Value) -> StepDone<'_> {
    StepDone {
        run,
        step: "one",
        position: 0,
        output,
        started_at: Utc::now(),
        end: StepEnd::Continue,
    }
}

/// `worker` can record nothing for the run: a step's checkpoint (one-write and set-based
/// forms) and a failure are all refused. Each write is tried in a transaction of its own,
/// rolled back as the state writer rolls back a refused write.
async fn assert_can_record_nothing(client: &mut Client, run: Uuid, worker: &str) {
    let output = json!("one");
    let done = step_one(run, &output);
    let failure = Failure {
        code: "network",
        message: "late",
        step: Some(("one", 0)),
        step_started_at: None,
    };
    let tx = client.transaction().await.unwrap();
    assert!(
        is_conflict(store::complete_step(&tx, &done, &change(worker)).await),
        "{worker} recorded a step"
    );
    drop(tx);
    let tx = client.transaction().await.unwrap();
    assert!(
        is_conflict(store::complete_steps(&tx, &[(done.clone(), change(worker))]).await),
        "{worker} recorded a step in the set-based form"
    );
    drop(tx);
    let tx = client.transaction().await.unwrap();
    assert!(
        is_conflict(store::fail_run(&tx, run, AfterFailure::Dead, &failure, &change(worker)).await),
        "{worker} recorded a failure"
    );
    drop(tx);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_lost_its_run_to_a_takeover_can_record_nothing_more_for_it() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    let lost = start_process(&mut client, "lost").await;
    let owner = start_process(&mut client, "owner").await;
    let run = store::run_id("owned.job", "owned-1");
    let first = store::claim(&client, &new_run(run, &lost), None)
        .await
        .unwrap();
    assert!(matches!(first, Claim::Run { .. }), "{first:?}");
    // The fleet gives `lost` up (it stopped, or its lease lapsed), and `owner` takes over.
    store::stop_worker(&client, &lost).await.unwrap();
    let takeover = store::claim(&client, &new_run(run, &owner), None)
        .await
        .unwrap();
    assert!(matches!(takeover, Claim::Run { .. }), "{takeover:?}");

    assert_can_record_nothing(&mut client, run, &lost).await;

    let output = json!("one");
    let tx = client.transaction().await.unwrap();
    store::complete_steps(&tx, &[(step_one(run, &output), change(&owner))])
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
            .skip_while(|t| t.worker.as_deref() != Some(owner.as_str()))
            .all(|t| t.worker.as_deref() == Some(owner.as_str())),
        "{:?}",
        detail.transitions
    );
}

/// A process killed with its run in flight (no stop recorded, its heartbeat still fresh) and
/// restarted under the same id, as a container restarted in its pod is: the restart frees the
/// run, so a redelivery that reaches another replica takes it over at once instead of waiting
/// out the owner lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_restarted_under_the_same_id_frees_its_predecessors_runs_at_once() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    let killed = start_process(&mut client, "pod-0").await;
    let other = start_process(&mut client, "pod-1").await;
    let run = store::run_id("owned.job", "owned-1");
    let claimed = store::claim(&client, &new_run(run, &killed), None)
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Run { .. }), "{claimed:?}");

    let restarted = start_process(&mut client, "pod-0").await;
    assert_ne!(restarted, killed, "a restart is a new owner");
    assert!(
        restarted.starts_with("pod-0#") && killed.starts_with("pod-0#"),
        "owner names carry the replica id: {killed}, {restarted}"
    );
    let redelivered = store::claim(&client, &new_run(run, &other), None)
        .await
        .unwrap();
    assert!(
        matches!(redelivered, Claim::Run { .. }),
        "the run of the killed process is still owned: {redelivered:?}"
    );
    let listed = store::list_workers(&client, true).await.unwrap();
    let state = |owner: &str| {
        listed
            .iter()
            .find(|w| w.owner == owner)
            .map(|w| (w.id.clone(), w.state.clone()))
    };
    assert_eq!(state(&killed), Some(("pod-0".into(), "stopped".into())));
    assert_eq!(state(&restarted), Some(("pod-0".into(), "alive".into())));
}

/// Two live processes started with one replica id: the later one's start supersedes the
/// earlier one, and neither can record anything on a run the other owns. The earlier one's
/// heartbeat does not make it an owner again.
#[tokio::test(flavor = "multi_thread")]
async fn two_live_processes_with_one_id_cannot_both_record_a_run() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    let first = start_process(&mut client, "twin").await;
    let run = store::run_id("owned.job", "owned-1");
    let claimed = store::claim(&client, &new_run(run, &first), None)
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Run { .. }), "{claimed:?}");

    let second = start_process(&mut client, "twin").await;
    assert_can_record_nothing(&mut client, run, &second).await;

    // A copy of the message reaches the second process: it takes the run over, and the first
    // one's late writes are refused.
    let takeover = store::claim(&client, &new_run(run, &second), None)
        .await
        .unwrap();
    assert!(matches!(takeover, Claim::Run { .. }), "{takeover:?}");
    assert_can_record_nothing(&mut client, run, &first).await;
    assert!(
        !store::heartbeat(&client, &first, 1).await.unwrap(),
        "the superseded process heartbeated itself back to life"
    );
    assert!(store::heartbeat(&client, &second, 1).await.unwrap());

    let output = json!("one");
    let tx = client.transaction().await.unwrap();
    store::complete_step(&tx, &step_one(run, &output), &change(&second))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let steps = store::steps(&client, run).await.unwrap();
    assert_eq!(
        (steps.len(), steps[0].executions),
        (1, 1),
        "one step, recorded once"
    );
}

/// During a rolling upgrade: a run owned by a replica of the previous release (its row and the
/// run carry the plain id) is freed when the new release starts under that id, as a restart of
/// the same release would free it.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_start_supersedes_a_replica_of_the_release_before_incarnations() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO workers (id, host, pid, tasks, version) VALUES ('pod-0', 'h', 1, '{}', 'old')",
            &[],
        )
        .await
        .unwrap();
    let other = start_process(&mut client, "pod-1").await;
    let run = store::run_id("owned.job", "owned-1");
    let claimed = store::claim(&client, &new_run(run, "pod-0"), None)
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Run { .. }), "{claimed:?}");
    let busy = store::claim(&client, &new_run(run, &other), None)
        .await
        .unwrap();
    assert!(matches!(busy, Claim::Busy { .. }), "{busy:?}");

    start_process(&mut client, "pod-0").await;
    let takeover = store::claim(&client, &new_run(run, &other), None)
        .await
        .unwrap();
    assert!(matches!(takeover, Claim::Run { .. }), "{takeover:?}");
}
