//! The journal's invariants (see the module doc of `journal`): every seq is issued exactly
//! once, across removals, crashes and concurrent producers; the floors never run ahead of the
//! record log; removals count what they remove; offline commands change no file.

use super::helpers::*;

#[tokio::test]
async fn seq_continues_after_every_record_was_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let appended = append_scans(&handle, 10).await;
    let last = appended.last().expect("records").position;
    all_durable(&appended).await;
    assert_eq!(handle.remove_through(last).await.expect("remove"), 10);
    assert_eq!(handle.stats().backlog_records, 0);
    assert_eq!(handle.stats().backlog_bytes, 0);
    assert!(handle
        .read(0, 100, usize::MAX)
        .await
        .expect("read")
        .is_empty());
    handle.close().await.expect("close");

    let handle = open_clean(dir.path(), Duration::ZERO).await;
    assert_eq!(handle.stats().next_seq, 11);
    let next = last_append(handle).await;
    assert_eq!(next.seq, 11);
    assert!(next.position > last, "positions are never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_concurrent_appends_gets_every_seq_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::from_millis(10)).await;
    // Far more appends in flight than the actor handles per turn, so its queue is always full.
    let mut tasks = Vec::new();
    for i in 0..3000u32 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            handle
                .append_value(Kind::Scan, &json!({ "i": i }))
                .await
                .expect("append")
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        let appended = task.await.expect("task");
        seqs.push(appended.seq);
        appended.durable.wait().await.expect("durable");
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=3000).collect::<Vec<u64>>());
    assert_eq!(handle.stats().durable_seq, 3000);
    handle.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_and_single_appends_get_every_seq_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::from_millis(10)).await;
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut last = None;
            for round in 0..40u64 {
                if (task + round) % 3 == 0 {
                    let appended = handle
                        .append_value(Kind::Scan, &json!({"task": task, "round": round}))
                        .await
                        .expect("append");
                    seqs.push(appended.seq);
                    last = Some(appended.durable);
                } else {
                    let n = 1 + (task * 7 + round) % 50;
                    let batch = handle
                        .append_batch(Kind::Scan, scan_batch(round, n))
                        .await
                        .expect("append_batch");
                    assert_eq!(batch.count, n);
                    seqs.extend(batch.seqs());
                    last = Some(batch.durable);
                }
            }
            last.expect("appended").wait().await.expect("durable");
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.expect("task"));
    }
    let total = seqs.len() as u64;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total).collect::<Vec<u64>>());
    handle.close().await.expect("close");
    assert_eq!(dumped_seqs(dir.path()), (1..=total).collect::<Vec<u64>>());
}

/// Removing acknowledged records deletes the old segment; the last segment may hold nothing on
/// disk yet (just rolled). Without a (current) floor file, the next seq must still come out
/// above every seq issued.
#[tokio::test]
async fn removal_right_after_a_roll_then_a_power_cut_reissues_no_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last_seq = power_cut_right_after_a_roll_and_a_removal(dir.path());
    std::fs::remove_file(dir.path().join("journal.floor")).expect("rm floor");
    let (store, replaced) = open_store(dir.path());
    assert!(replaced.is_none());
    assert!(
        store.next_seq > last_seq,
        "seq {} would be issued again (last issued {last_seq})",
        store.next_seq
    );
}

/// Removing acknowledged records writes the floors (the seq issued so far) to sled, which
/// survives a process crash. Records appended but still in the log's buffer must reach the
/// kernel first: a crash would otherwise lose them while the floors keep their seqs, and the
/// next session would leave a gap.
#[test]
fn the_floors_never_run_ahead_of_the_log_so_a_crash_leaves_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, durable) = store_with_a_buffered_tail(dir.path(), 10, 5);
    store.remove_through(durable).expect("remove");
    // The crash: the store goes without a flush (sled's writes are in the kernel already).
    drop(store);
    let (mut store, _) = open_store(dir.path());
    assert_eq!(
        store_seqs(&mut store),
        (11..=15).collect::<Vec<_>>(),
        "the buffered records survived"
    );
    assert_eq!(store.next_seq, 16, "no seq skipped");
}

