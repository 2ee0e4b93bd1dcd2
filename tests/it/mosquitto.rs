//! A real mosquitto broker for tests, on a free loopback port, restartable with its state kept.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::DEADLINE;

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts mosquitto (from PATH or /usr/sbin) with persistence in a temp dir.
    pub fn start() -> Mosquitto {
        let mut broker = Mosquitto::reserve();
        broker.spawn();
        broker
    }

    /// Starts mosquitto with `extra` lines appended to its configuration.
    pub fn start_with(extra: &str) -> Mosquitto {
        let mut broker = Mosquitto::reserve();
        let path = broker.dir.path().join("mosquitto.conf");
        let mut config = std::fs::read_to_string(&path).expect("read config");
        config.push_str(extra);
        std::fs::write(&path, config).expect("write config");
        broker.spawn();
        broker
    }

    /// A broker's port and folder, not started yet ([`Mosquitto::start_now`] starts it): for
    /// tests of what happens while the store's broker is down.
    pub fn reserve() -> Mosquitto {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("probe port");
            probe.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        Mosquitto {
            port,
            dir,
            child: None,
        }
    }

    /// Starts a reserved broker.
    pub fn start_now(&mut self) {
        self.spawn();
    }

    fn binary() -> PathBuf {
        for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
            if std::path::Path::new(candidate).exists() {
                return candidate.into();
            }
        }
        "mosquitto".into()
    }

    fn spawn(&mut self) {
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM: it saves its sessions and queued messages).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Stops and starts the broker on the same port with the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
