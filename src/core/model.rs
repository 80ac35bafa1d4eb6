//! The stage model: ordered stages, classification rules and the inactivity ladder.
//!
//! [`ModelSpec`] is the plain data a configuration file holds, stage names as strings.
//! [`Model::compile`] validates it, reporting every problem with its path at once, and
//! interns names to indices so the engine never compares strings except one lookup of
//! the event name per event.

use std::collections::HashMap;

use ahash::RandomState;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::event::{EventType, EventTypeSet, PropertyKey, PropertyValue};
use super::time::Span;

/// At most this many stages: a [`StageSet`] is a 64-bit mask.
pub const MAX_STAGES: usize = 64;
/// At most this many inactivity thresholds (one index value is reserved for "none").
pub const MAX_THRESHOLDS: usize = 254;

/// Index of a stage in the model's order; a larger index is a later stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId(pub u8);

/// Index of a rule in configuration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u16);

/// Index of an inactivity threshold in ladder order (ascending duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThresholdId(pub u8);

/// A set of stages, as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StageSet(u64);

impl StageSet {
    pub fn contains(self, stage: StageId) -> bool {
        self.0 & (1u64 << stage.0) != 0
    }

    fn insert(&mut self, stage: StageId) {
        self.0 |= 1u64 << stage.0;
    }
}

// ---------------------------------------------------------------------------------
// Specification: what the configuration file says.
// ---------------------------------------------------------------------------------

/// The `[model]` section of a configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ModelSpec {
    /// Carried into every output as `model`.
    pub name: String,
    /// Carried into every output as `model_version`; absent: the first 12 hex digits
    /// of the fingerprint. A label, not behaviour: it is not part of the fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Stages in journey order.
    pub stages: Vec<String>,
    /// Where a new customer starts; defaults to the first stage.
    #[serde(default)]
    pub initial: Option<String>,
    /// Event types that classify and count as activity.
    #[serde(default = "default_activity_types")]
    pub activity_types: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// The inactivity ladder.
    #[serde(default)]
    pub inactivity: Vec<ThresholdSpec>,
    /// Where customers of stages this model no longer has go when a snapshot made under
    /// an earlier model is restored (`core::image`). Not part of the fingerprint: it
    /// says how state gets here, not how events are classified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrate: Vec<MigrationSpec>,
}

/// One `[[model.migrate]]` entry: a removed stage and the stage its customers take.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MigrationSpec {
    pub from: String,
    pub to: String,
}

fn default_activity_types() -> Vec<String> {
    ["track", "page", "screen"].map(String::from).to_vec()
}

/// One `[[model.rules]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RuleSpec {
    pub name: String,
    /// The stage this rule moves a customer to.
    pub to: String,
    /// Event types the rule matches; defaults to `["track"]`.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Event names (`event` of a track call, `name` of a page or screen call);
    /// empty matches any name.
    #[serde(default)]
    pub events: Vec<String>,
    /// Property predicates, all of which must hold.
    #[serde(default, rename = "where")]
    pub predicates: Vec<PredicateSpec>,
    /// Restricts the rule to the customer's Nth (or Nth and later) matching event.
    #[serde(default)]
    pub occurrence: Option<OccurrenceSpec>,
    /// Stages the customer must be in for the rule to apply; any stage when absent.
    #[serde(default)]
    pub from: Option<Vec<String>>,
    /// Lets the rule move a customer to an earlier stage.
    #[serde(default)]
    pub allow_backward: bool,
}

/// One property predicate: `property` plus exactly one test.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct PredicateSpec {
    pub property: String,
    #[serde(default)]
    pub equals: Option<Literal>,
    #[serde(default)]
    pub exists: Option<bool>,
    #[serde(default)]
    pub gt: Option<f64>,
    #[serde(default)]
    pub gte: Option<f64>,
    #[serde(default)]
    pub lt: Option<f64>,
    #[serde(default)]
    pub lte: Option<f64>,
}

/// A value an `equals` predicate compares with.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Number(f64),
    String(String),
}

/// `occurrence = { nth = 2 }` or `occurrence = { at_least = 2 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OccurrenceSpec {
    /// Only the customer's Nth matching event.
    Nth(u32),
    /// The customer's Nth matching event and every later one.
    AtLeast(u32),
}

/// One `[[model.inactivity]]` threshold.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ThresholdSpec {
    pub name: String,
    /// The gap that fires it: `7d`, `14d`, `36h`, `90s`...
    pub after: String,
    /// Fires only while the customer is in one of these stages; any stage when absent.
    #[serde(default)]
    pub stages: Option<Vec<String>>,
    /// Moves the customer to this stage when it fires.
    #[serde(default)]
    pub move_to: Option<String>,
}

