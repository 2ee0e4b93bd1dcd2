//! Everything the journal's test topics share: the names they import, configurations, opening
//! a journal or its store, appending, reading back, damaging and copying files, the faults a
//! test injects, and running a scenario in a child process.

pub(super) use std::path::{Path, PathBuf};
pub(super) use std::time::Duration;

pub(super) use serde_json::{json, Value};

pub(super) use crate::journal::faults::Faults;
pub(super) use crate::journal::open::{open_db, open_or_replace, open_or_replace_with};
pub(super) use crate::journal::quarantine::Replaced;
pub(super) use crate::journal::store::Store;
pub(super) use crate::journal::*;
pub(super) use crate::record::{Data, Kind};

/// The store code of every test journal.
pub(super) const STORE: &str = "WZ-LC-001";
/// The gateway id of every test journal.
pub(super) const GATEWAY: &str = "gw-1";
/// The gateway version every test journal writes into its `gateway` records.
pub(super) const VERSION: &str = "0.1.0-test";

/// A config for a journal in `dir`.
pub(super) fn config(dir: &Path, flush: Duration) -> JournalConfig {
    JournalConfig {
        data_dir: dir.to_path_buf(),
        store: STORE.to_string(),
        gateway: GATEWAY.to_string(),
        flush,
        version: VERSION,
        max_bytes: None,
    }
}

/// A config for a journal in `dir` that keeps at most `max_bytes` of records.
pub(super) fn config_with_quota(dir: &Path, max_bytes: u64) -> JournalConfig {
    JournalConfig {
        max_bytes: Some(max_bytes),
        ..config(dir, Duration::ZERO)
    }
}

/// `STORE/GW/EPOCH/SEQ` of a test journal's record.
pub(super) fn id(epoch: &str, seq: impl std::fmt::Display) -> String {
    format!("{STORE}/{GATEWAY}/{epoch}/{seq}")
}

/// Opens a journal that must not have been replaced.
pub(super) async fn open_clean(dir: &Path, flush: Duration) -> JournalHandle {
    let opened = open(config(dir, flush)).await.expect("open journal");
    assert!(
        opened.replaced.is_none(),
        "unexpected replace: {:?}",
        opened.replaced
    );
    opened.handle
}

/// Opens the journal in `dir` with a quota of `max_bytes` ([`config_with_quota`]).
pub(super) async fn open_with_quota(dir: &Path, max_bytes: u64) -> JournalHandle {
    open(config_with_quota(dir, max_bytes))
        .await
        .expect("open")
        .handle
}

/// Opens the journal in `dir` (it must not be replaced), reads its figures and closes it again.
pub(super) async fn reopened_stats(dir: &Path) -> JournalStats {
    let handle = open_clean(dir, Duration::ZERO).await;
    let stats = handle.stats();
    handle.close().await.expect("close");
    stats
}

/// The backlog records and bytes and the dead records of `stats`.
pub(super) fn backlog(stats: &JournalStats) -> (u64, u64, u64) {
    (
        stats.backlog_records,
        stats.backlog_bytes,
        stats.dead_records,
    )
}

/// The backlog records and bytes and the dead records of `store`.
pub(super) fn store_backlog(store: &Store) -> (u64, u64, u64) {
    (
        store.backlog_records,
        store.backlog_bytes,
        store.dead_records,
    )
}

/// Opens (or replaces) the store of the journal in `dir` directly, without an actor.
pub(super) fn open_store(dir: &Path) -> (Store, Option<Replaced>) {
    open_or_replace(dir, STORE, GATEWAY).expect("open store")
}

/// Appends an empty scan record and closes the journal; returns the append (its seq and
/// position tell which ones the journal issued next).
pub(super) async fn last_append(handle: JournalHandle) -> Appended {
    let appended = handle
        .append_value(Kind::Scan, &json!({}))
        .await
        .expect("append");
    handle.close().await.expect("close");
    appended
}

