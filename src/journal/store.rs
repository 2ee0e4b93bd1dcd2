//! The synchronous journal core: the lock file, opening sled and the record log defensively,
//! the meta, recovering the counters, quarantining a damaged journal, and the blocking
//! operations (append, read, remove, dead-letter, flush) that the actor and the offline
//! commands share.
//!
//! Nothing here is async; the actor calls the quick operations inline and runs the fsyncs
//! ([`FlushJob`]) on a blocking thread. See the module doc of `journal` for the invariants this
//! code keeps.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use nix::fcntl::{Flock, FlockArg};
use sled::{Batch, Db, Transactional, Tree};

use super::clock::Clock;
use super::error::JournalError;
use super::faults::{self, SharedFaults};
use super::floor::{self, Floor};
use super::messages::{self, MessageId, MessageTable, SharedMessages};
use super::record::{check_data_is_object, json_string, Data, Kind, RecordEncoder, RecordHead};
use super::segments::{Ending, Log, Mark, SyncJob};

/// Name of the sled folder inside `data_dir`.
pub(crate) const JOURNAL_DIR: &str = "journal";
/// Name of the lock file beside it; held (flock) by whoever has the journal open.
pub(crate) const LOCK_FILE: &str = "journal.lock";
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
/// Prefix of folders holding a damaged journal that has not been salvaged yet.
pub(crate) const QUARANTINE_PREFIX: &str = "quarantine-";
/// Prefix a quarantine folder is renamed to once salvage has copied what it could.
pub(crate) const SALVAGED_PREFIX: &str = "salvaged-";

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
const META_TREE: &str = "meta";

/// Meta key: the on-disk format version of this journal.
const META_FORMAT: &[u8] = b"format";
/// Meta key: the journal's epoch (8 lowercase hex characters).
const META_EPOCH: &[u8] = b"epoch";
/// Meta key: a seq already issued (u64 BE); the next seq is above it even if no record is left.
const META_SEQ_FLOOR: &[u8] = b"seq_floor";
/// Meta key: a position already used (u64 BE); the next position is above it.
const META_POSITION_FLOOR: &[u8] = b"position_floor";
/// Meta key: every record at or below this position (u64 BE) was acknowledged by HQ and is
/// gone from the backlog, even while its segment file is still on disk.
pub(crate) const META_ACKED: &[u8] = b"acked";
/// Meta key: the backlog figures (records, bytes, dead records: 3 x u64 BE) as of a clean close.
/// Written last on close and removed at open before anything else is written, so when it is
/// there it describes the journal exactly (sled recovers a prefix of its log, never later writes
/// without earlier ones) and the open can skip counting every record: that scan alone left ~85
/// MiB of sled pages resident with 1M records.
const META_COUNTERS: &[u8] = b"counters";
/// The format this code writes: records in the log, metadata and dead letters in sled.
const FORMAT_VERSION: &[u8] = b"2";
/// The format before the record log: records in sled's `records` tree. Opened and converted.
const FORMAT_SLED_RECORDS: &[u8] = b"1";

/// sled's page cache size. sled holds only metadata and dead letters now, so a small cache does.
const CACHE_CAPACITY: u64 = 4 * 1024 * 1024;

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

