//! GS1 element strings: a run of application identifier (AI) + value pairs, as carried by GS1-128,
//! GS1 DataMatrix, GS1 QR and GS1 DataBar.
//!
//! How a string is cut into elements (GS1 General Specifications, DOMAIN.md section 2):
//! - The AI is 2 to 4 digits and no AI is a prefix of another, so the table in [`lookup`] finds it
//!   from the leading digits alone.
//! - An AI whose first two digits are in [`predefined_length`] has a value of exactly that length
//!   and needs no separator. Fewer characters left (or a GS inside them) means the string was
//!   truncated.
//! - Every other value runs to the next GS (0x1D, the transmitted FNC1) or to the end. A GS after a
//!   fixed-length value, a leading GS and a trailing GS are tolerated.
//! - A missing GS after a variable value cannot be detected (lot `ABC` then serial `SN1` reads as lot
//!   `ABC21SN1`); this parser does not guess. Everything it can detect is an error: unknown AIs,
//!   values over the maximum length or under the minimum, non-digits in numeric fields, characters
//!   outside the GS1 printable set (CSET 82), bad months and days, bad check digits, one AI given
//!   twice with different values.
//!
//! Parsing stops at the first error; the elements read before it are kept.

use std::collections::BTreeMap;

use super::raw::escape_raw;
use super::retail::verify_check_digit;

/// The GS1 field separator (the transmitted form of FNC1).
pub(crate) const GS: u8 = 0x1d;

/// What reading an element string gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Elements {
    /// AI → value, for every element read before any error.
    pub ai: BTreeMap<String, String>,
    /// Why reading stopped early, else `None`.
    pub error: Option<String>,
}

/// Extra checks a value gets beyond length and character set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantics {
    /// None.
    Plain,
    /// The first `n` digits are a GS1 key (GTIN, SSCC, GLN…) ending in a mod-10 check digit.
    Key(u8),
    /// YYMMDD, DD = 00 allowed ("day not given").
    Date,
    /// YYMMDDHH, optionally followed by MM and SS.
    DateTime,
    /// YYMMDD, optionally followed by a second YYMMDD (AI 7007).
    DateRange,
}

/// The format of one AI's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AiSpec {
    /// How many digits the AI itself has.
    ai_len: u8,
    /// Fewest characters the value may have.
    min: u8,
    /// Most characters the value may have.
    max: u8,
    /// How many leading characters must be digits; the rest is CSET 82.
    digits: u8,
    /// Checks on the content.
    semantics: Semantics,
}

impl AiSpec {
    /// Sets the content checks.
    const fn with(self, semantics: Semantics) -> Self {
        AiSpec { semantics, ..self }
    }
}

/// Numeric, exactly `len` digits.
const fn n(ai_len: u8, len: u8) -> AiSpec {
    n_range(ai_len, len, len)
}

/// Numeric, `min` to `max` digits.
const fn n_range(ai_len: u8, min: u8, max: u8) -> AiSpec {
    AiSpec {
        ai_len,
        min,
        max,
        digits: max,
        semantics: Semantics::Plain,
    }
}

/// CSET 82 text, 1 to `max` characters.
const fn x(ai_len: u8, max: u8) -> AiSpec {
    AiSpec {
        ai_len,
        min: 1,
        max,
        digits: 0,
        semantics: Semantics::Plain,
    }
}

/// `digits` digits followed by up to `max - digits` CSET 82 characters (at least `min` in all).
const fn nx(ai_len: u8, digits: u8, min: u8, max: u8) -> AiSpec {
    AiSpec {
        ai_len,
        min,
        max,
        digits,
        semantics: Semantics::Plain,
    }
}

