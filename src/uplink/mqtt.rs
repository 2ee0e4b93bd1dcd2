//! MQTT transport for the uplink (docs/hq-protocol.md): each batch is one QoS 1 publish of the
//! same body the HTTP uplink would POST, and the broker's PUBACK plays the role of HQ's 2xx.
//! This is how a chain with thousands of stores scales out onto its broker cluster.
//!
//! Topic: the endpoint's path (`mqtt://broker:1883/hq/records` → `hq/records`); a compressed body
//! goes to the topic with a `.gz` or `.zst` suffix, so subscribers know how to read it.
//! Credentials: the store code as user name and the token from `token_file` as password.
//!
//! Exactly one publish is ever outstanding. A publish that was not acknowledged in time is not
//! sent again: the client library keeps it in the persistent session and re-sends it after a
//! reconnect, and the next attempt waits for that acknowledgement. This keeps memory flat during
//! a week without network and guarantees a late PUBACK can only belong to the batch in flight.

use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::delivery::Delivery;
use crate::config::{Compression, UplinkSettings};
use crate::mqtt::{self, BrokerUrl};

/// Longest wait for the broker's PUBACK before the attempt counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a connection error before the event loop tries again.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Room for the MQTT header and topic beyond the body.
const PACKET_OVERHEAD: usize = 64 * 1024;

/// What the event loop task reports.
#[derive(Debug)]
enum LoopEvent {
    /// A publish with this packet id went out (first time or re-sent after a reconnect).
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection failed; the loop reconnects by itself.
    Failed(String),
}

/// Publishes batches to a broker.
pub struct MqttTransport {
    client: AsyncClient,
    topic: String,
    events: mpsc::UnboundedReceiver<LoopEvent>,
    event_loop: JoinHandle<()>,
    max_body: usize,
    /// A publish was made and its PUBACK has not been seen.
    awaiting: bool,
    /// Packet id of the publish in flight, once the event loop reported it sent.
    in_flight: Option<u16>,
}

impl MqttTransport {
    /// Connects (lazily: the event loop connects and reconnects by itself).
    pub fn new(settings: &UplinkSettings, store: &str, gateway: &str) -> anyhow::Result<Self> {
        let url = BrokerUrl::parse(&settings.endpoint)?;
        if url.path.is_empty() {
            anyhow::bail!(
                "the MQTT uplink endpoint '{}' names no topic",
                settings.endpoint
            );
        }
        let topic = match settings.compression {
            Compression::None => url.path.clone(),
            Compression::Gzip => format!("{}.gz", url.path),
            Compression::Zstd => format!("{}.zst", url.path),
        };
        let credentials = match &settings.token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read token_file {}", path.display()))?;
                Some((store.to_owned(), token.trim().to_owned()))
            }
            None => None,
        };
        let max_body = usize::try_from(settings.batch_max_bytes).unwrap_or(usize::MAX);
        let options = mqtt::options(
            &url,
            &mqtt::client_id(store, gateway, "uplink"),
            credentials,
            max_body.saturating_add(PACKET_OVERHEAD),
        )?;
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        let (tx, events) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            loop {
                let event = match event_loop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LoopEvent::Sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => LoopEvent::Acked(ack.pkid),
                    Ok(_) => continue,
                    Err(error) => {
                        let _ = tx.send(LoopEvent::Failed(error.to_string()));
                        tokio::time::sleep(RECONNECT_DELAY).await;
                        continue;
                    }
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(MqttTransport {
            client,
            topic,
            events,
            event_loop,
            max_body,
            awaiting: false,
            in_flight: None,
        })
    }

    /// One attempt to deliver `body`; the caller only ever retries with the same body.
    pub async fn deliver(&mut self, body: &[u8]) -> Delivery {
        if body.len() > self.max_body.saturating_add(PACKET_OVERHEAD / 2) {
            return Delivery::TooLarge;
        }
        if !self.awaiting {
            if let Err(error) = self
                .client
                .publish(self.topic.clone(), QoS::AtLeastOnce, false, body.to_vec())
                .await
            {
                return Delivery::Retry {
                    error: format!("cannot queue the MQTT publish: {error}"),
                    after: None,
                };
            }
            self.awaiting = true;
            self.in_flight = None;
        }
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        let mut last_failure = None;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Delivery::Retry {
                        error: "the MQTT event loop stopped".into(),
                        after: None,
                    }
                }
                Err(_) => {
                    return Delivery::Retry {
                        error: last_failure.unwrap_or_else(|| {
                            format!("no PUBACK from the broker within {ACK_TIMEOUT:?}")
                        }),
                        after: None,
                    }
                }
            };
            match event {
                LoopEvent::Sent(pkid) => self.in_flight = Some(pkid),
                LoopEvent::Acked(pkid) if self.in_flight == Some(pkid) => {
                    self.awaiting = false;
                    self.in_flight = None;
                    return Delivery::Accepted;
                }
                LoopEvent::Acked(_) => {}
                LoopEvent::Failed(error) => {
                    last_failure = Some(format!("MQTT broker unreachable: {error}"));
                }
            }
        }
    }
}

impl Drop for MqttTransport {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}
