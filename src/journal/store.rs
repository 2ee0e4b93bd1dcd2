//! The store: an open journal's blocking operations, shared by the actor, the offline commands
//! and salvage: append (single records, batches, salvaged records), read, remove after upload,
//! and dead-letter, with the floors each of them writes first. Opening it is `open`, making it
//! durable `flush`, evicting over the quota `quota`.
//!
//! Nothing here is async; the actor calls these operations inline and runs the fsyncs on a
//! blocking thread. See the module doc of `journal` for the invariants this code keeps.

use std::collections::VecDeque;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use sled::{Batch, Db, Transactional, Tree};

use super::clock::Clock;
use super::error::JournalError;
use super::faults::SharedFaults;
use super::layout::{
    key_position, position_key, Trees, META_ACKED, META_POSITION_FLOOR, META_SEQ_FLOOR,
};
use super::messages::{self, MessageId, SharedMessages};
use super::open::{JournalLock, Scratch};
use super::recovery::Recovered;
use super::segments::{Log, Mark};
use crate::record::{check_data_is_object, json_string, Data, Kind, RecordEncoder};

/// Room a read sets aside for its records up front (a batch's `batch_max_bytes`, at most).
const READ_BUFFER_BYTES: usize = 1024 * 1024;
/// Reads remembered for counting removals (the uplink has one or two in flight).
const READ_SPANS: usize = 16;

/// The meta entries that protect the seqs issued so far, and the acknowledged position.
type Floors = [(&'static [u8], [u8; 8]); 3];

/// Records one read handed out: those after `after` through `last`.
#[derive(Debug, Clone, Copy)]
struct ReadSpan {
    after: u64,
    last: u64,
    records: u64,
    bytes: u64,
}

/// A record as stored, for readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Local storage order key (not the record's `seq`).
    pub position: u64,
    /// The record's JSON bytes, exactly as appended (the records of one read share one
    /// buffer).
    pub bytes: Bytes,
}

/// Records just appended together by [`Store::append_batch`]: seqs and positions are
/// contiguous, starting at these.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LocalBatch {
    /// The first record's seq.
    pub(crate) first_seq: u64,
    /// The first record's position.
    pub(crate) first_position: u64,
    /// How many records were appended.
    pub(crate) count: u64,
}

/// A record just appended by [`Store::append`].
#[derive(Debug)]
pub(crate) struct LocalAppend {
    /// The record's seq.
    pub(crate) seq: u64,
    /// The record's storage position.
    pub(crate) position: u64,
    /// The record's id.
    pub(crate) id: String,
}

