//! The snapshot file format: one partition's [`EngineImage`] and the input offset it
//! covers, checksummed end to end.
//!
//! ```text
//! magic        8 bytes  "STGSNAP\0"
//! version      u16      FORMAT_VERSION
//! flags        u16      0 (reserved)
//! fingerprint  u64      the model the state was built under
//! partition    i32
//! offset       i64      the next input offset: every message before it is in the state
//! topic        u16 length + UTF-8
//! body         u64 length + LZ4 block (uncompressed size prepended)
//! crc32c       u32      over every byte before it
//! ```
//!
//! Version 2 added when each customer entered its stage; version 1 files are not read
//! (the partition is rebuilt from the log). All integers little-endian. The body holds the model shape, then the state column by
//! column (ids, then each field for every customer), which compresses well and decodes
//! with sequential reads. Decoding never trusts a length it has not checked: a file that
//! passes the checksum but contradicts itself is still refused, here or by
//! [`Engine::restore`](crate::core::Engine::restore).

use crate::core::{
    CustomerImage, CustomerRef, DedupEntry, EngineImage, EventTime, ModelShape, StageId, ThresholdId,
};

pub const MAGIC: [u8; 8] = *b"STGSNAP\0";
pub const FORMAT_VERSION: u16 = 2;
const NOT_ARMED: u8 = u8::MAX;

/// Where a snapshot belongs and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub fingerprint: u64,
    pub topic: String,
    pub partition: i32,
    /// The next input offset to read after restoring this state.
    pub offset: i64,
}

/// Why bytes are not a usable snapshot. Never retriable: the file is bad.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptSnapshot {
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error("format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed body: {0}")]
    Body(String),
}

/// Serialises `image` under `header`.
pub fn encode(header: &Header, image: &EngineImage) -> Vec<u8> {
    let body = lz4_flex::block::compress_prepend_size(&encode_body(image));
    let mut out = Vec::with_capacity(body.len() + header.topic.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&header.fingerprint.to_le_bytes());
    out.extend_from_slice(&header.partition.to_le_bytes());
    out.extend_from_slice(&header.offset.to_le_bytes());
    put_str16(&mut out, &header.topic);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and parses a whole snapshot file.
///
/// # Errors
/// [`CorruptSnapshot`] saying what is wrong; nothing partial is returned.
pub fn decode(bytes: &[u8]) -> Result<(Header, EngineImage), CorruptSnapshot> {
    const FIXED: usize = 8 + 2 + 2 + 8 + 4 + 8 + 2;
    if !bytes.starts_with(&MAGIC) && !MAGIC.starts_with(bytes) {
        return Err(CorruptSnapshot::BadMagic);
    }
    if bytes.len() < FIXED + 8 + 4 {
        return Err(CorruptSnapshot::Truncated(bytes.len()));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(CorruptSnapshot::UnsupportedVersion { found: version });
    }
    let (covered, stored) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(stored.try_into().expect("split at 4"));
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(CorruptSnapshot::Checksum { stored, computed });
    }
    let mut reader = Reader {
        bytes: &covered[12..],
    };
    let fingerprint = reader.u64()?;
    let partition = reader.i32()?;
    let offset = reader.i64()?;
    let topic = reader.str16()?.to_owned();
    let body_len = reader.len64()?;
    let body = reader.take(body_len)?;
    if !reader.bytes.is_empty() {
        return Err(CorruptSnapshot::Body(format!(
            "{} bytes after the body",
            reader.bytes.len()
        )));
    }
    let raw =
        lz4_flex::block::decompress_size_prepended(body).map_err(|e| CorruptSnapshot::Body(e.to_string()))?;
    let image = decode_body(&raw)?;
    if image.shape.fingerprint != fingerprint {
        return Err(CorruptSnapshot::Body(
            "header and body disagree on the model".into(),
        ));
    }
    let header = Header {
        fingerprint,
        topic,
        partition,
        offset,
    };
    Ok((header, image))
}

