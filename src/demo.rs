//! `posgw demo`: a simulated store on this machine.
//!
//! Creates a pseudo-terminal scanner, writes a store configuration for it into the demo's data
//! folder, starts an embedded `posgw hq`, and runs the real gateway (`gateway::run`) while a
//! simulated clerk scans a pharmacy's products: EAN-13 boxes, GS1 DataMatrix packs with lot and
//! expiry, and 20-digit China drug traceability codes, with the odd misread. Two products are in
//! a campaign: the simulated clerk answers most of their prompts through the local API, some by
//! scanning an answer card, skips a few and lets some time out. Everything the gateway does is
//! the same code path as `posgw run`; only the scanner and the clerk are simulated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio_serial::{SerialPort, SerialStream};

/// The campaign's products (GTIN-13 without check digit): scanned more often than the rest.
const TARGETED: &[&str] = &["690123456789", "690123456790"];

/// Products on the demo pharmacy's shelves: (name, GTIN-13 without check digit).
const PRODUCTS: &[(&str, &str)] = &[
    ("参松养心胶囊 0.4g×36粒", "690123456789"),
    ("参松养心胶囊 0.4g×84粒", "690123456790"),
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

/// Bearer token of the demo store at the embedded HQ.
const STORE_TOKEN: &str = "demo-store-token";
/// Admin token of the embedded HQ's read endpoints.
const ADMIN_TOKEN: &str = "demo-admin";

/// The store configuration the demo runs.
fn demo_config(dir: &Path, listen: &str, hq: &str) -> String {
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

[[campaign]]
id = "xinsong-2026q4"
skus = ["{first}{check}", "690123456*"]
question = "推荐话术来源"
options = [ {{ key = "doctor", label = "医生推荐" }},
            {{ key = "referral", label = "老客转介" }},
            {{ key = "poster", label = "海报引导" }} ]
timeout = "30s"

[answer_codes]
"ATTR-DOCTOR" = "doctor"
"ATTR-REFERRAL" = "referral"
"ATTR-POSTER" = "poster"

[uplink]
endpoint = "{hq}/v1/batches"
token_file = "{token}"
batch_max_age = "500ms"
"#,
        first = TARGETED[0],
        check = check_digit(TARGETED[0]),
        token = dir.join("hq.token").display(),
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

    // HQ first, so the gateway's first batch finds it.
    let hq_listener = bind_free("127.0.0.1:7390").await?;
    let mut hq_settings = crate::hq::HqSettings::new(hq_listener.local_addr()?, dir.join("hq"));
    hq_settings.admin_token = Some(ADMIN_TOKEN.into());
    hq_settings.stores.push(crate::hq::StoreSettings {
        code: "DEMO-001".into(),
        token: STORE_TOKEN.into(),
    });
    let hq = crate::hq::start(hq_settings, hq_listener)
        .await
        .context("cannot start the embedded HQ receiver")?;
    std::fs::write(dir.join("hq.token"), STORE_TOKEN)?;

    let listener = bind_free("127.0.0.1:7380").await?;
    let listen = listener.local_addr()?.to_string();
    let config_path = dir.join("posgw.toml");
    std::fs::write(&config_path, demo_config(&dir, &listen, &hq.url()))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let settings = crate::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!("posgw demo: a simulated pharmacy with one serial scanner and an HQ receiver");
    println!("  clerk page:    http://{listen}/station/till-1");
    println!("  status:        http://{listen}/api/v1/status");
    println!("  metrics:       http://{listen}/metrics");
    println!(
        "  HQ stats:      curl -H 'Authorization: Bearer {ADMIN_TOKEN}' {}/v1/stats",
        hq.url()
    );
    println!("  config:        {}", config_path.display());
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

    // The scanner is shared by the shopper's scans and the clerk's answer cards.
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        let _slave = slave; // keep the pty alive until the gateway has opened it
        while let Some(frame) = frames_rx.recv().await {
            if scanner.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let scans = frames_tx.clone();
    let shopper = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::from_entropy();
        loop {
            let pause = Duration::from_millis(rng.gen_range(800..3000));
            tokio::time::sleep(pause).await;
            if scans.send(demo_frame(&mut rng)).await.is_err() {
                break;
            }
        }
    });
    let clerk = tokio::spawn(simulated_clerk(format!("http://{listen}"), frames_tx));

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
    shopper.abort();
    clerk.abort();
    writer.abort();
    if let Err(error) = hq.stop().await {
        tracing::warn!(%error, "embedded HQ did not stop cleanly");
    }
    outcome
}

/// The clerk at till-1: watches the open prompts and answers most of them after a few seconds
/// (through the API, as the clerk page does, or by scanning an answer card), skips some and
/// leaves some to time out.
async fn simulated_clerk(api: String, scanner: tokio::sync::mpsc::Sender<Vec<u8>>) {
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut seen = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(response) = client
            .get(format!("{api}/api/v1/prompts?station=till-1"))
            .send()
            .await
        else {
            continue;
        };
        let Ok(prompts) = response.json::<Vec<serde_json::Value>>().await else {
            continue;
        };
        for prompt in prompts {
            let Some(id) = prompt["id"].as_str().map(str::to_owned) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            let option = [
                "doctor", "doctor", "doctor", "referral", "referral", "poster",
            ]
            .choose(&mut rng)
            .copied()
            .unwrap_or("doctor");
            let delay = Duration::from_millis(rng.gen_range(1000..6000));
            let roll = rng.gen_range(0..100);
            let client = client.clone();
            let api = api.clone();
            let scanner = scanner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                match roll {
                    0..=59 => {
                        let body = format!(r#"{{"option":"{option}","clerk":"c-17"}}"#);
                        let _ = client
                            .post(format!("{api}/api/v1/prompts/{id}/answer"))
                            .body(body)
                            .send()
                            .await;
                    }
                    60..=79 => {
                        let card = format!("]C0ATTR-{}\r\n", option.to_uppercase());
                        let _ = scanner.send(card.into_bytes()).await;
                    }
                    80..=87 => {
                        let _ = client
                            .post(format!("{api}/api/v1/prompts/{id}/skip"))
                            .body(r#"{"reason":"顾客赶时间","clerk":"c-17"}"#)
                            .send()
                            .await;
                    }
                    // The rest time out: the clerk was busy.
                    _ => {}
                }
            });
        }
    }
}

/// One scanner frame, as a real scanner would send it (AIM id, CR LF).
fn demo_frame(rng: &mut impl Rng) -> Vec<u8> {
    let base = if rng.gen_range(0..100) < 25 {
        TARGETED.choose(rng).copied().unwrap_or(TARGETED[0])
    } else {
        PRODUCTS
            .choose(rng)
            .map_or(PRODUCTS[0].1, |(_, base)| *base)
    };
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
fn check_digit(digits: &str) -> u8 {
    crate::decode::check_digit(digits.as_bytes())
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
