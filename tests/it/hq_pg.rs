//! Several `posgw hq` receivers on one PostgreSQL (`[storage] backend = "postgres"`): every
//! record exactly once whichever receiver takes it, a `/v1/records` reader that misses
//! nothing while batches commit concurrently, a receiver killed with SIGKILL and the database
//! restarted under load, and migrations from an empty database. Each test starts its own
//! PostgreSQL cluster (`pg`); the single-receiver behaviour tests run on both backends in `hq`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::free_port;
use crate::hq::{
    client, lines, record, spawn_hq_process, wait_healthy, Backend, Folder, ADMIN, TOKEN_1, TOKEN_2,
};

/// How long any wait in these tests may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The cluster of a PostgreSQL backend.
fn cluster(backend: &Backend) -> &crate::pg::PgCluster {
    match backend {
        Backend::Postgres(cluster) => cluster,
        Backend::Sled => unreachable!("a PostgreSQL backend"),
    }
}

/// The body of batch `batch` (records `batch * size + 1 ..= (batch + 1) * size`) of gateway
/// `gateway` of store `store`.
fn batch_body(store: &str, gateway: u64, batch: u64, size: u64) -> String {
    let records: Vec<String> = (1..=size)
        .map(|n| {
            let seq = batch * size + n;
            record(
                store,
                &format!("gw-{gateway}"),
                seq,
                "scan",
                &format!(r#"{{"code":"690{seq:010}","batch":{batch}}}"#),
            )
        })
        .collect();
    lines(&records)
}

/// Posts `body` like a gateway's uplink: to `urls[first % 2]`, then, after any failure (no
/// answer, 503), to the other receiver and so on until one answers 200.
async fn post_like_a_gateway(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    body: String,
    first: usize,
) {
    let started = Instant::now();
    for attempt in first.. {
        let url = &urls[attempt % urls.len()];
        let answer = client
            .post(format!("{url}/v1/batches"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == StatusCode::OK => return,
            Ok(response) => assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "only 503 may refuse a valid batch"
            ),
            Err(_) => {}
        }
        assert!(started.elapsed() < DEADLINE, "a batch was never accepted");
        // The gateway's retry delay (not a synchronisation: the next attempt is the check).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pages `/v1/records` from the receivers in turn until `done` was set before a page that
/// came back empty; answers every (hq_seq, id) seen, in order. Failed requests (a receiver
/// down, the database restarting) are tried again on the other receiver.
async fn read_everything(
    client: reqwest::Client,
    urls: Vec<String>,
    done: Arc<AtomicBool>,
) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let mut after = 0u64;
    let started = Instant::now();
    for turn in 0.. {
        assert!(
            started.elapsed() < DEADLINE * 2,
            "the reader never caught up"
        );
        let finished = done.load(Ordering::Acquire);
        let url = &urls[turn % urls.len()];
        let answer = client
            .get(format!("{url}/v1/records?after={after}&limit=700"))
            .bearer_auth(ADMIN)
            .send()
            .await;
        let Ok(response) = answer else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if response.status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let next: u64 = response.headers()[posgw::hq::NEXT_AFTER_HEADER]
            .to_str()
            .expect("header")
            .parse()
            .expect("number");
        let Ok(text) = response.text().await else {
            continue;
        };
        let before = seen.len();
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).expect("json");
            seen.push((
                record["hq_seq"].as_u64().expect("hq_seq"),
                record["id"].as_str().expect("id").to_string(),
            ));
        }
        if seen.len() == before && finished {
            return seen;
        }
        after = next;
    }
    unreachable!()
}

/// What the database holds: (records, distinct ids, record_ids, highest hq_seq).
fn table_counts(cluster: &crate::pg::PgCluster) -> (u64, u64, u64, u64) {
    let out = cluster.psql(
        "posgw",
        "SELECT count(*), count(DISTINCT id), (SELECT count(*) FROM record_ids), \
         coalesce(max(hq_seq), 0) FROM records",
    );
    let numbers: Vec<u64> = out
        .trim()
        .split('|')
        .map(|n| n.parse().expect("number"))
        .collect();
    (numbers[0], numbers[1], numbers[2], numbers[3])
}

