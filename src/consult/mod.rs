//! Consultation flows: the checklist a clerk works through with a customer for certain
//! products (the five-step 处方推荐五步法: 问诊 → 症状记录 → 药品推荐 → 医保核验 → 用药指导),
//! each step timestamped, skipped only with a listed reason, and the product's scan optionally
//! held back from the POS until the first steps are done (docs/records.md, docs/local-api.md).
//!
//! ```text
//!   open (clerk: POST /api/v1/consultations, or the scan of a flow product)
//!     │  step done / skipped ──▶ consultation_step record (durable before the answer)
//!     │  scan of a flow product ─▶ its id joins `scans`; `auto = "scan"` steps are done;
//!     │                            with `hold`, the frame waits until the steps before the
//!     │                            hold step are settled, or `hold_timeout`
//!     │  sale at the station ──▶ `receipt`; `auto = "sale"` steps from its payments
//!     ▼
//!   closed: completed (every step settled: at once when the sale is linked too, or by the
//!   clerk) · incomplete (closed by the clerk with steps open) · abandoned (by the clerk, or
//!   open past `timeout`) ──▶ one consultation record
//! ```
//!
//! # Design
//!
//! - **One owner.** The engine task ([`engine`]) owns the open consultations and their held
//!   scans; [`ConsultHandle`] talks to it over a bounded queue. Unlike the prompt engine it
//!   awaits the journal itself: each change is a few records a minute, and doing it in line
//!   keeps one order for everything (record durable → event → held scan released → state
//!   saved → answer).
//! - **Holding** is decided by the scanner task, not here, so a frame never waits for the
//!   core: [`Flows::holding`] tells it whether a frame is a held flow product. It hands the
//!   frame's bytes over as a [`HeldScan`], which travels with the scan to the core and on to
//!   the engine; the engine releases it when the steps before `hold` are settled or at
//!   `hold_timeout`. A [`HeldScan`] dropped on any error path is delivered, never swallowed.
//! - **Restarts.** The open consultations are saved (`state`) after every change; at start
//!   those past `timeout` close, and a scan that was held when the gateway died (kill -9,
//!   power cut) is recorded as `released_by = "restart"`: it never reached the POS, the clerk
//!   page says so and the clerk scans it again. Releasing it minutes later could add it to
//!   whichever sale the POS has open by then.
//! - **Privacy.** Only values of `choose` lists are recorded; a member id is turned into a
//!   reference ([`privacy::CustomerKey`]) in the handle, before anything else sees it.

mod engine;
mod flow;
mod held;
mod model;
pub mod privacy;
mod state;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use engine::{SaleSeen, ScanSeen, MAX_OPEN};
pub use flow::{Auto, Flow, Flows, Step};
pub use held::{Deliver, HeldScan, HeldTail};
pub use model::{
    ConsultError, ConsultEvent, ConsultationData, ConsultationView, Outcome, ReleasedBy,
    StepChangeData, StepInput, StepRecord, StepState, StepView,
};
pub use privacy::CustomerKey;
pub use state::STATE_FILE;

use crate::journal::JournalHandle;
use crate::prompts::{Clock, SystemClock};
use engine::{Command, Engine};

/// Requests that may wait for the engine before callers feel back-pressure.
const QUEUE: usize = 256;

/// What the engine is configured with.
#[derive(Debug, Clone, Default)]
pub struct ConsultConfig {
    /// `[[flow]]`, in configuration order.
    pub flows: Flows,
    /// `[privacy] customer_key_file`, loaded; without it, no customer can be named.
    pub customer_key: Option<CustomerKey>,
}

/// Starts the engine: takes back the consultations saved in `data_dir`.
pub async fn spawn(
    config: ConsultConfig,
    journal: JournalHandle,
    data_dir: &Path,
) -> Result<ConsultHandle, String> {
    spawn_with_clock(config, journal, data_dir, Arc::new(SystemClock)).await
}

/// [`spawn`] with a given wall clock.
pub async fn spawn_with_clock(
    config: ConsultConfig,
    journal: JournalHandle,
    data_dir: &Path,
    clock: Arc<dyn Clock>,
) -> Result<ConsultHandle, String> {
    let state_path = data_dir.join(STATE_FILE);
    let (flows, flows_rx) = watch::channel(Arc::new(config.flows));
    let mut engine = Engine::new(journal, state_path.clone(), clock, flows_rx.clone());
    let saved = state::load(&state_path).unwrap_or_else(|error| {
        tracing::error!(%error, "open consultations from before the restart are lost; starting empty");
        Vec::new()
    });
    engine.restore(saved).await?;
    let (commands, commands_rx) = mpsc::channel(QUEUE);
    tokio::spawn(engine.run(commands_rx));
    Ok(ConsultHandle {
        commands,
        flows: Arc::new(flows),
        flows_rx,
        customer_key: Arc::new(std::sync::RwLock::new(config.customer_key)),
    })
}

