//! Retention: `warren prune` and the worker's scheduled prune delete finished runs (with their
//! steps and transitions), expired idempotency keys and gone replicas older than a cutoff, and
//! nothing else; in batches that hold no lock on a live run.

use chrono::{DateTime, Duration as Age, Utc};
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;
use warren_shared::store::retention::{self, RunBatch};
use warren_tests::TestEnv;
use warren_worker::demo;

/// Runs the `warren` binary; its standard output as JSON.
fn warren_json(env: &TestEnv, args: &[&str]) -> Value {
    let output = env.warren().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "warren {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn count(client: &deadpool_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// The plan Postgres makes for `sql` with these parameters (its node lines: the filters would
/// list every parameter).
async fn plan(
    client: &deadpool_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    client
        .query(&format!("EXPLAIN {sql}"), params)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .filter(|line| !line.trim_start().starts_with("Filter:"))
        .map(|line| line.chars().take(200).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The run with number `i` of the generated table, by the same formula as the generator.
fn run_uuid(i: i64) -> Uuid {
    Uuid::from_u128(u128::try_from(i).unwrap())
}

/// A million runs, by the last digit of their number: 0-1 finished (succeeded, halted, dead)
/// 40 days ago; 2 created 40 days ago and still queued, running, retrying or waiting; 3 created
/// 40 days ago but finished yesterday; 4-9 created yesterday, in every status. Runs 0 and 3
/// have a step, 1 and 2 a transition. 20,000 idempotency keys, every other one 40 days old.
/// `warren prune --older-than 30d` must delete exactly runs 0-1 with their rows and the old
/// keys, through the indexes.
#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_exactly_the_old_finished_runs_of_a_million_and_their_rows() {
    let _turn = warren_tests::heavy().await;
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    let generating = Instant::now();
    client
        .batch_execute(
            "INSERT INTO runs (id, message_id, task, event, status, attempt, worker, created_at,
                               started_at, finished_at, updated_at)
             SELECT lpad(to_hex(i), 32, '0')::uuid, i::text, 'bulk.job', 'bulk.job', status, 1,
                    'bulk#1', created, created, finished, coalesce(finished, created)
             FROM (
               SELECT i, created,
                 CASE WHEN i % 10 < 2 THEN (ARRAY['succeeded', 'halted', 'dead'])[i % 3 + 1]
                      WHEN i % 10 = 2 THEN (ARRAY['queued', 'running', 'retrying', 'waiting'])[(i / 10) % 4 + 1]
                      WHEN i % 10 = 3 THEN 'succeeded'
                      ELSE (ARRAY['queued', 'running', 'retrying', 'waiting', 'succeeded', 'halted',
                                  'dead'])[(i / 10) % 7 + 1] END AS status,
                 CASE WHEN i % 10 < 2 THEN created + interval '1 minute'
                      WHEN i % 10 = 2 THEN NULL
                      WHEN i % 10 = 3 THEN now() - interval '1 day'
                      WHEN (i / 10) % 7 >= 4 THEN created + interval '1 minute' END AS finished
               FROM (SELECT i, now() - CASE WHEN i % 10 < 4 THEN interval '40 days'
                                            ELSE interval '1 day' END
                                     - (i % 3600) * interval '1 second' AS created
                     FROM generate_series(1, 1000000) AS i) g
             ) r;
             INSERT INTO run_steps (run_id, step, position, status, attempt, worker, started_at,
                                    finished_at)
             SELECT lpad(to_hex(i), 32, '0')::uuid, 'one', 0, 'succeeded', 1, 'bulk#1', now(), now()
             FROM generate_series(1, 1000000) AS i WHERE i % 10 IN (0, 3);
             INSERT INTO run_transitions (run_id, from_status, to_status, attempt, worker)
             SELECT lpad(to_hex(i), 32, '0')::uuid, NULL, 'running', 1, 'bulk#1'
             FROM generate_series(1, 1000000) AS i WHERE i % 10 IN (1, 2);
             INSERT INTO idempotency_keys (task, key, run_id, created_at)
             SELECT 'bulk.job', 'k' || i, lpad(to_hex(i), 32, '0')::uuid,
                    now() - CASE WHEN i % 2 = 0 THEN interval '40 days' ELSE interval '1 hour' END
             FROM generate_series(1, 20000) AS i;
             ANALYZE runs, run_steps, run_transitions, idempotency_keys;",
        )
        .await
        .unwrap();
    let generated = generating.elapsed();

    // An index supports each of the batch's statements: with sequential scans priced out, none
    // is left in their plans. (On tables this small Postgres may rightly prefer to scan
    // `run_steps` for 5,000 ids; on a production table it takes the index.)
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let cutoff: DateTime<Utc> = Utc::now() - Age::days(30);
    let finished = retention::finished_statuses();
    let select = plan(
        &client,
        retention::FINISHED_RUNS_SQL,
        &[&cutoff, &None::<DateTime<Utc>>, &finished, &5_000_i64],
    )
    .await;
    assert!(select.contains("runs_created_page_idx"), "{select}");
    let batch: Vec<Uuid> = (0..5_000).map(|n| run_uuid(n * 10 + 10)).collect();
    for (sql, index) in [
        (retention::DELETE_STEPS_SQL, "run_steps_pkey"),
        (retention::DELETE_TRANSITIONS_SQL, "run_transitions_pkey"),
        (retention::DELETE_RUNS_SQL, "runs_pkey"),
    ] {
        let plan = plan(&client, sql, &[&batch]).await;
        assert!(
            plan.contains(index) && !plan.contains("Seq Scan"),
            "{sql}:\n{plan}"
        );
    }
    let keys = plan(&client, retention::DELETE_KEYS_SQL, &[&cutoff, &5_000_i64]).await;
    assert!(keys.contains("idempotency_keys_created_idx"), "{keys}");
    client.batch_execute("RESET enable_seqscan").await.unwrap();

    let pruning = Instant::now();
    let report = warren_json(&env, &["prune", "--older-than", "30d", "--json"]);
    let pruned = pruning.elapsed();
    println!(
        "1,000,000 runs, 200,000 steps, 200,000 transitions, 20,000 keys generated in {:.1} s; \
         pruned in {:.1} s: {report}",
        generated.as_secs_f64(),
        pruned.as_secs_f64()
    );
    assert_eq!(report["runs"], 200_000);
    assert_eq!(report["steps"], 100_000);
    assert_eq!(report["transitions"], 100_000);
    assert_eq!(report["idempotency_keys"], 10_000);

    let by_digit = client
        .query(
            "SELECT message_id::int % 10, count(*) FROM runs GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, i32>(0), row.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        by_digit,
        (2..10).map(|d| (d, 100_000)).collect::<Vec<_>>(),
        "runs left, by the last digit of their number"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM run_steps").await,
        100_000
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM run_transitions").await,
        100_000
    );
    let orphans = count(
        &client,
        "SELECT (SELECT count(*) FROM run_steps s WHERE NOT EXISTS
                   (SELECT 1 FROM runs r WHERE r.id = s.run_id))
              + (SELECT count(*) FROM run_transitions t WHERE NOT EXISTS
                   (SELECT 1 FROM runs r WHERE r.id = t.run_id))",
    )
    .await;
    assert_eq!(orphans, 0, "steps or transitions left without their run");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM idempotency_keys WHERE created_at > now() - interval '2 hours'"
        )
        .await,
        10_000
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM idempotency_keys").await,
        10_000
    );
}

