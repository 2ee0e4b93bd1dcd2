//! Value syntaxes shared by the config and profile files: durations, sizes and escaped bytes.
//!
//! Durations are strings like `"250ms"`, `"90s"`, `"5m"` or `"0s"` (parsed by `humantime`);
//! sizes are strings like `"512KiB"`, `"2GiB"`, `"1MiB"` (powers of 1024) or `"1MB"` (powers of
//! 1000), or a plain integer of bytes (parsed by `parse-size`). Escaped byte strings (framing
//! suffixes and prefixes) allow `\t`, `\r`, `\n`, `\\` and `\xNN` on top of plain text.

use std::time::Duration;

/// Parses a duration string such as `"250ms"`, `"90s"`, `"5m"` or `"0s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    // humantime's own messages ("expected number at 0") mean little to an operator; callers say
    // what is expected instead.
    humantime::parse_duration(text.trim()).map_err(|_| format!("found \"{text}\""))
}

/// Parses a size string such as `"512KiB"`, `"2GiB"` or `"1048576"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim()).map_err(|_| format!("found \"{text}\""))
}

/// A duration in the shortest form `parse_duration` reads back ("120s" shows as "2m").
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_string();
    }
    humantime::format_duration(duration).to_string()
}

/// A byte count in binary units when it is an exact multiple ("1MiB"), else in bytes ("1000B").
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value != 0 && value % 1024 == 0 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value}{}", UNITS[unit])
}

/// Decodes `\t`, `\r`, `\n`, `\\` and `\xNN` escapes; every other character stands for its UTF-8 bytes.
pub fn unescape_bytes(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buffer = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            continue;
        }
        match chars.next() {
            Some('t') => bytes.push(b'\t'),
            Some('r') => bytes.push(b'\r'),
            Some('n') => bytes.push(b'\n'),
            Some('\\') => bytes.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = (hex.len() == 2)
                    .then(|| u8::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| format!("'\\x' needs two hex digits, found '\\x{hex}'"))?;
                bytes.push(byte);
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape '\\{other}' (use \\t, \\r, \\n, \\\\ or \\xNN)"
                ))
            }
            None => return Err("a lone '\\' at the end (write \\\\ for a backslash)".to_string()),
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("50").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes_are_exact() {
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1KiB").is_err());
        assert!(parse_size("12XB").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["50ms", "2m", "1s", "0s", "1h 30m"] {
            let duration = parse_duration(text).expect("parses");
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_size(1024 * 1024), "1MiB");
        assert_eq!(format_size(2 * 1024 * 1024 * 1024), "2GiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape_bytes(r"\r\n"), Ok(b"\r\n".to_vec()));
        assert_eq!(unescape_bytes(r"\x03"), Ok(vec![3]));
        assert_eq!(
            unescape_bytes("\t"),
            Ok(vec![9]),
            "a real tab from a TOML basic string"
        );
        assert_eq!(unescape_bytes(r"ab\\"), Ok(b"ab\\".to_vec()));
        assert_eq!(unescape_bytes("¥"), Ok("¥".as_bytes().to_vec()));
        assert!(unescape_bytes(r"\x3").is_err());
        assert!(unescape_bytes(r"\xZZ").is_err());
        assert!(unescape_bytes(r"\q").is_err());
        assert!(unescape_bytes("\\").is_err());
    }
}
