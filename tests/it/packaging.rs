//! Packaging checks: the Debian package metadata (`[package.metadata.deb]` in Cargo.toml), the
//! systemd units, and the sysusers.d / tmpfiles.d files agree with each other and with the repo.
//!
//! Needs neither cargo-deb nor a running systemd: the metadata and the unit files are parsed
//! here. Where `systemd-analyze` is on PATH the units are also checked by `systemd-analyze verify`
//! and their `systemd-analyze security --offline=yes` exposure is held under a ceiling; without
//! it that part prints a note and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::repo_file;

/// Where the package installs the binary; the units' ExecStart= must run this file.
const PACKAGED_BINARY: &str = "/usr/bin/posgw";

/// Highest `systemd-analyze security` exposure accepted for posgw.service (it was 1.9 with systemd
/// 252 when the hardening was written; serial ports, pseudo-terminals and outbound HQ traffic cost the rest).
const MAX_EXPOSURE_GATEWAY: f64 = 2.5;

/// Highest exposure accepted for posgw-hq.service (1.1 then: no devices, no supplementary groups).
const MAX_EXPOSURE_HQ: f64 = 1.5;

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read '{}': {e}", path.display()))
}

/// `[package.metadata.deb]` of Cargo.toml.
fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = read("Cargo.toml")
        .parse()
        .unwrap_or_else(|e| panic!("Cargo.toml does not parse: {e}"));
    manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("deb"))
        .and_then(|d| d.as_table())
        .cloned()
        .unwrap_or_else(|| panic!("Cargo.toml has no [package.metadata.deb] table"))
}

/// One packaged file: where it comes from in the repo and where it goes in the package.
#[derive(Debug)]
struct Asset {
    /// Path (or `dir/*.ext` glob) relative to the repo root, as cargo-deb reads it.
    source: String,
    /// Destination relative to `/`; a trailing `/` means "into this directory".
    dest: String,
}

impl Asset {
    /// The absolute installed path of `file` (a file the source names).
    fn installed(&self, file: &str) -> String {
        if self.dest.ends_with('/') {
            format!("/{}{file}", self.dest)
        } else {
            format!("/{}", self.dest)
        }
    }
}

/// The `assets` list; both cargo-deb syntaxes (`[src, dest, mode]` and `{ source, dest }`).
fn assets(deb: &toml::Table) -> Vec<Asset> {
    let list = deb
        .get("assets")
        .and_then(|a| a.as_array())
        .unwrap_or_else(|| panic!("[package.metadata.deb] has no assets list"));
    list.iter()
        .map(|item| {
            let (source, dest) = match item {
                toml::Value::Array(fields) => (fields.first(), fields.get(1)),
                toml::Value::Table(fields) => (fields.get("source"), fields.get("dest")),
                other => panic!("asset is neither a list nor a table: {other}"),
            };
            let text = |v: Option<&toml::Value>, what: &str| {
                v.and_then(|v| v.as_str())
                    .unwrap_or_else(|| panic!("asset {item} has no {what} string"))
                    .to_string()
            };
            Asset {
                source: text(source, "source"),
                dest: text(dest, "dest"),
            }
        })
        .collect()
}

/// The repo files an asset source names: itself, or the matches of a `dir/prefix*suffix` glob.
fn source_files(source: &str) -> Vec<String> {
    let Some((dir, pattern)) = source.rsplit_once('/').filter(|(_, p)| p.contains('*')) else {
        return if repo_file(source).is_file() {
            vec![source.to_string()]
        } else {
            Vec::new()
        };
    };
    assert!(
        !dir.contains('*'),
        "asset glob '{source}': only the file name may have a '*'"
    );
    let (prefix, suffix) = pattern
        .split_once('*')
        .unwrap_or_else(|| panic!("asset glob '{source}' has no '*'"));
    let entries = std::fs::read_dir(repo_file(dir))
        .unwrap_or_else(|e| panic!("asset glob '{source}': cannot list '{dir}': {e}"));
    let mut files: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        })
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    files
}

/// Every absolute path the package installs, with the repo file it comes from (None: built).
fn installed_files(assets: &[Asset]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for asset in assets {
        if let Some(binary) = asset.source.strip_prefix("target/release/") {
            out.push((asset.installed(binary), None));
            continue;
        }
        for file in source_files(&asset.source) {
            let name = file.rsplit('/').next().unwrap_or(&file).to_string();
            out.push((asset.installed(&name), Some(file)));
        }
    }
    out
}

