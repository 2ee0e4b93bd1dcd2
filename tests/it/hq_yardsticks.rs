//! `GET /v1/yardsticks` over real HTTP on loopback against a real `posgw hq`: the figures of
//! a known set of records (a late batch landing in its own days, a sale whose consultation
//! comes in a later batch, a sale whose prompt timed out), per role, bad queries, and a
//! restart that keeps every figure.
//!
//! Stores S1 (region east), S2 and S3 (region west), S4 (no region, no records); users
//! `boss` (admin), `li` (region east) and `wang` (store S3), each with an API token.

use std::path::PathBuf;
use std::time::Duration;

use posgw::hq::{self, RunningHq};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const FLOW_SKU: &str = "6901234567892";

/// A folder with hq.toml, tokens and data/.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, token) in [
            ("admin.token", "ys-admin"),
            ("s1.token", "ys-s1"),
            ("s2.token", "ys-s2"),
            ("s3.token", "ys-s3"),
            ("s4.token", "ys-s4"),
            ("boss.token", "ys-boss"),
            ("li.token", "ys-li"),
            ("wang.token", "ys-wang"),
        ] {
            std::fs::write(dir.path().join(name), token).expect("write token");
        }
        let stores: String = ["S1", "S2", "S3", "S4"]
            .iter()
            .map(|code| {
                format!(
                    "[[store]]\ncode = \"{code}\"\ntoken_file = \"{}.token\"\n",
                    code.to_lowercase()
                )
            })
            .collect();
        let config = format!(
            "[hq]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n\
             timezone = \"Asia/Shanghai\"\n\n{stores}\n\
             [[region]]\nid = \"east\"\nname = \"温州片区\"\nstores = [\"S1\"]\n\
             [[region]]\nid = \"west\"\nstores = [\"S2\", \"S3\"]\n\n\
             [[user]]\nname = \"boss\"\nrole = \"admin\"\ntoken_file = \"boss.token\"\n\
             [[user]]\nname = \"li\"\nrole = \"region\"\nregion = \"east\"\ntoken_file = \"li.token\"\n\
             [[user]]\nname = \"wang\"\nrole = \"store\"\nstore = \"S3\"\ntoken_file = \"wang.token\"\n"
        );
        std::fs::write(dir.path().join("hq.toml"), config).expect("write config");
        Setup { dir }
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

/// One record of `store` made at `ts`.
fn record(store: &str, seq: u64, ts: &str, kind: &str, data: Value) -> String {
    json!({
        "id": format!("{store}/gw-1/ep1/{seq}"), "store": store, "gateway": "gw-1",
        "epoch": "ep1", "seq": seq, "ts": ts,
        "clock": {"boot": "b", "mono_ms": seq, "synced": true}, "kind": kind, "data": data,
    })
    .to_string()
}

/// A consultation of rx-5step: its five steps done (`d`) or missing (`m`) as `steps` says.
fn consultation(id: &str, clerk: &str, receipt: &str, steps: &str, opened_at: &str) -> Value {
    let keys = ["consult", "symptoms", "recommend", "insurance", "guidance"];
    let steps: Vec<Value> = keys
        .iter()
        .zip(steps.chars())
        .map(|(key, status)| {
            let done = status == 'd';
            json!({"key": key, "label": key, "at": if done { json!(opened_at) } else { Value::Null },
                   "value": if done && *key == "insurance" { json!("通过") } else { Value::Null },
                   "values": if done && *key == "symptoms" { json!(["高血压"]) } else { Value::Null },
                   "skipped": null, "clerk": clerk})
        })
        .collect();
    json!({"id": id, "flow": "rx-5step", "station": "till-1", "clerk": clerk, "customer": "ref-1",
           "opened_at": opened_at, "closed_at": opened_at, "outcome": "completed", "steps": steps,
           "scans": [], "receipt": receipt, "held_ms": null, "released_by": null})
}

