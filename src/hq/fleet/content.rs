//! The configuration in force for the fleet: `hq.toml`'s entries and the editor's, joined
//! ([`join`]), what each store gets of it ([`Content::document_for`]), the hashes the versions
//! and ETags come from, and what changed between two contents ([`changes`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::{validate_json, FleetEntry, FleetSettings, JsonChain, Known, Targets};
use crate::config::FleetDocument;

/// A campaign or a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `[[campaign]]`.
    Campaign,
    /// `[[flow]]`.
    Flow,
}

impl Kind {
    /// `campaign` or `flow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Campaign => "campaign",
            Kind::Flow => "flow",
        }
    }
}

/// An entry made in the editor, as the `"fleet"` tree keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditorEntry {
    /// Campaign or flow.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// The table in the gateway's keys (validated, canonical).
    pub entry: Value,
    /// Who gets it.
    pub targets: Targets,
    /// The user who last saved it.
    pub by: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

impl EditorEntry {
    /// The name its problems are reported under.
    pub fn label(&self) -> String {
        format!("editor {} '{}'", self.kind.as_str(), self.id)
    }

    /// The entry with its targets, as the editor sends it.
    pub fn with_targets(&self) -> Value {
        FleetEntry {
            id: self.id.clone(),
            entry: self.entry.clone(),
            targets: self.targets.clone(),
        }
        .with_targets()
    }
}

/// Where an entry in force comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `hq.toml` (read-only in the editor).
    File,
    /// The editor: who saved it, when.
    Editor {
        /// The user.
        by: String,
        /// RFC 3339, UTC.
        at: String,
    },
}

/// An entry in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Campaign or flow.
    pub kind: Kind,
    /// The validated entry.
    pub fleet: FleetEntry,
    /// Where it comes from.
    pub source: Source,
}

/// An editor entry not in force, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SetAside {
    /// Campaign or flow.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// Why (the validators' messages).
    pub reasons: Vec<String>,
}

/// The fleet configuration in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    /// Campaigns: `hq.toml`'s in file order, then the editor's by id.
    pub campaigns: Vec<Entry>,
    /// Flows, in the same order.
    pub flows: Vec<Entry>,
    /// `hq.toml`'s `[answer_codes]`.
    pub answer_codes: BTreeMap<String, String>,
    /// `hq.toml`'s `[prompts] skip_reasons`.
    pub skip_reasons: Vec<String>,
    /// Editor entries kept in the database but not in force.
    pub set_aside: Vec<SetAside>,
}

/// The chain of `file` and `editor` as JSON for [`validate_json`].
pub fn chain<'a>(
    file: &FleetSettings,
    editor: impl IntoIterator<Item = &'a EditorEntry>,
) -> JsonChain {
    let mut chain = JsonChain {
        answer_codes: file.answer_codes.clone(),
        skip_reasons: file.skip_reasons.clone(),
        ..JsonChain::default()
    };
    for entry in &file.campaigns {
        chain.campaigns.push((
            format!("hq.toml campaign '{}'", entry.id),
            entry.with_targets(),
        ));
    }
    for entry in &file.flows {
        chain
            .flows
            .push((format!("hq.toml flow '{}'", entry.id), entry.with_targets()));
    }
    for entry in editor {
        let list = match entry.kind {
            Kind::Campaign => &mut chain.campaigns,
            Kind::Flow => &mut chain.flows,
        };
        list.push((entry.label(), entry.with_targets()));
    }
    chain
}

