//! The HTTP API of `warren console` against the real broker and Postgres: every endpoint, every
//! scope, bad input, browser sessions and cross-site requests, signed webhooks, live updates,
//! and an ingress load that loses nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use warren_console::webhooks::WebhookSource;
use warren_shared::signature::Secret;
use warren_shared::store::schedules::{self, Definition};
use warren_tests::TestEnv;
use warren_tests::console::{TestConsole, fragile};
use warren_worker::{Registry, StepContext, StepOutcome, Task, step};

/// Two steps that pass their input on.
fn echo() -> Task<Value> {
    Task::<Value>::new("echo")
        .step(step("first", |ctx: StepContext<Value>| async move {
            ctx.log(format!("echoing {}", ctx.input()));
            Ok(StepOutcome::next(json!({ "seen": ctx.input().clone() })))
        }))
        .step(step("second", |_ctx: StepContext<Value>| async move {
            Ok(StepOutcome::next(json!("done")))
        }))
}

/// Waits a long time in its step (a run to cancel).
fn slow() -> Task<Value> {
    Task::<Value>::new("slow").step(step("sleep", |_ctx: StepContext<Value>| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(StepOutcome::next(json!("woke")))
    }))
}

async fn wait_status(env: &TestEnv, id: &str, status: &str) -> warren_shared::store::RunDetail {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = env.runs_of(id).await;
        if let [run] = runs.as_slice()
            && run.summary.status == status
        {
            return run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never reached {status}: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(console: &TestConsole, event: &str, body: Value) -> String {
    let (status, answer) = console
        .call(
            Method::POST,
            &format!("/api/v1/events/{event}"),
            Some(&console.publish),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["message_id"].as_str().unwrap().to_owned()
}

/// Every route, with a path that names something.
const ROUTES: [(&str, &str); 22] = [
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/search?q=x"),
    ("GET", "/api/v1/runs/live"),
    ("GET", "/api/v1/runs/0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11"),
    (
        "POST",
        "/api/v1/runs/0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11/cancel",
    ),
    (
        "POST",
        "/api/v1/runs/0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11/retry",
    ),
    ("GET", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/echo/stats"),
    ("GET", "/api/v1/fleet"),
    ("GET", "/api/v1/dead-letters"),
    ("GET", "/api/v1/dead-letters/fragile"),
    ("GET", "/api/v1/dead-letters/fragile/m1"),
    ("POST", "/api/v1/dead-letters/fragile/replay"),
    ("POST", "/api/v1/dead-letters/fragile/purge"),
    ("GET", "/api/v1/schedules"),
    ("GET", "/api/v1/schedules/echo%2Fnightly"),
    ("POST", "/api/v1/schedules/echo%2Fnightly/pause"),
    ("POST", "/api/v1/schedules/echo%2Fnightly/resume"),
    ("POST", "/api/v1/schedules/echo%2Fnightly/trigger"),
    ("GET", "/api/v1/audit"),
    ("POST", "/api/v1/events/echo"),
    ("DELETE", "/api/v1/session"),
];

/// The routes a token needs `admin` for.
fn needs_admin(method: &str, path: &str) -> bool {
    method == "POST" && !path.contains("/events/")
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_answers_an_anonymous_caller_or_a_revoked_token() {
    let env = TestEnv::new().await;
    let console = TestConsole::start(&env).await;
    let mut client = env.pool.get().await.unwrap();
    let gone = warren_console::tokens::create(
        &mut client,
        "gone",
        &[warren_console::tokens::Scope::Admin],
        "test",
    )
    .await
    .unwrap();
    assert!(
        warren_console::tokens::revoke(&mut client, "gone", "test")
            .await
            .unwrap()
    );
    for (method, path) in ROUTES {
        let method: Method = method.parse().unwrap();
        for token in [None, Some(gone.token.as_str()), Some("wrn_forged")] {
            let (status, body) = console
                .call(method.clone(), path, token, Some(json!({})))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "unauthenticated", "{method} {path}");
        }
    }
    // The login page's first look is not a failed request.
    let (status, body) = console
        .call(Method::GET, "/api/v1/session", None, None)
        .await;
    assert_eq!(
        (status, &body["authenticated"]),
        (StatusCode::OK, &json!(false))
    );
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_scope_allows_its_own_routes_and_refuses_the_others() {
    let env = TestEnv::new().await;
    let console = TestConsole::start(&env).await;
    for (method, path) in ROUTES {
        if path.ends_with("/session") {
            continue;
        }
        if path.ends_with("/live") {
            // A stream for those who may read; a publish token is refused before it starts.
            let (status, _) = console
                .call(Method::GET, path, Some(&console.publish), None)
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "publish: live");
            continue;
        }
        let verb: Method = method.parse().unwrap();
        let publishing = path.contains("/events/");
        // `read` reads everything and changes nothing.
        let (status, body) = console
            .call(verb.clone(), path, Some(&console.read), Some(json!({})))
            .await;
        if needs_admin(method, path) || publishing {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "read: {method} {path}: {body}"
            );
            assert!(
                body["error"]["message"].as_str().unwrap().contains("scope"),
                "{body}"
            );
        } else {
            assert_ne!(
                status,
                StatusCode::FORBIDDEN,
                "read: {method} {path}: {body}"
            );
            assert_ne!(status, StatusCode::UNAUTHORIZED, "read: {method} {path}");
        }
        // `publish` publishes and reads nothing.
        let (status, body) = console
            .call(verb.clone(), path, Some(&console.publish), Some(json!({})))
            .await;
        if publishing {
            assert_ne!(
                status,
                StatusCode::FORBIDDEN,
                "publish: {method} {path}: {body}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "publish: {method} {path}: {body}"
            );
        }
        // `admin` is refused nothing (what it asks for may not exist here).
        let (status, body) = console
            .call(verb, path, Some(&console.admin), Some(json!({})))
            .await;
        assert!(
            status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
            "admin: {method} {path}: {status} {body}"
        );
    }
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_posted_is_published_with_its_headers_and_runs() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = TestConsole::start(&env).await;
    let response = console
        .http
        .post(format!("{}/api/v1/events/echo", console.base))
        .bearer_auth(&console.publish)
        .header("idempotency-key", "order-7")
        // UTF-8, as the protocol's headers are.
        .header(
            "warren-tenant",
            reqwest::header::HeaderValue::from_bytes("acmé".as_bytes()).unwrap(),
        )
        .header("warren-message-id", "ingress-1")
        .body(r#"{"order": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer, json!({ "message_id": "ingress-1" }));
    let run = wait_status(&env, "ingress-1", "succeeded").await;
    assert_eq!(run.summary.tenant.as_deref(), Some("acmé"));
    assert_eq!(run.idempotency_key.as_deref(), Some("order-7"));
    assert_eq!(run.input, Some(json!({ "order": 7 })));

    // The same idempotency key again: accepted, and no second run starts.
    let again = console
        .http
        .post(format!("{}/api/v1/events/echo", console.base))
        .bearer_auth(&console.publish)
        .header("idempotency-key", "order-7")
        .body(r#"{"order": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let second: Value = again.json().await.unwrap();
    let second_id = second["message_id"].as_str().unwrap().to_owned();
    // A later event's run finishing means the duplicate was settled before it (one consumer).
    let later = publish(&console, "echo", json!({})).await;
    wait_status(&env, &later, "succeeded").await;
    assert!(
        env.runs_of(&second_id).await.is_empty(),
        "the idempotency key made no second run"
    );
    let audit = console.get("/api/v1/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "event.publish"
                && e["actor"] == "token:publisher"
                && e["detail"]["message_id"] == "ingress-1"),
        "{audit}"
    );
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_to_the_ingress_gets_a_clear_status_and_publishes_nothing() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = TestConsole::start_with(&env, |c| c.max_body_bytes = 1_000).await;
    let post = |event: &'static str, body: Vec<u8>, priority: Option<&'static str>| {
        let mut request = console
            .http
            .post(format!("{}/api/v1/events/{event}", console.base))
            .bearer_auth(&console.publish)
            .body(body);
        if let Some(p) = priority {
            request = request.header("warren-priority", p);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["error"]["message"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let cases = [
        (
            post("echo", b"{\"a\":".to_vec(), None).await,
            StatusCode::BAD_REQUEST,
            "not JSON",
        ),
        (
            post("echo", vec![b' '; 2_000], None).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "1000 bytes",
        ),
        (
            post("nobody.listens", b"{}".to_vec(), None).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "no task listens",
        ),
        (
            post("bad event!", b"{}".to_vec(), None).await,
            StatusCode::BAD_REQUEST,
            "event",
        ),
        (
            post("echo", b"{}".to_vec(), Some("urgent")).await,
            StatusCode::BAD_REQUEST,
            "urgent",
        ),
    ];
    for ((status, message), expected, says) in cases {
        assert_eq!(status, expected, "{message}");
        assert!(message.contains(says), "{message:?} should say {says:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = env.pool.get().await.unwrap();
    let runs: i64 = client
        .query_one("SELECT count(*) FROM runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 0, "nothing refused may have been published");
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_listed_filtered_found_and_shown_with_steps_and_transitions() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = TestConsole::start(&env).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&console, "echo", json!({ "n": i })).await);
    }
    for id in &ids {
        wait_status(&env, id, "succeeded").await;
    }
    let all = console.get("/api/v1/runs?task=echo&status=succeeded").await;
    let listed: Vec<&str> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["succeeded"; 3]);
    assert_eq!(
        console.get("/api/v1/runs?status=dead").await["runs"],
        json!([])
    );
    let found = console
        .get(&format!("/api/v1/runs/search?q={}", ids[1]))
        .await;
    let run_id = found["runs"][0]["id"].as_str().unwrap().to_owned();
    let run = console.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(run["message_id"], ids[1].as_str());
    assert_eq!(run["input"], json!({ "n": 1 }));
    let steps: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["first", "second"]);
    assert_eq!(run["steps"][0]["output"], json!({ "seen": { "n": 1 } }));
    assert!(run["transitions"].as_array().unwrap().len() >= 3, "{run}");
    assert_eq!(run["logs"]["dropped"], 0);
    assert_eq!(run["logs"]["lines"][0]["line"], r#"echoing {"n":1}"#);
    assert_eq!(run["logs"]["lines"][0]["step"], "first");

    for (path, expected) in [
        ("/api/v1/runs?status=sleeping", StatusCode::BAD_REQUEST),
        ("/api/v1/runs?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/runs?limit=501", StatusCode::BAD_REQUEST),
        ("/api/v1/runs/not-a-uuid", StatusCode::BAD_REQUEST),
        (
            "/api/v1/runs/0190f5c2-7d1a-7cc0-9d1e-2a6f0e4b8a11",
            StatusCode::NOT_FOUND,
        ),
        ("/api/v1/runs/search?q=", StatusCode::BAD_REQUEST),
        (
            "/api/v1/tasks/echo/stats?minutes=0",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = console
            .call(Method::GET, path, Some(&console.read), None)
            .await;
        assert_eq!(status, expected, "{path}: {body}");
    }
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runs_list_pages_with_its_cursor_and_filters_by_tenant_and_time() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = TestConsole::start(&env).await;
    let mut ids = Vec::new();
    for (i, tenant) in ["acme", "acme", "globex", "acme"].into_iter().enumerate() {
        let response = console
            .http
            .post(format!("{}/api/v1/events/echo", console.base))
            .bearer_auth(&console.publish)
            .header("warren-tenant", tenant)
            .body(format!(r#"{{"i":{i}}}"#))
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        let id = answer["message_id"].as_str().unwrap().to_owned();
        wait_status(&env, &id, "succeeded").await;
        ids.push(id);
    }
    let first = console.get("/api/v1/runs?tenant=acme&limit=2").await;
    assert_eq!(first["runs"].as_array().unwrap().len(), 2, "{first}");
    assert!(
        first["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "acme")
    );
    let next = first["next"].as_str().unwrap().to_owned();
    let second = console
        .get(&format!("/api/v1/runs?tenant=acme&limit=2&after={next}"))
        .await;
    assert_eq!(second["runs"].as_array().unwrap().len(), 1, "{second}");
    assert!(
        second.get("next").is_none(),
        "the last page has no cursor: {second}"
    );
    let paged: Vec<String> = first["runs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["runs"].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    // The acme runs, newest first, each once.
    let mut acme = Vec::new();
    for i in [3, 1, 0] {
        acme.push(env.runs_of(&ids[i]).await[0].summary.id.to_string());
    }
    assert_eq!(paged, acme);
    let future = "2999-01-01T00:00:00Z";
    let none = console.get(&format!("/api/v1/runs?since={future}")).await;
    assert_eq!(none["runs"], json!([]));
    let all = console.get(&format!("/api/v1/runs?until={future}")).await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 4);
    for path in [
        "/api/v1/runs?after=not-a-cursor",
        "/api/v1/runs?since=yesterday",
    ] {
        let (status, body) = console
            .call(Method::GET, path, Some(&console.read), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_fleet_and_stats_show_the_queues_replicas_and_last_hour() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = TestConsole::start(&env).await;
    let id = publish(&console, "echo", json!({})).await;
    wait_status(&env, &id, "succeeded").await;
    let tasks = console.get("/api/v1/tasks").await;
    let echo = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "echo")
        .unwrap_or_else(|| panic!("{tasks}"));
    assert_eq!(echo["consumers"], 1, "{echo}");
    assert_eq!(echo["ready"], 0, "{echo}");
    assert_eq!(echo["dead_letters"], 0, "{echo}");
    assert_eq!(echo["replicas"], 1, "{echo}");
    assert_eq!(echo["started_last_minute"], 1, "{echo}");
    let fleet = console.get("/api/v1/fleet").await;
    assert_eq!(fleet.as_array().unwrap().len(), 1, "{fleet}");
    assert_eq!(fleet[0]["state"], "alive");
    let minutes = console.get("/api/v1/tasks/echo/stats?minutes=60").await;
    let minutes = minutes.as_array().unwrap();
    assert_eq!(minutes.len(), 60, "one bucket per minute, empty ones too");
    let started: i64 = minutes.iter().map(|m| m["started"].as_i64().unwrap()).sum();
    let succeeded: i64 = minutes
        .iter()
        .map(|m| m["succeeded"].as_i64().unwrap())
        .sum();
    assert_eq!((started, succeeded), (1, 1));
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_replayed_and_purged_and_each_action_is_audited() {
    let env = TestEnv::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let worker = env
        .start_worker(Registry::new().register(fragile(&broken)))
        .await;
    env.wait_consuming(&["fragile"]).await;
    let console = TestConsole::start(&env).await;
    let first = publish(&console, "fragile", json!({ "n": 1 })).await;
    let mut others = Vec::new();
    for n in 2..=4 {
        others.push(publish(&console, "fragile", json!({ "n": n })).await);
    }
    wait_status(&env, &first, "dead").await;
    for other in &others {
        wait_status(&env, other, "dead").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while console.get("/api/v1/dead-letters/fragile").await["count"] != 4 {
        assert!(Instant::now() < deadline, "four dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let summary = console.get("/api/v1/dead-letters").await;
    assert_eq!(summary[0]["task"], "fragile");
    assert_eq!(summary[0]["count"], 4);
    let list = console.get("/api/v1/dead-letters/fragile").await;
    assert_eq!(list["count"], 4);
    assert_eq!(list["dead_letters"][0]["reason"], "quota_exceeded");
    let shown = console
        .get(&format!("/api/v1/dead-letters/fragile/{first}"))
        .await;
    assert_eq!(shown["dead_letter"]["message_id"], first.as_str());
    assert_eq!(shown["runs"][0]["status"], "dead");

    // A read token may look, not act.
    let (status, _) = console
        .call(
            Method::POST,
            "/api/v1/dead-letters/fragile/replay",
            Some(&console.read),
            Some(json!({ "id": first })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    broken.store(false, Ordering::SeqCst);
    let report = console
        .post(
            "/api/v1/dead-letters/fragile/replay",
            json!({ "id": first }),
        )
        .await;
    assert_eq!(report["replayed"], json!([first]));
    wait_status(&env, &first, "succeeded").await;
    let (status, body) = console
        .call(
            Method::POST,
            "/api/v1/dead-letters/fragile/replay",
            Some(&console.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = console
        .call(
            Method::POST,
            "/api/v1/dead-letters/fragile/replay",
            Some(&console.admin),
            Some(json!({ "id": "no-such-letter" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Every letter, up to a limit: two of the three left.
    let report = console
        .post(
            "/api/v1/dead-letters/fragile/replay",
            json!({ "all": true, "limit": 2 }),
        )
        .await;
    assert_eq!(report["replayed"].as_array().unwrap().len(), 2, "{report}");
    let mut succeeded = 0;
    for other in &others {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = env.runs_of(other).await[0].summary.status.clone();
            if status == "succeeded" {
                succeeded += 1;
                break;
            }
            if status == "dead" && Instant::now() > deadline - Duration::from_secs(15) {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        succeeded, 2,
        "the two replayed runs succeeded, the third stayed dead"
    );

    let purged = console
        .post("/api/v1/dead-letters/fragile/purge", json!({}))
        .await;
    assert_eq!(purged["purged"], 1);
    assert_eq!(
        console.get("/api/v1/dead-letters/fragile").await["count"],
        0
    );

    let audit = console.get("/api/v1/audit").await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert!(
        actions.contains(&("token:admin", "dead_letters.replay")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("token:admin", "dead_letters.purge")),
        "{actions:?}"
    );
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_is_cancelled_and_retried_over_http() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(slow())).await;
    env.wait_consuming(&["slow"]).await;
    let console = TestConsole::start(&env).await;
    let id = publish(&console, "slow", json!({})).await;
    let run = wait_status(&env, &id, "running").await;
    let run_id = run.summary.id;
    let (status, _) = console
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run_id}/cancel"),
            Some(&console.read),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a read token cannot cancel");
    let cancelled = console
        .post(&format!("/api/v1/runs/{run_id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled["cancelled"], json!([run_id]));
    let run = wait_status(&env, &id, "cancelled").await;
    assert_eq!(run.cancelled_by.as_deref(), Some("token:admin"));
    let (status, _) = console
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run_id}/cancel"),
            Some(&console.admin),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "cancelling twice changes nothing"
    );
    let retried = console
        .post(&format!("/api/v1/runs/{run_id}/retry"), json!({}))
        .await;
    assert_eq!(retried["attempt"], 2);
    wait_status(&env, &id, "running").await;
    let audit = console.get("/api/v1/audit").await;
    let recorded: Vec<(&str, &str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let target = run_id.to_string();
    for action in ["run.cancel", "run.retry"] {
        assert!(
            recorded.contains(&("token:admin", action, target.as_str())),
            "{recorded:?}"
        );
    }
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_are_listed_paused_resumed_and_triggered() {
    let env = TestEnv::new().await;
    let console = TestConsole::start(&env).await;
    let client = env.pool.get().await.unwrap();
    let definition = Definition {
        name: "echo/nightly".into(),
        task: "echo".into(),
        payload: json!({}),
        cron: Some("0 3 * * *".into()),
        every_secs: None,
        timezone: "Europe/Paris".into(),
        missed: Default::default(),
        catch_up_limit: 10,
    };
    let next = definition.timing().unwrap().next_after(chrono::Utc::now());
    assert!(schedules::create(&client, &definition, next).await.unwrap());
    let listed = console.get("/api/v1/schedules").await;
    assert_eq!(listed[0]["name"], "echo/nightly");
    let path = "/api/v1/schedules/echo%2Fnightly";
    assert_eq!(console.get(path).await["recent_fires"], json!([]));
    assert_eq!(
        console.post(&format!("{path}/pause"), json!({})).await["paused"],
        true
    );
    assert!(console.get(path).await["paused"].as_bool().unwrap());
    let resumed = console.post(&format!("{path}/resume"), json!({})).await;
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_fire_at"].is_string());
    assert!(console.post(&format!("{path}/trigger"), json!({})).await["slot"].is_string());
    let (status, _) = console
        .call(
            Method::POST,
            "/api/v1/schedules/none/pause",
            Some(&console.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let audit = console.get("/api/v1/audit").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["schedule.pause", "schedule.resume", "schedule.trigger"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    console.stop().await;
}

/// The session cookie from a `Set-Cookie` answer.
fn session_cookie(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_session_acts_only_with_its_csrf_value_and_ends_with_its_token() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(slow())).await;
    env.wait_consuming(&["slow"]).await;
    let console = TestConsole::start(&env).await;
    let id = publish(&console, "slow", json!({})).await;
    let run_id = wait_status(&env, &id, "running").await.summary.id;
    let login = |token: String| {
        console
            .http
            .post(format!("{}/api/v1/session", console.base))
            .json(&json!({ "token": token }))
            .send()
    };
    let refused = login("wrn_nope".into()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let response = login(console.admin.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = session_cookie(&response);
    let me: Value = response.json().await.unwrap();
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    assert_eq!(me["name"], "admin");

    let with_cookie = |method: Method, path: String| {
        console
            .http
            .request(method, format!("{}{path}", console.base))
            .header("cookie", cookie.clone())
    };
    let runs = with_cookie(Method::GET, "/api/v1/runs".into())
        .send()
        .await
        .unwrap();
    assert_eq!(runs.status(), StatusCode::OK, "a session reads");
    let cancel = format!("/api/v1/runs/{run_id}/cancel");
    let host = console.base.trim_start_matches("http://").to_owned();
    let forged = [
        with_cookie(Method::POST, cancel.clone()),
        with_cookie(Method::POST, cancel.clone()).header("x-warren-csrf", "guess"),
        with_cookie(Method::POST, cancel.clone())
            .header("x-warren-csrf", csrf.clone())
            .header("origin", "https://evil.example"),
    ];
    for request in forged {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(env.runs_of(&id).await[0].summary.status, "running");
    let allowed = with_cookie(Method::POST, cancel)
        .header("x-warren-csrf", csrf.clone())
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    wait_status(&env, &id, "cancelled").await;

    // Revoking the token ends its sessions at once.
    let mut client = env.pool.get().await.unwrap();
    warren_console::tokens::revoke(&mut client, "admin", "test")
        .await
        .unwrap();
    let after = with_cookie(Method::GET, "/api/v1/runs".into())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logging_out_ends_the_session() {
    let env = TestEnv::new().await;
    let console = TestConsole::start(&env).await;
    let response = console
        .http
        .post(format!("{}/api/v1/session", console.base))
        .json(&json!({ "token": console.read }))
        .send()
        .await
        .unwrap();
    let cookie = session_cookie(&response);
    let me: Value = response.json().await.unwrap();
    let logout = console
        .http
        .delete(format!("{}/api/v1/session", console.base))
        .header("cookie", cookie.clone())
        .header("x-warren-csrf", me["csrf"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::OK);
    let after = console
        .http
        .get(format!("{}/api/v1/runs", console.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let audit = console.get("/api/v1/audit").await;
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .filter(|(actor, _)| *actor == "token:reader")
        .collect();
    assert_eq!(
        actions,
        [
            ("token:reader", "session.logout"),
            ("token:reader", "session.login")
        ]
    );
    // A login from another site's page is refused.
    let foreign = console
        .http
        .post(format!("{}/api/v1/session", console.base))
        .header("origin", "https://evil.example")
        .json(&json!({ "token": console.read }))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    console.stop().await;
}

/// Signs as a webhook sender would, with an HMAC implementation independent of Warren's.
fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={digest}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_publishes_once_and_forged_stale_or_replayed_ones_publish_nothing() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let payments = WebhookSource {
        name: "payments".into(),
        event: "echo".into(),
        secret: Secret::new(b"whsec_test"),
        header: "stripe-signature".into(),
        tolerance: Duration::from_secs(300),
    };
    let console = TestConsole::start_with(&env, |c| c.webhooks = vec![payments]).await;
    let url = format!("{}/api/v1/webhooks/payments", console.base);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = br#"{"payment":"pi_1"}"#;
    let send = |signature: String, body: &'static [u8]| {
        console
            .http
            .post(url.clone())
            .header("stripe-signature", signature)
            .body(body)
            .send()
    };
    let accepted = send(sign("whsec_test", now, body), body).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let answer: Value = accepted.json().await.unwrap();
    let message_id = answer["message_id"].as_str().unwrap().to_owned();
    let run = wait_status(&env, &message_id, "succeeded").await;
    assert_eq!(run.input, Some(json!({ "payment": "pi_1" })));

    let genuine = sign("whsec_test", now, body);
    let refusals = [
        ("replayed", genuine.clone(), &body[..]),
        (
            "replayed, written differently",
            format!("v1=00, {genuine} ,v0=x"),
            &body[..],
        ),
        ("forged secret", sign("guess", now, body), &body[..]),
        (
            "body changed",
            sign("whsec_test", now, body),
            &br#"{"payment":"pi_2"}"#[..],
        ),
        ("stale", sign("whsec_test", now - 3_600, body), &body[..]),
        ("unsigned", String::new(), &body[..]),
    ];
    for (case, signature, body) in refusals {
        let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
        let response = send(signature, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
    }
    let unknown = console
        .http
        .post(format!("{}/api/v1/webhooks/nobody", console.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = env.pool.get().await.unwrap();
    let runs: i64 = client
        .query_one("SELECT count(*) FROM runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "only the genuine webhook published");
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_updates_stream_a_new_run_and_its_changes() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = TestConsole::start(&env).await;
    let mut stream = console
        .http
        .get(format!("{}/api/v1/runs/live?task=echo", console.base))
        .bearer_auth(&console.read)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // Give the poller a beat to see its subscriber.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = publish(&console, "echo", json!({})).await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen.contains("\"new\":true") && seen.contains("\"status\":\"succeeded\"")) {
        assert!(Instant::now() < deadline, "no live updates: {seen}");
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk())
            .await
            .expect("an event within 20 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: run"), "{seen}");
    let run = env.runs_of(&id).await;
    assert!(seen.contains(&run[0].summary.id.to_string()), "{seen}");
    worker.shutdown().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_over_keep_alive_connections_lose_none() {
    let _heavy = warren_tests::heavy().await;
    let env = TestEnv::new().await;
    let worker = env.start_worker(Registry::new().register(echo())).await;
    env.wait_consuming(&["echo"]).await;
    let console = Arc::new(TestConsole::start(&env).await);
    const EVENTS: usize = 10_000;
    const CONNECTIONS: usize = 32;
    let started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..CONNECTIONS {
        let console = Arc::clone(&console);
        senders.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in (sender..EVENTS).step_by(CONNECTIONS) {
                let response = console
                    .http
                    .post(format!("{}/api/v1/events/echo", console.base))
                    .bearer_auth(&console.publish)
                    .body(format!(r#"{{"i":{i}}}"#))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let answer: Value = response.json().await.unwrap();
                accepted.push(answer["message_id"].as_str().unwrap().to_owned());
            }
            accepted
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for sender in senders {
        ids.extend(sender.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert_eq!(ids.len(), EVENTS, "every event got its own message id");
    println!(
        "ingress: {EVENTS} events over {CONNECTIONS} keep-alive connections in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    let finished = env
        .wait_for_finished_runs(EVENTS, Duration::from_secs(180))
        .await;
    assert_eq!(finished.len(), EVENTS);
    let client = env.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT message_id),
                    count(*) FILTER (WHERE status = 'succeeded')
             FROM runs WHERE task = 'echo'",
            &[],
        )
        .await
        .unwrap();
    let (runs, messages, succeeded): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((runs, messages, succeeded), (10_000, 10_000, 10_000));
    worker.shutdown().await.unwrap();
    if let Ok(console) = Arc::try_unwrap(console) {
        console.stop().await;
    }
}

/// docs/openapi.yaml describes exactly the routes the console serves.
#[test]
fn the_openapi_document_lists_every_route_and_only_those() {
    use std::collections::BTreeSet;
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let paths = docs[0]["paths"].as_hash().unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in paths {
        for (method, _) in operations.as_hash().unwrap() {
            documented.insert(format!(
                "{} {}",
                method.as_str().unwrap().to_uppercase(),
                path.as_str().unwrap()
            ));
        }
    }
    // The routes the console serves, as its router declares them.
    let mut served: BTreeSet<String> = warren_console::ROUTES
        .iter()
        .map(|(method, path)| format!("{} /api/v1{path}", method.to_uppercase()))
        .collect();
    let (method, path) = warren_console::OPENAPI_ROUTE;
    served.insert(format!("{} {path}", method.to_uppercase()));
    assert_eq!(documented, served);
}

/// `warren tokens` and `warren console` as an operator runs them: a token printed once and
/// usable against the console the binary serves; each mistake one line and a non-zero exit.
#[tokio::test(flavor = "multi_thread")]
async fn warren_tokens_and_warren_console_from_the_command_line() {
    let env = TestEnv::new().await;
    let run = |args: &[&str]| env.warren().args(args).output().unwrap();
    let created = run(&["tokens", "create", "ci", "--scopes", "read,publish"]);
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("wrn_") && token.len() == 68, "{token}");
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(stderr.contains("shown only now"), "{stderr}");
    let listed = String::from_utf8(run(&["tokens", "list"]).stdout).unwrap();
    assert!(
        listed.contains("ci") && listed.contains("read,publish"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "a listing never shows a secret");

    let port = warren_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut console = warren_tests::TestWorker::from(
        env.warren()
            .args(["console", "--addr", &addr])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match http
            .get(format!("http://{addr}/api/v1/runs"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(response) => break response,
            Err(e) => {
                assert!(Instant::now() < deadline, "the console never answered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(answer.status(), StatusCode::OK);
    // A second console on the same address: the address is the problem, said in one line.
    let taken = env
        .warren()
        .args(["console", "--addr", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(!taken.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach Postgres"), "{stderr}");
    let revoked = run(&["tokens", "revoke", "ci"]);
    assert!(revoked.status.success());
    let after = http
        .get(format!("http://{addr}/api/v1/runs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED, "revoked at once");
    console.kill().unwrap();

    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &["tokens", "create", "x", "--scopes", "root"],
            &[],
            "unknown scope \"root\"",
        ),
        (&["tokens", "create", "x"], &[], "--scopes"),
        (
            &["tokens", "create", "ci", "--scopes", "read"],
            &[],
            "already exists",
        ),
        (
            &["tokens", "revoke", "nobody"],
            &[],
            "no live token named \"nobody\"",
        ),
        (
            &["console", "--addr", "nowhere"],
            &[],
            "invalid value 'nowhere'",
        ),
        (
            &["console"],
            &[(
                "WARREN_DATABASE_URL",
                "postgres://postgres:secret@127.0.0.1:1/warren",
            )],
            "cannot reach Postgres",
        ),
    ];
    for (args, vars, expected) in cases {
        env.assert_fails_in_one_line(args, vars, expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_stream_ends_when_its_token_is_revoked() {
    let env = TestEnv::new().await;
    let console = TestConsole::start(&env).await;
    let mut stream = console
        .http
        .get(format!("{}/api/v1/runs/live", console.base))
        .bearer_auth(&console.read)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut client = env.pool.get().await.unwrap();
    warren_console::tokens::revoke(&mut client, "reader", "test")
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token by 15 s");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_the_limit_is_refused_as_it_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new().await;
    let console = TestConsole::start_with(&env, |c| c.max_body_bytes = 1_000).await;
    let addr = console.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 600, " ".repeat(600));
    let request = format!(
        "POST /api/v1/events/echo HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n",
        console.publish
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    console.stop().await;
}
