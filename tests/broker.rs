//! `stagestream run`, the real binary, against a real Kafka-protocol broker process
//! (tansu) on loopback: the output equals replay, the dead-letter topic gets every
//! invalid message, SIGTERM stops cleanly with offsets committed, and a broker killed
//! and restarted mid-run loses nothing and re-orders nothing; librdkafka's own log lines
//! and a missing output topic reach the service's log.
//!
//! Skipped with a message when tansu is not installed; under CI that is a failure.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use common::kafka::{
    assert_between, binary_outputs, committed, difference, generated_lines, now, produce_lines, read_output,
    read_topic, recent_journeys, replay_by_partition, Fingerprint, Record,
};
use common::service::{start_service, start_service_with, terminate, wait_for, write_config};
use common::tansu::{self, Tansu};
use stagestream::config::Settings;
use stagestream::core::{EventTime, Span};
use stagestream::decode::decode;

const DAY: i64 = 86_400_000;
const GROUP: &str = "stagestream-e2e";

/// What the service wrote, read back after it stopped.
struct Stopped {
    output: Vec<Record>,
    /// `output` as CloudEvents, checked against the Kafka binding, sorted.
    actual: Vec<Fingerprint>,
    /// The wall clock when the service had exited: nothing due later can be in `output`.
    at: EventTime,
}

/// Waits (up to `timeout`) until the output topic holds `count` records, stops the
/// service with SIGTERM (asserting a clean exit), then reads the output topic back.
fn stop_after_outputs(broker: &Tansu, service: Child, count: usize, timeout: Duration) -> Stopped {
    let read_all = |timeout| read_output(&broker.bootstrap, timeout);
    wait_for("the outputs", timeout, || {
        read_all(Duration::from_secs(30)).len() >= count
    });
    let status = terminate(service);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let at = now();
    let output = read_all(Duration::from_secs(60));
    let actual = binary_outputs(&output, "stagestream");
    Stopped { output, actual, at }
}

#[test]
fn output_equals_replay_dead_letters_are_complete_and_sigterm_commits() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let (config, settings) = write_config(dir.path(), "stagestream", &broker.bootstrap, GROUP, &[], "");

    // A few hundred thousand events: two months of history ending now, a backlog.
    let lines = generated_lines(8_000, 60, now().minus(Span::from_millis(60 * DAY)), 11);
    assert!(lines.len() > 200_000, "{} lines", lines.len());
    produce_lines(&broker.bootstrap, "events", &settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(120), |r| {
        r.len() == lines.len()
    });
    assert_eq!(input.len(), lines.len());

    let before = now().minus(settings.live.firing_delay);
    let at_least = replay_by_partition(&settings, &input, before);
    let service = start_service(&config, &dir.path().join("stagestream.log"));
    let stopped = stop_after_outputs(&broker, service, at_least.len(), Duration::from_secs(180));
    let at_most = replay_by_partition(&settings, &input, stopped.at);
    assert_between(&stopped.actual, &at_least, &at_most);

    let invalid = input
        .iter()
        .filter(|r| decode(&r.value, &settings.model).is_err())
        .count();
    let dead = read_topic(&broker.bootstrap, "dead-letters", Duration::from_secs(60), |_| {
        true
    });
    assert_eq!(dead.len(), invalid, "one dead letter per invalid message");
    assert!(dead.iter().all(|d| d.header("__connect.errors.reason").is_some()));

    // SIGTERM committed everything: the group's offsets are at each partition's end.
    let ends = common::kafka::partition_ends(&input);
    assert_eq!(
        committed(&broker.bootstrap, GROUP, 4),
        ends.values().copied().collect::<Vec<_>>()
    );
}

