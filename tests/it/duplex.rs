//! The passthrough both ways, on real pseudo-terminals: the far side's answers (a printer's
//! status replies, the POS's scanner commands) reach the device byte-exact, a link to a live
//! virtual serial bridge (socat) is used rather than replaced, and bytes a stalled reader could
//! not take are counted in `/metrics` and the status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

use crate::harness::{of_kind, pty_pair, Gateway, PtyScanner, Store, DEADLINE};

const RECEIPT_A: &[u8] = include_bytes!("../fixtures/receipt-a.bin");
const RECEIPT_A_TEXT: &str = include_str!("../fixtures/receipt-a.txt");

/// `DLE EOT 1`: a register asking its printer for its status.
const STATUS_POLL: &[u8] = &[0x10, 0x04, 0x01];

/// A gateway config with one serial device at `path` and its passthrough.
fn write_config(store: &Store, role: &str, profile: &str, path: &Path, passthrough: &Path) {
    store.write_devices(&format!(
        r#"
[[device]]
id = "dev-1"
role = "{role}"
transport = "serial"
station = "till-1"
profile = "{profile}"
path = "{path}"
passthrough = "{passthrough}"
"#,
        path = path.display(),
        passthrough = passthrough.display(),
    ));
}

/// [`write_config`] for a scanner at the store's `scanner` link, passing through to `passthrough`.
fn write_scanner_config(store: &Store, passthrough: &Path) {
    let scanner = store.path("scanner");
    write_config(store, "scanner", "generic-scanner", &scanner, passthrough);
}

/// Reads exactly `n` bytes from `port` within the test deadline.
async fn read_n(port: &mut SerialStream, n: usize, what: &str) -> Vec<u8> {
    let mut received = vec![0u8; n];
    tokio::time::timeout(DEADLINE, port.read_exact(&mut received))
        .await
        .unwrap_or_else(|_| panic!("{what}: {n} bytes did not arrive in time"))
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    received
}

/// Every byte value once: the answer path must be as transparent as the forward one.
fn every_byte() -> Vec<u8> {
    (0..=255u8).collect()
}

/// The register polls its printer's status after a receipt (`DLE EOT 1`); the printer (a serial
/// port: a pty behind a link outside /dev/pts) answers with a status byte and then every byte
/// value. The register receives exactly that, the printer exactly the register's bytes, and the
/// answer is not receipt data: one sale, with the receipt's text, and no bad frame.
#[tokio::test]
async fn a_printer_status_reply_reaches_the_register_byte_exact_and_is_not_decoded() {
    let store = Store::new();
    let hop = store.path("hop");
    let printer_port = store.path("printer-port");
    let mut printer = PtyScanner::plug(&hop);
    std::os::unix::fs::symlink(&hop, &printer_port).expect("link the printer port");
    let mut register = PtyScanner::plug(&store.path("register"));
    write_config(
        &store,
        "register",
        "escpos-tap",
        &store.path("register"),
        &printer_port,
    );
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("dev-1", "connected").await;

    let sent = [RECEIPT_A, STATUS_POLL].concat();
    register.send(&sent).await;
    let got = read_n(&mut printer.master, sent.len(), "register → printer").await;
    assert_eq!(got, sent, "the printer gets the register's bytes unchanged");

    // The printer answers the poll: online, paper present (0x12), then every byte value.
    let answer = [vec![0x12], every_byte()].concat();
    printer.send(&answer).await;
    let heard = read_n(&mut register.master, answer.len(), "printer → register").await;
    assert_eq!(heard, answer, "the register hears the printer, byte-exact");

    gateway.wait_records("sale", 1).await;
    let series = "posgw_passthrough_bytes_total{device=\"dev-1\",direction=\"to_device\"}";
    assert_eq!(gateway.metric(series).await, answer.len() as f64);
    let status = gateway.status().await;
    let device = &status["devices"][0];
    assert_eq!(
        device["passthrough"]["to_device"]["bytes"],
        answer.len() as u64
    );
    assert_eq!(
        device["passthrough"]["to_passthrough"]["bytes"],
        sent.len() as u64
    );
    assert_eq!(
        gateway
            .metric("posgw_bad_frames_total{device=\"dev-1\"}")
            .await,
        0.0
    );
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let sales = of_kind(&records, "sale");
    assert_eq!(sales.len(), 1, "the status bytes made no receipt");
    assert_eq!(sales[0]["data"]["text"], RECEIPT_A_TEXT.trim_end());
}

