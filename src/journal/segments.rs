//! The record log: the journal's records, in append-only segment files beside sled's own files.
//!
//! sled 0.34 keeps per-key state in memory and copies a leaf on every insert, which capped the
//! journal at ~130k appends/s and a 1M-record drain at ~130k records/s with 70-110 MiB resident
//! (values of many records per key were faster but kept hundreds of MiB). A journal is written
//! once at the end and read once from the front, which is what a log of files does best: an
//! append is a copy into a buffer, a read is a sequential `pread`, removing acknowledged records
//! is deleting whole files, and memory does not grow with the backlog. sled keeps what is small
//! and random-access: the epoch, the floors, how far HQ acknowledged, and the dead letters.
//!
//! # Files
//!
//! `journal/segments/{first position:020}.seg`, each a sequence of frames:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 of the position bytes and the payload
//! u64 LE  position
//! ...     payload: the record's JSON bytes, exactly as appended
//! ```
//!
//! Positions grow strictly within and across segments. A segment is closed for appends once it
//! holds [`SEGMENT_BYTES`] (a batch is never split across two).
//!
//! # Durability and recovery
//!
//! Appends go to an in-memory buffer; [`Log::write_out`] hands it to the kernel (at every flush
//! and whenever it passes [`WRITE_OUT_BYTES`]), and a [`SyncJob`] fsyncs every segment written
//! since the last one, and the folder when a segment was created, on the flusher's thread. A
//! record counts as durable only after that, so after a crash every frame up to the last
//! confirmed record is intact. Opening reads every frame; the first frame that is cut short or
//! fails its CRC (a write the crash interrupted) ends the log: the rest of its segment is cut
//! off and later segments are deleted. The caller checks the result against `journal.floor`
//! first, so a log that would end below what was confirmed is damage, never truncated.
//!
//! # Reading what was just written
//!
//! The newest frames stay in memory ([`Recent`], a few MiB, whether written out or not): the
//! uplink, reading records soon after they became durable, gets them from there instead of the
//! file (no `pread`, no CRC over bytes that never left memory). Reads further back go to the
//! files.
//!
//! # Removal
//!
//! Records HQ acknowledged are not rewritten: the journal keeps "acknowledged through" in its
//! meta and the log deletes every segment whose records are all acknowledged, except the last
//! one (its last record tells the next seq after a restart). Dead-lettering and quota eviction
//! remove single records: the segment is rewritten without them (temporary file, fsync,
//! rename, folder fsync), which is rare and bounded by the segment size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the segment folder inside the journal folder.
pub(crate) const SEGMENTS_DIR: &str = "segments";
/// A segment takes no more appends once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Buffered appends are handed to the kernel once they pass this many bytes.
pub(crate) const WRITE_OUT_BYTES: usize = 1024 * 1024;
/// Frame header: length, CRC, position.
const HEADER: usize = 16;
/// A payload longer than this is not a record (a damaged length field).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// How much a reader asks the kernel for at once.
const READ_CHUNK: usize = 256 * 1024;
/// Most bytes of written-out frames kept in memory; trimmed to half when passed.
const RECENT_BYTES: usize = 4 * 1024 * 1024;
/// Suffix of a segment file.
const SUFFIX: &str = ".seg";
/// Suffix of a segment being rewritten (deleted if found at open).
const TMP_SUFFIX: &str = ".seg.tmp";

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// Its path.
    path: PathBuf,
    /// Position of its last frame (0 while empty).
    last: u64,
    /// Bytes written or buffered for it.
    len: u64,
}

/// A frame read back.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Its position.
    pub(crate) position: u64,
    /// Its payload.
    pub(crate) bytes: Vec<u8>,
}

/// What a flush must fsync, taken from the log by [`Log::sync_job`].
#[derive(Debug, Default)]
pub(crate) struct SyncJob {
    /// Segment files written since the last job.
    files: Vec<Arc<File>>,
    /// The segment folder, when files were created, renamed or deleted in it.
    dir: Option<PathBuf>,
}

impl SyncJob {
    /// fsyncs the files, then the folder.
    pub(crate) fn run(&self) -> std::io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// A remembered place in the log, so sequential reads do not search from a segment's start.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The segment (its first position).
    segment: u64,
    /// Byte offset of the next frame in it.
    offset: u64,
    /// Every frame before `offset` in the segment has a position below this.
    next: u64,
}

/// The open record log. Owned by the journal's `Store`.
#[derive(Debug)]
pub(crate) struct Log {
    /// The segment folder.
    dir: PathBuf,
    /// Segments by first position.
    segments: BTreeMap<u64, Segment>,
    /// The last segment, open for appends, and its first position.
    writer: Option<(u64, Arc<File>)>,
    /// Frames appended but not yet handed to the kernel (all for the writer's segment).
    pending: Vec<u8>,
    /// Files written since the last sync job.
    unsynced: Vec<Arc<File>>,
    /// Whether the folder changed since the last sync job.
    dir_dirty: bool,
    /// Where the last read ended ([`Log::read`]: the uplink reading ahead).
    cursor: Option<Cursor>,
    /// Where the last count ended ([`Log::count`]: removal, behind the reads).
    count_cursor: Option<Cursor>,
    /// Reused read buffer.
    chunk: Vec<u8>,
    /// The newest frames, for reads that follow the appends closely.
    recent: Recent,
    /// Set when a failed write-out could not be taken back: the writer segment may hold part of
    /// a frame, so nothing more is written.
    torn: Option<Arc<SegmentError>>,
    /// Segments created (`true`) and deleted (`false`) since [`Log::take_changes`], in order:
    /// the store keeps the journal's list of segments from them.
    changes: Vec<(u64, bool)>,
    /// Opened by [`Log::open_read_only`]: no file is created, cut, rewritten or deleted.
    read_only: bool,
    /// The identities of the messages records came from: written to the kernel before any
    /// frame is, so a record that survives a crash has its identity too (see `messages`).
    messages: Option<super::messages::SharedMessages>,
}

