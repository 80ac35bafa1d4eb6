//! `stagestream run`: the live service, one owner loop around one engine per partition.
//!
//! ```text
//! consumer.poll -> decode -> Engine::on_event (the message's partition) -> Output
//!     -> Sink (render, produce with a delivery tag) -> delivery report
//!     -> OffsetTracker -> offsets stored -> committed (auto-commit, revoke, shutdown)
//! wall clock (every TICK, caught-up partitions only) -> Engine::advance_to -> Output -> ...
//! ```
//!
//! One thread owns everything. librdkafka runs the rebalance callback *inside*
//! `consumer.poll`, on this same thread, so the partition state lives in a [`Mutex`]
//! in the consumer context: the loop takes the lock only between polls, the callback
//! only during one, so it is never contended; it exists because librdkafka requires a
//! `Sync` context. Delivery reports arrive the same way inside `producer.poll` and
//! become `Delivered` messages on a channel the owner drains.
//!
//! Guarantees (docs/semantics.md, "Recovery and delivery"):
//! - at-least-once: an input offset counts as safe once every output it caused is
//!   delivered ([`offsets`]). With `snapshot.dir`, state is saved per partition
//!   (`snapshots`) only up to a safe offset and only such a snapshot's offset is
//!   committed; without it, the safe offset itself is committed and every assigned
//!   partition is rebuilt from its earliest retained offset. On assign, consumption
//!   starts at the newest valid snapshot's offset, and the outputs of messages below the
//!   committed offset (delivered before) are not sent again.
//! - exactly-once: outputs and input offsets are committed together in one Kafka
//!   transaction every `TRANSACTION_EVERY`; a snapshot is written only up to a
//!   committed transaction. A failed transaction is aborted (when librdkafka says it
//!   must be) and the service stops: the restart rewinds to the committed state.
//!
//! Outputs carry content-derived ids, so anything emitted again is recognisable
//! downstream.
//!
//! Telemetry: the loop counts what it does into `Control::metrics` (`instruments`
//! holds the mapping), refreshes the partition gauges every tick, and publishes
//! readiness in [`Control`]; the HTTP endpoint (`crate::telemetry::http`) reads both.

mod instruments;
pub mod offsets;
mod snapshots;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::{DeliveryMode, Settings};
use crate::core::{Engine, Event, EventTime, Output, Verdict};
use crate::decode::{decode_with_default_time, RejectReason};
use crate::kafka::{self, ContentMode};
use crate::output::{Rendered, Renderer};
use crate::snapshot::{self, DirectoryStore, SnapshotError, SnapshotStore};
use crate::telemetry::Metrics;
use instruments::{
    count_commit, record_client_statistics, Consumed, MessageInstruments, OutputCounters, PartitionLabels,
    CONSUMED_RESULTS,
};
use offsets::OffsetTracker;
use snapshots::{encode_into_file, Done, Pending, Progress, SnapshotThread, Ticket};

