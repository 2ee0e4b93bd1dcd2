//! posgw: a per-store point-of-sale integration gateway.
//!
//! Data flows one way, and the modules follow it:
//!
//! ```text
//! devices (serial, MQTT, ──DeviceEvent──▶ core ──records──▶ journal ──▶ uplink ──▶ HQ
//!   network printer tap)                     │  ▲            (segment    (HTTP or
//!     │ ▲ passthrough, both ways              ▼  │ answers     files +      MQTT)
//!     ▼ │ (the POS, the printer)             prompts            sled meta)
//!       ▲ held flow scans, released by ───── consult (steps)
//! ```
//!
//! - [`config`]: the TOML configuration and device profiles, loaded in stages.
//! - [`devices`]: the I/O edge: serial ports, the store's MQTT broker, network printer taps;
//!   read, pass through (both ways), frame; a printer tap decodes its receipts.
//! - [`decode`]: what a scanned frame means (AIM ids, GS1, check digits, traceability codes),
//!   and what a printer stream says (ESC/POS receipts).
//! - [`core`]: the one task that turns device events into records.
//! - [`journal`]: the durable record store (segment files, sled metadata); the only module
//!   that touches the gateway's journal files.
//! - [`record`]: the record format: the envelope and each kind's `data`.
//! - [`prompts`]: the attribution prompt engine; [`consult`]: consultation flows (the clerk's
//!   checklist, each step durable, a flow product's scan held until the first steps are done);
//!   [`web`]: the clerk page and the prompt and consultation endpoints.
//! - [`uplink`]: forwards journal records to HQ, at least once; [`fleet`]: campaigns and flows
//!   from HQ, applied like a reload and kept for offline, and heartbeats.
//! - [`hq`]: the reference HQ receiver (`posgw hq`).
//! - [`api`] and [`metrics`]: the local HTTP API; [`serve`]: the bounded HTTP server loop it and
//!   the HQ receiver run on.
//! - [`gateway`]: wiring and shutdown; [`cli`]: the command line; [`demo`]: a simulated store;
//!   [`status`]: `posgw status`; [`signal`]: SIGTERM, SIGINT and SIGHUP.
//!
//! See ARCHITECTURE.md for the invariants.

pub mod api;
pub mod cli;
pub mod config;
pub mod consult;
pub mod core;
pub mod decode;
pub mod demo;
pub mod devices;
pub mod fleet;
pub mod gateway;
pub mod hq;
pub mod journal;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod prompts;
pub mod record;
pub mod sales;
pub mod serve;
pub mod signal;
pub mod status;
pub mod uplink;
pub mod web;

/// The posgw version, written into `gateway` records and the status API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
