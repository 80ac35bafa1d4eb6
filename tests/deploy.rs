//! What ships under `deploy/`, checked with the real tools: promtool (rule syntax, the
//! alert unit tests, every dashboard query), `kubectl kustomize` piped to
//! `kubernetes-validate --strict` for each overlay, the PrometheusRule in sync with the
//! alert rules, and the configuration the manifests mount accepted by `stagestream
//! check`. That every metric these files name exists is checked against a live scrape
//! in tests/telemetry.rs.
//!
//! Each tool is required under CI (`CI` set) and skipped with a message otherwise.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// `name` on the PATH, if there; under CI a missing tool is a failure.
fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "{name} not found: {install}");
        eprintln!("SKIPPED: {name} not installed ({install})");
    }
    found
}

fn succeeded(what: &str, output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let rules = common::repo("deploy/prometheus/alerts.yaml");
    let tests = common::repo("deploy/prometheus/alerts_test.yaml");
    succeeded(
        "promtool check rules",
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .unwrap(),
    );
    succeeded(
        "promtool test rules",
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&tests)
            .output()
            .unwrap(),
    );
    succeeded(
        "scripts/prometheusrule.sh --check",
        Command::new(common::repo("scripts/prometheusrule.sh"))
            .arg("--check")
            .output()
            .unwrap(),
    );
}

/// Every alert in alerts.yaml has a runbook section in docs/operations.md, under the
/// anchor its `runbook` annotation names.
#[test]
fn every_alert_has_a_runbook_entry() {
    let rules = std::fs::read_to_string(common::repo("deploy/prometheus/alerts.yaml")).unwrap();
    let operations = std::fs::read_to_string(common::repo("docs/operations.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in alerts {
        assert!(
            operations.contains(&format!("### {alert}\n")),
            "docs/operations.md has no '### {alert}' section"
        );
        let anchor = format!("runbook: \"docs/operations.md#{}\"", alert.to_lowercase());
        assert!(rules.contains(&anchor), "{alert} lacks {anchor}");
    }
}

#[test]
fn the_dashboard_has_every_row_and_every_query_parses() {
    let text = std::fs::read_to_string(common::repo("deploy/grafana/stagestream.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "Overview",
            "Throughput",
            "Lag",
            "Errors and dead letters",
            "Journey funnel",
            "Inactivity",
            "Snapshots",
            "Kafka client"
        ]
    );
    let expressions: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(expressions.len() > 40);
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    // Grafana's variables replaced by what they expand to, each query made a recording
    // rule: promtool then parses every one.
    let rules: String = expressions
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            format!(
                "      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    succeeded(
        "promtool check rules (dashboard queries)",
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap(),
    );
}

#[test]
fn every_overlay_renders_to_valid_kubernetes_objects() {
    let (Some(kubectl), Some(validate)) = (
        tool("kubectl", "apt-get install kubernetes-client"),
        tool("kubernetes-validate", "pip install kubernetes-validate"),
    ) else {
        return;
    };
    for overlay in ["dev", "prod"] {
        let rendered = succeeded(
            &format!("kubectl kustomize overlays/{overlay}"),
            Command::new(&kubectl)
                .arg("kustomize")
                .arg(common::repo(&format!("deploy/kustomize/overlays/{overlay}")))
                .output()
                .unwrap(),
        );
        for kind in [
            "kind: StatefulSet",
            "kind: Service",
            "kind: ConfigMap",
            "kind: PodDisruptionBudget",
            "kind: ServiceMonitor",
            "kind: PrometheusRule",
            "clusterIP: None",
            "volumeClaimTemplates:",
        ] {
            assert!(rendered.contains(kind), "{overlay} renders no {kind}");
        }
        let mut child = Command::new(&validate)
            .args(["--strict", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), rendered.as_bytes()).unwrap();
        let report = succeeded(
            &format!("kubernetes-validate --strict ({overlay})"),
            child.wait_with_output().unwrap(),
        );
        assert!(report.contains("statefulset/stagestream"), "{report}");
    }
}

#[test]
fn the_configuration_the_manifests_mount_is_valid() {
    let output = common::run(
        common::stagestream()
            .args(["check", "--config"])
            .arg(common::repo("deploy/kustomize/base/stagestream.toml")),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
