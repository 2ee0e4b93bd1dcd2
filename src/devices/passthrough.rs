//! Passthrough: re-emit every byte a device sends, unchanged, on another path, and hand what
//! the far side answers back to the device, unchanged.
//!
//! The gateway sits between a device and the software that used to own it (the POS reading the
//! scanner, the printer fed by the register). That link is two-way: a register polls its
//! printer's status (`DLE EOT n`, ASB) and many POS programs refuse to print without an answer;
//! POS software sends scanners commands. Each passthrough is one writer task that owns its
//! output port and reads it too:
//! - device → far side: the device task hands it bytes through a bounded [`Outbox`] and never
//!   waits for it, so a stalled reader on the far side can never slow down the scanner path;
//! - far side → device: what the task reads from the port goes into a second bounded outbox
//!   that the device task drains into the device's port (see [`Pump`]). Those bytes are never
//!   framed or decoded: a printer's status bytes are not receipt data.
//!
//! Both outboxes are bounded by bytes ([`OUT_BUDGET`], [`BACK_BUDGET`]), not by chunks: a
//! device that delivers one byte per read must not hit a limit meant for 8 KiB reads, and
//! small writes are coalesced into one. The budget covers every byte not yet written: those
//! queued and those the writer has taken but the port has not accepted yet (the writer takes
//! the whole queue at once, so counting only the queue would let twice the budget wait, and
//! whether anything was dropped would depend on when the writer got to run). What does not fit
//! is dropped whole and counted
//! ([`DirectionCounters`]: `posgw_passthrough_dropped_bytes_total` and
//! `posgw_passthrough_dropped_chunks_total` by device and direction, and the device's
//! `passthrough` in `/api/v1/status`), with a warning at most every [`WARN_EVERY`].
//!
//! The target is either
//! - an existing serial device (a character device, a link to one, or a link to a live
//!   pseudo-terminal: a virtual serial bridge made by socat or ser2net, see [`open_target`]),
//!   opened with the device's own line settings; when it fails (the USB-serial adapter to the
//!   printer was unplugged) it is reopened every [`REOPEN_EVERY`], and bytes meanwhile are
//!   dropped (and counted) as they would be on a cut cable; or
//! - a pseudo-terminal the gateway creates, with `path` made a symlink to its slave side. The
//!   gateway keeps the slave open so the link stays valid while the POS software opens and closes
//!   it; a stale link left by an earlier run is replaced. The link is removed when the task ends.
//!   Because the kernel keeps what nobody reads, bytes still unread after [`STALE_AFTER`] (no POS
//!   attached) are discarded before the next write: a POS that starts later must not receive
//!   old scans and add them to a sale.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::LineSettings;

use super::line::builder;

/// Bytes that may wait for a slow passthrough reader (queued or taken by the writer and not yet
/// written) before new ones are dropped (and counted). A scanner sends tens of bytes a second
/// and a register a few KiB a receipt: this is minutes of either, and at most this much memory
/// per device.
pub const OUT_BUDGET: usize = 1024 * 1024;

/// Bytes from the far side (status replies, scanner commands) that may wait for the device's
/// port; more than any status poll or command sequence, small because stale answers are wrong.
pub const BACK_BUDGET: usize = 64 * 1024;

/// Bytes left unread in the pseudo-terminal this long after they were written have no reader.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How often a serial passthrough target that failed is tried again.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// At most one warning about dropped bytes per outbox this often (the counters have them all).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long a stopping passthrough may take to write what is still queued.
const DRAIN_AT_STOP: Duration = Duration::from_secs(1);

/// Read buffer for what the far side sends back (status bytes, short commands).
const READ_BUFFER: usize = 4096;

/// Above this capacity an emptied buffer gives its memory back.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Counts for one direction of a passthrough. Shared handles: the owner of the direction bumps
/// them, `/metrics` and `/api/v1/status` read them.
#[derive(Debug, Clone, Default)]
pub struct DirectionCounters {
    /// Bytes written on (`posgw_passthrough_bytes_total`).
    pub bytes: Counter,
    /// Bytes dropped because the queue was full or the port was gone
    /// (`posgw_passthrough_dropped_bytes_total`).
    pub dropped_bytes: Counter,
    /// Writes (reads of the other side) dropped whole, for the same reasons
    /// (`posgw_passthrough_dropped_chunks_total`).
    pub dropped_chunks: Counter,
}

