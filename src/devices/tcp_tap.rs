//! Network receipt printers: a tap on a printer's raw TCP port (`transport = "tcp"`, profile
//! `escpos-tap`).
//!
//! Many stores' receipt printers sit on the LAN at port 9100, and the register sends each print
//! job over a TCP connection. The register is pointed at the gateway instead (`listen`); the tap
//! task owns that listener and, for each connection, spawns a connection task that owns both
//! sockets: it connects to the printer (`printer_addr`) and forwards both directions unchanged,
//! each in its own loop so a printer that stops reading (paper out) still gets its status
//! replies to the register. Bytes from the register also feed that connection's ESC/POS decoder,
//! as on a serial tap: a paper cut ends a receipt, which goes to the core as a `sale`. Bytes from
//! the printer (status replies, ASB) are never decoded.
//!
//! Bounded: each connection holds two fixed buffers and its decoder (itself bounded by
//! `max_receipt`); TCP's own flow control paces the register to the printer, as a direct link
//! would. At most `max_connections` connections are served at once; more are accepted and closed
//! at once, counted (`posgw_tap_refused_connections_total`). A printer that does not answer
//! within [`CONNECT_TIMEOUT`] closes the register's connection, is counted
//! (`posgw_tap_printer_unreachable_total`) and recorded as a `device` `error` once per outage
//! (and `connected` when it answers again). A connection whose register has finished is given
//! [`LINGER`] for the printer's last answers before it is closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Local;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::passthrough::PassthroughCounters;
use super::serial::worth_recording;
use super::{ConnectionState, DeviceEvent, DeviceInfo, DeviceStatus};
use crate::config::{DeviceSettings, EscposSettings, TcpTapSettings};
use crate::decode::escpos::{ClosedBy, EscposDecoder, Receipt};

/// How long the printer may take to accept a connection before the register's is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After the register finished sending, how long the printer's answers are still passed back.
pub const LINGER: Duration = Duration::from_secs(10);

/// First retry delay after the listening address could not be bound.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest delay between bind attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// At most one warning about refused connections this often (the counter has them all).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Read buffer toward the printer (receipts, logos).
const FORWARD_BUFFER: usize = 8192;
/// Read buffer toward the register (status bytes).
const BACK_BUFFER: usize = 1024;

/// Connection counts of one tap; shared handles read by `/metrics` and the status.
#[derive(Debug, Clone, Default)]
pub struct TapCounters {
    /// Register connections accepted and forwarded (`posgw_tap_connections_total`).
    pub accepted: Counter,
    /// Register connections refused over `max_connections` (`posgw_tap_refused_connections_total`).
    pub refused: Counter,
    /// Register connections closed because the printer did not answer
    /// (`posgw_tap_printer_unreachable_total`).
    pub printer_unreachable: Counter,
    /// Connections open now (`posgw_tap_open_connections`).
    pub open: Gauge,
}

/// Everything a network printer tap needs; built by the gateway from the configuration.
pub struct TcpTap {
    /// The device's settings (its `tcp` part, the profile's `[escpos]`).
    pub settings: Arc<DeviceSettings>,
    /// Its identity as written into records.
    pub info: Arc<DeviceInfo>,
    /// Where receipts and connection events go (a relay to the core).
    pub events: super::RelaySender,
    /// Its published status.
    pub status: watch::Sender<DeviceStatus>,
    /// Bytes forwarded each way (`to_passthrough` = register → printer).
    pub bytes: PassthroughCounters,
    /// Connection counts.
    pub connections: TapCounters,
}

/// What the connection tasks share with the tap task.
struct Shared {
    info: Arc<DeviceInfo>,
    events: super::RelaySender,
    status: watch::Sender<DeviceStatus>,
    bytes: PassthroughCounters,
    connections: TapCounters,
    escpos: EscposSettings,
    printer: String,
    /// Set while the printer does not answer, so an outage is recorded once.
    printer_down: AtomicBool,
}

impl Shared {
    fn send(&self, event: DeviceEvent) {
        // The core only goes away at shutdown, after the devices.
        let _ = self.events.send(event);
    }

    fn receipt(&self, receipt: Receipt) {
        self.status
            .send_modify(|status| status.last_frame_at = Some(Local::now()));
        self.send(DeviceEvent::Receipt {
            device: self.info.clone(),
            receipt,
        });
    }
}

