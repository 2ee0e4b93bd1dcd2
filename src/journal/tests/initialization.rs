//! Opening a journal: the lock, a new journal's epoch, the floor file, the backlog figures
//! recovered after a clean close or a crash, a journal over several segments, the crash points
//! of a roll, and the format 1 migration.

use super::helpers::*;

#[tokio::test]
async fn a_second_open_is_in_use_and_quarantines_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    append_scans(&handle, 3).await;
    let second = open(config(dir.path(), Duration::ZERO)).await;
    match second {
        Err(err @ JournalError::InUse { .. }) => {
            assert!(
                err.to_string().contains("is in use by another process"),
                "{err}"
            );
        }
        other => panic!("expected in-use, got {other:?}"),
    }
    assert!(quarantine_folders(dir.path()).is_empty());
    assert!(matches!(
        offline_stats(dir.path()),
        Err(JournalError::InUse { .. })
    ));
    // The first journal is unaffected.
    let next = last_append(handle).await;
    assert_eq!(next.seq, 4);
}

#[tokio::test]
async fn the_floor_follows_the_journal_and_a_missing_folder_starts_a_new_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, _) = journal_with_records(dir.path(), 5).await;
    let written = floor::read(dir.path()).expect("floor").expect("a floor");
    assert_eq!(written.epoch, old_epoch);
    assert_eq!((written.seq, written.position), (5, 5));

    // Removing records after upload lowers nothing: the journal reopens clean.
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    handle.remove_through(5).await.expect("remove");
    handle.close().await.expect("close");
    assert_eq!(reopened_stats(dir.path()).await.next_seq, 6);

    // The folder itself deleted: a new epoch (no id can repeat), not a quarantine.
    std::fs::remove_dir_all(dir.path().join("journal")).expect("delete journal");
    let stats = reopened_stats(dir.path()).await;
    assert_ne!(stats.epoch, old_epoch);
    assert_eq!(stats.next_seq, 1);
    let written = floor::read(dir.path()).expect("floor").expect("a floor");
    assert_ne!(written.epoch, old_epoch);
}

#[tokio::test]
async fn backlog_figures_survive_a_clean_close_and_a_crash_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let appended = append_scans(&handle, 20).await;
    handle
        .wait_durable_beyond(appended[18].position)
        .await
        .expect("durable");
    handle
        .remove_through(appended[4].position)
        .await
        .expect("remove");
    handle
        .move_to_dead(appended[5].position, "rejected by hq".to_string())
        .await
        .expect("dead-letter");
    let before = handle.stats();
    handle.close().await.expect("close");

    // A clean close saved the figures: the open uses them (and drops them from meta).
    let after = reopened_stats(dir.path()).await;
    assert_eq!(backlog(&after), backlog(&before));
    assert_eq!((after.backlog_records, after.dead_records), (14, 1));
    assert_eq!(after.next_seq, 21);

    // Without a close (as after a crash) nothing is saved and the open counts the records.
    let expected = {
        let (mut store, _) = open_store(dir.path());
        let data = Data::serialize(&json!({"code": "1"})).expect("serialisable");
        store.append(Kind::Scan, &data).expect("append");
        store.flush().expect("flush");
        store_backlog(&store)
    };
    assert_eq!(expected.0, 15);
    assert_eq!(store_backlog(&open_store(dir.path()).0), expected);
}

#[tokio::test]
async fn a_backlog_over_several_segments_survives_close_crash_and_partial_removal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::from_millis(5)).await;
    // ~2 KB each: 12,000 records are ~24 MB, three segments or more.
    let appended = append_bulky(&handle, 12_000).await;
    let last_position = appended.last().expect("appended").position;
    all_durable(appended.last()).await;
    let removed_through = appended[4_999].position;
    assert_eq!(
        handle
            .remove_through(removed_through)
            .await
            .expect("remove"),
        5_000
    );
    let journal = dir.path().join("journal");
    let files = || segment_count(&journal);
    let after_removal = files();
    handle.close().await.expect("close");

    // Clean close: the saved counters.
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    assert_eq!(handle.stats().backlog_records, 7_000);
    assert_eq!(handle.stats().next_seq, 12_001);
    let read = handle.read(0, 10, usize::MAX).await.expect("read");
    assert_eq!(read[0].position, appended[5_000].position);
    assert_eq!(read.len(), 10);
    handle.close().await.expect("close");

    // As after a crash: no saved counters, so the open counts the log.
    let db = raw_sled(&journal);
    db.open_tree("meta")
        .expect("meta")
        .remove("counters")
        .expect("remove counters");
    db.flush().expect("flush");
    drop(db);
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    assert_eq!(handle.stats().backlog_records, 7_000);
    assert_eq!(handle.stats().next_seq, 12_001);
    // Everything acknowledged: every segment but the last is deleted.
    handle
        .remove_through(last_position)
        .await
        .expect("remove all");
    assert_eq!(handle.stats().backlog_records, 0);
    assert!(files() < after_removal, "{} files", files());
    assert_eq!(files(), 1);
    handle.close().await.expect("close");
    let stats = reopened_stats(dir.path()).await;
    assert_eq!(
        stats.next_seq, 12_001,
        "the last record still tells the seq"
    );
    assert_eq!(stats.backlog_records, 0);
}

