//! The fleet end to end: a real `posgw hq` (child process, loopback HTTP) holding the chain's
//! campaigns, and real gateways (`posgw run` with a pty scanner) fetching what targets their
//! store every poll (`"1s"` here), applying it without a restart, keeping a last good copy for
//! when HQ is away, refusing what does not validate with their own configuration, and sending
//! heartbeats HQ shows in `GET /v1/fleet`.
//!
//! HQ knows stores S-A (region east) and S-B (region west); its hq.toml targets campaign
//! `hq-xinsong` (product 6901234567892) at S-A only.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{client, free_port, Gateway, PtyScanner, Store, DEADLINE};

const ADMIN: &str = "fleet-admin-token";
const TARGETED: &[u8] = b"6901234567892\r";

/// An HQ folder: tokens, hq.toml, data/.
struct Hq {
    dir: tempfile::TempDir,
    port: u16,
}

impl Hq {
    fn new() -> Hq {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        for (name, token) in [
            ("admin.token", ADMIN),
            ("a.token", "tok-a"),
            ("b.token", "tok-b"),
            ("west.token", "tok-west"),
            ("storeuser.token", "tok-storeuser"),
        ] {
            std::fs::write(dir.path().join(name), token).expect("write token");
        }
        let config = format!(
            r#"[hq]
listen = "127.0.0.1:{port}"
data_dir = "data"
admin_token_file = "admin.token"

[[store]]
code = "S-A"
token_file = "a.token"
[[store]]
code = "S-B"
token_file = "b.token"

[[region]]
id = "east"
stores = ["S-A"]
[[region]]
id = "west"
stores = ["S-B"]

[[user]]
name = "west-lead"
role = "region"
region = "west"
token_file = "west.token"
[[user]]
name = "a-clerk"
role = "store"
store = "S-A"
token_file = "storeuser.token"

[[campaign]]
id = "hq-xinsong"
stores = ["S-A"]
skus = ["6901234567892"]
question = "推荐话术来源"
options = [ {{ key = "doctor", label = "医生推荐" }}, {{ key = "poster", label = "海报引导" }} ]

[answer_codes]
"ATTR-DOCTOR" = "doctor"
"#
        );
        std::fs::write(dir.path().join("hq.toml"), config).expect("write hq.toml");
        Hq { dir, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&self) -> Gateway {
        let config = self.dir.path().join("hq.toml");
        Gateway::spawn(&["hq", "-c", config.to_str().unwrap()], "hq listening on ").await
    }

    /// A request to HQ with `token` (if any): status and JSON body (or the text as a string).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = client().request(method, format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HQ answers");
        let code = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /v1/fleet` with the admin token.
    async fn fleet(&self) -> Value {
        let (code, body) = self
            .call(reqwest::Method::GET, "/v1/fleet", Some(ADMIN), None)
            .await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// One store's entry of `GET /v1/fleet`.
    async fn store(&self, code: &str) -> Value {
        self.fleet().await["stores"]
            .as_array()
            .expect("stores")
            .iter()
            .find(|store| store["store"] == code)
            .cloned()
            .unwrap_or_else(|| panic!("no {code} in the fleet view"))
    }

    /// Polls `check` over `GET /v1/fleet`'s entry of `code` until it holds.
    async fn wait_store(&self, code: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let store = self.store(code).await;
            if check(&store) {
                return store;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {store}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every `gateway` record of `store` HQ holds.
    async fn gateway_records(&self, store: &str) -> Vec<Value> {
        let response = client()
            .get(format!(
                "{}/v1/records?kind=gateway&store={store}&limit=10000",
                self.url()
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("records");
        assert_eq!(response.status(), 200);
        response
            .text()
            .await
            .expect("body")
            .lines()
            .map(|line| serde_json::from_str(line).expect("record"))
            .collect()
    }

    /// Waits until HQ holds a `gateway` record of `store` with event `event` matching `check`.
    async fn wait_record(&self, store: &str, event: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let found = self
                .gateway_records(store)
                .await
                .into_iter()
                .find(|record| record["data"]["event"] == event && check(record));
            if let Some(record) = found {
                return record;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for a {event} record of {store}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A store folder for `code` with one pty scanner, forwarding to `hq` with `token` and fetching
/// from it every second; `extra` is appended (local campaigns, answer codes).
fn fleet_store(hq: &Hq, code: &str, token: &str, extra: &str) -> Store {
    let store = Store::new();
    std::fs::write(store.path("hq.token"), token).expect("write token");
    let config = format!(
        r#"[gateway]
store = "{code}"
id = "gw-{code}"
data_dir = "{data}"
flush = "20ms"

[api]
listen = "127.0.0.1:0"

[[device]]
id = "scanner-1"
role = "scanner"
transport = "serial"
station = "till-1"
profile = "generic-scanner"
path = "{scanner}"

[uplink]
endpoint = "{hq}/v1/batches"
token_file = "{token_file}"
batch_max_age = "50ms"

[fleet]
poll = "1s"
{extra}"#,
        data = store.data_dir().display(),
        scanner = store.path("scanner").display(),
        hq = hq.url(),
        token_file = store.path("hq.token").display(),
    );
    std::fs::write(store.config_path(), config).expect("write config");
    store
}

/// Polls the gateway's status until `check` holds; returns it.
async fn wait_status(gateway: &Gateway, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = gateway.status().await;
        if check(&status) {
            return status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {}",
            status["fleet"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gateway has HQ's configuration `version` in force.
async fn wait_version(gateway: &Gateway, version: u64) -> Value {
    wait_status(gateway, &format!("HQ configuration v{version}"), |status| {
        status["fleet"]["version"] == version
    })
    .await
}

/// The campaigns of the open prompts.
fn open_campaigns(status: &Value) -> Vec<String> {
    status["prompts"]["open"]
        .as_array()
        .expect("open prompts")
        .iter()
        .map(|prompt| prompt["campaign"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits for an open prompt of `campaign`.
async fn wait_prompt(gateway: &Gateway, campaign: &str) {
    wait_status(gateway, &format!("a prompt of {campaign}"), |status| {
        open_campaigns(status).iter().any(|open| open == campaign)
    })
    .await;
}

/// `{"id","source"}` pairs of the status's `key` list.
fn sources(status: &Value, key: &str) -> Vec<(String, String)> {
    status[key]
        .as_array()
        .expect("list")
        .iter()
        .map(|entry| {
            (
                entry["id"].as_str().unwrap_or_default().to_string(),
                entry["source"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_campaign_targeted_at_one_store_prompts_there_and_not_at_the_other() {
    let hq = Hq::new();
    let hq_process = hq.start().await;
    let store_a = fleet_store(&hq, "S-A", "tok-a", "");
    let store_b = fleet_store(&hq, "S-B", "tok-b", "");
    let mut scanner_a = PtyScanner::plug(&store_a.path("scanner"));
    let mut scanner_b = PtyScanner::plug(&store_b.path("scanner"));
    let gateway_a = Gateway::start(&store_a).await;
    let gateway_b = Gateway::start(&store_b).await;
    let status_a = wait_version(&gateway_a, 1).await;
    let status_b = wait_version(&gateway_b, 1).await;
    assert_eq!(
        sources(&status_a, "campaigns"),
        [("hq-xinsong".to_string(), "hq".to_string())]
    );
    assert_eq!(sources(&status_b, "campaigns"), []);
    assert_eq!(status_a["fleet"]["source"], "hq");
    gateway_a.wait_device("scanner-1", "connected").await;
    gateway_b.wait_device("scanner-1", "connected").await;

    scanner_a.send(TARGETED).await;
    scanner_b.send(TARGETED).await;
    wait_prompt(&gateway_a, "hq-xinsong").await;
    gateway_b.wait_scans_durable(1).await;
    assert_eq!(
        open_campaigns(&gateway_b.status().await),
        Vec::<String>::new(),
        "B is not targeted"
    );

    // The application is in A's journal, and so at HQ.
    let applied = hq.wait_record("S-A", "config_applied", |_| true).await;
    assert_eq!(applied["data"]["config_version"], 1);
    assert_eq!(applied["data"]["source"], "hq");
    assert!(
        applied["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("campaigns from HQ: hq-xinsong"),
        "{applied}"
    );
    // Both stores are seen, online and current.
    for (code, gateway) in [("S-A", "gw-S-A"), ("S-B", "gw-S-B")] {
        let seen = hq
            .wait_store(code, "a heartbeat with the version", |store| {
                store["config_version"] == 1
            })
            .await;
        assert_eq!(seen["online"], true, "{seen}");
        assert_eq!(seen["stale"], false, "{seen}");
        assert_eq!(seen["gateway"], gateway);
        assert_eq!(seen["poll_s"], 1.0);
        assert_eq!(seen["devices"][0]["id"], "scanner-1");
        assert!(seen["refused"].is_null(), "{seen}");
    }
    assert_eq!(hq.store("S-A").await["region"], "east");

    // hq.toml changed and reloaded (SIGHUP): the west region's stores get the new campaign.
    let before = hq.store("S-A").await["last_heartbeat_at"].clone();
    let config = hq.dir.path().join("hq.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[campaign]]\nid = \"west-poster\"\nregions = [\"west\"]\nskus = [\"6970000000002\"]\n\
         question = \"来源\"\noptions = [ { key = \"poster\", label = \"海报引导\" } ]\n",
    );
    std::fs::write(&config, text).unwrap();
    hq_process.hangup();
    let status_b = wait_version(&gateway_b, 2).await;
    assert_eq!(
        sources(&status_b, "campaigns"),
        [("west-poster".to_string(), "hq".to_string())]
    );
    let (_, editor) = hq
        .call(reqwest::Method::GET, "/v1/fleet/editor", Some(ADMIN), None)
        .await;
    assert_eq!(editor["history"][0]["who"], "hq.toml");
    assert_eq!(
        editor["history"][0]["what"],
        json!(["campaign 'west-poster' added (hq.toml)"])
    );
    // A's part did not change: no new document there (still v1, not stale).
    let seen = hq
        .wait_store("S-A", "a heartbeat after the reload", |store| {
            store["last_heartbeat_at"] != before
        })
        .await;
    assert_eq!(
        (
            seen["expected_version"].as_u64(),
            seen["config_version"].as_u64(),
            seen["stale"].as_bool()
        ),
        (Some(1), Some(1), Some(false))
    );
    assert!(gateway_a.stop().await.success());
    assert!(gateway_b.stop().await.success());
}

#[tokio::test]
async fn a_change_in_the_editor_reaches_the_store_within_one_poll_without_a_restart() {
    let hq = Hq::new();
    let _hq = hq.start().await;
    let store = fleet_store(&hq, "S-A", "tok-a", "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    let epoch = wait_version(&gateway, 1).await["journal"]["epoch"].clone();
    gateway.wait_device("scanner-1", "connected").await;

    let campaign = json!({
        "skus": ["6970000000001"],
        "question": "怎么知道这款的？",
        "options": [{"key": "doctor", "label": "医生推荐"}],
        "timeout": "5m",
        "stores": ["S-A"],
    });
    let put_at = Instant::now();
    let (code, answer) = hq
        .call(
            reqwest::Method::PUT,
            "/v1/fleet/campaigns/spring-tonic",
            Some(ADMIN),
            Some(campaign),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["version"], 2);
    assert_eq!(answer["campaign"]["timeout"], "5m");
    let status = wait_version(&gateway, 2).await;
    let took = put_at.elapsed();
    // One poll (1 s, +10 % jitter), plus the debug build's time to fetch and validate.
    assert!(took < Duration::from_millis(3100), "took {took:?}");
    assert_eq!(status["journal"]["epoch"], epoch, "no restart");
    assert_eq!(
        sources(&status, "campaigns"),
        [
            ("hq-xinsong".to_string(), "hq".to_string()),
            ("spring-tonic".to_string(), "hq".to_string())
        ]
    );
    scanner.send(b"6970000000001\r").await;
    wait_prompt(&gateway, "spring-tonic").await;

    // A SIGHUP reloads the local file joined with HQ's document in force: nothing is lost.
    let reloads = gateway.log_count("reloaded: campaigns");
    gateway.hangup();
    gateway.wait_log("reloaded: campaigns", reloads + 1).await;
    let status = gateway.status().await;
    assert_eq!(status["fleet"]["version"], 2);
    assert_eq!(
        sources(&status, "campaigns").len(),
        2,
        "{}",
        status["campaigns"]
    );

    // The history says who changed what.
    let (_, editor) = hq
        .call(reqwest::Method::GET, "/v1/fleet/editor", Some(ADMIN), None)
        .await;
    assert_eq!(editor["version"], 2);
    assert_eq!(editor["history"][0]["who"], "admin");
    assert_eq!(
        editor["history"][0]["what"],
        json!(["campaign 'spring-tonic' added (editor, admin)"])
    );
    let sources_at_hq: Vec<(&str, &str)> = editor["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        sources_at_hq,
        [("hq-xinsong", "hq.toml"), ("spring-tonic", "editor")]
    );

    // Ending it: the open prompt stays answerable, new scans open none.
    let (code, answer) = hq
        .call(
            reqwest::Method::DELETE,
            "/v1/fleet/campaigns/spring-tonic",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    wait_version(&gateway, 3).await;
    let open = gateway.status().await["prompts"]["open"].clone();
    let prompt = open
        .as_array()
        .unwrap()
        .iter()
        .find(|prompt| prompt["campaign"] == "spring-tonic")
        .expect("still open")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = crate::prompts::post(
        &gateway,
        &format!("/api/v1/prompts/{prompt}/answer"),
        r#"{"option":"doctor"}"#,
    )
    .await;
    assert_eq!(code, 200);
    scanner.send(b"6970000000001\r").await;
    gateway.wait_scans_durable(2).await;
    assert_eq!(
        open_campaigns(&gateway.status().await),
        Vec::<String>::new()
    );
    assert!(gateway.stop().await.success());
}

#[tokio::test]
async fn without_hq_a_restarted_gateway_prompts_from_its_last_good_copy() {
    let hq = Hq::new();
    let hq_process = hq.start().await;
    let store = fleet_store(&hq, "S-A", "tok-a", "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    wait_version(&gateway, 1).await;
    assert!(hq_process.stop().await.success());
    assert!(gateway.stop().await.success());
    assert!(store.data_dir().join("fleet-config.json").exists());

    let gateway = Gateway::start(&store).await;
    let status = gateway.status().await;
    assert_eq!(status["fleet"]["version"], 1, "{}", status["fleet"]);
    assert_eq!(status["fleet"]["source"], "copy");
    assert_eq!(
        sources(&status, "campaigns"),
        [("hq-xinsong".to_string(), "hq".to_string())]
    );
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(TARGETED).await;
    wait_prompt(&gateway, "hq-xinsong").await;
    let status = wait_status(&gateway, "a failed fetch", |status| {
        status["fleet"]["failures"].as_u64() > Some(0)
    })
    .await;
    assert!(
        status["fleet"]["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot reach HQ"),
        "{}",
        status["fleet"]
    );
    assert!(gateway.stop().await.success());
    // The start from the copy was recorded (HQ gets the record once it is back).
    let records = store.dump();
    let from_copy = records
        .iter()
        .filter(|record| {
            record["data"]["event"] == "config_applied" && record["data"]["source"] == "copy"
        })
        .count();
    assert_eq!(from_copy, 1);
}

#[tokio::test]
async fn a_document_that_does_not_validate_is_refused_the_old_one_stays_and_hq_sees_why() {
    let hq = Hq::new();
    let _hq = hq.start().await;
    // A local answer card, which an HQ campaign is about to claim as a product.
    let local = r#"
[[campaign]]
id = "local-vitamins"
skus = ["6900000000001"]
question = "来源"
options = [ { key = "doctor", label = "医生推荐" } ]

[answer_codes]
"6970000000009" = "doctor"
"#;
    let store = fleet_store(&hq, "S-A", "tok-a", local);
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    let status = wait_version(&gateway, 1).await;
    assert_eq!(
        sources(&status, "campaigns"),
        [
            ("local-vitamins".to_string(), "local".to_string()),
            ("hq-xinsong".to_string(), "hq".to_string())
        ]
    );

    let (code, answer) = hq
        .call(
            reqwest::Method::PUT,
            "/v1/fleet/campaigns/hq-claims-the-card",
            Some(ADMIN),
            Some(json!({
                "skus": ["6970000000009"], "question": "q",
                "options": [{"key": "doctor", "label": "医生推荐"}], "stores": ["S-A"],
            })),
        )
        .await;
    assert_eq!(code, 200, "valid at HQ: {answer}");
    let status = wait_status(&gateway, "the refusal", |status| {
        status["fleet"]["refused"]["version"] == 2
    })
    .await;
    assert_eq!(status["fleet"]["version"], 1, "the old one stays");
    let errors = status["fleet"]["refused"]["errors"].to_string();
    assert!(
        errors.contains(
            "answer code '6970000000009' is also a product of campaign 'hq-claims-the-card'"
        ),
        "{errors}"
    );
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(TARGETED).await;
    wait_prompt(&gateway, "hq-xinsong").await;

    // HQ sees the refusal in the fleet view and in the journal's record.
    let seen = hq
        .wait_store("S-A", "the refusal", |store| {
            store["refused"]["version"] == 2
        })
        .await;
    assert_eq!(seen["config_version"], 1);
    assert_eq!(seen["expected_version"], 2);
    assert_eq!(seen["stale"], true);
    assert!(seen["refused"]["errors"]
        .to_string()
        .contains("is also a product"));
    let record = hq.wait_record("S-A", "config_refused", |_| true).await;
    assert_eq!(record["data"]["config_version"], 2);
    assert!(record["data"]["errors"]
        .to_string()
        .contains("is also a product"));

    // Taken back at HQ: the next document applies and the refusal is gone.
    let (code, _) = hq
        .call(
            reqwest::Method::DELETE,
            "/v1/fleet/campaigns/hq-claims-the-card",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let status = wait_version(&gateway, 3).await;
    assert!(status["fleet"]["refused"].is_null(), "{}", status["fleet"]);
    hq.wait_store("S-A", "no refusal", |store| {
        store["refused"].is_null() && store["stale"] == false
    })
    .await;
    // One refusal record, however many polls saw the document.
    let refusals = hq
        .gateway_records("S-A")
        .await
        .into_iter()
        .filter(|record| record["data"]["event"] == "config_refused")
        .count();
    assert_eq!(refusals, 1);
    assert!(gateway.stop().await.success());
}

#[tokio::test]
async fn config_answers_304_unchanged_403_to_another_store_and_401_without_a_token() {
    let hq = Hq::new();
    let _hq = hq.start().await;
    let get = |path: &'static str, token: Option<&'static str>, etag: Option<String>| {
        let url = format!("{}{path}", hq.url());
        async move {
            let mut request = client().get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(etag) = etag {
                request = request.header("if-none-match", etag);
            }
            request.send().await.expect("answer")
        }
    };
    let first = get("/v1/fleet/S-A/config", Some("tok-a"), None).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["version"], 1);
    assert_eq!(body["campaigns"][0]["id"], "hq-xinsong");
    assert!(
        body["campaigns"][0].get("stores").is_none(),
        "gateway keys only"
    );
    assert_eq!(body["answer_codes"], json!({"ATTR-DOCTOR": "doctor"}));
    let again = get("/v1/fleet/S-A/config", Some("tok-a"), Some(etag.clone())).await;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    // B gets no campaign, so no answer card for it either.
    let b: Value = get("/v1/fleet/S-B/config", Some("tok-b"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["campaigns"], json!([]));
    assert_eq!(b["answer_codes"], json!({}));
    assert_eq!(
        get("/v1/fleet/S-A/config", Some("tok-b"), None)
            .await
            .status(),
        403
    );
    assert_eq!(get("/v1/fleet/S-A/config", None, None).await.status(), 401);
    assert_eq!(
        get("/v1/fleet/S-A/config", Some("nope"), None)
            .await
            .status(),
        401
    );
    assert_eq!(
        get("/v1/fleet/S-A/config", Some("tok-west"), None)
            .await
            .status(),
        403
    );
    assert_eq!(
        get("/v1/fleet/S-A/config", Some(ADMIN), None)
            .await
            .status(),
        200
    );

    // A change for S-B only is a new document for S-B, not for S-A.
    let (code, answer) = hq
        .call(
            reqwest::Method::PUT,
            "/v1/fleet/flows/west-consult",
            Some(ADMIN),
            Some(
                json!({"skus": ["111"], "steps": [{"key": "consult", "label": "客户问诊"}],
                        "regions": ["west"]}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let again = get("/v1/fleet/S-A/config", Some("tok-a"), Some(etag)).await;
    assert_eq!(again.status(), 304);
    let b: Value = get("/v1/fleet/S-B/config", Some("tok-b"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (b["version"].as_u64(), b["flows"][0]["id"].as_str()),
        (Some(2), Some("west-consult"))
    );

    // Heartbeats: only the store's own token; bounded.
    let heartbeat = json!({"gateway": "gw", "version": "0", "config_version": 1, "poll_ms": 1000,
        "devices": [], "journal": {"backlog_records": 0, "oldest_backlog_ts": null},
        "uplink": {"state": "idle"}, "clock": {"synced": true}});
    for (token, expected) in [("tok-b", 403), ("tok-a", 204), (ADMIN, 403)] {
        let (code, body) = hq
            .call(
                reqwest::Method::POST,
                "/v1/fleet/S-A/heartbeat",
                Some(token),
                Some(heartbeat.clone()),
            )
            .await;
        assert_eq!(code, expected, "{token}: {body}");
    }
    let huge = json!({"gateway": "x".repeat(70_000)});
    let (code, _) = hq
        .call(
            reqwest::Method::POST,
            "/v1/fleet/S-A/heartbeat",
            Some("tok-a"),
            Some(huge),
        )
        .await;
    assert_eq!(code, 413);

    // The fleet view: admins all, region users their region, store users and tokens 403.
    let view = hq.fleet().await;
    let codes: Vec<&str> = view["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["S-A", "S-B"]);
    let (code, west) = hq
        .call(reqwest::Method::GET, "/v1/fleet", Some("tok-west"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(west["stores"].as_array().unwrap().len(), 1);
    assert_eq!(west["stores"][0]["store"], "S-B");
    for token in ["tok-storeuser", "tok-a"] {
        let (code, _) = hq
            .call(reqwest::Method::GET, "/v1/fleet", Some(token), None)
            .await;
        assert_eq!(code, 403, "{token}");
    }
    let (code, _) = hq.call(reqwest::Method::GET, "/v1/fleet", None, None).await;
    assert_eq!(code, 401);

    // The editor: admins only; hq.toml's entries are read-only; the validators' errors.
    let (code, _) = hq
        .call(
            reqwest::Method::GET,
            "/v1/fleet/editor",
            Some("tok-west"),
            None,
        )
        .await;
    assert_eq!(code, 403);
    let (code, body) = hq
        .call(
            reqwest::Method::DELETE,
            "/v1/fleet/campaigns/hq-xinsong",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 409);
    assert!(
        body["error"].as_str().unwrap().contains("hq.toml"),
        "{body}"
    );
    let (code, body) = hq
        .call(
            reqwest::Method::PUT,
            "/v1/fleet/campaigns/typo",
            Some(ADMIN),
            Some(
                json!({"skus": [], "question": "q", "options": [{"key": "doctor", "label": "d"}],
                        "timout": "5m", "stores": ["S-Z"]}),
            ),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["errors"],
        json!(["unknown key 'timout' in [[campaign]], did you mean 'timeout'?"])
    );
    let (code, body) = hq
        .call(
            reqwest::Method::PUT,
            "/v1/fleet/campaigns/typo",
            Some(ADMIN),
            Some(
                json!({"skus": [], "question": "q", "options": [{"key": "doctor", "label": "d"}],
                        "stores": ["S-Z"]}),
            ),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["errors"],
        json!([
            "'skus' in [[campaign]] must list at least one code",
            "'S-Z' in 'stores' of [[campaign]] is not a [[store]] of hq.toml"
        ])
    );
}

#[tokio::test]
async fn a_stopped_gateway_shows_offline_after_three_polls_and_hq_remembers_it_across_a_restart() {
    let hq = Hq::new();
    let hq_process = hq.start().await;
    let store = fleet_store(&hq, "S-A", "tok-a", "");
    let gateway = Gateway::start(&store).await;
    hq.wait_store("S-A", "online", |store| store["online"] == true)
        .await;
    assert!(gateway.stop().await.success());
    let stopped = Instant::now();
    let last = hq.store("S-A").await;
    assert_eq!(last["online"], true, "not offline at once: {last}");
    let offline = hq
        .wait_store("S-A", "offline", |store| store["online"] == false)
        .await;
    let after = stopped.elapsed();
    // Three polls after the last heartbeat, which came at most a poll (+10 %) before the stop.
    assert!(
        after >= Duration::from_millis(1800),
        "offline after {after:?}"
    );
    assert_eq!(offline["last_heartbeat_at"], last["last_heartbeat_at"]);

    assert!(hq_process.stop().await.success());
    let _hq = hq.start().await;
    let remembered = hq.store("S-A").await;
    assert_eq!(remembered["last_heartbeat_at"], last["last_heartbeat_at"]);
    assert_eq!(remembered["config_version"], 1);
    assert_eq!(remembered["online"], false);
}
