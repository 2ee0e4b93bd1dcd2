//! What the rest of HQ uses: [`spawn`], [`NotifierHandle`] (enqueue, reload, status), the
//! [`Notice`] it delivers, the [`Delivered`] reports it sends back, and [`NotifyOptions`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::notifier::Notifier;
use super::outbox::rfc3339;
use super::settings::NotifySettings;
use crate::hq::metrics::HqMetrics;

/// Longest alert id, in bytes (it is part of every outbox key).
pub(crate) const MAX_ALERT_ID: usize = 512;
/// Largest notice, as stored (JSON), in bytes: an alert is a few KiB.
pub(crate) const MAX_NOTICE_BYTES: usize = 256 * 1024;
/// Requests that may wait for the notifier; more callers wait in `send`.
const QUEUE: usize = 64;

/// An alert to deliver, rendered once by the alert rules for every kind of target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Notice {
    /// Unique per alert; the delivery key is (alert_id, target id).
    pub alert_id: String,
    /// Short, e.g. "【预警】WZ-LC-001 医保核验通过率连续2天低于65%".
    pub title: String,
    /// The body in markdown (lists of days and cases, a link): WeCom, DingTalk and Feishu.
    pub markdown: String,
    /// The same as plain text, for kinds without markdown (none of today's four; stored so
    /// one can be added without changing the outbox format).
    pub text: String,
    /// The alert as JSON, posted as is to `webhook` targets.
    pub alert: serde_json::Value,
}

/// Sent on the `delivered` channel once a delivery is recorded on disk, and again for every
/// recorded delivery each time the notifier starts: receivers treat it idempotently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// The alert delivered.
    pub alert_id: String,
    /// The target it was delivered to.
    pub target: String,
    /// When the target answered success.
    pub delivered_at: DateTime<Utc>,
}

/// Where one (alert, target) delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeliveryState {
    /// Not delivered yet; attempts go on.
    Pending,
    /// Delivered.
    Delivered,
    /// Given up: the target was removed from the configuration.
    Abandoned,
}

/// One target's delivery of an alert, for the API (`status`); never holds a URL or secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DeliveryStatus {
    /// The target id.
    pub target: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the latest failed attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered (delivered only).
    #[serde(serialize_with = "rfc3339::serialize_option")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Why an enqueue (or another request) failed. Never holds a URL or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotifyError {
    /// Target ids that no `[[notify]]` names; nothing of the alert was queued.
    #[error("unknown notify target(s): {}; nothing was queued", .0.join(", "))]
    UnknownTargets(Vec<String>),
    /// The outbox holds its limit of undelivered entries; nothing of the alert was queued.
    #[error(
        "the notification outbox is full ({limit} undelivered entries); alert '{alert_id}' was \
         not queued (are the robots reachable?)"
    )]
    OutboxFull {
        /// The configured limit.
        limit: usize,
        /// The alert refused.
        alert_id: String,
    },
    /// The alert id is empty or too long to be a key.
    #[error("an alert id must be 1 to {MAX_ALERT_ID} bytes, found {0} bytes")]
    BadAlertId(usize),
    /// The notice is too large to store.
    #[error(
        "the notice of alert '{alert_id}' is {size} bytes, over the limit of {MAX_NOTICE_BYTES}"
    )]
    TooLarge {
        /// The alert refused.
        alert_id: String,
        /// Its size as stored.
        size: usize,
    },
    /// The outbox could not be written or flushed; the enqueue may be repeated.
    #[error("the notification outbox cannot be written: {0}")]
    Storage(String),
    /// The notifier task has stopped.
    #[error("the notifier has stopped")]
    Stopped,
}

