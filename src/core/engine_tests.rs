//! Table tests pinning the engine semantics of `docs/semantics.md`, one rule each.
//! Expected outputs are written by hand from the documented rules.

use std::borrow::Cow;
use std::sync::Arc;

use super::*;
use crate::core::event::{EventType, PropertyValue};
use crate::core::image::DedupEntry;
use crate::core::image::RestoreError;
use crate::core::model::{test_model, LAPSING_MODEL};

pub(super) const FIVE_STAGE: &str = r#"
name = "five-stage"
stages = ["awareness", "consideration", "purchase", "retention", "advocacy"]
[[rules]]
name = "consideration"
to = "consideration"
events = ["Products Searched", "Product List Viewed", "Product Viewed", "Product Added", "Cart Viewed", "Checkout Started"]
[[rules]]
name = "purchase"
to = "purchase"
events = ["Order Completed"]
[[rules]]
name = "retention"
to = "retention"
events = ["Order Completed"]
occurrence = { at_least = 2 }
[[rules]]
name = "advocacy"
to = "advocacy"
events = ["Product Reviewed", "Product Shared", "Referral Sent"]
from = ["purchase", "retention"]
[[inactivity]]
name = "winback_7d"
after = "7d"
[[inactivity]]
name = "winback_14d"
after = "14d"
"#;

pub(super) const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

/// Day `d`, minute `m` after 2026-01-01T00:00:00Z.
pub(super) fn t(d: i64, m: i64) -> EventTime {
    EventTime::from_millis(1_767_225_600_000 + d * DAY + m * MINUTE)
}

/// A test harness: an engine plus a readable log of what it emitted.
pub(super) struct Run {
    pub(super) engine: Engine,
    log: Vec<String>,
    next_message: u32,
}

impl Run {
    pub(super) fn new(model_toml: &str) -> Self {
        Run {
            engine: Engine::new(Arc::new(test_model(model_toml)), EngineSettings::default()),
            log: Vec::new(),
            next_message: 0,
        }
    }

    pub(super) fn five_stage() -> Self {
        Run::new(FIVE_STAGE)
    }

    pub(super) fn send(
        &mut self,
        customer: &str,
        kind: EventType,
        name: Option<&str>,
        at: EventTime,
        message_id: Option<&str>,
        properties: Vec<Option<PropertyValue<'static>>>,
    ) -> Verdict {
        let event = Event {
            kind,
            customer: Cow::Borrowed(customer),
            message_id: message_id.map(|id| Cow::Owned(id.to_owned())),
            name: name.map(|n| Cow::Owned(n.to_owned())),
            timestamp: at,
            properties,
        };
        let mut out = Vec::new();
        let verdict = self.engine.on_event(&event, &mut out);
        self.record(&out);
        verdict
    }

    /// A track call with a fresh messageId.
    pub(super) fn track(&mut self, customer: &str, event: &str, at: EventTime) -> Verdict {
        self.next_message += 1;
        let id = format!("m{}", self.next_message);
        self.send(customer, EventType::Track, Some(event), at, Some(&id), Vec::new())
    }

    pub(super) fn advance(&mut self, now: EventTime) {
        let mut out = Vec::new();
        self.engine.advance_to(now, &mut out);
        self.record(&out);
    }

    fn record(&mut self, outputs: &[Output]) {
        let model = self.engine.model();
        for output in outputs {
            let line = match *output {
                Output::StageChanged {
                    customer,
                    from,
                    to,
                    cause,
                    at,
                    ..
                } => format!(
                    "{} {}->{} by {} at {}",
                    self.engine.customer_id(customer),
                    from.map_or("null", |s| model.stage_name(s)),
                    model.stage_name(to),
                    match cause {
                        Cause::Entry => "entry".to_owned(),
                        Cause::Rule(rule) => model.rule(rule).name.clone(),
                        Cause::Inactivity(threshold) => model.threshold(threshold).name.clone(),
                    },
                    at
                ),
                Output::Inactive {
                    customer,
                    threshold,
                    stage,
                    last_activity,
                    detected_at,
                    ..
                } => format!(
                    "{} {} in {} last {} detected {}",
                    self.engine.customer_id(customer),
                    model.threshold(threshold).name,
                    model.stage_name(stage),
                    last_activity,
                    detected_at
                ),
                Output::Expired {
                    customer,
                    stage,
                    last_activity,
                    expired_at,
                } => format!(
                    "{} expired in {} last {} at {}",
                    self.engine.customer_id(customer),
                    model.stage_name(stage),
                    last_activity,
                    expired_at
                ),
                Output::Reactivated {
                    customer,
                    stage,
                    last_activity,
                    returned_at,
                    gap_stage,
                    last_threshold,
                } => format!(
                    "{} back in {} last {} at {} after {}",
                    self.engine.customer_id(customer),
                    model.stage_name(stage),
                    last_activity,
                    returned_at,
                    model
                        .fired_in_gap(gap_stage, last_threshold)
                        .map(|threshold| model.threshold(threshold).name.as_str())
                        .collect::<Vec<_>>()
                        .join("+")
                ),
                Output::Erased { at } => format!("erased at {at}"),
                Output::Migrated {
                    customer,
                    from,
                    to,
                    at,
                    ..
                } => format!(
                    "{} {}->{} by model-migration at {}",
                    self.engine.customer_id(customer),
                    self.engine.saved_stage_name(from),
                    model.stage_name(to),
                    at
                ),
            };
            self.log.push(line);
        }
    }

    /// Restores the engine's image under `model_toml`, logging what the migration
    /// emitted.
    pub(super) fn restore_under(&mut self, model_toml: &str) -> Result<(), RestoreError> {
        let model = Arc::new(test_model(model_toml));
        let mut out = Vec::new();
        self.engine = Engine::restore(model, self.engine.settings, self.engine.image(), &mut out)?;
        self.record(&out);
        Ok(())
    }

    pub(super) fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }
}

#[test]
fn first_activity_enters_the_initial_stage_once() {
    let mut run = Run::five_stage();
    assert_eq!(
        run.send("c", EventType::Page, Some("Home"), t(0, 0), None, vec![]),
        Verdict::Applied
    );
    run.track("c", "Signed Up", t(0, 1));
    assert_eq!(
        run.take(),
        ["c null->awareness by entry at 2026-01-01T00:00:00.000Z"]
    );
}

#[test]
fn first_activity_goes_straight_to_the_best_target() {
    let mut run = Run::five_stage();
    run.track("c", "Order Completed", t(0, 0));
    assert_eq!(
        run.take(),
        ["c null->purchase by purchase at 2026-01-01T00:00:00.000Z"]
    );
}

