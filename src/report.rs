//! `stagestream report`: journey analytics over a history of events.
//!
//! Runs the engine over the history exactly as `replay` does and, from its outputs,
//! keeps a few facts per customer: when it was first active, when it first reached each
//! stage, the stage of its latest inactivity and whether it moved on after it. At the
//! end they are grouped by cohort (the UTC month or ISO week of first activity) and
//! overall into the tables of `docs/analytics.md`: reach, conversion, time to reach
//! (p50, p90), current population, drop-off, and win-back recovery per threshold.
//! `main` prints the [`Report`] as text, JSON or CSV.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use ahash::RandomState;
use hashbrown::HashMap;
use serde::Serialize;

use crate::config::Settings;
use crate::core::{Cause, Engine, EventTime, Model, Output, Record, StageId};
use crate::decode::decode;

/// How customers are grouped: by the UTC month or the ISO week of their first activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cohort {
    Month,
    Week,
}

impl Cohort {
    /// `2026-03` or `2026-W10`.
    fn of(self, time: EventTime) -> String {
        match self {
            Cohort::Month => {
                let (year, month) = time.utc_month();
                format!("{year:04}-{month:02}")
            }
            Cohort::Week => {
                let (year, week) = time.iso_week();
                format!("{year:04}-W{week:02}")
            }
        }
    }
}

/// The report (`--format json` prints it as is).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// In cohort order (oldest first).
    pub cohorts: Vec<CohortReport>,
    pub overall: CohortReport,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CohortReport {
    /// `2026-03`, `2026-W10`, or `all`.
    pub cohort: String,
    pub customers: u64,
    /// In model order.
    pub stages: Vec<StageReport>,
    /// In ladder order.
    pub winback: Vec<WinbackReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: String,
    /// Customers who ever reached the stage.
    pub reached: u64,
    /// `reached` of the next stage / `reached` of this one; `null` for the last stage
    /// and where nobody reached this one.
    pub conversion_to_next: Option<f64>,
    pub time_to_reach_p50_seconds: Option<f64>,
    pub time_to_reach_p90_seconds: Option<f64>,
    /// Customers in the stage at the end.
    pub current: u64,
    /// Customers whose latest inactivity fired in this stage and who never moved to a
    /// later stage after it.
    pub dropped_off: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WinbackReport {
    pub threshold: String,
    /// Gaps in which the threshold fired.
    pub inactive: u64,
    /// Of those gaps, the ones the customer ended by coming back.
    pub reactivated: u64,
}

/// Each customer's journey, by id.
type Journeys = HashMap<String, Journey, RandomState>;

/// What the report keeps per customer.
#[derive(Clone, Debug)]
struct Journey {
    first_active: EventTime,
    /// When the customer first reached each stage, by stage.
    reached: Vec<Option<EventTime>>,
    /// The stage of the latest inactivity, and whether a later stage was reached after it.
    latest_inactivity: Option<(StageId, bool)>,
    /// Per threshold: gaps it fired in, and how many of those ended in a return.
    inactive: Vec<u64>,
    reactivated: Vec<u64>,
}

/// Runs `settings`' model over `input` (then, with `until`, advances the clock to it)
/// and reports per `cohort`.
///
/// # Errors
/// The input cannot be read; invalid lines are skipped, as `replay` skips them.
pub fn report(
    settings: &Settings,
    mut input: impl BufRead,
    until: Option<EventTime>,
    cohort: Cohort,
) -> Result<Report, io::Error> {
    let model = settings.model.clone();
    let mut engine = Engine::new(model.clone(), settings.engine);
    let mut journeys = Journeys::default();
    let mut outputs = Vec::new();
    let mut line = Vec::with_capacity(4096);
    while input.read_until(b'\n', &mut line)? > 0 {
        let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if let Ok(record) = decode(bytes, &model) {
            match &record {
                Record::Event(event) => {
                    engine.on_event(event, &mut outputs);
                }
                Record::Erase(erase) => {
                    engine.erase(erase, &mut outputs);
                    // An erased customer leaves the report too.
                    journeys.remove(&*erase.customer);
                }
            }
            follow(&engine, &outputs, &mut journeys);
            outputs.clear();
        }
        line.clear();
    }
    if let Some(until) = until {
        engine.advance_to(until, &mut outputs);
        follow(&engine, &outputs, &mut journeys);
    }
    Ok(tabulate(&engine, &journeys, cohort))
}

/// Takes what one engine call emitted into the customers' journeys.
fn follow(engine: &Engine, outputs: &[Output], journeys: &mut Journeys) {
    let model = engine.model();
    for output in outputs {
        match *output {
            Output::StageChanged {
                customer,
                to,
                at,
                cause,
                ..
            } => {
                // One lookup; the id is copied only for a customer seen the first time.
                let journey = journeys
                    .entry_ref(engine.customer_id(customer))
                    .or_insert_with(|| Journey {
                        first_active: at,
                        reached: vec![None; model.stage_count()],
                        latest_inactivity: None,
                        inactive: vec![0; model.thresholds().len()],
                        reactivated: vec![0; model.thresholds().len()],
                    });
                let reached = &mut journey.reached[usize::from(to.0)];
                reached.get_or_insert(at);
                // Progress is a rule's move to a later stage, not a threshold's `move_to`.
                if let Some((stage, moved_on)) = &mut journey.latest_inactivity {
                    *moved_on |= to > *stage && matches!(cause, Cause::Rule(_));
                }
            }
            Output::Inactive {
                customer,
                threshold,
                stage,
                ..
            } => {
                if let Some(journey) = journeys.get_mut(engine.customer_id(customer)) {
                    journey.latest_inactivity = Some((stage, false));
                    journey.inactive[usize::from(threshold.0)] += 1;
                }
            }
            Output::Reactivated {
                customer,
                gap_stage,
                last_threshold,
                ..
            } => {
                if let Some(journey) = journeys.get_mut(engine.customer_id(customer)) {
                    for threshold in model.fired_in_gap(gap_stage, last_threshold) {
                        journey.reactivated[usize::from(threshold.0)] += 1;
                    }
                }
            }
            // `report` restores no snapshot, so nothing is migrated.
            Output::Expired { .. } | Output::Erased { .. } | Output::Migrated { .. } => {}
        }
    }
}

/// A customer as the tables count it: its journey and its stage at the end.
type Member<'a> = (&'a Journey, Option<StageId>);

