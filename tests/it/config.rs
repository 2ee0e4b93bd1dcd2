//! Integration tests of `posgw::config::load` against files written in a temporary folder.
//!
//! Each test writes a `posgw.toml` (plus `config.d/` and `drivers.d/` files where needed) into
//! its own temp dir and asserts on the loaded settings or on the exact `PATH:LINE:COL: message`
//! lines, with the temp dir stripped from paths so expectations read like the files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::{posgw, repo_file};
use posgw::config::{
    load, Compression, DecoderKind, FlowControl, Parity, Role, Settings, SkuPattern, Transport,
};

/// A temp dir holding a config file and its companions.
struct Fixture {
    /// Removed when the fixture drops.
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A fixture whose `posgw.toml` has the given text.
    fn new(main: &str) -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        fixture.write("posgw.toml", main);
        fixture
    }

    /// Writes a file below the fixture's folder, creating parent folders.
    fn write(&self, relative: &str, text: &str) {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create folders");
        std::fs::write(path, text).expect("write file");
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("posgw.toml")
    }

    fn load(&self) -> Settings {
        load(&self.path()).unwrap_or_else(|error| panic!("config should load, got:\n{error}"))
    }

    /// The error lines, with the fixture's folder removed from paths.
    fn errors(&self) -> Vec<String> {
        match load(&self.path()) {
            Ok(_) => panic!("config should be rejected"),
            Err(error) => {
                let prefix = format!("{}/", self.dir.path().display());
                error
                    .to_string()
                    .lines()
                    .map(|line| line.replace(&prefix, ""))
                    .collect()
            }
        }
    }

    /// The only error line, which must contain `needle`.
    fn single_error(&self, needle: &str) -> String {
        let errors = self.errors();
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        assert!(
            errors[0].contains(needle),
            "expected {needle:?} in {:?}",
            errors[0]
        );
        errors[0].clone()
    }
}

/// The smallest valid config, for tests that add one thing to it.
const BASE: &str = r#"[gateway]
store = "WZ-LC-001"
id = "gw-1"

[[device]]
id = "scanner-1"
role = "scanner"
transport = "serial"
profile = "generic-scanner"
path = "/dev/ttyACM0"
"#;

/// A campaign block to append to [`BASE`].
const CAMPAIGN: &str = r#"
[[campaign]]
id = "xinsong-2026q4"
skus = ["6901234567892", "690123456*"]
question = "推荐话术来源"
options = [ { key = "doctor", label = "医生推荐" }, { key = "poster", label = "海报引导" } ]
"#;

mod shipped {
    use super::*;

    #[test]
    fn example_config_loads() {
        let settings =
            load(&repo_file("config/posgw.toml")).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(settings.gateway.store, "WZ-LC-001");
        assert_eq!(settings.gateway.id, "gw-1");
        assert_eq!(settings.gateway.data_dir, PathBuf::from("/var/lib/posgw"));
        assert_eq!(settings.gateway.flush, Duration::from_millis(50));
        assert_eq!(
            settings.api.listen,
            "127.0.0.1:7380".parse::<SocketAddr>().expect("address")
        );
        assert_eq!(settings.devices.len(), 1);
        let scanner = &settings.devices[0];
        assert_eq!(
            (scanner.id.as_str(), scanner.station.as_str()),
            ("scanner-1", "till-1")
        );
        assert_eq!(
            (scanner.role, scanner.transport),
            (Role::Scanner, Transport::Serial)
        );
        assert_eq!(scanner.profile.name, "generic-scanner");
        let serial = scanner.serial.as_ref().expect("serial settings");
        assert_eq!(serial.path, PathBuf::from("/dev/ttyACM0"));
        assert_eq!(
            serial.passthrough,
            Some(PathBuf::from("/run/posgw/scanner-1"))
        );
        assert_eq!(serial.line.baud, 9600);
        let campaign = &settings.campaigns[0];
        assert_eq!(campaign.id, "xinsong-2026q4");
        let keys: Vec<&str> = campaign
            .options
            .iter()
            .map(|option| option.key.as_str())
            .collect();
        assert_eq!(keys, ["doctor", "referral", "poster"]);
        assert_eq!(campaign.options[0].label, "医生推荐");
        assert_eq!(
            campaign.skus,
            [
                SkuPattern::Exact("6901234567892".into()),
                SkuPattern::Prefix("690123456".into())
            ]
        );
        assert_eq!(campaign.timeout, Duration::from_secs(120));
        assert_eq!(
            campaign.starts.map(|day| day.to_string()),
            Some("2026-10-01".into())
        );
        assert_eq!(
            campaign.ends.map(|day| day.to_string()),
            Some("2026-12-31".into())
        );
        assert_eq!(settings.answer_codes.len(), 3);
        assert_eq!(settings.answer_codes["ATTR-DOCTOR"], "doctor");
        assert!(settings.mqtt.is_none() && settings.uplink.is_none());
        assert_eq!(settings.files, [repo_file("config/posgw.toml")]);
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let settings =
            load(&repo_file("config/minimal.toml")).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(settings.gateway.store, "WZ-LC-001");
        assert!(
            !settings.gateway.id.is_empty(),
            "gateway id defaults to the host name"
        );
        assert_eq!(settings.gateway.data_dir, PathBuf::from("/var/lib/posgw"));
        assert_eq!(settings.gateway.flush, Duration::from_millis(50));
        assert_eq!(
            settings.api.listen,
            "127.0.0.1:7380".parse::<SocketAddr>().expect("address")
        );
        let scanner = &settings.devices[0];
        assert_eq!(scanner.station, "main");
        assert_eq!(scanner.topic, None);
        let serial = scanner.serial.as_ref().expect("serial settings");
        assert_eq!(serial.passthrough, None);
        assert_eq!(
            serial.line, scanner.profile.line,
            "no override: the profile's line settings"
        );
        assert!(settings.campaigns.is_empty() && settings.answer_codes.is_empty());
    }

    /// The commented-out parts of the example must stay valid: enable them and load (with the
    /// built-in profiles they name).
    #[test]
    fn example_commented_out_sections_are_valid_when_enabled() {
        let text = std::fs::read_to_string(repo_file("config/posgw.toml")).expect("example config");
        let enabled = uncommented(&text, true);
        assert!(
            enabled.contains("\n[uplink]\n") && enabled.contains("\n[mqtt]\n"),
            "sections were uncommented"
        );
        // The secret files it names are checked: put them in the fixture's folder.
        let enabled = enabled.replace("\"/etc/posgw/", "\"");
        let fixture = Fixture::new(&enabled);
        fixture.write("hq.token", "store-token\n");
        fixture.write("mqtt.password", "secret\n");
        fixture.write("customer.key", "a key of sixteen bytes or more\n");
        let settings = fixture.load();
        assert_eq!(settings.flows[0].hold, Some(2));
        assert!(settings.privacy.customer_key_file.is_some());
        let ids: Vec<&str> = settings
            .devices
            .iter()
            .map(|device| device.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "scanner-1",
                "scanner-2",
                "register-1",
                "register-3",
                "register-2"
            ]
        );
        let tap = settings.devices[3].tcp.as_ref().expect("the network tap");
        assert_eq!(tap.printer_addr, "192.168.1.50:9100");
        assert_eq!(
            settings.devices[1].topic.as_deref(),
            Some("store/till-2/scanner")
        );
        assert_eq!(
            settings.mqtt.as_ref().map(|mqtt| mqtt.url.as_str()),
            Some("mqtt://127.0.0.1:1883")
        );
        let uplink = settings.uplink.expect("uplink");
        assert_eq!(uplink.batch_max_bytes, 1024 * 1024);
        assert_eq!(uplink.max_journal_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(uplink.compression, Compression::Gzip);
        let fleet = settings.fleet.expect("[fleet]");
        assert_eq!(fleet.url, "https://hq.example.com/v1/fleet");
        assert_eq!(fleet.poll, std::time::Duration::from_secs(60));
        assert!(fleet.token_file.ends_with("hq.token"));
    }

