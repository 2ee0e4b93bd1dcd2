//! Serial devices: one task per configured port (RS-232 or USB-CDC), owning that port.
//!
//! The task opens the port with the line settings of the device's profile, and then for every read:
//! 1. hands the bytes to the passthrough first (so the POS or printer never waits on us),
//! 2. cuts them into frames with the profile's [`Framer`], ending a frame also after the profile's
//!    idle gap for scanners that send no terminator,
//! 3. sends the frames to the core.
//!
//! The passthrough is two-way: what the far side answers (a printer's status bytes, the POS's
//! commands to a scanner) comes back through the passthrough's [`Pump`], and this task writes
//! it to the port, unchanged, between its reads. Those bytes are never framed or decoded.
//!
//! A printer tap (profile decoder `escpos`) reads the same way but, instead of framing, feeds
//! a stateful ESC/POS decoder and sends whole receipts: each paper cut ends one, and a receipt
//! that goes quiet for the profile's `receipt_timeout` (or is cut off by an unplug or shutdown)
//! is closed as it is, so nothing printed is held back forever.
//!
//! When the port is missing or goes away (USB unplug, read error) the task reports the device as
//! disconnected once, retries with exponential backoff and jitter, and carries on when it returns.
//! A missing device never stops the gateway from starting.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Local;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;

use super::framing::{FrameEvent, Framer, FramingSpec};
use super::line::{builder, describe_line};
use super::passthrough::{self, PassthroughCounters, PassthroughHandle, Pump, Pumped};
use super::{ConnectionState, DeviceEvent, DeviceInfo, DeviceStatus};
use crate::config::{DeviceSettings, FramingSettings};
use crate::consult::{Flows, HeldScan, HeldTail};
use crate::decode::escpos::{ClosedBy, EscposDecoder, Receipt};

/// First retry delay after a failed open.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest delay between open attempts: a replugged scanner is picked up within this.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Read buffer: scanners send tens of bytes, receipts a few KiB at a time.
const READ_BUFFER: usize = 8192;

/// The framing spec a profile's framing settings describe.
pub fn framing_spec(framing: &FramingSettings) -> FramingSpec {
    FramingSpec {
        cr: framing.cr,
        lf: framing.lf,
        suffix: framing.suffix.clone(),
        strip_prefix: framing.strip_prefix.clone(),
        max_frame: framing.max_frame,
    }
}

/// Everything a serial device task needs; built by the gateway from the configuration.
pub struct SerialDevice {
    /// The device's settings (path, line settings, passthrough, profile).
    pub settings: Arc<DeviceSettings>,
    /// Its identity as written into records.
    pub info: Arc<DeviceInfo>,
    /// Where frames and connection events go: a [`relay`](super::relay) to the core, so
    /// reading (and the passthrough) never waits for the journal.
    pub events: super::RelaySender,
    /// Its published status.
    pub status: watch::Sender<DeviceStatus>,
    /// Codes never passed through (answer cards), as scanned data without a symbology id; the
    /// set in force now (a configuration reload replaces it). When empty, passthrough forwards
    /// every read at once; otherwise it forwards frame by frame so these frames can be held back.
    pub hold_back: watch::Receiver<Arc<HashSet<Vec<u8>>>>,
    /// The consultation flows in force: a flow product's scan is held back from the POS (and
    /// handed to the core with its frame) when its flow has `hold`. While any flow holds,
    /// passthrough forwards frame by frame, as for answer cards.
    pub flows: watch::Receiver<Arc<Flows>>,
    /// The passthrough's byte and drop counters (shared with `/metrics` and the status).
    pub passthrough: PassthroughCounters,
}

/// What woke a reading device task.
enum Input {
    /// The port's read returned.
    Read(std::io::Result<usize>),
    /// The passthrough's answer was taken or (partly) written to the port.
    Back(std::io::Result<Pumped>),
    /// The idle gap or receipt timeout passed.
    Quiet,
    /// The gateway is shutting down.
    Shutdown,
}

