//! Measures the prompt path of a running gateway (the release binary, as deployed):
//! - from the last byte of a targeted frame written to the scanner's pty to the `prompt` event
//!   arriving on the SSE stream (`/api/v1/events`),
//! - from the last byte of a frame to the same bytes arriving on the passthrough pty, for
//!   targeted scans (a prompt opens) and for ordinary ones,
//!
//! over N scans each, and prints p50 / p99 / max.
//!
//! ```sh
//! cargo build --release && cargo run --release --example prompt_latency -- [SCANS]
//! ```

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

#[path = "support/mod.rs"]
mod support;
use support::{posgw_bin, pty_at, quantiles, start_gateway};

fn ean(base: &str) -> String {
    format!("{base}{}", posgw::decode::check_digit(base.as_bytes()))
}

/// Reads SSE blocks until an `event: prompt` arrives.
async fn next_prompt(response: &mut reqwest::Response, buffer: &mut String) -> String {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.contains("event: prompt") || block.contains("event:prompt") {
                return block;
            }
        }
        let chunk = response.chunk().await.expect("sse read").expect("sse open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scans: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let bin = posgw_bin();
    let dir = tempfile::tempdir()?;
    let link = dir.path().join("scanner");
    let (mut scanner, _slave) = pty_at(&link)?;
    let pos_link = dir.path().join("pos");
    std::fs::write(
        dir.path().join("posgw.toml"),
        format!(
            r#"[gateway]
store = "BENCH-1"
id = "gw-bench"
data_dir = "{data}"
[api]
listen = "127.0.0.1:0"
[[device]]
id = "scanner-1"
role = "scanner"
transport = "serial"
station = "till-1"
profile = "generic-scanner"
path = "{link}"
passthrough = "{pos}"
[[campaign]]
id = "bench"
skus = ["690123456*"]
question = "推荐话术来源"
options = [ {{ key = "doctor", label = "医生推荐" }}, {{ key = "poster", label = "海报引导" }} ]
timeout = "600s"
[answer_codes]
"ATTR-DOCTOR" = "doctor"
"#,
            data = dir.path().join("data").display(),
            link = link.display(),
            pos = pos_link.display(),
        ),
    )?;
    let (mut gateway, api) = start_gateway(
        &bin,
        &dir.path().join("posgw.toml"),
        "warn,posgw::cli=info",
        |_| false,
    )?;
    // Wait for the passthrough link, then open it as the POS would.
    let start = Instant::now();
    while !pos_link.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no passthrough link"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pos = tokio_serial::new(pos_link.to_string_lossy(), 9600).open_native_async()?;
    let client = reqwest::Client::new();
    let mut events = client
        .get(format!("{api}/api/v1/events?station=till-1"))
        .send()
        .await?;
    let mut buffer = String::new();

    let mut to_prompt = Vec::with_capacity(scans);
    let mut passthrough_targeted = Vec::with_capacity(scans);
    let mut passthrough_plain = Vec::with_capacity(scans);
    let mut received = [0u8; 64];
    for i in 0..scans {
        // A targeted scan: a different product each time, so each opens its own prompt.
        let frame = format!("]E0{}\r\n", ean(&format!("690123456{:03}", i % 1000)));
        scanner.write_all(frame.as_bytes()).await?;
        let written = Instant::now();
        let read = &mut received[..frame.len()];
        let (prompt_at, pos_at) = tokio::join!(
            async {
                let block = next_prompt(&mut events, &mut buffer).await;
                (Instant::now(), block)
            },
            async {
                pos.read_exact(read).await.expect("passthrough read");
                Instant::now()
            }
        );
        to_prompt.push(prompt_at.0 - written);
        passthrough_targeted.push(pos_at - written);
        // Answer it (untimed) so the station's queue stays short, as at a real counter.
        let id = prompt_at
            .1
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or("prompt id")?
            .to_owned();
        client
            .post(format!("{api}/api/v1/prompts/{id}/answer"))
            .header("content-type", "application/json")
            .body(r#"{"option":"doctor"}"#)
            .send()
            .await?;

        // An ordinary scan: only the passthrough.
        let frame = format!("]E0{}\r\n", ean(&format!("690278{:06}", i)));
        scanner.write_all(frame.as_bytes()).await?;
        let written = Instant::now();
        pos.read_exact(&mut received[..frame.len()]).await?;
        passthrough_plain.push(written.elapsed());
    }
    let _ = gateway.kill();
    let _ = gateway.wait();
    quantiles("last byte -> SSE prompt event", to_prompt);
    quantiles(
        "last byte -> passthrough (targeted scan)",
        passthrough_targeted,
    );
    quantiles(
        "last byte -> passthrough (ordinary scan)",
        passthrough_plain,
    );
    Ok(())
}
