//! The record envelope (docs/records.md): record kinds, writing a record's JSON bytes
//! once, and reading back the few envelope fields the journal itself needs.
//!
//! Records are encoded exactly once, when appended, and the bytes are what `journal dump` prints
//! and what HQ receives. The encoder writes the envelope by hand in the contract's field order
//! (`id, store, gateway, epoch, seq, ts, clock, kind, data`) around the caller's
//! already-serialised `data`, so appending never re-parses or re-encodes the payload.

use std::borrow::Cow;

use bytes::Bytes;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::clock::ClockStamp;
use super::JournalError;

/// A record's `data`, serialised: one JSON object (checked when it is appended), stored as is.
/// Made without copying the text, and cloned without copying it either (a caller keeps a clone
/// to log a record the journal refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data(Bytes);

impl Data {
    /// Serialises `value`, which must serialise to a JSON object.
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Data, JournalError> {
        serde_json::to_vec(value)
            .map(|json| Data(json.into()))
            .map_err(|err| JournalError::InvalidData(err.to_string()))
    }

    /// JSON text one of this crate's hand-written encoders wrote (their tests check the text
    /// against serde's): taken as it is, without parsing it again.
    pub(crate) fn from_encoded(json: String) -> Data {
        Data(json.into())
    }

    /// The JSON text's bytes (UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text, for messages and tests.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<Box<RawValue>> for Data {
    fn from(raw: Box<RawValue>) -> Data {
        Data(String::from(Box::<str>::from(raw)).into())
    }
}

/// What a record is about; the `kind` field of the envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A barcode scan.
    Scan,
    /// A sale from a register.
    Sale,
    /// The outcome of an attribution prompt.
    Attribution,
    /// A device event (connected, disconnected, bad frame, error).
    Device,
    /// A gateway event (started, stopped, journal_replaced, ...).
    Gateway,
    /// A consultation that closed (every step of its flow, its scans and its sale).
    Consultation,
    /// One step of an open consultation done or skipped.
    #[serde(rename = "consultation_step")]
    ConsultationStep,
}

impl Kind {
    /// Every kind, in a fixed order (the order of per-kind counters).
    pub const ALL: [Kind; 7] = [
        Kind::Scan,
        Kind::Sale,
        Kind::Attribution,
        Kind::Device,
        Kind::Gateway,
        Kind::Consultation,
        Kind::ConsultationStep,
    ];

