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

use tracing::warn;

use super::PartitionKey;
use crate::core::EngineImage;
use crate::snapshot::{format, Header, SnapshotFile, SnapshotStore};

/// Identifies one snapshot through the background thread.
#[derive(Clone, Debug)]
pub(super) struct Ticket {
    pub partition: PartitionKey,
    /// The assignment it belongs to; results for an earlier one are dropped.
    pub epoch: u64,
    pub topic: String,
    pub offset: i64,
}

impl Ticket {
    pub fn new(input_topics: &[String], partition: PartitionKey, epoch: u64, offset: i64) -> Self {
        Ticket {
            partition,
            epoch,
            topic: partition.topic_in(input_topics).to_owned(),
            offset,
        }
    }

    /// The file header of this snapshot, for state built under model `fingerprint`.
    pub fn header(&self, fingerprint: u64) -> Header {
        Header {
            fingerprint,
            topic: self.topic.clone(),
            partition: self.partition.partition,
            offset: self.offset,
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
                            image,
                        } => {
                            let started = Instant::now();
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
    /// The offset of the newest snapshot known to be written, to be committed.
    pub durable: Option<i64>,
    /// The previous image, whose buffers the next one reuses: copying into memory
    /// that is already mapped costs about a quarter of faulting in fresh pages
    /// (docs/performance-history.md), at the cost of keeping one copy of the state.
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
    /// before `offset` is delivered.
    Encoded {
        offset: i64,
        file: Box<dyn SnapshotFile>,
        size: u64,
    },
    Writing,
}

impl Progress {
    pub fn new(durable: Option<i64>) -> Self {
        Progress {
            dirty: false,
            taken_at: Instant::now(),
            pending: Pending::None,
            durable,
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
