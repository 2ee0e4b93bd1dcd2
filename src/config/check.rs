//! Small value checks shared by config and profile validation.
//!
//! Each helper checks one written value, records a positioned problem naming the key and what
//! is expected when it is wrong, and returns `None` then, so validation can carry on and report
//! every bad value in one run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{DurationText, SizeValue};
use super::source::{suggest, Located, Report};
use super::units;

/// Baud rates a serial port can sensibly be set to (the termios rates plus the common odd ones).
pub(crate) const BAUD_RATES: &[u32] = &[
    300, 600, 1200, 1800, 2400, 4800, 9600, 14400, 19200, 28800, 38400, 57600, 76800, 115200,
    230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000,
    3500000, 4000000,
];

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

/// Checks a duration string such as `"250ms"`.
pub(crate) fn duration(report: &mut Report, value: &DurationText, what: &str) -> Option<Duration> {
    let parsed = match &value.value {
        toml::Value::String(text) => units::parse_duration(text),
        other => Err(format!("found {}", describe_value(other))),
    };
    match parsed {
        Ok(duration) => Some(duration),
        Err(found) => {
            report.error(
                &value.span,
                format!("{what} must be a duration like \"250ms\", \"90s\" or \"5m\", {found}"),
            );
            None
        }
    }
}

/// Checks a size: a string such as `"512KiB"` or a non-negative integer of bytes.
pub(crate) fn size(report: &mut Report, value: &SizeValue, what: &str) -> Option<u64> {
    let parsed = match &value.value {
        toml::Value::String(text) => units::parse_size(text),
        toml::Value::Integer(bytes) => u64::try_from(*bytes).map_err(|_| format!("found {bytes}")),
        other => Err(format!("found {}", describe_value(other))),
    };
    match parsed {
        Ok(bytes) => Some(bytes),
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
}
