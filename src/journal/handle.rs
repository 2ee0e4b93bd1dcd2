//! The journal's public face: [`open`], the cheap, cloneable [`JournalHandle`] everyone but the
//! actor holds, the commands it sends the actor over a bounded channel (Alice Ryhl's actor
//! pattern), and what they answer: [`Appended`], [`AppendedBatch`], [`Durable`] (resolving from
//! the durable mark the actor publishes) and [`JournalStats`].
//!
//! Per-record costs are what limit throughput, so producers that have several records at once
//! use [`JournalHandle::append_batch`]: one command, one pass over the log, one reply and one
//! [`Durable`] for the lot, instead of one of each per record.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::actor;
use super::error::JournalError;
use super::layout::JOURNAL_DIR;
use super::messages::{self, MessageId, SharedMessages};
use super::open::open_or_replace;
use super::quarantine::{replaced_event, Replaced};
use super::store::StoredRecord;
use crate::record::{Data, Kind};

/// Most records one [`JournalHandle::append_batch`] call may carry: the actor writes a batch in
/// one go (that is what makes its seqs contiguous), so this bounds how long it is busy with one.
pub const MAX_BATCH_RECORDS: usize = 256;

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
    pub(crate) id_prefix: Arc<str>,
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
pub(crate) struct DurableMark {
    /// Every record at or before this position is durable.
    pub(crate) position: u64,
    /// Set once a flush failed; nothing after `position` will ever be confirmed.
    pub(crate) failed: Option<Arc<str>>,
}

/// A future-to-be: waits until one record (or a batch) is durable. Clones wait for the same.
#[derive(Debug, Clone)]
pub struct Durable {
    /// The record's position.
    pub(crate) position: u64,
    /// The actor's durable mark.
    pub(crate) mark: watch::Receiver<DurableMark>,
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
pub(crate) struct SharedStats {
    /// See [`JournalStats::next_seq`].
    pub(crate) next_seq: AtomicU64,
    /// See [`JournalStats::durable_seq`].
    pub(crate) durable_seq: AtomicU64,
    /// See [`JournalStats::backlog_records`].
    pub(crate) backlog_records: AtomicU64,
    /// See [`JournalStats::backlog_bytes`].
    pub(crate) backlog_bytes: AtomicU64,
    /// See [`JournalStats::dead_records`].
    pub(crate) dead_records: AtomicU64,
    /// See [`JournalStats::appended_total`].
    pub(crate) appended_total: AtomicU64,
    /// See [`JournalStats::per_kind`].
    pub(crate) per_kind: [AtomicU64; Kind::ALL.len()],
    /// See [`JournalStats::evicted_records`].
    pub(crate) evicted_records: AtomicU64,
    /// See [`JournalStats::failure`]; a std mutex is fine: tiny sections, never held across await.
    pub(crate) failure: Mutex<Option<String>>,
    /// See [`JournalStats::replaced`]; set once, at open.
    pub(crate) replaced: std::sync::OnceLock<Replaced>,
}

/// Requests to the actor.
pub(crate) enum Command {
    /// Append a record.
    Append {
        /// The record kind.
        kind: Kind,
        /// The record's `data`.
        data: Data,
        /// The MQTT message it came from.
        origin: Option<MessageId>,
        /// Someone waits for it to be durable: flush as soon as possible rather than at the
        /// end of the group-commit window.
        urgent: bool,
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
    pub(crate) commands: mpsc::Sender<Command>,
    /// Figures the actor keeps current.
    pub(crate) stats: Arc<SharedStats>,
    /// The durable mark.
    pub(crate) mark: watch::Receiver<DurableMark>,
    /// The journal's epoch (fixed).
    pub(crate) epoch: Arc<str>,
    /// The identities of the MQTT messages records came from.
    pub(crate) messages: Option<SharedMessages>,
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
    let handle = actor::spawn(store, &config);
    if let Some(replaced) = &replaced {
        let _ = handle.stats.replaced.set(replaced.clone());
        let appended = handle
            .append_value(Kind::Gateway, &replaced_event(replaced, config.version))
            .await?;
        appended.durable.wait().await?;
    }
    Ok(Opened { handle, replaced })
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
            urgent: false,
            reply,
        })
        .await
    }

    /// [`JournalHandle::append`] for a record a person is waiting on (a clerk's consultation
    /// step): the next flush starts at once instead of at the end of the group-commit window
    /// (`[gateway] flush`), so its `durable` resolves after one fsync. Every other record
    /// written meanwhile rides along in that flush.
    pub async fn append_urgent(
        &self,
        kind: Kind,
        data: impl Into<Data>,
    ) -> Result<Appended, JournalError> {
        let data = data.into();
        self.ask(|reply| Command::Append {
            kind,
            data,
            origin: None,
            urgent: true,
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
