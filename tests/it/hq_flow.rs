//! The consultation flow at HQ (`posgw hq`) over real HTTP on loopback: consultation records
//! posted through `POST /v1/batches` become exact step-completeness figures in `/v1/stats`
//! (per store, clerk and step, with skip reasons; kept across duplicates and a restart), a
//! malformed one is refused with its line, and `/v1/trace` follows a receipt to its consultation.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::hq::{
    lines, on_both_backends, record, Backend, Folder, Receiver, ADMIN, TOKEN_1, TOKEN_2,
};

on_both_backends!(
    stats_give_step_completeness_per_store_clerk_and_step,
    a_malformed_consultation_is_refused_with_its_line_and_the_rest_stored_alone,
    a_receipt_is_traced_to_its_consultation_steps_and_scans,
);

/// The five-step flow of the contract, as the gateway's consultation records carry it.
pub(crate) const FLOW: &str = "rx-5step";
pub(crate) const STEPS: [(&str, &str); 5] = [
    ("consult", "客户问诊"),
    ("symptoms", "症状记录"),
    ("recommend", "药品推荐"),
    ("insurance", "医保核验"),
    ("guidance", "用药指导"),
];
pub(crate) const REFUSED: &str = "客户明确拒绝";
pub(crate) const URGENT: &str = "紧急情况";
pub(crate) const REGULAR: &str = "复购老客";

/// A consultation's `data`: `steps` has one letter per step of [`STEPS`]: `d` done, `m`
/// missing, or a skip: `r` [`REFUSED`], `u` [`URGENT`], `o` [`REGULAR`].
pub(crate) struct Consultation<'a> {
    pub id: &'a str,
    pub clerk: Option<&'a str>,
    pub steps: &'a str,
    /// `released_by` and `held_ms` of its held scan.
    pub held: Option<(&'a str, u64)>,
    pub receipt: Option<&'a str>,
    pub scans: Vec<String>,
}

impl Consultation<'_> {
    pub(crate) fn data(&self) -> Value {
        let steps: Vec<Value> = STEPS
            .iter()
            .zip(self.steps.chars())
            .enumerate()
            .map(|(index, ((key, label), letter))| {
                let at = (letter != 'm').then(|| format!("2026-11-27T16:0{index}:30.000+08:00"));
                let skipped = match letter {
                    'r' => Some(REFUSED),
                    'u' => Some(URGENT),
                    'o' => Some(REGULAR),
                    _ => None,
                };
                let value = (letter == 'd' && *key == "symptoms").then_some("心悸");
                json!({"key": key, "label": label, "at": at, "value": value,
                       "values": null, "skipped": skipped,
                       "clerk": at.as_ref().and(self.clerk)})
            })
            .collect();
        let outcome = if self.steps.ends_with("mmm") {
            "abandoned"
        } else if self.steps.contains('m') {
            "incomplete"
        } else {
            "completed"
        };
        json!({
            "id": self.id, "flow": FLOW, "station": "till-1", "clerk": self.clerk,
            "customer": null, "opened_at": "2026-11-27T16:00:00.000+08:00",
            "closed_at": "2026-11-27T16:09:00.000+08:00", "outcome": outcome, "steps": steps,
            "scans": self.scans, "receipt": self.receipt,
            "held_ms": self.held.map(|(_, ms)| ms), "released_by": self.held.map(|(by, _)| by),
        })
    }
}

