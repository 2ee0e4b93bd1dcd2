//! Measures what the ESC/POS printer tap adds between a register and its receipt printer, on a
//! running gateway (the release binary, as deployed):
//! - for every chunk the register writes, the time from the write to the moment the chunk's last
//!   byte arrives on the passthrough pty (where the printer hangs), checking the bytes are the
//!   ones written,
//! - the bytes per second that gives, write after write,
//! - that every receipt became one `sale` record (`posgw_records_total{kind="sale"}` on
//!   `/metrics`), one per paper cut,
//! - the printer's status replies coming back: after each receipt the register polls the printer
//!   [`POLLS`] times (`DLE EOT 1`), the printer answers each poll with a status byte as soon as
//!   it reads it, and the run times the register's poll → the answer at the register (both
//!   passthrough directions) and the printer's answer → the register (the way back alone). The
//!   issue's target: status replies reach the register within 5 ms p99. The answers must not
//!   become receipts: the sale count must still equal the receipts.
//!
//! Each receipt is a Chinese pharmacy receipt as a register sends it: init, Chinese mode, a
//! `GS v 0` raster logo of a few hundred bytes (random data, so every byte value goes through),
//! GB18030 text with `¥`/`￥`, EAN-13 codes, a QR code (`GS ( k`), feed and cut (`GS V 0`). It is
//! written in chunks of 1–64 bytes, as a register's serial driver hands them out; the next chunk is
//! written only once the previous one has reached the printer, so each one meets an idle tap, as
//! at 9600 baud. The issue's target: passthrough adds ≤ 1 ms p99. Prints p50 / p99 / max over all
//! chunks for N receipts (default 500).
//!
//! With `tcp` the same runs through a network printer tap (`transport = "tcp"`): the register
//! connects to the gateway's port and the printer is a TCP listener the gateway forwards to.
//!
//! ```sh
//! cargo build --release && cargo run --release --example tap_latency -- [RECEIPTS] [tcp]
//! ```

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

#[path = "support/mod.rs"]
mod support;
use support::{metric, posgw_bin, pty_at, quantiles, start_gateway, stop};

const ESC: u8 = 0x1b;
const GS: u8 = 0x1d;
const FS: u8 = 0x1c;

/// The largest chunk the register writes at once.
const MAX_CHUNK: usize = 64;

/// Status polls after each receipt.
const POLLS: usize = 10;

/// `DLE EOT 1`: transmit the printer status.
const STATUS_POLL: [u8; 3] = [0x10, 0x04, 0x01];

/// How long a chunk may take to reach the printer before the run counts it as lost.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the till sells: name and spec, unit price in fen, EAN-13 base (12 digits).
const PRODUCTS: &[(&str, u32, &str)] = &[
    ("参松养心胶囊 0.4g*36粒", 2500, "690123456789"),
    ("阿莫西林胶囊 0.25g*24粒", 1250, "692345678901"),
    ("维生素C片 100片", 850, "693456789012"),
    ("布洛芬缓释胶囊 0.3g*20粒", 1880, "690278000123"),
    ("板蓝根颗粒 10g*20袋", 1600, "690278000456"),
    ("复方甘草片 100片", 520, "690278000789"),
    ("医用外科口罩 10只", 990, "690278001012"),
];

fn gb(text: &str) -> Vec<u8> {
    encoding_rs::GB18030.encode(text).0.into_owned()
}

fn ean(base: &str) -> String {
    format!("{base}{}", posgw::decode::check_digit(base.as_bytes()))
}

