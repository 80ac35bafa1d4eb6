//! The owner's notable happenings as typed internal events: each `emit` writes the
//! event's one log line and moves its counters, so the two cannot drift (vector's
//! `internal_events`). Per-message counters of the hot path live in
//! `super::instruments` instead.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;
use tracing::{debug, error, info, warn};

use super::snapshots::Ticket;
use crate::telemetry::labels::{Outcome, RebalanceKind, SnapshotStep};
use crate::telemetry::Metrics;

/// The invalid-event reason of an event stamped too far ahead of the wall clock.
pub(super) const FUTURE_TIMESTAMP: &str = "future_timestamp";

/// An input message that is not applied: invalid (decoder's reason or
/// `future_timestamp`) or late. Dead-lettered when a `dlq.topic` is set.
pub(super) struct Rejected<'a> {
    pub reason: &'static str,
    pub late: bool,
    /// Replayed to rebuild state after a restart or handover: it was logged and
    /// dead-lettered when first read, so it is only counted.
    pub silent: bool,
    /// May quote the payload (a JSON parser shows where it failed), so it is logged at
    /// debug only; the dead letter carries it in its headers.
    pub detail: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Rejected<'_> {
    pub fn emit(self, metrics: &Metrics, warnings: &mut RateLimited) {
        if !self.late {
            metrics.invalid_events.with_label_values(&[self.reason]).inc();
        }
        if self.silent {
            return;
        }
        let (reason, topic, partition, offset) = (self.reason, self.topic, self.partition, self.offset);
        warnings.warn(|suppressed| {
            warn!(reason, topic, partition, offset, suppressed, "invalid input");
        });
        debug!(reason, detail = %self.detail, offset, "invalid input detail");
    }
}

/// A dead letter's delivery was confirmed.
pub(super) struct DeadLettered;

impl DeadLettered {
    pub fn emit(self, metrics: &Metrics) {
        metrics.dead_lettered.inc();
    }
}

/// A rebalance the owner handled.
pub(super) struct Rebalanced {
    pub kind: RebalanceKind,
    pub partitions: usize,
    pub lost: bool,
}

impl Rebalanced {
    pub fn emit(self, metrics: &Metrics) {
        metrics.rebalances.with_label_values(&[self.kind.as_str()]).inc();
        info!(
            kind = self.kind.as_str(),
            partitions = self.partitions,
            lost = self.lost,
            "rebalance"
        );
    }
}

/// A finished snapshot write, from the snapshot thread or the owner's own.
pub(super) struct SnapshotWritten<'a> {
    pub ticket: &'a Ticket,
    pub size: u64,
    /// How long the write took; `None` when the file was never written (the encode
    /// into it failed), so that `step="write"` times only writes.
    pub took: Option<Duration>,
    pub result: &'a std::io::Result<()>,
}

impl SnapshotWritten<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let ticket = self.ticket;
        if let Some(took) = self.took {
            metrics
                .snapshot_duration
                .with_label_values(&[SnapshotStep::Write.as_str()])
                .observe(took.as_secs_f64());
        }
        let outcome = Outcome::of(self.result.is_ok());
        metrics.snapshots.with_label_values(&[outcome.as_str()]).inc();
        match self.result {
            Ok(()) => info!(
                topic = %ticket.topic,
                partition = ticket.partition.partition,
                offset = ticket.offset,
                bytes = self.size,
                took_ms = self.took.unwrap_or_default().as_secs_f64() * 1e3,
                "snapshot written"
            ),
            Err(error) => warn!(
                topic = %ticket.topic,
                partition = ticket.partition.partition,
                offset = ticket.offset,
                %error,
                "snapshot write failed; offsets stay where the last snapshot put them, retried at the next interval"
            ),
        }
    }
}

/// A step of taking a snapshot finished: one step of the image copy on the owner
/// thread (`Pause`), or the encode on the snapshot thread. Writes are
/// [`SnapshotWritten`].
pub(super) struct SnapshotStepTaken {
    pub step: SnapshotStep,
    pub took: Duration,
}

impl SnapshotStepTaken {
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .snapshot_duration
            .with_label_values(&[self.step.as_str()])
            .observe(self.took.as_secs_f64());
    }
}

/// A consumer offset commit finished (automatic or explicit): counted and logged from
/// librdkafka's commit callback, which reports both.
pub(super) struct OffsetsCommitted<'a> {
    pub result: &'a KafkaResult<()>,
    pub offsets: &'a TopicPartitionList,
}

impl OffsetsCommitted<'_> {
    pub fn emit(self, metrics: &Metrics) {
        match self.result {
            // Nothing was stored since the last commit: not a commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Ok(()) => {
                metrics.commits.with_label_values(&[Outcome::Ok.as_str()]).inc();
                debug!(offsets = ?commit_summary(self.offsets), "offsets committed");
            }
            Err(error) => {
                metrics
                    .commits
                    .with_label_values(&[Outcome::Error.as_str()])
                    .inc();
                warn!(%error, "offset commit failed; it is retried with the next one");
            }
        }
    }
}

/// Exactly-once: a transaction commit (with the input offsets) and what became of it.
pub(super) struct TransactionOutcome<'a> {
    pub result: &'a KafkaResult<()>,
    pub offsets: &'a TopicPartitionList,
    /// Whether a failed transaction was aborted.
    pub aborted: bool,
}

impl TransactionOutcome<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let outcome = Outcome::of(self.result.is_ok());
        metrics.commits.with_label_values(&[outcome.as_str()]).inc();
        match self.result {
            Ok(()) => debug!(offsets = ?commit_summary(self.offsets), "transaction committed"),
            Err(error) => error!(%error, aborted = self.aborted, "transaction failed; stopping"),
        }
    }
}

/// `topic/partition@offset` for each entry, for log lines.
pub(super) fn commit_summary(list: &TopicPartitionList) -> Vec<String> {
    list.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

/// At most one warning per `every`, counting those it held back.
pub(super) struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    pub(super) fn warn(&mut self, emit: impl FnOnce(u64)) {
        if self.last.is_some_and(|last| last.elapsed() < self.every) {
            self.suppressed += 1;
            return;
        }
        emit(self.suppressed);
        self.suppressed = 0;
        self.last = Some(Instant::now());
    }
}
