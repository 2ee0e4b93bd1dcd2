//! Messages over the MQTT size limit ("poison" messages) against a real mosquitto: a 1.1 MB
//! message on a device topic between normal scans, and a 300 kB answer on the prompt channel.
//! Each is recorded by its size and acknowledged; the input around it goes on, in order; the
//! broker does not deliver it again.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::harness::{of_kind, peak_rss, Gateway, PtyScanner, Store, DEADLINE};
use crate::mosquitto::Mosquitto;

/// The store's prefix of the prompt channel's topics.
const TOPICS: &str = "posgw/WZ-LC-001";
/// The size of the poison message on a device topic (over the default 1 MiB).
const DEVICE_POISON: usize = 1_100_000;
/// The size of the poison answer on the prompt channel (over its 256 KiB).
const ANSWER_POISON: usize = 300_000;

/// A test client of the store's broker: publishes QoS 1 (waiting for each PUBACK), and keeps
/// what arrives on the topics it subscribed to.
struct Client {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    subscribed: mpsc::UnboundedReceiver<()>,
}

impl Client {
    async fn connect(port: u16, id: &str) -> Client {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(65 << 20, 65 << 20);
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let sent = match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acks_tx.send(()).is_ok(),
                    Ok(Event::Incoming(Packet::SubAck(_))) => subscribed_tx.send(()).is_ok(),
                    Ok(Event::Incoming(Packet::Publish(publish))) => incoming_tx
                        .send((publish.topic.clone(), publish.payload.to_vec()))
                        .is_ok(),
                    Ok(_) => true,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        true
                    }
                };
                if !sent {
                    return;
                }
            }
        });
        Client {
            client,
            acks,
            incoming,
            subscribed,
        }
    }

    /// Publishes QoS 1 and waits until the broker has the message.
    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue the publish");
        tokio::time::timeout(DEADLINE, self.acks.recv())
            .await
            .expect("the broker acknowledges in time")
            .expect("the client runs");
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue the subscription");
        tokio::time::timeout(DEADLINE, self.subscribed.recv())
            .await
            .expect("subscribed in time")
            .expect("the client runs");
    }

    /// The next message on `topic` whose JSON satisfies `matches`, within `within`.
    async fn take(
        &mut self,
        topic: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some((got, payload))) if got == topic => {
                    let value: Value = serde_json::from_slice(&payload).expect("JSON");
                    if matches(&value) {
                        return Some(value);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the client stopped"),
                Err(_) => return None,
            }
        }
    }
}

/// A store whose MQTT scanner publishes on `store/till-1/scanner`.
fn device_store(broker: &Mosquitto) -> Store {
    let store = Store::new();
    store.write_config("");
    store.append_config(&format!(
        "[mqtt]\nurl = \"{}\"\n\n\
         [[device]]\nid = \"mqtt-scanner-1\"\nrole = \"scanner\"\ntransport = \"mqtt\"\n\
         station = \"till-1\"\nprofile = \"mqtt-scanner\"\ntopic = \"store/till-1/scanner\"\n",
        broker.url()
    ));
    store
}

const OVERSIZE_DEVICES: &str = "posgw_mqtt_oversize_messages_total{channel=\"devices\"}";
const OVERSIZE_PROMPTS: &str = "posgw_mqtt_oversize_messages_total{channel=\"prompts\"}";

