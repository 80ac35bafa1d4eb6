//! The `stagestream` command line as users drive it: exit codes, configuration errors,
//! environment overrides, rejects, stdin/stdout.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{parse_cloudevents, repo, run, stagestream};

const FIVE_STAGE: &str = "config/presets/five-stage.toml";

fn replay_fixture(extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut command = stagestream();
    command
        .arg("replay")
        .arg("--config")
        .arg(repo(FIVE_STAGE))
        .arg("--input")
        .arg(repo("tests/fixtures/five-stage.jsonl"))
        .args(["--output", "-"]);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    run(&mut command)
}

#[test]
fn a_bad_config_reports_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
        [model]
        name = "m"
        stages = ["a", "b"]
        colour = "blue"
        [[model.rules]]
        name = "r"
        to = "c"
        events = ["X"]
        [[model.inactivity]]
        name = "w"
        after = "seven days"
        [time]
        allowed_lateness = "soon"
        "#,
    )
    .unwrap();
    let output = run(stagestream().arg("check").arg("--config").arg(&path));
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "model.colour: unknown key",
        "model.rules[0].to: unknown stage \"c\" (stages: a, b)",
        "model.inactivity[0].after:",
        "time.allowed_lateness:",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn a_missing_or_malformed_config_exits_64() {
    let output = run(stagestream().args(["check", "--config", "/nonexistent/stagestream.toml"]));
    assert_eq!(output.status.code(), Some(64));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[model\nname = ").unwrap();
    let output = run(stagestream().arg("check").arg("--config").arg(&path));
    assert_eq!(output.status.code(), Some(64));
    let output = run(stagestream().args(["replay", "--config"]));
    assert_eq!(output.status.code(), Some(64), "usage errors are EX_USAGE too");
}

#[test]
fn every_preset_is_a_complete_configuration() {
    for preset in [
        "five-stage",
        "four-stage",
        "lifecycle-five",
        "six-stage",
        "value-journey",
    ] {
        let output = run(stagestream()
            .arg("check")
            .arg("--config")
            .arg(repo(&format!("config/presets/{preset}.toml"))));
        assert!(
            output.status.success(),
            "{preset}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_environment_overrides_the_file() {
    let output = replay_fixture(&[
        ("STAGESTREAM__MODEL__NAME", "renamed"),
        ("STAGESTREAM__OUTPUT__SOURCE", "/shop/eu"),
    ]);
    assert!(output.status.success());
    let events = parse_cloudevents(&String::from_utf8(output.stdout).unwrap());
    assert!(events
        .iter()
        .all(|e| e.json["data"]["model"] == "renamed" && e.json["source"] == "/shop/eu"));

    // A longer lateness keeps bob's gap open until alice's event passes it by more.
    let output = replay_fixture(&[("STAGESTREAM__TIME__ALLOWED_LATENESS", "2d")]);
    let events = parse_cloudevents(&String::from_utf8(output.stdout).unwrap());
    let winbacks = events
        .iter()
        .filter(|e| e.json["data"]["threshold"] == "winback_14d")
        .count();
    assert_eq!(
        winbacks, 1,
        "with 2d lateness the watermark never reaches bob's 14-day deadline"
    );
}

#[test]
fn bad_environment_values_and_unknown_keys_exit_64() {
    let output = replay_fixture(&[
        ("STAGESTREAM__TIME__DEDUP_WINDOW", "forever"),
        ("STAGESTREAM__TIME__LATENES", "1m"),
    ]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("time.dedup_window"), "{stderr}");
    assert!(stderr.contains("time.latenes: unknown key"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing runs on a bad config");
}

#[test]
fn unreadable_input_is_not_a_success() {
    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo(FIVE_STAGE))
        .args(["--input", "/nonexistent/events.jsonl", "--output", "-"]));
    assert_eq!(output.status.code(), Some(66));
    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo(FIVE_STAGE))
        .arg("--input")
        .arg(repo("tests/fixtures")) // a directory
        .args(["--output", "-"]));
    assert_ne!(output.status.code(), Some(0));
}

#[test]
fn a_bad_until_is_a_usage_error() {
    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo(FIVE_STAGE))
        .arg("--input")
        .arg(repo("tests/fixtures/five-stage.jsonl"))
        .args(["--output", "-", "--until", "next tuesday"]));
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn invalid_and_late_lines_go_to_the_rejects_file_and_the_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let input = [
        r#"{"type":"track","event":"Product Viewed","userId":"u","timestamp":"2026-01-01T10:00:00Z"}"#,
        "not json at all",
        r#"{"type":"track","event":"Order Completed","userId":"u","timestamp":"2026-01-01T09:00:00Z"}"#,
        r#"{"type":"track","userId":"u","timestamp":"2026-01-01T10:01:00Z"}"#,
        "",
    ]
    .join("\n");
    let mut child = stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo(FIVE_STAGE))
        .args(["--input", "-", "--output", "-", "--rejects"])
        .arg(&rejects)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let events = parse_cloudevents(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(events.len(), 1, "only the first line changes anything");
    let rejected: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(summary, [(2, "invalid_json"), (3, "late"), (4, "missing_event")]);
    assert_eq!(rejected[0]["input"], "not json at all");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("4 read, 2 valid, 2 invalid"), "{stderr}");
    assert!(stderr.contains("1 late"), "{stderr}");
}

#[test]
fn replay_output_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let generated = run(stagestream()
        .args([
            "generate",
            "--customers",
            "400",
            "--days",
            "40",
            "--seed",
            "9",
            "--output",
        ])
        .arg(&input));
    assert!(generated.status.success());
    let replay = || {
        let output = run(stagestream()
            .arg("replay")
            .arg("--config")
            .arg(repo(FIVE_STAGE))
            .arg("--input")
            .arg(&input)
            .args(["--output", "-", "--until", "2026-03-15T00:00:00Z"]));
        assert!(output.status.success());
        output.stdout
    };
    let first = replay();
    assert!(first.len() > 100_000, "a real workload, {} bytes", first.len());
    assert_eq!(first, replay());
}

/// The README's first command: the whole service on the in-process cluster prints every
/// output it delivers, and its summary counts them.
#[test]
fn the_demo_prints_every_output_it_delivers() {
    let output = run(stagestream().args(["demo", "--customers", "40", "--days", "20"]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let printed = stdout.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        printed > 40,
        "every customer enters a stage: {printed} lines\n{stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(", {printed} CloudEvents printed,")),
        "the summary counts what was printed ({printed}): {stderr}"
    );
}

/// librdkafka's cross-property rules run when a client is created: `check` creates both,
/// so such a configuration fails there (and `run` exits 64 too, not as a Kafka failure).
#[test]
fn check_runs_librdkafkas_own_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fetch.toml");
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    std::fs::write(
        &path,
        format!("{preset}\n[kafka.consumer]\n\"fetch.max.bytes\" = \"1\"\n"),
    )
    .unwrap();
    for command in ["check", "run"] {
        let output = run(stagestream()
            .args([command, "--config"])
            .arg(&path)
            .env("STAGESTREAM__HTTP__BIND", "127.0.0.1:0"));
        assert_eq!(output.status.code(), Some(64), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("`fetch.max.bytes` must be >= `message.max.bytes`"),
            "{command}: {stderr}"
        );
    }
}
