//! Measures MQTT QoS 1 ingest into the journal: a real mosquitto on loopback, the release
//! gateway with one `mqtt-scanner` device, and a publisher that sends N scans with QoS 1 as fast
//! as the broker takes them. Reports messages per second from the first publish until the
//! gateway's journal holds all N as durable records (every one acknowledged to the broker only
//! then), and the gateway's CPU time per 100k messages.
//!
//! Two modes:
//! - `live`: the publisher and the gateway run at once (three processes on the machine's cores:
//!   the publisher's own speed is part of the figure);
//! - `backlog`: the N messages wait in the broker for the gateway's persistent session while it
//!   is stopped; the clock runs from the gateway's start until all N are durable. This is the
//!   gateway's own ingest rate (and what happens after an outage).
//!
//! A fourth argument `hq` measures the whole pipeline instead: the gateway also forwards every
//! record (HTTP, gzip) to a `posgw hq` child, and the clock stops once HQ acknowledged all N
//! (the gateway's `posgw_uplink_sent_records_total`). The gateway's CPU per 100k and its peak
//! RSS then cover MQTT input, journal and uplink. Batches are those of the side-by-side load
//! with Fluent Bit in the README's figures: 2,000 records or 200 ms, gzip. Every message is
//! recorded exactly once (the journal keeps each message's identity with its record).
//!
//! The broker allows many unacknowledged deliveries per client (`max_inflight_messages 0`):
//! with mosquitto's default of 20, ingest is capped at 20 messages per journal flush.
//!
//! ```sh
//! cargo build --release && cargo run --release --example mqtt_ingest -- [MESSAGES] [FLUSH] [live|backlog] [hq]
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::{Connect, Packet, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_seconds, metric, posgw_bin, status_kib, stop};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let messages: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let flush = std::env::args().nth(2).unwrap_or_else(|| "50ms".into());
    let bin = posgw_bin();
    let dir = tempfile::tempdir()?;
    let port = free_port();
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n\
             max_queued_messages 0\nmax_queued_bytes 0\n"
        ),
    )?;
    let mosquitto = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("mosquitto");
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(dir.path().join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "no broker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The whole pipeline: a `posgw hq` child and an uplink to it.
    let with_hq = std::env::args().nth(4).as_deref() == Some("hq");
    let mut hq = None;
    let mut uplink = String::new();
    if with_hq {
        let (child, endpoint, token) = support::start_hq(&bin, dir.path(), "BENCH-1")?;
        hq = Some(child);
        uplink = format!(
            "[uplink]\nendpoint = \"{endpoint}\"\ntoken_file = \"{}\"\ncompression = \"gzip\"\n\
             batch_max_records = 2000\nbatch_max_age = \"200ms\"\n",
            token.display()
        );
    }
    std::fs::write(
        dir.path().join("posgw.toml"),
        format!(
            r#"[gateway]
store = "BENCH-1"
id = "gw-bench"
data_dir = "{data}"
flush = "{flush}"
[api]
listen = "127.0.0.1:0"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[[device]]
id = "mqtt-scanner-1"
role = "scanner"
transport = "mqtt"
station = "till-1"
profile = "mqtt-scanner"
topic = "bench/till-1/scanner"
{uplink}"#,
            data = dir.path().join("data").display(),
        ),
    )?;
    let config = dir.path().join("posgw.toml");
    let client = reqwest::Client::new();
    let mode = std::env::args().nth(3).unwrap_or_else(|| "live".into());
    let rate: Option<f64> = std::env::args()
        .find_map(|arg| arg.strip_prefix("rate=").and_then(|rate| rate.parse().ok()));
    let (mut gateway, mut api) = start_gateway(&bin, &config, &client).await?;
    if mode == "backlog" {
        // The session and its subscription exist now; stop, and let the messages queue.
        stop(&mut gateway)?;
    }
    let mut cpu_before = cpu_seconds(gateway.id());
    let publishing = tokio::spawn(publish(port, messages, rate));
    let mut began = Instant::now();
    let published = publishing.await??;
    if mode == "backlog" {
        // The clock includes the gateway's start: conservative by its few milliseconds.
        began = Instant::now();
        (gateway, api) = start_gateway(&bin, &config, &client).await?;
        cpu_before = 0.0;
    }
    // Done when every scan is in the journal and durable (and, with HQ, acknowledged by HQ).
    let scans = "posgw_records_total{kind=\"scan\"}";
    let mut peak_rss = 0u64;
    loop {
        peak_rss = peak_rss.max(status_kib(gateway.id(), "VmRSS:"));
        if with_hq {
            if metric(&client, &api, "posgw_uplink_sent_records_total").await as u64 >= messages {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let recorded = metric(&client, &api, scans).await as u64;
        if recorded >= messages {
            let body = client.get(format!("{api}/api/v1/status")).send().await?;
            let status: serde_json::Value = body.json().await?;
            let journal = &status["journal"];
            if journal["durable_seq"].as_u64() >= journal["next_seq"].as_u64().map(|n| n - 1) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = began.elapsed();
    let cpu = cpu_seconds(gateway.id()) - cpu_before;
    let hwm = status_kib(gateway.id(), "VmHWM:");
    println!(
        "mqtt ingest ({mode}{}): {messages} QoS 1 messages (flush {flush}) in {:.2} s = {:.0} msg/s \
         (publishing took {:.2} s); gateway CPU {:.2} s per 100k messages; gateway RSS peak {:.1} \
         MiB (sampled {:.1} MiB)",
        if with_hq { ", to posgw hq" } else { "" },
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        published.as_secs_f64(),
        cpu / messages as f64 * 100_000.0,
        hwm as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
    );
    if let Some(mut hq) = hq {
        let _ = hq.kill();
        let _ = hq.wait();
    }
    stop(&mut gateway)?;
    broker.kill()?;
    broker.wait()?;
    Ok(())
}

/// Starts `posgw run -c CONFIG`; returns it and its API address once its MQTT device is up.
/// `POSGW_BENCH_LOG` sets its `RUST_LOG` and shows its log.
async fn start_gateway(
    bin: &str,
    config: &std::path::Path,
    client: &reqwest::Client,
) -> Result<(std::process::Child, String), Box<dyn std::error::Error>> {
    let show = std::env::var_os("POSGW_BENCH_LOG").is_some();
    let log = std::env::var("POSGW_BENCH_LOG").unwrap_or_else(|_| "warn,posgw::cli=info".into());
    let (gateway, api) = support::start_gateway(bin, config, &log, move |_| show)?;
    let series = "posgw_device_connected{device=\"mqtt-scanner-1\"}";
    while metric(client, &api, series).await < 1.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((gateway, api))
}

/// Most messages the publisher leaves unacknowledged (packet ids are 16 bits).
const PUBLISH_WINDOW: u64 = 30_000;

/// Publishes `messages` scans with QoS 1 to the broker on `port`, `rate` a second or as fast as
/// the broker takes them, and returns how long that took once the broker acknowledged all.
/// Encoded with rumqttc's MQTT codec and written many packets at a time: a client library that
/// writes and flushes each publish on its own would be the limit, not the gateway.
async fn publish(port: u16, messages: u64, rate: Option<f64>) -> Result<Duration, String> {
    let failed = |error: &dyn std::fmt::Display| format!("publisher: {error}");
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| failed(&e))?;
    stream.set_nodelay(true).map_err(|e| failed(&e))?;
    let (mut reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    let mut connect = Connect::new("bench-publisher");
    connect.keep_alive = 60;
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .map_err(|e| failed(&e))?;
    writer.write_all(&out).await.map_err(|e| failed(&e))?;
    out.clear();
    // PUBACKs counted as they come.
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
    let acks = tokio::spawn(async move {
        let mut input = BytesMut::with_capacity(64 * 1024);
        let mut count = 0u64;
        while count < messages {
            if reader
                .read_buf(&mut input)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("the broker closed the publisher's connection".to_string());
            }
            loop {
                match Packet::read(&mut input, 1024 * 1024) {
                    Ok(Packet::PubAck(_)) => count += 1,
                    Ok(_) => {}
                    Err(rumqttc::Error::InsufficientBytes(_)) => break,
                    Err(error) => return Err(format!("publisher: {error}")),
                }
            }
            acked_tx.send_replace(count);
        }
        Ok::<_, String>(())
    });
    let began = Instant::now();
    // Paced per millisecond (the timer's resolution) when a rate is given.
    let chunk = rate.map_or(500, |rate| ((rate / 1000.0).ceil() as u64).max(1));
    let mut sent = 0u64;
    while sent < messages {
        acked
            .wait_for(|&acked| sent - acked < PUBLISH_WINDOW)
            .await
            .map_err(|_| "the publisher's acknowledgements stopped".to_string())?;
        if let Some(rate) = rate {
            tokio::time::sleep_until((began + Duration::from_secs_f64(sent as f64 / rate)).into())
                .await;
        }
        for i in sent..(sent + chunk).min(messages) {
            let mut publish = Publish::new(
                "bench/till-1/scanner",
                QoS::AtLeastOnce,
                format!("]C0BENCH-{i:09}"),
            );
            publish.pkid = (i % 60_000 + 1) as u16;
            Packet::Publish(publish)
                .write(&mut out, usize::MAX)
                .map_err(|e| failed(&e))?;
        }
        writer.write_all(&out).await.map_err(|e| failed(&e))?;
        out.clear();
        sent = (sent + chunk).min(messages);
    }
    acks.await.map_err(|e| failed(&e))??;
    Ok(began.elapsed())
}
