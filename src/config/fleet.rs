//! HQ's part of a store's configuration (docs/hq-protocol.md, "Fleet"): the campaigns, flows,
//! answer codes and skip reasons HQ serves a store ([`FleetDocument`]), in the gateway's own
//! keys, and how they join the local configuration.
//!
//! **One validator.** HQ sends JSON; each entry is rendered as the TOML a person would have
//! written (a `[[campaign]]` table with the same keys, [`entry_toml`]) and registered with the
//! loading [`Report`] as a file of its own, named after the entry (`HQ config v7, campaign
//! 'xinsong-2026q4'`), then parsed and validated by the code that reads `posgw.toml`: unknown
//! keys, types, ranges, ids unique among campaigns and flows, answer codes against products.
//! HQ (`hq::fleet`) runs its editor's JSON through the same rendering and the same section
//! validators, so nothing is checked twice in two different ways.
//!
//! **Joining** ([`overlay`], called by `load::load_with_fleet` between merging the drop-ins and
//! validating): local and HQ ids share one namespace. An HQ campaign or flow whose id a local
//! campaign or flow already has is left out and reported as a clash (the local one stays); the
//! others are appended after the local ones (so on a product both target, the local campaign
//! wins, as the first in the file does). HQ's answer codes are added where the local file does
//! not map the code (a different local mapping is a clash); HQ's skip reasons apply unless
//! `[prompts] skip_reasons` is set locally. What is left is validated as one configuration: a
//! conflict that is not an id (an HQ answer code that is a local product, say) refuses the
//! whole document, like a reload that does not load.
//!
//! **Serving** ([`campaign_json`], [`flow_json`]): validated settings back in the gateway's
//! keys, which is what HQ stores and serves, so what a gateway receives was validated by the
//! same code at HQ and reads back to the same settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::raw::RawConfig;
use super::sections::campaign::CampaignSettings;
use super::sections::prompts::RawPrompts;
use super::source::{Located, Report};
use super::units::format_duration;
use crate::consult::{Auto, Flow};

/// What HQ serves a store: `GET /v1/fleet/{store}/config`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetDocument {
    /// HQ's configuration version this body was last changed at (for this store).
    pub version: u64,
    /// `[[campaign]]` tables as JSON objects, in the gateway's keys.
    #[serde(default)]
    pub campaigns: Vec<Value>,
    /// `[[flow]]` tables as JSON objects, in the gateway's keys.
    #[serde(default)]
    pub flows: Vec<Value>,
    /// `[answer_codes]`: code -> option key.
    #[serde(default)]
    pub answer_codes: BTreeMap<String, String>,
    /// `[prompts] skip_reasons`; empty: the store's own (or the defaults).
    #[serde(default)]
    pub skip_reasons: Vec<String>,
}

impl FleetDocument {
    /// Whether two documents configure the same thing (whatever their versions).
    pub fn same_content(&self, other: &FleetDocument) -> bool {
        self.campaigns == other.campaigns
            && self.flows == other.flows
            && self.answer_codes == other.answer_codes
            && self.skip_reasons == other.skip_reasons
    }
}

/// What joining a [`FleetDocument`] to the local configuration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetApplied {
    /// The document's version.
    pub version: u64,
    /// Ids of HQ's campaigns in force (those not clashing with a local id).
    pub campaigns: Vec<String>,
    /// Ids of HQ's flows in force.
    pub flows: Vec<String>,
    /// What was left out because the local file has it: one sentence each.
    pub clashes: Vec<String>,
}

/// The name an HQ entry's problems are reported under.
pub(crate) fn entry_label(version: u64, section: &str, index: usize, entry: &Value) -> String {
    match entry.get("id").and_then(Value::as_str) {
        Some(id) => format!("HQ config v{version}, {section} '{id}'"),
        None => format!("HQ config v{version}, {section} #{}", index + 1),
    }
}

