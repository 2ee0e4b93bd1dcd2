//! The journal actor and its handle: one tokio task owns the [`Store`]; everyone else holds a
//! cheap, cloneable [`JournalHandle`] that sends it commands over a bounded channel (Alice
//! Ryhl's actor pattern). The actor also runs group commit: it starts at most one flush (the
//! record log's fsync, and sled's when a removal needs it) at a time on a blocking thread, at most `flush` after the oldest unflushed write, and
//! publishes the durable position on a `watch` channel that [`Durable`] futures wait on.
//!
//! Per-record costs are what limit throughput, so producers that have several records at once
//! use [`JournalHandle::append_batch`]: one command, one pass over the log, one reply and one [`Durable`]
//! for the lot, instead of one of each per record.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::error::JournalError;
use super::layout::JOURNAL_DIR;
use super::messages::{self, MessageId, SharedMessages};
use super::open::open_or_replace;
use super::quarantine::Replaced;
use super::quota::Eviction;
use super::record::{Data, Kind};
use super::store::{Store, StoredRecord};

/// Commands waiting for the actor; appends beyond this wait (backpressure on producers).
const COMMAND_QUEUE: usize = 1024;
/// Records (or other commands) handled per wake-up before the actor looks at its timer and
/// flush again; a batch counts as its records, so a turn stays a few milliseconds at most.
const RECORDS_PER_TURN: usize = 256;
/// Most records one [`JournalHandle::append_batch`] call may carry: the actor writes a batch in
/// one go (that is what makes its seqs contiguous), so this bounds how long it is busy with one.
pub const MAX_BATCH_RECORDS: usize = 256;
/// Least time between two updates of the floor file while running (each costs two fsyncs); the
/// final flush on close always updates it.
const FLOOR_EVERY: Duration = Duration::from_secs(1);
/// Once over [`JournalConfig::max_bytes`], records are evicted until the backlog is down to this
/// share of it (in percent), so the journal does not evict again on the very next append.
const QUOTA_LOW_WATER_PERCENT: u64 = 95;
/// Most records evicted after one append: eviction is sled work on the actor's task, so a large
/// round is spread over the appends that follow.
const EVICT_PER_APPEND: usize = 2048;
/// While evictions go on without the backlog getting back under the quota (records that are
/// never evicted fill it), they are summed up in one `evicted` record at most this often.
const EVICTED_RECORD_EVERY: Duration = Duration::from_secs(60);
/// How often "over quota with records that are never evicted" is logged at most.
const OVER_QUOTA_LOG_EVERY: Duration = Duration::from_secs(60);
/// How long a removal (upload acknowledged) waits for sled's fsync; the fsyncs of appends in
/// between leave sled out. Nothing waits on a removal being durable (one lost in a crash only
/// makes the uplink send again records HQ already has, at most this much of them), and sled
/// fsyncs back to back while the uplink drains a backlog keep sled's freed pages from being
/// reclaimed: draining 1M records (flush = 50ms) peaked at 215 MiB RSS with removals fsynced
/// like appends, 108 MiB with this. (Dead-lettering and evictions fsync sled themselves.)
const REMOVAL_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Least time the oldest record not covered by a flush waits before the actor stops taking
/// commands while a flush runs (see [`Actor::held_back_until`]).
const HOLD_BACK_FLOOR: Duration = Duration::from_millis(1);
/// How long after a failed write of the record log (a full disk) the next flush tries again.
const WRITE_RETRY: Duration = Duration::from_millis(500);

/// How to open the journal.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The gateway's data folder; the journal lives in `data_dir/journal`.
    pub data_dir: PathBuf,
    /// The store code (`gateway.store`), written into every record.
    pub store: String,
    /// The gateway id (`gateway.id`), written into every record.
    pub gateway: String,
    /// Longest time an appended record waits for fsync; zero fsyncs before confirming each one.
    pub flush: Duration,
    /// The gateway version, written into the `journal_replaced` and `evicted` records.
    pub version: &'static str,
    /// Most bytes of records the journal keeps (`[uplink] max_journal_bytes`); beyond it the
    /// oldest `scan` and `device` records are evicted (`sale`, `attribution` and `gateway`
    /// records never are). `None`: no limit.
    pub max_bytes: Option<u64>,
}

/// The result of [`open`].
#[derive(Debug)]
pub struct Opened {
    /// The handle to the running journal.
    pub handle: JournalHandle,
    /// Set when the journal was damaged and replaced by a fresh one.
    pub replaced: Option<Replaced>,
}

/// A record accepted by the journal (in the record log's buffer, not necessarily durable yet).
#[derive(Debug)]
pub struct Appended {
    /// The record's seq.
    pub seq: u64,
    /// The record's id (`STORE/GW/EPOCH/SEQ`).
    pub id: String,
    /// The record's storage position (what readers page by).
    pub position: u64,
    /// Resolves once the record has been fsynced.
    pub durable: Durable,
}

/// Records accepted together by [`JournalHandle::append_batch`] (in the record log's buffer,
/// not necessarily durable yet). Their seqs and positions are contiguous: no other record falls between them.
#[derive(Debug)]
pub struct AppendedBatch {
    /// The first record's seq; record `i` of the batch has seq `first_seq + i`.
    pub first_seq: u64,
    /// The first record's position; record `i` has position `first_position + i`.
    pub first_position: u64,
    /// How many records were appended (as many as were given).
    pub count: u64,
    /// Resolves once every record of the batch has been fsynced.
    pub durable: Durable,
    /// `STORE/GW/EPOCH/`, for [`AppendedBatch::id`].
    id_prefix: Arc<str>,
}

