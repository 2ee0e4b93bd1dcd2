//! `[[flow]]`: the consultation flows (docs/configuration.md), each a checklist of steps with
//! the products that open it: the tables as written, and their validation into the engine's
//! [`Flow`](crate::consult::Flow) (its settings type; `consult` owns it, since the scanner
//! tasks and the core read it too). Flow ids are unique among flows and campaigns.
//!
//! `[[flow]]` tables are not merged: each drop-in's are appended (`raw`).

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use crate::config::check::{self, FirstDefined, ID_EXTRA};
use crate::config::source::{DurationText, Located, Report};
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

/// Every `[[flow]]`, with ids unique among flows and the campaigns already noted in `ids`.
pub(crate) fn validate(
    report: &mut Report,
    raw: &[Located<RawFlow>],
    mut ids: FirstDefined,
) -> Option<Vec<Flow>> {
    let mut flows = Vec::new();
    let mut ok = true;
    for entry in raw {
        let Some(flow) = flow(report, entry) else {
            ok = false;
            continue;
        };
        let span = check::key_span(&entry.value.id, &entry.span);
        if !ids.note(report, &flow.id, span, |first| {
            format!(
                "duplicate id '{}' in [[flow]] (flows and campaigns share ids; first defined \
                 at {first})",
                flow.id
            )
        }) {
            ok = false;
            continue;
        }
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
                .filter_map(|sku| super::campaign::sku_pattern(report, sku, "[[flow]]")),
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
    // Judged against the keys as written, so a mistake in a step hides no mistake here.
    let keys: Vec<&str> = raw
        .steps
        .iter()
        .flat_map(|steps| &steps.value)
        .map(|step| step.value.key.as_ref().map_or("", |key| key.value.as_str()))
        .collect();
    let hold = match &raw.hold {
        None => None,
        Some(hold) => match keys.iter().position(|key| *key == hold.value) {
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
    let mut keys = FirstDefined::default();
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
        let span = check::key_span(&raw.key, &entry.span);
        if !keys.note(report, &key, span, |first| {
            format!("duplicate step key '{key}' in [[flow]] (first at {first})")
        }) {
            ok = false;
            continue;
        }
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
