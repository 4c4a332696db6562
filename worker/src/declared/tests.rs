//! The task file as its reader sees it: what a valid file becomes, and each kind of mistake at
//! its line.

use super::*;
use crate::RetryPolicy;
use serde_json::json;
use serde_json::value::RawValue;
use std::time::Duration;

const FILE: &str = "tasks.toml";

/// [`super::parse`] for a replica whose environment has the signing secret.
fn parse(source: &str, path: &Path, builtin: &Registry) -> Result<DeclaredTasks, Mistakes> {
    parse_in(source, path, builtin, &|_| Some("test-secret".into()))
}

fn read(source: &str) -> Result<DeclaredTasks, Mistakes> {
    parse(source, Path::new(FILE), &Registry::new())
}

/// The mistakes of `source`, as `warren tasks validate` prints them.
fn mistakes(source: &str) -> Vec<String> {
    match read(source) {
        Ok(tasks) => panic!("expected mistakes, got the tasks {:?}", tasks.names()),
        Err(mistakes) => mistakes.lines().collect(),
    }
}

/// The one mistake of `source`.
fn mistake(source: &str) -> String {
    let found = mistakes(source);
    assert_eq!(found.len(), 1, "{found:#?}");
    found.into_iter().next().unwrap_or_default()
}

fn assert_mistake(source: &str, at: &str, says: &str) {
    let mistake = mistake(source);
    assert!(
        mistake.starts_with(&format!("{FILE}:{at}: ")),
        "expected a mistake at {at}, got: {mistake}"
    );
    assert!(mistake.contains(says), "expected {says:?} in: {mistake}");
}

const VALID: &str = r#"
[[task]]
name = "media.track"
events = ["media.track", "media.retrack"]
concurrency = 4
max_duration = "10m"
input_schema = { type = "object", required = ["url"], properties = { url = { type = "string" } } }

[task.retry]
max_attempts = 5
min_delay = "2s"
max_delay = "1m"
factor = 3
jitter = false

[[task.step]]
name = "extract_audio"
kind = "command"
stage = "AUDIO_EXTRACTED"
program = "ffmpeg"
args = ["-y"]
env = { LANG = "C" }
[task.step.retry]
max_attempts = 7

[[task.step]]
name = "thumbnail"
kind = "http"
timeout = "45s"
url = "http://127.0.0.1:8080/steps/thumbnail"

[[task.step]]
name = "cool_down"
kind = "wait"
duration = "30s"
stage = "COOLED"

[task.on_failure]
kind = "http"
url = "http://127.0.0.1:8080/failed"

[[task]]
name = "report.daily"

[[task.step]]
name = "send"
kind = "http"
url = "http://127.0.0.1:8080/send"
"#;

fn task(tasks: &[Task<Value>], name: &str) -> usize {
    tasks
        .iter()
        .position(|t| t.id() == name)
        .unwrap_or_else(|| panic!("no task {name}"))
}

#[test]
fn a_valid_file_becomes_tasks_with_everything_it_declares() {
    let tasks = read(VALID).unwrap();
    assert_eq!(tasks.names(), ["media.track", "report.daily"]);
    let tasks = tasks.into_tasks();
    let media = &tasks[task(&tasks, "media.track")];
    assert_eq!(media.events(), ["media.track", "media.retrack"]);
    assert_eq!(media.concurrency(), Some(4));
    assert_eq!(media.max_duration(), Some(Duration::from_secs(600)));
    assert_eq!(
        media.retry_policy(),
        Some(RetryPolicy {
            max_attempts: 5,
            min_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            factor: 3.0,
            jitter: false,
        })
    );
    assert!(media.failure_handler().is_some());
    let steps = media.steps();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["extract_audio", "thumbnail", "cool_down"]);
    assert_eq!(steps[0].stage.as_deref(), Some("AUDIO_EXTRACTED"));
    assert_eq!(steps[0].timeout, Some(DEFAULT_COMMAND_TIMEOUT));
    assert_eq!(
        steps[0].retry,
        Some(RetryPolicy {
            max_attempts: 7,
            ..RetryPolicy::default()
        })
    );
    assert_eq!(steps[1].timeout, Some(Duration::from_secs(45)));
    assert_eq!(steps[1].retry, None);
    assert_eq!(steps[2].stage.as_deref(), Some("COOLED"));

    let report = &tasks[task(&tasks, "report.daily")];
    assert_eq!(report.events(), ["report.daily"]);
    // A task that says nothing takes the replica's default.
    assert_eq!(report.concurrency(), None);
    assert_eq!(report.retry_policy(), None);
    assert!(report.failure_handler().is_none());
    assert_eq!(report.steps()[0].timeout, Some(DEFAULT_HTTP_TIMEOUT));
}

