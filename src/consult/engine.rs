//! The engine task: the one owner of open consultations. Every change goes the same way:
//! record (when it is a step or a close) → durable → broadcast and release held scans → state
//! file → reply. So a clerk's step answered 200 is in the journal, and an open consultation
//! the clerk saw is in the state file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::flow::{Auto, Flow, Flows};
use super::held::HeldScan;
use super::model::{
    ConsultError, ConsultEvent, Consultation, ConsultationView, Outcome, ReleasedBy,
    StepChangeData, StepInput, StepState,
};
use super::state::{self, SavedConsultation};
use crate::journal::JournalHandle;
use crate::prompts::Clock;
use crate::record::Kind;

/// Longest a timer is set for.
const FARTHEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most consultations open at once; beyond, the oldest is closed as abandoned. A store has a
/// few counters; this is far beyond any real day and bounds the state file.
pub const MAX_OPEN: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, ConsultError>>;

/// A scan of a flow product, seen by the core after its record was appended.
#[derive(Debug)]
pub struct ScanSeen {
    /// The scanner's counter.
    pub station: String,
    /// The flow its product belongs to (decided by the core from the flows in force).
    pub flow: String,
    /// The scan record's id.
    pub scan_id: String,
    /// The product code.
    pub sku: String,
    /// Its frame, when the scanner task held it back from the POS.
    pub held: Option<HeldScan>,
}

/// A sale at a counter, before its record is written.
#[derive(Debug, Clone)]
pub struct SaleSeen {
    /// The register's counter.
    pub station: String,
    /// Its receipt number.
    pub receipt: Option<String>,
    /// Medical-insurance payments: `true` approved, `false` declined, in order.
    pub insurance: Vec<bool>,
}

/// A request to the engine.
pub(crate) enum Command {
    Open {
        station: String,
        flow: String,
        clerk: Option<String>,
        customer: Option<String>,
        reply: Reply<ConsultationView>,
    },
    List {
        station: Option<String>,
        reply: oneshot::Sender<Vec<ConsultationView>>,
    },
    Step {
        id: String,
        key: String,
        input: StepInput,
        reply: Reply<ConsultationView>,
    },
    Close {
        id: String,
        abandon: bool,
        reply: Reply<ConsultationView>,
    },
    Scan(ScanSeen),
    Sale {
        sale: SaleSeen,
        reply: oneshot::Sender<Option<String>>,
    },
    Subscribe {
        reply: oneshot::Sender<(Vec<ConsultationView>, broadcast::Receiver<ConsultEvent>)>,
    },
    Reload(Flows),
    /// Release held scans, save, stop.
    Stop(oneshot::Sender<()>),
}

/// One open consultation and its timers.
struct Open {
    consultation: Consultation,
    /// When it closes by itself.
    expires: Instant,
    /// Scans held back for it, oldest first.
    held: Vec<HeldScan>,
    /// When they are released at the latest.
    hold_deadline: Option<Instant>,
    /// When the first of them was held.
    held_started: Option<Instant>,
}

pub(crate) struct Engine {
    journal: JournalHandle,
    state_path: PathBuf,
    clock: Arc<dyn Clock>,
    flows: watch::Receiver<Arc<Flows>>,
    open: Vec<Open>,
    /// Ids closed recently, for 409 rather than 404 (bounded).
    closed: HashMap<String, ()>,
    closed_order: std::collections::VecDeque<String>,
    events: broadcast::Sender<ConsultEvent>,
}

/// Most scans held for one consultation; more go on at once.
const MAX_HELD: usize = 8;

/// Closed ids remembered for 409 answers.
const RECENT_CLOSED: usize = 10_000;

impl Engine {
    pub(crate) fn new(
        journal: JournalHandle,
        state_path: PathBuf,
        clock: Arc<dyn Clock>,
        flows: watch::Receiver<Arc<Flows>>,
    ) -> Self {
        Engine {
            journal,
            state_path,
            clock,
            flows,
            open: Vec::new(),
            closed: HashMap::new(),
            closed_order: Default::default(),
            events: broadcast::channel(1024).0,
        }
    }