/// Why a connected port stopped being read.
enum ReadEnd {
    /// The gateway is shutting down.
    Shutdown,
    /// The port failed or went away.
    Lost(String),
}

impl SerialDevice {
    /// Runs the device until `shutdown` fires: open, read, reopen after failures.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(serial) = self.settings.serial.as_ref() else {
            tracing::error!(device = %self.info.id, "serial device without serial settings");
            return;
        };
        let path = serial.path.to_string_lossy().into_owned();
        let passthrough = match &serial.passthrough {
            None => None,
            Some(target) => {
                match passthrough::spawn(target, &serial.line, self.passthrough.clone()) {
                    Ok(handle) => Some(handle),
                    Err(error) => {
                        // The device is still read: losing passthrough must not lose scans.
                        let detail =
                            format!("passthrough '{}' unavailable: {error}", target.display());
                        tracing::error!(device = %self.info.id, "{detail}");
                        self.send(DeviceEvent::Error {
                            device: self.info.clone(),
                            detail,
                        })
                        .await;
                        None
                    }
                }
            }
        };
        let mut framer = Framer::new(framing_spec(&self.settings.profile.framing));
        let idle_gap = self.settings.profile.framing.idle_gap;
        // A printer tap reads receipts, not frames.
        let mut tap = self
            .settings
            .profile
            .escpos
            .as_ref()
            .map(|escpos| (EscposDecoder::new(&escpos.into()), escpos.receipt_timeout));
        // What the far side of the passthrough sends back, for this port.
        let mut back = passthrough.as_ref().map(PassthroughHandle::back);
        let mut retry = new_backoff();

        loop {
            match builder(&path, &serial.line).open_native_async() {
                Ok(port) => {
                    retry = new_backoff();
                    // Answers that arrived while the port was away are stale now.
                    if let Some(back) = back.as_mut() {
                        back.discard();
                    }
                    let detail = format!("opened {path} at {}", describe_line(&serial.line));
                    tracing::info!(device = %self.info.id, "{detail}");
                    self.set_state(ConnectionState::Connected, &detail);
                    self.send(DeviceEvent::Connected {
                        device: self.info.clone(),
                        detail,
                    })
                    .await;
                    let end = match tap.as_mut() {
                        Some((decoder, timeout)) => {
                            self.read_tap(
                                port,
                                decoder,
                                *timeout,
                                passthrough.as_ref(),
                                back.as_mut(),
                                &shutdown,
                            )
                            .await
                        }
                        None => {
                            self.read_port(
                                port,
                                &mut framer,
                                idle_gap,
                                passthrough.as_ref(),
                                back.as_mut(),
                                &shutdown,
                            )
                            .await
                        }
                    };
                    match end {
                        ReadEnd::Shutdown => return,
                        ReadEnd::Lost(detail) => {
                            // What arrived before the unplug is still what the scanner sent; it
                            // must not be glued to the first frame after the reconnect.
                            if let Some(event) = framer.idle() {
                                self.emit(event).await;
                            }
                            if let Some((decoder, _)) = tap.as_mut() {
                                self.close_receipt(decoder, ClosedBy::Shutdown).await;
                            }
                            tracing::warn!(device = %self.info.id, "{path}: {detail}; reconnecting");
                            self.disconnected(detail).await;
                        }
                    }
                }
                Err(error) => {
                    // Report the first failure only; the retries are quiet until something changes.
                    if self.status.borrow().state != ConnectionState::Disconnected {
                        let detail = format!("cannot open {path}: {error}");
                        tracing::warn!(device = %self.info.id, "{detail}; retrying");
                        self.disconnected(detail).await;
                    }
                }
            }
            let delay = retry.next().unwrap_or(RETRY_MAX);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Reads the open port until it fails or the gateway shuts down.
    async fn read_port(
        &self,
        mut port: SerialStream,
        framer: &mut Framer,
        idle_gap: Option<Duration>,
        passthrough: Option<&PassthroughHandle>,
        mut back: Option<&mut Pump>,
        shutdown: &CancellationToken,
    ) -> ReadEnd {
        let mut buffer = vec![0u8; READ_BUFFER];
        let mut frames = Vec::new();
        // Frame-by-frame passthrough (while answer cards are configured): raw bytes read but
        // not yet forwarded or held back.
        let mut by_frame = passthrough.filter(|_| self.holds_frames());
        let mut unsent: Vec<u8> = Vec::new();
        // Set after an answer card was held back: its trailing CR/LF bytes are held back too.
        let mut after_card = false;
        // The end of the last frame's held scan, when it was one: CR/LF bytes that follow it in
        // the next read join it (so the POS gets them after it, never before).
        let mut after_held: Option<HeldTail> = None;
        // Per frame of a read, the held scan its bytes became (flow products only).
        let mut held: Vec<Option<HeldScan>> = Vec::new();
        // The idle gap runs from the last read (answers written to the port in between do not
        // restart it).
        let mut last_read = tokio::time::Instant::now();
        loop {
            // Only wait for the idle gap while a frame is half-received.
            let gap = idle_gap
                .filter(|_| framer.has_partial())
                .map(|gap| last_read + gap);
            let read = match next_input(&mut port, &mut buffer, back.as_deref_mut(), gap, shutdown)
                .await
            {
                Input::Read(read) => {
                    last_read = tokio::time::Instant::now();
                    Some(read)
                }
                Input::Quiet => None,
                Input::Back(Ok(_)) => continue,
                Input::Back(Err(error)) => return ReadEnd::Lost(format!("write failed: {error}")),
                Input::Shutdown => {
                    // Whatever was half-received is still data the scanner sent.
                    if let Some(event) = framer.idle() {
                        self.emit(event).await;
                    }
                    return ReadEnd::Shutdown;
                }
            };
            match read {
                None => {
                    if let Some(event) = framer.idle() {
                        let mut held = None;
                        if let Some(passthrough) = by_frame {
                            after_held = None;
                            match self.hold(&event) {
                                Hold::Pass => passthrough.send(&unsent),
                                Hold::Card => {}
                                Hold::Flow => {
                                    let scan = held_scan(passthrough, &unsent);
                                    after_held = Some(scan.tail());
                                    held = Some(scan);
                                }
                            }
                            unsent.clear();
                        }
                        self.emit_held(event, held).await;
                    }
                }
                Some(Ok(0)) => return ReadEnd::Lost("end of file".into()),
                Some(Ok(n)) => {
                    let bytes = &buffer[..n];
                    let cards = self.holds_frames();
                    if by_frame.is_some() != cards {
                        // A reload added the first or removed the last answer card. Bytes held
                        // for a half-read frame go on now; a frame in progress is not held back.
                        if let Some(passthrough) = by_frame {
                            passthrough.send(&unsent);
                            unsent.clear();
                        }
                        after_held = None;
                        by_frame = passthrough.filter(|_| cards);
                    }
                    match (passthrough, by_frame) {
                        (_, Some(passthrough)) => {
                            let before = unsent.len();
                            unsent.extend_from_slice(bytes);
                            framer.push_at(bytes, |event, end| frames.push((event, before + end)));
                            held = self.forward_frames(
                                passthrough,
                                &frames,
                                &mut unsent,
                                &mut after_card,
                                &mut after_held,
                                framer,
                            );
                            // A frame longer than any answer card cannot be one: its bytes go
                            // on now, so a device streaming without terminators (and without an
                            // idle gap) neither starves the POS nor grows this buffer.
                            let longest = self.settings.profile.framing.max_frame + READ_BUFFER;
                            if unsent.len() > longest {
                                passthrough.send(&unsent);
                                unsent.clear();
                            }
                        }
                        (Some(passthrough), None) => {
                            // Ahead of everything else: the POS never waits on our decoding.
                            passthrough.send(bytes);
                            framer.push(bytes, |event| frames.push((event, 0)));
                        }
                        (None, None) => framer.push(bytes, |event| frames.push((event, 0))),
                    }
                    let mut held = held.drain(..);
                    for (event, _) in frames.drain(..) {
                        self.emit_held(event, held.next().flatten()).await;
                    }
                }
                Some(Err(error)) => return ReadEnd::Lost(error.to_string()),
            }
        }
    }

    /// Reads a printer tap until the port fails or the gateway shuts down: every read goes to
    /// the printer first, then to the ESC/POS decoder; each receipt it completes goes to the
    /// core. A receipt that goes quiet for `timeout` without a cut is closed as it is.
    async fn read_tap(
        &self,
        mut port: SerialStream,
        decoder: &mut EscposDecoder,
        timeout: Duration,
        passthrough: Option<&PassthroughHandle>,
        mut back: Option<&mut Pump>,
        shutdown: &CancellationToken,
    ) -> ReadEnd {
        let mut buffer = vec![0u8; READ_BUFFER];
        let mut receipts = Vec::new();
        // The receipt timeout runs from the last read, as the idle gap does.
        let mut last_read = tokio::time::Instant::now();
        loop {
            let quiet = Some(last_read + timeout).filter(|_| decoder.in_receipt());
            // The printer's answers (status bytes) go to the register between reads; they are
            // not receipt data and never reach the decoder.
            let read = match next_input(
                &mut port,
                &mut buffer,
                back.as_deref_mut(),
                quiet,
                shutdown,
            )
            .await
            {
                Input::Read(read) => {
                    last_read = tokio::time::Instant::now();
                    Some(read)
                }
                Input::Quiet => None,
                Input::Back(Ok(_)) => continue,
                Input::Back(Err(error)) => return ReadEnd::Lost(format!("write failed: {error}")),
                Input::Shutdown => {
                    self.close_receipt(decoder, ClosedBy::Shutdown).await;
                    return ReadEnd::Shutdown;
                }
            };
            match read {
                None => self.close_receipt(decoder, ClosedBy::Timeout).await,
                Some(Ok(0)) => return ReadEnd::Lost("end of file".into()),
                Some(Ok(n)) => {
                    let bytes = &buffer[..n];
                    // Ahead of the decoder: the printer never waits on it.
                    if let Some(passthrough) = passthrough {
                        passthrough.send(bytes);
                    }
                    decoder.push(bytes, &mut receipts);
                    for receipt in receipts.drain(..) {
                        self.receipt(receipt).await;
                    }
                }
                Some(Err(error)) => return ReadEnd::Lost(error.to_string()),
            }
        }
    }

    /// Closes a receipt that never saw its cut, if one is pending and holds anything.
    async fn close_receipt(&self, decoder: &mut EscposDecoder, why: ClosedBy) {
        if let Some(receipt) = decoder.close(why).filter(worth_recording) {
            self.receipt(receipt).await;
        }
    }

    async fn receipt(&self, receipt: Receipt) {
        self.status
            .send_modify(|status| status.last_frame_at = Some(Local::now()));
        self.send(DeviceEvent::Receipt {
            device: self.info.clone(),
            receipt,
        })
        .await;
    }

    /// Forwards the raw bytes of each completed frame in `frames` (`unsent` holds the raw bytes
    /// since the last forwarded frame; each frame ends at its offset there), holding back
    /// answer cards together with the terminator bytes that follow them (`after_card` carries
    /// that across reads), and holding flow products' scans: each one's bytes, terminator
    /// included, become the [`HeldScan`] returned at its frame's index; terminator bytes that
    /// only arrive in a later read join it (`after_held` carries its end across reads).
    fn forward_frames(
        &self,
        passthrough: &PassthroughHandle,
        frames: &[(FrameEvent, usize)],
        unsent: &mut Vec<u8>,
        after_card: &mut bool,
        after_held: &mut Option<HeldTail>,
        framer: &Framer,
    ) -> Vec<Option<HeldScan>> {
        let mut held = Vec::with_capacity(frames.len());
        let mut start = 0;
        for (event, end) in frames {
            // A frame's bytes run through the CR/LF bytes right after its terminator (the LF
            // of a CR LF ends no frame of its own but belongs to this one).
            let framing = &self.settings.profile.framing;
            let end = end
                + unsent[*end..]
                    .iter()
                    .take_while(|&&b| (b == b'\r' && framing.cr) || (b == b'\n' && framing.lf))
                    .count();
            let segment = skip_card_terminators(&unsent[start..end], after_card);
            let segment = join_held_terminators(segment, after_held, passthrough);
            let hold = self.hold(event);
            *after_card = hold == Hold::Card;
            *after_held = None;
            held.push(None);
            match hold {
                Hold::Pass => passthrough.send(segment),
                Hold::Card => {}
                Hold::Flow => {
                    let scan = held_scan(passthrough, segment);
                    *after_held = Some(scan.tail());
                    *held.last_mut().expect("pushed") = Some(scan);
                }
            }
            start = end;
        }
        if framer.has_partial() {
            // The bytes after the last frame belong to the next one.
            let next = skip_card_terminators(&unsent[start..], after_card);
            let next = join_held_terminators(next, after_held, passthrough);
            let rest = unsent.len() - next.len();
            unsent.drain(..rest);
            return held;
        }
        // Only terminator bytes are left (the LF of a CR LF): they go with the frame they end.
        let rest = skip_card_terminators(&unsent[start..], after_card);
        let rest = join_held_terminators(rest, after_held, passthrough);
        if !rest.is_empty() {
            passthrough.send(rest);
        }
        unsent.clear();
        held
    }

    /// Whether passthrough must go frame by frame: answer cards or a holding flow exist.
    fn holds_frames(&self) -> bool {
        !self.hold_back.borrow().is_empty() || self.flows.borrow().holds_any()
    }

    /// What becomes of a frame on its way to the POS.
    fn hold(&self, event: &FrameEvent) -> Hold {
        if self.is_held_back(event) {
            return Hold::Card;
        }
        match event {
            FrameEvent::Frame(bytes) if self.flows.borrow().holding(bytes).is_some() => Hold::Flow,
            _ => Hold::Pass,
        }
    }

    /// Emits a frame, with its held scan when it has one.
    async fn emit_held(&self, event: FrameEvent, held: Option<HeldScan>) {
        match (event, held) {
            (FrameEvent::Frame(bytes), Some(held)) => {
                self.status
                    .send_modify(|status| status.last_frame_at = Some(Local::now()));
                self.send(DeviceEvent::HeldFrame {
                    device: self.info.clone(),
                    bytes,
                    held,
                })
                .await;
            }
            (event, held) => {
                drop(held);
                self.emit(event).await;
            }
        }
    }

    /// Whether a frame is an answer card, never to be passed through.
    fn is_held_back(&self, event: &FrameEvent) -> bool {
        let FrameEvent::Frame(bytes) = event else {
            return false;
        };
        let data = match bytes.as_slice() {
            // Without the AIM symbology identifier, as the answer codes are written.
            [b']', _, _, data @ ..] => data,
            data => data,
        };
        let hold_back = self.hold_back.borrow();
        hold_back.contains(data) || hold_back.contains(bytes.as_slice())
    }

    async fn emit(&self, event: FrameEvent) {
        let event = match event {
            FrameEvent::Frame(bytes) => {
                self.status
                    .send_modify(|status| status.last_frame_at = Some(Local::now()));
                DeviceEvent::Frame {
                    device: self.info.clone(),
                    bytes,
                }
            }
            FrameEvent::Overlong { len, head } => DeviceEvent::BadFrame {
                device: self.info.clone(),
                detail: format!(
                    "frame longer than {} bytes ({len} bytes dropped), starting {}",
                    self.settings.profile.framing.max_frame,
                    crate::decode::escape_raw(&head)
                ),
            },
        };
        self.send(event).await;
    }

    async fn disconnected(&self, detail: String) {
        self.set_state(ConnectionState::Disconnected, &detail);
        self.send(DeviceEvent::Disconnected {
            device: self.info.clone(),
            detail,
        })
        .await;
    }

    fn set_state(&self, state: ConnectionState, detail: &str) {
        self.status.send_modify(|status| {
            status.state = state;
            status.detail = Some(detail.to_owned());
        });
    }

    async fn send(&self, event: DeviceEvent) {
        // The core only goes away at shutdown, after the devices; nothing to do if it already has.
        let _ = self.events.send(event);
    }
}

