//! `stagestream run`: the live service, one owner around one engine per partition.
//!
//! ```text
//! consumer.poll -> decode -> Engine::on_event (the message's partition) -> Output
//!     -> Sink (render, produce with a delivery tag) -> delivery report
//!     -> Ledger -> offsets stored -> committed (auto-commit, revoke, shutdown)
//! wall clock (every tick, caught-up partitions only) -> Engine::advance_to -> Output -> ...
//! ```
//!
//! # Layout
//! - `owner`: the owner thread's state and loop; the only code that touches an engine.
//! - `consume`: one input message through decode, engine, sink and ledger.
//! - `rebalance`: assign (restore), revoke (deliver, snapshot, commit), shutdown.
//! - `snapshots`: when images are copied, encoded, written and count as durable.
//! - `ledger` (with `offsets`): the pure per-partition decisions, table-tested.
//! - `hooks`: librdkafka's callbacks as typed messages ([`hooks::ClientEvent`]).
//! - `sink`: outputs and dead letters rendered and produced.
//! - `shadow`: with `[shadow]`, a second model's engines fed the same records, its
//!   outputs to its own topic by its own producer, outside the ledger and snapshots.
//! - `control`: what the outside sees ([`Control`]) and asks ([`Command`]).
//! - `events` and `instruments`: one log line plus counters per notable event; the
//!   per-message counters.
//! - `clock`: the wall clock as event time.
//!
//! Guarantees (docs/semantics.md, "Recovery and delivery"; the rules in `ledger`):
//! - at-least-once: an input offset counts as safe once every output it caused is
//!   delivered. With `snapshot.dir`, state is saved per partition only up to a safe
//!   offset and only such a snapshot's offset is committed; without it, the safe
//!   offset itself is committed and every assigned partition is rebuilt from its
//!   earliest retained offset. On assign, consumption starts at the newest valid
//!   snapshot's offset, and the outputs of messages below the committed offset
//!   (delivered before) are not sent again.
//! - exactly-once: outputs and input offsets are committed together in one Kafka
//!   transaction every 100 ms; a snapshot is written only up to a committed
//!   transaction. A failed transaction is aborted (when librdkafka says it must be)
//!   and the service stops: the restart rewinds to the committed state.
//!
//! Outputs carry content-derived ids, so anything emitted again is recognisable
//! downstream.

mod clock;
mod consume;
mod control;
mod events;
mod hooks;
mod instruments;
mod ledger;
pub mod offsets;
mod owner;
mod rebalance;
mod shadow;
mod sink;
mod snapshots;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use tracing::{info, warn};

pub use clock::wall_clock;
pub use control::{
    AsOf, Command, Control, CustomerAnswer, CustomerState, PartitionProgress, ProgressReport, Status,
    ThresholdState, Totals, Unanswered,
};

use crate::config::{DeliveryMode, Settings};
use crate::decode::RejectReason;
use crate::output::Renderer;
use crate::snapshot::{DirectoryStore, SnapshotError, SnapshotStore};
use crate::telemetry::labels::ModelRole;
use events::{RateLimited, FUTURE_TIMESTAMP};
use hooks::{librdkafka_log_level, ConsumerHooks, ProducerHooks};
use instruments::{MessageInstruments, OutputCounters};
use ledger::Guarantee;
use owner::{Owner, Totals as OwnerTotals, Transaction, TRANSACTION_TIMEOUT};
use shadow::Shadow;
use sink::Sink;
use snapshots::SnapshotThread;

/// How long stopping waits for the consumer to leave its group.
const LEAVE_GROUP_WAIT: Duration = Duration::from_secs(5);

/// Why the service stopped with an error. None is retriable in-process: restart it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A [`Control`] serves one run: its command channel has one owner.
    #[error("this Control already ran a service")]
    AlreadyRunning,
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

