//! Where snapshot files live: the [`SnapshotStore`] trait and its first implementation,
//! a directory on a local disk or a shared mount ([`DirectoryStore`]).
//!
//! Layout: `<dir>/<topic>/<partition>/<offset, 20 digits>.snap`, so the newest snapshot
//! of a partition is the one with the highest offset, whichever instance wrote it.
//! A snapshot is written into a temporary file (unique per process and write) as it is
//! encoded ([`SnapshotStore::create`]); once published it is fsynced, renamed into place
//! and the directory fsynced: a reader sees a whole file or none, and a crash at any
//! instant leaves at worst a temporary file, which the next write to that partition
//! removes once it is old enough. Corrupt files are renamed `*.corrupt`, kept for
//! inspection and never read again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Durable storage for snapshot bytes, addressed by topic, partition and offset.
/// Implementations must make `write` atomic (whole file or nothing) and durable before
/// it returns, since offsets are committed on the strength of it.
pub trait SnapshotStore: Send + Sync {
    /// Offsets of the partition's snapshots, newest first.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn list(&self, topic: &str, partition: i32) -> io::Result<Vec<i64>>;

    /// The bytes of one snapshot.
    ///
    /// # Errors
    /// It cannot be read (gone, I/O error).
    fn read(&self, topic: &str, partition: i32, offset: i64) -> io::Result<Vec<u8>>;

    /// Starts a snapshot: a file no reader sees until it is
    /// [published](SnapshotFile::publish), so it can be written while the outputs it
    /// depends on are still being delivered. Dropped unpublished, it is removed.
    ///
    /// # Errors
    /// It cannot be created (permissions, disk full...).
    fn create(&self, topic: &str, partition: i32, offset: i64) -> io::Result<Box<dyn SnapshotFile>>;

    /// Sets a corrupt snapshot aside so it is never read again.
    ///
    /// # Errors
    /// It cannot be moved.
    fn quarantine(&self, topic: &str, partition: i32, offset: i64) -> io::Result<()>;
}

/// A snapshot being written, not yet visible to [`SnapshotStore::list`].
pub trait SnapshotFile: Write + Seek + Send + std::fmt::Debug {
    /// Makes the bytes written durable and visible, atomically, then deletes all but
    /// the store's newest `keep` snapshots of the partition.
    ///
    /// # Errors
    /// Any I/O error; the previous snapshots are then untouched.
    fn publish(self: Box<Self>) -> io::Result<()>;
}

/// Snapshots as files under one directory.
#[derive(Debug)]
pub struct DirectoryStore {
    root: PathBuf,
    keep: usize,
    writes: AtomicU64,
}

const SUFFIX: &str = ".snap";
/// A temporary file untouched this long belongs to a write that died with its process
/// (another live instance on a shared mount may be writing a younger one). A file
/// still waiting this long for its outputs to be delivered may be removed too: its
/// publish then fails, and the snapshot is taken again at the next interval.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

impl DirectoryStore {
    /// A store under `root` (created on first write) keeping `keep` snapshots per
    /// partition (at least one).
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        DirectoryStore {
            root: root.into(),
            keep: keep.max(1),
            writes: AtomicU64::new(0),
        }
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.root.join(topic).join(partition.to_string())
    }

    /// Where the snapshot of `topic`/`partition` covering up to `offset` lives.
    pub fn path(&self, topic: &str, partition: i32, offset: i64) -> PathBuf {
        self.partition_dir(topic, partition)
            .join(format!("{offset:020}{SUFFIX}"))
    }
}

impl SnapshotStore for DirectoryStore {
    fn list(&self, topic: &str, partition: i32) -> io::Result<Vec<i64>> {
        let dir = self.partition_dir(topic, partition);
        let mut offsets = match offsets_in(&dir) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            other => other?,
        };
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        Ok(offsets)
    }

    fn read(&self, topic: &str, partition: i32, offset: i64) -> io::Result<Vec<u8>> {
        fs::read(self.path(topic, partition, offset))
    }

    fn create(&self, topic: &str, partition: i32, offset: i64) -> io::Result<Box<dyn SnapshotFile>> {
        let dir = self.partition_dir(topic, partition);
        fs::create_dir_all(&dir)?;
        let write = self.writes.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{offset:020}.{}.{write}.tmp", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(Box::new(TemporaryFile {
            file,
            temp: Some(temp),
            path: self.path(topic, partition, offset),
            dir,
            keep: self.keep,
        }))
    }

    fn quarantine(&self, topic: &str, partition: i32, offset: i64) -> io::Result<()> {
        let path = self.path(topic, partition, offset);
        let mut aside = path.clone().into_os_string();
        aside.push(".corrupt");
        fs::rename(path, aside)
    }
}