#[test]
fn moves_forward_only() {
    let mut run = Run::five_stage();
    run.track("c", "Order Completed", t(0, 0));
    run.take();
    run.track("c", "Product Viewed", t(0, 1));
    assert!(run.take().is_empty(), "consideration is behind purchase");
    assert_eq!(run.engine.stage_of("c"), Some(StageId(2)));
}

#[test]
fn second_order_reaches_retention_and_later_ones_stay() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.track("c", "Order Completed", t(0, 5));
    run.track("c", "Order Completed", t(1, 0));
    run.track("c", "Order Completed", t(2, 0));
    assert_eq!(
        run.take(),
        [
            "c null->consideration by consideration at 2026-01-01T00:00:00.000Z",
            "c consideration->purchase by purchase at 2026-01-01T00:05:00.000Z",
            "c purchase->retention by retention at 2026-01-02T00:00:00.000Z",
        ]
    );
}

#[test]
fn from_restricts_where_a_rule_applies() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.track("c", "Product Reviewed", t(0, 1));
    run.track("c", "Order Completed", t(0, 2));
    run.track("c", "Product Reviewed", t(0, 3));
    assert_eq!(
        run.take(),
        [
            "c null->consideration by consideration at 2026-01-01T00:00:00.000Z",
            "c consideration->purchase by purchase at 2026-01-01T00:02:00.000Z",
            "c purchase->advocacy by advocacy at 2026-01-01T00:03:00.000Z",
        ]
    );
}

#[test]
fn the_latest_target_wins_and_ties_go_to_the_first_rule() {
    let mut run = Run::new(
        r#"
        name = "m"
        stages = ["a", "b", "c"]
        [[rules]]
        name = "to-b"
        to = "b"
        events = ["X"]
        [[rules]]
        name = "to-c"
        to = "c"
        events = ["X"]
        [[rules]]
        name = "also-c"
        to = "c"
        events = ["X"]
        "#,
    );
    run.track("u", "X", t(0, 0));
    assert_eq!(run.take(), ["u null->c by to-c at 2026-01-01T00:00:00.000Z"]);
}

#[test]
fn nothing_is_emitted_when_the_winner_is_not_a_move() {
    let mut run = Run::new(
        r#"
        name = "m"
        stages = ["a", "b", "c"]
        [[rules]]
        name = "back-to-a"
        to = "a"
        events = ["Refund"]
        allow_backward = true
        [[rules]]
        name = "to-b"
        to = "b"
        events = ["Refund", "Go"]
        [[rules]]
        name = "to-c"
        to = "c"
        events = ["Jump"]
        "#,
    );
    run.track("u", "Jump", t(0, 0));
    run.track("u", "Refund", t(0, 1));
    assert_eq!(
        run.take(),
        ["u null->c by to-c at 2026-01-01T00:00:00.000Z"],
        "b is the latest target and is behind c, so no move even though a is allowed backward"
    );
}

#[test]
fn backward_moves_need_an_explicit_rule() {
    let mut run = Run::new(
        r#"
        name = "m"
        stages = ["a", "b", "c"]
        [[rules]]
        name = "back-to-a"
        to = "a"
        events = ["Refund"]
        allow_backward = true
        [[rules]]
        name = "to-c"
        to = "c"
        events = ["Jump"]
        [[rules]]
        name = "to-b"
        to = "b"
        events = ["Skip"]
        "#,
    );
    run.track("u", "Jump", t(0, 0));
    run.track("u", "Skip", t(0, 1));
    run.track("u", "Refund", t(0, 2));
    assert_eq!(
        run.take(),
        [
            "u null->c by to-c at 2026-01-01T00:00:00.000Z",
            "u c->a by back-to-a at 2026-01-01T00:02:00.000Z",
        ]
    );
}

#[test]
fn nth_occurrence_matches_exactly_once_and_counts_regardless_of_stage() {
    let mut run = Run::new(
        r#"
        name = "m"
        stages = ["a", "b", "c"]
        [[rules]]
        name = "third-visit"
        to = "c"
        events = ["Visit"]
        occurrence = { nth = 3 }
        from = ["b"]
        [[rules]]
        name = "to-b"
        to = "b"
        events = ["Go"]
        "#,
    );
    run.track("u", "Visit", t(0, 0));
    run.track("u", "Visit", t(0, 1));
    run.track("u", "Go", t(0, 2));
    run.track("u", "Visit", t(0, 3));
    run.track("v", "Visit", t(0, 0));
    run.track("v", "Visit", t(0, 1));
    run.track("v", "Visit", t(0, 2));
    run.track("v", "Go", t(0, 3));
    run.track("v", "Visit", t(0, 4));
    assert_eq!(
        run.take(),
        [
            "u null->a by entry at 2026-01-01T00:00:00.000Z",
            "u a->b by to-b at 2026-01-01T00:02:00.000Z",
            "u b->c by third-visit at 2026-01-01T00:03:00.000Z",
            "v null->a by entry at 2026-01-01T00:00:00.000Z",
            "v a->b by to-b at 2026-01-01T00:03:00.000Z",
        ],
        "v's third Visit came while in a (from fails) and its fourth is not the third"
    );
}

#[test]
fn property_predicates_gate_a_rule() {
    let mut run = Run::new(
        r#"
        name = "m"
        stages = ["a", "vip"]
        [[rules]]
        name = "big-order"
        to = "vip"
        events = ["Order Completed"]
        where = [{ property = "revenue", gte = 100 }, { property = "currency", equals = "USD" }]
        "#,
    );
    let revenue = run.engine.model().property_key("revenue").unwrap().0 as usize;
    let props = |amount: f64, currency: &'static str| {
        let mut values = vec![None, None];
        values[revenue] = Some(PropertyValue::Number(amount));
        values[1 - revenue] = Some(PropertyValue::String(currency.into()));
        values
    };
    run.send(
        "u",
        EventType::Track,
        Some("Order Completed"),
        t(0, 0),
        None,
        props(99.5, "USD"),
    );
    run.send(
        "u",
        EventType::Track,
        Some("Order Completed"),
        t(0, 1),
        None,
        props(150.0, "EUR"),
    );
    run.send(
        "u",
        EventType::Track,
        Some("Order Completed"),
        t(0, 2),
        None,
        props(100.0, "USD"),
    );
    assert_eq!(
        run.take(),
        [
            "u null->a by entry at 2026-01-01T00:00:00.000Z",
            "u a->vip by big-order at 2026-01-01T00:02:00.000Z",
        ]
    );
}

