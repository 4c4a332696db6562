//! Postgres timeouts, against the real server: no Warren connection waits without end, on a
//! server that does not answer, a row lock someone forgot, or a full pool; and a replica that
//! starts while another migrates waits for it however long it takes.

use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use uuid::Uuid;
use warren_shared::db::{self, DbError};
use warren_tests::TestEnv;

/// A plain session of the test, outside Warren's settings.
async fn session(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn show(client: &deadpool_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn warren_connections_carry_statement_and_lock_timeouts_that_the_url_may_change() {
    let env = TestEnv::new().await;
    let client = env.pool.get().await.unwrap();
    assert_eq!(show(&client, "statement_timeout").await, "30s");
    assert_eq!(show(&client, "lock_timeout").await, "5s");

    let url = format!("{}?options=-c%20lock_timeout%3D1500ms", env.database_url);
    let pool = db::connect(&url, 1).await.unwrap();
    let client = pool.get().await.unwrap();
    assert_eq!(show(&client, "lock_timeout").await, "1500ms");
    assert_eq!(show(&client, "statement_timeout").await, "30s");
}

#[tokio::test]
async fn a_statement_blocked_on_a_row_lock_fails_after_the_lock_timeout_instead_of_hanging() {
    let env = TestEnv::new().await;
    let holder = session(&env.database_url).await;
    holder
        .batch_execute(
            "CREATE TABLE lock_probe (id int PRIMARY KEY);
             INSERT INTO lock_probe VALUES (1);",
        )
        .await
        .unwrap();
    // A transaction someone left open, holding the row.
    holder
        .batch_execute("BEGIN; SELECT * FROM lock_probe WHERE id = 1 FOR UPDATE;")
        .await
        .unwrap();

    let client = env.pool.get().await.unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        client.execute("UPDATE lock_probe SET id = id WHERE id = 1", &[]),
    )
    .await
    .expect("the blocked statement must give up, not hang")
    .expect_err("the row is locked");
    let waited = started.elapsed();
    assert_eq!(
        error.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE),
        "{error:?}"
    );
    assert!(
        error
            .as_db_error()
            .is_some_and(|e| e.message().contains("lock timeout")),
        "{error:?}"
    );
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(10)).contains(&waited),
        "gave up after {waited:?}, expected the 5 s lock timeout"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn every_pool_bounds_the_wait_for_a_connection_and_for_a_new_one() {
    let env = TestEnv::new().await;
    let timeouts = env.pool.timeouts();
    assert_eq!(timeouts.wait, Some(db::POOL_WAIT_TIMEOUT));
    assert_eq!(timeouts.create, Some(db::settings::DEFAULT_CONNECT_TIMEOUT));

    // A pool of one whose connection is taken: a caller gets an error once the wait is over.
    let pool = db::connect(&env.database_url, 1).await.unwrap();
    let _taken = pool.get().await.unwrap();
    let started = Instant::now();
    let wait = deadpool_postgres::Timeouts {
        wait: Some(Duration::from_millis(300)),
        ..pool.timeouts()
    };
    let error = pool
        .timeout_get(&wait)
        .await
        .expect_err("no connection is free");
    assert!(
        matches!(
            error,
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_server_that_accepts_but_never_answers_fails_the_connection_within_the_connect_timeout() {
    // A listener that takes the TCP connection and then says nothing, as a Postgres that is
    // paused or drowning does: tokio-postgres's own connect_timeout covers only the TCP connect.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/warren?connect_timeout=1");
    for attempt in ["pool", "ensure_database"] {
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(15), async {
            match attempt {
                "pool" => db::connect(&url, 1).await.map(drop),
                _ => db::ensure_database(&url).await,
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{attempt}: still waiting after 15 s"));
        let error = outcome.expect_err("nothing answers");
        assert!(
            matches!(error, DbError::ConnectTimeout(d) if d == Duration::from_secs(1)),
            "{attempt}: {error}"
        );
        assert!(
            error.to_string().contains("no connection within 1s"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{attempt}");
    }
    silent.abort();
}

#[tokio::test]
async fn a_replica_waits_for_another_replicas_migration_longer_than_its_statement_and_lock_timeouts()
 {
    let database = format!("warren_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = format!("{}/{database}", warren_tests::pg_server_url());
    db::ensure_database(&url).await.unwrap();
    // Another replica, migrating: it holds the migration lock.
    let other = session(&url).await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&db::MIGRATION_LOCK_KEY])
        .await
        .unwrap();

    // This replica's statements and lock waits are cut at 1 s.
    let impatient = format!("{url}?options=-c%20statement_timeout%3D1s%20-c%20lock_timeout%3D1s");
    let starting = tokio::spawn(async move { db::prepare(&impatient, 2).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !starting.is_finished(),
        "the replica gave up while the other migrated: {:?}",
        starting.await
    );

    other
        .execute("SELECT pg_advisory_unlock($1)", &[&db::MIGRATION_LOCK_KEY])
        .await
        .unwrap();
    let pool = tokio::time::timeout(Duration::from_secs(15), starting)
        .await
        .expect("the replica goes on once the lock is free")
        .unwrap()
        .expect("and migrates");
    let client = pool.get().await.unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied as usize, db::embedded_migrations().len());
    // The pooled connection is back to its own statement timeout.
    assert_eq!(show(&client, "statement_timeout").await, "1s");
    drop(client);
    pool.close();
    drop(other);
    warren_tests::drop_database(&database).await;
}

/// A TCP relay to Postgres that can stop passing bytes, both ways, as a paused server or a
/// network that drops packets would: connections stay open, and nothing answers.
struct Stall {
    port: u16,
    paused: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
}

impl Stall {
    async fn start(upstream: String) -> Stall {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, _) = tokio::sync::watch::channel(false);
        let gate = paused.clone();
        let relay = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pass(client_read, server_write, gate.subscribe()));
                tokio::spawn(Self::pass(server_read, client_write, gate.subscribe()));
            }
        });
        Stall {
            port,
            paused,
            relay,
        }
    }

    /// Copies `from` to `to`, holding what it read while the relay is paused.
    async fn pass(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut paused: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = from.read(&mut buffer).await.unwrap_or(0);
            if paused.wait_for(|paused| !paused).await.is_err() {
                return;
            }
            if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
                let _ = to.shutdown().await;
                return;
            }
        }
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.pause(false);
        self.relay.abort();
    }
}

