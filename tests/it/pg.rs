//! A real, throw-away PostgreSQL cluster for tests: `initdb` in a temp folder, the server on a
//! free loopback port, started and stopped with `pg_ctl`. TCP logins need a password (role
//! `posgw`, password `posgw`, owning database `posgw`); the superuser `postgres` gets in without
//! one, but only through the unix socket in the temp folder ([`PgCluster::psql`]).
//!
//! initdb and postgres refuse to run as root. When the tests run as root (CI does), every
//! PostgreSQL program runs as `nobody`, and the temp folder belongs to `nobody`.
//!
//! The postmaster is not a child of the test: `pg_ctl start` forks it and exits, so the process
//! is known by the pid in `DATA/postmaster.pid`. Where init does not reap orphans (some
//! container and VM inits), an exited postmaster stays a zombie; [`PgCluster::start_again`]
//! removes the lock files such a zombie leaves behind.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};

use crate::harness::{free_port, DEADLINE};

/// The role and database of [`PgCluster::url`], and that role's password.
const ROLE: &str = "posgw";
/// The superuser initdb creates (`-U`); [`PgCluster::psql`] logs in as it.
const SUPERUSER: &str = "postgres";

pub struct PgCluster {
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// The folder of initdb, pg_ctl, postgres and psql.
    bin: PathBuf,
    /// Who the PostgreSQL programs run as: `nobody` when the tests run as root, else None
    /// (the test's own user).
    run_as: Option<(Uid, Gid)>,
}