    /// `text` with its commented-out keys (`# key = …`), and with `headers` its commented-out
    /// table headers (`# [uplink]`), written in.
    fn uncommented(text: &str, headers: bool) -> String {
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if (headers && rest.starts_with('[')) || is_assignment(rest) => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// The HQ example validates, with its commented-out keys enabled and the token files it
    /// names (under /etc) written into a temp folder. Its comments hold `[uplink]` as a word,
    /// so only keys are uncommented here.
    #[test]
    fn hq_example_validates_with_every_key_enabled() {
        let text = std::fs::read_to_string(repo_file("config/hq.toml")).expect("hq example");
        // The [[region]], [[user]], [[notify]] and [[alert]] headers are enabled too (other
        // comments hold headers as words).
        let enabled = uncommented(&text, false)
            .replace("# [[region]]\n", "[[region]]\n")
            .replace("# [[user]]\n", "[[user]]\n")
            .replace("# [[notify]]\n", "[[notify]]\n")
            .replace("# [[alert]]\n", "[[alert]]\n")
            .replace("# [[campaign]]\n", "[[campaign]]\n")
            .replace("# [[flow]]\n", "[[flow]]\n")
            .replace(
                "# [answer_codes]\n# \"ATTR-DOCTOR\"",
                "[answer_codes]\n\"ATTR-DOCTOR\"",
            )
            .replace("# [prompts]\n", "[prompts]\n");
        assert!(
            enabled.contains("\nbody_budget = "),
            "keys were uncommented"
        );
        let fixture = Fixture::new("");
        fixture.write("hq.toml", &enabled.replace("\"/etc/posgw/", "\""));
        fixture.write("hq-admin.token", "admin-token\n");
        fixture.write("stores/WZ-LC-001.token", "token-1\n");
        fixture.write("stores/WZ-LC-002.token", "token-2\n");
        fixture.write("users/li.min.token", "token-li\n");
        fixture.write(
            "notify/east-wz.url",
            "https://oapi.dingtalk.com/robot/send?access_token=t\n",
        );
        fixture.write("notify/east-wz.secret", "secret\n");
        let settings = posgw::hq::load_config(&fixture.dir.path().join("hq.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(settings.body_budget, Some(64 * 1024 * 1024));
        assert_eq!(settings.admin_token.as_deref(), Some("admin-token"));
        let codes: Vec<&str> = settings.stores.iter().map(|s| s.code.as_str()).collect();
        assert_eq!(codes, ["WZ-LC-001", "WZ-LC-002"]);
        assert_eq!(settings.regions.len(), 1);
        assert_eq!(settings.regions[0].stores, ["WZ-LC-001", "WZ-LC-002"]);
        assert_eq!(settings.users.len(), 1);
        assert_eq!(settings.users[0].token.as_deref(), Some("token-li"));
        // The chain's configuration for the gateways (hq::fleet).
        let fleet = &settings.fleet;
        assert_eq!(fleet.campaigns[0].id, "xinsong-2026q4");
        assert_eq!(fleet.campaigns[0].targets.regions, ["east-wz"]);
        assert_eq!(fleet.flows[0].id, "rx-5step");
        assert_eq!(fleet.answer_codes["ATTR-DOCTOR"], "doctor");
        assert_eq!(fleet.skip_reasons.len(), 3);
    }

    /// Every file of `config/` is one the tests above load: a new example gets a test too.
    #[test]
    fn every_shipped_config_is_tested() {
        let mut names: Vec<String> = std::fs::read_dir(repo_file("config"))
            .expect("config folder")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["hq.toml", "minimal.toml", "posgw.toml"]);
    }

    fn is_assignment(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    }

    #[test]
    fn summary_names_the_important_things() {
        let settings =
            load(&repo_file("config/posgw.toml")).unwrap_or_else(|error| panic!("{error}"));
        let summary = settings.summary();
        for needle in [
            "store: WZ-LC-001",
            "gateway: gw-1",
            "data_dir: /var/lib/posgw",
            "flush: 50ms",
            "api listen: 127.0.0.1:7380",
            "scanner-1 scanner serial /dev/ttyACM0 9600 8N1 profile generic-scanner station till-1 passthrough /run/posgw/scanner-1",
            "xinsong-2026q4 2 skus, 3 options, timeout 2m, 2026-10-01 to 2026-12-31",
            "answer codes: 3",
            "uplink: none",
            "generic-scanner (built-in)",
        ] {
            assert!(summary.contains(needle), "summary lacks {needle:?}:\n{summary}");
        }
    }
}

mod syntax {
    use super::*;

    #[test]
    fn unknown_key_suggests_the_nearest_with_its_position() {
        let fixture = Fixture::new(&BASE.replace(
            "path = \"/dev/ttyACM0\"",
            "path = \"/dev/ttyACM0\"\n  baudrate = 9600",
        ));
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:11:3: unknown key 'baudrate' in [[device]], did you mean 'baud'?"]
        );
    }

    #[test]
    fn unknown_section_is_named() {
        let fixture = Fixture::new(&format!("{BASE}\n[uplnk]\nendpoint = \"http://hq\"\n"));
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:12:2: unknown key 'uplnk' at top level, did you mean 'uplink'?"]
        );
    }

    #[test]
    fn unknown_key_in_inline_option_table() {
        let fixture = Fixture::new(
            &format!("{BASE}{CAMPAIGN}").replace("label = \"海报引导\"", "lable = \"海报引导\""),
        );
        let error = fixture
            .single_error("unknown key 'lable' in [[campaign]] options, did you mean 'label'?");
        assert!(error.starts_with("posgw.toml:16:"), "{error}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let fixture = Fixture::new("[gateway]\nstore = \"WZ-LC-001\"\nid = gw-1\n");
        let error = fixture.single_error("toml syntax error");
        assert!(error.starts_with("posgw.toml:3:6: "), "{error}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let fixture = Fixture::new(&BASE.replace(
            "path = \"/dev/ttyACM0\"",
            "path = \"/dev/ttyACM0\"\nbaud = \"fast\"",
        ));
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:11:8: 'baud' in [[device]] must be an integer, found string \"fast\""]
        );
    }

    #[test]
    fn single_brackets_for_device_get_a_hint() {
        let fixture = Fixture::new("[gateway]\nstore = \"S\"\n[device]\nid = \"x\"\n");
        fixture.single_error("write [[device]] for each entry, not [device]");
    }

    #[test]
    fn missing_config_file_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.toml");
        let error = load(&path).expect_err("missing file");
        assert_eq!(error.diagnostics().len(), 1);
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}: cannot read file", path.display())),
            "{error}"
        );
    }
}

mod drop_ins {
    use super::*;

    #[test]
    fn later_files_override_keys_and_append_entries_in_name_order() {
        let fixture = Fixture::new(&format!(
            "{BASE}{CAMPAIGN}[answer_codes]\n\"ATTR-A\" = \"doctor\"\n"
        ));
        fixture.write(
            "config.d/20-second.toml",
            "[gateway]\nflush = \"0s\"\n[[device]]\nid = \"scanner-3\"\nrole = \"scanner\"\ntransport = \"serial\"\nprofile = \"generic-scanner\"\npath = \"/dev/ttyACM2\"\n",
        );
        fixture.write(
            "config.d/10-first.toml",
            "gateway.flush = \"10ms\"\ngateway.data_dir = \"state\"\n[[device]]\nid = \"scanner-2\"\nrole = \"scanner\"\ntransport = \"serial\"\nprofile = \"generic-scanner\"\npath = \"/dev/ttyACM1\"\n[answer_codes]\n\"ATTR-A\" = \"poster\"\n\"ATTR-B\" = \"doctor\"\n",
        );
        fixture.write("config.d/README", "not toml, ignored");
        fixture.write(
            "config.d/.30-editor-swap.toml",
            "this is not valid toml at all",
        );
        let settings = fixture.load();
        assert_eq!(
            settings.gateway.flush,
            Duration::ZERO,
            "20-second.toml applies last"
        );
        assert_eq!(
            settings.gateway.store, "WZ-LC-001",
            "keys not overridden survive"
        );
        assert_eq!(
            settings.gateway.data_dir,
            fixture.dir.path().join("state"),
            "relative to the config's folder"
        );
        let ids: Vec<&str> = settings
            .devices
            .iter()
            .map(|device| device.id.as_str())
            .collect();
        assert_eq!(ids, ["scanner-1", "scanner-2", "scanner-3"]);
        assert_eq!(settings.answer_codes["ATTR-A"], "poster");
        assert_eq!(settings.answer_codes["ATTR-B"], "doctor");
        let names: Vec<String> = settings
            .files
            .iter()
            .map(|file| {
                file.strip_prefix(fixture.dir.path())
                    .expect("in fixture")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "posgw.toml",
                "config.d/10-first.toml",
                "config.d/20-second.toml"
            ]
        );
    }

    #[test]
    fn errors_point_into_the_drop_in() {
        let fixture = Fixture::new(BASE);
        fixture.write("config.d/10-a.toml", "[gateway]\nflush = \"fast\"\n");
        assert_eq!(
            fixture.errors(),
            ["config.d/10-a.toml:2:9: 'flush' in [gateway] must be a duration like \"250ms\", \"90s\" or \"5m\", found \"fast\""]
        );
    }

    #[test]
    fn every_broken_file_is_reported() {
        let fixture = Fixture::new(&format!("{BASE}\n[api]\nlisten = 7380\n"));
        fixture.write("config.d/10-a.toml", "[gateway\n");
        fixture.write("config.d/20-b.toml", "[gateway]\nstor = \"x\"\n");
        let errors = fixture.errors();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert_eq!(
            errors[0],
            "posgw.toml:13:10: 'listen' in [api] must be a string, found integer 7380"
        );
        assert!(
            errors[1].starts_with("config.d/10-a.toml:1:"),
            "{errors:#?}"
        );
        assert_eq!(
            errors[2],
            "config.d/20-b.toml:2:1: unknown key 'stor' in [gateway], did you mean 'store'?"
        );
    }