#[test]
fn an_offline_batch_three_days_behind_the_partition_is_applied_not_dead_lettered() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    // One partition: the phone's batch is behind every other customer's events.
    broker.create_topics(&[("events", 1), ("journey-stages", 1), ("dead-letters", 1)]);
    let (config, settings) = write_config(dir.path(), "stagestream", &broker.bootstrap, GROUP, &[], "");
    let start = now();
    let at = |ago_minutes: i64| start.minus(Span::from_millis(ago_minutes * 60_000));
    let line = |customer: &str, event: &str, id: &str, at: EventTime| {
        format!(r#"{{"type":"track","event":"{event}","userId":"{customer}","messageId":"{id}","timestamp":"{at}"}}"#)
            .into_bytes()
    };
    // The phone's first visit twelve days ago; then 3,000 other customers over the last
    // four days (their watermark passes the phone's seven days); then the phone's 40
    // queued events from three days ago, the 21st and 40th an order.
    let mut lines = vec![line("phone", "Product Viewed", "p-0", at(12 * 1440))];
    lines.extend((0..3_000).map(|i| {
        let time = at(4 * 1440).plus(Span::from_millis(i * 100_000));
        line(&format!("other-{i}"), "Product Viewed", &format!("o-{i}"), time)
    }));
    lines.extend((0..40).map(|k| {
        let event = if k == 20 || k == 39 {
            "Order Completed"
        } else {
            "Product Viewed"
        };
        let time = at(3 * 1440 + 7 * 60).plus(Span::from_millis(k * 600_000));
        line("phone", event, &format!("p-{}", k + 1), time)
    }));
    produce_lines(&broker.bootstrap, "events", &settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == lines.len()
    });
    assert_eq!(input.len(), lines.len());

    // Nothing comes due while the test runs: the output is a function of the events.
    let expected = replay_by_partition(&settings, &input, now());
    let service = start_service(&config, &dir.path().join("stagestream.log"));
    let stopped = stop_after_outputs(&broker, service, expected.len(), Duration::from_secs(120));
    assert!(
        stopped.actual == expected,
        "{}",
        difference(&stopped.actual, &expected)
    );
    let phone: Vec<&str> = stopped
        .actual
        .iter()
        .filter(|(_, _, data)| data.starts_with(r#"{"customer_id":"phone""#))
        .map(|(_, kind, _)| kind.as_str())
        .collect();
    assert_eq!(
        phone
            .iter()
            .filter(|kind| kind.ends_with("reactivated.v1"))
            .count(),
        1,
        "the batch ends the gap the others' watermark fired: {phone:?}"
    );
    assert_eq!(
        phone.len(),
        5,
        "entry, win-back, return, purchase, retention: {phone:?}"
    );
    let dead = read_topic(&broker.bootstrap, "dead-letters", Duration::from_secs(20), |_| {
        true
    });
    assert!(
        dead.is_empty(),
        "no event of the batch is late: {} dead letters",
        dead.len()
    );
}

#[test]
fn a_broker_killed_and_restarted_mid_run_loses_and_reorders_nothing() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start(binary, "sqlite://tansu.db", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let (config, settings) = write_config(dir.path(), "stagestream", &broker.bootstrap, GROUP, &[], "");
    let start = now().minus(Span::from_millis(10 * 60_000));
    // tansu's SQLite storage is slow (hundreds of records per second): keep this small.
    let first = recent_journeys(0..400, start);
    let second = recent_journeys(200..600, start.plus(Span::from_millis(200_000)));

    produce_lines(&broker.bootstrap, "events", &settings, &first, &[]);
    let service = start_service(&config, &dir.path().join("stagestream.log"));
    let first_input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == first.len()
    });
    let first_expected = replay_by_partition(&settings, &first_input, now());
    wait_for("the first half's outputs", Duration::from_secs(120), || {
        read_output(&broker.bootstrap, Duration::from_secs(30)).len() >= first_expected.len()
    });

    broker.kill_and_restart(Duration::from_secs(2));
    produce_lines(&broker.bootstrap, "events", &settings, &second, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(120), |r| {
        r.len() == first.len() + second.len()
    });
    assert_eq!(
        input.len(),
        first.len() + second.len(),
        "the broker kept its data"
    );
    let expected = replay_by_partition(&settings, &input, now());
    let Stopped { output, actual, .. } =
        stop_after_outputs(&broker, service, expected.len(), Duration::from_secs(180));
    assert_eq!(actual.len(), expected.len(), "{}", difference(&actual, &expected));
    assert!(actual == expected, "{}", difference(&actual, &expected));
    // Per customer, outputs arrive in the order replay emits them.
    let mut by_customer: BTreeMap<Vec<u8>, Vec<(i32, i64, String)>> = BTreeMap::new();
    for record in &output {
        let id = record.header("ce_id").unwrap().to_owned();
        by_customer.entry(record.key.clone().unwrap()).or_default().push((
            record.partition,
            record.offset,
            id,
        ));
    }
    let replay_order = replay_ids_in_order(&settings, &input);
    for (customer, mut records) in by_customer {
        records.sort();
        let ids: Vec<&str> = records.iter().map(|(_, _, id)| id.as_str()).collect();
        let expected_ids: Vec<&str> = replay_order
            .iter()
            .filter(|(c, _)| c.as_bytes() == customer.as_slice())
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(
            ids,
            expected_ids,
            "order for {}",
            String::from_utf8_lossy(&customer)
        );
    }
}