/// The value length fixed by an AI's first two digits (the GS1 "predefined length" table, exactly as
/// in DOMAIN.md): such values are never followed by a separator.
fn predefined_length(first_two: [u8; 2]) -> Option<usize> {
    match &first_two {
        b"00" => Some(18),
        b"01" | b"02" | b"03" => Some(14),
        b"04" => Some(16),
        [b'1', b'1'..=b'9'] => Some(6),
        b"20" => Some(2),
        [b'3', b'1'..=b'6'] => Some(6),
        b"41" => Some(13),
        _ => None,
    }
}

/// The AI at the start of `data` and its value format; `None` when the leading digits are no AI
/// this table knows.
fn lookup(data: &[u8]) -> Option<AiSpec> {
    use Semantics::{Date, DateRange, DateTime, Key};
    let digit = |i: usize| data.get(i).filter(|b| b.is_ascii_digit()).map(|b| b - b'0');
    let (a, b) = (digit(0)?, digit(1)?);
    // Two-digit AIs first; the match arms below only see prefixes of longer AIs.
    let spec = match (a, b) {
        (0, 0) => n(2, 18).with(Key(18)),
        (0, 1..=3) => n(2, 14).with(Key(14)),
        (1, 0) => x(2, 20),
        (1, 1..=3 | 5..=7) => n(2, 6).with(Date),
        (2, 0) => n(2, 2),
        (2, 1 | 2) => x(2, 20),
        (3, 0) | (3, 7) => n_range(2, 1, 8),
        (9, 0) => x(2, 30),
        (9, 1..=9) => x(2, 90),
        _ => {
            let c = digit(2)?;
            match (a, b, c) {
                (2, 3, 5) => x(3, 28),
                (2, 4, 0 | 1) | (2, 5, 0 | 1) => x(3, 30),
                (2, 4, 2) => n_range(3, 1, 6),
                (2, 4, 3) | (2, 5, 4) => x(3, 20),
                (2, 5, 3) => nx(3, 13, 13, 30).with(Key(13)),
                (2, 5, 5) => n_range(3, 13, 25).with(Key(13)),
                (4, 0, 0 | 1 | 3) => x(3, 30),
                (4, 0, 2) => n(3, 17).with(Key(17)),
                (4, 1, 0..=7) => n(3, 13).with(Key(13)),
                (4, 2, 0) => x(3, 20),
                (4, 2, 1) => nx(3, 3, 4, 12),
                (4, 2, 2 | 4 | 6) => n(3, 3),
                (4, 2, 3 | 5) => n_range(3, 3, 15),
                (4, 2, 7) => x(3, 3),
                (7, 1, 0..=6) => x(3, 20),
                _ => {
                    let d = digit(3)?;
                    match (a, b, c, d) {
                        // Measures: the fourth digit is the decimal point position.
                        (3, 1, 0..=6, _)
                        | (3, 2, _, _)
                        | (3, 3, 0..=7, _)
                        | (3, 4, _, _)
                        | (3, 5, 0..=7, _)
                        | (3, 6, _, _) => n(4, 6),
                        (3, 9, 0 | 2, _) => n_range(4, 1, 15),
                        (3, 9, 1 | 3, _) => n_range(4, 4, 18),
                        (3, 9, 4, _) => n(4, 4),
                        (3, 9, 5, _) => n(4, 6),
                        (7, 0, 0, 1) => n(4, 13),
                        (7, 0, 0, 2) => x(4, 30),
                        (7, 0, 0, 3) => n(4, 10).with(DateTime),
                        (7, 0, 0, 4) => n_range(4, 1, 4),
                        (7, 0, 0, 5) => x(4, 12),
                        (7, 0, 0, 6) => n(4, 6).with(Date),
                        (7, 0, 0, 7) => n_range(4, 6, 12).with(DateRange),
                        (7, 0, 0, 8) => x(4, 3),
                        (7, 0, 0, 9) => x(4, 10),
                        (7, 0, 1, 0) => x(4, 2),
                        (8, 0, 0, 1) => n(4, 14),
                        (8, 0, 0, 2) | (8, 0, 1, 2) => x(4, 20),
                        (8, 0, 0, 3) => nx(4, 14, 14, 30).with(Key(14)),
                        (8, 0, 0, 4) | (8, 0, 1, 0) => x(4, 30),
                        (8, 0, 0, 5) => n(4, 6),
                        (8, 0, 0, 6) | (8, 0, 2, 6) => n(4, 18).with(Key(14)),
                        (8, 0, 0, 7) => x(4, 34),
                        (8, 0, 0, 8) => n_range(4, 8, 12).with(DateTime),
                        (8, 0, 0, 9) => x(4, 50),
                        (8, 0, 1, 1) => n_range(4, 1, 12),
                        (8, 0, 1, 3) | (8, 0, 2, 0) => x(4, 25),
                        (8, 0, 1, 7 | 8) => n(4, 18).with(Key(18)),
                        (8, 0, 1, 9) => n_range(4, 1, 10),
                        (8, 1, 1, 0 | 2) | (8, 2, 0, 0) => x(4, 70),
                        (8, 1, 1, 1) => n(4, 4),
                        _ => return None,
                    }
                }
            }
        }
    };
    Some(spec)
}

