//! Load generator for the HQ receiver: several concurrent "gateways" post gzip batches of
//! realistic records (~500 bytes each) and the ingest rate is reported.
//!
//! ```text
//! cargo run --release --example hq_load                        # in-process receiver, temp dir
//! cargo run --release --example hq_load -- --clients 8 --batches 50
//! cargo run --release --example hq_load -- --linked                # tracked sales, see record()
//! cargo run --release --example hq_load -- --url http://127.0.0.1:7390 --store WZ-LC-001 --token-file T
//! cargo run --release --example hq_load -- --postgres postgres://posgw:posgw@127.0.0.1:5432/posgw \
//!     --receivers 2 --pg-pid $(head -1 /path/to/pgdata/postmaster.pid)
//! ```
//!
//! With `--postgres`, `--receivers` in-process receivers share that database (`[storage]
//! backend = "postgres"`; use an empty database) and the clients post to them in turn;
//! `--pg-pid` (the postmaster's pid) adds PostgreSQL's CPU time (postmaster and its children)
//! to the report, for the split between the receivers and the database.
//!
//! Bodies are generated and compressed before the clock starts, so the figure is the
//! receiver's (HTTP, decompression, validation, dedup, sled, fsync), not the generator's.
//! Each client is one gateway of its own store (in-process) and keeps one batch in flight,
//! like a real uplink.

use std::io::Write;
use std::time::{Duration, Instant};