    #[test]
    fn duplicate_device_from_drop_in_points_at_both() {
        let fixture = Fixture::new(BASE);
        fixture.write(
            "config.d/10-a.toml",
            &BASE.replace("[gateway]\nstore = \"WZ-LC-001\"\nid = \"gw-1\"\n", ""),
        );
        assert_eq!(
            fixture.errors(),
            ["config.d/10-a.toml:3:6: duplicate device id 'scanner-1' (first defined at posgw.toml:6:6)"]
        );
    }
}

mod units {
    use super::*;

    const UPLINK: &str = "\n[uplink]\nendpoint = \"https://hq.example.com/v1/batches\"\n";

    #[test]
    fn durations_and_sizes_parse() {
        let fixture = Fixture::new(&format!(
            "{BASE}{UPLINK}batch_max_bytes = \"512KiB\"\nbatch_max_age = \"250ms\"\nmax_journal_bytes = 1048576\ncompression = \"zstd\"\nbatch_max_records = 1\n"
        ));
        let uplink = fixture.load().uplink.expect("uplink");
        assert_eq!(uplink.batch_max_bytes, 512 * 1024);
        assert_eq!(uplink.batch_max_age, Duration::from_millis(250));
        assert_eq!(uplink.max_journal_bytes, 1024 * 1024);
        assert_eq!(uplink.compression, Compression::Zstd);
        assert_eq!(uplink.batch_max_records, 1);
        assert_eq!(uplink.token_file, None);
    }

    #[test]
    fn uplink_defaults() {
        let uplink = Fixture::new(&format!("{BASE}{UPLINK}"))
            .load()
            .uplink
            .expect("uplink");
        assert_eq!(uplink.batch_max_records, 1000);
        assert_eq!(uplink.batch_max_bytes, 1024 * 1024);
        assert_eq!(uplink.batch_max_age, Duration::from_secs(1));
        assert_eq!(uplink.max_journal_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(uplink.compression, Compression::Gzip);
    }

    #[test]
    fn mqtt_max_message_has_a_default_and_is_range_checked() {
        let mqtt = "\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";
        let settings = Fixture::new(&format!("{BASE}{mqtt}")).load();
        assert_eq!(settings.mqtt.expect("mqtt").max_message, 1024 * 1024);
        let settings = Fixture::new(&format!("{BASE}{mqtt}max_message = \"4MiB\"\n")).load();
        assert_eq!(settings.mqtt.expect("mqtt").max_message, 4 * 1024 * 1024);
        for value in ["\"512\"", "\"17MiB\"", "\"1GiB\""] {
            // The range error quotes the value as written, like every other size key's.
            Fixture::new(&format!("{BASE}{mqtt}max_message = {value}\n")).single_error(
                &format!(
                    "posgw.toml:14:15: 'max_message' in [mqtt] must be from 1KiB to 16MiB, found {value}"
                ),
            );
        }
        Fixture::new(&format!("{BASE}{mqtt}max_message = \"big\"\n")).single_error(
            "posgw.toml:14:15: 'max_message' in [mqtt] must be a size like \"512KiB\", \"1MiB\" or a number of bytes, found \"big\"",
        );
    }

    #[test]
    fn bad_durations_and_sizes_are_all_reported() {
        let fixture = Fixture::new(&format!(
            "{BASE}{UPLINK}batch_max_bytes = \"lots\"\nbatch_max_age = 5\nmax_journal_bytes = -1\ncompression = \"gz\"\nbatch_max_records = 0\n"
        )
        .replace("id = \"gw-1\"", "id = \"gw-1\"\nflush = \"50\""));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:4:9: 'flush' in [gateway] must be a duration like \"250ms\", \"90s\" or \"5m\", found \"50\"",
                "posgw.toml:15:19: 'batch_max_bytes' in [uplink] must be a size like \"512KiB\", \"1MiB\" or a number of bytes, found \"lots\"",
                "posgw.toml:16:17: 'batch_max_age' in [uplink] must be a duration like \"250ms\", \"90s\" or \"5m\", found integer 5",
                "posgw.toml:17:21: 'max_journal_bytes' in [uplink] must be a size like \"512KiB\", \"1MiB\" or a number of bytes, found -1",
                "posgw.toml:18:15: 'compression' in [uplink] must be one of none, gzip, zstd, found 'gz', did you mean 'gzip'?",
                "posgw.toml:19:21: 'batch_max_records' in [uplink] must be from 1 to 100000, found 0",
            ]
        );
    }

    #[test]
    fn campaign_dates_may_be_toml_dates() {
        let fixture = Fixture::new(&format!(
            "{BASE}{CAMPAIGN}starts = 2026-10-01\nends = \"2026-12-31\"\n"
        ));
        let campaign = &fixture.load().campaigns[0];
        assert_eq!(
            campaign.starts.map(|day| day.to_string()),
            Some("2026-10-01".into())
        );
        assert!(campaign.runs_on(chrono::NaiveDate::from_ymd_opt(2026, 12, 31).expect("date")));
        assert!(!campaign.runs_on(chrono::NaiveDate::from_ymd_opt(2027, 1, 1).expect("date")));
        assert!(campaign.matches("6901234567991") && !campaign.matches("6911234567892"));
    }
}

mod validation {
    use super::*;