/// Joins `hq.toml`'s entries with the editor's. An editor entry with the id of an `hq.toml`
/// entry is set aside (the file wins); if the whole does not validate, the editor entries are
/// taken one by one (by kind and id) and each that does not validate with `hq.toml`'s and those
/// taken before it is set aside with the problems: `hq.toml` alone validated when it was
/// loaded, so the file's entries are always in force.
pub fn join(
    file: &FleetSettings,
    editor: &BTreeMap<(Kind, String), EditorEntry>,
    known: &Known,
) -> Content {
    let file_ids: BTreeMap<&str, Kind> = file
        .campaigns
        .iter()
        .map(|entry| (entry.id.as_str(), Kind::Campaign))
        .chain(
            file.flows
                .iter()
                .map(|entry| (entry.id.as_str(), Kind::Flow)),
        )
        .collect();
    let mut set_aside = Vec::new();
    let mut active: Vec<&EditorEntry> = Vec::new();
    for entry in editor.values() {
        match file_ids.get(entry.id.as_str()) {
            Some(kind) => set_aside.push(SetAside {
                kind: entry.kind,
                id: entry.id.clone(),
                reasons: vec![format!(
                    "hq.toml has a {} with this id, which is in force instead",
                    kind.as_str()
                )],
            }),
            None => active.push(entry),
        }
    }
    let mut validated = validate_json(&chain(file, active.iter().copied()), known).ok();
    if validated.is_none() {
        // Which entries cannot be in force: each in turn with those accepted before it (a
        // problem is not always reported at the entry causing it: an `hq.toml` answer code
        // that an editor campaign lists as a product is reported at the code).
        let mut accepted: Vec<&EditorEntry> = Vec::new();
        for entry in active {
            let trial = accepted.iter().copied().chain(std::iter::once(entry));
            match validate_json(&chain(file, trial), known) {
                Ok(_) => accepted.push(entry),
                Err(problems) => {
                    let label = entry.label();
                    set_aside.push(SetAside {
                        kind: entry.kind,
                        id: entry.id.clone(),
                        reasons: problems
                            .iter()
                            .map(|problem| {
                                if problem.path.as_os_str() == label.as_str() {
                                    problem.message.clone()
                                } else {
                                    format!("{}: {}", problem.path.display(), problem.message)
                                }
                            })
                            .collect(),
                    });
                }
            }
        }
        active = accepted;
        validated = validate_json(&chain(file, active.iter().copied()), known).ok();
    }
    let settings = validated.unwrap_or_else(|| file.clone());
    let source = |kind: Kind, id: &str| {
        active
            .iter()
            .find(|entry| entry.kind == kind && entry.id == id)
            .map_or(Source::File, |entry| Source::Editor {
                by: entry.by.clone(),
                at: entry.at.clone(),
            })
    };
    let entries = |kind: Kind, list: Vec<FleetEntry>| -> Vec<Entry> {
        list.into_iter()
            .map(|fleet| Entry {
                kind,
                source: source(kind, &fleet.id),
                fleet,
            })
            .collect()
    };
    Content {
        campaigns: entries(Kind::Campaign, settings.campaigns),
        flows: entries(Kind::Flow, settings.flows),
        answer_codes: settings.answer_codes,
        skip_reasons: settings.skip_reasons,
        set_aside,
    }
}

impl Content {
    /// What a store gets (its `version` left at 0 for the caller): the entries targeting it,
    /// the answer codes whose option one of its campaigns offers, the skip reasons.
    pub fn document_for(&self, store: &str, region: Option<&str>) -> FleetDocument {
        let pick = |entries: &[Entry]| -> Vec<Value> {
            entries
                .iter()
                .filter(|entry| entry.fleet.targets.includes(store, region))
                .map(|entry| entry.fleet.entry.clone())
                .collect()
        };
        let campaigns = pick(&self.campaigns);
        let options = crate::config::option_keys(&campaigns);
        FleetDocument {
            version: 0,
            answer_codes: self
                .answer_codes
                .iter()
                .filter(|(_, option)| options.contains(option.as_str()))
                .map(|(code, option)| (code.clone(), option.clone()))
                .collect(),
            campaigns,
            flows: pick(&self.flows),
            skip_reasons: self.skip_reasons.clone(),
        }
    }

    /// Every entry in force, campaigns first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.campaigns.iter().chain(&self.flows)
    }

    /// The content as JSON, for hashing (sources left out: moving an entry from the editor to
    /// `hq.toml` unchanged changes nothing a store gets).
    fn canonical(&self) -> Value {
        let entries = |list: &[Entry]| -> Vec<Value> {
            list.iter()
                .map(|entry| serde_json::json!([entry.fleet.entry, entry.fleet.targets]))
                .collect()
        };
        serde_json::json!({
            "campaigns": entries(&self.campaigns),
            "flows": entries(&self.flows),
            "answer_codes": self.answer_codes,
            "skip_reasons": self.skip_reasons,
        })
    }
}

/// SHA-256 of bytes, hex.
pub fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The hash behind the version: the content and what each store gets of it (a store moved
/// to another region changes what it gets without changing the content).
pub fn version_hash<'a>(
    content: &Content,
    store_hashes: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    let mut text = content.canonical().to_string();
    for (store, hash) in store_hashes {
        text.push('\n');
        text.push_str(store);
        text.push(' ');
        text.push_str(hash);
    }
    hash_hex(text.as_bytes())
}

/// A store's document's hash, its version left out.
pub fn document_hash(document: &FleetDocument) -> String {
    let bytes = serde_json::to_vec(&FleetDocument {
        version: 0,
        ..document.clone()
    })
    .unwrap_or_default();
    hash_hex(&bytes)
}

