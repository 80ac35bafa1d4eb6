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
    difference, generated_lines, now, one_record_per_batch_producer, produce_lines_with, read_output,
    read_topic, replay_by_partition, Fingerprint, Record,
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

/// The snapshot files (`snap`) or temporary files of writes (`tmp`) under `dir`.
fn snapshot_files(dir: &Path, extension: &str) -> std::collections::BTreeSet<std::path::PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect()
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

/// SIGTERM, asserting exit 0; on failure shows the end of the service's log.
fn stop_cleanly(service: Child, log: &Path) {
    let status = terminate(service);
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        panic!(
            "exit status {status}; log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
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
    let (mut kills, mut during_write, mut after_write) = (0, 0, 0);
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
        if round % 3 != 0 {
            // Aim at a snapshot: kill the moment a new temporary file appears (a write in
            // progress; a killed write leaves its file behind, so only new ones count), or
            // the moment a new snapshot is complete (so later rounds restore from one).
            let extension = if round % 3 == 2 { "tmp" } else { "snap" };
            let before = snapshot_files(&snapshots, extension);
            let appeared = || !snapshot_files(&snapshots, extension).is_subset(&before);
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until && !appeared() {
                std::thread::sleep(Duration::from_micros(200));
            }
            match (appeared(), extension) {
                (true, "tmp") => during_write += 1,
                (true, _) => after_write += 1,
                (false, _) => {}
            }
        } else {
            // The whole backlog takes about a second: kill somewhere inside it.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        }
        kill_9(service);
        kills += 1;
    }
    let killing = started.elapsed();
    let service = start_service(&config, &log);
    let read_all = || read_output(&broker.bootstrap, Duration::from_secs(60));
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
        "{kills} kills in {killing:?} ({during_write} while a snapshot was being written, \
         {after_write} just after one was written); \
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

/// Damages the newest snapshot of partitions 0..3 in three ways (truncated, one byte
/// flipped, a future format version); partition 3's stays intact.
fn damage_newest_snapshots(snapshots: &Path) {
    for (partition, damage) in [(0, "truncate"), (1, "flip"), (2, "version")] {
        let dir = snapshots.join(format!("events/{partition}"));
        let newest = walk(&dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .max()
            .unwrap_or_else(|| panic!("partition {partition} has a snapshot"));
        let mut bytes = std::fs::read(&newest).unwrap();
        match damage {
            "truncate" => bytes.truncate(bytes.len() / 3),
            "flip" => {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x04;
            }
            _ => bytes[8] = 9,
        }
        std::fs::write(&newest, bytes).unwrap();
    }
}

/// Mounts a tmpfs of `size` at `at`; false where mounting is not permitted.
fn mount_tmpfs(at: &Path, size: &str) -> bool {
    std::fs::create_dir_all(at).unwrap();
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success())
}

fn remount_tmpfs(at: &Path, size: &str) {
    let status = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(at)
        .status()
        .unwrap();
    assert!(status.success());
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn corrupt_snapshots_are_set_aside_and_a_full_disk_never_stops_the_service() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    // Snapshots on a 16 KiB tmpfs: every write fails with ENOSPC until it is enlarged.
    // Where mounting is not permitted, a file where the topic directory belongs makes
    // every write fail the same way, until it is removed.
    let snapshots = dir.path().join("snapshots");
    let tmpfs = mount_tmpfs(&snapshots, "16k");
    let _unmount = tmpfs.then(|| Unmount(&snapshots));
    if !tmpfs {
        eprintln!("mount not permitted: simulating the failing disk with a blocking file");
        std::fs::write(snapshots.join("events"), b"not a directory").unwrap();
    }
    let (config, settings) = write_config(
        dir.path(),
        "stagestream",
        &broker.bootstrap,
        "faults",
        &[],
        &snapshot_config(dir.path()),
    );
    let log = dir.path().join("stagestream.log");
    let start = now().minus(Span::from_millis(10 * 60_000));
    let first = common::kafka::recent_journeys(0..2_000, start);
    let producer = one_record_per_batch_producer(&broker.bootstrap);
    produce_lines_with(&producer, "events", &settings, &first, &[]);
    let read_all = || read_output(&broker.bootstrap, Duration::from_secs(60));
    let input_of = |count| {
        read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
            r.len() == count
        })
    };

    // 1. The disk is full: the service keeps classifying and delivering.
    let service = start_service(&config, &log);
    let expected = replay_by_partition(&settings, &input_of(first.len()), now());
    wait_for(
        "the outputs despite failing snapshots",
        Duration::from_secs(60),
        || union_by_id(&read_all()).0.len() >= expected.len(),
    );
    wait_for("a failed snapshot write", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("snapshot write failed")
    });
    // 2. Space again: the next interval's snapshot succeeds; SIGTERM leaves final ones.
    if tmpfs {
        remount_tmpfs(&snapshots, "64m");
    } else {
        std::fs::remove_file(snapshots.join("events")).unwrap();
    }
    wait_for("a snapshot once there is space", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("snapshot written")
    });
    assert!(terminate(service).success());
    let (union, _) = union_by_id(&read_all());
    assert!(union == expected, "{}", difference(&union, &expected));

    // 3. Damaged snapshots: set aside, never loaded; an older one or the input rebuilds.
    damage_newest_snapshots(&snapshots);
    let second = common::kafka::recent_journeys(1_000..3_000, start.plus(Span::from_millis(150_000)));
    produce_lines_with(&producer, "events", &settings, &second, &[]);
    let input = input_of(first.len() + second.len());
    let expected = replay_by_partition(&settings, &input, now());
    let service = start_service(&config, &log);
    wait_for("every output after the restart", Duration::from_secs(60), || {
        union_by_id(&read_all()).0.len() >= expected.len()
    });
    assert!(terminate(service).success());
    let (union, total) = union_by_id(&read_all());
    assert!(union == expected, "{}", difference(&union, &expected));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("corrupt snapshot set aside").count(),
        3,
        "one per damaged file"
    );
    let corrupt = walk(&snapshots)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "corrupt"))
        .count();
    assert_eq!(corrupt, 3);
    // Everything committed at the end, on the strength of the final snapshots.
    let ends = common::kafka::partition_ends(&input);
    assert_eq!(
        common::kafka::committed(&broker.bootstrap, "faults", 4),
        ends.values().copied().collect::<Vec<_>>()
    );
    eprintln!("{total} outputs for {} distinct after the faults", union.len());
}

