//! The customer routes of `stagestream run` (the real binary) against a real broker
//! (tansu): lookups through either of two instances of one group (following
//! redirects), erasure by tombstone and by `DELETE`, and an erasure surviving `kill -9`
//! before the next snapshot. Expected stages come from `replay` of the same input.
//!
//! Skipped with a message when tansu is not installed; under CI that is a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer};
use serde_json::Value;

use common::http::{request, Response};
use common::kafka::{
    now, one_record_per_batch_producer, produce_lines_with, read_output, read_topic, replay_by_partition,
};
use common::service::{start_service_on, terminate, wait_for, write_config};
use common::tansu::{self, free_port, Tansu};
use stagestream::config::Settings;
use stagestream::core::Span;
use stagestream::partitioner::Partitioner;

const TOKEN: &str = "s3cret-token";

/// The API on, with a token, and snapshots every 300 ms under `dir/snapshots`.
fn api_config(dir: &Path, interval: &str) -> String {
    format!(
        r#"
[api]
enabled = true
token = "{TOKEN}"

[snapshot]
dir = "{}"
interval = "{interval}"
keep = 2
"#,
        dir.join("snapshots").display()
    )
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// `GET /customers/{id}` at `address`, following redirects (at most three).
fn look_up(address: &str, id: &str) -> Response {
    look_up_counting(address, id).0
}

/// [`look_up`], and how many redirects it followed.
fn look_up_counting(address: &str, id: &str) -> (Response, usize) {
    let (name, value) = bearer();
    let mut path = format!("/customers/{}", common::http::encode(id));
    let mut at = address.to_owned();
    for redirects in 0..3 {
        let response = request(&at, "GET", &path, &[(name, &value)]).expect("the service answers");
        if response.status != 307 {
            return (response, redirects);
        }
        let location = response.header("location").expect("a redirect names its target");
        let rest = location.strip_prefix("http://").expect("an http URL");
        let (host, target) = rest.split_once('/').expect("a path");
        at = host.to_owned();
        path = format!("/{target}");
    }
    panic!("more than three redirects for {id}");
}

/// Each customer's stage at the end of the expected outputs: the five-stage model
/// only moves forward, so the furthest stage a transition reached.
fn final_stages(settings: &Settings, expected: &[(String, String, String)]) -> BTreeMap<String, String> {
    let order: Vec<&str> = settings.model.stage_names().collect();
    let rank = |stage: &str| order.iter().position(|s| *s == stage).unwrap();
    let mut stages: BTreeMap<String, String> = BTreeMap::new();
    for (_, kind, data) in expected {
        if kind == "stagestream.stage.changed.v1" {
            let data: Value = serde_json::from_str(data).unwrap();
            let to = data["to_stage"].as_str().unwrap();
            let stage = stages
                .entry(data["customer_id"].as_str().unwrap().to_owned())
                .or_insert_with(|| to.to_owned());
            if rank(to) > rank(stage) {
                *stage = to.to_owned();
            }
        }
    }
    stages
}

/// How many erased events the output topic holds for `customer`.
fn erased_events(bootstrap: &str, customer: &str) -> usize {
    read_output(bootstrap, Duration::from_secs(30))
        .iter()
        .filter(|r| r.header("ce_type") == Some("stagestream.customer.erased.v1"))
        .filter(|r| r.header("ce_subject") == Some(customer))
        .count()
}

fn ready(address: &str) -> bool {
    common::http::get(address, "/readyz").is_some_and(|(status, _)| status == 200)
}

fn stop(service: Child) {
    assert!(terminate(service).success());
}

fn inspect(snapshots: &Path, args: &[&str]) -> std::process::Output {
    common::run(common::stagestream().arg("inspect").arg(snapshots).args(args))
}

#[test]
fn two_instances_answer_for_every_customer_and_erase_on_request() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let consumer = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
    let addresses = [free_port(), free_port()].map(|port| format!("127.0.0.1:{port}"));
    let instances: Vec<_> = ["a", "b"]
        .iter()
        .zip(&addresses)
        .map(|(name, address)| {
            let (config, settings) = write_config(
                dir.path(),
                name,
                &broker.bootstrap,
                "lookups",
                &consumer,
                &api_config(dir.path(), "300ms"),
            );
            let log = dir.path().join(format!("{name}.log"));
            (start_service_on(&config, &log, address), settings)
        })
        .collect();
    let settings = &instances[0].1;
    let lines = common::kafka::recent_journeys(0..3_000, now().minus(Span::from_millis(10 * 60_000)));
    let producer = one_record_per_batch_producer(&broker.bootstrap);
    produce_lines_with(&producer, "events", settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == lines.len()
    });
    let expected = replay_by_partition(settings, &input, now());
    wait_for("both instances ready", Duration::from_secs(90), || {
        addresses.iter().all(|a| ready(a))
    });
    wait_for("every output", Duration::from_secs(120), || {
        read_output(&broker.bootstrap, Duration::from_secs(30)).len() >= expected.len()
    });

    // Every customer, through instance a: the stage replay ends with.
    let stages = final_stages(settings, &expected);
    assert_eq!(stages.len(), 3_000);
    let mut redirected = 0;
    wait_for(
        "both instances publish their partitions",
        Duration::from_secs(30),
        || {
            let probe = stages.keys().find(|id| {
                let (name, value) = bearer();
                let path = format!("/customers/{}", common::http::encode(id));
                request(&addresses[0], "GET", &path, &[(name, &value)]).is_some_and(|r| r.status == 307)
            });
            probe.is_some()
        },
    );
    for (id, stage) in &stages {
        let (response, redirects) = look_up_counting(&addresses[0], id);
        redirected += redirects;
        assert_eq!(response.status, 200, "{id}: {}", response.body);
        let body: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(body["customer_id"], id.as_str());
        assert_eq!(body["model"], "five-stage");
        assert_eq!(body["model_version"], "1");
        let states = body["states"].as_array().unwrap();
        assert_eq!(states.len(), 1, "{body}");
        assert_eq!(states[0]["stage"], stage.as_str(), "{id}");
        assert_eq!(states[0]["topic"], "events");
        let partition = Partitioner::Murmur2Random.partition(id.as_bytes(), 4);
        assert_eq!(states[0]["partition"], partition, "{id}");
        for field in ["stage_entered_at", "first_seen_at", "last_activity_at"] {
            let time = states[0][field].as_str().unwrap();
            assert!(time.ends_with('Z') && time.len() == 24, "{field} {time}");
        }
    }
    assert!(
        redirected > 0 && redirected < stages.len(),
        "{redirected} redirects"
    );

    // The routes need the token; an unknown customer is a 404.
    let unknown = look_up(&addresses[1], "nobody-at-all");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let anonymous = request(&addresses[0], "GET", "/customers/x", &[]).unwrap();
    assert_eq!(anonymous.status, 401);
    let wrong = request(
        &addresses[0],
        "GET",
        "/customers/x",
        &[("Authorization", "Bearer nope")],
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(
        common::http::get(&addresses[0], "/metrics").unwrap().0,
        200,
        "metrics stay open"
    );

    // Erase one customer by tombstone and another by DELETE (through instance b).
    let ids: Vec<&String> = stages.keys().collect();
    let (by_tombstone, by_delete) = (ids[10].clone(), ids[20].clone());
    producer
        .send(BaseRecord::<str, [u8]>::to("events").key(by_tombstone.as_str()))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let (name, value) = bearer();
    let path = format!("/customers/{}", common::http::encode(&by_delete));
    let deleted = request(&addresses[1], "DELETE", &path, &[(name, &value)]).unwrap();
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    let receipt: Value = serde_json::from_str(&deleted.body).unwrap();
    assert_eq!(receipt["topic"], "events");
    assert_eq!(
        receipt["partition"],
        Partitioner::Murmur2Random.partition(by_delete.as_bytes(), 4)
    );
    assert!(receipt["offset"].as_i64().unwrap() >= 0);
    let unauthorised = request(&addresses[1], "DELETE", &path, &[]).unwrap();
    assert_eq!(unauthorised.status, 401);
    for id in [&by_tombstone, &by_delete] {
        wait_for("the erased event", Duration::from_secs(60), || {
            erased_events(&broker.bootstrap, id) >= 1
        });
        assert_eq!(look_up(&addresses[0], id).status, 404, "{id} is forgotten");
    }
    // Snapshots after the erasures: wait for two rounds, then stop.
    std::thread::sleep(Duration::from_secs(2));
    for (service, _) in instances {
        stop(service);
    }
    for id in [&by_tombstone, &by_delete] {
        assert_eq!(
            erased_events(&broker.bootstrap, id),
            1,
            "one erased event for {id}"
        );
    }
    let snapshots = dir.path().join("snapshots");
    let exported = inspect(&snapshots, &["--export"]);
    assert!(exported.status.success(), "{exported:?}");
    let text = String::from_utf8(exported.stdout).unwrap();
    assert_eq!(text.lines().count(), 2_998, "every customer but the erased two");
    for id in [&by_tombstone, &by_delete] {
        assert!(!text.contains(&format!("\"{id}\"")), "{id} in the export");
        assert_eq!(inspect(&snapshots, &["--customer", id]).status.code(), Some(1));
    }
    assert_eq!(
        inspect(&snapshots, &["--customer", ids[30]]).status.code(),
        Some(0)
    );
}

