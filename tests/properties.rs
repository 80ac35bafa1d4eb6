//! Property tests of the replay semantics over generated journeys:
//! determinism, and invariance under what must not matter (other customers' order
//! within the allowed lateness, client retries, invalid lines), and recovery: an engine
//! restored from an image of itself continues exactly as the original would have.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use stagestream::config::{self, Settings};
use stagestream::core::{Engine, EventTime, Output};
use stagestream::decode::decode;
use stagestream::replay::replay;

const NAMES: [&str; 10] = [
    "Products Searched",
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "Order Completed",
    "Product Reviewed",
    "Referral Sent",
    "Signed Up",
    "Home",
];
const LATENESS_MS: i64 = 5 * 60_000;

fn settings() -> Settings {
    config::load_with_env(
        &common::repo("config/presets/five-stage.toml"),
        Some(Default::default()),
    )
    .unwrap()
}

/// One generated event before rendering. Streams are ordered by a base time and stamped
/// `base - jitter` with jitter under the lateness, so no event is late.
#[derive(Clone, Debug)]
struct Step {
    customer: u8,
    name: usize,
    time: i64,
    message: u32,
}

impl Step {
    fn line(&self) -> String {
        let time = EventTime::from_millis(self.time);
        if NAMES[self.name] == "Home" {
            format!(
                r#"{{"type":"page","name":"Home","userId":"c{}","messageId":"m{}","timestamp":"{time}"}}"#,
                self.customer, self.message
            )
        } else {
            format!(
                r#"{{"type":"track","event":"{}","userId":"c{}","messageId":"m{}","timestamp":"{time}","context":{{"ip":"1.2.3.4"}}}}"#,
                NAMES[self.name], self.customer, self.message
            )
        }
    }
}

/// Bursts of activity (several customers within a few minutes, as real traffic comes)
/// separated by gaps that cluster around the 7- and 14-day thresholds, give or take a
/// few minutes: there, whether a deadline fires by the watermark or at the customer's
/// next event depends on arrival order, which is what the properties probe.
fn journeys() -> impl Strategy<Value = Vec<Step>> {
    const MINUTE: i64 = 60_000;
    const DAY: i64 = 1_440 * MINUTE;
    let gap = prop_oneof![
        3 => 0i64..10 * MINUTE,
        2 => 0i64..2 * DAY,
        2 => 7 * DAY - 6 * MINUTE..7 * DAY + 6 * MINUTE,
        2 => 14 * DAY - 6 * MINUTE..14 * DAY + 6 * MINUTE,
        1 => 6 * DAY..21 * DAY,
    ];
    let event = (0u8..5, 0usize..NAMES.len(), 0i64..6 * MINUTE, 0i64..2 * MINUTE);
    let burst = (gap, proptest::collection::vec(event, 1..8));
    proptest::collection::vec(burst, 1..25).prop_map(|bursts| {
        let mut merged = Vec::new();
        let mut burst_start = 1_767_225_600_000i64;
        for (gap, events) in bursts {
            burst_start += gap;
            for (customer, name, offset, jitter) in events {
                merged.push((burst_start + offset, jitter, customer, name));
            }
        }
        merged.sort();
        merged
            .into_iter()
            .enumerate()
            .map(|(i, (base, jitter, customer, name))| Step {
                customer,
                name,
                time: base - jitter,
                message: i as u32,
            })
            .collect()
    })
}

fn run(lines: &[String], until: Option<EventTime>) -> Vec<u8> {
    let input = lines.join("\n");
    let mut output = Vec::new();
    let summary = replay(&settings(), input.as_bytes(), &mut output, None, until).unwrap();
    assert_eq!(summary.late, 0, "generated streams are never late");
    output
}

fn render(steps: &[Step]) -> Vec<String> {
    steps.iter().map(Step::line).collect()
}

/// Each customer's outputs, in order, as their full lines.
fn per_customer(output: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut by_customer: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::str::from_utf8(output).unwrap().lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        by_customer
            .entry(json["subject"].as_str().unwrap().to_owned())
            .or_default()
            .push(line.to_owned());
    }
    by_customer
}

