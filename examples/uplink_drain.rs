//! Measures draining a journal backlog to HQ: fills a journal with N scan records (gateway
//! stopped), starts an HQ receiver and `posgw run` on that journal, and reports how fast the
//! gateway process empties its backlog, with its CPU time and peak RSS.
//!
//! ```sh
//! cargo build --release && cargo run --release --example uplink_drain -- [RECORDS] [COMPRESSION] [HQ]
//! ```
//! Defaults: 1,000,000 records, gzip, HQ = `sink`. `HQ` is `sink` (a minimal in-process receiver
//! that decompresses, counts and answers 200, so only the gateway is measured) or `posgw` (a
//! `posgw hq` child process with fsync and dedup: the whole chain).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use posgw::journal::{self, JournalConfig};
use posgw::record::{Data, Kind};
use serde_json::value::RawValue;

#[path = "support/mod.rs"]
mod support;

fn scan_data(i: u64) -> Data {
    let text = format!(
        concat!(
            r#"{{"device":"scanner-1","station":"till-1","raw":"]d2010690123456789217261231104L{i:08}","#,
            r#""symbology":"]d2","code":"010690123456789217261231104L{i:08}","code_kind":"gs1","#,
            r#""gtin":"06901234567892","ai":{{"01":"06901234567892","17":"261231","10":"4L{i:08}"}},"#,
            r#""expiry":"2026-12-31","lot":"4L{i:08}","serial":null,"trace_code":null,"error":null,"campaign":null,"answer_code":false}}"#
        ),
        i = i
    );
    RawValue::from_string(text).expect("valid json").into()
}

async fn sink(count: Arc<AtomicU64>, headers: HeaderMap, body: Bytes) -> &'static str {
    let mut text = Vec::new();
    match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text);
        }
        Some("zstd") => text = zstd::stream::decode_all(&body[..]).unwrap_or_default(),
        _ => text = body.to_vec(),
    }
    let lines = text.iter().filter(|b| **b == b'\n').count() as u64;
    count.fetch_add(lines, Ordering::Relaxed);
    r#"{"accepted":1,"duplicates":0}"#
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let compression = args.next().unwrap_or_else(|| "gzip".into());
    let hq_kind = args.next().unwrap_or_else(|| "sink".into());
    let bin = support::posgw_bin();
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");

    // 1. The backlog, written as the gateway would have written it.
    let fill = Instant::now();
    let opened = journal::open(JournalConfig {
        data_dir: data_dir.clone(),
        store: "WZ-LC-001".into(),
        gateway: "gw-drain".into(),
        flush: Duration::from_millis(50),
        version: env!("CARGO_PKG_VERSION"),
        max_bytes: None,
    })
    .await?;
    let handle = opened.handle;
    for i in 0..records {
        handle.append(Kind::Scan, scan_data(i)).await?;
    }
    handle.close().await?;
    println!("filled {records} records in {:.1?}", fill.elapsed());

    // 2. HQ.
    let mut hq_child = None;
    let received = Arc::new(AtomicU64::new(0));
    let (endpoint, token) = if hq_kind == "posgw" {
        let (child, endpoint, token) = support::start_hq(&bin, dir.path(), "WZ-LC-001")?;
        hq_child = Some(child);
        (endpoint, token)
    } else {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let count = received.clone();
        let app = axum::Router::new().route(
            "/v1/batches",
            axum::routing::post(move |headers, body| sink(count.clone(), headers, body)),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let token = dir.path().join("hq.token");
        std::fs::write(&token, "drain-token\n")?;
        (format!("http://{addr}/v1/batches"), token)
    };

    // 3. The gateway, with no devices: it only drains.
    let config = dir.path().join("posgw.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nstore = \"WZ-LC-001\"\nid = \"gw-drain\"\ndata_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[uplink]\nendpoint = \"{endpoint}\"\ntoken_file = \"{}\"\ncompression = \"{compression}\"\n",
            data_dir.display(),
            token.display()
        ),
    )?;
    let started = Instant::now();
    let mut gateway = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = gateway.id();
    // The API address is printed on stderr; read it to poll the status.
    let stderr = gateway.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("gateway: {line}");
            }
            if let Some(at) = line.find("api listening on ") {
                let _ = tx.send(line[at + 17..].trim().to_owned());
            }
        }
    });
    let api = rx.recv_timeout(Duration::from_secs(60))?;
    let client = reqwest::Client::new();
    let mut peak_rss = 0;
    loop {
        peak_rss = peak_rss.max(support::status_kib(pid, "VmRSS:"));
        let body = client
            .get(format!("{api}/api/v1/status"))
            .send()
            .await?
            .text()
            .await?;
        let status: serde_json::Value = serde_json::from_str(&body)?;
        // Two records of the gateway's own (started, and after a restart none) may remain.
        if status["journal"]["backlog_records"]
            .as_u64()
            .unwrap_or(u64::MAX)
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let cpu = support::cpu_seconds(pid);
    let hwm = support::status_kib(pid, "VmHWM:");
    let _ = gateway.kill();
    let _ = gateway.wait();
    if let Some(mut hq) = hq_child {
        let _ = hq.kill();
        let _ = hq.wait();
    }
    println!(
        "drained {records} records ({compression}, HQ {hq_kind}) in {:.2} s = {:.0} records/s; gateway cpu {:.2} s ({:.2} s per 100k); rss peak {:.1} MiB (sampled {:.1} MiB)",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        cpu,
        cpu * 100_000.0 / records as f64,
        hwm as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    if hq_kind == "sink" {
        let got = received.load(Ordering::Relaxed);
        println!("sink received {got} records");
        // A journal the gateway could not open would be replaced and "drained" at once.
        if got < records {
            return Err(format!("the sink received {got} of {records} records").into());
        }
    }
    Ok(())
}
