//! The MQTT POS channel (docs/local-api.md): POS software on the store's broker that draws its
//! own screen sees the open prompts and consultations, answers the prompts and records the
//! consultations' steps, as an alternative to the clerk page.
//!
//! # Topics (store `S`, station `T`)
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `posgw/S/T/prompt` | gateway → POS | the prompt JSON, as `GET /api/v1/prompts` shows it |
//! | `posgw/S/T/resolved` | gateway → POS | `{"id","outcome","answer"}` |
//! | `posgw/S/T/answer` | POS → gateway | `{"prompt":"…","option":"…","clerk":"…"}` (`clerk` optional) |
//! | `posgw/S/T/answer/error` | gateway → POS | `{"prompt","error"}`: why an answer was refused |
//! | `posgw/S/T/consultation` | gateway → POS | the consultation JSON at every change, as `GET /api/v1/consultations` and the SSE `event: consultation` show it; `state` is `open` or how it closed |
//! | `posgw/S/T/consultation/step` | POS → gateway | `{"consultation":"…","step":"…","value"?,"values"?,"skip"?,"clerk"?}` |
//! | `posgw/S/T/consultation/step/error` | gateway → POS | `{"consultation","step","error"}`: why a step was refused |
//!
//! `answer/error` and `consultation/step/error` are extensions of the contract: without them a
//! POS whose message was refused (unknown prompt or consultation, already resolved or closed,
//! option or value not offered, not JSON) would only see nothing happen. `prompt`,
//! `consultation` and `step` are null when the payload did not name one.
//!
//! Everything is QoS 1 and not retained: a retained prompt or consultation would outlive its
//! end. A consultation message is always the whole consultation, so the last one of an id is
//! its current state.
//!
//! # Design
//!
//! One connection (client id `…-prompts`) for both kinds, and three tasks, so that nothing ever
//! stops the rumqttc event loop from being polled (it needs continuous polling for keep-alive,
//! acknowledgements and reconnecting):
//!
//! - **The connection task** ([`run`]) owns the [`EventLoop`]. It never awaits the client's
//!   request queue (it is the one draining it, so that could deadlock). On every ConnAck it
//!   tells the publisher; every incoming message goes to the inbound task. When the broker is
//!   unreachable (also at start: the gateway starts anyway) it sleeps and polls again, which
//!   reconnects: the delay starts at [`RECONNECT_MIN`], doubles up to [`RECONNECT_MAX`], and
//!   each sleep is a random time between half and all of it, so a store's gateways do not
//!   reconnect in lock step after a broker restart. The first failure of an outage is logged
//!   as a warning, the others at debug, the recovery at info. Broker errors never end it.
//! - **The publisher** ([`publish_events`]) holds a [`PromptsHandle::subscription`] and a
//!   [`ConsultHandle::subscribe`] of every station. It publishes each `Prompt` event to
//!   `prompt`, each `Resolved` to `resolved` (`Stats` is for the clerk page only) and each
//!   consultation change to `consultation`. On every ConnAck it subscribes to
//!   `posgw/S/+/answer` and `posgw/S/+/consultation/step` (QoS 1, one SUBSCRIBE) again,
//!   because a broker restarted without persistence forgot the subscriptions; then, on the
//!   first connection and whenever the broker had no session for us (`session_present ==
//!   false`), it takes fresh snapshots and publishes every open prompt and every open
//!   consultation again, so a POS that connected late still sees them. When a broadcast lags
//!   it re-subscribes to that engine and republishes its snapshot the same way. Prompts and
//!   consultations are therefore sometimes published twice; POS software dedupes prompts by
//!   `id` and keeps the last consultation message of an `id` (a `resolved` is never repeated
//!   this way). While the broker is away, publishes wait in the client's queue
//!   ([`REQUEST_QUEUE`]); when it is full the publisher waits, the broadcasts lag, and the
//!   snapshots catch up later: memory stays flat during a long outage. A limit of this: when
//!   the broker comes back without our session, publishes that were in flight are dropped;
//!   open prompts and consultations are republished, but a `resolved`, or the last message of
//!   a consultation that closed meanwhile, is lost (rare: the broker must lose its state while
//!   that message is on its way; the consultation's record is kept all the same). A message
//!   over [`MAX_PACKET`] is never published (rumqttc would fail the connection on it): it is
//!   logged as an error instead.
//! - **The inbound task** ([`take_messages`]) settles answers and steps one at a time, so a
//!   slow journal delays them but never the connection. They queue unbounded in front of it,
//!   but the broker sends at most its in-flight limit of unacknowledged QoS 1 messages
//!   (mosquitto: 20), so the queue stays small.
//!
//! # Answers and acknowledgements
//!
//! The station comes from the topic, the prompt and option from the JSON; the answer is taken
//! with [`PromptsHandle::answer`] and channel `mqtt`. Acknowledgements are manual: an answer is
//! PUBACKed only once it is settled, so a crash in between makes the broker deliver it again.
//!
//! - Taken: [`PromptsHandle::answer`] returned, so its `attribution` record is durable. Ack.
//! - Refused for good (unknown prompt, already resolved, option not offered, malformed JSON, or
//!   over [`MAX_PACKET`], which is not read: see below): a warning with the reason, an
//!   `answer/error` reply, then ack. Exception: a repeat of an answer this process already took
//!   (same prompt and option, remembered for the last [`TAKEN_MEMORY`] answers) is a
//!   redelivery, for instance after a connection dropped before our PUBACK left. It is acked
//!   without a reply.
//! - The engine is unavailable (the journal failed, or shutdown): warning and an
//!   `answer/error` reply, but no ack. The broker delivers it again after the next reconnect
//!   (MQTT 3.1.1 redelivers only then), and it is taken if the engine is back.
//!
//! An answer published on another station's topic is accepted: prompt ids are unique, and a
//! POS answering for the wrong counter is a configuration slip that should not lose the
//! answer. It is logged as a warning (the record keeps the prompt's own station).
//!
//! # Steps and acknowledgements
//!
//! The same rules, with [`ConsultHandle::step`] ([`steps`]): the station comes from the topic,
//! the rest from the JSON, which has the fields of the local API's step body (`value`,
//! `values`, `skip`, `clerk`, no others) plus `consultation` and `step`.
//!
//! - Taken: [`ConsultHandle::step`] returned, so its `consultation_step` record is durable.
//!   The change reaches the POS on `consultation` like any other. Ack.
//! - Refused for good (unknown or closed consultation, unknown step, value not offered, a skip
//!   reason not listed, malformed JSON, a clerk over 64 characters, over [`MAX_PACKET`], or a
//!   consultation of another station than the topic's): a warning, a
//!   `consultation/step/error` reply, then ack. Unlike answers, the station must match: a step
//!   recorded for the wrong counter's customer would be a false record. Exception: a message the
//!   broker delivers again (DUP set) that repeats a step this process already took (same
//!   consultation, step and input, remembered for the last [`TAKEN_MEMORY`] steps) is acked
//!   without a new record or a reply. Without DUP a repeat is a new step (the clerk may have
//!   changed it on the page meanwhile) and is taken.
//! - The engine is unavailable (the journal failed, or shutdown): warning and a reply, no ack,
//!   as for answers.
//!
//! A step redelivered after the gateway restarted is not remembered: it is taken again, with
//! a new time, unless its consultation has closed meanwhile.
//!
//! # Messages over the size limit
//!
//! rumqttc cannot read a message over [`MAX_PACKET`] (its connection fails), and the broker would
//! deliver it again and again. [`crate::mqtt::OversizeGuard`] has the connection after such a
//! failure read it by its size only: it comes to the inbound task as a stand-in, is refused
//! (`answer too large: N bytes …` or `step too large: …`, with the names null as it was not
//! read) and acknowledged, and counted in
//! `posgw_mqtt_oversize_messages_total{channel="prompts"}`. The messages after it are taken as
//! usual.
//!
//! # Shutdown
//!
//! When `shutdown` fires the connection task stops handing messages to the inbound task (those
//! arriving later stay unacknowledged and come back at the next start), keeps polling while
//! the inbound task settles what it already received (at most [`ANSWER_GRACE`]), then sends
//! DISCONNECT and returns. The gateway stops the prompt and consultation engines only after
//! this returns.
//!
//! # Credentials
//!
//! `[mqtt] username` and the password in `password_file` (read once, here, at start; a
//! trailing newline is dropped). A user name without a password file sends an empty password;
//! a password file without a user name is an error (MQTT 3.1.1 has no password without a user
//! name). The client id is `posgw-{store}-{gateway}-prompts` with a persistent session, so the
//! broker keeps our subscriptions and the answers and steps sent while the gateway was away.

