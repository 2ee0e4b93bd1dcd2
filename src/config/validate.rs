//! Stage 3 of loading: the merged raw configuration into typed [`Settings`].
//!
//! Every rule reports through [`Report`] with the position of the value (or, for a missing key,
//! of its table) and carries on, so one run lists every problem. Cross-field rules (device vs.
//! profile, answer codes vs. campaign options, unique ids) live here too, in one place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::check::{self, ID_EXTRA};
use super::device::{Role, Transport};
use super::profile::ProfileSet;
use super::raw::{RawCampaign, RawConfig, RawDevice, RawGateway, RawMqtt, RawUplink};
use super::settings::{
    ApiSettings, CampaignSettings, Compression, DeviceSettings, GatewaySettings, MqttSettings,
    PromptOption, SerialSettings, Settings, SkuPattern, TcpTapSettings, UplinkSettings,
};
use super::source::{suggest, Located, Report, Span};

/// `[gateway] data_dir` when not set.
const DEFAULT_DATA_DIR: &str = "/var/lib/posgw";
/// `[gateway] flush` when not set.
const DEFAULT_FLUSH: Duration = Duration::from_millis(50);
/// `[api] listen` when not set.
const DEFAULT_LISTEN: &str = "127.0.0.1:7380";
/// `[[device]] station` when not set.
const DEFAULT_STATION: &str = "main";
/// `[[campaign]] timeout` when not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// `[[device]] max_connections` (a network printer tap) when not set: a register's print job
/// and a status poll on a second connection, with room to spare.
const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// The most `max_connections` may be: a tap serves one register.
const MAX_MAX_CONNECTIONS: i64 = 64;
/// `[uplink] batch_max_records` when not set.
const DEFAULT_BATCH_MAX_RECORDS: usize = 1000;
/// `[uplink] batch_max_bytes` when not set (1MiB).
const DEFAULT_BATCH_MAX_BYTES: u64 = 1024 * 1024;
/// `[uplink] batch_max_age` when not set.
const DEFAULT_BATCH_MAX_AGE: Duration = Duration::from_secs(1);
/// `[uplink] max_journal_bytes` when not set (2GiB).
const DEFAULT_MAX_JOURNAL_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// `[mqtt] max_message` when not set (1MiB).
const DEFAULT_MAX_MESSAGE: u64 = 1024 * 1024;
/// `[mqtt] max_message`: ordinary sales fit in 1KiB; each message read whole is held in memory,
/// so at most 16MiB.
const MAX_MESSAGE_RANGE: RangeInclusive<u64> = 1024..=16 * 1024 * 1024;
/// `[gateway] flush`: from fsync-every-record to a window that still bounds what a crash loses.
const FLUSH_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(10);
/// `[prompts] sale_link_window`: a customer's visit, at most a day.
const SALE_LINK_WINDOW_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// `[[campaign]] timeout`: a prompt waits for the clerk at least a second, at most a day.
const TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// `[uplink] batch_max_age`.
const BATCH_MAX_AGE_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(600);
/// `[uplink] batch_max_records`.
const BATCH_MAX_RECORDS_RANGE: RangeInclusive<usize> = 1..=100_000;
/// `[uplink] batch_max_bytes`: one record at least, and a body HQ can take.
const BATCH_MAX_BYTES_RANGE: RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
/// `[uplink] max_journal_bytes`: room for dozens of scan records at least (a quota below one
/// record would evict every scan as it arrives), and far from any arithmetic overflow at most.
pub(crate) const MAX_JOURNAL_BYTES_RANGE: RangeInclusive<u64> =
    32 * 1024..=64 * 1024 * 1024 * 1024 * 1024;

/// Characters allowed in a store code besides ASCII letters and digits.
const STORE_EXTRA: &[char] = &['-', '_'];

/// Validates the merged configuration; `None` when a problem was recorded.
pub(crate) fn validate(
    report: &mut Report,
    raw: RawConfig,
    main_file: usize,
    path: &Path,
    base_dir: &Path,
    files: Vec<PathBuf>,
    profiles: ProfileSet,
) -> Option<Settings> {
    let gateway = gateway(report, raw.gateway.as_ref(), main_file, base_dir);
    let api = api(
        report,
        raw.api.as_ref().and_then(|api| api.value.listen.as_ref()),
        raw.api.as_ref().and_then(|api| api.value.hosts.as_ref()),
    );
    let mqtt = raw
        .mqtt
        .as_ref()
        .and_then(|mqtt| mqtt_settings(report, mqtt, base_dir));
    let devices = devices(
        report,
        raw.device.as_deref().unwrap_or_default(),
        &profiles,
        raw.mqtt.is_some(),
        base_dir,
    );
    let campaigns = campaigns(report, raw.campaign.as_deref().unwrap_or_default());
    let answer_codes = answer_codes(
        report,
        raw.answer_codes.as_ref(),
        raw.campaign.as_deref().unwrap_or_default(),
    );
    let uplink = raw
        .uplink
        .as_ref()
        .and_then(|uplink| uplink_settings(report, uplink, base_dir));
    let prompts = prompt_settings(report, raw.prompts.as_ref());
    Some(Settings {
        path: path.to_path_buf(),
        files,
        gateway: gateway?,
        api: api?,
        prompts: prompts?,
        devices: devices?,
        mqtt,
        campaigns: campaigns?,
        answer_codes: answer_codes?,
        uplink,
        profiles,
    })
}

