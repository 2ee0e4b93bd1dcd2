//! The `data` of a `gateway` record (docs/records.md): the gateway started or stopped, or the
//! journal noted something about itself.
//!
//! `started` and `stopped` are written through [`GatewayData`], in the contract's field order
//! (`event`, `version`, `detail`). The journal's own events (`journal_replaced`, `evicted`) are
//! built in `journal::quarantine` and `journal::quota` as `serde_json::json!` maps, which
//! serde_json writes with their keys sorted (`detail`, `event`, `version`): the same fields, in
//! another order that records already written keep, so they are left as they are.

use serde::Serialize;

/// `data` of a `gateway` record.
#[derive(Debug, Serialize)]
pub struct GatewayData<'a> {
    /// started | stopped | journal_replaced | clock_jump | evicted.
    pub event: &'a str,
    /// posgw version.
    pub version: &'a str,
    /// Human-readable detail.
    pub detail: &'a str,
}
