//! Shadow runs (`[shadow]`, docs/operations.md "Shadow runs"): `stagestream run` (the
//! real binary) against a real broker (tansu) with a second model beside the live one.
//! The live topic holds exactly what `replay` of the live configuration gives, the
//! shadow topic exactly what `replay` of the shadow's gives (its own `model_version`),
//! the live offsets are committed through the end, and the metrics count the shadow's
//! transitions and inactivity under `model="shadow"`. After a restart the shadow
//! starts from the live snapshot carried into its model.
//!
//! Skipped with a message when tansu is not installed; under CI that is a failure.

mod common;

use std::time::Duration;

use common::http::{get, parse_metrics};
use common::kafka::{
    binary_outputs, committed_if_any, difference, now, partition_ends, produce_lines, read_output,
    read_topic, recent_journeys, replay_by_partition, Fingerprint,
};
use common::service::{start_service_on, terminate, wait_for, write_config};
use common::tansu::{self, free_port, Tansu};
use stagestream::config;
use stagestream::core::Span;

const GROUP: &str = "shadowed";

/// The five-stage preset as a candidate: retention needs a third order, and an order
/// of 100 or more makes an advocate (a property the live model never reads).
fn candidate(preset: &str) -> String {
    let edits = [
        ("version = \"1\"", "version = \"2-candidate\""),
        ("occurrence = { at_least = 2 }", "occurrence = { at_least = 3 }"),
        (
            "[[model.inactivity]]\nname = \"winback_7d\"",
            "[[model.rules]]\nname = \"big_spender\"\nto = \"advocacy\"\nevents = [\"Order Completed\"]\n\
             where = [{ property = \"revenue\", gte = 100 }]\n\n[[model.inactivity]]\nname = \"winback_7d\"",
        ),
    ];
    edits.iter().fold(preset.to_owned(), |text, (from, to)| {
        assert!(text.contains(from), "the preset has {from:?}");
        text.replacen(from, to, 1)
    })
}

fn of_type(outputs: &[Fingerprint], kind: &str) -> usize {
    outputs.iter().filter(|(_, t, _)| t == kind).count()
}