impl AppendedBatch {
    /// The batch's seqs, in the order its records were given.
    pub fn seqs(&self) -> std::ops::Range<u64> {
        self.first_seq..self.first_seq + self.count
    }

    /// The id (`STORE/GW/EPOCH/SEQ`) of record `index` of the batch, if there is one.
    pub fn id(&self, index: u64) -> Option<String> {
        (index < self.count).then(|| format!("{}{}", self.id_prefix, self.first_seq + index))
    }
}

/// What the actor publishes after each flush.
#[derive(Clone, Debug, Default)]
struct DurableMark {
    /// Every record at or before this position is durable.
    position: u64,
    /// Set once a flush failed; nothing after `position` will ever be confirmed.
    failed: Option<Arc<str>>,
}

/// A future-to-be: waits until one record (or a batch) is durable. Clones wait for the same.
#[derive(Debug, Clone)]
pub struct Durable {
    /// The record's position.
    position: u64,
    /// The actor's durable mark.
    mark: watch::Receiver<DurableMark>,
}

impl Durable {
    /// Waits until the record is fsynced. Fails if a flush failed or the journal stopped first.
    pub async fn wait(mut self) -> Result<(), JournalError> {
        loop {
            {
                let mark = self.mark.borrow_and_update();
                if mark.position >= self.position {
                    return Ok(());
                }
                if let Some(failed) = &mark.failed {
                    return Err(JournalError::Flush(failed.to_string()));
                }
            }
            if self.mark.changed().await.is_err() {
                // The actor is gone; it published its final mark before leaving.
                return if self.mark.borrow().position >= self.position {
                    Ok(())
                } else {
                    Err(JournalError::Closed)
                };
            }
        }
    }

    /// The position of the record (of the batch's last one) it waits for.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether the record is already known to be durable.
    pub fn is_durable(&self) -> bool {
        self.mark.borrow().position >= self.position
    }
}

/// A snapshot of the journal's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalStats {
    /// The journal's epoch.
    pub epoch: String,
    /// The seq the next record will get.
    pub next_seq: u64,
    /// The highest seq of this epoch known to be fsynced (0 = none yet).
    pub durable_seq: u64,
    /// The highest position known to be fsynced (what readers may read up to).
    pub durable_position: u64,
    /// Records in the journal (not yet removed after upload).
    pub backlog_records: u64,
    /// Their total size in bytes.
    pub backlog_bytes: u64,
    /// Records in the dead-letter set.
    pub dead_records: u64,
    /// Records appended since this process opened the journal.
    pub appended_total: u64,
    /// `appended_total` split by kind, in [`Kind::ALL`] order (for `posgw_records_total{kind}`).
    pub per_kind: Vec<(Kind, u64)>,
    /// Scan and device records evicted since this process opened the journal because it was
    /// over [`JournalConfig::max_bytes`] (for `posgw_journal_evicted_records_total`).
    pub evicted_records: u64,
    /// Why the journal stopped accepting records (a failed fsync, or a failed batch that could
    /// not be taken back out of the record log), if it did; or, while it lasts, why the record log cannot
    /// be written (a full disk: retried at every flush, cleared once a write works again).
    pub failure: Option<String>,
    /// Set when this process found the journal damaged, moved it aside and started a new one:
    /// where it went and why (also the new journal's first record, `journal_replaced`).
    pub replaced: Option<Replaced>,
}

/// Figures the actor keeps current for [`JournalHandle::stats`].
#[derive(Debug, Default)]
struct SharedStats {
    /// See [`JournalStats::next_seq`].
    next_seq: AtomicU64,
    /// See [`JournalStats::durable_seq`].
    durable_seq: AtomicU64,
    /// See [`JournalStats::backlog_records`].
    backlog_records: AtomicU64,
    /// See [`JournalStats::backlog_bytes`].
    backlog_bytes: AtomicU64,
    /// See [`JournalStats::dead_records`].
    dead_records: AtomicU64,
    /// See [`JournalStats::appended_total`].
    appended_total: AtomicU64,
    /// See [`JournalStats::per_kind`].
    per_kind: [AtomicU64; 5],
    /// See [`JournalStats::evicted_records`].
    evicted_records: AtomicU64,
    /// See [`JournalStats::failure`]; a std mutex is fine: tiny sections, never held across await.
    failure: Mutex<Option<String>>,
    /// See [`JournalStats::replaced`]; set once, at open.
    replaced: std::sync::OnceLock<Replaced>,
}