/// What changed from `old` to `new`, one line each ("campaign 'x' added (hq.toml)").
pub fn changes(old: &Content, new: &Content) -> Vec<String> {
    let index = |content: &Content| -> BTreeMap<(Kind, String), Entry> {
        content
            .entries()
            .map(|entry| ((entry.kind, entry.fleet.id.clone()), entry.clone()))
            .collect()
    };
    let (before, after) = (index(old), index(new));
    let origin = |entry: &Entry| match &entry.source {
        Source::File => "hq.toml".to_string(),
        Source::Editor { by, .. } => format!("editor, {by}"),
    };
    let mut lines = Vec::new();
    for ((kind, id), entry) in &after {
        match before.get(&(*kind, id.clone())) {
            None => lines.push(format!(
                "{} '{id}' added ({})",
                kind.as_str(),
                origin(entry)
            )),
            Some(earlier) if earlier.fleet != entry.fleet => {
                lines.push(format!(
                    "{} '{id}' changed ({})",
                    kind.as_str(),
                    origin(entry)
                ));
            }
            Some(_) => {}
        }
    }
    for ((kind, id), entry) in &before {
        if !after.contains_key(&(*kind, id.clone())) {
            lines.push(format!(
                "{} '{id}' removed (was {})",
                kind.as_str(),
                origin(entry)
            ));
        }
    }
    if old.answer_codes != new.answer_codes {
        lines.push("answer codes changed (hq.toml)".to_string());
    }
    if old.skip_reasons != new.skip_reasons {
        lines.push("skip reasons changed (hq.toml)".to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> Known {
        Known {
            stores: ["A", "B"].map(String::from).into(),
            regions: ["east"].map(String::from).into(),
        }
    }

    fn campaign(id: &str, sku: &str, option: &str) -> Value {
        json!({"id": id, "skus": [sku], "question": "q",
               "options": [{"key": option, "label": "L"}], "timeout": "2m"})
    }

    fn editor(id: &str, sku: &str, option: &str, stores: &[&str]) -> EditorEntry {
        EditorEntry {
            kind: Kind::Campaign,
            id: id.into(),
            entry: campaign(id, sku, option),
            targets: Targets {
                stores: stores.iter().map(|s| s.to_string()).collect(),
                regions: Vec::new(),
            },
            by: "li".into(),
            at: "t".into(),
        }
    }

    fn file() -> FleetSettings {
        FleetSettings {
            campaigns: vec![FleetEntry {
                id: "from-file".into(),
                entry: campaign("from-file", "690*", "doctor"),
                targets: Targets::default(),
            }],
            answer_codes: [("CARD".to_string(), "doctor".to_string())].into(),
            ..FleetSettings::default()
        }
    }

    #[test]
    fn editor_entries_join_the_file_and_a_clashing_or_invalid_one_is_set_aside() {
        let mut entries = BTreeMap::new();
        for entry in [
            editor("spring", "111", "poster", &["A"]),
            editor("from-file", "222", "poster", &[]),
            // Its product is hq.toml's answer card: cannot be in force with it.
            editor("card-grabber", "CARD", "poster", &[]),
        ] {
            entries.insert((entry.kind, entry.id.clone()), entry);
        }
        let content = join(&file(), &entries, &known());
        let ids: Vec<&str> = content
            .campaigns
            .iter()
            .map(|e| e.fleet.id.as_str())
            .collect();
        assert_eq!(ids, ["from-file", "spring"]);
        assert_eq!(content.campaigns[0].source, Source::File);
        assert!(matches!(&content.campaigns[1].source, Source::Editor { by, .. } if by == "li"));
        let aside: Vec<(&str, &str)> = content
            .set_aside
            .iter()
            .map(|a| (a.id.as_str(), a.reasons[0].as_str()))
            .collect();
        assert_eq!(aside.len(), 2, "{aside:?}");
        assert!(aside[0].0 == "from-file" && aside[0].1.starts_with("hq.toml has a campaign"));
        assert!(
            aside[1].0 == "card-grabber" && aside[1].1.contains("answer code 'CARD'"),
            "{aside:?}"
        );

        // What each store gets: its campaigns, and only the answer codes of their options.
        let a = content.document_for("A", Some("east"));
        let b = content.document_for("B", None);
        assert_eq!(a.campaigns.len(), 2);
        assert_eq!(b.campaigns.len(), 1);
        assert_eq!(a.answer_codes.len(), 1);
        assert_ne!(document_hash(&a), document_hash(&b));

        // What changed, for the history.
        let before = join(&file(), &BTreeMap::new(), &known());
        assert_eq!(
            changes(&before, &content),
            ["campaign 'spring' added (editor, li)"]
        );
        assert_eq!(
            changes(&content, &before),
            ["campaign 'spring' removed (was editor, li)"]
        );
        assert!(changes(&content, &content).is_empty());
    }
}
