//! Kafka wiring: the `[kafka]` configuration section and the librdkafka client
//! configurations built from it.
//!
//! Every librdkafka property passes through from three string maps: `[kafka.common]`
//! (both clients), `[kafka.consumer]` and `[kafka.producer]`. stagestream sets a few
//! defaults (listed in [`CONSUMER_DEFAULTS`] and [`PRODUCER_DEFAULTS`]) that a map may
//! override, and owns a few properties its delivery guarantee rests on
//! ([`MANAGED`]): setting one of those is a configuration error. Values are never
//! logged or printed for keys that look secret (see [`is_secret`]).
//!
//! Environment variables cannot hold dots portably, so an underscore in a map key
//! stands for a dot: `STAGESTREAM__KAFKA__COMMON__SASL_PASSWORD` sets `sasl.password`.
//! When a file key and an environment key name the same property, the environment wins.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;

use crate::core::Problem;

/// How outputs are written to the output topic (CloudEvents Kafka protocol binding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Value = the `data` JSON; attributes in `ce_*` headers.
    Binary,
    /// Value = the whole CloudEvent as JSON, the same line `replay` prints.
    Structured,
}

/// The `[kafka]` section as written.
#[derive(Deserialize)]
#[serde(default)]
pub(crate) struct KafkaSection {
    input_topics: Vec<String>,
    output_topic: String,
    dead_letter_topic: Option<String>,
    content_mode: ContentMode,
    common: BTreeMap<String, String>,
    consumer: BTreeMap<String, String>,
    producer: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            input_topics: vec!["events".into()],
            output_topic: "journey-stages".into(),
            dead_letter_topic: None,
            content_mode: ContentMode::Binary,
            common: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// The validated `[kafka]` section.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub input_topics: Vec<String>,
    pub output_topic: String,
    pub dead_letter_topic: Option<String>,
    pub content_mode: ContentMode,
    pub common: Properties,
    pub consumer: Properties,
    pub producer: Properties,
}

/// librdkafka properties by name; `Debug` and `Display` redact secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>);

