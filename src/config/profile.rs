//! Device profiles: what a kind of device speaks, as data.
//!
//! A profile says which roles and transports it serves, which decoder turns its frames or
//! messages into records, the serial line defaults, how a serial byte stream is cut into frames,
//! how an MQTT payload is read, and (for receipt-printer taps) how ESC/POS text is decoded and
//! mined. Profiles are TOML files: the ones in the repository's `drivers/` folder are built into
//! the binary ([`BUILT_IN`]); a `drivers.d/` folder beside the config file adds profiles or
//! replaces a built-in one of the same name.
//!
//! # Format
//!
//! ```toml
//! name = "generic-scanner"          # default: the file name without .toml
//! description = "…"
//! roles = ["scanner"]               # scanner | register (required)
//! transports = ["serial"]           # serial | mqtt | tcp (required; tcp: escpos only)
//! decoder = "scan"                  # scan | json-sale | escpos (required); scan needs the scanner
//!                                   #   role, json-sale and escpos the register role
//! requires_passthrough = false      # devices using it must set `passthrough` (a printer tap)
//!
//! [serial]                          # line defaults; only with the serial transport
//! baud = 9600                       # default 9600
//! data_bits = 8                     # 5..8, default 8
//! parity = "none"                   # none | odd | even, default none
//! stop_bits = 1                     # 1 | 2, default 1
//! flow_control = "none"             # none | software | hardware, default none
//!
//! [framing]                         # how serial bytes become frames; only with the serial transport
//! terminators = ["cr", "lf"]        # any of cr, lf (CR LF counts once); [] for none; default both
//! suffix = ""                       # a custom terminator; escapes \t \r \n \\ \xNN; default none
//! strip_prefix = ""                 # removed from the start of a frame when present; default none
//! idle_gap = "80ms"                 # a frame also ends after this much silence; "0s" (default) disables
//! max_frame = 4096                  # longest frame in bytes (or a size like "64KiB"); default 4096
//!
//! [payload]                         # how an MQTT message is read; only with the mqtt transport
//! format = "auto"                   # auto (JSON object when it parses as one, else text) | text | json
//! code_field = "code"               # JSON field with the scanned data (AIM id included), default "code"
//! symbology_field = "symbology"     # JSON field with the AIM id when sent apart, default "symbology"
//!
//! [escpos]                          # ESC/POS receipt decoding; only with decoder = "escpos"
//! encoding = "gb18030"              # gb18030 | utf-8, default gb18030
//! chinese_mode = true               # FS & assumed on at start, default true
//! cr_ends_line = false              # some registers end lines with CR alone, default false
//! max_receipt = "256KiB"            # a receipt without a cut is closed at this size (default 256KiB)
//! receipt_timeout = "60s"           # ... or after this much silence with text pending (default 60s)
//! [escpos.patterns]                 # regexes applied to each decoded line; all optional
//! receipt = 'No[.:：]\s*(\S+)'     # capture group 1 = receipt number
//! clerk = '收银员[:：]\s*(\S+)'     # capture group 1 = clerk
//! total = '合计[:：]?\s*([0-9.]+)'   # capture group 1 = total
//! line = '(?P<name>\S+)\s+(?P<qty>\d+)\s+(?P<amount>[0-9.]+)'  # named groups: sku name qty unit_price amount
//! ```
//!
//! Every section is optional and every key has a default, so a new kind of device is a new
//! file: adding `mqtt-scanner`, `json-register` or `escpos-tap` changes no existing profile.
//! Unknown keys and sections are errors, like in the config file.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::decode::escpos::{self, Patterns, TextEncoding};

use super::check;
use super::device_kind::{Role, Transport};
use super::source::{DurationText, Located, Report, SizeValue};
use super::units;

/// The profiles built into the binary: file name in `drivers/` and its text.
///
/// Add a line here for every new file in `drivers/`; the unit tests check that each parses.
pub(crate) const BUILT_IN: &[(&str, &str)] = &[
    (
        "generic-scanner.toml",
        include_str!("../../drivers/generic-scanner.toml"),
    ),
    (
        "escpos-tap.toml",
        include_str!("../../drivers/escpos-tap.toml"),
    ),
    (
        "mqtt-scanner.toml",
        include_str!("../../drivers/mqtt-scanner.toml"),
    ),
    (
        "json-register.toml",
        include_str!("../../drivers/json-register.toml"),
    ),
];

