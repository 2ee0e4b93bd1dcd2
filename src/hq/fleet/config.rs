//! The chain's configuration as `hq.toml` writes it, and its validation: `[[campaign]]`,
//! `[[flow]]`, `[answer_codes]` and `[prompts] skip_reasons` with the gateway's keys (its raw
//! types, `crate::config::sections`), each campaign and flow with an optional `stores = [...]`
//! / `regions = [...]` ([`Targeted`]). Everything a gateway would check is checked by the
//! gateway's own section validators; this file adds only the targeting (a store or region that
//! is not configured is an error; neither key: every store).
//!
//! The editor's JSON goes through the same validators ([`validate_json`]): each entry is
//! rendered as a TOML table (`config::fleet::entry_toml`) and parsed as if `hq.toml` held it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::fleet::{parse_entry, shared_toml};
use crate::config::sections::answer_codes::{self, RawAnswerCodes};
use crate::config::sections::campaign::{self, RawCampaign};
use crate::config::sections::flow::{self, RawFlow};
use crate::config::sections::prompts::{self, RawPrompts};
use crate::config::source::{Located, Report, Span};
use crate::config::{campaign_json, flow_json, Diagnostic};
use crate::hq::config::RegionSettings;

/// `[[campaign]]` tables of `hq.toml`, each with its targeting.
pub(crate) type RawCampaigns = Vec<Located<Targeted<RawCampaign>>>;
/// `[[flow]]` tables of `hq.toml`, each with its targeting.
pub(crate) type RawFlows = Vec<Located<Targeted<RawFlow>>>;
/// `[answer_codes]` of `hq.toml` (the gateway's type).
pub(crate) type RawCodes = Located<RawAnswerCodes>;
/// `[prompts]` of `hq.toml` (the gateway's type; only `skip_reasons` is allowed here).
pub(crate) type RawSkipReasons = Located<RawPrompts>;

/// The chain's configuration of one `hq.toml` (and its drop-ins), as written.
#[derive(Debug, Default)]
pub(crate) struct RawChain {
    /// `[[campaign]]`.
    pub campaign: Option<RawCampaigns>,
    /// `[[flow]]`.
    pub flow: Option<RawFlows>,
    /// `[answer_codes]`.
    pub answer_codes: Option<RawCodes>,
    /// `[prompts]`.
    pub prompts: Option<RawSkipReasons>,
}

/// A gateway table (`T`) with the stores and regions it is for. Deserialised from one table:
/// `stores` and `regions` are taken out, every other key goes to `T`, which rejects the keys
/// it does not know as it does in `posgw.toml`.
#[derive(Debug)]
pub(crate) struct Targeted<T> {
    /// The table in the gateway's keys.
    pub entry: T,
    /// `stores = [...]`: store codes.
    pub stores: Option<Located<Vec<Located<String>>>>,
    /// `regions = [...]`: region ids.
    pub regions: Option<Located<Vec<Located<String>>>>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Targeted<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TargetedVisitor(PhantomData))
    }
}

/// Reads a table, splitting off `stores` and `regions`.
struct TargetedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TargetedVisitor<T> {
    type Value = Targeted<T>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Targeted<T>, A::Error> {
        let mut stores = None;
        let mut regions = None;
        let entry = T::deserialize(MapAccessDeserializer::new(WithoutTargets {
            map,
            stores: &mut stores,
            regions: &mut regions,
        }))?;
        Ok(Targeted {
            entry,
            stores,
            regions,
        })
    }
}

/// A table's keys without `stores` and `regions`, whose values it keeps aside.
struct WithoutTargets<'a, A> {
    /// The whole table.
    map: A,
    /// Where `stores` goes.
    stores: &'a mut Option<Located<Vec<Located<String>>>>,
    /// Where `regions` goes.
    regions: &'a mut Option<Located<Vec<Located<String>>>>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutTargets<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            match key.as_str() {
                "stores" => *self.stores = Some(self.map.next_value()?),
                "regions" => *self.regions = Some(self.map.next_value()?),
                _ => return seed.deserialize(key.into_deserializer()).map(Some),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// Which stores an entry is for: both lists empty means every store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Store codes.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Region ids: every store of each.
    #[serde(default)]
    pub regions: Vec<String>,
}

