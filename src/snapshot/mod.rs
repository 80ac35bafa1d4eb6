//! Snapshots: one partition's engine state saved with the input offset it covers, so
//! a restart, a crash or a rebalance resumes from there instead of from the beginning.
//!
//! ```text
//! Engine::image (owner thread, cheap copy)
//!     -> format::encode_to a SnapshotStore::create file (snapshot thread, unpublished)
//!     -> outputs before the offset delivered? -> SnapshotFile::publish (atomic, durable)
//!     -> the offset may be committed
//! on assign: SnapshotStore::list -> read newest -> format::decode -> Engine::restore
//!     -> corrupt? quarantine, count, try the next older -> none left: start empty
//! ```
//!
//! - [`format`](mod@format): the file layout (versioned header, LZ4 body, crc32c);
//!   `chunks`: the body written and compressed in chunks on every core.
//! - [`store`]: the storage trait and the directory implementation.
//!
//! The scheduling (when to take one, when it counts as durable) is the pipeline's:
//! `crate::pipeline::snapshots`.

mod chunks;
pub mod format;
pub mod store;

use std::io;
use std::sync::Arc;

use tracing::{info, warn};

use crate::core::{Engine, EngineSettings, Model, Output, RestoreError};
pub use format::{CorruptSnapshot, Header};
pub use store::{DirectoryStore, SnapshotFile, SnapshotStore};

/// What [`restore`] found for one partition.
#[derive(Debug)]
pub struct Restored {
    /// The newest valid state, or an empty engine.
    pub engine: Engine,
    /// The next input offset the state expects, or `None` when no snapshot was usable
    /// (the partition must be rebuilt from its earliest retained offset).
    pub offset: Option<i64>,
    /// Snapshots found corrupt (and set aside) on the way.
    pub corrupt: u32,
    /// What carrying the state into the configured model caused (`Engine::restore`),
    /// to send before anything the partition's events cause.
    pub outputs: Vec<Output>,
}

/// Why a partition's state could not be restored: the service must stop.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot list the snapshots of {topic}/{partition}: {source}")]
    Unlistable {
        topic: String,
        partition: i32,
        #[source]
        source: io::Error,
    },
    #[error("the snapshot of {topic}/{partition} at offset {offset} is refused: {source}(or restore the previous model, or delete that partition's snapshots to rebuild it from the retained input)")]
    IncompatibleModel {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: RestoreError,
    },
}

/// Loads the newest valid snapshot of `topic`/`partition`.
///
/// A snapshot that cannot be read, fails its checksum, has another format version,
/// belongs to another partition or contradicts itself is logged, counted, set aside
/// (when it is corrupt, not merely unreadable) and the next older one is tried.
///
/// # Errors
/// The store cannot be listed, or the newest valid snapshot was made under a model the
/// configured one cannot take ([`crate::core::image`]): never guessed around.
pub fn restore(
    store: &dyn SnapshotStore,
    topic: &str,
    partition: i32,
    model: &Arc<Model>,
    settings: EngineSettings,
) -> Result<Restored, SnapshotError> {
    restore_newest(store, (topic, partition), model, settings, Corrupt::SetAside)
}

/// [`restore`] for a reader that does not own the snapshots (a shadow model): a
/// snapshot it cannot use is skipped, never set aside.
///
/// # Errors
/// As [`restore`].
pub fn restore_read_only(
    store: &dyn SnapshotStore,
    topic: &str,
    partition: i32,
    model: &Arc<Model>,
    settings: EngineSettings,
) -> Result<Restored, SnapshotError> {
    restore_newest(store, (topic, partition), model, settings, Corrupt::Skip)
}

/// What [`restore_newest`] does with a snapshot it finds corrupt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Corrupt {
    SetAside,
    Skip,
}