/// Appends `n` scan records; returns the appends.
pub(super) async fn append_scans(handle: &JournalHandle, n: u64) -> Vec<Appended> {
    let mut out = Vec::new();
    for i in 0..n {
        let appended = handle
            .append_value(
                Kind::Scan,
                &json!({"device": "scanner-1", "code": format!("690{i:010}")}),
            )
            .await
            .expect("append");
        out.push(appended);
    }
    out
}

/// Appends `n` scans with bulky data ([`bulky_scan`]), so they span several segment files.
pub(super) async fn append_bulky(handle: &JournalHandle, n: u64) -> Vec<Appended> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            handle
                .append(Kind::Scan, bulky_scan(i))
                .await
                .expect("append"),
        );
    }
    out
}

/// The `data` of a scan of about 2 KB, numbered `i`.
pub(super) fn bulky_scan(i: u64) -> Data {
    Data::serialize(
        &json!({"device": "scanner-1", "code": format!("690{i:010}"), "pad": "p".repeat(2000)}),
    )
    .expect("serialisable")
}

/// Appends [`bulky_scan`]s numbered `numbers` to `store`, without a flush.
pub(super) fn append_bulky_to(store: &mut Store, numbers: std::ops::Range<u64>) {
    for i in numbers {
        store.append(Kind::Scan, &bulky_scan(i)).expect("append");
    }
}

/// The store of a fresh journal in `dir` holding `durable` bulky scans, made durable, then
/// `buffered` more still in the record log's buffer; returns it and the last durable position.
pub(super) fn store_with_a_buffered_tail(dir: &Path, durable: u64, buffered: u64) -> (Store, u64) {
    let (mut store, _) = open_store(dir);
    append_bulky_to(&mut store, 0..durable);
    store.flush().expect("flush");
    let durable_position = store.next_position - 1;
    append_bulky_to(&mut store, durable..durable + buffered);
    (store, durable_position)
}

/// `n` scan `data` objects for a batch, numbered from `first`.
pub(super) fn scan_batch(first: u64, n: u64) -> Vec<Data> {
    (first..first + n)
        .map(|i| Data::serialize(&json!({"device": "scanner-1", "i": i})).expect("serialisable"))
        .collect()
}

/// Appends a scan with `data` and waits until it is durable.
pub(super) async fn append_durable(handle: &JournalHandle, data: Data) -> Appended {
    let appended = handle.append(Kind::Scan, data).await.expect("append");
    appended.durable.clone().wait().await.expect("durable");
    appended
}

/// Waits (10 s at most each) until every one of `appended` is durable.
pub(super) async fn all_durable<'a>(appended: impl IntoIterator<Item = &'a Appended>) {
    for appended in appended {
        tokio::time::timeout(Duration::from_secs(10), appended.durable.clone().wait())
            .await
            .expect("durable in time")
            .expect("durable");
    }
}

/// Every record of the journal in `dir` (gateway stopped), parsed.
pub(super) fn dump_values(dir: &Path, dead: bool) -> Vec<Value> {
    let mut out = Vec::new();
    dump(dir, dead, &mut out).expect("dump");
    String::from_utf8(out)
        .expect("utf-8 dump")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each dump line is json"))
        .collect()
}

/// `records` (read from a journal), parsed.
pub(super) fn parsed(records: &[StoredRecord]) -> Vec<Value> {
    records
        .iter()
        .map(|record| serde_json::from_slice(&record.bytes).expect("a record is json"))
        .collect()
}

/// The `id` of each of `records`.
pub(super) fn ids(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|v| v["id"].as_str().expect("id"))
        .collect()
}

/// The `seq` of each of `records`.
pub(super) fn seqs(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect()
}

