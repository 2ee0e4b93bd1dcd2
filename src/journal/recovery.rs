//! Recovery at open: reads the meta and the record log to find where the journal stands (its
//! epoch, the next seq and position, the acknowledged position, the backlog figures), creates
//! the meta of a new journal, checks the segment files against the journal's list of them and
//! against `journal.floor`, and cuts the log at a write a crash interrupted. Every
//! inconsistency is damage, for the open to quarantine.

use std::collections::BTreeSet;
use std::path::Path;

use sled::{Batch, Db, Tree};

use super::floor::{self, Floor};
use super::layout::{
    is_epoch, key_position, new_epoch, position_key, Trees, FORMAT_SLED_RECORDS, FORMAT_VERSION,
    META_ACKED, META_COUNTERS, META_EPOCH, META_FORMAT, META_POSITION_FLOOR, META_SEQ_FLOOR,
};
use super::migrate;
use super::open::OpenFailure;
use super::segments::{Ending, Log};
use crate::record::RecordHead;

/// Counters recovered while opening.
pub(crate) struct Recovered {
    /// The epoch (created if the journal was empty and had none).
    pub(crate) epoch: String,
    /// The next seq.
    pub(crate) next_seq: u64,
    /// The next position.
    pub(crate) next_position: u64,
    /// Acknowledged through this position.
    pub(crate) acked: u64,
    /// Records in the backlog.
    pub(crate) backlog_records: u64,
    /// Their bytes.
    pub(crate) backlog_bytes: u64,
    /// Records in the dead tree.
    pub(crate) dead_records: u64,
}