fn raw(value: serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

#[test]
fn a_payload_is_checked_against_the_input_schema_before_the_run_starts() {
    let tasks = read(VALID).unwrap().into_tasks();
    let media = &tasks[task(&tasks, "media.track")];
    assert!(
        media
            .decode_input(&raw(json!({ "url": "https://x" })))
            .is_ok()
    );
    let reason = media
        .decode_input(&raw(json!({ "url": 42 })))
        .err()
        .unwrap();
    assert!(
        reason.contains("at /url: 42 is not of type \"string\""),
        "{reason}"
    );
    let report = &tasks[task(&tasks, "report.daily")];
    assert!(report.decode_input(&raw(json!(["anything"]))).is_ok());
}

#[test]
fn a_wait_step_waits_its_duration() {
    let tasks = read(VALID).unwrap().into_tasks();
    let media = &tasks[task(&tasks, "media.track")];
    let input = media.decode_input(&raw(json!({ "url": "x" }))).unwrap();
    let run = std::sync::Arc::new(crate::RunInfo {
        id: uuid::Uuid::nil(),
        task: "media.track".into(),
        event: "media.track".into(),
        attempt: 1,
        message_id: "m".into(),
        tenant: None,
        scheduled_for: None,
    });
    let outcome = futures::executor::block_on(media.run_step(
        2,
        run,
        &input,
        Default::default(),
        Default::default(),
    ));
    assert_eq!(
        outcome,
        Ok(crate::StepOutcome::wait_for(
            Duration::from_secs(30),
            Value::Null
        ))
    );
}

#[test]
fn declared_tasks_join_a_registry_unless_they_take_a_built_in_name() {
    let builtin = || Registry::new().register(Task::<Value>::new("report.daily"));
    let Err(clash) = read(VALID).unwrap().register_into(builtin()) else {
        panic!("a declared task took a built-in name");
    };
    assert_eq!(clash.0, ["report.daily"]);
    assert!(
        clash
            .to_string()
            .contains("already has built in: report.daily"),
        "{clash}"
    );

    let registry = Registry::new().register(Task::<Value>::new("video.process"));
    let registry = read(VALID).unwrap().register_into(registry).unwrap();
    let ids: Vec<&str> = registry.tasks().map(|t| t.id()).collect();
    assert_eq!(ids, ["media.track", "report.daily", "video.process"]);
}

#[test]
fn a_declared_task_may_not_take_the_name_of_a_built_in_one() {
    let builtin = Registry::new().register(Task::<Value>::new("report.daily"));
    let Err(mistakes) = parse(VALID, Path::new(FILE), &builtin) else {
        panic!("a declared task took a built-in name");
    };
    let lines: Vec<String> = mistakes.lines().collect();
    assert_eq!(
        lines,
        [
            "tasks.toml:43:8: task `report.daily` is built into this program: give the declared one another name"
        ]
    );
}

#[test]
fn an_unknown_key_is_a_mistake_at_its_line() {
    assert_mistake(
        "[[task]]\nname = \"a\"\nconcurency = 4\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "3:1",
        "unknown key `concurency` in [[task]] (known keys: name, events, concurrency",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"http\"\nurl = \"http://x\"\nurll = \"http://x\"\n",
        "7:1",
        "unknown key `urll`, expected one of `url`",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\ntimeout = \"2s\"\n",
        "7:1",
        "unknown key `timeout` in [[task.step]]",
    );
    assert_mistake(
        "tasks = []\n[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "1:1",
        "unknown key `tasks` in the file",
    );
}

#[test]
fn every_unknown_or_wrong_key_of_a_step_kind_is_found_not_only_the_first() {
    let found = mistakes(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"command\"\nprogram = \"x\"\nprogam = \"y\"\nargs = \"-v\"\nenvs = {}\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with("tasks.toml:7:1: unknown key `progam`"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("tasks.toml:8:8: invalid type"),
        "{found:#?}"
    );
    assert!(
        found[2].starts_with("tasks.toml:9:1: unknown key `envs`"),
        "{found:#?}"
    );
}

#[test]
fn a_missing_key_of_a_step_kind_is_a_mistake_at_the_step() {
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"http\"\n",
        "3:1",
        "missing key `url`",
    );
}

#[test]
fn an_unknown_step_kind_is_a_mistake_at_its_line() {
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"ftp\"\n",
        "5:8",
        "unknown step kind `ftp` (known kinds: http, command, wait, trigger, fan_out)",
    );
}

#[test]
fn a_duplicate_step_name_is_a_mistake_at_the_second_one() {
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "8:8",
        "duplicate step name `s` (first declared at line 4)",
    );
}

#[test]
fn a_step_name_may_repeat_in_another_task_but_a_task_name_may_not() {
    let step = "[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n";
    assert!(
        read(&format!(
            "[[task]]\nname = \"a\"\n{step}[[task]]\nname = \"b\"\n{step}"
        ))
        .is_ok()
    );
    assert_mistake(
        &format!("[[task]]\nname = \"a\"\n{step}[[task]]\nname = \"a\"\n{step}"),
        "8:8",
        "duplicate task name `a` (first declared at line 2)",
    );
}