/// `[framing] idle_gap`: "0s" disables it; a minute of silence is no longer one frame.
const IDLE_GAP_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(60);
/// `[framing] max_frame`: frames are held in memory; 16MiB bounds a runaway device without
/// limiting any real one.
const MAX_FRAME_RANGE: RangeInclusive<u64> = 1..=16 * 1024 * 1024;
/// `[escpos] max_receipt`: a receipt is held in memory until its cut; 16MiB bounds a printer
/// stream gone wrong.
const MAX_RECEIPT_RANGE: RangeInclusive<u64> = 1024..=16 * 1024 * 1024;
/// `[escpos] receipt_timeout`.
const RECEIPT_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(24 * 3600);

/// Group separator: the GS1 field separator, never a frame boundary.
const GS: u8 = 0x1D;

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

    /// Only the built-in profiles (what a gateway without a `drivers.d/` folder knows).
    pub fn built_in() -> Result<ProfileSet, super::ConfigError> {
        let mut report = Report::default();
        let profiles = load_profiles(&mut report, None);
        report.finish(profiles)
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

/// Group names the `line` pattern may use.
const LINE_GROUPS: &[&str] = &["sku", "name", "qty", "unit_price", "amount"];

/// A profile file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    /// Profile name; default: file name without `.toml`.
    name: Option<Located<String>>,
    /// One line for people.
    description: Option<Located<String>>,
    /// Roles served.
    roles: Option<Located<Vec<Located<String>>>>,
    /// Transports served.
    transports: Option<Located<Vec<Located<String>>>>,
    /// Decoder name.
    decoder: Option<Located<String>>,
    /// Whether devices must set `passthrough`.
    requires_passthrough: Option<Located<bool>>,
    /// `[serial]`.
    serial: Option<Located<RawLine>>,
    /// `[framing]`.
    framing: Option<Located<RawFraming>>,
    /// `[payload]`.
    payload: Option<Located<RawPayload>>,
    /// `[escpos]`.
    escpos: Option<Located<RawEscpos>>,
}

/// `[serial]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    /// Baud rate.
    baud: Option<Located<i64>>,
    /// Data bits.
    data_bits: Option<Located<i64>>,
    /// Parity name.
    parity: Option<Located<String>>,
    /// Stop bits.
    stop_bits: Option<Located<i64>>,
    /// Flow control name.
    flow_control: Option<Located<String>>,
}

/// `[framing]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFraming {
    /// Terminator names.
    terminators: Option<Located<Vec<Located<String>>>>,
    /// Custom terminator with escapes.
    suffix: Option<Located<String>>,
    /// Prefix to strip, with escapes.
    strip_prefix: Option<Located<String>>,
    /// Idle gap duration.
    idle_gap: Option<DurationText>,
    /// Largest frame.
    max_frame: Option<SizeValue>,
}

/// `[payload]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    /// Format name.
    format: Option<Located<String>>,
    /// JSON field with the code.
    code_field: Option<Located<String>>,
    /// JSON field with the symbology.
    symbology_field: Option<Located<String>>,
}

/// `[escpos]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscpos {
    /// Encoding name.
    encoding: Option<Located<String>>,
    /// Chinese mode at start.
    chinese_mode: Option<Located<bool>>,
    /// CR ends a line.
    cr_ends_line: Option<Located<bool>>,
    /// Size that closes a receipt without a cut.
    max_receipt: Option<SizeValue>,
    /// Silence that closes a receipt without a cut.
    receipt_timeout: Option<DurationText>,
    /// `[escpos.patterns]`.
    patterns: Option<Located<RawPatterns>>,
}

/// `[escpos.patterns]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatterns {
    /// Receipt number regex.
    receipt: Option<Located<String>>,
    /// Clerk regex.
    clerk: Option<Located<String>>,
    /// Total regex.
    total: Option<Located<String>>,
    /// Sale line regex.
    line: Option<Located<String>>,
}

