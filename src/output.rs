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

use serde::{Serialize, Serializer};
use sha1::{Digest, Sha1};
use uuid::Uuid;

use crate::core::{Cause, Engine, Event, EventTime, Output};

pub const STAGE_CHANGED: &str = "stagestream.stage.changed.v1";
pub const CUSTOMER_INACTIVE: &str = "stagestream.customer.inactive.v1";

/// The UUIDv5 namespace of output ids: `id = uuidv5(NAMESPACE, type + "\n" + data)`.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_9a51_3d2e_4b7a_9c1e_5a7d_2f48_b3e6);

/// Renders outputs; holds the reused buffers.
#[derive(Debug)]
pub struct Renderer {
    source: String,
    data: Vec<u8>,
    id: [u8; uuid::fmt::Hyphenated::LENGTH],
}

/// One rendered output: the envelope attributes and the `data` JSON.
#[derive(Debug)]
pub struct Rendered<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub kind: &'static str,
    pub subject: &'a str,
    pub time: EventTime,
    pub data: &'a [u8],
}

impl Renderer {
    /// `source` is the CloudEvents `source` attribute of every output.
    pub fn new(source: impl Into<String>) -> Self {
        Renderer {
            source: source.into(),
            data: Vec::with_capacity(512),
            id: [0; uuid::fmt::Hyphenated::LENGTH],
        }
    }

    /// Renders `output`. `trigger` must be the event whose `on_event` call produced it
    /// (it is read only for transitions that event triggered).
    ///
    /// # Panics
    /// If `output` is a rule or entry transition and `trigger` is `None`.
    pub fn render<'a>(
        &'a mut self,
        engine: &'a Engine,
        output: &Output,
        trigger: Option<&Event<'_>>,
    ) -> Rendered<'a> {
        let model = engine.model();
        self.data.clear();
        let (kind, customer, time) = match *output {
            Output::StageChanged {
                customer,
                from,
                to,
                cause,
                at,
            } => {
                let customer_id = engine.customer_id(customer);
                let (rule, trigger) = match cause {
                    Cause::Entry | Cause::Rule(_) => {
                        let event = trigger.expect("an event-triggered transition needs its event");
                        let rule = match cause {
                            Cause::Rule(rule) => Some(model.rule(rule).name.as_str()),
                            _ => None,
                        };
                        let trigger = TriggerData {
                            message_id: event.message_id.as_deref(),
                            kind: event.kind.as_str(),
                            event: event.name.as_deref(),
                            timestamp: Rfc3339(event.timestamp),
                        };
                        (rule, Some(trigger))
                    }
                    Cause::Inactivity(threshold) => (Some(model.threshold(threshold).name.as_str()), None),
                };
                let data = StageChangedData {
                    customer_id,
                    from_stage: from.map(|stage| model.stage_name(stage)),
                    to_stage: model.stage_name(to),
                    rule,
                    model: model.name(),
                    trigger,
                };
                serde_json::to_writer(&mut self.data, &data).expect("writing to a Vec cannot fail");
                (STAGE_CHANGED, customer_id, at)
            }
            Output::Inactive {
                customer,
                threshold,
                stage,
                last_activity,
                detected_at,
            } => {
                let customer_id = engine.customer_id(customer);
                let data = InactiveData {
                    customer_id,
                    threshold: &model.threshold(threshold).name,
                    stage: model.stage_name(stage),
                    inactive_seconds: (detected_at.as_millis() - last_activity.as_millis()).div_euclid(1_000),
                    last_activity_at: Rfc3339(last_activity),
                    detected_at: Rfc3339(detected_at),
                    model: model.name(),
                };
                serde_json::to_writer(&mut self.data, &data).expect("writing to a Vec cannot fail");
                (CUSTOMER_INACTIVE, customer_id, detected_at)
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
            kind,
            subject: customer,
            time,
            data: &self.data,
        }
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
        serde_json::to_writer(&mut *out, self.source)?;
        out.write_all(b",\"type\":\"")?;
        out.write_all(self.kind.as_bytes())?;
        out.write_all(b"\",\"subject\":")?;
        serde_json::to_writer(&mut *out, self.subject)?;
        out.write_all(b",\"time\":\"")?;
        out.write_all(self.time.write_rfc3339(&mut [0; 24]).as_bytes())?;
        out.write_all(b"\",\"datacontenttype\":\"application/json\",\"data\":")?;
        out.write_all(self.data)?;
        out.write_all(b"}\n")
    }
}

/// An [`EventTime`] serialised as RFC 3339 UTC with milliseconds.
struct Rfc3339(EventTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.write_rfc3339(&mut [0; 24]))
    }
}

#[derive(Serialize)]
struct StageChangedData<'a> {
    customer_id: &'a str,
    from_stage: Option<&'a str>,
    to_stage: &'a str,
    rule: Option<&'a str>,
    model: &'a str,
    trigger: Option<TriggerData<'a>>,
}

#[derive(Serialize)]
struct TriggerData<'a> {
    message_id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    event: Option<&'a str>,
    timestamp: Rfc3339,
}

#[derive(Serialize)]
struct InactiveData<'a> {
    customer_id: &'a str,
    threshold: &'a str,
    stage: &'a str,
    inactive_seconds: i64,
    last_activity_at: Rfc3339,
    detected_at: Rfc3339,
    model: &'a str,
}