/// The handle to the consultation engine. Cheap to clone; the engine stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct ConsultHandle {
    commands: mpsc::Sender<Command>,
    flows: Arc<watch::Sender<Arc<Flows>>>,
    flows_rx: watch::Receiver<Arc<Flows>>,
    customer_key: Arc<std::sync::RwLock<Option<CustomerKey>>>,
}

impl ConsultHandle {
    /// The flows in force; scanner tasks watch it to know which frames to hold.
    pub fn flows(&self) -> watch::Receiver<Arc<Flows>> {
        self.flows_rx.clone()
    }

    /// Puts a reloaded configuration in force for new consultations.
    pub fn reload(&self, config: ConsultConfig) {
        *self
            .customer_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config.customer_key;
        let flows = Arc::new(config.flows);
        self.flows.send_replace(flows.clone());
        let _ = self.commands.try_send(Command::Reload((*flows).clone()));
    }

    /// Opens a consultation at `station` (the clerk's request). `customer`, a member id typed
    /// or scanned at the counter, is kept only as its reference.
    pub async fn open(
        &self,
        station: &str,
        flow: &str,
        clerk: Option<String>,
        customer: Option<&str>,
    ) -> Result<ConsultationView, ConsultError> {
        let customer = match customer.map(str::trim).filter(|member| !member.is_empty()) {
            None => None,
            Some(member) => {
                let key = self
                    .customer_key
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match key.as_ref() {
                    Some(key) => Some(key.reference(member)),
                    None => {
                        return Err(ConsultError::Invalid(
                            "a customer can only be named with [privacy] customer_key_file set"
                                .into(),
                        ))
                    }
                }
            }
        };
        self.ask(|reply| Command::Open {
            station: station.to_owned(),
            flow: flow.to_owned(),
            clerk,
            customer,
            reply,
        })
        .await?
    }

    /// The open consultations, of one station or all.
    pub async fn list(&self, station: Option<&str>) -> Result<Vec<ConsultationView>, ConsultError> {
        self.ask(|reply| Command::List {
            station: station.map(str::to_owned),
            reply,
        })
        .await
    }

    /// Does or skips step `key` of consultation `id`; answers once the record is durable.
    pub async fn step(
        &self,
        id: &str,
        key: &str,
        input: StepInput,
    ) -> Result<ConsultationView, ConsultError> {
        self.ask(|reply| Command::Step {
            id: id.to_owned(),
            key: key.to_owned(),
            input,
            reply,
        })
        .await?
    }

    /// Closes consultation `id`: as abandoned, or as completed (incomplete when steps are
    /// neither done nor skipped).
    pub async fn close(&self, id: &str, abandon: bool) -> Result<ConsultationView, ConsultError> {
        self.ask(|reply| Command::Close {
            id: id.to_owned(),
            abandon,
            reply,
        })
        .await?
    }

    /// A flow product's scan, recorded. Returns at once; its held frame (if any) is the
    /// engine's from now on (delivered if the engine is gone).
    pub async fn scan(&self, scan: ScanSeen) {
        let _ = self.commands.send(Command::Scan(scan)).await;
    }

    /// A sale at a station: links it to the newest of the station's consultations that scanned
    /// a product and have no sale yet; its id, when one was linked.
    pub async fn link_sale(&self, sale: SaleSeen) -> Option<String> {
        self.ask(|reply| Command::Sale { sale, reply })
            .await
            .ok()
            .flatten()
    }

    /// The open consultations and every change after them.
    pub async fn subscribe(
        &self,
    ) -> Result<(Vec<ConsultationView>, broadcast::Receiver<ConsultEvent>), ConsultError> {
        self.ask(|reply| Command::Subscribe { reply }).await
    }

    /// Releases held scans, saves the open consultations and stops the engine.
    pub async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ConsultError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ConsultError::Unavailable("the consultation engine stopped".into());
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

#[cfg(test)]
mod tests;

/// The five-step flow of the docs, holding at `recommend`, for tests elsewhere.
#[cfg(test)]
pub(crate) use flow::tests::five_steps as test_flow;
