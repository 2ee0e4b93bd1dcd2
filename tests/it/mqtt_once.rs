//! Exactly once from MQTT across `kill -9`, with a real mosquitto, the real gateway and the real
//! `posgw hq` over loopback: a QoS 1 backlog drained through three kills reaches HQ with every
//! message once, counted by payload (HQ drops repeated ids by itself, so a message recorded
//! twice under two ids is what must not happen); and mosquitto's side of the bargain, that a
//! message left unacknowledged comes back with the same packet id and DUP set.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::harness::{Gateway, Store, DEADLINE};
use crate::hq_e2e::{HqSite, STORE_TOKEN};
use crate::mosquitto::Mosquitto;

/// The MQTT scanner's topic.
const TOPIC: &str = "store/till-1/scanner";

/// A store with the harness's serial scanner, one MQTT scanner on `broker` and, with `hq`, an
/// uplink to it.
fn store(broker: &Mosquitto, hq: Option<&HqSite>) -> Store {
    let store = Store::new();
    store.write_config("");
    store.append_config(&format!(
        "[mqtt]\nurl = \"{}\"\n\n\
         [[device]]\nid = \"mqtt-scanner-1\"\nrole = \"scanner\"\ntransport = \"mqtt\"\n\
         station = \"till-1\"\nprofile = \"mqtt-scanner\"\ntopic = \"{TOPIC}\"\n",
        broker.url()
    ));
    if let Some(hq) = hq {
        store.add_uplink(&hq.endpoint(), STORE_TOKEN, "");
    }
    store
}

/// Publishes `payloads` with QoS 1 and returns once the broker acknowledged every one.
async fn publish_all(port: u16, payloads: impl IntoIterator<Item = String>) {
    let mut options = MqttOptions::new("test-publisher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(1000);
    let (client, mut event_loop) = AsyncClient::new(options, 1000);
    let payloads: Vec<String> = payloads.into_iter().collect();
    let total = payloads.len();
    let feeder = tokio::spawn(async move {
        for payload in payloads {
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .expect("queue publish");
        }
        client
    });
    let mut acked = 0;
    let start = Instant::now();
    while acked < total {
        assert!(
            start.elapsed() < DEADLINE * 3,
            "the broker took the messages"
        );
        match tokio::time::timeout(DEADLINE, event_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => panic!("publisher: {error}"),
            Err(_) => panic!("the broker stopped acknowledging"),
        }
    }
    let client = feeder.await.expect("feeder");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), event_loop.poll()).await;
}

