//! Interns customer ids to dense [`CustomerRef`]s in first-seen order.
//!
//! Ids are client-controlled (an `anonymousId` comes from a browser), so the index
//! hashes them with a per-instance random key (`ahash::RandomState`): nobody outside
//! can build ids that collide. Refs are handed out in the order customers are first
//! seen, which is a function of the input alone, so anything ordered by ref (ties in
//! the deadline index, the summary) is deterministic whatever the hash seed.
//!
//! All ids live in one string arena with an offset each, rather than a `String` per
//! customer: 8 bytes of bookkeeping instead of 24 plus an allocation.

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
/// de-duplication window is sharded by and a snapshot image is copied in
/// ([`crate::core::Engine::begin_image`]). A block of 4,096 customers holds ~100 KB of
/// state plus their ids and messageIds, and is copied in ~50-150 us on the development
/// VM (docs/performance.md); unit tests use blocks of four, so that their few customers
/// cross many block boundaries.
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
    /// Every id, concatenated in ref order.
    arena: String,
    /// `ends[r]` is where ref `r`'s id ends in `arena`; it starts where `r - 1` ends.
    ends: Vec<u64>,
}

impl CustomerTable {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The ref of `id`, if it was seen before.
    pub fn get(&self, id: &str) -> Option<CustomerRef> {
        let hash = self.hasher.hash_one(id);
        self.index.find(hash, |&r| self.id(r) == id).copied()
    }

    /// The ref of `id`, interning it as the next ref if it is new.
    ///
    /// # Panics
    /// Past 4,294,967,295 customers in one table.
    pub fn intern(&mut self, id: &str) -> (CustomerRef, Interned) {
        let hash = self.hasher.hash_one(id);
        if let Some(&found) = self
            .index
            .find(hash, |&r| id_at(&self.arena, &self.ends, r) == id)
        {
            return (found, Interned::Existing);
        }
        let new = CustomerRef(u32::try_from(self.ends.len()).expect("at most u32::MAX customers"));
        self.arena.push_str(id);
        self.ends.push(self.arena.len() as u64);
        let (arena, ends, hasher) = (&self.arena, &self.ends, &self.hasher);
        self.index
            .insert_unique(hash, new, |&r| hasher.hash_one(id_at(arena, ends, r)));
        (new, Interned::New)
    }

    /// The id arena and the end offsets, as [`crate::core::EngineImage`] holds them.
    pub fn parts(&self) -> (&str, &[u64]) {
        (&self.arena, &self.ends)
    }

    /// The ids of the consecutive refs `refs`, concatenated, and their end offsets
    /// (offsets into the whole arena, as [`CustomerTable::parts`] gives them).
    pub fn parts_of(&self, refs: std::ops::Range<usize>) -> (&str, &[u64]) {
        let start = if refs.start == 0 {
            0
        } else {
            self.ends[refs.start - 1] as usize
        };
        let end = if refs.is_empty() {
            start
        } else {
            self.ends[refs.end - 1] as usize
        };
        (&self.arena[start..end], &self.ends[refs])
    }

    /// Rebuilds a table from [`CustomerTable::parts`], refusing anything inconsistent:
    /// ends out of order or past the arena, an end inside a character, a repeated id.
    ///
    /// # Errors
    /// What is inconsistent, in words.
    pub fn from_parts(arena: String, ends: Vec<u64>) -> Result<Self, String> {
        if u32::try_from(ends.len()).is_err() {
            return Err(format!("{} customers; at most u32::MAX fit", ends.len()));
        }
        let mut start = 0u64;
        for (i, &end) in ends.iter().enumerate() {
            let fits = end >= start && end <= arena.len() as u64 && arena.is_char_boundary(end as usize);
            if !fits {
                return Err(format!("customer id {i} ends at {end}, outside the id arena"));
            }
            start = end;
        }
        let mut table = CustomerTable {
            hasher: RandomState::new(),
            index: HashTable::with_capacity(ends.len()),
            arena,
            ends,
        };
        let (arena, ends, hasher) = (&table.arena, &table.ends, &table.hasher);
        let hashed = (0..ends.len())
            .map(|i| {
                let customer = CustomerRef(i as u32);
                (hasher.hash_one(id_at(arena, ends, customer)), customer)
            })
            .collect();
        for (hash, customer) in by_table_region(hashed) {
            // Refs now come in no order: the id is read only when a control byte matches.
            let same_id = |&r: &CustomerRef| id_at(arena, ends, r) == id_at(arena, ends, customer);
            if table.index.find(hash, same_id).is_some() {
                return Err(format!(
                    "customer id {:?} appears twice",
                    id_at(arena, ends, customer)
                ));
            }
            table
                .index
                .insert_unique(hash, customer, |&r| hasher.hash_one(id_at(arena, ends, r)));
        }
        Ok(table)
    }

