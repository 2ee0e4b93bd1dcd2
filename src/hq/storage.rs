//! The storage seam of `posgw hq`: [`StoreHandle`], what the routes, the dashboard and the
//! alert rules ask of stored records, over either backend (`[storage] backend`).
//!
//! - **sled** (default): the embedded database in `data_dir/hq` holds the records and the
//!   figures (`writer`, `store`). One receiver.
//! - **postgres**: PostgreSQL holds the records (`pg`): batches, dedup and `/v1/records` go
//!   there, so any number of receivers can share it. The figures (`/v1/stats`, the daily
//!   figures behind the yardsticks, the alert rules and the dashboard, the traceability join)
//!   are computed by the same code as with sled, from the records in hq_seq order: each
//!   receiver's **follower** task reads what was committed after its position and replays it
//!   into a local cache (`data_dir/pg-cache`, a sled store of summaries and counters, no
//!   records). The cache is disposable: it is made again from PostgreSQL when missing, built
//!   from another database (its id differs) or in another time zone. A batch posted to a
//!   receiver is answered once its own cache has it too (or after [`FOLLOW_WAIT`]), so a
//!   client that posts and then reads the figures from the same receiver sees its batch;
//!   batches posted to other receivers show within [`FOLLOW_EVERY`].
//!
//! Scheduled jobs (the alert evaluation) ask [`StoreHandle::runs_jobs`]: always with sled,
//! with PostgreSQL only on the receiver holding the jobs lock (`pg::Leadership`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{watch, Notify};

use super::config::Storage;
use super::daily::{Case, Daily, Day};
use super::metrics::HqMetrics;
use super::pg::{Leadership, PgStore};
use super::record::IncomingBatch;
use super::stats::StatsReport;
use super::store::{RecordPage, RecordQuery};
use super::writer::{IngestOutcome, SledStore, Unavailable};

/// How often the follower looks for batches other receivers committed.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Longest a batch's answer waits for this receiver's cache to have it (it is committed
/// already; only the figures would lag).
const FOLLOW_WAIT: Duration = Duration::from_secs(5);
/// Records the follower reads at once.
const FOLLOW_PAGE: i64 = 20_000;
/// The cache's folder in `data_dir`.
const CACHE_DIR: &str = "pg-cache";
/// The file in the cache's folder naming the database and time zone it was built from.
const CACHE_MARK: &str = "built-from";

/// The HQ store, over sled or PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    /// With sled, the store; with PostgreSQL, the figures' cache.
    figures: SledStore,
    /// The PostgreSQL side, if that is the backend.
    postgres: Option<Arc<Postgres>>,
    /// Who runs scheduled jobs.
    leadership: Leadership,
}

/// The PostgreSQL side of a [`StoreHandle`].
struct Postgres {
    /// The records.
    store: PgStore,
    /// How far the cache got.
    followed: watch::Receiver<Followed>,
    /// Wakes the follower (a batch was just committed here).
    poke: Arc<Notify>,
    /// Why the follower stopped, if it did (the figures are frozen: `/healthz` says so).
    follower_failure: Arc<Mutex<Option<String>>>,
    /// This receiver's metric families (the cache counts into a detached set: it replays
    /// every receiver's records).
    metrics: HqMetrics,
    /// The follower task.
    follower: tokio::task::JoinHandle<()>,
}

