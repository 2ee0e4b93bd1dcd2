//! Registers on serial lines, end to end: an ESC/POS printer tap on a pty pair passes every byte
//! on unchanged while it reads the receipt into a `sale`, and a JSON register's sale links its
//! targeted line to the prompt the scan opened, closing the traceability loop.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_serial::SerialPortBuilderExt;

use crate::harness::{client, of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::prompts::campaign_store;

const RECEIPT_A: &[u8] = include_bytes!("../fixtures/receipt-a.bin");
const RECEIPT_A_TEXT: &str = include_str!("../fixtures/receipt-a.txt");

/// A register device on the pty link `register`, appended to the store's config.
fn add_register(store: &Store, profile: &str, extra: &str) {
    store.append_config(&format!(
        "[[device]]\nid = \"register-1\"\nrole = \"register\"\ntransport = \"serial\"\n\
         station = \"till-1\"\nprofile = \"{profile}\"\npath = \"{}\"\n{extra}\n",
        store.path("register").display()
    ));
}

#[tokio::test]
async fn the_printer_tap_passes_every_byte_on_and_records_the_receipt_as_a_sale() {
    let store = Store::new();
    store.write_config("");
    let printer_link = store.path("printer");
    add_register(
        &store,
        "escpos-tap",
        &format!("passthrough = \"{}\"", printer_link.display()),
    );
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;
    let mut printer = tokio_serial::new(printer_link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the printer link");

    // Two receipts, written in random small pieces (commands split anywhere).
    let stream: Vec<u8> = [RECEIPT_A, RECEIPT_A].concat();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let reader = tokio::spawn(async move {
        let mut received = vec![0u8; 2 * RECEIPT_A.len()];
        tokio::time::timeout(DEADLINE, printer.read_exact(&mut received))
            .await
            .expect("the printer got every byte in time")
            .expect("read the printer link");
        received
    });
    let mut at = 0;
    while at < stream.len() {
        let end = (at + rng.gen_range(1..=7)).min(stream.len());
        register.send(&stream[at..end]).await;
        at = end;
    }
    assert_eq!(
        reader.await.expect("reader"),
        stream,
        "byte-exact passthrough"
    );

    gateway.wait_records("sale", 2).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let sales = of_kind(&records, "sale");
    assert_eq!(sales.len(), 2);
    for sale in &sales {
        let data = &sale["data"];
        assert_eq!(data["device"], "register-1");
        assert_eq!(data["station"], "till-1");
        assert_eq!(data["text"], RECEIPT_A_TEXT.trim_end());
        assert_eq!(data["total"], 33.5);
        let lines = data["lines"].as_array().expect("lines");
        assert_eq!(lines.len(), 2, "{data}");
        assert_eq!(lines[0]["name"], "Amoxicillin 0.25g");
        assert_eq!(lines[0]["qty"], 2.0);
        assert_eq!(lines[0]["amount"], 25.0);
        assert_eq!(lines[1]["amount"], 8.5);
        assert_eq!(lines[0]["prompt"], Value::Null);
    }
}

#[tokio::test]
async fn a_register_sale_links_the_targeted_line_to_the_prompt_and_the_answer_names_the_receipt() {
    let store = campaign_store("120s");
    add_register(&store, "json-register", "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;

    scanner.send(b"]E06901234567892\r").await;
    let prompt = wait_prompt(&gateway).await;

    // The sale is rung up before the clerk answers; a wrongly shaped message in between is
    // recorded as a bad frame and changes nothing.
    register
        .send(b"{\"receipt\":\"R-1001\",\"lines\":\"oops\"}\n")
        .await;
    register
        .send(
            "{\"receipt\":\"R-1001\",\"clerk\":\"c-7\",\"currency\":\"CNY\",\"total\":33.5,\
              \"lines\":[{\"sku\":\"6901234567892\",\"name\":\"参松养心胶囊\",\"qty\":1,\"unit_price\":25.0,\"amount\":25.0},\
              {\"sku\":\"6939999999999\",\"name\":\"维生素C\",\"qty\":1,\"unit_price\":8.5,\"amount\":8.5}]}\r\n"
                .as_bytes(),
        )
        .await;
    gateway.wait_records("sale", 1).await;
    let response = client()
        .post(format!("{}/api/v1/prompts/{prompt}/answer", gateway.api))
        .json(&serde_json::json!({"option": "doctor", "clerk": "c-7"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    gateway.wait_durable().await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let sales = of_kind(&records, "sale");
    assert_eq!(sales.len(), 1);
    let data = &sales[0]["data"];
    assert_eq!(data["receipt"], "R-1001");
    assert_eq!(data["clerk"], "c-7");
    assert_eq!(data["currency"], "CNY");
    assert_eq!(data["lines"][0]["prompt"], prompt.as_str());
    assert_eq!(data["lines"][1]["prompt"], Value::Null);
    // The campaign's product is marked as such (HQ's traceability counts that sale); the other
    // line and both lines' flow (none configured) are absent.
    assert_eq!(data["lines"][0]["campaign"], "xinsong-2026q4");
    assert_eq!(data["lines"][1].get("campaign"), None);
    assert_eq!(data["lines"][0].get("flow"), None);
    let bad: Vec<&Value> = of_kind(&records, "device")
        .into_iter()
        .filter(|r| r["data"]["event"] == "bad_frame" && r["data"]["device"] == "register-1")
        .collect();
    assert_eq!(bad.len(), 1, "the wrongly shaped sale");
    assert!(
        bad[0]["data"]["detail"]
            .as_str()
            .expect("detail")
            .contains("invalid type"),
        "{}",
        bad[0]
    );
    // Traceability: sale line → prompt → attribution (answer, clerk, receipt) → scan.
    let attribution = of_kind(&records, "attribution")
        .into_iter()
        .find(|r| r["data"]["prompt"] == prompt.as_str())
        .expect("attribution");
    assert_eq!(attribution["data"]["answer"], "doctor");
    assert_eq!(attribution["data"]["receipt"], "R-1001");
    let scan_id = attribution["data"]["scan"].as_str().expect("scan id");
    assert!(records
        .iter()
        .any(|r| r["id"] == scan_id && r["kind"] == "scan"));
}

/// Waits for the one open prompt of till-1; its id.
async fn wait_prompt(gateway: &Gateway) -> String {
    let started = Instant::now();
    loop {
        if let Some((200, body)) = gateway.get("/api/v1/prompts?station=till-1").await {
            let prompts: Value = serde_json::from_str(&body).expect("json");
            if let Some(id) = prompts[0]["id"].as_str() {
                return id.to_owned();
            }
        }
        assert!(started.elapsed() < DEADLINE, "no prompt opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GB18030 bytes of a Chinese pharmacy receipt (as a register prints it) ending in a cut.
fn chinese_receipt(number: &str, sku: &str) -> Vec<u8> {
    let text = format!(
        "康宁大药房\n单号：{number}\n收银员：c-17\n{sku} 参松养心胶囊 0.4g*36粒  1  25.00\n合计：￥25.00\n"
    );
    // `ESC ~` is no ESC/POS command: skipped and counted.
    let mut bytes = b"\x1b@\x1ba\x01\x1b~".to_vec();
    bytes.extend_from_slice(&encoding_rs::GB18030.encode(&text).0);
    bytes.extend_from_slice(b"\x1bd\x03\x1dV\x00");
    bytes
}

/// The issue's story: a store points the gateway at a register's printer line and at its
/// broker, a targeted product is scanned, the POS answers the prompt over MQTT, the sale is
/// printed, and `posgw journal dump` shows the sale line linked to the attribution.
#[tokio::test]
async fn a_targeted_sale_answered_over_mqtt_is_linked_in_the_journal_dump() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let broker = crate::mosquitto::Mosquitto::start();
    let store = campaign_store("120s");
    let printer_link = store.path("printer");
    add_register(
        &store,
        "escpos-tap",
        &format!("passthrough = \"{}\"", printer_link.display()),
    );
    store.append_config(&format!("[mqtt]\nurl = \"{}\"\n", broker.url()));
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));

    // The POS software on the store's broker, listening for prompts.
    let mut options = MqttOptions::new("test-pos", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (pos, mut pos_events) = AsyncClient::new(options, 100);
    pos.subscribe("posgw/WZ-LC-001/till-1/prompt", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (prompts_tx, mut prompts_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match pos_events.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = prompts_tx.send(publish.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });

    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;
    let mut printer = tokio_serial::new(printer_link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the printer link");

    scanner.send(b"]E06901234567892\r").await;
    let prompt: Value = serde_json::from_slice(
        &tokio::time::timeout(DEADLINE, prompts_rx.recv())
            .await
            .expect("the prompt reaches the POS over MQTT")
            .expect("pos running"),
    )
    .expect("prompt JSON");
    let prompt_id = prompt["id"].as_str().expect("id").to_owned();
    assert_eq!(prompt["sku"], "6901234567892");
    pos.publish(
        "posgw/WZ-LC-001/till-1/answer",
        QoS::AtLeastOnce,
        false,
        serde_json::json!({"prompt": prompt_id, "option": "referral"}).to_string(),
    )
    .await
    .expect("answer");
    gateway.wait_records("attribution", 1).await;

    // The register prints the receipt; the printer gets it unchanged.
    let receipt = chinese_receipt("XS20261127-0042", "6901234567892");
    register.send(&receipt).await;
    let mut printed = vec![0u8; receipt.len()];
    tokio::time::timeout(DEADLINE, printer.read_exact(&mut printed))
        .await
        .expect("printed in time")
        .expect("read the printer link");
    assert_eq!(printed, receipt);
    gateway.wait_records("sale", 1).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let sale = &of_kind(&records, "sale")[0]["data"];
    assert_eq!(sale["receipt"], "XS20261127-0042");
    assert_eq!(sale["clerk"], "c-17");
    assert_eq!(sale["total"], 25.0);
    assert_eq!(sale["lines"][0]["sku"], "6901234567892");
    assert_eq!(sale["lines"][0]["prompt"], prompt_id.as_str(), "{sale}");
    assert!(sale["text"]
        .as_str()
        .expect("text")
        .contains("参松养心胶囊"));
    let attribution = &of_kind(&records, "attribution")[0]["data"];
    assert_eq!(attribution["prompt"], prompt_id.as_str());
    assert_eq!(attribution["channel"], "mqtt");
    assert_eq!(attribution["answer"], "referral");
    assert_eq!(attribution["answer_label"], "老客转介");
    let bad = of_kind(&records, "device")
        .into_iter()
        .find(|r| r["data"]["event"] == "bad_frame")
        .expect("the unknown command is recorded");
    assert_eq!(bad["data"]["device"], "register-1");
    assert!(
        bad["data"]["detail"]
            .as_str()
            .expect("detail")
            .contains("unknown ESC/POS command"),
        "{bad}"
    );
}

#[tokio::test]
async fn a_receipt_that_never_gets_its_cut_is_closed_after_the_silence_with_a_note() {
    let store = Store::new();
    store.write_config("");
    add_register(
        &store,
        "escpos-tap",
        &format!("passthrough = \"{}\"", store.path("printer").display()),
    );
    // This store's printer tap gives up on a receipt after 300 ms of silence.
    let built_in = include_str!("../../drivers/escpos-tap.toml");
    std::fs::create_dir_all(store.path("drivers.d")).expect("drivers.d");
    std::fs::write(
        store.path("drivers.d/escpos-tap.toml"),
        built_in.replace("receipt_timeout = \"60s\"", "receipt_timeout = \"300ms\""),
    )
    .expect("write profile");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;

    let receipt = chinese_receipt("XS-0001", "6901234567892");
    // Everything but the cut (`GS V 0`, the last three bytes).
    register.send(&receipt[..receipt.len() - 3]).await;
    gateway.wait_records("sale", 1).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let sale = &of_kind(&records, "sale")[0]["data"];
    assert_eq!(sale["receipt"], "XS-0001");
    let note = of_kind(&records, "device")
        .into_iter()
        .find(|r| r["data"]["event"] == "error")
        .expect("a note about the missing cut");
    assert!(
        note["data"]["detail"]
            .as_str()
            .expect("detail")
            .contains("without a paper cut"),
        "{note}"
    );
}
