//! What the outside sees of the running service and how it talks to the owner: the
//! stop switch, readiness ([`Status`]), running totals ([`Totals`]), and the command
//! channel whose [`Command`]s the owner answers over a oneshot.
//!
//! Everything here is written by the owner alone (at each service step) and read by
//! the HTTP endpoint (`crate::http`), `main`, the demo and tests. None of it is read
//! back from Prometheus: metrics are for scraping, this is state of its own.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::core::{CustomerImage, Model, ThresholdId};
use crate::telemetry::Metrics;

/// Commands waiting for the owner beyond this are refused (the owner is stuck or the
/// callers too many): the HTTP layer answers 503.
const COMMAND_QUEUE: usize = 1_024;

/// Shared between the owner and whoever runs it (main, the demo, tests).
#[derive(Debug)]
pub struct Control {
    shutdown: AtomicBool,
    pub status: Status,
    pub totals: Totals,
    pub metrics: Metrics,
    commands: mpsc::Sender<Command>,
    /// The owner's end of the command channel, taken once when the service starts.
    inbox: Mutex<Option<mpsc::Receiver<Command>>>,
}

impl Default for Control {
    fn default() -> Self {
        Control::new(Metrics::new())
    }
}

impl Control {
    /// The control of a service exposing `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        Control {
            shutdown: AtomicBool::new(false),
            status: Status::default(),
            totals: Totals::default(),
            metrics,
            commands,
            inbox: Mutex::new(Some(inbox)),
        }
    }

    /// Asks the service to stop: it stops fetching, delivers, commits and returns.
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub fn is_ready(&self) -> bool {
        self.status.ready.load(Ordering::SeqCst)
    }

    /// Input messages handled, valid or not.
    pub fn consumed(&self) -> u64 {
        self.totals.consumed.load(Ordering::SeqCst)
    }

    /// Outputs (CloudEvents) delivered to the output topic.
    pub fn delivered(&self) -> u64 {
        self.totals.delivered.load(Ordering::SeqCst)
    }

    /// Outputs (CloudEvents) handed to the producer: once every one is delivered,
    /// [`Control::delivered`] equals this.
    pub fn outputs_sent(&self) -> u64 {
        self.totals.outputs_sent.load(Ordering::SeqCst)
    }

    /// Messages delivered to the dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.totals.dead_lettered.load(Ordering::SeqCst)
    }

    /// Snapshots written.
    pub fn snapshots_written(&self) -> u64 {
        self.totals.snapshots_written.load(Ordering::SeqCst)
    }

    /// The owner's end of the command channel; `None` once taken (one service per
    /// `Control`).
    pub(super) fn take_inbox(&self) -> Option<mpsc::Receiver<Command>> {
        self.inbox.lock().map(|mut inbox| inbox.take()).unwrap_or(None)
    }

    /// Sends the command `ask` builds around a reply channel and waits up to `within`
    /// for the answer. The owner answers between messages, within a poll's wait
    /// (10 ms) when idle; it does not answer while it connects to the cluster or
    /// restores partitions.
    ///
    /// # Errors
    /// [`Unanswered`] when the service is not running, its queue is full, or no answer
    /// came in time.
    pub async fn ask<T>(
        &self,
        ask: impl FnOnce(oneshot::Sender<T>) -> Command,
        within: std::time::Duration,
    ) -> Result<T, Unanswered> {
        let (reply, answer) = oneshot::channel();
        self.commands.try_send(ask(reply)).map_err(|_| Unanswered)?;
        match tokio::time::timeout(within, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(Unanswered),
        }
    }
}

/// The service did not answer a command: not running, stopping, or overloaded.
#[derive(Debug, thiserror::Error)]
#[error("the service is not answering (starting, restoring, stopping, or too many requests)")]
pub struct Unanswered;

/// A question for the owner, answered over its oneshot sender.
#[derive(Debug)]
pub enum Command {
    /// Where every assigned partition stands.
    Progress(oneshot::Sender<ProgressReport>),
    /// A customer's state, if this instance owns its partition of the first input
    /// topic: `partitions[i]` is its partition of `input.topics[i]`.
    Customer {
        id: String,
        partitions: Vec<i32>,
        reply: oneshot::Sender<CustomerAnswer>,
    },
}

/// The answer to [`Command::Customer`].
#[derive(Clone, Debug)]
pub enum CustomerAnswer {
    /// Another instance owns the customer's partition of the first input topic (or
    /// nobody does yet).
    NotOwned,
    /// This instance owns it: the customer's state in each of its partitions this
    /// instance holds (empty: the customer is unknown).
    Owned(Vec<CustomerState>),
}

/// One customer's state in one partition: an entry of the lookup's `states`.
#[derive(Clone, Debug, Serialize)]
pub struct CustomerState {
    pub topic: String,
    pub partition: i32,
    pub stage: String,
    pub stage_entered_at: String,
    pub first_seen_at: Option<String>,
    pub last_activity_at: String,
    pub inactivity: Vec<ThresholdState>,
    pub as_of: AsOf,
}