/// How often the wall clock advances caught-up partitions: inactivity fires within
/// this (plus `time.firing_delay`) of its deadline.
const TICK: Duration = Duration::from_millis(100);
/// The longest a poll blocks, so shutdown and ticks are never late by more.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// Messages handled between services of the producer and the offset store.
const SERVICE_EVERY: u32 = 256;
/// How long one service may spend copying snapshot images: the longest a snapshot
/// stops consumption (plus one block of customers, well under a millisecond).
const CAPTURE_STEP: Duration = Duration::from_millis(2);
/// How long stopping waits for the consumer to leave its group.
const LEAVE_GROUP_WAIT: Duration = Duration::from_secs(5);
/// Exactly-once: how often the open transaction (outputs + input offsets) is committed.
const TRANSACTION_EVERY: Duration = Duration::from_millis(100);
/// Exactly-once: the longest a transaction call may block.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the service stopped with an error. None is retriable in-process: restart it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot create the Kafka {role}: {source}")]
    Client {
        role: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
    #[error("an output could not be delivered to {topic}: {source}")]
    Delivery {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("the producer failed: {0}")]
    Produce(#[source] KafkaError),
    #[error("{undelivered} outputs were still undelivered when the shutdown grace period ended")]
    Undelivered { undelivered: u64 },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot start the snapshot thread: {0}")]
    SnapshotThread(#[source] std::io::Error),
    /// Exactly-once: the transaction failed (aborted if librdkafka said so); a restart
    /// resumes from the last committed transaction.
    #[error("the Kafka transaction failed: {0}; restart to resume from the last committed transaction")]
    Transaction(#[source] KafkaError),
}

/// Shared between the service thread and whoever runs it (main, the demo, tests):
/// the stop switch, readiness, and the metrics the service keeps.
#[derive(Debug, Default)]
pub struct Control {
    /// Set to stop: the loop stops fetching, delivers, commits and returns.
    pub shutdown: AtomicBool,
    /// Partitions assigned and restored, every one caught up at least once, and none
    /// lagging by more than `http.ready_max_lag` (when the lag is known).
    pub ready: AtomicBool,
    /// Partitions assigned and every one of them caught up at least once.
    pub caught_up: AtomicBool,
    /// The largest lag over the assigned partitions in messages, -1 until known.
    pub max_lag: AtomicI64,
    /// `http.ready_max_lag`, for the `/readyz` body.
    pub ready_max_lag: AtomicU64,
    pub metrics: Metrics,
}

impl Control {
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Input messages handled, valid or not.
    pub fn consumed(&self) -> u64 {
        CONSUMED_RESULTS
            .iter()
            .map(|result| self.metrics.events_consumed.with_label_values(&[*result]).get())
            .sum()
    }

    /// Outputs (CloudEvents) delivered to the output topic.
    pub fn delivered(&self) -> u64 {
        [Sent::StageChanged, Sent::CustomerInactive]
            .iter()
            .map(|sent| {
                self.metrics
                    .produced
                    .with_label_values(&[sent.label(), "ok"])
                    .get()
            })
            .sum()
    }

    /// Outputs (CloudEvents) handed to the producer: once every one is delivered,
    /// [`Control::delivered`] equals this.
    pub fn outputs_sent(&self) -> u64 {
        fn total(counter: &prometheus::IntCounterVec) -> u64 {
            prometheus::core::Collector::collect(counter)
                .iter()
                .flat_map(|family| family.get_metric())
                .map(|metric| metric.get_counter().get_value() as u64)
                .sum()
        }
        total(&self.metrics.transitions) + total(&self.metrics.inactivity_events)
    }

    /// Messages delivered to the dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.metrics.dead_lettered.get()
    }

    /// Snapshots written.
    pub fn snapshots_written(&self) -> u64 {
        self.metrics.snapshots.with_label_values(&["ok"]).get()
    }
}

/// The invalid-event reason of an event stamped too far ahead of the wall clock.
const FUTURE_TIMESTAMP: &str = "future_timestamp";

/// Runs the service until `control.shutdown` is set or a fatal error occurs.
///
/// # Errors
/// A client cannot be created, a subscription fails, an output cannot be delivered, or
/// the grace period ends with outputs undelivered. Offsets of undelivered outputs are
/// never committed, so a restart re-reads their events.
pub fn run(settings: &Settings, control: Arc<Control>) -> Result<(), PipelineError> {
    let reasons: Vec<&str> = RejectReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain([FUTURE_TIMESTAMP])
        .collect();
    control.metrics.initialise(&settings.model, &reasons);
    control.max_lag.store(-1, Ordering::SeqCst);
    control
        .ready_max_lag
        .store(settings.http.ready_max_lag, Ordering::SeqCst);
    let (deliveries_tx, deliveries) = mpsc::channel();
    let exactly_once = settings.delivery.mode == DeliveryMode::ExactlyOnce;
    let mut producer_properties = settings.kafka.producer_properties();
    let mut consumer_properties = settings.kafka.consumer_properties();
    if exactly_once {
        let id = transactional_id(settings);
        info!(transactional_id = %id, "exactly-once: outputs and offsets commit in transactions");
        producer_properties.set("transactional.id", &id);
        // librdkafka requires message.timeout.ms <= transaction.timeout.ms (60 s).
        if producer_properties.get("message.timeout.ms") == Some("0") {
            producer_properties.set("message.timeout.ms", "60000");
        }
        consumer_properties.set("enable.auto.commit", "false");
    }
    info!(properties = %producer_properties, "creating producer");
    let producer: BaseProducer<ProducerHooks> = ClientConfig::from(&producer_properties)
        .set_log_level(librdkafka_log_level())
        .create_with_context(ProducerHooks {
            deliveries_tx,
            control: control.clone(),
        })
        .map_err(|source| PipelineError::Client {
            role: "producer",
            source,
        })?;
    if exactly_once {
        producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .and_then(|()| producer.begin_transaction())
            .map_err(PipelineError::Transaction)?;
    }
    let store: Option<Arc<dyn SnapshotStore>> = settings.snapshot.as_ref().map(|snapshot| {
        info!(dir = %snapshot.dir.display(), interval = ?snapshot.interval.as_duration(), keep = snapshot.keep, "snapshots enabled");
        Arc::new(DirectoryStore::new(&snapshot.dir, snapshot.keep)) as Arc<dyn SnapshotStore>
    });
    if store.is_none() {
        warn!("no snapshot.dir: every assigned partition is rebuilt from its earliest retained offset");
    }
    let snapshot_thread = store
        .clone()
        .map(SnapshotThread::start)
        .transpose()
        .map_err(PipelineError::SnapshotThread)?;
    let worker = Worker {
        transaction: exactly_once.then(|| Transaction {
            committed_at: Instant::now(),
            work: false,
        }),
        store,
        snapshot_thread,
        partitions: BTreeMap::new(),
        sink: Sink {
            producer,
            renderer: Renderer::new(settings.output.source.clone(), &settings.model),
            output_topic: settings.kafka.output_topic.clone(),
            dead_letter_topic: settings.kafka.dead_letter_topic.clone(),
            content_mode: settings.kafka.content_mode,
            value: Vec::with_capacity(1024),
            counters: OutputCounters::new(&control.metrics, &settings.model),
        },
        settings: settings.clone(),
        deliveries,
        next_epoch: 0,
        outputs: Vec::new(),
        fatal: None,
        control: control.clone(),
        invalid_warnings: RateLimited::new(Duration::from_secs(10)),
        instruments: MessageInstruments::new(&control.metrics, Sent::ALL.map(Sent::label)),
        deadline: None,
    };
    info!(properties = %consumer_properties, "creating consumer");
    let consumer: BaseConsumer<ConsumerHooks> = ClientConfig::from(&consumer_properties)
        .set_log_level(librdkafka_log_level())
        .create_with_context(ConsumerHooks {
            worker: Mutex::new(worker),
            control: control.clone(),
        })
        .map_err(|source| PipelineError::Client {
            role: "consumer",
            source,
        })?;
    wait_for_broker(&consumer, &control);
    if !control.stopping() {
        consumer.context().lock().sink.connect();
    }
    let topics: Vec<&str> = settings.kafka.input_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| PipelineError::Subscribe {
            topics: settings.kafka.input_topics.clone(),
            source,
        })?;
    info!(topics = ?topics, output = %settings.kafka.output_topic, "consuming");
    let result = owner_loop(&consumer, &control);
    let grace = settings.live.shutdown_grace.as_duration();
    let finished = consumer.context().lock().finish(&consumer, grace);
    leave_group(consumer);
    control.ready.store(false, Ordering::SeqCst);
    control.metrics.ready.set(0);
    result.and(finished)
}

/// Closes the consumer, which leaves the group (its final revoke finds nothing in
/// flight). Closing waits for the group coordinator, which can take a whole rebalance
/// round when other members come and go (seen with tansu: over 20 s). Everything is
/// delivered, snapshotted and committed by now, so after [`LEAVE_GROUP_WAIT`] the
/// service stops anyway and the broker drops the member when its session times out.
fn leave_group(consumer: BaseConsumer<ConsumerHooks>) {
    let (left_tx, left) = mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("stagestream-leave-group".into())
        .spawn(move || {
            drop(consumer);
            let _ = left_tx.send(());
        });
    // If the thread cannot start, the closure (and the consumer) was dropped here.
    if closing.is_ok() && left.recv_timeout(LEAVE_GROUP_WAIT).is_err() {
        warn!(
            waited = ?LEAVE_GROUP_WAIT,
            "leaving the consumer group is slow; stopping anyway (the broker drops this member when its session times out)"
        );
    }
}

fn owner_loop(consumer: &BaseConsumer<ConsumerHooks>, control: &Control) -> Result<(), PipelineError> {
    let mut wall = WallClock::read();
    let mut last_tick = wall.anchor;
    let mut since_service = 0u32;
    let mut poll_timeout = POLL_TIMEOUT;
    let mut busy = false;
    while !control.stopping() {
        // While messages keep coming, a poll does not wait: librdkafka reads the clock
        // to set up a timeout, one of the six reads a message costs.
        let polled = consumer.poll(if busy { Duration::ZERO } else { poll_timeout });
        // One monotonic reading per message serves the wall clock, the tick, the
        // produce latency and the start of the processing time: clock reads were 14% of
        // the owner thread's samples in a drain (~30 ns each; librdkafka's poll makes
        // three more).
        let polled_at = Instant::now();
        let mut worker = consumer.context().lock();
        let idle = match polled {
            Some(Ok(message)) => {
                worker.on_message(&message, wall.at(polled_at), polled_at);
                false
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                worker.on_partition_end(partition, wall.at(polled_at));
                true
            }
            Some(Err(error)) => {
                // Transport errors also reach the error callback (logged twice), but
                // some, such as a missing topic, arrive only here.
                warn!(%error, "consumer error (librdkafka retries on its own)");
                true
            }
            None => true,
        };
        busy = !idle;
        since_service += 1;
        let tick_due = polled_at.duration_since(last_tick) >= TICK;
        if idle || since_service >= SERVICE_EVERY || tick_due {
            since_service = 0;
            worker.service(consumer);
            if tick_due {
                last_tick = polled_at;
                wall = WallClock::read();
                worker.tick(wall.at(wall.anchor));
            }
            poll_timeout = if worker.capturing() {
                Duration::ZERO
            } else {
                POLL_TIMEOUT
            };
        }
        if let Some(fatal) = worker.fatal.take() {
            return Err(fatal);
        }
    }
    info!("stopping: no longer fetching; delivering what is in flight");
    Ok(())
}

/// Blocks until the cluster answers a metadata request, retrying with backoff, so a
/// broker that is down at start gives one clear line per attempt, not a crash.
fn wait_for_broker(consumer: &BaseConsumer<ConsumerHooks>, control: &Control) {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1u32;
    while !control.stopping() {
        match consumer.fetch_metadata(None, Duration::from_secs(5)) {
            Ok(metadata) => {
                info!(
                    brokers = metadata.brokers().len(),
                    "connected to the Kafka cluster"
                );
                return;
            }
            Err(error) => {
                warn!(%error, attempt, retry_in = ?backoff, "Kafka cluster unreachable; not ready");
                let until = Instant::now() + backoff;
                while Instant::now() < until && !control.stopping() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
        }
    }
}

/// `delivery.transactional_id`, else `<group.id>-<hostname>`: stable across restarts of
/// one instance (a StatefulSet pod keeps its hostname), distinct between instances.
fn transactional_id(settings: &Settings) -> String {
    if let Some(id) = &settings.delivery.transactional_id {
        return id.clone();
    }
    let group = settings
        .kafka
        .consumer_properties()
        .get("group.id")
        .unwrap_or("stagestream")
        .to_owned();
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{group}-{host}")
}

/// Exactly-once bookkeeping: the open transaction.
struct Transaction {
    committed_at: Instant,
    /// Something was consumed or produced since the last commit.
    work: bool,
}

fn wall_clock() -> EventTime {
    millis(since_epoch())
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn millis(since_epoch: Duration) -> EventTime {
    EventTime::from_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock as of a monotonic instant: the system clock read once per tick,
/// carried forward by the monotonic reading the owner loop takes after every poll, so
/// a message costs no second clock read. A step of the system clock shows at the next
/// tick (within [`TICK`]); between ticks the two clocks drift apart by microseconds.
#[derive(Clone, Copy, Debug)]
struct WallClock {
    anchor: Instant,
    anchor_since_epoch: Duration,
}

impl WallClock {
    fn read() -> Self {
        WallClock {
            anchor: Instant::now(),
            anchor_since_epoch: since_epoch(),
        }
    }

    /// The wall-clock time at `instant` (taken at or after the anchor).
    fn at(self, instant: Instant) -> EventTime {
        millis(self.anchor_since_epoch + instant.saturating_duration_since(self.anchor))
    }
}

/// An assigned input partition: topic index into `kafka.input_topics`, and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PartitionKey {
    topic: u16,
    partition: i32,
}

impl PartitionKey {
    /// The topic's name, from `kafka.input_topics`.
    fn topic_in(self, input_topics: &[String]) -> &str {
        &input_topics[usize::from(self.topic)]
    }
}

/// Identifies the message an output was caused by, carried through delivery.
#[derive(Debug)]
struct DeliveryTag {
    partition: PartitionKey,
    /// The assignment it was produced under: reports for a partition that was revoked
    /// and assigned again in between are not counted against the new assignment.
    epoch: u64,
    offset: i64,
    sent: Sent,
    /// When the message that caused it was polled (microseconds before the record was
    /// enqueued; one clock read serves both), for `stagestream_produce_latency_seconds`.
    enqueued_at: Instant,
}

/// What a produced record was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    StageChanged,
    CustomerInactive,
    DeadLetter,
}

impl Sent {
    /// In discriminant order, so `sent as usize` indexes arrays built from it.
    const ALL: [Sent; 3] = [Sent::StageChanged, Sent::CustomerInactive, Sent::DeadLetter];

    fn of(output: &Output) -> Sent {
        match output {
            Output::StageChanged { .. } => Sent::StageChanged,
            Output::Inactive { .. } => Sent::CustomerInactive,
        }
    }

    /// The `type` label of `stagestream_produced_messages_total`.
    fn label(self) -> &'static str {
        match self {
            Sent::StageChanged => "stage_changed",
            Sent::CustomerInactive => "customer_inactive",
            Sent::DeadLetter => "dead_letter",
        }
    }
}

/// A delivery report, as the producer hook forwards it to the owner.
#[derive(Debug)]
struct Delivered {
    tag: DeliveryTag,
    error: Option<KafkaError>,
}

struct PartitionState {
    engine: Engine,
    labels: PartitionLabels,
    /// Messages behind the high watermark (librdkafka statistics), once known.
    lag: Option<i64>,
    offsets: OffsetTracker,
    epoch: u64,
    catch_up: CatchUp,
    /// The offset last stored for commit (at-least-once), or committed with a
    /// transaction (exactly-once).
    stored: Option<i64>,
    /// The group's committed offset when the partition was assigned.
    committed_when_assigned: Option<i64>,
    /// Messages below this offset had their outputs delivered before (it was
    /// committed): while replaying them to rebuild state, nothing is sent.
    suppress_below: Option<i64>,
    snapshot: Progress,
}

/// How far the wall clock may drive one partition: only up to the last instant the
/// partition was known to be at its end, since every event the broker had by then was
/// applied. A backlog therefore never makes a customer look inactive.
#[derive(Clone, Copy, Debug, Default)]
struct CatchUp {
    /// The end was reached and no message came since.
    at_end: bool,
    /// The wall-clock instant the end was last reached.
    reached_end_at: Option<EventTime>,
}

impl CatchUp {
    fn message(&mut self) {
        self.at_end = false;
    }

    /// Records reaching the end at `now`; true the first time.
    fn reached_end(&mut self, now: EventTime) -> bool {
        let first = self.reached_end_at.is_none();
        self.at_end = true;
        self.reached_end_at = Some(now);
        first
    }

    fn ever_caught_up(&self) -> bool {
        self.reached_end_at.is_some()
    }

    /// The instant up to which the wall clock may fire, if any.
    fn through(&self, now: EventTime) -> Option<EventTime> {
        if self.at_end {
            Some(now)
        } else {
            self.reached_end_at
        }
    }
}

struct Worker {
    settings: Settings,
    store: Option<Arc<dyn SnapshotStore>>,
    snapshot_thread: Option<SnapshotThread>,
    partitions: BTreeMap<PartitionKey, PartitionState>,
    sink: Sink,
    deliveries: mpsc::Receiver<Delivered>,
    next_epoch: u64,
    outputs: Vec<Output>,
    fatal: Option<PipelineError>,
    control: Arc<Control>,
    invalid_warnings: RateLimited,
    /// The per-message counters and histograms, flushed to the shared metrics at every
    /// service step.
    instruments: MessageInstruments,
    /// Set once shutdown began: flushes in callbacks must end by then.
    deadline: Option<Instant>,
    /// Exactly-once mode: the open transaction; `None` in at-least-once mode.
    transaction: Option<Transaction>,
}

impl Worker {
    fn key_of(&self, topic: &str, partition: i32) -> Option<PartitionKey> {
        let topics = &self.settings.kafka.input_topics;
        let index = topics.iter().position(|t| t == topic)?;
        Some(PartitionKey {
            topic: u16::try_from(index).ok()?,
            partition,
        })
    }

    fn topic_name(&self, key: PartitionKey) -> &str {
        key.topic_in(&self.settings.kafka.input_topics)
    }

    /// Handles one message; `polled_at` is when the poll returned it.
    fn on_message(&mut self, message: &BorrowedMessage<'_>, now: EventTime, polled_at: Instant) {
        self.handle_message(message, now, polled_at);
        self.instruments
            .processing
            .observe(polled_at.elapsed().as_secs_f64());
    }

    fn handle_message(&mut self, message: &BorrowedMessage<'_>, now: EventTime, polled_at: Instant) {
        let Some(key) = self.key_of(message.topic(), message.partition()) else {
            return;
        };
        let Some(state) = self.partitions.get_mut(&key) else {
            debug!(
                topic = message.topic(),
                partition = message.partition(),
                "message of an unassigned partition"
            );
            return;
        };
        state.catch_up.message();
        state.snapshot.dirty = true;
        if let Some(transaction) = &mut self.transaction {
            transaction.work = true;
        }
        let metrics = &self.control.metrics;
        let consumed = &self.instruments.consumed;
        let offset = message.offset();
        let suppressed = state.suppress_below.is_some_and(|below| offset < below);
        if suppressed {
            metrics.replayed_without_output.inc();
        }
        let settings = &self.settings;
        let payload = message.payload().unwrap_or_default();
        let record_time = settings
            .live
            .use_record_timestamp
            .then(|| message.timestamp().to_millis().map(EventTime::from_millis))
            .flatten();
        let epoch = state.epoch;
        let tag = |sent| DeliveryTag {
            partition: key,
            epoch,
            offset,
            sent,
            enqueued_at: polled_at,
        };
        let invalid = |reason: &'static str| {
            consumed[Consumed::Invalid as usize].inc();
            metrics.invalid_events.with_label_values(&[reason]).inc();
            reason
        };
        let (reason, detail) = match decode_with_default_time(payload, &settings.model, record_time) {
            Err(error) => (invalid(error.reason().as_str()), error.to_string()),
            Ok(event) if event.timestamp > now.plus(settings.live.max_future_skew) => (
                invalid(FUTURE_TIMESTAMP),
                format!(
                    "timestamp {} is more than time.max_future_skew ahead of the wall clock {now}",
                    event.timestamp
                ),
            ),
            Ok(event) => {
                self.outputs.clear();
                let verdict = state.engine.on_event(&event, &mut self.outputs);
                consumed[Consumed::from(verdict) as usize].inc();
                if verdict == Verdict::Applied {
                    let delay = now.as_millis().saturating_sub(event.timestamp.as_millis()).max(0);
                    self.instruments.event_delay.observe(delay as f64 / 1e3);
                }
                match verdict {
                    Verdict::Late => (
                        "late",
                        format!("older than the watermark {}", state.engine.watermark()),
                    ),
                    _ if suppressed => {
                        state.offsets.processed(offset, 0);
                        return;
                    }
                    _ => {
                        let mut sent = 0;
                        for output in &self.outputs {
                            let tag = tag(Sent::of(output));
                            if let Err(error) =
                                self.sink.send_output(&state.engine, output, Some(&event), tag)
                            {
                                self.fatal.get_or_insert(error);
                            }
                            sent += 1;
                        }
                        state.offsets.processed(offset, sent);
                        return;
                    }
                }
            }
        };
        if suppressed {
            state.offsets.processed(offset, 0);
            return;
        }
        // The detail may quote the payload (a JSON parser shows where it failed), so it
        // is logged at debug only; the dead letter carries it in its headers.
        self.invalid_warnings.warn(|suppressed| {
            warn!(
                reason,
                topic = message.topic(),
                partition = message.partition(),
                offset,
                suppressed,
                "invalid input"
            );
        });
        debug!(reason, detail = %detail, offset, "invalid input detail");
        let sent = match self
            .sink
            .send_dead_letter(message, reason, &detail, tag(Sent::DeadLetter))
        {
            Ok(sent) => u32::from(sent),
            Err(error) => {
                self.fatal.get_or_insert(error);
                1
            }
        };
        state.offsets.processed(offset, sent);
    }

    /// A partition reached its end. librdkafka names only the partition number, so
    /// with several input topics it is attributed only when one assigned topic has that
    /// number (docs/semantics.md: the wall clock and several input topics).
    fn on_partition_end(&mut self, partition: i32, now: EventTime) {
        let mut matching = self
            .partitions
            .iter_mut()
            .filter(|(key, _)| key.partition == partition);
        let (Some((key, state)), None) = (matching.next(), matching.next()) else {
            return;
        };
        if state.catch_up.reached_end(now) {
            info!(
                topic = key.topic_in(&self.settings.kafka.input_topics),
                partition, "partition caught up; the wall clock now drives its inactivity"
            );
        }
        self.update_readiness();
    }

    /// Readiness: partitions assigned (restoring happens inside the assignment), each
    /// caught up once, and none lagging by more than `http.ready_max_lag` messages.
    fn update_readiness(&self) {
        let control = &self.control;
        let caught_up =
            !self.partitions.is_empty() && self.partitions.values().all(|s| s.catch_up.ever_caught_up());
        let max_lag = self.partitions.values().filter_map(|s| s.lag).max();
        let within_lag = max_lag.is_none_or(|lag| lag <= self.settings.http.ready_max_lag as i64);
        let ready = caught_up && within_lag;
        control.caught_up.store(caught_up, Ordering::SeqCst);
        control.max_lag.store(max_lag.unwrap_or(-1), Ordering::SeqCst);
        control.metrics.ready.set(i64::from(ready));
        control
            .metrics
            .assigned_partitions
            .set(self.partitions.len() as i64);
        if control.ready.swap(ready, Ordering::SeqCst) != ready {
            info!(ready, caught_up, max_lag, "readiness changed");
        }
    }

    /// The consumer's statistics: per-partition lag, for the gauge and readiness.
    fn on_statistics(&mut self, statistics: &Statistics) {
        let metrics = &self.control.metrics;
        for (name, topic) in &statistics.topics {
            for (&number, partition) in &topic.partitions {
                let Some(state) = self
                    .key_of(name, number)
                    .and_then(|key| self.partitions.get_mut(&key))
                else {
                    continue;
                };
                // Behind the high watermark from the next message the application gets;
                // before the first one, from the fetch position (a restored or empty
                // partition), else librdkafka's own lag (from the committed offset).
                let lag = [partition.app_offset, partition.next_offset]
                    .into_iter()
                    .find(|&next| next >= 0)
                    .filter(|_| partition.hi_offset >= 0)
                    .map(|next| (partition.hi_offset - next).max(0))
                    .or((partition.consumer_lag >= 0).then_some(partition.consumer_lag));
                state.lag = lag;
                if let Some(lag) = lag {
                    metrics
                        .consumer_lag
                        .with_label_values(&state.labels.values())
                        .set(lag);
                }
            }
        }
        self.update_readiness();
    }

    /// Fires the inactivity the wall clock reached on each caught-up partition.
    fn tick(&mut self, now: EventTime) {
        let delay = self.settings.live.firing_delay;
        for (&key, state) in &mut self.partitions {
            let Some(through) = state.catch_up.through(now) else {
                continue;
            };
            self.outputs.clear();
            state.engine.advance_to(through.minus(delay), &mut self.outputs);
            if self.outputs.is_empty() {
                continue;
            }
            state.snapshot.dirty = true;
            let Some(offset) = state.offsets.last_processed() else {
                debug_assert!(false, "an engine with nothing applied fired");
                continue;
            };
            let mut sent = 0;
            for output in &self.outputs {
                let tag = DeliveryTag {
                    partition: key,
                    epoch: state.epoch,
                    offset,
                    sent: Sent::of(output),
                    enqueued_at: Instant::now(),
                };
                if let Err(error) = self.sink.send_output(&state.engine, output, None, tag) {
                    self.fatal.get_or_insert(error);
                }
                sent += 1;
            }
            state.offsets.charge_to_last(sent);
        }
        self.start_due_snapshots();
        self.publish_gauges();
    }

    /// Sets the gauges that describe the partitions' state (once per tick: they are
    /// sums over every partition, too costly per event).
    fn publish_gauges(&self) {
        let metrics = &self.control.metrics;
        let mut population = vec![0u64; self.settings.model.stage_count()];
        let mut armed = 0;
        let seconds = |time: EventTime| time.as_millis().div_euclid(1_000);
        let wall = seconds(wall_clock());
        for state in self.partitions.values() {
            let engine = &state.engine;
            for (total, count) in population.iter_mut().zip(engine.population()) {
                *total += count;
            }
            armed += engine.armed_count();
            let labels = state.labels.values();
            if let Some(newest) = engine.newest_event() {
                metrics
                    .last_event_time
                    .with_label_values(&labels)
                    .set(seconds(newest));
                metrics
                    .watermark
                    .with_label_values(&labels)
                    .set(seconds(engine.watermark()));
            }
            if self.store.is_some() && !state.snapshot.unsaved() {
                metrics.last_snapshot_time.with_label_values(&labels).set(wall);
            }
        }
        for (stage, count) in self.settings.model.stage_names().zip(population) {
            metrics
                .customers
                .with_label_values(&[stage])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        metrics.armed_timers.set(i64::try_from(armed).unwrap_or(i64::MAX));
    }

    /// Starts copying an image of every partition whose snapshot is due; the copy
    /// proceeds in [`Worker::capture_images`].
    fn start_due_snapshots(&mut self) {
        let (Some(_), Some(snapshot)) = (&self.snapshot_thread, &self.settings.snapshot) else {
            return;
        };
        let interval = snapshot.interval.as_duration();
        for (&key, state) in &mut self.partitions {
            let Some(offset) = state
                .offsets
                .next_offset()
                .filter(|_| state.snapshot.due(interval))
            else {
                continue;
            };
            let ticket = Ticket::new(&self.settings.kafka.input_topics, key, state.epoch, offset);
            state
                .engine
                .begin_image(state.snapshot.spare.take().unwrap_or_default());
            state.snapshot.dirty = false;
            state.snapshot.taken_at = Instant::now();
            state.snapshot.pending = Pending::Capturing {
                ticket,
                started: Instant::now(),
                longest_step: Duration::ZERO,
            };
        }
    }

    /// Whether an image is being copied: the loop then polls without waiting, so the
    /// copy goes on while no message comes.
    fn capturing(&self) -> bool {
        self.partitions
            .values()
            .any(|state| matches!(state.snapshot.pending, Pending::Capturing { .. }))
    }

    /// Copies images for at most [`CAPTURE_STEP`] (plus one block), the only time a
    /// snapshot stops consumption, and hands complete ones to the snapshot thread.
    fn capture_images(&mut self) {
        let Some(thread) = &self.snapshot_thread else {
            return;
        };
        let started = Instant::now();
        for state in self.partitions.values_mut() {
            let Pending::Capturing {
                ticket,
                started: capture_started,
                longest_step,
            } = &mut state.snapshot.pending
            else {
                continue;
            };
            let step_started = Instant::now();
            let image = loop {
                if let Some(image) = state.engine.continue_image(1) {
                    break Some(image);
                }
                if started.elapsed() >= CAPTURE_STEP {
                    break None;
                }
            };
            let step = step_started.elapsed();
            *longest_step = (*longest_step).max(step);
            self.control
                .metrics
                .snapshot_duration
                .with_label_values(&["pause"])
                .observe(step.as_secs_f64());
            if let Some(image) = image {
                debug!(
                    topic = %ticket.topic,
                    partition = ticket.partition.partition,
                    offset = ticket.offset,
                    customers = image.customers.len(),
                    capture_ms = capture_started.elapsed().as_secs_f64() * 1e3,
                    longest_step_ms = longest_step.as_secs_f64() * 1e3,
                    "snapshot image taken"
                );
                let ticket = ticket.clone();
                let header = ticket.header(image.shape.fingerprint);
                thread.encode(ticket, header, image);
                state.snapshot.pending = Pending::Encoding;
            }
            if started.elapsed() >= CAPTURE_STEP {
                break;
            }
        }
    }

    /// Handles what the snapshot thread finished, and sends encoded snapshots to be
    /// written once every output before their offset is delivered.
    fn advance_snapshots(&mut self) {
        let Some(thread) = &self.snapshot_thread else {
            return;
        };
        while let Ok(done) = thread.done.try_recv() {
            let (Done::Encoded { ticket, .. } | Done::Written { ticket, .. }) = &done;
            let Some(state) = self
                .partitions
                .get_mut(&ticket.partition)
                .filter(|s| s.epoch == ticket.epoch)
            else {
                continue;
            };
            match done {
                Done::Encoded {
                    ticket,
                    file,
                    image,
                    took,
                } => {
                    self.control
                        .metrics
                        .snapshot_duration
                        .with_label_values(&["encode"])
                        .observe(took.as_secs_f64());
                    state.snapshot.spare = Some(image);
                    match file {
                        Ok((file, size)) => {
                            state.snapshot.pending = Pending::Encoded {
                                offset: ticket.offset,
                                file,
                                size,
                            };
                        }
                        Err(error) => {
                            state.snapshot.pending = Pending::None;
                            // Counted and logged as a failed write; its time is the
                            // encode's, observed above.
                            let write = SnapshotWrite {
                                ticket: &ticket,
                                size: 0,
                                took: None,
                                result: Err(error),
                            };
                            write.record(&self.control.metrics, &state.labels, &mut state.snapshot);
                        }
                    }
                }
                Done::Written {
                    ticket,
                    size,
                    took,
                    result,
                } => {
                    state.snapshot.pending = Pending::None;
                    let write = SnapshotWrite {
                        ticket: &ticket,
                        size,
                        took: Some(took),
                        result,
                    };
                    write.record(&self.control.metrics, &state.labels, &mut state.snapshot);
                }
            }
        }
        let exactly_once = self.transaction.is_some();
        for (&key, state) in &mut self.partitions {
            let safe = safe_offset(exactly_once, state);
            let ready = match &state.snapshot.pending {
                Pending::Encoded { offset, .. } => safe.is_some_and(|c| c >= *offset),
                _ => false,
            };
            if !ready {
                continue;
            }
            let Pending::Encoded { offset, file, size } =
                std::mem::replace(&mut state.snapshot.pending, Pending::None)
            else {
                unreachable!("checked above");
            };
            let ticket = Ticket::new(&self.settings.kafka.input_topics, key, state.epoch, offset);
            thread.publish(ticket, file, size);
            state.snapshot.pending = Pending::Writing;
        }
    }

    /// Writes a snapshot of `key` on this thread (revoke, shutdown), if its state holds
    /// anything unsaved and every output is delivered.
    fn snapshot_now(&mut self, key: PartitionKey) {
        let Some(store) = &self.store else {
            return;
        };
        let safe = safe_offset(self.transaction.is_some(), &self.partitions[&key]);
        let state = self.partitions.get_mut(&key).expect("an assigned partition");
        let Some(offset) = state.offsets.next_offset().filter(|_| state.snapshot.unsaved()) else {
            return;
        };
        let ticket = Ticket::new(&self.settings.kafka.input_topics, key, state.epoch, offset);
        if safe != Some(offset) {
            warn!(
                topic = %ticket.topic,
                partition = key.partition,
                undelivered = state.offsets.in_flight(),
                "outputs undelivered: no final snapshot; the next owner replays from the last one"
            );
            return;
        }
        let started = Instant::now();
        let header = ticket.header(state.engine.model().shape().fingerprint);
        let (size, result) = match encode_into_file(&**store, &ticket, &header, &state.engine.image()) {
            Ok((file, size)) => (size, file.publish()),
            Err(error) => (0, Err(error)),
        };
        state.snapshot.dirty = false;
        let write = SnapshotWrite {
            ticket: &ticket,
            size,
            took: Some(started.elapsed()),
            result,
        };
        write.record(&self.control.metrics, &state.labels, &mut state.snapshot);
    }

    /// Serves delivery reports and stores the offsets they made committable.
    fn service(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        // A zero-timeout `BaseProducer::poll` serves one queued event, and one
        // delivery-report event holds one produce batch (thousands of records). Every
        // record keeps its place in `queue.buffering.max.messages` until its report is
        // served, so serving one event per call capped delivery at one batch per call
        // (~36K records/s when idle) and, under load, filled the queue and stalled
        // consumption. Serve until a poll brings no report.
        loop {
            self.sink.producer.poll(Duration::ZERO);
            if self.drain_deliveries() == 0 {
                break;
            }
        }
        self.instruments.flush();
        self.advance_snapshots();
        self.capture_images();
        match &self.transaction {
            Some(t) if t.work && t.committed_at.elapsed() >= TRANSACTION_EVERY => {
                self.commit_transaction(consumer)
            }
            Some(_) => {}
            None => self.store_offsets(consumer),
        }
    }

    /// Exactly-once: commits the open transaction with every partition's next input
    /// offset, and opens the next one. On failure, aborts when librdkafka says the
    /// transaction requires it, and stops: the restart rewinds to the committed state.
    fn commit_transaction(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        if self.transaction.is_none() || self.fatal.is_some() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for (&key, state) in &self.partitions {
            if let Some(next) = state.offsets.next_offset() {
                let _ =
                    offsets.add_partition_offset(self.topic_name(key), key.partition, Offset::Offset(next));
            }
        }
        let producer = &self.sink.producer;
        let committed = match consumer.group_metadata() {
            Some(group) if offsets.count() > 0 => {
                producer.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)
            }
            _ => Ok(()),
        }
        .and_then(|()| producer.commit_transaction(TRANSACTION_TIMEOUT))
        .and_then(|()| producer.begin_transaction());
        count_commit(&self.control.metrics, &committed);
        match committed {
            Ok(()) => {
                for state in self.partitions.values_mut() {
                    state.stored = state.offsets.next_offset();
                }
                let transaction = self.transaction.as_mut().expect("checked above");
                transaction.committed_at = Instant::now();
                transaction.work = false;
                debug!(offsets = ?commit_summary(&offsets), "transaction committed");
            }
            Err(error) => {
                let abort = matches!(&error, KafkaError::Transaction(e) if e.txn_requires_abort());
                if abort {
                    if let Err(abort_error) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
                        warn!(error = %abort_error, "cannot abort the transaction; the broker aborts it on timeout");
                    }
                }
                error!(%error, aborted = abort, "transaction failed; stopping");
                self.fatal.get_or_insert(PipelineError::Transaction(error));
            }
        }
    }

    /// Takes the delivery reports the producer's callback queued; returns how many.
    fn drain_deliveries(&mut self) -> usize {
        let metrics = &self.control.metrics;
        let mut drained = 0;
        // Reports are drained every SERVICE_EVERY messages at most, so one reading of
        // the clock per drain is as precise as one per report.
        let now = Instant::now();
        while let Ok(Delivered { tag, error }) = self.deliveries.try_recv() {
            drained += 1;
            self.instruments.produced[tag.sent as usize][usize::from(error.is_some())].inc();
            self.instruments
                .produce_latency
                .observe(now.saturating_duration_since(tag.enqueued_at).as_secs_f64());
            if error.is_none() && tag.sent == Sent::DeadLetter {
                metrics.dead_lettered.inc();
            }
            let Some(state) = self
                .partitions
                .get_mut(&tag.partition)
                .filter(|s| s.epoch == tag.epoch)
            else {
                continue;
            };
            match error {
                None => state.offsets.delivered(tag.offset),
                Some(source) => {
                    error!(%source, offset = tag.offset, "output delivery failed; stopping without committing it");
                    let topic = match tag.sent {
                        Sent::StageChanged | Sent::CustomerInactive => self.sink.output_topic.clone(),
                        Sent::DeadLetter => self.sink.dead_letter_topic.clone().unwrap_or_default(),
                    };
                    self.fatal
                        .get_or_insert(PipelineError::Delivery { topic, source });
                }
            }
        }
        drained
    }

    fn store_offsets(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        let mut list = TopicPartitionList::new();
        let snapshots = self.store.is_some();
        for (&key, state) in &mut self.partitions {
            let Some(offset) = commit_offset(snapshots, state).filter(|&o| Some(o) != state.stored) else {
                continue;
            };
            let topic = key.topic_in(&self.settings.kafka.input_topics);
            if list
                .add_partition_offset(topic, key.partition, Offset::Offset(offset))
                .is_ok()
            {
                state.stored = Some(offset);
            }
        }
        if list.count() > 0 {
            if let Err(error) = consumer.store_offsets(&list) {
                warn!(%error, "cannot store offsets for commit");
            }
        }
    }

    /// Delivers what is in flight, then waits for reports, bounded by the shutdown
    /// deadline once shutdown began, else by the grace period.
    fn flush(&mut self) -> u64 {
        let grace = self.settings.live.shutdown_grace.as_duration();
        let deadline = self.deadline.unwrap_or_else(|| Instant::now() + grace);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(error) = self.sink.producer.flush(remaining) {
            warn!(%error, "flush did not complete");
        }
        self.drain_deliveries();
        self.instruments.flush();
        self.partitions.values().map(|s| s.offsets.in_flight()).sum()
    }

    /// Restores each newly assigned partition from its newest valid snapshot and sets
    /// where its consumption starts, before librdkafka applies the assignment: at the
    /// snapshot's offset, or at the earliest retained offset when there is none.
    /// Outputs of messages below the committed offset were delivered before; they are
    /// replayed into the state but not sent again.
    fn assign(&mut self, consumer: &BaseConsumer<ConsumerHooks>, list: &TopicPartitionList) {
        self.control
            .metrics
            .rebalances
            .with_label_values(&["assign"])
            .inc();
        let committed = match consumer.committed_offsets(list.clone(), Duration::from_secs(30)) {
            Ok(committed) => committed,
            Err(error) => {
                warn!(%error, "cannot read committed offsets; nothing is suppressed while rebuilding");
                TopicPartitionList::new()
            }
        };
        for mut element in list.elements() {
            let Some(key) = self.key_of(element.topic(), element.partition()) else {
                continue;
            };
            let settings = &self.settings;
            let restored = match &self.store {
                Some(store) => {
                    match snapshot::restore(
                        &**store,
                        element.topic(),
                        key.partition,
                        &settings.model,
                        settings.engine,
                    ) {
                        Ok(restored) => restored,
                        Err(error) => {
                            error!(%error, "cannot restore partition state; stopping");
                            self.fatal.get_or_insert(error.into());
                            return;
                        }
                    }
                }
                None => snapshot::Restored {
                    engine: Engine::new(settings.model.clone(), settings.engine),
                    offset: None,
                    corrupt: 0,
                },
            };
            self.control
                .metrics
                .snapshots_corrupt
                .inc_by(u64::from(restored.corrupt));
            let start = restored.offset.map_or(Offset::Beginning, Offset::Offset);
            if let Err(error) = element.set_offset(start) {
                warn!(%error, "cannot set the start offset");
            }
            let committed = committed
                .find_partition(element.topic(), key.partition)
                .and_then(|c| c.offset().to_raw())
                .filter(|&c| c >= 0);
            let suppress_below = committed.filter(|&c| restored.offset.is_none_or(|s| c > s));
            info!(
                topic = element.topic(),
                partition = key.partition,
                start = ?start,
                customers = restored.engine.customer_count(),
                replay_without_output_below = ?suppress_below,
                "partition assigned"
            );
            self.next_epoch += 1;
            self.partitions.insert(
                key,
                PartitionState {
                    engine: restored.engine,
                    labels: PartitionLabels::new(element.topic(), key.partition),
                    lag: None,
                    offsets: restored.offset.map(OffsetTracker::resume_at).unwrap_or_default(),
                    epoch: self.next_epoch,
                    catch_up: CatchUp::default(),
                    stored: committed,
                    committed_when_assigned: committed,
                    suppress_below,
                    snapshot: Progress::new(restored.offset),
                },
            );
        }
        self.update_readiness();
    }

    /// Delivers and commits what the revoked partitions caused, then drops their state.
    fn revoke(&mut self, consumer: &BaseConsumer<ConsumerHooks>, list: &TopicPartitionList) {
        let revoked: Vec<PartitionKey> = list
            .elements()
            .iter()
            .filter_map(|e| self.key_of(e.topic(), e.partition()))
            .filter(|key| self.partitions.contains_key(key))
            .collect();
        if revoked.is_empty() {
            return;
        }
        self.control
            .metrics
            .rebalances
            .with_label_values(&["revoke"])
            .inc();
        match self.transaction {
            Some(_) => self.commit_transaction(consumer),
            None => {
                self.flush();
            }
        }
        for &key in &revoked {
            self.snapshot_now(key);
        }
        let mut commit = TopicPartitionList::new();
        let snapshots = self.store.is_some();
        for key in &revoked {
            if let Some(offset) = commit_offset(snapshots, &self.partitions[key]) {
                let _ =
                    commit.add_partition_offset(self.topic_name(*key), key.partition, Offset::Offset(offset));
            }
        }
        if self.transaction.is_some() {
            // Committed with the transaction above.
        } else if consumer.assignment_lost() {
            warn!("assignment lost (session timed out): not committing the revoked partitions");
        } else if commit.count() > 0 {
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => info!(offsets = ?commit_summary(&commit), "committed revoked partitions"),
                Err(error) => warn!(%error, "commit on revoke failed; their events will be read again"),
            }
        }
        for key in revoked {
            let state = self.partitions.remove(&key).expect("collected from the map");
            let [topic, partition] = state.labels.values();
            self.control.metrics.forget_partition(topic, partition);
            info!(
                topic = self.topic_name(key),
                partition = key.partition,
                customers = state.engine.customer_count(),
                undelivered = state.offsets.in_flight(),
                "partition revoked; its state is dropped"
            );
        }
        self.update_readiness();
    }

    /// Shutdown: deliver in-flight outputs (until the grace period ends), store and
    /// commit their offsets.
    fn finish(
        &mut self,
        consumer: &BaseConsumer<ConsumerHooks>,
        grace: Duration,
    ) -> Result<(), PipelineError> {
        self.deadline = Some(Instant::now() + grace);
        if self.transaction.is_some() {
            self.commit_transaction(consumer);
        }
        let undelivered = self.flush();
        let assigned: Vec<PartitionKey> = self.partitions.keys().copied().collect();
        for key in assigned {
            self.snapshot_now(key);
        }
        if let Some(thread) = &mut self.snapshot_thread {
            thread.stop();
        }
        self.store_offsets(consumer);
        if undelivered > 0 {
            self.sink
                .producer
                .purge(PurgeConfig::default().queue().inflight());
        }
        let committed = match self.transaction {
            Some(_) => Ok(()),
            None => consumer.commit_consumer_state(CommitMode::Sync),
        };
        match committed {
            Ok(()) => info!("offsets committed"),
            // NoOffset: nothing was stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!(%error, "final commit failed; uncommitted events will be read again"),
        }
        info!(
            consumed = self.control.consumed(),
            delivered = self.control.delivered(),
            dead_lettered = self.control.dead_lettered(),
            undelivered,
            "stopped"
        );
        if let Some(fatal) = self.fatal.take() {
            return Err(fatal);
        }
        if undelivered > 0 {
            return Err(PipelineError::Undelivered { undelivered });
        }
        Ok(())
    }
}

