//! Devices: the I/O edge of the gateway.
//!
//! Each configured device runs as one task that owns its port and nothing else. It reads bytes,
//! forwards them unchanged to the device's passthrough (before anything else happens to them),
//! and sends [`DeviceEvent`]s to the gateway core (a serial device through its bounded [`relay`],
//! so it never waits on the core). A scanner or register cuts its bytes into frames (an MQTT
//! device sends each message) and leaves decoding them to the core. A printer tap (serial or
//! TCP) is the one exception: it runs its stream through the stateful ESC/POS decoder itself,
//! after passing the bytes on to the printer, and sends whole receipts, so a receipt closes on its
//! own port's silence. No device task touches the journal: data flows one way, devices → core →
//! journal.
//!
//! A device task also owns its [`DeviceStatus`] and publishes it on a `watch` channel, which the
//! local API reads for `/api/v1/status`.

pub mod framing;
pub mod line;
pub mod mqtt;
pub mod passthrough;
pub mod serial;
pub mod tcp_tap;
#[cfg(test)]
pub(crate) mod test_pty;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Local};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{DecoderKind, DeviceSettings, Profile, Role, Transport};
use crate::metrics::Metrics;

/// Identity of a device as the core needs it to write records.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The device id from the configuration.
    pub id: Arc<str>,
    /// The counter (clerk screen) the device belongs to.
    pub station: Arc<str>,
    /// Scanner or register.
    pub role: Role,
    /// How its frames are turned into records (from its profile).
    pub decoder: DecoderKind,
    /// Its profile (the ESC/POS patterns, for receipts).
    pub profile: Arc<Profile>,
}

impl DeviceInfo {
    /// The identity of a configured device.
    pub fn from_settings(settings: &DeviceSettings) -> Self {
        DeviceInfo {
            id: settings.id.as_str().into(),
            station: settings.station.as_str().into(),
            role: settings.role,
            decoder: settings.profile.decoder,
            profile: settings.profile.clone(),
        }
    }
}

/// What a device task tells the core.
#[derive(Debug)]
pub enum DeviceEvent {
    /// The port opened (again).
    Connected {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// What was opened, for the record's `detail`.
        detail: String,
    },
    /// The port could not be opened or went away (USB unplug, read error).
    Disconnected {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// Why, for the record's `detail`.
        detail: String,
    },
    /// One complete frame, without its terminator (or one MQTT message's payload, read).
    Frame {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// The frame's bytes exactly as received (prefix stripped if the profile says so).
        bytes: Vec<u8>,
    },
    /// One complete frame held back from the POS: a flow product's scan, passed on by the
    /// consultation engine (or when dropped).
    HeldFrame {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// The frame's bytes exactly as received, without its terminator.
        bytes: Vec<u8>,
        /// The frame as the POS is to get it, with its terminator.
        held: crate::consult::HeldScan,
    },
    /// One printed receipt from an ESC/POS tap.
    Receipt {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// The decoded receipt.
        receipt: crate::decode::escpos::Receipt,
    },
    /// Something went wrong that is not a disconnect (e.g. the passthrough could not be opened).
    Error {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// What went wrong.
        detail: String,
    },
    /// Input that could not be framed (e.g. longer than the profile's `max_frame`).
    BadFrame {
        /// Which device.
        device: Arc<DeviceInfo>,
        /// What was wrong, short.
        detail: String,
    },
    /// Messages read together from the store's broker (`Frame` and `BadFrame` events, in
    /// arrival order), acknowledged together once all their records are durable.
    Messages {
        /// Their events, each with the message it came from.
        events: Vec<(Delivery, DeviceEvent)>,
        /// Told when the last of their records is in the journal.
        ack: Ack,
    },
}

/// The MQTT message an event came from: its identity, kept in the journal with its record, and
/// whether the broker delivered it before (DUP): then it may be recorded already, and is
/// acknowledged without being recorded again if so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Packet id and hash of the message.
    pub id: crate::journal::MessageId,
    /// The DUP flag.
    pub redelivered: bool,
}

/// Where the core hands back the durability of the records that input became, so a device that
/// acknowledges its input (MQTT QoS 1 messages) does so only once they are durable: the last
/// record's [`Durable`](crate::journal::Durable) (the journal makes records durable in order).
/// `None` means a record was not written (the journal refused it): acknowledge none of them.
pub type Ack = tokio::sync::oneshot::Sender<Option<crate::journal::Durable>>;

