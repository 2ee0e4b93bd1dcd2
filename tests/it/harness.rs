//! Shared helpers: a temp store folder, a pty "scanner", and the gateway process.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_serial::{SerialPort, SerialStream};

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn posgw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_posgw"))
}

/// A file or folder of the repository (a fixture, a shipped config, a unit file), from its path
/// relative to the repository root.
pub fn repo_file(relative: impl AsRef<Path>) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A loopback port that was free a moment ago (for a child process that binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A figure of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The CPU time process `pid` has spent so far, user and system, over all its threads
/// (`utime` + `stime` of `/proc/PID/stat`). Unlike wall time it hardly depends on what else
/// the machine runs.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime 14 and stime 15.
    let after_name = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no field {n} in /proc/{pid}/stat: {stat}"))
    };
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_second = u64::try_from(ticks_per_second).expect("clock ticks per second");
    Duration::from_secs_f64((field(14) + field(15)) as f64 / ticks_per_second as f64)
}

/// The peak resident memory of process `pid` in bytes (`VmHWM`).
pub fn peak_rss(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM") * 1024
}

/// A pseudo-terminal: (master, slave), both closed on exec.
///
/// posix_openpt does not set close-on-exec: without it every `posgw` child started later would
/// inherit both ends, so a pty could never be "unplugged", nor stay only its owner's.
pub fn pty_pair() -> (SerialStream, SerialStream) {
    let (master, slave) = SerialStream::pair().expect("create pty pair");
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .expect("set close-on-exec");
    }
    (master, slave)
}

/// A simulated scanner: the master side of a pty; the gateway opens the slave through `link`.
pub struct PtyScanner {
    pub master: SerialStream,
    /// Kept open so the slave exists until the gateway opens it.
    _slave: SerialStream,
}

impl PtyScanner {
    /// Creates a pty and points `link` at its slave side (replacing an older link).
    pub fn plug(link: &Path) -> PtyScanner {
        let (master, slave) = pty_pair();
        let slave_path = slave.name().expect("pty slave name");
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&slave_path, link).expect("link pty");
        PtyScanner {
            master,
            _slave: slave,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).await.expect("write to pty");
        self.master.flush().await.expect("flush pty");
    }
}

/// A store folder: config file, data dir, device links.
pub struct Store {
    pub dir: tempfile::TempDir,
}

impl Store {
    pub fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("posgw.toml")
    }

    /// Writes a config with one serial scanner at `scanner` plus `extra_device` lines.
    pub fn write_config(&self, device_extra: &str) {
        self.write_devices(&format!(
            r#"
[[device]]
id = "scanner-1"
role = "scanner"
transport = "serial"
station = "till-1"
profile = "generic-scanner"
path = "{scanner}"
{device_extra}
"#,
            scanner = self.path("scanner").display(),
        ));
    }

    /// Writes a config with the test `[gateway]` and `[api]` sections followed by `devices`
    /// (the `[[device]]` sections, as TOML text).
    pub fn write_devices(&self, devices: &str) {
        let config = format!(
            r#"
[gateway]
store = "WZ-LC-001"
id = "gw-test"
data_dir = "{data}"
flush = "20ms"

[api]
listen = "127.0.0.1:0"
{devices}"#,
            data = self.data_dir().display(),
        );
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// Appends sections (e.g. `[uplink]`) to the config written by [`Store::write_config`].
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(self.config_path()).expect("read config");
        config.push('\n');
        config.push_str(text);
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// Writes an `[uplink]` to `endpoint` with a token file holding `token`.
    pub fn add_uplink(&self, endpoint: &str, token: &str, extra: &str) {
        let token_file = self.path("hq.token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write token");
        self.append_config(&format!(
            "[uplink]\nendpoint = \"{endpoint}\"\ntoken_file = \"{}\"\nbatch_max_age = \"50ms\"\n{extra}\n",
            token_file.display()
        ));
    }

    /// Runs `posgw journal dump` and parses its lines.
    pub fn dump(&self) -> Vec<Value> {
        self.dump_with(&[])
    }

    /// Runs `posgw journal dump --dead` and parses its lines.
    pub fn dump_dead(&self) -> Vec<Value> {
        self.dump_with(&["--dead"])
    }

    fn dump_with(&self, extra: &[&str]) -> Vec<Value> {
        let output = posgw()
            .args(["journal", "dump", "--data"])
            .arg(self.data_dir())
            .args(extra)
            .output()
            .expect("run journal dump");
        assert!(
            output.status.success(),
            "journal dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("dump is utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("each dump line is a JSON record"))
            .collect()
    }
}