/// One thing wrong with a specification, with the configuration path it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

// ---------------------------------------------------------------------------------
// Compiled model: what the engine runs.
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub enum PredicateTest {
    /// `exists = true`: present and not null; `exists = false`: absent or null.
    Exists(bool),
    Equals(Literal),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Predicate {
    pub key: PropertyKey,
    pub test: PredicateTest,
}

impl Predicate {
    /// Whether `value` (the event's value of this predicate's property) passes.
    pub fn holds(&self, value: Option<&PropertyValue<'_>>) -> bool {
        let number = match value {
            Some(PropertyValue::Number(n)) => Some(*n),
            _ => None,
        };
        match &self.test {
            PredicateTest::Exists(wanted) => {
                let present = !matches!(value, None | Some(PropertyValue::Null));
                present == *wanted
            }
            PredicateTest::Equals(literal) => match (literal, value) {
                (Literal::Bool(a), Some(PropertyValue::Bool(b))) => a == b,
                (Literal::Number(a), Some(PropertyValue::Number(b))) => a == b,
                (Literal::String(a), Some(PropertyValue::String(b))) => a == b,
                _ => false,
            },
            PredicateTest::Gt(limit) => number.is_some_and(|n| n > *limit),
            PredicateTest::Gte(limit) => number.is_some_and(|n| n >= *limit),
            PredicateTest::Lt(limit) => number.is_some_and(|n| n < *limit),
            PredicateTest::Lte(limit) => number.is_some_and(|n| n <= *limit),
        }
    }
}

/// How a rule's occurrence count is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occurrence {
    Nth(u32),
    AtLeast(u32),
}

impl Occurrence {
    pub fn admits(self, count: u32) -> bool {
        match self {
            Occurrence::Nth(n) => count == n,
            Occurrence::AtLeast(n) => count >= n,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub to: StageId,
    pub predicates: Vec<Predicate>,
    /// The occurrence test and the index of the per-customer counter it reads.
    pub occurrence: Option<(Occurrence, usize)>,
    pub from: Option<StageSet>,
    pub allow_backward: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub name: String,
    pub after: Span,
    pub stages: Option<StageSet>,
    pub move_to: Option<StageId>,
}

impl Threshold {
    pub fn applies_to(&self, stage: StageId) -> bool {
        self.stages.is_none_or(|set| set.contains(stage))
    }
}

/// Rules to evaluate for one event type, by event name, in configuration order.
#[derive(Clone, Debug, Default)]
struct RulesForType {
    by_name: NameTable<Box<[RuleId]>>,
    /// Rules of this type that match any name; also what an unlisted name gets.
    any_name: Box<[RuleId]>,
}

/// A table keyed by the names a configuration gives, looked up with names from events.
///
/// Every event looks its name up once, so the hash is XXH3 without a secret, a little
/// cheaper than the keyed hasher used for ids: the
/// keys are fixed at load, so an input can only land among them, never lengthen a
/// probe sequence.
#[derive(Clone, Debug, Default)]
struct NameTable<V> {
    entries: hashbrown::HashTable<(Box<str>, V)>,
}

impl<V> NameTable<V> {
    fn hash(name: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(name.as_bytes())
    }

    fn get(&self, name: &str) -> Option<&V> {
        self.entries
            .find(Self::hash(name), |(key, _)| **key == *name)
            .map(|(_, value)| value)
    }

    /// Adds `name`, which must not be in the table yet.
    fn insert(&mut self, name: &str, value: V) {
        self.entries
            .insert_unique(Self::hash(name), (name.into(), value), |(key, _)| Self::hash(key));
    }
}

/// A validated stage model.
#[derive(Clone, Debug)]
pub struct Model {
    name: String,
    version: String,
    stages: Vec<String>,
    initial: StageId,
    activity: EventTypeSet,
    rules: Vec<Rule>,
    rules_by_type: [RulesForType; 6],
    counters: usize,
    thresholds: Vec<Threshold>,
    property_keys: HashMap<Box<str>, PropertyKey, RandomState>,
    shape: ModelShape,
    /// The specification it was compiled from, for describing it.
    spec: ModelSpec,
}

/// What per-customer state means under a model: enough to tell whether state saved
/// under one model can be carried into another (`core::image`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelShape {
    /// SHA-1 (first 8 bytes) of the whole specification as canonical JSON: equal
    /// fingerprints mean identical models.
    pub fingerprint: u64,
    /// Stage names in journey order.
    pub stages: Vec<String>,
    /// One signature per inactivity threshold, in ladder order: name, duration in
    /// milliseconds, stage filter and `move_to`, by stage name.
    pub thresholds: Vec<String>,
    /// One signature per occurrence counter, in counter order: its rule's name and
    /// what the counter counts (the rule's event types, names and predicates). State
    /// saved before rule names were recorded has signatures without the name.
    pub counters: Vec<String>,
}

impl ModelShape {
    fn of(spec: &ModelSpec, thresholds: &[Threshold]) -> ModelShape {
        let behaviour = ModelSpec {
            version: None,
            migrate: Vec::new(),
            ..spec.clone()
        };
        let canonical = serde_json::to_vec(&behaviour).expect("a model spec serialises");
        let digest = Sha1::digest(&canonical);
        let fingerprint = u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 has 20 bytes"));
        let stage_names = |set: Option<StageSet>| {
            set.map(|set| {
                (0..spec.stages.len())
                    .filter(|&i| set.contains(StageId(i as u8)))
                    .map(|i| spec.stages[i].as_str())
                    .collect::<Vec<_>>()
            })
        };
        let thresholds = thresholds
            .iter()
            .map(|t| {
                serde_json::json!([
                    t.name,
                    t.after.as_millis(),
                    stage_names(t.stages),
                    t.move_to.map(|s| &spec.stages[usize::from(s.0)]),
                ])
                .to_string()
            })
            .collect();
        let counters = spec
            .rules
            .iter()
            .filter(|rule| rule.occurrence.is_some())
            .map(|rule| serde_json::json!([rule.name, rule.types, rule.events, rule.predicates]).to_string())
            .collect();
        ModelShape {
            fingerprint,
            stages: spec.stages.clone(),
            thresholds,
            counters,
        }
    }
}

impl Model {
    /// Validates `spec` and compiles it.
    ///
    /// # Errors
    /// Every problem found, each with its path under `model.`.
    pub fn compile(spec: &ModelSpec) -> Result<Model, Vec<Problem>> {
        Compiler::default().compile(spec)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `model.version`, or the first 12 hex digits of the fingerprint.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn stage_count(&self) -> usize {
        self.stages.len()
    }

    pub fn stage_name(&self, stage: StageId) -> &str {
        &self.stages[usize::from(stage.0)]
    }

    /// The stage called `name`, if the model has one.
    pub fn stage_named(&self, name: &str) -> Option<StageId> {
        self.stages
            .iter()
            .position(|s| s == name)
            .map(|i| StageId(i as u8))
    }

    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(String::as_str)
    }

