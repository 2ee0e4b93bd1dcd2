//! The fleet task: one round per poll (fetch, apply through the configuration's owner, keep
//! the copy, record, heartbeat), then a jittered wait or, after failures, a longer one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Local, SecondsFormat};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{Client, Failure, Fetched};
use super::copy::{self, LastGood};
use super::wire::{self, ClockBeat, DeviceBeat, Heartbeat, JournalBeat, Refusal, UplinkBeat};
use super::{
    bounded_list, ApplyOutcome, ApplyRequest, ConfigEvent, FleetParts, FleetStatus, InForce,
};
use crate::config::FleetDocument;
use crate::devices::DeviceView;
use crate::journal::JournalHandle;
use crate::uplink::UplinkStatus;

/// Most polls a wait grows to after failures in a row.
const MAX_BACKOFF_POLLS: u32 = 4;
/// Longest `Retry-After` honoured.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// Each wait is the poll times a factor drawn from this range (±10 %).
const JITTER: std::ops::RangeInclusive<f64> = 0.9..=1.1;

/// The wait before the next round: `poll` (after `failures` failed rounds in a row: doubled
/// each time, up to [`MAX_BACKOFF_POLLS`] polls) times a random factor of 0.9 to 1.1, and no
/// shorter than HQ's `Retry-After` (up to 10 minutes).
pub fn next_wait(poll: Duration, failures: u32, retry_after: Option<Duration>) -> Duration {
    let factor = match failures {
        0 => 1,
        n => (1u32 << (n - 1).min(8)).min(MAX_BACKOFF_POLLS),
    };
    let wait = poll
        .saturating_mul(factor)
        .mul_f64(rand::thread_rng().gen_range(JITTER));
    wait.max(retry_after.unwrap_or_default().min(RETRY_AFTER_MAX))
}

pub(super) fn spawn(
    parts: FleetParts,
    stop: CancellationToken,
) -> anyhow::Result<(watch::Receiver<FleetStatus>, JoinHandle<()>)> {
    let client = Client::new(&parts.settings, &parts.store)?;
    let (status, receiver) = watch::channel(FleetStatus {
        url: parts.settings.url.clone(),
        poll_ms: parts.settings.poll.as_millis() as u64,
        ..FleetStatus::default()
    });
    let task = FleetTask {
        client,
        poll: parts.settings.poll,
        url: parts.settings.url,
        store: parts.store,
        gateway: parts.gateway,
        data_dir: parts.data_dir,
        current: parts.copy.map(|copy| (copy.etag, Arc::new(copy.document))),
        refused: None,
        journal: parts.journal,
        devices: parts.devices,
        uplink: parts.uplink,
        in_force: parts.in_force,
        owner: parts.owner,
        status,
        stop,
    };
    Ok((receiver, tokio::spawn(task.run())))
}

/// The task's state.
struct FleetTask {
    /// HTTP to HQ.
    client: Client,
    /// `[fleet] poll`.
    poll: Duration,
    /// `[fleet] url`, for the copy.
    url: String,
    /// `[gateway] store`.
    store: String,
    /// `[gateway] id`.
    gateway: String,
    /// Where the copy goes.
    data_dir: PathBuf,
    /// The document in force and its ETag.
    current: Option<(Option<String>, Arc<FleetDocument>)>,
    /// The last document refused (its ETag and version) and the generation of the local
    /// configuration it was refused with: not tried again until that changes.
    refused: Option<(Option<String>, u64, u64)>,
    /// For records and the backlog.
    journal: JournalHandle,
    /// For heartbeats.
    devices: Arc<[DeviceView]>,
    /// For heartbeats.
    uplink: watch::Receiver<UplinkStatus>,
    /// The configuration in force.
    in_force: watch::Receiver<InForce>,
    /// Its owner.
    owner: mpsc::Sender<ApplyRequest>,
    /// What the task publishes.
    status: watch::Sender<FleetStatus>,
    /// The gateway stops.
    stop: CancellationToken,
}