/// What becomes of a frame on its way to the POS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Passed on at once.
    Pass,
    /// An answer card: never passed on.
    Card,
    /// A flow product's scan: passed on by the consultation engine.
    Flow,
}

/// The held scan of `bytes`, delivered through `passthrough`.
fn held_scan(passthrough: &PassthroughHandle, bytes: &[u8]) -> HeldScan {
    let passthrough = passthrough.clone();
    HeldScan::new(
        bytes.to_vec(),
        Box::new(move |bytes: &[u8]| passthrough.send(bytes)),
    )
}

/// Whether a receipt closed without a cut (silence, unplug, shutdown) is worth a record: not
/// when it printed nothing and held nothing unknown, as when the register only polled the
/// printer's status (`DLE EOT n`) or re-initialised it between receipts. Such bytes went to
/// the printer as always; they are simply not a receipt.
pub fn worth_recording(receipt: &Receipt) -> bool {
    receipt.closed_by == ClosedBy::Cut || !receipt.is_blank() || receipt.unknown_commands > 0
}

/// `bytes` without the CR/LF bytes that end a held-back answer card; clears `after_card` once
/// something else shows up.
fn skip_card_terminators<'a>(bytes: &'a [u8], after_card: &mut bool) -> &'a [u8] {
    if !*after_card {
        return bytes;
    }
    let skip = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if skip < bytes.len() {
        *after_card = false;
    }
    &bytes[skip..]
}

