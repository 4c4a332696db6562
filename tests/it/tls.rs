//! Encryption, against the real servers: the tests make a CA and a server certificate, have
//! RabbitMQ listen with TLS on a port of its own and Postgres serve `ssl = on` with that
//! certificate, then check that Warren's connections are encrypted, verified as asked, and
//! never quietly plain.
//!
//! The broker's 5672 listener is left alone: the TLS listener is an extra one, started (or
//! restarted with fresh certificates) through `rabbitmqctl eval`. Postgres keeps `ssl = on`
//! with the generated certificate afterwards; plain connections are unaffected.

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::sync::OnceCell;
use uuid::Uuid;
use warren_shared::db::DbError;

/// The port of the broker's TLS listener for these tests (`WARREN_TEST_AMQPS_PORT`).
fn amqps_port() -> u16 {
    std::env::var("WARREN_TEST_AMQPS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(56_071)
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let ca = ca("Warren test CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: cert.pem(),
        server_key: key.serialize_pem(),
    }
}

/// A CA that signed nothing the servers show.
fn stranger_ca_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("warren-stranger-ca-{}.pem", Uuid::new_v4()));
    std::fs::write(&path, ca("A stranger's CA").pem()).unwrap();
    path
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes the certificate files into `dir`, owned by `user`, the key readable by it alone.
fn write_certificates(pki: &Pki, dir: &Path, user: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), &pki.ca).unwrap();
    std::fs::write(dir.join("server.crt"), &pki.server_cert).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server_key).unwrap();
    run(Command::new("chown")
        .args(["-R", &format!("{user}:")])
        .arg(dir));
    run(Command::new("chmod").arg("0700").arg(dir));
    run(Command::new("chmod")
        .arg("0600")
        .arg(dir.join("server.key")));
}

/// The broker's TLS listener: the CA file its certificate chains to. Started once per test
/// process with fresh certificates (restarted if an earlier run left one on the port).
async fn broker_with_tls() -> &'static Path {
    static LISTENER: OnceCell<PathBuf> = OnceCell::const_new();
    LISTENER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                let pki = pki();
                // A new directory each time: Erlang caches PEM files by path.
                let dir = std::env::temp_dir().join(format!("warren-amqps-{}", Uuid::new_v4()));
                write_certificates(&pki, &dir, "rabbitmq");
                let port = amqps_port();
                let listener = format!("{{\"127.0.0.1\", {port}}}");
                // Stopping an absent listener is harmless; a present one has other certificates.
                run(Command::new("rabbitmqctl").args([
                    "eval",
                    &format!("catch rabbit_networking:stop_tcp_listener({listener})."),
                ]));
                // What earlier runs left for their listeners, gone with them.
                if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        let earlier = path.file_name().is_some_and(|name| {
                            name.to_string_lossy().starts_with("warren-amqps-")
                        });
                        if earlier && !path.starts_with(&dir) {
                            let _ = std::fs::remove_dir_all(&path);
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                let started = run(Command::new("rabbitmqctl").args([
                    "eval",
                    &format!(
                        "rabbit_networking:start_ssl_listener({listener}, \
                         [{{certfile, \"{cert}\"}}, {{keyfile, \"{key}\"}}, \
                          {{versions, ['tlsv1.3', 'tlsv1.2']}}], 1).",
                        cert = dir.join("server.crt").display(),
                        key = dir.join("server.key").display(),
                    ),
                ]));
                assert_eq!(started.trim(), "ok", "the TLS listener did not start");
                let ca = dir.with_extension("ca.pem");
                std::fs::write(&ca, &pki.ca).unwrap();
                ca
            })
            .await
            .unwrap()
        })
        .await
}

/// Whether the broker sees the connection named `name` as TLS (`rabbitmqctl list_connections`).
fn broker_says_tls(name: &str) -> Option<bool> {
    let listing = run(Command::new("rabbitmqctl").args([
        "list_connections",
        "ssl",
        "client_properties",
        "-q",
    ]));
    let needle = format!("\"{name}\"");
    listing
        .lines()
        .find(|line| line.contains(&needle))
        .map(|line| line.starts_with("true"))
}

