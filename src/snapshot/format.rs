//! The snapshot file format: one partition's [`EngineImage`] and the input offset it
//! covers, checksummed end to end.
//!
//! ```text
//! magic        8 bytes  "STGSNAP\0"
//! version      u16      FORMAT_VERSION
//! flags        u16      bit 0: the "about" fields below are present (version 4 on)
//! fingerprint  u64      the model the state was built under
//! partition    i32
//! offset       i64      the next input offset: every message before it is in the state
//! topic        u16 length + UTF-8
//! about        (flag bit 0) model name (u16 length + UTF-8), watermark (i64 ms),
//!              written at (i64 ms, wall clock): what `stagestream inspect` shows
//! body         u64 length of what follows:
//!                u64 raw length, u32 chunk size, u32 chunk count, a u32 compressed
//!                length per chunk, then the chunks: the raw body cut every chunk size
//!                bytes, each an independent LZ4 block
//! crc32c       u32      over every byte before it
//! ```
//!
//! Version 5 records when each customer was first seen, and when it entered its stage
//! to the millisecond (it was whole seconds); version 4 added the "about" fields; version 3 cut the body into chunks so that encoding and decoding use every core (the
//! bytes do not depend on how many there are); version 2 (one LZ4 block with its size
//! prepended) is still read. Version 2 added when each customer entered its stage;
//! version 1 files are not read (the partition is rebuilt from the log). All integers
//! little-endian. The raw body holds the model shape, then the state column by column
//! (ids, then each field for every customer), which compresses well and decodes with
//! sequential reads. Decoding never trusts a length it has not checked: a file that
//! passes the checksum but contradicts itself is still refused, here or by
//! [`Engine::restore`](crate::core::Engine::restore).

use std::borrow::Cow;
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::sync::Arc;

use super::chunks::{compress_as_written, on_every_core, ChunkWriter};
use crate::core::{
    CustomerIds, CustomerImage, CustomerRef, DedupEntry, EngineImage, EventTime, Instant48, ModelShape,
    StageId, ThresholdId,
};

pub const MAGIC: [u8; 8] = *b"STGSNAP\0";
pub const FORMAT_VERSION: u16 = 5;
/// The header flag saying the "about" fields follow the topic.
const HAS_ABOUT: u16 = 1;
/// The first version with the "about" fields.
const ABOUT_VERSION: u16 = 4;
/// The first version with first-seen times and stage entry times in milliseconds.
const FIRST_SEEN_VERSION: u16 = 5;
/// A first-seen time the state did not record.
const UNKNOWN_TIME: i64 = i64::MIN;
/// The oldest version still read: its body is one LZ4 block, its size prepended.
const ONE_BLOCK_VERSION: u16 = 2;
/// How much raw body each LZ4 block of a version 3 body holds (the last holds the rest):
/// small enough to share out among cores, big enough that LZ4's 64 KiB window loses
/// nothing at the cuts.
const BODY_CHUNK: usize = 4 << 20;
/// LZ4 expands nothing more than 255-fold, so a raw length beyond this is corrupt.
const MAX_LZ4_RATIO: usize = 255;
const NOT_ARMED: u8 = u8::MAX;

/// Where a snapshot belongs and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub fingerprint: u64,
    pub topic: String,
    pub partition: i32,
    /// The next input offset to read after restoring this state.
    pub offset: i64,
    /// What the file says about itself for people; `None` in files before version 4.
    pub about: Option<About>,
}

/// A snapshot's description for `stagestream inspect`: not needed to restore it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct About {
    /// The model's name (`model.name`) when the state was saved.
    pub model: String,
    /// The partition's watermark when the state was saved.
    pub watermark: EventTime,
    /// When the snapshot was taken (wall clock).
    pub written_at: EventTime,
}

/// Why bytes are not a usable snapshot. Never retriable: the file is bad.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptSnapshot {
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error(
        "format version {found} is not supported (this build reads {ONE_BLOCK_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u16 },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed body: {0}")]
    Body(String),
}

/// Serialises `image` under `header` into memory, compressing on every core.
pub fn encode(header: &Header, image: &EngineImage) -> Vec<u8> {
    let mut out = io::Cursor::new(Vec::new());
    encode_to(header, image, &mut out).expect("writing to memory cannot fail");
    out.into_inner()
}

/// Serialises `image` under `header` into `out` from its current position, compressing
/// on every core and writing each compressed chunk as it comes, so the file is never
/// whole in memory (138 MB at 10M customers). The header's lengths and the chunk table
/// are written last, over placeholders. How many bytes were written.
///
/// # Errors
/// The first error `out` returned; what was written before it is garbage.
pub fn encode_to(header: &Header, image: &EngineImage, out: &mut (impl Write + Seek)) -> io::Result<u64> {
    encode_in_chunks(header, image, BODY_CHUNK, out)
}