    pub fn initial_stage(&self) -> StageId {
        self.initial
    }

    pub fn is_activity(&self, kind: EventType) -> bool {
        self.activity.contains(kind)
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn rule(&self, id: RuleId) -> &Rule {
        &self.rules[usize::from(id.0)]
    }

    /// The rules an event of this type and name may match, in configuration order.
    pub fn candidate_rules(&self, kind: EventType, name: Option<&str>) -> &[RuleId] {
        let for_type = &self.rules_by_type[kind as usize];
        name.and_then(|name| for_type.by_name.get(name))
            .unwrap_or(&for_type.any_name)
    }

    /// How many per-customer occurrence counters the rules need.
    pub fn counter_count(&self) -> usize {
        self.counters
    }

    /// The inactivity ladder, ascending by duration.
    pub fn thresholds(&self) -> &[Threshold] {
        &self.thresholds
    }

    pub fn threshold(&self, id: ThresholdId) -> &Threshold {
        &self.thresholds[usize::from(id.0)]
    }

    /// The thresholds a gap that began in `stage` fired, in ladder order, up to and
    /// including `last`: each that applies to the stage held when it came due, which
    /// only a fired threshold's `move_to` changes.
    pub fn fired_in_gap(&self, stage: StageId, last: ThresholdId) -> impl Iterator<Item = ThresholdId> + '_ {
        let mut held = stage;
        self.thresholds[..=usize::from(last.0)]
            .iter()
            .enumerate()
            .filter(move |(_, threshold)| {
                let fires = threshold.applies_to(held);
                if fires {
                    held = threshold.move_to.unwrap_or(held);
                }
                fires
            })
            .map(|(i, _)| ThresholdId(i as u8))
    }

    /// The stage a gap began in, for a customer that a threshold's `move_to` left in
    /// `now` after `last` fired: the first stage in model order from which the ladder
    /// fires `last` and ends in `now` (`now` itself if none does).
    pub fn gap_stage(&self, last: ThresholdId, now: StageId) -> StageId {
        (0..self.stage_count() as u8)
            .map(StageId)
            .find(|&start| {
                let mut held = start;
                let mut fired_last = false;
                for threshold_id in self.fired_in_gap(start, last) {
                    held = self.threshold(threshold_id).move_to.unwrap_or(held);
                    fired_last = threshold_id == last;
                }
                fired_last && held == now
            })
            .unwrap_or(now)
    }