/// Both directions of one device's passthrough.
#[derive(Debug, Clone, Default)]
pub struct PassthroughCounters {
    /// Device → passthrough (scanner → POS, register → printer), label `to_passthrough`.
    pub to_passthrough: DirectionCounters,
    /// Passthrough → device (printer status → register, POS commands → scanner), label
    /// `to_device`.
    pub to_device: DirectionCounters,
}

/// A byte queue between one producer that must never wait and one consumer, bounded by bytes.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    budget: usize,
    counters: DirectionCounters,
    /// For log lines: which passthrough and which direction.
    name: String,
}

#[derive(Debug, Default)]
struct Queue {
    bytes: Vec<u8>,
    /// Bytes the consumer took and has neither written nor dropped yet: they still count
    /// against the budget.
    taken: usize,
    warned_at: Option<Instant>,
}

impl Outbox {
    /// An empty outbox holding at most `budget` bytes.
    pub fn new(budget: usize, counters: DirectionCounters, name: String) -> Self {
        Outbox {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            budget,
            counters,
            name,
        }
    }

    /// Queues `bytes` whole, or drops them whole (and counts them) when they do not fit.
    /// Never waits. Returns whether they were queued.
    pub fn push(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.bytes.len() + queue.taken + bytes.len() > self.budget {
            self.counters.dropped_bytes.inc_by(bytes.len() as u64);
            self.counters.dropped_chunks.inc();
            if queue
                .warned_at
                .is_none_or(|warned| warned.elapsed() >= WARN_EVERY)
            {
                queue.warned_at = Some(Instant::now());
                tracing::warn!(
                    "{}: the reader is not keeping up; dropping bytes until it does ({} bytes in {} writes dropped so far)",
                    self.name,
                    self.counters.dropped_bytes.get(),
                    self.counters.dropped_chunks.get()
                );
            }
            return false;
        }
        let was_empty = queue.bytes.is_empty();
        queue.bytes.extend_from_slice(bytes);
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Moves everything queued into `into` (which must be empty). The bytes keep counting
    /// against the budget until they are [`released`](Outbox::release).
    fn take(&self, into: &mut Vec<u8>) {
        debug_assert!(into.is_empty());
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut queue.bytes, into);
        queue.taken += into.len();
    }

    /// Gives back the room of `bytes` taken bytes, written or dropped now.
    fn release(&self, bytes: usize) {
        if bytes > 0 {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            debug_assert!(bytes <= queue.taken);
            queue.taken = queue.taken.saturating_sub(bytes);
        }
    }

    /// Counts bytes that were taken but could not be written as dropped, and gives back their
    /// room.
    fn dropped(&self, bytes: usize) {
        if bytes > 0 {
            self.release(bytes);
            self.counters.dropped_bytes.inc_by(bytes as u64);
            self.counters.dropped_chunks.inc();
        }
    }
}

/// What [`Pump::next`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// New bytes were taken from the outbox; the last write was this long ago.
    Taken {
        /// Time since the previous write.
        idle: Duration,
    },
    /// This many bytes were written.
    Wrote(usize),
}

/// The consumer of an [`Outbox`]: writes its bytes to a port, in order. Its futures are
/// cancel-safe, so it can sit in a `select!` beside the port's reads.
#[derive(Debug)]
pub struct Pump {
    outbox: Arc<Outbox>,
    /// Bytes taken from the outbox; `pending[written..]` is still to be written.
    pending: Vec<u8>,
    written: usize,
    last_write: Instant,
}