/// Loads the built-in profiles, then every `*.toml` of `drivers_dir` (when given and present).
///
/// A file in `drivers_dir` replaces the built-in profile of the same name; two files there with
/// the same name are an error. Problems go to `report`; broken profiles are left out.
pub(crate) fn load_profiles(report: &mut Report, drivers_dir: Option<&Path>) -> ProfileSet {
    let mut set = ProfileSet::default();
    for (file_name, text) in BUILT_IN {
        let file = report.add_file(
            PathBuf::from(format!("built-in:drivers/{file_name}")),
            text.to_string(),
        );
        if let Some(profile) = load_profile(report, file, file_name, "built-in".to_string()) {
            set.profiles.insert(profile.name.clone(), Arc::new(profile));
        }
    }
    let Some(dir) = drivers_dir else { return set };
    // Which drivers.d file defined each name, to catch two files claiming one name.
    let mut defined_here: BTreeMap<String, usize> = BTreeMap::new();
    for path in super::source::toml_files_in(report, dir) {
        let Some(file) = report.read_file(&path) else {
            continue;
        };
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(profile) = load_profile(report, file, &file_name, path.display().to_string())
        else {
            continue;
        };
        if let Some(&earlier) = defined_here.get(&profile.name) {
            let earlier = report.path(earlier).display().to_string();
            report.error(
                &report.file_start(file),
                format!("profile '{}' is already defined in {earlier}", profile.name),
            );
            continue;
        }
        defined_here.insert(profile.name.clone(), file);
        set.profiles.insert(profile.name.clone(), Arc::new(profile));
    }
    set
}

/// Parses and validates one registered profile file.
fn load_profile(
    report: &mut Report,
    file: usize,
    file_name: &str,
    source: String,
) -> Option<Profile> {
    let raw: RawProfile = report.parse(file)?;
    let problems_before = report.problem_count();
    let whole_file = report.file_start(file);

    let name = match &raw.name {
        Some(name) => check::identifier(report, name, "'name'", check::ID_EXTRA),
        None => Some(file_name.trim_end_matches(".toml").to_string()),
    };
    let description = raw
        .description
        .as_ref()
        .map(|d| d.value.clone())
        .unwrap_or_default();

    let roles = list(
        report,
        raw.roles.as_ref(),
        "'roles'",
        &whole_file,
        &[("scanner", Role::Scanner), ("register", Role::Register)],
    );
    let transports = list(
        report,
        raw.transports.as_ref(),
        "'transports'",
        &whole_file,
        &[
            ("serial", Transport::Serial),
            ("mqtt", Transport::Mqtt),
            ("tcp", Transport::Tcp),
        ],
    );
    let decoder = match &raw.decoder {
        Some(decoder) => check::choice(
            report,
            decoder,
            "'decoder'",
            &[
                ("scan", DecoderKind::Scan),
                ("json-sale", DecoderKind::JsonSale),
                ("escpos", DecoderKind::Escpos),
            ],
        ),
        None => {
            report.error(&whole_file, "missing 'decoder' (scan, json-sale or escpos)");
            None
        }
    };

    // Cross-field checks: a decoder makes one kind of record, and sections apply to transports.
    if let (Some(decoder), Some(roles), Some(raw_decoder)) = (decoder, &roles, &raw.decoder) {
        let wanted = if decoder == DecoderKind::Scan {
            Role::Scanner
        } else {
            Role::Register
        };
        if roles.iter().any(|role| *role != wanted) {
            report.error(
                &raw_decoder.span,
                format!(
                    "decoder '{}' serves the {wanted} role only, so 'roles' must be [\"{wanted}\"]",
                    decoder.as_str()
                ),
            );
        }
    }
    let has = |transport| {
        transports
            .as_ref()
            .is_some_and(|list: &Vec<Transport>| list.contains(&transport))
    };
    let (serial_ok, mqtt_ok) = (has(Transport::Serial), has(Transport::Mqtt));
    if let (Some(section), Some(_)) = (&raw.serial, &transports) {
        if !serial_ok {
            report.error(
                &section.span,
                "[serial] applies to the serial transport, which this profile does not list",
            );
        }
    }
    if let (Some(section), Some(_)) = (&raw.framing, &transports) {
        if !serial_ok {
            report.error(
                &section.span,
                "[framing] applies to the serial transport, which this profile does not list",
            );
        }
    }
    if let (Some(section), Some(_)) = (&raw.payload, &transports) {
        if !mqtt_ok {
            report.error(
                &section.span,
                "[payload] applies to the mqtt transport, which this profile does not list",
            );
        }
    }
    if let (Some(section), Some(decoder)) = (&raw.escpos, decoder) {
        if decoder != DecoderKind::Escpos {
            report.error(
                &section.span,
                "[escpos] applies to decoder = \"escpos\" only",
            );
        }
    }
    if let (Some(DecoderKind::Escpos), true, Some(raw_decoder)) = (decoder, mqtt_ok, &raw.decoder) {
        report.error(
            &raw_decoder.span,
            "decoder 'escpos' taps a printer line, so 'transports' may list only \"serial\" and \"tcp\"",
        );
    }
    if let (Some(decoder), true, Some(raw_transports)) =
        (decoder, has(Transport::Tcp), &raw.transports)
    {
        if decoder != DecoderKind::Escpos {
            report.error(
                &raw_transports.span,
                "transport 'tcp' is a network receipt printer tap: only with decoder = \"escpos\"",
            );
        }
    }

    let line = line_settings(report, raw.serial.as_ref().map(|s| &s.value));
    let framing = framing_settings(report, raw.framing.as_ref().map(|f| &f.value));
    let payload = payload_settings(report, raw.payload.as_ref().map(|p| &p.value));
    let escpos = match decoder {
        Some(DecoderKind::Escpos) => Some(escpos_settings(
            report,
            raw.escpos.as_ref().map(|e| &e.value),
        )),
        _ => None,
    };

    if report.problem_count() > problems_before {
        return None;
    }
    Some(Profile {
        name: name?,
        description,
        roles: roles?,
        transports: transports?,
        decoder: decoder?,
        line,
        framing,
        payload,
        escpos,
        requires_passthrough: raw.requires_passthrough.is_some_and(|flag| flag.value),
        source,
    })
}

