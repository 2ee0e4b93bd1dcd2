//! Attribution prompts: asking the clerk why a customer buys a targeted product.
//!
//! When a scanned product belongs to a running `[[campaign]]`, a prompt opens on that station's
//! clerk screen (the question and its options). It closes in exactly one of three ways, and each
//! close writes exactly one `attribution` record (docs/records.md):
//!
//! ```text
//!            answer (web | card | mqtt)
//!   open ──┬──────────────────────────▶ answered   answer, answer_label, channel, clerk
//!          ├── skip (reason required) ▶ skipped    skip_reason, clerk
//!          └── expires_at passes ─────▶ timeout    resolved_at = expires_at
//! ```
//!
//! # Design
//!
//! - **One owner.** The engine task (`engine`) owns the open prompts, the recently resolved
//!   ids, and today's figures; [`PromptsHandle`] talks to it over a bounded queue with oneshot
//!   replies. It never awaits the journal: records and state go to the writer task (`writer`),
//!   so opening a prompt costs a few microseconds whatever the disk does. Calls that resolve a
//!   prompt (`answer`, `skip`, `answer_oldest`) return once the record is in the journal.
//! - **Campaign matching** (`campaigns`) is a pure lookup the core does on its own thread:
//!   exact codes and `prefix*` patterns against every GTIN spelling of the scan; the first
//!   running campaign in configuration order wins.
//! - **Queues.** Each station has its own queue of open prompts, oldest first. The oldest is
//!   the active one on the clerk page; answer cards answer the oldest prompt offering the
//!   card's option. A re-scan of the same `sku` at the same station while its prompt is open
//!   does not open another one (`Opened::new == false`, same prompt): one prompt per customer,
//!   not per box. A different targeted product opens its own prompt, stacked behind.
//! - **Ids** are 10 characters of lowercase base32 (50 random bits), URL-safe, checked unique
//!   against open and remembered prompts.
//! - **Timeouts** use one timer: the loop sleeps until the earliest deadline (or the next
//!   store-local midnight, when today's figures restart). Deadlines run on tokio's monotonic
//!   clock, so wall-clock jumps do not fire or delay them; timestamps come from a [`Clock`].
//! - **Late answers.** The last 10,000 resolved ids are remembered, so answering a resolved
//!   prompt is `AlreadyResolved` (409), not `NotFound` (404).
//! - **Restarts.** After every change the whole open-prompt state (and today's figures) is
//!   saved through [`PromptJournal::save_open_prompts`] (format in `state`). At start, prompts
//!   past `expires_at` are resolved as `timeout` with `resolved_at = expires_at` and the others
//!   resume with their original deadline. Saving is write-behind: a crash within one journal
//!   flush of an open can lose that prompt; a crash between a record and the next save can
//!   repeat a prompt's record (HQ can deduplicate on `prompt`), never lose it (see `writer`).
//! - **Events.** A broadcast channel carries `Prompt` on open, `Resolved` on close and `Stats`
//!   (the station's figures) after each; [`PromptsHandle::subscribe`] takes the snapshot and
//!   the receiver inside the engine, so the two join without a gap or a duplicate. A receiver
//!   that lags should re-subscribe (the clerk page's SSE stream ends and the browser reconnects).
//! - **Today's figures** count prompts by the store-local day they opened; they reset when the
//!   day changes and survive restarts.
//! - **Sales.** The core asks [`PromptsHandle::link_sale`] for each sale: every line whose SKU
//!   (compared as GTIN-14 when it is one) matches a prompt of the same station, open and opened
//!   within `[prompts] sale_link_window` (10 minutes by default) of the sale, or resolved
//!   within it, gets that prompt's id, oldest prompt first, one sale line per prompt. An open
//!   prompt linked this way remembers the receipt (saved with the open prompts), and its
//!   attribution carries `receipt` when it resolves after the sale. Resolved prompts waiting
//!   for their sale are kept in memory only: after a restart, a sale links to open prompts.
//!   The core then reports whether the sale record was written
//!   ([`PromptsHandle::sale_recorded`]): only then are the links saved (after the record is
//!   durable, like every save); a sale the journal refused has its links taken back, so the
//!   sale, when it comes again (an MQTT redelivery), links the same prompts.

mod campaigns;
mod clock;
mod engine;
mod handle;
mod journal;
mod model;
pub mod mqtt;
mod persist;
mod state;
mod today;
mod writer;

#[cfg(test)]
mod tests;

pub(crate) use campaigns::spellings;
pub use clock::{Clock, SystemClock, TokioClock};
pub use engine::{SaleLink, Subscription};
pub use handle::{spawn, spawn_with_clock, PromptsConfig, PromptsHandle};
pub use journal::{MemoryPromptJournal, PromptJournal};
pub use model::{
    OpenRequest, Opened, OptionView, PromptError, PromptEvent, PromptView, Resolution, StationToday,
};
pub(crate) use persist::replace_file;
pub use persist::JournalPrompts;
