//! MQTT devices: one task owns the connection to the store's broker (`[mqtt]`) for every device
//! with `transport = "mqtt"`, and turns their messages into [`DeviceEvent`]s for the core.
//!
//! # Acknowledged only when durable
//! The session is persistent (clean session off, a stable client id `posgw-{store}-{gw}-devices`)
//! and every device topic is subscribed with QoS 1. Acknowledgements are manual: a message's
//! PUBACK goes out only once the record it became (a scan, a sale or a `bad_frame`) is durable
//! in the journal. The messages the connection holds (up to [`MAX_BURST`], read until a read
//! would wait; a busy connection is then left alone for [`BURST_PAUSE`] so the next burst is a
//! whole one, while a lone message is read at once) go to the core as one
//! [`DeviceEvent::Messages`] group, and the core hands back one [`Durable`] for the group: its
//! last record's, which covers the others. An acker task waits for the groups in arrival order
//! and hands their packet ids back to this task, which writes every PUBACK that is ready in one
//! write and one flush (rumqttc's own `ack` is a request that is written and flushed alone: a
//! system call per message), only ever in the session the message came in (a later session's
//! broker has redelivered it and may reuse its packet id). Until then the broker keeps the
//! message, so a `kill -9` or a power cut loses nothing: the broker redelivers it to the next
//! session.
//!
//! # Exactly once across a crash
//! A message whose record was durable but whose PUBACK was not out yet (a `kill -9`, a power
//! cut, a connection that broke) comes back. MQTT 3.1.1 says how: on a session resumed with
//! clean session 0 the broker re-sends every unacknowledged PUBLISH with its original packet
//! identifier ([MQTT-4.4.0-1]) and the DUP flag set ([MQTT-3.3.1-1]), and gives a new message
//! only an identifier not in use, one becoming free once its PUBACK was processed
//! ([MQTT-2.3.1-2], [MQTT-2.3.1-3], [MQTT-2.3.1-4]); a test proves mosquitto does so. Each
//! record a message becomes therefore carries the message's identity, its packet id plus a hash
//! of topic and payload ([`MessageId`]), kept by the journal in the same group commit as the
//! record (`journal::messages`). A redelivery (DUP) whose identity the journal holds is
//! acknowledged once that record is durable, and not recorded again; a first delivery (no DUP)
//! tells the journal its packet id was reused, so the identity it named before stops matching
//! before the new message is recorded.
//!
//! What is left: a message recorded in a process that died before its record reached the
//! kernel (or, after a power cut, the disk) is recorded again after the restart, which is right:
//! that record is gone. A PUBACK written just before a crash that never reached the broker makes
//! the broker redeliver, and the journal recognises the message. A broker that reuses a packet
//! id for a message with the very same topic and payload, in the microseconds between this task
//! reading it and telling the journal, with a crash in between, or whose first delivery never
//! reached this task (lost with a broken connection), would have that message taken for the
//! old one (mosquitto hands out ids in sequence, so an id comes back only after 65,535 other
//! messages). A broker that lost its session state redelivers nothing.
//!
//! A group with a record the journal refused is not acknowledged either (its other messages
//! are recognised when redelivered). MQTT 3.1.1 brokers redeliver only
//! on a new connection, and stop delivering once a client holds `max_inflight_messages`
//! unacknowledged ones, so the task then renews the connection after [`REDELIVER_AFTER`]
//! (again and again while the journal keeps refusing): the broker redelivers, and input resumes
//! by itself once the journal is back. Brokers cap unacknowledged deliveries per client (mosquitto's
//! `max_inflight_messages`, 20 by default), so ingest runs at about that many messages per journal
//! flush: plenty for a store's scanners and registers; raise it for bulk replays. The task keeps
//! its own cap, [`MAX_UNACKED`]: past that many unacknowledged messages it stops reading until
//! acknowledgements catch up, so a broker without a limit cannot fill the gateway's memory.
//!
//! # Messages
//! - `scan` devices (`mqtt-scanner`): the payload is the scanned data as text, or a JSON object
//!   whose `code_field` holds it (AIM identifier included) and whose optional `symbology_field`
//!   gives the AIM identifier apart; the profile's `[payload] format` says which (`auto` reads a
//!   payload that parses as a JSON object as one). A trailing CR/LF is not part of the code.
//! - `json-sale` devices (`json-register`): the payload is one sale; the core reads it.
//! - Anything unreadable (not UTF-8, JSON without the code field, an empty code) becomes a
//!   `device` `bad_frame` with a short reason, acknowledged once that record is durable.
//! - A message over `[mqtt] max_message` (1 MiB by default) is not read: it becomes a `device`
//!   `bad_frame` with its size, acknowledged the same way, and the messages around it are read
//!   as usual ([`crate::mqtt::OversizeGuard`]: the connection after the one it broke reads it by
//!   its size; counted in `posgw_mqtt_oversize_messages_total{channel="devices"}`).
//!
//! # Connection
//! rumqttc reconnects when its event loop is polled again after an error; this task waits
//! between attempts with exponential backoff and jitter (up to 30 s) and re-subscribes after
//! every CONNACK, since a broker restarted without persistence forgets subscriptions. The broker
//! being down at start does not stop the gateway. Every device shows `connected` while the
//! session is up and `disconnected` (with the reason) otherwise, each change recorded once.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Local;
use futures_util::FutureExt;
use rumqttc::{AsyncClient, Event, Packet, PubAck, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{ConnectionState, Delivery, DeviceEvent, DeviceInfo, DeviceStatus};
use crate::config::{DecoderKind, DeviceSettings, MqttSettings, PayloadFormat, PayloadSettings};
use crate::journal::{Durable, JournalHandle, MessageId};
use crate::mqtt::OversizeGuard;

/// Requests (acks, subscriptions) that may queue for the event loop.
const REQUEST_QUEUE: usize = 65_536;
/// Longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long after a message was left unacknowledged the connection is renewed to have it
/// redelivered (the journal gets that long to recover; each renewal retries once more).
const REDELIVER_AFTER: Duration = Duration::from_secs(5);
/// How often a device's `last_frame_at` is updated while messages keep coming.
const LAST_FRAME_EVERY: Duration = Duration::from_millis(500);
/// Most messages received and not yet acknowledged before reading pauses (a few MiB).
const MAX_UNACKED: usize = 16_384;
/// Most groups of PUBACKs written at once.
const ACK_BATCH: usize = 256;
/// Most messages handed to the core as one group.
const MAX_BURST: usize = 256;
/// A read of at least this many messages means the connection is busy: reading pauses for
/// [`BURST_PAUSE`], so that the next read takes a whole burst.
const BURST_PAUSE_AFTER: usize = 8;
/// How long reading pauses after a busy read.
const BURST_PAUSE: Duration = Duration::from_millis(1);
/// How long writing acknowledgements may take before the connection is considered stuck.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for records of received messages to become durable and be acked.
const SHUTDOWN_ACKS: Duration = Duration::from_secs(2);

/// One MQTT device: what it is, where it publishes, its status.
pub struct MqttDevice {
    /// Its identity in records.
    pub info: Arc<DeviceInfo>,
    /// The topic it publishes on.
    pub topic: String,
    /// How its payloads are read.
    pub payload: PayloadSettings,
    /// Its published status.
    pub status: watch::Sender<DeviceStatus>,
}

impl MqttDevice {
    /// A device from its settings (the caller checked the transport is MQTT).
    pub fn new(settings: &DeviceSettings, status: watch::Sender<DeviceStatus>) -> Option<Self> {
        Some(MqttDevice {
            info: Arc::new(DeviceInfo::from_settings(settings)),
            topic: settings.topic.clone()?,
            payload: settings.profile.payload.clone(),
            status,
        })
    }
}

/// The task behind every MQTT device.
pub struct MqttDevices {
    /// The store's broker.
    pub settings: MqttSettings,
    /// Store code, for the client id.
    pub store: String,
    /// Gateway id, for the client id.
    pub gateway: String,
    /// The devices, each on its own topic.
    pub devices: Vec<MqttDevice>,
    /// Where events go.
    pub events: mpsc::Sender<DeviceEvent>,
    /// Counts messages over `max_message`.
    pub oversize: prometheus_client::metrics::counter::Counter,
    /// The journal, told which packet ids the broker reused for new messages (see
    /// [`JournalHandle::reused`]).
    pub journal: JournalHandle,
}

/// Messages read in one go, handed to the core as one group.
struct Burst {
    /// Their events, for the messages on a device's topic, with where each came from.
    events: Vec<(Delivery, DeviceEvent)>,
    /// The packet ids of all of them, in arrival order.
    pkids: Vec<u16>,
    /// The identities of first deliveries (no DUP) among them.
    fresh: Vec<MessageId>,
}

impl Burst {
    /// Room for `messages` (at most [`MAX_BURST`]).
    fn with_capacity(messages: usize) -> Burst {
        let messages = messages.min(MAX_BURST);
        Burst {
            events: Vec::with_capacity(messages),
            pkids: Vec::with_capacity(messages),
            fresh: Vec::with_capacity(messages),
        }
    }
}

/// A group of received messages waiting for their records to be durable.
struct Pending {
    /// The core's answer: the durability of the group's last record, or `None` when one was not
    /// written. Without one (no message of the group was on a device's topic), the group is
    /// acknowledged in its turn with nothing to wait for.
    written: Option<oneshot::Receiver<Option<Durable>>>,
    /// What to acknowledge.
    acks: Acks,
}

/// Messages to acknowledge: the session they came in (counted from 1 per CONNACK) and their
/// packet ids, in order. Acknowledgements are only ever written in the session their message
/// came in: in a later one the broker has redelivered it (or forgotten it) and may reuse the
/// packet id for another message, which the stale acknowledgement would take before its record
/// is durable.
#[derive(Debug, PartialEq)]
struct Acks {
    session: u64,
    pkids: Vec<u16>,
}

/// The packet ids among `ready` that belong to `session`, in order; empties `ready`.
fn current_session(ready: &mut Vec<Acks>, session: u64) -> Vec<u16> {
    ready
        .drain(..)
        .filter(|acks| acks.session == session)
        .flat_map(|acks| acks.pkids)
        .collect()
}

impl MqttDevices {
    /// Runs until `shutdown` fires. Broker trouble is retried forever; settings that cannot
    /// work (an unreadable password file) are recorded as a device `error` for every device,
    /// and the task ends: the rest of the gateway runs on.
    pub async fn run(self, shutdown: CancellationToken) {
        let connection = crate::mqtt::store_broker_options(
            &self.settings,
            &self.store,
            &self.gateway,
            "devices",
            self.settings.max_message,
        )
        .and_then(|mut options| {
            options.set_manual_acks(true);
            options.set_request_channel_capacity(REQUEST_QUEUE);
            let guard = OversizeGuard::new(
                "mqtt devices",
                &options,
                self.settings.max_message,
                self.oversize.clone(),
            )?;
            Ok((options, guard))
        });
        let (options, mut guard) = match connection {
            Ok(connection) => connection,
            Err(error) => {
                let detail = format!("cannot connect to the broker: {error:#}");
                tracing::error!("mqtt devices: {detail}");
                self.all_devices(ConnectionState::Disconnected, &detail, |device, detail| {
                    DeviceEvent::Error { device, detail }
                })
                .await;
                return;
            }
        };
        let (client, mut event_loop) = AsyncClient::new(options, REQUEST_QUEUE);
        let oversize = guard.marker();
        // Each device with when its `last_frame_at` was last set.
        let by_topic: HashMap<&str, (&MqttDevice, Cell<Option<tokio::time::Instant>>)> = self
            .devices
            .iter()
            .map(|device| (device.topic.as_str(), (device, Cell::new(None))))
            .collect();
        // Unbounded, because this loop must never wait on anything the event loop itself has to
        // drain (PUBACKs go out only while it is polled); the broker bounds it by how many
        // deliveries it lets a client leave unacknowledged.
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
        // Set by the acker when it leaves a message unacknowledged: MQTT 3.1.1 brokers redeliver
        // only on a new connection, so this loop reconnects a little later.
        let redeliver = Arc::new(tokio::sync::Notify::new());
        // The acker hands over the packet ids to acknowledge; this loop writes them to the
        // connection itself, all that are ready in one write (a request each through rumqttc's
        // queue would be one write and one flush per message).
        let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<Acks>();
        let mut session = 0u64;
        let mut ready = Vec::new();
        // Messages received and not acknowledged yet: reading stops at MAX_UNACKED until acks
        // catch up, so a broker that hands over a whole backlog at once (no inflight limit)
        // cannot fill this process's memory.
        let mut unacked = 0usize;
        let acker = tokio::spawn(acknowledge(acks_tx, pending_rx, redeliver.clone()));
        let mut reconnect_at: Option<tokio::time::Instant> = None;
        // Set after a burst: when reading goes on.
        let mut read_after: Option<tokio::time::Instant> = None;
        // An event read at the end of a burst, handled next.
        let mut polled: Option<Result<Event, rumqttc::ConnectionError>> = None;
        let mut retry = new_backoff();
        let mut connected = false;
        let mut subscribe = false;
        'connection: loop {
            if subscribe {
                // Queued without waiting: only polling drains the request queue.
                let filters = self
                    .devices
                    .iter()
                    .map(|device| SubscribeFilter::new(device.topic.clone(), QoS::AtLeastOnce));
                match client.try_subscribe_many(filters) {
                    Ok(()) => subscribe = false,
                    Err(error) => tracing::debug!(%error, "subscription queued later"),
                }
            }
            let event = if let Some(event) = polled.take() {
                event
            } else {
                tokio::select! {
                    event = event_loop.poll(), if unacked < MAX_UNACKED && read_after.is_none() => event,
                    () = sleep_until_or_never(read_after) => {
                        read_after = None;
                        continue;
                    }
                    _ = acks_rx.recv_many(&mut ready, ACK_BATCH) => {
                        let written = write_acks(&mut event_loop, &mut ready, session).await;
                        unacked = unacked.saturating_sub(written);
                        continue;
                    }
                    () = shutdown.cancelled() => break,
                    () = redeliver.notified(), if reconnect_at.is_none() => {
                        reconnect_at = Some(tokio::time::Instant::now() + REDELIVER_AFTER);
                        continue;
                    }
                    () = sleep_until_or_never(reconnect_at) => {
                        reconnect_at = None;
                        // What was left unacknowledged is delivered again; the disconnect needs the
                        // connection polled.
                        unacked = 0;
                        tracing::warn!("mqtt devices: reconnecting so the broker redelivers unrecorded messages");
                        if let Err(error) = client.try_disconnect() {
                            tracing::debug!(%error, "cannot queue the disconnect");
                        }
                        continue;
                    }
                }
            };
            // A burst of publishes arrives in one read, and rumqttc keeps what it read in its
            // event queue: those are handled here one after the other, not each through the
            // select above (and the event loop's own).
            let mut next = Some(event);
            let mut burst = Burst::with_capacity(event_loop.state.events.len() + 1);
            loop {
                let current = match next.take() {
                    Some(event) => event,
                    None if unacked >= MAX_UNACKED || burst.pkids.len() >= MAX_BURST => break,
                    None => match event_loop.state.events.front() {
                        Some(Event::Incoming(Packet::Publish(_))) => {
                            match event_loop.state.events.pop_front() {
                                Some(event) => Ok(event),
                                None => break,
                            }
                        }
                        Some(_) => break,
                        // rumqttc reads at most 10 packets a poll: the burst goes on with what
                        // the connection holds already, until a read would wait.
                        None => match event_loop.poll().now_or_never() {
                            Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                                Ok(Event::Incoming(Packet::Publish(publish)))
                            }
                            Some(other) => {
                                // Handled after this burst is handed over.
                                polled = Some(other);
                                break;
                            }
                            None => break,
                        },
                    },
                };
                match current {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // A new session: the broker redelivers whatever was not acknowledged.
                        guard.connected(&mut event_loop);
                        unacked = 0;
                        session += 1;
                        retry = new_backoff();
                        subscribe = true;
                        connected = true;
                        for device in &self.devices {
                            let detail =
                                format!("subscribed to {} on {}", device.topic, self.settings.url);
                            tracing::info!(device = %device.info.id, "{detail}");
                            set_state(device, ConnectionState::Connected, &detail);
                            self.send(DeviceEvent::Connected {
                                device: device.info.clone(),
                                detail,
                            })
                            .await;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        unacked += 1;
                        burst.pkids.push(publish.pkid);
                        let id = MessageId::new(publish.pkid, &publish.topic, &publish.payload);
                        if !publish.dup {
                            burst.fresh.push(id);
                        }
                        match by_topic.get(publish.topic.as_str()) {
                            Some((device, noted)) => {
                                // Not for every message of a burst: it says when the device was last
                                // heard from, to the second.
                                let now = tokio::time::Instant::now();
                                if noted.get().is_none_or(|at| now - at >= LAST_FRAME_EVERY) {
                                    noted.set(Some(now));
                                    device.status.send_modify(|status| {
                                        status.last_frame_at = Some(Local::now());
                                    });
                                }
                                let delivery = Delivery {
                                    id,
                                    redelivered: publish.dup,
                                };
                                let event = match oversize.size(&publish.payload) {
                                    Some(size) => oversize_event(device, size, &self.settings),
                                    None => message_event(device, &publish.payload),
                                };
                                burst.events.push((delivery, event));
                            }
                            None => {
                                // Only possible with overlapping subscriptions left in the session
                                // by an older configuration: nothing to record it as, acknowledged
                                // in its turn.
                                tracing::debug!(topic = %publish.topic, "message on a topic no device uses; acknowledged");
                            }
                        }
                        if burst.pkids.len() >= MAX_BURST
                            && !self.hand_over(&mut burst, session, &pending_tx).await
                        {
                            break 'connection;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        // After a message over max_message, the next connection reads it by
                        // its size.
                        guard.failed(&mut event_loop, &error);
                        // Recorded once per outage (and once if the broker is down at start).
                        let starting = self.devices.iter().any(|device| {
                            device.status.borrow().state == ConnectionState::Starting
                        });
                        if connected || starting {
                            let detail = format!("broker {}: {error}", self.settings.url);
                            tracing::warn!("mqtt devices: {detail}; reconnecting");
                            self.all_devices(
                                ConnectionState::Disconnected,
                                &detail,
                                |device, detail| DeviceEvent::Disconnected { device, detail },
                            )
                            .await;
                        }
                        connected = false;
                        let delay = retry.next().unwrap_or(RETRY_MAX);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.cancelled() => break 'connection,
                        }
                    }
                }
            }
            // A busy broker connection is read every BURST_PAUSE rather than whenever a few
            // messages arrive: each read costs a wake-up, a system call and a TCP ack, and the
            // messages wait at most that long (a lone scan is read at once).
            if burst.pkids.len() >= BURST_PAUSE_AFTER {
                read_after = Some(tokio::time::Instant::now() + BURST_PAUSE);
            }
            if !self.hand_over(&mut burst, session, &pending_tx).await {
                break 'connection;
            }
        }
        // Let the records of what was received become durable and their PUBACKs go out; the
        // event loop must keep running for them to be sent. Whatever is left is redelivered.
        drop(pending_tx);
        let drain = async {
            let mut acker = acker;
            loop {
                tokio::select! {
                    _ = &mut acker => break,
                    _ = acks_rx.recv_many(&mut ready, ACK_BATCH) => {
                        write_acks(&mut event_loop, &mut ready, session).await;
                    }
                    event = event_loop.poll() => if event.is_err() { break },
                }
            }
            while acks_rx.recv_many(&mut ready, ACK_BATCH).await > 0 {
                write_acks(&mut event_loop, &mut ready, session).await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_ACKS, drain).await;
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), event_loop.poll()).await;
    }

    /// Puts every device in `state` and tells the core, one `event` each.
    async fn all_devices(
        &self,
        state: ConnectionState,
        detail: &str,
        event: fn(Arc<DeviceInfo>, String) -> DeviceEvent,
    ) {
        for device in &self.devices {
            set_state(device, state, detail);
            self.send(event(device.info.clone(), detail.to_owned()))
                .await;
        }
    }

    /// Hands the messages of `burst` to the core as one group and queues their acknowledgement
    /// behind the groups before; `false` once the acker is gone (shutting down).
    async fn hand_over(
        &self,
        burst: &mut Burst,
        session: u64,
        pending: &mpsc::UnboundedSender<Pending>,
    ) -> bool {
        if burst.pkids.is_empty() {
            return true;
        }
        // A first delivery with a packet id means the broker had the PUBACK of the message that
        // id named before: the journal must no longer take a redelivery with that id for it.
        // Before the new messages are recorded (or a crash could leave the old identity to
        // swallow a new message with the same payload).
        self.journal.reused(&burst.fresh);
        burst.fresh.clear();
        let written = if burst.events.is_empty() {
            None
        } else {
            let (ack, written) = oneshot::channel();
            let events = std::mem::take(&mut burst.events);
            self.send(DeviceEvent::Messages { events, ack }).await;
            Some(written)
        };
        let acks = Acks {
            session,
            pkids: std::mem::take(&mut burst.pkids),
        };
        pending.send(Pending { written, acks }).is_ok()
    }

    async fn send(&self, event: DeviceEvent) {
        // The core only goes away at shutdown, after the devices.
        let _ = self.events.send(event).await;
    }
}

