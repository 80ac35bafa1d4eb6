//! Restoring state saved under one model into another (`docs/semantics.md`, "Model
//! changes"): one test per kind of change, each with the outputs written by hand.

use super::tests::{t, Run, FIVE_STAGE};
use crate::core::image::RestoreError;

/// The five-stage model with `retention` removed, its customers mapped to `purchase`.
const WITHOUT_RETENTION: &str = r#"
name = "four-stage"
stages = ["awareness", "consideration", "purchase", "advocacy"]
[[rules]]
name = "consideration"
to = "consideration"
events = ["Products Searched", "Product List Viewed", "Product Viewed", "Product Added", "Cart Viewed", "Checkout Started"]
[[rules]]
name = "purchase"
to = "purchase"
events = ["Order Completed"]
[[rules]]
name = "advocacy"
to = "advocacy"
events = ["Product Reviewed", "Product Shared", "Referral Sent"]
from = ["purchase"]
[[inactivity]]
name = "winback_7d"
after = "7d"
[[inactivity]]
name = "winback_14d"
after = "14d"
"#;

const MAPPING: &str = "[[migrate]]\nfrom = \"retention\"\nto = \"purchase\"\n";

fn changed(from: &str, to: &str) -> String {
    assert!(FIVE_STAGE.contains(from), "{from}");
    FIVE_STAGE.replace(from, to)
}

#[test]
fn a_changed_rule_applies_from_the_restore_on_and_keeps_its_count_while_it_counts_the_same_events() {
    let retention = "events = [\"Order Completed\"]\noccurrence = { at_least = 2 }";
    for (retention_now, orders_to_retention) in [
        // The same events counted: ann's first order still counts.
        ("events = [\"Order Completed\"]\noccurrence = { at_least = 3 }", 2),
        // Another event set: the count starts again at zero.
        (
            "events = [\"Order Completed\", \"Subscription Renewed\"]\noccurrence = { at_least = 2 }",
            2,
        ),
        (
            "events = [\"Order Completed\", \"Subscription Renewed\"]\noccurrence = { at_least = 3 }",
            3,
        ),
    ] {
        let mut run = Run::five_stage();
        run.track("ann", "Order Completed", t(0, 0));
        run.take();
        run.restore_under(&changed(retention, retention_now)).unwrap();
        assert_eq!(
            run.take(),
            Vec::<String>::new(),
            "a rule change emits nothing at restore"
        );
        for order in 1..orders_to_retention {
            run.track("ann", "Order Completed", t(0, order * 10));
            assert_eq!(run.take(), Vec::<String>::new(), "{retention_now}: order {order}");
        }
        run.track("ann", "Order Completed", t(0, orders_to_retention * 10));
        assert_eq!(
            run.take(),
            [format!(
                "ann purchase->retention by retention at {}",
                t(0, orders_to_retention * 10)
            )],
            "{retention_now}"
        );
    }
}

#[test]
fn an_appended_stage_and_its_rule_apply_to_customers_carried_over() {
    let mut run = Run::five_stage();
    run.track("ann", "Order Completed", t(0, 0));
    run.track("ann", "Product Reviewed", t(0, 1));
    run.take();
    let champion = changed(
        r#""retention", "advocacy"]"#,
        r#""retention", "advocacy", "champion"]"#,
    )
        + "[[rules]]\nname = \"champion\"\nto = \"champion\"\nevents = [\"Referral Converted\"]\n";
    run.restore_under(&champion).unwrap();
    assert_eq!(run.take(), Vec::<String>::new());
    assert_eq!(run.engine.population(), [0, 0, 0, 0, 1, 0]);
    run.track("ann", "Referral Converted", t(0, 5));
    run.advance(t(7, 6));
    assert_eq!(
        run.take(),
        [
            "ann advocacy->champion by champion at 2026-01-01T00:05:00.000Z",
            "ann winback_7d in champion last 2026-01-01T00:05:00.000Z detected 2026-01-08T00:05:00.000Z",
        ]
    );
}

#[test]
fn customers_of_a_removed_stage_move_where_the_mapping_says_at_the_snapshots_watermark() {
    let mut run = Run::five_stage();
    run.track("ann", "Order Completed", t(0, 0));
    run.track("ann", "Order Completed", t(0, 10));
    run.track("bob", "Product Viewed", t(0, 20));
    run.take();
    let saved = run.engine.clone();
    run.restore_under(&format!("{WITHOUT_RETENTION}{MAPPING}"))
        .unwrap();
    // The watermark: the newest event (00:20) less the allowed lateness (5 minutes).
    let migrated = ["ann retention->purchase by model-migration at 2026-01-01T00:15:00.000Z"];
    assert_eq!(run.take(), migrated);
    assert_eq!(run.engine.population(), [0, 1, 1, 0]);
    let ann = run.engine.customer_image("ann").unwrap();
    assert_eq!(ann.stage_entered.time(), t(0, 15));
    // A restart from the same snapshot emits the same transition, at the same time.
    run.engine = saved;
    run.restore_under(&format!("{WITHOUT_RETENTION}{MAPPING}"))
        .unwrap();
    assert_eq!(run.take(), migrated);
    // The ladder goes on from ann's last activity.
    run.advance(t(7, 11));
    assert_eq!(
        run.take(),
        ["ann winback_7d in purchase last 2026-01-01T00:10:00.000Z detected 2026-01-08T00:10:00.000Z"]
    );
}

