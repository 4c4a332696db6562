//! Per-run logs on the real broker and database: what Rust steps (`ctx.log`), HTTP steps (a
//! reply's or an error body's `logs`) and command steps (standard error) write is stored with
//! the step's checkpoint or failure, per step and attempt, in order; a run keeps its newest
//! lines and counts the others; `warren runs show` prints them; a prune deletes them.

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use warren_producer::PublishOptions;
use warren_shared::store::logs::{self, MAX_LINE_BYTES, RunLogs};
use warren_shared::store::retention::{self, Prune};
use warren_tests::TestEnv;
use warren_worker::steps::command::{CommandStep, CommandStepConfig};
use warren_worker::steps::external;
use warren_worker::steps::http::{HttpStep, HttpStepConfig, Secret};
use warren_worker::{
    Registry, RetryPolicy, StepContext, StepError, StepOutcome, Task, TaskRunner, step,
};

/// Retries at once (delays under half a second are not held), up to `max_attempts`.
fn immediate_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        min_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        factor: 1.0,
        jitter: false,
    }
}

async fn publish(env: &TestEnv, event: &str, id: &str) {
    env.producer()
        .await
        .publish(
            event,
            &json!({}),
            PublishOptions {
                message_id: Some(id.into()),
                ..PublishOptions::default()
            },
        )
        .await
        .unwrap();
}

/// The run's logs, as `(step, attempt, line)`, and how many were dropped.
async fn logs_of(env: &TestEnv, run: uuid::Uuid) -> (Vec<(String, i32, String)>, i64, RunLogs) {
    let client = env.pool.get().await.unwrap();
    let logs = logs::run_logs(&client, run).await.unwrap();
    let lines = logs
        .lines
        .iter()
        .map(|l| (l.step.clone(), l.attempt, l.line.clone()))
        .collect();
    (lines, logs.dropped, logs)
}

fn owned(lines: &[(&str, i32, &str)]) -> Vec<(String, i32, String)> {
    lines
        .iter()
        .map(|(s, a, l)| ((*s).to_owned(), *a, (*l).to_owned()))
        .collect()
}

/// A Rust step's lines are stored per step and attempt, in the order written, and numbered
/// from 1; an attempt that failed keeps its lines beside the retry's; a run that dies keeps the
/// lines of the step that killed it.
#[tokio::test(flavor = "multi_thread")]
async fn rust_steps_lines_are_kept_per_step_and_attempt_in_order_failed_attempts_included() {
    let env = TestEnv::new().await;
    let task = Task::<Value>::new("logs.rust")
        .retry(immediate_retries(3))
        .step(step("fetch", |ctx: StepContext<Value>| async move {
            ctx.log(format!("fetching, attempt {}", ctx.attempt));
            if ctx.attempt == 1 {
                ctx.log("upstream answered 503");
                return Err(StepError::retryable("upstream_error", "503"));
            }
            ctx.log("fetched 3 pages");
            Ok(StepOutcome::next(json!({"pages": 3})))
        }))
        .step(step("parse", |ctx: StepContext<Value>| async move {
            // From elsewhere than the step's own future: a task it spawned.
            let log = ctx.logger();
            tokio::spawn(async move { log.line("parsed 3 items") })
                .await
                .unwrap();
            Ok(StepOutcome::next(Value::Null))
        }));
    let doomed = Task::<Value>::new("logs.doomed")
        .retry(immediate_retries(3))
        .step(step("check", |ctx: StepContext<Value>| async move {
            ctx.log("checking the clip");
            ctx.log("the clip has no video stream");
            Err(StepError::fatal("invalid_input", "no video"))
        }));
    let worker = env
        .start_worker(Registry::new().register(task).register(doomed))
        .await;
    publish(&env, "logs.rust", "rust-1").await;
    publish(&env, "logs.doomed", "doomed-1").await;

    let run = env.wait_finished("rust-1").await;
    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    assert_eq!(run.summary.attempt, 2);
    let (lines, dropped, stored) = logs_of(&env, run.summary.id).await;
    assert_eq!(
        lines,
        owned(&[
            ("fetch", 1, "fetching, attempt 1"),
            ("fetch", 1, "upstream answered 503"),
            ("fetch", 2, "fetching, attempt 2"),
            ("fetch", 2, "fetched 3 pages"),
            ("parse", 2, "parsed 3 items"),
        ])
    );
    assert_eq!(dropped, 0);
    let seqs: Vec<i64> = stored.lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(
        stored.lines.windows(2).all(|w| w[0].at <= w[1].at),
        "{stored:#?}"
    );

    let dead = env.wait_finished("doomed-1").await;
    assert_eq!(dead.summary.status, "dead", "{dead:#?}");
    let (lines, _, _) = logs_of(&env, dead.summary.id).await;
    assert_eq!(
        lines,
        owned(&[
            ("check", 1, "checking the clip"),
            ("check", 1, "the clip has no video stream"),
        ])
    );
    worker.shutdown().await.unwrap();
}