/// POS software sends its scanner a command through the gateway's own pseudo-terminal; the
/// scanner gets it unchanged, every byte value, and scans still flow the other way.
#[tokio::test]
async fn pos_commands_written_to_the_passthrough_pty_reach_the_scanner() {
    let store = Store::new();
    let link = store.path("pos");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    write_scanner_config(&store, &link);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("dev-1", "connected").await;
    let mut pos = tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the POS side");

    let command = [b"\x16M\r".to_vec(), every_byte()].concat();
    pos.write_all(&command).await.expect("POS writes");
    let got = read_n(&mut scanner.master, command.len(), "POS → scanner").await;
    assert_eq!(got, command, "the scanner gets the POS's command unchanged");

    scanner.send(b"]C0AFTER-1\r").await;
    let scan = read_n(&mut pos, 11, "scanner → POS").await;
    assert_eq!(scan, b"]C0AFTER-1\r");
    gateway.wait_scans_durable(1).await;
    assert!(gateway.stop().await.success());
}

/// A socat process, killed (by its own pid) when dropped.
struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `socat pty,link=a pty,link=b`: a virtual serial bridge, as a printer link or ser2net makes.
async fn socat_bridge(a: &Path, b: &Path) -> Socat {
    let child = Command::new("socat")
        .arg("-d")
        .arg("-d")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start socat (apt-get install socat)");
    let socat = Socat(child);
    let started = Instant::now();
    while !(a.exists() && b.exists()) {
        assert!(started.elapsed() < DEADLINE, "socat made no links");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    socat
}

/// The passthrough path is socat's end of a bridge (a link to a live pty): the gateway opens it
/// and leaves the link alone, so scans come out at the bridge's other end, and what is written
/// there reaches the scanner.
#[tokio::test]
async fn a_passthrough_link_to_a_live_socat_bridge_is_used_not_replaced() {
    let store = Store::new();
    let (near, far) = (store.path("bridge-a"), store.path("bridge-b"));
    let _socat = socat_bridge(&near, &far).await;
    let bridge_pty = std::fs::read_link(&near).expect("socat's link");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    write_scanner_config(&store, &near);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("dev-1", "connected").await;
    let mut pos = tokio_serial::new(far.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the bridge's far end");

    scanner.send(b"]C0BRIDGE-1\r").await;
    let scan = read_n(&mut pos, 12, "scanner → bridge").await;
    assert_eq!(scan, b"]C0BRIDGE-1\r");
    assert_eq!(
        std::fs::read_link(&near).expect("link still there"),
        bridge_pty,
        "the bridge's link was not replaced"
    );

    let command = [b"\x16T\r".to_vec(), every_byte()].concat();
    pos.write_all(&command).await.expect("write at the far end");
    let got = read_n(&mut scanner.master, command.len(), "bridge → scanner").await;
    assert_eq!(got, command);
    gateway.wait_scans_durable(1).await;
    assert!(gateway.stop().await.success());
    assert_eq!(
        std::fs::read_link(&near).expect("link kept after the stop"),
        bridge_pty,
        "the gateway does not remove a link it did not make"
    );
}

/// A link left behind whose pty number now belongs to someone else (a pty younger than the
/// link), and a dangling link: both are replaced by the gateway's own pty, and the stranger's
/// pty gets nothing.
#[tokio::test]
async fn a_passthrough_link_to_a_reused_or_missing_pty_is_replaced_by_our_own() {
    let store = Store::new();
    // Someone else's terminal, and an old link to its number, made an hour before it existed.
    // Not inherited by the gateway child: the terminal stays only the stranger's.
    let (mut stranger, stranger_slave) = pty_pair();
    let stranger_pty = stranger_slave.name().expect("pty name");
    let reused = store.path("pos-reused");
    std::os::unix::fs::symlink(&stranger_pty, &reused).expect("link");
    let an_hour_ago = nix::sys::time::TimeSpec::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            - Duration::from_secs(3600),
    );
    nix::sys::stat::utimensat(
        None,
        &reused,
        &an_hour_ago,
        &an_hour_ago,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("age the link");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    write_scanner_config(&store, &reused);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("dev-1", "connected").await;
    assert_ne!(
        std::fs::read_link(&reused).expect("link").to_string_lossy(),
        stranger_pty,
        "the link to a reused pty was replaced"
    );
    let mut pos = tokio_serial::new(reused.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open our pty");
    scanner.send(b"]C0OURS-1\r").await;
    assert_eq!(read_n(&mut pos, 10, "scanner → POS").await, b"]C0OURS-1\r");
    let mut nothing = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stranger.read(&mut nothing))
            .await
            .is_err(),
        "the stranger's terminal got nothing"
    );
    assert!(gateway.stop().await.success());

    // A dangling link (its pty is gone) is replaced the same way.
    let dangling = store.path("pos-dangling");
    std::os::unix::fs::symlink("/dev/pts/999999", &dangling).expect("link");
    write_scanner_config(&store, &dangling);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("dev-1", "connected").await;
    let mut pos = tokio_serial::new(dangling.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open our pty");
    scanner.send(b"]C0OURS-2\r").await;
    assert_eq!(read_n(&mut pos, 10, "scanner → POS").await, b"]C0OURS-2\r");
    assert!(gateway.stop().await.success());
    drop(stranger_slave);
}

/// Nobody reads the passthrough while the scanner streams 1.5 MiB in 16 KiB writes: the queue
/// stays bounded, what it drops is counted in `/metrics` and the status, and once the POS reads,
/// everything is accounted for: what it receives plus what was dropped is what was sent.
#[tokio::test]
async fn passthrough_drops_are_counted_in_metrics_and_status() {
    let store = Store::new();
    let link = store.path("pos");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    write_scanner_config(&store, &link);
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("dev-1", "connected").await;

    // Overlong frames (no terminator): a few hundred bad_frame records, not 100k scans.
    let burst = vec![b'X'; 16384];
    let writes = 96;
    let sent = burst.len() * writes;
    for _ in 0..writes {
        scanner.send(&burst).await;
    }
    let to_pos = |status: &serde_json::Value| {
        let direction = &status["devices"][0]["passthrough"]["to_passthrough"];
        (
            direction["bytes"].as_u64().unwrap_or(0),
            direction["dropped_bytes"].as_u64().unwrap_or(0),
            direction["dropped_chunks"].as_u64().unwrap_or(0),
        )
    };
    // More than the queue's budget plus the pty's buffer was sent and nobody reads: drops.
    // (A slow machine reads 1.5 MiB of overlong frames slowly: a longer wait than usual.)
    let started = Instant::now();
    loop {
        let status = gateway.status().await;
        if to_pos(&status).1 > 0 {
            break;
        }
        assert!(
            started.elapsed() < 3 * DEADLINE,
            "no drop counted: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The POS starts reading: everything not dropped arrives.
    let mut pos = tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .expect("open the POS side");
    let mut received = 0usize;
    let mut chunk = vec![0u8; 65536];
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < 3 * DEADLINE,
            "the POS never got the rest: {received} bytes"
        );
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(100), pos.read(&mut chunk)).await
        {
            let n = read.expect("read the POS side");
            assert!(chunk[..n].iter().all(|&b| b == b'X'));
            received += n;
        }
        let (bytes, dropped, _) = to_pos(&gateway.status().await);
        if bytes + dropped == sent as u64 && received as u64 == bytes {
            break;
        }
    }
    let status = gateway.status().await;
    let (bytes, dropped, chunks) = to_pos(&status);
    assert_eq!(received as u64, bytes, "the POS got every byte not dropped");
    assert!(dropped > 0 && chunks > 0, "{status}");
    assert!(
        received as u64 >= 1024 * 1024 - 8192,
        "the queue held its budget: {received} bytes arrived"
    );
    let series = |name: &str| {
        format!("posgw_passthrough_{name}_total{{device=\"dev-1\",direction=\"to_passthrough\"}}")
    };
    assert_eq!(
        gateway.metric(&series("dropped_bytes")).await,
        dropped as f64
    );
    assert_eq!(
        gateway.metric(&series("dropped_chunks")).await,
        chunks as f64
    );
    assert_eq!(gateway.metric(&series("bytes")).await, bytes as f64);
    assert!(gateway.stop().await.success());
}

/// A gateway config with one network printer tap listening on `listen` for the register.
fn write_tcp_config(store: &Store, listen: &str, printer: &str, extra: &str) {
    store.write_devices(&format!(
        r#"
[[device]]
id = "printer-tap"
role = "register"
transport = "tcp"
station = "till-1"
profile = "escpos-tap"
listen = "{listen}"
printer_addr = "{printer}"
{extra}
"#
    ));
}

/// A loopback address with a port nobody listens on (bound, then let go).
fn free_address() -> String {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address").to_string()
}

/// A network receipt printer: accepts connections one after another, answers each `DLE EOT 1`
/// with 0x12 (online, paper present), and hands back what each connection sent once it ends.
async fn tcp_printer() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("printer listens");
    let address = listener.local_addr().expect("address").to_string();
    let (jobs, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut job = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let n = socket.read(&mut buffer).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let before = job.len().saturating_sub(2);
                job.extend_from_slice(&buffer[..n]);
                let polls = job[before..]
                    .windows(3)
                    .filter(|window| *window == STATUS_POLL)
                    .count();
                for _ in 0..polls {
                    socket.write_all(&[0x12]).await.expect("status reply");
                }
            }
            // The job is done: the printer closes its side too.
            drop(socket);
            let _ = jobs.send(job);
        }
    });
    (address, received)
}