/// The newest frames of the log in memory: every frame from position `first` on, in order,
/// those already written out in `written`, the rest in [`Log::pending`].
#[derive(Debug, Default)]
struct Recent {
    /// Whole frames already handed to the kernel.
    written: Vec<u8>,
    /// The first frame's position (in `written`, or in `pending` while `written` is empty);
    /// `None` when neither holds a frame.
    first: Option<u64>,
    /// Bytes trimmed from the front of `written` so far: offsets into `written` then `pending`
    /// plus this stay valid across trims and write-outs.
    dropped: u64,
    /// Where the last read from memory ended: the next position, and its offset; one for
    /// reads, one for counts (as for the files).
    cursors: [Option<(u64, u64)>; 2],
}

impl Recent {
    /// Takes the frames just written out (all of `pending`, about to be emptied), then trims
    /// the oldest if over [`RECENT_BYTES`].
    fn keep(&mut self, frames: &[u8]) {
        self.written.extend_from_slice(frames);
        if self.written.len() > RECENT_BYTES {
            self.drop_front(&[], |_, left| left <= RECENT_BYTES / 2);
        }
    }

    /// Drops frames from the front of `written` until `stop(position, bytes left from it)`
    /// holds for the next one; `first` then names that frame, or the first of `pending`.
    fn drop_front(&mut self, pending: &[u8], stop: impl Fn(u64, usize) -> bool) {
        let mut at = 0;
        let mut next = None;
        // Only whole frames come in: anything else ends the walk and is dropped with the rest.
        while let Decoded::Frame(position, _, size) = decode_frame(&self.written[at..], false) {
            if stop(position, self.written.len() - at) {
                next = Some(position);
                break;
            }
            at += size;
        }
        if next.is_none() {
            at = self.written.len();
        }
        self.written.drain(..at);
        self.dropped += at as u64;
        self.first = next.or_else(|| match decode_frame(pending, false) {
            Decoded::Frame(position, _, _) => Some(position),
            Decoded::Short(_) | Decoded::Bad(_) => None,
        });
    }

    /// Forgets every frame (the log was rewritten under it).
    fn clear(&mut self) {
        self.dropped += self.written.len() as u64;
        self.written.clear();
        self.first = None;
        self.cursors = [None; 2];
    }
}

/// The place a batch started, to take it back ([`Log::reset`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    /// `pending.len()` then.
    pending: usize,
    /// The writer segment's `last` then.
    last: u64,
    /// The writer segment's `len` then.
    len: u64,
    /// Whether the batch wrote anything out (then it cannot be taken back).
    written_out: bool,
}

/// What went wrong in the record log. Keeps the I/O error, so its [`std::io::ErrorKind`] reaches
/// the journal's callers, and the file (or the frame's position) it happened at; the messages
/// name both, as they did when they were plain text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SegmentError {
    /// A file-system call on a segment file or the segment folder failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "read", "create", "list", "cut", "delete", "sync",
        /// "rewrite").
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The error the call returned.
        source: std::io::Error,
    },
    /// Handing buffered frames to the kernel failed; `undo` is set when the part that reached
    /// the file could not be taken back either (the log is torn: see [`SegmentError::Torn`]).
    #[error("cannot write segment {}: {source}{}", path.display(), undo_failure(.undo.as_ref()))]
    WriteOut {
        /// The segment written to.
        path: PathBuf,
        /// The write's error.
        source: std::io::Error,
        /// The error of cutting the file back, if that failed too.
        undo: Option<std::io::Error>,
    },
    /// The message identities, written before any frame, could not be written.
    #[error("cannot write the message identities: {source}")]
    Messages {
        /// The write's error.
        source: std::io::Error,
    },
    /// A frame that must be whole is not: the open cut the log at its first bad frame, so one
    /// now is damage, never skipped.
    #[error("{}: {frame}", path.display())]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// What is wrong with the frame (its position, where known).
        frame: BadFrame,
    },
    /// A segment to rewrite holds a frame that is not whole: rewriting it would drop every
    /// frame after the damage.
    #[error("cannot rewrite {}: {frame}", path.display())]
    Rewrite {
        /// The segment.
        path: PathBuf,
        /// What is wrong with the frame.
        frame: BadFrame,
    },
    /// The newest frames kept in memory do not decode.
    #[error("the record log's newest frames in memory are damaged")]
    MemoryDamaged,
    /// A write to a log opened by [`Log::open_read_only`].
    #[error("the record log is open read-only")]
    ReadOnly,
    /// An append without a segment to append to (no [`Log::begin`], or the writer went).
    #[error("the record log has no open segment")]
    NoOpenSegment,
    /// [`Log::reset`] of a batch whose frames already reached the file.
    #[error("the failed batch was already written out")]
    WrittenOut,
    /// A write-out failed and could not be taken back, so the writer segment may end in part of
    /// a frame: the log refuses every write since, with that first error.
    #[error(transparent)]
    Torn(Arc<SegmentError>),
}

/// Why a segment file stops holding frames before its end: the first frame that is not whole
/// and valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadFrame {
    /// The length field is beyond any record.
    #[error("frame length {len} is not plausible")]
    Implausible {
        /// The length it gives.
        len: usize,
    },
    /// The CRC does not match the position and payload.
    #[error("frame at position {position} fails its checksum")]
    Checksum {
        /// The position the frame gives.
        position: u64,
    },
    /// The file ends inside the frame.
    #[error("the last frame is cut short ({have} of {need} bytes)")]
    CutShort {
        /// Bytes of it in the file.
        have: u64,
        /// Bytes it needs.
        need: usize,
    },
    /// A position not above the one before it (or below the segment's name).
    #[error("position {position} out of order")]
    OutOfOrder {
        /// The position.
        position: u64,
    },
}

/// The " (and cannot take it back: ...)" part of a [`SegmentError::WriteOut`] message.
fn undo_failure(undo: Option<&std::io::Error>) -> String {
    undo.map(|err| format!(" (and cannot take it back: {err})"))
        .unwrap_or_default()
}

/// Wraps the I/O error of `action` on `path`.
fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SegmentError + 'a {
    move |source| SegmentError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The segment file name for a first position.
fn segment_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// Encodes one frame onto `out`.
fn encode_frame(out: &mut Vec<u8>, position: u64, bytes: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&position.to_le_bytes());
    crc.update(bytes);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What [`decode_frame`] found at the start of a buffer.
enum Decoded<'a> {
    /// A whole, valid frame of this many bytes.
    Frame(u64, &'a [u8], usize),
    /// The buffer ends inside the frame (read more, or the file ends here).
    Short(usize),
    /// Not a valid frame.
    Bad(BadFrame),
}

