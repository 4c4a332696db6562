//! `examples/buster` end to end: its step server (`steps.js`, with Buster's own tables in this
//! test's database), its stand-in CRM (`crm.js`) and the real `warren worker --tasks
//! examples/buster/tasks.toml` on the real broker and database. The schedules the file
//! declares, the daily report fired for a chosen slot, the usage and health tasks fired once
//! each, and a burst of CRM calls held to the task's rate limit, the CRM's 429s retried.

use chrono::{DateTime, Duration as Span, DurationRound, NaiveDate, Timelike, Utc};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use uuid::Uuid;
use warren_producer::PublishOptions;
use warren_shared::store::{RunDetail, schedules};
use warren_tests::{TestEnv, TestWorker, publish_when_declared};

const SECRET: &str = "it-secret-for-buster";
/// Where tasks.toml says the steps are (steps.js's default port).
const DOCUMENTED_STEPS: &str = "http://127.0.0.1:8790/";
const TASKS: [&str; 4] = [
    "buster.report.daily",
    "buster.usage.hourly",
    "buster.health",
    "buster.crm.sync",
];
/// The CRM's quota (crm.js's default) and the sync task's own limit (tasks.toml).
const CRM_LIMIT: usize = 10;
const SYNC_LIMIT: usize = 8;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/buster")
}

/// The example's task file as it is, but for the steps' address: the port the test chose.
fn task_file_for(port: u16) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(example_dir().join("tasks.toml")).unwrap();
    assert_eq!(
        text.matches(DOCUMENTED_STEPS).count(),
        TASKS.len(),
        "every step of tasks.toml calls {DOCUMENTED_STEPS}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.toml");
    let text = text.replace(DOCUMENTED_STEPS, &format!("http://127.0.0.1:{port}/"));
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// `node examples/buster/{script}` on `port`, once it listens; killed when dropped.
fn start_node(script: &str, port: u16, envs: &[(&str, &str)]) -> TestWorker {
    warren_tests::start_node_server(&example_dir().join(script), port, envs)
}

