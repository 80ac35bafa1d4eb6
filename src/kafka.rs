//! Kafka wiring: the `[kafka]` configuration section and every librdkafka property
//! decision the service makes, in both delivery modes.
//!
//! Two first-class keys name what every deployment sets: `kafka.brokers`
//! (`bootstrap.servers`) and `kafka.group_id` (`group.id`). Every other librdkafka
//! property passes through from three string maps: `[kafka.common]` (both clients),
//! `[kafka.consumer]` and `[kafka.producer]`; a property set both ways is a
//! configuration error naming both paths. stagestream sets a few defaults (listed in
//! [`CONSUMER_DEFAULTS`] and [`PRODUCER_DEFAULTS`]) that a map may override, and owns
//! the properties its delivery guarantee rests on ([`MANAGED`], with values that depend
//! on `delivery.mode`): setting one of those is a configuration error. Values are never
//! logged or printed for keys that look secret (see [`is_secret`]).
//!
//! Environment variables cannot hold dots portably, so an underscore in a map key
//! stands for a dot: `STAGESTREAM__KAFKA__COMMON__SASL_PASSWORD` sets `sasl.password`.
//! When a file key and an environment key name the same property, the environment wins.
//!
//! The pipeline (`crate::pipeline`) creates its clients from [`KafkaSettings::service_properties`];
//! `loadgen` and `check` use the same functions.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;

use crate::config::{DeliveryMode, DeliverySettings};
use crate::core::Problem;

/// How outputs are written to the output topic (CloudEvents Kafka protocol binding):
/// `output.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Value = the `data` JSON; attributes in `ce_*` headers.
    #[default]
    Binary,
    /// Value = the whole CloudEvent as JSON, the same line `replay` prints.
    Structured,
}

/// The `[kafka]` section as written.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct KafkaSection {
    brokers: Option<String>,
    group_id: Option<String>,
    common: BTreeMap<String, String>,
    consumer: BTreeMap<String, String>,
    producer: BTreeMap<String, String>,
}

/// The validated `[kafka]` section: how to reach the cluster and the pass-through
/// librdkafka properties. The topics live in `input`, `output` and `dlq`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `kafka.brokers`: `bootstrap.servers` for both clients, when set.
    pub brokers: Option<String>,
    /// `kafka.group_id`: the consumer's `group.id`, when set.
    pub group_id: Option<String>,
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
    // then sat idle ~0.7 s per cycle.
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

/// Properties the delivery guarantee rests on, set by stagestream in both modes
/// (`delivery.mode`): a map that sets one is a configuration error.
pub const MANAGED: [&str; 6] = [
    "enable.auto.offset.store",
    "enable.partition.eof",
    "enable.auto.commit",
    "enable.idempotence",
    "acks",
    "transactional.id",
];

/// The consumer's managed properties in `mode`: offsets are stored only once their
/// outputs are delivered (at-least-once) or committed with the transaction
/// (exactly-once, where librdkafka must not commit on its own).
fn consumer_managed(mode: DeliveryMode) -> [(&'static str, &'static str); 3] {
    let auto_commit = match mode {
        DeliveryMode::AtLeastOnce => "true",
        DeliveryMode::ExactlyOnce => "false",
    };
    [
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "true"),
        ("enable.auto.commit", auto_commit),
    ]
}

/// The producer's managed properties (`transactional.id` is added in exactly-once mode).
const PRODUCER_MANAGED: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];

/// Which first-class key stands for a librdkafka property, and the maps it may not
/// also appear in.
const FIRST_CLASS: [(&str, &str, &[&str]); 2] = [
    (
        "kafka.brokers",
        "bootstrap.servers",
        &["common", "consumer", "producer"],
    ),
    ("kafka.group_id", "group.id", &["common", "consumer"]),
];

impl KafkaSection {
    pub(crate) fn validate(self, problems: &mut Vec<Problem>) -> Option<KafkaSettings> {
        let before = problems.len();
        let common = Properties::from_section("kafka.common", self.common, problems);
        let consumer = Properties::from_section("kafka.consumer", self.consumer, problems);
        let producer = Properties::from_section("kafka.producer", self.producer, problems);
        let maps = [
            ("common", &common),
            ("consumer", &consumer),
            ("producer", &producer),
        ];
        for ((path, property, forbidden), value) in FIRST_CLASS.iter().zip([&self.brokers, &self.group_id]) {
            let Some(value) = value else { continue };
            if value.trim().is_empty() {
                problems.push(Problem::new(*path, "must not be empty"));
            }
            for (map, properties) in maps.iter().filter(|(map, _)| forbidden.contains(map)) {
                if properties.get(property).is_some() {
                    problems.push(Problem::new(
                        *path,
                        format!("sets {property}, and so does kafka.{map}.{property}: keep one of the two"),
                    ));
                }
            }
        }
        (problems.len() == before).then_some(KafkaSettings {
            brokers: self.brokers,
            group_id: self.group_id,
            common,
            consumer,
            producer,
        })
    }
}