/// A required, non-empty list of words from a fixed set.
fn list<T: Copy + PartialEq>(
    report: &mut Report,
    value: Option<&Located<Vec<Located<String>>>>,
    what: &str,
    whole_file: &super::source::Span,
    choices: &[(&str, T)],
) -> Option<Vec<T>> {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let Some(value) = value else {
        report.error(
            whole_file,
            format!("missing {what} (any of {})", names.join(", ")),
        );
        return None;
    };
    if value.value.is_empty() {
        report.error(
            &value.span,
            format!("{what} must list at least one of {}", names.join(", ")),
        );
        return None;
    }
    let mut items = Vec::new();
    let mut ok = true;
    for item in &value.value {
        match check::choice(report, item, &format!("an entry of {what}"), choices) {
            Some(choice) if !items.contains(&choice) => items.push(choice),
            Some(_) => {}
            None => ok = false,
        }
    }
    ok.then_some(items)
}

/// `[serial]` with defaults; bad values are reported and replaced by the default.
fn line_settings(report: &mut Report, raw: Option<&RawLine>) -> LineSettings {
    let mut line = LineSettings::default();
    let Some(raw) = raw else { return line };
    if let Some(baud) = &raw.baud {
        line.baud = check::baud(report, baud, "'baud' in [serial]").unwrap_or(line.baud);
    }
    if let Some(bits) = &raw.data_bits {
        match u8::try_from(bits.value) {
            Ok(value @ 5..=8) => line.data_bits = value,
            _ => report.error(
                &bits.span,
                format!(
                    "'data_bits' in [serial] must be 5, 6, 7 or 8, found {}",
                    bits.value
                ),
            ),
        }
    }
    if let Some(parity) = &raw.parity {
        let choices = [
            ("none", Parity::None),
            ("odd", Parity::Odd),
            ("even", Parity::Even),
        ];
        line.parity =
            check::choice(report, parity, "'parity' in [serial]", &choices).unwrap_or(line.parity);
    }
    if let Some(bits) = &raw.stop_bits {
        match bits.value {
            1 | 2 => line.stop_bits = bits.value as u8,
            _ => report.error(
                &bits.span,
                format!(
                    "'stop_bits' in [serial] must be 1 or 2, found {}",
                    bits.value
                ),
            ),
        }
    }
    if let Some(flow) = &raw.flow_control {
        let choices = [
            ("none", FlowControl::None),
            ("software", FlowControl::Software),
            ("hardware", FlowControl::Hardware),
        ];
        line.flow_control = check::choice(report, flow, "'flow_control' in [serial]", &choices)
            .unwrap_or(line.flow_control);
    }
    line
}