impl Pump {
    /// A pump for `outbox`.
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Pump {
            outbox,
            pending: Vec::new(),
            written: 0,
            last_write: Instant::now(),
        }
    }

    fn has_pending(&self) -> bool {
        self.written < self.pending.len()
    }

    fn reset(&mut self) {
        self.pending.clear();
        self.written = 0;
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending.shrink_to(READ_BUFFER);
        }
    }

    /// Waits for bytes and takes them, or writes some of those taken to `to`. Cancel-safe:
    /// nothing taken is lost when the future is dropped.
    pub async fn next<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> io::Result<Pumped> {
        if !self.has_pending() {
            self.reset();
            loop {
                self.outbox.take(&mut self.pending);
                if !self.pending.is_empty() {
                    return Ok(Pumped::Taken {
                        idle: self.last_write.elapsed(),
                    });
                }
                self.outbox.ready.notified().await;
            }
        }
        let n = to.write(&self.pending[self.written..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.written += n;
        self.last_write = Instant::now();
        self.outbox.release(n);
        self.outbox.counters.bytes.inc_by(n as u64);
        Ok(Pumped::Wrote(n))
    }

    /// Waits until bytes are queued (taking them). Cancel-safe.
    pub async fn wait(&mut self) {
        while !self.has_pending() {
            self.reset();
            self.outbox.take(&mut self.pending);
            if self.pending.is_empty() {
                self.outbox.ready.notified().await;
            }
        }
    }

    /// Writes everything taken and queued now to `to`, without waiting for more.
    pub async fn drain<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> io::Result<()> {
        loop {
            if !self.has_pending() {
                self.reset();
                self.outbox.take(&mut self.pending);
                if self.pending.is_empty() {
                    return to.flush().await;
                }
            }
            self.next(to).await?;
        }
    }

    /// Drops (and counts) everything taken and queued: the port it was meant for is gone, or
    /// it has waited for a port that was not there and is stale now.
    pub fn discard(&mut self) {
        let unwritten = self.pending.len() - self.written;
        self.outbox.dropped(unwritten);
        self.reset();
        self.outbox.take(&mut self.pending);
        self.outbox.dropped(self.pending.len());
        self.reset();
    }
}

impl Drop for Pump {
    /// Bytes taken and never written are lost with the pump: counted, and their room given back.
    fn drop(&mut self) {
        self.outbox.dropped(self.pending.len() - self.written);
    }
}

/// The device task's side of a passthrough: cheap, never blocks. The passthrough's task ends
/// when the last handle is dropped (after writing out what is queued, for a moment).
#[derive(Debug, Clone)]
pub struct PassthroughHandle {
    /// Bytes for the far side, in order.
    out: Arc<Outbox>,
    /// Bytes the far side sent, for the device's port.
    back: Arc<Outbox>,
    /// Stops the passthrough's task when the last handle goes.
    _stop: Arc<DropGuard>,
}

impl PassthroughHandle {
    /// Queues `bytes` for the passthrough. If the far side has stalled long enough to fill the
    /// queue the chunk is dropped and counted: the device path must never wait for it.
    pub fn send(&self, bytes: &[u8]) {
        self.out.push(bytes);
    }

    /// A pump for what the far side sends back, to be written to the device's port by the task
    /// that owns it.
    pub fn back(&self) -> Pump {
        Pump::new(self.back.clone())
    }
}

/// How the target came to be, which decides how it is opened again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A pseudo-terminal of ours, linked at the path.
    OwnPty,
    /// A port that was there: a serial device, or a live pseudo-terminal behind a link.
    Existing,
}

/// The output side, owned by the passthrough task.
struct Target {
    /// What we write to and read from: the master of our pty, or the existing port.
    port: SerialStream,
    /// Our pseudo-terminal's slave and link, when the target is ours.
    own: Option<OwnPty>,
}

struct OwnPty {
    /// Held open so the link stays usable while the POS closes and reopens it.
    slave: SerialStream,
    link: PathBuf,
    slave_path: PathBuf,
}

impl Target {
    fn kind(&self) -> Kind {
        if self.own.is_some() {
            Kind::OwnPty
        } else {
            Kind::Existing
        }
    }

    /// Drops what the POS side of our pseudo-terminal has not read (nobody is reading it).
    fn discard_unread(&self) {
        if let Some(own) = &self.own {
            if own.slave.bytes_to_read().unwrap_or(0) > 0 {
                tracing::debug!("passthrough: nobody read the last scans; discarding them");
                let _ = own.slave.clear(tokio_serial::ClearBuffer::Input);
            }
        }
    }
}

