//! `journal salvage`: records brought back from quarantined journals (damaged sled files,
//! garbage, flipped bytes) with their original ids, and every seq it could not recover named.

use super::helpers::*;

#[tokio::test]
async fn garbage_conf_is_quarantined_and_salvaged_completely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, ids) = journal_with_records(dir.path(), 40).await;
    std::fs::write(dir.path().join("journal/conf"), b"\x00\xffgarbage\x13\x37")
        .expect("corrupt conf");

    let (new_epoch, quarantine) = open_damaged(dir.path(), &old_epoch).await;

    let report = salvage_now(dir.path());
    assert_eq!(report.epoch, new_epoch);
    assert_eq!(report.folders.len(), 1);
    let folder = &report.folders[0];
    assert_eq!(folder.folder, quarantine);
    assert_eq!(folder.read, 40, "{report}");
    assert_eq!(folder.copied, 40, "{report}");
    assert_eq!(folder.duplicates, 0);
    assert!(!quarantine.exists(), "quarantine folder is marked salvaged");
    assert!(folder.marked_as.as_ref().is_some_and(|p| p.is_dir()));
    let text = report.to_string();
    assert!(text.contains("copied 40"), "{text}");

    let records = dump_values(dir.path(), false);
    assert_eq!(records.len(), 41);
    assert_eq!(dumped_ids(dir.path())[1..], ids);
    assert!(records[1..]
        .iter()
        .all(|v| v["epoch"] == old_epoch.as_str()));

    // Again: nothing new.
    let again = salvage_now(dir.path());
    assert_eq!(again.copied(), 0, "{again}");
    assert_eq!(dump_values(dir.path(), false).len(), 41);

    // Salvaged records of the old epoch are last, yet the live seq continues correctly.
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let stats = handle.stats();
    assert_eq!((stats.epoch, stats.next_seq), (new_epoch, 2));
    assert_eq!(stats.backlog_records, 41);
    let next = last_append(handle).await;
    assert_eq!(next.seq, 2);
}

#[tokio::test]
async fn garbage_in_the_middle_of_the_db_file_is_quarantined_and_salvaged_without_panicking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, ids) = journal_with_records(dir.path(), 3000).await;
    let db_file = dir.path().join("journal/db");
    let mut bytes = std::fs::read(&db_file).expect("read db");
    let middle = bytes.len() * 2 / 5;
    let end = (middle + bytes.len() / 5).min(bytes.len());
    for (i, byte) in bytes[middle..end].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31) ^ 0xa5;
    }
    std::fs::write(&db_file, &bytes).expect("corrupt db");

    // Depending on where sled's live data lies, the garbage hits it (open fails or panics, or
    // succeeds with only part of the records, which the floor file shows: all damage) or only
    // superseded log space (open succeeds and every record reads back intact).
    let opened = open(config(dir.path(), Duration::ZERO))
        .await
        .expect("open");
    let handle = opened.handle;
    let Some(replaced) = opened.replaced else {
        assert_eq!(handle.stats().epoch, old_epoch);
        assert_eq!(handle.stats().next_seq, 3001);
        handle.close().await.expect("close");
        assert_eq!(dumped_ids(dir.path()), ids);
        return;
    };
    assert_ne!(handle.stats().epoch, old_epoch);
    assert_eq!(handle.stats().next_seq, 2);
    handle.close().await.expect("close");

    let report = salvage_now(dir.path());
    assert_eq!(report.folders[0].folder, replaced.quarantine);
    // Whatever was read is kept with its original bytes and id; nothing is invented.
    for value in &dump_values(dir.path(), false)[1..] {
        let id = value["id"].as_str().expect("id");
        assert!(ids.iter().any(|known| known == id), "{id}");
        assert_eq!(value["epoch"], old_epoch.as_str());
    }
    // Most records lie outside the damaged fifth of the file and are found (through sled or a
    // raw scan), unless sled's own open found nothing it could read and reinitialised the file
    // (seen about once in a hundred runs): then nothing is left to find, and the point is that
    // the loss was noticed (quarantine, new epoch) instead of seqs being issued again.
    let left_in_quarantine = count_record_starts(report.folders[0].marked_as.as_deref());
    if left_in_quarantine > ids.len() {
        assert!(report.copied() as usize > ids.len() / 2, "{report}");
    }
    let again = salvage_now(dir.path());
    assert_eq!(again.copied(), 0, "{again}");
    eprintln!("{report}");
}

#[tokio::test]
async fn salvage_creates_a_live_journal_when_there_is_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, ids) = journal_with_records(dir.path(), 7).await;
    std::fs::rename(
        dir.path().join("journal"),
        dir.path().join("quarantine-20261127T083000Z"),
    )
    .expect("move journal aside");
    let report = salvage_now(dir.path());
    assert!(report.replaced.is_none());
    assert_eq!(report.copied(), 7, "{report}");
    assert!(dir.path().join("salvaged-20261127T083000Z").is_dir());
    assert_eq!(dumped_ids(dir.path()), ids);
    assert_eq!(
        reopened_stats(dir.path()).await.next_seq,
        1,
        "a new live journal starts at 1"
    );
}