fn encode_in_chunks(
    header: &Header,
    image: &EngineImage,
    chunk_size: usize,
    out: &mut (impl Write + Seek),
) -> io::Result<u64> {
    let raw_len = body_len(image);
    let count = raw_len.div_ceil(chunk_size);
    let start = out.stream_position()?;
    let mut prefix = Vec::with_capacity(64 + header.topic.len() + 4 * count);
    prefix.extend_from_slice(&MAGIC);
    prefix.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let flags = if header.about.is_some() { HAS_ABOUT } else { 0 };
    prefix.extend_from_slice(&flags.to_le_bytes());
    prefix.extend_from_slice(&header.fingerprint.to_le_bytes());
    prefix.extend_from_slice(&header.partition.to_le_bytes());
    prefix.extend_from_slice(&header.offset.to_le_bytes());
    put_str16(&mut prefix, &header.topic);
    if let Some(about) = &header.about {
        put_str16(&mut prefix, &about.model);
        prefix.extend_from_slice(&about.watermark.as_millis().to_le_bytes());
        prefix.extend_from_slice(&about.written_at.as_millis().to_le_bytes());
    }
    let section_at = prefix.len();
    prefix.extend_from_slice(&[0; 8]); // the section's length, once known
    prefix.extend_from_slice(&(raw_len as u64).to_le_bytes());
    prefix.extend_from_slice(&(chunk_size as u32).to_le_bytes());
    prefix.extend_from_slice(&(count as u32).to_le_bytes());
    let table_at = prefix.len();
    prefix.resize(table_at + 4 * count, 0); // each chunk's compressed length, as it comes
    out.write_all(&prefix)?;
    let mut delivered = 0;
    let mut chunks_len = 0;
    let mut chunks_crc = 0;
    let mut failed = None;
    let written = compress_as_written(
        chunk_size,
        |body| write_body(image, body),
        |compressed| {
            let at = table_at + 4 * delivered;
            prefix[at..at + 4].copy_from_slice(&(compressed.len() as u32).to_le_bytes());
            delivered += 1;
            chunks_len += compressed.len();
            chunks_crc = crc32c::crc32c_append(chunks_crc, compressed);
            if failed.is_none() {
                failed = out.write_all(compressed).err();
            }
        },
    );
    if let Some(error) = failed {
        return Err(error);
    }
    assert_eq!(written, raw_len, "body_len and write_body disagree");
    assert_eq!(delivered, count, "every chunk compressed");
    let section_len = (prefix.len() - section_at - 8 + chunks_len) as u64;
    prefix[section_at..section_at + 8].copy_from_slice(&section_len.to_le_bytes());
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&prefix), chunks_crc, chunks_len);
    out.write_all(&crc.to_le_bytes())?;
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(start))?;
    out.write_all(&prefix)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(end - start)
}

/// Checks and parses a whole snapshot file. The file's bytes are let go once
/// decompressed, and the raw body a chunk at a time as it is parsed, so that restoring
/// holds little more than the state it builds.
///
/// # Errors
/// [`CorruptSnapshot`] saying what is wrong; nothing partial is returned.
pub fn decode(bytes: Vec<u8>) -> Result<(Header, EngineImage), CorruptSnapshot> {
    const FIXED: usize = 8 + 2 + 2 + 8 + 4 + 8 + 2;
    if !bytes.starts_with(&MAGIC) && !MAGIC.starts_with(&bytes) {
        return Err(CorruptSnapshot::BadMagic);
    }
    if bytes.len() < FIXED + 8 + 4 {
        return Err(CorruptSnapshot::Truncated(bytes.len()));
    }
    let version = version_of(&bytes).expect("long enough");
    if !(ONE_BLOCK_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(CorruptSnapshot::UnsupportedVersion { found: version });
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
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
    let about = if version >= ABOUT_VERSION && flags & HAS_ABOUT != 0 {
        Some(About {
            model: reader.str16()?.to_owned(),
            watermark: EventTime::from_millis(reader.i64()?),
            written_at: EventTime::from_millis(reader.i64()?),
        })
    } else {
        None
    };
    let body_len = reader.len64()?;
    let body = reader.take(body_len)?;
    if !reader.bytes.is_empty() {
        return Err(CorruptSnapshot::Body(format!(
            "{} bytes after the body",
            reader.bytes.len()
        )));
    }
    let raw = if version == ONE_BLOCK_VERSION {
        let raw = lz4_flex::block::decompress_size_prepended(body)
            .map_err(|e| CorruptSnapshot::Body(e.to_string()))?;
        RawBody::whole(raw)
    } else {
        decompress_chunks(body)?
    };
    drop(bytes);
    let image = decode_body(raw, version)?;
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
        about,
    };
    Ok((header, image))
}

