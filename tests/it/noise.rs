//! Hostile input on serial lines, end to end: random bytes at full pty speed must neither grow
//! the gateway's memory nor its log, must be counted where they are dropped, and must not stop
//! the device (a real scan sent afterwards is recorded); an ESC/POS command announcing gigabytes
//! of image must not swallow the receipts that follow it on a printer tap.

use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

use posgw::decode::escpos::EscposDecoder;

use crate::harness::{of_kind, peak_rss, Gateway, PtyScanner, Store, DEADLINE};
use crate::prompts::campaign_store;

const RECEIPT_A: &[u8] = include_bytes!("../fixtures/receipt-a.bin");
const RECEIPT_A_TEXT: &str = include_str!("../fixtures/receipt-a.txt");

/// How long the noise lasts: long enough to fill every queue many times over.
const NOISE: Duration = Duration::from_secs(4);

/// The leading count of a relay's drop record ("N event(s) of M byte(s) … dropped …").
fn dropped_in(detail: &str) -> Option<u64> {
    if !detail.contains("dropped") {
        return None;
    }
    detail.split(' ').next()?.parse().ok()
}

#[tokio::test]
async fn random_bytes_at_full_speed_keep_memory_and_log_small_and_the_next_scan_is_recorded() {
    // The campaign lets the real scan be told apart from the noise: it opens a prompt.
    let store = campaign_store("120s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    // The bound is on what the noise adds: the debug build this test runs already holds ~50 MB
    // at rest, where the release build holds ~12 MB (and peaks at 22 MiB under this noise).
    let at_rest = peak_rss(gateway.child.id());

    let mut noise = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut noise);
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < NOISE {
        for chunk in noise.chunks(64 * 1024) {
            scanner.master.write_all(chunk).await.expect("write noise");
            sent += chunk.len();
        }
    }
    let dropped = "posgw_device_dropped_events_total{device=\"scanner-1\"}";
    let queued = "posgw_device_queued_events{device=\"scanner-1\"}";
    // The port was read all along, and the gateway fell behind at some point.
    gateway
        .wait_for("dropped events counted", |g| async move {
            g.metric(dropped).await > 0.0
        })
        .await;
    gateway
        .wait_for("the device's queue drained", |g| async move {
            g.metric(queued).await == 0.0
        })
        .await;

    // The device still works: a scan of a campaign product opens its prompt.
    scanner.send(b"\r]E06901234567892\r").await;
    gateway
        .wait_for("the scan's prompt", |g| async move {
            g.metric("posgw_prompts_total{outcome=\"opened\"}").await == 1.0
        })
        .await;

    let peak = peak_rss(gateway.child.id());
    let bad_frames = gateway
        .metric("posgw_bad_frames_total{device=\"scanner-1\"}")
        .await;
    let dropped_events = gateway.metric(dropped).await;
    let bad_frame_lines = gateway.log_count("bad frame");
    let drop_lines = gateway.log_count("from the device dropped");
    eprintln!(
        "noise: {sent} bytes in {:?}; peak RSS {} KiB ({} KiB at rest); {bad_frames} bad \
         frames, {dropped_events} events dropped; {bad_frame_lines} bad-frame and {drop_lines} \
         drop log lines",
        started.elapsed(),
        peak / 1024,
        at_rest / 1024
    );
    assert!(
        peak < at_rest + (24 << 20),
        "peak RSS {} KiB, {} KiB at rest",
        peak / 1024,
        at_rest / 1024
    );
    assert!(
        bad_frames > 100.0,
        "the noise became bad frames: {bad_frames}"
    );
    // 5 lines and a summary per 10 s; a drop line at most once a second.
    assert!(
        bad_frame_lines <= 12,
        "{bad_frame_lines} bad-frame log lines"
    );
    assert!(drop_lines <= 20, "{drop_lines} drop log lines");

    assert!(gateway.stop().await.success());
    let records = store.dump();
    let scans = of_kind(&records, "scan");
    assert!(
        scans
            .iter()
            .any(|scan| scan["data"]["raw"] == "]E06901234567892"
                && scan["data"]["campaign"] == "xinsong-2026q4"),
        "the scan after the noise is recorded"
    );
    // Every dropped event is accounted for in the device's own records.
    let recorded_drops: u64 = of_kind(&records, "device")
        .iter()
        .filter(|record| record["data"]["event"] == "error")
        .filter_map(|record| dropped_in(record["data"]["detail"].as_str()?))
        .sum();
    assert_eq!(recorded_drops as f64, dropped_events);
}

