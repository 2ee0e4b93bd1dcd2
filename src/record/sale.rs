//! The `data` of a `sale` record (docs/records.md): what a register says was sold, from a
//! `json-register` message or a printed receipt (`crate::sales` reads both), with the device
//! and station the core adds.
//!
//! [`Sale`] is also the shape a `json-register` message is read into, so its `Deserialize` is
//! lenient where registers differ (codes as text or numbers, fields beyond the contract's
//! ignored, every field but `lines` optional) and skips what only the gateway sets (`text`,
//! each line's `prompt`, `flow` and `campaign`).

use serde::{Deserialize, Serialize};

/// `data` of a `sale` record.
#[derive(Debug, Serialize)]
pub struct SaleData<'a> {
    /// The device that sent the sale.
    pub device: &'a str,
    /// Its station.
    pub station: &'a str,
    /// The sale, its fields flattened into the record's `data`.
    #[serde(flatten)]
    pub sale: Sale,
}

/// The `data` of a `sale` record, without `device` and `station` (the core adds those). It is
/// also the shape a `json-register` message is read into (`text` is never read from one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sale {
    /// The receipt number, when known.
    #[serde(default, deserialize_with = "code")]
    pub receipt: Option<String>,
    /// The clerk who rang it up, when known.
    #[serde(default, deserialize_with = "code")]
    pub clerk: Option<String>,
    /// What was sold.
    pub lines: Vec<SaleLine>,
    /// The amount due, when known.
    pub total: Option<f64>,
    /// ISO 4217 code, when the register says.
    pub currency: Option<String>,
    /// The decoded receipt text (ESC/POS sources only).
    #[serde(skip_deserializing)]
    pub text: Option<String>,
    /// How it was paid, when the register says; a medical-insurance payment settles a
    /// consultation's `auto = "sale"` step. Absent from the record when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payments: Vec<Payment>,
    /// The consultation linked to this sale (set by the core, never read from a register);
    /// absent from the record when there is none.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub consultation: Option<String>,
}

/// One payment of a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// `medical_insurance`, `cash`, `card`, ... as the register names it.
    pub method: String,
    /// `approved` or `declined` for medical insurance, when the register says.
    #[serde(default)]
    pub status: Option<String>,
}

impl Sale {
    /// The medical-insurance payments' results, in order: `true` approved, `false` declined.
    pub fn insurance(&self) -> Vec<bool> {
        self.payments
            .iter()
            .filter(|payment| payment.method == "medical_insurance")
            .filter_map(|payment| match payment.status.as_deref() {
                Some("approved") => Some(true),
                Some("declined") => Some(false),
                _ => None,
            })
            .collect()
    }
}

/// One line of a sale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaleLine {
    /// Product code (EAN/GTIN or internal SKU), when known.
    #[serde(default, deserialize_with = "code")]
    pub sku: Option<String>,
    /// Product name as printed.
    pub name: Option<String>,
    /// Quantity.
    pub qty: Option<f64>,
    /// Price of one.
    pub unit_price: Option<f64>,
    /// Line amount.
    pub amount: Option<f64>,
    /// The attribution prompt linked to this line (set by the core, never read from a
    /// register), else null.
    #[serde(skip_deserializing)]
    pub prompt: Option<String>,
    /// The configured flow whose `skus` match this line's SKU (set by the core, never read from
    /// a register); absent from the record when none does.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The campaign running today whose `skus` match this line's SKU (set by the core, never
    /// read from a register); absent from the record when none does.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

/// A code that registers send as text or as a number (`"R-1001"`, `1001`, `6901234567892`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Code {
    /// As text.
    Text(String),
    /// As a whole number.
    Number(u64),
}

/// Reads an optional [`Code`] as text.
fn code<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(
        Option::<Code>::deserialize(deserializer)?.map(|code| match code {
            Code::Text(text) => text,
            Code::Number(number) => number.to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_data_keeps_the_contract_field_order() {
        let data = SaleData {
            device: "till-1-register",
            station: "till-1",
            sale: Sale {
                receipt: Some("R-1".into()),
                clerk: None,
                lines: vec![SaleLine {
                    sku: Some("6901234567892".into()),
                    name: None,
                    qty: Some(1.0),
                    unit_price: None,
                    amount: Some(25.0),
                    prompt: Some("abc".into()),
                    flow: None,
                    campaign: None,
                }],
                total: Some(25.0),
                currency: None,
                text: None,
                payments: Vec::new(),
                consultation: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&data).expect("json"),
            r#"{"device":"till-1-register","station":"till-1","receipt":"R-1","clerk":null,"lines":[{"sku":"6901234567892","name":null,"qty":1.0,"unit_price":null,"amount":25.0,"prompt":"abc"}],"total":25.0,"currency":null,"text":null}"#
        );
    }

    #[test]
    fn payments_and_the_consultation_appear_only_when_there_are_some() {
        let sale: Sale = serde_json::from_str(
            r#"{"receipt":"R-2","lines":[],"payments":[{"method":"medical_insurance","status":"declined"},{"method":"cash"}]}"#,
        )
        .expect("sale");
        assert_eq!(sale.insurance(), [false]);
        let mut sale = sale;
        sale.consultation = Some("c1".into());
        let json = serde_json::to_string(&sale).expect("json");
        assert!(json.ends_with(r#""payments":[{"method":"medical_insurance","status":"declined"},{"method":"cash","status":null}],"consultation":"c1"}"#), "{json}");
    }
}
