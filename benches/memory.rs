//! Resident memory per tracked customer, measured from /proc/self/statm (Linux).
//!
//! Fills one engine with N customers (36-character ids, two activity events each, so
//! every customer is armed), once without messageIds and once with both events' ids in
//! the dedup window, each in a process of its own, and reports the growth of resident
//! memory divided by N: for the engine alone, and with a snapshot image taken (the
//! service keeps the previous image's buffers per partition for the next snapshot, so
//! that is its total once snapshots are on), and the peak while a snapshot file is
//! encoded from the image into a [`DirectoryStore`] under the system's temporary
//! directory, as the snapshot thread does (a few chunks of raw body and of compressed
//! file exist only then); then, the engine and image dropped, the peak and the time
//! while the file is restored as after a restart (`snapshot::restore`: read, decode,
//! `Engine::restore`; the freed pages went back to the system, so the restore faults
//! in fresh memory as a new process does) and what the restored state holds. The
//! allocator is the service's (jemalloc, with the huge pages `.cargo/config.toml` builds
//! in), told to return freed pages at once (`MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0`),
//! so that tables a growing engine left behind do not count: the service returns them
//! within jemalloc's decay time (10 s by default). Last, a process of its own restores
//! the same file under the service's allocator settings as they are (pages a restore
//! frees, the file's and the raw body's, are reused rather than returned): a restart
//! exactly, its time and peak. Run: `cargo bench --bench memory` (optionally `--
//! 1000000 10000000`). Figures: README and docs/performance.md.

#[path = "support/resident.rs"]
mod resident;
mod support;

use resident::{mib, peak_resident_bytes, resident_bytes};

use std::sync::Arc;

use stagestream::config::Settings;
use stagestream::core::Engine;
use stagestream::snapshot::format::{encode_to, Header};
use stagestream::snapshot::{self, DirectoryStore, SnapshotStore};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn measure(customers: u32, with_message_ids: bool) {
    let settings = support::five_stage();
    let before = resident_bytes();
    let mut engine = Engine::new(Arc::clone(&settings.model), settings.engine);
    support::fill(&mut engine, customers, with_message_ids);
    let grown = resident_bytes().saturating_sub(before);
    // What the service holds besides, once it has taken a snapshot: the image's
    // buffers, kept per partition for the next one.
    let image = engine.image();
    let with_image = resident_bytes().saturating_sub(before);
    // The fill's own peak (a table growing holds old and new) is not the encoder's.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident size");
    let header = Header {
        fingerprint: settings.model.shape().fingerprint,
        topic: "events".into(),
        partition: 0,
        offset: 0,
        about: None,
    };
    let store = case_store();
    let mut file = store.create("events", 0, 0).expect("a snapshot file");
    let file_size = encode_to(&header, &image, &mut file).expect("the snapshot written");
    let encoding_peak = peak_resident_bytes().saturating_sub(before);
    let armed = engine.armed_count();
    assert_eq!(
        engine.customer_count(),
        customers as usize,
        "every customer tracked"
    );
    file.publish().expect("the snapshot published");
    // A restart: nothing but the file, restored as the service restores a partition.
    drop(image);
    drop(engine);
    let left = resident_bytes().saturating_sub(before);
    let restore = Restore::from(&store, &settings, customers, before);
    println!(
        "{customers:>10} customers, {}: {:>8.1} MiB resident, {:>6.1} bytes/customer ({armed} armed); \
         with the snapshot image kept: {:>8.1} MiB, {:>6.1} bytes/customer; \
         peak while encoding a {:.1} MB file: {:>8.1} MiB; \
         restored from it in {:.2} s (from {:.1} MiB left after dropping the state): peak {:>8.1} MiB, then {:>8.1} MiB",
        if with_message_ids {
            "2 messageIds each in the dedup window"
        } else {
            "no messageIds"
        },
        mib(grown),
        grown as f64 / f64::from(customers),
        mib(with_image),
        with_image as f64 / f64::from(customers),
        file_size as f64 / 1e6,
        mib(encoding_peak),
        restore.took.as_secs_f64(),
        mib(left),
        mib(restore.peak),
        mib(restore.after),
    );
    std::hint::black_box(&restore.restored);
}

/// The store in the folder the parent named, shared by a case and its restart.
fn case_store() -> DirectoryStore {
    let dir = std::env::var_os(DIR).expect("the parent names the snapshot folder");
    DirectoryStore::new(std::path::Path::new(&dir), 1)
}

/// Restores the snapshot [`measure`] left in the folder, in this fresh process.
fn restart(customers: u32, with_message_ids: bool) {
    let restore = Restore::from(&case_store(), &support::five_stage(), customers, resident_bytes());
    println!(
        "{customers:>10} customers, {}: restored in a process of its own, the allocator's settings \
         as the service's: {:.2} s, peak {:>8.1} MiB, then {:>8.1} MiB",
        if with_message_ids {
            "2 messageIds each"
        } else {
            "no messageIds"
        },
        restore.took.as_secs_f64(),
        mib(restore.peak),
        mib(restore.after),
    );
    std::hint::black_box(&restore.restored);
}

/// One restore of the store's snapshot as the service restores a partition, timed, with
/// the peak and final resident memory above `before`.
struct Restore {
    restored: snapshot::Restored,
    took: std::time::Duration,
    peak: u64,
    after: u64,
}

impl Restore {
    fn from(store: &DirectoryStore, settings: &Settings, customers: u32, before: u64) -> Self {
        std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident size");
        let restoring = std::time::Instant::now();
        let restored = snapshot::restore(store, "events", 0, &settings.model, settings.engine)
            .expect("the snapshot restored");
        let took = restoring.elapsed();
        let peak = peak_resident_bytes().saturating_sub(before);
        let after = resident_bytes().saturating_sub(before);
        assert_eq!(
            restored.engine.customer_count(),
            customers as usize,
            "every customer restored"
        );
        Restore {
            restored,
            took,
            peak,
            after,
        }
    }
}

fn main() {
    // Each case runs in a fresh process: memory a previous engine left to the
    // allocator would otherwise be reused and go uncounted.
    for (variable, run) in [(CASE, measure as fn(u32, bool)), (RESTART, restart)] {
        if let Ok(case) = std::env::var(variable) {
            let (count, ids) = case.split_once(':').expect("N:ids or N:none");
            run(count.parse().expect("a customer count"), ids == "ids");
            return;
        }
    }
    let counts: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        counts
    };
    let me = std::env::current_exe().expect("the bench binary");
    for count in counts {
        for ids in ["none", "ids"] {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let case = format!("{count}:{ids}");
            let status = std::process::Command::new(&me)
                .env(CASE, &case)
                .env(DIR, dir.path())
                .env("MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
                .status()
                .expect("run one case");
            assert!(status.success(), "case {case} failed");
            let status = std::process::Command::new(&me)
                .env(RESTART, &case)
                .env(DIR, dir.path())
                .env_remove("MALLOC_CONF")
                .status()
                .expect("restore the case's snapshot");
            assert!(status.success(), "restart of case {case} failed");
        }
    }
}

/// Set to `N:ids` or `N:none` to measure one case in this process.
const CASE: &str = "MEMORY_BENCH_CASE";
/// Set to `N:ids` or `N:none` to restore that case's snapshot in this process.
const RESTART: &str = "MEMORY_BENCH_RESTART";
/// The folder a case writes its snapshot to and its restart reads it from.
const DIR: &str = "MEMORY_BENCH_DIR";
