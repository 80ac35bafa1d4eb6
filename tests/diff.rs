//! `stagestream diff`: its report against an expectation built independently, from two
//! `replay` runs of the same history, one per model.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{parse_cloudevents, repo, run, stagestream};
use serde_json::Value;

const FIVE_STAGE: &str = "config/presets/five-stage.toml";
const UNTIL: &str = "2026-03-01T00:00:00Z";

/// What one replay ends with: each customer's final stage, transitions by (from, to),
/// inactivity events by threshold.
struct Replayed {
    stages: BTreeMap<String, String>,
    transitions: BTreeMap<(Option<String>, String), u64>,
    inactivity: BTreeMap<String, u64>,
}

fn replay(config: &Path, input: &Path) -> Replayed {
    let output = run(stagestream()
        .arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(input)
        .args(["--output", "-", "--until", UNTIL]));
    assert!(output.status.success());
    let mut replayed = Replayed {
        stages: BTreeMap::new(),
        transitions: BTreeMap::new(),
        inactivity: BTreeMap::new(),
    };
    for event in parse_cloudevents(&String::from_utf8(output.stdout).unwrap()) {
        let data = &event.json["data"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        match event.json["type"].as_str().unwrap() {
            "stagestream.stage.changed.v1" => {
                let to = text(&data["to_stage"]).unwrap();
                replayed
                    .stages
                    .insert(text(&data["customer_id"]).unwrap(), to.clone());
                *replayed
                    .transitions
                    .entry((text(&data["from_stage"]), to))
                    .or_default() += 1;
            }
            "stagestream.customer.inactive.v1" => {
                *replayed
                    .inactivity
                    .entry(text(&data["threshold"]).unwrap())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    replayed
}

#[test]
fn diff_reports_exactly_the_customers_a_rule_change_moves() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("history.jsonl");
    let generated = run(stagestream()
        .args([
            "generate",
            "--customers",
            "600",
            "--days",
            "45",
            "--seed",
            "5",
            "--output",
        ])
        .arg(&input));
    assert!(generated.status.success());
    // The changed copy: retention needs a third order instead of a second.
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    let changed = preset.replace("occurrence = { at_least = 2 }", "occurrence = { at_least = 3 }");
    assert_ne!(changed, preset);
    let new_config = dir.path().join("changed.toml");
    std::fs::write(&new_config, changed).unwrap();

    let old = replay(&repo(FIVE_STAGE), &input);
    let new = replay(&new_config, &input);
    let output = run(stagestream()
        .arg("diff")
        .arg("--old")
        .arg(repo(FIVE_STAGE))
        .arg("--new")
        .arg(&new_config)
        .arg("--input")
        .arg(&input)
        .args(["--until", UNTIL, "--format", "json", "--examples", "3"]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();

    // Customers: the cells the two replays give, each with its count and smallest ids.
    let ids: BTreeSet<&String> = old.stages.keys().chain(new.stages.keys()).collect();
    let mut expected: BTreeMap<(Option<&str>, Option<&str>), Vec<&str>> = BTreeMap::new();
    for id in &ids {
        let cell = (
            old.stages.get(*id).map(String::as_str),
            new.stages.get(*id).map(String::as_str),
        );
        expected.entry(cell).or_default().push(id.as_str());
    }
    let moved: usize = expected
        .iter()
        .filter(|((a, b), _)| a != b)
        .map(|(_, ids)| ids.len())
        .sum();
    assert!(moved > 0, "the change moves someone");
    let rows = report["customers"].as_array().unwrap();
    let mut seen = BTreeMap::new();
    for row in rows {
        let cell = (row["old"].as_str(), row["new"].as_str());
        let count = row["count"].as_u64().unwrap();
        let examples: Vec<&str> = row["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap())
            .collect();
        if cell == (None, None) {
            continue; // customers with no state under either model: no output to compare
        }
        let ids = &expected[&cell];
        assert_eq!(count, ids.len() as u64, "{cell:?}");
        let smallest: Vec<&str> = if cell.0 == cell.1 {
            Vec::new()
        } else {
            ids.iter().take(3).copied().collect()
        };
        assert_eq!(examples, smallest, "{cell:?}");
        seen.insert(cell, count);
    }
    assert_eq!(seen.len(), expected.len(), "every cell, once");

    // Transitions and inactivity: each side's counts, from its own replay.
    let mut keys: BTreeSet<(Option<String>, String)> = old.transitions.keys().cloned().collect();
    keys.extend(new.transitions.keys().cloned());
    let transitions: BTreeMap<(Option<String>, String), (u64, u64)> = report["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let key = (
                row["from"].as_str().map(str::to_owned),
                row["to"].as_str().unwrap().to_owned(),
            );
            (key, (row["old"].as_u64().unwrap(), row["new"].as_u64().unwrap()))
        })
        .collect();
    assert_eq!(transitions.keys().cloned().collect::<BTreeSet<_>>(), keys);
    for (key, counts) in &transitions {
        let count = |side: &Replayed| side.transitions.get(key).copied().unwrap_or(0);
        assert_eq!(*counts, (count(&old), count(&new)), "{key:?}");
    }
    let inactivity: Vec<(String, u64, u64)> = report["inactivity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["threshold"].as_str().unwrap().to_owned(),
                row["old"].as_u64().unwrap(),
                row["new"].as_u64().unwrap(),
            )
        })
        .collect();
    let count = |side: &Replayed, name: &str| side.inactivity.get(name).copied().unwrap_or(0);
    assert_eq!(
        inactivity,
        ["winback_7d", "winback_14d"].map(|name| (name.to_owned(), count(&old, name), count(&new, name)))
    );
}

#[test]
fn diff_tables_list_every_customer_once_and_a_bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"type":"track","event":"Order Completed","userId":"ann","timestamp":"2026-03-01T10:00:00Z"}"#,
            r#"{"type":"track","event":"Order Completed","userId":"ann","timestamp":"2026-03-01T11:00:00Z"}"#,
            r#"{"type":"page","name":"Home","userId":"bob","timestamp":"2026-03-01T12:00:00Z"}"#,
            r#"{"type":"identify","userId":"cid","timestamp":"2026-03-01T12:00:00Z"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let preset = std::fs::read_to_string(repo(FIVE_STAGE)).unwrap();
    let changed = dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        preset.replace("occurrence = { at_least = 2 }", "occurrence = { at_least = 3 }"),
    )
    .unwrap();
    let diff = |format: &str| {
        run(stagestream()
            .arg("diff")
            .arg("--old")
            .arg(repo(FIVE_STAGE))
            .arg("--new")
            .arg(&changed)
            .arg("--input")
            .arg(&input)
            .args(["--format", format]))
    };
    let json: Value = serde_json::from_slice(&diff("json").stdout).unwrap();
    assert_eq!(
        json["customers"],
        serde_json::json!([
            {"old": "awareness", "new": "awareness", "count": 1, "examples": []},
            {"old": "retention", "new": "purchase", "count": 1, "examples": ["ann"]},
            {"old": null, "new": null, "count": 1, "examples": []},
        ]),
        "bob stays, ann's second order no longer makes her a retained customer, cid has no state"
    );
    assert_eq!(
        json["transitions"],
        serde_json::json!([
            {"from": null, "to": "awareness", "old": 1, "new": 1},
            {"from": null, "to": "purchase", "old": 1, "new": 1},
            {"from": "purchase", "to": "retention", "old": 1, "new": 0},
        ])
    );
    let text = String::from_utf8(diff("text").stdout).unwrap();
    assert!(
        text.starts_with("customers by final stage: 1 of 3 end in another stage\n"),
        "{text}"
    );
    assert!(
        text.contains("* retention        purchase                  1  ann\n"),
        "{text}"
    );

    let missing = run(stagestream()
        .arg("diff")
        .arg("--old")
        .arg(dir.path().join("missing.toml"))
        .arg("--new")
        .arg(&changed)
        .arg("--input")
        .arg(&input));
    assert_eq!(missing.status.code(), Some(64));
}