fn start_worker(env: &TestEnv, file: &Path) -> TestWorker {
    for task in TASKS {
        env.declared(task);
    }
    TestWorker::from(
        env.warren()
            .args(["worker", "--worker-id", "buster", "--tasks"])
            .arg(file)
            .env("WARREN_STEP_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn warren(env: &TestEnv, args: &[&str]) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = env.warren().args(args).output().unwrap();
    assert!(
        status.success(),
        "warren {args:?}: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8(stdout).unwrap()
}

/// The run of `message_id` once it has ended.
async fn finished(env: &TestEnv, message_id: &str) -> RunDetail {
    let run = env.wait_finished(message_id).await;
    assert_eq!(run.summary.status, "succeeded", "{run:?}");
    run
}

/// `warren schedules trigger NAME`: the run it fired, once it has ended.
async fn trigger(env: &TestEnv, schedule: &str) -> RunDetail {
    let out = warren(env, &["schedules", "trigger", schedule, "--wait", "20s"]);
    let run_id = out.trim().rsplit(' ').next().unwrap().to_owned();
    finished(env, &run_id).await
}

async fn execute(env: &TestEnv, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) {
    let client = env.pool.get().await.unwrap();
    client.execute(sql, params).await.unwrap();
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// The start of `t`'s hour.
fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Span::hours(1)).unwrap()
}

/// The schedules of the file are declared as written: the report at 09:00 on Paris's clock
/// (07:00 or 08:00 UTC by the season), usage every hour, health every five minutes.
fn schedules_are_declared_as_written(env: &TestEnv) {
    let paris = warren_shared::schedule::parse_zone("Europe/Paris").unwrap();
    for (name, cron, zone, missed) in [
        (
            "buster.report.daily/morning",
            "0 9 * * *",
            "Europe/Paris",
            "all",
        ),
        ("buster.usage.hourly/hourly", "0 * * * *", "UTC", "all"),
        ("buster.health/every-5m", "*/5 * * * *", "UTC", "skip"),
    ] {
        let shown: Value =
            serde_json::from_str(&warren(env, &["schedules", "show", name, "--json"])).unwrap();
        let schedule = &shown["schedule"];
        assert_eq!(schedule["cron"], cron, "{shown}");
        assert_eq!(schedule["timezone"], zone, "{shown}");
        assert_eq!(schedule["missed"], missed, "{shown}");
        assert_eq!(schedule["source"], "task", "{shown}");
        let upcoming: Vec<DateTime<Utc>> =
            serde_json::from_value(shown["upcoming"].clone()).unwrap();
        assert_eq!(upcoming.len(), 5, "{shown}");
        for slot in upcoming {
            let local = slot.with_timezone(&paris);
            match name {
                "buster.report.daily/morning" => {
                    assert_eq!((local.hour(), local.minute()), (9, 0), "{slot}")
                }
                "buster.usage.hourly/hourly" => assert_eq!(slot.minute(), 0, "{slot}"),
                _ => assert_eq!(slot.minute() % 5, 0, "{slot}"),
            }
        }
    }
    assert_eq!(
        warren(env, &["schedules", "list"])
            .lines()
            .filter(|l| l.contains("buster."))
            .count(),
        3
    );
}

/// The report fired for the slot of 2026-03-30 09:00 in Paris reports 29 March on Paris's
/// clock: a 23-hour day (the clocks went forward), from 23:00 UTC on the 28th to 22:00 UTC on
/// the 29th. Usage and health rows just outside it do not count.
async fn the_daily_report_aggregates_its_slots_day(env: &TestEnv) {
    for (hour, customer, calls) in [
        ("2026-03-28T22:00:00Z", "acme", 100), // 23:00 on the 28th in Paris: the day before
        ("2026-03-28T23:00:00Z", "acme", 3),   // 00:00 on the 29th: the first hour
        ("2026-03-29T10:00:00Z", "acme", 4),
        ("2026-03-29T10:00:00Z", "globex", 7),
        ("2026-03-29T21:00:00Z", "globex", 1), // 23:00 CEST: the last hour
        ("2026-03-29T22:00:00Z", "globex", 1000), // 00:00 on the 30th: the day after
    ] {
        execute(
            env,
            "INSERT INTO buster.usage (hour, customer, crm_calls) VALUES ($1, $2, $3)",
            &[&at(hour), &customer, &calls],
        )
        .await;
    }
    for (checked_at, ok, latency) in [
        ("2026-03-28T22:55:00Z", false, 2000), // the day before
        ("2026-03-28T23:00:00Z", true, 10),
        ("2026-03-29T12:00:00Z", false, 2000),
        ("2026-03-29T21:55:00Z", true, 20),
        ("2026-03-29T22:00:00Z", false, 2000), // the day after
    ] {
        execute(
            env,
            "INSERT INTO buster.health_checks (checked_at, ok, status, latency_ms) VALUES ($1, $2, 200, $3)",
            &[&at(checked_at), &ok, &latency],
        )
        .await;
    }
    // A manual slot at a chosen time: what `warren schedules trigger` asks for, at now.
    let name = "buster.report.daily/morning";
    let slot = at("2026-03-30T07:00:00Z");
    execute(
        env,
        "UPDATE schedules SET triggered_at = $2 WHERE name = $1",
        &[&name, &slot],
    )
    .await;
    let run = finished(env, &schedules::message_id(name, slot)).await;
    assert_eq!(run.summary.stage.as_deref(), Some("REPORTED"));
    let report = run.output.clone().unwrap();
    assert_eq!(
        report,
        json!({
            "day": "2026-03-29",
            "timezone": "Europe/Paris",
            "from": "2026-03-28T23:00:00+00:00",
            "to": "2026-03-29T22:00:00+00:00",
            "hours": 23,
            "crm_calls": { "acme": 7, "globex": 8 },
            "total_crm_calls": 15,
            "health": { "checks": 3, "expected_checks": 276, "failed": 1, "mean_latency_ms": 15 },
        })
    );
    // Kept in Buster's own table, with the slot it was made for.
    let client = env.pool.get().await.unwrap();
    let row = client
        .query_one("SELECT day, slot, report FROM buster.daily_reports", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, NaiveDate>(0),
        NaiveDate::from_ymd_opt(2026, 3, 29).unwrap()
    );
    assert_eq!(row.get::<_, DateTime<Utc>>(1), slot);
    assert_eq!(row.get::<_, Value>(2), report);
}

/// Usage fired by hand counts each customer's CRM calls of the whole hour before its slot's;
/// the health check probes the CRM and records the result at its slot.
async fn usage_and_health_run_once_each(env: &TestEnv) {
    // Not in the last seconds of an hour: the calls below are in the hour before the slot's.
    let now = Utc::now();
    if now.minute() == 59 && now.second() >= 50 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - now.second()))).await;
    }
    let this_hour = hour_of(Utc::now());
    for (called_at, customer) in [
        (this_hour - Span::minutes(59), "acme"),
        (this_hour - Span::minutes(30), "acme"),
        (this_hour - Span::seconds(1), "globex"),
        (this_hour - Span::minutes(61), "globex"), // two hours ago
        (this_hour, "globex"),                     // this hour
    ] {
        execute(
            env,
            "INSERT INTO buster.crm_calls (run_id, customer, called_at, attempt) VALUES ($1, $2, $3, 1)",
            &[&Uuid::new_v4(), &customer, &called_at],
        )
        .await;
    }
    let usage = trigger(env, "buster.usage.hourly/hourly").await;
    let slot = at(usage.message_id.rsplit('/').next().unwrap());
    assert_eq!(hour_of(slot), this_hour);
    let previous = this_hour - Span::hours(1);
    let output = usage.output.clone().unwrap();
    assert_eq!(at(output["hour"].as_str().unwrap()), previous, "{output}");
    assert_eq!(
        output["crm_calls"],
        json!({ "acme": 2, "globex": 1 }),
        "{output}"
    );
    assert_eq!(output["total"], 3);
    let client = env.pool.get().await.unwrap();
    let rows: Vec<(DateTime<Utc>, String, i32)> = client
        .query(
            "SELECT hour, customer, crm_calls FROM buster.usage WHERE hour = $1 ORDER BY customer",
            &[&previous],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [(previous, "acme".into(), 2), (previous, "globex".into(), 1)]
    );

    let health = trigger(env, "buster.health/every-5m").await;
    let slot = at(health.message_id.rsplit('/').next().unwrap());
    let output = health.output.clone().unwrap();
    assert_eq!(output["ok"], true, "{output}");
    assert_eq!(output["status"], 200, "{output}");
    let (checked_at, ok, status): (DateTime<Utc>, bool, i32) = client
        .query_one(
            "SELECT checked_at, ok, status FROM buster.health_checks WHERE checked_at = $1",
            &[&slot],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!((checked_at, ok, status), (slot, true, 200));
}