fn tabulate(engine: &Engine, journeys: &Journeys, cohort: Cohort) -> Report {
    let model = engine.model();
    // Every figure is a count, a sum or a percentile of sorted values: none depends on
    // the order of the members, so the hash order of `journeys` does not show.
    let all: Vec<Member<'_>> = journeys
        .iter()
        .map(|(id, journey)| (journey, engine.stage_of(id)))
        .collect();
    let mut by_cohort: BTreeMap<String, Vec<Member<'_>>> = BTreeMap::new();
    for &member in &all {
        by_cohort
            .entry(cohort.of(member.0.first_active))
            .or_default()
            .push(member);
    }
    Report {
        cohorts: by_cohort
            .iter()
            .map(|(name, members)| cohort_report(model, name, members))
            .collect(),
        overall: cohort_report(model, "all", &all),
    }
}

fn cohort_report(model: &Model, name: &str, members: &[Member<'_>]) -> CohortReport {
    let stage_count = model.stage_count();
    let reached: Vec<u64> = (0..stage_count)
        .map(|s| members.iter().filter(|(j, _)| j.reached[s].is_some()).count() as u64)
        .collect();
    let stages = (0..stage_count)
        .map(|s| {
            let stage = StageId(s as u8);
            let mut times: Vec<i64> = members
                .iter()
                .filter_map(|(j, _)| j.reached[s].map(|at| at.as_millis() - j.first_active.as_millis()))
                .collect();
            times.sort_unstable();
            StageReport {
                stage: model.stage_name(stage).to_owned(),
                reached: reached[s],
                conversion_to_next: reached
                    .get(s + 1)
                    .filter(|_| reached[s] > 0)
                    .map(|&next| next as f64 / reached[s] as f64),
                time_to_reach_p50_seconds: percentile(&times, 50),
                time_to_reach_p90_seconds: percentile(&times, 90),
                current: members.iter().filter(|(_, now)| *now == Some(stage)).count() as u64,
                dropped_off: members
                    .iter()
                    .filter(|(j, _)| j.latest_inactivity == Some((stage, false)))
                    .count() as u64,
            }
        })
        .collect();
    let winback = model
        .thresholds()
        .iter()
        .enumerate()
        .map(|(t, threshold)| WinbackReport {
            threshold: threshold.name.clone(),
            inactive: members.iter().map(|(j, _)| j.inactive[t]).sum(),
            reactivated: members.iter().map(|(j, _)| j.reactivated[t]).sum(),
        })
        .collect();
    CohortReport {
        cohort: name.to_owned(),
        customers: members.len() as u64,
        stages,
        winback,
    }
}

/// The nearest-rank percentile of sorted milliseconds, in seconds: the smallest value
/// with at least `p`% of the values at or below it.
fn percentile(sorted_millis: &[i64], p: usize) -> Option<f64> {
    let rank = (sorted_millis.len() * p).div_ceil(100).max(1);
    sorted_millis.get(rank - 1).map(|&millis| millis as f64 / 1e3)
}

impl Report {
    /// Writes the CSV form: one row per cohort and stage (`section` = `stage`), then
    /// one per cohort and threshold (`section` = `winback`); empty cells where a
    /// column does not apply or has no value.
    ///
    /// # Errors
    /// What `out` returns.
    pub fn write_csv(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "cohort,customers,section,name,reached,conversion_to_next,time_to_reach_p50_seconds,\
             time_to_reach_p90_seconds,current,dropped_off,inactive,reactivated"
        )?;
        let number = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
        for cohort in self.cohorts.iter().chain([&self.overall]) {
            for stage in &cohort.stages {
                writeln!(
                    out,
                    "{},{},stage,{},{},{},{},{},{},{},,",
                    cohort.cohort,
                    cohort.customers,
                    csv_field(&stage.stage),
                    stage.reached,
                    number(stage.conversion_to_next),
                    number(stage.time_to_reach_p50_seconds),
                    number(stage.time_to_reach_p90_seconds),
                    stage.current,
                    stage.dropped_off
                )?;
            }
            for winback in &cohort.winback {
                writeln!(
                    out,
                    "{},{},winback,{},,,,,,,{},{}",
                    cohort.cohort,
                    cohort.customers,
                    csv_field(&winback.threshold),
                    winback.inactive,
                    winback.reactivated
                )?;
            }
        }
        Ok(())
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The text form: per cohort, a table of stages and a line of win-backs.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ratio = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0));
        let duration = |value: Option<f64>| value.map_or("-".to_owned(), human_seconds);
        for cohort in self.cohorts.iter().chain([&self.overall]) {
            writeln!(f, "cohort {}: {} customers", cohort.cohort, cohort.customers)?;
            writeln!(
                f,
                "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "stage", "reached", "to next", "p50", "p90", "current", "dropped"
            )?;
            for s in &cohort.stages {
                writeln!(
                    f,
                    "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    s.stage,
                    s.reached,
                    ratio(s.conversion_to_next),
                    duration(s.time_to_reach_p50_seconds),
                    duration(s.time_to_reach_p90_seconds),
                    s.current,
                    s.dropped_off
                )?;
            }
            let winback: Vec<String> = cohort
                .winback
                .iter()
                .map(|w| format!("{} {} of {} came back", w.threshold, w.reactivated, w.inactive))
                .collect();
            writeln!(
                f,
                "  win-back: {}\n",
                if winback.is_empty() {
                    "none".to_owned()
                } else {
                    winback.join("; ")
                }
            )?;
        }
        Ok(())
    }
}

/// `0s`, `45s`, `12m`, `5.5h`, `3.2d`: one unit, at most one decimal.
fn human_seconds(seconds: f64) -> String {
    match seconds {
        s if s < 60.0 => format!("{s:.0}s"),
        s if s < 3_600.0 => format!("{:.0}m", s / 60.0),
        s if s < 86_400.0 => format!("{:.1}h", s / 3_600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}
