//! The `data` of a `scan` record (docs/records.md), written by hand; the core fills it in.
//!
//! Every scan becomes one of these, so it is the one record the gateway writes at the rate of
//! the input (an MQTT backlog, a busy store). serde's derive spent about 0.5 µs on each (a key at a
//! time through the generic map serialiser, every string escaped byte by byte); this writes the
//! fixed keys as literals and copies a value that needs no escaping (nearly all do not) in one
//! go. The output is byte for byte what serde_json writes for the same fields: the tests check
//! it against a serde derive of the same struct, on hand-picked and on generated scans.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Data;
use crate::decode::DecodedScan;

/// `data` of a `scan` record: who scanned, what, and what it was decoded to.
#[derive(Debug)]
pub(crate) struct ScanData<'a> {
    pub device: &'a str,
    pub station: &'a str,
    pub raw: &'a str,
    pub decoded: &'a DecodedScan,
    pub campaign: Option<&'a str>,
    pub answer_code: bool,
}

impl ScanData<'_> {
    /// The record's `data`: `{"device":…,"station":…,"raw":…, the decoded fields,
    /// "campaign":…,"answer_code":…}`, in that order.
    pub fn encode(&self) -> Data {
        let decoded = self.decoded;
        // The keys and nulls take about 220 bytes; values rarely need escaping.
        let mut out = String::with_capacity(
            256 + self.device.len()
                + self.station.len()
                + self.raw.len() * 2
                + decoded.code.len() * 2
                + decoded.error.as_ref().map_or(0, String::len),
        );
        out.push_str("{\"device\":");
        push_string(&mut out, self.device);
        out.push_str(",\"station\":");
        push_string(&mut out, self.station);
        out.push_str(",\"raw\":");
        push_string(&mut out, self.raw);
        out.push_str(",\"symbology\":");
        push_option(&mut out, decoded.symbology.as_deref());
        out.push_str(",\"code\":");
        push_string(&mut out, &decoded.code);
        out.push_str(",\"code_kind\":\"");
        out.push_str(decoded.code_kind.as_str());
        out.push_str("\",\"gtin\":");
        push_option(&mut out, decoded.gtin.as_deref());
        out.push_str(",\"ai\":");
        match &decoded.ai {
            Some(ai) => push_map(&mut out, ai),
            None => out.push_str("null"),
        }
        out.push_str(",\"expiry\":");
        push_option(&mut out, decoded.expiry.as_deref());
        out.push_str(",\"lot\":");
        push_option(&mut out, decoded.lot.as_deref());
        out.push_str(",\"serial\":");
        push_option(&mut out, decoded.serial.as_deref());
        out.push_str(",\"trace_code\":");
        push_option(&mut out, decoded.trace_code.as_deref());
        out.push_str(",\"error\":");
        push_option(&mut out, decoded.error.as_deref());
        out.push_str(",\"campaign\":");
        push_option(&mut out, self.campaign);
        out.push_str(if self.answer_code {
            ",\"answer_code\":true}"
        } else {
            ",\"answer_code\":false}"
        });
        Data::from_encoded(out)
    }
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn push_string(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
        return;
    }
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A string or `null`.
fn push_option(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => push_string(out, text),
        None => out.push_str("null"),
    }
}

/// A map of strings as a JSON object, in the map's (sorted) order.
fn push_map(out: &mut String, map: &BTreeMap<String, String>) {
    out.push('{');
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_string(out, key);
        out.push(':');
        push_string(out, value);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;
    use crate::decode::{decode_scan, escape_raw, DecodeContext};

    /// The same fields through serde's derive: what the contract's record looks like.
    #[derive(Serialize)]
    struct BySerde<'a> {
        device: &'a str,
        station: &'a str,
        raw: &'a str,
        #[serde(flatten)]
        decoded: &'a DecodedScan,
        campaign: Option<&'a str>,
        answer_code: bool,
    }

    fn both(data: &ScanData) -> (String, String) {
        let serde = serde_json::to_string(&BySerde {
            device: data.device,
            station: data.station,
            raw: data.raw,
            decoded: data.decoded,
            campaign: data.campaign,
            answer_code: data.answer_code,
        })
        .expect("serde");
        (data.encode().text().into_owned(), serde)
    }

    fn scan(frame: &[u8]) -> (String, DecodedScan) {
        let decoded = decode_scan(frame, &DecodeContext { current_year: 2026 });
        (escape_raw(frame), decoded)
    }

    /// Every kind of code in DOMAIN.md's vectors, errors, GS1 element strings with GS, and
    /// text that needs every kind of escape.
    #[test]
    fn the_hand_written_data_is_what_serde_writes() {
        let frames: &[&[u8]] = &[
            b"]E06901234567892",
            b"]E06901234567893",
            b"]E412345670",
            b"]C1010690123456789217261231109876\x1d21SN123",
            b"]d2010690123456789210ABC\x1d17261200",
            b"]C181234567890123456789",
            b"81234567890123456789",
            b"]Q1https://example.com/\"quoted\"\\path",
            b"]C0\x01\x02control\ttab\nnewline\r\x0c\x08\x7f",
            "]Q0药品 追溯码 ✓".as_bytes(),
            b"",
            b"]X9",
            b"\xff\xfe not utf-8",
        ];
        for frame in frames {
            let (raw, decoded) = scan(frame);
            for (campaign, answer_code) in [(None, false), (Some("flu-2026"), false), (None, true)]
            {
                let data = ScanData {
                    device: "till-1-scanner",
                    station: "till \"1\"",
                    raw: &raw,
                    decoded: &decoded,
                    campaign,
                    answer_code,
                };
                let (hand, serde) = both(&data);
                assert_eq!(hand, serde, "frame {frame:?}");
                serde_json::from_str::<serde_json::Value>(&hand).expect("valid JSON");
            }
        }
    }

    proptest! {
        #[test]
        fn any_scan_is_written_as_serde_writes_it(
            frame in proptest::collection::vec(any::<u8>(), 0..80),
            device in any::<String>(),
            campaign in proptest::option::of(any::<String>()),
            answer_code in any::<bool>(),
        ) {
            let (raw, decoded) = scan(&frame);
            let data = ScanData {
                device: &device,
                station: &device,
                raw: &raw,
                decoded: &decoded,
                campaign: campaign.as_deref(),
                answer_code,
            };
            let (hand, serde) = both(&data);
            prop_assert_eq!(hand, serde);
        }

        #[test]
        fn any_gs1_elements_are_written_as_serde_writes_them(
            ai in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..6),
            error in proptest::option::of(any::<String>()),
        ) {
            let (raw, mut decoded) = scan(b"]C1010690123456789217261231");
            decoded.ai = Some(ai);
            decoded.error = error;
            let data = ScanData {
                device: "d",
                station: "s",
                raw: &raw,
                decoded: &decoded,
                campaign: None,
                answer_code: false,
            };
            let (hand, serde) = both(&data);
            prop_assert_eq!(hand, serde);
        }
    }
}