    /// The id of `customer`.
    ///
    /// # Panics
    /// If `customer` did not come from this table.
    pub fn id(&self, customer: CustomerRef) -> &str {
        id_at(&self.arena, &self.ends, customer)
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

/// `hashed`, reordered so that inserting them into a table sized for as many fills it
/// one region at a time: each hash goes to the region of the table its
/// probe starts in (the hash's low bits, as in hashbrown), keeping their order within a
/// region. Inserted in ref order instead, every insert lands somewhere random in a table
/// far bigger than the caches: at 10M customers the inserts took 0.8-1.2 s that way,
/// 0.22-0.31 s in region order (docs/performance.md, "Snapshots"). Only the order
/// changes, never the table, so a wrong guess at its layout would only cost speed.
fn by_table_region(hashed: Vec<(u64, CustomerRef)>) -> Vec<(u64, CustomerRef)> {
    // hashbrown's slot count: a power of two at most 7/8 full.
    let slots = (hashed.len().max(8) * 8 / 7).next_power_of_two();
    let shift = slots
        .trailing_zeros()
        .saturating_sub(TABLE_REGIONS.trailing_zeros());
    let region = |hash: u64| (hash as usize & (slots - 1)) >> shift;
    let mut starts = vec![0usize; TABLE_REGIONS + 1];
    for &(hash, _) in &hashed {
        starts[region(hash) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut ordered = vec![(0, CustomerRef(0)); hashed.len()];
    for entry in hashed {
        let at = &mut starts[region(entry.0)];
        ordered[*at] = entry;
        *at += 1;
    }
    ordered
}

fn id_at<'a>(arena: &'a str, ends: &[u64], customer: CustomerRef) -> &'a str {
    let i = customer.index();
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &arena[start..ends[i] as usize]
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

    #[test]
    fn rebuilds_from_its_parts_and_refuses_inconsistent_ones() {
        let mut table = CustomerTable::default();
        for id in ["b", "é🙂", "", "a"] {
            table.intern(id);
        }
        let (arena, ends) = table.parts();
        let rebuilt = CustomerTable::from_parts(arena.to_owned(), ends.to_vec()).unwrap();
        assert_eq!(rebuilt.get("é🙂"), Some(CustomerRef(1)));
        assert_eq!(rebuilt.get("a"), Some(CustomerRef(3)));
        assert_eq!(rebuilt.id(CustomerRef(2)), "");
        let err =
            |arena: &str, ends: &[u64]| CustomerTable::from_parts(arena.into(), ends.to_vec()).unwrap_err();
        assert!(err("ab", &[1, 3]).contains("outside"));
        assert!(err("ab", &[2, 1]).contains("outside"));
        assert!(err("é", &[1]).contains("outside"), "inside a character");
        assert!(err("aa", &[1, 2]).contains("twice"));
    }

    #[test]
    fn rebuilds_many_in_table_order() {
        let mut table = CustomerTable::default();
        for i in 0..50_000 {
            table.intern(&format!("customer-{i}"));
        }
        let (arena, ends) = table.parts();
        let rebuilt = CustomerTable::from_parts(arena.to_owned(), ends.to_vec()).unwrap();
        for i in 0..50_000 {
            assert_eq!(rebuilt.get(&format!("customer-{i}")), Some(CustomerRef(i)));
        }
        assert_eq!(rebuilt.get("customer-50000"), None);
        // The last id repeats one from the middle: caught whatever order refs come in.
        let repeated = format!("{arena}customer-25000");
        let mut ends = ends.to_vec();
        ends.push(repeated.len() as u64);
        let error = CustomerTable::from_parts(repeated, ends).unwrap_err();
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
