//! The console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver), against a console, a worker, the broker and Postgres, all real. An operator
//! logs in, publishes an event, watches its run appear and finish without reloading, opens its
//! timeline and logs, and replays a dead letter with a click. A screenshot of each page is kept
//! under `target/console-screenshots/` for review, and any error in the browser's console fails
//! the test.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use warren_tests::console::{TestConsole, fragile};
use warren_tests::{TestEnv, TestWorker, free_port};
use warren_worker::{Registry, StepContext, StepOutcome, Task, step};

/// Debian's paths, overridable for other machines.
fn binary(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

fn echo() -> Task<Value> {
    Task::<Value>::new("echo")
        .step(step("validate", |ctx: StepContext<Value>| async move {
            ctx.log("payload looks fine");
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(StepOutcome::next(json!({ "ok": true })))
        }))
        .step(step("deliver", |ctx: StepContext<Value>| async move {
            ctx.log(format!("delivering {}", ctx.input()));
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(StepOutcome::next(json!("delivered")))
        }))
}

/// chromedriver on a free port, stopped with the test.
fn start_chromedriver() -> (TestWorker, String) {
    let port = free_port();
    let driver = binary("WARREN_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let child = std::process::Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{driver}: {e} (scripts/test.sh installs Debian's chromium and chromium-driver)")
        });
    (TestWorker::from(child), format!("http://127.0.0.1:{port}"))
}

async fn browser(driver: &str) -> Client {
    let chromium = binary("WARREN_TEST_CHROMIUM", "/usr/bin/chromium");
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let capabilities = match capabilities {
        Value::Object(map) => map,
        _ => unreachable!(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(driver)
            .await
        {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session from {driver}: {e}"),
        }
    }
}

/// Where screenshots go: `target/console-screenshots/`.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits for `css` to match an element whose text contains `text`.
async fn wait_text(client: &Client, css: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && element.text().await.is_ok_and(|t| t.contains(text))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {css} with text {text:?} on {}",
            client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
}

/// The browser's console messages at level SEVERE (errors), from chromedriver's log endpoint.
async fn console_errors(client: &Client, driver: &str) -> Vec<String> {
    let session = client.session_id().await.unwrap().unwrap();
    let response = reqwest::Client::new()
        .post(format!("{driver}/session/{session}/se/log"))
        .json(&json!({ "type": "browser" }))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["value"]
        .as_array()
        .unwrap_or_else(|| panic!("chromedriver's log answer: {body}"))
        .iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_watches_a_run_live_and_replays_a_dead_letter_in_a_browser() {
    let env = TestEnv::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let worker = env
        .start_worker(Registry::new().register(echo()).register(fragile(&broken)))
        .await;
    env.wait_consuming(&["echo", "fragile"]).await;
    let console = TestConsole::start(&env).await;
    let (_driver, driver_url) = start_chromedriver();
    let client = browser(&driver_url).await;

    // Logging in.
    client.goto(&console.base).await.unwrap();
    let token = wait_for(&client, "#token").await;
    shoot(&client, "01-login").await;
    token.send_keys(&console.admin).await.unwrap();
    client
        .find(Locator::Css("#login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&client, "#runs-body").await;
    // A marker that a reload would erase: the run must arrive without one.
    client
        .execute(
            "window.warrenTestMarker = 'still here'; return null;",
            vec![],
        )
        .await
        .unwrap();

    // Publishing an event from the console, and watching its run arrive and finish live.
    wait_for(&client, "#publish-toggle")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&client, "#publish-event")
        .await
        .send_keys("echo")
        .await
        .unwrap();
    let payload = wait_for(&client, "#publish-payload").await;
    payload.clear().await.unwrap();
    payload
        .send_keys(r#"{"video": "intro.mp4"}"#)
        .await
        .unwrap();
    client
        .find(Locator::Css("#publish-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "[data-test=flash]", "Published message").await;
    wait_text(&client, "#runs-body tr", "running").await;
    shoot(&client, "02-runs-live-running").await;
    wait_text(&client, "#runs-body tr", "succeeded").await;
    shoot(&client, "03-runs-live-succeeded").await;
    let marker = client
        .execute("return window.warrenTestMarker || null;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("still here"), "the page was reloaded");

    // The run's page: timeline, logs, transitions.
    client
        .find(Locator::Css("#runs-body tr a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&client, "#timeline rect[data-step=deliver]").await;
    wait_text(&client, "#logs", "delivering {\"video\":\"intro.mp4\"}").await;
    wait_text(&client, "#transitions", "succeeded").await;
    shoot(&client, "04-run-timeline").await;

    // A dead letter, replayed with a click once its cause is fixed.
    let dead = console
        .http
        .post(format!("{}/api/v1/events/fragile", console.base))
        .bearer_auth(&console.publish)
        .body(r#"{"order": 42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(dead.status(), reqwest::StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = console.get("/api/v1/dead-letters/fragile").await;
        if list["count"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .goto(&format!("{}/#/dead-letters/fragile", console.base))
        .await
        .unwrap();
    wait_text(&client, "#dead-letters", "quota_exceeded").await;
    shoot(&client, "05-dead-letters").await;
    broken.store(false, Ordering::SeqCst);
    wait_for(&client, "#dead-letters button.replay")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&client, "#confirm-ok")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&client, "#replayed-run")
        .await
        .click()
        .await
        .unwrap();
    wait_text(&client, "#run .bar .badge", "succeeded").await;
    wait_text(
        &client,
        "#transitions",
        "replayed from the dead-letter queue",
    )
    .await;
    shoot(&client, "06-replayed-run").await;

    // The other pages render.
    for (page, css, text, name) in [
        ("tasks", "#tasks", "echo", "07-tasks"),
        ("fleet", "#fleet", "alive", "08-fleet"),
        ("schedules", "#schedules", "", "09-schedules"),
        ("audit", "#audit", "dead_letters.replay", "10-audit"),
        (
            "dead-letters",
            "#dead-letter-summary",
            "fragile",
            "11-dead-letter-summary",
        ),
    ] {
        client
            .goto(&format!("{}/#/{page}", console.base))
            .await
            .unwrap();
        wait_text(&client, css, text).await;
        if page == "tasks" {
            wait_for(&client, "td.chart svg").await;
        }
        shoot(&client, name).await;
    }

    // The check below sees what the console logs: a probe error must come back from it.
    client
        .execute("console.error('warren-test-probe'); return null;", vec![])
        .await
        .unwrap();
    let errors = console_errors(&client, &driver_url).await;
    let (probes, errors): (Vec<_>, Vec<_>) = errors
        .into_iter()
        .partition(|e| e.contains("warren-test-probe"));
    assert_eq!(probes.len(), 1, "the browser's console cannot be read");
    assert!(
        errors.is_empty(),
        "errors in the browser's console: {errors:#?}"
    );
    client.close().await.unwrap();
    worker.shutdown().await.unwrap();
    console.stop().await;
}