/// The register prints over the network through the gateway: every byte reaches the printer
/// unchanged, the printer's status reply reaches the register, and each receipt is a `sale`.
#[tokio::test]
async fn a_network_printer_tap_forwards_both_ways_and_records_each_receipt() {
    let store = Store::new();
    let (printer, mut jobs) = tcp_printer().await;
    let listen = free_address();
    write_tcp_config(&store, &listen, &printer, "");
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("printer-tap", "connected").await;

    let mut register = tokio::net::TcpStream::connect(&listen)
        .await
        .expect("the register connects to the gateway");
    register
        .write_all(&[RECEIPT_A, STATUS_POLL].concat())
        .await
        .expect("print");
    let mut status = [0u8; 1];
    tokio::time::timeout(DEADLINE, register.read_exact(&mut status))
        .await
        .expect("the status reply arrived in time")
        .expect("read the status reply");
    assert_eq!(status, [0x12], "the printer's status byte, unchanged");
    register.write_all(RECEIPT_A).await.expect("print again");
    register.shutdown().await.expect("end of the job");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, register.read_to_end(&mut rest))
        .await
        .expect("the printer's close reached the register")
        .expect("read to the end");
    assert!(rest.is_empty(), "nothing but the status reply: {rest:?}");
    let job = tokio::time::timeout(DEADLINE, jobs.recv())
        .await
        .expect("the printer finished the job")
        .expect("a job");
    assert_eq!(
        job,
        [RECEIPT_A, STATUS_POLL, RECEIPT_A].concat(),
        "byte-exact to the printer"
    );

    gateway.wait_records("sale", 2).await;
    let device = &gateway.status().await["devices"][0];
    assert_eq!(device["transport"], "tcp");
    let passthrough = &device["passthrough"];
    assert_eq!(passthrough["to_device"]["bytes"], 1);
    assert_eq!(
        passthrough["to_passthrough"]["bytes"],
        job.len() as u64,
        "{device}"
    );
    assert_eq!(passthrough["connections"]["accepted"], 1);
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let sales = of_kind(&records, "sale");
    assert_eq!(sales.len(), 2);
    for sale in sales {
        assert_eq!(sale["data"]["device"], "printer-tap");
        assert_eq!(sale["data"]["text"], RECEIPT_A_TEXT.trim_end());
    }
}