/// Consumer properties stagestream sets unless the configuration overrides them.
pub const CONSUMER_DEFAULTS: [(&str, &str); 7] = [
    ("bootstrap.servers", "localhost:9092"),
    ("group.id", "stagestream"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    // A journey needs the customer's history: a new group starts at the beginning.
    ("auto.offset.reset", "earliest"),
    // Brokers answer a fetch early once data is there; this bounds the idle wait, which
    // some Kafka-protocol brokers (tansu) always sit out in full.
    ("fetch.wait.max.ms", "100"),
    // Once the prefetch queue is full, librdkafka waits this long before fetching again
    // (default 1 s): catching up on a backlog, the service emptied the queue first and
    // then sat idle ~0.7 s per cycle (docs/performance-history.md, "End to end").
    ("fetch.queue.backoff.ms", "10"),
    // Feeds the lag gauge, readiness and the Kafka-client metrics.
    ("statistics.interval.ms", "5000"),
];

/// Producer properties stagestream sets unless the configuration overrides them.
pub const PRODUCER_DEFAULTS: [(&str, &str); 4] = [
    ("bootstrap.servers", "localhost:9092"),
    ("linger.ms", "5"),
    // Retry for as long as it takes: an output is never given up while the process
    // runs (a broker restart only delays it); shutdown bounds the wait instead.
    ("message.timeout.ms", "0"),
    ("statistics.interval.ms", "5000"),
];

/// Properties the at-least-once guarantee depends on, with the value stagestream sets.
pub const MANAGED: [(&str, &str); 6] = [
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
    ("enable.auto.commit", "true"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("transactional.id", ""),
];

impl KafkaSection {
    pub(crate) fn validate(self, problems: &mut Vec<Problem>) -> Option<KafkaSettings> {
        let before = problems.len();
        if self.input_topics.is_empty() {
            problems.push(Problem::new("kafka.input_topics", "must name at least one topic"));
        }
        for (i, topic) in self.input_topics.iter().enumerate() {
            check_topic(&format!("kafka.input_topics[{i}]"), topic, problems);
        }
        check_topic("kafka.output_topic", &self.output_topic, problems);
        if let Some(topic) = &self.dead_letter_topic {
            check_topic("kafka.dead_letter_topic", topic, problems);
        }
        if self.input_topics.contains(&self.output_topic) {
            problems.push(Problem::new(
                "kafka.output_topic",
                "must not also be an input topic (outputs would be read back as events)",
            ));
        }
        let common = Properties::from_section("kafka.common", self.common, problems);
        let consumer = Properties::from_section("kafka.consumer", self.consumer, problems);
        let producer = Properties::from_section("kafka.producer", self.producer, problems);
        (problems.len() == before).then_some(KafkaSettings {
            input_topics: self.input_topics,
            output_topic: self.output_topic,
            dead_letter_topic: self.dead_letter_topic,
            content_mode: self.content_mode,
            common,
            consumer,
            producer,
        })
    }
}

fn check_topic(path: &str, topic: &str, problems: &mut Vec<Problem>) {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) || topic == "." || topic == ".." {
        problems.push(Problem::new(
            path,
            format!("{topic:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ));
    }
}

impl Properties {
    /// Normalises keys (`_` -> `.`, environment form wins) and rejects managed keys.
    fn from_section(path: &str, raw: BTreeMap<String, String>, problems: &mut Vec<Problem>) -> Properties {
        let mut properties = BTreeMap::new();
        // Dotted keys first, so the underscore (environment) form of a key overwrites it.
        let (dotted, underscored): (Vec<_>, Vec<_>) =
            raw.into_iter().partition(|(key, _)| !key.contains('_'));
        for (key, value) in dotted.into_iter().chain(underscored) {
            let key = key.replace('_', ".");
            if let Some((_, managed)) = MANAGED.iter().find(|(name, _)| *name == key) {
                let why = if managed.is_empty() {
                    "is not supported: stagestream does not use transactions".to_owned()
                } else {
                    format!("is managed by stagestream (always {managed}) for at-least-once delivery")
                };
                problems.push(Problem::new(format!("{path}.{key}"), why));
                continue;
            }
            // librdkafka checks names and values as they are set, without a client.
            let mut single = ClientConfig::new();
            single.set(&key, &value);
            if let Err(error) = single.create_native_config() {
                problems.push(Problem::new(format!("{path}.{key}"), librdkafka_message(&error)));
                continue;
            }
            properties.insert(key, value);
        }
        Properties(properties)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_owned(), value.to_owned());
    }
}

/// librdkafka's own explanation, without the wrapper text (and never the value of a
/// secret, which librdkafka does not echo).
fn librdkafka_message(error: &rdkafka::error::KafkaError) -> String {
    match error {
        rdkafka::error::KafkaError::ClientConfig(_, message, _, _) => message.clone(),
        other => other.to_string(),
    }
}

/// Whether a property's value must never be logged.
pub fn is_secret(key: &str) -> bool {
    [
        "password",
        "secret",
        "jaas",
        "token",
        "credentials",
        ".pem",
        "key",
        "oauthbearer.config",
    ]
    .iter()
    .any(|marker| key.contains(marker))
}

impl fmt::Display for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in self.iter() {
            let shown = if is_secret(key) { "<redacted>" } else { value };
            map.entry(&key, &shown);
        }
        map.finish()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("input_topics", &self.input_topics)
            .field("output_topic", &self.output_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("content_mode", &self.content_mode)
            .field("common", &self.common)
            .field("consumer", &self.consumer)
            .field("producer", &self.producer)
            .finish()
    }
}

impl KafkaSettings {
    /// The consumer's properties: defaults, then `common`, then `consumer`, then managed.
    pub fn consumer_properties(&self) -> Properties {
        self.merged(&CONSUMER_DEFAULTS, &self.consumer, &MANAGED[..3])
    }

    /// The producer's properties: defaults, then `common`, then `producer`, then managed.
    pub fn producer_properties(&self) -> Properties {
        self.merged(&PRODUCER_DEFAULTS, &self.producer, &MANAGED[3..5])
    }

    fn merged(&self, defaults: &[(&str, &str)], role: &Properties, managed: &[(&str, &str)]) -> Properties {
        let mut merged = Properties::default();
        let layers = defaults
            .iter()
            .copied()
            .chain(self.common.iter())
            .chain(role.iter())
            .chain(managed.iter().copied());
        for (key, value) in layers {
            merged.set(key, value);
        }
        merged
    }

    /// Creates (and drops) both clients, so librdkafka's cross-property checks
    /// (`fetch.max.bytes` >= `message.max.bytes`, ...) run now rather than at start.
    /// librdkafka starts connecting in the background; nothing is sent.
    ///
    /// # Errors
    /// The first client librdkafka refuses, with its reason.
    pub fn check_clients(&self) -> Result<(), String> {
        ClientConfig::from(&self.consumer_properties())
            .create::<rdkafka::consumer::BaseConsumer>()
            .map_err(|error| format!("kafka.consumer: {error}"))?;
        ClientConfig::from(&self.producer_properties())
            .create::<rdkafka::producer::BaseProducer>()
            .map_err(|error| format!("kafka.producer: {error}"))?;
        Ok(())
    }
}

/// How long [`connect_producer`] waits for the cluster's answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects a producer before its first record by asking for `topic`'s metadata. Left
/// to itself, an idempotent producer asks for its producer id while only the bootstrap
/// connection exists, finds no broker up once that connection is replaced, and tries
/// again after librdkafka's 500 ms timer plus a connection: records sent meanwhile
/// wait (catching up on a backlog, the service delivered nothing for ~0.8 s, and
/// `loadgen`'s first records arrived that late after their timestamps).
///
/// Returns the error the broker gave for `topic` (it does not exist, ...), if any.
///
/// # Errors
/// The cluster did not answer within 5 s; the producer keeps trying on its own.
pub fn connect_producer<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
) -> KafkaResult<Option<RDKafkaErrorCode>> {
    let metadata = client.fetch_metadata(Some(topic), CONNECT_TIMEOUT)?;
    Ok(metadata
        .topics()
        .first()
        .and_then(|t| t.error())
        .map(RDKafkaErrorCode::from))
}

impl From<&Properties> for ClientConfig {
    fn from(properties: &Properties) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in properties.iter() {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(common: &[(&str, &str)], consumer: &[(&str, &str)]) -> KafkaSection {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        KafkaSection {
            common: map(common),
            consumer: map(consumer),
            ..KafkaSection::default()
        }
    }

    #[test]
    fn layers_defaults_common_role_and_managed_in_that_order() {
        let mut problems = Vec::new();
        let settings = section(
            &[
                ("bootstrap.servers", "file:9092"),
                ("bootstrap_servers", "env:9092"),
            ],
            &[("group.id", "journeys"), ("fetch_wait_max_ms", "5")],
        )
        .validate(&mut problems)
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let consumer = settings.consumer_properties();
        assert_eq!(consumer.get("bootstrap.servers"), Some("env:9092"));
        assert_eq!(consumer.get("group.id"), Some("journeys"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(
            consumer.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("enable.idempotence"), None);
        let producer = settings.producer_properties();
        assert_eq!(producer.get("bootstrap.servers"), Some("env:9092"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("group.id"), None);
    }

    #[test]
    fn managed_keys_and_bad_topics_are_all_reported() {
        let mut problems = Vec::new();
        let mut bad = section(
            &[("enable_idempotence", "false")],
            &[("enable.auto.offset.store", "true")],
        );
        bad.output_topic = "journey stages".into();
        bad.input_topics.push("journey stages".into());
        assert!(bad.validate(&mut problems).is_none());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kafka.input_topics[1]",
                "kafka.output_topic",
                "kafka.output_topic",
                "kafka.common.enable.idempotence",
                "kafka.consumer.enable.auto.offset.store",
            ]
        );
    }

    #[test]
    fn librdkafka_rejects_unknown_properties_and_bad_values_at_load() {
        let mut problems = Vec::new();
        let bad = section(&[("fetch.wait.max.mss", "5")], &[("session.timeout.ms", "soon")]);
        assert!(bad.validate(&mut problems).is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, "kafka.common.fetch.wait.max.mss");
        assert!(
            problems[0].message.contains("No such configuration property"),
            "{problems:?}"
        );
        assert_eq!(problems[1].path, "kafka.consumer.session.timeout.ms");
        assert!(problems[1].message.contains("Invalid value"), "{problems:?}");
    }

    #[test]
    fn tls_and_sasl_properties_are_supported() {
        let mut problems = Vec::new();
        let settings = section(
            &[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "svc"),
                ("sasl.password", "hunter2"),
                ("compression.type", "zstd"),
            ],
            &[],
        )
        .validate(&mut problems);
        assert!(settings.is_some(), "{problems:?}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let mut problems = Vec::new();
        let settings = section(
            &[
                ("sasl.password", "hunter2"),
                ("ssl.key.pem", "-----BEGIN"),
                ("sasl.username", "svc"),
            ],
            &[],
        )
        .validate(&mut problems)
        .unwrap();
        let printed = format!("{settings:?} {}", settings.consumer_properties());
        assert!(
            !printed.contains("hunter2") && !printed.contains("BEGIN"),
            "{printed}"
        );
        assert!(printed.contains("\"svc\""), "{printed}");
    }
}