mod steps;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PromptError, PromptEvent, PromptView, PromptsHandle};
use crate::config::MqttSettings;
use crate::consult::{ConsultEvent, ConsultHandle, ConsultationView};
use crate::mqtt::{self, OversizeGuard, OversizeMarker};
use crate::record::attribution::Channel;

/// The role in the client id: `posgw-{store}-{gateway}-prompts` (kept when consultations
/// joined, so that the broker's session for it carries on).
const ROLE: &str = "prompts";
/// Largest MQTT packet either way (a message's topic and payload); prompts, consultations,
/// answers and steps are a few hundred bytes to a few KiB. A larger incoming message is refused
/// without being read, a larger outgoing one is not published (module doc).
const MAX_PACKET: usize = 256 * 1024;
/// Requests (publishes, acks, subscribes) that may wait for the connection.
const REQUEST_QUEUE: usize = 64;
/// First pause after a connection failure.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest pause between connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for answers and steps already received to be settled.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for the DISCONNECT to leave.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);
/// Answers (and, apart, steps) taken by this process that are remembered to recognise
/// redeliveries.
const TAKEN_MEMORY: usize = 256;

/// The engines the channel serves. Cheap to clone.
#[derive(Clone)]
pub struct Engines {
    /// Prompts: published, answered.
    pub prompts: PromptsHandle,
    /// Consultations: published, stepped.
    pub consult: ConsultHandle,
}

