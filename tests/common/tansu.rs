//! A real Kafka-protocol broker process for the end-to-end tests: tansu, installed by
//! `scripts/tansu.sh install` (which `.ci/run` calls), started on a free loopback port.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// The tansu binary: `$TANSU`, else the cache folder `scripts/tansu.sh` installs into.
/// `None` means the broker tests are skipped; under CI (`CI` set) that is a failure.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("TANSU").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("STAGESTREAM_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/stagestream")))?;
        Some(cache.join("tansu-0.6.0/bin/tansu"))
    })?;
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tansu not found at {}: run scripts/tansu.sh install",
        path.display()
    );
    eprintln!(
        "SKIPPED: tansu not installed at {} (scripts/tansu.sh install)",
        path.display()
    );
    None
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Tansu {
    binary: PathBuf,
    storage: String,
    workdir: PathBuf,
    port: u16,
    child: Option<Child>,
    pub bootstrap: String,
}

impl Tansu {
    /// Starts a broker with `storage` (`memory://tansu/` or `sqlite://FILE.db`, relative
    /// to `workdir`) and waits until it answers metadata requests.
    pub fn start(binary: PathBuf, storage: &str, workdir: &Path) -> Tansu {
        Tansu::start_on(free_port(), binary, storage, workdir)
    }

    /// [`Tansu::start`] on a given loopback port.
    pub fn start_on(port: u16, binary: PathBuf, storage: &str, workdir: &Path) -> Tansu {
        let mut broker = Tansu {
            binary,
            storage: storage.to_owned(),
            workdir: workdir.to_owned(),
            port,
            child: None,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.workdir.join("tansu.log"))
            .unwrap();
        let child = Command::new(&self.binary)
            .current_dir(&self.workdir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the broker answers a metadata request: never a fixed sleep.
    fn wait_ready(&self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "readiness-probe")
            .create()
            .unwrap();
        let started = Instant::now();
        while consumer.fetch_metadata(None, Duration::from_millis(500)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker with SIGKILL (no clean shutdown) and starts it again on the
    /// same port and storage.
    pub fn kill_and_restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = runtime
            .block_on(admin.create_topics(&new, &AdminOptions::new()))
            .expect("create topics");
        for result in results {
            result.expect("topic created");
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
