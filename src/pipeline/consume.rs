//! One input message through the owner: decode (a tombstone is an erase request for
//! its key), check against the wall clock, apply to its partition's engine (and its
//! shadow's, `super::shadow`), send the outputs (or the dead letter), and record in the
//! partition's ledger what the commit must wait for.

use std::time::Instant;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use tracing::{debug, info};

use super::events::{Rejected, FUTURE_TIMESTAMP};
use super::hooks::DeliveryTag;
use super::instruments::consumed;
use super::ledger::Replay;
use super::owner::Owner;
use super::sink::produced;
use super::PartitionKey;
use crate::core::{EventTime, Record, Verdict};
use crate::decode::{decode_with_default_time, tombstone, FallbackTime};
use crate::telemetry::labels::{Consumed, Produced};

impl Owner {
    /// Handles one message; `polled_at` is when the poll returned it.
    pub(super) fn on_message(&mut self, message: &BorrowedMessage<'_>, now: EventTime, polled_at: Instant) {
        self.handle_message(message, now, polled_at);
        self.instruments
            .processing
            .observe(polled_at.elapsed().as_secs_f64());
    }

    fn handle_message(&mut self, message: &BorrowedMessage<'_>, now: EventTime, polled_at: Instant) {
        let Some(key) = self.key_of(message.topic(), message.partition()) else {
            return;
        };
        let Some(state) = self.partitions.get_mut(&key) else {
            debug!(
                topic = message.topic(),
                partition = message.partition(),
                "message of an unassigned partition"
            );
            return;
        };
        let offset = message.offset();
        let replay = state.ledger.message(offset);
        self.totals.consumed += 1;
        state.snapshot.dirty = true;
        if let Some(transaction) = &mut self.transaction {
            transaction.work = true;
        }
        if replay == Replay::Silent {
            self.control.metrics.replayed_without_output.inc();
        }
        let settings = &self.settings;
        let fallback = FallbackTime {
            record: message.timestamp().to_millis().map(EventTime::from_millis),
            for_events: settings.live.use_record_timestamp,
        };
        let decoded = match message.payload() {
            Some(payload) => decode_with_default_time(payload, &settings.model, fallback),
            None => tombstone(message.key(), fallback.record).map(Record::Erase),
        };
        let epoch = state.epoch;
        let tag = |sent| DeliveryTag {
            partition: key,
            epoch,
            offset,
            sent,
            enqueued_at: polled_at,
        };
        let (reason, detail) = match decoded {
            Err(error) => (error.reason().as_str(), error.to_string()),
            Ok(Record::Event(event)) if event.timestamp > now.plus(settings.live.max_future_skew) => (
                FUTURE_TIMESTAMP,
                format!(
                    "timestamp {} is more than time.max_future_skew ahead of the wall clock {now}",
                    event.timestamp
                ),
            ),
            Ok(record) => {
                if let (Some(shadow), Some(engine)) = (&mut self.shadow, &mut state.shadow) {
                    let send = replay != Replay::Silent;
                    shadow.apply(
                        engine,
                        &record,
                        message.payload(),
                        fallback,
                        send,
                        tag(Produced::Shadow),
                    );
                }
                self.outputs.clear();
                match &record {
                    Record::Event(event) => {
                        let verdict = state.engine.on_event(event, &mut self.outputs);
                        self.instruments.consumed(consumed(verdict));
                        if verdict == Verdict::Applied {
                            let delay = now.as_millis().saturating_sub(event.timestamp.as_millis()).max(0);
                            self.instruments.event_delay.observe(delay as f64 / 1e3);
                        }
                        if verdict == Verdict::Late {
                            let detail = state.engine.why_late(event);
                            let tag = tag(Produced::DeadLetter);
                            return self.reject(message, key, replay, ("late", true), &detail, tag);
                        }
                    }
                    Record::Erase(erase) => {
                        self.instruments.consumed(Consumed::Erase);
                        state.engine.erase(erase, &mut self.outputs);
                    }
                }
                if replay == Replay::Silent {
                    state.ledger.processed(offset, 0);
                    return;
                }
                for output in &self.outputs {
                    if let Err(error) =
                        self.sink
                            .send_output(&state.engine, output, Some(&record), tag(produced(output)))
                    {
                        self.fatal.get_or_insert(error);
                    }
                }
                self.totals.outputs_sent += self.outputs.len() as u64;
                state.ledger.processed(offset, self.outputs.len() as u32);
                return;
            }
        };
        self.instruments.consumed(Consumed::Invalid);
        let tag = tag(Produced::DeadLetter);
        self.reject(message, key, replay, (reason, false), &detail, tag);
    }

    /// An invalid or late message (`(reason, late)`): logged and counted, and
    /// dead-lettered unless it is being replayed silently.
    fn reject(
        &mut self,
        message: &BorrowedMessage<'_>,
        key: PartitionKey,
        replay: Replay,
        (reason, late): (&'static str, bool),
        detail: &str,
        tag: DeliveryTag,
    ) {
        let state = self.partitions.get_mut(&key).expect("checked by the caller");
        let offset = message.offset();
        Rejected {
            reason,
            late,
            silent: replay == Replay::Silent,
            detail,
            topic: message.topic(),
            partition: message.partition(),
            offset,
        }
        .emit(&self.control.metrics, &mut self.invalid_warnings);
        if replay == Replay::Silent {
            state.ledger.processed(offset, 0);
            return;
        }
        let sent = match self.sink.send_dead_letter(message, reason, detail, tag) {
            Ok(sent) => u32::from(sent),
            Err(error) => {
                self.fatal.get_or_insert(error);
                1
            }
        };
        state.ledger.processed(offset, sent);
    }

    /// A partition reached its end. librdkafka names only the partition number, so
    /// with several input topics it is attributed only when one assigned topic has that
    /// number (docs/semantics.md: the wall clock and several input topics).
    pub(super) fn on_partition_end(&mut self, partition: i32, now: EventTime) {
        let mut matching = self
            .partitions
            .iter_mut()
            .filter(|(key, _)| key.partition == partition);
        let (Some((key, state)), None) = (matching.next(), matching.next()) else {
            return;
        };
        if state.ledger.reached_end(now) {
            info!(
                topic = key.topic_in(&self.settings.input.topics),
                partition, "partition caught up; the wall clock now drives its inactivity"
            );
        }
        self.update_readiness();
    }
}
