//! Helpers shared by the integration tests: running the binary, reading its output.

#![allow(dead_code)] // each test crate uses a different subset

pub mod http;
pub mod kafka;
pub mod service;
pub mod tansu;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use uuid::Uuid;

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A `stagestream` command with no `STAGESTREAM__` overrides from the test environment.
pub fn stagestream() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stagestream"));
    for (name, _) in std::env::vars() {
        if name.starts_with("STAGESTREAM__") {
            command.env_remove(name);
        }
    }
    command
}

pub fn run(command: &mut Command) -> Output {
    command.output().expect("stagestream runs")
}

/// One parsed CloudEvents line plus the raw bytes of its `data` member.
pub struct CloudEvent {
    pub json: Value,
    pub raw_data: String,
}

/// Parses structured CloudEvents lines, checking the envelope contract on each.
pub fn parse_cloudevents(text: &str) -> Vec<CloudEvent> {
    text.lines()
        .map(|line| {
            let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let start = line.find(",\"data\":").expect("data member") + 8;
            let raw_data = line[start..line.len() - 1].to_owned();
            assert_eq!(json["specversion"], "1.0");
            assert_eq!(json["datacontenttype"], "application/json");
            assert_eq!(json["subject"], json["data"]["customer_id"]);
            let kind = json["type"].as_str().unwrap();
            assert!(
                [
                    "stagestream.stage.changed.v1",
                    "stagestream.customer.inactive.v1",
                    "stagestream.customer.reactivated.v1",
                    "stagestream.customer.expired.v1",
                    "stagestream.customer.erased.v1",
                ]
                .contains(&kind),
                "{kind}"
            );
            // The documented id recipe: UUIDv5(namespace, type + "\n" + data bytes).
            let namespace = Uuid::parse_str("6f0c9a51-3d2e-4b7a-9c1e-5a7d2f48b3e6").unwrap();
            let expected = Uuid::new_v5(&namespace, format!("{kind}\n{raw_data}").as_bytes());
            assert_eq!(json["id"], expected.to_string(), "{line}");
            let time = json["time"].as_str().unwrap();
            assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
            CloudEvent { json, raw_data }
        })
        .collect()
}

/// A one-line summary of a CloudEvent, in the format of the `.expected` fixtures.
pub fn compact(event: &CloudEvent) -> String {
    let e = &event.json;
    let d = &e["data"];
    let text = |v: &Value| v.as_str().map_or("null".to_owned(), str::to_owned);
    match e["type"].as_str().unwrap() {
        "stagestream.stage.changed.v1" => {
            let trigger = &d["trigger"];
            let trigger = if trigger.is_null() {
                "null".to_owned()
            } else {
                assert_eq!(
                    e["time"], trigger["timestamp"],
                    "a transition's time is its trigger's"
                );
                format!(
                    "{}:{}@{}#{}",
                    text(&trigger["type"]),
                    text(&trigger["event"]),
                    text(&trigger["timestamp"]),
                    text(&trigger["message_id"])
                )
            };
            format!(
                "{} {} changed {}->{} rule={} trigger={} held={}",
                text(&e["time"]),
                text(&e["subject"]),
                text(&d["from_stage"]),
                text(&d["to_stage"]),
                text(&d["rule"]),
                trigger,
                d["time_in_previous_stage_seconds"]
            )
        }
        "stagestream.customer.expired.v1" => {
            assert_eq!(e["time"], d["expired_at"]);
            format!(
                "{} {} expired stage={} last={}",
                text(&e["time"]),
                text(&e["subject"]),
                text(&d["stage"]),
                text(&d["last_activity_at"])
            )
        }
        "stagestream.customer.reactivated.v1" => {
            assert_eq!(e["time"], d["returned_at"]);
            let thresholds: Vec<String> = d["thresholds"].as_array().unwrap().iter().map(text).collect();
            format!(
                "{} {} reactivated stage={} inactive_seconds={} last={} after={}",
                text(&e["time"]),
                text(&e["subject"]),
                text(&d["stage"]),
                d["inactive_seconds"],
                text(&d["last_activity_at"]),
                thresholds.join("+")
            )
        }
        "stagestream.customer.erased.v1" => {
            let fields: Vec<&String> = d.as_object().unwrap().keys().collect();
            assert_eq!(
                fields,
                ["customer_id", "model", "model_version"],
                "an erased event's data"
            );
            format!("{} {} erased", text(&e["time"]), text(&e["subject"]))
        }
        _ => {
            assert_eq!(e["time"], d["detected_at"]);
            format!(
                "{} {} inactive {} stage={} inactive_seconds={} last={}",
                text(&e["time"]),
                text(&e["subject"]),
                text(&d["threshold"]),
                text(&d["stage"]),
                d["inactive_seconds"],
                text(&d["last_activity_at"])
            )
        }
    }
}
