//! Reading one device profile file into a [`Profile`]: the file as written (serde structs of
//! located values, unknown keys and sections rejected), defaults, ranges, and the rules across
//! keys (a decoder serves one role, each section applies to a transport or decoder). Every
//! problem is reported with its position, like in the config file.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::config::check;
use crate::config::device_kind::{Role, Transport};
use crate::config::source::{DurationText, Located, Report, SizeValue, Span};
use crate::config::units;
use crate::decode::escpos::TextEncoding;

use super::settings::{
    DecoderKind, EscposSettings, FlowControl, FramingSettings, LineSettings, Parity, PayloadFormat,
    PayloadSettings, Profile,
};

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
    /// A line saying the medical insurance paid.
    insurance_approved: Option<Located<String>>,
    /// A line saying the medical insurance refused.
    insurance_declined: Option<Located<String>>,
}

/// Parses and validates one registered profile file.
pub(super) fn load_profile(
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
    whole_file: &Span,
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
        escpos.patterns.insurance_approved = patterns
            .insurance_approved
            .as_ref()
            .and_then(|value| compile(report, value, "insurance_approved"));
        escpos.patterns.insurance_declined = patterns
            .insurance_declined
            .as_ref()
            .and_then(|value| compile(report, value, "insurance_declined"));
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
    use std::path::PathBuf;

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
