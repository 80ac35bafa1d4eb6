//! Interns customer ids to dense [`CustomerRef`]s in first-seen order.
//!
//! Ids are client-controlled (an `anonymousId` comes from a browser), so the index
//! hashes them with a per-instance random key (`ahash::RandomState`): nobody outside
//! can build ids that collide. Refs are handed out in the order customers are first
//! seen, which is a function of the input alone, so anything ordered by ref (ties in
//! the deadline index, the summary) is deterministic whatever the hash seed.
//!
//! The ids themselves live in [`CustomerIds`]: one string arena per block of customers
//! with a 4-byte end offset each, rather than a `String` per customer (4 bytes of
//! bookkeeping instead of 24 plus an allocation), and none at all in a full block whose
//! ids are all one length, as UUIDs are. A full block's arena never changes
//! again, so it is frozen and shared with every snapshot image that holds it.

use std::ops::Range;
use std::sync::Arc;

use ahash::RandomState;
use hashbrown::HashTable;

/// A customer's dense index, assigned in first-seen order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomerRef(pub u32);

impl CustomerRef {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The [block](BLOCK_SHIFT) the customer belongs to.
    pub fn block(self) -> usize {
        (self.0 >> BLOCK_SHIFT) as usize
    }
}

/// Customers are grouped in blocks of `1 << BLOCK_SHIFT` consecutive refs: the unit the
/// ids are stored in ([`CustomerIds`]), the de-duplication window is sharded by and a
/// snapshot image is copied in ([`crate::core::Engine::begin_image`]). A block of 4,096
/// customers holds ~100 KB of state plus their messageIds, and is copied in ~25-50 us
/// (median) on the development VM; its ids are shared, not
/// copied. Unit tests use blocks of four, so that their few customers cross many block
/// boundaries.
pub const BLOCK_SHIFT: u32 = if cfg!(test) { 2 } else { 12 };

/// How many blocks `customers` consecutive refs from 0 span.
pub fn blocks_for(customers: usize) -> usize {
    customers.div_ceil(1 << BLOCK_SHIFT)
}

/// The refs of block `block`, cut at `customers`.
pub fn block_range(block: usize, customers: usize) -> std::ops::Range<usize> {
    let start = block << BLOCK_SHIFT;
    start.min(customers)..((block + 1) << BLOCK_SHIFT).min(customers)
}

#[derive(Clone, Debug, Default)]
pub struct CustomerTable {
    hasher: RandomState,
    index: HashTable<CustomerRef>,
    ids: CustomerIds,
}

impl CustomerTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ref of `id`, if it was seen before.
    pub fn get(&self, id: &str) -> Option<CustomerRef> {
        let hash = self.hasher.hash_one(id);
        self.index.find(hash, |&r| self.ids.is(r, id)).copied()
    }

    /// The ref of `id`, interning it as the next ref if it is new.
    ///
    /// # Panics
    /// Past 4,294,967,295 customers in one table.
    pub fn intern(&mut self, id: &str) -> (CustomerRef, Interned) {
        let hash = self.hasher.hash_one(id);
        if let Some(&found) = self.index.find(hash, |&r| self.ids.is(r, id)) {
            return (found, Interned::Existing);
        }
        let new = CustomerRef(u32::try_from(self.ids.len()).expect("at most u32::MAX customers"));
        self.ids.push(id);
        let (ids, hasher) = (&self.ids, &self.hasher);
        self.index
            .insert_unique(hash, new, |&r| hasher.hash_one(ids.get(r)));
        (new, Interned::New)
    }

    /// Takes `customer`'s id out of the index: [`CustomerTable::get`] no longer finds
    /// it and the ref is never handed out again. Its text stays until the table is
    /// rebuilt from the ids that remain.
    pub fn remove(&mut self, customer: CustomerRef) {
        let hash = self.hasher.hash_one(self.ids.get(customer));
        if let Ok(entry) = self.index.find_entry(hash, |&r| r == customer) {
            entry.remove();
        }
    }

    /// Every id, by ref, as [`crate::core::EngineImage`] holds them: cloning it shares
    /// all but the last block's ids.
    pub fn ids(&self) -> &CustomerIds {
        &self.ids
    }

    /// Rebuilds a table from [`CustomerTable::ids`], refusing a repeated id.
    ///
    /// # Errors
    /// The repeated id, in words.
    pub fn from_ids(ids: CustomerIds) -> Result<Self, String> {
        let mut table = CustomerTable {
            hasher: RandomState::new(),
            index: HashTable::with_capacity(ids.len()),
            ids,
        };
        let (ids, hasher) = (&table.ids, &table.hasher);
        let hashed = (0..ids.len())
            .map(|i| {
                let customer = CustomerRef(i as u32);
                (hasher.hash_one(ids.get(customer)), customer)
            })
            .collect();
        for (hash, customer) in by_table_region(hashed) {
            // Refs now come in no order: the id is read only when a control byte matches.
            let same_id = |&r: &CustomerRef| ids.is(r, ids.get(customer));
            if table.index.find(hash, same_id).is_some() {
                return Err(format!("customer id {:?} appears twice", ids.get(customer)));
            }
            table
                .index
                .insert_unique(hash, customer, |&r| hasher.hash_one(ids.get(r)));
        }
        Ok(table)
    }

    /// The id of `customer`.
    ///
    /// # Panics
    /// If `customer` did not come from this table.
    pub fn id(&self, customer: CustomerRef) -> &str {
        self.ids.get(customer)
    }
}

