//! What goes wrong and how the journal copes: damage found at open (quarantine and a fresh
//! journal), storage failures injected through the faults seam, a full disk (a file size limit
//! in a child process), and record log errors reaching callers with their I/O kind.

use super::helpers::*;

#[tokio::test]
async fn a_journal_that_silently_lost_its_newest_records_is_quarantined_and_no_seq_is_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, ids) = journal_with_records(dir.path(), 30).await;
    lose_records_silently(dir.path(), 20, false);

    let (new_epoch, quarantine) = open_damaged(dir.path(), &old_epoch).await;
    let detail = dumped_replaced_detail(dir.path());
    assert!(detail.contains("records were lost"), "{detail}");
    assert!(detail.contains("seq 30"), "{detail}");

    // Salvage brings back what is left (and whatever old copies the raw scan finds), with the
    // original ids; the live epoch's seq is untouched by it.
    let report = salvage_now(dir.path());
    assert_eq!(report.folders[0].folder, quarantine);
    assert!(report.copied() >= 20, "{report}");
    for id in &dumped_ids(dir.path())[1..] {
        assert!(ids.contains(id), "{id}");
    }
    let stats = reopened_stats(dir.path()).await;
    assert_eq!((stats.epoch, stats.next_seq), (new_epoch, 2));
}

#[tokio::test]
async fn a_journal_that_silently_lost_everything_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, _) = journal_with_records(dir.path(), 5).await;
    lose_records_silently(dir.path(), 0, true);
    open_damaged(dir.path(), &old_epoch).await;
    let detail = dumped_replaced_detail(dir.path());
    assert!(detail.contains("records were lost"), "{detail}");
}

#[tokio::test]
async fn inconsistent_meta_counts_as_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, _) = journal_with_records(dir.path(), 3).await;
    {
        let db = raw_sled(&dir.path().join("journal"));
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("epoch", "not-hex!").expect("write");
        db.flush().expect("flush");
    }
    let (_, quarantine) = open_damaged(dir.path(), &old_epoch).await;
    let report = salvage_now(dir.path());
    assert_eq!(report.folders[0].folder, quarantine);
    assert_eq!(report.copied(), 3, "{report}");
}

#[tokio::test]
async fn a_missing_middle_segment_is_damage_and_the_journal_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ~18 MB: three segments.
    let files = journal_over_segments(dir.path(), 9_000);
    assert!(files.len() >= 3, "{files:?}");
    std::fs::remove_file(&files[1]).expect("delete the middle segment");

    let (handle, replaced) = open_replaced(dir.path()).await;
    let name = files[1]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        replaced
            .reason
            .contains(&format!("segments/{name} is missing from the record log")),
        "{}",
        replaced.reason
    );
    let detail = replaced_event_detail(&handle).await;
    assert!(
        detail.contains("is missing from the record log"),
        "{detail}"
    );
    assert_eq!(
        handle.stats().replaced.as_ref(),
        Some(&replaced),
        "the status shows it too"
    );
    handle.close().await.expect("close");
    assert_eq!(
        quarantine_folders(dir.path()),
        vec![replaced.quarantine.clone()]
    );
    // Nothing was deleted: the two remaining segments are in the quarantine folder.
    assert_eq!(segment_count(&replaced.quarantine), files.len() - 1);
}

#[tokio::test]
async fn a_foreign_segment_inside_the_log_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = journal_over_segments(dir.path(), 9_000);
    assert!(files.len() >= 3, "{files:?}");
    // A segment of this log copied in under a name between two others: its positions are out
    // of order there. Without a floor file, reading it as a torn tail would delete the
    // segments after it.
    std::fs::remove_file(dir.path().join("journal.floor")).expect("rm floor");
    let first_of_second: u64 = files[1]
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .parse()
        .expect("a number");
    let foreign = files[1].with_file_name(format!("{:020}.seg", first_of_second - 1));
    std::fs::copy(&files[0], &foreign).expect("copy");

    let (handle, replaced) = open_replaced(dir.path()).await;
    assert!(
        replaced.reason.contains("is not part of this journal"),
        "{}",
        replaced.reason
    );
    handle.close().await.expect("close");
    assert_eq!(
        segment_count(&replaced.quarantine),
        files.len() + 1,
        "no segment was deleted"
    );
}

/// A record log error reaches the handle's caller as a storage error that still tells which
/// I/O error it was (here: a segment file deleted behind the running journal's back).
#[tokio::test]
async fn a_record_log_error_keeps_its_io_kind_up_to_the_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    append_scans(&handle, 3).await;
    handle.close().await.expect("close");
    // Opened afresh, nothing is in memory: a read goes to the segment file.
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    for file in segment_files(dir.path()) {
        std::fs::remove_file(file).expect("delete a segment");
    }
    let err = handle
        .read(0, 10, usize::MAX)
        .await
        .expect_err("the segment is gone");
    assert!(matches!(err, JournalError::Storage { .. }), "{err}");
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound), "{err}");
    handle.close().await.expect("close");
}

