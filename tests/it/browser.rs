//! The clerk page in headless Chromium (Debian's chromium + chromedriver, driven over WebDriver):
//! a scan on the pty shows the prompt, one keypress answers it, a click answers the next, and
//! the attribution records are in the journal; a consultation is worked through its five steps
//! by keys and taps, its held scan reaching the POS side of the passthrough only when the steps
//! allow, and a scan lost to a crash is announced after the restart. Screenshots land in
//! `target/screenshots/`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};
use crate::prompts::campaign_store;

/// A chromedriver on a free port, killed on drop.
pub(crate) struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    pub(crate) fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (apt-get install chromium chromium-driver)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Driver { child, port }
    }

    pub(crate) async fn browser(&self, profile: &std::path::Path, size: (u32, u32)) -> Client {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("chromium");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--window-size={},{}", size.0, size.1),
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        // fantoccini's TLS stack needs a process-wide provider; the gateway uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("tls for webdriver client")
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("connect to chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn attr(client: &Client, css: &str, name: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

/// Polls until `css` matches an element whose `name` attribute satisfies `check`.
pub(crate) async fn wait_attr(
    client: &Client,
    css: &str,
    name: &str,
    check: impl Fn(Option<&str>) -> bool,
) {
    let start = Instant::now();
    loop {
        if check(attr(client, css, name).await.as_deref()) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {css} [{name}]"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn screenshot(client: &Client, name: &str) {
    let dir = crate::harness::repo_file("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test]
async fn a_clerk_answers_with_one_keypress_and_one_tap_on_the_counter_page() {
    let store = campaign_store("120s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path(), (1024, 768)).await;

    client.goto(&format!("{}/", gateway.api)).await.unwrap();
    let link = client
        .wait()
        .for_element(Locator::Css(
            "#stations a.station-link[data-station=till-1]",
        ))
        .await
        .expect("station chooser lists till-1");
    link.click().await.unwrap();
    wait_attr(&client, "body", "data-connection", |v| v == Some("online")).await;
    // The clerk types their id once; the page keeps it.
    let clerk = client.find(Locator::Css("#clerk")).await.unwrap();
    clerk.send_keys("c-17").await.unwrap();
    client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Scan the targeted product: the question appears.
    scanner.send(b"]E06901234567892\r").await;
    wait_attr(&client, "#prompt-active", "data-id", |v| {
        v.is_some_and(|id| !id.is_empty())
    })
    .await;
    let question = client.find(Locator::Css("#active-question")).await.unwrap();
    assert_eq!(question.text().await.unwrap(), "推荐话术来源");
    let doctor = client
        .find(Locator::Css("#prompt-active .option[data-key=doctor]"))
        .await
        .unwrap();
    assert!(doctor.text().await.unwrap().contains("医生推荐"));
    screenshot(&client, "clerk-prompt-1024x768.png").await;

    // One keypress: "1" picks the first option.
    client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("1")
        .await
        .unwrap();
    wait_attr(&client, "#toast", "data-kind", |v| v == Some("ok")).await;
    wait_attr(&client, "#completeness", "data-answered", |v| {
        v == Some("1")
    })
    .await;

    // The next customer: one tap on the third option.
    tokio::time::sleep(Duration::from_millis(450)).await; // the page ignores input 400 ms after an answer
    scanner.send(b"]E06901234567892\r").await;
    wait_attr(&client, "#prompt-active", "data-id", |v| {
        v.is_some_and(|id| !id.is_empty())
    })
    .await;
    client
        .find(Locator::Css("#prompt-active .option[data-key=poster]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_attr(&client, "#completeness", "data-answered", |v| {
        v == Some("2")
    })
    .await;
    screenshot(&client, "clerk-answered-1024x768.png").await;
    client.close().await.unwrap();

    gateway
        .wait_for("2 attributions", |g| async move {
            g.metric("posgw_records_total{kind=\"attribution\"}").await >= 2.0
        })
        .await;
    gateway.wait_durable().await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let answers: Vec<(String, String, String)> = of_kind(&records, "attribution")
        .iter()
        .map(|r| {
            let d = &r["data"];
            (
                d["answer"].as_str().unwrap().to_owned(),
                d["channel"].as_str().unwrap().to_owned(),
                d["clerk"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("doctor".to_owned(), "web".to_owned(), "c-17".to_owned()),
            ("poster".to_owned(), "web".to_owned(), "c-17".to_owned())
        ]
    );
}

/// The docs' five-step flow, holding the product's scan until 客户问诊 and 症状记录 are settled,
/// and a campaign on another product.
const FIVE_STEPS: &str = r#"
[[flow]]
id = "rx-5step"
name = "处方推荐五步法"
skus = ["6901234567892", "69012345*"]
steps = [
  { key = "consult",   label = "客户问诊" },
  { key = "symptoms",  label = "症状记录", choose = ["高血压", "心悸", "失眠", "胸闷"], multi = true },
  { key = "recommend", label = "药品推荐", auto = "scan" },
  { key = "insurance", label = "医保核验", choose = ["通过", "未通过", "自费"], auto = "sale" },
  { key = "guidance",  label = "用药指导" },
]
skip_reasons = ["客户明确拒绝", "复购老客", "紧急情况"]
hold = "recommend"
hold_timeout = "120s"

[[campaign]]
id = "other-product"
skus = ["4006381333931"]
question = "推荐话术来源"
options = [ { key = "doctor", label = "医生推荐" }, { key = "poster", label = "海报引导" } ]
timeout = "120s"
"#;

/// One key press on the page (not in a field).
async fn press(client: &Client, keys: &str) {
    client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

/// Taps `css`. The page redraws a checklist when it changes, so an element found a moment
/// ago may be gone: find it again, as a clerk's finger would.
async fn tap(client: &Client, css: &str) {
    let start = Instant::now();
    loop {
        let tapped = match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match tapped {
            Ok(()) => return,
            Err(error) => assert!(start.elapsed() < DEADLINE, "tap {css}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An attribute of the first element matching `css`, read in one step (a redraw between
/// finding an element and reading it cannot make the read fail).
async fn dom_attr(client: &Client, css: &str, name: &str) -> Option<String> {
    let value = client
        .execute(
            "const e = document.querySelector(arguments[0]); \
             return e ? e.getAttribute(arguments[1]) : null;",
            vec![json!(css), json!(name)],
        )
        .await
        .expect("read an attribute");
    value.as_str().map(str::to_owned)
}

/// The visible text of the first element matching `css`, read in one step.
async fn text(client: &Client, css: &str) -> String {
    let value = client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![json!(css)],
        )
        .await
        .expect("read a text");
    value
        .as_str()
        .unwrap_or_else(|| panic!("{css} is on the page"))
        .to_owned()
}

/// The station's open consultations, as the API tells them.
async fn open_consultations(gateway: &Gateway) -> Vec<serde_json::Value> {
    let (code, body) = gateway
        .get("/api/v1/consultations?station=till-1")
        .await
        .expect("consultations answer");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON array")
}

/// The one open consultation's step `key`, as the API tells it.
async fn api_step(gateway: &Gateway, key: &str) -> serde_json::Value {
    let open = open_consultations(gateway).await;
    assert_eq!(open.len(), 1, "one open consultation: {open:?}");
    open[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["key"] == key)
        .unwrap_or_else(|| panic!("step {key}"))
        .clone()
}

/// Reads exactly `expected.len()` bytes from the POS side of the scanner's passthrough.
async fn pos_reads(pos: &mut tokio_serial::SerialStream, expected: &[u8]) {
    use tokio::io::AsyncReadExt;
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(DEADLINE, pos.read_exact(&mut got))
        .await
        .expect("the scan reaches the POS in time")
        .expect("read the POS side");
    assert_eq!(got, expected);
}

/// The five-step consultation on the counter page of a real gateway: opened with 新问诊 (a
/// member card refused plainly while no customer key is configured), 客户问诊 by key, the
/// product scanned and held with a countdown, two 症状 chips tapped and confirmed (the scan
/// goes on to the POS), 医保核验 skipped with a listed reason only, 用药指导 by key, closed as
/// completed; then, with a customer key reloaded, a wedge-scanned member card and an abandon.
/// After each step the page and `GET /api/v1/consultations` agree; the journal has it all.
#[tokio::test]
async fn a_clerk_works_through_the_five_step_consultation_with_keys_and_taps() {
    use fantoccini::key::Key;
    use tokio_serial::SerialPortBuilderExt;

    let store = Store::new();
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let pos_link = store.path("pos");
    store.write_config(&format!("passthrough = \"{}\"", pos_link.display()));
    store.append_config(FIVE_STEPS);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut pos = tokio_serial::new(pos_link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the POS side of the passthrough");
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path(), (1024, 768)).await;

    client
        .goto(&format!("{}/station/till-1", gateway.api))
        .await
        .unwrap();
    wait_attr(&client, "body", "data-connection", |v| v == Some("online")).await;
    client
        .find(Locator::Css("#clerk"))
        .await
        .unwrap()
        .send_keys(&format!("c-17{}", char::from(Key::Enter)))
        .await
        .unwrap();
    assert!(dom_attr(&client, "#consultations", "hidden")
        .await
        .is_some());

    // 新问诊: the one flow is preselected. A member card without [privacy] is refused, plainly.
    tap(&client, "#consult-new").await;
    wait_attr(&client, "#consult-new-dialog", "hidden", |v| v.is_none()).await;
    assert_eq!(
        dom_attr(
            &client,
            "#consult-flows .flow[data-flow=rx-5step]",
            "aria-checked"
        )
        .await
        .as_deref(),
        Some("true")
    );
    let member = client.find(Locator::Css("#consult-member")).await.unwrap();
    member.send_keys("M0012345").await.unwrap();
    tap(&client, "#consult-open").await;
    wait_attr(&client, "#consult-new-error", "hidden", |v| v.is_none()).await;
    let refusal = text(&client, "#consult-new-error").await;
    assert!(
        refusal.contains("未开启会员识别") && refusal.contains("422"),
        "{refusal}"
    );
    assert_eq!(
        dom_attr(&client, "#consult-new-error", "role")
            .await
            .as_deref(),
        Some("alert")
    );
    assert!(open_consultations(&gateway).await.is_empty());
    screenshot(&client, "consult-new-refused-1024x768.png").await;
    // Without the card it opens (Enter in the field, as a keyboard-wedge scanner ends a code).
    member.clear().await.unwrap();
    member
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    wait_attr(&client, "#consult-new-dialog", "hidden", |v| v.is_some()).await;
    wait_attr(&client, ".consultation[data-state=open]", "data-id", |v| {
        v.is_some()
    })
    .await;
    let id = dom_attr(&client, ".consultation[data-state=open]", "data-id")
        .await
        .unwrap();
    let card = format!(".consultation[data-id='{id}']");
    let step = |key: &str| format!("{card} .step[data-key={key}]");
    assert_eq!(
        dom_attr(&client, &card, "data-active").await.as_deref(),
        Some("true")
    );
    let open = open_consultations(&gateway).await;
    assert_eq!(open.len(), 1);
    assert_eq!(
        (&open[0]["id"], &open[0]["state"], &open[0]["clerk"]),
        (&json!(id), &json!("open"), &json!("c-17"))
    );
    assert!(open[0]["customer"].is_null());
    for key in ["consult", "symptoms", "recommend", "insurance", "guidance"] {
        assert_eq!(
            dom_attr(&client, &step(key), "data-state").await.as_deref(),
            Some("open"),
            "{key}"
        );
    }
    assert_eq!(
        dom_attr(&client, "body", "data-keys").await.as_deref(),
        Some("steps")
    );

    // 1. 客户问诊: one key.
    press(&client, "1").await;
    wait_attr(&client, &step("consult"), "data-state", |v| {
        v == Some("done")
    })
    .await;
    let consult = api_step(&gateway, "consult").await;
    assert!(consult["at"].is_string());
    assert_eq!(consult["clerk"], "c-17");

    // The product is scanned before the symptoms are recorded: the scan is held from the POS,
    // the page counts down, and 药品推荐 is done by the scan.
    let frame = b"]E06901234567892\r";
    scanner.send(frame).await;
    wait_attr(&client, &card, "data-held", |v| v == Some("true")).await;
    wait_attr(&client, &step("recommend"), "data-state", |v| {
        v == Some("done")
    })
    .await;
    assert_eq!(
        dom_attr(&client, &step("recommend"), "data-value")
            .await
            .as_deref(),
        Some("6901234567892")
    );
    let countdown = format!("{card} .held-countdown");
    wait_attr(&client, &countdown, "data-seconds", |v| {
        v.and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| (100..=120).contains(&s))
    })
    .await;
    let open = open_consultations(&gateway).await;
    assert!(open[0]["held"]["until"].is_string());
    assert_eq!(open[0]["scans"].as_array().map(Vec::len), Some(1));
    assert_eq!(open[0]["steps"][2]["value"], "6901234567892");
    screenshot(&client, "consult-held-1024x768.png").await;

    // 2. 症状记录: two chips tapped, then confirmed; only then is anything recorded.
    tap(
        &client,
        &format!("{} .chip[data-value='高血压']", step("symptoms")),
    )
    .await;
    tap(
        &client,
        &format!("{} .chip[data-value='失眠']", step("symptoms")),
    )
    .await;
    for value in ["高血压", "失眠"] {
        let chip = format!("{} .chip[data-value='{value}']", step("symptoms"));
        wait_attr(&client, &chip, "aria-pressed", |v| v == Some("true")).await;
    }
    assert_eq!(
        dom_attr(&client, "body", "data-keys").await.as_deref(),
        Some("chips")
    );
    assert_eq!(
        dom_attr(&client, &step("symptoms"), "data-state")
            .await
            .as_deref(),
        Some("open")
    );
    assert!(api_step(&gateway, "symptoms").await["at"].is_null());
    tap(&client, &format!("{} .confirm", step("symptoms"))).await;
    wait_attr(&client, &step("symptoms"), "data-state", |v| {
        v == Some("done")
    })
    .await;
    assert_eq!(
        dom_attr(&client, &step("symptoms"), "data-values")
            .await
            .as_deref(),
        Some(r#"["高血压","失眠"]"#)
    );
    // The steps before 药品推荐 are settled: the held scan goes on to the POS, byte for byte.
    wait_attr(&client, &card, "data-held", |v| v.is_none()).await;
    pos_reads(&mut pos, frame).await;
    let open = open_consultations(&gateway).await;
    assert_eq!(open[0]["steps"][1]["values"], json!(["高血压", "失眠"]));
    assert!(open[0]["held"].is_null());
    assert_eq!(open[0]["released_by"], "steps");

    // 4. 医保核验: its key selects it, S asks why; only the flow's reasons are offered.
    press(&client, "4").await;
    wait_attr(&client, &step("insurance"), "data-selected", |v| {
        v == Some("true")
    })
    .await;
    press(&client, "s").await;
    wait_attr(&client, "#consult-skip-dialog", "hidden", |v| v.is_none()).await;
    assert_eq!(text(&client, "#consult-skip-step").await, "医保核验");
    let mut reasons = Vec::new();
    for reason in client
        .find_all(Locator::Css("#consult-skip-reasons .reason"))
        .await
        .unwrap()
    {
        reasons.push(reason.attr("data-reason").await.unwrap().unwrap());
    }
    assert_eq!(reasons, ["客户明确拒绝", "复购老客", "紧急情况"]);
    screenshot(&client, "consult-skip-1024x768.png").await;
    assert!(
        client
            .find_all(Locator::Css(
                "#consult-skip-dialog input, #consult-skip-dialog textarea"
            ))
            .await
            .unwrap()
            .is_empty(),
        "no free text for a consultation skip"
    );
    // The API refuses a reason the flow does not list.
    let refused = crate::harness::client()
        .post(format!(
            "{}/api/v1/consultations/{id}/steps/insurance",
            gateway.api
        ))
        .header("content-type", "application/json")
        .body(json!({"skip": "顾客赶时间"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    assert!(api_step(&gateway, "insurance").await["at"].is_null());
    tap(
        &client,
        "#consult-skip-reasons .reason[data-reason='复购老客']",
    )
    .await;
    wait_attr(&client, &step("insurance"), "data-state", |v| {
        v == Some("skipped")
    })
    .await;
    wait_attr(&client, "#consult-skip-dialog", "hidden", |v| v.is_some()).await;
    assert_eq!(
        dom_attr(&client, &step("insurance"), "data-skipped")
            .await
            .as_deref(),
        Some("复购老客")
    );
    let insurance = api_step(&gateway, "insurance").await;
    assert_eq!(
        (&insurance["skipped"], &insurance["clerk"]),
        (&json!("复购老客"), &json!("c-17"))
    );

    // 5. 用药指导: one key. Every step is settled.
    press(&client, "5").await;
    wait_attr(&client, &step("guidance"), "data-state", |v| {
        v == Some("done")
    })
    .await;
    wait_attr(&client, &card, "data-settled", |v| v == Some("true")).await;
    wait_attr(&client, &step("guidance"), "data-pending", |v| v.is_none()).await;
    assert!(api_step(&gateway, "guidance").await["at"].is_string());
    assert!(text(&client, "#keys").await.contains("完成问诊"));
    screenshot(&client, "consult-settled-1024x768.png").await;

    // Closed as completed: the outcome shows briefly, then the checklist goes.
    tap(&client, &format!("{card} .close-completed")).await;
    wait_attr(&client, &card, "data-state", |v| v == Some("completed")).await;
    assert!(text(&client, &format!("{card} .outcome"))
        .await
        .contains("已完成"));
    assert!(open_consultations(&gateway).await.is_empty());
    wait_attr(&client, &card, "data-id", |v| v.is_none()).await;
    wait_attr(&client, "#consultations", "hidden", |v| v.is_some()).await;

    // With a customer key (reloaded), N opens 新问诊 with the card field focused, and a
    // wedge-scanned card (digits then Enter) opens it: the API keeps only a reference.
    let key_file = store.path("customer.key");
    std::fs::write(&key_file, "0123456789abcdef0123456789abcdef").unwrap();
    store.append_config(&format!(
        "[privacy]\ncustomer_key_file = \"{}\"\n",
        key_file.display()
    ));
    gateway.hangup();
    gateway.wait_log("reloaded: campaigns", 1).await;
    press(&client, "n").await;
    wait_attr(&client, "#consult-new-dialog", "hidden", |v| v.is_none()).await;
    let focused = client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("consult-member"));
    client
        .active_element()
        .await
        .unwrap()
        .send_keys(&format!("M0012345{}", char::from(Key::Enter)))
        .await
        .unwrap();
    wait_attr(&client, "#consult-new-dialog", "hidden", |v| v.is_some()).await;
    wait_attr(&client, ".consultation[data-state=open]", "data-id", |v| {
        v.is_some()
    })
    .await;
    let open = open_consultations(&gateway).await;
    let customer = open[0]["customer"].as_str().expect("a customer reference");
    assert_eq!(customer.len(), 32, "{customer}");
    assert!(!customer.contains("M0012345"));
    let kept = client
        .execute(
            "return JSON.stringify(Object.assign({}, localStorage, sessionStorage)) + \
             document.cookie + document.getElementById('consult-member').value",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        !kept.as_str().unwrap().contains("M0012345"),
        "the page keeps no member id: {kept}"
    );
    // A prompt on screen takes the number keys: "1" answers it, not the checklist.
    scanner.send(b"]E04006381333931\r").await;
    wait_attr(&client, "#prompt-active", "data-id", |v| {
        v.is_some_and(|id| !id.is_empty())
    })
    .await;
    assert_eq!(
        dom_attr(&client, "body", "data-keys").await.as_deref(),
        Some("prompt")
    );
    screenshot(&client, "consult-and-prompt-1024x768.png").await;
    press(&client, "1").await;
    wait_attr(&client, "#prompt-active", "hidden", |v| v.is_some()).await;
    gateway.wait_records("attribution", 1).await;
    assert_eq!(
        dom_attr(&client, "body", "data-keys").await.as_deref(),
        Some("steps")
    );
    assert_eq!(
        dom_attr(
            &client,
            ".consultation .step[data-key=consult]",
            "data-state"
        )
        .await
        .as_deref(),
        Some("open")
    );
    assert!(api_step(&gateway, "consult").await["at"].is_null());
    // Abandon takes a second tap.
    let second = format!(
        ".consultation[data-id='{}']",
        open[0]["id"].as_str().unwrap()
    );
    tap(&client, &format!("{second} .close-abandoned")).await;
    wait_attr(
        &client,
        &format!("{second} .close-abandoned"),
        "data-armed",
        |v| v == Some("true"),
    )
    .await;
    assert_eq!(open_consultations(&gateway).await.len(), 1);
    tap(&client, &format!("{second} .close-abandoned")).await;
    wait_attr(&client, &second, "data-state", |v| v == Some("abandoned")).await;
    assert!(open_consultations(&gateway).await.is_empty());
    client.close().await.unwrap();

    gateway.wait_records("consultation", 2).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let closed = of_kind(&records, "consultation");
    assert_eq!(closed.len(), 2);
    let first = &closed[0]["data"];
    assert_eq!(
        (&first["id"], &first["outcome"]),
        (&json!(id), &json!("completed"))
    );
    assert_eq!(first["steps"][1]["values"], json!(["高血压", "失眠"]));
    assert_eq!(first["steps"][3]["skipped"], "复购老客");
    assert_eq!(first["released_by"], "steps");
    assert_eq!(closed[1]["data"]["outcome"], "abandoned");
    assert_eq!(closed[1]["data"]["customer"], customer);
    let answers = of_kind(&records, "attribution");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["data"]["answer"], "doctor");
    let steps: Vec<&str> = of_kind(&records, "consultation_step")
        .iter()
        .map(|r| r["data"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["consult", "recommend", "symptoms", "insurance", "guidance"]
    );
}

/// A scan held when the gateway was killed never reached the POS: after the restart the
/// checklist tells the clerk to scan it again, until they acknowledge it.
#[tokio::test]
async fn a_scan_held_when_the_gateway_died_asks_the_clerk_to_scan_again() {
    let store = Store::new();
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    store.write_config(&format!(
        "passthrough = \"{}\"",
        store.path("pos").display()
    ));
    store.append_config(FIVE_STEPS);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let opened = crate::harness::client()
        .post(format!("{}/api/v1/consultations", gateway.api))
        .header("content-type", "application/json")
        .body(json!({"station": "till-1", "flow": "rx-5step"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status().as_u16(), 201);
    scanner.send(b"]E06901234567892\r").await;
    gateway
        .wait_for("the scan held", |g| async move {
            open_consultations(g).await[0]["held"].is_object()
        })
        .await;
    gateway.kill9().await;

    let gateway = Gateway::start(&store).await;
    let open = open_consultations(&gateway).await;
    assert_eq!(open[0]["released_by"], "restart");
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path(), (1024, 768)).await;
    client
        .goto(&format!("{}/station/till-1", gateway.api))
        .await
        .unwrap();
    let warning = ".consultation[data-state=open] .restart-warning";
    wait_attr(&client, warning, "role", |v| v == Some("alert")).await;
    assert!(text(&client, warning).await.contains("请重新扫码"));
    assert!(dom_attr(&client, ".consultation", "data-held")
        .await
        .is_none());
    screenshot(&client, "consult-restart-1024x768.png").await;
    tap(&client, &format!("{warning} button")).await;
    wait_attr(&client, warning, "role", |v| v.is_none()).await;
    client.close().await.unwrap();
    assert!(gateway.stop().await.success());
}
