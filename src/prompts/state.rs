//! The persisted open-prompt state: what survives a restart.
//!
//! Saved as one JSON document through [`PromptJournal::save_open_prompts`](super::PromptJournal)
//! after every change:
//!
//! ```json
//! {"version":1,
//!  "prompts":[{"id":"…","campaign":"…","station":"…","sku":"…","question":"…",
//!              "options":[{"key":"doctor","label":"医生推荐"}],
//!              "opened_at":"…","expires_at":"…","scan":"…",
//!              "linked":true,"receipt":"R-1001"}],
//!  "today":{"day":"2026-11-27","stations":{"till-1":{"opened":3,"answered":2,"skipped":0,"timeout":0}}}}
//! ```
//!
//! `prompts` lists every open prompt, station by station, oldest first, so restoring them in
//! order rebuilds each station's queue. A prompt carries its question and options, so it can be
//! answered after a restart even if its campaign was removed from the configuration meanwhile.
//! A document of another `version` is refused (the engine then starts empty and says so).

use serde::{Deserialize, Serialize};

use super::model::PromptView;
use super::today::Today;

/// The format version written by this build.
pub(crate) const VERSION: u32 = 1;

/// The whole persisted document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PersistedState {
    /// Always [`VERSION`] when written by this build.
    pub(crate) version: u32,
    /// Every open prompt, station by station, oldest first.
    pub(crate) prompts: Vec<PersistedPrompt>,
    /// Today's figures, so a restart does not zero the clerk's completeness.
    pub(crate) today: Today,
}

/// One open prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PersistedPrompt {
    /// The prompt as shown.
    #[serde(flatten)]
    pub(crate) view: PromptView,
    /// Id of the scan record that opened it.
    pub(crate) scan: String,
    /// The receipt of the sale linked to it (absent in files written before sales existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) receipt: Option<String>,
    /// Whether a sale line was linked to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) linked: bool,
}

impl PersistedState {
    /// Encodes the document.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Plain structs of strings and numbers always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a document written by this or an earlier build.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|error| format!("unreadable open-prompt state: {error}"))?;
        if version.version != VERSION {
            return Err(format!(
                "open-prompt state has version {}, this build reads version {VERSION}",
                version.version
            ));
        }
        serde_json::from_slice(bytes)
            .map_err(|error| format!("unreadable open-prompt state: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_versions_and_garbage() {
        assert!(PersistedState::decode(b"{\"version\":2,\"prompts\":[]}")
            .expect_err("version 2")
            .contains("version 2"));
        assert!(PersistedState::decode(b"not json").is_err());
    }
}
