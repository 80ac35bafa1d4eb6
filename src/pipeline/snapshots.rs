//! When the owner loop takes snapshots, and when one counts as durable.
//!
//! ```text
//! tick: partition changed and `snapshot.interval` passed
//!     -> Engine::begin_image (the previous image's buffers) -> Capturing
//! service: Engine::continue_image for at most CAPTURE_STEP (the only pauses)
//!     -> complete -> [snapshot thread] encode into a temporary file -> Encoded
//! service: Encoded and every output before its offset delivered -> [snapshot thread]
//!     publish (fsync, rename) -> Written -> the offset is durable -> stored for commit
//! revoke / shutdown: after the flush, encode and write on the owner thread
//! ```
//!
//! A snapshot covering offset `O` is written only once every output caused by messages
//! before `O` (and by the wall clock since) is delivered: the state in it has then left
//! no output behind, so restoring it and replaying from `O` loses nothing. Only such a
//! durable offset is ever committed.

use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::clock::wall_clock;
use super::events::{SnapshotStepTaken, SnapshotWritten};
use super::owner::{current, Owner, PartitionState};
use super::PartitionKey;
use crate::core::{EngineImage, EventTime, ModelShape};
use crate::snapshot::format::About;
use crate::snapshot::{format, Header, SnapshotFile, SnapshotStore};
use crate::telemetry::labels::SnapshotStep;

/// How long one service may spend copying snapshot images: the longest a snapshot
/// stops consumption (plus one block of customers, well under a millisecond).
const CAPTURE_STEP: Duration = Duration::from_millis(2);

/// Identifies one snapshot through the background thread.
#[derive(Clone, Debug)]
pub(super) struct Ticket {
    pub partition: PartitionKey,
    /// The assignment it belongs to; results for an earlier one are dropped.
    pub epoch: u64,
    pub topic: String,
    pub offset: i64,
    /// The partition's watermark when the image began.
    pub watermark: EventTime,
}

impl Ticket {
    pub fn new(
        input_topics: &[String],
        partition: PartitionKey,
        epoch: u64,
        offset: i64,
        watermark: EventTime,
    ) -> Self {
        Ticket {
            partition,
            epoch,
            topic: partition.topic_in(input_topics).to_owned(),
            offset,
            watermark,
        }
    }

    /// The file header of this snapshot of `engine`'s state: its model, and the
    /// watermark it was at when the image began.
    pub fn header(&self, shape: &ModelShape, model: &str) -> Header {
        Header {
            fingerprint: shape.fingerprint,
            topic: self.topic.clone(),
            partition: self.partition.partition,
            offset: self.offset,
            about: Some(About {
                model: model.to_owned(),
                watermark: self.watermark,
                written_at: wall_clock(),
            }),
        }
    }
}

enum Job {
    Encode {
        ticket: Ticket,
        header: Header,
        image: Box<EngineImage>,
    },
    Publish {
        ticket: Ticket,
        file: Box<dyn SnapshotFile>,
        size: u64,
    },
}

/// A result from the snapshot thread.
pub(super) enum Done {
    Encoded {
        ticket: Ticket,
        /// The unpublished file and its size.
        file: io::Result<(Box<dyn SnapshotFile>, u64)>,
        /// Handed back so the next image reuses its buffers.
        image: Box<EngineImage>,
        took: Duration,
    },
    Written {
        ticket: Ticket,
        size: u64,
        took: Duration,
        result: io::Result<()>,
    },
}

/// The thread that encodes and writes snapshots, off the owner's path.
pub(super) struct SnapshotThread {
    jobs: Option<mpsc::Sender<Job>>,
    pub done: mpsc::Receiver<Done>,
    handle: Option<JoinHandle<()>>,
}

impl SnapshotThread {
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(store: Arc<dyn SnapshotStore>) -> io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("stagestream-snapshots".into())
            .spawn(move || {
                for job in inbox {
                    let result = match job {
                        Job::Encode {
                            ticket,
                            header,
                            mut image,
                        } => {
                            let started = Instant::now();
                            // Customers erased or expired while it was copied.
                            image.drop_vacant();
                            let file = encode_into_file(&*store, &ticket, &header, &image);
                            Done::Encoded {
                                ticket,
                                file,
                                image,
                                took: started.elapsed(),
                            }
                        }
                        Job::Publish { ticket, file, size } => {
                            let started = Instant::now();
                            let result = file.publish();
                            Done::Written {
                                ticket,
                                size,
                                took: started.elapsed(),
                                result,
                            }
                        }
                    };
                    if outbox.send(result).is_err() {
                        return;
                    }
                }
            })?;
        Ok(SnapshotThread {
            jobs: Some(jobs),
            done,
            handle: Some(handle),
        })
    }

    pub fn encode(&self, ticket: Ticket, header: Header, image: Box<EngineImage>) {
        self.send(Job::Encode {
            ticket,
            header,
            image,
        });
    }

    pub fn publish(&self, ticket: Ticket, file: Box<dyn SnapshotFile>, size: u64) {
        self.send(Job::Publish { ticket, file, size });
    }

    fn send(&self, job: Job) {
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            warn!("the snapshot thread is gone; no further snapshots are taken in the background");
        }
    }

    /// Lets queued jobs finish and waits for the thread.
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Encodes `image` into a new, unpublished snapshot file for `ticket`; the file and its
/// size.
///
/// # Errors
/// The file cannot be created or written (it is then removed).
pub(super) fn encode_into_file(
    store: &dyn SnapshotStore,
    ticket: &Ticket,
    header: &Header,
    image: &EngineImage,
) -> io::Result<(Box<dyn SnapshotFile>, u64)> {
    let mut file = store.create(&ticket.topic, ticket.partition.partition, ticket.offset)?;
    let size = format::encode_to(header, image, &mut file)?;
    Ok((file, size))
}