/// A running `posgw run`.
pub struct Gateway {
    pub child: Child,
    pub api: String,
    client: reqwest::Client,
    /// Every line the process wrote to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway and waits until its API answers.
    pub async fn start(store: &Store) -> Gateway {
        let config = store.config_path();
        Gateway::spawn(
            &["run", "-c", config.to_str().unwrap()],
            "api listening on ",
        )
        .await
    }

    /// Starts `posgw ARGS` and waits until it printed `marker` followed by its URL and its
    /// `/healthz` answers 200.
    pub async fn spawn(args: &[&str], marker: &'static str) -> Gateway {
        let mut command = posgw();
        command.args(args);
        Gateway::spawn_command(command, args[0], marker).await
    }

    /// [`Gateway::spawn`] for a prepared `posgw` command (e.g. with resource limits set);
    /// `tag` prefixes its log lines.
    pub async fn spawn_command(command: Command, tag: &str, marker: &'static str) -> Gateway {
        let gateway = Gateway::launch(command, tag, marker).await;
        gateway
            .wait_for("healthz ok", |g| async move {
                g.get("/healthz").await.is_some_and(|(code, _)| code == 200)
            })
            .await;
        gateway
    }

    /// Starts a prepared `posgw` command and returns as soon as it printed `marker` followed
    /// by its URL: the socket is bound, but the process may still be starting up behind it.
    pub async fn launch(mut command: Command, tag: &str, marker: &'static str) -> Gateway {
        let mut child = command
            .env(
                "RUST_LOG",
                std::env::var("POSGW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start posgw");
        let stderr = child.stderr.take().expect("stderr piped");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let tag = tag.to_owned();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(marker) {
                    let _ = addr_tx.send(line[at + marker.len()..].trim().to_owned());
                }
                // Shown with the test's output when it fails.
                eprintln!("[posgw {tag}] {line}");
                lines.lock().expect("log").push(line);
            }
        });
        let api = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(DEADLINE))
            .await
            .unwrap()
            .expect("posgw printed its address");
        Gateway {
            child,
            api,
            client: client(),
            log,
        }
    }

    /// GET a path of the local API: status code and body; None if it did not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self
            .client
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .ok()?;
        let code = response.status().as_u16();
        Some((code, response.text().await.ok()?))
    }

    pub async fn status(&self) -> Value {
        let (code, body) = self.get("/api/v1/status").await.expect("status answers");
        assert_eq!(code, 200);
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// The value of one metric series (exact series text before the value), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await.expect("metrics answer");
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `check` until it holds; fails the test after [`DEADLINE`].
    pub async fn wait_for<'a, F, Fut>(&'a self, what: &str, check: F)
    where
        F: Fn(&'a Gateway) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check(self).await {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` scan records were appended and everything appended is durable.
    pub async fn wait_scans_durable(&self, n: u64) {
        self.wait_records("scan", n).await;
    }

    /// Waits until `n` records of `kind` were appended and everything appended is durable.
    pub async fn wait_records(&self, kind: &str, n: u64) {
        let series = format!("posgw_records_total{{kind=\"{kind}\"}}");
        self.wait_for(&format!("{n} {kind} record(s)"), |g| {
            let series = series.clone();
            async move { g.metric(&series).await >= n as f64 }
        })
        .await;
        self.wait_durable().await;
    }

    /// Waits until every record appended so far is fsynced.
    pub async fn wait_durable(&self) {
        self.wait_for("durable journal", |g| async move {
            let journal = &g.status().await["journal"];
            journal["durable_seq"].as_u64().unwrap() + 1 >= journal["next_seq"].as_u64().unwrap()
        })
        .await;
    }

    /// Waits until device `id` reports `state`.
    pub async fn wait_device(&self, id: &str, state: &str) {
        self.wait_for(&format!("{id} {state}"), |g| async move {
            g.status().await["devices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == id && d["state"] == state)
        })
        .await;
    }

    /// How many lines of its log contain `text` so far.
    pub fn log_count(&self, text: &str) -> usize {
        let log = self.log.lock().expect("log");
        log.iter().filter(|line| line.contains(text)).count()
    }

    /// Waits until `n` lines of its log contain `text`.
    pub async fn wait_log(&self, text: &str, n: usize) {
        let start = Instant::now();
        while self.log_count(text) < n {
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for log line '{text}'"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGHUP (reload the configuration).
    pub fn hangup(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("send SIGHUP");
    }

    /// SIGTERM and wait for the exit status.
    pub async fn stop(self) -> ExitStatus {
        self.stop_with(nix::sys::signal::Signal::SIGTERM).await
    }

    /// Sends `signal` and waits for the exit status.
    pub async fn stop_with(mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|error| panic!("send {signal}: {error}"));
        tokio::task::spawn_blocking(move || self.child.wait().expect("wait for posgw"))
            .await
            .unwrap()
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub async fn kill9(mut self) {
        self.child.kill().expect("send SIGKILL");
        tokio::task::spawn_blocking(move || self.child.wait().expect("wait for posgw"))
            .await
            .unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of one kind.
pub fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// Asserts that the records' seqs of `epoch` are 1, 2, 3, … without gaps or repeats.
pub fn assert_seq_contiguous(records: &[Value], epoch: &str) {
    let seqs: Vec<u64> = records
        .iter()
        .filter(|r| r["epoch"] == epoch)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "seq must run 1..N without gaps in epoch {epoch}"
    );
}

/// An HTTP client for talking to a gateway or HQ under test. A peer that accepts connections
/// but goes silent fails the test instead of hanging it: no read may wait longer than the
/// deadline (an idle event stream still gets a `ping` every 15 s). Idle connections are
/// reused for [`POOL_IDLE`] at most.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(DEADLINE)
        .read_timeout(DEADLINE)
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .expect("http client")
}

/// How long a test client keeps an idle keep-alive connection for reuse: half the time after
/// which the gateway and HQ close one (their request head timeout, 10 s). With reqwest's
/// default of 90 s a request could go out on a connection the server was closing at that
/// moment and fail with `IncompleteMessage` or `ConnectionReset`: a test that had left the
/// connection idle for about 10 s (busy elsewhere, or not yielding while it parsed a large
/// answer) then saw `get` fail on a healthy gateway.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

/// A test that leaves its connection to the gateway idle past the gateway's keep-alive, here
/// busy without yielding as when it parses a large answer, still gets its next request
/// answered. With reqwest's default pool that request went out on the connection the gateway
/// had closed and failed (`mqtt_once` in CI: "status answers").
#[tokio::test]
async fn a_request_after_an_idle_spell_past_the_servers_keep_alive_is_answered() {
    let store = Store::new();
    store.write_config("");
    let gateway = Gateway::start(&store).await;
    // The start ended with a /healthz answer: the client holds an idle connection, which the
    // gateway closes after its request head timeout. Not a wait for anything: the idle spell
    // is what is tested, with the runtime blocked so nothing notices the close meanwhile.
    let keep_alive = posgw::serve::Limits::gateway(posgw::serve::open_files_limit()).header_timeout;
    std::thread::sleep(keep_alive + Duration::from_millis(500));
    assert_eq!(gateway.status().await["store"], "WZ-LC-001");
    assert!(gateway.stop().await.success());
}

#[test]
fn test_clients_drop_idle_connections_well_before_the_servers_do() {
    let open_files = posgw::serve::open_files_limit();
    for limits in [
        posgw::serve::Limits::gateway(open_files),
        posgw::serve::Limits::hq(open_files),
    ] {
        assert!(POOL_IDLE * 2 <= limits.header_timeout, "{limits:?}");
    }
}
