//! The classification core: pure, deterministic, no I/O.
//!
//! Nothing under `core` touches tokio, rdkafka, prometheus, the filesystem or a clock;
//! time comes in as [`EventTime`] values. Data flows
//! `Event` -> [`Engine::on_event`] / [`Engine::advance_to`] -> [`Output`]s, which the
//! shell (`crate::output`) renders as CloudEvents.
//!
//! - [`time`]: event time and RFC 3339.
//! - [`event`]: the decoded event the engine consumes.
//! - [`model`]: stages, rules and the inactivity ladder, compiled from configuration.
//! - [`customers`]: customer ids interned to dense refs, hash-flooding resistant.
//! - [`dedup`]: the `messageId` de-duplication window.
//! - [`engine`]: the state machine itself; `deadlines`: its index of inactivity
//!   deadlines.
//! - [`image`]: the engine's state as plain data (for snapshots) and the policy for
//!   carrying it into a changed model.
//! - `capture`: an image copied out of a live engine a block of customers at a time.

mod capture;
pub mod customers;
mod deadlines;
pub mod dedup;
pub mod engine;
pub mod event;
pub mod image;
pub mod model;
pub mod time;

pub use customers::{CustomerIds, CustomerRef};
pub use engine::{Cause, Engine, EngineSettings, Output, Verdict};
pub use event::{Erase, Event, EventType, PropertyKey, PropertyValue, Record};
pub use image::{CustomerImage, DedupEntry, EngineImage, RestoreError};
pub use model::{Model, ModelShape, ModelSpec, Problem, RuleId, StageId, ThresholdId};
pub use time::{EventTime, Instant48, Span};
