//! stagestream: classifies customers into journey stages from a stream of behavioural events.
//!
//! # Layout
//! - [`core`]: the pure engine (events, stage model, rules, inactivity ladder). No I/O.
//! - [`decode`]: bytes -> [`core::Record`] (an event or an erase request), with a typed
//!   reason for every rejection.
//! - [`output`]: engine outputs -> CloudEvents JSON.
//! - [`config`]: configuration file + environment -> validated settings.
//! - [`replay`]: runs the engine over a JSON-lines file (`stagestream replay`).
//! - [`generate`]: a deterministic, realistic event stream for examples, tests and benches.
//! - [`kafka`]: the `[kafka]` section and every librdkafka property decision.
//! - [`partitioner`]: which input partition holds a customer id (`input.partitioner`).
//! - [`members`]: which instance holds which input partition, for lookup redirects.
//! - [`pipeline`]: the live service (`stagestream run`): consume, classify per
//!   partition, produce CloudEvents, commit what was delivered.
//! - [`snapshot`]: per-partition state files (format, store, restore).
//! - [`inspect`]: `stagestream inspect`, what snapshot files hold.
//! - [`loadgen`]: `stagestream loadgen`, the generated stream produced to a topic.
//! - [`demo`]: `stagestream demo`, the whole service on an in-process Kafka cluster.
//! - [`http`]: the service's endpoint: `/metrics`, `/livez`, `/readyz`, `/progress`,
//!   and the customer routes.
//! - [`telemetry`]: the metrics, their label values, log setup.
//!
//! Data flows one way: input line -> `decode` -> `Engine::on_event` -> `Output`s ->
//! `output` -> output line; `Engine::advance_to` moves time forward without input.

pub mod config;
pub mod core;
pub mod decode;
pub mod demo;
pub mod diff;
pub mod generate;
pub mod http;
pub mod inspect;
pub mod kafka;
pub mod loadgen;
pub mod members;
pub mod output;
pub mod partitioner;
pub mod pipeline;
pub mod replay;
pub mod report;
pub mod snapshot;
pub mod telemetry;
