//! Forwarding to HQ over real HTTP on loopback, through the faults HQ can throw at us.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_hq::{FakeHq, Fault};
use crate::harness::{of_kind, Gateway, PtyScanner, Store, DEADLINE};

/// Waits until the fake HQ holds at least `n` records.
async fn wait_stored(hq: &FakeHq, n: usize) {
    let start = Instant::now();
    while hq.stored_count() < n {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "HQ got {} of {n} records; answers {:?}",
            hq.stored_count(),
            hq.lock().answers
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the gateway's uplink has nothing left to send.
async fn wait_backlog_empty(gateway: &Gateway) {
    gateway
        .wait_for("empty backlog", |g| async move {
            g.status().await["journal"]["backlog_records"] == 0
        })
        .await;
}

fn seqs_are_contiguous(records: &[Value]) {
    let mut by_epoch: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for record in records {
        by_epoch
            .entry(record["epoch"].as_str().unwrap().to_owned())
            .or_default()
            .push(record["seq"].as_u64().unwrap());
    }
    for (epoch, mut seqs) in by_epoch {
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "HQ has a gap in epoch {epoch}");
    }
}

#[tokio::test]
async fn server_errors_are_retried_until_hq_accepts() {
    let hq = FakeHq::start("store-token").await;
    hq.lock()
        .script
        .extend([Fault::Status(503), Fault::Status(500), Fault::Status(408)]);
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&hq.endpoint(), "store-token", "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(b"]E06901234567892\r").await;
    gateway.wait_scans_durable(1).await;
    wait_backlog_empty(&gateway).await;
    assert!(gateway.stop().await.success());
    let inner = hq.lock();
    assert_eq!(&inner.answers[..4], &[503, 500, 408, 200]);
    assert_eq!(of_kind(&inner.stored, "scan").len(), 1);
}

#[tokio::test]
async fn records_reach_hq_in_order_and_leave_the_journal() {
    let hq = FakeHq::start("store-token").await;
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&hq.endpoint(), "store-token", "compression = \"zstd\"");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(b"]E06901234567892\r]E469012341\r").await;
    gateway.wait_scans_durable(2).await;
    wait_backlog_empty(&gateway).await;
    let status = gateway.status().await;
    assert_eq!(status["uplink"]["state"], "idle");
    assert!(status["uplink"]["last_success_at"].is_string());
    assert_eq!(status["uplink"]["last_error"], Value::Null);
    assert!(gateway.metric("posgw_uplink_sent_records_total").await >= 4.0);
    assert!(gateway.stop().await.success());

    let stored = hq.lock().stored.clone();
    let kinds: Vec<&str> = stored.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["gateway", "device", "scan", "scan"], "in seq order");
    seqs_are_contiguous(&stored);
    // Only the `stopped` record, written after the uplink stopped, is left for next time.
    let left = store.dump();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["data"]["event"], "stopped");
}

#[tokio::test]
async fn faults_are_retried_big_batches_split_and_a_poison_record_dead_lettered() {
    let hq = FakeHq::start("store-token").await;
    {
        let mut inner = hq.lock();
        inner.script.extend([
            // A redirect is never followed: it would turn the POST into a GET.
            Fault::Status(302),
            Fault::RetryAfter(1),
            Fault::Drop,
            Fault::Status(401),
            Fault::Slow(Duration::from_millis(1500)),
        ]);
        inner.max_records = Some(4);
        inner.poison = Some("POISON".into());
    }
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&hq.endpoint(), "store-token", "");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut frames = Vec::new();
    for i in 0..20u32 {
        if i == 13 {
            frames.extend_from_slice(b"]C0POISON-13\r");
        } else {
            frames.extend_from_slice(format!("]C0ITEM-{i:02}\r").as_bytes());
        }
    }
    scanner.send(&frames).await;
    gateway.wait_scans_durable(20).await;
    wait_backlog_empty(&gateway).await;
    let status = gateway.status().await;
    assert_eq!(status["journal"]["dead_records"], 1);
    assert_eq!(status["uplink"]["dead_lettered"], 1);
    assert!(
        status["uplink"]["retries"].as_u64().unwrap() >= 4,
        "{status}"
    );
    assert_eq!(gateway.metric("posgw_uplink_dead_records_total").await, 1.0);
    assert!(gateway.stop().await.success());

    let inner = hq.lock();
    // 302, 429, dropped connection and 401 were all answered before anything was stored.
    assert_eq!(&inner.answers[..4], &[302, 429, 0, 401]);
    assert!(
        inner.answers.contains(&413),
        "batches over 4 records were split"
    );
    assert!(
        inner.answers.contains(&400),
        "the poison record was bisected out"
    );
    let codes: Vec<&str> = of_kind(&inner.stored, "scan")
        .iter()
        .map(|r| r["data"]["code"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20)
        .filter(|i| *i != 13)
        .map(|i| format!("ITEM-{i:02}"))
        .collect();
    assert_eq!(codes, expected, "every good scan once, in order");
    let ids: HashSet<&str> = inner
        .stored
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), inner.stored.len());
    drop(inner);

    let dead = store.dump_dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["data"]["code"], "POISON-13");
}