impl FleetTask {
    async fn run(mut self) {
        loop {
            let fetched = self.fetch().await;
            let beat = self.heartbeat().await;
            let failure = fetched.err().or(beat.err());
            let failures = match &failure {
                None => 0,
                Some(_) => self.status.borrow().failures.saturating_add(1),
            };
            let retry_after = failure.as_ref().and_then(|failure| failure.retry_after);
            // Logged once per streak: the status holds the latest error.
            match &failure {
                Some(failure) if failures == 1 => tracing::warn!(
                    error = failure.error,
                    "fleet: HQ cannot be asked; the configuration in force stays, retrying"
                ),
                None if self.status.borrow().failures > 0 => {
                    tracing::info!("fleet: HQ answers again");
                }
                _ => {}
            }
            self.status.send_modify(|status| {
                status.failures = failures;
                status.last_error = failure.map(|failure| failure.error);
            });
            let wait = next_wait(self.poll, failures, retry_after);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// One fetch, and what follows from its answer.
    async fn fetch(&mut self) -> Result<(), Failure> {
        let etag = self.current.as_ref().and_then(|(etag, _)| etag.clone());
        let fetched = tokio::select! {
            fetched = self.client.fetch(etag.as_deref()) => fetched,
            () = self.stop.cancelled() => return Ok(()),
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(failure) => {
                tracing::debug!(error = failure.error, "fleet: fetch failed");
                return Err(failure);
            }
        };
        self.status
            .send_modify(|status| status.last_fetch_at = Some(now()));
        match fetched {
            Fetched::NotModified => {}
            // Its version is unknown: 0.
            Fetched::Unusable { etag, error } => self.refuse(etag, 0, vec![error]).await,
            Fetched::Document { etag, document } => self.apply(etag, document).await,
        }
        Ok(())
    }

    /// Has the owner put `document` in force; keeps the copy or records the refusal.
    async fn apply(&mut self, etag: Option<String>, document: FleetDocument) {
        let generation = self.in_force.borrow().generation;
        if let Some((refused_etag, version, at_generation)) = &self.refused {
            if *refused_etag == etag && *version == document.version && *at_generation == generation
            {
                return;
            }
        }
        let document = Arc::new(document);
        let (reply, answer) = oneshot::channel();
        let request = ApplyRequest {
            document: document.clone(),
            source: "hq",
            reply,
        };
        if self.owner.send(request).await.is_err() {
            return;
        }
        let Ok(outcome) = answer.await else {
            return;
        };
        let version = document.version;
        match outcome {
            ApplyOutcome::Applied { changed, clashes } => {
                if !clashes.is_empty() && changed {
                    for clash in &clashes {
                        tracing::warn!("fleet: {clash}");
                    }
                }
                if changed {
                    let in_force = self.in_force.borrow().clone();
                    ConfigEvent::applied(version, "hq", &in_force)
                        .record(&self.journal)
                        .await;
                }
                self.refused = None;
                self.status.send_modify(|status| status.refused = None);
                self.keep_copy(etag.clone(), &document).await;
                self.current = Some((etag, document));
            }
            ApplyOutcome::Refused { errors } => {
                self.refuse(etag, version, errors).await;
            }
        }
    }

    /// Records a refused document (once), for the status and the next heartbeats.
    async fn refuse(&mut self, etag: Option<String>, version: u64, errors: Vec<String>) {
        let generation = self.in_force.borrow().generation;
        if self
            .refused
            .as_ref()
            .is_some_and(|refused| *refused == (etag.clone(), version, generation))
        {
            return;
        }
        tracing::error!(
            version,
            "fleet: HQ's configuration refused; the configuration in force stays:\n{}",
            errors.join("\n")
        );
        let errors = bounded_list(&errors);
        ConfigEvent::refused(version, "hq", errors.clone())
            .record(&self.journal)
            .await;
        self.refused = Some((etag, version, generation));
        self.status.send_modify(|status| {
            status.refused = Some(Refusal {
                version,
                errors,
                at: now(),
            });
        });
    }

    /// Writes the last good copy (a failure is logged: the document is in force anyway).
    async fn keep_copy(&self, etag: Option<String>, document: &FleetDocument) {
        let copy = LastGood {
            store: self.store.clone(),
            url: self.url.clone(),
            etag,
            fetched_at: now(),
            document: document.clone(),
        };
        let data_dir = self.data_dir.clone();
        match tokio::task::spawn_blocking(move || copy::save(&data_dir, &copy)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(
                %error,
                "fleet: cannot write the last good copy (in force, but not kept for a restart)"
            ),
            Err(error) => tracing::error!(%error, "fleet: writing the last good copy failed"),
        }
    }

    /// Posts a heartbeat.
    async fn heartbeat(&self) -> Result<(), Failure> {
        let heartbeat = self.heartbeat_body();
        let sent = tokio::select! {
            sent = self.client.heartbeat(&heartbeat) => sent,
            () = self.stop.cancelled() => return Ok(()),
        };
        match sent {
            Ok(()) => {
                self.status
                    .send_modify(|status| status.last_heartbeat_at = Some(now()));
                Ok(())
            }
            Err(failure) => {
                tracing::debug!(error = failure.error, "fleet: heartbeat failed");
                Err(failure)
            }
        }
    }

    /// What the gateway tells HQ about itself.
    fn heartbeat_body(&self) -> Heartbeat {
        let in_force = self.in_force.borrow().clone();
        let uplink = self.uplink.borrow().clone();
        let stats = self.journal.stats();
        Heartbeat {
            gateway: self.gateway.clone(),
            version: crate::VERSION.to_string(),
            config_version: in_force.version,
            poll_ms: self.poll.as_millis() as u64,
            devices: self
                .devices
                .iter()
                .take(wire::MAX_LIST)
                .map(|device| DeviceBeat {
                    id: device.id.clone(),
                    state: serde_json::to_value(device.status.borrow().state)
                        .ok()
                        .and_then(|state| state.as_str().map(str::to_string))
                        .unwrap_or_default(),
                })
                .collect(),
            journal: JournalBeat {
                backlog_records: stats.backlog_records,
                oldest_backlog_ts: uplink.oldest_pending_ts.clone(),
            },
            uplink: UplinkBeat {
                state: serde_json::to_value(uplink.state)
                    .ok()
                    .and_then(|state| state.as_str().map(str::to_string))
                    .unwrap_or_default(),
                last_error: uplink.last_error.as_deref().map(wire::bounded),
            },
            clock: ClockBeat {
                synced: crate::journal::clock::kernel_clock_synced(),
            },
            refused: self.status.borrow().refused.clone(),
            clashes: bounded_list(&in_force.clashes),
        }
    }
}

/// Now, store-local RFC 3339 with milliseconds.
fn now() -> String {
    Local::now().to_rfc3339_opts(SecondsFormat::Millis, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_and_back_off_to_four_polls() {
        let poll = Duration::from_secs(60);
        for _ in 0..200 {
            let wait = next_wait(poll, 0, None);
            assert!((54.0..=66.0).contains(&wait.as_secs_f64()), "{wait:?}");
        }
        let second = next_wait(poll, 2, None).as_secs_f64();
        assert!((108.0..=132.0).contains(&second), "{second}");
        for failures in [3, 4, 30, u32::MAX] {
            let wait = next_wait(poll, failures, None).as_secs_f64();
            assert!((216.0..=264.0).contains(&wait), "{failures}: {wait}");
        }
        let asked = next_wait(poll, 1, Some(Duration::from_secs(300)));
        assert_eq!(asked, Duration::from_secs(300));
        let capped = next_wait(poll, 1, Some(Duration::from_secs(86_400)));
        assert_eq!(capped, RETRY_AFTER_MAX);
    }
}
