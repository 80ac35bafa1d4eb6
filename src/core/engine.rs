//! The classification engine: events and time in, stage transitions and inactivity out.
//!
//! Pure and deterministic: no I/O, no clock, no dependence on hash order. The caller
//! feeds decoded events with [`Engine::on_event`] and moves time forward with
//! [`Engine::advance_to`]; both append [`Output`]s to a caller-owned buffer, which the
//! shell renders as CloudEvents (`crate::output`). The rules it applies are written
//! down in `docs/semantics.md`; the tests below and in `tests/` pin them.
//!
//! Inactivity is a deadline index, not a timer per customer: each armed customer has a
//! live `(key, customer)` entry in a `DeadlineIndex` (time buckets, each sorted when
//! the clock reaches it), and firing pops entries in `(key, customer)` order while they
//! are due. An entry's key may be *earlier* than the customer's true deadline: new
//! activity only pushes a deadline later, so the common event leaves the index alone,
//! and an early entry that comes up is moved to the true deadline before anything
//! fires. An entry replaced by an earlier one stays in the index and is skipped when it
//! comes up (its key is no longer the customer's `indexed`). Since every live key is at
//! most its customer's true deadline, the first live entry, once verified, is the
//! global minimum: thresholds fire in exact `(deadline, first-seen order)`, a function
//! of the input alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use super::capture::{Capture, Live};
use super::customers::{CustomerRef, CustomerTable, Interned};
use super::dedup::DedupWindow;
use super::event::Event;
use super::image::{CustomerImage, EngineImage, Migration, RestoreError};
use super::model::{Model, RuleId, StageId, ThresholdId};
use super::time::{EventTime, Span};

/// Engine parameters that are not part of the stage model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// How far behind the newest event time an event may be and still be applied.
    pub allowed_lateness: Span,
    /// How long (in event time) a `messageId` is remembered per customer.
    pub dedup_window: Span,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            allowed_lateness: Span::from_millis(5 * 60 * 1_000),
            dedup_window: Span::from_millis(24 * 3_600 * 1_000),
        }
    }
}

/// What the engine did with one valid event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// An activity event, applied to its customer.
    Applied,
    /// A valid event of a non-activity type: it only moved the watermark.
    Ignored,
    /// Its customer already sent this `messageId` within the dedup window: dropped.
    Duplicate,
    /// Older than the watermark (newest event time - allowed lateness): dropped.
    Late,
}

/// Why a customer changed stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The customer's first activity event, which no rule moved past the initial stage.
    Entry,
    /// A rule matched the triggering event.
    Rule(RuleId),
    /// An inactivity threshold with `move_to` fired.
    Inactivity(ThresholdId),
}

/// One output of the engine. `Entry` and `Rule` transitions were triggered by the event
/// passed to the `on_event` call that produced them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    StageChanged {
        customer: CustomerRef,
        /// `None` for a customer's first transition.
        from: Option<StageId>,
        to: StageId,
        cause: Cause,
        /// The triggering event's time, or the inactivity detection time.
        at: EventTime,
        /// How long (event time, whole seconds) the customer had been in `from`;
        /// `None` for a first transition.
        time_in_from: Option<Span>,
    },
    Inactive {
        customer: CustomerRef,
        threshold: ThresholdId,
        /// The stage held during the gap.
        stage: StageId,
        last_activity: EventTime,
        detected_at: EventTime,
    },
}

/// No threshold is pending for the customer.
const UNARMED: u8 = u8::MAX;
/// The customer has no entry in the deadline index.
const NOT_INDEXED: EventTime = EventTime::MIN;

#[derive(Clone, Copy, Debug)]
pub(super) struct CustomerState {
    /// The newest activity time seen for the customer.
    last_activity: EventTime,
    /// The key of the customer's entry in the deadline index, or [`NOT_INDEXED`];
    /// never later than the true deadline while the customer is armed.
    indexed: EventTime,
    stage: StageId,
    /// The next threshold of the ladder to fire, or [`UNARMED`].
    armed: u8,
    /// Ladder position in the current gap: thresholds before it have fired. Reset only
    /// by newer activity, so an older event arriving after a firing (possible once an
    /// explicit clock runs ahead of the watermark) never fires the same gap twice.
    ladder: u8,
    /// When the customer entered `stage`, as [`StageEntered`]: it fits in the padding
    /// after the bytes above, so reporting time in stage costs no memory.
    stage_entered: StageEntered,
}