impl Drop for OwnPty {
    fn drop(&mut self) {
        // Remove the link only if it is still ours: an admin may have repointed it.
        if std::fs::read_link(&self.link).ok().as_deref() == Some(self.slave_path.as_path()) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

/// Opens the passthrough target at `path` and spawns its task.
///
/// Fails when the path cannot be used (a regular file is there, the folder cannot be created,
/// the serial device cannot be opened); the caller reports that and runs the device without it.
pub fn spawn(
    path: &Path,
    line: &LineSettings,
    counters: PassthroughCounters,
) -> io::Result<PassthroughHandle> {
    let target = open_target(path, line)?;
    let shown = path.display();
    let out = Arc::new(Outbox::new(
        OUT_BUDGET,
        counters.to_passthrough,
        format!("passthrough {shown}"),
    ));
    let back = Arc::new(Outbox::new(
        BACK_BUDGET,
        counters.to_device,
        format!("passthrough {shown} (back to the device)"),
    ));
    let stop = CancellationToken::new();
    let task = PassthroughTask {
        path: path.to_path_buf(),
        line: line.clone(),
        kind: target.kind(),
        back: back.clone(),
    };
    tokio::spawn(task.run(target, Pump::new(out.clone()), stop.clone()));
    Ok(PassthroughHandle {
        out,
        back,
        _stop: Arc::new(stop.drop_guard()),
    })
}

/// One step of the passthrough task while its target is open.
enum Step {
    Stop,
    Taken(Duration),
    Wrote,
    Read(usize),
    Failed(String),
}

struct PassthroughTask {
    path: PathBuf,
    line: LineSettings,
    kind: Kind,
    back: Arc<Outbox>,
}

impl PassthroughTask {
    async fn run(self, target: Target, mut pump: Pump, stop: CancellationToken) {
        let mut target = Some(target);
        let mut buffer = vec![0u8; READ_BUFFER];
        let mut reopen_at = Instant::now();
        loop {
            let Some(open) = target.as_mut() else {
                // The port went away (USB unplug): bytes meanwhile are dropped, as they would
                // be on the wire, and counted; the port is tried again every REOPEN_EVERY.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = pump.wait() => pump.discard(),
                    () = tokio::time::sleep_until(reopen_at.into()) => {
                        match self.reopen() {
                            Ok(reopened) => {
                                tracing::info!(path = %self.path.display(), "passthrough reopened");
                                target = Some(reopened);
                            }
                            Err(_) => reopen_at = Instant::now() + REOPEN_EVERY,
                        }
                    }
                }
                continue;
            };
            let step = {
                let (mut reader, mut writer) = tokio::io::split(&mut open.port);
                tokio::select! {
                    () = stop.cancelled() => Step::Stop,
                    pumped = pump.next(&mut writer) => match pumped {
                        Ok(Pumped::Taken { idle }) => Step::Taken(idle),
                        Ok(Pumped::Wrote(_)) => Step::Wrote,
                        Err(error) => Step::Failed(format!("write failed: {error}")),
                    },
                    read = reader.read(&mut buffer) => match read {
                        Ok(0) => Step::Failed("end of file".into()),
                        Ok(n) => Step::Read(n),
                        Err(error) => Step::Failed(format!("read failed: {error}")),
                    },
                }
            };
            match step {
                Step::Stop => {
                    // The device task is gone: what it handed over still goes out, briefly.
                    let drained =
                        tokio::time::timeout(DRAIN_AT_STOP, pump.drain(&mut open.port)).await;
                    if !matches!(drained, Ok(Ok(()))) {
                        pump.discard();
                    }
                    // Dropping the target removes our link.
                    return;
                }
                Step::Taken(idle) => {
                    if idle > STALE_AFTER {
                        open.discard_unread();
                    }
                }
                Step::Wrote => {}
                // The far side answered: straight back to the device, undecoded.
                Step::Read(n) => {
                    self.back.push(&buffer[..n]);
                }
                Step::Failed(detail) => {
                    tracing::warn!(path = %self.path.display(), "passthrough {detail}; reopening");
                    // Dropping an own pty removes its link before a new one is made.
                    target = None;
                    pump.discard();
                    reopen_at = Instant::now() + REOPEN_EVERY;
                }
            }
        }
    }

    fn reopen(&self) -> io::Result<Target> {
        match self.kind {
            Kind::Existing => open_serial(&self.path, &self.line),
            Kind::OwnPty => create_pty(&self.path),
        }
    }
}

/// What a `passthrough` path that is a symlink leads to.
#[derive(Debug, PartialEq, Eq)]
enum LinkTarget {
    /// Nothing (a dangling link): ours from an earlier run, or a bridge that is gone.
    Nothing,
    /// A pseudo-terminal that someone holds and that is older than the link: a virtual serial
    /// bridge (socat, ser2net) made it and then the link. Used as it is.
    LivePty,
    /// A pseudo-terminal younger than the link: the one the link was made for is gone and its
    /// number was given to another (a login shell, another program). Never written to.
    ReusedPty,
    /// A serial device or anything else that exists (`/dev/serial/by-id/…`).
    Other,
}

/// Linux's Unix98 pseudo-terminal slaves (`/dev/pts/N`) have majors 136 to 143.
fn is_pty_slave(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let major = nix::sys::stat::major(meta.rdev());
    meta.file_type().is_char_device() && (136..=143).contains(&major)
}

/// Decides what the symlink at `path` (whose own metadata is `link`) leads to.
///
/// A pty exists exactly while someone holds its master: the kernel removes `/dev/pts/N` when
/// the master is closed, so a link left by an earlier run of ours dangles. But pty numbers are
/// reused (the lowest free one is given out), so a link whose pty is gone may point at a new,
/// unrelated one. A bridge creates its pty first and links it after; a pty whose inode changed
/// after the link was made (`ctime` later than the link's `mtime`) is not the one the link was
/// made for. (Changing a bridge's pty mode or owner after linking it makes it look reused too:
/// the gateway then replaces the link, and says so in the log.)
fn link_target(path: &Path, link: &std::fs::Metadata) -> LinkTarget {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return LinkTarget::Nothing;
    };
    if !is_pty_slave(&meta) {
        return LinkTarget::Other;
    }
    let pty_changed = (meta.ctime(), meta.ctime_nsec());
    let linked = (link.mtime(), link.mtime_nsec());
    if pty_changed > linked {
        LinkTarget::ReusedPty
    } else {
        LinkTarget::LivePty
    }
}