    /// The wire name (`"scan"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Scan => "scan",
            Kind::Sale => "sale",
            Kind::Attribution => "attribution",
            Kind::Device => "device",
            Kind::Gateway => "gateway",
            Kind::Consultation => "consultation",
            Kind::ConsultationStep => "consultation_step",
        }
    }

    /// Position of this kind in [`Kind::ALL`].
    pub fn index(self) -> usize {
        match self {
            Kind::Scan => 0,
            Kind::Sale => 1,
            Kind::Attribution => 2,
            Kind::Device => 3,
            Kind::Gateway => 4,
            Kind::Consultation => 5,
            Kind::ConsultationStep => 6,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes record envelopes for one journal (fixed store, gateway and epoch).
#[derive(Debug, Clone)]
pub(crate) struct RecordEncoder {
    /// `{"id":"STORE/GW/EPOCH/` with JSON escaping applied (escaping is per character, so the
    /// escaped prefix followed by the digits of `seq` is the escaped id).
    id_prefix: Vec<u8>,
    /// `","store":"…","gateway":"…","epoch":"…","seq":`.
    middle: Vec<u8>,
    /// `STORE/GW/EPOCH/` unescaped, for building ids as strings.
    id_text_prefix: String,
}

impl RecordEncoder {
    /// Prepares the constant parts of the envelope.
    pub(crate) fn new(store: &str, gateway: &str, epoch: &str) -> Self {
        let id_prefix_text = format!("{store}/{gateway}/{epoch}/");
        let escaped = json_string(&id_prefix_text);
        let mut id_prefix = b"{\"id\":".to_vec();
        // Drop the closing quote: the seq digits and the quote follow at encode time.
        id_prefix.extend_from_slice(&escaped.as_bytes()[..escaped.len() - 1]);
        let middle = format!(
            "\",\"store\":{},\"gateway\":{},\"epoch\":{},\"seq\":",
            json_string(store),
            json_string(gateway),
            json_string(epoch)
        )
        .into_bytes();
        Self {
            id_prefix,
            middle,
            id_text_prefix: id_prefix_text,
        }
    }

    /// The record's id for `seq`.
    pub(crate) fn id(&self, seq: u64) -> String {
        format!("{}{seq}", self.id_text_prefix)
    }

    /// `STORE/GW/EPOCH/`: every id of this journal is this followed by the seq.
    pub(crate) fn id_prefix(&self) -> &str {
        &self.id_text_prefix
    }

    /// What follows the seq in every record appended together (one clock stamp, one kind):
    /// `,"ts":…,"clock":{…},"kind":…,"data":`. Formatted once per append, not per record.
    pub(crate) fn head(stamp: &ClockStamp, boot_json: &str, kind: Kind) -> String {
        format!(
            ",\"ts\":\"{}\",\"clock\":{{\"boot\":{boot_json},\"mono_ms\":{},\"synced\":{}}},\"kind\":\"{}\",\"data\":",
            stamp.ts(),
            stamp.mono_ms,
            stamp.synced,
            kind.as_str()
        )
    }

    /// Writes the full record into `out` (cleared first); `head` from [`RecordEncoder::head`].
    pub(crate) fn encode(&self, out: &mut Vec<u8>, seq: u64, head: &str, data: &[u8]) {
        out.clear();
        out.reserve(self.id_prefix.len() + self.middle.len() + 40 + head.len() + data.len());
        let mut digits = itoa::Buffer::new();
        let seq = digits.format(seq).as_bytes();
        out.extend_from_slice(&self.id_prefix);
        out.extend_from_slice(seq);
        out.extend_from_slice(&self.middle);
        out.extend_from_slice(seq);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(data);
        out.push(b'}');
    }
}

/// `text` as a JSON string literal, quotes included.
pub(crate) fn json_string(text: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}

/// Checks that `data` is a JSON object, as the contract requires of every record's `data`.
pub(crate) fn check_data_is_object(data: &[u8]) -> Result<(), String> {
    if data.trim_ascii_start().starts_with(b"{") {
        Ok(())
    } else {
        Err(format!(
            "expected a json object, got `{}`",
            String::from_utf8_lossy(data)
                .chars()
                .take(40)
                .collect::<String>()
        ))
    }
}

/// The envelope fields the journal reads back from stored bytes (the rest, `data` included, is
/// skipped by serde without being kept).
#[derive(Debug, Deserialize)]
pub struct RecordHead<'a> {
    /// `STORE/GW/EPOCH/SEQ`.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The epoch of the journal that wrote the record.
    #[serde(borrow, default)]
    pub epoch: Option<Cow<'a, str>>,
    /// The record's sequence number within its epoch.
    #[serde(default)]
    pub seq: Option<u64>,
    /// The local time the record was written.
    #[serde(borrow, default)]
    pub ts: Option<Cow<'a, str>>,
    /// The record's kind (`"scan"`, ...).
    #[serde(borrow, default)]
    pub kind: Option<Cow<'a, str>>,
}

impl<'a> RecordHead<'a> {
    /// Parses the envelope of a stored record; `None` when the bytes are not a record with an id.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::clock::Clock;

    #[test]
    fn encodes_a_contract_record_in_field_order() {
        let encoder = RecordEncoder::new("WZ-LC-001", "gw-1", "7f3a9c21");
        let stamp = Clock::new().stamp();
        let boot_json = json_string(&stamp.boot);
        let data = r#"{"device":"scanner-1","code":"690"}"#;
        let mut out = Vec::new();
        let head = RecordEncoder::head(&stamp, &boot_json, Kind::Scan);
        encoder.encode(&mut out, 42, &head, data.as_bytes());
        let text = std::str::from_utf8(&out).expect("utf-8");
        assert!(
            text.starts_with(
                r#"{"id":"WZ-LC-001/gw-1/7f3a9c21/42","store":"WZ-LC-001","gateway":"gw-1","epoch":"7f3a9c21","seq":42,"ts":""#
            ),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(text).expect("valid json");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        // serde_json's map is sorted unless preserve_order; check presence instead of order here,
        // the prefix assertion above covers the order of the leading fields.
        for key in [
            "id", "store", "gateway", "epoch", "seq", "ts", "clock", "kind", "data",
        ] {
            assert!(keys.contains(&key), "missing {key} in {text}");
        }
        assert_eq!(value["kind"], "scan");
        assert_eq!(value["data"]["code"], "690");
        assert_eq!(value["clock"]["boot"], stamp.boot.as_ref());
        assert_eq!(value["clock"]["mono_ms"], stamp.mono_ms);
        assert_eq!(value["clock"]["synced"], stamp.synced);
        assert_eq!(encoder.id(42), "WZ-LC-001/gw-1/7f3a9c21/42");
        let head = RecordHead::parse(&out).expect("head");
        assert_eq!(head.id, "WZ-LC-001/gw-1/7f3a9c21/42");
        assert_eq!(head.seq, Some(42));
        assert_eq!(head.epoch.as_deref(), Some("7f3a9c21"));
    }

    #[test]
    fn escapes_odd_gateway_names() {
        let encoder = RecordEncoder::new("S", "gw\"1\\x", "00000000");
        let stamp = Clock::new().stamp();
        let mut out = Vec::new();
        let head = RecordEncoder::head(&stamp, "\"b\"", Kind::Gateway);
        encoder.encode(&mut out, 1, &head, b"{}");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(value["id"], "S/gw\"1\\x/00000000/1");
        assert_eq!(value["gateway"], "gw\"1\\x");
        assert_eq!(encoder.id(1), "S/gw\"1\\x/00000000/1");
    }

    #[test]
    fn rejects_non_object_data() {
        assert!(check_data_is_object(b"[1]").is_err());
        assert!(check_data_is_object(b" {}").is_ok());
    }

    #[test]
    fn head_parse_rejects_non_records() {
        assert!(RecordHead::parse(b"not json").is_none());
        assert!(RecordHead::parse(br#"{"seq":1}"#).is_none());
        assert!(RecordHead::parse(br#"{"id":"a/b/c/1"}"#).is_some());
    }
}
