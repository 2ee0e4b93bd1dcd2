//! Attribution prompts end to end: a targeted scan on a pty opens a prompt that arrives on the
//! SSE stream over real HTTP; answers by API, by answer card and by timeout each end in an
//! `attribution` record linked to its scan.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_serial::SerialPortBuilderExt;

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};

pub const CAMPAIGN: &str = r#"
[[campaign]]
id = "xinsong-2026q4"
skus = ["6901234567892", "690123456*"]
question = "推荐话术来源"
options = [ { key = "doctor", label = "医生推荐" },
            { key = "referral", label = "老客转介" },
            { key = "poster", label = "海报引导" } ]
timeout = "TIMEOUT"

[answer_codes]
"ATTR-DOCTOR" = "doctor"
"ATTR-POSTER" = "poster"
"#;

/// A store whose scanner is at till-1, with the campaign above (prompts time out after `timeout`).
pub fn campaign_store(timeout: &str) -> Store {
    let store = Store::new();
    store.write_config("");
    store.append_config(&CAMPAIGN.replace("TIMEOUT", timeout));
    store
}

/// A live SSE connection, read event by event.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    pub async fn open(gateway: &Gateway, station: &str) -> EventStream {
        let response = crate::harness::client()
            .get(format!("{}/api/v1/events?station={station}", gateway.api))
            .send()
            .await
            .expect("connect to the event stream");
        assert_eq!(response.status(), 200);
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event as (name, data), skipping pings.
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if name == "ping" || data.is_empty() {
                    continue;
                }
                return (
                    name,
                    serde_json::from_str(&data).expect("event data is JSON"),
                );
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("event in time")
                .expect("read event stream")
                .expect("event stream open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event called `name`, skipping others.
    pub async fn next_named(&mut self, name: &str) -> Value {
        loop {
            let (event, data) = self.next().await;
            if event == name {
                return data;
            }
        }
    }
}

