//! Runs that start runs: trigger-and-wait, fan-out and join with a limit, partial failure, the
//! wait's timeout, cancellation of a parent with running children, and retrying a run.

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;
use warren_producer::PublishOptions;
use warren_shared::store::cancel::{Cancelled, Retried};
use warren_tests::TestEnv;
use warren_worker::children::{ChildRun, Children};
use warren_worker::demo::{self, bulk, player};
use warren_worker::{Registry, StepContext, StepError, StepOutcome, Task, control, step};

type Ctx = StepContext<Value>;

/// `story.upper`: a child that transforms its input.
fn upper() -> Task<Value> {
    Task::new("story.upper").step(step("upper", |ctx: Ctx| async move {
        let text = ctx.input()["text"]
            .as_str()
            .unwrap_or_default()
            .to_uppercase();
        Ok(StepOutcome::next(json!({ "text": text })))
    }))
}

/// `story.slow`: a child that sleeps for `ms`, stopping early when its run is cancelled, and
/// counts the sleeps it finished.
fn slow(finished: Arc<AtomicUsize>) -> Task<Value> {
    Task::new("story.slow")
        .concurrency(50)
        .step(step("sleep", move |ctx: Ctx| {
            let finished = Arc::clone(&finished);
            async move {
                let ms = ctx.input()["ms"].as_u64().unwrap_or(100);
                let cancelled = ctx.cancelled();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = cancelled.cancelled() => {
                        return Err(StepError::retryable("stopped", "cancelled"));
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(StepOutcome::next(json!({ "slept": ms })))
            }
        }))
}

/// `story.chain`: triggers `story.upper` and waits, then triggers it again on the first
/// child's output and waits, then returns both.
fn chain() -> Task<Value> {
    Task::new("story.chain")
        .step(step("first", |ctx: Ctx| async move {
            let child = ChildRun::new("story.upper", &json!({ "text": ctx.input()["text"] }))?;
            Ok(StepOutcome::WaitForChildren(Children::one(child)))
        }))
        .step(step("second", |ctx: Ctx| async move {
            let first = ctx.child_result("first")?;
            let child = ChildRun::new(
                "story.upper",
                &json!({ "text": format!("{} again", first["text"].as_str().unwrap_or_default()) }),
            )?;
            Ok(StepOutcome::WaitForChildren(Children::one(child)))
        }))
        .step(step("done", |ctx: Ctx| async move {
            Ok(StepOutcome::next(json!({
                "first": ctx.child_result("first")?,
                "second": ctx.child_result("second")?,
            })))
        }))
}

/// `story.fan`: fans out to `story.slow` with the input's sleeps, limit and timeout.
fn fan() -> Task<Value> {
    Task::new("story.fan")
        .step(step("fan", |ctx: Ctx| async move {
            let sleeps = ctx.input()["sleeps"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut children =
                Children::each("story.slow", sleeps.iter().map(|ms| json!({ "ms": ms })))?;
            if let Some(limit) = ctx.input()["limit"].as_u64() {
                children = children.at_most(limit as u32);
            }
            if let Some(secs) = ctx.input()["timeout_s"].as_u64() {
                children = children.timeout(Duration::from_secs(secs));
            }
            Ok(StepOutcome::WaitForChildren(children))
        }))
        .step(step("report", |ctx: Ctx| async move {
            let joined = ctx.children("fan")?;
            Ok(StepOutcome::next(
                serde_json::to_value(joined).unwrap_or_default(),
            ))
        }))
}

fn registry(finished: Arc<AtomicUsize>) -> Registry {
    demo::registry()
        .register(upper())
        .register(slow(finished))
        .register(chain())
        .register(fan())
}

async fn publish(env: &TestEnv, event: &str, payload: Value) -> String {
    let producer = env.producer().await;
    producer
        .publish(event, &payload, PublishOptions::default())
        .await
        .unwrap()
        .message_id
}

/// Messages in the task's queue, ready or delivered and not yet acknowledged.
fn queue_messages(env: &TestEnv, task: &str) -> u64 {
    let queue = env.topology().task_queue(task);
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "messages", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queue {queue}"))
}

async fn status(env: &TestEnv, run: Uuid) -> String {
    let client = env.pool.get().await.unwrap();
    client
        .query_one("SELECT status FROM runs WHERE id = $1", &[&run])
        .await
        .unwrap()
        .get(0)
}

async fn wait_status(env: &TestEnv, run: Uuid, wanted: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = status(env, run).await;
        if now == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run} is {now}, not {wanted}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A step starts a child and waits for it, holding nothing; the child's output comes back as
/// the step's output, and a chain of two does it twice in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_triggers_a_child_and_waits_for_its_output() {
    let env = TestEnv::new().await;
    let worker = env
        .start_worker(registry(Arc::new(AtomicUsize::new(0))))
        .await;
    let message = publish(&env, "story.chain", json!({ "text": "once upon a time" })).await;
    let run = env.wait_finished(&message).await;

    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(
        run.output,
        Some(json!({
            "first": { "text": "ONCE UPON A TIME" },
            "second": { "text": "ONCE UPON A TIME AGAIN" },
        }))
    );
    // The parent waited twice, holding no message: running -> waiting_for_children -> running.
    let waits = run
        .transitions
        .iter()
        .filter(|t| t.to_status == "waiting_for_children")
        .count();
    assert_eq!(waits, 2);
    // Two children, each a run of its own that names its parent, each ran once.
    let client = env.pool.get().await.unwrap();
    let children = client
        .query(
            "SELECT status, (SELECT max(executions) FROM run_steps s WHERE s.run_id = r.id)
             FROM runs r WHERE parent_id = $1",
            &[&run.summary.id],
        )
        .await
        .unwrap();
    assert_eq!(children.len(), 2);
    for child in children {
        assert_eq!(child.get::<_, String>(0), "succeeded");
        assert_eq!(child.get::<_, Option<i32>>(1), Some(1));
    }
    // Nothing is left to send.
    let unsent: i64 = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unsent, 0);
    worker.shutdown().await.unwrap();
}

