//! Rebuilding an engine from an image ([`Engine::restore`]), carrying it into the
//! configured model when it was made under another one (policy: `super::super::image`).

use std::sync::Arc;

use super::*;
use crate::core::image::{Migration, RestoreError};

impl Engine {
    /// Rebuilds an engine from an image, carrying it into `model` when it was made
    /// under another one (policy: [`super::image`]). The restored engine behaves
    /// exactly as the imaged one would have.
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
    ) -> Result<Self, RestoreError> {
        let inconsistent = |what: String| RestoreError::Inconsistent(what);
        let migration = (image.shape.fingerprint != model.shape().fingerprint)
            .then(|| Migration::plan(&image.shape, model.shape()))
            .transpose()?;
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
            } = RestoredStates::of(&model, &settings, migration.as_ref(), &saved_customers)?;
            // Let go of each image column as soon as it is converted: restoring 10M
            // customers peaked at 1.4 GB with them all held to the end.
            drop(saved_customers);
            let deadlines = DeadlineIndex::from_entries(due);
            let counters = match &migration {
                Some(migration) => saved_counter_values
                    .chunks_exact(saved_counters.max(1))
                    .take(customer_count)
                    .flat_map(|saved| migration.counters.iter().map(|&from| saved[from]))
                    .collect(),
                None => saved_counter_values,
            };
            let customers = CustomerTable::from_ids(ids).map_err(inconsistent)?;
            let dedup = dedup.join().expect("rebuilding the dedup window panicked")?;
            Ok(Engine {
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
            })
        })
    }
}

/// The per-customer state of a restored engine, rebuilt from its image.
struct RestoredStates {
    states: Vec<CustomerState>,
    population: Vec<u64>,
    armed_customers: usize,
    /// Each armed customer's deadline-index entry.
    due: Vec<(EventTime, CustomerRef)>,
}

impl RestoredStates {
    /// Validates every saved customer against `model` (through `migration` when the
    /// image was made under another model) and rebuilds its state.
    fn of(
        model: &Model,
        settings: &EngineSettings,
        migration: Option<&Migration>,
        saved: &[CustomerImage],
    ) -> Result<Self, RestoreError> {
        let inconsistent = |what: String| RestoreError::Inconsistent(what);
        let thresholds = model.thresholds().len();
        let mut states = Vec::with_capacity(saved.len());
        let mut population = vec![0u64; model.stage_count()];
        let mut armed_customers = 0;
        let mut due = Vec::new();
        for (i, customer) in saved.iter().enumerate() {
            let stage = match migration {
                Some(migration) => migration.stages.get(usize::from(customer.stage.0)).copied(),
                None => Some(customer.stage).filter(|s| usize::from(s.0) < model.stage_count()),
            }
            .ok_or_else(|| inconsistent(format!("customer {i} is in unknown stage {}", customer.stage.0)))?;
            let armed = match customer.armed {
                Some(ThresholdId(t)) if usize::from(t) < thresholds => {
                    armed_customers += 1;
                    let after = model.threshold(ThresholdId(t)).after;
                    due.push((customer.last_activity.time().plus(after), CustomerRef(i as u32)));
                    t
                }
                // Expiry is armed once the ladder has nothing left for the stage.
                None => match settings.expire_after {
                    Some(after) => {
                        due.push((customer.last_activity.time().plus(after), CustomerRef(i as u32)));
                        EXPIRY
                    }
                    None => UNARMED,
                },
                Some(ThresholdId(t)) => {
                    return Err(inconsistent(format!("customer {i} armed unknown threshold {t}")))
                }
            };
            if usize::from(customer.ladder) > thresholds {
                return Err(inconsistent(format!("customer {i} is past the ladder's end")));
            }
            population[usize::from(stage.0)] += 1;
            states.push(CustomerState {
                last_activity: customer.last_activity,
                indexed: NOT_INDEXED,
                stage,
                armed,
                ladder: customer.ladder,
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
        })
    }
}