/// An open journal: the sled database (meta, dead letters), the record log and the counters
/// recovered from them. Owned by exactly one party (the actor, or an offline command).
pub(crate) struct Store {
    /// The database (cheap to clone; clones are used to fsync on a blocking thread).
    pub(crate) db: Db,
    /// The records.
    pub(crate) log: Log,
    /// position -> dead-lettered record bytes.
    dead: Tree,
    /// position -> dead-letter reason.
    dead_reason: Tree,
    /// The segment files the log holds: first position -> empty (see [`SEGMENTS_TREE`](super::layout::SEGMENTS_TREE)).
    segments: Tree,
    /// Metadata (epoch, floors, acknowledged position).
    pub(crate) meta: Tree,
    /// Every record at or below this position is acknowledged (gone from the backlog).
    pub(crate) acked: u64,
    /// The journal's epoch.
    pub(crate) epoch: String,
    /// The seq the next appended record gets.
    pub(crate) next_seq: u64,
    /// The position the next stored record (appended or salvaged) gets.
    pub(crate) next_position: u64,
    /// Records in the backlog (in the log, above `acked`).
    pub(crate) backlog_records: u64,
    /// Total bytes of those records.
    pub(crate) backlog_bytes: u64,
    /// Records in the dead-letter set.
    pub(crate) dead_records: u64,
    /// Writes the envelope for this journal's store, gateway and epoch.
    encoder: RecordEncoder,
    /// Clock stamps for new records.
    clock: Clock,
    /// The boot id as a JSON string literal, computed once.
    boot_json: String,
    /// Reused encoding buffer.
    buffer: Vec<u8>,
    /// Where reads put the records they hand out; its memory is reused once the records of
    /// the previous read are dropped.
    read_buffer: BytesMut,
    /// What the last reads handed out, so a removal of what they read is counted without
    /// reading it again (the uplink removes exactly what it read and sent). Cleared when records
    /// leave the log any other way.
    reads: VecDeque<ReadSpan>,
    /// Set when a failed batch could not be taken back out of the log: records whose append
    /// was reported failed may then survive, so the journal must stop accepting records.
    pub(crate) broken: Option<String>,
    /// Where the floor file is kept current (`data_dir`); `None` for offline commands, which
    /// neither check nor write it.
    pub(crate) floor_dir: Option<PathBuf>,
    /// No scan or device record lies below this position (they were evicted, or there were
    /// none), so an eviction pass starts here instead of at the oldest record. Records are only
    /// ever added above it, so it stays true; it starts at 0 on every open.
    pub(crate) evict_from: u64,
    /// The scratch copy of sled an offline command opened (removed when the store drops,
    /// after sled closed it: fields drop in declaration order).
    pub(crate) scratch: Option<Scratch>,
    /// Where tests make storage fail on purpose (see `faults`); nothing fails in production.
    pub(crate) faults: SharedFaults,
    /// The identities of the MQTT messages records came from (`messages`); `None` for offline
    /// commands, which never append.
    pub(crate) messages: Option<SharedMessages>,
    /// Dropped last (fields drop in declaration order), after sled released its files.
    _lock: JournalLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("epoch", &self.epoch)
            .field("next_seq", &self.next_seq)
            .field("next_position", &self.next_position)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store of a journal just opened and recovered (see `open`): the database, its
    /// trees, the record log and the counters recovered from them, with the envelope of this
    /// journal's records. Holds `lock` until it drops.
    pub(crate) fn new(
        db: Db,
        log: Log,
        trees: Trees,
        recovered: Recovered,
        encoder: RecordEncoder,
        lock: JournalLock,
        faults: SharedFaults,
    ) -> Store {
        let clock = Clock::new();
        let boot_json = json_string(clock.boot_id());
        Store {
            db,
            log,
            dead: trees.dead,
            dead_reason: trees.dead_reason,
            segments: trees.segments,
            meta: trees.meta,
            acked: recovered.acked,
            encoder,
            epoch: recovered.epoch,
            next_seq: recovered.next_seq,
            next_position: recovered.next_position,
            backlog_records: recovered.backlog_records,
            backlog_bytes: recovered.backlog_bytes,
            dead_records: recovered.dead_records,
            clock,
            boot_json,
            buffer: Vec::with_capacity(1024),
            read_buffer: BytesMut::new(),
            reads: VecDeque::new(),
            broken: None,
            floor_dir: None,
            evict_from: 0,
            scratch: None,
            messages: None,
            faults,
            _lock: lock,
        }
    }

    /// Appends a new record of this journal; it is in the log but not yet durable.
    pub(crate) fn append(&mut self, kind: Kind, data: &Data) -> Result<LocalAppend, JournalError> {
        self.append_from(kind, data, None)
    }

    /// [`Store::append`] of the record an MQTT message became: the message's identity is kept
    /// with it (see `messages`).
    pub(crate) fn append_from(
        &mut self,
        kind: Kind,
        data: &Data,
        origin: Option<MessageId>,
    ) -> Result<LocalAppend, JournalError> {
        check_data_is_object(data.as_bytes()).map_err(JournalError::InvalidData)?;
        let local = self.write_records(kind, std::slice::from_ref(data), &[origin])?;
        Ok(LocalAppend {
            seq: local.first_seq,
            position: local.first_position,
            id: self.encoder.id(local.first_seq),
        })
    }

