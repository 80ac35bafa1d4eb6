//! `stagestream inspect`: what snapshot files hold, without a configuration or a
//! broker. PATH is one snapshot file, or a snapshot directory (`snapshot.dir`), of
//! which the newest valid snapshot of each partition is read. The header (format,
//! model, topic, partition, offset, watermark, written at, customers by stage) is
//! printed for people; `--customer` prints one customer's state as JSON; `--export`
//! writes every customer's state as JSON lines, for a warehouse.
//!
//! A customer's state is shaped like an entry of the lookup's `states`: stage, when it
//! was entered, last activity, the inactivity ladder with each threshold's due time and
//! whether it fired in the current gap, and what the state is as of. `first_seen_at`
//! is `null` in snapshots written before format version 5, which did not record it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::core::{EngineImage, EventTime};
use crate::snapshot::format::{self, CorruptSnapshot, Header};
use crate::snapshot::{DirectoryStore, SnapshotStore};

/// Why a snapshot could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a usable snapshot (exit 65).
    #[error("{} is not a usable snapshot: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: CorruptSnapshot,
    },
    #[error("{} holds no valid snapshot", path.display())]
    NoSnapshot { path: PathBuf },
    #[error("customer {0:?} is in none of the snapshots read")]
    UnknownCustomer(String),
    #[error("cannot write: {0}")]
    Write(#[source] io::Error),
}

/// One snapshot file, decoded.
pub struct Snapshot {
    pub path: PathBuf,
    pub version: u16,
    pub header: Header,
    pub image: EngineImage,
    /// The image's inactivity ladder, parsed once from the model shape's signatures
    /// (by ladder position; `None` for a signature this build cannot read).
    ladder: Vec<Option<Threshold>>,
}

/// Reads PATH: the file itself, or the newest valid snapshot of every partition under
/// a snapshot directory. In a directory, a snapshot that does not decode is skipped
/// with a line on `warnings` (restoring would skip it too).
///
/// # Errors
/// PATH cannot be read; a file that is not a valid snapshot; a directory with none.
pub fn read(path: &Path, warnings: &mut impl Write) -> Result<Vec<Snapshot>, InspectError> {
    let unreadable = |source| InspectError::Unreadable {
        path: path.to_owned(),
        source,
    };
    if !fs::metadata(path).map_err(unreadable)?.is_dir() {
        return Ok(vec![read_file(path)?]);
    }
    let store = DirectoryStore::new(path, usize::MAX);
    let mut snapshots = Vec::new();
    for (topic, partition) in partitions(path).map_err(unreadable)? {
        let offsets = store.list(&topic, partition).map_err(unreadable)?;
        for offset in offsets {
            match read_file(&store.path(&topic, partition, offset)) {
                Ok(snapshot) => {
                    snapshots.push(snapshot);
                    break;
                }
                Err(error) => {
                    let _ = writeln!(warnings, "stagestream inspect: skipped: {error}");
                }
            }
        }
    }
    if snapshots.is_empty() {
        return Err(InspectError::NoSnapshot {
            path: path.to_owned(),
        });
    }
    Ok(snapshots)
}