/// A message goes out and comes back through a private queue.
async fn round_trip(connection: &Connection) {
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.name().as_str().into(),
            BasicPublishOptions::default(),
            b"sealed",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(message) = channel
            .basic_get(
                queue.name().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            assert_eq!(message.delivery.data, b"sealed");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_amqps_url_talks_tls_to_the_brokers_tls_listener_and_the_broker_sees_tls() {
    let ca = broker_with_tls().await;
    let name = format!("warren-tls-test-{}", Uuid::new_v4());
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", amqps_port());
    let connection = tokio::time::timeout(
        Duration::from_secs(15),
        warren_shared::amqp::connect_trusting(&url, &name, Some(ca)),
    )
    .await
    .expect("the TLS connection opens in time")
    .expect("the TLS connection opens");
    round_trip(&connection).await;
    assert_eq!(
        broker_says_tls(&name),
        Some(true),
        "the broker lists the connection as TLS"
    );
    warren_shared::amqp::close(&connection, "done").await;
}

#[tokio::test]
async fn an_amqps_url_to_a_plain_listener_is_refused_rather_than_spoken_in_plain_text() {
    let ca = broker_with_tls().await;
    let name = format!("warren-tls-test-{}", Uuid::new_v4());
    // The broker's plain listener.
    let plain = warren_tests::amqp_url().replacen("amqp://", "amqps://", 1);
    let error = tokio::time::timeout(
        Duration::from_secs(15),
        warren_shared::amqp::connect_trusting(&plain, &name, Some(ca)),
    )
    .await
    .expect("the refusal comes in time")
    .expect_err("an amqps:// URL must not connect to a plain listener");
    let message = error.to_string();
    assert!(message.contains("TLS connection to"), "{message}");
    assert!(
        message.contains("does not speak TLS on this port"),
        "{message}"
    );
    assert!(!message.contains("guest:guest"), "{message}");
    assert_eq!(broker_says_tls(&name), None, "no connection was opened");
}

#[tokio::test]
async fn a_broker_certificate_from_an_untrusted_ca_is_refused() {
    broker_with_tls().await;
    let stranger = stranger_ca_file();
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", amqps_port());
    for ca in [None, Some(stranger.as_path())] {
        let error = tokio::time::timeout(
            Duration::from_secs(15),
            warren_shared::amqp::connect_trusting(&url, "warren-tls-untrusted", ca),
        )
        .await
        .expect("the refusal comes in time")
        .expect_err("a certificate from an unknown CA must be refused");
        let message = error.to_string();
        assert!(message.contains("UnknownIssuer"), "{ca:?}: {message}");
    }
    let _ = std::fs::remove_file(stranger);
}

#[tokio::test]
async fn an_unreadable_amqp_ca_file_is_named_in_the_error() {
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", amqps_port());
    let missing = Path::new("/nonexistent/warren-ca.pem");
    let error = warren_shared::amqp::connect_trusting(&url, "warren-tls-no-ca", Some(missing))
        .await
        .expect_err("a missing CA file is an error");
    assert!(
        error.to_string().contains("/nonexistent/warren-ca.pem"),
        "{error}"
    );
}

/// Postgres with `ssl = on` and the generated certificate: the CA file it chains to.
///
/// The certificates live in the data directory (Postgres wants its key owned by it), and are
/// reused by later runs, so the server's configuration changes once and never points at a file
/// that is gone (a server with `ssl = on` and a missing certificate would not start).
async fn postgres_with_tls() -> &'static Path {
    static CA: OnceCell<PathBuf> = OnceCell::const_new();
    CA.get_or_init(|| async {
        let admin = admin().await;
        let data: String = admin
            .query_one("SHOW data_directory", &[])
            .await
            .unwrap()
            .get(0);
        let dir = Path::new(&data).join("warren-test-tls");
        if !dir.join("server.key").exists() {
            let staging = Path::new(&data).join(format!("warren-test-tls.{}", Uuid::new_v4()));
            write_certificates(&pki(), &staging, "postgres");
            // Another run may have won the race: then its certificates are the ones.
            if std::fs::rename(&staging, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        let cert = dir.join("server.crt").display().to_string();
        let key = dir.join("server.key").display().to_string();
        let setting = |name: &'static str| {
            let admin = &admin;
            async move {
                admin
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .unwrap()
                    .get::<_, String>(0)
            }
        };
        if setting("ssl").await != "on"
            || setting("ssl_cert_file").await != cert
            || setting("ssl_key_file").await != key
        {
            // One statement at a time: ALTER SYSTEM refuses to run in a transaction.
            for statement in [
                format!("ALTER SYSTEM SET ssl_cert_file = '{cert}'"),
                format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
                "ALTER SYSTEM SET ssl = on".to_owned(),
                "SELECT pg_reload_conf()".to_owned(),
            ] {
                admin.batch_execute(&statement).await.unwrap();
            }
            // New sessions see the reloaded configuration once the server has loaded it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let fresh = self::admin().await;
                let current: String = fresh
                    .query_one("SHOW ssl_cert_file", &[])
                    .await
                    .unwrap()
                    .get(0);
                if current == cert {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Postgres did not load the TLS settings"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A copy the tests may read whoever owns the original (the same for every run, as the
        // certificates are).
        let ca = std::env::temp_dir().join("warren-test-pg-ca.pem");
        let staging = std::env::temp_dir().join(format!("warren-test-pg-ca.{}", Uuid::new_v4()));
        std::fs::copy(dir.join("ca.crt"), &staging).unwrap();
        std::fs::rename(&staging, &ca).unwrap();
        ca
    })
    .await
}

/// A plain superuser session on the server's `postgres` database.
async fn admin() -> tokio_postgres::Client {
    let url = format!("{}/postgres", warren_tests::pg_server_url());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The server URL on its `postgres` database, with `params` (without the password).
fn pg_url(params: &str) -> String {
    format!("{}/postgres?{params}", warren_tests::pg_server_url())
}

/// Whether Warren's connection for `url` is encrypted, in the server's own words.
async fn encrypted(url: &str) -> Result<bool, DbError> {
    let pool = warren_shared::db::connect(url, 1).await?;
    let client = pool.get().await.unwrap();
    Ok(client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0))
}

#[tokio::test]
async fn postgres_sslmode_require_encrypts_without_checking_the_certificate() {
    postgres_with_tls().await;
    assert!(encrypted(&pg_url("sslmode=require")).await.unwrap());
}

#[tokio::test]
async fn postgres_sslmode_prefer_and_no_sslmode_encrypt_when_the_server_offers_tls() {
    postgres_with_tls().await;
    assert!(encrypted(&pg_url("sslmode=prefer")).await.unwrap());
    let url = format!("{}/postgres", warren_tests::pg_server_url());
    assert!(encrypted(&url).await.unwrap());
}

#[tokio::test]
async fn postgres_sslmode_disable_stays_plain() {
    postgres_with_tls().await;
    assert!(!encrypted(&pg_url("sslmode=disable")).await.unwrap());
}

#[tokio::test]
async fn postgres_verify_full_with_the_servers_ca_connects_encrypted() {
    let ca = postgres_with_tls().await;
    let url = pg_url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    assert!(encrypted(&url).await.unwrap());
    // The key=value form says the same.
    let server: tokio_postgres::Config = warren_tests::pg_server_url().parse().unwrap();
    let host = match &server.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the TLS tests need a TCP Postgres, not {other:?}"),
    };
    let key_value = format!(
        "host={host} port={} user={} dbname=postgres sslmode=verify-full sslrootcert='{}'",
        server.get_ports().first().copied().unwrap_or(5432),
        server.get_user().unwrap_or("postgres"),
        ca.display()
    );
    assert!(encrypted(&key_value).await.unwrap());
}

#[tokio::test]
async fn postgres_verify_full_refuses_a_certificate_from_another_ca() {
    postgres_with_tls().await;
    let stranger = stranger_ca_file();
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = pg_url(&format!(
            "sslmode={mode}&sslrootcert={}",
            stranger.display()
        ));
        let error = encrypted(&url)
            .await
            .expect_err("a certificate of an unknown CA must be refused");
        let message = error.to_string();
        assert!(matches!(error, DbError::Tls(_)), "{mode}: {message}");
        assert!(message.contains(&format!("sslmode={mode}")), "{message}");
        assert!(message.contains("UnknownIssuer"), "{mode}: {message}");
    }
    let _ = std::fs::remove_file(stranger);
}

#[tokio::test]
async fn postgres_verify_full_refuses_a_certificate_for_another_name_which_verify_ca_accepts() {
    let ca = postgres_with_tls().await;
    // Connects to 127.0.0.1, but expects the certificate to name db.elsewhere.test.
    let server = warren_tests::pg_server_url().replacen("127.0.0.1", "db.elsewhere.test", 1);
    let url = |mode: &str| {
        format!(
            "{server}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            ca.display()
        )
    };
    let error = encrypted(&url("verify-full"))
        .await
        .expect_err("a certificate for another name must be refused");
    assert!(
        error
            .to_string()
            .contains("not valid for name \"db.elsewhere.test\""),
        "{error}"
    );
    assert!(encrypted(&url("verify-ca")).await.unwrap());
}

#[tokio::test]
async fn an_unreadable_postgres_root_certificate_is_named_at_start() {
    let error = encrypted(&pg_url(
        "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
    ))
    .await
    .expect_err("a missing root certificate file is an error");
    assert!(matches!(error, DbError::Tls(_)), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/root.crt"),
        "{error}"
    );
}

#[tokio::test]
async fn the_warren_command_trusts_the_ca_files_named_in_its_environment() {
    let amqp_ca = broker_with_tls().await;
    let pg_ca = postgres_with_tls().await;
    let amqps = format!("amqps://guest:guest@127.0.0.1:{}/%2f", amqps_port());
    let database = format!("warren_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let verify_full = format!(
        "{}/{database}?sslmode=verify-full",
        warren_tests::pg_server_url()
    );
    let warren = || {
        let mut command = Command::new(warren_tests::warren_binary());
        command
            .env("WARREN_AMQP_URL", &amqps)
            .env("WARREN_DATABASE_URL", &verify_full)
            .env("WARREN_NAMESPACE", format!("t{}", Uuid::new_v4().simple()))
            .env_remove("WARREN_AMQP_CA_FILE")
            .env_remove("WARREN_DATABASE_CA_FILE")
            .env_remove("RUST_LOG");
        command
    };

    let tasks = warren()
        .env("WARREN_AMQP_CA_FILE", amqp_ca)
        .args(["tasks", "--json"])
        .output()
        .unwrap();
    assert!(
        tasks.status.success(),
        "{}",
        String::from_utf8_lossy(&tasks.stderr)
    );
    let untrusted = warren().args(["tasks", "--json"]).output().unwrap();
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("UnknownIssuer"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );

    let untrusted = warren().arg("migrate").output().unwrap();
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("UnknownIssuer"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    let migrate = warren()
        .env("WARREN_DATABASE_CA_FILE", pg_ca)
        .arg("migrate")
        .output()
        .unwrap();
    warren_tests::drop_database(&database).await;
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
}
