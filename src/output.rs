//! Engine outputs -> CloudEvents 1.0.
//!
//! [`Renderer::render`] turns one [`Output`] into its `data` JSON and the envelope
//! attributes; [`Rendered::write_structured`] writes the structured-mode JSON line that
//! `replay` prints. The Kafka binary mode sends the same `data` bytes with the
//! attributes as headers, so both modes carry the same id for the same output.
//!
//! The `id` is a UUIDv5 over the CloudEvent `type` and the `data` JSON: it depends on
//! what the output says, never on when or in which order it was produced, so an output
//! emitted again after recovery carries the same id.

use std::io::{self, Write};

use sha1::{Digest, Sha1};
use uuid::Uuid;

use crate::core::{Cause, Engine, EventTime, Model, Output, Record, RuleId, StageId};

pub const STAGE_CHANGED: &str = "stagestream.stage.changed.v1";
pub const CUSTOMER_INACTIVE: &str = "stagestream.customer.inactive.v1";
pub const CUSTOMER_REACTIVATED: &str = "stagestream.customer.reactivated.v1";
pub const CUSTOMER_EXPIRED: &str = "stagestream.customer.expired.v1";
pub const CUSTOMER_ERASED: &str = "stagestream.customer.erased.v1";

/// The `rule` of a transition out of a stage the model no longer has, made when a
/// snapshot is restored ([`Output::Migrated`]).
const MIGRATION_RULE: &[u8] = b"\"model-migration\"";

/// The UUIDv5 namespace of output ids: `id = uuidv5(NAMESPACE, type + "\n" + data)`.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_9a51_3d2e_4b7a_9c1e_5a7d_2f48_b3e6);

/// Renders outputs of one model; holds pre-escaped names and the reused buffers.
///
/// `data` is written by hand rather than through serde: every stage, rule, threshold
/// and model name is escaped once here, and per-output strings are copied verbatim when
/// they need no escaping, which cut rendering cost by about half.
/// Escaping itself is serde_json's, so the bytes are what serde_json would write.
#[derive(Debug)]
pub struct Renderer {
    source: String,
    source_json: Vec<u8>,
    names: Names,
    data: Vec<u8>,
    time: [u8; 24],
    id: [u8; uuid::fmt::Hyphenated::LENGTH],
}

/// The model's names, each as a JSON string.
#[derive(Debug)]
struct Names {
    /// `,"model":NAME,"model_version":VERSION`, which every output's `data` carries.
    model_fields: Vec<u8>,
    stage_json: Vec<Vec<u8>>,
    rule_json: Vec<Vec<u8>>,
    threshold_json: Vec<Vec<u8>>,
}

/// One rendered output: the envelope attributes and the `data` JSON.
#[derive(Debug)]
pub struct Rendered<'a> {
    pub id: &'a str,
    pub source: &'a str,
    source_json: &'a [u8],
    pub kind: &'static str,
    pub subject: &'a str,
    /// The CloudEvents `time`, as RFC 3339 text (UTC, milliseconds).
    pub time: &'a str,
    pub data: &'a [u8],
}

impl Renderer {
    /// A renderer for outputs of engines running `model`; `source` is the CloudEvents
    /// `source` attribute of every output.
    pub fn new(source: impl Into<String>, model: &Model) -> Self {
        let source = source.into();
        let quoted = |name: &str| {
            let mut json = Vec::with_capacity(name.len() + 2);
            write_json_str(&mut json, name);
            json
        };
        Renderer {
            source_json: quoted(&source),
            source,
            names: Names {
                model_fields: [
                    &b",\"model\":"[..],
                    &quoted(model.name()),
                    b",\"model_version\":",
                    &quoted(model.version()),
                ]
                .concat(),
                stage_json: model.stage_names().map(quoted).collect(),
                rule_json: (0..model.rule_count())
                    .map(|i| quoted(&model.rule(RuleId(i as u16)).name))
                    .collect(),
                threshold_json: model.thresholds().iter().map(|t| quoted(&t.name)).collect(),
            },
            data: Vec::with_capacity(512),
            time: [0; 24],
            id: [0; uuid::fmt::Hyphenated::LENGTH],
        }
    }

