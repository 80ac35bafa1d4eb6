//! A plain copy of an engine's state ([`EngineImage`]), and the policy for carrying
//! state saved under one stage model into another.
//!
//! [`Engine::begin_image`](super::Engine::begin_image) copies the state out a block of
//! customers at a time between events (or [`Engine::image`](super::Engine::image) all
//! at once); the snapshot module serialises it on another thread;
//! [`Engine::restore`](super::Engine::restore) rebuilds an engine from one, validating
//! every index, since an image may come from a file.
//!
//! Model changes (docs/semantics.md, "Model changes"): an image made under the same
//! fingerprint loads as is. Otherwise it is *migrated* (`Migration::plan`): stages
//! by name, a removed stage through `model.migrate` (refused only when an unmapped one
//! holds customers, since guessing would send wrong transitions); the ladder by
//! threshold name (`LadderChange`), so no threshold fires twice in a gap; occurrence
//! counters by rule name while they count the same events. The restore
//! (`engine/restore.rs`) applies the plan and emits what it causes.

use super::customers::{CustomerIds, CustomerRef};
use super::model::{Model, ModelShape, ModelSpec, StageId, ThresholdId, ThresholdSpec};
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
#[derive(Debug)]
pub(super) struct Migration {
    /// Saved stage index -> configured stage.
    pub stages: Vec<StageId>,
    /// Saved stage index -> whether the configured model lacks the stage, so that its
    /// customers are moved (by `model.migrate`) and each emits a transition.
    pub moved: Vec<bool>,
    /// Configured counter index -> the saved counter carried into it; `None` starts at
    /// zero.
    pub counters: Vec<Option<usize>>,
    /// The saved ladder, when it differs from the configured one.
    pub ladder: Option<LadderChange>,
}

impl Migration {
    /// Applies the policy in the module doc; `customers` are the saved ones, counted
    /// when a removed stage has no mapping.
    pub fn plan(
        saved: &ModelShape,
        model: &Model,
        customers: &[CustomerImage],
    ) -> Result<Migration, RestoreError> {
        let configured = model.shape();
        let refuse = |reason: String| RestoreError::IncompatibleModel {
            saved: saved.fingerprint,
            configured: configured.fingerprint,
            reason,
        };
        let mapped = |name: &str| {
            let to = &model.spec().migrate.iter().find(|m| m.from == name)?.to;
            model.stage_named(to)
        };
        let mut stages = Vec::with_capacity(saved.stages.len());
        let mut moved = Vec::with_capacity(saved.stages.len());
        let mut unmapped = Vec::new();
        for (index, name) in saved.stages.iter().enumerate() {
            let (stage, is_moved) = match model.stage_named(name) {
                Some(stage) => (stage, false),
                None => match mapped(name) {
                    Some(stage) => (stage, true),
                    None => {
                        unmapped.push(index);
                        (model.initial_stage(), true)
                    }
                },
            };
            stages.push(stage);
            moved.push(is_moved);
        }
        if !unmapped.is_empty() {
            let mut population = vec![0u64; saved.stages.len()];
            for customer in customers {
                if let Some(count) = population.get_mut(usize::from(customer.stage.0)) {
                    *count += 1;
                }
            }
            let held: Vec<(&str, u64)> = unmapped
                .iter()
                .map(|&i| (saved.stages[i].as_str(), population[i]))
                .filter(|&(_, count)| count > 0)
                .collect();
            if !held.is_empty() {
                return Err(refuse(unmapped_stages(&held, model)));
            }
        }
        let counters = carried_counters(&saved.counters, &configured.counters);
        let ladder = (saved.thresholds != configured.thresholds)
            .then(|| LadderChange::new(saved, model))
            .transpose()?;
        Ok(Migration {
            stages,
            moved,
            counters,
            ladder,
        })
    }
}

/// The refusal for removed stages that still hold customers and have no mapping: each
/// with its population, and the lines to add.
fn unmapped_stages(held: &[(&str, u64)], model: &Model) -> String {
    let stages: Vec<String> = model.stage_names().map(|s| format!("{s:?}")).collect();
    let listed: Vec<String> = held
        .iter()
        .map(|(name, count)| match count {
            1 => format!("{name:?} (1 customer)"),
            _ => format!("{name:?} ({count} customers)"),
        })
        .collect();
    let mappings: Vec<String> = held
        .iter()
        .map(|(name, _)| format!("[[model.migrate]] from = {name:?}, to = \"STAGE\""))
        .collect();
    let lines: String = held
        .iter()
        .map(|(name, _)| format!("\n[[model.migrate]]\nfrom = {name:?}\nto = \"STAGE\""))
        .collect();
    format!(
        "stages the configured model no longer has still hold customers: {}; map each to one of {} ({}): add to the configuration{lines}\n",
        listed.join(", "),
        stages.join(", "),
        mappings.join("; ")
    )
}

