//! Campaigns and flows from HQ, and heartbeats: the gateway's side of the fleet
//! (docs/hq-protocol.md, "Fleet"; HQ's side is `hq::fleet`). This module doc is its design
//! document.
//!
//! # What it does
//!
//! With `[fleet]` configured, one task (`task`) fetches `GET {url}/{store}/config` at start and
//! every `poll` (each wait drawn within ±10 %, so a chain's stores do not arrive together;
//! after failures the wait doubles up to four polls, and never undercuts a `Retry-After`),
//! has a new document put in force, and posts a heartbeat (`wire::Heartbeat`) after each
//! fetch. The document's ETag goes back as `If-None-Match`, so an unchanged configuration costs
//! a 304.
//!
//! # Applying: the reload path
//!
//! The configuration in force has one owner, the gateway's reload task
//! (`gateway::reload_on_sighup`), which also serves SIGHUP. The fleet task hands it each new
//! document ([`ApplyRequest`]); it reads the local files again joined with the document
//! (`config::load_with_fleet`: HQ's entries rendered as the tables a person would write and
//! validated with the local file, by the same code as a SIGHUP reload), and on success puts the
//! campaigns, answer codes, skip reasons and flows in force exactly as a SIGHUP does (open
//! prompts of an ended campaign stay answerable; open consultations go on); then it answers
//! [`ApplyOutcome::Applied`], or [`ApplyOutcome::Refused`] with the errors, the configuration
//! in force unchanged. A SIGHUP joins the document in force, so a reload of the local file
//! keeps HQ's part. The owner publishes [`InForce`]: HQ's version, where each campaign and flow
//! came from (`local` or `hq`) and the clashes (HQ ids a local entry already has: the local one
//! stays).
//!
//! # Offline
//!
//! An applied document is kept in `data_dir/fleet-config.json` (`copy`, written atomically).
//! At start ([`start`]) the copy is joined to the local files before anything starts, so a
//! gateway restarted while HQ is unreachable prompts as before; the first fetch then brings
//! HQ's current document. A copy that no longer validates with the local files (they changed)
//! is refused like any document, and the gateway starts on its local files.
//!
//! # Records and status
//!
//! Each document put in force with a change is a `gateway` record `config_applied`; each
//! refused one `config_refused` with its errors (once per document: one HQ sends again is not
//! validated and recorded again until the local configuration changes). The last refusal and
//! the clashes go to HQ in every heartbeat. `/api/v1/status` shows [`InForce`] and the task's
//! [`FleetStatus`].
//!
//! # Bounds
//!
//! A document larger than 1 MiB is refused unread (`client::MAX_DOCUMENT_BYTES`); requests
//! time out (10 s to connect, 30 s in all); a heartbeat's lists and texts are cut
//! (`wire::MAX_LIST`, `wire::MAX_TEXT`); the task holds one document, its copy and one refusal.
//!
//! # Code map
//!
//! - `wire`: the heartbeat, shared with HQ.
//! - `client`: HTTP to HQ. `copy`: the last good copy. `task`: the loop, the heartbeat's
//!   contents, the records.

pub mod client;
pub mod copy;
mod task;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{FleetApplied, FleetDocument, FleetSettings, Settings};
use crate::devices::DeviceView;
use crate::journal::JournalHandle;
use crate::record::gateway::ConfigEventData;
use crate::record::Kind;
use crate::uplink::UplinkStatus;

pub use copy::LastGood;
pub use task::next_wait;

/// A document for the owner of the configuration in force to apply.
pub struct ApplyRequest {
    /// The document.
    pub document: Arc<FleetDocument>,
    /// Where it is from: `hq` or `copy`.
    pub source: &'static str,
    /// The answer.
    pub reply: oneshot::Sender<ApplyOutcome>,
}

/// What became of an [`ApplyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// In force. `changed`: false when only its version differed from the one in force.
    Applied {
        /// Whether campaigns, flows, answer codes or skip reasons changed.
        changed: bool,
        /// HQ entries left out for a local one with the id.
        clashes: Vec<String>,
    },
    /// Not in force; the configuration in force stays.
    Refused {
        /// Why: the validators' lines.
        errors: Vec<String>,
    },
}

/// Where a campaign or flow in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The local files (`posgw.toml`, `config.d/`).
    Local,
    /// HQ's document.
    Hq,
}

/// A campaign or flow in force and its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sourced {
    /// Its id.
    pub id: String,
    /// `local` or `hq`.
    pub source: Origin,
}

