//! Small value checks shared by the config file's sections and profile validation (and the HQ
//! receiver's config): ids, choices, durations, sizes, baud rates, paths, secret files, broker
//! and HQ addresses, and refusing an id defined twice ([`FirstDefined`]).
//!
//! Each helper checks one written value, records a positioned problem naming the key and what
//! is expected when it is wrong, and returns `None` then, so validation can carry on and report
//! every bad value in one run.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::source::{suggest, DurationText, Located, Report, SizeValue, Span};
use super::units;

/// Baud rates a serial port can sensibly be set to (the termios rates plus the common odd ones).
pub(crate) const BAUD_RATES: &[u32] = &[
    300, 600, 1200, 1800, 2400, 4800, 9600, 14400, 19200, 28800, 38400, 57600, 76800, 115200,
    230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000,
    3500000, 4000000,
];

/// Characters allowed in ids (gateway, device, station, campaign, option key, profile name)
/// besides ASCII letters and digits.
pub(crate) const ID_EXTRA: &[char] = &['-', '_', '.'];

/// Whether `text` is 1 to 64 characters, each an ASCII letter or digit or one of `extra`.
pub(crate) fn is_identifier(text: &str, extra: &[char]) -> bool {
    (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// Checks an identifier-like value (ids, station names) made of letters, digits and `extra`.
pub(crate) fn identifier(
    report: &mut Report,
    value: &Located<String>,
    what: &str,
    extra: &[char],
) -> Option<String> {
    if is_identifier(&value.value, extra) {
        return Some(value.value.clone());
    }
    let extra: Vec<String> = extra.iter().map(|c| format!("'{c}'")).collect();
    report.error(
        &value.span,
        format!(
            "{what} must be 1 to 64 of A-Z a-z 0-9 {}, found '{}'",
            extra.join(" "),
            value.value
        ),
    );
    None
}

/// Where a key was written, or its table when it was not.
pub(crate) fn key_span<T>(key: &Option<Located<T>>, table: &Span) -> Span {
    key.as_ref().map_or(table.clone(), |key| key.span.clone())
}

/// Where each id of a list of tables (devices, campaigns, a campaign's options) was first
/// defined, to refuse a second definition with a pointer to the first.
#[derive(Debug, Default)]
pub(crate) struct FirstDefined(BTreeMap<String, Span>);

impl FirstDefined {
    /// Notes `id` as defined at `span`; when it was defined before, records `message(first)` at
    /// `span` instead, `first` being the first definition's `PATH:LINE:COL`, and returns false.
    pub fn note(
        &mut self,
        report: &mut Report,
        id: &str,
        span: Span,
        message: impl FnOnce(&str) -> String,
    ) -> bool {
        if let Some(first) = self.0.get(id) {
            let first = report.describe(first);
            report.error(&span, message(&first));
            return false;
        }
        self.0.insert(id.to_string(), span);
        true
    }

    /// Notes `id` as defined at `span` unless it already was (silently: its definitions are
    /// checked elsewhere).
    pub fn insert_first(&mut self, id: &str, span: Span) {
        self.0.entry(id.to_string()).or_insert(span);
    }
}

/// Picks one of a fixed set of words, suggesting the nearest on a typo.
pub(crate) fn choice<T: Copy>(
    report: &mut Report,
    value: &Located<String>,
    what: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value.value) {
        return Some(*choice);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let mut message = format!(
        "{what} must be one of {}, found '{}'",
        names.join(", "),
        value.value
    );
    if let Some(near) = suggest(&value.value, names.iter().copied()) {
        message.push_str(&format!(", did you mean '{near}'?"));
    }
    report.error(&value.span, message);
    None
}

/// The largest size a key without a range of its own accepts: 1TiB (keys with one use
/// [`size_in`]).
pub(crate) const MAX_SIZE: u64 = 1024 * 1024 * 1024 * 1024;

/// Checks a duration string such as `"250ms"` that must lie in `range` (inclusive).
///
/// Every duration key of the config and the profiles has its own range, so a value that parses
/// but makes no sense (`timeout = "2500000000h"`) is refused with its position instead of
/// overflowing, or being quietly replaced, where it is used.
pub(crate) fn duration_in(
    report: &mut Report,
    value: &DurationText,
    what: &str,
    range: RangeInclusive<Duration>,
) -> Option<Duration> {
    let parsed = match &value.value {
        toml::Value::String(text) => units::parse_duration(text),
        other => Err(format!("found {}", describe_value(other))),
    };
    match parsed {
        Ok(duration) if range.contains(&duration) => Some(duration),
        Ok(_) => {
            report.error(
                &value.span,
                format!(
                    "{what} must be from {} to {}, found {}",
                    units::format_duration(*range.start()),
                    units::format_duration(*range.end()),
                    value.value
                ),
            );
            None
        }
        Err(found) => {
            report.error(
                &value.span,
                format!("{what} must be a duration like \"250ms\", \"90s\" or \"5m\", {found}"),
            );
            None
        }
    }
}

/// Checks a size: a string such as `"512KiB"` or a non-negative integer of bytes, at most
/// [`MAX_SIZE`].
pub(crate) fn size(report: &mut Report, value: &SizeValue, what: &str) -> Option<u64> {
    size_in(report, value, what, 0..=MAX_SIZE)
}

/// Checks a size that must lie in `range` (inclusive); see [`duration_in`].
pub(crate) fn size_in(
    report: &mut Report,
    value: &SizeValue,
    what: &str,
    range: RangeInclusive<u64>,
) -> Option<u64> {
    let parsed = match &value.value {
        toml::Value::String(text) => units::parse_size(text),
        toml::Value::Integer(bytes) => u64::try_from(*bytes).map_err(|_| format!("found {bytes}")),
        other => Err(format!("found {}", describe_value(other))),
    };
    match parsed {
        Ok(bytes) if range.contains(&bytes) => Some(bytes),
        Ok(_) => {
            report.error(
                &value.span,
                format!(
                    "{what} must be from {} to {}, found {}",
                    units::format_size(*range.start()),
                    units::format_size(*range.end()),
                    value.value
                ),
            );
            None
        }
        Err(found) => {
            report.error(
                &value.span,
                format!(
                    "{what} must be a size like \"512KiB\", \"1MiB\" or a number of bytes, {found}"
                ),
            );
            None
        }
    }
}

/// A written value for a message: its TOML type and, for scalars, the value ("integer 5").
pub(crate) fn describe_value(value: &toml::Value) -> String {
    match value {
        // `toml::Value`'s Display renders a datetime through serde as an internal table.
        toml::Value::Datetime(datetime) => format!("datetime {datetime}"),
        toml::Value::Array(_) | toml::Value::Table(_) => value.type_str().to_string(),
        other => format!("{} {other}", other.type_str()),
    }
}

/// Checks a baud rate against [`BAUD_RATES`].
pub(crate) fn baud(report: &mut Report, value: &Located<i64>, what: &str) -> Option<u32> {
    match u32::try_from(value.value) {
        Ok(rate) if BAUD_RATES.contains(&rate) => Some(rate),
        _ => {
            report.error(
                &value.span,
                format!(
                    "{what} must be a standard rate such as 9600, 19200, 38400, 57600 or 115200, found {}",
                    value.value
                ),
            );
            None
        }
    }
}

/// A string value that must not be empty or blank.
pub(crate) fn non_empty(
    report: &mut Report,
    value: &Located<String>,
    what: &str,
) -> Option<String> {
    if value.value.trim().is_empty() {
        report.error(&value.span, format!("{what} must not be empty"));
        None
    } else {
        Some(value.value.clone())
    }
}

/// A path from the config, resolved against the config file's folder (`base_dir`) when relative.
pub(crate) fn path(
    report: &mut Report,
    base_dir: &Path,
    value: &Located<String>,
    what: &str,
) -> Option<PathBuf> {
    let text = non_empty(report, value, what)?;
    let path = PathBuf::from(text);
    Some(if path.is_absolute() {
        path
    } else {
        base_dir.join(path)
    })
}

/// A folder the gateway keeps state in: refused when it, or the nearest part of it that exists,
/// is not a folder (`data_dir = "/etc/passwd"`), since it could then never be created or used.
/// A folder that does not exist yet is fine (the gateway creates it).
pub(crate) fn state_folder(
    report: &mut Report,
    base_dir: &Path,
    value: &Located<String>,
    what: &str,
) -> Option<PathBuf> {
    let folder = path(report, base_dir, value, what)?;
    for existing in folder.ancestors() {
        match std::fs::metadata(existing) {
            Ok(metadata) if metadata.is_dir() => break,
            Ok(_) if existing == folder => {
                report.error(
                    &value.span,
                    format!(
                        "{what} must be a folder, but '{}' is a file",
                        folder.display()
                    ),
                );
                return None;
            }
            Ok(_) => {
                report.error(
                    &value.span,
                    format!(
                        "{what} '{}' cannot be created: '{}' is a file, not a folder",
                        folder.display(),
                        existing.display()
                    ),
                );
                return None;
            }
            // Not there (yet), or below a file (ENOTDIR): look at the part above.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) => {}
            // Not ours to see (permissions): the gateway's own user may; it reports at start.
            Err(_) => break,
        }
    }
    Some(folder)
}

/// A file of secrets (`token_file`, `password_file`) that must exist and be readable by whoever
/// checks the configuration, and with `non_empty`, hold something besides white space.
pub(crate) fn secret_file(
    report: &mut Report,
    base_dir: &Path,
    value: &Located<String>,
    what: &str,
    non_empty: bool,
) -> Option<PathBuf> {
    use std::io::Read as _;
    /// Far above any token or password; only this much is read to check the file.
    const LIMIT: u64 = 64 * 1024;
    let file = path(report, base_dir, value, what)?;
    let problem = match std::fs::metadata(&file) {
        Err(error) => Some(format!("cannot read {what} '{}': {error}", file.display())),
        Ok(metadata) if !metadata.is_file() => {
            Some(format!("{what} '{}' is not a regular file", file.display()))
        }
        Ok(_) => {
            let mut text = Vec::new();
            match std::fs::File::open(&file)
                .and_then(|opened| opened.take(LIMIT).read_to_end(&mut text))
            {
                Err(error) => Some(format!("cannot read {what} '{}': {error}", file.display())),
                Ok(_) if non_empty && text.iter().all(u8::is_ascii_whitespace) => {
                    Some(format!("{what} '{}' is empty", file.display()))
                }
                Ok(_) => None,
            }
        }
    };
    match problem {
        Some(problem) => {
            report.error(&value.span, problem);
            None
        }
        None => Some(file),
    }
}

/// A parsed `scheme://host[:port]/path` address.
pub(crate) struct Address<'a> {
    /// The scheme, as written.
    pub scheme: &'a str,
    /// Everything after the host and port, starting with `/` (or empty).
    pub path: &'a str,
}

/// Splits and checks `scheme://host[:port][/path]`; user info (`user@`) is refused on purpose:
/// credentials belong in `username` / `password_file` / `token_file`, not in a readable URL.
pub(crate) fn parse_address<'a>(text: &'a str, schemes: &[&str]) -> Result<Address<'a>, String> {
    let (scheme, rest) = text.split_once("://").ok_or_else(|| {
        format!(
            "must start with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    })?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "has scheme '{scheme}', expected {}",
            schemes.join(" or ")
        ));
    }
    let (authority, path) = rest
        .find('/')
        .map_or((rest, ""), |index| rest.split_at(index));
    if authority.contains('@') {
        return Err(
            "must not contain credentials (user@host); use the credential keys instead".to_string(),
        );
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("has an IPv6 address without its closing ']'")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err("has no valid host".to_string());
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(format!("has an invalid port '{port}'")),
        }
    }
    Ok(Address { scheme, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("WZ-LC-001", &['-', '_']));
        assert!(!is_identifier("WZ LC", &['-', '_']));
        assert!(!is_identifier("", &['-', '_']));
        assert!(!is_identifier(&"a".repeat(65), &['-', '_']));
        assert!(!is_identifier("gw.1", &['-', '_']));
        assert!(is_identifier("gw.1", &['-', '_', '.']));
        assert!(!is_identifier("参松", &['-', '_', '.']));
    }

    #[test]
    fn addresses() {
        let schemes = ["mqtt", "mqtts"];
        assert!(parse_address("mqtt://127.0.0.1:1883", &schemes).is_ok());
        assert!(parse_address("mqtts://broker.local", &schemes).is_ok());
        assert!(parse_address("mqtt://[::1]:1883", &schemes).is_ok());
        assert!(parse_address("tcp://127.0.0.1:1883", &schemes).is_err());
        assert!(parse_address("127.0.0.1:1883", &schemes).is_err());
        assert!(parse_address("mqtt://:1883", &schemes).is_err());
        assert!(parse_address("mqtt://host:99999", &schemes).is_err());
        assert!(parse_address("mqtt://user:pw@host", &schemes).is_err());
        let address = parse_address("mqtt://hq:8883/posgw/batches", &schemes).expect("valid");
        assert_eq!((address.scheme, address.path), ("mqtt", "/posgw/batches"));
    }
}