impl CustomerState {
    /// The state as an image holds it.
    pub(super) fn image(&self) -> CustomerImage {
        CustomerImage {
            last_activity: self.last_activity,
            stage: self.stage,
            armed: (self.armed != UNARMED).then_some(ThresholdId(self.armed)),
            ladder: self.ladder,
            stage_entered: self.stage_entered.0,
        }
    }
}

/// An instant at whole-second resolution, in seconds since the Unix epoch clamped to
/// `u32` (1970 to 2106): precise enough for how long a customer stays in a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StageEntered(u32);

impl StageEntered {
    fn at(time: EventTime) -> Self {
        let seconds = time.as_millis().div_euclid(1_000).clamp(0, i64::from(u32::MAX));
        StageEntered(seconds as u32)
    }

    fn time(self) -> EventTime {
        EventTime::from_millis(i64::from(self.0) * 1_000)
    }

    /// How long the stage was held when left at `left_at` (never negative: an event
    /// older than the entry can move a customer on).
    fn held_until(self, left_at: EventTime) -> Span {
        Span::from_millis((left_at.as_millis() - self.time().as_millis()).max(0))
    }
}

#[derive(Clone, Debug)]
pub struct Engine {
    model: Arc<Model>,
    settings: EngineSettings,
    customers: CustomerTable,
    states: Vec<CustomerState>,
    /// `model.counter_count()` occurrence counters per customer, by ref.
    counters: Vec<u32>,
    deadlines: DeadlineIndex,
    armed_customers: usize,
    dedup: DedupWindow,
    newest_event: EventTime,
    /// The firing clock: the watermark, or further when time was advanced explicitly.
    clock: EventTime,
    population: Vec<u64>,
    /// An image being copied out between events ([`Engine::begin_image`]).
    capture: Option<Capture>,
}