/// The sum of a counter's series whose labels include every one of `labels`.
fn counted(metrics: &std::collections::BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| series.starts_with(&format!("{name}{{")))
        .filter(|(series, _)| labels.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn a_shadow_model_classifies_the_same_events_into_its_own_topic_only() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[
        ("events", 2),
        ("journey-stages", 2),
        ("journey-shadow", 2),
        ("dead-letters", 1),
    ]);
    let shadow_config = dir.path().join("candidate.toml");
    let preset = std::fs::read_to_string(common::repo("config/presets/five-stage.toml")).unwrap();
    std::fs::write(&shadow_config, candidate(&preset)).unwrap();
    let shadow_settings = config::load(&shadow_config).unwrap();
    let extra = format!(
        "[shadow]\nconfig = \"{}\"\ntopic = \"journey-shadow\"\n",
        shadow_config.display()
    );
    let (config, settings) = write_config(dir.path(), "live", &broker.bootstrap, GROUP, &[], &extra);

    let start = now().minus(Span::from_millis(10 * 60_000));
    let mut lines = recent_journeys(0..300, start);
    lines.extend((0..20).map(|i| {
        let at = start.plus(Span::from_millis(i * 1_000));
        format!(
            r#"{{"type":"track","event":"Order Completed","userId":"big-{i}","messageId":"b-{i}","timestamp":"{at}","properties":{{"revenue":{}}}}}"#,
            90 + i
        )
        .into_bytes()
    }));
    produce_lines(&broker.bootstrap, "events", &settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == lines.len()
    });
    assert_eq!(input.len(), lines.len());
    // Every event is from the last ten minutes: nothing comes due while the test runs.
    let live_expected = replay_by_partition(&settings, &input, now());
    let shadow_expected = replay_by_partition(&shadow_settings, &input, now());
    assert_ne!(
        live_expected, shadow_expected,
        "the models disagree on this input"
    );

    let address = format!("127.0.0.1:{}", free_port());
    let service = start_service_on(&config, &dir.path().join("service.log"), &address);
    let read_shadow = |timeout| read_topic(&broker.bootstrap, "journey-shadow", timeout, |_| true);
    wait_for("both topics' outputs", Duration::from_secs(120), || {
        read_output(&broker.bootstrap, Duration::from_secs(30)).len() >= live_expected.len()
            && read_shadow(Duration::from_secs(30)).len() >= shadow_expected.len()
    });
    let ends = partition_ends(&input);
    let ends: Vec<Option<i64>> = (0..2).map(|p| ends.get(&p).copied()).collect();
    let mut metrics = Default::default();
    wait_for("the counters and the commit", Duration::from_secs(60), || {
        metrics = parse_metrics(
            &get(&address, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default(),
        );
        let delivered = counted(
            &metrics,
            "stagestream_produced_messages_total",
            &[r#"type="shadow""#, r#"result="ok""#],
        );
        delivered as usize == shadow_expected.len() && committed_if_any(&broker.bootstrap, GROUP, 2) == ends
    });
    assert!(terminate(service).success());

    let live = binary_outputs(
        &read_output(&broker.bootstrap, Duration::from_secs(30)),
        "stagestream",
    );
    assert!(
        live == live_expected,
        "live: {}",
        difference(&live, &live_expected)
    );
    let shadow_records = read_shadow(Duration::from_secs(30));
    let shadow = binary_outputs(&shadow_records, "stagestream");
    assert!(
        shadow == shadow_expected,
        "shadow: {}",
        difference(&shadow, &shadow_expected)
    );
    assert!(shadow
        .iter()
        .all(|(_, _, data)| data.contains(r#""model_version":"2-candidate""#)));

    let changed = "stagestream.stage.changed.v1";
    let transitions = |model: &str| {
        counted(
            &metrics,
            "stagestream_stage_transitions_total",
            &[&format!(r#"model="{model}""#)],
        ) as usize
    };
    assert_eq!(transitions("shadow"), of_type(&shadow_expected, changed));
    assert_eq!(transitions("live"), of_type(&live_expected, changed));
    let big_spenders = counted(
        &metrics,
        "stagestream_stage_transitions_total",
        &[r#"model="shadow""#, r#"from="none""#, r#"to="advocacy""#],
    );
    assert_eq!(big_spenders, 10.0, "first orders of 100 to 109 enter at advocacy");
}

/// Each customer's stage at the end of `outputs` (the five-stage model only moves
/// forward: the furthest stage a transition reached).
fn final_stages(outputs: &[Fingerprint]) -> std::collections::BTreeMap<String, String> {
    let order = ["awareness", "consideration", "purchase", "retention", "advocacy"];
    let rank = |stage: &str| order.iter().position(|s| *s == stage).unwrap();
    let mut stages = std::collections::BTreeMap::new();
    for (_, _, data) in outputs
        .iter()
        .filter(|(_, kind, _)| kind == "stagestream.stage.changed.v1")
    {
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        let to = data["to_stage"].as_str().unwrap().to_owned();
        let stage = stages
            .entry(data["customer_id"].as_str().unwrap().to_owned())
            .or_insert_with(|| to.clone());
        if rank(&to) > rank(stage) {
            *stage = to;
        }
    }
    stages
}

#[test]
fn after_a_restart_the_shadow_starts_from_the_live_snapshot_carried_into_its_model() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[
        ("events", 1),
        ("journey-stages", 1),
        ("journey-shadow", 1),
        ("dead-letters", 1),
    ]);
    // The candidate has no retention stage; its customers go back to purchase.
    let preset = std::fs::read_to_string(common::repo("config/presets/five-stage.toml")).unwrap();
    let edits = [
        (r#""purchase", "retention", "advocacy""#, r#""purchase", "advocacy""#),
        (
            "[[model.rules]]\nname = \"retention\"\nto = \"retention\"\nevents = [\"Order Completed\"]\noccurrence = { at_least = 2 }\n",
            "[[model.migrate]]\nfrom = \"retention\"\nto = \"purchase\"\n",
        ),
        (r#"from = ["purchase", "retention"]"#, r#"from = ["purchase"]"#),
        ("version = \"1\"", "version = \"no-retention\""),
    ];
    let candidate = edits.iter().fold(preset, |text, (from, to)| {
        assert!(text.contains(from), "the preset has {from:?}");
        text.replace(from, to)
    });
    let shadow_config = dir.path().join("candidate.toml");
    std::fs::write(&shadow_config, candidate).unwrap();
    let extra = format!(
        "[shadow]\nconfig = \"{}\"\ntopic = \"journey-shadow\"\n\n[snapshot]\ndir = \"{}\"\ninterval = \"300ms\"\n",
        shadow_config.display(),
        dir.path().join("snapshots").display()
    );
    let (config, settings) = write_config(dir.path(), "live", &broker.bootstrap, GROUP, &[], &extra);
    let lines = recent_journeys(0..200, now().minus(Span::from_millis(10 * 60_000)));
    produce_lines(&broker.bootstrap, "events", &settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == lines.len()
    });
    let live_expected = replay_by_partition(&settings, &input, now());
    let shadow_expected = replay_by_partition(&config::load(&shadow_config).unwrap(), &input, now());
    let log = dir.path().join("service.log");
    let read_shadow = || {
        read_topic(
            &broker.bootstrap,
            "journey-shadow",
            Duration::from_secs(30),
            |_| true,
        )
    };
    let service = start_service_on(&config, &log, "127.0.0.1:0");
    wait_for("both topics' outputs", Duration::from_secs(120), || {
        read_output(&broker.bootstrap, Duration::from_secs(30)).len() >= live_expected.len()
            && read_shadow().len() >= shadow_expected.len()
    });
    assert!(terminate(service).success());
    assert_eq!(read_shadow().len(), shadow_expected.len());

    let service = start_service_on(&config, &log, "127.0.0.1:0");
    let in_retention: Vec<String> = final_stages(&live_expected)
        .into_iter()
        .filter(|(_, stage)| stage == "retention")
        .map(|(customer, _)| customer)
        .collect();
    assert!(!in_retention.is_empty());
    wait_for("the shadow's carried-over state", Duration::from_secs(60), || {
        read_shadow().len() >= shadow_expected.len() + in_retention.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(terminate(service).success());
    let live = read_output(&broker.bootstrap, Duration::from_secs(30));
    assert_eq!(live.len(), live_expected.len(), "the live topic got nothing new");
    let shadow = read_shadow();
    let migrated: Vec<serde_json::Value> = shadow[shadow_expected.len()..]
        .iter()
        .map(|record| serde_json::from_slice(&record.value).unwrap())
        .collect();
    let mut customers: Vec<String> = migrated
        .iter()
        .map(|data| {
            assert_eq!(data["from_stage"], "retention");
            assert_eq!(data["to_stage"], "purchase");
            assert_eq!(data["rule"], "model-migration");
            assert_eq!(data["model_version"], "no-retention");
            data["customer_id"].as_str().unwrap().to_owned()
        })
        .collect();
    customers.sort();
    assert_eq!(customers, in_retention);
}
