//! Connection defaults and the environment variables every Warren program reads.

/// Environment variable holding the AMQP URL.
pub const ENV_AMQP_URL: &str = "WARREN_AMQP_URL";
/// Environment variable holding the Postgres URL.
pub const ENV_DATABASE_URL: &str = "WARREN_DATABASE_URL";
/// Environment variable holding the namespace (prefix of every exchange and queue name).
pub const ENV_NAMESPACE: &str = "WARREN_NAMESPACE";

/// The local RabbitMQ with its default account and vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local Postgres; the `warren` database is created if it is missing.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warren";
/// The default namespace: exchanges and queues are named `warren.*`.
pub const DEFAULT_NAMESPACE: &str = "warren";