/// `bytes` without the CR/LF bytes that end the held scan before them (see [`HeldTail`]): they
/// join it while it is held, or go on now when it was delivered already. Forgets the held scan
/// once something else shows up.
fn join_held_terminators<'a>(
    bytes: &'a [u8],
    after_held: &mut Option<HeldTail>,
    passthrough: &PassthroughHandle,
) -> &'a [u8] {
    let Some(tail) = after_held else {
        return bytes;
    };
    let ends = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if ends > 0 && !tail.append(&bytes[..ends]) {
        passthrough.send(&bytes[..ends]);
    }
    if ends < bytes.len() {
        *after_held = None;
    }
    &bytes[ends..]
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Waits for the next thing a reading device task must handle: bytes from the port, the
/// passthrough's answer taken or written to the port, the `quiet` deadline, or shutdown. Every
/// branch is cancel-safe, so whatever did not win is picked up on the next call.
async fn next_input(
    port: &mut SerialStream,
    buffer: &mut [u8],
    back: Option<&mut Pump>,
    quiet: Option<tokio::time::Instant>,
    shutdown: &CancellationToken,
) -> Input {
    let (mut reader, mut writer) = tokio::io::split(port);
    tokio::select! {
        read = reader.read(buffer) => Input::Read(read),
        pumped = pump_or_never(back, &mut writer) => Input::Back(pumped),
        () = sleep_until_or_never(quiet) => Input::Quiet,
        () = shutdown.cancelled() => Input::Shutdown,
    }
}

