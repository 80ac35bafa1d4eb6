//! Which instance holds which input partition, for the lookup API's redirects.
//!
//! Every instance with `api.enabled` publishes the input partitions its owner holds
//! (assigned and restored: `Status::owned`) to a small compacted topic
//! (`api.members_topic`), keyed by its `http.advertised_url`, whenever they change and
//! every [`HEARTBEAT`]; on shutdown it publishes an empty claim. Each instance reads
//! every claim back from the start of that topic. A partition's holder is the instance
//! whose fresh claim names it (the newest claim wins while a handover overlaps); a
//! claim older than [`STALE`] (an instance that died) names nobody, and the lookup then
//! answers 503 until the new holder publishes. The consumer group's own membership
//! (DescribeGroups) would say the same without a topic, but not every Kafka-protocol
//! broker fills it in (tansu leaves member assignments empty), and it does not say
//! when a partition is restored.
//!
//! The same thread keeps the input topics' partition counts, for the partitioner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{DeliveryMode, Settings};
use crate::pipeline::{wall_clock, Control};

/// How often an instance republishes its claim, changed or not.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A claim not renewed for this long names nobody.
const STALE: Duration = Duration::from_secs(10);
/// How often the input topics' partition counts are refreshed.
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// The longest one pass of the thread waits for claims.
const POLL: Duration = Duration::from_millis(100);

/// One instance's claim, as published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Claim {
    url: String,
    /// `(topic, partition)` pairs.
    partitions: Vec<(String, i32)>,
    /// When it was published, in ms since the Unix epoch (the publisher's clock).
    at: i64,
}

/// What this instance knows of the others and of the input topics.
#[derive(Debug, Default)]
struct View {
    claims: HashMap<String, Claim>,
    partition_counts: HashMap<String, u32>,
}

/// The members directory: read by the HTTP handlers, kept by its own thread.
#[derive(Debug)]
pub struct Members {
    own_url: String,
    view: Mutex<View>,
}

impl Members {
    /// Starts the thread that publishes this instance's claim and reads everyone's,
    /// creating `api.members_topic` (compacted, one partition) if it does not exist.
    ///
    /// # Errors
    /// A Kafka client cannot be created, or the thread cannot start.
    pub fn start(
        settings: &Settings,
        control: Arc<Control>,
        producer: FutureProducer,
    ) -> Result<Arc<Self>, String> {
        let mut properties = settings.kafka.consumer_properties(DeliveryMode::AtLeastOnce);
        // Read with `assign`, never committed: the group is the service's own.
        properties.set("enable.auto.commit", "false");
        properties.set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = ClientConfig::from(&properties)
            .create()
            .map_err(|e| format!("cannot create the members reader: {e}"))?;
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::from(&settings.kafka.producer_properties(None))
                .create()
                .map_err(|e| format!("cannot create the admin client: {e}"))?;
        let members = Arc::new(Members {
            own_url: settings.http.advertised_url.clone(),
            view: Mutex::new(View::default()),
        });
        let keeper = Keeper {
            members: members.clone(),
            control,
            topic: settings.api.members_topic.clone(),
            inputs: settings.input.topics.clone(),
            consumer,
            admin,
            producer,
        };
        std::thread::Builder::new()
            .name("stagestream-members".into())
            .spawn(move || keeper.run())
            .map_err(|e| format!("cannot start the members thread: {e}"))?;
        Ok(members)
    }

    /// How many partitions `topic` has, once known.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.view.lock().ok()?.partition_counts.get(topic).copied()
    }

    /// The advertised URL of the other instance holding `topic`'s `partition`, if a
    /// fresh claim names one.
    pub fn holder(&self, topic: &str, partition: i32) -> Option<String> {
        let view = self.view.lock().ok()?;
        let now = wall_clock().as_millis();
        view.claims
            .values()
            .filter(|claim| claim.url != self.own_url && now - claim.at < STALE.as_millis() as i64)
            .filter(|claim| {
                claim
                    .partitions
                    .iter()
                    .any(|(t, p)| t == topic && *p == partition)
            })
            .max_by_key(|claim| claim.at)
            .map(|claim| claim.url.clone())
    }
}