fn encode_body(image: &EngineImage) -> Vec<u8> {
    let customers = image.customers.len();
    let mut out = Vec::with_capacity(image.id_arena.len() + customers * 16 + image.dedup.len() * 20 + 256);
    let shape = &image.shape;
    out.extend_from_slice(&shape.fingerprint.to_le_bytes());
    for list in [&shape.stages, &shape.thresholds, &shape.counters] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for item in list {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
            out.extend_from_slice(item.as_bytes());
        }
    }
    for time in [image.newest_event, image.clock, image.dedup_next_sweep] {
        out.extend_from_slice(&time.as_millis().to_le_bytes());
    }
    out.extend_from_slice(&(customers as u64).to_le_bytes());
    out.extend_from_slice(&(image.id_arena.len() as u64).to_le_bytes());
    out.extend_from_slice(image.id_arena.as_bytes());
    let mut start = 0;
    for &end in &image.id_ends {
        out.extend_from_slice(&((end - start) as u32).to_le_bytes());
        start = end;
    }
    for customer in &image.customers {
        out.extend_from_slice(&customer.last_activity.as_millis().to_le_bytes());
    }
    out.extend(image.customers.iter().map(|c| c.stage.0));
    out.extend(image.customers.iter().map(|c| c.armed.map_or(NOT_ARMED, |t| t.0)));
    out.extend(image.customers.iter().map(|c| c.ladder));
    for customer in &image.customers {
        out.extend_from_slice(&customer.stage_entered.to_le_bytes());
    }
    out.extend_from_slice(&(image.counters.len() as u64).to_le_bytes());
    for &counter in &image.counters {
        out.extend_from_slice(&counter.to_le_bytes());
    }
    out.extend_from_slice(&(image.dedup.len() as u64).to_le_bytes());
    for entry in &image.dedup {
        out.extend_from_slice(&entry.customer.0.to_le_bytes());
        out.extend_from_slice(&entry.digest.to_le_bytes());
        out.extend_from_slice(&entry.seen_at.as_millis().to_le_bytes());
    }
    out
}