/// `[prompts]`.
fn prompt_settings(
    report: &mut Report,
    raw: Option<&Located<super::raw::RawPrompts>>,
) -> Option<super::settings::PromptSettings> {
    let mut settings = super::settings::PromptSettings::default();
    let Some(raw) = raw else {
        return Some(settings);
    };
    let mut ok = true;
    if let Some(reasons) = &raw.value.skip_reasons {
        settings.skip_reasons.clear();
        for reason in &reasons.value {
            match check::non_empty(report, reason, "a skip reason in [prompts] skip_reasons") {
                Some(text) => settings.skip_reasons.push(text.to_owned()),
                None => ok = false,
            }
        }
    }
    if let Some(window) = &raw.value.sale_link_window {
        match check::duration_in(
            report,
            window,
            "'sale_link_window' in [prompts]",
            SALE_LINK_WINDOW_RANGE,
        ) {
            Some(window) => settings.sale_link_window = window,
            None => ok = false,
        }
    }
    ok.then_some(settings)
}

/// `[gateway]`.
fn gateway(
    report: &mut Report,
    raw: Option<&Located<RawGateway>>,
    main_file: usize,
    base_dir: &Path,
) -> Option<GatewaySettings> {
    let Some(raw) = raw else {
        report.error(
            &report.file_start(main_file),
            "missing [gateway] section (it needs at least 'store')",
        );
        return None;
    };
    let table = &raw.span;
    let gateway = &raw.value;
    let store = match &gateway.store {
        Some(store) => check::identifier(report, store, "'store' in [gateway]", STORE_EXTRA),
        None => {
            report.error(
                table,
                "missing 'store' in [gateway] (the store code, like \"WZ-LC-001\")",
            );
            None
        }
    };
    let id = match &gateway.id {
        Some(id) => check::identifier(report, id, "'id' in [gateway]", ID_EXTRA),
        None => {
            match host_name() {
                Some(name) if check::is_identifier(&name, ID_EXTRA) => Some(name),
                Some(name) => {
                    report.error(
                    table,
                    format!("'id' in [gateway] defaults to the host name '{name}', which is not a valid id (1 to 64 of A-Z a-z 0-9 '-' '_' '.'); set 'id'"),
                );
                    None
                }
                None => {
                    report.error(table, "'id' in [gateway] defaults to the host name, which cannot be read; set 'id'");
                    None
                }
            }
        }
    };
    let data_dir = match &gateway.data_dir {
        Some(dir) => check::state_folder(report, base_dir, dir, "'data_dir' in [gateway]"),
        None => Some(PathBuf::from(DEFAULT_DATA_DIR)),
    };
    let flush = match &gateway.flush {
        Some(flush) => check::duration_in(report, flush, "'flush' in [gateway]", FLUSH_RANGE),
        None => Some(DEFAULT_FLUSH),
    };
    Some(GatewaySettings {
        store: store?,
        id: id?,
        data_dir: data_dir?,
        flush: flush?,
    })
}

/// This machine's host name, the default gateway id.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the pointer and length describe `buffer`, which outlives the call; gethostname
    // writes at most `len` bytes and we look for the terminating NUL ourselves below.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let end = buffer
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// `[api]`.
fn api(
    report: &mut Report,
    listen: Option<&Located<String>>,
    hosts: Option<&Located<Vec<Located<String>>>>,
) -> Option<ApiSettings> {
    let mut names = Vec::new();
    for host in hosts
        .map(|hosts| hosts.value.as_slice())
        .unwrap_or_default()
    {
        let name = host.value.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            names.push(name);
        } else {
            report.error(
                &host.span,
                format!("'hosts' in [api] must be host names without port or scheme, like \"till-pc.store.example\", found '{}'", host.value),
            );
        }
    }
    let Some(listen) = listen else {
        return DEFAULT_LISTEN.parse().ok().map(|listen| ApiSettings {
            listen,
            hosts: names,
        });
    };
    match listen.value.parse::<SocketAddr>() {
        Ok(address) => Some(ApiSettings {
            listen: address,
            hosts: names,
        }),
        Err(_) => {
            report.error(
                &listen.span,
                format!("'listen' in [api] must be an IP address and port like \"127.0.0.1:7380\", found '{}'", listen.value),
            );
            None
        }
    }
}

