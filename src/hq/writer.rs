//! The owner of the sled HQ database's write path: [`SledStore`] and the two threads behind it.
//!
//! - The **writer** thread receives validated batches over a bounded channel, deduplicates
//!   them against the in-memory seq ranges, and applies each as one atomic sled `Batch`
//!   (records, indexes, dedup ranges, summaries, totals and `next_seq` together). It never waits for disk.
//! - The **flusher** thread takes every batch applied so far, fsyncs once (`Db::flush`) and
//!   only then answers their requests, publishes the new durable hq_seq for readers, and
//!   updates the `/v1/stats` figures. Batches applied while a flush runs wait for the next
//!   one: that is the group commit, one fsync for however many concurrent requests.
//!
//! Both are plain threads rather than tokio tasks because everything they do blocks (sled
//! calls, fsync). The handle stays a cheap `Clone`; reads go straight to a sled `Tree` clone on
//! a blocking thread, bounded by the durable hq_seq, and never queue behind writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::daily::{self, Case, Daily, Day, DayCounters, DayFinder};
use super::join::Join;
use super::metrics::HqMetrics;
use super::record::IncomingBatch;
use super::stats::{Aggregates, SaleSummary, StatsReport, StoreTotals, Summary};
use super::store::{self, RecordPage, RecordQuery, SeqRanges, Store};

/// Batches that may wait for the writer; more callers wait in `send` (backpressure).
const QUEUE: usize = 64;

/// What a stored batch amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IngestOutcome {
    /// Records newly stored.
    pub accepted: usize,
    /// Records already stored, or repeated within the batch.
    pub duplicates: usize,
}

/// Why a batch could not be stored (503: the gateway retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub String);

/// State shared by the handle, the writer and the flusher.
struct Shared {
    /// Highest hq_seq known to be on disk; readers never go past it.
    durable: AtomicU64,
    /// Set when a write or fsync failed: from then on nothing is accepted (after a failed
    /// fsync Linux may have dropped the dirty pages, so no promise can be made).
    failure: Mutex<Option<String>>,
    /// The `/v1/stats` figures; a `std` mutex, held briefly and never across an `.await`.
    aggregates: Mutex<Aggregates>,
    /// Metric families.
    metrics: HqMetrics,
}

impl Shared {
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "HQ database failed; refusing further batches");
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert(reason);
    }
}

/// One request to the writer.
struct IngestCommand {
    /// The validated batch.
    batch: IncomingBatch,
    /// Answered once the batch is durable (or failed).
    reply: oneshot::Sender<Result<IngestOutcome, Unavailable>>,
}

/// An applied batch waiting for the fsync that makes it durable.
struct Ticket {
    /// What the batch changed.
    applied: Applied,
    /// Where to answer.
    reply: oneshot::Sender<Result<IngestOutcome, Unavailable>>,
}

/// What applying one batch changed, for the answer and the statistics.
struct Applied {
    /// Highest hq_seq issued when the batch was applied (covers its own records).
    last_seq: u64,
    /// The store that posted it.
    store: String,
    /// The store's totals after this batch.
    totals: StoreTotals,
    /// Summaries of the attribution, consultation and tracked sale records it stored, for the
    /// statistics (a sale as it stands after the whole batch).
    summaries: Vec<Summary>,
    /// Tracked sales of earlier batches that this batch's evidence traced: as counted, as now.
    retraced: Vec<(SaleSummary, SaleSummary)>,
    /// The store's per-day counters this batch changed, as they now are.
    days: Vec<(Day, DayCounters)>,
    /// Records stored and duplicates.
    outcome: IngestOutcome,
}

/// Handle to the sled HQ database. Cheap to clone; the threads stop when the last clone is
/// dropped. Used through [`super::storage::StoreHandle`], as the store itself (sled) or as the
/// figures' cache of a PostgreSQL receiver.
#[derive(Clone)]
pub(crate) struct SledStore {
    /// Queue to the writer thread.
    sender: mpsc::Sender<IngestCommand>,
    /// The tree, for reads.
    tree: sled::Tree,
    /// Shared state.
    shared: Arc<Shared>,
    /// Becomes `true` once the flusher has flushed for the last time and let go of the database.
    stopped: watch::Receiver<bool>,
}