async fn insert_run(client: &deadpool_postgres::Client, id: Uuid, status: &str, age: Age) -> Uuid {
    let created = Utc::now() - age;
    let finished = matches!(status, "succeeded" | "halted" | "dead").then_some(created);
    client
        .execute(
            "INSERT INTO runs (id, message_id, task, event, status, attempt, worker, created_at,
                               finished_at, updated_at)
             VALUES ($1, $5, 'held.job', 'held.job', $2, 1, 'test#1', $3, $4, $3)",
            &[&id, &status, &created, &finished, &id.to_string()],
        )
        .await
        .unwrap();
    id
}

/// A batch locks the finished runs it deletes and nothing else: while it is open, the hot path
/// writes live runs without waiting; and a finished run another transaction holds (an
/// operator's replay) is skipped, not waited for.
#[tokio::test(flavor = "multi_thread")]
async fn a_prune_batch_holds_no_lock_on_live_runs_and_waits_for_none() {
    let env = TestEnv::new().await;
    let setup = env.pool.get().await.unwrap();
    let old = Age::days(40);
    let mut doomed = Vec::new();
    for _ in 0..3 {
        doomed.push(insert_run(&setup, Uuid::new_v4(), "succeeded", old).await);
    }
    let live = [
        insert_run(&setup, Uuid::new_v4(), "running", old).await,
        insert_run(&setup, Uuid::new_v4(), "waiting", old).await,
        insert_run(&setup, Uuid::new_v4(), "running", Age::minutes(1)).await,
    ];
    let replayed = insert_run(&setup, Uuid::new_v4(), "dead", old).await;

    // An operator's replay holds a dead run.
    let mut replay_client = env.pool.get().await.unwrap();
    let replay = replay_client.transaction().await.unwrap();
    replay
        .execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", &[&replayed])
        .await
        .unwrap();

    let mut batch_client = env.pool.get().await.unwrap();
    let batch = batch_client.transaction().await.unwrap();
    let deleted: RunBatch = tokio::time::timeout(
        Duration::from_secs(5),
        retention::delete_runs(&batch, Utc::now() - Age::days(30), None, 5_000),
    )
    .await
    .expect("the batch waited for a run another transaction holds")
    .unwrap();
    assert_eq!(
        deleted.runs, 3,
        "the old finished runs, not the one being replayed"
    );

    // The batch is still open: the hot path writes the live runs at once.
    let hot = env.pool.get().await.unwrap();
    hot.batch_execute("SET lock_timeout = '1s'").await.unwrap();
    let updated = hot
        .execute(
            "UPDATE runs SET updated_at = now() WHERE id = ANY($1)",
            &[&live.to_vec()],
        )
        .await
        .expect("a live run was locked by the prune batch");
    assert_eq!(updated, 3);
    // (The probe does see the batch's locks: the runs it deletes are held.)
    let probe = hot
        .query(
            "SELECT 1 FROM runs WHERE id = ANY($1) FOR UPDATE NOWAIT",
            &[&doomed],
        )
        .await;
    assert!(probe.is_err(), "the runs being deleted are not locked");

    batch.commit().await.unwrap();
    replay.rollback().await.unwrap();
    let left = count(&setup, "SELECT count(*) FROM runs").await;
    assert_eq!(left, 4, "the live runs and the replayed one are kept");
}

