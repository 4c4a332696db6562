//! Schedules (docs/schedules.md): one run per slot across a fleet whose replicas die and come
//! back and whose Postgres sessions are cut, a run that knows its slot, declared schedules that survive restarts as they were, and
//! the `warren schedules` commands.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::process::Output;
use std::time::{Duration, Instant};
use warren_shared::schedule::{Missed, Timing};
use warren_shared::store::schedules::{self, Definition};
use warren_tests::{TestEnv, TestWorker};
use warren_worker::schedule::Schedule;
use warren_worker::{Registry, StepContext, StepOutcome, Task, step};

fn spawn_worker(env: &TestEnv, id: &str) -> TestWorker {
    env.spawn_test_worker(env!("CARGO_BIN_EXE_warren-test-worker"), id, &[])
}

/// The ledger the test worker's `ledger.*` tasks write each step execution to.
async fn create_ledger(env: &TestEnv) {
    let client = env.pool.get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ledger (
                 run_id uuid NOT NULL, step text NOT NULL, worker text NOT NULL,
                 at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
}

async fn fires_of(env: &TestEnv, schedule: &str) -> Vec<(DateTime<Utc>, String, uuid::Uuid)> {
    let client = env.pool.get().await.unwrap();
    client
        .query(
            "SELECT slot, message_id, run_id FROM schedule_fires WHERE schedule = $1 ORDER BY slot",
            &[&schedule],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_second_schedule_on_three_replicas_fires_every_slot_once_through_a_kill_a_restart_and_a_postgres_restart()
 {
    let env = TestEnv::new().await;
    create_ledger(&env).await;
    let definition = Definition {
        name: "fleet/every-second".into(),
        task: "ledger.2".into(),
        payload: json!({ "ms": 0 }),
        cron: None,
        every_secs: Some(1),
        timezone: "UTC".into(),
        // On-time slots fire whatever the policy: the strictest one shows it.
        missed: Missed::Skip,
        catch_up_limit: 10,
    };
    {
        let client = env.pool.get().await.unwrap();
        let first = Utc::now() + chrono::Duration::seconds(3);
        let first = Timing::every_seconds(1).unwrap().next_after(first);
        assert!(
            schedules::create(&client, &definition, first)
                .await
                .unwrap()
        );
    }
    let mut a = spawn_worker(&env, "sched-a");
    let _b = spawn_worker(&env, "sched-b");
    let _c = spawn_worker(&env, "sched-c");

    tokio::time::sleep(Duration::from_secs(8)).await;
    // kill -9: whatever transaction it had open dies with its connection.
    a.kill().unwrap();
    a.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _a = spawn_worker(&env, "sched-a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Every Postgres session dropped at once, as in a database restart.
    assert!(env.terminate_postgres_sessions().await > 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    {
        let client = env.pool.get().await.unwrap();
        schedules::set_paused(&client, &definition.name, true, None)
            .await
            .unwrap();
    }
    // A pass that had taken the row before the pause may still commit.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let fires = fires_of(&env, &definition.name).await;
    assert!(
        fires.len() >= 20,
        "only {} slots fired in 26 s",
        fires.len()
    );
    for pair in fires.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            chrono::Duration::seconds(1),
            "a slot is missing or doubled between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
    // Every fire's run exists once and finishes; no other run of the task exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let client = env.pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT message_id),
                        count(*) FILTER (WHERE status = 'succeeded'),
                        count(*) FILTER (WHERE message_id NOT LIKE 'schedule/fleet/every-second/%')
                 FROM runs WHERE task = 'ledger.2'",
                &[],
            )
            .await
            .unwrap();
        let (runs, ids, succeeded, others): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let fired = i64::try_from(fires.len()).unwrap();
        assert!(runs <= fired, "{runs} runs for {fired} slots");
        assert_eq!(runs, ids, "two runs share a message id");
        assert_eq!(others, 0);
        if runs == fired && succeeded == fired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{runs} runs ({succeeded} succeeded) for {fired} slots"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (slot, message_id, run_id) in &fires {
        assert_eq!(message_id, &schedules::message_id(&definition.name, *slot));
        let runs = env.runs_of(&run_id.to_string()).await;
        assert_eq!(runs.len(), 1);
    }
}

/// `report.daily`: a 09:00 Paris report whose step returns the slot it ran for.
fn daily_report() -> Task<Value> {
    Task::<Value>::new("report.daily")
        .schedule(
            Schedule::cron("0 9 * * *")
                .unwrap()
                .timezone("Europe/Paris")
                .unwrap()
                .named("morning")
                .payload(json!({ "report": "sales" })),
        )
        .step(step("report", |ctx: StepContext<Value>| async move {
            Ok(StepOutcome::next(json!({
                "slot": ctx.run().scheduled_for,
                "report": ctx.input()["report"],
            })))
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_schedules_run_sees_its_slot_even_when_it_fires_late() {
    let env = TestEnv::new().await;
    let worker = env
        .start_worker(Registry::new().register(daily_report()))
        .await;
    let name = "report.daily/morning";
    let timing = Timing::cron("0 9 * * *", "Europe/Paris").unwrap();
    let now = Utc::now();
    let upcoming = timing.upcoming(now - chrono::Duration::days(3), 4);
    let latest_past = *upcoming.iter().rev().find(|s| **s <= now).unwrap();
    {
        let client = env.pool.get().await.unwrap();
        let declared = schedules::get(&client, name).await.unwrap().unwrap();
        assert_eq!(declared.source, "task");
        assert_eq!(
            declared.next_fire_at,
            timing.next_after(declared.created_at)
        );
        // As if the fleet had been down for three days.
        client
            .execute(
                "UPDATE schedules SET next_fire_at = $2 WHERE name = $1",
                &[&name, &upcoming[0]],
            )
            .await
            .unwrap();
    }
    let message_id = schedules::message_id(name, latest_past);
    let run = env.wait_finished(&message_id).await;
    assert_eq!(run.summary.status, "succeeded");
    let output = run.output.as_ref().unwrap();
    assert_eq!(
        output["slot"],
        json!(latest_past),
        "the run reports its slot, not when it ran"
    );
    assert_eq!(output["report"], "sales");
    // The latest missed slot fired once; the others were skipped (policy `latest`).
    let fires = fires_of(&env, name).await;
    assert_eq!(fires.len(), 1, "{fires:?}");
    let client = env.pool.get().await.unwrap();
    let after = schedules::get(&client, name).await.unwrap().unwrap();
    assert_eq!(after.next_fire_at, timing.next_after(latest_past));
    drop(client);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn restarting_a_replica_keeps_a_declared_schedule_paused_and_its_next_time_unless_it_changed_and_drops_removed_ones()
 {
    let env = TestEnv::new().await;
    let declare = |schedule: Schedule| {
        let pool = env.pool.clone();
        async move {
            warren_worker::schedule::declare(&pool, &[("report.daily".into(), vec![schedule])])
                .await
                .unwrap()
        }
    };
    declare(Schedule::cron("0 9 * * *").unwrap()).await;
    let client = env.pool.get().await.unwrap();
    let kept = Utc::now() + chrono::Duration::hours(5);
    client
        .execute(
            "UPDATE schedules SET paused = true, next_fire_at = $1 WHERE name = 'report.daily/0'",
            &[&kept],
        )
        .await
        .unwrap();
    declare(Schedule::cron("0 9 * * *").unwrap()).await;
    let same = schedules::get(&client, "report.daily/0")
        .await
        .unwrap()
        .unwrap();
    assert!(same.paused);
    assert_eq!(
        same.next_fire_at.map(|t| t.timestamp_micros()),
        Some(kept.timestamp_micros())
    );
    // A new payload keeps the time; a new cron expression moves it; neither unpauses.
    declare(
        Schedule::cron("0 9 * * *")
            .unwrap()
            .payload(json!({ "v": 2 })),
    )
    .await;
    let new_payload = schedules::get(&client, "report.daily/0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new_payload.definition.payload, json!({ "v": 2 }));
    assert_eq!(
        new_payload.next_fire_at.map(|t| t.timestamp_micros()),
        Some(kept.timestamp_micros())
    );
    declare(Schedule::cron("30 10 * * *").unwrap()).await;
    let moved = schedules::get(&client, "report.daily/0")
        .await
        .unwrap()
        .unwrap();
    assert!(moved.paused);
    let timing = Timing::cron("30 10 * * *", "UTC").unwrap();
    assert_eq!(moved.next_fire_at, timing.next_after(moved.updated_at));

    // A schedule removed from the code goes; an operator's schedule of the task stays.
    let operators = Definition {
        name: "by-hand".into(),
        task: "report.daily".into(),
        payload: json!({}),
        cron: None,
        every_secs: Some(60),
        timezone: "UTC".into(),
        missed: Missed::Latest,
        catch_up_limit: 10,
    };
    assert!(schedules::create(&client, &operators, None).await.unwrap());
    warren_worker::schedule::declare(&env.pool, &[("report.daily".into(), vec![])])
        .await
        .unwrap();
    let left: Vec<String> = schedules::list(&client)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.definition.name)
        .collect();
    assert_eq!(left, ["by-hand"]);
}

fn warren(env: &TestEnv, args: &[&str]) -> Output {
    env.warren().args(args).output().unwrap()
}

fn ok(env: &TestEnv, args: &[&str]) -> String {
    let output = warren(env, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "warren {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Fails with exactly one line on standard error containing `needle`.
fn fails(env: &TestEnv, args: &[&str], needle: &str) {
    let output = warren(env, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "warren {args:?} succeeded");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "warren {args:?}: {stderr}"
    );
    assert!(stderr.contains(needle), "warren {args:?}: {stderr}");
}

fn as_refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn echo() -> Task<Value> {
    Task::<Value>::new("sched.echo").step(step("echo", |ctx: StepContext<Value>| async move {
        Ok(StepOutcome::next(json!({
            "input": ctx.input().clone(),
            "slot": ctx.run().scheduled_for,
        })))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_commands_create_list_show_pause_resume_trigger_and_delete() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    let create = |extra: &[&str]| {
        let mut args = vec!["schedules", "create", "nightly", "--task", "sched.echo"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for (extra, needle) in [
        (
            &["--cron", "0 25 * * *"][..],
            "invalid cron expression \"0 25 * * *\": hours: 25 is outside 0-23",
        ),
        (
            &["--cron", "0 2 * * *", "--timezone", "Europe/Pariss"][..],
            "unknown time zone \"Europe/Pariss\"",
        ),
        (
            &["--every", "5 parsecs"][..],
            "invalid interval \"5 parsecs\"",
        ),
        (
            &["--every", "5m", "--payload", "{oops"][..],
            "invalid --payload: not JSON",
        ),
        (
            &["--every", "5m", "--payload", "[1]"][..],
            "must be a JSON object",
        ),
        (
            &["--every", "5m", "--missed", "sometimes"][..],
            "invalid missed policy \"sometimes\"",
        ),
    ] {
        fails(&env, &as_refs(&create(extra)), needle);
    }
    let out = ok(
        &env,
        &as_refs(&create(&[
            "--cron",
            "0 2 * * *",
            "--timezone",
            "Europe/Paris",
            "--payload",
            r#"{"night": true}"#,
            "--missed",
            "all",
            "--catch-up-limit",
            "3",
        ])),
    );
    assert!(
        out.starts_with("created schedule nightly: next fire at "),
        "{out}"
    );
    fails(
        &env,
        &as_refs(&create(&["--every", "5m"])),
        "a schedule named \"nightly\" exists already",
    );

    let list = ok(&env, &["schedules", "list"]);
    assert!(
        list.contains("nightly") && list.contains("0 2 * * *") && list.contains("active"),
        "{list}"
    );
    let listed: Value = serde_json::from_str(&ok(&env, &["schedules", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "nightly");
    assert_eq!(listed[0]["missed"], "all");
    assert_eq!(listed[0]["catch_up_limit"], 3);

    let show = ok(&env, &["schedules", "show", "nightly"]);
    assert!(show.contains("next fires (UTC):"), "{show}");
    let shown: Value =
        serde_json::from_str(&ok(&env, &["schedules", "show", "nightly", "--json"])).unwrap();
    let upcoming = shown["upcoming"].as_array().unwrap();
    assert_eq!(upcoming.len(), 5);
    for at in upcoming {
        // 02:00 in Paris is 01:00 or 00:00 UTC.
        let at: DateTime<Utc> = serde_json::from_value(at.clone()).unwrap();
        assert!(
            matches!(at.format("%H:%M").to_string().as_str(), "01:00" | "00:00"),
            "{at}"
        );
    }

    assert_eq!(
        ok(&env, &["schedules", "pause", "nightly"]).trim(),
        "paused schedule nightly"
    );
    assert!(ok(&env, &["schedules", "list"]).contains("paused"));
    let out = ok(&env, &["schedules", "trigger", "nightly"]);
    assert!(
        out.starts_with("triggered schedule nightly: slot "),
        "{out}"
    );
    let run_id = out.trim().rsplit(' ').next().unwrap().to_owned();
    let client = env.pool.get().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs = env.runs_of(&run_id).await;
        if let Some(run) = runs.first().filter(|r| r.summary.status == "succeeded") {
            break run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the triggered run did not finish: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = run.output.as_ref().unwrap();
    assert_eq!(output["input"], json!({ "night": true }));
    assert!(
        output["slot"].is_string(),
        "a manual slot is a slot too: {output}"
    );
    let show = ok(&env, &["schedules", "show", "nightly"]);
    assert!(
        show.contains("(manual)") && show.contains("succeeded") && show.contains(&run_id),
        "{show}"
    );
    assert!(
        show.contains("next fires: none"),
        "a paused schedule has no next fires: {show}"
    );

    let out = ok(&env, &["schedules", "resume", "nightly"]);
    assert!(
        out.starts_with("resumed schedule nightly: next fire at"),
        "{out}"
    );
    assert!(
        !schedules::get(&client, "nightly")
            .await
            .unwrap()
            .unwrap()
            .paused
    );

    assert_eq!(
        ok(&env, &["schedules", "delete", "nightly"]).trim(),
        "deleted schedule nightly"
    );
    for verb in ["show", "pause", "resume", "delete", "trigger"] {
        fails(
            &env,
            &["schedules", verb, "nightly"],
            "no schedule named \"nightly\"",
        );
    }
    drop(client);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn prune_removes_old_fire_records_but_keeps_each_schedules_last_ten() {
    let env = TestEnv::new().await;
    let mut client = env.pool.get().await.unwrap();
    for name in ["busy", "quiet"] {
        let definition = Definition {
            name: name.into(),
            task: "t".into(),
            payload: json!({}),
            cron: None,
            every_secs: Some(60),
            timezone: "UTC".into(),
            missed: Missed::Latest,
            catch_up_limit: 10,
        };
        assert!(schedules::create(&client, &definition, None).await.unwrap());
    }
    // 15 old fires of `busy`, 3 of `quiet`, and a recent one of `busy`.
    client
        .batch_execute(
            "INSERT INTO schedule_fires (schedule, slot, message_id, run_id, fired_at)
             SELECT 'busy', now() - make_interval(days => 3, mins => n), 'm' || n,
                    gen_random_uuid(), now() - interval '3 days'
             FROM generate_series(1, 15) n;
             INSERT INTO schedule_fires (schedule, slot, message_id, run_id, fired_at)
             SELECT 'quiet', now() - make_interval(days => 3, mins => n), 'q' || n,
                    gen_random_uuid(), now() - interval '3 days'
             FROM generate_series(1, 3) n;
             INSERT INTO schedule_fires (schedule, slot, message_id, run_id)
             VALUES ('busy', now(), 'recent', gen_random_uuid());",
        )
        .await
        .unwrap();
    let policy = warren_shared::store::retention::Prune {
        batch: 4,
        ..warren_shared::store::retention::Prune::older_than(Duration::from_secs(86_400))
    };
    let report = warren_shared::store::retention::prune(&mut client, &policy, &|| true)
        .await
        .unwrap();
    assert_eq!(report.schedule_fires, 6);
    assert_eq!(
        schedules::recent_fires(&client, "busy", 100)
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        schedules::recent_fires(&client, "quiet", 100)
            .await
            .unwrap()
            .len(),
        3
    );
}
