//! Which input offset of one partition is safe to commit.
//!
//! An input offset may be committed only once every output it caused (transitions,
//! inactivity, a dead letter) is delivered: a crash then re-reads, at worst, events
//! whose outputs were already delivered, never one whose outputs were lost. The tracker
//! keeps, in offset order, the processed offsets that still wait for deliveries;
//! offsets that caused nothing never wait.

use std::collections::VecDeque;

/// Delivery bookkeeping of one assigned partition. Offsets are fed in increasing order.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// The offset after the last processed message, once one was processed.
    next: Option<i64>,
    /// `(offset, outputs not yet delivered)`, ascending, all counts > 0.
    waiting: VecDeque<(i64, u32)>,
}

impl OffsetTracker {
    /// A tracker for a partition restored to just before `next`.
    pub fn resume_at(next: i64) -> Self {
        OffsetTracker {
            next: Some(next),
            waiting: VecDeque::new(),
        }
    }

    /// The offset after the last processed message (or the restored position).
    pub fn next_offset(&self) -> Option<i64> {
        self.next
    }

    /// Records that the message at `offset` was processed and caused `outputs` sends.
    pub fn processed(&mut self, offset: i64, outputs: u32) {
        debug_assert!(self.next.is_none_or(|next| offset >= next), "offsets go forward");
        self.next = Some(offset + 1);
        if outputs > 0 {
            self.waiting.push_back((offset, outputs));
        }
    }

    /// The last processed offset, to which outputs not caused by a message (the wall
    /// clock's inactivity) are charged, so the commit waits for them too.
    pub fn last_processed(&self) -> Option<i64> {
        self.next.map(|next| next - 1)
    }

    /// Adds `outputs` sends to the last processed offset.
    ///
    /// # Panics
    /// If no message was processed yet (an empty engine has nothing to fire).
    pub fn charge_to_last(&mut self, outputs: u32) {
        if outputs == 0 {
            return;
        }
        let last = self.last_processed().expect("outputs need a processed message");
        match self.waiting.back_mut() {
            Some((offset, count)) if *offset == last => *count += outputs,
            _ => self.waiting.push_back((last, outputs)),
        }
    }

    /// Records one delivered output of the message at `offset`.
    pub fn delivered(&mut self, offset: i64) {
        let Ok(index) = self.waiting.binary_search_by_key(&offset, |&(o, _)| o) else {
            debug_assert!(false, "a delivery for offset {offset} that was not waiting");
            return;
        };
        self.waiting[index].1 -= 1;
        while self.waiting.front().is_some_and(|&(_, count)| count == 0) {
            self.waiting.pop_front();
        }
    }

    /// The offset to commit (the next one to read), if anything was processed.
    pub fn committable(&self) -> Option<i64> {
        match self.waiting.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.next,
        }
    }

    /// How many outputs are not yet delivered.
    pub fn in_flight(&self) -> u64 {
        self.waiting.iter().map(|&(_, count)| u64::from(count)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_committable_before_the_first_message() {
        let tracker = OffsetTracker::default();
        assert_eq!(tracker.committable(), None);
        assert_eq!(tracker.last_processed(), None);
    }

    #[test]
    fn messages_without_outputs_are_committable_at_once() {
        let mut tracker = OffsetTracker::default();
        tracker.processed(10, 0);
        tracker.processed(11, 0);
        assert_eq!(tracker.committable(), Some(12));
    }

    #[test]
    fn the_commit_waits_for_the_oldest_undelivered_output() {
        let mut tracker = OffsetTracker::default();
        tracker.processed(0, 2);
        tracker.processed(1, 0);
        tracker.processed(2, 1);
        tracker.processed(3, 0);
        assert_eq!(tracker.committable(), Some(0));
        // Deliveries complete out of order across offsets.
        tracker.delivered(2);
        assert_eq!(tracker.committable(), Some(0));
        tracker.delivered(0);
        assert_eq!(tracker.committable(), Some(0));
        tracker.delivered(0);
        assert_eq!(tracker.committable(), Some(4));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn wall_clock_outputs_hold_back_the_last_message() {
        let mut tracker = OffsetTracker::default();
        tracker.processed(5, 0);
        tracker.charge_to_last(3);
        assert_eq!(tracker.committable(), Some(5));
        assert_eq!(tracker.in_flight(), 3);
        for _ in 0..3 {
            tracker.delivered(5);
        }
        assert_eq!(tracker.committable(), Some(6));
        tracker.processed(6, 1);
        tracker.charge_to_last(1);
        assert_eq!(tracker.in_flight(), 2);
        tracker.delivered(6);
        tracker.delivered(6);
        assert_eq!(tracker.committable(), Some(7));
    }
}