/// `released_by` and `held_ms` of a consultation's held scan.
pub(crate) type Held = Option<(&'static str, u64)>;

/// The ten consultations of store S1: 症状记录 done in 4, skipped in 3 (客户明确拒绝 twice,
/// 紧急情况 once), missing in 3: 40 %.
#[rustfmt::skip]
pub(crate) const S1_CONSULTATIONS: [(&str, &str, Held); 10] = [
    ("c-17", "ddddd", Some(("steps", 1000))),
    ("c-17", "ddddd", Some(("steps", 2000))),
    ("c-17", "ddddd", Some(("steps", 3000))),
    ("c-17", "ddddd", Some(("steps", 4000))),
    ("c-17", "drddm", Some(("steps", 5000))),
    ("c-17", "dudom", Some(("timeout", 120_000))),
    ("c-21", "drdom", None),
    ("c-21", "dmdom", None),
    ("c-21", "dmdmm", None),
    ("c-21", "dmmmm", Some(("restart", 7000))),
];

/// S1's batch: the ten consultations, two consultation_step records and a scan; the records
/// of the step changes are stored and counted, not figured.
fn s1_batch() -> Vec<String> {
    let mut out = vec![record(
        "S1",
        "gw-1",
        1,
        "scan",
        r#"{"code":"6901234567892"}"#,
    )];
    out.push(record(
        "S1",
        "gw-1",
        2,
        "consultation_step",
        &json!({"consultation": "s1-0", "flow": FLOW, "station": "till-1", "key": "consult",
                "at": "2026-11-27T16:00:30.000+08:00", "value": null, "values": null,
                "skipped": null, "clerk": "c-17"})
        .to_string(),
    ));
    out.push(record(
        "S1",
        "gw-1",
        3,
        "consultation_step",
        &json!({"consultation": "s1-4", "flow": FLOW, "station": "till-1", "key": "symptoms",
                "at": "2026-11-27T16:01:30.000+08:00", "value": null, "values": null,
                "skipped": REFUSED, "clerk": "c-17"})
        .to_string(),
    ));
    for (index, (clerk, steps, held)) in S1_CONSULTATIONS.iter().enumerate() {
        let id = format!("s1-{index}");
        let data = Consultation {
            id: &id,
            clerk: Some(clerk),
            steps,
            held: *held,
            receipt: None,
            scans: Vec::new(),
        }
        .data();
        out.push(record(
            "S1",
            "gw-1",
            4 + index as u64,
            "consultation",
            &data.to_string(),
        ));
    }
    out
}

/// S2's batch: two consultations with every step done, one without a clerk.
fn s2_batch() -> Vec<String> {
    [Some("c-30"), None]
        .iter()
        .enumerate()
        .map(|(index, clerk)| {
            let id = format!("s2-{index}");
            let data = Consultation {
                id: &id,
                clerk: *clerk,
                steps: "ddddd",
                held: Some(("steps", 9000)),
                receipt: None,
                scans: Vec::new(),
            }
            .data();
            record(
                "S2",
                "gw-1",
                1 + index as u64,
                "consultation",
                &data.to_string(),
            )
        })
        .collect()
}

async fn post_flows(hq: &Receiver) {
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&s1_batch()), "gzip").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = hq.post(Some(TOKEN_2), &lines(&s2_batch()), "zstd").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The step of `figures` (a flow or a clerk's figures) with `key`.
fn step<'a>(figures: &'a Value, key: &str) -> &'a Value {
    figures["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|step| step["key"] == key)
        .unwrap_or_else(|| panic!("no step {key} in {figures}"))
}

