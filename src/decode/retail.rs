//! Retail product codes: EAN-13, UPC-A, UPC-E, EAN-8 and ITF-14, their GS1 mod-10 check digit and
//! their GTIN-14 form.
//!
//! The GTIN-14 of a retail code is the code left-padded with zeros to 14 digits; the check digit is
//! unchanged (GS1 General Specifications; DOMAIN.md section 2). UPC-E is first expanded to UPC-A.

use super::kind::CodeKind;

/// What a retail code decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retail {
    /// What the code is (or looked like, when `error` is set).
    pub kind: CodeKind,
    /// The GTIN-14, only when the check digit is valid.
    pub gtin: Option<String>,
    /// Why the code is not valid, else `None`.
    pub error: Option<String>,
}

/// Whether `bytes` is one or more ASCII digits.
pub(crate) fn all_digits(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit)
}

/// The GS1 mod-10 check digit (0-9) for `data`, the ASCII digits *before* the check digit:
/// weights 3, 1, 3, … from the rightmost digit; check = (10 − sum mod 10) mod 10.
pub fn check_digit(data: &[u8]) -> u8 {
    let sum: u32 = data
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d.wrapping_sub(b'0'));
            if i % 2 == 0 {
                3 * d
            } else {
                d
            }
        })
        .sum();
    // `sum % 10` is below 10, so the result fits a u8.
    ((10 - sum % 10) % 10) as u8
}

/// Checks the last digit of `digits` (all ASCII digits, at least two) against the others.
/// `Err((found, expected))` when it does not match.
pub(crate) fn verify_check_digit(digits: &[u8]) -> Result<(), (u8, u8)> {
    let Some((&last, data)) = digits.split_last() else {
        return Err((0, 0));
    };
    let found = last.wrapping_sub(b'0');
    let expected = check_digit(data);
    if found == expected {
        Ok(())
    } else {
        Err((found, expected))
    }
}

/// `digits` left-padded with zeros to 14 characters (a GTIN-14).
fn gtin14(digits: &[u8]) -> String {
    let mut gtin = String::with_capacity(14);
    for _ in digits.len()..14 {
        gtin.push('0');
    }
    // Only ever called with ASCII digits.
    gtin.extend(digits.iter().map(|&d| char::from(d)));
    gtin
}

/// Verifies the check digit of `digits` and builds the result for a code of `kind`; `label` names
/// the symbology in the error message.
fn checked(kind: CodeKind, label: &str, digits: &[u8]) -> Retail {
    match verify_check_digit(digits) {
        Ok(()) => Retail {
            kind,
            gtin: Some(gtin14(digits)),
            error: None,
        },
        Err((found, expected)) => Retail {
            kind,
            gtin: None,
            error: Some(format!(
                "{label} check digit is {found}, expected {expected}"
            )),
        },
    }
}

/// EAN-13 digits: a leading `0` makes it a UPC-A sent in its 13-digit form.
fn ean13_or_upca(digits: &[u8]) -> Retail {
    if digits.first() == Some(&b'0') {
        checked(CodeKind::Upca, "upc-a", digits)
    } else {
        checked(CodeKind::Ean13, "ean-13", digits)
    }
}

/// Expands the 8 digits of a UPC-E code (number system, 6 digits, check digit) to the 12 digits of
/// its UPC-A, check digit copied over. `None` when the number system is not 0 or 1.
fn upce_to_upca(upce: &[u8; 8]) -> Option<[u8; 12]> {
    let [ns, d1, d2, d3, d4, d5, d6, check] = *upce;
    if ns != b'0' && ns != b'1' {
        return None;
    }
    let z = b'0';
    // The last of the six digits says where the manufacturer/product zeros were suppressed.
    let body = match d6 {
        b'0'..=b'2' => [d1, d2, d6, z, z, z, z, d3, d4, d5],
        b'3' => [d1, d2, d3, z, z, z, z, z, d4, d5],
        b'4' => [d1, d2, d3, d4, z, z, z, z, z, d5],
        _ => [d1, d2, d3, d4, d5, z, z, z, z, d6],
    };
    let mut upca = [0u8; 12];
    upca[0] = ns;
    upca[1..11].copy_from_slice(&body);
    upca[11] = check;
    Some(upca)
}