/// Records an error when a key that does not apply to this device was set.
fn forbid<T>(report: &mut Report, value: &Option<Located<T>>, key: &str, why: &str) {
    if let Some(value) = value {
        report.error(&value.span, format!("'{key}' in [[device]] {why}"));
    }
}

/// Every `[[device]]`, with cross-device checks (unique ids, one reader per serial port).
fn devices(
    report: &mut Report,
    raw: &[Located<RawDevice>],
    profiles: &ProfileSet,
    have_mqtt: bool,
    base_dir: &Path,
) -> Option<Vec<DeviceSettings>> {
    let mut devices = Vec::new();
    let mut ok = true;
    let mut ids: BTreeMap<String, Span> = BTreeMap::new();
    let mut serial_paths: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut topics: BTreeMap<String, String> = BTreeMap::new();
    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for entry in raw {
        let Some(device) = device(report, entry, profiles, have_mqtt, base_dir) else {
            ok = false;
            continue;
        };
        let id_span = entry
            .value
            .id
            .as_ref()
            .map_or(entry.span.clone(), |id| id.span.clone());
        if let Some(first) = ids.get(&device.id) {
            let first = report.describe(first);
            report.error(
                &id_span,
                format!(
                    "duplicate device id '{}' (first defined at {first})",
                    device.id
                ),
            );
            ok = false;
            continue;
        }
        ids.insert(device.id.clone(), id_span);
        if let Some(serial) = &device.serial {
            if let Some(other) = serial_paths.get(&serial.path) {
                let span = entry
                    .value
                    .path
                    .as_ref()
                    .map_or(entry.span.clone(), |path| path.span.clone());
                report.error(
                    &span,
                    format!(
                        "serial port '{}' is already used by device '{other}'",
                        serial.path.display()
                    ),
                );
                ok = false;
                continue;
            }
            serial_paths.insert(serial.path.clone(), device.id.clone());
        }
        if let Some(topic) = &device.topic {
            // One topic, one device: its messages could not be told apart otherwise.
            if let Some(other) = topics.get(topic) {
                let span = entry
                    .value
                    .topic
                    .as_ref()
                    .map_or(entry.span.clone(), |topic| topic.span.clone());
                report.error(
                    &span,
                    format!("mqtt topic '{topic}' is already used by device '{other}'"),
                );
                ok = false;
                continue;
            }
            topics.insert(topic.clone(), device.id.clone());
        }
        if let Some(tap) = &device.tcp {
            // Two taps cannot listen on one port.
            if let Some(other) = listens.get(&tap.listen) {
                let span = entry
                    .value
                    .listen
                    .as_ref()
                    .map_or(entry.span.clone(), |listen| listen.span.clone());
                report.error(
                    &span,
                    format!(
                        "'listen' address {} is already used by device '{other}'",
                        tap.listen
                    ),
                );
                ok = false;
                continue;
            }
            listens.insert(tap.listen, device.id.clone());
        }
        devices.push(device);
    }
    ok.then_some(devices)
}

