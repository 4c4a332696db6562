//! Child runs declared in a task file (`kind = "trigger"`, `kind = "fan_out"`), run by the real
//! `warren worker --tasks FILE` on the real broker and database: a chain of triggers handing
//! each child's output to the next, a failed child and an unknown task stopping a chain with
//! the reason, and a fan-out that never runs more children at once than its limit.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use uuid::Uuid;
use warren_producer::PublishOptions;
use warren_shared::store::RunDetail;
use warren_tests::{TestEnv, TestWorker, publish_when_declared};

/// Children that transform their input with `jq` (the step request on standard input, the
/// output on standard output), and parents that start them.
const TASK_FILE: &str = r#"
[[task]]
name = "dc.upper"
[[task.step]]
name = "upper"
kind = "command"
program = "jq"
args = ["-c", "{text: (.input.text | ascii_upcase), words: (.input.text | split(\" \") | length)}"]

[[task]]
name = "dc.shout"
[[task.step]]
name = "shout"
kind = "command"
program = "jq"
args = ["-c", "{text: (.input.text + \"!\"), words: .input.words}"]

[[task]]
name = "dc.missing"
[[task.step]]
name = "look_up"
kind = "command"
program = "sh"
args = ["-c", "echo '{\"code\": \"not_found\", \"message\": \"there is no story 404\"}' >&2; exit 3"]

# A nap of 300 ms, then the item back; an item {"fail": true} fails for good.
[[task]]
name = "dc.nap"
[[task.step]]
name = "nap"
kind = "command"
program = "sh"
args = ["-c", "sleep 0.3; jq -c 'if .input.fail then error(\"asked to fail\") else {got: .input} end'"]

[[task]]
name = "dc.slow"
[[task.step]]
name = "sleep"
kind = "command"
program = "sh"
args = ["-c", "sleep 5; echo '{}'"]

[[task]]
name = "dc.chain"
[[task.step]]
name = "upper"
kind = "trigger"
task = "dc.upper"
input = "/input/story"
stage = "UPPERED"
[[task.step]]
name = "shout"
kind = "trigger"
task = "dc.shout"
input = "/outputs/upper/output"
stage = "SHOUTED"
[[task.step]]
name = "report"
kind = "command"
program = "jq"
args = ["-c", "{upper: .outputs.upper.output.text, shout: .outputs.shout.output.text, words: .outputs.shout.output.words}"]

[[task]]
name = "dc.broken"
[[task.step]]
name = "look_up"
kind = "trigger"
task = "dc.missing"
[[task.step]]
name = "upper"
kind = "trigger"
task = "dc.upper"
input = "/outputs/look_up/output"

[[task]]
name = "dc.impatient"
[[task.step]]
name = "slow"
kind = "trigger"
task = "dc.slow"
timeout = "1s"
[[task.step]]
name = "upper"
kind = "trigger"
task = "dc.upper"
input = "/outputs/slow/output"

[[task]]
name = "dc.orphan"
[[task.step]]
name = "nobody"
kind = "trigger"
task = "dc.nobody"

[[task]]
name = "dc.fan"
[[task.step]]
name = "naps"
kind = "fan_out"
task = "dc.nap"
items = "/input/items"
limit = 2
stage = "NAPPED"
[[task.step]]
name = "collect"
kind = "command"
program = "jq"
args = ["-c", "{got: [.outputs.naps.children[] | select(.status == \"succeeded\") | .output.got], failed: [.outputs.naps.children[] | select(.status != \"succeeded\") | .error.code], succeeded: .outputs.naps.succeeded}"]
"#;

