//! Load generator for the journal: appends scan-like records (about 300 bytes of `data` each)
//! from a few concurrent tasks as fast as it can into a journal in a temporary folder, and
//! reports appends per second, the time from the append call to `Durable::wait` resolving, and
//! the process's peak and current resident memory.
//!
//! ```text
//! cargo run --release --example journal_load -- [RECORDS] [TASKS] [FLUSH_MS] [BATCH] [DRAIN]
//! ```
//! Defaults: 1,000,000 records, 4 tasks, flush = 50ms, batch 1, drain 1.
//!
//! With `BATCH` = 1 every record is one `JournalHandle::append` call (single-append mode: what
//! the serial devices do). With `BATCH` > 1 each task hands its records to
//! `JournalHandle::append_batch` that many at a time (batch mode: what a producer receiving
//! bursts, like MQTT ingest, can do); each record's latency is then its batch's, from the call
//! to the batch's `durable` resolving.
//!
//! With `DRAIN` = 1 (the default) the backlog is then read back and removed the way the uplink
//! does (`read` a page, `remove_through` it), reporting that rate and the peak RSS of that phase
//! alone (the peak is reset through `/proc/self/clear_refs` first).
use std::time::{Duration, Instant};

use posgw::journal::{self, Durable, JournalConfig};
use posgw::record::{Data, Kind};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Reads positional argument `index`, or `default`.
fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// A scan-like `data` object of roughly 300 bytes, different for every record.
fn scan_data(task: u64, i: u64) -> Data {
    let text = format!(
        concat!(
            r#"{{"device":"scanner-{task}","raw":"]d2010690123456789217261231104L{i:08}","#,
            r#""symbology":"]d2","code":"010690123456789217261231104L{i:08}","code_kind":"gs1","#,
            r#""gtin":"06901234567892","ai":{{"01":"06901234567892","17":"261231","10":"4L{i:08}"}},"#,
            r#""expiry":"2026-12-31","lot":"4L{i:08}","serial":null,"error":null,"campaign":null}}"#
        ),
        task = task,
        i = i
    );
    RawValue::from_string(text)
        .expect("generated data is valid json")
        .into()
}

/// The value at quantile `q` of sorted `values` (microseconds), as a duration.
fn quantile(values: &[u32], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    Duration::from_micros(u64::from(values[index]))
}

/// A `VmHWM`-style line of /proc/self/status, in MiB ("?" where it cannot be read).
fn status_mib(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with(field))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} MiB", kib / 1024.0))
        })
        .unwrap_or_else(|| "?".to_string())
}

