//! The owner: the one thread that holds every assigned partition's engine and ledger,
//! and the loop that feeds it.
//!
//! ```text
//! loop {
//!     consumer.poll -> message (super::consume) | partition end | nothing
//!     client events (rebalance, statistics, commits; super::hooks) -> handled here
//!     every SERVICE_EVERY messages, when idle, and every TICK:
//!         delivery reports -> ledgers; snapshots advanced; offsets stored or the
//!         transaction committed; commands answered; totals published
//!     every TICK: the wall clock fires caught-up partitions' inactivity
//! }
//! ```
//!
//! Nothing else touches an engine: callbacks and the HTTP layer send typed messages
//! ([`super::hooks::ClientEvent`], [`super::control::Command`]) that this loop answers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, Statistics, TopicPartitionList};
use tracing::{error, info, warn};

use super::clock::{wall_clock, WallClock};
use super::control::{
    AsOf, Command, Control, CustomerAnswer, CustomerState, PartitionProgress, ProgressReport,
};
use super::events::{DeadLettered, OffsetsCommitted, RateLimited, TransactionOutcome};
use super::hooks::{ClientEvent, ConsumerHooks, Delivered, DeliveryTag};
use super::instruments::{record_client_statistics, MessageInstruments, PartitionLabels};
use super::ledger::{Guarantee, Ledger};
use super::shadow::{shadow_tag, Shadow};
use super::sink::{produced, Sink};
use super::snapshots::{Progress, SnapshotThread};
use super::{PartitionKey, PipelineError};
use crate::config::Settings;
use crate::core::{Engine, EventTime, Output};
use crate::snapshot::SnapshotStore;
use crate::telemetry::labels::{Client, Outcome, Produced};

/// How often the wall clock advances caught-up partitions: inactivity fires within
/// this (plus `time.firing_delay`) of its deadline.
const TICK: Duration = Duration::from_millis(100);
/// The longest a poll blocks, so shutdown, ticks and commands (a lookup waits for its
/// answer) are never late by more.
const POLL_TIMEOUT: Duration = Duration::from_millis(10);
/// Messages handled between services of the producer and the offset store.
const SERVICE_EVERY: u32 = 256;
/// At shutdown, the longest the shadow model's outputs are waited for.
const SHADOW_FLUSH: Duration = Duration::from_secs(5);
/// Exactly-once: how often the open transaction (outputs + input offsets) is committed.
const TRANSACTION_EVERY: Duration = Duration::from_millis(100);
/// Exactly-once: the longest a transaction call may block.
pub(super) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// One assigned input partition.
pub(super) struct PartitionState {
    pub engine: Engine,
    pub labels: PartitionLabels,
    pub ledger: Ledger,
    /// Messages behind the high watermark (librdkafka statistics), once known.
    pub lag: Option<i64>,
    /// The assignment this state belongs to.
    pub epoch: u64,
    pub snapshot: Progress,
    /// The shadow model's engine, fed the same records (`super::shadow`).
    pub shadow: Option<Engine>,
}

/// The state of `key` if it is still the assignment `epoch` (a result or report for an
/// earlier assignment of a partition revoked and assigned again is not counted).
pub(super) fn current(
    partitions: &mut BTreeMap<PartitionKey, PartitionState>,
    key: PartitionKey,
    epoch: u64,
) -> Option<&mut PartitionState> {
    partitions.get_mut(&key).filter(|state| state.epoch == epoch)
}

/// Sends outputs that no message caused (the wall clock's inactivity, a restored
/// snapshot's migration), charged to the partition's last processed offset so that
/// its commit waits for them too.
///
/// # Errors
/// The first output the producer refused.
pub(super) fn send_unprompted(
    sink: &mut Sink,
    totals: &mut Totals,
    key: PartitionKey,
    state: &mut PartitionState,
    outputs: &[Output],
) -> Result<(), PipelineError> {
    let Some(offset) = state.ledger.charge_to_last(outputs.len() as u32) else {
        debug_assert!(
            outputs.is_empty(),
            "outputs of an engine with nothing applied or restored"
        );
        return Ok(());
    };
    for output in outputs {
        let tag = DeliveryTag {
            partition: key,
            epoch: state.epoch,
            offset,
            sent: produced(output),
            enqueued_at: Instant::now(),
        };
        sink.send_output(&state.engine, output, None, tag)?;
        totals.outputs_sent += 1;
    }
    Ok(())
}