/// Whether `b` is in GS1 character set 82 (the printable set allowed in X fields).
fn is_cset82(b: u8) -> bool {
    matches!(b,
        b'!' | b'"' | b'%'..=b'?' | b'A'..=b'Z' | b'_' | b'a'..=b'z')
}

/// A byte for an error message: the character itself when printable, else its hex code.
fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        format!("byte 0x{b:02x}")
    }
}

/// The four-digit year of a GS1 YY, relative to `current_year` (DOMAIN.md section 2): 51 to 99
/// years ahead means the previous century, 50 to 99 years back the next one.
pub(crate) fn full_year(yy: i32, current_year: i32) -> i32 {
    let current_yy = current_year.rem_euclid(100);
    let century = current_year - current_yy;
    match yy - current_yy {
        51..=99 => century - 100 + yy,
        -99..=-50 => century + 100 + yy,
        _ => century + yy,
    }
}

/// Days in `month` (1-12) of `year`.
fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        _ => 28,
    }
}

/// The number held by two ASCII digits.
fn two_digits(pair: &[u8]) -> u32 {
    pair.iter()
        .fold(0, |n, d| n * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// Checks a YYMMDD date (six ASCII digits) and returns (year, month, day), day 0 = "not given".
fn check_date(ai: &str, yymmdd: &[u8], current_year: i32) -> Result<(i32, u32, u32), String> {
    let (yy, month, day) = match yymmdd {
        [y0, y1, m0, m1, d0, d1] => (
            two_digits(&[*y0, *y1]),
            two_digits(&[*m0, *m1]),
            two_digits(&[*d0, *d1]),
        ),
        _ => return Err(format!("gs1 ai ({ai}) date is not 6 digits")),
    };
    // `yy` is below 100, so the cast is exact.
    let year = full_year(yy as i32, current_year);
    if !(1..=12).contains(&month) {
        return Err(format!("gs1 ai ({ai}) month {month:02} is out of range"));
    }
    if day > days_in_month(year, month) {
        return Err(format!(
            "gs1 ai ({ai}) day {day:02} is out of range for {year:04}-{month:02}"
        ));
    }
    Ok((year, month, day))
}

/// The `YYYY-MM-DD` form of a YYMMDD value (AI 17), DD = 00 read as the month's last day. `None` when
/// the value is not a valid date.
pub(crate) fn iso_date(yymmdd: &str, current_year: i32) -> Option<String> {
    let (year, month, day) = check_date("17", yymmdd.as_bytes(), current_year).ok()?;
    let day = if day == 0 {
        days_in_month(year, month)
    } else {
        day
    };
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

/// Checks one value against its AI's format.
fn check_value(ai: &str, spec: &AiSpec, value: &[u8], current_year: i32) -> Result<(), String> {
    let len = value.len();
    if len > usize::from(spec.max) {
        return Err(format!(
            "gs1 ai ({ai}) value has {len} characters, more than the maximum {}",
            spec.max
        ));
    }
    if len < usize::from(spec.min) {
        return Err(if len == 0 {
            format!("gs1 ai ({ai}) value is empty")
        } else {
            format!(
                "gs1 ai ({ai}) value has {len} characters, fewer than the minimum {}",
                spec.min
            )
        });
    }
    let numeric_len = len.min(usize::from(spec.digits));
    let (numeric, text) = value.split_at(numeric_len);
    if let Some(&bad) = numeric.iter().find(|b| !b.is_ascii_digit()) {
        return Err(format!(
            "gs1 ai ({ai}) value has {} where a digit is required",
            describe_byte(bad)
        ));
    }
    if let Some(&bad) = text.iter().find(|&&b| !is_cset82(b)) {
        return Err(format!(
            "gs1 ai ({ai}) value has {}, which is not in the gs1 character set",
            describe_byte(bad)
        ));
    }
    match spec.semantics {
        Semantics::Plain => Ok(()),
        Semantics::Key(key_len) => {
            let key = &value[..usize::from(key_len).min(len)];
            verify_check_digit(key).map_err(|(found, expected)| {
                format!("gs1 ai ({ai}) check digit is {found}, expected {expected}")
            })
        }
        Semantics::Date => check_date(ai, value, current_year).map(drop),
        Semantics::DateRange => {
            if len != 6 && len != 12 {
                return Err(format!(
                    "gs1 ai ({ai}) value has {len} digits, expected a date (6) or two (12)"
                ));
            }
            value
                .chunks(6)
                .try_for_each(|date| check_date(ai, date, current_year).map(drop))
        }
        Semantics::DateTime => {
            let (date, time) = value.split_at(6.min(len));
            check_date(ai, date, current_year)?;
            // HH, then optional MM and SS; a dangling single digit cannot happen for the AIs that
            // use this (their lengths are even), but is reported rather than ignored.
            for (i, pair) in time.chunks(2).enumerate() {
                let limit = if i == 0 { 23 } else { 59 };
                if pair.len() != 2 || two_digits(pair) > limit {
                    return Err(format!("gs1 ai ({ai}) time is out of range"));
                }
            }
            Ok(())
        }
    }
}

/// Reads the element string `data` (the scanned data after any symbology identifier).
pub(crate) fn parse(data: &[u8], current_year: i32) -> Elements {
    let mut elements = Elements::default();
    if let Err(error) = parse_into(data, current_year, &mut elements.ai) {
        elements.error = Some(error);
    }
    elements
}

/// The loop behind [`parse`]: fills `out` element by element, stopping at the first error.
fn parse_into(
    data: &[u8],
    current_year: i32,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let mut pos = 0;
    loop {
        // Separators where none is needed (leading, trailing, after a fixed-length value, doubled)
        // carry no data: skip them.
        while data.get(pos) == Some(&GS) {
            pos += 1;
        }
        let Some(rest) = data.get(pos..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        let Some(spec) = lookup(rest) else {
            return Err(format!(
                "unknown gs1 ai at offset {pos} (data \"{}\")",
                escape_raw(&rest[..rest.len().min(4)])
            ));
        };
        let (ai_bytes, after) = rest.split_at(usize::from(spec.ai_len));
        // `lookup` only accepts ASCII digits, so this copy is exact.
        let ai: String = ai_bytes.iter().map(|&b| char::from(b)).collect();
        let value = match predefined_length([ai_bytes[0], ai_bytes[1]]) {
            Some(len) => {
                let available = after
                    .iter()
                    .take(len)
                    .position(|&b| b == GS)
                    .unwrap_or(after.len().min(len));
                if available < len {
                    return Err(format!(
                        "gs1 ai ({ai}) value is truncated: {available} of {len} characters"
                    ));
                }
                &after[..len]
            }
            None => {
                let end = after.iter().position(|&b| b == GS).unwrap_or(after.len());
                &after[..end]
            }
        };
        check_value(&ai, &spec, value, current_year)?;
        // `check_value` accepted only digits and CSET 82, all ASCII, so this copy is exact.
        let value_text: String = value.iter().map(|&b| char::from(b)).collect();
        if let Some(earlier) = out.get(&ai) {
            if *earlier != value_text {
                return Err(format!("gs1 ai ({ai}) appears twice with different values"));
            }
        } else {
            out.insert(ai, value_text);
        }
        pos += ai_bytes.len() + value.len();
    }
    if out.is_empty() {
        return Err("gs1 element string is empty".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(data: &[u8]) -> BTreeMap<String, String> {
        let elements = parse(data, 2026);
        assert_eq!(elements.error, None, "{}", escape_raw(data));
        elements.ai
    }

    fn err(data: &[u8]) -> String {
        parse(data, 2026)
            .error
            .unwrap_or_else(|| panic!("expected an error for {}", escape_raw(data)))
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_pharma_pack() {
        assert_eq!(
            ok(b"01069012345678921727063010ABC123\x1d21SN0001"),
            map(&[
                ("01", "06901234567892"),
                ("17", "270630"),
                ("10", "ABC123"),
                ("21", "SN0001")
            ])
        );
    }

    #[test]
    fn tolerates_extra_separators() {
        let expected = map(&[("01", "06901234567892"), ("10", "ABC")]);
        assert_eq!(ok(b"\x1d0106901234567892\x1d10ABC\x1d"), expected);
        assert_eq!(ok(b"0106901234567892\x1d\x1d10ABC\x1d\x1d"), expected);
    }

    #[test]
    fn missing_separator_is_read_literally() {
        // Undetectable by design: the serial becomes part of the lot.
        assert_eq!(
            ok(b"010690123456789210ABC21SN1"),
            map(&[("01", "06901234567892"), ("10", "ABC21SN1")])
        );
    }

    #[test]
    fn keeps_elements_before_an_error() {
        let elements = parse(b"0106901234567892\x1d10ABC\x1d99", 2026);
        assert_eq!(elements.ai, map(&[("01", "06901234567892"), ("10", "ABC")]));
        assert_eq!(
            elements.error.as_deref(),
            Some("gs1 ai (99) value is empty")
        );
    }

    #[test]
    fn reports_detectable_errors() {
        let cases: [(&[u8], &str); 15] = [
            (
                b"0106901234567893",
                "gs1 ai (01) check digit is 3, expected 2",
            ),
            (
                b"010690123456789",
                "gs1 ai (01) value is truncated: 13 of 14 characters",
            ),
            (
                b"01069012\x1d34567892",
                "gs1 ai (01) value is truncated: 6 of 14 characters",
            ),
            (b"2312345", "unknown gs1 ai at offset 0 (data \"2312\")"),
            (
                b"10ABCDEFGHIJKLMNOPQRSTU",
                "gs1 ai (10) value has 21 characters, more than the maximum 20",
            ),
            (b"17271301", "gs1 ai (17) month 13 is out of range"),
            (
                b"172702300",
                "gs1 ai (17) day 30 is out of range for 2027-02",
            ),
            (
                b"3012A",
                "gs1 ai (30) value has 'A' where a digit is required",
            ),
            (
                b"10AB C",
                "gs1 ai (10) value has byte 0x20, which is not in the gs1 character set",
            ),
            (
                b"402123456789012345678",
                "gs1 ai (402) value has 18 characters, more than the maximum 17",
            ),
            (
                b"421156",
                "gs1 ai (421) value has 3 characters, fewer than the minimum 4",
            ),
            (
                b"10A\x1d10B",
                "gs1 ai (10) appears twice with different values",
            ),
            (b"70032701011260", "gs1 ai (7003) time is out of range"),
            (b"", "gs1 element string is empty"),
            (b"\x1d", "gs1 element string is empty"),
        ];
        for (data, expected) in cases {
            assert_eq!(err(data), expected, "{}", escape_raw(data));
        }
    }

    #[test]
    fn same_ai_twice_with_same_value_is_fine() {
        assert_eq!(ok(b"10A\x1d10A"), map(&[("10", "A")]));
    }

    #[test]
    fn knows_the_required_ais() {
        // At least one valid value for each AI the brief lists, as one string per AI.
        let cases: &[&[u8]] = &[
            b"00106141412345678908",
            b"0106901234567892",
            b"0206901234567892",
            b"0306901234567892",
            b"10LOT-1",
            b"11260101",
            b"12260101",
            b"13260101",
            b"15260100",
            b"16260101",
            b"17260229\x1d",
            b"2001",
            b"21SN/1",
            b"22VAR",
            b"240ADDL",
            b"241CUST",
            b"250SEC",
            b"251REF",
            b"2536901234567892DOC1",
            b"254EXT",
            b"3012345678",
            b"3103001250",
            b"3929123",
            b"3650000100",
            b"3712",
            b"400PO-7",
            b"401GINC",
            b"40269012345678901X",
            b"403ROUTE",
            b"4106901234567892",
            b"4176901234567892",
            b"420100080",
            b"42115610",
            b"422156",
            b"7003270101123",
            b"710NHRN",
            b"716AIC123",
            b"8005000120",
            b"800826010112",
            b"801806141411234567893",
            b"802012345",
            b"90INTERNAL",
            b"91X",
            b"99ABC",
        ];
        for data in cases {
            let elements = parse(data, 2026);
            // 402 and 7003 above carry deliberately odd values: they only prove the AI is known.
            if let Some(error) = elements.error {
                assert!(
                    !error.starts_with("unknown"),
                    "{}: {error}",
                    escape_raw(data)
                );
            }
        }
        // And the measures family, with its holes.
        assert!(lookup(b"3170").is_none());
        assert!(lookup(b"3380").is_none());
        assert!(lookup(b"3580").is_none());
        assert!(lookup(b"3205").is_some());
        assert!(lookup(b"3699").is_some());
        // A prefix of an AI is not an AI.
        assert!(lookup(b"8").is_none());
        assert!(lookup(b"80").is_none());
        assert!(lookup(b"800").is_none());
    }

    #[test]
    fn predefined_lengths_agree_with_the_ai_table() {
        for ai in 0..10_000u32 {
            let text = format!("{ai:04}");
            let bytes = text.as_bytes();
            let Some(spec) = lookup(bytes) else { continue };
            if let Some(len) = predefined_length([bytes[0], bytes[1]]) {
                assert_eq!(
                    (usize::from(spec.min), usize::from(spec.max)),
                    (len, len),
                    "ai {}",
                    &text[..usize::from(spec.ai_len)]
                );
            }
        }
    }

    #[test]
    fn century_rule() {
        assert_eq!(full_year(27, 2026), 2027);
        assert_eq!(full_year(76, 2026), 2076); // +50: still this century
        assert_eq!(full_year(77, 2026), 1977); // +51: previous century
        assert_eq!(full_year(2, 2098), 2102); // -96: next century
        assert_eq!(full_year(48, 2098), 2148); // -50: next century
        assert_eq!(full_year(49, 2098), 2049); // -49
        assert_eq!(full_year(49, 2099), 2149); // -50
        assert_eq!(full_year(50, 2099), 2050); // -49
        assert_eq!(full_year(0, 2000), 2000);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_date("270630", 2026).as_deref(), Some("2027-06-30"));
        assert_eq!(iso_date("260200", 2026).as_deref(), Some("2026-02-28"));
        assert_eq!(iso_date("280200", 2026).as_deref(), Some("2028-02-29"));
        assert_eq!(iso_date("261100", 2026).as_deref(), Some("2026-11-30"));
        assert_eq!(iso_date("261301", 2026), None);
        assert_eq!(iso_date("2611", 2026), None);
    }
}