/// A store with a printer tap `register-1` (escpos-tap) whose printer is the pty link `printer`.
fn printer_tap_store() -> Store {
    let store = Store::new();
    store.write_config("");
    store.append_config(&format!(
        "[[device]]\nid = \"register-1\"\nrole = \"register\"\ntransport = \"serial\"\n\
         station = \"till-1\"\nprofile = \"escpos-tap\"\npath = \"{}\"\npassthrough = \"{}\"\n",
        store.path("register").display(),
        store.path("printer").display()
    ));
    store
}

/// Opens the printer side of the tap once the gateway made it.
fn open_printer(store: &Store) -> tokio_serial::SerialStream {
    tokio_serial::new(store.path("printer").to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the printer link")
}

#[tokio::test]
async fn random_line_noise_on_a_printer_tap_swallows_none_of_the_next_five_receipts() {
    let store = printer_tap_store();
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;
    let mut printer = open_printer(&store);
    // The printer takes everything (what it gets is checked by the other tests).
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while printer.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });

    let mut stream = vec![0u8; 300 * 1024];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut stream);
    for _ in 0..5 {
        stream.extend(RECEIPT_A);
    }
    // The noise before them is recorded too (as garbled sales); all of it is in once the sales
    // the tap's own decoder finds in the stream are.
    let profiles = posgw::config::ProfileSet::built_in().expect("profiles");
    let profile = profiles.get("escpos-tap").expect("escpos-tap");
    let mut decoder = EscposDecoder::new(&profile.escpos.as_ref().expect("[escpos]").into());
    let mut decoded = Vec::new();
    decoder.push(&stream, &mut decoded);
    let sales = decoded.iter().filter(|receipt| !receipt.is_blank()).count();
    assert!(sales >= 5);
    for chunk in stream.chunks(4096) {
        register.send(chunk).await;
    }
    gateway.wait_records("sale", sales as u64).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let receipts = of_kind(&records, "sale")
        .into_iter()
        .filter(|sale| sale["data"]["text"] == RECEIPT_A_TEXT.trim_end())
        .count();
    assert_eq!(receipts, 5, "{:#?}", of_kind(&records, "sale"));
}

#[tokio::test]
async fn a_gs_8_l_announcing_gigabytes_on_a_printer_tap_swallows_none_of_the_next_five_receipts() {
    let store = printer_tap_store();
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let mut register = PtyScanner::plug(&store.path("register"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("register-1", "connected").await;
    let mut printer = open_printer(&store);

    // GS 8 L with p = 0xFFFFFFFF (4 GiB of graphics that never come), then five receipts.
    let mut stream = vec![0x1D, b'8', b'L', 0xFF, 0xFF, 0xFF, 0xFF, 0x30, 0x70];
    for _ in 0..5 {
        stream.extend(RECEIPT_A);
    }
    let expected = stream.clone();
    let reader = tokio::spawn(async move {
        let mut received = vec![0u8; expected.len()];
        tokio::time::timeout(DEADLINE, printer.read_exact(&mut received))
            .await
            .expect("the printer got every byte in time")
            .expect("read the printer link");
        received == expected
    });
    register.send(&stream).await;
    assert!(reader.await.expect("reader"), "byte-exact passthrough");

    gateway.wait_records("sale", 5).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let sales = of_kind(&records, "sale");
    assert_eq!(sales.len(), 5, "{records:#?}");
    for sale in &sales {
        assert_eq!(sale["data"]["text"], RECEIPT_A_TEXT.trim_end());
        assert_eq!(sale["data"]["total"], 33.5);
    }
    // The bogus length is reported, not silently skipped.
    let device = of_kind(&records, "device");
    assert!(
        device
            .iter()
            .any(|record| record["data"]["event"] == "bad_frame"
                && record["data"]["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains("length"))),
        "{device:#?}"
    );
}
