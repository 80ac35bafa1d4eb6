//! Partitions coming and going: the owner's answer to a rebalance, and its shutdown.
//!
//! On assign, each partition's state is restored from its newest valid snapshot and
//! its start offset set before librdkafka applies the assignment. On revoke, what the
//! partitions caused is delivered, their final snapshots written and offsets committed
//! before their state is dropped and librdkafka told. Shutdown does the same for every
//! partition under the grace deadline.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::events::{commit_summary, Rebalanced};
use super::hooks::{apply_rebalance, ConsumerHooks, Rebalance};
use super::instruments::PartitionLabels;
use super::ledger::Ledger;
use super::owner::{send_unprompted, Owner, PartitionState};
use super::snapshots::Progress;
use super::{PartitionKey, PipelineError};
use crate::core::Engine;
use crate::snapshot;
use crate::telemetry::labels::RebalanceKind;

impl Owner {
    /// Acts on a rebalance, then tells librdkafka it was handled.
    pub(super) fn rebalance(&mut self, consumer: &BaseConsumer<ConsumerHooks>, rebalance: Rebalance) {
        match &rebalance {
            Rebalance::Assign(list) => self.assign(consumer, list),
            Rebalance::Revoke(list) => self.revoke(consumer, list),
            Rebalance::Error(error) => {
                warn!(%error, "rebalance error; giving up every partition");
                if let Ok(assignment) = consumer.assignment() {
                    self.revoke(consumer, &assignment);
                }
            }
        }
        apply_rebalance(consumer, &rebalance);
    }

    /// Restores each newly assigned partition from its newest valid snapshot and sets
    /// where its consumption starts: at the snapshot's offset, or at the earliest
    /// retained offset when there is none. Outputs of messages below the committed
    /// offset were delivered before; they are replayed into the state but not sent again.
    fn assign(&mut self, consumer: &BaseConsumer<ConsumerHooks>, list: &TopicPartitionList) {
        Rebalanced {
            kind: RebalanceKind::Assign,
            partitions: list.count(),
            lost: false,
        }
        .emit(&self.control.metrics);
        let committed = match consumer.committed_offsets(list.clone(), Duration::from_secs(30)) {
            Ok(committed) => committed,
            Err(error) => {
                warn!(%error, "cannot read committed offsets; nothing is suppressed while rebuilding");
                TopicPartitionList::new()
            }
        };
        for mut element in list.elements() {
            let Some(key) = self.key_of(element.topic(), element.partition()) else {
                continue;
            };
            let settings = &self.settings;
            let restored = match &self.store {
                Some(store) => {
                    match snapshot::restore(
                        &**store,
                        element.topic(),
                        key.partition,
                        &settings.model,
                        settings.engine,
                    ) {
                        Ok(restored) => restored,
                        Err(error) => {
                            error!(%error, "cannot restore partition state; stopping");
                            self.fatal.get_or_insert(error.into());
                            return;
                        }
                    }
                }
                None => snapshot::Restored {
                    engine: Engine::new(settings.model.clone(), settings.engine),
                    offset: None,
                    corrupt: 0,
                    outputs: Vec::new(),
                },
            };
            self.control
                .metrics
                .snapshots_corrupt
                .inc_by(u64::from(restored.corrupt));
            let start = restored.offset.map_or(Offset::Beginning, Offset::Offset);
            if let Err(error) = element.set_offset(start) {
                warn!(%error, "cannot set the start offset");
            }
            let committed = committed
                .find_partition(element.topic(), key.partition)
                .and_then(|c| c.offset().to_raw());
            let ledger = Ledger::assigned(self.guarantee, restored.offset, committed);
            info!(
                topic = element.topic(),
                partition = key.partition,
                start = ?start,
                customers = restored.engine.customer_count(),
                replay_without_output_below = ?ledger.suppress_below(),
                "partition assigned"
            );
            self.next_epoch += 1;
            let shadow = self.shadow.as_mut().map(|shadow| {
                let partition = (element.topic(), key);
                shadow.restore(self.store.as_deref(), partition, restored.offset, self.next_epoch)
            });
            let mut state = PartitionState {
                engine: restored.engine,
                labels: PartitionLabels::new(element.topic(), key.partition),
                ledger,
                lag: None,
                epoch: self.next_epoch,
                snapshot: Progress::new(),
                shadow,
            };
            if !restored.outputs.is_empty() {
                info!(
                    topic = element.topic(),
                    partition = key.partition,
                    outputs = restored.outputs.len(),
                    "sending what carrying the snapshot into the configured model caused"
                );
                // Until the next snapshot, a restart migrates (and sends) them again.
                state.snapshot.dirty = true;
                if let Some(transaction) = &mut self.transaction {
                    transaction.work = true;
                }
                if let Err(error) = send_unprompted(
                    &mut self.sink,
                    &mut self.totals,
                    key,
                    &mut state,
                    &restored.outputs,
                ) {
                    self.fatal.get_or_insert(error);
                }
            }
            self.partitions.insert(key, state);
        }
        self.update_readiness();
    }

