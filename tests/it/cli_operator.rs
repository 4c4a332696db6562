//! The command line as an operator meets it: no password in anything it prints, an answer and
//! nothing else, one error line that says its cause once, the bulk publish that stops halfway,
//! and several replicas started on one host with the defaults.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use warren_tests::{TestEnv, warren_binary};
use warren_worker::demo::{self, player};

/// A password no output may contain.
const PASSWORD: &str = "Pw-7f3kq-LEAKME";

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `warren ARGS` with these connection strings, stopped after `seconds` (a worker that starts
/// drains on SIGTERM and exits).
fn warren_with(env: &TestEnv, amqp: &str, database: &str, args: &[&str], seconds: u32) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg(seconds.to_string())
        .arg(warren_binary())
        .args(args)
        .env("WARREN_AMQP_URL", amqp)
        .env("WARREN_DATABASE_URL", database)
        .env("WARREN_NAMESPACE", &env.namespace)
        .env("WARREN_HTTP_ADDR", "off")
        .env("WARREN_GRACE_PERIOD", "1s")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Every subcommand, its help, and a few with every log line shown.
const COMMANDS: &[&[&str]] = &[
    &["--help"],
    &["worker", "--help"],
    &["publish", "--help"],
    &["migrate", "--help"],
    &["runs", "list", "--help"],
    &["runs", "show", "--help"],
    &["tasks", "--help"],
    &["tasks", "validate", "--help"],
    &["dlq", "list", "--help"],
    &["dlq", "show", "--help"],
    &["dlq", "replay", "--help"],
    &["dlq", "purge", "--help"],
    &["workers", "--help"],
    &["publish", "player.dump", "--data", r#"{"playerId":"p-1"}"#],
    &["migrate"],
    &["runs", "list"],
    &["runs", "show", "no-such-run"],
    &["tasks"],
    &["dlq", "list", "player.dump"],
    &["dlq", "show", "no-such-letter"],
    &["dlq", "replay", "player.dump", "--id", "no-such-letter"],
    &["dlq", "purge", "player.dump", "--yes"],
    &["workers"],
    &["-vvv", "runs", "list"],
    &["-vvv", "tasks"],
    &["-vvv", "--log-format", "json", "dlq", "list", "player.dump"],
];

/// Every command, with connection strings that carry a password in each place one can sit (URL
/// userinfo, `?password=`, key=value, quoted or not), to servers that answer and refuse it, that
/// answer and accept it (the local Postgres trusts), and that do not answer: the password
/// appears in no help text, answer, error or log line.
#[tokio::test(flavor = "multi_thread")]
async fn no_command_prints_a_password_from_its_connection_strings() {
    let env = TestEnv::new().await;
    for task in demo::registry().tasks() {
        env.declared(task.id());
    }
    let db = env.database_url.rsplit('/').next().unwrap().to_owned();
    let amqp_refused = format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f");
    let amqp_unreachable = format!("amqp://guest:{PASSWORD}@127.0.0.1:1/%2f");
    let variants = [
        (
            amqp_refused.clone(),
            format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432/{db}"),
        ),
        (
            amqp_unreachable.clone(),
            format!("postgres://postgres@127.0.0.1:5432/{db}?password={PASSWORD}"),
        ),
        (
            amqp_refused.clone(),
            format!("host=127.0.0.1 port=5432 user=postgres password={PASSWORD} dbname={db}"),
        ),
        (
            env.amqp_url.clone(),
            format!("host=127.0.0.1 port=5432 user=postgres password='{PASSWORD}' dbname={db}"),
        ),
        (
            amqp_unreachable.clone(),
            format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/{db}"),
        ),
        (
            amqp_unreachable,
            format!("host=127.0.0.1 port=1 user=postgres password={PASSWORD} dbname={db}"),
        ),
        (
            amqp_refused,
            format!("postgres://postgres@127.0.0.1:1/{db}?sslmode=disable&password={PASSWORD}"),
        ),
    ];
    // Workers run longest (a refused broker is retried for a few seconds): start them first.
    let workers: Vec<_> = variants
        .iter()
        .map(|(amqp, database)| {
            let child = warren_with(&env, amqp, database, &["worker"], 8)
                .spawn()
                .unwrap();
            (format!("worker with {amqp} and {database}"), child)
        })
        .collect();
    let mut checked = 0;
    for (amqp, database) in &variants {
        let children: Vec<_> = COMMANDS
            .iter()
            .map(|args| {
                let child = warren_with(&env, amqp, database, args, 20).spawn().unwrap();
                (format!("{args:?} with {amqp} and {database}"), child)
            })
            .collect();
        for (what, child) in children {
            let output = child.wait_with_output().unwrap();
            let (stdout, stderr) = text(&output);
            assert!(!stdout.contains(PASSWORD), "{what}: stdout:\n{stdout}");
            assert!(!stderr.contains(PASSWORD), "{what}: stderr:\n{stderr}");
            checked += 1;
        }
    }
    for (what, child) in workers {
        let output = child.wait_with_output().unwrap();
        let (stdout, stderr) = text(&output);
        assert!(!stdout.contains(PASSWORD), "{what}: stdout:\n{stdout}");
        assert!(!stderr.contains(PASSWORD), "{what}: stderr:\n{stderr}");
        checked += 1;
    }
    assert_eq!(checked, variants.len() * (COMMANDS.len() + 1));
}

/// A command prints its answer and nothing else: no library's log line after a replay that
/// worked; a wrong password or vhost is one `error:` line, not the driver's complaints before it.
#[tokio::test(flavor = "multi_thread")]
async fn commands_print_their_answer_and_nothing_else() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let output = env
        .warren()
        .args([
            "publish",
            player::TASK,
            "--message-id",
            "quiet-1",
            "--data",
            r#"{"playerId":""}"#,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    assert_eq!(env.wait_finished("quiet-1").await.summary.status, "dead");

    for args in [
        &["runs", "list"][..],
        &["runs", "show", "quiet-1"],
        &["tasks"],
        &["workers"],
        &["migrate"],
        &["dlq", "list", player::TASK],
        &["dlq", "show", "quiet-1"],
        &["dlq", "replay", player::TASK, "--id", "quiet-1"],
    ] {
        let output = env.warren().args(args).output().unwrap();
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(!stdout.is_empty(), "{args:?} printed no answer");
        assert_eq!(stderr, "", "{args:?} printed more than its answer");
    }

    for amqp in [
        "amqp://guest:wrong-password@127.0.0.1:5672/%2f",
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
    ] {
        let output = env
            .warren()
            .args(["tasks"])
            .env("WARREN_AMQP_URL", amqp)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(1), "{amqp}: {stderr}");
        assert_eq!(stdout, "");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{amqp}: {stderr}");
        // (The default account's password is its user name: both are masked there.)
        assert!(
            lines[0].starts_with("error: cannot reach the broker at amqp://")
                && lines[0].contains(":***@127.0.0.1:5672/"),
            "{stderr}"
        );
    }

    worker.shutdown().await.unwrap();
}

/// The cause of a failure is said once, however many layers carried it.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_says_its_cause_once() {
    let env = TestEnv::new().await;
    for (args, var, value) in [
        (
            ["runs", "list"],
            "WARREN_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/warren",
        ),
        (
            ["tasks", "--json"],
            "WARREN_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        ),
    ] {
        let output = env.warren().args(args).env(var, value).output().unwrap();
        let (_, stderr) = text(&output);
        assert!(!output.status.success());
        assert_eq!(
            stderr.matches("Connection refused").count(),
            1,
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// A bad line in the middle of an NDJSON bulk publish: the command stops there, names the line
/// and the problem, says what was published before it, and exits 1; what it said went out did.
#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_publish_that_meets_a_bad_line_says_where_and_what_went_out() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let mut child = env
        .warren()
        .args(["publish", player::TASK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"playerId": "bulk-1"}}"#).unwrap();
    writeln!(stdin).unwrap();
    writeln!(stdin, r#"{{"playerId": "bulk-2"}}"#).unwrap();
    writeln!(stdin, r#"{{"playerId": "bulk-3"}}"#).unwrap();
    writeln!(stdin, r#"{{"playerId": "bulk-4",}}"#).unwrap();
    writeln!(stdin, r#"{{"playerId": "bulk-5"}}"#).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.trim_end(),
        "error: line 5: not valid JSON: key must be a string at column 23; published 3 event(s), every line before it; nothing from line 5 on was sent"
    );
    let runs = env.wait_for_finished_runs(3, Duration::from_secs(30)).await;
    assert_eq!(runs.len(), 3);
    worker.shutdown().await.unwrap();
}

/// `warren runs list --json` gives each run's message id; an unknown task is an error that lists
/// the known ones (a known task with no runs is an empty list).
#[tokio::test(flavor = "multi_thread")]
async fn runs_list_gives_message_ids_and_refuses_unknown_tasks() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let output = env
        .warren()
        .args([
            "publish",
            player::TASK,
            "--message-id",
            "listed-1",
            "--data",
            r#"{"playerId":"p-1"}"#,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    env.wait_finished("listed-1").await;

    let output = env
        .warren()
        .args(["runs", "list", "--json"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(runs[0]["message_id"], "listed-1", "{runs}");
    assert_eq!(runs[0]["task"], player::TASK);

    let output = env
        .warren()
        .args(["runs", "list", "--task", "no.such.task"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stderr.starts_with("error: unknown task \"no.such.task\""),
        "{stderr}"
    );
    assert!(stderr.contains("video.process"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let output = env
        .warren()
        .args(["runs", "list", "--task", "video.process"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    assert!(text(&output).0.contains("0 run(s)"));
    worker.shutdown().await.unwrap();
}

/// `publish --at` a time long past (a wrong year, day or zone) is refused and nothing is
/// published; a few seconds of clock skew publish at once.
#[tokio::test(flavor = "multi_thread")]
async fn publish_at_a_time_in_the_past_is_refused() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(demo::registry()).await;
    let output = env
        .warren()
        .args([
            "publish",
            player::TASK,
            "--at",
            "2020-01-01T00:00:00Z",
            "--data",
            r#"{"playerId":"p-past"}"#,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stderr.starts_with("error: --at 2020-01-01T00:00:00.000Z is ")
            && stderr.contains("in the past"),
        "{stderr}"
    );

    let skewed = (chrono::Utc::now() - chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let output = env
        .warren()
        .args([
            "publish",
            player::TASK,
            "--message-id",
            "skewed-1",
            "--at",
            &skewed,
            "--data",
            r#"{"playerId":"p-now"}"#,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output).1);
    env.wait_finished("skewed-1").await;
    let runs = env.wait_for_finished_runs(1, Duration::from_secs(5)).await;
    assert_eq!(runs.len(), 1, "the refused publish started a run: {runs:?}");
    worker.shutdown().await.unwrap();
}

/// A replica started with its output read, and the address it serves HTTP on, from its log.
struct Replica {
    _child: warren_tests::TestWorker,
    log: Vec<String>,
}

impl Replica {
    /// Starts `warren worker` with the default HTTP address and reads its log until it says
    /// where it serves HTTP (or exits).
    fn start(env: &TestEnv, id: &str) -> Replica {
        let mut command = env.warren();
        command
            .args(["worker", "--worker-id", id])
            .env_remove("WARREN_HTTP_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = warren_tests::TestWorker::from(command.spawn().unwrap());
        let stderr = child.stderr.take().unwrap();
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let serving = line.contains("serving=");
            log.push(line);
            if serving {
                break;
            }
        }
        Replica { _child: child, log }
    }

    fn log(&self) -> String {
        self.log.join("\n")
    }
}

/// The README's "run several": replicas started on one host with the defaults all run. The
/// default HTTP port taken (by the test, or anyone), each serves on a free port and says which;
/// an address given explicitly and taken is refused with the real cause and the way out.
#[tokio::test(flavor = "multi_thread")]
async fn several_replicas_run_on_one_host_with_the_defaults() {
    let env = TestEnv::new().await;
    for task in demo::registry().tasks() {
        env.declared(task.id());
    }
    // Port 9464 held for the length of the test (unless someone else holds it already).
    let _default_port = std::net::TcpListener::bind("0.0.0.0:9464");

    let replicas = [
        Replica::start(&env, "several-a"),
        Replica::start(&env, "several-b"),
    ];
    let mut ports = Vec::new();
    for replica in &replicas {
        let log = replica.log();
        assert!(log.contains("worker consuming"), "{log}");
        let warning = replica
            .log
            .iter()
            .find(|line| line.contains("the default HTTP port is taken"))
            .unwrap_or_else(|| panic!("no word of the port taken:\n{log}"));
        let serving = warning
            .split("serving=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address served: {warning}"));
        let port = serving.rsplit(':').next().unwrap().to_owned();
        assert_ne!(port, "9464");
        assert!(
            answers_200(&format!("127.0.0.1:{port}"), "/healthz").await,
            "replica at {serving} does not answer /healthz"
        );
        ports.push(port);
    }
    assert_ne!(ports[0], ports[1]);

    let taken = ports[0].clone();
    let mut refused = env
        .warren()
        .args(["worker", "--worker-id", "several-c", "--http-addr"])
        .arg(format!("127.0.0.1:{taken}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = refused.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(refused.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.starts_with(&format!(
            "error: cannot serve /metrics, /healthz and /readyz on 127.0.0.1:{taken}: the port is in use"
        )) && error.contains("--http-addr"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach"), "{stderr}");
    drop(replicas);
}

/// `GET path` on `addr` answers 200.
async fn answers_200(addr: &str, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await;
    response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200")
}

/// `--db-pool-size` (here by `WARREN_DB_POOL_SIZE`) bounds the connections a replica opens,
/// under load.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_opens_no_more_postgres_connections_than_its_pool_size() {
    let env = TestEnv::new().await;
    for task in demo::registry().tasks() {
        env.declared(task.id());
    }
    let application = format!("pool-{}", env.namespace);
    let database_url = format!("{}?application_name={application}", env.database_url);
    let replica = {
        let mut command = env.warren();
        command
            .args(["worker", "--worker-id", "pool-size", "--concurrency", "200"])
            .env("WARREN_DATABASE_URL", &database_url)
            .env("WARREN_DB_POOL_SIZE", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        warren_tests::TestWorker::from(command.spawn().unwrap())
    };
    env.wait_consuming(&[player::TASK]).await;
    let producer = env.producer().await;
    for i in 0..400 {
        producer
            .publish(
                player::TASK,
                &serde_json::json!({ "playerId": format!("pool-{i}") }),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let client = env.pool.get().await.unwrap();
    let mut most = 0i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
                &[&application],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(open);
        let finished: i64 = client
            .query_one(
                "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'dead', 'halted')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if finished == 400 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{finished} of 400 runs finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most >= 1, "the replica's connections were not seen");
    assert!(most <= 2, "{most} connections with a pool of 2");
    drop(replica);
}

/// The publisher metrics are labelled by route and destination, never by routing key: a dead
/// letter counts as `route="queue"` with its queue as destination (delayed routes, whose keys
/// spell their delay, are covered by the producer's unit test).
#[tokio::test(flavor = "multi_thread")]
async fn publisher_metrics_are_labelled_by_route_not_by_routing_key() {
    let env = TestEnv::new().await;
    let mut config = env.worker_config();
    config.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let worker = env.start_worker_with(config, demo::registry()).await;
    let addr = worker.http_addr().unwrap().to_string();
    let producer = env.producer().await;
    let options = warren_producer::PublishOptions {
        message_id: Some("metrics-dead-1".into()),
        ..Default::default()
    };
    producer
        .publish(
            player::TASK,
            &serde_json::json!({ "playerId": "" }),
            options,
        )
        .await
        .unwrap();
    assert_eq!(
        env.wait_finished("metrics-dead-1").await.summary.status,
        "dead"
    );
    let metrics = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut stream, &mut body).unwrap();
        body
    })
    .await
    .unwrap();
    let dead_letter = format!(
        r#"warren_publish_confirms_total{{route="queue",destination="{}"}}"#,
        env.topology().dead_letter_queue(player::TASK)
    );
    assert!(
        metrics.contains(&dead_letter),
        "no {dead_letter} in:\n{metrics}"
    );
    assert!(!metrics.contains("routing_key="), "{metrics}");
    worker.shutdown().await.unwrap();
}