impl Engine {
    pub fn new(model: Arc<Model>, settings: EngineSettings) -> Self {
        let stages = model.stage_count();
        Engine {
            model,
            settings,
            customers: CustomerTable::default(),
            states: Vec::new(),
            counters: Vec::new(),
            deadlines: DeadlineIndex::default(),
            armed_customers: 0,
            dedup: DedupWindow::new(settings.dedup_window),
            newest_event: EventTime::MIN,
            clock: EventTime::MIN,
            population: vec![0; stages],
            capture: None,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Newest event time seen minus the allowed lateness: events older than this are late.
    pub fn watermark(&self) -> EventTime {
        self.newest_event.minus(self.settings.allowed_lateness)
    }

    /// The newest event time seen, if any event was.
    pub fn newest_event(&self) -> Option<EventTime> {
        (self.newest_event != EventTime::MIN).then_some(self.newest_event)
    }

    /// Thresholds with a deadline at or before this instant have fired.
    pub fn clock(&self) -> EventTime {
        self.clock
    }

    pub fn customer_id(&self, customer: CustomerRef) -> &str {
        self.customers.id(customer)
    }

    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }

    /// The current stage of a known customer.
    pub fn stage_of(&self, customer_id: &str) -> Option<StageId> {
        let customer = self.customers.get(customer_id)?;
        Some(self.states[customer.index()].stage)
    }

    /// How many customers are in each stage, in model order.
    pub fn population(&self) -> &[u64] {
        &self.population
    }

    /// How many customers have an inactivity threshold pending.
    pub fn armed_count(&self) -> usize {
        self.armed_customers
    }

    /// Copies the whole state out as plain data, at once: for a snapshot taken when
    /// nothing waits (revoke, shutdown) and for tests. The live service copies it a
    /// block at a time instead ([`Engine::begin_image`]).
    pub fn image(&self) -> EngineImage {
        EngineImage {
            shape: self.model.shape().clone(),
            newest_event: self.newest_event,
            clock: self.clock,
            dedup_next_sweep: self.dedup.next_sweep(),
            ids: self.customers.ids().clone(),
            customers: self.states.iter().map(CustomerState::image).collect(),
            counters: self.counters.clone(),
            dedup: self.dedup.entries().collect(),
        }
    }

    /// Starts copying the state, as it is now, into `image` (whose buffers are reused):
    /// [`Engine::continue_image`] copies it a block of customers at a time between
    /// events, and a block about to change is copied first, so the finished image is
    /// exactly the state now, while no single step stops processing for longer than a
    /// few blocks' copy. A capture already running
    /// is dropped.
    pub fn begin_image(&mut self, mut image: Box<EngineImage>) {
        image.shape.clone_from(self.model.shape());
        image.newest_event = self.newest_event;
        image.clock = self.clock;
        image.dedup_next_sweep = self.dedup.next_sweep();
        image.ids.clone_from(self.customers.ids());
        self.capture = Some(Capture::begin(
            image,
            self.customers.len(),
            self.model.counter_count(),
            self.dedup.len(),
        ));
    }

    /// Copies up to `blocks` more blocks of the image [`Engine::begin_image`] started,
    /// and returns it once complete. `None` also when no capture runs.
    pub fn continue_image(&mut self, blocks: usize) -> Option<Box<EngineImage>> {
        let (capture, live) = self.capture_and_live();
        let capture = capture?;
        for _ in 0..blocks {
            if capture.step(&live) {
                return self.capture.take().map(Capture::finish);
            }
        }
        None
    }

    /// Keeps a running capture exact: copies the customer's block before it changes.
    fn before_write(&mut self, customer: CustomerRef) {
        if let (Some(capture), live) = self.capture_and_live() {
            capture.before_write(customer.block(), &live);
        }
    }

    /// The running capture, if any, and the state it copies from.
    fn capture_and_live(&mut self) -> (Option<&mut Capture>, Live<'_>) {
        let live = Live {
            states: &self.states,
            counters: &self.counters,
            dedup: &self.dedup,
        };
        (self.capture.as_mut(), live)
    }

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
            } = RestoredStates::of(&model, migration.as_ref(), &saved_customers)?;
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
                capture: None,
            })
        })
    }

    /// Applies one valid event, appending what it caused to `out`.
    pub fn on_event(&mut self, event: &Event<'_>, out: &mut Vec<Output>) -> Verdict {
        let at = event.timestamp;
        if !self.model.is_activity(event.kind) {
            if at < self.watermark() {
                return Verdict::Late;
            }
            self.observe(at, out);
            return Verdict::Ignored;
        }
        let known = self.customers.get(&event.customer);
        let digest = event.message_id.as_deref().map(DedupWindow::digest);
        // Hashed once for a known customer: the same key records the event below.
        let known_key = known
            .zip(digest)
            .map(|(customer, digest)| self.dedup.key(customer, digest));
        if let Some(key) = known_key {
            if self.dedup.is_duplicate(key, at) {
                return Verdict::Duplicate;
            }
        }
        if at < self.watermark() {
            return Verdict::Late;
        }
        self.observe(at, out);
        let customer = match known {
            Some(customer) => {
                self.before_write(customer);
                self.fire_gap(customer, at, out);
                self.classify(customer, Interned::Existing, event, out);
                customer
            }
            None => {
                let (customer, _) = self.customers.intern(&event.customer);
                self.states.push(CustomerState {
                    last_activity: at,
                    indexed: NOT_INDEXED,
                    stage: self.model.initial_stage(),
                    armed: UNARMED,
                    ladder: 0,
                    stage_entered: StageEntered::at(at),
                });
                let counters = self.model.counter_count();
                self.counters.resize(self.counters.len() + counters, 0);
                self.classify(customer, Interned::New, event, out);
                customer
            }
        };
        let state = &mut self.states[customer.index()];
        if at > state.last_activity {
            state.last_activity = at;
            state.ladder = 0;
        }
        // Re-evaluated even for older events: the stage may have changed.
        let ladder = state.ladder;
        self.arm(customer, ladder);
        if let Some(digest) = digest {
            let key = known_key.unwrap_or_else(|| self.dedup.key(customer, digest));
            self.dedup.record(key, at);
            // A sweep changes every block at once: it waits for a running capture.
            if self.capture.is_none() {
                self.dedup.sweep(self.watermark());
            }
        }
        Verdict::Applied
    }

    /// Moves the firing clock to `now` (if it is ahead) and fires every threshold due.
    pub fn advance_to(&mut self, now: EventTime, out: &mut Vec<Output>) {
        if now > self.clock {
            self.clock = now;
            self.fire_due(out);
        }
    }

    /// Takes an on-time event's time into the watermark and fires what became due.
    fn observe(&mut self, at: EventTime, out: &mut Vec<Output>) {
        if at > self.newest_event {
            self.newest_event = at;
            self.advance_to(self.watermark(), out);
        }
    }

    fn fire_due(&mut self, out: &mut Vec<Output>) {
        while let Some((key, customer)) = self.deadlines.pop_due(self.clock) {
            if self.states[customer.index()].indexed != key {
                // Replaced by an earlier entry since (`arm`): that one was the live one.
                continue;
            }
            self.before_write(customer);
            self.states[customer.index()].indexed = NOT_INDEXED;
            match self.deadline(customer) {
                // Disarmed since it was indexed: the entry was stale.
                None => {}
                Some(due) if due > key => self.index(customer, due),
                Some(due) => {
                    debug_assert_eq!(due, key, "an index key is never later than its deadline");
                    self.fire(customer, out);
                    if let Some(next) = self.deadline(customer) {
                        self.index(customer, next);
                    }
                }
            }
        }
    }

    /// Fires the thresholds that the gap before an event at `at` reached but the
    /// clock has not yet: a gap seen only when the next event arrives still counts.
    fn fire_gap(&mut self, customer: CustomerRef, at: EventTime, out: &mut Vec<Output>) {
        while let Some(deadline) = self.deadline(customer) {
            if deadline > at {
                break;
            }
            // The index entry stays; it is now early, which `fire_due` tolerates.
            self.fire(customer, out);
        }
    }

    /// Fires the customer's armed threshold and arms the next one of the ladder.
    fn fire(&mut self, customer: CustomerRef, out: &mut Vec<Output>) {
        let state = &mut self.states[customer.index()];
        let threshold_id = ThresholdId(state.armed);
        let threshold = self.model.threshold(threshold_id);
        let detected_at = state.last_activity.plus(threshold.after);
        out.push(Output::Inactive {
            customer,
            threshold: threshold_id,
            stage: state.stage,
            last_activity: state.last_activity,
            detected_at,
        });
        if let Some(to) = threshold.move_to.filter(|&to| to != state.stage) {
            out.push(Output::StageChanged {
                customer,
                from: Some(state.stage),
                to,
                cause: Cause::Inactivity(threshold_id),
                at: detected_at,
                time_in_from: Some(state.stage_entered.held_until(detected_at)),
            });
            self.population[usize::from(state.stage.0)] -= 1;
            self.population[usize::from(to.0)] += 1;
            state.stage = to;
            state.stage_entered = StageEntered::at(detected_at);
        }
        state.ladder = threshold_id.0 + 1;
        let next = next_threshold(&self.model, state.ladder, state.stage);
        self.set_armed(customer, next);
    }

    fn deadline(&self, customer: CustomerRef) -> Option<EventTime> {
        let state = &self.states[customer.index()];
        (state.armed != UNARMED).then(|| {
            let threshold = self.model.threshold(ThresholdId(state.armed));
            state.last_activity.plus(threshold.after)
        })
    }

    /// Arms the first threshold at or after ladder position `from` that applies, and
    /// keeps the index entry at or before the new deadline.
    fn arm(&mut self, customer: CustomerRef, from: u8) {
        let state = &self.states[customer.index()];
        self.set_armed(customer, next_threshold(&self.model, from, state.stage));
        let Some(due) = self.deadline(customer) else {
            return;
        };
        let indexed = self.states[customer.index()].indexed;
        if indexed == NOT_INDEXED {
            self.index(customer, due);
        } else if due < indexed {
            // The entry at `indexed` stays, and is skipped when it comes up.
            self.index(customer, due);
        }
    }

    fn index(&mut self, customer: CustomerRef, key: EventTime) {
        self.deadlines.insert(key, customer);
        self.states[customer.index()].indexed = key;
    }

    fn set_armed(&mut self, customer: CustomerRef, armed: u8) {
        let state = &mut self.states[customer.index()];
        match (state.armed == UNARMED, armed == UNARMED) {
            (true, false) => self.armed_customers += 1,
            (false, true) => self.armed_customers -= 1,
            _ => {}
        }
        state.armed = armed;
    }

    /// Evaluates the rules against `event` and records the transition, if any.
    fn classify(&mut self, customer: CustomerRef, seen: Interned, event: &Event<'_>, out: &mut Vec<Output>) {
        let model = &*self.model;
        let state = &mut self.states[customer.index()];
        let current = state.stage;
        let counters_per_customer = model.counter_count();
        let counters = &mut self.counters
            [customer.index() * counters_per_customer..(customer.index() + 1) * counters_per_customer];
        let mut best: Option<(StageId, RuleId)> = None;
        for &rule_id in model.candidate_rules(event.kind, event.name.as_deref()) {
            let rule = model.rule(rule_id);
            if !rule.predicates.iter().all(|p| p.holds(event.property(p.key))) {
                continue;
            }
            if let Some((occurrence, counter)) = rule.occurrence {
                counters[counter] = counters[counter].saturating_add(1);
                if !occurrence.admits(counters[counter]) {
                    continue;
                }
            }
            if rule.from.is_some_and(|from| !from.contains(current)) {
                continue;
            }
            if best.is_none_or(|(stage, _)| rule.to > stage) {
                best = Some((rule.to, rule_id));
            }
        }
        let is_move = |(target, rule_id): (StageId, RuleId)| {
            target > current || (target < current && model.rule(rule_id).allow_backward)
        };
        let (from, to, cause) = match (seen, best) {
            (Interned::New, Some(best)) if best.0 == current || is_move(best) => {
                (None, best.0, Cause::Rule(best.1))
            }
            (Interned::New, _) => (None, current, Cause::Entry),
            (Interned::Existing, Some(best)) if is_move(best) => (Some(current), best.0, Cause::Rule(best.1)),
            (Interned::Existing, _) => return,
        };
        if from.is_some() {
            self.population[usize::from(current.0)] -= 1;
        }
        self.population[usize::from(to.0)] += 1;
        let time_in_from = from.map(|_| state.stage_entered.held_until(event.timestamp));
        state.stage = to;
        state.stage_entered = StageEntered::at(event.timestamp);
        out.push(Output::StageChanged {
            customer,
            from,
            to,
            cause,
            at: event.timestamp,
            time_in_from,
        });
    }
}