/// Reads the meta and the log to recover the counters, creating the meta of a new journal.
/// Every inconsistency is reported as damage, and so is a journal that ends below `floor` (what
/// was durable before: see `floor`). Cuts the log at a write a crash interrupted.
///
/// With `read_only_log`, sled is a scratch copy (`journal_dir`) and the record log is read in
/// place from that folder, read-only: nothing there is cut, deleted or created (a format 1
/// journal is converted into the scratch copy instead).
pub(crate) fn recover(
    db: &Db,
    trees: &Trees,
    journal_dir: &Path,
    read_only_log: Option<&Path>,
    floor: Option<&Floor>,
) -> Result<(Log, Recovered), OpenFailure> {
    let damaged = |what: &str, err: sled::Error| OpenFailure::Damaged(format!("{what}: {err}"));
    let format_1 = migrate::is_format_1(&trees.meta);
    let (mut log, mut ending) = match read_only_log {
        Some(dir) if !format_1 => Log::open_read_only(dir),
        _ => Log::open(journal_dir),
    }
    .map_err(OpenFailure::damaged)?;
    let epoch = match trees.meta.get(META_EPOCH) {
        Err(err) => return Err(damaged("cannot read the epoch", err)),
        Ok(Some(value)) => {
            let epoch = std::str::from_utf8(&value).unwrap_or_default().to_string();
            if !is_epoch(&epoch) {
                return Err(OpenFailure::Damaged(format!(
                    "meta epoch {:?} is not 8 hex characters",
                    String::from_utf8_lossy(&value)
                )));
            }
            match trees.meta.get(META_FORMAT) {
                Ok(Some(format)) if format.as_ref() == FORMAT_VERSION => {}
                Ok(Some(format)) if format.as_ref() == FORMAT_SLED_RECORDS => {
                    (log, ending) =
                        migrate::migrate_format_1(db, trees, journal_dir, log, &ending)?;
                }
                Ok(other) => {
                    return Err(OpenFailure::Damaged(format!(
                        "meta format is {:?}, expected 2",
                        other.map(|v| String::from_utf8_lossy(&v).into_owned())
                    )))
                }
                Err(err) => return Err(damaged("cannot read the format", err)),
            }
            epoch
        }
        Ok(None) => {
            let empty = ending.last.is_none() && trees.records.is_empty() && trees.dead.is_empty();
            if !empty {
                return Err(OpenFailure::Damaged(
                    "meta has no epoch but the journal holds records".to_string(),
                ));
            }
            if let Some(floor) = floor.filter(|floor| floor.seq > 0 || floor.position > 0) {
                // The folder existed and had made records durable; now nothing is found.
                return Err(OpenFailure::Damaged(format!(
                    "the journal has no epoch and no records but seq {} (position {}) of epoch \
                     {} was already durable ({}): records were lost",
                    floor.seq,
                    floor.position,
                    floor.epoch,
                    floor::FLOOR_FILE
                )));
            }
            // A new journal (or one whose creation did not reach the disk): give it an epoch and
            // make that durable before any record can carry it.
            let epoch = new_epoch();
            let mut batch = Batch::default();
            batch.insert(META_FORMAT, FORMAT_VERSION);
            batch.insert(META_EPOCH, epoch.as_bytes());
            trees
                .meta
                .apply_batch(batch)
                .map_err(|err| damaged("cannot write the epoch", err))?;
            db.flush()
                .map_err(|err| damaged("cannot flush the new epoch", err))?;
            epoch
        }
    };
    let seq_floor = meta_u64(&trees.meta, META_SEQ_FLOOR)?;
    let position_floor = meta_u64(&trees.meta, META_POSITION_FLOOR)?;
    let acked = meta_u64(&trees.meta, META_ACKED)?;
    check_segments(&trees.segments, &log, &ending, acked)?;

    // Invariant (see the module doc): the last issued seq is the larger of seq_floor and the seq
    // of the last record when that record belongs to this epoch.
    let last_dead_position = edge(&trees.dead, "dead record")?.map_or(0, |(position, _)| position);
    let mut last_seq = seq_floor;
    let mut last_position = position_floor.max(last_dead_position);
    if let Some((position, bytes)) = &ending.last {
        last_position = last_position.max(*position);
        let head = RecordHead::parse(bytes).ok_or_else(|| {
            OpenFailure::Damaged(format!(
                "the last record (position {position}) is not a record"
            ))
        })?;
        if head.epoch.as_deref() == Some(epoch.as_str()) {
            let seq = head.seq.ok_or_else(|| {
                OpenFailure::Damaged(format!("the last record (position {position}) has no seq"))
            })?;
            last_seq = last_seq.max(seq);
        }
    }
    if let Some(lost) = floor.and_then(|floor| floor.check(&epoch, last_seq, last_position)) {
        let cut = ending
            .cut
            .as_ref()
            .map(|cut| format!(" (the record log ends early: {})", cut.reason))
            .unwrap_or_default();
        return Err(OpenFailure::Damaged(format!("{lost}{cut}")));
    }
    if let Some(cut) = &ending.cut {
        tracing::warn!(
            reason = %cut.reason,
            dropped_bytes = cut.dropped,
            "the record log ends in a write a crash interrupted; cutting it there (those records \
             were never confirmed durable)"
        );
    }
    log.cut(&ending).map_err(OpenFailure::environment)?;

    let (backlog_records, backlog_bytes, dead_records) = match trees.meta.get(META_COUNTERS) {
        Ok(Some(counters)) if counters.len() == 24 => {
            let figure = |at: usize| key_position(&counters[at..at + 8]).unwrap_or_default();
            // From now on the journal changes, so the figures would go stale.
            trees
                .meta
                .remove(META_COUNTERS)
                .map_err(|err| damaged("cannot clear the saved counters", err))?;
            // Segment writes do not go through sled: the removal must be on disk before any.
            db.flush()
                .map_err(|err| damaged("cannot clear the saved counters", err))?;
            (figure(0), figure(8), figure(16))
        }
        Ok(Some(counters)) => {
            return Err(OpenFailure::Damaged(format!(
                "meta value counters is {} bytes, expected 24",
                counters.len()
            )))
        }
        Ok(None) => count(&mut log, acked, &trees.dead)?,
        Err(err) => return Err(damaged("cannot read the saved counters", err)),
    };
    // Segments HQ acknowledged whose deletion a crash interrupted.
    log.delete_through(acked)
        .map_err(OpenFailure::environment)?;
    Ok((
        log,
        Recovered {
            epoch,
            next_seq: last_seq + 1,
            next_position: last_position + 1,
            acked,
            backlog_records,
            backlog_bytes,
            dead_records,
        },
    ))
}