#[test]
fn an_erasure_survives_kill_9_before_the_next_snapshot() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 2), ("journey-stages", 2), ("dead-letters", 1)]);
    let address = format!("127.0.0.1:{}", free_port());
    let consumer = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
    // Snapshots are taken once, while catching up, then not for an hour.
    let (config, settings) = write_config(
        dir.path(),
        "solo",
        &broker.bootstrap,
        "erasure",
        &consumer,
        &api_config(dir.path(), "1h"),
    );
    let log = dir.path().join("solo.log");
    let lines = common::kafka::recent_journeys(0..200, now().minus(Span::from_millis(10 * 60_000)));
    let producer = one_record_per_batch_producer(&broker.bootstrap);
    produce_lines_with(&producer, "events", &settings, &lines, &[]);
    let service = start_service_on(&config, &log, &address);
    wait_for("ready", Duration::from_secs(60), || ready(&address));
    let snapshots = dir.path().join("snapshots");
    // Stop and start once so that a snapshot holds the customer.
    stop(service);
    assert_eq!(inspect(&snapshots, &["--customer", "c-7"]).status.code(), Some(0));
    let service = start_service_on(&config, &log, &address);
    wait_for("ready again", Duration::from_secs(60), || ready(&address));
    assert_eq!(look_up(&address, "c-7").status, 200);
    let (name, value) = bearer();
    let deleted = request(&address, "DELETE", "/customers/c-7", &[(name, &value)]).unwrap();
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    wait_for("the erased event", Duration::from_secs(60), || {
        erased_events(&broker.bootstrap, "c-7") >= 1
    });
    let mut service = service;
    service.kill().unwrap(); // SIGKILL: the snapshot on disk still holds the customer
    service.wait().unwrap();
    assert_eq!(inspect(&snapshots, &["--customer", "c-7"]).status.code(), Some(0));
    let service = start_service_on(&config, &log, &address);
    wait_for("ready after the crash", Duration::from_secs(60), || {
        ready(&address)
    });
    assert_eq!(look_up(&address, "c-7").status, 404, "replayed from the log");
    assert_eq!(look_up(&address, "c-8").status, 200);
    stop(service);
    assert_eq!(inspect(&snapshots, &["--customer", "c-7"]).status.code(), Some(1));
    let erased = erased_events(&broker.bootstrap, "c-7");
    assert!(erased >= 1, "re-emitted after the crash at most with the same id");
    let ids: std::collections::BTreeSet<String> = read_output(&broker.bootstrap, Duration::from_secs(30))
        .iter()
        .filter(|r| r.header("ce_type") == Some("stagestream.customer.erased.v1"))
        .map(|r| r.header("ce_id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "every copy carries one id");
}
