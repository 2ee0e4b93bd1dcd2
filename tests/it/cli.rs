//! The command line's exit codes and messages.

use nix::sys::signal::Signal;

use crate::harness::{of_kind, posgw, repo_file, Gateway, Store, DEADLINE};

#[test]
fn check_config_accepts_the_shipped_example() {
    let output = posgw()
        .arg("check-config")
        .arg("-c")
        .arg(repo_file("config/posgw.toml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("WZ-LC-001"), "{summary}");
    assert!(summary.contains("generic-scanner"), "{summary}");
}

#[test]
fn a_bad_config_exits_2_with_its_position_and_a_suggestion() {
    let store = Store::new();
    store.write_config("baudrate = 9600");
    let output = posgw()
        .arg("check-config")
        .arg("-c")
        .arg(store.config_path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}:18:1:", store.config_path().display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("did you mean 'baud'"), "{stderr}");

    // `run` refuses the same config the same way, without starting anything.
    let output = posgw()
        .arg("run")
        .arg("-c")
        .arg(store.config_path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!store.data_dir().exists(), "nothing started");
}

#[test]
fn a_missing_config_file_exits_2() {
    let output = posgw()
        .args(["check-config", "-c", "/nonexistent/posgw.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/posgw.toml"));
}

#[test]
fn usage_errors_exit_2() {
    let output = posgw().arg("no-such-command").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn journal_commands_on_a_missing_data_dir_fail_with_a_message() {
    let store = Store::new();
    let output = posgw()
        .args(["journal", "dump", "--data"])
        .arg(store.path("nothing-here"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing-here"));
}

#[test]
fn the_demo_runs_a_simulated_store_and_stops_by_itself() {
    let store = Store::new();
    let output = posgw()
        .args(["demo", "--fast", "--for", "6s", "--data"])
        .arg(store.path("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("/station/till-1"), "{stdout}");
    assert!(stdout.contains("/v1/stats"), "{stdout}");
    // Customers came, prompts were answered, receipts printed: all of it reached HQ.
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("HQ received"))
        .unwrap_or_else(|| panic!("no HQ summary in {stdout}"));
    let figure = |label: &str| -> u64 {
        let before = summary.split(label).next().unwrap_or_default();
        before
            .rsplit(' ')
            .find(|word| !word.is_empty())
            .and_then(|word| word.trim_end_matches(',').parse().ok())
            .unwrap_or(0)
    };
    assert!(figure(" scans") > 0, "{summary}");
    assert!(figure(" sales") > 0, "{summary}");
    assert!(figure(" attributions") > 0, "{summary}");
    // The first customer's flow product went through the five steps and its sale.
    assert!(figure(" consultations") > 0, "{summary}");
    // The gateway's own records went to the embedded HQ; `stopped` is the last one written.
    let dump = posgw()
        .args(["journal", "dump", "--data"])
        .arg(store.path("demo").join("data"))
        .output()
        .unwrap();
    assert!(dump.status.success());
    let last = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(last.contains(r#""event":"stopped""#), "{last}");
}

#[test]
fn systemd_is_told_ready_watchdog_and_stopping_over_notify_socket() {
    use std::os::unix::net::UnixDatagram;

    let store = Store::new();
    store.write_config("");
    let socket_path = store.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(crate::harness::DEADLINE))
        .unwrap();
    let mut child = posgw()
        .arg("run")
        .arg("-c")
        .arg(store.config_path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut received = String::new();
    let mut buffer = [0u8; 512];
    while !(received.contains("READY=1") && received.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buffer).expect("a notification in time");
        received.push_str(&String::from_utf8_lossy(&buffer[..n]));
        received.push('\n');
    }
    assert!(
        received.contains("STATUS=running: store WZ-LC-001"),
        "{received}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut stopping = false;
    while !stopping {
        let n = socket.recv(&mut buffer).expect("STOPPING in time");
        stopping = String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1");
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    // Without NOTIFY_SOCKET the same command runs normally: every other test does that.
}

/// A stop can come the moment the API socket exists: systemd stopping a unit right after
/// starting it, or a client (a test harness) that saw the address and is done. SIGTERM and
/// SIGINT are caught from before the API is bound, so `posgw run` and `posgw hq` finish
/// starting, stop cleanly and exit 0 instead of dying of the signal's default action.
#[tokio::test]
async fn sigterm_or_sigint_the_moment_the_api_is_bound_is_a_clean_stop() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let store = Store::new();
        store.write_config("");
        let mut run = posgw();
        run.arg("run").arg("-c").arg(store.config_path());
        let gateway = Gateway::launch(run, "run", "api listening on ").await;
        let status = gateway.stop_with(signal).await;
        assert!(
            status.success(),
            "posgw run stopped by {signal} right after binding its API: {status}"
        );
        let records = store.dump();
        let events: Vec<&serde_json::Value> = of_kind(&records, "gateway")
            .iter()
            .map(|record| &record["data"]["event"])
            .collect();
        assert_eq!(events, ["started", "stopped"], "{signal}: a clean stop");

        let hq = tempfile::tempdir().unwrap();
        std::fs::write(hq.path().join("admin.token"), "admin-token").unwrap();
        std::fs::write(hq.path().join("store.token"), "store-token").unwrap();
        let config = hq.path().join("hq.toml");
        std::fs::write(
            &config,
            "[hq]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n\n\
             [[store]]\ncode = \"WZ-LC-001\"\ntoken_file = \"store.token\"\n",
        )
        .unwrap();
        let mut command = posgw();
        command.arg("hq").arg("-c").arg(&config);
        let receiver = Gateway::launch(command, "hq", "hq listening on ").await;
        let status = receiver.stop_with(signal).await;
        assert!(
            status.success(),
            "posgw hq stopped by {signal} right after binding: {status}"
        );
    }
}

/// Likewise SIGHUP, the reload request (systemd sends it on `reload` as soon as the gateway is
/// ready): sent the moment the API is bound, it reloads the configuration once the gateway is
/// up instead of ending the process.
#[tokio::test]
async fn sighup_the_moment_the_api_is_bound_is_a_reload() {
    let store = Store::new();
    store.write_config("");
    let mut run = posgw();
    run.arg("run").arg("-c").arg(store.config_path());
    let mut gateway = Gateway::launch(run, "run", "api listening on ").await;
    gateway.hangup();
    let start = std::time::Instant::now();
    while gateway.log_count("reloaded: campaigns") == 0 {
        if let Some(status) = gateway.child.try_wait().unwrap() {
            panic!("posgw run ended by a SIGHUP right after binding its API: {status}");
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for the reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    gateway
        .wait_for("healthz ok", |g| async move {
            g.get("/healthz").await.is_some_and(|(code, _)| code == 200)
        })
        .await;
    assert!(gateway.stop().await.success());
}
