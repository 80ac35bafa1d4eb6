//! The `stagestream` command line as users drive it: exit codes, configuration errors,
//! environment overrides, rejects, stdin/stdout.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{compact, parse_cloudevents, repo, run, stagestream};

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
fn replay_erases_on_request_and_expires_quiet_customers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("expiring.toml");
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    std::fs::write(&config, format!("{preset}\n[state]\nexpire_after = \"20d\"\n")).unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"type":"track","event":"Order Completed","userId":"ann","messageId":"a1","timestamp":"2026-03-01T10:00:00Z"}"#,
            r#"{"type":"track","event":"Product Viewed","userId":"bob","messageId":"b1","timestamp":"2026-03-01T11:00:00Z"}"#,
            r#"{"type":"erase","userId":"bob","timestamp":"2026-03-01T12:00:00Z"}"#,
            // bob's messageIds went with him: the same one starts a new journey.
            r#"{"type":"track","event":"Product Viewed","userId":"bob","messageId":"b1","timestamp":"2026-03-01T12:30:00Z"}"#,
            // Nobody to erase: the erased event still says so. No time moves.
            r#"{"type":"erase","anonymousId":"ghost","timestamp":"2026-04-30T00:00:00Z"}"#,
            r#"{"type":"erase","userId":"nobody-timeless"}"#,
            r#"{"type":"page","name":"Home","userId":"cat","timestamp":"2026-03-25T10:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .args(["--output", "-", "--until", "2026-05-01T00:00:00Z"]));
    assert!(output.status.success(), "{output:?}");
    let events = parse_cloudevents(&String::from_utf8(output.stdout).unwrap());
    let lines: Vec<String> = events.iter().map(compact).collect();
    assert_eq!(
        lines,
        [
            "2026-03-01T10:00:00.000Z ann changed null->purchase rule=purchase trigger=track:Order Completed@2026-03-01T10:00:00.000Z#a1 held=null",
            "2026-03-01T11:00:00.000Z bob changed null->consideration rule=consideration trigger=track:Product Viewed@2026-03-01T11:00:00.000Z#b1 held=null",
            "2026-03-01T12:00:00.000Z bob erased",
            "2026-03-01T12:30:00.000Z bob changed null->consideration rule=consideration trigger=track:Product Viewed@2026-03-01T12:30:00.000Z#b1 held=null",
            "2026-04-30T00:00:00.000Z ghost erased",
            // cat's first event moves the watermark past everyone's ladder and expiry.
            "2026-03-08T10:00:00.000Z ann inactive winback_7d stage=purchase inactive_seconds=604800 last=2026-03-01T10:00:00.000Z",
            "2026-03-08T12:30:00.000Z bob inactive winback_7d stage=consideration inactive_seconds=604800 last=2026-03-01T12:30:00.000Z",
            "2026-03-15T10:00:00.000Z ann inactive winback_14d stage=purchase inactive_seconds=1209600 last=2026-03-01T10:00:00.000Z",
            "2026-03-15T12:30:00.000Z bob inactive winback_14d stage=consideration inactive_seconds=1209600 last=2026-03-01T12:30:00.000Z",
            "2026-03-21T10:00:00.000Z ann expired stage=purchase last=2026-03-01T10:00:00.000Z",
            "2026-03-21T12:30:00.000Z bob expired stage=consideration last=2026-03-01T12:30:00.000Z",
            "2026-03-25T10:00:00.000Z cat changed null->awareness rule=null trigger=page:Home@2026-03-25T10:00:00.000Z#null held=null",
            // --until fires the rest.
            "2026-04-01T10:00:00.000Z cat inactive winback_7d stage=awareness inactive_seconds=604800 last=2026-03-25T10:00:00.000Z",
            "2026-04-08T10:00:00.000Z cat inactive winback_14d stage=awareness inactive_seconds=1209600 last=2026-03-25T10:00:00.000Z",
            "2026-04-14T10:00:00.000Z cat expired stage=awareness last=2026-03-25T10:00:00.000Z",
        ]
    );
    let summary = String::from_utf8(output.stderr).unwrap();
    assert!(summary.contains("missing_timestamp 1"), "{summary}");
    assert!(summary.contains("3 expired, 2 erase requests"), "{summary}");
    assert!(summary.contains("customers    0 by stage"), "{summary}");

    // Expiry must outlast the ladder: 14d is the longest threshold.
    std::fs::write(&config, format!("{preset}\n[state]\nexpire_after = \"14d\"\n")).unwrap();
    let refused = run(stagestream().arg("check").arg("--config").arg(&config));
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "state.expire_after: 14d must be longer than the longest inactivity threshold (winback_14d"
        ),
        "{stderr}"
    );
}

