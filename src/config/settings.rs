//! Stage 3's output: the whole validated configuration, [`Settings`], one field per section,
//! and its summary for `posgw check-config`.
//!
//! Each section's own settings type lives with its validation in `sections/`
//! ([`UplinkSettings`] in `sections/uplink.rs`, …); a device profile's in `profile`.
//! Everything here is already checked: ids have the right characters and are unique, durations
//! and sizes are parsed, defaults are filled in, relative paths are resolved against the main
//! config file's folder, and each device holds the [`Profile`](super::profile::Profile) it uses.
//! Code that receives a [`Settings`] never needs to re-validate it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::profile::{LineSettings, Parity, ProfileSet};
use super::sections::api::ApiSettings;
use super::sections::campaign::CampaignSettings;
use super::sections::device::DeviceSettings;
use super::sections::gateway::GatewaySettings;
use super::sections::mqtt::MqttSettings;
use super::sections::prompts::PromptSettings;
use super::sections::uplink::UplinkSettings;
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
    pub privacy: super::sections::privacy::PrivacySettings,
    /// `[fleet]`, when present: campaigns and flows from HQ, heartbeats.
    pub fleet: Option<super::sections::fleet::FleetSettings>,
    /// Every device profile known: the built-in ones and those of `drivers.d/`.
    pub profiles: ProfileSet,
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
        if let Some(fleet) = &self.fleet {
            let _ = writeln!(
                out,
                "fleet: {} every {} (campaigns and flows from HQ, heartbeats)",
                fleet.url,
                format_duration(fleet.poll)
            );
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
