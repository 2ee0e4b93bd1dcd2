//! Measures the consultation path of a running gateway (the release binary, as deployed), per
//! consultation:
//! - a flow product's scan is held; an ordinary scan right behind it must still pass: last byte
//!   written to the scanner's pty → the same bytes on the passthrough pty ("ordinary scan while
//!   one is held");
//! - a step answered (`POST …/steps/consult`) → its `event: consultation` on the SSE stream
//!   (the event is sent once the `consultation_step` record is durable);
//! - the releasing step answered (`POST …/steps/symptoms`) → the held scan's bytes on the
//!   passthrough pty (this includes the HTTP request and the record's fsync: an upper bound of
//!   "released after durable"), and the same step's SSE event;
//!
//! then closes it, over N consultations, and prints p50 / p99 / max.
//!
//! ```sh
//! cargo build --release && cargo run --release --example consult_latency -- [CONSULTATIONS]
//! ```

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

#[path = "support/mod.rs"]
mod support;
use support::{posgw_bin, pty_at, quantiles, start_gateway};

/// Reads SSE blocks until an `event: consultation` whose data contains `needle` arrives;
/// returns its data.
async fn next_consultation(
    response: &mut reqwest::Response,
    buffer: &mut String,
    needle: &str,
) -> String {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.contains("event: consultation") && block.contains(needle) {
                return block;
            }
        }
        let chunk = response.chunk().await.expect("sse read").expect("sse open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn field<'a>(block: &'a str, name: &str) -> &'a str {
    block
        .split(&format!("\"{name}\":\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
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
[[flow]]
id = "rx-5step"
skus = ["6901234567892"]
steps = [ {{ key = "consult", label = "客户问诊" }},
          {{ key = "symptoms", label = "症状记录", choose = ["高血压", "失眠"], multi = true }},
          {{ key = "recommend", label = "药品推荐", auto = "scan" }},
          {{ key = "guidance", label = "用药指导" }} ]
hold = "recommend"
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
    let step = |id: &str, key: &str, body: &'static str| {
        client
            .post(format!("{api}/api/v1/consultations/{id}/steps/{key}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let held = b"]E06901234567892\r\n";
    let mut ordinary_while_held = Vec::with_capacity(rounds);
    let mut step_to_sse = Vec::with_capacity(rounds);
    let mut releasing_step_to_pos = Vec::with_capacity(rounds);
    let mut releasing_step_to_sse = Vec::with_capacity(rounds);
    let mut received = [0u8; 64];
    for i in 0..rounds {
        scanner.write_all(held).await?;
        let block = next_consultation(&mut events, &mut buffer, "\"held\":{").await;
        let id = field(&block, "id").to_owned();
        // An ordinary scan while the product's scan is held.
        let frame = format!("]E0400638{:05}\r\n", i % 100_000);
        scanner.write_all(frame.as_bytes()).await?;
        let written = Instant::now();
        pos.read_exact(&mut received[..frame.len()]).await?;
        ordinary_while_held.push(written.elapsed());

        let sent = Instant::now();
        let answered = step(&id, "consult", "{}");
        let (answer, _) = tokio::join!(answered, async {
            next_consultation(&mut events, &mut buffer, "\"key\":\"consult\",\"label\":\"客户问诊\",\"choose\":[],\"multi\":false,\"auto\":null,\"hold\":false,\"at\":\"").await;
            step_to_sse.push(sent.elapsed());
        });
        answer?.error_for_status()?;

        let sent = Instant::now();
        let answered = step(&id, "symptoms", r#"{"values":["失眠"]}"#);
        let read = &mut received[..held.len()];
        let (answer, _, _) = tokio::join!(
            answered,
            async {
                pos.read_exact(read).await.expect("held scan");
                releasing_step_to_pos.push(sent.elapsed());
            },
            async {
                next_consultation(&mut events, &mut buffer, "\"released_by\":\"steps\"").await;
                releasing_step_to_sse.push(sent.elapsed());
            }
        );
        answer?.error_for_status()?;
        assert_eq!(
            &received[..held.len()],
            held,
            "the held scan, byte for byte"
        );
        client
            .post(format!("{api}/api/v1/consultations/{id}/close"))
            .header("content-type", "application/json")
            .body(r#"{"outcome":"completed"}"#)
            .send()
            .await?
            .error_for_status()?;
    }
    let _ = gateway.kill();
    let _ = gateway.wait();
    quantiles(
        "ordinary scan -> passthrough while one is held",
        ordinary_while_held,
    );
    quantiles(
        "step answered -> durable -> SSE consultation event",
        step_to_sse,
    );
    quantiles(
        "releasing step answered -> held scan on the POS",
        releasing_step_to_pos,
    );
    quantiles(
        "releasing step answered -> SSE consultation event",
        releasing_step_to_sse,
    );
    Ok(())
}