#[test]
fn a_gap_seen_at_the_next_event_fires_every_threshold_it_spans_first() {
    let mut run = Run::five_stage();
    run.track("c", "Order Completed", t(0, 0));
    run.take();
    run.track("c", "Order Completed", t(15, 0));
    assert_eq!(
        run.take(),
        [
            "c winback_7d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
            "c winback_14d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-15T00:00:00.000Z",
            "c back in purchase last 2026-01-01T00:00:00.000Z at 2026-01-16T00:00:00.000Z after winback_7d+winback_14d",
            "c purchase->retention by retention at 2026-01-16T00:00:00.000Z",
        ]
    );
}

#[test]
fn a_gap_of_exactly_the_threshold_fires() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.track("c", "Product Viewed", t(7, 0));
    assert_eq!(
        run.take()[1..],
        [
            "c winback_7d in consideration last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
            "c back in consideration last 2026-01-01T00:00:00.000Z at 2026-01-08T00:00:00.000Z after winback_7d",
        ]
    );
}

#[test]
fn other_customers_move_the_watermark_that_fires_inactivity() {
    let mut run = Run::five_stage();
    run.track("quiet", "Product Viewed", t(0, 0));
    run.track("busy", "Product Viewed", t(7, 4));
    assert_eq!(
        run.take().len(),
        2,
        "7d + 4m is still inside the 5m allowed lateness"
    );
    run.track("busy", "Product Viewed", t(7, 5));
    assert_eq!(
        run.take(),
        ["quiet winback_7d in consideration last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z"],
        "the watermark reached the deadline exactly"
    );
    run.track("quiet", "Order Completed", t(7, 6));
    assert_eq!(
        run.take(),
        [
            "quiet back in consideration last 2026-01-01T00:00:00.000Z at 2026-01-08T00:06:00.000Z after winback_7d",
            "quiet consideration->purchase by purchase at 2026-01-08T00:06:00.000Z",
        ],
        "the 7-day gap fired once, not again when the next event showed it"
    );
}

#[test]
fn new_activity_rearms_the_ladder() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 0));
    run.advance(t(8, 0));
    run.track("c", "Product Viewed", t(9, 0));
    run.advance(t(30, 0));
    assert_eq!(
        run.take()[1..],
        [
            "c winback_7d in consideration last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
            "c back in consideration last 2026-01-01T00:00:00.000Z at 2026-01-10T00:00:00.000Z after winback_7d",
            "c winback_7d in consideration last 2026-01-10T00:00:00.000Z detected 2026-01-17T00:00:00.000Z",
            "c winback_14d in consideration last 2026-01-10T00:00:00.000Z detected 2026-01-24T00:00:00.000Z",
        ]
    );
    assert_eq!(
        run.engine.armed_count(),
        0,
        "the ladder is spent until the next activity"
    );
}

#[test]
fn advancing_fires_in_deadline_order_then_first_seen_order() {
    let mut run = Run::five_stage();
    run.track("b", "Product Viewed", t(0, 10));
    run.track("a", "Product Viewed", t(0, 10));
    run.track("c", "Product Viewed", t(0, 6));
    run.take();
    run.advance(t(7, 10));
    assert_eq!(
        run.take(),
        [
            "c winback_7d in consideration last 2026-01-01T00:06:00.000Z detected 2026-01-08T00:06:00.000Z",
            "b winback_7d in consideration last 2026-01-01T00:10:00.000Z detected 2026-01-08T00:10:00.000Z",
            "a winback_7d in consideration last 2026-01-01T00:10:00.000Z detected 2026-01-08T00:10:00.000Z",
        ]
    );
}

#[test]
fn thresholds_can_filter_stages_and_move_customers() {
    let mut run = Run::new(LAPSING_MODEL);
    run.track("l", "Page Viewed", t(0, 0));
    run.track("c", "Order Completed", t(0, 0));
    run.take();
    run.advance(t(70, 0));
    assert_eq!(
        run.take(),
        [
            "l nudge in lead last 2026-01-01T00:00:00.000Z detected 2026-01-04T00:00:00.000Z",
            "c lapse in customer last 2026-01-01T00:00:00.000Z detected 2026-01-31T00:00:00.000Z",
            "c customer->lapsed by lapse at 2026-01-31T00:00:00.000Z",
            "l gone in lead last 2026-01-01T00:00:00.000Z detected 2026-03-02T00:00:00.000Z",
            "c gone in lapsed last 2026-01-01T00:00:00.000Z detected 2026-03-02T00:00:00.000Z",
        ]
    );
    assert_eq!(run.engine.population(), [1, 0, 1]);
}

#[test]
fn duplicates_are_dropped_within_the_window_only() {
    let mut run = Run::five_stage();
    let send =
        |run: &mut Run, name: &str, at, id| run.send("c", EventType::Track, Some(name), at, Some(id), vec![]);
    assert_eq!(send(&mut run, "Product Viewed", t(0, 0), "m-1"), Verdict::Applied);
    assert_eq!(
        send(&mut run, "Order Completed", t(0, 1), "m-1"),
        Verdict::Duplicate
    );
    assert_eq!(
        send(&mut run, "Order Completed", t(1, 0), "m-1"),
        Verdict::Duplicate,
        "exactly 24 h apart"
    );
    assert_eq!(
        send(&mut run, "Order Completed", t(1, 1), "m-1"),
        Verdict::Applied,
        "24 h 1 m apart"
    );
    assert_eq!(
        run.send(
            "d",
            EventType::Track,
            Some("Order Completed"),
            t(1, 2),
            Some("m-1"),
            vec![]
        ),
        Verdict::Applied
    );
    assert_eq!(
        run.take(),
        [
            "c null->consideration by consideration at 2026-01-01T00:00:00.000Z",
            "c consideration->purchase by purchase at 2026-01-02T00:01:00.000Z",
            "d null->purchase by purchase at 2026-01-02T00:02:00.000Z",
        ]
    );
}

#[test]
fn late_events_change_nothing() {
    let mut run = Run::five_stage();
    run.track("a", "Product Viewed", t(0, 10));
    run.take();
    assert_eq!(
        run.track("a", "Order Completed", t(0, 4)),
        Verdict::Late,
        "6 minutes behind a's own last activity"
    );
    assert_eq!(
        run.track("a", "Product Added", t(0, 5)),
        Verdict::Applied,
        "exactly the allowed lateness behind it"
    );
    assert!(run.take().is_empty());
    assert_eq!(run.engine.stage_of("a"), Some(StageId(1)));
}

