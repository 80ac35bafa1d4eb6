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

/// The expressions of the dashboard panel titled `title`, with Grafana's variables as
/// they expand for one job and the purchase stage.
fn dashboard_queries(title: &str) -> Vec<String> {
    let text = std::fs::read_to_string(common::repo("deploy/grafana/stagestream.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title}"));
    panel["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$value_stage", "purchase")
        })
        .collect()
}

#[test]
fn the_funnel_panels_compute_conversion_recovery_and_time_to_value() {
    let Some(promtool) = tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let [conversion] =
        <[String; 1]>::try_from(dashboard_queries("Stage-to-stage conversion (24 h)")).unwrap();
    let [recovery] =
        <[String; 1]>::try_from(dashboard_queries("Win-back recovery rate by threshold (7 d)")).unwrap();
    let [p50, p90] = <[String; 2]>::try_from(dashboard_queries(
        "Time to first value: first activity to $value_stage (p50, p90)",
    ))
    .unwrap();
    // Per hour: 100 customers arrive, 40 move on to consideration, 10 of those buy;
    // 20 go quiet in consideration and 5 of them come back. Of the buyers, 8 took under
    // an hour from their first visit and 2 between one and six.
    let series = |name: &str, labels: &str, per_hour: u32| {
        format!(
            "      - series: '{name}{{job=\"s\", instance=\"i\", {labels}}}'\n        values: '0+{per_hour}x200'\n"
        )
    };
    let transitions = "stagestream_stage_transitions_total";
    let time_to_stage = "stagestream_time_to_stage_seconds_bucket";
    let input: String = [
        series(transitions, r#"from="none", to="awareness""#, 100),
        series(transitions, r#"from="awareness", to="consideration""#, 40),
        series(transitions, r#"from="consideration", to="purchase""#, 10),
        series(
            "stagestream_inactivity_events_total",
            r#"threshold="winback_7d", stage="consideration""#,
            20,
        ),
        series(
            "stagestream_reactivations_total",
            r#"stage="consideration", threshold="winback_7d""#,
            5,
        ),
        series(time_to_stage, r#"stage="purchase", le="3600""#, 8),
        series(time_to_stage, r#"stage="purchase", le="21600""#, 10),
        series(time_to_stage, r#"stage="purchase", le="+Inf""#, 10),
    ]
    .concat();
    let test = |expr: &str, samples: &[(&str, f64)]| {
        let samples: String = samples
            .iter()
            .map(|(labels, value)| format!("          - labels: '{labels}'\n            value: {value}\n"))
            .collect();
        format!(
            "      - expr: {}\n        eval_time: 190h\n        exp_samples:\n{samples}",
            serde_json::to_string(expr).unwrap()
        )
    };
    let tests = [
        test(
            &conversion,
            &[
                (r#"{from="awareness"}"#, 0.4),
                (r#"{from="consideration"}"#, 0.25),
            ],
        ),
        test(&recovery, &[(r#"{threshold="winback_7d"}"#, 0.25)]),
        // Half of the buyers: 5 of the 8 under an hour, interpolated in [0, 3600).
        test(&p50, &[("{}", 2250.0)]),
        // 9 of 10: the first of the two in (3600, 21600], half-way.
        test(&p90, &[("{}", 12600.0)]),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("funnel_test.yaml");
    std::fs::write(
        &file,
        format!("rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1h\n    input_series:\n{input}    promql_expr_test:\n{tests}"),
    )
    .unwrap();
    succeeded(
        "promtool test rules (funnel panels)",
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&file)
            .output()
            .unwrap(),
    );
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
            "Funnel: reach, conversion, drop-off, win-back",
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
                .replace("$instance", ".*")
                .replace("$value_stage", "purchase");
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