#[test]
fn a_bad_duration_is_a_mistake_at_its_value() {
    assert_mistake(
        "[[task]]\nname = \"a\"\nmax_duration = \"ten minutes\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "3:16",
        "`max_duration`: \"ten minutes\" is not a duration (such as 30s, 2m, 1h 30m)",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"0s\"\n",
        "6:12",
        "`duration` must be longer than zero",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"http\"\nurl = \"http://x\"\ntimeout = 30\n",
        "7:11",
        "`timeout` must be a string, not integer",
    );
}

#[test]
fn an_event_name_the_protocol_forbids_is_a_mistake_at_its_value() {
    assert_mistake(
        "[[task]]\nname = \"a\"\nevents = [\"ok\", \"not ok\"]\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "3:17",
        "`events`: invalid event name \"not ok\"",
    );
    assert_mistake(
        "[[task]]\nname = \"video..process\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "2:8",
        "`name`: invalid event name",
    );
}

#[test]
fn a_missing_task_or_step_name_is_a_mistake_at_its_table() {
    assert_mistake(
        "[[task]]\nevents = [\"a\"]\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "1:1",
        "missing key `name` in [[task]]",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n\n[[task.step]]\nkind = \"wait\"\nduration = \"1s\"\n",
        "4:1",
        "missing key `name` in [[task.step]]",
    );
}

#[test]
fn a_retry_policy_out_of_range_is_a_mistake_at_the_value() {
    let with_retry = |retry: &str| {
        format!(
            "[[task]]\nname = \"a\"\n[task.retry]\n{retry}\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n"
        )
    };
    assert_mistake(
        &with_retry("max_attempts = 0"),
        "4:16",
        "`max_attempts` must be a whole number from 1 to 1000",
    );
    assert_mistake(
        &with_retry("factor = 0.5"),
        "4:10",
        "`factor` must be a number from 1 to 100",
    );
    assert_mistake(
        &with_retry("min_delay = \"1m\"\nmax_delay = \"10s\""),
        "4:13",
        "`min_delay` (1m) is longer than `max_delay` (10s)",
    );
    assert_mistake(
        &with_retry("jitter = \"yes\""),
        "4:10",
        "`jitter` must be true or false",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"http\"\nurl = \"http://x\"\nretry = { max_attempts = -1 }\n",
        "7:26",
        "`max_attempts` must be a whole number from 1 to 1000",
    );
}

#[test]
fn an_input_schema_that_is_not_a_json_schema_is_a_mistake_at_its_line() {
    assert_mistake(
        "[[task]]\nname = \"a\"\ninput_schema = { type = \"object\", properties = { url = { type = \"strin\" } } }\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n",
        "3:16",
        "`input_schema` is not a valid JSON Schema: at /properties/url/type",
    );
}

/// A directory of its own under the system's temporary one, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "warren-declared-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_schema_file_is_read_next_to_the_task_file_and_an_unreadable_one_is_a_mistake() {
    let dir = TempDir::new("schema");
    std::fs::create_dir(dir.0.join("schemas")).unwrap();
    std::fs::write(
        dir.0.join("schemas/a.json"),
        r#"{"type": "object", "required": ["id"]}"#,
    )
    .unwrap();
    std::fs::write(dir.0.join("schemas/broken.json"), "{ not json").unwrap();
    let file = |schema: &str| {
        format!(
            "[[task]]\nname = \"a\"\ninput_schema_file = \"{schema}\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n"
        )
    };
    let path = dir.0.join("tasks.toml");
    let tasks = parse(&file("schemas/a.json"), &path, &Registry::new())
        .unwrap()
        .into_tasks();
    assert!(tasks[0].decode_input(&raw(json!({ "id": 1 }))).is_ok());
    let reason = tasks[0].decode_input(&raw(json!({}))).err().unwrap();
    assert!(reason.contains("\"id\" is a required property"), "{reason}");

    let lines = |schema: &str| -> Vec<String> {
        parse(&file(schema), &path, &Registry::new())
            .unwrap_err()
            .lines()
            .collect()
    };
    let missing = lines("schemas/missing.json");
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert!(
        missing[0].contains("tasks.toml:3:21: cannot read the schema file"),
        "{missing:#?}"
    );
    assert!(missing[0].contains("schemas/missing.json"), "{missing:#?}");
    let broken = lines("schemas/broken.json");
    assert!(
        broken[0].contains("tasks.toml:3:21: the schema file schemas/broken.json is not JSON"),
        "{broken:#?}"
    );
}

#[test]
fn a_failure_handler_is_an_http_or_command_step() {
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n[task.on_failure]\nkind = \"wait\"\n",
        "8:8",
        "a failure handler is an `http` or `command` step",
    );
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n[task.on_failure]\nkind = \"command\"\nprogram = \"x\"\nstage = \"X\"\n",
        "10:1",
        "unknown key `stage`",
    );
}

