//! Every metric stagestream exports, declared in one place and registered once.
//!
//! The service's owner (`crate::pipeline`) updates them as it works; the HTTP endpoint
//! (`crate::http`) renders the registry for Prometheus. Label values come from small
//! fixed sets: the enums of [`super::labels`], reasons, stage and threshold names from
//! the configured model, topic and partition numbers. A customer id, message or event
//! name is never a label.
//! docs/operations.md lists each metric with what it is for.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::labels::{Consumed, ModelRole, Outcome, Produced, RebalanceKind, Route};
use crate::core::Model;

/// Seconds, 10 µs to 30 s: processing one event, producing, snapshot steps.
const LATENCY_BUCKETS: [f64; 20] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Seconds an event arrives after it happened: 10 ms to a week (backfills are older).
const DELAY_BUCKETS: [f64; 16] = [
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3_600.0,
    6.0 * 3_600.0,
    86_400.0,
    3.0 * 86_400.0,
    7.0 * 86_400.0,
];

/// Time spent in a stage: one minute to a year.
const TIME_IN_STAGE_BUCKETS: [f64; 13] = [
    60.0,
    600.0,
    3_600.0,
    6.0 * 3_600.0,
    86_400.0,
    2.0 * 86_400.0,
    3.0 * 86_400.0,
    7.0 * 86_400.0,
    14.0 * 86_400.0,
    30.0 * 86_400.0,
    90.0 * 86_400.0,
    180.0 * 86_400.0,
    365.0 * 86_400.0,
];

/// The `stagestream_*` metrics, plus the standard `process_*` ones.
pub struct Metrics {
    registry: Registry,
    // Counters.
    /// Input messages by `result`: ok, invalid, duplicate, ignored, late.
    pub events_consumed: IntCounterVec,
    /// Invalid input messages by `reason` (the decoder's codes, `future_timestamp`).
    pub invalid_events: IntCounterVec,
    /// Input messages delivered to the dead-letter topic.
    pub dead_lettered: IntCounter,
    /// Input messages applied to rebuild state without sending outputs again (their
    /// outputs were delivered before a restart or handover).
    pub replayed_without_output: IntCounter,
    /// Stage transitions by `from` (`none` for a first one) and `to`; with a shadow
    /// model configured, first by `model` (`live` or `shadow`): [`Metrics::model_values`].
    pub transitions: IntCounterVec,
    /// Inactivity events by `threshold` and the `stage` held (drop-off by stage); with a
    /// shadow model configured, first by `model`.
    pub inactivity_events: IntCounterVec,
    /// Whether `transitions` and `inactivity_events` carry the `model` label.
    by_model: bool,
    /// Customers who came back after a gap in which a threshold fired, by the `stage`
    /// they returned in and the last `threshold` fired before the return.
    pub reactivations: IntCounterVec,
    /// Customers erased by an erase request (tombstone, erase line, `DELETE`).
    pub customers_erased: IntCounter,
    /// Customers whose state expired (`state.expire_after`).
    pub customers_expired: IntCounter,
    /// Requests to the customer routes by `route` and HTTP `status`.
    pub lookups: IntCounterVec,
    /// Records produced by `type` (stage_changed, customer_inactive,
    /// customer_reactivated, customer_expired, customer_erased, dead_letter) and `result` (ok, error): counted at the delivery
    /// report.
    pub produced: IntCounterVec,
    /// Rebalance callbacks by `kind` (assign, revoke).
    pub rebalances: IntCounterVec,
    /// Snapshot writes by `result` (ok, error).
    pub snapshots: IntCounterVec,
    /// Snapshot files found corrupt at restore and set aside.
    pub snapshots_corrupt: IntCounter,
    /// Offset commits by `result` (ok, error); transactions in exactly-once mode.
    pub commits: IntCounterVec,
    /// librdkafka's transmit and receive errors by `client`, `broker`, `direction`.
    pub kafka_broker_errors: IntCounterVec,
    // Gauges.
    /// Customers in each `stage`, over the assigned partitions.
    pub customers: IntGaugeVec,
    /// Customers with an inactivity threshold pending.
    pub armed_timers: IntGauge,
    pub assigned_partitions: IntGauge,
    /// 1 when `/readyz` answers 200.
    pub ready: IntGauge,
    /// Messages between the high watermark and the next to be read, per `topic` and
    /// `partition` (librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Event time of the newest event applied, per `topic` and `partition`.
    pub last_event_time: IntGaugeVec,
    /// Watermark (newest event time minus the allowed lateness), per partition.
    pub watermark: IntGaugeVec,
    /// When the partition's state was last known saved: a snapshot written, or due
    /// with nothing new to save.
    pub last_snapshot_time: IntGaugeVec,
    /// Size of the partition's last snapshot file.
    pub snapshot_size: IntGaugeVec,
    /// Records waiting in librdkafka's queue, by `client`.
    pub kafka_queue_messages: IntGaugeVec,
    /// Broker round-trip time, 99th percentile over librdkafka's statistics window.
    pub kafka_broker_rtt_p99: prometheus::GaugeVec,
    /// 1 while librdkafka's connection to the broker is up.
    pub kafka_broker_up: IntGaugeVec,
    // Histograms.
    /// Handling one input message: decode, classify, enqueue its outputs.
    pub processing: Histogram,
    /// Wall clock minus event time when an event is applied.
    pub event_delay: Histogram,
    /// From enqueueing a record to its delivery report.
    pub produce_latency: Histogram,
    /// Snapshot steps by `step`: pause (one step of the copy on the consumer thread),
    /// encode, write.
    pub snapshot_duration: HistogramVec,
    /// Event time a customer spent in `stage` before leaving it.
    pub time_in_stage: HistogramVec,
    /// Event time from a customer's first activity to a forward move into `stage`.
    pub time_to_stage: HistogramVec,
    /// Time to answer a request to the customer routes, by `route`.
    pub lookup_duration: HistogramVec,
}