/// Starts the channel on the store's broker. It runs until `shutdown` fires; `oversize` counts
/// incoming messages over the size limit.
///
/// Fails only on bad settings (URL, unreadable password file); an unreachable broker is retried
/// in the background.
pub fn spawn(
    settings: &MqttSettings,
    store: &str,
    gateway: &str,
    engines: Engines,
    oversize: prometheus_client::metrics::counter::Counter,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let mut options = mqtt::store_broker_options(settings, store, gateway, ROLE, MAX_PACKET)?;
    options.set_manual_acks(true);
    let guard = OversizeGuard::new("mqtt prompt channel", &options, MAX_PACKET, oversize)?;
    let (client, event_loop) = AsyncClient::new(options, REQUEST_QUEUE);
    let topics = Arc::new(Topics::new(store));
    tracing::info!(
        broker = %settings.url,
        answers = %topics.answers(),
        steps = %topics.steps(),
        "mqtt prompt channel starting"
    );
    Ok(tokio::spawn(run(
        client,
        event_loop,
        guard,
        topics,
        engines,
        settings.url.clone(),
        shutdown,
    )))
}

/// The channel's topic names for one store.
#[derive(Debug)]
struct Topics {
    /// `posgw/{store}/`.
    prefix: String,
}

/// An incoming message's kind, by its topic, and the station the topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound<'a> {
    /// On `posgw/S/T/answer`.
    Answer(&'a str),
    /// On `posgw/S/T/consultation/step`.
    Step(&'a str),
}

impl<'a> Inbound<'a> {
    fn station(self) -> &'a str {
        match self {
            Inbound::Answer(station) | Inbound::Step(station) => station,
        }
    }
}

impl Topics {
    /// The suffix of answer topics.
    const ANSWER: &'static str = "/answer";
    /// The suffix of step topics.
    const STEP: &'static str = "/consultation/step";

    fn new(store: &str) -> Topics {
        Topics {
            prefix: format!("posgw/{store}/"),
        }
    }

    /// Where a station's open prompts go.
    fn prompt(&self, station: &str) -> String {
        format!("{}{station}/prompt", self.prefix)
    }

    /// Where a station's resolutions go.
    fn resolved(&self, station: &str) -> String {
        format!("{}{station}/resolved", self.prefix)
    }

    /// Where a station's consultations go.
    fn consultation(&self, station: &str) -> String {
        format!("{}{station}/consultation", self.prefix)
    }

    /// The filter for every station's answers.
    fn answers(&self) -> String {
        format!("{}+{}", self.prefix, Self::ANSWER)
    }

    /// The filter for every station's steps.
    fn steps(&self) -> String {
        format!("{}+{}", self.prefix, Self::STEP)
    }

    /// What the channel subscribes to, in one SUBSCRIBE: every station's answers and steps.
    fn filters(&self) -> [SubscribeFilter; 2] {
        [
            SubscribeFilter::new(self.answers(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.steps(), QoS::AtLeastOnce),
        ]
    }

    /// Where refusals of a station's answers go.
    fn answer_error(&self, station: &str) -> String {
        format!("{}{station}{}/error", self.prefix, Self::ANSWER)
    }

    /// Where refusals of a station's steps go.
    fn step_error(&self, station: &str) -> String {
        format!("{}{station}{}/error", self.prefix, Self::STEP)
    }

    /// What an incoming message on `topic` is, or None when it is neither an answer nor a step.
    fn inbound<'a>(&self, topic: &'a str) -> Option<Inbound<'a>> {
        let rest = topic.strip_prefix(&self.prefix)?;
        let (station, inbound): (&str, fn(&'a str) -> Inbound<'a>) =
            if let Some(station) = rest.strip_suffix(Self::ANSWER) {
                (station, Inbound::Answer)
            } else {
                (rest.strip_suffix(Self::STEP)?, Inbound::Step)
            };
        (!station.is_empty() && !station.contains('/')).then(|| inbound(station))
    }
}

