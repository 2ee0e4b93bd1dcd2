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

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

fn ean(base: &str) -> String {
    format!("{base}{}", posgw::decode::check_digit(base.as_bytes()))
}

fn quantiles(label: &str, mut values: Vec<Duration>) {
    values.sort();
    let q = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        values.len(),
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        values[values.len() - 1].as_secs_f64() * 1e3
    );
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
    let bin = std::env::var("POSGW_BIN").unwrap_or_else(|_| "target/release/posgw".into());
    let dir = tempfile::tempdir()?;
    let (mut scanner, slave) = SerialStream::pair()?;
    for fd in [scanner.as_raw_fd(), slave.as_raw_fd()] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    let link = dir.path().join("scanner");
    std::os::unix::fs::symlink(slave.name().ok_or("pty name")?, &link)?;
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
    let mut gateway = Command::new(&bin)
        .args(["run", "-c"])
        .arg(dir.path().join("posgw.toml"))
        .env("RUST_LOG", "warn,posgw::cli=info")
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = gateway.stderr.take().ok_or("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(at) = line.find("api listening on ") {
                let _ = tx.send(line[at + 17..].trim().to_owned());
            }
        }
    });
    let api = rx.recv_timeout(Duration::from_secs(30))?;
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