/// `[framing]` with defaults; bad values are reported and replaced by the default.
fn framing_settings(report: &mut Report, raw: Option<&RawFraming>) -> FramingSettings {
    let mut framing = FramingSettings::default();
    let Some(raw) = raw else { return framing };
    if let Some(terminators) = &raw.terminators {
        framing.cr = false;
        framing.lf = false;
        for terminator in &terminators.value {
            match terminator.value.as_str() {
                "cr" => framing.cr = true,
                "lf" => framing.lf = true,
                "crlf" | "cr lf" | "cr-lf" => report.error(
                    &terminator.span,
                    "list \"cr\" and \"lf\" for CR LF terminated frames (CR LF then counts once)",
                ),
                other => report.error(
                    &terminator.span,
                    format!("an entry of 'terminators' in [framing] must be \"cr\" or \"lf\", found '{other}' (use 'suffix' for other terminators)"),
                ),
            }
        }
    }
    framing.suffix = escaped(report, raw.suffix.as_ref(), "'suffix' in [framing]");
    framing.strip_prefix = escaped(
        report,
        raw.strip_prefix.as_ref(),
        "'strip_prefix' in [framing]",
    );
    // GS (0x1D) is the GS1 field separator inside a scanned code: a suffix with it would cut
    // codes apart at their separators, and stripping it would join their fields.
    for (value, bytes, key) in [
        (&raw.suffix, &mut framing.suffix, "suffix"),
        (&raw.strip_prefix, &mut framing.strip_prefix, "strip_prefix"),
    ] {
        if let (Some(value), Some(_)) = (value, bytes.as_ref().filter(|b| b.contains(&GS))) {
            report.error(
                &value.span,
                format!("'{key}' in [framing] must not contain GS (\\x1D): it separates the fields of GS1 codes, which would be cut apart or joined"),
            );
            *bytes = None;
        }
    }
    if let Some(gap) = &raw.idle_gap {
        framing.idle_gap =
            check::duration_in(report, gap, "'idle_gap' in [framing]", IDLE_GAP_RANGE)
                .filter(|gap| !gap.is_zero());
    }
    if let Some(max) = &raw.max_frame {
        if let Some(bytes) =
            check::size_in(report, max, "'max_frame' in [framing]", MAX_FRAME_RANGE)
        {
            framing.max_frame = bytes as usize;
        }
    }
    framing
}

/// An escaped byte string; empty means "not set".
fn escaped(report: &mut Report, value: Option<&Located<String>>, what: &str) -> Option<Vec<u8>> {
    let value = value?;
    match units::unescape_bytes(&value.value) {
        Ok(bytes) if bytes.is_empty() => None,
        Ok(bytes) => Some(bytes),
        Err(error) => {
            report.error(&value.span, format!("{what}: {error}"));
            None
        }
    }
}

/// `[payload]` with defaults.
fn payload_settings(report: &mut Report, raw: Option<&RawPayload>) -> PayloadSettings {
    let mut payload = PayloadSettings::default();
    let Some(raw) = raw else { return payload };
    if let Some(format) = &raw.format {
        let choices = [
            ("auto", PayloadFormat::Auto),
            ("text", PayloadFormat::Text),
            ("json", PayloadFormat::Json),
        ];
        payload.format = check::choice(report, format, "'format' in [payload]", &choices)
            .unwrap_or(payload.format);
    }
    if let Some(field) = &raw.code_field {
        payload.code_field = check::non_empty(report, field, "'code_field' in [payload]")
            .unwrap_or(payload.code_field);
    }
    if let Some(field) = &raw.symbology_field {
        payload.symbology_field = check::non_empty(report, field, "'symbology_field' in [payload]")
            .unwrap_or(payload.symbology_field);
    }
    payload
}