/// One `[[device]]`.
fn device(
    report: &mut Report,
    entry: &Located<RawDevice>,
    profiles: &ProfileSet,
    have_mqtt: bool,
    base_dir: &Path,
) -> Option<DeviceSettings> {
    let raw = &entry.value;
    let table = &entry.span;
    let problems_before = report.problem_count();
    let id = match &raw.id {
        Some(id) => check::identifier(report, id, "'id' in [[device]]", ID_EXTRA),
        None => {
            report.error(table, "missing 'id' in [[device]]");
            None
        }
    };
    let role = match &raw.role {
        Some(role) => check::choice(
            report,
            role,
            "'role' in [[device]]",
            &[("scanner", Role::Scanner), ("register", Role::Register)],
        ),
        None => {
            report.error(table, "missing 'role' in [[device]] (scanner or register)");
            None
        }
    };
    let transport = match &raw.transport {
        Some(transport) => check::choice(
            report,
            transport,
            "'transport' in [[device]]",
            &[
                ("serial", Transport::Serial),
                ("mqtt", Transport::Mqtt),
                ("tcp", Transport::Tcp),
            ],
        ),
        None => {
            report.error(
                table,
                "missing 'transport' in [[device]] (serial, mqtt or tcp)",
            );
            None
        }
    };
    let station = match &raw.station {
        Some(station) => check::identifier(report, station, "'station' in [[device]]", ID_EXTRA),
        None => Some(DEFAULT_STATION.to_string()),
    };
    let profile = match &raw.profile {
        Some(name) => match profiles.get(&name.value) {
            Some(profile) => Some(profile),
            None => {
                let mut message = format!("unknown profile '{}' in [[device]]", name.value);
                match suggest(&name.value, profiles.names()) {
                    Some(near) => message.push_str(&format!(", did you mean '{near}'?")),
                    None => message.push_str(&format!(
                        " (known: {})",
                        profiles.names().collect::<Vec<_>>().join(", ")
                    )),
                }
                report.error(&name.span, message);
                None
            }
        },
        None => {
            report.error(
                table,
                "missing 'profile' in [[device]] (like \"generic-scanner\")",
            );
            None
        }
    };
    if let (Some(profile), Some(name)) = (&profile, &raw.profile) {
        if let Some(role) = role.filter(|role| !profile.supports_role(*role)) {
            report.error(
                &name.span,
                format!(
                    "profile '{}' does not support the {role} role",
                    profile.name
                ),
            );
        }
        if let Some(transport) =
            transport.filter(|transport| !profile.supports_transport(*transport))
        {
            let supported: Vec<&str> = profile.transports.iter().map(|t| t.as_str()).collect();
            report.error(
                &name.span,
                format!(
                    "profile '{}' does not support the {transport} transport (it supports {})",
                    profile.name,
                    supported.join(", ")
                ),
            );
        }
    }

    let mut serial = None;
    let mut topic = None;
    let mut tcp = None;
    if let Some(transport) = transport.filter(|transport| *transport != Transport::Tcp) {
        let why = format!(
            "is for network printer taps (transport tcp); this device's transport is {transport}"
        );
        forbid(report, &raw.listen, "listen", &why);
        forbid(report, &raw.printer_addr, "printer_addr", &why);
        forbid(report, &raw.max_connections, "max_connections", &why);
    }
    match transport {
        Some(Transport::Serial) => {
            forbid(
                report,
                &raw.topic,
                "topic",
                "is for mqtt devices; this device's transport is serial",
            );
            let path = match &raw.path {
                Some(path) => check::path(report, base_dir, path, "'path' in [[device]]"),
                None => {
                    report.error(
                        table,
                        "missing 'path' in [[device]] (the serial device, like \"/dev/ttyACM0\")",
                    );
                    None
                }
            };
            let passthrough = match &raw.passthrough {
                Some(passthrough) => {
                    check::path(report, base_dir, passthrough, "'passthrough' in [[device]]")
                }
                None => None,
            };
            if let (Some(path), Some(passthrough), Some(raw_passthrough)) =
                (&path, &passthrough, &raw.passthrough)
            {
                if path == passthrough {
                    report.error(
                        &raw_passthrough.span,
                        "'passthrough' in [[device]] must differ from 'path'",
                    );
                }
            }
            if let Some(profile) = profile
                .as_ref()
                .filter(|profile| profile.requires_passthrough)
            {
                if raw.passthrough.is_none() {
                    report.error(
                        table,
                        format!("profile '{}' requires 'passthrough' in [[device]] (the printer's port), or receipts stop printing", profile.name),
                    );
                }
            }
            let baud = match &raw.baud {
                Some(baud) => check::baud(report, baud, "'baud' in [[device]]"),
                None => None,
            };
            if let (Some(path), Some(profile)) = (path, &profile) {
                let mut line = profile.line.clone();
                if let Some(baud) = baud {
                    line.baud = baud;
                }
                serial = Some(SerialSettings {
                    path,
                    line,
                    passthrough,
                });
            }
        }
        Some(Transport::Mqtt) => {
            let why = "is for serial devices; this device's transport is mqtt";
            forbid(report, &raw.path, "path", why);
            forbid(report, &raw.baud, "baud", why);
            forbid(report, &raw.passthrough, "passthrough", why);
            if let (false, Some(transport)) = (have_mqtt, &raw.transport) {
                report.error(
                    &transport.span,
                    "transport 'mqtt' needs an [mqtt] section with the broker's url",
                );
            }
            match &raw.topic {
                Some(value) if value.value.contains(['+', '#']) => report.error(
                    &value.span,
                    format!("'topic' in [[device]] must be one topic, without the wildcards + and #, found '{}'", value.value),
                ),
                Some(value) => topic = check::non_empty(report, value, "'topic' in [[device]]"),
                None => report.error(table, "missing 'topic' in [[device]] (the MQTT topic the device publishes on)"),
            }
        }
        Some(Transport::Tcp) => tcp = tcp_tap(report, raw, table),
        None => {}
    }

    if report.problem_count() > problems_before {
        return None;
    }
    Some(DeviceSettings {
        id: id?,
        role: role?,
        transport: transport?,
        station: station?,
        profile: profile.map(|profile| Arc::clone(&profile))?,
        serial,
        topic,
        tcp,
    })
}

