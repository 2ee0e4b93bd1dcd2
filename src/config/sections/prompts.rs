//! `[prompts]`: how attribution prompts behave at the counter (skip reasons, the sale link
//! window), an extension of the contract: the table as written, how a drop-in merges over it,
//! its settings, and the validation between them.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{mergeable_table, DurationText, Located, Report};

/// `[prompts] sale_link_window`: a customer's visit, at most a day.
const SALE_LINK_WINDOW_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

mergeable_table! {
    /// `[prompts]` as written.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawPrompts {
        /// Preset reasons offered when the clerk skips a prompt.
        pub skip_reasons: Option<Located<Vec<Located<String>>>>,
        /// How long after a prompt a sale line of the same SKU at the same station is linked to it.
        pub sale_link_window: Option<DurationText>,
    }
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

/// Validates `[prompts]`; every key has a default, so a missing section is the defaults.
pub(crate) fn validate(
    report: &mut Report,
    raw: Option<&Located<RawPrompts>>,
) -> Option<PromptSettings> {
    let mut settings = PromptSettings::default();
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
