//! Rebuilding an engine from an image ([`Engine::restore`]), carrying it into the
//! configured model when it was made under another one (policy: `super::super::image`).

use std::sync::Arc;

use super::*;
use crate::core::image::{Migration, RestoreError};

impl Engine {
    /// Rebuilds an engine from an image, carrying it into `model` when it was made
    /// under another one (policy: [`crate::core::image`]). The restored engine behaves
    /// exactly as the imaged one would have. A migration appends what it causes to
    /// `out`: a `model-migration` transition for each customer of a removed stage (at
    /// the watermark), and the new or changed inactivity thresholds already due before
    /// the customer's resumed ladder position.
    ///
    /// The de-duplication window, the biggest table, is rebuilt on a second thread from
    /// the start while this one rebuilds the rest: pure computation, same result either
    /// way.
    ///
    /// # Errors
    /// [`RestoreError::IncompatibleModel`] when the policy refuses the model change;
    /// [`RestoreError::Inconsistent`] when the image contradicts itself.
    pub fn restore(
        model: Arc<Model>,
        settings: EngineSettings,
        image: EngineImage,
        out: &mut Vec<Output>,
    ) -> Result<Self, RestoreError> {
        let inconsistent = |what: String| RestoreError::Inconsistent(what);
        let migration = (image.shape.fingerprint != model.shape().fingerprint)
            .then(|| Migration::plan(&image.shape, &model, &image.customers))
            .transpose()?;
        // Under the same fingerprint the indices must fit the model (counter signatures
        // may be in an earlier build's form, without rule names).
        let configured = model.shape();
        let fits = image.shape.stages == configured.stages
            && image.shape.thresholds.len() == configured.thresholds.len()
            && image.shape.counters.len() == configured.counters.len();
        if migration.is_none() && !fits {
            return Err(inconsistent(
                "the state's model shape contradicts its fingerprint".into(),
            ));
        }
        let EngineImage {
            shape: saved,
            newest_event,
            clock,
            dedup_next_sweep,
            ids,
            customers: saved_customers,
            counters: saved_counter_values,
            dedup: saved_dedup,
        } = image;
        let customer_count = saved_customers.len();
        if ids.len() != customer_count {
            return Err(inconsistent(format!(
                "{} customer ids for {customer_count} customers",
                ids.len()
            )));
        }
        let saved_counters = saved.counters.len();
        if saved_counter_values.len() != customer_count * saved_counters {
            return Err(inconsistent(format!(
                "{} occurrence counters for {customer_count} customers x {saved_counters}",
                saved_counter_values.len()
            )));
        }
        std::thread::scope(|scope| {
            let dedup = scope.spawn(|| {
                if let Some(entry) = saved_dedup.iter().find(|e| e.customer.index() >= customer_count) {
                    return Err(inconsistent(format!(
                        "a messageId of unknown customer {}",
                        entry.customer.0
                    )));
                }
                Ok(DedupWindow::from_entries(
                    settings.dedup_window,
                    saved_dedup.iter().copied(),
                    dedup_next_sweep,
                ))
            });
            let RestoredStates {
                states,
                population,
                armed_customers,
                due,
                pending,
            } = RestoredStates::of(
                &model,
                &settings,
                &saved,
                migration.as_ref(),
                &saved_customers,
                clock,
            )?;
            // Let go of each image column as soon as it is converted: restoring 10M
            // customers peaked at 1.4 GB with them all held to the end.
            drop(saved_customers);
            let deadlines = DeadlineIndex::from_entries(due);
            let counters = match &migration {
                Some(migration) if saved_counters == 0 => vec![0; customer_count * migration.counters.len()],
                Some(migration) => saved_counter_values
                    .chunks_exact(saved_counters)
                    .flat_map(|saved| {
                        migration
                            .counters
                            .iter()
                            .map(|&from| from.map_or(0, |f| saved[f]))
                    })
                    .collect(),
                None => saved_counter_values,
            };
            let customers = CustomerTable::from_ids(ids).map_err(inconsistent)?;
            let dedup = dedup.join().expect("rebuilding the dedup window panicked")?;
            let mut engine = Engine {
                model,
                settings,
                customers,
                states,
                counters,
                deadlines,
                armed_customers,
                dedup,
                newest_event,
                clock,
                population,
                vacant: 0,
                capture: None,
                saved_stages: match migration {
                    Some(_) => saved.stages,
                    None => Vec::new(),
                },
            };
            engine.finish_migration(pending, out);
            Ok(engine)
        })
    }