/// Hands over the packet ids of messages to acknowledge, in arrival order, once their records
/// are durable.
async fn acknowledge(
    ready: mpsc::UnboundedSender<Acks>,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    redeliver: Arc<tokio::sync::Notify>,
) {
    while let Some(Pending { written, acks }) = pending.recv().await {
        let durable = match written {
            None => true,
            Some(written) => match written.await {
                Ok(Some(durable)) => durable.wait().await.is_ok(),
                // The journal refused the record, or the core is gone: the broker keeps it.
                Ok(None) | Err(_) => false,
            },
        };
        if durable {
            if ready.send(acks).is_err() {
                return;
            }
        } else {
            tracing::warn!(
                messages = acks.pkids.len(),
                "messages not recorded; left unacknowledged for redelivery"
            );
            redeliver.notify_one();
        }
    }
}

/// Writes a PUBACK for each message of `ready` that came in `session` (the others are
/// dropped) and flushes once; empties `ready` and returns how many were of `session`. Without a
/// connection (it broke since), the broker redelivers those messages to the next session,
/// where the journal recognises them.
async fn write_acks(
    event_loop: &mut rumqttc::EventLoop,
    ready: &mut Vec<Acks>,
    session: u64,
) -> usize {
    let pkids = current_session(ready, session);
    if pkids.is_empty() {
        return 0;
    }
    let Some(network) = event_loop.network.as_mut() else {
        tracing::debug!(
            count = pkids.len(),
            "not connected: messages left for redelivery"
        );
        return pkids.len();
    };
    let write = async {
        for &pkid in &pkids {
            network.write(Packet::PubAck(PubAck::new(pkid))).await?;
        }
        network.flush().await
    };
    match tokio::time::timeout(ACK_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "cannot acknowledge; the broker will redeliver"),
        Err(_) => tracing::debug!("acknowledging timed out; the broker will redeliver"),
    }
    pkids.len()
}

