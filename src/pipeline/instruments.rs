//! The service's instruments: what the owner counts per message and per delivery
//! report, and from librdkafka's statistics, with the label lookups resolved once so the
//! per-message path only increments.
//!
//! Metrics are declared in `crate::telemetry::metrics`; this module maps the owner's
//! per-message work onto them (outputs, consumed messages, librdkafka statistics).
//! Rarer happenings are typed events of their own (`super::events`).

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter};
use rdkafka::Statistics;

use crate::core::{Model, Output, Verdict};
use crate::telemetry::labels::{Client, Consumed, Direction, ModelRole, Outcome, Produced};
use crate::telemetry::Metrics;

/// What the engine's verdict on an applied-or-not event counts as.
pub(super) fn consumed(verdict: Verdict) -> Consumed {
    match verdict {
        Verdict::Applied => Consumed::Ok,
        Verdict::Ignored => Consumed::Ignored,
        Verdict::Duplicate => Consumed::Duplicate,
        Verdict::Late => Consumed::Late,
    }
}

/// The instruments the owner moves for every message and delivery report, counted
/// without atomic operations and added to the shared metrics by
/// [`MessageInstruments::flush`] at every service step (every `SERVICE_EVERY` messages,
/// each idle poll, each tick, and at shutdown), so a scrape sees them at most one step
/// late. A shared histogram observation is four atomic operations and the owner made
/// two per message; counting here, and polling without a timeout while messages keep
/// coming, cut the owner's CPU per event by ~5% (docs/performance.md).
pub(super) struct MessageInstruments {
    /// `stagestream_events_consumed_total` by [`Consumed`].
    consumed: Vec<LocalIntCounter>,
    /// `stagestream_produced_messages_total` by [`Produced`] and [`Outcome`].
    produced: Vec<[LocalIntCounter; 2]>,
    pub processing: LocalHistogram,
    pub event_delay: LocalHistogram,
    pub produce_latency: LocalHistogram,
}

impl MessageInstruments {
    pub fn new(metrics: &Metrics) -> Self {
        MessageInstruments {
            consumed: Consumed::ALL
                .iter()
                .map(|result| {
                    metrics
                        .events_consumed
                        .with_label_values(&[result.as_str()])
                        .local()
                })
                .collect(),
            produced: Produced::ALL
                .iter()
                .map(|sent| {
                    [Outcome::Ok, Outcome::Error].map(|result| {
                        metrics
                            .produced
                            .with_label_values(&[sent.as_str(), result.as_str()])
                            .local()
                    })
                })
                .collect(),
            processing: metrics.processing.local(),
            event_delay: metrics.event_delay.local(),
            produce_latency: metrics.produce_latency.local(),
        }
    }

    /// Counts one input message.
    pub fn consumed(&self, result: Consumed) {
        self.consumed[result as usize].inc();
    }

    /// Counts one delivery report.
    pub fn produced(&self, sent: Produced, outcome: Outcome) {
        self.produced[sent as usize][outcome as usize].inc();
    }

    /// Adds what was counted since the last flush to the shared metrics.
    pub fn flush(&self) {
        self.consumed
            .iter()
            .chain(self.produced.iter().flatten())
            .for_each(LocalIntCounter::flush);
        for histogram in [&self.processing, &self.event_delay, &self.produce_latency] {
            histogram.flush();
        }
    }
}

/// The counters every output moves, resolved once per label combination (a lookup by
/// label values hashes them; this is one index per output).
pub(super) struct OutputCounters {
    stages: usize,
    /// By `(from + 1) * stages + to`, `from` 0 meaning none.
    transitions: Vec<IntCounter>,
    /// By `threshold * stages + stage`.
    inactivity: Vec<IntCounter>,
    /// What only the live model's outputs move; `None` for the shadow's, which count
    /// as transitions and inactivity only (under `model="shadow"`).
    live: Option<LiveCounters>,
}

/// The live model's counters beyond transitions and inactivity.
struct LiveCounters {
    /// By `threshold * stages + stage`.
    reactivations: Vec<IntCounter>,
    /// By stage left.
    time_in_stage: Vec<Histogram>,
    /// By stage reached.
    time_to_stage: Vec<Histogram>,
    expired: IntCounter,
    erased: IntCounter,
}

impl OutputCounters {
    /// The counters of `model`'s outputs, which `role` produces.
    pub fn new(metrics: &Metrics, model: &Model, role: ModelRole) -> Self {
        let names: Vec<&str> = model.stage_names().collect();
        let froms = std::iter::once("none").chain(names.iter().copied());
        let by_threshold_and_stage =
            |counters: &prometheus::IntCounterVec,
             labels: &dyn for<'a> Fn(&'a str, &'a str) -> Vec<&'a str>| {
                model
                    .thresholds()
                    .iter()
                    .flat_map(|threshold| {
                        names.iter().map(move |&stage| {
                            counters.with_label_values(&labels(threshold.name.as_str(), stage))
                        })
                    })
                    .collect()
            };
        let by_stage = |histograms: &prometheus::HistogramVec| {
            names
                .iter()
                .map(|stage| histograms.with_label_values(&[stage]))
                .collect()
        };
        let role_name = role.as_str();
        OutputCounters {
            stages: names.len(),
            transitions: froms
                .flat_map(|from| {
                    names.iter().map(move |to| {
                        metrics
                            .transitions
                            .with_label_values(&metrics.model_values(role_name, &[from, to]))
                    })
                })
                .collect(),
            inactivity: by_threshold_and_stage(&metrics.inactivity_events, &|threshold, stage| {
                metrics.model_values(role_name, &[threshold, stage])
            }),
            live: (role == ModelRole::Live).then(|| LiveCounters {
                reactivations: by_threshold_and_stage(&metrics.reactivations, &|threshold, stage| {
                    vec![stage, threshold]
                }),
                time_in_stage: by_stage(&metrics.time_in_stage),
                time_to_stage: by_stage(&metrics.time_to_stage),
                expired: metrics.customers_expired.clone(),
                erased: metrics.customers_erased.clone(),
            }),
        }
    }