/// The ids of the live records of the journal in `dir`, in order.
pub(super) fn dumped_ids(dir: &Path) -> Vec<String> {
    ids(&dump_values(dir, false))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The seqs of the live records of the journal in `dir`, in order.
pub(super) fn dumped_seqs(dir: &Path) -> Vec<u64> {
    seqs(&dump_values(dir, false))
}

/// The seq of every record of `store`, in position order.
pub(super) fn store_seqs(store: &mut Store) -> Vec<u64> {
    let mut seqs = Vec::new();
    store
        .for_each_record(false, &mut |record| {
            let value: Value = serde_json::from_slice(&record.bytes).expect("json");
            seqs.push(value["seq"].as_u64().expect("seq"));
            Ok(())
        })
        .expect("read");
    seqs
}

/// The `data.event == "evicted"` gateway records among `records`.
pub(super) fn evicted_events(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|v| v["kind"] == "gateway" && v["data"]["event"] == "evicted")
        .collect()
}

/// The `quarantine-*` folders in `dir`.
pub(super) fn quarantine_folders(dir: &Path) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list data dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("quarantine-"))
        })
        .collect();
    folders.sort();
    folders
}

/// Writes `n` records to a fresh journal in `dir` and closes it; returns the epoch and ids.
pub(super) async fn journal_with_records(dir: &Path, n: u64) -> (String, Vec<String>) {
    let handle = open_clean(dir, Duration::from_millis(5)).await;
    let appended = append_scans(&handle, n).await;
    let epoch = handle.stats().epoch;
    let ids = appended.into_iter().map(|a| a.id).collect();
    handle.close().await.expect("close");
    (epoch, ids)
}

/// Writes `n` scan records to a fresh journal in `dir`, moves record `dead` (counted from 0)
/// to the dead letters as HQ would, and closes it; returns the epoch.
pub(super) async fn journal_with_a_dead_letter(dir: &Path, n: u64, dead: usize) -> String {
    let handle = open_clean(dir, Duration::ZERO).await;
    let appended = append_scans(&handle, n).await;
    all_durable(&appended).await;
    handle
        .move_to_dead(appended[dead].position, "422: bad gtin".to_string())
        .await
        .expect("dead-letter");
    let stats = handle.stats();
    assert_eq!((stats.dead_records, stats.backlog_records), (1, n - 1));
    handle.close().await.expect("close");
    stats.epoch
}

/// A journal of `n` bulky scans (~2 KB each) written through the store and closed; returns the
/// segment files, in order.
pub(super) fn journal_over_segments(dir: &Path, n: u64) -> Vec<PathBuf> {
    {
        let (mut store, _) = open_store(dir);
        append_bulky_to(&mut store, 0..n);
        store.flush().expect("flush");
    }
    segment_files(dir)
}

/// Opens the journal in `dir`, which must be found damaged and replaced: the fresh journal and
/// what became of the damaged one.
pub(super) async fn open_replaced(dir: &Path) -> (JournalHandle, Replaced) {
    let opened = open(config(dir, Duration::ZERO))
        .await
        .expect("open replaces");
    let replaced = opened.replaced.expect("the journal was quarantined");
    (opened.handle, replaced)
}

/// Opens a damaged journal and checks the replacement; returns the new epoch and quarantine.
pub(super) async fn open_damaged(dir: &Path, old_epoch: &str) -> (String, PathBuf) {
    let (handle, replaced) = open_replaced(dir).await;
    assert!(replaced.quarantine.is_dir(), "{replaced:?}");
    assert_eq!(quarantine_folders(dir), vec![replaced.quarantine.clone()]);
    let stats = handle.stats();
    assert_ne!(stats.epoch, old_epoch);
    assert_eq!(stats.next_seq, 2, "journal_replaced took seq 1");
    let first = first_record(&handle).await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["data"]["version"], VERSION);
    let detail = replaced_event_detail(&handle).await;
    assert!(detail.contains("posgw journal salvage"), "{detail}");
    assert!(
        detail.contains(&replaced.quarantine.display().to_string()),
        "{detail}"
    );
    handle.close().await.expect("close");
    (stats.epoch, replaced.quarantine)
}