#[tokio::test]
async fn a_batch_the_record_log_refuses_is_taken_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = spawn_with_faults(
        dir.path(),
        Duration::ZERO,
        InjectedFaults::append_fails_after(3),
    );
    // The fourth insert fails: the three before it are removed again and no seq is used.
    let err = handle.append_batch(Kind::Scan, scan_batch(0, 5)).await;
    assert!(matches!(err, Err(JournalError::Storage { .. })), "{err:?}");
    let stats = handle.stats();
    assert_eq!(stats.next_seq, 1);
    assert_eq!(stats.backlog_records, 0);
    assert_eq!(stats.appended_total, 0);
    assert!(stats.failure.is_none());

    let batch = handle
        .append_batch(Kind::Scan, scan_batch(10, 2))
        .await
        .expect("append_batch");
    assert_eq!(batch.seqs(), 1..3);
    assert_eq!(batch.first_position, 1);
    batch.durable.wait().await.expect("durable");
    handle.close().await.expect("close");

    let records = dump_values(dir.path(), false);
    let got: Vec<(u64, u64)> = records
        .iter()
        .map(|v| {
            (
                v["seq"].as_u64().expect("seq"),
                v["data"]["i"].as_u64().expect("i"),
            )
        })
        .collect();
    assert_eq!(got, vec![(1, 10), (2, 11)]);
}

#[tokio::test]
async fn a_batch_that_cannot_be_taken_back_stops_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = spawn_with_faults(
        dir.path(),
        Duration::ZERO,
        InjectedFaults {
            fail_roll_back: true,
            ..InjectedFaults::append_fails_after(2)
        },
    );
    append_durable(&handle, scan_batch(0, 1).remove(0)).await;
    // Insert 2 of the batch fails and the one before it cannot be removed: records reported
    // failed may survive, so the journal refuses everything from now on.
    let err = handle.append_batch(Kind::Scan, scan_batch(1, 3)).await;
    assert!(matches!(err, Err(JournalError::Storage { .. })), "{err:?}");
    let failure = handle.stats().failure.expect("failure reported");
    assert!(failure.contains("cannot take back"), "{failure}");
    let refused = handle.append_value(Kind::Scan, &json!({"i": 9})).await;
    assert!(
        matches!(refused, Err(JournalError::Flush(_))),
        "{refused:?}"
    );
    let refused = handle.append_batch(Kind::Scan, scan_batch(9, 1)).await;
    assert!(
        matches!(refused, Err(JournalError::Flush(_))),
        "{refused:?}"
    );
    assert!(handle.close().await.is_err());
}

