//! The reference HQ receiver (`posgw hq`, docs/hq-protocol.md): takes record batches
//! from store gateways over HTTP, stores them durably (in sled, or in PostgreSQL shared by
//! several receivers: `storage`, `pg`), deduplicates on `id`, and serves records and campaign
//! figures to HQ analysts. This module doc is its design doc (the sled layout below; the
//! PostgreSQL backend's design is in the module docs of `storage`, `pg` and `manage`).
//!
//! # Promise
//!
//! A 2xx to `POST /v1/batches` means every record of the body is on disk (fsynced), once:
//! a `kill -9` or power cut at any moment never loses a batch that got a 2xx, and never leaves
//! part of a batch visible. A refused request stores nothing.
//!
//! # Endpoints
//!
//! | request | who | answer |
//! |---|---|---|
//! | `POST /v1/batches` | a store's token | `{"accepted":N,"duplicates":M}` |
//! | `GET /v1/records?store=&kind=&after=&limit=` | a reader | NDJSON, each record plus `"hq_seq"` |
//! | `GET /v1/stats` | a reader | JSON figures, below |
//! | `GET /v1/trace?receipt=&store=&hq_seq=` | a reader | a sale traced to its attributions, scans and consultation (`dashboard`) |
//! | `GET /v1/yardsticks?region=&store=&from=&to=` | a reader | the three yardsticks per chain, region, store and clerk over store-local days (`yardsticks`, "Daily figures") |
//! | `GET /v1/alerts?state=&region=` | a reader | the alerts of its stores, per-region counts (`alerts`) |
//! | `GET /v1/alerts/{id}` | a reader | one alert in scope, with each target's delivery state |
//! | `POST /v1/alerts/evaluate` | an admin | runs every rule now: the alerts opened |
//! | `POST /v1/alerts/{id}/ack` `{"note"?}`, `…/resolve` `{"action"}` | a reader in scope | the alert; 409 done before; 422 no action |
//! | `GET /v1/me` | a reader | `{"name","role","region"?,"store"?}` |
//! | `POST /v1/login` `{"name","password"}` | anyone | 200 and a session cookie; 401; 429 |
//! | `POST /v1/logout` | anyone | 204, the cookie's session ended |
//! | `GET /`, `GET /login`, `GET /assets/{dashboard,common,flows,manage,fleet,login}.js`, `GET /assets/dashboard.css` | anyone | the HQ dashboard and login page (their data needs a reader) |
//! | `GET /v1/fleet/{store}/config`, `POST /v1/fleet/{store}/heartbeat` | the store's token | its configuration (ETag, 304), 204 (`fleet`) |
//! | `GET /v1/fleet` | admin, region users | the stores in scope: last heartbeat, online, version, devices, backlog (`fleet`) |
//! | `GET /v1/fleet/editor`, `PUT`/`DELETE /v1/fleet/{campaigns,flows}/{id}` | admin | the editor (`fleet`) |
//! | `GET /healthz` | anyone | `ok`, or 503 with the reason writes stopped |
//! | `GET /healthz/manage` | anyone | `ok` where the alerts and the fleet run now (with sled: always); 503 elsewhere (`manage`) |
//! | `GET /metrics` | anyone | OpenMetrics text, `posgw_hq_*` |
//!
//! `POST /v1/batches` checks, in this order (the first failure answers):
//! 1. `Authorization: Bearer TOKEN` names a configured store: else **401** (with
//!    `WWW-Authenticate`); the admin token gets **403** (it may read, not post);
//! 2. `Content-Type` is `application/x-ndjson` (parameters allowed) and `Content-Encoding` is
//!    absent, `identity`, `gzip` or `zstd`: else **415**;
//! 3. the body is at most `max_body` bytes as sent (`Content-Length`, then while reading) and
//!    at most `max_body` bytes once decompressed, read through a `take(max_body + 1)` so a
//!    decompression bomb costs no more than that: else **413**;
//!    Bodies also count against `body_budget` (`budget`; default four times `max_body`):
//!    the bytes of bodies held at once, as sent, decompressed and parsed. A request that
//!    finds no room within 5 s gets **503** with `Retry-After` (the gateway retries), so
//!    200 stores posting 16 MB at once cost the budget, not 200 bodies;
//! 4. every line is a valid record (rules in `record`) of the token's store: else **400**
//!    (`{"error":"line 3: missing field 'seq'","line":3}`) or **403** (`"line"` too) for the
//!    first bad line; a body that cannot be decompressed is a 400 without `line`;
//! 5. the batch is stored and fsynced: **200**; if the database failed, **503** with
//!    `Retry-After` (the gateway retries).
//!
//! Duplicates are records whose `id` HQ already holds, or that appear twice in the batch;
//! they count in `duplicates` and are not stored again. An empty body is a batch of nothing.
//!
//! `GET /v1/records`: records in HQ arrival order (`hq_seq`, 1, 2, 3, ... with no gaps over
//! all stores), `after` (default 0) exclusive, `limit` 1 to 10000 (default 1000), `store` and
//! `kind` optional filters (an empty value means no filter), unknown parameters are a 400.
//! Each line is the record's bytes as received with `,"hq_seq":N` inserted before the final
//! `}` (nothing else re-encoded). Only durable records are served: a record not yet fsynced
//! could vanish in a crash and its hq_seq be reused. A page also ends before the record that
//! would take it past 4 MiB (a single larger record comes alone), so a page of large sales
//! costs the receiver a few MiB, not `limit` times `max_body`. The `posgw-next-after`
//! response header gives the `after` of the next page: the last hq_seq examined, which runs
//! ahead of the last returned record when a filter skips records (one request examines at
//! most 1,000,000 records, so a rare filter cannot tie up the server; keep paging until a page
//! is empty and `posgw-next-after` stops moving). Store and reader tokens are distinct: a
//! store token gets 401 on the read endpoints. Readers see only their scope ("Access").
//!
//! # `/v1/stats`
//!
//! ```json
//! {
//!   "generated_at": "2026-11-27T08:30:00.000Z",
//!   "hq_seq": 1234,                      // figures include every record up to this hq_seq
//!   "records": 1234,                     // over all stores
//!   "stores": {
//!     "WZ-LC-001": {
//!       "records": 1200, "duplicates": 17, "batches": 40,
//!       "by_kind": {"attribution": 60, "gateway": 2, "sale": 300, "scan": 838},
//!       "last_record_ts": "2026-11-27T16:01:02.345+08:00",   // latest record ts, by instant
//!       "last_received_at": "2026-11-27T08:29:58.120Z",     // HQ clock, last accepted batch
//!       "campaigns": { "xinsong-2026q4": CAMPAIGN },
//!       "flows": { "rx-5step": FLOW }
//!     }
//!   },
//!   "campaigns": { "xinsong-2026q4": CAMPAIGN },            // the same over all stores
//!   "flows": { "rx-5step": FLOW }                           // the same over all stores
//! }
//! CAMPAIGN = {
//!   "question": "推荐话术来源",            // latest seen, or null
//!   "opened": 60,                         // attribution records
//!   "outcomes": {"answered": 45, "timeout": 10, "skipped": 5},
//!   "completeness": 0.75,                 // answered / opened
//!   "answers": {"doctor": 20, "poster": 15, "referral": 10},
//!   "answer_labels": {"doctor": "医生推荐", ...},
//!   "median_latency_ms": 5400.0,          // answered only; mean of the middle two when even;
//!                                         //   null when no answered prompt has a latency
//!   "stations": {"till-1": {"opened": 40, "outcomes": {...}, "completeness": 0.8}},
//!   "clerks":   {"c-17":   {"opened": 30, "outcomes": {...}, "completeness": 0.9}}
//! }
//! ```
//! Every prompt produces exactly one attribution record (its resolution), so "opened" counts
//! attribution records. Clerk breakdowns only hold prompts whose record names a clerk
//! (timeouts usually do not).
//!
//! ```json
//! FLOW = {
//!   "consultations": 10,                  // consultation records (one per closed consultation)
//!   "outcomes": {"completed": 4, "incomplete": 3, "abandoned": 3},
//!   "completeness": 0.62,                 // steps done / steps of all consultations
//!   "steps": [                            // in the flow's order
//!     {"key": "symptoms", "label": "症状记录",
//!      "consultations": 10,               // records with this step: done + skipped + missing
//!      "done": 4, "skipped": 3, "missing": 3,
//!      "completeness": 0.4,               // done / consultations
//!      "skip_reasons": {"客户明确拒绝": 2, "紧急情况": 1}},
//!     ...],
//!   "clerks": {"c-17": {"consultations": 6, "outcomes": {...}, "completeness": 0.5,
//!                       "steps": [...]}},  // by the clerk who opened the consultation
//!   "held": {"steps":   {"consultations": 5, "median_held_ms": 41000.0},
//!            "timeout": {"consultations": 1, "median_held_ms": 120000.0}}
//! }
//! ```
//! Completeness is the chain's 过程数据完整率, required fields filled ÷ required fields: in a
//! consultation record each step is done (`at` set, not skipped), skipped (`skipped` holds the
//! reason) or missing (`at` null), and only done counts as filled. A step's denominator is the
//! consultations whose record has it (a step added to the flow later is not counted missing in
//! consultations from before). A consultation counts for the clerk who opened it (`data.clerk`),
//! every step included: a missing step has no clerk of its own, and it is the opener's
//! checklist; consultations without a clerk are only in the flow's figures. `held` counts the
//! consultations whose held scan went on, by `released_by`, with the median `held_ms` (mean of
//! the middle two when even; null when none says). `consultation_step` records (the steps
//! while open) are stored and counted by kind but not in these figures: the closing record
//! holds every step's last state.
//!
//! # On-disk layout
//!
//! ```text
//! data_dir/
//!   manage/                 the management database (sled, 4 MiB cache): tree "fleet" (`fleet::db`)
//!   hq/                     the sled 0.34 database; one tree "hq", keys by one-byte prefix:
//!     M "format"            "1"
//!     M "next_seq"          u64 BE: hq_seq of the next stored record
//!     M "consultations_summarised"  "1": every consultation record has its C summary
//!     R first_seq           a chunk: records first_seq, first_seq+1, ... of one batch
//!     R first_seq piece     u32 BE from 1: the 2nd, 3rd, ... 32 KiB piece of a longer chunk
//!     S store 0 first_seq   u64 BE last_seq: one entry per batch with new records
//!     D stream 0 start      u64 BE end: seqs start..=end of stream store/gateway/epoch held
//!     A store 0 t hq_seq    attribution summary (compact JSON) of that record
//!     C store 0 t hq_seq    consultation summary (compact JSON): its steps done/skipped/missing
//!     T store               the store's totals (JSON), as in /v1/stats
//!     M "summaries"         "3": every A, C, L, W summary has today's form and key, E Y built
//!     M "timezone"          the [hq] timezone the Y days were counted in
//!     L hq_seq              traced sale summary (compact JSON), `tr` set
//!     E store 0 link        evidence (compact JSON: kind, clerk, hq_seq) held for a link key
//!     W store 0 link 0 hq_seq   summary of that tracked sale, waiting for evidence under link
//!     Y store 0 day         20 bytes: records, backlog_max_minutes (u64), heard_hours (u32)
//! ```
//! (`first_seq`, `start`, `hq_seq` are u64 big-endian, so keys sort by number; `t` is the
//! record's `ts` in epoch ms as u64 big-endian with the sign bit flipped, `day` a store-local
//! day in `[hq] timezone` as days from 0001-01-01, u32 big-endian; a `link` is `c` + a
//! consultation id, `r` + a receipt or `p` + a prompt id, see `join`.)
//!
//! A chunk value is `[store_len u8][store]` then, per record, `[kind_len u8][kind]
//! [line_len u32 LE][line]`, the line being the record's bytes exactly as received. Records
//! go into chunks of at most 64 records or 32 KiB, because sled's cost is per key: one key per
//! record measured ~110k records/s on the 2-core test machine, chunks of 50 to 100 records
//! 400k to 500k records/s (a whole 500 KB batch as one value is slower again: sled stores big
//! values as separate blob files). A chunk longer than 32 KiB (a single record longer than
//! that) is written in 32 KiB pieces: sled keeps values above about 128 KiB in memory for
//! good, whatever its cache size (measured: RSS grew by every MB of such records written).
//!
//! # Daily figures (`daily`, `join`, `yardsticks`)
//!
//! The alert rules and `/v1/yardsticks` read figures per store and store-local day (in `[hq]
//! timezone`), never records: 127 stores × 90 days (~30M records) must evaluate every rule in
//! 2 s and answer a dashboard in 200 ms. A record counts in the day of its own `ts`, so a late
//! batch lands in the days its records were made. What feeds them:
//! - the summaries, which carry the record's instant (`t`, epoch ms, and `z`, its offset) and
//!   what the rules read: an attribution's prompt, `opened_at`, receipt; a consultation's id,
//!   `opened_at`, customer reference, receipt and each step's `value`/`values`; and a new one
//!   for each *tracked* sale (a line naming a `prompt`, `flow` or `campaign`, or the sale a
//!   `consultation`): store, time, receipt, clerk, its link keys and whether it is traced
//!   (under `W` while it waits for evidence, under `L` once traced);
//! - `Y` per store-day: records (by `ts`), the longest backlog (HQ's receive time minus `ts`,
//!   whole minutes, at least 0), and the hours of the day (HQ's clock) a batch was accepted;
//! - the traceability join (`join`): a tracked sale is *traced* once HQ holds evidence of its
//!   first contact, handler and conversation (a consultation with `opened_at` and a step done,
//!   its clerk or else the sale's as handler; or an answered attribution with `opened_at` and
//!   a clerk) under one of its link keys. Sales and evidence each wait for the other in sled
//!   (`E`, `W`), so arrival order does not matter; the writer reads one `E` per link key of a
//!   tracked sale and scans one `W` prefix per link key of an evidence record.
//!
//! The writer thread writes all of it into the batch's one `sled::Batch` (the records of a
//! batch see each other through the join's overlays); the flusher updates [`daily::Daily`]
//! (inside the statistics' aggregates) after the fsync, as for `/v1/stats`, re-counting a sale
//! of an earlier batch that this one traced. At start `Daily` is rebuilt from `Y`, `A`, `C`,
//! `L` and `W`, never from records, but once: a database of an older HQ (no `M summaries`), or
//! whose days were counted in another time zone, is re-summarised from its records at the
//! first start (`store::resummarise`: every chunk read once; the backlog and hours heard of
//! days before cannot be known again and stay 0). `StoreHandle::daily` reads the figures
//! under the aggregates' lock; `StoreHandle::cases` lists a store's consultation and
//! attribution records of a range of days, two range reads of `A` and `C` (keyed by store and
//! time for that: an index key per record cost 1 us of CPU per record at ingest), at most
//! 10,000 in ts order, for the failing cases an alert lists.
//!
//! Measured on a release build with 127 stores × 90 busy days and 1,016 clerks in `Daily`:
//! `/v1/yardsticks` over the 90 days answers in 58 ms for an admin (13 ms of it under the
//! lock, 1.2 MB of JSON), 17 ms for a region user; over 30 days 14 ms and 7 ms.
//!
//! # Memory
//!
//! Bodies in flight are bounded by `body_budget`; a `/v1/records` page by 4 MiB (plus one
//! record); sled's cache is 32 MiB (its default, 1 GiB, made memory grow with every record
//! stored). What else grows is per stream (its seq ranges), per store, per campaign and per
//! flow (their stations, clerks, steps, options and skip reasons), not per record, but for 8
//! bytes per answered prompt and per held scan (for exact medians). `Daily` grows per
//! store-day with that day's flows, steps, values, campaigns and clerks, and keeps each store's
//! last 400 days: measured with a counting allocator, a busy store-day (30 consultations of 2
//! flows × 5 steps with values and skip reasons, 30 prompts of 2 campaigns, 30 tracked sales,
//! 8 clerks) holds 11.2 KB (13.7 KB of RSS), so 127 stores × 90 days 128 MB (150 MB RSS);
//! most of it is B-tree nodes (about 370 bytes for a map's first entry) of the steps' values
//! and skip reasons. Measured on a debug build: RSS 279 MB after 200 MiB of 1 MiB records and 356 MB
//! after 800 MiB (sled's own working set settles at about 200 MB with 32 KiB values); before,
//! 301 MB and 902 MB.
//!
//! # Atomicity and durability
//!
//! Everything one batch changes (chunks, the store index entry, dedup ranges, the summaries,
//! the join's `E`, `W`, `L`, the day counters, the store's totals, `next_seq`) is one
//! sled `Batch` on the one tree, which sled
//! applies atomically, also across a crash: after a restart a batch is either all there or
//! not at all. The answer is sent only after a `Db::flush` (fsync) that started after the
//! batch was applied. sled's own timed flushing is off; the flusher thread alone decides.
//!
//! Group commit (`writer`): one writer thread applies batches as they come; a flusher thread
//! takes every applied batch waiting for it, fsyncs once, then answers them all, publishes the
//! new durable hq_seq for readers and updates the statistics. While a flush runs, new batches
//! are applied and wait for the next one, so N concurrent stores cost one fsync per round,
//! not N. A batch of only duplicates waits for a flush too: the first copy of its records may
//! itself still be waiting for one. If a write or fsync fails the receiver stops accepting
//! batches (503; `/healthz` says why) rather than promise what the disk may not hold.
//!
//! # Deduplication
//!
//! The contract makes `id` = `store/gateway/epoch/seq`, and validation insists on it, so
//! deduplicating on `id` is deduplicating on (stream = store/gateway/epoch, seq). Per stream
//! HQ keeps the set of seqs held as disjoint ranges, in memory and under `D`: a gateway sends
//! in seq order, so a stream is normally a single range however many records it has, and a
//! lookup or update costs no disk access. Gaps (dead-lettered or evicted records) add a range
//! each; a batch rewrites only the ranges it changed. This replaces an index entry per id,
//! which halved sled throughput when measured.
//!
//! # Throughput
//!
//! `examples/hq_load.rs` (4 clients, gzip batches of 1000 records of ~510 bytes, in-process
//! receiver on a temp dir, 2-core VM shared with other builds): 140k to 360k records/s wall
//! clock depending on the neighbours' load, about 6.3 us of CPU per record for receiver and
//! clients together (~160k records/s per busy core). Per record the costs are JSON validation
//! (serde_json, borrowed), gzip inflate, copying into chunks, and sled's log write; only
//! attribution, consultation and tracked sale records allocate per record on the ingest path
//! (their summaries).
//!
//! The daily figures and the join (measured alternating with the HQ from before them, 5 runs
//! each, medians): the same mix 173k records/s and 6.7 us of CPU per record, against 163k and
//! 6.4 us before (valgrind: 900 more instructions per record, 2%: the sale look, bigger
//! summaries, the day of each record); `--linked` (every sale tracked, 3 in 4 never traced)
//! 95k records/s and 11.4 us per record. sled's cost is per key (about 10,000 instructions per
//! key applied, 4,000 per get): a waiting sale costs a key per link key and a get per link
//! key, an evidence record a key per link key and a prefix scan.
//!
//! # Start-up
//!
//! The database is opened on a guarded thread (sled 0.34 may panic on damage; that becomes an
//! error). Recovery reads `next_seq`, the dedup ranges, the store totals, the day counters and
//! the summaries, never the records (but for the one-time re-summarising above). A database that cannot be opened (in use by another process,
//! damaged, unknown format) is an error: unlike the gateway journal it is not moved aside,
//! because an empty HQ would forget what it deduplicated and hide every stored record.
//!
//! # Auth
//!
//! Tokens come from files named in the config (`[[store]] token_file`, `[hq]
//! admin_token_file`, `[[user]] token_file`), one per store, the admin token and any users';
//! all must differ. A request's bearer token is compared with every configured token in
//! constant time.
//!
//! # Access (`access`)
//!
//! A *reader* is the admin token (an `admin` named "admin"), a `[[user]]`'s token, or a
//! session cookie. A store's token is not a reader (401 on the read endpoints). Each reader has
//! a scope, from its role: `admin` everything; `region` the stores of its `[[region]]` in full
//! and the other regions as aggregates; `store` its store. The scope is applied on the server,
//! per endpoint: `/v1/records` without `store=` is limited to the scope's stores (a query
//! field the reader skips chunks of other stores with, one store per chunk), with `store=`
//! outside it a 403; `/v1/trace` keeps only sales of the scope's stores and answers 403 when
//! the receipt matched only outside it; `/v1/stats` is built by `Aggregates::report_for`,
//! which shows a region user each other region's stores summed under `region:ID` (tallies
//! merged as for the over-all figures, clerks and stations dropped) and keeps clerk and
//! station breakdowns of the over-all figures to the stores seen in full.
//!
//! Logins: `POST /v1/login` checks the password against the user's argon2id PHC string (the
//! `argon2` crate, whose comparison is constant-time; an unknown name is checked against a
//! dummy hash, so timing does not tell names apart), on a blocking thread. A success creates
//! a session: a random 256-bit id (OS RNG) in memory with the user's name and an expiry 12 h
//! on, at most 10,000 (the oldest evicted), sent as `posgw_hq_session` with `HttpOnly;
//! SameSite=Strict; Path=/; Max-Age`. The session holds a name, not a scope: each request
//! looks the user up in the directory in use, so a reload that removes or moves a user takes
//! effect at once. Failures count per name and per client address; 5 within a minute and
//! the next attempt gets 429 with `Retry-After` before any password check. Each failure is
//! logged with name and address.
//!
//! Reload: `posgw hq` reads the config file again on SIGHUP; if it loads, a new directory
//! (store tokens, admin token, users, regions) replaces the old one atomically and the fleet
//! takes the new campaigns, flows, stores and regions (`fleet`), and the alert task the new
//! `[[alert]]` rules, regions and `[[notify]]` targets, in the order of the reloads; if not, the
//! errors are logged and nothing changes. `listen`, `data_dir`, the sizes, `timezone` and
//! `evaluate_every` need a restart.
//!
//! `posgw hq passwd` reads a password (twice and without echo from a terminal, else the first
//! line of stdin) and prints its argon2id hash (default parameters: 19 MiB, 2 passes).
//!
//! # Code map
//!
//! - `config`: `[hq]`, `[[store]]`, `[[region]]`, `[[user]]`, `[[notify]]`, `[[alert]]`,
//!   [`load_config`], [`HqSettings`].
//! - `access`: the directory of tokens, users and regions; scopes; password hashes; sessions;
//!   the failed-login limit.
//! - `record`: content encoding, bounded decompression, line validation (and the summaries
//!   of attribution, consultation and tracked sale records).
//! - `budget`: the memory budget of bodies in flight.
//! - `store`: sled keys, chunks, seq ranges, open and recovery, reading pages of records.
//! - `writer`: the sled write path's owner (writer and flusher threads), `SledStore`.
//! - `storage`: `StoreHandle`, the seam over sled and PostgreSQL (records, figures, health,
//!   who runs the jobs); with PostgreSQL, the follower that keeps the figures' cache.
//! - `pg`: the PostgreSQL backend: pool, migrations, one transaction per batch, the records
//!   cursor, partitions, the jobs lock, sessions and `manage_kv`.
//! - `manage`: the management database's storage (`ManageDb`, `ManageTree`), mirrored to
//!   PostgreSQL at each flush.
//! - `stats`: the `/v1/stats` figures: store totals, campaigns, flows; the summaries.
//! - `daily`: the figures per store-local day ([`daily::Daily`]) and the cases of alerts.
//! - `join`: the traceability join of tracked sales and their evidence (`E`, `W`, `L`).
//! - `yardsticks`: `/v1/yardsticks`.
//! - `metrics`: `posgw_hq_*`.
//! - `dashboard`: the page at `/` and `/v1/trace`.
//! - `alerts`: `[[alert]]` rules, their evaluation over `daily`, the alert task (alerts in the
//!   management database `data_dir/manage`), lifecycle and messages; its module doc says how
//!   a rule fires once per run of days.
//! - `notify`: alert delivery to WeCom, DingTalk, Feishu robots and webhooks (persistent outbox).
//! - `server`: routes, auth, [`run`] and [`start`].
//! - `fleet`: the chain's campaigns and flows for the stores' gateways (`hq.toml` and the
//!   editor, versioned), `GET /v1/fleet/{store}/config`, heartbeats, the fleet view; its
//!   module doc is its design document.

