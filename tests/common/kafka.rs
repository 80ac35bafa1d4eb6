//! Kafka helpers for the pipeline tests: produce a generated stream keyed by customer,
//! read a topic back to its end, and compute what `replay` says the output must be.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use stagestream::config::Settings;
use stagestream::core::{EventTime, Span};
use stagestream::decode::decode;
use stagestream::generate::generate;
use stagestream::loadgen::demo_stream;
use stagestream::replay::replay;

/// One record read back, with what the tests look at.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (CreateTime: when its producer sent it), in ms.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| std::str::from_utf8(value).expect("UTF-8 header"))
    }
}

/// An output CloudEvent as the comparison sees it: id, type and the data bytes.
pub type Fingerprint = (String, String, String);

/// The demo's (and loadgen's) generated lines from `start` on; invalid lines included.
pub fn generated_lines(customers: u32, days: u32, start: EventTime, seed: u64) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let settings = demo_stream(customers, days, Some(start), seed);
    generate(&settings, |line| lines.push(line.to_vec()));
    lines
}

pub fn now() -> EventTime {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    EventTime::from_millis(millis as i64)
}

pub fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    producer_config(bootstrap).create().expect("test producer")
}

/// Keyed like the Java clients and Kafka Streams (murmur2), the service's default
/// `input.partitioner`, so lookups find each customer's partition.
fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// A producer that writes every record as its own batch. tansu 0.6.0 answers a fetch
/// that starts inside a record batch with the *next* batch, silently skipping the rest
/// of the batch (checked by hand: records 0..10000 in one batch, a fetch from 1234
/// returns 10000 first). Resuming from a snapshot offset is such a fetch, so recovery
/// tests against tansu need every offset to start a batch; Apache Kafka has no such
/// restriction.
pub fn one_record_per_batch_producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    producer_config(bootstrap)
        .set("batch.num.messages", "1")
        .create()
        .expect("test producer")
}

/// Produces `lines` to `topic`, keyed by the customer each decodes to (none when
/// invalid), with `headers` on every record; waits for every delivery.
pub fn produce_lines(
    bootstrap: &str,
    topic: &str,
    settings: &Settings,
    lines: &[Vec<u8>],
    headers: &[(&str, &str)],
) {
    produce_lines_with(&producer(bootstrap), topic, settings, lines, headers);
}

/// [`produce_lines`] through a given producer.
pub fn produce_lines_with(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    settings: &Settings,
    lines: &[Vec<u8>],
    headers: &[(&str, &str)],
) {
    for line in lines {
        let customer = decode(line, &settings.model)
            .ok()
            .map(|record| record.customer().to_owned());
        let mut record_headers = OwnedHeaders::new();
        for (key, value) in headers {
            record_headers = record_headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut record = BaseRecord::to(topic).payload(line).headers(record_headers);
        if let Some(customer) = customer.as_deref() {
            record = record.key(customer);
        }
        while let Err((error, returned)) = producer.send(record) {
            assert!(
                matches!(
                    error,
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ),
                "{error}"
            );
            record = returned;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Generous: the crash matrix sends 200K+ records one per batch, which took over a
    // minute against tansu on a busy CI host (a flush timeout failed a run).
    producer
        .flush(Duration::from_secs(300))
        .expect("all test input delivered");
}

/// Reads every partition of `topic` from the beginning until each is at its end and
/// `enough` holds for what was read, or `timeout` passes (then returns what it has).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    enough: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "stagestream-tests-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("test consumer");
    let started = Instant::now();
    let partitions = loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        let count = metadata
            .as_ref()
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if count > 0 {
            break count as i32;
        }
        assert!(started.elapsed() < timeout, "topic {topic} has no partitions");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    let mut records = Vec::new();
    let mut at_end = vec![false; partitions as usize];
    while started.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                at_end[message.partition() as usize] = false;
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp: message.timestamp().to_millis(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => at_end[partition as usize] = true,
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {
                if at_end.iter().all(|&end| end) && enough(&records) {
                    break;
                }
            }
        }
    }
    records
}

/// Everything on the output topic (`journey-stages`), each partition read to its end.
pub fn read_output(bootstrap: &str, timeout: Duration) -> Vec<Record> {
    read_topic(bootstrap, "journey-stages", timeout, |_| true)
}

/// Each partition's end (the offset after its last record) among `input`, by partition.
pub fn partition_ends(input: &[Record]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for record in input {
        let end = ends.entry(record.partition).or_insert(0);
        *end = (*end).max(record.offset + 1);
    }
    ends
}

/// What the service must produce: `replay --until` over each partition's events, in
/// the partition's order, one engine per partition, as a sorted multiset.
pub fn replay_by_partition(settings: &Settings, input: &[Record], until: EventTime) -> Vec<Fingerprint> {
    let mut by_partition: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
    let mut sorted: Vec<&Record> = input.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for record in sorted {
        let lines = by_partition.entry(record.partition).or_default();
        lines.extend_from_slice(&record.value);
        lines.push(b'\n');
    }
    let mut expected = Vec::new();
    for lines in by_partition.values() {
        let mut out = Vec::new();
        replay(settings, Cursor::new(lines), &mut out, None, Some(until)).expect("replay");
        for line in String::from_utf8(out).unwrap().lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            let data_start = line.find(",\"data\":").unwrap() + 8;
            expected.push((
                json["id"].as_str().unwrap().to_owned(),
                json["type"].as_str().unwrap().to_owned(),
                line[data_start..line.len() - 1].to_owned(),
            ));
        }
    }
    expected.sort();
    expected
}