const TASKS: [&str; 10] = [
    "dc.upper",
    "dc.shout",
    "dc.missing",
    "dc.nap",
    "dc.slow",
    "dc.chain",
    "dc.broken",
    "dc.impatient",
    "dc.orphan",
    "dc.fan",
];

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn task_file() -> (TempDir, PathBuf) {
    let dir = TempDir(std::env::temp_dir().join(format!("warren-dc-{}", Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("tasks.toml");
    std::fs::write(&file, TASK_FILE).unwrap();
    (dir, file)
}

/// `warren worker --tasks FILE --only <the file's tasks>`, consuming every task's queue.
async fn start_worker(env: &TestEnv, file: &Path) -> TestWorker {
    for task in TASKS {
        env.declared(task);
    }
    let worker = TestWorker::from(
        env.warren()
            .args(["worker", "--worker-id", "declared-children", "--tasks"])
            .arg(file)
            .args(["--only", &TASKS.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    env.wait_consuming(&TASKS).await;
    worker
}

async fn publish(env: &TestEnv, task: &str, message_id: &str, payload: Value) {
    let producer = env.producer().await;
    let options = PublishOptions {
        message_id: Some(message_id.into()),
        ..PublishOptions::default()
    };
    publish_when_declared(&producer, task, &payload, options).await;
}

fn output<'a>(run: &'a RunDetail, step: &str) -> &'a Value {
    run.steps
        .iter()
        .find(|s| s.step == step)
        .and_then(|s| s.output.as_ref())
        .unwrap_or_else(|| panic!("no output of {step}: {run:?}"))
}

/// A child of `parent`: its task, status, input, output, and how often its step ran.
#[derive(Debug)]
struct Child {
    id: Uuid,
    task: String,
    status: String,
    input: Option<Value>,
    output: Option<Value>,
    executions: Option<i32>,
}

async fn children(env: &TestEnv, parent: Uuid) -> Vec<Child> {
    let client = env.pool.get().await.unwrap();
    client
        .query(
            "SELECT id, task, status, input, output,
                    (SELECT max(executions) FROM run_steps s WHERE s.run_id = r.id)
             FROM runs r WHERE parent_id = $1 ORDER BY created_at, id",
            &[&parent],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| Child {
            id: row.get(0),
            task: row.get(1),
            status: row.get(2),
            input: row.get(3),
            output: row.get(4),
            executions: row.get(5),
        })
        .collect()
}

/// A chain of two triggers: each child runs once, as a run of its own that names its parent;
/// the second child's input is the first child's output; the parent parks twice, and its last
/// step reads both children's outputs.
#[tokio::test(flavor = "multi_thread")]
async fn a_declared_trigger_chain_hands_each_childs_output_to_the_next_child() {
    let env = TestEnv::new().await;
    let (_dir, file) = task_file();
    let _worker = start_worker(&env, &file).await;
    publish(
        &env,
        "dc.chain",
        "chain-1",
        json!({ "story": { "text": "once upon a time" } }),
    )
    .await;
    let run = env.wait_finished("chain-1").await;

    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("SHOUTED"));
    assert_eq!(
        run.output,
        Some(json!({ "upper": "ONCE UPON A TIME", "shout": "ONCE UPON A TIME!", "words": 4 }))
    );
    // A trigger step's output is its child's outcome.
    let upper = output(&run, "upper");
    assert_eq!(upper["status"], "succeeded");
    assert_eq!(upper["task"], "dc.upper");
    assert_eq!(upper["timed_out"], false);
    assert_eq!(
        upper["message_id"],
        format!("{}/upper/0/0", run.summary.id),
        "{upper}"
    );
    assert_eq!(
        upper["output"],
        json!({ "text": "ONCE UPON A TIME", "words": 4 })
    );
    let waits = run
        .transitions
        .iter()
        .filter(|t| t.to_status == "waiting_for_children")
        .count();
    assert_eq!(waits, 2);

    let children = children(&env, run.summary.id).await;
    let tasks: Vec<&str> = children.iter().map(|c| c.task.as_str()).collect();
    assert_eq!(tasks, ["dc.upper", "dc.shout"]);
    for child in &children {
        assert_eq!(child.status, "succeeded", "{child:?}");
        assert_eq!(child.executions, Some(1), "{child:?}");
    }
    assert_eq!(
        children[0].input,
        Some(json!({ "text": "once upon a time" }))
    );
    assert_eq!(children[1].input, children[0].output);
    assert_eq!(upper["run_id"], json!(children[0].id));
}

/// A chain whose first child died stops at the step that reads that child's output, for good,
/// with `child_failed` naming the child run and its own error; so does one whose wait for a
/// child timed out; a trigger of a task no replica runs fails with `unknown_task`. None of
/// them is a mistake of the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_child_or_an_unknown_task_stops_a_declared_chain_and_says_why() {
    let env = TestEnv::new().await;
    let (_dir, file) = task_file();
    let _worker = start_worker(&env, &file).await;
    publish(&env, "dc.broken", "broken-1", json!({ "id": 404 })).await;
    publish(&env, "dc.orphan", "orphan-1", json!({})).await;
    publish(&env, "dc.impatient", "impatient-1", json!({})).await;

    let run = env.wait_finished("broken-1").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.attempt, 1, "not retried: {run:?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("child_failed"));
    let children = children(&env, run.summary.id).await;
    assert_eq!(children.len(), 1, "the second child never started");
    let dead = &children[0];
    assert_eq!(
        (dead.task.as_str(), dead.status.as_str()),
        ("dc.missing", "dead")
    );
    assert_eq!(
        run.error_message.as_deref(),
        Some(
            format!(
                "\"/outputs/look_up/output\" reads the output of child run {} of task dc.missing (started by step `look_up`), which is dead: not_found: there is no story 404",
                dead.id
            )
            .as_str()
        )
    );
    // The failed child is data in the first step's output.
    let look_up = output(&run, "look_up");
    assert_eq!(look_up["status"], "dead");
    assert_eq!(
        look_up["error"],
        json!({ "code": "not_found", "message": "there is no story 404" })
    );

    let run = env.wait_finished("orphan-1").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("unknown_task"));
    assert!(
        run.error_message
            .as_deref()
            .is_some_and(|m| m.contains("\"dc.nobody\", which no replica of this fleet runs")),
        "{run:?}"
    );
    assert_eq!(children_of(&env, run.summary.id).await, 0);

    // The wait's timeout (1 s) woke the parent while its child still slept (5 s).
    let run = env.wait_finished("impatient-1").await;
    assert_eq!(run.summary.status, "dead", "{run:?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("child_failed"));
    let slow = output(&run, "slow");
    assert_eq!(slow["timed_out"], true, "{slow}");
    assert_ne!(slow["status"], "succeeded", "{slow}");
    assert!(
        run.error_message.as_deref().is_some_and(|m| m.contains(&format!(
            "child run {} of task dc.slow (started by step `slow`), which had not ended when the wait timed out",
            slow["run_id"].as_str().unwrap()
        ))),
        "{run:?}"
    );
}

async fn children_of(env: &TestEnv, parent: Uuid) -> i64 {
    let client = env.pool.get().await.unwrap();
    client
        .query_one("SELECT count(*) FROM runs WHERE parent_id = $1", &[&parent])
        .await
        .unwrap()
        .get(0)
}

/// The most of `parent`'s children that ever ran at once, from each child's first start to its
/// end as Postgres recorded them.
pub(crate) async fn most_at_once(env: &TestEnv, parent: Uuid) -> (usize, i32) {
    let client = env.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT (SELECT min(at) FROM run_transitions t
                     WHERE t.run_id = r.id AND t.to_status = 'running'),
                    r.finished_at
             FROM runs r WHERE parent_id = $1",
            &[&parent],
        )
        .await
        .unwrap();
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for row in &rows {
        edges.push((row.get(0), 1));
        edges.push((row.get(1), -1));
    }
    // Ends before starts at the same instant: a child that ended lets the next one start.
    edges.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut running, mut most) = (0, 0);
    for (_, delta) in edges {
        running += delta;
        most = most.max(running);
    }
    (rows.len(), most)
}