/// Configured counter -> the saved counter it continues: the one of the same rule name
/// that counts the same events. State saved before counters carried rule names is
/// matched by what they count alone.
fn carried_counters(saved: &[String], configured: &[String]) -> Vec<Option<usize>> {
    let split = |signature: &str| -> (Option<String>, String) {
        match serde_json::from_str::<Vec<serde_json::Value>>(signature) {
            Ok(mut parts) if parts.len() == 4 => {
                let name = parts.remove(0).as_str().map(str::to_owned);
                (name, serde_json::Value::Array(parts).to_string())
            }
            _ => (None, signature.to_owned()),
        }
    };
    let saved: Vec<(Option<String>, String)> = saved.iter().map(|s| split(s)).collect();
    configured
        .iter()
        .map(|signature| {
            let (name, counts) = split(signature);
            let by_name = saved.iter().position(|(n, _)| n.is_some() && *n == name);
            let found = by_name.or_else(|| saved.iter().position(|(n, c)| n.is_none() && *c == counts))?;
            (saved[found].1 == counts).then_some(found)
        })
        .collect()
}

/// A changed inactivity ladder: thresholds are matched by name.
#[derive(Debug)]
pub(super) struct LadderChange {
    /// The saved ladder, compiled as a model with the saved stages and no rules: what
    /// a customer's saved gap is read with ([`CustomerImage::gap`]).
    saved: Model,
    /// Configured threshold -> whether it is new or differs from the saved one of its
    /// name (duration, stage filter, `move_to`).
    changed: Vec<bool>,
}

impl LadderChange {
    fn new(saved: &ModelShape, model: &Model) -> Result<Self, RestoreError> {
        let inconsistent = |what: String| RestoreError::Inconsistent(what);
        let mut inactivity = Vec::with_capacity(saved.thresholds.len());
        for signature in &saved.thresholds {
            let (name, millis, stages, move_to): (String, i64, Option<Vec<String>>, Option<String>) =
                serde_json::from_str(signature)
                    .map_err(|e| inconsistent(format!("threshold signature {signature:?}: {e}")))?;
            inactivity.push(ThresholdSpec {
                name,
                after: format!("{millis}ms"),
                stages,
                move_to,
            });
        }
        let spec = ModelSpec {
            name: "saved".into(),
            version: None,
            stages: saved.stages.clone(),
            initial: None,
            activity_types: vec!["track".into()],
            rules: Vec::new(),
            inactivity,
            migrate: Vec::new(),
        };
        let saved_ladder = Model::compile(&spec)
            .map_err(|problems| inconsistent(format!("the saved inactivity ladder: {}", problems[0])))?;
        let changed = model
            .thresholds()
            .iter()
            .enumerate()
            .map(|(i, threshold)| {
                let before = saved_ladder
                    .thresholds()
                    .iter()
                    .position(|t| t.name == threshold.name);
                before.is_none_or(|b| saved.thresholds[b] != model.shape().thresholds[i])
            })
            .collect();
        Ok(LadderChange {
            saved: saved_ladder,
            changed,
        })
    }