/// Where one partition's snapshotting stands.
#[derive(Debug)]
pub(super) struct Progress {
    /// The state changed since the last image was taken.
    pub dirty: bool,
    /// When the last image was taken (or the partition assigned).
    pub taken_at: Instant,
    pub pending: Pending,
    /// The previous image, whose buffers the next one reuses: copying into memory
    /// that is already mapped costs about a quarter of faulting in fresh pages, at the
    /// cost of keeping one copy of the state.
    pub spare: Option<Box<EngineImage>>,
}

#[derive(Debug)]
pub(super) enum Pending {
    None,
    /// The engine is copying an image for `ticket` between messages.
    Capturing {
        ticket: Ticket,
        started: Instant,
        /// The longest step so far.
        longest_step: Duration,
    },
    Encoding,
    /// Encoded into an unpublished file of `size` bytes; published once everything
    /// before the ticket's offset is safe.
    Encoded {
        ticket: Ticket,
        file: Box<dyn SnapshotFile>,
        size: u64,
    },
    Writing,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            dirty: false,
            taken_at: Instant::now(),
            pending: Pending::None,
            spare: None,
        }
    }

    /// Whether a background snapshot is due.
    pub fn due(&self, interval: Duration) -> bool {
        self.dirty && matches!(self.pending, Pending::None) && self.taken_at.elapsed() >= interval
    }

    /// Whether the state holds anything no durable snapshot has.
    pub fn unsaved(&self) -> bool {
        self.dirty || !matches!(self.pending, Pending::None)
    }
}

impl Owner {
    /// Starts copying an image of every partition whose snapshot is due; the copy
    /// proceeds in [`Owner::capture_images`].
    pub(super) fn start_due_snapshots(&mut self) {
        let (Some(_), Some(snapshot)) = (&self.snapshot_thread, &self.settings.snapshot) else {
            return;
        };
        let interval = snapshot.interval.as_duration();
        for (&key, state) in &mut self.partitions {
            let Some(offset) = state
                .ledger
                .next_offset()
                .filter(|_| state.snapshot.due(interval))
            else {
                continue;
            };
            let ticket = Ticket::new(
                &self.settings.input.topics,
                key,
                state.epoch,
                offset,
                state.engine.watermark(),
            );
            state
                .engine
                .begin_image(state.snapshot.spare.take().unwrap_or_default());
            state.snapshot.dirty = false;
            state.snapshot.taken_at = Instant::now();
            state.snapshot.pending = Pending::Capturing {
                ticket,
                started: Instant::now(),
                longest_step: Duration::ZERO,
            };
        }
    }

    /// Whether an image is being copied: the loop then polls without waiting, so the
    /// copy goes on while no message comes.
    pub(super) fn capturing(&self) -> bool {
        self.partitions
            .values()
            .any(|state| matches!(state.snapshot.pending, Pending::Capturing { .. }))
    }

    /// Copies images for at most [`CAPTURE_STEP`] (plus one block), the only time a
    /// snapshot stops consumption, and hands complete ones to the snapshot thread.
    pub(super) fn capture_images(&mut self) {
        let Some(thread) = &self.snapshot_thread else {
            return;
        };
        let started = Instant::now();
        for state in self.partitions.values_mut() {
            let Pending::Capturing {
                ticket,
                started: capture_started,
                longest_step,
            } = &mut state.snapshot.pending
            else {
                continue;
            };
            let step_started = Instant::now();
            let image = loop {
                if let Some(image) = state.engine.continue_image(1) {
                    break Some(image);
                }
                if started.elapsed() >= CAPTURE_STEP {
                    break None;
                }
            };
            let step = step_started.elapsed();
            *longest_step = (*longest_step).max(step);
            SnapshotStepTaken {
                step: SnapshotStep::Pause,
                took: step,
            }
            .emit(&self.control.metrics);
            if let Some(image) = image {
                debug!(
                    topic = %ticket.topic,
                    partition = ticket.partition.partition,
                    offset = ticket.offset,
                    customers = image.customers.len(),
                    capture_ms = capture_started.elapsed().as_secs_f64() * 1e3,
                    longest_step_ms = longest_step.as_secs_f64() * 1e3,
                    "snapshot image taken"
                );
                let ticket = ticket.clone();
                let header = ticket.header(&image.shape, state.engine.model().name());
                thread.encode(ticket, header, image);
                state.snapshot.pending = Pending::Encoding;
            }
            if started.elapsed() >= CAPTURE_STEP {
                break;
            }
        }
    }

