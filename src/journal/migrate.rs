//! Format 1 migration: a journal from before the record log kept its records in sled's
//! `records` tree; the open moves them into the log, keeping their positions, before anything
//! else happens to the journal.

use std::path::Path;

use sled::{Db, Tree};

use super::layout::{
    key_position, position_key, Trees, FORMAT_SLED_RECORDS, FORMAT_VERSION, META_FORMAT,
};
use super::open::OpenFailure;
use super::segments::{Ending, Log};

/// Whether the journal's meta says format 1 (records in sled).
pub(crate) fn is_format_1(meta: &Tree) -> bool {
    matches!(meta.get(META_FORMAT), Ok(Some(format)) if format.as_ref() == FORMAT_SLED_RECORDS)
}

/// Converts a format 1 journal whose record log was just opened (`log`, ending at `ending`):
/// cuts what a conversion a crash interrupted left in the log, moves the records still in sled
/// after it, and returns the converted log read again, as any other.
pub(crate) fn migrate_format_1(
    db: &Db,
    trees: &Trees,
    journal_dir: &Path,
    mut log: Log,
    ending: &Ending,
) -> Result<(Log, Ending), OpenFailure> {
    // A conversion a crash interrupted left some records in the log already.
    log.cut(ending).map_err(OpenFailure::environment)?;
    let converted = ending.last.as_ref().map_or(0, |(position, _)| *position);
    convert_format_1(db, trees, &mut log, converted)?;
    // Read the converted log again, as any other.
    Log::open(journal_dir).map_err(OpenFailure::damaged)
}

/// Moves a format 1 journal's records from sled into the (empty) log, keeping their
/// positions, makes them durable, then empties the tree and marks the journal format 2.
fn convert_format_1(
    db: &Db,
    trees: &Trees,
    log: &mut Log,
    converted: u64,
) -> Result<(), OpenFailure> {
    let damaged =
        |what: &str, err: &dyn std::fmt::Display| OpenFailure::Damaged(format!("{what}: {err}"));
    for item in trees.records.range(position_key(converted + 1)..) {
        let (key, value) = item.map_err(|err| damaged("cannot read a format 1 record", &err))?;
        let position = key_position(&key).ok_or_else(|| {
            OpenFailure::Damaged(format!("record key of {} bytes, expected 8", key.len()))
        })?;
        // Per record, so the records are spread over segments of the usual size.
        log.begin(position)
            .map_err(|err| damaged("cannot convert format 1 records", &err))?;
        log.append(position, &value)
            .map_err(|err| damaged("cannot convert format 1 records", &err))?;
        log.end()
            .map_err(|err| damaged("cannot convert format 1 records", &err))?;
    }
    let job = log
        .sync_job()
        .map_err(|err| damaged("cannot convert format 1 records", &err))?;
    job.run()
        .map_err(|err| damaged("cannot convert format 1 records", &err))?;
    trees
        .records
        .clear()
        .map_err(|err| damaged("cannot clear format 1 records", &err))?;
    trees
        .meta
        .insert(META_FORMAT, FORMAT_VERSION)
        .map_err(|err| damaged("cannot write the format", &err))?;
    db.flush()
        .map_err(|err| damaged("cannot flush the converted journal", &err))?;
    tracing::info!("journal converted to format 2 (records in segment files)");
    Ok(())
}
