//! The pure decisions of one assigned partition: which messages are replayed without
//! output, which offset may be committed, when a snapshot may be published, and how
//! far the wall clock may drive the partition.
//!
//! The owner feeds it facts (a message processed with N outputs, an output delivered,
//! a snapshot written, a transaction committed, the end of the partition reached) and
//! asks for decisions; it never touches Kafka, files or clocks, so every rule is
//! table-tested here. The rules (docs/semantics.md, "Recovery and delivery"):
//! - an input offset is *safe* once every output caused before it is delivered
//!   (at-least-once) or committed with a transaction (exactly-once);
//! - a snapshot covering offset `O` is published only once `O` is safe;
//! - with snapshots, only a published snapshot's offset is committed; without, the
//!   safe offset itself; a commit never moves below the offset committed at assign;
//! - messages below the offset committed at assign, and not covered by the restored
//!   snapshot, had their outputs delivered before: they rebuild state silently;
//! - the wall clock fires a partition's inactivity only up to the last instant the
//!   partition was at its end, so a backlog never makes a customer look inactive.

use super::offsets::OffsetTracker;
use crate::core::EventTime;

/// What a commit of this partition rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// At-least-once; with snapshots the committed offset is a published snapshot's.
    AtLeastOnce { snapshots: bool },
    /// Outputs and input offsets commit together in a Kafka transaction.
    ExactlyOnce,
}

/// One assigned partition's bookkeeping.
#[derive(Debug)]
pub struct Ledger {
    guarantee: Guarantee,
    offsets: OffsetTracker,
    catch_up: CatchUp,
    /// The group's committed offset when the partition was assigned: commits never
    /// go below it.
    committed_when_assigned: Option<i64>,
    /// Messages below this offset rebuild state without sending outputs.
    suppress_below: Option<i64>,
    /// The offset last stored for commit (at-least-once), or committed with a
    /// transaction (exactly-once).
    stored: Option<i64>,
    /// The offset of the newest snapshot known to be written.
    durable: Option<i64>,
}

impl Ledger {
    /// A partition assigned with its state restored to just before `restored` (the
    /// snapshot's offset; `None`: rebuilt from the earliest retained offset), while
    /// the group had committed `committed`.
    pub fn assigned(guarantee: Guarantee, restored: Option<i64>, committed: Option<i64>) -> Self {
        let committed = committed.filter(|&c| c >= 0);
        Ledger {
            guarantee,
            offsets: restored.map(OffsetTracker::resume_at).unwrap_or_default(),
            catch_up: CatchUp::default(),
            committed_when_assigned: committed,
            suppress_below: committed.filter(|&c| restored.is_none_or(|s| c > s)),
            stored: committed,
            durable: restored,
        }
    }

    /// The offset below which messages are replayed without output, if any.
    pub fn suppress_below(&self) -> Option<i64> {
        self.suppress_below
    }

    /// Whether the message at `offset` had its outputs delivered before (its outputs
    /// are not sent again). Also marks the partition as no longer at its end.
    pub fn message(&mut self, offset: i64) -> Replay {
        self.catch_up.at_end = false;
        match self.suppress_below.is_some_and(|below| offset < below) {
            true => Replay::Silent,
            false => Replay::Emit,
        }
    }

    /// The message at `offset` was handled and caused `outputs` sends.
    pub fn processed(&mut self, offset: i64, outputs: u32) {
        self.offsets.processed(offset, outputs);
    }

    /// `outputs` sends not caused by a message (the wall clock's inactivity), charged
    /// to the last processed message so the commit waits for them too. Returns the
    /// offset they were charged to, or `None` when nothing was processed yet.
    pub fn charge_to_last(&mut self, outputs: u32) -> Option<i64> {
        let last = self.offsets.last_processed()?;
        self.offsets.charge_to_last(outputs);
        Some(last)
    }

    /// One output of the message at `offset` was delivered. A failed delivery is never
    /// reported here: its offset then stays uncommitted.
    pub fn delivered(&mut self, offset: i64) {
        self.offsets.delivered(offset);
    }

    /// The partition's end was reached at `now`; true the first time.
    pub fn reached_end(&mut self, now: EventTime) -> bool {
        let first = self.catch_up.reached_end_at.is_none();
        self.catch_up.at_end = true;
        self.catch_up.reached_end_at = Some(now);
        first
    }

    /// Whether the partition has been at its end at least once since assign.
    pub fn ever_caught_up(&self) -> bool {
        self.catch_up.reached_end_at.is_some()
    }

