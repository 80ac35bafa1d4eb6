//! Inactivity timers at scale: what many armed customers cost.
//!
//! An engine holds N armed customers (36-character ids, two events each; the five-stage
//! preset arms `winback_7d` for each). Two measurements per N:
//! - `fire all`: the clock jumps past every customer's 7-day deadline at once, so N
//!   thresholds fire in one `advance_to` (and each customer arms `winback_14d`);
//! - `event, N armed`: 100,000 activity events for existing customers, each re-arming
//!   its ladder. Its cost per event should not grow with N beyond the deadline index's
//!   logarithm and the cache misses of a bigger table.
//!
//! Run: `cargo bench --bench inactivity` (`INACTIVITY_BENCH_CUSTOMERS=10000000` for
//! one other N). Figures and the machine: docs/performance.md.

mod support;

use std::borrow::Cow;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput};
use stagestream::core::{Engine, Event, EventType, Output, Span};

const DAY: i64 = 86_400_000;
const EVENTS: u32 = 100_000;

fn main() {
    // An environment variable, since criterion refuses arguments it does not know.
    let counts: Vec<u32> = std::env::var("INACTIVITY_BENCH_CUSTOMERS").map_or_else(
        |_| vec![100_000, 1_000_000],
        |n| vec![n.parse().expect("INACTIVITY_BENCH_CUSTOMERS=N")],
    );
    let settings = support::five_stage();
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    for customers in counts {
        let mut engine = Engine::new(Arc::clone(&settings.model), settings.engine);
        support::fill(&mut engine, customers, false);
        assert_eq!(engine.armed_count(), customers as usize, "every customer armed");
        let mut group = c.benchmark_group(format!("inactivity/{customers}"));

        // Every last activity is within a day of the start: eight days later, every
        // 7-day threshold is due and no 14-day one.
        let past_every_deadline = support::fill_start().plus(Span::from_millis(8 * DAY));
        group.throughput(Throughput::Elements(u64::from(customers)));
        group.bench_function("fire all", |b| {
            b.iter_batched_ref(
                || (engine.clone(), Vec::with_capacity(customers as usize)),
                |(engine, out): &mut (Engine, Vec<Output>)| {
                    engine.advance_to(past_every_deadline, out);
                    assert_eq!(out.len(), customers as usize);
                },
                BatchSize::LargeInput,
            )
        });

        // Customers spread over the whole table, in an order unrelated to their slots.
        let ids: Vec<String> = (0..EVENTS)
            .map(|j| support::customer_id((u64::from(j) * 7_919 % u64::from(customers)) as u32))
            .collect();
        let later = support::fill_start().as_millis() + DAY;
        let events: Vec<Event<'_>> = ids
            .iter()
            .zip(0..)
            .map(|(id, j)| Event {
                kind: EventType::Track,
                customer: Cow::Borrowed(id),
                message_id: None,
                name: Some(Cow::Borrowed("Product Viewed")),
                timestamp: stagestream::core::EventTime::from_millis(later + j),
                properties: Vec::new(),
            })
            .collect();
        group.throughput(Throughput::Elements(u64::from(EVENTS)));
        group.bench_function("event, N armed", |b| {
            b.iter_batched_ref(
                || (engine.clone(), Vec::new()),
                |(engine, out): &mut (Engine, Vec<Output>)| {
                    for event in &events {
                        out.clear();
                        engine.on_event(event, out);
                    }
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
    c.final_summary();
}