fn attribution(prompt: &str, outcome: &str, clerk: Option<&str>, opened_at: &str) -> Value {
    json!({"prompt": prompt, "campaign": "c1", "station": "till-1", "sku": FLOW_SKU,
           "question": "来源", "outcome": outcome,
           "answer": if outcome == "answered" { json!("doctor") } else { Value::Null },
           "answer_label": null, "channel": "web", "clerk": clerk, "opened_at": opened_at,
           "latency_ms": null, "receipt": null})
}

/// A sale of one line: a flow product (with `consultation`) or a campaign product (with
/// `prompt`).
fn sale(receipt: &str, clerk: &str, prompt: Option<&str>, consultation: Option<&str>) -> Value {
    let mut line = json!({"sku": FLOW_SKU, "name": "参松养心胶囊", "qty": 1, "unit_price": 25.0,
                          "amount": 25.0, "prompt": prompt});
    if prompt.is_some() {
        line["campaign"] = json!("c1");
    } else {
        line["flow"] = json!("rx-5step");
    }
    let mut data = json!({"device": "register-1", "station": "till-1", "receipt": receipt,
                          "clerk": clerk, "lines": [line], "total": 25.0, "currency": "CNY",
                          "text": null});
    if let Some(id) = consultation {
        data["consultation"] = json!(id);
    }
    data
}

async fn post(client: &reqwest::Client, url: &str, store: &str, records: &[String]) {
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    let response = client
        .post(format!("{url}/v1/batches"))
        .bearer_auth(format!("ys-{}", store.to_lowercase()))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::OK, "{store}");
}

/// Posts the known records: S1 in three batches (the third late, with records of earlier
/// days), S2 and S3 one each.
async fn post_known_records(client: &reqwest::Client, url: &str) {
    let day1 = |time: &str| format!("2026-11-01T{time}.000+08:00");
    let day2 = |time: &str| format!("2026-11-02T{time}.000+08:00");
    post(
        client,
        url,
        "S1",
        &[
            // A consultation, then its sale: traced.
            record(
                "S1",
                1,
                &day1("10:05:00"),
                "consultation",
                consultation("k-1", "c-17", "R-1", "ddddm", &day1("10:00:00")),
            ),
            record(
                "S1",
                2,
                &day1("10:06:00"),
                "sale",
                sale("R-1", "c-17", None, Some("k-1")),
            ),
            record(
                "S1",
                3,
                &day1("10:10:00"),
                "attribution",
                attribution("p-1", "answered", Some("c-17"), &day1("10:09:00")),
            ),
            // A sale whose prompt timed out: tracked, never traced.
            record(
                "S1",
                4,
                &day1("10:11:00"),
                "sale",
                sale("R-2", "c-17", Some("p-2"), None),
            ),
            record(
                "S1",
                5,
                &day1("10:12:00"),
                "attribution",
                attribution("p-2", "timeout", None, &day1("10:10:30")),
            ),
            // A sale whose consultation closes later and comes in the next batch.
            record(
                "S1",
                6,
                &day2("09:00:00"),
                "sale",
                sale("R-3", "c-18", None, Some("k-3")),
            ),
            record(
                "S1",
                7,
                &day2("09:00:01"),
                "scan",
                json!({"code": FLOW_SKU}),
            ),
        ],
    )
    .await;
    post(
        client,
        url,
        "S1",
        &[record(
            "S1",
            8,
            &day2("09:30:00"),
            "consultation",
            consultation("k-3", "c-18", "R-3", "ddddd", &day2("08:55:00")),
        )],
    )
    .await;
    // Late: a store offline for days sends records of 10-31, 11-01 and 11-02 (16:30 UTC is
    // 00:30 the next day in Shanghai).
    post(
        client,
        url,
        "S1",
        &[
            record(
                "S1",
                9,
                "2026-10-31T20:00:00.000+08:00",
                "attribution",
                attribution(
                    "p-9",
                    "answered",
                    Some("c-17"),
                    "2026-10-31T19:59:00.000+08:00",
                ),
            ),
            record("S1", 10, &day1("23:59:00"), "scan", json!({"code": "1"})),
            record(
                "S1",
                11,
                "2026-11-01T16:30:00.000Z",
                "scan",
                json!({"code": "2"}),
            ),
        ],
    )
    .await;
    post(
        client,
        url,
        "S2",
        &[
            record(
                "S2",
                1,
                &day1("12:00:00"),
                "consultation",
                consultation("k-20", "c-20", "R-20", "dmm", &day1("11:50:00")),
            ),
            record(
                "S2",
                2,
                &day1("12:05:00"),
                "attribution",
                attribution("p-20", "answered", Some("c-20"), &day1("12:04:00")),
            ),
        ],
    )
    .await;
    post(
        client,
        url,
        "S3",
        &[
            record(
                "S3",
                1,
                &day2("15:00:00"),
                "attribution",
                attribution("p-30", "answered", Some("c-30"), &day2("14:59:00")),
            ),
            record(
                "S3",
                2,
                &day2("15:01:00"),
                "sale",
                sale("R-30", "c-30", Some("p-30"), None),
            ),
        ],
    )
    .await;
}