#[test]
fn a_task_without_steps_and_a_file_without_tasks_are_mistakes() {
    assert_mistake("[[task]]\nname = \"a\"\n", "1:1", "a task needs steps");
    assert_mistake("# nothing yet\n", "1:1", "no task declared");
}

#[test]
fn a_file_that_is_not_toml_is_a_mistake_at_the_error() {
    assert_mistake(
        "[[task]]\nname = \"a\nkind = 1\n",
        "2:10",
        "invalid basic string",
    );
}

#[test]
fn every_mistake_of_a_file_is_reported_in_file_order() {
    let found = mistakes(
        r#"[[task]]
name = "a"
concurrency = 0

[[task.step]]
name = "s"
kind = "ftp"

[[task.step]]
name = "s"
kind = "wait"
duration = "soon"

[[task]]
name = "a"
events = ["a b"]
[[task.step]]
name = "t"
kind = "http"
url = "http://x"
"#,
    );
    let places: Vec<String> = found
        .iter()
        .map(|line| line.split(": ").next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        places,
        [
            "tasks.toml:3:15",
            "tasks.toml:7:8",
            "tasks.toml:10:8",
            "tasks.toml:12:12",
            "tasks.toml:15:8",
            "tasks.toml:16:11",
        ],
        "{found:#?}"
    );
}

#[test]
fn checking_a_file_finds_what_loading_it_finds_and_counts_its_tasks() {
    let dir = TempDir::new("check");
    let good = dir.0.join("good.toml");
    std::fs::write(&good, VALID).unwrap();
    assert_eq!(check(&good, &Registry::new()).unwrap(), 2);

    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, VALID.replace("kind = \"wait\"", "kind = \"sleep\"")).unwrap();
    let lines = |result: Result<(), LoadError>| -> Vec<String> {
        match result {
            Err(LoadError::Invalid(mistakes)) => mistakes.lines().collect(),
            other => panic!("expected mistakes, got {other:?}"),
        }
    };
    let checked = lines(check(&bad, &Registry::new()).map(|_| ()));
    // Loaded for a replica that has the signing secret in its environment.
    let source = std::fs::read_to_string(&bad).unwrap();
    let loaded = lines(
        parse(&source, &bad, &Registry::new())
            .map(|_| ())
            .map_err(LoadError::Invalid),
    );
    assert_eq!(checked, loaded);
    assert_eq!(checked.len(), 1, "{checked:#?}");
    assert!(
        checked[0].contains("unknown step kind `sleep`"),
        "{checked:#?}"
    );

    let missing = check(&dir.0.join("missing.toml"), &Registry::new()).unwrap_err();
    assert!(
        matches!(&missing, LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{missing}"
    );
}

/// The walk-through's task file is one a new user can copy: it must stay valid.
#[test]
fn the_task_file_of_docs_tasks_md_is_valid() {
    let doc = include_str!("../../../docs/tasks.md");
    let start = doc
        .find("```toml\n")
        .expect("a toml block in docs/tasks.md")
        + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("the end of the block");
    let tasks = file::read(
        &doc[start..end],
        Path::new(FILE),
        &[],
        file::Purpose::Check,
        &|_| None,
    )
    .unwrap_or_else(|mistakes| panic!("{}", mistakes.lines().collect::<Vec<_>>().join("\n")));
    assert_eq!(tasks.len(), 1);
    let steps: Vec<String> = tasks[0].steps().into_iter().map(|s| s.name).collect();
    assert_eq!(steps, ["welcome", "give_them_time", "check_in"]);
}

/// A story chain: a trigger with the default input, one that reads the child's output before
/// it, and a fan-out over a list in that output, with a limit and a timeout.
const CHAIN: &str = r#"
[[task]]
name = "story.chain"

[[task.step]]
name = "transcribe"
kind = "trigger"
task = "story.transcribe"
stage = "TRANSCRIBED"

[[task.step]]
name = "tags"
kind = "trigger"
task = "story.tags"
input = "/outputs/transcribe/output"
timeout = "2m"

[[task.step]]
name = "each_sentence"
kind = "fan_out"
task = "story.sentence"
items = "/outputs/transcribe/output/sentences"
limit = 2
timeout = "10m"
stage = "SENTENCES_DONE"
"#;

/// Runs step `index` of the first task of `source` for `input`, with `outputs` before it.
fn run_step(
    source: &str,
    index: usize,
    input: Value,
    outputs: &[(&str, Value)],
) -> Result<crate::StepOutcome, crate::StepError> {
    let tasks = read(source).unwrap().into_tasks();
    let task = &tasks[0];
    let input = task.decode_input(&raw(input)).unwrap();
    let run = std::sync::Arc::new(crate::RunInfo {
        id: uuid::Uuid::nil(),
        task: task.id().into(),
        event: task.id().into(),
        attempt: 1,
        message_id: "m".into(),
        tenant: None,
        scheduled_for: None,
    });
    let outputs = outputs
        .iter()
        .map(|(step, output)| ((*step).to_owned(), output.clone()))
        .collect();
    futures::executor::block_on(task.run_step(
        index,
        run,
        &input,
        std::sync::Arc::new(outputs),
        Default::default(),
    ))
}