#[test]
fn outputs_carry_stage_timing_and_a_return_after_inactivity() {
    let input = [
        r#"{"type":"page","name":"Home","userId":"c","messageId":"1","timestamp":"2026-03-01T09:00:00.250Z"}"#,
        r#"{"type":"track","event":"Product Viewed","userId":"c","messageId":"2","timestamp":"2026-03-01T09:05:00Z"}"#,
        r#"{"type":"track","event":"Order Completed","userId":"c","messageId":"3","timestamp":"2026-03-02T09:05:00.001Z"}"#,
        // Ten days later: the 7-day win-back fires as this event moves the watermark,
        // then the customer is back, then the second order moves it on.
        r#"{"type":"track","event":"Order Completed","userId":"c","messageId":"4","timestamp":"2026-03-12T10:00:00Z"}"#,
    ]
    .join("\n");
    let mut child = stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo(FIVE_STAGE))
        .args(["--input", "-", "--output", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let events = parse_cloudevents(&String::from_utf8(output.stdout).unwrap());
    let trigger = |id: &str, kind: &str, event: &str, at: &str| serde_json::json!({"message_id": id, "type": kind, "event": event, "timestamp": at});
    let first_seen = "2026-03-01T09:00:00.250Z";
    let expected = [
        (
            "stagestream.stage.changed.v1",
            serde_json::json!({"customer_id": "c", "from_stage": null, "to_stage": "awareness", "rule": null,
                "model": "five-stage", "model_version": "1", "trigger": trigger("1", "page", "Home", first_seen),
                "first_seen_at": first_seen, "previous_stage_entered_at": null,
                "time_in_previous_stage_seconds": null}),
        ),
        (
            "stagestream.stage.changed.v1",
            serde_json::json!({"customer_id": "c", "from_stage": "awareness", "to_stage": "consideration",
                "rule": "consideration", "model": "five-stage", "model_version": "1",
                "trigger": trigger("2", "track", "Product Viewed", "2026-03-01T09:05:00.000Z"),
                "first_seen_at": first_seen, "previous_stage_entered_at": first_seen,
                "time_in_previous_stage_seconds": 299.75}),
        ),
        (
            "stagestream.stage.changed.v1",
            serde_json::json!({"customer_id": "c", "from_stage": "consideration", "to_stage": "purchase",
                "rule": "purchase", "model": "five-stage", "model_version": "1",
                "trigger": trigger("3", "track", "Order Completed", "2026-03-02T09:05:00.001Z"),
                "first_seen_at": first_seen, "previous_stage_entered_at": "2026-03-01T09:05:00.000Z",
                "time_in_previous_stage_seconds": 86400.001}),
        ),
        (
            "stagestream.customer.inactive.v1",
            serde_json::json!({"customer_id": "c", "threshold": "winback_7d", "stage": "purchase",
                "stage_entered_at": "2026-03-02T09:05:00.001Z", "inactive_seconds": 604800,
                "last_activity_at": "2026-03-02T09:05:00.001Z", "detected_at": "2026-03-09T09:05:00.001Z",
                "model": "five-stage", "model_version": "1"}),
        ),
        (
            "stagestream.customer.reactivated.v1",
            serde_json::json!({"customer_id": "c", "stage": "purchase",
                "last_activity_at": "2026-03-02T09:05:00.001Z", "returned_at": "2026-03-12T10:00:00.000Z",
                "inactive_seconds": 867299, "thresholds": ["winback_7d"], "model": "five-stage", "model_version": "1"}),
        ),
        (
            "stagestream.stage.changed.v1",
            serde_json::json!({"customer_id": "c", "from_stage": "purchase", "to_stage": "retention",
                "rule": "retention", "model": "five-stage", "model_version": "1",
                "trigger": trigger("4", "track", "Order Completed", "2026-03-12T10:00:00.000Z"),
                "first_seen_at": first_seen, "previous_stage_entered_at": "2026-03-02T09:05:00.001Z",
                "time_in_previous_stage_seconds": 867299.999}),
        ),
    ];
    let actual: Vec<(&str, &serde_json::Value)> = events
        .iter()
        .map(|e| (e.json["type"].as_str().unwrap(), &e.json["data"]))
        .collect();
    let expected: Vec<(&str, &serde_json::Value)> =
        expected.iter().map(|(kind, data)| (*kind, data)).collect();
    assert_eq!(actual, expected);
    assert_eq!(events[4].json["time"], "2026-03-12T10:00:00.000Z");
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
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(
            stdout.contains(&format!("model       {preset}, version 1 (fingerprint ")),
            "{stdout}"
        );
    }
}

