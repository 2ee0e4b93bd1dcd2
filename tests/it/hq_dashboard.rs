//! The HQ dashboard (`posgw hq`, `GET /`) in headless Chromium: a store's batch posted over
//! HTTP shows up as campaign figures, answer shares, the attribution feed and a traced receipt;
//! a second batch updates the open page without a reload; a refused token shows the token form.
//! Consultation records show up as step completeness per step (with skip reasons), per store
//! and per clerk, and a receipt is traced to its consultation's steps and scans.
//! Screenshots land in `target/screenshots/hq-dashboard-*.png`.

use std::future::Future;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use crate::browser::{attr, screenshot, wait_attr, Driver};
use crate::harness::DEADLINE;
use crate::hq_e2e::{HqSite, ADMIN_TOKEN, STORE_TOKEN};

const STORE: &str = "WZ-LC-001";
const CAMPAIGN: &str = "xinsong-2026q4";
const QUESTION: &str = "推荐话术来源";
const PRODUCT: &str = "6901234567892";

/// Builds the records of one gateway journal, seq by seq, a few seconds apart.
struct Journal {
    seq: u64,
}

impl Journal {
    fn id(seq: u64) -> String {
        format!("{STORE}/gw-1/d45hb0a1/{seq}")
    }

    /// Store-local time `seconds` after 16:00:00.
    fn at(seconds: u64) -> String {
        format!(
            "2026-11-27T16:{:02}:{:02}.250+08:00",
            seconds / 60 % 60,
            seconds % 60
        )
    }

    fn record(&mut self, kind: &str, data: Value) -> Value {
        self.seq += 1;
        json!({
            "id": Self::id(self.seq), "store": STORE, "gateway": "gw-1", "epoch": "d45hb0a1",
            "seq": self.seq, "ts": Self::at(self.seq * 7),
            "clock": {"boot": "b7c1", "mono_ms": 1_000_000 + self.seq * 7000, "synced": true},
            "kind": kind, "data": data,
        })
    }

    /// A scan of the campaign's product at `station`; returns its record id.
    fn scan(&mut self, out: &mut Vec<Value>, station: &str, device: &str) -> String {
        let record = self.record(
            "scan",
            json!({
                "device": device, "station": station, "raw": format!("]E0{PRODUCT}"),
                "symbology": "]E0", "code": PRODUCT, "code_kind": "ean13",
                "gtin": format!("0{PRODUCT}"), "ai": null, "expiry": null, "lot": null,
                "serial": null, "trace_code": null, "error": null, "campaign": CAMPAIGN,
                "answer_code": false,
            }),
        );
        out.push(record);
        Journal::id(self.seq)
    }

    /// The prompt opened by `scan`, resolved as `how`.
    fn attribution(
        &mut self,
        out: &mut Vec<Value>,
        prompt: &str,
        scan: &str,
        station: &str,
        how: Resolution,
    ) {
        // Opened at the previous record's time (its scan, in the first batch).
        let opened = Self::at(self.seq * 7);
        let resolved = Self::at(self.seq * 7 + how.latency_ms / 1000);
        let record = self.record(
            "attribution",
            json!({
                "prompt": prompt, "campaign": CAMPAIGN, "station": station, "sku": PRODUCT,
                "scan": scan, "question": QUESTION, "outcome": how.outcome,
                "answer": how.answer.map(|a| a.0), "answer_label": how.answer.map(|a| a.1),
                "channel": how.answer.map(|_| "web"), "clerk": how.clerk,
                "opened_at": opened, "resolved_at": resolved, "latency_ms": how.latency_ms,
                "skip_reason": (how.outcome == "skipped").then_some("顾客赶时间"),
                "receipt": how.receipt,
            }),
        );
        out.push(record);
    }

    fn sale(&mut self, out: &mut Vec<Value>, receipt: &str, clerk: &str, lines: Value) {
        let total: f64 = lines
            .as_array()
            .unwrap()
            .iter()
            .map(|line| line["amount"].as_f64().unwrap())
            .sum();
        let record = self.record(
            "sale",
            json!({
                "device": "register-1", "station": "till-1", "receipt": receipt, "clerk": clerk,
                "lines": lines, "total": total, "currency": "CNY", "text": null,
            }),
        );
        out.push(record);
    }
}

