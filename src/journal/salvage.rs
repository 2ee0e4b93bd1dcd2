//! `posgw journal salvage`: copies what can be read out of quarantined journals into the live
//! one, keeping each record's original bytes (and so its id, epoch and seq).
//!
//! Two readers per quarantine folder, because each misses what the other finds:
//! - **sled**, on a scratch copy (opening can rewrite files; the quarantined files are never
//!   modified): as is, then without `conf`, then also without `snap.*` (sled rebuilds from its
//!   log). It knows which records were removed after upload, but after damage it may stop at the
//!   damaged point and silently return only what came before it, or panic.
//! - **a raw scan** of the folder's files: records are stored as contiguous JSON bytes inside
//!   sled's log segments, so every complete value that starts like a record envelope and parses
//!   as one (id, epoch, seq, kind, data) is a record. It finds what sled lost, but also old
//!   copies of records that were already uploaded and removed. When sled read the folder without
//!   errors, the raw finds of the folder's own epoch at or below its `seq_floor` are such removed
//!   records and are left out; otherwise they are copied too (HQ deduplicates by id, so a
//!   record sent twice costs bandwidth, while a record not sent is lost).
//!
//! Records whose id the live journal already holds are skipped, so salvage can be re-run; each
//! folder is renamed to `salvaged-<same time>` once its records are durable in the live journal.
//!
//! What could not be recovered is reported, not just what was: the damaged frame the record log
//! ends at counts as unreadable, and every seq missing between the lowest and highest seq found
//! of an epoch is listed ([`MissingSeqs`]) and logged as an error.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::value::RawValue;

use super::error::JournalError;
use super::handle::JournalConfig;
use super::layout::{DEAD_REASON_TREE, DEAD_TREE, JOURNAL_DIR, META_ACKED, RECORDS_TREE};
use super::offline::folders_with_prefix;
use super::open::{open_db, open_or_replace, run_guarded, OpenFailure};
use super::quarantine::{replaced_event, Replaced, QUARANTINE_PREFIX, SALVAGED_PREFIX};
use super::segments::Log;
use super::store::Store;
use crate::record::{Data, Envelope, Kind, RecordHead};

/// Consecutive read errors after which a damaged tree is given up on (sled can return the same
/// error forever once an iterator hits a bad page).
const MAX_CONSECUTIVE_ERRORS: u64 = 1000;
/// Name of the scratch copy salvage opens sled on.
const SALVAGE_COPY: &str = ".salvage-copy";
/// Bytes read per step of a raw scan.
const RAW_CHUNK: usize = 8 * 1024 * 1024;
/// Bytes kept from one step to the next, so a record straddling two steps is still found
/// (records are far smaller than this).
const RAW_OVERLAP: usize = 1024 * 1024;
/// How every record starts (the envelope's first field).
const RECORD_START: &[u8] = b"{\"id\":\"";

/// What salvage did with one quarantine folder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SalvagedFolder {
    /// The quarantine folder as found.
    pub folder: PathBuf,
    /// How it was read, e.g. `"sled (without conf), raw scan found 3 more"`; `None` if nothing
    /// could read it.
    pub method: Option<String>,
    /// Why sled could not open it, if it could not.
    pub sled_error: Option<String>,
    /// Records read from it (records and dead records that parsed).
    pub read: u64,
    /// Records copied into the live journal (records and dead records).
    pub copied: u64,
    /// Dead-lettered records copied into the live dead-letter set (included in `copied`).
    pub dead_copied: u64,
    /// Records skipped because the live journal already holds their id.
    pub duplicates: u64,
    /// Items that could not be read or are not records.
    pub unreadable: u64,
    /// Old copies the raw scan found of records the damaged journal had removed after upload.
    pub removed_before: u64,
    /// Where the folder was moved once salvaged (`salvaged-*`); `None` if it was left in place.
    pub marked_as: Option<PathBuf>,
    /// Seqs not recovered: per epoch, the runs of seqs missing between the lowest and the
    /// highest seq found of that epoch (copied, duplicate or already uploaded), in order. Below
    /// the lowest found seq nothing can be told (HQ had those records, or they were evicted).
    pub missing: Vec<MissingSeqs>,
}

