//! The durable journal: every accepted record is written here before anything else happens to
//! it, and leaves only after HQ has stored it. This module doc is the journal's design doc.
//!
//! # Promise
//!
//! A record whose [`Durable`] resolved survives a power cut, a `kill -9` and a damaged database
//! (in the last case through quarantine and salvage, below). Its id is never reused. A record
//! still in the log's buffer when the process dies (at most `flush` old, never durable, so never
//! acknowledged to a device nor sent to HQ) is lost with its seq, which the next session issues
//! again: no device and no HQ had it confirmed, and no seq is skipped.
//!
//! # Invariants
//!
//! 1. Only this module touches the journal's files (sled and the record log). One actor task
//!    owns the open journal; everyone else holds a [`JournalHandle`]. Offline commands open the
//!    journal only while the gateway is stopped, enforced by an exclusive `flock` on
//!    `data_dir/journal.lock` (plus sled's own lock). `stats` and `dump` change no file: they
//!    open a scratch copy of sled's files (sled 0.34 has no read-only mode) and read the record
//!    log in place, read-only (no cut, no deletion).
//! 2. `seq` starts at 1 and grows by exactly 1 per appended record of an epoch: no gaps, no reuse,
//!    across restarts and after every record was removed. A failed append does not consume a
//!    seq; a batch ([`JournalHandle::append_batch`]) is appended whole or not at all, its seqs
//!    contiguous.
//! 3. `epoch` is 8 random lowercase hex characters, written (and fsynced) into `meta` when the
//!    journal is created, before any record can carry it. It never changes for that journal.
//! 4. A record's bytes are produced once, at append, and never re-encoded: the journal, `journal
//!    dump` and HQ see the same bytes.
//! 5. Readers ([`JournalHandle::read`]) only ever see durable records. Otherwise the uplink could
//!    send a record that a crash then takes back, and the seq would be issued again to a different
//!    record, which HQ would drop as a duplicate.
//! 6. A journal never continues below what it had made durable. A disk can lose writes without
//!    an error, sled 0.34 can open a damaged database yet recover only a prefix of it (or
//!    nothing), and the record log is cut at its first bad frame; deriving the next seq from
//!    that would issue ids again. So `data_dir/journal.floor` (see `floor`) records
//!    the epoch and the highest durable seq and position, written atomically after a flush (at
//!    most once a second while running, always at close and in salvage); a journal of that
//!    epoch that opens below it, or opens empty without an epoch, is damage (quarantine below).
//!    The floor lags the journal, never leads it, so it cannot flag a healthy journal. sled may
//!    also rewrite a file it cannot read at all while opening it; what it destroyed that way is
//!    beyond salvage, but the loss is still noticed and no id is issued twice.
//! 7. Records leave the records tree only through [`JournalHandle::remove_through`] (after HQ
//!    acknowledged them), [`JournalHandle::move_to_dead`] (HQ rejected one) or eviction over
//!    the quota (below, counted and recorded); nothing is dropped silently. All three write the
//!    floors before the removal (or in the same sled transaction, for a dead letter).
//!
//! # On-disk layout
//!
//! ```text
//! data_dir/
//!   journal.lock                   flock held by whoever has the journal open
//!   journal.floor                  "posgw-journal-floor-1 EPOCH SEQ POSITION": durable so far
//!   journal/
//!     segments/000…0001.seg        the record log: frames (length, CRC-32, position, record
//!                                  JSON bytes), one file per ~8 MiB, named by first position
//!     messages                     identities of the MQTT messages records came from: one
//!                                  32-byte slot per packet id (2 MiB), see `messages`; and
//!                                  the acknowledged position again, written at each removal
//!     conf, db, snap.*, blobs/     the sled 0.34 database:
//!       tree "meta"                "format" = "2", "epoch" = 8 hex chars,
//!                                  "seq_floor" = u64 BE, "position_floor" = u64 BE,
//!                                  "acked" = u64 BE (HQ acknowledged every record up to it),
//!                                  "counters" = 3 x u64 BE (only between close and open)
//!       tree "dead"                position -> record JSON bytes (HQ rejected it)
//!       tree "dead_reason"         position -> HQ's reason, UTF-8
//!       tree "segments"            first position -> empty: the segment files of the log
//!       tree "records"             format 1 only: position -> record (converted at open)
//!   quarantine-20261127T083000Z/   a damaged journal folder, moved aside as it was
//!   salvaged-20261127T083000Z/     the same folder after `journal salvage` copied it
//! ```
//!
//! The storage key (`position`) is separate from the record's `seq` because `journal salvage`
//! copies records of older epochs into the live journal with their original id, epoch and seq;
//! they get fresh positions after the live records. Positions, like seqs, are never reused.
//!
//! # Why records are not in sled
//!
//! Format 1 kept each record as a sled key. sled 0.34 keeps per-key state in memory and copies a
//! leaf on every insert: appends topped out near 130k/s, draining 1M records ran at 82k/s with
//! 107 MiB resident, and MQTT ingest cost 2 CPU-seconds per 100k messages. The log
//! (`segments`, whose module doc has the details) appends into a buffer, reads sequentially,
//! and removes acknowledged records by deleting whole files: the same drain runs at ~360k/s in
//! 20 MiB and MQTT ingest costs 0.27-0.41 CPU-s per 100k. sled keeps what is small and
//! random-access.
//!
//! # Record format
//!
//! docs/records.md, written by [`crate::record`] in this field order:
//! `{"id":"STORE/GW/EPOCH/SEQ","store":..,"gateway":..,"epoch":"7f3a9c21","seq":42,
//! "ts":"2026-11-27T16:01:02.345+08:00","clock":{"boot":..,"mono_ms":..,"synced":..},
//! "kind":"scan","data":{..}}`. `data` is the caller's already-serialised JSON object, copied in
//! verbatim. `clock` comes from [`clock`]: the boot id (cached), `CLOCK_BOOTTIME` milliseconds and
//! the kernel's `adjtimex` sync flag (asked at most once a second).
//!
//! # Next seq and position after a restart
//!
//! Recovery must derive "the last seq issued" even when records were removed, dead-lettered, or
//! followed by salvaged records of another epoch. The rule: **the last issued seq is the larger of
//! `meta.seq_floor` and the seq of the last record (highest position) if that record belongs to
//! this epoch.** Appends keep this true on their own (the new record is last). Every operation
//! that can change which record is last (removal, dead-lettering, salvage) first writes
//! `seq_floor`/`position_floor` = what has been issued so far: removal just before the
//! acknowledged position (sled replays its log in order, and a segment is deleted only once
//! they are durable, never the last one), dead-lettering and
//! eviction durably before the segment is rewritten, so no crash point can separate them. The
//! next position is one above the largest of `position_floor`, the last record and the last
//! dead record.
//!
//! # Appending, group commit
//!
//! An append is encoded into the log's buffer at once and answered with its seq, id and a
//! [`Durable`]. The actor takes every queued command per wake-up (up to
//! 256 records' worth), answers that turn's single appends together at its end and then yields
//! once, so the producers it just answered queue their next record before it looks again;
//! that keeps it from parking its thread for every record.
//!
//! Per-record costs (a command, a reply, a task wake-up, a `Durable`) are what limit single
//! appends, so [`JournalHandle::append_batch`] takes up to [`MAX_BATCH_RECORDS`] records of one
//! kind in one command: they are encoded with one clock stamp, appended one after the other
//! with nothing in between (contiguous seqs and positions, one segment) and answered with one
//! [`AppendedBatch`] whose `durable` covers them all. If one of them cannot be appended, the
//! batch is taken back out of the log's buffer and no seq is used; if even that fails, the
//! journal stops accepting records as after a failed fsync.
//!
//! The actor hands the buffer to the kernel at each flush (or once it passes 1 MiB) and fsyncs
//! the segment files written since the last flush, the segment folder if a file was created,
//! and sled when a removal's changes are due (below), on a blocking thread (`flush::FlushJob`),
//! never on its own task, so appends keep
//! flowing while a flush runs:
//! - at most one flush is in flight;
//! - a flush starts once the oldest write not covered by a started flush is `flush` old (with
//!   `flush = 0` that is immediately; writes that arrive during a flush are covered by the next
//!   one, so each record is still fsynced before it is confirmed);
//! - when a flush finishes, every position at or below what it covered is published as durable
//!   on a `watch` channel; [`Durable::wait`] resolves from there (MQTT PUBACK-after-durable and
//!   the uplink reader both use it);
//! - while a flush runs and the oldest write waiting for the next one is already `flush` old,
//!   the actor takes no commands until the running flush is done: producers wait rather than
//!   pile up records a slow fsync keeps from being covered (an MQTT backlog after a restart
//!   had ~5.5k records accepted and not durable with `flush = 20ms`).
//!
//! Removal after upload writes the floors, then the acknowledged position, into meta (plain
//! inserts: sled writes its log out for every batch) and deletes the segment files below it,
//! never the last one (its last record tells the next seq; sled is fsynced before a file goes).
//! It is fsynced lazily, by the first flush a second after it: the flushes of appends leave sled
//! out. Nothing waits on it, and a removal lost in a crash only means records HQ already holds
//! are sent again. sled buffers its writes inside the process, so a `kill -9` lost up to that
//! second of removals (thousands of records sent again while draining a backlog): each removal
//! therefore also writes the acknowledged position into `messages`, in the kernel at once, and
//! the open takes it when it is ahead of sled's (and below the next position).
//! Dead-lettering and eviction take single records out: the dead letter and the floors are
//! made durable first, then the segment is rewritten without them (temporary file, fsync,
//! rename, folder fsync); a crash in between leaves the record in the log, to be sent again.
//!
//! # MQTT message identities
//!
//! A record an MQTT message became ([`JournalHandle::append_from`],
//! [`JournalHandle::append_batch_from`]) has the message's identity ([`MessageId`]: packet id and
//! a hash of topic and payload) put in the `messages` table in the same append. The log hands the
//! table's changed pages to the kernel before any frame, and a flush fsyncs it with the
//! segments, so whatever record survives a crash has its identity, and an identity whose record
//! did not survive (its position is not below the next position at open) is cleared at open.
//! The table does not follow removals: HQ may hold the record before its message was
//! acknowledged to the broker. [`JournalHandle::recorded`] tells the core that a message
//! delivered again is recorded already; [`JournalHandle::reused`] retires an identity once the
//! broker gave its packet id to a new message. The MQTT device task's module doc has the
//! protocol side.
//!
//! A clean close saves the backlog figures in meta (`counters`, the last write before the final
//! flush); the next open uses and removes them instead of counting the log. After a crash there
//! are none and the open counts the log's frames above the acknowledged position.
//!
//! sled sets its own background flush off: fsync timing is ours alone. If an fsync fails the
//! journal stops accepting records (Linux may already have dropped the dirty pages, so nothing
//! can be promised), reports the failure in [`JournalStats::failure`] and fails pending waits.
//! [`JournalHandle::close`] waits for the running flush, flushes once more, closes the database
//! and only then returns.
//!
//! # Quota
//!
//! With [`JournalConfig::max_bytes`] (`[uplink] max_journal_bytes`) set, an append that takes
//! the backlog over it starts a round of evictions: the oldest `scan` and `device` records (in
//! position order) are deleted until the backlog is back at 95% of the quota, at most 2048
//! after each append so the actor never stalls on a big round. `sale`, `attribution` and
//! `gateway` records are never evicted: they are written past the quota while the disk allows,
//! and `tracing::error!` says so at most once a minute, with the free disk space. The round's
//! evictions are written down in one `gateway` record `{"event":"evicted","version":..,
//! "detail":"evicted N scan/device records (B bytes, oldest ID, newest ID): journal over
//! max_journal_bytes (M bytes)"}` when it ends (or once a minute while records that are never
//! evicted keep the journal over the quota, and on close) and counted in
//! [`JournalStats::evicted_records`]. The first eviction of a process is logged as an error.
//! An in-memory cursor remembers below which position no scan or device record is left, so a
//! round does not re-read the protected records at the head of the journal.
//!
//! # Opening, quarantine
//!
//! The `segments` tree lists the log's files: a segment is listed when the log creates it and
//! unlisted when it deletes it, in sled's next flush (so the list may lag the files by what a
//! crash took: an unlisted segment after every listed one is adopted, a listed one missing at
//! or below the acknowledged position was being deleted). The open compares the list with the
//! files before anything else, so a segment deleted from the middle of the log (whose records
//! the floor cannot miss, since the last record is still there) is damage, never silence. A
//! journal from before the list adopts its files as they are.
//!
//! The open reads every frame of the log. The first frame that is cut short or fails its CRC
//! ends the log: a write the crash interrupted, never confirmed durable. Unless the log would
//! then end below `journal.floor` (damage, below), the rest of that segment is cut off and later
//! segments are deleted, with a warning. A format 1 journal (records in sled) has its records
//! moved into the log, with their positions, before anything else.
//!
//! sled 0.34 can fail to open after an abrupt stop (`Corruption`) and sometimes panics instead.
//! The open (and the recovery scan) runs on its own thread; a panic is turned into an error. The
//! outcome is sorted:
//! - locked by another process: a plain error ("journal at X is in use by another process");
//! - the environment is at fault (permission denied, disk full, read-only file system, out of
//!   file descriptors or memory): a plain error, because moving a healthy journal aside would
//!   not help;
//! - anything else, including an open that succeeds but finds the meta unreadable or
//!   inconsistent (bad epoch, floors of the wrong size, records without an epoch, a last record
//!   that is not a record, a journal that ends below `journal.floor`, a segment file missing
//!   from inside the log above the acknowledged position, or a segment file that is not in the
//!   `segments` list with a listed one after it): **damage**. The whole `journal/` folder is renamed to
//!   `quarantine-<UTC time>/`, a fresh journal with a new epoch is created, its first record is a
//!   `gateway` record `{"event":"journal_replaced","version":..,"detail":"<reason>; damaged journal
//!   moved to <path>; run `posgw journal salvage` to recover records"}`, and the gateway carries
//!   on. This is logged with `tracing::error!`. The gateway never crash-loops on a bad journal.
//!
//! # Salvage
//!
//! `posgw journal salvage` (gateway stopped) opens or creates the live journal (quarantining it
//! first if it is itself damaged) and records its floors; then for each `quarantine-*` folder it
//! reads records two ways: through the journal's own structures, on a scratch copy
//! (`data_dir/.salvage-copy`; sled opened as is, then without `conf`, then without `snap.*` too,
//! since sled rebuilds from its log; the record log up to its first bad frame; read on a
//! guarded thread), and with a raw scan of the folder's files for complete JSON record envelopes
//! (the record log and sled both keep records as contiguous bytes, so this finds records past
//! a damaged point). Items that error or are not a record are counted unreadable, and so is the
//! damaged frame the record log ends at. Salvage reports, per epoch, every run of seqs it found
//! no record for between the lowest and highest seq it found (copied, duplicate or already
//! uploaded), and after the highest up to the last seq the journal had made durable (its
//! `journal.floor`, which quarantine moves into the quarantine folder), so copied + duplicates +
//! not recovered covers that range. Each record is
//! appended with its original bytes (so id, epoch and seq) unless the live journal already holds
//! its id; the raw scan leaves out old copies of records the damaged journal had already removed
//! when sled could tell (`seq_floor`). After an fsync the folder is renamed to
//! `salvaged-<same time>`; running salvage again copies nothing new. Details in `salvage`.
//!
//! # Code map
//!
//! One job per file. The running journal:
//! - `handle`: [`open()`], [`JournalHandle`], the commands it sends and what they answer
//!   ([`Appended`], [`AppendedBatch`], [`Durable`], [`JournalStats`]).
//! - `actor`: the task that owns the open store, and group commit (when a flush starts, when
//!   producers are held back, publishing what is durable).
//! - `quota`: where eviction is decided: when a round starts and stops, which records go
//!   (`Store::evict`), the `evicted` record.
//!
//! The store, blocking, shared by the actor, the offline commands and salvage:
//! - `store`: append, read, remove after upload, dead-letter, and the floors they write first.
//! - `flush`: what one flush fsyncs (`FlushJob`), the floor it records, the counters saved at
//!   close.
//! - `segments`: the record log: segment files and frames, opening and rolling a segment,
//!   cutting a torn tail, rewrites, deleting acknowledged segments, `SegmentError`.
//! - `layout`: the names on disk (folders, sled trees, meta keys, formats), position keys,
//!   epochs, sled's configuration.
//! - `floor`: the floor file. `messages`: the MQTT message identities.
//!
//! Opening:
//! - `open`: the lock, the guarded open, opening or replacing a damaged journal, the offline
//!   commands' read-only open on a scratch copy.
//! - `recovery`: what the open reads and checks (meta, epoch, the list of segments, the floor)
//!   and where it cuts a torn tail.
//! - `migrate`: format 1 journals (records in sled) moved into the record log.
//! - `quarantine`: a damaged journal moved aside with its floor; the `journal_replaced` record.
//!
//! Around them: [`clock`] (clock stamps), `error` ([`JournalError`]), `offline` (`stats`,
//! `dump`), `salvage` (`salvage` and the raw scan), `faults` (the seam through which tests make
//! storage fail), and `tests/`, the behaviour tests by topic with their shared helpers in
//! `tests/helpers.rs`.
//!
//! The record format (envelope, [`Kind`](crate::record::Kind), each kind's `data`) is not the
//! journal's: it stores the bytes and kind [`crate::record`] makes.

