//! Memory under churning ids, with and without `state.expire_after`: a year of traffic
//! in which a steady population of regulars comes back every few days while a stream
//! of one-visit anonymous ids (36 characters, a messageId each) never returns. Without
//! expiry the engine holds every id ever seen; with it, those active within
//! `expire_after`. Each case runs in a process of its own under the service's allocator
//! (freed pages returned at once, as in the memory bench) and reports its peak and
//! final resident memory, the customers it holds, the size of a snapshot of the final
//! state per customer held, and the longest single event (one that reclaims expired
//! customers' slots). Run: `cargo bench --bench churn` (optionally
//! `-- NEW_PER_DAY REGULARS DAYS`). Figures: docs/performance.md, "Memory under churn".

#[path = "support/resident.rs"]
mod resident;
#[allow(dead_code)] // the engine fill is the memory bench's; this one feeds its own stream
mod support;

use resident::{mib, peak_resident_bytes, resident_bytes};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use stagestream::core::{Engine, EngineSettings, Event, EventTime, EventType, Span};
use stagestream::snapshot::format::{encode, Header};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DAY: i64 = 86_400_000;
/// Set to `NEW_PER_DAY:REGULARS:DAYS:EXPIRE_DAYS` (0: no expiry) to run one case here.
const CASE: &str = "CHURN_BENCH_CASE";

/// Feeds a year (or `days`) of churning traffic, in time order, one day at a time: each
/// regular visits on one day in three, each new id once.
fn run_case(new_per_day: u32, regulars: u32, days: u32, expire_days: u32) {
    let settings = support::five_stage();
    let engine_settings = EngineSettings {
        expire_after: (expire_days > 0).then(|| Span::from_millis(i64::from(expire_days) * DAY)),
        ..settings.engine
    };
    let before = resident_bytes();
    let started = Instant::now();
    let mut engine = Engine::new(Arc::clone(&settings.model), engine_settings);
    let mut outputs = Vec::new();
    let (mut events, mut expired) = (0u64, 0u64);
    // The longest single event: one that reclaims expired customers' slots renumbers
    // the live ones.
    let mut longest = std::time::Duration::ZERO;
    let start = support::fill_start().as_millis();
    let visitors_per_day = new_per_day + regulars / 3;
    for day in 0..days {
        let today = (0..regulars)
            .filter(|r| (r + day) % 3 == 0)
            .map(|r| format!("regular-{r:028}"))
            .chain((0..new_per_day).map(|n| support::customer_id(day * new_per_day + n)));
        for (i, customer) in today.enumerate() {
            let at = start + i64::from(day) * DAY + (i as i64 * DAY) / i64::from(visitors_per_day.max(1));
            let message_id = format!("{customer}-{day}");
            let event = Event {
                kind: EventType::Track,
                customer: Cow::Owned(customer),
                message_id: Some(Cow::Owned(message_id)),
                name: Some(Cow::Borrowed("Product Viewed")),
                timestamp: EventTime::from_millis(at),
                properties: Vec::new(),
            };
            outputs.clear();
            let applying = Instant::now();
            engine.on_event(&event, &mut outputs);
            longest = longest.max(applying.elapsed());
            expired += outputs
                .iter()
                .filter(|o| matches!(o, stagestream::core::Output::Expired { .. }))
                .count() as u64;
            events += 1;
        }
    }
    let took = started.elapsed();
    let peak = peak_resident_bytes().saturating_sub(before);
    let after = resident_bytes().saturating_sub(before);
    let held = engine.customer_count();
    let header = Header {
        fingerprint: settings.model.shape().fingerprint,
        topic: "events".into(),
        partition: 0,
        offset: 0,
        about: None,
    };
    let snapshot = encode(&header, &engine.image()).len();
    println!(
        "{days} days, {new_per_day} new ids/day, {regulars} regulars, expiry {}: {events} events in {:.1} s; \
         longest event {:.1} ms; holds {held} customers ({expired} expired); peak {:.1} MiB, end {:.1} MiB \
         ({:.1} bytes/customer held); snapshot {:.1} MB ({:.1} bytes/customer held)",
        if expire_days > 0 { format!("{expire_days}d") } else { "never".into() },
        took.as_secs_f64(),
        longest.as_secs_f64() * 1e3,
        mib(peak),
        mib(after),
        after as f64 / held.max(1) as f64,
        snapshot as f64 / 1e6,
        snapshot as f64 / held.max(1) as f64,
    );
}

fn main() {
    if let Ok(case) = std::env::var(CASE) {
        let numbers: Vec<u32> = case.split(':').map(|n| n.parse().expect("a number")).collect();
        run_case(numbers[0], numbers[1], numbers[2], numbers[3]);
        return;
    }
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (new_per_day, regulars, days) = match args[..] {
        [n, r, d, ..] => (n, r, d),
        _ => (10_000, 30_000, 365),
    };
    let me = std::env::current_exe().expect("the bench binary");
    for expire_days in [0, 30] {
        let case = format!("{new_per_day}:{regulars}:{days}:{expire_days}");
        let status = std::process::Command::new(&me)
            .env(CASE, &case)
            .env("MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
            .status()
            .expect("run one case");
        assert!(status.success(), "case {case} failed");
    }
}
