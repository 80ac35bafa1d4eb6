//! `stagestream demo`: the whole service on an in-process Kafka cluster.
//!
//! Starts librdkafka's mock cluster (no broker to install), produces a generated
//! realistic stream to its `events` topic keyed by customer id ([`crate::loadgen`]), runs the real service
//! loop ([`crate::pipeline::run`]) against it, and prints the CloudEvents it produces
//! to the `journey-stages` topic as they arrive, read back by a second consumer. The
//! events end at the current time, so catching up also fires the win-backs the wall
//! clock has reached. It stops once every event is consumed and every output printed.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message};
use serde::Deserialize;

use crate::config::{Settings, SnapshotSettings};
use crate::core::Span;
use crate::loadgen::{self, demo_stream, LoadError, LoadSettings};
use crate::output::{CUSTOMER_INACTIVE, CUSTOMER_REACTIVATED, STAGE_CHANGED};
use crate::pipeline::{self, Control, PipelineError};

pub const INPUT_TOPIC: &str = "events";
pub const OUTPUT_TOPIC: &str = "journey-stages";
pub const DEAD_LETTER_TOPIC: &str = "dead-letters";
const PARTITIONS: i32 = 4;
/// The demo gives up if the service has not caught up by then.
const DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("mock Kafka cluster: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot write to stdout: {0}")]
    Write(#[from] io::Error),
    #[error("the service did not catch up within {0:?}")]
    Timeout(Duration),
}

/// What the demo did, for its last line.
#[derive(Debug)]
pub struct DemoSummary {
    pub events: u64,
    pub printed: u64,
    pub dead_lettered: u64,
    /// Snapshots written (to a temporary directory) along the way.
    pub snapshots: u64,
    pub elapsed: Duration,
}

/// Runs the demo with `settings` (its model and time settings; the Kafka section is
/// replaced by the mock cluster's) and a stream of `customers` over the last `days`.
///
/// # Errors
/// The mock cluster or the service fails, stdout is closed, or the service does not
/// catch up in time.
pub fn demo(
    mut settings: Settings,
    customers: u32,
    days: u32,
    seed: u64,
    out: &mut impl Write,
) -> Result<DemoSummary, DemoError> {
    let started = Instant::now();
    let cluster = MockCluster::new(1)?;
    for topic in [INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
    }
    let bootstrap = cluster.bootstrap_servers();
    settings.input.topics = vec![INPUT_TOPIC.into()];
    settings.output.topic = OUTPUT_TOPIC.into();
    settings.dlq.topic = Some(DEAD_LETTER_TOPIC.into());
    let kafka = &mut settings.kafka;
    kafka.brokers = Some(bootstrap.clone());
    kafka.group_id = Some("stagestream-demo".into());
    kafka.consumer.set("fetch.wait.max.ms", "10");
    // Snapshots go to a fresh directory removed afterwards: the mock cluster lives only
    // as long as the demo, so state saved against another one must never be restored.
    let snapshots = std::env::temp_dir().join(format!("stagestream-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&snapshots);
    settings.snapshot = Some(SnapshotSettings {
        dir: snapshots.clone(),
        interval: Span::from_millis(1_000),
        keep: 2,
    });

    let load = LoadSettings {
        topic: INPUT_TOPIC.into(),
        generator: demo_stream(customers, days, None, seed),
        rate: None,
        duration: None,
        max_events: None,
    };
    let properties = settings.kafka.producer_properties(None);
    let events = loadgen::load(&properties, settings.input.partitioner, &load)?.events;
    let control = Arc::new(Control::default());
    let service = {
        let control = control.clone();
        let settings = settings.clone();
        std::thread::spawn(move || pipeline::run(&settings, control))
    };
    let printed = print_outputs(&bootstrap, &control, events, out);
    control.stop();
    let stopped = service.join().expect("the service thread does not panic");
    let _ = std::fs::remove_dir_all(&snapshots);
    let printed = printed?;
    stopped?;
    Ok(DemoSummary {
        events,
        printed,
        dead_lettered: control.dead_lettered(),
        snapshots: control.snapshots_written(),
        elapsed: started.elapsed(),
    })
}

/// Prints outputs until every event is consumed and every output sent is delivered and printed.
fn print_outputs(
    bootstrap: &str,
    control: &Control,
    events: u64,
    out: &mut impl Write,
) -> Result<u64, DemoError> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "stagestream-demo-printer")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    reader.subscribe(&[OUTPUT_TOPIC])?;
    let started = Instant::now();
    let mut printed = 0u64;
    loop {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                print_output(&message, out)?;
                printed += 1;
                continue;
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
        let delivered = control.delivered();
        let done = control.is_ready()
            && control.consumed() == events
            && delivered == control.outputs_sent()
            && printed == delivered;
        if done {
            out.flush()?;
            return Ok(printed);
        }
        if started.elapsed() > DEADLINE {
            return Err(DemoError::Timeout(DEADLINE));
        }
    }
}

#[derive(Deserialize)]
struct Data<'a> {
    customer_id: &'a str,
    from_stage: Option<&'a str>,
    to_stage: Option<&'a str>,
    rule: Option<&'a str>,
    threshold: Option<&'a str>,
    stage: Option<&'a str>,
    last_activity_at: Option<&'a str>,
    time_in_previous_stage_seconds: Option<f64>,
    inactive_seconds: Option<f64>,
    #[serde(borrow, default)]
    thresholds: Vec<&'a str>,
}

fn print_output(message: &rdkafka::message::BorrowedMessage<'_>, out: &mut impl Write) -> io::Result<()> {
    let header = |name: &str| {
        message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
    };
    let payload = message.payload().unwrap_or_default();
    let Ok(data) = serde_json::from_slice::<Data<'_>>(payload) else {
        return writeln!(out, "{}", String::from_utf8_lossy(payload));
    };
    let time = header("ce_time");
    let customer = data.customer_id;
    let stage = data.stage.unwrap_or("?");
    match header("ce_type").as_ref() {
        STAGE_CHANGED => {
            let held = data
                .time_in_previous_stage_seconds
                .map(|seconds| format!(", after {} there", duration(seconds)))
                .unwrap_or_default();
            writeln!(
                out,
                "{time}  {customer:<36}  {:>13} -> {:<13} by {}{held}",
                data.from_stage.unwrap_or("(new)"),
                data.to_stage.unwrap_or("?"),
                data.rule.unwrap_or("first activity"),
            )
        }
        CUSTOMER_INACTIVE => writeln!(
            out,
            "{time}  {customer:<36}  inactive {} in {stage}, last active {}",
            data.threshold.unwrap_or("?"),
            data.last_activity_at.unwrap_or("?"),
        ),
        CUSTOMER_REACTIVATED => writeln!(
            out,
            "{time}  {customer:<36}  back in {stage} after {} quiet ({} fired)",
            duration(data.inactive_seconds.unwrap_or_default()),
            data.thresholds.join(", "),
        ),
        _ => writeln!(out, "{}", String::from_utf8_lossy(payload)),
    }
}

/// A duration for people: its two largest units (`3d 4h`, `12m 5s`).
fn duration(seconds: f64) -> String {
    let whole = seconds.max(0.0) as u64;
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let parts: Vec<String> = units
        .iter()
        .skip_while(|&&(_, size)| whole < size && size > 1)
        .take(2)
        .scan(whole, |rest, &(name, size)| {
            let count = *rest / size;
            *rest %= size;
            Some(format!("{count}{name}"))
        })
        .collect();
    parts.join(" ")
}
