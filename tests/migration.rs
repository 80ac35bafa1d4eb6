//! Upgrading the model of a running service without a rebuild (`docs/semantics.md`,
//! "Model changes"): `stagestream run` (the real binary) against a real broker
//! (tansu), stopped with snapshots under the five-stage model and started again under
//! a changed one. A removed stage without a mapping stops it (exit 78, the stage, its
//! population and the lines to add); with the mapping its customers move at the
//! snapshot's watermark; an added threshold fires once, a fired one never again. Then
//! one restart per other kind of change (a rule changed, a stage appended, the ladder
//! shortened, a threshold removed), each with the new outputs it should cause.
//!
//! Skipped with a message when tansu is not installed; under CI that is a failure.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::kafka::{now, produce_lines, read_output, Record};
use common::service::{start_service, terminate, wait_for, write_config};
use common::tansu::{self, Tansu};
use stagestream::config::{self, Settings};
use stagestream::core::{EventTime, Span};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// The five-stage preset's `retention`, removed.
fn without_retention(text: &str) -> String {
    let edits = [
        (
            r#""purchase", "retention", "advocacy""#,
            r#""purchase", "advocacy""#,
        ),
        (
            "[[model.rules]]\nname = \"retention\"\nto = \"retention\"\nevents = [\"Order Completed\"]\noccurrence = { at_least = 2 }\n",
            "",
        ),
        (r#"from = ["purchase", "retention"]"#, r#"from = ["purchase"]"#),
        ("version = \"1\"", "version = \"2\""),
        (
            "after = \"14d\"\n",
            "after = \"14d\"\n\n[[model.inactivity]]\nname = \"nudge_3d\"\nafter = \"3d\"\n",
        ),
    ];
    edits.iter().fold(text.to_owned(), |text, (from, to)| {
        assert!(text.contains(from), "the preset has {from:?}");
        text.replace(from, to)
    })
}

/// `path` rewritten by `edit`, and its settings.
fn rewrite(path: &Path, edit: impl Fn(&str) -> String) -> Settings {
    let text = edit(&std::fs::read_to_string(path).unwrap());
    std::fs::write(path, text).unwrap();
    config::load(path).unwrap()
}

fn line(customer: &str, event: &str, at: EventTime) -> Vec<u8> {
    format!(r#"{{"type":"track","userId":"{customer}","event":"{event}","timestamp":"{at}"}}"#).into_bytes()
}

fn data(record: &Record) -> Value {
    serde_json::from_slice(&record.value).unwrap()
}

/// Each output's type, subject and data, for failure messages.
fn summary(outputs: &[Record]) -> Vec<String> {
    outputs
        .iter()
        .map(|r| {
            let kind = r.header("ce_type").unwrap_or_default();
            format!("{kind} {}", String::from_utf8_lossy(&r.value))
        })
        .collect()
}

/// The outputs about `customer` of type `kind` (the last part of `ce_type`'s name).
fn of<'a>(outputs: &'a [Record], customer: &str, kind: &str) -> Vec<&'a Record> {
    let kind = format!("stagestream.{kind}.v1");
    outputs
        .iter()
        .filter(|r| r.header("ce_subject") == Some(customer) && r.header("ce_type") == Some(&kind))
        .collect()
}