    #[test]
    fn missing_gateway_and_store() {
        let fixture = Fixture::new("[api]\nlisten = \"127.0.0.1:7380\"\n");
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:1:1: missing [gateway] section (it needs at least 'store')"]
        );
        let fixture = Fixture::new("[api]\n\n[gateway]\nid = \"gw-1\"\n");
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:3:1: missing 'store' in [gateway] (the store code, like \"WZ-LC-001\")"]
        );
    }

    #[test]
    fn store_and_gateway_id_charsets() {
        let fixture = Fixture::new(
            &BASE
                .replace("\"WZ-LC-001\"", "\"WZ LC.001\"")
                .replace("\"gw-1\"", "\"gw/1\""),
        );
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:2:9: 'store' in [gateway] must be 1 to 64 of A-Z a-z 0-9 '-' '_', found 'WZ LC.001'",
                "posgw.toml:3:6: 'id' in [gateway] must be 1 to 64 of A-Z a-z 0-9 '-' '_' '.', found 'gw/1'",
            ]
        );
        let fixture = Fixture::new(&BASE.replace("\"gw-1\"", "\"gw.store-1\""));
        assert_eq!(
            fixture.load().gateway.id,
            "gw.store-1",
            "dots are fine in a gateway id"
        );
    }

    #[test]
    fn api_listen_must_be_an_address() {
        let fixture = Fixture::new(&format!("{BASE}[api]\nlisten = \"localhost\"\n"));
        fixture.single_error("posgw.toml:12:10: 'listen' in [api] must be an IP address and port");
    }

    #[test]
    fn api_hosts_are_host_names_without_port() {
        let fixture = Fixture::new(&format!(
            "{BASE}[api]\nhosts = [\"Till-PC.Store.example.\", \"till-pc\"]\n"
        ));
        assert_eq!(
            fixture.load().api.hosts,
            vec!["till-pc.store.example".to_owned(), "till-pc".to_owned()]
        );
        let fixture = Fixture::new(&format!(
            "{BASE}[api]\nhosts = [\"ok.example\", \"http://till-pc:7380\"]\n"
        ));
        fixture.single_error(
            "posgw.toml:12:24: 'hosts' in [api] must be host names without port or scheme",
        );
    }

    #[test]
    fn serial_device_needs_path_and_refuses_topic() {
        let fixture = Fixture::new(&BASE.replace(
            "path = \"/dev/ttyACM0\"",
            "topic = \"store/till-1/scanner\"",
        ));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:5:1: missing 'path' in [[device]] (the serial device, like \"/dev/ttyACM0\")",
                "posgw.toml:10:9: 'topic' in [[device]] is for mqtt devices; this device's transport is serial",
            ]
        );
    }

    #[test]
    fn mqtt_device_needs_topic_and_broker_and_refuses_serial_keys() {
        let fixture = Fixture::new(
            &BASE
                .replace("transport = \"serial\"", "transport = \"mqtt\"")
                .replace(
                    "path = \"/dev/ttyACM0\"",
                    "path = \"/dev/ttyACM0\"\nbaud = 9600\npassthrough = \"/run/x\"",
                ),
        );
        fixture.write(
            "drivers.d/mqtt-scanner.toml",
            "roles = [\"scanner\"]\ntransports = [\"mqtt\"]\ndecoder = \"scan\"\n",
        );
        let errors = fixture.errors();
        let expected = [
            "posgw.toml:5:1: missing 'topic' in [[device]] (the MQTT topic the device publishes on)",
            "posgw.toml:8:13: transport 'mqtt' needs an [mqtt] section with the broker's url",
            "posgw.toml:9:11: profile 'generic-scanner' does not support the mqtt transport (it supports serial)",
            "posgw.toml:10:8: 'path' in [[device]] is for serial devices; this device's transport is mqtt",
            "posgw.toml:11:8: 'baud' in [[device]] is for serial devices; this device's transport is mqtt",
            "posgw.toml:12:15: 'passthrough' in [[device]] is for serial devices; this device's transport is mqtt",
        ];
        assert_eq!(errors, expected);

        let fixture = Fixture::new(&format!(
            "{}topic = \"store/till-1/scanner\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
            BASE.replace("transport = \"serial\"", "transport = \"mqtt\"")
                .replace(
                    "profile = \"generic-scanner\"",
                    "profile = \"mqtt-scanner\""
                )
                .replace("path = \"/dev/ttyACM0\"\n", "")
        ));
        fixture.write(
            "drivers.d/mqtt-scanner.toml",
            "roles = [\"scanner\"]\ntransports = [\"mqtt\"]\ndecoder = \"scan\"\n",
        );
        let settings = fixture.load();
        assert_eq!(
            settings.devices[0].topic.as_deref(),
            Some("store/till-1/scanner")
        );
        assert!(settings.devices[0].serial.is_none());
    }

    #[test]
    fn mqtt_url_is_checked() {
        for (url, needle) in [
            (
                "tcp://broker:1883",
                "has scheme 'tcp', expected mqtt or mqtts",
            ),
            ("mqtt://broker:http", "has an invalid port 'http'"),
            (
                "mqtt://broker/topic",
                "must be mqtt://host[:port] without a path",
            ),
            ("broker:1883", "must start with mqtt:// or mqtts://"),
        ] {
            let fixture = Fixture::new(&format!("{BASE}[mqtt]\nurl = \"{url}\"\n"));
            fixture.single_error(&format!("posgw.toml:12:7: 'url' in [mqtt] {needle}"));
        }
        let fixture = Fixture::new(&format!("{BASE}[mqtt]\nusername = \"posgw\"\n"));
        fixture.single_error("posgw.toml:11:1: missing 'url' in [mqtt]");
    }

    #[test]
    fn unknown_profile_suggests_the_nearest() {
        let fixture = Fixture::new(&BASE.replace("\"generic-scanner\"", "\"generic-scaner\""));
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:9:11: unknown profile 'generic-scaner' in [[device]], did you mean 'generic-scanner'?"]
        );
        let fixture = Fixture::new(&BASE.replace("\"generic-scanner\"", "\"zebra\""));
        fixture.single_error("unknown profile 'zebra' in [[device]] (known: escpos-tap, generic-scanner, json-register, mqtt-scanner)");
    }

    #[test]
    fn profile_must_support_the_role() {
        let fixture = Fixture::new(&BASE.replace("role = \"scanner\"", "role = \"register\""));
        fixture.single_error(
            "posgw.toml:9:11: profile 'generic-scanner' does not support the register role",
        );
    }

    #[test]
    fn role_and_transport_words_are_checked() {
        let fixture = Fixture::new(&BASE.replace("role = \"scanner\"", "role = \"scaner\""));
        fixture.single_error("posgw.toml:7:8: 'role' in [[device]] must be one of scanner, register, found 'scaner', did you mean 'scanner'?");
    }

    #[test]
    fn baud_must_be_a_standard_rate() {
        for baud in ["0", "-9600", "9601"] {
            let fixture = Fixture::new(&format!("{BASE}baud = {baud}\n"));
            fixture.single_error(&format!("posgw.toml:11:8: 'baud' in [[device]] must be a standard rate such as 9600, 19200, 38400, 57600 or 115200, found {baud}"));
        }
        let fixture = Fixture::new(&format!("{BASE}baud = 115200\n"));
        let settings = fixture.load();
        let line = &settings.devices[0].serial.as_ref().expect("serial").line;
        assert_eq!(
            (line.baud, line.data_bits, line.parity, line.stop_bits),
            (115200, 8, Parity::None, 1)
        );
    }

    #[test]
    fn station_and_device_id_charsets() {
        let fixture = Fixture::new(
            &format!("{BASE}station = \"till 1\"\n").replace("\"scanner-1\"", "\"scanner/1\""),
        );
        let errors = fixture.errors();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].starts_with("posgw.toml:6:6: 'id' in [[device]] must be 1 to 64"),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with("posgw.toml:11:11: 'station' in [[device]] must be 1 to 64"),
            "{errors:#?}"
        );
    }

    #[test]
    fn one_serial_port_one_device() {
        let second = BASE
            .replace("[gateway]\nstore = \"WZ-LC-001\"\nid = \"gw-1\"\n", "")
            .replace("scanner-1", "scanner-2");
        let fixture = Fixture::new(&format!("{BASE}{second}"));
        fixture.single_error(
            "posgw.toml:17:8: serial port '/dev/ttyACM0' is already used by device 'scanner-1'",
        );
        let fixture = Fixture::new(&format!("{BASE}passthrough = \"/dev/ttyACM0\"\n"));
        fixture
            .single_error("posgw.toml:11:15: 'passthrough' in [[device]] must differ from 'path'");
    }

    #[test]
    fn one_mqtt_topic_one_device() {
        let fixture = Fixture::new(&format!(
            "{BASE}
[mqtt]
url = \"mqtt://127.0.0.1\"

             [[device]]
id = \"m1\"
role = \"scanner\"
transport = \"mqtt\"
profile = \"mqtt-scanner\"
topic = \"store/a\"

             [[device]]
id = \"m2\"
role = \"scanner\"
transport = \"mqtt\"
profile = \"mqtt-scanner\"
topic = \"store/a\"
"
        ));
        let errors = fixture.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].ends_with("mqtt topic 'store/a' is already used by device 'm1'"),
            "{errors:?}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let fixture = Fixture::new(&format!("{BASE}passthrough = \"run/scanner-1\"\n"));
        let settings = fixture.load();
        let serial = settings.devices[0].serial.as_ref().expect("serial");
        assert_eq!(
            serial.passthrough,
            Some(fixture.dir.path().join("run/scanner-1"))
        );
    }

    #[test]
    fn campaign_rules_are_all_reported() {
        let fixture = Fixture::new(&format!(
            "{BASE}\n[[campaign]]\nid = \"c1\"\nskus = []\nquestion = \"  \"\noptions = []\ntimeout = \"0s\"\nstarts = \"2026-12-31\"\nends = \"2026-10-01\"\n"
        ));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:14:8: 'skus' in [[campaign]] must list at least one code",
                "posgw.toml:15:12: 'question' in [[campaign]] must not be empty",
                "posgw.toml:16:11: 'options' in [[campaign]] must offer at least one answer",
                "posgw.toml:17:11: 'timeout' in [[campaign]] must be from 1s to 1day, found \"0s\"",
                "posgw.toml:19:8: 'ends' (2026-10-01) in [[campaign]] is before 'starts' (2026-12-31)",
            ]
        );
    }

    #[test]
    fn campaign_missing_keys() {
        let fixture = Fixture::new(&format!("{BASE}\n[[campaign]]\nid = \"c1\"\n"));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:12:1: missing 'skus' in [[campaign]] (codes, or prefixes ending in *)",
                "posgw.toml:12:1: missing 'question' in [[campaign]]",
                "posgw.toml:12:1: missing 'options' in [[campaign]] (like [{ key = \"doctor\", label = \"医生推荐\" }])",
            ]
        );
    }

    #[test]
    fn option_keys_are_unique_and_skus_well_formed() {
        let fixture = Fixture::new(
            &format!("{BASE}{CAMPAIGN}")
                .replace("key = \"poster\"", "key = \"doctor\"")
                .replace("\"690123456*\"", "\"69*01\", \"*\""),
        );
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:14:26: an entry of 'skus' in [[campaign]] may only end in '*' (a prefix), found '69*01'",
                "posgw.toml:14:35: an entry of 'skus' in [[campaign]] needs at least one character before '*'",
                "posgw.toml:16:57: duplicate option key 'doctor' in [[campaign]] (first at posgw.toml:16:21)",
            ]
        );
    }

    #[test]
    fn campaign_ids_are_unique() {
        let fixture = Fixture::new(&format!("{BASE}{CAMPAIGN}{CAMPAIGN}"));
        fixture.single_error("posgw.toml:19:6: duplicate campaign id 'xinsong-2026q4' (first defined at posgw.toml:13:6)");
    }

    #[test]
    fn answer_codes_must_name_an_option() {
        let fixture = Fixture::new(&format!("{BASE}{CAMPAIGN}[answer_codes]\n\"ATTR-DOCTOR\" = \"docter\"\n\"ATTR-X\" = \"poster\"\n"));
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:18:17: answer code 'ATTR-DOCTOR' maps to 'docter', which is not an option key of any campaign, did you mean 'doctor'?"]
        );
        let fixture = Fixture::new(&format!(
            "{BASE}[answer_codes]\n\"ATTR-DOCTOR\" = \"doctor\"\n"
        ));
        fixture.single_error("which is not an option key of any campaign");
    }

    #[test]
    fn uplink_endpoint_is_checked() {
        for (endpoint, needle) in [
            (
                "ftp://hq/upload",
                "has scheme 'ftp', expected http or https or mqtt or mqtts",
            ),
            ("mqtt://hq:1883", "needs a topic for MQTT"),
            ("https://", "has no valid host"),
        ] {
            let fixture = Fixture::new(&format!("{BASE}[uplink]\nendpoint = \"{endpoint}\"\n"));
            fixture.single_error(&format!(
                "posgw.toml:12:12: 'endpoint' in [uplink] {needle}"
            ));
        }
        let fixture = Fixture::new(&format!("{BASE}[uplink]\nendpoint = \"mqtts://hq.example.com:8883/posgw/WZ-LC-001\"\ntoken_file = \"hq.token\"\n"));
        fixture.write("hq.token", "store-token\n");
        let uplink = fixture.load().uplink.expect("uplink");
        assert_eq!(uplink.token_file, Some(fixture.dir.path().join("hq.token")));
    }
}