/// A fresh random epoch: 8 lowercase hex characters.
pub(crate) fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Whether `text` is a well-formed epoch.
fn is_epoch(text: &str) -> bool {
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

/// Reads a u64 meta value; missing means 0, anything but 8 bytes is damage.
fn meta_u64(meta: &Tree, key: &[u8]) -> Result<u64, OpenFailure> {
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

/// What one [`Store::evict`] pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Eviction {
    /// Records removed.
    pub(crate) records: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// The id of the oldest record removed.
    pub(crate) first_id: Option<String>,
    /// The id of the newest record removed.
    pub(crate) last_id: Option<String>,
}

impl Eviction {
    /// Adds a later pass to this one.
    pub(crate) fn add(&mut self, later: Eviction) {
        self.records += later.records;
        self.bytes += later.bytes;
        if self.first_id.is_none() {
            self.first_id = later.first_id;
        }
        if later.last_id.is_some() {
            self.last_id = later.last_id;
        }
    }
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
    log: Log,
    /// position -> dead-lettered record bytes.
    dead: Tree,
    /// position -> dead-letter reason.
    dead_reason: Tree,
    /// The segment files the log holds: first position -> empty (see [`SEGMENTS_TREE`]).
    segments: Tree,
    /// Metadata (epoch, floors, acknowledged position).
    meta: Tree,
    /// Every record at or below this position is acknowledged (gone from the backlog).
    acked: u64,
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
    evict_from: u64,
    /// The scratch copy of sled an offline command opened (removed when the store drops,
    /// after sled closed it: fields drop in declaration order).
    scratch: Option<Scratch>,
    /// Where tests make storage fail on purpose (see `faults`); nothing fails in production.
    faults: SharedFaults,
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

/// What a flush must do, taken from the store by [`Store::flush_job`] and run on a blocking
/// thread: fsync the log's files, then sled when asked to.
pub(crate) struct FlushJob {
    /// The message identities' file, when it changed.
    messages: Option<Arc<File>>,
    /// The log files and folder.
    log: SyncJob,
    /// The database, when its changes are to be made durable too.
    db: Option<Db>,
    /// The store's faults (a slow disk, in tests).
    faults: SharedFaults,
}

impl FlushJob {
    /// fsyncs the record log, then sled.
    pub(crate) fn run(&self) -> Result<(), JournalError> {
        self.faults.before_flush();
        if let Some(messages) = &self.messages {
            messages
                .sync_data()
                .map_err(|err| JournalError::Flush(format!("message identities: {err}")))?;
        }
        self.log
            .run()
            .map_err(|err| JournalError::Flush(format!("record log: {err}")))?;
        if let Some(db) = &self.db {
            db.flush()
                .map_err(|err| JournalError::Flush(err.to_string()))?;
        }
        Ok(())
    }
}

/// Counters recovered while opening.
struct Recovered {
    /// The epoch (created if the journal was empty and had none).
    epoch: String,
    /// The next seq.
    next_seq: u64,
    /// The next position.
    next_position: u64,
    /// Acknowledged through this position.
    acked: u64,
    /// Records in the backlog.
    backlog_records: u64,
    /// Their bytes.
    backlog_bytes: u64,
    /// Records in the dead tree.
    dead_records: u64,
}

/// The trees of one database.
struct Trees {
    /// Format 1 records (moved to the log at open).
    records: Tree,
    /// See [`Store::dead`].
    dead: Tree,
    /// See [`Store::dead_reason`].
    dead_reason: Tree,
    /// See [`Store::segments`].
    segments: Tree,
    /// See [`Store::meta`].
    meta: Tree,
}

/// Opens the trees.
fn open_trees(db: &Db) -> Result<Trees, OpenFailure> {
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

/// Reads the meta and the log to recover the counters, creating the meta of a new journal.
/// Every inconsistency is reported as damage, and so is a journal that ends below `floor` (what
/// was durable before: see `floor`). Cuts the log at a write a crash interrupted.
///
/// With `read_only_log`, sled is a scratch copy (`journal_dir`) and the record log is read in
/// place from that folder, read-only: nothing there is cut, deleted or created (a format 1
/// journal is converted into the scratch copy instead).
fn recover(
    db: &Db,
    trees: &Trees,
    journal_dir: &Path,
    read_only_log: Option<&Path>,
    floor: Option<&Floor>,
) -> Result<(Log, Recovered), OpenFailure> {
    let damaged = |what: &str, err: sled::Error| OpenFailure::Damaged(format!("{what}: {err}"));
    let format_1 = matches!(trees.meta.get(META_FORMAT), Ok(Some(format)) if format.as_ref() == FORMAT_SLED_RECORDS);
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
                    // A conversion a crash interrupted left some records in the log already.
                    log.cut(&ending).map_err(OpenFailure::environment)?;
                    let converted = ending.last.as_ref().map_or(0, |(position, _)| *position);
                    convert_format_1(db, trees, &mut log, converted)?;
                    // Read the converted log again, as any other.
                    (log, ending) = Log::open(journal_dir).map_err(OpenFailure::damaged)?;
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

/// Opens (or creates) the journal in `journal_dir` while `lock` is held. Runs entirely on a
/// guarded thread, so a panic anywhere in sled during open or recovery counts as damage. A
/// journal that ends below `floor` counts as damage too.
pub(crate) fn open_store(
    journal_dir: &Path,
    store: &str,
    gateway: &str,
    lock: JournalLock,
    floor: Option<Floor>,
    faults: SharedFaults,
) -> Result<Store, (OpenFailure, JournalLock)> {
    open_store_at(journal_dir, None, store, gateway, lock, floor, faults)
}

/// [`open_store`], with the record log read in place from `read_only_log` (see [`recover`]).
fn open_store_at(
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
    let clock = Clock::new();
    let boot_json = json_string(clock.boot_id());
    Ok(Store {
        db,
        log,
        dead: trees.dead,
        dead_reason: trees.dead_reason,
        segments: trees.segments,
        meta: trees.meta,
        acked: recovered.acked,
        encoder: RecordEncoder::new(store, gateway, &recovered.epoch),
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
    })
}

/// A damaged journal that was moved aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// Where the damaged journal folder now is (`data_dir/quarantine-<UTC time>`).
    pub quarantine: PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

/// Moves `data_dir/journal` to a new `data_dir/quarantine-<UTC time>` folder.
pub(crate) fn quarantine(data_dir: &Path) -> Result<PathBuf, JournalError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut target = data_dir.join(format!("{QUARANTINE_PREFIX}{stamp}"));
    let mut n = 2;
    while target.exists() || data_dir.join(format!("{SALVAGED_PREFIX}{stamp}")).exists() {
        target = data_dir.join(format!("{QUARANTINE_PREFIX}{stamp}-{n}"));
        n += 1;
    }
    let source = data_dir.join(JOURNAL_DIR);
    std::fs::rename(&source, &target).map_err(|err| {
        JournalError::io(
            format!(
                "cannot move damaged journal {} to {}",
                source.display(),
                target.display()
            ),
            err,
        )
    })?;
    Ok(target)
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
    let (failure, lock) =
        match open_store(&journal_dir, store, gateway, lock, floor, faults.clone()) {
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
    // The floor belonged to the journal just moved aside: it goes with it (salvage reads from it
    // the last seq that was durable, to tell which records it could not recover); the fresh
    // journal writes its own at its first flush.
    if let Err(err) = std::fs::rename(floor::path(data_dir), moved_to.join(floor::FLOOR_FILE)) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %err, "cannot move the floor of the damaged journal aside");
            if let Err(err) = std::fs::remove_file(floor::path(data_dir)) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %err, "cannot remove the floor of the damaged journal");
                }
            }
        }
    }
    match open_store(&journal_dir, store, gateway, lock, None, faults) {
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
    let mut store = open_store_at(
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
    fn protect_floors_now(&mut self) -> Result<(), JournalError> {
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

    /// Deletes the oldest `scan` and `device` records (position order), at most `max_records`,
    /// until the backlog is at most `target_bytes`; other kinds are never evicted. Returns what
    /// it removed (nothing once no scan or device record is left). The floors are made durable
    /// first, so evicted seqs are never issued again.
    pub(crate) fn evict(
        &mut self,
        target_bytes: u64,
        max_records: usize,
    ) -> Result<Eviction, JournalError> {
        // (position, bytes, id) of each record to evict, and the last position looked at.
        let mut chosen: Vec<(u64, u64, String)> = Vec::new();
        let mut bytes = 0u64;
        let mut scanned_to = None;
        let backlog_bytes = self.backlog_bytes;
        self.log
            .read(
                self.evict_from.saturating_sub(1).max(self.acked),
                u64::MAX,
                &mut |position, value| {
                    if backlog_bytes.saturating_sub(bytes) <= target_bytes
                        || chosen.len() >= max_records
                    {
                        return false;
                    }
                    scanned_to = Some(position);
                    let Some(head) = RecordHead::parse(value) else {
                        return true;
                    };
                    if !matches!(head.kind.as_deref(), Some("scan" | "device")) {
                        return true;
                    }
                    bytes += value.len() as u64;
                    chosen.push((position, value.len() as u64, head.id.into_owned()));
                    true
                },
            )
            .map_err(|err| JournalError::storage("reading records to evict", err))?;
        // One segment per pass: a rewrite is all or nothing, so the counters and the `evicted`
        // record always match what left the log.
        if let Some(&(first, _, _)) = chosen.first() {
            let boundary = self.log.segment_end(first);
            if chosen
                .last()
                .is_some_and(|(position, _, _)| *position >= boundary)
            {
                chosen.retain(|(position, _, _)| *position < boundary);
                scanned_to = chosen.last().map(|(position, _, _)| *position);
            }
        }
        let mut eviction = Eviction::default();
        if !chosen.is_empty() {
            let positions: Vec<u64> = chosen.iter().map(|(position, _, _)| *position).collect();
            let bytes: u64 = chosen.iter().map(|(_, size, _)| size).sum();
            self.protect_floors_now()?;
            // Records leave the log: what earlier reads counted no longer holds.
            self.reads.clear();
            self.log
                .drop_frames(&positions)
                .map_err(|err| JournalError::storage("evicting records", err))?;
            self.backlog_records = self.backlog_records.saturating_sub(positions.len() as u64);
            self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
            eviction.records = positions.len() as u64;
            eviction.bytes = bytes;
            eviction.first_id = chosen.first().map(|(_, _, id)| id.clone());
            eviction.last_id = chosen.pop().map(|(_, _, id)| id);
        }
        // Only once the removal succeeded: a failed one leaves its records to the next pass.
        if let Some(scanned_to) = scanned_to {
            self.evict_from = scanned_to + 1;
        }
        Ok(eviction)
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
        self.reads.clear();
        self.log
            .drop_frames(&[position])
            .map_err(|err| JournalError::storage("moving a record to the dead-letter set", err))?;
        self.backlog_records = self.backlog_records.saturating_sub(1);
        self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes.len() as u64);
        if !known {
            self.dead_records += 1;
        }
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

    /// What a flush started now must fsync; everything appended so far is handed to the kernel.
    /// `with_meta`: sled's changes too. Only removals leave sled changes for a flush to make
    /// durable (everything else that writes sled flushes it itself), and nothing waits on those.
    pub(crate) fn flush_job(&mut self, with_meta: bool) -> Result<FlushJob, JournalError> {
        self.track_segments()?;
        // A write the log took back (a full disk) is retried at the next flush; one it could
        // not take back is the end, like a failed fsync.
        let messages = match &self.messages {
            Some(messages) => messages::lock(messages)
                .sync_job()
                .map_err(|err| JournalError::storage("writing the message identities", err))?,
            None => None,
        };
        let log = self.log.sync_job().map_err(|err| {
            if self.log.is_torn() {
                JournalError::Flush(format!("record log: {err}"))
            } else {
                JournalError::storage("writing the record log", err)
            }
        })?;
        Ok(FlushJob {
            faults: self.faults.clone(),
            messages,
            log,
            db: with_meta.then(|| self.db.clone()),
        })
    }

    /// Brings the list of segments (`segments` tree) up to date with the segments the log
    /// created and deleted since the last call. Made durable with sled's next flush; the open
    /// copes with a list that lags the files (see `check_segments`).
    fn track_segments(&mut self) -> Result<(), JournalError> {
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

    /// fsyncs everything written so far (blocking), then records it in the floor file.
    pub(crate) fn flush(&mut self) -> Result<(), JournalError> {
        let floor = self.floor();
        self.flush_job(true)?.run()?;
        if let Some(dir) = &self.floor_dir {
            if let Err(reason) = floor::write(dir, &floor) {
                tracing::warn!(%reason, "cannot update the journal floor");
            }
        }
        Ok(())
    }

    /// Saves the backlog figures so the next open need not count every record. Call only as
    /// the very last write before the final flush of a close: any later change would make them
    /// wrong (the next open removes them before changing anything).
    pub(crate) fn save_counters(&self) -> Result<(), JournalError> {
        let mut counters = Vec::with_capacity(24);
        for figure in [self.backlog_records, self.backlog_bytes, self.dead_records] {
            counters.extend_from_slice(&figure.to_be_bytes());
        }
        self.meta
            .insert(META_COUNTERS, counters)
            .map(|_| ())
            .map_err(|err| JournalError::storage("saving the journal counters", err))
    }

    /// The floor as of now: what a flush started now makes durable.
    pub(crate) fn floor(&self) -> Floor {
        Floor {
            epoch: self.epoch.clone(),
            seq: self.next_seq - 1,
            position: self.next_position - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_format() {
        for _ in 0..100 {
            assert!(is_epoch(&new_epoch()));
        }
        assert!(!is_epoch("7F3A9C21"));
        assert!(!is_epoch("7f3a9c2"));
    }

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