/// Exactly-once bookkeeping: the open transaction.
pub(super) struct Transaction {
    pub committed_at: Instant,
    /// Something was consumed or produced since the last commit.
    pub work: bool,
}

/// Counts since start, published to [`Control::totals`] at every service step.
#[derive(Default)]
pub(super) struct Totals {
    pub consumed: u64,
    pub outputs_sent: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub snapshots_written: u64,
}

/// The owner of every assigned partition's state.
pub(super) struct Owner {
    pub settings: Settings,
    pub control: Arc<Control>,
    pub guarantee: Guarantee,
    pub store: Option<Arc<dyn SnapshotStore>>,
    pub snapshot_thread: Option<SnapshotThread>,
    pub partitions: BTreeMap<PartitionKey, PartitionState>,
    pub sink: Sink,
    pub deliveries: mpsc::Receiver<Delivered>,
    pub events: mpsc::Receiver<ClientEvent>,
    pub commands: tokio::sync::mpsc::Receiver<Command>,
    pub next_epoch: u64,
    /// Reused for each message's outputs.
    pub outputs: Vec<Output>,
    /// The first fatal error; the loop stops once it is set.
    pub fatal: Option<PipelineError>,
    pub invalid_warnings: RateLimited,
    /// The per-message counters and histograms, flushed to the shared metrics at every
    /// service step.
    pub instruments: MessageInstruments,
    pub totals: Totals,
    /// Set once shutdown began: flushes must end by then.
    pub deadline: Option<Instant>,
    /// Exactly-once mode: the open transaction; `None` in at-least-once mode.
    pub transaction: Option<Transaction>,
    /// The shadow model's producer and renderer, with `[shadow]`.
    pub shadow: Option<Shadow>,
}

impl Owner {
    /// Feeds the owner until shutdown or a fatal error.
    ///
    /// # Errors
    /// The first fatal error (a failed delivery, transaction or restore).
    pub fn run_loop(&mut self, consumer: &BaseConsumer<ConsumerHooks>) -> Result<(), PipelineError> {
        let mut wall = WallClock::read();
        let mut last_tick = wall.anchor;
        let mut since_service = 0u32;
        let mut poll_timeout = POLL_TIMEOUT;
        let mut busy = false;
        while !self.control.stopping() {
            // While messages keep coming, a poll does not wait: librdkafka reads the
            // clock to set up a timeout.
            let polled = consumer.poll(if busy { Duration::ZERO } else { poll_timeout });
            // One monotonic reading per message serves the wall clock, the tick, the
            // produce latency and the start of the processing time (clock reads were
            // 14% of the owner thread's samples in a drain).
            let polled_at = Instant::now();
            let idle = match polled {
                Some(Ok(message)) => {
                    self.on_message(&message, wall.at(polled_at), polled_at);
                    false
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.on_partition_end(partition, wall.at(polled_at));
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
            self.handle_client_events(consumer);
            busy = !idle;
            since_service += 1;
            let tick_due = polled_at.duration_since(last_tick) >= TICK;
            if idle || since_service >= SERVICE_EVERY || tick_due {
                since_service = 0;
                self.service(consumer);
                if tick_due {
                    last_tick = polled_at;
                    wall = WallClock::read();
                    self.tick(wall.at(wall.anchor));
                }
                poll_timeout = if self.capturing() {
                    Duration::ZERO
                } else {
                    POLL_TIMEOUT
                };
            }
            if let Some(fatal) = self.fatal.take() {
                return Err(fatal);
            }
        }
        info!("stopping: no longer fetching; delivering what is in flight");
        Ok(())
    }

    /// Handles what the client callbacks reported during the last librdkafka call.
    pub fn handle_client_events(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                ClientEvent::Rebalance(rebalance) => self.rebalance(consumer, rebalance),
                ClientEvent::Statistics(client, statistics) => {
                    record_client_statistics(&self.control.metrics, client, &statistics);
                    if client == Client::Consumer {
                        self.on_statistics(&statistics);
                    }
                }
                ClientEvent::Committed(result, offsets) => OffsetsCommitted {
                    result: &result,
                    offsets: &offsets,
                }
                .emit(&self.control.metrics),
            }
        }
    }

