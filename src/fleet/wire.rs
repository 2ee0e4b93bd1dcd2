//! The fleet's wire types: the heartbeat a gateway posts to `POST /v1/fleet/{store}/heartbeat`
//! (docs/hq-protocol.md, "Fleet"). Both sides use them, as both use `record`: the gateway
//! writes one, `hq::fleet` reads it. The configuration a gateway fetches is
//! [`crate::config::FleetDocument`].
//!
//! Fields a newer gateway adds are ignored by an older HQ (no `deny_unknown_fields`); every
//! list is bounded by the gateway ([`MAX_LIST`], [`MAX_TEXT`]) and the body as a whole by HQ.

use serde::{Deserialize, Serialize};

/// Most entries of a heartbeat's lists (devices, errors, clashes) a gateway sends.
pub const MAX_LIST: usize = 64;
/// Longest text (an error, a clash) a gateway sends, in bytes.
pub const MAX_TEXT: usize = 500;

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `[gateway] id`.
    pub gateway: String,
    /// posgw version.
    pub version: String,
    /// The HQ configuration version in force (none: no document from HQ applied).
    pub config_version: Option<u64>,
    /// The gateway's `[fleet] poll` in milliseconds: HQ counts it offline after three.
    pub poll_ms: u64,
    /// Each device and its state (`starting`, `connected`, `disconnected`).
    #[serde(default)]
    pub devices: Vec<DeviceBeat>,
    /// The journal's backlog.
    pub journal: JournalBeat,
    /// The uplink's state.
    pub uplink: UplinkBeat,
    /// The system clock.
    pub clock: ClockBeat,
    /// The last document from HQ the gateway refused, when the last one it got was refused.
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// HQ entries left out because a local one has the id (one sentence each).
    #[serde(default)]
    pub clashes: Vec<String>,
}

/// A device in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBeat {
    /// Device id.
    pub id: String,
    /// `starting`, `connected` or `disconnected`.
    pub state: String,
}

/// The journal in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalBeat {
    /// Records not yet acknowledged by HQ.
    pub backlog_records: u64,
    /// `ts` of the oldest of them (store-local RFC 3339), when known.
    pub oldest_backlog_ts: Option<String>,
}

/// The uplink in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkBeat {
    /// `disabled`, `idle`, `sending` or `retrying`.
    pub state: String,
    /// The last failure, cleared by the next success.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The clock in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockBeat {
    /// Whether the kernel says the clock is synchronised (NTP).
    pub synced: bool,
}

/// A refused document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Its version.
    pub version: u64,
    /// Why: the validators' `PATH:LINE:COL: message` lines.
    pub errors: Vec<String>,
    /// When (RFC 3339, store-local).
    pub at: String,
}

/// `text` cut to at most [`MAX_TEXT`] bytes, on a character boundary.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