/// The first record of an open journal, parsed.
pub(super) async fn first_record(handle: &JournalHandle) -> Value {
    let first = handle.read(0, 1, usize::MAX).await.expect("read");
    serde_json::from_slice(&first[0].bytes).expect("json")
}

/// The `detail` of the first record of a freshly opened journal, which must be its
/// `journal_replaced` event.
pub(super) async fn replaced_event_detail(handle: &JournalHandle) -> String {
    let record = first_record(handle).await;
    assert_eq!(record["kind"], "gateway");
    assert_eq!(record["data"]["event"], "journal_replaced");
    record["data"]["detail"]
        .as_str()
        .expect("detail")
        .to_string()
}

/// The `detail` of the first live record of the journal in `dir` (gateway stopped): the
/// `journal_replaced` event of a journal that replaced a damaged one.
pub(super) fn dumped_replaced_detail(dir: &Path) -> String {
    let records = dump_values(dir, false);
    assert_eq!(records[0]["data"]["event"], "journal_replaced");
    records[0]["data"]["detail"]
        .as_str()
        .expect("detail")
        .to_string()
}

/// A journal in `dir` of `n` scans whose record `seq` was then damaged in its segment, opened
/// (so quarantined) and salvaged: the old epoch, the ids written, the quarantine folder and the
/// salvage report.
pub(super) async fn salvaged_after_damage(
    dir: &Path,
    n: u64,
    seq: u64,
) -> (String, Vec<String>, PathBuf, SalvageReport) {
    let (old_epoch, ids) = journal_with_records(dir, n).await;
    damage_record(dir, seq);
    let (_, quarantine) = open_damaged(dir, &old_epoch).await;
    (old_epoch, ids, quarantine, salvage_now(dir))
}

/// `journal salvage` of the data folder `dir`.
pub(super) fn salvage_now(dir: &Path) -> SalvageReport {
    salvage(dir, &config(dir, Duration::ZERO)).expect("salvage")
}

/// The journal's sled database opened directly, as the journal opens it (waiting for the
/// closed journal's background threads to let go of it). Not `sled::open`: its default
/// flusher thread would hold the files a moment after the `Db` is dropped in turn.
pub(super) fn raw_sled(path: &Path) -> sled::Db {
    open_db(path).expect("open sled")
}

/// The segment files of the journal in `dir`, in order.
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("journal").join("segments"))
        .expect("segments")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// How many segment files the (journal or quarantine) folder `folder` holds.
pub(super) fn segment_count(folder: &Path) -> usize {
    std::fs::read_dir(folder.join("segments"))
        .expect("segments")
        .count()
}

/// The size of the largest segment file of the journal in `dir`.
pub(super) fn largest_segment(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|file| std::fs::metadata(file).expect("metadata").len())
        .max()
        .unwrap_or(0)
}

/// Flips the record with seq `seq` in the last segment of the journal in `dir` so that neither
/// its frame's CRC nor its JSON holds.
pub(super) fn damage_record(dir: &Path, seq: u64) {
    let segment = segment_files(dir).pop().expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let needle = format!("\"seq\":{seq},");
    let at = bytes
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())
        .unwrap_or_else(|| panic!("record {seq}"));
    bytes[at + 5] = b';'; // "seq";N : neither the CRC nor the JSON holds
    std::fs::write(&segment, bytes).expect("write segment");
}

/// Deletes the newest records behind the journal's back, as a disk that silently lost writes
/// looks: no error, fewer records, meta floors untouched. With `everything`, the meta goes too.
pub(super) fn lose_records_silently(dir: &Path, keep: u64, everything: bool) {
    // The record log: keep the first `keep` frames (16-byte header: length, CRC, position),
    // cut cleanly at a frame boundary so nothing looks torn.
    let mut left = keep;
    for file in segment_files(dir) {
        let bytes = std::fs::read(&file).expect("segment");
        let mut at = 0usize;
        while left > 0 && at + 16 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("len")) as usize;
            at += 16 + len;
            left -= 1;
        }
        std::fs::write(&file, &bytes[..at]).expect("cut segment");
    }
    if everything {
        let db = raw_sled(&dir.join("journal"));
        db.open_tree("meta")
            .expect("meta")
            .clear()
            .expect("clear meta");
        db.flush().expect("flush");
    }
}

