//! Opening a journal: the lock file, opening sled and the record log defensively (on a guarded
//! thread, sorting what goes wrong into in-use, the environment's fault or damage), replacing
//! a damaged journal by a fresh one after quarantine, attaching the live journal's table of
//! message identities, and the read-only open of the offline commands on a scratch copy of
//! sled. What the open reads and checks is `recovery`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use sled::Db;

use super::error::JournalError;
use super::faults::{self, SharedFaults};
use super::floor::{self, Floor};
use super::layout::{open_trees, sled_config, JOURNAL_DIR};
use super::messages::{MessageTable, SharedMessages};
use super::quarantine::{move_floor_aside, quarantine, Replaced};
use super::recovery::recover;
use super::store::Store;
use crate::record::RecordEncoder;

/// Name of the lock file beside it; held (flock) by whoever has the journal open.
pub(crate) const LOCK_FILE: &str = "journal.lock";

/// The exclusive flock on `data_dir/journal.lock`: the first line of defence against two
/// processes using one journal, with a clear error instead of sled's.
#[derive(Debug)]
pub(crate) struct JournalLock {
    /// Held for as long as this value lives.
    _flock: Flock<File>,
}

/// Takes the journal lock, creating `data_dir` and the lock file if needed.
pub(crate) fn lock(data_dir: &Path) -> Result<JournalLock, JournalError> {
    std::fs::create_dir_all(data_dir).map_err(|err| {
        JournalError::io(
            format!("cannot create data folder {}", data_dir.display()),
            err,
        )
    })?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| JournalError::io(format!("cannot open {}", path.display()), err))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(flock) => Ok(JournalLock { _flock: flock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(JournalError::InUse {
            path: data_dir.join(JOURNAL_DIR),
        }),
        Err((_, errno)) => Err(JournalError::io(
            format!("cannot lock {}", path.display()),
            std::io::Error::from(errno),
        )),
    }
}

/// Why a journal could not be opened.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// Held by another process: a plain error, never damage.
    InUse,
    /// The environment is at fault (permissions, disk full, ...): a plain error, because moving
    /// a healthy journal aside would not help.
    Environment(String),
    /// The files are damaged or inconsistent: quarantine material.
    Damaged(String),
}

impl OpenFailure {
    /// Damage, as `reason` describes it.
    pub(crate) fn damaged(reason: impl std::fmt::Display) -> Self {
        Self::Damaged(reason.to_string())
    }

    /// The environment's fault, as `reason` describes it.
    pub(crate) fn environment(reason: impl std::fmt::Display) -> Self {
        Self::Environment(reason.to_string())
    }

    /// Turns the failure into the error reported by commands that do not quarantine.
    pub(crate) fn into_error(self, path: &Path) -> JournalError {
        match self {
            OpenFailure::InUse => JournalError::InUse {
                path: path.to_path_buf(),
            },
            OpenFailure::Environment(reason) | OpenFailure::Damaged(reason) => {
                JournalError::Damaged {
                    path: path.to_path_buf(),
                    reason,
                }
            }
        }
    }
}

/// Sorts a sled error met while opening into in-use, environment or damage.
fn classify(err: &sled::Error) -> OpenFailure {
    if let sled::Error::Io(io) = err {
        if io.to_string().contains("could not acquire lock") {
            return OpenFailure::InUse;
        }
        if let Some(code) = io.raw_os_error() {
            if [
                libc::EACCES,
                libc::EPERM,
                libc::ENOSPC,
                libc::EROFS,
                libc::EMFILE,
                libc::ENFILE,
                libc::ENOMEM,
                libc::EDQUOT,
            ]
            .contains(&code)
            {
                return OpenFailure::Environment(format!("sled: {err}"));
            }
        }
    }
    OpenFailure::Damaged(format!("sled: {err}"))
}

