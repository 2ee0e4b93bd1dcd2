//! `[[flow]]` (consultation flows) and `[privacy]`: as written, checked, and turned into the
//! engine's [`Flow`](crate::consult::Flow). Everything about these two sections is here; the
//! orchestration in `validate` only calls [`flows`] and [`privacy`].

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::check;
use super::raw::DurationText;
use super::source::{Located, Report, Span};
use crate::consult::{Auto, Flow, Step};

/// `hold_timeout` when not set.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(120);
/// `timeout` when not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `hold_timeout`: a POS cannot wait on a held scan for long; a second to ten minutes.
const HOLD_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);
/// `timeout`: a minute to a day.
const TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(24 * 3600);
/// Most steps of a flow, values of a `choose` list, skip reasons.
const MAX_ITEMS: usize = 32;
/// Longest label, value or reason, in characters.
const MAX_TEXT: usize = 64;
/// Characters allowed in flow ids and step keys besides A-Z a-z 0-9.
const ID_EXTRA: &[char] = &['-', '_', '.'];

/// One `[[flow]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFlow {
    pub id: Option<Located<String>>,
    pub name: Option<Located<String>>,
    pub skus: Option<Located<Vec<Located<String>>>>,
    pub steps: Option<Located<Vec<Located<RawStep>>>>,
    pub skip_reasons: Option<Located<Vec<Located<String>>>>,
    pub hold: Option<Located<String>>,
    pub hold_timeout: Option<DurationText>,
    pub timeout: Option<DurationText>,
}

/// One entry of a flow's `steps` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub key: Option<Located<String>>,
    pub label: Option<Located<String>>,
    pub choose: Option<Located<Vec<Located<String>>>>,
    pub multi: Option<Located<bool>>,
    pub auto: Option<Located<String>>,
}

/// `[privacy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrivacy {
    pub customer_key_file: Option<Located<String>>,
}

/// `[privacy]`: how customers are named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivacySettings {
    /// The key that turns member ids into references; without it no customer is named.
    pub customer_key_file: Option<PathBuf>,
}

/// `[privacy]`.
pub(crate) fn privacy(
    report: &mut Report,
    raw: Option<&Located<RawPrivacy>>,
    base_dir: &Path,
) -> Option<PrivacySettings> {
    let Some(file) = raw.and_then(|raw| raw.value.customer_key_file.as_ref()) else {
        return Some(PrivacySettings::default());
    };
    let path = check::secret_file(
        report,
        base_dir,
        file,
        "'customer_key_file' in [privacy]",
        true,
    )?;
    Some(PrivacySettings {
        customer_key_file: Some(path),
    })
}

/// Every `[[flow]]`, with ids unique among flows and campaigns.
pub(crate) fn flows(
    report: &mut Report,
    raw: &[Located<RawFlow>],
    campaign_ids: &BTreeMap<String, Span>,
) -> Option<Vec<Flow>> {
    let mut flows = Vec::new();
    let mut ids: BTreeMap<String, Span> = BTreeMap::new();
    let mut ok = true;
    for entry in raw {
        let Some(flow) = flow(report, entry) else {
            ok = false;
            continue;
        };
        let span = entry
            .value
            .id
            .as_ref()
            .map_or(entry.span.clone(), |id| id.span.clone());
        if let Some(first) = ids.get(&flow.id).or_else(|| campaign_ids.get(&flow.id)) {
            let first = report.describe(first);
            report.error(
                &span,
                format!(
                    "duplicate id '{}' in [[flow]] (flows and campaigns share ids; first \
                     defined at {first})",
                    flow.id
                ),
            );
            ok = false;
            continue;
        }
        ids.insert(flow.id.clone(), span);
        flows.push(flow);
    }
    ok.then_some(flows)
}

/// One `[[flow]]`.
fn flow(report: &mut Report, entry: &Located<RawFlow>) -> Option<Flow> {
    let raw = &entry.value;
    let table = &entry.span;
    let before = report.problem_count();
    let id = match &raw.id {
        Some(id) => check::identifier(report, id, "'id' in [[flow]]", ID_EXTRA),
        None => {
            report.error(table, "missing 'id' in [[flow]]");
            None
        }
    };
    let name = raw
        .name
        .as_ref()
        .and_then(|name| text(report, name, "'name' in [[flow]]"));
    let mut skus = Vec::new();
    match &raw.skus {
        Some(list) if list.value.is_empty() => {
            report.error(&list.span, "'skus' in [[flow]] must list at least one code")
        }
        Some(list) => skus.extend(
            list.value
                .iter()
                .filter_map(|sku| super::validate::sku_pattern(report, sku, "[[flow]]")),
        ),
        None => report.error(
            table,
            "missing 'skus' in [[flow]] (codes, or prefixes ending in *)",
        ),
    }
    let steps = match &raw.steps {
        Some(list) => steps(report, list),
        None => {
            report.error(
                table,
                "missing 'steps' in [[flow]] (like [{ key = \"consult\", label = \"客户问诊\" }])",
            );
            None
        }
    };
    let skip_reasons = match &raw.skip_reasons {
        Some(list) => texts(report, list, "'skip_reasons' in [[flow]]"),
        None => Some(Vec::new()),
    };
    let hold = match (&raw.hold, &steps) {
        (None, _) => None,
        (Some(hold), Some(steps)) => match steps.iter().position(|step| step.key == hold.value) {
            Some(0) => {
                report.error(
                    &hold.span,
                    format!(
                        "'hold' in [[flow]] names the first step '{}': nothing comes before it \
                         to wait for",
                        hold.value
                    ),
                );
                None
            }
            Some(index) => Some(index),
            None => {
                let keys: Vec<&str> = steps.iter().map(|step| step.key.as_str()).collect();
                report.error(
                    &hold.span,
                    format!(
                        "'hold' in [[flow]] names no step: '{}' (steps: {})",
                        hold.value,
                        keys.join(", ")
                    ),
                );
                None
            }
        },
        (Some(_), None) => None,
    };
    let hold_timeout = match &raw.hold_timeout {
        Some(value) => check::duration_in(
            report,
            value,
            "'hold_timeout' in [[flow]]",
            HOLD_TIMEOUT_RANGE,
        ),
        None => Some(DEFAULT_HOLD_TIMEOUT),
    };
    let timeout = match &raw.timeout {
        Some(value) => check::duration_in(report, value, "'timeout' in [[flow]]", TIMEOUT_RANGE),
        None => Some(DEFAULT_TIMEOUT),
    };
    if report.problem_count() > before {
        return None;
    }
    let id = id?;
    Some(Flow {
        name: name.unwrap_or_else(|| id.clone()),
        id,
        skus,
        steps: steps?,
        skip_reasons: skip_reasons?,
        hold,
        hold_timeout: hold_timeout?,
        timeout: timeout?,
    })
}

