//! The de-duplication window: which `messageId`s each customer sent recently.
//!
//! An event is a duplicate when its customer already had an applied event with the
//! same `messageId` whose time is within `window` of it. Ids are kept as 64-bit XXH3
//! digests (stable across runs, so the window can be snapshotted), keyed with the
//! customer's ref so one customer's ids never match another's. Entries no on-time event
//! could match any more (older than watermark - window) are swept out in one sequential
//! pass each time the watermark moves a quarter window, rather than one random-access
//! removal per event: pruning bounds memory (to about 1.25 windows of ids), it never
//! changes a decision, since a lookup already ignores entries outside the window.

use ahash::RandomState;
use hashbrown::HashMap;

use super::customers::CustomerRef;
use super::time::{EventTime, Span};

#[derive(Clone, Debug)]
pub struct DedupWindow {
    window: Span,
    seen: HashMap<(CustomerRef, u64), EventTime, RandomState>,
    /// The next sweep runs once the watermark reaches this.
    next_sweep: EventTime,
}

impl DedupWindow {
    pub fn new(window: Span) -> Self {
        DedupWindow {
            window,
            seen: HashMap::default(),
            next_sweep: EventTime::MIN,
        }
    }

    pub fn digest(message_id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(message_id.as_bytes())
    }

    pub fn is_duplicate(&self, customer: CustomerRef, digest: u64, at: EventTime) -> bool {
        self.seen.get(&(customer, digest)).is_some_and(|&previous| {
            at.as_millis().abs_diff(previous.as_millis()) <= self.window.as_millis() as u64
        })
    }

    /// Remembers an applied event; now and then forgets what `watermark` has made
    /// unmatchable.
    pub fn record(&mut self, customer: CustomerRef, digest: u64, at: EventTime, watermark: EventTime) {
        let seen = self.seen.entry((customer, digest)).or_insert(at);
        *seen = (*seen).max(at);
        if watermark >= self.next_sweep {
            let horizon = watermark.minus(self.window);
            self.seen.retain(|_, &mut time| time >= horizon);
            self.next_sweep = watermark.plus(Span::from_millis(self.window.as_millis() / 4));
        }
    }

    /// Every remembered `(customer, digest, time)`, in no particular order, and the
    /// watermark at which the next sweep runs.
    pub fn entries(
        &self,
    ) -> (
        impl Iterator<Item = (CustomerRef, u64, EventTime)> + '_,
        EventTime,
    ) {
        let entries = self
            .seen
            .iter()
            .map(|(&(customer, digest), &at)| (customer, digest, at));
        (entries, self.next_sweep)
    }

    /// A window holding `entries` (as [`DedupWindow::entries`] gave them).
    pub fn from_entries(
        window: Span,
        entries: impl ExactSizeIterator<Item = (CustomerRef, u64, EventTime)>,
        next_sweep: EventTime,
    ) -> Self {
        let mut seen = HashMap::with_capacity_and_hasher(entries.len(), RandomState::default());
        for (customer, digest, at) in entries {
            let time = seen.entry((customer, digest)).or_insert(at);
            *time = (*time).max(at);
        }
        DedupWindow {
            window,
            seen,
            next_sweep,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
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
        dedup.record(CustomerRef(0), id, t(100), EventTime::MIN);
        assert!(dedup.is_duplicate(CustomerRef(0), id, t(100)));
        assert!(dedup.is_duplicate(CustomerRef(0), id, t(124)));
        assert!(dedup.is_duplicate(CustomerRef(0), id, t(76)));
        assert!(!dedup.is_duplicate(CustomerRef(0), id, t(125)));
        assert!(!dedup.is_duplicate(CustomerRef(1), id, t(100)));
        assert!(!dedup.is_duplicate(CustomerRef(0), DedupWindow::digest("m-2"), t(100)));
    }

    #[test]
    fn prunes_what_the_watermark_left_behind() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        dedup.record(CustomerRef(0), 1, t(0), t(0));
        dedup.record(CustomerRef(1), 2, t(10), t(10));
        assert_eq!(dedup.len(), 2);
        dedup.record(CustomerRef(2), 3, t(30), t(30));
        assert_eq!(dedup.len(), 2, "t(0) is older than watermark - window");
        assert!(!dedup.is_duplicate(CustomerRef(0), 1, t(0)));
        assert!(dedup.is_duplicate(CustomerRef(1), 2, t(10)));
    }

    #[test]
    fn a_resighting_keeps_the_id_alive() {
        let mut dedup = DedupWindow::new(Span::from_millis(24 * HOUR));
        dedup.record(CustomerRef(0), 1, t(0), t(0));
        dedup.record(CustomerRef(0), 1, t(30), t(30));
        dedup.record(CustomerRef(0), 9, t(40), t(40));
        assert!(dedup.is_duplicate(CustomerRef(0), 1, t(31)));
    }
}