    /// The key under which `decode` should keep a property, if any rule tests it.
    pub fn property_key(&self, name: &str) -> Option<PropertyKey> {
        self.property_keys.get(name).copied()
    }

    /// Whether records decoded for `other` serve this model too: both keep the same
    /// properties under the same keys.
    pub fn keeps_properties_of(&self, other: &Model) -> bool {
        self.property_keys == other.property_keys
    }

    /// How many distinct properties the rules test.
    pub fn property_count(&self) -> usize {
        self.property_keys.len()
    }

    /// The model's fingerprint and the meaning of its per-customer state.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The specification the model was compiled from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
}

impl RuleSpec {
    /// The rule in plain words, as `stagestream check` prints it: `a track event
    /// named "Order Completed", the customer's 2nd or later, moves the customer to
    /// retention`.
    pub fn in_words(&self) -> String {
        let quoted = |names: &[String]| names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>();
        let types = self.types.clone().unwrap_or_else(|| vec!["track".to_owned()]);
        let mut words = format!("a {} event", types.join(" or "));
        if !self.events.is_empty() {
            words += &format!(" named {}", quoted(&self.events).join(" or "));
        }
        let tests: Vec<String> = self.predicates.iter().map(PredicateSpec::in_words).collect();
        if !tests.is_empty() {
            words += &format!(" where {}", tests.join(" and "));
        }
        match self.occurrence {
            Some(OccurrenceSpec::Nth(n)) => words += &format!(", only the customer's {}", ordinal(n)),
            Some(OccurrenceSpec::AtLeast(n)) => words += &format!(", the customer's {} or later", ordinal(n)),
            None => {}
        }
        if let Some(from) = &self.from {
            words += &format!(", in {}", from.join(" or "));
        }
        let direction = if self.allow_backward {
            " (forward or back)"
        } else {
            ""
        };
        words + &format!(", moves the customer to {}{direction}", self.to)
    }
}

impl PredicateSpec {
    fn in_words(&self) -> String {
        let property = &self.property;
        let literal = |value: &Literal| match value {
            Literal::Bool(b) => b.to_string(),
            Literal::Number(n) => n.to_string(),
            Literal::String(s) => format!("{s:?}"),
        };
        let mut tests = Vec::new();
        if let Some(exists) = self.exists {
            tests.push(format!(
                "{property} is {}",
                if exists { "present" } else { "absent" }
            ));
        }
        if let Some(value) = &self.equals {
            tests.push(format!("{property} = {}", literal(value)));
        }
        for (op, bound) in [(">", self.gt), (">=", self.gte), ("<", self.lt), ("<=", self.lte)] {
            if let Some(bound) = bound {
                tests.push(format!("{property} {op} {bound}"));
            }
        }
        tests.join(" and ")
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st`...
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[derive(Default)]
struct Compiler {
    problems: Vec<Problem>,
    stage_index: HashMap<String, StageId>,
    property_keys: HashMap<Box<str>, PropertyKey, RandomState>,
}

impl Compiler {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn compile(mut self, spec: &ModelSpec) -> Result<Model, Vec<Problem>> {
        if spec.name.trim().is_empty() {
            self.problem("model.name", "must not be empty");
        }
        if spec
            .version
            .as_ref()
            .is_some_and(|version| version.trim().is_empty())
        {
            self.problem(
                "model.version",
                "must not be empty (leave it out for the fingerprint)",
            );
        }
        self.index_stages(&spec.stages);
        let initial = match &spec.initial {
            Some(name) => self.stage("model.initial", name),
            None => Some(StageId(0)),
        };
        let activity = self.activity_types(&spec.activity_types);
        let mut rules = Vec::with_capacity(spec.rules.len());
        let mut counters = 0;
        let mut rule_types = Vec::with_capacity(spec.rules.len());
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let path = format!("model.rules[{i}]");
            if let Some(first) = seen_names.insert(rule.name.as_str(), i) {
                self.problem(
                    format!("{path}.name"),
                    format!("duplicate rule name {:?} (also model.rules[{first}])", rule.name),
                );
            }
            let types = self.rule_types(&path, rule, activity);
            if let Some(compiled) = self.rule(&path, rule, &mut counters) {
                rules.push(compiled);
                rule_types.push(types);
            }
        }
        let thresholds = self.thresholds(&spec.inactivity);
        self.migrations(&spec.migrate);
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        let mut rules_by_type: [RulesForType; 6] = Default::default();
        for kind in EventType::ALL {
            let matching: Vec<usize> = (0..rules.len())
                .filter(|&i| rule_types[i].contains(kind))
                .collect();
            let names: Vec<&str> = matching
                .iter()
                .flat_map(|&i| spec.rules[i].events.iter().map(String::as_str))
                .collect();
            let select = |name: Option<&str>| -> Box<[RuleId]> {
                matching
                    .iter()
                    .filter(|&&i| {
                        let events = &spec.rules[i].events;
                        events.is_empty() || name.is_some_and(|n| events.iter().any(|e| e == n))
                    })
                    .map(|&i| RuleId(i as u16))
                    .collect()
            };
            let for_type = &mut rules_by_type[kind as usize];
            for name in names {
                if for_type.by_name.get(name).is_none() {
                    for_type.by_name.insert(name, select(Some(name)));
                }
            }
            for_type.any_name = select(None);
        }
        let thresholds = thresholds.expect("problems were reported");
        let shape = ModelShape::of(spec, &thresholds);
        let version = spec
            .version
            .clone()
            .unwrap_or_else(|| format!("{:016x}", shape.fingerprint)[..12].to_owned());
        Ok(Model {
            shape,
            version,
            spec: spec.clone(),
            name: spec.name.clone(),
            stages: spec.stages.clone(),
            initial: initial.expect("problems were reported"),
            activity,
            rules,
            rules_by_type,
            counters,
            thresholds,
            property_keys: self.property_keys,
        })
    }

    /// `model.migrate`: each maps a stage the model no longer has, once, to one it has.
    fn migrations(&mut self, specs: &[MigrationSpec]) {
        let mut mapped: HashMap<&str, usize> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let path = format!("model.migrate[{i}]");
            if spec.from.trim().is_empty() {
                self.problem(format!("{path}.from"), "must not be empty");
            } else if self.stage_index.contains_key(&spec.from) {
                self.problem(
                    format!("{path}.from"),
                    format!(
                        "stage {:?} still exists; only stages the model no longer has are mapped",
                        spec.from
                    ),
                );
            } else if let Some(first) = mapped.insert(spec.from.as_str(), i) {
                self.problem(
                    format!("{path}.from"),
                    format!(
                        "stage {:?} is already mapped by model.migrate[{first}]",
                        spec.from
                    ),
                );
            }
            self.stage(&format!("{path}.to"), &spec.to);
        }
    }

    fn index_stages(&mut self, stages: &[String]) {
        if stages.is_empty() {
            self.problem("model.stages", "must list at least one stage");
        }
        if stages.len() > MAX_STAGES {
            self.problem(
                "model.stages",
                format!("{} stages; at most {MAX_STAGES} are supported", stages.len()),
            );
        }
        for (i, name) in stages.iter().enumerate().take(MAX_STAGES) {
            if name.trim().is_empty() {
                self.problem(format!("model.stages[{i}]"), "must not be empty");
            } else if self.stage_index.contains_key(name) {
                self.problem(format!("model.stages[{i}]"), format!("duplicate stage {name:?}"));
            } else {
                self.stage_index.insert(name.clone(), StageId(i as u8));
            }
        }
    }

    fn stage(&mut self, path: &str, name: &str) -> Option<StageId> {
        let found = self.stage_index.get(name).copied();
        if found.is_none() {
            let mut known: Vec<(&String, &StageId)> = self.stage_index.iter().collect();
            known.sort_by_key(|(_, id)| **id);
            let known: Vec<&str> = known.into_iter().map(|(n, _)| n.as_str()).collect();
            self.problem(
                path,
                format!("unknown stage {name:?} (stages: {})", known.join(", ")),
            );
        }
        found
    }

    fn stage_set(&mut self, path: &str, names: &[String]) -> Option<StageSet> {
        if names.is_empty() {
            self.problem(path, "must list at least one stage (omit it for every stage)");
            return None;
        }
        let mut set = StageSet::default();
        let mut ok = true;
        for (i, name) in names.iter().enumerate() {
            match self.stage(&format!("{path}[{i}]"), name) {
                Some(stage) => set.insert(stage),
                None => ok = false,
            }
        }
        ok.then_some(set)
    }

    fn event_type(&mut self, path: &str, name: &str) -> Option<EventType> {
        let kind = EventType::parse(name);
        if kind.is_none() {
            self.problem(
                path,
                format!("unknown event type {name:?} (types: track, page, screen, identify, group, alias)"),
            );
        }
        kind
    }

    fn activity_types(&mut self, names: &[String]) -> EventTypeSet {
        if names.is_empty() {
            self.problem("model.activity_types", "must list at least one event type");
        }
        names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| self.event_type(&format!("model.activity_types[{i}]"), name))
            .collect()
    }

    fn rule_types(&mut self, path: &str, rule: &RuleSpec, activity: EventTypeSet) -> EventTypeSet {
        let Some(names) = &rule.types else {
            if !activity.contains(EventType::Track) {
                self.problem(
                    format!("{path}.types"),
                    "defaults to track, which is not an activity type: list the types",
                );
            }
            return [EventType::Track].into_iter().collect();
        };
        if names.is_empty() {
            self.problem(format!("{path}.types"), "must list at least one event type");
        }
        let mut set = EventTypeSet::default();
        for (i, name) in names.iter().enumerate() {
            let item_path = format!("{path}.types[{i}]");
            if let Some(kind) = self.event_type(&item_path, name) {
                if !activity.contains(kind) {
                    self.problem(
                        item_path,
                        format!("{name:?} is not in model.activity_types, so this rule could never apply"),
                    );
                }
                set.insert(kind);
            }
        }
        set
    }

    fn rule(&mut self, path: &str, rule: &RuleSpec, counters: &mut usize) -> Option<Rule> {
        if rule.name.trim().is_empty() {
            self.problem(format!("{path}.name"), "must not be empty");
        }
        let to = self.stage(&format!("{path}.to"), &rule.to);
        let from = match &rule.from {
            Some(names) => Some(self.stage_set(&format!("{path}.from"), names)?),
            None => None,
        };
        let mut predicates = Vec::with_capacity(rule.predicates.len());
        for (i, predicate) in rule.predicates.iter().enumerate() {
            predicates.extend(self.predicate(&format!("{path}.where[{i}]"), predicate));
        }
        let occurrence = match rule.occurrence {
            None => None,
            Some(OccurrenceSpec::Nth(0) | OccurrenceSpec::AtLeast(0)) => {
                self.problem(format!("{path}.occurrence"), "counts from 1");
                None
            }
            Some(spec) => {
                let occurrence = match spec {
                    OccurrenceSpec::Nth(n) => Occurrence::Nth(n),
                    OccurrenceSpec::AtLeast(n) => Occurrence::AtLeast(n),
                };
                *counters += 1;
                Some((occurrence, *counters - 1))
            }
        };
        Some(Rule {
            name: rule.name.clone(),
            to: to?,
            predicates,
            occurrence,
            from,
            allow_backward: rule.allow_backward,
        })
    }

    fn predicate(&mut self, path: &str, spec: &PredicateSpec) -> Option<Predicate> {
        if spec.property.is_empty() {
            self.problem(format!("{path}.property"), "must not be empty");
        }
        let tests: Vec<PredicateTest> = [
            spec.exists.map(PredicateTest::Exists),
            spec.equals.clone().map(PredicateTest::Equals),
            spec.gt.map(PredicateTest::Gt),
            spec.gte.map(PredicateTest::Gte),
            spec.lt.map(PredicateTest::Lt),
            spec.lte.map(PredicateTest::Lte),
        ]
        .into_iter()
        .flatten()
        .collect();
        let [test] = <[PredicateTest; 1]>::try_from(tests).ok().or_else(|| {
            self.problem(path, "needs exactly one of equals, exists, gt, gte, lt, lte");
            None
        })?;
        let next = PropertyKey(self.property_keys.len() as u16);
        let key = *self
            .property_keys
            .entry(spec.property.as_str().into())
            .or_insert(next);
        Some(Predicate { key, test })
    }

    fn thresholds(&mut self, specs: &[ThresholdSpec]) -> Option<Vec<Threshold>> {
        if specs.len() > MAX_THRESHOLDS {
            self.problem(
                "model.inactivity",
                format!(
                    "{} thresholds; at most {MAX_THRESHOLDS} are supported",
                    specs.len()
                ),
            );
        }
        let mut thresholds = Vec::with_capacity(specs.len());
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let path = format!("model.inactivity[{i}]");
            if spec.name.trim().is_empty() {
                self.problem(format!("{path}.name"), "must not be empty");
            } else if let Some(first) = names.insert(spec.name.as_str(), i) {
                self.problem(
                    format!("{path}.name"),
                    format!(
                        "duplicate threshold name {:?} (also model.inactivity[{first}])",
                        spec.name
                    ),
                );
            }
            let after = match parse_span(&spec.after) {
                Ok(span) if span > Span::ZERO => Some(span),
                Ok(_) => {
                    self.problem(format!("{path}.after"), "must be longer than zero");
                    None
                }
                Err(message) => {
                    self.problem(format!("{path}.after"), message);
                    None
                }
            };
            let stages = match &spec.stages {
                Some(names) => self.stage_set(&format!("{path}.stages"), names).map(Some),
                None => Some(None),
            };
            let move_to = match &spec.move_to {
                Some(name) => self.stage(&format!("{path}.move_to"), name).map(Some),
                None => Some(None),
            };
            if let (Some(after), Some(stages), Some(move_to)) = (after, stages, move_to) {
                thresholds.push(Threshold {
                    name: spec.name.clone(),
                    after,
                    stages,
                    move_to,
                });
            }
        }
        // Stable: thresholds of equal duration keep their configuration order.
        thresholds.sort_by_key(|t| t.after);
        Some(thresholds)
    }
}

/// Parses a duration written as `7d`, `14d`, `5m`, `2s`, `1h 30m`, `250ms`.
///
/// # Errors
/// A message saying what is wrong with `text`.
pub fn parse_span(text: &str) -> Result<Span, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 7d, 14d, 5m or 2s ({e})"))?;
    Span::try_from(duration).map_err(|_| format!("{text:?} is too long"))
}

/// A test model whose ladder filters by stage and moves customers: a 3-day nudge for
/// leads, a 30-day lapse that moves customers to `lapsed`, a 60-day threshold for all.
#[cfg(test)]
pub(crate) const LAPSING_MODEL: &str = r#"
name = "m"
stages = ["lead", "customer", "lapsed"]
[[rules]]
name = "bought"
to = "customer"
events = ["Order Completed"]
[[inactivity]]
name = "nudge"
after = "3d"
stages = ["lead"]
[[inactivity]]
name = "lapse"
after = "30d"
stages = ["customer"]
move_to = "lapsed"
[[inactivity]]
name = "gone"
after = "60d"
"#;

/// Compiles a model from a TOML `[model]` body, for tests across the crate.
///
/// # Panics
/// On a spec that does not parse or compile.
#[cfg(test)]
pub(crate) fn test_model(toml_text: &str) -> Model {
    let spec: ModelSpec = toml::from_str(toml_text).expect("test spec deserialises");
    Model::compile(&spec).expect("test spec compiles")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_rules: &str) -> ModelSpec {
        let text = format!("name = \"m\"\nstages = [\"a\", \"b\", \"c\"]\n{toml_rules}");
        toml_like(&text)
    }

    /// Deserialises a model spec straight from TOML, without the `config` crate
    /// (loading files and the environment is the shell's business, tested there).
    fn toml_like(text: &str) -> ModelSpec {
        toml::from_str(text).expect("test spec deserialises")
    }

    #[test]
    fn the_version_labels_a_model_without_changing_its_fingerprint() {
        let unversioned = Model::compile(&spec("")).unwrap();
        let versioned = Model::compile(&spec("version = \"2026.12\"")).unwrap();
        assert_eq!(versioned.version(), "2026.12");
        assert_eq!(versioned.shape().fingerprint, unversioned.shape().fingerprint);
        let fingerprint = unversioned.shape().fingerprint;
        assert_eq!(unversioned.version(), &format!("{fingerprint:016x}")[..12]);
        assert_eq!(unversioned.version().len(), 12);
        let changed = Model::compile(&spec("initial = \"b\"")).unwrap();
        assert_ne!(
            changed.version(),
            unversioned.version(),
            "a changed model, a new default"
        );
        let problems = Model::compile(&spec("version = \" \"")).unwrap_err();
        assert_eq!(problems[0].path, "model.version");
    }

    #[test]
    fn rules_read_in_plain_words() {
        let model = Model::compile(&spec(
            r#"
            [[rules]]
            name = "big"
            to = "c"
            types = ["track", "screen"]
            events = ["Order Completed"]
            where = [{ property = "revenue", gt = 100 }, { property = "coupon", exists = false }]
            occurrence = { at_least = 2 }
            from = ["a", "b"]
            [[rules]]
            name = "back"
            to = "a"
            allow_backward = true
            occurrence = { nth = 22 }
            "#,
        ))
        .unwrap();
        let words: Vec<String> = model.spec().rules.iter().map(RuleSpec::in_words).collect();
        assert_eq!(
            words,
            [
                "a track or screen event named \"Order Completed\" where revenue > 100 and coupon is absent, \
                 the customer's 2nd or later, in a or b, moves the customer to c",
                "a track event, only the customer's 22nd, moves the customer to a (forward or back)",
            ]
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let problems = Model::compile(&spec(
            r#"
            initial = "z"
            activity_types = ["track", "click"]
            [[rules]]
            name = "r"
            to = "nowhere"
            from = ["a", "q"]
            [[rules]]
            name = "r"
            to = "b"
            types = ["identify"]
            occurrence = { nth = 0 }
            where = [{ property = "x" }, { property = "y", gt = 1, lt = 2 }]
            [[inactivity]]
            name = "w"
            after = "7 parsecs"
            [[inactivity]]
            name = "w"
            after = "0s"
            move_to = "zz"
            "#,
        ))
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "model.initial",
                "model.activity_types[1]",
                "model.rules[0].to",
                "model.rules[0].from[1]",
                "model.rules[1].name",
                "model.rules[1].types[0]",
                "model.rules[1].where[0]",
                "model.rules[1].where[1]",
                "model.rules[1].occurrence",
                "model.inactivity[0].after",
                "model.inactivity[1].name",
                "model.inactivity[1].after",
                "model.inactivity[1].move_to",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn indexes_rules_by_type_and_name_in_configuration_order() {
        let model = Model::compile(&spec(
            r#"
            [[rules]]
            name = "any-track"
            to = "b"
            [[rules]]
            name = "named"
            to = "c"
            events = ["X", "Y"]
            [[rules]]
            name = "pages"
            to = "b"
            types = ["page", "track"]
            events = ["X"]
            "#,
        ))
        .unwrap();
        let names = |kind, name| -> Vec<&str> {
            model
                .candidate_rules(kind, name)
                .iter()
                .map(|&id| model.rule(id).name.as_str())
                .collect()
        };
        assert_eq!(
            names(EventType::Track, Some("X")),
            ["any-track", "named", "pages"]
        );
        assert_eq!(names(EventType::Track, Some("Y")), ["any-track", "named"]);
        assert_eq!(names(EventType::Track, Some("Z")), ["any-track"]);
        assert_eq!(names(EventType::Track, None), ["any-track"]);
        assert_eq!(names(EventType::Page, Some("X")), ["pages"]);
        assert!(names(EventType::Screen, Some("X")).is_empty());
    }

    #[test]
    fn sorts_the_ladder_by_duration() {
        let model = Model::compile(&spec(
            r#"
            [[inactivity]]
            name = "late"
            after = "14d"
            [[inactivity]]
            name = "early"
            after = "7d"
            stages = ["b"]
            "#,
        ))
        .unwrap();
        let ladder: Vec<(&str, i64)> = model
            .thresholds()
            .iter()
            .map(|t| (t.name.as_str(), t.after.as_millis()))
            .collect();
        assert_eq!(ladder, [("early", 604_800_000), ("late", 1_209_600_000)]);
        assert!(model.thresholds()[0].applies_to(StageId(1)));
        assert!(!model.thresholds()[0].applies_to(StageId(0)));
    }

    #[test]
    fn predicates_compare_only_like_types() {
        let key = PropertyKey(0);
        let test = |test: PredicateTest, value: Option<PropertyValue<'_>>| {
            Predicate { key, test }.holds(value.as_ref())
        };
        let num = |n: f64| Some(PropertyValue::Number(n));
        let text = |s: &'static str| Some(PropertyValue::String(s.into()));
        assert!(test(PredicateTest::Gt(10.0), num(10.5)));
        assert!(!test(PredicateTest::Gt(10.0), num(10.0)));
        assert!(test(PredicateTest::Gte(10.0), num(10.0)));
        assert!(test(PredicateTest::Lt(10.0), num(9.0)));
        assert!(!test(PredicateTest::Lte(10.0), num(10.1)));
        assert!(
            !test(PredicateTest::Gt(1.0), text("5")),
            "strings are not numbers"
        );
        assert!(!test(PredicateTest::Gt(1.0), None));
        assert!(test(
            PredicateTest::Equals(Literal::String("pro".into())),
            text("pro")
        ));
        assert!(!test(
            PredicateTest::Equals(Literal::String("1".into())),
            num(1.0)
        ));
        assert!(test(PredicateTest::Equals(Literal::Number(1.0)), num(1.0)));
        assert!(test(
            PredicateTest::Equals(Literal::Bool(true)),
            Some(PropertyValue::Bool(true))
        ));
        assert!(test(PredicateTest::Exists(true), Some(PropertyValue::Composite)));
        assert!(!test(PredicateTest::Exists(true), Some(PropertyValue::Null)));
        assert!(test(PredicateTest::Exists(false), Some(PropertyValue::Null)));
        assert!(test(PredicateTest::Exists(false), None));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_span("7d").unwrap().as_millis(), 7 * 86_400_000);
        assert_eq!(parse_span("5m").unwrap().as_millis(), 300_000);
        assert_eq!(parse_span("2s").unwrap().as_millis(), 2_000);
        assert_eq!(parse_span("1h 30m").unwrap().as_millis(), 5_400_000);
        assert!(parse_span("7 parsecs").is_err());
        assert!(parse_span("").is_err());
    }
}
