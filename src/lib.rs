//! posgw: a per-store point-of-sale integration gateway.
//!
//! Data flows one way, and the modules follow it:
//!
//! ```text
//! devices (serial ports) ──DeviceEvent──▶ core ──records──▶ journal (sled) ──▶ uplink ▶ HQ
//!     │ passthrough (bytes unchanged to the POS / printer)
//!     ▼
//! ```
//!
//! - [`config`]: the TOML configuration and device profiles, loaded in stages.
//! - [`devices`]: one task per device port: read, pass through, frame.
//! - [`decode`]: what a scanned frame means (AIM ids, GS1, check digits, traceability codes).
//! - [`core`]: the one task that turns device events into records.
//! - [`journal`]: the durable record store; the only module that touches sled.
//! - [`prompts`]: the attribution prompt engine; [`web`]: the clerk page and prompt endpoints.
//! - [`uplink`]: forwards journal records to HQ, at least once.
//! - [`hq`]: the reference HQ receiver (`posgw hq`).
//! - [`api`] and [`metrics`]: the local HTTP API; [`serve`]: the bounded HTTP server loop it and
//!   the HQ receiver run on.
//! - [`gateway`]: wiring and shutdown; [`cli`]: the command line; [`demo`]: a simulated store;
//!   [`status`]: `posgw status`.
//!
//! See ARCHITECTURE.md for the invariants.

pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod decode;
pub mod demo;
pub mod devices;
pub mod gateway;
pub mod hq;
pub mod journal;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod prompts;
pub mod sales;
pub mod serve;
pub mod status;
pub mod uplink;
pub mod web;

/// The posgw version, written into `gateway` records and the status API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
