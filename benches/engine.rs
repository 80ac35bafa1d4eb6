//! The replay hot path over a realistic generated mix, split into its stages so the
//! ratios say where time goes: decode only, engine only (pre-decoded), decode + engine,
//! and decode + engine + CloudEvents rendering (what `replay` does, minus file I/O).
//! `decode/serde_json` is the yardstick issue 6 quotes (~450 ns a line): the same lines
//! decoded by plain `serde_json` into borrowed structs, `properties` kept raw and
//! `context` skipped, so it does less than `replay/decode` (which also validates and
//! extracts the properties the model's rules read).
//!
//! Run: `cargo bench --bench engine`. Figures and the machine: docs/performance.md.

use std::borrow::Cow;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use stagestream::config;
use stagestream::core::{Engine, EventTime, Record};
use stagestream::decode::decode;
use stagestream::generate::{generate, GeneratorSettings};
use stagestream::output::Renderer;

fn workload() -> Vec<Vec<u8>> {
    let settings = GeneratorSettings {
        customers: 10_000,
        days: 60,
        start: EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
        seed: 1,
        invalid_ratio: 0.002,
        duplicate_ratio: 0.005,
    };
    let mut lines = Vec::new();
    generate(&settings, |line| lines.push(line.to_vec()));
    lines
}

/// A Segment event as a hand-written consumer would decode it with serde_json.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read by black_box only: decoding is what is measured
struct SegmentEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    anonymous_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    context: Option<IgnoredAny>,
}

fn bench(c: &mut Criterion) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/presets/five-stage.toml");
    let settings = config::load_with_env(&path, Some(Default::default())).unwrap();
    let model = settings.model.clone();
    let lines = workload();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.sample_size(20);

    group.bench_function("decode", |b| {
        b.iter(|| lines.iter().filter(|line| decode(line, &model).is_ok()).count())
    });

    group.bench_function("decode/serde_json", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter(|line| black_box(serde_json::from_slice::<SegmentEvent<'_>>(line)).is_ok())
                .count()
        })
    });

    let events: Vec<_> = lines
        .iter()
        .filter_map(|line| decode(line, &model).ok()?.into_event())
        .collect();
    group.bench_function("engine", |b| {
        b.iter_batched_ref(
            || (Engine::new(Arc::clone(&model), settings.engine), Vec::new()),
            |(engine, outputs)| {
                for event in &events {
                    outputs.clear();
                    engine.on_event(event, outputs);
                }
            },
            BatchSize::LargeInput,
        )
    });

    // What rendering adds to the path: the same without it.
    group.bench_function("decode+engine", |b| {
        b.iter_batched_ref(
            || (Engine::new(Arc::clone(&model), settings.engine), Vec::new()),
            |(engine, outputs)| {
                for line in &lines {
                    let Some(event) = decode(line, &model).ok().and_then(Record::into_event) else {
                        continue;
                    };
                    outputs.clear();
                    engine.on_event(&event, outputs);
                }
                black_box(outputs.len())
            },
            BatchSize::LargeInput,
        )
    });

    // Output goes to one reused buffer, cleared each iteration, as replay's BufWriter
    // reuses its buffer: a fresh allocation would measure page faults instead.
    let mut sink: Vec<u8> = Vec::with_capacity(64 << 20);
    group.bench_function("decode+engine+render", |b| {
        b.iter_batched_ref(
            || {
                (
                    Engine::new(Arc::clone(&model), settings.engine),
                    Renderer::new("stagestream", &model),
                    Vec::new(),
                )
            },
            |(engine, renderer, outputs)| {
                sink.clear();
                for line in &lines {
                    let Ok(record) = decode(line, &model) else {
                        continue;
                    };
                    let Record::Event(event) = &record else { continue };
                    outputs.clear();
                    engine.on_event(event, outputs);
                    for output in outputs.iter() {
                        renderer
                            .render(engine, output, Some(&record))
                            .write_structured(&mut sink)
                            .unwrap();
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