fn yuan(fen: u32) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Receipt number `n` as the register prints it: logo, header, 2–5 items, totals, QR, cut.
fn receipt(n: usize, rng: &mut StdRng) -> Vec<u8> {
    let number = format!("XS20250101-{n:04}");
    let mut bytes = vec![ESC, b'@', FS, b'&', ESC, b'a', 1];
    // GS v 0: a 40 × 10 byte logo (320 dots × 10 lines) of random bits, so LF, ESC, GS V,
    // XON/XOFF and NUL all occur inside the image and must pass through untouched.
    let (width, height) = (40u16, 10u16);
    bytes.extend([GS, b'v', b'0', 0]);
    bytes.extend(width.to_le_bytes());
    bytes.extend(height.to_le_bytes());
    bytes.extend((0..usize::from(width) * usize::from(height)).map(|_| rng.gen::<u8>()));
    bytes.extend([GS, b'!', 0x11]);
    bytes.extend(gb("康宁大药房（龙港店）\n"));
    bytes.extend([GS, b'!', 0x00, ESC, b'a', 0]);
    bytes.extend(gb(&format!("单号：{number}\n")));
    bytes.extend(gb("收银员：张三    2025-01-01 10:30\n"));
    bytes.extend(gb("--------------------------------\n"));
    bytes.extend(gb("品名/规格          数量    金额\n"));
    let items = rng.gen_range(2..=5);
    let (mut count, mut total) = (0, 0);
    for _ in 0..items {
        let (name, price, code) = PRODUCTS[rng.gen_range(0..PRODUCTS.len())];
        let qty = rng.gen_range(1..=3);
        let amount = price * qty;
        count += qty;
        total += amount;
        if qty == 1 {
            bytes.extend(gb(&format!("{name}  {qty}  {}\n", yuan(amount))));
        } else {
            let line = format!("{name}  {qty}  {}  {}\n", yuan(price), yuan(amount));
            bytes.extend(gb(&line));
        }
        bytes.extend(gb(&format!("{}\n", ean(code))));
    }
    bytes.extend(gb("--------------------------------\n"));
    bytes.extend([ESC, b'E', 1]);
    bytes.extend(gb(&format!("合计：{count}件          ¥{}\n", yuan(total))));
    bytes.extend(gb(&format!("应收：￥{}\n", yuan(total))));
    bytes.extend([ESC, b'E', 0]);
    let paid = total.div_ceil(10_000) * 10_000;
    bytes.extend(gb(&format!(
        "实收：{}   找零：{}\n\n\n",
        yuan(paid),
        yuan(paid - total)
    )));
    bytes.extend(gb("谢谢惠顾，祝您健康！\n"));
    bytes.extend(qr(
        format!("https://fp.example.cn/inv?no={number}").as_bytes()
    ));
    bytes.extend([ESC, b'd', 4, GS, b'V', 0]);
    bytes
}

/// The usual QR sequence: model, size, error level, store data, print.
fn qr(data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![GS, b'(', b'k', 4, 0, 0x31, b'A', b'2', 0];
    bytes.extend([GS, b'(', b'k', 3, 0, 0x31, b'C', 6]);
    bytes.extend([GS, b'(', b'k', 3, 0, 0x31, b'E', b'0']);
    let [pl, ph] = u16::try_from(data.len() + 3)
        .unwrap_or(u16::MAX)
        .to_le_bytes();
    bytes.extend([GS, b'(', b'k', pl, ph, 0x31, b'P', b'0']);
    bytes.extend(data);
    bytes.extend([GS, b'(', b'k', 3, 0, 0x31, b'Q', b'0']);
    bytes
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let receipts: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500)
        .max(1);
    if std::env::args().nth(2).as_deref() == Some("tcp") {
        return over_tcp(receipts).await;
    }
    let bin = posgw_bin();
    let dir = tempfile::tempdir()?;
    let link = dir.path().join("register");
    let (mut register, _slave) = pty_at(&link)?;
    let printer_link = dir.path().join("printer");
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
id = "register-1"
role = "register"
transport = "serial"
station = "till-1"
profile = "escpos-tap"
path = "{link}"
passthrough = "{printer}"
"#,
            data = dir.path().join("data").display(),
            link = link.display(),
            printer = printer_link.display(),
        ),
    )?;
    // A dropped passthrough chunk or a receipt without its cut belongs in the run's output.
    let (mut gateway, api) = start_gateway(
        &bin,
        &dir.path().join("posgw.toml"),
        "warn,posgw::cli=info",
        |line| line.contains("WARN") || line.contains("ERROR"),
    )?;
    let result = async {
        // Wait for the passthrough link, then open it as the printer would.
        let start = Instant::now();
        while !printer_link.exists() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("no passthrough link after 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut printer =
            tokio_serial::new(printer_link.to_string_lossy(), 9600).open_native_async()?;
        measure(&api, &mut register, &mut printer, receipts).await
    }
    .await;
    // Stop first: closing the register's pty under a running gateway makes it log a lost device.
    stop(&mut gateway)?;
    drop(register);
    result
}

/// The same through a network printer tap: the register's TCP connection to the gateway, and
/// the printer's end of the gateway's connection to it.
async fn over_tcp(receipts: usize) -> Result<(), Box<dyn std::error::Error>> {
    let bin = posgw_bin();
    let dir = tempfile::tempdir()?;
    let printer_port = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
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
id = "register-1"
role = "register"
transport = "tcp"
station = "till-1"
profile = "escpos-tap"
listen = "{listen}"
printer_addr = "{printer}"
"#,
            data = dir.path().join("data").display(),
            printer = printer_port.local_addr()?,
        ),
    )?;
    let (mut gateway, api) = start_gateway(
        &bin,
        &dir.path().join("posgw.toml"),
        "warn,posgw::cli=info",
        |line| line.contains("WARN") || line.contains("ERROR"),
    )?;
    let result = async {
        let start = Instant::now();
        let mut register = loop {
            match tokio::net::TcpStream::connect(listen).await {
                Ok(register) => break register,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return Err(format!("the tap does not listen: {error}").into()),
            }
        };
        register.set_nodelay(true)?;
        let (mut printer, _) =
            tokio::time::timeout(Duration::from_secs(10), printer_port.accept()).await??;
        printer.set_nodelay(true)?;
        measure(&api, &mut register, &mut printer, receipts).await
    }
    .await;
    stop(&mut gateway)?;
    result
}

