//! The shadow model (`[shadow]`, docs/operations.md "Shadow runs"): a second engine
//! per assigned partition, fed the same records as the live one, its outputs rendered
//! under its own model and sent by a producer of its own to `shadow.topic`.
//!
//! Nothing of it reaches the live side: its records never enter a partition's ledger
//! (offsets never wait for them), its state is never snapshotted, and a failed or
//! dropped delivery is counted (`produced_messages_total{type="shadow"}`) and logged,
//! never fatal. At each assignment its state is rebuilt by carrying the live snapshot
//! into the shadow model, as an upgrade to it would (`Engine::restore`).

use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use tracing::{info, warn};

use super::events::RateLimited;
use super::hooks::{DeliveryTag, ProducerHooks};
use super::instruments::OutputCounters;
use super::PartitionKey;
use crate::config::{Settings, ShadowSettings};
use crate::core::{Engine, EventTime, Output, Record};
use crate::decode::{decode_with_default_time, FallbackTime};
use crate::kafka::OutputMode;
use crate::output::Renderer;
use crate::snapshot::{self, SnapshotStore};
use crate::telemetry::labels::{ModelRole, Outcome, Produced};
use crate::telemetry::Metrics;

/// The shadow's producer, renderer and counters; its engines live beside the live
/// ones in each `PartitionState`.
pub(super) struct Shadow {
    pub producer: BaseProducer<ProducerHooks>,
    settings: ShadowSettings,
    renderer: Renderer,
    counters: OutputCounters,
    mode: OutputMode,
    /// Reused for structured-mode values.
    value: Vec<u8>,
    /// Reused for each record's outputs.
    outputs: Vec<Output>,
    /// Whether a record decoded for the live model serves the shadow as it is (both
    /// keep the same properties); otherwise the payload is decoded again.
    decodes_like_live: bool,
    /// Records the producer's full queue refused: dropped, not waited for.
    dropped: prometheus::IntCounter,
    failures: RateLimited,
}

impl Shadow {
    pub fn new(
        settings: &Settings,
        shadow: &ShadowSettings,
        producer: BaseProducer<ProducerHooks>,
        metrics: &Metrics,
    ) -> Self {
        Shadow {
            producer,
            renderer: Renderer::new(settings.output.source.clone(), &shadow.model),
            counters: OutputCounters::new(metrics, &shadow.model, ModelRole::Shadow),
            mode: settings.output.mode,
            value: Vec::with_capacity(1024),
            outputs: Vec::new(),
            decodes_like_live: shadow.model.keeps_properties_of(&settings.model),
            dropped: metrics
                .produced
                .with_label_values(&[Produced::Shadow.as_str(), Outcome::Error.as_str()]),
            failures: RateLimited::new(std::time::Duration::from_secs(10)),
            settings: shadow.clone(),
        }
    }

    /// The shadow engine of a newly assigned partition whose live state was restored
    /// to just before `live_offset`: the same snapshot carried into the shadow model,
    /// or an empty engine when there is none or it cannot be carried (logged). What
    /// carrying it over caused is sent.
    pub fn restore(
        &mut self,
        store: Option<&dyn SnapshotStore>,
        (topic, key): (&str, PartitionKey),
        live_offset: Option<i64>,
        epoch: u64,
    ) -> Engine {
        let empty = || Engine::new(Arc::clone(&self.settings.model), self.settings.engine);
        let (Some(store), Some(live_offset)) = (store, live_offset) else {
            return empty();
        };
        let restored = match snapshot::restore_read_only(
            store,
            topic,
            key.partition,
            &self.settings.model,
            self.settings.engine,
        ) {
            Ok(restored) if restored.offset == Some(live_offset) => restored,
            Ok(restored) => {
                warn!(topic, partition = key.partition, live = live_offset, shadow = ?restored.offset, "the shadow found another snapshot than the live model; it starts empty");
                return empty();
            }
            Err(error) => {
                warn!(topic, partition = key.partition, %error, "the live snapshot cannot be carried into the shadow model; it starts empty");
                return empty();
            }
        };
        info!(
            topic,
            partition = key.partition,
            customers = restored.engine.customer_count(),
            outputs = restored.outputs.len(),
            "shadow state carried over from the live snapshot"
        );
        self.outputs = restored.outputs;
        self.send(&restored.engine, None, shadow_tag(key, epoch, live_offset - 1));
        restored.engine
    }

    /// Applies `record` (decoded for the live model from `payload`) to the shadow
    /// `engine`, and sends what it caused unless `send` is false (a message replayed
    /// without output).
    pub fn apply(
        &mut self,
        engine: &mut Engine,
        record: &Record<'_>,
        payload: Option<&[u8]>,
        fallback: FallbackTime,
        send: bool,
        tag: DeliveryTag,
    ) {
        self.outputs.clear();
        let redecoded;
        let record = match payload {
            Some(payload) if !self.decodes_like_live => {
                let Ok(own) = decode_with_default_time(payload, &self.settings.model, fallback) else {
                    return;
                };
                redecoded = own;
                &redecoded
            }
            _ => record,
        };
        match record {
            Record::Event(event) => {
                engine.on_event(event, &mut self.outputs);
            }
            Record::Erase(erase) => engine.erase(erase, &mut self.outputs),
        }
        if send {
            self.send(engine, Some(record), tag);
        }
    }

    /// Moves the shadow `engine`'s clock to `to` and sends what fired.
    pub fn advance(&mut self, engine: &mut Engine, to: EventTime, tag: DeliveryTag) {
        self.outputs.clear();
        engine.advance_to(to, &mut self.outputs);
        self.send(engine, None, tag);
    }

    /// Sends `self.outputs` to the shadow topic, dropping (and counting) what the
    /// producer's full queue refuses rather than holding the live model up.
    fn send(&mut self, engine: &Engine, trigger: Option<&Record<'_>>, tag: DeliveryTag) {
        for output in &self.outputs {
            self.counters.record(output);
            let rendered = self.renderer.render(engine, output, trigger);
            let record = super::sink::cloudevent_record(
                &self.settings.topic,
                self.mode,
                &rendered,
                &mut self.value,
                tag,
            );
            match self.producer.send(record) {
                Ok(()) => {}
                Err((error, _)) => {
                    self.dropped.inc();
                    let full = matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                    self.failures
                        .warn(|suppressed| warn!(%error, full, suppressed, "a shadow output was dropped"));
                }
            }
        }
    }

    /// Says early when the shadow topic does not exist (its outputs would be dropped).
    pub fn connect(&self) {
        let topic = self.settings.topic.as_str();
        match crate::kafka::connect_producer(self.producer.client(), topic) {
            Ok(None) => {}
            Ok(Some(error)) => warn!(topic, %error, "the shadow topic is not available (yet)"),
            Err(error) => warn!(topic, %error, "the shadow's producer cannot reach the cluster yet"),
        }
    }

    /// A shadow record was not delivered: logged (rate-limited); the live side goes on.
    pub fn delivery_failed(&mut self, error: &KafkaError) {
        let topic = &self.settings.topic;
        self.failures
            .warn(|suppressed| warn!(%error, topic, suppressed, "a shadow output was not delivered"));
    }
}

/// The tag of a shadow record: the partition and message it came from, for the log.
pub(super) fn shadow_tag(partition: PartitionKey, epoch: u64, offset: i64) -> DeliveryTag {
    DeliveryTag {
        partition,
        epoch,
        offset,
        sent: Produced::Shadow,
        enqueued_at: Instant::now(),
    }
}
