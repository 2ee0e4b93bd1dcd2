//! The identities of the MQTT messages the journal's records came from, so that a message the
//! broker delivers again after a crash is recognised and not recorded twice.
//!
//! A QoS 1 message is acknowledged (PUBACK) only once its record is durable, so a `kill -9` or a
//! power cut between the two leaves a durable record whose message the broker still holds; it
//! delivers it again to the next session, with the same packet id and DUP set (MQTT 3.1.1,
//! see `devices::mqtt`). MQTT carries no message id beyond that 16-bit packet id, which the
//! broker reuses once a message is acknowledged; so a message is identified by its packet id
//! plus a hash of its topic and payload ([`MessageId`]).
//!
//! # File
//!
//! `journal/messages`: one slot of [`SLOT`] bytes per packet id (65,536 slots, 2 MiB, a fixed
//! size whatever the traffic), slot `pkid` at offset `pkid * SLOT`:
//!
//! ```text
//! u64 LE  position of the record the message became (0: empty)
//! u64 LE  hash of the topic and payload
//! u32 LE  flags: 1 = the broker reused the packet id since (so it had the PUBACK)
//! u32 LE  zero
//! u32 LE  CRC-32 of the 24 bytes above
//! u32 LE  zero
//! ```
//!
//! A slot never straddles a 512-byte sector, and one that fails its CRC (a torn write) counts as
//! empty. After the slots, one more page holds, in a slot of the same shape (hash and flags
//! zero), the position HQ acknowledged last (see "Acknowledged position" below).
//!
//! # Kept with the record, in the same group commit
//!
//! A slot is set when its record is appended to the log's buffer. Changed slots are handed to the
//! kernel before any frame of the log is (the log calls [`MessageTable::write_dirty`] first), and
//! a flush fsyncs this file with the segments before it publishes anything as durable. So:
//! - whatever record survives a `kill -9` (the kernel has it) has its slot too: the kernel got the
//!   slot first; whatever record a flush confirmed has its slot on disk;
//! - a slot whose record did not survive (its position is at or past the journal's next position
//!   at open) is cleared at open and never suppresses a message;
//! - a slot outlives its record's removal after upload: HQ may have the record long before the
//!   PUBACK went out.
//!
//! A broker reuses a packet id only once the message it named was acknowledged, so when a first
//! delivery (no DUP) comes with an id and the same hash, the slot is marked reused and written
//! to the kernel at once, before that new message is recorded: should the new message (perhaps with the same
//! payload: the same barcode scanned again) come back with DUP set after a crash, before its
//! own record survived, it is recorded, not taken for the old one. The slot is not marked when
//! the PUBACK is merely written: a PUBACK still in the socket when the process dies never
//! reaches the broker, which then redelivers a message whose record is durable.
//!
//! # Acknowledged position
//!
//! sled keeps the position HQ acknowledged, but sled 0.34 buffers its writes in the process
//! and they are fsynced only a second after a removal (see `actor`): a `kill -9` lost up to a
//! second of acknowledgements, thousands of records sent again after the restart. So each
//! removal also writes the position here, to the kernel at once (fsynced by the next flush);
//! the open takes it when it is ahead of sled's and below the next position. A restart then
//! sends again at most the batch whose removal had not started.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the file in the journal folder.
pub(crate) const FILE_NAME: &str = "messages";
/// Bytes per slot.
const SLOT: usize = 32;
/// Slots: one per packet id.
const SLOTS: usize = 1 << 16;
/// Bytes written at once: a page of slots.
const PAGE: usize = 4096;
/// Slots per page.
const PER_PAGE: usize = PAGE / SLOT;
/// Pages of slots in the file.
const PAGES: usize = SLOTS / PER_PAGE;
/// Where the acknowledged position is kept: the page after the slots.
const ACKED_AT: usize = SLOTS * SLOT;
/// The file's length.
const FILE_BYTES: usize = ACKED_AT + PAGE;
/// Flag: the broker reused the packet id for a new message since.
const REUSED: u32 = 1;

