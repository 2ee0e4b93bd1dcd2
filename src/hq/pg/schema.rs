//! The PostgreSQL schema: numbered migrations, applied at start in one transaction under an
//! advisory lock (two receivers starting at once: the second waits, then finds nothing to
//! do), and the DDL of the monthly record partitions. docs/postgres.md describes the tables
//! and views for BI users.

use anyhow::Context as _;

/// The schema version this code writes and reads.
pub(crate) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Migration `n` is `MIGRATIONS[n - 1]`; each runs once, in order, never edited once shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the records, the dedup ids, the counter and the database's id.
    "
    CREATE TABLE hq_meta (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    INSERT INTO hq_meta VALUES ('database_id', gen_random_uuid()::text);

    -- One row: the hq_seq the next stored record gets. Its row lock, held by a batch's
    -- transaction until commit, orders the numbers by commit.
    CREATE TABLE hq_counter (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        next_seq bigint NOT NULL
    );
    INSERT INTO hq_counter VALUES (true, 1);

    -- Every record id HQ holds (store/gateway/epoch/seq): dedup across receivers.
    CREATE TABLE record_ids (
        id text PRIMARY KEY
    );

    -- Batches accepted per store, by whichever receiver took them.
    CREATE TABLE store_counts (
        store text PRIMARY KEY,
        batches bigint NOT NULL,
        duplicates bigint NOT NULL,
        last_received_at timestamptz NOT NULL
    );

    -- Every record as received, partitioned by the month HQ received it in.
    CREATE TABLE records (
        hq_seq bigint NOT NULL,
        received_at timestamptz NOT NULL,
        id text NOT NULL,
        store text NOT NULL,
        kind text NOT NULL,
        ts timestamptz NOT NULL,
        line text NOT NULL
    ) PARTITION BY RANGE (received_at);
    CREATE INDEX records_hq_seq ON records (hq_seq);
    CREATE INDEX records_store_hq_seq ON records (store, hq_seq);
    ",
    // 2: typed views per record kind and daily figures per store, for BI tools.
    include_str!("views.sql"),
    // 3: the management state (alerts, deliveries, the fleet's versions and heartbeats).
    "
    -- The management database's trees, key by key, as the receiver running management last
    -- made them durable (hq::manage): values are the JSON or bytes the owners keep.
    CREATE TABLE manage_kv (
        tree text NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (tree, key)
    );
    COMMENT ON TABLE manage_kv IS
        'posgw HQ management state (alerts, notify_outbox, fleet trees), written by the receiver holding the jobs lock; not for BI use: read alerts through GET /v1/alerts.';
    ",
    // 4: dashboard login sessions, shared by the receivers.
    "
    CREATE TABLE sessions (
        id_hash text PRIMARY KEY,
        user_name text NOT NULL,
        expires_at timestamptz NOT NULL,
        ended_at timestamptz,
        changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX sessions_changed_at ON sessions (changed_at);
    COMMENT ON TABLE sessions IS
        'posgw HQ dashboard logins: the SHA-256 of each session id (never the id), its user, when it expires or ended. Every receiver learns new and ended sessions from here.';
    ",
];

/// The version the database holds; 0 when it has no posgw schema.
pub(crate) async fn current_version(client: &tokio_postgres::Client) -> anyhow::Result<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass('posgw_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM posgw_schema", &[])
        .await?
        .get(0);
    Ok(version.unwrap_or(0))
}

/// Applies the migrations the database lacks, in one transaction under [`super::MIGRATE_LOCK`].
/// Refuses a database whose schema is newer than this code.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    let transaction = client
        .transaction()
        .await
        .context("cannot start the migration")?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&super::MIGRATE_LOCK])
        .await
        .context("cannot take the migration lock")?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS posgw_schema (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .context("cannot make the schema table")?;
    let current: i32 = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM posgw_schema", &[])
        .await?
        .get(0);
    if current > SCHEMA_VERSION {
        anyhow::bail!(
            "the database's schema is version {current}, newer than this posgw's \
             ({SCHEMA_VERSION}): upgrade posgw"
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i32 + 1;
        transaction
            .batch_execute(sql)
            .await
            .map_err(|error| anyhow::anyhow!("{}", super::explain(&error)))
            .with_context(|| format!("cannot apply schema migration {version}"))?;
        transaction
            .execute(
                "INSERT INTO posgw_schema (version) VALUES ($1)",
                &[&version],
            )
            .await?;
        tracing::info!(version, "schema migration applied");
    }
    transaction
        .commit()
        .await
        .context("cannot commit the migrations")?;
    Ok(())
}

/// The partition of records received in month `index` (months since year 0, UTC).
pub(crate) fn partition_name(index: i32) -> String {
    format!("records_y{:04}m{:02}", index / 12, index % 12 + 1)
}

/// Makes the partition of month `index` unless it exists (the caller holds the partition lock).
pub(crate) fn partition_ddl(index: i32) -> String {
    let bound = |index: i32| format!("{:04}-{:02}-01 00:00:00+00", index / 12, index % 12 + 1);
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF records FOR VALUES FROM ('{}') TO ('{}')",
        partition_name(index),
        bound(index),
        bound(index + 1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_and_bounded_by_utc_month() {
        let december = 2026 * 12 + 11;
        assert_eq!(partition_name(december), "records_y2026m12");
        assert_eq!(
            partition_ddl(december),
            "CREATE TABLE IF NOT EXISTS records_y2026m12 PARTITION OF records FOR VALUES \
             FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        );
    }
}