#[test]
fn lateness_is_each_customers_own() {
    let mut run = Run::five_stage();
    run.track("a", "Product Viewed", t(0, 0));
    run.track("busy", "Product Viewed", t(3, 0));
    run.take();
    assert_eq!(
        run.track("b", "Order Completed", t(0, 4)),
        Verdict::Applied,
        "a customer's first event is never late, however far behind the partition"
    );
    assert_eq!(
        run.track("a", "Order Completed", t(0, 1)),
        Verdict::Applied,
        "three days behind the watermark, after a's own last activity"
    );
    assert_eq!(
        run.send("z", EventType::Identify, None, t(0, 0), None, vec![]),
        Verdict::Ignored,
        "a non-activity event is never late: it changes nothing behind the watermark"
    );
    assert_eq!(
        run.take(),
        [
            "b null->purchase by purchase at 2026-01-01T00:04:00.000Z",
            "a consideration->purchase by purchase at 2026-01-01T00:01:00.000Z",
        ]
    );
    assert_eq!(
        run.engine.watermark(),
        t(2, 23 * 60 + 55),
        "events behind the watermark do not move it"
    );
}

#[test]
fn non_activity_events_only_move_the_watermark() {
    let mut run = Run::five_stage();
    run.track("a", "Product Viewed", t(0, 0));
    run.take();
    let verdict = run.send("b", EventType::Identify, None, t(8, 0), Some("i-1"), vec![]);
    assert_eq!(verdict, Verdict::Ignored);
    assert_eq!(
        run.take(),
        ["a winback_7d in consideration last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z"]
    );
    assert_eq!(
        run.engine.customer_count(),
        1,
        "identify does not create a customer"
    );
}

#[test]
fn an_older_event_of_the_same_customer_classifies_without_opening_a_gap() {
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 10));
    run.track("c", "Order Completed", t(0, 7));
    run.advance(t(7, 8));
    assert_eq!(
        run.take(),
        [
            "c null->consideration by consideration at 2026-01-01T00:10:00.000Z",
            "c consideration->purchase by purchase at 2026-01-01T00:07:00.000Z",
        ],
        "inactivity counts from the newest activity (00:10), not the late-arriving 00:07"
    );
    run.advance(t(7, 10));
    assert_eq!(run.take().len(), 1);
}

#[test]
fn an_older_event_after_a_firing_does_not_fire_the_same_gap_again() {
    // Only an explicit clock (the live service's wall clock) can run ahead of the
    // watermark and fire a gap before an older, still on-time, event arrives.
    let mut run = Run::five_stage();
    run.track("c", "Product Viewed", t(0, 10));
    run.advance(t(7, 11));
    run.track("c", "Order Completed", t(0, 9));
    run.advance(t(7, 12));
    assert_eq!(
        run.take(),
        [
            "c null->consideration by consideration at 2026-01-01T00:10:00.000Z",
            "c winback_7d in consideration last 2026-01-01T00:10:00.000Z detected 2026-01-08T00:10:00.000Z",
            "c consideration->purchase by purchase at 2026-01-01T00:09:00.000Z",
        ]
    );
    run.advance(t(14, 10));
    assert_eq!(
        run.take(),
        ["c winback_14d in purchase last 2026-01-01T00:10:00.000Z detected 2026-01-15T00:10:00.000Z"],
        "the gap continues from where its ladder stood"
    );
}

#[test]
fn an_image_carries_into_a_model_with_an_inserted_stage() {
    let mut run = Run::five_stage();
    run.track("ann", "Order Completed", t(0, 0));
    run.track("bob", "Product Viewed", t(0, 1));
    let image = run.engine.image();
    let widened = FIVE_STAGE.replace(
        r#""consideration", "purchase""#,
        r#""consideration", "cart", "purchase""#,
    );
    let model = Arc::new(test_model(&widened));
    assert_ne!(model.shape().fingerprint, image.shape.fingerprint);
    let mut migrated = Vec::new();
    let mut restored = Engine::restore(model, EngineSettings::default(), image, &mut migrated).unwrap();
    assert_eq!(migrated, [], "no customer changed stage");
    assert_eq!(restored.stage_of("ann"), Some(StageId(3)), "purchase, now fourth");
    assert_eq!(restored.stage_of("bob"), Some(StageId(1)));
    assert_eq!(restored.population(), [0, 1, 0, 1, 0, 0]);
    let mut outputs = Vec::new();
    restored.advance_to(t(7, 0), &mut outputs);
    assert_eq!(outputs.len(), 1, "ann's win-back stays armed: {outputs:?}");
}

