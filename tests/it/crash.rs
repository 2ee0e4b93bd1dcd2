//! Crash safety, tested by crashing: kill -9 and damaged sled files.

use std::collections::HashSet;

use crate::harness::{assert_seq_contiguous, of_kind, posgw, Gateway, PtyScanner, Store};

/// `n` distinct valid EAN-13 frames: 690 + a 9-digit counter + check digit.
fn ean_frames(start: u64, n: u64) -> Vec<String> {
    (start..start + n)
        .map(|i| {
            let body = format!("690{i:09}");
            format!("{body}{}", posgw::decode::check_digit(body.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn kill_9_after_the_flush_window_loses_nothing_and_seq_continues() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let first = ean_frames(0, 300);
    let second = ean_frames(300, 50);

    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let epoch = gateway.status().await["journal"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for code in &first {
        scanner.send(format!("]E0{code}\r\n").as_bytes()).await;
    }
    gateway.wait_scans_durable(first.len() as u64).await;
    gateway.kill9().await;

    // Restart on the same journal, scan more, stop cleanly.
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    assert_eq!(gateway.status().await["journal"]["epoch"], epoch.as_str());
    for code in &second {
        scanner.send(format!("]E0{code}\r\n").as_bytes()).await;
    }
    gateway.wait_scans_durable(second.len() as u64).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let scanned: Vec<&str> = of_kind(&records, "scan")
        .iter()
        .map(|r| r["data"]["code"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = first.iter().chain(&second).map(String::as_str).collect();
    assert_eq!(scanned, expected, "every acknowledged scan once, in order");
    assert_seq_contiguous(&records, &epoch);
    let ids: HashSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "ids are unique");
}

#[tokio::test]
async fn a_damaged_journal_is_quarantined_replaced_and_salvaged() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let old_epoch = gateway.status().await["journal"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for code in ean_frames(0, 20) {
        scanner.send(format!("]E0{code}\r").as_bytes()).await;
    }
    gateway.wait_scans_durable(20).await;
    assert!(gateway.stop().await.success());
    let before = store.dump();

    // Damage sled's config file, as a power cut mid-write can.
    let conf = store.data_dir().join("journal").join("conf");
    std::fs::write(&conf, b"\x00\x01garbage that is not a sled config").unwrap();

    let gateway = Gateway::start(&store).await;
    let journal = gateway.status().await["journal"].clone();
    let new_epoch = journal["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch, "a replaced journal gets a new epoch");
    let (code, _) = gateway.get("/healthz").await.unwrap();
    assert_eq!(code, 200, "the gateway keeps serving");
    assert!(gateway.stop().await.success());

    let quarantined: Vec<_> = std::fs::read_dir(store.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("quarantine-"))
        .collect();
    assert_eq!(quarantined.len(), 1, "damaged journal moved aside");

    let records = store.dump();
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[0]["kind"], "gateway");
    assert_eq!(records[0]["data"]["event"], "journal_replaced");
    assert_seq_contiguous(&records, &new_epoch);

    let salvage = posgw()
        .args(["journal", "salvage", "--data"])
        .arg(store.data_dir())
        .output()
        .unwrap();
    assert!(
        salvage.status.success(),
        "salvage failed: {}",
        String::from_utf8_lossy(&salvage.stderr)
    );
    let after = store.dump();
    let after_ids: HashSet<&str> = after.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for record in &before {
        assert!(
            after_ids.contains(record["id"].as_str().unwrap()),
            "salvage recovers {} with its original id",
            record["id"]
        );
    }
    let old: Vec<_> = after
        .iter()
        .filter(|r| r["epoch"] == old_epoch.as_str())
        .collect();
    assert_eq!(old.len(), before.len());
    assert_eq!(
        old,
        before.iter().collect::<Vec<_>>(),
        "salvaged bytes unchanged"
    );

    // A second salvage finds nothing new to copy.
    let again = posgw()
        .args(["journal", "salvage", "--data"])
        .arg(store.data_dir())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(store.dump().len(), after.len());
}
