//! The MQTT prompt channel (CONTRACT.md section 4): open prompts are published to
//! `posgw/{store}/{station}/prompt`, resolutions to `posgw/{store}/{station}/resolved`, and POS
//! software answers by publishing `{"prompt":"…","option":"…"}` to
//! `posgw/{store}/{station}/answer`.
//!
//! (Being written; this stub only keeps the gateway's wiring in place.)

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::PromptsHandle;
use crate::config::MqttSettings;

/// Starts the channel on the store's broker. It runs until `shutdown` fires.
pub fn spawn(
    settings: &MqttSettings,
    store: &str,
    gateway: &str,
    prompts: PromptsHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let _ = (settings, store, gateway, prompts);
    Ok(tokio::spawn(async move { shutdown.cancelled().await }))
}