#[test]
fn without_a_version_outputs_carry_the_fingerprints_first_twelve_digits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unversioned.toml");
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    std::fs::write(&config, preset.replace("version = \"1\"\n", "")).unwrap();
    let output = run(stagestream().arg("check").arg("--config").arg(&config));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let model_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("model "))
        .unwrap();
    // "model       five-stage, version V (fingerprint F)"
    let version = model_line
        .split("version ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let fingerprint = model_line
        .split("fingerprint ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    assert_eq!(fingerprint.len(), 16, "{model_line}");
    assert_eq!(version, &fingerprint[..12], "{model_line}");
    // The version is a label: the same model with version 1 has the same fingerprint.
    let versioned = run(stagestream().arg("check").arg("--config").arg(repo(FIVE_STAGE)));
    assert!(String::from_utf8(versioned.stdout).unwrap().contains(fingerprint));
    let replayed = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(&config)
        .arg("--input")
        .arg(repo("tests/fixtures/five-stage.jsonl"))
        .args(["--output", "-"]));
    let events = parse_cloudevents(&String::from_utf8(replayed.stdout).unwrap());
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.json["data"]["model_version"] == version));
}

#[test]
fn check_validates_and_describes_stage_mappings_which_leave_the_fingerprint_alone() {
    let dir = tempfile::tempdir().unwrap();
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    let with = |mappings: &str| {
        let config = dir.path().join("mapped.toml");
        std::fs::write(
            &config,
            preset.replacen("[[model.rules]]", &format!("{mappings}\n[[model.rules]]"), 1),
        )
        .unwrap();
        run(stagestream().arg("check").arg("--config").arg(&config))
    };
    let checked = with("[[model.migrate]]\nfrom = \"decision\"\nto = \"purchase\"\n");
    assert!(checked.status.success());
    let stdout = String::from_utf8(checked.stdout).unwrap();
    assert!(
        stdout.contains("  migrate     customers of the removed stage decision move to purchase when a snapshot is restored\n"),
        "{stdout}"
    );
    let plain = run(stagestream().arg("check").arg("--config").arg(repo(FIVE_STAGE)));
    let model_line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("  model "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        model_line(&stdout),
        model_line(&String::from_utf8(plain.stdout).unwrap())
    );

    let refused = with(
        "[[model.migrate]]\nfrom = \"purchase\"\nto = \"retention\"\n\
         [[model.migrate]]\nfrom = \"decision\"\nto = \"checkout\"\n",
    );
    assert_eq!(refused.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("model.migrate[0].from"), "{stderr}");
    assert!(stderr.contains("stage \"purchase\" still exists"), "{stderr}");
    assert!(stderr.contains("model.migrate[1].to"), "{stderr}");
    assert!(stderr.contains("unknown stage \"checkout\""), "{stderr}");
}

