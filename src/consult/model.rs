//! A consultation as the engine keeps it and as the API, SSE and MQTT show it; the records it
//! writes are `crate::record::consultation`'s. Timestamps are RFC 3339 store-local with
//! milliseconds, like every record.

use std::sync::Arc;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use super::flow::Flow;
pub use crate::record::consultation::{
    ConsultationData, Outcome, ReleasedBy, StepChangeData, StepRecord, StepState,
};
use crate::record::local_millis;

/// Most scan ids a consultation lists; further scans are counted (`scans_more`), so a scanner
/// streaming a flow product grows neither memory, the state file nor the record.
pub const MAX_SCANS: usize = 32;

/// An open (or just closed) consultation.
#[derive(Debug, Clone)]
pub struct Consultation {
    /// Short, URL-safe, unique id.
    pub id: String,
    /// Its flow, as configured when it opened (a reload does not change an open one).
    pub flow: Arc<Flow>,
    /// The counter.
    pub station: String,
    /// The clerk who opened it, when known.
    pub clerk: Option<String>,
    /// The customer's reference (HMAC of the member id), never the id itself.
    pub customer: Option<String>,
    /// When it opened.
    pub opened_at: DateTime<Local>,
    /// One entry per step of `flow`, in order.
    pub steps: Vec<StepState>,
    /// Ids of the flow products' scan records (the first [`MAX_SCANS`]).
    pub scans: Vec<String>,
    /// Scans of the flow's products beyond those in `scans`, counted only.
    pub scans_more: u64,
    /// The linked sale's receipt.
    pub receipt: Option<String>,
    /// Since when a scan is held (wall time, for the page's countdown and `held_ms`).
    pub held_since: Option<DateTime<Local>>,
    /// How long the last held scan waited.
    pub held_ms: Option<u64>,
    /// Why the last held scan went on.
    pub released_by: Option<ReleasedBy>,
}

impl Consultation {
    /// Whether every step before the flow's `hold` step is settled (true without `hold`).
    pub fn hold_satisfied(&self) -> bool {
        let before = self.flow.hold.unwrap_or(0);
        self.steps[..before].iter().all(StepState::settled)
    }

    /// Whether every step is settled.
    pub fn all_settled(&self) -> bool {
        self.steps.iter().all(StepState::settled)
    }

    /// When it closes by itself.
    pub fn expires_at(&self) -> DateTime<Local> {
        self.opened_at + chrono::Duration::from_std(self.flow.timeout).unwrap_or_default()
    }

    /// When a scan held now is released at the latest.
    pub fn hold_until(&self) -> Option<DateTime<Local>> {
        let since = self.held_since?;
        Some(since + chrono::Duration::from_std(self.flow.hold_timeout).unwrap_or_default())
    }

    /// Notes one more scan of the flow's products.
    pub fn add_scan(&mut self, scan_id: String) {
        if self.scans.len() < MAX_SCANS {
            self.scans.push(scan_id);
        } else {
            self.scans_more = self.scans_more.saturating_add(1);
        }
    }

    /// The API/SSE/MQTT form.
    pub fn view(&self, closed: Option<Outcome>) -> ConsultationView {
        ConsultationView {
            id: self.id.clone(),
            flow: self.flow.id.clone(),
            flow_name: self.flow.name.clone(),
            station: self.station.clone(),
            clerk: self.clerk.clone(),
            customer: self.customer.clone(),
            opened_at: self.opened_at,
            expires_at: self.expires_at(),
            state: match closed {
                None => "open",
                Some(Outcome::Completed) => "completed",
                Some(Outcome::Incomplete) => "incomplete",
                Some(Outcome::Abandoned) => "abandoned",
            },
            steps: self
                .flow
                .steps
                .iter()
                .zip(&self.steps)
                .map(|(step, state)| StepView {
                    key: step.key.clone(),
                    label: step.label.clone(),
                    choose: step.choose.clone(),
                    multi: step.multi,
                    auto: step.auto.map(|auto| match auto {
                        super::flow::Auto::Scan => "scan",
                        super::flow::Auto::Sale => "sale",
                    }),
                    hold: self
                        .flow
                        .hold
                        .is_some_and(|hold| self.flow.steps[hold].key == step.key),
                    state: state.clone(),
                })
                .collect(),
            skip_reasons: self.flow.skip_reasons.clone(),
            scans: self.scans.clone(),
            scans_more: self.scans_more,
            receipt: self.receipt.clone(),
            held: self.held_since.map(|since| HeldView {
                since,
                until: self.hold_until().unwrap_or(since),
            }),
            held_ms: self.held_ms,
            released_by: self.released_by,
        }
    }