/// Requests to the actor.
enum Command {
    /// Append a record.
    Append {
        /// The record kind.
        kind: Kind,
        /// The record's `data`.
        data: Data,
        /// The MQTT message it came from.
        origin: Option<MessageId>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Appended, JournalError>>,
    },
    /// Append records of one kind with contiguous seqs, all or nothing.
    AppendBatch {
        /// The records' kind.
        kind: Kind,
        /// The records' `data`, in order.
        data: Vec<Data>,
        /// The MQTT message each came from (as long as `data`, or empty).
        origins: Vec<Option<MessageId>>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<AppendedBatch, JournalError>>,
    },
    /// Read durable records.
    Read {
        /// Exclusive start position.
        after_position: u64,
        /// Most records to return.
        max_records: usize,
        /// Soft byte limit.
        max_bytes: usize,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Vec<StoredRecord>, JournalError>>,
    },
    /// Delete records through a position.
    RemoveThrough {
        /// Inclusive end position.
        position: u64,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<u64, JournalError>>,
    },
    /// Move a record to the dead-letter set.
    MoveToDead {
        /// The record's position.
        position: u64,
        /// Why HQ rejected it.
        reason: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// Flush everything and stop.
    Close {
        /// Answered after the final flush, once the database is closed.
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// A cheap, cloneable handle to the journal actor.
#[derive(Clone, Debug)]
pub struct JournalHandle {
    /// Commands to the actor.
    commands: mpsc::Sender<Command>,
    /// Figures the actor keeps current.
    stats: Arc<SharedStats>,
    /// The durable mark.
    mark: watch::Receiver<DurableMark>,
    /// The journal's epoch (fixed).
    epoch: Arc<str>,
    /// The identities of the MQTT messages records came from.
    messages: Option<SharedMessages>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Append { .. } => "Append",
            Command::AppendBatch { .. } => "AppendBatch",
            Command::Read { .. } => "Read",
            Command::RemoveThrough { .. } => "RemoveThrough",
            Command::MoveToDead { .. } => "MoveToDead",
            Command::Close { .. } => "Close",
        })
    }
}

/// Opens (or creates, or replaces a damaged) journal in `config.data_dir/journal` and starts its
/// actor. When the journal was replaced, the new journal's first record is a `gateway`
/// `journal_replaced` record, durable before this returns.
pub async fn open(config: JournalConfig) -> Result<Opened, JournalError> {
    let data_dir = config.data_dir.clone();
    let store_code = config.store.clone();
    let gateway = config.gateway.clone();
    let (store, replaced) = tokio::task::spawn_blocking(move || {
        let (mut store, replaced) = open_or_replace(&data_dir, &store_code, &gateway)?;
        store.attach_messages(&data_dir.join(JOURNAL_DIR))?;
        Ok::<_, JournalError>((store, replaced))
    })
    .await
    .map_err(|err| JournalError::Damaged {
        path: config.data_dir.join(JOURNAL_DIR),
        reason: format!("opening the journal failed: {err}"),
    })??;
    let handle = spawn(store, &config);
    if let Some(replaced) = &replaced {
        let _ = handle.stats.replaced.set(replaced.clone());
        let appended = handle
            .append_value(Kind::Gateway, &replaced_event(replaced, config.version))
            .await?;
        appended.durable.wait().await?;
    }
    Ok(Opened { handle, replaced })
}

/// The `data` of the `journal_replaced` gateway record.
pub(crate) fn replaced_event(replaced: &Replaced, version: &str) -> serde_json::Value {
    serde_json::json!({
        "event": "journal_replaced",
        "version": version,
        "detail": format!(
            "{}; damaged journal moved to {}; run `posgw journal salvage` to recover records",
            replaced.reason,
            replaced.quarantine.display()
        ),
    })
}

/// Starts the actor for an open store.
pub(super) fn spawn(store: Store, config: &JournalConfig) -> JournalHandle {
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    // Everything before the first position of this session is already on disk (it was read
    // back from it), so the mark starts just below the next position.
    let initial = DurableMark {
        position: store.next_position - 1,
        failed: None,
    };
    let (mark_tx, mark) = watch::channel(initial);
    let stats = Arc::new(SharedStats::default());
    let epoch: Arc<str> = store.epoch.as_str().into();
    let messages = store.messages.clone();
    let id_prefix: Arc<str> = store.id_prefix().into();
    let actor = Actor {
        id_prefix,
        answers: Vec::new(),
        durable_seq: store.next_seq - 1,
        store,
        inbox,
        stats: stats.clone(),
        mark: mark_tx,
        flush_every: config.flush,
        max_bytes: config.max_bytes,
        version: config.version,
        evicting: false,
        pending_eviction: None,
        eviction_logged: false,
        over_quota_logged: None,
        unflushed_since: None,
        removed_since: None,
        in_flight: None,
        floor_written: None,
        failed: None,
        write_retry_at: None,
    };
    actor.publish_stats();
    tokio::spawn(actor.run());
    JournalHandle {
        commands,
        stats,
        mark,
        epoch,
        messages,
    }
}

impl JournalHandle {
    /// Sends a command and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> Command,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Appends a record whose `data` is already-serialised JSON (an object). Returns once it is
    /// in sled (not yet durable: await `durable` for that).
    pub async fn append(
        &self,
        kind: Kind,
        data: impl Into<Data>,
    ) -> Result<Appended, JournalError> {
        self.append_from(kind, data, None).await
    }

    /// [`JournalHandle::append`] of the record the MQTT message `origin` became: the message's
    /// identity is kept with the record, durable with it, so that [`JournalHandle::recorded`]
    /// knows the message when the broker delivers it again, even after a crash.
    pub async fn append_from(
        &self,
        kind: Kind,
        data: impl Into<Data>,
        origin: Option<MessageId>,
    ) -> Result<Appended, JournalError> {
        let data = data.into();
        self.ask(|reply| Command::Append {
            kind,
            data,
            origin,
            reply,
        })
        .await
    }

