//! HTTP tests of the clerk page and prompt endpoints over a real loopback listener.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Local;
use serde_json::Value;

use crate::config::{CampaignSettings, PromptOption, SkuPattern};
use crate::metrics::Metrics;
use crate::prompts::{
    spawn, MemoryPromptJournal, OpenRequest, PromptView, PromptsConfig, PromptsHandle,
};
use crate::record::attribution::{Channel, Outcome};

struct Server {
    base: String,
    prompts: PromptsHandle,
    journal: MemoryPromptJournal,
    /// The consultation engine's journal and state folder.
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

async fn serve() -> Server {
    let config = PromptsConfig {
        campaigns: vec![CampaignSettings {
            id: "xinsong".into(),
            skus: vec![SkuPattern::Prefix("690".into())],
            question: "推荐话术来源".into(),
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
        }],
        answer_codes: BTreeMap::new(),
        skip_reasons: vec!["顾客赶时间".into(), "</script>".into()],
        ..PromptsConfig::default()
    };
    let journal = MemoryPromptJournal::new();
    let prompts = spawn(config, journal.clone(), Metrics::new())
        .await
        .expect("engine");
    let dir = tempfile::tempdir().expect("temporary folder");
    let consult = crate::consult::spawn(
        crate::consult::ConsultConfig {
            flows: crate::consult::Flows::new(vec![crate::consult::test_flow()]),
            customer_key: None,
        },
        crate::journal::open_for_test(dir.path(), Duration::ZERO).await,
        dir.path(),
    )
    .await
    .expect("consultation engine");
    let router = super::routes(
        prompts.clone(),
        consult,
        vec!["till-1".into(), "till 2".into()],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Server {
        base,
        prompts,
        journal,
        _dir: dir,
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn open(&self, station: &str, sku: &str) -> PromptView {
        self.prompts
            .open(OpenRequest {
                station: station.into(),
                campaign: "xinsong".into(),
                sku: sku.into(),
                scan_id: "scan-1".into(),
                opened_at: Local::now(),
            })
            .await
            .expect("open")
            .prompt
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, content_type, response.text().await.expect("body"))
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).expect("json body"))
    }
}

#[tokio::test]
async fn pages_and_assets() {
    let server = serve().await;
    let (status, content_type, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(body.contains("href=\"/station/till-1\""));
    assert!(body.contains("href=\"/station/till%202\""));

    let (status, _, body) = server.get("/station/till-1").await;
    assert_eq!(status, 200);
    assert!(body.contains("id=\"prompt-active\""));
    assert!(body.contains("\"station\":\"till-1\""));
    assert!(body.contains("顾客赶时间"));
    assert!(
        !body.contains("\"</script>\""),
        "config JSON must not close its script element"
    );
    assert!(body.contains("\\u003c/script>"));
    assert_eq!(server.get("/station/till%202").await.0, 200);
    assert_eq!(server.get("/station/nope").await.0, 404);

    let (status, content_type, body) = server.get("/assets/app.js").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(body.contains("EventSource"));
    let (status, content_type, _) = server.get("/assets/style.css").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/css; charset=utf-8")
    );
    assert_eq!(server.get("/assets/nope.js").await.0, 404);
}

/// 新问诊 offers the configured flows: the station page carries them in its config JSON.
#[tokio::test]
async fn the_station_page_lists_the_flows_for_a_new_consultation() {
    let server = serve().await;
    let (status, _, body) = server.get("/station/till-1").await;
    assert_eq!(status, 200);
    let marker = "<script id=\"config\" type=\"application/json\">";
    let start = body.find(marker).expect("config") + marker.len();
    let end = start + body[start..].find("</script>").expect("end of config");
    let config: Value = serde_json::from_str(&body[start..end]).expect("config is JSON");
    assert_eq!(
        config["flows"],
        serde_json::json!([{"id": "rx-5step", "name": "处方推荐五步法"}])
    );
    assert!(body.contains("id=\"consult-new\""));
}

