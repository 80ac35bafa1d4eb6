//! A deterministic, realistic stream of Segment e-commerce events.
//!
//! Simulated shoppers arrive over the period and come back in sessions: they browse
//! (pages or mobile screens, searches, product views), some add to cart, check out and
//! order, a few review, share or refer, and gaps between sessions are long-tailed, so
//! both win-back thresholds are reached. Lines come out in time order (with a little
//! client-side jitter, well inside the allowed lateness), with a configurable share of
//! client retries (same `messageId`) and of invalid lines. The same settings give the
//! same bytes. Used by the bundled example, the tests, the benches and, later, the demo.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::core::{EventTime, Span};

#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorSettings {
    pub customers: u32,
    pub days: u32,
    pub start: EventTime,
    pub seed: u64,
    /// Share of extra lines that are invalid, in [0, 1].
    pub invalid_ratio: f64,
    /// Share of events sent a second time, in [0, 1].
    pub duplicate_ratio: f64,
}

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

const CATEGORIES: [&str; 6] = ["Games", "Books", "Garden", "Kitchen", "Outdoor", "Toys"];
const PAGES: [&str; 4] = ["Home", "Deals", "About", "Help"];
const QUERIES: [&str; 5] = ["lego", "tent", "cast iron pan", "chess", "hammock"];

/// Calls `emit` with each line (without its newline), in time order.
pub fn generate(settings: &GeneratorSettings, mut emit: impl FnMut(&[u8])) {
    let _ends_with_the_stream = generate_keyed(settings, |line, _| {
        emit(line);
        ControlFlow::Continue(())
    });
}