/// Decodes the frame at the start of `buf`; with `verify`, checks its CRC.
fn decode_frame(buf: &[u8], verify: bool) -> Decoded<'_> {
    if buf.len() < HEADER {
        return Decoded::Short(HEADER);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    let position = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
    if len > MAX_PAYLOAD {
        return Decoded::Bad(BadFrame::Implausible { len });
    }
    if buf.len() < HEADER + len {
        return Decoded::Short(HEADER + len);
    }
    let payload = &buf[HEADER..HEADER + len];
    if !verify {
        return Decoded::Frame(position, payload, HEADER + len);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[8..16]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Decoded::Bad(BadFrame::Checksum { position });
    }
    Decoded::Frame(position, payload, HEADER + len)
}

/// Reads frames of one file from `offset`, calling `each(position, payload, frame offset)`
/// until it returns false. Returns the offset after the last whole valid frame, and why the
/// file ended there if not at its end (a short or bad frame). Checks CRCs when `verify`.
fn scan_file(
    file: &File,
    mut offset: u64,
    chunk: &mut Vec<u8>,
    verify: bool,
    each: &mut dyn FnMut(u64, &[u8], u64) -> bool,
) -> std::io::Result<(u64, Option<BadFrame>)> {
    let file_len = file.metadata()?.len();
    loop {
        if offset >= file_len {
            return Ok((offset, None));
        }
        let want = READ_CHUNK.min((file_len - offset) as usize);
        chunk.resize(want, 0);
        let got = read_full(file, chunk, offset)?;
        chunk.truncate(got);
        let mut at = 0usize;
        loop {
            match decode_frame(&chunk[at..], verify) {
                Decoded::Frame(position, payload, size) => {
                    if !each(position, payload, offset + at as u64) {
                        return Ok((offset + at as u64, None));
                    }
                    at += size;
                }
                Decoded::Short(need) => {
                    if offset + at as u64 == file_len {
                        return Ok((file_len, None));
                    }
                    if offset + (at + need) as u64 > file_len {
                        let stop = offset + at as u64;
                        return Ok((
                            stop,
                            Some(BadFrame::CutShort {
                                have: file_len - stop,
                                need,
                            }),
                        ));
                    }
                    if at == 0 {
                        // One frame bigger than the chunk: read it whole.
                        chunk.resize(need, 0);
                        let got = read_full(file, chunk, offset)?;
                        chunk.truncate(got);
                        continue;
                    }
                    break;
                }
                Decoded::Bad(reason) => return Ok((offset + at as u64, Some(reason))),
            }
        }
        offset += at as u64;
    }
}

/// `read_at` until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

impl Log {
    /// Opens (or creates) the log in `journal_dir/segments`, reading every frame to find its
    /// end. Nothing is cut or deleted yet: the caller checks the end against the floor, then
    /// calls [`Log::cut`].
    pub(crate) fn open(journal_dir: &Path) -> Result<(Log, Ending), SegmentError> {
        Log::open_with(journal_dir, false)
    }

    /// Opens the log in `journal_dir/segments` for reading only (offline commands): as
    /// [`Log::open`], but nothing in the folder is created, cut, deleted or written; reads stop
    /// where the open found the log ends.
    pub(crate) fn open_read_only(journal_dir: &Path) -> Result<(Log, Ending), SegmentError> {
        Log::open_with(journal_dir, true)
    }