/// Reports `topic` under `path` unless it is a legal Kafka topic name.
pub(crate) fn check_topic(path: &str, topic: &str, problems: &mut Vec<Problem>) {
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
            if MANAGED.contains(&key.as_str()) {
                let why = match key.as_str() {
                    "transactional.id" => {
                        "is set by stagestream in exactly-once mode: use delivery.transactional_id"
                    }
                    _ => "is managed by stagestream: its delivery guarantee (delivery.mode) rests on it",
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
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("common", &self.common)
            .field("consumer", &self.consumer)
            .field("producer", &self.producer)
            .finish()
    }
}

impl KafkaSettings {
    /// The consumer's properties in `mode`: defaults, `common`, `consumer`, the
    /// first-class keys, then the managed ones.
    pub fn consumer_properties(&self, mode: DeliveryMode) -> Properties {
        let mut properties = self.merged(&CONSUMER_DEFAULTS, &self.consumer);
        if let Some(group) = &self.group_id {
            properties.set("group.id", group);
        }
        for (key, value) in consumer_managed(mode) {
            properties.set(key, value);
        }
        properties
    }

    /// The producer's properties: defaults, `common`, `producer`, `kafka.brokers`,
    /// then the managed ones. With a `transactional_id` (exactly-once), the producer
    /// is transactional and a record's timeout fits inside a transaction's.
    pub fn producer_properties(&self, transactional_id: Option<&str>) -> Properties {
        let mut properties = self.merged(&PRODUCER_DEFAULTS, &self.producer);
        for (key, value) in PRODUCER_MANAGED {
            properties.set(key, value);
        }
        if let Some(id) = transactional_id {
            properties.set("transactional.id", id);
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms (60 s).
            if properties.get("message.timeout.ms") == Some("0") {
                properties.set("message.timeout.ms", "60000");
            }
        }
        properties
    }

    /// The service's two clients under `delivery`: (consumer, producer).
    pub fn service_properties(&self, delivery: &DeliverySettings) -> (Properties, Properties) {
        let consumer = self.consumer_properties(delivery.mode);
        let transactional_id = match delivery.mode {
            DeliveryMode::AtLeastOnce => None,
            DeliveryMode::ExactlyOnce => Some(transactional_id(delivery, &consumer)),
        };
        (consumer, self.producer_properties(transactional_id.as_deref()))
    }

    fn merged(&self, defaults: &[(&str, &str)], role: &Properties) -> Properties {
        let mut merged = Properties::default();
        for (key, value) in defaults
            .iter()
            .copied()
            .chain(self.common.iter())
            .chain(role.iter())
        {
            merged.set(key, value);
        }
        if let Some(brokers) = &self.brokers {
            merged.set("bootstrap.servers", brokers);
        }
        merged
    }

    /// Creates (and drops) both clients as `run` would, so librdkafka's
    /// cross-property checks (`fetch.max.bytes` >= `message.max.bytes`, ...) run now
    /// rather than at start. librdkafka starts connecting in the background; nothing
    /// is sent.
    ///
    /// # Errors
    /// The first client librdkafka refuses, with its reason.
    pub fn check_clients(&self, delivery: &DeliverySettings) -> Result<(), String> {
        let (consumer, producer) = self.service_properties(delivery);
        ClientConfig::from(&consumer)
            .create::<rdkafka::consumer::BaseConsumer>()
            .map_err(|error| format!("kafka.consumer: {error}"))?;
        ClientConfig::from(&producer)
            .create::<rdkafka::producer::BaseProducer>()
            .map_err(|error| format!("kafka.producer: {error}"))?;
        Ok(())
    }
}

/// `delivery.transactional_id`, else `<group.id>-<hostname>`: stable across restarts of
/// one instance (a StatefulSet pod keeps its hostname), distinct between instances.
fn transactional_id(delivery: &DeliverySettings, consumer: &Properties) -> String {
    if let Some(id) = &delivery.transactional_id {
        return id.clone();
    }
    let group = consumer.get("group.id").unwrap_or("stagestream");
    format!("{group}-{}", crate::config::hostname())
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

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn section(common: &[(&str, &str)], consumer: &[(&str, &str)]) -> KafkaSection {
        KafkaSection {
            common: map(common),
            consumer: map(consumer),
            ..KafkaSection::default()
        }
    }

    const AT_LEAST_ONCE: DeliverySettings = DeliverySettings {
        mode: DeliveryMode::AtLeastOnce,
        transactional_id: None,
    };

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
        let (consumer, producer) = settings.service_properties(&AT_LEAST_ONCE);
        assert_eq!(consumer.get("bootstrap.servers"), Some("env:9092"));
        assert_eq!(consumer.get("group.id"), Some("journeys"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(
            consumer.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("true"));
        assert_eq!(consumer.get("enable.idempotence"), None);
        assert_eq!(producer.get("bootstrap.servers"), Some("env:9092"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("transactional.id"), None);
        assert_eq!(producer.get("group.id"), None);
    }

    #[test]
    fn first_class_keys_reach_both_clients_and_defaults_fill_the_rest() {
        let mut problems = Vec::new();
        let settings = KafkaSection {
            brokers: Some("a:9092,b:9092".into()),
            group_id: Some("journeys".into()),
            ..KafkaSection::default()
        }
        .validate(&mut problems)
        .unwrap();
        let (consumer, producer) = settings.service_properties(&AT_LEAST_ONCE);
        assert_eq!(consumer.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(producer.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(consumer.get("group.id"), Some("journeys"));
        let defaults = KafkaSection::default().validate(&mut problems).unwrap();
        let (consumer, _) = defaults.service_properties(&AT_LEAST_ONCE);
        assert_eq!(consumer.get("bootstrap.servers"), Some("localhost:9092"));
        assert_eq!(consumer.get("group.id"), Some("stagestream"));
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_property_set_by_a_first_class_key_and_a_map_names_both_paths() {
        let mut problems = Vec::new();
        let twice = KafkaSection {
            brokers: Some("a:9092".into()),
            group_id: Some("g".into()),
            common: map(&[("bootstrap.servers", "b:9092")]),
            consumer: map(&[("group_id", "h")]),
            producer: map(&[("bootstrap.servers", "c:9092")]),
        };
        assert!(twice.validate(&mut problems).is_none());
        let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("kafka.brokers") && found[0].contains("kafka.common.bootstrap.servers"));
        assert!(
            found[1].starts_with("kafka.brokers") && found[1].contains("kafka.producer.bootstrap.servers")
        );
        assert!(found[2].starts_with("kafka.group_id") && found[2].contains("kafka.consumer.group.id"));
    }

    #[test]
    fn exactly_once_makes_the_producer_transactional_and_stops_auto_commit() {
        let mut problems = Vec::new();
        let settings = section(&[], &[("group.id", "journeys")])
            .validate(&mut problems)
            .unwrap();
        let delivery = DeliverySettings {
            mode: DeliveryMode::ExactlyOnce,
            transactional_id: Some("journeys-0".into()),
        };
        let (consumer, producer) = settings.service_properties(&delivery);
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(producer.get("transactional.id"), Some("journeys-0"));
        assert_eq!(producer.get("message.timeout.ms"), Some("60000"));
        let derived = DeliverySettings {
            transactional_id: None,
            ..delivery
        };
        let (_, producer) = settings.service_properties(&derived);
        let id = producer.get("transactional.id").unwrap();
        assert!(
            id.starts_with("journeys-") && id.len() > "journeys-".len(),
            "{id}"
        );
    }

    #[test]
    fn managed_keys_are_all_reported() {
        let mut problems = Vec::new();
        let bad = section(
            &[("enable_idempotence", "false"), ("transactional.id", "x")],
            &[("enable.auto.offset.store", "true")],
        );
        assert!(bad.validate(&mut problems).is_none());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kafka.common.transactional.id",
                "kafka.common.enable.idempotence",
                "kafka.consumer.enable.auto.offset.store",
            ]
        );
        assert!(
            problems[0].message.contains("delivery.transactional_id"),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_topic_names_are_reported_with_their_path() {
        let mut problems = Vec::new();
        check_topic("output.topic", "journey stages", &mut problems);
        check_topic("output.topic", "journey-stages", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "output.topic");
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
        let printed = format!(
            "{settings:?} {}",
            settings.consumer_properties(DeliveryMode::AtLeastOnce)
        );
        assert!(
            !printed.contains("hunter2") && !printed.contains("BEGIN"),
            "{printed}"
        );
        assert!(printed.contains("\"svc\""), "{printed}");
    }
}