#[test]
fn a_removed_stage_that_holds_customers_needs_a_mapping() {
    let mut run = Run::five_stage();
    run.track("ann", "Order Completed", t(0, 0));
    run.track("ann", "Order Completed", t(0, 10));
    run.track("bob", "Order Completed", t(0, 11));
    run.track("bob", "Order Completed", t(0, 12));
    let Err(RestoreError::IncompatibleModel { reason, .. }) = run.restore_under(WITHOUT_RETENTION) else {
        panic!("expected a refusal");
    };
    assert!(reason.contains("\"retention\" (2 customers)"), "{reason}");
    assert!(
        reason.contains("[[model.migrate]]\nfrom = \"retention\"\nto = \"STAGE\""),
        "{reason}"
    );
    // Without customers in it, a stage may go without a mapping.
    let mut run = Run::five_stage();
    run.track("ann", "Order Completed", t(0, 0));
    run.restore_under(WITHOUT_RETENTION).unwrap();
    assert_eq!(
        run.take(),
        ["ann null->purchase by purchase at 2026-01-01T00:00:00.000Z"]
    );
}

/// carol's win-back fired before the restore (her last order was on day -2); ann's
/// (day 0) and dave's (day 1) did not. The watermark stands at day 5, 23:55.
fn three_gaps() -> Run {
    let mut run = Run::five_stage();
    run.track("carol", "Order Completed", t(-2, 0));
    run.track("ann", "Order Completed", t(0, 0));
    run.track("dave", "Order Completed", t(1, 0));
    run.track("bob", "Product Viewed", t(6, 0));
    let fired: Vec<String> = run
        .take()
        .into_iter()
        .filter(|line| line.contains("winback"))
        .collect();
    assert_eq!(
        fired,
        ["carol winback_7d in purchase last 2025-12-30T00:00:00.000Z detected 2026-01-06T00:00:00.000Z"]
    );
    run
}

#[test]
fn a_shortened_threshold_already_due_fires_at_the_next_advance_and_never_twice() {
    let mut run = three_gaps();
    run.restore_under(&changed("after = \"7d\"", "after = \"5d\""))
        .unwrap();
    assert_eq!(run.take(), Vec::<String>::new());
    run.advance(t(6, 1));
    assert_eq!(
        run.take(),
        [
            "ann winback_7d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-06T00:00:00.000Z",
            "dave winback_7d in purchase last 2026-01-02T00:00:00.000Z detected 2026-01-07T00:00:00.000Z",
        ],
        "carol's already fired in this gap"
    );
    run.advance(t(14, 1));
    assert_eq!(
        run.take(),
        [
            "bob winback_7d in consideration last 2026-01-07T00:00:00.000Z detected 2026-01-12T00:00:00.000Z",
            "carol winback_14d in purchase last 2025-12-30T00:00:00.000Z detected 2026-01-13T00:00:00.000Z",
            "ann winback_14d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-15T00:00:00.000Z",
        ]
    );
}

#[test]
fn an_added_threshold_fires_when_due_even_before_one_that_fired_and_a_return_lists_it() {
    let mut run = three_gaps();
    let with_3d = format!("{FIVE_STAGE}[[inactivity]]\nname = \"nudge_3d\"\nafter = \"3d\"\n");
    run.restore_under(&with_3d).unwrap();
    assert_eq!(
        run.take(),
        ["carol nudge_3d in purchase last 2025-12-30T00:00:00.000Z detected 2026-01-02T00:00:00.000Z"],
        "due before carol's fired win-back: fired at the restore"
    );
    run.advance(t(6, 1));
    assert_eq!(
        run.take(),
        [
            "ann nudge_3d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-04T00:00:00.000Z",
            "dave nudge_3d in purchase last 2026-01-02T00:00:00.000Z detected 2026-01-05T00:00:00.000Z",
        ],
        "due after the last fired threshold: fired at the next advance"
    );
    run.advance(t(12, 1));
    run.track("carol", "Product Viewed", t(13, 0));
    assert_eq!(
        run.take(),
        [
            "ann winback_7d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
            "dave winback_7d in purchase last 2026-01-02T00:00:00.000Z detected 2026-01-09T00:00:00.000Z",
            "bob nudge_3d in consideration last 2026-01-07T00:00:00.000Z detected 2026-01-10T00:00:00.000Z",
            "carol winback_14d in purchase last 2025-12-30T00:00:00.000Z detected 2026-01-13T00:00:00.000Z",
            "carol back in purchase last 2025-12-30T00:00:00.000Z at 2026-01-14T00:00:00.000Z after nudge_3d+winback_7d+winback_14d",
        ]
    );
}

#[test]
fn a_removed_threshold_no_longer_fires_and_the_others_keep_their_place() {
    let mut run = three_gaps();
    let without_7d = changed("[[inactivity]]\nname = \"winback_7d\"\nafter = \"7d\"\n", "");
    run.restore_under(&without_7d).unwrap();
    assert_eq!(run.take(), Vec::<String>::new());
    run.advance(t(14, 1));
    run.track("carol", "Product Viewed", t(15, 1));
    assert_eq!(
        run.take(),
        [
            "carol winback_14d in purchase last 2025-12-30T00:00:00.000Z detected 2026-01-13T00:00:00.000Z",
            "ann winback_14d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-15T00:00:00.000Z",
            "carol back in purchase last 2025-12-30T00:00:00.000Z at 2026-01-16T00:01:00.000Z after winback_14d",
        ]
    );
}
