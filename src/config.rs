//! Configuration: a TOML file plus `STAGESTREAM__SECTION__KEY` environment overrides,
//! validated as a whole into [`Settings`].
//!
//! Loading reports every problem it can find at once, each with its path: unknown keys
//! (typos, in the file or the environment), a type error, and every semantic problem the
//! model compiler finds. `main` turns a [`ConfigError`] into exit code 64 before doing
//! anything else.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::core::model::parse_span;
use crate::core::{EngineSettings, Model, ModelSpec, Problem, Span};
use crate::kafka::{check_topic, KafkaSection, KafkaSettings, OutputMode};
use crate::partitioner::Partitioner;

/// Everything the engine and its shell need, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub model: Arc<Model>,
    pub engine: EngineSettings,
    pub input: InputSettings,
    pub output: OutputSettings,
    pub dlq: DlqSettings,
    pub live: LiveSettings,
    pub kafka: KafkaSettings,
    /// Where and how often partition state is saved; `None` keeps it in memory only.
    pub snapshot: Option<SnapshotSettings>,
    pub delivery: DeliverySettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    /// A second model classifying the same events beside this one; `None` without
    /// `[shadow]`.
    pub shadow: Option<ShadowSettings>,
}

/// The `[shadow]` section: a second model run beside the live one by `stagestream
/// run`, its outputs sent only to its own topic (docs/operations.md, "Shadow runs").
#[derive(Clone, Debug)]
pub struct ShadowSettings {
    /// `shadow.config`: the configuration file whose `[model]`, `[time]` and `[state]`
    /// the shadow runs (every other section of it is ignored).
    pub config: PathBuf,
    /// `shadow.topic`: where the shadow's outputs go.
    pub topic: String,
    pub model: Arc<Model>,
    pub engine: EngineSettings,
}

/// The `[http]` section: the metrics, health and lookup endpoint of `stagestream run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where `/metrics`, `/livez`, `/readyz` and the customer routes are served.
    pub bind: SocketAddr,
    /// `/readyz` fails while any assigned partition lags by more messages than this.
    pub ready_max_lag: u64,
    /// The base URL other instances redirect lookups of this instance's customers to.
    /// Defaults to `http://<hostname>:<bind port>`.
    pub advertised_url: String,
}

/// The `[api]` section: the customer routes (`/customers/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiSettings {
    /// Whether `GET` and `DELETE /customers/{id}` are served.
    pub enabled: bool,
    /// The bearer token the customer routes require; `DELETE` is refused without one.
    pub token: Option<Secret>,
    /// The compacted topic where instances publish the partitions they hold
    /// (`crate::members`). Defaults to `<kafka.group_id>-members`.
    pub members_topic: String,
}

/// A value never written to logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The `[snapshot]` section, once `snapshot.dir` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub dir: PathBuf,
    /// A partition whose state changed is saved at most this often.
    pub interval: Span,
    /// Snapshots kept per partition.
    pub keep: usize,
}

/// The `[delivery]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    pub mode: DeliveryMode,
    /// The producer's `transactional.id` in exactly-once mode; one per instance, stable
    /// across its restarts. Defaults to `<group.id>-<hostname>`.
    pub transactional_id: Option<String>,
}

/// What a crash may do to the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Outputs since the last snapshot may be emitted again, with identical ids.
    AtLeastOnce,
    /// Outputs and input offsets are committed in one Kafka transaction.
    ExactlyOnce,
}

/// How the live service (`stagestream run`) maps the wall clock and record metadata
/// onto event time, and how long it may take to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSettings {
    /// An event stamped further than this ahead of the wall clock is invalid.
    pub max_future_skew: Span,
    /// Use the Kafka record timestamp when the payload has no `timestamp`.
    pub use_record_timestamp: bool,
    /// The wall clock fires inactivity this far behind real time, so an event still in
    /// flight to the broker when its customer's deadline passes is applied first.
    pub firing_delay: Span,
    /// After SIGTERM/SIGINT: time to deliver what is in flight and commit.
    pub shutdown_grace: Span,
}

/// The `[input]` section: what the service consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSettings {
    /// `input.topics`, keyed by customer id.
    pub topics: Vec<String>,
    /// The partitioner the input's producers key records with.
    pub partitioner: Partitioner,
}