    /// The `consultation` record, written when it closes.
    pub fn record(&self, outcome: Outcome, closed_at: DateTime<Local>) -> ConsultationData {
        ConsultationData {
            id: self.id.clone(),
            flow: self.flow.id.clone(),
            station: self.station.clone(),
            clerk: self.clerk.clone(),
            customer: self.customer.clone(),
            opened_at: self.opened_at,
            closed_at,
            outcome,
            steps: self
                .flow
                .steps
                .iter()
                .zip(&self.steps)
                .map(|(step, state)| StepRecord {
                    key: step.key.clone(),
                    label: step.label.clone(),
                    state: state.clone(),
                })
                .collect(),
            scans: self.scans.clone(),
            scans_more: self.scans_more,
            receipt: self.receipt.clone(),
            held_ms: self.held_ms,
            released_by: self.released_by,
        }
    }
}

/// A consultation as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsultationView {
    /// Its id.
    pub id: String,
    /// The flow's id.
    pub flow: String,
    /// The flow's name.
    pub flow_name: String,
    /// The counter.
    pub station: String,
    /// Who opened it.
    pub clerk: Option<String>,
    /// The customer's reference, or null.
    pub customer: Option<String>,
    /// When it opened.
    #[serde(with = "local_millis")]
    pub opened_at: DateTime<Local>,
    /// When it closes by itself.
    #[serde(with = "local_millis")]
    pub expires_at: DateTime<Local>,
    /// `open`, or how it closed.
    pub state: &'static str,
    /// Every step, in order.
    pub steps: Vec<StepView>,
    /// The reasons a step may be skipped with.
    pub skip_reasons: Vec<String>,
    /// Ids of the flow products' scan records (the first [`MAX_SCANS`]).
    pub scans: Vec<String>,
    /// How many more scans there were, not listed.
    #[serde(default)]
    pub scans_more: u64,
    /// The linked sale's receipt.
    pub receipt: Option<String>,
    /// Set while a scan is held: since when, and until when at the latest.
    pub held: Option<HeldView>,
    /// How long the last held scan waited.
    pub held_ms: Option<u64>,
    /// Why the last held scan went on.
    pub released_by: Option<ReleasedBy>,
}

/// One step as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// Its key.
    pub key: String,
    /// Its label.
    pub label: String,
    /// The values it offers.
    pub choose: Vec<String>,
    /// Several values at once.
    pub multi: bool,
    /// `scan`, `sale` or null.
    pub auto: Option<&'static str>,
    /// The flow holds the product's scan until every step before this one is settled.
    pub hold: bool,
    /// What it holds.
    #[serde(flatten)]
    pub state: StepState,
}

/// A held scan's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldView {
    /// Held since.
    #[serde(with = "local_millis")]
    pub since: DateTime<Local>,
    /// Released at the latest.
    #[serde(with = "local_millis")]
    pub until: DateTime<Local>,
}

/// What the clerk (or POS software) sends for a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepInput {
    /// One value of the step's `choose` list.
    pub value: Option<String>,
    /// Several values of a `multi` step's list.
    pub values: Option<Vec<String>>,
    /// Skip, with a reason from the flow's `skip_reasons`.
    pub skip: Option<String>,
    /// Who.
    pub clerk: Option<String>,
}

/// Why a request was refused (mapped to HTTP statuses by the web layer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsultError {
    /// No such consultation or step (404).
    #[error("{0}")]
    NotFound(String),
    /// The consultation is closed (409).
    #[error("{0}")]
    Closed(String),
    /// A value not offered, a skip without a listed reason, an unknown flow (422).
    #[error("{0}")]
    Invalid(String),
    /// The engine is stopped or the journal refused the record (503).
    #[error("consultations unavailable: {0}")]
    Unavailable(String),
}

/// What the engine broadcasts.
#[derive(Debug, Clone)]
pub enum ConsultEvent {
    /// A consultation opened, changed or closed (`state` says which).
    Changed(Arc<ConsultationView>),
}
