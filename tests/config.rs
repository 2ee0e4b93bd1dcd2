//! Integration tests of `posgw::config::load` against files written in a temporary folder.
//!
//! Each test writes a `posgw.toml` (plus `config.d/` and `drivers.d/` files where needed) into
//! its own temp dir and asserts on the loaded settings or on the exact `PATH:LINE:COL: message`
//! lines, with the temp dir stripped from paths so expectations read like the files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

fn manifest_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

mod shipped {
    use super::*;

    #[test]
    fn example_config_loads() {
        let settings =
            load(&manifest_file("config/posgw.toml")).unwrap_or_else(|error| panic!("{error}"));
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
        assert_eq!(settings.files, [manifest_file("config/posgw.toml")]);
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let settings =
            load(&manifest_file("config/minimal.toml")).unwrap_or_else(|error| panic!("{error}"));
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
        let text =
            std::fs::read_to_string(manifest_file("config/posgw.toml")).expect("example config");
        let enabled: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || is_assignment(rest) => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(
            enabled.contains("\n[uplink]\n") && enabled.contains("\n[mqtt]\n"),
            "sections were uncommented"
        );
        let fixture = Fixture::new(&enabled);
        let settings = fixture.load();
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
    }

    fn is_assignment(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    }

    #[test]
    fn summary_names_the_important_things() {
        let settings =
            load(&manifest_file("config/posgw.toml")).unwrap_or_else(|error| panic!("{error}"));
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
                "posgw.toml:19:21: 'batch_max_records' in [uplink] must be at least 1, found 0",
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
                "posgw.toml:17:11: 'timeout' in [[campaign]] must be longer than 0s",
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