/// The bulk dump fans out 1,000 player dumps with a limit of 10: never more than 10 children
/// run at once (measured from their start and end times in Postgres), the failed players are
/// data the parent keeps, and the join gives every outcome in list order.
#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_of_a_thousand_runs_at_most_ten_at_once_and_keeps_partial_results() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let ids: Vec<String> = (0..1000)
        .map(|i| {
            if i % 100 == 7 {
                player::MISSING_PLAYER.to_owned()
            } else {
                format!("p{i}")
            }
        })
        .collect();
    let message = publish(&env, bulk::TASK, json!({ "playerIds": ids, "limit": 10 })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let run = loop {
        let runs = env.runs_of(&message).await;
        if let [run] = runs.as_slice()
            && run.summary.status == "succeeded"
        {
            break run.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bulk dump did not finish: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let output = run.output.clone().unwrap();
    assert_eq!(output["total"], 1000);
    assert_eq!(output["succeeded"], 990);
    assert_eq!(output["failed"].as_array().unwrap().len(), 10);
    assert_eq!(output["failed"][0]["code"], "not_found");
    assert_eq!(output["dumped"].as_array().unwrap().len(), 990);
    assert_eq!(output["dumped"][0]["playerId"], "p0");

    let client = env.pool.get().await.unwrap();
    // Each child from its first start to its end.
    let rows = client
        .query(
            "SELECT (SELECT min(at) FROM run_transitions t WHERE t.run_id = r.id AND t.to_status = 'running'),
                    r.finished_at
             FROM runs r WHERE parent_id = $1",
            &[&run.summary.id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for row in rows {
        edges.push((row.get(0), 1));
        edges.push((row.get(1), -1));
    }
    // Ends before starts at the same instant: a child that ended lets the next start.
    edges.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut running, mut most) = (0, 0);
    for (_, delta) in edges {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 10, "{most} children ran at once");
    assert!(most >= 5, "only {most} children ever ran at once");
    worker.shutdown().await.unwrap();
}

/// A wait with a timeout wakes the parent when it passes, with the children still running
/// reported as such.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_that_times_out_wakes_the_parent_with_the_children_unfinished() {
    let env = TestEnv::new().await;
    let finished = Arc::new(AtomicUsize::new(0));
    let worker = env.start_worker(registry(Arc::clone(&finished))).await;
    let message = publish(
        &env,
        "story.fan",
        json!({ "sleeps": [10, 20000], "timeout_s": 1 }),
    )
    .await;
    let started = std::time::Instant::now();
    let run = env.wait_finished(&message).await;
    assert_eq!(run.summary.status, "succeeded");
    assert!(started.elapsed() < Duration::from_secs(10));
    let output = run.output.unwrap();
    assert_eq!(output["timed_out"], true);
    assert_eq!(output["succeeded"], 1);
    assert_eq!(output["unfinished"], 1);
    assert_eq!(output["children"][0]["status"], "succeeded");
    assert_eq!(output["children"][1]["status"], "running");
    worker.shutdown().await.unwrap();
}

/// Cancelling a parent cancels its running children: their steps stop at once, every run ends
/// `cancelled` with who did it, nothing is dead-lettered, and cancelling again changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_parent_stops_its_running_children_and_dead_letters_nothing() {
    let env = TestEnv::new().await;
    let finished = Arc::new(AtomicUsize::new(0));
    let worker = env.start_worker(registry(Arc::clone(&finished))).await;
    let message = publish(
        &env,
        "story.fan",
        json!({ "sleeps": [30000, 30000, 30000, 30000], "limit": 3 }),
    )
    .await;
    let parent = env.runs_of(&message).await.first().map(|r| r.summary.id);
    let parent = match parent {
        Some(id) => id,
        None => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            env.runs_of(&message).await[0].summary.id
        }
    };
    wait_status(
        &env,
        parent,
        "waiting_for_children",
        Duration::from_secs(10),
    )
    .await;
    let client = env.pool.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = client
            .query_one(
                "SELECT count(*) FROM runs WHERE parent_id = $1 AND status = 'running'",
                &[&parent],
            )
            .await
            .unwrap()
            .get(0);
        if running == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} children running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // While it waits, the parent holds no message: its task's queue has none, ready or
    // delivered and unacked.
    assert_eq!(queue_messages(&env, "story.fan"), 0);

    let cancelled = control::cancel(&env.pool, parent, "operator:test")
        .await
        .unwrap();
    let Cancelled::Cancelled(ids) = cancelled else {
        panic!("not cancelled: {cancelled:?}")
    };
    assert_eq!(ids.len(), 4, "the parent and its three started children");
    assert_eq!(ids[0], parent);
    let cancelled_at = std::time::Instant::now();
    // The children's steps stop within moments, not after their 30 s sleeps: their replica
    // has nothing left in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let in_flight: i64 = client
            .query_one(
                "SELECT count(*) FROM runs WHERE parent_id = $1 AND status <> 'cancelled'",
                &[&parent],
            )
            .await
            .unwrap()
            .get(0);
        if in_flight == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    let parent_row = client
        .query_one(
            "SELECT status, cancelled_by, cancelled_at IS NOT NULL FROM runs WHERE id = $1",
            &[&parent],
        )
        .await
        .unwrap();
    assert_eq!(parent_row.get::<_, String>(0), "cancelled");
    assert_eq!(parent_row.get::<_, String>(1), "operator:test");
    assert!(parent_row.get::<_, bool>(2));
    // The fourth child never started, and never will.
    let children: i64 = client
        .query_one("SELECT count(*) FROM runs WHERE parent_id = $1", &[&parent])
        .await
        .unwrap()
        .get(0);
    assert_eq!(children, 3);
    for task in ["story.fan", "story.slow"] {
        assert!(env.take_dead_letters(task).await.is_empty(), "{task}");
    }
    // Cancelling again says so and changes nothing.
    assert_eq!(
        control::cancel(&env.pool, parent, "operator:test")
            .await
            .unwrap(),
        Cancelled::AlreadyFinished(warren_shared::state::RunStatus::Cancelled)
    );
    worker.shutdown().await.unwrap();
}

