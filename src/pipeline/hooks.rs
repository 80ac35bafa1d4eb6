//! librdkafka's callbacks, turned into typed messages for the owner.
//!
//! The consumer and producer contexts hold channels only. librdkafka calls them inside
//! `consumer.poll`, `producer.poll` and commit calls, all on the owner's thread; each
//! callback sends a [`ClientEvent`] (or, for delivery reports, a [`Delivered`]) that
//! the owner handles right after the call returns (`super::owner`). A rebalance is
//! therefore applied by the owner, not here: it restores or saves the partitions'
//! state first, then calls [`apply_rebalance`] (librdkafka waits for that call).

use std::sync::mpsc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use tracing::{debug, error, info, warn};

use super::PartitionKey;
use crate::telemetry::labels::{Client, Produced};

/// What a client callback reports to the owner.
#[derive(Debug)]
pub(super) enum ClientEvent {
    Rebalance(Rebalance),
    /// librdkafka's statistics (every `statistics.interval.ms`).
    Statistics(Client, Box<Statistics>),
    /// A consumer offset commit finished (automatic or explicit).
    Committed(KafkaResult<()>, TopicPartitionList),
}

/// A rebalance the owner must act on, then apply with [`apply_rebalance`].
#[derive(Debug)]
pub(super) enum Rebalance {
    /// Partitions newly assigned; librdkafka waits for their start offsets.
    Assign(TopicPartitionList),
    /// Partitions taken away (lost, when the session timed out).
    Revoke(TopicPartitionList),
    Error(KafkaError),
}

/// Identifies the message an output was caused by, carried through delivery.
#[derive(Clone, Copy, Debug)]
pub(super) struct DeliveryTag {
    pub partition: PartitionKey,
    /// The assignment it was produced under: reports for a partition that was revoked
    /// and assigned again in between are not counted against the new assignment.
    pub epoch: u64,
    pub offset: i64,
    pub sent: Produced,
    /// When the message that caused it was polled (microseconds before the record was
    /// enqueued; one clock read serves both), for `stagestream_produce_latency_seconds`.
    pub enqueued_at: Instant,
}

/// A delivery report, as the producer hook forwards it to the owner.
#[derive(Debug)]
pub(super) struct Delivered {
    pub tag: DeliveryTag,
    pub error: Option<KafkaError>,
}

/// The consumer's context: one channel to the owner.
pub(super) struct ConsumerHooks {
    pub events: mpsc::Sender<ClientEvent>,
}

/// The producer's context: delivery reports on their own channel (the hot path), the
/// rest beside the consumer's.
pub(super) struct ProducerHooks {
    pub deliveries: mpsc::Sender<Delivered>,
    pub events: mpsc::Sender<ClientEvent>,
}

impl ClientContext for ConsumerHooks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(Client::Consumer, level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        let _ = self
            .events
            .send(ClientEvent::Statistics(Client::Consumer, Box::new(statistics)));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition also arrives as a message error, handled by the owner loop.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            warn!(client = "consumer", %error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for ConsumerHooks {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, list: &mut TopicPartitionList) {
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(list.clone()),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(list.clone()),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        if let Err(mpsc::SendError(ClientEvent::Rebalance(rebalance))) =
            self.events.send(ClientEvent::Rebalance(rebalance))
        {
            // The owner is gone: the consumer is closing after the final snapshots and
            // commit, so there is nothing left to hand over.
            apply_rebalance(consumer, &rebalance);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let _ = self.events.send(ClientEvent::Committed(result, offsets.clone()));
    }
}

/// Tells librdkafka the rebalance was handled: assigns (with the start offsets set in
/// the list) or unassigns, incrementally under the cooperative protocol.
pub(super) fn apply_rebalance<C: ConsumerContext>(consumer: &BaseConsumer<C>, rebalance: &Rebalance) {
    let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
    let applied = match rebalance {
        Rebalance::Assign(list) if cooperative => consumer.incremental_assign(list),
        Rebalance::Assign(list) => consumer.assign(list),
        Rebalance::Revoke(list) if cooperative => consumer.incremental_unassign(list),
        Rebalance::Revoke(_) | Rebalance::Error(_) => consumer.unassign(),
    };
    if let Err(error) = applied {
        error!(%error, "librdkafka refused the rebalance");
    }
}

impl ClientContext for ProducerHooks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(Client::Producer, level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        let _ = self
            .events
            .send(ClientEvent::Statistics(Client::Producer, Box::new(statistics)));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(client = "producer", %error, reason, "librdkafka error");
    }
}

impl ProducerContext for ProducerHooks {
    type DeliveryOpaque = Box<DeliveryTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<DeliveryTag>) {
        let error = result.as_ref().err().map(|(error, _)| error.clone());
        // The receiver lives as long as the owner of this producer.
        let _ = self.deliveries.send(Delivered { tag: *tag, error });
    }
}

/// The most detailed level librdkafka should log at: what [`log_librdkafka`] would let
/// through. rdkafka takes it from the `log` crate by default, which nothing here
/// initialises (logs go through `tracing`), and then passes errors only: librdkafka's
/// warnings were dropped, and the `debug` property printed nothing.
pub(super) fn librdkafka_log_level() -> rdkafka::config::RDKafkaLogLevel {
    use rdkafka::config::RDKafkaLogLevel as Level;
    if tracing::enabled!(tracing::Level::DEBUG) {
        Level::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        Level::Info
    } else if tracing::enabled!(tracing::Level::WARN) {
        Level::Warning
    } else {
        Level::Error
    }
}

/// One log line per librdkafka log message. Its text goes in `text`: a field named
/// `message` would repeat the JSON line's own `message` key (the event's, `librdkafka`),
/// and log pipelines keep only one of the two.
fn log_librdkafka(client: Client, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    let client = client.as_str();
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            error!(client, facility, text = message, "librdkafka")
        }
        Level::Warning => warn!(client, facility, text = message, "librdkafka"),
        Level::Notice | Level::Info => info!(client, facility, text = message, "librdkafka"),
        Level::Debug => debug!(client, facility, text = message, "librdkafka"),
    }
}