/// A run of seqs of one epoch that salvage found no record for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSeqs {
    /// The epoch.
    pub epoch: String,
    /// The first seq missing.
    pub first: u64,
    /// The last seq missing (equal to `first` for a single one).
    pub last: u64,
}

impl MissingSeqs {
    /// How many seqs the run holds.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

impl fmt::Display for MissingSeqs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.epoch, self.first)
        } else {
            write!(f, "{}/{}-{}", self.epoch, self.first, self.last)
        }
    }
}

impl SalvagedFolder {
    /// Seqs not recovered, over all runs.
    pub fn missing_seqs(&self) -> u64 {
        self.missing.iter().map(MissingSeqs::count).sum()
    }
}

/// What `posgw journal salvage` recovered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SalvageReport {
    /// The live journal's folder.
    pub journal: PathBuf,
    /// The live journal's epoch.
    pub epoch: String,
    /// Set when the live journal itself was damaged and replaced before salvaging.
    pub replaced: Option<Replaced>,
    /// One entry per quarantine folder found.
    pub folders: Vec<SalvagedFolder>,
}

impl SalvageReport {
    /// Records read over all folders.
    pub fn read(&self) -> u64 {
        self.folders.iter().map(|f| f.read).sum()
    }
    /// Records copied over all folders.
    pub fn copied(&self) -> u64 {
        self.folders.iter().map(|f| f.copied).sum()
    }
    /// Duplicates skipped over all folders.
    pub fn duplicates(&self) -> u64 {
        self.folders.iter().map(|f| f.duplicates).sum()
    }
    /// Unreadable items over all folders.
    pub fn unreadable(&self) -> u64 {
        self.folders.iter().map(|f| f.unreadable).sum()
    }
    /// Seqs not recovered over all folders.
    pub fn missing_seqs(&self) -> u64 {
        self.folders.iter().map(SalvagedFolder::missing_seqs).sum()
    }
}

impl fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(replaced) = &self.replaced {
            writeln!(
                f,
                "live journal was damaged ({}); moved to {}",
                replaced.reason,
                replaced.quarantine.display()
            )?;
        }
        if self.folders.is_empty() {
            writeln!(f, "no quarantine folders to salvage")?;
        }
        for folder in &self.folders {
            match &folder.method {
                Some(method) => writeln!(
                    f,
                    "{}: read by {method}: read {}, copied {} ({} dead), skipped-duplicate {}, \
                     unreadable {}, already-uploaded {}",
                    folder.folder.display(),
                    folder.read,
                    folder.copied,
                    folder.dead_copied,
                    folder.duplicates,
                    folder.unreadable,
                    folder.removed_before
                )?,
                None => writeln!(
                    f,
                    "{}: could not be read; left in place",
                    folder.folder.display()
                )?,
            }
            if let Some(error) = &folder.sled_error {
                writeln!(f, "  sled could not open it: {error}")?;
            }
            if !folder.missing.is_empty() {
                let runs: Vec<String> = folder.missing.iter().map(ToString::to_string).collect();
                writeln!(
                    f,
                    "  not recovered: {} seq(s): {}",
                    folder.missing_seqs(),
                    runs.join(", ")
                )?;
            }
            if let Some(marked) = &folder.marked_as {
                writeln!(f, "  marked salvaged: {}", marked.display())?;
            }
        }
        writeln!(
            f,
            "total: read {}, copied {}, skipped-duplicate {}, unreadable {}, not recovered {} seq(s); live journal {} (epoch {})",
            self.read(),
            self.copied(),
            self.duplicates(),
            self.unreadable(),
            self.missing_seqs(),
            self.journal.display(),
            self.epoch
        )
    }
}

