//! MQTT devices end to end with a real mosquitto broker: an MQTT scanner and a JSON register
//! publish to the store's broker, their messages become scan and sale records (linked to the
//! prompt), bad messages become `bad_frame` records, and the gateway survives a broker restart,
//! a broker that is down at start, and a `kill -9` without losing an acknowledged message.

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::mosquitto::Mosquitto;
use crate::prompts::CAMPAIGN;

/// The store: the serial scanner of the harness, an MQTT scanner and an MQTT register at till-1.
fn mqtt_store(broker: &Mosquitto, campaign: bool) -> Store {
    let store = Store::new();
    store.write_config("");
    store.append_config(&format!(
        "[mqtt]\nurl = \"{}\"\n\n\
         [[device]]\nid = \"mqtt-scanner-1\"\nrole = \"scanner\"\ntransport = \"mqtt\"\n\
         station = \"till-1\"\nprofile = \"mqtt-scanner\"\ntopic = \"store/till-1/scanner\"\n\n\
         [[device]]\nid = \"mqtt-register-1\"\nrole = \"register\"\ntransport = \"mqtt\"\n\
         station = \"till-1\"\nprofile = \"json-register\"\ntopic = \"store/till-1/sales\"\n",
        broker.url()
    ));
    if campaign {
        store.append_config(&CAMPAIGN.replace("TIMEOUT", "120s"));
    }
    store
}

/// Publishes QoS 1 messages like a POS or scanner would; `sent` returns once the broker
/// acknowledged (PUBACK) every message so far.
struct Publisher {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    published: usize,
    acked: usize,
}

impl Publisher {
    async fn connect(port: u16, id: &str) -> Publisher {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut event_loop) = AsyncClient::new(options, 10_000);
        let (tx, acks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            client,
            acks,
            published: 0,
            acked: 0,
        }
    }

    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue publish");
        self.published += 1;
    }

    /// Waits until the broker acknowledged everything published.
    async fn sent(&mut self) {
        while self.acked < self.published {
            tokio::time::timeout(DEADLINE, self.acks.recv())
                .await
                .expect("the broker acknowledges in time")
                .expect("publisher running");
            self.acked += 1;
        }
    }
}

fn device_status<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|device| device["id"] == id)
        .expect("device listed")
}