    /// Emits what a migration caused, customer by customer in ref order: the
    /// transition out of a removed stage, then the thresholds due now, and arms the
    /// ladder from the customer's resumed position.
    fn finish_migration(&mut self, pending: Vec<Pending>, out: &mut Vec<Output>) {
        let at = self.watermark();
        for Pending {
            customer,
            moved_from,
            due_now,
        } in pending
        {
            let state = &mut self.states[customer.index()];
            if let Some(from) = moved_from {
                out.push(Output::Migrated {
                    customer,
                    from,
                    to: state.stage,
                    at,
                    from_entered: state.stage_entered.time(),
                    first_seen: state.first_seen.known(),
                });
                state.stage_entered = Instant48::at(at);
            }
            let resume = state.ladder;
            for threshold in due_now {
                self.set_armed(customer, threshold.0);
                self.fire(customer, out);
            }
            self.states[customer.index()].ladder = resume;
            self.arm(customer, resume);
        }
    }
}

/// A restored customer whose migration emits something.
struct Pending {
    customer: CustomerRef,
    /// The removed stage (saved index) it held.
    moved_from: Option<StageId>,
    /// Thresholds to fire now, in ladder order.
    due_now: Vec<ThresholdId>,
}

/// The per-customer state of a restored engine, rebuilt from its image.
struct RestoredStates {
    states: Vec<CustomerState>,
    population: Vec<u64>,
    armed_customers: usize,
    /// Each armed customer's deadline-index entry.
    due: Vec<(EventTime, CustomerRef)>,
    /// Customers whose migration emits something.
    pending: Vec<Pending>,
}

impl RestoredStates {
    /// Validates every saved customer against `saved` and rebuilds its state under
    /// `model`, through `migration` when the image was made under another model.
    fn of(
        model: &Model,
        settings: &EngineSettings,
        saved: &crate::core::ModelShape,
        migration: Option<&Migration>,
        customers: &[CustomerImage],
        clock: EventTime,
    ) -> Result<Self, RestoreError> {
        let inconsistent = |what: String| RestoreError::Inconsistent(what);
        let saved_thresholds = saved.thresholds.len();
        let mut states = Vec::with_capacity(customers.len());
        let mut population = vec![0u64; model.stage_count()];
        let mut armed_customers = 0;
        let mut due = Vec::new();
        let mut pending = Vec::new();
        for (i, customer) in customers.iter().enumerate() {
            let saved_stage = usize::from(customer.stage.0);
            if saved_stage >= saved.stages.len() {
                return Err(inconsistent(format!(
                    "customer {i} is in unknown stage {saved_stage}"
                )));
            }
            if customer
                .armed
                .is_some_and(|ThresholdId(t)| usize::from(t) >= saved_thresholds)
            {
                return Err(inconsistent(format!("customer {i} armed an unknown threshold")));
            }
            if usize::from(customer.ladder) > saved_thresholds {
                return Err(inconsistent(format!("customer {i} is past the ladder's end")));
            }
            let (stage, ladder, armed) = match migration {
                None => {
                    // Expiry is armed once the ladder has nothing left for the stage.
                    let armed = match customer.armed {
                        Some(ThresholdId(t)) => t,
                        None if settings.expire_after.is_some() => EXPIRY,
                        None => UNARMED,
                    };
                    (customer.stage, customer.ladder, armed)
                }
                Some(migration) => {
                    let stage = migration.stages[saved_stage];
                    let (ladder, due_now) = match &migration.ladder {
                        Some(change) => change.carry(customer, stage, clock, model),
                        None => (customer.ladder, Vec::new()),
                    };
                    let moved_from = migration.moved[saved_stage].then_some(customer.stage);
                    if moved_from.is_some() || !due_now.is_empty() {
                        pending.push(Pending {
                            customer: CustomerRef(i as u32),
                            moved_from,
                            due_now,
                        });
                    }
                    (stage, ladder, next_armed(model, settings, ladder, stage))
                }
            };
            if let Some(after) = armed_wait(model, settings, armed) {
                due.push((customer.last_activity.time().plus(after), CustomerRef(i as u32)));
                armed_customers += usize::from(armed != EXPIRY);
            }
            population[usize::from(stage.0)] += 1;
            states.push(CustomerState {
                last_activity: customer.last_activity,
                indexed: NOT_INDEXED,
                stage,
                armed,
                ladder,
                stage_entered: customer.stage_entered,
                first_seen: customer.first_seen,
            });
        }
        for &(key, customer) in &due {
            states[customer.index()].indexed = Instant48::at(key);
        }
        Ok(RestoredStates {
            states,
            population,
            armed_customers,
            due,
            pending,
        })
    }
}