/// `GET /v1/yardsticks?QUERY` with `token`: the status and the body.
async fn yardsticks(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
) -> (StatusCode, Value) {
    let response = client
        .get(format!("{url}/v1/yardsticks?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The three values of a figures object, for short comparisons.
fn values(figures: &Value) -> [Value; 3] {
    ["completeness", "alert_response", "traceability"].map(|name| figures[name]["value"].clone())
}

fn keys(object: &Value) -> Vec<String> {
    object
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect()
}

const RANGE: &str = "from=2026-11-01&to=2026-11-02";

#[tokio::test]
async fn yardsticks_count_the_known_records_per_day_store_region_and_clerk() {
    let setup = Setup::new();
    let running = setup.start().await;
    let (url, client) = (running.url(), client());
    post_known_records(&client, &url).await;

    let (status, body) = yardsticks(&client, &url, "ys-admin", RANGE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["from"].clone(), body["to"].clone()),
        (json!("2026-11-01"), json!("2026-11-02"))
    );
    assert_eq!(body["timezone"], "Asia/Shanghai");
    assert_eq!(
        body["goals"],
        json!({"completeness": 0.85, "alert_response": 0.9, "traceability": 1.0})
    );
    assert_eq!(
        body["baselines"],
        json!({"completeness": 0.513, "alert_response": 0.387, "traceability": 0.621})
    );

    // S1: steps 4 of 5 and 5 of 5, prompts 1 of 2 (p-9 is on 10-31); sales
    // traced (R-3 by the later batch), R-2 not (its prompt timed out).
    let s1 = &body["stores"]["S1"];
    assert_eq!(
        s1["completeness"],
        json!({"value": 10.0 / 12.0, "filled": 10, "required": 12, "steps_filled": 9,
               "steps_required": 10, "prompts_answered": 1, "prompts_opened": 2})
    );
    assert_eq!(
        s1["traceability"],
        json!({"value": 2.0 / 3.0, "traced": 2, "sales": 3})
    );
    assert_eq!(
        s1["alert_response"],
        json!({"value": null, "within_24h": 0, "alerts": 0})
    );
    assert_eq!(s1["region"], "east");
    // Each day: the late batch's records counted in their own days.
    assert_eq!(
        s1["days"],
        json!([
            {"day": "2026-11-01", "completeness": 5.0 / 7.0, "traceability": 0.5, "records": 6},
            {"day": "2026-11-02", "completeness": 1.0, "traceability": 1.0, "records": 4},
        ])
    );
    let s2 = &body["stores"]["S2"];
    assert_eq!(values(s2), [json!(0.5), Value::Null, Value::Null]);
    assert_eq!(
        values(&body["stores"]["S3"]),
        [json!(1.0), Value::Null, json!(1.0)]
    );
    assert_eq!(body["stores"]["S4"]["region"], Value::Null);
    assert_eq!(
        values(&body["stores"]["S4"]),
        [Value::Null, Value::Null, Value::Null]
    );
    assert_eq!(
        body["stores"]["S4"]["days"].as_array().expect("days").len(),
        2
    );

    // Regions, the chain.
    assert_eq!(keys(&body["regions"]), ["(none)", "east", "west"]);
    let east = &body["regions"]["east"];
    assert_eq!(
        (east["name"].clone(), east["stores"].clone()),
        (json!("温州片区"), json!(1))
    );
    assert_eq!(
        values(east),
        [json!(10.0 / 12.0), Value::Null, json!(2.0 / 3.0)]
    );
    let west = &body["regions"]["west"];
    assert_eq!(west["stores"], 2);
    assert_eq!(west["completeness"]["filled"], 3);
    assert_eq!(west["completeness"]["required"], 5);
    assert_eq!(
        west["traceability"],
        json!({"value": 1.0, "traced": 1, "sales": 1})
    );
    assert_eq!(body["regions"]["(none)"]["stores"], 1);
    assert_eq!(body["chain"]["completeness"]["filled"], 13);
    assert_eq!(body["chain"]["completeness"]["required"], 17);
    assert_eq!(
        body["chain"]["traceability"],
        json!({"value": 0.75, "traced": 3, "sales": 4})
    );

    // Clerks: the opener's steps, the prompts naming them, their sales.
    assert_eq!(keys(&body["clerks"]), ["c-17", "c-18", "c-20", "c-30"]);
    let c17 = &body["clerks"]["c-17"];
    assert_eq!(c17["store"], "S1");
    assert_eq!(
        c17["completeness"],
        json!({"value": 5.0 / 6.0, "filled": 5, "required": 6, "steps_filled": 4,
               "steps_required": 5, "prompts_answered": 1, "prompts_opened": 1})
    );
    assert_eq!(
        c17["traceability"],
        json!({"value": 0.5, "traced": 1, "sales": 2})
    );
    assert_eq!(
        c17["alert_response"],
        json!({"value": null, "within_24h": 0, "alerts": 0})
    );
    assert_eq!(
        values(&body["clerks"]["c-18"]),
        [json!(1.0), Value::Null, json!(1.0)]
    );
    assert_eq!(body["supervisors"], json!({}));

    // One day: the 31st holds only the late attribution.
    let (_, body) = yardsticks(&client, &url, "ys-admin", "from=2026-10-31&to=2026-10-31").await;
    assert_eq!(body["stores"]["S1"]["completeness"]["prompts_opened"], 1);
    assert_eq!(body["stores"]["S1"]["days"][0]["records"], 1);
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn every_role_sees_its_scope_and_filters_outside_it_are_403() {
    let setup = Setup::new();
    let running = setup.start().await;
    let (url, client) = (running.url(), client());
    post_known_records(&client, &url).await;
    let (_, all) = yardsticks(&client, &url, "ys-admin", RANGE).await;
    let (_, boss) = yardsticks(&client, &url, "ys-boss", RANGE).await;
    assert_eq!(boss, all, "an admin user sees what the admin token sees");

    // A region user: its stores and clerks in full, every region's aggregate, the chain.
    let (status, li) = yardsticks(&client, &url, "ys-li", RANGE).await;
    assert_eq!(status, StatusCode::OK, "{li}");
    assert_eq!(keys(&li["stores"]), ["S1"]);
    assert_eq!(keys(&li["clerks"]), ["c-17", "c-18"]);
    assert_eq!(
        keys(&li["regions"]),
        ["east", "west"],
        "no (none) but for an admin"
    );
    assert_eq!(li["regions"]["west"], all["regions"]["west"]);
    assert_eq!(li["chain"], all["chain"]);
    for hidden in ["S2", "S3", "c-20", "c-30"] {
        assert!(!li.to_string().contains(hidden), "{hidden} in {li}");
    }
    // Another region by name: its aggregate only.
    let (status, west) = yardsticks(&client, &url, "ys-li", &format!("{RANGE}&region=west")).await;
    assert_eq!(status, StatusCode::OK, "{west}");
    assert_eq!(keys(&west["regions"]), ["west"]);
    assert_eq!(west["stores"], json!({}));
    assert_eq!(west["clerks"], json!({}));
    assert_eq!(
        west["chain"]["completeness"],
        all["regions"]["west"]["completeness"]
    );
    let (status, own) = yardsticks(&client, &url, "ys-li", &format!("{RANGE}&store=S1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["stores"]["S1"], all["stores"]["S1"]);
    assert_eq!(
        own["chain"]["traceability"],
        all["stores"]["S1"]["traceability"]
    );

    // A store user: its store.
    let (status, wang) = yardsticks(&client, &url, "ys-wang", RANGE).await;
    assert_eq!(status, StatusCode::OK, "{wang}");
    assert_eq!(keys(&wang["stores"]), ["S3"]);
    assert_eq!(keys(&wang["clerks"]), ["c-30"]);
    assert_eq!(wang["regions"], json!({}));
    assert_eq!(
        wang["chain"]["traceability"],
        all["stores"]["S3"]["traceability"]
    );
    assert_eq!(wang["stores"]["S3"], all["stores"]["S3"]);

    // Outside the scope: 403.
    for (token, query) in [
        ("ys-li", "store=S2"),
        ("ys-wang", "store=S1"),
        ("ys-wang", "region=west"),
        ("ys-wang", "region=east"),
    ] {
        let (status, body) = yardsticks(&client, &url, token, query).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token} {query}: {body}");
        assert!(
            body["error"].as_str().expect("error").contains("outside"),
            "{body}"
        );
    }
    // Not a reader: 401.
    for token in ["ys-s1", "wrong"] {
        let (status, _) = yardsticks(&client, &url, token, RANGE).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
    }
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_queries_are_400_and_the_range_defaults_to_the_last_30_days() {
    let setup = Setup::new();
    let running = setup.start().await;
    let (url, client) = (running.url(), client());
    for (query, says) in [
        ("from=2026-13-01", "'from' must be a day YYYY-MM-DD"),
        ("to=yesterday", "'to' must be a day YYYY-MM-DD"),
        ("from=2026-11-02&to=2026-11-01", "is before"),
        ("from=2025-01-01&to=2026-11-01", "at most 400"),
        ("days=7", "bad query"),
        ("region=north", "unknown region 'north'"),
        ("store=S9", "unknown store 'S9'"),
    ] {
        let (status, body) = yardsticks(&client, &url, "ys-admin", query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().expect("error");
        assert!(error.contains(says), "{query}: {error}");
    }
    let (status, body) =
        yardsticks(&client, &url, "ys-admin", "from=2025-10-08&to=2026-11-11").await;
    assert_eq!(status, StatusCode::OK, "400 days: {body}");
    // No range: the 30 days up to today in Shanghai, every day in each store's series.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let (status, body) = yardsticks(&client, &url, "ys-admin", "").await;
    assert_eq!(status, StatusCode::OK);
    let to = body["to"].as_str().expect("to");
    // A request across midnight may see the next day.
    assert!(
        to == today.to_string() || to == (today + chrono::Duration::days(1)).to_string(),
        "{to}"
    );
    let days = body["stores"]["S1"]["days"].as_array().expect("days");
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["day"], to);
    assert_eq!(days[0]["day"], body["from"]);
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn a_restart_keeps_every_figure() {
    let setup = Setup::new();
    let running = setup.start().await;
    let (url, client) = (running.url(), client());
    post_known_records(&client, &url).await;
    let mut before = Vec::new();
    for (token, query) in [
        ("ys-admin", RANGE),
        ("ys-li", RANGE),
        ("ys-wang", RANGE),
        ("ys-admin", "from=2026-10-31&to=2026-10-31"),
    ] {
        before.push(yardsticks(&client, &url, token, query).await.1);
    }
    running.stop().await.expect("stop");
    let running = setup.start().await;
    let url = running.url();
    let mut after = Vec::new();
    for (token, query) in [
        ("ys-admin", RANGE),
        ("ys-li", RANGE),
        ("ys-wang", RANGE),
        ("ys-admin", "from=2026-10-31&to=2026-10-31"),
    ] {
        after.push(yardsticks(&client, &url, token, query).await.1);
    }
    assert_eq!(after, before);
    assert_eq!(after[0]["stores"]["S1"]["traceability"]["traced"], 2);
    running.stop().await.expect("stop");
}