impl TcpTap {
    /// Runs the tap until `shutdown` fires: listen, serve connections, listen again after a
    /// failure. Open connections are closed at shutdown, their pending receipts handed over.
    pub async fn run(self, shutdown: CancellationToken) {
        let (Some(tap), Some(escpos)) = (
            self.settings.tcp.clone(),
            self.settings.profile.escpos.clone(),
        ) else {
            tracing::error!(device = %self.info.id, "tcp tap without tcp or escpos settings");
            return;
        };
        let shared = Arc::new(Shared {
            info: self.info.clone(),
            events: self.events.clone(),
            status: self.status.clone(),
            bytes: self.bytes.clone(),
            connections: self.connections.clone(),
            escpos,
            printer: tap.printer_addr.clone(),
            printer_down: AtomicBool::new(false),
        });
        let mut delay = RETRY_MIN;
        let mut reported = false;
        loop {
            match TcpListener::bind(tap.listen).await {
                Ok(listener) => {
                    delay = RETRY_MIN;
                    reported = false;
                    let detail = format!(
                        "listening on {} for the register; printer {}",
                        tap.listen, tap.printer_addr
                    );
                    tracing::info!(device = %self.info.id, "{detail}");
                    self.set_state(ConnectionState::Connected, &detail);
                    shared.send(DeviceEvent::Connected {
                        device: self.info.clone(),
                        detail,
                    });
                    if let Err(error) = serve(listener, &tap, &shared, &shutdown).await {
                        let detail = format!("listening on {} failed: {error}", tap.listen);
                        tracing::warn!(device = %self.info.id, "{detail}; listening again");
                        self.disconnected(detail);
                    } else {
                        return;
                    }
                }
                Err(error) => {
                    if !reported {
                        reported = true;
                        let detail = format!("cannot listen on {}: {error}", tap.listen);
                        tracing::warn!(device = %self.info.id, "{detail}; retrying");
                        self.disconnected(detail);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    fn set_state(&self, state: ConnectionState, detail: &str) {
        self.status.send_modify(|status| {
            status.state = state;
            status.detail = Some(detail.to_owned());
        });
    }

    fn disconnected(&self, detail: String) {
        self.set_state(ConnectionState::Disconnected, &detail);
        let _ = self.events.send(DeviceEvent::Disconnected {
            device: self.info.clone(),
            detail,
        });
    }
}

/// Accepts register connections until shutdown (`Ok`) or until the listener fails (`Err`).
async fn serve(
    listener: TcpListener,
    tap: &TcpTapSettings,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(tap.max_connections));
    let mut connections = JoinSet::new();
    // Ends the connections at shutdown, or when the listener fails.
    let close = shutdown.child_token();
    let mut warned_at: Option<Instant> = None;
    let ended = loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = shutdown.cancelled() => break Ok(()),
        };
        let (register, peer) = match accepted {
            Ok(accepted) => accepted,
            // A connection that was reset before we took it, or no file descriptors left for a
            // moment: not the listener's fault.
            Err(error) if is_transient(&error) => {
                tracing::debug!(device = %shared.info.id, %error, "accept");
                if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // Accepting again at once would fail at once: give the process a moment.
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        () = shutdown.cancelled() => break Ok(()),
                    }
                }
                continue;
            }
            Err(error) => break Err(error),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.connections.refused.inc();
            if warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                warned_at = Some(Instant::now());
                tracing::warn!(
                    device = %shared.info.id,
                    %peer,
                    "refusing a register connection: {} already open (max_connections); {} refused so far",
                    tap.max_connections,
                    shared.connections.refused.get()
                );
            }
            drop(register);
            continue;
        };
        shared.connections.accepted.inc();
        let shared = shared.clone();
        let stop = close.clone();
        connections.spawn(async move {
            shared.connections.open.inc();
            connection(register, peer, &shared, &stop).await;
            shared.connections.open.dec();
            drop(slot);
        });
    };
    // Shutdown or a failed listener: the connections end too, handing over their receipts.
    close.cancel();
    while connections.join_next().await.is_some() {}
    ended
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One register connection: connect to the printer, then forward both ways until both are done.
async fn connection(
    mut register: TcpStream,
    peer: std::net::SocketAddr,
    shared: &Shared,
    stop: &CancellationToken,
) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&shared.printer));
    let mut printer = match connect.await {
        Ok(Ok(printer)) => printer,
        failed => {
            let why = match failed {
                Ok(Err(error)) => error.to_string(),
                _ => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            };
            shared.connections.printer_unreachable.inc();
            let detail = format!(
                "printer {} unreachable: {why}; closed the register's connection from {peer}",
                shared.printer
            );
            if !shared.printer_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(device = %shared.info.id, "{detail}");
                shared.send(DeviceEvent::Error {
                    device: shared.info.clone(),
                    detail,
                });
            } else {
                tracing::debug!(device = %shared.info.id, "{detail}");
            }
            let _ = register.shutdown().await;
            return;
        }
    };
    if shared.printer_down.swap(false, Ordering::Relaxed) {
        let detail = format!("printer {} answers again", shared.printer);
        tracing::info!(device = %shared.info.id, "{detail}");
        shared.send(DeviceEvent::Connected {
            device: shared.info.clone(),
            detail,
        });
    }
    // Status replies are a few bytes each: never held back to fill a segment.
    let _ = register.set_nodelay(true);
    let _ = printer.set_nodelay(true);
    let (register_in, register_out) = register.split();
    let (printer_in, printer_out) = printer.split();
    let forward_done = CancellationToken::new();
    let forward = forward(register_in, printer_out, shared, stop, &forward_done);
    let back = back(printer_in, register_out, shared, stop, &forward_done);
    let ((), ()) = tokio::join!(forward, back);
}