impl Targets {
    /// Whether `store` (in `region`, if any) gets the entry.
    pub fn includes(&self, store: &str, region: Option<&str>) -> bool {
        (self.stores.is_empty() && self.regions.is_empty())
            || self.stores.iter().any(|code| code == store)
            || region.is_some_and(|region| self.regions.iter().any(|id| id == region))
    }
}

/// One campaign or flow of the chain, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetEntry {
    /// Its id (shared by campaigns and flows).
    pub id: String,
    /// The table in the gateway's keys, rendered from its validated settings.
    pub entry: Value,
    /// Who gets it.
    pub targets: Targets,
}

impl FleetEntry {
    /// The entry with `stores` and `regions` (when set), as the editor API shows it.
    pub fn with_targets(&self) -> Value {
        let mut out = self.entry.clone();
        if !self.targets.stores.is_empty() {
            out["stores"] = self.targets.stores.clone().into();
        }
        if !self.targets.regions.is_empty() {
            out["regions"] = self.targets.regions.clone().into();
        }
        out
    }
}

/// The chain's campaigns, flows, answer codes and skip reasons, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSettings {
    /// In order: `hq.toml`'s first (file order).
    pub campaigns: Vec<FleetEntry>,
    /// In order.
    pub flows: Vec<FleetEntry>,
    /// `[answer_codes]`.
    pub answer_codes: BTreeMap<String, String>,
    /// `[prompts] skip_reasons`; empty: each store's own.
    pub skip_reasons: Vec<String>,
}

impl FleetSettings {
    /// Whether there is nothing for any store.
    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
            && self.flows.is_empty()
            && self.answer_codes.is_empty()
            && self.skip_reasons.is_empty()
    }
}

/// The stores and regions targeting may name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    /// Configured store codes.
    pub stores: BTreeSet<String>,
    /// Configured region ids.
    pub regions: BTreeSet<String>,
}

impl Known {
    /// The stores and regions of a configuration.
    pub fn new<'a>(
        stores: impl IntoIterator<Item = &'a String>,
        regions: &[RegionSettings],
    ) -> Known {
        Known {
            stores: stores.into_iter().cloned().collect(),
            regions: regions.iter().map(|region| region.id.clone()).collect(),
        }
    }
}

/// Validates `hq.toml`'s chain configuration (called once by `hq::config`'s validation, with
/// the configured stores and regions); problems are recorded at their keys.
pub(crate) fn validate(
    report: &mut Report,
    raw: RawChain,
    stores: &HashMap<String, Span>,
    regions: &[RegionSettings],
) -> Option<FleetSettings> {
    validate_raw(report, raw, &Known::new(stores.keys(), regions))
}