    /// Appends several records of one kind with contiguous seqs and positions, all or nothing:
    /// if one cannot be appended, the batch is taken back out of the log and no seq is used.
    /// (If even that fails, [`Store::broken`] is set.)
    /// `origins`: the identity of the MQTT message record `i` came from, if any (as long as
    /// `data`, or empty).
    pub(crate) fn append_batch(
        &mut self,
        kind: Kind,
        data: &[Data],
        origins: &[Option<MessageId>],
    ) -> Result<LocalBatch, JournalError> {
        for (index, item) in data.iter().enumerate() {
            check_data_is_object(item.as_bytes())
                .map_err(|err| JournalError::InvalidData(format!("record {index}: {err}")))?;
        }
        self.write_records(kind, data, origins)
    }

    /// Encodes and appends checked records with the next seqs and positions, all or nothing;
    /// the identities of the messages they came from (`origins`, by index) go into the table in
    /// the same write.
    fn write_records(
        &mut self,
        kind: Kind,
        data: &[Data],
        origins: &[Option<MessageId>],
    ) -> Result<LocalBatch, JournalError> {
        let first_seq = self.next_seq;
        let first_position = self.next_position;
        // The records are written together, so one clock stamp serves them all.
        let stamp = self.clock.stamp();
        let head = RecordEncoder::head(&stamp, &self.boot_json, kind);
        let mark = self.begin()?;
        let mut bytes = 0u64;
        for (offset, item) in (0u64..).zip(data) {
            let (seq, position) = (first_seq + offset, first_position + offset);
            match self.insert_record(seq, position, &head, item.as_bytes()) {
                Ok(size) => bytes += size,
                Err(err) => {
                    self.roll_back(mark);
                    return Err(err);
                }
            }
        }
        // Noted before `end`, which may hand the frames to the kernel: the table goes first.
        let mut replaced = Vec::new();
        if let Some(messages) = &self.messages {
            let mut table = messages::lock(messages);
            for (offset, origin) in (0u64..).zip(origins) {
                if let Some(origin) = origin {
                    let before = table.record(*origin, first_position + offset);
                    replaced.push((origin.pkid, before));
                }
            }
        }
        if let Err(err) = self.end() {
            if let Some(messages) = &self.messages {
                let mut table = messages::lock(messages);
                for (pkid, before) in replaced.into_iter().rev() {
                    table.restore(pkid, before);
                }
            }
            self.roll_back(mark);
            return Err(err);
        }
        let count = data.len() as u64;
        // Only advance once the log took every record: a failed append must not burn a seq.
        self.next_seq += count;
        self.next_position += count;
        self.backlog_records += count;
        self.backlog_bytes += bytes;
        Ok(LocalBatch {
            first_seq,
            first_position,
            count,
        })
    }

    /// Starts appending at `next_position` (a new segment if the current one is full).
    fn begin(&mut self) -> Result<Mark, JournalError> {
        self.log
            .begin(self.next_position)
            .map_err(|err| JournalError::storage("appending a record", err))
    }

    /// Ends an append (hands big buffers to the kernel).
    fn end(&mut self) -> Result<(), JournalError> {
        self.log
            .end()
            .map_err(|err| JournalError::storage("appending a record", err))
    }

