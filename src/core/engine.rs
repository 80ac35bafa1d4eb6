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

use std::sync::Arc;

use super::capture::{Capture, Live};
use super::customers::{CustomerIds, CustomerRef, CustomerTable, Interned};
use super::deadlines::DeadlineIndex;
use super::dedup::DedupWindow;
use super::event::Event;
use super::image::{CustomerImage, EngineImage, VACANT};
use super::model::{Model, RuleId, StageId, ThresholdId};
use super::time::{EventTime, Instant48, Span};

/// Engine parameters that are not part of the stage model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// How far behind its customer's last activity an activity event may be and still
    /// be applied; also how far the watermark trails the newest event time.
    pub allowed_lateness: Span,
    /// How long (in event time) a `messageId` is remembered per customer.
    pub dedup_window: Span,
    /// How long after its last activity a customer's state is dropped (`None`: never).
    /// Longer than every inactivity threshold (checked by the configuration), so expiry
    /// is always the last deadline of a gap.
    pub expire_after: Option<Span>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            allowed_lateness: Span::from_millis(5 * 60 * 1_000),
            dedup_window: Span::from_millis(24 * 3_600 * 1_000),
            expire_after: None,
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
    /// An activity event more than the allowed lateness before its customer's last
    /// activity: dropped.
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
        /// The triggering event's time, or the inactivity detection time: when the
        /// customer entered `to`.
        at: EventTime,
        /// When the customer entered `from`; `None` for a first transition.
        from_entered: Option<EventTime>,
        /// When the customer's state was created; `None` for state restored from a
        /// snapshot that did not record it.
        first_seen: Option<EventTime>,
    },
    Inactive {
        customer: CustomerRef,
        threshold: ThresholdId,
        /// The stage held during the gap.
        stage: StageId,
        /// When the customer entered `stage`.
        stage_entered: EventTime,
        last_activity: EventTime,
        detected_at: EventTime,
    },
    /// The event passed to `on_event` ended a gap in which at least one threshold
    /// fired: the customer came back. Emitted after the gap's inactivity outputs and
    /// before the event's own transitions.
    Reactivated {
        customer: CustomerRef,
        /// The stage the customer held when it returned.
        stage: StageId,
        /// When the gap began.
        last_activity: EventTime,
        /// The returning event's time.
        returned_at: EventTime,
        /// The gap's thresholds: [`Model::fired_in_gap`] from this stage, the stage
        /// held when the gap began ...
        gap_stage: StageId,
        /// ... through this one, the last that fired before the return.
        last_threshold: ThresholdId,
    },
    /// The customer's state was dropped: `expire_after` passed since its last activity.
    /// Its ref stays readable ([`Engine::customer_id`]) until the engine's next call.
    Expired {
        customer: CustomerRef,
        /// The stage the customer was in.
        stage: StageId,
        last_activity: EventTime,
        expired_at: EventTime,
    },
    /// A snapshot made under another model was restored, and the customer's stage is
    /// one the configured model lacks: `model.migrate` moved it to `to` at the
    /// snapshot's watermark.
    Migrated {
        customer: CustomerRef,
        /// The removed stage, by its index in the model the snapshot was made under
        /// ([`Engine::saved_stage_name`]).
        from: StageId,
        to: StageId,
        /// The restored engine's watermark.
        at: EventTime,
        /// When the customer entered `from`.
        from_entered: EventTime,
        first_seen: Option<EventTime>,
    },
    /// The customer of the erase record passed to [`Engine::erase`] was erased (or had
    /// no state to erase): `at` is the record's time.
    Erased { at: EventTime },
}

impl Output {
    /// How long a transition's customer had been in the stage it left (never
    /// negative: an event older than the stage's entry held it for zero time); `None`
    /// for a first transition and for other outputs.
    pub fn time_in_from(&self) -> Option<Span> {
        match *self {
            Output::StageChanged {
                at,
                from_entered: Some(entered),
                ..
            }
            | Output::Migrated {
                at,
                from_entered: entered,
                ..
            } => Some(Span::from_millis((at.as_millis() - entered.as_millis()).max(0))),
            _ => None,
        }
    }
}

/// No deadline is pending for the customer.
const UNARMED: u8 = u8::MAX;
/// The customer's pending deadline is its expiry, after every threshold of the ladder
/// (never a threshold id: the model allows at most 254 thresholds).
const EXPIRY: u8 = u8::MAX - 1;

/// The customer has no entry in the deadline index.
const NOT_INDEXED: Instant48 = Instant48::UNKNOWN;