/// Who a message was: its packet id and a hash of its topic and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageId {
    /// The MQTT packet id.
    pub pkid: u16,
    /// The hash of the topic and payload ([`MessageId::new`]).
    pub hash: u64,
}

impl MessageId {
    /// The identity of the message `pkid` on `topic` with `payload`: a CRC-32 of the topic, a
    /// zero byte and the payload, and the payload's length. It only has to tell apart two
    /// messages that the broker sent with the same packet id, and never changes between
    /// versions (it is kept on disk).
    pub fn new(pkid: u16, topic: &str, payload: &[u8]) -> MessageId {
        let mut crc = crc32fast::Hasher::new();
        crc.update(topic.as_bytes());
        crc.update(&[0]);
        crc.update(payload);
        let hash = (u64::from(crc.finalize()) << 32) | (payload.len() as u64 & 0xffff_ffff);
        MessageId { pkid, hash }
    }
}

/// The bit of [`Slot::tagged`] that says the packet id was reused.
const REUSED_BIT: u64 = 1 << 63;

/// One slot in memory: 16 bytes, 1 MiB for the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The record's position (0 = empty), with [`REUSED_BIT`] set once the broker reused the
    /// packet id (positions never reach 2^63).
    tagged: u64,
    /// The message's hash.
    hash: u64,
}

impl Slot {
    /// A slot for the record at `position` of the message with `hash`.
    fn new(position: u64, hash: u64) -> Slot {
        Slot {
            tagged: position & !REUSED_BIT,
            hash,
        }
    }

    /// The record's position (0: empty).
    fn position(&self) -> u64 {
        self.tagged & !REUSED_BIT
    }

    /// Whether the broker reused the packet id since.
    fn reused(&self) -> bool {
        self.tagged & REUSED_BIT != 0
    }

    fn encode(&self, out: &mut [u8]) {
        let flags = if self.reused() { REUSED } else { 0 };
        out[..8].copy_from_slice(&self.position().to_le_bytes());
        out[8..16].copy_from_slice(&self.hash.to_le_bytes());
        out[16..20].copy_from_slice(&flags.to_le_bytes());
        out[20..24].fill(0);
        let crc = crc32fast::hash(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out[28..32].fill(0);
    }

    fn decode(bytes: &[u8]) -> Slot {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        if bytes.iter().all(|&b| b == 0) || crc32fast::hash(&bytes[..24]) != u32_at(24) {
            return Slot::default();
        }
        let mut slot = Slot::new(u64_at(0), u64_at(8));
        if u32_at(16) & REUSED != 0 {
            slot.tagged |= REUSED_BIT;
        }
        slot
    }
}

/// The table: every slot in memory, the file, and which pages changed.
#[derive(Debug)]
pub(crate) struct MessageTable {
    slots: Vec<Slot>,
    /// Pages changed since they were last written to the kernel.
    dirty: Vec<bool>,
    /// Whether the file was written since the last fsync.
    unsynced: bool,
    /// The acknowledged position the file held at open (0: none).
    acked_at_open: u64,
    file: Arc<File>,
}

/// The table, shared by the journal actor (appends, write-out, fsync) and the handles (lookups
/// and acknowledgements, from the core and the MQTT task).
pub(crate) type SharedMessages = Arc<Mutex<MessageTable>>;

/// Locks the table (a poisoned lock is still usable: every change is a plain field write).
pub(crate) fn lock(table: &SharedMessages) -> MutexGuard<'_, MessageTable> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MessageTable {
    /// Opens (or creates) the table in `journal_dir` and clears every slot whose record is not
    /// in the journal (its position is `next_position` or above: it did not survive a crash).
    pub(crate) fn open(journal_dir: &Path, next_position: u64) -> std::io::Result<MessageTable> {
        let path = journal_dir.join(FILE_NAME);
        let created = !path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() != FILE_BYTES as u64 {
            // New, or cut short: whatever it held is read below as far as it goes.
            file.set_len(FILE_BYTES as u64)?;
        }
        // Read a page at a time: the slots in memory are all that stays.
        let mut slots = Vec::with_capacity(SLOTS + PER_PAGE);
        let mut page = [0u8; PAGE];
        for at in (0..FILE_BYTES).step_by(PAGE) {
            let mut read = 0;
            while read < PAGE {
                match file.read_at(&mut page[read..], (at + read) as u64)? {
                    0 => break,
                    n => read += n,
                }
            }
            page[read..].fill(0);
            slots.extend(page.chunks_exact(SLOT).map(Slot::decode));
        }
        let acked = slots[SLOTS].position();
        slots.truncate(SLOTS);
        let mut table = MessageTable {
            slots,
            dirty: vec![false; PAGES],
            unsynced: true,
            acked_at_open: if acked < next_position { acked } else { 0 },
            file: Arc::new(file),
        };
        let mut cleared = 0usize;
        for pkid in 0..SLOTS {
            let slot = table.slots[pkid];
            if slot.position() >= next_position {
                table.slots[pkid] = Slot::default();
                table.dirty[pkid / PER_PAGE] = true;
                cleared += 1;
            }
        }
        if cleared > 0 {
            tracing::info!(
                cleared,
                "message identities of records that did not survive were cleared"
            );
        }
        if created {
            table.file.sync_all()?;
            File::open(journal_dir)?.sync_all()?;
        }
        Ok(table)
    }