/// The keys of a network printer tap (`transport = "tcp"`).
fn tcp_tap(report: &mut Report, raw: &RawDevice, table: &Span) -> Option<TcpTapSettings> {
    let why =
        "is for serial and mqtt devices; this device's transport is tcp (listen and printer_addr)";
    forbid(report, &raw.path, "path", why);
    forbid(report, &raw.baud, "baud", why);
    forbid(report, &raw.passthrough, "passthrough", why);
    forbid(report, &raw.topic, "topic", why);
    let listen = match &raw.listen {
        Some(listen) => match listen.value.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                report.error(
                    &listen.span,
                    format!("'listen' in [[device]] must be an IP address and port like \"0.0.0.0:9100\", found '{}'", listen.value),
                );
                None
            }
        },
        None => {
            report.error(
                table,
                "missing 'listen' in [[device]] (where the register connects, like \"0.0.0.0:9100\")",
            );
            None
        }
    };
    let printer_addr = match &raw.printer_addr {
        Some(printer) => match host_and_port(&printer.value) {
            Ok(()) => Some(printer.value.trim().to_string()),
            Err(problem) => {
                report.error(
                    &printer.span,
                    format!("'printer_addr' in [[device]] {problem}, like \"192.168.1.50:9100\", found '{}'", printer.value),
                );
                None
            }
        },
        None => {
            report.error(
                table,
                "missing 'printer_addr' in [[device]] (the network printer, like \"192.168.1.50:9100\")",
            );
            None
        }
    };
    let max_connections = match &raw.max_connections {
        Some(value) if (1..=MAX_MAX_CONNECTIONS).contains(&value.value) => {
            usize::try_from(value.value).ok()
        }
        Some(value) => {
            report.error(
                &value.span,
                format!(
                    "'max_connections' in [[device]] must be from 1 to {MAX_MAX_CONNECTIONS}, found {}",
                    value.value
                ),
            );
            None
        }
        None => Some(DEFAULT_MAX_CONNECTIONS),
    };
    Some(TcpTapSettings {
        listen: listen?,
        printer_addr: printer_addr?,
        max_connections: max_connections?,
    })
}

/// Checks `host:port` (`[v6]:port` for an IPv6 address); the host is resolved at connect time.
fn host_and_port(text: &str) -> Result<(), &'static str> {
    let text = text.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return if address.port() > 0 {
            Ok(())
        } else {
            Err("needs a port from 1 to 65535")
        };
    }
    let (host, port) = text.rsplit_once(':').ok_or("must be host:port")?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 => {}
        _ => return Err("needs a port from 1 to 65535"),
    }
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if host.is_empty() || !host.chars().all(name_ok) {
        return Err("must be host:port with a host name or IP address");
    }
    Ok(())
}

/// `[mqtt]`.
fn mqtt_settings(
    report: &mut Report,
    raw: &Located<RawMqtt>,
    base_dir: &Path,
) -> Option<MqttSettings> {
    let mqtt = &raw.value;
    let problems_before = report.problem_count();
    let url = match &mqtt.url {
        Some(url) => match check::parse_address(&url.value, &["mqtt", "mqtts"]) {
            Ok(address) if address.path.is_empty() || address.path == "/" => {
                Some(url.value.clone())
            }
            Ok(_) => {
                report.error(
                    &url.span,
                    format!(
                        "'url' in [mqtt] must be mqtt://host[:port] without a path, found '{}'",
                        url.value
                    ),
                );
                None
            }
            Err(error) => {
                report.error(
                    &url.span,
                    format!("'url' in [mqtt] {error}, found '{}'", url.value),
                );
                None
            }
        },
        None => {
            report.error(
                &raw.span,
                "missing 'url' in [mqtt] (like \"mqtt://127.0.0.1:1883\")",
            );
            None
        }
    };
    let username = mqtt
        .username
        .as_ref()
        .and_then(|name| check::non_empty(report, name, "'username' in [mqtt]"));
    let password_file = mqtt.password_file.as_ref().and_then(|file| {
        if mqtt.username.is_none() {
            // MQTT 3.1.1 sends a password only with a user name (the connection would fail).
            report.error(
                &file.span,
                "'password_file' in [mqtt] needs 'username' in [mqtt]: MQTT sends no password without a user name",
            );
            return None;
        }
        check::secret_file(report, base_dir, file, "'password_file' in [mqtt]", false)
    });
    let max_message = match &mqtt.max_message {
        None => Some(DEFAULT_MAX_MESSAGE),
        Some(value) => check::size_in(report, value, "'max_message' in [mqtt]", MAX_MESSAGE_RANGE),
    };
    if report.problem_count() > problems_before {
        return None;
    }
    Some(MqttSettings {
        url: url?,
        username,
        password_file,
        // At most MAX_MAX_MESSAGE: fits any usize.
        max_message: usize::try_from(max_message?).unwrap_or(usize::MAX),
    })
}

