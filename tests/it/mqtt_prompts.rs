//! The MQTT prompt channel against a real mosquitto: a "POS" client (rumqttc) sees prompts and
//! resolutions and answers over the broker; bad answers get `answer/error` replies; the channel
//! survives broker restarts (the helper's restart, then one onto a broker without persistence)
//! and a broker that is down when the gateway starts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::mosquitto::Mosquitto;
use crate::prompts::campaign_store;

const TOPICS: &str = "posgw/WZ-LC-001";
/// The targeted product of `prompts::CAMPAIGN`, as the pty scanner sends it.
const TARGETED_SCAN: &[u8] = b"]E06901234567892\r";

/// The POS software's side: a persistent-session client subscribed to every topic of the store.
struct Pos {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// Messages received but not taken yet, oldest first.
    kept: Vec<(String, Vec<u8>)>,
    /// How many SUBACKs arrived (one per (re)connect).
    subscribed: watch::Receiver<u64>,
    probes: u32,
}

impl Pos {
    async fn connect(port: u16) -> Pos {
        let mut options = MqttOptions::new("test-pos", "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 64);
        let (sink, incoming) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = watch::channel(0u64);
        let subscriber = client.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Like real POS software: subscribe again on every (re)connect.
                        let _ = subscriber
                            .subscribe(format!("{TOPICS}/#"), QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if sink
                            .send((publish.topic.clone(), publish.payload.to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let mut pos = Pos {
            client,
            incoming,
            kept: Vec::new(),
            subscribed,
            probes: 0,
        };
        pos.wait_subscribed(1).await;
        pos
    }

    /// Waits until the client has subscribed `n` times in all.
    async fn wait_subscribed(&mut self, n: u64) {
        tokio::time::timeout(DEADLINE, self.subscribed.wait_for(|count| *count >= n))
            .await
            .expect("the POS client (re)subscribed in time")
            .expect("the POS client runs");
    }

    fn subscriptions(&self) -> u64 {
        *self.subscribed.borrow()
    }

    /// Publishes an answer `body` (JSON) on a station's answer topic.
    async fn answer_json(&self, station: &str, body: Value) {
        self.answer(station, body.to_string().as_bytes()).await;
    }

    /// Publishes `payload` on a station's answer topic.
    async fn answer(&self, station: &str, payload: &[u8]) {
        self.client
            .publish(
                format!("{TOPICS}/{station}/answer"),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .expect("queue the answer");
    }

    /// The first message on `{TOPICS}/{suffix}` whose JSON satisfies `matches`, taken out of
    /// what was received; fails the test after [`DEADLINE`].
    async fn take(&mut self, suffix: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.take_within(suffix, DEADLINE, matches)
            .await
            .unwrap_or_else(|| panic!("no matching message on {TOPICS}/{suffix}"))
    }

    async fn take_within(
        &mut self,
        suffix: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let topic = format!("{TOPICS}/{suffix}");
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = 0;
        loop {
            while seen < self.kept.len() {
                if self.kept[seen].0 == topic {
                    let value: Value = serde_json::from_slice(&self.kept[seen].1)
                        .unwrap_or_else(|error| panic!("{topic} carries JSON: {error}"));
                    if matches(&value) {
                        self.kept.remove(seen);
                        return Some(value);
                    }
                }
                seen += 1;
            }
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(message)) => self.kept.push(message),
                Ok(None) => panic!("the POS client stopped"),
                Err(_) => return None,
            }
        }
    }

    /// Waits until the gateway takes answers on `station`'s topic: sends an answer to an
    /// unknown prompt until its `answer/error` reply comes back. Needed where the broker may
    /// have no subscription for the gateway yet (a fresh broker): there, an answer published
    /// too early is dropped by the broker, and only a reply proves the subscription exists.
    async fn wait_gateway_subscribed(&mut self, station: &str) {
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "the gateway never replied to a probe answer"
            );
            self.probes += 1;
            let probe = format!("probe-{}", self.probes);
            self.answer_json(station, json!({"prompt": probe, "option": "x"}))
                .await;
            let reply = self
                .take_within(
                    &format!("{station}/answer/error"),
                    Duration::from_millis(500),
                    |reply| reply["prompt"] == probe.as_str(),
                )
                .await;
            if let Some(reply) = reply {
                assert_eq!(reply["error"], "unknown prompt");
                return;
            }
        }
    }
}

/// A store with the prompts campaign, its scanner at till-1, and `[mqtt]` on `port`.
fn mqtt_store(port: u16) -> Store {
    let store = campaign_store("120s");
    store.append_config(&format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n"));
    store
}

#[tokio::test]
async fn a_prompt_is_published_answered_over_mqtt_and_recorded() {
    let broker = Mosquitto::start();
    let mut pos = Pos::connect(broker.port).await;
    let store = mqtt_store(broker.port);
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    pos.wait_gateway_subscribed("till-1").await;

    scanner.send(TARGETED_SCAN).await;
    let prompt = pos.take("till-1/prompt", |_| true).await;
    let mut fields: Vec<&str> = prompt
        .as_object()
        .expect("the prompt is an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "campaign",
            "expires_at",
            "id",
            "opened_at",
            "options",
            "question",
            "sku",
            "station"
        ],
        "exactly the contract's fields"
    );
    assert_eq!(prompt["campaign"], "xinsong-2026q4");
    assert_eq!(prompt["station"], "till-1");
    assert_eq!(prompt["sku"], "6901234567892");
    assert_eq!(prompt["question"], "推荐话术来源");
    assert_eq!(
        prompt["options"],
        json!([
            {"key": "doctor", "label": "医生推荐"},
            {"key": "referral", "label": "老客转介"},
            {"key": "poster", "label": "海报引导"}
        ])
    );
    let time = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(prompt[field].as_str().expect("a string"))
            .unwrap_or_else(|error| panic!("{field} is RFC 3339: {error}"))
    };
    assert_eq!(
        time("expires_at") - time("opened_at"),
        chrono::Duration::seconds(120)
    );
    let id = prompt["id"].as_str().expect("id").to_owned();
    let (_, body) = gateway.get("/api/v1/prompts?station=till-1").await.unwrap();
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed, json!([prompt]), "the same JSON as the local API");

    pos.answer_json(
        "till-1",
        json!({"prompt": id, "option": "referral", "clerk": "c-9"}),
    )
    .await;
    let resolved = pos.take("till-1/resolved", |_| true).await;
    assert_eq!(
        resolved,
        json!({"id": id, "outcome": "answered", "answer": "referral"})
    );
    gateway.wait_records("attribution", 1).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let attributions = of_kind(&records, "attribution");
    assert_eq!(attributions.len(), 1);
    let a = &attributions[0]["data"];
    assert_eq!(a["prompt"], id.as_str());
    assert_eq!(a["outcome"], "answered");
    assert_eq!(a["channel"], "mqtt");
    assert_eq!(a["answer"], "referral");
    assert_eq!(a["answer_label"], "老客转介");
    assert_eq!(a["clerk"], "c-9");
    assert_eq!(a["station"], "till-1");
    assert_eq!(a["scan"], of_kind(&records, "scan")[0]["id"]);
}