/// The configuration in force, as the reload task publishes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InForce {
    /// HQ's version of the document in force (none: no document from HQ).
    pub version: Option<u64>,
    /// `hq` (fetched this run) or `copy` (the last good copy, at start).
    pub source: Option<&'static str>,
    /// Every campaign in force, in order.
    pub campaigns: Vec<Sourced>,
    /// Every flow in force, in order.
    pub flows: Vec<Sourced>,
    /// HQ entries left out because a local one has the id.
    pub clashes: Vec<String>,
    /// Moves on with every reload of the local files (a refused document is tried again then).
    #[serde(skip)]
    pub generation: u64,
}

impl InForce {
    /// What `settings` (joined with HQ's document as `applied` says) puts in force.
    pub fn new(
        settings: &Settings,
        applied: Option<&FleetApplied>,
        source: Option<&'static str>,
        generation: u64,
    ) -> InForce {
        let origin = |hq: Option<&Vec<String>>, id: &String| Sourced {
            id: id.clone(),
            source: if hq.is_some_and(|ids| ids.contains(id)) {
                Origin::Hq
            } else {
                Origin::Local
            },
        };
        InForce {
            version: applied.map(|applied| applied.version),
            source: applied.and(source),
            campaigns: settings
                .campaigns
                .iter()
                .map(|campaign| origin(applied.map(|a| &a.campaigns), &campaign.id))
                .collect(),
            flows: settings
                .flows
                .iter()
                .map(|flow| origin(applied.map(|a| &a.flows), &flow.id))
                .collect(),
            clashes: applied.map(|a| a.clashes.clone()).unwrap_or_default(),
            generation,
        }
    }
}

/// What the fleet task is doing, for `/api/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetStatus {
    /// HQ's fleet URL.
    pub url: String,
    /// `[fleet] poll` in milliseconds.
    pub poll_ms: u64,
    /// When HQ last answered a fetch (200 or 304).
    pub last_fetch_at: Option<String>,
    /// When HQ last took a heartbeat.
    pub last_heartbeat_at: Option<String>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Failed rounds in a row.
    pub failures: u32,
    /// The last document refused, while no later one was applied.
    pub refused: Option<wire::Refusal>,
}

/// What `/api/v1/status` reads of the fleet.
#[derive(Clone)]
pub struct FleetView {
    /// The configuration in force.
    pub in_force: watch::Receiver<InForce>,
    /// The fleet task's state (none without `[fleet]`).
    pub status: Option<watch::Receiver<FleetStatus>>,
}

/// The configuration to start with: the local files joined with the last good copy.
pub struct Start {
    /// The configuration to start with.
    pub settings: Settings,
    /// The copy, when it is in force.
    pub copy: Option<LastGood>,
    /// What joining it did.
    pub applied: Option<FleetApplied>,
    /// What to record once the journal takes records.
    pub event: Option<ConfigEvent>,
}

/// A `config_applied` or `config_refused` record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEvent {
    /// `config_applied` or `config_refused`.
    pub event: &'static str,
    /// The document's version.
    pub config_version: u64,
    /// `hq` or `copy`.
    pub source: &'static str,
    /// One line for people.
    pub detail: String,
    /// Why it was refused.
    pub errors: Vec<String>,
    /// What clashed.
    pub clashes: Vec<String>,
}

impl ConfigEvent {
    /// The record of a document put in force.
    pub fn applied(version: u64, source: &'static str, in_force: &InForce) -> ConfigEvent {
        let list = |entries: &[Sourced]| -> String {
            let hq: Vec<&str> = entries
                .iter()
                .filter(|entry| entry.source == Origin::Hq)
                .map(|entry| entry.id.as_str())
                .collect();
            if hq.is_empty() {
                "none".to_string()
            } else {
                hq.join(", ")
            }
        };
        ConfigEvent {
            event: "config_applied",
            config_version: version,
            source,
            detail: format!(
                "HQ configuration v{version} applied (from {}): campaigns from HQ: {}; flows \
                 from HQ: {}{}",
                if source == "copy" {
                    "the last good copy"
                } else {
                    "HQ"
                },
                list(&in_force.campaigns),
                list(&in_force.flows),
                if in_force.clashes.is_empty() {
                    String::new()
                } else {
                    format!("; {} clash(es) with local ids", in_force.clashes.len())
                }
            ),
            errors: Vec::new(),
            clashes: in_force.clashes.clone(),
        }
    }