/// The format version of a snapshot file's bytes, if they are long enough to say.
pub fn version_of(bytes: &[u8]) -> Option<u16> {
    bytes.get(8..10).map(|v| u16::from_le_bytes([v[0], v[1]]))
}

/// The raw body of a version 3 body, its chunks shared out among the cores.
fn decompress_chunks(body: &[u8]) -> Result<RawBody, CorruptSnapshot> {
    let mut reader = Reader { bytes: body };
    let raw_len = reader.len64()?;
    let chunk_size = reader.u32()? as usize;
    let count = reader.u32()? as usize;
    if chunk_size == 0 || count != raw_len.div_ceil(chunk_size) {
        return Err(CorruptSnapshot::Body(format!(
            "{count} chunks of {chunk_size} bytes for {raw_len} raw bytes"
        )));
    }
    let lengths: Vec<usize> = reader
        .array::<4>(count)?
        .map(|l| u32::from_le_bytes(l) as usize)
        .collect();
    let mut compressed = Vec::with_capacity(count);
    for &len in &lengths {
        compressed.push(reader.take(len)?);
    }
    if !reader.bytes.is_empty() {
        return Err(CorruptSnapshot::Body(format!(
            "{} bytes after the chunks",
            reader.bytes.len()
        )));
    }
    let most_raw_len = body.len().saturating_mul(MAX_LZ4_RATIO);
    if raw_len > most_raw_len {
        return Err(CorruptSnapshot::Body(format!(
            "{raw_len} raw bytes cannot come from {} compressed",
            body.len()
        )));
    }
    // The chunks are allocated here and filled on every core: memory belongs to the
    // allocator arena of the thread that allocates it, and the parse, which frees the
    // chunks, builds the state on this thread. Allocated by the workers, the freed chunks
    // went back to their arenas and stayed resident beside the state (jemalloc keeps
    // freed pages ~10 s for reuse), so a restart's restore held the state and the whole
    // raw body at once: 1.29 GiB at 10M customers without messageIds, against 1.02 GiB
    // when allocated here.
    let work: Vec<(&[u8], Vec<u8>)> = compressed
        .into_iter()
        .enumerate()
        .map(|(i, compressed)| (compressed, vec![0u8; chunk_size.min(raw_len - i * chunk_size)]))
        .collect();
    let results = on_every_core(work, |(compressed, mut out)| {
        let len = out.len();
        match lz4_flex::block::decompress_into(compressed, &mut out) {
            Ok(written) if written == len => Ok(out),
            Ok(written) => Err(format!("a chunk holds {written} bytes, not {len}")),
            Err(error) => Err(error.to_string()),
        }
    });
    let chunks = results
        .into_iter()
        .collect::<Result<Vec<_>, String>>()
        .map_err(CorruptSnapshot::Body)?;
    Ok(RawBody {
        chunks,
        chunk_size,
        len: raw_len,
        at: 0,
        released: 0,
    })
}

/// A decompressed body in the chunks it was cut into (every chunk but the last
/// `chunk_size` bytes long), each freed once the parse is past it: at 10M customers the
/// raw body is 570 MB, as much again as the image parsed from it.
struct RawBody {
    chunks: Vec<Vec<u8>>,
    chunk_size: usize,
    len: usize,
    /// Where the parse is.
    at: usize,
    /// The chunks before this one are freed.
    released: usize,
}

impl RawBody {
    /// A body that is one block.
    fn whole(raw: Vec<u8>) -> Self {
        RawBody {
            chunk_size: raw.len().max(1),
            len: raw.len(),
            chunks: vec![raw],
            at: 0,
            released: 0,
        }
    }

    /// The next `len` bytes, checked against the end; the parse moves past them.
    fn take(&mut self, len: usize) -> Result<Range<usize>, CorruptSnapshot> {
        let left = self.len - self.at;
        if len > left {
            return Err(CorruptSnapshot::Body(format!("{len} bytes wanted, {left} left")));
        }
        let range = self.at..self.at + len;
        self.at += len;
        Ok(range)
    }

    /// The next `count` items of `N` bytes.
    fn take_items<const N: usize>(&mut self, count: usize) -> Result<Range<usize>, CorruptSnapshot> {
        self.take(items_len::<N>(count)?)
    }

