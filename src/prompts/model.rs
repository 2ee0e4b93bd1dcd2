//! The prompt engine's public types: what a prompt looks like on the wire, the events it
//! broadcasts and the errors it returns. The attribution record it writes when a prompt closes,
//! and the `Outcome` and `Channel` it names, are the record format's
//! ([`crate::record::attribution`]).
//!
//! These are wire types (docs/local-api.md), so their serde form is the contract:
//! timestamps are RFC 3339 store-local time with offset and milliseconds
//! (`2026-11-27T16:01:02.345+08:00`), enums are lowercase strings, absent values are `null`.

use chrono::{DateTime, Local, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::record::attribution::{AttributionData, Outcome};
use crate::record::local_millis;

/// One answer a prompt offers, as sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionView {
    /// Machine key (`doctor`), recorded as the attribution's `answer`.
    pub key: String,
    /// What the clerk sees (`医生推荐`).
    pub label: String,
}

/// An open prompt as the API, the SSE stream and the MQTT channel show it (docs/local-api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptView {
    /// Short, URL-safe, unique id (10 characters of lowercase base32).
    pub id: String,
    /// The campaign that asked.
    pub campaign: String,
    /// The counter whose screen shows it.
    pub station: String,
    /// The scanned product code that opened it.
    pub sku: String,
    /// The question, from the campaign.
    pub question: String,
    /// The answers offered, in configuration order (key 1 is the first).
    pub options: Vec<OptionView>,
    /// When it opened (the scan's time).
    #[serde(with = "local_millis")]
    pub opened_at: DateTime<Local>,
    /// When it becomes a `timeout` if still open: `opened_at` + the campaign's timeout.
    #[serde(with = "local_millis")]
    pub expires_at: DateTime<Local>,
}

impl PromptView {
    /// The option with this key, if the prompt offers it.
    pub fn option(&self, key: &str) -> Option<&OptionView> {
        self.options.iter().find(|option| option.key == key)
    }
}

/// What [`PromptsHandle::answer`](super::PromptsHandle::answer) and friends return: the
/// attribution record as written to the journal.
pub type Resolution = AttributionData;

/// A request to open a prompt for a targeted scan.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// The counter the scanner belongs to.
    pub station: String,
    /// The campaign, from [`PromptsHandle::campaign_for`](super::PromptsHandle::campaign_for).
    pub campaign: String,
    /// The product code shown to the clerk and recorded (the decoded code, e.g. the EAN-13).
    pub sku: String,
    /// Id of the `scan` record of this scan.
    pub scan_id: String,
    /// The scan's time; the prompt expires the campaign's timeout after it.
    pub opened_at: DateTime<Local>,
}

/// What [`PromptsHandle::open`](super::PromptsHandle::open) returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The prompt now open for this scan.
    pub prompt: PromptView,
    /// False when the same product was scanned again at the station while its prompt was open:
    /// `prompt` is then that existing prompt and nothing new was opened.
    pub new: bool,
}

/// Today's prompt figures of one station (store-local day).
///
/// A prompt counts on the day it opened: one opened at 23:59 that times out at 00:01 counts in
/// yesterday's figures, so `answered + skipped + timeout + open == opened` always holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StationToday {
    /// The counter.
    pub station: String,
    /// The store-local day these figures are for (`YYYY-MM-DD`).
    #[serde(with = "super::today::naive_day")]
    pub day: NaiveDate,
    /// Prompts opened today.
    pub opened: u64,
    /// Of those, answered.
    pub answered: u64,
    /// Of those, skipped.
    pub skipped: u64,
    /// Of those, timed out.
    pub timeout: u64,
    /// Of those, still open.
    pub open: u64,
    /// `answered / opened`, null while nothing was opened.
    pub completeness: Option<f64>,
}

impl StationToday {
    /// Zero figures for a station.
    pub fn empty(station: &str, day: NaiveDate) -> Self {
        StationToday {
            station: station.to_owned(),
            day,
            opened: 0,
            answered: 0,
            skipped: 0,
            timeout: 0,
            open: 0,
            completeness: None,
        }
    }
}

/// What the engine broadcasts to subscribers (the SSE stream, the MQTT channel).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptEvent {
    /// A prompt opened.
    Prompt(PromptView),
    /// A prompt closed.
    Resolved {
        /// The prompt's id.
        id: String,
        /// Its counter.
        station: String,
        /// How it ended.
        outcome: Outcome,
        /// The option key, when answered.
        answer: Option<String>,
    },
    /// A station's figures changed (after each open and resolution, and at midnight).
    Stats(StationToday),
}

impl PromptEvent {
    /// The station the event is about.
    pub fn station(&self) -> &str {
        match self {
            PromptEvent::Prompt(prompt) => &prompt.station,
            PromptEvent::Resolved { station, .. } => station,
            PromptEvent::Stats(today) => &today.station,
        }
    }
}

/// Why a prompt request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// No open or recently resolved prompt has this id (HTTP 404).
    #[error("unknown prompt")]
    NotFound,
    /// The prompt was already answered, skipped or timed out (HTTP 409).
    #[error("prompt already resolved")]
    AlreadyResolved,
    /// The prompt does not offer this option (HTTP 422).
    #[error("option '{0}' is not offered by this prompt")]
    OptionNotOffered(String),
    /// A skip needs a reason (HTTP 422).
    #[error("skip reason is empty")]
    EmptyReason,
    /// `open` named a campaign that is not configured (a caller bug; HTTP 422).
    #[error("unknown campaign '{0}'")]
    UnknownCampaign(String),
    /// The engine is stopped, or the journal refused the record (HTTP 503).
    #[error("prompt engine unavailable: {0}")]
    Unavailable(String),
}