/// A write error in `end()` (the 1 MiB write-out, here a file size limit standing in for a full
/// disk) must fail the append without leaving its frame in the buffer or half of it in the
/// file: otherwise the next append gets the same seq and the retried write-out tears the
/// segment. The file size limit is per process, so the scenario runs in a child process (this
/// test binary, re-run on this test alone) and never limits tests running beside it.
#[test]
fn a_failed_write_out_reissues_no_seq_and_tears_no_segment() {
    if !in_child(
        module_path!(),
        "a_failed_write_out_reissues_no_seq_and_tears_no_segment",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = open_store(dir.path());
    // Disk "full" at 512 KiB for the segment (e.g. ENOSPC; here EFBIG).
    file_size_limit(512 * 1024);
    let mut failed_seq = None;
    let mut confirmed = Vec::new();
    for i in 0..2000 {
        match store.append(Kind::Scan, &bulky_scan(i)) {
            Ok(a) => confirmed.push(a.seq),
            Err(err) => {
                eprintln!("append failed: {err}");
                failed_seq = Some(store.next_seq);
                break;
            }
        }
    }
    file_size_limit(libc::RLIM_INFINITY);
    let failed_seq = failed_seq.expect("a write-out failed");
    let again = store
        .append(Kind::Scan, &bulky_scan(7777))
        .expect("append after the error");
    confirmed.push(again.seq);
    store.flush().expect("flush");
    let seen = store_seqs(&mut store);
    eprintln!(
        "failed seq {failed_seq}, again.seq {}, read {} records",
        again.seq,
        seen.len()
    );
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(
        unique, seen,
        "a seq is in the log twice (the failed append's frame survived)"
    );
    for seq in &confirmed {
        assert!(seen.contains(seq), "confirmed seq {seq} not readable");
    }
}

/// A full disk (a file size limit standing in for it, in a child process as above) stops the
/// record log from being written, not the journal: records already accepted wait in memory and
/// become durable once writes work again, appends past the buffer are refused (never dropped
/// silently), the journal's failure says why while it lasts, and nothing is written twice.
#[test]
fn a_full_disk_holds_records_back_and_the_journal_recovers_when_space_returns() {
    let test = "a_full_disk_holds_records_back_and_the_journal_recovers_when_space_returns";
    run_in_child(module_path!(), test, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open_clean(dir.path(), Duration::from_millis(20)).await;
        let before = append_durable(&journal, bulky_scan(0)).await;
        // "Full" at 128 KiB: the 2 KB records below pass that, and the 1 MiB in-memory buffer.
        file_size_limit(128 * 1024);
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 1..=800 {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                journal.append(Kind::Scan, bulky_scan(i)),
            );
            match answer.await.expect("the journal answers") {
                Ok(appended) => accepted.push(appended),
                Err(error) => {
                    assert!(matches!(error, JournalError::Storage { .. }), "{error}");
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "appends past the buffer are refused");
        let failing = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(failure) = journal.stats().failure {
                    return failure;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the write error is reported");
        assert!(failing.contains("retrying"), "{failing}");
        let last = accepted.last().expect("some records accepted").seq;
        assert!(
            journal.stats().durable_seq < last,
            "nothing past the limit is confirmed durable"
        );
        // Space again: every accepted record becomes durable, without a restart.
        file_size_limit(libc::RLIM_INFINITY);
        all_durable(&accepted).await;
        assert_eq!(journal.stats().failure, None, "recovered");
        let after = append_durable(&journal, bulky_scan(9999)).await;
        journal.close().await.expect("close");
        let seqs = dumped_seqs(dir.path());
        let mut expected = vec![before.seq];
        expected.extend(accepted.iter().map(|appended| appended.seq));
        expected.push(after.seq);
        assert_eq!(
            seqs, expected,
            "every accepted record once, in order, none refused"
        );
    });
}

/// With `flush = "0s"` (fsync each record, allowed by the contract), a write-out that fails
/// (a full disk) must not make the actor retry at once, over and over: it would spin on one
/// core and never answer another command (appends hang instead of being refused, close hangs).
#[test]
fn a_full_disk_with_flush_zero_does_not_spin_the_actor() {
    let test = "a_full_disk_with_flush_zero_does_not_spin_the_actor";
    run_in_child(module_path!(), test, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open_clean(dir.path(), Duration::ZERO).await;
        append_durable(&journal, bulky_scan(0)).await;
        file_size_limit(largest_segment(dir.path()));
        let mut accepted = Vec::new();
        for i in 1..=3 {
            accepted.push(accepted_in_time(&journal, i).await);
        }
        file_size_limit(libc::RLIM_INFINITY);
        all_durable(&accepted).await;
        journal.close().await.expect("close");
    });
}

/// A removal not yet covered by a flush is due `REMOVAL_FLUSH_EVERY` after it. When the flush
/// then fails to write the log (a full disk), the retry must wait: with the removal's deadline
/// left in the past, the actor retries at once, forever, and answers nothing any more.
#[test]
fn a_full_disk_after_a_removal_does_not_spin_the_actor() {
    let test = "a_full_disk_after_a_removal_does_not_spin_the_actor";
    run_in_child(module_path!(), test, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open_clean(dir.path(), Duration::from_millis(20)).await;
        // A segment bigger than sled's files, so the limit below only stops the log.
        let appended = append_bulky(&journal, 1500).await;
        all_durable(appended.last()).await;
        journal.remove_through(10).await.expect("remove");
        file_size_limit(largest_segment(dir.path()));
        let held = journal
            .append(Kind::Scan, bulky_scan(7777))
            .await
            .expect("accepted into memory");
        // Past the removal's flush deadline, with the write failing all along.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let again = accepted_in_time(&journal, 7778).await;
        file_size_limit(libc::RLIM_INFINITY);
        all_durable([&held, &again]).await;
        journal.close().await.expect("close");
    });
}

/// Dead-lettering writes the floors (the seq issued so far) to sled and flushes it before the
/// log is rewritten. Like `protect_floors`, it must write the log's buffer out first: the read
/// of the record now comes from memory and no longer does that as a side effect, so a crash
/// after the floors are durable but before the buffer reached the kernel (here: the rewrite's
/// write-out fails on a full disk, then kill -9) leaves a gap in the seqs.
#[test]
fn dead_lettering_never_lets_the_floors_run_ahead_of_the_log() {
    if !in_child(
        module_path!(),
        "dead_lettering_never_lets_the_floors_run_ahead_of_the_log",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, durable) = store_with_a_buffered_tail(dir.path(), 1500, 3);
    file_size_limit(largest_segment(dir.path()));
    let result = store.move_to_dead(durable, "422: rejected");
    eprintln!("move_to_dead: {result:?}");
    // The crash: the buffered records go, whatever sled made durable stays.
    drop(store);
    file_size_limit(libc::RLIM_INFINITY);
    let (store, _) = open_store(dir.path());
    assert_eq!(
        store.next_seq,
        durable + 1,
        "the next seq follows the last record the log holds (no gap)"
    );
}
