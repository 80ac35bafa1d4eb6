//! Bytes -> [`Event`]: one Segment-spec JSON object, with a typed reason for every rejection.
//!
//! Decoding walks the JSON once with a hand-written serde visitor: known fields are read
//! as borrowed strings where the input has no escapes, `context` and every other field
//! are skipped without building anything, and only the properties that some rule tests
//! are kept. The result feeds [`crate::core::Engine::on_event`]; a rejection is counted
//! by its [`RejectReason`] and written to the rejects file (replay) or the dead-letter
//! topic (the Kafka pipeline).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::core::{Erase, Event, EventTime, EventType, Model, PropertyValue, Record};

/// Why an input was rejected. The `as_str` codes are stable: they appear in the rejects
/// file, dead-letter headers and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    InvalidJson,
    NotAnObject,
    MissingCustomer,
    MissingTimestamp,
    InvalidTimestamp,
    UnknownType,
    MissingEvent,
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingCustomer,
        RejectReason::MissingTimestamp,
        RejectReason::InvalidTimestamp,
        RejectReason::UnknownType,
        RejectReason::MissingEvent,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingCustomer => "missing_customer",
            RejectReason::MissingTimestamp => "missing_timestamp",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingEvent => "missing_event",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input. Never retriable: the same bytes are rejected the same way.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("not valid JSON: not UTF-8")]
    InvalidUtf8,
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no customer: neither userId nor anonymousId is a non-empty string")]
    MissingCustomer,
    #[error("no timestamp")]
    MissingTimestamp,
    #[error("timestamp is not an RFC 3339 date-time with an offset")]
    InvalidTimestamp,
    #[error("type is missing or not one of track, page, screen, identify, group, alias, erase")]
    UnknownType,
    #[error("track call without a string `event`")]
    MissingEvent,
}

impl DecodeError {
    pub fn reason(&self) -> RejectReason {
        match self {
            DecodeError::InvalidJson(_) | DecodeError::InvalidUtf8 => RejectReason::InvalidJson,
            DecodeError::NotAnObject => RejectReason::NotAnObject,
            DecodeError::MissingCustomer => RejectReason::MissingCustomer,
            DecodeError::MissingTimestamp => RejectReason::MissingTimestamp,
            DecodeError::InvalidTimestamp => RejectReason::InvalidTimestamp,
            DecodeError::UnknownType => RejectReason::UnknownType,
            DecodeError::MissingEvent => RejectReason::MissingEvent,
        }
    }
}

/// Decodes one record: an event, keeping the properties `model` tests, or an erase
/// request (`"type": "erase"`).
///
/// Checks run in a fixed order, and the first failure is the reason: JSON syntax, object,
/// customer, timestamp, type, event name.
///
/// # Errors
/// A [`DecodeError`] saying why the input is not a valid record.
pub fn decode<'a>(bytes: &'a [u8], model: &Model) -> Result<Record<'a>, DecodeError> {
    decode_with_default_time(bytes, model, FallbackTime::default())
}

/// The latest event time accepted, 6000-01-01T00:00:00Z: the engine keeps a
/// customer's times in six bytes, up to year 6429 ([`crate::core::Instant48`]), and
/// deadlines up to 400 years past an event stay in range.
const LATEST_EVENT_TIME: i64 = 127_174_492_800_000;

/// The time a record without a `timestamp` of its own (absent or null) takes: the
/// Kafka record timestamp, for an erase request always and for an event when
/// `time.use_record_timestamp` allows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct FallbackTime {
    pub record: Option<EventTime>,
    pub for_events: bool,
}