/// What the reader saw must be the whole table: hq_seq 1, 2, 3, ... without a gap (nothing
/// skipped), each id once, exactly the ids sent.
fn check_reader(seen: &[(u64, String)], expected: &BTreeSet<String>) {
    for (index, (seq, _)) in seen.iter().enumerate() {
        assert_eq!(
            *seq,
            index as u64 + 1,
            "the reader skipped or repeated at {index}"
        );
    }
    let ids: BTreeSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "an id seen twice");
    assert_eq!(&ids, expected, "the reader saw exactly the records sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_keep_every_record_once_through_a_kill_9_and_a_database_restart() {
    const BATCHES: u64 = 60;
    const SIZE: u64 = 100;
    let backend = Backend::postgres();
    let ports = [free_port(), free_port()];
    let folders: Vec<Folder> = ports
        .iter()
        .map(|port| Folder::on(&backend, &format!("127.0.0.1:{port}"), ""))
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let mut receivers: Vec<_> = folders
        .iter()
        .map(|folder| spawn_hq_process(&folder.config()))
        .collect();
    let client = client();
    for url in &urls {
        wait_healthy(&client, url).await;
    }

    // Two gateways (stores S1 and S2), each sending its batches to the receivers in turn.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut gateways = Vec::new();
    for (gateway, (store, token)) in [(1u64, ("S1", TOKEN_1)), (2, ("S2", TOKEN_2))] {
        let (client, urls, acknowledged) = (client.clone(), urls.clone(), acknowledged.clone());
        gateways.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                let body = batch_body(store, gateway, batch, SIZE);
                post_like_a_gateway(&client, &urls, token, body, batch as usize).await;
                acknowledged.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_everything(client.clone(), urls.clone(), done.clone()));
    let reached = |count: u64| {
        let acknowledged = acknowledged.clone();
        async move {
            let started = Instant::now();
            while acknowledged.load(Ordering::Acquire) < count {
                assert!(
                    started.elapsed() < DEADLINE,
                    "the load stalled below {count}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // A quarter in: the first receiver is killed mid-batch, and comes back.
    reached(BATCHES / 2).await;
    receivers[0].kill_9();
    receivers[0] = spawn_hq_process(&folders[0].config());
    wait_healthy(&client, &urls[0]).await;

    // Half-way: the database stops. Both receivers say so on /healthz, batches get 503.
    reached(BATCHES).await;
    let pg = cluster(&backend);
    tokio::task::block_in_place(|| pg.stop());
    for url in &urls {
        let started = Instant::now();
        loop {
            let health = client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .expect("healthz");
            if health.status() == StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{url} stayed healthy without its database"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let refused = client
        .post(format!("{}/v1/batches", urls[1]))
        .bearer_auth(TOKEN_1)
        .header("content-type", "application/x-ndjson")
        .body(batch_body("S1", 9, 0, 3))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    tokio::task::block_in_place(|| pg.start_again());
    for url in &urls {
        wait_healthy(&client, url).await;
    }

    for gateway in gateways {
        gateway.await.expect("gateway");
    }
    done.store(true, Ordering::Release);
    let seen = reader.await.expect("reader");

    let expected: BTreeSet<String> = [(1u64, "S1"), (2, "S2")]
        .iter()
        .flat_map(|(gateway, store)| {
            (1..=BATCHES * SIZE).map(move |seq| format!("{store}/gw-{gateway}/7f3a9c21/{seq}"))
        })
        .collect();
    let total = expected.len() as u64;
    assert_eq!(
        table_counts(pg),
        (total, total, total, total),
        "every record once"
    );
    check_reader(&seen, &expected);
    // Both receivers' figures come to the same totals (each follows the database).
    for url in &urls {
        let started = Instant::now();
        loop {
            let stats: Value = client
                .get(format!("{url}/v1/stats"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("stats")
                .json()
                .await
                .expect("json");
            if stats["records"] == total {
                assert_eq!(stats["stores"]["S1"]["records"], BATCHES * SIZE);
                assert_eq!(stats["stores"]["S2"]["records"], BATCHES * SIZE);
                break;
            }
            assert!(started.elapsed() < DEADLINE, "{url}: {stats}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_misses_nothing_while_many_batches_commit_at_once_on_two_receivers() {
    const POSTERS: u64 = 8;
    const BATCHES: u64 = 40;
    const SIZE: u64 = 25;
    let backend = Backend::postgres();
    let folders = [
        Folder::on(&backend, "127.0.0.1:0", ""),
        Folder::on(&backend, "127.0.0.1:0", ""),
    ];
    let receivers = [folders[0].start().await, folders[1].start().await];
    let urls: Vec<String> = receivers.iter().map(|r| r.url.clone()).collect();
    let client = client();
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_everything(client.clone(), urls.clone(), done.clone()));
    let mut posters = Vec::new();
    for poster in 0..POSTERS {
        let (client, urls) = (client.clone(), urls.clone());
        posters.push(tokio::spawn(async move {
            for batch in 0..BATCHES {
                let body = batch_body("S1", poster, batch, SIZE);
                let first = (poster + batch) as usize;
                post_like_a_gateway(&client, &urls, TOKEN_1, body, first).await;
            }
        }));
    }
    for poster in posters {
        poster.await.expect("poster");
    }
    done.store(true, Ordering::Release);
    let seen = reader.await.expect("reader");
    let expected: BTreeSet<String> = (0..POSTERS)
        .flat_map(|poster| {
            (1..=BATCHES * SIZE).map(move |seq| format!("S1/gw-{poster}/7f3a9c21/{seq}"))
        })
        .collect();
    let total = expected.len() as u64;
    assert_eq!(
        table_counts(cluster(&backend)),
        (total, total, total, total)
    );
    check_reader(&seen, &expected);
    for receiver in receivers {
        receiver.stop().await;
    }
}

/// The schema's version as `posgw hq check-config` reports it ("schema version N"), or 0 for
/// an empty database.
fn reported_schema(folder: &Folder) -> u64 {
    let output = crate::harness::posgw()
        .args(["hq", "-c"])
        .arg(folder.config())
        .arg("check-config")
        .output()
        .expect("check-config");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("storage: PostgreSQL "), "{stdout}");
    if stdout.contains("no posgw schema yet") {
        return 0;
    }
    let version = stdout
        .split("schema version ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_else(|| panic!("no schema version in {stdout}"));
    version.parse().expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_from_an_empty_database_when_two_receivers_start_together() {
    let backend = Backend::postgres();
    let pg = cluster(&backend);
    let folders = [
        Folder::on(&backend, "127.0.0.1:0", ""),
        Folder::on(&backend, "127.0.0.1:0", ""),
    ];
    assert_eq!(reported_schema(&folders[0]), 0, "an empty database");

    let (first, second) = tokio::join!(folders[0].start(), folders[1].start());
    let version = reported_schema(&folders[0]);
    assert!(version >= 1);
    let schema_rows = || {
        pg.psql(
            "posgw",
            "SELECT string_agg(version || '@' || applied_at, ',' ORDER BY version) FROM posgw_schema",
        )
    };
    let objects = || {
        pg.psql(
            "posgw",
            "SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace",
        )
    };
    let (rows, tables) = (schema_rows(), objects());
    assert_eq!(
        rows.split(',').count() as u64,
        version,
        "each migration once: {rows}"
    );
    for table in [
        "records:p",
        "record_ids:r",
        "hq_counter:r",
        "store_counts:r",
    ] {
        assert!(tables.contains(table), "{table} in {tables}");
    }
    let (status, body) = first
        .post(Some(TOKEN_1), &batch_body("S1", 1, 0, 5), "gzip")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    first.stop().await;
    second.stop().await;

    // A second start changes nothing: same migrations, same objects, records kept.
    let again = folders[1].start().await;
    assert_eq!(schema_rows(), rows);
    assert_eq!(objects(), tables);
    assert_eq!(reported_schema(&folders[1]), version);
    assert_eq!(again.all_records().await.len(), 5);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_views_show_records_as_typed_rows() {
    let backend = Backend::postgres();
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    let records = [
        record(
            "S1",
            "gw-1",
            1,
            "scan",
            r#"{"device":"scanner-1","station":"till-1","raw":"]E06901234567892","symbology":"]E0","code":"6901234567892","code_kind":"ean13","gtin":"06901234567892"}"#,
        ),
        record(
            "S1",
            "gw-1",
            2,
            "sale",
            r#"{"device":"register-1","station":"till-1","receipt":"R-1","clerk":"c-7","lines":[{"sku":"6901234567892","name":"参松养心胶囊","qty":2,"unit_price":25.5,"amount":51.0,"prompt":"p-3"},{"sku":"6900000000017","name":"维生素C","qty":1,"unit_price":9.9,"amount":9.9,"prompt":null}],"total":60.9,"currency":"CNY"}"#,
        ),
        record(
            "S1",
            "gw-1",
            3,
            "attribution",
            r#"{"prompt":"p-3","campaign":"c1","station":"till-1","sku":"6901234567892","question":"推荐话术来源","outcome":"answered","answer":"doctor","answer_label":"医生推荐","channel":"web","clerk":"c-7","latency_ms":2100}"#,
        ),
        // A code that looks like a huge exponent, and a NUL a scanner sent (which jsonb
        // cannot hold): both read back, neither makes a view fail.
        record(
            "S1",
            "gw-1",
            4,
            "scan",
            r#"{"raw":"2024E00123","code":"2024E00123","code_kind":"code128"}"#,
        ),
        record(
            "S1",
            "gw-1",
            5,
            "scan",
            r#"{"raw":"A\u0000B","code":"AB","code_kind":"code128"}"#,
        ),
    ];
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&records), "gzip").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pg = cluster(&backend);
    assert_eq!(
        pg.psql(
            "posgw",
            "SELECT hq_seq, code, code_kind FROM scans ORDER BY hq_seq"
        ),
        "1|6901234567892|ean13\n4|2024E00123|code128\n5|AB|code128\n"
    );
    assert_eq!(
        pg.psql(
            "posgw",
            "SELECT raw FROM scans WHERE hq_seq >= 4 ORDER BY hq_seq"
        ),
        "2024E00123\nA\u{fffd}B\n"
    );
    assert_eq!(
        pg.psql(
            "posgw",
            "SELECT receipt, position, sku, qty * 2, amount FROM sale_lines ORDER BY position"
        ),
        "R-1|1|6901234567892|4|51.0\nR-1|2|6900000000017|2|9.9\n"
    );
    assert_eq!(
        pg.psql(
            "posgw",
            "SELECT outcome, answer, latency_ms + 1 FROM attributions"
        ),
        "answered|doctor|2101\n"
    );
    // The columns are typed, not text.
    assert_eq!(
        pg.psql(
            "posgw",
            "SELECT pg_typeof(ts)::text, pg_typeof(qty)::text FROM sale_lines LIMIT 1"
        ),
        "timestamp with time zone|numeric\n"
    );
    assert_eq!(
        pg.psql(
            "posgw",
            "SELECT records, scans, sales, attributions_answered FROM daily_store_figures"
        ),
        "5|3|1|1\n"
    );
    hq.stop().await;
}

/// A balancer in front of `backends`: each new connection goes to the next one in turn, or to
/// the other when that one refuses (a receiver down), like HAProxy with `option redispatch`.
async fn balancer(backends: Vec<String>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind balancer");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut turn = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            turn += 1;
            let order: Vec<String> = (0..backends.len())
                .map(|offset| backends[(turn + offset) % backends.len()].clone())
                .collect();
            tokio::spawn(async move {
                for backend in order {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    format!("http://{address}/v1/batches")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_behind_a_balancer_reach_two_receivers_exactly_once_through_a_kill_9() {
    use crate::harness::{Gateway, PtyScanner, Store};
    let backend = Backend::postgres();
    let pg = cluster(&backend);
    // Both receivers know store WZ-LC-001 (the harness's gateways) by the same token.
    let ports = [free_port(), free_port()];
    let sites: Vec<tempfile::TempDir> = ports
        .iter()
        .map(|port| {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("store.token"), "wz-token").expect("token");
            std::fs::write(dir.path().join("admin.token"), ADMIN).expect("token");
            std::fs::write(dir.path().join("db.url"), pg.url()).expect("url");
            std::fs::write(
                dir.path().join("hq.toml"),
                format!(
                    "[hq]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\
                     admin_token_file = \"admin.token\"\n\n\
                     [[store]]\ncode = \"WZ-LC-001\"\ntoken_file = \"store.token\"\n\n\
                     [storage]\nbackend = \"postgres\"\nurl_file = \"db.url\"\n"
                ),
            )
            .expect("config");
            dir
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let mut receivers: Vec<_> = sites
        .iter()
        .map(|site| spawn_hq_process(&site.path().join("hq.toml")))
        .collect();
    let client = client();
    for url in &urls {
        wait_healthy(&client, url).await;
    }
    let endpoint = balancer(
        ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect(),
    )
    .await;

    // Two gateways of the store, scanning steadily.
    let stores = [Store::new(), Store::new()];
    let mut gateways = Vec::new();
    let mut scanners = Vec::new();
    for store in &stores {
        store.write_config("");
        store.add_uplink(&endpoint, "wz-token", "batch_max_records = 200");
        scanners.push(PtyScanner::plug(&store.path("scanner")));
        let gateway = Gateway::start(store).await;
        gateway.wait_device("scanner-1", "connected").await;
        gateways.push(gateway);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let feeders: Vec<_> = scanners
        .into_iter()
        .enumerate()
        .map(|(index, mut scanner)| {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut sent = 0u32;
                while !*stopped.borrow_and_update() {
                    scanner
                        .send(format!("]C0G{index}-{sent:05}\r").as_bytes())
                        .await;
                    sent += 1;
                    // About 500 scans a second per gateway: a busy store's worth, many times.
                    if sent % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                scanner
            })
        })
        .collect();
    let stored = || {
        pg.psql("posgw", "SELECT count(*) FROM records")
            .trim()
            .parse::<u64>()
            .expect("count")
    };
    let wait_for_more = |more: u64| {
        let before = stored();
        async move {
            let started = Instant::now();
            while stored() < before + more {
                assert!(started.elapsed() < DEADLINE, "no progress");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_more(200).await;
    // One receiver dies under load; its gateways' connections break and go to the other.
    receivers[0].kill_9();
    wait_for_more(200).await;
    receivers[0] = spawn_hq_process(&sites[0].path().join("hq.toml"));
    wait_healthy(&client, &urls[0]).await;
    wait_for_more(200).await;
    stop.send(true).expect("stop feeders");
    // The scanners stay plugged in to the end: closing a pty can drop what it still holds.
    let mut scanners = Vec::new();
    for (index, feeder) in feeders.into_iter().enumerate() {
        let mut scanner = feeder.await.expect("feeder");
        scanner
            .send(format!("]C0SENTINEL-{index}\r").as_bytes())
            .await;
        scanners.push(scanner);
    }
    // Each gateway's last scan marks the end of its load (scans read after its status was
    // taken would not be counted in `durable_seq`).
    for (index, gateway) in gateways.iter().enumerate() {
        let started = Instant::now();
        let sql = format!("SELECT count(*) FROM scans WHERE code = 'SENTINEL-{index}'");
        while pg.psql("posgw", &sql).trim() != "1" {
            if started.elapsed() > DEADLINE {
                let status = gateway.status().await;
                panic!(
                    "gateway {index}'s last scan never came: journal {} uplink {}",
                    status["journal"], status["uplink"],
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for gateway in &gateways {
        gateway
            .wait_for("an empty backlog", |g| async move {
                g.status().await["journal"]["backlog_records"] == 0
            })
            .await;
    }
    let mut acknowledged = Vec::new();
    for gateway in gateways {
        let journal = gateway.status().await["journal"].clone();
        acknowledged.push((
            journal["epoch"].as_str().expect("epoch").to_string(),
            journal["durable_seq"].as_u64().expect("durable_seq"),
        ));
        assert!(gateway.stop().await.success());
    }
    drop(scanners);
    // Every journal record of both gateways is at HQ, once.
    let (records, distinct, ids, _) = table_counts(pg);
    assert_eq!((records, ids), (distinct, distinct), "each record once");
    let expected: u64 = acknowledged.iter().map(|(_, durable)| durable).sum();
    assert!(
        records >= expected,
        "{records} records for {expected} acknowledged"
    );
    for (epoch, durable) in &acknowledged {
        let held = pg.psql(
            "posgw",
            &format!(
                "SELECT count(*) FROM records WHERE id LIKE 'WZ-LC-001/gw-test/{epoch}/%' \
                 AND split_part(id, '/', 4)::bigint BETWEEN 1 AND {durable}"
            ),
        );
        assert_eq!(held.trim(), durable.to_string(), "epoch {epoch}");
    }
}