/// A removal counts what the reads before it handed out (as the uplink removes what it read
/// and sent) and otherwise counts the log: the backlog figures are right either way, also when
/// reads overlap, stop short of the removal, or a dead letter left the log in between.
#[test]
fn removals_are_counted_from_the_reads_before_them_or_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = open_store(dir.path());
    for i in 0..30 {
        let data = Data::serialize(&json!({"code": "x".repeat(i)})).expect("serialisable");
        store.append(Kind::Scan, &data).expect("append");
    }
    store.flush().expect("flush");
    let all = store.read(0, u64::MAX, 100, usize::MAX).expect("read");
    // The figures once everything through `through` is gone, and `dead` too.
    let expected = |through: u64, dead: Option<u64>| -> (u64, u64) {
        let left: Vec<&StoredRecord> = all
            .iter()
            .filter(|record| record.position > through && Some(record.position) != dead)
            .collect();
        let bytes = left.iter().map(|record| record.bytes.len() as u64).sum();
        (left.len() as u64, bytes)
    };
    let figures = |store: &Store| (store.backlog_records, store.backlog_bytes);
    assert_eq!(figures(&store), expected(0, None));

    // Reads of 5 then 5 (and the first 3 read again, as after a split batch).
    let first = store.read(0, u64::MAX, 5, usize::MAX).expect("read");
    store.read(0, u64::MAX, 3, usize::MAX).expect("read");
    let second = store
        .read(first[4].position, u64::MAX, 5, usize::MAX)
        .expect("read");
    let through = second[4].position;
    assert_eq!(store.remove_through(through).expect("remove"), 10);
    assert_eq!(figures(&store), expected(through, None));

    // A removal past what was read is counted in the log.
    store.read(through, u64::MAX, 2, usize::MAX).expect("read");
    let through = all[14].position;
    assert_eq!(store.remove_through(through).expect("remove"), 5);
    assert_eq!(figures(&store), expected(through, None));

    // A read, then a dead letter inside it, then the removal: counted in the log.
    let fourth = store.read(through, u64::MAX, 5, usize::MAX).expect("read");
    let dead = fourth[2].position;
    store.move_to_dead(dead, "poison").expect("dead letter");
    let through = fourth[4].position;
    assert_eq!(store.remove_through(through).expect("remove"), 4);
    assert_eq!(figures(&store), expected(through, Some(dead)));
    let rest = store.read(0, u64::MAX, 100, usize::MAX).expect("read");
    assert_eq!(rest.len(), 10);
}

/// Issue 11, finding 7: `journal stats` (and `dump`) wrote to sled's files, and the open they
/// share removes the saved counters and cuts a torn tail: an offline read must write nothing.
#[tokio::test]
async fn offline_stats_and_dump_change_no_file_of_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_a_dead_letter(dir.path(), 20, 3).await; // saved counters in meta
                                                         // A torn write at the end of the log, as a crash leaves it.
    let last = segment_files(dir.path()).pop().expect("a segment");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .expect("open segment");
    std::io::Write::write_all(&mut file, &[0x55; 37]).expect("torn bytes");
    drop(file);

    let before = file_fingerprints(dir.path());
    let stats = offline_stats(dir.path()).expect("stats");
    assert_eq!(
        (stats.records, stats.dead_records, stats.next_seq),
        (19, 1, 21)
    );
    assert_eq!(dump_values(dir.path(), false).len(), 19);
    assert_eq!(dump_values(dir.path(), true).len(), 1);
    assert_eq!(
        identity(dir.path())
            .expect("identity")
            .map(|(store, _)| store)
            .as_deref(),
        Some(STORE)
    );
    let after = file_fingerprints(dir.path());
    assert_eq!(
        before, after,
        "an offline command changed the journal's files"
    );

    // The live open still finds the torn tail, and uses the saved counters.
    let stats = reopened_stats(dir.path()).await;
    assert_eq!((stats.backlog_records, stats.next_seq), (19, 21));
}
