//! Journal damage the gateway must notice and say so (issue 11, finding 7), through the real
//! binary: a segment file deleted from the middle of the record log, and offline commands
//! (`posgw journal stats`, `dump`) that must not change a single file of the journal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::harness::{posgw, Gateway, PtyScanner, Store};

/// Writes `n` scans of ~2 KB each into the journal of `store` through the library (much faster
/// than through a scanner), so the record log spans several 8 MiB segments; returns the
/// segment files in order.
async fn journal_over_segments(store: &Store, n: u64) -> Vec<PathBuf> {
    let opened = posgw::journal::open(posgw::journal::JournalConfig {
        data_dir: store.data_dir(),
        store: "WZ-LC-001".into(),
        gateway: "gw-test".into(),
        flush: Duration::from_millis(5),
        version: "test",
        max_bytes: None,
    })
    .await
    .expect("open journal");
    let pad = "p".repeat(2000);
    for i in 0..n {
        opened
            .handle
            .append_value(
                posgw::record::Kind::Scan,
                &json!({"device": "scanner-1", "code": format!("690{i:010}"), "pad": pad}),
            )
            .await
            .expect("append");
    }
    opened.handle.close().await.expect("close");
    let mut files: Vec<PathBuf> = std::fs::read_dir(store.data_dir().join("journal/segments"))
        .expect("segments")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_missing_middle_segment_is_quarantined_logged_recorded_and_shown_in_the_status() {
    let store = Store::new();
    store.write_config("");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let files = journal_over_segments(&store, 9_000).await;
    assert!(files.len() >= 3, "{files:?}");
    std::fs::remove_file(&files[1]).expect("delete the middle segment");
    let name = files[1].file_name().unwrap().to_string_lossy().into_owned();

    let gateway = Gateway::start(&store).await;
    // Loud: an ERROR line naming the segment ...
    gateway
        .wait_log("moving it aside and starting a new journal", 1)
        .await;
    assert!(
        gateway.log_count(&format!("segments/{name} is missing from the record log")) >= 1,
        "the log names the missing segment"
    );
    assert!(gateway.log_count("ERROR") >= 1);
    // ... the status ...
    let journal = gateway.status().await["journal"].clone();
    let reason = journal["replaced"]["reason"]
        .as_str()
        .expect("journal.replaced in the status");
    assert!(reason.contains(&name), "{reason}");
    let quarantine = PathBuf::from(journal["replaced"]["quarantine"].as_str().expect("folder"));
    assert!(quarantine.join("segments").is_dir());
    assert!(gateway.stop().await.success());
    // ... and the new journal's first record.
    let records = store.dump();
    assert_eq!(records[0]["kind"], "gateway");
    assert_eq!(records[0]["data"]["event"], "journal_replaced");
    assert!(records[0]["data"]["detail"]
        .as_str()
        .is_some_and(|detail| detail.contains("is missing from the record log")));
    // The damaged journal was moved aside whole: nothing more was deleted.
    assert_eq!(
        std::fs::read_dir(quarantine.join("segments"))
            .unwrap()
            .count(),
        files.len() - 1
    );
}

/// Every file below `dir` (relative path) with its length, modification time and bytes' CRC.
fn fingerprints(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64, std::time::SystemTime, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                walk(root, &path, out);
            } else {
                out.push((
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    metadata.len(),
                    metadata.modified().unwrap(),
                    crc32fast::hash(&std::fs::read(&path).unwrap()),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn journal_stats_and_dump_change_no_file_of_the_journal() {
    let store = Store::new();
    store.write_config("");
    let files = journal_over_segments(&store, 5_000).await;
    assert!(files.len() >= 2, "{files:?}");

    let before = fingerprints(&store.data_dir());
    let stats = posgw()
        .args(["journal", "stats", "--data"])
        .arg(store.data_dir())
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("records       5000"), "{text}");
    assert_eq!(store.dump().len(), 5_000);
    assert!(store.dump_dead().is_empty());
    assert_eq!(
        before,
        fingerprints(&store.data_dir()),
        "an offline command changed the journal's files"
    );
}