/// The thread's state.
struct Keeper {
    members: Arc<Members>,
    control: Arc<Control>,
    topic: String,
    inputs: Vec<String>,
    consumer: BaseConsumer,
    admin: AdminClient<DefaultClientContext>,
    producer: FutureProducer,
}

impl Keeper {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                return warn!(%error, "the members thread cannot start its runtime; lookups are not redirected")
            }
        };
        runtime.block_on(self.ensure_topic());
        let mut reading = false;
        let mut published: Option<(Vec<(String, i32)>, Instant)> = None;
        let mut metadata_at: Option<Instant> = None;
        while !self.control.stopping() {
            // Until the members topic is read, every pass looks for it again.
            if !reading || metadata_at.is_none_or(|at| at.elapsed() >= METADATA_EVERY) {
                reading = self.refresh_metadata(reading);
                metadata_at = Some(Instant::now());
            }
            let owned = self
                .control
                .status
                .owned
                .lock()
                .map(|o| o.clone())
                .unwrap_or_default();
            let due = published
                .as_ref()
                .is_none_or(|(last, at)| *last != owned || at.elapsed() >= HEARTBEAT);
            if due {
                runtime.block_on(self.publish(&owned));
                published = Some((owned, Instant::now()));
            }
            self.read_claims(reading);
        }
        runtime.block_on(self.publish(&[]));
    }

    /// Creates the members topic unless it exists (an error other than "exists" is
    /// logged: redirects then wait for someone to create it).
    async fn ensure_topic(&self) {
        let topic =
            NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match self.admin.create_topics([&topic], &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(topic) => info!(topic, "created the members topic"),
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => warn!(topic, %code, "cannot create the members topic"),
                    }
                }
            }
            Err(error) => warn!(%error, topic = %self.topic, "cannot create the members topic"),
        }
    }

    /// Refreshes the input topics' partition counts and, the first time the members
    /// topic is seen, starts reading all of it. Returns whether it is being read.
    fn refresh_metadata(&self, reading: bool) -> bool {
        // One topic at a time: a cluster may hold thousands.
        let counts = |name: &str| {
            let metadata = self
                .consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()?;
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())?;
            Some(topic.partitions().len() as u32).filter(|&n| n > 0)
        };
        if let Ok(mut view) = self.members.view.lock() {
            for input in &self.inputs {
                if let Some(count) = counts(input) {
                    view.partition_counts.insert(input.clone(), count);
                }
            }
        }
        if reading {
            return true;
        }
        let Some(partitions) = counts(&self.topic) else {
            return false;
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions as i32 {
            let _ = assignment.add_partition_offset(&self.topic, partition, Offset::Beginning);
        }
        self.consumer.assign(&assignment).is_ok()
    }

    async fn publish(&self, owned: &[(String, i32)]) {
        let claim = Claim {
            url: self.members.own_url.clone(),
            partitions: owned.to_vec(),
            at: wall_clock().as_millis(),
        };
        let payload = serde_json::to_vec(&claim).expect("plain data serialises");
        let record = FutureRecord::to(&self.topic).key(&claim.url).payload(&payload);
        if let Err((error, _)) = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            warn!(%error, topic = %self.topic, "cannot publish this instance's partitions");
        }
    }

    /// Takes in the claims published since the last call, for up to [`POLL`].
    fn read_claims(&self, reading: bool) {
        if !reading {
            return std::thread::sleep(POLL);
        }
        let started = Instant::now();
        while let Some(message) = self.consumer.poll(POLL.saturating_sub(started.elapsed())) {
            let Ok(message) = message else { continue };
            let Some(claim) = message
                .payload()
                .and_then(|p| serde_json::from_slice::<Claim>(p).ok())
            else {
                continue;
            };
            if let Ok(mut view) = self.members.view.lock() {
                let newer = view
                    .claims
                    .get(&claim.url)
                    .is_none_or(|known| known.at <= claim.at);
                if newer {
                    view.claims.insert(claim.url.clone(), claim);
                }
            }
            if started.elapsed() >= POLL {
                break;
            }
        }
    }
}
