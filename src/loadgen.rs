//! `stagestream loadgen`: the generated stream produced to a Kafka topic.
//!
//! The same realistic stream as the demo ([`crate::generate`]), each line keyed by its
//! customer id as a well-behaved upstream keys it (deliberately invalid lines go
//! unkeyed, to any partition), offered at a target rate or as fast as the broker takes
//! it, until the stream ends, a wall-clock duration passes or an event count is reached.
//! Event time ends now unless a start is given: the stream is history for the service
//! to catch up on. Each
//! record's Kafka timestamp is the moment it was produced; `scripts/bench-e2e.sh`
//! measures event-to-output latency from it.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Statistics};

use crate::core::EventTime;
use crate::generate::{generate_keyed, GeneratorSettings};
use crate::kafka::{connect_producer, Properties};
use crate::partitioner::Partitioner;

/// How long a record may wait for delivery before it counts as failed, and how long
/// the end of a run waits for the last ones.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the first record waits for an idempotent producer's id.
const PRODUCER_ID_WAIT: Duration = Duration::from_secs(10);
/// librdkafka's statistics interval, which is how the producer id's arrival is seen.
const STATISTICS_INTERVAL: &str = "100";

#[derive(Clone, Debug)]
pub struct LoadSettings {
    pub topic: String,
    pub generator: GeneratorSettings,
    /// Events offered per second; `None`: as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Stop after this long (wall clock).
    pub duration: Option<Duration>,
    /// Stop after this many events.
    pub max_events: Option<u64>,
}

/// What a run produced.
#[derive(Debug)]
pub struct LoadSummary {
    /// Records handed to the producer (every one delivered, or the run fails).
    pub events: u64,
    /// Of those, deliberately invalid lines sent without a key.
    pub unkeyed: u64,
    /// From the first record to the last delivery.
    pub elapsed: Duration,
    /// The generated stream ended before the duration or event count was reached.
    pub stream_ended: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("kafka producer: {0}")]
    Client(KafkaError),
    #[error("producing to {topic}: {error}")]
    Produce { topic: String, error: KafkaError },
    #[error("{failed} of {events} records were not delivered (first error: {first})")]
    Undelivered { failed: u64, events: u64, first: String },
}

/// Counts delivery reports; keeps the first error; sees the producer id arrive.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// librdkafka's statistics said the idempotent producer has its id.
    producer_id_assigned: AtomicBool,
}

impl ClientContext for Deliveries {
    fn stats(&self, statistics: Statistics) {
        if statistics.eos.is_some_and(|eos| eos.idemp_state == "Assigned") {
            self.producer_id_assigned.store(true, Ordering::Relaxed);
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| error.to_string());
        }
    }
}

/// Produces the generated stream to `settings.topic` with the producer `properties`
/// (the service's producer properties: brokers, security, idempotence), keyed by
/// customer id with `partitioner` (`input.partitioner`, which lookups rely on).
///
/// # Errors
/// librdkafka refuses the properties, a record cannot be queued, or records are not
/// delivered within a minute.
pub fn load(
    properties: &Properties,
    partitioner: Partitioner,
    settings: &LoadSettings,
) -> Result<LoadSummary, LoadError> {
    let mut config = ClientConfig::from(properties);
    config
        .set("partitioner", partitioner.name())
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        .set("statistics.interval.ms", STATISTICS_INTERVAL);
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(LoadError::Client)?;
    // Connected, and for an idempotent producer holding its id, before the first
    // record: latency is measured from the records' timestamps, and records sent
    // before the id arrives wait for it (0.4-1 s in some runs against tansu, where
    // librdkafka's first request for the id can find no broker up and retries after
    // 500 ms). A missing topic or an unreachable cluster surfaces as undelivered
    // records, as before.
    match connect_producer(producer.client(), &settings.topic) {
        Err(error) => {
            tracing::warn!(%error, topic = %settings.topic, "cannot reach the cluster yet; producing anyway");
        }
        Ok(_) if properties.get("enable.idempotence") == Some("true") => {
            let deadline = Instant::now() + PRODUCER_ID_WAIT;
            while !producer.context().producer_id_assigned.load(Ordering::Relaxed) {
                if Instant::now() >= deadline {
                    tracing::warn!(waited = ?PRODUCER_ID_WAIT, "the producer has no producer id yet; producing anyway");
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(_) => {}
    }

    let started = Instant::now();
    let seconds_per_event = settings.rate.map(|rate| 1.0 / rate);
    let (mut events, mut unkeyed) = (0u64, 0u64);
    let mut failure = None;
    let stopped = generate_keyed(&settings.generator, |line, customer| {
        // Pace against the start, not the previous send, so short stalls catch up.
        let due = seconds_per_event.map(|seconds| started + Duration::from_secs_f64(events as f64 * seconds));
        // Neither after the duration's end nor, paced, due at or after it: checking only
        // the clock, before sleeping until the event was due, let one more through.
        let time_up = |d: Duration| started.elapsed() >= d || due.is_some_and(|due| due >= started + d);
        if settings.max_events.is_some_and(|max| events >= max) || settings.duration.is_some_and(time_up) {
            return ControlFlow::Break(());
        }
        if let Some(due) = due {
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let mut record = BaseRecord::to(&settings.topic).payload(line);
        if let Some(customer) = customer {
            record = record.key(customer);
        }
        while let Err((error, returned)) = producer.send(record) {
            if !matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                failure = Some(error);
                return ControlFlow::Break(());
            }
            record = returned;
            std::thread::sleep(Duration::from_millis(1));
        }
        events += 1;
        unkeyed += u64::from(customer.is_none());
        ControlFlow::Continue(())
    });
    if let Some(error) = failure {
        return Err(LoadError::Produce {
            topic: settings.topic.clone(),
            error,
        });
    }
    // Whatever is still queued after the wait counts as undelivered.
    let unflushed = match producer.flush(DELIVERY_TIMEOUT) {
        Ok(()) => 0,
        Err(_) => producer.in_flight_count().max(0) as u64,
    };
    let elapsed = started.elapsed();
    let context = producer.context();
    let failed = context.failed.load(Ordering::Relaxed) + unflushed;
    if failed > 0 {
        let first = context
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        return Err(LoadError::Undelivered {
            failed,
            events,
            first: first.unwrap_or_else(|| "delivery timed out".into()),
        });
    }
    let count_reached = settings.max_events.is_some_and(|max| events >= max);
    Ok(LoadSummary {
        events,
        unkeyed,
        elapsed,
        stream_ended: stopped.is_continue()
            && !count_reached
            && (settings.max_events.is_some() || settings.duration.is_some()),
    })
}

/// The demo's stream: `customers` shoppers over `days` from `start` (default: ending
/// now), with 0.2% invalid lines and 0.5% client retries.
pub fn demo_stream(customers: u32, days: u32, start: Option<EventTime>, seed: u64) -> GeneratorSettings {
    let start = start.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        EventTime::from_millis(now - i64::from(days) * 86_400_000)
    });
    GeneratorSettings {
        customers,
        days,
        start,
        seed,
        invalid_ratio: 0.002,
        duplicate_ratio: 0.005,
    }
}
