//! The MQTT prompt channel (docs/local-api.md): POS software on the store's broker sees the
//! open prompts and answers them, as an alternative to the clerk page.
//!
//! # Topics (store `S`, station `T`)
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `posgw/S/T/prompt` | gateway → POS | the prompt JSON, as `GET /api/v1/prompts` shows it |
//! | `posgw/S/T/resolved` | gateway → POS | `{"id","outcome","answer"}` |
//! | `posgw/S/T/answer` | POS → gateway | `{"prompt":"…","option":"…","clerk":"…"}` (`clerk` optional) |
//! | `posgw/S/T/answer/error` | gateway → POS | `{"prompt","error"}`: why an answer was refused |
//!
//! `answer/error` is an extension of the contract: without it a POS whose answer was refused
//! (unknown prompt, already resolved, option not offered, not JSON) would only see nothing
//! happen. `prompt` is null when the payload did not name one.
//!
//! Everything is QoS 1 and not retained: a retained prompt would outlive its resolution.
//!
//! # Design
//!
//! Three tasks, so that nothing ever stops the rumqttc event loop from being polled (it needs
//! continuous polling for keep-alive, acknowledgements and reconnecting):
//!
//! - **The connection task** ([`run`]) owns the [`EventLoop`]. It never awaits the client's
//!   request queue (it is the one draining it, so that could deadlock). On every ConnAck it
//!   tells the publisher; every incoming message goes to the answer task. When the broker is
//!   unreachable (also at start: the gateway starts anyway) it sleeps and polls again, which
//!   reconnects: the delay starts at [`RECONNECT_MIN`], doubles up to [`RECONNECT_MAX`], and
//!   each sleep is a random time between half and all of it, so a store's gateways do not
//!   reconnect in lock step after a broker restart. The first failure of an outage is logged
//!   as a warning, the others at debug, the recovery at info. Broker errors never end it.
//! - **The publisher** ([`publish_events`]) holds a [`PromptsHandle::subscription`] of every
//!   station and publishes each `Prompt` event to `prompt`, each `Resolved` to `resolved`
//!   (`Stats` is for the clerk page only). On every ConnAck it subscribes to
//!   `posgw/S/+/answer` (QoS 1) again, because a broker restarted without persistence forgot
//!   the subscription; then, on the first connection and whenever the broker had no session
//!   for us (`session_present == false`), it takes a fresh snapshot and publishes every open
//!   prompt again, so a POS that connected late still sees them. When the broadcast lags it
//!   re-subscribes and republishes the snapshot the same way. Prompts are therefore sometimes
//!   published twice; POS software dedupes by `id` (a `resolved` is never repeated this way).
//!   While the broker is away, publishes wait in the client's queue ([`REQUEST_QUEUE`]); when
//!   it is full the publisher waits, the broadcast lags, and the snapshot catches up later:
//!   memory stays flat during a long outage. A limit of this: when the broker comes back without
//!   our session, publishes that were in flight are dropped; open prompts are republished, but a
//!   `resolved` among them is lost (rare: the broker must lose its state while that message
//!   is on its way).
//! - **The answer task** ([`take_answers`]) handles answers one at a time, so a slow journal
//!   delays answers but never the connection. Answers queue unbounded in front of it, but the
//!   broker sends at most its in-flight limit of unacknowledged QoS 1 messages (mosquitto:
//!   20), so the queue stays small.
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
//! # Answers over the size limit
//!
//! rumqttc cannot read a message over [`MAX_PACKET`] (its connection fails), and the broker would
//! deliver it again and again. [`crate::mqtt::OversizeGuard`] has the connection after such a
//! failure read it by its size only: it comes to the answer task as a stand-in, is refused
//! (`answer too large: N bytes …`, with `prompt` null as it was not read) and acknowledged, and
//! counted in `posgw_mqtt_oversize_messages_total{channel="prompts"}`. The answers after it
//! are taken as usual.
//!
//! # Shutdown
//!
//! When `shutdown` fires the connection task stops handing messages to the answer task (those
//! arriving later stay unacknowledged and come back at the next start), keeps polling while
//! the answer task settles what it already received (at most [`ANSWER_GRACE`]), then sends
//! DISCONNECT and returns. The gateway closes the prompt engine only after this returns.
//!
//! # Credentials
//!
//! `[mqtt] username` and the password in `password_file` (read once, here, at start; a
//! trailing newline is dropped). A user name without a password file sends an empty password;
//! a password file without a user name is an error (MQTT 3.1.1 has no password without a user
//! name). The client id is `posgw-{store}-{gateway}-prompts` with a persistent session, so the
//! broker keeps our subscription and the answers sent while the gateway was away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS, SubscribeReasonCode};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PromptError, PromptEvent, PromptView, PromptsHandle};
use crate::config::MqttSettings;
use crate::mqtt::{self, OversizeGuard, OversizeMarker};
use crate::record::attribution::Channel;