fn children_of(outcome: Result<crate::StepOutcome, crate::StepError>) -> crate::children::Children {
    match outcome {
        Ok(crate::StepOutcome::WaitForChildren(children)) => children,
        other => panic!("expected the step to wait for children, got {other:?}"),
    }
}

/// The inputs of the children, as JSON.
fn inputs(children: &crate::children::Children) -> Vec<Value> {
    children
        .runs
        .iter()
        .map(|child| serde_json::from_slice(&child.body).unwrap())
        .collect()
}

fn succeeded(output: Value) -> Value {
    json!({ "run_id": "r-1", "task": "story.transcribe", "message_id": "x", "status": "succeeded",
            "output": output, "timed_out": false })
}

#[test]
fn trigger_and_fan_out_steps_are_read_with_their_stages() {
    let tasks = read(CHAIN).unwrap().into_tasks();
    let steps = tasks[0].steps();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["transcribe", "tags", "each_sentence"]);
    assert_eq!(steps[0].stage.as_deref(), Some("TRANSCRIBED"));
    assert_eq!(steps[2].stage.as_deref(), Some("SENTENCES_DONE"));
    // Starting children takes no time: the step's own timeout is not the wait's.
    assert_eq!(steps[1].timeout, None);
    assert_eq!(steps[1].retry, None);
}

#[test]
fn a_trigger_without_input_gives_the_child_the_runs_whole_input() {
    let children = children_of(run_step(CHAIN, 0, json!({ "text": "Hi. Bye." }), &[]));
    assert!(children.single);
    assert_eq!(children.runs[0].task(), "story.transcribe");
    assert_eq!(inputs(&children), [json!({ "text": "Hi. Bye." })]);
    assert_eq!(children.timeout, None);
}

#[test]
fn a_trigger_passes_on_what_its_input_pointer_names_and_waits_its_timeout() {
    let transcript = json!({ "sentences": ["Hi.", "Bye."] });
    let children = children_of(run_step(
        CHAIN,
        1,
        json!({}),
        &[("transcribe", succeeded(transcript.clone()))],
    ));
    assert!(children.single);
    assert_eq!(children.runs[0].task(), "story.tags");
    assert_eq!(inputs(&children), [transcript]);
    assert_eq!(children.timeout, Some(Duration::from_secs(120)));
}

#[test]
fn a_trigger_that_reads_the_output_of_a_failed_child_fails_with_child_failed() {
    let dead = json!({ "run_id": "0193-dead", "task": "story.transcribe", "message_id": "x",
                       "status": "dead", "timed_out": false,
                       "error": { "code": "not_found", "message": "no such story" } });
    let err = run_step(CHAIN, 1, json!({}), &[("transcribe", dead)]).unwrap_err();
    assert_eq!(err.code, "child_failed");
    assert_eq!(err.class, crate::ErrorClass::Fatal);
    assert!(
        err.message.contains(
            "child run 0193-dead of task story.transcribe (started by step `transcribe`), which is dead: not_found: no such story"
        ),
        "{}",
        err.message
    );
    let timed_out = json!({ "run_id": "0193-slow", "task": "story.transcribe", "message_id": "x",
                            "status": "running", "timed_out": true });
    let err = run_step(CHAIN, 1, json!({}), &[("transcribe", timed_out)]).unwrap_err();
    assert_eq!(err.code, "child_failed");
    assert!(
        err.message
            .contains("had not ended when the wait timed out (running)"),
        "{}",
        err.message
    );
}

#[test]
fn a_child_input_that_is_not_an_object_is_a_clear_non_retryable_error() {
    let err = run_step(
        CHAIN,
        1,
        json!({}),
        &[("transcribe", succeeded(json!(["Hi."])))],
    )
    .unwrap_err();
    assert_eq!(err.code, "invalid_child");
    assert_eq!(err.class, crate::ErrorClass::Fatal);
    assert_eq!(
        err.message,
        "`input` \"/outputs/transcribe/output\" is a list: a child's input must be a JSON object"
    );
    let err = run_step(
        CHAIN,
        1,
        json!({}),
        &[("transcribe", succeeded(Value::Null))],
    )
    .unwrap_err();
    assert_eq!(err.code, "invalid_child");
}

