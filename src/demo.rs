//! `posgw demo`: a simulated store on this machine.
//!
//! Creates a pseudo-terminal scanner and a pseudo-terminal register (an ESC/POS printer tap),
//! writes a store configuration for them into the demo's data folder, starts an embedded
//! `posgw hq`, and runs the real gateway (`gateway::run`) while simulated customers come to the
//! till: the clerk scans each one's products (EAN-13 boxes, GS1 DataMatrix packs with lot and
//! expiry, 20-digit China drug traceability codes, the odd misread) and the register prints the
//! receipt in GB18030, which the gateway reads into a `sale`. Two products are in a campaign: the
//! simulated clerk answers most of their prompts through the local API, some by scanning an
//! answer card, skips a few and lets some time out; the sale lines of those products are linked
//! to their prompts. The first of them is also under the five-step consultation flow
//! (问诊 → 症状记录 → 药品推荐 → 医保核验 → 用药指导): its scan is held back from the POS until
//! the clerk has done 问诊 and 症状记录; the simulated clerk works through the steps on the local
//! API, sometimes skips 症状记录 with a reason and sometimes lets the held scan time out.
//! Everything the gateway does is the same code path as `posgw run`; only the devices, the
//! customers and the clerk are simulated.

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
    ("连花清瘟胶囊 0.35g×24粒", "693012340128"),
    ("藿香正气水 10ml×10支", "692345670136"),
    ("六味地黄丸 200丸", "690987650142"),
    ("健胃消食片 0.8g×32片", "691234560159"),
    ("头孢克肟分散片 0.1g×6片", "690112230167"),
    ("盐酸左氧氟沙星片 0.5g×4片", "690221340174"),
    ("硝苯地平缓释片 20mg×30片", "690330450182"),
    ("二甲双胍缓释片 0.5g×30片", "690440560199"),
    ("阿托伐他汀钙片 20mg×7片", "690550670203"),
    ("复方丹参滴丸 27mg×180丸", "690660780211"),
    ("葡萄糖酸钙口服溶液 10ml×12支", "690770890228"),
    ("云南白药气雾剂 85g", "690880900236"),
    ("创可贴 100片", "690990010243"),
    ("电子体温计", "694567890251"),
    ("小儿氨酚黄那敏颗粒 6g×10袋", "690101120268"),
    ("开塞露 20ml×2支", "690202230275"),
    ("维生素B族片 100片", "690303340283"),
];

/// Bearer token of the demo store at the embedded HQ.
const STORE_TOKEN: &str = "demo-store-token";
/// Admin token of the embedded HQ's read endpoints.
const ADMIN_TOKEN: &str = "demo-admin";

/// The store configuration the demo runs; a held scan waits `hold_timeout` at most.
fn demo_config(dir: &Path, listen: &str, hq: &str, hold_timeout: &str) -> String {
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

[[device]]
id = "register-1"
role = "register"
transport = "serial"
station = "till-1"
profile = "escpos-tap"
path = "{register}"
passthrough = "{printer}"

[[campaign]]
id = "xinsong-2026q4"
skus = ["{first}{check}", "690123456*"]
question = "推荐话术来源"
options = [ {{ key = "doctor", label = "医生推荐" }},
            {{ key = "referral", label = "老客转介" }},
            {{ key = "poster", label = "海报引导" }} ]
timeout = "30s"

[[flow]]
id = "rx-5step"
name = "处方推荐五步法"
skus = ["{first}{check}"]
steps = [ {{ key = "consult", label = "客户问诊" }},
          {{ key = "symptoms", label = "症状记录", choose = ["高血压", "心悸", "失眠", "胸闷"], multi = true }},
          {{ key = "recommend", label = "药品推荐", auto = "scan" }},
          {{ key = "insurance", label = "医保核验", choose = ["通过", "未通过", "自费"], auto = "sale" }},
          {{ key = "guidance", label = "用药指导" }} ]
skip_reasons = ["客户明确拒绝", "复购老客", "紧急情况"]
hold = "recommend"
hold_timeout = "{hold_timeout}"
timeout = "10m"

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
        register = dir.join("dev").join("register-1").display(),
        printer = dir.join("dev").join("printer-1").display(),
    )
}