async fn readiness(addr: std::net::SocketAddr) -> Option<u16> {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

/// Waits until `/readyz` answers `status`, and returns how long that took.
async fn wait_readiness(addr: std::net::SocketAddr, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = readiness(addr).await;
        if got == Some(status) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz still answers {got:?} after {within:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_postgres_stops_answering_turns_unready_then_resumes_losing_nothing() {
    use warren_worker::demo::{self, video};
    let env = TestEnv::new().await;
    let server: tokio_postgres::Config = warren_tests::pg_server_url().parse().unwrap();
    let host = match &server.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("this test relays TCP, not {other:?}"),
    };
    let port = server.get_ports().first().copied().unwrap_or(5432);
    let stall = Stall::start(format!("{host}:{port}")).await;
    let mut config = env.worker_config();
    config.database_url = env.database_url.replacen(
        &format!("{host}:{port}"),
        &format!("127.0.0.1:{}", stall.port),
        1,
    );
    assert_ne!(config.database_url, env.database_url);
    config.http_addr = Some("127.0.0.1:0".parse().unwrap());
    let worker = env.start_worker_with(config, demo::registry()).await;
    let addr = worker.http_addr().unwrap();
    wait_readiness(addr, 200, Duration::from_secs(15)).await;

    let producer = env.producer().await;
    let publish = |count: usize| {
        let producer = &producer;
        async move {
            for _ in 0..count {
                producer
                    .publish(
                        video::TASK,
                        &warren_tests::video_payload(serde_json::json!({})),
                        warren_producer::PublishOptions::default(),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    publish(10).await;
    env.wait_for_finished_runs(10, Duration::from_secs(30))
        .await;

    // Postgres stops answering while runs are under way.
    stall.pause(true);
    publish(10).await;
    let unready_after = wait_readiness(
        addr,
        503,
        warren_worker::WRITE_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    eprintln!("unready {unready_after:?} after Postgres stopped answering");
    stall.pause(false);
    wait_readiness(addr, 200, Duration::from_secs(20)).await;

    let runs = env
        .wait_for_finished_runs(20, Duration::from_secs(40))
        .await;
    assert_eq!(runs.len(), 20);
    assert!(runs.iter().all(|run| run.status == "succeeded"), "{runs:?}");
    worker.shutdown().await.unwrap();
}
