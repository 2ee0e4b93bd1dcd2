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

/// `data` of a `gateway` record about configuration from HQ (`config_applied`,
/// `config_refused`): the contract's three fields first, then what was applied or why not.
#[derive(Debug, Serialize)]
pub struct ConfigEventData<'a> {
    /// `config_applied` or `config_refused`.
    pub event: &'a str,
    /// posgw version.
    pub version: &'a str,
    /// One line for people: which version, from where, what is in force or why not.
    pub detail: &'a str,
    /// HQ's configuration version of the document.
    pub config_version: u64,
    /// `hq` (just fetched) or `copy` (the last good copy, at start).
    pub source: &'a str,
    /// Why it was refused: the validators' `PATH:LINE:COL: message` lines (empty when applied).
    pub errors: &'a [String],
    /// HQ entries left out because a local one has the id (applied only).
    pub clashes: &'a [String],
}