/// What one message is for the core.
fn message_event(device: &MqttDevice, payload: &[u8]) -> DeviceEvent {
    let bytes = match device.info.decoder {
        DecoderKind::Scan => match scan_payload(payload, &device.payload) {
            Ok(bytes) => bytes,
            Err(reason) => {
                return DeviceEvent::BadFrame {
                    device: device.info.clone(),
                    detail: format!("{reason}: {}", crate::decode::escape_raw(excerpt(payload))),
                }
            }
        },
        DecoderKind::JsonSale | DecoderKind::Escpos => payload.to_vec(),
    };
    DeviceEvent::Frame {
        device: device.info.clone(),
        bytes,
    }
}

/// A message over `max_message`, read by its size only: a `bad_frame` saying so.
fn oversize_event(device: &MqttDevice, size: u64, settings: &MqttSettings) -> DeviceEvent {
    DeviceEvent::BadFrame {
        device: device.info.clone(),
        detail: format!(
            "message too large: {size} bytes, over [mqtt] max_message ({}); acknowledged without reading it",
            crate::config::format_size(settings.max_message as u64)
        ),
    }
}

/// The first bytes of a payload, for messages about it.
fn excerpt(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(128)]
}

/// The scanned data in an `mqtt-scanner` payload: the text itself, or the code (with the AIM
/// identifier put in front when it came apart) from a JSON object.
pub fn scan_payload(payload: &[u8], settings: &PayloadSettings) -> Result<Vec<u8>, String> {
    let trimmed = trim_line_end(payload);
    let json = match settings.format {
        PayloadFormat::Text => false,
        PayloadFormat::Json => true,
        PayloadFormat::Auto => {
            trimmed.first() == Some(&b'{')
                && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(trimmed)
                    .is_ok()
        }
    };
    if !json {
        if trimmed.is_empty() {
            return Err("empty message".to_owned());
        }
        return Ok(trimmed.to_vec());
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(trimmed)
        .map_err(|error| format!("message is not a JSON object ({error})"))?;
    let code = match object.get(&settings.code_field) {
        Some(serde_json::Value::String(code)) if !code.is_empty() => code,
        Some(serde_json::Value::String(_)) => {
            return Err(format!("empty '{}'", settings.code_field))
        }
        Some(_) => return Err(format!("'{}' is not a string", settings.code_field)),
        None => return Err(format!("no '{}' field", settings.code_field)),
    };
    let symbology = match object.get(&settings.symbology_field) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(symbology)) => Some(symbology.as_str()),
        Some(_) => return Err(format!("'{}' is not a string", settings.symbology_field)),
    };
    Ok(match symbology {
        // Sent apart and not repeated in the code: the decoder reads it in front, as a serial
        // scanner sends it.
        Some(symbology) if symbology.starts_with(']') && !code.starts_with(']') => {
            format!("{symbology}{code}").into_bytes()
        }
        _ => code.clone().into_bytes(),
    })
}