/// The offset below which every output is safe: delivered (at-least-once) or
/// committed in a transaction (exactly-once). A snapshot is written only up to it.
fn safe_offset(exactly_once: bool, state: &PartitionState) -> Option<i64> {
    match exactly_once {
        true => state.stored,
        false => state.offsets.committable(),
    }
}

/// The offset to commit for a partition, if it moves the committed one forward: with
/// snapshots, the newest durable one (everything before it is in a snapshot and
/// delivered); without, the first one with an undelivered output. Never backwards (a
/// partition restored from a snapshot older than its committed offset keeps that offset).
fn commit_offset(snapshots: bool, state: &PartitionState) -> Option<i64> {
    let offset = match snapshots {
        true => state.snapshot.durable,
        false => state.offsets.committable(),
    };
    offset.filter(|&o| state.committed_when_assigned.is_none_or(|floor| o > floor))
}

/// A finished snapshot write, from the snapshot thread or the owner's own.
struct SnapshotWrite<'a> {
    ticket: &'a Ticket,
    size: u64,
    /// How long the write took; `None` when the file was never written (the encode
    /// into it failed), so that `step="write"` times only writes.
    took: Option<Duration>,
    result: std::io::Result<()>,
}

impl SnapshotWrite<'_> {
    /// Accounts for it: durable on success, retried at the next interval on failure;
    /// logged and counted either way.
    fn record(self, metrics: &Metrics, labels: &PartitionLabels, progress: &mut Progress) {
        let ticket = self.ticket;
        if let Some(took) = self.took {
            metrics
                .snapshot_duration
                .with_label_values(&["write"])
                .observe(took.as_secs_f64());
        }
        match self.result {
            Ok(()) => {
                progress.durable = progress.durable.max(Some(ticket.offset));
                metrics.snapshots.with_label_values(&["ok"]).inc();
                let labels = labels.values();
                metrics
                    .snapshot_size
                    .with_label_values(&labels)
                    .set(i64::try_from(self.size).unwrap_or(i64::MAX));
                metrics
                    .last_snapshot_time
                    .with_label_values(&labels)
                    .set(wall_clock().as_millis().div_euclid(1_000));
                info!(
                    topic = %ticket.topic,
                    partition = ticket.partition.partition,
                    offset = ticket.offset,
                    bytes = self.size,
                    took_ms = self.took.unwrap_or_default().as_secs_f64() * 1e3,
                    "snapshot written"
                );
            }
            Err(error) => {
                progress.dirty = true;
                metrics.snapshots.with_label_values(&["error"]).inc();
                warn!(
                    topic = %ticket.topic,
                    partition = ticket.partition.partition,
                    offset = ticket.offset,
                    %error,
                    "snapshot write failed; offsets stay where the last snapshot put them, retried at the next interval"
                );
            }
        }
    }
}