fn check_flow_stats(stats: &Value) {
    let s1 = &stats["stores"]["S1"];
    assert_eq!(
        s1["by_kind"],
        json!({"consultation": 10, "consultation_step": 2, "scan": 1})
    );
    let flow = &s1["flows"][FLOW];
    assert_eq!(flow["consultations"], 10);
    assert_eq!(
        flow["outcomes"],
        json!({"completed": 4, "incomplete": 5, "abandoned": 1})
    );
    // Done: consult 10, symptoms 4, recommend 9, insurance 5, guidance 4 of 5 x 10 steps.
    assert_eq!(flow["completeness"], 0.64);
    let keys: Vec<&str> = flow["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|step| step["key"].as_str().expect("key"))
        .collect();
    assert_eq!(
        keys,
        STEPS.map(|(key, _)| key),
        "the steps in the flow's order"
    );
    // 温州鹿城店's 症状记录 completeness is only 40 %.
    assert_eq!(
        *step(flow, "symptoms"),
        json!({"key": "symptoms", "label": "症状记录", "consultations": 10,
               "done": 4, "skipped": 3, "missing": 3, "completeness": 0.4,
               "skip_reasons": {REFUSED: 2, URGENT: 1}})
    );
    assert_eq!(
        *step(flow, "insurance"),
        json!({"key": "insurance", "label": "医保核验", "consultations": 10,
               "done": 5, "skipped": 3, "missing": 2, "completeness": 0.5,
               "skip_reasons": {REGULAR: 3}})
    );
    assert_eq!(step(flow, "guidance")["missing"], 6);
    // Per clerk: the one who opened the consultation, for every step of it.
    let c17 = &flow["clerks"]["c-17"];
    assert_eq!(c17["consultations"], 6);
    assert_eq!(
        c17["outcomes"],
        json!({"completed": 4, "incomplete": 2, "abandoned": 0})
    );
    assert_eq!(c17["completeness"], 25.0 / 30.0);
    let symptoms = step(c17, "symptoms");
    assert_eq!(
        (
            &symptoms["done"],
            &symptoms["skipped"],
            &symptoms["missing"]
        ),
        (&json!(4), &json!(2), &json!(0))
    );
    assert_eq!(symptoms["completeness"], 4.0 / 6.0);
    assert_eq!(symptoms["skip_reasons"], json!({REFUSED: 1, URGENT: 1}));
    let c21 = &flow["clerks"]["c-21"];
    assert_eq!(c21["completeness"], 0.35);
    assert_eq!(step(c21, "symptoms")["completeness"], 0.0);
    assert_eq!(step(c21, "symptoms")["missing"], 3);
    // Held scans by how they went on.
    assert_eq!(
        flow["held"],
        json!({"steps": {"consultations": 5, "median_held_ms": 3000.0},
               "timeout": {"consultations": 1, "median_held_ms": 120000.0},
               "restart": {"consultations": 1, "median_held_ms": 7000.0}})
    );

    // S2, and the flow over all stores.
    let s2 = &stats["stores"]["S2"]["flows"][FLOW];
    assert_eq!(s2["completeness"], 1.0);
    assert_eq!(
        s2["clerks"].as_object().expect("clerks").len(),
        1,
        "a consultation without a clerk is only in the flow's figures"
    );
    let all = &stats["flows"][FLOW];
    assert_eq!(all["consultations"], 12);
    assert_eq!(all["completeness"], 0.7);
    let symptoms = step(all, "symptoms");
    assert_eq!(
        (
            &symptoms["done"],
            &symptoms["consultations"],
            &symptoms["completeness"]
        ),
        (&json!(6), &json!(12), &json!(0.5))
    );
    assert_eq!(
        all["held"]["steps"],
        json!({"consultations": 7, "median_held_ms": 4000.0}),
        "1 to 5 s at S1, 9 s twice at S2"
    );
    assert_eq!(all["clerks"]["c-17"], flow["clerks"]["c-17"]);
    assert_eq!(stats["campaigns"], json!({}));
}

async fn stats_give_step_completeness_per_store_clerk_and_step(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    let empty = hq.stats().await;
    assert_eq!(empty["flows"], json!({}));
    post_flows(&hq).await;
    check_flow_stats(&hq.stats().await);
    // Duplicates change no figure.
    post_flows(&hq).await;
    let stats = hq.stats().await;
    check_flow_stats(&stats);
    assert_eq!(stats["stores"]["S1"]["duplicates"], 13);
    hq.stop().await;

    // A restart rebuilds the figures from the stored summaries.
    let hq = folder.start().await;
    check_flow_stats(&hq.stats().await);
    hq.stop().await;
}

async fn a_malformed_consultation_is_refused_with_its_line_and_the_rest_stored_alone(
    backend: Backend,
) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    let good = |seq: u64, id: &str| {
        let data = Consultation {
            id,
            clerk: Some("c-17"),
            steps: "ddddd",
            held: None,
            receipt: None,
            scans: Vec::new(),
        }
        .data();
        record("S1", "gw-1", seq, "consultation", &data.to_string())
    };
    let mut bad_data = Consultation {
        id: "bad",
        clerk: Some("c-17"),
        steps: "ddddd",
        held: None,
        receipt: None,
        scans: Vec::new(),
    }
    .data();
    bad_data["outcome"] = json!("closed");
    let batch = [
        record("S1", "gw-1", 1, "scan", r#"{"code":"6901234567892"}"#),
        good(2, "ok-1"),
        record("S1", "gw-1", 3, "consultation", &bad_data.to_string()),
        good(4, "ok-2"),
    ];
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&batch), "gzip").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["line"], 3);
    assert_eq!(
        body["error"],
        "line 3: consultation 'data.outcome' must be one of completed, incomplete, abandoned, \
         found 'closed'"
    );
    // A refused batch stores nothing: the gateway bisects it (docs/hq-protocol.md).
    assert!(hq.all_records().await.is_empty());
    assert_eq!(hq.stats().await["flows"], json!({}));

    // The halves and quarters it then sends: the bad record alone is refused (and goes to the
    // gateway's dead letters), every other one is stored.
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&batch[..2]), "gzip").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"accepted": 2, "duplicates": 0}))
    );
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&batch[2..3]), "gzip").await;
    assert_eq!(
        (status, &body["line"]),
        (StatusCode::BAD_REQUEST, &json!(1))
    );
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&batch[3..]), "gzip").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"accepted": 1, "duplicates": 0}))
    );
    let stored: Vec<Value> = hq.all_records().await;
    let seqs: Vec<&Value> = stored.iter().map(|record| &record["seq"]).collect();
    assert_eq!(seqs, [&json!(1), &json!(2), &json!(4)]);
    let stats = hq.stats().await;
    assert_eq!(stats["flows"][FLOW]["consultations"], 2);
    assert_eq!(stats["flows"][FLOW]["completeness"], 1.0);
    hq.stop().await;
}