/// Opens what `path` names: an existing serial port, a live pty behind a link, or else a pty of
/// ours linked at `path` (replacing a dangling link or one to a reused pty).
fn open_target(path: &Path, line: &LineSettings) -> io::Result<Target> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match link_target(path, &meta) {
            LinkTarget::Other => open_serial(path, line),
            LinkTarget::LivePty => {
                let target = open_serial(path, line)?;
                tracing::info!(
                    link = %path.display(),
                    pty = %std::fs::canonicalize(path).unwrap_or_default().display(),
                    "passthrough uses the live pseudo-terminal behind the link"
                );
                Ok(target)
            }
            found @ (LinkTarget::Nothing | LinkTarget::ReusedPty) => {
                let why = if found == LinkTarget::Nothing {
                    "it leads nowhere"
                } else {
                    "its pseudo-terminal is younger than the link (the one it was made for is gone)"
                };
                tracing::info!(link = %path.display(), "replacing the passthrough link: {why}");
                std::fs::remove_file(path)?;
                create_pty(path)
            }
        },
        Ok(meta) if is_char_device(&meta) => open_serial(path, line),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "passthrough path '{}' exists and is neither a serial device nor a link",
                path.display()
            ),
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => create_pty(path),
        Err(error) => Err(error),
    }
}

fn is_char_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_char_device()
}

fn open_serial(path: &Path, line: &LineSettings) -> io::Result<Target> {
    let port = builder(&path.to_string_lossy(), line)
        .open_native_async()
        .map_err(|e| io::Error::other(format!("open '{}': {e}", path.display())))?;
    Ok(Target { port, own: None })
}

/// Lets the POS software open the pseudo-terminal when it runs as another user: a new pty
/// slave is the gateway's, group `tty`, mode 0620; it becomes group `dialout` (which serial
/// software belongs to, and the gateway's service user too), mode 0660. Where that is not
/// possible (no `dialout` group, a gateway not in it) the pty stays as it was, for the same user.
fn share_with_dialout(slave: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let group = match nix::unistd::Group::from_name("dialout") {
        Ok(Some(group)) => group,
        _ => return,
    };
    let shared = nix::unistd::chown(slave, None, Some(group.gid))
        .map_err(io::Error::from)
        .and_then(|()| std::fs::set_permissions(slave, std::fs::Permissions::from_mode(0o660)));
    if let Err(error) = shared {
        tracing::debug!(pty = %slave.display(), %error, "passthrough pty left to this user only");
    }
}