#[test]
fn an_image_that_contradicts_itself_is_refused() {
    let mut run = Run::five_stage();
    run.track("ann", "Order Completed", t(0, 0));
    let model = Arc::new(test_model(FIVE_STAGE));
    let restore = |image| Engine::restore(model.clone(), EngineSettings::default(), image, &mut Vec::new());
    let mut bad_stage = run.engine.image();
    bad_stage.customers[0].stage = StageId(9);
    assert!(matches!(restore(bad_stage), Err(RestoreError::Inconsistent(_))));
    let mut bad_threshold = run.engine.image();
    bad_threshold.customers[0].armed = Some(ThresholdId(7));
    assert!(matches!(
        restore(bad_threshold),
        Err(RestoreError::Inconsistent(_))
    ));
    let mut missing_id = run.engine.image();
    missing_id.ids = crate::core::CustomerIds::default();
    assert!(matches!(restore(missing_id), Err(RestoreError::Inconsistent(_))));
    let reason = |image| match restore(image) {
        Err(RestoreError::Inconsistent(reason)) => reason,
        other => panic!("expected an inconsistent image, got {other:?}"),
    };
    let mut past_the_ladder = run.engine.image();
    past_the_ladder.customers[0].ladder = 9;
    assert!(reason(past_the_ladder).contains("past the ladder's end"));
    let mut stranger_message = run.engine.image();
    stranger_message.dedup.push(DedupEntry {
        customer: CustomerRef(5),
        digest: 1,
        seen_at: t(0, 0),
    });
    assert!(reason(stranger_message).contains("a messageId of unknown customer 5"));
    // State saved by a build whose counter signatures had no rule names loads as is.
    let mut unnamed_counters = run.engine.image();
    for signature in &mut unnamed_counters.shape.counters {
        *signature = signature.replacen(r#"["retention","#, "[", 1);
    }
    assert_ne!(unnamed_counters.shape.counters, run.engine.image().shape.counters);
    assert!(restore(unnamed_counters).is_ok());
    let mut removed_stage = run.engine.image();
    removed_stage.shape.fingerprint ^= 1;
    removed_stage.shape.stages.push("legacy".into());
    removed_stage.customers[0].stage = StageId(5);
    assert!(matches!(
        restore(removed_stage),
        Err(RestoreError::IncompatibleModel { .. })
    ));
}

/// An image with its messageIds in one order: their order carries no meaning.
fn normalised(mut image: EngineImage) -> EngineImage {
    image
        .dedup
        .sort_unstable_by_key(|e| (e.customer, e.digest, e.seen_at));
    image
}

#[test]
fn a_capture_without_writes_is_the_image_and_reuses_the_buffers() {
    let mut run = Run::five_stage();
    for i in 0..10 {
        run.track(&format!("customer-{i}"), "Order Completed", t(0, i));
    }
    assert!(run.engine.continue_image(1).is_none(), "nothing to continue");
    let buffers = Box::new(run.engine.image());
    let customers = buffers.customers.as_ptr();
    run.engine.begin_image(buffers);
    // Ten customers in blocks of four: three steps.
    assert!(run.engine.continue_image(2).is_none());
    let image = run
        .engine
        .continue_image(1)
        .expect("the third block completes it");
    assert!(run.engine.continue_image(1).is_none(), "the capture is over");
    assert_eq!(image.customers.as_ptr(), customers, "no reallocation");
    assert_eq!(*image, run.engine.image());
}

#[test]
fn a_capture_is_the_state_when_it_began_whatever_changes_after() {
    let mut run = Run::five_stage();
    for i in 0..10 {
        run.track(&format!("customer-{i}"), "Product Viewed", t(0, i));
    }
    let before = run.engine.image();
    run.engine.begin_image(Box::default());
    assert!(run.engine.continue_image(1).is_none());
    // Block 0 was copied by the cursor; block 1 is copied ahead of this write; block 2
    // gains a new customer, who is not in the image; a firing changes everyone.
    run.track("customer-1", "Order Completed", t(1, 0));
    run.track("customer-5", "Order Completed", t(1, 1));
    run.track("customer-new", "Order Completed", t(1, 2));
    run.advance(t(30, 0));
    let image = run.engine.continue_image(usize::MAX).expect("complete");
    assert_ne!(
        normalised(run.engine.image()),
        normalised(before.clone()),
        "the state moved on"
    );
    assert_eq!(normalised(*image), normalised(before));
}

/// `output` with its customer's ref replaced by 0, beside the customer's id.
fn by_customer_id(engine: &Engine, mut output: Output) -> (Option<String>, Output) {
    let customer = match &mut output {
        Output::StageChanged { customer, .. }
        | Output::Inactive { customer, .. }
        | Output::Reactivated { customer, .. }
        | Output::Expired { customer, .. }
        | Output::Migrated { customer, .. } => Some(std::mem::replace(customer, CustomerRef(0))),
        Output::Erased { .. } => None,
    };
    (customer.map(|c| engine.customer_id(c).to_owned()), output)
}

/// One step of a generated run: an event, the clock moved on, a capture step, or an
/// erasure.
#[derive(Clone, Debug)]
enum Op {
    Event {
        customer: u8,
        name: usize,
        minutes_later: i64,
        message: u8,
    },
    Advance {
        hours: i64,
    },
    Step {
        blocks: usize,
    },
    Erase {
        customer: u8,
    },
}

fn ops(count: usize) -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    let op = prop_oneof![
        6 => (0u8..24, 0usize..4, -4i64..90, 0u8..40).prop_map(|(customer, name, minutes_later, message)| Op::Event {
            customer,
            name,
            minutes_later,
            message,
        }),
        1 => (0i64..400).prop_map(|hours| Op::Advance { hours }),
        2 => (0usize..3).prop_map(|blocks| Op::Step { blocks }),
        1 => (0u8..24).prop_map(|customer| Op::Erase { customer }),
    ];
    proptest::collection::vec(op, 0..count)
}

proptest::proptest! {
    /// Whatever happens while a capture runs (events, firings, new customers, erasures
    /// and expiries, the dedup window's sweeps and the reclaiming of vacant slots
    /// postponed), the image is the state when it began, and the engine's outputs are
    /// those of an engine that never captured.
    #[test]
    fn a_capture_is_exact_and_changes_no_output(before in ops(60), during in ops(120)) {
        const NAMES: [&str; 4] = ["Product Viewed", "Order Completed", "Product Reviewed", "Signed Up"];
        // A short dedup window, so that sweeps fall due during the capture.
        let settings = EngineSettings {
            dedup_window: Span::from_millis(3 * 60 * MINUTE),
            expire_after: Some(Span::from_millis(20 * DAY)),
            ..EngineSettings::default()
        };
        let mut engine = Engine::new(Arc::new(test_model(FIVE_STAGE)), settings);
        let apply = |engine: &mut Engine, op: &Op, now: &mut EventTime, out: &mut Vec<Output>| match *op {
            Op::Event { customer, name, minutes_later, message } => {
                *now = EventTime::from_millis(now.as_millis() + minutes_later.max(0) * MINUTE);
                let event = Event {
                    kind: EventType::Track,
                    customer: Cow::Owned(format!("c{customer}")),
                    message_id: Some(Cow::Owned(format!("m{message}"))),
                    name: Some(Cow::Borrowed(NAMES[name])),
                    timestamp: EventTime::from_millis(now.as_millis() + minutes_later.min(0) * MINUTE),
                    properties: Vec::new(),
                };
                engine.on_event(&event, out);
            }
            Op::Advance { hours } => {
                engine.advance_to(EventTime::from_millis(now.as_millis() + hours * 60 * MINUTE), out)
            }
            Op::Erase { customer } => {
                let erase = crate::core::event::Erase {
                    customer: Cow::Owned(format!("c{customer}")),
                    at: *now,
                };
                engine.erase(&erase, out);
            }
            Op::Step { .. } => {}
        };
        let (mut now, mut out) = (t(0, 0), Vec::new());
        for op in &before {
            apply(&mut engine, op, &mut now, &mut out);
        }
        let expected_image = engine.image();
        let mut uncaptured = engine.clone();
        let mut uncaptured_now = now;
        engine.begin_image(Box::default());
        let mut image = None;
        let (mut captured_out, mut uncaptured_out) = (Vec::new(), Vec::new());
        // Refs are renumbered when vacant slots are reclaimed, which a capture
        // postpones: outputs are compared by customer id, read before the next call.
        let mut out = Vec::new();
        for op in &during {
            if let Op::Step { blocks } = *op {
                image = image.or_else(|| engine.continue_image(blocks));
            }
            apply(&mut engine, op, &mut now, &mut out);
            captured_out.extend(out.drain(..).map(|o| by_customer_id(&engine, o)));
            apply(&mut uncaptured, op, &mut uncaptured_now, &mut out);
            uncaptured_out.extend(out.drain(..).map(|o| by_customer_id(&uncaptured, o)));
        }
        let mut image = image.or_else(|| engine.continue_image(usize::MAX)).expect("complete");
        image.drop_vacant();
        proptest::prop_assert_eq!(normalised(*image), normalised(expected_image));
        proptest::prop_assert_eq!(captured_out, uncaptured_out);
    }
}