    /// The next `count` items of `N` bytes, each made into a `T`.
    fn items<const N: usize, T>(
        &mut self,
        count: usize,
        make: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, CorruptSnapshot> {
        let range = self.take_items::<N>(count)?;
        let mut items = Vec::with_capacity(count);
        self.each(range, |item| items.push(make(item)));
        Ok(items)
    }

    /// Sets a field of each of `states` from the next column, one `N`-byte item per
    /// customer.
    fn column<const N: usize>(
        &mut self,
        states: &mut [CustomerImage],
        set: impl Fn(&mut CustomerImage, [u8; N]),
    ) -> Result<(), CorruptSnapshot> {
        let range = self.take_items::<N>(states.len())?;
        let mut states = states.iter_mut();
        self.each(range, |item| {
            set(states.next().expect("one item per customer"), item)
        });
        Ok(())
    }

    /// Calls `f` with each item of `N` bytes in `range` (from [`RawBody::take_items`]),
    /// a chunk at a time; an item cut by the end of a chunk is put back together.
    fn each<const N: usize>(&self, range: Range<usize>, mut f: impl FnMut([u8; N])) {
        let mut carry = [0u8; N];
        let mut carried = 0;
        for mut bytes in self.slices(range) {
            if carried > 0 {
                let taken = (N - carried).min(bytes.len());
                carry[carried..carried + taken].copy_from_slice(&bytes[..taken]);
                carried += taken;
                bytes = &bytes[taken..];
                if carried < N {
                    continue;
                }
                f(carry);
            }
            let mut items = bytes.chunks_exact(N);
            for item in &mut items {
                f(item.try_into().expect("chunks of N"));
            }
            let rest = items.remainder();
            carry[..rest.len()].copy_from_slice(rest);
            carried = rest.len();
        }
        debug_assert_eq!(carried, 0, "a range of whole items");
    }

    /// The parts of `range` in each chunk, in order.
    fn slices(&self, range: Range<usize>) -> impl Iterator<Item = &[u8]> {
        let chunks = if range.is_empty() {
            0..0
        } else {
            range.start / self.chunk_size..(range.end - 1) / self.chunk_size + 1
        };
        chunks.map(move |chunk| {
            let base = chunk * self.chunk_size;
            &self.chunks[chunk][range.start.max(base) - base..range.end.min(base + self.chunk_size) - base]
        })
    }

    /// The bytes of `range` (from [`RawBody::take`]), borrowed when one chunk holds them.
    fn bytes(&self, range: Range<usize>) -> Cow<'_, [u8]> {
        let mut slices = self.slices(range.clone());
        match (slices.next(), slices.next()) {
            (None, _) => Cow::Borrowed(&[]),
            (Some(only), None) => Cow::Borrowed(only),
            (Some(first), Some(second)) => {
                let mut joined = Vec::with_capacity(range.len());
                for slice in [first, second].into_iter().chain(slices) {
                    joined.extend_from_slice(slice);
                }
                Cow::Owned(joined)
            }
        }
    }

    /// `make` of the text of `range`, or why it is not UTF-8.
    fn text<T>(&self, range: Range<usize>, make: impl FnOnce(&str) -> T) -> Result<T, String> {
        let bytes = self.bytes(range);
        std::str::from_utf8(&bytes).map(make).map_err(|e| e.to_string())
    }

    /// Frees every chunk wholly before `offset`: the parse never looks back.
    fn release_before(&mut self, offset: usize) {
        let before = offset / self.chunk_size;
        for chunk in &mut self.chunks[self.released.min(before)..before] {
            *chunk = Vec::new();
        }
        self.released = self.released.max(before);
    }
}

impl Fields for RawBody {
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CorruptSnapshot> {
        let range = self.take(N)?;
        Ok((*self.bytes(range)).try_into().expect("N bytes taken"))
    }
}

/// Little-endian fields read in order, never past the end.
trait Fields {
    /// The next `N` bytes.
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CorruptSnapshot>;

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
}

/// How many bytes `count` items of `N` bytes take.
fn items_len<const N: usize>(count: usize) -> Result<usize, CorruptSnapshot> {
    count
        .checked_mul(N)
        .ok_or_else(|| CorruptSnapshot::Body(format!("{count} items overflow")))
}

/// The exact length [`write_body`] writes, so that the chunk table can be laid out
/// before the first chunk is compressed.
fn body_len(image: &EngineImage) -> usize {
    let shape = &image.shape;
    let shape_len: usize = [&shape.stages, &shape.thresholds, &shape.counters]
        .iter()
        .map(|list| 4 + list.iter().map(|item| 4 + item.len()).sum::<usize>())
        .sum();
    let fingerprint = 8;
    let times = 3 * 8;
    let counts = 8 + 8 + 8 + 8; // customers, arena bytes, counters, dedup entries
    fingerprint
        + shape_len
        + times
        + counts
        + image.ids.text_len()
        + image.customers.len() * PER_CUSTOMER
        + image.counters.len() * 4
        + image.dedup.len() * PER_DEDUP_ENTRY
}

/// Bytes per customer in the raw body besides its id: id length, last activity, stage,
/// armed threshold, ladder position, stage entered, first seen.
const PER_CUSTOMER: usize = 4 + 8 + 1 + 1 + 1 + 8 + 8;
/// Bytes per remembered messageId: customer, digest, seen at.
const PER_DEDUP_ENTRY: usize = 4 + 8 + 8;

