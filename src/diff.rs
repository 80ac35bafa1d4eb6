//! `stagestream diff`: what a model change would do, before deploying it.
//!
//! Runs two models (two configurations' engines) over the same history, line by line,
//! exactly as `replay` would run each, and compares what they end with and what they
//! emitted: customers by final stage under each (a cross-table), transitions by
//! `from -> to`, inactivity events by threshold, and a few example customer ids for
//! each changed cell. Deterministic: a function of the input and the two
//! configurations. `main` prints the [`Diff`] as text or JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead};

use serde::Serialize;

use crate::config::Settings;
use crate::core::{Engine, EventTime, Model, Output, Record, StageId};
use crate::decode::decode;

/// The comparison of two models over one history (`--format json` prints it as is).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diff {
    /// Every customer of the input in exactly one row, by final stage under each model.
    pub customers: Vec<CustomerCell>,
    pub transitions: Vec<TransitionCount>,
    pub inactivity: Vec<InactivityCount>,
}

/// Customers whose final stage is `old` under the old model and `new` under the new
/// one (`None`: no state under that model).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CustomerCell {
    pub old: Option<String>,
    pub new: Option<String>,
    pub count: u64,
    /// Up to `--examples` customer ids, smallest first; none where the stage is the same.
    pub examples: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransitionCount {
    /// `None` for a customer's first transition.
    pub from: Option<String>,
    pub to: String,
    pub old: u64,
    pub new: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InactivityCount {
    pub threshold: String,
    pub old: u64,
    pub new: u64,
}

/// One model's run: its engine and what it emitted, by name.
struct Side {
    engine: Engine,
    transitions: BTreeMap<(Option<StageId>, StageId), u64>,
    inactivity: Vec<u64>,
    outputs: Vec<Output>,
}

impl Side {
    fn new(settings: &Settings) -> Self {
        Side {
            engine: Engine::new(settings.model.clone(), settings.engine),
            transitions: BTreeMap::new(),
            inactivity: vec![0; settings.model.thresholds().len()],
            outputs: Vec::new(),
        }
    }

    /// Applies one input line, decoded for this side's model (which properties a
    /// model keeps depends on its rules); returns its customer when it is valid.
    fn apply(&mut self, line: &[u8]) -> Option<String> {
        let record = decode(line, self.engine.model()).ok()?;
        match &record {
            Record::Event(event) => {
                self.engine.on_event(event, &mut self.outputs);
            }
            Record::Erase(erase) => self.engine.erase(erase, &mut self.outputs),
        }
        self.count();
        Some(record.customer().to_owned())
    }

    fn advance_to(&mut self, until: EventTime) {
        self.engine.advance_to(until, &mut self.outputs);
        self.count();
    }

    fn count(&mut self) {
        for output in self.outputs.drain(..) {
            match output {
                Output::StageChanged { from, to, .. } => {
                    *self.transitions.entry((from, to)).or_default() += 1
                }
                Output::Inactive { threshold, .. } => self.inactivity[usize::from(threshold.0)] += 1,
                // `diff` restores no snapshot, so nothing is migrated.
                Output::Reactivated { .. }
                | Output::Expired { .. }
                | Output::Erased { .. }
                | Output::Migrated { .. } => {}
            }
        }
    }

    /// `(from, to) -> count` by stage name.
    fn transitions_by_name(&self) -> BTreeMap<(Option<&str>, &str), u64> {
        let model = self.engine.model();
        self.transitions
            .iter()
            .map(|(&(from, to), &count)| ((from.map(|s| model.stage_name(s)), model.stage_name(to)), count))
            .collect()
    }
}

/// Runs the `old` and `new` configurations' models over `input` (then, with `until`,
/// advances both clocks to it) and compares them, with up to `examples` ids per
/// changed cell of the customer table.
///
/// # Errors
/// The input cannot be read; invalid lines are skipped by both models alike.
pub fn diff(
    old: &Settings,
    new: &Settings,
    mut input: impl BufRead,
    until: Option<EventTime>,
    examples: usize,
) -> Result<Diff, io::Error> {
    let (mut a, mut b) = (Side::new(old), Side::new(new));
    let mut customers = BTreeSet::new();
    let mut line = Vec::with_capacity(4096);
    while input.read_until(b'\n', &mut line)? > 0 {
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let customer = a.apply(bytes);
        b.apply(bytes);
        customers.extend(customer);
        line.clear();
    }
    if let Some(until) = until {
        a.advance_to(until);
        b.advance_to(until);
    }
    Ok(Diff {
        customers: customer_table(&a.engine, &b.engine, &customers, examples),
        transitions: transition_table(&a, &b),
        inactivity: inactivity_table(&a, &b),
    })
}

/// Stage names of both models: the old model's in its order, then the new model's
/// stages the old one lacks, in the new model's order.
fn stage_order<'a>(old: &'a Model, new: &'a Model) -> Vec<&'a str> {
    let mut names: Vec<&str> = old.stage_names().collect();
    names.extend(
        new.stage_names()
            .filter(|name| !old.stage_names().any(|known| known == *name)),
    );
    names
}

/// A customer's final stage under the old and the new model.
type StagePair = (Option<String>, Option<String>);

fn customer_table(
    old: &Engine,
    new: &Engine,
    customers: &BTreeSet<String>,
    examples: usize,
) -> Vec<CustomerCell> {
    let stage_of = |engine: &Engine, id: &str| {
        engine
            .stage_of(id)
            .map(|s| engine.model().stage_name(s).to_owned())
    };
    // (old stage, new stage) -> (customers, examples)
    let mut cells: BTreeMap<StagePair, (u64, Vec<String>)> = BTreeMap::new();
    // Ids in ascending order: each cell's examples are its smallest ids.
    for id in customers {
        let key = (stage_of(old, id), stage_of(new, id));
        let changed = key.0 != key.1;
        let (count, ids) = cells.entry(key).or_default();
        *count += 1;
        if changed && ids.len() < examples {
            ids.push(id.clone());
        }
    }
    let order = stage_order(old.model(), new.model());
    let rank = |stage: &Option<String>| {
        stage.as_deref().map_or(order.len(), |name| {
            order.iter().position(|n| *n == name).unwrap_or(order.len())
        })
    };
    let mut rows: Vec<CustomerCell> = cells
        .into_iter()
        .map(|((old, new), (count, examples))| CustomerCell {
            old,
            new,
            count,
            examples,
        })
        .collect();
    rows.sort_by_key(|row| (rank(&row.old), rank(&row.new)));
    rows
}

fn transition_table(old: &Side, new: &Side) -> Vec<TransitionCount> {
    let (a, b) = (old.transitions_by_name(), new.transitions_by_name());
    let order = stage_order(old.engine.model(), new.engine.model());
    let rank = |stage: Option<&str>| {
        stage.map_or(0, |name| {
            1 + order.iter().position(|n| *n == name).unwrap_or(order.len())
        })
    };
    let mut keys: Vec<(Option<&str>, &str)> = a.keys().chain(b.keys()).copied().collect();
    keys.sort_by_key(|&(from, to)| (rank(from), rank(Some(to))));
    keys.dedup();
    keys.into_iter()
        .map(|key| TransitionCount {
            from: key.0.map(str::to_owned),
            to: key.1.to_owned(),
            old: a.get(&key).copied().unwrap_or(0),
            new: b.get(&key).copied().unwrap_or(0),
        })
        .collect()
}

fn inactivity_table(old: &Side, new: &Side) -> Vec<InactivityCount> {
    let count = |side: &Side, name: &str| {
        let thresholds = side.engine.model().thresholds();
        thresholds
            .iter()
            .position(|t| t.name == name)
            .map_or(0, |i| side.inactivity[i])
    };
    let mut names: Vec<&str> = old
        .engine
        .model()
        .thresholds()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    for threshold in new.engine.model().thresholds() {
        if !names.contains(&threshold.name.as_str()) {
            names.push(&threshold.name);
        }
    }
    names
        .into_iter()
        .map(|name| InactivityCount {
            threshold: name.to_owned(),
            old: count(old, name),
            new: count(new, name),
        })
        .collect()
}

/// The text form: three tables that fit a terminal.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".to_owned());
        let total: u64 = self.customers.iter().map(|c| c.count).sum();
        let moved: u64 = self
            .customers
            .iter()
            .filter(|c| c.old != c.new)
            .map(|c| c.count)
            .sum();
        writeln!(
            f,
            "customers by final stage: {moved} of {total} end in another stage"
        )?;
        writeln!(f, "  {:<16} {:<16} {:>10}  examples", "old", "new", "customers")?;
        for cell in &self.customers {
            let marker = if cell.old == cell.new { " " } else { "*" };
            writeln!(
                f,
                "{marker} {:<16} {:<16} {:>10}  {}",
                stage(&cell.old),
                stage(&cell.new),
                cell.count,
                cell.examples.join(", ")
            )?;
        }
        writeln!(f, "\ntransitions")?;
        writeln!(
            f,
            "  {:<34} {:>10} {:>10} {:>10}",
            "from -> to", "old", "new", "delta"
        )?;
        for row in &self.transitions {
            let name = format!("{} -> {}", row.from.as_deref().unwrap_or("null"), row.to);
            let delta = row.new as i64 - row.old as i64;
            writeln!(f, "  {name:<34} {:>10} {:>10} {delta:>+10}", row.old, row.new)?;
        }
        writeln!(f, "\ninactivity events")?;
        writeln!(
            f,
            "  {:<34} {:>10} {:>10} {:>10}",
            "threshold", "old", "new", "delta"
        )?;
        for row in &self.inactivity {
            let delta = row.new as i64 - row.old as i64;
            writeln!(
                f,
                "  {:<34} {:>10} {:>10} {delta:>+10}",
                row.threshold, row.old, row.new
            )?;
        }
        Ok(())
    }
}