mod profiles {
    use super::*;

    #[test]
    fn drivers_d_overrides_a_built_in_and_adds_new_ones() {
        let fixture = Fixture::new(&format!(
            "{BASE}\n[[device]]\nid = \"register-1\"\nrole = \"register\"\ntransport = \"serial\"\nprofile = \"json-register\"\npath = \"/dev/ttyUSB0\"\n"
        ));
        fixture.write(
            "drivers.d/generic-scanner.toml",
            "name = \"generic-scanner\"\ndescription = \"this store's scanners\"\nroles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n[serial]\nbaud = 115200\nflow_control = \"hardware\"\n[framing]\nterminators = [\"cr\"]\nsuffix = '\\x03'\nidle_gap = \"0s\"\nmax_frame = \"64KiB\"\n",
        );
        fixture.write(
            "drivers.d/json-register.toml",
            "roles = [\"register\"]\ntransports = [\"serial\", \"mqtt\"]\ndecoder = \"json-sale\"\n[framing]\nterminators = [\"lf\"]\nmax_frame = \"1MiB\"\n",
        );
        let settings = fixture.load();
        let scanner = &settings.devices[0].profile;
        assert_eq!(scanner.description, "this store's scanners");
        assert_eq!(scanner.line.baud, 115200);
        assert_eq!(scanner.line.flow_control, FlowControl::Hardware);
        assert!(scanner.framing.cr && !scanner.framing.lf);
        assert_eq!(scanner.framing.suffix, Some(vec![3]));
        assert_eq!(scanner.framing.idle_gap, None, "0s disables the idle gap");
        assert_eq!(scanner.framing.max_frame, 64 * 1024);
        assert!(
            scanner.source.ends_with("drivers.d/generic-scanner.toml"),
            "{}",
            scanner.source
        );
        assert_eq!(
            settings.devices[0]
                .serial
                .as_ref()
                .expect("serial")
                .line
                .baud,
            115200
        );
        let register = &settings.devices[1].profile;
        assert_eq!(register.name, "json-register");
        assert_eq!(register.decoder, DecoderKind::JsonSale);
        assert_eq!(register.transports, [Transport::Serial, Transport::Mqtt]);
        assert!(
            register.source.ends_with("drivers.d/json-register.toml"),
            "a drivers.d file replaces the built-in of its name"
        );
        let names: Vec<&str> = settings.profiles.names().collect();
        assert_eq!(
            names,
            [
                "escpos-tap",
                "generic-scanner",
                "json-register",
                "mqtt-scanner"
            ]
        );
        assert!(
            settings.summary().contains("json-register ("),
            "{}",
            settings.summary()
        );
    }

    #[test]
    fn broken_profile_is_reported_in_its_own_file() {
        let fixture = Fixture::new(BASE);
        fixture.write(
            "drivers.d/zebra.toml",
            "roles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n[framing]\nterminators = [\"cr\", \"tab\"]\n",
        );
        fixture.write("drivers.d/other.toml", "roles = [\"scanner\"]\n[serail]\n");
        assert_eq!(
            fixture.errors(),
            [
                "drivers.d/other.toml:2:2: unknown key 'serail' at top level, did you mean 'serial'?",
                "drivers.d/zebra.toml:5:22: an entry of 'terminators' in [framing] must be \"cr\" or \"lf\", found 'tab' (use 'suffix' for other terminators)",
            ]
        );
    }

    #[test]
    fn two_drivers_d_files_with_one_name_are_an_error() {
        let fixture = Fixture::new(BASE);
        let profile = "name = \"zebra\"\nroles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n";
        fixture.write("drivers.d/a.toml", profile);
        fixture.write("drivers.d/b.toml", profile);
        fixture.single_error("drivers.d/b.toml:1:1: profile 'zebra' is already defined in");
    }

    #[test]
    fn profile_requiring_passthrough() {
        let fixture = Fixture::new(
            &BASE
                .replace("role = \"scanner\"", "role = \"register\"")
                .replace("generic-scanner", "escpos-tap"),
        );
        fixture.write(
            "drivers.d/escpos-tap.toml",
            "roles = [\"register\"]\ntransports = [\"serial\"]\ndecoder = \"escpos\"\nrequires_passthrough = true\n",
        );
        fixture.single_error(
            "posgw.toml:5:1: profile 'escpos-tap' requires 'passthrough' in [[device]]",
        );
    }
}

/// Issue 11, finding 6: configurations that passed `check-config` and then failed (or misbehaved)
/// in the running gateway. Each is refused at load with `PATH:LINE:COL: message`.
mod passes_then_fails {
    use super::*;

    const UPLINK: &str = "\n[uplink]\nendpoint = \"https://hq.example.com/v1/batches\"\n";

    #[test]
    fn a_campaign_timeout_beyond_a_day_is_refused_not_overflowed_or_replaced() {
        for timeout in ["2500000000h", "10000000000000h", "25h"] {
            let fixture = Fixture::new(&format!(
                "{BASE}{}",
                CAMPAIGN.replace("question", &format!("timeout = \"{timeout}\"\nquestion"))
            ));
            assert_eq!(
                fixture.errors(),
                [format!("posgw.toml:15:11: 'timeout' in [[campaign]] must be from 1s to 1day, found \"{timeout}\"")]
            );
        }
    }

