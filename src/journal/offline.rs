//! Offline journal commands `posgw journal stats` and `posgw journal dump` (salvage has its own
//! module): they run while the gateway is stopped, open the journal themselves (taking the same
//! lock, so a running gateway makes them fail with "in use") and work synchronously.
//!
//! They only read: no file of the journal changes. sled 0.34 has no read-only mode, so they open
//! a scratch copy of sled's files and read the record log in place, read-only (see
//! `open::open_existing`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::JournalError;
use super::layout::JOURNAL_DIR;
use super::open::open_existing;
use super::quarantine::{QUARANTINE_PREFIX, SALVAGED_PREFIX};
use crate::record::RecordHead;

/// `posgw journal stats`: figures of a stopped gateway's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineStats {
    /// The journal folder.
    pub path: PathBuf,
    /// The journal's epoch.
    pub epoch: String,
    /// The seq the next record will get.
    pub next_seq: u64,
    /// Records waiting for upload.
    pub records: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Records in the dead-letter set.
    pub dead_records: u64,
    /// `ts` of the oldest record (first in position order), if any.
    pub oldest_ts: Option<String>,
    /// `ts` of the newest record (last in position order), if any.
    pub newest_ts: Option<String>,
    /// `quarantine-*` folders not yet salvaged.
    pub quarantine: Vec<PathBuf>,
    /// `salvaged-*` folders (already salvaged, kept for inspection; safe to delete).
    pub salvaged: Vec<PathBuf>,
}

impl fmt::Display for OfflineStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = "-".to_string();
        writeln!(f, "journal       {}", self.path.display())?;
        writeln!(f, "epoch         {}", self.epoch)?;
        writeln!(f, "next seq      {}", self.next_seq)?;
        writeln!(f, "records       {}", self.records)?;
        writeln!(f, "bytes         {}", self.bytes)?;
        writeln!(f, "dead records  {}", self.dead_records)?;
        writeln!(
            f,
            "oldest ts     {}",
            self.oldest_ts.as_ref().unwrap_or(&none)
        )?;
        writeln!(
            f,
            "newest ts     {}",
            self.newest_ts.as_ref().unwrap_or(&none)
        )?;
        if self.quarantine.is_empty() {
            writeln!(f, "quarantine    none")?;
        } else {
            for folder in &self.quarantine {
                writeln!(
                    f,
                    "quarantine    {} (not salvaged: run `posgw journal salvage`)",
                    folder.display()
                )?;
            }
        }
        for folder in &self.salvaged {
            writeln!(f, "salvaged      {}", folder.display())?;
        }
        Ok(())
    }
}

/// Folders in `data_dir` whose names start with `prefix`, sorted by name (so by time).
pub(crate) fn folders_with_prefix(
    data_dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, JournalError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(JournalError::io(
                format!("cannot list {}", data_dir.display()),
                err,
            ))
        }
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.path())
        .collect();
    folders.sort();
    Ok(folders)
}

/// `ts` of a stored record.
fn ts_of(bytes: &[u8]) -> Option<String> {
    RecordHead::parse(bytes).and_then(|head| head.ts.map(|ts| ts.into_owned()))
}

/// Figures of the journal in `data_dir` (the gateway must be stopped).
pub fn offline_stats(data_dir: &Path) -> Result<OfflineStats, JournalError> {
    let mut store = open_existing(data_dir)?;
    let oldest_ts = store.edge_record(false)?.as_deref().and_then(ts_of);
    let newest_ts = store.edge_record(true)?.as_deref().and_then(ts_of);
    Ok(OfflineStats {
        path: data_dir.join(JOURNAL_DIR),
        epoch: store.epoch.clone(),
        next_seq: store.next_seq,
        records: store.backlog_records,
        bytes: store.backlog_bytes,
        dead_records: store.dead_records,
        oldest_ts,
        newest_ts,
        quarantine: folders_with_prefix(data_dir, QUARANTINE_PREFIX)?,
        salvaged: folders_with_prefix(data_dir, SALVAGED_PREFIX)?,
    })
}

/// Writes every record (or, with `dead`, every dead-lettered record) in position order, one JSON
/// record a line, exactly as stored. Returns how many were written.
pub fn dump(
    data_dir: &Path,
    dead: bool,
    out: &mut dyn std::io::Write,
) -> Result<u64, JournalError> {
    let mut store = open_existing(data_dir)?;
    let mut written = 0u64;
    store.for_each_record(dead, &mut |record| {
        out.write_all(&record.bytes)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|err| JournalError::io("cannot write the dump", err))?;
        written += 1;
        Ok(())
    })?;
    out.flush()
        .map_err(|err| JournalError::io("cannot write the dump", err))?;
    Ok(written)
}

/// The store and gateway the live journal in `data_dir` writes for, read from its newest record;
/// `None` when there is no live journal or it holds no record. `journal salvage` uses this when
/// it is not given a configuration.
pub fn identity(data_dir: &Path) -> Result<Option<(String, String)>, JournalError> {
    #[derive(serde::Deserialize)]
    struct Identity {
        store: String,
        gateway: String,
    }
    let mut store = match open_existing(data_dir) {
        Ok(store) => store,
        Err(JournalError::Missing { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let newest = store.edge_record(true)?;
    Ok(newest
        .and_then(|bytes| serde_json::from_slice::<Identity>(&bytes).ok())
        .map(|identity| (identity.store, identity.gateway)))
}
