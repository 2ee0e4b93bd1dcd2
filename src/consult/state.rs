//! The open consultations saved across restarts: `data_dir/consultations.state`, JSON, replaced
//! atomically after every change (the same way as the prompt engine's state), written only
//! after the records of that change are durable.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use super::flow::{Flow, Flows, Step};
use super::model::{Consultation, ReleasedBy, StepRecord};
use crate::record::local_millis;

/// File name of the state inside `data_dir`.
pub const STATE_FILE: &str = "consultations.state";

/// Version of the format below.
const VERSION: u32 = 1;

/// The file's content.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    open: Vec<SavedConsultation>,
}

/// One open consultation as saved: enough to resume it, or to write its record when its flow
/// is gone from the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedConsultation {
    id: String,
    flow: String,
    station: String,
    clerk: Option<String>,
    customer: Option<String>,
    #[serde(with = "local_millis")]
    opened_at: DateTime<Local>,
    steps: Vec<StepRecord>,
    scans: Vec<String>,
    #[serde(default)]
    scans_more: u64,
    receipt: Option<String>,
    #[serde(with = "crate::record::consultation::optional_millis")]
    held_since: Option<DateTime<Local>>,
    held_ms: Option<u64>,
    released_by: Option<ReleasedBy>,
}

impl From<&Consultation> for SavedConsultation {
    fn from(consultation: &Consultation) -> Self {
        let record = consultation.record(super::model::Outcome::Incomplete, consultation.opened_at);
        SavedConsultation {
            id: record.id,
            flow: record.flow,
            station: record.station,
            clerk: record.clerk,
            customer: record.customer,
            opened_at: record.opened_at,
            steps: record.steps,
            scans: record.scans,
            scans_more: record.scans_more,
            receipt: record.receipt,
            held_since: consultation.held_since,
            held_ms: record.held_ms,
            released_by: record.released_by,
        }
    }
}

impl SavedConsultation {
    /// The consultation again, under its flow as configured now when its steps are still the
    /// same; otherwise under the flow it was saved with (its keys and labels, no lists).
    pub fn into_consultation(self, flows: &Flows) -> Consultation {
        let keys: Vec<&str> = self.steps.iter().map(|step| step.key.as_str()).collect();
        let flow = flows
            .get(&self.flow)
            .filter(|flow| {
                flow.steps
                    .iter()
                    .map(|step| step.key.as_str())
                    .eq(keys.iter().copied())
            })
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Flow {
                    id: self.flow.clone(),
                    name: self.flow.clone(),
                    skus: Vec::new(),
                    steps: self
                        .steps
                        .iter()
                        .map(|step| Step {
                            key: step.key.clone(),
                            label: step.label.clone(),
                            choose: Vec::new(),
                            multi: false,
                            auto: None,
                        })
                        .collect(),
                    skip_reasons: Vec::new(),
                    hold: None,
                    hold_timeout: Duration::ZERO,
                    timeout: Duration::ZERO,
                })
            });
        Consultation {
            id: self.id,
            station: self.station,
            clerk: self.clerk,
            customer: self.customer,
            opened_at: self.opened_at,
            steps: self.steps.into_iter().map(|step| step.state).collect(),
            flow,
            scans: self.scans,
            scans_more: self.scans_more,
            receipt: self.receipt,
            held_since: self.held_since,
            held_ms: self.held_ms,
            released_by: self.released_by,
        }
    }
}

/// Replaces the state file with `open`.
pub async fn save(path: &Path, open: &[SavedConsultation]) -> Result<(), String> {
    let bytes = serde_json::to_vec(&Saved {
        version: VERSION,
        open: open.to_vec(),
    })
    .map_err(|error| error.to_string())?;
    let target = path.to_owned();
    tokio::task::spawn_blocking(move || crate::prompts::replace_file(&target, &bytes))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("cannot save {}: {error}", path.display()))
}

/// The saved consultations; none when there is no file. An unreadable file is an error the
/// caller logs (starting empty then: the records already in the journal are what counts).
pub fn load(path: &Path) -> Result<Vec<SavedConsultation>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let saved: Saved = serde_json::from_slice(&bytes)
        .map_err(|error| format!("{} is not a consultation state: {error}", path.display()))?;
    if saved.version != VERSION {
        return Err(format!(
            "{} has format version {}, this gateway reads {VERSION}",
            path.display(),
            saved.version
        ));
    }
    Ok(saved.open)
}
