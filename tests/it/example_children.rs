//! The child-run examples end to end, each with the real `warren worker --tasks FILE` on the
//! real broker and database: `examples/family-plus` (an orchestrator triggering a chain of
//! eight tasks, and a batch of stories two at a time) and `examples/santai` (a bulk dump of
//! players ten at a time, with the player API of the example). What ran is read back from
//! Postgres.

use crate::declared_children::most_at_once;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use uuid::Uuid;
use warren_producer::PublishOptions;
use warren_shared::contract::{self, header};
use warren_shared::store::RunDetail;
use warren_tests::{TestEnv, TestWorker, publish_when_declared};

fn example_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// `warren worker --tasks FILE --only TASKS` for this test, once it consumes every task.
async fn start_worker(env: &TestEnv, id: &str, file: &Path, tasks: &[&str]) -> TestWorker {
    for task in tasks {
        env.declared(task);
    }
    let worker = TestWorker::from(
        env.warren()
            .args(["worker", "--worker-id", id, "--tasks"])
            .arg(file)
            .args(["--only", &tasks.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    env.wait_consuming(tasks).await;
    worker
}

async fn publish(env: &TestEnv, task: &str, message_id: &str, payload: &Value) {
    let producer = env.producer().await;
    let options = PublishOptions {
        message_id: Some(message_id.into()),
        ..PublishOptions::default()
    };
    publish_when_declared(&producer, task, payload, options).await;
}

/// The message's run once it has ended, waiting up to `within`.
async fn wait_finished(env: &TestEnv, message_id: &str, within: Duration) -> RunDetail {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let runs = env.runs_of(message_id).await;
        if let [run] = runs.as_slice()
            && matches!(
                run.summary.status.as_str(),
                "succeeded" | "halted" | "dead" | "cancelled"
            )
        {
            return run.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run of {message_id} did not end within {within:?}: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child run, as Postgres has it.
#[derive(Debug, Clone)]
struct Child {
    id: Uuid,
    task: String,
    status: String,
    error_code: Option<String>,
    input: Option<Value>,
    output: Option<Value>,
    /// Its steps as (name, status, executions), in pipeline order.
    steps: Vec<(String, String, i32)>,
}

/// The children of `parent`, in the order they were created.
async fn children(env: &TestEnv, parent: Uuid) -> Vec<Child> {
    let client = env.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT id, task, status, error_code, input, output FROM runs
             WHERE parent_id = $1 ORDER BY created_at, id",
            &[&parent],
        )
        .await
        .unwrap();
    let mut found = Vec::new();
    for row in rows {
        let id: Uuid = row.get(0);
        let steps = client
            .query(
                "SELECT step, status, executions FROM run_steps WHERE run_id = $1 ORDER BY position",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|s| (s.get(0), s.get(1), s.get(2)))
            .collect();
        found.push(Child {
            id,
            task: row.get(1),
            status: row.get(2),
            error_code: row.get(3),
            input: row.get(4),
            output: row.get(5),
            steps,
        });
    }
    found
}

const STORY_TASKS: [&str; 8] = [
    "story.transcribe",
    "story.embed",
    "story.tags",
    "story.quote",
    "story.title",
    "story.summary",
    "story.chapters",
    "story.podcast",
];

/// The batch of `examples/family-plus/stories.json`: every story told by a `family.story` run
/// that triggered each of the eight tasks once, in order, each child's output the next one's
/// input, the final output holding every task's part; never more than two stories at once;
/// the story without a sentence stops at its first task and is reported, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn family_plus_tells_a_batch_of_stories_two_at_a_time_through_the_eight_task_chain() {
    let env = TestEnv::new().await;
    let example = example_dir("family-plus");
    let mut tasks = STORY_TASKS.to_vec();
    tasks.extend(["family.story", "family.batch"]);
    let _worker = start_worker(&env, "family-plus", &example.join("tasks.toml"), &tasks).await;
    let batch: Value =
        serde_json::from_str(&std::fs::read_to_string(example.join("stories.json")).unwrap())
            .unwrap();
    let stories = batch["stories"].as_array().unwrap().clone();
    assert_eq!(stories.len(), 5);
    publish(&env, "family.batch", "batch-1", &batch).await;
    let run = wait_finished(&env, "batch-1", Duration::from_secs(120)).await;

    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    let output = run.output.clone().unwrap();
    let made: Vec<(&str, &str)> = output["made"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["title"].as_str().unwrap()))
        .collect();
    assert_eq!(
        made,
        [
            ("boat", "The Boat and the Storm"),
            ("bakery", "The Bakery and the Bread"),
            ("letters", "The Letters and the Box"),
            ("radio", "The Radio and the Music"),
        ],
        "{output}"
    );
    let failed = &output["failed"];
    assert_eq!(failed.as_array().unwrap().len(), 1, "{output}");
    assert_eq!(failed[0]["id"], "blank");
    assert_eq!(failed[0]["status"], "dead");
    assert_eq!(failed[0]["error"]["code"], "child_failed");

    // One family.story per story, in the batch's order, never more than two at once.
    let told = children(&env, run.summary.id).await;
    let ids: Vec<&Value> = told
        .iter()
        .map(|c| &c.input.as_ref().unwrap()["id"])
        .collect();
    let expected: Vec<&Value> = stories.iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, expected);
    let (count, most) = most_at_once(&env, run.summary.id).await;
    assert_eq!(count, 5);
    assert!(most <= 2, "{most} stories were told at once");
    assert_eq!(most, 2, "the limit let two stories be told at once");

    for story in &told[..4] {
        assert_eq!(story.task, "family.story");
        assert_eq!(story.status, "succeeded", "{story:?}");
        // Each of the eight tasks ran once for the story, in order, each step once; each
        // child got the output of the one before.
        let chain = children(&env, story.id).await;
        let tasks: Vec<&str> = chain.iter().map(|c| c.task.as_str()).collect();
        assert_eq!(tasks, STORY_TASKS, "{story:?}");
        for child in &chain {
            assert_eq!(child.status, "succeeded", "{child:?}");
            assert_eq!(child.steps.len(), 1, "{child:?}");
            assert_eq!(child.steps[0].2, 1, "executed once: {child:?}");
        }
        assert_eq!(chain[0].input, story.input);
        for pair in chain.windows(2) {
            assert_eq!(pair[1].input, pair[0].output, "{}", pair[1].task);
        }
        // The story's own steps: eight triggers and assemble, each once.
        let detail = env.runs_of(&story.id.to_string()).await.remove(0);
        assert_eq!(detail.summary.stage.as_deref(), Some("TOLD"));
        let steps: Vec<(&str, i32)> = detail
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.executions))
            .collect();
        assert_eq!(
            steps,
            [
                ("transcribe", 1),
                ("embed", 1),
                ("tags", 1),
                ("quote", 1),
                ("title", 1),
                ("summary", 1),
                ("chapters", 1),
                ("podcast", 1),
                ("assemble", 1)
            ]
        );
        // Every task's part is in the story's output, and names the child run that made it.
        let told = story.output.as_ref().unwrap();
        for key in [
            "words",
            "sentences",
            "vocabulary",
            "tags",
            "quote",
            "title",
            "summary",
            "chapters",
            "podcast",
        ] {
            assert!(
                !told[key].is_null(),
                "{key} is missing from the story: {told}"
            );
        }
        let runs: Vec<(&str, Uuid)> = chain.iter().map(|c| (c.task.as_str(), c.id)).collect();
        for (task, id) in runs {
            assert_eq!(told["runs"][task], json!(id), "{told}");
        }
    }

    // One story, every part checked.
    let boat = told[0].output.clone().unwrap();
    assert_eq!(boat["id"], "boat");
    assert_eq!(boat["words"], 43);
    assert_eq!(boat["sentences"], 5);
    assert_eq!(
        boat["vocabulary"],
        json!([
            "boat", "storm", "grandma", "lake", "carried", "home", "island", "kept"
        ])
    );
    assert_eq!(boat["tags"], json!(["boat", "storm", "grandma"]));
    assert_eq!(
        boat["quote"],
        "Grandma steered the boat home through the storm."
    );
    assert_eq!(
        boat["summary"],
        "Grandma kept a boat by the lake. Grandma steered the boat home through the storm. We still tell the story of the boat and the storm."
    );
    assert_eq!(boat["chapters"], json!(["Boat", "Storm"]));
    let script = boat["podcast"]["script"].as_array().unwrap();
    assert_eq!(
        script[0],
        "HOST: Welcome to Family Stories. Today: \"The Boat and the Storm\", a story of boat, storm, grandma."
    );
    assert_eq!(script.len(), 7);
    assert_eq!(boat["podcast"]["seconds"], 45);

    // The blank story: its transcription failed for good, so the chain stopped at the next
    // step, which would have read it; nothing after it ran.
    let blank = &told[4];
    assert_eq!(blank.status, "dead");
    assert_eq!(blank.error_code.as_deref(), Some("child_failed"));
    let chain = children(&env, blank.id).await;
    assert_eq!(chain.len(), 1, "{chain:?}");
    assert_eq!(chain[0].task, "story.transcribe");
    assert_eq!(chain[0].status, "dead");
    assert_eq!(chain[0].error_code.as_deref(), Some("empty_story"));
}