/// Timings and bounds; the defaults suit production, tests shrink them.
#[derive(Debug, Clone)]
pub(crate) struct NotifyOptions {
    /// Delay before the first retry; it doubles with each failure (jittered).
    pub retry_initial: Duration,
    /// Longest delay between two attempts.
    pub retry_max: Duration,
    /// Most undelivered entries the outbox holds; enqueues beyond it are refused.
    pub max_pending: usize,
    /// Most attempts in flight at once (never two to one target).
    pub max_in_flight: usize,
    /// Time limit of one attempt, connection included.
    pub request_timeout: Duration,
    /// How long delivered and abandoned entries are kept (and re-enqueues of them ignored).
    pub retention: Duration,
    /// How often finished entries older than `retention` are removed.
    pub prune_every: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(10 * 60),
            max_pending: 10_000,
            max_in_flight: 4,
            request_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(30 * 24 * 3600),
            prune_every: Duration::from_secs(3600),
        }
    }
}

/// A request to the notifier task.
pub(super) enum Command {
    /// Queue `notice` for `targets`.
    Enqueue {
        notice: Notice,
        targets: Vec<String>,
        reply: oneshot::Sender<Result<(), NotifyError>>,
    },
    /// Replace the configured targets.
    Reload {
        targets: Vec<NotifySettings>,
        reply: oneshot::Sender<()>,
    },
    /// Where the deliveries of one alert stand.
    Status {
        alert_id: String,
        reply: oneshot::Sender<Result<Vec<DeliveryStatus>, NotifyError>>,
    },
}

/// The notifier's handle: cheap to clone; the task stops when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct NotifierHandle {
    /// The task's request queue.
    commands: mpsc::Sender<Command>,
}

/// Opens the outbox in `db` (tree `notify_outbox`), resumes its pending entries and starts the
/// notifier task. Recorded deliveries are reported again on `delivered` first.
///
/// Call from within the tokio runtime. Fails when the outbox cannot be opened or read.
pub(crate) fn spawn(
    db: &crate::hq::manage::ManageDb,
    targets: Vec<NotifySettings>,
    options: NotifyOptions,
    metrics: HqMetrics,
    delivered: mpsc::Sender<Delivered>,
) -> anyhow::Result<(NotifierHandle, JoinHandle<()>)> {
    let notifier = Notifier::open(db, targets, options, metrics, delivered)?;
    let (commands, receiver) = mpsc::channel(QUEUE);
    let task = tokio::spawn(notifier.run(receiver));
    Ok((NotifierHandle { commands }, task))
}

impl NotifierHandle {
    /// Queues `notice` for each of `targets` (ids of `[[notify]]`): one outbox entry per
    /// (alert, target), on disk (flushed) before this returns `Ok`. An entry that exists
    /// already (queued, delivered or abandoned) is left as it is, so enqueueing an alert again
    /// is harmless. Refused whole, with nothing queued, when a target is unknown or the outbox
    /// would exceed its limit.
    pub(crate) async fn enqueue(
        &self,
        notice: Notice,
        targets: &[String],
    ) -> Result<(), NotifyError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Enqueue {
            notice,
            targets: targets.to_vec(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| NotifyError::Stopped)?
    }

    /// Replaces the targets (SIGHUP). Pending entries of a target no longer configured are
    /// abandoned; a target whose URL or secret changed is used with the new ones from its
    /// next attempt on. Returns once applied.
    pub(crate) async fn reload(&self, targets: Vec<NotifySettings>) -> Result<(), NotifyError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Reload { targets, reply }).await?;
        answer.await.map_err(|_| NotifyError::Stopped)
    }

    /// Where each target's delivery of `alert_id` stands (empty when it was never enqueued,
    /// or finished longer ago than the retention).
    pub(crate) async fn status(&self, alert_id: &str) -> Result<Vec<DeliveryStatus>, NotifyError> {
        let (reply, answer) = oneshot::channel();
        self.request(Command::Status {
            alert_id: alert_id.to_string(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| NotifyError::Stopped)?
    }

    /// Sends a request to the task.
    async fn request(&self, command: Command) -> Result<(), NotifyError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NotifyError::Stopped)
    }
}