#[test]
fn check_loads_a_shadow_model_and_reports_its_problems_under_shadow_config() {
    let dir = tempfile::tempdir().unwrap();
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, preset.replace("version = \"1\"", "version = \"2\"")).unwrap();
    let check = |shadow: &str| {
        let config = dir.path().join("live.toml");
        std::fs::write(&config, format!("{preset}\n[shadow]\n{shadow}\n")).unwrap();
        run(stagestream().arg("check").arg("--config").arg(&config))
    };
    let refused = |shadow: &str| {
        let output = check(shadow);
        assert_eq!(output.status.code(), Some(64), "{shadow}");
        String::from_utf8(output.stderr).unwrap()
    };
    let path = candidate.display();
    let checked = check(&format!("config = \"{path}\"\ntopic = \"candidate\""));
    assert!(checked.status.success());
    let stdout = String::from_utf8(checked.stdout).unwrap();
    assert!(
        stdout.contains("  shadow      five-stage, version 2 (fingerprint "),
        "{stdout}"
    );
    assert!(stdout.contains(") to topic candidate\n"), "{stdout}");
    // A relative path is found beside the configuration that names it.
    let beside = check("config = \"candidate.toml\"\ntopic = \"candidate\"");
    assert!(
        beside.status.success(),
        "{}",
        String::from_utf8_lossy(&beside.stderr)
    );

    let stderr = refused(&format!("config = \"{path}\""));
    assert!(
        stderr.contains("shadow.topic: required when shadow.config is set"),
        "{stderr}"
    );
    let stderr = refused(&format!("config = \"{path}\"\ntopic = \"journey-stages\""));
    assert!(
        stderr.contains("shadow.topic: must differ from the input, output and dead-letter topics"),
        "{stderr}"
    );
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, preset.replace("to = \"purchase\"", "to = \"checkout\"")).unwrap();
    let stderr = refused(&format!(
        "config = \"{}\"\ntopic = \"candidate\"",
        broken.display()
    ));
    assert!(
        stderr.contains("shadow.config: invalid configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown stage \"checkout\""), "{stderr}");
    let nested = dir.path().join("nested.toml");
    std::fs::write(
        &nested,
        format!("{preset}\n[shadow]\nconfig = \"{path}\"\ntopic = \"again\"\n"),
    )
    .unwrap();
    let stderr = refused(&format!(
        "config = \"{}\"\ntopic = \"candidate\"",
        nested.display()
    ));
    assert!(stderr.contains("cannot name a shadow of its own"), "{stderr}");
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
    assert_eq!(
        rejected[1]["error"],
        "more than the allowed lateness before its customer's last activity 2026-01-01T10:00:00.000Z"
    );
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
    assert!(
        stdout.contains(" there\n") && stdout.contains(" back in "),
        "transitions say how long the stage was held, returns are shown:\n{stdout}"
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

/// An engine that applied the bundled example's lines, saved as a snapshot of
/// `events/0` at `offset` under `dir`, as the service writes it.
fn snapshot_of_the_example(dir: &std::path::Path, offset: i64) -> stagestream::core::Engine {
    use stagestream::snapshot::format::{encode, About, Header};
    let settings = stagestream::config::load(&repo(FIVE_STAGE)).unwrap();
    let mut engine = stagestream::core::Engine::new(settings.model.clone(), settings.engine);
    let text = std::fs::read_to_string(repo("examples/five-stage.jsonl")).unwrap();
    let mut outputs = Vec::new();
    for line in text.lines() {
        let decoded = stagestream::decode::decode(line.as_bytes(), &settings.model);
        if let Some(event) = decoded.ok().and_then(stagestream::core::Record::into_event) {
            engine.on_event(&event, &mut outputs);
        }
    }
    let header = Header {
        fingerprint: settings.model.shape().fingerprint,
        topic: "events".into(),
        partition: 0,
        offset,
        about: Some(About {
            model: "five-stage".into(),
            watermark: engine.watermark(),
            written_at: stagestream::core::EventTime::parse_rfc3339("2026-03-02T10:00:00.000Z").unwrap(),
        }),
    };
    let folder = dir.join("events").join("0");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join(format!("{offset:020}.snap")),
        encode(&header, &engine.image()),
    )
    .unwrap();
    engine
}