/// A cancelled run retried starts again from its first step, without its checkpoints, and
/// finishes; a run that is not dead or cancelled cannot be retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_retried_runs_again_from_its_first_step() {
    let env = TestEnv::new().await;
    let finished = Arc::new(AtomicUsize::new(0));
    let worker = env.start_worker(registry(Arc::clone(&finished))).await;
    let message = publish(&env, "story.slow", json!({ "ms": 30000 })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let run = loop {
        if let Some(run) = env.runs_of(&message).await.first()
            && run.summary.status == "running"
        {
            break run.summary.id;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    control::cancel(&env.pool, run, "operator:test")
        .await
        .unwrap();
    wait_status(&env, run, "cancelled", Duration::from_secs(5)).await;

    // Quicker this time: the retried message carries the same input, so shorten it in place.
    let client = env.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE runs SET input = '{\"ms\": 10}' WHERE id = $1",
            &[&run],
        )
        .await
        .unwrap();
    let retried = control::retry(&env.pool, &env.topology(), run, "operator:test")
        .await
        .unwrap();
    assert!(
        matches!(retried, Retried::Queued { attempt: 2, .. }),
        "{retried:?}"
    );
    wait_status(&env, run, "succeeded", Duration::from_secs(10)).await;
    let again = control::retry(&env.pool, &env.topology(), run, "operator:test")
        .await
        .unwrap();
    assert!(matches!(again, Retried::NotRetryable(_)));
    let detail = &env.runs_of(&message).await[0];
    let reasons: Vec<_> = detail
        .transitions
        .iter()
        .map(|t| t.to_status.as_str())
        .collect();
    assert!(
        reasons.contains(&"cancelled") && reasons.contains(&"queued"),
        "{reasons:?}"
    );
    assert_eq!(detail.steps.len(), 1);
    worker.shutdown().await.unwrap();
}

/// The operator's view: `runs show` names a child's parent and a parent's children,
/// `runs list --parent` lists them, `runs cancel` on a finished run says so and changes nothing,
/// and `runs retry` refuses a run that is neither dead nor cancelled, in one line.
#[tokio::test(flavor = "multi_thread")]
async fn operators_see_parents_and_children_and_cancel_or_retry_from_the_command_line() {
    let env = TestEnv::new().await;
    let worker = env
        .start_worker(registry(Arc::new(AtomicUsize::new(0))))
        .await;
    let message = publish(&env, "story.chain", json!({ "text": "a story" })).await;
    let parent = env.wait_finished(&message).await;
    let parent_id = parent.summary.id.to_string();
    worker.shutdown().await.unwrap();

    let run = |args: &[&str]| {
        let output = env.warren().args(args).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, listed, _) = run(&["runs", "list", "--parent", &parent_id, "--json"]);
    assert!(ok);
    let children: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(|c| c["task"] == "story.upper"));
    let child = children[0]["id"].as_str().unwrap().to_owned();

    let (ok, shown, _) = run(&["runs", "show", &parent_id]);
    assert!(ok);
    assert!(shown.contains("children   2 succeeded"), "{shown}");
    assert!(shown.contains("waiting_for_children"), "{shown}");
    let (ok, shown, _) = run(&["runs", "show", &child, "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["family"]["parent"], parent_id.as_str());
    assert_eq!(shown["parent_id"], parent_id.as_str());

    let (ok, said, _) = run(&["runs", "cancel", &parent_id]);
    assert!(ok);
    assert_eq!(
        said.trim(),
        format!("run {parent_id} already finished (succeeded); nothing changed")
    );
    let (ok, _, said) = run(&["runs", "retry", &parent_id]);
    assert!(!ok);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("only a dead or cancelled run can be retried"),
        "{said}"
    );
    let (ok, _, said) = run(&["runs", "cancel", "not-a-run-id"]);
    assert!(!ok);
    assert_eq!(said.lines().count(), 1, "{said}");
}

/// A fan-out of no children joins at once: the run goes on with an empty join.
#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_of_nothing_goes_on_at_once() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let message = publish(&env, bulk::TASK, json!({ "playerIds": [], "limit": 3 })).await;
    let run = env.wait_finished(&message).await;
    assert_eq!(run.summary.status, "succeeded");
    assert_eq!(run.output.unwrap()["total"], 0);
    worker.shutdown().await.unwrap();
}

