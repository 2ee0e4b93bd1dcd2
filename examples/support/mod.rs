//! What the load generators that drive a real `posgw run` share: pseudo-terminals for simulated
//! devices, starting the release binary and learning its API address, starting a `posgw hq`
//! child, reading one metric, a process's CPU time and memory, stopping it, and printing latency
//! quantiles. Included with `#[path = "support/mod.rs"] mod
//! support;` (cargo does not build this folder as an example of its own).

#![allow(dead_code)] // each example uses its own part

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_serial::{SerialPort, SerialStream};

/// The binary measured: `target/release/posgw`, or `$POSGW_BIN`.
pub fn posgw_bin() -> String {
    std::env::var("POSGW_BIN").unwrap_or_else(|_| "target/release/posgw".into())
}

/// A pseudo-terminal whose slave side is linked at `link`; our ends are closed on exec, so the
/// gateway does not inherit them.
pub fn pty_at(link: &Path) -> Result<(SerialStream, SerialStream), Box<dyn std::error::Error>> {
    let (master, slave) = SerialStream::pair()?;
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    std::os::unix::fs::symlink(slave.name().ok_or("pty has no name")?, link)?;
    Ok((master, slave))
}

/// Starts `posgw run -c CONFIG` with `RUST_LOG=log`; returns it and its API address (from its
/// `api listening on` line). Its other log lines are passed on when `show` says so.
pub fn start_gateway(
    bin: &str,
    config: &Path,
    log: &str,
    show: impl Fn(&str) -> bool + Send + 'static,
) -> Result<(Child, String), Box<dyn std::error::Error>> {
    let mut gateway = Command::new(bin)
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", log)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("failed to start '{bin}': {error}"))?;
    let stderr = gateway.stderr.take().ok_or("gateway stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(at) = line.find("api listening on ") {
                let _ = tx.send(line[at + 17..].trim().to_owned());
            } else if show(&line) {
                eprintln!("[posgw] {line}");
            }
        }
    });
    let api = rx.recv_timeout(Duration::from_secs(30))?;
    Ok((gateway, api))
}

/// The value of a metric series on the gateway's `/metrics`, or 0.
pub async fn metric(client: &reqwest::Client, api: &str, series: &str) -> f64 {
    let Ok(response) = client.get(format!("{api}/metrics")).send().await else {
        return 0.0;
    };
    let body = response.text().await.unwrap_or_default();
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// SIGTERM and wait.
pub fn stop(gateway: &mut Child) -> Result<(), Box<dyn std::error::Error>> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    gateway.wait()?;
    Ok(())
}

/// Prints n, p50, p99 and max of `values` in milliseconds.
pub fn quantiles(label: &str, mut values: Vec<Duration>) {
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

/// Starts a `posgw hq` child in `dir` (its data in `dir/hq`) that accepts `store` with the token
/// written to `dir/hq.token`, and waits until it accepts connections. Returns the child, the
/// batches endpoint for the gateway's `[uplink]` and the token file.
pub fn start_hq(
    bin: &str,
    dir: &Path,
    store: &str,
) -> Result<(Child, String, std::path::PathBuf), Box<dyn std::error::Error>> {
    let token = dir.join("hq.token");
    std::fs::write(&token, "bench-token\n")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("hq.toml");
    std::fs::write(
        &config,
        format!(
            "[hq]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[[store]]\ncode = \"{store}\"\ntoken_file = \"{}\"\n",
            dir.join("hq").display(),
            token.display()
        ),
    )?;
    let child = Command::new(bin)
        .args(["hq", "-c"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()?;
    // `posgw hq` binds once its database is open.
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("posgw hq did not start listening within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, format!("http://127.0.0.1:{port}/v1/batches"), token))
}

/// A `/proc/PID/status` figure in KiB (`key` such as `"VmRSS:"` or `"VmHWM:"`; 0 if unreadable).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) used so far by process `pid` (0 if unreadable).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