/// `[escpos]` with defaults.
fn escpos_settings(report: &mut Report, raw: Option<&RawEscpos>) -> EscposSettings {
    let mut escpos = EscposSettings::default();
    let Some(raw) = raw else { return escpos };
    if let Some(encoding) = &raw.encoding {
        let choices = [
            ("gb18030", TextEncoding::Gb18030),
            ("utf-8", TextEncoding::Utf8),
        ];
        escpos.encoding = check::choice(report, encoding, "'encoding' in [escpos]", &choices)
            .unwrap_or(escpos.encoding);
    }
    if let Some(flag) = &raw.chinese_mode {
        escpos.chinese_mode = flag.value;
    }
    if let Some(flag) = &raw.cr_ends_line {
        escpos.cr_ends_line = flag.value;
    }
    if let Some(max) = &raw.max_receipt {
        if let Some(bytes) =
            check::size_in(report, max, "'max_receipt' in [escpos]", MAX_RECEIPT_RANGE)
        {
            escpos.max_receipt = bytes as usize;
        }
    }
    if let Some(text) = &raw.receipt_timeout {
        if let Some(timeout) = check::duration_in(
            report,
            text,
            "'receipt_timeout' in [escpos]",
            RECEIPT_TIMEOUT_RANGE,
        ) {
            escpos.receipt_timeout = timeout;
        }
    }
    if let Some(patterns) = &raw.patterns {
        let patterns = &patterns.value;
        escpos.patterns.receipt = one_group_regex(report, patterns.receipt.as_ref(), "receipt");
        escpos.patterns.clerk = one_group_regex(report, patterns.clerk.as_ref(), "clerk");
        escpos.patterns.total = one_group_regex(report, patterns.total.as_ref(), "total");
        escpos.patterns.line = patterns.line.as_ref().and_then(|line| {
            let regex = compile(report, line, "line")?;
            let names: Vec<&str> = regex.capture_names().flatten().collect();
            if names.is_empty() {
                report.error(
                    &line.span,
                    format!(
                        "'line' in [escpos.patterns] needs named groups among {}",
                        LINE_GROUPS.join(", ")
                    ),
                );
                return None;
            }
            if let Some(unknown) = names.iter().find(|name| !LINE_GROUPS.contains(name)) {
                report.error(
                    &line.span,
                    format!(
                        "'line' in [escpos.patterns] has group '{unknown}'; known groups: {}",
                        LINE_GROUPS.join(", ")
                    ),
                );
                return None;
            }
            Some(regex)
        });
    }
    escpos
}

/// A pattern whose capture group 1 is the value wanted.
fn one_group_regex(
    report: &mut Report,
    value: Option<&Located<String>>,
    key: &str,
) -> Option<regex::Regex> {
    let value = value?;
    let regex = compile(report, value, key)?;
    if regex.captures_len() < 2 {
        report.error(
            &value.span,
            format!(
                "'{key}' in [escpos.patterns] needs a capture group for the value, like '(\\S+)'"
            ),
        );
        return None;
    }
    Some(regex)
}