    /// Renders `output`. `trigger` must be the record whose `on_event` or `erase` call
    /// produced it (it is read only for transitions that event triggered and for
    /// erasures).
    ///
    /// # Panics
    /// If `output` is a rule or entry transition and `trigger` is not an event, or an
    /// erasure and `trigger` is not an erase record.
    pub fn render<'a>(
        &'a mut self,
        engine: &'a Engine,
        output: &Output,
        trigger: Option<&'a Record<'_>>,
    ) -> Rendered<'a> {
        self.data.clear();
        // The output's time is written once: a rule transition's trigger has the same
        // timestamp, and the envelope carries it too.
        let time = match *output {
            Output::StageChanged { at, .. } | Output::Migrated { at, .. } | Output::Erased { at } => at,
            Output::Inactive { detected_at, .. } => detected_at,
            Output::Reactivated { returned_at, .. } => returned_at,
            Output::Expired { expired_at, .. } => expired_at,
        };
        let time_text = time.write_rfc3339(&mut self.time);
        let (names, data) = (&self.names, &mut self.data);
        let (kind, customer) = match *output {
            Output::StageChanged { customer, .. } | Output::Migrated { customer, .. } => {
                let customer_id = engine.customer_id(customer);
                names.write_stage_changed(data, engine, customer_id, output, trigger, time_text);
                (STAGE_CHANGED, customer_id)
            }
            Output::Inactive {
                customer,
                threshold,
                stage,
                stage_entered,
                last_activity,
                detected_at,
            } => {
                let customer_id = engine.customer_id(customer);
                data.extend_from_slice(b"{\"customer_id\":");
                write_json_str(data, customer_id);
                data.extend_from_slice(b",\"threshold\":");
                data.extend_from_slice(&names.threshold_json[usize::from(threshold.0)]);
                data.extend_from_slice(b",\"stage\":");
                data.extend_from_slice(&names.stage_json[usize::from(stage.0)]);
                data.extend_from_slice(b",\"stage_entered_at\":");
                write_json_time(data, stage_entered);
                data.extend_from_slice(b",\"inactive_seconds\":");
                write_whole_seconds(data, last_activity, detected_at);
                data.extend_from_slice(b",\"last_activity_at\":");
                write_json_time(data, last_activity);
                data.extend_from_slice(b",\"detected_at\":");
                write_json_time_text(data, time_text);
                data.extend_from_slice(&names.model_fields);
                data.push(b'}');
                (CUSTOMER_INACTIVE, customer_id)
            }
            Output::Reactivated {
                customer,
                stage,
                last_activity,
                returned_at,
                gap_stage,
                last_threshold,
            } => {
                let customer_id = engine.customer_id(customer);
                names.write_customer_stage_and_last_activity(data, customer_id, stage, last_activity);
                data.extend_from_slice(b",\"returned_at\":");
                write_json_time_text(data, time_text);
                data.extend_from_slice(b",\"inactive_seconds\":");
                write_whole_seconds(data, last_activity, returned_at);
                data.extend_from_slice(b",\"thresholds\":[");
                for (i, threshold) in engine.model().fired_in_gap(gap_stage, last_threshold).enumerate() {
                    if i > 0 {
                        data.push(b',');
                    }
                    data.extend_from_slice(&names.threshold_json[usize::from(threshold.0)]);
                }
                data.push(b']');
                data.extend_from_slice(&names.model_fields);
                data.push(b'}');
                (CUSTOMER_REACTIVATED, customer_id)
            }
            Output::Expired {
                customer,
                stage,
                last_activity,
                ..
            } => {
                let customer_id = engine.customer_id(customer);
                names.write_customer_stage_and_last_activity(data, customer_id, stage, last_activity);
                data.extend_from_slice(b",\"expired_at\":");
                write_json_time_text(data, time_text);
                data.extend_from_slice(&names.model_fields);
                data.push(b'}');
                (CUSTOMER_EXPIRED, customer_id)
            }
            Output::Erased { .. } => {
                let Some(Record::Erase(erase)) = trigger else {
                    panic!("an erasure needs its erase record");
                };
                let customer_id: &'a str = &erase.customer;
                data.extend_from_slice(b"{\"customer_id\":");
                write_json_str(data, customer_id);
                data.extend_from_slice(&names.model_fields);
                data.push(b'}');
                (CUSTOMER_ERASED, customer_id)
            }
        };
        // UUIDv5 by RFC 9562: SHA-1 over namespace + name, here name = type "\n" data.
        // RustCrypto's sha1 uses the CPU's SHA extensions where present, several times
        // faster than uuid's own.
        let digest = Sha1::new()
            .chain_update(ID_NAMESPACE.as_bytes())
            .chain_update(kind.as_bytes())
            .chain_update(b"\n")
            .chain_update(&self.data)
            .finalize();
        let sha1_prefix: [u8; 16] = digest[..16].try_into().expect("SHA-1 is 20 bytes");
        let id = uuid::Builder::from_sha1_bytes(sha1_prefix)
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut self.id);
        Rendered {
            id,
            source: &self.source,
            source_json: &self.source_json,
            kind,
            subject: customer,
            time: time_text,
            data: &self.data,
        }
    }
}