/// A fan-out with `limit = 2` over seven items: a child per item, in list order, never more
/// than two running at once (measured in Postgres); items that are not objects arrive as
/// `{"item": x}`; the child that fails is data the next step sorts out.
#[tokio::test(flavor = "multi_thread")]
async fn a_declared_fan_out_runs_at_most_its_limit_at_once_and_joins_in_list_order() {
    let env = TestEnv::new().await;
    let (_dir, file) = task_file();
    let _worker = start_worker(&env, &file).await;
    let items = json!([1, "two", { "n": 3 }, { "fail": true }, 5, 6, 7]);
    publish(&env, "dc.fan", "fan-1", json!({ "items": items })).await;
    let run = env.wait_finished("fan-1").await;

    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("NAPPED"));
    assert_eq!(
        run.output,
        Some(json!({
            "got": [{ "item": 1 }, { "item": "two" }, { "n": 3 }, { "item": 5 }, { "item": 6 }, { "item": 7 }],
            "failed": ["exit_5"],
            "succeeded": 6,
        }))
    );
    let join = output(&run, "naps");
    assert_eq!(
        (
            &join["succeeded"],
            &join["failed"],
            &join["halted"],
            &join["unfinished"],
            &join["timed_out"]
        ),
        (&json!(6), &json!(1), &json!(0), &json!(0), &json!(false))
    );
    let positions: Vec<String> = join["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["message_id"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(positions, ["0", "1", "2", "3", "4", "5", "6"]);

    let (count, most) = most_at_once(&env, run.summary.id).await;
    assert_eq!(count, 7);
    assert!(most <= 2, "{most} children ran at once");
    assert_eq!(most, 2, "the limit let two run at once");
    for child in children(&env, run.summary.id).await {
        assert_eq!(child.executions, Some(1), "{child:?}");
    }

    // An empty list starts no child, and the run goes on at once.
    publish(&env, "dc.fan", "fan-empty", json!({ "items": [] })).await;
    let run = env.wait_finished("fan-empty").await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(
        run.output,
        Some(json!({ "got": [], "failed": [], "succeeded": 0 }))
    );
    assert_eq!(children_of(&env, run.summary.id).await, 0);
}