fn write_body(image: &EngineImage, out: &mut ChunkWriter<impl FnMut(Vec<u8>) -> Vec<u8>>) {
    let customers = image.customers.len();
    let shape = &image.shape;
    out.put_array(shape.fingerprint.to_le_bytes());
    for list in [&shape.stages, &shape.thresholds, &shape.counters] {
        out.put_array((list.len() as u32).to_le_bytes());
        for item in list {
            out.put_array((item.len() as u32).to_le_bytes());
            out.put(item.as_bytes());
        }
    }
    for time in [image.newest_event, image.clock, image.dedup_next_sweep] {
        out.put_array(time.as_millis().to_le_bytes());
    }
    out.put_array((customers as u64).to_le_bytes());
    out.put_array((image.ids.text_len() as u64).to_le_bytes());
    for text in image.ids.block_texts() {
        out.put(text.as_bytes());
    }
    for length in image.ids.lengths() {
        out.put_array(length.to_le_bytes());
    }
    for customer in &image.customers {
        out.put_array(customer.last_activity.time().as_millis().to_le_bytes());
    }
    out.put_each(image.customers.iter().map(|c| c.stage.0));
    out.put_each(image.customers.iter().map(|c| c.armed.map_or(NOT_ARMED, |t| t.0)));
    out.put_each(image.customers.iter().map(|c| c.ladder));
    // Entry and first-seen times as how long before the last activity: mostly small
    // numbers, which compress several times better than instants.
    for customer in &image.customers {
        out.put_array(before_last_activity(customer, customer.stage_entered).to_le_bytes());
    }
    for customer in &image.customers {
        let first_seen = match customer.first_seen {
            Instant48::UNKNOWN => UNKNOWN_TIME,
            first_seen => before_last_activity(customer, first_seen),
        };
        out.put_array(first_seen.to_le_bytes());
    }
    out.put_array((image.counters.len() as u64).to_le_bytes());
    for &counter in &image.counters {
        out.put_array(counter.to_le_bytes());
    }
    out.put_array((image.dedup.len() as u64).to_le_bytes());
    for entry in &image.dedup {
        out.put_array(entry.customer.0.to_le_bytes());
        out.put_array(entry.digest.to_le_bytes());
        out.put_array(entry.seen_at.as_millis().to_le_bytes());
    }
}

/// How many milliseconds `time` is before the customer's last activity (negative when
/// after it).
fn before_last_activity(customer: &CustomerImage, time: Instant48) -> i64 {
    customer.last_activity.time().as_millis() - time.time().as_millis()
}

/// The instant `millis` before the customer's last activity.
fn from_last_activity(customer: &CustomerImage, millis: i64) -> Instant48 {
    Instant48::at(EventTime::from_millis(
        customer.last_activity.time().as_millis().saturating_sub(millis),
    ))
}

