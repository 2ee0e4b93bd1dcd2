//! The fleet at HQ: the chain's campaigns, flows, answer codes and skip reasons held once and
//! served to every store's gateway, the stores' heartbeats, and the editor behind the
//! dashboard (docs/hq-protocol.md, "Fleet"). This module doc is its design document.
//!
//! # What HQ holds
//!
//! `hq.toml` may hold `[[campaign]]`, `[[flow]]`, `[answer_codes]` and `[prompts]
//! skip_reasons`, with the gateway's keys, each campaign and flow with optional `stores =
//! [...]` / `regions = [...]` (neither: every store; a store or region that is not configured
//! is an error). They are validated by the gateway's own section validators (`config`), and
//! reloaded with the rest of `hq.toml` on SIGHUP. An admin may add campaigns and flows in the
//! editor (`PUT /v1/fleet/campaigns/{id}`, `…/flows/{id}`); those are validated the same way,
//! together with `hq.toml`'s (an editor entry is rendered as the TOML table it would be in
//! `hq.toml`), and kept in the `"fleet"` tree. `hq.toml`'s entries are read-only in the editor
//! (409 naming the file); an editor entry whose id `hq.toml` takes later, or that no longer
//! validates with it after a reload, is set aside (kept, listed with the reasons, not served).
//!
//! # Versions
//!
//! One version number for the whole chain, moved on (by one) whenever what any store gets
//! changes: an entry, its targets, the answer codes or skip reasons, or which stores are in a
//! targeted region (`content::version_hash`). Each change is a history entry (version, when,
//! who: `hq.toml` or the editor's user, what changed), the last 1,000 kept. A store's document
//! carries the version at which *its* part last changed, so a change for one region is not a
//! new document (a 200, a reload, a journal record) at the other 126 stores; the fleet view
//! calls a store stale when its applied version is below that one.
//!
//! # Serving
//!
//! `GET /v1/fleet/{store}/config` answers from a snapshot of every store's document (body and
//! ETag, a hash of the body) built once per change (`actor::Published`): no database access, no
//! JSON encoding per request, one read lock held for an `Arc` clone; `If-None-Match` with the
//! ETag is a 304. Answer codes go to a store only when one of its campaigns offers their option,
//! so a targeted campaign's answer cards never break the validation of a store without it.
//!
//! # Heartbeats
//!
//! `POST /v1/fleet/{store}/heartbeat` (at most 64 KiB; `fleet::wire::Heartbeat`) is kept per
//! store, in memory and in the tree, so a restarted HQ still knows when each store was last
//! seen. A store is online while its last heartbeat is younger than three of its polls (the
//! heartbeat says its poll).
//!
//! # State
//!
//! One task (`actor`) owns all of it and is the only writer of the tree; handlers talk to it
//! through a [`FleetHandle`]. The tree's keys are in `db`.
//!
//! # Code map
//!
//! - `config`: `hq.toml`'s sections as written (`Targeted`), their validation (and the
//!   editor's JSON through the same code).
//! - `content`: the configuration in force, what each store gets, hashes, what changed.
//! - `db`: [`open_manage_db`], the `"fleet"` tree's keys.
//! - `actor`: the owner task and [`FleetHandle`].
//! - `routes`: the endpoints.

mod actor;
pub(crate) mod config;
mod content;
mod db;
mod routes;

pub use actor::FleetHandle;
pub use config::{FleetEntry, FleetSettings, Targets};
pub use db::open_manage_db;
pub use routes::{routes, Current, Identify};