mod actor;
pub mod clock;
mod error;
mod faults;
mod floor;
mod flush;
mod handle;
mod layout;
mod messages;
mod migrate;
mod offline;
mod open;
mod quarantine;
mod quota;
mod recovery;
mod salvage;
mod segments;
mod store;

#[cfg(test)]
mod tests;

pub use error::JournalError;
pub use handle::{
    open, Appended, AppendedBatch, Durable, JournalConfig, JournalHandle, JournalStats, Opened,
    MAX_BATCH_RECORDS,
};
pub use messages::MessageId;
pub use offline::{dump, identity, offline_stats, OfflineStats};
pub use quarantine::Replaced;
pub use salvage::{salvage, MissingSeqs, SalvageReport, SalvagedFolder};
pub use store::StoredRecord;

/// A journal in `dir` for other modules' tests (store `S`, gateway `gw`), fsyncing every
/// `flush`.
#[cfg(test)]
pub(crate) async fn open_for_test(
    dir: &std::path::Path,
    flush: std::time::Duration,
) -> JournalHandle {
    open(JournalConfig {
        data_dir: dir.to_path_buf(),
        store: "S".into(),
        gateway: "gw".into(),
        flush,
        version: "test",
        max_bytes: None,
    })
    .await
    .expect("journal")
    .handle
}
