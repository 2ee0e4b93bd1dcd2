//! [`decode_scan`]: one frame in, the decode fields of a `scan` record out. The classification order
//! is described in the module doc of `decode`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aim::{split_aim, AimId};
use super::gs1::{self, GS};
use super::kind::CodeKind;
use super::retail::{self, all_digits, verify_check_digit, Retail};

/// What decoding one scanned frame found. Serialises to the decode-related fields of a `scan`
/// record's `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodedScan {
    /// The AIM symbology identifier the frame started with (`"]E0"`), or `None`.
    pub symbology: Option<String>,
    /// The scanned data without the symbology identifier; GS is the character U+001D.
    pub code: String,
    /// What kind of code this is (or looked like, when `error` is set).
    pub code_kind: CodeKind,
    /// The GTIN-14 of the product, when the code carries one with a valid check digit.
    pub gtin: Option<String>,
    /// GS1 element strings: AI → value (the elements read before any error), else `None`.
    pub ai: Option<BTreeMap<String, String>>,
    /// AI 17 as `YYYY-MM-DD`, DD = 00 read as the month's last day.
    pub expiry: Option<String>,
    /// AI 10, the batch or lot number.
    pub lot: Option<String>,
    /// AI 21, the serial number.
    pub serial: Option<String>,
    /// The drug traceability code: the 20 digits of a China trace code, or a GS1 code's whole element
    /// string (GS as U+001D).
    pub trace_code: Option<String>,
    /// Why the code could not be decoded (fully), else `None`.
    pub error: Option<String>,
}

/// Context that decoding needs from outside: the current year, for GS1 YYMMDD century resolution
/// (DOMAIN.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// The current calendar year (store-local), e.g. 2026.
    pub current_year: i32,
}

/// Decodes one scanned frame (without its terminator or configured prefix). Never fails: what
/// could not be decoded is said in `error`.
pub fn decode_scan(frame: &[u8], ctx: &DecodeContext) -> DecodedScan {
    let (aim, data) = split_aim(frame);
    let (code, utf8_error) = match std::str::from_utf8(data) {
        Ok(text) => (text.to_owned(), None),
        Err(e) => (
            String::from_utf8_lossy(data).into_owned(),
            Some(format!(
                "code is not valid utf-8 at offset {}",
                e.valid_up_to()
            )),
        ),
    };
    let mut scan = DecodedScan {
        // The identifier is three ASCII characters, so the conversion is exact.
        symbology: aim.map(|_| frame[..3].iter().map(|&b| char::from(b)).collect()),
        code,
        code_kind: CodeKind::Other,
        gtin: None,
        ai: None,
        expiry: None,
        lot: None,
        serial: None,
        trace_code: None,
        error: None,
    };
    classify(&mut scan, aim, data, ctx);
    if scan.error.is_none() {
        scan.error = utf8_error;
    }
    scan
}

/// Fills the classification fields of `scan` from the identifier and the data, in DOMAIN.md's
/// order: GS1, China trace code, retail codes, then by symbology.
fn classify(scan: &mut DecodedScan, aim: Option<AimId>, data: &[u8], ctx: &DecodeContext) {
    let is_gs1 = match aim {
        Some(id) => id.is_gs1(),
        None => starts_with_gtin(data),
    };
    if is_gs1 {
        return fill_gs1(scan, data, ctx);
    }
    let code128_or_none = aim.is_none_or(|id| id.letter == b'C' && id.modifier == b'0');
    if code128_or_none && is_cn_trace(data) {
        scan.code_kind = CodeKind::CnTrace;
        scan.trace_code = Some(scan.code.clone());
        return;
    }
    let retail = match aim {
        Some(AimId {
            letter: b'E',
            modifier,
        }) => Some(retail::ean_upc(modifier, data)),
        Some(AimId { letter: b'I', .. }) => Some(retail::itf(data)),
        None => retail::untagged(data),
        Some(_) => None,
    };
    if let Some(Retail { kind, gtin, error }) = retail {
        scan.code_kind = kind;
        scan.gtin = gtin;
        scan.error = error;
        return;
    }
    scan.code_kind = match aim.map(|id| id.letter) {
        Some(b'Q') => CodeKind::Qr,
        Some(b'C') => CodeKind::Code128,
        _ => CodeKind::Other,
    };
}

/// Whether untagged data is a GS1 element string: `01` and a GTIN-14 with a valid check digit
/// (DOMAIN.md rule 1). A leading GS (an FNC1 some scanners transmit) is allowed.
fn starts_with_gtin(data: &[u8]) -> bool {
    let data = data.strip_prefix(&[GS]).unwrap_or(data);
    match data.strip_prefix(b"01").and_then(|rest| rest.get(..14)) {
        Some(gtin) => all_digits(gtin) && verify_check_digit(gtin).is_ok(),
        None => false,
    }
}