/// The connection task: polls the event loop until shutdown, then winds down (module doc).
async fn run(
    client: AsyncClient,
    mut event_loop: EventLoop,
    mut guard: OversizeGuard,
    topics: Arc<Topics>,
    engines: Engines,
    broker: String,
    shutdown: CancellationToken,
) {
    let (connections, connections_rx) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publish_events(
        client.clone(),
        Arc::clone(&topics),
        engines.clone(),
        connections_rx,
    ));
    let (inbound, inbound_rx) = mpsc::unbounded_channel();
    let mut inbound_task = tokio::spawn(take_messages(
        client.clone(),
        Arc::clone(&topics),
        engines,
        guard.marker(),
        inbound_rx,
    ));
    let mut connection = Connection::new(broker);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                guard.connected(&mut event_loop);
                connection.connected(ack.session_present);
                // The publisher subscribes: this task must not wait on the request queue.
                let _ = connections.send(ack.session_present);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = inbound.send(publish);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // One SUBSCRIBE, the filters in the order of `Topics::filters`.
                for (filter, code) in topics.filters().iter().zip(&ack.return_codes) {
                    if *code == SubscribeReasonCode::Failure {
                        tracing::error!(
                            topic = %filter.path,
                            "the broker refused a subscription of the mqtt prompt channel; messages from POS software on it will not arrive (check the broker's ACL)"
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                // After a message over the limit, the next connection reads it by its size.
                guard.failed(&mut event_loop, &error);
                let delay = connection.failed(&error);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    // Stop reading: messages that arrive from now on stay unacknowledged at the broker.
    drop(inbound);
    publisher.abort();
    let deadline = tokio::time::Instant::now() + ANSWER_GRACE;
    loop {
        tokio::select! {
            _ = &mut inbound_task => break,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("mqtt prompt channel: answers or steps still being taken at shutdown; the broker will deliver them again");
                inbound_task.abort();
                break;
            }
            // Keep polling while connected, so acknowledgements and replies go out.
            event = event_loop.poll(), if connection.is_up() => {
                if event.is_err() {
                    connection.down();
                }
            }
        }
    }
    if connection.is_up() && client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    tracing::info!("mqtt prompt channel stopped");
}

/// Connection state for logging and the reconnect delay.
struct Connection {
    /// The broker URL, for log lines.
    broker: String,
    /// Connected (a ConnAck and no error since).
    up: bool,
    /// Failed attempts since the last ConnAck.
    failures: u32,
    /// The current reconnect step, before jitter.
    step: Duration,
}

impl Connection {
    fn new(broker: String) -> Connection {
        Connection {
            broker,
            up: false,
            failures: 0,
            step: RECONNECT_MIN,
        }
    }

    fn is_up(&self) -> bool {
        self.up
    }

    fn down(&mut self) {
        self.up = false;
    }

    fn connected(&mut self, session_present: bool) {
        if self.failures > 0 {
            tracing::info!(broker = %self.broker, failures = self.failures, session_present, "mqtt prompt channel reconnected");
        } else {
            tracing::info!(broker = %self.broker, session_present, "mqtt prompt channel connected");
        }
        self.up = true;
        self.failures = 0;
        self.step = RECONNECT_MIN;
    }

    /// Records a failure and returns how long to wait before the next attempt.
    fn failed(&mut self, error: &rumqttc::ConnectionError) -> Duration {
        let delay = jittered(self.step);
        if self.failures == 0 {
            tracing::warn!(
                broker = %self.broker,
                %error,
                "mqtt prompt channel: broker connection failed; retrying every {:?} at most, further failures are logged at debug",
                RECONNECT_MAX
            );
        } else {
            tracing::debug!(broker = %self.broker, %error, failures = self.failures + 1, "mqtt prompt channel: still no broker; retrying in {delay:?}");
        }
        self.up = false;
        self.failures = self.failures.saturating_add(1);
        self.step = (self.step * 2).min(RECONNECT_MAX);
        delay
    }
}

/// A random time between half of `step` and all of it.
fn jittered(step: Duration) -> Duration {
    step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// The publisher task: prompts, resolutions and consultations out, the subscriptions renewed
/// (module doc). `connections` carries `session_present` of every ConnAck.
async fn publish_events(
    client: AsyncClient,
    topics: Arc<Topics>,
    engines: Engines,
    mut connections: mpsc::UnboundedReceiver<bool>,
) {
    let mut events = engines.prompts.subscription(None).await.events;
    // None once the consultation engine stopped (shutdown): prompts go on.
    let mut consultations = engines
        .consult
        .subscribe()
        .await
        .ok()
        .map(|(_, events)| events);
    let mut first = true;
    loop {
        let published = tokio::select! {
            biased;
            connection = connections.recv() => {
                let Some(session_present) = connection else { return };
                if let Err(error) = client.subscribe_many(topics.filters()).await {
                    tracing::debug!(%error, "mqtt prompt channel: cannot queue the subscription");
                    return;
                }
                if first || !session_present {
                    first = false;
                    match resync(&client, &topics, &engines.prompts, &mut events).await {
                        Ok(()) => {
                            resync_consultations(&client, &topics, &engines.consult, &mut consultations)
                                .await
                        }
                        Err(error) => Err(error),
                    }
                } else {
                    Ok(())
                }
            }
            event = events.recv() => match event {
                Ok(event) => publish_event(&client, &topics, &event).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "mqtt prompt channel fell behind the prompt events; publishing the open prompts again");
                    resync(&client, &topics, &engines.prompts, &mut events).await
                }
                // The engine stopped: the gateway is shutting down.
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = next_consultation(&mut consultations) => match event {
                Ok(ConsultEvent::Changed(view)) => publish_consultation(&client, &topics, &view).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "mqtt prompt channel fell behind the consultation events; publishing the open consultations again");
                    resync_consultations(&client, &topics, &engines.consult, &mut consultations).await
                }
                // The engine stopped (shutdown): prompts may still have something to say.
                Err(broadcast::error::RecvError::Closed) => {
                    consultations = None;
                    Ok(())
                }
            },
        };
        if let Err(error) = published {
            // Only when the event loop is gone, i.e. the channel is stopping.
            tracing::debug!(%error, "mqtt prompt channel: cannot queue a publish");
            return;
        }
    }
}

/// The next consultation event; never, without a subscription.
async fn next_consultation(
    events: &mut Option<broadcast::Receiver<ConsultEvent>>,
) -> Result<ConsultEvent, broadcast::error::RecvError> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Takes a fresh subscription and publishes every open prompt of its snapshot.
async fn resync(
    client: &AsyncClient,
    topics: &Topics,
    prompts: &PromptsHandle,
    events: &mut broadcast::Receiver<PromptEvent>,
) -> Result<(), rumqttc::ClientError> {
    let subscription = prompts.subscription(None).await;
    *events = subscription.events;
    for prompt in &subscription.prompts {
        publish_prompt(client, topics, prompt).await?;
    }
    Ok(())
}

