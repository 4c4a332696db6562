//! Listing runs (`store::page_runs`, `warren runs list`): every filter pages through exactly the
//! runs it selects, in order, none missed or repeated across pages, even where many runs share
//! one creation time; and every filter goes through its own index on a table large enough for
//! Postgres to care.

use chrono::{DateTime, Duration as Age, Utc};
use std::collections::HashSet;
use uuid::Uuid;
use warren_shared::state::RunStatus;
use warren_shared::store::{self, RunCursor, RunFilter};
use warren_tests::TestEnv;

/// `count` runs, newest first, in groups of `tie` sharing one creation time (a minute apart):
/// tasks `t0`..`t2`, a tenant for three runs in four (`tenant-0`..`tenant-4`), mostly
/// succeeded with some dead, halted, running and waiting, none cancelled. Then `children`
/// children of the newest run, all created with it in one instant (as a fan-out's are),
/// `tenant-1`'s, every tenth dead.
async fn seed(client: &deadpool_postgres::Client, count: i64, tie: i64, children: i64) {
    client
        .execute(
            "INSERT INTO runs (id, message_id, task, event, status, attempt, tenant, created_at)
             SELECT md5('run' || i)::uuid, 'msg-' || i, 't' || i % 3, 'e', status, 1,
                    CASE WHEN i % 4 <> 0 THEN 'tenant-' || i % 5 END,
                    date_trunc('second', now()) - interval '1 minute' * (i / $2::bigint)
             FROM (SELECT i, CASE WHEN i % 10 = 3 THEN 'dead' WHEN i % 10 = 5 THEN 'halted'
                                  WHEN i % 20 = 7 THEN 'running' WHEN i % 20 = 9 THEN 'waiting'
                                  ELSE 'succeeded' END AS status
                   FROM generate_series(0, $1::bigint - 1) i) g",
            &[&count, &tie],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO runs (id, message_id, task, event, status, attempt, tenant, created_at,
                               parent_id)
             SELECT md5('child' || c)::uuid, 'child-' || c, 'child', 'e',
                    CASE WHEN c % 10 = 0 THEN 'dead' ELSE 'succeeded' END, 1, 'tenant-1',
                    p.created_at, p.id
             FROM runs p CROSS JOIN generate_series(1, $1::bigint) c
             WHERE p.id = md5('run0')::uuid",
            &[&children],
        )
        .await
        .unwrap();
    client.batch_execute("ANALYZE runs").await.unwrap();
}

/// One run as the filters see it.
#[derive(Debug, Clone)]
struct Row {
    id: Uuid,
    task: String,
    status: String,
    tenant: Option<String>,
    created_at: DateTime<Utc>,
    parent: Option<Uuid>,
}

async fn every_run(client: &deadpool_postgres::Client) -> Vec<Row> {
    client
        .query(
            "SELECT id, task, status, tenant, created_at, parent_id FROM runs",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Row {
            id: r.get(0),
            task: r.get(1),
            status: r.get(2),
            tenant: r.get(3),
            created_at: r.get(4),
            parent: r.get(5),
        })
        .collect()
}

/// What the filter selects, worked out here: newest first by (created_at, id), a parent's
/// children oldest first. (Postgres compares uuids byte by byte, as `Uuid`'s `Ord` does.)
fn expected(all: &[Row], filter: &RunFilter) -> Vec<Uuid> {
    let mut rows: Vec<&Row> = all
        .iter()
        .filter(|r| filter.task.as_ref().is_none_or(|t| &r.task == t))
        .filter(|r| filter.status.is_none_or(|s| r.status == s.as_str()))
        .filter(|r| {
            filter
                .tenant
                .as_ref()
                .is_none_or(|t| r.tenant.as_ref() == Some(t))
        })
        .filter(|r| filter.created_after.is_none_or(|t| r.created_at >= t))
        .filter(|r| filter.created_before.is_none_or(|t| r.created_at < t))
        .filter(|r| filter.parent.is_none_or(|p| r.parent == Some(p)))
        .collect();
    rows.sort_by_key(|r| (r.created_at, r.id));
    if filter.parent.is_none() {
        rows.reverse();
    }
    rows.iter().map(|r| r.id).collect()
}