#[tokio::test]
async fn a_message_over_the_size_limit_on_a_device_topic_is_a_bad_frame_and_input_goes_on() {
    let broker = Mosquitto::start();
    let store = device_store(&broker);
    let _serial = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    assert_series_at_zero(&gateway, OVERSIZE_DEVICES).await;

    let topic = "store/till-1/scanner";
    let mut scanner = Client::connect(broker.port, "test-scanner").await;
    scanner.publish(topic, "]C0BEFORE-1").await;
    scanner.publish(topic, "]C0BEFORE-2").await;
    scanner.publish(topic, vec![b'9'; DEVICE_POISON]).await;
    scanner.publish(topic, "]C0AFTER-1").await;
    scanner.publish(topic, "]C0AFTER-2").await;
    gateway.wait_records("scan", 4).await;
    gateway
        .wait_for("the poison message recorded", |g| async move {
            g.metric("posgw_bad_frames_total{device=\"mqtt-scanner-1\"}")
                .await
                >= 1.0
        })
        .await;
    assert_eq!(gateway.metric(OVERSIZE_DEVICES).await, 1.0);
    // Input goes on: a scan published now is recorded too.
    scanner.publish(topic, "]C0LATER-1").await;
    gateway.wait_records("scan", 5).await;
    gateway.wait_durable().await;
    assert!(gateway.stop().await.success());

    // It was acknowledged: a gateway started again does not get it (the broker keeps a
    // session's messages in order, so the scan published last arrives after anything left).
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    scanner.publish(topic, "]C0END").await;
    gateway
        .wait_for("the last scan", |g| async move {
            g.metric("posgw_records_total{kind=\"scan\"}").await >= 1.0
        })
        .await;
    assert_eq!(
        gateway.metric(OVERSIZE_DEVICES).await,
        0.0,
        "not delivered again"
    );
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let input: Vec<String> = records
        .iter()
        .filter(|r| r["data"]["device"] == "mqtt-scanner-1")
        .filter_map(
            |r| match (r["kind"].as_str(), r["data"]["event"].as_str()) {
                (Some("scan"), _) => Some(r["data"]["code"].as_str().expect("code").to_owned()),
                (_, Some("bad_frame")) => Some(format!(
                    "bad_frame: {}",
                    r["data"]["detail"].as_str().expect("detail")
                )),
                _ => None,
            },
        )
        .collect();
    // At least once, in order: a message whose record was durable but whose acknowledgement had
    // not gone out when the poison message broke the connection is delivered again.
    let mut first_seen: Vec<&String> = Vec::new();
    for item in &input {
        if !first_seen.contains(&item) {
            first_seen.push(item);
        }
    }
    assert_eq!(first_seen.len(), 7, "{input:#?}");
    assert_eq!(first_seen[..2], ["BEFORE-1", "BEFORE-2"], "{input:#?}");
    assert_eq!(
        first_seen[3..],
        ["AFTER-1", "AFTER-2", "LATER-1", "END"],
        "{input:#?}"
    );
    assert!(
        first_seen[2].starts_with("bad_frame: ")
            && first_seen[2].contains(&format!("{DEVICE_POISON} bytes")),
        "the poison message is a bad_frame with its size, in its place: {input:#?}"
    );
    let bad_frames = input.iter().filter(|i| i.starts_with("bad_frame")).count();
    assert_eq!(bad_frames, 1, "recorded once: {input:#?}");
}

#[tokio::test]
async fn an_answer_over_the_size_limit_on_the_prompt_channel_is_refused_and_answers_go_on() {
    let broker = Mosquitto::start();
    let store = crate::prompts::campaign_store("120s");
    store.append_config(&format!("[mqtt]\nurl = \"{}\"\n", broker.url()));
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    assert_series_at_zero(&gateway, OVERSIZE_PROMPTS).await;
    let mut pos = Client::connect(broker.port, "test-pos").await;
    pos.subscribe(&format!("{TOPICS}/+/answer/error")).await;
    wait_answers_taken(&mut pos).await;

    scanner.send(b"]E06901234567892\r").await;
    gateway
        .wait_for("a prompt", |g| async move {
            g.get("/api/v1/prompts?station=till-1")
                .await
                .is_some_and(|(_, body)| body.contains("\"id\""))
        })
        .await;
    let (_, body) = gateway
        .get("/api/v1/prompts?station=till-1")
        .await
        .expect("prompts");
    let prompts: Value = serde_json::from_str(&body).expect("JSON");
    let id = prompts[0]["id"].as_str().expect("a prompt id").to_owned();

    // A well-formed answer, padded past the limit: refused unread, with a reply.
    let poison = json!({"prompt": id, "option": "doctor", "note": "x".repeat(ANSWER_POISON)});
    let answer_topic = format!("{TOPICS}/till-1/answer");
    pos.publish(&answer_topic, poison.to_string()).await;
    let reply = pos
        .take(&format!("{TOPICS}/till-1/answer/error"), DEADLINE, |_| true)
        .await
        .expect("a reply to the poison answer");
    let error = reply["error"].as_str().expect("error");
    assert!(error.contains("too large"), "{reply}");
    assert!(
        error.contains(&poison.to_string().len().to_string()),
        "says its size: {reply}"
    );
    // The next answer is taken.
    pos.publish(
        &answer_topic,
        json!({"prompt": id, "option": "poster"}).to_string(),
    )
    .await;
    gateway.wait_records("attribution", 1).await;
    assert_eq!(gateway.metric(OVERSIZE_PROMPTS).await, 1.0);
    assert!(gateway.stop().await.success());

    // It was acknowledged: a gateway started again does not get it.
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    wait_answers_taken(&mut pos).await;
    assert_eq!(
        gateway.metric(OVERSIZE_PROMPTS).await,
        0.0,
        "not delivered again"
    );
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let attributions = of_kind(&records, "attribution");
    assert_eq!(attributions.len(), 1, "{attributions:#?}");
    assert_eq!(attributions[0]["data"]["answer"], "poster");
    assert_eq!(attributions[0]["data"]["channel"], "mqtt");
}

