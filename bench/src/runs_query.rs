//! The runs-query scenario: how fast an operator's runs list answers over a large history. No
//! broker and no worker: a database of its own is seeded with `--runs-query-runs` runs
//! (1,000,000 by default) in a few set-based statements, analyzed, and then every query of the
//! runs list (first page, each kind of filter, a page deep in the listing through its cursor,
//! and one run by id and by message id) is timed `--runs-query-samples` times.
//!
//! The seeded history: ~10 tasks of skewed sizes; mostly succeeded, ~1 % dead, ~1.5 % halted,
//! a few hundred each running, waiting, retrying and queued, none cancelled; 500 tenants on
//! seven runs in ten; spread over the last 30 days, newest first. A tenth of the runs are the
//! children of 100 fan-outs (1,000 children each at a million runs), created in the same
//! instant as their parent (as one transaction creates them), the newest fan-out at the very
//! top of the listing: the first pages page through runs that share one creation time. One
//! ordinary run in nine has three steps and three transitions.
//!
//! The measurement loop takes the cases and one async fetch function, so that the same cases
//! can be timed through another way in (the HTTP API) and compared, case by case.

use crate::measure::Percentiles;
use crate::scenario::Setup;
use anyhow::{Context, Result};
use chrono::{Duration as Age, Utc};
use std::future::Future;
use std::time::Instant;
use warren_console::tokens::{self, Scope};
use warren_console::{Console, ConsoleConfig};
use warren_shared::state::RunStatus;
use warren_shared::store::{self, RunFilter};

/// The target for each query of the runs list over 1,000,000 runs: p95 below this.
pub(crate) const TARGET_P95_MS: f64 = 50.0;

/// One runs-query measurement.
pub(crate) struct RunsQuery {
    /// Runs seeded (at least 1,000).
    pub(crate) runs: i64,
    /// Timed calls per case.
    pub(crate) samples: usize,
}

/// A query of the runs list, as the console makes it.
#[derive(Debug, Clone)]
pub(crate) enum Query {
    /// A page of runs (`store::page_runs`; `GET /api/v1/runs?...`).
    Page(RunFilter),
    /// One run with its steps and transitions by run id or message id (`store::find_runs`).
    Find(String),
}

/// A named query.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) query: Query,
}

/// What one case measured through one way in.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// The way in (`store`, ...).
    pub(crate) via: String,
    pub(crate) case: String,
    /// Rows the last call returned (runs of a page, runs found).
    pub(crate) rows: usize,
    /// Milliseconds per call.
    pub(crate) ms: Percentiles,
}

/// What the scenario found.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunsQueryOutcome {
    pub(crate) runs: i64,
    pub(crate) samples: usize,
    pub(crate) seed_secs: f64,
    /// The `runs` table and its indexes, MiB.
    pub(crate) table_mib: f64,
    pub(crate) indexes_mib: f64,
    pub(crate) measured: Vec<Measured>,
    /// The scan each page case's plan starts from, by case name.
    pub(crate) plans: Vec<(String, String)>,
}

pub(crate) async fn run(setup: &Setup, query: &RunsQuery) -> Result<RunsQueryOutcome> {
    let database = format!(
        "warren_bench_rq_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let pool = warren_shared::db::prepare(&format!("{}/{database}", setup.pg_url), 2)
        .await
        .context("cannot prepare the runs-query database")?;
    let result = measure_queries(&pool, setup, &database, query).await;
    pool.close();
    drop_database(setup, &database).await;
    result
}

async fn drop_database(setup: &Setup, database: &str) {
    if let Ok((admin, connection)) =
        tokio_postgres::connect(&format!("{}/postgres", setup.pg_url), tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
            ))
            .await;
    }
}

/// The seeded history's shape, for `runs` runs.
struct Shape {
    /// Runs that are not children: numbered 1 (the newest) to `ordinary`.
    ordinary: i64,
    /// Children of each of the 100 fan-outs.
    children: i64,
}

impl Shape {
    fn of(runs: i64) -> Shape {
        let children = (runs / 1_000).max(1);
        Shape {
            ordinary: runs - 100 * children,
            children,
        }
    }

    /// An ordinary run with steps and transitions, halfway down the listing.
    fn middle_run(&self) -> i64 {
        1 + 9 * (self.ordinary / 18)
    }
}