    /// The record of a document refused.
    pub fn refused(version: u64, source: &'static str, errors: Vec<String>) -> ConfigEvent {
        ConfigEvent {
            event: "config_refused",
            config_version: version,
            source,
            detail: format!(
                "HQ configuration v{version} refused ({} error(s)); the configuration in \
                 force stays: {}",
                errors.len(),
                errors.first().map_or("", String::as_str)
            ),
            errors,
            clashes: Vec::new(),
        }
    }

    /// Writes the record (a failure is logged: the gateway goes on).
    pub async fn record(&self, journal: &JournalHandle) {
        let errors = bounded_list(&self.errors);
        let clashes = bounded_list(&self.clashes);
        let data = ConfigEventData {
            event: self.event,
            version: crate::VERSION,
            detail: &self.detail,
            config_version: self.config_version,
            source: self.source,
            errors: &errors,
            clashes: &clashes,
        };
        if let Err(error) = journal.append_value(Kind::Gateway, &data).await {
            tracing::error!(%error, event = self.event, "cannot record a configuration event");
        }
    }
}

/// A list cut to [`wire::MAX_LIST`] entries of at most [`wire::MAX_TEXT`] bytes.
pub fn bounded_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .take(wire::MAX_LIST)
        .map(|item| wire::bounded(item))
        .collect()
}

/// The validators' lines of a configuration error.
pub fn error_lines(error: &crate::config::ConfigError) -> Vec<String> {
    error
        .diagnostics()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The configuration to start with: `settings` (the local files) joined with the last good
/// copy in `data_dir`, when `[fleet]` is on and there is one that validates with them.
pub async fn start(settings: Settings) -> Start {
    let mut start = Start {
        settings,
        copy: None,
        applied: None,
        event: None,
    };
    if start.settings.fleet.is_none() {
        return start;
    }
    let data_dir = start.settings.gateway.data_dir.clone();
    let store = start.settings.gateway.store.clone();
    let copy = match tokio::task::spawn_blocking(move || copy::load(&data_dir, &store)).await {
        Ok(Ok(Some(copy))) => copy,
        Ok(Ok(None)) => return start,
        Ok(Err(problem)) => {
            tracing::warn!("fleet: the last good copy is not used: {problem}");
            return start;
        }
        Err(error) => {
            tracing::warn!(%error, "fleet: reading the last good copy failed");
            return start;
        }
    };
    let path = start.settings.path.clone();
    let document = copy.document.clone();
    let version = document.version;
    let loaded =
        tokio::task::spawn_blocking(move || crate::config::load_with_fleet(&path, Some(&document)))
            .await;
    match loaded {
        Ok(Ok(loaded)) => {
            let in_force = InForce::new(&loaded.settings, loaded.fleet.as_ref(), Some("copy"), 0);
            tracing::info!(
                version,
                "fleet: HQ's configuration from the last good copy is in force until HQ answers"
            );
            start.event = Some(ConfigEvent::applied(version, "copy", &in_force));
            start.settings = loaded.settings;
            start.applied = loaded.fleet;
            start.copy = Some(copy);
        }
        Ok(Err(error)) => {
            tracing::error!(
                "fleet: the last good copy (v{version}) does not validate with the local \
                 configuration; starting without it:\n{error}"
            );
            start.event = Some(ConfigEvent::refused(version, "copy", error_lines(&error)));
        }
        Err(error) => tracing::error!(%error, "fleet: validating the last good copy failed"),
    }
    start
}

/// What the fleet task needs.
pub struct FleetParts {
    /// `[fleet]`.
    pub settings: FleetSettings,
    /// `[gateway] store`.
    pub store: String,
    /// `[gateway] id`.
    pub gateway: String,
    /// Where the last good copy goes.
    pub data_dir: PathBuf,
    /// The copy in force at start.
    pub copy: Option<LastGood>,
    /// For `config_applied` / `config_refused`, and the backlog in heartbeats.
    pub journal: JournalHandle,
    /// The devices, for heartbeats.
    pub devices: Arc<[DeviceView]>,
    /// The uplink's state, for heartbeats.
    pub uplink: watch::Receiver<UplinkStatus>,
    /// The configuration in force.
    pub in_force: watch::Receiver<InForce>,
    /// The owner of the configuration in force.
    pub owner: mpsc::Sender<ApplyRequest>,
}

/// Starts the fleet task; it ends when `stop` is cancelled.
pub fn spawn(
    parts: FleetParts,
    stop: CancellationToken,
) -> anyhow::Result<(watch::Receiver<FleetStatus>, JoinHandle<()>)> {
    task::spawn(parts, stop)
}
