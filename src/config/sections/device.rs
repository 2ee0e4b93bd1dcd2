//! `[[device]]`: the scanners and registers, each on a serial port, an MQTT topic or a network
//! printer tap: the table as written, its settings (with the [`Profile`] each device uses), and
//! the validation between them, including the rules across devices (unique ids, one device per
//! serial port, topic and listen address) and between a device and its profile.
//!
//! `[[device]]` tables are not merged: each drop-in's are appended (`raw`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::check::{self, FirstDefined, ID_EXTRA};
use crate::config::device_kind::{Role, Transport};
use crate::config::profile::{LineSettings, Profile, ProfileSet};
use crate::config::source::{suggest, Located, Report, Span};

/// `[[device]] station` when not set.
const DEFAULT_STATION: &str = "main";
/// `[[device]] max_connections` (a network printer tap) when not set: a register's print job
/// and a status poll on a second connection, with room to spare.
const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// The most `max_connections` may be: a tap serves one register.
const MAX_MAX_CONNECTIONS: i64 = 64;

/// One `[[device]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    /// Unique device id; required.
    pub id: Option<Located<String>>,
    /// `scanner` or `register`; required.
    pub role: Option<Located<String>>,
    /// `serial` or `mqtt`; required.
    pub transport: Option<Located<String>>,
    /// Station (counter) name; default `main`.
    pub station: Option<Located<String>>,
    /// Device profile name; required.
    pub profile: Option<Located<String>>,
    /// Serial device path (serial only).
    pub path: Option<Located<String>>,
    /// Baud rate override (serial only).
    pub baud: Option<Located<i64>>,
    /// Path to re-emit every byte on (serial only).
    pub passthrough: Option<Located<String>>,
    /// MQTT topic (mqtt only).
    pub topic: Option<Located<String>>,
    /// Address the network printer tap listens on for the register (tcp only).
    pub listen: Option<Located<String>>,
    /// The network printer's `host:port` (tcp only).
    pub printer_addr: Option<Located<String>>,
    /// Most register connections the tap serves at once (tcp only).
    pub max_connections: Option<Located<i64>>,
}

/// One `[[device]]`.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Unique device id, `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// Scanner or register.
    pub role: Role,
    /// Serial or MQTT.
    pub transport: Transport,
    /// The counter (and clerk screen) it belongs to, `[A-Za-z0-9_.-]{1,64}`; default `main`.
    pub station: String,
    /// The device profile; it supports this device's role and transport.
    pub profile: Arc<Profile>,
    /// Port settings; `Some` exactly when `transport` is serial.
    pub serial: Option<SerialSettings>,
    /// The MQTT topic; `Some` exactly when `transport` is mqtt.
    pub topic: Option<String>,
    /// The network printer tap; `Some` exactly when `transport` is tcp.
    pub tcp: Option<TcpTapSettings>,
}

/// A network printer tap: where the register connects, and the printer it is forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTapSettings {
    /// Address to listen on for the register (`0.0.0.0:9100`).
    pub listen: SocketAddr,
    /// The printer, `host:port` (`192.168.1.50:9100`); resolved at each connection.
    pub printer_addr: String,
    /// Most register connections served at once; more are refused (and counted). Default 4.
    pub max_connections: usize,
}

/// How to open a serial device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// The device path (`/dev/ttyACM0`); relative paths resolve against the config file's folder.
    pub path: PathBuf,
    /// Line settings: the profile's, with the device's `baud` override applied.
    pub line: LineSettings,
    /// Where to re-emit every byte unchanged, when set.
    pub passthrough: Option<PathBuf>,
}

/// Validates every `[[device]]`, with cross-device checks (unique ids, one reader per serial port).
pub(crate) fn validate(
    report: &mut Report,
    raw: &[Located<RawDevice>],
    profiles: &ProfileSet,
    have_mqtt: bool,
    base_dir: &Path,
) -> Option<Vec<DeviceSettings>> {
    let mut devices = Vec::new();
    let mut ok = true;
    let mut ids = FirstDefined::default();
    let mut serial_paths: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut topics: BTreeMap<String, String> = BTreeMap::new();
    let mut listens: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for entry in raw {
        let Some(device) = device(report, entry, profiles, have_mqtt, base_dir) else {
            ok = false;
            continue;
        };
        let id_span = check::key_span(&entry.value.id, &entry.span);
        if !ids.note(report, &device.id, id_span, |first| {
            format!(
                "duplicate device id '{}' (first defined at {first})",
                device.id
            )
        }) {
            ok = false;
            continue;
        }
        if let Some(serial) = &device.serial {
            if let Some(other) = serial_paths.get(&serial.path) {
                let span = check::key_span(&entry.value.path, &entry.span);
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
                let span = check::key_span(&entry.value.topic, &entry.span);
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
                let span = check::key_span(&entry.value.listen, &entry.span);
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

/// Records an error when a key that does not apply to this device was set.
fn forbid<T>(report: &mut Report, value: &Option<Located<T>>, key: &str, why: &str) {
    if let Some(value) = value {
        report.error(&value.span, format!("'{key}' in [[device]] {why}"));
    }
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
}