#[tokio::test]
async fn bad_answers_get_an_error_reply_and_a_later_good_answer_still_works() {
    let broker = Mosquitto::start();
    let mut pos = Pos::connect(broker.port).await;
    let store = mqtt_store(broker.port);
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    pos.wait_gateway_subscribed("till-1").await;
    scanner.send(TARGETED_SCAN).await;
    let id = pos.take("till-1/prompt", |_| true).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    pos.answer("till-1", br#"{"prompt":"nosuchprompt","option":"doctor"}"#)
        .await;
    let reply = pos
        .take("till-1/answer/error", |r| r["prompt"] == "nosuchprompt")
        .await;
    assert_eq!(reply["error"], "unknown prompt");

    pos.answer_json("till-1", json!({"prompt": id, "option": "tv-ad"}))
        .await;
    let reply = pos
        .take("till-1/answer/error", |r| r["prompt"] == id.as_str())
        .await;
    assert!(
        reply["error"].as_str().unwrap().contains("'tv-ad'"),
        "{reply}"
    );

    pos.answer("till-1", b"{not json").await;
    let reply = pos
        .take("till-1/answer/error", |r| r["prompt"].is_null())
        .await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed answer"),
        "{reply}"
    );

    // The gateway is unharmed and the prompt still open: a good answer is taken.
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);
    pos.answer_json("till-1", json!({"prompt": id, "option": "doctor"}))
        .await;
    let resolved = pos.take("till-1/resolved", |_| true).await;
    assert_eq!(resolved["outcome"], "answered");
    assert_eq!(resolved["answer"], "doctor");

    // A second, different answer to the resolved prompt is refused.
    pos.answer_json("till-1", json!({"prompt": id, "option": "poster"}))
        .await;
    let reply = pos
        .take("till-1/answer/error", |r| r["prompt"] == id.as_str())
        .await;
    assert_eq!(reply["error"], "prompt already resolved");

    gateway.wait_records("attribution", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let attributions = of_kind(&records, "attribution");
    assert_eq!(attributions.len(), 1, "only the good answer is recorded");
    assert_eq!(attributions[0]["data"]["answer"], "doctor");
    assert_eq!(attributions[0]["data"]["channel"], "mqtt");
}

