//! The clerk page in headless Chromium (Debian's chromium + chromedriver, driven over WebDriver):
//! a scan on the pty shows the prompt, one keypress answers it, a click answers the next, and
//! the attribution records are in the journal. Screenshots land in `target/screenshots/`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::{of_kind, Gateway, PtyScanner, DEADLINE};
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