/// Whether data is a China drug traceability code: exactly 20 digits starting with `8`.
fn is_cn_trace(data: &[u8]) -> bool {
    data.len() == 20 && data[0] == b'8' && all_digits(data)
}

/// Fills `scan` from the GS1 element string `data`.
fn fill_gs1(scan: &mut DecodedScan, data: &[u8], ctx: &DecodeContext) {
    let elements = gs1::parse(data, ctx.current_year);
    let ai = elements.ai;
    scan.code_kind = CodeKind::Gs1;
    // Values are only stored after their checks passed: a GTIN here has a valid check digit and
    // an AI 17 is a valid date.
    scan.gtin = ai.get("01").cloned();
    scan.expiry = ai
        .get("17")
        .and_then(|yymmdd| gs1::iso_date(yymmdd, ctx.current_year));
    scan.lot = ai.get("10").cloned();
    scan.serial = ai.get("21").cloned();
    scan.trace_code = Some(scan.code.clone());
    scan.ai = (!ai.is_empty()).then_some(ai);
    scan.error = elements.error;
}

#[cfg(test)]
mod tests {
    use super::super::raw::escape_raw;
    use super::*;
    use proptest::prelude::*;

    const CTX: DecodeContext = DecodeContext { current_year: 2026 };

    fn decode(frame: &[u8]) -> DecodedScan {
        decode_scan(frame, &CTX)
    }

