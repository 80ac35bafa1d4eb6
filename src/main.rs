//! The `stagestream` command line: parses arguments, loads configuration, runs a command,
//! and maps failures to sysexits-style exit codes (1 `inspect --customer` found no
//! such customer, 64 usage/config, 65 a snapshot that is not one, 66 no input,
//! 69 cannot listen on `http.bind`, 73 cannot create output, 74 I/O error (snapshot
//! directory unreadable), 75 the service stopped on a Kafka failure or could not deliver
//! everything within the shutdown grace period, 78 a snapshot was made under a stage
//! model the configured one cannot take).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info};

use stagestream::config::{self, Settings};
use stagestream::core::{EventTime, Span, StageId};
use stagestream::demo::demo;
use stagestream::diff::diff;
use stagestream::generate::{generate, GeneratorSettings};
use stagestream::http;
use stagestream::inspect;
use stagestream::loadgen::{self, demo_stream, LoadError, LoadSettings};
use stagestream::pipeline::{self, Control};
use stagestream::replay::{replay, ReplayError};
use stagestream::report::{report, Cohort};
use stagestream::snapshot::SnapshotError;
use stagestream::telemetry::Metrics;
use stagestream::telemetry::{init_logs, LogFormat, LogTarget};

/// jemalloc for Rust and, through its unprefixed `malloc`, for librdkafka too: with
/// glibc's allocator the owner thread freed every consumed message into the arena of
/// librdkafka's fetch thread and waited on that arena's lock (~1,000-2,000 sleeps per
/// 500K events); jemalloc frees through per-thread caches. Its
/// built-in options (huge pages) are set at build time in `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The model `demo` uses without `--config`.
const DEMO_PRESET: &str = include_str!("../config/presets/five-stage.toml");