    /// Takes back the consultations saved before a restart: those past their timeout close,
    /// a scan that was held when the gateway died is recorded as never delivered.
    pub(crate) async fn restore(&mut self, saved: Vec<SavedConsultation>) -> Result<(), String> {
        let now = self.clock.now();
        let flows = self.flows.borrow().clone();
        for saved in saved {
            let mut consultation = saved.into_consultation(&flows);
            if let Some(since) = consultation.held_since.take() {
                consultation.held_ms = Some(millis_between(since, now));
                consultation.released_by = Some(ReleasedBy::Restart);
                tracing::warn!(
                    consultation = %consultation.id,
                    station = %consultation.station,
                    "a scan held when the gateway stopped never reached the POS; the clerk scans it again"
                );
            }
            let left = (consultation.expires_at() - now)
                .to_std()
                .unwrap_or_default();
            self.open.push(Open {
                consultation,
                expires: Instant::now() + left.min(FARTHEST_WAIT),
                held: Vec::new(),
                hold_deadline: None,
                held_started: None,
            });
        }
        // Close what expired while stopped.
        self.expire(Instant::now()).await;
        self.save().await.map_err(|error| error.to_string())
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let wake = self.next_deadline();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Stop(done)) => {
                        self.stop().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.release_due(now).await;
                    self.expire(now).await;
                }
            }
        }
        self.stop().await;
    }

    /// Stopping: held scans go to the POS on the way out (the passthrough is still there);
    /// the open consultations stay saved.
    async fn stop(&mut self) {
        let now = self.clock.now();
        for open in &mut self.open {
            if !open.held.is_empty() {
                release(open, ReleasedBy::Shutdown, now);
            }
        }
        if let Err(error) = self.save().await {
            tracing::warn!(%error, "open consultations not saved at shutdown");
        }
    }

    fn next_deadline(&self) -> Instant {
        self.open
            .iter()
            .flat_map(|open| [Some(open.expires), open.hold_deadline])
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + FARTHEST_WAIT)
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Open {
                station,
                flow,
                clerk,
                customer,
                reply,
            } => {
                let result = self.open_request(station, &flow, clerk, customer).await;
                let _ = reply.send(result);
            }
            Command::List { station, reply } => {
                let _ = reply.send(self.views(station.as_deref()));
            }
            Command::Step {
                id,
                key,
                input,
                reply,
            } => {
                let result = self.step(&id, &key, input).await;
                let _ = reply.send(result);
            }
            Command::Close { id, abandon, reply } => {
                let result = self.close_request(&id, abandon).await;
                let _ = reply.send(result);
            }
            Command::Scan(scan) => self.scan(scan).await,
            Command::Sale { sale, reply } => {
                let linked = self.sale(sale).await;
                let _ = reply.send(linked);
            }
            Command::Subscribe { reply } => {
                let _ = reply.send((self.views(None), self.events.subscribe()));
            }
            Command::Stop(done) => {
                let _ = done.send(());
            }
            Command::Reload(flows) => {
                // Open consultations keep the flow they opened with.
                tracing::info!(flows = flows.iter().count(), "consultation flows reloaded");
            }
        }
    }

    fn views(&self, station: Option<&str>) -> Vec<ConsultationView> {
        self.open
            .iter()
            .filter(|open| station.is_none_or(|station| open.consultation.station == station))
            .map(|open| open.consultation.view(None))
            .collect()
    }

    fn find(&self, id: &str) -> Result<usize, ConsultError> {
        match self.open.iter().position(|open| open.consultation.id == id) {
            Some(index) => Ok(index),
            None if self.closed.contains_key(id) => Err(ConsultError::Closed(format!(
                "consultation '{id}' is already closed"
            ))),
            None => Err(ConsultError::NotFound(format!("no consultation '{id}'"))),
        }
    }

    async fn open_request(
        &mut self,
        station: String,
        flow: &str,
        clerk: Option<String>,
        customer: Option<String>,
    ) -> Result<ConsultationView, ConsultError> {
        let flow = self
            .flows
            .borrow()
            .get(flow)
            .cloned()
            .ok_or_else(|| ConsultError::Invalid(format!("no flow '{flow}' is configured")))?;
        let index = self.open_new(station, flow, clerk, customer).await;
        let view = self.open[index].consultation.view(None);
        self.broadcast(view.clone());
        // Open in memory whatever the state file says: a 503 here would make a retry open a
        // second one. Only a restart before the next good save forgets it (nothing recorded).
        self.save_or_log(&view.id).await;
        Ok(view)
    }

    /// Opens a consultation; returns its index.
    async fn open_new(
        &mut self,
        station: String,
        flow: Arc<Flow>,
        clerk: Option<String>,
        customer: Option<String>,
    ) -> usize {
        if self.open.len() >= MAX_OPEN {
            let oldest = self.open[0].consultation.id.clone();
            tracing::warn!(consultation = %oldest, "too many open consultations; the oldest closes as abandoned");
            if let Err(error) = self.close(0, Outcome::Abandoned).await {
                tracing::error!(%error, "cannot close the oldest consultation");
            }
        }
        let consultation = Consultation {
            id: self.new_id(),
            steps: vec![StepState::default(); flow.steps.len()],
            flow,
            station,
            clerk,
            customer,
            opened_at: self.clock.now(),
            scans: Vec::new(),
            scans_more: 0,
            receipt: None,
            held_since: None,
            held_ms: None,
            released_by: None,
        };
        let expires = Instant::now() + consultation.flow.timeout.min(FARTHEST_WAIT);
        self.open.push(Open {
            consultation,
            expires,
            held: Vec::new(),
            hold_deadline: None,
            held_started: None,
        });
        self.open.len() - 1
    }

    async fn step(
        &mut self,
        id: &str,
        key: &str,
        input: StepInput,
    ) -> Result<ConsultationView, ConsultError> {
        let index = self.find(id)?;
        let now = self.clock.now();
        let open = &mut self.open[index];
        let flow = open.consultation.flow.clone();
        let step = flow.step(key).ok_or_else(|| {
            ConsultError::NotFound(format!("flow '{}' has no step '{key}'", flow.id))
        })?;
        let state = checked_step(&flow, step, input, now)?;
        self.set_step(index, step, state).await?;
        self.after_change(index).await
    }

    /// Records a step's new state (durable before this returns), then releases held scans
    /// the step frees.
    async fn set_step(
        &mut self,
        index: usize,
        step: usize,
        state: StepState,
    ) -> Result<(), ConsultError> {
        let consultation = &self.open[index].consultation;
        let data = StepChangeData {
            consultation: consultation.id.clone(),
            flow: consultation.flow.id.clone(),
            station: consultation.station.clone(),
            key: consultation.flow.steps[step].key.clone(),
            state: state.clone(),
        };
        self.append(Kind::ConsultationStep, &data).await?;
        let open = &mut self.open[index];
        open.consultation.steps[step] = state;
        if !open.held.is_empty() && open.consultation.hold_satisfied() {
            let now = self.clock.now();
            release(open, ReleasedBy::Steps, now);
        }
        Ok(())
    }

    /// After a change to open consultation `index`: closes it when every step is settled and
    /// its sale is linked, broadcasts, saves the state; returns its view.
    async fn after_change(&mut self, index: usize) -> Result<ConsultationView, ConsultError> {
        let consultation = &self.open[index].consultation;
        if consultation.all_settled() && consultation.receipt.is_some() {
            return self.close(index, Outcome::Completed).await;
        }
        let view = consultation.view(None);
        self.broadcast(view.clone());
        // The change is durable as its record: answered as done whatever the state file says
        // (a 503 would make the clerk or the broker send the step again, recorded twice).
        self.save_or_log(&view.id).await;
        Ok(view)
    }

    /// Saves the state file; a failure is logged (the records are what counts; the file only
    /// lets open consultations resume after a restart, and the next change saves it again).
    async fn save_or_log(&self, consultation: &str) {
        if let Err(error) = self.save().await {
            tracing::error!(%error, %consultation, "open consultations not saved; a restart now would forget the latest change");
        }
    }

    async fn close_request(
        &mut self,
        id: &str,
        abandon: bool,
    ) -> Result<ConsultationView, ConsultError> {
        let index = self.find(id)?;
        let consultation = &self.open[index].consultation;
        let outcome = if abandon {
            Outcome::Abandoned
        } else if consultation.all_settled() {
            Outcome::Completed
        } else {
            Outcome::Incomplete
        };
        self.close(index, outcome).await
    }

    /// Writes the `consultation` record (durable), releases its held scans, forgets it.
    async fn close(
        &mut self,
        index: usize,
        outcome: Outcome,
    ) -> Result<ConsultationView, ConsultError> {
        let now = self.clock.now();
        let open = &mut self.open[index];
        // Held scans go on once the record saying so is durable (as after a step); until then
        // they are set aside, and put back if the journal refuses the record.
        let held = std::mem::take(&mut open.held);
        let before = (
            open.consultation.held_since,
            open.consultation.held_ms,
            open.consultation.released_by,
            open.hold_deadline,
            open.held_started,
        );
        if !held.is_empty() {
            release(open, ReleasedBy::Closed, now);
        }
        let record = open.consultation.record(outcome, now);
        if let Err(error) = self.append(Kind::Consultation, &record).await {
            let open = &mut self.open[index];
            open.held = held;
            (
                open.consultation.held_since,
                open.consultation.held_ms,
                open.consultation.released_by,
                open.hold_deadline,
                open.held_started,
            ) = before;
            return Err(error);
        }
        for scan in held {
            scan.release();
        }
        let open = self.open.remove(index);
        let id = open.consultation.id.clone();
        if self.closed_order.len() >= RECENT_CLOSED {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
        self.closed.insert(id.clone(), ());
        self.closed_order.push_back(id);
        let view = open.consultation.view(Some(outcome));
        self.broadcast(view.clone());
        // The record is durable and the consultation gone: it is closed whatever the state
        // file says (at worst the next start finds it open and closes it again).
        if let Err(error) = self.save().await {
            tracing::error!(%error, consultation = %view.id, "consultation closed, but the state file not saved");
        }
        Ok(view)
    }

    async fn scan(&mut self, scan: ScanSeen) {
        let ScanSeen {
            station,
            flow,
            scan_id,
            sku,
            held,
        } = scan;
        // The newest of the station's consultations of this flow still before its sale: one
        // whose sale is linked is over at the till, and the next box is the next customer's.
        let index = match self.open.iter().rposition(|open| {
            open.consultation.station == station
                && open.consultation.flow.id == flow
                && open.consultation.receipt.is_none()
        }) {
            Some(index) => index,
            None => {
                let Some(flow) = self.flows.borrow().get(&flow).cloned() else {
                    // The flows were reloaded in between; the scan goes on (held is dropped).
                    return;
                };
                self.open_new(station, flow, None, None).await
            }
        };
        let now = self.clock.now();
        let open = &mut self.open[index];
        open.consultation.add_scan(scan_id);
        if let Some(held) = held {
            if open.consultation.hold_satisfied() || open.held.len() >= MAX_HELD {
                // Beyond MAX_HELD (a scanner streaming the product) it goes on at once.
                held.release();
            } else {
                if open.held.is_empty() {
                    open.consultation.held_since = Some(now);
                    open.held_started = Some(Instant::now());
                    open.hold_deadline = Some(
                        Instant::now() + open.consultation.flow.hold_timeout.min(FARTHEST_WAIT),
                    );
                }
                open.held.push(held);
            }
        }
        // `auto = "scan"` steps not yet settled are done by this scan.
        let flow = open.consultation.flow.clone();
        for (step, definition) in flow.steps.iter().enumerate() {
            if definition.auto != Some(Auto::Scan)
                || self.open[index].consultation.steps[step].settled()
            {
                continue;
            }
            let value = if definition.choose.is_empty() {
                Some(sku.clone())
            } else {
                None
            };
            let state = StepState {
                at: Some(now),
                value,
                ..StepState::default()
            };
            if let Err(error) = self.set_step(index, step, state).await {
                tracing::error!(%error, "scan step not recorded");
            }
        }
        if let Err(error) = self.after_change(index).await {
            tracing::error!(%error, "consultation state not saved after a scan");
        }
    }

    async fn sale(&mut self, sale: SaleSeen) -> Option<String> {
        // The newest, as for scans: an older one with scans and no sale is a customer who left
        // without buying, not this sale's.
        let index = self.open.iter().rposition(|open| {
            open.consultation.station == sale.station
                && !open.consultation.scans.is_empty()
                && open.consultation.receipt.is_none()
        })?;
        let id = self.open[index].consultation.id.clone();
        let now = self.clock.now();
        self.open[index].consultation.receipt = Some(sale.receipt.unwrap_or_default());
        if let Some(&approved) = sale.insurance.first() {
            let flow = self.open[index].consultation.flow.clone();
            for (step, definition) in flow.steps.iter().enumerate() {
                if definition.auto != Some(Auto::Sale)
                    || self.open[index].consultation.steps[step].settled()
                {
                    continue;
                }
                let value = definition.choose.get(usize::from(!approved)).cloned();
                let state = StepState {
                    at: Some(now),
                    value,
                    ..StepState::default()
                };
                if let Err(error) = self.set_step(index, step, state).await {
                    tracing::error!(%error, "sale step not recorded");
                }
            }
        }
        if let Err(error) = self.after_change(index).await {
            tracing::error!(%error, "consultation state not saved after a sale");
        }
        Some(id)
    }

    async fn release_due(&mut self, now: Instant) {
        let wall = self.clock.now();
        let mut changed = Vec::new();
        for (index, open) in self.open.iter_mut().enumerate() {
            if open.hold_deadline.is_some_and(|deadline| deadline <= now) {
                release(open, ReleasedBy::Timeout, wall);
                changed.push(index);
            }
        }
        for index in changed {
            let view = self.open[index].consultation.view(None);
            self.broadcast(view);
        }
        if let Err(error) = self.save().await {
            tracing::error!(%error, "consultation state not saved after a hold timeout");
        }
    }

    async fn expire(&mut self, now: Instant) {
        while let Some(index) = self.open.iter().position(|open| open.expires <= now) {
            let outcome = if self.open[index].consultation.all_settled() {
                Outcome::Completed
            } else {
                Outcome::Abandoned
            };
            let id = self.open[index].consultation.id.clone();
            if let Err(error) = self.close(index, outcome).await {
                tracing::error!(%error, consultation = %id, "cannot close an expired consultation; retrying in a minute");
                // Still open (the record was refused): try again later, not in a busy loop.
                if let Some(open) = self.open.iter_mut().find(|open| open.consultation.id == id) {
                    open.expires = now + Duration::from_secs(60);
                }
            }
        }
    }

    async fn append<T: serde::Serialize>(&self, kind: Kind, data: &T) -> Result<(), ConsultError> {
        let unavailable =
            |error: crate::journal::JournalError| ConsultError::Unavailable(error.to_string());
        let data = crate::record::Data::serialize(data)
            .map_err(|error| ConsultError::Unavailable(error.to_string()))?;
        let appended = self
            .journal
            .append_urgent(kind, data)
            .await
            .map_err(unavailable)?;
        appended.durable.wait().await.map_err(unavailable)
    }

    async fn save(&self) -> Result<(), ConsultError> {
        let saved: Vec<SavedConsultation> = self
            .open
            .iter()
            .map(|open| SavedConsultation::from(&open.consultation))
            .collect();
        state::save(&self.state_path, &saved)
            .await
            .map_err(ConsultError::Unavailable)
    }

    fn broadcast(&self, view: ConsultationView) {
        let _ = self.events.send(ConsultEvent::Changed(Arc::new(view)));
    }

    fn new_id(&self) -> String {
        crate::record::short_id(|id| {
            !self
                .find(id)
                .is_err_and(|error| matches!(error, ConsultError::NotFound(_)))
        })
    }
}