#[tokio::test]
async fn mqtt_scans_and_sales_are_recorded_linked_and_bad_messages_counted() {
    let broker = Mosquitto::start();
    let store = mqtt_store(&broker, true);
    let _serial = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    gateway.wait_device("mqtt-register-1", "connected").await;
    assert_eq!(
        gateway
            .metric("posgw_device_connected{device=\"mqtt-scanner-1\"}")
            .await,
        1.0
    );

    let mut pos = Publisher::connect(broker.port, "test-pos").await;
    // A targeted product as JSON with the AIM id apart, a plain-text scan, and junk.
    pos.publish(
        "store/till-1/scanner",
        r#"{"code":"6901234567892","symbology":"]E0"}"#,
    )
    .await;
    pos.publish("store/till-1/scanner", "]C0LOT-42\r\n").await;
    pos.publish("store/till-1/scanner", r#"{"barcode":"1"}"#)
        .await;
    pos.sent().await;
    gateway.wait_records("scan", 2).await;
    let prompt = gateway
        .get("/api/v1/prompts?station=till-1")
        .await
        .map(|(_, body)| serde_json::from_str::<Value>(&body).expect("json"))
        .expect("prompts");
    let prompt_id = prompt[0]["id"]
        .as_str()
        .expect("a prompt opened")
        .to_owned();

    pos.publish(
        "store/till-1/sales",
        r#"{"receipt":"R-2001","clerk":"c-9","currency":"CNY","total":25.0,"lines":[{"sku":"6901234567892","name":"参松养心胶囊","qty":1,"unit_price":25.0,"amount":25.0}]}"#,
    )
    .await;
    pos.publish("store/till-1/sales", "not json at all").await;
    pos.sent().await;
    gateway.wait_records("sale", 1).await;
    gateway
        .wait_for("two bad frames", |g| async move {
            g.metric("posgw_bad_frames_total{device=\"mqtt-scanner-1\"}")
                .await
                >= 1.0
                && g.metric("posgw_bad_frames_total{device=\"mqtt-register-1\"}")
                    .await
                    >= 1.0
        })
        .await;
    gateway.wait_durable().await;
    let status = gateway.status().await;
    let scanner = device_status(&status, "mqtt-scanner-1");
    assert_eq!(scanner["transport"], "mqtt");
    assert_eq!(scanner["state"], "connected");
    assert!(scanner["last_frame_at"].is_string(), "{scanner}");
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let scans = of_kind(&records, "scan");
    let targeted = scans
        .iter()
        .find(|scan| {
            scan["data"]["device"] == "mqtt-scanner-1" && scan["data"]["code_kind"] == "ean13"
        })
        .expect("the targeted scan");
    assert_eq!(targeted["data"]["symbology"], "]E0");
    assert_eq!(targeted["data"]["campaign"], "xinsong-2026q4");
    assert!(scans
        .iter()
        .any(|scan| scan["data"]["code"] == "LOT-42" && scan["data"]["raw"] == "]C0LOT-42"));
    let sale = &of_kind(&records, "sale")[0]["data"];
    assert_eq!(sale["device"], "mqtt-register-1");
    assert_eq!(sale["receipt"], "R-2001");
    assert_eq!(sale["lines"][0]["prompt"], prompt_id.as_str());
    let bad: Vec<String> = of_kind(&records, "device")
        .into_iter()
        .filter(|r| r["data"]["event"] == "bad_frame")
        .map(|r| r["data"]["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad.iter().any(|d| d.contains("no 'code' field")), "{bad:?}");
    assert!(
        bad.iter().any(|d| d.contains("not a JSON object")),
        "{bad:?}"
    );
}

#[tokio::test]
async fn a_broker_restart_and_a_broker_down_at_start_lose_nothing() {
    let mut broker = Mosquitto::reserve();
    let store = mqtt_store(&broker, false);
    let _serial = PtyScanner::plug(&store.path("scanner"));
    // The store's broker is down: the gateway starts anyway and says so.
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "disconnected").await;
    assert_eq!(
        gateway.get("/healthz").await.map(|(code, _)| code),
        Some(200)
    );

    broker.start_now();
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    let mut pos = Publisher::connect(broker.port, "test-pos").await;
    for i in 0..20 {
        pos.publish("store/till-1/scanner", format!("]C0BEFORE-{i}"))
            .await;
    }
    pos.sent().await;
    gateway.wait_records("scan", 20).await;

    broker.restart();
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    let mut pos = Publisher::connect(broker.port, "test-pos-2").await;
    for i in 0..20 {
        pos.publish("store/till-1/scanner", format!("]C0AFTER-{i}"))
            .await;
    }
    pos.sent().await;
    gateway.wait_records("scan", 40).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let codes: HashSet<String> = of_kind(&records, "scan")
        .iter()
        .map(|scan| scan["data"]["code"].as_str().expect("code").to_owned())
        .collect();
    for i in 0..20 {
        assert!(codes.contains(&format!("BEFORE-{i}")), "BEFORE-{i}");
        assert!(codes.contains(&format!("AFTER-{i}")), "AFTER-{i}");
    }
    let events: Vec<&str> = of_kind(&records, "device")
        .into_iter()
        .filter(|r| r["data"]["device"] == "mqtt-scanner-1")
        .map(|r| r["data"]["event"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        events,
        ["disconnected", "connected", "disconnected", "connected"],
        "each change recorded once"
    );
}

#[tokio::test]
async fn kill_9_while_messages_flow_loses_no_message_the_broker_accepted() {
    let broker = Mosquitto::start();
    let store = mqtt_store(&broker, false);
    let _serial = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;

    // The scanner keeps publishing through the kill and the restart.
    let total = 600;
    let port = broker.port;
    let publisher = tokio::spawn(async move {
        let mut pos = Publisher::connect(port, "test-scanner").await;
        for i in 0..total {
            pos.publish("store/till-1/scanner", format!("]C0MSG-{i:04}"))
                .await;
            if i % 20 == 19 {
                pos.sent().await;
            }
        }
        pos.sent().await;
    });
    gateway
        .wait_for("a third of the messages recorded", |g| async move {
            g.metric("posgw_records_total{kind=\"scan\"}").await >= f64::from(total / 3)
        })
        .await;
    gateway.kill9().await;
    let gateway = Gateway::start(&store).await;
    publisher.await.expect("publisher");

    // Every message the broker accepted reaches the journal (some twice: recorded, then the
    // kill came before the PUBACK, so the broker redelivered). The broker delivers a session's
    // messages in order, so a sale published after the last scan was acknowledged marks the end.
    let mut pos = Publisher::connect(broker.port, "test-register").await;
    pos.publish("store/till-1/sales", r#"{"receipt":"END","lines":[]}"#)
        .await;
    pos.sent().await;
    gateway.wait_records("sale", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let codes: Vec<String> = of_kind(&records, "scan")
        .iter()
        .map(|scan| scan["data"]["code"].as_str().expect("code").to_owned())
        .collect();
    let unique: HashSet<&String> = codes.iter().collect();
    for i in 0..total {
        assert!(
            unique.contains(&format!("MSG-{i:04}")),
            "MSG-{i:04} was accepted by the broker but never recorded"
        );
    }
    eprintln!(
        "{} scans recorded for {total} messages ({} redelivered after the kill)",
        codes.len(),
        codes.len() - unique.len()
    );
}

#[tokio::test]
async fn a_backlog_burst_is_recorded_in_order_with_its_prompt_and_bad_frame_and_all_acknowledged() {
    let broker = Mosquitto::start();
    let store = mqtt_store(&broker, true);
    let _serial = PtyScanner::plug(&store.path("scanner"));
    // The persistent session and its subscription exist once the gateway ran; then the
    // messages queue at the broker while it is stopped, and arrive as one burst, which the core
    // appends in batches of plain scans around the targeted scan and the junk.
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    assert!(gateway.stop().await.success());
    let total: usize = 1000;
    let (targeted, junk) = (400, 700);
    let mut pos = Publisher::connect(broker.port, "test-scanner").await;
    for i in 0..total {
        let payload = match i {
            _ if i == targeted => "]E06901234567892".to_owned(),
            _ if i == junk => r#"{"barcode":"1"}"#.to_owned(),
            _ => format!("]C0BURST-{i:04}"),
        };
        pos.publish("store/till-1/scanner", payload).await;
    }
    pos.sent().await;

    let gateway = Gateway::start(&store).await;
    gateway.wait_records("scan", total as u64 - 1).await;
    gateway.wait_durable().await;
    let prompts = gateway
        .get("/api/v1/prompts?station=till-1")
        .await
        .map(|(_, body)| serde_json::from_str::<Value>(&body).expect("json"))
        .expect("prompts");
    let prompt = prompts[0]["id"].as_str().expect("one prompt opened");
    let (code, _) = crate::prompts::post(
        &gateway,
        &format!("/api/v1/prompts/{prompt}/answer"),
        r#"{"option":"doctor"}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert!(gateway.stop().await.success());
    // Everything was acknowledged: a gateway started again gets no message a second time.
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    let mut end = Publisher::connect(broker.port, "test-register").await;
    end.publish("store/till-1/sales", r#"{"receipt":"END","lines":[]}"#)
        .await;
    end.sent().await;
    gateway.wait_records("sale", 1).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let burst: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["data"]["device"] == "mqtt-scanner-1"
                && (r["kind"] == "scan" || r["data"]["event"] == "bad_frame")
        })
        .collect();
    assert_eq!(burst.len(), total, "each message recorded exactly once");
    for (i, record) in burst.iter().enumerate() {
        match i {
            _ if i == targeted => {
                assert_eq!(record["data"]["campaign"], "xinsong-2026q4", "{record}");
                // Its prompt names this very record: traceable from the answer to the scan.
                let attribution = &of_kind(&records, "attribution")[0];
                assert_eq!(attribution["data"]["scan"], record["id"], "{attribution}");
            }
            _ if i == junk => assert_eq!(record["kind"], "device", "{record}"),
            _ => assert_eq!(
                record["data"]["code"],
                format!("BURST-{i:04}").as_str(),
                "record {i} out of order"
            ),
        }
    }
    let seqs: Vec<u64> = burst
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "seqs in order"
    );
}

/// A broker that hands over every queued message at once (no inflight limit) while the journal
/// makes nothing durable yet: the gateway stops reading at 16,384 unacknowledged messages, so
/// its memory stays bounded, and takes the rest once the flush lets it acknowledge.
#[tokio::test]
async fn reading_pauses_at_the_unacknowledged_limit_and_resumes_after_the_flush() {
    const LIMIT: u64 = 16_384;
    let broker = Mosquitto::start_with("max_inflight_messages 0\nmax_queued_messages 0\n");
    let store = mqtt_store(&broker, false);
    let config = std::fs::read_to_string(store.config_path()).expect("config");
    std::fs::write(
        store.config_path(),
        config.replace("flush = \"20ms\"", "flush = \"4s\""),
    )
    .expect("config");
    let _serial = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    let total = LIMIT + 3_616;
    let mut pos = Publisher::connect(broker.port, "test-scanner").await;
    for i in 0..total {
        pos.publish("store/till-1/scanner", format!("]C0LIMIT-{i:05}"))
            .await;
    }
    pos.sent().await;
    let scans = "posgw_records_total{kind=\"scan\"}";
    gateway
        .wait_for("the unacknowledged limit", |g| async move {
            g.metric(scans).await >= LIMIT as f64
        })
        .await;
    // Nothing is durable before the 4 s flush: no acknowledgement, so no further message is
    // read meanwhile (half a second is plenty for a gateway reading ~100k messages a second).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gateway.metric(scans).await as u64,
        LIMIT,
        "read past the limit"
    );
    gateway.wait_records("scan", total).await;
    assert!(gateway.stop().await.success());
    let codes: Vec<String> = of_kind(&store.dump(), "scan")
        .iter()
        .map(|r| r["data"]["code"].as_str().expect("code").to_owned())
        .collect();
    let expected: Vec<String> = (0..total).map(|i| format!("LIMIT-{i:05}")).collect();
    assert_eq!(codes, expected, "every message once, in order");
}
