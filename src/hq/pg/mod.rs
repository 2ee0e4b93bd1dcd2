//! The PostgreSQL backend of the HQ record store (`[storage] backend = "postgres"`): the
//! connection pool, the schema and its migrations, one transaction per batch, the
//! `/v1/records` cursor, the database's health, and the lock that elects the receiver that
//! runs scheduled jobs.
//!
//! Any number of `posgw hq` receivers share one database. What makes that safe:
//!
//! - **Dedup across receivers.** Every record's `id` goes into `record_ids` (its primary key)
//!   with `ON CONFLICT DO NOTHING`; only the ids that went in are stored. A second receiver
//!   inserting the same id waits for the first one's transaction and then skips it.
//! - **A cursor that never skips.** hq_seq numbers come from the one row of `hq_counter`,
//!   updated inside the batch's transaction: its row lock is held until commit, so batches
//!   take numbers in the order they commit, and numbers are dense (a rolled-back batch gives
//!   its numbers back). A reader reads the counter and the records in one snapshot and never
//!   goes past the counter, so everything up to where it stopped was committed before it
//!   looked (`read`). A plain sequence would not do: a batch holding lower numbers could
//!   commit after a reader moved past them.
//! - **2xx after commit.** [`PgStore::ingest`] returns once `COMMIT` returned.
//! - **Jobs once.** The receiver holding the session-level advisory lock [`JOBS_LOCK`]
//!   evaluates alert rules; the others wait to take over (`leader`).
//!
//! Records are partitioned by the month (UTC) HQ received them in, so old months can be
//! detached (`ALTER TABLE records DETACH PARTITION records_y2025m01`); partitions are made
//! ahead, under an advisory lock, at start and whenever a batch reaches a new month.

mod leader;
mod schema;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::record::IncomingBatch;
use super::store::{RecordPage, RecordQuery, PAGE_MAX_BYTES};
use super::writer::{IngestOutcome, Unavailable};

pub(crate) use leader::Leadership;
pub(crate) use schema::SCHEMA_VERSION;

/// Connections each receiver keeps at most (batches in flight wait for one).
const POOL_SIZE: usize = 16;
/// How long a request waits for a pooled connection, or for a new one to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the health task asks the database whether it is there.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Most records one `/v1/records` request examines (as for sled).
const SCAN_BUDGET: i64 = 1_000_000;
/// Advisory lock key (`pg_advisory_lock`) serialising migrations ("posgwmig").
pub(crate) const MIGRATE_LOCK: i64 = 0x706f_7367_776d_6967;
/// Advisory lock key serialising the creation of partitions ("posgwprt").
const PARTITION_LOCK: i64 = 0x706f_7367_7770_7274;
/// Advisory lock key held by the receiver that runs scheduled jobs ("posgwjob").
pub(crate) const JOBS_LOCK: i64 = 0x706f_7367_776a_6f62;

/// Stores one batch: dedup on `record_ids`, hq_seq from `hq_counter` (its row lock is held
/// to commit), the new records into `records`, the store's batch counts. Parameters: ids,
/// kinds, ts (epoch ms), lines, received_at, store, records repeated within the batch.
/// Answers the number stored and the first hq_seq they got.
const INGEST: &str = "
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
        WITH ORDINALITY AS t(id, kind, t_ms, line, pos)
), fresh AS (
    INSERT INTO record_ids (id)
    SELECT id FROM incoming ORDER BY id
    ON CONFLICT DO NOTHING
    RETURNING id
), counter AS (
    UPDATE hq_counter SET next_seq = next_seq + (SELECT count(*) FROM fresh)
    RETURNING next_seq - (SELECT count(*) FROM fresh) AS first
), stored AS (
    INSERT INTO records (hq_seq, received_at, id, store, kind, ts, line)
    SELECT counter.first + row_number() OVER (ORDER BY incoming.pos) - 1, $5, incoming.id,
           $6, incoming.kind, to_timestamp(incoming.t_ms / 1000.0), incoming.line
    FROM incoming JOIN fresh USING (id) CROSS JOIN counter
    RETURNING 1
), counted AS (
    INSERT INTO store_counts (store, batches, duplicates, last_received_at)
    SELECT $6, 1, $7 + (SELECT count(*) FROM incoming) - (SELECT count(*) FROM fresh), $5
    ON CONFLICT (store) DO UPDATE SET
        batches = store_counts.batches + 1,
        duplicates = store_counts.duplicates + EXCLUDED.duplicates,
        last_received_at = greatest(store_counts.last_received_at, EXCLUDED.last_received_at)
)
SELECT (SELECT count(*) FROM stored), (SELECT first FROM counter)";

