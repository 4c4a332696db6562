//! A console for a test: started in-process on a free port against the test's database and
//! namespace, with one token per scope, and an HTTP client that keeps its connections alive.

use crate::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use warren_console::tokens::{self, Scope};
use warren_console::{Console, ConsoleConfig};
use warren_worker::{RetryPolicy, StepContext, StepError, StepOutcome, Task, code, step};

/// A running console and the tokens to call it with.
pub struct TestConsole {
    /// Its address, `http://127.0.0.1:PORT`.
    pub base: String,
    /// A token with every scope.
    pub admin: String,
    /// A token that may only read.
    pub read: String,
    /// A token that may only publish.
    pub publish: String,
    /// The client (keep-alive, no cookies of its own: tests send them by hand).
    pub http: reqwest::Client,
    console: Option<Console>,
}

impl TestConsole {
    /// Starts a console for `env`, with `configure` applied to its configuration.
    pub async fn start_with(env: &TestEnv, configure: impl FnOnce(&mut ConsoleConfig)) -> Self {
        let mut config = ConsoleConfig::new(&env.database_url, &env.amqp_url, &env.namespace);
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.live_interval = Duration::from_millis(200);
        configure(&mut config);
        let console = Console::start(config).await.expect("console starts");
        let mut client = env.pool.get().await.unwrap();
        let mut secrets = Vec::new();
        for (name, scopes) in [
            ("admin", &[Scope::Admin][..]),
            ("reader", &[Scope::Read][..]),
            ("publisher", &[Scope::Publish][..]),
        ] {
            let created = tokens::create(&mut client, name, scopes, "test").await;
            secrets.push(created.unwrap().token);
        }
        let [admin, read, publish] = <[String; 3]>::try_from(secrets).unwrap();
        TestConsole {
            base: format!("http://{}", console.addr()),
            admin,
            read,
            publish,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            console: Some(console),
        }
    }

    /// Starts a console with the defaults.
    pub async fn start(env: &TestEnv) -> Self {
        Self::start_with(env, |_| {}).await
    }

    /// `method path` with `token` (none: anonymous) and a JSON body; the status and the JSON
    /// answer (`Value::Null` when it is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let response = request.send().await.expect("the console answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET path` with the admin token, which must succeed.
    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, Some(&self.admin), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// `POST path` with the admin token and `body`, which must succeed.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self
            .call(Method::POST, path, Some(&self.admin), Some(body))
            .await;
        assert!(status.is_success(), "POST {path}: {status} {answer}");
        answer
    }

    /// Stops it.
    pub async fn stop(mut self) {
        if let Some(console) = self.console.take() {
            console.stop().await;
        }
    }
}

/// A task whose one step fails for good (one attempt, `quota_exceeded`) while `broken` holds:
/// a dead letter to replay once the cause is fixed.
pub fn fragile(broken: &Arc<AtomicBool>) -> Task<Value> {
    let broken = Arc::clone(broken);
    Task::<Value>::new("fragile")
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .step(step("call", move |_ctx: StepContext<Value>| {
            let broken = Arc::clone(&broken);
            async move {
                if broken.load(Ordering::SeqCst) {
                    return Err(StepError::new(
                        code::QUOTA_EXCEEDED,
                        "the partner's quota is used up",
                    ));
                }
                Ok(StepOutcome::next(serde_json::json!("ok")))
            }
        }))
}