#[test]
fn a_restored_dedup_window_makes_the_same_decisions() {
    // Engine::restore rebuilds the window on its own thread; a messageId sent before
    // the image is still a duplicate after it, for its own customer only.
    let mut run = Run::five_stage();
    for i in 0..20_000 {
        let verdict = run.track(
            &format!("customer-{}", i % 5000),
            "Product Viewed",
            t(0, i / 1000),
        );
        assert_eq!(verdict, Verdict::Applied);
    }
    let image = run.engine.image();
    assert_eq!(image.dedup.len(), 20_000, "every messageId is in the image");
    let model = Arc::new(test_model(FIVE_STAGE));
    let mut restored = Engine::restore(model, EngineSettings::default(), image, &mut Vec::new()).unwrap();
    let mut out = Vec::new();
    // The ith track call (from 0) sent messageId m{i+1} as customer-{i % 5000}.
    for (customer, message, expected) in [
        ("customer-0", "m1", Verdict::Duplicate),
        ("customer-999", "m16000", Verdict::Duplicate),
        ("customer-998", "m16000", Verdict::Applied),
        ("customer-0", "fresh", Verdict::Applied),
    ] {
        let event = Event {
            kind: EventType::Track,
            customer: Cow::Borrowed(customer),
            message_id: Some(Cow::Borrowed(message)),
            name: Some(Cow::Borrowed("Product Viewed")),
            timestamp: t(0, 30),
            properties: Vec::new(),
        };
        assert_eq!(
            restored.on_event(&event, &mut out),
            expected,
            "{customer} {message}"
        );
    }
}

/// Each transition's `time_in_from`, in order.
fn times_in_from(outputs: &[Output]) -> Vec<Option<i64>> {
    outputs
        .iter()
        .filter_map(|output| match *output {
            Output::StageChanged { .. } => Some(output.time_in_from().map(Span::as_millis)),
            _ => None,
        })
        .collect()
}

#[test]
fn transitions_say_how_long_the_stage_they_leave_was_held() {
    let mut engine = Engine::new(Arc::new(test_model(FIVE_STAGE)), EngineSettings::default());
    let mut out = Vec::new();
    let mut send = |name: &str, at: EventTime, out: &mut Vec<Output>| {
        let event = Event {
            kind: EventType::Track,
            customer: Cow::Borrowed("c"),
            message_id: None,
            name: Some(Cow::Owned(name.to_owned())),
            timestamp: at,
            properties: Vec::new(),
        };
        engine.on_event(&event, out);
    };
    send("Page Viewed", t(0, 0), &mut out);
    send("Product Viewed", t(0, 90), &mut out);
    // Activity that does not move the customer leaves the entry time alone.
    send("Product Viewed", t(1, 0), &mut out);
    send("Order Completed", t(2, 30), &mut out);
    // An event older than the entry (within the allowed lateness) moves the customer
    // on after zero time, never a negative one.
    send("Product Reviewed", t(2, 27), &mut out);
    assert_eq!(
        times_in_from(&out),
        [None, Some(90 * MINUTE), Some(2 * DAY - 60 * MINUTE), Some(0)]
    );
    // Each says when the customer was first seen and entered the stage it leaves.
    let entries: Vec<_> = out
        .iter()
        .filter_map(|output| match *output {
            Output::StageChanged {
                first_seen,
                from_entered,
                ..
            } => Some((first_seen, from_entered)),
            _ => None,
        })
        .collect();
    let first_seen = Some(t(0, 0));
    assert_eq!(
        entries,
        [
            (first_seen, None),
            (first_seen, Some(t(0, 0))),
            (first_seen, Some(t(0, 90))),
            (first_seen, Some(t(2, 30))),
        ]
    );
    // An inactivity event says when the stage it fired in was entered.
    out.clear();
    engine.advance_to(t(11, 0), &mut out);
    assert!(matches!(
        out[..],
        [Output::Inactive { stage_entered, .. }] if stage_entered == t(2, 27)
    ));
}

#[test]
fn an_inactivity_move_reports_the_time_in_stage_up_to_its_detection() {
    let mut run = Run::new(
        r#"
        name = "m"
        stages = ["lead", "customer", "lapsed"]
        [[rules]]
        name = "bought"
        to = "customer"
        events = ["Order Completed"]
        [[inactivity]]
        name = "lapse"
        after = "30d"
        stages = ["customer"]
        move_to = "lapsed"
        "#,
    );
    run.track("c", "Page Viewed", t(0, 0));
    run.track("c", "Order Completed", t(1, 0));
    // The entry time survives an image: the restored engine reports the same.
    let mut restored = Engine::restore(
        Arc::new(run.engine.model().clone()),
        EngineSettings::default(),
        run.engine.image(),
        &mut Vec::new(),
    )
    .expect("same model");
    for engine in [&mut run.engine, &mut restored] {
        let mut out = Vec::new();
        engine.advance_to(t(40, 0), &mut out);
        assert_eq!(times_in_from(&out), [Some(30 * DAY)]);
    }
}

#[test]
fn a_customer_state_is_27_bytes() {
    // Last activity, index key, first seen, stage entered (6 bytes each), stage, armed,
    // ladder, byte-aligned. Memory per customer is budgeted (docs/performance.md); a
    // field that grows this shows up here first.
    assert_eq!(std::mem::size_of::<CustomerState>(), 27);
}

#[test]
fn six_byte_instants_keep_milliseconds_both_sides_of_the_epoch() {
    // Year 1 to year 6000.
    for millis in [
        0,
        1,
        -1,
        1_767_225_600_123,
        -62_135_596_800_000,
        127_174_492_800_000,
    ] {
        assert_eq!(
            Instant48::at(EventTime::from_millis(millis)).time().as_millis(),
            millis
        );
    }
    assert_ne!(
        Instant48::at(EventTime::MIN),
        Instant48::UNKNOWN,
        "clamped, never unknown"
    );
    assert_eq!(Instant48::UNKNOWN.known(), None);
}

