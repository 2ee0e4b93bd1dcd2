//! [`CodeKind`]: what a scanned code is, the `code_kind` of a `scan` record. Its own module so
//! that the classifiers (`retail`, `gs1`) and `scan`, which calls them, all use it without
//! depending on one another in a circle.

use serde::{Deserialize, Serialize};

/// The kinds of code a scan can be (`code_kind` in the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// EAN-13 product code.
    Ean13,
    /// EAN-8 product code.
    Ean8,
    /// UPC-A product code (also UPC-E, expanded).
    Upca,
    /// ITF-14 shipping container code.
    Itf14,
    /// GS1 element string (GS1-128, GS1 DataMatrix, GS1 QR, GS1 DataBar).
    Gs1,
    /// China drug traceability code (20 digits starting with 8).
    CnTrace,
    /// Code 128 that is none of the above.
    Code128,
    /// QR code that is not GS1.
    Qr,
    /// Anything else, kept as is.
    Other,
}

impl CodeKind {
    /// The record's name for this kind (`"ean13"`, `"cn_trace"`…).
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Ean13 => "ean13",
            CodeKind::Ean8 => "ean8",
            CodeKind::Upca => "upca",
            CodeKind::Itf14 => "itf14",
            CodeKind::Gs1 => "gs1",
            CodeKind::CnTrace => "cn_trace",
            CodeKind::Code128 => "code128",
            CodeKind::Qr => "qr",
            CodeKind::Other => "other",
        }
    }
}