/// Output records in binary content mode, checked against the CloudEvents Kafka
/// binding, as a sorted multiset.
pub fn binary_outputs(records: &[Record], source: &str) -> Vec<Fingerprint> {
    let mut outputs: Vec<Fingerprint> = records
        .iter()
        .map(|record| {
            let data = String::from_utf8(record.value.clone()).expect("UTF-8 data");
            let json: serde_json::Value = serde_json::from_str(&data).expect("data is JSON");
            let customer = json["customer_id"].as_str().expect("customer_id");
            assert_eq!(record.header("ce_specversion"), Some("1.0"));
            assert_eq!(record.header("ce_source"), Some(source));
            assert_eq!(record.header("ce_subject"), Some(customer));
            assert_eq!(record.header("content-type"), Some("application/json"));
            assert_eq!(
                record.key.as_deref(),
                Some(customer.as_bytes()),
                "key = customer id"
            );
            let time = record.header("ce_time").expect("ce_time");
            assert!(EventTime::parse_rfc3339(time).is_some(), "{time}");
            (
                record.header("ce_id").expect("ce_id").to_owned(),
                record.header("ce_type").expect("ce_type").to_owned(),
                data,
            )
        })
        .collect();
    outputs.sort();
    outputs
}

/// Asserts that `actual` holds everything in `at_least` (due when the service started)
/// and nothing outside `at_most` (due by the time it was read); all three sorted.
pub fn assert_between(actual: &[Fingerprint], at_least: &[Fingerprint], at_most: &[Fingerprint]) {
    let missing = at_least
        .iter()
        .filter(|item| actual.binary_search(item).is_err())
        .count();
    let invented = actual
        .iter()
        .filter(|item| at_most.binary_search(item).is_err())
        .count();
    assert!(
        missing == 0 && invented == 0,
        "{missing} due outputs missing, {invented} outputs replay does not have; vs at_most: {}",
        difference(actual, at_most)
    );
}

/// A readable account of how two multisets differ (the first few of each side).
pub fn difference(actual: &[Fingerprint], expected: &[Fingerprint]) -> String {
    let mut missing = expected.to_vec();
    let mut extra = Vec::new();
    for item in actual {
        match missing.iter().position(|m| m == item) {
            Some(i) => {
                missing.swap_remove(i);
            }
            None => extra.push(item.clone()),
        }
    }
    format!(
        "{} missing, {} extra; first missing {:?}; first extra {:?}",
        missing.len(),
        extra.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.iter().take(3).collect::<Vec<_>>()
    )
}

/// A small journey per customer, all within the last minutes, so no inactivity
/// deadline can pass while the test runs: the output then depends on the events alone.
pub fn recent_journeys(customers: std::ops::Range<u32>, start: EventTime) -> Vec<Vec<u8>> {
    let steps = [
        ("page", "Home"),
        ("track", "Product Viewed"),
        ("track", "Order Completed"),
        ("track", "Order Completed"),
        ("track", "Product Reviewed"),
    ];
    let mut lines = Vec::new();
    for (step, (kind, name)) in steps.iter().enumerate() {
        for customer in customers.clone() {
            if (customer + step as u32) % 4 == 0 {
                continue; // not every customer takes every step
            }
            let at = start.plus(Span::from_millis(step as i64 * 20_000 + i64::from(customer)));
            let field = if *kind == "page" { "name" } else { "event" };
            lines.push(
                format!(
                    r#"{{"type":"{kind}","{field}":"{name}","userId":"c-{customer}","messageId":"m-{customer}-{step}","timestamp":"{at}"}}"#
                )
                .into_bytes(),
            );
        }
    }
    lines
}

/// The group's committed offset of each partition of `events`.
pub fn committed(bootstrap: &str, group: &str, partitions: i32) -> Vec<i64> {
    committed_if_any(bootstrap, group, partitions)
        .into_iter()
        .enumerate()
        .map(|(p, offset)| offset.unwrap_or_else(|| panic!("partition {p}: no committed offset")))
        .collect()
}

/// The group's committed offset of each partition of `events`, `None` where there is none.
pub fn committed_if_any(bootstrap: &str, group: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition("events", partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(
            |p| match committed.find_partition("events", p).unwrap().offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            },
        )
        .collect()
}