/// Compiles a regex, reporting a bad one.
fn compile(report: &mut Report, value: &Located<String>, key: &str) -> Option<regex::Regex> {
    match regex::Regex::new(&value.value) {
        Ok(regex) => Some(regex),
        Err(error) => {
            // regex errors span several lines (a caret diagram); keep its last line, the reason.
            let reason = error
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            report.error(
                &value.span,
                format!("'{key}' in [escpos.patterns] is not a valid regex: {reason}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> (Option<Profile>, Vec<String>) {
        let mut report = Report::default();
        let file = report.add_file(PathBuf::from("p.toml"), text.to_string());
        let profile = load_profile(&mut report, file, "p.toml", "test".into());
        let errors = match report.finish(()) {
            Ok(()) => Vec::new(),
            Err(error) => error
                .diagnostics()
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        (profile, errors)
    }

    #[test]
    fn every_built_in_profile_loads() {
        let set = ProfileSet::built_in()
            .unwrap_or_else(|error| panic!("built-in profiles broken:\n{error}"));
        assert_eq!(set.names().count(), BUILT_IN.len());
    }

    #[test]
    fn generic_scanner_is_as_contracted() {
        let set = ProfileSet::built_in().expect("built-ins load");
        let profile = set
            .get("generic-scanner")
            .expect("generic-scanner is built in");
        assert_eq!(profile.roles, [Role::Scanner]);
        assert_eq!(profile.transports, [Transport::Serial]);
        assert_eq!(profile.decoder, DecoderKind::Scan);
        assert_eq!(profile.line, LineSettings::default());
        assert_eq!(
            profile.framing,
            FramingSettings {
                cr: true,
                lf: true,
                suffix: None,
                strip_prefix: None,
                idle_gap: Some(Duration::from_millis(80)),
                max_frame: 4096
            }
        );
        assert_eq!(profile.source, "built-in");
        assert!(!profile.requires_passthrough);
        assert!(profile.escpos.is_none());
    }

    #[test]
    fn future_profiles_fit_the_format() {
        let (profile, errors) = load_text(
            r#"
name = "escpos-tap"
roles = ["register"]
transports = ["serial"]
decoder = "escpos"
requires_passthrough = true
[serial]
baud = 19200
[framing]
terminators = []
[escpos]
encoding = "gb18030"
cr_ends_line = true
[escpos.patterns]
receipt = 'No[.:：]\s*(\S+)'
total = '合计[:：]?\s*([0-9.]+)'
line = '(?P<name>\S+)\s+(?P<qty>\d+)\s+(?P<amount>[0-9.]+)'
"#,
        );
        assert_eq!(errors, Vec::<String>::new());
        let profile = profile.expect("loads");
        let escpos = profile.escpos.expect("escpos settings");
        assert!(escpos.cr_ends_line);
        let total = escpos.patterns.total.expect("total pattern");
        assert_eq!(&total.captures("合计：33.50").expect("matches")[1], "33.50");
        assert!(!profile.framing.cr && !profile.framing.lf);
        assert!(profile.requires_passthrough);

        let (profile, errors) = load_text(
            "roles = [\"scanner\"]\ntransports = [\"mqtt\"]\ndecoder = \"scan\"\n[payload]\nformat = \"json\"\n",
        );
        assert_eq!(errors, Vec::<String>::new());
        let profile = profile.expect("loads");
        assert_eq!(profile.name, "p", "name defaults to the file name");
        assert_eq!(profile.payload.format, PayloadFormat::Json);
        assert_eq!(profile.payload.code_field, "code");
    }

    #[test]
    fn bad_values_are_all_reported_with_positions() {
        let (profile, errors) = load_text(
            "roles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n[serial]\nbaud = 9601\ndata_bits = 9\nparity = \"evn\"\n[framing]\nterminators = [\"crlf\"]\nsuffix = '\\q'\nidle_gap = \"soon\"\nmax_frame = 0\n",
        );
        assert!(profile.is_none());
        assert_eq!(
            errors,
            [
                "p.toml:5:8: 'baud' in [serial] must be a standard rate such as 9600, 19200, 38400, 57600 or 115200, found 9601",
                "p.toml:6:13: 'data_bits' in [serial] must be 5, 6, 7 or 8, found 9",
                "p.toml:7:10: 'parity' in [serial] must be one of none, odd, even, found 'evn', did you mean 'even'?",
                "p.toml:9:16: list \"cr\" and \"lf\" for CR LF terminated frames (CR LF then counts once)",
                "p.toml:10:10: 'suffix' in [framing]: unknown escape '\\q' (use \\t, \\r, \\n, \\\\ or \\xNN)",
                "p.toml:11:12: 'idle_gap' in [framing] must be a duration like \"250ms\", \"90s\" or \"5m\", found \"soon\"",
                "p.toml:12:13: 'max_frame' in [framing] must be from 1B to 16MiB, found 0",
            ]
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        let (profile, errors) = load_text(
            "roles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n[framming]\n",
        );
        assert!(profile.is_none());
        assert_eq!(
            errors,
            ["p.toml:4:2: unknown key 'framming' at top level, did you mean 'framing'?"]
        );
    }

    #[test]
    fn decoder_must_fit_roles_and_sections_fit_transports() {
        let (_, errors) = load_text("roles = [\"register\"]\ntransports = [\"mqtt\"]\ndecoder = \"scan\"\n[framing]\nmax_frame = 10\n");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("decoder 'scan' serves the scanner role only"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("[framing] applies to the serial transport"),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_required_keys() {
        let (_, errors) = load_text("description = \"x\"\n");
        assert_eq!(
            errors,
            [
                "p.toml:1:1: missing 'roles' (any of scanner, register)",
                "p.toml:1:1: missing 'transports' (any of serial, mqtt, tcp)",
                "p.toml:1:1: missing 'decoder' (scan, json-sale or escpos)",
            ]
        );
    }

    #[test]
    fn bad_regex_and_groups() {
        let (_, errors) = load_text(
            "roles = [\"register\"]\ntransports = [\"serial\"]\ndecoder = \"escpos\"\n[escpos.patterns]\nreceipt = 'No(.'\ntotal = 'total'\nline = '(?P<price>\\d+)'\n",
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("p.toml:5:11: 'receipt' in [escpos.patterns] is not a valid regex"),
            "{errors:?}"
        );
        assert!(errors[1].contains("needs a capture group"), "{errors:?}");
        assert!(errors[2].contains("group 'price'"), "{errors:?}");
    }
}
