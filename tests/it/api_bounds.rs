//! Hostile HTTP clients against the local API and `posgw hq`: idle sockets cannot starve the
//! journal or the database of file descriptors, and slow clients cannot hold a shutdown.
//!
//! The processes run with `RLIMIT_NOFILE` at 1024 (soft and hard, set in the child before exec:
//! systemd's default soft limit, and nothing to raise it to), and the attacker opens 1,100
//! sockets that each send one header line and then stay silent.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{of_kind, posgw, Gateway, PtyScanner, Store, DEADLINE};

/// Sockets the attacker opens.
const IDLE_SOCKETS: usize = 1100;

/// The open-files limit of the processes under attack.
const OPEN_FILES: u64 = 1024;

/// Sets the child's soft and hard open-files limits before it runs.
fn limit_open_files(command: &mut Command, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// This test process needs more than 1,100 descriptors too: soft limit up to the hard one.
fn raise_own_open_files_limit() {
    let mut rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit), 0);
        rlimit.rlim_cur = rlimit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit), 0);
    }
    assert!(
        rlimit.rlim_cur as usize > IDLE_SOCKETS + 100,
        "hard limit too low"
    );
}

/// `host:port` of an `http://host:port` URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Opens `n` connections to `addr`, each sending one header line and then nothing. Connections
/// the server never takes (a full backlog) are given up after a few seconds.
async fn idle_sockets(addr: &str, n: usize) -> Vec<TcpStream> {
    raise_own_open_files_limit();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut stream =
                    tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&addr))
                        .await
                        .ok()?
                        .ok()?;
                stream.write_all(b"GET / HTTP/1.1\r\n").await.ok()?;
                Some(stream)
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for task in tasks {
        if let Some(stream) = task.await.expect("connect task") {
            sockets.push(stream);
        }
    }
    sockets
}