/// The deadline index: an entry `(key, customer)` per armed customer, popped in
/// `(key, customer)` order.
///
/// Entries are kept in buckets of `1 << BUCKET_SHIFT` ms of key, each an
/// unsorted `Vec` of 8-byte entries, and a bucket is sorted only when the clock reaches
/// it: an insertion is a push, a firing a pop from the end of a sorted run, where a
/// B-tree of every armed customer walked several cache-missing nodes for each and
/// held ~24 bytes per entry. Entries inserted into the bucket being drained, or
/// before it, go to a small heap beside the sorted run. Removal is lazy: a replaced
/// entry stays until it comes up, and the engine skips entries that no longer match
/// the customer's `indexed` key.
#[derive(Clone, Debug)]
struct DeadlineIndex {
    /// Buckets after `drained`, by bucket number (`key >> BUCKET_SHIFT`): each entry
    /// is the key's offset in its bucket and the customer.
    later: BTreeMap<i64, Vec<(u32, CustomerRef)>>,
    /// Where the first bucket of `later` starts ([`EventTime::MAX`] when none).
    later_start: EventTime,
    /// The bucket whose entries (and any before it) are in `sorted` and `inserted`.
    drained: i64,
    /// Entries of the drained buckets, sorted descending: the next due is last.
    sorted: Vec<(EventTime, CustomerRef)>,
    /// Entries inserted at or before the drained bucket since it was sorted.
    inserted: BinaryHeap<Reverse<(EventTime, CustomerRef)>>,
}