#[tokio::test]
async fn kill_9_during_steady_load_loses_nothing_durable_and_hq_ends_complete() {
    let hq = FakeHq::start("store-token").await;
    let store = Store::new();
    store.write_config("");
    store.add_uplink(&hq.endpoint(), "store-token", "batch_max_records = 50");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));

    // The scanner keeps scanning while the gateway is killed and restarted: the pty holds what
    // arrives while nobody reads.
    let total = 1500u32;
    let feeder = tokio::spawn(async move {
        for i in 0..total {
            scanner.send(format!("]C0LOAD-{i:05}\r").as_bytes()).await;
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        scanner
    });
    // Per round: the epoch and the highest seq the gateway called durable just before the kill.
    let mut acknowledged = Vec::new();
    for round in 1..=3 {
        let gateway = Gateway::start(&store).await;
        let target = hq.stored_count() + 100;
        wait_stored(&hq, target).await;
        let journal = gateway.status().await["journal"].clone();
        acknowledged.push((
            journal["epoch"].as_str().unwrap().to_owned(),
            journal["durable_seq"].as_u64().unwrap(),
        ));
        gateway.kill9().await;
        eprintln!(
            "round {round}: killed with {} records at HQ",
            hq.stored_count()
        );
    }
    let mut scanner = feeder.await.unwrap();
    let gateway = Gateway::start(&store).await;
    // A scan read by a gateway that was then killed inside its flush window was never
    // acknowledged and may be gone; a final scan through the surviving gateway marks the end.
    let last = "SENTINEL".to_owned();
    scanner.send(b"]C0SENTINEL\r").await;
    let start = Instant::now();
    while !of_kind(&hq.lock().stored, "scan")
        .last()
        .is_some_and(|r| r["data"]["code"] == last.as_str())
    {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "the last scan never reached HQ"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_backlog_empty(&gateway).await;
    assert!(gateway.stop().await.success());

    let inner = hq.lock();
    seqs_are_contiguous(&inner.stored);
    let ids: HashSet<&str> = inner
        .stored
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), inner.stored.len(), "HQ stored each id once");
    let codes: Vec<&str> = of_kind(&inner.stored, "scan")
        .iter()
        .map(|r| r["data"]["code"].as_str().unwrap())
        .collect();
    let unique: HashSet<&&str> = codes.iter().collect();
    assert_eq!(unique.len(), codes.len(), "no scan recorded twice");
    // Everything the gateway had called durable before each kill is at HQ. (A kill may take
    // back records appended within the last flush window: they were never acknowledged.)
    for (epoch, durable_seq) in &acknowledged {
        for seq in 1..=*durable_seq {
            let id = format!("WZ-LC-001/gw-test/{epoch}/{seq}");
            assert!(
                ids.contains(id.as_str()),
                "acknowledged record {id} missing at HQ"
            );
        }
    }
    eprintln!(
        "{} scans of {total} at HQ, {} resent duplicates dropped",
        codes.len(),
        inner.duplicates
    );
}

#[tokio::test]
async fn over_max_journal_bytes_the_oldest_scans_are_evicted_and_the_eviction_recorded() {
    // HQ is unreachable: everything stays in the journal until the quota bites.
    let store = Store::new();
    store.write_config("");
    store.add_uplink(
        "http://127.0.0.1:9/v1/batches",
        "store-token",
        "max_journal_bytes = \"32KiB\"",
    );
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    for i in 0..200 {
        scanner.send(format!("]C0QUOTA-{i:04}\r").as_bytes()).await;
    }
    gateway.wait_scans_durable(200).await;
    gateway
        .wait_for("evictions", |g| async move {
            g.metric("posgw_journal_evicted_records_total").await > 0.0
        })
        .await;
    let backlog = gateway.status().await["journal"]["backlog_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        backlog <= 40 * 1024,
        "backlog {backlog} bytes stays near the quota"
    );
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let codes: Vec<&str> = of_kind(&records, "scan")
        .iter()
        .map(|r| r["data"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes.last(),
        Some(&"QUOTA-0199"),
        "the newest scans are kept"
    );
    assert!(
        !codes.contains(&"QUOTA-0000"),
        "the oldest scans went first"
    );
    assert!(of_kind(&records, "gateway")
        .iter()
        .any(|r| r["data"]["event"] == "evicted"));
}