    /// The instant up to which the wall clock (reading `now`) may fire inactivity.
    pub fn fire_through(&self, now: EventTime) -> Option<EventTime> {
        match self.catch_up.at_end {
            true => Some(now),
            false => self.catch_up.reached_end_at,
        }
    }

    /// The offset below which every output is safe.
    pub fn safe_offset(&self) -> Option<i64> {
        match self.guarantee {
            Guarantee::ExactlyOnce => self.stored,
            Guarantee::AtLeastOnce { .. } => self.offsets.committable(),
        }
    }

    /// Whether a snapshot covering everything before `offset` may be published.
    pub fn may_publish(&self, offset: i64) -> bool {
        self.safe_offset().is_some_and(|safe| safe >= offset)
    }

    /// Where a snapshot taken now would cover up to (the next offset to read), if
    /// anything was processed or restored.
    pub fn next_offset(&self) -> Option<i64> {
        self.offsets.next_offset()
    }

    /// A final snapshot (revoke, shutdown) covers the next offset, and may be written
    /// only when every output is safe: `Err` holds the outputs still undelivered.
    pub fn final_snapshot(&self) -> Result<Option<i64>, u64> {
        match self.next_offset() {
            Some(next) if self.safe_offset() != Some(next) => Err(self.offsets.in_flight()),
            next => Ok(next),
        }
    }

    /// A snapshot covering up to `offset` was written.
    pub fn snapshot_written(&mut self, offset: i64) {
        self.durable = self.durable.max(Some(offset));
    }

    /// The newest written snapshot's offset.
    pub fn durable(&self) -> Option<i64> {
        self.durable
    }

    /// The offset to commit if it moves the committed one forward: with snapshots the
    /// newest durable one, without the safe one. Never below the offset committed at
    /// assign (a partition restored from an older snapshot keeps that offset).
    pub fn commit_offset(&self) -> Option<i64> {
        let offset = match self.guarantee {
            Guarantee::AtLeastOnce { snapshots: true } => self.durable,
            Guarantee::AtLeastOnce { snapshots: false } => self.offsets.committable(),
            Guarantee::ExactlyOnce => return None,
        };
        offset.filter(|&o| self.committed_when_assigned.is_none_or(|floor| o > floor))
    }

    /// The commit offset when it differs from the one last stored; the caller stores
    /// it and reports [`Ledger::stored`].
    pub fn to_store(&self) -> Option<i64> {
        self.commit_offset().filter(|&o| Some(o) != self.stored)
    }

    /// `offset` was handed to the consumer's offset store.
    pub fn stored(&mut self, offset: i64) {
        self.stored = Some(offset);
    }

    /// Exactly-once: the open transaction committed everything processed so far.
    pub fn transaction_committed(&mut self) {
        self.stored = self.offsets.next_offset();
    }

    /// Outputs sent and not yet delivered.
    pub fn in_flight(&self) -> u64 {
        self.offsets.in_flight()
    }

    /// The offset last stored for commit or committed with a transaction.
    pub fn committed(&self) -> Option<i64> {
        self.stored
    }
}

/// Whether a message's outputs are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Sent: the message is new to the output.
    Emit,
    /// Not sent: delivered before a restart or handover; the message only rebuilds state.
    Silent,
}

/// Whether and when the partition was at its end.
#[derive(Clone, Copy, Debug, Default)]
struct CatchUp {
    /// The end was reached and no message came since.
    at_end: bool,
    /// The wall-clock instant the end was last reached.
    reached_end_at: Option<EventTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_SNAPSHOTS: Guarantee = Guarantee::AtLeastOnce { snapshots: true };
    const WITHOUT_SNAPSHOTS: Guarantee = Guarantee::AtLeastOnce { snapshots: false };

    /// A fact fed to the ledger, as the owner would.
    #[derive(Clone, Copy, Debug)]
    enum Fact {
        /// A message at this offset with this many outputs.
        Message(i64, u32),
        Delivered(i64),
        SnapshotWritten(i64),
        TransactionCommitted,
        /// The commit offset the ledger proposed was stored.
        Stored,
    }

    fn feed(ledger: &mut Ledger, facts: &[Fact]) {
        for &fact in facts {
            match fact {
                Fact::Message(offset, outputs) => {
                    ledger.message(offset);
                    ledger.processed(offset, outputs);
                }
                Fact::Delivered(offset) => ledger.delivered(offset),
                Fact::SnapshotWritten(offset) => ledger.snapshot_written(offset),
                Fact::TransactionCommitted => ledger.transaction_committed(),
                Fact::Stored => {
                    let offset = ledger.to_store().expect("something to store");
                    ledger.stored(offset);
                }
            }
        }
    }