/// The `[output]` section: where and how CloudEvents are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSettings {
    /// `output.topic`.
    pub topic: String,
    /// `output.mode`: binary or structured CloudEvents.
    pub mode: OutputMode,
    /// The CloudEvents `source` attribute.
    pub source: String,
}

/// The `[dlq]` section: where invalid, late and far-future messages go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DlqSettings {
    /// `dlq.topic`; without it such messages are logged and skipped.
    pub topic: Option<String>,
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
    input: InputSection,
    #[serde(default)]
    output: OutputSection,
    #[serde(default)]
    dlq: DlqSection,
    #[serde(default)]
    kafka: KafkaSection,
    #[serde(default)]
    shutdown: ShutdownSection,
    #[serde(default)]
    snapshot: SnapshotSection,
    #[serde(default)]
    delivery: DeliverySection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    state: StateSection,
    #[serde(default)]
    shadow: ShadowSection,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ShadowSection {
    config: Option<PathBuf>,
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(default)]
struct HttpSection {
    bind: String,
    ready_max_lag: u64,
    advertised_url: Option<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            bind: "0.0.0.0:9464".into(),
            ready_max_lag: 10_000,
            advertised_url: None,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ApiSection {
    enabled: bool,
    token: Option<String>,
    members_topic: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct StateSection {
    expire_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(default)]
struct SnapshotSection {
    dir: Option<PathBuf>,
    interval: String,
    keep: usize,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection {
            dir: None,
            interval: "30s".into(),
            keep: 3,
        }
    }
}

#[derive(Deserialize)]
struct DeliverySection {
    #[serde(default = "default_delivery_mode")]
    mode: DeliveryMode,
    #[serde(default)]
    transactional_id: Option<String>,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            mode: default_delivery_mode(),
            transactional_id: None,
        }
    }
}

fn default_delivery_mode() -> DeliveryMode {
    DeliveryMode::AtLeastOnce
}

#[derive(Deserialize)]
#[serde(default)]
struct TimeSection {
    allowed_lateness: String,
    dedup_window: String,
    max_future_skew: String,
    use_record_timestamp: bool,
    firing_delay: String,
}