/// Every `[[campaign]]`, with unique ids.
fn campaigns(report: &mut Report, raw: &[Located<RawCampaign>]) -> Option<Vec<CampaignSettings>> {
    let mut campaigns = Vec::new();
    let mut ok = true;
    let mut ids: BTreeMap<String, Span> = BTreeMap::new();
    for entry in raw {
        let Some(campaign) = campaign(report, entry) else {
            ok = false;
            continue;
        };
        let id_span = entry
            .value
            .id
            .as_ref()
            .map_or(entry.span.clone(), |id| id.span.clone());
        if let Some(first) = ids.get(&campaign.id) {
            let first = report.describe(first);
            report.error(
                &id_span,
                format!(
                    "duplicate campaign id '{}' (first defined at {first})",
                    campaign.id
                ),
            );
            ok = false;
            continue;
        }
        ids.insert(campaign.id.clone(), id_span);
        campaigns.push(campaign);
    }
    ok.then_some(campaigns)
}

/// One `[[campaign]]`.
fn campaign(report: &mut Report, entry: &Located<RawCampaign>) -> Option<CampaignSettings> {
    let raw = &entry.value;
    let table = &entry.span;
    let problems_before = report.problem_count();
    let id = match &raw.id {
        Some(id) => check::identifier(report, id, "'id' in [[campaign]]", ID_EXTRA),
        None => {
            report.error(table, "missing 'id' in [[campaign]]");
            None
        }
    };
    let mut skus = Vec::new();
    match &raw.skus {
        Some(list) if list.value.is_empty() => report.error(
            &list.span,
            "'skus' in [[campaign]] must list at least one code",
        ),
        Some(list) => skus.extend(list.value.iter().filter_map(|sku| sku_pattern(report, sku))),
        None => report.error(
            table,
            "missing 'skus' in [[campaign]] (codes, or prefixes ending in *)",
        ),
    }
    let question = match &raw.question {
        Some(question) => check::non_empty(report, question, "'question' in [[campaign]]"),
        None => {
            report.error(table, "missing 'question' in [[campaign]]");
            None
        }
    };
    let mut options = Vec::new();
    match &raw.options {
        Some(list) if list.value.is_empty() => report.error(
            &list.span,
            "'options' in [[campaign]] must offer at least one answer",
        ),
        Some(list) => {
            let mut keys: BTreeMap<String, Span> = BTreeMap::new();
            for option in &list.value {
                let key = match &option.value.key {
                    Some(key) => check::identifier(
                        report,
                        key,
                        "'key' of an option in [[campaign]]",
                        ID_EXTRA,
                    ),
                    None => {
                        report.error(&option.span, "an option in [[campaign]] is missing 'key'");
                        None
                    }
                };
                let label = match &option.value.label {
                    Some(label) => {
                        check::non_empty(report, label, "'label' of an option in [[campaign]]")
                    }
                    None => {
                        report.error(&option.span, "an option in [[campaign]] is missing 'label'");
                        None
                    }
                };
                let (Some(key), Some(label)) = (key, label) else {
                    continue;
                };
                let key_span = option
                    .value
                    .key
                    .as_ref()
                    .map_or(option.span.clone(), |key| key.span.clone());
                if let Some(first) = keys.get(&key) {
                    let first = report.describe(first);
                    report.error(
                        &key_span,
                        format!("duplicate option key '{key}' in [[campaign]] (first at {first})"),
                    );
                    continue;
                }
                keys.insert(key.clone(), key_span);
                options.push(PromptOption { key, label });
            }
        }
        None => report.error(
            table,
            "missing 'options' in [[campaign]] (like [{ key = \"doctor\", label = \"医生推荐\" }])",
        ),
    }
    let timeout = match &raw.timeout {
        Some(value) => {
            check::duration_in(report, value, "'timeout' in [[campaign]]", TIMEOUT_RANGE)
        }
        None => Some(DEFAULT_TIMEOUT),
    };
    let starts = raw
        .starts
        .as_ref()
        .and_then(|value| date(report, value, "starts"));
    let ends = raw
        .ends
        .as_ref()
        .and_then(|value| date(report, value, "ends"));
    if let (Some(starts), Some(ends), Some(raw_ends)) = (starts, ends, &raw.ends) {
        if ends < starts {
            report.error(
                &raw_ends.span,
                format!("'ends' ({ends}) in [[campaign]] is before 'starts' ({starts})"),
            );
        }
    }
    if report.problem_count() > problems_before {
        return None;
    }
    Some(CampaignSettings {
        id: id?,
        skus,
        question: question?,
        options,
        timeout: timeout?,
        starts,
        ends,
    })
}