    /// Notes that the message `id` became the record at `position`; returns what the slot held,
    /// for [`MessageTable::restore`].
    pub(crate) fn record(&mut self, id: MessageId, position: u64) -> Slot {
        let index = usize::from(id.pkid);
        let before = self.slots[index];
        self.slots[index] = Slot::new(position, id.hash);
        self.dirty[index / PER_PAGE] = true;
        before
    }

    /// Puts back what a slot held before a [`MessageTable::record`] that was taken back.
    pub(crate) fn restore(&mut self, pkid: u16, slot: Slot) {
        let index = usize::from(pkid);
        self.slots[index] = slot;
        self.dirty[index / PER_PAGE] = true;
    }

    /// The position of the record the message `id` became, if the table holds it and the broker
    /// did not reuse its packet id since.
    pub(crate) fn recorded(&self, id: MessageId) -> Option<u64> {
        let slot = self.slots[usize::from(id.pkid)];
        (slot.position() != 0 && slot.hash == id.hash && !slot.reused()).then_some(slot.position())
    }

    /// Marks the slots the new messages `ids` could be taken for (same packet id and hash) as
    /// reused by the broker; whether any was.
    pub(crate) fn reused(&mut self, ids: &[MessageId]) -> bool {
        let mut marked = false;
        for id in ids {
            let index = usize::from(id.pkid);
            let slot = &mut self.slots[index];
            if slot.position() != 0 && slot.hash == id.hash && !slot.reused() {
                slot.tagged |= REUSED_BIT;
                self.dirty[index / PER_PAGE] = true;
                marked = true;
            }
        }
        marked
    }

    /// The acknowledged position the file held at open, if it is below the next position (0 if
    /// none).
    pub(crate) fn acked_at_open(&self) -> u64 {
        self.acked_at_open
    }

    /// Writes the position HQ acknowledged last to the kernel.
    pub(crate) fn set_acked(&mut self, position: u64) -> std::io::Result<()> {
        let mut bytes = [0u8; SLOT];
        Slot::new(position, 0).encode(&mut bytes);
        self.file.write_all_at(&bytes, ACKED_AT as u64)?;
        self.unsynced = true;
        Ok(())
    }