/// Deadline-index buckets span `1 << BUCKET_SHIFT` ms of key (about 70 minutes).
const BUCKET_SHIFT: u32 = 22;

impl Default for DeadlineIndex {
    fn default() -> Self {
        DeadlineIndex {
            later: BTreeMap::new(),
            later_start: EventTime::MAX,
            drained: i64::MIN,
            sorted: Vec::new(),
            inserted: BinaryHeap::new(),
        }
    }
}

impl DeadlineIndex {
    fn from_entries(entries: Vec<(EventTime, CustomerRef)>) -> Self {
        let mut sizes: BTreeMap<i64, usize> = BTreeMap::new();
        for &(key, _) in &entries {
            *sizes.entry(bucket_of(key)).or_default() += 1;
        }
        let mut index = DeadlineIndex {
            later: sizes
                .into_iter()
                .map(|(bucket, len)| (bucket, Vec::with_capacity(len)))
                .collect(),
            ..DeadlineIndex::default()
        };
        for (key, customer) in entries {
            index.insert(key, customer);
        }
        index
    }

    fn insert(&mut self, key: EventTime, customer: CustomerRef) {
        let bucket = bucket_of(key);
        if bucket <= self.drained {
            self.inserted.push(Reverse((key, customer)));
            return;
        }
        let start = bucket_start(bucket);
        let offset = (key.as_millis() - start.as_millis()) as u32;
        self.later.entry(bucket).or_default().push((offset, customer));
        self.later_start = self.later_start.min(start);
    }

