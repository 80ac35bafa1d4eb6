//! The decoded behavioural event the engine consumes.
//!
//! `decode` turns bytes into an [`Event`] that borrows from the input buffer wherever the
//! JSON allows (strings without escapes), so the hot path allocates nothing for the
//! common event. Only the properties that some rule of the model tests are kept.

use std::borrow::Cow;

use super::time::EventTime;

/// The Segment call types stagestream accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Track,
    Page,
    Screen,
    Identify,
    Group,
    Alias,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Track,
        EventType::Page,
        EventType::Screen,
        EventType::Identify,
        EventType::Group,
        EventType::Alias,
    ];

    /// The Segment spelling (`"track"`, `"page"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Identify => "identify",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    /// Parses the Segment spelling, case-sensitively as the spec writes it.
    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether the call carries its attributes in `traits` rather than `properties`.
    pub const fn uses_traits(self) -> bool {
        matches!(self, EventType::Identify | EventType::Group)
    }
}

/// A small set of [`EventType`]s, as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventTypeSet(u8);

impl EventTypeSet {
    pub fn contains(self, kind: EventType) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    pub fn insert(&mut self, kind: EventType) {
        self.0 |= 1 << kind as u8;
    }
}

impl FromIterator<EventType> for EventTypeSet {
    fn from_iter<I: IntoIterator<Item = EventType>>(iter: I) -> Self {
        let mut set = EventTypeSet::default();
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

/// Index of a property name that at least one rule predicate tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PropertyKey(pub u16);

/// A property value as far as predicates care about it.
#[derive(Clone, Debug, PartialEq)]
pub enum PropertyValue<'a> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'a, str>),
    /// An object or array: it exists, but no comparison applies to it.
    Composite,
}

/// One valid input record: an event, or a request to erase a customer.
#[derive(Clone, Debug, PartialEq)]
pub enum Record<'a> {
    Event(Event<'a>),
    Erase(Erase<'a>),
}

impl<'a> Record<'a> {
    /// The customer the record is about: its key on the input topic.
    pub fn customer(&self) -> &str {
        match self {
            Record::Event(event) => &event.customer,
            Record::Erase(erase) => &erase.customer,
        }
    }

    /// The event, if the record is one.
    pub fn into_event(self) -> Option<Event<'a>> {
        match self {
            Record::Event(event) => Some(event),
            Record::Erase(_) => None,
        }
    }
}

/// A request to erase a customer: a tombstone keyed by the customer id, or a JSON line
/// `{"type": "erase", "userId"|"anonymousId": ..., "timestamp": ...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Erase<'a> {
    pub customer: Cow<'a, str>,
    /// The record's `timestamp`, else its Kafka record timestamp.
    pub at: EventTime,
}

/// One valid input event, borrowing from the bytes it was decoded from.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<'a> {
    pub kind: EventType,
    /// `userId` when it is a non-empty string, else `anonymousId`.
    pub customer: Cow<'a, str>,
    pub message_id: Option<Cow<'a, str>>,
    /// `event` for track calls, `name` for page and screen calls.
    pub name: Option<Cow<'a, str>>,
    pub timestamp: EventTime,
    /// Values of the model's tested properties (`traits` for identify and group),
    /// indexed by [`PropertyKey`]; `None` where the event does not carry the key.
    /// Empty when the model tests no property.
    pub properties: Vec<Option<PropertyValue<'a>>>,
}

impl<'a> Event<'a> {
    /// A test value of `key`, if the event carries it.
    pub fn property(&self, key: PropertyKey) -> Option<&PropertyValue<'a>> {
        self.properties.get(usize::from(key.0)).and_then(Option::as_ref)
    }
}