    /// The partition key of an input topic's partition, if the topic is configured.
    pub fn key_of(&self, topic: &str, partition: i32) -> Option<PartitionKey> {
        let index = self.settings.input.topics.iter().position(|t| t == topic)?;
        Some(PartitionKey {
            topic: u16::try_from(index).ok()?,
            partition,
        })
    }

    pub fn topic_name(&self, key: PartitionKey) -> &str {
        key.topic_in(&self.settings.input.topics)
    }

    /// Serves delivery reports, moves snapshots on, stores offsets (or commits the
    /// transaction), answers commands and publishes the totals.
    fn service(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        // A zero-timeout `BaseProducer::poll` serves one queued event, and one
        // delivery-report event holds one produce batch (thousands of records). Every
        // record keeps its place in `queue.buffering.max.messages` until its report is
        // served, so serving one event per call capped delivery at one batch per call
        // and, under load, filled the queue and stalled consumption. Serve until a
        // poll brings no report.
        loop {
            self.sink.producer.poll(Duration::ZERO);
            if let Some(shadow) = &self.shadow {
                shadow.producer.poll(Duration::ZERO);
            }
            if self.drain_deliveries() == 0 {
                break;
            }
        }
        self.handle_client_events(consumer);
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
        self.answer_commands();
        self.publish_totals();
    }