impl CustomerState {
    /// `customer`'s state in `topic`'s `partition`, under `model`: the ladder lists each
    /// threshold that applies to the stage or fired in the current gap.
    pub fn new(topic: &str, partition: i32, model: &Model, customer: &CustomerImage, as_of: AsOf) -> Self {
        let fired: Vec<ThresholdId> = customer
            .gap(model)
            .map(|(start, last)| model.fired_in_gap(start, last).collect())
            .unwrap_or_default();
        let inactivity = model
            .thresholds()
            .iter()
            .enumerate()
            .map(|(i, threshold)| (threshold, fired.contains(&ThresholdId(i as u8))))
            .filter(|&(threshold, fired)| fired || threshold.applies_to(customer.stage))
            .map(|(threshold, fired)| ThresholdState {
                threshold: threshold.name.clone(),
                due_at: customer.last_activity.time().plus(threshold.after).to_string(),
                fired,
            })
            .collect();
        CustomerState {
            topic: topic.to_owned(),
            partition,
            stage: model.stage_name(customer.stage).to_owned(),
            stage_entered_at: customer.stage_entered.time().to_string(),
            first_seen_at: customer.first_seen.known().map(|time| time.to_string()),
            last_activity_at: customer.last_activity.time().to_string(),
            inactivity,
            as_of,
        }
    }
}

/// One threshold of the ladder that applies to the customer's stage (or fired in the
/// current gap).
#[derive(Clone, Debug, Serialize)]
pub struct ThresholdState {
    pub threshold: String,
    pub due_at: String,
    pub fired: bool,
}

/// What a customer's state reflects: the partition's next offset and its watermark.
#[derive(Clone, Debug, Serialize)]
pub struct AsOf {
    pub offset: Option<i64>,
    pub watermark: Option<String>,
}

/// Readiness as the owner last published it.
#[derive(Debug, Default)]
pub struct Status {
    /// The input partitions this instance holds, restored: `(topic, partition)`. The
    /// lookup API publishes them for the other instances.
    pub owned: Mutex<Vec<(String, i32)>>,
    /// Partitions assigned and restored, every one caught up at least once, and none
    /// lagging by more than `http.ready_max_lag` (when the lag is known).
    pub ready: AtomicBool,
    /// Partitions assigned and every one of them caught up at least once.
    pub caught_up: AtomicBool,
    /// The largest lag over the assigned partitions in messages, -1 until known.
    pub max_lag: AtomicI64,
    pub assigned_partitions: AtomicU64,
    /// `http.ready_max_lag`, for the `/readyz` body.
    pub ready_max_lag: AtomicU64,
}

/// Running totals since start, added by the owner at each service step.
#[derive(Debug, Default)]
pub struct Totals {
    pub consumed: AtomicU64,
    pub outputs_sent: AtomicU64,
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub snapshots_written: AtomicU64,
}

/// The answer to [`Command::Progress`]: the `/progress` body.
#[derive(Clone, Debug, Serialize)]
pub struct ProgressReport {
    pub ready: bool,
    pub consumed: u64,
    pub outputs_sent: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub snapshots_written: u64,
    pub partitions: Vec<PartitionProgress>,
}

/// One assigned partition in a [`ProgressReport`].
#[derive(Clone, Debug, Serialize)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read (what a snapshot taken now would cover).
    pub next_offset: Option<i64>,
    /// The offset last stored for commit or committed with a transaction.
    pub committed_offset: Option<i64>,
    /// The newest written snapshot's offset.
    pub snapshot_offset: Option<i64>,
    /// Messages behind the high watermark, once librdkafka's statistics said.
    pub lag: Option<i64>,
    pub caught_up: bool,
    /// Messages below this offset are replayed without output (delivered before).
    pub replaying_silently_below: Option<i64>,
    /// Outputs sent and not yet delivered.
    pub in_flight: u64,
    pub customers: u64,
    /// The newest event time applied, RFC 3339.
    pub newest_event: Option<String>,
    /// The watermark, RFC 3339, once an event was applied.
    pub watermark: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{test_model, LAPSING_MODEL};
    use crate::core::{EventTime, Instant48, StageId};

    #[test]
    fn a_lookup_marks_exactly_the_thresholds_that_fired_in_the_gap() {
        let model = test_model(LAPSING_MODEL);
        const DAY: i64 = 86_400_000;
        let last_activity = EventTime::from_millis(0);
        // A customer whose 30-day lapse moved it to lapsed, then 60 days passed.
        let customer = CustomerImage {
            last_activity: Instant48::at(last_activity),
            stage: StageId(2),
            armed: None,
            ladder: 3,
            stage_entered: Instant48::at(EventTime::from_millis(30 * DAY)),
            first_seen: Instant48::at(last_activity),
        };
        let as_of = AsOf {
            offset: Some(1),
            watermark: None,
        };
        let state = CustomerState::new("events", 0, &model, &customer, as_of);
        let ladder: Vec<(&str, &str, bool)> = state
            .inactivity
            .iter()
            .map(|t| (t.threshold.as_str(), t.due_at.as_str(), t.fired))
            .collect();
        assert_eq!(
            ladder,
            [
                ("lapse", "1970-01-31T00:00:00.000Z", true),
                ("gone", "1970-03-02T00:00:00.000Z", true),
            ],
            "the nudge never applied: the gap began in customer"
        );
    }
}