    fn open_with(journal_dir: &Path, read_only: bool) -> Result<(Log, Ending), SegmentError> {
        let dir = journal_dir.join(SEGMENTS_DIR);
        if !read_only {
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        let mut firsts = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Err(err) if read_only && err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            listing => listing
                .map_err(io_error("list", &dir))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(io_error("list", &dir))?,
        };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP_SUFFIX) {
                // A rewrite that did not finish: the original is still in place.
                if !read_only {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            match name
                .strip_suffix(SUFFIX)
                .and_then(|stem| stem.parse::<u64>().ok())
            {
                Some(first) => firsts.push(first),
                // Not ours (an editor's backup, a copy an admin left): not damage.
                None => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a segment")
                }
            }
        }
        firsts.sort_unstable();
        let mut log = Log {
            dir,
            segments: BTreeMap::new(),
            writer: None,
            pending: Vec::new(),
            unsynced: Vec::new(),
            dir_dirty: false,
            cursor: None,
            count_cursor: None,
            chunk: Vec::new(),
            recent: Recent::default(),
            torn: None,
            changes: Vec::new(),
            read_only,
            messages: None,
        };
        let mut ending = Ending::default();
        let mut previous = 0u64;
        for first in firsts {
            let path = log.dir.join(segment_name(first));
            if ending.cut.is_some() {
                // Everything after the cut goes too.
                ending.doomed.push(path);
                ending.doomed_firsts.push(first);
                continue;
            }
            let file = File::open(&path).map_err(io_error("open", &path))?;
            let mut last = 0u64;
            let mut last_bytes: Option<Vec<u8>> = None;
            let mut disorder = None;
            let mut count = 0u64;
            let (end, why) = scan_file(
                &file,
                0,
                &mut log.chunk,
                true,
                &mut |position, payload, _| {
                    if position <= previous || (first > 0 && count == 0 && position < first) {
                        disorder = Some(position);
                        return false;
                    }
                    previous = position;
                    last = position;
                    count += 1;
                    last_bytes = Some(payload.to_vec());
                    true
                },
            )
            .map_err(io_error("read", &path))?;
            let why = why.or_else(|| disorder.map(|position| BadFrame::OutOfOrder { position }));
            let file_len = file.metadata().map_err(io_error("read", &path))?.len();
            if let Some(why) = why {
                ending.cut = Some(Cut {
                    path: path.clone(),
                    keep: end,
                    dropped: file_len - end,
                    reason: format!("{}: {why}", path.display()),
                });
            }
            if let Some(bytes) = last_bytes {
                ending.last = Some((last, bytes));
            }
            log.segments.insert(
                first,
                Segment {
                    path,
                    last,
                    len: end,
                },
            );
        }
        Ok((log, ending))
    }

    /// Cuts the log where [`Log::open`] found it ends (a write interrupted by a crash) and
    /// deletes the segments after that point.
    pub(crate) fn cut(&mut self, ending: &Ending) -> Result<(), SegmentError> {
        if self.read_only {
            // Reads already stop at the cut; the files stay as they are.
            return Ok(());
        }
        if let Some(cut) = &ending.cut {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&cut.path)
                .map_err(io_error("open", &cut.path))?;
            file.set_len(cut.keep)
                .and_then(|()| file.sync_all())
                .map_err(io_error("cut", &cut.path))?;
        }
        for path in &ending.doomed {
            std::fs::remove_file(path).map_err(io_error("delete", path))?;
        }
        self.changes
            .extend(ending.doomed_firsts.iter().map(|first| (*first, false)));
        if ending.cut.is_some() || !ending.doomed.is_empty() {
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error("sync", &self.dir))?;
        }
        Ok(())
    }

    /// Starts a batch: rolls over to a new segment if the current one is full, and remembers
    /// where the batch starts so [`Log::reset`] can take it back.
    pub(crate) fn begin(&mut self, next_position: u64) -> Result<Mark, SegmentError> {
        let need_new = match self.writer {
            None => true,
            Some((first, _)) => self
                .segments
                .get(&first)
                .is_none_or(|s| s.len >= SEGMENT_BYTES),
        };
        if need_new {
            self.roll(next_position)?;
        }
        let segment = self.writer_segment();
        Ok(Mark {
            pending: self.pending.len(),
            last: segment.map_or(0, |s| s.last),
            len: segment.map_or(0, |s| s.len),
            written_out: false,
        })
    }

    fn writer_segment(&self) -> Option<&Segment> {
        self.writer
            .as_ref()
            .and_then(|(first, _)| self.segments.get(first))
    }

    /// Makes the last segment the writer if it has room, else creates a new one starting at
    /// `next_position`.
    fn roll(&mut self, next_position: u64) -> Result<(), SegmentError> {
        if self.read_only {
            return Err(SegmentError::ReadOnly);
        }
        self.write_out()?;
        if let Some((&first, segment)) = self.segments.iter().next_back() {
            if self.writer.is_none() && segment.len < SEGMENT_BYTES && first <= next_position {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(io_error("open", &segment.path))?;
                self.writer = Some((first, Arc::new(file)));
                return Ok(());
            }
        }
        // An empty last segment named above the next position (its creation survived a power
        // cut that took the records it was made for): replace it.
        if let Some((&first, segment)) = self.segments.iter().next_back() {
            if first > next_position && segment.len == 0 {
                let path = segment.path.clone();
                std::fs::remove_file(&path).map_err(io_error("delete", &path))?;
                self.changes.push((first, false));
                self.segments.remove(&first);
                self.forget_cursors(first);
                if matches!(self.writer, Some((w, _)) if w == first) {
                    self.writer = None;
                }
            }
        }
        let path = self.dir.join(segment_name(next_position));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        self.segments.insert(
            next_position,
            Segment {
                path,
                last: 0,
                len: 0,
            },
        );
        self.changes.push((next_position, true));
        self.writer = Some((next_position, Arc::new(file)));
        self.dir_dirty = true;
        Ok(())
    }

    /// Appends a frame to the writer segment (call [`Log::begin`] first).
    pub(crate) fn append(&mut self, position: u64, bytes: &[u8]) -> Result<(), SegmentError> {
        let Some((first, _)) = self.writer else {
            return Err(SegmentError::NoOpenSegment);
        };
        let before = self.pending.len();
        if self.recent.first.is_none() {
            self.recent.first = Some(position);
        }
        encode_frame(&mut self.pending, position, bytes);
        let added = (self.pending.len() - before) as u64;
        if let Some(segment) = self.segments.get_mut(&first) {
            segment.last = position;
            segment.len += added;
        }
        Ok(())
    }

    /// Ends a batch: hands the buffer to the kernel if it is big.
    pub(crate) fn end(&mut self) -> Result<(), SegmentError> {
        if self.pending.len() >= WRITE_OUT_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    /// Takes back what was appended since `mark` (a failed batch).
    pub(crate) fn reset(&mut self, mark: Mark) -> Result<(), SegmentError> {
        if mark.written_out || self.pending.len() < mark.pending {
            return Err(SegmentError::WrittenOut);
        }
        self.pending.truncate(mark.pending);
        self.recent.cursors = [None; 2];
        if self.pending.is_empty() && self.recent.written.is_empty() {
            self.recent.first = None;
        }
        if let Some((first, _)) = self.writer {
            if let Some(segment) = self.segments.get_mut(&first) {
                segment.last = mark.last;
                segment.len = mark.len;
            }
        }
        Ok(())
    }

    /// Hands buffered frames to the kernel.
    pub(crate) fn write_out(&mut self) -> Result<(), SegmentError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(torn) = &self.torn {
            return Err(SegmentError::Torn(torn.clone()));
        }
        let Some((first, file)) = &self.writer else {
            return Err(SegmentError::NoOpenSegment);
        };
        if let Some(messages) = &self.messages {
            super::messages::lock(messages)
                .write_dirty()
                .map_err(|source| SegmentError::Messages { source })?;
        }
        let mut writer: &File = file;
        if let Err(err) = writer.write_all(&self.pending) {
            // Take back whatever part of the buffer reached the file, so a retry cannot leave
            // a torn frame in the middle of the segment.
            let on_disk = self
                .segments
                .get(first)
                .map_or(0, |s| s.len - self.pending.len() as u64);
            let error = SegmentError::WriteOut {
                path: self.dir.join(segment_name(*first)),
                source: err,
                undo: file.set_len(on_disk).err(),
            };
            if let SegmentError::WriteOut { undo: Some(_), .. } = error {
                let torn = Arc::new(error);
                self.torn = Some(torn.clone());
                return Err(SegmentError::Torn(torn));
            }
            return Err(error);
        }
        self.recent.keep(&self.pending);
        self.pending.clear();
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, file)) {
            self.unsynced.push(file.clone());
        }
        Ok(())
    }

    /// From now on, hands `messages`' changes to the kernel before any frame.
    pub(crate) fn attach_messages(&mut self, messages: super::messages::SharedMessages) {
        self.messages = Some(messages);
    }

    /// Whether a failed write could not be taken back (nothing can be written any more).
    pub(crate) fn is_torn(&self) -> bool {
        self.torn.is_some()
    }

    /// Writes out what is buffered and returns what a flush must fsync to make everything
    /// appended so far durable.
    pub(crate) fn sync_job(&mut self) -> Result<SyncJob, SegmentError> {
        self.write_out()?;
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        Ok(SyncJob {
            files: std::mem::take(&mut self.unsynced),
            dir,
        })
    }

    /// Reads frames with positions in `after < position <= until`, in order, until `each`
    /// returns false. Sequential reads continue where the last one stopped.
    pub(crate) fn read(
        &mut self,
        after: u64,
        until: u64,
        each: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), SegmentError> {
        self.read_frames(after, until, true, each)
    }

    /// Records and bytes with positions in `after < position <= until`, without checking
    /// CRCs (they are checked when the records are read to be sent). Has its own cursor, so
    /// counting what was acknowledged behind the reads does not scan from a segment's start.
    pub(crate) fn count(&mut self, after: u64, until: u64) -> Result<(u64, u64), SegmentError> {
        let (mut records, mut bytes) = (0u64, 0u64);
        self.read_frames(after, until, false, &mut |_, payload| {
            records += 1;
            bytes += payload.len() as u64;
            true
        })?;
        Ok((records, bytes))
    }

    /// [`Log::read`], checking CRCs only with `verify`.
    fn read_frames(
        &mut self,
        after: u64,
        until: u64,
        verify: bool,
        each: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), SegmentError> {
        if after >= until {
            return Ok(());
        }
        if self.read_recent(after, until, usize::from(!verify), each)? {
            return Ok(());
        }
        self.write_out()?;
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        // The segment holding after + 1: the last one starting at or before it.
        let start = firsts
            .iter()
            .rposition(|&first| first <= after + 1)
            .unwrap_or(0);
        let mut cursor_out = None;
        for &first in &firsts[start..] {
            if first > until {
                break;
            }
            let Some(segment) = self.segments.get(&first) else {
                continue;
            };
            if segment.last != 0 && segment.last <= after {
                continue;
            }
            let cursor = if verify {
                self.cursor
            } else {
                self.count_cursor
            };
            let offset = match cursor {
                Some(c) if c.segment == first && c.next <= after + 1 => c.offset,
                _ => 0,
            };
            let file = File::open(&segment.path).map_err(io_error("open", &segment.path))?;
            let mut stopped = false;
            let mut resume = None;
            let (end, why) = scan_file(
                &file,
                offset,
                &mut self.chunk,
                verify,
                &mut |position, payload, at| {
                    if position <= after {
                        resume = Some((at, position));
                        return true;
                    }
                    if position > until || !each(position, payload) {
                        stopped = true;
                        return false;
                    }
                    resume = Some((at, position));
                    true
                },
            )
            .map_err(io_error("read", &segment.path))?;
            if let (Some(why), false) = (why, stopped) {
                // The open cut the log at its first bad frame: one now is damage, never skipped.
                // Read-only, the cut was not made: the log ends where the open found it does.
                if !(self.read_only && end >= segment.len) {
                    return Err(SegmentError::Damaged {
                        path: segment.path.clone(),
                        frame: why,
                    });
                }
            }
            // Resume at the frame after the last one delivered or skipped.
            cursor_out = Some(Cursor {
                segment: first,
                offset: end,
                next: resume.map_or(after + 1, |(_, position)| position + 1),
            });
            if stopped {
                break;
            }
        }
        if cursor_out.is_some() {
            if verify {
                self.cursor = cursor_out;
            } else {
                self.count_cursor = cursor_out;
            }
        }
        Ok(())
    }

    /// Drops the frames at or below `position` from memory.
    fn forget_recent_through(&mut self, position: u64) {
        if self.recent.first.is_none_or(|first| first > position) {
            return;
        }
        self.recent
            .drop_front(&self.pending, |frame, _| frame > position);
    }

    /// [`Log::read_frames`] from memory, when every frame above `after` is there; returns
    /// whether it was. Sequential reads continue where the last one stopped.
    fn read_recent(
        &mut self,
        after: u64,
        until: u64,
        cursor: usize,
        each: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<bool, SegmentError> {
        let recent = &mut self.recent;
        match recent.first {
            Some(first) if first <= after.saturating_add(1) => {}
            _ => return Ok(false),
        }
        let in_memory = recent.written.len() + self.pending.len();
        // Offset into `written` then `pending`: from the cursor when it is at or before
        // `after + 1` (every frame before it is at or below `after`).
        let mut at = match recent.cursors[cursor] {
            Some((next, offset)) if next <= after.saturating_add(1) && offset >= recent.dropped => {
                usize::try_from(offset - recent.dropped)
                    .unwrap_or(usize::MAX)
                    .min(in_memory)
            }
            _ => 0,
        };
        while at < in_memory {
            let (frames, start) = if at < recent.written.len() {
                (&recent.written[..], at)
            } else {
                (&self.pending[..], at - recent.written.len())
            };
            let Decoded::Frame(position, payload, size) = decode_frame(&frames[start..], false)
            else {
                return Err(SegmentError::MemoryDamaged);
            };
            if position > after && (position > until || !each(position, payload)) {
                break;
            }
            at += size;
            recent.cursors[cursor] = Some((position + 1, recent.dropped + at as u64));
        }
        Ok(true)
    }

    /// The first position of the segment after the one holding `position` (`u64::MAX` when it
    /// is in the last segment).
    pub(crate) fn segment_end(&self, position: u64) -> u64 {
        self.segments
            .range(position.saturating_add(1)..)
            .next()
            .map_or(u64::MAX, |(first, _)| *first)
    }

    /// Whether [`Log::delete_through`] would delete a file.
    pub(crate) fn would_delete(&self, position: u64) -> bool {
        let last_first = self.segments.keys().next_back().copied();
        self.segments.iter().any(|(first, segment)| {
            Some(*first) != last_first && *first <= position && segment.last <= position
        })
    }

    /// The first positions (names) of the segment files with their lengths, in order.
    pub(crate) fn segment_lengths(&self) -> Vec<(u64, u64)> {
        self.segments
            .iter()
            .map(|(first, segment)| (*first, segment.len))
            .collect()
    }

    /// The segments created (`true`) and deleted (`false`) since the last call, in order.
    pub(crate) fn take_changes(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.changes)
    }

    /// Deletes every segment that starts at or below `position` and whose frames are all at or
    /// below it, except the last segment. Returns how many files went. (A segment emptied by
    /// evictions above `position` stays until then: a segment missing above the acknowledged
    /// position is damage to the open.)
    pub(crate) fn delete_through(&mut self, position: u64) -> Result<usize, SegmentError> {
        if self.read_only {
            return Ok(0);
        }
        let last_first = self.segments.keys().next_back().copied();
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, segment)| {
                Some(**first) != last_first && **first <= position && segment.last <= position
            })
            .map(|(first, _)| *first)
            .collect();
        for first in &doomed {
            if let Some(segment) = self.segments.remove(first) {
                if let Err(err) = std::fs::remove_file(&segment.path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        return Err(io_error("delete", &segment.path)(err));
                    }
                }
                self.changes.push((*first, false));
            }
            if matches!(self.writer, Some((w, _)) if w == *first) {
                self.writer = None;
            }
            self.forget_cursors(*first);
        }
        if !doomed.is_empty() {
            self.dir_dirty = true;
            // Memory mirrors the files: the deleted frames go from there too.
            if let Some(through) = self.segments.keys().next().map(|first| first - 1) {
                self.forget_recent_through(through);
            }
        }
        Ok(doomed.len())
    }

    /// Rewrites the segments holding `positions` without those frames (dead-lettering,
    /// eviction). `positions` must be sorted. Durable when it returns (fsynced and renamed).
    pub(crate) fn drop_frames(&mut self, positions: &[u64]) -> Result<(), SegmentError> {
        if positions.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(SegmentError::ReadOnly);
        }
        self.write_out()?;
        // Written out just now; the rewrite is read from the files from now on.
        self.recent.clear();
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut touched = Vec::new();
        for &position in positions {
            if let Some(index) = firsts.iter().rposition(|&first| first <= position) {
                if touched.last() != Some(&firsts[index]) {
                    touched.push(firsts[index]);
                }
            }
        }
        for first in touched {
            let Some(segment) = self.segments.get(&first) else {
                continue;
            };
            let path = segment.path.clone();
            let tmp = self.dir.join(format!("{first:020}{TMP_SUFFIX}"));
            let source = File::open(&path).map_err(io_error("open", &path))?;
            let mut out = Vec::new();
            let mut last = 0u64;
            let (_, why) = scan_file(
                &source,
                0,
                &mut self.chunk,
                true,
                &mut |position, payload, _| {
                    if positions.binary_search(&position).is_err() {
                        encode_frame(&mut out, position, payload);
                        last = position;
                    }
                    true
                },
            )
            .map_err(io_error("read", &path))?;
            if let Some(why) = why {
                return Err(SegmentError::Rewrite { path, frame: why });
            }
            let write = || -> std::io::Result<()> {
                let mut file = File::create(&tmp)?;
                file.write_all(&out)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                File::open(&self.dir)?.sync_all()
            };
            write().map_err(io_error("rewrite", &path))?;
            let was_writer = matches!(self.writer, Some((w, _)) if w == first);
            if let Some(segment) = self.segments.get_mut(&first) {
                segment.last = last;
                segment.len = out.len() as u64;
            }
            if was_writer {
                self.writer = None;
                // The next `begin` reopens the (rewritten) file for appends.
            }
            self.forget_cursors(first);
        }
        Ok(())
    }

    /// Drops the cursors into segment `first` (deleted or rewritten).
    fn forget_cursors(&mut self, first: u64) {
        for cursor in [&mut self.cursor, &mut self.count_cursor] {
            if matches!(cursor, Some(c) if c.segment == first) {
                *cursor = None;
            }
        }
    }

    /// The first frame above `after`, if any.
    pub(crate) fn first_after(&mut self, after: u64) -> Result<Option<Frame>, SegmentError> {
        let mut found = None;
        self.read(after, u64::MAX, &mut |position, payload| {
            found = Some(Frame {
                position,
                bytes: payload.to_vec(),
            });
            false
        })?;
        Ok(found)
    }

    /// The last frame, if any (it may be at or below what HQ acknowledged).
    pub(crate) fn last(&mut self) -> Result<Option<Frame>, SegmentError> {
        self.write_out()?;
        for segment in self.segments.values().rev() {
            if segment.len == 0 {
                continue;
            }
            let file = File::open(&segment.path).map_err(io_error("open", &segment.path))?;
            let mut found = None;
            scan_file(
                &file,
                0,
                &mut self.chunk,
                true,
                &mut |position, payload, _| {
                    if position == segment.last {
                        found = Some(Frame {
                            position,
                            bytes: payload.to_vec(),
                        });
                    }
                    true
                },
            )
            .map_err(io_error("read", &segment.path))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// Where an opened log ends, found by [`Log::open`].
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// Position and bytes of the last whole frame.
    pub(crate) last: Option<(u64, Vec<u8>)>,
    /// The first bad or short frame, if any.
    pub(crate) cut: Option<Cut>,
    /// Segments after the cut.
    pub(crate) doomed: Vec<PathBuf>,
    /// The first positions (names) of the `doomed` segments.
    pub(crate) doomed_firsts: Vec<u64>,
}

/// A log that ends inside a segment.
#[derive(Debug)]
pub(crate) struct Cut {
    /// The segment.
    path: PathBuf,
    /// Bytes kept.
    keep: u64,
    /// Bytes dropped.
    pub(crate) dropped: u64,
    /// Which file and why.
    pub(crate) reason: String,
}

#[cfg(test)]
impl Log {
    /// Appends `bytes` at each position, one batch per record (tests).
    fn append_each(&mut self, positions: std::ops::RangeInclusive<u64>, bytes: &[u8]) {
        for position in positions {
            self.begin(position).expect("begin");
            self.append(position, bytes).expect("append");
            self.end().expect("end");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fsyncs everything appended to `log` so far.
    pub(super) fn sync(log: &mut Log) {
        log.sync_job().expect("job").run().expect("sync");
    }

    /// Sets the length of the file at `path`.
    pub(super) fn set_len(path: &Path, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(len)
            .expect("set length");
    }

    /// Writes frames `positions` ([`payload`]) to a new log in `dir`, makes them durable and
    /// closes the log; returns its (first) segment file.
    fn durable_log(dir: &Path, positions: std::ops::RangeInclusive<u64>) -> PathBuf {
        let (mut log, _) = Log::open(dir).expect("open");
        append_all(&mut log, positions);
        sync(&mut log);
        let path = log.segments.values().next().expect("segment").path.clone();
        drop(log);
        path
    }

    /// Why the log that `ending` describes ends early.
    fn cut_reason(ending: &Ending) -> &str {
        &ending.cut.as_ref().expect("cut").reason
    }

    fn payload(position: u64) -> Vec<u8> {
        format!(
            "{{\"seq\":{position},\"pad\":\"{}\"}}",
            "x".repeat((position % 50) as usize)
        )
        .into_bytes()
    }

    fn append_all(log: &mut Log, positions: std::ops::RangeInclusive<u64>) {
        let first = *positions.start();
        log.begin(first).expect("begin");
        for position in positions {
            log.append(position, &payload(position)).expect("append");
        }
        log.end().expect("end");
    }

    /// Every frame read in `after < position <= until`, as (position, bytes).
    fn frames(log: &mut Log, after: u64, until: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        log.read(after, until, &mut |position, bytes| {
            out.push((position, bytes.to_vec()));
            true
        })
        .expect("read");
        out
    }

    /// The positions read in `after < position <= until`, each checked against [`payload`].
    fn collect(log: &mut Log, after: u64, until: u64) -> Vec<u64> {
        frames(log, after, until)
            .into_iter()
            .map(|(position, bytes)| {
                assert_eq!(bytes, payload(position));
                position
            })
            .collect()
    }

    #[test]
    fn appends_read_back_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, ending) = Log::open(dir.path()).expect("open");
        assert!(ending.last.is_none());
        // Big batches so several segments are made.
        let big = vec![b'y'; 600_000];
        log.append_each(1..=40, &big);
        sync(&mut log);
        assert!(log.segments.len() >= 2, "{} segments", log.segments.len());
        let mut seen = Vec::new();
        log.read(0, u64::MAX, &mut |p, _| {
            seen.push(p);
            true
        })
        .expect("read");
        assert_eq!(seen, (1..=40).collect::<Vec<_>>());
        drop(log);
        let (_, ending) = Log::open(dir.path()).expect("reopen");
        assert!(ending.cut.is_none(), "{:?}", ending.cut);
        assert_eq!(ending.last.map(|(p, _)| p), Some(40));
    }

    #[test]
    fn sequential_reads_resume_and_random_reads_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        append_all(&mut log, 1..=1000);
        let mut got = Vec::new();
        let mut after = 0;
        while after < 1000 {
            let mut batch = Vec::new();
            log.read(after, 1000, &mut |position, _| {
                batch.push(position);
                batch.len() < 37
            })
            .expect("read");
            after = *batch.last().expect("some");
            got.extend(batch);
        }
        assert_eq!(got, (1..=1000).collect::<Vec<_>>());
        assert_eq!(collect(&mut log, 500, 505), vec![501, 502, 503, 504, 505]);
        assert_eq!(collect(&mut log, 10, 12), vec![11, 12]);
        assert_eq!(collect(&mut log, 999, 2000), vec![1000]);
        assert!(collect(&mut log, 1000, 2000).is_empty());
    }

    #[test]
    fn a_torn_tail_is_found_and_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = durable_log(dir.path(), 1..=10);
        let len = std::fs::metadata(&path).expect("meta").len();
        set_len(&path, len - 5);
        let (mut log, ending) = Log::open(dir.path()).expect("reopen");
        assert_eq!(ending.last.as_ref().map(|(p, _)| *p), Some(9));
        assert!(cut_reason(&ending).contains("cut short"));
        log.cut(&ending).expect("cut");
        append_all(&mut log, 10..=12);
        assert_eq!(collect(&mut log, 0, 100), (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_byte_ends_the_log_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = durable_log(dir.path(), 1..=10);
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write");
        let (_, ending) = Log::open(dir.path()).expect("reopen");
        let last = ending.last.as_ref().map(|(p, _)| *p).expect("last");
        assert!((3..=6).contains(&last), "last {last}");
        assert!(cut_reason(&ending).contains("checksum"));
    }

    #[test]
    fn dropped_frames_are_gone_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        append_all(&mut log, 1..=20);
        log.drop_frames(&[2, 3, 20]).expect("drop");
        append_all(&mut log, 21..=22);
        let expected: Vec<u64> = (1..=22).filter(|p| ![2, 3, 20].contains(p)).collect();
        assert_eq!(collect(&mut log, 0, 100), expected);
        sync(&mut log);
        drop(log);
        let (mut log, ending) = Log::open(dir.path()).expect("reopen");
        assert_eq!(ending.last.map(|(p, _)| p), Some(22));
        assert_eq!(collect(&mut log, 0, 100), expected);
    }

    /// Every frame read from `after` on.
    fn frames_after(log: &mut Log, after: u64) -> Vec<(u64, Vec<u8>)> {
        frames(log, after, u64::MAX)
    }

    #[test]
    fn the_newest_frames_are_read_from_memory_and_agree_with_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        let body = |position: u64| format!("{position}:{}", "x".repeat(2000)).into_bytes();
        let mut next = 1u64;
        // 60 batches of 100 frames of 2 KB: past the memory's size (trimmed) and over two
        // segments, with a taken-back batch, dropped frames and deleted segments on the way.
        for round in 0..60 {
            log.begin(next).expect("begin");
            for position in next..next + 100 {
                log.append(position, &body(position)).expect("append");
            }
            log.end().expect("end");
            next += 100;
            match round {
                10 => {
                    let mark = log.begin(next).expect("begin");
                    log.append(next, &body(next)).expect("append");
                    log.reset(mark).expect("reset");
                }
                20 => log.drop_frames(&[next - 700, next - 3]).expect("drop"),
                50 => {
                    let deleted = log.delete_through(next - 500).expect("delete");
                    assert_eq!(deleted, 1, "the first segment is all acknowledged");
                }
                _ => {}
            }
            if round % 3 == 0 {
                sync(&mut log);
            }
            // Reads close behind the appends come from memory (frames not yet written out
            // included), except right after a rewrite; memory, files and a log opened afresh
            // from the files give the same frames.
            let close = next - 50;
            let mut from_memory = Vec::new();
            let served = log
                .read_recent(close, u64::MAX, 0, &mut |position, bytes| {
                    from_memory.push((position, bytes.to_vec()));
                    true
                })
                .expect("read from memory");
            assert_eq!(served, round != 20, "round {round}: read from memory");
            let further = next.saturating_sub(900);
            let read = frames_after(&mut log, further);
            sync(&mut log);
            let (mut files, _) = Log::open(dir.path()).expect("reopen");
            assert_eq!(read, frames_after(&mut files, further), "round {round}");
            if served {
                assert_eq!(
                    from_memory,
                    frames_after(&mut files, close),
                    "round {round}"
                );
            }
        }
        assert!(
            log.recent.written.len() <= RECENT_BYTES + WRITE_OUT_BYTES,
            "memory stays bounded: {} bytes",
            log.recent.written.len()
        );
        // Reads further back go to the files.
        assert!(!log
            .read_recent(100, u64::MAX, 0, &mut |_, _| true)
            .expect("read"));
        assert_eq!(frames_after(&mut log, next - 1 - 1500).len(), 1500);
    }

    #[test]
    fn a_failed_batch_is_taken_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        append_all(&mut log, 1..=3);
        let mark = log.begin(4).expect("begin");
        log.append(4, &payload(4)).expect("append");
        log.reset(mark).expect("reset");
        append_all(&mut log, 4..=5);
        assert_eq!(collect(&mut log, 0, 100), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_segment_file_gone_under_the_log_is_an_error_that_keeps_its_io_kind_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = durable_log(dir.path(), 1..=10);
        // Opened afresh, nothing is in memory: a read goes to the file.
        let (mut log, _) = Log::open(dir.path()).expect("reopen");
        std::fs::remove_file(&path).expect("delete the segment");
        let err = log
            .read(0, u64::MAX, &mut |_, _| true)
            .expect_err("the file is gone");
        match &err {
            SegmentError::Io {
                action,
                path: at,
                source,
            } => {
                assert_eq!((*action, at), ("open", &path));
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        let source = std::error::Error::source(&err)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .expect("the I/O error is the source");
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot open {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn whole_acknowledged_segments_are_deleted_but_never_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        let big = vec![b'z'; 3_000_000];
        log.append_each(1..=6, &big);
        let before = log.segments.len();
        assert!(before >= 2);
        assert_eq!(log.delete_through(6).expect("delete"), before - 1);
        assert_eq!(log.last().expect("last").map(|f| f.position), Some(6));
        log.begin(7).expect("begin");
        log.append(7, b"{}").expect("append");
        assert_eq!(
            log.first_after(6).expect("first").map(|f| f.position),
            Some(7)
        );
    }
}

#[cfg(test)]
mod crash_tests {
    use super::tests::{set_len, sync};
    use super::*;

    /// Power cut after a roll: the new (empty) segment's directory entry reached the disk, the
    /// unsynced tail of the previous segment did not. The next open continues at a position
    /// below the empty segment's name, `roll` reuses that segment, and the open after that
    /// rejects (cuts) the records written into it, although they were fsynced.
    #[test]
    fn an_empty_segment_named_above_the_next_position_is_replaced_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        let big = vec![b'a'; 3_000_000];
        log.append_each(1..=2, &big);
        sync(&mut log); // 1, 2 durable
        let durable_len = std::fs::metadata(dir.path().join("segments").join(segment_name(1)))
            .expect("meta")
            .len();
        log.begin(3).expect("begin");
        log.append(3, &big).expect("append"); // segment 1 now >= 8 MiB
        log.end().expect("end");
        log.begin(4).expect("begin"); // rolls: creates ...4.seg
        log.append(4, b"{}").expect("append");
        drop(log);
        // Power cut: the unsynced tail of segment 1 is gone (cleanly, at a frame boundary), the
        // creation of segment 4 reached the disk, its data did not.
        let seg1 = dir.path().join("segments").join(segment_name(1));
        let seg4 = dir.path().join("segments").join(segment_name(4));
        set_len(&seg1, durable_len);
        set_len(&seg4, 0);

        let (mut log, ending) = Log::open(dir.path()).expect("reopen");
        assert!(ending.cut.is_none());
        assert_eq!(ending.last.as_ref().map(|(p, _)| *p), Some(2));
        log.cut(&ending).expect("cut");
        // The journal continues at position 3 and makes it durable.
        log.begin(3).expect("begin");
        log.append(3, b"{\"confirmed\":true}").expect("append");
        log.end().expect("end");
        sync(&mut log);
        drop(log);

        let (_, ending) = Log::open(dir.path()).expect("reopen 2");
        assert!(
            ending.cut.is_none(),
            "durable record 3 is cut: {:?}",
            ending.cut
        );
        assert_eq!(ending.last.map(|(p, _)| p), Some(3));
    }

    /// A damaged frame in the middle of a segment (bit rot, or the torn write-out above): the
    /// reader silently goes on with the next segment, and a rewrite silently drops every frame
    /// after the damaged one.
    #[test]
    fn a_bad_frame_in_the_middle_of_a_segment_is_an_error_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = Log::open(dir.path()).expect("open");
        let big = vec![b'b'; 3_000_000];
        log.append_each(1..=3, &big);
        log.begin(4).expect("begin"); // new segment
        log.append(4, b"{}").expect("append");
        sync(&mut log);
        // Flip a byte inside frame 2 of segment 1.
        let seg1 = dir.path().join("segments").join(segment_name(1));
        let file = std::fs::OpenOptions::new().write(true).open(&seg1).unwrap();
        file.write_at(b"X", 3_000_016 + 16 + 10).unwrap();
        let mut seen = Vec::new();
        let result = log.read(0, u64::MAX, &mut |p, _| {
            seen.push(p);
            true
        });
        assert!(result.is_err(), "records 2, 3 skipped silently: {seen:?}");
        assert_eq!(seen, vec![1]);
        // A rewrite of that segment refuses too, rather than dropping what follows the damage.
        assert!(log.drop_frames(&[1]).is_err());
    }
}