impl PgCluster {
    /// initdb + start; panics with a clear message if PostgreSQL binaries are missing.
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let run_as = nix::unistd::geteuid().is_root().then(|| {
            let nobody = nix::unistd::User::from_name("nobody")
                .ok()
                .flatten()
                .expect("running as root, PostgreSQL needs the user `nobody`");
            (nobody.uid, nobody.gid)
        });
        // Under the system temp folder (world-traversable /tmp), and short: the socket path
        // `DIR/.s.PGSQL.PORT` must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("posgw-pg-")
            .tempdir_in(std::env::temp_dir())
            .expect("tempdir");
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp folder");
        }
        // Built before the server starts so that a panic from here on stops it (Drop).
        let cluster = PgCluster {
            dir,
            port: free_port(),
            bin,
            run_as,
        };
        cluster.run(
            cluster
                .command("initdb")
                .arg("-D")
                .arg(cluster.data_dir())
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
                // Only the new files are not fsynced; the server itself runs with fsync=on.
                .arg("--no-sync"),
            "initdb",
        );
        // Trust on the unix socket (in our private folder), a password over TCP.
        std::fs::write(
            cluster.data_dir().join("pg_hba.conf"),
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n\
             local   all       all                 trust\n\
             host    all       all   127.0.0.1/32  scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        // Later lines of postgresql.conf win over initdb's; start_again reads them again.
        let settings = format!(
            "\n# posgw tests\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = on\n\
             max_connections = 100\n\
             shared_buffers = 128MB\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n",
            port = cluster.port,
            socket_dir = cluster.dir.path().display(),
        );
        let conf = cluster.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("write postgresql.conf");

        cluster.pg_ctl_start();
        cluster.psql(
            "postgres",
            &format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE}';\n\
                 CREATE DATABASE {ROLE} OWNER {ROLE};\n"
            ),
        );
        cluster
    }

    /// postgres://posgw:posgw@127.0.0.1:PORT/posgw  (a password-authenticated role `posgw`
    /// owning database `posgw`)
    pub fn url(&self) -> String {
        self.database_url(ROLE)
    }

    /// Same cluster, another fresh database (CREATE DATABASE name OWNER posgw) and its url.
    /// `name` is a plain lowercase identifier (letters, digits, `_`).
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name {name:?}: use lowercase letters, digits and _"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE};"));
        self.database_url(name)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path of a PostgreSQL program (psql, pg_dump, …) of the installation the cluster
    /// runs on; a bare name (found on PATH) if that folder lacks it.
    pub fn bin(&self, program: &str) -> PathBuf {
        let path = self.bin.join(program);
        if path.exists() {
            path
        } else {
            program.into()
        }
    }

    /// pg_ctl stop -m fast, waits.
    pub fn stop(&self) {
        self.run(
            self.pg_ctl().args(["-m", "fast", "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        );
    }

    /// starts again on the same port and data dir, waits until it accepts connections.
    pub fn start_again(&self) {
        // After kill9 the lock files name the dead postmaster. postgres takes them over when
        // that pid is gone, but not while it is an unreaped zombie (it still "exists").
        if let Some(pid) = self.postmaster_pid() {
            if !alive(pid) {
                let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
                let socket_lock = format!(".s.PGSQL.{}.lock", self.port);
                let _ = std::fs::remove_file(self.dir.path().join(socket_lock));
            }
        }
        self.pg_ctl_start();
    }

    /// SIGKILL the postmaster (crash), no wait for cleanup beyond reaping.
    ///
    /// Returns once the postmaster and every process it had forked are dead (each notices the
    /// postmaster is gone and exits; a backend busy in a query finishes it first) and the port
    /// refuses connections: [`PgCluster::start_again`] can follow at once (a new postmaster
    /// would not start while an old child still holds the shared memory).
    pub fn kill9(&self) {
        let pid = self
            .postmaster_pid()
            .expect("kill9: no postmaster.pid, the cluster is not running");
        // Stopped, the postmaster cannot fork while its children are listed.
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the postmaster");
        let mut processes = children(pid);
        processes.push(pid);
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL the postmaster");
        let start = Instant::now();
        loop {
            processes.retain(|&pid| alive(pid));
            let refused = TcpStream::connect(("127.0.0.1", self.port)).is_err();
            if processes.is_empty() && refused {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "after kill -9 of the postmaster: still running {processes:?}, port open: {}",
                !refused
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs SQL through psql as superuser, returns stdout (psql -At -X -v ON_ERROR_STOP=1);
    /// panics on error with stderr.
    ///
    /// `sql` may hold several statements, each run on its own (autocommit; psql reads them from
    /// stdin). With `-q` only query results are printed, one row a line, columns split by `|`,
    /// each line ending in `\n`: `SELECT 1` gives `"1\n"`.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut child = self
            .command("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start psql");
        // Written from another thread: psql may fill its stdout before it has read all of it.
        let mut stdin = child.stdin.take().expect("psql stdin");
        let sql = sql.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, sql.as_bytes());
        });
        let output = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        assert!(
            output.status.success(),
            "psql on {database} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("psql output is UTF-8")
    }

    /// CPU time (user+sys) of the postmaster and all its children so far, from /proc (for
    /// benches).
    ///
    /// The postmaster's own time, that of the children it has reaped (`cutime`/`cstime`: the
    /// backends of closed connections) and that of the children still running.
    pub fn cpu_time(&self) -> Duration {
        let pid = self
            .postmaster_pid()
            .expect("cpu_time: no postmaster.pid, the cluster is not running");
        // Clock ticks of fields `from..=to` of /proc/PID/stat: utime 14, stime 15, cutime 16,
        // cstime 17 (the last two: its children it has reaped).
        let ticks = |pid: i32, from: usize, to: usize| -> u64 {
            proc_stat(pid).map_or(0, |fields| {
                (from..=to)
                    .filter_map(|n| fields.get(n - 3)?.parse::<u64>().ok())
                    .sum()
            })
        };
        // A child reaped while the others are read would count twice, or not at all (a
        // backend exits just after its client): read again when the reaped time moved meanwhile.
        let mut total = 0;
        for _ in 0..100 {
            let reaped = ticks(pid, 16, 17);
            let running: u64 = children(pid)
                .into_iter()
                .map(|child| ticks(child, 14, 17))
                .sum();
            total = ticks(pid, 14, 17) + running;
            if ticks(pid, 16, 17) == reaped {
                break;
            }
        }
        // SAFETY: sysconf only reads a system constant.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks_per_second = u64::try_from(ticks_per_second).expect("clock ticks per second");
        Duration::from_secs_f64(total as f64 / ticks_per_second as f64)
    }

    fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://{ROLE}:{ROLE}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The postmaster's pid: the first line of `postmaster.pid`, if the file is there.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// A PostgreSQL program, run as the cluster's user in the temp folder, with no PG*
    /// variables of the test's environment (PGHOST, PGPORT, PGDATA…) in the way.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin(program));
        command.current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        if let Some((uid, gid)) = self.run_as {
            // Set in the child before exec; std also drops root's supplementary groups.
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data_dir());
        command
    }

    /// `pg_ctl start -w`: returns once the server accepts connections.
    fn pg_ctl_start(&self) {
        let output = self
            .pg_ctl()
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "30", "start"])
            .output()
            .expect("run pg_ctl start");
        if !output.status.success() {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            panic!(
                "pg_ctl start failed ({}): {}{}\nserver log:\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
    }

    /// Runs a program to its end; panics with its output if it fails.
    fn run(&self, command: &mut Command, what: &str) {
        let output = command
            .output()
            .unwrap_or_else(|error| panic!("run {what}: {error}"));
        assert!(
            output.status.success(),
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PgCluster {
    /// Immediate stop (pg_ctl stop -m immediate), temp dir removed. Never panics: it also runs
    /// while a failed test unwinds.
    fn drop(&mut self) {
        // Nothing to stop after stop() or kill9. (pg_ctl would even signal a zombie postmaster
        // and wait in vain for it to remove postmaster.pid.)
        let Some(pid) = self.postmaster_pid().filter(|&pid| alive(pid)) else {
            return;
        };
        let stopped = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output()
            .is_ok_and(|output| output.status.success());
        // pg_ctl failed: the postmaster is killed, its children follow it by themselves.
        if !stopped {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // `dir` (a TempDir) removes the folder after this.
    }
}

/// The folder of the PostgreSQL programs: `pg_config --bindir` if it holds initdb, else the
/// newest `/usr/lib/postgresql/VERSION/bin` (Debian keeps initdb off PATH), else the folder of
/// the initdb on PATH.
fn bin_dir() -> PathBuf {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return dir;
        }
    }
    // "9.6" < "15" < "16": compared as numbers, part by part.
    let version = |dir: &Path| -> Vec<u32> {
        let name = dir.parent().and_then(Path::file_name);
        let name = name.map(|name| name.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        name.split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|dir| has_initdb(dir))
        .max_by_key(|dir| version(dir));
    if let Some(dir) = newest {
        return dir;
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_initdb(dir)))
        .expect(
            "PostgreSQL not found (no initdb from pg_config --bindir, in /usr/lib/postgresql/*/bin \
             or on PATH): apt-get install postgresql, or run .ci/run",
        )
}

/// The fields of `/proc/PID/stat` from field 3 (state) on: field n is at index n - 3. None if
/// there is no such process.
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may contain spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Whether process `pid` still runs: it exists and is not a zombie waiting to be reaped. (A
/// pid reused by another process within a test's few seconds is not considered.)
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|fields| {
        fields
            .first()
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The processes whose parent is `pid` (field 4 of their stat), zombies included.
fn children(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| proc_stat(child).is_some_and(|fields| fields.get(1) == Some(&parent)))
        .collect()
}
