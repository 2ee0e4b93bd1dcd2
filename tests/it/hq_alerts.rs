//! HQ alerts end to end over real HTTP on loopback: the 医保核验 rule over three days of a
//! store whose pass rate is 50%, exactly one alert through a local WeCom-format robot with
//! its cases and no names, acknowledged and resolved through the API, never fired twice
//! (second evaluation, a longer run, a restart), a late batch completing a run in its own
//! days, and every lifecycle answer per role.
//!
//! Regions: `east-wz` (S1, S2; notify `wz-sup`) and `east-hz` (S3). Users: `boss` (admin), `li`
//! (region east-wz), `wang` (store S3).

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use chrono::{Duration as Days, NaiveDate, Utc};
use posgw::hq::{self, RunningHq};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const ADMIN: &str = "alerts-admin-secret";
const DEADLINE: Duration = Duration::from_secs(30);

/// A local 企业微信 group robot: checks the message format, answers `errcode` 0, and passes
/// each message's markdown content on.
async fn wecom_robot() -> (String, mpsc::UnboundedReceiver<String>) {
    let (sender, messages) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/cgi-bin/webhook/send",
        axum::routing::post(move |Json(body): Json<Value>| {
            let sender = sender.clone();
            async move {
                if body["msgtype"] != "markdown" || !body["markdown"]["content"].is_string() {
                    return Json(json!({"errcode": 40008, "errmsg": "invalid message type"}));
                }
                let _ = sender.send(
                    body["markdown"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
                Json(json!({"errcode": 0, "errmsg": "ok"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind robot");
    let url = format!(
        "http://{}/cgi-bin/webhook/send?key=test-key-1",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, messages)
}

/// A folder with hq.toml, tokens, the robot's URL file and data/.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(robot_url: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, token) in [
            ("admin.token", ADMIN),
            ("s1.token", "tok-s1"),
            ("s2.token", "tok-s2"),
            ("s3.token", "tok-s3"),
            ("wz.url", robot_url),
        ] {
            std::fs::write(dir.path().join(name), token).expect("write file");
        }
        let users: String = [
            ("boss", "role = \"admin\""),
            ("li", "role = \"region\"\nregion = \"east-wz\""),
            ("wang", "role = \"store\"\nstore = \"S3\""),
        ]
        .iter()
        .map(|(name, role)| {
            let hash = hq::hash_password(&format!("pw-{name}")).expect("hash");
            format!("[[user]]\nname = \"{name}\"\n{role}\npassword_hash = \"{hash}\"\n\n")
        })
        .collect();
        let port = crate::harness::free_port();
        let config = format!(
            "[hq]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\
             admin_token_file = \"admin.token\"\npublic_url = \"https://hq.example.com\"\n\n\
             [[store]]\ncode = \"S1\"\ntoken_file = \"s1.token\"\n\
             [[store]]\ncode = \"S2\"\ntoken_file = \"s2.token\"\n\
             [[store]]\ncode = \"S3\"\ntoken_file = \"s3.token\"\n\n\
             [[region]]\nid = \"east-wz\"\nname = \"温州片区\"\nstores = [\"S1\", \"S2\"]\n\
             notify = [\"wz-sup\"]\n\
             [[region]]\nid = \"east-hz\"\nname = \"杭州片区\"\nstores = [\"S3\"]\n\n\
             [[notify]]\nid = \"wz-sup\"\nkind = \"wecom\"\nurl_file = \"wz.url\"\n\n\
             [[alert]]\nid = \"insurance-pass-low\"\nname = \"医保核验通过率\"\n\
             metric = \"step_rate\"\nflow = \"rx-5step\"\nstep = \"insurance\"\nvalue = \"通过\"\n\
             below = 0.65\ndays = 2\nmin_count = 5\nattach_days = 3\nregions = [\"east-wz\"]\n\n{users}"
        );
        std::fs::write(dir.path().join("hq.toml"), config).expect("write config");
        Setup { dir }
    }

    /// As [`Setup::new`], storing in `backend`'s PostgreSQL (receivers of one chain).
    fn on_postgres(robot_url: &str, backend: &crate::hq::Backend) -> Setup {
        let setup = Setup::new(robot_url);
        let crate::hq::Backend::Postgres(cluster) = backend else {
            unreachable!("a PostgreSQL backend")
        };
        std::fs::write(setup.dir.path().join("db.url"), cluster.url()).expect("write url");
        let mut config = std::fs::read_to_string(setup.config()).expect("read config");
        config.push_str("\n[storage]\nbackend = \"postgres\"\nurl_file = \"db.url\"\n");
        std::fs::write(setup.config(), config).expect("write config");
        setup
    }

    /// `http://ADDR` of the receiver this folder configures.
    fn url(&self) -> String {
        let settings = hq::load_config(&self.config()).expect("config loads");
        format!("http://{}", settings.listen)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("hq.toml")
    }

    async fn start(&self) -> RunningHq {
        let settings = hq::load_config(&self.config()).expect("config loads");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        hq::start(settings, listener).await.expect("starts")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .pool_idle_timeout(crate::harness::POOL_IDLE)
        .build()
        .expect("client")
}

/// Today in Asia/Shanghai (HQ's default timezone).
fn today() -> NaiveDate {
    Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive()
}

/// A closed consultation of `store` at 10:MM on `day`: the insurance step holds `insurance`.
fn consultation(store: &str, seq: u64, day: NaiveDate, insurance: &str) -> String {
    let at = |minute: u64| format!("{day}T10:{:02}:{:02}.000+08:00", minute % 60, seq % 60);
    let steps = json!([
        {"key": "consult", "label": "客户问诊", "at": at(1), "value": null, "values": null,
         "skipped": null, "clerk": "c-17"},
        {"key": "symptoms", "label": "症状记录", "at": at(2), "value": null,
         "values": ["高血压", "心悸"], "skipped": null, "clerk": "c-17"},
        {"key": "recommend", "label": "药品推荐", "at": at(3), "value": null, "values": null,
         "skipped": null, "clerk": "c-17"},
        {"key": "insurance", "label": "医保核验", "at": at(4), "value": insurance,
         "values": null, "skipped": null, "clerk": "c-17"},
        {"key": "guidance", "label": "用药指导", "at": at(5), "value": null, "values": null,
         "skipped": null, "clerk": "c-17"},
    ]);
    json!({
        "id": format!("{store}/gw-1/ep1/{seq}"), "store": store, "gateway": "gw-1",
        "epoch": "ep1", "seq": seq, "ts": at(9),
        "clock": {"boot": "b", "mono_ms": seq, "synced": true}, "kind": "consultation",
        "data": {"id": format!("k-{store}-{seq}"), "flow": "rx-5step", "station": "till-1",
                 "clerk": "c-17", "customer": format!("cust{seq:04}"), "opened_at": at(0),
                 "closed_at": at(9), "outcome": "completed", "steps": steps, "scans": [],
                 "receipt": null, "held_ms": null, "released_by": null},
    })
    .to_string()
}

/// Ten consultations of `store` on `day`, `passed` of them passing, seqs from `first`.
fn day_batch(store: &str, first: u64, day: NaiveDate, passed: u64) -> String {
    (0..10)
        .map(|index| {
            let insurance = if index < passed {
                "通过"
            } else {
                "未通过"
            };
            consultation(store, first + index, day, insurance) + "\n"
        })
        .collect()
}

async fn post_batch(url: &str, store: &str, body: String) {
    let response = client()
        .post(format!("{url}/v1/batches"))
        .bearer_auth(format!("tok-{}", store.to_lowercase()))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        response.text().await.unwrap_or_default()
    );
}

/// Logs `name` in; the session cookie as `name=value`.
async fn login(url: &str, name: &str) -> String {
    let response = client()
        .post(format!("{url}/v1/login"))
        .json(&json!({"name": name, "password": format!("pw-{name}")}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"].to_str().expect("cookie");
    cookie.split(';').next().expect("pair").to_string()
}

/// Who calls: the admin token or a session cookie.
enum As<'a> {
    Admin,
    Cookie(&'a str),
}

async fn call(
    method: reqwest::Method,
    url: &str,
    path: &str,
    who: &As<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, format!("{url}{path}"));
    request = match who {
        As::Admin => request.bearer_auth(ADMIN),
        As::Cookie(cookie) => request.header("cookie", *cookie),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get(url: &str, path: &str, who: &As<'_>) -> (StatusCode, Value) {
    call(reqwest::Method::GET, url, path, who, None).await
}

async fn post(url: &str, path: &str, who: &As<'_>, body: Option<Value>) -> (StatusCode, Value) {
    call(reqwest::Method::POST, url, path, who, body).await
}

async fn evaluate(url: &str) -> Vec<Value> {
    let (status, body) = post(url, "/v1/alerts/evaluate", &As::Admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["opened"].as_array().expect("opened").clone()
}

async fn alerts(url: &str, who: &As<'_>, query: &str) -> Value {
    let (status, body) = get(url, &format!("/v1/alerts{query}"), who).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The next message the robot got, within the deadline.
async fn next_message(messages: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(DEADLINE, messages.recv())
        .await
        .expect("a robot message in time")
        .expect("robot running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_day_insurance_drop_alerts_once_reaches_the_robot_and_is_acknowledged() {
    let (robot, mut messages) = wecom_robot().await;
    let setup = Setup::new(&robot);
    let hq = setup.start().await;
    let url = hq.url();
    let (d3, d2, d1) = (
        today() - Days::days(3),
        today() - Days::days(2),
        today() - Days::days(1),
    );

    // Day one alone is not a run of two; S3 (east-hz) breaches too but the rule watches
    // east-wz only.
    post_batch(&url, "S1", day_batch("S1", 1, d3, 5)).await;
    post_batch(
        &url,
        "S3",
        day_batch("S3", 1, d3, 0) + &day_batch("S3", 11, d2, 0),
    )
    .await;
    assert!(evaluate(&url).await.is_empty());

    post_batch(&url, "S1", day_batch("S1", 11, d2, 5)).await;
    let opened = evaluate(&url).await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    let alert = &opened[0];
    let id = alert["id"].as_str().expect("id").to_string();
    assert_eq!(alert["store"], "S1");
    assert_eq!(alert["region"], "east-wz");
    assert_eq!(alert["rule"], "insurance-pass-low");
    assert_eq!(alert["state"], "open");
    assert_eq!(alert["days"], json!([d3.to_string(), d2.to_string()]));
    assert_eq!(alert["values"][0]["value"], 0.5);
    assert_eq!(alert["values"][0]["count"], 10);
    assert_eq!(
        alert["cases_total"], 10,
        "five failing cases a day over the run"
    );
    let case = &alert["cases"][0];
    assert_eq!(case["clerk"], "c-17");
    assert!(case["customer"]
        .as_str()
        .is_some_and(|c| c.starts_with("cust")));
    assert_eq!(case["symptoms"], json!(["高血压", "心悸"]));
    assert_eq!(case["value"], "未通过");

    // The robot gets it once, with the cases and the dashboard link; no names exist to leak.
    let message = next_message(&mut messages).await;
    assert!(message.contains("S1"), "{message}");
    assert!(message.contains("50.0%"), "{message}");
    assert!(
        message.contains("c-17") && message.contains("高血压"),
        "{message}"
    );
    assert!(
        message.contains(&format!("https://hq.example.com/#alerts/{id}")),
        "{message}"
    );
    assert!(!message.contains("member"), "{message}");

    // A second evaluation and a longer run open nothing more.
    assert!(evaluate(&url).await.is_empty());
    post_batch(&url, "S1", day_batch("S1", 21, d1, 2)).await;
    assert!(evaluate(&url).await.is_empty());

    // Delivery is recorded.
    let admin_view = alerts(&url, &As::Admin, "").await;
    let delivered = admin_view["alerts"][0]["delivered_at"].clone();
    assert!(delivered.is_string(), "{admin_view}");

    // Restart: the alert is still there, and still fires once.
    hq.stop().await.expect("stop");
    let hq = setup.start().await;
    let url = hq.url();
    assert!(evaluate(&url).await.is_empty());
    let after = alerts(&url, &As::Admin, "").await;
    assert_eq!(after["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(after["alerts"][0]["delivered_at"], delivered);
    // S2 breaches now: its message is the next one the robot gets, so S1's was not resent.
    post_batch(
        &url,
        "S2",
        day_batch("S2", 1, d2, 1) + &day_batch("S2", 11, d1, 1),
    )
    .await;
    let opened = evaluate(&url).await;
    assert_eq!(opened.len(), 1);
    let message = next_message(&mut messages).await;
    assert!(
        message.contains("S2") && !message.contains(&id),
        "{message}"
    );

    // alert_response: both alerts are fresh and unacknowledged, so neither counts yet.
    let (_, yardsticks) = get(&url, "/v1/yardsticks", &As::Admin).await;
    assert_eq!(
        yardsticks["chain"]["alert_response"]["alerts"], 0,
        "{yardsticks}"
    );
    assert_eq!(yardsticks["chain"]["alert_response"]["value"], Value::Null);

    // Scope and lifecycle, per role.
    let li = login(&url, "li").await;
    let wang = login(&url, "wang").await;
    let path = format!("/v1/alerts/{id}/ack");
    let (status, _) = post(&url, &path, &As::Cookie(&wang), Some(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wang_view = alerts(&url, &As::Cookie(&wang), "").await;
    assert_eq!(wang_view["alerts"], json!([]));
    assert_eq!(wang_view["regions"], json!({}));
    let li_view = alerts(&url, &As::Cookie(&li), "?state=open").await;
    assert_eq!(li_view["alerts"].as_array().map(Vec::len), Some(2));
    // The list is bounded by `limit` (1 to 5000).
    let one = alerts(&url, &As::Cookie(&li), "?limit=1").await;
    assert_eq!(one["alerts"].as_array().map(Vec::len), Some(1));
    let (status, _) = get(&url, "/v1/alerts?limit=0", &As::Cookie(&li)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        alerts(&url, &As::Cookie(&li), "?region=east-hz").await["alerts"],
        json!([])
    );
    let (status, _) = get(&url, "/v1/alerts?state=later", &As::Cookie(&li)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(&url, "/v1/alerts/evaluate", &As::Cookie(&li), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, acked) = post(
        &url,
        &path,
        &As::Cookie(&li),
        Some(json!({"note": "今天下午到店"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "li");
    assert_eq!(acked["response_minutes"], 0);
    let (status, _) = post(&url, &path, &As::Cookie(&li), None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let resolve = format!("/v1/alerts/{id}/resolve");
    let (status, body) = post(
        &url,
        &resolve,
        &As::Cookie(&li),
        Some(json!({"action": "  "})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // An action is at most 2,000 characters.
    let long = "演".repeat(2001);
    let (status, body) = post(
        &url,
        &resolve,
        &As::Cookie(&li),
        Some(json!({"action": long})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, resolved) = post(
        &url,
        &resolve,
        &As::Cookie(&li),
        Some(json!({"action": "本周三前由技术顾问上门演示"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["action"], "本周三前由技术顾问上门演示");
    let (status, _) = post(&url, "/v1/alerts/a-999/ack", &As::Admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // alert_response moved: the acknowledged alert was in time (the other is still young).
    let (status, yardsticks) = get(&url, "/v1/yardsticks", &As::Admin).await;
    assert_eq!(status, StatusCode::OK, "{yardsticks}");
    assert_eq!(
        yardsticks["chain"]["alert_response"]["alerts"], 1,
        "{yardsticks}"
    );
    assert_eq!(
        yardsticks["chain"]["alert_response"]["value"], 1.0,
        "{yardsticks}"
    );
    assert_eq!(
        yardsticks["chain"]["alert_response"]["within_24h"], 1,
        "{yardsticks}"
    );
    assert_eq!(
        yardsticks["supervisors"]["li"]["acknowledged"], 1,
        "{yardsticks}"
    );
    hq.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_batch_from_an_offline_store_completes_a_run_in_its_own_days() {
    let (robot, mut messages) = wecom_robot().await;
    let setup = Setup::new(&robot);
    let hq = setup.start().await;
    let url = hq.url();
    let (d3, d2, d1) = (
        today() - Days::days(3),
        today() - Days::days(2),
        today() - Days::days(1),
    );
    // A good day, then a bad one; the store goes offline for yesterday.
    post_batch(
        &url,
        "S1",
        day_batch("S1", 1, d3, 9) + &day_batch("S1", 11, d2, 3),
    )
    .await;
    assert!(evaluate(&url).await.is_empty());
    // Back online today, it sends yesterday's records: they count toward yesterday.
    post_batch(&url, "S1", day_batch("S1", 21, d1, 4)).await;
    let opened = evaluate(&url).await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["days"], json!([d2.to_string(), d1.to_string()]));
    let message = next_message(&mut messages).await;
    assert!(message.contains(&d1.to_string()), "{message}");
    hq.stop().await.expect("stop");
}

/// Config mistakes in `[[alert]]` are positioned errors.
#[test]
fn alert_rule_mistakes_are_reported_with_their_position() {
    let setup = Setup::new("http://127.0.0.1:9/x");
    let config = std::fs::read_to_string(setup.config()).expect("read");
    let broken = config.replace("below = 0.65", "below = 65\nabove = 1.0")
        + "\n[[alert]]\nid = \"x\"\nmetric = \"step_rates\"\nbelow = 0.5\n"
        + "\n[[alert]]\nid = \"y\"\nmetric = \"campaign_completeness\"\nbelow = 0.5\nregions = [\"nowhere\"]\n"
        + "\n[[alert]]\nid = \"z\"\nmetric = \"gateway_offline_hours\"\nabove = 4\nmin_count = 5\n";
    std::fs::write(setup.config(), broken).expect("write");
    let error = hq::load_config(&setup.config())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("both 'below' and 'above'"), "{error}");
    assert!(error.contains("did you mean 'step_rate'"), "{error}");
    assert!(error.contains("needs 'campaign'"), "{error}");
    assert!(error.contains("region 'nowhere'"), "{error}");
    assert!(
        error.contains("must be 1 or less for gateway_offline_hours"),
        "{error}"
    );
    assert!(error.contains("hq.toml:"), "{error}");
}

/// Polls `GET /healthz/manage` of `url` until it answers `status`.
async fn wait_manage(url: &str, status: StatusCode) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(response) = client().get(format!("{url}/healthz/manage")).send().await {
            if response.status() == status {
                return;
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{url}/healthz/manage never said {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_alerts_move_with_the_management_lock_and_fire_once() {
    let backend = crate::hq::Backend::postgres();
    let (robot, mut messages) = wecom_robot().await;
    let (first, second) = (
        Setup::on_postgres(&robot, &backend),
        Setup::on_postgres(&robot, &backend),
    );
    let (url_a, url_b) = (first.url(), second.url());
    let mut a = crate::hq::spawn_hq_process(&first.config());
    crate::hq::wait_healthy(&client(), &url_a).await;
    wait_manage(&url_a, StatusCode::OK).await;
    let b = crate::hq::spawn_hq_process(&second.config());
    crate::hq::wait_healthy(&client(), &url_b).await;
    // The second takes batches and serves records, but the alerts are the first's.
    wait_manage(&url_b, StatusCode::SERVICE_UNAVAILABLE).await;
    let (status, _) = get(&url_b, "/v1/alerts", &As::Admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Two days under 65% of S1, posted to the second receiver; the first evaluates.
    let (d3, d2) = (today() - Days::days(3), today() - Days::days(2));
    post_batch(&url_b, "S1", day_batch("S1", 1, d3, 5)).await;
    post_batch(&url_b, "S1", day_batch("S1", 11, d2, 5)).await;
    let started = std::time::Instant::now();
    let opened = loop {
        // The first receiver's figures follow the database within moments.
        let opened = evaluate(&url_a).await;
        if !opened.is_empty() {
            break opened;
        }
        assert!(started.elapsed() < DEADLINE, "no alert opened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(opened.len(), 1, "{opened:?}");
    let id = opened[0]["id"].as_str().expect("id").to_string();
    assert!(next_message(&mut messages).await.contains("医保核验"));
    let (status, acked) = post(
        &url_a,
        &format!("/v1/alerts/{id}/ack"),
        &As::Admin,
        Some(json!({"note": "called the store"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    // An admin adds a campaign in the fleet editor: version 2 of the stores' configuration.
    let campaign = json!({
        "skus": ["6970000000001"],
        "question": "怎么知道这款的？",
        "options": [{"key": "doctor", "label": "医生推荐"}],
        "timeout": "5m",
        "stores": ["S1"],
    });
    let path = "/v1/fleet/campaigns/spring-tonic";
    let (status, saved) = call(
        reqwest::Method::PUT,
        &url_a,
        path,
        &As::Admin,
        Some(campaign),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let version = saved["version"].clone();

    // A supervisor signs in on the first receiver; the second knows the session soon after.
    let li = login(&url_a, "li").await;
    let started = std::time::Instant::now();
    while get(&url_b, "/v1/me", &As::Cookie(&li)).await.0 != StatusCode::OK {
        assert!(
            started.elapsed() < DEADLINE,
            "the second receiver never learned the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The first receiver dies; the second takes the lock, with the alert as it was left.
    a.kill_9();
    wait_manage(&url_b, StatusCode::OK).await;
    let view = alerts(&url_b, &As::Admin, "").await;
    assert_eq!(view["alerts"].as_array().map(Vec::len), Some(1), "{view}");
    assert_eq!(view["alerts"][0]["id"], id.as_str());
    assert_eq!(view["alerts"][0]["state"], "acknowledged");
    assert!(view["alerts"][0]["delivered_at"].is_string(), "{view}");
    // Two receivers took over in turn: a write of the first, had it lived on, is refused.
    let crate::hq::Backend::Postgres(cluster) = &backend else {
        unreachable!()
    };
    assert_eq!(
        cluster.psql(
            "posgw",
            "SELECT value FROM hq_meta WHERE key = 'manage_epoch'"
        ),
        "2\n"
    );
    // The supervisor is still signed in, and sees it.
    let theirs = alerts(&url_b, &As::Cookie(&li), "").await;
    assert_eq!(theirs["alerts"][0]["id"], id.as_str());
    // It does not fire again, nor deliver again.
    assert!(evaluate(&url_b).await.is_empty());
    let (status, resolved) = post(
        &url_b,
        &format!("/v1/alerts/{id}/resolve"),
        &As::Admin,
        Some(json!({"action": "retrained the clerk on 医保核验"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["state"], "resolved");
    assert!(
        messages.try_recv().is_err(),
        "the alert reached the robot once"
    );
    // The fleet's version and the campaign moved too.
    let (status, editor) = get(&url_b, "/v1/fleet/editor", &As::Admin).await;
    assert_eq!(status, StatusCode::OK, "{editor}");
    assert_eq!(editor["version"], version);
    assert_eq!(editor["history"][0]["who"], "admin", "{editor}");
    drop(b);
}