    /// Removes and returns the first entry if its key is at or before `clock`.
    fn pop_due(&mut self, clock: EventTime) -> Option<(EventTime, CustomerRef)> {
        loop {
            let from_sorted = self.sorted.last().copied();
            let from_inserted = self.inserted.peek().map(|&Reverse(entry)| entry);
            let first = match (from_sorted, from_inserted) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(first) = first {
                if first.0 > clock {
                    return None;
                }
                if Some(first) == from_sorted {
                    self.sorted.pop();
                } else {
                    self.inserted.pop();
                }
                return Some(first);
            }
            // Both empty: the next bucket, once the clock reaches where it starts.
            if self.later_start > clock {
                return None;
            }
            let (bucket, entries) = self.later.pop_first().expect("later_start names a bucket");
            let start = bucket_start(bucket).as_millis();
            self.sorted.clear();
            self.sorted.extend(
                entries
                    .into_iter()
                    .map(|(offset, customer)| (EventTime::from_millis(start + i64::from(offset)), customer)),
            );
            self.sorted.sort_unstable_by(|a, b| b.cmp(a));
            self.drained = bucket;
            self.later_start = self
                .later
                .first_key_value()
                .map_or(EventTime::MAX, |(&b, _)| bucket_start(b));
        }
    }
}

fn bucket_of(key: EventTime) -> i64 {
    key.as_millis() >> BUCKET_SHIFT
}

fn bucket_start(bucket: i64) -> EventTime {
    EventTime::from_millis(bucket << BUCKET_SHIFT)
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
                    due.push((customer.last_activity.plus(after), CustomerRef(i as u32)));
                    t
                }
                None => UNARMED,
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
                stage_entered: StageEntered(customer.stage_entered),
            });
        }
        for &(key, customer) in &due {
            states[customer.index()].indexed = key;
        }
        Ok(RestoredStates {
            states,
            population,
            armed_customers,
            due,
        })
    }
}

fn next_threshold(model: &Model, from: u8, stage: StageId) -> u8 {
    model
        .thresholds()
        .iter()
        .enumerate()
        .skip(usize::from(from))
        .find(|(_, threshold)| threshold.applies_to(stage))
        .map_or(UNARMED, |(i, _)| i as u8)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
