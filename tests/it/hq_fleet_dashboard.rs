//! The HQ dashboard's fleet view and campaign editor in headless Chromium, against a real
//! `posgw hq` (child process): regions `east-wz` (WZ-LC-001, WZ-LC-002) and `east-hz`
//! (HZ-XH-001), hq.toml's campaign `hq-xinsong` for every store, an admin and a region user of
//! `east-wz` signing in on `/login`. WZ-LC-001 and HZ-XH-001 post heartbeats over HTTP with
//! their own tokens (the version of their document applied); WZ-LC-002 never does.
//!
//! - the admin sees every store, the silent one first and marked offline; creates a campaign
//!   for WZ-LC-001 through the editor's form (a timeout of "forever" first: the server's 422
//!   errors are shown as it wrote them; hq.toml's id: its 409), which WZ-LC-001's document then
//!   holds and HZ-XH-001's does not, WZ-LC-001 turning stale in the fleet view; ends it; the
//!   history lists each version; a flow for region east-hz through the flow form reaches
//!   HZ-XH-001 only;
//! - the region user sees only their region's stores, has no editor tab, and `#editor` says
//!   it is not allowed (the server answers 403 too).
//!
//! Screenshots land in `target/screenshots/hq-fleet-*.png`.

use std::path::PathBuf;

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::browser::{attr, screenshot, wait_attr, Driver};
use crate::harness::Gateway;
use crate::hq_dashboard::{click, count, eventually, text_of};
use crate::hq_management_dashboard::{js, password_hash, signed_in, view};

const ADMIN_TOKEN: &str = "fleet-dash-admin-token";
const ADMIN: &str = "boss";
const REGION_USER: &str = "li.min";
const REGION_TOKEN: &str = "tok-user-li.min";
const WZ1: &str = "WZ-LC-001";
const WZ2: &str = "WZ-LC-002";
const HZ: &str = "HZ-XH-001";
const CAMPAIGN: &str = "spring-tonic";
const FLOW: &str = "tonic-consult";

fn token(store: &str) -> String {
    format!("tok-{}", store.to_lowercase())
}

/// A `posgw hq` folder: tokens and hq.toml.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        file("admin.token", ADMIN_TOKEN);
        file("region.token", REGION_TOKEN);
        let stores: String = [WZ1, WZ2, HZ]
            .iter()
            .map(|code| {
                file(&format!("{code}.token"), &token(code));
                format!("[[store]]\ncode = \"{code}\"\ntoken_file = \"{code}.token\"\n")
            })
            .collect();
        let port = crate::harness::free_port();
        let hash = password_hash();
        file(
            "hq.toml",
            &format!(
                r#"[hq]
listen = "127.0.0.1:{port}"
data_dir = "data"
admin_token_file = "admin.token"
timezone = "Asia/Shanghai"

{stores}
[[region]]
id = "east-wz"
name = "温州片区"
stores = ["{WZ1}", "{WZ2}"]
[[region]]
id = "east-hz"
name = "杭州片区"
stores = ["{HZ}"]

[[user]]
name = "{ADMIN}"
role = "admin"
password_hash = "{hash}"
[[user]]
name = "{REGION_USER}"
role = "region"
region = "east-wz"
password_hash = "{hash}"
token_file = "region.token"

[[campaign]]
id = "hq-xinsong"
skus = ["6901234567892"]
question = "推荐话术来源"
options = [ {{ key = "doctor", label = "医生推荐" }}, {{ key = "poster", label = "海报引导" }} ]
"#
            ),
        );
        Site { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("hq.toml")
    }

    /// Starts HQ; WZ-LC-001 and HZ-XH-001 report in with the version of their document.
    async fn start(&self) -> Gateway {
        let hq = Gateway::spawn(
            &["hq", "-c", self.config().to_str().unwrap()],
            "hq listening on ",
        )
        .await;
        for store in [WZ1, HZ] {
            let version = store_config(&hq.api, store).await["version"].clone();
            heartbeat(&hq.api, store, version).await;
        }
        hq
    }
}

