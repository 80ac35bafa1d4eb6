//! Configuration: a TOML file plus `STAGESTREAM__SECTION__KEY` environment overrides,
//! validated as a whole into [`Settings`].
//!
//! Loading reports every problem it can find at once, each with its path: unknown keys
//! (typos, in the file or the environment), a type error, and every semantic problem the
//! model compiler finds. `main` turns a [`ConfigError`] into exit code 64 before doing
//! anything else.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::core::model::parse_span;
use crate::core::{EngineSettings, Model, ModelSpec, Problem};

/// Everything the engine and its shell need, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub model: Arc<Model>,
    pub engine: EngineSettings,
    pub output: OutputSettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSettings {
    /// The CloudEvents `source` attribute.
    pub source: String,
}

/// Why a configuration could not be used. Never retriable: fix the file or environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    #[error("invalid configuration {}:\n{}", path.display(), ProblemList(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct FileConfig {
    model: ModelSpec,
    #[serde(default)]
    time: TimeSection,
    #[serde(default)]
    output: OutputSection,
}

#[derive(Deserialize)]
struct TimeSection {
    #[serde(default = "default_allowed_lateness")]
    allowed_lateness: String,
    #[serde(default = "default_dedup_window")]
    dedup_window: String,
}

impl Default for TimeSection {
    fn default() -> Self {
        TimeSection {
            allowed_lateness: default_allowed_lateness(),
            dedup_window: default_dedup_window(),
        }
    }
}

fn default_allowed_lateness() -> String {
    "5m".into()
}

fn default_dedup_window() -> String {
    "24h".into()
}

#[derive(Deserialize)]
struct OutputSection {
    #[serde(default = "default_source")]
    source: String,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            source: default_source(),
        }
    }
}

fn default_source() -> String {
    "stagestream".into()
}

/// Loads `path` with overrides from the process environment.
///
/// # Errors
/// See [`load_with_env`].
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_env(path, None)
}

/// Loads `path` with overrides from `env` (variable name -> value), or from the process
/// environment when `env` is `None`. Only variables starting `STAGESTREAM__` are read;
/// `STAGESTREAM__TIME__ALLOWED_LATENESS=10m` sets `time.allowed_lateness`.
///
/// # Errors
/// [`ConfigError::Unreadable`] when the file is missing or not TOML;
/// [`ConfigError::Invalid`] listing every problem otherwise.
pub fn load_with_env(path: &Path, env: Option<HashMap<String, String>>) -> Result<Settings, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let source = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("STAGESTREAM")
                .prefix_separator("__")
                .separator("__")
                .source(env),
        )
        .build()
        .map_err(unreadable)?;
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    let parsed: Result<FileConfig, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        source,
        &mut |key: serde_ignored::Path<'_>| unknown.push(key.to_string()),
    ));
    problems.extend(unknown.into_iter().map(|key| Problem::new(key, "unknown key")));
    let settings = match parsed {
        Ok(file) => validate(file, &mut problems),
        Err(error) => {
            let path = error.path().to_string();
            problems.push(Problem::new(path, error.into_inner().to_string()));
            None
        }
    };
    match settings {
        Some(settings) if problems.is_empty() => Ok(settings),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }),
    }
}

fn validate(file: FileConfig, problems: &mut Vec<Problem>) -> Option<Settings> {
    let mut span = |path: &str, text: &str| match parse_span(text) {
        Ok(span) => Some(span),
        Err(message) => {
            problems.push(Problem::new(path, message));
            None
        }
    };
    let allowed_lateness = span("time.allowed_lateness", &file.time.allowed_lateness);
    let dedup_window = span("time.dedup_window", &file.time.dedup_window);
    if file.output.source.trim().is_empty() {
        problems.push(Problem::new("output.source", "must not be empty"));
    }
    let model = Model::compile(&file.model)
        .map_err(|found| problems.extend(found))
        .ok();
    Some(Settings {
        model: Arc::new(model?),
        engine: EngineSettings {
            allowed_lateness: allowed_lateness?,
            dedup_window: dedup_window?,
        },
        output: OutputSettings {
            source: file.output.source,
        },
    })
}