/// The worker prunes on its own schedule, one replica at a time: while another holds the
/// fleet's prune lock it leaves the work to it, and once the lock is free it prunes.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_prunes_on_schedule_unless_another_replica_is_pruning() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    let old = insert_run(&client, Uuid::new_v4(), "succeeded", Age::days(40)).await;
    let recent = insert_run(&client, Uuid::new_v4(), "succeeded", Age::days(1)).await;
    let exists = |id: Uuid| {
        let client = &client;
        async move {
            client
                .query_opt("SELECT 1 FROM runs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .is_some()
        }
    };

    let other_replica = env.pool.get().await.unwrap();
    other_replica
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&warren_worker::retention::PRUNE_LOCK_KEY],
        )
        .await
        .unwrap();
    let mut config = env.worker_config();
    config.retention = Some(Duration::from_secs(30 * 24 * 3600));
    config.prune_every = Duration::from_millis(200);
    let worker = env.start_worker_with(config, demo::registry()).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        exists(old).await,
        "pruned while another replica held the lock"
    );

    other_replica
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&warren_worker::retention::PRUNE_LOCK_KEY],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(old).await {
        assert!(Instant::now() < deadline, "the replica never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exists(recent).await);
    worker.shutdown().await.unwrap();
}

/// `warren workers` lists the replicas alive or silent for less than an hour; `--all` every
/// incarnation on record; `warren prune` deletes those gone longer than its cutoff.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_silent_for_an_hour_leave_the_listing_and_prune_forgets_the_long_gone() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    // (owner name, last heartbeat, stopped) as ages.
    let replicas: [(&str, Age, Option<Age>); 5] = [
        ("alive#1", Age::seconds(1), None),
        ("crashed#2", Age::minutes(10), None),
        ("gone#3", Age::hours(2), None),
        ("stopped#4", Age::minutes(6), Some(Age::minutes(5))),
        ("old#5", Age::days(3), Some(Age::days(3))),
    ];
    for (owner, heartbeat, stopped) in replicas {
        let (id, n) = owner.split_once('#').unwrap();
        client
            .execute(
                "INSERT INTO workers (id, replica, incarnation, host, pid, tasks, version,
                                      started_at, last_heartbeat, stopped_at)
                 VALUES ($1, $2, $3, 'h', 1, '{}', 't', $4, $4, $5)",
                &[
                    &owner,
                    &id,
                    &n.parse::<i64>().unwrap(),
                    &(Utc::now() - heartbeat),
                    &stopped.map(|age| Utc::now() - age),
                ],
            )
            .await
            .unwrap();
    }
    let listed = |listing: Value| -> Vec<(String, String)> {
        let mut listed: Vec<(String, String)> = listing
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["owner"].as_str().unwrap().to_owned(),
                    w["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        listed.sort();
        listed
    };
    let pair = |owner: &str, state: &str| (owner.to_owned(), state.to_owned());
    assert_eq!(
        listed(warren_json(&env, &["workers", "--json"])),
        vec![pair("alive#1", "alive"), pair("crashed#2", "stale")]
    );
    assert_eq!(
        listed(warren_json(&env, &["workers", "--all", "--json"])).len(),
        5
    );
    let report = warren_json(&env, &["prune", "--older-than", "1h", "--json"]);
    assert_eq!(report["replicas"], 2, "{report}");
    assert_eq!(
        listed(warren_json(&env, &["workers", "--all", "--json"])),
        vec![
            pair("alive#1", "alive"),
            pair("crashed#2", "stale"),
            pair("stopped#4", "stopped")
        ]
    );
}

/// A cutoff shorter than the idempotency window does not shorten it: a key keeps making later
/// publishes duplicates for the whole window.
#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_idempotency_keys_for_the_whole_window() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO idempotency_keys (task, key, run_id, created_at) VALUES
               ('k.job', 'in-window', gen_random_uuid(), now() - interval '2 hours'),
               ('k.job', 'expired', gen_random_uuid(), now() - interval '30 hours')",
        )
        .await
        .unwrap();
    let report = warren_json(&env, &["prune", "--older-than", "1h", "--json"]);
    assert_eq!(report["idempotency_keys"], 1, "{report}");
    let left: Vec<String> = client
        .query("SELECT key FROM idempotency_keys", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["in-window"]);
}
