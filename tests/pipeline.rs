//! The live service on librdkafka's in-process mock cluster: the fast inner loop.
//! (The same contracts against a real broker process: `tests/broker.rs`.)
//!
//! The mock implements groups, idempotent producers and end-of-partition, which is all
//! these tests rely on; for transactions it only exercises the API flow (it has no
//! isolation and does not store transactional offsets).

mod common;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use common::kafka::{
    assert_between, binary_outputs, difference, generated_lines, now, produce_lines, read_topic,
    replay_by_partition, Fingerprint, Record,
};
use stagestream::config::{self, Settings};
use stagestream::core::Span;
use stagestream::decode::decode;
use stagestream::pipeline::{self, Control, PipelineError};

const DAY: i64 = 86_400_000;

fn settings(bootstrap: &str, group: &str) -> Settings {
    let mut settings = config::load(&common::repo("config/presets/five-stage.toml")).unwrap();
    let kafka = &mut settings.kafka;
    kafka.brokers = Some(bootstrap.into());
    kafka.group_id = Some(group.into());
    kafka.consumer.set("fetch.wait.max.ms", "5");
    settings.dlq.topic = Some("dead-letters".into());
    settings
}

fn cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 4, 1).unwrap();
    cluster.create_topic("journey-stages", 4, 1).unwrap();
    cluster.create_topic("dead-letters", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

fn start(settings: &Settings) -> (Arc<Control>, JoinHandle<Result<(), PipelineError>>) {
    let control = Arc::new(Control::default());
    let handle = {
        let (settings, control) = (settings.clone(), control.clone());
        std::thread::spawn(move || pipeline::run(&settings, control))
    };
    (control, handle)
}

/// Produces `lines` to `events`, reads them back, and returns them with what replay
/// makes of them (every deadline fired by now).
fn produce_and_replay(
    bootstrap: &str,
    settings: &Settings,
    lines: &[Vec<u8>],
) -> (Vec<Record>, Vec<Fingerprint>) {
    produce_lines(bootstrap, "events", settings, lines, &[]);
    let input = read_topic(bootstrap, "events", Duration::from_secs(30), |r| {
        r.len() == lines.len()
    });
    let expected = replay_by_partition(settings, &input, now());
    (input, expected)
}

/// Starts the service and waits until it has delivered `outputs` outputs.
fn start_until_delivered(
    settings: &Settings,
    outputs: usize,
) -> (Arc<Control>, JoinHandle<Result<(), PipelineError>>) {
    let (control, service) = start(settings);
    wait_until("every output", Duration::from_secs(60), || {
        control.delivered() >= outputs as u64
    });
    (control, service)
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn caught_up_output_equals_replay_per_partition_and_invalid_input_is_dead_lettered() {
    let (_cluster, bootstrap) = cluster();
    let settings = settings(&bootstrap, "equals-replay");
    let started_at = now();
    // A month of history ending now: a backlog the service must catch up on without
    // firing win-backs that later events in the backlog would have prevented.
    let mut lines = generated_lines(1_000, 30, started_at.minus(Span::from_millis(30 * DAY)), 7);
    let future = started_at.plus(Span::from_millis(2 * 3_600_000));
    let future_line = format!(
        r#"{{"type":"track","event":"Product Viewed","userId":"time-traveller","timestamp":"{future}"}}"#
    );
    lines.insert(lines.len() / 2, future_line.into_bytes());
    produce_lines(
        &bootstrap,
        "events",
        &settings,
        &lines,
        &[("origin", "pipeline-test")],
    );
    let input = read_topic(&bootstrap, "events", Duration::from_secs(30), |r| {
        r.len() == lines.len()
    });
    assert_eq!(input.len(), lines.len());

    let before = now().minus(settings.live.firing_delay);
    let (control, service) = start(&settings);
    wait_until(
        "the service to consume everything",
        Duration::from_secs(60),
        || control.is_ready() && control.consumed() == lines.len() as u64,
    );
    // Everything due before the start must come out; nothing not due by the end may.
    let on_time: Vec<Record> = input
        .iter()
        .filter(|r| {
            decode(&r.value, &settings.model).map_or(true, |e| e.into_event().unwrap().timestamp < future)
        })
        .cloned()
        .collect();
    let at_least = replay_by_partition(&settings, &on_time, before);
    wait_until("the outputs due at the start", Duration::from_secs(60), || {
        control.delivered() >= at_least.len() as u64
    });
    let output = read_topic(&bootstrap, "journey-stages", Duration::from_secs(30), |r| {
        r.len() as u64 >= control.delivered()
    });
    let at_most = replay_by_partition(&settings, &on_time, now());
    control.stop();
    service.join().unwrap().expect("clean stop");

    let actual = binary_outputs(&output, "stagestream");
    assert_between(&actual, &at_least, &at_most);
    assert!(
        actual.len() > lines.len() / 10,
        "a realistic stream moves customers"
    );

    // Every invalid message, and the future-stamped one, in the dead-letter topic.
    let dead = read_topic(&bootstrap, "dead-letters", Duration::from_secs(30), |r| {
        r.len() as u64 >= control.dead_lettered()
    });
    let invalid: Vec<&Record> = input
        .iter()
        .filter(|r| {
            decode(&r.value, &settings.model).map_or(true, |e| e.into_event().unwrap().timestamp >= future)
        })
        .collect();
    assert!(invalid.len() > 5, "the generator makes invalid lines");
    assert_eq!(dead.len(), invalid.len());
    for original in invalid {
        let letter = dead
            .iter()
            .find(|d| {
                d.header("__connect.errors.offset") == Some(&original.offset.to_string())
                    && d.header("__connect.errors.partition") == Some(&original.partition.to_string())
            })
            .unwrap_or_else(|| panic!("no dead letter for {}/{}", original.partition, original.offset));
        assert_eq!(letter.value, original.value);
        assert_eq!(letter.key, original.key);
        assert_eq!(letter.header("__connect.errors.topic"), Some("events"));
        assert_eq!(
            letter.header("origin"),
            Some("pipeline-test"),
            "original headers kept"
        );
        let expected_reason = match decode(&original.value, &settings.model) {
            Err(error) => error.reason().as_str(),
            Ok(_) => "future_timestamp",
        };
        assert_eq!(letter.header("__connect.errors.reason"), Some(expected_reason));
        assert!(!letter
            .header("__connect.errors.exception.message")
            .unwrap()
            .is_empty());
    }
}

#[test]
fn inactivity_fires_by_the_wall_clock_within_a_second_on_a_quiet_partition() {
    let (_cluster, bootstrap) = cluster();
    let mut settings = settings(&bootstrap, "quiet");
    settings.live.firing_delay = Span::from_millis(0);
    let seven_days = settings.model.thresholds()[0].after;
    // Caught up first (joining the group takes seconds), so the deadline below falls
    // while the partition is quiet and at its end, not while it is being assigned.
    let (control, service) = start(&settings);
    wait_until("the service to be caught up", Duration::from_secs(30), || {
        control.is_ready()
    });
    // The customer's only event puts their 7-day deadline 2 s from now.
    let deadline = now().plus(Span::from_millis(2_000));
    let last_seen = deadline.minus(seven_days);
    let line =
        format!(r#"{{"type":"page","name":"Home","anonymousId":"quiet-1","timestamp":"{last_seen}"}}"#);
    produce_lines(&bootstrap, "events", &settings, &[line.into_bytes()], &[]);
    wait_until("the win-back", Duration::from_secs(30), || {
        control.delivered() >= 2
    });
    let output = read_topic(&bootstrap, "journey-stages", Duration::from_secs(10), |r| {
        r.len() >= 2
    });
    control.stop();
    service.join().unwrap().expect("clean stop");

    let inactive = output
        .iter()
        .find(|r| r.header("ce_type") == Some("stagestream.customer.inactive.v1"))
        .expect("an inactivity event");
    assert_eq!(inactive.header("ce_time"), Some(deadline.to_string().as_str()));
    let late_by = inactive.timestamp.expect("CreateTime") - deadline.as_millis();
    assert!(
        (0..1_000).contains(&late_by),
        "fired {late_by} ms after its deadline"
    );
}

#[test]
fn structured_mode_writes_the_same_lines_replay_prints() {
    let (_cluster, bootstrap) = cluster();
    let mut settings = settings(&bootstrap, "structured");
    settings.output.mode = stagestream::kafka::OutputMode::Structured;
    // History that ended over a fortnight ago: every deadline is long past.
    let lines = generated_lines(200, 20, now().minus(Span::from_millis(40 * DAY)), 3);
    let (_, expected) = produce_and_replay(&bootstrap, &settings, &lines);
    let (control, service) = start_until_delivered(&settings, expected.len());
    let output = read_topic(&bootstrap, "journey-stages", Duration::from_secs(30), |r| {
        r.len() >= expected.len()
    });
    control.stop();
    service.join().unwrap().expect("clean stop");
    let mut actual: Vec<_> = output
        .iter()
        .map(|record| {
            assert_eq!(
                record.header("content-type"),
                Some("application/cloudevents+json; charset=UTF-8")
            );
            let line = String::from_utf8(record.value.clone()).unwrap();
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(record.key.as_deref(), json["subject"].as_str().map(str::as_bytes));
            let data_start = line.find(",\"data\":").unwrap() + 8;
            (
                json["id"].as_str().unwrap().to_owned(),
                json["type"].as_str().unwrap().to_owned(),
                line[data_start..line.len() - 1].to_owned(),
            )
        })
        .collect();
    actual.sort();
    assert_eq!(actual, expected, "{}", difference(&actual, &expected));
}

/// Exactly-once on the mock cluster exercises the transactional API flow only (the
/// mock accepts transactions without isolation and does not store their offsets):
/// init, outputs and offsets committed in transactions, the output equals replay.
#[test]
fn exactly_once_commits_outputs_and_offsets_in_transactions() {
    let (_cluster, bootstrap) = cluster();
    let mut settings = settings(&bootstrap, "exactly-once");
    settings.delivery.mode = stagestream::config::DeliveryMode::ExactlyOnce;
    settings.delivery.transactional_id = Some("stagestream-test-0".into());
    let snapshots = tempfile::tempdir().unwrap();
    settings.snapshot = Some(stagestream::config::SnapshotSettings {
        dir: snapshots.path().to_owned(),
        interval: Span::from_millis(200),
        keep: 2,
    });
    let lines = generated_lines(300, 20, now().minus(Span::from_millis(40 * DAY)), 5);
    let (input, expected) = produce_and_replay(&bootstrap, &settings, &lines);
    let (control, service) = start_until_delivered(&settings, expected.len());
    control.stop();
    service.join().unwrap().expect("clean stop");
    let output = read_topic(&bootstrap, "journey-stages", Duration::from_secs(30), |r| {
        r.len() >= expected.len()
    });
    let actual = binary_outputs(&output, "stagestream");
    assert!(actual == expected, "{}", difference(&actual, &expected));
    let ends = common::kafka::partition_ends(&input);
    // The mock does not store transactional offsets, so the proof that every
    // transaction committed is the final snapshots: one is written only up to an offset
    // a committed transaction covers, and each sits at its partition's end.
    let store = stagestream::snapshot::DirectoryStore::new(snapshots.path(), 2);
    for (&partition, &end) in &ends {
        use stagestream::snapshot::SnapshotStore;
        assert_eq!(
            store.list("events", partition).unwrap().first(),
            Some(&end),
            "partition {partition}"
        );
    }
    assert!(control.snapshots_written() >= 4, "final snapshots");
}
