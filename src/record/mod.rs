//! The record format (docs/records.md): the envelope every record shares and, one file per
//! kind, what each kind's `data` holds, with its serde form and, where the rate calls for one,
//! a hand-written encoder checked against serde.
//!
//! This module owns the bytes' shape; the journal stores them (with their [`Kind`]) and reads
//! back only [`RecordHead`], while salvage and HQ read records back through [`Envelope`] (HQ
//! requiring more of it, in `hq::record`).
//! It imports nothing from the modules that write or read records (journal, core, prompts, hq,
//! config), so each of them can depend on it.
//!
//! Records are encoded exactly once, when appended, and the bytes are what `journal dump` prints
//! and what HQ receives. The encoder writes the envelope by hand in the contract's field order
//! (`id, store, gateway, epoch, seq, ts, clock, kind, data`) around the caller's
//! already-serialised `data`, so appending never re-parses or re-encodes the payload.
//!
//! # Adding a kind
//!
//! A new kind (a `consultation`, say) gets its own file here with its `data` type and serde
//! form (and tests that pin its fields), a [`Kind`] variant (with its wire name in
//! [`Kind::as_str`], a place in [`Kind::ALL`] and [`Kind::index`]: per-kind counters follow
//! them), and a paragraph in docs/records.md. HQ stores and counts kinds it does not know, so it
//! needs nothing unless it reads the new kind's `data`.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Local};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

pub mod attribution;
pub mod consultation;
pub mod device;
pub mod gateway;
pub mod sale;
pub mod scan;

/// Characters of prompt and consultation ids: lowercase base32 without `i l o u`, URL-safe and
/// unambiguous.
const SHORT_ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Length of prompt and consultation ids: 50 random bits.
const SHORT_ID_LENGTH: usize = 10;

/// A fresh id for a prompt or a consultation (`prompt`, `consultation` in records): 10
/// characters of [`SHORT_ID_ALPHABET`], drawn again while `taken` says it is in use.
pub fn short_id(taken: impl Fn(&str) -> bool) -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    loop {
        let id: String = (0..SHORT_ID_LENGTH)
            .map(|_| char::from(SHORT_ID_ALPHABET[rng.gen_range(0..SHORT_ID_ALPHABET.len())]))
            .collect();
        if !taken(&id) {
            return id;
        }
    }
}

/// A record's `data`, serialised: one JSON object (checked when it is appended), stored as is.
/// Made without copying the text, and cloned without copying it either (a caller keeps a clone
/// to log a record the journal refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data(Bytes);

impl Data {
    /// Serialises `value`, which must serialise to a JSON object.
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Data, InvalidData> {
        serde_json::to_vec(value)
            .map(|json| Data(json.into()))
            .map_err(|err| InvalidData(err.to_string()))
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

/// Why a record's `data` could not be serialised; the journal reports it as its own
/// `JournalError::InvalidData`, with the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record data is invalid: {0}")]
pub struct InvalidData(pub String);

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

/// The clock facts stamped into a record's `clock` object (plus the wall time for `ts`); the
/// journal's clock (`journal::clock`) takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockStamp {
    /// Local wall time with the UTC offset in force at that moment.
    pub wall: DateTime<Local>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), or `"unknown"`.
    pub boot: Arc<str>,
    /// Milliseconds since boot from `CLOCK_BOOTTIME` (counts time spent suspended).
    pub mono_ms: u64,
    /// Whether the kernel considered the system clock synchronised (per `adjtimex`).
    pub synced: bool,
}

impl ClockStamp {
    /// The record's `ts` field: RFC 3339 local time, millisecond precision, numeric offset
    /// (`2026-11-27T16:01:02.345+08:00`; UTC is written `+00:00`, never `Z`).
    pub fn ts(&self) -> String {
        local_millis::format(&self.wall)
    }
}