    use Fact::*;

    #[test]
    fn commits_follow_deliveries_in_offset_order_whatever_order_they_arrive_in() {
        // (facts, the safe offset = the commit offset without snapshots)
        let table: [(&[Fact], Option<i64>); 5] = [
            (&[], None),
            (&[Message(0, 0), Message(1, 0)], Some(2)),
            (&[Message(0, 2), Message(1, 1), Message(2, 0)], Some(0)),
            (
                &[Message(0, 2), Message(1, 1), Message(2, 0), Delivered(1)],
                Some(0),
            ),
            (
                &[
                    Message(0, 2),
                    Message(1, 1),
                    Message(2, 0),
                    Delivered(1),
                    Delivered(0),
                    Delivered(0),
                ],
                Some(3),
            ),
        ];
        for (facts, expected) in table {
            let mut ledger = Ledger::assigned(WITHOUT_SNAPSHOTS, None, None);
            feed(&mut ledger, facts);
            assert_eq!(ledger.safe_offset(), expected, "{facts:?}");
            assert_eq!(ledger.commit_offset(), expected, "{facts:?}");
        }
    }

    #[test]
    fn a_failed_delivery_holds_the_commit_below_its_message_for_good() {
        let mut ledger = Ledger::assigned(WITHOUT_SNAPSHOTS, None, None);
        // Offset 1's output failed: no Delivered(1) ever comes.
        feed(
            &mut ledger,
            &[
                Message(0, 1),
                Message(1, 1),
                Message(2, 1),
                Delivered(0),
                Delivered(2),
            ],
        );
        assert_eq!(ledger.commit_offset(), Some(1));
        assert_eq!(ledger.in_flight(), 1);
        assert_eq!(
            ledger.final_snapshot(),
            Err(1),
            "no final snapshot past a lost output"
        );
        feed(
            &mut ledger,
            &[Message(3, 0), Message(4, 2), Delivered(4), Delivered(4)],
        );
        assert_eq!(ledger.commit_offset(), Some(1));
    }

    #[test]
    fn a_snapshot_is_published_only_once_the_outputs_before_it_are_delivered() {
        // A snapshot encoded at offset 3 while offset 1's output is in flight.
        let mut ledger = Ledger::assigned(WITH_SNAPSHOTS, None, None);
        feed(&mut ledger, &[Message(0, 0), Message(1, 1), Message(2, 0)]);
        let snapshot_at = ledger.next_offset().unwrap();
        assert_eq!(snapshot_at, 3);
        assert!(
            !ledger.may_publish(snapshot_at),
            "finished encoding before delivery"
        );
        assert_eq!(ledger.commit_offset(), None, "nothing durable yet");
        feed(&mut ledger, &[Message(3, 1), Delivered(1)]);
        assert!(ledger.may_publish(snapshot_at), "delivered: may be published");
        assert_eq!(ledger.commit_offset(), None, "still not written");
        feed(&mut ledger, &[SnapshotWritten(snapshot_at)]);
        assert_eq!(
            ledger.commit_offset(),
            Some(3),
            "the snapshot's offset, not the safe one"
        );
        feed(&mut ledger, &[Stored]);
        assert_eq!(ledger.to_store(), None, "stored once");
    }

    #[test]
    fn a_snapshot_finishing_after_its_outputs_were_delivered_is_published_at_once() {
        let mut ledger = Ledger::assigned(WITH_SNAPSHOTS, None, None);
        feed(
            &mut ledger,
            &[Message(0, 1), Message(1, 1), Delivered(0), Delivered(1)],
        );
        assert!(ledger.may_publish(2));
        assert!(!ledger.may_publish(3), "not past what was processed");
        feed(&mut ledger, &[SnapshotWritten(2), SnapshotWritten(1)]);
        assert_eq!(ledger.durable(), Some(2), "an older write never moves it back");
    }

    #[test]
    fn revoke_with_outputs_in_flight_writes_no_final_snapshot_and_commits_the_last_durable_one() {
        let mut ledger = Ledger::assigned(WITH_SNAPSHOTS, Some(10), Some(10));
        feed(
            &mut ledger,
            &[Message(10, 1), Message(11, 0), Delivered(10), SnapshotWritten(12)],
        );
        feed(&mut ledger, &[Message(12, 2), Message(13, 0), Delivered(12)]);
        assert_eq!(ledger.final_snapshot(), Err(1));
        assert_eq!(ledger.commit_offset(), Some(12));
        feed(&mut ledger, &[Delivered(12)]);
        assert_eq!(
            ledger.final_snapshot(),
            Ok(Some(14)),
            "all delivered: a final snapshot at the end"
        );
    }