/// `inspect --customer`: no snapshot holds the customer.
const EX_NOT_FOUND: u8 = 1;
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_CANTCREAT: u8 = 73;
const EX_IOERR: u8 = 74;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    version,
    about = "Classifies customers into journey stages from behavioural events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume events from Kafka, produce CloudEvents, until SIGTERM.
    Run {
        /// Configuration file (TOML); STAGESTREAM__SECTION__KEY variables override it.
        #[arg(long)]
        config: PathBuf,
        /// Log lines on stdout as JSON objects (for a collector) or human-readable.
        #[arg(long, value_enum, default_value = "json")]
        log_format: LogFormat,
    },
    /// Run the service on an in-process Kafka cluster over a generated stream ending
    /// now, and print the transitions and win-backs it produces.
    Demo {
        /// Configuration file for the model and time settings (default: the built-in
        /// five-stage preset); its Kafka section is replaced by the in-process cluster.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How many customers to simulate.
        #[arg(long, default_value_t = 200)]
        customers: u32,
        /// How many days of activity, ending now.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Seed of the generated stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the engine over a JSON-lines file of Segment events and print CloudEvents.
    Replay {
        /// Configuration file (TOML); STAGESTREAM__SECTION__KEY variables override it.
        #[arg(long)]
        config: PathBuf,
        /// Input events, one JSON object per line; `-` for stdin.
        #[arg(long)]
        input: String,
        /// Where to write the CloudEvents lines; `-` for stdout.
        #[arg(long)]
        output: String,
        /// At end of input, advance the clock to this RFC 3339 instant (fires inactivity).
        #[arg(long, value_parser = parse_instant)]
        until: Option<EventTime>,
        /// Write rejected lines (invalid or late) here, one JSON object each.
        #[arg(long)]
        rejects: Option<PathBuf>,
    },
    /// Run two configurations' models over the same history and report what the change
    /// would do: customers by final stage (old x new), transitions, inactivity.
    Diff {
        /// The configuration deployed now.
        #[arg(long)]
        old: PathBuf,
        /// The configuration to compare with it.
        #[arg(long)]
        new: PathBuf,
        /// Input events, one JSON object per line; `-` for stdin.
        #[arg(long)]
        input: String,
        /// At end of input, advance both clocks to this RFC 3339 instant.
        #[arg(long, value_parser = parse_instant)]
        until: Option<EventTime>,
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
        /// Example customer ids listed per changed cell of the customer table.
        #[arg(long, default_value_t = 5)]
        examples: usize,
    },
    /// Journey analytics over a history of events, per cohort of first activity:
    /// reach, conversion, time to reach each stage, drop-off, win-back recovery.
    Report {
        /// Configuration file (TOML); STAGESTREAM__SECTION__KEY variables override it.
        #[arg(long)]
        config: PathBuf,
        /// Input events, one JSON object per line; `-` for stdin.
        #[arg(long)]
        input: String,
        /// At end of input, advance the clock to this RFC 3339 instant.
        #[arg(long, value_parser = parse_instant)]
        until: Option<EventTime>,
        /// Group customers by the UTC month or the ISO week of their first activity.
        #[arg(long, value_enum, default_value = "month")]
        cohort: CohortArg,
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
    },
    /// Validate a configuration (librdkafka's own rules for both clients included) and
    /// describe its model.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Produce the demo's generated stream to a Kafka topic, keyed by customer id, at a
    /// target rate or as fast as the broker takes it.
    Loadgen {
        /// Configuration file: its Kafka section gives the brokers and producer
        /// properties, its first input topic the default topic.
        #[arg(long)]
        config: PathBuf,
        /// Topic to produce to (default: the configuration's first input topic).
        #[arg(long)]
        topic: Option<String>,
        /// How many customers to simulate.
        #[arg(long, default_value_t = 10_000)]
        customers: u32,
        /// How many days of activity (event time).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// The first instant of the stream (default: `--days` before now).
        #[arg(long, value_parser = parse_instant)]
        start: Option<EventTime>,
        /// Events offered per second (default: as fast as the broker takes them).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// Stop after this long (wall clock), e.g. `30s` or `5m` (default: when the
        /// generated stream ends).
        #[arg(long, value_parser = parse_wall_duration)]
        duration: Option<Duration>,
        /// Stop after this many events.
        #[arg(long)]
        events: Option<u64>,
        /// Seed of the generated stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Show what snapshots hold: each header, one customer's state (JSON), or every
    /// customer's state as JSON lines. PATH is a snapshot file or a snapshot directory
    /// (then the newest valid snapshot of each partition).
    Inspect {
        path: PathBuf,
        /// Print this customer's state in each snapshot that holds it, as JSON.
        #[arg(long, conflicts_with = "export")]
        customer: Option<String>,
        /// Write every customer's state as JSON lines.
        #[arg(long)]
        export: bool,
    },
    /// Write a realistic, deterministic stream of e-commerce events as JSON lines.
    Generate {
        /// How many customers to simulate.
        #[arg(long, default_value_t = 1_000)]
        customers: u32,
        /// How many days of activity to cover.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// The first instant of the stream.
        #[arg(long, value_parser = parse_instant, default_value = "2026-01-01T00:00:00Z")]
        start: EventTime,
        /// Seed of the pseudo-random generator: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of lines deliberately invalid (0 to 1).
        #[arg(long, default_value_t = 0.002)]
        invalid_ratio: f64,
        /// Fraction of events sent twice, as a retrying client would (0 to 1).
        #[arg(long, default_value_t = 0.005)]
        duplicate_ratio: f64,
        /// Where to write; `-` for stdout.
        #[arg(long, default_value = "-")]
        output: String,
    },
}

fn parse_instant(text: &str) -> Result<EventTime, String> {
    EventTime::parse_rfc3339(text)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 date-time with an offset"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of events per second")),
    }
}

fn parse_wall_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like 30s or 5m: {error}"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("stagestream: {message}");
            ExitCode::from(code)
        }
    }
}