#[test]
fn a_fan_out_starts_a_child_per_item_wrapping_items_that_are_not_objects() {
    let transcript = json!({ "sentences": ["Hi.", { "text": "Bye." }, 3] });
    let children = children_of(run_step(
        CHAIN,
        2,
        json!({}),
        &[
            ("transcribe", succeeded(transcript)),
            ("tags", succeeded(json!({}))),
        ],
    ));
    assert!(!children.single);
    assert_eq!(children.max_running, Some(2));
    assert_eq!(children.timeout, Some(Duration::from_secs(600)));
    assert!(children.runs.iter().all(|c| c.task() == "story.sentence"));
    assert_eq!(
        inputs(&children),
        [
            json!({ "item": "Hi." }),
            json!({ "text": "Bye." }),
            json!({ "item": 3 })
        ]
    );
}

#[test]
fn a_fan_out_over_something_that_is_not_a_list_fails_for_good() {
    let err = run_step(
        CHAIN,
        2,
        json!({}),
        &[
            ("transcribe", succeeded(json!({ "sentences": "Hi. Bye." }))),
            ("tags", succeeded(json!({}))),
        ],
    )
    .unwrap_err();
    assert_eq!(err.code, "invalid_child");
    assert_eq!(
        err.message,
        "`items` \"/outputs/transcribe/output/sentences\" is a string, not a list"
    );
    let err = run_step(
        CHAIN,
        2,
        json!({}),
        &[
            ("transcribe", succeeded(json!({}))),
            ("tags", succeeded(json!({}))),
        ],
    )
    .unwrap_err();
    assert_eq!(err.code, "invalid_child");
    assert!(
        err.message.contains(
            "points at nothing: /outputs/transcribe/output (an object) has no \"sentences\""
        ),
        "{}",
        err.message
    );
}

#[test]
fn a_trigger_of_a_task_the_file_does_not_declare_is_not_a_mistake_of_the_file() {
    // Another file, or the program, may have it: the step fails with `unknown_task` when it
    // runs on a fleet that has no such task.
    let tasks = read(CHAIN).unwrap();
    assert_eq!(tasks.names(), ["story.chain"]);
}

fn one_step(step: &str) -> String {
    format!(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"first\"\nkind = \"wait\"\nduration = \"1s\"\n[[task.step]]\nname = \"s\"\n{step}"
    )
}

#[test]
fn a_trigger_or_fan_out_without_its_task_or_items_is_a_mistake_at_the_step() {
    assert_mistake(
        &one_step("kind = \"trigger\"\n"),
        "7:1",
        "missing key `task` in [[task.step]]",
    );
    let found = mistakes(&one_step("kind = \"fan_out\"\n"));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].contains("7:1: missing key `task`"), "{found:#?}");
    assert!(found[1].contains("7:1: missing key `items`"), "{found:#?}");
}

#[test]
fn a_key_a_trigger_or_fan_out_does_not_have_is_a_mistake_at_its_line() {
    assert_mistake(
        &one_step("kind = \"trigger\"\ntask = \"b\"\nlimit = 2\n"),
        "11:1",
        "unknown key `limit` in [[task.step]] (known keys: name, kind, stage, task, input, timeout)",
    );
    assert_mistake(
        &one_step("kind = \"fan_out\"\ntask = \"b\"\nitems = \"/input/ids\"\nurl = \"http://x\"\n"),
        "12:1",
        "unknown key `url` in [[task.step]] (known keys: name, kind, stage, task, items, limit, timeout)",
    );
    assert_mistake(
        &one_step("kind = \"trigger\"\ntask = \"b\"\nretry = { max_attempts = 2 }\n"),
        "11:1",
        "unknown key `retry`",
    );
}

#[test]
fn a_wrong_value_of_a_trigger_or_fan_out_is_a_mistake_at_the_value() {
    assert_mistake(
        &one_step("kind = \"trigger\"\ntask = \"not a task\"\n"),
        "10:8",
        "`task`: invalid event name \"not a task\"",
    );
    assert_mistake(
        &one_step("kind = \"trigger\"\ntask = \"b\"\ntimeout = \"soon\"\n"),
        "11:11",
        "`timeout`: \"soon\" is not a duration",
    );
    assert_mistake(
        &one_step("kind = \"fan_out\"\ntask = \"b\"\nitems = \"/input/ids\"\nlimit = 0\n"),
        "12:9",
        "`limit` must be a whole number from 1 to 100000",
    );
    assert_mistake(
        &one_step("kind = \"fan_out\"\ntask = \"b\"\nitems = [\"/input/ids\"]\n"),
        "11:9",
        "`items` must be a string, not array",
    );
}

#[test]
fn a_pointer_that_names_no_earlier_step_is_a_mistake_at_its_value() {
    assert_mistake(
        &one_step("kind = \"trigger\"\ntask = \"b\"\ninput = \"input/story\"\n"),
        "11:9",
        "`input` must be a JSON pointer (RFC 6901) such as \"/input\" or \"/outputs/STEP/output\", not \"input/story\"",
    );
    assert_mistake(
        &one_step("kind = \"trigger\"\ntask = \"b\"\ninput = \"/outputs/s/output\"\n"),
        "11:9",
        "`input`: \"/outputs/s/output\" reads the output of `s`, which is not a step before this one (the steps before it: first)",
    );
    assert_mistake(
        &one_step("kind = \"fan_out\"\ntask = \"b\"\nitems = \"/story/ids\"\n"),
        "11:9",
        "`items`: \"/story/ids\" points into neither /input (the run's input) nor /outputs/STEP",
    );
}