/// Validates a chain configuration as written, with the gateway's section validators.
fn validate_raw(report: &mut Report, raw: RawChain, known: &Known) -> Option<FleetSettings> {
    let before = report.problem_count();
    let (campaigns, campaign_targets): (Vec<_>, Vec<_>) = raw
        .campaign
        .unwrap_or_default()
        .into_iter()
        .map(|table| split(report, table, "[[campaign]]", known))
        .unzip();
    let (flows, flow_targets): (Vec<_>, Vec<_>) = raw
        .flow
        .unwrap_or_default()
        .into_iter()
        .map(|table| split(report, table, "[[flow]]", known))
        .unzip();
    let campaign_settings = campaign::validate(report, &campaigns);
    let flow_settings = flow::validate(report, &flows, campaign::ids(&campaigns));
    let codes = answer_codes::validate(report, raw.answer_codes.as_ref(), &campaigns);
    let skip_reasons = match &raw.prompts {
        None => Some(Vec::new()),
        Some(section) => {
            if let Some(window) = &section.value.sale_link_window {
                report.error(
                    &window.span,
                    "'sale_link_window' in [prompts] is a store's setting: set it in the \
                     store's posgw.toml (hq.toml's [prompts] holds only skip_reasons)",
                );
            }
            let listed = section.value.skip_reasons.is_some();
            prompts::validate(report, Some(section)).map(|settings| {
                if listed {
                    settings.skip_reasons
                } else {
                    Vec::new()
                }
            })
        }
    };
    if report.problem_count() > before {
        return None;
    }
    let targets = |targets: Vec<Option<Targets>>| targets.into_iter().collect::<Option<Vec<_>>>();
    Some(FleetSettings {
        campaigns: campaign_settings?
            .iter()
            .zip(targets(campaign_targets)?)
            .map(|(settings, targets)| FleetEntry {
                id: settings.id.clone(),
                entry: campaign_json(settings),
                targets,
            })
            .collect(),
        flows: flow_settings?
            .iter()
            .zip(targets(flow_targets)?)
            .map(|(settings, targets)| FleetEntry {
                id: settings.id.clone(),
                entry: flow_json(settings),
                targets,
            })
            .collect(),
        answer_codes: codes?,
        skip_reasons: skip_reasons?,
    })
}

/// A targeted table into the gateway's table and its checked targets.
fn split<T>(
    report: &mut Report,
    table: Located<Targeted<T>>,
    section: &str,
    known: &Known,
) -> (Located<T>, Option<Targets>) {
    let Located { value, span } = table;
    let stores = targets(report, value.stores, section, "stores", &known.stores);
    let regions = targets(report, value.regions, section, "regions", &known.regions);
    let targets = match (stores, regions) {
        (Some(stores), Some(regions)) => Some(Targets { stores, regions }),
        _ => None,
    };
    (
        Located {
            value: value.entry,
            span,
        },
        targets,
    )
}

/// One targeting list: not empty (leave it out for every store), each name configured.
fn targets(
    report: &mut Report,
    list: Option<Located<Vec<Located<String>>>>,
    section: &str,
    key: &str,
    known: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let Some(list) = list else {
        return Some(Vec::new());
    };
    if list.value.is_empty() {
        report.error(
            &list.span,
            format!(
                "'{key}' in {section} lists nothing; leave it out to send the entry to every store"
            ),
        );
        return None;
    }
    let what = if key == "stores" {
        "a [[store]]"
    } else {
        "a [[region]]"
    };
    let mut names: Vec<String> = Vec::new();
    let mut ok = true;
    for name in list.value {
        if !known.contains(&name.value) {
            report.error(
                &name.span,
                format!(
                    "'{}' in '{key}' of {section} is not {what} of hq.toml",
                    name.value
                ),
            );
            ok = false;
        } else if !names.contains(&name.value) {
            names.push(name.value);
        }
    }
    ok.then_some(names)
}

/// A chain configuration as JSON: campaigns and flows in the gateway's keys plus `stores` and
/// `regions`, each under the name its problems are reported with.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonChain {
    /// (name, campaign).
    pub campaigns: Vec<(String, Value)>,
    /// (name, flow).
    pub flows: Vec<(String, Value)>,
    /// `[answer_codes]`.
    pub answer_codes: BTreeMap<String, String>,
    /// `[prompts] skip_reasons`.
    pub skip_reasons: Vec<String>,
}

/// One rendered entry, parsed as `hq.toml` would be.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    /// The entry, when it is a campaign.
    campaign: Option<RawCampaigns>,
    /// The entry, when it is a flow.
    flow: Option<RawFlows>,
}

/// What the answer codes and skip reasons render to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedFile {
    /// `[answer_codes]`.
    answer_codes: Option<RawCodes>,
    /// `[prompts]`.
    prompts: Option<RawSkipReasons>,
}