/// A failed command: what to print and which exit code to return.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl std::fmt::Display) -> Self {
        Failure {
            code,
            message: message.to_string(),
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config, log_format } => {
            let settings = load_settings(&config)?;
            init_logs(log_format, LogTarget::Stdout, "info");
            serve(settings)
        }
        Command::Demo {
            config,
            customers,
            days,
            seed,
        } => demo_command(config, customers, days, seed),
        Command::Loadgen {
            config,
            topic,
            customers,
            days,
            start,
            rate,
            duration,
            events,
            seed,
        } => {
            let settings = load_settings(&config)?;
            init_logs(LogFormat::Human, LogTarget::Stderr, "warn");
            let load = LoadSettings {
                topic: topic.unwrap_or_else(|| settings.input.topics[0].clone()),
                generator: demo_stream(customers, days, start, seed),
                rate,
                duration,
                max_events: events,
            };
            loadgen_command(&settings, &load)
        }
        Command::Replay {
            config,
            input,
            output,
            until,
            rejects,
        } => replay_command(&config, &input, &output, until, rejects),
        Command::Check { config } => check_command(&config),
        Command::Report {
            config,
            input,
            until,
            cohort,
            format,
        } => report_command(&config, &input, until, cohort, format),
        Command::Diff {
            old,
            new,
            input,
            until,
            format,
            examples,
        } => diff_command(&old, &new, &input, until, format, examples),
        Command::Inspect {
            path,
            customer,
            export,
        } => inspect_command(&path, customer.as_deref(), export),
        Command::Generate {
            customers,
            days,
            start,
            seed,
            invalid_ratio,
            duplicate_ratio,
            output,
        } => {
            for (name, ratio) in [
                ("--invalid-ratio", invalid_ratio),
                ("--duplicate-ratio", duplicate_ratio),
            ] {
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(Failure::new(EX_USAGE, format!("{name} must be between 0 and 1")));
                }
            }
            let settings = GeneratorSettings {
                customers,
                days,
                start,
                seed,
                invalid_ratio,
                duplicate_ratio,
            };
            let mut out = create_output(&output)?;
            let mut result = Ok(());
            generate(&settings, |line| {
                if result.is_ok() {
                    result = out.write_all(line).and_then(|()| out.write_all(b"\n"));
                }
            });
            result
                .and_then(|()| out.flush())
                .map_err(|e| Failure::new(EX_IOERR, format!("cannot write output: {e}")))
        }
    }
}

/// `stagestream demo`: the service on an in-process cluster, its outputs printed.
fn demo_command(config: Option<PathBuf>, customers: u32, days: u32, seed: u64) -> Result<(), Failure> {
    let settings = match config {
        Some(path) => load_settings(&path)?,
        None => config::load_embedded("five-stage preset (built in)", DEMO_PRESET)
            .map_err(|error| Failure::new(EX_USAGE, error))?,
    };
    init_logs(LogFormat::Human, LogTarget::Stderr, "warn");
    let mut out = io::stdout().lock();
    let summary =
        demo(settings, customers, days, seed, &mut out).map_err(|error| Failure::new(EX_TEMPFAIL, error))?;
    eprintln!(
        "stagestream demo: {} events through an in-process Kafka cluster, {} CloudEvents \
         printed, {} invalid events dead-lettered, {} snapshots written, in {:.1} s",
        summary.events,
        summary.printed,
        summary.dead_lettered,
        summary.snapshots,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}

/// `stagestream loadgen`: the generated stream produced to a topic.
fn loadgen_command(settings: &Settings, load: &LoadSettings) -> Result<(), Failure> {
    let properties = settings.kafka.producer_properties(None);
    let summary = loadgen::load(&properties, settings.input.partitioner, load).map_err(|error| {
        let code = match error {
            LoadError::Client(_) => EX_USAGE,
            LoadError::Produce { .. } | LoadError::Undelivered { .. } => EX_TEMPFAIL,
        };
        Failure::new(code, error)
    })?;
    let seconds = summary.elapsed.as_secs_f64();
    eprintln!(
        "stagestream loadgen: {} events ({} invalid, unkeyed) delivered to {} in {seconds:.2} s: \
         {:.0} events/s",
        summary.events,
        summary.unkeyed,
        load.topic,
        summary.events as f64 / seconds.max(1e-9)
    );
    if summary.stream_ended {
        eprintln!(
            "stagestream loadgen: the generated stream ended first; raise --customers or --days \
             for more events"
        );
    }
    Ok(())
}

/// `stagestream replay`: the engine over a file, CloudEvents out.
fn replay_command(
    config: &Path,
    input: &str,
    output: &str,
    until: Option<EventTime>,
    rejects: Option<PathBuf>,
) -> Result<(), Failure> {
    let settings = load_settings(config)?;
    let input = open_input(input)?;
    let output = create_output(output)?;
    let mut rejects = rejects
        .map(|path| create_output(&path.to_string_lossy()))
        .transpose()?;
    let summary = replay(
        &settings,
        input,
        output,
        rejects.as_mut().map(|w| w as &mut dyn Write),
        until,
    )
    .map_err(|error: ReplayError| Failure::new(EX_IOERR, error))?;
    eprint!("{summary}");
    Ok(())
}

/// How `diff` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DiffFormat {
    /// Tables for a terminal.
    Text,
    /// One JSON object.
    Json,
}