/// The database's state as this receiver last saw it.
#[derive(Default)]
struct Health {
    /// Why the database cannot be used now; `None` while it answers.
    failure: Mutex<Option<String>>,
}

impl Health {
    fn set(&self, failure: Option<String>) {
        let mut held = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() && failure.is_some() {
            tracing::error!(reason = failure.as_deref(), "PostgreSQL unreachable");
        } else if held.is_some() && failure.is_none() {
            tracing::info!("PostgreSQL reachable again");
        }
        *held = failure;
    }

    fn get(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The PostgreSQL record store of one receiver. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PgStore {
    /// Pooled connections.
    pool: Pool,
    /// Whether the database answers.
    health: Arc<Health>,
    /// The latest month (`year * 12 + month0`, UTC) whose partition is known to exist.
    partitions_until: Arc<AtomicI32>,
    /// The random id the database got when its schema was made (tells a cache which
    /// database it was built from).
    database_id: String,
    /// Who runs the scheduled jobs.
    leadership: Leadership,
}

/// A login session as the `sessions` table holds it.
pub(crate) struct SessionRow {
    /// SHA-256 of the session id, hex.
    pub hash: String,
    /// The user.
    pub user: String,
    /// When it expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Whether it was ended (logout).
    pub ended: bool,
    /// When it was made or ended.
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

/// Most bytes of record lines one page of the follower holds (one larger record still comes,
/// alone).
const FOLLOW_MAX_BYTES: usize = 8 * 1024 * 1024;

/// A page of committed records for the figures' cache.
#[derive(Debug, Default)]
pub(crate) struct FollowPage {
    /// (hq_seq, store, received_at, line), in hq_seq order.
    pub rows: Vec<(u64, String, chrono::DateTime<chrono::Utc>, String)>,
    /// Whether more may be waiting (the page was cut by its row or byte limit).
    pub more: bool,
}

/// What `posgw hq check-config` reports of the database.
pub(crate) struct Versions {
    /// `SHOW server_version`.
    pub server: String,
    /// The schema version the database holds (0: none yet).
    pub schema: i32,
    /// `user@host:port/database`, no password.
    pub database: String,
}

impl PgStore {
    /// Connects, applies the migrations this code needs (once, whoever else starts at the same
    /// time), makes this month's and next month's partitions, and starts the health and
    /// leadership tasks.
    pub(crate) async fn open(url: &str) -> anyhow::Result<PgStore> {
        let pool = pool(url)?;
        let mut client = pool.get().await.map_err(|error| {
            anyhow::anyhow!("cannot connect to PostgreSQL: {}", explain(&error))
        })?;
        schema::migrate(&mut client).await?;
        let database_id: String = client
            .query_one("SELECT value FROM hq_meta WHERE key = 'database_id'", &[])
            .await
            .context("cannot read the database id")?
            .get(0);
        drop(client);
        let store = PgStore {
            pool,
            health: Arc::new(Health::default()),
            partitions_until: Arc::new(AtomicI32::new(i32::MIN)),
            database_id,
            leadership: Leadership::start(url)?,
        };
        store.ensure_partitions(chrono::Utc::now()).await?;
        tokio::spawn(health_loop(
            store.pool.clone(),
            Arc::downgrade(&store.health),
        ));
        Ok(store)
    }

    /// A pooled connection.
    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|error| anyhow::anyhow!("cannot connect to PostgreSQL: {}", explain(&error)))
    }

    /// The id the database got when its schema was made.
    pub(crate) fn database_id(&self) -> &str {
        &self.database_id
    }

    /// Who runs the scheduled jobs.
    pub(crate) fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Why the database cannot be used now, if it cannot.
    pub(crate) fn failure(&self) -> Option<String> {
        self.health.get()
    }

    /// Stores `batch` in one transaction; answers after `COMMIT`, with the outcome and the
    /// highest hq_seq given out by then (this batch's last, when it stored any).
    pub(crate) async fn ingest(
        &self,
        batch: &IncomingBatch,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(IngestOutcome, u64), Unavailable> {
        // A failed batch (a full pool under load, a lock wait) does not make the receiver
        // unhealthy: that is the health check's to say, every second.
        let result = self.try_ingest(batch, received_at).await;
        if result.is_ok() {
            self.health.set(None);
        }
        result
    }

    async fn try_ingest(
        &self,
        batch: &IncomingBatch,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(IngestOutcome, u64), Unavailable> {
        // Records repeated within the batch are duplicates before the database sees them.
        let mut seen = std::collections::HashSet::with_capacity(batch.records.len());
        let (mut ids, mut kinds, mut times, mut lines) = (vec![], vec![], vec![], vec![]);
        for record in &batch.records {
            if !seen.insert((record.stream, record.seq)) {
                continue;
            }
            let line = std::str::from_utf8(&batch.body[record.line.clone()])
                .map_err(|_| Unavailable("a record line is not UTF-8".to_string()))?;
            ids.push(format!("{}/{}", batch.streams[record.stream], record.seq));
            kinds.push(batch.kinds[record.kind].as_str());
            times.push(record.t);
            lines.push(line.trim_ascii_end());
        }
        // The month after this batch's is made ahead, by the first batch of each month.
        if month_index(received_at) + 1 > self.partitions_until.load(Ordering::Acquire) {
            self.ensure_partitions(received_at)
                .await
                .map_err(|error| Unavailable(format!("{error:#}")))?;
        }
        let repeated = i64::try_from(batch.records.len() - ids.len()).unwrap_or(0);
        let mut client = self.pool.get().await.map_err(|error| {
            Unavailable(format!("cannot connect to PostgreSQL: {}", explain(&error)))
        })?;
        let unavailable =
            |error: tokio_postgres::Error| Unavailable(format!("PostgreSQL: {}", explain(&error)));
        let transaction = client.transaction().await.map_err(unavailable)?;
        let statement = transaction
            .prepare_cached(INGEST)
            .await
            .map_err(unavailable)?;
        let row = transaction
            .query_one(
                &statement,
                &[
                    &ids,
                    &kinds,
                    &times,
                    &lines,
                    &received_at,
                    &batch.store,
                    &repeated,
                ],
            )
            .await
            .map_err(unavailable)?;
        transaction.commit().await.map_err(unavailable)?;
        let stored: i64 = row.get(0);
        let first: i64 = row.get(1);
        let accepted = usize::try_from(stored).unwrap_or(0);
        Ok((
            IngestOutcome {
                accepted,
                duplicates: batch.records.len() - accepted,
            },
            u64::try_from(first + stored - 1).unwrap_or(0),
        ))
    }

    /// Makes the partitions of `at`'s month and the next one, unless known to exist.
    async fn ensure_partitions(&self, at: chrono::DateTime<chrono::Utc>) -> anyhow::Result<()> {
        let month = month_index(at);
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await?;
        for index in [month, month + 1] {
            transaction
                .batch_execute(&schema::partition_ddl(index))
                .await
                .with_context(|| {
                    format!(
                        "cannot make the partition {}",
                        schema::partition_name(index)
                    )
                })?;
        }
        transaction.commit().await?;
        self.partitions_until.fetch_max(month + 1, Ordering::AcqRel);
        Ok(())
    }

    /// The highest hq_seq committed.
    pub(crate) async fn committed_seq(&self) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT next_seq - 1 FROM hq_counter", &[])
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// One page of `/v1/records`: the counter and the records are read in one snapshot, and
    /// nothing past the counter is read, so no record the page steps over can commit later.
    pub(crate) async fn read(&self, query: &RecordQuery) -> anyhow::Result<RecordPage> {
        let mut client = self.client().await?;
        let transaction = snapshot(&mut client).await?;
        let top: i64 = transaction
            .query_one("SELECT next_seq - 1 FROM hq_counter", &[])
            .await?
            .get(0);
        let after = i64::try_from(query.after).unwrap_or(i64::MAX);
        let until = top.min(after.saturating_add(SCAN_BUDGET));
        let mut page = RecordPage {
            next_after: query.after,
            ..RecordPage::default()
        };
        if until <= after {
            return Ok(page);
        }
        let within: Option<Vec<&str>> = query
            .within
            .as_ref()
            .map(|stores| stores.iter().map(String::as_str).collect());
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = transaction
            .query(
                "SELECT hq_seq, line FROM records
                 WHERE hq_seq > $1 AND hq_seq <= $2
                   AND ($3::text IS NULL OR store = $3)
                   AND ($4::text IS NULL OR kind = $4)
                   AND ($5::text[] IS NULL OR store = ANY($5))
                 ORDER BY hq_seq LIMIT $6",
                &[&after, &until, &query.store, &query.kind, &within, &limit],
            )
            .await?;
        transaction.commit().await?;
        let full = rows.len() == query.limit;
        for row in &rows {
            let seq = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            let line: &str = row.get(1);
            // `next_after` stays before this record, so the next page starts with it.
            if page.count > 0 && page.body.len() + line.len() + 31 > PAGE_MAX_BYTES {
                return Ok(page);
            }
            super::store::write_with_hq_seq(&mut page.body, line.as_bytes(), seq);
            page.count += 1;
            page.next_after = seq;
        }
        if !full {
            // Every record up to `until` was examined.
            page.next_after = u64::try_from(until).unwrap_or(0);
        }
        Ok(page)
    }

    /// Writes the management changes (the last value of each key; `None`: removed) in one
    /// transaction.
    pub(crate) async fn write_manage(
        &self,
        epoch: i64,
        changes: &std::collections::BTreeMap<(&str, &[u8]), Option<&[u8]>>,
    ) -> anyhow::Result<()> {
        let (mut put_trees, mut put_keys, mut put_values) = (vec![], vec![], vec![]);
        let (mut gone_trees, mut gone_keys) = (vec![], vec![]);
        for ((tree, key), value) in changes {
            match value {
                Some(value) => {
                    put_trees.push(*tree);
                    put_keys.push(*key);
                    put_values.push(*value);
                }
                None => {
                    gone_trees.push(*tree);
                    gone_keys.push(*key);
                }
            }
        }
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        // Fenced: a receiver that lost the management lock (another took over, with a later
        // epoch) writes nothing more, whatever it still had to flush.
        let current: i64 = transaction
            .query_one(
                "SELECT value::bigint FROM hq_meta WHERE key = 'manage_epoch' FOR SHARE",
                &[],
            )
            .await?
            .get(0);
        if current != epoch {
            anyhow::bail!(
                "another receiver runs the management now (epoch {current}, this one's {epoch})"
            );
        }
        if !gone_keys.is_empty() {
            transaction
                .execute(
                    "DELETE FROM manage_kv WHERE (tree, key) IN \
                     (SELECT * FROM unnest($1::text[], $2::bytea[]))",
                    &[&gone_trees, &gone_keys],
                )
                .await?;
        }
        if !put_keys.is_empty() {
            transaction
                .execute(
                    "INSERT INTO manage_kv (tree, key, value) \
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                     ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value",
                    &[&put_trees, &put_keys, &put_values],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Starts a new management epoch (a receiver takes over): its number. Writes of earlier
    /// epochs are refused from now on.
    pub(crate) async fn next_manage_epoch(&self) -> anyhow::Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO hq_meta (key, value) VALUES ('manage_epoch', '1') \
                 ON CONFLICT (key) DO UPDATE SET value = (hq_meta.value::bigint + 1)::text \
                 RETURNING value::bigint",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Every management key: (tree, key, value).
    pub(crate) async fn read_manage(&self) -> anyhow::Result<Vec<(String, Vec<u8>, Vec<u8>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT tree, key, value FROM manage_kv ORDER BY tree, key",
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    /// Records a login session (`sessions`): the hash of its id, its user, its expiry.
    pub(crate) async fn save_session(
        &self,
        hash: &str,
        user: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO sessions (id_hash, user_name, expires_at) VALUES ($1, $2, $3)",
                &[&hash, &user, &expires_at],
            )
            .await?;
        // Sessions long expired are of no use to anyone.
        client
            .execute(
                "DELETE FROM sessions WHERE expires_at < now() - interval '1 day'",
                &[],
            )
            .await?;
        Ok(())
    }

    /// Ends a login session for every receiver.
    pub(crate) async fn end_session(&self, hash: &str) -> anyhow::Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE sessions SET ended_at = now(), changed_at = clock_timestamp() \
                 WHERE id_hash = $1",
                &[&hash],
            )
            .await?;
        Ok(())
    }

    /// Sessions made or ended at `since` or later: (hash, user, expires_at, ended, changed_at).
    pub(crate) async fn sessions_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Vec<SessionRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id_hash, user_name, expires_at, ended_at IS NOT NULL, changed_at \
                 FROM sessions WHERE changed_at >= $1 ORDER BY changed_at",
                &[&since],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| SessionRow {
                hash: row.get(0),
                user: row.get(1),
                expires_at: row.get(2),
                ended: row.get(3),
                changed_at: row.get(4),
            })
            .collect())
    }

    /// Every store's batch counts (`store_counts`).
    pub(crate) async fn batch_counts(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<String, super::stats::BatchCounts>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT store, batches, duplicates, last_received_at FROM store_counts",
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let at: chrono::DateTime<chrono::Utc> = row.get(3);
                (
                    row.get(0),
                    super::stats::BatchCounts {
                        batches: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                        duplicates: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                        last_received_at: Some(
                            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        ),
                    },
                )
            })
            .collect())
    }

    /// The records committed after `after`, in hq_seq order, at most `limit`: (hq_seq, store,
    /// received_at, line), for the figures' cache.
    pub(crate) async fn follow(&self, after: u64, limit: i64) -> anyhow::Result<FollowPage> {
        use futures_util::TryStreamExt as _;
        let mut client = self.client().await?;
        let transaction = snapshot(&mut client).await?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&after, &limit];
        let stream = transaction
            .query_raw(
                "SELECT hq_seq, store, received_at, line FROM records
                 WHERE hq_seq > $1 AND hq_seq <= (SELECT next_seq - 1 FROM hq_counter)
                 ORDER BY hq_seq LIMIT $2",
                params,
            )
            .await?;
        // Boxed, so that it can be dropped before the commit: the connection then discards
        // the rest of the answer instead of queueing it for a reader that is gone.
        let mut stream = Box::pin(stream);
        let mut page = FollowPage::default();
        let mut bytes = 0;
        // Rows are taken as they come, up to FOLLOW_MAX_BYTES of lines (a page of big
        // records is never held whole); the rest of the answer is dropped unread.
        while let Some(row) = stream.try_next().await? {
            let line: String = row.get(3);
            bytes += line.len();
            page.rows.push((
                u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                row.get(1),
                row.get(2),
                line,
            ));
            if bytes >= FOLLOW_MAX_BYTES {
                page.more = true;
                break;
            }
        }
        drop(stream);
        page.more |= page.rows.len() as i64 == limit;
        transaction.commit().await?;
        Ok(page)
    }
}

