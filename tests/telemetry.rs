//! The service's telemetry, checked with the tools operators use: `stagestream run`
//! (the real binary) against tansu, scraped over HTTP; every required metric exists
//! and moves when what it counts happens; `promtool check metrics` accepts a live
//! scrape; a real Prometheus server (Debian's package) scrapes the instance, loads the
//! alert rules from `deploy/`, and answers queries over its HTTP API. Health endpoints
//! are checked with and without a broker.
//!
//! tansu, promtool and prometheus are required under CI (`CI` set) and skipped with a
//! message otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{encode, get, parse_metrics};
use common::kafka::{now, produce_lines};
use common::service::{start_service_on, terminate, wait_for, write_config};
use common::tansu::{self, free_port, Tansu};
use stagestream::core::{EventTime, Span};

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

/// A Debian tool by name, if installed; under CI a missing one is a failure.
fn tool(name: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} not found: apt-get install prometheus"
    );
    eprintln!("SKIPPED: {name} not installed (apt-get install prometheus)");
    None
}

fn scrape(address: &str) -> (String, BTreeMap<String, f64>) {
    let (status, body) = get(address, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(status, 200);
    let metrics = parse_metrics(&body);
    (body, metrics)
}

/// One series' value, 0 when absent (a counter not yet created).
fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

/// A track event of `customer` at `at`, with `message_id`.
fn track(customer: &str, event: &str, at: EventTime, message_id: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"track","event":"{event}","userId":"{customer}","messageId":"{message_id}","timestamp":"{at}"}}"#
    )
    .into_bytes()
}

/// The scripted input and what each line must move.
fn scripted_input(now: EventTime) -> Vec<Vec<u8>> {
    let ago = |millis: i64| now.minus(Span::from_millis(millis));
    vec![
        // ok: first activity (none -> awareness), then awareness -> consideration after
        // 30 minutes in awareness (time in stage).
        track("ana", "Page Viewed", ago(60 * MINUTE), "a1"),
        track("ana", "Product Viewed", ago(30 * MINUTE), "a2"),
        // duplicate: the same messageId again.
        track("ana", "Product Viewed", ago(30 * MINUTE), "a2"),
        // ignored: identify is valid but not activity.
        format!(
            r#"{{"type":"identify","userId":"ana","traits":{{}},"timestamp":"{}"}}"#,
            ago(29 * MINUTE)
        )
        .into_bytes(),
        // invalid (dead-lettered): not JSON. The parser's message quotes the bytes around
        // the error, customer id included: it must not reach the log.
        br#"{"userId":"carla",tru}"#.to_vec(),
        // ok: a 20-day gap seen when the next event arrives fires both win-backs, then
        // ben is back (a reactivation).
        track("ben", "Page Viewed", ago(20 * DAY), "b1"),
        track("ben", "Page Viewed", ago(10 * MINUTE), "b2"),
        // late (dead-lettered): hours behind ben's own last activity.
        track("ben", "Page Viewed", ago(3 * 60 * MINUTE), "b3"),
    ]
}

