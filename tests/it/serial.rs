//! Serial scanners end to end: pty in, journal dump out.

use tokio::io::AsyncReadExt;
use tokio_serial::SerialPortBuilderExt;

use crate::harness::{assert_seq_contiguous, of_kind, Gateway, PtyScanner, Store, DEADLINE};

#[tokio::test]
async fn scans_are_decoded_into_the_journal_and_survive_a_clean_stop() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;

    // EAN-13 with CR LF, GS1 DataMatrix with a GS separator and CR, a trace code with LF,
    // and a code with a bad check digit, all in one write (as a fast scanner might).
    scanner
        .send(b"]E06901234567892\r\n]d201069012345678921727063010ABC123\x1d21SN0001\r81234567890123456789\n]E02112345678901\r")
        .await;
    gateway.wait_scans_durable(4).await;
    let status = gateway.stop().await;
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    let records = store.dump();
    let scans = of_kind(&records, "scan");
    assert_eq!(scans.len(), 4, "{records:#?}");

    let ean = &scans[0]["data"];
    assert_eq!(ean["device"], "scanner-1");
    assert_eq!(ean["station"], "till-1");
    assert_eq!(ean["raw"], "]E06901234567892");
    assert_eq!(ean["symbology"], "]E0");
    assert_eq!(ean["code_kind"], "ean13");
    assert_eq!(ean["gtin"], "06901234567892");
    assert_eq!(ean["error"], serde_json::Value::Null);
    assert_eq!(ean["answer_code"], false);

    let pack = &scans[1]["data"];
    assert_eq!(
        pack["raw"],
        "]d201069012345678921727063010ABC123\\x1d21SN0001"
    );
    assert_eq!(pack["code_kind"], "gs1");
    assert_eq!(pack["gtin"], "06901234567892");
    assert_eq!(pack["expiry"], "2027-06-30");
    assert_eq!(pack["lot"], "ABC123");
    assert_eq!(pack["serial"], "SN0001");

    let trace = &scans[2]["data"];
    assert_eq!(trace["code_kind"], "cn_trace");
    assert_eq!(trace["trace_code"], "81234567890123456789");

    let bad = &scans[3]["data"];
    assert!(
        bad["error"].is_string(),
        "bad check digit must be explained: {bad}"
    );
    assert_eq!(bad["raw"], "]E02112345678901");

    // Envelope: contract fields on every record, one epoch, seq 1..N.
    let epoch = records[0]["epoch"].as_str().unwrap().to_owned();
    for record in &records {
        for field in [
            "id", "store", "gateway", "epoch", "seq", "ts", "clock", "kind", "data",
        ] {
            assert!(record.get(field).is_some(), "{field} missing in {record}");
        }
        assert_eq!(record["store"], "WZ-LC-001");
        assert_eq!(record["gateway"], "gw-test");
        let id = format!("WZ-LC-001/gw-test/{epoch}/{}", record["seq"]);
        assert_eq!(record["id"], id.as_str());
        assert!(record["clock"]["boot"].is_string());
        assert!(record["clock"]["mono_ms"].is_u64());
        assert!(record["clock"]["synced"].is_boolean());
    }
    assert_seq_contiguous(&records, &epoch);
    let gateway_events: Vec<_> = of_kind(&records, "gateway")
        .iter()
        .map(|r| r["data"]["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(gateway_events, ["started", "stopped"]);
    assert_eq!(records.last().unwrap()["data"]["event"], "stopped");
}

#[tokio::test]
async fn noise_and_overlong_frames_are_recorded_and_the_next_scan_still_decodes() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;

    scanner.send(b"\x01\x02\xff\xfe\x00garbage\r").await;
    let mut overlong = vec![b'7'; 5000];
    overlong.push(b'\r');
    scanner.send(&overlong).await;
    scanner.send(b"]E06901234567892\r").await;
    gateway.wait_scans_durable(1).await;
    assert_eq!(
        gateway
            .metric("posgw_bad_frames_total{device=\"scanner-1\"}")
            .await,
        2.0
    );
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let bad: Vec<_> = of_kind(&records, "device")
        .into_iter()
        .filter(|r| r["data"]["event"] == "bad_frame")
        .collect();
    assert_eq!(bad.len(), 2, "{records:#?}");
    assert!(bad[0]["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("\\x01\\x02"));
    assert!(bad[1]["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("longer than"));
    let scans = of_kind(&records, "scan");
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0]["data"]["gtin"], "06901234567892");
}

#[tokio::test]
async fn a_missing_scanner_does_not_stop_the_gateway_and_is_picked_up_when_plugged_in() {
    let store = Store::new();
    store.write_config("");
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "disconnected").await;
    let (code, body) = gateway.get("/healthz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_eq!(
        gateway
            .metric("posgw_device_connected{device=\"scanner-1\"}")
            .await,
        0.0
    );

    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(b"]E06901234567892\r").await;
    gateway.wait_scans_durable(1).await;
    assert_eq!(
        gateway
            .metric("posgw_device_connected{device=\"scanner-1\"}")
            .await,
        1.0
    );
    assert!(gateway.stop().await.success());
}

#[tokio::test]
async fn unplug_and_replug_reconnects_and_records_both_events() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(b"]E06901234567892\r").await;
    gateway.wait_scans_durable(1).await;

    drop(scanner); // USB unplug: the pty disappears.
    gateway.wait_device("scanner-1", "disconnected").await;

    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(b"]E469012341\r").await;
    gateway.wait_scans_durable(2).await;
    assert!(gateway.stop().await.success());

    let records = store.dump();
    let events: Vec<_> = of_kind(&records, "device")
        .iter()
        .map(|r| r["data"]["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["connected", "disconnected", "connected"]);
    let scans = of_kind(&records, "scan");
    assert_eq!(scans.len(), 2);
    assert_eq!(scans[1]["data"]["code_kind"], "ean8");
}

#[tokio::test]
async fn a_scanner_without_terminator_is_framed_by_the_idle_gap() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    scanner.send(b"]E06901234567892").await;
    gateway.wait_scans_durable(1).await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    assert_eq!(
        of_kind(&records, "scan")[0]["data"]["raw"],
        "]E06901234567892"
    );
}

#[tokio::test]
async fn passthrough_re_emits_every_byte_unchanged_on_a_pty_link() {
    let store = Store::new();
    let link = store.path("pos-scanner");
    store.write_config(&format!("passthrough = \"{}\"", link.display()));
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;

    // The pty is shared with the dialout group, so POS software running as another user (a
    // member of dialout, as serial software is) can open it.
    if let Ok(Some(dialout)) = nix::unistd::Group::from_name("dialout") {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&link).expect("pty behind the link");
        assert_eq!(meta.gid(), dialout.gid.as_raw(), "group dialout");
        assert_eq!(meta.mode() & 0o777, 0o660, "mode 0660");
    }
    // The POS software opens the link the gateway created.
    let mut pos = tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open passthrough link");
    let sent: Vec<u8> = b"]E06901234567892\r\n\x00\xff binary \x1d stays\r".to_vec();
    scanner.send(&sent).await;
    let mut received = vec![0u8; sent.len()];
    tokio::time::timeout(DEADLINE, pos.read_exact(&mut received))
        .await
        .expect("passthrough delivered in time")
        .expect("read passthrough");
    assert_eq!(received, sent);
    gateway.wait_scans_durable(1).await;
    assert!(gateway.stop().await.success());
    // The link is removed on shutdown so a stale pty path is never left behind.
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed on stop"
    );
}