#[test]
fn inspect_shows_a_snapshot_its_customers_and_refuses_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = snapshot_of_the_example(dir.path(), 3_503);
    let customers = engine.customer_count();
    let described = run(stagestream().arg("inspect").arg(dir.path()));
    assert_eq!(described.status.code(), Some(0), "{described:?}");
    let text = String::from_utf8(described.stdout).unwrap();
    for expected in [
        "  format     5\n",
        "  model      five-stage (fingerprint ",
        "  topic      events\n",
        "  partition  0\n",
        "  offset     3503\n",
        "  written at 2026-03-02T10:00:00.000Z\n",
        &format!("  watermark  {}\n", engine.watermark()),
        &format!("  customers  {customers}: awareness 5, consideration 44, purchase 19, retention 6, advocacy 46\n"),
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }

    let exported = run(stagestream().arg("inspect").arg(dir.path()).arg("--export"));
    assert_eq!(exported.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8(exported.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), customers);
    let id = lines[7]["customer_id"].as_str().unwrap().to_owned();
    let stage = engine.stage_of(&id).unwrap();
    assert_eq!(
        lines[7]["stage"].as_str(),
        Some(engine.model().stage_names().nth(usize::from(stage.0)).unwrap())
    );

    let one = run(stagestream()
        .arg("inspect")
        .arg(dir.path())
        .args(["--customer", &id]));
    assert_eq!(one.status.code(), Some(0), "{one:?}");
    let state: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(state["customer_id"], id.as_str());
    assert_eq!(state["model"], "five-stage");
    let states = state["states"].as_array().unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["topic"], "events");
    assert_eq!(states[0]["partition"], 0);
    assert_eq!(states[0]["as_of"]["offset"], 3_503);
    assert_eq!(states[0]["stage"], lines[7]["stage"]);
    let thresholds: Vec<&str> = states[0]["inactivity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["threshold"].as_str().unwrap())
        .collect();
    assert_eq!(thresholds, ["winback_7d", "winback_14d"]);

    let unknown = run(stagestream()
        .arg("inspect")
        .arg(dir.path())
        .args(["--customer", "nobody"]));
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");

    // A truncated file is a clear error, never a panic; in a directory it is skipped.
    let file = dir.path().join("events/0").join(format!("{:020}.snap", 3_503));
    let bytes = std::fs::read(&file).unwrap();
    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = run(stagestream().arg("inspect").arg(&truncated));
    assert_eq!(corrupt.status.code(), Some(65), "{corrupt:?}");
    assert!(String::from_utf8_lossy(&corrupt.stderr).contains("is not a usable snapshot"));
    std::fs::write(
        dir.path().join("events/0").join(format!("{:020}.snap", 9_999)),
        b"garbage",
    )
    .unwrap();
    let skipped = run(stagestream().arg("inspect").arg(dir.path()));
    assert_eq!(skipped.status.code(), Some(0), "{skipped:?}");
    assert!(String::from_utf8_lossy(&skipped.stdout).contains("offset     3503"));
    assert!(String::from_utf8_lossy(&skipped.stderr).contains("skipped"));
}