/// Passes the held scans of `open` on, noting why and how long they waited.
fn release(open: &mut Open, by: ReleasedBy, now: DateTime<Local>) {
    for held in open.held.drain(..) {
        held.release();
    }
    if let Some(started) = open.held_started.take() {
        open.consultation.held_ms =
            Some(started.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
    } else if let Some(since) = open.consultation.held_since {
        open.consultation.held_ms = Some(millis_between(since, now));
    }
    open.consultation.held_since = None;
    open.consultation.released_by = Some(by);
    open.hold_deadline = None;
}

fn millis_between(from: DateTime<Local>, to: DateTime<Local>) -> u64 {
    (to - from)
        .num_milliseconds()
        .max(0)
        .try_into()
        .unwrap_or(0)
}

/// The state a clerk's input gives step `step` of `flow`, or why it is refused: a skip needs a
/// listed reason; a `choose` step needs values from its list (several only when `multi`); a
/// step without a list takes no value (no free text ever enters a record).
fn checked_step(
    flow: &Flow,
    step: usize,
    input: StepInput,
    now: DateTime<Local>,
) -> Result<StepState, ConsultError> {
    let definition = &flow.steps[step];
    let StepInput {
        value,
        values,
        skip,
        clerk,
    } = input;
    let invalid = |message: String| Err(ConsultError::Invalid(message));
    if let Some(reason) = skip {
        if value.is_some() || values.is_some() {
            return invalid("a skipped step takes no value".into());
        }
        if !flow.skip_reasons.contains(&reason) {
            // Not repeated: free text may name the customer, and refusals are logged.
            return invalid(format!(
                "the skip reason is not one of flow '{}' (one of: {})",
                flow.id,
                flow.skip_reasons.join(", ")
            ));
        }
        return Ok(StepState {
            at: Some(now),
            skipped: Some(reason),
            clerk,
            ..StepState::default()
        });
    }
    let offered = |value: &String| definition.choose.contains(value);
    let (value, values) = match (value, values) {
        (None, None) if definition.choose.is_empty() => (None, None),
        (None, None) => {
            return invalid(format!(
                "step '{}' needs a value (one of: {})",
                definition.key,
                definition.choose.join(", ")
            ))
        }
        (Some(_), Some(_)) => return invalid("give 'value' or 'values', not both".into()),
        _ if definition.choose.is_empty() => {
            return invalid(format!("step '{}' takes no value", definition.key))
        }
        (Some(value), None) if offered(&value) => {
            if definition.multi {
                (None, Some(vec![value]))
            } else {
                (Some(value), None)
            }
        }
        (None, Some(values))
            if definition.multi && !values.is_empty() && values.iter().all(offered) =>
        {
            let mut unique: Vec<String> = Vec::with_capacity(values.len());
            for value in values {
                if !unique.contains(&value) {
                    unique.push(value);
                }
            }
            (None, Some(unique))
        }
        (None, Some(_)) if !definition.multi => {
            return invalid(format!("step '{}' takes one value", definition.key))
        }
        _ => {
            return invalid(format!(
                "not a value step '{}' offers (one of: {})",
                definition.key,
                definition.choose.join(", ")
            ))
        }
    };
    Ok(StepState {
        at: Some(now),
        value,
        values,
        skipped: None,
        clerk,
    })
}