/// Checks the segment files against the journal's list of them (the `segments` tree) and
/// brings the list up to date. Damage:
/// - a listed segment whose file is missing, that started above the acknowledged position and
///   is followed by another segment file: its records are gone (a missing last segment is left
///   to the floor check, like any log that ends early);
/// - a segment file the list does not know, with a listed segment file after it: it does not
///   belong to this journal (segments are only ever created after the last one).
///
/// A listed segment missing at or below the acknowledged position is a deletion a crash
/// interrupted; an unlisted segment after every listed one was created just before a crash
/// (its listing was not yet durable). An empty list (a journal from before the list, or a new
/// one) adopts the files as they are.
fn check_segments(tree: &Tree, log: &Log, ending: &Ending, acked: u64) -> Result<(), OpenFailure> {
    let damaged =
        |err: sled::Error| OpenFailure::Damaged(format!("cannot read the list of segments: {err}"));
    let lengths = log.segment_lengths();
    let files_set: BTreeSet<u64> = lengths
        .iter()
        .map(|(first, _)| *first)
        .chain(ending.doomed_firsts.iter().copied())
        .collect();
    // Listed segments that hold frames: an empty one proves nothing about what came before it
    // (a replaced empty segment whose deletion a crash undid).
    let with_frames: BTreeSet<u64> = lengths
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|(first, _)| *first)
        .chain(ending.doomed_firsts.iter().copied())
        .collect();
    let mut listed = BTreeSet::new();
    for item in tree.iter() {
        let (key, _) = item.map_err(damaged)?;
        let first = key_position(&key).ok_or_else(|| {
            OpenFailure::Damaged(format!(
                "segment list key of {} bytes, expected 8",
                key.len()
            ))
        })?;
        listed.insert(first);
    }
    if !listed.is_empty() {
        for &first in listed.difference(&files_set) {
            let after = files_set.range(first..).next().copied();
            let Some(after) = after else {
                continue; // at the tail: the floor check decides
            };
            if first > acked {
                return Err(OpenFailure::Damaged(format!(
                    "segment file {} is missing from the record log: the records from position \
                     {first} to {} (not yet acknowledged by HQ) are gone",
                    segment_file_name(first),
                    after - 1
                )));
            }
        }
        let newest_listed_file = listed.intersection(&with_frames).last().copied();
        for &first in files_set.difference(&listed) {
            if newest_listed_file.is_some_and(|newest| newest > first) {
                return Err(OpenFailure::Damaged(format!(
                    "segment file {} is not part of this journal: it is not in the journal's \
                     list of segments, and segment {} (listed) comes after it",
                    segment_file_name(first),
                    newest_listed_file
                        .map(segment_file_name)
                        .unwrap_or_default()
                )));
            }
        }
    }
    let mut batch = Batch::default();
    for first in listed.difference(&files_set) {
        batch.remove(&position_key(*first));
    }
    for first in files_set.difference(&listed) {
        batch.insert(&position_key(*first), &[]);
    }
    tree.apply_batch(batch)
        .map_err(|err| OpenFailure::Damaged(format!("cannot update the list of segments: {err}")))
}

/// A segment's file name, for messages.
fn segment_file_name(first: u64) -> String {
    format!("segments/{first:020}.seg")
}

/// The last entry of `tree` (position and bytes), if any.
fn edge(tree: &Tree, what: &str) -> Result<Option<(u64, sled::IVec)>, OpenFailure> {
    match tree.last() {
        Ok(None) => Ok(None),
        Ok(Some((key, value))) => {
            let position = key_position(&key).ok_or_else(|| {
                OpenFailure::Damaged(format!("{what} key of {} bytes, expected 8", key.len()))
            })?;
            Ok(Some((position, value)))
        }
        Err(err) => Err(OpenFailure::Damaged(format!(
            "cannot read the last {what}: {err}"
        ))),
    }
}

/// Backlog records and bytes (the log above `acked`) and dead records, counted, for an open
/// that has no saved counters (the journal was not closed cleanly).
fn count(log: &mut Log, acked: u64, dead: &Tree) -> Result<(u64, u64, u64), OpenFailure> {
    let mut records = 0u64;
    let mut bytes = 0u64;
    log.read(acked, u64::MAX, &mut |_, payload| {
        records += 1;
        bytes += payload.len() as u64;
        true
    })
    .map_err(OpenFailure::damaged)?;
    let mut dead_records = 0u64;
    for item in dead.iter() {
        item.map_err(|err| OpenFailure::Damaged(format!("cannot read dead records: {err}")))?;
        dead_records += 1;
    }
    Ok((records, bytes, dead_records))
}

/// Reads a u64 meta value; missing means 0, anything but 8 bytes is damage.
pub(crate) fn meta_u64(meta: &Tree, key: &[u8]) -> Result<u64, OpenFailure> {
    match meta.get(key) {
        Ok(None) => Ok(0),
        Ok(Some(value)) => key_position(&value).ok_or_else(|| {
            OpenFailure::Damaged(format!(
                "meta value {} is {} bytes, expected 8",
                String::from_utf8_lossy(key),
                value.len()
            ))
        }),
        Err(err) => Err(OpenFailure::Damaged(format!(
            "cannot read meta {}: {err}",
            String::from_utf8_lossy(key)
        ))),
    }
}
