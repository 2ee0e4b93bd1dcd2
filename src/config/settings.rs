//! Stage 3's output: the typed, validated settings the rest of posgw runs on.
//!
//! Everything here is already checked: ids have the right characters and are unique, durations
//! and sizes are parsed, defaults are filled in, relative paths are resolved against the main
//! config file's folder, and each device holds the [`Profile`] it uses. Code that receives a
//! [`Settings`] never needs to re-validate it.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::device::{Role, Transport};
use super::profile::{LineSettings, Parity, Profile, ProfileSet};
use super::units::{format_duration, format_size};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The main config file, as given.
    pub path: PathBuf,
    /// The main file and every drop-in actually applied, in the order applied.
    pub files: Vec<PathBuf>,
    /// `[gateway]`.
    pub gateway: GatewaySettings,
    /// `[api]`.
    pub api: ApiSettings,
    /// `[prompts]` (an extension of the contract).
    pub prompts: PromptSettings,
    /// `[[device]]`, in file order (main file first, then drop-ins).
    pub devices: Vec<DeviceSettings>,
    /// `[mqtt]`, when present.
    pub mqtt: Option<MqttSettings>,
    /// `[[campaign]]`, in file order.
    pub campaigns: Vec<CampaignSettings>,
    /// `[answer_codes]`: scanned code -> option key (every key is an option of some campaign).
    pub answer_codes: BTreeMap<String, String>,
    /// `[uplink]`, when present; without it records stay in the journal.
    pub uplink: Option<UplinkSettings>,
    /// `[[flow]]`, in file order.
    pub flows: Vec<crate::consult::Flow>,
    /// `[privacy]`.
    pub privacy: super::flow::PrivacySettings,
    /// Every device profile known: the built-in ones and those of `drivers.d/`.
    pub profiles: ProfileSet,
}

/// `[gateway]`: who this gateway is and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Store code, `[A-Za-z0-9_-]{1,64}`; required.
    pub store: String,
    /// Gateway id, `[A-Za-z0-9_.-]{1,64}`; default: the host name.
    pub id: String,
    /// Journal and state folder; default `/var/lib/posgw`; relative paths resolve against the config file's folder.
    pub data_dir: PathBuf,
    /// Longest time an accepted record may wait for fsync; default 50ms; zero = fsync each record.
    pub flush: Duration,
}

/// `[prompts]`: how attribution prompts behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSettings {
    /// Preset reasons offered when the clerk skips a prompt (free text is always possible).
    /// Default: 顾客赶时间 (customer in a hurry), 顾客不愿回答 (declined), 其他 (other).
    pub skip_reasons: Vec<String>,
    /// How long after its prompt a sale line of the same SKU at the same station is linked to
    /// it; default 10m.
    pub sale_link_window: Duration,
}

impl Default for PromptSettings {
    fn default() -> Self {
        PromptSettings {
            skip_reasons: ["顾客赶时间", "顾客不愿回答", "其他"]
                .map(String::from)
                .to_vec(),
            sale_link_window: Duration::from_secs(600),
        }
    }
}

/// `[api]`: the local HTTP API and clerk page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Address to bind; default `127.0.0.1:7380`.
    pub listen: SocketAddr,
    /// Extra host names the API answers to (lowercase), for the `Host` check.
    pub hosts: Vec<String>,
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

/// `[mqtt]`: the store's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// User name, when the broker wants one.
    pub username: Option<String>,
    /// File holding the password (read at connect time, never logged).
    pub password_file: Option<PathBuf>,
    /// Largest message on a device topic that is read whole (its topic and payload, in bytes);
    /// a larger one is recorded by its size as a `bad_frame` and acknowledged. Default 1 MiB,
    /// from 1 KiB to 16 MiB.
    pub max_message: usize,
}

/// One `[[campaign]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignSettings {
    /// Unique campaign id, `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// The products that open a prompt when scanned; never empty.
    pub skus: Vec<SkuPattern>,
    /// The question shown to the clerk; never blank.
    pub question: String,
    /// The answers offered, keys unique; never empty.
    pub options: Vec<PromptOption>,
    /// How long a prompt stays open before its outcome is `timeout`; default 120s; never zero.
    pub timeout: Duration,
    /// First day the campaign runs (store-local, inclusive), if limited.
    pub starts: Option<chrono::NaiveDate>,
    /// Last day the campaign runs (store-local, inclusive), if limited; never before `starts`.
    pub ends: Option<chrono::NaiveDate>,
}

impl CampaignSettings {
    /// Whether a scanned code is one of this campaign's products.
    pub fn matches(&self, code: &str) -> bool {
        self.skus.iter().any(|sku| sku.matches(code))
    }

    /// Whether the campaign runs on a given store-local day.
    pub fn runs_on(&self, day: chrono::NaiveDate) -> bool {
        self.starts.is_none_or(|starts| starts <= day) && self.ends.is_none_or(|ends| day <= ends)
    }
}

/// One entry of a campaign's `skus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuPattern {
    /// The code must equal this.
    Exact(String),
    /// The code must start with this (written with a trailing `*`, stored without it).
    Prefix(String),
}