impl Names {
    /// Opens a reactivation's or expiry's `data`: `{"customer_id":..,"stage":..,
    /// "last_activity_at":..`.
    fn write_customer_stage_and_last_activity(
        &self,
        data: &mut Vec<u8>,
        customer_id: &str,
        stage: StageId,
        last_activity: EventTime,
    ) {
        data.extend_from_slice(b"{\"customer_id\":");
        write_json_str(data, customer_id);
        data.extend_from_slice(b",\"stage\":");
        data.extend_from_slice(&self.stage_json[usize::from(stage.0)]);
        data.extend_from_slice(b",\"last_activity_at\":");
        write_json_time(data, last_activity);
    }

    /// Writes a `stagestream.stage.changed.v1` output's `data` (a transition, or a
    /// migration's); `time_text` is its time.
    fn write_stage_changed(
        &self,
        data: &mut Vec<u8>,
        engine: &Engine,
        customer_id: &str,
        output: &Output,
        trigger: Option<&Record<'_>>,
        time_text: &str,
    ) {
        // `cause` is `None` for a migration, whose rule is "model-migration".
        let (from, to, cause, at, from_entered, first_seen) = match *output {
            Output::StageChanged {
                from,
                to,
                cause,
                at,
                from_entered,
                first_seen,
                ..
            } => (from, to, Some(cause), at, from_entered, first_seen),
            Output::Migrated {
                to,
                at,
                from_entered,
                first_seen,
                ..
            } => (None, to, None, at, Some(from_entered), first_seen),
            _ => unreachable!("called for transitions only"),
        };
        data.extend_from_slice(b"{\"customer_id\":");
        write_json_str(data, customer_id);
        data.extend_from_slice(b",\"from_stage\":");
        match (from, output) {
            (Some(stage), _) => data.extend_from_slice(&self.stage_json[usize::from(stage.0)]),
            (None, Output::Migrated { from, .. }) => write_json_str(data, engine.saved_stage_name(*from)),
            (None, _) => data.extend_from_slice(b"null"),
        }
        data.extend_from_slice(b",\"to_stage\":");
        data.extend_from_slice(&self.stage_json[usize::from(to.0)]);
        data.extend_from_slice(b",\"rule\":");
        match cause {
            Some(Cause::Rule(rule)) => data.extend_from_slice(&self.rule_json[usize::from(rule.0)]),
            Some(Cause::Inactivity(threshold)) => {
                data.extend_from_slice(&self.threshold_json[usize::from(threshold.0)])
            }
            Some(Cause::Entry) => data.extend_from_slice(b"null"),
            None => data.extend_from_slice(MIGRATION_RULE),
        }
        data.extend_from_slice(&self.model_fields);
        data.extend_from_slice(b",\"trigger\":");
        match cause {
            Some(Cause::Entry | Cause::Rule(_)) => {
                let Some(Record::Event(event)) = trigger else {
                    panic!("an event-triggered transition needs its event");
                };
                data.extend_from_slice(b"{\"message_id\":");
                write_json_str_or_null(data, event.message_id.as_deref());
                data.extend_from_slice(b",\"type\":\"");
                data.extend_from_slice(event.kind.as_str().as_bytes());
                data.extend_from_slice(b"\",\"event\":");
                write_json_str_or_null(data, event.name.as_deref());
                data.extend_from_slice(b",\"timestamp\":");
                if event.timestamp == at {
                    write_json_time_text(data, time_text);
                } else {
                    write_json_time(data, event.timestamp);
                }
                data.push(b'}');
            }
            Some(Cause::Inactivity(_)) | None => data.extend_from_slice(b"null"),
        }
        data.extend_from_slice(b",\"first_seen_at\":");
        // A first transition's is its own time, already written once.
        if first_seen == Some(at) {
            write_json_time_text(data, time_text);
        } else {
            write_json_time_or_null(data, first_seen);
        }
        data.extend_from_slice(b",\"previous_stage_entered_at\":");
        write_json_time_or_null(data, from_entered);
        data.extend_from_slice(b",\"time_in_previous_stage_seconds\":");
        match output.time_in_from() {
            Some(held) => write_seconds(data, held.as_millis()),
            None => data.extend_from_slice(b"null"),
        }
        data.push(b'}');
    }
}