/// Cancelling a parent while its children end and start others under a limit: once the
/// cancellation has committed, no child of it starts, and every child is finished.
#[tokio::test(flavor = "multi_thread")]
async fn no_child_starts_after_its_parent_is_cancelled_even_while_siblings_end() {
    let env = TestEnv::new().await;
    let worker = env
        .start_worker(registry(Arc::new(AtomicUsize::new(0))))
        .await;
    let sleeps: Vec<u64> = (0..300).map(|i| 5 + i % 20).collect();
    let message = publish(&env, "story.fan", json!({ "sleeps": sleeps, "limit": 20 })).await;
    let client = env.pool.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let parent = loop {
        let row = client
            .query_opt(
                "SELECT p.id FROM runs p WHERE p.message_id = $1
                 AND (SELECT count(*) FROM runs c WHERE c.parent_id = p.id AND c.status = 'succeeded') >= 40",
                &[&message],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get::<_, Uuid>(0);
        }
        assert!(tokio::time::Instant::now() < deadline, "children never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    control::cancel(&env.pool, parent, "operator:test")
        .await
        .unwrap();
    // Later than the cancellation's commit.
    let committed: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status NOT IN ('succeeded', 'cancelled')),
                    count(*) FILTER (WHERE created_at > $2),
                    count(*),
                    (SELECT count(*) FROM run_transitions t JOIN runs c ON c.id = t.run_id
                     WHERE c.parent_id = $1 AND t.to_status = 'running' AND t.at > $2)
             FROM runs WHERE parent_id = $1",
            &[&parent, &committed],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "children left unfinished");
    assert_eq!(
        row.get::<_, i64>(1),
        0,
        "children created after the cancellation"
    );
    assert_eq!(
        row.get::<_, i64>(3),
        0,
        "children started after the cancellation"
    );
    assert!(
        row.get::<_, i64>(2) < 300,
        "every child ran: the cancellation came too late"
    );
    worker.shutdown().await.unwrap();
}