/// An item read out of a quarantined journal.
enum Salvaged {
    /// A record: its bytes and its id.
    Record {
        /// The record bytes.
        bytes: Vec<u8>,
        /// Its id.
        id: String,
        /// Its epoch and seq.
        seq: (String, u64),
    },
    /// A dead-lettered record with its reason.
    Dead {
        /// The record bytes.
        bytes: Vec<u8>,
        /// Its id.
        id: String,
        /// Its epoch and seq.
        seq: (String, u64),
        /// Why HQ rejected it (empty if unknown).
        reason: Vec<u8>,
    },
    /// Something that could not be read or is not a record.
    Unreadable,
}

/// What sled could read from a quarantined journal's copy.
struct SledRead {
    /// The items, in tree order (records, then dead records).
    items: Vec<Salvaged>,
    /// How the copy was opened.
    how: &'static str,
    /// Whether everything was read without a sled error or panic.
    clean: bool,
    /// The quarantined journal's epoch and `seq_floor`, when its meta was readable.
    floor: Option<(String, u64)>,
}

/// A record found by the raw scan.
struct RawRecord {
    /// Its id.
    id: String,
    /// Its epoch.
    epoch: String,
    /// Its seq.
    seq: u64,
    /// Its bytes.
    bytes: Vec<u8>,
}

/// Copies what can be read out of every `quarantine-*` folder into the live journal (creating it,
/// or replacing it if it is itself damaged), keeping each record's original bytes; skips ids the
/// live journal already holds; renames each folder it could read to `salvaged-*`.
pub fn salvage(data_dir: &Path, config: &JournalConfig) -> Result<SalvageReport, JournalError> {
    let (mut store, replaced) = open_or_replace(data_dir, &config.store, &config.gateway)?;
    if let Some(replaced) = &replaced {
        let event = replaced_event(replaced, config.version);
        store.append(Kind::Gateway, &Data::serialize(&event)?)?;
    }
    let mut known = live_ids(&mut store)?;
    // Salvaged records go after the live ones with their own (older) seqs; record what this
    // epoch has issued so far first, so recovery never mistakes them for the newest live record.
    store.protect_floors()?;
    store.flush()?;

    let mut report = SalvageReport {
        journal: data_dir.join(JOURNAL_DIR),
        epoch: store.epoch.clone(),
        replaced,
        folders: Vec::new(),
    };
    for folder in folders_with_prefix(data_dir, QUARANTINE_PREFIX)? {
        report
            .folders
            .push(salvage_folder(data_dir, &folder, &mut store, &mut known)?);
    }
    store.flush()?;
    Ok(report)
}

/// Ids present in the live journal (records and dead-letter set).
fn live_ids(store: &mut Store) -> Result<HashSet<String>, JournalError> {
    let mut ids = HashSet::new();
    for dead in [false, true] {
        store.for_each_record(dead, &mut |record| {
            if let Some(head) = RecordHead::parse(&record.bytes) {
                ids.insert(head.id.into_owned());
            }
            Ok(())
        })?;
    }
    Ok(ids)
}

