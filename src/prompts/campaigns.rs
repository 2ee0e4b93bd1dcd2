//! Which campaign a scanned code targets, and which scanned codes are answer cards.
//!
//! Pure lookups over the configuration, shared read-only by every handle, so the core can ask
//! "is this scan targeted?" without a round trip to the engine.
//!
//! **Candidate codes.** A scan yields several spellings of one product: the 14-digit `gtin`, the
//! decoded `code` (an EAN-13 as printed under the bars), the `raw` frame. Campaign `skus` are
//! written the way people read them off the package, usually EAN-13. So every code passed in is
//! tried as given and, when it is a 14-digit GTIN with leading zeros, also as its shorter GTIN
//! forms: GTIN-13 (EAN-13, one `0` dropped), GTIN-12 (UPC-A, `00` dropped) and GTIN-8 (EAN-8,
//! six `0`s dropped). A `690123456*` prefix therefore matches the GTIN `06901234567892`.
//!
//! **Overlapping campaigns.** When several campaigns running today match, the first in
//! configuration order wins (main file first, then drop-ins in file-name order); this is
//! deterministic and logged at debug level. One scan opens at most one prompt.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::NaiveDate;

use crate::config::CampaignSettings;

/// The configured campaigns and answer cards.
#[derive(Debug)]
pub(crate) struct Campaigns {
    /// `[[campaign]]` in configuration order (the order decides overlaps).
    campaigns: Vec<CampaignSettings>,
    /// `[answer_codes]`: scanned code -> option key.
    answer_codes: BTreeMap<String, String>,
}

/// The campaigns in force, shared by the prompt handle (matching, on the core's task) and the
/// engine (opening), and replaced whole when the configuration is reloaded.
#[derive(Debug, Clone)]
pub(crate) struct SharedCampaigns(Arc<RwLock<Arc<Campaigns>>>);

impl SharedCampaigns {
    pub(crate) fn new(campaigns: Campaigns) -> Self {
        SharedCampaigns(Arc::new(RwLock::new(Arc::new(campaigns))))
    }

    /// The campaigns in force now (a cheap clone; held only briefly, never across an `.await`).
    pub(crate) fn current(&self) -> Arc<Campaigns> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `campaigns` in force for every later scan and prompt.
    pub(crate) fn replace(&self, campaigns: Campaigns) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(campaigns);
    }
}

impl Campaigns {
    /// Wraps the configuration.
    pub(crate) fn new(
        campaigns: Vec<CampaignSettings>,
        answer_codes: BTreeMap<String, String>,
    ) -> Self {
        Campaigns {
            campaigns,
            answer_codes,
        }
    }

    /// The campaign with this id.
    pub(crate) fn get(&self, id: &str) -> Option<&CampaignSettings> {
        self.campaigns.iter().find(|campaign| campaign.id == id)
    }

    /// The id of the first campaign running on `today` that one of `codes` (in any of its GTIN
    /// spellings) matches.
    pub(crate) fn campaign_for(&self, codes: &[&str], today: NaiveDate) -> Option<&str> {
        // Called for every scan: nothing is allocated unless a campaign matches.
        let mut matching = self.campaigns.iter().filter(|campaign| {
            campaign.runs_on(today)
                && codes
                    .iter()
                    .any(|code| spellings(code).any(|spelling| campaign.matches(spelling)))
        });
        let first = matching.next()?;
        let others: Vec<&str> = matching.map(|campaign| campaign.id.as_str()).collect();
        if !others.is_empty() {
            tracing::debug!(
                campaign = %first.id,
                also_matching = ?others,
                codes = ?codes,
                "scan matches several campaigns; the first in configuration order wins"
            );
        }
        Some(first.id.as_str())
    }

    /// The option key of an answer card, when `code` is one.
    pub(crate) fn answer_card(&self, code: &str) -> Option<&str> {
        self.answer_codes.get(code).map(String::as_str)
    }
}

