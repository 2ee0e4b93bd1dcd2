//! Messages over the size limit ("poison" messages) on a connection to the store's broker, and
//! the filter relay that reads them by their size without holding them.
//!
//! # The problem
//! rumqttc refuses a packet whose fixed header announces more than the client's
//! `max_incoming_packet_size`, and fails the connection before it has read the packet id: the
//! message can be neither read nor acknowledged. With a persistent session the broker delivers
//! it again on the next connection, which fails the same way, and so on: all input on that
//! connection stops until the broker forgets the message.
//!
//! # What happens instead
//! A connection normally goes straight to the broker, with rumqttc's limit at the configured
//! maximum. When one fails on a message over it, [`OversizeGuard::failed`] sends the next
//! connection through a filter relay: rumqttc connects to a Unix socket in a private folder
//! (mode 0700; the socket is removed once a connection through it has its CONNACK), and a task
//! of this module connects to the broker (TCP, or TLS with the same settings as rumqttc's) and
//! copies the bytes both ways. Coming in, it reads each packet's fixed header; a PUBLISH over the limit
//! is not passed on: the filter reads its topic and packet id, skips the rest as it streams by,
//! and hands rumqttc a stand-in PUBLISH with the same flags, topic and packet id whose payload
//! is this guard's marker followed by the original payload's size. The owner of the connection
//! recognises the stand-in ([`OversizeMarker::size`]), records it (a device `bad_frame` with
//! the size; a refused answer or step on the prompt channel) and acknowledges it the normal
//! way, so the broker forgets it. The messages before and after it pass unchanged and in
//! order. A payload cannot fake a stand-in: the marker is 16 random bytes that never leave the
//! process.
//!
//! Only PUBLISH packets are filtered: nothing else a broker sends comes near the limit (a broker
//! that sent, say, an oversize SUBACK would still fail every connection, now each through the
//! filter).
//!
//! # Bounds
//! Memory stays bounded whatever the broker sends: the filter holds one read buffer and at most
//! one PUBLISH's topic and packet id (64 KiB + 4 bytes); rumqttc holds at most the configured
//! maximum or a stand-in ([`STAND_IN_MAX`] more).
//!
//! The relayed connection is kept until it ends by itself (the broker restarts, the network
//! fails): ending it on purpose would make the broker deliver again everything not yet
//! acknowledged. The connection after it goes straight to the broker again. Relaying costs a
//! copy of every byte and two more system calls per read, on that connection only.
//!
//! Each stand-in is counted (`posgw_mqtt_oversize_messages_total{channel}`); a message the broker
//! delivers again, because the connection broke before its acknowledgement went out, is counted
//! again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use prometheus_client::metrics::counter::Counter;
use rumqttc::tokio_rustls::rustls::pki_types::ServerName;
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::{
    ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, StateError, TlsConfiguration,
    Transport,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Length of the random marker that starts a stand-in's payload.
const MARKER_LEN: usize = 16;
/// A stand-in's payload: the marker and the original payload's size (u64, big-endian).
const STAND_IN_PAYLOAD: usize = MARKER_LEN + 8;
/// The largest stand-in's remaining length: topic length, the longest topic, packet id, payload.
pub const STAND_IN_MAX: usize = 2 + 65_535 + 2 + STAND_IN_PAYLOAD;
/// What the filter reads from the broker at a time.
const READ_BUFFER: usize = 64 * 1024;
/// How long a relay waits for rumqttc to connect (longer than any reconnect pause).
const ACCEPT_WITHIN: Duration = Duration::from_secs(120);
/// How long the relay may take to reach the broker (rumqttc gives the whole connect 5 s).
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// Recognises the stand-ins of one guard's filter. Cheap to copy.
#[derive(Clone, Copy)]
pub struct OversizeMarker([u8; MARKER_LEN]);

impl OversizeMarker {
    fn random() -> OversizeMarker {
        OversizeMarker(rand::random())
    }

    /// The size of the payload `payload` stands for, when the filter read a message over the
    /// limit; `None` for any message read as it is.
    pub fn size(&self, payload: &[u8]) -> Option<u64> {
        if payload.len() != STAND_IN_PAYLOAD || payload[..MARKER_LEN] != self.0 {
            return None;
        }
        let mut size = [0u8; 8];
        size.copy_from_slice(&payload[MARKER_LEN..]);
        Some(u64::from_be_bytes(size))
    }
}

/// Watches one connection to the broker for messages over its limit and, after one, sends the
/// next connection through the filter relay (module doc). Owned by the task that polls the
/// connection; it calls [`failed`](Self::failed) on every error and
/// [`connected`](Self::connected) on every CONNACK.
pub struct OversizeGuard {
    /// For log lines: whose connection this is.
    name: &'static str,
    /// Options for a connection straight to the broker.
    direct: MqttOptions,
    /// Where the relay connects.
    target: Arc<Target>,
    /// Largest remaining length (topic, packet id and payload) read as it is.
    limit: usize,
    /// What stand-ins carry.
    marker: OversizeMarker,
    /// Counts stand-ins.
    counter: Counter,
    /// The private folder of the relay's socket, made when first needed.
    dir: Option<PathBuf>,
    /// Relays set up so far, for unique socket names.
    relays: u64,
    /// The relay taking the next connection.
    armed: Option<Armed>,
}

/// A relay that takes connections until one is answered with a CONNACK.
struct Armed {
    /// Its socket.
    path: PathBuf,
    /// Stops it taking further connections; the one it carries goes on.
    stop: CancellationToken,
    /// Its task.
    task: JoinHandle<()>,
}

impl Armed {
    /// No more connections: the socket goes away; a connection being carried goes on.
    fn disarm(self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl OversizeGuard {
    /// A guard for a connection made with `direct` (TCP, or TLS with a rustls configuration),
    /// whose incoming limit is `limit`. The relay reaches the same broker the same way.
    pub fn new(
        name: &'static str,
        direct: &MqttOptions,
        limit: usize,
        counter: Counter,
    ) -> anyhow::Result<OversizeGuard> {
        let (host, port) = direct.broker_address();
        let tls = match direct.transport() {
            Transport::Tcp => None,
            Transport::Tls(TlsConfiguration::Rustls(config)) => {
                let server = ServerName::try_from(host.clone())
                    .map_err(|error| anyhow::anyhow!("'{host}' is not a host name: {error}"))?;
                Some((TlsConnector::from(config), server))
            }
            _ => anyhow::bail!("the size filter supports TCP and rustls TLS connections only"),
        };
        Ok(OversizeGuard {
            name,
            direct: direct.clone(),
            target: Arc::new(Target { host, port, tls }),
            limit,
            marker: OversizeMarker::random(),
            counter,
            dir: None,
            relays: 0,
            armed: None,
        })
    }

    /// What this guard's stand-ins carry.
    pub fn marker(&self) -> OversizeMarker {
        self.marker
    }

    /// Called with every error of the event loop. On a message over the limit, the next
    /// connection goes through the filter (the announced size is returned); after a failed
    /// attempt through the filter, the next one goes through it again.
    ///
    /// Also drops what rumqttc read before the failure but had not handed out yet (it would
    /// hand it out after the next CONNACK): those QoS 1 messages came in the broken connection,
    /// where alone they could be acknowledged, and the broker delivers them again.
    pub fn failed(&mut self, event_loop: &mut EventLoop, error: &ConnectionError) -> Option<usize> {
        event_loop.state.events.retain(|event| {
            matches!(event, Event::Incoming(Packet::Publish(publish)) if publish.qos == QoS::AtMostOnce)
        });
        let announced = match error {
            ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(size),
            )) => Some(*size),
            _ => None,
        };
        if let Some(size) = announced {
            tracing::warn!(
                "{}: the broker sent a message of {size} bytes, over the limit of {} bytes; the next connection reads it by its size and acknowledges it",
                self.name,
                self.limit
            );
        } else if self.armed.is_none() {
            return None;
        }
        if self
            .armed
            .as_ref()
            .is_some_and(|armed| !armed.task.is_finished())
        {
            // Still taking connections (it gave up on none of them).
            return announced;
        }
        match self.arm() {
            Ok(options) => event_loop.mqtt_options = options,
            Err(error) => {
                tracing::error!(
                    "{}: cannot set up the size filter ({error}); a message over the limit stops this connection until the broker drops it",
                    self.name
                );
                event_loop.mqtt_options = self.direct.clone();
            }
        }
        announced
    }

    /// Called on every CONNACK: a connection through the filter keeps it until it ends, and the
    /// next one goes straight to the broker again.
    pub fn connected(&mut self, event_loop: &mut EventLoop) {
        if let Some(armed) = self.armed.take() {
            tracing::info!(
                "{}: connected through the size filter, until this connection ends",
                self.name
            );
            armed.disarm();
            event_loop.mqtt_options = self.direct.clone();
        }
    }

    /// Starts a relay taking the next connection; returns the options to reach it.
    fn arm(&mut self) -> io::Result<MqttOptions> {
        if let Some(old) = self.armed.take() {
            old.disarm();
        }
        let dir = match &self.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = private_dir()?;
                self.dir = Some(dir.clone());
                dir
            }
        };
        self.relays += 1;
        let path = dir.join(format!("broker-{}.sock", self.relays));
        let listener = UnixListener::bind(&path)?;
        let stop = CancellationToken::new();
        let filter = Filter::new(self.limit, self.marker, self.counter.clone());
        let task = tokio::spawn(relay(
            listener,
            Arc::clone(&self.target),
            filter,
            stop.clone(),
        ));
        let options = relay_options(&self.direct, &path, self.limit);
        self.armed = Some(Armed { path, stop, task });
        Ok(options)
    }
}