/// What a producer hands its collector: when the append call started, how many records it
/// covered, and what to wait on.
type Pending = (Instant, u32, Durable);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records = arg(1, 1_000_000);
    let tasks = arg(2, 4).max(1);
    let flush = Duration::from_millis(arg(3, 50));
    let batch = arg(4, 1).clamp(1, journal::MAX_BATCH_RECORDS as u64);
    let dir = tempfile::tempdir()?;
    let opened = journal::open(JournalConfig {
        data_dir: dir.path().to_path_buf(),
        store: "WZ-LC-001".to_string(),
        gateway: "gw-load".to_string(),
        flush,
        version: env!("CARGO_PKG_VERSION"),
        max_bytes: None,
    })
    .await?;
    let handle = opened.handle;
    let mode = if batch == 1 {
        "single-append (append)".to_string()
    } else {
        format!("batch-append (append_batch of {batch})")
    };
    println!(
        "journal_load: {records} records, {tasks} tasks, flush {flush:?}, {mode}, in {}",
        dir.path().display()
    );

    let started = Instant::now();
    let mut producers = Vec::new();
    let mut collectors = Vec::new();
    for task in 0..tasks {
        let count = records / tasks + u64::from(task < records % tasks);
        // Each producer hands (start time, records, Durable) to its own collector, which awaits
        // them in order; durability is monotonic, so in-order waiting measures each latency.
        let (send, mut receive) = mpsc::unbounded_channel::<Pending>();
        let handle = handle.clone();
        producers.push(tokio::spawn(async move {
            let mut bytes = 0usize;
            let began = Instant::now();
            let mut i = 0;
            while i < count {
                // Serialising `data` is the producer's job in the gateway too, so it is timed.
                if batch == 1 {
                    let data = scan_data(task, i);
                    bytes += data.as_bytes().len();
                    let at = Instant::now();
                    let appended = handle.append(Kind::Scan, data).await.expect("append");
                    send.send((at, 1, appended.durable))
                        .expect("collector alive");
                    i += 1;
                } else {
                    let n = batch.min(count - i);
                    let data: Vec<Data> = (i..i + n).map(|j| scan_data(task, j)).collect();
                    bytes += data.iter().map(|d| d.as_bytes().len()).sum::<usize>();
                    let at = Instant::now();
                    let appended = handle
                        .append_batch(Kind::Scan, data)
                        .await
                        .expect("append_batch");
                    send.send((at, n as u32, appended.durable))
                        .expect("collector alive");
                    i += n;
                }
            }
            (bytes, began.elapsed())
        }));
        collectors.push(tokio::spawn(async move {
            // Microseconds, one entry per record: 4 bytes each keeps the generator's own
            // memory small next to the journal's.
            let mut latencies: Vec<u32> = Vec::with_capacity(count as usize);
            while let Some((at, n, durable)) = receive.recv().await {
                durable.wait().await.expect("durable");
                let micros = u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX);
                latencies.resize(latencies.len() + n as usize, micros);
            }
            latencies
        }));
    }
    let mut data_bytes = 0usize;
    let mut slowest_producer = Duration::ZERO;
    for producer in producers {
        let (bytes, took) = producer.await?;
        data_bytes += bytes;
        slowest_producer = slowest_producer.max(took);
    }
    let appended_in = started.elapsed();
    let mut latencies = Vec::with_capacity(records as usize);
    for collector in collectors {
        latencies.extend(collector.await?);
    }
    let durable_in = started.elapsed();
    let stats = handle.stats();
    let append_peak = status_mib("VmHWM");
    let drained = if arg(5, 1) == 1 {
        // Reset VmHWM so the drain's own peak is reported.
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let drain_started = Instant::now();
        let mut after = 0;
        let mut count = 0usize;
        loop {
            let page = handle.read(after, 1000, 1 << 20).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            count += page.len();
            handle.remove_through(after).await?;
        }
        let took = drain_started.elapsed();
        let peak = if reset {
            status_mib("VmHWM")
        } else {
            "?".to_string()
        };
        Some((count, took, peak))
    } else {
        None
    };
    let close_started = Instant::now();
    handle.close().await?;
    let closed_in = close_started.elapsed();
    latencies.sort_unstable();

    let journal_bytes = folder_bytes(&dir.path().join("journal"));
    println!(
        "appended {} records ({:.0} bytes of data on average) in {:.2}s: {:.0} appends/s",
        stats.appended_total,
        data_bytes as f64 / records.max(1) as f64,
        appended_in.as_secs_f64(),
        records as f64 / appended_in.as_secs_f64()
    );
    println!(
        "slowest producer (building data + appending): {:.2}s",
        slowest_producer.as_secs_f64()
    );
    println!(
        "all durable after {:.2}s; append->durable p50 {:?}, p99 {:?}, max {:?}",
        durable_in.as_secs_f64(),
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0)
    );
    println!(
        "backlog {} records / {} bytes; journal files {} bytes; close took {:?}",
        stats.backlog_records, stats.backlog_bytes, journal_bytes, closed_in
    );
    println!(
        "memory: peak RSS (VmHWM) while appending {append_peak}, RSS after close {}",
        status_mib("VmRSS")
    );
    if let Some((count, took, peak)) = drained {
        println!(
            "drained {count} records (read 1000 + remove_through) in {:.2}s: {:.0} records/s; \
             peak RSS while draining {peak}",
            took.as_secs_f64(),
            count as f64 / took.as_secs_f64().max(f64::EPSILON)
        );
    }
    Ok(())
}

/// Bytes of the files under `dir`, recursively (the record log's segments and sled's files).
fn folder_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