    #[test]
    fn every_duration_and_size_key_is_range_checked() {
        let fixture = Fixture::new(&format!(
            "{}{CAMPAIGN}[prompts]\nsale_link_window = \"400d\"\n{UPLINK}batch_max_bytes = \"1TiB\"\nbatch_max_age = \"3h\"\nbatch_max_records = 1000000000\nmax_journal_bytes = \"1EiB\"\n",
            BASE.replace("id = \"gw-1\"", "id = \"gw-1\"\nflush = \"100000h\"")
        ));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:4:9: 'flush' in [gateway] must be from 0s to 10s, found \"100000h\"",
                "posgw.toml:19:20: 'sale_link_window' in [prompts] must be from 1s to 1day, found \"400d\"",
                "posgw.toml:23:19: 'batch_max_bytes' in [uplink] must be from 1KiB to 64MiB, found \"1TiB\"",
                "posgw.toml:24:17: 'batch_max_age' in [uplink] must be from 0s to 10m, found \"3h\"",
                "posgw.toml:25:21: 'batch_max_records' in [uplink] must be from 1 to 100000, found 1000000000",
                "posgw.toml:26:21: 'max_journal_bytes' in [uplink] must be from 32KiB to 64TiB, found \"1EiB\"",
            ]
        );
    }

    #[test]
    fn profile_durations_are_range_checked() {
        let fixture = Fixture::new(BASE);
        fixture.write(
            "drivers.d/slow-scanner.toml",
            "roles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n[framing]\nidle_gap = \"9999999999h\"\n",
        );
        fixture.write(
            "drivers.d/slow-tap.toml",
            "roles = [\"register\"]\ntransports = [\"serial\"]\ndecoder = \"escpos\"\n[escpos]\nreceipt_timeout = \"10000000000000h\"\n",
        );
        assert_eq!(
            fixture.errors(),
            [
                "drivers.d/slow-scanner.toml:5:12: 'idle_gap' in [framing] must be from 0s to 1m, found \"9999999999h\"",
                "drivers.d/slow-tap.toml:5:19: 'receipt_timeout' in [escpos] must be from 100ms to 1day, found \"10000000000000h\"",
            ]
        );
    }

    #[test]
    fn a_max_journal_bytes_too_small_for_any_record_is_refused() {
        for (written, found) in [("\"1\"", "\"1\""), ("1", "1"), ("\"16KiB\"", "\"16KiB\"")] {
            let fixture = Fixture::new(&format!("{BASE}{UPLINK}max_journal_bytes = {written}\n"));
            assert_eq!(
                fixture.errors(),
                [format!("posgw.toml:14:21: 'max_journal_bytes' in [uplink] must be from 32KiB to 64TiB, found {found}")]
            );
        }
    }

    #[test]
    fn a_missing_or_empty_token_file_is_refused() {
        let fixture = Fixture::new(&format!("{BASE}{UPLINK}token_file = \"hq.token\"\n"));
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:14:14: cannot read 'token_file' in [uplink] 'hq.token': No such file or directory (os error 2)"]
        );
        fixture.write("hq.token", " \n");
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:14:14: 'token_file' in [uplink] 'hq.token' is empty"]
        );
        std::fs::remove_file(fixture.dir.path().join("hq.token")).expect("remove");
        fixture.write("hq.token/inside", "a folder is not a token file");
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:14:14: 'token_file' in [uplink] 'hq.token' is not a regular file"]
        );
    }

    #[test]
    fn a_data_dir_that_is_a_file_or_below_one_is_refused() {
        for (data_dir, message) in [
            (
                "/etc/passwd",
                "'data_dir' in [gateway] must be a folder, but '/etc/passwd' is a file",
            ),
            (
                "/etc/passwd/posgw",
                "'data_dir' in [gateway] '/etc/passwd/posgw' cannot be created: '/etc/passwd' is a file, not a folder",
            ),
        ] {
            let fixture = Fixture::new(&BASE.replace(
                "id = \"gw-1\"",
                &format!("id = \"gw-1\"\ndata_dir = \"{data_dir}\""),
            ));
            assert_eq!(fixture.errors(), [format!("posgw.toml:4:12: {message}")]);
        }
        // A folder that does not exist yet is created by the gateway.
        let fixture = Fixture::new(
            &BASE.replace("id = \"gw-1\"", "id = \"gw-1\"\ndata_dir = \"state/posgw\""),
        );
        assert_eq!(
            fixture.load().gateway.data_dir,
            fixture.dir.path().join("state/posgw")
        );
    }

    #[test]
    fn a_gs_suffix_or_prefix_in_a_drivers_d_profile_is_refused() {
        let fixture = Fixture::new(BASE);
        fixture.write(
            "drivers.d/gs-scanner.toml",
            "roles = [\"scanner\"]\ntransports = [\"serial\"]\ndecoder = \"scan\"\n[framing]\nsuffix = '\\x1D'\nstrip_prefix = \"]C1\\u001d\"\n",
        );
        assert_eq!(
            fixture.errors(),
            [
                "drivers.d/gs-scanner.toml:5:10: 'suffix' in [framing] must not contain GS (\\x1D): it separates the fields of GS1 codes, which would be cut apart or joined",
                "drivers.d/gs-scanner.toml:6:16: 'strip_prefix' in [framing] must not contain GS (\\x1D): it separates the fields of GS1 codes, which would be cut apart or joined",
            ]
        );
    }

    #[test]
    fn a_password_file_without_a_username_is_refused() {
        let fixture = Fixture::new(&format!(
            "{BASE}[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\npassword_file = \"mqtt.password\"\n"
        ));
        fixture.write("mqtt.password", "secret\n");
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:13:17: 'password_file' in [mqtt] needs 'username' in [mqtt]: MQTT sends no password without a user name"]
        );
        let fixture = Fixture::new(&format!(
            "{BASE}[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"posgw\"\npassword_file = \"mqtt.password\"\n"
        ));
        fixture.single_error(
            "posgw.toml:14:17: cannot read 'password_file' in [mqtt] 'mqtt.password'",
        );
        fixture.write("mqtt.password", "secret\n");
        assert!(fixture
            .load()
            .mqtt
            .is_some_and(|mqtt| mqtt.username.as_deref() == Some("posgw")));
    }

    #[test]
    fn an_answer_code_that_is_a_campaign_product_is_refused() {
        let fixture = Fixture::new(&format!(
            "{BASE}{CAMPAIGN}[answer_codes]\n\"6901234567892\" = \"doctor\"\n\"6901234560000\" = \"poster\"\n\"ATTR-DOCTOR\" = \"doctor\"\n"
        ));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:18:19: answer code '6901234567892' is also a product of campaign 'xinsong-2026q4' (skus entry '6901234567892'): a scan of it would answer a prompt instead of opening one",
                "posgw.toml:19:19: answer code '6901234560000' is also a product of campaign 'xinsong-2026q4' (skus entry '690123456*'): a scan of it would answer a prompt instead of opening one",
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
        let fixture = Fixture::new(BASE);
        let mut bytes = BASE.replace("scanner-1", "scanner-é").into_bytes();
        let at = bytes.iter().position(|&byte| byte == 0xC3).expect("é");
        bytes[at] = 0xFF;
        std::fs::write(fixture.path(), bytes).expect("write");
        assert_eq!(
            fixture.errors(),
            ["posgw.toml:6:15: file is not UTF-8 text: invalid byte here (save the file as UTF-8)"]
        );
        // A GBK-encoded drop-in, the usual way this happens on a Chinese Windows editor.
        let fixture = Fixture::new(BASE);
        let mut gbk = b"[gateway]\n# \xd5\xe2\xca\xc7\n".to_vec();
        gbk.extend_from_slice(b"flush = \"10ms\"\n");
        std::fs::create_dir_all(fixture.dir.path().join("config.d")).expect("mkdir");
        std::fs::write(fixture.dir.path().join("config.d/10-gbk.toml"), gbk).expect("write");
        assert_eq!(
            fixture.errors(),
            ["config.d/10-gbk.toml:2:3: file is not UTF-8 text: invalid byte here (save the file as UTF-8)"]
        );
    }

    #[test]
    fn an_oversized_config_drop_in_or_profile_is_refused_without_parsing_it() {
        // 50 MB of comments: valid TOML that took 3.5 GB to load before.
        let line = format!("# {}\n", "x".repeat(98));
        let big = format!("{BASE}{}", line.repeat(500_000));
        let fixture = Fixture::new(&big);
        let errors = fixture.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("posgw.toml:")
                && errors[0].ends_with(": file is larger than 1MiB, reading stopped here (a configuration or profile file is a few KiB)"),
            "{errors:?}"
        );
        let fixture = Fixture::new(BASE);
        fixture.write("config.d/10-big.toml", &line.repeat(20_000));
        fixture.single_error("config.d/10-big.toml:10382:96:");
        let fixture = Fixture::new(BASE);
        fixture.write("drivers.d/big.toml", &line.repeat(20_000));
        fixture.single_error("drivers.d/big.toml:10382:96:");
        // Many files under the limit each are held to a total.
        let fixture = Fixture::new(BASE);
        for index in 0..5 {
            fixture.write(&format!("config.d/{index}.toml"), &line.repeat(9_000));
        }
        fixture.single_error(
            "config.d/4.toml: the configuration files and profiles together are larger than 4MiB",
        );
    }
}

