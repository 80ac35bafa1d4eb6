//! The de-duplication window: which `messageId`s each customer sent recently.
//!
//! An event is a duplicate when its customer already had an applied event with the
//! same `messageId` whose time is within `window` of it. Ids are kept as XXH3 digests
//! (stable across runs, so the window can be snapshotted) in 16-byte slots: the
//! digest's low [`BLOCK_SHIFT`] bits give way to the customer's place in its block, so
//! one customer's ids never match another's, and the other 52 bits tell a customer's
//! ids apart (a new id falsely matches one of a customer's `k` ids within the window
//! with probability `k / 2^52`). An id is remembered while the partition's watermark
//! is within a window of its time (a customer's events arriving more than a window
//! behind the partition are not de-duplicated against each other). Entries past that
//! are swept out each time the watermark moves a quarter window, rather than one
//! random-access removal per event: pruning bounds memory (to about 1.25 windows of
//! ids), it never changes a decision, since a lookup already ignores them. A sweep visits one
//! block's table per applied event, so no event waits for more than one table (a few
//! thousand customers' ids, tens of microseconds): the whole pass at once held one event
//! for 100 ms (every id kept) to 155 ms (every id dropped) at 10M customers with two ids
//! each (`cargo bench --bench sweep`).
//!
//! The entries are sharded by [customer block](super::customers::BLOCK_SHIFT), one
//! hash table per block, so a snapshot can copy one block's entries without scanning
//! the others ([`super::Engine::begin_image`]).

use ahash::RandomState;
use hashbrown::HashTable;

use super::customers::{CustomerRef, BLOCK_SHIFT};
use super::image::DedupEntry;
use super::time::{EventTime, Span};

type Shard = HashTable<Slot>;

/// The bits of a tagged digest that hold the customer's place in its block.
const PLACE_MASK: u64 = (1 << BLOCK_SHIFT) - 1;

/// One remembered `messageId` in a block's table.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The digest, its low bits replaced by the customer's place in the block.
    tagged: u64,
    seen_at: EventTime,
}

impl Slot {
    fn entry(self, block: usize) -> DedupEntry {
        DedupEntry {
            customer: CustomerRef(((block as u32) << BLOCK_SHIFT) | (self.tagged & PLACE_MASK) as u32),
            digest: self.tagged & !PLACE_MASK,
            seen_at: self.seen_at,
        }
    }
}

/// One customer's `messageId`, hashed once for both the lookup and the insertion an
/// applied event makes ([`DedupWindow::key`]).
#[derive(Clone, Copy, Debug)]
pub struct DedupKey {
    block: usize,
    tagged: u64,
    hash: u64,
}

#[derive(Clone, Debug)]
pub struct DedupWindow {
    window: Span,
    hasher: RandomState,
    /// By customer block.
    shards: Vec<Shard>,
    len: usize,
    /// The next sweep starts once the watermark reaches this.
    next_sweep: EventTime,
    /// The block whose table the sweep under way visits next; `None` between sweeps.
    /// Not imaged: a restored window starts its next sweep at `next_sweep`, and the
    /// tables a cut-short sweep did not reach keep their stale ids until then.
    sweeping: Option<usize>,
}

impl DedupWindow {
    pub fn new(window: Span) -> Self {
        DedupWindow {
            window,
            hasher: RandomState::new(),
            shards: Vec::new(),
            len: 0,
            next_sweep: EventTime::MIN,
            sweeping: None,
        }
    }

    pub fn digest(message_id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(message_id.as_bytes())
    }

    /// The key of `customer`'s message with `digest` ([`DedupWindow::digest`]).
    pub fn key(&self, customer: CustomerRef, digest: u64) -> DedupKey {
        let tagged = (digest & !PLACE_MASK) | (u64::from(customer.0) & PLACE_MASK);
        DedupKey {
            block: customer.block(),
            tagged,
            hash: self.hasher.hash_one(tagged),
        }
    }

    /// Whether the customer's earlier event with this `messageId` is within the window
    /// of `at`, and still remembered at `watermark`: an id is remembered until the
    /// watermark is a window past its time, whenever the sweep drops it, so that
    /// sweeping never changes a decision.
    pub fn is_duplicate(&self, key: DedupKey, at: EventTime, watermark: EventTime) -> bool {
        self.shards
            .get(key.block)
            .and_then(|shard| shard.find(key.hash, |slot| slot.tagged == key.tagged))
            .is_some_and(|previous| {
                self.remembers(previous.seen_at, watermark)
                    && at.as_millis().abs_diff(previous.seen_at.as_millis()) <= self.window.as_millis() as u64
            })
    }

    /// Whether an id seen at `seen_at` is still remembered at `watermark`.
    #[inline]
    pub fn remembers(&self, seen_at: EventTime, watermark: EventTime) -> bool {
        seen_at >= watermark.minus(self.window)
    }