    /// Hands every changed page to the kernel (a `kill -9` cannot take it back after this).
    pub(crate) fn write_dirty(&mut self) -> std::io::Result<()> {
        let mut page = 0;
        let mut buffer = Vec::new();
        while page < PAGES {
            if !self.dirty[page] {
                page += 1;
                continue;
            }
            let first = page;
            while page < PAGES && self.dirty[page] {
                page += 1;
            }
            buffer.clear();
            buffer.resize((page - first) * PAGE, 0);
            let slots = &self.slots[first * PER_PAGE..page * PER_PAGE];
            for (slot, out) in slots.iter().zip(buffer.chunks_exact_mut(SLOT)) {
                slot.encode(out);
            }
            self.file.write_all_at(&buffer, (first * PAGE) as u64)?;
            self.dirty[first..page].fill(false);
            self.unsynced = true;
        }
        Ok(())
    }

    /// What a flush must fsync: the file, when it was written since the last one. Writes the
    /// changed pages out first.
    pub(crate) fn sync_job(&mut self) -> std::io::Result<Option<Arc<File>>> {
        self.write_dirty()?;
        Ok(std::mem::take(&mut self.unsynced).then(|| self.file.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pkid: u16, payload: &str) -> MessageId {
        MessageId::new(pkid, "store/till-1/scanner", payload.as_bytes())
    }

    #[test]
    fn the_identity_covers_topic_and_payload() {
        assert_eq!(id(7, "a"), id(7, "a"));
        assert_ne!(id(7, "a").hash, id(7, "b").hash);
        assert_ne!(
            MessageId::new(7, "t1", b"a").hash,
            MessageId::new(7, "t2", b"a").hash
        );
    }

    /// What was written survives a reopen; slots of records that did not survive are cleared;
    /// a message whose packet id was reused no longer matches; a torn slot reads as empty.
    #[test]
    fn slots_survive_a_reopen_unless_their_record_did_not() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut table = MessageTable::open(dir.path(), 1).expect("open");
        table.record(id(1, "one"), 10);
        table.record(id(2, "two"), 11);
        table.record(id(3, "three"), 12);
        table.record(id(65535, "last"), 13);
        assert_eq!(table.recorded(id(1, "one")), Some(10));
        assert_eq!(table.recorded(id(1, "other")), None, "another payload");
        assert!(
            !table.reused(&[id(2, "another")]),
            "another payload: no mark needed"
        );
        assert!(table.reused(&[id(2, "two")]));
        assert_eq!(table.recorded(id(2, "two")), None, "reused since");
        table.set_acked(11).expect("acked");
        table.sync_job().expect("write").expect("something to sync");
        drop(table);

        // The journal came back with positions up to 11 only: 12 and 13 did not survive.
        let table = MessageTable::open(dir.path(), 12).expect("reopen");
        assert_eq!(table.acked_at_open(), 11);
        assert_eq!(table.recorded(id(1, "one")), Some(10));
        assert_eq!(table.recorded(id(2, "two")), None);
        assert_eq!(table.recorded(id(3, "three")), None, "not durable: cleared");
        assert_eq!(table.recorded(id(65535, "last")), None);
        drop(table);

        // A torn slot (one byte flipped) is empty, not a match.
        let path = dir.path().join(FILE_NAME);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("file");
        file.write_all_at(&[0xff], SLOT as u64 + 3).expect("flip");
        let table = MessageTable::open(dir.path(), 100).expect("reopen");
        assert_eq!(table.recorded(id(1, "one")), None);
        assert_eq!(table.acked_at_open(), 11);
        drop(table);
        // An acknowledged position the journal does not reach is not taken.
        assert_eq!(
            MessageTable::open(dir.path(), 11)
                .expect("reopen")
                .acked_at_open(),
            0
        );
    }

    #[test]
    fn a_taken_back_record_restores_the_slot() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut table = MessageTable::open(dir.path(), 1).expect("open");
        table.record(id(5, "first"), 3);
        let before = table.record(id(5, "second"), 4);
        table.restore(5, before);
        assert_eq!(table.recorded(id(5, "first")), Some(3));
        assert_eq!(table.recorded(id(5, "second")), None);
    }
}