    pub fn record(&self, output: &Output) {
        match *output {
            Output::StageChanged {
                from,
                to,
                at,
                first_seen,
                ..
            } => {
                let from_index = from.map_or(0, |f| usize::from(f.0) + 1);
                self.transitions[from_index * self.stages + usize::from(to.0)].inc();
                let Some(live) = &self.live else { return };
                if let (Some(from), Some(held)) = (from, output.time_in_from()) {
                    live.time_in_stage[usize::from(from.0)].observe(held.as_millis() as f64 / 1e3);
                }
                if let Some(first_seen) = first_seen.filter(|_| from.is_none_or(|from| to > from)) {
                    let since_first = (at.as_millis() - first_seen.as_millis()).max(0);
                    live.time_to_stage[usize::from(to.0)].observe(since_first as f64 / 1e3);
                }
            }
            Output::Inactive { threshold, stage, .. } => {
                self.inactivity[usize::from(threshold.0) * self.stages + usize::from(stage.0)].inc()
            }
            Output::Reactivated {
                stage,
                last_threshold,
                ..
            } => {
                if let Some(live) = &self.live {
                    live.reactivations[usize::from(last_threshold.0) * self.stages + usize::from(stage.0)]
                        .inc()
                }
            }
            Output::Expired { .. } => self.live.iter().for_each(|live| live.expired.inc()),
            Output::Erased { .. } => self.live.iter().for_each(|live| live.erased.inc()),
            // Its `from` stage is no label of this model; the customers gauge shows the move.
            Output::Migrated { .. } => {}
        }
    }
}

/// A partition's `topic` and `partition` label values.
pub(super) struct PartitionLabels([String; 2]);

impl PartitionLabels {
    pub fn new(topic: &str, partition: i32) -> Self {
        PartitionLabels([topic.to_owned(), partition.to_string()])
    }

    pub fn values(&self) -> [&str; 2] {
        [&self.0[0], &self.0[1]]
    }
}

/// The Kafka-client gauges of one client's statistics: queue depth and, per broker,
/// connection state, round-trip time and errors.
pub(super) fn record_client_statistics(metrics: &Metrics, client: Client, statistics: &Statistics) {
    let client = client.as_str();
    metrics
        .kafka_queue_messages
        .with_label_values(&[client])
        .set(i64::try_from(statistics.msg_cnt).unwrap_or(i64::MAX));
    // Bootstrap and coordinator handles (node id -1) duplicate the real brokers.
    for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
        let labels = [client, broker.name.as_str()];
        metrics
            .kafka_broker_up
            .with_label_values(&labels)
            .set(i64::from(broker.state == "UP"));
        if let Some(rtt) = &broker.rtt {
            metrics
                .kafka_broker_rtt_p99
                .with_label_values(&labels)
                .set(rtt.p99 as f64 / 1e6);
        }
        for (direction, total) in [(Direction::Tx, broker.txerrs), (Direction::Rx, broker.rxerrs)] {
            let labels = [client, broker.name.as_str(), direction.as_str()];
            let counter = metrics.kafka_broker_errors.with_label_values(&labels);
            // librdkafka reports running totals; the counter follows them.
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_instruments_reach_the_shared_metrics_only_when_flushed() {
        let metrics = Metrics::new();
        let instruments = MessageInstruments::new(&metrics);
        instruments.consumed(Consumed::Duplicate);
        instruments.produced(Produced::DeadLetter, Outcome::Error);
        instruments.processing.observe(0.001);
        instruments.event_delay.observe(2.0);
        instruments.produce_latency.observe(0.003);

        let duplicates = metrics.events_consumed.with_label_values(&["duplicate"]);
        let dead_letter_errors = metrics.produced.with_label_values(&["dead_letter", "error"]);
        let histograms = [
            &metrics.processing,
            &metrics.event_delay,
            &metrics.produce_latency,
        ];
        assert_eq!(duplicates.get(), 0);
        assert!(histograms.iter().all(|h| h.get_sample_count() == 0));

        instruments.flush();
        assert_eq!(duplicates.get(), 1);
        assert_eq!(dead_letter_errors.get(), 1);
        assert_eq!(histograms.map(|h| h.get_sample_count()), [1, 1, 1]);
        assert_eq!(metrics.event_delay.get_sample_sum(), 2.0);

        instruments.flush();
        assert_eq!(duplicates.get(), 1, "a flush adds only what came since the last");
    }
}