/// Takes a fresh consultation subscription and publishes every open consultation of its
/// snapshot; leaves `events` None when the engine has stopped.
async fn resync_consultations(
    client: &AsyncClient,
    topics: &Topics,
    consult: &ConsultHandle,
    events: &mut Option<broadcast::Receiver<ConsultEvent>>,
) -> Result<(), rumqttc::ClientError> {
    let Ok((open, subscription)) = consult.subscribe().await else {
        *events = None;
        return Ok(());
    };
    *events = Some(subscription);
    for view in &open {
        publish_consultation(client, topics, view).await?;
    }
    Ok(())
}

/// Publishes one engine event (prompts and resolutions; figures are not published).
async fn publish_event(
    client: &AsyncClient,
    topics: &Topics,
    event: &PromptEvent,
) -> Result<(), rumqttc::ClientError> {
    match event {
        PromptEvent::Prompt(prompt) => publish_prompt(client, topics, prompt).await,
        PromptEvent::Resolved {
            station,
            id,
            outcome,
            answer,
        } => {
            let body = serde_json::json!({ "id": id, "outcome": outcome, "answer": answer });
            publish_json(client, topics.resolved(station), &body).await
        }
        PromptEvent::Stats(_) => Ok(()),
    }
}

async fn publish_prompt(
    client: &AsyncClient,
    topics: &Topics,
    prompt: &PromptView,
) -> Result<(), rumqttc::ClientError> {
    publish_json(client, topics.prompt(&prompt.station), prompt).await
}

async fn publish_consultation(
    client: &AsyncClient,
    topics: &Topics,
    view: &ConsultationView,
) -> Result<(), rumqttc::ClientError> {
    publish_json(client, topics.consultation(&view.station), view).await
}

/// One QoS 1, not retained publish of `body` as JSON; skipped (and logged) when over
/// [`MAX_PACKET`], which rumqttc would not send but fail the connection on.
async fn publish_json<T: serde::Serialize + ?Sized>(
    client: &AsyncClient,
    topic: String,
    body: &T,
) -> Result<(), rumqttc::ClientError> {
    let payload = match serde_json::to_vec(body) {
        Ok(payload) => payload,
        Err(error) => {
            // Our own types always serialise; skip rather than stop the channel.
            tracing::error!(%error, %topic, "mqtt prompt channel: cannot serialise a message");
            return Ok(());
        }
    };
    let size = publish_size(&topic, &payload);
    if size > MAX_PACKET {
        tracing::error!(
            %topic,
            size,
            "mqtt prompt channel: a message over the {MAX_PACKET}-byte packet limit is not published"
        );
        return Ok(());
    }
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
}

/// The size of a QoS 1 PUBLISH packet of `payload` on `topic`, at most (the fixed header
/// counted at its longest).
fn publish_size(topic: &str, payload: &[u8]) -> usize {
    // Fixed header (type byte, up to 4 length bytes), topic length, topic, packet id, payload.
    1 + 4 + 2 + topic.len() + 2 + payload.len()
}

/// An answer as POS software publishes it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct AnswerMessage {
    /// The prompt's id.
    prompt: String,
    /// The option key picked.
    option: String,
    /// Who answered, when the POS knows.
    #[serde(default)]
    clerk: Option<String>,
}

/// Why a payload is not an answer: the prompt it names (if any can be read) and the reason.
#[derive(Debug, PartialEq, Eq)]
struct Malformed {
    /// The `prompt` field, when the payload is a JSON object with a string there.
    prompt: Option<String>,
    /// What is wrong with it.
    error: String,
}

/// Parses an answer payload.
fn parse_answer(payload: &[u8]) -> Result<AnswerMessage, Malformed> {
    serde_json::from_slice::<AnswerMessage>(payload).map_err(|error| Malformed {
        prompt: string_field(payload, "prompt"),
        error: format!(
            "malformed answer ({error}); expected {{\"prompt\":\"…\",\"option\":\"…\"}}"
        ),
    })
}

/// Field `name` of a payload that is a JSON object with a string there.
fn string_field(payload: &[u8], name: &str) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|value| value.get(name)?.as_str().map(str::to_owned))
}

/// What a message that was not taken is about, as its reply names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum About {
    /// An answer, and the prompt it names if readable.
    Answer { prompt: Option<String> },
    /// A step, and the consultation and step it names if readable.
    Step {
        consultation: Option<String>,
        step: Option<String>,
    },
}

impl About {
    /// Where the reply goes.
    fn error_topic(&self, topics: &Topics, station: &str) -> String {
        match self {
            About::Answer { .. } => topics.answer_error(station),
            About::Step { .. } => topics.step_error(station),
        }
    }

    /// The reply: `{"prompt","error"}` or `{"consultation","step","error"}`.
    fn reply(&self, error: &str) -> serde_json::Value {
        match self {
            About::Answer { prompt } => serde_json::json!({ "prompt": prompt, "error": error }),
            About::Step { consultation, step } => {
                serde_json::json!({ "consultation": consultation, "step": step, "error": error })
            }
        }
    }