/// Runs `work` on its own thread and turns a panic into [`OpenFailure::Damaged`]: sled 0.34 can
/// panic instead of returning an error when it meets some kinds of damage.
pub(crate) fn run_guarded<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, OpenFailure> + Send + 'static,
) -> Result<T, OpenFailure> {
    let thread = std::thread::Builder::new()
        .name("journal-open".to_string())
        .spawn(work)
        .map_err(|err| OpenFailure::Environment(format!("cannot start a thread: {err}")))?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => Err(OpenFailure::Damaged(format!(
            "sled panicked while {what}: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Opens the sled database at `path` (on a guarded thread).
pub(crate) fn open_db(path: &Path) -> Result<Db, OpenFailure> {
    let path = path.to_path_buf();
    run_guarded("opening the database", move || open_sled(&path))
}

/// Opens the sled database at `path` on this thread, waiting out this process's own hold on it.
///
/// Callers hold `journal.lock` already, so no other process has this journal open: a lock
/// error from sled here means this process closed it a moment ago and sled's background
/// threads have not let go of its files yet (dropping a `Db` does not wait for them). Give them
/// a few seconds; a loaded machine was seen to need more than one.
fn open_sled(path: &Path) -> Result<Db, OpenFailure> {
    let mut attempts = 0;
    loop {
        match sled_config(path).open().map_err(|err| classify(&err)) {
            Err(OpenFailure::InUse) if attempts < 250 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            outcome => return outcome,
        }
    }
}

/// Opens (or creates) the journal in `journal_dir` while `lock` is held. Runs entirely on a
/// guarded thread, so a panic anywhere in sled during open or recovery counts as damage. A
/// journal that ends below `floor` counts as damage too. With `read_only_log`, the record log
/// is read in place from there (see [`recover`]).
fn open_store(
    journal_dir: &Path,
    read_only_log: Option<PathBuf>,
    store: &str,
    gateway: &str,
    lock: JournalLock,
    floor: Option<Floor>,
    faults: SharedFaults,
) -> Result<Store, (OpenFailure, JournalLock)> {
    let path = journal_dir.to_path_buf();
    let opened = run_guarded("opening the journal", move || {
        let db = open_sled(&path)?;
        let trees = open_trees(&db)?;
        let (log, recovered) =
            recover(&db, &trees, &path, read_only_log.as_deref(), floor.as_ref())?;
        Ok((db, trees, log, recovered))
    });
    let (db, trees, log, recovered) = match opened {
        Ok(parts) => parts,
        Err(failure) => return Err((failure, lock)),
    };
    let encoder = RecordEncoder::new(store, gateway, &recovered.epoch);
    Ok(Store::new(db, log, trees, recovered, encoder, lock, faults))
}

/// Opens the journal in `data_dir`, quarantining it and starting a fresh one when it is damaged.
/// Does not write the `journal_replaced` record: the caller does, through its own append path.
pub(crate) fn open_or_replace(
    data_dir: &Path,
    store: &str,
    gateway: &str,
) -> Result<(Store, Option<Replaced>), JournalError> {
    open_or_replace_with(data_dir, store, gateway, faults::none())
}

/// [`open_or_replace`], with `faults` injected into the store (tests).
pub(crate) fn open_or_replace_with(
    data_dir: &Path,
    store: &str,
    gateway: &str,
    faults: SharedFaults,
) -> Result<(Store, Option<Replaced>), JournalError> {
    let journal_dir = data_dir.join(JOURNAL_DIR);
    let lock = lock(data_dir)?;
    let floor = read_floor(data_dir, &journal_dir);
    let (failure, lock) = match open_store(
        &journal_dir,
        None,
        store,
        gateway,
        lock,
        floor,
        faults.clone(),
    ) {
        Ok(mut store) => {
            store.floor_dir = Some(data_dir.to_path_buf());
            return Ok((store, None));
        }
        Err(failed) => failed,
    };
    let reason = match failure {
        OpenFailure::Damaged(reason) => reason,
        other => return Err(other.into_error(&journal_dir)),
    };
    tracing::error!(
        journal = %journal_dir.display(),
        %reason,
        "journal cannot be opened; moving it aside and starting a new journal"
    );
    let moved_to = quarantine(data_dir)?;
    tracing::error!(
        quarantine = %moved_to.display(),
        "damaged journal moved aside; run `posgw journal salvage` to recover its records"
    );
    move_floor_aside(data_dir, &moved_to);
    match open_store(&journal_dir, None, store, gateway, lock, None, faults) {
        Ok(mut fresh) => {
            fresh.floor_dir = Some(data_dir.to_path_buf());
            Ok((
                fresh,
                Some(Replaced {
                    quarantine: moved_to,
                    reason,
                }),
            ))
        }
        Err((failure, _lock)) => Err(failure.into_error(&journal_dir)),
    }
}

/// The floor to check the journal in `journal_dir` against: none if the folder does not exist
/// (a new journal gets a new epoch, so no id can repeat) or the floor file is unreadable (the
/// floor is a second line of defence; a bad one must not take a healthy journal down).
fn read_floor(data_dir: &Path, journal_dir: &Path) -> Option<Floor> {
    let floor = match floor::read(data_dir) {
        Ok(floor) => floor,
        Err(reason) => {
            tracing::warn!(%reason, "ignoring the journal floor");
            return None;
        }
    };
    if floor.is_some() && !journal_dir.exists() {
        tracing::error!(
            journal = %journal_dir.display(),
            "the journal folder is gone although records were written to it; starting a new \
             journal (new epoch)"
        );
        return None;
    }
    floor
}

/// Opens an existing journal for an offline command (`stats`, `dump`), without changing any
/// of its files: no creation of the folder, no quarantine, no cut.
///
/// sled 0.34 has no read-only mode (opening writes its files, and recovery removes the saved
/// counters), so sled's own files (everything but `segments/`, a few MiB: the meta, dead
/// letters and sled's log) are copied to a scratch folder and the copy is opened; the record
/// log, the bulk of the journal, is read in place, read-only (`Log::open_read_only`).
pub(crate) fn open_existing(data_dir: &Path) -> Result<Store, JournalError> {
    let journal_dir = data_dir.join(JOURNAL_DIR);
    if !journal_dir.is_dir() {
        return Err(JournalError::Missing { path: journal_dir });
    }
    let lock = lock(data_dir)?;
    let scratch = Scratch::copy_sled(&journal_dir)?;
    // Offline commands never append, so the envelope's store and gateway are irrelevant.
    let mut store = open_store(
        &scratch.path,
        Some(journal_dir.clone()),
        "",
        "",
        lock,
        None,
        faults::none(),
    )
    .map_err(|(failure, _)| failure.into_error(&journal_dir))?;
    store.scratch = Some(scratch);
    Ok(store)
}

/// A scratch folder holding a copy of a journal's sled files; removed when dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// The folder.
    path: PathBuf,
}

impl Scratch {
    /// Copies everything in `journal_dir` except the record log into a new folder in the
    /// system's temporary folder.
    fn copy_sled(journal_dir: &Path) -> Result<Scratch, JournalError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let scratch = Scratch {
            path: std::env::temp_dir()
                .join(format!("posgw-journal-{}-{stamp}", std::process::id())),
        };
        copy_except_segments(journal_dir, &scratch.path).map_err(|err| {
            JournalError::io(
                format!(
                    "cannot copy the journal's database to {} to read it",
                    scratch.path.display()
                ),
                err,
            )
        })?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Copies the files and folders of `from` into `to` (created), except the `segments` folder.
fn copy_except_segments(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == super::segments::SEGMENTS_DIR {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_except_segments(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens the table of message identities in `journal_dir` (live journals only); its slots
    /// of records that did not survive are cleared.
    pub(crate) fn attach_messages(&mut self, journal_dir: &Path) -> Result<(), JournalError> {
        let table = MessageTable::open(journal_dir, self.next_position)
            .map_err(|err| JournalError::storage("opening the message identities", err))?;
        // A removal sled lost in a crash: HQ has those records already.
        let acked = table.acked_at_open();
        if acked > self.acked {
            let (records, bytes) = self
                .log
                .count(self.acked, acked)
                .map_err(|err| JournalError::storage("counting acknowledged records", err))?;
            tracing::info!(
                records,
                "records HQ acknowledged before the crash are not sent again"
            );
            self.acked = acked;
            self.backlog_records = self.backlog_records.saturating_sub(records);
            self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
        }
        let shared: SharedMessages = Arc::new(std::sync::Mutex::new(table));
        self.log.attach_messages(shared.clone());
        self.messages = Some(shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_within_a_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock(dir.path()).expect("first lock");
        assert!(matches!(lock(dir.path()), Err(JournalError::InUse { .. })));
        drop(first);
        lock(dir.path()).expect("lock after release");
    }

    #[test]
    fn guarded_turns_panics_into_damage() {
        let result: Result<(), _> = run_guarded("testing", || panic!("boom"));
        match result {
            Err(OpenFailure::Damaged(reason)) => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
