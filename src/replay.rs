//! `stagestream replay`: runs the engine over JSON lines and writes CloudEvents lines.
//!
//! Each input line is decoded, applied to one [`Engine`], and whatever it caused is
//! rendered straight away, so output order is processing order and the output bytes
//! are a function of the input bytes and the configuration alone. An erase line
//! (`{"type": "erase", ...}`) erases its customer. Lines that are not
//! applied for a reason the user should see (invalid, late) go to the rejects file.
//! At end of input `--until` advances the clock, firing the inactivity it reaches.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Settings;
use crate::core::{Engine, EventTime, Output, Record, Verdict};
use crate::decode::{decode, RejectReason};
use crate::output::Renderer;

/// Why a replay stopped. None of these is retriable by running again unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read input: {0}")]
    Read(#[source] io::Error),
    #[error("cannot write output: {0}")]
    Write(#[source] io::Error),
    #[error("cannot write rejects: {0}")]
    WriteRejects(#[source] io::Error),
}

/// Runs a replay over `input`, writing CloudEvents lines to `output` and rejected lines
/// to `rejects`; then, with `until`, advances the clock to it.
///
/// # Errors
/// An I/O failure on any of the streams; invalid lines are not errors.
pub fn replay(
    settings: &Settings,
    mut input: impl BufRead,
    mut output: impl Write,
    mut rejects: Option<&mut dyn Write>,
    until: Option<EventTime>,
) -> Result<Summary, ReplayError> {
    let started = Instant::now();
    let model = settings.model.clone();
    let mut engine = Engine::new(model.clone(), settings.engine);
    let mut renderer = Renderer::new(settings.output.source.clone(), &model);
    let mut tally = Tally::new(&engine);
    let mut line = Vec::with_capacity(4096);
    let mut outputs = Vec::new();
    let mut line_number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(ReplayError::Read)? == 0 {
            break;
        }
        line_number += 1;
        let bytes = trim_line_end(&line);
        let record = match decode(bytes, &model) {
            Ok(record) => record,
            Err(error) => {
                *tally.invalid.entry(error.reason()).or_default() += 1;
                if let Some(rejects) = rejects.as_deref_mut() {
                    write_reject(
                        rejects,
                        line_number,
                        error.reason().as_str(),
                        &error.to_string(),
                        bytes,
                    )?;
                }
                continue;
            }
        };
        outputs.clear();
        match &record {
            Record::Event(event) => {
                let verdict = engine.on_event(event, &mut outputs);
                tally.verdict(verdict);
                if verdict == Verdict::Late {
                    if let Some(rejects) = rejects.as_deref_mut() {
                        write_reject(rejects, line_number, "late", &engine.why_late(event), bytes)?;
                    }
                }
            }
            Record::Erase(erase) => engine.erase(erase, &mut outputs),
        }
        write_outputs(
            &outputs,
            Some(&record),
            &engine,
            &mut renderer,
            &mut tally,
            &mut output,
        )?;
    }
    if let Some(until) = until {
        outputs.clear();
        engine.advance_to(until, &mut outputs);
        write_outputs(&outputs, None, &engine, &mut renderer, &mut tally, &mut output)?;
    }
    output.flush().map_err(ReplayError::Write)?;
    if let Some(rejects) = rejects {
        rejects.flush().map_err(ReplayError::WriteRejects)?;
    }
    Ok(tally.into_summary(&engine, line_number, started.elapsed()))
}

/// Counts and writes what one engine call produced; `trigger` is the record it applied.
fn write_outputs(
    outputs: &[Output],
    trigger: Option<&Record<'_>>,
    engine: &Engine,
    renderer: &mut Renderer,
    tally: &mut Tally,
    out: &mut impl Write,
) -> Result<(), ReplayError> {
    for produced in outputs {
        tally.output(produced);
        renderer
            .render(engine, produced, trigger)
            .write_structured(out)
            .map_err(ReplayError::Write)?;
    }
    Ok(())
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[derive(Serialize)]
struct Reject<'a> {
    line: u64,
    reason: &'a str,
    error: &'a str,
    input: &'a str,
}

fn write_reject(
    out: &mut dyn Write,
    line: u64,
    reason: &str,
    error: &str,
    bytes: &[u8],
) -> Result<(), ReplayError> {
    let input = String::from_utf8_lossy(bytes);
    let reject = Reject {
        line,
        reason,
        error,
        input: &input,
    };
    serde_json::to_writer(&mut *out, &reject)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(ReplayError::WriteRejects)
}

/// Counts kept while replaying, by index; names are attached at the end.
struct Tally {
    verdicts: [u64; 4],
    invalid: BTreeMap<RejectReason, u64>,
    /// Row 0 is "from null"; row `s + 1` is from stage `s`; column is the target stage.
    transitions: Vec<Vec<u64>>,
    inactivity: Vec<u64>,
    reactivated: u64,
    expired: u64,
    erased: u64,
    outputs: u64,
}

impl Tally {
    fn new(engine: &Engine) -> Self {
        let stages = engine.model().stage_count();
        Tally {
            verdicts: [0; 4],
            invalid: BTreeMap::new(),
            transitions: vec![vec![0; stages]; stages + 1],
            inactivity: vec![0; engine.model().thresholds().len()],
            reactivated: 0,
            expired: 0,
            erased: 0,
            outputs: 0,
        }
    }

    fn verdict(&mut self, verdict: Verdict) {
        self.verdicts[verdict as usize] += 1;
    }

    fn output(&mut self, output: &Output) {
        self.outputs += 1;
        match *output {
            Output::StageChanged { from, to, .. } => {
                let row = from.map_or(0, |stage| usize::from(stage.0) + 1);
                self.transitions[row][usize::from(to.0)] += 1;
            }
            Output::Inactive { threshold, .. } => self.inactivity[usize::from(threshold.0)] += 1,
            Output::Reactivated { .. } => self.reactivated += 1,
            Output::Expired { .. } => self.expired += 1,
            Output::Erased { .. } => self.erased += 1,
            Output::Migrated { .. } => unreachable!("replay restores no snapshot"),
        }
    }

    fn into_summary(self, engine: &Engine, lines: u64, elapsed: Duration) -> Summary {
        let model = engine.model();
        let stage = |i: usize| model.stage_name(crate::core::StageId(i as u8)).to_owned();
        let mut transitions = Vec::new();
        for (row, counts) in self.transitions.iter().enumerate() {
            for (to, &count) in counts.iter().enumerate() {
                if count > 0 {
                    let from = (row > 0).then(|| stage(row - 1));
                    transitions.push((from, stage(to), count));
                }
            }
        }
        Summary {
            model: model.name().to_owned(),
            lines,
            invalid: self.invalid,
            applied: self.verdicts[Verdict::Applied as usize],
            ignored: self.verdicts[Verdict::Ignored as usize],
            duplicates: self.verdicts[Verdict::Duplicate as usize],
            late: self.verdicts[Verdict::Late as usize],
            transitions,
            inactivity: model
                .thresholds()
                .iter()
                .zip(self.inactivity)
                .map(|(threshold, count)| (threshold.name.clone(), count))
                .collect(),
            population: model
                .stage_names()
                .zip(engine.population())
                .map(|(name, &count)| (name.to_owned(), count))
                .collect(),
            customers: engine.customer_count() as u64,
            reactivated: self.reactivated,
            expired: self.expired,
            erased: self.erased,
            outputs: self.outputs,
            elapsed,
        }
    }
}

/// What a replay did, printed to stderr as one screen.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub model: String,
    pub lines: u64,
    pub invalid: BTreeMap<RejectReason, u64>,
    pub applied: u64,
    pub ignored: u64,
    pub duplicates: u64,
    pub late: u64,
    /// `(from, to, count)`, `from` is `None` for first transitions.
    pub transitions: Vec<(Option<String>, String, u64)>,
    pub inactivity: Vec<(String, u64)>,
    /// Customers who came back after a gap in which a threshold fired.
    pub reactivated: u64,
    pub population: Vec<(String, u64)>,
    /// Customers with state at the end.
    pub customers: u64,
    /// Customers whose state expired (`state.expire_after`).
    pub expired: u64,
    /// Erase requests applied (one erased event each).
    pub erased: u64,
    pub outputs: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn invalid_total(&self) -> u64 {
        self.invalid.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let invalid = self.invalid_total();
        writeln!(f, "stagestream replay (model {})", self.model)?;
        writeln!(
            f,
            "  lines        {} read, {} valid, {} invalid",
            self.lines,
            self.lines - invalid,
            invalid
        )?;
        if invalid > 0 {
            let reasons: Vec<String> = self.invalid.iter().map(|(r, n)| format!("{r} {n}")).collect();
            write_wrapped(f, "  invalid      ", &reasons)?;
        }
        writeln!(
            f,
            "  events       {} applied, {} ignored (not activity), {} duplicates, {} late",
            self.applied, self.ignored, self.duplicates, self.late
        )?;
        let transitions: Vec<String> = self
            .transitions
            .iter()
            .map(|(from, to, n)| format!("{} -> {to} {n}", from.as_deref().unwrap_or("null")))
            .collect();
        write_wrapped(f, "  transitions  ", &transitions)?;
        let inactivity: Vec<String> = self.inactivity.iter().map(|(t, n)| format!("{t} {n}")).collect();
        write_wrapped(f, "  inactivity   ", &inactivity)?;
        writeln!(f, "  came back    {} after inactivity", self.reactivated)?;
        writeln!(
            f,
            "  left         {} expired, {} erase requests",
            self.expired, self.erased
        )?;
        let population: Vec<String> = self.population.iter().map(|(s, n)| format!("{s} {n}")).collect();
        write_wrapped(
            f,
            &format!("  customers    {} by stage: ", self.customers),
            &population,
        )?;
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.lines as f64 / seconds
        } else {
            0.0
        };
        writeln!(
            f,
            "  output       {} CloudEvents; {} lines in {:.3} s ({:.0} events/s)",
            self.outputs, self.lines, seconds, rate
        )
    }
}

/// Writes `items` comma-separated after `label`, wrapping before 100 columns.
fn write_wrapped(f: &mut fmt::Formatter<'_>, label: &str, items: &[String]) -> fmt::Result {
    let indent = " ".repeat(15);
    let mut column = label.len();
    f.write_str(label)?;
    if items.is_empty() {
        f.write_str("none")?;
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            if column + item.len() + 2 > 100 {
                write!(f, ",\n{indent}")?;
                column = indent.len();
            } else {
                f.write_str(", ")?;
                column += 2;
            }
        }
        f.write_str(item)?;
        column += item.len();
    }
    writeln!(f)
}
