//! The MQTT uplink against a real mosquitto, including a broker restart mid-stream.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::mosquitto::Mosquitto;

/// HQ's side: a persistent-session QoS 1 subscriber that keeps every record by id.
struct Subscriber {
    records: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Subscriber {
    async fn start(port: u16, topic: &str) -> Subscriber {
        let mut options = MqttOptions::new("test-hq", "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        let records = Arc::new(Mutex::new(BTreeMap::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let sink = records.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Like a real HQ consumer: subscribe again on every (re)connect.
                        let _ = client.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let mut text = String::new();
                        flate2::read::GzDecoder::new(&publish.payload[..])
                            .read_to_string(&mut text)
                            .expect("gzip body");
                        let mut sink = sink.lock().unwrap();
                        for line in text.lines() {
                            let record: Value = serde_json::from_str(line).unwrap();
                            sink.insert(record["id"].as_str().unwrap().to_owned(), record);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        subscribed_rx.await.unwrap();
        Subscriber { records }
    }

    fn scans(&self) -> Vec<String> {
        let records = self.records.lock().unwrap();
        let all: Vec<Value> = records.values().cloned().collect();
        of_kind(&all, "scan")
            .iter()
            .map(|r| r["data"]["code"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait_scans(&self, n: usize) {
        let start = Instant::now();
        while self.scans().len() < n {
            assert!(
                start.elapsed() < DEADLINE * 2,
                "{} of {n} scans via MQTT",
                self.scans().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn batches_go_to_the_broker_with_qos1_and_survive_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let hq = Subscriber::start(broker.port, "hq/records.gz").await;
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&format!("{}/hq/records", broker.url()), "s3cret", "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;

    for i in 0..10 {
        scanner.send(format!("]C0BEFORE-{i}\r").as_bytes()).await;
    }
    hq.wait_scans(10).await;

    broker.restart();
    for i in 0..10 {
        scanner.send(format!("]C0AFTER-{i}\r").as_bytes()).await;
    }
    hq.wait_scans(20).await;
    gateway
        .wait_for("empty backlog", |g| async move {
            g.status().await["journal"]["backlog_records"] == 0
        })
        .await;
    assert!(gateway.stop().await.success());

    let mut scans = hq.scans();
    scans.sort();
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("AFTER-{i}"))
        .chain((0..10).map(|i| format!("BEFORE-{i}")))
        .collect();
    expected.sort();
    assert_eq!(scans, expected);
}