fn decode_body(raw: &[u8]) -> Result<EngineImage, CorruptSnapshot> {
    let mut reader = Reader { bytes: raw };
    let fingerprint = reader.u64()?;
    let mut lists = [Vec::new(), Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = reader.u32()? as usize;
        for _ in 0..count {
            let len = reader.u32()? as usize;
            list.push(utf8(reader.take(len)?)?.to_owned());
        }
    }
    let [stages, thresholds, counters_shape] = lists;
    let newest_event = EventTime::from_millis(reader.i64()?);
    let clock = EventTime::from_millis(reader.i64()?);
    let dedup_next_sweep = EventTime::from_millis(reader.i64()?);
    let customers = reader.len64()?;
    let arena_len = reader.len64()?;
    let id_arena = utf8(reader.take(arena_len)?)?.to_owned();
    let lengths = reader.array::<4>(customers)?;
    let mut end = 0u64;
    let id_ends = lengths
        .map(|l| {
            end += u64::from(u32::from_le_bytes(l));
            end
        })
        .collect();
    let last_activity = reader.array::<8>(customers)?;
    let stage = reader.take(customers)?;
    let armed = reader.take(customers)?;
    let ladder = reader.take(customers)?;
    let stage_entered = reader.array::<4>(customers)?;
    let customers = last_activity
        .zip(stage)
        .zip(armed)
        .zip(ladder)
        .zip(stage_entered)
        .map(|((((time, &stage), &armed), &ladder), entered)| CustomerImage {
            last_activity: EventTime::from_millis(i64::from_le_bytes(time)),
            stage: StageId(stage),
            armed: (armed != NOT_ARMED).then_some(ThresholdId(armed)),
            ladder,
            stage_entered: u32::from_le_bytes(entered),
        })
        .collect();
    let counter_count = reader.len64()?;
    let counters = reader
        .array::<4>(counter_count)?
        .map(u32::from_le_bytes)
        .collect();
    let dedup_count = reader.len64()?;
    let dedup = reader
        .array::<20>(dedup_count)?
        .map(|entry| DedupEntry {
            customer: CustomerRef(u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"))),
            digest: u64::from_le_bytes(entry[4..12].try_into().expect("8 bytes")),
            seen_at: EventTime::from_millis(i64::from_le_bytes(entry[12..].try_into().expect("8 bytes"))),
        })
        .collect();
    if !reader.bytes.is_empty() {
        return Err(CorruptSnapshot::Body(format!(
            "{} bytes after the state",
            reader.bytes.len()
        )));
    }
    Ok(EngineImage {
        shape: ModelShape {
            fingerprint,
            stages,
            thresholds,
            counters: counters_shape,
        },
        newest_event,
        clock,
        dedup_next_sweep,
        id_arena,
        id_ends,
        customers,
        counters,
        dedup,
    })
}

fn put_str16(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).expect("topic names are at most 249 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn utf8(bytes: &[u8]) -> Result<&str, CorruptSnapshot> {
    std::str::from_utf8(bytes).map_err(|e| CorruptSnapshot::Body(e.to_string()))
}

/// A cursor that refuses to read past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], CorruptSnapshot> {
        if len > self.bytes.len() {
            return Err(CorruptSnapshot::Body(format!(
                "{len} bytes wanted, {} left",
                self.bytes.len()
            )));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CorruptSnapshot> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    /// `count` fixed-size items.
    fn array<const N: usize>(
        &mut self,
        count: usize,
    ) -> Result<impl Iterator<Item = [u8; N]> + 'a, CorruptSnapshot> {
        let len = count
            .checked_mul(N)
            .ok_or_else(|| CorruptSnapshot::Body(format!("{count} items overflow")))?;
        let bytes = self.take(len)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|chunk| chunk.try_into().expect("chunks of N")))
    }

    fn u32(&mut self) -> Result<u32, CorruptSnapshot> {
        self.fixed().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, CorruptSnapshot> {
        self.fixed().map(i32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, CorruptSnapshot> {
        self.fixed().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, CorruptSnapshot> {
        self.fixed().map(i64::from_le_bytes)
    }

    /// A u64 length or count; what it sizes is checked against the bytes left when read.
    fn len64(&mut self) -> Result<usize, CorruptSnapshot> {
        let len = self.u64()?;
        usize::try_from(len)
            .map_err(|_| CorruptSnapshot::Body(format!("length {len} does not fit in memory")))
    }

    fn str16(&mut self) -> Result<&'a str, CorruptSnapshot> {
        let len = u16::from_le_bytes(self.fixed()?);
        utf8(self.take(usize::from(len))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Engine, EngineSettings};
    use crate::decode::decode as decode_event;

    fn image() -> EngineImage {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/presets/five-stage.toml");
        let settings = crate::config::load_with_env(&path, Some(Default::default())).unwrap();
        let mut engine = Engine::new(settings.model.clone(), EngineSettings::default());
        let mut outputs = Vec::new();
        for (i, (customer, event)) in [
            ("ann", "Order Completed"),
            ("bob", "Product Viewed"),
            ("ann", "Order Completed"),
            ("é🙂", "Referral Sent"),
        ]
        .into_iter()
        .enumerate()
        {
            let line = format!(
                r#"{{"event":"{event}","userId":"{customer}","messageId":"m{i}","timestamp":"2026-01-0{}T00:00:00Z"}}"#,
                i + 1
            );
            engine.on_event(
                &decode_event(line.as_bytes(), &settings.model).unwrap(),
                &mut outputs,
            );
        }
        engine.image()
    }

    fn header() -> Header {
        Header {
            fingerprint: image().shape.fingerprint,
            topic: "events".into(),
            partition: 3,
            offset: 42,
        }
    }

    fn sorted(mut image: EngineImage) -> EngineImage {
        image.dedup.sort_by_key(|e| (e.customer, e.digest));
        image
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&header(), &image());
        let (decoded_header, decoded) = decode(&bytes).unwrap();
        assert_eq!(decoded_header, header());
        assert_eq!(sorted(decoded), sorted(image()));
        assert_eq!(decoded_header.offset, 42);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let bytes = encode(&header(), &image());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len} bytes");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped).is_err(), "byte {at} flipped");
        }
    }

    #[test]
    fn another_version_is_refused_by_name() {
        for version in [FORMAT_VERSION - 1, FORMAT_VERSION + 1] {
            let mut bytes = encode(&header(), &image());
            bytes[8..10].copy_from_slice(&version.to_le_bytes());
            assert_eq!(
                decode(&bytes).unwrap_err(),
                CorruptSnapshot::UnsupportedVersion { found: version }
            );
        }
        assert_eq!(
            decode(b"PK\x03\x04 this is a zip file ........").unwrap_err(),
            CorruptSnapshot::BadMagic
        );
    }
}