/// Joins HQ's document to the local configuration `local` (see the module doc); problems with
/// HQ's entries as written (not an object, unknown keys, wrong types) are recorded in `report`
/// under each entry's name. Validation proper comes after, over the joined configuration.
pub(crate) fn overlay(
    report: &mut Report,
    local: &mut RawConfig,
    document: &FleetDocument,
) -> FleetApplied {
    let version = document.version;
    let mut applied = FleetApplied {
        version,
        ..FleetApplied::default()
    };
    // Every id of the local file, campaign or flow, with what it is.
    let mut local_ids: BTreeMap<String, &'static str> = BTreeMap::new();
    for campaign in local.campaign.iter().flatten() {
        if let Some(id) = &campaign.value.id {
            local_ids.insert(id.value.clone(), "campaign");
        }
    }
    for flow in local.flow.iter().flatten() {
        if let Some(id) = &flow.value.id {
            local_ids.entry(id.value.clone()).or_insert("flow");
        }
    }
    for (section, entries) in [("campaign", &document.campaigns), ("flow", &document.flows)] {
        for (index, entry) in entries.iter().enumerate() {
            let label = entry_label(version, section, index, entry);
            let Some(mut parsed) = parse_entry::<RawConfig>(report, &label, section, entry) else {
                continue;
            };
            let id = entry.get("id").and_then(Value::as_str).unwrap_or_default();
            if let Some(kind) = local_ids.get(id) {
                applied.clashes.push(format!(
                    "{section} '{id}' from HQ has the id of a {kind} in the local configuration; \
                     the local {kind} stays"
                ));
                continue;
            }
            if section == "campaign" {
                let tables = parsed.campaign.take().unwrap_or_default();
                local.campaign.get_or_insert_with(Vec::new).extend(tables);
                applied.campaigns.push(id.to_string());
            } else {
                let tables = parsed.flow.take().unwrap_or_default();
                local.flow.get_or_insert_with(Vec::new).extend(tables);
                applied.flows.push(id.to_string());
            }
        }
    }
    if document.answer_codes.is_empty() && document.skip_reasons.is_empty() {
        return applied;
    }
    let label = format!("HQ config v{version}, answer codes and skip reasons");
    let text = match shared_toml(&document.answer_codes, &document.skip_reasons) {
        Ok(text) => text,
        Err(problem) => {
            report.problem_in(Path::new(&label), problem);
            return applied;
        }
    };
    let file = report.add_file(label.into(), text);
    let Some(parsed) = report.parse::<RawConfig>(file) else {
        return applied;
    };
    if let Some(codes) = parsed.answer_codes {
        let local_codes = local.answer_codes.get_or_insert_with(|| Located {
            value: BTreeMap::new(),
            span: codes.span.clone(),
        });
        for (code, option) in codes.value {
            match local_codes.value.get(&code) {
                Some(mine) if mine.value != option.value => applied.clashes.push(format!(
                    "answer code '{code}' from HQ (-> '{}') is mapped to '{}' in the local \
                     configuration; the local one stays",
                    option.value, mine.value
                )),
                Some(_) => {}
                None => {
                    local_codes.value.insert(code, option);
                }
            }
        }
    }
    if let Some(prompts) = parsed.prompts {
        let local_prompts = local.prompts.get_or_insert_with(|| Located {
            value: RawPrompts::default(),
            span: prompts.span.clone(),
        });
        if local_prompts.value.skip_reasons.is_none() {
            local_prompts.value.skip_reasons = prompts.value.skip_reasons;
        }
    }
    applied
}

/// Renders `entry` as one `[[section]]` table, registers it with `report` as a file named
/// `label` and parses it into `T`; `None` (with the problem recorded) when it is not a JSON
/// object or does not parse (unknown keys, wrong types).
pub(crate) fn parse_entry<T>(
    report: &mut Report,
    label: &str,
    section: &str,
    entry: &Value,
) -> Option<T>
where
    T: for<'de> Deserialize<'de>,
{
    match entry_toml(section, entry) {
        Ok(text) => {
            let file = report.add_file(label.into(), text);
            report.parse::<T>(file)
        }
        Err(problem) => {
            report.problem_in(Path::new(label), problem);
            None
        }
    }
}