/// `warren tasks validate` finds the mistakes of trigger and fan-out steps, each at its line,
/// and takes a trigger of a task the file does not declare.
#[test]
fn tasks_validate_checks_trigger_and_fan_out_steps() {
    let dir = TempDir(std::env::temp_dir().join(format!("warren-dc-validate-{}", Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        r#"[[task]]
name = "dc.bad"

[[task.step]]
name = "first"
kind = "trigger"
task = "somewhere.else"
input = "/outputs/second/output"

[[task.step]]
name = "second"
kind = "fan_out"
task = "dc.bad"
limit = "ten"
"#,
    )
    .unwrap();
    let good = dir.0.join("good.toml");
    std::fs::write(&good, TASK_FILE).unwrap();
    let validate = |file: &Path| {
        std::process::Command::new(warren_tests::warren_binary())
            .args(["tasks", "validate"])
            .arg(file)
            .env("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .env(
                "WARREN_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nowhere",
            )
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };

    let output = validate(&bad);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let expected = [
        ":8:9: `input`: \"/outputs/second/output\" reads the output of `second`, which is not a step before this one (there is no step before it)",
        ":10:1: missing key `items` in [[task.step]]",
        ":14:9: `limit` must be a whole number from 1 to 100000",
    ];
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    for (line, expected) in lines.iter().zip(expected) {
        assert_eq!(*line, format!("{}{expected}", bad.display()));
    }

    let output = validate(&good);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(
        stdout.trim_end(),
        format!("{}: {} task(s), valid", good.display(), TASKS.len())
    );
}
