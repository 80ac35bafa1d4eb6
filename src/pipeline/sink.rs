//! The producing end of the owner: engine outputs rendered as CloudEvents (binary or
//! structured, `output.mode`) and dead letters, each sent with a [`DeliveryTag`] whose
//! report comes back through `super::hooks`.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use tracing::{debug, warn};

use super::hooks::{DeliveryTag, ProducerHooks};
use super::instruments::OutputCounters;
use super::PipelineError;
use crate::core::{Engine, Output, Record};
use crate::kafka::{self, OutputMode};
use crate::output::{Rendered, Renderer};
use crate::telemetry::labels::Produced;

/// Renders and produces outputs and dead letters.
pub(super) struct Sink {
    pub producer: BaseProducer<ProducerHooks>,
    pub renderer: Renderer,
    pub output_topic: String,
    pub dead_letter_topic: Option<String>,
    pub mode: OutputMode,
    /// Reused buffer for structured-mode values.
    pub value: Vec<u8>,
    pub counters: OutputCounters,
}

/// What a produced output is, for its delivery tag and counters.
pub(super) fn produced(output: &Output) -> Produced {
    match output {
        Output::StageChanged { .. } | Output::Migrated { .. } => Produced::StageChanged,
        Output::Inactive { .. } => Produced::CustomerInactive,
        Output::Reactivated { .. } => Produced::CustomerReactivated,
        Output::Expired { .. } => Produced::CustomerExpired,
        Output::Erased { .. } => Produced::CustomerErased,
    }
}

impl Sink {
    /// Connects the producer ([`kafka::connect_producer`]); says early when the output
    /// topic does not exist.
    pub fn connect(&self) {
        let topic = self.output_topic.as_str();
        match kafka::connect_producer(self.producer.client(), topic) {
            Ok(None) => debug!(topic, "producer connected"),
            Ok(Some(error)) => warn!(
                topic,
                %error,
                "the output topic is not available (yet); outputs wait in the producer"
            ),
            Err(error) => warn!(%error, topic, "the producer cannot reach the cluster yet; it keeps trying"),
        }
    }

    /// The topic a record of kind `sent` went to.
    pub fn topic_of(&self, sent: Produced) -> String {
        match sent {
            Produced::StageChanged
            | Produced::CustomerInactive
            | Produced::CustomerReactivated
            | Produced::CustomerExpired
            | Produced::CustomerErased => self.output_topic.clone(),
            Produced::DeadLetter => self.dead_letter_topic.clone().unwrap_or_default(),
            Produced::Shadow => unreachable!("the shadow's deliveries never fail the service"),
        }
    }

    /// Renders `output` (caused by `trigger`, if an event) and enqueues it.
    ///
    /// # Errors
    /// The producer refused the record for a reason other than a full queue.
    pub fn send_output(
        &mut self,
        engine: &Engine,
        output: &Output,
        trigger: Option<&Record<'_>>,
        tag: DeliveryTag,
    ) -> Result<(), PipelineError> {
        self.counters.record(output);
        let rendered = self.renderer.render(engine, output, trigger);
        let record = cloudevent_record(&self.output_topic, self.mode, &rendered, &mut self.value, tag);
        send(&self.producer, record)
    }

    /// Sends `message` to the dead-letter topic, if one is configured: original key,
    /// value and headers, plus Kafka Connect's error headers and the reason code.
    /// Returns whether a record was sent.
    ///
    /// # Errors
    /// As [`Sink::send_output`].
    pub fn send_dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
        tag: DeliveryTag,
    ) -> Result<bool, PipelineError> {
        let Some(topic) = &self.dead_letter_topic else {
            return Ok(false);
        };
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        for (key, value) in [
            ("__connect.errors.topic", message.topic()),
            ("__connect.errors.partition", &partition),
            ("__connect.errors.offset", &offset),
            ("__connect.errors.exception.message", detail),
            ("__connect.errors.reason", reason),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(tag)).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        send(&self.producer, record).map(|()| true)
    }
}

/// `rendered` as a record for `topic` in `mode` (structured mode writes the value into
/// `value`), keyed by its customer id.
pub(super) fn cloudevent_record<'a>(
    topic: &'a str,
    mode: OutputMode,
    rendered: &'a Rendered<'a>,
    value: &'a mut Vec<u8>,
    tag: DeliveryTag,
) -> BaseRecord<'a, str, [u8], Box<DeliveryTag>> {
    let (headers, value) = match mode {
        OutputMode::Binary => (binary_headers(rendered), rendered.data),
        OutputMode::Structured => {
            value.clear();
            rendered
                .write_structured(value)
                .expect("writing to a Vec cannot fail");
            value.pop(); // the line's newline
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json; charset=UTF-8"),
            });
            (headers, value.as_slice())
        }
    };
    BaseRecord::with_opaque_to(topic, Box::new(tag))
        .key(rendered.subject)
        .payload(value)
        .headers(headers)
}

fn binary_headers(rendered: &Rendered<'_>) -> OwnedHeaders {
    [
        ("ce_specversion", "1.0"),
        ("ce_id", rendered.id),
        ("ce_source", rendered.source),
        ("ce_type", rendered.kind),
        ("ce_subject", rendered.subject),
        ("ce_time", rendered.time),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new_with_capacity(7), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Enqueues `record`, waiting while the producer's queue is full (backpressure).
fn send<K, P>(
    producer: &BaseProducer<ProducerHooks>,
    mut record: BaseRecord<'_, K, P, Box<DeliveryTag>>,
) -> Result<(), PipelineError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(PipelineError::Produce(error)),
        }
    }
}