/// A unit file as `(section, key, value)` lines in file order; comments and blanks dropped.
struct Unit {
    /// Repo path, for messages.
    name: String,
    /// Every assignment, in order (keys may repeat, as systemd allows).
    lines: Vec<(String, String, String)>,
}

impl Unit {
    fn load(relative: &str) -> Unit {
        let mut section = String::new();
        let mut lines = Vec::new();
        for raw in read(relative).lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{relative}: line without '=': {line}"));
            lines.push((
                section.clone(),
                key.trim().to_string(),
                value.trim().to_string(),
            ));
        }
        Unit {
            name: relative.to_string(),
            lines,
        }
    }

    /// Every value of `key` in `[Service]`, in order.
    fn all(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` in `[Service]` (the one systemd uses for single-valued keys).
    fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    fn expect(&self, key: &str, value: &str) {
        assert_eq!(
            self.get(key),
            Some(value),
            "{}: expected {key}={value}",
            self.name
        );
    }

    fn expect_present(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{}: {key}= is missing", self.name))
    }

    /// Each `key` line as the program it runs (without systemd's `-@:+!` prefixes) and its
    /// arguments.
    fn commands(&self, key: &str) -> Vec<(String, Vec<String>)> {
        self.all(key)
            .iter()
            .map(|line| {
                let mut words = line.split_whitespace();
                let program = words
                    .next()
                    .unwrap_or_else(|| panic!("{}: {key}= is empty", self.name))
                    .trim_start_matches(['-', '@', ':', '+', '!']);
                (program.to_string(), words.map(str::to_string).collect())
            })
            .collect()
    }

    /// The last `key` command (see `commands`); fails the test when there is none.
    fn command(&self, key: &str) -> (String, Vec<String>) {
        self.commands(key)
            .pop()
            .unwrap_or_else(|| panic!("{}: {key}= is missing", self.name))
    }

    /// The value after `-c` in an Exec*= line.
    fn config_argument(&self, key: &str) -> String {
        let (_, args) = self.command(key);
        let at = args
            .iter()
            .position(|a| a == "-c" || a == "--config")
            .unwrap_or_else(|| panic!("{}: {key}= passes no -c PATH", self.name));
        args.get(at + 1)
            .cloned()
            .unwrap_or_else(|| panic!("{}: {key}= ends after -c", self.name))
    }
}

/// The hardening every unit of the package carries (the list, plus what goes with it).
fn expect_common_hardening(unit: &Unit) {
    unit.expect("ProtectSystem", "strict");
    unit.expect("NoNewPrivileges", "yes");
    unit.expect("ProtectHome", "yes");
    unit.expect("PrivateTmp", "yes");
    unit.expect("CapabilityBoundingSet", "");
    unit.expect("ProtectKernelTunables", "yes");
    unit.expect("ProtectKernelModules", "yes");
    unit.expect("ProtectControlGroups", "yes");
    unit.expect("RestrictNamespaces", "yes");
    unit.expect("LockPersonality", "yes");
    unit.expect("MemoryDenyWriteExecute", "yes");
    unit.expect("RestrictSUIDSGID", "yes");
    unit.expect("SystemCallArchitectures", "native");
    // One number sets soft and hard: the system call filter (~@resources) keeps the service from
    // raising its own soft limit, and systemd's default soft limit (1024) is what idle sockets
    // once exhausted.
    let open_files = unit.expect_present("LimitNOFILE");
    assert!(
        open_files.parse::<u64>().is_ok_and(|n| n >= 4096),
        "{}: LimitNOFILE= must be one number of at least 4096, found '{open_files}'",
        unit.name
    );
    assert!(
        unit.get("DynamicUser").is_none_or(|v| v == "no"),
        "{}: the state directory needs the fixed sysusers.d user, not DynamicUser=",
        unit.name
    );

    let families: BTreeSet<&str> = unit
        .expect_present("RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    let wanted = BTreeSet::from(["AF_UNIX", "AF_INET", "AF_INET6"]);
    assert_eq!(families, wanted, "{}: RestrictAddressFamilies=", unit.name);

    let filters = unit.all("SystemCallFilter");
    assert_eq!(
        filters.first().copied(),
        Some("@system-service"),
        "{}: the first SystemCallFilter= must be the @system-service allow list",
        unit.name
    );
    assert!(
        filters
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@privileged")),
        "{}: SystemCallFilter= must take @privileged away",
        unit.name
    );

    for key in ["ExecStartPre", "ExecStart"] {
        for (program, _) in unit.commands(key) {
            assert_eq!(program, PACKAGED_BINARY, "{}: {key}= program", unit.name);
        }
    }
    assert!(
        unit.lines
            .iter()
            .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"),
        "{}: [Install] WantedBy=multi-user.target is missing",
        unit.name
    );
}

#[test]
fn every_asset_source_exists_and_etc_files_are_conffiles() {
    let deb = deb_metadata();
    let assets = assets(&deb);
    for asset in &assets {
        if let Some(binary) = asset.source.strip_prefix("target/release/") {
            assert_eq!(binary, "posgw", "the only built asset is the posgw binary");
            assert_eq!(
                asset.installed(binary),
                PACKAGED_BINARY,
                "the binary's install path"
            );
            continue;
        }
        assert!(
            !source_files(&asset.source).is_empty(),
            "asset source '{}' matches no file in the repo",
            asset.source
        );
    }

    let conf_files: BTreeSet<String> = deb
        .get("conf-files")
        .and_then(|c| c.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str())
                .map(|s| format!("/{}", s.trim_start_matches('/')))
                .collect()
        })
        .unwrap_or_default();
    let installed = installed_files(&assets);
    let installed_paths: BTreeSet<&str> = installed.iter().map(|(p, _)| p.as_str()).collect();
    for (path, _) in &installed {
        if path.starts_with("/etc/") {
            assert!(
                conf_files.contains(path),
                "{path} is installed under /etc but not listed in conf-files"
            );
        }
    }
    for conf in &conf_files {
        assert!(
            installed_paths.contains(conf.as_str()),
            "conf-files lists {conf}, which no asset installs"
        );
    }

    // What the issue asks the package to carry.
    for wanted in [
        PACKAGED_BINARY,
        "/usr/lib/sysusers.d/posgw.conf",
        "/usr/lib/tmpfiles.d/posgw.conf",
        "/etc/posgw/posgw.toml",
        "/etc/posgw/hq.toml",
        "/usr/share/doc/posgw/README.md",
        "/usr/share/doc/posgw/ARCHITECTURE.md",
        "/usr/share/posgw/drivers/generic-scanner.toml",
    ] {
        assert!(
            installed_paths.contains(wanted),
            "the package does not install {wanted}"
        );
    }
    let sources: BTreeSet<&str> = installed.iter().filter_map(|(_, s)| s.as_deref()).collect();
    for (installed, source) in [
        ("/etc/posgw/posgw.toml", "config/posgw.toml"),
        ("/etc/posgw/hq.toml", "config/hq.toml"),
    ] {
        assert!(
            sources.contains(source),
            "{installed} must come from {source}"
        );
    }
}

#[test]
fn units_are_packaged_by_systemd_units_and_neither_enabled_nor_started() {
    let deb = deb_metadata();
    let units = deb
        .get("systemd-units")
        .unwrap_or_else(|| panic!("[package.metadata.deb] has no systemd-units"));
    let entries: Vec<&toml::Value> = match units {
        toml::Value::Array(list) => list.iter().collect(),
        other => vec![other],
    };
    let mut packaged = BTreeSet::new();
    for entry in entries {
        let name = entry
            .get("unit-name")
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("systemd-units entry {entry} has no unit-name"));
        let dir = entry
            .get("unit-scripts")
            .or_else(|| deb.get("maintainer-scripts"))
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("systemd-units entry {entry}: no unit-scripts folder"));
        let file = format!("{}/{name}.service", dir.trim_end_matches('/'));
        assert!(
            repo_file(&file).is_file(),
            "systemd-units entry {name}: {file} is missing"
        );
        // The shipped posgw.toml describes an example store: nothing may run before it is edited.
        for key in ["enable", "start"] {
            assert_eq!(
                entry.get(key).and_then(|v| v.as_bool()),
                Some(false),
                "systemd-units entry {name}: {key} must be false"
            );
        }
        packaged.insert(name.to_string());
    }
    let wanted = BTreeSet::from(["posgw".to_string(), "posgw-hq".to_string()]);
    assert_eq!(packaged, wanted, "systemd-units must cover both units");

    // cargo-deb adds the units itself; an asset for one as well would install it twice.
    for (path, _) in installed_files(&assets(&deb)) {
        assert!(
            !path.ends_with(".service"),
            "{path}: units come from systemd-units, not assets"
        );
    }

    // cargo-deb needs the maintainer-scripts folder to generate the scripts; any hand-written
    // script there must keep the token its fragments replace.
    let dir = deb
        .get("maintainer-scripts")
        .and_then(|d| d.as_str())
        .unwrap_or_else(|| panic!("[package.metadata.deb] has no maintainer-scripts"));
    assert!(
        repo_file(dir).is_dir(),
        "maintainer-scripts folder '{dir}' is missing"
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let path = format!("{}/{script}", dir.trim_end_matches('/'));
        if repo_file(&path).exists() {
            assert!(
                read(&path).contains("#DEBHELPER#"),
                "{path}: #DEBHELPER# token is missing"
            );
        }
    }
}

#[test]
fn gateway_unit_is_notify_and_hardened() {
    let unit = Unit::load("systemd/posgw.service");
    expect_common_hardening(&unit);
    unit.expect("Type", "notify");
    unit.expect("NotifyAccess", "main");
    unit.expect_present("WatchdogSec");
    unit.expect("RestartPreventExitStatus", "2");
    let (_, pre) = unit.command("ExecStartPre");
    assert_eq!(pre.first().map(String::as_str), Some("check-config"));
    let (_, run) = unit.command("ExecStart");
    assert_eq!(run.first().map(String::as_str), Some("run"));
    assert_eq!(unit.config_argument("ExecStart"), "/etc/posgw/posgw.toml");
    assert_eq!(
        unit.config_argument("ExecStartPre"),
        "/etc/posgw/posgw.toml"
    );

    unit.expect("User", "posgw");
    unit.expect("StateDirectory", "posgw");
    unit.expect("RuntimeDirectory", "posgw");
    unit.expect("ConfigurationDirectory", "posgw");
    assert!(
        unit.get("SupplementaryGroups")
            .is_some_and(|g| g.split_whitespace().any(|g| g == "dialout")),
        "posgw.service: serial ports need SupplementaryGroups=dialout"
    );
    unit.expect("DevicePolicy", "closed");
    let devices: BTreeSet<&str> = unit
        .all("DeviceAllow")
        .iter()
        .filter_map(|d| d.split_whitespace().next())
        .collect();
    for wanted in [
        "char-ttyS",
        "char-ttyUSB",
        "char-ttyACM",
        "/dev/ptmx",
        "char-pts",
    ] {
        assert!(
            devices.contains(wanted),
            "posgw.service: DeviceAllow={wanted} is missing"
        );
    }

    // The journal reads the kernel's clock-sync flag with adjtimex(modes=0), which glibc makes
    // clock_adjtime(); ProtectClock= and ~@clock would block even that read.
    assert!(
        unit.get("ProtectClock").is_none_or(|v| v == "no"),
        "posgw.service: ProtectClock=yes blocks the journal's read-only adjtimex"
    );
    let filters = unit.all("SystemCallFilter");
    let allowed_again = filters
        .iter()
        .rposition(|f| !f.starts_with('~') && f.split_whitespace().any(|s| s == "clock_adjtime"));
    let denied_last = filters
        .iter()
        .rposition(|f| f.starts_with('~') && (f.contains("@clock") || f.contains("@privileged")));
    assert!(
        matches!((allowed_again, denied_last), (Some(a), Some(d)) if a > d),
        "posgw.service: clock_adjtime must be allowed after @privileged/@clock are taken away"
    );
}

#[test]
fn hq_unit_is_hardened_without_devices() {
    let unit = Unit::load("systemd/posgw-hq.service");
    expect_common_hardening(&unit);
    let (_, args) = unit.command("ExecStart");
    assert_eq!(args.first().map(String::as_str), Some("hq"));
    assert_eq!(unit.config_argument("ExecStart"), "/etc/posgw/hq.toml");
    unit.expect("User", "posgw-hq");
    unit.expect("StateDirectory", "posgw-hq");
    unit.expect("PrivateDevices", "yes");
    unit.expect("ProtectClock", "yes");
    assert!(
        unit.get("SupplementaryGroups").is_none(),
        "posgw-hq.service needs no groups"
    );
    assert!(
        unit.all("DeviceAllow").is_empty(),
        "posgw-hq.service needs no devices"
    );
}

#[test]
fn users_directories_and_shipped_configs_agree_with_the_units() {
    let sysusers = read("systemd/sysusers.d/posgw.conf");
    let tmpfiles = read("systemd/tmpfiles.d/posgw.conf");
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let users = entries(&sysusers);
    let dirs = entries(&tmpfiles);
    assert!(
        users.iter().any(|e| e[..] == ["m", "posgw", "dialout"]),
        "sysusers.d: posgw must be a member of dialout"
    );

    for (unit_file, config_file, table) in [
        ("systemd/posgw.service", "config/posgw.toml", "gateway"),
        ("systemd/posgw-hq.service", "config/hq.toml", "hq"),
    ] {
        let unit = Unit::load(unit_file);
        let user = unit.expect_present("User");
        assert!(
            users
                .iter()
                .any(|e| e.first().map(String::as_str) == Some("u")
                    && e.get(1).map(String::as_str) == Some(user)),
            "sysusers.d does not create {user}, the User= of {unit_file}"
        );
        let state = format!("/var/lib/{}", unit.expect_present("StateDirectory"));
        let dir = dirs
            .iter()
            .find(|e| e.get(1) == Some(&state))
            .unwrap_or_else(|| panic!("tmpfiles.d has no line for {state}"));
        assert_eq!(
            dir.first().map(String::as_str),
            Some("d"),
            "tmpfiles.d {state}"
        );
        assert_eq!(
            dir.get(3).map(String::as_str),
            Some(user),
            "tmpfiles.d {state} owner"
        );
        let unit_mode = unit.get("StateDirectoryMode").unwrap_or("0755");
        assert_eq!(
            dir.get(2).map(String::as_str),
            Some(unit_mode),
            "tmpfiles.d {state} mode"
        );

        // The shipped configuration keeps its data where the unit makes it writable.
        let config: toml::Table = read(config_file)
            .parse()
            .unwrap_or_else(|e| panic!("{config_file} does not parse: {e}"));
        let data_dir = config
            .get(table)
            .and_then(|t| t.get("data_dir"))
            .and_then(|d| d.as_str())
            .unwrap_or_else(|| panic!("{config_file}: no [{table}] data_dir"));
        assert_eq!(
            data_dir, state,
            "{config_file}: data_dir vs StateDirectory="
        );
    }

    // Passthrough links in the shipped config live in the gateway's RuntimeDirectory=.
    let config: toml::Table = read("config/posgw.toml")
        .parse()
        .unwrap_or_else(|e| panic!("config/posgw.toml does not parse: {e}"));
    let run_dir = format!(
        "/run/{}/",
        Unit::load("systemd/posgw.service").expect_present("RuntimeDirectory")
    );
    let devices = config.get("device").and_then(|d| d.as_array());
    for device in devices.into_iter().flatten() {
        if let Some(path) = device.get("passthrough").and_then(|p| p.as_str()) {
            assert!(
                path.starts_with(&run_dir),
                "config/posgw.toml: passthrough '{path}' is outside {run_dir}, read-only under ProtectSystem=strict"
            );
        }
    }
}

/// `systemd-analyze` if it is on PATH and runs.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    let Some(path) = found else {
        println!("note: systemd-analyze is not on PATH; unit verification skipped");
        return None;
    };
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Some(path),
        _ => {
            println!(
                "note: {} does not run; unit verification skipped",
                path.display()
            );
            None
        }
    }
}

/// Copies of the units in a temp dir, running the binary cargo built instead of /usr/bin/posgw
/// (verify checks that the program exists and is executable).
fn units_for_analysis(dir: &Path) -> Vec<PathBuf> {
    ["posgw.service", "posgw-hq.service"]
        .iter()
        .map(|name| {
            let text = read(&format!("systemd/{name}"))
                .replace(PACKAGED_BINARY, env!("CARGO_BIN_EXE_posgw"));
            let path = dir.join(name);
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("cannot write '{}': {e}", path.display()));
            path
        })
        .collect()
}

#[test]
fn systemd_analyze_verifies_the_units_and_rates_their_exposure() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
    for unit in units_for_analysis(dir.path()) {
        let name = unit
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap_or_else(|e| panic!("cannot run systemd-analyze verify: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Unknown keys and bad values are only warnings (exit 0): any line about our unit fails,
        // except a missing /bin/kill (ExecReload=), which the package gets from procps.
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&name))
            .filter(|l| {
                let no_kill = l.contains("Command /bin/kill is not executable");
                if no_kill {
                    println!("note: {l} (procps is not installed here)");
                }
                !no_kill
            })
            .collect();
        assert!(
            complaints.is_empty(),
            "systemd-analyze verify {name}: {}\n{stderr}",
            out.status
        );

        // `--offline` exists since systemd 250; an older one is noted and skipped.
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap_or_else(|e| panic!("cannot run systemd-analyze security: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(score) = stdout
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for "))
            .and_then(|(_, rest)| rest.split_once(": "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
        else {
            println!(
                "note: systemd-analyze security --offline gave no score for {name}; skipped\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        let ceiling = if name == "posgw.service" {
            MAX_EXPOSURE_GATEWAY
        } else {
            MAX_EXPOSURE_HQ
        };
        println!("{name}: systemd-analyze security exposure {score}");
        assert!(
            score <= ceiling,
            "{name}: exposure {score} is above {ceiling}\n{stdout}"
        );
    }
}