/// Validates a chain configuration given as JSON (the editor's entries with `hq.toml`'s) with
/// the same code as `hq.toml`; the problems otherwise.
pub(crate) fn validate_json(
    chain: &JsonChain,
    known: &Known,
) -> Result<FleetSettings, Vec<Diagnostic>> {
    let mut report = Report::default();
    let mut raw = RawChain::default();
    for (section, entries) in [("campaign", &chain.campaigns), ("flow", &chain.flows)] {
        for (name, entry) in entries {
            let Some(file) = parse_entry::<EntryFile>(&mut report, name, section, entry) else {
                continue;
            };
            raw.campaign
                .get_or_insert_with(Vec::new)
                .extend(file.campaign.unwrap_or_default());
            raw.flow
                .get_or_insert_with(Vec::new)
                .extend(file.flow.unwrap_or_default());
        }
    }
    if !chain.answer_codes.is_empty() || !chain.skip_reasons.is_empty() {
        const NAME: &str = "hq.toml answer codes and skip reasons";
        match shared_toml(&chain.answer_codes, &chain.skip_reasons) {
            Ok(text) => {
                let file = report.add_file(NAME.into(), text);
                if let Some(parsed) = report.parse::<SharedFile>(file) {
                    raw.answer_codes = parsed.answer_codes;
                    raw.prompts = parsed.prompts;
                }
            }
            Err(problem) => report.problem_in(std::path::Path::new(NAME), problem),
        }
    }
    if report.problem_count() > 0 {
        return Err(diagnostics(report));
    }
    match validate_raw(&mut report, raw, known) {
        Some(settings) if report.problem_count() == 0 => Ok(settings),
        _ => Err(diagnostics(report)),
    }
}