#[test]
fn every_required_metric_exists_and_moves_and_prometheus_scrapes_it() {
    let Some(binary) = tansu::binary() else { return };
    let (Some(promtool), Some(prometheus)) = (tool("promtool"), tool("prometheus")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 2), ("journey-stages", 2), ("dead-letters", 1)]);
    let snapshots = dir.path().join("snapshots");
    let (config, settings) = write_config(
        dir.path(),
        "stagestream",
        &broker.bootstrap,
        "telemetry",
        &[
            ("statistics.interval.ms", "500"),
            ("auto.commit.interval.ms", "500"),
        ],
        &format!(
            "[snapshot]\ndir = \"{}\"\ninterval = \"1s\"\n",
            snapshots.display()
        ),
    );
    let http = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("stagestream.log");
    let service = start_service_on(&config, &log, &http);
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Ready once the (empty) partitions are assigned and caught up.
    wait_for("/readyz 200", Duration::from_secs(60), || {
        get(&http, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let (_, before) = scrape(&http);
    for series in [
        "stagestream_assigned_partitions",
        "stagestream_ready",
        "stagestream_build_info{version=\"0.1.0\"}",
    ] {
        assert!(before.contains_key(series), "{series} missing");
    }
    assert_eq!(value(&before, "stagestream_assigned_partitions"), 2.0);
    assert_eq!(value(&before, "stagestream_ready"), 1.0);
    assert!(value(&before, "stagestream_rebalances_total{kind=\"assign\"}") >= 1.0);

    let started_at = now();
    produce_lines(
        &broker.bootstrap,
        "events",
        &settings,
        &scripted_input(started_at),
        &[],
    );
    // 3 transitions (ana x2, ben x1), 2 inactivity events, 1 return, 2 dead letters.
    let produced = |m: &BTreeMap<String, f64>, kind: &str| {
        value(
            m,
            &format!("stagestream_produced_messages_total{{result=\"ok\",type=\"{kind}\"}}"),
        )
    };
    wait_for(
        "every output delivered and a snapshot written",
        Duration::from_secs(60),
        || {
            let (_, m) = scrape(&http);
            produced(&m, "stage_changed") >= 3.0
                && produced(&m, "customer_inactive") >= 2.0
                && produced(&m, "customer_reactivated") >= 1.0
                && produced(&m, "dead_letter") >= 2.0
                && value(&m, "stagestream_snapshots_total{result=\"ok\"}") >= 1.0
                && value(&m, "stagestream_commits_total{result=\"ok\"}") >= 1.0
        },
    );
    let (text, after) = scrape(&http);
    let moved = |series: &str| value(&after, series) - value(&before, series);
    let expect_moved = |series: &str, by: f64| {
        assert_eq!(
            moved(series),
            by,
            "{series} moved by {} not {by}\n{text}",
            moved(series)
        );
    };

    // Counters, each by exactly what the script caused.
    expect_moved("stagestream_events_consumed_total{result=\"ok\"}", 4.0);
    expect_moved("stagestream_events_consumed_total{result=\"duplicate\"}", 1.0);
    expect_moved("stagestream_events_consumed_total{result=\"ignored\"}", 1.0);
    expect_moved("stagestream_events_consumed_total{result=\"invalid\"}", 1.0);
    expect_moved("stagestream_events_consumed_total{result=\"late\"}", 1.0);
    expect_moved("stagestream_invalid_events_total{reason=\"invalid_json\"}", 1.0);
    expect_moved(
        "stagestream_invalid_events_total{reason=\"missing_customer\"}",
        0.0,
    );
    expect_moved("stagestream_dead_lettered_messages_total", 2.0);
    expect_moved(
        "stagestream_stage_transitions_total{from=\"none\",to=\"awareness\"}",
        2.0,
    );
    expect_moved(
        "stagestream_stage_transitions_total{from=\"awareness\",to=\"consideration\"}",
        1.0,
    );
    expect_moved(
        "stagestream_inactivity_events_total{stage=\"awareness\",threshold=\"winback_7d\"}",
        1.0,
    );
    expect_moved(
        "stagestream_inactivity_events_total{stage=\"awareness\",threshold=\"winback_14d\"}",
        1.0,
    );
    expect_moved(
        "stagestream_inactivity_events_total{stage=\"consideration\",threshold=\"winback_7d\"}",
        0.0,
    );
    expect_moved(
        "stagestream_reactivations_total{stage=\"awareness\",threshold=\"winback_14d\"}",
        1.0,
    );
    expect_moved(
        "stagestream_reactivations_total{stage=\"awareness\",threshold=\"winback_7d\"}",
        0.0,
    );
    expect_moved(
        "stagestream_produced_messages_total{result=\"ok\",type=\"customer_reactivated\"}",
        1.0,
    );
    expect_moved(
        "stagestream_produced_messages_total{result=\"ok\",type=\"stage_changed\"}",
        3.0,
    );
    expect_moved(
        "stagestream_produced_messages_total{result=\"ok\",type=\"customer_inactive\"}",
        2.0,
    );
    expect_moved(
        "stagestream_produced_messages_total{result=\"ok\",type=\"dead_letter\"}",
        2.0,
    );
    expect_moved(
        "stagestream_produced_messages_total{result=\"error\",type=\"stage_changed\"}",
        0.0,
    );
    assert!(moved("stagestream_snapshots_total{result=\"ok\"}") >= 1.0);
    assert!(moved("stagestream_commits_total{result=\"ok\"}") >= 1.0);
    for series in [
        "stagestream_snapshots_total{result=\"error\"}",
        "stagestream_commits_total{result=\"error\"}",
        "stagestream_snapshots_corrupt_total",
        "stagestream_rebalances_total{kind=\"revoke\"}",
        "stagestream_replayed_without_output_total",
    ] {
        assert!(after.contains_key(series), "{series} missing");
    }

    // Gauges.
    assert_eq!(
        value(&after, "stagestream_customers{stage=\"awareness\"}"),
        1.0,
        "ben"
    );
    assert_eq!(
        value(&after, "stagestream_customers{stage=\"consideration\"}"),
        1.0,
        "ana"
    );
    assert_eq!(value(&after, "stagestream_customers{stage=\"purchase\"}"), 0.0);
    assert_eq!(value(&after, "stagestream_armed_inactivity_timers"), 2.0);
    let partitions: Vec<String> = (0..2)
        .map(|p| format!("{{partition=\"{p}\",topic=\"events\"}}"))
        .collect();
    let newest = partitions
        .iter()
        .map(|p| value(&after, &format!("stagestream_last_event_timestamp_seconds{p}")))
        .fold(0.0, f64::max);
    let newest_expected = started_at.minus(Span::from_millis(10 * MINUTE)).as_millis() / 1_000;
    assert!(
        (newest - newest_expected as f64).abs() <= 1.0,
        "newest event time {newest}, expected {newest_expected}"
    );
    let watermark = partitions
        .iter()
        .map(|p| value(&after, &format!("stagestream_watermark_timestamp_seconds{p}")))
        .fold(0.0, f64::max);
    assert_eq!(
        newest - watermark,
        300.0,
        "the default allowed lateness is 5 minutes"
    );
    wait_for(
        "lag gauges from librdkafka statistics",
        Duration::from_secs(10),
        || {
            let (_, m) = scrape(&http);
            partitions
                .iter()
                .all(|p| m.get(&format!("stagestream_consumer_lag_messages{p}")) == Some(&0.0))
        },
    );
    assert!(partitions.iter().any(|p| {
        value(&after, &format!("stagestream_snapshot_size_bytes{p}")) > 0.0
            && value(&after, &format!("stagestream_last_snapshot_timestamp_seconds{p}"))
                >= (started_at.as_millis() / 1_000) as f64
    }));
    assert!(after
        .keys()
        .any(|k| k.starts_with("stagestream_kafka_broker_up{")));
    assert!(after
        .keys()
        .any(|k| k.starts_with("stagestream_kafka_queue_messages{")));

    // Histograms.
    expect_moved("stagestream_event_processing_seconds_count", 8.0);
    expect_moved("stagestream_event_delay_seconds_count", 4.0);
    expect_moved("stagestream_produce_latency_seconds_count", 8.0);
    expect_moved(
        "stagestream_time_in_stage_seconds_count{stage=\"awareness\"}",
        1.0,
    );
    // 30 minutes.
    let held = moved("stagestream_time_in_stage_seconds_sum{stage=\"awareness\"}");
    assert!((1_800.0..1_801.0).contains(&held), "time in awareness {held}");
    // Ana and ben start in awareness (0 s after their first visit); ana reaches
    // consideration 30 minutes after hers.
    expect_moved(
        "stagestream_time_to_stage_seconds_count{stage=\"awareness\"}",
        2.0,
    );
    expect_moved("stagestream_time_to_stage_seconds_sum{stage=\"awareness\"}", 0.0);
    expect_moved(
        "stagestream_time_to_stage_seconds_count{stage=\"consideration\"}",
        1.0,
    );
    let to_consideration = moved("stagestream_time_to_stage_seconds_sum{stage=\"consideration\"}");
    assert!(
        (1_800.0..1_801.0).contains(&to_consideration),
        "time to consideration {to_consideration}"
    );
    assert!(moved("stagestream_snapshot_duration_seconds_count{step=\"write\"}") >= 1.0);
    assert!(moved("stagestream_snapshot_duration_seconds_count{step=\"pause\"}") >= 1.0);
    assert!(moved("stagestream_snapshot_duration_seconds_count{step=\"encode\"}") >= 1.0);

    // The standard process metrics.
    assert!(value(&after, "process_resident_memory_bytes") > 0.0);
    assert!(after.contains_key("process_cpu_seconds_total"));
    // No customer id or event name ever appears in a series.
    for key in after.keys() {
        for secret in ["ana", "ben", "Page Viewed", "Product Viewed", "a1", "b2"] {
            assert!(!key.contains(secret), "{key} carries a customer value");
        }
    }

    // Every metric the dashboard and the alerts query is one the service exports (a
    // fresh scrape: the Kafka-client gauges come with librdkafka's statistics).
    let (latest, _) = scrape(&http);
    let families: Vec<&str> = latest
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for file in ["deploy/grafana/stagestream.json", "deploy/prometheus/alerts.yaml"] {
        let queried = std::fs::read_to_string(common::repo(file)).unwrap();
        for name in metric_names(&queried) {
            assert!(
                families.contains(&name.as_str()),
                "{file} queries {name}, which is not exported"
            );
        }
    }

    // promtool lints the live scrape (naming conventions, help, types).
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), latest.as_bytes()).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A real Prometheus scrapes the instance and evaluates the shipped alert rules.
    let server = Prometheus::start(&prometheus, dir.path(), &http);
    wait_for(
        "Prometheus to scrape the instance",
        Duration::from_secs(60),
        || server.query("up{job=\"stagestream\"}") == Some(1.0),
    );
    let consumed: f64 = ["ok", "duplicate", "ignored", "invalid", "late"]
        .iter()
        .map(|r| {
            value(
                &after,
                &format!("stagestream_events_consumed_total{{result=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(consumed, 8.0);
    wait_for(
        "the consumed count in Prometheus",
        Duration::from_secs(30),
        || server.query("sum(stagestream_events_consumed_total)") == Some(consumed),
    );
    assert_eq!(
        server.query("sum(stagestream_customers)"),
        Some(2.0),
        "customers by stage add up"
    );
    let rules = server.api("/api/v1/rules");
    for alert in [
        "StagestreamInstanceDown",
        "StagestreamConsumerLagHigh",
        "StagestreamSnapshotStale",
    ] {
        assert!(rules.contains(alert), "{alert} not loaded: {rules}");
    }

    let status = terminate(service);
    assert!(status.success(), "exit status {status}\n{}", show_log());
    assert!(
        get(&http, "/livez").is_none(),
        "the endpoint closes with the service"
    );
    // Logs: JSON lines on stdout, none carrying a customer id at info level.
    let log_text = show_log();
    let lines: Vec<serde_json::Value> = log_text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "partition assigned"));
    assert!(lines.iter().any(|l| l["fields"]["message"] == "snapshot written"));
    assert!(lines.iter().any(|l| l["fields"]["message"] == "invalid input"));
    for line in &lines {
        let text = line.to_string();
        for customer in ["ana", "ben", "carla"] {
            // As a JSON string value, or quoted inside one (escaped).
            for quoted in [format!("\"{customer}\""), format!("\\\"{customer}\\\"")] {
                assert!(!text.contains(&quoted), "a customer id is logged: {text}");
            }
        }
    }
}

/// The `stagestream_*` metric families named in `text` (histogram series suffixes removed).
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("stagestream_")
        .filter(|(at, _)| !text[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(at, _)| {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or(name.clone(), str::to_owned)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn health_endpoints_answer_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let unreachable = format!("127.0.0.1:{}", free_port());
    let (config, _) = write_config(dir.path(), "stagestream", &unreachable, "health", &[], "");
    let http = format!("127.0.0.1:{}", free_port());
    let service = start_service_on(&config, &dir.path().join("stagestream.log"), &http);
    wait_for("/livez", Duration::from_secs(30), || {
        get(&http, "/livez").is_some_and(|(status, body)| status == 200 && body == "ok\n")
    });
    let (status, body) = get(&http, "/readyz").unwrap();
    assert_eq!(status, 503, "not ready without partitions: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["assigned_partitions"], 0);
    // The owner answers no command while it waits for the cluster.
    let (status, body) = get(&http, "/progress").unwrap();
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = scrape(&http);
    assert_eq!(value(&metrics, "stagestream_ready"), 0.0);
    assert!(terminate(service).success());
}

/// Caught up once, then a burst the consumer drains slowly (a few one-record batches
/// per fetch, each fetch held 500 ms by tansu): `/readyz` turns 503 while the lag from librdkafka's statistics is
/// above `http.ready_max_lag`.
#[test]
fn readiness_fails_while_the_lag_is_above_the_bound() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 1), ("journey-stages", 1), ("dead-letters", 1)]);
    let (config, settings) = write_config(
        dir.path(),
        "stagestream",
        &broker.bootstrap,
        "lag",
        &[
            ("statistics.interval.ms", "200"),
            // tansu holds each fetch for the whole wait; librdkafka's smallest fetch
            // returns a few one-record batches: about 10 messages a second.
            ("fetch.wait.max.ms", "500"),
            ("message.max.bytes", "1000"),
            ("fetch.max.bytes", "1000"),
            ("max.partition.fetch.bytes", "1"),
        ],
        "[http]\nready_max_lag = 50\n",
    );
    let http = format!("127.0.0.1:{}", free_port());
    let service = start_service_on(&config, &dir.path().join("stagestream.log"), &http);
    wait_for("/readyz 200", Duration::from_secs(60), || {
        get(&http, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let (status, body) = get(&http, "/progress").unwrap();
    assert_eq!(status, 200, "{body}");
    let progress: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(progress["ready"], true, "{progress}");
    assert_eq!(progress["consumed"], 0, "{progress}");
    let partitions = progress["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{progress}");
    assert_eq!(partitions[0]["topic"], "events");
    assert_eq!(partitions[0]["partition"], 0);
    assert_eq!(partitions[0]["caught_up"], true);
    assert_eq!(partitions[0]["customers"], 0);
    let start = now().minus(Span::from_millis(DAY));
    let lines: Vec<Vec<u8>> = (0..1_000)
        .map(|i| {
            track(
                &format!("c{i}"),
                "Page Viewed",
                start.plus(Span::from_millis(i)),
                &format!("m{i}"),
            )
        })
        .collect();
    let producer = common::kafka::one_record_per_batch_producer(&broker.bootstrap);
    common::kafka::produce_lines_with(&producer, "events", &settings, &lines, &[]);
    let mut seen = None;
    wait_for("/readyz 503 for the lag", Duration::from_secs(20), || {
        let (status, body) = get(&http, "/readyz").unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let lagging = status == 503 && body["caught_up"] == true && body["max_lag"].as_i64() > Some(50);
        if lagging {
            seen = Some(body);
        }
        lagging
    });
    let body = seen.unwrap();
    assert_eq!(body["ready_max_lag"], 50, "{body}");
    let (status, body) = get(&http, "/progress").unwrap();
    assert_eq!(status, 200, "{body}");
    let progress: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(progress["ready"], false, "{progress}");
    let partition = &progress["partitions"][0];
    assert!(partition["next_offset"].as_i64() > Some(0), "{progress}");
    assert!(partition["customers"].as_u64() > Some(0), "{progress}");
    assert!(progress["consumed"].as_u64() > Some(0), "{progress}");
    let (_, metrics) = scrape(&http);
    assert_eq!(value(&metrics, "stagestream_ready"), 0.0);
    assert!(
        value(
            &metrics,
            "stagestream_consumer_lag_messages{partition=\"0\",topic=\"events\"}"
        ) > 50.0
    );
    assert!(terminate(service).success());
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let (config, _) = write_config(dir.path(), "stagestream", "127.0.0.1:9", "port", &[], "");
    let output = common::run(
        common::stagestream()
            .args(["run", "--config"])
            .arg(&config)
            .env("STAGESTREAM__HTTP__BIND", &http),
    );
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on http.bind {http}")),
        "{stderr}"
    );
}

/// A Prometheus server from Debian's package, scraping one target every second with
/// `deploy/prometheus/alerts.yaml` loaded, killed when dropped.
struct Prometheus {
    child: Child,
    address: String,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let rules = common::repo("deploy/prometheus/alerts.yaml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: stagestream\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        let server = Prometheus { child, address };
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            get(&server.address, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        server
    }

    fn api(&self, path: &str) -> String {
        let (status, body) = get(&self.address, path).expect("Prometheus answers");
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// The value of an instant query returning one sample, if it returns one.
    fn query(&self, expression: &str) -> Option<f64> {
        let body = self.api(&format!("/api/v1/query?query={}", encode(expression)));
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let samples = answer["data"]["result"].as_array()?;
        match samples.as_slice() {
            [sample] => sample["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