impl Run {
    fn with_expiry(model_toml: &str, expire_after: Span) -> Self {
        let settings = EngineSettings {
            expire_after: Some(expire_after),
            ..EngineSettings::default()
        };
        Run {
            engine: Engine::new(Arc::new(test_model(model_toml)), settings),
            ..Run::new(model_toml)
        }
    }

    fn erase(&mut self, customer: &str, at: EventTime) {
        let mut out = Vec::new();
        let erase = crate::core::event::Erase {
            customer: Cow::Borrowed(customer),
            at,
        };
        self.engine.erase(&erase, &mut out);
        self.record(&out);
    }
}

#[test]
fn an_erased_customer_is_forgotten_and_comes_back_as_new() {
    let mut run = Run::five_stage();
    run.send(
        "c",
        EventType::Track,
        Some("Order Completed"),
        t(0, 0),
        Some("m-1"),
        Vec::new(),
    );
    run.track("other", "Product Viewed", t(0, 1));
    run.take();
    run.erase("c", t(0, 2));
    assert_eq!(run.take(), ["erased at 2026-01-01T00:02:00.000Z"]);
    assert_eq!(run.engine.stage_of("c"), None);
    assert_eq!(run.engine.customer_count(), 1);
    assert_eq!(run.engine.population(), [0, 1, 0, 0, 0]);
    assert_eq!(run.engine.armed_count(), 1, "its win-backs are cancelled");
    // Its messageIds went with it: the same id is a new event, which starts a journey.
    let verdict = run.send(
        "c",
        EventType::Track,
        Some("Product Viewed"),
        t(0, 3),
        Some("m-1"),
        Vec::new(),
    );
    assert_eq!(verdict, Verdict::Applied);
    assert_eq!(
        run.take(),
        ["c null->consideration by consideration at 2026-01-01T00:03:00.000Z"]
    );
    // An erasure of a customer without state still says so, and moves no clock.
    let watermark = run.engine.watermark();
    run.erase("never-seen", t(30, 0));
    assert_eq!(run.take(), ["erased at 2026-01-31T00:00:00.000Z"]);
    assert_eq!(run.engine.watermark(), watermark);
    // The erased state's win-backs never fire; the new journey's do.
    run.advance(t(8, 0));
    assert_eq!(
        run.take(),
        [
            "other winback_7d in consideration last 2026-01-01T00:01:00.000Z detected 2026-01-08T00:01:00.000Z",
            "c winback_7d in consideration last 2026-01-01T00:03:00.000Z detected 2026-01-08T00:03:00.000Z",
        ]
    );
    let image = run.engine.image();
    assert_eq!(image.customers.len(), 2);
    assert!((0..2).all(|i| image.ids.get(CustomerRef(i)) != "never-seen"));
}

#[test]
fn expiry_follows_the_ladder_from_the_firing_clock() {
    let mut run = Run::with_expiry(FIVE_STAGE, Span::from_millis(30 * DAY));
    run.track("c", "Order Completed", t(0, 0));
    run.track("d", "Product Viewed", t(0, 5));
    run.take();
    run.advance(t(30, 2));
    assert_eq!(
        run.take(),
        [
            "c winback_7d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
            "d winback_7d in consideration last 2026-01-01T00:05:00.000Z detected 2026-01-08T00:05:00.000Z",
            "c winback_14d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-15T00:00:00.000Z",
            "d winback_14d in consideration last 2026-01-01T00:05:00.000Z detected 2026-01-15T00:05:00.000Z",
            "c expired in purchase last 2026-01-01T00:00:00.000Z at 2026-01-31T00:00:00.000Z",
        ]
    );
    assert_eq!(run.engine.stage_of("c"), None);
    assert_eq!(run.engine.customer_count(), 1);
    assert_eq!(
        run.engine.armed_count(),
        0,
        "expiry is not an inactivity threshold"
    );
    // The next event of an expired customer starts a new journey.
    run.track("c", "Product Viewed", t(31, 0));
    assert_eq!(
        run.take(),
        [
            "d expired in consideration last 2026-01-01T00:05:00.000Z at 2026-01-31T00:05:00.000Z",
            "c null->consideration by consideration at 2026-02-01T00:00:00.000Z",
        ],
        "d's expiry came due as the event moved the watermark"
    );
}

#[test]
fn a_gap_revealed_by_the_next_event_never_expires_the_customer() {
    let mut run = Run::with_expiry(FIVE_STAGE, Span::from_millis(30 * DAY));
    run.track("c", "Order Completed", t(0, 0));
    run.take();
    // Its own event moves the watermark to 30d + 3m - 5m: short of the expiry.
    run.track("c", "Order Completed", t(30, 3));
    assert_eq!(
        run.take(),
        [
            "c winback_7d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-08T00:00:00.000Z",
            "c winback_14d in purchase last 2026-01-01T00:00:00.000Z detected 2026-01-15T00:00:00.000Z",
            "c back in purchase last 2026-01-01T00:00:00.000Z at 2026-01-31T00:03:00.000Z after winback_7d+winback_14d",
            "c purchase->retention by retention at 2026-01-31T00:03:00.000Z",
        ]
    );
    // Here the watermark passes the expiry first: the event finds the state gone.
    run.track("c", "Order Completed", t(60, 30));
    assert_eq!(
        run.take(),
        [
            "c winback_7d in retention last 2026-01-31T00:03:00.000Z detected 2026-02-07T00:03:00.000Z",
            "c winback_14d in retention last 2026-01-31T00:03:00.000Z detected 2026-02-14T00:03:00.000Z",
            "c expired in retention last 2026-01-31T00:03:00.000Z at 2026-03-02T00:03:00.000Z",
            "c null->purchase by purchase at 2026-03-02T00:30:00.000Z",
        ]
    );
}

#[test]
fn memory_of_expired_customers_is_reclaimed() {
    let mut run = Run::with_expiry(FIVE_STAGE, Span::from_millis(30 * DAY));
    // A new customer every minute, each seen once: at most 30 days' worth stay.
    for i in 0..100_000 {
        run.track(&format!("visitor-{i}"), "Product Viewed", t(0, i));
    }
    let live = run.engine.customer_count();
    assert_eq!(
        live as i64,
        30 * DAY / MINUTE + 5,
        "30 days of visitors, and the allowed lateness"
    );
    assert!(
        run.engine.states.len() <= 2 * live.max(retire::RECLAIM_AT_LEAST),
        "{} refs held for {live} customers",
        run.engine.states.len()
    );
    assert_eq!(run.engine.stage_of("visitor-99999"), Some(StageId(1)));
    assert_eq!(run.engine.stage_of("visitor-0"), None);
}