/// [`decode`], with a [`FallbackTime`] for a record without a `timestamp`. A
/// `timestamp` that is present but invalid is still rejected.
///
/// # Errors
/// As [`decode`].
pub fn decode_with_default_time<'a>(
    bytes: &'a [u8],
    model: &Model,
    fallback: FallbackTime,
) -> Result<Record<'a>, DecodeError> {
    // One SIMD UTF-8 check of the whole line: neither parser checks the strings it skips
    // (`context`), and parsing from `&str` spares serde_json checking those it reads.
    let text = simdutf8::basic::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    let fields = if memchr::memchr(b'\\', bytes).is_none() {
        // No escapes anywhere: sonic-rs's fast skip is then exact (it checks structure,
        // not escapes), and about a fifth cheaper than serde_json on this input.
        read_fields(
            sonic_rs::Deserializer::from_str(text),
            model,
            sonic_rs::Deserializer::end,
        )?
    } else {
        read_fields(
            serde_json::Deserializer::from_str(text),
            model,
            serde_json::Deserializer::end,
        )?
    };
    fields.ok_or(DecodeError::NotAnObject)?.into_record(fallback)
}

/// The erase request a tombstone (a record without a value) makes: its key is the
/// customer id, its time the Kafka record timestamp.
///
/// # Errors
/// [`DecodeError::MissingCustomer`] for a key that is absent, empty or not UTF-8;
/// [`DecodeError::MissingTimestamp`] without a record timestamp.
pub fn tombstone(key: Option<&[u8]>, record_time: Option<EventTime>) -> Result<Erase<'_>, DecodeError> {
    let customer = key
        .and_then(|key| std::str::from_utf8(key).ok())
        .filter(|key| !key.is_empty())
        .ok_or(DecodeError::MissingCustomer)?;
    Ok(Erase {
        customer: Cow::Borrowed(customer),
        at: record_time.ok_or(DecodeError::MissingTimestamp)?,
    })
}

/// Reads the top-level value with one parser, then `end` checks nothing follows it.
fn read_fields<'de, J, E: fmt::Display>(
    mut json: J,
    model: &Model,
    end: impl FnOnce(&mut J) -> Result<(), E>,
) -> Result<Option<Fields<'de>>, DecodeError>
where
    for<'j> &'j mut J: Deserializer<'de, Error = E>,
{
    EventSeed { model }
        .deserialize(&mut json)
        .and_then(|fields| end(&mut json).map(|()| fields))
        .map_err(|e| DecodeError::InvalidJson(e.to_string()))
}

/// The top-level fields as read, before validation.
#[derive(Default)]
struct Fields<'a> {
    kind: Loose<'a>,
    user_id: Loose<'a>,
    anonymous_id: Loose<'a>,
    timestamp: Loose<'a>,
    /// Segment's client times, boxed: most events carry `timestamp` and none of them,
    /// and three more fields inline made every event's fields a third bigger to move.
    client_times: Option<Box<ClientTimes<'a>>>,
    message_id: Loose<'a>,
    event: Loose<'a>,
    name: Loose<'a>,
    properties: Option<Vec<Option<PropertyValue<'a>>>>,
    traits: Option<Vec<Option<PropertyValue<'a>>>>,
}

/// `originalTimestamp`, `sentAt` and `receivedAt` as read.
#[derive(Default)]
struct ClientTimes<'a> {
    original_timestamp: Loose<'a>,
    sent_at: Loose<'a>,
    received_at: Loose<'a>,
}