#[tokio::test]
async fn a_format_1_journal_is_converted_at_open_without_losing_or_reissuing_anything() {
    // Records as a format 1 journal held them: in sled's `records` tree.
    let source = tempfile::tempdir().expect("tempdir");
    let (epoch, ids) = journal_with_records(source.path(), 5).await;
    let records = dump_values(source.path(), false);
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = raw_sled(&dir.path().join("journal"));
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("format", "1").expect("format");
        meta.insert("epoch", epoch.as_bytes()).expect("epoch");
        let tree = db.open_tree("records").expect("records");
        // Positions 11..15: the conversion must keep them, not renumber.
        for (position, record) in (11u64..).zip(&records) {
            let bytes = serde_json::to_vec(record).expect("json");
            tree.insert(position.to_be_bytes(), bytes).expect("insert");
        }
        db.flush().expect("flush");
    }
    std::fs::write(dir.path().join("journal.lock"), b"").expect("lock file");

    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let stats = handle.stats();
    assert_eq!(stats.epoch, epoch);
    assert_eq!(stats.backlog_records, 5);
    assert_eq!(
        stats.next_seq, 6,
        "seqs continue after the converted records"
    );
    let read = handle.read(0, 100, usize::MAX).await.expect("read");
    let positions: Vec<u64> = read.iter().map(|r| r.position).collect();
    assert_eq!(positions, vec![11, 12, 13, 14, 15]);
    let appended = handle
        .append_value(
            Kind::Scan,
            &json!({"device": "scanner-1", "code": "6901234567892"}),
        )
        .await
        .expect("append");
    assert_eq!(appended.position, 16);
    handle.close().await.expect("close");

    let db = raw_sled(&dir.path().join("journal"));
    assert!(db.open_tree("records").expect("records").is_empty());
    assert_eq!(
        db.open_tree("meta")
            .expect("meta")
            .get("format")
            .expect("get")
            .as_deref(),
        Some(&b"2"[..])
    );
    drop(db);
    let got = dumped_ids(dir.path());
    assert_eq!(&got[..5], &ids[..]);
    assert_eq!(got.len(), 6);
}

/// Same crash, with the floor file in place: the healthy journal is not quarantined.
#[tokio::test]
async fn removal_right_after_a_roll_then_a_power_cut_does_not_quarantine_a_healthy_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    power_cut_right_after_a_roll_and_a_removal(dir.path());
    let (_, replaced) = open_store(dir.path());
    assert!(
        replaced.is_none(),
        "healthy journal quarantined: {replaced:?}"
    );
}

/// Saved counters are removed from sled at open but not flushed; records written to the
/// segment files after that survive a kill -9 (page cache), the removal does not.
#[tokio::test]
async fn saved_counters_are_not_used_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    append_scans(&handle, 10).await;
    handle.close().await.expect("close"); // counters saved: 10 records
    let snap = tempfile::tempdir().expect("snap");
    {
        let (mut store, _) = open_store(dir.path());
        // Sled's state on disk right after the open (its removal of the counters unflushed).
        snapshot_sled(&journal, snap.path());
        append_bulky_to(&mut store, 0..1000); // > 1 MiB: written out
                                              // or: a flush whose log fsync finished and whose sled flush did not.
    }
    restore_sled(&journal, snap.path());
    let (mut store, _) = open_store(dir.path());
    let records = store_seqs(&mut store).len() as u64;
    assert_eq!(store.backlog_records, records, "backlog_records is stale");
}