impl Drop for OversizeGuard {
    fn drop(&mut self) {
        if let Some(armed) = self.armed.take() {
            armed.task.abort();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new folder only this user can enter, for the relay's socket.
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "posgw-mqtt-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// `direct` with the relay's socket as the address and room for a stand-in.
fn relay_options(direct: &MqttOptions, path: &Path, limit: usize) -> MqttOptions {
    let mut options = MqttOptions::new(direct.client_id(), path.to_string_lossy(), 0);
    options
        .set_transport(Transport::Unix)
        .set_keep_alive(direct.keep_alive())
        .set_clean_session(direct.clean_session())
        .set_manual_acks(direct.manual_acks())
        .set_inflight(direct.inflight())
        .set_request_channel_capacity(direct.request_channel_capacity())
        .set_pending_throttle(direct.pending_throttle())
        .set_max_packet_size(limit.max(STAND_IN_MAX), limit);
    if let Some(login) = direct.credentials() {
        options.set_credentials(login.username, login.password);
    }
    if let Some(will) = direct.last_will() {
        options.set_last_will(will);
    }
    options
}

/// The broker, as the relay reaches it.
struct Target {
    host: String,
    port: u16,
    /// With `mqtts://`: rumqttc's TLS settings and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Target {
    async fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        })
    }
}

