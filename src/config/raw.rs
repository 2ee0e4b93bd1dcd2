//! Stage 1 and 2 of loading: the config file as written, one field per section, and merging
//! drop-ins into it.
//!
//! Each section's table as written lives with its validation in `sections/` (`RawUplink` in
//! `sections/uplink.rs`, …); this file puts them together into [`RawConfig`], the whole file.
//! All of them mirror the TOML of docs/configuration.md one to one. Every field is optional
//! (defaults and "required" are decided in validation, where the error can say which key is
//! missing and where), every value keeps its position ([`Located`]), and unknown keys are
//! rejected. Values whose syntax we check ourselves (durations, sizes, dates, enums) are kept
//! as strings or `toml::Value` here, so that one bad value does not hide the others: serde
//! stops at its first error, validation does not.
//!
//! Merging ([`RawConfig::merge`]) applies a later file over an earlier one: tables merge key by
//! key (the later file's key wins, each section saying how in its `MergeLater`), arrays of
//! tables (`[[device]]`, `[[campaign]]`, `[[flow]]`) append, and `[answer_codes]` merges key by key.

use serde::Deserialize;

use super::sections::answer_codes::RawAnswerCodes;
use super::sections::api::RawApi;
use super::sections::campaign::RawCampaign;
use super::sections::device::RawDevice;
use super::sections::fleet::RawFleet;
use super::sections::flow::RawFlow;
use super::sections::gateway::RawGateway;
use super::sections::mqtt::RawMqtt;
use super::sections::privacy::RawPrivacy;
use super::sections::prompts::RawPrompts;
use super::sections::uplink::RawUplink;
use super::source::{append, merge_table, Located, MergeLater};

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
    pub answer_codes: Option<Located<RawAnswerCodes>>,
    /// `[uplink]`: forwarding to HQ.
    pub uplink: Option<Located<RawUplink>>,
    /// `[prompts]`: how attribution prompts behave (an extension of the contract).
    pub prompts: Option<Located<RawPrompts>>,
    /// `[[flow]]`: consultation flows.
    pub flow: Option<Vec<Located<RawFlow>>>,
    /// `[privacy]`: how customers are named.
    pub privacy: Option<Located<RawPrivacy>>,
    /// `[fleet]`: campaigns and flows from HQ, heartbeats.
    pub fleet: Option<Located<RawFleet>>,
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
        append(&mut self.flow, later.flow);
        merge_table(&mut self.privacy, later.privacy);
        merge_table(&mut self.fleet, later.fleet);
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
