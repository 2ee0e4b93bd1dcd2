//! The local HTTP API (`api.listen`): health, status and metrics.
//!
//! Owns nothing: every handler reads a snapshot from the owner of the state it shows (device
//! status channels, journal statistics, core health). Later issues add the prompt endpoints and
//! the clerk page here.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;

use crate::core::Health;
use crate::devices::DeviceView;
use crate::journal::JournalHandle;
use crate::metrics::Metrics;
use crate::prompts::{PromptView, PromptsHandle, StationToday};
use crate::uplink::{UplinkState, UplinkStatus};
use crate::web::access::LocalPairingToken;
use tokio::sync::watch;

/// What the handlers read from.
#[derive(Clone)]
pub struct ApiState {
    /// Store code from the configuration.
    pub store: Arc<str>,
    /// Gateway id from the configuration.
    pub gateway: Arc<str>,
    /// The devices' published status.
    pub devices: Arc<[DeviceView]>,
    /// For journal figures.
    pub journal: JournalHandle,
    /// Write-path health.
    pub health: Arc<Health>,
    /// Metric families.
    pub metrics: Metrics,
    /// The uplink's published state.
    pub uplink: watch::Receiver<UplinkStatus>,
    /// The prompt engine, for open prompts and today's figures.
    pub prompts: PromptsHandle,
    /// The configured stations.
    pub stations: Arc<[String]>,
    /// The configuration in force (where each campaign came from) and the fleet task's state.
    pub fleet: crate::fleet::FleetView,
}

/// The router with every endpoint of this build.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .with_state(state)
}