/// Most events a device's relay holds while the core is behind: minutes of a scanner's or a
/// register's normal traffic, so a stalled journal loses nothing a person sent.
pub const RELAY_EVENTS: usize = 4096;
/// Most bytes of input (frame bytes, details, receipt text) a device's relay holds.
pub const RELAY_BYTES: usize = 1024 * 1024;
/// Room beyond [`RELAY_EVENTS`] kept for connection changes and errors, so a flood of frames
/// never hides an unplug (they come at most once per reconnect attempt).
pub const RELAY_RESERVE: usize = 256;
/// What an event costs in the relay besides its bytes (the event, its allocation headers).
const RELAY_EVENT_OVERHEAD: usize = 96;
/// While drops go on, how often at most they are recorded (one `error` record each time).
const RELAY_SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// A bounded queue in front of the core for a device whose reading must never wait: a serial
/// port whose bytes go on to the POS or the printer would stall them if its task blocked on a
/// full core queue (a journal stuck on a dying disk). [`RelaySender::send`] never waits: it
/// takes an event while the relay holds fewer than [`RELAY_EVENTS`] events and
/// [`RELAY_BYTES`] bytes (connection changes and errors have [`RELAY_RESERVE`] more room), and
/// otherwise drops it, counting it in `posgw_device_dropped_events_total` and
/// `posgw_device_dropped_bytes_total` (`posgw_device_queued_events` shows how full it is).
/// What was dropped is then recorded where it happened: one `device` `error` event with the
/// counts goes to the core before the next event taken (at most one a second while the drops
/// go on) or as soon as the relay is empty, so a gap in a device's records is always explained.
///
/// Events keep their order. The relay task ends, after handing everything over, when the
/// device's sender is dropped.
pub fn relay(
    core: mpsc::Sender<DeviceEvent>,
    device: Arc<DeviceInfo>,
    metrics: &Metrics,
) -> RelaySender {
    // Bounded by the sender's own count of events and bytes (a bounded channel could only
    // count events); each event carries its cost so the relay task can give it back.
    let (tx, mut rx) = mpsc::unbounded_channel::<(DeviceEvent, usize)>();
    let shared = Arc::new(RelayShared {
        events: metrics.device_queued_events(&device.id),
        bytes: AtomicUsize::new(0),
        dropped_events: AtomicU64::new(0),
        dropped_bytes: AtomicU64::new(0),
        last_summary: Mutex::new(Instant::now()),
    });
    let sender = RelaySender {
        tx,
        shared: shared.clone(),
        dropped_events: metrics.device_dropped_events(&device.id),
        dropped_bytes: metrics.device_dropped_bytes(&device.id),
        device: device.clone(),
    };
    tokio::spawn(async move {
        while let Some((event, cost)) = rx.recv().await {
            shared.events.dec();
            shared.bytes.fetch_sub(cost, Ordering::Relaxed);
            if core.send(event).await.is_err() {
                break;
            }
            if rx.is_empty() {
                // Drops are told before the next event taken; with none coming, now.
                if let Some(summary) = shared.take_dropped(&device, true) {
                    if core.send(summary).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    sender
}

/// What the device side and the relay task share: what is queued, and what was dropped and
/// not yet recorded.
#[derive(Debug)]
struct RelayShared {
    /// Events queued: the device's `posgw_device_queued_events` gauge.
    events: Gauge,
    /// Their cost in bytes (see [`RelaySender::send`]).
    bytes: AtomicUsize,
    /// Events dropped since the last summary.
    dropped_events: AtomicU64,
    /// Bytes of those.
    dropped_bytes: AtomicU64,
    /// When drops were last recorded.
    last_summary: Mutex<Instant>,
}

impl RelayShared {
    /// The `error` event telling what was dropped since the last one, if anything was and
    /// (unless `now`) the last one is [`RELAY_SUMMARY_EVERY`] old.
    fn take_dropped(&self, device: &Arc<DeviceInfo>, now: bool) -> Option<DeviceEvent> {
        if self.dropped_events.load(Ordering::Relaxed) == 0 {
            return None;
        }
        {
            // A short section, never held across an await.
            let mut last = self
                .last_summary
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !now && last.elapsed() < RELAY_SUMMARY_EVERY {
                return None;
            }
            *last = Instant::now();
        }
        let events = self.dropped_events.swap(0, Ordering::Relaxed);
        if events == 0 {
            return None;
        }
        let bytes = self.dropped_bytes.swap(0, Ordering::Relaxed);
        let detail = format!(
            "{events} event(s) of {bytes} byte(s) from the device dropped: the gateway core \
             fell behind and the device's queue was full ({RELAY_EVENTS} events or \
             {RELAY_BYTES} bytes)"
        );
        tracing::warn!(device = %device.id, "{detail}");
        Some(DeviceEvent::Error {
            device: device.clone(),
            detail,
        })
    }
}

/// The device side of a [`relay`]: cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct RelaySender {
    /// The queue; its length and bytes are tracked in `shared`.
    tx: mpsc::UnboundedSender<(DeviceEvent, usize)>,
    /// Counters shared with the relay task.
    shared: Arc<RelayShared>,
    /// `posgw_device_dropped_events_total` of this device.
    dropped_events: Counter,
    /// `posgw_device_dropped_bytes_total` of this device.
    dropped_bytes: Counter,
    /// Whose events these are (for the drop record).
    device: Arc<DeviceInfo>,
}

impl RelaySender {
    /// Queues `event` for the core, or drops and counts it when the relay is full; true when
    /// it was queued. Never waits.
    pub fn send(&self, event: DeviceEvent) -> bool {
        let (bytes, control) = relay_cost(&event);
        let cost = bytes + RELAY_EVENT_OVERHEAD;
        let events = usize::try_from(self.shared.events.get()).unwrap_or(0);
        let queued = self.shared.bytes.load(Ordering::Relaxed);
        let fits = if control {
            events < RELAY_EVENTS + RELAY_RESERVE
        } else {
            events < RELAY_EVENTS && queued + cost <= RELAY_BYTES
        };
        if !fits {
            self.shared.dropped_events.fetch_add(1, Ordering::Relaxed);
            self.shared
                .dropped_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
            self.dropped_events.inc();
            self.dropped_bytes.inc_by(bytes as u64);
            return false;
        }
        if let Some(summary) = self.shared.take_dropped(&self.device, false) {
            // Where the gap is: before this event.
            self.push(summary, RELAY_EVENT_OVERHEAD);
        }
        self.push(event, cost)
    }

    fn push(&self, event: DeviceEvent, cost: usize) -> bool {
        self.shared.events.inc();
        self.shared.bytes.fetch_add(cost, Ordering::Relaxed);
        if self.tx.send((event, cost)).is_err() {
            // The relay ended (shutdown): nothing more is taken.
            self.shared.events.dec();
            self.shared.bytes.fetch_sub(cost, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// The bytes an event holds (frame bytes, detail text, receipt text), and whether it is a
/// connection change or an error (which get the reserve).
fn relay_cost(event: &DeviceEvent) -> (usize, bool) {
    match event {
        DeviceEvent::Connected { detail, .. }
        | DeviceEvent::Disconnected { detail, .. }
        | DeviceEvent::Error { detail, .. } => (detail.len(), true),
        DeviceEvent::Frame { bytes, .. } | DeviceEvent::HeldFrame { bytes, .. } => {
            (bytes.len(), false)
        }
        DeviceEvent::BadFrame { detail, .. } => (detail.len(), false),
        DeviceEvent::Receipt { receipt, .. } => (
            receipt
                .lines
                .iter()
                .map(|line| line.len() + 24)
                .sum::<usize>()
                + receipt.qr.iter().map(String::len).sum::<usize>(),
            false,
        ),
        DeviceEvent::Messages { events, .. } => (
            events.iter().map(|(_, event)| relay_cost(event).0).sum(),
            false,
        ),
    }
}

/// Connection state as shown in `/api/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Not opened yet.
    Starting,
    /// The port is open.
    Connected,
    /// The port is missing or failed; the task retries with backoff.
    Disconnected,
}

/// A device's live state, owned by its task and published through a `watch` channel.
#[derive(Debug, Clone)]
pub struct DeviceStatus {
    /// Whether the port is open.
    pub state: ConnectionState,
    /// When the last complete frame arrived.
    pub last_frame_at: Option<DateTime<Local>>,
    /// The last connect or disconnect reason.
    pub detail: Option<String>,
}

impl DeviceStatus {
    fn starting() -> Self {
        DeviceStatus {
            state: ConnectionState::Starting,
            last_frame_at: None,
            detail: None,
        }
    }
}

/// Read side of one device's status, plus the static facts the status page shows.
#[derive(Debug, Clone)]
pub struct DeviceView {
    /// The device id.
    pub id: String,
    /// Scanner or register.
    pub role: Role,
    /// Serial or MQTT.
    pub transport: Transport,
    /// Its station.
    pub station: String,
    /// The live status published by the device task.
    pub status: watch::Receiver<DeviceStatus>,
    /// Its passthrough's path and counters, when it has one.
    pub passthrough: Option<PassthroughView>,
}

/// What `/api/v1/status` shows of a device's passthrough.
#[derive(Debug, Clone)]
pub struct PassthroughView {
    /// Where the bytes go (a path, or the printer's address for a network tap).
    pub target: String,
    /// Bytes forwarded and dropped, both directions.
    pub counters: passthrough::PassthroughCounters,
    /// For a network printer tap: its connection counts.
    pub connections: Option<tcp_tap::TapCounters>,
}

/// Creates the status channel for a device: the sender goes to its task, the view to the API.
pub fn status_channel(settings: &DeviceSettings) -> (watch::Sender<DeviceStatus>, DeviceView) {
    let (tx, rx) = watch::channel(DeviceStatus::starting());
    let view = DeviceView {
        id: settings.id.clone(),
        role: settings.role,
        transport: settings.transport,
        station: settings.station.clone(),
        status: rx,
        passthrough: None,
    };
    (tx, view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeviceSettings, ProfileSet, SerialSettings};

    fn scanner() -> Arc<DeviceInfo> {
        let profiles = ProfileSet::built_in().expect("profiles");
        let profile = profiles.get("generic-scanner").expect("generic-scanner");
        Arc::new(DeviceInfo::from_settings(&DeviceSettings {
            id: "scanner-1".into(),
            role: Role::Scanner,
            transport: Transport::Serial,
            station: "till-1".into(),
            serial: Some(SerialSettings {
                path: "/dev/null".into(),
                line: profile.line.clone(),
                passthrough: None,
            }),
            profile,
            topic: None,
            tcp: None,
        }))
    }

    /// A core that takes nothing: the relay holds its bound, drops and counts the rest without
    /// ever waiting, and once the core reads again it gets what was held, in order, then one
    /// `error` event saying what was dropped.
    #[tokio::test]
    async fn a_full_relay_drops_counts_and_records_the_drops() {
        let device = scanner();
        let metrics = Metrics::new();
        metrics.add_device(&device.id);
        let (core, mut stuck) = mpsc::channel(1);
        let relay = relay(core, device.clone(), &metrics);
        let frames = RELAY_EVENTS + 1000;
        let mut taken = 0;
        for i in 0..frames {
            taken += usize::from(relay.send(DeviceEvent::Frame {
                device: device.clone(),
                bytes: format!("FRAME-{i:05}").into_bytes(),
            }));
        }
        // The relay task holds one event and the core queue one more.
        assert!(
            (RELAY_EVENTS..=RELAY_EVENTS + 2).contains(&taken),
            "{taken}"
        );
        let dropped = (frames - taken) as u64;
        assert_eq!(metrics.device_dropped_events(&device.id).get(), dropped);
        assert_eq!(metrics.device_dropped_bytes(&device.id).get(), dropped * 11);
        // A disconnect still gets through (the reserve).
        assert!(relay.send(DeviceEvent::Disconnected {
            device: device.clone(),
            detail: "unplugged".into(),
        }));

        for i in 0..taken {
            match stuck.recv().await {
                Some(DeviceEvent::Frame { bytes, .. }) => {
                    assert_eq!(bytes, format!("FRAME-{i:05}").into_bytes())
                }
                other => panic!("expected frame {i}, got {other:?}"),
            }
        }
        // The drop record comes before the next event taken once a second has passed since the
        // relay started, else as soon as the relay is empty.
        let mut disconnected = false;
        let mut recorded = false;
        for _ in 0..2 {
            match stuck.recv().await {
                Some(DeviceEvent::Disconnected { .. }) => disconnected = true,
                Some(DeviceEvent::Error { detail, .. }) => {
                    let counts = format!("{dropped} event(s) of {} byte(s)", dropped * 11);
                    assert!(detail.starts_with(&counts), "{detail}");
                    recorded = true;
                }
                other => panic!("expected the disconnect and the drop record, got {other:?}"),
            }
        }
        assert!(disconnected && recorded);
        assert_eq!(metrics.device_queued_events(&device.id).get(), 0);
        drop(relay);
        assert!(
            stuck.recv().await.is_none(),
            "the relay ends with its sender"
        );
    }
}