/// A JSON object as a `[[section]]` table of TOML: one `key = value` line per key (JSON `null`
/// is an absent key), values inline. An error says why it cannot be TOML.
pub(crate) fn entry_toml(section: &str, entry: &Value) -> Result<String, String> {
    let Value::Object(fields) = entry else {
        return Err(format!(
            "a {section} must be a JSON object, found {}",
            json_kind(entry)
        ));
    };
    let mut text = format!("[[{section}]]\n");
    append_keys(&mut text, fields)?;
    Ok(text)
}

/// `[answer_codes]` and `[prompts] skip_reasons` as TOML.
pub(crate) fn shared_toml(
    codes: &BTreeMap<String, String>,
    reasons: &[String],
) -> Result<String, String> {
    let mut text = String::new();
    if !codes.is_empty() {
        text.push_str("[answer_codes]\n");
        let fields: Map<String, Value> = codes
            .iter()
            .map(|(code, option)| (code.clone(), Value::String(option.clone())))
            .collect();
        append_keys(&mut text, &fields)?;
    }
    if !reasons.is_empty() {
        text.push_str("[prompts]\n");
        let fields: Map<String, Value> = [("skip_reasons".to_string(), json!(reasons))]
            .into_iter()
            .collect();
        append_keys(&mut text, &fields)?;
    }
    Ok(text)
}