fn restore_newest(
    store: &dyn SnapshotStore,
    (topic, partition): (&str, i32),
    model: &Arc<Model>,
    settings: EngineSettings,
    corrupt_ones: Corrupt,
) -> Result<Restored, SnapshotError> {
    let offsets = store
        .list(topic, partition)
        .map_err(|source| SnapshotError::Unlistable {
            topic: topic.to_owned(),
            partition,
            source,
        })?;
    let mut corrupt = 0;
    let mut outputs = Vec::new();
    for offset in offsets {
        let bytes = match store.read(topic, partition, offset) {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(topic, partition, offset, %error, "snapshot unreadable; trying an older one");
                continue;
            }
        };
        let size = bytes.len();
        let problem = match format::decode(bytes) {
            Ok((header, _))
                if header.topic != topic || header.partition != partition || header.offset != offset =>
            {
                format!(
                    "it says it is {}/{} at offset {}",
                    header.topic, header.partition, header.offset
                )
            }
            Ok((header, image)) => match Engine::restore(Arc::clone(model), settings, image, &mut outputs) {
                Ok(engine) => {
                    let configured = model.shape().fingerprint;
                    info!(
                        topic,
                        partition,
                        offset,
                        customers = engine.customer_count(),
                        bytes = size,
                        saved_under = format!("{:016x}", header.fingerprint),
                        carried_into =
                            (header.fingerprint != configured).then(|| format!("{configured:016x}")),
                        migration_outputs = outputs.len(),
                        "state restored from snapshot"
                    );
                    return Ok(Restored {
                        engine,
                        offset: Some(offset),
                        corrupt,
                        outputs,
                    });
                }
                Err(source @ RestoreError::IncompatibleModel { .. }) => {
                    return Err(SnapshotError::IncompatibleModel {
                        topic: topic.to_owned(),
                        partition,
                        offset,
                        source,
                    })
                }
                Err(inconsistent) => inconsistent.to_string(),
            },
            Err(corruption) => corruption.to_string(),
        };
        corrupt += 1;
        if corrupt_ones == Corrupt::Skip {
            warn!(topic, partition, offset, problem = %problem, "unusable snapshot skipped; trying an older one");
            continue;
        }
        warn!(topic, partition, offset, problem = %problem, "corrupt snapshot set aside; trying an older one");
        if let Err(error) = store.quarantine(topic, partition, offset) {
            warn!(topic, partition, offset, %error, "cannot set the corrupt snapshot aside");
        }
    }
    Ok(Restored {
        engine: Engine::new(Arc::clone(model), settings),
        offset: None,
        corrupt,
        outputs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    fn model(stages: &str) -> Arc<Model> {
        model_moving_to(stages, "b")
    }

    /// A model whose one rule moves customers to `to` on `Go`.
    fn model_moving_to(stages: &str, to: &str) -> Arc<Model> {
        let text = format!(
            "[model]\nname = \"m\"\nstages = [{stages}]\n[[model.rules]]\nname = \"b\"\nto = \"{to}\"\nevents = [\"Go\"]\n"
        );
        crate::config::load_embedded("test.toml", &text).unwrap().model
    }

    fn engine_with(model: &Arc<Model>, customers: usize) -> Engine {
        let mut engine = Engine::new(Arc::clone(model), EngineSettings::default());
        for i in 0..customers {
            let line = format!(r#"{{"event":"Go","userId":"c{i}","timestamp":"2026-01-01T00:00:00Z"}}"#);
            let event = decode(line.as_bytes(), model).unwrap().into_event().unwrap();
            engine.on_event(&event, &mut Vec::new());
        }
        engine
    }

    fn save(store: &dyn SnapshotStore, engine: &Engine, offset: i64) {
        let header = Header {
            fingerprint: engine.model().shape().fingerprint,
            topic: "events".into(),
            partition: 0,
            offset,
            about: None,
        };
        store::write_whole(
            store,
            "events",
            0,
            offset,
            &format::encode(&header, &engine.image()),
        )
        .unwrap();
    }

    #[test]
    fn the_newest_valid_snapshot_wins_and_corrupt_ones_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 5);
        let model = model(r#""a", "b""#);
        save(&store, &engine_with(&model, 1), 10);
        save(&store, &engine_with(&model, 2), 20);
        save(&store, &engine_with(&model, 3), 30);
        let path = |offset: i64| dir.path().join(format!("events/0/{offset:020}.snap"));
        // Newest truncated, the one before it with a flipped byte.
        let bytes = std::fs::read(path(30)).unwrap();
        std::fs::write(path(30), &bytes[..bytes.len() / 2]).unwrap();
        let mut bytes = std::fs::read(path(20)).unwrap();
        bytes[40] ^= 1;
        std::fs::write(path(20), bytes).unwrap();
        // A reader that does not own the snapshots skips them and leaves them be.
        let read_only = restore_read_only(&store, "events", 0, &model, EngineSettings::default()).unwrap();
        assert_eq!((read_only.offset, read_only.corrupt), (Some(10), 2));
        assert_eq!(store.list("events", 0).unwrap(), [30, 20, 10]);
        let restored = restore(&store, "events", 0, &model, EngineSettings::default()).unwrap();
        assert_eq!(restored.offset, Some(10));
        assert_eq!(restored.engine.customer_count(), 1);
        assert_eq!(restored.corrupt, 2);
        assert_eq!(
            store.list("events", 0).unwrap(),
            [10],
            "the corrupt ones are never read again"
        );
    }

    #[test]
    fn no_usable_snapshot_means_an_empty_engine_and_no_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 5);
        let model = model(r#""a", "b""#);
        save(&store, &engine_with(&model, 2), 7);
        let path = dir.path().join(format!("events/0/{:020}.snap", 7));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 9; // a format version from the future
        std::fs::write(&path, bytes).unwrap();
        let restored = restore(&store, "events", 0, &model, EngineSettings::default()).unwrap();
        assert_eq!((restored.offset, restored.corrupt), (None, 1));
        assert_eq!(restored.engine.customer_count(), 0);
    }

    #[test]
    fn an_incompatible_model_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 5);
        save(&store, &engine_with(&model(r#""a", "b", "c""#), 2), 7);
        let error = restore(
            &store,
            "events",
            0,
            &model_moving_to(r#""a", "c""#, "c"),
            EngineSettings::default(),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("\"b\" (2 customers)"), "{message}");
        assert!(message.contains("[[model.migrate]]\nfrom = \"b\""), "{message}");
        assert!(message.contains("delete that partition's snapshots"), "{message}");
        let migrated = restore(
            &store,
            "events",
            0,
            &model(r#""a", "a2", "b", "c""#),
            EngineSettings::default(),
        )
        .unwrap();
        assert_eq!(migrated.offset, Some(7));
    }
}
