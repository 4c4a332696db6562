//! Connection defaults and the environment variables every Warren program reads.

/// Environment variable holding the AMQP URL.
pub const ENV_AMQP_URL: &str = "WARREN_AMQP_URL";
/// Environment variable holding the Postgres URL.
pub const ENV_DATABASE_URL: &str = "WARREN_DATABASE_URL";
/// Environment variable naming a PEM file of CA certificates that an `amqps://` broker's
/// certificate may chain to, in addition to the system's trust store (a private or self-signed CA).
pub const ENV_AMQP_CA_FILE: &str = "WARREN_AMQP_CA_FILE";
/// Environment variable naming a PEM file of root certificates for Postgres's TLS, used when the
/// URL has no `sslrootcert`.
pub const ENV_DATABASE_CA_FILE: &str = "WARREN_DATABASE_CA_FILE";
/// Environment variable holding the namespace (prefix of every exchange and queue name).
pub const ENV_NAMESPACE: &str = "WARREN_NAMESPACE";

/// The local RabbitMQ with its default account and vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local Postgres; the `warren` database is created if it is missing.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warren";
/// The default namespace: exchanges and queues are named `warren.*`.
pub const DEFAULT_NAMESPACE: &str = "warren";