/// Command-line options.
struct Options {
    /// Receiver to load; `None` starts one in-process on a temp dir.
    url: Option<String>,
    /// Store code to post as (with `--url`).
    store: String,
    /// File holding that store's token (with `--url`).
    token_file: Option<String>,
    /// Concurrent clients.
    clients: usize,
    /// Batches per client.
    batches: usize,
    /// Records per batch.
    records: usize,
    /// Sales link to prompts, flows and campaigns (HQ's traceability join works on them).
    linked: bool,
    /// A PostgreSQL URL: the in-process receivers store there.
    postgres: Option<String>,
    /// In-process receivers (with `--postgres`).
    receivers: usize,
    /// The postmaster's pid, to count PostgreSQL's CPU.
    pg_pid: Option<u32>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        url: None,
        store: "WZ-LC-001".to_string(),
        token_file: None,
        clients: 4,
        batches: 100,
        records: 1000,
        linked: false,
        postgres: None,
        receivers: 1,
        pg_pid: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |text: String| {
            text.parse::<usize>()
                .map_err(|_| format!("bad number '{text}'"))
        };
        match flag.as_str() {
            "--url" => options.url = Some(value()?),
            "--store" => options.store = value()?,
            "--token-file" => options.token_file = Some(value()?),
            "--clients" => options.clients = number(value()?)?,
            "--batches" => options.batches = number(value()?)?,
            "--records" => options.records = number(value()?)?,
            "--linked" => options.linked = true,
            "--postgres" => options.postgres = Some(value()?),
            "--receivers" => options.receivers = number(value()?)?,
            "--pg-pid" => options.pg_pid = Some(number(value()?)? as u32),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(options)
}

/// One realistic record (kinds mixed like a busy pharmacy till: mostly scans, then sales and
/// attributions), about 500 bytes. `linked` makes every sale *tracked* for HQ's traceability
/// join: of each 20 records, sales 13 and 14 name the prompts of attributions 17 and 18 (which
/// come after them and carry `opened_at`; only every other 17 is answered, so is evidence),
/// sale 15 is of a flow product and sale 16 names a prompt that never comes (both wait for
/// evidence for good).
fn record(store: &str, gateway: &str, seq: u64, linked: bool) -> String {
    let (kind, data) = match seq % 20 {
        13..=16 if linked => ("sale", {
            let line = match seq % 20 {
                13 | 14 => format!(r#""prompt":"p-{}","campaign":"xinsong-2026q4""#, seq + 4),
                15 => r#""prompt":null,"flow":"rx-5step""#.to_string(),
                _ => format!(r#""prompt":"p-never-{seq}","campaign":"xinsong-2026q4""#),
            };
            format!(
                r#"{{"device":"register-1","station":"till-1","receipt":"R-{seq}","clerk":"c-7","lines":[{{"sku":"6901234567892","name":"参松养心胶囊","qty":1,"unit_price":25.0,"amount":25.0,{line}}}],"total":25.0,"currency":"CNY","text":null}}"#
            )
        }),
        17..=18 if linked => ("attribution", format!(
            r#"{{"prompt":"p-{seq}","campaign":"xinsong-2026q4","station":"till-1","sku":"6901234567892","scan":"{store}/{gateway}/7f3a9c21/{}","question":"推荐话术来源","outcome":"{}","answer":"doctor","answer_label":"医生推荐","channel":"web","clerk":"c-7","opened_at":"2026-11-27T16:01:00.345+08:00","latency_ms":{},"receipt":null}}"#,
            seq - 1,
            if seq % 40 == 17 { "answered" } else { "timeout" },
            3000 + seq % 5000
        )),
        0..=12 => ("scan", format!(
            r#"{{"device":"scanner-1","station":"till-{}","raw":"]E0690123{seq:07}","symbology":"]E0","code":"690123{seq:07}","code_kind":"ean13","gtin":"0690123{seq:07}","ai":null,"expiry":null,"lot":null,"serial":null,"trace_code":null,"error":null,"campaign":null,"answer_code":false}}"#,
            seq % 3
        )),
        13..=16 => ("sale", format!(
            r#"{{"device":"register-1","station":"till-1","receipt":"R-{seq}","clerk":"c-7","lines":[{{"sku":"6901234567892","name":"参松养心胶囊","qty":1,"unit_price":25.0,"amount":25.0,"prompt":null}}],"total":25.0,"currency":"CNY","text":null}}"#
        )),
        17..=18 => ("attribution", format!(
            r#"{{"prompt":"p-{seq}","campaign":"xinsong-2026q4","station":"till-1","sku":"6901234567892","scan":"{store}/{gateway}/7f3a9c21/{}","question":"推荐话术来源","outcome":"{}","answer":"doctor","answer_label":"医生推荐","channel":"web","clerk":"c-7","latency_ms":{},"receipt":null}}"#,
            seq - 1,
            if seq % 40 == 17 { "answered" } else { "timeout" },
            3000 + seq % 5000
        )),
        _ => ("device", r#"{"device":"scanner-1","event":"connected","detail":"/dev/ttyACM0 at 9600 baud, generic-scanner profile"}"#.to_string()),
    };
    format!(
        r#"{{"id":"{store}/{gateway}/7f3a9c21/{seq}","store":"{store}","gateway":"{gateway}","epoch":"7f3a9c21","seq":{seq},"ts":"2026-11-27T16:01:02.345+08:00","clock":{{"boot":"3b1c0e4a-5d2f-4c1e-9a7b-1f2e3d4c5b6a","mono_ms":{},"synced":true}},"kind":"{kind}","data":{data}}}"#,
        123_456 + seq
    )
}

/// The gzip bodies one client posts.
fn bodies(
    store: &str,
    gateway: &str,
    batches: usize,
    records: usize,
    linked: bool,
) -> (Vec<Vec<u8>>, usize) {
    let mut raw_bytes = 0;
    let bodies = (0..batches)
        .map(|batch| {
            let mut text = String::with_capacity(records * 600);
            for n in 0..records {
                let seq = (batch * records + n + 1) as u64;
                text.push_str(&record(store, gateway, seq, linked));
                text.push('\n');
            }
            raw_bytes += text.len();
            let mut gzip =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing into a Vec cannot fail.
            let _ = gzip.write_all(text.as_bytes());
            gzip.finish().unwrap_or_default()
        })
        .collect();
    (bodies, raw_bytes)
}

/// User plus system CPU seconds of process `pid` and its children (by parent pid) so far.
fn tree_cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) in parentheses.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let this: u32 = head
            .split(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let parent: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if this == pid || parent == pid {
            let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (utime + stime) / ticks;
        }
    }
    total
}

/// User plus system CPU seconds this process has used so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass, which is zero-initialised.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options().map_err(|error| anyhow::anyhow!("{error}"))?;
    let dir = tempfile::tempdir()?;
    // (store code, token) per client.
    let mut credentials = Vec::new();
    let mut running = Vec::new();
    let mut urls = Vec::new();
    let url = match &options.url {
        Some(url) => {
            let file = options
                .token_file
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--url needs --token-file"))?;
            let token = std::fs::read_to_string(file)?.trim().to_string();
            credentials = vec![(options.store.clone(), token); options.clients];
            url.clone()
        }
        None => {
            for client in 0..options.clients {
                credentials.push((format!("LOAD-{client:03}"), format!("token-{client}")));
            }
            for receiver in 0..options.receivers.max(1) {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let mut settings = posgw::hq::HqSettings::new(
                    listener.local_addr()?,
                    dir.path().join(format!("data-{receiver}")),
                );
                for (code, token) in &credentials {
                    settings.stores.push(posgw::hq::StoreSettings {
                        code: code.clone(),
                        token: token.clone(),
                    });
                }
                if let Some(url) = &options.postgres {
                    settings.storage = posgw::hq::Storage::Postgres {
                        url: url.clone(),
                        url_file: "--postgres".into(),
                    };
                }
                let hq = posgw::hq::start(settings, listener).await?;
                urls.push(hq.url());
                running.push(hq);
            }
            urls[0].clone()
        }
    };
    if urls.is_empty() {
        urls.push(url.clone());
    }

    eprintln!(
        "generating {} batches of {} records for {} clients...",
        options.batches, options.records, options.clients
    );
    let mut work = Vec::new();
    let (mut raw_total, mut gzip_total) = (0, 0);
    for (client, (store, token)) in credentials.iter().enumerate() {
        let gateway = format!("load-{client}");
        let (bodies, raw) = bodies(
            store,
            &gateway,
            options.batches,
            options.records,
            options.linked,
        );
        raw_total += raw;
        gzip_total += bodies.iter().map(Vec::len).sum::<usize>();
        work.push((token.clone(), bodies));
    }
    let total_records = options.clients * options.batches * options.records;
    eprintln!(
        "{} records, {:.0} bytes each, {:.1} MB raw, {:.1} MB gzip; posting...",
        total_records,
        raw_total as f64 / total_records as f64,
        raw_total as f64 / 1e6,
        gzip_total as f64 / 1e6
    );

    let client = reqwest::Client::new();
    let cpu_before = cpu_seconds();
    let pg_before = options.pg_pid.map(tree_cpu_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client_index, (token, bodies)) in work.into_iter().enumerate() {
        let (client, urls) = (client.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(bodies.len());
            for (batch, body) in bodies.into_iter().enumerate() {
                // Each batch to the next receiver, like a balancer's round robin.
                let url = &urls[(client_index + batch) % urls.len()];
                let sent = Instant::now();
                let response = client
                    .post(format!("{url}/v1/batches"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .header("content-encoding", "gzip")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                let text = response.text().await?;
                anyhow::ensure!(status.is_success(), "batch refused: {status} {text}");
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{} records in {:.2}s: {:.0} records/s, {:.1} MB/s raw; batch latency p50 {:?} p99 {:?} max {:?}",
        total_records,
        elapsed.as_secs_f64(),
        total_records as f64 / elapsed.as_secs_f64(),
        raw_total as f64 / 1e6 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    // CPU time says more than wall time on a shared machine: records/s per busy core.
    println!(
        "cpu {:.2}s ({:.0}% of one core): {:.1} us per record, {:.0} records/s per core{}",
        cpu,
        100.0 * cpu / elapsed.as_secs_f64(),
        cpu * 1e6 / total_records as f64,
        total_records as f64 / cpu,
        if options.url.is_some() {
            " (client only)"
        } else {
            " (receiver and clients)"
        }
    );
    if let (Some(pid), Some(before)) = (options.pg_pid, pg_before) {
        let pg = tree_cpu_seconds(pid) - before;
        println!(
            "PostgreSQL cpu {:.2}s ({:.0}% of one core); receivers and clients {:.2}s ({:.0}%): \
             {:.0}% of the CPU in PostgreSQL",
            pg,
            100.0 * pg / elapsed.as_secs_f64(),
            cpu,
            100.0 * cpu / elapsed.as_secs_f64(),
            100.0 * pg / (pg + cpu)
        );
    }
    // This process's peak memory: the generated bodies and clients, plus the receiver when
    // it runs in-process.
    if let Some(peak) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        })
    {
        println!("peak RSS (VmHWM) {peak}");
    }
    for hq in running {
        let url = hq.url();
        let metrics = client
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        for line in metrics.lines().filter(|line| {
            line.starts_with("posgw_hq_commit_seconds_count")
                || line.starts_with("posgw_hq_commit_seconds_sum")
        }) {
            println!("{line}");
        }
        hq.stop().await?;
    }
    Ok(())
}