/// `code` itself, then its shorter GTIN forms when it is a 14-digit GTIN with leading zeros.
pub(crate) fn spellings(code: &str) -> impl Iterator<Item = &str> {
    let gtin = code.len() == 14 && code.bytes().all(|byte| byte.is_ascii_digit());
    // Zeros to drop: GTIN-13, GTIN-12, GTIN-8.
    let shorter = [1, 2, 6]
        .into_iter()
        .filter(move |&zeros| gtin && code.as_bytes()[..zeros].iter().all(|&byte| byte == b'0'))
        .map(move |zeros| &code[zeros..]);
    std::iter::once(code).chain(shorter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PromptOption, SkuPattern};
    use std::time::Duration;

    pub(crate) fn campaign(
        id: &str,
        skus: &[&str],
        starts: Option<NaiveDate>,
        ends: Option<NaiveDate>,
    ) -> CampaignSettings {
        CampaignSettings {
            id: id.to_owned(),
            skus: skus
                .iter()
                .map(|sku| match sku.strip_suffix('*') {
                    Some(prefix) => SkuPattern::Prefix(prefix.to_owned()),
                    None => SkuPattern::Exact((*sku).to_owned()),
                })
                .collect(),
            question: "推荐话术来源".to_owned(),
            options: vec![PromptOption {
                key: "doctor".to_owned(),
                label: "医生推荐".to_owned(),
            }],
            timeout: Duration::from_secs(120),
            starts,
            ends,
        }
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("date")
    }

    #[test]
    fn exact_and_prefix_match_any_gtin_spelling() {
        let campaigns = Campaigns::new(
            vec![
                campaign("exact", &["6901234567892"], None, None),
                campaign("prefix", &["692*"], None, None),
            ],
            BTreeMap::new(),
        );
        let today = day(2026, 11, 27);
        assert_eq!(
            campaigns.campaign_for(&["06901234567892"], today),
            Some("exact")
        );
        assert_eq!(
            campaigns.campaign_for(&["6901234567892"], today),
            Some("exact")
        );
        assert_eq!(
            campaigns.campaign_for(&["x", "06920000000001"], today),
            Some("prefix")
        );
        assert_eq!(campaigns.campaign_for(&["6931234567890"], today), None);
        assert_eq!(campaigns.campaign_for(&[], today), None);
    }

    #[test]
    fn upc_and_ean8_spellings() {
        assert_eq!(
            spellings("00012345678905").collect::<Vec<_>>(),
            vec!["00012345678905", "0012345678905", "012345678905"]
        );
        assert_eq!(
            spellings("00000096385074").collect::<Vec<_>>(),
            vec![
                "00000096385074",
                "0000096385074",
                "000096385074",
                "96385074"
            ]
        );
        assert_eq!(
            spellings("]E06901234567892").collect::<Vec<_>>(),
            ["]E06901234567892"]
        );
    }

    #[test]
    fn validity_window_is_inclusive() {
        let campaigns = Campaigns::new(
            vec![campaign(
                "q4",
                &["690*"],
                Some(day(2026, 10, 1)),
                Some(day(2026, 12, 31)),
            )],
            BTreeMap::new(),
        );
        assert_eq!(campaigns.campaign_for(&["6901"], day(2026, 9, 30)), None);
        assert_eq!(
            campaigns.campaign_for(&["6901"], day(2026, 10, 1)),
            Some("q4")
        );
        assert_eq!(
            campaigns.campaign_for(&["6901"], day(2026, 12, 31)),
            Some("q4")
        );
        assert_eq!(campaigns.campaign_for(&["6901"], day(2027, 1, 1)), None);
    }

    #[test]
    fn first_campaign_in_config_order_wins() {
        let campaigns = Campaigns::new(
            vec![
                campaign("later-window", &["690*"], Some(day(2026, 12, 1)), None),
                campaign("broad", &["69*"], None, None),
                campaign("narrow", &["6901234567892"], None, None),
            ],
            BTreeMap::new(),
        );
        assert_eq!(
            campaigns.campaign_for(&["6901234567892"], day(2026, 11, 27)),
            Some("broad")
        );
        assert_eq!(
            campaigns.campaign_for(&["6901234567892"], day(2026, 12, 2)),
            Some("later-window")
        );
    }

    #[test]
    fn answer_cards() {
        let codes = BTreeMap::from([("ATTR-DOCTOR".to_owned(), "doctor".to_owned())]);
        let campaigns = Campaigns::new(vec![], codes);
        assert_eq!(campaigns.answer_card("ATTR-DOCTOR"), Some("doctor"));
        assert_eq!(campaigns.answer_card("attr-doctor"), None);
    }
}