/// A code read with an EAN/UPC identifier (`]E` + `modifier`).
pub(crate) fn ean_upc(modifier: u8, data: &[u8]) -> Retail {
    let kind_if_bad = if modifier == b'4' {
        CodeKind::Ean8
    } else {
        CodeKind::Ean13
    };
    let bad = |error: String| Retail {
        kind: kind_if_bad,
        gtin: None,
        error: Some(error),
    };
    if !all_digits(data) {
        return bad("ean/upc code contains a character that is not a digit".to_string());
    }
    match (modifier, data.len()) {
        (b'4', 8) => checked(CodeKind::Ean8, "ean-8", data),
        (b'4', n) => bad(format!("ean-8 code has {n} digits, expected 8")),
        (_, 13) => ean13_or_upca(data),
        (_, 12) => checked(CodeKind::Upca, "upc-a", data),
        (b'0', 8) => {
            let mut upce = [0u8; 8];
            upce.copy_from_slice(data);
            match upce_to_upca(&upce) {
                Some(upca) => checked(CodeKind::Upca, "upc-e", &upca),
                None => bad("upc-e number system must be 0 or 1".to_string()),
            }
        }
        // ]E1 / ]E2 / ]E3: the main code followed by its 2 or 5 digit add-on, which is not part of
        // the GTIN (it carries an issue number or a price).
        (b'1'..=b'3', 15 | 18) => ean13_or_upca(&data[..13]),
        (b'1'..=b'3', 14 | 17) => checked(CodeKind::Upca, "upc-a", &data[..12]),
        // An add-on sent as a packet of its own identifies no product.
        (b'1'..=b'3', 2 | 5) => Retail {
            kind: CodeKind::Other,
            gtin: None,
            error: None,
        },
        (_, n) => bad(format!("ean/upc code has {n} digits, expected 8, 12 or 13")),
    }
}

/// A code read with an ITF identifier (`]I0` / `]I1`): ITF-14 when it has 14 digits, otherwise
/// some other interleaved 2 of 5 code.
pub(crate) fn itf(data: &[u8]) -> Retail {
    if data.len() == 14 && all_digits(data) {
        checked(CodeKind::Itf14, "itf-14", data)
    } else {
        Retail {
            kind: CodeKind::Other,
            gtin: None,
            error: None,
        }
    }
}