fn commit_summary(list: &TopicPartitionList) -> Vec<String> {
    list.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

/// Renders and produces outputs and dead letters.
struct Sink {
    producer: BaseProducer<ProducerHooks>,
    renderer: Renderer,
    output_topic: String,
    dead_letter_topic: Option<String>,
    content_mode: ContentMode,
    /// Reused buffer for structured-mode values.
    value: Vec<u8>,
    counters: OutputCounters,
}

impl Sink {
    /// Connects the producer ([`kafka::connect_producer`]); says early when the output
    /// topic does not exist.
    fn connect(&self) {
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

    fn send_output(
        &mut self,
        engine: &Engine,
        output: &Output,
        trigger: Option<&Event<'_>>,
        tag: DeliveryTag,
    ) -> Result<(), PipelineError> {
        self.counters.record(output);
        let rendered = self.renderer.render(engine, output, trigger);
        let (headers, value) = match self.content_mode {
            ContentMode::Binary => (binary_headers(&rendered), rendered.data),
            ContentMode::Structured => {
                self.value.clear();
                rendered
                    .write_structured(&mut self.value)
                    .expect("writing to a Vec cannot fail");
                self.value.pop(); // the line's newline
                let headers = OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json; charset=UTF-8"),
                });
                (headers, self.value.as_slice())
            }
        };
        let record = BaseRecord::with_opaque_to(&self.output_topic, Box::new(tag))
            .key(rendered.subject)
            .payload(value)
            .headers(headers);
        send(&self.producer, record)
    }

    /// Sends `message` to the dead-letter topic, if one is configured: original key,
    /// value and headers, plus Kafka Connect's error headers and the reason code.
    fn send_dead_letter(
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

/// At most one warning per `every`, counting those it held back.
struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, emit: impl FnOnce(u64)) {
        if self.last.is_some_and(|last| last.elapsed() < self.every) {
            self.suppressed += 1;
            return;
        }
        emit(self.suppressed);
        self.suppressed = 0;
        self.last = Some(Instant::now());
    }
}

