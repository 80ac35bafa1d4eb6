//! The raw body of a snapshot in chunks: written through a [`ChunkWriter`] that cuts it
//! every chunk size bytes, each chunk compressed as an independent LZ4 block on every
//! core while the next is written ([`compress_as_written`]), and work spread over the
//! cores in item order ([`on_every_core`]). The layout of what is written is
//! `super::format`'s.

/// `task` over every item, the items split into one contiguous run per available core;
/// results in item order.
pub(super) fn on_every_core<T: Send, R: Send>(items: Vec<T>, task: impl Fn(T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores == 1 || items.len() < 2 {
        return items.into_iter().map(task).collect();
    }
    let per_core = items.len().div_ceil(cores);
    let mut runs = Vec::new();
    let mut items = items.into_iter();
    loop {
        let run: Vec<T> = items.by_ref().take(per_core).collect();
        if run.is_empty() {
            break;
        }
        runs.push(run);
    }
    let task = &task;
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || run.into_iter().map(task).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a snapshot worker panicked"))
            .collect()
    })
}

/// The raw body being written, cut every `chunk_size` bytes: each full chunk is handed
/// to `full`, which returns an empty buffer for the next one.
pub(super) struct ChunkWriter<F> {
    chunk: Vec<u8>,
    chunk_size: usize,
    written: usize,
    full: F,
}

impl<F: FnMut(Vec<u8>) -> Vec<u8>> ChunkWriter<F> {
    /// A few bytes: the common case costs one comparison, as a `Vec` push does.
    #[inline]
    pub fn put_array<const N: usize>(&mut self, bytes: [u8; N]) {
        if self.chunk_size - self.chunk.len() > N {
            self.chunk.extend_from_slice(&bytes);
        } else {
            self.put(&bytes);
        }
    }

    pub fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.chunk_size - self.chunk.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.chunk.extend_from_slice(now);
            bytes = rest;
            if self.chunk.len() == self.chunk_size {
                self.pass_on();
            }
        }
    }

    /// One byte per item.
    pub fn put_each(&mut self, mut bytes: impl Iterator<Item = u8>) {
        loop {
            let room = self.chunk_size - self.chunk.len();
            self.chunk.extend(bytes.by_ref().take(room));
            if self.chunk.len() < self.chunk_size {
                return;
            }
            self.pass_on();
        }
    }

    fn pass_on(&mut self) {
        self.written += self.chunk.len();
        let next = (self.full)(std::mem::take(&mut self.chunk));
        self.chunk = next;
    }

    /// Passes on the last, partial chunk; how many bytes were written in all.
    fn finish(mut self) -> usize {
        if !self.chunk.is_empty() {
            self.pass_on();
        }
        self.written
    }
}

/// A chunk on its way through [`compress_as_written`]: its place, and its bytes.
type Numbered = (usize, Vec<u8>);

/// Runs `write`, compressing the raw body it writes chunk by chunk as the chunks fill,
/// on one thread per core beside the writer's, and hands each chunk's LZ4 block to
/// `deliver` in order. The raw body (1.3 GB at 10M customers with two messageIds each)
/// never exists whole: a few chunks of it at a time, in buffers passed round again.
/// Blocks depend on `chunk_size` alone, never on the cores. How many raw bytes
/// `write` wrote.
pub(super) fn compress_as_written<W>(chunk_size: usize, write: W, mut deliver: impl FnMut(&[u8])) -> usize
where
    W: FnOnce(&mut ChunkWriter<&mut dyn FnMut(Vec<u8>) -> Vec<u8>>),
{
    let scratch = || vec![0u8; lz4_flex::block::get_maximum_output_size(chunk_size)];
    let compress = |raw: &[u8], scratch: &mut [u8]| {
        let len = lz4_flex::block::compress_into(raw, scratch).expect("sized for the worst case");
        scratch[..len].to_vec()
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores == 1 {
        let mut scratch = scratch();
        let mut full = |mut raw: Vec<u8>| {
            deliver(&compress(&raw, &mut scratch));
            raw.clear();
            raw
        };
        return write_chunks(chunk_size, &mut full, write);
    }
    // Compressed chunks back to the writer, each with its emptied raw buffer.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(Numbered, Vec<u8>)>();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                // One chunk waiting per worker: the writer stays at most a chunk ahead.
                let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Numbered>(1);
                let done_tx = done_tx.clone();
                scope.spawn(move || {
                    let mut scratch = scratch();
                    for (index, mut raw) in raw_rx {
                        let compressed = compress(&raw, &mut scratch);
                        raw.clear();
                        if done_tx.send(((index, compressed), raw)).is_err() {
                            return;
                        }
                    }
                });
                raw_tx
            })
            .collect();
        drop(done_tx);
        let mut in_order = InOrder::default();
        let mut sent = 0usize;
        let mut full = |raw: Vec<u8>| {
            workers[sent % workers.len()]
                .send((sent, raw))
                .expect("a snapshot compression worker stopped");
            sent += 1;
            match done_rx.try_recv() {
                Ok((chunk, raw)) => {
                    in_order.take(chunk, &mut deliver);
                    raw
                }
                Err(_) => Vec::with_capacity(chunk_size),
            }
        };
        let written = write_chunks(chunk_size, &mut full, write);
        drop(workers);
        for (chunk, _) in done_rx.iter() {
            in_order.take(chunk, &mut deliver);
        }
        debug_assert!(in_order.waiting.is_empty(), "a chunk never delivered");
        written
    })
}

/// Compressed chunks arriving in any order, delivered in index order.
#[derive(Default)]
struct InOrder {
    next: usize,
    waiting: std::collections::BTreeMap<usize, Vec<u8>>,
}

impl InOrder {
    fn take(&mut self, (index, chunk): Numbered, deliver: &mut impl FnMut(&[u8])) {
        self.waiting.insert(index, chunk);
        while let Some(chunk) = self.waiting.remove(&self.next) {
            deliver(&chunk);
            self.next += 1;
        }
    }
}

pub(super) fn write_chunks<W>(chunk_size: usize, full: &mut dyn FnMut(Vec<u8>) -> Vec<u8>, write: W) -> usize
where
    W: FnOnce(&mut ChunkWriter<&mut dyn FnMut(Vec<u8>) -> Vec<u8>>),
{
    let mut writer = ChunkWriter {
        chunk: Vec::with_capacity(chunk_size),
        chunk_size,
        written: 0,
        full,
    };
    write(&mut writer);
    writer.finish()
}