/// The relay: takes connections on `listener`, one at a time, until `stop` (or none came for
/// [`ACCEPT_WITHIN`]), and carries each to the broker, the broker's bytes through `filter`.
///
/// One at a time, because rumqttc sometimes gives up a connection attempt it started (a poll
/// future dropped in a `select!`): the attempt that follows must reach the broker after it,
/// or its CONNECT could be the one the broker takes over from.
async fn relay(
    listener: UnixListener,
    target: Arc<Target>,
    mut filter: Filter,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(error) => {
                    tracing::debug!(%error, "mqtt size filter: accept failed");
                    return;
                }
            },
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ACCEPT_WITHIN) => return,
        };
        filter.state = State::Header;
        carry(client, &target, &mut filter).await;
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Carries one connection of rumqttc's to the broker until either side closes.
async fn carry(client: UnixStream, target: &Target, filter: &mut Filter) {
    let broker = match tokio::time::timeout(CONNECT_WITHIN, target.connect()).await {
        Ok(Ok(broker)) => broker,
        Ok(Err(error)) => {
            // rumqttc sees its connection close and reports the broker as unreachable.
            tracing::debug!(%error, "mqtt size filter: cannot reach the broker");
            return;
        }
        Err(_) => return,
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = tokio::io::split(broker);
    let upstream = async {
        let mut buffer = vec![0u8; READ_BUFFER];
        loop {
            let read = client_read.read(&mut buffer).await?;
            if read == 0 {
                return broker_write.shutdown().await;
            }
            broker_write.write_all(&buffer[..read]).await?;
            broker_write.flush().await?;
        }
    };
    let downstream = filter.pump(&mut broker_read, &mut client_write);
    let (side, result): (&str, io::Result<()>) = tokio::select! {
        result = upstream => ("client", result),
        result = downstream => ("broker", result),
    };
    match result {
        Ok(()) => tracing::debug!("mqtt size filter: the {side} closed the connection"),
        Err(error) => tracing::debug!(%error, "mqtt size filter: the {side} connection failed"),
    }
}

/// Where the filter is in the broker's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a packet.
    Header,
    /// Passing on this many more bytes of the current packet.
    Pass(usize),
    /// After the fixed header of a PUBLISH over the limit: its first byte and remaining length.
    Oversize { byte1: u8, remaining: usize },
    /// Skipping this many more bytes of a PUBLISH over the limit.
    Skip(usize),
}

