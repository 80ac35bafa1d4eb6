//! What a lookup (`GET /customers/{id}`) costs the owner thread, the only part of it
//! that holds up message processing: the customer found in an engine of N customers
//! and its state built (`CustomerState::new`: stage, times as RFC 3339 text, the
//! ladder), for ids spread over the whole table. The HTTP parsing, JSON writing and
//! redirects run on the HTTP thread.
//!
//! Run: `cargo bench --bench lookup` (`LOOKUP_BENCH_CUSTOMERS=10000000` for one other
//! N). Figures: docs/performance.md, "Lookups".

mod support;

use std::sync::Arc;

use criterion::{Criterion, Throughput};
use stagestream::core::Engine;
use stagestream::pipeline::{AsOf, CustomerState};

const LOOKUPS: u32 = 10_000;

fn main() {
    let counts: Vec<u32> = std::env::var("LOOKUP_BENCH_CUSTOMERS").map_or_else(
        |_| vec![1_000_000],
        |n| vec![n.parse().expect("LOOKUP_BENCH_CUSTOMERS=N")],
    );
    let settings = support::five_stage();
    let mut c = Criterion::default().sample_size(20).configure_from_args();
    for customers in counts {
        let mut engine = Engine::new(Arc::clone(&settings.model), settings.engine);
        support::fill(&mut engine, customers, false);
        let ids: Vec<String> = (0..LOOKUPS)
            .map(|j| support::customer_id((u64::from(j) * 7_919 % u64::from(customers)) as u32))
            .collect();
        let mut group = c.benchmark_group(format!("lookup/{customers}"));
        group.throughput(Throughput::Elements(u64::from(LOOKUPS)));
        group.bench_function("found, state built", |b| {
            b.iter(|| {
                ids.iter()
                    .filter_map(|id| {
                        let customer = engine.customer_image(id)?;
                        let as_of = AsOf {
                            offset: Some(1),
                            watermark: Some(engine.watermark().to_string()),
                        };
                        Some(CustomerState::new("events", 0, engine.model(), &customer, as_of))
                    })
                    .count()
            })
        });
        group.bench_function("unknown id", |b| {
            b.iter(|| {
                ids.iter()
                    .filter(|id| engine.customer_image(&id[1..]).is_some())
                    .count()
            })
        });
        group.finish();
    }
}
