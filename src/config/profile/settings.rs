//! A device profile once validated: [`Profile`] and the settings it is made of (serial line,
//! framing, MQTT payload, ESC/POS decoding), and [`ProfileSet`], every profile known by name.
//! What each key means and its default is in the module doc of `profile`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::device_kind::{Role, Transport};
use crate::decode::escpos::{self, Patterns, TextEncoding};

/// Every profile known, by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    /// Profiles by name; a `BTreeMap` so listings come out sorted.
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl ProfileSet {
    /// The profile of that name.
    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.profiles.get(name).cloned()
    }

    /// Every profile name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// Every profile, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.profiles.values()
    }

    /// Adds a profile, replacing one of the same name (a `drivers.d/` file over a built-in).
    pub(super) fn insert(&mut self, profile: Profile) {
        self.profiles
            .insert(profile.name.clone(), Arc::new(profile));
    }
}

/// One device profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name devices refer to it by (`generic-scanner`).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Roles a device using it may have.
    pub roles: Vec<Role>,
    /// Transports a device using it may use.
    pub transports: Vec<Transport>,
    /// What turns a frame or message into records.
    pub decoder: DecoderKind,
    /// Serial line defaults (a device may override `baud`).
    pub line: LineSettings,
    /// How a serial byte stream is cut into frames.
    pub framing: FramingSettings,
    /// How an MQTT payload is read.
    pub payload: PayloadSettings,
    /// ESC/POS decoding settings; `Some` exactly when `decoder` is `Escpos`.
    pub escpos: Option<EscposSettings>,
    /// Whether a device using this profile must set `passthrough` (a printer tap would otherwise eat receipts).
    pub requires_passthrough: bool,
    /// Where it came from: `built-in` or the file path.
    pub source: String,
}

impl Profile {
    /// Whether a device with this role may use the profile.
    pub fn supports_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether a device with this transport may use the profile.
    pub fn supports_transport(&self, transport: Transport) -> bool {
        self.transports.contains(&transport)
    }
}

/// What turns a frame or message into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// Scanned codes: AIM identifier, GS1, traceability codes -> `scan` records.
    Scan,
    /// One JSON sale per frame or message -> `sale` records.
    JsonSale,
    /// ESC/POS printer stream -> one `sale` record per paper cut.
    Escpos,
}

impl DecoderKind {
    /// The profile spelling: `scan`, `json-sale` or `escpos`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecoderKind::Scan => "scan",
            DecoderKind::JsonSale => "json-sale",
            DecoderKind::Escpos => "escpos",
        }
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// Serial line settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSettings {
    /// Bits per second.
    pub baud: u32,
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
}

impl Default for LineSettings {
    /// 9600 8N1, no flow control: what most scanners ship with.
    fn default() -> Self {
        LineSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        }
    }
}

/// How a serial byte stream is cut into frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingSettings {
    /// CR ends a frame (CR LF counts once when `lf` is also set).
    pub cr: bool,
    /// LF ends a frame.
    pub lf: bool,
    /// A custom terminator, when set; never empty.
    pub suffix: Option<Vec<u8>>,
    /// Removed from the start of a frame when present; never empty.
    pub strip_prefix: Option<Vec<u8>>,
    /// A frame also ends after this much silence; `None` when disabled ("0s").
    pub idle_gap: Option<Duration>,
    /// Longest frame in bytes; longer input is reported as a bad frame.
    pub max_frame: usize,
}

impl Default for FramingSettings {
    /// CR, LF or CR LF terminated, no idle gap, 4096-byte frames.
    fn default() -> Self {
        FramingSettings {
            cr: true,
            lf: true,
            suffix: None,
            strip_prefix: None,
            idle_gap: None,
            max_frame: 4096,
        }
    }
}

/// How an MQTT payload is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadSettings {
    /// Plain text, JSON, or decide per message.
    pub format: PayloadFormat,
    /// JSON field holding the scanned data (AIM identifier included when sent).
    pub code_field: String,
    /// JSON field holding the AIM identifier when sent apart.
    pub symbology_field: String,
}

impl Default for PayloadSettings {
    /// Auto-detected, fields `code` and `symbology` (docs/configuration.md's mqtt-scanner).
    fn default() -> Self {
        PayloadSettings {
            format: PayloadFormat::Auto,
            code_field: "code".into(),
            symbology_field: "symbology".into(),
        }
    }
}

/// What an MQTT payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// A JSON object when it parses as one, else plain text.
    Auto,
    /// Always plain text.
    Text,
    /// Always JSON.
    Json,
}

/// ESC/POS receipt decoding.
#[derive(Debug, Clone)]
pub struct EscposSettings {
    /// Text encoding of bytes >= 0x80 in Chinese mode.
    pub encoding: TextEncoding,
    /// Whether Chinese mode (`FS &`) is on at start.
    pub chinese_mode: bool,
    /// Whether CR alone ends a line (otherwise CR is ignored).
    pub cr_ends_line: bool,
    /// Printer bytes after which a receipt that never saw a cut is closed; also the longest
    /// image or other command payload trusted (a longer length is taken as garbled).
    pub max_receipt: usize,
    /// Silence after which a receipt that never saw a cut is closed.
    pub receipt_timeout: Duration,
    /// Patterns that pull fields out of the decoded lines.
    pub patterns: Patterns,
}

impl From<&EscposSettings> for escpos::Options {
    /// What the decoder needs of `[escpos]` (the timeout and patterns are for its caller).
    fn from(settings: &EscposSettings) -> Self {
        escpos::Options {
            encoding: settings.encoding,
            chinese_mode: settings.chinese_mode,
            cr_ends_line: settings.cr_ends_line,
            max_receipt: settings.max_receipt,
        }
    }
}

impl Default for EscposSettings {
    /// The documented defaults of `[escpos]`: GB18030, Chinese mode on, CR ignored, 256KiB, 60s,
    /// no patterns.
    fn default() -> Self {
        let decoder = escpos::Options::default();
        EscposSettings {
            encoding: decoder.encoding,
            chinese_mode: decoder.chinese_mode,
            cr_ends_line: decoder.cr_ends_line,
            max_receipt: decoder.max_receipt,
            receipt_timeout: Duration::from_secs(60),
            patterns: Patterns::default(),
        }
    }
}
