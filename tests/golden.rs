//! Golden tests: every preset walks a scripted journey through each of its stages and
//! both win-back thresholds. The `.expected` files are written by hand from
//! `docs/semantics.md`, in the compact form of `common::compact`.

mod common;

use std::collections::BTreeSet;

use common::{compact, parse_cloudevents, repo, run, stagestream};

fn golden(preset: &str) {
    let expected_text = std::fs::read_to_string(repo(&format!("tests/fixtures/{preset}.expected"))).unwrap();
    let header = expected_text.lines().next().unwrap();
    let until = header
        .split("--until ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let expected: Vec<&str> = expected_text.lines().filter(|l| !l.starts_with('#')).collect();

    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo(&format!("config/presets/{preset}.toml")))
        .arg("--input")
        .arg(repo(&format!("tests/fixtures/{preset}.jsonl")))
        .args(["--output", "-", "--until", until]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = parse_cloudevents(&String::from_utf8(output.stdout).unwrap());
    let actual: Vec<String> = events.iter().map(compact).collect();
    assert_eq!(actual, expected, "{preset}");
    for event in &events {
        assert_eq!(event.json["data"]["model"], preset);
        assert_eq!(event.json["data"]["model_version"], "1", "the presets' version");
        assert_eq!(event.json["source"], "stagestream");
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e.json["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "ids are distinct");

    // The fixture itself must cover the whole model: every stage and both win-backs.
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo(&format!("config/presets/{preset}.toml"))).unwrap())
            .unwrap();
    let stages: BTreeSet<&str> = config["model"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let reached: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.json["data"]["to_stage"].as_str())
        .collect();
    assert_eq!(reached, stages, "{preset}: the journey reaches every stage");
    let fired: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e.json["data"]["threshold"].as_str())
        .collect();
    assert_eq!(fired, BTreeSet::from(["winback_14d", "winback_7d"]));
}

#[test]
fn five_stage() {
    golden("five-stage");
}

#[test]
fn four_stage() {
    golden("four-stage");
}

#[test]
fn lifecycle_five() {
    golden("lifecycle-five");
}

#[test]
fn six_stage() {
    golden("six-stage");
}

#[test]
fn value_journey() {
    golden("value-journey");
}

/// The bytes of one output, pinned: field order, null encoding, timestamp format.
#[test]
fn five_stage_first_line_is_byte_exact() {
    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(repo("config/presets/five-stage.toml"))
        .arg("--input")
        .arg(repo("tests/fixtures/five-stage.jsonl"))
        .args(["--output", "-"]));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    let data = r#"{"customer_id":"alice","from_stage":null,"to_stage":"awareness","rule":null,"model":"five-stage","model_version":"1","trigger":{"message_id":"a1","type":"page","event":"Home","timestamp":"2026-03-01T09:00:00.000Z"},"first_seen_at":"2026-03-01T09:00:00.000Z","previous_stage_entered_at":null,"time_in_previous_stage_seconds":null}"#;
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::parse_str("6f0c9a51-3d2e-4b7a-9c1e-5a7d2f48b3e6").unwrap(),
        format!("stagestream.stage.changed.v1\n{data}").as_bytes(),
    );
    assert_eq!(
        first,
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"stagestream","type":"stagestream.stage.changed.v1","subject":"alice","time":"2026-03-01T09:00:00.000Z","datacontenttype":"application/json","data":{data}}}"#
        )
    );
}