impl SledStore {
    /// Opens the database in `data_dir` (recovering the in-memory state) and starts the
    /// threads. With `keep_records` false, records are counted and summarised but not kept
    /// (the cache of a PostgreSQL receiver, whose records are in PostgreSQL): `read` then
    /// finds nothing.
    pub(crate) async fn open(
        data_dir: &std::path::Path,
        timezone: chrono_tz::Tz,
        metrics: HqMetrics,
        keep_records: bool,
    ) -> anyhow::Result<SledStore> {
        let data_dir = data_dir.to_path_buf();
        let (store, recovered) =
            tokio::task::spawn_blocking(move || store::open(&data_dir, timezone))
                .await
                .map_err(|error| anyhow::anyhow!("opening the HQ database panicked: {error}"))??;
        let durable = recovered.next_seq - 1;
        metrics.stored_seq.set(durable as i64);
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(durable),
            failure: Mutex::new(None),
            aggregates: Mutex::new(recovered.aggregates),
            metrics,
        });
        tracing::info!(
            path = %store.path.display(),
            records = durable,
            "HQ database open"
        );
        let (sender, receiver) = mpsc::channel(QUEUE);
        let (ticket_sender, ticket_receiver) = std::sync::mpsc::channel();
        let (stopped_sender, stopped) = watch::channel(false);
        let tree = store.tree.clone();
        let writer = Writer {
            tree: store.tree.clone(),
            next_seq: recovered.next_seq,
            dedup: recovered.dedup,
            totals: recovered.totals,
            timezone,
            days: DayFinder::new(timezone),
            flusher: ticket_sender,
            shared: shared.clone(),
            keep_records,
        };
        let flusher_shared = shared.clone();
        std::thread::Builder::new()
            .name("hq-writer".to_string())
            .spawn(move || writer.run(receiver))?;
        std::thread::Builder::new()
            .name("hq-flusher".to_string())
            .spawn(move || {
                flush_loop(store, &flusher_shared, ticket_receiver);
                // The database is closed (dropped in `flush_loop`) before anyone hears of it.
                let _ = stopped_sender.send(true);
            })?;
        Ok(SledStore {
            sender,
            tree,
            shared,
            stopped,
        })
    }

    /// Stores a validated batch; answers once it is durable.
    pub(crate) async fn ingest(&self, batch: IncomingBatch) -> Result<IngestOutcome, Unavailable> {
        if let Some(reason) = self.shared.failure() {
            return Err(Unavailable(reason));
        }
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(IngestCommand { batch, reply })
            .await
            .map_err(|_| Unavailable("the HQ database is closing".to_string()))?;
        answer
            .await
            .map_err(|_| Unavailable("the HQ database writer stopped".to_string()))?
    }

    /// Reads one page of records (durable ones only).
    pub(crate) async fn read(&self, query: RecordQuery) -> anyhow::Result<RecordPage> {
        let tree = self.tree.clone();
        let durable = self.shared.durable.load(Ordering::Acquire);
        tokio::task::spawn_blocking(move || store::read_records(&tree, durable, &query))
            .await
            .map_err(|error| anyhow::anyhow!("reading records panicked: {error}"))?
    }

    /// The `/v1/stats` figures as of the latest durable batch.
    pub(crate) fn stats(&self) -> StatsReport {
        self.shared
            .aggregates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .report()
    }

    /// The `/v1/stats` figures as a caller of limited scope sees them.
    pub(crate) fn stats_for(&self, view: impl Fn(&str) -> super::stats::StoreView) -> StatsReport {
        self.shared
            .aggregates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .report_for(view)
    }

    /// Reads the daily figures (as of the latest durable batch) under the statistics' lock:
    /// keep `read` short, every batch's figures wait for it.
    pub(crate) fn daily<R>(&self, read: impl FnOnce(&Daily) -> R) -> R {
        let aggregates = self
            .shared
            .aggregates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(aggregates.daily())
    }

    /// The consultation and attribution records of `store` whose `ts` falls on the store-local
    /// days `from` to `to` (inclusive), in ts order, at most [`store::MAX_CASES`] (the earliest);
    /// durable ones only. Read by store and time (`A`, `C`) on a blocking thread.
    // Read by the alert rules (`alerts`, the failing cases a message lists).
    pub(crate) async fn cases(&self, store: &str, from: Day, to: Day) -> anyhow::Result<Vec<Case>> {
        let timezone = self.daily(|daily| daily.timezone());
        let from_ms = daily::day_start_millis(timezone, from);
        let to_ms = to
            .succ_opt()
            .map_or(i64::MAX, |next| daily::day_start_millis(timezone, next));
        let tree = self.tree.clone();
        let durable = self.shared.durable.load(Ordering::Acquire);
        let store = store.to_string();
        tokio::task::spawn_blocking(move || {
            store::read_cases(&tree, durable, &store, from_ms, to_ms)
        })
        .await
        .map_err(|error| anyhow::anyhow!("reading cases panicked: {error}"))?
    }

    /// Takes every store's batch counts from PostgreSQL (`Aggregates::set_batch_counts`).
    pub(crate) fn set_batch_counts(
        &self,
        counts: std::collections::BTreeMap<String, super::stats::BatchCounts>,
    ) {
        self.shared
            .aggregates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_batch_counts(counts);
    }

    /// Whether HQ holds durable records of `kind` from `store` (from any store when `None`).
    pub(crate) fn holds_kind(&self, store: Option<&str>, kind: &str) -> bool {
        self.shared
            .aggregates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .holds_kind(store, kind)
    }

    /// Why the database stopped accepting batches, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Drops this handle and waits until the last flush is done and the database is closed
    /// (which happens once every other clone is dropped too).
    pub(crate) async fn close(self) {
        let mut stopped = self.stopped.clone();
        drop(self);
        // An error means the flusher is gone, which is what we wait for.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

/// The writer thread's state: everything needed to turn a batch into one sled `Batch`.
struct Writer {
    /// The tree written to.
    tree: sled::Tree,
    /// The hq_seq of the next stored record.
    next_seq: u64,
    /// Seqs held, by stream.
    dedup: HashMap<String, SeqRanges>,
    /// Totals by store, as persisted.
    totals: BTreeMap<String, StoreTotals>,
    /// The zone of store-local days.
    timezone: chrono_tz::Tz,
    /// Finds records' days.
    days: DayFinder,
    /// Applied batches go here to wait for their fsync.
    flusher: std::sync::mpsc::Sender<Ticket>,
    /// Shared state.
    shared: Arc<Shared>,
    /// Whether record chunks are written (false: summaries and counters only).
    keep_records: bool,
}

impl Writer {
    /// Applies batches until every handle is gone.
    fn run(mut self, mut receiver: mpsc::Receiver<IngestCommand>) {
        while let Some(command) = receiver.blocking_recv() {
            if let Some(reason) = self.shared.failure() {
                let _ = command.reply.send(Err(Unavailable(reason)));
                continue;
            }
            match self.apply(command.batch) {
                Ok(applied) => {
                    let ticket = Ticket {
                        applied,
                        reply: command.reply,
                    };
                    if let Err(lost) = self.flusher.send(ticket) {
                        let _ = lost.0.reply.send(Err(Unavailable(
                            "the HQ database flusher stopped".to_string(),
                        )));
                    }
                }
                Err(reason) => {
                    self.shared.fail(reason.clone());
                    let _ = command.reply.send(Err(Unavailable(reason)));
                }
            }
        }
    }

    /// Deduplicates `batch` and writes it as one atomic sled batch; memory is updated only
    /// after sled took it, so a failed write changes nothing.
    fn apply(&mut self, batch: IncomingBatch) -> Result<Applied, String> {
        // The batch's streams' seq ranges, updated as its records are taken.
        let mut working: Vec<SeqRanges> = batch
            .streams
            .iter()
            .map(|stream| self.dedup.get(stream).cloned().unwrap_or_default())
            .collect();
        let mut fresh = Vec::with_capacity(batch.records.len());
        let mut duplicates = 0;
        for record in &batch.records {
            let ranges = &mut working[record.stream];
            if ranges.contains(record.seq) {
                duplicates += 1;
            } else {
                ranges.insert(record.seq);
                fresh.push(record);
            }
        }

        let mut sled_batch = sled::Batch::default();
        let first_seq = batch
            .first_seq
            .map_or(self.next_seq, |first| first.max(self.next_seq));
        let mut chunk = store::new_chunk(&batch.store);
        let mut chunk_first = first_seq;
        let mut chunk_records = 0;
        let mut totals = self.totals.get(&batch.store).cloned().unwrap_or_default();
        let mut summaries = Vec::new();
        // Where the batch's tracked sales are in `summaries` (filled in once the whole batch
        // is joined: a later record of it may trace them).
        let mut sales: Vec<(usize, u64)> = Vec::new();
        let mut join = Join::new(&self.tree, first_seq);
        let now = batch.heard.unwrap_or_else(chrono::Utc::now);
        let now_ms = now.timestamp_millis();
        let mut days: BTreeMap<Day, DayCounters> = BTreeMap::new();
        for (offset, record) in fresh.iter().enumerate() {
            let seq = first_seq + offset as u64;
            let line = &batch.body[record.line.clone()];
            if self.keep_records
                && (chunk_records == store::CHUNK_MAX_RECORDS
                    || (chunk_records > 0 && chunk.len() + line.len() > store::CHUNK_MAX_BYTES))
            {
                store::insert_chunk(&mut sled_batch, chunk_first, std::mem::take(&mut chunk));
                chunk = store::new_chunk(&batch.store);
                chunk_first = seq;
                chunk_records = 0;
            }
            let kind = &batch.kinds[record.kind];
            if self.keep_records {
                store::push_chunk_record(&mut chunk, kind, line);
                chunk_records += 1;
            }
            match totals.by_kind.get_mut(kind) {
                Some(count) => *count += 1,
                None => {
                    totals.by_kind.insert(kind.clone(), 1);
                }
            }
            let day = days.entry(self.days.day(record.t)).or_default();
            day.records += 1;
            let backlog = u64::try_from((now_ms - record.t) / 60_000).unwrap_or(0);
            day.backlog_max_minutes = day.backlog_max_minutes.max(backlog);
            if let Some(summary) = record.summary.as_deref() {
                store::write_summary(&mut sled_batch, &mut join, seq, summary)
                    .map_err(|error| format!("cannot store a {kind} summary: {error:#}"))?;
                if let Summary::Sale(_) = summary {
                    sales.push((summaries.len(), seq));
                }
                summaries.push(summary.clone());
            }
        }
        for (at, seq) in sales {
            if let Some(sale) = join.sale_now(seq) {
                summaries[at] = Summary::Sale(sale.clone());
            }
        }
        let retraced = join
            .finish(&mut sled_batch)
            .map_err(|error| format!("cannot store a sale summary: {error:#}"))?;
        drop(join);
        // The batch was heard now, in this hour of this day of HQ's clock.
        let local = now.with_timezone(&self.timezone);
        days.entry(local.date_naive()).or_default().heard_hours |=
            1 << chrono::Timelike::hour(&local);
        let mut changed_days = Vec::with_capacity(days.len());
        for (day, counters) in days {
            let key = store::day_key(&batch.store, day);
            let mut now_counters = match self.tree.get(&key) {
                Ok(Some(value)) => DayCounters::decode(&value).unwrap_or_default(),
                Ok(None) => DayCounters::default(),
                Err(error) => return Err(format!("cannot read the HQ database: {error}")),
            };
            now_counters.merge(&counters);
            sled_batch.insert(key, &now_counters.encode());
            changed_days.push((day, now_counters));
        }
        let next_seq = first_seq + fresh.len() as u64;
        if !fresh.is_empty() && self.keep_records {
            store::insert_chunk(&mut sled_batch, chunk_first, chunk);
            sled_batch.insert(
                store::store_batch_key(&batch.store, first_seq),
                &(next_seq - 1).to_be_bytes(),
            );
        }
        let empty = SeqRanges::default();
        for (stream, ranges) in batch.streams.iter().zip(&working) {
            let old = self.dedup.get(stream).unwrap_or(&empty);
            ranges.write_diff(old, stream, &mut sled_batch);
        }
        totals.records += fresh.len() as u64;
        totals.duplicates += duplicates as u64;
        totals.batches += 1;
        if let Some((ts, text)) = &batch.latest_ts {
            totals.see_ts(ts, text);
        }
        totals.last_received_at = Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let totals_json = serde_json::to_vec(&totals)
            .map_err(|error| format!("cannot encode store totals: {error}"))?;
        sled_batch.insert(store::totals_key(&batch.store), totals_json);
        sled_batch.insert(store::meta_key("next_seq"), &next_seq.to_be_bytes());

        self.tree
            .apply_batch(sled_batch)
            .map_err(|error| format!("cannot write to the HQ database: {error}"))?;

        for (stream, ranges) in batch.streams.iter().zip(working) {
            match self.dedup.get_mut(stream) {
                Some(held) => *held = ranges,
                None => {
                    self.dedup.insert(stream.clone(), ranges);
                }
            }
        }
        self.totals.insert(batch.store.clone(), totals.clone());
        self.next_seq = next_seq;
        Ok(Applied {
            last_seq: next_seq - 1,
            store: batch.store,
            totals,
            summaries,
            retraced,
            days: changed_days,
            outcome: IngestOutcome {
                accepted: fresh.len(),
                duplicates,
            },
        })
    }
}

/// The flusher thread: one fsync per round for every batch applied so far, then the answers.
fn flush_loop(store: Store, shared: &Shared, tickets: std::sync::mpsc::Receiver<Ticket>) {
    while let Ok(first) = tickets.recv() {
        let mut round = vec![first];
        round.extend(tickets.try_iter());
        let started = Instant::now();
        let flushed = store.db.flush();
        shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = flushed {
            let reason = format!("cannot fsync the HQ database: {error}");
            shared.fail(reason.clone());
            for ticket in round {
                let _ = ticket.reply.send(Err(Unavailable(reason.clone())));
            }
            continue;
        }
        let durable = round
            .iter()
            .map(|ticket| ticket.applied.last_seq)
            .max()
            .unwrap_or(0);
        shared.durable.fetch_max(durable, Ordering::AcqRel);
        shared.metrics.stored_seq.set(durable as i64);
        {
            let mut aggregates = shared
                .aggregates
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for Ticket { applied, .. } in &round {
                aggregates.set_store_totals(&applied.store, applied.totals.clone());
                for summary in &applied.summaries {
                    aggregates.add(summary);
                }
                for (before, after) in &applied.retraced {
                    aggregates.retrace(before, after);
                }
                for (day, counters) in &applied.days {
                    aggregates.set_day_counters(&applied.store, *day, *counters);
                }
            }
            aggregates.set_hq_seq(durable);
            aggregates.forget_old_days(chrono::Utc::now());
        }
        for Ticket { applied, reply } in round {
            let outcome = applied.outcome;
            shared
                .metrics
                .batch_stored(&applied.store, outcome.accepted, outcome.duplicates);
            let _ = reply.send(Ok(outcome));
        }
    }
    // Every writer is gone: one last flush (a no-op unless something was left), then close.
    if let Err(error) = store.db.flush() {
        tracing::error!(%error, "final flush of the HQ database failed");
    }
    drop(store);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::record::parse_batch;

    #[tokio::test]
    async fn batches_count_records_their_backlog_and_the_hours_heard_per_day() {
        let zone = chrono_tz::Asia::Shanghai;
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = SledStore::open(dir.path(), zone, HqMetrics::new(), true)
            .await
            .expect("open");
        let now = chrono::Utc::now();
        let record = |seq: u64, ts: chrono::DateTime<chrono::Utc>| {
            let ts = ts
                .with_timezone(&zone)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
            format!(
                r#"{{"id":"S1/gw-1/ep1/{seq}","store":"S1","gateway":"gw-1","epoch":"ep1","seq":{seq},"ts":"{ts}","kind":"scan","data":{{}}}}"#
            )
        };
        // Two records made 3 days ago (sent late), one now; then the same again (duplicates:
        // heard, not counted).
        let three_days_ago = now - chrono::Duration::days(3);
        let lines = [
            record(1, three_days_ago),
            record(2, three_days_ago - chrono::Duration::minutes(5)),
            record(3, now),
        ]
        .join("\n");
        for _ in 0..2 {
            let batch = parse_batch(lines.clone().into_bytes(), "S1").expect("valid");
            handle.ingest(batch).await.expect("stored");
        }
        let after = chrono::Utc::now().with_timezone(&zone);
        let local_now = now.with_timezone(&zone);
        let then = three_days_ago.with_timezone(&zone).date_naive();
        let days = handle.daily(|daily| daily.store("S1").cloned().expect("S1"));
        let late = &days[&then];
        assert_eq!(late.records, 2);
        // 3 days and 5 minutes, give or take the minute the test took.
        let backlog = 3 * 24 * 60 + 5;
        assert!(
            (backlog..=backlog + 1).contains(&late.backlog_max_minutes),
            "{}",
            late.backlog_max_minutes
        );
        assert_eq!(late.heard_hours, 0, "nothing was heard that day");
        let current = &days[&local_now.date_naive()];
        assert_eq!(current.records, 1);
        assert!(current.backlog_max_minutes <= 1);
        // Heard in the hours the test ran (one, unless an hour or the day turned meanwhile).
        if after.date_naive() == local_now.date_naive() {
            let (first, last) = (
                chrono::Timelike::hour(&local_now),
                chrono::Timelike::hour(&after),
            );
            let expected: u32 = (first..=last).map(|hour| 1 << hour).sum();
            assert_eq!(current.heard_hours, expected);
        }
        handle.close().await;
    }
}