pub async fn post(gateway: &Gateway, path: &str, body: &str) -> (u16, Value) {
    let response = crate::harness::client()
        .post(format!("{}{path}", gateway.api))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_targeted_scan_opens_a_prompt_on_the_event_stream_and_an_answer_is_recorded() {
    let store = campaign_store("120s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut events = EventStream::open(&gateway, "till-1").await;
    assert_eq!(events.next().await.0, "reset");

    // An untargeted product first: no prompt. Then the targeted one, twice (one customer).
    scanner.send(b"]E469012341\r").await;
    scanner.send(b"]E06901234567892\r]E06901234567892\r").await;
    let prompt = events.next_named("prompt").await;
    assert_eq!(prompt["campaign"], "xinsong-2026q4");
    assert_eq!(prompt["station"], "till-1");
    assert_eq!(prompt["sku"], "6901234567892");
    assert_eq!(prompt["question"], "推荐话术来源");
    assert_eq!(prompt["options"][0]["label"], "医生推荐");
    let id = prompt["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() <= 16 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );

    let (code, open) = {
        let (code, body) = gateway.get("/api/v1/prompts?station=till-1").await.unwrap();
        (code, serde_json::from_str::<Value>(&body).unwrap())
    };
    assert_eq!(code, 200);
    assert_eq!(
        open.as_array().unwrap().len(),
        1,
        "a rescan of the same SKU does not stack"
    );

    // Bad answers first: each refused with the contract's status, nothing recorded.
    assert_eq!(
        post(
            &gateway,
            &format!("/api/v1/prompts/{id}/answer"),
            r#"{"option":"tv-ad"}"#
        )
        .await
        .0,
        422
    );
    assert_eq!(
        post(
            &gateway,
            &format!("/api/v1/prompts/{id}/answer"),
            "{not json"
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(
            &gateway,
            &format!("/api/v1/prompts/{id}/skip"),
            r#"{"reason":"  "}"#
        )
        .await
        .0,
        422
    );
    assert_eq!(
        post(
            &gateway,
            "/api/v1/prompts/nosuchprompt/answer",
            r#"{"option":"doctor"}"#
        )
        .await
        .0,
        404
    );

    let (code, body) = post(
        &gateway,
        &format!("/api/v1/prompts/{id}/answer"),
        r#"{"option":"doctor","clerk":"c-17"}"#,
    )
    .await;
    assert_eq!((code, body["outcome"].as_str()), (200, Some("answered")));
    let resolved = events.next_named("resolved").await;
    assert_eq!(resolved["id"], id.as_str());
    assert_eq!(resolved["outcome"], "answered");
    assert_eq!(
        post(
            &gateway,
            &format!("/api/v1/prompts/{id}/answer"),
            r#"{"option":"poster"}"#
        )
        .await
        .0,
        409,
        "already resolved"
    );
    gateway.wait_records("attribution", 1).await;
    assert_eq!(
        gateway
            .metric("posgw_prompts_total{outcome=\"answered\"}")
            .await,
        1.0
    );
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let scans = of_kind(&records, "scan");
    assert_eq!(scans.len(), 3);
    assert_eq!(scans[0]["data"]["campaign"], Value::Null);
    assert_eq!(scans[1]["data"]["campaign"], "xinsong-2026q4");
    let attributions = of_kind(&records, "attribution");
    assert_eq!(attributions.len(), 1);
    let a = &attributions[0]["data"];
    assert_eq!(a["prompt"], id.as_str());
    assert_eq!(
        a["scan"], scans[1]["id"],
        "linked to the scan that opened it"
    );
    assert_eq!(a["outcome"], "answered");
    assert_eq!(a["answer"], "doctor");
    assert_eq!(a["answer_label"], "医生推荐");
    assert_eq!(a["channel"], "web");
    assert_eq!(a["clerk"], "c-17");
    assert_eq!(a["campaign"], "xinsong-2026q4");
    assert_eq!(a["station"], "till-1");
    assert_eq!(a["sku"], "6901234567892");
    assert_eq!(a["question"], "推荐话术来源");
    assert!(a["latency_ms"].as_u64().is_some());
    for field in ["opened_at", "resolved_at", "skip_reason", "receipt"] {
        assert!(a.get(field).is_some(), "{field} missing");
    }
}

#[tokio::test]
async fn an_answer_card_answers_the_oldest_prompt_and_never_reaches_the_pos() {
    let link = "pos-scanner";
    let store = Store::new();
    store.write_config(&format!("passthrough = \"{}\"", store.path(link).display()));
    store.append_config(&CAMPAIGN.replace("TIMEOUT", "120s"));
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut pos = tokio_serial::new(store.path(link).to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the POS side of the passthrough");
    let mut events = EventStream::open(&gateway, "till-1").await;

    scanner.send(b"]E06901234567892\r\n").await;
    let first = events.next_named("prompt").await;
    scanner.send(b"]E06901234567892\r\n").await; // same SKU: no second prompt
    scanner.send(b"]C0ATTR-DOCTOR\r\n").await;
    let resolved = events.next_named("resolved").await;
    assert_eq!(resolved["id"], first["id"]);
    assert_eq!(resolved["answer"], "doctor");
    // A card with no prompt open is ignored (logged), and still not passed through.
    scanner.send(b"]C0ATTR-POSTER\r\n]E469012341\r\n").await;
    gateway.wait_scans_durable(5).await;
    gateway.wait_records("attribution", 1).await;

    // The POS received the product scans byte for byte, and no answer card.
    let expected = b"]E06901234567892\r\n]E06901234567892\r\n]E469012341\r\n";
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(DEADLINE, pos.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "passthrough in time; got {:?}",
                    String::from_utf8_lossy(&received)
                )
            })
            .unwrap();
        received.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(expected)
    );
    let mut more = [0u8; 64];
    let extra = tokio::time::timeout(Duration::from_millis(200), pos.read(&mut more)).await;
    assert!(extra.is_err(), "nothing else reached the POS: {extra:?}");
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let cards: Vec<_> = of_kind(&records, "scan")
        .into_iter()
        .filter(|r| r["data"]["answer_code"] == true)
        .collect();
    assert_eq!(cards.len(), 2, "answer-card scans are recorded as such");
    let attributions = of_kind(&records, "attribution");
    assert_eq!(attributions.len(), 1);
    assert_eq!(attributions[0]["data"]["channel"], "card");
    assert_eq!(attributions[0]["data"]["answer"], "doctor");
}

#[tokio::test]
async fn an_unanswered_prompt_times_out_into_a_record() {
    let store = campaign_store("1s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut events = EventStream::open(&gateway, "till-1").await;
    let started = Instant::now();
    scanner.send(b"]E06901234567892\r").await;
    let prompt = events.next_named("prompt").await;
    let resolved = events.next_named("resolved").await;
    assert_eq!(resolved["id"], prompt["id"]);
    assert_eq!(resolved["outcome"], "timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    gateway.wait_records("attribution", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let a = &of_kind(&records, "attribution")[0]["data"];
    assert_eq!(a["outcome"], "timeout");
    assert_eq!(a["answer"], Value::Null);
    assert_eq!(a["channel"], Value::Null);
}

#[tokio::test]
async fn an_open_prompt_survives_a_restart_and_can_be_answered_after_it() {
    let store = campaign_store("300s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut events = EventStream::open(&gateway, "till-1").await;
    scanner.send(b"]E06901234567892\r").await;
    let prompt = events.next_named("prompt").await;
    drop(events);
    assert!(gateway.stop().await.success());

    let gateway = Gateway::start(&store).await;
    let (_, body) = gateway.get("/api/v1/prompts?station=till-1").await.unwrap();
    let open: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(open[0]["id"], prompt["id"], "{open}");
    assert_eq!(
        open[0]["expires_at"], prompt["expires_at"],
        "resumed with its own deadline"
    );
    let id = prompt["id"].as_str().unwrap();
    let (code, _) = post(
        &gateway,
        &format!("/api/v1/prompts/{id}/skip"),
        r#"{"reason":"顾客赶时间"}"#,
    )
    .await;
    assert_eq!(code, 200);
    gateway.wait_records("attribution", 1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let a = &of_kind(&records, "attribution")[0]["data"];
    assert_eq!(a["outcome"], "skipped");
    assert_eq!(a["skip_reason"], "顾客赶时间");
}

/// The open prompts of till-1, by SKU.
async fn open_skus(gateway: &Gateway) -> Vec<String> {
    let (_, body) = gateway
        .get("/api/v1/prompts?station=till-1")
        .await
        .expect("prompts");
    let prompts: Value = serde_json::from_str(&body).expect("json");
    prompts
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["sku"].as_str().expect("sku").to_owned())
        .collect()
}

#[tokio::test]
async fn sighup_puts_new_campaigns_in_force_and_a_broken_config_keeps_the_old_ones() {
    let store = campaign_store("120s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let original = std::fs::read_to_string(store.config_path()).expect("config");

    // A second campaign and a new answer card, while the gateway runs.
    store.append_config(
        "[[campaign]]\nid = \"vitamin-c\"\nskus = [\"693*\"]\nquestion = \"推荐话术来源\"\n\
         options = [ { key = \"doctor\", label = \"医生推荐\" } ]\n",
    );
    let config = std::fs::read_to_string(store.config_path())
        .expect("config")
        .replace(
            "\"ATTR-POSTER\" = \"poster\"",
            "\"ATTR-POSTER\" = \"poster\"\n\"ATTR-VITC\" = \"doctor\"",
        );
    std::fs::write(store.config_path(), &config).expect("write config");
    gateway.hangup();
    gateway.wait_log("reloaded: campaigns", 1).await;
    scanner.send(b"]E06931234567899\r").await;
    gateway
        .wait_for("the new campaign's prompt", |g| async move {
            open_skus(g).await == ["6931234567899"]
        })
        .await;
    // The new answer card answers it.
    scanner.send(b"ATTR-VITC\r").await;
    gateway
        .wait_for("the card answered", |g| async move {
            open_skus(g).await.is_empty()
        })
        .await;

    // A broken configuration is refused; the one in force stays (both campaigns, the card).
    std::fs::write(
        store.config_path(),
        format!("{config}\n[[campaign]]\nid = 7\n"),
    )
    .expect("write broken config");
    gateway.hangup();
    gateway.wait_log("reload refused", 1).await;
    assert_eq!(
        gateway.get("/healthz").await.map(|(code, _)| code),
        Some(200)
    );
    scanner.send(b"]E06931234567899\r").await;
    gateway
        .wait_for(
            "the prompt of the campaign still in force",
            |g| async move { open_skus(g).await == ["6931234567899"] },
        )
        .await;

    // Back to the original: the second campaign is gone, its open prompt can still be answered.
    std::fs::write(store.config_path(), original).expect("write config");
    gateway.hangup();
    gateway.wait_log("reloaded: campaigns", 2).await;
    scanner.send(b"]E06930000000011\r").await;
    scanner.send(b"]E06901234567892\r").await;
    gateway
        .wait_for("only the first campaign opens prompts", |g| async move {
            open_skus(g).await == ["6931234567899", "6901234567892"]
        })
        .await;
    gateway.wait_durable().await;
    assert!(gateway.stop().await.success());
}