impl<'a> Fields<'a> {
    fn client_times(&mut self) -> &mut ClientTimes<'a> {
        self.client_times.get_or_insert_with(Box::default)
    }

    fn into_record(self, fallback: FallbackTime) -> Result<Record<'a>, DecodeError> {
        let customer = self
            .user_id
            .non_empty()
            .or(self.anonymous_id.non_empty())
            .ok_or(DecodeError::MissingCustomer)?;
        let erase = matches!(&self.kind, Loose::Str(text) if text == "erase");
        let default_time = fallback.record.filter(|_| erase || fallback.for_events);
        let timestamp = match self.timestamp {
            Loose::Absent | Loose::Null if erase => default_time,
            Loose::Absent | Loose::Null => {
                let times = self.client_times.unwrap_or_default();
                client_time(&times.original_timestamp, &times.sent_at, &times.received_at)?.or(default_time)
            }
            Loose::Str(text) => Some(parse_time(&text)?),
            Loose::Other => return Err(DecodeError::InvalidTimestamp),
        }
        .ok_or(DecodeError::MissingTimestamp)?;
        if erase {
            return Ok(Record::Erase(Erase {
                customer,
                at: timestamp,
            }));
        }
        let kind = match (&self.kind, &self.event) {
            (Loose::Str(text), _) => EventType::parse(text).ok_or(DecodeError::UnknownType)?,
            (Loose::Absent | Loose::Null, Loose::Str(_)) => EventType::Track,
            _ => return Err(DecodeError::UnknownType),
        };
        let name = match kind {
            EventType::Track => match self.event {
                Loose::Str(event) => Some(event),
                _ => return Err(DecodeError::MissingEvent),
            },
            EventType::Page | EventType::Screen => self.name.string(),
            EventType::Identify | EventType::Group | EventType::Alias => None,
        };
        let properties = if kind.uses_traits() {
            self.traits
        } else {
            self.properties
        };
        Ok(Record::Event(Event {
            kind,
            customer,
            message_id: self.message_id.non_empty(),
            name,
            timestamp,
            properties: properties.unwrap_or_default(),
        }))
    }
}

/// An event time as the input states it: RFC 3339 with an offset, no later than
/// [`LATEST_EVENT_TIME`].
fn parse_time(text: &str) -> Result<EventTime, DecodeError> {
    EventTime::parse_rfc3339(text)
        .filter(|time| time.as_millis() <= LATEST_EVENT_TIME)
        .ok_or(DecodeError::InvalidTimestamp)
}

/// The event time of an event without `timestamp`, by Segment's rule: its
/// `originalTimestamp` (the device's clock) corrected by how far that clock was off
/// when the batch was sent, `receivedAt - (sentAt - originalTimestamp)`, when both
/// `sentAt` and `receivedAt` are given; else `originalTimestamp` as it is; `None`
/// without one. Any of the three present (not null) but not a valid time is invalid.
fn client_time(
    original: &Loose<'_>,
    sent_at: &Loose<'_>,
    received_at: &Loose<'_>,
) -> Result<Option<EventTime>, DecodeError> {
    let time = |field: &Loose<'_>| match field {
        Loose::Absent | Loose::Null => Ok(None),
        Loose::Str(text) => parse_time(text).map(Some),
        Loose::Other => Err(DecodeError::InvalidTimestamp),
    };
    let Some(original) = time(original)? else {
        return Ok(None);
    };
    match (time(sent_at)?, time(received_at)?) {
        (Some(sent), Some(received)) => {
            let skew = sent.as_millis() - original.as_millis();
            let corrected = EventTime::from_millis(received.as_millis().saturating_sub(skew));
            (corrected.as_millis() <= LATEST_EVENT_TIME)
                .then_some(Some(corrected))
                .ok_or(DecodeError::InvalidTimestamp)
        }
        _ => Ok(Some(original)),
    }
}

/// A field value where only strings matter.
#[derive(Default)]
enum Loose<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Other,
}

impl<'a> Loose<'a> {
    fn string(self) -> Option<Cow<'a, str>> {
        match self {
            Loose::Str(text) => Some(text),
            _ => None,
        }
    }

    fn non_empty(self) -> Option<Cow<'a, str>> {
        self.string().filter(|text| !text.is_empty())
    }
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Loose::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Loose::Other)
            }
        }
        deserializer.deserialize_any(LooseVisitor)
    }
}