/// Issue 11, finding 6: `check-config` on random input never panics and always ends in "ok" or
/// a list of `PATH[:LINE:COL]: message` lines (exit status 0 or 2). Two generators: TOML built
/// from the real sections and keys with random values, and byte mutations of the shipped
/// `config/posgw.toml`. Inputs that once broke loading are kept in `tests/config-corpus/` and
/// replayed, in process and through the binary; proptest keeps its own shrunk failures in
/// `proptest-regressions/config.txt`.
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config as ProptestConfig;

    /// Every section of the config file with its real keys (plus one unknown key each).
    const SECTIONS: &[(&str, &[&str])] = &[
        ("[gateway]", &["store", "id", "data_dir", "flush", "bogus"]),
        ("[api]", &["listen", "bogus"]),
        (
            "[[device]]",
            &[
                "id",
                "role",
                "transport",
                "station",
                "profile",
                "path",
                "baud",
                "passthrough",
                "topic",
                "bogus",
            ],
        ),
        ("[mqtt]", &["url", "username", "password_file", "bogus"]),
        (
            "[[campaign]]",
            &[
                "id", "skus", "question", "options", "timeout", "starts", "ends", "bogus",
            ],
        ),
        (
            "[answer_codes]",
            &["ATTR-DOCTOR", "6901234567892", "", "bogus"],
        ),
        (
            "[uplink]",
            &[
                "endpoint",
                "token_file",
                "batch_max_records",
                "batch_max_bytes",
                "batch_max_age",
                "compression",
                "max_journal_bytes",
                "bogus",
            ],
        ),
        ("[prompts]", &["skip_reasons", "sale_link_window", "bogus"]),
    ];

    /// Profile sections and keys, for a random `drivers.d` file.
    const PROFILE_SECTIONS: &[(&str, &[&str])] = &[
        (
            "",
            &[
                "name",
                "description",
                "roles",
                "transports",
                "decoder",
                "requires_passthrough",
            ],
        ),
        (
            "[serial]",
            &["baud", "data_bits", "parity", "stop_bits", "flow_control"],
        ),
        (
            "[framing]",
            &[
                "terminators",
                "suffix",
                "strip_prefix",
                "idle_gap",
                "max_frame",
            ],
        ),
        ("[payload]", &["format", "code_field", "symbology_field"]),
        (
            "[escpos]",
            &[
                "encoding",
                "chinese_mode",
                "cr_ends_line",
                "max_receipt",
                "receipt_timeout",
            ],
        ),
        ("[escpos.patterns]", &["receipt", "clerk", "total", "line"]),
    ];

    /// Strings that mean something to some key, or break something somewhere.
    const WORDS: &[&str] = &[
        "WZ-LC-001",
        "gw-1",
        "scanner",
        "register",
        "serial",
        "mqtt",
        "generic-scanner",
        "escpos-tap",
        "mqtt-scanner",
        "json-register",
        "/dev/ttyACM0",
        "/etc/passwd",
        "/etc/passwd/x",
        "state",
        "",
        " ",
        "*",
        "690*",
        "6901234567892",
        "doctor",
        "0s",
        "50ms",
        "120s",
        "1h 30m",
        "2500000000h",
        "10000000000000h",
        "99999999999999999999999h",
        "-1s",
        "1",
        "1KiB",
        "2GiB",
        "16EiB",
        "99999999999999999999999",
        "127.0.0.1:7380",
        "mqtt://127.0.0.1:1883",
        "mqtt://[::1",
        "https://hq.example.com/v1/batches",
        "mqtt://hq:1/t",
        "gzip",
        "zstd",
        "2026-10-01",
        "2026-02-30",
        "\\x1D",
        "\\x1",
        "\\q",
        "\u{1d}",
        "(\\S+)",
        "(?P<name>\\S+)",
        "((((",
        "参松养心胶囊",
        "\u{0}",
        "a\u{7f}b",
    ];

    /// A TOML basic string holding `text`, escaped.
    fn quoted(text: &str) -> String {
        toml::Value::String(text.to_string()).to_string()
    }

    /// A TOML value: strings from [`WORDS`] or arbitrary, integers, floats, booleans, dates,
    /// arrays and inline tables.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            4 => prop::sample::select(WORDS).prop_map(quoted),
            1 => any::<String>().prop_map(|text| quoted(&text)),
            2 => any::<i64>().prop_map(|n| n.to_string()),
            1 => prop::sample::select(&[0i64, 1, -1, 9600, 4096, 1023, 1024, 32768][..])
                .prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|x| toml::Value::Float(x).to_string()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => Just("2026-10-01".to_string()),
            1 => Just("1979-05-27T07:32:00Z".to_string()),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec(
                    (prop::sample::select(&["key", "label", "x"][..]), inner),
                    0..3
                )
                .prop_map(|pairs| {
                    let pairs: Vec<String> =
                        pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", pairs.join(", "))
                }),
            ]
        })
    }

    /// One section: its header and some of its keys with random values.
    fn section(
        sections: &'static [(&'static str, &'static [&'static str])],
    ) -> impl Strategy<Value = String> {
        prop::sample::select(sections).prop_flat_map(|(header, keys)| {
            prop::collection::vec((prop::sample::select(keys), value()), 0..6).prop_map(
                move |pairs| {
                    let mut text = format!("{header}\n");
                    for (key, value) in pairs {
                        text.push_str(&format!("{} = {value}\n", quoted(key)));
                    }
                    text
                },
            )
        })
    }

    /// A main file, an optional drop-in and an optional `drivers.d` profile.
    fn files() -> impl Strategy<Value = (String, Option<String>, Option<String>)> {
        (
            prop::collection::vec(section(SECTIONS), 0..8),
            prop::option::of(prop::collection::vec(section(SECTIONS), 0..3)),
            prop::option::of(prop::collection::vec(section(PROFILE_SECTIONS), 0..4)),
        )
            .prop_map(|(main, drop_in, profile)| {
                // Usually start from a valid base, so validation (not just parsing) is reached.
                (
                    format!("{BASE}{}", main.concat()),
                    drop_in.map(|sections| sections.concat()),
                    profile.map(|sections| sections.concat()),
                )
            })
    }

    /// Loads `fixture` in process: either settings, or error lines that all name a file of the
    /// fixture (or a built-in profile) and, when they carry a position, a valid one.
    fn check_outcome(fixture: &Fixture) -> Result<(), TestCaseError> {
        let error = match load(&fixture.path()) {
            // What loads is usable: every duration can be added to now without overflow.
            Ok(settings) => {
                let mut durations = vec![settings.gateway.flush, settings.prompts.sale_link_window];
                durations.extend(settings.campaigns.iter().map(|campaign| campaign.timeout));
                durations.extend(settings.uplink.iter().map(|uplink| uplink.batch_max_age));
                for duration in durations {
                    prop_assert!(std::time::Instant::now().checked_add(duration).is_some());
                    let signed = chrono::Duration::from_std(duration);
                    prop_assert!(signed.is_ok_and(|signed| chrono::Local::now()
                        .checked_add_signed(signed)
                        .is_some()));
                }
                return Ok(());
            }
            Err(error) => error,
        };
        prop_assert!(!error.diagnostics().is_empty());
        for diagnostic in error.diagnostics() {
            prop_assert!(
                diagnostic.path.starts_with(fixture.dir.path())
                    || diagnostic.path.starts_with("built-in:"),
                "{diagnostic}"
            );
            if let Some(position) = diagnostic.position {
                prop_assert!(position.line >= 1 && position.column >= 1, "{diagnostic}");
            }
            prop_assert!(!diagnostic.message.is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        #[test]
        fn structured_random_configs_load_or_are_refused_with_positions(
            (main, drop_in, profile) in files()
        ) {
            let fixture = Fixture::new(&main);
            if let Some(drop_in) = drop_in {
                fixture.write("config.d/10-fuzz.toml", &drop_in);
            }
            if let Some(profile) = profile {
                fixture.write("drivers.d/fuzz.toml", &profile);
            }
            check_outcome(&fixture)?;
        }

        #[test]
        fn byte_mutations_of_the_shipped_config_load_or_are_refused_with_positions(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..8)
        ) {
            let mut bytes = std::fs::read(repo_file("config/posgw.toml")).expect("example");
            for (index, how, byte) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let at = index.index(bytes.len());
                match how {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 => {
                        bytes.remove(at);
                    }
                    _ => bytes[at] ^= 1 << (byte % 8),
                }
            }
            let fixture = Fixture::new("");
            std::fs::write(fixture.path(), &bytes).expect("write");
            check_outcome(&fixture)?;
        }
    }

    /// The corpus: inputs that once passed `check-config` and then failed, or broke loading.
    fn corpus() -> Vec<(String, Vec<u8>)> {
        let dir = repo_file("tests/config-corpus");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("tests/config-corpus")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .map(|path| {
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&path).expect("read corpus file"))
            })
            .collect();
        files.sort();
        assert!(files.len() >= 10, "corpus has {} files", files.len());
        files
    }

    #[test]
    fn the_corpus_is_refused_in_process_with_positions() {
        for (name, bytes) in corpus() {
            let fixture = Fixture::new("");
            std::fs::write(fixture.path(), &bytes).expect("write");
            let errors = fixture.errors();
            assert!(
                errors.iter().all(|line| line.starts_with("posgw.toml:")),
                "{name}: {errors:?}"
            );
            // Each corpus file names the message it must get in its first line: `# expect: …`.
            let expected = String::from_utf8_lossy(&bytes)
                .lines()
                .next()
                .and_then(|line| line.strip_prefix("# expect: ").map(str::to_owned))
                .unwrap_or_else(|| panic!("{name}: first line must be '# expect: …'"));
            assert!(
                errors.iter().any(|line| line.contains(&expected)),
                "{name}: expected {expected:?} in {errors:?}"
            );
        }
    }

    #[test]
    fn check_config_exits_0_or_2_on_the_corpus_and_mutations_through_the_binary() {
        let mut inputs = corpus();
        let shipped = std::fs::read(repo_file("config/posgw.toml")).expect("example");
        inputs.push(("shipped".into(), shipped.clone()));
        // A few fixed mutations of the shipped file: a cut, a flipped byte, an inserted NUL.
        for (index, at) in [(0usize, 7usize), (1, 300), (2, 1500)] {
            let mut bytes = shipped.clone();
            match index {
                0 => bytes.truncate(at),
                1 => bytes[at] ^= 0x80,
                _ => bytes.insert(at, 0),
            }
            inputs.push((format!("mutation-{index}"), bytes));
        }
        for (name, bytes) in inputs {
            let fixture = Fixture::new("");
            std::fs::write(fixture.path(), &bytes).expect("write");
            let output = posgw()
                .arg("check-config")
                .arg("-c")
                .arg(fixture.path())
                .output()
                .expect("run posgw check-config");
            let stderr = String::from_utf8_lossy(&output.stderr);
            match output.status.code() {
                Some(0) => assert!(
                    String::from_utf8_lossy(&output.stdout).contains("configuration ok"),
                    "{name}"
                ),
                Some(2) => {
                    let prefix = format!("{}:", fixture.path().display());
                    assert!(
                        !stderr.is_empty() && stderr.lines().all(|line| line.starts_with(&prefix)),
                        "{name}: {stderr}"
                    );
                }
                other => panic!("{name}: exit status {other:?}, stderr:\n{stderr}"),
            }
            if name == "shipped" {
                assert_eq!(output.status.code(), Some(0), "{stderr}");
            }
        }
    }
}