/// A run keeps its newest lines (here 5): older ones are dropped as new ones come, a step that
/// writes more than the run keeps keeps its last ones, and the number dropped is counted; a
/// line over 4 KiB is cut with a marker. `warren runs show` prints the lines after the
/// timeline, and its JSON has them; a prune deletes them with their run.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_keeps_its_newest_lines_counts_the_dropped_ones_shows_them_and_prune_deletes_them() {
    let env = TestEnv::new().await;
    let lines = |step: &'static str, count: usize| {
        step_logging(step, (1..=count).map(|n| format!("{step} line {n}")))
    };
    let long = "x".repeat(10_000);
    let task = Task::<Value>::new("logs.bounded")
        .step(lines("one", 4))
        .step(lines("two", 3))
        .step(step_logging(
            "three",
            (1..=7)
                .map(|n| format!("three line {n}"))
                .chain([long.clone()]),
        ));
    let mut config = env.worker_config();
    config.max_log_lines = 5;
    let worker = env
        .start_worker_with(config, Registry::new().register(task))
        .await;
    publish(&env, "logs.bounded", "bounded-1").await;
    let run = env.wait_finished("bounded-1").await;
    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    worker.shutdown().await.unwrap();

    let (lines, dropped, stored) = logs_of(&env, run.summary.id).await;
    assert_eq!(dropped, 10, "4 + 3 + 8 lines written, 5 kept");
    let texts: Vec<&str> = lines.iter().map(|(_, _, l)| l.as_str()).collect();
    assert_eq!(
        &texts[..4],
        [
            "three line 4",
            "three line 5",
            "three line 6",
            "three line 7"
        ]
    );
    let cut = &stored.lines[4];
    assert!(cut.line.len() <= MAX_LINE_BYTES, "{}", cut.line.len());
    assert!(
        cut.line.starts_with("xxxx") && cut.line.ends_with("… [truncated, 10000 bytes]"),
        "{}",
        &cut.line[4000..]
    );
    let seqs: Vec<i64> = stored.lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [11, 12, 13, 14, 15]);

    // What an operator sees.
    let shown = env
        .warren()
        .args(["runs", "show", "bounded-1"])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout);
    let timeline = text.find("timeline").expect("a timeline");
    let logs_at = text.find("\nlogs\n").expect("a logs section");
    assert!(timeline < logs_at, "{text}");
    let section = &text[logs_at..];
    assert!(section.contains("(10 older line(s) dropped"), "{section}");
    let four = section.find("three line 4").expect("line 4");
    let seven = section.find("three line 7").expect("line 7");
    assert!(four < seven, "{section}");
    assert!(!section.contains("three line 3"), "{section}");
    assert!(section.contains("truncated, 10000 bytes"), "{section}");
    let json = env
        .warren()
        .args(["runs", "show", "bounded-1", "--json"])
        .output()
        .unwrap();
    assert!(json.status.success(), "{json:?}");
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["logs"]["dropped"], 10);
    assert_eq!(json["logs"]["lines"][0]["line"], "three line 4");
    assert_eq!(json["logs"]["lines"][0]["step"], "three");
    assert_eq!(json["logs"]["lines"][0]["attempt"], 1);
    assert_eq!(json["logs"]["lines"][0]["seq"], 11);

    // Retention: the run's lines go with it.
    let mut client = env.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE runs SET created_at = now() - interval '40 days',
                    finished_at = now() - interval '40 days' WHERE id = $1",
            &[&run.summary.id],
        )
        .await
        .unwrap();
    let pruned = retention::prune(
        &mut client,
        &Prune::older_than(Duration::from_secs(30 * 24 * 3600)),
        &|| true,
    )
    .await
    .unwrap();
    assert_eq!((pruned.runs, pruned.log_lines), (1, 5));
    let left: i64 = client
        .query_one("SELECT count(*) FROM run_logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// A step that logs each of `lines`.
fn step_logging(
    name: &'static str,
    lines: impl Iterator<Item = String>,
) -> warren_worker::StepDef<Value> {
    let lines: Arc<Vec<String>> = Arc::new(lines.collect());
    step(name, move |ctx: StepContext<Value>| {
        let lines = Arc::clone(&lines);
        async move {
            for line in lines.iter() {
                ctx.log(line.clone());
            }
            Ok(StepOutcome::next(Value::Null))
        }
    })
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An HTTP step's reply `logs` are its run's lines, and so are the `logs` of an error body:
/// the failing step's lines are there to read.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_steps_reply_and_error_body_logs_are_stored() {
    let env = TestEnv::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback(|uri: Uri| async move {
        match uri.path() {
            "/ok" => reply(
                200,
                json!({"output": {"words": 12}, "logs": ["downloaded 3 MB", "transcribed 12 words"]}),
            ),
            _ => reply(
                422,
                json!({"error": {"code": "bad_clip", "message": "no audio", "retryable": false},
                       "logs": ["probing the clip", "no audio stream"]}),
            ),
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = |name: &str, path: &str| {
        let config = HttpStepConfig::new(format!("{base}{path}"));
        let step = HttpStep::with_secret(config, Secret::new(b"logs-secret")).unwrap();
        external(name, Arc::new(step))
    };
    let ok = Task::<Value>::new("logs.http").step(http("transcribe", "/ok"));
    let failing = Task::<Value>::new("logs.http_fail")
        .retry(immediate_retries(3))
        .step(http("probe", "/fail"));
    let worker = env
        .start_worker(Registry::new().register(ok).register(failing))
        .await;
    publish(&env, "logs.http", "http-ok").await;
    publish(&env, "logs.http_fail", "http-fail").await;

    let run = env.wait_finished("http-ok").await;
    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    let (lines, _, _) = logs_of(&env, run.summary.id).await;
    assert_eq!(
        lines,
        owned(&[
            ("transcribe", 1, "downloaded 3 MB"),
            ("transcribe", 1, "transcribed 12 words"),
        ])
    );
    let run = env.wait_finished("http-fail").await;
    assert_eq!(run.summary.status, "dead", "{run:#?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("bad_clip"));
    let (lines, _, _) = logs_of(&env, run.summary.id).await;
    assert_eq!(
        lines,
        owned(&[
            ("probe", 1, "probing the clip"),
            ("probe", 1, "no audio stream"),
        ])
    );
    worker.shutdown().await.unwrap();
}

/// Each line a command step writes on standard error is a line of its run's log, whether it
/// succeeds or fails; a failure still takes its code and message from standard error's last
/// line.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_steps_standard_error_lines_are_stored_and_still_explain_its_failure() {
    let env = TestEnv::new().await;
    let shell = |name: &str, script: &str| {
        let config = CommandStepConfig {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            max_output_bytes: None,
            retry_exit_code: None,
        };
        external(name, Arc::new(CommandStep::new(config).unwrap()))
    };
    let ok = Task::<Value>::new("logs.cmd").step(shell(
        "probe",
        "echo 'probing a.mp4' >&2; echo >&2; printf 'found 2 streams' >&2; echo '{\"streams\": 2}'",
    ));
    let failing = Task::<Value>::new("logs.cmd_fail")
        .retry(immediate_retries(3))
        .step(shell(
            "encode",
            r#"echo 'warming up' >&2
echo '{"code": "bad_clip", "message": "no video stream"}' >&2
exit 3"#,
        ));
    let events = [ok.id().to_owned(), failing.id().to_owned()];
    let worker = env
        .start_worker(Registry::new().register(ok).register(failing))
        .await;
    publish(&env, &events[0], "cmd-ok").await;
    publish(&env, &events[1], "cmd-fail").await;

    let run = env.wait_finished("cmd-ok").await;
    assert_eq!(run.summary.status, "succeeded", "{run:#?}");
    assert_eq!(run.steps[0].output, Some(json!({"streams": 2})));
    let (lines, _, _) = logs_of(&env, run.summary.id).await;
    assert_eq!(
        lines,
        owned(&[
            ("probe", 1, "probing a.mp4"),
            ("probe", 1, "found 2 streams")
        ])
    );

    let run = env.wait_finished("cmd-fail").await;
    assert_eq!(run.summary.status, "dead", "{run:#?}");
    assert_eq!(run.summary.error_code.as_deref(), Some("bad_clip"));
    assert_eq!(run.error_message.as_deref(), Some("no video stream"));
    let (lines, _, _) = logs_of(&env, run.summary.id).await;
    assert_eq!(
        lines,
        owned(&[
            ("encode", 1, "warming up"),
            (
                "encode",
                1,
                r#"{"code": "bad_clip", "message": "no video stream"}"#
            ),
        ])
    );
    worker.shutdown().await.unwrap();
}

/// Many runs' steps committed together (the set-based form of a busy replica's group commit)
/// each get their own lines, numbered from 1.
#[tokio::test(flavor = "multi_thread")]
async fn runs_committed_together_each_keep_their_own_lines() {
    let env = TestEnv::new().await;
    let task = Task::<Value>::new("logs.many").concurrency(100).step(step(
        "only",
        |ctx: StepContext<Value>| async move {
            let id = ctx.run().message_id.clone();
            ctx.log(format!("{id} starts"));
            ctx.log(format!("{id} ends"));
            Ok(StepOutcome::next(Value::Null))
        },
    ));
    let worker = env.start_worker(Registry::new().register(task)).await;
    let producer = env.producer().await;
    let payload = json!({});
    let published = (0..300).map(|n| {
        producer.publish(
            "logs.many",
            &payload,
            PublishOptions {
                message_id: Some(format!("many-{n}")),
                ..PublishOptions::default()
            },
        )
    });
    for published in futures::future::join_all(published).await {
        published.unwrap();
    }
    env.wait_for_finished_runs(300, Duration::from_secs(60))
        .await;
    worker.shutdown().await.unwrap();

    let client = env.pool.get().await.unwrap();
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM runs r WHERE (
                 SELECT array_agg(l.seq || ' ' || l.line ORDER BY l.seq) FROM run_logs l
                 WHERE l.run_id = r.id
             ) IS DISTINCT FROM ARRAY['1 ' || r.message_id || ' starts', '2 ' || r.message_id || ' ends']",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "runs whose lines are not their own two");
    let total: i64 = client
        .query_one("SELECT count(*) FROM run_logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 600);
}

/// The store's append, on several runs in one transaction: each run's lines numbered after its
/// own last, the lines a step dropped before storing still numbered, and each run's lines
/// beyond its newest `keep` deleted.
#[tokio::test(flavor = "multi_thread")]
async fn one_append_numbers_and_bounds_each_runs_lines() {
    let env = TestEnv::new().await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let lines = |texts: &[&str]| -> Vec<logs::Logged> {
        texts
            .iter()
            .map(|t| logs::Logged {
                at: chrono::Utc::now(),
                line: (*t).to_owned(),
            })
            .collect()
    };
    let mut client = env.pool.get().await.unwrap();
    let first = lines(&["a1", "a2", "a3"]);
    let tx = client.transaction().await.unwrap();
    logs::append(
        &tx,
        &[logs::NewLines {
            run: a,
            step: "s",
            attempt: 1,
            skipped: 0,
            lines: &first,
            keep: 4,
        }],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (more_a, more_b) = (lines(&["a6", "a7", "a8", "a9"]), lines(&["b1"]));
    let tx = client.transaction().await.unwrap();
    logs::append(
        &tx,
        &[
            logs::NewLines {
                run: a,
                step: "t",
                attempt: 2,
                // It wrote a4 to a9, and kept its newest 4.
                skipped: 2,
                lines: &more_a,
                keep: 4,
            },
            logs::NewLines {
                run: b,
                step: "s",
                attempt: 1,
                skipped: 0,
                lines: &more_b,
                keep: 4,
            },
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let of = |run| {
        let client = &client;
        async move {
            let logs = logs::run_logs(client, run).await.unwrap();
            let lines: Vec<(i64, String)> =
                logs.lines.into_iter().map(|l| (l.seq, l.line)).collect();
            (lines, logs.dropped)
        }
    };
    assert_eq!(
        of(a).await,
        (
            ["a6", "a7", "a8", "a9"]
                .iter()
                .zip(6..)
                .map(|(l, n)| (n, (*l).to_owned()))
                .collect::<Vec<_>>(),
            5
        ),
        "9 lines logged, the newest 4 kept"
    );
    assert_eq!(of(b).await, (vec![(1, "b1".to_owned())], 0));
    assert_eq!(of(uuid::Uuid::new_v4()).await, (vec![], 0));
}
