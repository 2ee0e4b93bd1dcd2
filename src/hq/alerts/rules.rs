//! `[[alert]]`: the rules as written, their validation, and [`AlertRule`], what evaluation
//! reads. A rule names one metric of the daily figures, a threshold (`below` or `above`), how
//! many consecutive store-local days must breach it, the fewest cases a day needs to count,
//! and which regions it watches.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use crate::config::check;
use crate::config::source::{Located, Report, Span};

use super::super::config::RegionSettings;

/// Characters besides ASCII letters and digits allowed in a rule id (it appears in URLs).
const RULE_EXTRA: &[char] = &['-', '_', '.'];
/// Most consecutive days a rule may ask for.
const MAX_DAYS: u64 = 90;
/// Most days of cases a message may list.
const MAX_ATTACH_DAYS: u64 = 31;
/// `attach_days` when not set.
const DEFAULT_ATTACH_DAYS: u64 = 3;

/// One `[[alert]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlert {
    /// Rule id; required.
    id: Option<Located<String>>,
    /// A name for messages and the dashboard; the id when not set.
    name: Option<Located<String>>,
    /// One of [`METRICS`]; required.
    metric: Option<Located<String>>,
    /// The flow of `step_completeness` / `step_rate`.
    flow: Option<Located<String>>,
    /// The step of `step_completeness` / `step_rate`.
    step: Option<Located<String>>,
    /// The step value whose share `step_rate` measures.
    value: Option<Located<String>>,
    /// The campaign of `campaign_completeness` (required) or `prompt_timeout_rate` (optional).
    campaign: Option<Located<String>>,
    /// Breach when the day's value is below this.
    below: Option<Located<f64>>,
    /// Breach when the day's value is above this.
    above: Option<Located<f64>>,
    /// Consecutive breaching days; default 1.
    days: Option<Located<i64>>,
    /// Fewest cases for a day to count; default 1.
    min_count: Option<Located<i64>>,
    /// Regions watched; default every store.
    regions: Option<Located<Vec<Located<String>>>>,
    /// Days of failing cases the message lists; default 3.
    attach_days: Option<Located<i64>>,
}

/// What a rule measures, per store and store-local day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Metric {
    /// Share of a flow's consultations whose step was done.
    StepCompleteness { flow: String, step: String },
    /// Share of a flow's consultations whose step holds `value`.
    StepRate {
        flow: String,
        step: String,
        value: String,
    },
    /// Share of a campaign's prompts answered.
    CampaignCompleteness { campaign: String },
    /// Share of prompts (of one campaign, or all) that timed out.
    PromptTimeoutRate { campaign: Option<String> },
    /// Hours of the day in which HQ heard nothing from the store.
    GatewayOfflineHours,
    /// The largest delay, in minutes, between a record's `ts` and its arrival at HQ.
    BacklogAgeMinutes,
}

impl Metric {
    /// The name written in `metric`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Metric::StepCompleteness { .. } => "step_completeness",
            Metric::StepRate { .. } => "step_rate",
            Metric::CampaignCompleteness { .. } => "campaign_completeness",
            Metric::PromptTimeoutRate { .. } => "prompt_timeout_rate",
            Metric::GatewayOfflineHours => "gateway_offline_hours",
            Metric::BacklogAgeMinutes => "backlog_age_minutes",
        }
    }

    /// Whether the metric is a share (shown as a percentage) rather than a quantity.
    pub(crate) fn is_rate(&self) -> bool {
        !matches!(
            self,
            Metric::GatewayOfflineHours | Metric::BacklogAgeMinutes
        )
    }
}

/// The metric names `metric` accepts.
const METRICS: &[&str] = &[
    "step_completeness",
    "step_rate",
    "campaign_completeness",
    "prompt_timeout_rate",
    "gateway_offline_hours",
    "backlog_age_minutes",
];

/// When a day breaches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Threshold {
    /// The value is below this.
    Below(f64),
    /// The value is above this.
    Above(f64),
}

impl Threshold {
    /// Whether `value` breaches.
    pub(crate) fn breached(self, value: f64) -> bool {
        match self {
            Threshold::Below(limit) => value < limit,
            Threshold::Above(limit) => value > limit,
        }
    }
}