    /// Where the GS1 vectors live: the repository's `tests/fixtures`, unless `POSGW_FIXTURES`
    /// names another folder.
    fn fixture(name: &str) -> std::path::PathBuf {
        let dir = std::env::var_os("POSGW_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures").into());
        dir.join(name)
    }

    #[test]
    fn shared_gs1_vectors_pass() {
        let path = fixture("gs1-vectors.tsv");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut checked = 0;
        for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let mut fields = line.split('\t');
            let (Some(name), Some(raw), Some(expected)) =
                (fields.next(), fields.next(), fields.next())
            else {
                panic!("malformed vector line: {line}");
            };
            let frame = raw.replace("<GS>", "\x1d");
            let expected: serde_json::Value = serde_json::from_str(expected)
                .unwrap_or_else(|e| panic!("{name}: bad expected json: {e}"));
            let got = decode(frame.as_bytes());
            let context = format!("{name}: {got:?}");

            if expected["error"] == serde_json::Value::Bool(true) {
                assert!(got.error.is_some(), "{context}");
            } else {
                assert_eq!(got.error, None, "{context}");
            }
            if let Some(kinds) = expected["kind"].as_str() {
                assert!(
                    kinds.split('|').any(|k| k == got.code_kind.as_str()),
                    "{context}: kind should be {kinds}"
                );
            }
            if let Some(gtin) = expected.get("gtin") {
                assert_eq!(got.gtin.as_deref(), gtin.as_str(), "{context}");
            }
            if let Some(ai) = expected.get("ai") {
                let ai: BTreeMap<String, String> = serde_json::from_value(ai.clone())
                    .unwrap_or_else(|e| panic!("{name}: bad ai object: {e}"));
                assert_eq!(got.ai.as_ref(), Some(&ai), "{context}");
            }
            checked += 1;
        }
        assert!(checked >= 14, "only {checked} vectors read");
    }

    #[test]
    fn ean13_with_identifier() {
        let scan = decode(b"]E06901234567892");
        assert_eq!(
            scan,
            DecodedScan {
                symbology: Some("]E0".to_string()),
                code: "6901234567892".to_string(),
                code_kind: CodeKind::Ean13,
                gtin: Some("06901234567892".to_string()),
                ai: None,
                expiry: None,
                lot: None,
                serial: None,
                trace_code: None,
                error: None,
            }
        );
    }

    #[test]
    fn gs1_pharma_pack_fields() {
        let scan = decode(b"]d201069012345678921727063010ABC123\x1d21SN0001");
        assert_eq!(scan.code_kind, CodeKind::Gs1);
        assert_eq!(scan.symbology.as_deref(), Some("]d2"));
        assert_eq!(scan.gtin.as_deref(), Some("06901234567892"));
        assert_eq!(scan.expiry.as_deref(), Some("2027-06-30"));
        assert_eq!(scan.lot.as_deref(), Some("ABC123"));
        assert_eq!(scan.serial.as_deref(), Some("SN0001"));
        assert_eq!(
            scan.trace_code.as_deref(),
            Some("01069012345678921727063010ABC123\u{1d}21SN0001")
        );
        assert_eq!(scan.code, scan.trace_code.clone().unwrap_or_default());
        assert_eq!(scan.error, None);
    }

    #[test]
    fn expiry_day_zero_is_last_day_of_month() {
        let scan = decode(b"]d201069012345678921726020010B2");
        assert_eq!(scan.expiry.as_deref(), Some("2026-02-28"));
    }

    #[test]
    fn gs1_error_keeps_what_was_read() {
        let scan = decode(b"]d2010690123456789210LOT1\x1d172613");
        assert_eq!(scan.code_kind, CodeKind::Gs1);
        assert_eq!(scan.gtin.as_deref(), Some("06901234567892"));
        assert_eq!(scan.lot.as_deref(), Some("LOT1"));
        assert_eq!(scan.expiry, None);
        assert_eq!(
            scan.error.as_deref(),
            Some("gs1 ai (17) value is truncated: 4 of 6 characters")
        );
        // A bad GTIN: no gtin, no ai at all.
        let scan = decode(b"]d20106901234567893");
        assert_eq!((scan.gtin, scan.ai), (None, None));
        assert!(scan.error.is_some());
    }

    #[test]
    fn cn_trace_code_before_gs1_and_ean() {
        for frame in [&b"81100001234567890123"[..], b"]C081100001234567890123"] {
            let scan = decode(frame);
            assert_eq!(scan.code_kind, CodeKind::CnTrace, "{}", escape_raw(frame));
            assert_eq!(scan.trace_code.as_deref(), Some("81100001234567890123"));
            assert_eq!((scan.gtin, scan.ai, scan.error), (None, None, None));
        }
        // With a 2D identifier the same digits are not a trace code (DOMAIN.md rule 2).
        assert_eq!(
            decode(b"]d181100001234567890123").code_kind,
            CodeKind::Other
        );
        // 19 or 21 digits, or not starting with 8, are something else.
        assert_eq!(decode(b"8110000123456789012").code_kind, CodeKind::Other);
        assert_eq!(
            decode(b"]C071100001234567890123").code_kind,
            CodeKind::Code128
        );
    }

    #[test]
    fn untagged_gs1_needs_valid_gtin() {
        let scan = decode(b"0106901234567892");
        assert_eq!(scan.code_kind, CodeKind::Gs1);
        let scan = decode(b"\x1d0106901234567892\x1d10A");
        assert_eq!(scan.code_kind, CodeKind::Gs1);
        assert_eq!(scan.lot.as_deref(), Some("A"));
        // Bad check digit and no identifier: just some other code.
        let scan = decode(b"0106901234567893");
        assert_eq!((scan.code_kind, scan.error), (CodeKind::Other, None));
    }

    #[test]
    fn symbology_kinds() {
        let cases: [(&[u8], CodeKind); 11] = [
            (b"]Q1https://example.com/x", CodeKind::Qr),
            (b"]Q0abc", CodeKind::Qr),
            (b"]Q30106901234567892", CodeKind::Gs1),
            (b"]e00106901234567892", CodeKind::Gs1),
            (b"]C10106901234567892", CodeKind::Gs1),
            (b"]C0ABC-123", CodeKind::Code128),
            (b"]C06901234567892", CodeKind::Code128),
            (b"]A0CODE39", CodeKind::Other),
            (b"]E469012341", CodeKind::Ean8),
            (b"69012341", CodeKind::Ean8),
            (b"hello", CodeKind::Other),
        ];
        for (frame, kind) in cases {
            let scan = decode(frame);
            assert_eq!(scan.code_kind, kind, "{}", escape_raw(frame));
            assert_eq!(scan.error, None, "{}", escape_raw(frame));
        }
    }

    #[test]
    fn retail_errors_keep_kind() {
        let scan = decode(b"]E02112345678901");
        assert_eq!(scan.code_kind, CodeKind::Ean13);
        assert_eq!(scan.gtin, None);
        assert_eq!(
            scan.error.as_deref(),
            Some("ean-13 check digit is 1, expected 0")
        );
        // Untagged 13 digits with a bad check digit are not an EAN-13 (DOMAIN.md rule 4).
        let scan = decode(b"2112345678901");
        assert_eq!((scan.code_kind, scan.error), (CodeKind::Other, None));
    }

    #[test]
    fn identifier_alone_and_empty_frame() {
        let scan = decode(b"]E0");
        assert_eq!(scan.code, "");
        assert_eq!(scan.code_kind, CodeKind::Ean13);
        assert!(scan.error.is_some());
        let scan = decode(b"]d2");
        assert_eq!(scan.error.as_deref(), Some("gs1 element string is empty"));
        let scan = decode(b"");
        assert_eq!((scan.code_kind, scan.error), (CodeKind::Other, None));
    }

    #[test]
    fn invalid_utf8_is_reported_and_replaced() {
        let scan = decode(b"]Q1ab\xffcd");
        assert_eq!(scan.code_kind, CodeKind::Qr);
        assert_eq!(scan.code, "ab\u{fffd}cd");
        assert_eq!(
            scan.error.as_deref(),
            Some("code is not valid utf-8 at offset 2")
        );
    }

    #[test]
    fn serialises_to_record_fields() {
        let scan = decode(b"]d2010690123456789210AB\x1d21C");
        let json = serde_json::to_value(&scan).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "symbology": "]d2",
                "code": "0106901234567892" .to_owned() + "10AB\u{1d}21C",
                "code_kind": "gs1",
                "gtin": "06901234567892",
                "ai": {"01": "06901234567892", "10": "AB", "21": "C"},
                "expiry": null,
                "lot": "AB",
                "serial": "C",
                "trace_code": "0106901234567892".to_owned() + "10AB\u{1d}21C",
                "error": null
            })
        );
        let text = serde_json::to_string(&scan).unwrap_or_default();
        assert!(
            text.contains(r#""code":"010690123456789210AB\u001d21C""#),
            "{text}"
        );
        for kind in [
            CodeKind::Ean13,
            CodeKind::Ean8,
            CodeKind::Upca,
            CodeKind::Itf14,
            CodeKind::Gs1,
            CodeKind::CnTrace,
            CodeKind::Code128,
            CodeKind::Qr,
            CodeKind::Other,
        ] {
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::from(kind.as_str()))
            );
        }
    }

    /// A GTIN-14 with a valid check digit from 13 data digits.
    fn with_check(data: &str) -> String {
        let check = retail::check_digit(data.as_bytes());
        format!("{data}{check}")
    }

    /// GS1 text values (CSET 82, no GS).
    fn gs1_text() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!%&()*+,./:;<=>?_-]{1,20}"
    }

    proptest! {
        #[test]
        fn decode_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..80)) {
            let scan = decode(&frame);
            prop_assert!(serde_json::to_string(&scan).is_ok());
        }

        #[test]
        fn decode_never_panics_on_code_like_input(
            id in prop_oneof![
                Just(String::new()),
                "\\][A-Za-z][0-9A-Za-z]",
                Just("]d2".to_string()),
                Just("]E0".to_string()),
            ],
            body in "[0-9\u{1d}A]{0,60}",
            year in 1900i32..2200,
        ) {
            let frame = format!("{id}{body}");
            let scan = decode_scan(frame.as_bytes(), &DecodeContext { current_year: year });
            if let Some(gtin) = &scan.gtin {
                prop_assert_eq!(gtin.len(), 14);
                prop_assert!(verify_check_digit(gtin.as_bytes()).is_ok());
            }
            if let Some(expiry) = &scan.expiry {
                prop_assert_eq!(expiry.len(), 10);
            }
            prop_assert_eq!(scan.code, body);
        }

        #[test]
        fn gs1_elements_round_trip(
            gtin in "[0-9]{13}",
            // Day 00 is covered by the gs1 module's own tests.
            yy in 0u32..100, mm in 1u32..13, dd in 1u32..29,
            lot in gs1_text(),
            serial in gs1_text(),
            order in 0usize..3,
            trailing_gs in any::<bool>(),
        ) {
            let gtin = with_check(&gtin);
            let expiry = format!("{yy:02}{mm:02}{dd:02}");
            // Variable fields need a GS unless last; fixed ones never do.
            let body = match order {
                0 => format!("01{gtin}17{expiry}10{lot}\x1d21{serial}"),
                1 => format!("21{serial}\x1d01{gtin}10{lot}\x1d17{expiry}"),
                _ => format!("10{lot}\x1d17{expiry}01{gtin}21{serial}"),
            };
            let frame = format!("]d2{body}{}", if trailing_gs { "\x1d" } else { "" });
            let scan = decode(frame.as_bytes());
            prop_assert_eq!(scan.error, None);
            prop_assert_eq!(scan.code_kind, CodeKind::Gs1);
            prop_assert_eq!(scan.gtin.as_deref(), Some(gtin.as_str()));
            prop_assert_eq!(scan.lot.as_deref(), Some(lot.as_str()));
            prop_assert_eq!(scan.serial.as_deref(), Some(serial.as_str()));
            let year = gs1::full_year(yy as i32, CTX.current_year);
            let expected_expiry = format!("{year:04}-{mm:02}-{dd:02}");
            prop_assert_eq!(scan.expiry, Some(expected_expiry));
        }

        #[test]
        fn ean13_with_valid_check_always_decodes(data in "[1-9][0-9]{11}") {
            let code = with_check(&data);
            let scan = decode(format!("]E0{code}").as_bytes());
            prop_assert_eq!(scan.code_kind, CodeKind::Ean13);
            prop_assert_eq!(scan.gtin, Some(format!("0{code}")));
            prop_assert_eq!(scan.error, None);
        }
    }
}