/// The statements that seed the history (numbers only are formatted in).
fn seed_sql(shape: &Shape) -> String {
    let Shape { ordinary, children } = shape;
    let parent_every = (ordinary / 100).max(1);
    format!(
        "SET synchronous_commit = off;
         INSERT INTO runs (id, message_id, task, event, status, stage, outcome, attempt, input,
                           output, error_code, error_message, tenant, worker, published_at,
                           created_at, started_at, finished_at, updated_at)
         SELECT id, 'msg-' || i, task, task, status,
                CASE WHEN status = 'succeeded' THEN 'DONE' END,
                CASE WHEN status = 'halted' THEN 'NEEDS_USER_INPUT' END,
                CASE WHEN status IN ('dead', 'retrying') THEN 3 ELSE 1 END,
                jsonb_build_object('n', i, 'tenant', tenant),
                CASE WHEN status = 'succeeded' THEN jsonb_build_object('ok', true) END,
                CASE WHEN status = 'dead' THEN 'timeout' END,
                CASE WHEN status = 'dead' THEN 'step timed out after 30s' END,
                tenant, 'seed#1', created, created, created + interval '10 ms',
                CASE WHEN status IN ('succeeded', 'halted', 'dead') THEN created + interval '2 s' END,
                created + interval '2 s'
         FROM (
           SELECT i, md5('run' || i)::uuid AS id,
                  now() - interval '30 days' * (i - 1) / {ordinary} AS created,
                  (ARRAY['video.process', 'email.send', 'report.daily', 'image.resize',
                         'invoice.render', 'crm.sync', 'webhook.deliver', 'search.index',
                         'audio.transcribe', 'user.export'])
                    [1 + floor(10 * power((abs(hashint8extended(i, 2)) % 1000) / 1000.0, 2))::int] AS task,
                  CASE WHEN abs(hashint8extended(i, 3)) % 10 < 3 THEN NULL
                       ELSE 'tenant-' || abs(hashint8extended(i, 4)) % 500 END AS tenant,
                  CASE WHEN h < 100 THEN 'dead' WHEN h < 250 THEN 'halted'
                       WHEN h < 280 THEN 'running' WHEN h < 310 THEN 'waiting'
                       WHEN h < 330 THEN 'retrying' WHEN h < 350 THEN 'queued'
                       ELSE 'succeeded' END AS status
           FROM (SELECT i, abs(hashint8extended(i, 1)) % 10000 AS h
                 FROM generate_series(1, {ordinary}) i) g
         ) r;
         INSERT INTO runs (id, message_id, task, event, status, stage, attempt, input, output,
                           tenant, worker, published_at, created_at, started_at, finished_at,
                           updated_at, parent_id)
         SELECT md5('child' || k || '/' || c)::uuid, p.message_id || '/' || c, 'fanout.child',
                'fanout.child', CASE WHEN c % 200 = 0 THEN 'dead' ELSE 'succeeded' END, 'DONE',
                1, jsonb_build_object('n', c), jsonb_build_object('ok', true), p.tenant,
                'seed#1', p.created_at, p.created_at, p.created_at + interval '1 s',
                p.created_at + interval '2 s', p.created_at + interval '2 s', p.id
         FROM generate_series(0, 99) k
         JOIN runs p ON p.id = md5('run' || (1 + k * {parent_every}))::uuid
         CROSS JOIN generate_series(1, {children}) c;
         INSERT INTO run_steps (run_id, step, position, status, attempt, output, worker,
                                started_at, finished_at)
         SELECT md5('run' || i)::uuid, 'step' || s, s, 'succeeded', 1, jsonb_build_object('s', s),
                'seed#1', now() - interval '30 days' * (i - 1) / {ordinary},
                now() - interval '30 days' * (i - 1) / {ordinary} + interval '500 ms'
         FROM generate_series(1, {ordinary}, 9) i CROSS JOIN generate_series(0, 2) s;
         INSERT INTO run_transitions (run_id, from_status, to_status, attempt, worker, reason, at)
         SELECT md5('run' || i)::uuid, f, t, 1, 'seed#1', 'seeded',
                now() - interval '30 days' * (i - 1) / {ordinary}
         FROM generate_series(1, {ordinary}, 9) i
         CROSS JOIN (VALUES (NULL, 'running'), ('running', 'running'), ('running', 'succeeded')) v(f, t);"
    )
}

