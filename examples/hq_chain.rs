//! HQ at chain scale: 127 stores × 90 days of records posted to an in-process `posgw hq`,
//! then every alert rule evaluated and every dashboard request timed, and HQ's RSS reported.
//!
//! ```text
//! cargo run --release --example hq_chain                          # 300 records per store-day
//! cargo run --release --example hq_chain -- --per-day 2600        # ~30M records
//! cargo run --release --example hq_chain -- --stores 127 --days 90 --per-day 300 --repeat 5
//! cargo run --release --example hq_chain -- --per-day 1000 --postgres postgres://u:p@127.0.0.1/db
//! ```
//!
//! With `--postgres URL` (an empty database) the receiver stores there (`[storage] backend =
//! "postgres"`), and after the dashboard's requests a second receiver is started on the same
//! database: the time its figures' cache takes to catch up with every record is printed, and
//! the BI view `daily_store_figures` is timed for one day and for the last week.
//!
//! Each store-day has consultations (the 医保核验 step passes in 40 to 95% of them, so some
//! stores breach the rule two days running), attribution prompts (some timing out), tracked
//! sales and scans, in the proportions 1 : 1.5 : 5 : 7.5. Stores form 9 regions. Records are
//! posted as plain NDJSON batches of 1000 by 4 concurrent clients. After ingest it times, each
//! `--repeat` times: `POST /v1/alerts/evaluate` (every rule), and the dashboard's requests
//! (`/`, `/v1/stats`, `/v1/yardsticks` over the 90 days, `/v1/alerts`) as admin and as a
//! regional user, and prints the slowest and median of each.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{Duration as Days, NaiveDate, Utc};

