//! `stagestream loadgen` and `scripts/bench-e2e.sh` against a real broker (tansu): the
//! stream produced is the generator's, keyed by customer, capped by `--events` and
//! `--duration`, paced by `--rate`; the benchmark scripts run end to end and print
//! their figures.
//!
//! Skipped with a message when tansu is not installed; under CI that is a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{generated_lines, read_topic, Record};
use common::service::write_config;
use common::tansu::{self, Tansu};
use stagestream::core::EventTime;
use stagestream::decode::decode;

const START: &str = "2026-01-01T00:00:00Z";

fn loadgen(config: &Path, args: &[&str]) -> String {
    let output = common::run(
        common::stagestream()
            .args(["loadgen", "--config"])
            .arg(config)
            .args(args),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{}: {stderr}", output.status);
    stderr
}

fn events_topic(broker: &Tansu, expected: usize) -> Vec<Record> {
    read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |records| {
        records.len() >= expected
    })
}

#[test]
fn loadgen_produces_the_generated_stream_keyed_by_customer() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4)]);
    let (config, settings) = write_config(dir.path(), "stagestream", &broker.bootstrap, "loadgen", &[], "");

    let stderr = loadgen(
        &config,
        &[
            "--customers",
            "300",
            "--days",
            "30",
            "--start",
            START,
            "--seed",
            "3",
            "--events",
            "2000",
        ],
    );
    assert!(stderr.contains("2000 events"), "{stderr}");
    // The idempotent producer's id was seen to arrive (librdkafka's statistics) before
    // the first record, rather than waited for until the bound ran out.
    assert!(!stderr.contains("no producer id"), "{stderr}");
    let records = events_topic(&broker, 2000);
    assert_eq!(records.len(), 2000, "--events caps the stream");

    // The first 2000 lines of the same generator settings, nothing else.
    let start = EventTime::parse_rfc3339(START).unwrap();
    let mut expected: Vec<Vec<u8>> = generated_lines(300, 30, start, 3)
        .into_iter()
        .take(2000)
        .collect();
    let mut produced: Vec<Vec<u8>> = records.iter().map(|r| r.value.clone()).collect();
    expected.sort();
    produced.sort();
    assert!(produced == expected, "the records are the generated lines");

    // Keyed by the customer the payload names; each customer on one partition.
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut unkeyed = 0;
    for record in &records {
        match decode(&record.value, &settings.model) {
            Ok(event) => {
                assert_eq!(record.key.as_deref(), Some(event.customer().as_bytes()));
                partitions
                    .entry(event.customer().to_owned())
                    .or_default()
                    .insert(record.partition);
            }
            Err(_) => {
                assert_eq!(record.key, None, "an invalid line goes unkeyed");
                unkeyed += 1;
            }
        }
    }
    assert!(partitions.len() > 100, "{} customers", partitions.len());
    assert!(partitions.values().all(|set| set.len() == 1));
    assert!(
        stderr.contains(&format!("({unkeyed} invalid, unkeyed)")),
        "{stderr}"
    );
}

#[test]
fn loadgen_paces_to_the_rate_and_stops_after_the_duration() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4)]);
    let (config, _) = write_config(dir.path(), "stagestream", &broker.bootstrap, "loadgen", &[], "");

    // 1000 events at 2000/s cannot take less than (1000 - 1) / 2000 s: the timestamps
    // the producer gives the records span at least that (minus 1 ms of rounding).
    let started = Instant::now();
    loadgen(
        &config,
        &["--customers", "200", "--rate", "2000", "--events", "1000"],
    );
    assert!(started.elapsed() >= Duration::from_millis(499));
    let records = events_topic(&broker, 1000);
    assert_eq!(records.len(), 1000);
    let times: Vec<i64> = records.iter().map(|r| r.timestamp.unwrap()).collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    assert!(span >= 498, "1000 records at 2000/s produced within {span} ms");

    // At 500/s for one second: no more than 501 events, whatever the machine.
    let stderr = loadgen(
        &config,
        &[
            "--customers",
            "200",
            "--seed",
            "2",
            "--rate",
            "500",
            "--duration",
            "1s",
        ],
    );
    let sent: u64 = stderr
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!((1..=501).contains(&sent), "{sent} events in 1 s at 500/s");
    assert_eq!(
        events_topic(&broker, 1000 + sent as usize).len(),
        1000 + sent as usize
    );

    // A bad rate is a usage error, before anything is produced.
    let output = common::run(
        common::stagestream()
            .args(["loadgen", "--config"])
            .arg(&config)
            .args(["--rate", "0"]),
    );
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn the_end_to_end_benchmark_script_runs_and_reports() {
    if tansu::binary().is_none() {
        return;
    }
    let output = Command::new("bash")
        .arg(common::repo("scripts/bench-e2e.sh"))
        .arg("20000")
        .env("LATENCY_SECONDS", "3")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let figures: BTreeMap<&str, f64> = stdout
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter_map(|(key, value)| Some((key, value.parse().ok()?)))
        .collect();
    for key in [
        "bare_consumer_rate",
        "stagestream_run_rate",
        "ratio",
        "offered_rate",
        "p50_ms",
        "p99_ms",
    ] {
        assert!(
            figures.get(key).is_some_and(|&v| v > 0.0),
            "{key} in\n{stdout}\n{stderr}"
        );
    }
    assert!(figures["transitions"] >= 10.0, "{stdout}");
    assert!(figures["p50_ms"] <= figures["p99_ms"]);
}

#[test]
fn the_alternating_benchmark_script_runs_each_variant_in_each_round() {
    if tansu::binary().is_none() {
        return;
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_stagestream"));
    let plain = format!("plain||{}|", binary.display());
    let small_queue = format!(
        "small-queue|MALLOC_CONF=thp:default|{}|\"queued.max.messages.kbytes\" = \"8192\"",
        binary.display()
    );
    let output = Command::new("bash")
        .arg(common::repo("scripts/bench-ab.sh"))
        .args(["20000", "2", &plain, &small_queue])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let runs: Vec<BTreeMap<&str, &str>> = stdout
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect()
        })
        .collect();
    let order: Vec<(&str, &str)> = runs.iter().map(|run| (run["round"], run["variant"])).collect();
    assert_eq!(
        order,
        [
            ("1", "plain"),
            ("1", "small-queue"),
            ("2", "plain"),
            ("2", "small-queue")
        ],
        "{stdout}\n{stderr}"
    );
    for run in &runs {
        for key in ["rate", "cpu_us_per_event", "peak_rss_kb"] {
            let value: f64 = run[key].parse().unwrap_or_else(|_| panic!("{key} in {stdout}"));
            assert!(value > 0.0, "{key} in {stdout}");
        }
    }
}
