//! What the journal does when nothing goes wrong: appends and their seqs and ids, batches,
//! durable waits and group commit, reads, removal after upload, dead letters, close, and the
//! offline `dump` and `stats`.

use super::helpers::*;

#[tokio::test]
async fn seq_is_gapless_and_records_follow_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::from_millis(5)).await;
    let epoch = handle.stats().epoch;
    assert_eq!(epoch.len(), 8);
    assert!(epoch
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let appended = append_scans(&handle, 50).await;
    for (i, record) in appended.iter().enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(record.id, id(&epoch, i + 1));
    }
    let last_position = appended.last().expect("records").position;
    all_durable(&appended).await;
    let stats = handle.stats();
    assert_eq!(stats.next_seq, 51);
    assert_eq!(stats.durable_seq, 50);
    assert_eq!(stats.backlog_records, 50);
    assert_eq!(stats.appended_total, 50);
    assert_eq!(stats.per_kind[Kind::Scan.index()], (Kind::Scan, 50));

    let records = handle.read(0, 1000, usize::MAX).await.expect("read");
    assert_eq!(records.len(), 50);
    assert_eq!(records.last().expect("records").position, last_position);
    let bytes: u64 = records.iter().map(|r| r.bytes.len() as u64).sum();
    assert_eq!(stats.backlog_bytes, bytes);
    for (i, value) in parsed(&records).iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(value["id"], id(&epoch, seq));
        assert_eq!(value["store"], STORE);
        assert_eq!(value["gateway"], GATEWAY);
        assert_eq!(value["epoch"], epoch.as_str());
        assert_eq!(value["seq"], seq);
        assert_eq!(value["kind"], "scan");
        assert_eq!(value["data"]["device"], "scanner-1");
        let ts = value["ts"].as_str().expect("ts");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert!(value["clock"]["boot"].is_string());
        assert!(value["clock"]["mono_ms"].is_u64());
        assert!(value["clock"]["synced"].is_boolean());
    }
    handle.close().await.expect("close");

    // Reopen: same epoch, seq continues.
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    assert_eq!(handle.stats().epoch, epoch);
    assert_eq!(handle.stats().next_seq, 51);
    assert_eq!(handle.stats().backlog_records, 50);
    let next = last_append(handle).await;
    assert_eq!(next.seq, 51);
    assert!(next.position > last_position);
}

#[tokio::test]
async fn durable_waits_resolve_with_and_without_a_flush_interval() {
    for flush in [Duration::ZERO, Duration::from_millis(50)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = open_clean(dir.path(), flush).await;
        let mut tasks = Vec::new();
        for task in 0..4 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let appended = handle
                        .append_value(Kind::Device, &json!({"task": task, "i": i}))
                        .await
                        .expect("append");
                    appended.durable.wait().await.expect("durable");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let stats = handle.stats();
        assert_eq!(stats.next_seq, 201, "flush {flush:?}");
        assert_eq!(stats.durable_seq, 200, "flush {flush:?}");
        handle.close().await.expect("close");
    }
}

#[tokio::test]
async fn an_urgent_append_is_flushed_at_once_with_what_came_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A group-commit window far longer than the test: only urgency can make anything durable.
    let handle = open_clean(dir.path(), Duration::from_secs(3600)).await;
    let plain = handle
        .append_value(Kind::Scan, &json!({"code": "6901234567892"}))
        .await
        .expect("append");
    let urgent = handle
        .append_urgent(
            Kind::ConsultationStep,
            Data::serialize(&json!({"key": "consult"})).unwrap(),
        )
        .await
        .expect("append");
    tokio::time::timeout(Duration::from_secs(20), urgent.durable.wait())
        .await
        .expect("durable after one fsync, not after the window")
        .expect("durable");
    assert!(plain.durable.is_durable(), "the record before rode along");
    // The next plain record waits for the window again.
    let later = handle
        .append_value(Kind::Scan, &json!({"code": "4006381333931"}))
        .await
        .expect("append");
    let waited =
        tokio::time::timeout(Duration::from_millis(300), later.durable.clone().wait()).await;
    assert!(waited.is_err(), "a plain record is not flushed early");
    handle.close().await.expect("close");
    assert!(later.durable.is_durable());
}

