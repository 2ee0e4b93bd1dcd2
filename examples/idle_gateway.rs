//! Measures an idle gateway: CPU share and RSS of `posgw run` with one (or more) serial scanners
//! on pseudo-terminals and no traffic.
//!
//! ```sh
//! cargo build --release && cargo run --release --example idle_gateway -- 60 1
//! ```
//! Arguments: seconds to measure (default 60), number of scanners (default 1). The binary measured
//! is `target/release/posgw` (override with `POSGW_BIN`).

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_serial::{SerialPort, SerialStream};

#[path = "support/mod.rs"]
mod support;
use support::status_kib;

/// Clock ticks per second for /proc/PID/stat times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let scanners: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let bin = std::env::var("POSGW_BIN").unwrap_or_else(|_| "target/release/posgw".into());

    let dir = tempfile::tempdir().expect("tempdir");
    let mut ptys = Vec::new();
    let mut devices = String::new();
    for n in 1..=scanners {
        let (master, slave) = SerialStream::pair().expect("pty");
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .expect("cloexec");
        }
        let link = dir.path().join(format!("scanner-{n}"));
        std::os::unix::fs::symlink(slave.name().expect("pty name"), &link).expect("link");
        devices.push_str(&format!(
            "[[device]]\nid = \"scanner-{n}\"\nrole = \"scanner\"\ntransport = \"serial\"\nprofile = \"generic-scanner\"\npath = \"{}\"\n\n",
            link.display()
        ));
        ptys.push((master, slave));
    }
    let config = dir.path().join("posgw.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nstore = \"IDLE-1\"\nid = \"gw-idle\"\ndata_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n{devices}",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");

    let mut child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let pid = child.id();
    // Let start-up finish before measuring the idle state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_ticks = cpu_ticks(pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = (cpu_ticks(pid) - start_ticks) as f64 / ticks_per_second();
    let wall = started.elapsed().as_secs_f64();
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    drop(ptys);
    println!(
        "idle gateway, {scanners} scanner(s), {wall:.0} s: cpu {used:.2} s = {:.3}% of one core; rss {:.1} MiB (peak {:.1} MiB)",
        100.0 * used / wall,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