/// `transport = "tcp"`: a network receipt printer tap, its keys checked with positions.
mod network_printer_tap {
    use super::*;

    const TAP: &str = r#"
[[device]]
id = "printer-1"
role = "register"
transport = "tcp"
profile = "escpos-tap"
"#;

    #[test]
    fn a_tcp_tap_loads_with_its_listen_address_printer_and_default_cap() {
        let fixture = Fixture::new(&format!(
            "{BASE}{TAP}listen = \"0.0.0.0:9100\"\nprinter_addr = \"192.168.1.50:9100\"\n"
        ));
        let settings = fixture.load();
        let device = &settings.devices[1];
        assert_eq!(device.transport, Transport::Tcp);
        assert!(device.serial.is_none() && device.topic.is_none());
        let tap = device.tcp.as_ref().expect("tcp settings");
        assert_eq!(tap.listen, "0.0.0.0:9100".parse::<SocketAddr>().unwrap());
        assert_eq!(tap.printer_addr, "192.168.1.50:9100");
        assert_eq!(tap.max_connections, 4);
    }

    #[test]
    fn tcp_tap_keys_are_refused_with_their_positions() {
        let fixture = Fixture::new(&format!(
            "{BASE}{TAP}listen = \"9100\"\nprinter_addr = \"printer\"\nmax_connections = 0\npath = \"/dev/ttyUSB0\"\n"
        ));
        assert_eq!(
            fixture.errors(),
            [
                "posgw.toml:17:10: 'listen' in [[device]] must be an IP address and port like \"0.0.0.0:9100\", found '9100'",
                "posgw.toml:18:16: 'printer_addr' in [[device]] must be host:port, like \"192.168.1.50:9100\", found 'printer'",
                "posgw.toml:19:19: 'max_connections' in [[device]] must be from 1 to 64, found 0",
                "posgw.toml:20:8: 'path' in [[device]] is for serial and mqtt devices; this device's transport is tcp (listen and printer_addr)",
            ]
        );
    }

    #[test]
    fn a_tcp_tap_needs_listen_and_printer_addr() {
        let fixture = Fixture::new(&format!("{BASE}{TAP}"));
        let errors = fixture.errors();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("posgw.toml:12:1: missing 'listen'"));
        assert!(errors[1].starts_with("posgw.toml:12:1: missing 'printer_addr'"));
    }

    #[test]
    fn tcp_keys_on_a_serial_device_and_a_scanner_profile_on_tcp_are_refused() {
        let fixture = Fixture::new(&format!("{BASE}printer_addr = \"10.0.0.9:9100\"\n"));
        fixture.single_error(
            "posgw.toml:11:16: 'printer_addr' in [[device]] is for network printer taps (transport tcp); this device's transport is serial",
        );
        let fixture = Fixture::new(&format!(
            "{BASE}\n[[device]]\nid = \"s2\"\nrole = \"scanner\"\ntransport = \"tcp\"\nprofile = \"generic-scanner\"\nlisten = \"127.0.0.1:9100\"\nprinter_addr = \"10.0.0.9:9100\"\n"
        ));
        fixture.single_error("profile 'generic-scanner' does not support the tcp transport");
    }

    #[test]
    fn two_taps_cannot_listen_on_one_address() {
        let tap = |id: &str| {
            format!("{TAP}listen = \"0.0.0.0:9100\"\nprinter_addr = \"10.0.0.9:9100\"\n")
                .replace("printer-1", id)
        };
        let fixture = Fixture::new(&format!("{BASE}{}{}", tap("p1"), tap("p2")));
        fixture.single_error("'listen' address 0.0.0.0:9100 is already used by device 'p1'");
    }
}

mod flows {
    use super::*;

    /// The docs' five-step flow, to append to [`BASE`].
    const FLOW: &str = r#"
[[flow]]
id = "rx-5step"
name = "处方推荐五步法"
skus = ["6901234567892", "69012345*"]
steps = [
  { key = "consult",   label = "客户问诊" },
  { key = "symptoms",  label = "症状记录", choose = ["高血压", "心悸", "失眠", "胸闷"], multi = true },
  { key = "recommend", label = "药品推荐", auto = "scan" },
  { key = "insurance", label = "医保核验", choose = ["通过", "未通过", "自费"], auto = "sale" },
  { key = "guidance",  label = "用药指导" },
]
skip_reasons = ["客户明确拒绝", "复购老客", "紧急情况"]
hold = "recommend"
hold_timeout = "90s"
"#;

    #[test]
    fn the_five_step_flow_loads_with_its_hold_and_defaults() {
        let settings = Fixture::new(&format!("{BASE}{FLOW}")).load();
        let [flow] = &settings.flows[..] else {
            panic!("one flow: {:?}", settings.flows)
        };
        assert_eq!(flow.id, "rx-5step");
        assert_eq!(flow.steps.len(), 5);
        assert_eq!(flow.hold, Some(2));
        assert_eq!(flow.hold_timeout, Duration::from_secs(90));
        assert_eq!(flow.timeout, Duration::from_secs(30 * 60));
        assert!(flow.steps[1].multi);
        assert_eq!(flow.steps[3].choose[0], "通过");
        assert!(settings.privacy.customer_key_file.is_none());
    }

    #[test]
    fn flow_mistakes_are_reported_at_their_position() {
        let text = format!(
            "{BASE}{CAMPAIGN}{}",
            FLOW.replace("id = \"rx-5step\"", "id = \"xinsong-2026q4\"")
                .replace("hold = \"recommend\"", "hold = \"recomend\"")
                .replace("auto = \"scan\"", "auto = \"scna\"")
                .replace("\"失眠\", \"胸闷\"", "\"失眠\", \"失眠\"")
        );
        let errors = Fixture::new(&text).errors();
        let expected = [
            "posgw.toml:24:69: 'choose' of a step in [[flow]] lists '失眠' twice",
            "posgw.toml:25:47: 'auto' of a step in [[flow]] must be one of scan, sale, found 'scna', did you mean 'scan'?",
            "posgw.toml:30:8: 'hold' in [[flow]] names no step: 'recomend' (steps: consult, symptoms, recommend, insurance, guidance)",
        ];
        for line in expected {
            assert!(
                errors.iter().any(|error| error == line),
                "{line}\nnot in {errors:#?}"
            );
        }
        // The duplicate id is only judged for a flow that is otherwise valid.
        let duplicate = Fixture::new(&format!(
            "{BASE}{CAMPAIGN}{}",
            FLOW.replace("id = \"rx-5step\"", "id = \"xinsong-2026q4\"")
        ))
        .single_error("duplicate id 'xinsong-2026q4' in [[flow]]");
        assert!(duplicate.starts_with("posgw.toml:19:6:"), "{duplicate}");
        assert!(
            duplicate.contains("first defined at posgw.toml:13:6"),
            "{duplicate}"
        );
    }

    #[test]
    fn a_hold_on_the_first_step_and_a_sale_step_without_two_values_are_refused() {
        let text = format!(
            "{BASE}{}",
            FLOW.replace("hold = \"recommend\"", "hold = \"consult\"")
                .replace(
                    "choose = [\"通过\", \"未通过\", \"自费\"]",
                    "choose = [\"通过\"]"
                )
        );
        let errors = Fixture::new(&text).errors();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].contains("needs a 'choose' list whose first two values"),
            "{errors:#?}"
        );
        assert!(
            errors[1].contains("names the first step 'consult'"),
            "{errors:#?}"
        );
    }

    #[test]
    fn the_customer_key_file_must_exist() {
        let fixture = Fixture::new(&format!(
            "{BASE}\n[privacy]\ncustomer_key_file = \"customer.key\"\n"
        ));
        fixture.single_error("cannot read 'customer_key_file' in [privacy]");
        fixture.write("customer.key", "a secret of sixteen bytes or more\n");
        let settings = fixture.load();
        assert!(settings
            .privacy
            .customer_key_file
            .is_some_and(|path| path.ends_with("customer.key")));
    }
}