    /// The record the MQTT message `id` became, if the journal holds its identity and the
    /// broker did not reuse its packet id since ([`JournalHandle::reused`]): resolves once that
    /// record is durable. Records removed after upload still count.
    pub fn recorded(&self, id: MessageId) -> Option<Durable> {
        let position = messages::lock(self.messages.as_ref()?).recorded(id)?;
        Some(Durable {
            position,
            mark: self.mark.clone(),
        })
    }

    /// Notes that the broker delivered the new messages `ids` (no DUP): the messages their
    /// packet ids named before were acknowledged (a broker reuses an id only then), so a
    /// redelivery with one of those ids is a new message even with the same topic and payload.
    /// Only a slot with the same hash needs the mark (another hash never matches the new
    /// message); it is written to the kernel at once, made durable by the next flush.
    pub fn reused(&self, ids: &[MessageId]) {
        if ids.is_empty() {
            return;
        }
        let Some(shared) = &self.messages else { return };
        let mut table = messages::lock(shared);
        if !table.reused(ids) {
            return;
        }
        if let Err(error) = table.write_dirty() {
            // Written again with the next flush, which fails loudly if the disk still refuses.
            tracing::warn!(%error, "cannot write reused message identities");
        }
    }

    /// Appends several records of one kind at once: far cheaper per record than as many
    /// [`JournalHandle::append`] calls (one command, one reply, one [`Durable`]), for producers
    /// that receive bursts. Each `data` must be a JSON object. The records get contiguous seqs
    /// and positions in the order given; either all are appended or none is (no seq is used
    /// then). At most [`MAX_BATCH_RECORDS`] records per call; an empty batch appends nothing
    /// and its `durable` is resolved at once.
    pub async fn append_batch(
        &self,
        kind: Kind,
        data: Vec<Data>,
    ) -> Result<AppendedBatch, JournalError> {
        self.append_batch_from(kind, data, Vec::new()).await
    }

    /// [`JournalHandle::append_batch`] of records MQTT messages became: `origins[i]` is the
    /// message record `i` came from, if any (`origins` is as long as `data`, or empty). See
    /// [`JournalHandle::append_from`].
    pub async fn append_batch_from(
        &self,
        kind: Kind,
        data: Vec<Data>,
        origins: Vec<Option<MessageId>>,
    ) -> Result<AppendedBatch, JournalError> {
        if data.len() > MAX_BATCH_RECORDS {
            return Err(JournalError::Rejected(format!(
                "a batch of {} records is more than the {MAX_BATCH_RECORDS} one append_batch \
                 call may carry",
                data.len()
            )));
        }
        if !origins.is_empty() && origins.len() != data.len() {
            return Err(JournalError::Rejected(format!(
                "{} message identities for a batch of {} records",
                origins.len(),
                data.len()
            )));
        }
        self.ask(|reply| Command::AppendBatch {
            kind,
            data,
            origins,
            reply,
        })
        .await
    }

    /// Serialises `data` (which must serialise to a JSON object) and appends it.
    pub async fn append_value<T: serde::Serialize>(
        &self,
        kind: Kind,
        data: &T,
    ) -> Result<Appended, JournalError> {
        self.append(kind, Data::serialize(data)?).await
    }

    /// Up to `max_records` durable records after `after_position` in position order, stopping
    /// before `max_bytes` would be exceeded (at least one record is returned if any is ready).
    /// Only durable records are returned, so nothing is ever sent to HQ that a crash could
    /// take back (which would let the seq be issued again).
    pub async fn read(
        &self,
        after_position: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        self.ask(|reply| Command::Read {
            after_position,
            max_records,
            max_bytes,
            reply,
        })
        .await
    }

    /// Deletes every record at or before `position` (after HQ stored them); returns how many
    /// were removed. `position` must be durable.
    pub async fn remove_through(&self, position: u64) -> Result<u64, JournalError> {
        self.ask(|reply| Command::RemoveThrough { position, reply })
            .await
    }

    /// Moves the record at `position` into the dead-letter set, keeping `reason`.
    pub async fn move_to_dead(&self, position: u64, reason: String) -> Result<(), JournalError> {
        self.ask(|reply| Command::MoveToDead {
            position,
            reason,
            reply,
        })
        .await
    }

    /// The highest durable position right now.
    pub fn durable_position(&self) -> u64 {
        self.mark.borrow().position
    }

    /// Waits until some record after `position` is durable (for readers that caught up).
    pub async fn wait_durable_beyond(&self, position: u64) -> Result<(), JournalError> {
        let mut mark = self.mark.clone();
        loop {
            {
                let current = mark.borrow_and_update();
                if current.position > position {
                    return Ok(());
                }
                if let Some(failed) = &current.failed {
                    return Err(JournalError::Flush(failed.to_string()));
                }
            }
            mark.changed().await.map_err(|_| JournalError::Closed)?;
        }
    }