    /// Answers every command waiting; each answer is built from the owner's state.
    fn answer_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Progress(reply) => {
                    let _ = reply.send(self.progress_report());
                }
                Command::Customer {
                    id,
                    partitions,
                    reply,
                } => {
                    let _ = reply.send(self.customer(&id, &partitions));
                }
            }
        }
    }

    /// A customer's state in the partitions `partitions` (one per input topic), if this
    /// instance holds the first: a lookup in each engine's index, microseconds.
    fn customer(&self, id: &str, partitions: &[i32]) -> CustomerAnswer {
        let key = |topic: usize, partition: i32| PartitionKey {
            topic: topic as u16,
            partition,
        };
        let Some(&home) = partitions.first() else {
            return CustomerAnswer::NotOwned;
        };
        if !self.partitions.contains_key(&key(0, home)) {
            return CustomerAnswer::NotOwned;
        }
        let states = partitions
            .iter()
            .enumerate()
            .filter_map(|(topic, &partition)| {
                let key = key(topic, partition);
                let state = self.partitions.get(&key)?;
                let customer = state.engine.customer_image(id)?;
                let as_of = AsOf {
                    offset: state.ledger.next_offset(),
                    watermark: state
                        .engine
                        .newest_event()
                        .map(|_| state.engine.watermark().to_string()),
                };
                let model = state.engine.model();
                Some(CustomerState::new(
                    self.topic_name(key),
                    partition,
                    model,
                    &customer,
                    as_of,
                ))
            })
            .collect();
        CustomerAnswer::Owned(states)
    }

    fn progress_report(&self) -> ProgressReport {
        let rfc3339 = |time: EventTime| time.to_string();
        let partitions = self
            .partitions
            .iter()
            .map(|(&key, state)| PartitionProgress {
                topic: self.topic_name(key).to_owned(),
                partition: key.partition,
                next_offset: state.ledger.next_offset(),
                committed_offset: state.ledger.committed(),
                snapshot_offset: state.ledger.durable(),
                lag: state.lag,
                caught_up: state.ledger.ever_caught_up(),
                replaying_silently_below: state.ledger.suppress_below(),
                in_flight: state.ledger.in_flight(),
                customers: state.engine.customer_count() as u64,
                newest_event: state.engine.newest_event().map(rfc3339),
                watermark: state
                    .engine
                    .newest_event()
                    .map(|_| rfc3339(state.engine.watermark())),
            })
            .collect();
        ProgressReport {
            ready: self.control.is_ready(),
            consumed: self.totals.consumed,
            outputs_sent: self.totals.outputs_sent,
            delivered: self.totals.delivered,
            dead_lettered: self.totals.dead_lettered,
            snapshots_written: self.totals.snapshots_written,
            partitions,
        }
    }

    /// Publishes the totals for `Control`'s readers.
    pub fn publish_totals(&self) {
        let totals = &self.control.totals;
        let store = |to: &AtomicU64, value| to.store(value, Ordering::SeqCst);
        store(&totals.consumed, self.totals.consumed);
        store(&totals.outputs_sent, self.totals.outputs_sent);
        store(&totals.delivered, self.totals.delivered);
        store(&totals.dead_lettered, self.totals.dead_lettered);
        store(&totals.snapshots_written, self.totals.snapshots_written);
    }

    /// Exactly-once: commits the open transaction with every partition's next input
    /// offset, and opens the next one. On failure, aborts when librdkafka says the
    /// transaction requires it, and stops: the restart rewinds to the committed state.
    pub fn commit_transaction(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        if self.transaction.is_none() || self.fatal.is_some() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for (&key, state) in &self.partitions {
            if let Some(next) = state.ledger.next_offset() {
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
        let aborted = match &committed {
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                if let Err(abort_error) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
                    warn!(error = %abort_error, "cannot abort the transaction; the broker aborts it on timeout");
                }
                true
            }
            _ => false,
        };
        TransactionOutcome {
            result: &committed,
            offsets: &offsets,
            aborted,
        }
        .emit(&self.control.metrics);
        match committed {
            Ok(()) => {
                for state in self.partitions.values_mut() {
                    state.ledger.transaction_committed();
                }
                let transaction = self.transaction.as_mut().expect("checked above");
                transaction.committed_at = Instant::now();
                transaction.work = false;
            }
            Err(error) => {
                self.fatal.get_or_insert(PipelineError::Transaction(error));
            }
        }
    }

    /// Takes the delivery reports the producer's callback queued; returns how many.
    pub fn drain_deliveries(&mut self) -> usize {
        let mut drained = 0;
        // Reports are drained every SERVICE_EVERY messages at most, so one reading of
        // the clock per drain is as precise as one per report.
        let now = Instant::now();
        while let Ok(Delivered { tag, error }) = self.deliveries.try_recv() {
            drained += 1;
            self.instruments.produced(tag.sent, Outcome::of(error.is_none()));
            if tag.sent == Produced::Shadow {
                if let (Some(shadow), Some(error)) = (&mut self.shadow, &error) {
                    shadow.delivery_failed(error);
                }
                continue;
            }
            self.instruments
                .produce_latency
                .observe(now.saturating_duration_since(tag.enqueued_at).as_secs_f64());
            if error.is_none() {
                match tag.sent {
                    Produced::DeadLetter => {
                        self.totals.dead_lettered += 1;
                        DeadLettered.emit(&self.control.metrics);
                    }
                    Produced::StageChanged
                    | Produced::CustomerInactive
                    | Produced::CustomerReactivated
                    | Produced::CustomerExpired
                    | Produced::CustomerErased => self.totals.delivered += 1,
                    Produced::Shadow => unreachable!("shadow deliveries are handled above"),
                }
            }
            let Some(state) = current(&mut self.partitions, tag.partition, tag.epoch) else {
                continue;
            };
            match error {
                None => state.ledger.delivered(tag.offset),
                Some(source) => {
                    error!(%source, offset = tag.offset, "output delivery failed; stopping without committing it");
                    let topic = self.sink.topic_of(tag.sent);
                    self.fatal
                        .get_or_insert(PipelineError::Delivery { topic, source });
                }
            }
        }
        drained
    }

    /// At-least-once: hands each partition's new commit offset to the consumer's
    /// offset store (auto-commit sends it).
    pub fn store_offsets(&mut self, consumer: &BaseConsumer<ConsumerHooks>) {
        let mut list = TopicPartitionList::new();
        let topics = &self.settings.input.topics;
        for (&key, state) in &mut self.partitions {
            let Some(offset) = state.ledger.to_store() else {
                continue;
            };
            if list
                .add_partition_offset(key.topic_in(topics), key.partition, Offset::Offset(offset))
                .is_ok()
            {
                state.ledger.stored(offset);
            }
        }
        if list.count() > 0 {
            if let Err(error) = consumer.store_offsets(&list) {
                warn!(%error, "cannot store offsets for commit");
            }
        }
    }

    /// Delivers what is in flight, then waits for reports, bounded by the shutdown
    /// deadline once shutdown began, else by the grace period. Returns how many
    /// outputs are still undelivered.
    pub fn flush(&mut self) -> u64 {
        let grace = self.settings.live.shutdown_grace.as_duration();
        let deadline = self.deadline.unwrap_or_else(|| Instant::now() + grace);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(error) = self.sink.producer.flush(remaining) {
            warn!(%error, "flush did not complete");
        }
        if let (Some(shadow), Some(_)) = (&self.shadow, self.deadline) {
            // At shutdown only, after the live outputs, and briefly: the shadow's
            // outputs never hold a rebalance up, nor a shutdown by more than this.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Err(error) = shadow.producer.flush(remaining.min(SHADOW_FLUSH)) {
                warn!(%error, "the shadow's outputs were not all delivered before stopping");
            }
        }
        self.drain_deliveries();
        self.instruments.flush();
        self.publish_totals();
        self.partitions.values().map(|s| s.ledger.in_flight()).sum()
    }

    /// Fires the inactivity the wall clock reached on each caught-up partition.
    fn tick(&mut self, now: EventTime) {
        let delay = self.settings.live.firing_delay;
        for (&key, state) in &mut self.partitions {
            let Some(through) = state.ledger.fire_through(now) else {
                continue;
            };
            if let (Some(shadow), Some(engine)) = (&mut self.shadow, &mut state.shadow) {
                let offset = state.ledger.next_offset().unwrap_or_default() - 1;
                shadow.advance(engine, through.minus(delay), shadow_tag(key, state.epoch, offset));
            }
            self.outputs.clear();
            state.engine.advance_to(through.minus(delay), &mut self.outputs);
            if self.outputs.is_empty() {
                continue;
            }
            state.snapshot.dirty = true;
            if let Err(error) = send_unprompted(&mut self.sink, &mut self.totals, key, state, &self.outputs) {
                self.fatal.get_or_insert(error);
            }
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

    /// Readiness: partitions assigned (restoring happens inside the assignment), each
    /// caught up once, and none lagging by more than `http.ready_max_lag` messages.
    pub fn update_readiness(&self) {
        let status = &self.control.status;
        let caught_up =
            !self.partitions.is_empty() && self.partitions.values().all(|s| s.ledger.ever_caught_up());
        let max_lag = self.partitions.values().filter_map(|s| s.lag).max();
        let within_lag = max_lag.is_none_or(|lag| lag <= self.settings.http.ready_max_lag as i64);
        let ready = caught_up && within_lag;
        status.caught_up.store(caught_up, Ordering::SeqCst);
        status.max_lag.store(max_lag.unwrap_or(-1), Ordering::SeqCst);
        status
            .assigned_partitions
            .store(self.partitions.len() as u64, Ordering::SeqCst);
        if let Ok(mut owned) = status.owned.lock() {
            owned.clear();
            owned.extend(
                self.partitions
                    .keys()
                    .map(|&key| (self.topic_name(key).to_owned(), key.partition)),
            );
        }
        let metrics = &self.control.metrics;
        metrics.ready.set(i64::from(ready));
        metrics.assigned_partitions.set(self.partitions.len() as i64);
        if status.ready.swap(ready, Ordering::SeqCst) != ready {
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
}
