//! The longest an event waits for the dedup window's sweep at scale.
//!
//! Fills one engine with N customers, two messageIds each in the window, then moves
//! the watermark past the next sweep twice: a quarter window on (every id is kept) and
//! two days on (every id is dropped). A sweep visits one block's table per applied
//! event; each phase feeds one event per block of customers plus a hundred, times each
//! `on_event`, and prints the longest, the p99 and the median against events with no sweep
//! under way. Run: `cargo bench --bench sweep` (optionally `-- 10000000`). Figures:
//! docs/performance.md.

mod support;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stagestream::core::{Engine, Event, EventTime, EventType};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const HOUR: i64 = 3_600_000;
/// Customers per block ([`stagestream::core`]'s `BLOCK_SHIFT`): one table each.
const BLOCK: u32 = 4_096;

/// Feeds `count` events (a fresh messageId each) from `at` on, one per customer from
/// `first`, and returns how long each `on_event` took.
fn feed(engine: &mut Engine, first: u32, count: u32, at: EventTime) -> Vec<Duration> {
    let mut outputs = Vec::new();
    (0..count)
        .map(|i| {
            let event = Event {
                kind: EventType::Track,
                customer: Cow::Owned(support::customer_id(first + i)),
                message_id: Some(Cow::Owned(format!("sweep-{}-{i}", at.as_millis()))),
                name: Some(Cow::Borrowed("Product Viewed")),
                timestamp: EventTime::from_millis(at.as_millis() + i64::from(i)),
                properties: Vec::new(),
            };
            outputs.clear();
            let started = Instant::now();
            engine.on_event(&event, &mut outputs);
            started.elapsed()
        })
        .collect()
}

fn summary(times: &[Duration]) -> String {
    let (longest_at, longest) = times
        .iter()
        .enumerate()
        .max_by_key(|&(_, time)| time)
        .expect("some events");
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    format!(
        "longest {longest:?} (event {longest_at}), p99 {:?}, median {:?}, {} events in {:?}",
        sorted[sorted.len() * 99 / 100],
        sorted[sorted.len() / 2],
        times.len(),
        times.iter().sum::<Duration>()
    )
}

fn main() {
    let customers: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let settings = support::five_stage();
    let window = settings.engine.dedup_window.as_millis();
    let mut engine = Engine::new(Arc::clone(&settings.model), settings.engine);
    support::fill(&mut engine, customers, true);
    // The fill's last sweep began at its second pass (12 hours in); its events end
    // `customers` milliseconds later.
    let filled_until = support::fill_start().as_millis() + 12 * HOUR + i64::from(customers);
    let events = customers.div_ceil(BLOCK) + 100;
    println!(
        "{customers} customers, {} messageIds in the window",
        2 * customers
    );
    for (phase, at) in [
        ("sweep keeping every id", filled_until + window / 4 + HOUR),
        ("sweep dropping every id", filled_until + 2 * window + HOUR),
    ] {
        let at = EventTime::from_millis(at);
        let sweeping = feed(&mut engine, 0, events, at);
        // The next sweep is a quarter window after this one began: none is under way.
        let after = EventTime::from_millis(at.as_millis() + i64::from(events) + 1);
        let quiet = feed(&mut engine, events, events, after);
        println!("  {phase}: {}", summary(&sweeping));
        println!("  then, no sweep under way: {}", summary(&quiet));
    }
}