    /// The journal's figures, without waiting for the actor.
    pub fn stats(&self) -> JournalStats {
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        JournalStats {
            epoch: self.epoch.to_string(),
            next_seq: load(&self.stats.next_seq),
            durable_seq: load(&self.stats.durable_seq),
            durable_position: self.mark.borrow().position,
            backlog_records: load(&self.stats.backlog_records),
            backlog_bytes: load(&self.stats.backlog_bytes),
            dead_records: load(&self.stats.dead_records),
            appended_total: load(&self.stats.appended_total),
            per_kind: Kind::ALL
                .iter()
                .map(|kind| (*kind, load(&self.stats.per_kind[kind.index()])))
                .collect(),
            evicted_records: load(&self.stats.evicted_records),
            failure: self
                .stats
                .failure
                .lock()
                .map(|failure| failure.clone())
                .unwrap_or_else(|poisoned| poisoned.into_inner().clone()),
            replaced: self.stats.replaced.get().cloned(),
        }
    }

    /// Flushes everything and stops the actor. After this returns Ok, every record appended
    /// through any handle is durable and the journal's files are closed.
    pub async fn close(self) -> Result<(), JournalError> {
        self.ask(|reply| Command::Close { reply }).await
    }
}

/// The flush running on a blocking thread, and what it covers.
struct InFlight {
    /// The blocking task.
    task: JoinHandle<Result<(), JournalError>>,
    /// The highest position it covers.
    position: u64,
    /// The highest seq it covers.
    seq: u64,
}

/// A single append's reply channel and its answer.
type AppendAnswer = (
    oneshot::Sender<Result<Appended, JournalError>>,
    Result<Appended, JournalError>,
);

/// The task that owns the store.
struct Actor {
    /// `STORE/GW/EPOCH/`, shared with every [`AppendedBatch`].
    id_prefix: Arc<str>,
    /// Answers to this turn's single appends, sent together at the end of the turn (see the
    /// `yield_now` in [`Actor::run`]).
    answers: Vec<AppendAnswer>,
    /// The journal.
    store: Store,
    /// Commands from handles.
    inbox: mpsc::Receiver<Command>,
    /// Figures for handles.
    stats: Arc<SharedStats>,
    /// The durable mark.
    mark: watch::Sender<DurableMark>,
    /// See [`JournalConfig::flush`].
    flush_every: Duration,
    /// See [`JournalConfig::max_bytes`].
    max_bytes: Option<u64>,
    /// See [`JournalConfig::version`].
    version: &'static str,
    /// Set from the append that takes the backlog over the quota until it is back at
    /// `QUOTA_LOW_WATER_PERCENT` (or nothing is left to evict).
    evicting: bool,
    /// Evictions not yet written down in an `evicted` record, and when the first of them was.
    pending_eviction: Option<(Eviction, Instant)>,
    /// Whether this process has logged its first eviction (as an error) yet.
    eviction_logged: bool,
    /// When "over quota with records that are never evicted" was last logged.
    over_quota_logged: Option<Instant>,
    /// When the oldest append not covered by a started flush happened.
    unflushed_since: Option<Instant>,
    /// When the oldest removal not covered by a started flush happened.
    removed_since: Option<Instant>,
    /// The running flush, if any (never more than one).
    in_flight: Option<InFlight>,
    /// When a flush last started that updates the floor file (see `floor`).
    floor_written: Option<Instant>,
    /// The highest durable seq.
    durable_seq: u64,
    /// Set when a flush failed: the journal then refuses new records.
    failed: Option<Arc<str>>,
    /// Set while the record log cannot be written (a full disk): the next flush is not tried
    /// before then.
    write_retry_at: Option<Instant>,
}