async fn a_receipt_is_traced_to_its_consultation_steps_and_scans(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    let scan_id = "S1/gw-1/7f3a9c21/1";
    let consultation = Consultation {
        id: "k7q2m9xw",
        clerk: Some("c-17"),
        steps: "drddd",
        held: Some(("steps", 41_000)),
        receipt: Some("R-2001"),
        scans: vec![scan_id.to_string()],
    }
    .data();
    let sale = json!({
        "device": "register-1", "station": "till-1", "receipt": "R-2001", "clerk": "c-17",
        "lines": [{"sku": "6901234567892", "name": "硝苯地平缓释片", "qty": 1,
                   "unit_price": 32.5, "amount": 32.5, "prompt": null}],
        "total": 32.5, "currency": "CNY",
        "payments": [{"method": "medical_insurance", "status": "approved"}],
        "consultation": "k7q2m9xw",
    });
    let batch = [
        record(
            "S1",
            "gw-1",
            1,
            "scan",
            r#"{"device":"scanner-1","station":"till-1","code":"6901234567892"}"#,
        ),
        record("S1", "gw-1", 2, "sale", &sale.to_string()),
        record("S1", "gw-1", 3, "consultation", &consultation.to_string()),
    ];
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&batch), "identity").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let trace = |token: &'static str| {
        hq.client
            .get(format!("{}/v1/trace?receipt=R-2001", hq.url))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        trace(TOKEN_1).await.expect("get").status(),
        StatusCode::UNAUTHORIZED
    );
    let response = trace(ADMIN).await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.expect("json");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["sale"]["data"]["consultation"], "k7q2m9xw");
    let traced = &report["consultation"];
    assert_eq!(traced["id"], "k7q2m9xw");
    assert_eq!(traced["record"]["hq_seq"], 3);
    let steps = &traced["record"]["data"]["steps"];
    assert_eq!(steps[1]["label"], "症状记录");
    assert_eq!(steps[1]["skipped"], REFUSED);
    assert_eq!(traced["record"]["data"]["released_by"], "steps");
    assert_eq!(traced["scans"][0]["id"], scan_id);
    assert_eq!(traced["scans"][0]["scan"]["data"]["device"], "scanner-1");
    hq.stop().await;
}