#[tokio::test]
async fn readers_see_only_durable_records_and_page_by_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A flush interval no test waits for: nothing becomes durable until close.
    let handle = open_clean(dir.path(), Duration::from_secs(3600)).await;
    let appended = append_scans(&handle, 5).await;
    assert!(!appended[0].durable.is_durable());
    assert!(handle
        .read(0, 100, usize::MAX)
        .await
        .expect("read")
        .is_empty());
    let err = handle.remove_through(appended[4].position).await;
    assert!(matches!(err, Err(JournalError::Rejected(_))), "{err:?}");
    let waiter = tokio::spawn(async move {
        for record in appended {
            record.durable.wait().await.expect("durable at close");
        }
    });
    handle.close().await.expect("close");
    waiter.await.expect("waiter");

    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let page = handle.read(0, 2, usize::MAX).await.expect("read");
    assert_eq!(page.len(), 2);
    let rest = handle
        .read(page[1].position, 100, usize::MAX)
        .await
        .expect("read");
    assert_eq!(rest.len(), 3);
    // A byte limit smaller than one record still returns one record.
    let one = handle.read(0, 100, 1).await.expect("read");
    assert_eq!(one.len(), 1);
    let size = page[0].bytes.len();
    let two = handle.read(0, 100, size * 2 + 1).await.expect("read");
    assert_eq!(two.len(), 2);
    handle.close().await.expect("close");
}

#[tokio::test]
async fn data_that_is_not_an_object_is_rejected_without_using_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let err = handle.append_value(Kind::Scan, &json!([1, 2])).await;
    assert!(matches!(err, Err(JournalError::InvalidData(_))), "{err:?}");
    let ok = last_append(handle).await;
    assert_eq!(ok.seq, 1);
}

#[tokio::test]
async fn dump_shows_live_and_dead_records_and_offline_stats_count_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let epoch = journal_with_a_dead_letter(dir.path(), 5, 1).await;

    let live = dump_values(dir.path(), false);
    assert_eq!(seqs(&live), vec![1, 3, 4, 5]);
    let dead = dump_values(dir.path(), true);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], id(&epoch, 2));

    let stats = offline_stats(dir.path()).expect("stats");
    assert_eq!(stats.epoch, epoch);
    assert_eq!(stats.next_seq, 6);
    assert_eq!(stats.records, 4);
    assert_eq!(stats.dead_records, 1);
    assert!(stats.bytes > 0);
    assert_eq!(stats.oldest_ts.as_deref(), live[0]["ts"].as_str());
    assert_eq!(stats.newest_ts.as_deref(), live[3]["ts"].as_str());
    assert!(stats.quarantine.is_empty());
    let text = stats.to_string();
    assert!(text.contains(&epoch), "{text}");
    assert!(text.contains("next seq      6"), "{text}");
    assert!(text.contains("dead records  1"), "{text}");

    // Dead-lettering a record does not let its seq come back.
    let stats = reopened_stats(dir.path()).await;
    assert_eq!((stats.next_seq, stats.dead_records), (6, 1));

    // Offline commands on a data dir without a journal say so.
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        offline_stats(empty.path()),
        Err(JournalError::Missing { .. })
    ));
}

#[tokio::test]
async fn close_makes_everything_durable_for_every_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::from_secs(3600)).await;
    let other = handle.clone();
    let appended = append_scans(&other, 20).await;
    handle.close().await.expect("close");
    for record in appended {
        assert!(record.durable.is_durable());
    }
    assert!(matches!(
        other.append_value(Kind::Scan, &json!({})).await,
        Err(JournalError::Closed)
    ));
    assert_eq!(dump_values(dir.path(), false).len(), 20);
}