/// Calls `emit` with each line (without its newline) and the customer it belongs to
/// (`None` for a deliberately invalid line), in time order, until `emit` breaks (then
/// returns `Break`).
pub fn generate_keyed(
    settings: &GeneratorSettings,
    mut emit: impl FnMut(&[u8], Option<&str>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let end = settings.start.as_millis() + i64::from(settings.days) * DAY;
    let mut master = StdRng::seed_from_u64(settings.seed);
    let mut shoppers: Vec<Shopper> = Vec::with_capacity(settings.customers as usize);
    let mut queue = BinaryHeap::new();
    let arrival_window = (i64::from(settings.days) * DAY * 2 / 3).max(1);
    for index in 0..settings.customers {
        let arrival = settings.start.as_millis() + master.random_range(0..arrival_window);
        let shopper = Shopper::new(&mut master);
        queue.push(Reverse((arrival, index)));
        shoppers.push(shopper);
    }
    let mut line = Vec::with_capacity(1024);
    while let Some(Reverse((at, index))) = queue.pop() {
        let shopper = &mut shoppers[index as usize];
        let Some(action) = shopper.next_action() else {
            continue;
        };
        line.clear();
        shopper.write(&action, at, &mut line);
        emit(&line, Some(&shopper.id))?;
        if shopper.rng.random_bool(settings.duplicate_ratio) {
            emit(&line, Some(&shopper.id))?;
        }
        if shopper.rng.random_bool(settings.invalid_ratio) {
            emit(&corrupt(&line, &mut shopper.rng), None)?;
        }
        if let Some(next) = shopper.schedule_next(at).filter(|&next| next < end) {
            queue.push(Reverse((next, index)));
        }
    }
    ControlFlow::Continue(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    View(&'static str),
    Search,
    ProductListViewed,
    ProductViewed,
    ProductAdded,
    CartViewed,
    CheckoutStarted,
    OrderCompleted,
    Identify,
    AfterPurchase(&'static str),
}

struct Shopper {
    id: String,
    anonymous: bool,
    mobile: bool,
    rng: StdRng,
    /// Actions left in the current session, last first.
    session: Vec<Action>,
    orders: u32,
    /// Likelihood that a session goes further down the funnel; shoppers differ.
    intent: f64,
    gone: bool,
}

impl Shopper {
    fn new(master: &mut StdRng) -> Self {
        let mut rng = StdRng::seed_from_u64(master.random());
        let id = uuid::Builder::from_random_bytes(rng.random())
            .into_uuid()
            .to_string();
        Shopper {
            id,
            anonymous: rng.random_bool(0.3),
            mobile: rng.random_bool(0.35),
            intent: rng.random_range(0.1..0.9),
            rng,
            session: Vec::new(),
            orders: 0,
            gone: false,
        }
    }

    fn next_action(&mut self) -> Option<Action> {
        if self.session.is_empty() {
            self.plan_session();
        }
        self.session.pop()
    }

    /// Plans one visit: a landing view, browsing, and maybe the funnel and afterwards.
    fn plan_session(&mut self) {
        let rng = &mut self.rng;
        let mut plan = vec![Action::View(PAGES[rng.random_range(0..PAGES.len())])];
        if rng.random_bool(0.8) {
            if rng.random_bool(0.5) {
                plan.push(Action::Search);
            }
            plan.push(Action::ProductListViewed);
            for _ in 0..rng.random_range(1..5) {
                plan.push(Action::ProductViewed);
            }
        }
        if rng.random_bool(self.intent * 0.6) {
            plan.push(Action::ProductAdded);
            plan.push(Action::CartViewed);
            if rng.random_bool(0.7) {
                plan.push(Action::CheckoutStarted);
                if rng.random_bool(0.75) {
                    plan.push(Action::OrderCompleted);
                    if self.orders == 0 && !self.anonymous {
                        plan.push(Action::Identify);
                    }
                    self.orders += 1;
                }
            }
        }
        if self.orders > 0 && rng.random_bool(0.25) {
            let what = ["Product Reviewed", "Product Shared", "Referral Sent"][rng.random_range(0..3)];
            plan.push(Action::AfterPurchase(what));
        }
        plan.reverse();
        self.session = plan;
    }

    fn schedule_next(&mut self, at: i64) -> Option<i64> {
        if !self.session.is_empty() {
            return Some(at + self.rng.random_range(5 * SECOND..3 * MINUTE));
        }
        if self.gone || self.rng.random_bool(0.12) {
            self.gone = true;
            return None;
        }
        // Long-tailed gaps between visits: mostly days, sometimes weeks.
        let mean_days = if self.rng.random_bool(0.2) { 12.0 } else { 2.5 };
        let gap = -mean_days * (1.0 - self.rng.random::<f64>()).ln();
        Some(at + HOUR + (gap * DAY as f64) as i64)
    }

    fn write(&mut self, action: &Action, at: i64, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        // Clients batch and clocks drift: stamp a few events up to 20 s early.
        let jitter = if rng.random_bool(0.1) {
            rng.random_range(0..20 * SECOND)
        } else {
            0
        };
        let timestamp = EventTime::from_millis(at)
            .minus(Span::from_millis(jitter))
            .to_string();
        let message_id = uuid::Builder::from_random_bytes(rng.random())
            .into_uuid()
            .to_string();
        let product = rng.random_range(1..500u32);
        let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
        let price = f64::from(rng.random_range(199..19_999u32)) / 100.0;
        let (kind, event, name, properties) = match *action {
            Action::View(page) if self.mobile => ("screen", None, Some(page), Properties::None {}),
            Action::View(page) => ("page", None, Some(page), Properties::None {}),
            Action::Search => (
                "track",
                Some("Products Searched"),
                None,
                Properties::Search {
                    query: QUERIES[rng.random_range(0..QUERIES.len())],
                },
            ),
            Action::ProductListViewed => (
                "track",
                Some("Product List Viewed"),
                None,
                Properties::List { category },
            ),
            Action::ProductViewed | Action::ProductAdded => (
                "track",
                Some(if *action == Action::ProductViewed {
                    "Product Viewed"
                } else {
                    "Product Added"
                }),
                None,
                Properties::Product {
                    product_id: format!("p-{product}"),
                    category,
                    price,
                },
            ),
            Action::CartViewed => ("track", Some("Cart Viewed"), None, Properties::None {}),
            Action::CheckoutStarted => (
                "track",
                Some("Checkout Started"),
                None,
                Properties::Order {
                    order_id: format!("o-{}", rng.random::<u32>()),
                    revenue: price,
                    currency: "USD",
                },
            ),
            Action::OrderCompleted => (
                "track",
                Some("Order Completed"),
                None,
                Properties::Order {
                    order_id: format!("o-{}", rng.random::<u32>()),
                    revenue: price,
                    currency: "USD",
                },
            ),
            Action::Identify => ("identify", None, None, Properties::None {}),
            Action::AfterPurchase(what) => (
                "track",
                Some(what),
                None,
                Properties::Product {
                    product_id: format!("p-{product}"),
                    category,
                    price,
                },
            ),
        };
        let email = format!("{}@example.com", &self.id[..8]);
        let line = Line {
            kind,
            event,
            name,
            user_id: (!self.anonymous).then_some(self.id.as_str()),
            anonymous_id: self.anonymous.then_some(self.id.as_str()),
            message_id: &message_id,
            timestamp: &timestamp,
            properties: (!matches!(properties, Properties::None {}) || kind == "track").then_some(properties),
            traits: (kind == "identify").then(|| Traits { email: &email }),
            context: Context {
                library: Library {
                    name: if self.mobile {
                        "analytics-ios"
                    } else {
                        "analytics.js"
                    },
                    version: "5.2.1",
                },
                ip: "203.0.113.7",
                locale: "en-US",
                user_agent: if self.mobile {
                    "Shop/4.2 (iPhone; iOS 18.1; Scale/3.00)"
                } else {
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
                },
            },
        };
        serde_json::to_writer(out, &line).expect("writing to a Vec cannot fail");
    }
}

/// A deliberately invalid variant of a valid line.
fn corrupt(line: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    match rng.random_range(0..5) {
        0 => line[..line.len() / 2].to_vec(),
        1 => text
            .replacen("\"timestamp\":\"", "\"timestamp\":\"yesterday ", 1)
            .into_bytes(),
        2 => text.replacen("\"type\":\"", "\"type\":\"x-", 1).into_bytes(),
        3 => text
            .replacen("\"userId\":", "\"user\":", 1)
            .replacen("\"anonymousId\":", "\"anonymous\":", 1)
            .into_bytes(),
        _ => format!("[{text}]").into_bytes(),
    }
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(rename = "anonymousId", skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    #[serde(rename = "messageId")]
    message_id: &'a str,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<Properties<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<Traits<'a>>,
    context: Context<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Properties<'a> {
    /// Serialises as `{}`, as Segment libraries send an empty `properties`.
    None {},
    Search {
        query: &'a str,
    },
    List {
        category: &'a str,
    },
    Product {
        product_id: String,
        category: &'a str,
        price: f64,
    },
    Order {
        order_id: String,
        revenue: f64,
        currency: &'a str,
    },
}

#[derive(Serialize)]
struct Traits<'a> {
    email: &'a str,
}

#[derive(Serialize)]
struct Context<'a> {
    library: Library<'a>,
    ip: &'a str,
    locale: &'a str,
    #[serde(rename = "userAgent")]
    user_agent: &'a str,
}

#[derive(Serialize)]
struct Library<'a> {
    name: &'a str,
    version: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(seed: u64) -> Vec<Vec<u8>> {
        let settings = GeneratorSettings {
            customers: 50,
            days: 30,
            start: EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            seed,
            invalid_ratio: 0.01,
            duplicate_ratio: 0.01,
        };
        let mut lines = Vec::new();
        generate(&settings, |line| lines.push(line.to_vec()));
        lines
    }

    #[test]
    fn writes_valid_events_unless_asked_for_invalid_ones() {
        let model = crate::core::model::test_model(
            "name = \"m\"\nstages = [\"a\"]\n[[rules]]\nname = \"r\"\nto = \"a\"\nwhere = [{ property = \"price\", gt = 0 }]",
        );
        let settings = GeneratorSettings {
            customers: 200,
            days: 30,
            start: EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            seed: 3,
            invalid_ratio: 0.0,
            duplicate_ratio: 0.0,
        };
        let mut kinds = std::collections::BTreeSet::new();
        let mut count = 0;
        generate(&settings, |line| {
            let event = crate::decode::decode(line, &model)
                .ok()
                .and_then(crate::core::Record::into_event)
                .unwrap_or_else(|| panic!("not an event: {}", String::from_utf8_lossy(line)));
            kinds.insert(event.kind.as_str());
            count += 1;
        });
        assert!(count > 1_000, "{count} lines");
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["identify", "page", "screen", "track"]
        );
    }

    #[test]
    fn is_deterministic_per_seed() {
        assert_eq!(lines(7), lines(7));
        assert_ne!(lines(7), lines(8));
    }
}