#[test]
fn a_restart_under_a_changed_model_carries_the_snapshot_over() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 1), ("journey-stages", 1), ("dead-letters", 1)]);
    let snapshots = format!(
        "[snapshot]\ndir = \"{}\"\ninterval = \"500ms\"\n",
        dir.path().join("snapshots").display()
    );
    let (config, settings) = write_config(dir.path(), "five", &broker.bootstrap, "upgrade", &[], &snapshots);
    // Times relative to now, so that the wall clock fires only what is due by now.
    let now = now().as_millis();
    let at = |millis: i64| EventTime::from_millis(now - millis);
    let (carol_last, dave_last, newest) = (at(8 * DAY), at(4 * DAY), at(10 * 60_000));
    produce_lines(
        &broker.bootstrap,
        "events",
        &settings,
        &[
            line("carol", "Order Completed", carol_last),
            line("dave", "Order Completed", dave_last),
            line("ann", "Order Completed", at(2 * HOUR)),
            line("ann", "Order Completed", at(HOUR)),
            line("bob", "Product Viewed", newest),
        ],
        &[],
    );
    let log = dir.path().join("service.log");
    let service = start_service(&config, &log);
    wait_for("carol's win-back", Duration::from_secs(60), || {
        !of(
            &read_output(&broker.bootstrap, Duration::from_secs(10)),
            "carol",
            "customer.inactive",
        )
        .is_empty()
    });
    assert!(terminate(service).success());
    let before = read_output(&broker.bootstrap, Duration::from_secs(10));
    assert_eq!(
        before.len(),
        6,
        "four entries, ann's retention and carol's win-back: {:?}",
        summary(&before)
    );

    // Without a mapping for `retention`, where ann is, the service refuses to start.
    let (unmapped, _) = write_config(
        dir.path(),
        "unmapped",
        &broker.bootstrap,
        "upgrade",
        &[],
        &snapshots,
    );
    rewrite(&unmapped, without_retention);
    let refused = common::run(common::stagestream().args(["run", "--config"]).arg(&unmapped));
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(r#""retention" (1 customer)"#), "{stderr}");
    assert!(
        stderr.contains("[[model.migrate]]\nfrom = \"retention\"\nto = \"STAGE\""),
        "{stderr}"
    );

    let (mapped, _) = write_config(
        dir.path(),
        "mapped",
        &broker.bootstrap,
        "upgrade",
        &[],
        &snapshots,
    );
    let settings = rewrite(&mapped, |text| {
        without_retention(text) + "\n[[model.migrate]]\nfrom = \"retention\"\nto = \"purchase\"\n"
    });
    let service = start_service(&mapped, &log);
    let expected = before.len() + 3;
    wait_for("the migration's outputs", Duration::from_secs(60), || {
        read_output(&broker.bootstrap, Duration::from_secs(10)).len() >= expected
    });
    // Time for anything that should not come.
    std::thread::sleep(Duration::from_secs(2));
    assert!(terminate(service).success());
    let after = read_output(&broker.bootstrap, Duration::from_secs(10));
    let new = &after[before.len()..];
    assert_eq!(new.len(), 3, "{:?}", summary(new));
    assert!(new.iter().all(|r| data(r)["model_version"] == "2"));

    let watermark = newest.minus(settings.engine.allowed_lateness);
    let [migrated] = of(new, "ann", "stage.changed")[..] else {
        panic!("one transition for ann: {:?}", summary(new));
    };
    let migrated = data(migrated);
    assert_eq!(migrated["from_stage"], "retention");
    assert_eq!(migrated["to_stage"], "purchase");
    assert_eq!(migrated["rule"], "model-migration");
    assert_eq!(migrated["trigger"], Value::Null);
    assert_eq!(migrated["previous_stage_entered_at"], at(HOUR).to_string());
    // Entered an hour ago; the watermark is the newest event (ten minutes ago) less
    // the allowed lateness (five minutes).
    assert_eq!(migrated["time_in_previous_stage_seconds"], 45 * 60);
    assert_eq!(
        of(new, "ann", "stage.changed")[0].header("ce_time"),
        Some(watermark.to_string().as_str()),
        "at the snapshot's watermark"
    );

    // The new threshold fires once for carol (due before her fired win-back) and dave;
    // carol's win-back does not fire again.
    for (customer, last) in [("carol", carol_last), ("dave", dave_last)] {
        let fired = of(new, customer, "customer.inactive");
        assert_eq!(fired.len(), 1, "{customer}: {:?}", summary(new));
        let fired = data(fired[0]);
        assert_eq!(fired["threshold"], "nudge_3d");
        assert_eq!(
            fired["detected_at"],
            last.plus(Span::from_millis(3 * DAY)).to_string()
        );
    }
}

/// One kind of model change for [`each_kind_of_change_restarts_with_the_outputs_it_should`]:
/// how the preset is edited, the events sent after the restart, and the new outputs
/// expected (type, customer, the fields that matter).
struct Change {
    name: &'static str,
    edits: &'static [(&'static str, &'static str)],
    follow_up: &'static [(&'static str, &'static str)],
    expected: fn(&History) -> Vec<(String, String, Value)>,
}

/// The history every case starts from, sent before the first run: carol's last order
/// 15 days ago (both win-backs fire), erin's 8 days ago (the 7-day one fires), dave's 4
/// days ago (nothing fires), bob's visit 10 minutes ago (the newest event).
struct History {
    carol: EventTime,
    erin: EventTime,
    dave: EventTime,
    now: EventTime,
}

fn expect(kind: &str, customer: &str, fields: Value) -> (String, String, Value) {
    (format!("stagestream.{kind}.v1"), customer.to_owned(), fields)
}

/// Whether `record` is `(kind, customer)` with every field of `fields` as given.
fn matches(record: &Record, (kind, customer, fields): &(String, String, Value)) -> bool {
    let data = data(record);
    record.header("ce_type") == Some(kind)
        && record.header("ce_subject") == Some(customer)
        && fields
            .as_object()
            .unwrap()
            .iter()
            .all(|(key, value)| data[key] == *value)
}

