//! Devices: the I/O edge of the gateway.
//!
//! Each configured device runs as one task that owns its port and nothing else. It reads bytes,
//! forwards them unchanged to the device's passthrough (before anything else happens to them),
//! cuts them into frames and sends [`DeviceEvent`]s to the gateway core. It never decodes and never
//! touches the journal: data flows one way, devices → core → journal.
//!
//! A device task also owns its [`DeviceStatus`] and publishes it on a `watch` channel, which the
//! local API reads for `/api/v1/status`.

pub mod framing;
pub mod mqtt;
pub mod passthrough;
pub mod serial;

use std::sync::Arc;

use chrono::{DateTime, Local};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::{DecoderKind, DeviceSettings, Profile, Role, Transport};

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

/// A queue in front of the core for a device whose reading must never wait: a serial port
/// whose bytes go on to the POS or the printer would stall them if its task blocked on a full
/// core queue (a journal stuck on a dying disk). Events keep their order; the queue grows only
/// while the core is stalled, by what the device sends meanwhile (a scanner's few frames a
/// second). It ends, after handing everything over, when the device's sender is dropped.
pub fn relay(core: mpsc::Sender<DeviceEvent>) -> mpsc::UnboundedSender<DeviceEvent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if core.send(event).await.is_err() {
                break;
            }
        }
    });
    tx
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
    };
    (tx, view)
}
