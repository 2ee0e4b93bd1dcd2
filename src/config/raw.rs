//! Stage 1 and 2 of loading: the config file as written, and merging drop-ins into it.
//!
//! These structs mirror the TOML of docs/configuration.md one to one. Every field is optional
//! (defaults and "required" are decided in validation, where the error can say which key is
//! missing and where), every value keeps its position ([`Located`]), and unknown keys are
//! rejected. Values whose syntax we check ourselves (durations, sizes, dates, enums) are kept
//! as strings or `toml::Value` here, so that one bad value does not hide the others: serde
//! stops at its first error, validation does not.
//!
//! Merging ([`RawConfig::merge`]) applies a later file over an earlier one: tables merge key by
//! key (the later file's key wins), arrays of tables (`[[device]]`, `[[campaign]]`) append, and
//! `[answer_codes]` merges key by key.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::source::{append, merge_table, overlay, DurationText, Located, MergeLater, SizeValue};

/// A whole config file: the main file or one drop-in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `[gateway]`: who this gateway is and where it keeps its journal.
    pub gateway: Option<Located<RawGateway>>,
    /// `[api]`: the local HTTP API.
    pub api: Option<Located<RawApi>>,
    /// `[[device]]`: scanners and registers.
    pub device: Option<Vec<Located<RawDevice>>>,
    /// `[mqtt]`: the store's broker.
    pub mqtt: Option<Located<RawMqtt>>,
    /// `[[campaign]]`: attribution campaigns.
    pub campaign: Option<Vec<Located<RawCampaign>>>,
    /// `[answer_codes]`: scanned code -> option key.
    pub answer_codes: Option<Located<BTreeMap<String, Located<String>>>>,
    /// `[uplink]`: forwarding to HQ.
    pub uplink: Option<Located<RawUplink>>,
    /// `[prompts]`: how attribution prompts behave (an extension of the contract).
    pub prompts: Option<Located<RawPrompts>>,
}

/// `[prompts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrompts {
    /// Preset reasons offered when the clerk skips a prompt.
    pub skip_reasons: Option<Located<Vec<Located<String>>>>,
    /// How long after a prompt a sale line of the same SKU at the same station is linked to it.
    pub sale_link_window: Option<DurationText>,
}

/// `[gateway]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    /// Store code; required.
    pub store: Option<Located<String>>,
    /// Gateway id; default: the host name.
    pub id: Option<Located<String>>,
    /// Journal and state folder; default `/var/lib/posgw`.
    pub data_dir: Option<Located<String>>,
    /// Longest wait for fsync; default `"50ms"`.
    pub flush: Option<DurationText>,
}

/// `[api]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    /// Address to bind; default `127.0.0.1:7380`.
    pub listen: Option<Located<String>>,
    /// Host names the API answers to besides IP addresses, localhost and the machine's name.
    pub hosts: Option<Located<Vec<Located<String>>>>,
}

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

/// `[mqtt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    /// Broker URL; required when the section is present.
    pub url: Option<Located<String>>,
    /// Broker user name.
    pub username: Option<Located<String>>,
    /// File holding the broker password.
    pub password_file: Option<Located<String>>,
    /// Largest device message read whole (a size).
    pub max_message: Option<SizeValue>,
}

/// One `[[campaign]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCampaign {
    /// Unique campaign id; required.
    pub id: Option<Located<String>>,
    /// Exact codes or prefixes ending in `*`; required, non-empty.
    pub skus: Option<Located<Vec<Located<String>>>>,
    /// The question shown to the clerk; required.
    pub question: Option<Located<String>>,
    /// The answers offered; required, non-empty.
    pub options: Option<Located<Vec<Located<RawOption>>>>,
    /// How long a prompt stays open; default `"120s"`.
    pub timeout: Option<DurationText>,
    /// First valid day (a `"YYYY-MM-DD"` string or a TOML date).
    pub starts: Option<Located<toml::Value>>,
    /// Last valid day (a `"YYYY-MM-DD"` string or a TOML date).
    pub ends: Option<Located<toml::Value>>,
}

/// One entry of a campaign's `options` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOption {
    /// Machine key of the answer (`doctor`).
    pub key: Option<Located<String>>,
    /// What the clerk sees (`医生推荐`).
    pub label: Option<Located<String>>,
}

