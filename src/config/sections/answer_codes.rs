//! `[answer_codes]`: codes printed on answer cards at the till, each answering a prompt with an
//! option key: the table as written, how a drop-in merges over it, and its validation against
//! the campaigns (each value an option key of some campaign, no code a campaign's product).
//! The settings are a plain map, `Settings::answer_codes`.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::source::{suggest, Located, MergeLater, Report};

use super::campaign::RawCampaign;

/// `[answer_codes]` as written: scanned code -> option key.
pub(crate) type RawAnswerCodes = BTreeMap<String, Located<String>>;

/// A later file's codes are added key by key; its mapping of a code already present wins.
impl MergeLater for RawAnswerCodes {
    fn merge(&mut self, later: Self) {
        self.extend(later);
    }
}

/// Validates `[answer_codes]`: each value must be an option key of some campaign.
pub(crate) fn validate(
    report: &mut Report,
    raw: Option<&Located<RawAnswerCodes>>,
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
/// raw campaigns, like the option keys in [`validate`].
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
