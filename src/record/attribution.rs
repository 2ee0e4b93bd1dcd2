//! The `data` of an `attribution` record (docs/records.md): one per prompt, written by the
//! prompt engine when it closes, whatever the outcome; and the two enums it names, which the
//! engine's API uses too.
//!
//! Its serde form is the contract: timestamps are RFC 3339 store-local time with offset and
//! milliseconds (`2026-11-27T16:01:02.345+08:00`), enums are lowercase strings, absent values
//! are `null`.

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use super::local_millis;

/// How a prompt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The clerk picked one of the options.
    Answered,
    /// The clerk dismissed it, giving a reason.
    Skipped,
    /// Nobody answered before `expires_at`.
    Timeout,
}

impl Outcome {
    /// The contract's name for it (also the `posgw_prompts_total` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Skipped => "skipped",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The clerk page or the local API.
    Web,
    /// An answer card scanned at the station (`[answer_codes]`).
    Card,
    /// The MQTT prompt channel (`posgw/{store}/{station}/answer`).
    Mqtt,
}

impl Channel {
    /// The contract's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Card => "card",
            Channel::Mqtt => "mqtt",
        }
    }
}

/// The `data` of an `attribution` record (docs/records.md): one per prompt, written when it
/// closes, whatever the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributionData {
    /// The prompt's id.
    pub prompt: String,
    /// The campaign that asked.
    pub campaign: String,
    /// The counter it was shown at.
    pub station: String,
    /// The scanned product code that opened it.
    pub sku: String,
    /// Id of the `scan` record that opened it.
    pub scan: String,
    /// The question asked.
    pub question: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The option key picked, when answered.
    pub answer: Option<String>,
    /// That option's label, when answered.
    pub answer_label: Option<String>,
    /// Where the answer came from, when answered.
    pub channel: Option<Channel>,
    /// The clerk who answered or skipped, when known.
    pub clerk: Option<String>,
    /// When the prompt opened.
    #[serde(with = "local_millis")]
    pub opened_at: DateTime<Local>,
    /// When it closed; for a timeout exactly `expires_at`.
    #[serde(with = "local_millis")]
    pub resolved_at: DateTime<Local>,
    /// `resolved_at - opened_at` in milliseconds.
    pub latency_ms: i64,
    /// Why it was skipped, when skipped.
    pub skip_reason: Option<String>,
    /// The sale it belongs to, when known at resolution (always null until sales are linked).
    pub receipt: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn attribution_serialises_every_contract_field() {
        let opened = Local
            .with_ymd_and_hms(2026, 11, 27, 16, 1, 2)
            .single()
            .expect("time");
        let data = AttributionData {
            prompt: "abc".into(),
            campaign: "c".into(),
            station: "till-1".into(),
            sku: "6901234567892".into(),
            scan: "S/g/e/1".into(),
            question: "q".into(),
            outcome: Outcome::Timeout,
            answer: None,
            answer_label: None,
            channel: None,
            clerk: None,
            opened_at: opened,
            resolved_at: opened + chrono::Duration::milliseconds(1500),
            latency_ms: 1500,
            skip_reason: None,
            receipt: None,
        };
        let value = serde_json::to_value(&data).expect("serialise");
        let object = value.as_object().expect("object");
        for field in [
            "prompt",
            "campaign",
            "station",
            "sku",
            "scan",
            "question",
            "outcome",
            "answer",
            "answer_label",
            "channel",
            "clerk",
            "opened_at",
            "resolved_at",
            "latency_ms",
            "skip_reason",
            "receipt",
        ] {
            assert!(object.contains_key(field), "missing {field}");
        }
        assert_eq!(object.len(), 16);
        assert_eq!(value["outcome"], "timeout");
        assert!(value["answer"].is_null());
        let resolved = value["resolved_at"].as_str().expect("string");
        assert!(resolved.contains("16:01:03.500"), "{resolved}");
        let back: AttributionData = serde_json::from_value(value).expect("round trip");
        assert_eq!(back, data);
    }

    #[test]
    fn channel_and_outcome_names() {
        assert_eq!(
            serde_json::to_string(&Channel::Card).expect("json"),
            "\"card\""
        );
        assert_eq!(Channel::Mqtt.as_str(), "mqtt");
        assert_eq!(Outcome::Skipped.as_str(), "skipped");
    }
}
