//! The HQ database: sled key layout, the chunk format, seq range sets for deduplication,
//! opening and recovery, and the read side of `GET /v1/records`.
//!
//! Everything here is blocking sled work; callers run it on a blocking thread. The layout is
//! described in the module doc of `hq` (the design doc).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::daily::{self, Case, Day, DayCounters, DayFinder};
use super::join::Join;
use super::stats::{
    Aggregates, AttributionSummary, ConsultationSummary, SaleSummary, StoreTotals, Summary,
};

/// Name of the sled tree holding everything (one tree, so one `Batch` is atomic).
const TREE: &str = "hq";
/// Value of the `M` `format` key this code writes and reads.
const FORMAT: &[u8] = b"1";
/// `M` key set once every stored consultation record has its `C` summary: records an HQ from
/// before consultation figures stored as a kind it did not know get theirs at the first start
/// of a newer one (now done by the re-summarising of [`SUMMARIES`]).
const CONSULTATIONS_SUMMARISED: &str = "consultations_summarised";
/// `M` key holding [`SUMMARIES_VERSION`] once every stored attribution, consultation and
/// tracked sale record has its summary of today's form (with its time, values and links), the
/// traceability join (`E`, `W`, `L`) is built, `A` and `C` are keyed by store and time, and the per-day
/// counters (`Y`) are counted: a database from an older HQ gets them at the first start.
const SUMMARIES: &str = "summaries";
/// The value of [`SUMMARIES`] this code writes ("2" kept every tracked sale under `L` and
/// empty `W` keys: such a database is summarised again too).
const SUMMARIES_VERSION: &[u8] = b"3";
/// `M` key naming the `[hq] timezone` the `Y` days were counted in; another zone counts again.
const TIMEZONE: &str = "timezone";
/// Records per sled batch while re-summarising stored records.
const BACKFILL_BATCH: usize = 10_000;
/// Most [`Case`]s one read returns.
pub(crate) const MAX_CASES: usize = 10_000;
/// Most records one chunk value holds.
pub(crate) const CHUNK_MAX_RECORDS: usize = 64;
/// Most line bytes one chunk value holds (a single larger line gets a chunk of its own).
pub(crate) const CHUNK_MAX_BYTES: usize = 32 * 1024;
/// Most records one `/v1/records` request examines, so a filter that matches little cannot
/// make one request scan the whole database; the client continues from `next_after`.
const SCAN_BUDGET: u64 = 1_000_000;
/// Largest sled value: a longer chunk (a single record longer than [`CHUNK_MAX_BYTES`]) is
/// written in pieces of this size, the first under `R first_seq`, the others under `R
/// first_seq piece` (u32 BE, from 1), which sort right after it and before the next chunk.
/// sled keeps values above about 128 KiB (a quarter of its 512 KiB log segments, which it
/// writes as separate blobs) in memory for good whatever its cache size: measured, 1 MB of RSS
/// for every MB of 256 KiB values written, against a plateau for 32 KiB values.
pub(crate) const PIECE_MAX_BYTES: usize = 32 * 1024;
/// sled's page cache (`sled::Config::cache_capacity`).
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Most bytes of one `/v1/records` page: the page ends before the record that would pass it
/// (a single larger record still comes, alone), and the client continues from `next_after`.
/// A reader so holds about this much plus one chunk, whatever `limit` says.
pub(crate) const PAGE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Key prefixes; see the design doc in `hq`.
mod prefix {
    /// Metadata: `format`, `next_seq`.
    pub const META: u8 = b'M';
    /// Record chunks by first hq_seq.
    pub const CHUNK: u8 = b'R';
    /// Per-store batch index: store, 0, first hq_seq -> last hq_seq.
    pub const STORE_BATCH: u8 = b'S';
    /// Dedup ranges: stream, 0, range start -> range end.
    pub const DEDUP: u8 = b'D';
    /// Attribution summaries: store, 0, ts (ms), hq_seq.
    pub const ATTRIBUTION: u8 = b'A';
    /// Consultation summaries: store, 0, ts (ms), hq_seq.
    pub const CONSULTATION: u8 = b'C';
    /// Store totals by store code.
    pub const TOTALS: u8 = b'T';
    /// Traced sale summaries by hq_seq.
    pub const SALE: u8 = b'L';
    /// Traceability evidence: store, 0, link key.
    pub const EVIDENCE: u8 = b'E';
    /// Tracked sales waiting for evidence (their summaries): store, 0, link key, 0, hq_seq.
    pub const WAITING: u8 = b'W';
    /// Per store-day counters: store, 0, day.
    pub const DAY: u8 = b'Y';
}

/// The prefixes of everything derived from the records, rebuilt by the re-summarising.
const DERIVED: [u8; 6] = [
    prefix::ATTRIBUTION,
    prefix::CONSULTATION,
    prefix::SALE,
    prefix::EVIDENCE,
    prefix::WAITING,
    prefix::DAY,
];

/// `M` + name.
pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![prefix::META];
    key.extend_from_slice(name.as_bytes());
    key
}

/// `R` + first hq_seq.
pub(crate) fn chunk_key(first: u64) -> [u8; 9] {
    seq_key(prefix::CHUNK, first)
}