/// The series exists at 0 (before any oversize message), as alerting on `rate()` needs.
async fn assert_series_at_zero(gateway: &Gateway, series: &str) {
    let (_, body) = gateway.get("/metrics").await.expect("metrics");
    assert!(
        body.lines().any(|line| line == format!("{series} 0")),
        "{series} at 0 from the start"
    );
}

/// Sends answers to an unknown prompt until the gateway replies to one: the gateway takes
/// answers, and has handled everything published before that probe.
async fn wait_answers_taken(pos: &mut Client) {
    let start = std::time::Instant::now();
    for probe in 0.. {
        assert!(
            start.elapsed() < DEADLINE,
            "the gateway never replied to a probe"
        );
        let probe = format!("probe-{probe}-{}", rand_suffix());
        pos.publish(
            &format!("{TOPICS}/till-1/answer"),
            json!({"prompt": probe, "option": "x"}).to_string(),
        )
        .await;
        let reply = pos
            .take(
                &format!("{TOPICS}/till-1/answer/error"),
                Duration::from_millis(500),
                |reply| reply["prompt"] == probe.as_str(),
            )
            .await;
        if reply.is_some() {
            return;
        }
    }
}

/// Distinguishes the probes of one test run from another's.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// The filter skips the payload as it streams by: a 64 MiB message costs the gateway a read
/// buffer, not 64 MiB.
#[tokio::test]
async fn a_64_mib_message_is_read_by_its_size_in_bounded_memory() {
    const HUGE: usize = 64 << 20;
    let broker = Mosquitto::start();
    let store = device_store(&broker);
    let _serial = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    let topic = "store/till-1/scanner";
    let mut scanner = Client::connect(broker.port, "test-scanner").await;
    scanner.publish(topic, "]C0BEFORE-1").await;
    gateway.wait_records("scan", 1).await;
    let before = peak_rss(gateway.child.id());

    let client = scanner.client.clone();
    let publish = tokio::spawn(async move {
        client
            .publish(topic, QoS::AtLeastOnce, false, vec![b'9'; HUGE])
            .await
            .expect("queue the publish");
    });
    publish.await.expect("queued");
    tokio::time::timeout(DEADLINE, scanner.acks.recv())
        .await
        .expect("the broker acknowledges in time")
        .expect("the client runs");
    scanner.publish(topic, "]C0AFTER-1").await;
    gateway.wait_records("scan", 2).await;
    assert_eq!(gateway.metric(OVERSIZE_DEVICES).await, 1.0);
    let after = peak_rss(gateway.child.id());
    eprintln!(
        "peak RSS {:.1} MiB before the {} MiB message, {:.1} MiB after",
        before as f64 / 1048576.0,
        HUGE >> 20,
        after as f64 / 1048576.0
    );
    assert!(
        after < before + (8 << 20),
        "peak RSS grew from {before} to {after} bytes"
    );
    assert!(gateway.stop().await.success());
}
