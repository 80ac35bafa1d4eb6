//! The engine's deadline index: every armed customer's next inactivity deadline, in
//! time buckets sorted only when the firing clock reaches them. The engine
//! (`super::engine`) pushes an entry when a customer is armed or its deadline moves
//! earlier, and pops due entries in `(deadline, customer)` order when time advances.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::customers::CustomerRef;
use super::time::EventTime;

/// The deadline index: an entry `(key, customer)` per armed customer, popped in
/// `(key, customer)` order.
///
/// Entries are kept in buckets of `1 << BUCKET_SHIFT` ms of key, each an
/// unsorted `Vec` of 8-byte entries, and a bucket is sorted only when the clock reaches
/// it: an insertion is a push, a firing a pop from the end of a sorted run, where a
/// B-tree of every armed customer walked several cache-missing nodes for each and
/// held ~24 bytes per entry. Entries inserted into the bucket being drained, or
/// before it, go to a small heap beside the sorted run. Removal is lazy: a replaced
/// entry stays until it comes up, and the engine skips entries that no longer match
/// the customer's `indexed` key.
#[derive(Clone, Debug)]
pub(super) struct DeadlineIndex {
    /// Buckets after `drained`, by bucket number (`key >> BUCKET_SHIFT`): each entry
    /// is the key's offset in its bucket and the customer.
    later: BTreeMap<i64, Vec<(u32, CustomerRef)>>,
    /// Where the first bucket of `later` starts ([`EventTime::MAX`] when none).
    later_start: EventTime,
    /// The bucket whose entries (and any before it) are in `sorted` and `inserted`.
    drained: i64,
    /// Entries of the drained buckets, sorted descending: the next due is last.
    sorted: Vec<(EventTime, CustomerRef)>,
    /// Entries inserted at or before the drained bucket since it was sorted.
    inserted: BinaryHeap<Reverse<(EventTime, CustomerRef)>>,
}

/// Deadline-index buckets span `1 << BUCKET_SHIFT` ms of key (about 70 minutes).
const BUCKET_SHIFT: u32 = 22;

impl Default for DeadlineIndex {
    fn default() -> Self {
        DeadlineIndex {
            later: BTreeMap::new(),
            later_start: EventTime::MAX,
            drained: i64::MIN,
            sorted: Vec::new(),
            inserted: BinaryHeap::new(),
        }
    }
}

impl DeadlineIndex {
    pub fn from_entries(entries: Vec<(EventTime, CustomerRef)>) -> Self {
        let mut sizes: BTreeMap<i64, usize> = BTreeMap::new();
        for &(key, _) in &entries {
            *sizes.entry(bucket_of(key)).or_default() += 1;
        }
        let mut index = DeadlineIndex {
            later: sizes
                .into_iter()
                .map(|(bucket, len)| (bucket, Vec::with_capacity(len)))
                .collect(),
            ..DeadlineIndex::default()
        };
        for (key, customer) in entries {
            index.insert(key, customer);
        }
        index
    }

    pub fn insert(&mut self, key: EventTime, customer: CustomerRef) {
        let bucket = bucket_of(key);
        if bucket <= self.drained {
            self.inserted.push(Reverse((key, customer)));
            return;
        }
        let start = bucket_start(bucket);
        let offset = (key.as_millis() - start.as_millis()) as u32;
        self.later.entry(bucket).or_default().push((offset, customer));
        self.later_start = self.later_start.min(start);
    }

    /// Removes and returns the first entry if its key is at or before `clock`.
    pub fn pop_due(&mut self, clock: EventTime) -> Option<(EventTime, CustomerRef)> {
        loop {
            let from_sorted = self.sorted.last().copied();
            let from_inserted = self.inserted.peek().map(|&Reverse(entry)| entry);
            let first = match (from_sorted, from_inserted) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(first) = first {
                if first.0 > clock {
                    return None;
                }
                if Some(first) == from_sorted {
                    self.sorted.pop();
                } else {
                    self.inserted.pop();
                }
                return Some(first);
            }
            // Both empty: the next bucket, once the clock reaches where it starts.
            if self.later_start > clock {
                return None;
            }
            let (bucket, entries) = self.later.pop_first().expect("later_start names a bucket");
            let start = bucket_start(bucket).as_millis();
            self.sorted.clear();
            self.sorted.extend(
                entries
                    .into_iter()
                    .map(|(offset, customer)| (EventTime::from_millis(start + i64::from(offset)), customer)),
            );
            self.sorted.sort_unstable_by(|a, b| b.cmp(a));
            self.drained = bucket;
            self.later_start = self
                .later
                .first_key_value()
                .map_or(EventTime::MAX, |(&b, _)| bucket_start(b));
        }
    }
}

fn bucket_of(key: EventTime) -> i64 {
    key.as_millis() >> BUCKET_SHIFT
}

fn bucket_start(bucket: i64) -> EventTime {
    EventTime::from_millis(bucket << BUCKET_SHIFT)
}

#[cfg(test)]
mod tests {

    use super::*;

    /// One step against the deadline index: an insertion (key relative to the clock,
    /// customer), or the clock moved on by some milliseconds and everything due popped.
    #[derive(Clone, Debug)]
    enum IndexStep {
        Insert(i64, u32),
        Advance(i64),
    }

    fn index_steps() -> impl proptest::strategy::Strategy<Value = Vec<IndexStep>> {
        use proptest::prelude::*;
        let step = prop_oneof![
            3 => (0i64..6 << BUCKET_SHIFT, 0u32..50).prop_map(|(key, customer)| IndexStep::Insert(key, customer)),
            1 => (0i64..(1 << BUCKET_SHIFT) + 5).prop_map(IndexStep::Advance),
        ];
        proptest::collection::vec(step, 0..200)
    }

    proptest::proptest! {
        /// The bucketed deadline index pops exactly what an ordered multiset of its
        /// entries would, in the same order, whatever the insertions: into buckets ahead,
        /// into the bucket being drained, or behind it.
        #[test]
        fn the_deadline_index_pops_in_key_then_customer_order(
            steps in index_steps(),
            initial in proptest::collection::vec((0i64..6 << BUCKET_SHIFT, 0u32..50), 0..50),
        ) {
            let entry = |key: i64, customer: u32| (EventTime::from_millis(key), CustomerRef(customer));
            let mut reference: std::collections::BTreeMap<(EventTime, CustomerRef), usize> = Default::default();
            for &(key, customer) in &initial {
                *reference.entry(entry(key, customer)).or_default() += 1;
            }
            let mut index = DeadlineIndex::from_entries(initial.iter().map(|&(k, c)| entry(k, c)).collect());
            let mut clock = EventTime::from_millis(0);
            for step in steps {
                let advance = match step {
                    IndexStep::Insert(offset, customer) => {
                        // Keys from well behind the clock to well ahead of it.
                        let key = clock.as_millis() - (3 << BUCKET_SHIFT) + offset;
                        index.insert(EventTime::from_millis(key), CustomerRef(customer));
                        *reference.entry(entry(key, customer)).or_default() += 1;
                        continue;
                    }
                    IndexStep::Advance(millis) => millis,
                };
                clock = EventTime::from_millis(clock.as_millis() + advance);
                loop {
                    let expected = reference.first_key_value().map(|(&e, _)| e).filter(|e| e.0 <= clock);
                    proptest::prop_assert_eq!(index.pop_due(clock), expected);
                    let Some(expected) = expected else { break };
                    let count = reference.get_mut(&expected).expect("present");
                    *count -= 1;
                    if *count == 0 {
                        reference.remove(&expected);
                    }
                }
            }
        }
    }
}