/// Customer ids by ref, append-only, in chunks of one [block](BLOCK_SHIFT) each: an
/// arena of the block's ids concatenated, and where each ends in it (for a full block of
/// one-length ids, just the length: `Cut`). A full chunk never
/// changes again, so it is frozen behind an `Arc`, and a clone (the snapshot image's
/// copy, [`crate::core::Engine::begin_image`]) shares every frozen chunk and copies
/// only the open one, at most one block's ids. At 10M customers with 36-character ids
/// that keeps 381 MiB out of each image.
///
/// Invariant: every block before the last is frozen (`frozen.len() == len >>
/// BLOCK_SHIFT`), a full block is cut `Cut::Uniform` exactly when its ids are all one
/// length, and `open_length` is that length for the open block, so two equal lists of
/// ids are chunked alike and compare equal. A lookup compares a candidate's length
/// before its text ([`CustomerIds::is`]), and cuts one-length ids by arithmetic in the
/// open block as in a frozen one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerIds {
    frozen: Vec<IdChunk>,
    /// The last block's ids, concatenated, while it fills.
    open_text: String,
    /// `open_ends[i]` is where the open block's `i`th id ends in `open_text`.
    open_ends: Vec<u32>,
    /// The length of every id of the open block while they all have one (`None` when
    /// it is empty or two differ): a lookup cuts them as it cuts a `Cut::Uniform` block.
    open_length: Option<u32>,
}

/// A full block's ids, concatenated in `text` and cut where [`Cut`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdChunk {
    text: Arc<str>,
    cut: Cut,
}

/// Where a frozen block's ids end in its text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cut {
    /// Every id of the block is this many bytes long (UUIDs, the usual case): the
    /// `i`th starts at `i * length`, so a lookup goes from its ref straight to the text
    /// and the block keeps no table of ends (16 KiB a block: at 10M customers the
    /// engine's resident memory fell by 57 MiB).
    Uniform(u32),
    /// `ends[i]` is where the `i`th id ends.
    Ends(Arc<[u32]>),
}

impl IdChunk {
    /// Freezes a full block's ids, `ends[i]` where the `i`th ends in `text`, all
    /// `uniform` bytes long if that is known.
    fn new(text: Arc<str>, ends: &[u32], uniform: Option<u32>) -> Self {
        IdChunk {
            text,
            cut: match uniform {
                Some(length) => Cut::Uniform(length),
                None => Cut::Ends(Arc::from(ends)),
            },
        }
    }

    fn cuts(&self) -> Cuts<'_> {
        match &self.cut {
            Cut::Uniform(length) => Cuts::Uniform(*length),
            Cut::Ends(ends) => Cuts::Ends(ends),
        }
    }
}

/// Where a block's ids end in its text, frozen ([`Cut`]) or open alike.
#[derive(Clone, Copy)]
enum Cuts<'a> {
    Uniform(u32),
    Ends(&'a [u32]),
}

impl Cuts<'_> {
    /// The byte range of the `place`th id.
    #[inline]
    fn range(self, place: usize) -> Range<usize> {
        match self {
            Cuts::Uniform(length) => place * length as usize..(place + 1) * length as usize,
            Cuts::Ends(ends) => {
                let start = if place == 0 { 0 } else { ends[place - 1] as usize };
                start..ends[place] as usize
            }
        }
    }

    /// The length of the `place`th id, known without reading the text.
    #[inline]
    fn length(self, place: usize) -> usize {
        self.range(place).len()
    }
}