/// Feeds `receipts` receipts from `register` through the tap to `printer` and prints what it
/// measured.
async fn measure(
    api: &str,
    register: &mut (impl AsyncRead + AsyncWrite + Unpin),
    printer: &mut (impl AsyncRead + AsyncWrite + Unpin),
    receipts: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    // Fixed seed: every run sends the same receipts in the same chunks.
    let mut rng = StdRng::seed_from_u64(0x7a9_1a7);
    let mut latencies = Vec::new();
    let mut received = [0u8; MAX_CHUNK];
    let mut bytes_total = 0usize;
    let mut round_trips = Vec::new();
    let mut answers = Vec::new();
    let started = Instant::now();
    for n in 1..=receipts {
        let bytes = receipt(n, &mut rng);
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let size = rng.gen_range(1..=MAX_CHUNK).min(rest.len());
            let (chunk, tail) = rest.split_at(size);
            let written = Instant::now();
            register.write_all(chunk).await?;
            let read = &mut received[..size];
            tokio::time::timeout(CHUNK_TIMEOUT, printer.read_exact(read))
                .await
                .map_err(|_| {
                    format!("receipt {n}: a {size}-byte chunk never reached the printer")
                })??;
            latencies.push(written.elapsed());
            if read != chunk {
                return Err(format!(
                    "receipt {n}: the printer got {read:02x?} for {chunk:02x?} at byte {}",
                    bytes.len() - rest.len()
                )
                .into());
            }
            bytes_total += size;
            rest = tail;
        }
        // The register polls its printer's status; the printer answers each poll at once.
        for poll in 0..POLLS {
            let polled = Instant::now();
            register.write_all(&STATUS_POLL).await?;
            let mut request = [0u8; 3];
            tokio::time::timeout(CHUNK_TIMEOUT, printer.read_exact(&mut request))
                .await
                .map_err(|_| {
                    format!("receipt {n}: status poll {poll} never reached the printer")
                })??;
            if request != STATUS_POLL {
                return Err(
                    format!("receipt {n}: the printer got {request:02x?} for a poll").into(),
                );
            }
            // Online, paper present; a different byte each time so a stale one would show.
            let status = 0x12 | ((poll as u8 & 1) << 5);
            let answered = Instant::now();
            printer.write_all(&[status]).await?;
            let mut heard = [0u8; 1];
            tokio::time::timeout(CHUNK_TIMEOUT, register.read_exact(&mut heard))
                .await
                .map_err(|_| {
                    format!("receipt {n}: status reply {poll} never reached the register")
                })??;
            answers.push(answered.elapsed());
            round_trips.push(polled.elapsed());
            if heard != [status] {
                return Err(format!(
                    "receipt {n}: the register heard {heard:02x?} for status {status:02x}"
                )
                .into());
            }
        }
    }
    let elapsed = started.elapsed();
    quantiles("chunk write -> last byte at printer", latencies);
    quantiles(
        "status poll at the register -> reply at the register",
        round_trips,
    );
    quantiles("status reply at the printer -> at the register", answers);
    println!(
        "{receipts} receipts, {bytes_total} bytes in {:.3} s: {:.0} bytes/s (9600 baud is 960 bytes/s)",
        elapsed.as_secs_f64(),
        bytes_total as f64 / elapsed.as_secs_f64()
    );

    // Each cut closes a receipt; its sale is journalled just after, so give it a moment.
    let client = reqwest::Client::new();
    let series = "posgw_records_total{kind=\"sale\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sales = metric(&client, api, series).await;
    while sales < receipts as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sales = metric(&client, api, series).await;
    }
    let bad_frames = metric(
        &client,
        api,
        "posgw_bad_frames_total{device=\"register-1\"}",
    )
    .await;
    println!("sales recorded: {sales} of {receipts} (bad frames: {bad_frames})");
    if sales != receipts as f64 {
        return Err(format!("the gateway recorded {sales} sales for {receipts} receipts").into());
    }
    Ok(())
}
