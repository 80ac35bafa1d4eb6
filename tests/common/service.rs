//! Running `stagestream run` (the real binary) in tests: its configuration, start,
//! SIGTERM, and waiting for conditions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use stagestream::config::{self, Settings};

/// The five-stage preset plus a `[kafka]` section for `bootstrap` and consumer group
/// `group` with the `consumer` properties added (`fetch.wait.max.ms` is 5 unless they
/// set it), then `extra` TOML, written to `dir/<name>.toml`.
pub fn write_config(
    dir: &Path,
    name: &str,
    bootstrap: &str,
    group: &str,
    consumer: &[(&str, &str)],
    extra: &str,
) -> (PathBuf, Settings) {
    let preset = std::fs::read_to_string(super::repo("config/presets/five-stage.toml")).unwrap();
    let fetch_wait = if consumer.iter().any(|(k, _)| *k == "fetch.wait.max.ms") {
        ""
    } else {
        "\"fetch.wait.max.ms\" = \"5\""
    };
    let consumer: String = consumer
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    let text = format!(
        r#"{preset}
[kafka]
brokers = "{bootstrap}"
group_id = "{group}"

[input]
topics = ["events"]

[output]
topic = "journey-stages"

[dlq]
topic = "dead-letters"

[kafka.consumer]
{fetch_wait}
{consumer}
[shutdown]
grace_period = "10s"
{extra}
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let settings = config::load(&path).unwrap();
    (path, settings)
}

/// Starts the service, its log (JSON lines on stdout, the exit message on stderr)
/// appended to `log`, its HTTP endpoint on a port of the system's choosing.
pub fn start_service(config: &Path, log: &Path) -> Child {
    start_service_on(config, log, "127.0.0.1:0")
}

/// [`start_service`] with the HTTP endpoint on `http_bind`.
pub fn start_service_on(config: &Path, log: &Path, http_bind: &str) -> Child {
    start_service_with(config, log, http_bind, "info")
}

/// [`start_service`] with the HTTP endpoint on `http_bind` and `RUST_LOG=rust_log`.
pub fn start_service_with(config: &Path, log: &Path, http_bind: &str, rust_log: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    super::stagestream()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", rust_log)
        .env("STAGESTREAM__HTTP__BIND", http_bind)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("stagestream starts")
}

/// SIGTERM, then the exit status within the grace period.
pub fn terminate(mut service: Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = service.try_wait().unwrap() {
            return status;
        }
        // The configured 10 s grace period plus the 10 s the binary allows for leaving.
        if started.elapsed() > Duration::from_secs(25) {
            let _ = service.kill();
            panic!("no exit within 25 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
