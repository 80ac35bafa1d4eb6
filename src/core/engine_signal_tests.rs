//! Table and property tests of what real-world traffic needs from the engine
//! (`docs/semantics.md`, sections 2 and 5c): lateness per customer, so an offline
//! batch is applied, and the reactivation that ends a gap in which a threshold fired
//! (the timing transitions carry is pinned beside the time in stage, in
//! `engine_tests.rs`). Expected outputs are written by hand.

use super::tests::{t, Run, MINUTE};
use super::*;
use crate::core::model::LAPSING_MODEL;

/// `customer`'s lines of a log.
fn of(customer: &str, lines: Vec<String>) -> Vec<String> {
    let prefix = format!("{customer} ");
    lines
        .into_iter()
        .filter(|line| line.starts_with(&prefix))
        .collect()
}

/// 3,000 other customers' first visits, two minutes apart from `from` on.
fn crowd(run: &mut Run, from: EventTime) {
    for i in 0..3_000 {
        let at = EventTime::from_millis(from.as_millis() + i * 2 * MINUTE);
        assert_eq!(
            run.track(&format!("other-{i}"), "Product Viewed", at),
            Verdict::Applied
        );
    }
}

/// The phone's offline batch: 40 events ten minutes apart from day 2, the 21st and the
/// 40th an order.
fn offline_batch(run: &mut Run) {
    for k in 0..40 {
        let name = if k == 20 || k == 39 {
            "Order Completed"
        } else {
            "Product Viewed"
        };
        assert_eq!(
            run.track("phone", name, t(2, k * 10)),
            Verdict::Applied,
            "event {k} of the batch"
        );
    }
}

#[test]
fn an_offline_batch_behind_thousands_of_other_customers_is_applied() {
    let mut run = Run::five_stage();
    run.track("phone", "Product Viewed", t(0, 0));
    // The others' visits run to day 5 03:58: the batch (day 2) is three days behind.
    crowd(&mut run, t(1, 0));
    assert_eq!(run.engine.watermark(), t(5, 3 * 60 + 58 - 5));
    offline_batch(&mut run);
    assert_eq!(
        of("phone", run.take()),
        [
            "phone null->consideration by consideration at 2026-01-01T00:00:00.000Z",
            "phone consideration->purchase by purchase at 2026-01-03T03:20:00.000Z",
            "phone purchase->retention by retention at 2026-01-03T06:30:00.000Z",
        ]
    );
    // Inactivity counts from the batch's last event.
    run.track("other-0", "Product Viewed", t(12, 0));
    assert_eq!(
        of("phone", run.take()),
        ["phone winback_7d in retention last 2026-01-03T06:30:00.000Z detected 2026-01-10T06:30:00.000Z"]
    );
}

#[test]
fn a_batch_later_than_a_threshold_is_applied_after_the_threshold_and_a_return() {
    let mut run = Run::five_stage();
    run.track("phone", "Product Viewed", t(0, 0));
    // The others run to day 7 03:58, past the phone's seven days: they fire it early.
    crowd(&mut run, t(3, 0));
    assert_eq!(
        of("phone", run.take()),
        [
            "phone null->consideration by consideration at 2026-01-01T00:00:00.000Z",
            "phone winback_7d in consideration last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
        ]
    );
    offline_batch(&mut run);
    assert_eq!(
        of("phone", run.take()),
        [
            "phone back in consideration last 2026-01-01T00:00:00.000Z at 2026-01-03T00:00:00.000Z after winback_7d",
            "phone consideration->purchase by purchase at 2026-01-03T03:20:00.000Z",
            "phone purchase->retention by retention at 2026-01-03T06:30:00.000Z",
        ]
    );
}

#[test]
fn a_return_after_the_first_threshold_says_which_fired() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.track("busy", "Product Viewed", t(8, 0));
    run.take();
    run.track("c", "Order Completed", t(8, 10));
    assert_eq!(
        run.take(),
        [
            "c back in consideration last 2026-01-01T00:00:00.000Z at 2026-01-09T00:10:00.000Z after winback_7d",
            "c consideration->purchase by purchase at 2026-01-09T00:10:00.000Z",
        ]
    );
}

#[test]
fn a_return_after_both_thresholds_lists_both_in_ladder_order() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.advance(t(20, 0));
    run.take();
    run.track("c", "Product Viewed", t(20, 1));
    assert_eq!(
        run.take(),
        ["c back in consideration last 2026-01-01T00:00:00.000Z at 2026-01-21T00:01:00.000Z after winback_7d+winback_14d"]
    );
    // One per gap: the next event continues the journey.
    run.track("c", "Product Viewed", t(20, 2));
    assert!(run.take().is_empty());
}

#[test]
fn a_gap_in_which_nothing_fired_ends_without_a_return() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.track("c", "Order Completed", t(6, 0));
    assert_eq!(
        run.take()[1..],
        ["c consideration->purchase by purchase at 2026-01-07T00:00:00.000Z"]
    );
    // An event older than the last activity ends no gap, even one that fired.
    run.track("c", "Product Viewed", t(6, 10));
    run.track("busy", "Product Viewed", t(13, 20));
    assert_eq!(
        of("c", run.take()),
        ["c winback_7d in purchase last 2026-01-07T00:10:00.000Z detected 2026-01-14T00:10:00.000Z"]
    );
    assert_eq!(run.track("c", "Product Viewed", t(6, 6)), Verdict::Applied);
    assert!(of("c", run.take()).is_empty());
}