async fn measure_queries(
    pool: &deadpool_postgres::Pool,
    setup: &Setup,
    database: &str,
    query: &RunsQuery,
) -> Result<RunsQueryOutcome> {
    let shape = Shape::of(query.runs.max(1_000));
    let client = pool.get().await?;
    let seeding = Instant::now();
    client
        .batch_execute(&seed_sql(&shape))
        .await
        .context("seeding the runs failed")?;
    // As autovacuum leaves a table that has stood a while (hint bits set, statistics fresh);
    // on its own, since VACUUM cannot run in the seed's implicit transaction.
    client
        .batch_execute("VACUUM ANALYZE runs, run_steps, run_transitions")
        .await
        .context("vacuuming the seeded runs failed")?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    let sizes = client
        .query_one(
            "SELECT pg_table_size('runs')::float8, pg_indexes_size('runs')::float8, count(*)
             FROM runs",
            &[],
        )
        .await?;
    let runs: i64 = sizes.get(2);

    let cases = cases(&client, &shape).await?;
    let plans = plans(&client, &cases).await?;
    let measured = measure_cases("store", &cases, query.samples, |case| {
        let client = &client;
        let query = case.query.clone();
        async move {
            Ok(match &query {
                Query::Page(filter) => store::page_runs(client, filter).await?.runs.len(),
                Query::Find(id) => store::find_runs(client, id).await?.len(),
            })
        }
    })
    .await?;
    let mut measured = measured;
    measured.extend(measure_http(pool, setup, database, &cases, query.samples).await?);
    Ok(RunsQueryOutcome {
        runs,
        samples: query.samples,
        seed_secs,
        table_mib: sizes.get::<_, f64>(0) / 1024.0 / 1024.0,
        indexes_mib: sizes.get::<_, f64>(1) / 1024.0 / 1024.0,
        measured,
        plans,
    })
}

/// The same cases through the console's HTTP API, as its pages ask for them: a console on
/// this database (on a free loopback port, in this process), a read token, one keep-alive
/// connection. A page is `GET /api/v1/runs?...`, a run by id `GET /api/v1/runs/{id}` (with its
/// steps, transitions, family and logs), by message id `GET /api/v1/runs/search?q=`.
async fn measure_http(
    pool: &deadpool_postgres::Pool,
    setup: &Setup,
    database: &str,
    cases: &[Case],
    samples: usize,
) -> Result<Vec<Measured>> {
    let mut config = ConsoleConfig::new(
        &format!("{}/{database}", setup.pg_url),
        &setup.amqp_url,
        "bench-runs-query",
    );
    config.bind = "127.0.0.1:0".parse()?;
    let console = Console::start(config)
        .await
        .context("the console did not start")?;
    let mut client = pool.get().await?;
    let token = tokens::create(&mut client, "bench", &[Scope::Read], "warren-bench")
        .await?
        .token;
    drop(client);
    let base = format!("http://{}/api/v1", console.addr());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let measured = measure_cases("http", cases, samples, |case| {
        let url = match &case.query {
            Query::Page(filter) => format!("{base}/runs?{}", query_string(filter)),
            Query::Find(id) if uuid::Uuid::parse_str(id).is_ok() => format!("{base}/runs/{id}"),
            Query::Find(id) => format!("{base}/runs/search?q={id}"),
        };
        let request = http.get(url).bearer_auth(&token);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "the console answered {}",
                response.status()
            );
            let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
            Ok(body["runs"].as_array().map_or(1, Vec::len))
        }
    })
    .await;
    console.stop().await;
    measured
}

/// A filter as the console's query string (every value here is URL-safe: task and tenant
/// names, statuses, RFC 3339 times with `Z`, uuids, cursor tokens).
fn query_string(filter: &RunFilter) -> String {
    let mut parts = vec![format!("limit={}", filter.limit)];
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            parts.push(format!("{name}={value}"));
        }
    };
    add("task", filter.task.clone());
    add("status", filter.status.map(|s| s.as_str().to_owned()));
    add("tenant", filter.tenant.clone());
    let rfc3339 =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    add("since", filter.created_after.map(rfc3339));
    add("until", filter.created_before.map(rfc3339));
    add("parent", filter.parent.map(|p| p.to_string()));
    add("after", filter.after.as_ref().map(|c| c.to_token()));
    parts.join("&")
}