/// `bytes` without a trailing CR, LF or CR LF.
fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    &bytes[..end]
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn set_state(device: &MqttDevice, state: ConnectionState, detail: &str) {
    device.status.send_modify(|status| {
        status.state = state;
        status.detail = Some(detail.to_owned());
    });
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(format: PayloadFormat) -> PayloadSettings {
        PayloadSettings {
            format,
            ..PayloadSettings::default()
        }
    }

    #[test]
    fn scan_payloads_as_text_and_json() {
        let auto = settings(PayloadFormat::Auto);
        assert_eq!(
            scan_payload(b"]E06901234567892\r\n", &auto).unwrap(),
            b"]E06901234567892"
        );
        assert_eq!(
            scan_payload(br#"{"code":"]E06901234567892"}"#, &auto).unwrap(),
            b"]E06901234567892"
        );
        assert_eq!(
            scan_payload(br#"{"code":"6901234567892","symbology":"]E0"}"#, &auto).unwrap(),
            b"]E06901234567892"
        );
        assert_eq!(
            scan_payload(br#"{"code":"]E06901234567892","symbology":"]E0"}"#, &auto).unwrap(),
            b"]E06901234567892",
            "not repeated"
        );
        // Text that merely starts with a brace is text under auto, an error under json.
        assert_eq!(scan_payload(b"{not json", &auto).unwrap(), b"{not json");
        let json = settings(PayloadFormat::Json);
        assert!(scan_payload(b"{not json", &json)
            .unwrap_err()
            .contains("not a JSON object"));
        let text = settings(PayloadFormat::Text);
        assert_eq!(
            scan_payload(br#"{"code":"x"}"#, &text).unwrap(),
            br#"{"code":"x"}"#
        );
    }

    /// A group with a refused record is not acknowledged, and the connection task is told to
    /// renew the connection so the broker delivers it again; the groups around it are
    /// acknowledged in their order, a group with nothing to record at once in its turn.
    #[tokio::test]
    async fn a_refused_record_leaves_its_group_unacknowledged_and_asks_for_redelivery() {
        let (acks, mut acked) = mpsc::unbounded_channel();
        let (pending, rx) = mpsc::unbounded_channel();
        let redeliver = Arc::new(tokio::sync::Notify::new());
        let acker = tokio::spawn(acknowledge(acks, rx, redeliver.clone()));
        let dir = tempfile::tempdir().expect("temporary folder");
        let journal = crate::journal::open_for_test(dir.path(), Duration::from_millis(5)).await;
        let group = |first: u16| Acks {
            session: 1,
            pkids: vec![first, first + 1],
        };
        let mut answers = Vec::new();
        for first in [1, 3, 5] {
            let (written, answer) = oneshot::channel();
            answers.push(written);
            pending
                .send(Pending {
                    written: Some(answer),
                    acks: group(first),
                })
                .expect("queue");
        }
        pending
            .send(Pending {
                written: None,
                acks: group(7),
            })
            .expect("queue");
        for (first, written) in [1, 3, 5].into_iter().zip(answers) {
            let durable = if first == 3 {
                None
            } else {
                let scan = serde_json::json!({ "code": "6901234567892" });
                let appended = journal
                    .append_value(crate::record::Kind::Scan, &scan)
                    .await
                    .expect("scan");
                Some(appended.durable)
            };
            written.send(durable).expect("the core's answer");
        }
        tokio::time::timeout(Duration::from_secs(5), redeliver.notified())
            .await
            .expect("redelivery asked for");
        drop(pending);
        acker.await.expect("acker ends");
        let mut got = Vec::new();
        while let Ok(acks) = acked.try_recv() {
            got.push(acks);
        }
        assert_eq!(
            got,
            [group(1), group(5), group(7)],
            "the group with the refused record (3, 4) is left unacknowledged"
        );
    }

    /// Acknowledgements of an earlier session are dropped, never written in the current one,
    /// where their packet ids may name other messages; the current session's keep their order.
    #[test]
    fn only_the_current_sessions_acknowledgements_are_written() {
        let acks = |session, pkids: &[u16]| Acks {
            session,
            pkids: pkids.to_vec(),
        };
        let mut ready = vec![
            acks(1, &[7]),
            acks(2, &[7, 3]),
            acks(1, &[8]),
            acks(2, &[9]),
        ];
        assert_eq!(current_session(&mut ready, 2), [7, 3, 9]);
        assert!(ready.is_empty());
        let mut stale = vec![acks(1, &[1, 2])];
        assert!(current_session(&mut stale, 2).is_empty());
    }

    #[test]
    fn unreadable_scan_payloads_say_why() {
        let auto = settings(PayloadFormat::Auto);
        for (payload, reason) in [
            (&b""[..], "empty message"),
            (b"\r\n", "empty message"),
            (br#"{"barcode":"1"}"#, "no 'code' field"),
            (br#"{"code":""}"#, "empty 'code'"),
            (br#"{"code":5}"#, "'code' is not a string"),
            (
                br#"{"code":"5","symbology":3}"#,
                "'symbology' is not a string",
            ),
        ] {
            assert_eq!(
                scan_payload(payload, &auto).unwrap_err(),
                reason,
                "{payload:?}"
            );
        }
    }
}