/// A customer's state: 27 bytes, byte-aligned (four [`Instant48`]s and three bytes).
#[derive(Clone, Copy, Debug)]
pub(super) struct CustomerState {
    /// The newest activity time seen for the customer.
    last_activity: Instant48,
    /// The key of the customer's entry in the deadline index, or [`NOT_INDEXED`];
    /// never later than the true deadline while the customer is armed. Compared with
    /// an index key in the six-byte form, so a key clamped here still matches.
    indexed: Instant48,
    /// The time of the event that created the state ([`Instant48::UNKNOWN`] for state
    /// restored from a snapshot that did not record it).
    first_seen: Instant48,
    /// When the customer entered `stage`: the time of the output that moved it there.
    stage_entered: Instant48,
    /// [`VACANT`] once the customer is erased or expired.
    stage: StageId,
    /// The next threshold of the ladder to fire, [`EXPIRY`], or [`UNARMED`].
    armed: u8,
    /// Ladder position in the current gap: thresholds before it have fired. Reset only
    /// by newer activity, so an older event arriving after a firing (possible once an
    /// explicit clock runs ahead of the watermark) never fires the same gap twice.
    ladder: u8,
}

impl CustomerState {
    /// The state as an image holds it.
    pub(super) fn image(&self) -> CustomerImage {
        CustomerImage {
            last_activity: self.last_activity,
            stage: self.stage,
            armed: (self.armed < EXPIRY).then_some(ThresholdId(self.armed)),
            ladder: self.ladder,
            stage_entered: self.stage_entered,
            first_seen: self.first_seen,
        }
    }