/// One step of a generated run with customers leaving: an event, the clock moved on,
/// or a customer erased.
#[derive(Clone, Debug)]
enum LeavingOp {
    Event {
        customer: u8,
        name: usize,
        minutes_later: i64,
    },
    Advance {
        days: i64,
    },
    Erase {
        customer: u8,
    },
}

fn leaving_ops(count: usize) -> impl proptest::strategy::Strategy<Value = Vec<LeavingOp>> {
    use proptest::prelude::*;
    let op = prop_oneof![
        8 => (0u8..12, 0usize..4, -4i64..3_000).prop_map(|(customer, name, minutes_later)| LeavingOp::Event {
            customer,
            name,
            minutes_later,
        }),
        1 => (0i64..20).prop_map(|days| LeavingOp::Advance { days }),
        1 => (0u8..12).prop_map(|customer| LeavingOp::Erase { customer }),
    ];
    proptest::collection::vec(op, 0..count)
}

/// Runs `ops` on a fresh engine (expiring state after 20 days), from `restart_at` on
/// in an engine restored from the first one's image; the log of what it emitted.
/// `keep` names a customer whose erasures are left out.
fn run_leaving(ops: &[LeavingOp], restart_at: usize, keep: Option<u8>) -> Vec<String> {
    const NAMES: [&str; 4] = [
        "Product Viewed",
        "Order Completed",
        "Product Reviewed",
        "Signed Up",
    ];
    let mut run = Run::with_expiry(FIVE_STAGE, Span::from_millis(20 * DAY));
    let mut now = t(0, 0);
    for (i, op) in ops.iter().enumerate() {
        if i == restart_at {
            let model = Arc::new(run.engine.model().clone());
            let settings = run.engine.settings;
            run.engine =
                Engine::restore(model, settings, run.engine.image(), &mut Vec::new()).expect("same model");
        }
        match *op {
            LeavingOp::Erase { customer } if Some(customer) == keep => {}
            LeavingOp::Event {
                customer,
                name,
                minutes_later,
            } => {
                now = EventTime::from_millis(now.as_millis() + minutes_later.max(0) * MINUTE);
                let at = EventTime::from_millis(now.as_millis() + minutes_later.min(0) * MINUTE);
                run.track(&format!("c{customer}"), NAMES[name], at);
            }
            LeavingOp::Advance { days } => run.advance(EventTime::from_millis(now.as_millis() + days * DAY)),
            LeavingOp::Erase { customer } => run.erase(&format!("c{customer}"), now),
        }
    }
    run.take()
}

proptest::proptest! {
    /// Erasing a customer changes no other customer's outputs: the same run without
    /// its erasures emits the same for everyone else.
    #[test]
    fn erasing_a_customer_changes_no_other_customers_outputs(
        ops in leaving_ops(200),
        erased in 0u8..12,
        at in 0usize..200,
    ) {
        let mut ops = ops;
        ops.insert(at.min(ops.len()), LeavingOp::Erase { customer: erased });
        let others = |lines: Vec<String>| -> Vec<String> {
            let name = format!("c{erased} ");
            lines
                .into_iter()
                .filter(|line| !line.starts_with(&name) && !line.starts_with("erased"))
                .collect()
        };
        let with = others(run_leaving(&ops, usize::MAX, None));
        let without = others(run_leaving(&ops, usize::MAX, Some(erased)));
        proptest::prop_assert_eq!(with, without);
    }

    /// A restart from an image (which leaves erased and expired customers out and
    /// renumbers the rest) emits what the engine that carried on emits.
    #[test]
    fn customers_leaving_survive_a_restore(ops in leaving_ops(200), restart in 0usize..200) {
        proptest::prop_assert_eq!(run_leaving(&ops, restart, None), run_leaving(&ops, usize::MAX, None));
    }
}

proptest::proptest! {
    /// Whatever a customer did before expiring, its activity after the expiry gives
    /// exactly the outputs a customer never seen before would get.
    #[test]
    fn expiry_then_new_activity_is_any_fresh_customers_journey(
        history in proptest::collection::vec((0usize..4, 0i64..3_000), 1..30),
        later in proptest::collection::vec((0usize..4, -4i64..3_000), 1..30),
    ) {
        const NAMES: [&str; 4] = ["Product Viewed", "Order Completed", "Product Reviewed", "Page Viewed"];
        let expire_after = Span::from_millis(20 * DAY);
        let mut returning = Run::with_expiry(FIVE_STAGE, expire_after);
        let mut at = t(0, 0);
        for &(name, minutes) in &history {
            at = EventTime::from_millis(at.as_millis() + minutes * MINUTE);
            returning.track("c", NAMES[name], at);
        }
        // Past the expiry of the last activity.
        let restart = at.plus(Span::from_millis(21 * DAY));
        returning.advance(restart);
        proptest::prop_assert_eq!(returning.engine.stage_of("c"), None);
        returning.take();
        let mut fresh = Run::with_expiry(FIVE_STAGE, expire_after);
        fresh.advance(restart);
        let mut at = restart;
        for &(name, minutes) in &later {
            at = EventTime::from_millis(at.as_millis() + minutes.max(0) * MINUTE);
            let stamped = EventTime::from_millis(at.as_millis() + minutes.min(0) * MINUTE).max(restart);
            returning.track("c", NAMES[name], stamped);
            fresh.track("c", NAMES[name], stamped);
        }
        let end = at.plus(Span::from_millis(60 * DAY));
        returning.advance(end);
        fresh.advance(end);
        proptest::prop_assert_eq!(returning.take(), fresh.take());
    }
}

#[test]
fn expiry_then_new_activity_is_a_fresh_customers_journey() {
    // The same events for "back" after its expiry, and for a customer never seen.
    let events = [
        ("Page Viewed", t(40, 0)),
        ("Product Viewed", t(40, 10)),
        ("Order Completed", t(41, 0)),
    ];
    let mut returning = Run::with_expiry(FIVE_STAGE, Span::from_millis(30 * DAY));
    returning.track("back", "Order Completed", t(0, 0));
    returning.track("back", "Order Completed", t(1, 0));
    returning.advance(t(39, 0));
    returning.take();
    let mut fresh = Run::with_expiry(FIVE_STAGE, Span::from_millis(30 * DAY));
    fresh.advance(t(39, 0));
    for (name, at) in events {
        returning.track("back", name, at);
        fresh.track("back", name, at);
    }
    returning.advance(t(90, 0));
    fresh.advance(t(90, 0));
    assert_eq!(returning.take(), fresh.take());
}