#[test]
fn state_follows_partitions_as_instances_join_and_leave() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let consumer = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
    let instances: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let (config, settings) = write_config(
                dir.path(),
                name,
                &broker.bootstrap,
                "rebalance",
                &consumer,
                &snapshot_config(dir.path()),
            );
            (config, settings, dir.path().join(format!("{name}.log")))
        })
        .collect();
    let settings = &instances[0].1;
    let assigned = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("partition assigned")
            .count()
    };
    let producer = one_record_per_batch_producer(&broker.bootstrap);
    // Five steps of a journey for 3,000 customers, all in the last minutes (no
    // inactivity can fall due), produced step by step while the group changes.
    let start = now().minus(Span::from_millis(10 * 60_000));
    let lines = common::kafka::recent_journeys(0..3_000, start);
    let chunks: Vec<&[Vec<u8>]> = lines.chunks(lines.len() / 5 + 1).collect();

    let a = start_service(&instances[0].0, &instances[0].2);
    let b = start_service(&instances[1].0, &instances[1].2);
    wait_for("a and b assigned", Duration::from_secs(60), || {
        assigned(&instances[0].2) + assigned(&instances[1].2) >= 4
    });
    produce_lines_with(&producer, "events", settings, chunks[0], &[]);
    produce_lines_with(&producer, "events", settings, chunks[1], &[]);
    std::thread::sleep(Duration::from_secs(2));
    let c = start_service(&instances[2].0, &instances[2].2);
    wait_for("c joins and gets partitions", Duration::from_secs(60), || {
        assigned(&instances[2].2) >= 1
    });
    produce_lines_with(&producer, "events", settings, chunks[2], &[]);
    produce_lines_with(&producer, "events", settings, chunks[3], &[]);
    std::thread::sleep(Duration::from_secs(2));
    stop_cleanly(a, &instances[0].2);
    produce_lines_with(&producer, "events", settings, chunks[4], &[]);

    let input = read_topic(&broker.bootstrap, "events", Duration::from_secs(60), |r| {
        r.len() == lines.len()
    });
    let expected = replay_by_partition(settings, &input, now());
    let read_all = || read_output(&broker.bootstrap, Duration::from_secs(60));
    wait_for("every output", Duration::from_secs(120), || {
        union_by_id(&read_all()).0.len() >= expected.len()
    });
    stop_cleanly(b, &instances[1].2);
    stop_cleanly(c, &instances[2].2);
    let (union, total) = union_by_id(&read_all());
    assert!(union == expected, "{}", difference(&union, &expected));
    let restored: usize = instances
        .iter()
        .map(|(_, _, log)| {
            std::fs::read_to_string(log)
                .unwrap()
                .matches("state restored from snapshot")
                .count()
        })
        .sum();
    assert!(
        restored >= 1,
        "moved partitions were restored from the shared snapshots"
    );
    // The final snapshots as `inspect` reads them: every partition, every customer once.
    let snapshots = dir.path().join("snapshots");
    let described = common::run(common::stagestream().arg("inspect").arg(&snapshots));
    assert!(described.status.success(), "{described:?}");
    let text = String::from_utf8(described.stdout).unwrap();
    assert_eq!(
        text.matches("  model      five-stage (fingerprint").count(),
        4,
        "{text}"
    );
    let exported = common::run(
        common::stagestream()
            .arg("inspect")
            .arg(&snapshots)
            .arg("--export"),
    );
    assert!(exported.status.success(), "{exported:?}");
    let ids: Vec<String> = String::from_utf8(exported.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let state: serde_json::Value = serde_json::from_str(line).unwrap();
            state["customer_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (3_000, 3_000));
    eprintln!(
        "{total} outputs for {} distinct; {restored} partition restores",
        union.len()
    );
}

/// tansu 0.6.0 does not implement EndTxn, so against it exactly-once can only show its
/// error path: the failed commit is reported, the service stops with exit code 75 and
/// commits nothing, so a restart (on a broker with transactions) would resume cleanly.
#[test]
fn exactly_once_stops_cleanly_when_the_broker_cannot_commit_a_transaction() {
    let Some(binary) = tansu::binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start(binary, "memory://tansu/", dir.path());
    broker.create_topics(&[("events", 4), ("journey-stages", 4), ("dead-letters", 1)]);
    let extra = format!(
        "{}\n[delivery]\nmode = \"exactly-once\"\n",
        snapshot_config(dir.path())
    );
    let (config, settings) = write_config(dir.path(), "stagestream", &broker.bootstrap, "eos", &[], &extra);
    let lines = common::kafka::recent_journeys(0..50, now().minus(Span::from_millis(60_000)));
    produce_lines_with(
        &one_record_per_batch_producer(&broker.bootstrap),
        "events",
        &settings,
        &lines,
        &[],
    );
    let log = dir.path().join("stagestream.log");
    let mut service = start_service(&config, &log);
    let mut status = None;
    wait_for("the service to stop", Duration::from_secs(60), || {
        status = service.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(75));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("transaction failed"), "the failure is logged");
    assert_eq!(
        common::kafka::committed_if_any(&broker.bootstrap, "eos", 4),
        [None; 4],
        "no offset was committed"
    );
}
