//! Snapshot costs at 1M customers (36-character ids, two events each with messageIds
//! in the dedup window, every customer armed): the processing pause (`Engine::image`,
//! the only part on the consumer's path; the service copies into buffers prepared
//! beforehand on the snapshot thread), encoding a file, and restoring one
//! (checksum, decompress, parse, `Engine::restore`).
//!
//! Run: `cargo bench --bench snapshot` (optionally `-- --customers 10000000`).
//! Figures and the machine: docs/performance.md.

use std::borrow::Cow;
use std::sync::Arc;

use criterion::{BatchSize, Criterion};
use stagestream::config;
use stagestream::core::{Engine, EngineImage, Event, EventTime, EventType};
use stagestream::snapshot::format::{decode, encode, Header};

fn filled_engine(customers: u32) -> (Engine, config::Settings) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/presets/five-stage.toml");
    let settings = config::load_with_env(&path, Some(Default::default())).unwrap();
    let mut engine = Engine::new(Arc::clone(&settings.model), settings.engine);
    let mut outputs = Vec::new();
    let start = EventTime::parse_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .as_millis();
    for step in 0..2u32 {
        for i in 0..customers {
            let event = Event {
                kind: EventType::Track,
                customer: Cow::Owned(format!("{:08x}-0000-4000-8000-{:012x}", i, u64::from(i) * 31)),
                message_id: Some(Cow::Owned(format!(
                    "{:08x}-{:04x}-4000-8000-{:012x}",
                    i,
                    step,
                    u64::from(i) * 7919
                ))),
                name: Some(Cow::Borrowed(if step == 0 {
                    "Product Viewed"
                } else {
                    "Order Completed"
                })),
                timestamp: EventTime::from_millis(
                    start + i64::from(step) * 3_600_000 + i64::from(i % 3_600_000),
                ),
                properties: Vec::new(),
            };
            outputs.clear();
            engine.on_event(&event, &mut outputs);
        }
    }
    (engine, settings)
}

fn main() {
    let customers = std::env::args()
        .skip_while(|a| a != "--customers")
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("--customers N"));
    let (engine, settings) = filled_engine(customers);
    let header = Header {
        fingerprint: settings.model.shape().fingerprint,
        topic: "events".into(),
        partition: 0,
        offset: 1,
    };
    let bytes = encode(&header, &engine.image());
    println!(
        "{customers} customers, {} dedup ids: snapshot file {:.1} MB ({:.1} bytes per customer)",
        engine.image().dedup.len(),
        bytes.len() as f64 / 1e6,
        bytes.len() as f64 / f64::from(customers)
    );
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let mut group = c.benchmark_group(format!("snapshot/{customers}"));
    group.bench_function("pause (image, fresh buffers)", |b| b.iter(|| engine.image()));
    // What the service does: buffers allocated and touched on the snapshot thread
    // beforehand (then reused), so the pause is a copy into mapped memory.
    group.bench_function("pause (image into prepared buffers)", |b| {
        b.iter_batched_ref(
            || EngineImage::with_capacity(engine.image_size().with_headroom()),
            |image| engine.image_into(image),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("encode", |b| {
        b.iter_batched(
            || engine.image(),
            |image| encode(&header, &image),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("restore (decode + Engine::restore)", |b| {
        b.iter(|| {
            let (_, image) = decode(&bytes).unwrap();
            Engine::restore(Arc::clone(&settings.model), settings.engine, image).unwrap()
        })
    });
    group.finish();
    c.final_summary();
}