/// How many times HQ holds each scanned code.
fn codes_at_hq(records: &[Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in records.iter().filter(|r| r["kind"] == "scan") {
        let code = record["data"]["code"].as_str().expect("code").to_owned();
        *counts.entry(code).or_insert(0) += 1;
    }
    counts
}

/// Scan records this gateway process appended.
async fn scans(gateway: &Gateway) -> f64 {
    gateway.metric("posgw_records_total{kind=\"scan\"}").await
}

/// The harm of the issue: a QoS 1 backlog in the broker, the gateway killed three times while
/// it drains it into `posgw hq`. Every message recorded and durable but not yet acknowledged
/// when a kill came is redelivered by the broker (same packet id, DUP set) and must be
/// acknowledged without being recorded again; every message that was not durable is recorded
/// after the restart. At HQ: every payload exactly once.
#[tokio::test]
async fn a_backlog_drained_through_three_kill_9_reaches_hq_exactly_once_by_payload() {
    const TOTAL: usize = 30_000;
    // No inflight limit, as mosquitto 2.0 behaves towards a client that acknowledges in batches:
    // the whole backlog streams in, and each kill finds thousands of messages in every state.
    let broker = Mosquitto::start_with("max_inflight_messages 0\n");
    let site = HqSite::new();
    let store = store(&broker, Some(&site));
    // The persistent session and its subscription exist once the gateway ran once.
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    assert!(gateway.stop().await.success());
    publish_all(broker.port, (0..TOTAL).map(|i| format!("]C0ONCE-{i:06}"))).await;

    let hq = site.start().await;
    for round in 0..3 {
        let gateway = Gateway::start(&store).await;
        // Killed once it has recorded a share of the backlog: mid-drain, with records appended,
        // durable, sent to HQ and acknowledged to the broker in every proportion.
        let share = (TOTAL / 8) as f64;
        gateway
            .wait_for(&format!("round {round} under way"), |g| async move {
                scans(g).await >= share
            })
            .await;
        eprintln!(
            "round {round}: {} scans, {} redeliveries skipped",
            scans(&gateway).await,
            gateway.metric("posgw_mqtt_redelivered_skipped_total").await
        );
        gateway.kill9().await;
    }
    let gateway = Gateway::start(&store).await;
    let start = Instant::now();
    loop {
        let counts = codes_at_hq(&site.records().await);
        if (0..TOTAL).all(|i| counts.contains_key(&format!("ONCE-{i:06}"))) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE * 3,
            "only {} of {TOTAL} messages reached HQ",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway
        .wait_for("empty backlog", |g| async move {
            g.status().await["journal"]["backlog_records"] == 0
        })
        .await;
    assert!(gateway.stop().await.success());

    let counts = codes_at_hq(&site.records().await);
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let lost = (0..TOTAL)
        .filter(|i| !counts.contains_key(&format!("ONCE-{i:06}")))
        .count();
    eprintln!(
        "{} codes at HQ for {TOTAL} messages: {lost} lost, {} recorded more than once",
        counts.len(),
        twice.len()
    );
    assert_eq!(lost, 0, "messages lost");
    assert!(
        twice.is_empty(),
        "{} messages reached HQ more than once, e.g. {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(counts.len(), TOTAL, "nothing else was scanned");
    assert!(hq.stop().await.success());
}

/// A subscriber with manual acknowledgements and a persistent session.
fn subscriber(port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new("test-subscriber", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(false);
    options.set_manual_acks(true);
    AsyncClient::new(options, 100)
}

/// The next `n` publishes the subscriber receives.
async fn receive(event_loop: &mut rumqttc::EventLoop, n: usize) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(DEADLINE, event_loop.poll())
            .await
            .expect("a message in time")
        {
            Ok(Event::Incoming(Packet::Publish(publish))) => got.push(publish),
            Ok(_) => {}
            Err(error) => panic!("subscriber: {error}"),
        }
    }
    got
}

/// What the journal's message identities rely on, MQTT 3.1.1: on a session resumed with clean
/// session 0 the server re-sends unacknowledged PUBLISH packets with their original packet
/// identifiers ([MQTT-4.4.0-1]) and the DUP flag set ([MQTT-3.3.1-1]); a new PUBLISH gets an
/// identifier not in use, which becomes free only once its acknowledgement was processed
/// ([MQTT-2.3.1-2], [MQTT-2.3.1-3], for the server [MQTT-2.3.1-4]). mosquitto does exactly that.
#[tokio::test]
async fn mosquitto_redelivers_unacknowledged_messages_with_their_packet_ids_and_dup_set() {
    let broker = Mosquitto::start_with("max_inflight_messages 0\n");
    let (client, mut event_loop) = subscriber(broker.port);
    client
        .subscribe(TOPIC, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = event_loop.poll().await.expect("connect") {
            break;
        }
    }
    publish_all(broker.port, (0..5).map(|i| format!("]C0DUP-{i}"))).await;
    let first = receive(&mut event_loop, 5).await;
    assert!(
        first.iter().all(|p| !p.dup),
        "first deliveries carry no DUP"
    );
    // The first two are acknowledged; the connection drops before the others are.
    for publish in &first[..2] {
        client.ack(publish).await.expect("ack");
    }
    // Let the acks out: poll until the event loop has written them.
    for _ in 0..2 {
        let _ = tokio::time::timeout(Duration::from_millis(200), event_loop.poll()).await;
    }
    drop(client);
    drop(event_loop);

    let (client, mut event_loop) = subscriber(broker.port);
    let again = receive(&mut event_loop, 3).await;
    let key = |p: &rumqttc::Publish| (p.pkid, p.payload.clone());
    assert_eq!(
        again.iter().map(key).collect::<Vec<_>>(),
        first[2..].iter().map(key).collect::<Vec<_>>(),
        "the unacknowledged messages again, with their packet ids"
    );
    assert!(again.iter().all(|p| p.dup), "redeliveries carry DUP");
    for publish in &again {
        client.ack(publish).await.expect("ack");
    }
    // New messages: fresh deliveries (no DUP), never with an identifier still unacknowledged.
    publish_all(broker.port, (5..8).map(|i| format!("]C0DUP-{i}"))).await;
    let fresh = receive(&mut event_loop, 3).await;
    assert!(fresh.iter().all(|p| !p.dup));
    eprintln!(
        "pkids: first {:?}, again {:?}, fresh {:?}",
        first.iter().map(|p| p.pkid).collect::<Vec<_>>(),
        again.iter().map(|p| p.pkid).collect::<Vec<_>>(),
        fresh.iter().map(|p| p.pkid).collect::<Vec<_>>()
    );
}

/// Records HQ received again (it keeps them once, by id).
async fn hq_duplicates(hq: &Gateway) -> f64 {
    hq.metric("posgw_hq_duplicates_total{store=\"WZ-LC-001\"}")
        .await
}

/// Waits until the gateway holds nothing more to send (checked often: a kill right after).
async fn drained(gateway: &Gateway) {
    gateway
        .wait_for("empty backlog", |g| async move {
            let status = g.status().await;
            status["journal"]["backlog_records"] == 0 && status["uplink"]["state"] == "idle"
        })
        .await;
}

/// HQ's acknowledgement of a batch is kept promptly: a gateway killed while it drains a backlog
/// into HQ, right after it drained it, or after idling, sends HQ again at most one batch it
/// already had (plus the one in flight at the kill).
#[tokio::test]
async fn a_restart_sends_hq_at_most_one_batch_again() {
    const TOTAL: usize = 20_000;
    const BATCH: usize = 500;
    let broker = Mosquitto::start_with("max_inflight_messages 0\n");
    let site = HqSite::new();
    let store = store(&broker, None);
    store.add_uplink(
        &site.endpoint(),
        STORE_TOKEN,
        &format!("batch_max_records = {BATCH}"),
    );
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("mqtt-scanner-1", "connected").await;
    assert!(gateway.stop().await.success());
    publish_all(broker.port, (0..TOTAL).map(|i| format!("]C0AGAIN-{i:06}"))).await;
    let hq = site.start().await;

    let mut again = Vec::new();
    let gateway = Gateway::start(&store).await;
    gateway
        .wait_for("half the backlog sent", |g| async move {
            g.metric("posgw_uplink_sent_records_total").await >= (TOTAL / 2) as f64
        })
        .await;
    let mut killed = gateway;
    for when in ["mid-drain", "right after the drain", "after idling"] {
        killed.kill9().await;
        let before = hq_duplicates(&hq).await;
        let gateway = Gateway::start(&store).await;
        drained(&gateway).await;
        // The records sent again arrive before the uplink goes idle.
        let sent_again = hq_duplicates(&hq).await - before;
        eprintln!("{when}: {sent_again} records sent again");
        again.push((when, sent_again));
        if when == "right after the drain" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        killed = gateway;
    }
    assert!(killed.stop().await.success());
    for (when, sent_again) in again {
        assert!(
            sent_again <= (2 * BATCH) as f64,
            "{sent_again} records sent again after a kill {when}"
        );
    }
    assert_eq!(codes_at_hq(&site.records().await).len(), TOTAL);
    assert!(hq.stop().await.success());
}