impl Rendered<'_> {
    /// Writes the structured-mode CloudEvent as one JSON line.
    ///
    /// # Errors
    /// What `out` returns.
    pub fn write_structured<W: Write>(&self, out: &mut W) -> io::Result<()> {
        out.write_all(b"{\"specversion\":\"1.0\",\"id\":\"")?;
        out.write_all(self.id.as_bytes())?;
        out.write_all(b"\",\"source\":")?;
        out.write_all(self.source_json)?;
        out.write_all(b",\"type\":\"")?;
        out.write_all(self.kind.as_bytes())?;
        out.write_all(b"\",\"subject\":")?;
        if needs_escaping(self.subject) {
            serde_json::to_writer(&mut *out, self.subject)?;
        } else {
            out.write_all(b"\"")?;
            out.write_all(self.subject.as_bytes())?;
            out.write_all(b"\"")?;
        }
        out.write_all(b",\"time\":\"")?;
        out.write_all(self.time.as_bytes())?;
        out.write_all(b"\",\"datacontenttype\":\"application/json\",\"data\":")?;
        out.write_all(self.data)?;
        out.write_all(b"}\n")
    }
}

/// Whether JSON needs escapes for `text`: exactly the characters serde_json escapes.
fn needs_escaping(text: &str) -> bool {
    // Without an early exit inside a chunk the compiler tests 16 bytes at once.
    let special = |&b: &u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = text.as_bytes().chunks_exact(16);
    chunks
        .by_ref()
        .any(|chunk| chunk.iter().fold(false, |found, b| found | special(b)))
        || chunks.remainder().iter().any(special)
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    if needs_escaping(text) {
        serde_json::to_writer(out, text).expect("writing to a Vec cannot fail");
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

fn write_json_str_or_null(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => write_json_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_json_time(out: &mut Vec<u8>, time: EventTime) {
    write_json_time_text(out, time.write_rfc3339(&mut [0; 24]));
}

fn write_json_time_or_null(out: &mut Vec<u8>, time: Option<EventTime>) {
    match time {
        Some(time) => write_json_time(out, time),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes whole seconds from `from` to `to` (rounded down).
fn write_whole_seconds(out: &mut Vec<u8>, from: EventTime, to: EventTime) {
    let seconds = (to.as_millis() - from.as_millis()).div_euclid(1_000);
    write!(out, "{seconds}").expect("writing to a Vec cannot fail");
}

/// Writes a non-negative number of milliseconds as seconds, to the millisecond:
/// `90`, `90.5`, `90.001`.
fn write_seconds(out: &mut Vec<u8>, millis: i64) {
    let (seconds, fraction) = (millis / 1_000, millis % 1_000);
    write!(out, "{seconds}").expect("writing to a Vec cannot fail");
    if fraction != 0 {
        let digits = format!("{fraction:03}");
        out.push(b'.');
        out.extend_from_slice(digits.trim_end_matches('0').as_bytes());
    }
}

fn write_json_time_text(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_exactly_like_serde_json() {
        for text in [
            "plain",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "é🙂",
            "\u{7f}",
            "",
        ]
        .into_iter()
        .map(str::to_owned)
        // Longer than the 16 bytes checked at once, with the character to escape in the
        // first chunk, at its last byte, past it, or in the remainder.
        .chain((0..40).flat_map(|at| {
            ["\"", "\\", "\n", "\u{1f}"].map(|special| {
                let mut text = "x".repeat(40);
                text.replace_range(at..at + 1, special);
                text
            })
        }))
        .chain(["0123456789abcdef".to_owned(), "é".repeat(20)])
        {
            let mut ours = Vec::new();
            write_json_str(&mut ours, &text);
            assert_eq!(ours, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }
}