#[tokio::test]
async fn append_batch_gives_contiguous_seqs_and_one_durable_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::from_millis(5)).await;
    let epoch = handle.stats().epoch;
    let single = handle
        .append_value(Kind::Gateway, &json!({"event": "started"}))
        .await
        .expect("append");
    assert_eq!(single.seq, 1);
    let batch = handle
        .append_batch(Kind::Scan, scan_batch(0, 5))
        .await
        .expect("append_batch");
    assert_eq!(batch.first_seq, 2);
    assert_eq!(batch.count, 5);
    assert_eq!(batch.seqs(), 2..7);
    assert_eq!(batch.first_position, single.position + 1);
    assert_eq!(batch.id(0), Some(id(&epoch, 2)));
    assert_eq!(batch.id(4), Some(id(&epoch, 6)));
    assert_eq!(batch.id(5), None);
    let after = handle
        .append_value(Kind::Gateway, &json!({"event": "after"}))
        .await
        .expect("append");
    assert_eq!(after.seq, 7);
    assert_eq!(after.position, batch.first_position + 5);

    // The batch's one wait covers all its records (and everything before them).
    batch.durable.wait().await.expect("durable");
    assert!(single.durable.is_durable());
    assert!(handle.durable_position() >= batch.first_position + 4);
    let stats = handle.stats();
    assert!(stats.durable_seq >= 6);
    assert_eq!(stats.appended_total, 7);
    assert_eq!(stats.backlog_records, 7);
    assert_eq!(stats.per_kind[Kind::Scan.index()], (Kind::Scan, 5));
    assert_eq!(stats.per_kind[Kind::Gateway.index()], (Kind::Gateway, 2));
    after.durable.wait().await.expect("durable");

    let values = parsed(&handle.read(0, 100, usize::MAX).await.expect("read"));
    assert_eq!(seqs(&values), (1..=7).collect::<Vec<u64>>());
    for (i, value) in values[1..6].iter().enumerate() {
        assert_eq!(value["kind"], "scan");
        assert_eq!(value["data"]["i"], i);
        assert_eq!(value["id"], id(&epoch, i + 2));
    }
    handle.close().await.expect("close");

    // The seq carries on after a restart.
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let batch = handle
        .append_batch(Kind::Scan, scan_batch(5, 2))
        .await
        .expect("append_batch");
    assert_eq!(batch.seqs(), 8..10);
    handle.close().await.expect("close");
}

#[tokio::test]
async fn append_batch_with_one_bad_record_appends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let mut data = scan_batch(0, 3);
    data.insert(1, Data::serialize(&json!([1])).expect("serialisable"));
    let err = handle.append_batch(Kind::Scan, data).await;
    match err {
        Err(JournalError::InvalidData(reason)) => assert!(reason.contains("record 1"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let too_many = scan_batch(0, MAX_BATCH_RECORDS as u64 + 1);
    let err = handle.append_batch(Kind::Scan, too_many).await;
    assert!(matches!(err, Err(JournalError::Rejected(_))), "{err:?}");
    assert_eq!(handle.stats().next_seq, 1);
    assert_eq!(handle.stats().appended_total, 0);

    // An empty batch is fine, appends nothing and has nothing to wait for.
    let empty = handle
        .append_batch(Kind::Scan, Vec::new())
        .await
        .expect("empty batch");
    assert_eq!(empty.count, 0);
    assert!(empty.durable.is_durable());
    empty.durable.wait().await.expect("durable");

    let ok = handle
        .append_batch(Kind::Scan, scan_batch(0, 2))
        .await
        .expect("append_batch");
    assert_eq!(ok.first_seq, 1);
    handle.close().await.expect("close");
}

/// While a slow flush runs, appends are taken only until the oldest record waiting for the next
/// flush is a flush interval old; then the producer waits for the running flush to finish, so
/// what is accepted but not durable stays near one flush interval's worth (an MQTT backlog
/// after a restart had ~5.5k records waiting with flush = 20 ms).
#[tokio::test]
async fn appends_wait_for_a_slow_flush_once_the_next_one_is_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = spawn_with_faults(
        dir.path(),
        Duration::from_millis(20),
        InjectedFaults {
            flush_delay: Some(Duration::from_millis(400)),
            ..InjectedFaults::default()
        },
    );
    let scan = |code: &str| Data::serialize(&json!({ "code": code })).expect("data");
    // The first record's flush starts after 20 ms and runs 400 ms.
    let first = handle.append(Kind::Scan, scan("1")).await.expect("first");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!first.durable.is_durable(), "the slow flush runs");
    // Taken at once: it starts the wait for the next flush.
    handle.append(Kind::Scan, scan("2")).await.expect("second");
    assert!(!first.durable.is_durable(), "still running");
    // A flush interval later the next flush is due but cannot start: held back until the
    // running one is done.
    tokio::time::sleep(Duration::from_millis(40)).await;
    handle.append(Kind::Scan, scan("3")).await.expect("third");
    assert!(
        first.durable.is_durable(),
        "an append accepted while the due flush could not start"
    );
    handle.close().await.expect("close");
}
