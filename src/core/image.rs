//! A plain copy of an engine's state ([`EngineImage`]), and the policy for carrying
//! state saved under one stage model into another.
//!
//! [`Engine::begin_image`](super::Engine::begin_image) copies the state out a block of
//! customers at a time between events (or [`Engine::image`](super::Engine::image) all
//! at once); the snapshot module serialises it on another thread;
//! [`Engine::restore`](super::Engine::restore) rebuilds an engine from one, validating
//! every index, since an image may come from a file.
//!
//! Model changes (docs/semantics.md, "Snapshots and model changes"): an image made under
//! the same fingerprint loads as is. Otherwise it is *migrated* when
//! - every stage it knows still exists, in the same relative order (stages are mapped
//!   by name, so stages may be added anywhere and rules may change freely),
//! - the inactivity ladder is unchanged (same thresholds, durations, filters, moves),
//! - every occurrence counter the new model needs was counted under the old one
//!   (same event types, names and predicates);
//!
//! and refused otherwise, with the reason, since guessing would emit wrong transitions
//! or fire a win-back twice.

use super::customers::{CustomerIds, CustomerRef};
use super::model::{Model, ModelShape, StageId, ThresholdId};
use super::time::{EventTime, Instant48};

/// One customer's state, by ref: 22 bytes (times in the engine's six-byte form), since
/// an image holds one per customer (10M in a big partition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CustomerImage {
    pub last_activity: Instant48,
    pub stage: StageId,
    /// The next threshold of the ladder to fire, if any (expiry is not one: it is
    /// armed again from the configuration when the ladder is done).
    pub armed: Option<ThresholdId>,
    /// Ladder position in the current gap: thresholds before it have fired.
    pub ladder: u8,
    /// When the customer entered `stage`: the time of the output that moved it there.
    pub stage_entered: Instant48,
    /// The time of the event that created the customer's state;
    /// [`Instant48::UNKNOWN`] when the state was saved by a version that did not
    /// record it.
    pub first_seen: Instant48,
}

const _: () = assert!(std::mem::size_of::<CustomerImage>() == 22);

impl CustomerImage {
    /// The customer's current gap, if a threshold fired in it: the stage it began in
    /// and the last threshold fired, from which [`Model::fired_in_gap`] lists the
    /// thresholds that fired. Not stored (it would cost a byte per customer): a stage
    /// entered after the gap began was entered by a threshold's `move_to`, and then
    /// [`Model::gap_stage`] finds where the gap began; otherwise it began in `stage`.
    pub fn gap(&self, model: &Model) -> Option<(StageId, ThresholdId)> {
        let last = ThresholdId(self.ladder.checked_sub(1)?);
        let moved_in_gap = self.stage_entered.time() > self.last_activity.time();
        let start = if moved_in_gap {
            model.gap_stage(last, self.stage)
        } else {
            self.stage
        };
        Some((start, last))
    }
}

/// The stage of a vacant ref in an image captured from a live engine: the customer
/// was erased or expired ([`EngineImage::drop_vacant`] leaves it out).
pub(super) const VACANT: StageId = StageId(u8::MAX);

/// One remembered `messageId` digest. The window keeps the digest's high 52 bits (its
/// low [`BLOCK_SHIFT`](super::customers::BLOCK_SHIFT) bits are zero here), which is
/// all it compares.
///
/// Packed to 4-byte alignment: 20 bytes instead of 24, since an image holds one per
/// remembered id (20M at 10M customers with two each: 76 MiB less in every image).
/// Fields are read by value; a reference to one does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct DedupEntry {
    pub customer: CustomerRef,
    pub digest: u64,
    pub seen_at: EventTime,
}

const _: () = assert!(std::mem::size_of::<DedupEntry>() == 20);

/// Everything an engine knows, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineImage {
    /// The model the state was built under.
    pub shape: ModelShape,
    pub newest_event: EventTime,
    pub clock: EventTime,
    pub dedup_next_sweep: EventTime,
    /// Customer ids by ref: shared with the engine the image came from, all but the
    /// last block's.
    pub ids: CustomerIds,
    /// By ref.
    pub customers: Vec<CustomerImage>,
    /// `shape.counters.len()` occurrence counters per customer, by ref.
    pub counters: Vec<u32>,
    pub dedup: Vec<DedupEntry>,
}

impl Default for EngineImage {
    /// The image of an engine that has seen nothing.
    fn default() -> Self {
        EngineImage {
            shape: ModelShape::default(),
            newest_event: EventTime::MIN,
            clock: EventTime::MIN,
            dedup_next_sweep: EventTime::MIN,
            ids: CustomerIds::default(),
            customers: Vec::new(),
            counters: Vec::new(),
            dedup: Vec::new(),
        }
    }
}