    fn is_vacant(&self) -> bool {
        self.stage == VACANT
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
    /// Refs whose customer was erased or expired, not yet reclaimed.
    vacant: usize,
    /// An image being copied out between events ([`Engine::begin_image`]).
    capture: Option<Capture>,
    /// The stage names of the model a migrated snapshot was made under (empty unless
    /// the engine was restored from one), which [`Output::Migrated`] refers to.
    saved_stages: Vec<String>,
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
            vacant: 0,
            capture: None,
            saved_stages: Vec::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The name of a stage of the model the restored snapshot was made under, as an
    /// [`Output::Migrated`] names it.
    ///
    /// # Panics
    /// If the engine was not migrated from a model with that stage.
    pub fn saved_stage_name(&self, stage: StageId) -> &str {
        &self.saved_stages[usize::from(stage.0)]
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

    /// How many customers have state (erased and expired ones do not).
    pub fn customer_count(&self) -> usize {
        self.customers.len() - self.vacant
    }

    /// The current stage of a known customer.
    pub fn stage_of(&self, customer_id: &str) -> Option<StageId> {
        let customer = self.customers.get(customer_id)?;
        Some(self.states[customer.index()].stage)
    }

    /// A known customer's state, as an image holds it.
    pub fn customer_image(&self, customer_id: &str) -> Option<CustomerImage> {
        let customer = self.customers.get(customer_id)?;
        Some(self.states[customer.index()].image())
    }

    /// Why `event` was [`Verdict::Late`], for reject files and dead letters.
    pub fn why_late(&self, event: &Event<'_>) -> String {
        let last_activity = self
            .customer_image(&event.customer)
            .map(|state| state.last_activity.time());
        match last_activity {
            Some(last) => {
                format!("more than the allowed lateness before its customer's last activity {last}")
            }
            None => "its customer has no state".to_owned(),
        }
    }

    /// How many customers are in each stage, in model order.
    pub fn population(&self) -> &[u64] {
        &self.population
    }

    /// How many customers have an inactivity threshold pending (expiry not counted).
    pub fn armed_count(&self) -> usize {
        self.armed_customers
    }

    /// Copies the whole state out as plain data, at once: for a snapshot taken when
    /// nothing waits (revoke, shutdown) and for tests. The live service copies it a
    /// block at a time instead ([`Engine::begin_image`]).
    /// Erased and expired customers are left out.
    pub fn image(&self) -> EngineImage {
        let mut image = EngineImage {
            shape: self.model.shape().clone(),
            newest_event: self.newest_event,
            clock: self.clock,
            dedup_next_sweep: self.dedup.next_sweep(),
            ids: self.customers.ids().clone(),
            customers: self.states.iter().map(CustomerState::image).collect(),
            counters: self.counters.clone(),
            dedup: self.dedup.entries().collect(),
        };
        image.drop_vacant();
        image
    }

    /// Starts copying the state, as it is now, into `image` (whose buffers are reused):
    /// [`Engine::continue_image`] copies it a block of customers at a time between
    /// events, and a block about to change is copied first, so the finished image is
    /// exactly the state now, while no single step stops processing for longer than a
    /// few blocks' copy. A capture already running is dropped. The finished image
    /// still holds erased and expired customers' refs as vacant
    /// ([`EngineImage::drop_vacant`], on the snapshot thread, leaves them out).
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

    /// Applies one valid event, appending what it caused to `out`.
    pub fn on_event(&mut self, event: &Event<'_>, out: &mut Vec<Output>) -> Verdict {
        self.reclaim();
        let at = event.timestamp;
        if !self.model.is_activity(event.kind) {
            // Never late: behind the watermark it changes nothing anyway.
            self.observe(at, out);
            return Verdict::Ignored;
        }
        let known = self
            .customers
            .get(&event.customer)
            .filter(|customer| !self.states[customer.index()].is_vacant());
        let digest = event.message_id.as_deref().map(DedupWindow::digest);
        // Hashed once for a known customer: the same key records the event below.
        let known_key = known
            .zip(digest)
            .map(|(customer, digest)| self.dedup.key(customer, digest));
        if let Some(key) = known_key {
            if self.dedup.is_duplicate(key, at, self.watermark()) {
                return Verdict::Duplicate;
            }
        }
        // Lateness is the customer's own: an offline batch behind other customers'
        // events is applied. Such an event never moves the watermark.
        if known.is_some_and(|customer| {
            at < self.states[customer.index()]
                .last_activity
                .time()
                .minus(self.settings.allowed_lateness)
        }) {
            return Verdict::Late;
        }
        self.observe(at, out);
        // The watermark this event moved may have expired its customer: then the event
        // starts a new journey.
        let (known, known_key) = match known {
            Some(customer) if self.states[customer.index()].is_vacant() => (None, None),
            _ => (known, known_key),
        };
        let customer = match known {
            Some(customer) => {
                self.before_write(customer);
                self.fire_gap(customer, at, out);
                self.reactivate(customer, at, out);
                self.classify(customer, Interned::Existing, event, out);
                customer
            }
            None => {
                let (customer, _) = self.customers.intern(&event.customer);
                self.states.push(CustomerState {
                    last_activity: Instant48::at(at),
                    indexed: NOT_INDEXED,
                    first_seen: Instant48::at(at),
                    stage_entered: Instant48::at(at),
                    stage: self.model.initial_stage(),
                    armed: UNARMED,
                    ladder: 0,
                });
                let counters = self.model.counter_count();
                self.counters.resize(self.counters.len() + counters, 0);
                self.classify(customer, Interned::New, event, out);
                customer
            }
        };
        let state = &mut self.states[customer.index()];
        if at > state.last_activity.time() {
            state.last_activity = Instant48::at(at);
            state.ladder = 0;
        }
        // Re-evaluated even for older events: the stage may have changed.
        let ladder = state.ladder;
        self.arm(customer, ladder);
        if let Some(digest) = digest {
            let watermark = self.watermark();
            // An id the window would already ignore is not worth a slot.
            if self.dedup.remembers(at, watermark) {
                let key = known_key.unwrap_or_else(|| self.dedup.key(customer, digest));
                self.dedup.record(key, at);
            }
            // A sweep changes every block at once: it waits for a running capture.
            if self.capture.is_none() {
                self.dedup.sweep(watermark);
            }
        }
        Verdict::Applied
    }

    /// Moves the firing clock to `now` (if it is ahead) and fires every threshold due.
    pub fn advance_to(&mut self, now: EventTime, out: &mut Vec<Output>) {
        self.reclaim();
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
            if self.states[customer.index()].indexed != Instant48::at(key) {
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
    /// Expiry is left to the firing clock.
    fn fire_gap(&mut self, customer: CustomerRef, at: EventTime, out: &mut Vec<Output>) {
        while let Some(deadline) = self.deadline(customer) {
            if deadline > at || self.states[customer.index()].armed == EXPIRY {
                break;
            }
            // The index entry stays; it is now early, which `fire_due` tolerates.
            self.fire(customer, out);
        }
    }

    /// Emits [`Output::Reactivated`] when an event at `at` ends a gap in which a
    /// threshold fired (by the clock, or by [`Engine::fire_gap`] just before).
    fn reactivate(&mut self, customer: CustomerRef, at: EventTime, out: &mut Vec<Output>) {
        let state = &self.states[customer.index()];
        // The common event continues a gap in which nothing fired.
        if state.ladder == 0 || at <= state.last_activity.time() {
            return;
        }
        let state = state.image();
        if let Some((gap_stage, last_threshold)) = state.gap(&self.model) {
            out.push(Output::Reactivated {
                customer,
                stage: state.stage,
                last_activity: state.last_activity.time(),
                returned_at: at,
                gap_stage,
                last_threshold,
            });
        }
    }

    /// Fires the customer's armed threshold and arms the next one of the ladder, or
    /// expires the customer.
    fn fire(&mut self, customer: CustomerRef, out: &mut Vec<Output>) {
        if self.states[customer.index()].armed == EXPIRY {
            return self.expire(customer, out);
        }
        let state = &mut self.states[customer.index()];
        let threshold_id = ThresholdId(state.armed);
        let threshold = self.model.threshold(threshold_id);
        let last_activity = state.last_activity.time();
        let detected_at = last_activity.plus(threshold.after);
        out.push(Output::Inactive {
            customer,
            threshold: threshold_id,
            stage: state.stage,
            stage_entered: state.stage_entered.time(),
            last_activity,
            detected_at,
        });
        if let Some(to) = threshold.move_to.filter(|&to| to != state.stage) {
            out.push(Output::StageChanged {
                customer,
                from: Some(state.stage),
                to,
                cause: Cause::Inactivity(threshold_id),
                at: detected_at,
                from_entered: Some(state.stage_entered.time()),
                first_seen: state.first_seen.known(),
            });
            self.population[usize::from(state.stage.0)] -= 1;
            self.population[usize::from(to.0)] += 1;
            state.stage = to;
            state.stage_entered = Instant48::at(detected_at);
        }
        state.ladder = threshold_id.0 + 1;
        let (ladder, stage) = (state.ladder, state.stage);
        let next = next_armed(&self.model, &self.settings, ladder, stage);
        self.set_armed(customer, next);
    }

    fn deadline(&self, customer: CustomerRef) -> Option<EventTime> {
        let state = &self.states[customer.index()];
        let after = armed_wait(&self.model, &self.settings, state.armed)?;
        Some(state.last_activity.time().plus(after))
    }

    /// Arms the first threshold at or after ladder position `from` that applies, and
    /// keeps the index entry at or before the new deadline.
    fn arm(&mut self, customer: CustomerRef, from: u8) {
        let state = &self.states[customer.index()];
        self.set_armed(
            customer,
            next_armed(&self.model, &self.settings, from, state.stage),
        );
        let Some(due) = self.deadline(customer) else {
            return;
        };
        let indexed = self.states[customer.index()].indexed;
        if indexed == NOT_INDEXED {
            self.index(customer, due);
        } else if due < indexed.time() {
            // The entry at `indexed` stays, and is skipped when it comes up.
            self.index(customer, due);
        }
    }

    fn index(&mut self, customer: CustomerRef, key: EventTime) {
        self.deadlines.insert(key, customer);
        self.states[customer.index()].indexed = Instant48::at(key);
    }

    fn set_armed(&mut self, customer: CustomerRef, armed: u8) {
        let state = &mut self.states[customer.index()];
        match (state.armed >= EXPIRY, armed >= EXPIRY) {
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
        let from_entered = from.map(|_| state.stage_entered.time());
        state.stage = to;
        state.stage_entered = Instant48::at(event.timestamp);
        out.push(Output::StageChanged {
            customer,
            from,
            to,
            cause,
            at: event.timestamp,
            from_entered,
            first_seen: state.first_seen.known(),
        });
    }
}

/// What to arm from ladder position `from` in `stage`: the first threshold there that
/// applies, else expiry when it is configured, else nothing ([`UNARMED`]).
fn next_armed(model: &Model, settings: &EngineSettings, from: u8, stage: StageId) -> u8 {
    let threshold = model
        .thresholds()
        .iter()
        .enumerate()
        .skip(usize::from(from))
        .find(|(_, threshold)| threshold.applies_to(stage))
        .map(|(i, _)| i as u8);
    match threshold {
        Some(threshold) => threshold,
        None if settings.expire_after.is_some() => EXPIRY,
        None => UNARMED,
    }
}

/// How long after a customer's last activity what it has `armed` comes due; `None`
/// when nothing is.
fn armed_wait(model: &Model, settings: &EngineSettings, armed: u8) -> Option<Span> {
    match armed {
        UNARMED => None,
        EXPIRY => settings.expire_after,
        threshold => Some(model.threshold(ThresholdId(threshold)).after),
    }
}

mod restore;
mod retire;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "engine_signal_tests.rs"]
mod signal_tests;

#[cfg(test)]
#[path = "engine_migration_tests.rs"]
mod migration_tests;