/// One call of `POST /contacts` as the CRM logged it.
#[derive(Debug, serde::Deserialize)]
struct Call {
    at: i64,
    client: Option<String>,
    status: u16,
    idempotency_key: Option<String>,
}

/// Every call of the CRM's `/contacts` so far.
async fn crm_calls(http: &reqwest::Client, crm: &str) -> Vec<Call> {
    let text = http
        .get(format!("{crm}/calls"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The most calls in any one-second window.
fn most_in_a_second(times: &[i64]) -> usize {
    times
        .iter()
        .enumerate()
        .map(|(i, start)| times[i..].iter().take_while(|t| **t < start + 1000).count())
        .max()
        .unwrap_or(0)
}

/// A burst of 40 syncs while the app spends the CRM's quota too: Warren calls the CRM no more
/// than 8 times a second, the calls the CRM refused (429) fail as RATE_LIMIT and
/// are retried no sooner than Retry-After, and every sync succeeds.
async fn a_burst_of_syncs_keeps_to_the_rate_limit_and_retries_the_crms_429s(
    env: &TestEnv,
    crm_port: u16,
) {
    let crm = format!("http://127.0.0.1:{crm_port}");
    let http = reqwest::Client::new();
    let producer = env.producer().await;
    let customers = ["acme", "globex", "initech", "umbrella"];
    for i in 0..40 {
        let options = PublishOptions {
            message_id: Some(format!("sync-{i}")),
            ..PublishOptions::default()
        };
        let customer = customers[i % customers.len()];
        let payload =
            json!({ "customer": customer, "email": format!("user-{i}@{customer}.example") });
        publish_when_declared(&producer, "buster.crm.sync", &payload, options).await;
    }
    // Meanwhile the app makes calls of its own with the same key: it spends what is left of
    // the quota, again and again, until the CRM has refused one of the fleet's calls.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut spent = 0;
    while !crm_calls(&http, &crm)
        .await
        .iter()
        .any(|c| c.client.as_deref() == Some("buster-steps") && c.status == 429)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CRM refused none of Warren's calls"
        );
        for _ in 0..CRM_LIMIT {
            spent += 1;
            let answer = http
                .post(format!("{crm}/contacts"))
                .header("x-api-key", "buster-demo-key")
                .header("user-agent", "buster-app")
                .header("content-type", "application/json")
                .body(
                    json!({ "customer": "app", "email": format!("app-{spent}@example.com") })
                        .to_string(),
                )
                .send()
                .await
                .unwrap();
            if answer.status().as_u16() == 429 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut runs = Vec::new();
    for i in 0..40 {
        runs.push(finished(env, &format!("sync-{i}")).await);
    }

    let calls = crm_calls(&http, &crm).await;
    let warren_calls: Vec<&Call> = calls
        .iter()
        .filter(|c| c.client.as_deref() == Some("buster-steps"))
        .collect();
    let times: Vec<i64> = warren_calls.iter().map(|c| c.at).collect();
    let most = most_in_a_second(&times);
    let span = (times[times.len() - 1] - times[0]) as f64 / 1000.0;
    let rate = (times.len() - 1) as f64 / span;
    eprintln!(
        "buster: {} CRM calls from Warren in {span:.2} s ({rate:.2}/s), at most {most} in a second",
        times.len()
    );
    // Starts are reserved 125 ms apart in Postgres; a call reaches the CRM a little after its
    // start (the step's request, Node.js's event loop), later for some than for others on a
    // busy machine: a window can hold a call or two more than the limit, never a sustained
    // excess (the average, below).
    assert!(
        most <= SYNC_LIMIT + 3,
        "{most} calls in one second: {times:?}"
    );
    assert!(rate <= SYNC_LIMIT as f64 * 1.1, "{rate:.2} calls a second");

    // The calls the CRM refused: each run that met one failed it as RATE_LIMIT, was called
    // again no sooner than the CRM's Retry-After (1 s), and succeeded.
    let refused: Vec<&Call> = warren_calls
        .iter()
        .copied()
        .filter(|c| c.status == 429)
        .collect();
    assert!(
        !refused.is_empty(),
        "the CRM refused none of Warren's calls: {calls:?}"
    );
    for call in &refused {
        let key = call.idempotency_key.as_deref().unwrap();
        let next = warren_calls
            .iter()
            .find(|c| c.idempotency_key.as_deref() == Some(key) && c.at > call.at)
            .unwrap_or_else(|| panic!("{key} was not called again"));
        assert!(
            next.at - call.at >= 950,
            "{key} was called again after {} ms",
            next.at - call.at
        );
        let run_id: Uuid = key.trim_end_matches("/push").parse().unwrap();
        let run = runs.iter().find(|r| r.summary.id == run_id).unwrap();
        assert!(run.summary.attempt >= 2, "{run:?}");
        let retry = run
            .transitions
            .iter()
            .find(|t| t.to_status == "retrying")
            .unwrap();
        assert!(
            retry.reason.as_deref().unwrap().starts_with("RATE_LIMIT:"),
            "{retry:?}"
        );
    }
    // Every run succeeded, each contact pushed once to Buster's usage table.
    let client = env.pool.get().await.unwrap();
    let pushed: i64 = client
        .query_one(
            "SELECT count(*) FROM buster.crm_calls WHERE run_id = ANY($1)",
            &[&runs.iter().map(|r| r.summary.id).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pushed, 40);
    eprintln!(
        "buster: {} of Warren's CRM calls refused (429), retried",
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn buster_fires_its_reports_usage_and_health_checks_and_keeps_its_crm_calls_to_the_limit() {
    let env = TestEnv::new().await;
    let crm_port = warren_tests::free_port();
    let _crm = start_node("crm.js", crm_port, &[]);
    let steps_port = warren_tests::free_port();
    let crm = format!("http://127.0.0.1:{crm_port}");
    let _steps = start_node(
        "steps.js",
        steps_port,
        &[
            ("WARREN_STEP_SECRET", SECRET),
            ("BUSTER_DATABASE_URL", &env.database_url),
            ("BUSTER_CRM_API", &crm),
        ],
    );
    let (_dir, file) = task_file_for(steps_port);
    let _worker = start_worker(&env, &file);
    env.wait_consuming(&TASKS).await;

    schedules_are_declared_as_written(&env);
    the_daily_report_aggregates_its_slots_day(&env).await;
    usage_and_health_run_once_each(&env).await;
    a_burst_of_syncs_keeps_to_the_rate_limit_and_retries_the_crms_429s(&env, crm_port).await;
}