impl EngineImage {
    /// Leaves out the customers erased or expired in the engine while it was imaged,
    /// their ids, counters and messageIds with them, renumbering the others in order:
    /// what a snapshot holds. Run on the snapshot thread, off the engine's.
    pub fn drop_vacant(&mut self) {
        if !self.customers.iter().any(|customer| customer.stage == VACANT) {
            return;
        }
        let per_customer = self.shape.counters.len();
        let mut renumbered = vec![u32::MAX; self.customers.len()];
        let mut ids = CustomerIds::default();
        let mut kept = 0usize;
        for (old, customer) in self.customers.iter().enumerate() {
            if customer.stage == VACANT {
                continue;
            }
            renumbered[old] = kept as u32;
            ids.push(self.ids.get(CustomerRef(old as u32)));
            self.counters
                .copy_within(old * per_customer..(old + 1) * per_customer, kept * per_customer);
            kept += 1;
        }
        self.customers.retain(|customer| customer.stage != VACANT);
        self.counters.truncate(kept * per_customer);
        self.dedup.retain_mut(|entry| {
            let new = renumbered[entry.customer.index()];
            entry.customer = CustomerRef(new);
            new != u32::MAX
        });
        self.ids = ids;
    }
}

/// Why an image cannot become an engine.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The image contradicts itself (an index out of range...): never load it.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    /// The image was built under a model whose state the configured one cannot take.
    #[error("state saved under model fingerprint {saved:016x} cannot be carried into model {configured:016x}: {reason}")]
    IncompatibleModel {
        saved: u64,
        configured: u64,
        reason: String,
    },
}

/// How to translate saved state into the configured model.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Migration {
    /// Saved stage index -> configured stage.
    pub stages: Vec<StageId>,
    /// Configured counter index -> saved counter index.
    pub counters: Vec<usize>,
}

impl Migration {
    /// Applies the policy in the module doc.
    pub fn plan(saved: &ModelShape, configured: &ModelShape) -> Result<Migration, RestoreError> {
        let refuse = |reason: String| RestoreError::IncompatibleModel {
            saved: saved.fingerprint,
            configured: configured.fingerprint,
            reason,
        };
        let mut stages = Vec::with_capacity(saved.stages.len());
        for name in &saved.stages {
            let Some(index) = configured.stages.iter().position(|s| s == name) else {
                return Err(refuse(format!("stage {name:?} no longer exists")));
            };
            if let Some(previous) = stages.last().filter(|&&StageId(p)| usize::from(p) > index) {
                let before = &configured.stages[usize::from(previous.0)];
                return Err(refuse(format!("stages {before:?} and {name:?} changed order")));
            }
            stages.push(StageId(index as u8));
        }
        if saved.thresholds != configured.thresholds {
            return Err(refuse(format!(
                "the inactivity ladder changed (saved {:?}, configured {:?})",
                saved.thresholds, configured.thresholds
            )));
        }
        let mut counters = Vec::with_capacity(configured.counters.len());
        for counter in &configured.counters {
            let Some(index) = saved.counters.iter().position(|c| c == counter) else {
                return Err(refuse(format!(
                    "an occurrence rule counts {counter} (types, events, predicates), which the saved state never counted"
                )));
            };
            counters.push(index);
        }
        Ok(Migration { stages, counters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(stages: &[&str], thresholds: &[&str], counters: &[&str]) -> ModelShape {
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        ModelShape {
            fingerprint: 1,
            stages: strings(stages),
            thresholds: strings(thresholds),
            counters: strings(counters),
        }
    }

    #[test]
    fn stages_are_mapped_by_name_and_may_be_inserted() {
        let saved = shape(&["a", "c"], &["t"], &["x", "y"]);
        let configured = shape(&["a", "b", "c"], &["t"], &["y"]);
        let migration = Migration::plan(&saved, &configured).unwrap();
        assert_eq!(migration.stages, [StageId(0), StageId(2)]);
        assert_eq!(migration.counters, [1]);
    }

    #[test]
    fn removed_or_reordered_stages_ladder_changes_and_new_counters_are_refused() {
        let saved = shape(&["a", "b"], &["t"], &["x"]);
        let reason = |configured: &ModelShape| match Migration::plan(&saved, configured) {
            Err(RestoreError::IncompatibleModel { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(reason(&shape(&["a"], &["t"], &["x"])).contains("\"b\" no longer exists"));
        assert!(reason(&shape(&["b", "a"], &["t"], &["x"])).contains("changed order"));
        assert!(reason(&shape(&["a", "b"], &["t", "u"], &["x"])).contains("ladder changed"));
        assert!(reason(&shape(&["a", "b"], &["t"], &["x", "z"])).contains("counts z"));
    }
}