/// The role in the client id: `posgw-{store}-{gateway}-prompts`.
const ROLE: &str = "prompts";
/// Largest MQTT packet either way (an answer's topic and payload); prompts and answers are a few
/// hundred bytes. A larger answer is refused without being read (module doc).
const MAX_PACKET: usize = 256 * 1024;
/// Requests (publishes, acks, subscribes) that may wait for the connection.
const REQUEST_QUEUE: usize = 64;
/// First pause after a connection failure.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest pause between connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for answers already received to be settled.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for the DISCONNECT to leave.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);
/// Answers taken by this process that are remembered to recognise redeliveries.
const TAKEN_MEMORY: usize = 256;

/// Starts the channel on the store's broker. It runs until `shutdown` fires; `oversize` counts
/// answers over the size limit.
///
/// Fails only on bad settings (URL, unreadable password file); an unreachable broker is retried
/// in the background.
pub fn spawn(
    settings: &MqttSettings,
    store: &str,
    gateway: &str,
    prompts: PromptsHandle,
    oversize: prometheus_client::metrics::counter::Counter,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let mut options = mqtt::store_broker_options(settings, store, gateway, ROLE, MAX_PACKET)?;
    options.set_manual_acks(true);
    let guard = OversizeGuard::new("mqtt prompt channel", &options, MAX_PACKET, oversize)?;
    let (client, event_loop) = AsyncClient::new(options, REQUEST_QUEUE);
    let topics = Arc::new(Topics::new(store));
    tracing::info!(broker = %settings.url, topic = %topics.answers(), "mqtt prompt channel starting");
    Ok(tokio::spawn(run(
        client,
        event_loop,
        guard,
        topics,
        prompts,
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

impl Topics {
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

    /// The filter for every station's answers.
    fn answers(&self) -> String {
        format!("{}+/answer", self.prefix)
    }

    /// Where refusals of a station's answers go.
    fn answer_error(&self, station: &str) -> String {
        format!("{}{station}/answer/error", self.prefix)
    }

    /// The station of an answer topic, or None when `topic` is not one.
    fn answer_station<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let station = topic.strip_prefix(&self.prefix)?.strip_suffix("/answer")?;
        (!station.is_empty() && !station.contains('/')).then_some(station)
    }
}

/// The connection task: polls the event loop until shutdown, then winds down (module doc).
async fn run(
    client: AsyncClient,
    mut event_loop: EventLoop,
    mut guard: OversizeGuard,
    topics: Arc<Topics>,
    prompts: PromptsHandle,
    broker: String,
    shutdown: CancellationToken,
) {
    let (connections, connections_rx) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publish_events(
        client.clone(),
        Arc::clone(&topics),
        prompts.clone(),
        connections_rx,
    ));
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let mut answer_task = tokio::spawn(take_answers(
        client.clone(),
        Arc::clone(&topics),
        prompts,
        guard.marker(),
        answers_rx,
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
                let _ = answers.send(publish);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    tracing::error!(
                        topic = %topics.answers(),
                        "the broker refused the mqtt prompt channel's subscription; answers from POS software will not arrive (check the broker's ACL)"
                    );
                }
            }
            Ok(_) => {}
            Err(error) => {
                // After an answer over the limit, the next connection reads it by its size.
                guard.failed(&mut event_loop, &error);
                let delay = connection.failed(&error);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    // Stop reading: answers that arrive from now on stay unacknowledged at the broker.
    drop(answers);
    publisher.abort();
    let deadline = tokio::time::Instant::now() + ANSWER_GRACE;
    loop {
        tokio::select! {
            _ = &mut answer_task => break,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("mqtt prompt channel: answers still being taken at shutdown; the broker will deliver them again");
                answer_task.abort();
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

/// The publisher task: prompts and resolutions out, the subscription renewed (module doc).
/// `connections` carries `session_present` of every ConnAck.
async fn publish_events(
    client: AsyncClient,
    topics: Arc<Topics>,
    prompts: PromptsHandle,
    mut connections: mpsc::UnboundedReceiver<bool>,
) {
    let mut events = prompts.subscription(None).await.events;
    let mut first = true;
    loop {
        let published = tokio::select! {
            biased;
            connection = connections.recv() => {
                let Some(session_present) = connection else { return };
                if let Err(error) = client.subscribe(topics.answers(), QoS::AtLeastOnce).await {
                    tracing::debug!(%error, "mqtt prompt channel: cannot queue the subscription");
                    return;
                }
                if first || !session_present {
                    first = false;
                    resync(&client, &topics, &prompts, &mut events).await
                } else {
                    Ok(())
                }
            }
            event = events.recv() => match event {
                Ok(event) => publish_event(&client, &topics, &event).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "mqtt prompt channel fell behind the prompt events; publishing the open prompts again");
                    resync(&client, &topics, &prompts, &mut events).await
                }
                // The engine stopped: the gateway is shutting down.
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Err(error) = published {
            // Only when the event loop is gone, i.e. the channel is stopping.
            tracing::debug!(%error, "mqtt prompt channel: cannot queue a publish");
            return;
        }
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

/// One QoS 1, not retained publish of `body` as JSON.
async fn publish_json<T: serde::Serialize + ?Sized>(
    client: &AsyncClient,
    topic: String,
    body: &T,
) -> Result<(), rumqttc::ClientError> {
    match serde_json::to_vec(body) {
        Ok(payload) => {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
        }
        Err(error) => {
            // Our own types always serialise; skip rather than stop the channel.
            tracing::error!(%error, %topic, "mqtt prompt channel: cannot serialise a message");
            Ok(())
        }
    }
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
        prompt: serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|value| value.get("prompt")?.as_str().map(str::to_owned)),
        error: format!(
            "malformed answer ({error}); expected {{\"prompt\":\"…\",\"option\":\"…\"}}"
        ),
    })
}

/// What became of one incoming message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The answer is recorded (or was already, by this process): ack.
    Taken,
    /// Refused for good: reply with the reason, then ack.
    Refused {
        /// The prompt it named, if readable.
        prompt: Option<String>,
        /// Why, for the reply and the log.
        error: String,
    },
    /// Not taken for now (the engine is unavailable): reply, but do not ack.
    Later {
        /// The prompt it named.
        prompt: String,
        /// Why, for the reply and the log.
        error: String,
    },
    /// Not an answer topic (the subscription should not deliver these): ack and forget.
    Ignored,
}

/// The answer task: settles every message the connection task hands over (module doc).
async fn take_answers(
    client: AsyncClient,
    topics: Arc<Topics>,
    prompts: PromptsHandle,
    oversize: OversizeMarker,
    mut queue: mpsc::UnboundedReceiver<Publish>,
) {
    let mut taken = Taken::default();
    while let Some(publish) = queue.recv().await {
        let station = topics.answer_station(&publish.topic);
        let verdict = match (station, oversize.size(&publish.payload)) {
            (Some(_), Some(size)) => too_large(size),
            (Some(station), None) => {
                take_answer(&prompts, &mut taken, station, &publish.payload).await
            }
            (None, _) => Verdict::Ignored,
        };
        let ack = match verdict {
            Verdict::Taken => true,
            Verdict::Ignored => {
                tracing::debug!(topic = %publish.topic, "mqtt prompt channel: ignored a message on an unexpected topic");
                true
            }
            Verdict::Refused { prompt, error } => {
                let station = station.unwrap_or_default();
                tracing::warn!(%station, prompt = prompt.as_deref().unwrap_or(""), "mqtt answer refused: {error}");
                reply_error(&client, &topics, station, prompt.as_deref(), &error).await;
                true
            }
            Verdict::Later { prompt, error } => {
                let station = station.unwrap_or_default();
                tracing::warn!(%station, %prompt, "mqtt answer not taken for now, the broker will deliver it again: {error}");
                reply_error(&client, &topics, station, Some(&prompt), &error).await;
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

/// The verdict on an answer over [`MAX_PACKET`], read by its size only.
fn too_large(size: u64) -> Verdict {
    Verdict::Refused {
        prompt: None,
        error: format!(
            "answer too large: {size} bytes, over the prompt channel's limit of {MAX_PACKET} bytes; not read"
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
        Err(Malformed { prompt, error }) => return Verdict::Refused { prompt, error },
    };
    let clerk = answer
        .clerk
        .as_deref()
        .map(str::trim)
        .filter(|clerk| !clerk.is_empty())
        .map(str::to_owned);
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
            prompt: answer.prompt,
            error: format!("prompt engine unavailable: {error}"),
        },
        Err(error) => Verdict::Refused {
            prompt: Some(answer.prompt),
            error: error.to_string(),
        },
    }
}

/// Publishes `{"prompt","error"}` to the station's `answer/error` topic.
async fn reply_error(
    client: &AsyncClient,
    topics: &Topics,
    station: &str,
    prompt: Option<&str>,
    error: &str,
) {
    let body = serde_json::json!({ "prompt": prompt, "error": error });
    if let Err(error) = publish_json(client, topics.answer_error(station), &body).await {
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
        assert_eq!(topics.answers(), "posgw/WZ-LC-001/+/answer");
        assert_eq!(
            topics.answer_error("till-1"),
            "posgw/WZ-LC-001/till-1/answer/error"
        );
        assert_eq!(
            topics.answer_station("posgw/WZ-LC-001/till-1/answer"),
            Some("till-1")
        );
        for other in [
            "posgw/WZ-LC-001//answer",
            "posgw/WZ-LC-001/a/b/answer",
            "posgw/WZ-LC-002/till-1/answer",
            "posgw/WZ-LC-001/till-1/answer/error",
            "posgw/WZ-LC-001/till-1/prompt",
        ] {
            assert_eq!(topics.answer_station(other), None, "{other}");
        }
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
                prompt: Some("nosuch".into()),
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
            matches!(malformed, Verdict::Refused { prompt: None, .. }),
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
                prompt: Some(id.clone()),
                error: "prompt already resolved".into()
            }
        );

        // A stopped engine is not a refusal: the answer must come again.
        prompts.close().await;
        let later = take_answer(&prompts, &mut taken, "till-1", answer("poster").as_bytes()).await;
        assert!(matches!(later, Verdict::Later { .. }), "{later:?}");
    }
}
