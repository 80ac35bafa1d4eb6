//! Customers leaving the engine: erased on request ([`Engine::erase`]), or expired once
//! `expire_after` passed without activity (a deadline after the ladder's last, fired by
//! the clock like a threshold), and the memory of both reclaimed.
//!
//! A leaving customer's ref becomes *vacant* at once: out of the id index, the stage
//! counts and the deadline index, its occurrence counters zeroed, an erased customer's
//! messageIds forgotten. Refs are never handed out again; once vacant refs are as many
//! as live ones, the next call renumbers the live customers densely in first-seen order
//! (the only order anything depends on), so outputs do not depend on when that happens,
//! and memory stays proportional to the customers with state.

use super::*;
use crate::core::event::Erase;
use crate::core::image::DedupEntry;

/// Vacant refs are reclaimed only once there are at least this many, so that a small
/// engine does not rebuild its tables for every few customers that leave (tests reclaim
/// after a few, so that their runs renumber often).
pub(super) const RECLAIM_AT_LEAST: usize = if cfg!(test) { 3 } else { 1 << 12 };

impl Engine {
    /// Erases the customer an erase record names: its state, counters, messageIds and
    /// pending inactivity. Emits [`Output::Erased`] whether or not it had state (the
    /// service may have expired a customer whose data downstream still holds). Never
    /// moves the watermark or the clock.
    pub fn erase(&mut self, erase: &Erase<'_>, out: &mut Vec<Output>) {
        self.reclaim();
        if let Some(customer) = self.customers.get(&erase.customer) {
            self.vacate(customer);
            self.dedup.forget(customer);
        }
        out.push(Output::Erased { at: erase.at });
    }

    /// Fires a customer's expiry: its state goes, with an [`Output::Expired`].
    pub(super) fn expire(&mut self, customer: CustomerRef, out: &mut Vec<Output>) {
        let expired_at = self.deadline(customer).expect("armed with expiry");
        let state = self.states[customer.index()];
        out.push(Output::Expired {
            customer,
            stage: state.stage,
            last_activity: state.last_activity.time(),
            expired_at,
        });
        // Its messageIds are all older than the dedup window's horizon or soon will
        // be; a vacant ref matches no event, and the sweep or the renumbering drops them.
        self.vacate(customer);
    }

    /// Makes `customer`'s ref vacant.
    fn vacate(&mut self, customer: CustomerRef) {
        self.before_write(customer);
        self.set_armed(customer, UNARMED);
        let state = &mut self.states[customer.index()];
        self.population[usize::from(state.stage.0)] -= 1;
        state.stage = VACANT;
        state.indexed = NOT_INDEXED;
        state.ladder = 0;
        let per_customer = self.model.counter_count();
        self.counters[customer.index() * per_customer..(customer.index() + 1) * per_customer].fill(0);
        self.customers.remove(customer);
        self.vacant += 1;
    }

    /// Renumbers the live customers densely when vacant refs are as many as live ones,
    /// unless a capture is copying the tables by ref. Outputs already appended hold
    /// refs that this invalidates: callers render them before their next call.
    pub(super) fn reclaim(&mut self) {
        let live = self.states.len() - self.vacant;
        if self.vacant < live.max(RECLAIM_AT_LEAST) || self.capture.is_some() {
            return;
        }
        let per_customer = self.model.counter_count();
        let mut renumbered = vec![u32::MAX; self.states.len()];
        let mut ids = CustomerIds::default();
        let mut states = Vec::with_capacity(live);
        let mut counters = Vec::with_capacity(live * per_customer);
        let mut due = Vec::with_capacity(self.armed_customers);
        for (old, state) in self.states.iter().enumerate() {
            if state.is_vacant() {
                continue;
            }
            let new = CustomerRef(states.len() as u32);
            renumbered[old] = new.0;
            ids.push(self.customers.id(CustomerRef(old as u32)));
            if state.indexed != NOT_INDEXED {
                due.push((state.indexed.time(), new));
            }
            states.push(*state);
            counters.extend_from_slice(&self.counters[old * per_customer..(old + 1) * per_customer]);
        }
        let dedup: Vec<DedupEntry> = self
            .dedup
            .entries()
            .filter_map(|entry| {
                let new = renumbered[entry.customer.index()];
                (new != u32::MAX).then_some(DedupEntry {
                    customer: CustomerRef(new),
                    ..entry
                })
            })
            .collect();
        self.dedup = DedupWindow::from_entries(
            self.settings.dedup_window,
            dedup.into_iter(),
            self.dedup.next_sweep(),
        );
        self.deadlines = DeadlineIndex::from_entries(due);
        self.customers = CustomerTable::from_ids(ids).expect("live customers have distinct ids");
        self.states = states;
        self.counters = counters;
        self.vacant = 0;
    }
}