impl Default for TimeSection {
    fn default() -> Self {
        TimeSection {
            allowed_lateness: "5m".into(),
            dedup_window: "24h".into(),
            max_future_skew: "1h".into(),
            use_record_timestamp: false,
            firing_delay: "250ms".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct ShutdownSection {
    grace_period: String,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            grace_period: "30s".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct InputSection {
    topics: Vec<String>,
    partitioner: Partitioner,
}

impl Default for InputSection {
    fn default() -> Self {
        InputSection {
            topics: vec!["events".into()],
            partitioner: Partitioner::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct OutputSection {
    topic: String,
    mode: OutputMode,
    source: String,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            topic: "journey-stages".into(),
            mode: OutputMode::Binary,
            source: "stagestream".into(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct DlqSection {
    topic: Option<String>,
}

/// Keys of earlier releases, removed, and the key that replaced each: loading one is
/// a problem that names its replacement (docs/operations.md, "Configuration").
const RENAMED: [(&str, &str); 4] = [
    ("kafka.input_topics", "input.topics"),
    ("kafka.output_topic", "output.topic"),
    ("kafka.dead_letter_topic", "dlq.topic"),
    ("kafka.content_mode", "output.mode"),
];

/// The environment variable prefix; `STAGESTREAM__SECTION__KEY` sets `section.key`.
const ENV_PREFIX: &str = "STAGESTREAM__";

/// The key an environment variable sets, as the `config` crate reads it.
fn env_key(variable: &str) -> Option<String> {
    let rest = variable.strip_prefix(ENV_PREFIX)?;
    Some(rest.to_lowercase().replace("__", "."))
}

/// Why a key nothing reads is a problem: a removed key names its replacement, and a
/// key set through the environment names its variable.
fn unknown_key(path: String, env: &HashMap<String, String>) -> Problem {
    let renamed = RENAMED.iter().find(|(old, _)| *old == path);
    let variable = env
        .keys()
        .find(|name| env_key(name).as_deref() == Some(path.as_str()));
    let mut message = match renamed {
        Some((_, new)) => format!("unknown key (removed: use {new})"),
        None => "unknown key".to_owned(),
    };
    if let Some(variable) = variable {
        message.push_str(&format!(", set by the environment variable {variable}"));
    }
    Problem::new(path, message)
}

/// This machine's host name (`HOSTNAME`, else the kernel's), for defaults that must
/// differ between instances and stay the same across one instance's restarts.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
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
    let file = config::File::from(path).format(config::FileFormat::Toml);
    load_source(file, path, env, Role::Live)
}

/// Loads configuration text built into the binary (the demo's default), with
/// overrides from the process environment; `name` stands for the path in messages.
///
/// # Errors
/// As [`load_with_env`].
pub fn load_embedded(name: &str, text: &str) -> Result<Settings, ConfigError> {
    let file = config::File::from_str(text, config::FileFormat::Toml);
    load_source(file, Path::new(name), None, Role::Live)
}

/// Whether a configuration is the service's own or a shadow's (`shadow.config`),
/// which may not name a shadow of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Live,
    Shadow,
}

fn load_source(
    file: impl config::Source + Send + Sync + 'static,
    path: &Path,
    env: Option<HashMap<String, String>>,
    role: Role,
) -> Result<Settings, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let env: HashMap<String, String> = env
        .unwrap_or_else(|| {
            std::env::vars_os()
                .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
                .collect()
        })
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    let source = config::Config::builder()
        .add_source(file)
        .add_source(
            config::Environment::with_prefix("STAGESTREAM")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("input.topics")
                .source(Some(env.clone())),
        )
        .build()
        .map_err(unreadable)?;
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    let parsed: Result<FileConfig, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        source,
        &mut |key: serde_ignored::Path<'_>| unknown.push(key.to_string()),
    ));
    problems.extend(unknown.into_iter().map(|key| unknown_key(key, &env)));
    let settings = match parsed {
        Ok(file) => validate(file, role, path.parent().unwrap_or(Path::new("")), &mut problems),
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

/// `file` as settings; `dir` is the configuration file's directory (a relative
/// `shadow.config` not found from the working directory is looked for there).
fn validate(file: FileConfig, role: Role, dir: &Path, problems: &mut Vec<Problem>) -> Option<Settings> {
    let allowed_lateness = span("time.allowed_lateness", &file.time.allowed_lateness, problems);
    let dedup_window = span("time.dedup_window", &file.time.dedup_window, problems);
    let max_future_skew = span("time.max_future_skew", &file.time.max_future_skew, problems);
    let firing_delay = span("time.firing_delay", &file.time.firing_delay, problems);
    let shutdown_grace = span("shutdown.grace_period", &file.shutdown.grace_period, problems);
    let snapshot = file.snapshot.validate(problems);
    let delivery = file.delivery.validate(problems);
    let http = file.http.validate(problems);
    if file.output.source.trim().is_empty() {
        problems.push(Problem::new("output.source", "must not be empty"));
    }
    validate_topics(&file.input, &file.output, &file.dlq, problems);
    let kafka = file.kafka.validate(problems);
    let group = kafka
        .as_ref()
        .and_then(|k| k.group_id.clone())
        .unwrap_or_else(|| "stagestream".into());
    let api = file.api.validate(&group, &file.input.topics, problems);
    let model = Model::compile(&file.model)
        .map_err(|found| problems.extend(found))
        .ok();
    let expire_after = file.state.validate(model.as_ref(), problems);
    let shadow = match role {
        Role::Live => file
            .shadow
            .validate(&file.input, &file.output, &file.dlq, dir, problems),
        Role::Shadow if file.shadow.config.is_some() || file.shadow.topic.is_some() => {
            problems.push(Problem::new(
                "shadow",
                "a shadow's configuration cannot name a shadow of its own",
            ));
            None
        }
        Role::Shadow => Some(None),
    };
    Some(Settings {
        model: Arc::new(model?),
        engine: EngineSettings {
            allowed_lateness: allowed_lateness?,
            dedup_window: dedup_window?,
            expire_after: expire_after?,
        },
        input: InputSettings {
            topics: file.input.topics,
            partitioner: file.input.partitioner,
        },
        output: OutputSettings {
            topic: file.output.topic,
            mode: file.output.mode,
            source: file.output.source,
        },
        dlq: DlqSettings {
            topic: file.dlq.topic,
        },
        live: LiveSettings {
            max_future_skew: max_future_skew?,
            use_record_timestamp: file.time.use_record_timestamp,
            firing_delay: firing_delay?,
            shutdown_grace: shutdown_grace?,
        },
        kafka: kafka?,
        snapshot: snapshot?,
        delivery,
        http: http?,
        api,
        shadow: shadow?,
    })
}

/// `text` as a duration, or a problem at `path`.
fn span(path: &str, text: &str, problems: &mut Vec<Problem>) -> Option<Span> {
    parse_span(text)
        .map_err(|message| problems.push(Problem::new(path, message)))
        .ok()
}

impl SnapshotSection {
    /// `Some(None)`: no `snapshot.dir`, state in memory only; `None`: a problem.
    fn validate(self, problems: &mut Vec<Problem>) -> Option<Option<SnapshotSettings>> {
        let interval = span("snapshot.interval", &self.interval, problems);
        if interval.is_some_and(|interval| interval.as_millis() == 0) {
            problems.push(Problem::new("snapshot.interval", "must be longer than 0s"));
        }
        if self.keep == 0 {
            problems.push(Problem::new("snapshot.keep", "must keep at least one snapshot"));
        }
        if self.dir.as_ref().is_some_and(|dir| dir.as_os_str().is_empty()) {
            problems.push(Problem::new(
                "snapshot.dir",
                "must not be empty (leave it out to keep state in memory only)",
            ));
        }
        match self.dir {
            Some(dir) => Some(Some(SnapshotSettings {
                dir,
                interval: interval?,
                keep: self.keep,
            })),
            None => Some(None),
        }
    }
}

impl DeliverySection {
    fn validate(self, problems: &mut Vec<Problem>) -> DeliverySettings {
        if self
            .transactional_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            problems.push(Problem::new("delivery.transactional_id", "must not be empty"));
        }
        DeliverySettings {
            mode: self.mode,
            transactional_id: self.transactional_id,
        }
    }
}

impl HttpSection {
    fn validate(self, problems: &mut Vec<Problem>) -> Option<HttpSettings> {
        let advertised_url = self
            .advertised_url
            .map(|url| url.trim_end_matches('/').to_owned());
        if let Some(url) = &advertised_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                let message =
                    format!("{url:?} is not a base URL such as http://stagestream-0.stagestream:9464");
                problems.push(Problem::new("http.advertised_url", message));
            }
        }
        let Ok(bind) = self.bind.parse::<SocketAddr>() else {
            let message = format!("{:?} is not an address and port such as 0.0.0.0:9464", self.bind);
            problems.push(Problem::new("http.bind", message));
            return None;
        };
        Some(HttpSettings {
            bind,
            ready_max_lag: self.ready_max_lag,
            advertised_url: advertised_url.unwrap_or_else(|| default_advertised_url(bind)),
        })
    }
}

/// `http://<host>:<port>` for an endpoint bound to `bind`: its address when it is a
/// specific one, the host name when it listens on every interface.
fn default_advertised_url(bind: SocketAddr) -> String {
    let host = match bind.ip() {
        ip if ip.is_unspecified() => hostname(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("http://{host}:{}", bind.port())
}

impl ApiSection {
    fn validate(self, group: &str, inputs: &[String], problems: &mut Vec<Problem>) -> ApiSettings {
        if self.token.as_ref().is_some_and(|token| token.trim().is_empty()) {
            problems.push(Problem::new(
                "api.token",
                "must not be empty (leave it out for no token)",
            ));
        }
        let members_topic = self.members_topic.unwrap_or_else(|| format!("{group}-members"));
        check_topic("api.members_topic", &members_topic, problems);
        if inputs.contains(&members_topic) {
            problems.push(Problem::new("api.members_topic", "must not be an input topic"));
        }
        ApiSettings {
            enabled: self.enabled,
            token: self.token.map(Secret),
            members_topic,
        }
    }
}

impl ShadowSection {
    /// Both keys or neither; the shadow's file is loaded without environment overrides
    /// (they are meant for the live configuration), its problems reported under
    /// `shadow.config`. `Some(None)`: no shadow.
    fn validate(
        self,
        input: &InputSection,
        output: &OutputSection,
        dlq: &DlqSection,
        dir: &Path,
        problems: &mut Vec<Problem>,
    ) -> Option<Option<ShadowSettings>> {
        let (path, topic) = match (self.config, self.topic) {
            (None, None) => return Some(None),
            (Some(path), Some(topic)) => (path, topic),
            (config, _) => {
                let (missing, present) = match config {
                    Some(_) => ("shadow.topic", "shadow.config"),
                    None => ("shadow.config", "shadow.topic"),
                };
                problems.push(Problem::new(missing, format!("required when {present} is set")));
                return None;
            }
        };
        let path = match path.is_relative() && !path.exists() {
            true => dir.join(path),
            false => path,
        };
        check_topic("shadow.topic", &topic, problems);
        let taken = [Some(&output.topic), dlq.topic.as_ref()]
            .into_iter()
            .flatten()
            .chain(&input.topics)
            .any(|t| *t == topic);
        if taken {
            problems.push(Problem::new(
                "shadow.topic",
                "must differ from the input, output and dead-letter topics",
            ));
        }
        let file = config::File::from(path.as_path()).format(config::FileFormat::Toml);
        let settings = match load_source(file, &path, Some(HashMap::new()), Role::Shadow) {
            Ok(settings) => settings,
            Err(error) => {
                let message = error.to_string().replace('\n', "\n  ");
                problems.push(Problem::new("shadow.config", message));
                return None;
            }
        };
        Some(Some(ShadowSettings {
            config: path,
            topic,
            model: settings.model,
            engine: settings.engine,
        }))
    }
}

impl StateSection {
    /// `state.expire_after`, which must outlast every inactivity threshold: expiry is the
    /// last deadline of a gap. `Some(None)`: state never expires.
    fn validate(self, model: Option<&Model>, problems: &mut Vec<Problem>) -> Option<Option<Span>> {
        let Some(text) = self.expire_after else {
            return Some(None);
        };
        let expire_after = span("state.expire_after", &text, problems)?;
        let longest = model.and_then(|model| model.thresholds().iter().max_by_key(|t| t.after));
        if let Some(longest) = longest.filter(|longest| expire_after <= longest.after) {
            problems.push(Problem::new(
                "state.expire_after",
                format!(
                    "{text} must be longer than the longest inactivity threshold ({} after {})",
                    longest.name,
                    humantime::format_duration(std::time::Duration::from_millis(
                        longest.after.as_millis() as u64
                    ))
                ),
            ));
            return None;
        }
        if expire_after.as_millis() <= 0 {
            problems.push(Problem::new("state.expire_after", "must be longer than 0s"));
            return None;
        }
        Some(Some(expire_after))
    }
}

/// The topics of `input`, `output` and `dlq`: legal names, at least one input, and no
/// output read back as input.
fn validate_topics(
    input: &InputSection,
    output: &OutputSection,
    dlq: &DlqSection,
    problems: &mut Vec<Problem>,
) {
    if input.topics.is_empty() {
        problems.push(Problem::new("input.topics", "must name at least one topic"));
    }
    for (i, topic) in input.topics.iter().enumerate() {
        check_topic(&format!("input.topics[{i}]"), topic, problems);
    }
    check_topic("output.topic", &output.topic, problems);
    if let Some(topic) = &dlq.topic {
        check_topic("dlq.topic", topic, problems);
    }
    for (path, topic) in [
        ("output.topic", Some(&output.topic)),
        ("dlq.topic", dlq.topic.as_ref()),
    ] {
        if topic.is_some_and(|topic| input.topics.contains(topic)) {
            problems.push(Problem::new(
                path,
                "must not also be an input topic (it would be read back as events)",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
[model]
name = "m"
stages = ["a", "b"]
[[model.rules]]
name = "to_b"
to = "b"
events = ["Go"]
"#;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_with_env(&path, Some(env))
    }

    #[test]
    fn kafka_properties_keep_their_dots_and_the_environment_overrides_them() {
        let text = format!(
            "{MODEL}\n[input]\ntopics = [\"a\"]\n[kafka.common]\n\"bootstrap.servers\" = \"file:9092\"\n\
             [kafka.consumer]\n\"fetch.wait.max.ms\" = \"7\"\n"
        );
        let settings = load_text(
            &text,
            &[
                ("STAGESTREAM__KAFKA__COMMON__BOOTSTRAP_SERVERS", "env:9092"),
                ("STAGESTREAM__INPUT__TOPICS", "clicks,orders"),
                ("STAGESTREAM__DLQ__TOPIC", "dead"),
                ("STAGESTREAM__TIME__MAX_FUTURE_SKEW", "2h"),
            ],
        )
        .unwrap();
        let consumer = settings.kafka.consumer_properties(DeliveryMode::AtLeastOnce);
        assert_eq!(consumer.get("bootstrap.servers"), Some("env:9092"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(settings.input.topics, ["clicks", "orders"]);
        assert_eq!(settings.dlq.topic.as_deref(), Some("dead"));
        assert_eq!(settings.live.max_future_skew, Span::from_millis(2 * 3_600_000));
    }

    #[test]
    fn the_deployment_keys_come_from_the_file_or_the_environment() {
        let text = format!(
            "{MODEL}\n[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"file-group\"\n[input]\ntopics = [\"in\"]\n\
             [output]\ntopic = \"out\"\nmode = \"structured\"\n[dlq]\ntopic = \"dead\"\n"
        );
        let settings = load_text(&text, &[]).unwrap();
        let (consumer, producer) = settings.kafka.service_properties(&settings.delivery);
        assert_eq!(consumer.get("bootstrap.servers"), Some("file:9092"));
        assert_eq!(producer.get("bootstrap.servers"), Some("file:9092"));
        assert_eq!(consumer.get("group.id"), Some("file-group"));
        assert_eq!(settings.input.topics, ["in"]);
        assert_eq!(settings.output.topic, "out");
        assert_eq!(settings.output.mode, OutputMode::Structured);
        assert_eq!(settings.dlq.topic.as_deref(), Some("dead"));
        let settings = load_text(
            MODEL,
            &[
                ("STAGESTREAM__KAFKA__BROKERS", "a:9092,b:9092"),
                ("STAGESTREAM__KAFKA__GROUP_ID", "env-group"),
                ("STAGESTREAM__INPUT__TOPICS", "a,b"),
                ("STAGESTREAM__OUTPUT__TOPIC", "out"),
                ("STAGESTREAM__OUTPUT__MODE", "structured"),
                ("STAGESTREAM__DLQ__TOPIC", "dead"),
                ("STAGESTREAM__HTTP__BIND", "127.0.0.1:9000"),
                ("STAGESTREAM__SNAPSHOT__DIR", "/data"),
                ("STAGESTREAM__SNAPSHOT__INTERVAL", "5s"),
            ],
        )
        .unwrap();
        let (consumer, _) = settings.kafka.service_properties(&settings.delivery);
        assert_eq!(consumer.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(consumer.get("group.id"), Some("env-group"));
        assert_eq!(settings.input.topics, ["a", "b"]);
        assert_eq!(settings.output.topic, "out");
        assert_eq!(settings.output.mode, OutputMode::Structured);
        assert_eq!(settings.dlq.topic.as_deref(), Some("dead"));
        assert_eq!(settings.http.bind, "127.0.0.1:9000".parse().unwrap());
        let snapshot = settings.snapshot.unwrap();
        assert_eq!(snapshot.dir, PathBuf::from("/data"));
        assert_eq!(snapshot.interval, Span::from_millis(5_000));
    }

    fn problems_of(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        match load_text(text, env) {
            Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn removed_keys_name_their_replacement() {
        let found = problems_of(
            &format!(
                "{MODEL}\n[kafka]\ninput_topics = [\"a\"]\noutput_topic = \"o\"\ndead_letter_topic = \"d\"\n\
                 content_mode = \"binary\"\n"
            ),
            &[],
        );
        assert_eq!(found.len(), 4, "{found:?}");
        for (old, new) in RENAMED {
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with(old) && p.contains(&format!("use {new}"))),
                "{old}: {found:?}"
            );
        }
    }

    #[test]
    fn an_unknown_key_from_the_environment_names_its_variable() {
        let found = problems_of(
            MODEL,
            &[
                ("STAGESTREAM__KAFKA__BROKER", "a:9092"),
                ("STAGESTREAM__OUTPUT__TOPICS", "o"),
            ],
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("kafka.broker:") && p.contains("STAGESTREAM__KAFKA__BROKER")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("output.topics:") && p.contains("STAGESTREAM__OUTPUT__TOPICS")),
            "{found:?}"
        );
        let from_file = problems_of(&format!("{MODEL}\n[kafka]\nbroker = \"a\"\n"), &[]);
        assert_eq!(from_file, ["kafka.broker: unknown key"]);
    }

    #[test]
    fn topics_are_checked_and_never_read_back() {
        let found = problems_of(
            &format!(
                "{MODEL}\n[input]\ntopics = [\"events\", \"bad topic\"]\n[output]\ntopic = \"events\"\n"
            ),
            &[("STAGESTREAM__DLQ__TOPIC", "events")],
        );
        assert!(
            found.iter().any(|p| p.starts_with("input.topics[1]")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("output.topic") && p.contains("input topic")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("dlq.topic") && p.contains("input topic")),
            "{found:?}"
        );
        let found = problems_of(&format!("{MODEL}\n[input]\ntopics = []\n"), &[]);
        assert_eq!(found, ["input.topics: must name at least one topic"]);
    }

    #[test]
    fn live_defaults_are_documented_values() {
        let settings = load_text(MODEL, &[]).unwrap();
        assert_eq!(settings.live.max_future_skew, Span::from_millis(3_600_000));
        assert!(!settings.live.use_record_timestamp);
        assert_eq!(settings.live.shutdown_grace, Span::from_millis(30_000));
        assert_eq!(settings.input.topics, ["events"]);
        assert_eq!(settings.output.topic, "journey-stages");
        assert_eq!(settings.output.mode, OutputMode::Binary);
        assert_eq!(settings.dlq.topic, None);
        assert_eq!(settings.snapshot, None);
        assert_eq!(settings.delivery.mode, DeliveryMode::AtLeastOnce);
    }

    #[test]
    fn snapshot_and_delivery_keys_come_from_the_file_or_the_environment() {
        let text = format!("{MODEL}\n[snapshot]\ndir = \"/var/lib/s\"\ninterval = \"5s\"\n");
        let settings = load_text(
            &text,
            &[
                ("STAGESTREAM__SNAPSHOT__KEEP", "5"),
                ("STAGESTREAM__DELIVERY__MODE", "exactly-once"),
            ],
        )
        .unwrap();
        let snapshot = settings.snapshot.unwrap();
        assert_eq!(snapshot.dir, PathBuf::from("/var/lib/s"));
        assert_eq!(snapshot.interval, Span::from_millis(5_000));
        assert_eq!(snapshot.keep, 5);
        assert_eq!(settings.delivery.mode, DeliveryMode::ExactlyOnce);
        let from_env = load_text(MODEL, &[("STAGESTREAM__SNAPSHOT__DIR", "/data")]).unwrap();
        assert_eq!(from_env.snapshot.unwrap().interval, Span::from_millis(30_000));
        let Err(ConfigError::Invalid { problems, .. }) = load_text(
            &format!("{MODEL}\n[snapshot]\ninterval = \"0s\"\nkeep = 0\n[delivery]\nmode = \"twice\"\n"),
            &[],
        ) else {
            panic!("expected problems");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"delivery.mode"), "{problems:?}");
    }

    #[test]
    fn http_keys_have_defaults_and_a_bad_bind_address_is_a_problem() {
        let settings = load_text(MODEL, &[]).unwrap();
        assert_eq!(settings.http.bind, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(settings.http.ready_max_lag, 10_000);
        let settings = load_text(
            MODEL,
            &[
                ("STAGESTREAM__HTTP__BIND", "127.0.0.1:0"),
                ("STAGESTREAM__HTTP__READY_MAX_LAG", "50"),
            ],
        )
        .unwrap();
        assert_eq!(settings.http.bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(settings.http.ready_max_lag, 50);
        let Err(ConfigError::Invalid { problems, .. }) =
            load_text(&format!("{MODEL}\n[http]\nbind = \"localhost\"\n"), &[])
        else {
            panic!("expected problems");
        };
        assert_eq!(problems[0].path, "http.bind", "{problems:?}");
    }
}