/// `key = value` lines of an object's fields, skipping nulls.
fn append_keys(text: &mut String, fields: &Map<String, Value>) -> Result<(), String> {
    for (key, value) in fields {
        if value.is_null() {
            continue;
        }
        let value = toml_value(value).map_err(|problem| format!("'{key}' {problem}"))?;
        text.push_str(&toml_key(key));
        text.push_str(" = ");
        text.push_str(&value.to_string());
        text.push('\n');
    }
    Ok(())
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

/// A JSON value as a TOML value (objects inline, nulls in objects left out).
fn toml_value(value: &Value) -> Result<toml::Value, String> {
    Ok(match value {
        Value::Null => return Err("holds null where a value is needed".to_string()),
        Value::Bool(flag) => toml::Value::Boolean(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => toml::Value::Integer(integer),
            None => toml::Value::Float(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => toml::Value::String(text.clone()),
        Value::Array(items) => {
            toml::Value::Array(items.iter().map(toml_value).collect::<Result<_, _>>()?)
        }
        Value::Object(fields) => toml::Value::Table(
            fields
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| Ok((key.clone(), toml_value(value)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// "a string", "an array", … for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A validated campaign in the gateway's keys (`starts` and `ends` only when set).
pub fn campaign_json(campaign: &CampaignSettings) -> Value {
    let mut out = json!({
        "id": campaign.id,
        "skus": campaign.skus.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "question": campaign.question,
        "options": campaign.options.iter()
            .map(|option| json!({"key": option.key, "label": option.label}))
            .collect::<Vec<_>>(),
        "timeout": format_duration(campaign.timeout),
    });
    if let Some(starts) = campaign.starts {
        out["starts"] = starts.to_string().into();
    }
    if let Some(ends) = campaign.ends {
        out["ends"] = ends.to_string().into();
    }
    out
}

/// A validated flow in the gateway's keys (`choose`, `multi`, `auto` and `hold` only when set).
pub fn flow_json(flow: &Flow) -> Value {
    let steps: Vec<Value> = flow
        .steps
        .iter()
        .map(|step| {
            let mut out = json!({"key": step.key, "label": step.label});
            if !step.choose.is_empty() {
                out["choose"] = json!(step.choose);
            }
            if step.multi {
                out["multi"] = true.into();
            }
            match step.auto {
                Some(Auto::Scan) => out["auto"] = "scan".into(),
                Some(Auto::Sale) => out["auto"] = "sale".into(),
                None => {}
            }
            out
        })
        .collect();
    let mut out = json!({
        "id": flow.id,
        "name": flow.name,
        "skus": flow.skus.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "steps": steps,
        "skip_reasons": flow.skip_reasons,
        "hold_timeout": format_duration(flow.hold_timeout),
        "timeout": format_duration(flow.timeout),
    });
    if let Some(hold) = flow.hold.and_then(|index| flow.steps.get(index)) {
        out["hold"] = hold.key.clone().into();
    }
    out
}

/// The option keys a set of campaigns (as JSON in the gateway's keys) offers.
pub fn option_keys<'a>(campaigns: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    campaigns
        .into_iter()
        .filter_map(|campaign| campaign.get("options")?.as_array())
        .flatten()
        .filter_map(|option| option.get("key")?.as_str())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, load_with_fleet, ConfigError, Loaded};

    const CAMPAIGN: &str = r#"
[[campaign]]
id = "xinsong-2026q4"
skus = ["6901234567892", "690123456*"]
question = "推荐话术来源"
options = [ { key = "doctor", label = "医生推荐" }, { key = "poster", label = "海报引导" } ]
timeout = "90s"
starts = 2026-10-01
ends = "2026-12-31"

[[flow]]
id = "rx-5step"
name = "处方推荐五步法"
skus = ["69012345*"]
steps = [ { key = "consult", label = "客户问诊" },
          { key = "symptoms", label = "症状记录", choose = ["高血压", "心悸"], multi = true },
          { key = "recommend", label = "药品推荐", auto = "scan" },
          { key = "insurance", label = "医保核验", choose = ["通过", "未通过"], auto = "sale" } ]
skip_reasons = ["客户明确拒绝"]
hold = "recommend"
hold_timeout = "45s"

[answer_codes]
"ATTR-DOCTOR" = "doctor"
"#;

    /// A config folder whose posgw.toml is a store with `extra` appended.
    fn folder(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("posgw.toml");
        let text = format!(
            "[gateway]\nstore = \"S1\"\nid = \"gw\"\ndata_dir = \"{}\"\n{extra}",
            dir.path().join("data").display()
        );
        std::fs::write(&path, text).expect("write config");
        (dir, path)
    }

    /// HQ's document for the campaign and flow above, as HQ would serve it.
    fn document(version: u64) -> FleetDocument {
        let (_dir, path) = folder(CAMPAIGN);
        let settings = load(&path).expect("loads");
        FleetDocument {
            version,
            campaigns: settings.campaigns.iter().map(campaign_json).collect(),
            flows: settings.flows.iter().map(flow_json).collect(),
            answer_codes: settings.answer_codes.clone(),
            skip_reasons: vec!["赶时间".into()],
        }
    }

    fn errors(result: Result<Loaded, ConfigError>) -> Vec<String> {
        let error = result.expect_err("refused");
        error
            .diagnostics()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn served_entries_read_back_to_the_same_settings() {
        let (_dir, path) = folder(CAMPAIGN);
        let local = load(&path).expect("loads");
        let (_empty_dir, empty) = folder("");
        let loaded = load_with_fleet(&empty, Some(&document(4))).expect("joins");
        assert_eq!(loaded.settings.campaigns, local.campaigns);
        assert_eq!(loaded.settings.flows, local.flows);
        assert_eq!(loaded.settings.answer_codes, local.answer_codes);
        assert_eq!(loaded.settings.prompts.skip_reasons, ["赶时间"]);
        let applied = loaded.fleet.expect("applied");
        assert_eq!(applied.version, 4);
        assert_eq!(applied.campaigns, ["xinsong-2026q4"]);
        assert_eq!(applied.flows, ["rx-5step"]);
        assert!(applied.clashes.is_empty());
    }

    #[test]
    fn a_local_id_wins_and_the_clash_is_reported() {
        let local = r#"
[[campaign]]
id = "rx-5step"
skus = ["111"]
question = "q"
options = [ { key = "a", label = "A" } ]
[answer_codes]
"ATTR-DOCTOR" = "a"
[prompts]
skip_reasons = ["本店"]
"#;
        let (_dir, path) = folder(local);
        let loaded = load_with_fleet(&path, Some(&document(2))).expect("joins");
        let ids: Vec<&str> = loaded
            .settings
            .campaigns
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["rx-5step", "xinsong-2026q4"], "local first");
        assert!(loaded.settings.flows.is_empty(), "HQ's flow left out");
        assert_eq!(loaded.settings.answer_codes["ATTR-DOCTOR"], "a");
        assert_eq!(loaded.settings.prompts.skip_reasons, ["本店"]);
        let clashes = loaded.fleet.expect("applied").clashes;
        assert_eq!(clashes.len(), 2, "{clashes:?}");
        assert!(clashes[0].starts_with("flow 'rx-5step' from HQ has the id of a campaign"));
        assert!(clashes[1].starts_with("answer code 'ATTR-DOCTOR' from HQ"));
    }

    #[test]
    fn a_bad_entry_is_refused_under_its_name() {
        let (_dir, path) = folder("");
        let mut bad = document(3);
        bad.campaigns[0]["timeout"] = "forever".into();
        bad.campaigns[0]["colour"] = "red".into();
        bad.flows.push(json!(["not", "an", "object"]));
        let lines = errors(load_with_fleet(&path, Some(&bad)));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("HQ config v3, campaign 'xinsong-2026q4':")
                && lines[0].contains("unknown key 'colour' in [[campaign]]"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "HQ config v3, flow #2: a flow must be a JSON object, found an array"
        );
        // Once it parses, the values are validated like the local file's.
        bad.campaigns[0]
            .as_object_mut()
            .expect("object")
            .remove("colour");
        bad.flows.pop();
        let lines = errors(load_with_fleet(&path, Some(&bad)));
        assert!(
            lines.iter().any(
                |line| line.starts_with("HQ config v3, campaign 'xinsong-2026q4':")
                    && line.contains("'timeout' in [[campaign]]")
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn a_conflict_with_the_local_file_refuses_the_whole_document() {
        // HQ's campaign product is a local answer card: a scan could not be both.
        let (_dir, path) = folder("[answer_codes]\n\"6901234567892\" = \"doctor\"\n");
        let lines = errors(load_with_fleet(&path, Some(&document(5))));
        assert!(
            lines.iter().any(|line| line.contains(
                "answer code '6901234567892' is also a product of campaign 'xinsong-2026q4'"
            )),
            "{lines:?}"
        );
    }

    #[test]
    fn entries_render_as_tables_of_inline_values() {
        let entry = json!({
            "id": "x", "skus": ["690*"], "question": "问 \"why\"",
            "options": [{"key": "doctor", "label": "医生推荐", "note": null}],
            "timeout": "2m", "ends": null, "weird key": 1.5
        });
        let text = entry_toml("campaign", &entry).expect("renders");
        let parsed: toml::Value = toml::from_str(&text).expect("valid TOML");
        let table = &parsed["campaign"][0];
        assert_eq!(table["question"].as_str(), Some("问 \"why\""));
        assert_eq!(table["options"][0]["label"].as_str(), Some("医生推荐"));
        assert!(table["options"][0].get("note").is_none());
        assert!(table.get("ends").is_none());
        assert_eq!(table["weird key"].as_float(), Some(1.5));
        assert!(entry_toml("campaign", &json!("x")).is_err());
        assert!(entry_toml("campaign", &json!({"skus": [null]})).is_err());
    }
}
