//! Passthrough: re-emit every byte a device sends, unchanged, on another path.
//!
//! The gateway sits between a device and the software that used to own it (the POS reading the
//! scanner, the printer fed by the register). Each passthrough is one writer task that owns its
//! output port; the device task hands it chunks through a bounded queue and never waits for it,
//! so a stalled reader on the far side can never slow down the scanner path.
//!
//! The target is either
//! - an existing serial device (a character device, or a link to one outside `/dev/pts`), opened
//!   with the device's own line settings; when a write fails (the USB-serial adapter to the
//!   printer was unplugged) it is reopened, at most once per [`REOPEN_EVERY`], on the next
//!   bytes, and bytes meanwhile are dropped as they would be on a cut cable; or
//! - a pseudo-terminal the gateway creates, with `path` made a symlink to its slave side. The
//!   gateway keeps the slave open so the link stays valid while the POS software opens and closes
//!   it; a stale link left by an earlier run is replaced. The link is removed when the task ends.
//!   Because the kernel keeps what nobody reads, bytes still unread after [`STALE_AFTER`] (no POS
//!   attached) are discarded before the next write: a POS that starts later must not receive
//!   old scans and add them to a sale.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::config::LineSettings;

use super::serial::builder;

/// Chunks that may wait for a slow passthrough reader before new ones are dropped (and counted).
const QUEUE_CHUNKS: usize = 256;

/// Bytes left unread in the pseudo-terminal this long after they were written have no reader.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// How often a serial passthrough target that failed is tried again.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// The device task's side of a passthrough: cheap, never blocks.
#[derive(Debug, Clone)]
pub struct PassthroughHandle {
    /// Chunks to write, in order.
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes that could not be queued because the reader stalled.
    dropped: Arc<AtomicU64>,
    /// Where the bytes go, for log lines.
    path: Arc<PathBuf>,
}

impl PassthroughHandle {
    /// Queues `bytes` for the passthrough. If the far side has stalled long enough to fill the
    /// queue the chunk is dropped and counted: the device path must never wait for it.
    pub fn send(&self, bytes: &[u8]) {
        if self.tx.try_send(bytes.to_vec()).is_err() {
            let before = self
                .dropped
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(
                    path = %self.path.display(),
                    "passthrough reader is not keeping up; dropping bytes until it does"
                );
            }
        }
    }

    /// Bytes dropped so far because the passthrough reader stalled.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The output side, owned by the writer task.
enum Target {
    /// A pseudo-terminal: we write to `master`; `_slave` is held open so the link stays usable.
    Pty {
        master: SerialStream,
        _slave: SerialStream,
        link: PathBuf,
        slave_path: PathBuf,
    },
    /// An existing serial device.
    Serial(SerialStream),
}

impl Target {
    /// Drops what the POS side of a pseudo-terminal has not read (nobody is reading it).
    fn discard_unread(&self) {
        if let Target::Pty { _slave: slave, .. } = self {
            if slave.bytes_to_read().unwrap_or(0) > 0 {
                tracing::debug!("passthrough: nobody read the last scans; discarding them");
                let _ = slave.clear(tokio_serial::ClearBuffer::Input);
            }
        }
    }

    fn writer(&mut self) -> &mut SerialStream {
        match self {
            Target::Pty { master, .. } => master,
            Target::Serial(port) => port,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Target::Pty {
            link, slave_path, ..
        } = self
        {
            // Remove the link only if it is still ours: an admin may have repointed it.
            if std::fs::read_link(&*link).ok().as_deref() == Some(slave_path.as_path()) {
                let _ = std::fs::remove_file(&*link);
            }
        }
    }
}

/// Opens the passthrough target at `path` and spawns its writer task.
///
/// Fails when the path cannot be used (a regular file is there, the folder cannot be created,
/// the serial device cannot be opened); the caller reports that and runs the device without it.
pub fn spawn(path: &Path, line: &LineSettings) -> io::Result<PassthroughHandle> {
    let target = open_target(path, line)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE_CHUNKS);
    let shown = Arc::new(path.to_path_buf());
    let task_path = shown.clone();
    let line = line.clone();
    tokio::spawn(async move {
        let mut target = Some(target);
        let mut last_write = Instant::now();
        // When a serial target failed: when to try opening it again.
        let mut reopen_at = Instant::now();
        while let Some(chunk) = rx.recv().await {
            if target.is_none() && Instant::now() >= reopen_at {
                // The printer or POS port went away (USB unplug): try it again, at most once
                // per REOPEN_EVERY; bytes meanwhile are dropped, as they would be on the wire.
                match open_serial(&task_path, &line) {
                    Ok(reopened) => {
                        tracing::info!(path = %task_path.display(), "passthrough reopened");
                        target = Some(reopened);
                    }
                    Err(_) => reopen_at = Instant::now() + REOPEN_EVERY,
                }
            }
            let Some(open) = target.as_mut() else {
                continue;
            };
            if last_write.elapsed() > STALE_AFTER {
                open.discard_unread();
            }
            last_write = Instant::now();
            if let Err(error) = open.writer().write_all(&chunk).await {
                tracing::warn!(path = %task_path.display(), %error, "passthrough write failed");
                if matches!(open, Target::Serial(_)) {
                    target = None;
                    reopen_at = Instant::now() + REOPEN_EVERY;
                }
            }
        }
        // The device task is gone: drop the target, which removes our link.
    });
    Ok(PassthroughHandle {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
        path: shown,
    })
}

fn open_target(path: &Path, line: &LineSettings) -> io::Result<Target> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let points_to = std::fs::read_link(path)?;
            if points_to.starts_with("/dev/pts") || !points_to.exists() {
                // A link to a pseudo-terminal (ours, from an earlier run) or a dangling link.
                std::fs::remove_file(path)?;
                create_pty(path)
            } else {
                open_serial(path, line)
            }
        }
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
    Ok(Target::Serial(port))
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
    Ok(Target::Pty {
        master,
        _slave: slave,
        link: link.to_path_buf(),
        slave_path,
    })
}
