//! Sales: what a register says was sold, turned into the `data` of a `sale` record
//! ([`crate::record::sale`], which also holds the shape a `json-register` message is read into).
//!
//! Two sources, one shape (docs/records.md, `sale`):
//! - a `json-register` sends one sale per line or MQTT message
//!   (`{"receipt","clerk","currency","total","lines":[{"sku","name","qty","unit_price","amount"}]}`),
//!   read by [`parse_json_sale`];
//! - an `escpos-tap` device decodes the receipt printed for it ([`crate::decode::escpos`]), and
//!   [`from_receipt`] mines it with the profile's patterns, keeping the whole text.
//!
//! This module only reads; the core links lines to prompts (`prompt` on each line) and writes the
//! record. A JSON sale is checked strictly enough that a wrongly shaped message becomes a
//! `bad_frame` with a short reason rather than a sale with holes: `lines` must be an array of
//! objects, numbers must be numbers, text must be text. Fields beyond the contract's are ignored
//! (registers add their own), and every field but `lines` may be missing (null in the record).

use crate::decode::escpos::{self, ClosedBy, Patterns, Receipt};
use crate::record::sale::{Payment, Sale, SaleLine};

/// Reads one `json-register` sale; the error says briefly what is wrong with it.
pub fn parse_json_sale(bytes: &[u8]) -> Result<Sale, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "sale is not UTF-8 text".to_owned())?;
    let text = text.trim();
    if !text.starts_with('{') {
        return Err("sale is not a JSON object".to_owned());
    }
    serde_json::from_str(text).map_err(|error| format!("sale is not a valid sale: {error}"))
}

/// The sale a printed receipt describes: the profile's patterns pull out what they can, and
/// the whole text is kept, so nothing printed is lost when a pattern does not match.
pub fn from_receipt(receipt: &Receipt, patterns: &Patterns) -> Sale {
    let extracted = escpos::extract(&receipt.lines, patterns);
    Sale {
        receipt: extracted.receipt,
        clerk: extracted.clerk,
        lines: extracted
            .lines
            .into_iter()
            .map(|line| SaleLine {
                sku: line.sku,
                name: line.name,
                qty: line.qty,
                unit_price: line.unit_price,
                amount: line.amount,
                prompt: None,
                flow: None,
                campaign: None,
            })
            .collect(),
        total: extracted.total,
        currency: None,
        text: Some(receipt.text()),
        payments: extracted
            .insurance
            .map(|approved| Payment {
                method: "medical_insurance".into(),
                status: Some(if approved { "approved" } else { "declined" }.into()),
            })
            .into_iter()
            .collect(),
        consultation: None,
    }
}

/// Why a receipt ended other than by a cut, as a note for the device record; `None` for a cut.
pub fn unusual_end(receipt: &Receipt, max_receipt: usize) -> Option<String> {
    match receipt.closed_by {
        ClosedBy::Cut => None,
        ClosedBy::Size => Some(format!(
            "receipt closed without a paper cut after {} bytes (max_receipt {max_receipt})",
            receipt.bytes
        )),
        ClosedBy::Timeout => Some(format!(
            "receipt closed without a paper cut after the printer line went quiet ({} bytes)",
            receipt.bytes
        )),
        ClosedBy::Shutdown => Some(format!(
            "receipt closed without a paper cut at shutdown or disconnect ({} bytes)",
            receipt.bytes
        )),
        ClosedBy::Resync => Some(format!(
            "receipt closed without a paper cut where the printer stream was found again after \
             garbled bytes ({} bytes)",
            receipt.bytes
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_example_parses() {
        let sale = parse_json_sale(
            br#"{"receipt":"R-1001","clerk":"c-7","currency":"CNY","total":33.5,"lines":[{"sku":"6901234567892","name":"x","qty":1,"unit_price":25.0,"amount":25.0}]}"#,
        )
        .expect("sale");
        assert_eq!(sale.receipt.as_deref(), Some("R-1001"));
        assert_eq!(sale.clerk.as_deref(), Some("c-7"));
        assert_eq!(sale.currency.as_deref(), Some("CNY"));
        assert_eq!(sale.total, Some(33.5));
        assert_eq!(sale.lines.len(), 1);
        assert_eq!(sale.lines[0].sku.as_deref(), Some("6901234567892"));
        assert_eq!(sale.lines[0].qty, Some(1.0));
        assert_eq!(sale.lines[0].prompt, None);
        let record = serde_json::to_value(&sale).expect("json");
        assert_eq!(record["lines"][0]["prompt"], serde_json::Value::Null);
        assert_eq!(record["text"], serde_json::Value::Null);
    }

    #[test]
    fn numbers_as_codes_and_extra_fields_are_fine() {
        let sale = parse_json_sale(
            br#"{"receipt":1001,"lines":[{"sku":6901234567892,"qty":2,"discount":1}],"till":"3"}"#,
        )
        .expect("sale");
        assert_eq!(sale.receipt.as_deref(), Some("1001"));
        assert_eq!(sale.lines[0].sku.as_deref(), Some("6901234567892"));
        assert_eq!(sale.total, None);
    }

    #[test]
    fn wrongly_shaped_sales_say_why() {
        for (input, expected) in [
            (&b"\xff\xfe"[..], "not UTF-8"),
            (b"hello", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"receipt\":\"R\"}", "missing field `lines`"),
            (b"{\"lines\":{}}", "invalid type"),
            (b"{\"lines\":[{\"qty\":\"two\"}]}", "invalid type"),
            (b"{\"total\":\"33.5\",\"lines\":[]}", "invalid type"),
            (b"{\"lines\":[", "EOF"),
        ] {
            let error = parse_json_sale(input).expect_err("refused");
            assert!(error.contains(expected), "{input:?}: {error}");
        }
    }
}