fn decode_body(mut raw: RawBody, version: u16) -> Result<EngineImage, CorruptSnapshot> {
    let fingerprint = raw.u64()?;
    let mut lists = [Vec::new(), Vec::new(), Vec::new()];
    for list in &mut lists {
        let count = raw.u32()? as usize;
        for _ in 0..count {
            let len = raw.u32()? as usize;
            let range = raw.take(len)?;
            list.push(raw.text(range, str::to_owned).map_err(CorruptSnapshot::Body)?);
        }
    }
    let [stages, thresholds, counters_shape] = lists;
    let newest_event = EventTime::from_millis(raw.i64()?);
    let clock = EventTime::from_millis(raw.i64()?);
    let dedup_next_sweep = EventTime::from_millis(raw.i64()?);
    let customers = raw.len64()?;
    let arena_len = raw.len64()?;
    let id_text = raw.take(arena_len)?;
    // The lengths follow the text they cut: read first, so the text is let go block by
    // block as the ids are built.
    let lengths = raw.items(customers, u32::from_le_bytes)?;
    let ids = CustomerIds::from_concatenated(arena_len, lengths.into_iter(), |block| {
        let block = id_text.start + block.start..id_text.start + block.end;
        let text = raw.text(block.clone(), |text| Arc::<str>::from(text))?;
        raw.release_before(block.end);
        Ok(text)
    })
    .map_err(CorruptSnapshot::Body)?;
    raw.release_before(raw.at);
    let mut states = raw.items(customers, |time| CustomerImage {
        last_activity: Instant48::at(EventTime::from_millis(i64::from_le_bytes(time))),
        stage: StageId(0),
        armed: None,
        ladder: 0,
        stage_entered: Instant48::UNKNOWN,
        first_seen: Instant48::UNKNOWN,
    })?;
    // The other columns, one pass each over the customers the first one made.
    raw.column(&mut states, |state, [stage]| state.stage = StageId(stage))?;
    raw.column(&mut states, |state, [armed]| {
        state.armed = (armed != NOT_ARMED).then_some(ThresholdId(armed));
    })?;
    raw.column(&mut states, |state, [ladder]| state.ladder = ladder)?;
    if version >= FIRST_SEEN_VERSION {
        raw.column(&mut states, |state, entered| {
            state.stage_entered = from_last_activity(state, i64::from_le_bytes(entered));
        })?;
        raw.column(&mut states, |state, first_seen| {
            state.first_seen = match i64::from_le_bytes(first_seen) {
                UNKNOWN_TIME => Instant48::UNKNOWN,
                millis => from_last_activity(state, millis),
            };
        })?;
    } else {
        // Whole seconds since the Unix epoch.
        raw.column(&mut states, |state, entered| {
            let millis = i64::from(u32::from_le_bytes(entered)) * 1_000;
            state.stage_entered = Instant48::at(EventTime::from_millis(millis));
        })?;
    }
    raw.release_before(raw.at);
    let counter_count = raw.len64()?;
    let counters = raw.items(counter_count, u32::from_le_bytes)?;
    raw.release_before(raw.at);
    let dedup_count = raw.len64()?;
    let dedup = raw.items(dedup_count, |entry: [u8; 20]| DedupEntry {
        customer: CustomerRef(u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"))),
        digest: u64::from_le_bytes(entry[4..12].try_into().expect("8 bytes")),
        seen_at: EventTime::from_millis(i64::from_le_bytes(entry[12..].try_into().expect("8 bytes"))),
    })?;
    if raw.at != raw.len {
        return Err(CorruptSnapshot::Body(format!(
            "{} bytes after the state",
            raw.len - raw.at
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
        ids,
        customers: states,
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

    /// `count` fixed-size items.
    fn array<const N: usize>(
        &mut self,
        count: usize,
    ) -> Result<impl ExactSizeIterator<Item = [u8; N]> + 'a, CorruptSnapshot> {
        let bytes = self.take(items_len::<N>(count)?)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|chunk| chunk.try_into().expect("chunks of N")))
    }

    fn str16(&mut self) -> Result<&'a str, CorruptSnapshot> {
        let len = u16::from_le_bytes(self.fixed()?);
        utf8(self.take(usize::from(len))?)
    }
}

impl Fields for Reader<'_> {
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CorruptSnapshot> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Engine, EngineSettings};
    use crate::decode::decode as decode_event;
    use crate::snapshot::chunks::write_chunks;

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
                &decode_event(line.as_bytes(), &settings.model)
                    .unwrap()
                    .into_event()
                    .unwrap(),
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
            about: Some(About {
                model: "five-stage".into(),
                watermark: EventTime::from_millis(1_767_225_600_000),
                written_at: EventTime::from_millis(1_767_225_900_000),
            }),
        }
    }

    fn sorted(mut image: EngineImage) -> EngineImage {
        image.dedup.sort_by_key(|e| (e.customer, e.digest));
        image
    }

    /// `bytes` with its checksum recomputed, as a writer that meant them would seal them.
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let end = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Where the body section starts: after the fixed fields, the topic and its length.
    fn body_at(header: &Header) -> usize {
        let about = header
            .about
            .as_ref()
            .map_or(0, |about| 2 + about.model.len() + 8 + 8);
        8 + 2 + 2 + 8 + 4 + 8 + 2 + header.topic.len() + about
    }

    /// `image` under [`header`] encoded into memory, its body cut every `chunk_size` bytes.
    fn in_chunks(image: &EngineImage, chunk_size: usize) -> Vec<u8> {
        let mut out = io::Cursor::new(Vec::new());
        encode_in_chunks(&header(), image, chunk_size, &mut out).unwrap();
        out.into_inner()
    }

    #[test]
    fn round_trips_in_one_chunk_or_many() {
        // 7 and 20: fixed-size fields straddle the chunks; 1: every field does.
        for chunk_size in [BODY_CHUNK, 64, 20, 7, 1] {
            let bytes = in_chunks(&image(), chunk_size);
            let (decoded_header, decoded) = decode(bytes).unwrap();
            assert_eq!(decoded_header, header());
            assert_eq!(sorted(decoded), sorted(image()), "chunks of {chunk_size} bytes");
        }
    }

    #[test]
    fn a_file_written_after_other_bytes_is_the_same_file() {
        let image = image();
        let alone = in_chunks(&image, 64);
        let mut out = io::Cursor::new(b"before".to_vec());
        out.seek(SeekFrom::End(0)).unwrap();
        let written = encode_in_chunks(&header(), &image, 64, &mut out).unwrap();
        assert_eq!(written, alone.len() as u64);
        assert_eq!(out.position(), 6 + written, "left at the end");
        assert_eq!(out.into_inner(), [b"before".as_slice(), &alone].concat());
    }

    #[test]
    fn a_chunked_raw_body_reads_as_one_and_frees_what_is_behind() {
        let whole: Vec<u8> = (0..=255u8).cycle().take(100).collect();
        let mut raw = RawBody {
            chunks: whole.chunks(7).map(<[u8]>::to_vec).collect(),
            chunk_size: 7,
            len: whole.len(),
            at: 3,
            released: 0,
        };
        let range = raw.take_items::<4>(24).unwrap();
        let mut items: Vec<[u8; 4]> = Vec::new();
        raw.each(range, |item| items.push(item));
        let expected: Vec<[u8; 4]> = whole[3..99]
            .chunks_exact(4)
            .map(|c| c.try_into().unwrap())
            .collect();
        assert_eq!(items, expected);
        assert_eq!(raw.at, 99);
        let mut wide: Vec<[u8; 20]> = Vec::new();
        raw.each(0..100, |item| wide.push(item));
        assert_eq!(wide.concat(), whole, "items wider than a chunk");
        assert!(raw.take(2).is_err(), "one byte left");
        for range in [0..0, 0..7, 5..9, 6..30, 98..100] {
            assert_eq!(&*raw.bytes(range.clone()), &whole[range]);
        }
        raw.release_before(15);
        assert!(raw.chunks[..2].iter().all(Vec::is_empty), "0..14 freed");
        assert_eq!(raw.chunks[2], whole[14..21], "14 is still to be read");
        assert_eq!(&*raw.bytes(15..40), &whole[15..40]);
        raw.release_before(3);
        assert_eq!(raw.released, 2, "never goes back");
    }

    /// Takes `room` bytes, then fails every write.
    struct FullDisk {
        bytes: io::Cursor<Vec<u8>>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let room = self.room - self.bytes.get_ref().len().min(self.room);
            if room == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
            }
            self.bytes.write(&bytes[..bytes.len().min(room)])
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.bytes.seek(to)
        }
    }

    #[test]
    fn a_write_error_is_returned_wherever_it_happens() {
        let whole = in_chunks(&image(), 64).len();
        for room in [0, 10, whole / 2, whole - 1] {
            let mut disk = FullDisk {
                bytes: io::Cursor::new(Vec::new()),
                room,
            };
            let error = encode_in_chunks(&header(), &image(), 64, &mut disk).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::StorageFull, "room for {room} bytes");
        }
    }

    /// The raw body of `image`, written in chunks of `chunk_size` bytes and joined.
    fn raw_body(image: &EngineImage, chunk_size: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut full = |mut chunk: Vec<u8>| {
            assert!(chunk.len() <= chunk_size);
            raw.extend_from_slice(&chunk);
            chunk.clear();
            chunk
        };
        let written = write_chunks(chunk_size, &mut full, |body| write_body(image, body));
        assert_eq!(written, raw.len());
        raw
    }

    #[test]
    fn the_raw_body_is_the_same_however_it_is_cut() {
        let image = image();
        assert!(!image.counters.is_empty() && !image.dedup.is_empty());
        let whole = raw_body(&image, BODY_CHUNK);
        for chunk_size in [1, 7, 64, 4096] {
            assert_eq!(
                raw_body(&image, chunk_size),
                whole,
                "chunks of {chunk_size} bytes"
            );
        }
    }

    #[test]
    fn the_bytes_do_not_depend_on_the_cores() {
        // Compression runs on every core; chunks are cut by size alone.
        let image = image();
        let raw = raw_body(&image, BODY_CHUNK);
        let chunks: Vec<Vec<u8>> = raw.chunks(64).map(lz4_flex::block::compress).collect();
        let at = body_at(&header()) + 8 + 8 + 4 + 4 + 4 * chunks.len();
        let bytes = in_chunks(&image, 64);
        assert_eq!(&bytes[at..bytes.len() - 4], chunks.concat().as_slice());
    }

    /// The raw body of [`image`] as versions 2 to 4 laid it out: no first-seen column,
    /// stage entry times in whole seconds (the columns before the counters).
    fn raw_body_before_version_5() -> Vec<u8> {
        let image = image();
        let raw = raw_body(&image, BODY_CHUNK);
        let customers = image.customers.len();
        let tail = 8 + 4 * image.counters.len() + 8 + PER_DEDUP_ENTRY * image.dedup.len();
        let entered_at = raw.len() - tail - 16 * customers;
        let mut old = raw[..entered_at].to_vec();
        for customer in &image.customers {
            let seconds = customer.stage_entered.time().as_millis() / 1_000;
            old.extend_from_slice(&(seconds as u32).to_le_bytes());
        }
        old.extend_from_slice(&raw[raw.len() - tail..]);
        old
    }

    /// What a file written before version 5 restores: no first-seen times (the test
    /// image's times are whole seconds, so nothing else is lost).
    fn image_before_version_5() -> EngineImage {
        let mut image = image();
        for customer in &mut image.customers {
            customer.first_seen = Instant48::UNKNOWN;
        }
        image
    }

    /// A file of `version` (2 to 4) holding [`image`] under `header`.
    fn old_file(header: &Header, version: u16) -> Vec<u8> {
        let current = encode(header, &image());
        let mut old = current[..body_at(header)].to_vec();
        old[8..10].copy_from_slice(&version.to_le_bytes());
        let raw = raw_body_before_version_5();
        let section = if version == ONE_BLOCK_VERSION {
            lz4_flex::block::compress_prepend_size(&raw)
        } else {
            let chunk = lz4_flex::block::compress(&raw);
            let mut section = Vec::new();
            section.extend_from_slice(&(raw.len() as u64).to_le_bytes());
            section.extend_from_slice(&(BODY_CHUNK as u32).to_le_bytes());
            section.extend_from_slice(&1u32.to_le_bytes());
            section.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            section.extend_from_slice(&chunk);
            section
        };
        old.extend_from_slice(&(section.len() as u64).to_le_bytes());
        old.extend_from_slice(&section);
        old.extend_from_slice(&[0; 4]);
        resealed(old)
    }

    #[test]
    fn files_of_versions_2_to_4_are_still_read() {
        let without_about = Header {
            about: None,
            ..header()
        };
        for (version, header) in [(2, &without_about), (3, &without_about), (4, &header())] {
            let (decoded_header, decoded) = decode(old_file(header, version)).unwrap();
            assert_eq!(decoded_header, *header, "version {version}");
            assert_eq!(
                sorted(decoded),
                sorted(image_before_version_5()),
                "version {version}"
            );
        }
        // Version 3 files say nothing about themselves; a current one does.
        let (with_about, decoded) = decode(encode(&self::header(), &image())).unwrap();
        assert_eq!(with_about.about.unwrap().model, "five-stage");
        assert!(decoded
            .customers
            .iter()
            .all(|c| c.first_seen != Instant48::UNKNOWN));
        assert_eq!(sorted(decoded), sorted(image()));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        for chunk_size in [BODY_CHUNK, 64] {
            let bytes = in_chunks(&image(), chunk_size);
            for len in 0..bytes.len() {
                assert!(decode(bytes[..len].to_vec()).is_err(), "truncated to {len} bytes");
            }
            for at in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[at] ^= 0x10;
                assert!(decode(flipped).is_err(), "byte {at} flipped");
            }
        }
    }

    #[test]
    fn a_sealed_but_inconsistent_chunk_table_is_refused() {
        let bytes = in_chunks(&image(), 64);
        // Body section: u64 section length, u64 raw length, u32 chunk size, u32 count.
        let raw_len_at = body_at(&header()) + 8;
        let chunk_size_at = raw_len_at + 8;
        let count_at = chunk_size_at + 4;
        let refused = |at: usize, value: &[u8]| {
            let mut edited = bytes.clone();
            edited[at..at + value.len()].copy_from_slice(value);
            match decode(resealed(edited)) {
                Err(CorruptSnapshot::Body(reason)) => reason,
                other => panic!("expected a malformed body, got {other:?}"),
            }
        };
        assert!(refused(chunk_size_at, &0u32.to_le_bytes()).contains("chunks of 0 bytes"));
        assert!(refused(chunk_size_at, &32u32.to_le_bytes()).contains("chunks of 32 bytes"));
        assert!(refused(count_at, &1u32.to_le_bytes()).contains("1 chunks"));
        assert!(refused(raw_len_at, &(1u64 << 40).to_le_bytes()).contains("chunks"));
        // A raw length and chunk size that agree with the table but promise more than
        // LZ4 can expand the chunks to: refused before anything is allocated.
        let count = u64::from(u32::from_le_bytes(
            bytes[count_at..count_at + 4].try_into().unwrap(),
        ));
        assert!(count > 1);
        let mut huge = bytes.clone();
        let raw_len = (count - 1) * u64::from(u32::MAX) + 1;
        huge[raw_len_at..raw_len_at + 8].copy_from_slice(&raw_len.to_le_bytes());
        huge[chunk_size_at..chunk_size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        match decode(resealed(huge)) {
            Err(CorruptSnapshot::Body(reason)) => assert!(reason.contains("cannot come from"), "{reason}"),
            other => panic!("expected a malformed body, got {other:?}"),
        }
    }

    #[test]
    fn another_version_is_refused_by_name() {
        for version in [ONE_BLOCK_VERSION - 1, FORMAT_VERSION + 1] {
            let mut bytes = encode(&header(), &image());
            bytes[8..10].copy_from_slice(&version.to_le_bytes());
            assert_eq!(
                decode(bytes).unwrap_err(),
                CorruptSnapshot::UnsupportedVersion { found: version }
            );
        }
        assert_eq!(
            decode(b"PK\x03\x04 this is a zip file ........".to_vec()).unwrap_err(),
            CorruptSnapshot::BadMagic
        );
    }
}
