//! Snapshot costs at 1M customers (36-character ids, two events each with messageIds
//! in the dedup window, every customer armed): copying the state out (the only part on
//! the consumer's path: all at once with `Engine::image`, or block by block as the
//! service does, with the longest single step printed first), encoding a file into a
//! [`DirectoryStore`] under the system's temporary directory (unpublished, then also
//! published: fsynced and renamed into place), and restoring one (checksum, decompress,
//! parse, `Engine::restore`; each sample decodes its own copy of the file's bytes, made
//! untimed, and frees it, as the service does).
//!
//! Under the service's allocator (jemalloc, with the huge pages `.cargo/config.toml`
//! builds in): the encoding and restoring here allocate and touch a gigabyte at 10M.
//!
//! Run: `cargo bench --bench snapshot` (`SNAPSHOT_BENCH_CUSTOMERS=10000000` for 10M).
//! Figures and the machine: docs/performance.md.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use stagestream::config;
use stagestream::core::Engine;
use stagestream::snapshot::format::{decode, encode, encode_to, Header};
use stagestream::snapshot::{DirectoryStore, SnapshotStore};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let (mut engine, settings) = filled_engine(customers);
    let header = Header {
        fingerprint: settings.model.shape().fingerprint,
        topic: "events".into(),
        partition: 0,
        offset: 1,
        about: None,
    };
    let bytes = encode(&header, &engine.image());
    println!(
        "{customers} customers, {} dedup ids: snapshot file {:.1} MB ({:.1} bytes per customer)",
        engine.image().dedup.len(),
        bytes.len() as f64 / 1e6,
        bytes.len() as f64 / f64::from(customers)
    );
    print_capture_steps(&mut engine);
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let mut group = c.benchmark_group(format!("snapshot/{customers}"));
    group.bench_function("image (all at once, fresh buffers)", |b| {
        b.iter(|| engine.image())
    });
    // What the service does: the previous image's buffers reused, the copy made a
    // block at a time between messages; here every block back to back.
    let spare = engine.image();
    group.bench_function("capture (every block, reused buffers)", |b| {
        b.iter_batched(
            || Box::new(spare.clone()),
            |image| {
                engine.begin_image(image);
                engine.continue_image(usize::MAX).expect("complete")
            },
            BatchSize::LargeInput,
        )
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = DirectoryStore::new(dir.path(), 1);
    let mut offset = 0;
    let mut encode_into_file = |image: &stagestream::core::EngineImage| {
        offset += 1;
        let mut file = store.create("events", 0, offset).expect("a snapshot file");
        encode_to(&header, image, &mut file).expect("the snapshot written");
        file
    };
    group.bench_function("encode into a file", |b| {
        b.iter_batched(
            || engine.image(),
            |image| encode_into_file(&image),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("encode into a file and publish it", |b| {
        b.iter_batched(
            || engine.image(),
            |image| encode_into_file(&image).publish().expect("published"),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("restore (decode + Engine::restore)", |b| {
        b.iter_batched(
            || bytes.clone(),
            |bytes| {
                let (_, image) = decode(bytes).unwrap();
                Engine::restore(
                    Arc::clone(&settings.model),
                    settings.engine,
                    image,
                    &mut Vec::new(),
                )
                .unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    c.final_summary();
}

/// The pause a snapshot can cause: each block's copy, timed one by one (into the
/// buffers of a previous image, as in the service).
fn print_capture_steps(engine: &mut Engine) {
    let mut steps: Vec<Duration> = Vec::new();
    for round in 0..3 {
        steps.clear();
        engine.begin_image(Box::new(engine.image()));
        loop {
            let started = Instant::now();
            let image = engine.continue_image(1);
            steps.push(started.elapsed());
            if let Some(image) = image {
                assert_eq!(*image, engine.image(), "the capture is the state");
                break;
            }
        }
        steps.sort_unstable();
        let total: Duration = steps.iter().sum();
        println!(
            "capture round {round}: {} blocks, total {:.1} ms, per block median {:.1} us, p99 {:.1} us, longest {:.1} us",
            steps.len(),
            total.as_secs_f64() * 1e3,
            steps[steps.len() / 2].as_secs_f64() * 1e6,
            steps[steps.len() * 99 / 100].as_secs_f64() * 1e6,
            steps[steps.len() - 1].as_secs_f64() * 1e6,
        );
    }
}