/// A validated `[[alert]]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AlertRule {
    /// Its id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// What it measures.
    pub metric: Metric,
    /// When a day breaches.
    pub threshold: Threshold,
    /// Consecutive breaching days that open an alert.
    pub days: u64,
    /// Fewest cases for a day to count either way.
    pub min_count: u64,
    /// Regions watched; `None` every store.
    pub regions: Option<HashSet<String>>,
    /// Days of failing cases a message lists.
    pub attach_days: u64,
}

/// Checks every `[[alert]]`: ids unique, the metric known with the keys it needs (and none it
/// does not), one threshold, sane counts, known regions. Every problem is reported.
pub(crate) fn validate_alerts(
    report: &mut Report,
    raw: Vec<Located<RawAlert>>,
    regions: &[RegionSettings],
) -> Vec<AlertRule> {
    let known_regions: HashSet<&str> = regions.iter().map(|region| region.id.as_str()).collect();
    let mut ids = check::FirstDefined::default();
    let mut rules = Vec::new();
    for alert in raw {
        let table = alert.span.clone();
        let alert = alert.value;
        let id = match &alert.id {
            Some(id) => {
                check::identifier(report, id, "'id' in [[alert]]", RULE_EXTRA).filter(|text| {
                    ids.note(report, text, id.span.clone(), |first| {
                        format!("alert rule '{text}' is configured twice (first at {first})")
                    })
                })
            }
            None => {
                report.error(
                    &table,
                    "missing 'id' in [[alert]] (like \"insurance-pass-low\")",
                );
                None
            }
        };
        let label = id.clone().unwrap_or_else(|| "?".to_string());
        let metric = validate_metric(report, &alert, &table, &label);
        let threshold = match (&alert.below, &alert.above) {
            (Some(below), None) => finite(report, below, &label, "below").map(Threshold::Below),
            (None, Some(above)) => finite(report, above, &label, "above").map(Threshold::Above),
            (Some(_), Some(above)) => {
                report.error(
                    &above.span,
                    format!("alert rule '{label}' has both 'below' and 'above'; give one"),
                );
                None
            }
            (None, None) => {
                report.error(
                    &table,
                    format!(
                        "alert rule '{label}' has no threshold: give 'below = 0.65' or 'above = …'"
                    ),
                );
                None
            }
        };
        if let (Some(metric), Some(threshold)) = (&metric, threshold) {
            let limit = match threshold {
                Threshold::Below(limit) | Threshold::Above(limit) => limit,
            };
            if metric.is_rate() && !(0.0..=1.0).contains(&limit) {
                let span = check::key_span(
                    if alert.below.is_some() {
                        &alert.below
                    } else {
                        &alert.above
                    },
                    &table,
                );
                report.error(
                    &span,
                    format!(
                        "the threshold of alert rule '{label}' must be a share from 0 to 1 for \
                         {} (0.65 is 65%), found {limit}",
                        metric.name()
                    ),
                );
            } else if limit < 0.0 {
                report.error(
                    &table,
                    format!("the threshold of alert rule '{label}' must not be negative"),
                );
            }
        }
        if let (Some(Metric::GatewayOfflineHours), Some(min_count)) = (&metric, &alert.min_count) {
            if min_count.value > 1 {
                report.error(
                    &min_count.span,
                    format!(
                        "'min_count' of alert rule '{label}' must be 1 or less for \
                         gateway_offline_hours: each day is one case (its hours), so a larger \
                         count would keep the rule from ever firing"
                    ),
                );
            }
        }
        let days = count(report, &alert.days, &label, "days", 1, 1..=MAX_DAYS);
        let min_count = count(
            report,
            &alert.min_count,
            &label,
            "min_count",
            1,
            0..=1_000_000,
        );
        let attach_days = count(
            report,
            &alert.attach_days,
            &label,
            "attach_days",
            DEFAULT_ATTACH_DAYS,
            0..=MAX_ATTACH_DAYS,
        );
        let watched = alert.regions.as_ref().map(|list| {
            let mut set = HashSet::new();
            for region in &list.value {
                if known_regions.contains(region.value.as_str()) {
                    set.insert(region.value.clone());
                } else {
                    report.error(
                        &region.span,
                        format!(
                            "region '{}' of alert rule '{label}' is not a configured [[region]]",
                            region.value
                        ),
                    );
                }
            }
            set
        });
        let name = alert
            .name
            .map(|name| name.value)
            .filter(|name| !name.trim().is_empty());
        if let (
            Some(id),
            Some(metric),
            Some(threshold),
            Some(days),
            Some(min_count),
            Some(attach),
        ) = (id, metric, threshold, days, min_count, attach_days)
        {
            rules.push(AlertRule {
                name: name.unwrap_or_else(|| id.clone()),
                id,
                metric,
                threshold,
                days,
                min_count,
                regions: watched,
                attach_days: attach,
            });
        }
    }
    rules
}

