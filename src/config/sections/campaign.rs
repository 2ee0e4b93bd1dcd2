//! `[[campaign]]`: the attribution questions, each with the products that open it and the
//! answers it offers: the tables as written, their settings, and the validation between them,
//! including unique campaign ids and option keys.
//!
//! `[[campaign]]` tables are not merged: each drop-in's are appended (`raw`).

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::config::check::{self, FirstDefined, ID_EXTRA};
use crate::config::source::{DurationText, Located, Report};

/// `[[campaign]] timeout` when not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// `[[campaign]] timeout`: a prompt waits for the clerk at least a second, at most a day.
const TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

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

/// Validates every `[[campaign]]`, with unique ids.
pub(crate) fn validate(
    report: &mut Report,
    raw: &[Located<RawCampaign>],
) -> Option<Vec<CampaignSettings>> {
    let mut campaigns = Vec::new();
    let mut ok = true;
    let mut ids = FirstDefined::default();
    for entry in raw {
        let Some(campaign) = campaign(report, entry) else {
            ok = false;
            continue;
        };
        let id_span = check::key_span(&entry.value.id, &entry.span);
        if !ids.note(report, &campaign.id, id_span, |first| {
            format!(
                "duplicate campaign id '{}' (first defined at {first})",
                campaign.id
            )
        }) {
            ok = false;
            continue;
        }
        campaigns.push(campaign);
    }
    ok.then_some(campaigns)
}

/// The campaigns' ids as written, where each was first defined: flows share their ids.
pub(crate) fn ids(raw: &[Located<RawCampaign>]) -> FirstDefined {
    let mut ids = FirstDefined::default();
    for entry in raw {
        if let Some(id) = &entry.value.id {
            ids.insert_first(&id.value, id.span.clone());
        }
    }
    ids
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
        Some(list) => skus.extend(
            list.value
                .iter()
                .filter_map(|sku| sku_pattern(report, sku, "[[campaign]]")),
        ),
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
            let mut keys = FirstDefined::default();
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
                let key_span = check::key_span(&option.value.key, &option.span);
                if !keys.note(report, &key, key_span, |first| {
                    format!("duplicate option key '{key}' in [[campaign]] (first at {first})")
                }) {
                    continue;
                }
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
pub(crate) fn sku_pattern(
    report: &mut Report,
    value: &Located<String>,
    section: &str,
) -> Option<SkuPattern> {
    let text = value.value.trim();
    let problem = if text.is_empty() {
        Some(format!("an entry of 'skus' in {section} must not be empty"))
    } else if text == "*" {
        Some(format!(
            "an entry of 'skus' in {section} needs at least one character before '*'"
        ))
    } else if text.trim_end_matches('*').contains('*') || text.ends_with("**") {
        Some(format!(
            "an entry of 'skus' in {section} may only end in '*' (a prefix), found '{text}'"
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