/// `[uplink]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUplink {
    /// HQ endpoint; required when the section is present.
    pub endpoint: Option<Located<String>>,
    /// File holding the bearer token.
    pub token_file: Option<Located<String>>,
    /// Most records per batch; default 1000.
    pub batch_max_records: Option<Located<i64>>,
    /// Most bytes per batch; default `"1MiB"`.
    pub batch_max_bytes: Option<SizeValue>,
    /// Longest a record waits for its batch; default `"1s"`.
    pub batch_max_age: Option<DurationText>,
    /// `none`, `gzip` or `zstd`; default `gzip`.
    pub compression: Option<Located<String>>,
    /// Journal size cap; default `"2GiB"`.
    pub max_journal_bytes: Option<SizeValue>,
}

impl MergeLater for RawConfig {
    /// Applies a later file (a drop-in) over this one.
    fn merge(&mut self, later: RawConfig) {
        merge_table(&mut self.gateway, later.gateway);
        merge_table(&mut self.api, later.api);
        merge_table(&mut self.prompts, later.prompts);
        append(&mut self.device, later.device);
        merge_table(&mut self.mqtt, later.mqtt);
        append(&mut self.campaign, later.campaign);
        merge_table(&mut self.answer_codes, later.answer_codes);
        merge_table(&mut self.uplink, later.uplink);
    }
}

impl MergeLater for RawGateway {
    fn merge(&mut self, later: Self) {
        overlay(&mut self.store, later.store);
        overlay(&mut self.id, later.id);
        overlay(&mut self.data_dir, later.data_dir);
        overlay(&mut self.flush, later.flush);
    }
}

impl MergeLater for RawApi {
    fn merge(&mut self, later: Self) {
        overlay(&mut self.listen, later.listen);
        overlay(&mut self.hosts, later.hosts);
    }
}

impl MergeLater for RawPrompts {
    fn merge(&mut self, later: Self) {
        overlay(&mut self.skip_reasons, later.skip_reasons);
        overlay(&mut self.sale_link_window, later.sale_link_window);
    }
}

impl MergeLater for RawMqtt {
    fn merge(&mut self, later: Self) {
        overlay(&mut self.url, later.url);
        overlay(&mut self.username, later.username);
        overlay(&mut self.password_file, later.password_file);
        overlay(&mut self.max_message, later.max_message);
    }
}

/// `[answer_codes]`: key by key.
impl MergeLater for BTreeMap<String, Located<String>> {
    fn merge(&mut self, later: Self) {
        self.extend(later);
    }
}

impl MergeLater for RawUplink {
    fn merge(&mut self, later: Self) {
        overlay(&mut self.endpoint, later.endpoint);
        overlay(&mut self.token_file, later.token_file);
        overlay(&mut self.batch_max_records, later.batch_max_records);
        overlay(&mut self.batch_max_bytes, later.batch_max_bytes);
        overlay(&mut self.batch_max_age, later.batch_max_age);
        overlay(&mut self.compression, later.compression);
        overlay(&mut self.max_journal_bytes, later.max_journal_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::source::Report;
    use std::path::PathBuf;

    fn parse(report: &mut Report, name: &str, text: &str) -> RawConfig {
        let file = report.add_file(PathBuf::from(name), text.to_string());
        report.parse(file).expect("parses")
    }

    #[test]
    fn later_keys_win_tables_merge_and_arrays_append() {
        let mut report = Report::default();
        let mut config = parse(
            &mut report,
            "main.toml",
            "[gateway]\nstore = \"S1\"\nflush = \"50ms\"\n[[device]]\nid = \"a\"\n[answer_codes]\nX = \"doctor\"\nY = \"poster\"\n",
        );
        let later = parse(
            &mut report,
            "10.toml",
            "[gateway]\nflush = \"0s\"\n[[device]]\nid = \"b\"\n[answer_codes]\nY = \"referral\"\n",
        );
        config.merge(later);
        let gateway = config.gateway.expect("gateway").value;
        assert_eq!(
            gateway.store.expect("store").value,
            "S1",
            "untouched key survives"
        );
        let flush = gateway.flush.expect("flush");
        assert_eq!(flush.value.as_str(), Some("0s"), "later key wins");
        assert_eq!(flush.span.file, 1, "merged value keeps its own file");
        let ids: Vec<String> = config
            .device
            .expect("devices")
            .into_iter()
            .map(|device| device.value.id.expect("id").value)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let codes = config.answer_codes.expect("codes").value;
        assert_eq!(codes["X"].value, "doctor");
        assert_eq!(codes["Y"].value, "referral");
    }
}