/// One entry of `skus`: an exact code, or a prefix written with a trailing `*`.
fn sku_pattern(report: &mut Report, value: &Located<String>) -> Option<SkuPattern> {
    let text = value.value.trim();
    let problem = if text.is_empty() {
        Some("an entry of 'skus' in [[campaign]] must not be empty".to_string())
    } else if text == "*" {
        Some(
            "an entry of 'skus' in [[campaign]] needs at least one character before '*'"
                .to_string(),
        )
    } else if text.trim_end_matches('*').contains('*') || text.ends_with("**") {
        Some(format!(
            "an entry of 'skus' in [[campaign]] may only end in '*' (a prefix), found '{text}'"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        report.error(&value.span, problem);
        return None;
    }
    Some(match text.strip_suffix('*') {
        Some(prefix) => SkuPattern::Prefix(prefix.to_string()),
        None => SkuPattern::Exact(text.to_string()),
    })
}

/// A campaign date: a `"YYYY-MM-DD"` string or a TOML local date.
fn date(report: &mut Report, value: &Located<toml::Value>, key: &str) -> Option<chrono::NaiveDate> {
    let parsed = match &value.value {
        toml::Value::String(text) => {
            chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()
        }
        toml::Value::Datetime(datetime) if datetime.time.is_none() && datetime.offset.is_none() => {
            chrono::NaiveDate::parse_from_str(&datetime.to_string(), "%Y-%m-%d").ok()
        }
        _ => None,
    };
    if parsed.is_none() {
        let found = match &value.value {
            toml::Value::String(text) => format!("\"{text}\""),
            other => check::describe_value(other),
        };
        report.error(
            &value.span,
            format!("'{key}' in [[campaign]] must be a date like \"2026-10-01\", found {found}"),
        );
    }
    parsed
}

/// `[answer_codes]`: each value must be an option key of some campaign.
fn answer_codes(
    report: &mut Report,
    raw: Option<&Located<BTreeMap<String, Located<String>>>>,
    campaigns: &[Located<RawCampaign>],
) -> Option<BTreeMap<String, String>> {
    let Some(raw) = raw else {
        return Some(BTreeMap::new());
    };
    // Taken from the raw campaigns so that a campaign with an unrelated error does not also
    // make every answer code pointing at it fail.
    let option_keys: BTreeSet<&str> = campaigns
        .iter()
        .filter_map(|campaign| campaign.value.options.as_ref())
        .flat_map(|options| options.value.iter())
        .filter_map(|option| option.value.key.as_ref())
        .map(|key| key.value.as_str())
        .collect();
    let mut codes = BTreeMap::new();
    let mut ok = true;
    for (code, option) in &raw.value {
        if code.trim().is_empty() {
            report.error(
                &option.span,
                "an answer code in [answer_codes] must not be empty",
            );
            ok = false;
            continue;
        }
        if let Some((campaign, sku)) = product_code(campaigns, code) {
            report.error(
                &option.span,
                format!(
                    "answer code '{code}' is also a product of campaign '{campaign}' (skus entry '{sku}'): a scan of it would answer a prompt instead of opening one"
                ),
            );
            ok = false;
            continue;
        }
        if !option_keys.contains(option.value.as_str()) {
            let mut message = format!(
                "answer code '{code}' maps to '{}', which is not an option key of any campaign",
                option.value
            );
            if let Some(near) = suggest(&option.value, option_keys.iter().copied()) {
                message.push_str(&format!(", did you mean '{near}'?"));
            }
            report.error(&option.span, message);
            ok = false;
            continue;
        }
        codes.insert(code.clone(), option.value.clone());
    }
    ok.then_some(codes)
}

/// The campaign (id, skus entry as written) whose products include `code`, if any; from the
/// raw campaigns, like the option keys in [`answer_codes`].
fn product_code<'a>(
    campaigns: &'a [Located<RawCampaign>],
    code: &str,
) -> Option<(&'a str, &'a str)> {
    campaigns.iter().find_map(|campaign| {
        let skus = campaign.value.skus.as_ref()?;
        let sku = skus.value.iter().find(|sku| {
            let text = sku.value.trim();
            match text.strip_suffix('*') {
                Some(prefix) => !prefix.is_empty() && code.trim().starts_with(prefix),
                None => !text.is_empty() && code.trim() == text,
            }
        })?;
        let id = campaign
            .value
            .id
            .as_ref()
            .map_or("", |id| id.value.as_str());
        Some((id, sku.value.as_str()))
    })
}

/// `[uplink]`.
fn uplink_settings(
    report: &mut Report,
    raw: &Located<RawUplink>,
    base_dir: &Path,
) -> Option<UplinkSettings> {
    let uplink = &raw.value;
    let problems_before = report.problem_count();
    let endpoint = match &uplink.endpoint {
        Some(endpoint) => {
            match check::parse_address(&endpoint.value, &["http", "https", "mqtt", "mqtts"]) {
                Ok(address) if address.scheme.starts_with("mqtt") && address.path.len() < 2 => {
                    report.error(
                    &endpoint.span,
                    format!("'endpoint' in [uplink] needs a topic for MQTT: mqtt://host:port/topic, found '{}'", endpoint.value),
                );
                    None
                }
                Ok(_) => Some(endpoint.value.clone()),
                Err(error) => {
                    report.error(
                        &endpoint.span,
                        format!("'endpoint' in [uplink] {error}, found '{}'", endpoint.value),
                    );
                    None
                }
            }
        }
        None => {
            report.error(
                &raw.span,
                "missing 'endpoint' in [uplink] (like \"https://hq.example.com/v1/batches\")",
            );
            None
        }
    };
    let token_file = uplink.token_file.as_ref().and_then(|file| {
        check::secret_file(report, base_dir, file, "'token_file' in [uplink]", true)
    });
    let batch_max_records = match &uplink.batch_max_records {
        Some(value) => match usize::try_from(value.value) {
            Ok(count) if BATCH_MAX_RECORDS_RANGE.contains(&count) => Some(count),
            _ => {
                report.error(
                    &value.span,
                    format!(
                        "'batch_max_records' in [uplink] must be from {} to {}, found {}",
                        BATCH_MAX_RECORDS_RANGE.start(),
                        BATCH_MAX_RECORDS_RANGE.end(),
                        value.value
                    ),
                );
                None
            }
        },
        None => Some(DEFAULT_BATCH_MAX_RECORDS),
    };
    let batch_max_bytes = uplink_size(
        report,
        uplink.batch_max_bytes.as_ref(),
        "batch_max_bytes",
        DEFAULT_BATCH_MAX_BYTES,
        BATCH_MAX_BYTES_RANGE,
    );
    let batch_max_age = match &uplink.batch_max_age {
        Some(value) => check::duration_in(
            report,
            value,
            "'batch_max_age' in [uplink]",
            BATCH_MAX_AGE_RANGE,
        ),
        None => Some(DEFAULT_BATCH_MAX_AGE),
    };
    let compression = match &uplink.compression {
        Some(value) => check::choice(
            report,
            value,
            "'compression' in [uplink]",
            &[
                ("none", Compression::None),
                ("gzip", Compression::Gzip),
                ("zstd", Compression::Zstd),
            ],
        ),
        None => Some(Compression::Gzip),
    };
    let max_journal_bytes = uplink_size(
        report,
        uplink.max_journal_bytes.as_ref(),
        "max_journal_bytes",
        DEFAULT_MAX_JOURNAL_BYTES,
        MAX_JOURNAL_BYTES_RANGE,
    );
    if report.problem_count() > problems_before {
        return None;
    }
    Some(UplinkSettings {
        endpoint: endpoint?,
        token_file,
        batch_max_records: batch_max_records?,
        batch_max_bytes: batch_max_bytes?,
        batch_max_age: batch_max_age?,
        compression: compression?,
        max_journal_bytes: max_journal_bytes?,
    })
}

/// A size key of `[uplink]`, within its range.
fn uplink_size(
    report: &mut Report,
    value: Option<&super::source::SizeValue>,
    key: &str,
    default: u64,
    range: RangeInclusive<u64>,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    check::size_in(report, value, &format!("'{key}' in [uplink]"), range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_addresses() {
        assert!(host_and_port("192.168.1.50:9100").is_ok());
        assert!(host_and_port("printer-1.store.lan:9100").is_ok());
        assert!(host_and_port("[fe80::1]:9100").is_ok());
        assert!(host_and_port("192.168.1.50").is_err());
        assert!(host_and_port("192.168.1.50:0").is_err());
        assert!(host_and_port(":9100").is_err());
        assert!(host_and_port("tcp://printer:9100").is_err());
        assert!(host_and_port("printer:99999").is_err());
    }

    #[test]
    fn host_name_is_readable_here() {
        assert!(host_name().is_some_and(|name| !name.is_empty()));
    }
}