/// Every page of `filter`, following each page's cursor: the runs in the order they came.
async fn page_through(client: &deadpool_postgres::Client, filter: &RunFilter) -> Vec<Uuid> {
    let mut seen = Vec::new();
    let mut filter = filter.clone();
    for pages in 1.. {
        let page = store::page_runs(client, &filter).await.unwrap();
        assert!(
            page.runs.len() <= usize::try_from(filter.limit).unwrap(),
            "a page of {} runs for a limit of {}",
            page.runs.len(),
            filter.limit
        );
        seen.extend(page.runs.iter().map(|r| r.id));
        let Some(next) = page.next else {
            // The last page: never an empty one after a full one.
            assert!(
                !page.runs.is_empty() || pages == 1,
                "an empty last page for {filter:?}"
            );
            break;
        };
        assert_eq!(
            page.runs.len(),
            usize::try_from(filter.limit).unwrap(),
            "only a full page has a next one"
        );
        // The token is what travels (a URL, the command line): page on from it.
        let token = next.to_token();
        filter.after = Some(RunCursor::parse(&token).unwrap());
        assert!(pages < 10_000, "paging does not end for {filter:?}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_pages_through_its_runs_once_each_in_order() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    // 1,200 runs in groups of 40 sharing a creation time, and a fan-out of 300 children sharing
    // their parent's (the newest) run's.
    seed(&client, 1_200, 40, 300).await;
    let all = every_run(&client).await;
    assert_eq!(all.len(), 1_500);
    let parent: Uuid = client
        .query_one("SELECT md5('run0')::uuid", &[])
        .await
        .unwrap()
        .get(0);
    let newest = all.iter().map(|r| r.created_at).max().unwrap();
    // A range that starts and ends inside a run of ties would be no test of the bounds: it
    // starts on a group's time (inclusive) and ends on another's (exclusive).
    let (from, to) = (newest - Age::minutes(20), newest - Age::minutes(3));

    let by = |f: fn(&mut RunFilter)| {
        let mut filter = RunFilter::default();
        f(&mut filter);
        filter
    };
    let mut filters = vec![
        RunFilter::default(),
        by(|f| f.task = Some("t1".into())),
        by(|f| f.task = Some("child".into())),
        by(|f| f.task = Some("no.such.task".into())),
        by(|f| f.tenant = Some("tenant-1".into())),
        by(|f| f.tenant = Some("nobody".into())),
        by(|f| f.parent = Some(Uuid::nil())),
    ];
    for status in [
        RunStatus::Succeeded,
        RunStatus::Dead,
        RunStatus::Halted,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Cancelled,
    ] {
        filters.push(RunFilter {
            status: Some(status),
            ..RunFilter::default()
        });
    }
    filters.extend([
        RunFilter {
            created_after: Some(from),
            created_before: Some(to),
            ..RunFilter::default()
        },
        RunFilter {
            created_after: Some(newest),
            ..RunFilter::default()
        },
        RunFilter {
            created_before: Some(newest),
            ..RunFilter::default()
        },
        RunFilter {
            parent: Some(parent),
            ..RunFilter::default()
        },
        RunFilter {
            parent: Some(parent),
            status: Some(RunStatus::Dead),
            ..RunFilter::default()
        },
        RunFilter {
            task: Some("t2".into()),
            status: Some(RunStatus::Succeeded),
            tenant: Some("tenant-2".into()),
            created_after: Some(from),
            created_before: Some(to),
            ..RunFilter::default()
        },
        RunFilter {
            status: Some(RunStatus::Dead),
            tenant: Some("tenant-1".into()),
            ..RunFilter::default()
        },
    ]);
    let mut nonempty = 0;
    for filter in &filters {
        let want = expected(&all, filter);
        if !want.is_empty() {
            nonempty += 1;
        }
        // 7: pages end inside runs of ties; 40: on their edges; 5,000: one page.
        for limit in [7, 40, 5_000] {
            let filter = RunFilter {
                limit,
                ..filter.clone()
            };
            let got = page_through(&client, &filter).await;
            let distinct: HashSet<&Uuid> = got.iter().collect();
            assert_eq!(distinct.len(), got.len(), "a run repeated for {filter:?}");
            assert_eq!(
                got.len(),
                want.len(),
                "{} runs instead of {} for {filter:?}",
                got.len(),
                want.len()
            );
            assert!(got == want, "not in order for {filter:?}");
        }
        // `list_runs` is the first page.
        let first = store::list_runs(
            &client,
            &RunFilter {
                limit: 7,
                ..filter.clone()
            },
        )
        .await
        .unwrap();
        let first: Vec<Uuid> = first.iter().map(|r| r.id).collect();
        assert_eq!(first, want.iter().take(7).copied().collect::<Vec<_>>());
    }
    assert!(nonempty >= 15, "the filters select too little to test");
}

/// Every filter, alone and combined, with and without a cursor, is read through an index on a
/// table of 22,000 runs (20,000 and a fan-out of 2,000): never a scan of the table. Alone, each
/// filter comes in its index's order (no sort), and the selective ones through their own index.
/// The plans are those `page_runs` gets: planned with the values.
#[tokio::test(flavor = "multi_thread")]
async fn every_filter_reads_an_index_in_order() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    seed(&client, 20_000, 3, 2_000).await;
    let parent: Uuid = client
        .query_one("SELECT md5('run0')::uuid", &[])
        .await
        .unwrap()
        .get(0);
    // A cursor deep in the listing: a page from the middle.
    let middle: (DateTime<Utc>, Uuid) = {
        let row = client
            .query_one(
                "SELECT created_at, id FROM runs ORDER BY created_at DESC, id DESC OFFSET 10000 LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let cursor = RunCursor {
        created_at: middle.0,
        id: middle.1,
    };
    let day_ago = Utc::now() - Age::days(1);
    let hour_ago = Utc::now() - Age::hours(1);

    let status = |s| RunFilter {
        status: Some(s),
        ..RunFilter::default()
    };
    // (filter, the index it must read, or any index; whether it is one filter alone, which must
    // come without a sort)
    let shapes: Vec<(RunFilter, Option<&str>, bool)> = vec![
        (RunFilter::default(), Some("runs_created_page_idx"), true),
        (
            RunFilter {
                created_after: Some(day_ago),
                created_before: Some(hour_ago),
                ..RunFilter::default()
            },
            Some("runs_created_page_idx"),
            true,
        ),
        (
            RunFilter {
                task: Some("t1".into()),
                ..RunFilter::default()
            },
            None,
            true,
        ),
        (
            RunFilter {
                task: Some("child".into()),
                ..RunFilter::default()
            },
            Some("runs_task_page_idx"),
            true,
        ),
        (
            RunFilter {
                task: Some("no.such.task".into()),
                ..RunFilter::default()
            },
            Some("runs_task_page_idx"),
            true,
        ),
        (status(RunStatus::Succeeded), None, true),
        (status(RunStatus::Dead), Some("runs_status_page_idx"), true),
        (
            status(RunStatus::Waiting),
            Some("runs_status_page_idx"),
            true,
        ),
        (
            status(RunStatus::Cancelled),
            Some("runs_status_page_idx"),
            true,
        ),
        (
            RunFilter {
                tenant: Some("tenant-3".into()),
                ..RunFilter::default()
            },
            Some("runs_tenant_page_idx"),
            true,
        ),
        (
            RunFilter {
                tenant: Some("nobody".into()),
                ..RunFilter::default()
            },
            Some("runs_tenant_page_idx"),
            true,
        ),
        (
            RunFilter {
                parent: Some(parent),
                ..RunFilter::default()
            },
            Some("runs_parent_page_idx"),
            true,
        ),
        (
            RunFilter {
                task: Some("t2".into()),
                status: Some(RunStatus::Dead),
                tenant: Some("tenant-2".into()),
                created_after: Some(day_ago),
                ..RunFilter::default()
            },
            None,
            false,
        ),
        (
            RunFilter {
                status: Some(RunStatus::Halted),
                created_after: Some(day_ago),
                created_before: Some(hour_ago),
                ..RunFilter::default()
            },
            Some("runs_status_page_idx"),
            false,
        ),
        (
            RunFilter {
                parent: Some(parent),
                status: Some(RunStatus::Dead),
                ..RunFilter::default()
            },
            Some("runs_parent_page_idx"),
            false,
        ),
    ];
    for (filter, index, alone) in shapes {
        for after in [None, Some(cursor)] {
            let filter = RunFilter {
                after,
                ..filter.clone()
            };
            let plan = store::runs::explain_page(&client, &filter, false)
                .await
                .unwrap()
                .join("\n");
            assert!(!plan.contains("Seq Scan"), "{filter:?}:\n{plan}");
            assert!(plan.contains("Index"), "{filter:?}:\n{plan}");
            if let Some(index) = index {
                assert!(plan.contains(index), "not {index}: {filter:?}:\n{plan}");
            }
            if alone {
                assert!(!plan.contains("Sort"), "{filter:?}:\n{plan}");
            }
        }
    }
}

/// `warren runs list` with `--tenant`, `--since`, `--until` and `--limit` prints a cursor under
/// each full page, and `--after` with it prints the next page: together, each of the tenant's
/// runs once. Bad times and cursors are one-line usage errors.
#[tokio::test(flavor = "multi_thread")]
async fn runs_list_pages_on_with_the_cursor_it_prints() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    seed(&client, 30, 10, 0).await;
    let all = every_run(&client).await;
    let want: HashSet<Uuid> = all
        .iter()
        .filter(|r| r.tenant.as_deref() == Some("tenant-1"))
        .map(|r| r.id)
        .collect();
    assert_eq!(want.len(), 5);
    let until = (Utc::now() + Age::hours(1)).to_rfc3339();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut command = env.warren();
        command.args([
            "runs", "list", "--tenant", "tenant-1", "--since", "2h", "--until", &until, "--limit",
            "2",
        ]);
        if let Some(cursor) = &after {
            command.args(["--after", cursor]);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        pages += 1;
        seen.extend(stdout.lines().filter_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.parse::<Uuid>().ok())
        }));
        after = stdout
            .lines()
            .find_map(|line| line.strip_prefix("next page: --after "))
            .map(str::to_owned);
        if after.is_none() {
            break;
        }
        assert!(pages < 10, "{stdout}");
    }
    assert_eq!(pages, 3, "pages of 2, 2 and 1");
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), want);

    // As JSON, the page is the array it always was; the cursor goes to standard error.
    let output = env
        .warren()
        .args([
            "runs", "list", "--tenant", "tenant-1", "--limit", "3", "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let cursor = stderr
        .lines()
        .find_map(|line| line.strip_prefix("next page: --after "))
        .unwrap_or_else(|| panic!("no cursor in {stderr:?}"));
    let output = env
        .warren()
        .args([
            "runs", "list", "--tenant", "tenant-1", "--json", "--after", cursor,
        ])
        .output()
        .unwrap();
    let rest: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rest.as_array().map(Vec::len), Some(2));
    assert!(output.stderr.is_empty(), "the last page has no cursor");

    for (flag, value, says) in [
        ("--after", "page-2", "is not a runs cursor"),
        ("--since", "yesterday", "nor a duration back from now"),
        (
            "--until",
            "2026-13-01T00:00:00Z",
            "nor a duration back from now",
        ),
    ] {
        let output = env
            .warren()
            .args(["runs", "list", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}