/// How far a receiver's cache got.
#[derive(Debug, Clone, Copy, Default)]
struct Followed {
    /// The highest hq_seq it holds.
    seq: u64,
    /// Rounds of the follower begun so far (each reads the records, then the batch counts).
    started: u64,
    /// Rounds of the follower done so far.
    finished: u64,
    /// Whether a round has read everything committed when it looked (the figures are whole;
    /// until then the receiver does not evaluate alert rules).
    caught_up: bool,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl StoreHandle {
    /// Opens the sled store in `data_dir` (the default backend).
    pub(crate) async fn open(
        data_dir: &Path,
        timezone: chrono_tz::Tz,
        metrics: HqMetrics,
    ) -> anyhow::Result<StoreHandle> {
        Ok(StoreHandle {
            figures: SledStore::open(data_dir, timezone, metrics, true).await?,
            postgres: None,
            leadership: Leadership::alone(),
        })
    }

    /// Opens the configured backend.
    pub(crate) async fn open_storage(
        storage: &Storage,
        data_dir: &Path,
        timezone: chrono_tz::Tz,
        metrics: HqMetrics,
    ) -> anyhow::Result<StoreHandle> {
        let url = match storage {
            Storage::Sled => return StoreHandle::open(data_dir, timezone, metrics).await,
            Storage::Postgres { url, .. } => url,
        };
        let store = PgStore::open(url).await?;
        let committed = store
            .committed_seq()
            .await
            .context("cannot read the records' counter")?;
        let cache_dir = data_dir.join(CACHE_DIR);
        let mark = format!("{} {}", store.database_id(), timezone.name());
        let figures = open_cache(&cache_dir, &mark, committed, timezone, HqMetrics::new()).await?;
        metrics
            .stored_seq
            .set(i64::try_from(committed).unwrap_or(i64::MAX));
        let position = figures.stats().hq_seq;
        tracing::info!(
            cache = position,
            committed,
            "PostgreSQL storage open; the figures' cache follows the records"
        );
        let (followed_sender, followed) = watch::channel(Followed {
            seq: position,
            started: 0,
            finished: 0,
            caught_up: false,
        });
        let poke = Arc::new(Notify::new());
        let follower_failure = Arc::new(Mutex::new(None));
        let follower = tokio::spawn(follow(
            store.clone(),
            figures.clone(),
            followed_sender,
            poke.clone(),
            follower_failure.clone(),
        ));
        Ok(StoreHandle {
            figures,
            leadership: store.leadership().clone(),
            postgres: Some(Arc::new(Postgres {
                store,
                followed,
                poke,
                follower_failure,
                metrics,
                follower,
            })),
        })
    }

    /// Stores a validated batch; answers once it is durable (sled: fsynced; PostgreSQL:
    /// committed).
    pub(crate) async fn ingest(&self, batch: IncomingBatch) -> Result<IngestOutcome, Unavailable> {
        let Some(postgres) = &self.postgres else {
            return self.figures.ingest(batch).await;
        };
        let started = std::time::Instant::now();
        let (outcome, last) = postgres.store.ingest(&batch, chrono::Utc::now()).await?;
        let metrics = &postgres.metrics;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_stored(&batch.store, outcome.accepted, outcome.duplicates);
        // The highest hq_seq given out by this batch's commit (by any receiver).
        metrics.stored_seq.set(
            i64::try_from(last)
                .unwrap_or(i64::MAX)
                .max(metrics.stored_seq.get()),
        );
        // A round begun after the commit has it (the one running now may not): the poke
        // starts one at once, whether the follower waits or runs.
        let round = postgres.followed.borrow().started + 1;
        postgres.poke.notify_one();
        let mut followed = postgres.followed.clone();
        // Committed already: a slow cache only delays the figures, not the answer.
        let _ = tokio::time::timeout(
            FOLLOW_WAIT,
            followed.wait_for(|followed| followed.seq >= last && followed.finished >= round),
        )
        .await;
        Ok(outcome)
    }

    /// Reads one page of records (durable ones only).
    pub(crate) async fn read(&self, query: RecordQuery) -> anyhow::Result<RecordPage> {
        match &self.postgres {
            None => self.figures.read(query).await,
            Some(postgres) => postgres.store.read(&query).await,
        }
    }

    /// The `/v1/stats` figures.
    pub(crate) fn stats(&self) -> StatsReport {
        self.figures.stats()
    }

    /// The `/v1/stats` figures as a caller of limited scope sees them.
    pub(crate) fn stats_for(&self, view: impl Fn(&str) -> super::stats::StoreView) -> StatsReport {
        self.figures.stats_for(view)
    }

    /// Reads the daily figures under the statistics' lock: keep `read` short.
    pub(crate) fn daily<R>(&self, read: impl FnOnce(&Daily) -> R) -> R {
        self.figures.daily(read)
    }

    /// The consultation and attribution records of `store` on the store-local days `from` to
    /// `to` (`SledStore::cases`).
    pub(crate) async fn cases(&self, store: &str, from: Day, to: Day) -> anyhow::Result<Vec<Case>> {
        self.figures.cases(store, from, to).await
    }

    /// Whether HQ holds records of `kind` from `store` (from any store when `None`).
    pub(crate) fn holds_kind(&self, store: Option<&str>, kind: &str) -> bool {
        self.figures.holds_kind(store, kind)
    }

    /// Why batches cannot be stored now, if they cannot (sled: a failed write, for good;
    /// PostgreSQL: the database does not answer, until it does again).
    pub(crate) fn failure(&self) -> Option<String> {
        match &self.postgres {
            None => self.figures.failure(),
            Some(postgres) => postgres.store.failure().or_else(|| {
                postgres
                    .follower_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            }),
        }
    }

    /// Whether the records are in a database other receivers share (PostgreSQL), whose read
    /// errors are mostly passing (the database restarting, unreachable for a moment).
    pub(crate) fn is_shared(&self) -> bool {
        self.postgres.is_some()
    }

    /// The PostgreSQL store, if that is the backend.
    pub(crate) fn postgres(&self) -> Option<&PgStore> {
        self.postgres.as_ref().map(|postgres| &postgres.store)
    }

    /// Who runs the scheduled jobs and the management state.
    pub(crate) fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Whether this receiver runs the scheduled jobs (the alert evaluation) now.
    pub(crate) fn runs_jobs(&self) -> bool {
        // With PostgreSQL, not before the figures hold every record committed at start: rules
        // evaluated over part of the records would open wrong alerts.
        self.leadership.leading()
            && self
                .postgres
                .as_ref()
                .is_none_or(|postgres| postgres.followed.borrow().caught_up)
    }

    /// Drops this handle and waits until the sled database (the store or the cache) is closed,
    /// which happens once every other clone is dropped too.
    pub(crate) async fn close(self) {
        let StoreHandle {
            figures, postgres, ..
        } = self;
        if let Some(postgres) = postgres {
            if let Ok(postgres) = Arc::try_unwrap(postgres) {
                postgres.follower.abort();
                let follower = &mut { postgres }.follower;
                let _ = follower.await;
            }
        }
        figures.close().await;
    }
}

/// Opens the figures' cache in `dir`, made again when it was built from another database or
/// time zone (`mark`), or holds more than the database (restored from a backup).
async fn open_cache(
    dir: &Path,
    mark: &str,
    committed: u64,
    timezone: chrono_tz::Tz,
    metrics: HqMetrics,
) -> anyhow::Result<SledStore> {
    let mark_file = dir.join(CACHE_MARK);
    let built_from = std::fs::read_to_string(&mark_file).ok();
    if built_from.as_deref() != Some(mark) {
        remove_cache(dir)?;
    } else {
        let cache = SledStore::open(dir, timezone, metrics.clone(), false).await?;
        if cache.stats().hq_seq <= committed {
            return Ok(cache);
        }
        tracing::warn!("the figures' cache is ahead of PostgreSQL; making it again");
        cache.close().await;
        remove_cache(dir)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cache = SledStore::open(dir, timezone, metrics, false).await?;
    std::fs::write(&mark_file, mark)
        .with_context(|| format!("cannot write {}", mark_file.display()))?;
    Ok(cache)
}

fn remove_cache(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// The follower: replays what PostgreSQL committed after the cache's position into the
/// cache, in hq_seq order, one cache batch per run of records of one store received at one
/// instant (one posted batch, or several committed at the same microsecond).
async fn follow(
    store: PgStore,
    cache: SledStore,
    followed: watch::Sender<Followed>,
    poke: Arc<Notify>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut failing = false;
    loop {
        followed.send_modify(|followed| followed.started += 1);
        match follow_round(&store, &cache, &followed).await {
            Ok(more) => {
                failing = false;
                followed.send_modify(|followed| {
                    followed.finished = followed.started;
                    // This round read up to what was committed when it looked.
                    followed.caught_up |= !more;
                });
                if !more {
                    wait(&poke).await;
                }
            }
            Err(RoundError::Database(error)) => {
                if !failing {
                    tracing::warn!(error = %format!("{error:#}"), "cannot follow the records");
                    failing = true;
                }
                wait(&poke).await;
            }
            Err(RoundError::Cache(error)) => {
                tracing::error!(%error, "the figures' cache failed; figures stop here");
                *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("the figures' cache failed: {error}"));
                return;
            }
        }
    }
}

/// Why a round of the follower stopped short.
enum RoundError {
    /// PostgreSQL did not answer: the next round tries again.
    Database(anyhow::Error),
    /// The cache refused a batch: the follower stops (the figures are frozen).
    Cache(Unavailable),
}

/// One round: one page of records committed after the cache's position replayed into it,
/// then the batch counts. `Ok(true)` when the page was cut short (more may be waiting).
async fn follow_round(
    store: &PgStore,
    cache: &SledStore,
    followed: &watch::Sender<Followed>,
) -> Result<bool, RoundError> {
    let position = followed.borrow().seq;
    let page = store
        .follow(position, FOLLOW_PAGE)
        .await
        .map_err(RoundError::Database)?;
    let (rows, more) = (page.rows, page.more);
    let mut start = 0;
    while start < rows.len() {
        let (_, store_code, received_at, _) = &rows[start];
        let mut end = start + 1;
        while end < rows.len()
            && rows[end].1 == *store_code
            && rows[end].2 == *received_at
            && rows[end].0 == rows[end - 1].0 + 1
        {
            end += 1;
        }
        replay(cache, &rows[start..end])
            .await
            .map_err(RoundError::Cache)?;
        let last = rows[end - 1].0;
        followed.send_modify(|followed| followed.seq = last);
        start = end;
    }
    let counts = store.batch_counts().await.map_err(RoundError::Database)?;
    cache.set_batch_counts(counts);
    Ok(more)
}

/// Replays one run of records (one store, one instant, consecutive hq_seqs) into the cache as
/// one batch. A run with a line this version refuses (stored by another version, valid then)
/// is replayed line by line, and only the refused lines are left out of the figures.
async fn replay(cache: &SledStore, run: &[FollowedRow]) -> Result<(), Unavailable> {
    let (first_seq, store_code, received_at, _) = &run[0];
    let mut body = Vec::new();
    for (_, _, _, line) in run {
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
    }
    match super::record::parse_batch(body, store_code) {
        Ok(mut batch) => {
            batch.heard = Some(*received_at);
            batch.first_seq = Some(*first_seq);
            cache.ingest(batch).await.map(|_| ())
        }
        Err(_) => {
            for (seq, _, _, line) in run {
                match super::record::parse_batch(line.as_bytes().to_vec(), store_code) {
                    Ok(mut batch) => {
                        batch.heard = Some(*received_at);
                        batch.first_seq = Some(*seq);
                        cache.ingest(batch).await?;
                    }
                    Err(rejection) => tracing::error!(
                        ?rejection,
                        seq,
                        "a stored record is not valid now; left out of the figures"
                    ),
                }
            }
            Ok(())
        }
    }
}

/// One record as the follower reads it: hq_seq, store, received_at, line.
type FollowedRow = (u64, String, chrono::DateTime<chrono::Utc>, String);

/// Until poked, or [`FOLLOW_EVERY`].
async fn wait(poke: &Notify) {
    let _ = tokio::time::timeout(FOLLOW_EVERY, poke.notified()).await;
}