#[test]
fn a_return_after_a_move_lists_the_thresholds_of_the_stages_held() {
    let mut run = Run::new(LAPSING_MODEL);
    run.track("l", "Page Viewed", t(0, 0));
    run.track("c", "Order Completed", t(0, 0));
    run.advance(t(70, 0));
    run.take();
    run.track("l", "Page Viewed", t(71, 0));
    run.track("c", "Page Viewed", t(71, 0));
    assert_eq!(
        run.take(),
        [
            "l back in lead last 2026-01-01T00:00:00.000Z at 2026-03-13T00:00:00.000Z after nudge+gone",
            "c back in lapsed last 2026-01-01T00:00:00.000Z at 2026-03-13T00:00:00.000Z after lapse+gone",
        ]
    );
}

/// One customer's generated journey: (event name, minutes after the previous event).
type Journey = Vec<(usize, i64)>;

proptest::proptest! {
    /// A customer's events delayed behind other customers' events, by any amount, keep
    /// its stage transitions and are all applied; what the delay changes is only when
    /// its inactivity fires (early, by the others' watermark), each such gap then ended
    /// by a reactivation.
    #[test]
    fn a_customers_events_delayed_behind_others_keep_its_transitions(
        mine in proptest::collection::vec((0usize..4, 0i64..20_000), 1..25),
        others in proptest::collection::vec((0u8..4, 0usize..4, 0i64..20_000), 0..80),
        delay_minutes in 0i64..60 * 24 * 40,
    ) {
        const NAMES: [&str; 4] = ["Product Viewed", "Order Completed", "Product Reviewed", "Page Viewed"];
        let timeline = |journey: &Journey| {
            let mut at = t(0, 0);
            journey
                .iter()
                .map(|&(name, minutes)| {
                    at = EventTime::from_millis(at.as_millis() + minutes * MINUTE);
                    (name, at)
                })
                .collect::<Vec<_>>()
        };
        let mine = timeline(&mine);
        // The others' events, each customer's in time order, merged by time.
        let mut theirs: Vec<(String, usize, EventTime)> = Vec::new();
        for customer in 0..4u8 {
            let journey: Journey = others
                .iter()
                .filter(|(c, _, _)| *c == customer)
                .map(|&(_, name, minutes)| (name, minutes))
                .collect();
            theirs.extend(timeline(&journey).into_iter().map(|(name, at)| (format!("o{customer}"), name, at)));
        }
        // Arrival order: by time, my events `delay` later (stable, so ties keep order).
        let arrivals = |delay: i64| {
            let mut all: Vec<(i64, String, usize, EventTime)> = theirs
                .iter()
                .map(|(customer, name, at)| (at.as_millis(), customer.clone(), *name, *at))
                .chain(mine.iter().map(|&(name, at)| (at.as_millis() + delay * MINUTE, "me".to_owned(), name, at)))
                .collect();
            all.sort_by_key(|(arrival, ..)| *arrival);
            all
        };
        let replay = |delay: i64| {
            let mut run = Run::five_stage();
            let mut verdicts = Vec::new();
            for (_, customer, name, at) in arrivals(delay) {
                let verdict = run.track(&customer, NAMES[name], at);
                if customer == "me" {
                    verdicts.push(verdict);
                }
            }
            (verdicts, of("me", run.take()))
        };
        let (on_time_verdicts, on_time) = replay(0);
        let (delayed_verdicts, delayed) = replay(delay_minutes);
        proptest::prop_assert!(on_time_verdicts.iter().all(|&v| v == Verdict::Applied));
        proptest::prop_assert_eq!(delayed_verdicts, on_time_verdicts);
        let transitions = |lines: &[String]| -> Vec<String> {
            lines.iter().filter(|line| line.contains("->")).cloned().collect()
        };
        proptest::prop_assert_eq!(transitions(&delayed), transitions(&on_time));
        // Every gap of mine that a threshold fired in and a later event of mine ended
        // is followed by exactly one return, and no other gap is.
        let ended_after_firing: Vec<String> = mine
            .windows(2)
            .filter(|pair| pair[1].1 > pair[0].1)
            .map(|pair| (pair[0].1, pair[1].1))
            .filter(|(gap_start, _)| {
                let fired = format!(" last {gap_start} detected ");
                delayed.iter().any(|line| line.starts_with("me winback_") && line.contains(&fired))
            })
            .map(|(gap_start, returned)| format!("last {gap_start} at {returned}"))
            .collect();
        let returns: Vec<String> = delayed
            .iter()
            .filter_map(|line| line.strip_prefix("me back in "))
            .map(|rest| rest.split_once(' ').unwrap().1.split(" after ").next().unwrap().to_owned())
            .collect();
        proptest::prop_assert_eq!(returns, ended_after_firing);
    }
}