fn until() -> Option<EventTime> {
    EventTime::parse_rfc3339("2027-01-01T00:00:00Z")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_same_input_gives_the_same_bytes(steps in journeys()) {
        let lines = render(&steps);
        // Two engines, two random hash seeds: output must not depend on either.
        prop_assert_eq!(run(&lines, until()), run(&lines, until()));
    }

    #[test]
    fn reordering_other_customers_within_the_lateness_changes_no_customer_output(
        steps in journeys(),
        swaps in proptest::collection::vec(any::<proptest::sample::Index>(), 0..200),
    ) {
        let mut reordered = steps.clone();
        for swap in swaps {
            if reordered.len() < 2 {
                break;
            }
            let i = swap.index(reordered.len() - 1);
            let (a, b) = (&reordered[i], &reordered[i + 1]);
            if a.customer != b.customer && (a.time - b.time).abs() <= LATENESS_MS {
                reordered.swap(i, i + 1);
            }
        }
        let original = run(&render(&steps), until());
        let shuffled = run(&render(&reordered), until());
        prop_assert_eq!(per_customer(&original), per_customer(&shuffled));
    }

    #[test]
    fn client_retries_change_nothing(
        steps in journeys(),
        retries in proptest::collection::vec((any::<proptest::sample::Index>(), 0usize..4), 0..30),
    ) {
        let lines = render(&steps);
        let mut with_retries: Vec<(usize, String)> = lines.iter().cloned().enumerate().collect();
        for (pick, delay) in retries {
            let original = pick.index(steps.len());
            // Re-send up to `delay` events later, but within the 24 h dedup window.
            let mut at = original + 1;
            while at < steps.len() && at < original + 1 + delay && steps[at].time - steps[original].time < 86_400_000 {
                at += 1;
            }
            let position = with_retries.iter().position(|(i, _)| *i == at).unwrap_or(with_retries.len());
            with_retries.insert(position, (usize::MAX, lines[original].clone()));
        }
        let with_retries: Vec<String> = with_retries.into_iter().map(|(_, line)| line).collect();
        prop_assert_eq!(run(&lines, until()), run(&with_retries, until()));
    }

    #[test]
    fn invalid_lines_change_nothing(
        steps in journeys(),
        garbage in proptest::collection::vec((any::<proptest::sample::Index>(), 0usize..6), 0..30),
    ) {
        let lines = render(&steps);
        let mut noisy = lines.clone();
        for (pick, kind) in garbage {
            let at = pick.index(noisy.len() + 1);
            let bad = match kind {
                0 => "{\"type\":\"track\",\"event\":\"Order Completed\"".to_owned(),
                1 => "[]".to_owned(),
                2 => r#"{"type":"track","event":"Order Completed","timestamp":"2026-01-02T00:00:00Z"}"#.to_owned(),
                3 => r#"{"type":"track","event":"Order Completed","userId":"c1","timestamp":"tomorrow"}"#.to_owned(),
                4 => r#"{"type":"purchase","userId":"c1","timestamp":"2026-01-02T00:00:00Z"}"#.to_owned(),
                _ => r#"{"type":"track","userId":"c1","timestamp":"2099-01-02T00:00:00Z"}"#.to_owned(),
            };
            noisy.insert(at, bad);
        }
        prop_assert_eq!(run(&lines, until()), run(&noisy, until()));
    }

    #[test]
    fn a_restored_engine_continues_exactly_as_the_original(
        steps in journeys(),
        split in any::<proptest::sample::Index>(),
        clock_ahead in 0i64..20 * 86_400_000,
    ) {
        let settings = settings();
        // Client retries two events later, so the de-duplication window matters too.
        let mut lines = render(&steps);
        for i in (0..lines.len().saturating_sub(2)).rev().step_by(5) {
            let retry = lines[i].clone();
            lines.insert(i + 3, retry);
        }
        let events: Vec<_> = lines
            .iter()
            .map(|l| decode(l.as_bytes(), &settings.model).unwrap().into_event().unwrap())
            .collect();
        let split = split.index(events.len() + 1);
        // The wall clock may have run ahead of the watermark when the image was taken.
        let clock = events[..split].iter().map(|e| e.timestamp).max().map(|t| t.plus(stagestream::core::Span::from_millis(clock_ahead)));
        let run_engine = |engine: &mut Engine, range: std::ops::Range<usize>, outputs: &mut Vec<Output>| {
            for event in &events[range] {
                engine.on_event(event, outputs);
            }
        };
        let mut original = Engine::new(settings.model.clone(), settings.engine);
        let mut expected = Vec::new();
        run_engine(&mut original, 0..split, &mut expected);
        if let Some(clock) = clock {
            original.advance_to(clock, &mut expected);
        }
        let image = original.image();
        let mut restored =
            Engine::restore(settings.model.clone(), settings.engine, image.clone(), &mut Vec::new()).unwrap();
        let mut actual = expected.clone();
        prop_assert_eq!(restored.customer_count(), original.customer_count());
        prop_assert_eq!(restored.population(), original.population());
        prop_assert_eq!(restored.armed_count(), original.armed_count());
        run_engine(&mut original, split..events.len(), &mut expected);
        run_engine(&mut restored, split..events.len(), &mut actual);
        original.advance_to(until().unwrap(), &mut expected);
        restored.advance_to(until().unwrap(), &mut actual);
        prop_assert_eq!(expected, actual);
    }
}