/// A read-only transaction whose statements all see one snapshot (the counter and the records
/// read in it agree).
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// `posgw hq check-config`: connects, reads the server's version and the schema's, changes
/// nothing.
pub(crate) async fn versions(url: &str) -> anyhow::Result<Versions> {
    let pool = pool(url)?;
    let client = pool
        .get()
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to PostgreSQL: {}", explain(&error)))?;
    let server: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let row = client
        .query_one(
            "SELECT current_user::text, coalesce(host(inet_server_addr()), 'socket'), \
             coalesce(inet_server_port(), 0), current_database()::text",
            &[],
        )
        .await?;
    let database = format!(
        "{}@{}:{}/{}",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, i32>(2),
        row.get::<_, String>(3)
    );
    let schema = schema::current_version(&client).await?;
    Ok(Versions {
        server,
        schema,
        database,
    })
}

/// A pool for `url`; TLS as the URL's `sslmode` asks (`prefer` by default, `require`,
/// `disable`), with the system's root certificates.
fn pool(url: &str) -> anyhow::Result<Pool> {
    let mut config: tokio_postgres::Config = url.parse().context("not a PostgreSQL URL")?;
    harden(&mut config, "posgw-hq");
    let manager = Manager::from_config(
        config,
        tls()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot make the PostgreSQL connection pool")
}

/// Session settings of every HQ connection, after any the URL sets.
///
/// - `jit=off`: JIT compiling the batch statement (its row estimates pass jit_above_cost)
///   took more CPU than running it: measured, about 100 ms of LLVM per 1000-record batch.
/// - `idle_in_transaction_session_timeout`, `lock_timeout`: a receiver that dies between its
///   batch statement and `COMMIT` holds the counter's row lock; the server ends its session
///   after 30 s instead of letting every batch of every receiver queue behind it for the
///   hours TCP takes to notice, and a batch waits at most 10 s for the lock (then 503).
/// - server and client keepalives: a receiver or a database gone without a word is noticed
///   within about 15 s (its advisory locks released, its pooled connections dropped).
pub(crate) fn harden(config: &mut tokio_postgres::Config, application: &str) {
    let ours = "-c jit=off -c idle_in_transaction_session_timeout=30s -c lock_timeout=10s \
                -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=5";
    let options = match config.get_options() {
        Some(options) => format!("{options} {ours}"),
        None => ours.to_string(),
    };
    config
        .options(&options)
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(5)
        .application_name(application);
}

/// The TLS connector: rustls with ring and the system's root certificates.
pub(crate) fn tls() -> anyhow::Result<MakeRustlsConnect> {
    // No roots is no error here: `sslmode=prefer` (the default) then talks plain.
    let config = crate::mqtt::client_tls_config(crate::mqtt::system_roots())?;
    Ok(MakeRustlsConnect::new(config))
}

/// An error with its causes on one line (tokio-postgres keeps the server's message in the
/// source).
pub(crate) fn explain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Months since year 0 (UTC), the partitions' unit.
fn month_index(at: chrono::DateTime<chrono::Utc>) -> i32 {
    use chrono::Datelike as _;
    at.year() * 12 + i32::try_from(at.month0()).unwrap_or(0)
}

/// Asks the database every [`HEALTH_EVERY`] whether it answers, until the store is dropped.
async fn health_loop(pool: Pool, health: std::sync::Weak<Health>) {
    let mut timer = tokio::time::interval(HEALTH_EVERY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let Some(health) = health.upgrade() else {
            return;
        };
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let client = pool
                .get()
                .await
                .map_err(|error| format!("cannot connect to PostgreSQL: {}", explain(&error)))?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|error| format!("PostgreSQL: {}", explain(&error)))
        })
        .await;
        match answer {
            Ok(Ok(_)) => health.set(None),
            Ok(Err(reason)) => health.set(Some(reason)),
            Err(_) => health.set(Some("PostgreSQL does not answer".to_string())),
        }
    }
}
