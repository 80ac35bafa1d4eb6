//! `stagestream report` on a small history whose tables are worked out by hand in
//! `docs/analytics.md` (the same stream, the same numbers).

mod common;

use common::{repo, run, stagestream};
use serde_json::{json, Value};

/// The worked example of `docs/analytics.md`.
const HISTORY: [&str; 10] = [
    r#"{"type":"page","name":"Home","userId":"ann","timestamp":"2026-03-01T10:00:00Z"}"#,
    r#"{"type":"track","event":"Product Viewed","userId":"ann","timestamp":"2026-03-01T10:30:00Z"}"#,
    r#"{"type":"track","event":"Order Completed","userId":"ann","timestamp":"2026-03-02T10:00:00Z"}"#,
    r#"{"type":"track","event":"Product Viewed","userId":"bob","timestamp":"2026-03-05T12:00:00Z"}"#,
    r#"{"type":"track","event":"Order Completed","userId":"ann","timestamp":"2026-03-20T10:00:00Z"}"#,
    r#"{"type":"page","name":"Home","userId":"cid","timestamp":"2026-04-02T09:00:00Z"}"#,
    r#"{"type":"track","event":"Order Completed","userId":"cid","timestamp":"2026-04-02T09:10:00Z"}"#,
    r#"{"type":"page","name":"Home","userId":"dan","timestamp":"2026-04-03T08:00:00Z"}"#,
    r#"{"type":"erase","userId":"dan","timestamp":"2026-04-04T00:00:00Z"}"#,
    "not json: skipped, as replay skips it",
];

fn report(format: &str, cohort: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("history.jsonl");
    std::fs::write(&input, HISTORY.join("\n")).unwrap();
    let output = run(stagestream()
        .arg("report")
        .arg("--config")
        .arg(repo("config/presets/five-stage.toml"))
        .arg("--input")
        .arg(&input)
        .args([
            "--until",
            "2026-04-05T00:00:00Z",
            "--cohort",
            cohort,
            "--format",
            format,
        ]));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// One row of a cohort's `stages`.
fn stage(
    name: &str,
    reached: u64,
    conversion: Option<f64>,
    p50: Option<f64>,
    p90: Option<f64>,
    current: u64,
    dropped_off: u64,
) -> Value {
    json!({"stage": name, "reached": reached, "conversion_to_next": conversion,
        "time_to_reach_p50_seconds": p50, "time_to_reach_p90_seconds": p90,
        "current": current, "dropped_off": dropped_off})
}

fn winback(seven: (u64, u64), fourteen: (u64, u64)) -> Value {
    json!([
        {"threshold": "winback_7d", "inactive": seven.0, "reactivated": seven.1},
        {"threshold": "winback_14d", "inactive": fourteen.0, "reactivated": fourteen.1},
    ])
}

#[test]
fn the_worked_example_by_month() {
    let report: Value = serde_json::from_str(&report("json", "month")).unwrap();
    const DAY: f64 = 86_400.0;
    let march = json!({
        "cohort": "2026-03",
        "customers": 2,
        "stages": [
            stage("awareness", 1, Some(2.0), Some(0.0), Some(0.0), 0, 0),
            stage("consideration", 2, Some(0.5), Some(0.0), Some(1_800.0), 1, 1),
            stage("purchase", 1, Some(1.0), Some(DAY), Some(DAY), 0, 0),
            stage("retention", 1, Some(0.0), Some(19.0 * DAY), Some(19.0 * DAY), 1, 1),
            stage("advocacy", 0, None, None, None, 0, 0),
        ],
        "winback": winback((3, 1), (3, 1)),
    });
    let april = json!({
        "cohort": "2026-04",
        "customers": 1,
        "stages": [
            stage("awareness", 1, Some(0.0), Some(0.0), Some(0.0), 0, 0),
            stage("consideration", 0, None, None, None, 0, 0),
            stage("purchase", 1, Some(0.0), Some(600.0), Some(600.0), 1, 0),
            stage("retention", 0, None, None, None, 0, 0),
            stage("advocacy", 0, None, None, None, 0, 0),
        ],
        "winback": winback((0, 0), (0, 0)),
    });
    let overall = json!({
        "cohort": "all",
        "customers": 3,
        "stages": [
            stage("awareness", 2, Some(1.0), Some(0.0), Some(0.0), 0, 0),
            stage("consideration", 2, Some(1.0), Some(0.0), Some(1_800.0), 1, 1),
            stage("purchase", 2, Some(0.5), Some(600.0), Some(DAY), 1, 0),
            stage("retention", 1, Some(0.0), Some(19.0 * DAY), Some(19.0 * DAY), 1, 1),
            stage("advocacy", 0, None, None, None, 0, 0),
        ],
        "winback": winback((3, 1), (3, 1)),
    });
    assert_eq!(report, json!({"cohorts": [march, april], "overall": overall}));
}

#[test]
fn weeks_csv_and_text() {
    let weekly: Value = serde_json::from_str(&report("json", "week")).unwrap();
    let cohorts: Vec<(&str, u64)> = weekly["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["cohort"].as_str().unwrap(), c["customers"].as_u64().unwrap()))
        .collect();
    // 2026-03-01 is a Sunday (ISO week 9); 2026-03-05 a Thursday (week 10); 2026-04-02
    // a Thursday (week 14).
    assert_eq!(cohorts, [("2026-W09", 1), ("2026-W10", 1), ("2026-W14", 1)]);

    let csv = report("csv", "month");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "cohort,customers,section,name,reached,conversion_to_next,time_to_reach_p50_seconds,\
         time_to_reach_p90_seconds,current,dropped_off,inactive,reactivated"
    );
    assert!(
        lines.contains(&"2026-03,2,stage,consideration,2,0.5,0,1800,1,1,,"),
        "{csv}"
    );
    assert!(lines.contains(&"all,3,winback,winback_7d,,,,,,,3,1"), "{csv}");
    assert!(lines.contains(&"all,3,stage,advocacy,0,,,,0,0,,"), "{csv}");
    assert_eq!(
        lines.len(),
        1 + 3 * (5 + 2),
        "a header, then 7 rows per cohort and overall"
    );

    let text = report("text", "month");
    assert!(text.starts_with("cohort 2026-03: 2 customers\n"), "{text}");
    assert!(
        text.contains("win-back: winback_7d 1 of 3 came back; winback_14d 1 of 3 came back"),
        "{text}"
    );
}