impl Actor {
    /// The actor's main loop, then its shutdown.
    async fn run(mut self) {
        // One timer, re-armed as needed, rather than a new one per turn.
        let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
        let mut closing: Option<oneshot::Sender<Result<(), JournalError>>> = None;
        'main: loop {
            let deadline = self.flush_deadline();
            if self.in_flight.is_none() {
                if let Some(deadline) = deadline {
                    if deadline <= Instant::now() {
                        // A failure is recorded (and retried, or the journal failed for good).
                        let _ = self.start_flush(false);
                        continue;
                    }
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                }
            }
            let timer_armed = self.in_flight.is_none() && deadline.is_some();
            let hold_back = self.held_back_until();
            let held_back = hold_back.is_some_and(|at| at <= Instant::now());
            tokio::select! {
                biased;
                done = wait_in_flight(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.finish_flush(done);
                }
                () = timer.as_mut(), if timer_armed => {}
                () = sleep_until_or_never(hold_back), if hold_back.is_some() && !held_back => {}
                command = self.inbox.recv(), if !held_back => {
                    let Some(first) = command else { break 'main };
                    // Drain what is already queued (bounded, so flushes and timers still get a
                    // turn); every command taken off the queue is handled before leaving.
                    let mut next = Some(first);
                    let mut handled = 0;
                    while let Some(command) = next.take() {
                        if let Command::Close { reply } = command {
                            closing = Some(reply);
                            self.send_answers();
                            break 'main;
                        }
                        handled += self.handle(command);
                        if handled < RECORDS_PER_TURN {
                            next = self.inbox.try_recv().ok();
                        }
                    }
                    let answered = !self.answers.is_empty();
                    self.send_answers();
                    self.publish_stats();
                    if answered {
                        // Let the producers just answered (queued on this worker) run and send
                        // their next record before the actor looks at its queue again: the next
                        // turn then finds several appends waiting instead of parking the thread
                        // for each one. Measured: about 15-20% more single appends per second.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        let result = self.shutdown().await;
        if let Some(reply) = closing {
            let _ = reply.send(result);
        }
    }

    /// Handles one command (never blocks on fsync); returns how much of a turn's budget it
    /// used (its records, at least 1).
    fn handle(&mut self, command: Command) -> usize {
        match command {
            Command::Append {
                kind,
                data,
                origin,
                reply,
            } => {
                let result = self.append(kind, &data, origin);
                self.answers.push((reply, result));
            }
            Command::AppendBatch {
                kind,
                data,
                origins,
                reply,
            } => {
                let result = self.append_batch(kind, &data, &origins);
                let _ = reply.send(result);
                return data.len().max(1);
            }
            Command::Read {
                after_position,
                max_records,
                max_bytes,
                reply,
            } => {
                let until = self.mark.borrow().position;
                let _ = reply.send(
                    self.store
                        .read(after_position, until, max_records, max_bytes),
                );
            }
            Command::RemoveThrough { position, reply } => {
                let result = if position > self.mark.borrow().position {
                    Err(JournalError::Rejected(format!(
                        "cannot remove through position {position}: it is not durable yet"
                    )))
                } else {
                    self.store.remove_through(position)
                };
                if matches!(result, Ok(removed) if removed > 0) {
                    self.note_removal();
                }
                let _ = reply.send(result);
            }
            Command::MoveToDead {
                position,
                reason,
                reply,
            } => {
                let result = self.store.move_to_dead(position, &reason);
                if result.is_ok() {
                    self.note_removal();
                }
                let _ = reply.send(result);
            }
            // Handled by the loop.
            Command::Close { reply } => {
                let _ = reply.send(Err(JournalError::Closed));
            }
        }
        1
    }

    /// Appends one record.
    fn append(
        &mut self,
        kind: Kind,
        data: &Data,
        origin: Option<MessageId>,
    ) -> Result<Appended, JournalError> {
        if let Some(failed) = &self.failed {
            return Err(JournalError::Flush(failed.to_string()));
        }
        let local = self
            .store
            .append_from(kind, data, origin)
            .map_err(|err| self.append_failed(err))?;
        self.note_write();
        self.stats.appended_total.fetch_add(1, Ordering::Relaxed);
        self.stats.per_kind[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.enforce_quota();
        Ok(Appended {
            seq: local.seq,
            id: local.id,
            position: local.position,
            durable: Durable {
                position: local.position,
                mark: self.mark.subscribe(),
            },
        })
    }

    /// A refused append: if it could not be taken back out of the log, the journal fails from
    /// now on (records reported failed could otherwise survive).
    fn append_failed(&mut self, err: JournalError) -> JournalError {
        if let Some(broken) = self.store.broken.take() {
            self.fail(broken);
        }
        err
    }

    /// Sends the answers collected this turn.
    fn send_answers(&mut self) {
        for (reply, result) in self.answers.drain(..) {
            let _ = reply.send(result);
        }
    }

    /// Appends a batch of records, all or nothing.
    fn append_batch(
        &mut self,
        kind: Kind,
        data: &[Data],
        origins: &[Option<MessageId>],
    ) -> Result<AppendedBatch, JournalError> {
        if let Some(failed) = &self.failed {
            return Err(JournalError::Flush(failed.to_string()));
        }
        let local = self
            .store
            .append_batch(kind, data, origins)
            .map_err(|err| self.append_failed(err))?;
        let last_position = if local.count == 0 {
            // Nothing to wait for: position 0 is always covered.
            0
        } else {
            self.note_write();
            local.first_position + local.count - 1
        };
        self.stats
            .appended_total
            .fetch_add(local.count, Ordering::Relaxed);
        self.stats.per_kind[kind.index()].fetch_add(local.count, Ordering::Relaxed);
        self.enforce_quota();
        Ok(AppendedBatch {
            first_seq: local.first_seq,
            first_position: local.first_position,
            count: local.count,
            durable: Durable {
                position: last_position,
                mark: self.mark.subscribe(),
            },
            id_prefix: self.id_prefix.clone(),
        })
    }

    /// Keeps the backlog within [`JournalConfig::max_bytes`] after an append: evicts the oldest
    /// scan and device records (a bounded number per call) until the backlog is back at
    /// `QUOTA_LOW_WATER_PERCENT` of the quota, and writes what it evicted down in a `gateway`
    /// `evicted` record. Records of other kinds stay even past the quota, loudly.
    fn enforce_quota(&mut self) {
        let Some(max) = self.max_bytes else { return };
        if !self.evicting {
            if self.store.backlog_bytes <= max {
                return;
            }
            self.evicting = true;
        }
        let target = max / 100 * QUOTA_LOW_WATER_PERCENT;
        let evicted = match self.store.evict(target, EVICT_PER_APPEND) {
            Ok(pass) => pass,
            Err(err) => {
                tracing::error!(error = %err, "cannot evict journal records");
                self.evicting = false;
                return;
            }
        };
        let stuck = evicted.records == 0;
        if !stuck {
            self.note_removal();
            self.stats
                .evicted_records
                .fetch_add(evicted.records, Ordering::Relaxed);
            if !self.eviction_logged {
                self.eviction_logged = true;
                tracing::error!(
                    max_bytes = max,
                    "journal over max_journal_bytes: evicting the oldest scan and device records"
                );
            }
            match &mut self.pending_eviction {
                Some((pending, _)) => pending.add(evicted),
                None => self.pending_eviction = Some((evicted, Instant::now())),
            }
        }
        let back_under = self.store.backlog_bytes <= target;
        if back_under || stuck {
            self.evicting = false;
        }
        if !back_under && self.store.backlog_bytes > max && stuck {
            self.log_over_quota(max);
        }
        let due = self
            .pending_eviction
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= EVICTED_RECORD_EVERY);
        if back_under || due {
            self.record_eviction(max);
        }
    }

    /// Logs (at most once a minute) that records which are never evicted fill the quota.
    fn log_over_quota(&mut self, max: u64) {
        if self
            .over_quota_logged
            .is_some_and(|logged| logged.elapsed() < OVER_QUOTA_LOG_EVERY)
        {
            return;
        }
        self.over_quota_logged = Some(Instant::now());
        let free = self
            .store
            .floor_dir
            .as_deref()
            .and_then(|dir| nix::sys::statvfs::statvfs(dir).ok())
            .map(|stat| {
                format!(
                    "{} bytes",
                    stat.blocks_available().saturating_mul(stat.fragment_size())
                )
            })
            .unwrap_or_else(|| "unknown".to_string());
        tracing::error!(
            backlog_bytes = self.store.backlog_bytes,
            max_bytes = max,
            "journal over quota with {} sale/attribution/gateway records that are never \
             evicted; free disk: {free}",
            self.store.backlog_records
        );
    }

    /// Writes the evictions not yet recorded into a `gateway` `evicted` record.
    fn record_eviction(&mut self, max: u64) {
        let Some((evicted, _)) = self.pending_eviction.take() else {
            return;
        };
        let detail = format!(
            "evicted {} scan/device records ({} bytes, oldest {}, newest {}): journal over \
             max_journal_bytes ({max} bytes)",
            evicted.records,
            evicted.bytes,
            evicted.first_id.as_deref().unwrap_or("?"),
            evicted.last_id.as_deref().unwrap_or("?"),
        );
        tracing::warn!(%detail, "journal records evicted");
        let event = serde_json::json!({
            "event": "evicted",
            "version": self.version,
            "detail": detail,
        });
        let result =
            Data::serialize(&event).and_then(|data| self.store.append(Kind::Gateway, &data));
        match result {
            Ok(_) => {
                self.note_write();
                self.stats.appended_total.fetch_add(1, Ordering::Relaxed);
                self.stats.per_kind[Kind::Gateway.index()].fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::error!(error = %err, "cannot record the eviction in the journal"),
        }
    }

    /// When the next flush is due: `flush` after the oldest unflushed append, or
    /// `REMOVAL_FLUSH_EVERY` after the oldest unflushed removal, whichever comes first.
    fn flush_deadline(&self) -> Option<Instant> {
        let appends = self.unflushed_since.map(|since| since + self.flush_every);
        let removals = self.removed_since.map(|since| since + REMOVAL_FLUSH_EVERY);
        let due = match (appends, removals) {
            (Some(appends), Some(removals)) => Some(appends.min(removals)),
            (appends, removals) => appends.or(removals),
        };
        match self.write_retry_at {
            Some(retry_at) => due.map(|due| due.max(retry_at)),
            None => due,
        }
    }

    /// From when the actor takes no more commands until the running flush is done: once the
    /// oldest write waiting for the next flush is `flush` old (at least [`HOLD_BACK_FLOOR`]).
    /// Without it, a burst (an MQTT backlog after a restart) keeps being accepted however long
    /// the running fsync takes, and thousands of records wait for a flush that cannot start
    /// yet; held back, producers wait instead (an MQTT message is then not read from the
    /// broker, which keeps it), and what is accepted but not durable stays near what arrives in
    /// one flush interval.
    fn held_back_until(&self) -> Option<Instant> {
        self.in_flight.as_ref()?;
        let since = self.unflushed_since?;
        Some(since + self.flush_every.max(HOLD_BACK_FLOOR))
    }

    /// Remembers that records were removed but the removal is not covered by a flush yet.
    fn note_removal(&mut self) {
        if self.removed_since.is_none() {
            self.removed_since = Some(Instant::now());
        }
    }

    /// Remembers that something is written but not covered by a flush yet.
    fn note_write(&mut self) {
        if self.unflushed_since.is_none() {
            self.unflushed_since = Some(Instant::now());
        }
    }

    /// Starts an fsync on a blocking thread covering everything written so far. Once it
    /// succeeded, the same thread updates the floor file if the last update is `FLOOR_EVERY`
    /// old (or `final_flush`), before the flush counts as done, so the floor never leads what
    /// is durable.
    fn start_flush(&mut self, final_flush: bool) -> Result<(), JournalError> {
        let now = Instant::now();
        // A removal's sled changes wait for their own deadline even when appends are fsynced
        // sooner: an fsync of sled costs a wake-up of its threads and a write of its log, and
        // the uplink removes after every batch.
        let with_meta = final_flush
            || self
                .removed_since
                .is_some_and(|since| now >= since + REMOVAL_FLUSH_EVERY);
        let job = match self.store.flush_job(with_meta) {
            Ok(job) => job,
            Err(JournalError::Storage { context, reason }) => {
                // Nothing written is lost: the records wait in memory (new appends are refused
                // once that buffer is full) and the write is tried again after `WRITE_RETRY`.
                if self.write_retry_at.is_none() {
                    tracing::error!(%reason, "cannot write the record log (a full disk?); retrying");
                }
                let error = JournalError::Storage { context, reason };
                if let Ok(mut failure) = self.stats.failure.lock() {
                    *failure = Some(format!("{error}; retrying"));
                }
                // Whatever made the flush due stays due; the retry waits a moment (with
                // `flush = "0s"`, or a removal long due, it would otherwise spin).
                self.write_retry_at = Some(Instant::now() + WRITE_RETRY);
                return Err(error);
            }
            Err(err) => {
                self.fail(err.to_string());
                // Nothing will be flushed any more: no deadline to come back to.
                self.unflushed_since = None;
                self.removed_since = None;
                return Err(err);
            }
        };
        if self.write_retry_at.take().is_some() && self.failed.is_none() {
            tracing::info!("the record log is writable again");
            if let Ok(mut failure) = self.stats.failure.lock() {
                *failure = None;
            }
        }
        self.unflushed_since = None;
        if with_meta {
            self.removed_since = None;
        }
        let floor_due = final_flush
            || self
                .floor_written
                .is_none_or(|written| now.duration_since(written) >= FLOOR_EVERY);
        let floor = match &self.store.floor_dir {
            Some(dir) if floor_due => {
                self.floor_written = Some(now);
                Some((dir.clone(), self.store.floor()))
            }
            _ => None,
        };
        self.in_flight = Some(InFlight {
            task: tokio::task::spawn_blocking(move || {
                job.run()?;
                if let Some((dir, floor)) = floor {
                    // The floor is a safeguard: failing to update it loses no record.
                    if let Err(reason) = super::floor::write(&dir, &floor) {
                        tracing::warn!(%reason, "cannot update the journal floor");
                    }
                }
                Ok(())
            }),
            position: self.store.next_position - 1,
            seq: self.store.next_seq - 1,
        });
        Ok(())
    }

    /// Publishes the result of the flush that just finished.
    fn finish_flush(&mut self, done: Result<(), JournalError>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        match done {
            Ok(()) => {
                self.durable_seq = self.durable_seq.max(flight.seq);
                self.stats
                    .durable_seq
                    .store(self.durable_seq, Ordering::Relaxed);
                self.mark.send_modify(|mark| {
                    mark.position = mark.position.max(flight.position);
                });
            }
            Err(err) => self.fail(err.to_string()),
        }
    }

    /// Marks the journal failed after an fsync error (or a failed batch that could not be taken
    /// back): nothing more can be promised durable.
    fn fail(&mut self, reason: String) {
        tracing::error!(%reason, "journal failed; refusing new records");
        let reason: Arc<str> = reason.into();
        self.failed = Some(reason.clone());
        if let Ok(mut failure) = self.stats.failure.lock() {
            *failure = Some(reason.to_string());
        }
        self.mark.send_modify(|mark| mark.failed = Some(reason));
    }

    /// Copies the store's counters into the shared figures.
    fn publish_stats(&self) {
        let stats = &self.stats;
        stats.next_seq.store(self.store.next_seq, Ordering::Relaxed);
        stats
            .backlog_records
            .store(self.store.backlog_records, Ordering::Relaxed);
        stats
            .backlog_bytes
            .store(self.store.backlog_bytes, Ordering::Relaxed);
        stats
            .dead_records
            .store(self.store.dead_records, Ordering::Relaxed);
    }

    /// Final flush and close; consumes the actor so the database is dropped before returning.
    async fn shutdown(mut self) -> Result<(), JournalError> {
        self.inbox.close();
        if self.in_flight.is_some() {
            let done = wait_in_flight(&mut self.in_flight).await;
            self.finish_flush(done);
        }
        // Appends still queued behind Close are answered "closed" by dropping their replies.
        let mut result = Ok(());
        if self.failed.is_none() {
            if let Some(max) = self.max_bytes {
                self.record_eviction(max);
            }
            // Last write of the session, so the next open can skip counting every record.
            if let Err(err) = self.store.save_counters() {
                tracing::warn!(error = %err, "cannot save the journal counters");
            }
            match self.start_flush(true) {
                Ok(()) => {
                    let done = wait_in_flight(&mut self.in_flight).await;
                    if let Err(err) = &done {
                        result = Err(JournalError::Flush(err.to_string()));
                    }
                    self.finish_flush(done);
                }
                Err(err) => result = Err(JournalError::Flush(err.to_string())),
            }
        } else if let Some(failed) = &self.failed {
            result = Err(JournalError::Flush(failed.to_string()));
        }
        self.publish_stats();
        // Dropping the database can block (it closes files and joins sled's threads).
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        result
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the running flush (the caller checked there is one).
async fn wait_in_flight(in_flight: &mut Option<InFlight>) -> Result<(), JournalError> {
    match in_flight {
        Some(flight) => match (&mut flight.task).await {
            Ok(result) => result,
            Err(err) => Err(JournalError::Flush(format!("flush task failed: {err}"))),
        },
        None => std::future::pending().await,
    }
}