/// The metric and the keys it needs: `flow` and `step` for the step metrics, `value` for
/// `step_rate`, `campaign` for `campaign_completeness` (optional for `prompt_timeout_rate`),
/// none of them otherwise.
fn validate_metric(
    report: &mut Report,
    alert: &RawAlert,
    table: &Span,
    label: &str,
) -> Option<Metric> {
    let Some(metric) = &alert.metric else {
        report.error(
            table,
            format!(
                "missing 'metric' in [[alert]] '{label}' (one of {})",
                METRICS.join(", ")
            ),
        );
        return None;
    };
    let choices: Vec<(&str, &str)> = METRICS.iter().map(|name| (*name, *name)).collect();
    let name = check::choice(
        report,
        metric,
        &format!("'metric' of alert rule '{label}'"),
        &choices,
    )?;
    let keys: BTreeMap<&str, &Option<Located<String>>> = [
        ("flow", &alert.flow),
        ("step", &alert.step),
        ("value", &alert.value),
        ("campaign", &alert.campaign),
    ]
    .into_iter()
    .collect();
    let (needed, optional): (&[&str], &[&str]) = match name {
        "step_completeness" => (&["flow", "step"], &[]),
        "step_rate" => (&["flow", "step", "value"], &[]),
        "campaign_completeness" => (&["campaign"], &[]),
        "prompt_timeout_rate" => (&[], &["campaign"]),
        _ => (&[], &[]),
    };
    let mut complete = true;
    for (key, value) in &keys {
        let text = value.as_ref().map(|value| value.value.trim());
        if needed.contains(key) {
            if text.is_none_or(str::is_empty) {
                complete = false;
                report.error(
                    &check::key_span(value, table),
                    format!("alert rule '{label}' ({name}) needs '{key}'"),
                );
            }
        } else if !optional.contains(key) {
            if let Some(value) = value {
                complete = false;
                report.error(
                    &value.span,
                    format!("'{key}' means nothing for alert rule '{label}' ({name})"),
                );
            }
        }
    }
    if !complete {
        return None;
    }
    let text = |key: &str| -> String {
        keys[key]
            .as_ref()
            .map(|value| value.value.trim().to_string())
            .unwrap_or_default()
    };
    Some(match name {
        "step_completeness" => Metric::StepCompleteness {
            flow: text("flow"),
            step: text("step"),
        },
        "step_rate" => Metric::StepRate {
            flow: text("flow"),
            step: text("step"),
            value: text("value"),
        },
        "campaign_completeness" => Metric::CampaignCompleteness {
            campaign: text("campaign"),
        },
        "prompt_timeout_rate" => Metric::PromptTimeoutRate {
            campaign: alert.campaign.as_ref().map(|c| c.value.trim().to_string()),
        },
        "gateway_offline_hours" => Metric::GatewayOfflineHours,
        _ => Metric::BacklogAgeMinutes,
    })
}

/// A threshold that is a number, not NaN or infinite.
fn finite(report: &mut Report, value: &Located<f64>, label: &str, key: &str) -> Option<f64> {
    if value.value.is_finite() {
        Some(value.value)
    } else {
        report.error(
            &value.span,
            format!("'{key}' of alert rule '{label}' must be a number"),
        );
        None
    }
}

/// An optional whole number in `range`, `default` when not set.
fn count(
    report: &mut Report,
    value: &Option<Located<i64>>,
    label: &str,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    match u64::try_from(value.value) {
        Ok(number) if range.contains(&number) => Some(number),
        _ => {
            report.error(
                &value.span,
                format!(
                    "'{key}' of alert rule '{label}' must be from {} to {}, found {}",
                    range.start(),
                    range.end(),
                    value.value
                ),
            );
            None
        }
    }
}