#[test]
fn a_failure_handler_cannot_start_children() {
    assert_mistake(
        "[[task]]\nname = \"a\"\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n[task.on_failure]\nkind = \"trigger\"\ntask = \"b\"\n",
        "8:8",
        "a failure handler is an `http` or `command` step: a run that died starts no children",
    );
}

#[test]
fn checking_a_file_reads_trigger_and_fan_out_steps_as_running_it_does() {
    let dir = TempDir::new("check-children");
    let path = dir.0.join("tasks.toml");
    std::fs::write(&path, CHAIN).unwrap();
    assert_eq!(check(&path, &Registry::new()).unwrap(), 1);
}

/// The child-runs example of docs/tasks.md is valid as it is.
#[test]
fn the_child_runs_example_of_docs_tasks_md_is_valid() {
    let doc = include_str!("../../../docs/tasks.md");
    let block = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("kind = \"trigger\""))
        .expect("a toml block with a trigger step in docs/tasks.md");
    let tasks = file::read(block, Path::new(FILE), &[], file::Purpose::Check, &|_| None)
        .unwrap_or_else(|mistakes| panic!("{}", mistakes.lines().collect::<Vec<_>>().join("\n")));
    let steps: Vec<String> = tasks[0].steps().into_iter().map(|s| s.name).collect();
    assert_eq!(steps, ["transcribe", "tags", "narrate", "publish"]);
}

const SCHEDULED: &str = r#"
[[task]]
name = "report.nightly"

[[task.step]]
name = "pause"
kind = "wait"
duration = "1s"

[[task.schedule]]
name = "paris"
cron = "0 2 * * *"
timezone = "Europe/Paris"
payload = { report = "sales", days = 1 }
missed = "all"
catch_up_limit = 3

[[task.schedule]]
every = "5m"
"#;

#[test]
fn a_task_file_declares_schedules_with_cron_or_every() {
    let tasks = read(SCHEDULED).unwrap().into_tasks();
    let schedules = tasks[0].schedules();
    assert_eq!(
        schedules,
        [
            crate::schedule::Schedule::cron("0 2 * * *")
                .unwrap()
                .timezone("Europe/Paris")
                .unwrap()
                .payload(json!({ "report": "sales", "days": 1 }))
                .missed(warren_shared::schedule::Missed::All)
                .catch_up_limit(3)
                .named("paris"),
            crate::schedule::Schedule::every("5m").unwrap(),
        ]
    );
    let named = schedules[0].definition("report.nightly", 0).unwrap();
    assert_eq!(named.name, "report.nightly/paris");
    let numbered = schedules[1].definition("report.nightly", 1).unwrap();
    assert_eq!(numbered.name, "report.nightly/1");
    assert_eq!(numbered.every_secs, Some(300));
}

#[test]
fn a_bad_schedule_is_a_mistake_at_its_line() {
    let with = |schedule: &str| {
        format!(
            "[[task]]\nname = \"t\"\n[[task.step]]\nname = \"w\"\nkind = \"wait\"\nduration = \"1s\"\n[[task.schedule]]\n{schedule}\n"
        )
    };
    assert_mistake(
        &with("cron = \"0 25 * * *\""),
        "8:8",
        "`cron`: invalid cron expression \"0 25 * * *\": hours: 25 is outside 0-23",
    );
    assert_mistake(
        &with("cron = \"0 2 * * *\"\ntimezone = \"Europe/Pariss\""),
        "9:12",
        "unknown time zone",
    );
    assert_mistake(
        &with("every = \"soon\""),
        "8:9",
        "`every`: invalid interval",
    );
    assert_mistake(
        &with("every = \"5m\"\nmissed = \"sometimes\""),
        "9:10",
        "invalid missed policy",
    );
    assert_mistake(
        &with("every = \"5m\"\npayload = [1]"),
        "9:11",
        "`payload` must be a table",
    );
    assert_mistake(
        &with("every = \"5m\"\ncron = \"* * * * *\""),
        "8:9",
        "not both",
    );
    assert_mistake(
        &with("name = \"x\""),
        "7:1",
        "missing key `cron` or `every`",
    );
    assert_mistake(&with("every = \"5m\"\nat = 3"), "9:1", "unknown key `at`");
}

