//! Crash recovery of `stagestream run` (the real binary) against a real broker (tansu):
//! `kill -9` at random moments, including while a snapshot is being written, and
//! corrupt snapshots on disk. The union of everything the service ever emitted,
//! de-duplicated by `ce_id`, must equal a clean replay exactly, and every duplicate
//! must be byte-identical.
//!
//! Skipped with a message when tansu is not installed; under CI that is a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::kafka::{
    difference, generated_lines, now, one_record_per_batch_producer, produce_lines_with, read_topic,
    replay_by_partition, Fingerprint, Record,
};
use common::service::{start_service, terminate, wait_for, write_config};
use common::tansu::{self, Tansu};
use stagestream::core::Span;

const DAY: i64 = 86_400_000;

/// Snapshots every 300 ms under `dir/snapshots`.
fn snapshot_config(dir: &Path) -> String {
    format!(
        r#"
[snapshot]
dir = "{}"
interval = "300ms"
keep = 2
"#,
        dir.join("snapshots").display()
    )
}

/// What the output topic holds: each distinct output once, after checking that every
/// copy of an id carries identical type, headers and data. Also returns the total.
fn union_by_id(records: &[Record]) -> (Vec<Fingerprint>, usize) {
    type Headers = Vec<(String, Option<String>)>;
    let mut by_id: BTreeMap<String, (Fingerprint, Headers)> = BTreeMap::new();
    for fingerprint in common::kafka::binary_outputs(records, "stagestream") {
        by_id
            .entry(fingerprint.0.clone())
            .or_insert((fingerprint.clone(), Vec::new()));
        let first = &by_id[&fingerprint.0].0;
        assert_eq!(
            first, &fingerprint,
            "a re-emission differs from the first emission"
        );
    }
    for record in records {
        let id = record.header("ce_id").unwrap().to_owned();
        let headers: Headers = ["ce_time", "ce_type", "ce_subject", "content-type"]
            .iter()
            .map(|h| ((*h).to_owned(), record.header(h).map(str::to_owned)))
            .collect();
        let seen = &mut by_id.get_mut(&id).unwrap().1;
        if seen.is_empty() {
            *seen = headers;
        } else {
            assert_eq!(seen, &headers, "headers of a re-emission of {id} differ");
        }
    }
    (by_id.into_values().map(|(f, _)| f).collect(), records.len())
}

fn snapshot_write_in_progress(dir: &Path) -> bool {
    walk(dir)
        .iter()
        .any(|path| path.extension().is_some_and(|e| e == "tmp"))
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn kill_9(mut service: Child) {
    service.kill().unwrap(); // SIGKILL
    service.wait().unwrap();
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_re_emits_identically() {
    let Some(binary) = tansu::binary() else { return };
    // On disk (not a tmpfs), so a snapshot write takes long enough to be caught.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let (config, settings) = write_config(
        dir.path(),
        "stagestream",
        &broker.bootstrap,
        "crash-matrix",
        // The restarted instance gets the partitions once the killed one's session
        // times out: keep that short.
        &[("session.timeout.ms", "3000"), ("heartbeat.interval.ms", "500")],
        &snapshot_config(dir.path()),
    );
    // Two months of history that ended a month ago: once caught up, every inactivity
    // deadline has passed, so the complete output is known in advance.
    let lines = generated_lines(8_000, 60, now().minus(Span::from_millis(90 * DAY)), 21);
    let producer = one_record_per_batch_producer(&broker.bootstrap);
    produce_lines_with(&producer, "events", &settings, &lines, &[]);
    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(120), |r| {
        r.len() == lines.len()
    });
    assert!(input.len() > 200_000, "{} events", input.len());
    let expected = replay_by_partition(&settings, &input, now());
    let distinct: std::collections::BTreeSet<&String> = expected.iter().map(|f| &f.0).collect();
    assert_eq!(distinct.len(), expected.len(), "replay's ids are unique");

    let log = dir.path().join("stagestream.log");
    let snapshots = dir.path().join("snapshots");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut kills, mut during_write) = (0, 0);
    let started = Instant::now();
    let assignments = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("partition assigned")
            .count()
    };
    for round in 0..24 {
        let assigned_before = assignments();
        let service = start_service(&config, &log);
        wait_for("an assignment", Duration::from_secs(60), || {
            assignments() > assigned_before
        });
        if round % 3 == 2 {
            // Aim at a snapshot write: kill the moment a temporary file appears.
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until && !snapshot_write_in_progress(&snapshots) {
                std::thread::sleep(Duration::from_micros(200));
            }
            during_write += usize::from(snapshot_write_in_progress(&snapshots));
        } else {
            // The whole backlog takes about a second: kill somewhere inside it.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        }
        kill_9(service);
        kills += 1;
    }
    let killing = started.elapsed();
    let service = start_service(&config, &log);
    let read_all = || {
        read_topic(
            &broker.bootstrap,
            "journey-stages",
            Duration::from_secs(60),
            |_| true,
        )
    };
    let mut output = Vec::new();
    wait_for("every output", Duration::from_secs(300), || {
        output = read_all();
        union_by_id(&output).0.len() >= expected.len()
    });
    let status = terminate(service);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let output = read_all();
    let (union, total) = union_by_id(&output);
    eprintln!(
        "{kills} kills in {killing:?} ({during_write} while a snapshot was being written); \
         {total} outputs emitted for {} distinct ({} re-emissions)",
        union.len(),
        total - union.len()
    );
    assert!(union == expected, "{}", difference(&union, &expected));
    assert!(kills >= 20);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("state restored from snapshot"),
        "restarts resumed from snapshots"
    );
}