/// How `report` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    /// Tables for a terminal.
    Text,
    /// One JSON object.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// `report --cohort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CohortArg {
    Month,
    Week,
}

/// `stagestream report`: journey analytics per cohort.
fn report_command(
    config: &Path,
    input: &str,
    until: Option<EventTime>,
    cohort: CohortArg,
    format: ReportFormat,
) -> Result<(), Failure> {
    let settings = load_settings(config)?;
    let input = open_input(input)?;
    let cohort = match cohort {
        CohortArg::Month => Cohort::Month,
        CohortArg::Week => Cohort::Week,
    };
    let report = report(&settings, input, until, cohort)
        .map_err(|error| Failure::new(EX_IOERR, format!("cannot read input: {error}")))?;
    let mut out = BufWriter::new(io::stdout().lock());
    let written = match format {
        ReportFormat::Text => write!(out, "{report}"),
        ReportFormat::Json => write_json_line(&mut out, &report),
        ReportFormat::Csv => report.write_csv(&mut out),
    };
    written
        .and_then(|()| out.flush())
        .map_err(|error| Failure::new(EX_IOERR, format!("cannot write the report: {error}")))
}

fn write_json_line(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// `stagestream diff`: two models over one history, compared.
fn diff_command(
    old: &Path,
    new: &Path,
    input: &str,
    until: Option<EventTime>,
    format: DiffFormat,
    examples: usize,
) -> Result<(), Failure> {
    let (old, new) = (load_settings(old)?, load_settings(new)?);
    let input = open_input(input)?;
    let report = diff(&old, &new, input, until, examples)
        .map_err(|error| Failure::new(EX_IOERR, format!("cannot read input: {error}")))?;
    let mut out = BufWriter::new(io::stdout().lock());
    let written = match format {
        DiffFormat::Text => write!(out, "{report}"),
        DiffFormat::Json => write_json_line(&mut out, &report),
    };
    written
        .and_then(|()| out.flush())
        .map_err(|error| Failure::new(EX_IOERR, format!("cannot write the report: {error}")))
}

/// `stagestream inspect`: what snapshot files hold.
fn inspect_command(path: &Path, customer: Option<&str>, export: bool) -> Result<(), Failure> {
    let failed = |error: inspect::InspectError| {
        let code = match error {
            inspect::InspectError::Corrupt { .. } => EX_DATAERR,
            inspect::InspectError::UnknownCustomer(_) => EX_NOT_FOUND,
            inspect::InspectError::Write(_) => EX_IOERR,
            inspect::InspectError::Unreadable { .. } | inspect::InspectError::NoSnapshot { .. } => EX_NOINPUT,
        };
        Failure::new(code, error)
    };
    let snapshots = inspect::read(path, &mut io::stderr()).map_err(failed)?;
    let mut out = BufWriter::new(io::stdout().lock());
    match (customer, export) {
        (Some(id), _) => {
            let state = inspect::customer(&snapshots, id).map_err(failed)?;
            writeln!(out, "{state:#}").map_err(|e| failed(inspect::InspectError::Write(e)))?;
        }
        (None, true) => inspect::export(&snapshots, &mut out).map_err(failed)?,
        (None, false) => inspect::describe(&snapshots, &mut out).map_err(failed)?,
    }
    out.flush().map_err(|e| failed(inspect::InspectError::Write(e)))
}

/// `stagestream check`: validates a configuration and describes its model.
fn check_command(config: &Path) -> Result<(), Failure> {
    let settings = load_settings(config)?;
    settings
        .kafka
        .check_clients(&settings.delivery)
        .map_err(|error| Failure::new(EX_USAGE, format!("{}: {error}", config.display())))?;
    let model = &settings.model;
    let stages: Vec<&str> = model.stage_names().collect();
    let ladder: Vec<String> = model
        .thresholds()
        .iter()
        .map(|t| {
            let mut words = format!("{} after {}", t.name, days_or_duration(t.after));
            if let Some(stages) = t.stages {
                let names: Vec<&str> = (0..model.stage_count() as u8)
                    .map(StageId)
                    .filter(|&stage| stages.contains(stage))
                    .map(|stage| model.stage_name(stage))
                    .collect();
                words += &format!(" in {}", names.join(" or "));
            }
            if let Some(to) = t.move_to {
                words += &format!(", then moves the customer to {}", model.stage_name(to));
            }
            words
        })
        .collect();
    let expiry = match settings.engine.expire_after {
        Some(after) => format!("after {} without activity", days_or_duration(after)),
        None => "never".to_owned(),
    };
    let mut out = String::from("configuration ok\n");
    let mut line = |label: &str, text: &str| out += &format!("  {label:<11} {text}\n");
    line(
        "model",
        &format!(
            "{}, version {} (fingerprint {:016x})",
            model.name(),
            model.version(),
            model.shape().fingerprint
        ),
    );
    line(
        "stages",
        &format!(
            "{} (a new customer starts in {})",
            stages.join(" -> "),
            model.stage_name(model.initial_stage())
        ),
    );
    let rules = &model.spec().rules;
    for (i, rule) in rules.iter().enumerate() {
        line(
            if i == 0 { "rules" } else { "" },
            &format!("{}: {}", rule.name, rule.in_words()),
        );
    }
    if rules.is_empty() {
        line("rules", "none: every customer stays in the stage it starts in");
    }
    line(
        "inactivity",
        &if ladder.is_empty() {
            "none".to_owned()
        } else {
            ladder.join("; ")
        },
    );
    line("expiry", &expiry);
    for (i, mapping) in model.spec().migrate.iter().enumerate() {
        line(
            if i == 0 { "migrate" } else { "" },
            &format!(
                "customers of the removed stage {} move to {} when a snapshot is restored",
                mapping.from, mapping.to
            ),
        );
    }
    if let Some(shadow) = &settings.shadow {
        line(
            "shadow",
            &format!(
                "{}, version {} (fingerprint {:016x}) to topic {}",
                shadow.model.name(),
                shadow.model.version(),
                shadow.model.shape().fingerprint,
                shadow.topic
            ),
        );
    }
    print!("{out}");
    Ok(())
}

/// `90 days` for whole days (humantime writes 90 days as "2months 29days 2h 52m
/// 48s"), else humantime's form (`36h`).
fn days_or_duration(span: Span) -> String {
    match span.as_millis() {
        millis if millis % 86_400_000 == 0 => format!("{} days", millis / 86_400_000),
        millis => {
            humantime::format_duration(std::time::Duration::from_millis(millis.unsigned_abs())).to_string()
        }
    }
}

/// Runs the service on its own thread until it fails or SIGTERM/SIGINT arrives; then
/// gives it the grace period to deliver and commit.
fn serve(settings: Settings) -> Result<(), Failure> {
    let grace = settings.live.shutdown_grace.as_duration();
    // With a shadow, transitions and inactivity are counted by `model` too.
    let metrics = match settings.shadow {
        Some(_) => Metrics::with_model_label(),
        None => Metrics::new(),
    };
    let control = Arc::new(Control::new(metrics));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(EX_TEMPFAIL, format!("cannot start the runtime: {e}")))?;
    let bind = settings.http.bind;
    let listener = runtime
        .block_on(http::bind(bind))
        .map_err(|e| Failure::new(EX_UNAVAILABLE, format!("cannot listen on http.bind {bind}: {e}")))?;
    let address = listener.local_addr().unwrap_or(bind);
    let api = match settings.api.enabled {
        true => {
            // The API's producer and the members thread start on the runtime's context.
            let _entered = runtime.enter();
            let api = http::Api::start(&settings, control.clone()).map_err(|e| Failure::new(EX_USAGE, e))?;
            info!(%address, url = %settings.http.advertised_url, members = %settings.api.members_topic, token = settings.api.token.is_some(), "serving /customers/{{id}}");
            Some(api)
        }
        false => None,
    };
    info!(%address, "serving /metrics, /livez, /readyz and /progress");
    runtime.spawn({
        let control = control.clone();
        async move {
            if let Err(error) = http::serve(listener, control, api).await {
                error!(%error, "the HTTP endpoint failed");
            }
        }
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let control = control.clone();
        std::thread::Builder::new()
            .name("stagestream-service".into())
            .spawn(move || {
                let _ = done_tx.send(pipeline::run(&settings, control));
            })
            .map_err(|e| Failure::new(EX_TEMPFAIL, format!("cannot start the service thread: {e}")))?;
    }
    let stopped = |result: Result<(), pipeline::PipelineError>| {
        result.map_err(|error| {
            error!(%error, "service stopped");
            let code = match &error {
                pipeline::PipelineError::Snapshot(SnapshotError::IncompatibleModel { .. }) => EX_CONFIG,
                pipeline::PipelineError::Snapshot(SnapshotError::Unlistable { .. }) => EX_IOERR,
                // librdkafka refused the properties (a cross-property rule `check` also runs).
                pipeline::PipelineError::Client { .. } => EX_USAGE,
                _ => EX_TEMPFAIL,
            };
            Failure::new(code, error)
        })
    };
    runtime.block_on(async move {
        let mut done_rx = done_rx;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Failure::new(EX_TEMPFAIL, format!("cannot handle SIGTERM: {e}")))?;
        tokio::select! {
            finished = &mut done_rx => return stopped(finished.expect("the service thread reports")),
            _ = terminate.recv() => info!(signal = "SIGTERM", ?grace, "shutting down"),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", ?grace, "shutting down"),
        }
        control.stop();
        // The service bounds its own flush by `grace`; the margin covers the final
        // snapshots and leaving the group (a rebalance round on a busy broker).
        let margin = Duration::from_secs(10);
        match tokio::time::timeout(grace + margin, done_rx).await {
            Ok(finished) => stopped(finished.expect("the service thread reports")),
            Err(_) => Err(Failure::new(
                EX_TEMPFAIL,
                format!("the service did not stop within the grace period {grace:?} + {margin:?}"),
            )),
        }
    })
}

fn load_settings(path: &Path) -> Result<Settings, Failure> {
    config::load(path).map_err(|error| Failure::new(EX_USAGE, error))
}

fn open_input(path: &str) -> Result<Box<dyn BufRead>, Failure> {
    if path == "-" {
        return Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin())));
    }
    File::open(path)
        .map(|file| Box::new(BufReader::with_capacity(1 << 20, file)) as Box<dyn BufRead>)
        .map_err(|e| Failure::new(EX_NOINPUT, format!("cannot open input {path}: {e}")))
}

fn create_output(path: &str) -> Result<Box<dyn Write>, Failure> {
    if path == "-" {
        return Ok(Box::new(BufWriter::with_capacity(1 << 16, io::stdout())));
    }
    File::create(path)
        .map(|file| Box::new(BufWriter::with_capacity(1 << 20, file)) as Box<dyn Write>)
        .map_err(|e| Failure::new(EX_CANTCREAT, format!("cannot create {path}: {e}")))
}