#[test]
fn a_task_file_limits_a_tasks_starts_as_a_whole_per_tenant_or_per_input_value() {
    let source = r#"
[[task]]
name = "api.call"
rate_limit = { limit = 20 }
[[task.step]]
name = "call"
kind = "wait"
duration = "1s"

[[task]]
name = "crm.sync"
rate_limit = { limit = 30, per = "minute", key = "/crmHost" }
[[task.step]]
name = "sync"
kind = "wait"
duration = "1s"

[[task]]
name = "report.render"
rate_limit = { limit = 5, key = "tenant" }
[[task.step]]
name = "render"
kind = "wait"
duration = "1s"
"#;
    let tasks = read(source).unwrap().into_tasks();
    use crate::rate_limit::RateLimit;
    assert_eq!(
        TaskRunner::rate_limit(&tasks[task(&tasks, "api.call")]),
        Some(RateLimit::per_second(20))
    );
    assert_eq!(
        TaskRunner::rate_limit(&tasks[task(&tasks, "crm.sync")]),
        Some(RateLimit::per_minute(30).per_input("/crmHost"))
    );
    assert_eq!(
        TaskRunner::rate_limit(&tasks[task(&tasks, "report.render")]),
        Some(RateLimit::per_second(5).per_tenant())
    );
}

#[test]
fn a_rate_limit_mistake_is_reported_at_its_place() {
    let task = |limit: &str| {
        format!(
            "[[task]]\nname = \"t\"\nrate_limit = {limit}\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n"
        )
    };
    assert_mistake(&task("{ per = \"second\" }"), "3:14", "`limit`");
    assert_mistake(&task("{ limit = 0 }"), "3:24", "whole number from 1");
    assert_mistake(
        &task("{ limit = 5, per = \"hour\" }"),
        "3:33",
        "\"second\" or \"minute\"",
    );
    assert_mistake(
        &task("{ limit = 5, key = \"host\" }"),
        "3:33",
        "JSON pointer",
    );
    assert_mistake(&task("{ limit = 5, burst = 2 }"), "3:27", "burst");
}

#[test]
fn a_task_file_limits_runs_of_one_key_at_once_per_tenant_per_input_value_or_for_the_task() {
    let with = |key: &str| {
        format!(
            "[[task]]\nname = \"t\"\nconcurrency_key = {key}\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n"
        )
    };
    use crate::concurrency_key::ConcurrencyKey;
    let key_of = |key: &str| {
        let tasks = read(&with(key)).unwrap().into_tasks();
        TaskRunner::concurrency_key(&tasks[task(&tasks, "t")])
    };
    assert_eq!(
        key_of("{ limit = 5, key = \"tenant\" }"),
        Some(ConcurrencyKey::per_tenant(5))
    );
    assert_eq!(
        key_of("{ limit = 2, key = \"/userId\" }"),
        Some(ConcurrencyKey::per_input("/userId", 2))
    );
    assert_eq!(
        key_of("{ limit = 10, key = \"task\" }"),
        Some(ConcurrencyKey::whole_task(10))
    );
    assert_mistake(&with("{ limit = 5 }"), "3:19", "`key`");
    assert_mistake(
        &with("{ limit = 0, key = \"tenant\" }"),
        "3:29",
        "whole number from 1",
    );
    assert_mistake(
        &with("{ limit = 5, key = \"user\" }"),
        "3:38",
        "JSON pointer",
    );
    assert_mistake(
        &with("{ limit = 5, key = \"tenant\", per = \"second\" }"),
        "3:48",
        "unknown key `per`",
    );
}

#[test]
fn a_task_file_limits_a_steps_starts_on_its_own() {
    let source = r#"
[[task]]
name = "crm.push"
[[task.step]]
name = "prepare"
kind = "command"
program = "true"
[[task.step]]
name = "push"
kind = "http"
url = "http://127.0.0.1:9/push"
rate_limit = { limit = 10, key = "tenant" }
"#;
    let tasks = read(source).unwrap().into_tasks();
    use crate::rate_limit::RateLimit;
    let steps = TaskRunner::steps(&tasks[task(&tasks, "crm.push")]);
    assert_eq!(steps[0].rate_limit, None);
    assert_eq!(
        steps[1].rate_limit,
        Some(RateLimit::per_second(10).per_tenant())
    );
}

#[test]
fn a_task_opts_in_to_priority_lanes_and_a_wrong_value_is_a_mistake_at_its_place() {
    let declare = |name: &str, lanes: &str| {
        format!(
            "[[task]]\nname = \"{name}\"\n{lanes}\n[[task.step]]\nname = \"s\"\nkind = \"wait\"\nduration = \"1s\"\n"
        )
    };
    let file = format!(
        "{}{}",
        declare("urgent", "priority_lanes = true"),
        declare("plain", "")
    );
    let tasks = read(&file).unwrap().into_tasks();
    assert!(TaskRunner::priority_lanes(&tasks[task(&tasks, "urgent")]));
    assert!(!TaskRunner::priority_lanes(&tasks[task(&tasks, "plain")]));
    assert_mistake(
        &declare("t", "priority_lanes = \"yes\""),
        "3:18",
        "`priority_lanes` must be true or false",
    );
}