struct Options {
    stores: usize,
    days: usize,
    per_day: usize,
    repeat: usize,
    postgres: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        stores: 127,
        days: 90,
        per_day: 300,
        repeat: 5,
        postgres: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let text = args.next().ok_or(format!("{flag} needs a value"))?;
        if flag == "--postgres" {
            options.postgres = Some(text);
            continue;
        }
        let value = text
            .parse::<usize>()
            .map_err(|error| format!("{flag}: {error}"))?;
        match flag.as_str() {
            "--stores" => options.stores = value.max(1),
            "--days" => options.days = value.max(2),
            "--per-day" => options.per_day = value.max(20),
            "--repeat" => options.repeat = value.max(1),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(options)
}

/// Store code of store `index`.
fn store(index: usize) -> String {
    format!("ZJ-{index:03}")
}

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every record of one store-day, as NDJSON lines, seqs from `seq`.
fn store_day(
    code: &str,
    day: NaiveDate,
    per_day: usize,
    seq: &mut u64,
    rng: &mut Rng,
) -> Vec<String> {
    let consultations = per_day / 15;
    let prompts = per_day / 10;
    let sales = per_day / 3;
    let scans = per_day - consultations - prompts - sales;
    // This store-day's insurance pass rate, 40% to 95%.
    let pass = 40 + rng.below(56);
    let mut lines = Vec::with_capacity(per_day);
    let record = |kind: &str, minute: usize, data: String, seq: &mut u64| {
        *seq += 1;
        let ts = format!(
            "{day}T{:02}:{:02}:{:02}.000+08:00",
            8 + minute / 60 % 14,
            minute % 60,
            *seq % 60
        );
        format!(
            "{{\"id\":\"{code}/gw-1/ep1/{seq}\",\"store\":\"{code}\",\"gateway\":\"gw-1\",\
             \"epoch\":\"ep1\",\"seq\":{seq},\"ts\":\"{ts}\",\"clock\":{{\"boot\":\"b\",\
             \"mono_ms\":{seq},\"synced\":true}},\"kind\":\"{kind}\",\"data\":{data}}}",
            seq = *seq
        )
    };
    for index in 0..consultations {
        let clerk = format!("c-{}", rng.below(4));
        let insurance = if rng.below(100) < pass {
            "通过"
        } else {
            "未通过"
        };
        let at = format!("{day}T10:{:02}:00.000+08:00", index % 60);
        let mut steps = String::new();
        for (key, label, value) in [
            ("consult", "客户问诊", "null".to_string()),
            ("symptoms", "症状记录", "null".to_string()),
            ("recommend", "药品推荐", "null".to_string()),
            ("insurance", "医保核验", format!("\"{insurance}\"")),
            ("guidance", "用药指导", "null".to_string()),
        ] {
            let done = rng.below(10) < 9;
            let values = if key == "symptoms" {
                "[\"高血压\",\"心悸\"]"
            } else {
                "null"
            };
            let _ = write!(
                steps,
                "{}{{\"key\":\"{key}\",\"label\":\"{label}\",\"at\":{},\"value\":{},\
                 \"values\":{values},\"skipped\":null,\"clerk\":\"{clerk}\"}}",
                if steps.is_empty() { "" } else { "," },
                if done || key == "insurance" {
                    format!("\"{at}\"")
                } else {
                    "null".to_string()
                },
                if key == "insurance" {
                    value
                } else {
                    "null".to_string()
                },
            );
        }
        let receipt = format!("R-{code}-{day}-{index}");
        let data = format!(
            "{{\"id\":\"k-{code}-{day}-{index}\",\"flow\":\"rx-5step\",\"station\":\"till-1\",\
             \"clerk\":\"{clerk}\",\"customer\":\"{:016x}\",\"opened_at\":\"{at}\",\
             \"closed_at\":\"{at}\",\"outcome\":\"completed\",\"steps\":[{steps}],\"scans\":[],\
             \"receipt\":\"{receipt}\",\"held_ms\":null,\"released_by\":null}}",
            rng.next()
        );
        lines.push(record("consultation", index, data, seq));
        let sale = format!(
            "{{\"device\":\"register-1\",\"station\":\"till-1\",\"receipt\":\"{receipt}\",\
             \"clerk\":\"{clerk}\",\"currency\":\"CNY\",\"total\":25.0,\"consultation\":\
             \"k-{code}-{day}-{index}\",\"lines\":[{{\"sku\":\"6901234567892\",\"name\":\"x\",\
             \"qty\":1,\"unit_price\":25.0,\"amount\":25.0,\"prompt\":null,\"flow\":\"rx-5step\"}}]}}"
        );
        lines.push(record("sale", index, sale, seq));
    }
    for index in 0..prompts {
        let outcome = if rng.below(10) < 8 {
            "answered"
        } else {
            "timeout"
        };
        let clerk = format!("c-{}", rng.below(4));
        let data = format!(
            "{{\"prompt\":\"p-{code}-{day}-{index}\",\"campaign\":\"xinsong\",\"station\":\"till-1\",\
             \"sku\":\"6901234567892\",\"question\":\"推荐话术来源\",\"outcome\":\"{outcome}\",\
             \"answer\":{},\"answer_label\":null,\"channel\":\"web\",\"clerk\":\"{clerk}\",\
             \"opened_at\":\"{day}T11:00:00.000+08:00\",\"latency_ms\":4000}}",
            if outcome == "answered" { "\"doctor\"" } else { "null" }
        );
        lines.push(record("attribution", index, data, seq));
    }
    for index in 0..sales.saturating_sub(consultations) {
        let data = format!(
            "{{\"device\":\"register-1\",\"station\":\"till-1\",\"receipt\":\"S-{code}-{day}-{index}\",\
             \"clerk\":\"c-1\",\"currency\":\"CNY\",\"total\":8.5,\"lines\":[{{\"sku\":\"6900000000001\",\
             \"name\":\"y\",\"qty\":1,\"unit_price\":8.5,\"amount\":8.5,\"prompt\":null}}]}}"
        );
        lines.push(record("sale", index, data, seq));
    }
    for index in 0..scans {
        let data = format!(
            "{{\"device\":\"scanner-1\",\"station\":\"till-1\",\"symbology\":\"ean13\",\
             \"code\":\"690000000{:04}\",\"raw\":\"\"}}",
            index % 10_000
        );
        lines.push(record("scan", index, data, seq));
    }
    lines
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let dir = tempfile::tempdir()?;
    let mut config = String::from(
        "[hq]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n\
         evaluate_every = \"24h\"\n\n",
    );
    std::fs::write(dir.path().join("admin.token"), "bench-admin")?;
    std::fs::write(dir.path().join("li.token"), "bench-li")?;
    for index in 0..options.stores {
        let code = store(index);
        std::fs::write(
            dir.path().join(format!("{code}.token")),
            format!("tok-{code}"),
        )?;
        let _ = write!(
            config,
            "[[store]]\ncode = \"{code}\"\ntoken_file = \"{code}.token\"\n"
        );
    }
    let regions = 9;
    for region in 0..regions {
        let stores: Vec<String> = (0..options.stores)
            .filter(|index| index % regions == region)
            .map(|index| format!("\"{}\"", store(index)))
            .collect();
        let _ = write!(
            config,
            "[[region]]\nid = \"r{region}\"\nstores = [{}]\n",
            stores.join(", ")
        );
    }
    config.push_str(
        "[[user]]\nname = \"li\"\nrole = \"region\"\nregion = \"r0\"\ntoken_file = \"li.token\"\n\
         [[alert]]\nid = \"insurance-pass-low\"\nmetric = \"step_rate\"\nflow = \"rx-5step\"\n\
         step = \"insurance\"\nvalue = \"通过\"\nbelow = 0.65\ndays = 2\nmin_count = 5\n\
         [[alert]]\nid = \"steps-incomplete\"\nmetric = \"step_completeness\"\nflow = \"rx-5step\"\n\
         step = \"guidance\"\nbelow = 0.85\ndays = 3\n\
         [[alert]]\nid = \"prompt-timeouts\"\nmetric = \"prompt_timeout_rate\"\nabove = 0.3\ndays = 2\n\
         [[alert]]\nid = \"backlog\"\nmetric = \"backlog_age_minutes\"\nabove = 240\ndays = 1\n\
         [[alert]]\nid = \"offline\"\nmetric = \"gateway_offline_hours\"\nabove = 20\ndays = 2\n",
    );
    if let Some(url) = &options.postgres {
        std::fs::write(dir.path().join("db.url"), url)?;
        config.push_str("[storage]\nbackend = \"postgres\"\nurl_file = \"db.url\"\n");
    }
    let path = dir.path().join("hq.toml");
    std::fs::write(&path, config)?;
    let settings = posgw::hq::load_config(&path)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hq = posgw::hq::start(settings, listener).await?;
    let url = hq.url();
    let client = reqwest::Client::new();
    let total = options.stores * options.days * options.per_day;
    println!(
        "posting {} stores x {} days x {} records = {total} records",
        options.stores, options.days, options.per_day
    );
    let today = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let started = Instant::now();
    let (sender, receiver) = tokio::sync::mpsc::channel::<(String, String)>(8);
    let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
    let mut posters = Vec::new();
    for _ in 0..4 {
        let (client, url, receiver) = (client.clone(), url.clone(), receiver.clone());
        posters.push(tokio::spawn(async move {
            loop {
                let Some((code, body)) = receiver.lock().await.recv().await else {
                    break;
                };
                let response = client
                    .post(format!("{url}/v1/batches"))
                    .bearer_auth(format!("tok-{code}"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                assert!(response.status().is_success(), "{}", response.status());
            }
        }));
    }
    let generator = {
        let stores = options.stores;
        let (days, per_day) = (options.days, options.per_day);
        tokio::task::spawn_blocking(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut seqs = vec![0u64; stores];
            for offset in (1..=days).rev() {
                let day = today - Days::days(offset as i64);
                for (index, seq) in seqs.iter_mut().enumerate() {
                    let code = store(index);
                    let lines = store_day(&code, day, per_day, seq, &mut rng);
                    for chunk in lines.chunks(1000) {
                        let body = chunk.join("\n") + "\n";
                        if sender.blocking_send((code.clone(), body)).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    generator.await?;
    for poster in posters {
        poster.await?;
    }
    let ingest = started.elapsed();
    println!(
        "ingest: {total} records in {:.1} s ({:.0} records/s); RSS {:.0} MiB",
        ingest.as_secs_f64(),
        total as f64 / ingest.as_secs_f64(),
        rss_mib()
    );
    let from = (today - Days::days(options.days as i64)).to_string();
    let yardsticks = format!("/v1/yardsticks?from={from}&to={today}");
    let requests: Vec<(&str, &str, String)> = vec![
        ("POST", "bench-admin", "/v1/alerts/evaluate".to_string()),
        ("GET", "bench-admin", "/".to_string()),
        ("GET", "bench-admin", "/v1/stats".to_string()),
        ("GET", "bench-admin", yardsticks.clone()),
        ("GET", "bench-admin", "/v1/alerts".to_string()),
        ("GET", "bench-li", "/v1/stats".to_string()),
        ("GET", "bench-li", yardsticks),
        ("GET", "bench-li", "/v1/alerts".to_string()),
    ];
    for (method, token, path) in &requests {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..options.repeat {
            let request = if *method == "POST" {
                client.post(format!("{url}{path}"))
            } else {
                client.get(format!("{url}{path}"))
            };
            let begun = Instant::now();
            let response = request.bearer_auth(token).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            times.push(begun.elapsed());
            size = body.len();
            if *method == "POST" && times.len() == 1 {
                let opened: serde_json::Value = serde_json::from_slice(&body)?;
                println!(
                    "the first evaluation opened {} alerts in {:.1} ms",
                    opened["opened"].as_array().map_or(0, Vec::len),
                    times[0].as_secs_f64() * 1000.0
                );
            }
            assert!(status.is_success(), "{method} {path}: {status}");
        }
        times.sort();
        let ms = |time: Duration| time.as_secs_f64() * 1000.0;
        println!(
            "{method:4} {path:60} as {:11}: median {:7.1} ms, slowest {:7.1} ms, {size} bytes",
            token,
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
        );
    }
    println!("RSS after the requests: {:.0} MiB", rss_mib());
    if let Some(url) = &options.postgres {
        postgres_figures(&path, url, total).await?;
    }
    hq.stop().await?;
    Ok(())
}

/// With PostgreSQL: a second receiver's catch-up, and the BI view's timings.
async fn postgres_figures(
    config: &std::path::Path,
    url: &str,
    total: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut settings = posgw::hq::load_config(config)?;
    let second_dir = tempfile::tempdir()?;
    settings.data_dir = second_dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let begun = Instant::now();
    let second = posgw::hq::start(settings, listener).await?;
    let client = reqwest::Client::new();
    loop {
        let stats: serde_json::Value = client
            .get(format!("{}/v1/stats", second.url()))
            .bearer_auth("bench-admin")
            .send()
            .await?
            .json()
            .await?;
        if stats["records"].as_u64() == Some(total as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = begun.elapsed();
    println!(
        "a second receiver's figures caught up with {total} records in {:.1} s ({:.0} records/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    second.stop().await?;
    let (database, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for (what, sql) in [
        (
            "daily_store_figures, yesterday, every store",
            "SELECT count(*) FROM daily_store_figures WHERE day = current_date - 1",
        ),
        (
            "daily_store_figures, the last 7 days, every store",
            "SELECT count(*) FROM daily_store_figures WHERE day >= current_date - 7",
        ),
    ] {
        let begun = Instant::now();
        let rows: i64 = database.query_one(sql, &[]).await?.get(0);
        println!(
            "{what}: {rows} rows in {:.0} ms",
            begun.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
