//! The `stagestream` command line: parses arguments, loads configuration, runs a command,
//! and maps failures to sysexits-style exit codes (64 usage/config, 66 no input,
//! 73 cannot create output, 74 I/O error).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use stagestream::config::{self, Settings};
use stagestream::core::EventTime;
use stagestream::generate::{generate, GeneratorSettings};
use stagestream::replay::{replay, ReplayError};

const EX_USAGE: u8 = 64;
const EX_NOINPUT: u8 = 66;
const EX_CANTCREAT: u8 = 73;
const EX_IOERR: u8 = 74;

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
    /// Validate a configuration and describe its model.
    Check {
        #[arg(long)]
        config: PathBuf,
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
        Command::Replay {
            config,
            input,
            output,
            until,
            rejects,
        } => {
            let settings = load_settings(&config)?;
            let input = open_input(&input)?;
            let output = create_output(&output)?;
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
        Command::Check { config } => {
            let settings = load_settings(&config)?;
            let model = &settings.model;
            let stages: Vec<&str> = model.stage_names().collect();
            let ladder: Vec<String> = model
                .thresholds()
                .iter()
                .map(|t| {
                    let after = std::time::Duration::from_millis(t.after.as_millis().unsigned_abs());
                    format!("{} after {}", t.name, humantime::format_duration(after))
                })
                .collect();
            println!(
                "configuration ok: model {} with stages {}; inactivity: {}",
                model.name(),
                stages.join(" -> "),
                if ladder.is_empty() {
                    "none".to_owned()
                } else {
                    ladder.join(", ")
                }
            );
            Ok(())
        }
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
