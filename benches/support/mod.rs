//! What the memory and snapshot benches share: the five-stage settings and an engine
//! filled with N customers (36-character ids, two activity events each, so every
//! customer is armed).

use std::borrow::Cow;

use stagestream::config::{self, Settings};
use stagestream::core::{Engine, Event, EventTime, EventType};

pub fn five_stage() -> Settings {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/presets/five-stage.toml");
    config::load_with_env(&path, Some(Default::default())).unwrap()
}

/// The `i`th customer's id: 36 characters, like a UUID.
pub fn customer_id(i: u32) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, u64::from(i) * 31)
}

/// The instant the filled history starts; each customer's last activity is within a day
/// after it (12 hours plus one millisecond per customer: 10M customers take 2.8 hours).
pub fn fill_start() -> EventTime {
    EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
}

/// Feeds `engine` two events for each of `customers` customers ("Product Viewed", then
/// "Order Completed" 12 hours later), in time order, with messageIds when
/// `with_message_ids`.
pub fn fill(engine: &mut Engine, customers: u32, with_message_ids: bool) {
    let mut outputs = Vec::new();
    let start = fill_start().as_millis();
    for step in 0..2u32 {
        for i in 0..customers {
            let id = format!("{:08x}-{:04x}-4000-8000-{:012x}", i, step, u64::from(i) * 7919);
            let customer = customer_id(i);
            let event = Event {
                kind: EventType::Track,
                customer: Cow::Owned(customer),
                message_id: with_message_ids.then_some(Cow::Owned(id)),
                name: Some(Cow::Borrowed(if step == 0 {
                    "Product Viewed"
                } else {
                    "Order Completed"
                })),
                // In time order: an event older than the watermark would be late.
                timestamp: EventTime::from_millis(start + i64::from(step) * 12 * 3_600_000 + i64::from(i)),
                properties: Vec::new(),
            };
            outputs.clear();
            engine.on_event(&event, &mut outputs);
        }
    }
}