#[tokio::test]
async fn list_answer_and_errors() {
    let server = serve().await;
    let prompt = server.open("till-1", "6901234567892").await;
    server.open("till 2", "6901234567892").await;

    let (status, content_type, body) = server.get("/api/v1/prompts?station=till-1").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/json"));
    let list: Value = serde_json::from_str(&body).expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1);
    let mut keys: Vec<&str> = list[0]
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "campaign",
            "expires_at",
            "id",
            "opened_at",
            "options",
            "question",
            "sku",
            "station"
        ]
    );
    assert_eq!(
        list[0]["options"][0],
        serde_json::json!({"key": "doctor", "label": "医生推荐"})
    );
    let (_, _, all) = server.get("/api/v1/prompts").await;
    assert_eq!(
        serde_json::from_str::<Value>(&all)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let answer = format!("/api/v1/prompts/{}/answer", prompt.id);
    assert_eq!(server.post(&answer, "{\"option\":").await.0, 400);
    let (status, body) = server.post(&answer, "{\"opt\":\"doctor\"}").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("message").contains("option"));
    assert_eq!(server.post(&answer, "").await.0, 400);
    assert_eq!(server.post(&answer, "[1]").await.0, 400);
    let (status, body) = server.post(&answer, "{\"option\":\"referral\"}").await;
    assert_eq!(status, 422);
    assert!(body["error"]
        .as_str()
        .expect("message")
        .contains("referral"));
    assert_eq!(
        server
            .post("/api/v1/prompts/nope/answer", "{\"option\":\"doctor\"}")
            .await
            .0,
        404
    );

    let (status, body) = server
        .post(&answer, "{\"option\":\"doctor\",\"clerk\":\" c-17 \"}")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["outcome"], "answered");
    let records = server.journal.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].clerk.as_deref(), Some("c-17"));
    assert_eq!(records[0].channel, Some(Channel::Web));

    let (status, body) = server.post(&answer, "{\"option\":\"doctor\"}").await;
    assert_eq!(status, 409);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn skip_needs_a_reason() {
    let server = serve().await;
    let prompt = server.open("till-1", "6901234567892").await;
    let skip = format!("/api/v1/prompts/{}/skip", prompt.id);
    assert_eq!(server.post(&skip, "{\"reason\":\"  \"}").await.0, 422);
    assert_eq!(server.post(&skip, "{}").await.0, 400);
    let long = format!("{{\"reason\":\"{}\"}}", "x".repeat(201));
    assert_eq!(server.post(&skip, &long).await.0, 422);
    let (status, body) = server
        .post(&skip, "{\"reason\":\"顾客赶时间\",\"clerk\":\"\"}")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["outcome"], "skipped");
    let records = server.journal.records();
    assert_eq!(records[0].outcome, Outcome::Skipped);
    assert_eq!(records[0].clerk, None);
    assert_eq!(server.post(&skip, "{\"reason\":\"x\"}").await.0, 409);
}

#[tokio::test]
async fn today_lists_configured_stations() {
    let server = serve().await;
    let prompt = server.open("till-1", "6901234567892").await;
    server
        .prompts
        .open(OpenRequest {
            station: "till-9".into(),
            campaign: "xinsong".into(),
            sku: "6901".into(),
            scan_id: "s".into(),
            opened_at: Local::now(),
        })
        .await
        .expect("open");
    server
        .post(
            &format!("/api/v1/prompts/{}/answer", prompt.id),
            "{\"option\":\"poster\"}",
        )
        .await;
    let (status, _, body) = server.get("/api/v1/prompts/today").await;
    assert_eq!(status, 200);
    let today: Value = serde_json::from_str(&body).expect("json");
    let stations: Vec<&str> = today
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["station"].as_str().expect("station"))
        .collect();
    assert_eq!(stations, ["till 2", "till-1", "till-9"]);
    assert_eq!(today[1]["completeness"], 1.0);
    assert_eq!(today[0]["completeness"], Value::Null);
    assert_eq!(today[2]["open"], 1);
}

/// Reads SSE events from a streaming response until `count` named events have arrived.
async fn read_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    count: usize,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    while events.len() < count {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            if name != "ping" && !data.is_empty() {
                events.push((
                    name,
                    serde_json::from_str(&data).expect("event data is json"),
                ));
            }
        }
        if events.len() >= count {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("an event within 5 s")
            .expect("stream")
            .expect("stream still open");
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    events
}

#[tokio::test]
async fn event_stream_sends_snapshot_then_live_events() {
    let server = serve().await;
    let first = server.open("till-1", "6901234567892").await;
    let mut response = server
        .http
        .get(format!("{}/api/v1/events?station=till-1", server.base))
        .send()
        .await
        .expect("events");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut buffer = String::new();
    let snapshot = read_events(&mut response, &mut buffer, 3).await;
    assert_eq!(snapshot[0].0, "reset");
    assert_eq!(snapshot[0].1["station"], "till-1");
    assert_eq!(snapshot[1].0, "prompt");
    assert_eq!(snapshot[1].1["id"], first.id.as_str());
    assert_eq!(snapshot[2].0, "stats");
    assert_eq!(
        (
            snapshot[2].1["opened"].clone(),
            snapshot[2].1["open"].clone()
        ),
        (1.into(), 1.into())
    );

    // Another station's prompt is not sent; this station's are.
    server.open("till 2", "6901234567892").await;
    let second = server.open("till-1", "6905555555555").await;
    server
        .post(
            &format!("/api/v1/prompts/{}/answer", first.id),
            "{\"option\":\"doctor\"}",
        )
        .await;
    let live = read_events(&mut response, &mut buffer, 4).await;
    let names: Vec<&str> = live.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["prompt", "stats", "resolved", "stats"]);
    assert_eq!(live[0].1["id"], second.id.as_str());
    assert_eq!(
        live[2].1,
        serde_json::json!({"id": first.id, "outcome": "answered", "answer": "doctor", "station": "till-1"})
    );
    assert_eq!(live[3].1["completeness"], 0.5);

    // Closing the engine ends the stream, so HTTP shutdown is not held up.
    server.prompts.close().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "stream ends when the engine stops");
}