impl Metrics {
    /// Registers every metric on a fresh registry, with `build_info` and the process
    /// collector.
    pub fn new() -> Self {
        Metrics::build(false)
    }

    /// [`Metrics::new`] for a service with a shadow model: transitions and inactivity
    /// events are counted by `model` as well, `live` or `shadow`. Without a shadow the
    /// label is left out, so the series of a service without one stay as they were.
    pub fn with_model_label() -> Self {
        Metrics::build(true)
    }

    /// `labels` of a transition or inactivity series, after `model` when the metrics
    /// carry that label.
    pub fn model_values<'a>(&self, model: &'a str, labels: &[&'a str]) -> Vec<&'a str> {
        match self.by_model {
            true => std::iter::once(model).chain(labels.iter().copied()).collect(),
            false => labels.to_vec(),
        }
    }

    fn build(by_model: bool) -> Self {
        let registry = Registry::new();
        let with_model = |labels: &[&'static str]| -> Vec<&'static str> {
            match by_model {
                true => std::iter::once("model").chain(labels.iter().copied()).collect(),
                false => labels.to_vec(),
            }
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            register(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
            )
        };
        let partition = &["topic", "partition"];
        let broker = &["client", "broker"];
        let metrics = Metrics {
            events_consumed: counter(
                "stagestream_events_consumed_total",
                "Input messages consumed, by result: ok, invalid, duplicate, ignored, late.",
                &["result"],
            ),
            invalid_events: counter(
                "stagestream_invalid_events_total",
                "Invalid input messages, by reason.",
                &["reason"],
            ),
            dead_lettered: counter(
                "stagestream_dead_lettered_messages_total",
                "Input messages delivered to the dead-letter topic.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            replayed_without_output: counter(
                "stagestream_replayed_without_output_total",
                "Input messages re-applied to rebuild state whose outputs were delivered before.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            transitions: counter(
                "stagestream_stage_transitions_total",
                "Stage transitions emitted, by from stage (none for a first one) and to stage (and model, live or shadow, when a shadow runs).",
                &with_model(&["from", "to"]),
            ),
            inactivity_events: counter(
                "stagestream_inactivity_events_total",
                "Inactivity events emitted, by threshold and the stage held during the gap (and model, live or shadow, when a shadow runs).",
                &with_model(&["threshold", "stage"]),
            ),
            by_model,
            reactivations: counter(
                "stagestream_reactivations_total",
                "Customers who came back after a gap in which a threshold fired, by the stage they returned in and the last threshold fired.",
                &["stage", "threshold"],
            ),
            customers_erased: counter(
                "stagestream_customers_erased_total",
                "Erase requests applied (tombstones, erase lines, DELETE /customers/{id}).",
                &[],
            )
            .with_label_values::<&str>(&[]),
            customers_expired: counter(
                "stagestream_customers_expired_total",
                "Customers whose state expired after state.expire_after without activity.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            lookups: counter(
                "stagestream_lookups_total",
                "Requests to the customer routes, by route and HTTP status.",
                &["route", "status"],
            ),
            produced: counter(
                "stagestream_produced_messages_total",
                "Records produced, by type (stage_changed, customer_inactive, customer_reactivated, customer_expired, customer_erased, dead_letter) and delivery result.",
                &["type", "result"],
            ),
            rebalances: counter(
                "stagestream_rebalances_total",
                "Consumer group rebalance callbacks, by kind (assign, revoke).",
                &["kind"],
            ),
            snapshots: counter(
                "stagestream_snapshots_total",
                "Snapshot writes, by result (ok, error).",
                &["result"],
            ),
            snapshots_corrupt: counter(
                "stagestream_snapshots_corrupt_total",
                "Snapshot files found corrupt when restoring and set aside.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            commits: counter(
                "stagestream_commits_total",
                "Offset commits (transactions in exactly-once mode), by result (ok, error).",
                &["result"],
            ),
            kafka_broker_errors: counter(
                "stagestream_kafka_broker_errors_total",
                "librdkafka transmit and receive errors, by client, broker and direction.",
                &["client", "broker", "direction"],
            ),
            customers: gauge(
                "stagestream_customers",
                "Customers held in each stage over the assigned partitions.",
                &["stage"],
            ),
            armed_timers: gauge(
                "stagestream_armed_inactivity_timers",
                "Customers with an inactivity threshold pending.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            assigned_partitions: gauge(
                "stagestream_assigned_partitions",
                "Input partitions assigned to this instance.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            ready: gauge(
                "stagestream_ready",
                "1 when the instance is ready: partitions assigned, restored, caught up within the allowed lag.",
                &[],
            )
            .with_label_values::<&str>(&[]),
            consumer_lag: gauge(
                "stagestream_consumer_lag_messages",
                "Messages between a partition's high watermark and the next one to read.",
                partition,
            ),
            last_event_time: gauge(
                "stagestream_last_event_timestamp_seconds",
                "Event time of the newest event applied on a partition.",
                partition,
            ),
            watermark: gauge(
                "stagestream_watermark_timestamp_seconds",
                "A partition's watermark: newest event time minus the allowed lateness.",
                partition,
            ),
            last_snapshot_time: gauge(
                "stagestream_last_snapshot_timestamp_seconds",
                "When a partition's state was last known saved (snapshot written, or due with nothing new).",
                partition,
            ),
            snapshot_size: gauge(
                "stagestream_snapshot_size_bytes",
                "Size of a partition's last snapshot file.",
                partition,
            ),
            kafka_queue_messages: gauge(
                "stagestream_kafka_queue_messages",
                "Records waiting in librdkafka's queue, by client.",
                &["client"],
            ),
            kafka_broker_rtt_p99: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "stagestream_kafka_broker_rtt_p99_seconds",
                        "Broker round-trip time, 99th percentile of librdkafka's statistics window.",
                    ),
                    broker,
                ),
            ),
            kafka_broker_up: gauge(
                "stagestream_kafka_broker_up",
                "1 while librdkafka's connection to the broker is up.",
                broker,
            ),
            processing: histogram(
                "stagestream_event_processing_seconds",
                "Time to handle one input message: decode, classify, enqueue its outputs.",
                &[],
                LATENCY_BUCKETS.to_vec(),
            )
            .with_label_values::<&str>(&[]),
            event_delay: histogram(
                "stagestream_event_delay_seconds",
                "Wall clock minus event time when an event is applied.",
                &[],
                DELAY_BUCKETS.to_vec(),
            )
            .with_label_values::<&str>(&[]),
            produce_latency: histogram(
                "stagestream_produce_latency_seconds",
                "From enqueueing a record to its delivery report.",
                &[],
                LATENCY_BUCKETS.to_vec(),
            )
            .with_label_values::<&str>(&[]),
            snapshot_duration: histogram(
                "stagestream_snapshot_duration_seconds",
                "Snapshot steps: pause (one step of the copy on the consumer thread), encode, write.",
                &["step"],
                LATENCY_BUCKETS.to_vec(),
            ),
            time_in_stage: histogram(
                "stagestream_time_in_stage_seconds",
                "Event time a customer spent in a stage before leaving it.",
                &["stage"],
                TIME_IN_STAGE_BUCKETS.to_vec(),
            ),
            time_to_stage: histogram(
                "stagestream_time_to_stage_seconds",
                "Event time from a customer's first activity to reaching a stage (each forward move into it; 0 for the stage a customer starts in).",
                &["stage"],
                TIME_IN_STAGE_BUCKETS.to_vec(),
            ),
            lookup_duration: histogram(
                "stagestream_lookup_duration_seconds",
                "Time to answer a request to the customer routes, by route.",
                &["route"],
                LATENCY_BUCKETS.to_vec(),
            ),
            registry,
        };
        let build_info = register(
            &metrics.registry,
            IntGaugeVec::new(
                Opts::new("stagestream_build_info", "Build information; always 1."),
                &["version"],
            ),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        metrics
            .registry
            .register(Box::new(process))
            .expect("process metrics register once");
        metrics
    }