mod access;
mod alerts;
mod budget;
mod config;
mod daily;
mod dashboard;
pub mod fleet;
mod join;
mod manage;
mod metrics;
mod notify;
mod pg;
mod record;
mod server;
mod stats;
mod storage;
mod store;
mod writer;
mod yardsticks;

pub use access::{hash_password, verify_password};
pub use config::{
    load_config, HqSettings, Storage, StoreSettings, DEFAULT_DATA_DIR, DEFAULT_LISTEN,
};
pub use metrics::HqMetrics;

/// What `posgw hq check-config` says of the storage: sled's folder, or PostgreSQL's version
/// and the schema's (after connecting; nothing is changed).
pub async fn describe_storage(settings: &HqSettings) -> anyhow::Result<String> {
    match &settings.storage {
        Storage::Sled => Ok(format!(
            "storage: sled in {}",
            settings.data_dir.join("hq").display()
        )),
        Storage::Postgres { url, url_file } => {
            let versions = pg::versions(url).await.map_err(|error| {
                error.context(format!(
                    "cannot reach the database of url_file {}",
                    url_file.display()
                ))
            })?;
            let schema = match versions.schema {
                0 => format!(
                    "no posgw schema yet (the first start applies version {})",
                    pg::SCHEMA_VERSION
                ),
                found if found == pg::SCHEMA_VERSION => format!("schema version {found}"),
                found if found < pg::SCHEMA_VERSION => format!(
                    "schema version {found} (the next start migrates it to {})",
                    pg::SCHEMA_VERSION
                ),
                found => format!(
                    "schema version {found}, newer than this posgw's {}: upgrade posgw",
                    pg::SCHEMA_VERSION
                ),
            };
            Ok(format!(
                "storage: PostgreSQL {} ({}), {schema}",
                versions.server, versions.database
            ))
        }
    }
}
pub use server::{run, start, RunningHq, NEXT_AFTER_HEADER};
pub use stats::{
    Breakdown, CampaignReport, FlowBreakdown, FlowOutcomes, FlowReport, HeldReport, Outcomes,
    StatsReport, StepReport, StoreReport, StoreTotals,
};
