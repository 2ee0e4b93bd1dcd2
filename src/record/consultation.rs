//! The `data` of a `consultation` record (written when a consultation closes) and of a
//! `consultation_step` record (each step done or skipped while it is open; docs/records.md).
//! `crate::consult` builds them.

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use super::local_millis;

/// How a consultation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every step done or skipped.
    Completed,
    /// Closed by the clerk with steps neither done nor skipped.
    Incomplete,
    /// Closed by the clerk as abandoned, or open past the flow's `timeout`.
    Abandoned,
}

/// Why a held scan reached the POS (or did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleasedBy {
    /// Every step before the `hold` step was done or skipped.
    Steps,
    /// `hold_timeout` passed first.
    Timeout,
    /// The consultation closed while the scan was held: released with it.
    Closed,
    /// The gateway stopped while the scan was held: released on the way out.
    Shutdown,
    /// The gateway died while the scan was held: it never reached the POS (the clerk scans it
    /// again; the scan record is in the journal).
    Restart,
}

/// What one step holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// When it was done or skipped; `None` while open.
    #[serde(with = "optional_millis")]
    pub at: Option<DateTime<Local>>,
    /// The value chosen (a single-choice step, or a scan's product code).
    pub value: Option<String>,
    /// The values chosen (a `multi` step).
    pub values: Option<Vec<String>>,
    /// The skip reason, when skipped.
    pub skipped: Option<String>,
    /// Who did it (`None` for automatic steps and anonymous clerks).
    pub clerk: Option<String>,
}

impl StepState {
    /// Done or skipped.
    pub fn settled(&self) -> bool {
        self.at.is_some()
    }
}

/// The `consultation` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsultationData {
    /// The consultation's id.
    pub id: String,
    /// The flow's id.
    pub flow: String,
    /// The counter.
    pub station: String,
    /// Who opened it.
    pub clerk: Option<String>,
    /// The customer's reference, or null.
    pub customer: Option<String>,
    /// When it opened.
    #[serde(with = "local_millis")]
    pub opened_at: DateTime<Local>,
    /// When it closed.
    #[serde(with = "local_millis")]
    pub closed_at: DateTime<Local>,
    /// How it closed.
    pub outcome: Outcome,
    /// One entry per configured step, in order.
    pub steps: Vec<StepRecord>,
    /// Ids of the flow products' scan records (the first 32).
    pub scans: Vec<String>,
    /// How many more scans of the flow's products there were, not listed (absent when none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scans_more: u64,
    /// The linked sale's receipt.
    pub receipt: Option<String>,
    /// How long the held scan waited, or null.
    pub held_ms: Option<u64>,
    /// Why the held scan went on, or null.
    pub released_by: Option<ReleasedBy>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// One step of a `consultation` record: the step's key and label, then what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its key.
    pub key: String,
    /// Its label.
    pub label: String,
    /// When it was done or skipped, its value(s), its skip reason and who did it.
    #[serde(flatten)]
    pub state: StepState,
}

/// The `consultation_step` record: one step change, durable before the clerk's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepChangeData {
    /// The consultation's id.
    pub consultation: String,
    /// The flow's id.
    pub flow: String,
    /// The counter.
    pub station: String,
    /// The step's key.
    pub key: String,
    /// What the step now holds.
    #[serde(flatten)]
    pub state: StepState,
}

/// Serde for `Option<DateTime<Local>>` as [`local_millis`] or null.
pub mod optional_millis {
    use chrono::{DateTime, Local};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<DateTime<Local>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_str(&super::local_millis::format(time)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Local>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        DateTime::parse_from_rfc3339(&text)
            .map(|time| Some(time.with_timezone(&Local)))
            .map_err(|error| serde::de::Error::custom(format!("bad timestamp '{text}': {error}")))
    }
}