/// Runs the service until `control` is stopped or a fatal error occurs.
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
    control.status.max_lag.store(-1, Ordering::SeqCst);
    control
        .status
        .ready_max_lag
        .store(settings.http.ready_max_lag, Ordering::SeqCst);
    let commands = control.take_inbox().ok_or(PipelineError::AlreadyRunning)?;
    let (events_tx, events) = mpsc::channel();
    let (deliveries_tx, deliveries) = mpsc::channel();
    let (consumer_properties, producer_properties) = settings.kafka.service_properties(&settings.delivery);
    if let Some(id) = producer_properties.get("transactional.id") {
        info!(transactional_id = %id, "exactly-once: outputs and offsets commit in transactions");
    }
    info!(properties = %producer_properties, "creating producer");
    let producer: BaseProducer<ProducerHooks> = ClientConfig::from(&producer_properties)
        .set_log_level(librdkafka_log_level())
        .create_with_context(ProducerHooks {
            deliveries: deliveries_tx.clone(),
            events: events_tx.clone(),
        })
        .map_err(|source| PipelineError::Client {
            role: "producer",
            source,
        })?;
    let shadow = settings
        .shadow
        .as_ref()
        .map(|shadow| {
            // Its own producer: never transactional, no statistics (the gauges are the
            // live producer's), so nothing it does reaches the live outputs.
            let mut properties = settings.kafka.producer_properties(None);
            properties.set("statistics.interval.ms", "0");
            info!(config = %shadow.config.display(), topic = %shadow.topic, model = shadow.model.name(), version = shadow.model.version(), "shadow model runs beside the live one");
            ClientConfig::from(&properties)
                .set_log_level(librdkafka_log_level())
                .create_with_context(ProducerHooks {
                    deliveries: deliveries_tx.clone(),
                    events: events_tx.clone(),
                })
                .map(|producer| Shadow::new(settings, shadow, producer, &control.metrics))
                .map_err(|source| PipelineError::Client {
                    role: "shadow producer",
                    source,
                })
        })
        .transpose()?;
    let mut owner = owner(
        settings,
        &control,
        producer,
        shadow,
        (events, deliveries, commands),
    )?;
    info!(properties = %consumer_properties, "creating consumer");
    let consumer: BaseConsumer<ConsumerHooks> = ClientConfig::from(&consumer_properties)
        .set_log_level(librdkafka_log_level())
        .create_with_context(ConsumerHooks { events: events_tx })
        .map_err(|source| PipelineError::Client {
            role: "consumer",
            source,
        })?;
    wait_for_broker(&consumer, &control);
    if !control.stopping() {
        owner.sink.connect();
        if let Some(shadow) = &owner.shadow {
            shadow.connect();
        }
    }
    let topics: Vec<&str> = settings.input.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| PipelineError::Subscribe {
            topics: settings.input.topics.clone(),
            source,
        })?;
    info!(topics = ?topics, output = %settings.output.topic, "consuming");
    let result = owner.run_loop(&consumer);
    let grace = settings.live.shutdown_grace.as_duration();
    let finished = owner.finish(&consumer, grace);
    // The owner (and its end of the callbacks' channel) goes first: the consumer's
    // final revoke, while it closes, then finds nobody to hand over to and applies itself.
    drop(owner);
    leave_group(consumer);
    control.status.ready.store(false, Ordering::SeqCst);
    control.metrics.ready.set(0);
    result.and(finished)
}

/// The owner's ends of its channels: client events, delivery reports, commands.
type Inboxes = (
    mpsc::Receiver<hooks::ClientEvent>,
    mpsc::Receiver<hooks::Delivered>,
    tokio::sync::mpsc::Receiver<Command>,
);

/// The owner, with its producer (transactions begun in exactly-once mode) and its
/// snapshot thread (with `snapshot.dir`).
fn owner(
    settings: &Settings,
    control: &Arc<Control>,
    producer: BaseProducer<ProducerHooks>,
    shadow: Option<Shadow>,
    (events, deliveries, commands): Inboxes,
) -> Result<Owner, PipelineError> {
    let exactly_once = settings.delivery.mode == DeliveryMode::ExactlyOnce;
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
    Ok(Owner {
        guarantee: match exactly_once {
            true => Guarantee::ExactlyOnce,
            false => Guarantee::AtLeastOnce {
                snapshots: store.is_some(),
            },
        },
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
            output_topic: settings.output.topic.clone(),
            dead_letter_topic: settings.dlq.topic.clone(),
            mode: settings.output.mode,
            value: Vec::with_capacity(1024),
            counters: OutputCounters::new(&control.metrics, &settings.model, ModelRole::Live),
        },
        settings: settings.clone(),
        deliveries,
        events,
        commands,
        next_epoch: 0,
        outputs: Vec::new(),
        fatal: None,
        invalid_warnings: RateLimited::new(Duration::from_secs(10)),
        instruments: MessageInstruments::new(&control.metrics),
        totals: OwnerTotals::default(),
        deadline: None,
        control: control.clone(),
        shadow,
    })
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

/// An assigned input partition: topic index into `input.topics`, and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PartitionKey {
    topic: u16,
    partition: i32,
}

impl PartitionKey {
    /// The topic's name, from `input.topics`.
    fn topic_in(self, input_topics: &[String]) -> &str {
        &input_topics[usize::from(self.topic)]
    }
}