    /// Handles what the snapshot thread finished, and sends encoded snapshots to be
    /// written once their ledger says every output before their offset is safe.
    pub(super) fn advance_snapshots(&mut self) {
        let Some(thread) = &self.snapshot_thread else {
            return;
        };
        while let Ok(done) = thread.done.try_recv() {
            let (Done::Encoded { ticket, .. } | Done::Written { ticket, .. }) = &done;
            let Some(state) = current(&mut self.partitions, ticket.partition, ticket.epoch) else {
                continue;
            };
            match done {
                Done::Encoded {
                    ticket,
                    file,
                    image,
                    took,
                } => {
                    SnapshotStepTaken {
                        step: SnapshotStep::Encode,
                        took,
                    }
                    .emit(&self.control.metrics);
                    state.snapshot.spare = Some(image);
                    state.snapshot.pending = Pending::None;
                    match file {
                        Ok((file, size)) => {
                            state.snapshot.pending = Pending::Encoded { ticket, file, size };
                        }
                        // Counted and logged as a failed write; its time is the
                        // encode's, observed above.
                        Err(error) => {
                            self.totals.snapshots_written +=
                                written(state, &ticket, 0, None, Err(error), &self.control.metrics)
                        }
                    }
                }
                Done::Written {
                    ticket,
                    size,
                    took,
                    result,
                } => {
                    state.snapshot.pending = Pending::None;
                    self.totals.snapshots_written +=
                        written(state, &ticket, size, Some(took), result, &self.control.metrics);
                }
            }
        }
        for state in self.partitions.values_mut() {
            let publishable = match &state.snapshot.pending {
                Pending::Encoded { ticket, .. } => state.ledger.may_publish(ticket.offset),
                _ => false,
            };
            if !publishable {
                continue;
            }
            let Pending::Encoded { ticket, file, size } =
                std::mem::replace(&mut state.snapshot.pending, Pending::Writing)
            else {
                unreachable!("checked above");
            };
            thread.publish(ticket, file, size);
        }
    }

    /// Writes a snapshot of `key` on this thread (revoke, shutdown), if its state holds
    /// anything unsaved and every output is safe.
    pub(super) fn snapshot_now(&mut self, key: PartitionKey) {
        let Some(store) = &self.store else {
            return;
        };
        let topics = &self.settings.input.topics;
        let state = self.partitions.get_mut(&key).expect("an assigned partition");
        if !state.snapshot.unsaved() {
            return;
        }
        let offset = match state.ledger.final_snapshot() {
            Ok(Some(offset)) => offset,
            Ok(None) => return,
            Err(undelivered) => {
                warn!(
                    topic = key.topic_in(topics),
                    partition = key.partition,
                    undelivered,
                    "outputs undelivered: no final snapshot; the next owner replays from the last one"
                );
                return;
            }
        };
        let ticket = Ticket::new(topics, key, state.epoch, offset, state.engine.watermark());
        let started = Instant::now();
        let model = state.engine.model();
        let header = ticket.header(model.shape(), model.name());
        let (size, result) = match encode_into_file(&**store, &ticket, &header, &state.engine.image()) {
            Ok((file, size)) => (size, file.publish()),
            Err(error) => (0, Err(error)),
        };
        state.snapshot.dirty = false;
        self.totals.snapshots_written += written(
            state,
            &ticket,
            size,
            Some(started.elapsed()),
            result,
            &self.control.metrics,
        );
    }
}

/// Accounts for a finished write of `state`'s snapshot: durable in its ledger on
/// success, retried at the next interval on failure; logged and counted either way.
/// Returns 1 when a snapshot was written.
fn written(
    state: &mut PartitionState,
    ticket: &Ticket,
    size: u64,
    took: Option<Duration>,
    result: io::Result<()>,
    metrics: &crate::telemetry::Metrics,
) -> u64 {
    SnapshotWritten {
        ticket,
        size,
        took,
        result: &result,
    }
    .emit(metrics);
    if result.is_err() {
        state.snapshot.dirty = true;
        return 0;
    }
    state.ledger.snapshot_written(ticket.offset);
    let labels = state.labels.values();
    metrics
        .snapshot_size
        .with_label_values(&labels)
        .set(i64::try_from(size).unwrap_or(i64::MAX));
    metrics
        .last_snapshot_time
        .with_label_values(&labels)
        .set(wall_clock().as_millis().div_euclid(1_000));
    1
}