/// Passes the broker's packets on, each PUBLISH over the limit replaced by a stand-in.
struct Filter {
    limit: usize,
    marker: OversizeMarker,
    counter: Counter,
    state: State,
}

impl Filter {
    fn new(limit: usize, marker: OversizeMarker, counter: Counter) -> Filter {
        Filter {
            limit,
            marker,
            counter,
            state: State::Header,
        }
    }

    /// Copies `from` to `to` through [`Filter::feed`] until `from` ends.
    async fn pump(
        &mut self,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
    ) -> io::Result<()> {
        let mut input = BytesMut::with_capacity(READ_BUFFER);
        let mut output = BytesMut::with_capacity(READ_BUFFER);
        loop {
            input.reserve(READ_BUFFER);
            if from.read_buf(&mut input).await? == 0 {
                return to.shutdown().await;
            }
            self.feed(&mut input, &mut output)?;
            if !output.is_empty() {
                to.write_all(&output).await?;
                output.clear();
            }
        }
    }

    /// Moves what `input` holds to `output`, packet by packet, leaving in `input` only the start
    /// of a fixed header, or of an oversize PUBLISH's topic and packet id, that is not whole yet
    /// (at most 64 KiB + 4 bytes).
    fn feed(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<()> {
        loop {
            match self.state {
                State::Pass(left) | State::Skip(left) => {
                    let take = left.min(input.len());
                    if take == 0 {
                        return Ok(());
                    }
                    if matches!(self.state, State::Pass(_)) {
                        output.extend_from_slice(&input[..take]);
                    }
                    input.advance(take);
                    self.state = match (self.state, left - take) {
                        (_, 0) => State::Header,
                        (State::Pass(_), left) => State::Pass(left),
                        (_, left) => State::Skip(left),
                    };
                }
                State::Header => {
                    let Some((header_len, remaining)) = fixed_header(input)? else {
                        return Ok(());
                    };
                    let byte1 = input[0];
                    if byte1 >> 4 == 3 && remaining > self.limit {
                        input.advance(header_len);
                        self.state = State::Oversize { byte1, remaining };
                    } else {
                        output.extend_from_slice(&input[..header_len]);
                        input.advance(header_len);
                        self.state = if remaining == 0 {
                            State::Header
                        } else {
                            State::Pass(remaining)
                        };
                    }
                }
                State::Oversize { byte1, remaining } => {
                    if input.len() < 2 {
                        return Ok(());
                    }
                    let topic_len = usize::from(u16::from_be_bytes([input[0], input[1]]));
                    let qos = (byte1 >> 1) & 0b11;
                    let head = 2 + topic_len + if qos > 0 { 2 } else { 0 };
                    if head > remaining {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a PUBLISH shorter than its topic",
                        ));
                    }
                    if input.len() < head {
                        return Ok(());
                    }
                    let payload = remaining - head;
                    output.put_u8(byte1);
                    put_remaining_length(output, head + STAND_IN_PAYLOAD);
                    output.extend_from_slice(&input[..head]);
                    output.extend_from_slice(&self.marker.0);
                    output.put_u64(payload as u64);
                    input.advance(head);
                    self.counter.inc();
                    self.state = if payload == 0 {
                        State::Header
                    } else {
                        State::Skip(payload)
                    };
                }
            }
        }
    }
}

/// A fixed header at the start of `input`: its length and the remaining length it announces;
/// `None` while incomplete.
fn fixed_header(input: &[u8]) -> io::Result<Option<(usize, usize)>> {
    let mut remaining = 0usize;
    for (index, &byte) in input.iter().enumerate().skip(1) {
        remaining |= usize::from(byte & 0x7f) << (7 * (index - 1));
        if byte & 0x80 == 0 {
            return Ok(Some((index + 1, remaining)));
        }
        if index == 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed remaining length",
            ));
        }
    }
    Ok(None)
}