    /// Logs why the message was not taken.
    fn warn(&self, station: &str, settled: bool, error: &str) {
        let outcome = if settled {
            "refused"
        } else {
            "not taken for now, the broker will deliver it again"
        };
        match self {
            About::Answer { prompt } => tracing::warn!(
                %station,
                prompt = prompt.as_deref().unwrap_or(""),
                "mqtt answer {outcome}: {error}"
            ),
            About::Step { consultation, step } => tracing::warn!(
                %station,
                consultation = consultation.as_deref().unwrap_or(""),
                step = step.as_deref().unwrap_or(""),
                "mqtt consultation step {outcome}: {error}"
            ),
        }
    }
}

/// What became of one incoming message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The answer or step is recorded (or was already, by this process): ack.
    Taken,
    /// Refused for good: reply with the reason, then ack.
    Refused {
        /// What it was.
        about: About,
        /// Why, for the reply and the log.
        error: String,
    },
    /// Not taken for now (the engine is unavailable): reply, but do not ack.
    Later {
        /// What it was.
        about: About,
        /// Why, for the reply and the log.
        error: String,
    },
    /// Neither an answer nor a step topic (the subscriptions should not deliver these): ack and
    /// forget.
    Ignored,
}

/// The inbound task: settles every message the connection task hands over (module doc).
async fn take_messages(
    client: AsyncClient,
    topics: Arc<Topics>,
    engines: Engines,
    oversize: OversizeMarker,
    mut queue: mpsc::UnboundedReceiver<Publish>,
) {
    let mut answers = Taken::default();
    let mut steps = steps::Taken::default();
    while let Some(publish) = queue.recv().await {
        let inbound = topics.inbound(&publish.topic);
        let verdict = match (inbound, oversize.size(&publish.payload)) {
            (Some(inbound), Some(size)) => too_large(inbound, size),
            (Some(Inbound::Answer(station)), None) => {
                take_answer(&engines.prompts, &mut answers, station, &publish.payload).await
            }
            (Some(Inbound::Step(station)), None) => {
                steps::take_step(&engines.consult, &mut steps, station, &publish).await
            }
            (None, _) => Verdict::Ignored,
        };
        let station = inbound.map_or("", Inbound::station);
        let ack = match verdict {
            Verdict::Taken => true,
            Verdict::Ignored => {
                tracing::debug!(topic = %publish.topic, "mqtt prompt channel: ignored a message on an unexpected topic");
                true
            }
            Verdict::Refused { about, error } => {
                about.warn(station, true, &error);
                reply_error(&client, &topics, station, &about, &error).await;
                true
            }
            Verdict::Later { about, error } => {
                about.warn(station, false, &error);
                reply_error(&client, &topics, station, &about, &error).await;
                false
            }
        };
        if ack {
            if let Err(error) = client.ack(&publish).await {
                tracing::debug!(%error, "mqtt prompt channel: cannot queue an acknowledgement");
            }
        }
    }
}

/// The verdict on a message over [`MAX_PACKET`], read by its size only.
fn too_large(inbound: Inbound<'_>, size: u64) -> Verdict {
    let (about, what) = match inbound {
        Inbound::Answer(_) => (About::Answer { prompt: None }, "answer"),
        Inbound::Step(_) => (
            About::Step {
                consultation: None,
                step: None,
            },
            "step",
        ),
    };
    Verdict::Refused {
        about,
        error: format!(
            "{what} too large: {size} bytes, over the prompt channel's limit of {MAX_PACKET} bytes; not read"
        ),
    }
}

/// Takes one answer published on `station`'s answer topic.
async fn take_answer(
    prompts: &PromptsHandle,
    taken: &mut Taken,
    station: &str,
    payload: &[u8],
) -> Verdict {
    let answer = match parse_answer(payload) {
        Ok(answer) => answer,
        Err(Malformed { prompt, error }) => {
            return Verdict::Refused {
                about: About::Answer { prompt },
                error,
            }
        }
    };
    let clerk = answer
        .clerk
        .as_deref()
        .map(str::trim)
        .filter(|clerk| !clerk.is_empty())
        .map(str::to_owned);
    let about = || About::Answer {
        prompt: Some(answer.prompt.clone()),
    };
    match prompts
        .answer(&answer.prompt, &answer.option, clerk, Channel::Mqtt)
        .await
    {
        Ok(resolution) => {
            if resolution.station != station {
                tracing::warn!(
                    prompt = %answer.prompt,
                    topic_station = %station,
                    prompt_station = %resolution.station,
                    "mqtt answer for another station's prompt accepted (prompt ids are unique); check which station the POS publishes for"
                );
            }
            taken.remember(&answer.prompt, &answer.option);
            Verdict::Taken
        }
        Err(PromptError::AlreadyResolved) if taken.contains(&answer.prompt, &answer.option) => {
            tracing::debug!(prompt = %answer.prompt, "mqtt answer delivered again after it was taken");
            Verdict::Taken
        }
        Err(PromptError::Unavailable(error)) => Verdict::Later {
            about: about(),
            error: format!("prompt engine unavailable: {error}"),
        },
        Err(error) => Verdict::Refused {
            about: about(),
            error: error.to_string(),
        },
    }
}