#[tokio::test]
async fn posgw_status_summarises_a_running_gateway() {
    let store = Store::new();
    store.write_config("");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let api = gateway.api.clone();
    let output = tokio::task::spawn_blocking(move || {
        crate::harness::posgw()
            .args(["status", "--api", &api])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("store WZ-LC-001  gateway gw-test"), "{text}");
    assert!(
        text.contains("scanner-1") && text.contains("connected"),
        "{text}"
    );
    assert!(text.contains("uplink: disabled"), "{text}");
    assert!(gateway.stop().await.success());

    // A stopped gateway: a clear message and exit 1.
    let output = crate::harness::posgw()
        .args(["status", "--api", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is posgw running"));
}

/// A passthrough to a real serial port (here a pty behind a link outside /dev/pts, as a
/// `/dev/serial/by-id/…` link would be): unplugged, it is reopened once it is back.
#[tokio::test]
async fn a_serial_passthrough_port_that_is_unplugged_is_reopened_when_it_returns() {
    let store = Store::new();
    // posgw.toml → printer-port → hop → /dev/pts/N: a serial device to the gateway.
    let hop = store.path("hop");
    let port = store.path("printer-port");
    let mut printer = PtyScanner::plug(&hop);
    std::os::unix::fs::symlink(&hop, &port).expect("link the port");
    store.write_config(&format!("passthrough = \"{}\"", port.display()));
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;

    scanner.send(b"]C0BEFORE\r").await;
    let mut received = [0u8; 10];
    tokio::time::timeout(DEADLINE, printer.master.read_exact(&mut received))
        .await
        .expect("passed through in time")
        .expect("read");
    assert_eq!(&received, b"]C0BEFORE\r");

    // Unplugged (the far end is gone), then plugged in again at the same path.
    drop(printer);
    let mut printer = PtyScanner::plug(&hop);
    // Scans go on meanwhile; the passthrough picks the port up again within about a second.
    let mut buffer = Vec::new();
    let started = std::time::Instant::now();
    for i in 0.. {
        assert!(
            started.elapsed() < DEADLINE,
            "the passthrough never came back"
        );
        scanner.send(format!("]C0AFTER-{i:04}\r").as_bytes()).await;
        let mut chunk = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            printer.master.read(&mut chunk),
        )
        .await
        {
            buffer.extend_from_slice(&chunk[..n]);
            if buffer.ends_with(b"\r") {
                break;
            }
        }
    }
    let text = String::from_utf8(buffer).expect("text");
    assert!(text.starts_with("]C0AFTER-"), "{text}");
    gateway.wait_durable().await;
    assert!(gateway.stop().await.success());
}

/// With answer cards configured the passthrough goes frame by frame; a device that streams
/// without terminators (and without an idle gap) still reaches the POS, and nothing piles up.
#[tokio::test]
async fn a_stream_without_terminators_still_reaches_the_pos_while_answer_cards_are_held_back() {
    let store = Store::new();
    let link = store.path("pos-scanner");
    store.write_config(&format!("passthrough = \"{}\"", link.display()));
    store.append_config("[answer_codes]\n\"ATTR-DOCTOR\" = \"doctor\"\n\n[[campaign]]\nid = \"c\"\nskus = [\"690*\"]\nquestion = \"q\"\noptions = [ { key = \"doctor\", label = \"医生推荐\" } ]\n");
    // This store's scanners have no idle gap.
    let built_in = include_str!("../../drivers/generic-scanner.toml");
    std::fs::create_dir_all(store.path("drivers.d")).expect("drivers.d");
    std::fs::write(
        store.path("drivers.d/generic-scanner.toml"),
        built_in.replace("idle_gap = \"80ms\"", "idle_gap = \"0s\""),
    )
    .expect("write profile");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let mut pos = tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open passthrough link");

    // 64 KiB without a terminator: far past max_frame (4096).
    let stream = vec![b'A'; 64 * 1024];
    let expected = stream.len() - 16 * 1024;
    let reader = tokio::spawn(async move {
        let mut received = vec![0u8; expected];
        tokio::time::timeout(DEADLINE, pos.read_exact(&mut received))
            .await
            .expect("the stream reaches the POS")
            .expect("read");
        received
    });
    for chunk in stream.chunks(1024) {
        scanner.send(chunk).await;
    }
    let received = reader.await.expect("reader");
    assert!(received.iter().all(|&b| b == b'A'));
    assert!(gateway.stop().await.success());
}