#[test]
fn each_kind_of_change_restarts_with_the_outputs_it_should() {
    let Some(binary) = tansu::binary() else { return };
    let changes = [
        Change {
            // Same events counted: dave's order before the restart still counts.
            name: "rule changed",
            edits: &[("occurrence = { at_least = 2 }", "occurrence = { at_least = 3 }")],
            follow_up: &[("dave", "Order Completed"), ("dave", "Order Completed")],
            expected: |_| {
                vec![expect(
                    "stage.changed",
                    "dave",
                    serde_json::json!({"from_stage": "purchase", "to_stage": "retention", "rule": "retention"}),
                )]
            },
        },
        Change {
            name: "stage appended",
            edits: &[
                (r#""retention", "advocacy"]"#, r#""retention", "advocacy", "champion"]"#),
                (
                    "[[model.inactivity]]\nname = \"winback_7d\"",
                    "[[model.rules]]\nname = \"champion\"\nto = \"champion\"\nevents = [\"Referral Converted\"]\n\n[[model.inactivity]]\nname = \"winback_7d\"",
                ),
            ],
            follow_up: &[("dave", "Referral Converted")],
            expected: |_| {
                vec![expect(
                    "stage.changed",
                    "dave",
                    serde_json::json!({"from_stage": "purchase", "to_stage": "champion", "rule": "champion"}),
                )]
            },
        },
        Change {
            // dave's 7-day win-back, now 3 days, is due: it fires at the next advance;
            // erin's and carol's already fired and do not fire again.
            name: "ladder shortened",
            edits: &[("after = \"7d\"", "after = \"3d\"")],
            follow_up: &[],
            expected: |h| {
                vec![expect(
                    "customer.inactive",
                    "dave",
                    serde_json::json!({"threshold": "winback_7d", "detected_at": h.dave.plus(Span::from_millis(3 * DAY)).to_string()}),
                )]
            },
        },
        Change {
            // Nothing fires again; carol's return lists only what the model still has.
            name: "threshold removed",
            edits: &[("[[model.inactivity]]\nname = \"winback_7d\"\nafter = \"7d\"\n", "")],
            follow_up: &[("carol", "Product Viewed")],
            expected: |h| {
                vec![expect(
                    "customer.reactivated",
                    "carol",
                    serde_json::json!({"thresholds": ["winback_14d"], "last_activity_at": h.carol.to_string()}),
                )]
            },
        },
    ];
    for change in changes {
        let dir = tempfile::tempdir().unwrap();
        let broker = Tansu::start(binary.clone(), "memory://tansu/", dir.path());
        broker.create_topics(&[("events", 1), ("journey-stages", 1), ("dead-letters", 1)]);
        let snapshots = format!(
            "[snapshot]\ndir = \"{}\"\ninterval = \"500ms\"\n",
            dir.path().join("snapshots").display()
        );
        let (config, settings) = write_config(dir.path(), "a", &broker.bootstrap, "upgrade", &[], &snapshots);
        let now = now();
        let ago = |millis: i64| now.minus(Span::from_millis(millis));
        let history = History {
            carol: ago(15 * DAY),
            erin: ago(8 * DAY),
            dave: ago(4 * DAY),
            now,
        };
        let first = [
            line("carol", "Order Completed", history.carol),
            line("erin", "Order Completed", history.erin),
            line("dave", "Order Completed", history.dave),
            line("bob", "Product Viewed", ago(10 * 60_000)),
        ];
        produce_lines(&broker.bootstrap, "events", &settings, &first, &[]);
        let log = dir.path().join("service.log");
        let service = start_service(&config, &log);
        // Four entries and three win-backs (carol's two, erin's one).
        wait_for("the first run's outputs", Duration::from_secs(60), || {
            read_output(&broker.bootstrap, Duration::from_secs(10)).len() >= 7
        });
        assert!(terminate(service).success());
        let before = read_output(&broker.bootstrap, Duration::from_secs(10)).len();
        assert_eq!(before, 7, "{}", change.name);

        let (changed, _) = write_config(dir.path(), "b", &broker.bootstrap, "upgrade", &[], &snapshots);
        let settings = rewrite(&changed, |text| {
            change.edits.iter().fold(text.to_owned(), |text, (from, to)| {
                assert!(text.contains(from), "{}: the preset has {from:?}", change.name);
                text.replacen(from, to, 1)
            })
        });
        let service = start_service(&changed, &log);
        let follow_up: Vec<Vec<u8>> = change
            .follow_up
            .iter()
            .enumerate()
            .map(|(i, (customer, event))| {
                line(customer, event, history.now.plus(Span::from_millis(i as i64)))
            })
            .collect();
        produce_lines(&broker.bootstrap, "events", &settings, &follow_up, &[]);
        let expected = (change.expected)(&history);
        wait_for(change.name, Duration::from_secs(60), || {
            read_output(&broker.bootstrap, Duration::from_secs(10)).len() >= before + expected.len()
        });
        // Time for anything that should not come: two wall-clock ticks and more.
        std::thread::sleep(Duration::from_secs(2));
        assert!(terminate(service).success());
        let outputs = read_output(&broker.bootstrap, Duration::from_secs(10));
        let new = &outputs[before..];
        assert_eq!(new.len(), expected.len(), "{}: {:?}", change.name, summary(new));
        for (record, expected) in new.iter().zip(&expected) {
            assert!(
                matches(record, expected),
                "{}: expected {expected:?}, got {:?}",
                change.name,
                summary(std::slice::from_ref(record))
            );
        }
    }
}
