//! The consultation flow on a real gateway: a real pty scanner whose product scan is held back
//! from a real pty POS until the steps before `hold` are done, then arrives byte-exact while
//! other scans flow meanwhile; the hold timeout; kill -9 while a scan is held and in the middle
//! of a consultation; a json-register sale with a medical-insurance payment; the API's errors;
//! and a member id that must appear nowhere (journal files, HQ, logs).

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::hq_e2e::HqSite;
use crate::prompts::post;

/// The five-step flow of the docs, holding at `recommend` for `HOLD_TIMEOUT`.
const FLOW: &str = r#"
[[flow]]
id = "rx-5step"
name = "处方推荐五步法"
skus = ["6901234567892"]
steps = [ { key = "consult", label = "客户问诊" },
          { key = "symptoms", label = "症状记录", choose = ["高血压", "心悸", "失眠", "胸闷"], multi = true },
          { key = "recommend", label = "药品推荐", auto = "scan" },
          { key = "insurance", label = "医保核验", choose = ["通过", "未通过", "自费"], auto = "sale" },
          { key = "guidance", label = "用药指导" } ]
skip_reasons = ["客户明确拒绝", "复购老客", "紧急情况"]
hold = "recommend"
hold_timeout = "HOLD_TIMEOUT"
"#;

/// The flow product's scan, as the scanner sends it.
const HELD: &[u8] = b"]E06901234567892\r\n";

/// A store with a scanner passing through to `pos` and the flow; returns the POS link.
fn store_with_flow(store: &Store, hold_timeout: &str) -> std::path::PathBuf {
    let pos = store.path("pos");
    store.write_config(&format!("passthrough = \"{}\"", pos.display()));
    store.append_config(&FLOW.replace("HOLD_TIMEOUT", hold_timeout));
    pos
}

fn open_pos(link: &Path) -> SerialStream {
    tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the POS side of the passthrough")
}

/// A running counter: a store with the flow (its held scans waiting `hold_timeout` at most),
/// its pty scanner connected to a running gateway, and the POS side of the passthrough.
struct Counter {
    store: Store,
    scanner: PtyScanner,
    gateway: Gateway,
    pos: SerialStream,
}

async fn counter(hold_timeout: &str) -> Counter {
    let store = Store::new();
    let link = store_with_flow(&store, hold_timeout);
    let scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let pos = open_pos(&link);
    Counter {
        store,
        scanner,
        gateway,
        pos,
    }
}

/// Reads exactly `expected.len()` bytes from the POS and checks them: what the POS got next.
async fn pos_receives(pos: &mut SerialStream, expected: &[u8]) {
    let mut received = vec![0u8; expected.len()];
    tokio::time::timeout(DEADLINE, pos.read_exact(&mut received))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{:?} did not reach the POS",
                String::from_utf8_lossy(expected)
            )
        })
        .expect("read the POS side");
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(expected),
        "what the POS got next"
    );
}