/// Appends `len` as an MQTT remaining length (1 to 4 bytes).
fn put_remaining_length(output: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        output.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{PubAck, Publish};

    fn publish(topic: &str, qos: QoS, pkid: u16, payload: Vec<u8>) -> Publish {
        let mut publish = Publish::new(topic, qos, payload);
        publish.pkid = pkid;
        publish
    }

    fn encode(packets: &[Packet]) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        for packet in packets {
            packet.write(&mut bytes, usize::MAX).expect("encode");
        }
        bytes.to_vec()
    }

    /// Runs `stream` through a filter in pieces of `piece` bytes, and decodes what comes out.
    fn filtered(stream: &[u8], limit: usize, marker: OversizeMarker, piece: usize) -> Vec<Packet> {
        let counter = Counter::default();
        let mut filter = Filter::new(limit, marker, counter);
        let mut input = BytesMut::new();
        let mut output = BytesMut::new();
        let mut most_kept = 0;
        for chunk in stream.chunks(piece) {
            input.extend_from_slice(chunk);
            filter.feed(&mut input, &mut output).expect("well formed");
            most_kept = most_kept.max(input.len());
        }
        assert!(input.is_empty(), "everything passed on");
        assert!(
            most_kept <= piece.max(2 + 65_535 + 2 + 4),
            "kept {most_kept} bytes"
        );
        let mut packets = Vec::new();
        while !output.is_empty() {
            packets.push(Packet::read(&mut output, limit.max(STAND_IN_MAX)).expect("decodes"));
        }
        packets
    }

    /// A stream with messages under, at and over the limit (QoS 1 and QoS 0), with other
    /// packets between, comes out unchanged except the ones over the limit, which become
    /// stand-ins with the same flags, topic and packet id, and their payload's size; the result
    /// is the same however the stream is cut into reads.
    #[test]
    fn publishes_over_the_limit_become_stand_ins_and_the_rest_passes_unchanged() {
        let limit = 1_000;
        let marker = OversizeMarker::random();
        let topic = "store/till-1/scanner";
        let at_limit = limit - 2 - topic.len() - 2;
        let mut big = publish(topic, QoS::AtLeastOnce, 7, vec![b'x'; 5_000]);
        big.dup = true;
        let packets = vec![
            Packet::Publish(publish(topic, QoS::AtLeastOnce, 5, b"]C0BEFORE".to_vec())),
            Packet::PingResp,
            Packet::Publish(big),
            Packet::Publish(publish(topic, QoS::AtLeastOnce, 8, vec![b'y'; at_limit])),
            Packet::Publish(publish(topic, QoS::AtMostOnce, 0, vec![b'z'; 300_000])),
            Packet::PubAck(PubAck::new(3)),
            Packet::Publish(publish(topic, QoS::AtLeastOnce, 9, b"]C0AFTER".to_vec())),
        ];
        let stream = encode(&packets);
        for piece in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let out = filtered(&stream, limit, marker, piece);
            assert_eq!(out.len(), packets.len(), "piece {piece}");
            for (index, (got, sent)) in out.iter().zip(&packets).enumerate() {
                match (got, sent) {
                    (Packet::Publish(got), Packet::Publish(sent)) if sent.payload.len() > 900 => {
                        assert_eq!(
                            (got.dup, got.qos, got.retain, &got.topic, got.pkid),
                            (sent.dup, sent.qos, sent.retain, &sent.topic, sent.pkid),
                            "piece {piece}, packet {index}"
                        );
                        if sent.payload.len() == at_limit {
                            assert_eq!(got, sent, "at the limit: read as it is");
                        } else {
                            assert_eq!(
                                marker.size(&got.payload),
                                Some(sent.payload.len() as u64),
                                "piece {piece}, packet {index}"
                            );
                        }
                    }
                    _ => assert_eq!(got, sent, "piece {piece}, packet {index}"),
                }
            }
        }
    }

    #[test]
    fn only_this_guards_marker_makes_a_stand_in() {
        let marker = OversizeMarker::random();
        let other = OversizeMarker::random();
        let mut payload = marker.0.to_vec();
        payload.extend_from_slice(&1_100_000u64.to_be_bytes());
        assert_eq!(marker.size(&payload), Some(1_100_000));
        assert_eq!(other.size(&payload), None);
        assert_eq!(marker.size(&payload[1..]), None);
        assert_eq!(marker.size(b"]C0LOT-42"), None);
    }

    #[test]
    fn stand_ins_are_counted_and_a_malformed_length_ends_the_connection() {
        let counter = Counter::default();
        let mut filter = Filter::new(10, OversizeMarker::random(), counter.clone());
        let mut input = BytesMut::from(
            &encode(&[
                Packet::Publish(publish("t", QoS::AtLeastOnce, 1, vec![0; 50])),
                Packet::Publish(publish("t", QoS::AtLeastOnce, 2, vec![0; 50])),
            ])[..],
        );
        let mut output = BytesMut::new();
        filter.feed(&mut input, &mut output).expect("fine");
        assert_eq!(counter.get(), 2);
        let mut bad = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(filter.feed(&mut bad, &mut output).is_err());
    }

    #[test]
    fn remaining_lengths_round_trip() {
        for len in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut bytes = BytesMut::new();
            bytes.put_u8(0x30);
            put_remaining_length(&mut bytes, len);
            assert_eq!(
                fixed_header(&bytes).expect("valid"),
                Some((bytes.len(), len)),
                "{len}"
            );
            assert_eq!(
                fixed_header(&bytes[..bytes.len() - 1]).expect("valid"),
                None
            );
        }
    }
}

