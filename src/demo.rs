//! `posgw demo`: a simulated store on this machine.
//!
//! Creates a pseudo-terminal scanner, writes a store configuration for it into the demo's data
//! folder, and runs the real gateway (`gateway::run`) on it while a simulated clerk scans a
//! pharmacy's products: EAN-13 boxes, GS1 DataMatrix packs with lot and expiry, and 20-digit
//! China drug traceability codes, with the odd misread. Everything the gateway does is the same
//! code path as `posgw run`; only the scanner is simulated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio_serial::{SerialPort, SerialStream};

/// Products on the demo pharmacy's shelves: (name, GTIN-13 without check digit).
const PRODUCTS: &[(&str, &str)] = &[
    ("参松养心胶囊 0.4g×36粒", "690123456789"),
    ("阿莫西林胶囊 0.25g×24粒", "690278810012"),
    ("布洛芬缓释胶囊 0.3g×20粒", "690432160025"),
    ("维生素C片 100mg×100片", "690512300031"),
    ("感冒灵颗粒 10g×9袋", "690198760048"),
    ("复方甘草片 100片", "690334450057"),
    ("板蓝根颗粒 10g×20袋", "690223340063"),
    ("氯雷他定片 10mg×6片", "690876540071"),
    ("蒙脱石散 3g×10袋", "690765430086"),
    ("奥美拉唑肠溶胶囊 20mg×14粒", "690654320094"),
    ("医用外科口罩 10只", "690543210109"),
    ("碘伏消毒液 100ml", "690432100115"),
];

/// The store configuration the demo runs.
fn demo_config(dir: &Path, listen: &str) -> String {
    format!(
        r#"# Written by `posgw demo`: a simulated store.
[gateway]
store = "DEMO-001"
id = "gw-demo"
data_dir = "{data}"
flush = "50ms"

[api]
listen = "{listen}"

[[device]]
id = "scanner-1"
role = "scanner"
transport = "serial"
station = "till-1"
profile = "generic-scanner"
path = "{scanner}"
passthrough = "{pos}"
"#,
        data = dir.join("data").display(),
        scanner = dir.join("dev").join("scanner-1").display(),
        pos = dir.join("dev").join("pos-scanner-1").display(),
    )
}

/// Runs the demo until Ctrl-C / SIGTERM or until `run_for` has passed.
pub async fn run(data: Option<PathBuf>, run_for: Option<Duration>) -> anyhow::Result<()> {
    // Without --data the demo keeps its store in one temp folder, so a second run continues the
    // same journal and `posgw journal dump` works after it stops.
    let dir = data.unwrap_or_else(|| std::env::temp_dir().join("posgw-demo"));
    std::fs::create_dir_all(dir.join("dev"))
        .with_context(|| format!("cannot create {}", dir.display()))?;

    // The simulated scanner: we hold the master side; the gateway opens the slave via a link.
    let (mut scanner, slave) = SerialStream::pair().context("cannot create a pseudo-terminal")?;
    let slave_path = slave.name().context("pseudo-terminal has no name")?;
    let link = dir.join("dev").join("scanner-1");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&slave_path, &link)
        .with_context(|| format!("cannot link {}", link.display()))?;

    let listener = bind_free("127.0.0.1:7380").await?;
    let listen = listener.local_addr()?.to_string();
    let config_path = dir.join("posgw.toml");
    std::fs::write(&config_path, demo_config(&dir, &listen))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let settings = crate::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!("posgw demo: a simulated pharmacy with one serial scanner");
    println!("  config:        {}", config_path.display());
    println!("  status:        http://{listen}/api/v1/status");
    println!("  metrics:       http://{listen}/metrics");
    println!(
        "  journal:       posgw journal dump --data {}",
        dir.join("data").display()
    );
    println!(
        "  POS passthrough pty: {}",
        dir.join("dev").join("pos-scanner-1").display()
    );
    match run_for {
        Some(limit) => println!("running for {limit:?} (Ctrl-C stops earlier)"),
        None => println!("running until Ctrl-C"),
    }

    let clerk = tokio::spawn(async move {
        let _slave = slave; // keep the pty alive until the gateway has opened it
        let mut rng = rand::rngs::StdRng::from_entropy();
        loop {
            let pause = Duration::from_millis(rng.gen_range(400..2500));
            tokio::time::sleep(pause).await;
            let frame = demo_frame(&mut rng);
            if scanner.write_all(&frame).await.is_err() {
                break;
            }
        }
    });

    let shutdown = async move {
        match run_for {
            Some(limit) => {
                tokio::select! {
                    () = tokio::time::sleep(limit) => {}
                    () = crate::cli::shutdown_signal() => {}
                }
            }
            None => crate::cli::shutdown_signal().await,
        }
    };
    let outcome = crate::gateway::run(settings, listener, shutdown).await;
    clerk.abort();
    outcome
}

/// One scanner frame, as a real scanner would send it (AIM id, CR LF).
fn demo_frame(rng: &mut impl Rng) -> Vec<u8> {
    let (_, base) = PRODUCTS.choose(rng).copied().unwrap_or(PRODUCTS[0]);
    let gtin13 = format!("{base}{}", check_digit(base));
    let text = match rng.gen_range(0..100) {
        // Most scans: the box's EAN-13.
        0..=59 => format!("]E0{gtin13}"),
        // GS1 DataMatrix on the pack: GTIN, expiry, lot, serial.
        60..=79 => format!(
            "]d2010{gtin13}17{:02}{:02}{:02}10L{:05}\x1d21S{:08}",
            rng.gen_range(27..30),
            rng.gen_range(1..13),
            [0, 28, 30][rng.gen_range(0..3)],
            rng.gen_range(0..99999),
            rng.gen_range(0..99_999_999)
        ),
        // 码上放心 traceability code: 20 digits starting with 8.
        80..=94 => format!("8{:019}", rng.gen_range(0..10_000_000_000_000_000_000u64)),
        // A misread: wrong check digit.
        _ => format!("]E0{base}{}", (check_digit(base) + 1) % 10),
    };
    let mut frame = text.into_bytes();
    frame.extend_from_slice(b"\r\n");
    frame
}

/// GS1 mod-10 check digit of a digit string.
fn check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(at, b)| u32::from(b - b'0') * if at % 2 == 0 { 3 } else { 1 })
        .sum();
    (10 - sum % 10) % 10
}

/// Binds `preferred`, or any free port on the same address when it is taken (and says so).
async fn bind_free(preferred: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(preferred).await {
        Ok(listener) => Ok(listener),
        Err(error) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!(
                "{preferred} is not available ({error}); using {} instead",
                listener.local_addr()?
            );
            Ok(listener)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_products_have_valid_gtins() {
        // 690123456789 + 2 is the DOMAIN.md example.
        assert_eq!(check_digit("690123456789"), 2);
        for (_, base) in PRODUCTS {
            assert_eq!(base.len(), 12, "{base}");
        }
    }
}