/// A mosquitto without persistence on a given port: a restart onto it loses every session
/// and subscription, the case the channel's re-subscribing is for.
struct ForgetfulBroker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl ForgetfulBroker {
    fn start(port: u16) -> ForgetfulBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write mosquitto.conf");
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .unwrap_or_else(|| "mosquitto".into());
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        ForgetfulBroker { child, _dir: dir }
    }
}

impl Drop for ForgetfulBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_channel_reconnects_and_resubscribes_after_broker_restarts() {
    let mut broker = Mosquitto::start();
    let mut pos = Pos::connect(broker.port).await;
    let store = mqtt_store(broker.port);
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    pos.wait_gateway_subscribed("till-1").await;
    scanner.send(TARGETED_SCAN).await;
    let first = pos.take("till-1/prompt", |_| true).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // 1. The helper's restart (stop, start on the same port). Whether the broker kept the
    // gateway's session or not (mosquitto running as root cannot write the helper's
    // persistence folder), the gateway reconnects and takes answers again.
    let subscriptions = pos.subscriptions();
    broker.restart();
    pos.wait_subscribed(subscriptions + 1).await;
    pos.wait_gateway_subscribed("till-1").await;
    pos.answer_json("till-1", json!({"prompt": first, "option": "poster"}))
        .await;
    let resolved = pos
        .take("till-1/resolved", |r| r["id"] == first.as_str())
        .await;
    assert_eq!(resolved["answer"], "poster");

    // 2. A restart that forgets everything: the gateway must subscribe again by itself.
    scanner.send(TARGETED_SCAN).await;
    let second = pos
        .take("till-1/prompt", |p| p["id"] != first.as_str())
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let port = broker.port;
    broker.stop();
    let _forgetful = ForgetfulBroker::start(port);
    // The POS's own session is gone too; it subscribes again after reconnecting.
    pos.wait_subscribed(subscriptions + 2).await;
    pos.wait_gateway_subscribed("till-1").await;
    pos.answer_json("till-1", json!({"prompt": second, "option": "doctor"}))
        .await;
    let resolved = pos
        .take("till-1/resolved", |r| r["id"] == second.as_str())
        .await;
    assert_eq!(resolved["answer"], "doctor");

    gateway.wait_records("attribution", 2).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let answers: Vec<(&Value, &Value)> = of_kind(&records, "attribution")
        .iter()
        .map(|a| (&a["data"]["prompt"], &a["data"]["channel"]))
        .collect();
    assert_eq!(
        answers,
        [
            (&json!(first), &json!("mqtt")),
            (&json!(second), &json!("mqtt"))
        ]
    );
}

#[tokio::test]
async fn the_gateway_starts_without_its_broker_and_the_channel_works_once_it_is_up() {
    let mut broker = Mosquitto::start();
    let mut pos = Pos::connect(broker.port).await;
    let subscriptions = pos.subscriptions();
    broker.stop();

    let store = mqtt_store(broker.port);
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await; // waits for healthz 200
    gateway.wait_device("scanner-1", "connected").await;
    // Prompts work without the broker: the clerk page and the local API still have them.
    scanner.send(TARGETED_SCAN).await;
    gateway
        .wait_for("an open prompt", |g| async move {
            let (_, body) = g.get("/api/v1/prompts?station=till-1").await.unwrap();
            body.contains("6901234567892")
        })
        .await;
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);

    let (_, body) = gateway.get("/api/v1/prompts?station=till-1").await.unwrap();
    let open: Value = serde_json::from_str(&body).unwrap();
    let id = open[0]["id"]
        .as_str()
        .expect("the open prompt's id")
        .to_owned();

    broker.restart();
    pos.wait_subscribed(subscriptions + 1).await;
    pos.wait_gateway_subscribed("till-1").await;
    pos.answer_json("till-1", json!({"prompt": id, "option": "doctor"}))
        .await;
    let resolved = pos
        .take("till-1/resolved", |r| r["id"] == id.as_str())
        .await;
    assert_eq!(resolved["outcome"], "answered");
    gateway.wait_records("attribution", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let attributions = of_kind(&records, "attribution");
    assert_eq!(attributions.len(), 1);
    assert_eq!(attributions[0]["data"]["channel"], "mqtt");
}