/// Waits until the server closed every socket (EOF, a reset, or the refusal answer then EOF).
async fn wait_all_closed(sockets: Vec<TcpStream>) {
    let start = Instant::now();
    for mut socket in sockets {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let closed = tokio::time::timeout(left, async {
            let mut buf = [0u8; 512];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the server must close a connection that sends no complete request head"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_api_sockets_lose_no_scan_and_healthz_recovers() {
    let store = Store::new();
    store.write_config("");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let mut command = posgw();
    command.args(["run", "-c", store.config_path().to_str().unwrap()]);
    limit_open_files(&mut command, OPEN_FILES);
    let gateway = Gateway::spawn_command(command, "run", "api listening on ").await;
    gateway.wait_device("scanner-1", "connected").await;

    let sockets = idle_sockets(&authority(&gateway.api), IDLE_SOCKETS).await;
    // The attacker holds its share of the connections, not all of them: another machine (here
    // another loopback address) is still answered.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = other
        .get(format!("{}/healthz", gateway.api))
        .send()
        .await
        .expect("another address is answered while the sockets are held");
    assert_eq!(response.status(), 200);
    // Scans flow while the sockets are held (and after the server closed them).
    const SCANS: u64 = 300;
    for _ in 0..SCANS {
        scanner.send(b"]E06901234567892\r\n").await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The server closes the silent connections by itself (header timeout), while the attacker
    // still holds its ends.
    wait_all_closed(sockets).await;
    let start = Instant::now();
    loop {
        if gateway
            .get("/healthz")
            .await
            .is_some_and(|(code, _)| code == 200)
        {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "/healthz must answer 200 once the idle sockets are gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.wait_scans_durable(SCANS).await;
    assert!(
        gateway.metric("posgw_api_connections_refused_total").await > 0.0,
        "connections over the cap are counted"
    );
    assert_eq!(gateway.log_count("journal append failed"), 0);
    assert_eq!(gateway.log_count("Too many open files"), 0);
    assert!(gateway.stop().await.success());
    let records = store.dump();
    assert_eq!(of_kind(&records, "scan").len() as u64, SCANS);
}

/// One NDJSON scan record of store WZ-LC-001.
fn batch_line(seq: u64) -> String {
    format!(
        r#"{{"id":"WZ-LC-001/gw-1/7f3a9c21/{seq}","store":"WZ-LC-001","gateway":"gw-1","epoch":"7f3a9c21","seq":{seq},"ts":"2026-11-27T16:01:02.345+08:00","clock":{{"boot":"3b1c","mono_ms":{seq},"synced":true}},"kind":"scan","data":{{"device":"scanner-1","station":"till-1","code":"69012345{seq:05}"}}}}"#
    )
}

/// `posgw hq` with one store, its admin token, and `RLIMIT_NOFILE` at `open_files`.
async fn start_hq(dir: &std::path::Path, open_files: u64) -> Gateway {
    std::fs::write(dir.join("store.token"), "store-token").unwrap();
    std::fs::write(dir.join("admin.token"), "admin-token").unwrap();
    std::fs::write(
        dir.join("hq.toml"),
        "[hq]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n\n[[store]]\ncode = \"WZ-LC-001\"\ntoken_file = \"store.token\"\n",
    )
    .unwrap();
    let mut command = posgw();
    command.args(["hq", "-c", dir.join("hq.toml").to_str().unwrap()]);
    limit_open_files(&mut command, open_files);
    Gateway::spawn_command(command, "hq", "hq listening on ").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_sockets_do_not_stop_posgw_hq_accepting_batches() {
    let dir = tempfile::tempdir().unwrap();
    let hq = start_hq(dir.path(), OPEN_FILES).await;
    let sockets = idle_sockets(&authority(&hq.api), IDLE_SOCKETS).await;

    // A gateway posting batch after batch on fresh connections, as after a restart: every
    // batch is eventually stored while the attacker holds its sockets.
    const BATCHES: u64 = 20;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let start = Instant::now();
    for seq in 1..=BATCHES {
        loop {
            let sent = client
                .post(format!("{}/v1/batches", hq.api))
                .bearer_auth("store-token")
                .header("content-type", "application/x-ndjson")
                .body(format!("{}\n", batch_line(seq)))
                .send()
                .await;
            if sent.is_ok_and(|response| response.status().is_success()) {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "batch {seq} was not accepted while idle sockets were held"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_all_closed(sockets).await;
    let (code, _) = hq.get("/healthz").await.expect("healthz answers");
    assert_eq!(code, 200);
    assert!(hq.metric("posgw_hq_connections_refused_total").await > 0.0);
    assert!(
        hq.metric("posgw_hq_records_total{store=\"WZ-LC-001\"}")
            .await
            >= BATCHES as f64
    );
    assert_eq!(hq.log_count("Too many open files"), 0);
    assert!(hq.stop().await.success());
}

/// Clients that hold a connection without finishing anything: half a request head, half a
/// body, an event stream never read, a keep-alive connection gone quiet.
async fn slow_clients(addr: &str) -> Vec<TcpStream> {
    let mut sockets = Vec::new();
    let open = |text: &'static str| {
        let addr = addr.to_owned();
        async move {
            let mut stream = TcpStream::connect(&addr).await.expect("connect");
            stream.write_all(text.as_bytes()).await.expect("send");
            stream
        }
    };
    for _ in 0..10 {
        sockets.push(open("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").await);
        sockets.push(
            open(
                "POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer store-token\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n{\"id\":",
            )
            .await,
        );
        sockets.push(
            open(
                "POST /api/v1/prompts/p-1/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"option\":",
            )
            .await,
        );
        sockets.push(open("GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await);
        sockets.push(open("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await);
    }
    sockets
}

/// SIGTERM, and the time until the process exited (or None after `limit`).
async fn stop_within(process: Gateway, limit: Duration) -> Option<(Duration, bool)> {
    let start = Instant::now();
    let stopped = tokio::time::timeout(limit, process.stop()).await.ok()?;
    Some((start.elapsed(), stopped.success()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_and_posgw_hq_in_time_whatever_clients_do() {
    // Within systemd's TimeoutStopSec (30 s) with room to spare.
    const STOP_LIMIT: Duration = Duration::from_secs(10);

    let store = Store::new();
    store.write_config("");
    let _scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    let gateway_clients = slow_clients(&authority(&gateway.api)).await;
    // Connections are accepted in order: once a later one is answered, every slow client has
    // been taken by the server.
    assert!(gateway.get("/healthz").await.is_some());

    let dir = tempfile::tempdir().unwrap();
    let hq = start_hq(dir.path(), OPEN_FILES).await;
    let hq_clients = slow_clients(&authority(&hq.api)).await;
    assert!(hq.get("/healthz").await.is_some());

    let (took, success) = stop_within(gateway, STOP_LIMIT)
        .await
        .expect("the gateway must stop within 10 s of SIGTERM with slow clients connected");
    assert!(success, "a stop with slow clients is still a clean stop");
    eprintln!("gateway stopped in {took:?}");
    let records = store.dump();
    assert!(
        of_kind(&records, "gateway")
            .iter()
            .any(|record| record["data"]["event"] == "stopped"),
        "the journal was closed cleanly"
    );
    let (took, success) = stop_within(hq, STOP_LIMIT)
        .await
        .expect("posgw hq must stop within 10 s of SIGTERM with slow clients connected");
    assert!(success);
    eprintln!("posgw hq stopped in {took:?}");
    drop((gateway_clients, hq_clients));
}

#[tokio::test]
async fn an_event_stream_outlives_the_header_timeout_and_counts_against_the_cap() {
    let store = crate::prompts::campaign_store("120s");
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    assert!(gateway.metric("posgw_api_connections_max").await >= 8.0);
    let mut events = crate::prompts::EventStream::open(&gateway, "till-1").await;
    // The stream, plus the connection asking.
    gateway
        .wait_for("the stream counted as a connection", |g| async move {
            g.metric("posgw_api_connections").await >= 2.0
        })
        .await;
    // Longer than a client may take to send a request head (10 s): a stream is not a head.
    tokio::time::sleep(Duration::from_secs(12)).await;
    scanner.send(b"]E06901234567892\r\n").await;
    loop {
        let (name, data) = events.next().await;
        if name == "prompt" {
            assert_eq!(data["sku"], "6901234567892");
            break;
        }
    }
    assert!(gateway.stop().await.success());
}