/// The length shared by every one of `ends`' ids, if they share one.
fn uniform_length(ends: &[u32]) -> Option<u32> {
    let first = u64::from(*ends.first()?);
    ends.iter()
        .zip(1..)
        .all(|(&end, i)| u64::from(end) == first * i)
        .then_some(first as u32)
}

const BLOCK_LEN: usize = 1 << BLOCK_SHIFT;

impl CustomerIds {
    pub fn len(&self) -> usize {
        (self.frozen.len() << BLOCK_SHIFT) + self.open_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of `customer`.
    ///
    /// # Panics
    /// If `customer` is not below [`CustomerIds::len`].
    #[inline]
    pub fn get(&self, customer: CustomerRef) -> &str {
        let (text, cuts, place) = self.locate(customer);
        &text[cuts.range(place)]
    }

    /// Whether `customer`'s id is `id`: [`CustomerIds::get`] compared, without
    /// reading the text when the lengths differ (the lookup's check of a candidate).
    ///
    /// # Panics
    /// If `customer` is not below [`CustomerIds::len`].
    #[inline]
    pub fn is(&self, customer: CustomerRef, id: &str) -> bool {
        let (text, cuts, place) = self.locate(customer);
        // Slices compare their lengths before their bytes.
        text.as_bytes()[cuts.range(place)] == *id.as_bytes()
    }

    /// The text of `customer`'s block, where its ids are cut, and the customer's place.
    #[inline]
    fn locate(&self, customer: CustomerRef) -> (&str, Cuts<'_>, usize) {
        let place = customer.index() & (BLOCK_LEN - 1);
        match self.frozen.get(customer.block()) {
            Some(chunk) => (&chunk.text, chunk.cuts(), place),
            None => (&self.open_text, self.open_cuts(), place),
        }
    }

    fn open_cuts(&self) -> Cuts<'_> {
        self.open_length
            .map_or(Cuts::Ends(&self.open_ends), Cuts::Uniform)
    }

    /// Appends `id` as the next ref's.
    ///
    /// # Panics
    /// If one block's ids come to more than 4 GiB (4,096 ids of 1 MiB each would not).
    pub fn push(&mut self, id: &str) {
        let end = u32::try_from(self.open_text.len() + id.len()).expect("a block's ids fit in 4 GiB");
        let length = id.len() as u32;
        self.open_length = match self.open_length {
            _ if self.open_ends.is_empty() => Some(length),
            same @ Some(uniform) if uniform == length => same,
            _ => None,
        };
        self.open_text.push_str(id);
        self.open_ends.push(end);
        if self.open_ends.len() == BLOCK_LEN {
            let text = Arc::from(self.open_text.as_str());
            self.frozen
                .push(IdChunk::new(text, &self.open_ends, self.open_length.take()));
            self.open_text.clear();
            self.open_ends.clear();
        }
    }

    /// Bytes of id text, all blocks together.
    pub fn text_len(&self) -> usize {
        self.frozen.iter().map(|chunk| chunk.text.len()).sum::<usize>() + self.open_text.len()
    }

    /// Each block's ids, concatenated: together, every id in ref order.
    pub fn block_texts(&self) -> impl Iterator<Item = &str> {
        self.frozen
            .iter()
            .map(|chunk| &*chunk.text)
            .chain(std::iter::once(self.open_text.as_str()))
    }

