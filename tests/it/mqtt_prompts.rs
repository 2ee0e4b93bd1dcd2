//! The MQTT prompt channel against a real mosquitto: a "POS" client (rumqttc) sees prompts and
//! resolutions and answers over the broker; bad answers get `answer/error` replies; the channel
//! survives broker restarts (the helper's restart, then one onto a broker without persistence)
//! and a broker that is down when the gateway starts. On the same channel, the POS sees
//! consultations at every change and records their steps; bad steps get
//! `consultation/step/error` replies; open consultations are published when the channel
//! connects.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::mosquitto::Mosquitto;
use crate::prompts::{campaign_store, post};

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

    /// Publishes a step `body` (JSON) on a station's step topic.
    async fn step_json(&self, station: &str, body: Value) {
        self.step(station, body.to_string().as_bytes()).await;
    }

    /// Publishes `payload` on a station's step topic.
    async fn step(&self, station: &str, payload: &[u8]) {
        self.client
            .publish(
                format!("{TOPICS}/{station}/consultation/step"),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .expect("queue the step");
    }

    /// Waits until the gateway takes answers on `station`'s topic: sends an answer to an
    /// unknown prompt until its `answer/error` reply comes back. Needed where the broker may
    /// have no subscription for the gateway yet (a fresh broker): there, an answer published
    /// too early is dropped by the broker, and only a reply proves the subscription exists.
    async fn wait_gateway_subscribed(&mut self, station: &str) {
        let reply = self
            .probe(
                station,
                "answer",
                "prompt",
                |probe| json!({"prompt": probe, "option": "x"}),
            )
            .await;
        assert_eq!(reply["error"], "unknown prompt");
    }

    /// [`Pos::wait_gateway_subscribed`] for steps: a step of an unknown consultation until its
    /// `consultation/step/error` reply comes back.
    async fn wait_gateway_takes_steps(&mut self, station: &str) {
        let reply = self
            .probe(
                station,
                "consultation/step",
                "consultation",
                |probe| json!({"consultation": probe, "step": "consult"}),
            )
            .await;
        assert_eq!(reply["step"], "consult");
        assert_eq!(
            reply["error"],
            format!(
                "no consultation '{}'",
                reply["consultation"].as_str().unwrap()
            )
        );
    }

    /// Publishes `body(probe id)` on `{station}/{topic}` until a reply naming the probe in
    /// `field` comes back on `{station}/{topic}/error`; returns the reply.
    async fn probe(
        &mut self,
        station: &str,
        topic: &str,
        field: &str,
        body: impl Fn(&str) -> Value,
    ) -> Value {
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "the gateway never replied to a probe on {topic}"
            );
            self.probes += 1;
            let probe = format!("probe-{}", self.probes);
            self.client
                .publish(
                    format!("{TOPICS}/{station}/{topic}"),
                    QoS::AtLeastOnce,
                    false,
                    body(&probe).to_string(),
                )
                .await
                .expect("queue the probe");
            let reply = self
                .take_within(
                    &format!("{station}/{topic}/error"),
                    Duration::from_millis(500),
                    |reply| reply[field] == probe.as_str(),
                )
                .await;
            if let Some(reply) = reply {
                return reply;
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

/// The flow of `config/posgw.toml`, without `hold`: its products' scans are never held.
const FLOW: &str = r#"
[[flow]]
id = "rx-5step"
name = "处方推荐五步法"
skus = ["6901234567892", "69012345*"]
steps = [ { key = "consult", label = "客户问诊" },
          { key = "symptoms", label = "症状记录", choose = ["高血压", "心悸", "失眠", "胸闷"], multi = true },
          { key = "recommend", label = "药品推荐", auto = "scan" },
          { key = "insurance", label = "医保核验", choose = ["通过", "未通过", "自费"], auto = "sale" },
          { key = "guidance", label = "用药指导" } ]
skip_reasons = ["客户明确拒绝", "复购老客", "紧急情况"]
"#;

/// [`mqtt_store`] with the five-step flow.
fn flow_store(port: u16) -> Store {
    let store = mqtt_store(port);
    store.append_config(FLOW);
    store
}

/// Opens a consultation at till-1 over the local API; returns it.
async fn open_consultation(gateway: &Gateway) -> Value {
    let (code, opened) = post(
        gateway,
        "/api/v1/consultations",
        r#"{"station":"till-1","flow":"rx-5step","clerk":"c-17"}"#,
    )
    .await;
    assert_eq!(code, 201, "{opened}");
    opened
}

/// The `consultation_step` records of `records`, as (key, the record's data).
fn step_records(records: &[Value]) -> Vec<(String, &Value)> {
    of_kind(records, "consultation_step")
        .into_iter()
        .map(|record| {
            let data = &record["data"];
            (data["key"].as_str().expect("key").to_owned(), data)
        })
        .collect()
}

#[tokio::test]
async fn a_consultation_is_published_stepped_over_mqtt_and_recorded() {
    let broker = Mosquitto::start();
    let mut pos = Pos::connect(broker.port).await;
    let store = flow_store(broker.port);
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    pos.wait_gateway_takes_steps("till-1").await;

    // The flow product's scan opens a consultation; 药品推荐 is done by it.
    scanner.send(TARGETED_SCAN).await;
    let opened = pos.take("till-1/consultation", |_| true).await;
    assert_eq!(opened["state"], "open");
    assert_eq!(opened["flow"], "rx-5step");
    assert_eq!(opened["flow_name"], "处方推荐五步法");
    assert_eq!(opened["station"], "till-1");
    assert_eq!(opened["steps"][2]["key"], "recommend");
    assert_eq!(opened["steps"][2]["value"], "6901234567892");
    assert_eq!(opened["scans"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        opened["skip_reasons"],
        json!(["客户明确拒绝", "复购老客", "紧急情况"])
    );
    let id = opened["id"].as_str().expect("id").to_owned();
    let (_, body) = gateway
        .get("/api/v1/consultations?station=till-1")
        .await
        .unwrap();
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed, json!([opened]), "the same JSON as the local API");

    // Each step the POS publishes comes back as the whole consultation.
    let is_this = |c: &Value| c["id"] == id.as_str();
    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "consult", "clerk": "c-17"}),
    )
    .await;
    let changed = pos
        .take("till-1/consultation", |c| {
            is_this(c) && !c["steps"][0]["at"].is_null()
        })
        .await;
    assert_eq!(changed["steps"][0]["clerk"], "c-17");
    assert_eq!(changed["state"], "open");

    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "symptoms", "values": ["失眠", "心悸"], "clerk": "c-17"}),
    )
    .await;
    pos.take("till-1/consultation", |c| {
        is_this(c) && c["steps"][1]["values"] == json!(["失眠", "心悸"])
    })
    .await;

    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "insurance", "value": "自费"}),
    )
    .await;
    pos.take("till-1/consultation", |c| {
        is_this(c) && c["steps"][3]["value"] == "自费"
    })
    .await;

    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "guidance", "skip": "复购老客", "clerk": "c-17"}),
    )
    .await;
    let skipped = pos
        .take("till-1/consultation", |c| {
            is_this(c) && c["steps"][4]["skipped"] == "复购老客"
        })
        .await;
    assert!(!skipped["steps"][4]["at"].is_null());

    // A value the step does not offer: refused on step/error, and nothing changes.
    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "insurance", "value": "刷脸"}),
    )
    .await;
    let refused = pos
        .take("till-1/consultation/step/error", |r| {
            r["consultation"] == id.as_str()
        })
        .await;
    assert_eq!(refused["step"], "insurance");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("one of: 通过, 未通过, 自费"),
        "{refused}"
    );

    // The clerk closes it at the page: the POS sees how it closed.
    let (code, closed) = post(
        &gateway,
        &format!("/api/v1/consultations/{id}/close"),
        r#"{"outcome":"completed"}"#,
    )
    .await;
    assert_eq!(code, 200, "{closed}");
    let published = pos
        .take("till-1/consultation", |c| {
            is_this(c) && c["state"] != "open"
        })
        .await;
    assert_eq!(published["state"], "completed");
    assert_eq!(published, closed, "the same JSON as the local API");

    gateway.wait_records("consultation", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let steps = step_records(&records);
    let keys: Vec<&str> = steps.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        keys,
        ["recommend", "consult", "symptoms", "insurance", "guidance"],
        "the scan's step, then the POS's, and not the refused one"
    );
    for (_, data) in &steps {
        assert_eq!(data["consultation"], id.as_str());
        assert_eq!(data["station"], "till-1");
        assert!(data["at"].is_string());
    }
    assert_eq!(steps[1].1["clerk"], "c-17");
    assert_eq!(steps[2].1["values"], json!(["失眠", "心悸"]));
    assert_eq!(steps[3].1["value"], "自费");
    assert_eq!(steps[4].1["skipped"], "复购老客");
    let consultations = of_kind(&records, "consultation");
    assert_eq!(consultations.len(), 1);
    assert_eq!(consultations[0]["data"]["id"], id.as_str());
    assert_eq!(consultations[0]["data"]["outcome"], "completed");
}