/// Bounded: over `max_connections` a register connection is closed at once and counted; with
/// the printer switched off the register's connection is closed, counted, and the outage is a
/// `device` `error` record (once, however often the register retries).
#[tokio::test]
async fn a_network_printer_tap_refuses_over_its_cap_and_reports_an_unreachable_printer() {
    let store = Store::new();
    let (printer, _jobs) = tcp_printer().await;
    let listen = free_address();
    write_tcp_config(&store, &listen, &printer, "max_connections = 1");
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("printer-tap", "connected").await;

    let mut first = tokio::net::TcpStream::connect(&listen)
        .await
        .expect("first");
    first.write_all(STATUS_POLL).await.expect("poll");
    let mut status = [0u8; 1];
    tokio::time::timeout(DEADLINE, first.read_exact(&mut status))
        .await
        .expect("in time")
        .expect("status");
    let mut second = tokio::net::TcpStream::connect(&listen)
        .await
        .expect("second");
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(DEADLINE, second.read(&mut buffer))
        .await
        .expect("the second connection was closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let refused = "posgw_tap_refused_connections_total{device=\"printer-tap\"}";
    assert_eq!(gateway.metric(refused).await, 1.0);
    assert!(gateway.stop().await.success());
    drop(first);

    // The printer is off: nothing listens at its address.
    write_tcp_config(&store, &listen, &free_address(), "");
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("printer-tap", "connected").await;
    for _ in 0..3 {
        let mut register = tokio::net::TcpStream::connect(&listen)
            .await
            .expect("connect");
        let _ = register.write_all(RECEIPT_A).await;
        let closed = tokio::time::timeout(DEADLINE, register.read(&mut buffer))
            .await
            .expect("the register's connection was closed in time");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
    let unreachable = "posgw_tap_printer_unreachable_total{device=\"printer-tap\"}";
    gateway
        .wait_for("3 unreachable", |g| async move {
            g.metric(unreachable).await == 3.0
        })
        .await;
    gateway.wait_durable().await;
    assert!(gateway.stop().await.success());
    let records = store.dump();
    let errors: Vec<_> = of_kind(&records, "device")
        .into_iter()
        .filter(|record| record["data"]["event"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "one record per outage: {errors:?}");
    let detail = errors[0]["data"]["detail"].as_str().expect("detail");
    assert!(detail.contains("unreachable"), "{detail}");
    assert!(
        of_kind(&records, "sale").is_empty(),
        "nothing printed, no sale"
    );
}