#[tokio::test]
async fn salvage_skips_ids_already_in_the_live_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    journal_with_records(dir.path(), 4).await;
    // Quarantine a copy while the original stays live: every id is a duplicate.
    copy_tree(
        &dir.path().join("journal"),
        &dir.path().join("quarantine-x"),
    );
    let report = salvage_now(dir.path());
    assert_eq!(report.folders[0].read, 4, "{report}");
    assert_eq!(report.duplicates(), 4, "{report}");
    assert_eq!(report.copied(), 0, "{report}");
}

#[tokio::test]
async fn salvage_does_not_bring_back_records_removed_after_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = open_clean(dir.path(), Duration::ZERO).await;
    let appended = append_scans(&handle, 10).await;
    let uploaded = appended[4].position;
    let ids: Vec<String> = appended.iter().map(|a| a.id.clone()).collect();
    all_durable(&appended).await;
    assert_eq!(handle.remove_through(uploaded).await.expect("remove"), 5);
    handle.close().await.expect("close");
    std::fs::rename(dir.path().join("journal"), dir.path().join("quarantine-a"))
        .expect("move aside");

    let report = salvage_now(dir.path());
    // The raw scan still finds old copies of seq 1..5 in sled's log; they must stay out.
    assert_eq!(report.copied(), 5, "{report}");
    assert_eq!(dumped_ids(dir.path()), ids[5..].to_vec());
}

#[tokio::test]
async fn salvage_reads_records_out_of_files_sled_cannot_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, ids) = journal_with_records(dir.path(), 30).await;
    let journal = dir.path().join("journal");
    // Keep only the raw bytes of the record log, wrapped in garbage nothing can make sense of.
    let segment = segment_files(dir.path()).remove(0);
    let log = std::fs::read(segment).expect("read segment");
    let folder = dir.path().join("quarantine-b");
    std::fs::create_dir(&folder).expect("mkdir");
    let mut garbage = vec![0xa5u8; 4096];
    garbage.extend_from_slice(&log);
    std::fs::write(folder.join("db"), garbage).expect("write");
    std::fs::write(folder.join("conf"), b"\x00garbage").expect("write");
    std::fs::remove_dir_all(&journal).expect("remove live journal");

    let report = salvage_now(dir.path());
    assert_eq!(report.copied(), 30, "{report}");
    assert_eq!(dumped_ids(dir.path()), ids);
    assert!(dir.path().join("salvaged-b").is_dir());
}

/// Issue 11, finding 7: salvage after a flipped byte reported "unreadable 0" while a seq was
/// missing. It reports the damaged frame, every seq it could not recover, and its counts add up.
#[tokio::test]
async fn salvage_after_a_flipped_byte_names_the_seq_it_could_not_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, ids, quarantine, report) = salvaged_after_damage(dir.path(), 50, 25).await;
    let folder = &report.folders[0];
    assert_eq!(folder.folder, quarantine);
    assert_eq!((folder.read, folder.copied), (49, 49), "{report}");
    assert_eq!(folder.unreadable, 1, "the damaged frame: {report}");
    assert_eq!(
        folder.missing,
        vec![MissingSeqs {
            epoch: old_epoch.clone(),
            first: 25,
            last: 25
        }],
        "{report}"
    );
    // Every seq of the damaged journal is accounted for: copied, duplicate or not recovered.
    assert_eq!(
        folder.copied + folder.duplicates + folder.missing_seqs(),
        ids.len() as u64
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("not recovered: 1 seq(s): {old_epoch}/25")),
        "{text}"
    );
    assert!(
        text.contains("unreadable 1, not recovered 1 seq(s)"),
        "{text}"
    );
    let salvaged: Vec<u64> = dump_values(dir.path(), false)
        .iter()
        .filter(|record| record["epoch"] == old_epoch.as_str())
        .map(|record| record["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(salvaged.len(), 49);
    assert!(!salvaged.contains(&25));
}

#[test]
fn missing_seqs_are_runs_between_the_seqs_found_per_epoch() {
    let found = vec![
        ("b".to_string(), 7),
        ("a".to_string(), 1),
        ("a".to_string(), 2),
        ("a".to_string(), 6),
        ("b".to_string(), 3),
        ("a".to_string(), 9),
        ("a".to_string(), 2),
    ];
    let runs = |floor| -> Vec<String> {
        salvage::missing_seqs(found.clone(), floor)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(runs(None), ["b/4-6", "a/3-5", "a/7-8"]);
    // The floor says seq 12 of "a" was durable: 10-12 are missing too.
    assert_eq!(
        runs(Some(("a".to_string(), 12))),
        ["b/4-6", "a/3-5", "a/7-8", "a/10-12"]
    );
}

/// The last records of a journal damaged at its end are missing too: the quarantined journal's
/// floor says how far it had made records durable.
#[tokio::test]
async fn salvage_names_the_lost_seqs_at_the_end_of_a_damaged_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_epoch, _, _, report) = salvaged_after_damage(dir.path(), 30, 30).await;
    let folder = &report.folders[0];
    let salvaged = folder.marked_as.as_deref().expect("marked as salvaged");
    assert!(
        salvaged.join("journal.floor").is_file(),
        "the floor went with the damaged journal"
    );
    assert_eq!(folder.copied, 29, "{report}");
    let runs: Vec<String> = folder.missing.iter().map(ToString::to_string).collect();
    assert_eq!(runs, [format!("{old_epoch}/30")], "{report}");
}