/// A flow's `steps`: at least one, keys unique.
fn steps(report: &mut Report, list: &Located<Vec<Located<RawStep>>>) -> Option<Vec<Step>> {
    if list.value.is_empty() || list.value.len() > MAX_ITEMS {
        report.error(
            &list.span,
            format!("'steps' in [[flow]] must list 1 to {MAX_ITEMS} steps"),
        );
        return None;
    }
    let mut keys: BTreeMap<String, Span> = BTreeMap::new();
    let mut steps = Vec::new();
    let mut ok = true;
    for entry in &list.value {
        let raw = &entry.value;
        let key = match &raw.key {
            Some(key) => check::identifier(report, key, "'key' of a step in [[flow]]", ID_EXTRA),
            None => {
                report.error(&entry.span, "a step in [[flow]] is missing 'key'");
                None
            }
        };
        let label = match &raw.label {
            Some(label) => text(report, label, "'label' of a step in [[flow]]"),
            None => {
                report.error(&entry.span, "a step in [[flow]] is missing 'label'");
                None
            }
        };
        let choose = match &raw.choose {
            Some(list) if list.value.is_empty() => {
                report.error(
                    &list.span,
                    "'choose' of a step in [[flow]] must offer at least one value",
                );
                None
            }
            Some(list) => texts(report, list, "'choose' of a step in [[flow]]"),
            None => Some(Vec::new()),
        };
        let multi = raw.multi.as_ref().is_some_and(|multi| multi.value);
        if let (Some(multi), None) = (&raw.multi, &raw.choose) {
            if multi.value {
                report.error(
                    &multi.span,
                    "'multi' of a step in [[flow]] needs a 'choose' list",
                );
                ok = false;
            }
        }
        let auto = match &raw.auto {
            None => Some(None),
            Some(auto) => check::choice(
                report,
                auto,
                "'auto' of a step in [[flow]]",
                &[("scan", Some(Auto::Scan)), ("sale", Some(Auto::Sale))],
            ),
        };
        if let (Some(auto), Some(choose)) = (&raw.auto, &choose) {
            if auto.value == "sale" && choose.len() < 2 {
                report.error(
                    &auto.span,
                    "a step with auto = \"sale\" needs a 'choose' list whose first two values \
                     mean approved and declined",
                );
                ok = false;
            }
        }
        let (Some(key), Some(label), Some(choose), Some(auto)) = (key, label, choose, auto) else {
            ok = false;
            continue;
        };
        let span = raw
            .key
            .as_ref()
            .map_or(entry.span.clone(), |key| key.span.clone());
        if let Some(first) = keys.get(&key) {
            let first = report.describe(first);
            report.error(
                &span,
                format!("duplicate step key '{key}' in [[flow]] (first at {first})"),
            );
            ok = false;
            continue;
        }
        keys.insert(key.clone(), span);
        steps.push(Step {
            key,
            label,
            choose,
            multi,
            auto,
        });
    }
    ok.then_some(steps)
}

/// A non-empty text of at most [`MAX_TEXT`] characters.
fn text(report: &mut Report, value: &Located<String>, what: &str) -> Option<String> {
    let text = check::non_empty(report, value, what)?;
    if text.chars().count() > MAX_TEXT {
        report.error(
            &value.span,
            format!("{what} is longer than {MAX_TEXT} characters"),
        );
        return None;
    }
    Some(text)
}

/// A list of at most [`MAX_ITEMS`] distinct texts.
fn texts(
    report: &mut Report,
    list: &Located<Vec<Located<String>>>,
    what: &str,
) -> Option<Vec<String>> {
    if list.value.len() > MAX_ITEMS {
        report.error(
            &list.span,
            format!("{what} lists more than {MAX_ITEMS} values"),
        );
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for value in &list.value {
        match text(report, value, what) {
            Some(text) if out.contains(&text) => {
                report.error(&value.span, format!("{what} lists '{text}' twice"));
                ok = false;
            }
            Some(text) => out.push(text),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
