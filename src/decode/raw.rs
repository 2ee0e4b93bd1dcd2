//! The frame as text: the reversible `raw` escaping of a `scan` record, and the check that tells a
//! scanned code from line noise.

use std::fmt::Write as _;

/// The contract's `raw` form of a frame. Printable ASCII and printable non-ASCII UTF-8 are written as
/// they are; a backslash is written `\\`; every other byte (C0 controls such as GS, DEL, invalid
/// UTF-8, and the bytes of Unicode control characters U+0080–U+009F) is written `\xNN`, two
/// lowercase hex digits. Reading `\\` as `\` and `\xNN` as the byte NN gives back the frame exactly.
pub fn escape_raw(frame: &[u8]) -> String {
    let mut out = String::with_capacity(frame.len() + 4);
    for chunk in frame.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut utf8 = [0u8; 4];
                    for &b in c.encode_utf8(&mut utf8).as_bytes() {
                        push_hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out
}

/// Appends `\xNN` for `b`.
fn push_hex(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
}

/// Control characters a scanner legitimately sends inside a frame: TAB, LF and CR (lines of a 2D
/// code's text, when frames end by idle gap or a custom suffix) and the ISO/IEC 15434 separators EOT,
/// FS, GS, RS and US (GS1 FNC1 is GS; `[)>` RS `06` GS … RS EOT envelopes are used by healthcare 2D
/// codes).
fn is_allowed_control(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\r' | '\u{04}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{1f}'
    )
}

/// Why a frame from a text scanner is line noise rather than a scanned code, or `None` when it looks
/// like a code. Noise is: an empty frame, invalid UTF-8, a control character other than TAB, LF, CR,
/// EOT, FS, GS, RS and US (so NUL, STX/ETX, ESC, DEL, C1 controls…), or a frame with no visible
/// character at all. Such frames become `device` `bad_frame` records.
pub fn noise_reason(frame: &[u8]) -> Option<String> {
    if frame.is_empty() {
        return Some("empty frame".to_string());
    }
    let mut offset = 0;
    let mut visible = false;
    for chunk in frame.utf8_chunks() {
        for (i, c) in chunk.valid().char_indices() {
            if c.is_control() {
                if !is_allowed_control(c) {
                    return Some(if c.is_ascii() {
                        format!(
                            "control byte 0x{:02x} at offset {}",
                            u32::from(c),
                            offset + i
                        )
                    } else {
                        format!(
                            "control character U+{:04X} at offset {}",
                            u32::from(c),
                            offset + i
                        )
                    });
                }
            } else if !c.is_whitespace() {
                visible = true;
            }
        }
        offset += chunk.valid().len();
        if !chunk.invalid().is_empty() {
            return Some(format!("invalid utf-8 at offset {offset}"));
        }
    }
    if !visible {
        return Some("frame has no visible character".to_string());
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The inverse of [`escape_raw`]; `None` when `text` is not something it can produce.
    pub(crate) fn unescape_raw(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('\\') {
            out.extend_from_slice(&rest.as_bytes()[..pos]);
            let escape = &rest[pos..];
            if let Some(after) = escape.strip_prefix("\\\\") {
                out.push(b'\\');
                rest = after;
            } else {
                let hex = escape.get(2..4).filter(|_| escape.starts_with("\\x"))?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &escape[4..];
            }
        }
        out.extend_from_slice(rest.as_bytes());
        Some(out)
    }

    #[test]
    fn escapes_gs_and_keeps_text() {
        assert_eq!(escape_raw(b"]d2010\x1d21A"), "]d2010\\x1d21A");
        assert_eq!(escape_raw("追溯码 ok".as_bytes()), "追溯码 ok");
        assert_eq!(escape_raw(b"a\\b"), "a\\\\b");
        assert_eq!(escape_raw(b"\xff\x00\x7f"), "\\xff\\x00\\x7f");
        // U+0085 (NEL) is valid UTF-8 but a control character: its two bytes are escaped.
        assert_eq!(escape_raw("a\u{85}".as_bytes()), "a\\xc2\\x85");
        // A truncated multi-byte character is invalid UTF-8.
        assert_eq!(escape_raw(&"码".as_bytes()[..2]), "\\xe7\\xa0");
        assert_eq!(escape_raw(b""), "");
    }

    #[test]
    fn unescape_reverses_examples() {
        for frame in [&b"\\x41"[..], b"\\\\", b"]C1\x1d\x1d", b"\xe7\xa0\x81\xe7"] {
            assert_eq!(unescape_raw(&escape_raw(frame)).as_deref(), Some(frame));
        }
    }

    #[test]
    fn noise_examples() {
        assert_eq!(noise_reason(b"]E06901234567892"), None);
        assert_eq!(noise_reason(b"]d20106901234567892\x1d10A\x1d"), None);
        assert_eq!(noise_reason(b"[)>\x1e06\x1d9N1234\x1e\x04"), None);
        assert_eq!(noise_reason("line 1\r\nline 2\t码".as_bytes()), None);
        assert_eq!(noise_reason(b""), Some("empty frame".to_string()));
        assert_eq!(
            noise_reason(b"69\x0001"),
            Some("control byte 0x00 at offset 2".to_string())
        );
        assert_eq!(
            noise_reason(b"\x0269"),
            Some("control byte 0x02 at offset 0".to_string())
        );
        assert_eq!(
            noise_reason(b"ab\xfe\xff"),
            Some("invalid utf-8 at offset 2".to_string())
        );
        assert_eq!(
            noise_reason("码\u{9b}".as_bytes()),
            Some("control character U+009B at offset 3".to_string())
        );
        assert_eq!(
            noise_reason(b" \t\x1d"),
            Some("frame has no visible character".to_string())
        );
    }

    proptest! {
        #[test]
        fn escape_round_trips(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = escape_raw(&frame);
            prop_assert_eq!(unescape_raw(&text), Some(frame));
        }

        #[test]
        fn escape_round_trips_text(text in ".{0,24}") {
            prop_assert_eq!(unescape_raw(&escape_raw(text.as_bytes())), Some(text.into_bytes()));
        }

        #[test]
        fn escape_output_has_no_control_characters(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(!escape_raw(&frame).chars().any(char::is_control));
        }

        #[test]
        fn noise_reason_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = noise_reason(&frame);
        }

        #[test]
        fn printable_ascii_is_not_noise(text in "[!-~][ -~]{0,40}") {
            prop_assert_eq!(noise_reason(text.as_bytes()), None);
        }
    }
}
