//! Telemetry: the metrics ([`metrics`]) and their fixed label values ([`labels`]), and
//! log setup ([`init_logs`]).
//!
//! Telemetry is called by the shell and never calls it: the owner (`crate::pipeline`)
//! counts into [`Metrics`], `crate::http` renders them. Logs are `tracing` events: one
//! structured line per notable event, JSON by default for `run` (stdout, for a log
//! collector), human-readable on stderr for the commands whose stdout carries data.

pub mod labels;
pub mod metrics;

use std::io;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

pub use metrics::Metrics;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
    /// Human-readable lines.
    Human,
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. `RUST_LOG` filters (`info`, `stagestream=debug,rdkafka=warn`
/// ...); without it, `default` applies.
pub fn init_logs(format: LogFormat, target: LogTarget, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (format, target) {
        (LogFormat::Json, LogTarget::Stdout) => builder
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .with_writer(io::stdout)
            .init(),
        (LogFormat::Json, LogTarget::Stderr) => builder.json().with_writer(io::stderr).init(),
        (LogFormat::Human, LogTarget::Stdout) => builder.with_writer(io::stdout).with_ansi(false).init(),
        (LogFormat::Human, LogTarget::Stderr) => builder.with_writer(io::stderr).init(),
    }
}