/// A request to HQ with `token`: status and JSON body.
async fn call(
    hq: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = crate::harness::client()
        .request(method, format!("{hq}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("HQ answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `store`'s document, read as the gateway does with the store's token.
async fn store_config(hq: &str, store: &str) -> Value {
    let path = format!("/v1/fleet/{store}/config");
    let (status, body) = call(hq, reqwest::Method::GET, &path, &token(store), None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The ids of the campaigns in `store`'s document.
async fn campaigns_of(hq: &str, store: &str) -> Vec<String> {
    store_config(hq, store).await["campaigns"]
        .as_array()
        .expect("campaigns")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// A heartbeat as `store`'s gateway sends it, a poll of 10 min (online for 30).
async fn heartbeat(hq: &str, store: &str, config_version: Value) {
    let body = json!({
        "gateway": format!("gw-{}", store.to_lowercase()), "version": "0.1.0",
        "config_version": config_version, "poll_ms": 600_000,
        "devices": [{"id": "scanner-1", "state": "connected"},
                    {"id": "register-1", "state": "disconnected"}],
        "journal": {"backlog_records": 3, "oldest_backlog_ts": null},
        "uplink": {"state": "idle", "last_error": null},
        "clock": {"synced": true}, "refused": null, "clashes": []});
    let path = format!("/v1/fleet/{store}/heartbeat");
    let (status, answer) = call(hq, reqwest::Method::POST, &path, &token(store), Some(&body)).await;
    assert_eq!(status, 204, "{path}: {answer}");
}

/// The store codes of the fleet table's rows, in the order shown.
async fn fleet_rows(client: &Client) -> Vec<String> {
    let rows = js(
        client,
        "return Array.from(document.querySelectorAll('#fleet-table tbody tr[data-store]'))\
         .map((row) => row.dataset.store);",
    )
    .await;
    serde_json::from_value(rows).expect("strings")
}

/// Types `text` into the field `css`, replacing what it held.
async fn type_into(client: &Client, css: &str, text: &str) {
    let field = client.find(Locator::Css(css)).await.expect(css);
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

/// The texts of the elements `css` matches.
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let found = js(
        client,
        &format!(
            "return Array.from(document.querySelectorAll({css:?})).map((e) => e.textContent);"
        ),
    )
    .await;
    serde_json::from_value(found).expect("strings")
}

/// What the campaign form sends for `timeout`, as the test's own request.
fn campaign(timeout: &str) -> Value {
    json!({"id": CAMPAIGN, "question": "春季滋补推荐来源", "skus": ["6909999000011"],
           "options": [{"key": "doctor", "label": "医生推荐"}, {"key": "friend", "label": "朋友介绍"}],
           "timeout": timeout, "stores": [WZ1]})
}

/// Submits the campaign form and waits for its answer; returns its status.
async fn submit_campaign(client: &Client) -> String {
    js(
        client,
        "document.getElementById('cf-outcome').removeAttribute('data-kind');",
    )
    .await;
    click(client, "#campaign-form button[type=submit]").await;
    wait_attr(client, "#cf-outcome", "data-kind", |v| v.is_some()).await;
    attr(client, "#campaign-form", "data-status")
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn an_admin_sees_the_fleet_and_creates_refuses_and_ends_a_campaign_in_the_editor() {
    let site = Site::new();
    let hq = site.start().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = signed_in(&driver, &profile, &hq.api, ADMIN).await;

    // Both tabs are there for an admin.
    for tab in ["#tab-fleet", "#tab-editor"] {
        assert_eq!(attr(&client, tab, "hidden").await, None, "{tab}");
    }

    // The fleet: every store, the silent one first, marked offline and never seen.
    click(&client, "#tab-fleet").await;
    eventually("the fleet's rows", || async {
        fleet_rows(&client).await == [WZ2, WZ1, HZ]
    })
    .await;
    let row = |code: &str| format!("#fleet-table tr[data-store='{code}']");
    assert_eq!(
        attr(&client, &row(WZ2), "data-online").await.as_deref(),
        Some("false")
    );
    assert!(attr(&client, &row(WZ2), "class")
        .await
        .unwrap()
        .contains("offline"));
    assert!(text_of(&client, &format!("{} .state", row(WZ2)))
        .await
        .contains("从未上线"));
    for code in [WZ1, HZ] {
        assert_eq!(
            attr(&client, &row(code), "data-online").await.as_deref(),
            Some("true"),
            "{code}"
        );
        assert_eq!(
            attr(&client, &row(code), "data-stale").await.as_deref(),
            Some("false"),
            "{code}"
        );
        assert_eq!(
            text_of(&client, &format!("{} .devices-down", row(code))).await,
            "register-1"
        );
    }
    assert_eq!(
        attr(&client, "#fleet-summary", "data-offline")
            .await
            .as_deref(),
        Some("1")
    );
    screenshot(&client, "hq-fleet-admin.png").await;

    // The editor lists hq.toml's campaign read-only, targeting every store.
    click(&client, "#tab-editor").await;
    let listed = "#editor-campaigns tr[data-id='hq-xinsong']";
    eventually("hq.toml's campaign", || async {
        count(&client, listed).await == 1
    })
    .await;
    assert_eq!(
        attr(&client, listed, "data-source").await.as_deref(),
        Some("file")
    );
    assert_eq!(count(&client, &format!("{listed} button")).await, 0);
    assert!(text_of(&client, &format!("{listed} .targets"))
        .await
        .contains("全部门店"));
    let first_version: u64 = attr(&client, "#editor-version", "data-version")
        .await
        .unwrap()
        .parse()
        .expect("a version");

    // A campaign for WZ-LC-001 through the form, with a timeout the gateway does not take.
    type_into(&client, "#cf-id", CAMPAIGN).await;
    type_into(&client, "#cf-question", "春季滋补推荐来源").await;
    type_into(&client, "#cf-skus", "6909999000011").await;
    let options = [("doctor", "医生推荐"), ("friend", "朋友介绍")];
    for (n, (key, label)) in options.iter().enumerate() {
        let row = format!("#cf-options .option-row:nth-child({})", n + 1);
        type_into(&client, &format!("{row} .opt-key"), key).await;
        type_into(&client, &format!("{row} .opt-label"), label).await;
    }
    type_into(&client, "#cf-timeout", "forever").await;
    click(&client, &format!("#cf-stores input[value='{WZ1}']")).await;
    assert_eq!(submit_campaign(&client).await, "422");
    // Each of the server's messages, as it wrote them.
    let (status, refusal) = call(
        &hq.api,
        reqwest::Method::PUT,
        &format!("/v1/fleet/campaigns/{CAMPAIGN}"),
        ADMIN_TOKEN,
        Some(&campaign("forever")),
    )
    .await;
    assert_eq!(status, 422, "{refusal}");
    let expected: Vec<String> = serde_json::from_value(refusal["errors"].clone()).unwrap();
    assert!(!expected.is_empty());
    assert!(
        expected.iter().any(|e| e.contains("timeout")),
        "{expected:?}"
    );
    assert_eq!(texts(&client, "#cf-errors li").await, expected);
    assert_eq!(attr(&client, "#cf-errors", "hidden").await, None);
    screenshot(&client, "hq-fleet-editor-422.png").await;
    assert_eq!(campaigns_of(&hq.api, WZ1).await, ["hq-xinsong"]);

    // A valid timeout: saved, listed as the editor's, for WZ-LC-001 only.
    type_into(&client, "#cf-timeout", "2m").await;
    assert_eq!(
        submit_campaign(&client).await,
        "200",
        "{:?}",
        texts(&client, "#cf-outcome, #cf-errors li").await
    );
    assert_eq!(texts(&client, "#cf-errors li").await, Vec::<String>::new());
    let mine = format!("#editor-campaigns tr[data-id='{CAMPAIGN}']");
    eventually("the new campaign in the list", || async {
        attr(&client, &mine, "data-source").await.as_deref() == Some("editor")
    })
    .await;
    let saved_version = first_version + 1;
    wait_attr(&client, "#editor-version", "data-version", |v| {
        v == Some(saved_version.to_string().as_str())
    })
    .await;
    let targets = text_of(&client, &format!("{mine} .targets")).await;
    assert!(targets.contains(WZ1) && !targets.contains(HZ), "{targets}");
    assert!(text_of(&client, &format!("{mine} .source"))
        .await
        .contains(ADMIN));
    assert_eq!(campaigns_of(&hq.api, WZ1).await, ["hq-xinsong", CAMPAIGN]);
    assert_eq!(campaigns_of(&hq.api, HZ).await, ["hq-xinsong"]);
    let served = store_config(&hq.api, WZ1).await;
    let served = &served["campaigns"][1];
    assert_eq!(served["timeout"], "2m");
    assert_eq!(
        served["options"][1],
        json!({"key": "friend", "label": "朋友介绍"})
    );
    // The history: the new version, by the admin, naming the campaign.
    let entry = format!("#history > li[data-version='{saved_version}']");
    eventually("the version in the history", || async {
        count(&client, &entry).await == 1
    })
    .await;
    let said = text_of(&client, &entry).await;
    assert!(said.contains(CAMPAIGN) && said.contains(ADMIN), "{said}");

    // hq.toml's id is refused with the server's 409, naming the file.
    type_into(&client, "#cf-id", "hq-xinsong").await;
    assert_eq!(submit_campaign(&client).await, "409");
    let said = text_of(&client, "#cf-outcome").await;
    assert!(said.contains("hq.toml"), "{said}");

    // The fleet view now calls WZ-LC-001 stale (its document moved on), HZ-XH-001 not.
    view(&client, "#fleet", "fleet").await;
    wait_attr(&client, &row(WZ1), "data-stale", |v| v == Some("true")).await;
    assert_eq!(
        attr(&client, &row(HZ), "data-stale").await.as_deref(),
        Some("false")
    );
    assert!(text_of(&client, &format!("{} .version", row(WZ1)))
        .await
        .contains(&format!("v{saved_version}")));
    screenshot(&client, "hq-fleet-stale.png").await;

    // Ending it: asked once more on the button, then gone from the list and the document.
    view(&client, "#editor", "editor").await;
    let end = format!("{mine} button.end");
    click(&client, &end).await;
    wait_attr(&client, &end, "data-armed", |v| v == Some("true")).await;
    click(&client, &end).await;
    eventually("the campaign gone from the list", || async {
        count(&client, &mine).await == 0
    })
    .await;
    let ended_version = saved_version + 1;
    wait_attr(&client, "#editor-version", "data-version", |v| {
        v == Some(ended_version.to_string().as_str())
    })
    .await;
    assert_eq!(campaigns_of(&hq.api, WZ1).await, ["hq-xinsong"]);
    let versions = js(
        &client,
        "return Array.from(document.querySelectorAll('#history > li'))\
         .map((li) => Number(li.dataset.version));",
    )
    .await;
    let versions: Vec<u64> = serde_json::from_value(versions).unwrap();
    assert_eq!(
        versions[..2],
        [ended_version, saved_version],
        "newest first: {versions:?}"
    );

    // A flow for the east-hz region through the flow form: two steps, one with a choose list.
    type_into(&client, "#ff-id", FLOW).await;
    type_into(&client, "#ff-name", "滋补问诊").await;
    type_into(&client, "#ff-skus", "6909999000028").await;
    click(&client, "#ff-add-step").await;
    let steps = [
        ("consult", "客户问诊", ""),
        ("symptoms", "症状记录", "乏力, 失眠"),
    ];
    for (n, (key, label, choose)) in steps.iter().enumerate() {
        let row = format!("#ff-steps .step-row:nth-child({})", n + 1);
        type_into(&client, &format!("{row} .step-key"), key).await;
        type_into(&client, &format!("{row} .step-label"), label).await;
        type_into(&client, &format!("{row} .step-choose"), choose).await;
    }
    type_into(&client, "#ff-skip", "顾客赶时间\n其他").await;
    click(&client, "#ff-regions input[value='east-hz']").await;
    js(
        &client,
        "document.getElementById('ff-outcome').removeAttribute('data-kind');",
    )
    .await;
    click(&client, "#flow-form button[type=submit]").await;
    wait_attr(&client, "#ff-outcome", "data-kind", |v| v.is_some()).await;
    assert_eq!(
        attr(&client, "#flow-form", "data-status").await.as_deref(),
        Some("200"),
        "{:?}",
        texts(&client, "#ff-outcome, #ff-errors li").await
    );
    eventually("the flow in the list", || async {
        count(&client, &format!("#editor-flows tr[data-id='{FLOW}']")).await == 1
    })
    .await;
    let hz = store_config(&hq.api, HZ).await;
    let flow = &hz["flows"][0];
    assert_eq!(flow["id"], FLOW, "{hz}");
    assert_eq!(flow["steps"][1]["choose"], json!(["乏力", "失眠"]));
    assert_eq!(flow["skip_reasons"], json!(["顾客赶时间", "其他"]));
    assert_eq!(store_config(&hq.api, WZ1).await["flows"], json!([]));
    screenshot(&client, "hq-fleet-editor.png").await;
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_region_user_sees_their_region_in_the_fleet_and_is_not_allowed_the_editor() {
    let site = Site::new();
    let hq = site.start().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = signed_in(&driver, &profile, &hq.api, REGION_USER).await;

    assert_eq!(attr(&client, "#tab-fleet", "hidden").await, None);
    assert!(attr(&client, "#tab-editor", "hidden").await.is_some());

    click(&client, "#tab-fleet").await;
    eventually("the region's stores", || async {
        fleet_rows(&client).await == [WZ2, WZ1]
    })
    .await;
    assert_eq!(
        attr(
            &client,
            &format!("#fleet-table tr[data-store='{WZ2}']"),
            "data-online"
        )
        .await
        .as_deref(),
        Some("false")
    );
    let page = text_of(&client, "body").await;
    assert!(!page.contains(HZ), "another region's store is on the page");

    // The editor: not allowed on the page, and by the server.
    view(&client, "#editor", "editor").await;
    assert_eq!(attr(&client, "#editor-denied", "hidden").await, None);
    assert!(attr(&client, "#editor-body", "hidden").await.is_some());
    assert!(text_of(&client, "#editor-denied")
        .await
        .contains("Not allowed"));
    screenshot(&client, "hq-fleet-region-editor.png").await;
    let (status, _) = call(
        &hq.api,
        reqwest::Method::GET,
        "/v1/fleet/editor",
        REGION_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &hq.api,
        reqwest::Method::PUT,
        &format!("/v1/fleet/campaigns/{CAMPAIGN}"),
        REGION_TOKEN,
        Some(&campaign("2m")),
    )
    .await;
    assert_eq!(status, 403);
    client.close().await.unwrap();
}