/// The problems a report collected.
fn diagnostics(report: Report) -> Vec<Diagnostic> {
    match report.finish_failed::<()>() {
        Err(error) => error.diagnostics().to_vec(),
        Ok(()) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known {
            stores: ["A", "B"].map(String::from).into(),
            regions: ["east"].map(String::from).into(),
        }
    }

    fn campaign(id: &str, sku: &str) -> Value {
        serde_json::json!({"id": id, "skus": [sku], "question": "来源",
                           "options": [{"key": "doctor", "label": "医生推荐"}]})
    }

    /// Loads an hq.toml of stores A and B (region east: A) with `more` appended.
    fn load_hq(more: &str) -> Result<crate::hq::HqSettings, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.token"), "tok-a").expect("token");
        std::fs::write(dir.path().join("b.token"), "tok-b").expect("token");
        let path = dir.path().join("hq.toml");
        let text = format!(
            "[[store]]\ncode = \"A\"\ntoken_file = \"a.token\"\n\
             [[store]]\ncode = \"B\"\ntoken_file = \"b.token\"\n\
             [[region]]\nid = \"east\"\nstores = [\"A\"]\n{more}"
        );
        std::fs::write(&path, text).expect("write");
        crate::hq::load_config(&path).map_err(|error| {
            error
                .to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn hq_toml_holds_the_chain_with_its_targets() {
        let settings = load_hq(
            r#"
[[campaign]]
id = "c1"
stores = ["A"]
skus = ["690*"]
question = "来源"
options = [ { key = "doctor", label = "医生推荐" } ]
[[flow]]
id = "f1"
regions = ["east"]
skus = ["111"]
steps = [ { key = "consult", label = "客户问诊" } ]
[answer_codes]
"CARD" = "doctor"
[prompts]
skip_reasons = ["忙"]
"#,
        )
        .expect("loads");
        let fleet = settings.fleet;
        assert_eq!(fleet.campaigns[0].id, "c1");
        assert_eq!(fleet.campaigns[0].targets.stores, ["A"]);
        assert_eq!(
            fleet.campaigns[0].entry["timeout"], "2m",
            "defaults filled in"
        );
        assert_eq!(fleet.flows[0].targets.regions, ["east"]);
        assert_eq!(fleet.answer_codes["CARD"], "doctor");
        assert_eq!(fleet.skip_reasons, ["忙"]);
        assert!(load_hq("").expect("loads").fleet.is_empty());
    }

    #[test]
    fn hq_toml_mistakes_are_positioned_like_the_gateways() {
        let error = load_hq(
            r#"[[campaign]]
id = "c1"
stores = ["Z"]
skus = ["690*"]
question = "来源"
options = [ { key = "doctor", label = "医生推荐" } ]
timeout = "0s"
[prompts]
sale_link_window = "5m"
"#,
        )
        .expect_err("refused");
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 3, "{error}");
        assert!(
            lines[0].starts_with(
                "DIR/hq.toml:12:11: 'Z' in 'stores' of [[campaign]] is not a [[store]]"
            ),
            "{error}"
        );
        assert!(
            lines[1].starts_with("DIR/hq.toml:16:11: 'timeout' in [[campaign]]"),
            "{error}"
        );
        assert!(
            lines[2].starts_with(
                "DIR/hq.toml:18:20: 'sale_link_window' in [prompts] is a store's setting"
            ),
            "{error}"
        );
        let error =
            load_hq("[[flow]]\nid = \"f\"\nskus = [\"1\"]\nstep = []\n").expect_err("refused");
        assert!(
            error.contains("unknown key 'step' in [[flow]], did you mean 'steps'?"),
            "{error}"
        );
    }

    #[test]
    fn json_entries_validate_with_targets() {
        let mut targeted = campaign("c1", "690*");
        targeted["stores"] = serde_json::json!(["A"]);
        let chain = JsonChain {
            campaigns: vec![
                ("c1".into(), targeted),
                ("c2".into(), campaign("c2", "111")),
            ],
            answer_codes: [("CARD".to_string(), "doctor".to_string())].into(),
            skip_reasons: vec!["忙".into()],
            ..JsonChain::default()
        };
        let settings = validate_json(&chain, &known()).expect("valid");
        assert_eq!(settings.campaigns.len(), 2);
        assert_eq!(settings.campaigns[0].targets.stores, ["A"]);
        assert!(settings.campaigns[0].targets.includes("A", None));
        assert!(!settings.campaigns[0].targets.includes("B", Some("east")));
        assert!(settings.campaigns[1].targets.includes("B", None));
        assert_eq!(settings.campaigns[0].entry["timeout"], "2m");
        assert!(settings.campaigns[0].entry.get("stores").is_none());
        assert_eq!(
            settings.campaigns[0].with_targets()["stores"],
            serde_json::json!(["A"])
        );
        assert_eq!(settings.answer_codes["CARD"], "doctor");
        assert_eq!(settings.skip_reasons, ["忙"]);
    }

    #[test]
    fn json_problems_name_their_entry() {
        let mut bad = campaign("c1", "690*");
        bad["stores"] = serde_json::json!(["Z"]);
        bad["regions"] = serde_json::json!([]);
        let mut typo = campaign("c2", "111");
        typo["timout"] = "1m".into();
        let chain = JsonChain {
            campaigns: vec![
                ("editor campaign 'c1'".into(), bad.clone()),
                ("editor campaign 'c2'".into(), typo),
            ],
            ..JsonChain::default()
        };
        let errors: Vec<String> = validate_json(&chain, &known())
            .expect_err("refused")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1, "parse problems first: {errors:?}");
        assert!(
            errors[0].starts_with("editor campaign 'c2':")
                && errors[0]
                    .contains("unknown key 'timout' in [[campaign]], did you mean 'timeout'?"),
            "{errors:?}"
        );
        let chain = JsonChain {
            campaigns: vec![("editor campaign 'c1'".into(), bad)],
            ..JsonChain::default()
        };
        let errors: Vec<String> = validate_json(&chain, &known())
            .expect_err("refused")
            .iter()
            .map(|d| d.message.clone())
            .collect();
        assert_eq!(
            errors,
            [
                "'regions' in [[campaign]] lists nothing; leave it out to send the entry to every store",
                "'Z' in 'stores' of [[campaign]] is not a [[store]] of hq.toml",
            ]
        );
    }
}