/// Power cut: the new segment's creation and the old one's unlink reached the disk (metadata
/// journal commit), the new segment's data (never fsynced) did not.
pub(super) fn lose_unsynced_tail(dir: &Path) {
    let last = segment_files(dir).pop().expect("a segment");
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open segment")
        .set_len(0)
        .expect("truncate segment");
}

/// How many record envelopes start in the files of `folder` (old copies included).
pub(super) fn count_record_starts(folder: Option<&Path>) -> usize {
    let Some(folder) = folder else { return 0 };
    std::fs::read_dir(folder)
        .expect("list folder")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_file())
        .map(|entry| {
            let bytes = std::fs::read(entry.path()).expect("read file");
            bytes.windows(7).filter(|w| w == b"{\"id\":\"").count()
        })
        .sum()
}

/// Copies a folder recursively, except the entries of `from` named `skip`.
pub(super) fn copy_tree_except(from: &Path, to: &Path, skip: Option<&str>) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        if skip.is_some_and(|skip| entry.file_name() == skip) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree_except(&entry.path(), &target, None);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Copies a folder recursively.
pub(super) fn copy_tree(from: &Path, to: &Path) {
    copy_tree_except(from, to, None);
}

/// Copies sled's own files (everything in journal/ but segments/) to `to`.
pub(super) fn snapshot_sled(journal: &Path, to: &Path) {
    copy_tree_except(journal, to, Some("segments"));
}

/// Puts sled's files back as they were at the snapshot (sled's unflushed writes are lost in a
/// kill -9 / power cut; the segment files are left as they are).
pub(super) fn restore_sled(journal: &Path, from: &Path) {
    for entry in std::fs::read_dir(journal).expect("list") {
        let entry = entry.expect("entry");
        if entry.file_name() == "segments" {
            continue;
        }
        if entry.file_type().expect("type").is_dir() {
            std::fs::remove_dir_all(entry.path()).expect("rm");
        } else {
            std::fs::remove_file(entry.path()).expect("rm");
        }
    }
    snapshot_sled(from, journal);
}