/// Salvages one quarantine folder into `store`.
fn salvage_folder(
    data_dir: &Path,
    folder: &Path,
    store: &mut Store,
    known: &mut HashSet<String>,
) -> Result<SalvagedFolder, JournalError> {
    let mut outcome = SalvagedFolder {
        folder: folder.to_path_buf(),
        ..SalvagedFolder::default()
    };
    let copy = data_dir.join(SALVAGE_COPY);
    let sled = read_with_sled(folder, &copy);
    let _ = std::fs::remove_dir_all(&copy);
    let raw = raw_scan(folder);

    let mut seen_here = HashSet::new();
    let mut method = Vec::new();
    let mut floor = None;
    // Every seq found, by epoch, to tell which could not be recovered.
    let mut found_seqs: Vec<(String, u64)> = Vec::new();
    match sled {
        Ok(read) => {
            method.push(format!("sled ({})", read.how));
            if read.clean {
                floor = read.floor;
            }
            for item in read.items {
                let (bytes, id, reason) = match item {
                    Salvaged::Unreadable => {
                        outcome.unreadable += 1;
                        continue;
                    }
                    Salvaged::Record { bytes, id, seq } => {
                        found_seqs.push(seq);
                        (bytes, id, None)
                    }
                    Salvaged::Dead {
                        bytes,
                        id,
                        seq,
                        reason,
                    } => {
                        found_seqs.push(seq);
                        (bytes, id, Some(reason))
                    }
                };
                outcome.read += 1;
                seen_here.insert(id.clone());
                if !known.insert(id) {
                    outcome.duplicates += 1;
                    continue;
                }
                match reason {
                    None => {
                        store.append_foreign(&bytes)?;
                    }
                    Some(reason) => {
                        store.append_foreign_dead(&bytes, &reason)?;
                        outcome.dead_copied += 1;
                    }
                }
                outcome.copied += 1;
            }
        }
        Err(reason) => {
            tracing::error!(folder = %folder.display(), %reason, "sled cannot open quarantined journal");
            outcome.sled_error = Some(reason);
        }
    }
    match raw {
        Ok(found) => {
            let mut more = 0u64;
            for record in found {
                if seen_here.contains(&record.id) {
                    continue;
                }
                found_seqs.push((record.epoch.clone(), record.seq));
                if let Some((epoch, seq_floor)) = &floor {
                    if record.epoch == *epoch && record.seq <= *seq_floor {
                        outcome.removed_before += 1;
                        continue;
                    }
                }
                outcome.read += 1;
                more += 1;
                if known.insert(record.id) {
                    store.append_foreign(&record.bytes)?;
                    outcome.copied += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
            method.push(format!("raw scan ({more} more)"));
        }
        Err(err) => {
            tracing::error!(folder = %folder.display(), %err, "raw scan of quarantined journal failed");
        }
    }
    // The quarantine keeps the journal's floor: the last seq it had made durable, so records
    // lost after the last one found are missing too.
    let durable = match super::floor::read(folder) {
        Ok(floor) => floor.map(|floor| (floor.epoch, floor.seq)),
        Err(reason) => {
            tracing::warn!(%reason, "ignoring the floor of a quarantined journal");
            None
        }
    };
    outcome.missing = missing_seqs(found_seqs, durable);
    if !outcome.missing.is_empty() {
        tracing::error!(
            folder = %folder.display(),
            missing = outcome.missing_seqs(),
            "salvage could not recover every record of a quarantined journal"
        );
    }
    if method.is_empty() {
        // Neither reader got anywhere: leave the folder for a later attempt or a human.
        return Ok(outcome);
    }
    outcome.method = Some(method.join(" + "));
    // The copies must be durable before the folder stops being a quarantine folder.
    store.flush()?;
    let name = folder
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = name.strip_prefix(QUARANTINE_PREFIX).unwrap_or(&name);
    let target = data_dir.join(format!("{SALVAGED_PREFIX}{suffix}"));
    std::fs::rename(folder, &target).map_err(|err| {
        JournalError::io(
            format!(
                "cannot mark {} as salvaged (rename to {})",
                folder.display(),
                target.display()
            ),
            err,
        )
    })?;
    outcome.marked_as = Some(target);
    Ok(outcome)
}

/// The runs of seqs missing between the lowest and highest seq found of each epoch (epochs in
/// order of first appearance), and, with `durable` (an epoch and the last seq it made durable),
/// those after the highest seq found of that epoch up to it.
pub(crate) fn missing_seqs(
    mut found: Vec<(String, u64)>,
    durable: Option<(String, u64)>,
) -> Vec<MissingSeqs> {
    let mut epochs: Vec<String> = Vec::new();
    for (epoch, _) in &found {
        if !epochs.contains(epoch) {
            epochs.push(epoch.clone());
        }
    }
    found.sort_unstable();
    found.dedup();
    let mut runs = Vec::new();
    for epoch in epochs {
        let seqs = found
            .iter()
            .filter(|(of, _)| *of == epoch)
            .map(|(_, seq)| *seq);
        let mut previous: Option<u64> = None;
        for seq in seqs {
            if let Some(previous) = previous.filter(|previous| seq > previous + 1) {
                runs.push(MissingSeqs {
                    epoch: epoch.clone(),
                    first: previous + 1,
                    last: seq - 1,
                });
            }
            previous = Some(seq);
        }
        if let (Some(highest), Some((_, last))) =
            (previous, durable.as_ref().filter(|(of, _)| *of == epoch))
        {
            if *last > highest {
                runs.push(MissingSeqs {
                    epoch: epoch.clone(),
                    first: highest + 1,
                    last: *last,
                });
            }
        }
    }
    runs
}

/// Copies `folder` to `copy` and reads everything sled can read from it, trying harder each time
/// the copy does not open: as is, without `conf`, without `conf` and `snap.*`.
fn read_with_sled(folder: &Path, copy: &Path) -> Result<SledRead, String> {
    let _ = std::fs::remove_dir_all(copy);
    copy_dir(folder, copy).map_err(|err| {
        format!(
            "cannot copy {} to {}: {err}",
            folder.display(),
            copy.display()
        )
    })?;
    let mut last_error = String::new();
    for (attempt, how) in ["as is", "without conf", "without conf and snapshots"]
        .into_iter()
        .enumerate()
    {
        match attempt {
            1 => {
                let _ = std::fs::remove_file(copy.join("conf"));
            }
            2 => remove_snapshots(copy),
            _ => {}
        }
        match open_db(copy) {
            Ok(db) => return Ok(read_items(db, copy.to_path_buf(), how)),
            Err(OpenFailure::Damaged(reason) | OpenFailure::Environment(reason)) => {
                last_error = reason;
            }
            Err(OpenFailure::InUse) => last_error = "the copy is locked".to_string(),
        }
    }
    Err(last_error)
}

/// Deletes sled's `snap.*` files in `dir`.
fn remove_snapshots(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with("snap.") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Recursively copies a folder.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Reads the meta, records and dead records of an opened quarantined database on a guarded
/// thread. Items come back over a channel as they are read, so a sled panic halfway keeps what
/// came before it.
fn read_items(db: sled::Db, folder: PathBuf, how: &'static str) -> SledRead {
    let (send, receive) = std::sync::mpsc::channel();
    let reader = run_guarded("reading a quarantined journal", move || {
        let floor = read_floor(&db);
        let mut clean = read_tree(&db, RECORDS_TREE, None, &send);
        clean &= read_segments(&db, &folder, &send);
        let reasons = db.open_tree(DEAD_REASON_TREE).ok();
        clean &= read_tree(&db, DEAD_TREE, reasons.as_ref(), &send);
        Ok((clean, floor))
    });
    let mut items: Vec<Salvaged> = receive.into_iter().collect();
    let (clean, floor) = match reader {
        Ok(result) => result,
        Err(OpenFailure::Damaged(reason) | OpenFailure::Environment(reason)) => {
            tracing::error!(%reason, "reading a quarantined journal stopped early");
            items.push(Salvaged::Unreadable);
            (false, None)
        }
        Err(OpenFailure::InUse) => (false, None),
    };
    SledRead {
        items,
        how,
        clean,
        floor,
    }
}

/// The quarantined journal's epoch and `seq_floor` (0 when never written), if its meta reads.
fn read_floor(db: &sled::Db) -> Option<(String, u64)> {
    let meta = db.open_tree("meta").ok()?;
    let epoch = meta.get("epoch").ok()??;
    let epoch = std::str::from_utf8(&epoch).ok()?.to_string();
    let floor = match meta.get("seq_floor").ok()? {
        Some(value) => u64::from_be_bytes(value.as_ref().try_into().ok()?),
        None => 0,
    };
    Some((epoch, floor))
}

/// Sends every record of the record log in `folder` above what HQ acknowledged (from meta).
/// Returns false if the log ends in a damaged frame (the raw scan looks beyond it).
fn read_segments(db: &sled::Db, folder: &Path, send: &std::sync::mpsc::Sender<Salvaged>) -> bool {
    let acked = db
        .open_tree("meta")
        .ok()
        .and_then(|meta| meta.get(META_ACKED).ok().flatten())
        .and_then(|value| Some(u64::from_be_bytes(value.as_ref().try_into().ok()?)))
        .unwrap_or(0);
    let Ok((mut log, ending)) = Log::open(folder) else {
        let _ = send.send(Salvaged::Unreadable);
        return false;
    };
    let read = log.read(acked, u64::MAX, &mut |_, bytes| {
        let item = match record_envelope(bytes) {
            Some((id, epoch, seq)) => Salvaged::Record {
                bytes: bytes.to_vec(),
                id,
                seq: (epoch, seq),
            },
            None => Salvaged::Unreadable,
        };
        send.send(item).is_ok()
    });
    if ending.cut.is_some() {
        // The frame the log ends at is damaged (or cut short): one item that cannot be read.
        // What lies beyond it is left to the raw scan.
        let _ = send.send(Salvaged::Unreadable);
    }
    read.is_ok() && ending.cut.is_none()
}

/// Sends every item of one tree; `reasons` set means it is the dead-letter tree. Returns false
/// if sled reported an error.
fn read_tree(
    db: &sled::Db,
    name: &str,
    reasons: Option<&sled::Tree>,
    send: &std::sync::mpsc::Sender<Salvaged>,
) -> bool {
    let Ok(tree) = db.open_tree(name) else {
        let _ = send.send(Salvaged::Unreadable);
        return false;
    };
    let mut clean = true;
    let mut consecutive_errors = 0u64;
    for item in tree.iter() {
        let Ok((key, value)) = item else {
            let _ = send.send(Salvaged::Unreadable);
            clean = false;
            consecutive_errors += 1;
            if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                return false;
            }
            continue;
        };
        consecutive_errors = 0;
        let Some((id, epoch, seq)) = record_envelope(&value) else {
            let _ = send.send(Salvaged::Unreadable);
            continue;
        };
        let item = match reasons {
            None => Salvaged::Record {
                bytes: value.to_vec(),
                id,
                seq: (epoch, seq),
            },
            Some(reasons) => Salvaged::Dead {
                bytes: value.to_vec(),
                id,
                seq: (epoch, seq),
                reason: reasons
                    .get(&key)
                    .ok()
                    .flatten()
                    .map(|reason| reason.to_vec())
                    .unwrap_or_default(),
            },
        };
        if send.send(item).is_err() {
            return clean;
        }
    }
    clean
}

/// The id, epoch and seq of bytes that form a complete contract record (an [`Envelope`] with a
/// non-empty id, `data` intact JSON), so damaged values and stray matches are not taken for
/// records.
fn record_envelope(bytes: &[u8]) -> Option<(String, String, u64)> {
    let envelope: Envelope<'_> = serde_json::from_slice(bytes).ok()?;
    if envelope.id.is_empty() {
        return None;
    }
    Some((
        envelope.id.into_owned(),
        envelope.epoch.into_owned(),
        envelope.seq,
    ))
}

/// Finds records in the raw files of a quarantined journal (read-only), deduplicated by id and
/// ordered by epoch (in order of first appearance) and seq.
fn raw_scan(folder: &Path) -> std::io::Result<Vec<RawRecord>> {
    let mut found: Vec<(usize, RawRecord)> = Vec::new();
    let mut seen = HashSet::new();
    let mut epochs: Vec<String> = Vec::new();
    let mut files = Vec::new();
    list_files(folder, &mut files)?;
    files.sort();
    for file in files {
        if file.file_name().is_some_and(|name| name == "conf") {
            continue;
        }
        scan_file(&file, &mut |bytes: &[u8]| {
            let Some((id, epoch, seq)) = record_envelope(bytes) else {
                return;
            };
            if !seen.insert(id.clone()) {
                return;
            }
            let rank = match epochs.iter().position(|known| *known == epoch) {
                Some(rank) => rank,
                None => {
                    epochs.push(epoch.clone());
                    epochs.len() - 1
                }
            };
            found.push((
                rank,
                RawRecord {
                    id,
                    epoch,
                    seq,
                    bytes: bytes.to_vec(),
                },
            ));
        })?;
    }
    found.sort_by_key(|(rank, record)| (*rank, record.seq));
    Ok(found.into_iter().map(|(_, record)| record).collect())
}

/// Lists regular files under `dir`, recursively.
fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Calls `found` with the bytes of every complete JSON value starting with [`RECORD_START`] in
/// the file at `path`, reading it in overlapping chunks.
fn scan_file(path: &Path, found: &mut dyn FnMut(&[u8])) -> std::io::Result<()> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(RAW_CHUNK);
    let mut eof = false;
    loop {
        while buffer.len() < RAW_CHUNK && !eof {
            let old = buffer.len();
            buffer.resize(RAW_CHUNK, 0);
            let n = file.read(&mut buffer[old..])?;
            buffer.truncate(old + n);
            eof = n == 0;
        }
        // Only start values in the part followed by enough bytes to hold a whole record.
        let limit = if eof {
            buffer.len()
        } else {
            buffer.len().saturating_sub(RAW_OVERLAP)
        };
        let mut at = 0;
        while at < limit {
            let Some(offset) = buffer[at..limit].iter().position(|&b| b == b'{') else {
                break;
            };
            let start = at + offset;
            at = start + 1;
            if !buffer[start..].starts_with(RECORD_START) {
                continue;
            }
            let mut values =
                serde_json::Deserializer::from_slice(&buffer[start..]).into_iter::<&RawValue>();
            if let Some(Ok(value)) = values.next() {
                found(value.get().as_bytes());
                at = start + value.get().len();
            }
        }
        if eof {
            return Ok(());
        }
        buffer.drain(..limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_scan_finds_whole_records_among_garbage_and_across_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = |seq: u64| {
            format!(
                r#"{{"id":"S/G/0000000a/{seq}","store":"S","gateway":"G","epoch":"0000000a","seq":{seq},"ts":"x","clock":{{}},"kind":"scan","data":{{"n":{seq}}}}}"#
            )
        };
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        let mut seq = 0;
        // Enough records with garbage between them to span several chunks.
        while bytes.len() < RAW_CHUNK * 2 + RAW_OVERLAP {
            seq += 1;
            bytes.extend_from_slice(&[0xff, 0x00, b'{', b'"', 0x13]);
            if seq % 7 == 0 {
                // A truncated record: must not be taken.
                bytes.extend_from_slice(&record(seq).as_bytes()[..40]);
                continue;
            }
            bytes.extend_from_slice(record(seq).as_bytes());
            bytes.extend_from_slice(&vec![0x5a; (seq % 300) as usize]);
            expected.push(seq);
        }
        std::fs::write(dir.path().join("db"), &bytes).expect("write");
        std::fs::write(dir.path().join("conf"), record(999_999_999)).expect("write");
        let found = raw_scan(dir.path()).expect("scan");
        let seqs: Vec<u64> = found.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, expected);
        assert_eq!(found[0].bytes, record(1).into_bytes());
    }

    #[test]
    fn envelope_check_needs_all_fields() {
        assert!(
            record_envelope(br#"{"id":"a","epoch":"e","seq":1,"kind":"scan","data":{}}"#).is_some()
        );
        assert!(record_envelope(br#"{"id":"a","epoch":"e","seq":1,"kind":"scan"}"#).is_none());
        assert!(
            record_envelope(br#"{"id":"","epoch":"e","seq":1,"kind":"scan","data":{}}"#).is_none()
        );
        assert!(record_envelope(b"garbage").is_none());
    }
}