#[cfg(test)]
mod relay_tests {
    use super::*;
    use rumqttc::tokio_rustls::rustls;
    use rumqttc::tokio_rustls::TlsAcceptor;
    use rumqttc::{AsyncClient, ConnAck, ConnectReturnCode};
    use tokio::net::TcpListener;

    /// After a connection fails on an oversize message, the next one goes through the relay to
    /// the broker, which sees the same CONNECT; the oversize PUBLISH arrives as a stand-in; the
    /// connection after that goes straight to the broker again.
    #[tokio::test]
    async fn the_connection_after_an_oversize_message_goes_through_the_filter() {
        let broker = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = broker.local_addr().expect("address").port();
        let direct = MqttOptions::new("posgw-test-devices", "127.0.0.1", port);
        relay_round_trip(broker, direct, None).await;
    }

    /// The same over TLS: the relay uses the connection's own rustls configuration and checks
    /// the broker's certificate for the broker's host name.
    #[tokio::test]
    async fn the_filter_reaches_a_tls_broker_with_the_connections_tls_settings() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (ca, chain, key) = test_certificates(dir.path());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("test CA");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let broker = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = broker.local_addr().expect("address").port();
        let mut direct = MqttOptions::new("posgw-test-devices", "localhost", port);
        direct.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(client),
        )));
        relay_round_trip(broker, direct, Some(TlsAcceptor::from(Arc::new(server)))).await;
    }

    /// Any other failure leaves the connection as it was, but drops the QoS 1 messages rumqttc
    /// read in the broken connection and would hand out after the next CONNACK (they are
    /// delivered again); QoS 0 ones are kept, as nothing delivers them again.
    #[tokio::test]
    async fn other_failures_change_nothing_but_drop_what_the_broken_connection_read() {
        let direct = MqttOptions::new("posgw-test-devices", "127.0.0.1", 1883);
        let mut guard =
            OversizeGuard::new("test", &direct, 1000, Counter::default()).expect("guard");
        let (_client, mut event_loop) = AsyncClient::new(direct, 10);
        let mut qos1 = rumqttc::Publish::new("t", QoS::AtLeastOnce, "]C0READ-1");
        qos1.pkid = 1;
        let qos0 = rumqttc::Publish::new("t", QoS::AtMostOnce, "]C0READ-0");
        for publish in [qos1, qos0.clone()] {
            event_loop
                .state
                .events
                .push_back(Event::Incoming(Packet::Publish(publish)));
        }
        let error = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(guard.failed(&mut event_loop, &error), None);
        assert_eq!(
            event_loop.state.events.iter().collect::<Vec<_>>(),
            [&Event::Incoming(Packet::Publish(qos0))]
        );
        assert_eq!(event_loop.mqtt_options.broker_address().1, 1883);
        assert!(guard.armed.is_none() && guard.dir.is_none());
    }

    /// A CA and a certificate for `localhost` signed by it, made with the openssl command.
    fn test_certificates(
        dir: &Path,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout ca.key -out ca.pem -subj /CN=posgw-test-ca -days 2 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout leaf.key -out leaf.csr -subj /CN=localhost 2>/dev/null
            printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > leaf.ext
            openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                -out leaf.pem -days 2 -extfile leaf.ext 2>/dev/null
            openssl x509 -in ca.pem -outform DER -out ca.der
            openssl x509 -in leaf.pem -outform DER -out leaf.der
            openssl pkcs8 -topk8 -nocrypt -in leaf.key -outform DER -out leaf.key.der";
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl made the test certificates");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("certificate file");
        (
            read("ca.der").into(),
            vec![read("leaf.der").into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(read("leaf.key.der").into()),
        )
    }

    /// A fake broker on `broker` (behind TLS with `tls`): takes a CONNECT, answers CONNACK and a
    /// 5,000-byte PUBLISH, and returns the CONNECT once the client leaves.
    async fn fake_broker(broker: TcpListener, tls: Option<TlsAcceptor>) -> Packet {
        let (socket, _) = broker.accept().await.expect("accept");
        let mut socket: Box<dyn Stream> = match tls {
            Some(tls) => Box::new(tls.accept(socket).await.expect("TLS handshake")),
            None => Box::new(socket),
        };
        let mut bytes = BytesMut::new();
        let connect = loop {
            socket.read_buf(&mut bytes).await.expect("read");
            match Packet::read(&mut bytes, 10_000) {
                Ok(packet) => break packet,
                Err(rumqttc::Error::InsufficientBytes(_)) => continue,
                Err(error) => panic!("{error}"),
            }
        };
        let mut out = BytesMut::new();
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, true))
            .write(&mut out, usize::MAX)
            .expect("encode");
        let mut big = rumqttc::Publish::new("t", QoS::AtLeastOnce, vec![1u8; 5000]);
        big.pkid = 3;
        Packet::Publish(big)
            .write(&mut out, usize::MAX)
            .expect("encode");
        socket.write_all(&out).await.expect("write");
        socket.flush().await.expect("flush");
        // Until the client leaves.
        while socket.read_buf(&mut bytes).await.is_ok_and(|read| read > 0) {}
        connect
    }

    async fn relay_round_trip(
        broker: TcpListener,
        mut direct: MqttOptions,
        tls: Option<TlsAcceptor>,
    ) {
        direct
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(1000, 1000);
        let counter = Counter::default();
        let mut guard = OversizeGuard::new("test", &direct, 1000, counter.clone()).expect("guard");
        let (_client, mut event_loop) = AsyncClient::new(direct.clone(), 10);
        let error = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(5000),
        ));
        assert_eq!(guard.failed(&mut event_loop, &error), Some(5000));
        let fake_broker = tokio::spawn(fake_broker(broker, tls));
        let connack = tokio::time::timeout(Duration::from_secs(5), event_loop.poll())
            .await
            .expect("in time");
        assert!(
            matches!(connack, Ok(Event::Incoming(Packet::ConnAck(_)))),
            "{connack:?}"
        );
        guard.connected(&mut event_loop);
        let publish = loop {
            match tokio::time::timeout(Duration::from_secs(5), event_loop.poll())
                .await
                .expect("in time")
            {
                Ok(Event::Incoming(Packet::Publish(publish))) => break publish,
                Ok(_) => {}
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!((publish.pkid, publish.topic.as_str()), (3, "t"));
        assert_eq!(guard.marker().size(&publish.payload), Some(5000));
        assert_eq!(counter.get(), 1);
        event_loop.network = None;
        let connect = tokio::time::timeout(Duration::from_secs(5), fake_broker)
            .await
            .expect("in time")
            .expect("fake broker");
        assert!(
            matches!(&connect, Packet::Connect(connect) if connect.client_id == "posgw-test-devices" && !connect.clean_session),
            "{connect:?}"
        );
        // The next connection goes straight to the broker again.
        assert_eq!(
            event_loop.mqtt_options.broker_address(),
            direct.broker_address()
        );
        assert!(guard.armed.is_none());
    }
}