/// Runs the demo until Ctrl-C / SIGTERM or until `run_for` has passed.
///
/// With `fast`, customers and the clerk move ten times faster (for tests and a quick look).
pub async fn run(
    data: Option<PathBuf>,
    run_for: Option<Duration>,
    fast: bool,
) -> anyhow::Result<()> {
    // Caught before anything is bound, so Ctrl-C during the start still stops cleanly.
    let stop = crate::signal::shutdown_signal();
    let hangups = crate::signal::reload_signal();
    let pace: u32 = if fast { 10 } else { 1 };
    // Without --data the demo keeps its store in one temp folder, so a second run continues the
    // same journal and `posgw journal dump` works after it stops.
    let dir = data.unwrap_or_else(|| std::env::temp_dir().join("posgw-demo"));
    std::fs::create_dir_all(dir.join("dev"))
        .with_context(|| format!("cannot create {}", dir.display()))?;

    // The simulated devices: we hold the master sides; the gateway opens the slaves via links.
    let (mut scanner, slave) = pty_at(&dir.join("dev").join("scanner-1"))?;
    let (mut register, register_slave) = pty_at(&dir.join("dev").join("register-1"))?;

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
    let hold_timeout = if fast { "2s" } else { "20s" };
    std::fs::write(
        &config_path,
        demo_config(&dir, &listen, &hq.url(), hold_timeout),
    )
    .with_context(|| format!("cannot write {}", config_path.display()))?;
    let settings = crate::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;

    println!(
        "posgw demo: a simulated pharmacy with a serial scanner, a register's receipt printer tap and an HQ receiver"
    );
    println!("  clerk page:    http://{listen}/station/till-1");
    println!("  status:        http://{listen}/api/v1/status");
    println!("  metrics:       http://{listen}/metrics");
    println!("  HQ dashboard:  {}/?token={ADMIN_TOKEN}", hq.url());
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
        let _register_slave = register_slave; // kept open until the gateway has opened it
        let mut rng = rand::rngs::StdRng::from_entropy();
        for customer in 1u32.. {
            // One customer: one to three products scanned, then the receipt.
            let mut basket: Vec<usize> = (0..rng.gen_range(1..=3))
                .map(|_| pick_product(&mut rng))
                .collect();
            if customer == 1 {
                // The first customer buys the campaign's product, so a short run shows it all.
                basket[0] = 0;
            }
            for &product in &basket {
                let pause = Duration::from_millis(rng.gen_range(800..2500)) / pace;
                tokio::time::sleep(pause).await;
                if scans
                    .send(demo_frame(&mut rng, PRODUCTS[product].1))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..4000)) / pace).await;
            if register
                .write_all(&demo_receipt(customer, &basket))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let clerk = tokio::spawn(simulated_clerk(format!("http://{listen}"), frames_tx, pace));
    let pharmacist = tokio::spawn(simulated_pharmacist(format!("http://{listen}"), pace));

    let shutdown = async move {
        match run_for {
            Some(limit) => {
                tokio::select! {
                    () = tokio::time::sleep(limit) => {}
                    () = stop => {}
                }
            }
            None => stop.await,
        }
    };
    let outcome = crate::gateway::run(settings, listener, shutdown, hangups).await;
    shopper.abort();
    clerk.abort();
    pharmacist.abort();
    writer.abort();
    match hq_summary(&hq.url()).await {
        Ok(summary) => println!("{summary}"),
        Err(error) => tracing::warn!(%error, "cannot read the embedded HQ's figures"),
    }
    if let Err(error) = hq.stop().await {
        tracing::warn!(%error, "embedded HQ did not stop cleanly");
    }
    outcome
}