/// A [`DirectoryStore`] snapshot being written: a temporary file beside its final
/// name, removed if dropped unpublished.
#[derive(Debug)]
struct TemporaryFile {
    file: File,
    /// `None` once renamed into place.
    temp: Option<PathBuf>,
    path: PathBuf,
    dir: PathBuf,
    keep: usize,
}

impl Write for TemporaryFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for TemporaryFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.file.seek(to)
    }
}

impl SnapshotFile for TemporaryFile {
    fn publish(mut self: Box<Self>) -> io::Result<()> {
        self.file.sync_all()?;
        let temp = self.temp.take().expect("published once");
        if let Err(error) = fs::rename(&temp, &self.path) {
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        File::open(&self.dir)?.sync_all()?;
        remove_stale(&self.dir, self.keep)
    }
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Removes the partition's snapshots beyond the newest `keep`, and temporary files
/// abandoned by writers that died.
fn remove_stale(dir: &Path, keep: usize) -> io::Result<()> {
    let mut offsets = offsets_in(dir)?;
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let abandoned = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified.elapsed().unwrap_or_default() > ABANDONED_AFTER);
        if name.to_string_lossy().ends_with(".tmp") && abandoned {
            let _ = fs::remove_file(entry.path());
        }
    }
    for offset in offsets.iter().skip(keep) {
        fs::remove_file(dir.join(format!("{offset:020}{SUFFIX}")))?;
    }
    Ok(())
}

/// Saves `bytes` as one snapshot, created and published at once (tests' shorthand).
#[cfg(test)]
pub(crate) fn write_whole(
    store: &dyn SnapshotStore,
    topic: &str,
    partition: i32,
    offset: i64,
    bytes: &[u8],
) -> io::Result<()> {
    let mut file = store.create(topic, partition, offset)?;
    file.write_all(bytes)?;
    file.publish()
}

/// Offsets of the `*.snap` files in `dir`.
fn offsets_in(dir: &Path) -> io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(offset) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse().ok())
        {
            offsets.push(offset);
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn keeps_the_newest_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 2);
        assert_eq!(store.list("events", 0).unwrap(), Vec::<i64>::new());
        for offset in [5, 90, 17] {
            write_whole(&store, "events", 0, offset, format!("at {offset}").as_bytes()).unwrap();
        }
        assert_eq!(store.list("events", 0).unwrap(), [90, 17]);
        assert_eq!(store.read("events", 0, 17).unwrap(), b"at 17");
        assert_eq!(store.list("events", 1).unwrap(), Vec::<i64>::new());
        store.quarantine("events", 0, 90).unwrap();
        assert_eq!(store.list("events", 0).unwrap(), [17]);
        assert!(dir
            .path()
            .join("events/0/00000000000000000090.snap.corrupt")
            .exists());
    }

    #[test]
    fn a_file_is_seen_only_once_published_and_leaves_nothing_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 3);
        let mut file = store.create("events", 1, 40).unwrap();
        file.write_all(b"xxxx state").unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.write_all(b"the ").unwrap();
        assert_eq!(store.list("events", 1).unwrap(), Vec::<i64>::new());
        file.publish().unwrap();
        assert_eq!(store.list("events", 1).unwrap(), [40]);
        assert_eq!(store.read("events", 1, 40).unwrap(), b"the  state");

        let mut abandoned = store.create("events", 1, 50).unwrap();
        abandoned.write_all(b"half").unwrap();
        drop(abandoned);
        assert_eq!(store.list("events", 1).unwrap(), [40]);
        let left: Vec<_> = fs::read_dir(dir.path().join("events/1"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["00000000000000000040.snap"]);
    }

    #[test]
    fn a_dead_writer_s_temporary_file_is_cleaned_up_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 3);
        let partition = dir.path().join("events/2");
        fs::create_dir_all(&partition).unwrap();
        let leftover = partition.join(".00000000000000000007.999999.0.tmp");
        fs::write(&leftover, b"half a snapsh").unwrap();
        let young = partition.join(".00000000000000000008.999998.0.tmp");
        fs::write(&young, b"being writ").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3_600);
        File::options()
            .write(true)
            .open(&leftover)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(store.list("events", 2).unwrap(), Vec::<i64>::new());
        write_whole(&store, "events", 2, 9, b"whole").unwrap();
        assert!(!leftover.exists());
        assert!(young.exists(), "may be another instance's write in progress");
        assert_eq!(store.list("events", 2).unwrap(), [9]);
    }

    #[test]
    fn a_failed_write_leaves_the_previous_snapshots_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path(), 3);
        write_whole(&store, "events", 0, 1, b"one").unwrap();
        // The partition directory replaced by a file: every write into it fails.
        let blocked = DirectoryStore::new(dir.path().join("events/0/00000000000000000001.snap"), 3);
        assert!(write_whole(&blocked, "events", 0, 2, b"two").is_err());
        assert_eq!(store.list("events", 0).unwrap(), [1]);
        assert_eq!(store.read("events", 0, 1).unwrap(), b"one");
    }
}