/// The consumer's callbacks; runs on the owner thread, inside `consumer.poll` (and,
/// for commit results, inside the owner's own commit calls: those use only `control`).
struct ConsumerHooks {
    worker: Mutex<Worker>,
    control: Arc<Control>,
}

impl ConsumerHooks {
    fn lock(&self) -> MutexGuard<'_, Worker> {
        self.worker
            .lock()
            .expect("the owner thread panicked while holding the worker")
    }
}

impl ClientContext for ConsumerHooks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka("consumer", level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        record_client_statistics(&self.control.metrics, "consumer", &statistics);
        self.lock().on_statistics(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition also arrives as a message error, handled by the owner loop.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            warn!(client = "consumer", %error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for ConsumerHooks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => self.lock().revoke(consumer, list),
            // Before librdkafka applies the list, so the start offsets set here count.
            Rebalance::Assign(list) => self.lock().assign(consumer, list),
            Rebalance::Error(error) => warn!(%error, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        count_commit(&self.control.metrics, &result);
        match result {
            Ok(()) => debug!(offsets = ?commit_summary(offsets), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!(%error, "offset commit failed; it is retried with the next one"),
        }
    }
}

/// The producer's callbacks; delivery reports become [`Delivered`] messages. They run
/// inside `producer.poll`, while the owner holds the worker: never lock it here.
struct ProducerHooks {
    deliveries_tx: mpsc::Sender<Delivered>,
    control: Arc<Control>,
}

impl ClientContext for ProducerHooks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka("producer", level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        record_client_statistics(&self.control.metrics, "producer", &statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(client = "producer", %error, reason, "librdkafka error");
    }
}

impl ProducerContext for ProducerHooks {
    type DeliveryOpaque = Box<DeliveryTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<DeliveryTag>) {
        let error = result.as_ref().err().map(|(error, _)| error.clone());
        // The receiver lives as long as the worker that owns this producer.
        let _ = self.deliveries_tx.send(Delivered { tag: *tag, error });
    }
}

/// The most detailed level librdkafka should log at: what [`log_librdkafka`] would let
/// through. rdkafka takes it from the `log` crate by default, which nothing here
/// initialises (logs go through `tracing`), and then passes errors only: librdkafka's
/// warnings were dropped, and the `debug` property printed nothing.
fn librdkafka_log_level() -> rdkafka::config::RDKafkaLogLevel {
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
fn log_librdkafka(client: &str, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            error!(client, facility, text = message, "librdkafka")
        }
        Level::Warning => warn!(client, facility, text = message, "librdkafka"),
        Level::Notice | Level::Info => info!(client, facility, text = message, "librdkafka"),
        Level::Debug => debug!(client, facility, text = message, "librdkafka"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_carried_forward_by_the_monotonic_reading() {
        let wall = WallClock {
            anchor: Instant::now(),
            anchor_since_epoch: Duration::from_micros(1_700_000_000_000_999),
        };
        assert_eq!(wall.at(wall.anchor), EventTime::from_millis(1_700_000_000_000));
        // Sub-millisecond parts add up before truncating: .999 ms + 1.5 ms.
        let later = wall.anchor + Duration::from_micros(1_500);
        assert_eq!(wall.at(later), EventTime::from_millis(1_700_000_000_002));
        let an_hour_later = wall.anchor + Duration::from_secs(3_600);
        assert_eq!(wall.at(an_hour_later), EventTime::from_millis(1_700_003_600_000));
    }

    #[test]
    fn the_wall_clock_waits_for_the_end_of_the_partition() {
        let mut catch_up = CatchUp::default();
        let t = EventTime::from_millis;
        assert_eq!(
            catch_up.through(t(1_000)),
            None,
            "a backlog is never driven by the clock"
        );
        assert!(catch_up.reached_end(t(2_000)));
        assert_eq!(
            catch_up.through(t(3_000)),
            Some(t(3_000)),
            "at the end: up to now"
        );
        catch_up.message();
        assert_eq!(
            catch_up.through(t(9_000)),
            Some(t(2_000)),
            "behind again: only up to when everything before was applied"
        );
        assert!(!catch_up.reached_end(t(10_000)), "only the first end is news");
        assert_eq!(catch_up.through(t(11_000)), Some(t(11_000)));
    }
}
