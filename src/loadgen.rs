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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};

use crate::core::EventTime;
use crate::generate::{generate_keyed, GeneratorSettings};
use crate::kafka::{connect_producer, Properties};

/// How long a record may wait for delivery before it counts as failed, and how long
/// the end of a run waits for the last ones.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Counts delivery reports; keeps the first error.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

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
/// (the service's producer properties: brokers, security, idempotence).
///
/// # Errors
/// librdkafka refuses the properties, a record cannot be queued, or records are not
/// delivered within a minute.
pub fn load(properties: &Properties, settings: &LoadSettings) -> Result<LoadSummary, LoadError> {
    let mut config = ClientConfig::from(properties);
    config
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        .set("statistics.interval.ms", "0");
    let producer: ThreadedProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(LoadError::Client)?;
    // Connected before the first record, so records do not wait for the producer id
    // (latency is measured from their timestamps). A missing topic or an unreachable
    // cluster surfaces as undelivered records, as before.
    if let Err(error) = connect_producer(producer.client(), &settings.topic) {
        tracing::warn!(%error, topic = %settings.topic, "cannot reach the cluster yet; producing anyway");
    }

    let started = Instant::now();
    let seconds_per_event = settings.rate.map(|rate| 1.0 / rate);
    let (mut events, mut unkeyed) = (0u64, 0u64);
    let mut failure = None;
    let stopped = generate_keyed(&settings.generator, |line, customer| {
        if settings.max_events.is_some_and(|max| events >= max)
            || settings.duration.is_some_and(|d| started.elapsed() >= d)
        {
            return ControlFlow::Break(());
        }
        if let Some(seconds) = seconds_per_event {
            // Pace against the start, not the previous send, so short stalls catch up.
            let due = started + Duration::from_secs_f64(events as f64 * seconds);
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