/// What docs/hq-protocol.md promises, with both real ends: a gateway whose journal holds a
/// malformed consultation among good records sends them to `posgw hq`, gets the 400, bisects
/// down to that one record and dead-letters it; every other record is at HQ once, and the
/// figures count the good consultations.
#[tokio::test]
async fn the_gateway_dead_letters_a_malformed_consultation_and_hq_stores_the_rest() {
    use posgw::journal::{self, JournalConfig};
    use posgw::record::Kind;

    use crate::harness::{Gateway, Store};
    use crate::hq_e2e::{HqSite, ADMIN_TOKEN, STORE_TOKEN};

    let site = HqSite::new();
    let hq = site.start().await;
    let store = Store::new();
    store.write_devices("");
    // The journal as the gateway's consultation engine would have left it, one record bad.
    let opened = journal::open(JournalConfig {
        data_dir: store.data_dir(),
        store: "WZ-LC-001".into(),
        gateway: "gw-test".into(),
        flush: std::time::Duration::from_millis(5),
        version: "test",
        max_bytes: None,
    })
    .await
    .expect("open journal");
    let journal = opened.handle;
    let scan = journal
        .append_value(
            Kind::Scan,
            &json!({"device": "scanner-1", "station": "till-1", "code": "6901234567892"}),
        )
        .await
        .expect("append");
    journal
        .append_value(
            Kind::ConsultationStep,
            &json!({"consultation": "k1", "flow": FLOW, "station": "till-1", "key": "consult",
                    "at": "2026-11-27T16:00:30.000+08:00", "value": null, "values": null,
                    "skipped": null, "clerk": "c-17"}),
        )
        .await
        .expect("append");
    let good = |id: &'static str, steps: &'static str, scans: Vec<String>| Consultation {
        id,
        clerk: Some("c-17"),
        steps,
        held: Some(("steps", 30_000)),
        receipt: Some("R-1"),
        scans,
    };
    journal
        .append_value(
            Kind::Consultation,
            &good("k1", "drddd", vec![scan.id]).data(),
        )
        .await
        .expect("append");
    let mut bad = good("bad", "ddddd", Vec::new()).data();
    bad["steps"] = json!({"consult": "done"});
    journal
        .append_value(Kind::Consultation, &bad)
        .await
        .expect("append");
    journal
        .append_value(Kind::Consultation, &good("k2", "dmddm", Vec::new()).data())
        .await
        .expect("append");
    journal.close().await.expect("close journal");

    store.add_uplink(&site.endpoint(), STORE_TOKEN, "");
    let gateway = Gateway::start(&store).await;
    gateway
        .wait_for("an empty backlog", |g| async move {
            g.status().await["journal"]["backlog_records"] == 0
        })
        .await;
    let status = gateway.status().await;
    assert_eq!(status["uplink"]["dead_lettered"], 1, "{status}");
    assert!(gateway.stop().await.success());
    let dead = store.dump_dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["data"]["id"], "bad");

    let records = site.records().await;
    let consultations: Vec<&Value> = records
        .iter()
        .filter(|record| record["kind"] == "consultation")
        .map(|record| &record["data"]["id"])
        .collect();
    assert_eq!(consultations, [&json!("k1"), &json!("k2")]);
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .map(|record| record["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), records.len(), "each record once");
    assert!(records.iter().any(|r| r["kind"] == "consultation_step"));
    let stats: Value = crate::harness::client()
        .get(site.endpoint().replace("/v1/batches", "/v1/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let flow = &stats["stores"]["WZ-LC-001"]["flows"][FLOW];
    assert_eq!(flow["consultations"], 2);
    assert_eq!(
        *step(flow, "symptoms"),
        json!({"key": "symptoms", "label": "症状记录", "consultations": 2,
               "done": 0, "skipped": 1, "missing": 1, "completeness": 0.0,
               "skip_reasons": {REFUSED: 1}})
    );
    assert!(hq.stop().await.success());
}