/// The top-level fields stagestream reads; everything else is skipped.
enum Field {
    Type,
    UserId,
    AnonymousId,
    Timestamp,
    OriginalTimestamp,
    SentAt,
    ReceivedAt,
    MessageId,
    Event,
    Name,
    Properties,
    Traits,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "type" => Field::Type,
                    "userId" => Field::UserId,
                    "anonymousId" => Field::AnonymousId,
                    "timestamp" => Field::Timestamp,
                    "originalTimestamp" => Field::OriginalTimestamp,
                    "sentAt" => Field::SentAt,
                    "receivedAt" => Field::ReceivedAt,
                    "messageId" => Field::MessageId,
                    "event" => Field::Event,
                    "name" => Field::Name,
                    "properties" => Field::Properties,
                    "traits" => Field::Traits,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The `Visitor` methods for every JSON value but an object: skip it, yield `None`.
macro_rules! non_objects_are_none {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

/// Reads the top-level value: `Some(fields)` for an object, `None` for any other value.
struct EventSeed<'m> {
    model: &'m Model,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Option<Fields<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Option<Fields<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        let properties = PropertiesSeed { model: self.model };
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type => fields.kind = map.next_value()?,
                Field::UserId => fields.user_id = map.next_value()?,
                Field::AnonymousId => fields.anonymous_id = map.next_value()?,
                Field::Timestamp => fields.timestamp = map.next_value()?,
                Field::OriginalTimestamp => fields.client_times().original_timestamp = map.next_value()?,
                Field::SentAt => fields.client_times().sent_at = map.next_value()?,
                Field::ReceivedAt => fields.client_times().received_at = map.next_value()?,
                Field::MessageId => fields.message_id = map.next_value()?,
                Field::Event => fields.event = map.next_value()?,
                Field::Name => fields.name = map.next_value()?,
                Field::Properties => fields.properties = map.next_value_seed(properties)?,
                Field::Traits => fields.traits = map.next_value_seed(properties)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(fields))
    }

    non_objects_are_none!();
}

/// Reads `properties` (or `traits`), keeping only the keys the model tests.
/// Anything but an object is treated as carrying no properties.
#[derive(Clone, Copy)]
struct PropertiesSeed<'m> {
    model: &'m Model,
}

impl<'de> DeserializeSeed<'de> for PropertiesSeed<'_> {
    type Value = Option<Vec<Option<PropertyValue<'de>>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.model.property_count() == 0 {
            return deserializer.deserialize_ignored_any(IgnoredAny).map(|_| None);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PropertiesSeed<'_> {
    type Value = Option<Vec<Option<PropertyValue<'de>>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of properties")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.model.property_count()];
        while let Some(key) = map.next_key::<Loose<'de>>()? {
            match key.string().and_then(|key| self.model.property_key(&key)) {
                Some(key) => {
                    values[usize::from(key.0)] = Some(map.next_value::<PropertyValueDe<'de>>()?.0);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(values))
    }

    non_objects_are_none!();
}

struct PropertyValueDe<'a>(PropertyValue<'a>);