#[tokio::test]
async fn bad_steps_get_an_error_reply_and_a_later_good_step_still_works() {
    let broker = Mosquitto::start();
    let mut pos = Pos::connect(broker.port).await;
    let store = flow_store(broker.port);
    let gateway = Gateway::start(&store).await;
    pos.wait_gateway_takes_steps("till-1").await;
    let opened = open_consultation(&gateway).await;
    let id = opened["id"].as_str().expect("id").to_owned();
    let published = pos
        .take("till-1/consultation", |c| c["id"] == id.as_str())
        .await;
    assert_eq!(published, opened, "the same JSON as the local API");

    // Each refusal names the consultation and step it could read, and says why.
    let cases = [
        (
            json!({"consultation": id, "step": "nosuch"}),
            "flow 'rx-5step' has no step 'nosuch'",
        ),
        (
            json!({"consultation": id, "step": "guidance", "skip": "太忙"}),
            "the skip reason is not one of flow 'rx-5step'",
        ),
        (
            json!({"consultation": id, "step": "consult", "value": "x"}),
            "step 'consult' takes no value",
        ),
        (
            json!({"consultation": id, "step": "symptoms"}),
            "step 'symptoms' needs a value",
        ),
        (
            json!({"consultation": id, "step": "symptoms", "vaule": "失眠"}),
            "unknown field `vaule`",
        ),
    ];
    for (body, why) in cases {
        let step = body["step"].clone();
        pos.step_json("till-1", body).await;
        let reply = pos
            .take("till-1/consultation/step/error", |r| {
                r["consultation"] == id.as_str() && r["step"] == step
            })
            .await;
        assert!(
            reply["error"].as_str().unwrap().contains(why),
            "{reply} should say {why}"
        );
    }
    pos.step("till-1", b"{not json").await;
    let reply = pos
        .take("till-1/consultation/step/error", |r| {
            r["consultation"].is_null()
        })
        .await;
    assert_eq!(reply["step"], Value::Null);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed step"),
        "{reply}"
    );
    // Another station's topic: refused there, even with a step that is fine.
    pos.step_json(
        "till-2",
        json!({"consultation": id, "step": "symptoms", "value": "胸闷"}),
    )
    .await;
    let reply = pos
        .take("till-2/consultation/step/error", |r| {
            r["consultation"] == id.as_str()
        })
        .await;
    assert_eq!(
        reply["error"],
        format!("consultation '{id}' is at station 'till-1', not 'till-2'")
    );

    // The gateway is unharmed and the consultation open: a good step is taken.
    assert_eq!(gateway.get("/healthz").await.unwrap().0, 200);
    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "symptoms", "value": "胸闷"}),
    )
    .await;
    let changed = pos
        .take("till-1/consultation", |c| {
            c["id"] == id.as_str() && !c["steps"][1]["at"].is_null()
        })
        .await;
    assert_eq!(changed["steps"][1]["values"], json!(["胸闷"]), "multi");

    // Closed (abandoned by the clerk): the POS sees it, and a step is refused.
    let (code, _) = post(
        &gateway,
        &format!("/api/v1/consultations/{id}/close"),
        r#"{"outcome":"abandoned"}"#,
    )
    .await;
    assert_eq!(code, 200);
    pos.take("till-1/consultation", |c| {
        c["id"] == id.as_str() && c["state"] == "abandoned"
    })
    .await;
    pos.step_json("till-1", json!({"consultation": id, "step": "consult"}))
        .await;
    let reply = pos
        .take("till-1/consultation/step/error", |r| {
            r["consultation"] == id.as_str()
        })
        .await;
    assert_eq!(
        reply["error"],
        format!("consultation '{id}' is already closed")
    );

    gateway.wait_records("consultation", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let steps = step_records(&records);
    assert_eq!(steps.len(), 1, "only the good step is recorded: {steps:?}");
    assert_eq!(steps[0].0, "symptoms");
    assert_eq!(steps[0].1["values"], json!(["胸闷"]));
}