    #[test]
    fn a_partition_catching_up_then_falling_behind_is_driven_only_to_its_last_end() {
        let t = EventTime::from_millis;
        let mut ledger = Ledger::assigned(WITH_SNAPSHOTS, None, None);
        assert_eq!(
            ledger.fire_through(t(1_000)),
            None,
            "a backlog is never driven by the clock"
        );
        assert!(!ledger.ever_caught_up());
        assert!(ledger.reached_end(t(2_000)), "the first end is news");
        assert!(ledger.ever_caught_up());
        assert_eq!(
            ledger.fire_through(t(3_000)),
            Some(t(3_000)),
            "at the end: up to now"
        );
        feed(&mut ledger, &[Message(0, 0)]);
        assert_eq!(
            ledger.fire_through(t(9_000)),
            Some(t(2_000)),
            "behind again: only up to when everything before was applied"
        );
        assert!(ledger.ever_caught_up(), "readiness is about the first catch-up");
        assert!(!ledger.reached_end(t(10_000)), "only the first end is news");
        assert_eq!(ledger.fire_through(t(11_000)), Some(t(11_000)));
    }

    #[test]
    fn messages_below_the_committed_offset_are_replayed_silently_unless_the_snapshot_covers_them() {
        // (restored snapshot offset, committed offset, suppressed below)
        let table = [
            (None, None, None),
            (None, Some(50), Some(50)),
            (Some(40), Some(50), Some(50)),
            (Some(50), Some(50), None),
            (Some(60), Some(50), None),
            (None, Some(-1001), None),
        ];
        for (restored, committed, expected) in table {
            let mut ledger = Ledger::assigned(WITH_SNAPSHOTS, restored, committed);
            assert_eq!(ledger.suppress_below(), expected, "{restored:?} {committed:?}");
            if let Some(below) = expected {
                assert_eq!(ledger.message(below - 1), Replay::Silent);
                assert_eq!(ledger.message(below), Replay::Emit);
            }
        }
    }

    #[test]
    fn a_commit_never_goes_below_the_offset_committed_at_assign() {
        // Restored from a snapshot at 40 while the group had committed 50.
        let mut ledger = Ledger::assigned(WITH_SNAPSHOTS, Some(40), Some(50));
        assert_eq!(ledger.commit_offset(), None);
        feed(&mut ledger, &[Message(40, 0), SnapshotWritten(45)]);
        assert_eq!(ledger.commit_offset(), None, "45 is below the committed 50");
        feed(&mut ledger, &[SnapshotWritten(55)]);
        assert_eq!(ledger.commit_offset(), Some(55));
        let mut without = Ledger::assigned(WITHOUT_SNAPSHOTS, None, Some(50));
        feed(&mut without, &[Message(0, 0), Message(1, 0)]);
        assert_eq!(without.commit_offset(), None);
    }

    #[test]
    fn exactly_once_publishes_snapshots_only_up_to_the_committed_transaction() {
        let mut ledger = Ledger::assigned(Guarantee::ExactlyOnce, None, None);
        feed(&mut ledger, &[Message(0, 1), Message(1, 0), Delivered(0)]);
        assert!(
            !ledger.may_publish(2),
            "delivered is not enough: the transaction is open"
        );
        assert_eq!(
            ledger.commit_offset(),
            None,
            "offsets commit with the transaction"
        );
        feed(&mut ledger, &[TransactionCommitted]);
        assert!(ledger.may_publish(2));
        assert_eq!(ledger.committed(), Some(2));
    }

    #[test]
    fn wall_clock_outputs_are_charged_to_the_last_message() {
        let mut ledger = Ledger::assigned(WITHOUT_SNAPSHOTS, None, None);
        assert_eq!(
            ledger.charge_to_last(2),
            None,
            "nothing processed: nothing to charge"
        );
        feed(&mut ledger, &[Message(5, 0)]);
        assert_eq!(ledger.charge_to_last(2), Some(5));
        assert_eq!(ledger.commit_offset(), Some(5));
        feed(&mut ledger, &[Delivered(5), Delivered(5)]);
        assert_eq!(ledger.commit_offset(), Some(6));
    }
}