    /// Carries one saved customer's ladder into the configured model, where it now
    /// holds `stage` and the firing clock is at `clock`. Returns the ladder position to
    /// resume from (past every configured threshold whose name fired in the current
    /// gap) and the thresholds before that position to fire now: new or changed ones
    /// that apply and are already due. Unchanged thresholds before it keep what they
    /// did in the gap, and one not yet due is passed over until the next gap.
    pub fn carry(
        &self,
        customer: &CustomerImage,
        stage: StageId,
        clock: EventTime,
        model: &Model,
    ) -> (u8, Vec<ThresholdId>) {
        let fired: Vec<&str> = match customer.gap(&self.saved) {
            Some((start, last)) => self
                .saved
                .fired_in_gap(start, last)
                .map(|t| self.saved.threshold(t).name.as_str())
                .collect(),
            None => Vec::new(),
        };
        let thresholds = model.thresholds();
        let resume = thresholds
            .iter()
            .rposition(|t| fired.contains(&t.name.as_str()))
            .map_or(0, |last| last + 1);
        let last_activity = customer.last_activity.time();
        let mut held = stage;
        let mut due_now = Vec::new();
        for (i, threshold) in thresholds[..resume].iter().enumerate() {
            let fires = self.changed[i]
                && !fired.contains(&threshold.name.as_str())
                && threshold.applies_to(held)
                && last_activity.plus(threshold.after) <= clock;
            if fires {
                due_now.push(ThresholdId(i as u8));
                held = threshold.move_to.unwrap_or(held);
            }
        }
        (resume as u8, due_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::test_model;

    /// A model with stages `stages` (among them `b`), one rule `r` to `b` on a
    /// customer's second `counted` event, the ladder `ladder` and the mappings
    /// `migrate` (TOML).
    fn model(stages: &str, counted: &str, ladder: &str, migrate: &str) -> Model {
        test_model(&format!(
            r#"
name = "m"
stages = [{stages}]
[[rules]]
name = "r"
to = "b"
events = ["{counted}"]
occurrence = {{ nth = 2 }}
{ladder}
{migrate}
"#
        ))
    }

    fn customer_in(stage: u8) -> CustomerImage {
        CustomerImage {
            last_activity: Instant48::at(EventTime::from_millis(0)),
            stage: StageId(stage),
            armed: None,
            ladder: 0,
            stage_entered: Instant48::at(EventTime::from_millis(0)),
            first_seen: Instant48::at(EventTime::from_millis(0)),
        }
    }

    #[test]
    fn stages_are_mapped_by_name_in_any_order_and_removed_ones_through_migrate() {
        let saved = model(r#""a", "b", "c""#, "Order Completed", "", "");
        let configured = model(
            r#""b", "a", "d""#,
            "Order Completed",
            "",
            "[[migrate]]\nfrom = \"c\"\nto = \"d\"",
        );
        let migration = Migration::plan(saved.shape(), &configured, &[customer_in(2)]).unwrap();
        assert_eq!(migration.stages, [StageId(1), StageId(0), StageId(2)]);
        assert_eq!(migration.moved, [false, false, true]);
        assert_eq!(migration.counters, [Some(0)], "same rule, same events");
        assert!(migration.ladder.is_none());
    }

    #[test]
    fn a_removed_stage_without_a_mapping_is_refused_only_when_it_holds_customers() {
        let saved = model(r#""a", "b", "c", "d""#, "Order Completed", "", "");
        let configured = model(r#""a", "b""#, "Order Completed", "", "");
        let customers = [customer_in(2), customer_in(2), customer_in(0)];
        let Err(RestoreError::IncompatibleModel { reason, .. }) =
            Migration::plan(saved.shape(), &configured, &customers)
        else {
            panic!("expected a refusal");
        };
        assert_eq!(
            reason,
            "stages the configured model no longer has still hold customers: \"c\" (2 customers); \
             map each to one of \"a\", \"b\" ([[model.migrate]] from = \"c\", to = \"STAGE\"): \
             add to the configuration\n[[model.migrate]]\nfrom = \"c\"\nto = \"STAGE\"\n"
        );
        let empty_stages_removed = Migration::plan(saved.shape(), &configured, &[customer_in(1)]);
        assert!(empty_stages_removed.is_ok(), "{empty_stages_removed:?}");
    }

    #[test]
    fn counters_carry_over_by_rule_name_while_they_count_the_same_events() {
        let saved = model(r#""a", "b""#, "Order Completed", "", "");
        let plan = |configured: &Model| Migration::plan(saved.shape(), configured, &[]).unwrap().counters;
        assert_eq!(plan(&model(r#""a", "b""#, "Order Completed", "", "")), [Some(0)]);
        assert_eq!(plan(&model(r#""a", "b""#, "Product Viewed", "", "")), [None]);
        let renamed = test_model(
            "name = \"m\"\nstages = [\"a\", \"b\"]\n[[rules]]\nname = \"s\"\nto = \"b\"\n\
             events = [\"Order Completed\"]\noccurrence = { nth = 2 }",
        );
        assert_eq!(plan(&renamed), [None], "matched by rule name");
        // State saved before counters carried their rule's name: matched by what they count.
        let unnamed = ModelShape {
            counters: vec![r#"[null,["Order Completed"],[]]"#.into()],
            ..saved.shape().clone()
        };
        assert_eq!(
            Migration::plan(&unnamed, &renamed, &[]).unwrap().counters,
            [Some(0)]
        );
    }
}