#[tokio::test]
async fn consultations_open_before_the_channel_connects_are_published_once_it_does() {
    // The first run has no broker: the consultation it opens is saved at the stop.
    let mut broker = Mosquitto::reserve();
    let store = flow_store(broker.port);
    let gateway = Gateway::start(&store).await;
    let opened = open_consultation(&gateway).await;
    let id = opened["id"].as_str().expect("id").to_owned();
    assert!(gateway.stop().await.success());

    // The second run finds the broker and the POS there: its first connection publishes the
    // open consultations (nothing changed since the start, so no event carries it).
    broker.start_now();
    let mut pos = Pos::connect(broker.port).await;
    let gateway = Gateway::start(&store).await;
    let published = pos
        .take("till-1/consultation", |c| c["id"] == id.as_str())
        .await;
    assert_eq!(published["state"], "open");
    assert_eq!(published["clerk"], "c-17");
    assert_eq!(published["opened_at"], opened["opened_at"]);

    pos.step_json(
        "till-1",
        json!({"consultation": id, "step": "consult", "clerk": "c-17"}),
    )
    .await;
    pos.take("till-1/consultation", |c| {
        c["id"] == id.as_str() && !c["steps"][0]["at"].is_null()
    })
    .await;
    gateway.wait_records("consultation_step", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let steps = step_records(&records);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].0, "consult");
    assert_eq!(steps[0].1["consultation"], id.as_str());
}