/// The queries the runs list makes, with the cursor of the 10th page found by paging there.
async fn cases(client: &deadpool_postgres::Client, shape: &Shape) -> Result<Vec<Case>> {
    let page = |filter: RunFilter| Query::Page(filter);
    let mut cursor = None;
    for _ in 0..9 {
        let filter = RunFilter {
            after: cursor,
            ..RunFilter::default()
        };
        cursor = store::page_runs(client, &filter).await?.next;
    }
    anyhow::ensure!(cursor.is_some(), "fewer than ten pages of runs");
    let newest_parent: uuid::Uuid = client
        .query_one("SELECT md5('run1')::uuid", &[])
        .await?
        .get(0);
    let middle = shape.middle_run();
    let middle_id: uuid::Uuid = client
        .query_one("SELECT md5('run' || $1::bigint)::uuid", &[&middle])
        .await?
        .get(0);
    let two_weeks_ago = Utc::now() - Age::days(14);
    let status = |status| RunFilter {
        status: Some(status),
        ..RunFilter::default()
    };
    let named = |name: &str, query| Case {
        name: name.to_owned(),
        query,
    };
    Ok(vec![
        named("first page (50 runs)", page(RunFilter::default())),
        named(
            "status = succeeded (~97 %)",
            page(status(RunStatus::Succeeded)),
        ),
        named("status = dead (~1 %)", page(status(RunStatus::Dead))),
        named(
            "status = cancelled (no run)",
            page(status(RunStatus::Cancelled)),
        ),
        named(
            "task = crm.sync (~6 %)",
            page(RunFilter {
                task: Some("crm.sync".into()),
                ..RunFilter::default()
            }),
        ),
        named(
            "tenant = tenant-42 (~0.14 %)",
            page(RunFilter {
                tenant: Some("tenant-42".into()),
                ..RunFilter::default()
            }),
        ),
        named(
            "10th page, through the 9th's cursor",
            page(RunFilter {
                after: cursor,
                ..RunFilter::default()
            }),
        ),
        named(
            "one day, two weeks ago",
            page(RunFilter {
                created_after: Some(two_weeks_ago - Age::days(1)),
                created_before: Some(two_weeks_ago),
                ..RunFilter::default()
            }),
        ),
        named(
            "task = crm.sync and status = dead, last 7 days",
            page(RunFilter {
                task: Some("crm.sync".into()),
                status: Some(RunStatus::Dead),
                created_after: Some(Utc::now() - Age::days(7)),
                ..RunFilter::default()
            }),
        ),
        named(
            "a fan-out parent's children",
            page(RunFilter {
                parent: Some(newest_parent),
                ..RunFilter::default()
            }),
        ),
        named(
            "one run by run id (3 steps, 3 transitions)",
            Query::Find(middle_id.to_string()),
        ),
        named(
            "one run by message id",
            Query::Find(format!("msg-{middle}")),
        ),
    ])
}

/// The scan each page case's plan reads (`EXPLAIN`'s first index or scan node).
async fn plans(
    client: &deadpool_postgres::Client,
    cases: &[Case],
) -> Result<Vec<(String, String)>> {
    let mut plans = Vec::new();
    for case in cases {
        let Query::Page(filter) = &case.query else {
            continue;
        };
        let lines = store::runs::explain_page(client, filter, false).await?;
        // The index when there is one (a bitmap scan's is on the line under its heap scan).
        let scan = lines
            .iter()
            .find(|line| line.contains("Index"))
            .or_else(|| lines.iter().find(|line| line.contains("Scan")))
            .map(|line| {
                let node = line.trim_start().trim_start_matches("->").trim();
                node.split("  (").next().unwrap_or(node).to_owned()
            })
            .unwrap_or_default();
        plans.push((case.name.clone(), scan));
    }
    Ok(plans)
}

/// Times `fetch` on every case, `samples` times each, going round the cases (so that anything
/// passing on a shared machine touches them all alike), after two unmeasured rounds (the first
/// reads pages from disk into Postgres's cache). `fetch` answers the rows it got.
pub(crate) async fn measure_cases<F, Fut>(
    via: &str,
    cases: &[Case],
    samples: usize,
    mut fetch: F,
) -> Result<Vec<Measured>>
where
    F: FnMut(&Case) -> Fut,
    Fut: Future<Output = Result<usize>>,
{
    let samples = samples.max(1);
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(samples); cases.len()];
    let mut rows = vec![0; cases.len()];
    for round in 0..samples + 2 {
        for (i, case) in cases.iter().enumerate() {
            let started = Instant::now();
            rows[i] = fetch(case)
                .await
                .with_context(|| format!("{} through {via} failed", case.name))?;
            if round >= 2 {
                times[i].push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(cases
        .iter()
        .zip(times)
        .zip(rows)
        .map(|((case, times), rows)| Measured {
            via: via.to_owned(),
            case: case.name.clone(),
            rows,
            ms: Percentiles::of(times),
        })
        .collect())
}