    /// Remembers an applied event.
    pub fn record(&mut self, key: DedupKey, at: EventTime) {
        if key.block >= self.shards.len() {
            self.shards.resize_with(key.block + 1, HashTable::new);
        }
        let hasher = &self.hasher;
        let entry = self.shards[key.block].entry(
            key.hash,
            |slot| slot.tagged == key.tagged,
            |slot| hasher.hash_one(slot.tagged),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut seen) => {
                let seen_at = &mut seen.get_mut().seen_at;
                *seen_at = (*seen_at).max(at);
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(Slot {
                    tagged: key.tagged,
                    seen_at: at,
                });
                self.len += 1;
            }
        }
    }

    /// Forgets every messageId of `customer` (an erasure): one pass over its block's
    /// table.
    pub fn forget(&mut self, customer: CustomerRef) {
        let place = u64::from(customer.0) & PLACE_MASK;
        if let Some(shard) = self.shards.get_mut(customer.block()) {
            let before = shard.len();
            shard.retain(|slot| slot.tagged & PLACE_MASK != place);
            self.len -= before - shard.len();
        }
    }

    /// Whether [`DedupWindow::sweep`] has anything to do at `watermark`.
    #[inline]
    pub fn sweep_due(&self, watermark: EventTime) -> bool {
        self.sweeping.is_some() || watermark >= self.next_sweep
    }

    /// Forgets what `watermark` has made unmatchable in one block's table: the next
    /// one of the sweep under way, or the first of a new sweep if a quarter window
    /// passed since the last one started. Postponing it changes no decision, only
    /// memory.
    #[inline]
    pub fn sweep(&mut self, watermark: EventTime) {
        if self.sweep_due(watermark) {
            self.sweep_one_table(watermark);
        }
    }

    /// One step of a due sweep ([`DedupWindow::sweep_due`]).
    #[inline(never)]
    fn sweep_one_table(&mut self, watermark: EventTime) {
        let block = self.sweeping.unwrap_or_else(|| {
            self.next_sweep = watermark.plus(Span::from_millis(self.window.as_millis() / 4));
            0
        });
        let horizon = watermark.minus(self.window);
        let hasher = &self.hasher;
        if let Some(shard) = self.shards.get_mut(block) {
            let before = shard.len();
            shard.retain(|slot| slot.seen_at >= horizon);
            // A shard keeps the table of its busiest time; once the window holds far
            // fewer of its customers' ids, give the memory back (with room to double).
            if shard.len() < shard.capacity() / 4 {
                shard.shrink_to(shard.len() * 2, |slot| hasher.hash_one(slot.tagged));
            }
            self.len -= before - shard.len();
        }
        self.sweeping = Some(block + 1).filter(|&next| next < self.shards.len());
    }

    /// The watermark at which the next sweep runs.
    pub fn next_sweep(&self) -> EventTime {
        self.next_sweep
    }

    /// Every remembered `messageId`, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = DedupEntry> + '_ {
        (0..self.shards.len()).flat_map(|block| self.entries_of(block))
    }

    /// The remembered `messageId`s of the customers in block `block`.
    pub fn entries_of(&self, block: usize) -> impl Iterator<Item = DedupEntry> + '_ {
        self.shards
            .get(block)
            .into_iter()
            .flatten()
            .map(move |slot| slot.entry(block))
    }

    /// A window holding `entries` (as [`DedupWindow::entries`] gave them).
    pub fn from_entries(
        window: Span,
        entries: impl Iterator<Item = DedupEntry> + Clone,
        next_sweep: EventTime,
    ) -> Self {
        let mut dedup = DedupWindow::new(window);
        // Sized first, so no shard rehashes while it fills.
        let mut per_block = Vec::new();
        for entry in entries.clone() {
            let block = entry.customer.block();
            if block >= per_block.len() {
                per_block.resize(block + 1, 0);
            }
            per_block[block] += 1;
        }
        dedup.shards = per_block.into_iter().map(HashTable::with_capacity).collect();
        for entry in entries {
            dedup.record(dedup.key(entry.customer, entry.digest), entry.seen_at);
        }
        dedup.next_sweep = next_sweep;
        dedup
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn t(hours: i64) -> EventTime {
        EventTime::from_millis(hours * HOUR)
    }

    #[test]
    fn matches_within_the_window_for_the_same_customer_only() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        let id = DedupWindow::digest("m-1");
        dedup.record(dedup.key(CustomerRef(0), id), t(100));
        assert!(dedup.is_duplicate(dedup.key(CustomerRef(0), id), t(100), t(100)));
        assert!(dedup.is_duplicate(dedup.key(CustomerRef(0), id), t(124), t(100)));
        assert!(dedup.is_duplicate(dedup.key(CustomerRef(0), id), t(76), t(100)));
        assert!(!dedup.is_duplicate(dedup.key(CustomerRef(0), id), t(125), t(100)));
        assert!(!dedup.is_duplicate(dedup.key(CustomerRef(1), id), t(100), t(100)));
        assert!(!dedup.is_duplicate(
            dedup.key(CustomerRef(0), DedupWindow::digest("m-2")),
            t(100),
            t(100)
        ));
    }

    #[test]
    fn an_id_is_forgotten_once_the_watermark_is_a_window_past_it_swept_or_not() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        let id = DedupWindow::digest("m-1");
        dedup.record(dedup.key(CustomerRef(0), id), t(100));
        // A customer's own events may be days behind the partition's watermark.
        assert!(dedup.is_duplicate(dedup.key(CustomerRef(0), id), t(101), t(124)));
        assert!(!dedup.is_duplicate(dedup.key(CustomerRef(0), id), t(101), t(125)));
        assert_eq!(dedup.len(), 1, "not swept, and still not matched");
    }

    #[test]
    fn prunes_what_the_watermark_left_behind_one_table_at_a_time() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        let [a, b, c] = ["m-a", "m-b", "m-c"].map(DedupWindow::digest);
        // Customers 0 and 2 share block 0; customer 9 is in block 2; block 1 is empty.
        dedup.record(dedup.key(CustomerRef(0), a), t(0));
        dedup.record(dedup.key(CustomerRef(9), b), t(1));
        dedup.record(dedup.key(CustomerRef(2), c), t(30));
        assert_eq!(dedup.len(), 3, "recording never sweeps");
        assert!(dedup.sweep_due(t(30)));
        dedup.sweep(t(30));
        assert_eq!(dedup.len(), 2, "block 0: t(0) is older than watermark - window");
        assert_eq!(dedup.entries_of(2).count(), 1, "block 2 is not reached yet");
        assert!(dedup.sweep_due(t(30)), "the sweep is under way");
        dedup.sweep(t(30));
        assert_eq!(dedup.len(), 2, "block 1 holds nothing");
        dedup.sweep(t(30));
        assert_eq!(dedup.len(), 1, "block 2: t(1) is too old as well");
        assert!(
            !dedup.sweep_due(t(30)),
            "done until a quarter window after it began"
        );
        assert!(!dedup.sweep_due(t(35)));
        assert!(dedup.sweep_due(t(36)));
        assert!(!dedup.is_duplicate(dedup.key(CustomerRef(0), a), t(0), t(30)));
        assert!(dedup.is_duplicate(dedup.key(CustomerRef(2), c), t(30), t(30)));
        assert_eq!(dedup.entries().count(), 1);
    }

    #[test]
    fn a_resighting_keeps_the_id_alive() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        let [a, b] = ["m-a", "m-b"].map(DedupWindow::digest);
        dedup.record(dedup.key(CustomerRef(0), a), t(0));
        dedup.record(dedup.key(CustomerRef(0), a), t(30));
        dedup.sweep(t(30));
        dedup.record(dedup.key(CustomerRef(0), b), t(40));
        dedup.sweep(t(40));
        assert!(dedup.is_duplicate(dedup.key(CustomerRef(0), a), t(31), t(40)));
    }

    #[test]
    fn entries_give_back_each_customer_and_the_digest_a_slot_keeps() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        let digest = DedupWindow::digest("m-1");
        // Every place in block 1, and the same digest for each: one entry apiece.
        let block: Vec<u32> = (1 << BLOCK_SHIFT..2 << BLOCK_SHIFT).collect();
        for &customer in &block {
            dedup.record(dedup.key(CustomerRef(customer), digest), t(1));
        }
        let mut entries: Vec<DedupEntry> = dedup.entries().collect();
        entries.sort_by_key(|entry| entry.customer);
        let expected: Vec<DedupEntry> = block
            .iter()
            .map(|&customer| DedupEntry {
                customer: CustomerRef(customer),
                digest: digest & !PLACE_MASK,
                seen_at: t(1),
            })
            .collect();
        assert_eq!(entries, expected);
        // A window rebuilt from them (as a restore does) decides the same.
        let rebuilt = DedupWindow::from_entries(dedup.window, entries.into_iter(), dedup.next_sweep());
        for &customer in &block {
            assert!(rebuilt.is_duplicate(rebuilt.key(CustomerRef(customer), digest), t(2), t(2)));
        }
        assert!(!rebuilt.is_duplicate(rebuilt.key(CustomerRef(0), digest), t(2), t(2)));
        assert!(!rebuilt.is_duplicate(rebuilt.key(CustomerRef(2 << BLOCK_SHIFT), digest), t(2), t(2)));
    }
}