/// How a prompt ended.
struct Resolution {
    outcome: &'static str,
    /// Option key and label.
    answer: Option<(&'static str, &'static str)>,
    clerk: Option<&'static str>,
    latency_ms: u64,
    /// The sale, when it was known at resolution.
    receipt: Option<&'static str>,
}

const fn answered(
    answer: (&'static str, &'static str),
    clerk: &'static str,
    latency_ms: u64,
) -> Resolution {
    Resolution {
        outcome: "answered",
        answer: Some(answer),
        clerk: Some(clerk),
        latency_ms,
        receipt: None,
    }
}

const fn skipped(clerk: &'static str, latency_ms: u64) -> Resolution {
    Resolution {
        outcome: "skipped",
        answer: None,
        clerk: Some(clerk),
        latency_ms,
        receipt: None,
    }
}

const fn timed_out() -> Resolution {
    Resolution {
        outcome: "timeout",
        answer: None,
        clerk: None,
        latency_ms: 120_000,
        receipt: None,
    }
}

const DOCTOR: (&str, &str) = ("doctor", "医生推荐");
const POSTER: (&str, &str) = ("poster", "海报引导");
const REFERRAL: (&str, &str) = ("referral", "老客转介");

/// The prompts of the first batch: id, station, scanner, how it ended.
#[rustfmt::skip]
const FIRST_PROMPTS: [(&str, &str, &str, Resolution); 6] = [
    ("k3m9x2pq7a", "till-1", "scanner-1", answered(DOCTOR, "c-17", 4200)),
    ("r8tv4w2nc6", "till-2", "scanner-2", answered(POSTER, "c-21", 6100)),
    ("h2q7z9yd3e", "till-1", "scanner-1", skipped("c-17", 2500)),
    ("x5bn8m4kfa", "till-2", "scanner-2", timed_out()),
    ("w9ca3p6sg2", "till-1", "scanner-1", answered(REFERRAL, "c-17", 3000)),
    ("n4hd7s2vb8", "till-2", "scanner-2", answered(DOCTOR, "c-21", 5000)),
];

/// The first batch: six prompts (four answered, one skipped, one timed out) over two stations,
/// and two sales, R-1001 with a line linked to the first prompt.
fn first_batch(journal: &mut Journal) -> Vec<Value> {
    let mut out = Vec::new();
    out.push(journal.record(
        "gateway",
        json!({"event": "started", "version": "0.1.0", "detail": null}),
    ));
    for (prompt, station, scanner, how) in FIRST_PROMPTS {
        let scan = journal.scan(&mut out, station, scanner);
        journal.attribution(&mut out, prompt, &scan, station, how);
    }
    journal.sale(
        &mut out,
        "R-1001",
        "c-17",
        json!([
            {"sku": PRODUCT, "name": "感冒灵颗粒 10袋", "qty": 1, "unit_price": 25.0, "amount": 25.0,
             "prompt": "k3m9x2pq7a"},
            {"sku": "6920000000011", "name": "医用外科口罩", "qty": 2, "unit_price": 4.25,
             "amount": 8.5, "prompt": null},
        ]),
    );
    journal.sale(
        &mut out,
        "R-1002",
        "c-21",
        json!([{"sku": "6920000000028", "name": "维生素C片", "qty": 1, "unit_price": 18.0,
                "amount": 18.0, "prompt": null}]),
    );
    out
}

/// The second batch: one more answered prompt, resolved after its sale R-1003 (so it carries
/// the receipt), and that sale.
fn second_batch(journal: &mut Journal) -> Vec<Value> {
    let mut out = Vec::new();
    let scan = journal.scan(&mut out, "till-1", "scanner-1");
    journal.sale(
        &mut out,
        "R-1003",
        "c-17",
        json!([{"sku": PRODUCT, "name": "感冒灵颗粒 10袋", "qty": 2, "unit_price": 25.0,
                "amount": 50.0, "prompt": "q6fe2k8rt3"}]),
    );
    journal.attribution(
        &mut out,
        "q6fe2k8rt3",
        &scan,
        "till-1",
        Resolution {
            receipt: Some("R-1003"),
            ..answered(POSTER, "c-17", 7400)
        },
    );
    out
}