/// A fan-out without a limit starts all its children at once, so the replica claims and ends
/// them many to a group commit (the set-based forms): each child still starts once, from
/// `queued`, runs its step once and is counted once, and the parent wakes once with every
/// outcome in list order.
#[tokio::test(flavor = "multi_thread")]
async fn an_unlimited_fan_out_runs_each_child_once_and_wakes_the_parent_once() {
    let env = TestEnv::new().await;
    let finished = Arc::new(AtomicUsize::new(0));
    let worker = env.start_worker(registry(Arc::clone(&finished))).await;
    let sleeps = vec![json!(0); 300];
    let message = publish(&env, "story.fan", json!({ "sleeps": sleeps })).await;
    let run = env.wait_finished(&message).await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    let output = run.output.clone().unwrap();
    assert_eq!(output["succeeded"], 300);
    let children = output["children"].as_array().unwrap();
    assert_eq!(children.len(), 300);
    for (position, child) in children.iter().enumerate() {
        let id = child["message_id"].as_str().unwrap();
        assert!(id.ends_with(&format!("/{position}")), "{id} at {position}");
        assert_eq!(child["status"], "succeeded");
    }
    assert_eq!(finished.load(Ordering::SeqCst), 300);
    let wakes = run
        .transitions
        .iter()
        .filter(|t| t.from_status.as_deref() == Some("waiting_for_children"))
        .count();
    assert_eq!(wakes, 1);

    let client = env.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT string_agg(coalesce(t.from_status, '-') || '>' || t.to_status, ' ' ORDER BY t.id),
                    count(*) FILTER (WHERE t.reason = 'child run started'),
                    (SELECT executions FROM run_steps s WHERE s.run_id = r.id)
             FROM runs r JOIN run_transitions t ON t.run_id = r.id
             WHERE r.parent_id = $1 GROUP BY r.id",
            &[&run.summary.id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 300);
    for row in rows {
        assert_eq!(
            row.get::<_, String>(0),
            "->queued queued>running running>succeeded"
        );
        assert_eq!(row.get::<_, i64>(1), 1);
        assert_eq!(row.get::<_, Option<i32>>(2), Some(1));
    }
    let unsent: i64 = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unsent, 0);
    worker.shutdown().await.unwrap();
}

