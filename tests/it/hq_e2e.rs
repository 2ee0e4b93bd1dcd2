//! The gateway against the real `posgw hq` over loopback: records arrive within a second, and
//! killing either side (kill -9, several times, under steady load) leaves HQ with every
//! acknowledged record exactly once and the gateway with no backlog.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Gateway, PtyScanner, Store, DEADLINE};

/// An HQ folder with a config for store WZ-LC-001 and an admin token.
pub(crate) struct HqSite {
    dir: tempfile::TempDir,
    port: u16,
}

pub(crate) const STORE_TOKEN: &str = "wz-lc-001-token";
pub(crate) const ADMIN_TOKEN: &str = "admin-token";

impl HqSite {
    pub(crate) fn new() -> HqSite {
        let dir = tempfile::tempdir().unwrap();
        // A fixed port per site so a restarted HQ is found where the gateway expects it.
        let port = crate::harness::free_port();
        std::fs::write(dir.path().join("store.token"), STORE_TOKEN).unwrap();
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
        std::fs::write(
            dir.path().join("hq.toml"),
            format!(
                "[hq]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n\n[[store]]\ncode = \"WZ-LC-001\"\ntoken_file = \"store.token\"\n"
            ),
        )
        .unwrap();
        HqSite { dir, port }
    }

    pub(crate) async fn start(&self) -> Gateway {
        let config = self.dir.path().join("hq.toml");
        Gateway::spawn(&["hq", "-c", config.to_str().unwrap()], "hq listening on ").await
    }

    /// Appends `text` (e.g. `[[user]]` sections) to the site's hq.toml.
    pub(crate) fn append_config(&self, text: &str) {
        let path = self.dir.path().join("hq.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(text);
        std::fs::write(path, config).unwrap();
    }

    /// HQ's data folder.
    pub(crate) fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/batches", self.port)
    }

    /// Every record HQ holds, via the admin read endpoint, paging with `after`.
    pub(crate) async fn records(&self) -> Vec<Value> {
        let client = crate::harness::client();
        let mut after = 0u64;
        let mut all = Vec::new();
        loop {
            let Ok(response) = client
                .get(format!(
                    "http://127.0.0.1:{}/v1/records?after={after}&limit=10000",
                    self.port
                ))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
            else {
                return all;
            };
            assert_eq!(response.status(), 200);
            let body = response.text().await.unwrap();
            let page: Vec<Value> = body
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            let Some(last) = page.last() else { return all };
            after = last["hq_seq"].as_u64().unwrap();
            all.extend(page);
        }
    }
}

fn scan_codes(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["kind"] == "scan")
        .map(|r| r["data"]["code"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_scan_reaches_posgw_hq_within_a_second() {
    let site = HqSite::new();
    let hq = site.start().await;
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&site.endpoint(), STORE_TOKEN, "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;

    let scanned = Instant::now();
    scanner.send(b"]E06901234567892\r").await;
    loop {
        if scan_codes(&site.records().await).len() == 1 {
            break;
        }
        assert!(
            scanned.elapsed() < Duration::from_secs(1),
            "scan not at HQ within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("scan to HQ: {:?}", scanned.elapsed());
    assert!(gateway.stop().await.success());
    assert!(hq.stop().await.success());
}

#[tokio::test]
async fn killing_the_gateway_and_hq_under_load_leaves_every_record_at_hq_exactly_once() {
    let site = HqSite::new();
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&site.endpoint(), STORE_TOKEN, "batch_max_records = 40");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    // Scans flow until every round is over, however slow the machine: a fixed number could
    // run out before the last round and leave it waiting for progress that cannot come.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let feeder = tokio::spawn(async move {
        let mut sent = 0u32;
        while !*stopped.borrow_and_update() {
            scanner
                .send(format!("]C0STEADY-{sent:05}\r").as_bytes())
                .await;
            sent += 1;
            if sent % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        }
        (scanner, sent)
    });

    let mut hq = Some(site.start().await);
    let mut gateway = Some(Gateway::start(&store).await);
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    // Alternate: kill HQ, kill the gateway, kill HQ, kill the gateway; each while records flow.
    for round in 0..4 {
        let before = site.records().await.len();
        let start = Instant::now();
        while site.records().await.len() < before + 60 {
            assert!(start.elapsed() < DEADLINE, "no progress in round {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round % 2 == 0 {
            hq.take().unwrap().kill9().await;
            tokio::time::sleep(Duration::from_millis(300)).await; // HQ down for a while
            hq = Some(site.start().await);
        } else {
            let g = gateway.take().unwrap();
            let journal = g.status().await["journal"].clone();
            acknowledged.push((
                journal["epoch"].as_str().unwrap().to_owned(),
                journal["durable_seq"].as_u64().unwrap(),
            ));
            g.kill9().await;
            gateway = Some(Gateway::start(&store).await);
        }
    }
    stop.send(true).unwrap();
    let (mut scanner, total) = feeder.await.unwrap();
    let gateway = gateway.unwrap();
    // A scan read by a gateway that was then killed inside its flush window was never
    // acknowledged and may be gone; a final scan through the surviving gateway marks the end.
    let last = "SENTINEL".to_owned();
    scanner.send(b"]C0SENTINEL\r").await;
    let start = Instant::now();
    while !scan_codes(&site.records().await).contains(&last) {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "the last scan never reached HQ"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway
        .wait_for("empty backlog", |g| async move {
            g.status().await["journal"]["backlog_records"] == 0
        })
        .await;
    assert!(gateway.stop().await.success());

    let records = site.records().await;
    let ids: HashSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "HQ holds every id once");
    let mut by_epoch: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for record in &records {
        by_epoch
            .entry(record["epoch"].as_str().unwrap())
            .or_default()
            .push(record["seq"].as_u64().unwrap());
    }
    for (epoch, mut seqs) in by_epoch {
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "no gap at HQ in epoch {epoch}");
    }
    for (epoch, durable) in &acknowledged {
        for seq in 1..=*durable {
            let id = format!("WZ-LC-001/gw-test/{epoch}/{seq}");
            assert!(ids.contains(id.as_str()), "acknowledged {id} missing at HQ");
        }
    }
    let codes = scan_codes(&records);
    let unique: HashSet<&String> = codes.iter().collect();
    assert_eq!(unique.len(), codes.len(), "no scan twice");
    eprintln!(
        "{} records at HQ, {} scans of {total}",
        records.len(),
        codes.len()
    );
    assert!(hq.unwrap().stop().await.success());
}