    /// Creates the series of every label value known up front (results, reasons,
    /// stages, thresholds), so a counter reads 0 before it first moves: rates and
    /// alerts then see its first increment.
    pub fn initialise(&self, model: &Model, reasons: &[&str]) {
        for result in Consumed::ALL {
            self.events_consumed.with_label_values(&[result.as_str()]);
        }
        for reason in reasons {
            self.invalid_events.with_label_values(&[reason]);
        }
        for kind in Produced::ALL {
            for result in Outcome::ALL {
                self.produced.with_label_values(&[kind.as_str(), result.as_str()]);
            }
        }
        for route in Route::ALL {
            self.lookup_duration.with_label_values(&[route.as_str()]);
        }
        for kind in RebalanceKind::ALL {
            self.rebalances.with_label_values(&[kind.as_str()]);
        }
        for result in Outcome::ALL {
            self.snapshots.with_label_values(&[result.as_str()]);
            self.commits.with_label_values(&[result.as_str()]);
        }
        for stage in model.stage_names() {
            self.customers.with_label_values(&[stage]);
            for threshold in model.thresholds() {
                self.inactivity_events.with_label_values(
                    &self.model_values(ModelRole::Live.as_str(), &[threshold.name.as_str(), stage]),
                );
                self.reactivations
                    .with_label_values(&[stage, threshold.name.as_str()]);
            }
        }
    }

    /// Drops the per-partition series of a partition no longer assigned.
    pub fn forget_partition(&self, topic: &str, partition: &str) {
        for gauge in [
            &self.consumer_lag,
            &self.last_event_time,
            &self.watermark,
            &self.last_snapshot_time,
            &self.snapshot_size,
        ] {
            let _ = gauge.remove_label_values(&[topic, partition]);
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# metrics could not be encoded: {error}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers a metric built from constant options: both can only fail on a
/// programming error (bad name, duplicate), which every test run would hit.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<C>) -> C {
    let metric = metric.expect("valid metric options");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}