/// `R` + first hq_seq + piece index: the second and later pieces of a long chunk.
fn piece_key(first: u64, index: u32) -> [u8; 13] {
    let mut key = [prefix::CHUNK; 13];
    key[1..9].copy_from_slice(&first.to_be_bytes());
    key[9..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Adds a chunk to `batch`, in pieces of at most [`PIECE_MAX_BYTES`].
pub(crate) fn insert_chunk(batch: &mut sled::Batch, first: u64, chunk: Vec<u8>) {
    if chunk.len() <= PIECE_MAX_BYTES {
        batch.insert(&chunk_key(first), chunk);
        return;
    }
    for (index, piece) in chunk.chunks(PIECE_MAX_BYTES).enumerate() {
        match u32::try_from(index) {
            Ok(0) => batch.insert(&chunk_key(first), piece),
            // A chunk is at most a max_body line (1 GiB): far fewer than u32::MAX pieces.
            Ok(index) => batch.insert(&piece_key(first, index), piece),
            Err(_) => break,
        }
    }
}

/// The first hq_seq of the chunk a chunk or piece key belongs to.
fn chunk_first(key: &[u8]) -> anyhow::Result<u64> {
    match key.len() {
        9 | 13 => be_u64(&key[1..9]).ok_or_else(|| anyhow!("damaged chunk key")),
        _ => bail!("damaged chunk key"),
    }
}

/// `A` + store + 0 + ts + hq_seq: a store's attribution summaries sort by time, so the cases of
/// a range of days are one range read (and no index key is written per record).
pub(crate) fn attribution_key(store: &str, t: i64, seq: u64) -> Vec<u8> {
    timed_key(prefix::ATTRIBUTION, store, t, seq)
}

/// `C` + store + 0 + ts + hq_seq, as for `A`.
pub(crate) fn consultation_key(store: &str, t: i64, seq: u64) -> Vec<u8> {
    timed_key(prefix::CONSULTATION, store, t, seq)
}

/// A prefix, store, 0, ts (epoch ms, sign bit flipped so keys sort by time) and hq_seq.
fn timed_key(tag: u8, store: &str, t: i64, seq: u64) -> Vec<u8> {
    let mut key = store_prefix(tag, store);
    key.extend_from_slice(&time_bytes(t));
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `L` + hq_seq.
pub(crate) fn sale_key(seq: u64) -> [u8; 9] {
    seq_key(prefix::SALE, seq)
}

/// A one-byte prefix, the store code and a 0 byte: where a store's keys of that kind start.
fn store_prefix(tag: u8, store: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(store.len() + 32);
    key.push(tag);
    key.extend_from_slice(store.as_bytes());
    key.push(0);
    key
}

/// `E` + store + 0 + link key.
pub(crate) fn evidence_key(store: &str, link: &[u8]) -> Vec<u8> {
    let mut key = store_prefix(prefix::EVIDENCE, store);
    key.extend_from_slice(link);
    key
}

/// `W` + store + 0 + link key + 0: the sales waiting for that key follow it.
pub(crate) fn waiting_prefix(store: &str, link: &[u8]) -> Vec<u8> {
    let mut key = store_prefix(prefix::WAITING, store);
    key.extend_from_slice(link);
    key.push(0);
    key
}

/// `W` + store + 0 + link key + 0 + hq_seq.
pub(crate) fn waiting_key(store: &str, link: &[u8], seq: u64) -> Vec<u8> {
    let mut key = waiting_prefix(store, link);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Epoch milliseconds as 8 bytes that sort as the times do.
fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// `Y` + store + 0 + day.
pub(crate) fn day_key(store: &str, day: Day) -> Vec<u8> {
    let mut key = store_prefix(prefix::DAY, store);
    key.extend_from_slice(&daily::day_bytes(day));
    key
}

/// Adds to `batch` what HQ keeps of the record stored at `seq` with `summary`: its summary
/// (`A`, `C`, or through the join `L`) and its part in the join.
pub(crate) fn write_summary(
    batch: &mut sled::Batch,
    join: &mut Join<'_>,
    seq: u64,
    summary: &Summary,
) -> anyhow::Result<()> {
    match summary {
        Summary::Attribution(attribution) => {
            batch.insert(
                attribution_key(&attribution.store, attribution.t, seq),
                serde_json::to_vec(attribution)?,
            );
            join.record(seq, summary)
        }
        Summary::Consultation(consultation) => {
            batch.insert(
                consultation_key(&consultation.store, consultation.t, seq),
                serde_json::to_vec(consultation)?,
            );
            join.record(seq, summary)
        }
        Summary::Sale(sale) => join.sale(seq, sale.clone()),
    }
}

/// A one-byte prefix and a big-endian seq: keys that sort by seq.
fn seq_key(tag: u8, seq: u64) -> [u8; 9] {
    let mut key = [tag; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `S` + store + 0 + first hq_seq.
pub(crate) fn store_batch_key(store: &str, first: u64) -> Vec<u8> {
    let mut key = vec![prefix::STORE_BATCH];
    key.extend_from_slice(store.as_bytes());
    key.push(0);
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// `D` + stream + 0 + range start.
pub(crate) fn dedup_key(stream: &str, start: u64) -> Vec<u8> {
    let mut key = vec![prefix::DEDUP];
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&start.to_be_bytes());
    key
}

/// `T` + store.
pub(crate) fn totals_key(store: &str) -> Vec<u8> {
    let mut key = vec![prefix::TOTALS];
    key.extend_from_slice(store.as_bytes());
    key
}

/// A u64 from 8 big-endian bytes.
fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The seqs of one journal (stream) that HQ holds, as disjoint inclusive ranges.
///
/// A gateway sends its records in seq order, so a stream is normally one range; gaps come from
/// dead-lettered records (one-record gaps) and records the gateway had to evict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqRanges(BTreeMap<u64, u64>);

impl SeqRanges {
    /// Whether `seq` is held.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Adds `seq` (not yet held), merging with the neighbouring ranges.
    pub(crate) fn insert(&mut self, seq: u64) {
        let mut start = seq;
        let mut end = seq;
        if let Some((&before_start, &before_end)) = self.0.range(..seq).next_back() {
            if before_end.checked_add(1) == Some(seq) {
                start = before_start;
            }
        }
        if let Some(next) = seq.checked_add(1) {
            if let Some(after_end) = self.0.remove(&next) {
                end = after_end;
            }
        }
        self.0.insert(start, end);
    }

    /// The sled operations that turn `old` into `self` for `stream`.
    pub(crate) fn write_diff(&self, old: &SeqRanges, stream: &str, batch: &mut sled::Batch) {
        for start in old.0.keys() {
            if !self.0.contains_key(start) {
                batch.remove(dedup_key(stream, *start));
            }
        }
        for (start, end) in &self.0 {
            if old.0.get(start) != Some(end) {
                batch.insert(dedup_key(stream, *start), &end.to_be_bytes());
            }
        }
    }

    /// How many ranges there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Appends one record to a chunk value being built (the chunk header is written by the caller).
pub(crate) fn push_chunk_record(chunk: &mut Vec<u8>, kind: &str, line: &[u8]) {
    // Kinds are validated to at most 32 bytes; lines are bounded by max_body (at most 1 GiB).
    chunk.push(kind.len() as u8);
    chunk.extend_from_slice(kind.as_bytes());
    chunk.extend_from_slice(&(line.len() as u32).to_le_bytes());
    chunk.extend_from_slice(line);
}

/// Starts a chunk value: the store code of every record in it.
pub(crate) fn new_chunk(store: &str) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(CHUNK_MAX_BYTES + 1024);
    chunk.push(store.len() as u8);
    chunk.extend_from_slice(store.as_bytes());
    chunk
}

/// One record read out of a chunk.
struct ChunkRecord<'a> {
    /// Its kind.
    kind: &'a [u8],
    /// Its line, as received.
    line: &'a [u8],
}

/// Splits a chunk value into its records; `None` when it is damaged.
fn decode_chunk(chunk: &[u8]) -> Option<Vec<ChunkRecord<'_>>> {
    let store_len = usize::from(*chunk.first()?);
    let mut at = 1 + store_len;
    let mut records = Vec::with_capacity(CHUNK_MAX_RECORDS);
    while at < chunk.len() {
        let kind_len = usize::from(chunk[at]);
        let kind = chunk.get(at + 1..at + 1 + kind_len)?;
        at += 1 + kind_len;
        let line_len = u32::from_le_bytes(chunk.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let line = chunk.get(at..at + line_len)?;
        at += line_len;
        records.push(ChunkRecord { kind, line });
    }
    (at == chunk.len()).then_some(records)
}

/// The open database.
pub(crate) struct Store {
    /// The sled database (flushed by the flusher, closed on drop).
    pub db: sled::Db,
    /// The one tree holding everything.
    pub tree: sled::Tree,
    /// The database folder, for messages.
    pub path: PathBuf,
}

/// What recovery found: where to continue, and the in-memory state rebuilt from disk.
pub(crate) struct Recovered {
    /// The hq_seq the next stored record gets.
    pub next_seq: u64,
    /// Seqs held, by stream (`store/gateway/epoch`).
    pub dedup: HashMap<String, SeqRanges>,
    /// Totals by store code.
    pub totals: BTreeMap<String, StoreTotals>,
    /// The `/v1/stats` figures as of the last durable batch.
    pub aggregates: Aggregates,
}

/// Opens (or creates) the database in `data_dir/hq` and rebuilds the in-memory state.
///
/// Runs on its own thread: sled 0.34 can panic on some kinds of damage, and a panic here must
/// become an error message, not a crashed receiver. A damaged HQ database is not moved aside
/// (unlike the gateway journal): starting empty would forget what was deduplicated and hide
/// every stored record from analysts, so the operator has to decide.
pub(crate) fn open(data_dir: &Path, timezone: chrono_tz::Tz) -> anyhow::Result<(Store, Recovered)> {
    let path = data_dir.join("hq");
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data folder {}", data_dir.display()))?;
    let thread_path = path.clone();
    let thread = std::thread::Builder::new()
        .name("hq-open".to_string())
        .spawn(move || open_on_this_thread(&thread_path, timezone))
        .context("cannot start a thread to open the HQ database")?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            bail!(
                "cannot open the HQ database at {}: sled panicked: {reason}",
                path.display()
            )
        }
    }
}

/// The body of [`open`].
fn open_on_this_thread(path: &Path, timezone: chrono_tz::Tz) -> anyhow::Result<(Store, Recovered)> {
    let db = sled::Config::new()
        .path(path)
        // fsync timing is the flusher's alone (group commit); sled's own timer would add
        // unscheduled flushes competing with it.
        .flush_every_ms(None)
        // sled's default cache is 1 GiB, and it holds what was written as well as what was
        // read: memory grew with every record stored until the cache filled (and sled counts
        // its cache below what it really takes). Reads of records go through chunks of
        // recent records, which a small cache holds as well as a large one.
        .cache_capacity(CACHE_BYTES)
        .open()
        .map_err(|error| {
            if error.to_string().contains("could not acquire lock") {
                anyhow!(
                    "the HQ database at {} is in use by another process",
                    path.display()
                )
            } else {
                anyhow!("cannot open the HQ database at {}: {error}", path.display())
            }
        })?;
    let tree = db
        .open_tree(TREE)
        .with_context(|| format!("cannot open the HQ database at {}", path.display()))?;
    let store = Store {
        db,
        tree,
        path: path.to_path_buf(),
    };
    let recovered = recover(&store, timezone)
        .with_context(|| format!("cannot read the HQ database at {}", path.display()))?;
    Ok((store, recovered))
}

/// Checks the format and reads back the state kept in memory.
fn recover(store: &Store, timezone: chrono_tz::Tz) -> anyhow::Result<Recovered> {
    let tree = &store.tree;
    match tree.get(meta_key("format"))? {
        Some(format) if format.as_ref() == FORMAT => {}
        Some(format) => bail!(
            "unknown database format '{}' (this posgw writes format {})",
            String::from_utf8_lossy(&format),
            String::from_utf8_lossy(FORMAT)
        ),
        None => {
            if tree.iter().next().is_some() {
                bail!("the database has records but no format mark");
            }
            tree.insert(meta_key("format"), FORMAT)?;
            store.db.flush()?;
        }
    }
    let next_seq = match tree.get(meta_key("next_seq"))? {
        Some(bytes) => be_u64(&bytes).ok_or_else(|| anyhow!("'next_seq' is not 8 bytes"))?,
        None => 1,
    };

    let mut dedup: HashMap<String, SeqRanges> = HashMap::new();
    for item in tree.scan_prefix([prefix::DEDUP]) {
        let (key, value) = item?;
        let body = &key[1..];
        let split = body
            .len()
            .checked_sub(9)
            .filter(|&at| body[at] == 0)
            .ok_or_else(|| anyhow!("damaged dedup key"))?;
        let stream = std::str::from_utf8(&body[..split]).context("damaged dedup key")?;
        let start = be_u64(&body[split + 1..]).ok_or_else(|| anyhow!("damaged dedup key"))?;
        let end = be_u64(&value).ok_or_else(|| anyhow!("damaged dedup range"))?;
        dedup
            .entry(stream.to_string())
            .or_default()
            .0
            .insert(start, end);
    }

    let mut aggregates = Aggregates::new(timezone);
    let mut totals = BTreeMap::new();
    for item in tree.scan_prefix([prefix::TOTALS]) {
        let (key, value) = item?;
        let code = std::str::from_utf8(&key[1..]).context("damaged totals key")?;
        let store_totals: StoreTotals =
            serde_json::from_slice(&value).with_context(|| format!("damaged totals of {code}"))?;
        aggregates.set_store_totals(code, store_totals.clone());
        totals.insert(code.to_string(), store_totals);
    }
    let current = tree.get(meta_key(SUMMARIES))?.as_deref() == Some(SUMMARIES_VERSION)
        && tree.get(meta_key(CONSULTATIONS_SUMMARISED))?.is_some()
        && tree.get(meta_key(TIMEZONE))?.as_deref() == Some(timezone.name().as_bytes());
    if !current {
        if next_seq > 1 {
            resummarise(store, timezone)?;
        }
        tree.insert(meta_key(SUMMARIES), SUMMARIES_VERSION)?;
        tree.insert(meta_key(CONSULTATIONS_SUMMARISED), b"1")?;
        tree.insert(meta_key(TIMEZONE), timezone.name().as_bytes())?;
        store.db.flush()?;
    }
    for item in tree.scan_prefix([prefix::DAY]) {
        let (key, value) = item?;
        let (code, day) = split_day_key(&key).ok_or_else(|| anyhow!("damaged day key"))?;
        let counters = DayCounters::decode(&value)
            .ok_or_else(|| anyhow!("damaged day counters of {code} {day}"))?;
        aggregates.set_day_counters(code, day, counters);
    }
    for item in tree.scan_prefix([prefix::ATTRIBUTION]) {
        let (key, value) = item?;
        let summary: AttributionSummary = serde_json::from_slice(&value)
            .with_context(|| format!("damaged attribution summary {key:?}"))?;
        aggregates.add_attribution(&summary);
    }
    for item in tree.scan_prefix([prefix::CONSULTATION]) {
        let (key, value) = item?;
        let summary: ConsultationSummary = serde_json::from_slice(&value)
            .with_context(|| format!("damaged consultation summary {key:?}"))?;
        aggregates.add_consultation(&summary);
    }
    for item in tree.scan_prefix([prefix::SALE]) {
        let (key, value) = item?;
        let summary: SaleSummary = serde_json::from_slice(&value)
            .with_context(|| format!("damaged sale summary {key:?}"))?;
        aggregates.add(&Summary::Sale(summary));
    }
    // Sales waiting for evidence: each under every one of its link keys, counted once.
    let mut waiting = std::collections::HashSet::new();
    for item in tree.scan_prefix([prefix::WAITING]) {
        let (key, value) = item?;
        let seq = be_u64(&key[key.len().saturating_sub(8)..])
            .ok_or_else(|| anyhow!("damaged waiting sale key"))?;
        if waiting.insert(seq) {
            let summary: SaleSummary = serde_json::from_slice(&value)
                .with_context(|| format!("damaged waiting sale {seq}"))?;
            aggregates.add(&Summary::Sale(summary));
        }
    }
    aggregates.set_hq_seq(next_seq - 1);
    aggregates.forget_old_days(chrono::Utc::now());
    Ok(Recovered {
        next_seq,
        dedup,
        totals,
        aggregates,
    })
}

/// The store code and day of a `Y` key.
fn split_day_key(key: &[u8]) -> Option<(&str, Day)> {
    let body = key.get(1..)?;
    let split = body.len().checked_sub(5).filter(|&at| body[at] == 0)?;
    let code = std::str::from_utf8(&body[..split]).ok()?;
    Some((code, daily::day_from_bytes(&body[split + 1..])?))
}

/// Rebuilds everything HQ derives from the records (`DERIVED`: the summaries, the join, the
/// per-day counters) by reading every stored record once, in hq_seq order, as
/// the writer would have at ingest. For a database an older HQ wrote (summaries without times,
/// values or links; no sales, join, index or days), or whose days were counted in another
/// time zone. Records that do not pass today's checks are left out of the figures (and
/// logged), as they would have been refused. The backlog and the hours heard of days before
/// cannot be known again (they depend on when batches arrived) and stay 0. Idempotent: an
/// interrupted run is redone whole at the next start, the mark being set only after it.
fn resummarise(store: &Store, timezone: chrono_tz::Tz) -> anyhow::Result<()> {
    tracing::info!(
        path = %store.path.display(),
        "summarising stored records for the daily figures and the traceability join (once)"
    );
    let tree = &store.tree;
    for tag in DERIVED {
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for item in tree.scan_prefix([tag]) {
            batch.remove(item?.0);
            pending += 1;
            if pending == BACKFILL_BATCH {
                tree.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        tree.apply_batch(batch)?;
    }
    let mut days: HashMap<(String, Day), u64> = HashMap::new();
    let mut finder = DayFinder::new(timezone);
    let mut batch = sled::Batch::default();
    let mut join = Join::new(tree, 0);
    let mut pending = 0;
    let (mut summarised, mut refused) = (0u64, 0u64);
    let mut items = tree.scan_prefix([prefix::CHUNK]).peekable();
    while let Some(item) = items.next() {
        let (key, value) = item?;
        let first = chunk_first(&key)?;
        if key.len() != 9 {
            continue;
        }
        let mut joined: Option<Vec<u8>> = None;
        while let Some(Ok((next, _))) = items.peek() {
            if next.len() != 13 || next[..9] != key[..] {
                break;
            }
            if let Some(item) = items.next() {
                joined
                    .get_or_insert_with(|| value.to_vec())
                    .extend_from_slice(&item?.1);
            }
        }
        let value: &[u8] = joined.as_deref().unwrap_or(&value);
        let records =
            decode_chunk(value).ok_or_else(|| anyhow!("damaged record chunk at hq_seq {first}"))?;
        let store_len = usize::from(value[0]);
        let code = std::str::from_utf8(&value[1..1 + store_len]).context("damaged chunk")?;
        for (offset, record) in records.iter().enumerate() {
            let seq = first + offset as u64;
            match super::record::stored_record(record.line) {
                Ok((t, summary)) => {
                    let day = finder.day(t);
                    match days.get_mut(&(code.to_string(), day)) {
                        Some(count) => *count += 1,
                        None => {
                            days.insert((code.to_string(), day), 1);
                        }
                    }
                    if let Some(summary) = summary {
                        write_summary(&mut batch, &mut join, seq, &summary)?;
                        pending += 1;
                        summarised += 1;
                    }
                }
                Err(reason) => {
                    tracing::warn!(hq_seq = seq, %reason, "a stored record is left out of the figures");
                    refused += 1;
                }
            }
        }
        if pending >= BACKFILL_BATCH {
            // The join's overlay only covers writes not yet applied: start a new one.
            join.finish(&mut batch)?;
            tree.apply_batch(std::mem::take(&mut batch))?;
            join = Join::new(tree, 0);
            pending = 0;
        }
    }
    join.finish(&mut batch)?;
    drop(join);
    tree.apply_batch(batch)?;
    let mut batch = sled::Batch::default();
    for ((code, day), records) in days {
        let counters = DayCounters {
            records,
            ..DayCounters::default()
        };
        batch.insert(day_key(&code, day), &counters.encode());
    }
    tree.apply_batch(batch)?;
    tracing::info!(summarised, refused, "stored records summarised");
    Ok(())
}

/// The [`Case`]s of `store` whose `ts` is in `from_ms..to_ms` (epoch ms), in ts order (then
/// hq_seq), at most [`MAX_CASES`] (the earliest), never past `durable`: two range reads, of
/// the store's `A` and `C` keys, merged.
pub(crate) fn read_cases(
    tree: &sled::Tree,
    durable: u64,
    store: &str,
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<Vec<Case>> {
    // (t, hq_seq, case) of each kind, each already in order.
    let mut kinds: Vec<Vec<(i64, u64, Case)>> = Vec::with_capacity(2);
    for tag in [prefix::ATTRIBUTION, prefix::CONSULTATION] {
        let mut cases = Vec::new();
        let range = timed_key(tag, store, from_ms, 0)..timed_key(tag, store, to_ms, 0);
        for item in tree.range(range) {
            if cases.len() >= MAX_CASES {
                break;
            }
            let (key, value) = item?;
            let seq =
                be_u64(&key[key.len() - 8..]).ok_or_else(|| anyhow!("damaged summary key"))?;
            if seq > durable {
                continue;
            }
            let case = if tag == prefix::ATTRIBUTION {
                let summary: AttributionSummary = serde_json::from_slice(&value)
                    .with_context(|| format!("damaged attribution summary {seq}"))?;
                (summary.t, seq, Case::prompt(seq, summary))
            } else {
                let summary: ConsultationSummary = serde_json::from_slice(&value)
                    .with_context(|| format!("damaged consultation summary {seq}"))?;
                (summary.t, seq, Case::consultation(seq, summary))
            };
            cases.push(case);
        }
        kinds.push(cases);
    }
    let mut cases: Vec<(i64, u64, Case)> = kinds.into_iter().flatten().collect();
    cases.sort_by_key(|(t, seq, _)| (*t, *seq));
    cases.truncate(MAX_CASES);
    Ok(cases.into_iter().map(|(_, _, case)| case).collect())
}

/// A `/v1/records` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RecordQuery {
    /// Only records of this store.
    pub store: Option<String>,
    /// Only records of this kind.
    pub kind: Option<String>,
    /// Only records of these stores (a caller's scope); `None`: every store.
    pub within: Option<std::collections::BTreeSet<String>>,
    /// Only records with a larger hq_seq.
    pub after: u64,
    /// At most this many records.
    pub limit: usize,
}

/// One page of `/v1/records`.
#[derive(Debug, Default)]
pub(crate) struct RecordPage {
    /// NDJSON: each record as received, with `"hq_seq":N` added before its closing brace.
    pub body: Vec<u8>,
    /// Records in `body`.
    pub count: usize,
    /// The hq_seq the next page starts after (the last record examined, matching or not).
    pub next_after: u64,
}

/// Reads one page of records, never past `durable` (a record not yet fsynced may still vanish
/// in a crash, and its hq_seq would then be given to another record).
pub(crate) fn read_records(
    tree: &sled::Tree,
    durable: u64,
    query: &RecordQuery,
) -> anyhow::Result<RecordPage> {
    let mut page = RecordPage {
        next_after: query.after,
        ..RecordPage::default()
    };
    let mut reader = PageReader {
        query,
        durable,
        page: &mut page,
        examined: 0,
    };
    let start = query.after.saturating_add(1);
    match &query.store {
        None => {
            let from = chunk_start(tree, start)?;
            reader.read_chunks(tree.range(chunk_key(from)..=chunk_key(u64::MAX)))?;
        }
        Some(store) => {
            // The store's batches, from the one that may hold `start` on.
            let first = store_batch_key(store, 0);
            let last = store_batch_key(store, u64::MAX);
            let mut from = store_batch_key(store, start);
            if let Some(item) = tree.range(first.clone()..=from.clone()).next_back() {
                from = item?.0.to_vec();
            }
            for item in tree.range(from..=last) {
                let (key, value) = item?;
                let batch_first =
                    be_u64(&key[key.len() - 8..]).ok_or_else(|| anyhow!("damaged store index"))?;
                let batch_last = be_u64(&value).ok_or_else(|| anyhow!("damaged store index"))?;
                if batch_last < start {
                    continue;
                }
                let chunks =
                    chunk_key(batch_first).to_vec()..=piece_key(batch_last, u32::MAX).to_vec();
                let more = reader.read_chunks(tree.range(chunks))?;
                if !more {
                    break;
                }
            }
        }
    }
    Ok(page)
}

/// The first hq_seq of the chunk holding `seq` (or `seq` itself when none does).
fn chunk_start(tree: &sled::Tree, seq: u64) -> anyhow::Result<u64> {
    match tree.range(chunk_key(0)..=chunk_key(seq)).next_back() {
        Some(item) => chunk_first(&item?.0),
        None => Ok(seq),
    }
}

/// The state of one page being read.
struct PageReader<'a> {
    /// What to read.
    query: &'a RecordQuery,
    /// Highest hq_seq that may be returned.
    durable: u64,
    /// The page being filled.
    page: &'a mut RecordPage,
    /// Records looked at so far.
    examined: u64,
}

impl PageReader<'_> {
    /// Reads records out of chunks; `false` once the page is complete.
    fn read_chunks(
        &mut self,
        chunks: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> anyhow::Result<bool> {
        let mut items = chunks.peekable();
        while let Some(item) = items.next() {
            let (key, value) = item?;
            let first = chunk_first(&key)?;
            if key.len() != 9 {
                // A piece of a chunk that began before the range (whose records come before).
                continue;
            }
            // A long chunk's pieces follow it; joined, they are the chunk.
            let mut joined: Option<Vec<u8>> = None;
            while let Some(Ok((next, _))) = items.peek() {
                if next.len() != 13 || next[..9] != key[..] {
                    break;
                }
                if let Some(item) = items.next() {
                    let (_, piece) = item?;
                    joined
                        .get_or_insert_with(|| value.to_vec())
                        .extend_from_slice(&piece);
                }
            }
            let value: &[u8] = joined.as_deref().unwrap_or(&value);
            let records = decode_chunk(value)
                .ok_or_else(|| anyhow!("damaged record chunk at hq_seq {first}"))?;
            let outside = match &self.query.within {
                None => false,
                Some(stores) => {
                    let store_len = usize::from(value[0]);
                    let store = std::str::from_utf8(&value[1..1 + store_len]).unwrap_or("");
                    !stores.contains(store)
                }
            };
            for (offset, record) in records.iter().enumerate() {
                let seq = first + offset as u64;
                if seq <= self.query.after {
                    continue;
                }
                if seq > self.durable
                    || self.page.count >= self.query.limit
                    || self.examined >= SCAN_BUDGET
                {
                    return Ok(false);
                }
                if outside {
                    self.examined += 1;
                    self.page.next_after = seq;
                    continue;
                }
                if let Some(kind) = &self.query.kind {
                    if record.kind != kind.as_bytes() {
                        self.examined += 1;
                        self.page.next_after = seq;
                        continue;
                    }
                }
                // `next_after` stays before this record, so the next page starts with it.
                if self.page.count > 0
                    && self.page.body.len() + record.line.len() + HQ_SEQ_FIELD > PAGE_MAX_BYTES
                {
                    return Ok(false);
                }
                self.examined += 1;
                self.page.next_after = seq;
                write_with_hq_seq(&mut self.page.body, record.line, seq);
                self.page.count += 1;
            }
        }
        Ok(true)
    }
}

/// Most bytes [`write_with_hq_seq`] adds to a line: `,"hq_seq":` (10), 20 digits, newline.
const HQ_SEQ_FIELD: usize = 31;

/// Writes `line` with `"hq_seq":seq` added as its last field, and a newline.
pub(crate) fn write_with_hq_seq(out: &mut Vec<u8>, line: &[u8], seq: u64) {
    let trimmed = line.trim_ascii_end();
    match trimmed.split_last() {
        // Every stored line is a validated object with at least `id`, so it ends in `}` and
        // the field goes after an existing one.
        Some((b'}', body)) => {
            out.extend_from_slice(body);
            out.extend_from_slice(b",\"hq_seq\":");
            out.extend_from_slice(seq.to_string().as_bytes());
            out.extend_from_slice(b"}\n");
        }
        _ => {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_ranges_merge_and_diff() {
        let mut ranges = SeqRanges::default();
        for seq in [1, 2, 3, 7, 5] {
            assert!(!ranges.contains(seq));
            ranges.insert(seq);
        }
        assert_eq!(ranges.len(), 3);
        assert!(ranges.contains(2) && ranges.contains(7) && !ranges.contains(4));
        let old = ranges.clone();
        ranges.insert(4);
        assert_eq!(ranges.len(), 2, "1..=5 and 7");
        ranges.insert(6);
        assert_eq!(ranges.len(), 1);
        assert!(ranges.contains(6) && !ranges.contains(8) && !ranges.contains(0));

        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let mut batch = sled::Batch::default();
        old.write_diff(&SeqRanges::default(), "s/g/e", &mut batch);
        db.apply_batch(batch).expect("apply");
        let mut batch = sled::Batch::default();
        ranges.write_diff(&old, "s/g/e", &mut batch);
        db.apply_batch(batch).expect("apply");
        let stored: Vec<(u64, u64)> = db
            .scan_prefix([prefix::DEDUP])
            .map(|item| {
                let (key, value) = item.expect("item");
                (
                    be_u64(&key[key.len() - 8..]).expect("key"),
                    be_u64(&value).expect("value"),
                )
            })
            .collect();
        assert_eq!(stored, [(1, 7)]);
    }

    #[test]
    fn chunks_round_trip_and_reject_damage() {
        let mut chunk = new_chunk("S1");
        push_chunk_record(&mut chunk, "scan", br#"{"a":1}"#);
        push_chunk_record(&mut chunk, "sale", br#"{"b":2}"#);
        let records = decode_chunk(&chunk).expect("decodes");
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].kind, b"sale");
        assert_eq!(records[1].line, br#"{"b":2}"#);
        assert!(decode_chunk(&chunk[..chunk.len() - 1]).is_none());
    }

    /// Runs `open` until sled's file lock is free. A closed sled database lets go of its lock
    /// only when its background threads have ended, a moment after the last handle is dropped,
    /// and nothing signals that moment: the open is tried again for up to 10 s.
    async fn until_unlocked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Ok(opened) => return opened,
                Err(error)
                    if error.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(error) => panic!("open: {error}"),
            }
        }
    }

    #[tokio::test]
    async fn consultations_stored_before_their_figures_are_summarised_at_start() {
        use crate::hq::metrics::HqMetrics;
        use crate::hq::record::parse_batch;
        use crate::hq::storage::StoreHandle;

        let record = |seq: u64, kind: &str, data: &str| {
            format!(
                r#"{{"id":"S1/gw-1/ep1/{seq}","store":"S1","gateway":"gw-1","epoch":"ep1","seq":{seq},"ts":"2026-11-27T16:01:02.345+08:00","kind":"{kind}","data":{data}}}"#
            )
        };
        let consultation = |seq: u64, label: &str, at: &str| {
            record(
                seq,
                "consultation",
                &format!(
                    r#"{{"flow":"f1","outcome":"completed","clerk":"c-1","steps":[{{"key":"a","label":"{label}","at":{at},"skipped":null}}]}}"#
                ),
            )
        };
        // The second is longer than a chunk piece: stored in pieces, joined when read back.
        let long = "长".repeat(PIECE_MAX_BYTES);
        let lines = [
            record(1, "scan", "{}"),
            consultation(2, "症状记录", r#""2026-11-27T16:02:00.000+08:00""#),
            consultation(3, &long, "null"),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = StoreHandle::open(dir.path(), chrono_tz::Asia::Shanghai, HqMetrics::new())
            .await
            .expect("open");
        let batch = parse_batch(lines.join("\n").into_bytes(), "S1").expect("valid");
        handle.ingest(batch).await.expect("stored");
        let before = handle.stats();
        assert_eq!(before.flows["f1"].figures.consultations, 2);
        handle.close().await;

        // As an HQ from before consultation figures left it: records, no summaries, no mark;
        // and one consultation record that today's checks refuse.
        {
            let db = until_unlocked(|| sled::open(dir.path().join("hq"))).await;
            let tree = db.open_tree(TREE).expect("tree");
            for item in tree.scan_prefix([prefix::CONSULTATION]) {
                tree.remove(item.expect("item").0).expect("remove");
            }
            tree.remove(meta_key(CONSULTATIONS_SUMMARISED))
                .expect("remove");
            let mut chunk = new_chunk("S1");
            let refused = record(
                4,
                "consultation",
                r#"{"flow":"f1","outcome":"maybe","steps":[]}"#,
            );
            push_chunk_record(&mut chunk, "consultation", refused.as_bytes());
            tree.insert(chunk_key(4), chunk).expect("chunk");
            tree.insert(meta_key("next_seq"), &5u64.to_be_bytes())
                .expect("next_seq");
            db.flush().expect("flush");
        }

        let handle = loop {
            match StoreHandle::open(dir.path(), chrono_tz::Asia::Shanghai, HqMetrics::new()).await {
                Ok(handle) => break handle,
                Err(error) if error.to_string().contains("in use by another process") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(error) => panic!("open: {error:#}"),
            }
        };
        let after = handle.stats();
        assert_eq!(after.flows, before.flows);
        assert_eq!(after.flows["f1"].figures.steps[0].missing, 1);
        assert_eq!(after.hq_seq, 4);
        handle.close().await;
        // The mark is set: the next start reads the summaries only.
        let db = until_unlocked(|| sled::open(dir.path().join("hq"))).await;
        let tree = db.open_tree(TREE).expect("tree");
        assert!(tree
            .get(meta_key(CONSULTATIONS_SUMMARISED))
            .expect("get")
            .is_some());
        assert_eq!(tree.scan_prefix([prefix::CONSULTATION]).count(), 2);
    }

    #[tokio::test]
    async fn a_database_of_an_older_hq_is_summarised_again_once() {
        use crate::hq::metrics::HqMetrics;
        use crate::hq::record::parse_batch;
        use crate::hq::storage::StoreHandle;

        let record = |seq: u64, ts: &str, kind: &str, data: &str| {
            format!(
                r#"{{"id":"S1/gw-1/ep1/{seq}","store":"S1","gateway":"gw-1","epoch":"ep1","seq":{seq},"ts":"{ts}","kind":"{kind}","data":{data}}}"#
            )
        };
        let ts = "2026-11-27T16:01:02.345+08:00";
        let lines = [
            record(1, ts, "scan", "{}"),
            record(
                2,
                "2026-11-20T09:00:00.000+08:00",
                "sale",
                r#"{"receipt":"R-1","clerk":"c-1","lines":[{"sku":"1","prompt":"p-1"}]}"#,
            ),
            record(
                3,
                ts,
                "attribution",
                &format!(
                    r#"{{"prompt":"p-1","campaign":"c1","outcome":"answered","clerk":"c-1","opened_at":"{ts}"}}"#
                ),
            ),
            record(
                4,
                ts,
                "consultation",
                r#"{"flow":"f1","outcome":"completed","clerk":"c-1","steps":[{"key":"a","at":null,"skipped":null}]}"#,
            ),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || StoreHandle::open(dir.path(), chrono_tz::Asia::Shanghai, HqMetrics::new());
        let handle = open().await.expect("open");
        let batch = parse_batch(lines.join("\n").into_bytes(), "S1").expect("valid");
        handle.ingest(batch).await.expect("stored");
        // What is known again from the records: all but the backlog and the hours heard.
        let known = |handle: &StoreHandle| {
            handle.daily(|daily| {
                let mut days = daily.store("S1").cloned().expect("S1");
                for figures in days.values_mut() {
                    figures.backlog_max_minutes = 0;
                    figures.heard_hours = 0;
                }
                days.retain(|_, figures| *figures != Default::default());
                days
            })
        };
        let before = known(&handle);
        assert_eq!(before.len(), 2, "the sale's day and the others'");
        assert_eq!(before.values().map(|f| f.records).sum::<u64>(), 4);
        assert_eq!(before.values().map(|f| f.sales_traced).sum::<u64>(), 1);
        let stats = handle.stats();
        handle.close().await;

        // As an older HQ left it: summaries without times or links, no sales, join, index or
        // days, no marks.
        {
            let db = until_unlocked(|| sled::open(dir.path().join("hq"))).await;
            let tree = db.open_tree(TREE).expect("tree");
            for tag in [prefix::SALE, prefix::EVIDENCE, prefix::WAITING, prefix::DAY] {
                for item in tree.scan_prefix([tag]) {
                    tree.remove(item.expect("item").0).expect("remove");
                }
            }
            for item in tree.scan_prefix([prefix::ATTRIBUTION]) {
                let (key, value) = item.expect("item");
                let mut summary: serde_json::Value = serde_json::from_slice(&value).expect("json");
                for field in ["t", "z", "p", "oa", "rc"] {
                    summary.as_object_mut().expect("object").remove(field);
                }
                tree.insert(key, serde_json::to_vec(&summary).expect("json"))
                    .expect("insert");
            }
            for name in [SUMMARIES, TIMEZONE] {
                tree.remove(meta_key(name)).expect("remove");
            }
            db.flush().expect("flush");
        }
        let handle = loop {
            match open().await {
                Ok(handle) => break handle,
                Err(error) if error.to_string().contains("in use by another process") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(error) => panic!("open: {error:#}"),
            }
        };
        assert_eq!(known(&handle), before);
        assert_eq!(handle.stats().campaigns, stats.campaigns);
        assert_eq!(handle.stats().flows, stats.flows);
        handle.close().await;
        let db = until_unlocked(|| sled::open(dir.path().join("hq"))).await;
        let tree = db.open_tree(TREE).expect("tree");
        assert_eq!(
            tree.get(meta_key(SUMMARIES)).expect("get").as_deref(),
            Some(SUMMARIES_VERSION)
        );
        assert_eq!(tree.scan_prefix([prefix::SALE]).count(), 1);
        assert_eq!(tree.scan_prefix([prefix::WAITING]).count(), 0, "traced");
        assert_eq!(tree.scan_prefix([prefix::ATTRIBUTION]).count(), 1);
        assert!(tree
            .scan_prefix([prefix::ATTRIBUTION])
            .all(|item| item.expect("item").0.starts_with(b"AS1\0")));
    }

    #[test]
    fn hq_seq_goes_before_the_closing_brace() {
        let mut out = Vec::new();
        write_with_hq_seq(&mut out, br#"{"id":"x","data":{}}  "#, 42);
        assert_eq!(out, b"{\"id\":\"x\",\"data\":{},\"hq_seq\":42}\n");
    }
}