/// Serde for `DateTime<Local>` as RFC 3339 with milliseconds and a numeric offset: the form of
/// the envelope's `ts` and of the times in a record's `data`.
pub(crate) mod local_millis {
    use chrono::{DateTime, Local, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    /// `2026-11-27T16:01:02.345+08:00`.
    pub fn format(time: &DateTime<Local>) -> String {
        time.to_rfc3339_opts(SecondsFormat::Millis, false)
    }

    /// Writes `time` as [`format`] does.
    pub fn serialize<S: Serializer>(
        time: &DateTime<Local>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    /// Reads any RFC 3339 time, as local time.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Local>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Local))
            .map_err(|error| serde::de::Error::custom(format!("bad timestamp '{text}': {error}")))
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

/// A record's envelope read back whole, `data` as its raw JSON text: what salvage takes for a
/// record and what HQ validates. Fields beyond these (`clock`, future ones) are allowed.
///
/// `id`, `epoch`, `seq`, `kind` and `data` must be there: bytes without them are not a record.
/// `store`, `gateway` and `ts` may be missing (salvage recovers a record by id, epoch and seq
/// alone); HQ refuses a record without them.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// `STORE/GW/EPOCH/SEQ`.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The store code.
    #[serde(borrow, default, deserialize_with = "optional_text")]
    pub store: Option<Cow<'a, str>>,
    /// The gateway id.
    #[serde(borrow, default, deserialize_with = "optional_text")]
    pub gateway: Option<Cow<'a, str>>,
    /// The epoch of the journal that wrote the record.
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    /// The record's sequence number within its epoch.
    pub seq: u64,
    /// The local time the record was written (RFC 3339).
    #[serde(borrow, default, deserialize_with = "optional_text")]
    pub ts: Option<Cow<'a, str>>,
    /// The record's kind (`"scan"`, ...; kinds this build does not know are kept as text).
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// The kind's `data`, unparsed.
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// Added by HQ when it serves records back; a gateway never writes it.
    #[serde(default)]
    pub hq_seq: Option<IgnoredAny>,
}

/// An optional string, borrowed from the input when it holds no escapes (serde's `borrow`
/// does not reach a `Cow` inside an `Option`, so this does it).
fn optional_text<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    /// A string, borrowed where it can be.
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'de>>::deserialize(deserializer)?.map(|Text(text)| text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp as the journal's clock takes one.
    fn stamp() -> ClockStamp {
        ClockStamp {
            wall: Local::now(),
            boot: "6d1f0e0c-0000-4000-8000-000000000000".into(),
            mono_ms: 123_456,
            synced: true,
        }
    }

    #[test]
    fn encodes_a_contract_record_in_field_order() {
        let encoder = RecordEncoder::new("WZ-LC-001", "gw-1", "7f3a9c21");
        let stamp = stamp();
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
        let stamp = stamp();
        let mut out = Vec::new();
        let head = RecordEncoder::head(&stamp, "\"b\"", Kind::Gateway);
        encoder.encode(&mut out, 1, &head, b"{}");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        assert_eq!(value["id"], "S/gw\"1\\x/00000000/1");
        assert_eq!(value["gateway"], "gw\"1\\x");
        assert_eq!(encoder.id(1), "S/gw\"1\\x/00000000/1");
    }

    #[test]
    fn ts_has_millis_and_numeric_offset() {
        let ts = stamp().ts();
        // 2026-11-27T16:01:02.345+08:00 is 29 characters.
        assert_eq!(ts.len(), 29, "{ts}");
        assert_eq!(&ts[19..20], ".");
        assert_eq!(ts.as_bytes()[26], b':', "{ts}");
        assert!(matches!(ts.as_bytes()[23], b'+' | b'-'), "{ts}");
        assert!(DateTime::parse_from_rfc3339(&ts).is_ok());
    }

    #[test]
    fn rejects_non_object_data() {
        assert!(check_data_is_object(b"[1]").is_err());
        assert!(check_data_is_object(b" {}").is_ok());
    }

    /// The small kinds' `data`, field for field in the contract's order.
    #[test]
    fn device_and_gateway_data_keep_the_contract_field_order() {
        let device = device::DeviceData {
            device: "till-1-scanner",
            event: "bad_frame",
            detail: "binary noise: \\x00",
        };
        let gateway = gateway::GatewayData {
            event: "started",
            version: "1.2.3",
            detail: "config /etc/posgw/posgw.toml; 2 device(s)",
        };
        assert_eq!(
            [
                serde_json::to_string(&device).expect("json"),
                serde_json::to_string(&gateway).expect("json"),
            ],
            [
                r#"{"device":"till-1-scanner","event":"bad_frame","detail":"binary noise: \\x00"}"#,
                r#"{"event":"started","version":"1.2.3","detail":"config /etc/posgw/posgw.toml; 2 device(s)"}"#,
            ]
        );
    }

    #[test]
    fn envelope_borrows_its_text_and_leaves_the_optional_fields_optional() {
        let line = br#"{"id":"S/g/e/1","store":"S","gateway":"g","epoch":"e","seq":1,"ts":"t","clock":{},"kind":"scan","data":{"a":1}}"#;
        let envelope: Envelope = serde_json::from_slice(line).expect("envelope");
        assert!(matches!(envelope.store, Some(Cow::Borrowed("S"))));
        assert!(matches!(envelope.gateway, Some(Cow::Borrowed("g"))));
        assert!(matches!(envelope.ts, Some(Cow::Borrowed("t"))));
        assert_eq!(envelope.data.get(), r#"{"a":1}"#);
        assert!(envelope.hq_seq.is_none());
        let bare: Envelope =
            serde_json::from_slice(br#"{"id":"a","epoch":"e","seq":1,"kind":"scan","data":{}}"#)
                .expect("envelope");
        assert_eq!((bare.store, bare.gateway, bare.ts), (None, None, None));
        let escaped: Envelope = serde_json::from_slice(
            br#"{"id":"a","store":"S\"1","epoch":"e","seq":1,"kind":"scan","data":{}}"#,
        )
        .expect("envelope");
        assert!(matches!(escaped.store, Some(Cow::Owned(ref store)) if store == "S\"1"));
    }

    #[test]
    fn head_parse_rejects_non_records() {
        assert!(RecordHead::parse(b"not json").is_none());
        assert!(RecordHead::parse(br#"{"seq":1}"#).is_none());
        assert!(RecordHead::parse(br#"{"id":"a/b/c/1"}"#).is_some());
    }
}