async fn pump_or_never<W: tokio::io::AsyncWrite + Unpin>(
    pump: Option<&mut Pump>,
    to: &mut W,
) -> std::io::Result<Pumped> {
    match pump {
        Some(pump) => pump.next(to).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;
    use tokio_serial::SerialPort;

    use super::*;
    use crate::config::{DeviceSettings, ProfileSet, Role, SerialSettings, Transport};
    use crate::devices::test_pty::pty_pair;

    /// A pty pair whose slave is linked at `link`; fds closed on exec.
    fn pty_at(link: &std::path::Path) -> (SerialStream, SerialStream) {
        let (master, slave) = pty_pair();
        std::os::unix::fs::symlink(slave.name().expect("pty name"), link).expect("link");
        (master, slave)
    }

    /// The journal stalls (nobody takes events from the core's queue): the scanner's bytes
    /// still reach the POS, every one, and the frames wait in order for the core.
    #[tokio::test]
    async fn a_stalled_core_never_stops_the_passthrough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut scanner, _slave) = pty_at(&dir.path().join("scanner"));
        let profiles = ProfileSet::built_in().expect("profiles");
        let profile = profiles.get("generic-scanner").expect("generic-scanner");
        let settings = Arc::new(DeviceSettings {
            id: "scanner-1".into(),
            role: Role::Scanner,
            transport: Transport::Serial,
            station: "till-1".into(),
            serial: Some(SerialSettings {
                path: dir.path().join("scanner"),
                line: profile.line.clone(),
                passthrough: Some(dir.path().join("pos")),
            }),
            profile,
            topic: None,
            tcp: None,
        });
        // A core queue of one event that nobody reads: the journal is stuck.
        let (core, mut stuck) = mpsc::channel(1);
        let (status, _view) = super::super::status_channel(&settings);
        let (_cards, hold_back) = watch::channel(Arc::new(HashSet::new()));
        let info = Arc::new(DeviceInfo::from_settings(&settings));
        let metrics = crate::metrics::Metrics::new();
        let device = SerialDevice {
            events: super::super::relay(core, info.clone(), &metrics),
            info,
            settings,
            status,
            hold_back,
            flows: watch::channel(Arc::new(Flows::default())).1,
            passthrough: PassthroughCounters::default(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(device.run(shutdown.clone()));
        let link = dir.path().join("pos");
        let started = std::time::Instant::now();
        while !link.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no passthrough link"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut pos = tokio_serial::new(link.to_string_lossy(), 9600)
            .open_native_async()
            .expect("open the POS side");

        let frames = 3000;
        let mut sent = Vec::new();
        for i in 0..frames {
            sent.extend_from_slice(format!("]C0FRAME-{i:05}\r").as_bytes());
        }
        let reader = tokio::spawn(async move {
            let mut received = vec![0u8; sent.len()];
            tokio::time::timeout(Duration::from_secs(20), pos.read_exact(&mut received))
                .await
                .expect("every byte reached the POS in time")
                .expect("read the POS side");
            (sent, received)
        });
        for i in 0..frames {
            scanner
                .write_all(format!("]C0FRAME-{i:05}\r").as_bytes())
                .await
                .expect("scan");
        }
        let (sent, received) = reader.await.expect("reader");
        assert_eq!(received, sent, "byte-exact while the core is stalled");

        // The core recovers: it gets the connection, then every frame in order.
        let mut seen = 0;
        match stuck.recv().await {
            Some(DeviceEvent::Connected { .. }) => {}
            other => panic!("expected connected first, got {other:?}"),
        }
        while seen < frames {
            match stuck.recv().await {
                Some(DeviceEvent::Frame { bytes, .. }) => {
                    assert_eq!(bytes, format!("]C0FRAME-{seen:05}").into_bytes());
                    seen += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        shutdown.cancel();
        task.await.expect("device task");
    }
}
