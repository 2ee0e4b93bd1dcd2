//! The sections of `posgw.toml`, one file each, named after the table: `gateway` (`[gateway]`),
//! `api`, `device` (`[[device]]`), `mqtt`, `campaign` (`[[campaign]]`), `answer_codes`,
//! `prompts`, `uplink`, `flow` (`[[flow]]`), `privacy` and `fleet`.
//!
//! Each file holds everything about its section: the table as written (a serde struct of
//! [`Located`](super::source::Located) values, unknown keys rejected), how a drop-in merges over
//! it (`MergeLater`, for tables that merge), its typed settings, its defaults and ranges, and
//! `validate`, which turns the one into the other. A new key of `[uplink]` touches `uplink.rs`
//! alone (and the documentation). Helpers several sections share are in `check`.

pub(crate) mod answer_codes;
pub(crate) mod api;
pub(crate) mod campaign;
pub(crate) mod device;
pub(crate) mod fleet;
pub(crate) mod flow;
pub(crate) mod gateway;
pub(crate) mod mqtt;
pub(crate) mod privacy;
pub(crate) mod prompts;
pub(crate) mod uplink;
