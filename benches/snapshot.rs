//! Snapshot costs at 1M customers (36-character ids, two events each with messageIds
//! in the dedup window, every customer armed): the processing pause (`Engine::image`,
//! the only part on the consumer's path; the service copies into buffers prepared
//! beforehand on the snapshot thread), encoding a file, and restoring one
//! (checksum, decompress, parse, `Engine::restore`).
//!
//! Run: `cargo bench --bench snapshot` (`SNAPSHOT_BENCH_CUSTOMERS=10000000` for 10M).
//! Figures and the machine: docs/performance.md.

mod support;

use std::sync::Arc;

use criterion::{BatchSize, Criterion};
use stagestream::config;
use stagestream::core::{Engine, EngineImage};
use stagestream::snapshot::format::{decode, encode, Header};

fn filled_engine(customers: u32) -> (Engine, config::Settings) {
    let settings = support::five_stage();
    let mut engine = Engine::new(Arc::clone(&settings.model), settings.engine);
    support::fill(&mut engine, customers, true);
    assert_eq!(
        engine.customer_count(),
        customers as usize,
        "every customer tracked"
    );
    (engine, settings)
}

fn main() {
    // An environment variable, since criterion refuses arguments it does not know.
    let customers = std::env::var("SNAPSHOT_BENCH_CUSTOMERS")
        .map_or(1_000_000, |n| n.parse().expect("SNAPSHOT_BENCH_CUSTOMERS=N"));
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