    /// Each id's length in bytes, in ref order: where [`CustomerIds::block_texts`] are
    /// cut.
    pub fn lengths(&self) -> impl Iterator<Item = u32> + '_ {
        let frozen = self.frozen.iter().map(|chunk| (chunk.cuts(), BLOCK_LEN));
        let open = std::iter::once((self.open_cuts(), self.open_ends.len()));
        frozen
            .chain(open)
            .flat_map(|(cuts, count)| (0..count).map(move |place| cuts.length(place) as u32))
    }

    /// The ids cut at `lengths` from an arena of `text_len` bytes, one per ref, the
    /// arena read a block at a time: `block_text(range)` returns its bytes in `range` as
    /// text, or why they are not (so the caller can let go of what it has handed over).
    /// Refuses anything inconsistent: an id past the end of the arena or ending inside a
    /// character, text left over after the last id, more ids than a `u32` ref counts.
    ///
    /// # Errors
    /// What is inconsistent, in words.
    pub fn from_concatenated(
        text_len: usize,
        lengths: impl ExactSizeIterator<Item = u32>,
        mut block_text: impl FnMut(Range<usize>) -> Result<Arc<str>, String>,
    ) -> Result<Self, String> {
        let count = lengths.len();
        if u32::try_from(count).is_err() {
            return Err(format!("{count} customers; at most u32::MAX fit"));
        }
        let mut ids = CustomerIds {
            frozen: Vec::with_capacity(count >> BLOCK_SHIFT),
            ..CustomerIds::default()
        };
        // A block's text, checked against where its ids end.
        let mut text_of = |block: usize, range: Range<usize>, ends: &[u32]| {
            let text = block_text(range)?;
            match ends.iter().position(|&end| !text.is_char_boundary(end as usize)) {
                Some(i) => Err(format!(
                    "customer id {} ends inside a character",
                    (block << BLOCK_SHIFT) + i
                )),
                None => Ok(text),
            }
        };
        let (mut block_start, mut end) = (0usize, 0usize);
        let mut ends = Vec::with_capacity(BLOCK_LEN.min(count));
        for (i, length) in lengths.enumerate() {
            end += length as usize;
            if end > text_len {
                return Err(format!("customer id {i} ends at {end}, outside the id arena"));
            }
            let local_end = u32::try_from(end - block_start)
                .map_err(|_| format!("block {} of customer ids is over 4 GiB", i >> BLOCK_SHIFT))?;
            ends.push(local_end);
            if ends.len() == BLOCK_LEN {
                let text = text_of(ids.frozen.len(), block_start..end, &ends)?;
                ids.frozen.push(IdChunk::new(text, &ends, uniform_length(&ends)));
                ends.clear();
                block_start = end;
            }
        }
        if end != text_len {
            return Err(format!(
                "{} bytes of the id arena after the last customer id",
                text_len - end
            ));
        }
        ids.open_text = text_of(ids.frozen.len(), block_start..end, &ends)?.to_string();
        ids.open_length = uniform_length(&ends);
        ids.open_ends = ends;
        Ok(ids)
    }
}

/// Whether [`CustomerTable::intern`] saw the id before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interned {
    New,
    Existing,
}

/// How many regions [`by_table_region`] orders entries into: a region of a 10M-entry
/// index (16M slots of 4 bytes and their control bytes) is ~320 KB, within a core's L2.
const TABLE_REGIONS: usize = 1 << 8;