/// Publishes the reply to a message that was not taken to its kind's error topic.
async fn reply_error(
    client: &AsyncClient,
    topics: &Topics,
    station: &str,
    about: &About,
    error: &str,
) {
    let topic = about.error_topic(topics, station);
    if let Err(error) = publish_json(client, topic, &about.reply(error)).await {
        tracing::debug!(%error, "mqtt prompt channel: cannot queue an error reply");
    }
}

/// The last [`TAKEN_MEMORY`] answers taken, to tell a redelivery from a late second answer.
#[derive(Debug, Default)]
struct Taken {
    /// (prompt, option), oldest first.
    answers: VecDeque<(String, String)>,
}

impl Taken {
    fn remember(&mut self, prompt: &str, option: &str) {
        if self.answers.len() >= TAKEN_MEMORY {
            self.answers.pop_front();
        }
        self.answers
            .push_back((prompt.to_owned(), option.to_owned()));
    }

    fn contains(&self, prompt: &str, option: &str) -> bool {
        self.answers.iter().any(|(p, o)| p == prompt && o == option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CampaignSettings, PromptOption, SkuPattern};
    use crate::prompts::{MemoryPromptJournal, OpenRequest, PromptsConfig};

    #[test]
    fn topic_names() {
        let topics = Topics::new("WZ-LC-001");
        assert_eq!(topics.prompt("till-1"), "posgw/WZ-LC-001/till-1/prompt");
        assert_eq!(topics.resolved("till-1"), "posgw/WZ-LC-001/till-1/resolved");
        assert_eq!(
            topics.consultation("till-1"),
            "posgw/WZ-LC-001/till-1/consultation"
        );
        assert_eq!(topics.answers(), "posgw/WZ-LC-001/+/answer");
        assert_eq!(topics.steps(), "posgw/WZ-LC-001/+/consultation/step");
        assert_eq!(
            topics.answer_error("till-1"),
            "posgw/WZ-LC-001/till-1/answer/error"
        );
        assert_eq!(
            topics.step_error("till-1"),
            "posgw/WZ-LC-001/till-1/consultation/step/error"
        );
        assert_eq!(
            topics.inbound("posgw/WZ-LC-001/till-1/answer"),
            Some(Inbound::Answer("till-1"))
        );
        assert_eq!(
            topics.inbound("posgw/WZ-LC-001/till-1/consultation/step"),
            Some(Inbound::Step("till-1"))
        );
        for other in [
            "posgw/WZ-LC-001//answer",
            "posgw/WZ-LC-001/a/b/answer",
            "posgw/WZ-LC-002/till-1/answer",
            "posgw/WZ-LC-001/till-1/answer/error",
            "posgw/WZ-LC-001/till-1/prompt",
            "posgw/WZ-LC-001//consultation/step",
            "posgw/WZ-LC-001/a/b/consultation/step",
            "posgw/WZ-LC-002/till-1/consultation/step",
            "posgw/WZ-LC-001/till-1/consultation/step/error",
            "posgw/WZ-LC-001/till-1/consultation",
            "posgw/WZ-LC-001/consultation/step",
        ] {
            assert_eq!(topics.inbound(other), None, "{other}");
        }
    }

    #[test]
    fn replies_name_what_they_refuse() {
        let topics = Topics::new("S");
        let answer = About::Answer { prompt: None };
        assert_eq!(answer.error_topic(&topics, "t"), "posgw/S/t/answer/error");
        assert_eq!(
            answer.reply("why"),
            serde_json::json!({"prompt": null, "error": "why"})
        );
        let step = About::Step {
            consultation: Some("c".into()),
            step: None,
        };
        assert_eq!(
            step.error_topic(&topics, "t"),
            "posgw/S/t/consultation/step/error"
        );
        assert_eq!(
            step.reply("why"),
            serde_json::json!({"consultation": "c", "step": null, "error": "why"})
        );
        let too_large = too_large(Inbound::Step("t"), 300_000);
        assert!(
            matches!(&too_large, Verdict::Refused { about: About::Step { consultation: None, step: None }, error } if error.starts_with("step too large: 300000 bytes")),
            "{too_large:?}"
        );
    }

    #[test]
    fn publishes_over_the_packet_limit_are_measured_at_most() {
        let topic = "posgw/S/t/consultation";
        let payload = vec![b'x'; 1000];
        let mut publish = rumqttc::Publish::new(topic, QoS::AtLeastOnce, payload.clone());
        publish.pkid = 1;
        let mut wire = bytes::BytesMut::new();
        let written = rumqttc::Packet::Publish(publish)
            .write(&mut wire, usize::MAX)
            .expect("encode");
        let bound = publish_size(topic, &payload);
        assert!(
            bound >= written && bound <= written + 3,
            "{bound} for {written}"
        );
    }

    #[test]
    fn answers_parse_and_malformed_ones_say_why() {
        assert_eq!(
            parse_answer(br#"{"prompt":"abc","option":"doctor","clerk":"c-1","extra":1}"#),
            Ok(AnswerMessage {
                prompt: "abc".into(),
                option: "doctor".into(),
                clerk: Some("c-1".into()),
            })
        );
        assert_eq!(
            parse_answer(br#"{"prompt":"abc","option":"doctor"}"#).map(|a| a.clerk),
            Ok(None)
        );
        let missing = parse_answer(br#"{"prompt":"abc"}"#).unwrap_err();
        assert_eq!(missing.prompt.as_deref(), Some("abc"));
        assert!(missing.error.contains("option"), "{}", missing.error);
        let garbage = parse_answer(b"{not json").unwrap_err();
        assert_eq!(garbage.prompt, None);
        assert!(garbage.error.starts_with("malformed answer"));
        assert_eq!(parse_answer(b"\xff\xfe").unwrap_err().prompt, None);
        assert_eq!(parse_answer(b"[1,2]").unwrap_err().prompt, None);
    }

    #[test]
    fn reconnect_delays_grow_to_the_cap_with_jitter() {
        let mut connection = Connection::new("mqtt://x".into());
        let error = rumqttc::ConnectionError::NetworkTimeout;
        let mut step = RECONNECT_MIN;
        for _ in 0..12 {
            let delay = connection.failed(&error);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
            step = (step * 2).min(RECONNECT_MAX);
        }
        assert_eq!(connection.step, RECONNECT_MAX);
        connection.connected(false);
        assert!(connection.is_up());
        assert_eq!((connection.failures, connection.step), (0, RECONNECT_MIN));
    }

    #[test]
    fn taken_answers_are_remembered_up_to_the_limit() {
        let mut taken = Taken::default();
        for i in 0..=TAKEN_MEMORY {
            taken.remember(&format!("p{i}"), "doctor");
        }
        assert!(!taken.contains("p0", "doctor"), "the oldest is forgotten");
        assert!(taken.contains("p1", "doctor"));
        assert!(!taken.contains("p1", "poster"));
    }

    /// An engine on a memory journal with one campaign, and one prompt open at till-1.
    async fn engine_with_a_prompt() -> (PromptsHandle, String) {
        let campaign = CampaignSettings {
            id: "c".into(),
            skus: vec![SkuPattern::Exact("6901234567892".into())],
            question: "q".into(),
            options: vec![
                PromptOption {
                    key: "doctor".into(),
                    label: "医生推荐".into(),
                },
                PromptOption {
                    key: "poster".into(),
                    label: "海报引导".into(),
                },
            ],
            timeout: Duration::from_secs(120),
            starts: None,
            ends: None,
        };
        let prompts = crate::prompts::spawn(
            PromptsConfig {
                campaigns: vec![campaign],
                ..PromptsConfig::default()
            },
            MemoryPromptJournal::new(),
            crate::metrics::Metrics::new(),
        )
        .await
        .expect("engine");
        let opened = prompts
            .open(OpenRequest {
                station: "till-1".into(),
                campaign: "c".into(),
                sku: "6901234567892".into(),
                scan_id: "S/g/e/1".into(),
                opened_at: chrono::Local::now(),
            })
            .await
            .expect("open");
        (prompts, opened.prompt.id)
    }

    #[tokio::test]
    async fn verdicts_for_good_bad_and_repeated_answers() {
        let (prompts, id) = engine_with_a_prompt().await;
        let mut taken = Taken::default();
        let answer = |option: &str| format!(r#"{{"prompt":"{id}","option":"{option}"}}"#);

        let unknown = take_answer(
            &prompts,
            &mut taken,
            "till-1",
            br#"{"prompt":"nosuch","option":"doctor"}"#,
        )
        .await;
        assert_eq!(
            unknown,
            Verdict::Refused {
                about: About::Answer {
                    prompt: Some("nosuch".into())
                },
                error: "unknown prompt".into()
            }
        );
        let wrong = take_answer(&prompts, &mut taken, "till-1", answer("tv").as_bytes()).await;
        assert!(
            matches!(&wrong, Verdict::Refused { error, .. } if error.contains("'tv'")),
            "{wrong:?}"
        );
        let malformed = take_answer(&prompts, &mut taken, "till-1", b"{not json").await;
        assert!(
            matches!(
                malformed,
                Verdict::Refused {
                    about: About::Answer { prompt: None },
                    ..
                }
            ),
            "{malformed:?}"
        );

        // Another station's topic: accepted, the id is unique.
        let good = take_answer(&prompts, &mut taken, "till-2", answer("doctor").as_bytes()).await;
        assert_eq!(good, Verdict::Taken);
        // The same answer again is a redelivery; a different one is a late answer.
        let again = take_answer(&prompts, &mut taken, "till-1", answer("doctor").as_bytes()).await;
        assert_eq!(again, Verdict::Taken);
        let late = take_answer(&prompts, &mut taken, "till-1", answer("poster").as_bytes()).await;
        assert_eq!(
            late,
            Verdict::Refused {
                about: About::Answer {
                    prompt: Some(id.clone())
                },
                error: "prompt already resolved".into()
            }
        );

        // A stopped engine is not a refusal: the answer must come again.
        prompts.close().await;
        let later = take_answer(&prompts, &mut taken, "till-1", answer("poster").as_bytes()).await;
        assert!(matches!(later, Verdict::Later { .. }), "{later:?}");
    }
}