/// The set-based claim of child runs starts only children that have never run: a cancelled
/// child, a replayed one and one running elsewhere are left to the full claim, which knows
/// what to make of them.
#[tokio::test(flavor = "multi_thread")]
async fn the_set_based_claim_starts_only_children_that_never_ran() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    let parent = Uuid::now_v7();
    // (message id, status, attempt, attempt base, owner)
    let children = [
        ("fresh", "queued", 1, 0, None),
        ("cancelled", "cancelled", 1, 0, None),
        ("replayed", "queued", 2, 1, None),
        ("elsewhere", "running", 1, 0, Some("other#1")),
    ];
    let mut ids = Vec::new();
    for (message_id, status, attempt, base, owner) in children {
        let id = warren_shared::store::run_id("story.upper", message_id);
        client
            .execute(
                "INSERT INTO runs (id, message_id, task, event, status, attempt, attempt_base,
                                   worker, parent_id, published_at)
                 VALUES ($1, $2, 'story.upper', 'story.upper', $3, $4, $5, $6, $7, now())",
                &[&id, &message_id, &status, &attempt, &base, &owner, &parent],
            )
            .await
            .unwrap();
        ids.push((id, message_id));
    }
    let runs: Vec<_> = ids
        .iter()
        .map(|(id, message_id)| warren_shared::store::NewRun {
            id: *id,
            message_id,
            task: "story.upper",
            event: "story.upper",
            input: None,
            attempt: 2,
            idempotency_key: None,
            tenant: None,
            published_at: None,
            worker: "here#1",
            wake: None,
            idempotency_window: Duration::from_secs(60),
        })
        .collect();
    let tx = client.transaction().await.unwrap();
    let started = warren_shared::store::start_queued_children(&tx, &runs)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(started, [true, false, false, false]);

    let rows = client
        .query(
            "SELECT r.message_id, r.status, r.attempt, r.worker, r.started_at IS NOT NULL,
                    (SELECT string_agg(t.from_status || '>' || t.to_status || ' ' || t.reason, '; ')
                     FROM run_transitions t WHERE t.run_id = r.id)
             FROM runs r WHERE parent_id = $1 ORDER BY r.message_id",
            &[&parent],
        )
        .await
        .unwrap();
    // message id, status, attempt, owner, started, transitions
    let seen: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {:?} {} {:?}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i32>(2),
                r.get::<_, Option<String>>(3),
                r.get::<_, bool>(4),
                r.get::<_, Option<String>>(5),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "cancelled cancelled 1 None false None",
            "elsewhere running 1 Some(\"other#1\") false None",
            "fresh running 2 Some(\"here#1\") true Some(\"queued>running child run started\")",
            "replayed queued 2 None false None",
        ]
    );
}