fn read_file(path: &Path) -> Result<Snapshot, InspectError> {
    let bytes = fs::read(path).map_err(|source| InspectError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let version = format::version_of(&bytes).unwrap_or(0);
    let (header, image) = format::decode(bytes).map_err(|source| InspectError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    let ladder = image
        .shape
        .thresholds
        .iter()
        .map(|s| Threshold::parse(s))
        .collect();
    Ok(Snapshot {
        path: path.to_owned(),
        version,
        header,
        image,
        ladder,
    })
}

/// `(topic, partition)` of every partition folder under a snapshot directory, sorted.
fn partitions(dir: &Path) -> io::Result<Vec<(String, i32)>> {
    let mut found = Vec::new();
    for topic in fs::read_dir(dir)? {
        let topic = topic?;
        let Some(name) = topic.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !topic.file_type()?.is_dir() {
            continue;
        }
        for partition in fs::read_dir(topic.path())? {
            let partition = partition?;
            let number = partition.file_name().to_str().and_then(|n| n.parse().ok());
            if let (Some(number), true) = (number, partition.file_type()?.is_dir()) {
                found.push((name.clone(), number));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The header of each snapshot, for people.
///
/// # Errors
/// Writing to `out` failed.
pub fn describe(snapshots: &[Snapshot], out: &mut impl Write) -> Result<(), InspectError> {
    for snapshot in snapshots {
        describe_one(snapshot, out).map_err(InspectError::Write)?;
    }
    Ok(())
}

fn describe_one(snapshot: &Snapshot, out: &mut impl Write) -> io::Result<()> {
    let (header, image) = (&snapshot.header, &snapshot.image);
    let about = header.about.as_ref();
    let unknown = || "unknown (written before format 4)".to_owned();
    let mut by_stage = vec![0u64; image.shape.stages.len()];
    for customer in &image.customers {
        if let Some(count) = by_stage.get_mut(usize::from(customer.stage.0)) {
            *count += 1;
        }
    }
    let stages: Vec<String> = image
        .shape
        .stages
        .iter()
        .zip(&by_stage)
        .map(|(stage, count)| format!("{stage} {count}"))
        .collect();
    writeln!(out, "snapshot     {}", snapshot.path.display())?;
    writeln!(out, "  format     {}", snapshot.version)?;
    writeln!(
        out,
        "  model      {} (fingerprint {:016x})",
        about.map_or_else(unknown, |a| a.model.clone()),
        header.fingerprint
    )?;
    writeln!(out, "  topic      {}", header.topic)?;
    writeln!(out, "  partition  {}", header.partition)?;
    writeln!(out, "  offset     {}", header.offset)?;
    writeln!(
        out,
        "  watermark  {}",
        about.map_or_else(unknown, |a| rfc3339(a.watermark)
            .unwrap_or_else(|| "none (no event yet)".into()))
    )?;
    writeln!(
        out,
        "  written at {}",
        about.map_or_else(unknown, |a| rfc3339(a.written_at).unwrap_or_default())
    )?;
    writeln!(
        out,
        "  customers  {}: {}",
        image.customers.len(),
        stages.join(", ")
    )?;
    Ok(())
}

/// `customer_id`'s states across the snapshots, in the lookup's JSON shape.
///
/// # Errors
/// [`InspectError::UnknownCustomer`] when no snapshot holds it.
pub fn customer(snapshots: &[Snapshot], customer_id: &str) -> Result<Value, InspectError> {
    let mut states = Vec::new();
    let mut model = None;
    for snapshot in snapshots {
        let Some(index) = (0..snapshot.image.ids.len())
            .find(|&i| snapshot.image.ids.get(crate::core::CustomerRef(i as u32)) == customer_id)
        else {
            continue;
        };
        model = model.or_else(|| snapshot.header.about.as_ref().map(|a| a.model.clone()));
        states.push(state(snapshot, index));
    }
    if states.is_empty() {
        return Err(InspectError::UnknownCustomer(customer_id.to_owned()));
    }
    Ok(json!({"customer_id": customer_id, "model": model, "states": states}))
}

/// Every customer's state as a JSON line: `customer_id`, `model`, and the state's
/// fields (one line per customer and partition).
///
/// # Errors
/// Writing to `out` failed.
pub fn export(snapshots: &[Snapshot], out: &mut impl Write) -> Result<(), InspectError> {
    for snapshot in snapshots {
        let model = snapshot.header.about.as_ref().map(|a| a.model.as_str());
        for index in 0..snapshot.image.customers.len() {
            let id = snapshot.image.ids.get(crate::core::CustomerRef(index as u32));
            let mut line = json!({"customer_id": id, "model": model});
            if let (Value::Object(line), Value::Object(state)) = (&mut line, state(snapshot, index)) {
                line.extend(state);
            }
            serde_json::to_writer(&mut *out, &line).map_err(|e| InspectError::Write(e.into()))?;
            out.write_all(b"\n").map_err(InspectError::Write)?;
        }
    }
    out.flush().map_err(InspectError::Write)
}

/// One customer's state in one snapshot, shaped like an entry of the lookup's `states`.
fn state(snapshot: &Snapshot, index: usize) -> Value {
    let (header, image) = (&snapshot.header, &snapshot.image);
    let customer = &image.customers[index];
    let stage = image.shape.stages.get(usize::from(customer.stage.0));
    let inactivity: Vec<Value> = snapshot
        .ladder
        .iter()
        .enumerate()
        .filter_map(|(i, threshold)| {
            let threshold = threshold.as_ref()?;
            let applies = threshold.stages.as_ref().is_none_or(|stages| stage.is_some_and(|s| stages.contains(s)));
            applies.then(|| {
                json!({
                    "threshold": threshold.name,
                    "due_at": rfc3339(customer.last_activity.time().plus(crate::core::Span::from_millis(threshold.after_ms))),
                    "fired": i < usize::from(customer.ladder),
                })
            })
        })
        .collect();
    json!({
        "topic": header.topic,
        "partition": header.partition,
        "stage": stage,
        "stage_entered_at": rfc3339(customer.stage_entered.time()),
        "first_seen_at": customer.first_seen.known().and_then(rfc3339),
        "last_activity_at": rfc3339(customer.last_activity.time()),
        "inactivity": inactivity,
        "as_of": {
            "offset": header.offset,
            "watermark": header.about.as_ref().and_then(|a| rfc3339(a.watermark)),
        },
    })
}

/// A threshold as the model shape records it: `[name, after_ms, stages or null, move_to]`.
struct Threshold {
    name: String,
    after_ms: i64,
    stages: Option<Vec<String>>,
}

impl Threshold {
    fn parse(signature: &str) -> Option<Threshold> {
        let value: Value = serde_json::from_str(signature).ok()?;
        let parts = value.as_array()?;
        Some(Threshold {
            name: parts.first()?.as_str()?.to_owned(),
            after_ms: parts.get(1)?.as_i64()?,
            stages: parts.get(2).and_then(Value::as_array).map(|stages| {
                stages
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            }),
        })
    }
}

/// RFC 3339 with milliseconds, or `None` for the "no time yet" sentinel.
fn rfc3339(time: EventTime) -> Option<String> {
    (time != EventTime::MIN).then(|| time.to_string())
}