    /// Takes back the records of a failed append.
    fn roll_back(&mut self, mark: Mark) {
        let result = match self.faults.before_roll_back() {
            Ok(()) => self.log.reset(mark).map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = result {
            let reason = format!("cannot take back the records of a failed batch: {err}");
            tracing::error!(%reason, "journal storage failed");
            self.broken = Some(reason);
        }
    }

    /// Encodes one record of this journal and appends it at `position`; returns its size.
    /// Does not touch the counters.
    fn insert_record(
        &mut self,
        seq: u64,
        position: u64,
        head: &str,
        data: &[u8],
    ) -> Result<u64, JournalError> {
        let mut buffer = std::mem::take(&mut self.buffer);
        self.encoder.encode(&mut buffer, seq, head, data);
        let result = self.insert_bytes(position, &buffer);
        let bytes = buffer.len() as u64;
        self.buffer = buffer;
        result?;
        Ok(bytes)
    }

    /// The log append of a record (after asking the faults whether to fail).
    fn insert_bytes(&mut self, position: u64, bytes: &[u8]) -> Result<(), JournalError> {
        self.faults
            .before_append()
            .map_err(|err| JournalError::storage("appending a record", err))?;
        self.log
            .append(position, bytes)
            .map_err(|err| JournalError::storage("appending a record", err))
    }

    /// Stores an existing record's bytes at the next position (salvage); its seq is its own.
    /// Call [`Store::protect_floors`] once before a series of these.
    pub(crate) fn append_foreign(&mut self, bytes: &[u8]) -> Result<u64, JournalError> {
        let position = self.next_position;
        let mark = self.begin()?;
        if let Err(err) = self.log.append(position, bytes) {
            self.roll_back(mark);
            return Err(JournalError::storage("copying a salvaged record", err));
        }
        self.end()?;
        self.next_position += 1;
        self.backlog_records += 1;
        self.backlog_bytes += bytes.len() as u64;
        Ok(position)
    }

    /// Stores an existing dead-lettered record (salvage) with its reason.
    pub(crate) fn append_foreign_dead(
        &mut self,
        bytes: &[u8],
        reason: &[u8],
    ) -> Result<u64, JournalError> {
        let position = self.next_position;
        let key = position_key(position);
        (&self.dead, &self.dead_reason)
            .transaction(|(dead, dead_reason)| {
                dead.insert(&key, bytes)?;
                dead_reason.insert(&key, reason)?;
                Ok(())
            })
            .map_err(|err: sled::transaction::TransactionError<()>| {
                JournalError::storage("copying a salvaged dead record", format!("{err:?}"))
            })?;
        self.next_position += 1;
        self.dead_records += 1;
        Ok(position)
    }

    /// The meta entries recording the seq and position issued so far, then what HQ
    /// acknowledged.
    ///
    /// The records not yet handed to the kernel are written out first, so the floors never name
    /// a seq the log does not hold: otherwise a crash (kill -9, which spares what the kernel
    /// has) would lose those records and leave a gap in the seqs.
    fn floors(&mut self) -> Result<Floors, JournalError> {
        self.log
            .write_out()
            .map_err(|err| JournalError::storage("writing the record log", err))?;
        Ok([
            (META_SEQ_FLOOR, position_key(self.next_seq - 1)),
            (META_POSITION_FLOOR, position_key(self.next_position - 1)),
            (META_ACKED, position_key(self.acked)),
        ])
    }

    /// [`Store::floors`] as one batch.
    fn floors_batch(&mut self) -> Result<Batch, JournalError> {
        let mut batch = Batch::default();
        for (key, value) in self.floors()? {
            batch.insert(key, &value);
        }
        Ok(batch)
    }

    /// Records in meta the seq and position issued so far. Needed before anything that can
    /// change which record is last (removal, dead-lettering, salvage), so recovery never derives
    /// a lower next seq than one already issued.
    ///
    /// Inserted one by one, floors first, not as one batch: sled writes its log out (a write on
    /// one of its threads) for every batch, and the uplink removes after every batch it sent.
    /// sled replays its log in order, so a crash keeps the inserts up to some point: the
    /// acknowledged position is never ahead of the floors written with it.
    pub(crate) fn protect_floors(&mut self) -> Result<(), JournalError> {
        for (key, value) in self.floors()? {
            self.meta
                .insert(key, &value)
                .map_err(|err| JournalError::storage("writing the journal floors", err))?;
        }
        Ok(())
    }

    /// Writes the floors and makes them durable now: before a record is taken out of the log
    /// by a rewrite (which could take away the last record, the other source of the next seq).
    pub(crate) fn protect_floors_now(&mut self) -> Result<(), JournalError> {
        self.protect_floors()?;
        self.db
            .flush()
            .map(|_| ())
            .map_err(|err| JournalError::Flush(err.to_string()))
    }

    /// Up to `max_records` records after `after_position` and at or before `until_position`,
    /// stopping before `max_bytes` would be exceeded (but always at least one record).
    pub(crate) fn read(
        &mut self,
        after_position: u64,
        until_position: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        if max_records == 0 {
            return Ok(Vec::new());
        }
        // One buffer for the whole read, each record a slice of it: no allocation per record,
        // and none per read once the previous read's records are dropped (the uplink's are, by
        // its next read), as `reserve` then takes the same memory back.
        let buffer = &mut self.read_buffer;
        buffer.clear();
        buffer.reserve(max_bytes.min(READ_BUFFER_BYTES));
        let mut found: Vec<(u64, usize)> = Vec::new();
        self.log
            .read(
                after_position.max(self.acked),
                until_position,
                &mut |position, bytes| {
                    if !found.is_empty() && buffer.len() + bytes.len() > max_bytes {
                        return false;
                    }
                    buffer.extend_from_slice(bytes);
                    found.push((position, buffer.len()));
                    found.len() < max_records
                },
            )
            .map_err(|err| JournalError::storage("reading records", err))?;
        if let Some(&(last, _)) = found.last() {
            if self.reads.len() == READ_SPANS {
                self.reads.pop_front();
            }
            self.reads.push_back(ReadSpan {
                after: after_position.max(self.acked),
                last,
                records: found.len() as u64,
                bytes: buffer.len() as u64,
            });
        }
        let buffer = buffer.split().freeze();
        let mut start = 0;
        Ok(found
            .into_iter()
            .map(|(position, end)| {
                let bytes = buffer.slice(start..end);
                start = end;
                StoredRecord { position, bytes }
            })
            .collect())
    }

    /// The records and bytes from the acknowledged position through `position`, when the reads
    /// since cover exactly that range (`None`: count them in the log).
    fn counted_by_reads(&self, position: u64) -> Option<(u64, u64)> {
        let (mut at, mut records, mut bytes) = (self.acked, 0, 0);
        while at < position {
            let span = self
                .reads
                .iter()
                .filter(|span| span.after == at && span.last <= position)
                .max_by_key(|span| span.last)?;
            records += span.records;
            bytes += span.bytes;
            at = span.last;
        }
        Some((records, bytes))
    }

    /// Deletes every record at or before `position`; returns how many were removed.
    ///
    /// The acknowledged position is written after the floors; whole segments
    /// below it are deleted (never the last one).
    pub(crate) fn remove_through(&mut self, position: u64) -> Result<u64, JournalError> {
        if position <= self.acked {
            return Ok(0);
        }
        let (removed, bytes) = match self.counted_by_reads(position) {
            Some(counted) => counted,
            None => self
                .log
                .count(self.acked, position)
                .map_err(|err| JournalError::storage("reading records to remove", err))?,
        };
        self.reads.retain(|span| span.last > position);
        let before = self.acked;
        self.acked = position;
        if let Err(err) = self.protect_floors() {
            self.acked = before;
            return Err(err);
        }
        self.backlog_records = self.backlog_records.saturating_sub(removed);
        self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
        if let Some(messages) = &self.messages {
            // Survives a kill -9 at once, unlike sled's buffered write (see `messages`).
            if let Err(err) = messages::lock(messages).set_acked(position) {
                tracing::warn!(error = %err, "cannot write the acknowledged position");
            }
        }
        // The floors must be on disk before a file goes: the unlink can reach the disk before
        // sled's batch, and the last segment may hold no durable record yet (just rolled).
        self.track_segments()?;
        if self.log.would_delete(position) {
            self.db
                .flush()
                .map_err(|err| JournalError::Flush(err.to_string()))?;
        }
        self.log
            .delete_through(position)
            .map_err(|err| JournalError::storage("removing records", err))?;
        Ok(removed)
    }

    /// Moves the record at `position` to the dead-letter set with HQ's reason: the dead letter
    /// and the floors are made durable first, then the record is taken out of the log (a crash
    /// in between leaves it in both, and it is sent once more).
    pub(crate) fn move_to_dead(&mut self, position: u64, reason: &str) -> Result<(), JournalError> {
        let frame = self
            .log
            .first_after(position.saturating_sub(1).max(self.acked))
            .map_err(|err| JournalError::storage("reading a record to dead-letter", err))?
            .filter(|frame| frame.position == position)
            .ok_or_else(|| JournalError::Rejected(format!("no record at position {position}")))?;
        let key = position_key(position);
        let floors = self.floors_batch()?;
        let bytes = frame.bytes;
        // Already there when a crash came between the dead letter and the rewrite of the log.
        let known = self
            .dead
            .contains_key(key)
            .map_err(|err| JournalError::storage("reading the dead-letter set", err))?;
        (&self.dead, &self.dead_reason, &self.meta)
            .transaction(|(dead, dead_reason, meta)| {
                meta.apply_batch(&floors)?;
                dead.insert(&key, bytes.as_slice())?;
                dead_reason.insert(&key, reason.as_bytes())?;
                Ok(())
            })
            .map_err(|err: sled::transaction::TransactionError<()>| {
                JournalError::storage("moving a record to the dead-letter set", format!("{err:?}"))
            })?;
        self.db
            .flush()
            .map_err(|err| JournalError::Flush(err.to_string()))?;
        self.take_out(
            &[position],
            bytes.len() as u64,
            "moving a record to the dead-letter set",
        )?;
        if !known {
            self.dead_records += 1;
        }
        Ok(())
    }

    /// Takes the records at `positions` (sorted; `bytes` in all) out of the log by a rewrite
    /// (dead-lettering, eviction), while doing `context`; call with the floors durable.
    pub(crate) fn take_out(
        &mut self,
        positions: &[u64],
        bytes: u64,
        context: &'static str,
    ) -> Result<(), JournalError> {
        // Records leave the log: what earlier reads counted no longer holds.
        self.reads.clear();
        self.log
            .drop_frames(positions)
            .map_err(|err| JournalError::storage(context, err))?;
        self.backlog_records = self.backlog_records.saturating_sub(positions.len() as u64);
        self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
        Ok(())
    }

    /// Calls `each` with every record (or dead record) in position order.
    pub(crate) fn for_each_record(
        &mut self,
        dead: bool,
        each: &mut dyn FnMut(StoredRecord) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        if dead {
            for item in self.dead.iter() {
                let (key, value) =
                    item.map_err(|err| JournalError::storage("reading records", err))?;
                each(StoredRecord {
                    position: key_position(&key).unwrap_or_default(),
                    bytes: Bytes::copy_from_slice(&value),
                })?;
            }
            return Ok(());
        }
        let mut result = Ok(());
        self.log
            .read(self.acked, u64::MAX, &mut |position, bytes| {
                result = each(StoredRecord {
                    position,
                    bytes: Bytes::copy_from_slice(bytes),
                });
                result.is_ok()
            })
            .map_err(|err| JournalError::storage("reading records", err))?;
        result
    }

    /// The bytes of the first (or, with `last`, the last) record, if any.
    pub(crate) fn edge_record(&mut self, last: bool) -> Result<Option<Vec<u8>>, JournalError> {
        let frame = if last {
            self.log.last()
        } else {
            self.log.first_after(self.acked)
        }
        .map_err(|err| JournalError::storage("reading the first or last record", err))?;
        Ok(frame
            .filter(|frame| frame.position > self.acked)
            .map(|frame| frame.bytes))
    }

    /// `STORE/GW/EPOCH/`: every id this journal issues is this followed by the seq.
    pub(crate) fn id_prefix(&self) -> &str {
        self.encoder.id_prefix()
    }

    /// Brings the list of segments (`segments` tree) up to date with the segments the log
    /// created and deleted since the last call. Made durable with sled's next flush; the open
    /// copes with a list that lags the files (see `check_segments`).
    pub(crate) fn track_segments(&mut self) -> Result<(), JournalError> {
        let changes = self.log.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (first, created) in changes {
            if created {
                batch.insert(&position_key(first), &[]);
            } else {
                batch.remove(&position_key(first));
            }
        }
        self.segments
            .apply_batch(batch)
            .map_err(|err| JournalError::storage("listing the segments", err.to_string()))
    }
}
