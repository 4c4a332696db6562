//! The deployment files (`deploy/`) are checked with what runs here, since no container engine
//! or cluster does: every manifest parses, Prometheus's own tool accepts the configuration and
//! the alert rules, the dashboard and rules only use metrics the worker exports, every exported
//! metric is documented, and the Kubernetes grace period outlasts the worker's drain.

use std::path::{Path, PathBuf};
use std::process::Command;
use warren_shared::metrics::{ALL, is_exported};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf()
}

fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, extensions));
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
        {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// Every `warren_...` identifier in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("warren_") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_manifest_parses() {
    let deploy = repo().join("deploy");
    let yamls = files_under(&deploy, &["yml", "yaml"]);
    assert!(yamls.len() >= 10, "{yamls:?}");
    for path in &yamls {
        assert!(!yaml(path).is_empty(), "{} is empty", path.display());
    }
    let dashboards = files_under(&deploy.join("grafana"), &["json"]);
    assert!(!dashboards.is_empty());
    for path in dashboards {
        let dashboard: serde_json::Value = serde_json::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
        assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
    }
}

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules() {
    let prometheus = repo().join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&prometheus)
            .output()
            .expect("promtool runs (Debian package prometheus; scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn dashboards_and_alerts_use_only_metrics_the_worker_exports() {
    let deploy = repo().join("deploy");
    let mut used = 0;
    for path in files_under(&deploy, &["json", "yml", "yaml"]) {
        for name in metric_names(&read(&path)) {
            used += 1;
            assert!(
                is_exported(&name),
                "{} uses {name}, which the worker does not export",
                path.display()
            );
        }
    }
    assert!(used > 30, "only {used} metric references found");
}

#[test]
fn every_exported_metric_is_documented() {
    let doc = read(&repo().join("docs/metrics.md"));
    for metric in ALL {
        assert!(
            doc.contains(&format!("`{}`", metric.name)),
            "docs/metrics.md does not list {}",
            metric.name
        );
    }
}

/// The labels column of the table is the catalogue's, so that the page says what a query can
/// group by (and a label dropped for its cardinality does not linger in the docs).
#[test]
fn every_exported_metric_is_documented_with_its_labels() {
    let doc = read(&repo().join("docs/metrics.md"));
    for metric in ALL {
        let row = doc
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", metric.name)))
            .unwrap_or_else(|| panic!("docs/metrics.md has no table row for {}", metric.name));
        let labels = if metric.labels.is_empty() {
            "none".to_owned()
        } else {
            metric
                .labels
                .iter()
                .map(|label| format!("`{label}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert!(
            row.contains(&format!("| {labels} |")),
            "docs/metrics.md gives {} other labels than {labels}: {row}",
            metric.name
        );
    }
}

#[test]
fn kubernetes_waits_longer_than_the_worker_drains() {
    let k8s = repo().join("deploy/k8s");
    let config = &yaml(&k8s.join("config.yaml"))[0];
    let grace = config["data"]["WARREN_GRACE_PERIOD"]
        .as_str()
        .and_then(|g| g.strip_suffix('s'))
        .and_then(|g| g.parse::<i64>().ok())
        .expect("WARREN_GRACE_PERIOD in seconds");
    let deployment = &yaml(&k8s.join("worker.yaml"))[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let termination = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace + 5,
        "the kubelet kills after {termination} s, the drain may take {grace} s"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(!container["resources"]["requests"].is_badvalue());
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names("sum(rate(warren_runs_failed_total{task=~\"$task\"}[5m])) / warren_x"),
        ["warren_runs_failed_total", "warren_x"]
    );
    assert!(metric_names("my_warren_thing").is_empty());
}

/// The broker refuses what no worker would accept anyway (well above the workers' default
/// limit, so that those bodies are dead-lettered with a reason, and far below RabbitMQ's own
/// default of 128 MiB, which every replica a message is pushed to would buffer).
#[test]
fn the_broker_caps_message_size_above_the_workers_limit() {
    let conf = read(&repo().join("deploy/rabbitmq/rabbitmq.conf"));
    let size: usize = conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("max_message_size"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .find_map(|value| value.trim().parse().ok())
        .expect("deploy/rabbitmq/rabbitmq.conf sets max_message_size");
    let worker_limit = warren_shared::contract::DEFAULT_MAX_MESSAGE_BYTES;
    assert!(size >= 2 * worker_limit, "{size}");
    assert!(size <= 16 << 20, "{size}");
}

/// The Kubernetes replica's message memory budget fits inside its memory limit, with room for
/// the rest of the process.
#[test]
fn the_kubernetes_message_budget_fits_the_pod_memory_limit() {
    let config = read(&repo().join("deploy/k8s/config.yaml"));
    let budget: u64 = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("WARREN_MESSAGE_BUDGET_BYTES:"))
        .map(|v| v.trim().trim_matches('"').parse().unwrap())
        .expect("config.yaml sets WARREN_MESSAGE_BUDGET_BYTES");
    let worker = read(&repo().join("deploy/k8s/worker.yaml"));
    let limit_mib: u64 = worker
        .lines()
        .find_map(|l| l.split("limits: { memory: ").nth(1))
        .and_then(|rest| rest.split("Mi").next())
        .map(|v| v.trim().parse().unwrap())
        .expect("worker.yaml sets a memory limit in Mi");
    assert!(
        budget <= limit_mib * 1024 * 1024 / 2,
        "{budget} vs {limit_mib} MiB"
    );
}