/// Register → printer, through the decoder. Ends at the register's end of stream (passed on to
/// the printer), an error, or shutdown; closes a pending receipt as it is.
async fn forward(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    stop: &CancellationToken,
    done: &CancellationToken,
) {
    let mut decoder = EscposDecoder::new(&(&shared.escpos).into());
    let timeout = shared.escpos.receipt_timeout;
    let mut buffer = vec![0u8; FORWARD_BUFFER];
    let mut receipts = Vec::new();
    loop {
        let quiet = Some(timeout).filter(|_| decoder.in_receipt());
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = sleep_or_never(quiet) => {
                if let Some(receipt) = decoder.close(ClosedBy::Timeout).filter(worth_recording) {
                    shared.receipt(receipt);
                }
                continue;
            }
            () = stop.cancelled() => break,
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                break;
            }
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(device = %shared.info.id, %error, "register connection");
                break;
            }
        };
        // The printer first, as on a serial tap; then the decoder.
        let written = tokio::select! {
            written = to.write_all(&buffer[..n]) => written,
            () = stop.cancelled() => break,
        };
        if let Err(error) = written {
            tracing::debug!(device = %shared.info.id, %error, "printer connection");
            break;
        }
        shared.bytes.to_passthrough.bytes.inc_by(n as u64);
        decoder.push(&buffer[..n], &mut receipts);
        for receipt in receipts.drain(..) {
            shared.receipt(receipt);
        }
    }
    if let Some(receipt) = decoder.close(ClosedBy::Shutdown).filter(worth_recording) {
        shared.receipt(receipt);
    }
    done.cancel();
}

/// Printer → register, unchanged and undecoded. Ends at the printer's end of stream (passed on
/// to the register), an error, shutdown, or [`LINGER`] after the register finished.
async fn back(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    stop: &CancellationToken,
    forward_done: &CancellationToken,
) {
    let mut buffer = vec![0u8; BACK_BUFFER];
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = forward_done.cancelled(), if linger_until.is_none() => {
                linger_until = Some(tokio::time::Instant::now() + LINGER);
                continue;
            }
            () = sleep_until_or_never(linger_until) => break,
            () = stop.cancelled() => break,
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                break;
            }
            Ok(n) => n,
            Err(_) => break,
        };
        let written = tokio::select! {
            written = to.write_all(&buffer[..n]) => written,
            () = stop.cancelled() => break,
        };
        if written.is_err() {
            break;
        }
        shared.bytes.to_device.bytes.inc_by(n as u64);
    }
}

async fn sleep_or_never(gap: Option<Duration>) {
    match gap {
        Some(gap) => tokio::time::sleep(gap).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