impl<'de> Deserialize<'de> for PropertyValueDe<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = PropertyValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(PropertyValue::String(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PropertyValue::String(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PropertyValue::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(PropertyValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(PropertyValue::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(PropertyValue::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(PropertyValue::Number(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| PropertyValue::Composite)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map).map(|_| PropertyValue::Composite)
            }
        }
        deserializer.deserialize_any(ValueVisitor).map(PropertyValueDe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::test_model;
    use crate::core::PropertyKey;

    fn model() -> Model {
        test_model(
            r#"
            name = "m"
            stages = ["a", "b"]
            [[rules]]
            name = "big"
            to = "b"
            events = ["Order Completed"]
            where = [{ property = "revenue", gt = 100 }, { property = "plan", exists = true }]
            "#,
        )
    }

    /// `bytes` decoded, as an event.
    fn event<'a>(bytes: &'a [u8], model: &Model) -> Event<'a> {
        decode(bytes, model).unwrap().into_event().expect("an event")
    }

    fn reason(line: &str) -> Option<RejectReason> {
        decode(line.as_bytes(), &model()).err().map(|e| e.reason())
    }

    #[test]
    fn a_default_time_fills_only_a_missing_timestamp() {
        let model = model();
        let record_time = Some(EventTime::from_millis(1_700_000_000_000));
        let fallback = FallbackTime {
            record: record_time,
            for_events: true,
        };
        let record_only = FallbackTime {
            for_events: false,
            ..fallback
        };
        for missing in [
            r#"{"event":"x","userId":"u"}"#,
            r#"{"event":"x","userId":"u","timestamp":null}"#,
        ] {
            let event = decode_with_default_time(missing.as_bytes(), &model, fallback).unwrap();
            assert_eq!(event.into_event().map(|e| e.timestamp), record_time);
            let refused = decode_with_default_time(missing.as_bytes(), &model, record_only).unwrap_err();
            assert_eq!(refused.reason(), RejectReason::MissingTimestamp);
        }
        let stamped = r#"{"event":"x","userId":"u","timestamp":"2026-01-01T00:00:00Z"}"#;
        let event = decode_with_default_time(stamped.as_bytes(), &model, fallback).unwrap();
        assert_eq!(
            event.into_event().unwrap().timestamp.to_string(),
            "2026-01-01T00:00:00.000Z"
        );
        let invalid = r#"{"event":"x","userId":"u","timestamp":"yesterday"}"#;
        let error = decode_with_default_time(invalid.as_bytes(), &model, fallback).unwrap_err();
        assert_eq!(error.reason(), RejectReason::InvalidTimestamp);
    }

    #[test]
    fn without_timestamp_segments_client_times_decide() {
        let model = model();
        let record_time = EventTime::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        let fallback = FallbackTime {
            record: Some(record_time),
            for_events: true,
        };
        let time = |fields: &str, fallback| {
            let line = format!(r#"{{"event":"x","userId":"u",{fields}}}"#);
            decode_with_default_time(line.as_bytes(), &model, fallback)
                .map(|record| record.into_event().unwrap().timestamp.to_string())
                .map_err(|e| e.reason())
        };
        let original = r#""originalTimestamp":"2026-03-01T10:00:00Z""#;
        let sent = r#""sentAt":"2026-03-01T10:05:00Z""#;
        let received = r#""receivedAt":"2026-03-01T10:07:30.250Z""#;
        let none = FallbackTime::default();
        // The device's clock ran 2.5 minutes and 250 ms behind: corrected by the skew.
        assert_eq!(
            time(&format!("{original},{sent},{received}"), none),
            Ok("2026-03-01T10:02:30.250Z".into())
        );
        assert_eq!(
            time(&format!("{received},{original},{sent}"), none),
            Ok("2026-03-01T10:02:30.250Z".into())
        );
        // Without both sentAt and receivedAt, originalTimestamp as it is.
        assert_eq!(
            time(&format!("{original},{sent}"), none),
            Ok("2026-03-01T10:00:00.000Z".into())
        );
        assert_eq!(
            time(&format!("{original},{received}"), none),
            Ok("2026-03-01T10:00:00.000Z".into())
        );
        // `timestamp` wins; then the record timestamp where allowed; else missing.
        let stamped = r#""timestamp":"2026-03-01T09:00:00Z""#;
        assert_eq!(
            time(&format!("{stamped},{original},{sent},{received}"), none),
            Ok("2026-03-01T09:00:00.000Z".into())
        );
        assert_eq!(
            time(&format!("{sent},{received}"), fallback),
            Ok("2026-03-01T12:00:00.000Z".into())
        );
        assert_eq!(
            time(&format!(r#""timestamp":null,{original}"#), fallback),
            Ok("2026-03-01T10:00:00.000Z".into())
        );
        assert_eq!(
            time(&format!("{sent},{received}"), none),
            Err(RejectReason::MissingTimestamp)
        );
        // A client time that is given but not a time is invalid, as `timestamp` would be.
        for bad in [
            r#""originalTimestamp":"soon""#.to_owned(),
            r#""originalTimestamp":17"#.to_owned(),
            format!(r#"{original},"sentAt":"x",{received}"#),
            format!(r#"{original},{sent},"receivedAt":false"#),
        ] {
            assert_eq!(time(&bad, fallback), Err(RejectReason::InvalidTimestamp), "{bad}");
        }
    }

    #[test]
    fn an_erase_request_takes_the_record_time_when_it_has_none() {
        let model = model();
        let stamped = EventTime::from_millis(1_700_000_000_000);
        let record_time = Some(stamped);
        let record_only = FallbackTime {
            record: record_time,
            for_events: false,
        };
        let erase =
            |line: &'static str, fallback| decode_with_default_time(line.as_bytes(), &model, fallback);
        assert_eq!(
            erase(r#"{"type":"erase","anonymousId":"a-1"}"#, record_only).unwrap(),
            Record::Erase(Erase {
                customer: Cow::Borrowed("a-1"),
                at: stamped
            })
        );
        assert_eq!(
            erase(
                r#"{"type":"erase","userId":"u-1","timestamp":"2026-01-01T00:00:00Z"}"#,
                record_only
            )
            .unwrap(),
            Record::Erase(Erase {
                customer: Cow::Borrowed("u-1"),
                at: EventTime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
            })
        );
        let without_time = erase(r#"{"type":"erase","userId":"u"}"#, FallbackTime::default());
        assert_eq!(without_time.unwrap_err().reason(), RejectReason::MissingTimestamp);
        let without_customer = erase(
            r#"{"type":"erase","timestamp":"2026-01-01T00:00:00Z"}"#,
            record_only,
        );
        assert_eq!(
            without_customer.unwrap_err().reason(),
            RejectReason::MissingCustomer
        );
        // A tombstone: the key is the customer, the record's timestamp the time.
        assert_eq!(
            tombstone(Some(b"u-2"), record_time).unwrap(),
            Erase {
                customer: Cow::Borrowed("u-2"),
                at: stamped
            }
        );
        for key in [None, Some(&b""[..]), Some(&b"\xff"[..])] {
            assert_eq!(
                tombstone(key, record_time).unwrap_err().reason(),
                RejectReason::MissingCustomer
            );
        }
        assert_eq!(
            tombstone(Some(b"u"), None).unwrap_err().reason(),
            RejectReason::MissingTimestamp
        );
    }

    #[test]
    fn each_invalid_input_has_its_reason() {
        let cases = [
            ("", RejectReason::InvalidJson),
            ("{\"userId\":", RejectReason::InvalidJson),
            ("{} trailing", RejectReason::InvalidJson),
            ("\u{ff}", RejectReason::InvalidJson),
            ("[1,2]", RejectReason::NotAnObject),
            ("\"track\"", RejectReason::NotAnObject),
            ("null", RejectReason::NotAnObject),
            (
                r#"{"type":"track","event":"X","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::MissingCustomer,
            ),
            (
                r#"{"type":"track","event":"X","userId":"","anonymousId":"","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::MissingCustomer,
            ),
            (
                r#"{"type":"track","event":"X","userId":42,"timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::MissingCustomer,
            ),
            (
                r#"{"type":"track","event":"X","userId":"u"}"#,
                RejectReason::MissingTimestamp,
            ),
            (
                r#"{"type":"track","event":"X","userId":"u","timestamp":null}"#,
                RejectReason::MissingTimestamp,
            ),
            (
                r#"{"type":"track","event":"X","userId":"u","timestamp":"yesterday"}"#,
                RejectReason::InvalidTimestamp,
            ),
            (
                r#"{"type":"track","event":"X","userId":"u","timestamp":"2024-01-01T00:00:00"}"#,
                RejectReason::InvalidTimestamp,
            ),
            (
                r#"{"type":"track","event":"X","userId":"u","timestamp":"6000-01-01T00:00:00.001Z"}"#,
                RejectReason::InvalidTimestamp,
            ),
            (
                r#"{"type":"track","event":"X","userId":"u","timestamp":1704067200}"#,
                RejectReason::InvalidTimestamp,
            ),
            (
                r#"{"type":"click","userId":"u","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::UnknownType,
            ),
            (
                r#"{"type":"Track","event":"X","userId":"u","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::UnknownType,
            ),
            (
                r#"{"userId":"u","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::UnknownType,
            ),
            (
                r#"{"type":"track","userId":"u","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::MissingEvent,
            ),
            (
                r#"{"type":"track","event":7,"userId":"u","timestamp":"2024-01-01T00:00:00Z"}"#,
                RejectReason::MissingEvent,
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(reason(line), Some(expected), "{line}");
        }
        let latest = r#"{"type":"track","event":"X","userId":"u","timestamp":"6000-01-01T00:00:00Z"}"#;
        assert_eq!(reason(latest), None, "the latest time the engine keeps");
    }

    #[test]
    fn skipped_values_must_be_json_too() {
        let valid = r#"{"type":"track","event":"X","userId":"u","timestamp":"2024-01-01T00:00:00Z","context":CONTEXT}"#;
        let line = |context: &str| valid.replace("CONTEXT", context);
        assert_eq!(
            reason(&line(r#"{"ok":[1,-2.5e-3,true,null,{}],"s":"a b"}"#)),
            None
        );
        // Grammatical JSON, though not Unicode text: accepted where nothing reads it.
        assert_eq!(reason(&line(r#"{"a":"\ud800"}"#)), None);
        for context in [
            "{\"ua\":\"a\tb\"}",
            "{\"ua\":\"a\u{1}b\"}",
            r#"{"n":01}"#,
            r#"{"n":1.}"#,
            r#"{"n":-}"#,
            r#"{"n":.5}"#,
            r#"{"n":1e}"#,
            r#"{"t":tru}"#,
            r#"{"t":nul}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":[1}"#,
            r#"{"a":"\x"}"#,
        ] {
            assert_eq!(
                reason(&line(context)),
                Some(RejectReason::InvalidJson),
                "{context}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_invalid_json_even_where_nothing_is_read() {
        let model = model();
        let in_customer = b"{\"type\":\"track\",\"event\":\"X\",\"userId\":\"u\xff\",\"timestamp\":\"2024-01-01T00:00:00Z\"}";
        let in_context =
            b"{\"type\":\"track\",\"event\":\"X\",\"userId\":\"u\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"context\":{\"ua\":\"\xc3\x28\"}}";
        for line in [&in_customer[..], &in_context[..]] {
            let reason = decode(line, &model).err().map(|e| e.reason());
            assert_eq!(
                reason,
                Some(RejectReason::InvalidJson),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest::proptest! {
        /// Decoding is one pass that skips what it does not need; the reference for what is
        /// JSON is UTF-8 plus serde_json's full grammar check. Lines are valid events with a
        /// few bytes overwritten, inserted or removed.
        #[test]
        fn rejects_as_invalid_json_exactly_what_serde_json_rejects(
            edits in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>(), 0u8..3), 1..7),
            pick in 0usize..5,
        ) {
            let base = [
                r#"{"type":"track","event":"Order Completed","userId":"u-1","messageId":"m","timestamp":"2024-01-01T00:00:00Z","properties":{"revenue":12.5,"plan":"pro","items":[1,2,{"a":null}]},"context":{"ip":"1.2.3.4","ua":"Mozilla/5.0 \"x\" \u00e9"}}"#,
                r#"{"type":"page","name":"Home","anonymousId":"a","timestamp":"2024-01-01T00:00:00.123+02:00","context":{"n":-1.5e3,"t":true,"f":false}}"#,
                r#"{"userId":"u","event":"X","timestamp":"2024-01-01T00:00:00Z","traits":{"k":[]},"x":"\ud83d\ude00"}"#,
                r#"[1,"two",{"three":3.0}]"#,
                r#"{"type":"track","event":"E","userId":"u","timestamp":"2024-01-01T00:00:00Z","context":{"a":[1,-2.5e-3,0,true,false,null,"s",{}],"b":{"c":[[]],"d":""},"e":1E+2,"f":-0.0}}"#,
            ][pick];
            let mut line = base.as_bytes().to_vec();
            for (at, byte, op) in edits {
                let at = at % (line.len() + 1);
                match op {
                    0 if at < line.len() => line[at] = byte,
                    1 => line.insert(at, byte),
                    _ if at < line.len() => { line.remove(at); }
                    _ => {}
                }
            }
            // JSON text is UTF-8 (RFC 8259, 8.1), which serde_json's skipping does not check.
            let reference_ok = std::str::from_utf8(&line).is_ok()
                && serde_json::from_slice::<IgnoredAny>(&line).is_ok();
            let ours = decode(&line, &model()).err().map(|e| e.reason());
            proptest::prop_assert_eq!(
                ours != Some(RejectReason::InvalidJson),
                reference_ok,
                "{:?} gave {:?}",
                String::from_utf8_lossy(&line),
                ours
            );
        }
    }

    #[test]
    fn reads_a_track_call_borrowing_its_strings() {
        let line = br#"{"type":"track","event":"Order Completed","userId":"u-1","anonymousId":"a-1",
            "messageId":"m-1","timestamp":"2024-01-01T01:00:00+01:00",
            "context":{"ip":"1.2.3.4","nested":[{"deep":true}]},
            "properties":{"revenue":120.5,"plan":{"tier":"pro"},"other":"skipped"}}"#;
        let model = model();
        let event = event(line, &model);
        assert_eq!(event.kind, EventType::Track);
        assert!(matches!(event.customer, Cow::Borrowed("u-1")));
        assert_eq!(event.message_id.as_deref(), Some("m-1"));
        assert_eq!(event.name.as_deref(), Some("Order Completed"));
        assert_eq!(
            event.timestamp,
            EventTime::parse_rfc3339("2024-01-01T00:00:00Z").unwrap()
        );
        let revenue = model.property_key("revenue").unwrap();
        let plan = model.property_key("plan").unwrap();
        assert_eq!(event.property(revenue), Some(&PropertyValue::Number(120.5)));
        assert_eq!(event.property(plan), Some(&PropertyValue::Composite));
        assert_eq!(event.properties.len(), 2, "only tested properties are kept");
    }

    #[test]
    fn follows_the_segment_defaults() {
        let model = model();
        let anonymous = event(
            br#"{"event":"X","userId":null,"anonymousId":"anon","timestamp":"2024-01-01T00:00:00Z"}"#,
            &model,
        );
        assert_eq!(
            anonymous.kind,
            EventType::Track,
            "no type but a string event is a track"
        );
        assert_eq!(anonymous.customer, "anon");
        assert_eq!(anonymous.message_id, None);

        let page = event(
            br#"{"type":"page","name":"Pricing","userId":"u\u0031","timestamp":"2024-01-01T00:00:00Z","messageId":""}"#,
            &model,
        );
        assert_eq!(page.name.as_deref(), Some("Pricing"));
        assert_eq!(page.customer, "u1", "escaped strings are unescaped");
        assert_eq!(page.message_id, None, "an empty messageId is no messageId");

        let identify = event(
            br#"{"type":"identify","userId":"u","timestamp":"2024-01-01T00:00:00Z",
                "traits":{"plan":"pro"},"properties":{"plan":null}}"#,
            &model,
        );
        let plan = model.property_key("plan").unwrap();
        assert_eq!(
            identify.property(plan),
            Some(&PropertyValue::String("pro".into())),
            "identify predicates read traits"
        );
        assert_eq!(identify.property(PropertyKey(9)), None);
    }
}
