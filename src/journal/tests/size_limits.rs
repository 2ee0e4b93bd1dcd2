//! The quota (`max_journal_bytes`): which records are evicted, which never are, how each round
//! is written down, and that evicted seqs are never issued again.

use super::helpers::*;

#[tokio::test]
async fn over_max_bytes_the_oldest_scans_and_device_records_are_evicted_and_recorded() {
    // Each round of evictions frees 5% of the quota and leaves one `evicted` record (never
    // evicted itself), so the quota must hold far more than a few records.
    const QUOTA: u64 = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_with_quota(dir.path(), QUOTA).await;
    let attribution = handle
        .append_value(
            Kind::Attribution,
            &json!({"campaign": "c1", "answer": "yes"}),
        )
        .await
        .expect("append attribution");
    let device = handle
        .append_value(
            Kind::Device,
            &json!({"device": "scanner-1", "event": "connected"}),
        )
        .await
        .expect("append device");
    let scans = append_scans(&handle, 400).await;
    let sale = handle
        .append_value(Kind::Sale, &json!({"register": "pos-1", "total": "12.50"}))
        .await
        .expect("append sale");
    let stats = handle.stats();
    assert!(stats.evicted_records > 0, "{stats:?}");
    assert!(stats.backlog_bytes <= QUOTA, "{stats:?}");
    let next_seq = stats.next_seq;
    let evicted = stats.evicted_records;
    handle.close().await.expect("close");

    let records = dump_values(dir.path(), false);
    let ids = ids(&records);
    assert_eq!(ids[0], attribution.id, "attribution is never evicted");
    assert!(ids.contains(&sale.id.as_str()), "sale is never evicted");
    assert!(
        !ids.contains(&device.id.as_str()),
        "the oldest device record went first"
    );
    // The scans left are the newest ones, without a hole: eviction goes oldest first.
    let kept: Vec<&str> = scans
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| ids.contains(id))
        .collect();
    assert!(!kept.is_empty(), "{ids:?}");
    assert_eq!(kept.len() as u64 + evicted, scans.len() as u64 + 1);
    assert_eq!(kept[kept.len() - 1], scans[scans.len() - 1].id);
    let first_kept = scans.len() - kept.len();
    assert_eq!(kept[0], scans[first_kept].id);
    // Every eviction is written down; the counts add up.
    let events = evicted_events(&records);
    assert!(!events.is_empty());
    let mut total = 0u64;
    for event in &events {
        let detail = event["data"]["detail"].as_str().expect("detail");
        assert!(detail.contains("max_journal_bytes"), "{detail}");
        assert_eq!(event["data"]["version"], VERSION);
        let count: u64 = detail
            .strip_prefix("evicted ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("count in detail");
        total += count;
    }
    assert_eq!(total, evicted);

    // Seqs go on above everything issued, evicted ones included.
    let handle = open_with_quota(dir.path(), QUOTA).await;
    assert_eq!(handle.stats().next_seq, next_seq);
    assert_eq!(handle.stats().evicted_records, 0, "counted per process");
    let next = last_append(handle).await;
    assert_eq!(next.seq, next_seq);
}

#[tokio::test]
async fn sales_and_attributions_stay_past_max_bytes_while_new_scans_go() {
    const QUOTA: u64 = 20 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_with_quota(dir.path(), QUOTA).await;
    let mut kept = Vec::new();
    for i in 0..100 {
        let kind = if i % 2 == 0 {
            Kind::Sale
        } else {
            Kind::Attribution
        };
        let appended = handle
            .append_value(kind, &json!({"register": "pos-1", "i": i}))
            .await
            .expect("append");
        kept.push(appended.id);
    }
    let stats = handle.stats();
    assert!(stats.backlog_bytes > QUOTA, "{stats:?}");
    assert_eq!(stats.evicted_records, 0);
    // A scan now is the oldest evictable record: it goes at once, the sales stay.
    let scan = append_scans(&handle, 1).await.remove(0);
    assert_eq!(handle.stats().evicted_records, 1);
    let next_seq = handle.stats().next_seq;
    handle.close().await.expect("close");

    let records = dump_values(dir.path(), false);
    let ids = ids(&records);
    for id in &kept {
        assert!(ids.contains(&id.as_str()), "{id} kept");
    }
    assert!(!ids.contains(&scan.id.as_str()));
    // The eviction was written down on close (there was no round to finish before).
    let events = evicted_events(&records);
    assert_eq!(events.len(), 1, "{events:?}");
    let detail = events[0]["data"]["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("evicted 1 scan/device records"),
        "{detail}"
    );
    assert!(detail.contains(&scan.id), "{detail}");

    // That `evicted` record took the next seq.
    assert_eq!(reopened_stats(dir.path()).await.next_seq, next_seq + 1);
}

#[tokio::test]
async fn evicting_the_newest_record_never_lets_its_seq_be_issued_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seq = {
        let (mut store, _) = open_store(dir.path());
        let data = Data::serialize(&json!({"code": "1"})).expect("serialisable");
        store.append(Kind::Sale, &data).expect("sale");
        let scan = store.append(Kind::Scan, &data).expect("scan");
        let evicted = store.evict(0, 10).expect("evict");
        assert_eq!(evicted.records, 1);
        assert_eq!(evicted.first_id.as_deref(), Some(scan.id.as_str()));
        assert_eq!(store.evict(0, 10).expect("evict again").records, 0);
        store.flush().expect("flush");
        scan.seq
    };
    let stats = reopened_stats(dir.path()).await;
    assert_eq!((stats.next_seq, stats.backlog_records), (seq + 1, 1));
}