/// POSTs records to HQ with the store's token; HQ must store them all.
async fn post(hq_url: &str, records: &[Value]) {
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    let response = crate::harness::client()
        .post(format!("{hq_url}/v1/batches"))
        .bearer_auth(STORE_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("post batch");
    let status = response.status();
    let answer: Value = response.json().await.expect("json answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], records.len(), "{answer}");
}

/// The page is public, its data is not; `/v1/trace` answers for the admin token only.
async fn check_http(hq_url: &str) {
    let http = crate::harness::client();
    let page = http.get(format!("{hq_url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("connect-src 'self'"));
    assert!(page.text().await.unwrap().contains("/assets/dashboard.js"));
    // The page's modules, each importable as JavaScript (a module with another type is refused).
    for asset in [
        "dashboard.js",
        "common.js",
        "flows.js",
        "manage.js",
        "dashboard.css",
    ] {
        let response = http
            .get(format!("{hq_url}/assets/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let kind = if asset.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let missing = http
        .get(format!("{hq_url}/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let trace = |token: Option<&str>, query: &str| {
        let mut request = http.get(format!("{hq_url}/v1/trace?{query}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for token in [None, Some(STORE_TOKEN)] {
        let response = trace(token, "receipt=R-1001").await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
    }
    let response = trace(Some(ADMIN_TOKEN), "receipt=R-1001").await.unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["sale"]["data"]["receipt"], "R-1001");
    assert_eq!(
        report["lines"][0]["attribution"]["data"]["answer"],
        "doctor"
    );
    assert_eq!(report["lines"][0]["scan"]["data"]["device"], "scanner-1");
    assert_eq!(report["lines"][1]["attribution"], Value::Null);
    assert_eq!(report["complete"], true);
    let response = trace(Some(ADMIN_TOKEN), "receipt=R-9999").await.unwrap();
    assert_eq!(response.status(), 404);
    let response = trace(Some(ADMIN_TOKEN), "store=WZ-LC-001").await.unwrap();
    assert_eq!(response.status(), 400);
}

/// Polls `check` until it holds; fails the test after [`DEADLINE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) async fn count(client: &Client, css: &str) -> usize {
    client
        .find_all(Locator::Css(css))
        .await
        .map(|found| found.len())
        .unwrap_or(0)
}

/// The text of the element `css` names. An element the page's polls redraw between the lookup
/// and the read (stale) is looked up again; one that is not there fails at once.
pub(crate) async fn text_of(client: &Client, css: &str) -> String {
    let start = Instant::now();
    loop {
        let element = client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|_| panic!("no element {css}"));
        match element.text().await {
            Ok(text) => return text,
            Err(error) => {
                assert!(start.elapsed() < DEADLINE, "cannot read {css}: {error}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// Clicks the element `css` names. The page redraws what changed on its polls, so an element
/// found may be replaced (stale) or covered for a moment before the click lands: the click is
/// tried again on a fresh lookup until it lands or the deadline passes.
pub(crate) async fn click(client: &Client, css: &str) {
    let start = Instant::now();
    loop {
        let error = match client.find(Locator::Css(css)).await {
            Ok(element) => match element.click().await {
                Ok(_) => return,
                Err(error) => error.to_string(),
            },
            Err(error) => format!("no element: {error}"),
        };
        assert!(start.elapsed() < DEADLINE, "cannot click {css}: {error}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_hq_dashboard_shows_campaign_figures_the_feed_and_a_traced_receipt_live() {
    let site = HqSite::new();
    let hq = site.start().await;
    let mut journal = Journal { seq: 0 };
    post(&hq.api, &first_batch(&mut journal)).await;

    check_http(&hq.api).await;

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path(), (1366, 768)).await;
    client
        .goto(&format!("{}/?token={ADMIN_TOKEN}", hq.api))
        .await
        .unwrap();
    wait_attr(&client, "#status", "data-state", |v| v == Some("live")).await;
    let url = client.current_url().await.unwrap();
    assert!(
        !url.as_str().contains("token"),
        "the token is stripped from the address bar: {url}"
    );

    // Campaign figures: 6 opened, 4 answered, 1 skipped, 1 timed out; 4/6 is below the goal.
    let panel = format!(".campaign[data-campaign=\"{CAMPAIGN}\"]");
    wait_attr(&client, &panel, "data-opened", |v| v == Some("6")).await;
    for (name, value) in [
        ("data-answered", "4"),
        ("data-skipped", "1"),
        ("data-timeout", "1"),
        ("data-completeness", "66.7"),
    ] {
        assert_eq!(
            attr(&client, &panel, name).await.as_deref(),
            Some(value),
            "{name}"
        );
    }
    assert_eq!(
        text_of(&client, &format!("{panel} .question")).await,
        QUESTION
    );
    assert_eq!(
        text_of(&client, &format!("{panel} .completeness .value")).await,
        "66.7%"
    );
    assert_eq!(
        count(&client, &format!("{panel} .completeness.below")).await,
        1,
        "amber below the 85% goal"
    );
    assert_eq!(
        text_of(&client, &format!("{panel} .fig[data-key=latency] .value")).await,
        "4.6 s",
        "median of 3.0, 4.2, 5.0, 6.1 s"
    );
    assert_eq!(
        text_of(
            &client,
            &format!("{panel} .breakdown tr[data-row=\"{STORE}\"] .rate-value")
        )
        .await,
        "66.7%"
    );
    // The answer-share chart: one bar per option, with its Chinese label and count.
    assert_eq!(count(&client, &format!("{panel} .chart .share")).await, 3);
    let doctor = format!("{panel} .chart .share[data-key=doctor]");
    assert_eq!(
        attr(&client, &doctor, "data-count").await.as_deref(),
        Some("2")
    );
    assert!(text_of(&client, &doctor).await.contains("医生推荐"));
    assert!(text_of(&client, &doctor).await.contains("2 · 50%"));

    // The feed: every attribution, newest first, with answer, clerk and outcome.
    assert_eq!(count(&client, "#feed tr").await, 6);
    assert_eq!(
        attr(&client, "#feed tr:first-child", "data-id")
            .await
            .as_deref(),
        Some(Journal::id(13).as_str())
    );
    let first = format!("#feed tr[data-id=\"{}\"]", Journal::id(3));
    assert!(text_of(&client, &first).await.contains("医生推荐"));
    assert_eq!(text_of(&client, &format!("{first} .clerk")).await, "c-17");
    assert_eq!(text_of(&client, &format!("{first} .sku")).await, PRODUCT);
    assert!(text_of(&client, "#feed tr[data-outcome=skipped]")
        .await
        .contains("跳过"));
    assert!(text_of(&client, "#feed tr[data-outcome=timeout]")
        .await
        .contains("超时"));
    screenshot(&client, "hq-dashboard-overview-1366x768.png").await;

    // Traceability: pick R-1001 from the receipt list.
    click(&client, "#tab-trace").await;
    click(&client, "#receipts button[data-receipt=\"R-1001\"]").await;
    wait_attr(&client, "#trace", "data-state", |v| v == Some("shown")).await;
    assert_eq!(text_of(&client, "#trace-receipt").await, "R-1001");
    let line = "#trace-lines .trace-line[data-line=\"1\"]";
    assert_eq!(
        attr(&client, line, "data-sku").await.as_deref(),
        Some(PRODUCT)
    );
    assert!(text_of(&client, &format!("{line} .answer"))
        .await
        .contains("医生推荐"));
    assert_eq!(text_of(&client, &format!("{line} .clerk")).await, "c-17");
    assert_eq!(
        text_of(&client, &format!("{line} .scan-device")).await,
        "scanner-1"
    );
    assert!(text_of(&client, &format!("{line} .step-scan"))
        .await
        .contains(&format!("]E0{PRODUCT}")));
    assert_eq!(
        count(
            &client,
            "#trace-lines .trace-line[data-line=\"2\"] .no-link"
        )
        .await,
        1,
        "the second line had no prompt"
    );
    screenshot(&client, "hq-dashboard-trace-1366x768.png").await;

    // A second batch: the open page catches up without a reload (it polls every 2 s; the
    // time from the post to the page is printed as a measurement, not asserted).
    let posted = std::time::Instant::now();
    post(&hq.api, &second_batch(&mut journal)).await;
    eventually("R-1003 in the receipt list", || async {
        count(&client, "#receipts button[data-receipt=\"R-1003\"]").await == 1
    })
    .await;
    eprintln!(
        "batch at HQ -> on the open dashboard: {:?}",
        posted.elapsed()
    );
    // Searching by receipt number (the server-side search, no hq_seq).
    let input = client.find(Locator::Css("#receipt-input")).await.unwrap();
    input.send_keys("R-1003").await.unwrap();
    click(&client, "#receipt-search button[type=submit]").await;
    wait_attr(&client, "#trace", "data-receipt", |v| v == Some("R-1003")).await;
    wait_attr(&client, "#trace", "data-state", |v| v == Some("shown")).await;
    let line = "#trace-lines .trace-line[data-line=\"1\"]";
    assert!(text_of(&client, &format!("{line} .answer"))
        .await
        .contains("海报引导"));
    assert_eq!(text_of(&client, &format!("{line} .clerk")).await, "c-17");
    assert_eq!(
        text_of(&client, &format!("{line} .scan-device")).await,
        "scanner-1"
    );
    assert!(
        attr(&client, "#trace-incomplete", "hidden").await.is_some(),
        "every link found"
    );

    click(&client, "#tab-overview").await;
    wait_attr(&client, &panel, "data-opened", |v| v == Some("7")).await;
    assert_eq!(
        attr(&client, &panel, "data-completeness").await.as_deref(),
        Some("71.4")
    );
    assert_eq!(count(&client, "#feed tr").await, 7);
    let newest = "#feed tr:first-child";
    assert_eq!(
        attr(&client, newest, "data-id").await.as_deref(),
        Some(Journal::id(18).as_str())
    );
    assert_eq!(
        text_of(&client, &format!("{newest} .receipt")).await,
        "R-1003"
    );
    assert_eq!(
        attr(
            &client,
            &format!("{panel} .chart .share[data-key=poster]"),
            "data-count"
        )
        .await
        .as_deref(),
        Some("2")
    );

    // Picking a store shows its figures by station.
    client
        .find(Locator::Css("#store-filter"))
        .await
        .unwrap()
        .select_by_value(STORE)
        .await
        .unwrap();
    wait_attr(
        &client,
        &format!("{panel} .breakdown tr[data-row=\"till-2\"]"),
        "data-row",
        |v| v == Some("till-2"),
    )
    .await;
    assert_eq!(
        text_of(
            &client,
            &format!("{panel} .breakdown tr[data-row=\"till-1\"] .rate-value")
        )
        .await,
        "75%",
        "till-1: 3 of 4 answered"
    );

    client.set_window_size(1920, 1080).await.unwrap();
    screenshot(&client, "hq-dashboard-overview-1920x1080.png").await;
    click(&client, "#tab-trace").await;
    screenshot(&client, "hq-dashboard-trace-1920x1080.png").await;

    // A wrong token: a clear 401 message and the token form, which then connects.
    client
        .goto(&format!("{}/?token=not-the-admin-token", hq.api))
        .await
        .unwrap();
    wait_attr(&client, "#status", "data-state", |v| {
        v == Some("unauthorized")
    })
    .await;
    wait_attr(&client, "#token-form", "hidden", |v| v.is_none()).await;
    assert!(text_of(&client, "#banner").await.contains("401"));
    screenshot(&client, "hq-dashboard-unauthorized-1920x1080.png").await;
    let input = client.find(Locator::Css("#token-input")).await.unwrap();
    input.send_keys(ADMIN_TOKEN).await.unwrap();
    click(&client, "#token-form button[type=submit]").await;
    wait_attr(&client, "#status", "data-state", |v| v == Some("live")).await;
    wait_attr(&client, &panel, "data-opened", |v| v == Some("7")).await;

    client.close().await.unwrap();
    assert!(hq.stop().await.success());
}

/// Ten consultations of the five-step flow (`hq_flow::S1_CONSULTATIONS`: 症状记录 done in 4,
/// skipped in 3, missing in 3), the fifth linked to the sale R-2001 and its product's scan.
fn flow_batch(journal: &mut Journal) -> Vec<Value> {
    use crate::hq_flow::{Consultation, S1_CONSULTATIONS};
    let mut out = Vec::new();
    let scan = journal.scan(&mut out, "till-1", "scanner-1");
    journal.sale(
        &mut out,
        "R-2001",
        "c-17",
        json!([{"sku": PRODUCT, "name": "硝苯地平缓释片", "qty": 1, "unit_price": 32.5,
                "amount": 32.5, "prompt": null}]),
    );
    if let Some(sale) = out.last_mut() {
        sale["data"]["consultation"] = json!("s1-4");
    }
    for (index, (clerk, steps, held)) in S1_CONSULTATIONS.iter().enumerate() {
        let id = format!("s1-{index}");
        let linked = index == 4;
        let data = Consultation {
            id: &id,
            clerk: Some(clerk),
            steps,
            held: *held,
            receipt: linked.then_some("R-2001"),
            scans: if linked {
                vec![scan.clone()]
            } else {
                Vec::new()
            },
        }
        .data();
        let record = journal.record("consultation", data);
        out.push(record);
    }
    out
}

#[tokio::test]
async fn the_hq_dashboard_shows_step_completeness_per_store_and_clerk_and_traces_a_consultation() {
    let site = HqSite::new();
    let hq = site.start().await;
    let mut journal = Journal { seq: 0 };
    post(&hq.api, &flow_batch(&mut journal)).await;

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path(), (1366, 768)).await;
    client
        .goto(&format!("{}/?token={ADMIN_TOKEN}", hq.api))
        .await
        .unwrap();
    wait_attr(&client, "#status", "data-state", |v| v == Some("live")).await;

    // The flow over all stores: 10 consultations, 32 of 50 steps done.
    let panel = ".flow[data-flow=\"rx-5step\"]";
    wait_attr(&client, panel, "data-consultations", |v| v == Some("10")).await;
    assert_eq!(
        attr(&client, panel, "data-completeness").await.as_deref(),
        Some("64")
    );
    assert_eq!(
        text_of(
            &client,
            &format!("{panel} .fig[data-key=completeness] .value")
        )
        .await,
        "64%"
    );
    // Each step with its counts and skip reasons: 症状记录 is only 40 % complete.
    let symptoms = format!("{panel} .steps-table tr[data-step=symptoms]");
    assert!(text_of(&client, &format!("{symptoms} .name"))
        .await
        .contains("症状记录"));
    for (cell, value) in [
        (".done", "4"),
        (".skipped", "3"),
        (".missing", "3"),
        (".rate-value", "40%"),
    ] {
        assert_eq!(
            text_of(&client, &format!("{symptoms} {cell}")).await,
            value,
            "{cell}"
        );
    }
    let refused = format!("{symptoms} .chip.reason[data-reason=\"客户明确拒绝\"]");
    assert_eq!(
        attr(&client, &refused, "data-count").await.as_deref(),
        Some("2")
    );
    assert!(text_of(&client, &format!("{symptoms} .reasons"))
        .await
        .contains("紧急情况 ×1"));
    assert!(text_of(
        &client,
        &format!("{panel} .steps-table tr[data-step=insurance] .reasons")
    )
    .await
    .contains("复购老客 ×3"));
    // The table per store.
    let row = format!("{panel} .step-matrix[data-by=store] tr[data-row=\"{STORE}\"]");
    assert_eq!(
        text_of(&client, &format!("{row} td[data-step=symptoms] .cell-rate")).await,
        "40%"
    );
    assert_eq!(
        text_of(&client, &format!("{row} td[data-step=consult] .cell-rate")).await,
        "100%"
    );
    assert_eq!(
        attr(&client, &format!("{row} td[data-step=symptoms]"), "title")
            .await
            .as_deref(),
        Some("4 完成 done · 3 跳过 skipped · 3 缺失 missing · 客户明确拒绝 ×2, 紧急情况 ×1")
    );
    assert_eq!(
        attr(
            &client,
            &format!("{panel} .held-by[data-released-by=steps]"),
            "data-count"
        )
        .await
        .as_deref(),
        Some("5")
    );
    screenshot(&client, "hq-dashboard-flows-1366x768.png").await;

    // The store picked: the table per clerk (who opened the consultations).
    client
        .find(Locator::Css("#store-filter"))
        .await
        .unwrap()
        .select_by_value(STORE)
        .await
        .unwrap();
    let clerk = |code: &str| format!("{panel} .step-matrix[data-by=clerk] tr[data-row=\"{code}\"]");
    wait_attr(&client, &clerk("c-21"), "data-row", |v| v == Some("c-21")).await;
    assert_eq!(
        text_of(
            &client,
            &format!("{} td[data-step=symptoms] .cell-rate", clerk("c-17"))
        )
        .await,
        "66.7%"
    );
    assert_eq!(
        text_of(
            &client,
            &format!("{} td[data-step=symptoms] .cell-rate", clerk("c-21"))
        )
        .await,
        "0%"
    );
    assert_eq!(
        text_of(&client, &format!("{} .total", clerk("c-21"))).await,
        "35%"
    );
    client.set_window_size(1920, 1080).await.unwrap();
    screenshot(&client, "hq-dashboard-flows-by-clerk-1920x1080.png").await;

    // The receipt traced to its consultation: every step, why one was skipped, its scan.
    click(&client, "#tab-trace").await;
    click(&client, "#receipts button[data-receipt=\"R-2001\"]").await;
    wait_attr(&client, "#trace", "data-state", |v| v == Some("shown")).await;
    wait_attr(&client, "#trace-consultation", "data-consultation", |v| {
        v == Some("s1-4")
    })
    .await;
    let step = |key: &str| format!("#trace-consultation .consult-step[data-step={key}]");
    assert_eq!(
        attr(&client, &step("consult"), "data-state")
            .await
            .as_deref(),
        Some("done")
    );
    assert_eq!(
        attr(&client, &step("symptoms"), "data-state")
            .await
            .as_deref(),
        Some("skipped")
    );
    assert!(text_of(&client, &step("symptoms"))
        .await
        .contains("客户明确拒绝"));
    assert_eq!(
        attr(&client, &step("guidance"), "data-state")
            .await
            .as_deref(),
        Some("missing")
    );
    assert!(text_of(&client, "#trace-consultation .consult-scan")
        .await
        .contains("scanner-1"));
    assert!(
        attr(&client, "#trace-incomplete", "hidden").await.is_some(),
        "every link found"
    );
    screenshot(&client, "hq-dashboard-trace-consultation-1920x1080.png").await;

    client.close().await.unwrap();
    assert!(hq.stop().await.success());
}

/// A store manager signs in on /login with a password: the dashboard runs on the session cookie
/// (no token anywhere), shows who is signed in, and signing out ends the session.
#[tokio::test]
async fn a_store_user_signs_in_sees_the_dashboard_on_the_session_and_signs_out() {
    let site = HqSite::new();
    let hash = posgw::hq::hash_password("pw-wang").expect("hash");
    site.append_config(&format!(
        "\n[[user]]\nname = \"wang\"\nrole = \"store\"\nstore = \"{STORE}\"\npassword_hash = \"{hash}\"\n"
    ));
    let hq = site.start().await;
    let mut journal = Journal { seq: 0 };
    post(&hq.api, &flow_batch(&mut journal)).await;

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path(), (1366, 768)).await;
    client.goto(&format!("{}/", hq.api)).await.unwrap();
    // No token and no session: the page says to sign in.
    wait_attr(&client, "body", "data-state", |v| v == Some("unauthorized")).await;

    client.goto(&format!("{}/login", hq.api)).await.unwrap();
    let field = |id: &'static str| client.find(Locator::Id(id));
    field("login-name")
        .await
        .unwrap()
        .send_keys("wang")
        .await
        .unwrap();
    field("login-password")
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    click(&client, "#login-form button[type=submit]").await;
    eventually("the refusal is shown", || async {
        text_of(&client, "#login-error").await.contains("密码")
    })
    .await;
    field("login-password")
        .await
        .unwrap()
        .send_keys("pw-wang")
        .await
        .unwrap();
    click(&client, "#login-form button[type=submit]").await;

    // On the dashboard, live on the cookie: the flow of the manager's own store.
    wait_attr(&client, "#status", "data-state", |v| v == Some("live")).await;
    assert!(text_of(&client, "#user-name").await.starts_with("wang"));
    let panel = ".flow[data-flow=\"rx-5step\"]";
    wait_attr(&client, panel, "data-consultations", |v| v == Some("10")).await;
    screenshot(&client, "hq-dashboard-store-user-1366x768.png").await;

    click(&client, "#logout").await;
    eventually("back on the login page", || async {
        client
            .current_url()
            .await
            .is_ok_and(|url| url.path() == "/login")
    })
    .await;
    // The session is gone at HQ too.
    client.goto(&format!("{}/", hq.api)).await.unwrap();
    wait_attr(&client, "body", "data-state", |v| v == Some("unauthorized")).await;
    client.close().await.unwrap();
    assert!(hq.stop().await.success());
}