/// The station's open consultations.
async fn open_consultations(gateway: &Gateway) -> Vec<Value> {
    let (code, body) = gateway
        .get("/api/v1/consultations?station=till-1")
        .await
        .expect("the API answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until the station has an open consultation holding a scan; returns it.
async fn wait_held(gateway: &Gateway) -> Value {
    gateway
        .wait_for("a held scan", |g| async move {
            open_consultations(g)
                .await
                .iter()
                .any(|c| !c["held"].is_null())
        })
        .await;
    open_consultations(gateway).await.remove(0)
}

async fn step(gateway: &Gateway, id: &str, key: &str, body: Value) -> (u16, Value) {
    post(
        gateway,
        &format!("/api/v1/consultations/{id}/steps/{key}"),
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn a_held_scan_reaches_the_pos_byte_exact_once_the_steps_are_done_and_others_pass_meanwhile()
{
    let Counter {
        store,
        mut scanner,
        gateway,
        mut pos,
    } = counter("120s").await;

    // The flow product's scan opens a consultation and is held; a scan of another product
    // right behind it goes straight on: the POS gets it first.
    scanner.send(HELD).await;
    scanner.send(b"]E04006381333931\r\n").await;
    pos_receives(&mut pos, b"]E04006381333931\r\n").await;
    let held = wait_held(&gateway).await;
    let id = held["id"].as_str().expect("id").to_owned();
    assert_eq!(
        held["steps"][2]["value"], "6901234567892",
        "药品推荐 done by the scan"
    );

    // 客户问诊 done: 症状记录 is still open, so the scan still waits; other scans still pass.
    let (code, body) = step(&gateway, &id, "consult", json!({"clerk": "c-17"})).await;
    assert_eq!(code, 200, "{body}");
    scanner.send(b"]E0400638133393\r\n").await;
    pos_receives(&mut pos, b"]E0400638133393\r\n").await;

    // 症状记录 chosen: the held scan goes on, byte for byte, before the answer.
    let (code, body) = step(
        &gateway,
        &id,
        "symptoms",
        json!({"values": ["失眠", "心悸"], "clerk": "c-17"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["released_by"], "steps");
    assert!(body["held"].is_null());
    assert!(body["held_ms"].as_u64().is_some());
    pos_receives(&mut pos, HELD).await;

    assert!(gateway.stop().await.success());
    let records = store.dump();
    let steps: Vec<&str> = of_kind(&records, "consultation_step")
        .iter()
        .map(|record| record["data"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["recommend", "consult", "symptoms"]);
    assert_eq!(of_kind(&records, "scan").len(), 3);
}

/// A held frame's CR and its LF arrive in separate reads: the LF stays with the held frame
/// (the POS never gets a lone LF ahead of it), and the scan after it passes as usual.
#[tokio::test]
async fn the_lf_of_a_held_frame_read_apart_from_its_cr_waits_with_it() {
    let Counter {
        store: _store,
        mut scanner,
        gateway,
        mut pos,
    } = counter("120s").await;

    scanner.send(b"]E06901234567892\r").await;
    let id = wait_held(&gateway).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The LF on its own read, then another product's scan.
    scanner.send(b"\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    scanner.send(b"]E04006381333931\r\n").await;
    pos_receives(&mut pos, b"]E04006381333931\r\n").await;

    for (key, body) in [
        ("consult", json!({})),
        ("symptoms", json!({"skip": "复购老客"})),
    ] {
        let (code, body) = step(&gateway, &id, key, body).await;
        assert_eq!(code, 200, "{key}: {body}");
    }
    pos_receives(&mut pos, HELD).await;
    assert!(gateway.stop().await.success());
}

#[tokio::test]
async fn a_held_scan_goes_on_at_the_hold_timeout_and_the_consultation_says_so() {
    let Counter {
        store,
        mut scanner,
        gateway,
        mut pos,
    } = counter("1s").await;

    scanner.send(HELD).await;
    let held = wait_held(&gateway).await;
    pos_receives(&mut pos, HELD).await;
    let after = open_consultations(&gateway).await.remove(0);
    assert_eq!(after["id"], held["id"]);
    assert_eq!(after["released_by"], "timeout");
    assert!(after["held_ms"].as_u64().expect("held_ms") >= 1000);

    let id = after["id"].as_str().unwrap();
    let (code, body) = post(
        &gateway,
        &format!("/api/v1/consultations/{id}/close"),
        r#"{"outcome":"abandoned"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let [record] = &of_kind(&records, "consultation")[..] else {
        panic!("one consultation record")
    };
    assert_eq!(record["data"]["released_by"], "timeout");
    assert_eq!(record["data"]["outcome"], "abandoned");
    assert_eq!(record["data"]["scans"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn kill_9_keeps_every_answered_step_and_a_scan_held_at_the_crash_is_recorded_as_lost() {
    let Counter {
        store,
        mut scanner,
        gateway,
        pos: _pos,
    } = counter("120s").await;

    scanner.send(HELD).await;
    let id = wait_held(&gateway).await["id"].as_str().unwrap().to_owned();
    let (code, _) = step(&gateway, &id, "consult", json!({})).await;
    assert_eq!(code, 200);
    gateway.kill9().await;

    let gateway = Gateway::start(&store).await;
    let [restored] = &open_consultations(&gateway).await[..] else {
        panic!("the consultation survives the crash")
    };
    assert_eq!(restored["id"], id.as_str());
    assert!(restored["steps"][0]["at"].is_string(), "客户问诊 kept");
    assert!(restored["steps"][2]["at"].is_string(), "药品推荐 kept");
    assert_eq!(restored["released_by"], "restart", "the POS never got it");
    assert!(restored["held"].is_null());

    // It goes on: the clerk finishes and closes it.
    for (key, body) in [
        ("symptoms", json!({"skip": "复购老客"})),
        ("insurance", json!({"value": "自费"})),
        ("guidance", json!({})),
    ] {
        let (code, body) = step(&gateway, &id, key, body).await;
        assert_eq!(code, 200, "{key}: {body}");
    }
    let (code, closed) = post(
        &gateway,
        &format!("/api/v1/consultations/{id}/close"),
        r#"{"outcome":"completed"}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(closed["state"], "completed");
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let [record] = &of_kind(&records, "consultation")[..] else {
        panic!("one consultation record")
    };
    let data = &record["data"];
    assert_eq!(data["outcome"], "completed");
    assert_eq!(data["released_by"], "restart");
    assert_eq!(data["steps"][1]["skipped"], "复购老客");
    assert!(data["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["at"].is_string()));
    let keys: Vec<&str> = of_kind(&records, "consultation_step")
        .iter()
        .map(|r| r["data"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["recommend", "consult", "symptoms", "insurance", "guidance"]
    );
}

#[tokio::test]
async fn a_json_register_sale_with_medical_insurance_completes_the_insurance_step_and_links() {
    let store = Store::new();
    store_with_flow(&store, "120s");
    store.append_config(&format!(
        "[[device]]\nid = \"register-1\"\nrole = \"register\"\ntransport = \"serial\"\n\
         station = \"till-1\"\nprofile = \"json-register\"\npath = \"{}\"\n",
        store.path("register").display()
    ));
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;
    let _pos = open_pos(&store.path("pos"));

    let (code, opened) = post(
        &gateway,
        "/api/v1/consultations",
        r#"{"station":"till-1","flow":"rx-5step","clerk":"c-17"}"#,
    )
    .await;
    assert_eq!(code, 201, "{opened}");
    let id = opened["id"].as_str().unwrap().to_owned();
    for (key, body) in [
        ("consult", json!({})),
        ("symptoms", json!({"values": ["高血压"]})),
    ] {
        assert_eq!(step(&gateway, &id, key, body).await.0, 200);
    }
    // Steps settled before the scan: it is not held at all.
    scanner.send(HELD).await;
    gateway
        .wait_for("the scan joins", |g| async move {
            open_consultations(g).await[0]["scans"]
                .as_array()
                .is_some_and(|s| s.len() == 1)
        })
        .await;
    let sale = r#"{"receipt":"R-1001","clerk":"c-17","lines":[{"sku":"6901234567892","qty":1,"amount":25}],"total":25,"payments":[{"method":"medical_insurance","status":"approved"}]}"#;
    register.send(format!("{sale}\n").as_bytes()).await;
    gateway
        .wait_for("医保核验 from the sale", |g| async move {
            open_consultations(g).await[0]["steps"][3]["value"] == "通过"
        })
        .await;
    let done = step(&gateway, &id, "guidance", json!({})).await;
    assert_eq!(done.0, 200);
    assert_eq!(
        done.1["state"], "completed",
        "all steps and the sale: closed"
    );
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let [consultation] = &of_kind(&records, "consultation")[..] else {
        panic!("one consultation")
    };
    assert_eq!(consultation["data"]["receipt"], "R-1001");
    assert_eq!(consultation["data"]["released_by"], Value::Null);
    let [sale] = &of_kind(&records, "sale")[..] else {
        panic!("one sale")
    };
    assert_eq!(sale["data"]["consultation"], id.as_str());
    assert_eq!(sale["data"]["payments"][0]["status"], "approved");
    // The line of the flow's product names the flow; no campaign is configured.
    assert_eq!(sale["data"]["lines"][0]["flow"], "rx-5step");
    assert_eq!(sale["data"]["lines"][0].get("campaign"), None);
}

#[tokio::test]
async fn the_consultation_api_answers_404_409_and_422() {
    let store = Store::new();
    store_with_flow(&store, "120s");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    let (code, body) = post(
        &gateway,
        "/api/v1/consultations",
        r#"{"station":"till-1","flow":"nope"}"#,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let (code, _) = post(
        &gateway,
        "/api/v1/consultations",
        r#"{"station":"till-9","flow":"rx-5step"}"#,
    )
    .await;
    assert_eq!(code, 422, "an unknown station");
    // A member id sent as a number is refused without being repeated in the answer.
    let (code, body) = post(
        &gateway,
        "/api/v1/consultations",
        r#"{"station":"till-1","flow":"rx-5step","customer":88001234}"#,
    )
    .await;
    assert_eq!(code, 400);
    assert!(!body.to_string().contains("88001234"), "{body}");
    let (code, opened) = post(
        &gateway,
        "/api/v1/consultations",
        r#"{"station":"till-1","flow":"rx-5step"}"#,
    )
    .await;
    assert_eq!(code, 201);
    let id = opened["id"].as_str().unwrap();
    assert_eq!(step(&gateway, "nope", "consult", json!({})).await.0, 404);
    assert_eq!(step(&gateway, id, "nope", json!({})).await.0, 404);
    assert_eq!(
        step(&gateway, id, "symptoms", json!({"value": "头痛"}))
            .await
            .0,
        422
    );
    assert_eq!(
        step(&gateway, id, "consult", json!({"value": "free text"}))
            .await
            .0,
        422
    );
    assert_eq!(
        step(&gateway, id, "consult", json!({"skip": "不想"}))
            .await
            .0,
        422
    );
    let (code, body) = step(&gateway, id, "consult", json!({"skip": "紧急情况"})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["steps"][0]["skipped"], "紧急情况");
    let close = format!("/api/v1/consultations/{id}/close");
    let (code, closed) = post(&gateway, &close, r#"{"outcome":"completed"}"#).await;
    assert_eq!(code, 200);
    assert_eq!(closed["state"], "incomplete", "steps were left open");
    assert_eq!(
        post(&gateway, &close, r#"{"outcome":"completed"}"#).await.0,
        409
    );
    assert_eq!(step(&gateway, id, "consult", json!({})).await.0, 409);
    assert!(gateway.stop().await.success());
}

/// PIPL: a member id typed at the counter becomes a reference; the id itself is nowhere: not
/// in the journal's files, not at HQ, not in the gateway's or HQ's log lines.
#[tokio::test]
async fn a_member_id_appears_nowhere_but_as_its_reference() {
    const MEMBER: &str = "M20261206-88001234";
    let hq_site = HqSite::new();
    let hq = hq_site.start().await;
    let store = Store::new();
    store_with_flow(&store, "120s");
    std::fs::write(
        store.path("customer.key"),
        "a key of sixteen bytes or more\n",
    )
    .unwrap();
    store.append_config(&format!(
        "[privacy]\ncustomer_key_file = \"{}\"\n",
        store.path("customer.key").display()
    ));
    store.add_uplink(&hq_site.endpoint(), crate::hq_e2e::STORE_TOKEN, "");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;

    let body = json!({"station": "till-1", "flow": "rx-5step", "customer": MEMBER}).to_string();
    let (code, opened) = post(&gateway, "/api/v1/consultations", &body).await;
    assert_eq!(code, 201, "{opened}");
    let reference = opened["customer"].as_str().expect("a reference").to_owned();
    assert_eq!(reference.len(), 32);
    let id = opened["id"].as_str().unwrap();
    post(
        &gateway,
        &format!("/api/v1/consultations/{id}/close"),
        r#"{"outcome":"abandoned"}"#,
    )
    .await;
    gateway
        .wait_for("HQ has the consultation", |_| async {
            hq_site
                .records()
                .await
                .iter()
                .any(|record| record["kind"] == "consultation")
        })
        .await;
    let at_hq = hq_site.records().await;
    let consultation = at_hq.iter().find(|r| r["kind"] == "consultation").unwrap();
    assert_eq!(consultation["data"]["customer"], reference.as_str());
    let digits = &MEMBER[MEMBER.len() - 8..];
    assert_eq!(
        gateway.log_count(digits),
        0,
        "the gateway logged the member id"
    );
    assert_eq!(hq.log_count(digits), 0, "HQ logged the member id");
    assert!(gateway.stop().await.success());
    assert!(hq.stop().await.success());

    let mut files = Vec::new();
    collect_files(&store.data_dir(), &mut files);
    collect_files(&hq_site.data_dir(), &mut files);
    assert!(files.len() > 3, "files were written: {files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !contains(&bytes, digits.as_bytes()),
            "the member id is in {}",
            file.display()
        );
    }
}

fn collect_files(folder: &Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// SIGHUP puts a changed flow in force for new consultations; one already open keeps its own.
#[tokio::test]
async fn a_reloaded_flow_is_used_by_new_consultations() {
    let store = Store::new();
    store_with_flow(&store, "120s");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    let open = |flow: &'static str| {
        let gateway = &gateway;
        async move {
            post(
                gateway,
                "/api/v1/consultations",
                &format!(r#"{{"station":"till-1","flow":"{flow}"}}"#),
            )
            .await
        }
    };
    let (code, before) = open("rx-5step").await;
    assert_eq!(code, 201);
    assert_eq!(open("otc-3step").await.0, 422);

    let config = std::fs::read_to_string(store.config_path()).unwrap();
    std::fs::write(
        store.config_path(),
        config.replace("id = \"rx-5step\"", "id = \"otc-3step\""),
    )
    .unwrap();
    gateway.hangup();
    gateway.wait_log("reloaded: campaigns", 1).await;
    let (code, after) = open("otc-3step").await;
    assert_eq!(code, 201, "{after}");
    assert_eq!(
        open("rx-5step").await.0,
        422,
        "the old flow is gone for new ones"
    );
    // The consultation opened before the reload goes on under its flow.
    let id = before["id"].as_str().unwrap();
    assert_eq!(step(&gateway, id, "consult", json!({})).await.0, 200);
    assert!(gateway.stop().await.success());
}