    /// Delivers and commits what the revoked partitions caused, then drops their state.
    fn revoke(&mut self, consumer: &BaseConsumer<ConsumerHooks>, list: &TopicPartitionList) {
        let revoked: Vec<PartitionKey> = list
            .elements()
            .iter()
            .filter_map(|e| self.key_of(e.topic(), e.partition()))
            .filter(|key| self.partitions.contains_key(key))
            .collect();
        if revoked.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        Rebalanced {
            kind: RebalanceKind::Revoke,
            partitions: revoked.len(),
            lost,
        }
        .emit(&self.control.metrics);
        match self.transaction {
            Some(_) => self.commit_transaction(consumer),
            None => {
                self.flush();
            }
        }
        for &key in &revoked {
            self.snapshot_now(key);
        }
        let mut commit = TopicPartitionList::new();
        for key in &revoked {
            if let Some(offset) = self.partitions[key].ledger.commit_offset() {
                let _ =
                    commit.add_partition_offset(self.topic_name(*key), key.partition, Offset::Offset(offset));
            }
        }
        if self.transaction.is_some() {
            // Committed with the transaction above.
        } else if lost {
            warn!("assignment lost (session timed out): not committing the revoked partitions");
        } else if commit.count() > 0 {
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => info!(offsets = ?commit_summary(&commit), "committed revoked partitions"),
                Err(error) => warn!(%error, "commit on revoke failed; their events will be read again"),
            }
        }
        for key in revoked {
            let state = self.partitions.remove(&key).expect("collected from the map");
            let [topic, partition] = state.labels.values();
            self.control.metrics.forget_partition(topic, partition);
            info!(
                topic = self.topic_name(key),
                partition = key.partition,
                customers = state.engine.customer_count(),
                undelivered = state.ledger.in_flight(),
                "partition revoked; its state is dropped"
            );
        }
        self.update_readiness();
    }

    /// Shutdown: deliver in-flight outputs (until the grace period ends), write final
    /// snapshots, store and commit their offsets.
    ///
    /// # Errors
    /// The first fatal error of the run, else outputs still undelivered at the deadline.
    pub(super) fn finish(
        &mut self,
        consumer: &BaseConsumer<ConsumerHooks>,
        grace: Duration,
    ) -> Result<(), PipelineError> {
        self.deadline = Some(Instant::now() + grace);
        if self.transaction.is_some() {
            self.commit_transaction(consumer);
        }
        let undelivered = self.flush();
        let assigned: Vec<PartitionKey> = self.partitions.keys().copied().collect();
        for key in assigned {
            self.snapshot_now(key);
        }
        if let Some(thread) = &mut self.snapshot_thread {
            thread.stop();
        }
        self.store_offsets(consumer);
        if undelivered > 0 {
            self.sink
                .producer
                .purge(PurgeConfig::default().queue().inflight());
        }
        let committed = match self.transaction {
            Some(_) => Ok(()),
            None => consumer.commit_consumer_state(CommitMode::Sync),
        };
        match committed {
            Ok(()) => info!("offsets committed"),
            // NoOffset: nothing was stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!(%error, "final commit failed; uncommitted events will be read again"),
        }
        // The commit's own callback report, counted like every other.
        self.handle_client_events(consumer);
        self.publish_totals();
        info!(
            consumed = self.totals.consumed,
            delivered = self.totals.delivered,
            dead_lettered = self.totals.dead_lettered,
            undelivered,
            "stopped"
        );
        if let Some(fatal) = self.fatal.take() {
            return Err(fatal);
        }
        if undelivered > 0 {
            return Err(PipelineError::Undelivered { undelivered });
        }
        Ok(())
    }
}
