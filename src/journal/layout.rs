//! The journal's on-disk names: the journal folder, sled's trees and meta keys, the format
//! versions, how a position is a sled key, the epoch's form, and the sled configuration every
//! journal (live, offline copy or salvage copy) is opened with. The module doc of `journal`
//! draws the whole layout; this file is where its names are defined.

use std::path::Path;

use sled::{Db, Tree};

use super::open::OpenFailure;

/// Name of the sled folder inside `data_dir`.
pub(crate) const JOURNAL_DIR: &str = "journal";

/// Tree of records of format 1 journals: position (u64 big-endian) -> record JSON bytes. Format 2
/// keeps records in the log (`segments`); an old journal's records are moved there at open.
pub(crate) const RECORDS_TREE: &str = "records";
/// Tree of dead-lettered records: original position -> record JSON bytes.
pub(crate) const DEAD_TREE: &str = "dead";
/// Why each dead-lettered record was rejected: position -> UTF-8 reason.
pub(crate) const DEAD_REASON_TREE: &str = "dead_reason";
/// Tree listing the record log's segment files (first position -> empty), so that the open can
/// tell a segment that went missing, or one that does not belong, from a healthy log.
pub(crate) const SEGMENTS_TREE: &str = "segments";
/// Tree of journal metadata (see the `META_*` keys).
pub(crate) const META_TREE: &str = "meta";

/// Meta key: the on-disk format version of this journal.
pub(crate) const META_FORMAT: &[u8] = b"format";
/// Meta key: the journal's epoch (8 lowercase hex characters).
pub(crate) const META_EPOCH: &[u8] = b"epoch";
/// Meta key: a seq already issued (u64 BE); the next seq is above it even if no record is left.
pub(crate) const META_SEQ_FLOOR: &[u8] = b"seq_floor";
/// Meta key: a position already used (u64 BE); the next position is above it.
pub(crate) const META_POSITION_FLOOR: &[u8] = b"position_floor";
/// Meta key: every record at or below this position (u64 BE) was acknowledged by HQ and is
/// gone from the backlog, even while its segment file is still on disk.
pub(crate) const META_ACKED: &[u8] = b"acked";
/// Meta key: the backlog figures (records, bytes, dead records: 3 x u64 BE) as of a clean close.
/// Written last on close and removed at open before anything else is written, so when it is
/// there it describes the journal exactly (sled recovers a prefix of its log, never later writes
/// without earlier ones) and the open can skip counting every record: that scan alone left ~85
/// MiB of sled pages resident with 1M records.
pub(crate) const META_COUNTERS: &[u8] = b"counters";
/// The format this code writes: records in the log, metadata and dead letters in sled.
pub(crate) const FORMAT_VERSION: &[u8] = b"2";
/// The format before the record log: records in sled's `records` tree. Opened and converted.
pub(crate) const FORMAT_SLED_RECORDS: &[u8] = b"1";

/// sled's page cache size. sled holds only metadata and dead letters now, so a small cache does.
pub(crate) const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;

/// The sled configuration used for every journal (live or a salvage copy): same segment size
/// and defaults everywhere, so a salvage copy whose `conf` was deleted reopens with what wrote it.
pub(crate) fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
        // The actor decides when to fsync (group commit); sled's own timer would add
        // unscheduled fsyncs on a store PC's slow disk.
        .flush_every_ms(None)
}

/// A fresh random epoch: 8 lowercase hex characters.
pub(crate) fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Whether `text` is a well-formed epoch.
pub(crate) fn is_epoch(text: &str) -> bool {
    text.len() == 8
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A position as a tree key.
pub(crate) fn position_key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// A tree key as a position; `None` for keys that are not 8 bytes.
pub(crate) fn key_position(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The trees of one database.
pub(crate) struct Trees {
    /// Format 1 records (moved to the log at open).
    pub(crate) records: Tree,
    /// See [`DEAD_TREE`].
    pub(crate) dead: Tree,
    /// See [`DEAD_REASON_TREE`].
    pub(crate) dead_reason: Tree,
    /// See [`SEGMENTS_TREE`].
    pub(crate) segments: Tree,
    /// See [`META_TREE`].
    pub(crate) meta: Tree,
}

/// Opens the trees.
pub(crate) fn open_trees(db: &Db) -> Result<Trees, OpenFailure> {
    let open = |name: &str| {
        db.open_tree(name)
            .map_err(|err| OpenFailure::Damaged(format!("cannot open tree {name}: {err}")))
    };
    Ok(Trees {
        records: open(RECORDS_TREE)?,
        dead: open(DEAD_TREE)?,
        dead_reason: open(DEAD_REASON_TREE)?,
        segments: open(SEGMENTS_TREE)?,
        meta: open(META_TREE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_epoch_is_eight_lowercase_hex_characters() {
        for _ in 0..100 {
            assert!(is_epoch(&new_epoch()));
        }
        assert!(!is_epoch("7F3A9C21"));
        assert!(!is_epoch("7f3a9c2"));
    }
}