/// `(customer, ce_id)` in replay's emission order.
fn replay_ids_in_order(settings: &Settings, input: &[common::kafka::Record]) -> Vec<(String, String)> {
    let mut sorted: Vec<_> = input.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut order = Vec::new();
    for partition in 0..4 {
        let mut lines = Vec::new();
        for record in sorted.iter().filter(|r| r.partition == partition) {
            lines.extend_from_slice(&record.value);
            lines.push(b'\n');
        }
        let mut out = Vec::new();
        stagestream::replay::replay(settings, std::io::Cursor::new(lines), &mut out, None, Some(now()))
            .unwrap();
        for line in String::from_utf8(out).unwrap().lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            order.push((
                json["subject"].as_str().unwrap().to_owned(),
                json["id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    order
}

#[test]
fn a_broker_down_at_start_is_retried_until_it_comes_up() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = tansu::free_port();
    let (config, settings) = write_config(
        dir.path(),
        "stagestream",
        &format!("127.0.0.1:{port}"),
        GROUP,
        &[],
        "",
    );
    let service = start_service(&config, &dir.path().join("stagestream.log"));
    let log = dir.path().join("stagestream.log");
    wait_for("the retry log line", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("Kafka cluster unreachable") && text.contains("retry_in")
    });

    let broker = Tansu::start_on(port, binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let lines = recent_journeys(0..300, now().minus(Span::from_millis(5 * 60_000)));
    produce_lines(&broker.bootstrap, "events", &settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == lines.len()
    });
    let expected = replay_by_partition(&settings, &input, now());
    let Stopped { actual, .. } =
        stop_after_outputs(&broker, service, expected.len(), Duration::from_secs(120));
    assert!(actual == expected, "{}", difference(&actual, &expected));
}

#[test]
fn librdkafka_debug_lines_and_a_missing_output_topic_reach_the_log() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    // No output topic: the service says so at start, before any output is due.
    broker.create_topics(&[("events", 1)]);
    let (config, _) = write_config(
        dir.path(),
        "stagestream",
        &broker.bootstrap,
        GROUP,
        &[("debug", "cgrp")],
        "",
    );
    let log = dir.path().join("stagestream.log");
    let service = start_service_with(&config, &log, "127.0.0.1:0", "info,stagestream::pipeline=debug");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    let librdkafka_debug = |line: &serde_json::Value| {
        line["level"] == "DEBUG"
            && line["fields"]["message"] == "librdkafka"
            && line["fields"]["client"] == "consumer"
            && line["fields"]["facility"].is_string()
            && line["fields"]["text"].is_string()
    };
    let missing_output = |line: &serde_json::Value| {
        line["level"] == "WARN"
            && line["fields"]["topic"] == "journey-stages"
            && line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("output topic is not available"))
    };
    wait_for(
        "librdkafka's consumer-group debug lines",
        Duration::from_secs(60),
        || lines().iter().any(librdkafka_debug),
    );
    wait_for(
        "the missing output topic warning",
        Duration::from_secs(30),
        || lines().iter().any(missing_output),
    );
    let status = terminate(service);
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