/// The clerk at till-1: watches the open prompts and answers most of them after a few seconds
/// (through the API, as the clerk page does, or by scanning an answer card), skips some and
/// leaves some to time out.
async fn simulated_clerk(api: String, scanner: tokio::sync::mpsc::Sender<Vec<u8>>, pace: u32) {
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut seen = std::collections::HashSet::new();
    let url = format!("{api}/api/v1/prompts?station=till-1");
    loop {
        tokio::time::sleep(Duration::from_millis(500) / pace).await;
        for id in new_ids(&client, &url, &mut seen).await {
            let option = [
                "doctor", "doctor", "doctor", "referral", "referral", "poster",
            ]
            .choose(&mut rng)
            .copied()
            .unwrap_or("doctor");
            let delay = Duration::from_millis(rng.gen_range(1000..6000)) / pace;
            // The first prompt is always answered, so a short run shows an attribution.
            let roll = if seen.len() == 1 {
                0
            } else {
                rng.gen_range(0..100)
            };
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
                            .header("content-type", "application/json")
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
                            .header("content-type", "application/json")
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

/// The clerk at till-1 as a pharmacist: works through each consultation's steps on the local
/// API as the clerk page does. Most of the time 问诊 and 症状记录 come quickly (the held scan
/// goes on to the POS); one in five skips 症状记录 with a reason; one in seven is too slow, so
/// the held scan goes on at the hold timeout. 医保核验 and 用药指导 follow; the consultation
/// closes by itself once its sale is linked.
async fn simulated_pharmacist(api: String, pace: u32) {
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut seen = std::collections::HashSet::new();
    let url = format!("{api}/api/v1/consultations?station=till-1");
    loop {
        tokio::time::sleep(Duration::from_millis(500) / pace).await;
        for id in new_ids(&client, &url, &mut seen).await {
            // The first one is done by the book, so a short run shows it whole.
            let roll = if seen.len() == 1 {
                50
            } else {
                rng.gen_range(0..100)
            };
            let how_many = rng.gen_range(1..=2);
            let symptoms = ["高血压", "心悸", "失眠", "胸闷"]
                .choose_multiple(&mut rng, how_many)
                .copied()
                .collect::<Vec<_>>();
            let insurance = ["通过", "通过", "通过", "自费", "未通过"]
                .choose(&mut rng)
                .copied()
                .unwrap_or("通过");
            let first_wait = if roll < 14 {
                4000
            } else {
                rng.gen_range(600..1500)
            };
            let (client, api) = (client.clone(), api.clone());
            tokio::spawn(async move {
                let step = |key: &'static str, body: serde_json::Value| {
                    client
                        .post(format!("{api}/api/v1/consultations/{id}/steps/{key}"))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                };
                let pause = |millis: u64| tokio::time::sleep(Duration::from_millis(millis) / pace);
                pause(first_wait).await;
                let _ = step("consult", serde_json::json!({"clerk": "c-17"})).await;
                pause(700).await;
                let symptoms = if (14..34).contains(&roll) {
                    serde_json::json!({"skip": "复购老客", "clerk": "c-17"})
                } else {
                    serde_json::json!({"values": symptoms, "clerk": "c-17"})
                };
                let _ = step("symptoms", symptoms).await;
                pause(900).await;
                let _ = step(
                    "insurance",
                    serde_json::json!({"value": insurance, "clerk": "c-17"}),
                )
                .await;
                pause(900).await;
                let _ = step("guidance", serde_json::json!({"clerk": "c-17"})).await;
            });
        }
    }
}

/// The ids in the JSON array at `url` (open prompts or consultations) not in `seen` yet, now
/// added to it; none when the API does not answer.
async fn new_ids(
    client: &reqwest::Client,
    url: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Vec<String> {
    let Ok(response) = client.get(url).send().await else {
        return Vec::new();
    };
    let Ok(open) = response.json::<Vec<serde_json::Value>>().await else {
        return Vec::new();
    };
    open.iter()
        .filter_map(|entry| entry["id"].as_str())
        .filter(|id| seen.insert((*id).to_owned()))
        .map(str::to_owned)
        .collect()
}

/// One line on what the embedded HQ holds, from its `/v1/stats`.
async fn hq_summary(url: &str) -> anyhow::Result<String> {
    let stats: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/v1/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let kinds = &stats["stores"]["DEMO-001"]["by_kind"];
    let count = |kind: &str| kinds[kind].as_u64().unwrap_or(0);
    Ok(format!(
        "HQ received {} records: {} scans, {} sales, {} attributions, {} consultations",
        stats["records"].as_u64().unwrap_or(0),
        count("scan"),
        count("sale"),
        count("attribution"),
        count("consultation")
    ))
}

/// A product for the next scan (index into [`PRODUCTS`]): the campaign's about a quarter of
/// the time.
fn pick_product(rng: &mut impl Rng) -> usize {
    let base = if rng.gen_range(0..100) < 25 {
        TARGETED.choose(rng).copied().unwrap_or(TARGETED[0])
    } else {
        PRODUCTS
            .choose(rng)
            .map_or(PRODUCTS[0].1, |(_, base)| *base)
    };
    PRODUCTS
        .iter()
        .position(|(_, known)| *known == base)
        .unwrap_or(0)
}

/// Demo prices in fen, by product index: stable, so a product always costs the same.
fn price_fen(product: usize) -> u32 {
    1250 + (product as u32 * 730) % 4000
}

/// The receipt a register prints for `basket`, as ESC/POS bytes: init, a centred bold header,
/// GB18030 text (receipt number, clerk, one line per product with its EAN, quantity and amount,
/// the total), a QR code with the receipt number, feed and cut.
fn demo_receipt(customer: u32, basket: &[usize]) -> Vec<u8> {
    let number = format!("XS{}-{customer:04}", chrono::Local::now().format("%Y%m%d"));
    let mut bytes = b"\x1b@\x1ba\x01\x1bE\x01".to_vec();
    let text = |bytes: &mut Vec<u8>, line: &str| {
        bytes.extend_from_slice(&encoding_rs::GB18030.encode(line).0);
        bytes.push(b'\n');
    };
    text(&mut bytes, "康宁大药房 (演示店)");
    bytes.extend_from_slice(b"\x1bE\x00\x1ba\x00");
    text(&mut bytes, &format!("单号：{number}"));
    text(&mut bytes, "收银员：c-17");
    let mut total = 0;
    for &product in basket {
        let (name, base) = PRODUCTS[product];
        let fen = price_fen(product);
        total += fen;
        let ean = format!("{base}{}", check_digit(base));
        let amount = format!("{}.{:02}", fen / 100, fen % 100);
        text(&mut bytes, &format!("{ean} {name}  1  {amount}"));
    }
    text(
        &mut bytes,
        &format!("合计：￥{}.{:02}", total / 100, total % 100),
    );
    // QR code with the receipt number: store data (fn 'P'), then print (fn 'Q').
    let data = number.as_bytes();
    let len = data.len() + 3;
    bytes.extend_from_slice(&[
        0x1d,
        b'(',
        b'k',
        (len % 256) as u8,
        (len / 256) as u8,
        0x31,
        b'P',
        b'0',
    ]);
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\x1d(k\x03\x001Q0\x1bd\x03\x1dV\x00");
    bytes
}

/// A pseudo-terminal whose slave side is linked at `link` (replacing an old link).
fn pty_at(link: &Path) -> anyhow::Result<(SerialStream, SerialStream)> {
    let (master, slave) = SerialStream::pair().context("cannot create a pseudo-terminal")?;
    let slave_path = slave.name().context("pseudo-terminal has no name")?;
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&slave_path, link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    Ok((master, slave))
}

/// One scanner frame for the product `base` (GTIN-13 without check digit), as a real scanner
/// would send it (AIM id, CR LF).
fn demo_frame(rng: &mut impl Rng, base: &str) -> Vec<u8> {
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

    #[test]
    fn demo_receipts_decode_into_sales_with_every_line() {
        let profiles = crate::config::ProfileSet::built_in().expect("profiles");
        let profile = profiles.get("escpos-tap").expect("escpos-tap");
        let escpos = profile.escpos.as_ref().expect("escpos settings");
        let mut decoder = crate::decode::escpos::EscposDecoder::new(&escpos.into());
        let mut receipts = Vec::new();
        decoder.push(&demo_receipt(7, &[0, 4, 0]), &mut receipts);
        assert_eq!(receipts.len(), 1);
        let sale = crate::sales::from_receipt(&receipts[0], &escpos.patterns);
        assert!(
            sale.receipt
                .as_deref()
                .is_some_and(|r| r.ends_with("-0007")),
            "{sale:?}"
        );
        assert_eq!(sale.clerk.as_deref(), Some("c-17"));
        let skus: Vec<&str> = sale.lines.iter().filter_map(|l| l.sku.as_deref()).collect();
        assert_eq!(
            skus,
            ["6901234567892", "6905123000316", "6901234567892"],
            "{sale:?}"
        );
        let total = f64::from(price_fen(0) * 2 + price_fen(4)) / 100.0;
        assert_eq!(sale.total, Some(total));
        assert_eq!(receipts[0].qr.len(), 1);
    }
}
