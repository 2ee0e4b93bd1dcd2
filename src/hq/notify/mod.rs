//! Alert delivery to group robots (企业微信 WeCom, 钉钉 DingTalk, 飞书 Feishu/Lark) and plain
//! JSON webhooks, through a persistent outbox in HQ's sled database. This doc is its design
//! doc; the alert rules that decide *when* to notify live elsewhere (`alerts`).
//!
//! # What it owns
//!
//! The notifier task (`notifier`) owns the outbox, the sled tree `notify_outbox` in HQ's
//! database (HQ's records are in the tree `hq`, never touched here), and the attempts in
//! flight. Everyone else uses a [`NotifierHandle`] (cheap to clone; the task stops when the
//! last clone is dropped):
//!
//! - `spawn(&db, targets, NotifyOptions::default(), metrics, delivered_tx)` opens the outbox,
//!   resumes it and starts the task; `delivered_tx` is an `mpsc::Sender<Delivered>`;
//! - `enqueue(notice, &target_ids)` queues an alert for targets, durably, before it returns;
//! - `reload(targets)` swaps the `[[notify]]` targets in (SIGHUP);
//! - `status(alert_id)` says where each target's delivery of an alert stands (for the API).
//!
//! The configuration side is `settings`: [`RawNotify`] (one `[[notify]]` as written) and
//! [`validate_notify`], called like `validate_users` in `config.rs`, giving [`NotifySettings`].
//!
//! # The promise: at least once, and never again after a recorded success
//!
//! - An `enqueue` that returned `Ok` has its entries written *and flushed*: it is delivered
//!   even if HQ is killed (`kill -9`, power cut) the next moment, after the restart.
//! - An entry is tried until its target answers success (see "Retries"), however long that
//!   takes, or until its target is removed from the configuration (then it is *abandoned*:
//!   recorded, counted in `posgw_hq_notify_deliveries_total{result="abandoned"}`, logged).
//! - When a target answers success, the entry's `delivered` state is written and flushed
//!   *before* anyone is told, and a delivered entry is never sent again, across restarts.
//! - "At least once" is the honest limit: if HQ dies after the robot accepted a message but
//!   before `delivered` is on disk (or the answer is lost on the way back, or times out after
//!   the robot acted), the message is sent again, and the group sees it twice. Nothing else
//!   causes a second message.
//! - Enqueueing the same (alert, target) again is a no-op, whatever state its entry is in,
//!   for as long as the entry is kept (pending, or up to 30 days after it finished).
//!
//! After a delivery is on disk the task sends [`Delivered`] (alert, target, time) on the
//! `delivered` channel. At start it sends `Delivered` again for every delivered entry it
//! holds: that closes the window between recording a delivery and reporting it, so the
//! receiver (the alert store) must treat a repeat as a no-op. Reports wait in the task while
//! the receiver is behind (the task never blocks on it, so a receiver that calls `enqueue` can
//! never deadlock with it); if the receiver is dropped, reports stop.
//!
//! # The outbox in sled
//!
//! One entry per (alert, target). Key: `[alert_id length, u16 BE][alert_id][target id]`, so
//! an alert's entries share a prefix (`status` is a prefix scan). Value: compact JSON:
//!
//! ```json
//! {"created_at":"2026-11-27T08:30:00.000Z","attempts":2,"last_error":"HTTP 502",
//!  "state":"pending","next_attempt_at":"2026-11-27T08:30:15.120Z",
//!  "notice":{"alert_id":"…","title":"…","markdown":"…","text":"…","alert":{…}}}
//! {"created_at":"…","attempts":3,"last_error":"HTTP 200, code 45009: …",
//!  "state":"delivered","delivered_at":"2026-11-27T08:31:02.004Z"}
//! {"created_at":"…","attempts":7,"last_error":"…","state":"abandoned","abandoned_at":"…"}
//! ```
//!
//! The notice is kept only while the entry is pending. Times are RFC 3339 UTC with
//! milliseconds. Writes: an enqueue is one sled batch then a flush; a delivery one write then
//! a flush; a failed attempt or an abandonment one write, not flushed (a crash then loses an
//! attempt count, or abandons the entry again at the next start). The flush is sled's, of the
//! whole database, run on sled's thread pool (`flush_async`), so the task never blocks a
//! runtime thread on disk.
//!
//! Delivered and abandoned entries finished more than `retention` (30 days) ago are removed
//! at start and every hour; only then can the same (alert, target) be enqueued anew.
//!
//! # Bounds
//!
//! - At most `max_pending` (10,000) undelivered entries. An enqueue that would go beyond is
//!   refused whole with [`NotifyError::OutboxFull`] and counted in
//!   `posgw_hq_notify_refused_total` (one per entry refused): never dropped silently. Entries
//!   resumed at start are all kept, even above the limit.
//! - Alert ids of at most 512 bytes; notices of at most 256 KiB as JSON.
//! - At most one attempt in flight per target (robots rate-limit per robot, and one robot's
//!   messages stay in order) and `max_in_flight` (4) over all, each within `request_timeout`
//!   (10 s): a slow or dead robot holds one slot, never the others' deliveries.
//! - Answers are read up to 64 KiB; the request queue of the task holds 64 requests.
//! - At most 10,000 `Delivered` reports wait for a receiver that does not read; beyond, the
//!   oldest are dropped (logged): their deliveries are on disk and reported again at start.
//!
//! # Retries
//!
//! An entry is tried at once. After the n-th failed attempt it waits `retry_initial × 2^(n-1)`
//! (5 s, 10 s, 20 s, …) capped at `retry_max` (10 min), times a random factor from 0.5 to 1
//! so targets failing together spread out; forever. Entries due while their target is busy
//! wait their turn, earliest first. When a target answers success, its other waiting entries
//! are tried at once (it works again). After a restart, entries are tried at their stored
//! `next_attempt_at` (at once if past).
//!
//! A failure is: no connection or no answer in time; a status other than 2xx; for the robots,
//! a 2xx whose body does not carry the vendor's success code (`errcode` 0 for WeCom and
//! DingTalk, `code` 0, or the older `StatusCode` 0, for Feishu: a rate limit, a bad signature
//! or a keyword filter all answer 200 with a code). Each failed attempt is logged at warn with
//! target id, alert id, attempt number and reason, at most once per backoff delay per entry.
//!
//! # Vendors
//!
//! `vendor` builds each kind's message (markdown where offered) and judges answers; `sign`
//! holds the DingTalk and Feishu signatures, made afresh for every attempt (both robots refuse
//! a timestamp more than an hour off); `send` posts with reqwest (rustls, no redirects).
//!
//! # Secrets
//!
//! A robot's URL is a credential (its key or token is in it) and so is a signing secret.
//! Neither is logged, nor put in error messages, `status()`, metrics or the outbox:
//! `NotifySettings`'s `Debug` redacts both, config errors name the file, not its content,
//! reqwest errors are taken `without_url()`, and every failure reason is scrubbed of the URL,
//! its parts and the secret before it is logged or stored.
//!
//! # Code map
//!
//! - `settings`: `[[notify]]` as written and validated; the URL rules.
//! - `handle`: `spawn`, `NotifierHandle`, `Notice`, `Delivered`, `DeliveryStatus`,
//!   `NotifyError`, `NotifyOptions`.
//! - `notifier`: the task: requests, scheduling, outcomes, reports, pruning.
//! - `outbox`: sled keys, the entry format, the tree's operations.
//! - `vendor`: message formats and answers per kind. `sign`: signatures. `send`: one attempt
//!   over HTTP, failure reasons scrubbed.
//! - `tests`: every kind against local receivers that check formats and signatures, retries,
//!   restarts, bounds and secrecy.

// Nothing outside the tests calls into this module until HQ's server and config wire it in.

mod handle;
mod notifier;
mod outbox;
mod send;
mod settings;
mod sign;
mod vendor;

#[cfg(test)]
mod tests;

// The API HQ's config and server call; unused until they do.
#[allow(unused_imports)] // the whole API, some of it used by tests only
pub(crate) use handle::{
    spawn, Delivered, DeliveryState, DeliveryStatus, Notice, NotifierHandle, NotifyError,
    NotifyOptions,
};
#[allow(unused_imports)] // NotifyKind: used by tests
pub(crate) use settings::{validate_notify, NotifyKind, NotifySettings, RawNotify};