impl SkuPattern {
    /// Whether a code matches this pattern.
    pub fn matches(&self, code: &str) -> bool {
        match self {
            SkuPattern::Exact(sku) => code == sku,
            SkuPattern::Prefix(prefix) => code.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for SkuPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkuPattern::Exact(sku) => f.write_str(sku),
            SkuPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One answer a prompt offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptOption {
    /// Machine key (`doctor`), `[A-Za-z0-9_.-]{1,64}`.
    pub key: String,
    /// What the clerk sees (`医生推荐`); never blank.
    pub label: String,
}

/// How batches are compressed on the way to HQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Sent as is.
    None,
    /// `Content-Encoding: gzip`.
    Gzip,
    /// `Content-Encoding: zstd`.
    Zstd,
}

impl Compression {
    /// The config spelling: `none`, `gzip` or `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// `[uplink]`: forwarding to HQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// `http(s)://host[:port]/path` or `mqtt(s)://host[:port]/topic`.
    pub endpoint: String,
    /// File holding the bearer token, when HQ wants one.
    pub token_file: Option<PathBuf>,
    /// Most records per batch; default 1000; at least 1.
    pub batch_max_records: usize,
    /// Most bytes per (uncompressed) batch; default 1MiB; at least 1.
    pub batch_max_bytes: u64,
    /// Longest a record waits for its batch to fill; default 1s.
    pub batch_max_age: Duration,
    /// Body compression; default gzip.
    pub compression: Compression,
    /// Journal size beyond which the oldest sent-or-not records are evicted; default 2GiB.
    pub max_journal_bytes: u64,
}

impl Settings {
    /// A short human summary, printed by `posgw check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so the fmt::Results below are ignored on purpose.
        let _ = writeln!(out, "config: {}", self.path.display());
        for file in self.files.iter().skip(1) {
            let _ = writeln!(out, "  drop-in: {}", file.display());
        }
        let gateway = &self.gateway;
        let _ = writeln!(out, "store: {}  gateway: {}", gateway.store, gateway.id);
        let _ = writeln!(
            out,
            "data_dir: {}  flush: {}",
            gateway.data_dir.display(),
            format_duration(gateway.flush)
        );
        let _ = writeln!(out, "api listen: {}", self.api.listen);
        if !self.api.hosts.is_empty() {
            let _ = writeln!(out, "api hosts: {}", self.api.hosts.join(", "));
        }
        let _ = writeln!(out, "devices: {}", self.devices.len());
        for device in &self.devices {
            let mut line = format!("  {} {} {}", device.id, device.role, device.transport);
            if let Some(serial) = &device.serial {
                let _ = write!(
                    line,
                    " {} {}",
                    serial.path.display(),
                    describe_line(&serial.line)
                );
            }
            if let Some(topic) = &device.topic {
                let _ = write!(line, " topic {topic}");
            }
            if let Some(tcp) = &device.tcp {
                let _ = write!(
                    line,
                    " listen {} printer {} (at most {} connections)",
                    tcp.listen, tcp.printer_addr, tcp.max_connections
                );
            }
            let _ = write!(
                line,
                " profile {} station {}",
                device.profile.name, device.station
            );
            if let Some(passthrough) = device
                .serial
                .as_ref()
                .and_then(|serial| serial.passthrough.as_ref())
            {
                let _ = write!(line, " passthrough {}", passthrough.display());
            }
            let _ = writeln!(out, "{line}");
        }
        match &self.mqtt {
            Some(mqtt) => {
                let _ = writeln!(out, "mqtt: {}", mqtt.url);
            }
            None => {
                let _ = writeln!(out, "mqtt: none");
            }
        }
        let _ = writeln!(out, "campaigns: {}", self.campaigns.len());
        for campaign in &self.campaigns {
            let window = match (campaign.starts, campaign.ends) {
                (None, None) => "always".to_string(),
                (starts, ends) => format!(
                    "{} to {}",
                    starts.map_or("any time".to_string(), |day| day.to_string()),
                    ends.map_or("open-ended".to_string(), |day| day.to_string())
                ),
            };
            let _ = writeln!(
                out,
                "  {} {} skus, {} options, timeout {}, {window}",
                campaign.id,
                campaign.skus.len(),
                campaign.options.len(),
                format_duration(campaign.timeout)
            );
        }
        let _ = writeln!(out, "answer codes: {}", self.answer_codes.len());
        match &self.uplink {
            Some(uplink) => {
                let _ = writeln!(
                    out,
                    "uplink: {} ({}, batches of {} records / {} / {}, journal cap {})",
                    uplink.endpoint,
                    uplink.compression.as_str(),
                    uplink.batch_max_records,
                    format_size(uplink.batch_max_bytes),
                    format_duration(uplink.batch_max_age),
                    format_size(uplink.max_journal_bytes)
                );
            }
            None => {
                let _ = writeln!(out, "uplink: none (records stay in the journal)");
            }
        }
        let _ = writeln!(out, "profiles:");
        for profile in self.profiles.iter() {
            let _ = writeln!(out, "  {} ({})", profile.name, profile.source);
        }
        out
    }
}

/// "9600 8N1" style line description.
fn describe_line(line: &LineSettings) -> String {
    let parity = match line.parity {
        Parity::None => 'N',
        Parity::Odd => 'O',
        Parity::Even => 'E',
    };
    format!(
        "{} {}{}{}",
        line.baud, line.data_bits, parity, line.stop_bits
    )
}