/// Every file below `dir` (relative path) with its length, modification time and CRC-32.
pub(super) fn file_fingerprints(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64, std::time::SystemTime, u32)>) {
        for entry in std::fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            let metadata = std::fs::symlink_metadata(&path).expect("metadata");
            if metadata.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.push((
                    path.strip_prefix(root).expect("below root").to_path_buf(),
                    metadata.len(),
                    metadata.modified().expect("mtime"),
                    crc32fast::hash(&bytes),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Storage failures a test asks for, through the store's [`Faults`] seam.
#[derive(Debug, Default)]
pub(super) struct InjectedFaults {
    /// Appends that still succeed; the one after them fails, once (`None`: none fails).
    pub(super) appends_before_failure: std::sync::Mutex<Option<u64>>,
    /// Whether taking back the records of a failed batch fails too.
    pub(super) fail_roll_back: bool,
    /// How long every flush takes at least (a slow disk).
    pub(super) flush_delay: Option<Duration>,
}

impl InjectedFaults {
    /// The append after the first `appends` fails, once.
    pub(super) fn append_fails_after(appends: u64) -> InjectedFaults {
        InjectedFaults {
            appends_before_failure: Some(appends).into(),
            ..InjectedFaults::default()
        }
    }
}

impl Faults for InjectedFaults {
    fn before_append(&self) -> std::io::Result<()> {
        let mut left = self
            .appends_before_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match left.as_mut() {
            Some(0) => {
                // One failure, then the log works again.
                *left = None;
                Err(std::io::Error::other("injected failure"))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn before_roll_back(&self) -> std::io::Result<()> {
        if self.fail_roll_back {
            return Err(std::io::Error::other("injected failure"));
        }
        Ok(())
    }

    fn before_flush(&self) {
        if let Some(delay) = self.flush_delay {
            std::thread::sleep(delay);
        }
    }
}

/// Opens the journal in `dir` with `faults` injected and starts its actor, fsyncing every
/// `flush`.
pub(super) fn spawn_with_faults(
    dir: &Path,
    flush: Duration,
    faults: InjectedFaults,
) -> JournalHandle {
    let (store, replaced) =
        open_or_replace_with(dir, STORE, GATEWAY, std::sync::Arc::new(faults)).expect("open");
    assert!(replaced.is_none());
    crate::journal::actor::spawn(store, &config(dir, flush))
}

/// Runs the test `test` of the module `module` (pass `module_path!()`) again in a child
/// process, for a file size limit that must not reach the test harness; returns true in the
/// child, where the scenario runs, and false in the parent once the child passed.
pub(super) fn in_child(module: &str, test: &str) -> bool {
    const CHILD: &str = "POSGW_JOURNAL_TEST_CHILD";
    // The harness names tests by their path below the crate.
    let name = format!(
        "{}::{test}",
        module.split_once("::").map_or(module, |(_, path)| path)
    );
    if std::env::var_os(CHILD).is_some_and(|running| running == name.as_str()) {
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{info}");
            std::process::exit(101);
        }));
        return true;
    }
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", &name, "--nocapture"])
        .env(CHILD, &name)
        .spawn()
        .expect("run the child");
    // A spinning actor can starve the child's runtime (its timeouts never fire): give up on it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the scenario did not finish in 60 s in the child (the journal actor hangs)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "the scenario failed in the child: {status}"
    );
    false
}

/// [`in_child`] for an async `scenario`: runs it in the child, on a runtime of its own.
pub(super) fn run_in_child(
    module: &str,
    test: &str,
    scenario: impl std::future::Future<Output = ()>,
) {
    if in_child(module, test) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario);
    }
}

/// Sets the soft file size limit (a full disk for every write past it).
pub(super) fn file_size_limit(bytes: u64) {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit);
        limit.rlim_cur = bytes as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

/// Appends `bulky_scan(i)` while the log cannot be written: the actor must still answer (not
/// spin on the failed flush) and take the record into memory.
pub(super) async fn accepted_in_time(journal: &JournalHandle, i: u64) -> Appended {
    tokio::time::timeout(
        Duration::from_secs(5),
        journal.append(Kind::Scan, bulky_scan(i)),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("append {i}: the journal actor does not answer (spinning on the failed flush)")
    })
    .expect("accepted into memory")
}

/// The crash the roll tests recover from: the first segment filled and made durable, the next
/// append rolled to a new segment (its record still buffered), HQ acknowledged everything
/// durable, then a power cut took sled's unflushed writes and the unsynced tail. Returns the
/// last seq that was durable.
pub(super) fn power_cut_right_after_a_roll_and_a_removal(dir: &Path) -> u64 {
    let journal = dir.join("journal");
    let snap = tempfile::tempdir().expect("snap");
    let last = {
        let (mut store, _) = open_store(dir);
        let mut last = None;
        // ~8.4 MB: fills the first segment.
        let mut segment_len = 0u64;
        let mut i = 0;
        while segment_len < 8 * 1024 * 1024 {
            let before = store.backlog_bytes;
            last = Some(store.append(Kind::Scan, &bulky_scan(i)).expect("append"));
            segment_len += 16 + store.backlog_bytes - before;
            i += 1;
        }
        store.flush().expect("flush"); // durable, floor written
        let last = last.expect("last");
        store.append(Kind::Scan, &bulky_scan(9999)).expect("append");
        store.remove_through(last.position).expect("remove");
        // What sled has on disk right now (its unflushed writes are in its memory only).
        snapshot_sled(&journal, snap.path());
        last
    };
    restore_sled(&journal, snap.path());
    lose_unsynced_tail(dir);
    last.seq
}