/// The example's task file with the API at `port` and its programs found where the example is
/// (the copy lives elsewhere).
fn santai_task_file(port: u16) -> (tempfile::TempDir, PathBuf) {
    let example = example_dir("santai");
    let text = std::fs::read_to_string(example.join("tasks.toml")).unwrap();
    assert_eq!(text.matches("http://127.0.0.1:8788\"").count(), 3);
    let text = text
        .replace(
            "http://127.0.0.1:8788\"",
            &format!("http://127.0.0.1:{port}\""),
        )
        .replace(
            "program = \"./steps/",
            &format!("program = \"{}/steps/", example.display()),
        );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// How often the API was asked for each path.
async fn api_calls(port: u16) -> Value {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/calls"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// The bulk dump of 25 players, one of whom the API does not know: a dump per player, never
/// more than ten at once; each dump calls the API once per step, teams and matches only when
/// the profile worked; the unknown player fails for good at its profile, once, and the bulk
/// dump keeps the 24 others' results and lists it with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn santai_bulk_dump_keeps_the_players_that_worked_ten_at_a_time_and_lists_the_missing_one() {
    let env = TestEnv::new().await;
    let port = warren_tests::free_port();
    let _api = warren_tests::start_node_server(&example_dir("santai").join("api.js"), port, &[]);
    let (_dir, file) = santai_task_file(port);
    let tasks = ["santai.player.dump", "santai.bulk_dump"];
    let _worker = start_worker(&env, "santai", &file, &tasks).await;

    let ids: Vec<String> = (1..=25)
        .map(|i| {
            if i == 8 {
                "p-404".to_owned()
            } else {
                format!("p-{i}")
            }
        })
        .collect();
    publish(
        &env,
        "santai.bulk_dump",
        "bulk-1",
        &json!({ "playerIds": ids }),
    )
    .await;
    let run = wait_finished(&env, "bulk-1", Duration::from_secs(120)).await;

    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    assert_eq!(run.summary.stage.as_deref(), Some("COLLECTED"));
    let output = run.output.clone().unwrap();
    assert_eq!(output["total"], 25);
    let dumped = output["dumped"].as_array().unwrap();
    let dumped_ids: Vec<&str> = dumped
        .iter()
        .map(|d| d["playerId"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != "p-404")
        .collect();
    assert_eq!(dumped_ids, expected);
    assert_eq!(
        dumped[0],
        json!({ "playerId": "p-1", "name": "Player P-1", "teams": 3, "matches": 4 })
    );
    assert_eq!(
        output["failed"],
        json!([{
            "playerId": "p-404",
            "status": "dead",
            "code": "not_found",
            "message": "the player API answered /players/p-404 with 404 Not Found",
        }])
    );

    // A dump per player, in the order of the list, at most ten at once.
    let dumps = children(&env, run.summary.id).await;
    assert_eq!(dumps.len(), 25);
    let (_, most) = most_at_once(&env, run.summary.id).await;
    assert!(most <= 10, "{most} dumps ran at once");
    assert!(most >= 3, "only {most} dumps ever ran at once");
    for dump in &dumps {
        let player = dump.input.as_ref().unwrap()["item"].as_str().unwrap();
        let steps: Vec<(&str, &str, i32)> = dump
            .steps
            .iter()
            .map(|(s, status, n)| (s.as_str(), status.as_str(), *n))
            .collect();
        if player == "p-404" {
            assert_eq!(dump.status, "dead", "{dump:?}");
            assert_eq!(dump.error_code.as_deref(), Some("not_found"));
            assert_eq!(steps, [("profile", "failed", 1)], "{dump:?}");
        } else {
            assert_eq!(dump.status, "succeeded", "{dump:?}");
            assert_eq!(
                steps,
                [
                    ("profile", "succeeded", 1),
                    ("teams", "succeeded", 1),
                    ("matches", "succeeded", 1)
                ],
                "{dump:?}"
            );
        }
    }

    // The API was asked for each player's profile, teams and matches once; for the missing
    // player's profile once (not retried), and never for its teams or matches.
    let calls = api_calls(port).await;
    for id in &expected {
        for path in ["", "/teams", "/matches"] {
            assert_eq!(
                calls[format!("/players/{id}{path}")],
                1,
                "{id}{path}: {calls}"
            );
        }
    }
    assert_eq!(calls["/players/p-404"], 1, "{calls}");
    assert!(calls.get("/players/p-404/teams").is_none(), "{calls}");
    assert!(calls.get("/players/p-404/matches").is_none(), "{calls}");
    assert_eq!(calls.as_object().unwrap().len(), 24 * 3 + 1, "{calls}");

    // The dead dump is dead-lettered with its reason, as any dead run.
    let letters = env.wait_dead_letters("santai.player.dump", 1).await;
    assert_eq!(letters.len(), 1);
    let reason = contract::string_header(
        letters[0].delivery.properties.headers().as_ref(),
        header::DEAD_REASON,
    )
    .unwrap();
    assert_eq!(reason.as_deref(), Some("not_found"));
}