/// A code read without an identifier: 13, 12, 8 or 14 digits with a valid check digit are taken
/// as EAN-13 (or UPC-A), UPC-A, EAN-8, ITF-14. `None` for anything else, including those lengths
/// with a bad check digit (then it is more likely some internal numeric code than a misread).
pub(crate) fn untagged(data: &[u8]) -> Option<Retail> {
    if !all_digits(data) || verify_check_digit(data).is_err() {
        return None;
    }
    match data.len() {
        13 => Some(ean13_or_upca(data)),
        12 => Some(checked(CodeKind::Upca, "upc-a", data)),
        8 => Some(checked(CodeKind::Ean8, "ean-8", data)),
        14 => Some(checked(CodeKind::Itf14, "itf-14", data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digit_matches_domain_example() {
        assert_eq!(check_digit(b"690123456789"), 2);
        assert!(verify_check_digit(b"6901234567892").is_ok());
        assert_eq!(verify_check_digit(b"6901234567893"), Err((3, 2)));
        // An all-zero sum gives 0, not 10.
        assert_eq!(check_digit(b"0000000"), 0);
    }

    #[test]
    fn gtin14_pads_to_fourteen() {
        assert_eq!(gtin14(b"6901234567892"), "06901234567892");
        assert_eq!(gtin14(b"69012341"), "00000069012341");
        assert_eq!(gtin14(b"16901234567899"), "16901234567899");
    }

    #[test]
    fn upce_expands_by_last_digit() {
        // Examples from the GS1 UPC-E zero-suppression table.
        let cases: [(&[u8; 8], &[u8; 12]); 4] = [
            (b"04252614", b"042100005264"),
            (b"01234531", b"012300000451"),
            (b"01234542", b"012340000052"),
            (b"01234565", b"012345000065"),
        ];
        for (upce, upca) in cases {
            assert_eq!(upce_to_upca(upce).as_ref(), Some(upca), "{upce:?}");
        }
        assert_eq!(upce_to_upca(b"24252614"), None);
    }

    #[test]
    fn upce_with_e0_gives_upca_gtin() {
        let r = ean_upc(b'0', b"04252614");
        assert_eq!(r.kind, CodeKind::Upca);
        assert_eq!(r.gtin.as_deref(), Some("00042100005264"));
        assert_eq!(r.error, None);
        assert!(ean_upc(b'0', b"04252615").error.is_some());
    }

    #[test]
    fn upca_twelve_digits_normalised() {
        let r = ean_upc(b'0', b"036000291452");
        assert_eq!(r.kind, CodeKind::Upca);
        assert_eq!(r.gtin.as_deref(), Some("00036000291452"));
    }

    #[test]
    fn addon_packets() {
        let r = ean_upc(b'3', b"690123456789212");
        assert_eq!(r.kind, CodeKind::Ean13);
        assert_eq!(r.gtin.as_deref(), Some("06901234567892"));
        let r = ean_upc(b'2', b"690123456789212345");
        assert_eq!(r.gtin.as_deref(), Some("06901234567892"));
        let r = ean_upc(b'1', b"12");
        assert_eq!(r.kind, CodeKind::Other);
        assert_eq!(r.error, None);
    }

    #[test]
    fn wrong_lengths_and_characters_are_errors() {
        let r = ean_upc(b'0', b"1234567");
        assert_eq!(r.kind, CodeKind::Ean13);
        assert!(r.error.is_some_and(|e| e.contains("7 digits")));
        let r = ean_upc(b'4', b"6901234567892");
        assert_eq!(r.kind, CodeKind::Ean8);
        assert!(r.error.is_some());
        assert!(ean_upc(b'0', b"69012345678X2").error.is_some());
        assert!(ean_upc(b'0', b"").error.is_some());
    }

    #[test]
    fn itf_only_fourteen_digits_is_itf14() {
        let r = itf(b"16901234567899");
        assert_eq!(r.kind, CodeKind::Itf14);
        assert_eq!(r.gtin.as_deref(), Some("16901234567899"));
        let r = itf(b"16901234567898");
        assert_eq!(r.kind, CodeKind::Itf14);
        assert_eq!(r.gtin, None);
        assert_eq!(
            r.error.as_deref(),
            Some("itf-14 check digit is 8, expected 9")
        );
        assert_eq!(itf(b"123456").kind, CodeKind::Other);
    }

    #[test]
    fn untagged_needs_valid_check_digit() {
        assert_eq!(
            untagged(b"6901234567892").map(|r| r.kind),
            Some(CodeKind::Ean13)
        );
        assert_eq!(
            untagged(b"0036000291452").map(|r| r.kind),
            Some(CodeKind::Upca)
        );
        assert_eq!(
            untagged(b"036000291452").map(|r| r.kind),
            Some(CodeKind::Upca)
        );
        assert_eq!(untagged(b"69012341").map(|r| r.kind), Some(CodeKind::Ean8));
        assert_eq!(
            untagged(b"16901234567899").map(|r| r.kind),
            Some(CodeKind::Itf14)
        );
        assert_eq!(untagged(b"6901234567893"), None);
        assert_eq!(untagged(b"12345"), None);
        assert_eq!(untagged(b"ABC"), None);
    }
}
