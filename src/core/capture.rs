//! A snapshot image copied out of a live engine one block of customers at a time, so
//! that taking it never stops processing for longer than the caller's steps (a block
//! is well under a millisecond). The finished image goes to the snapshot encoder.
//!
//! ```text
//! Engine::begin_image     the scalars (newest event time, clock, next sweep, model),
//!                         how many customers the image holds, and their ids (shared:
//!                         only the last, open block's are copied)
//! Engine::continue_image  the cursor copies the next blocks: state, counters, messageIds
//! any write to a customer in a block the cursor has not reached
//!     -> that block's state, counters and messageIds are copied first ("ahead"),
//!        and the cursor takes them from there when it arrives
//! ```
//!
//! The image is the state as it was at `begin_image`, exactly: customers first seen
//! later are left out (ids are only ever appended, so the ids taken at the start stay
//! right), and a block is copied before anything in it changes. The de-duplication sweep waits
//! while a capture runs (it never changes a decision), so no block changes all at once.

use std::ops::Range;

use super::customers::{block_range, blocks_for};
use super::dedup::DedupWindow;
use super::engine::CustomerState;
use super::image::{CustomerImage, EngineImage};

/// What a capture reads: the engine's live state.
pub(super) struct Live<'a> {
    pub states: &'a [CustomerState],
    pub counters: &'a [u32],
    pub dedup: &'a DedupWindow,
}

#[derive(Clone, Debug)]
pub(super) struct Capture {
    image: Box<EngineImage>,
    /// How many customers the engine had at the start: the image holds these.
    customers: usize,
    counters_per_customer: usize,
    /// By block: state and counters copied before a write changed them, waiting for
    /// the cursor.
    ahead: Vec<Option<Ahead>>,
    /// The next block the cursor copies.
    cursor: usize,
}

#[derive(Clone, Debug)]
struct Ahead {
    customers: Vec<CustomerImage>,
    counters: Vec<u32>,
}

impl Capture {
    /// A capture into `image`, whose scalar fields and ids the caller has set, of the
    /// first `customers` customers and the `dedup_entries` messageIds they have.
    ///
    /// The columns are reserved at their exact length: grown as they fill, they would
    /// end up to twice that (a 10M-customer image is ~200 MB without messageIds).
    pub fn begin(
        mut image: Box<EngineImage>,
        customers: usize,
        counters_per_customer: usize,
        dedup_entries: usize,
    ) -> Self {
        image.customers.clear();
        image.customers.reserve_exact(customers);
        image.counters.clear();
        image.counters.reserve_exact(customers * counters_per_customer);
        image.dedup.clear();
        image.dedup.reserve_exact(dedup_entries);
        Capture {
            image,
            customers,
            counters_per_customer,
            ahead: vec![None; blocks_for(customers)],
            cursor: 0,
        }
    }

    /// Called before anything of a customer in `block` changes.
    pub fn before_write(&mut self, block: usize, live: &Live<'_>) {
        if block < self.cursor || block >= self.ahead.len() || self.ahead[block].is_some() {
            return;
        }
        let refs = block_range(block, self.customers);
        let counters = self.counters_of(&refs);
        self.ahead[block] = Some(Ahead {
            customers: live.states[refs].iter().map(CustomerState::image).collect(),
            counters: live.counters[counters].to_vec(),
        });
        self.copy_dedup(block, live);
    }

    /// Copies the block at the cursor; whether the image is then complete.
    pub fn step(&mut self, live: &Live<'_>) -> bool {
        let refs = block_range(self.cursor, self.customers);
        let counters = self.counters_of(&refs);
        let Some(ahead) = self.ahead.get_mut(self.cursor) else {
            return true;
        };
        let image = &mut self.image;
        if let Some(ahead) = ahead.take() {
            image.customers.extend_from_slice(&ahead.customers);
            image.counters.extend_from_slice(&ahead.counters);
        } else {
            image
                .customers
                .extend(live.states[refs].iter().map(CustomerState::image));
            image.counters.extend_from_slice(&live.counters[counters]);
            self.copy_dedup(self.cursor, live);
        }
        self.cursor += 1;
        self.cursor == self.ahead.len()
    }

    pub fn finish(self) -> Box<EngineImage> {
        debug_assert_eq!(self.cursor, self.ahead.len(), "finished before the last block");
        self.image
    }

    /// Where the occurrence counters of the customers `refs` are.
    fn counters_of(&self, refs: &Range<usize>) -> Range<usize> {
        refs.start * self.counters_per_customer..refs.end * self.counters_per_customer
    }

    fn copy_dedup(&mut self, block: usize, live: &Live<'_>) {
        let customers = self.customers;
        self.image.dedup.extend(
            live.dedup
                .entries_of(block)
                .filter(|entry| entry.customer.index() < customers),
        );
    }
}