async fn healthz(State(state): State<ApiState>) -> Response {
    if let Some(failure) = state.journal.stats().failure {
        let reason = format!("journal unavailable: {failure}");
        return (StatusCode::SERVICE_UNAVAILABLE, reason).into_response();
    }
    match state.health.problem() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem).into_response(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let metrics = &state.metrics;
    metrics.follow_journal(&state.journal.stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// `GET /api/v1/status` body (docs/local-api.md, plus `station`, `detail`, `epoch`,
/// `durable_seq`, the uplink's counters, `prompts`: open prompts and today's figures, and
/// `pairing_token` for loopback callers).
#[derive(Debug, Serialize)]
pub struct StatusBody {
    /// Store code.
    pub store: String,
    /// Gateway id.
    pub gateway: String,
    /// posgw version.
    pub version: &'static str,
    /// Every configured device.
    pub devices: Vec<DeviceStatusBody>,
    /// Journal figures.
    pub journal: JournalStatusBody,
    /// HQ forwarding.
    pub uplink: UplinkStatusBody,
    /// Open prompts (oldest first) and today's figures per station.
    pub prompts: PromptsStatusBody,
    /// Every campaign in force and where it comes from (`local` or `hq`).
    pub campaigns: Vec<crate::fleet::Sourced>,
    /// Every flow in force and where it comes from.
    pub flows: Vec<crate::fleet::Sourced>,
    /// Configuration from HQ: the version in force, clashes, and the fleet task's state; null
    /// without `[fleet]`.
    pub fleet: Option<FleetStatusBody>,
    /// The token that pairs a station beyond loopback; only in answers to loopback callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairing_token: Option<String>,
}

/// Fleet part of the status body.
#[derive(Debug, Serialize)]
pub struct FleetStatusBody {
    /// HQ's configuration version in force (null: none applied).
    pub version: Option<u64>,
    /// `hq` (fetched this run) or `copy` (the last good copy, at start).
    pub source: Option<&'static str>,
    /// HQ entries left out because a local one has the id.
    pub clashes: Vec<String>,
    /// The fleet task: URL, poll, last fetch and heartbeat, last error, last refusal.
    #[serde(flatten)]
    pub task: crate::fleet::FleetStatus,
}

/// Prompt part of the status body.
#[derive(Debug, Serialize)]
pub struct PromptsStatusBody {
    /// Every open prompt, oldest first.
    pub open: Vec<PromptView>,
    /// Today's opened / answered / skipped / timeout and completeness, per station.
    pub today: Vec<StationToday>,
}

/// One device in the status body.
#[derive(Debug, Serialize)]
pub struct DeviceStatusBody {
    /// Device id.
    pub id: String,
    /// scanner | register.
    pub role: String,
    /// serial | mqtt.
    pub transport: String,
    /// Its station.
    pub station: String,
    /// starting | connected | disconnected.
    pub state: crate::devices::ConnectionState,
    /// When its last frame arrived.
    pub last_frame_at: Option<String>,
    /// Last connect / disconnect reason.
    pub detail: Option<String>,
    /// Its passthrough, when it has one: where, and bytes forwarded and dropped each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<PassthroughStatusBody>,
}

/// A device's passthrough in the status body.
#[derive(Debug, Serialize)]
pub struct PassthroughStatusBody {
    /// Where the device's bytes go.
    pub target: String,
    /// Device → passthrough (scanner → POS, register → printer).
    pub to_passthrough: DirectionStatusBody,
    /// Passthrough → device (the printer's status replies, the POS's commands).
    pub to_device: DirectionStatusBody,
    /// A network printer tap's register connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsStatusBody>,
}

/// A network printer tap's register connections in the status body.
#[derive(Debug, Serialize)]
pub struct ConnectionsStatusBody {
    /// Open now.
    pub open: i64,
    /// Accepted and forwarded since start.
    pub accepted: u64,
    /// Refused over `max_connections` since start.
    pub refused: u64,
    /// Closed because the printer did not answer, since start.
    pub printer_unreachable: u64,
}

/// One direction of a passthrough.
#[derive(Debug, Serialize)]
pub struct DirectionStatusBody {
    /// Bytes written on.
    pub bytes: u64,
    /// Bytes dropped (the reader stalled, or the port was gone).
    pub dropped_bytes: u64,
    /// Writes dropped whole.
    pub dropped_chunks: u64,
}

impl From<&crate::devices::passthrough::DirectionCounters> for DirectionStatusBody {
    fn from(counters: &crate::devices::passthrough::DirectionCounters) -> Self {
        DirectionStatusBody {
            bytes: counters.bytes.get(),
            dropped_bytes: counters.dropped_bytes.get(),
            dropped_chunks: counters.dropped_chunks.get(),
        }
    }
}

/// Journal part of the status body.
#[derive(Debug, Serialize)]
pub struct JournalStatusBody {
    /// The journal's epoch.
    pub epoch: String,
    /// The seq the next record will get.
    pub next_seq: u64,
    /// Highest seq known to be on disk.
    pub durable_seq: u64,
    /// Records not yet acknowledged by HQ.
    pub backlog_records: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Records HQ refused for good.
    pub dead_records: u64,
    /// Set when the journal was found damaged at start and moved aside: why, and where it is
    /// (`posgw journal salvage` recovers its records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<JournalReplacedBody>,
}

/// A damaged journal moved aside at start.
#[derive(Debug, Serialize)]
pub struct JournalReplacedBody {
    /// Why the journal could not be used.
    pub reason: String,
    /// The folder it was moved to (`data_dir/quarantine-<UTC time>`).
    pub quarantine: String,
}

/// Uplink part of the status body.
#[derive(Debug, Serialize)]
pub struct UplinkStatusBody {
    /// disabled | idle | sending | retrying.
    pub state: UplinkState,
    /// Last 2xx from HQ.
    pub last_success_at: Option<String>,
    /// Last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Records HQ accepted since start.
    pub sent_records: u64,
    /// Failed deliveries retried since start.
    pub retries: u64,
    /// Records dead-lettered since start.
    pub dead_lettered: u64,
    /// `ts` of the oldest record not yet delivered.
    pub oldest_pending_ts: Option<String>,
}

async fn status(
    State(state): State<ApiState>,
    local: Option<Extension<LocalPairingToken>>,
) -> Json<StatusBody> {
    let devices = state
        .devices
        .iter()
        .map(|view| {
            let status = view.status.borrow().clone();
            DeviceStatusBody {
                id: view.id.clone(),
                role: view.role.as_str().to_owned(),
                transport: view.transport.as_str().to_owned(),
                station: view.station.clone(),
                state: status.state,
                last_frame_at: status
                    .last_frame_at
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
                detail: status.detail,
                passthrough: view
                    .passthrough
                    .as_ref()
                    .map(|passthrough| PassthroughStatusBody {
                        target: passthrough.target.clone(),
                        to_passthrough: (&passthrough.counters.to_passthrough).into(),
                        to_device: (&passthrough.counters.to_device).into(),
                        connections: passthrough.connections.as_ref().map(|counts| {
                            ConnectionsStatusBody {
                                open: counts.open.get(),
                                accepted: counts.accepted.get(),
                                refused: counts.refused.get(),
                                printer_unreachable: counts.printer_unreachable.get(),
                            }
                        }),
                    }),
            }
        })
        .collect();
    let journal = state.journal.stats();
    let in_force = state.fleet.in_force.borrow().clone();
    let prompts = PromptsStatusBody {
        open: state.prompts.open_prompts(None).await,
        today: state.prompts.today_with(&state.stations).await,
    };
    Json(StatusBody {
        store: state.store.to_string(),
        gateway: state.gateway.to_string(),
        version: crate::VERSION,
        devices,
        journal: JournalStatusBody {
            epoch: journal.epoch.clone(),
            next_seq: journal.next_seq,
            durable_seq: journal.durable_seq,
            backlog_records: journal.backlog_records,
            backlog_bytes: journal.backlog_bytes,
            dead_records: journal.dead_records,
            replaced: journal
                .replaced
                .as_ref()
                .map(|replaced| JournalReplacedBody {
                    reason: replaced.reason.clone(),
                    quarantine: replaced.quarantine.display().to_string(),
                }),
        },
        uplink: {
            let uplink = state.uplink.borrow().clone();
            UplinkStatusBody {
                state: uplink.state,
                last_success_at: uplink
                    .last_success_at
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
                last_error: uplink.last_error,
                sent_records: uplink.sent_records,
                retries: uplink.retries,
                dead_lettered: uplink.dead_lettered,
                oldest_pending_ts: uplink.oldest_pending_ts,
            }
        },
        prompts,
        campaigns: in_force.campaigns,
        flows: in_force.flows,
        fleet: state.fleet.status.as_ref().map(|status| FleetStatusBody {
            version: in_force.version,
            source: in_force.source,
            clashes: in_force.clashes,
            task: status.borrow().clone(),
        }),
        pairing_token: local.map(|Extension(LocalPairingToken(token))| token.to_string()),
    })
}