/// `hashed`, reordered in place so that inserting them into a table sized for as many
/// fills it one region at a time: each hash goes to the region of the table its probe
/// starts in (the hash's low bits, as in hashbrown). Inserted in ref order instead,
/// every insert lands somewhere random in a table far bigger than the caches: at 10M
/// customers the inserts took 0.8-1.2 s that way, 0.22-0.31 s in region order.
/// Only the order changes, never the entries, so a
/// wrong guess at the table's layout would only cost speed. In place (one digit of an
/// American flag sort) because a reordered copy was 160 MB at 10M customers, during a
/// restore's peak.
fn by_table_region(mut hashed: Vec<(u64, CustomerRef)>) -> Vec<(u64, CustomerRef)> {
    // hashbrown's slot count: a power of two at most 7/8 full.
    let slots = (hashed.len().max(8) * 8 / 7).next_power_of_two();
    let shift = slots
        .trailing_zeros()
        .saturating_sub(TABLE_REGIONS.trailing_zeros());
    let region = |hash: u64| (hash as usize & (slots - 1)) >> shift;
    let mut ends = vec![0usize; TABLE_REGIONS];
    for &(hash, _) in &hashed {
        ends[region(hash)] += 1;
    }
    let mut start = 0;
    let mut next = Vec::with_capacity(TABLE_REGIONS);
    for end in &mut ends {
        next.push(start);
        start += *end;
        *end = start;
    }
    // Each region's first place not yet holding one of its own: an entry taken from
    // there is swapped into its own region's, until one belonging here comes back.
    for home in 0..TABLE_REGIONS {
        while next[home] < ends[home] {
            let mut entry = hashed[next[home]];
            loop {
                let belongs = region(entry.0);
                if belongs == home {
                    break;
                }
                std::mem::swap(&mut entry, &mut hashed[next[belongs]]);
                next[belongs] += 1;
            }
            hashed[next[home]] = entry;
            next[home] += 1;
        }
    }
    hashed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_in_first_seen_order() {
        let mut table = CustomerTable::default();
        assert_eq!(table.intern("b"), (CustomerRef(0), Interned::New));
        assert_eq!(table.intern("a"), (CustomerRef(1), Interned::New));
        assert_eq!(table.intern("b"), (CustomerRef(0), Interned::Existing));
        assert_eq!(table.intern("é🙂"), (CustomerRef(2), Interned::New));
        assert_eq!(table.get("a"), Some(CustomerRef(1)));
        assert_eq!(table.get("c"), None);
        assert_eq!(table.id(CustomerRef(2)), "é🙂");
        assert_eq!(table.len(), 3);
    }

    /// The ids of `table`, concatenated, and their lengths: the snapshot's encoding.
    fn concatenated(table: &CustomerTable) -> (String, Vec<u32>) {
        let (mut text, mut lengths) = (String::new(), Vec::new());
        for customer in 0..table.len() {
            let id = table.id(CustomerRef(customer as u32));
            text.push_str(id);
            lengths.push(id.len() as u32);
        }
        (text, lengths)
    }

    /// [`CustomerIds::from_concatenated`] over one string, asked for each block's text
    /// exactly once and in order.
    fn from_text(text: &str, lengths: &[u32]) -> Result<CustomerIds, String> {
        let mut next = 0;
        CustomerIds::from_concatenated(text.len(), lengths.iter().copied(), |range| {
            assert_eq!(range.start, next, "blocks asked for in order, each once");
            next = range.end;
            std::str::from_utf8(&text.as_bytes()[range])
                .map(Arc::from)
                .map_err(|e| format!("not UTF-8: {e}"))
        })
    }

    #[test]
    fn rebuilds_from_its_ids_and_refuses_inconsistent_ones() {
        let mut table = CustomerTable::default();
        for id in ["b", "é🙂", "", "a", "c", "d"] {
            table.intern(id);
        }
        let (text, lengths) = concatenated(&table);
        let ids = from_text(&text, &lengths).unwrap();
        assert_eq!(&ids, table.ids(), "cut into the same blocks");
        let rebuilt = CustomerTable::from_ids(ids).unwrap();
        assert_eq!(rebuilt.get("é🙂"), Some(CustomerRef(1)));
        assert_eq!(rebuilt.get("a"), Some(CustomerRef(3)));
        assert_eq!(rebuilt.get("d"), Some(CustomerRef(5)));
        assert_eq!(rebuilt.id(CustomerRef(2)), "");
        let err = |text: &str, lengths: &[u32]| {
            from_text(text, lengths)
                .and_then(CustomerTable::from_ids)
                .unwrap_err()
        };
        assert!(err("ab", &[1, 2]).contains("outside"));
        assert!(
            err("abcdéf", &[1, 1, 1, 2, 2]).contains("not UTF-8"),
            "a block cut inside a character"
        );
        assert!(
            err("aébc", &[2, 3]).contains("customer id 0 ends inside a character"),
            "an id cut inside one"
        );
        assert!(err("abc", &[1, 1]).contains("1 bytes of the id arena after"));
        assert!(err("aa", &[1, 1]).contains("twice"));
        assert!(
            err("abcdefa", &[1, 1, 1, 1, 1, 1, 1]).contains("\"a\" appears twice"),
            "across blocks"
        );
    }

    #[test]
    fn a_clone_keeps_the_ids_it_was_taken_with() {
        let mut table = CustomerTable::default();
        for id in ["a", "b", "c", "d", "e"] {
            table.intern(id);
        }
        let image = table.ids().clone();
        for id in ["f", "g", "h", "i"] {
            table.intern(id);
        }
        assert_eq!(image.len(), 5);
        let held: Vec<&str> = (0..5).map(|r| image.get(CustomerRef(r))).collect();
        assert_eq!(held, ["a", "b", "c", "d", "e"]);
        assert_eq!(image.text_len(), 5);
        assert_eq!(
            table.ids().block_texts().collect::<Vec<_>>(),
            ["abcd", "efgh", "i"],
            "two frozen blocks of four, one open"
        );
    }

    #[test]
    fn cuts_a_block_of_one_length_and_one_of_many_alike() {
        let ids = ["ab", "cd", "ef", "gh", "a", "bcd", "é", "fg", "hi"];
        let mut table = CustomerTable::default();
        for id in ids {
            table.intern(id);
        }
        let held = table.ids();
        assert!(
            matches!(held.frozen[0].cut, Cut::Uniform(2)),
            "{:?}",
            held.frozen[0]
        );
        assert!(matches!(held.frozen[1].cut, Cut::Ends(_)), "{:?}", held.frozen[1]);
        let read: Vec<&str> = (0..9).map(|r| held.get(CustomerRef(r))).collect();
        assert_eq!(read, ids);
        assert_eq!(held.lengths().collect::<Vec<_>>(), ids.map(|id| id.len() as u32));
        for (r, id) in ids.iter().enumerate() {
            assert_eq!(table.get(id), Some(CustomerRef(r as u32)));
        }
    }

    #[test]
    fn cuts_the_open_block_by_one_length_until_an_id_of_another_arrives() {
        let mut table = CustomerTable::default();
        let mut seen = Vec::new();
        for id in ["hi", "jk", "l", "mn"] {
            table.intern(id);
            seen.push(id);
            let held = table.ids();
            let uniform = seen.iter().all(|s| s.len() == seen[0].len());
            assert_eq!(held.open_length, uniform.then_some(2), "after {seen:?}");
            for (r, id) in seen.iter().enumerate() {
                let customer = CustomerRef(r as u32);
                assert_eq!(held.get(customer), *id);
                assert_eq!(table.get(id), Some(customer));
                assert!(held.is(customer, id));
                assert!(!held.is(customer, "zz") && !held.is(customer, "") && !held.is(customer, "hij"));
            }
            // A rebuilt copy cuts its open block the same way.
            let (text, lengths) = concatenated(&table);
            assert_eq!(from_text(&text, &lengths).as_ref(), Ok(held));
        }
        assert_eq!(table.get("h"), None);
    }

    #[test]
    fn table_region_order_is_a_permutation_sorted_by_region() {
        for count in [0usize, 1, 7, 1_000, 50_000] {
            // splitmix64: hashes spread over every bit, as a real hasher's are.
            let mut state = count as u64;
            let hashed: Vec<(u64, CustomerRef)> = (0..count as u32)
                .map(|i| {
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    (z ^ (z >> 31), CustomerRef(i))
                })
                .collect();
            let ordered = by_table_region(hashed.clone());
            let mut sorted_in = hashed.clone();
            let mut sorted_out = ordered.clone();
            sorted_in.sort_unstable();
            sorted_out.sort_unstable();
            assert_eq!(sorted_out, sorted_in, "{count}: the same entries");
            // The region is the top 8 of the bits hashbrown takes its first slot from.
            let slots = (count.max(8) * 8 / 7).next_power_of_two() as u64;
            let region = |hash: u64| (hash & (slots - 1)) >> slots.trailing_zeros().saturating_sub(8);
            assert!(
                ordered.windows(2).all(|w| region(w[0].0) <= region(w[1].0)),
                "{count}: region by region"
            );
        }
    }

    #[test]
    fn rebuilds_many_in_table_order() {
        let mut table = CustomerTable::default();
        for i in 0..50_000 {
            table.intern(&format!("customer-{i}"));
        }
        let (text, lengths) = concatenated(&table);
        let ids = from_text(&text, &lengths).unwrap();
        assert_eq!(&ids, table.ids(), "cut into the same blocks");
        let rebuilt = CustomerTable::from_ids(ids).unwrap();
        for i in 0..50_000 {
            assert_eq!(rebuilt.get(&format!("customer-{i}")), Some(CustomerRef(i)));
        }
        assert_eq!(rebuilt.get("customer-50000"), None);
        // The last id repeats one from the middle: caught whatever order refs come in.
        let repeated = format!("{text}customer-25000");
        let mut lengths = lengths;
        lengths.push("customer-25000".len() as u32);
        let error = from_text(&repeated, &lengths)
            .and_then(CustomerTable::from_ids)
            .unwrap_err();
        assert!(error.contains("\"customer-25000\" appears twice"), "{error}");
    }

    #[test]
    fn survives_growth() {
        let mut table = CustomerTable::default();
        for i in 0..10_000 {
            table.intern(&format!("customer-{i}"));
        }
        for i in (0..10_000).step_by(97) {
            let id = format!("customer-{i}");
            assert_eq!(table.get(&id), Some(CustomerRef(i)));
            assert_eq!(table.id(CustomerRef(i)), id);
        }
    }
}