fn create_pty(link: &Path) -> io::Result<Target> {
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let (master, slave) =
        SerialStream::pair().map_err(|e| io::Error::other(format!("create pty: {e}")))?;
    let slave_path = slave
        .name()
        .map(PathBuf::from)
        .ok_or_else(|| io::Error::other("pty slave has no name"))?;
    share_with_dialout(&slave_path);
    std::os::unix::fs::symlink(&slave_path, link)?;
    tracing::info!(link = %link.display(), pty = %slave_path.display(), "passthrough pseudo-terminal ready");
    Ok(Target {
        port: master,
        own: Some(OwnPty {
            slave,
            link: link.to_path_buf(),
            slave_path,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_to(dir: &Path, name: &str, target: &Path) -> (PathBuf, std::fs::Metadata) {
        let link = dir.join(name);
        std::os::unix::fs::symlink(target, &link).expect("link");
        let meta = std::fs::symlink_metadata(&link).expect("lstat");
        (link, meta)
    }

    #[tokio::test]
    async fn a_link_is_live_only_to_a_pty_at_least_as_old_as_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_master, slave) = crate::devices::test_pty::pty_pair();
        let pty = PathBuf::from(slave.name().expect("pty name"));

        // A bridge: its pty first, then the link.
        let (link, meta) = link_to(dir.path(), "bridge", &pty);
        assert_eq!(link_target(&link, &meta), LinkTarget::LivePty);

        // The same pty behind a link made before it existed: its number was reused.
        let (link, _) = link_to(dir.path(), "old", &pty);
        let an_hour_ago = nix::sys::time::TimeSpec::new(
            nix::sys::time::TimeSpec::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock"),
            )
            .tv_sec()
                - 3600,
            0,
        );
        nix::sys::stat::utimensat(
            None,
            &link,
            &an_hour_ago,
            &an_hour_ago,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .expect("age the link");
        let meta = std::fs::symlink_metadata(&link).expect("lstat");
        assert_eq!(link_target(&link, &meta), LinkTarget::ReusedPty);

        let (link, meta) = link_to(dir.path(), "gone", Path::new("/dev/pts/999999"));
        assert_eq!(link_target(&link, &meta), LinkTarget::Nothing);

        let (link, meta) = link_to(dir.path(), "null", Path::new("/dev/null"));
        assert_eq!(link_target(&link, &meta), LinkTarget::Other, "not a pty");
    }

    #[tokio::test]
    async fn an_outbox_is_bounded_by_bytes_and_counts_what_it_drops() {
        let counters = DirectionCounters::default();
        let outbox = Arc::new(Outbox::new(10, counters.clone(), "test".into()));
        // Many small writes coalesce; none is refused while they fit.
        for _ in 0..10 {
            assert!(outbox.push(b"x"));
        }
        assert!(!outbox.push(b"y"), "the eleventh byte does not fit");
        assert!(!outbox.push(b"zzzz"));
        assert_eq!(counters.dropped_bytes.get(), 5);
        assert_eq!(counters.dropped_chunks.get(), 2);
        let mut pump = Pump::new(outbox.clone());
        let mut sink = Vec::new();
        pump.drain(&mut sink).await.expect("drain");
        assert_eq!(sink, b"xxxxxxxxxx");
        assert_eq!(counters.bytes.get(), 10);
        assert!(outbox.push(b"abc"), "room again once written");
        pump.discard();
        assert_eq!(counters.dropped_bytes.get(), 8);
    }

    #[tokio::test]
    async fn bytes_taken_but_not_yet_written_count_against_the_budget() {
        let counters = DirectionCounters::default();
        let outbox = Arc::new(Outbox::new(10, counters.clone(), "test".into()));
        let mut pump = Pump::new(outbox.clone());
        // A port that takes 4 bytes and then nothing until its reader reads.
        let (mut port, mut reader) = tokio::io::duplex(4);
        assert!(outbox.push(b"0123456789"));
        assert!(matches!(
            pump.next(&mut port).await.expect("take"),
            Pumped::Taken { .. }
        ));
        // Taken is not written: the queue is empty, but the budget is spent.
        assert!(!outbox.push(b"x"), "taken bytes still wait for the port");
        assert_eq!(pump.next(&mut port).await.expect("write"), Pumped::Wrote(4));
        // The port took 4: room for exactly 4 more.
        assert!(outbox.push(b"abcd"));
        assert!(!outbox.push(b"e"));
        assert_eq!(counters.dropped_bytes.get(), 2);
        assert_eq!(counters.dropped_chunks.get(), 2);

        let mut received = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4];
            while received.len() < 14 {
                let n = reader.read(&mut chunk).await.expect("read");
                received.extend_from_slice(&chunk[..n]);
            }
        };
        let (drained, ()) = tokio::join!(pump.drain(&mut port), read);
        drained.expect("drain");
        assert_eq!(received, b"0123456789abcd");
        assert_eq!(counters.bytes.get(), 14);
        assert!(
            outbox.push(b"0123456789"),
            "the whole budget again once written"
        );

        // Dropped bytes give their room back too, and a pump dropped with bytes taken counts them.
        pump.discard();
        assert_eq!(counters.dropped_bytes.get(), 12);
        assert!(outbox.push(b"0123456789"));
        pump.wait().await;
        drop(pump);
        assert_eq!(counters.dropped_bytes.get(), 22);
        assert!(outbox.push(b"0123456789"));
    }
}
