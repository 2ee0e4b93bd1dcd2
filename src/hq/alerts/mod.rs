//! Alerts: the `[[alert]]` rules run over the daily figures, the alerts they open, and each
//! alert's life (open → delivered → acknowledged → resolved). One task owns the alerts (in
//! memory and in the `alerts` tree of HQ's management database); the HTTP handlers and the
//! timer talk to it through an [`AlertsHandle`].
//!
//! # Evaluation
//!
//! Every `[hq] evaluate_every` (and at start, and on `POST /v1/alerts/evaluate`) each rule is
//! evaluated for every store it watches (`regions`, default all), over the daily figures that
//! ingest keeps (`daily`): each store-local day's value of the metric, then the runs of
//! consecutive breaching days (`evaluate`). A run of at least `days` days opens an alert unless
//! an alert of the same rule and store already covers one of its days, so a rule fires once
//! per run of days: a second evaluation, a restart (alerts are persisted before they are
//! announced), a run growing by a day or a late batch moving its first day earlier do not
//! fire it again. Only runs whose last day is within the last [`RECENT_DAYS`] days open
//! alerts: a new HQ replaying months of history does not page supervisors about last spring.
//!
//! # Messages and delivery
//!
//! An opened alert lists the failing cases of its last `attach_days` days (time, clerk,
//! customer reference, symptom keywords: HQ never holds names or member ids) and goes to the
//! `[[notify]]` targets of the store's region through the notifier's outbox, which retries
//! until each robot answers success. The outbox reports deliveries back; the first sets the
//! alert's `delivered_at`. At start, alerts not yet delivered are handed to the outbox again
//! (it ignores what it already holds), closing the window between persisting an alert and
//! enqueueing it.
//!
//! # Lifecycle
//!
//! `ack` (once: 409 after) records who and when and the minutes since opening; `resolve`
//! needs a written action (422 without) and acknowledges an alert not acknowledged yet. An
//! alert counts as answered in time for `alert_response` when acknowledged within 24 h of
//! opening.
//!
//! # Bounds
//!
//! An alert keeps at most [`MAX_CASES`] cases (and the total count); the message lists the
//! first [`MESSAGE_CASES`]. Alerts are kept for [`KEEP_DAYS`] days after opening.

mod cases;
mod evaluate;
mod message;
pub(crate) mod rules;
mod task;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::RegionSettings;
use super::notify::{Delivered, DeliveryStatus, NotifierHandle, NotifySettings};
use super::storage::StoreHandle;
use super::yardsticks::AlertFact;
pub(crate) use rules::AlertRule;

/// Runs ending longer ago than this many days do not open alerts.
pub(crate) const RECENT_DAYS: i64 = 7;
/// Most cases an alert keeps.
pub(crate) const MAX_CASES: usize = 200;
/// Most cases a message lists.
pub(crate) const MESSAGE_CASES: usize = 20;
/// Days an alert is kept after it opened.
const KEEP_DAYS: i64 = 400;
/// Commands waiting for the alert task.
const QUEUE: usize = 64;
/// Longest `note` or `action`, in characters.
const MAX_TEXT_CHARS: usize = 2000;
/// Key of the next alert number in the `alerts` tree.
const NEXT_KEY: &[u8] = b"next";
/// Prefix of alert keys in the `alerts` tree (then the number, u64 BE).
const ALERT_PREFIX: u8 = b'a';

/// An alert, as stored and as served by `GET /v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Alert {
    /// `a-N`.
    pub id: String,
    /// The rule's id.
    pub rule: String,
    /// One line saying what happened.
    pub title: String,
    /// The rule's metric.
    pub metric: String,
    /// `{"below": 0.65}` or `{"above": …}`.
    pub threshold: BTreeMap<String, f64>,
    /// The store.
    pub store: String,
    /// Its region, if it has one.
    pub region: Option<String>,
    /// `open`, `acknowledged` or `resolved`.
    pub state: AlertState,
    /// The days of the run, `YYYY-MM-DD`.
    pub days: Vec<String>,
    /// The metric's value on each day of the run.
    pub values: Vec<AlertValue>,
    /// When it opened (RFC 3339, UTC).
    pub opened_at: String,
    /// When the first target confirmed delivery.
    pub delivered_at: Option<String>,
    /// When it was acknowledged.
    pub acknowledged_at: Option<String>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// The acknowledger's note.
    pub note: Option<String>,
    /// When it was resolved.
    pub resolved_at: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// What was done.
    pub action: Option<String>,
    /// Minutes from opening to acknowledgement.
    pub response_minutes: Option<i64>,
    /// The failing cases of the last `attach_days` days (at most [`MAX_CASES`]).
    pub cases: Vec<AlertCase>,
    /// How many failing cases there were in all.
    pub cases_total: usize,
    /// The `[[notify]]` targets it was sent to.
    pub targets: Vec<String>,
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AlertState {
    /// Opened (delivered or not), nobody acknowledged it yet.
    Open,
    /// Someone took it on.
    Acknowledged,
    /// Done, with a written action.
    Resolved,
}

impl AlertState {
    /// The word used in `?state=`.
    pub(crate) fn parse(text: &str) -> Option<AlertState> {
        match text {
            "open" => Some(AlertState::Open),
            "acknowledged" => Some(AlertState::Acknowledged),
            "resolved" => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

/// One day's value in an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AlertValue {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// The metric's value.
    pub value: f64,
    /// The cases it rests on.
    pub count: u64,
}

/// A failing case: never a name or a member id (HQ has neither).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AlertCase {
    /// When the consultation or prompt opened (else the record's `ts`), as written.
    pub time: String,
    /// The clerk.
    pub clerk: Option<String>,
    /// The customer reference (a keyed hash), if any.
    pub customer: Option<String>,
    /// Symptom keywords: the values of the consultation's multiple-choice steps.
    pub symptoms: Vec<String>,
    /// The measured step's value (or `跳过: reason`, or null), or the prompt's outcome.
    pub value: Option<String>,
}

/// Why a lifecycle request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LifecycleError {
    /// No alert has that id (404).
    NotFound,
    /// It was acknowledged before (409).
    AlreadyAcknowledged,
    /// It was resolved before (409).
    AlreadyResolved,
    /// The action or note is not acceptable (422); the text says why.
    Invalid(String),
    /// The database failed (503).
    Storage(String),
}

/// What the alert task needs to know of the configuration; replaced on reload.
#[derive(Debug, Clone, Default)]
pub(crate) struct AlertSettings {
    /// The rules.
    pub rules: Vec<AlertRule>,
    /// The regions (their stores and `notify` targets).
    pub regions: Vec<RegionSettings>,
    /// The `[[notify]]` targets, handed to the notifier.
    pub notify: Vec<NotifySettings>,
    /// The configured stores: others (removed from `[[store]]`) are not evaluated.
    pub stores: std::collections::HashSet<String>,
    /// The dashboard's public address, for the link in messages.
    pub public_url: Option<String>,
}

impl AlertSettings {
    /// Region id of each store.
    fn store_regions(&self) -> HashMap<&str, &RegionSettings> {
        self.regions
            .iter()
            .flat_map(|region| {
                region
                    .stores
                    .iter()
                    .map(move |store| (store.as_str(), region))
            })
            .collect()
    }
}

/// Commands to the alert task.
pub(super) enum Command {
    Evaluate(oneshot::Sender<anyhow::Result<Vec<Alert>>>),
    List(oneshot::Sender<Vec<Alert>>),
    Get(String, oneshot::Sender<Option<Alert>>),
    Facts(oneshot::Sender<Vec<AlertFact>>),
    Ack {
        id: String,
        by: String,
        note: Option<String>,
        reply: oneshot::Sender<Result<Alert, LifecycleError>>,
    },
    Resolve {
        id: String,
        by: String,
        action: String,
        reply: oneshot::Sender<Result<Alert, LifecycleError>>,
    },
    Reload(AlertSettings),
    Delivery(String, oneshot::Sender<Vec<DeliveryStatus>>),
    Stop(oneshot::Sender<()>),
}

/// The way to the alert task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AlertsHandle {
    commands: mpsc::Sender<Command>,
}

/// The task stopped (HQ is shutting down).
fn gone() -> anyhow::Error {
    anyhow::anyhow!("the alert task has stopped")
}

impl AlertsHandle {
    /// Sends the command `make` builds around a reply channel and waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Runs every rule now; the alerts it opened.
    pub(crate) async fn evaluate(&self) -> anyhow::Result<Vec<Alert>> {
        self.ask(Command::Evaluate).await?
    }

    /// Every alert kept, newest first.
    pub(crate) async fn list(&self) -> anyhow::Result<Vec<Alert>> {
        self.ask(Command::List).await
    }

    /// One alert.
    pub(crate) async fn get(&self, id: &str) -> anyhow::Result<Option<Alert>> {
        self.ask(|reply| Command::Get(id.to_string(), reply)).await
    }

    /// Acknowledges `id` as `by`.
    pub(crate) async fn ack(
        &self,
        id: &str,
        by: &str,
        note: Option<String>,
    ) -> Result<Alert, LifecycleError> {
        self.ask(|reply| Command::Ack {
            id: id.to_string(),
            by: by.to_string(),
            note,
            reply,
        })
        .await
        .map_err(|error| LifecycleError::Storage(error.to_string()))?
    }

    /// Resolves `id` as `by` with `action`.
    pub(crate) async fn resolve(
        &self,
        id: &str,
        by: &str,
        action: String,
    ) -> Result<Alert, LifecycleError> {
        self.ask(|reply| Command::Resolve {
            id: id.to_string(),
            by: by.to_string(),
            action,
            reply,
        })
        .await
        .map_err(|error| LifecycleError::Storage(error.to_string()))?
    }

    /// Where each target's delivery of alert `id` stands (never a URL or secret).
    pub(crate) async fn delivery(&self, id: &str) -> anyhow::Result<Vec<DeliveryStatus>> {
        self.ask(|reply| Command::Delivery(id.to_string(), reply))
            .await
    }

    /// Stops the task and waits until it, and the notifier it owns, let go of the database.
    pub(crate) async fn stop(&self) {
        let _ = self.ask(Command::Stop).await;
    }

    /// What `alert_response` needs of every alert (built in the task: no alert is copied).
    pub(crate) async fn facts(&self) -> anyhow::Result<Vec<AlertFact>> {
        self.ask(Command::Facts).await
    }

    /// Replaces the rules, regions and targets without waiting (SIGHUP; the settings apply
    /// in the order of the reloads). False when the task's queue is full or it stopped.
    pub(crate) fn reload_now(&self, settings: AlertSettings) -> bool {
        self.commands.try_send(Command::Reload(settings)).is_ok()
    }
}

/// An alert as the yardsticks see it.
pub(super) fn fact_of(alert: &Alert) -> AlertFact {
    let parse = |text: &Option<String>| {
        text.as_deref()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc))
    };
    AlertFact {
        store: alert.store.clone(),
        region: alert.region.clone(),
        opened_at: DateTime::parse_from_rfc3339(&alert.opened_at)
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or_default(),
        acknowledged_at: parse(&alert.acknowledged_at),
        acknowledged_by: alert.acknowledged_by.clone(),
    }
}

/// Starts the alert task over `db`'s `alerts` tree. It evaluates at start and every
/// `every`, takes deliveries from `delivered`, and stops when every handle is dropped.
pub(crate) fn spawn(
    db: &crate::hq::manage::ManageDb,
    store: StoreHandle,
    notifier: (NotifierHandle, JoinHandle<()>),
    delivered: mpsc::Receiver<Delivered>,
    settings: AlertSettings,
    every: Duration,
) -> anyhow::Result<(AlertsHandle, JoinHandle<()>)> {
    let tree = db.open_tree("alerts").context("opening the alerts tree")?;
    let mut alerts = BTreeMap::new();
    for entry in tree.scan_prefix([ALERT_PREFIX]) {
        let (key, value) = entry.context("reading the alerts tree")?;
        match serde_json::from_slice::<Alert>(&value) {
            Ok(alert) => {
                alerts.insert(number_of_key(&key), alert);
            }
            Err(error) => tracing::error!(%error, "an unreadable alert was skipped"),
        }
    }
    let next = match tree.get(NEXT_KEY).context("reading the alerts tree")? {
        Some(value) => u64::from_be_bytes(value.as_ref().try_into().unwrap_or([0; 8])),
        None => 1,
    }
    .max(alerts.keys().next_back().map_or(1, |last| last + 1));
    let (commands, receiver) = mpsc::channel(QUEUE);
    let (notifier, notifier_task) = notifier;
    let task = task::AlertTask {
        tree,
        db: db.clone(),
        store,
        notifier,
        notifier_task,
        settings,
        alerts,
        next,
        unannounced: Default::default(),
    };
    let join = tokio::spawn(task.run(receiver, delivered, every));
    Ok((AlertsHandle { commands }, join))
}

/// The number of an alert key.
pub(super) fn number_of_key(key: &[u8]) -> u64 {
    key.get(1..9)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The key of alert number `number`.
pub(super) fn key_of(number: u64) -> [u8; 9] {
    let mut key = [ALERT_PREFIX; 9];
    key[1..].copy_from_slice(&number.to_be_bytes());
    key
}

/// The number in an alert id `a-N`.
pub(super) fn number_of_id(id: &str) -> Option<u64> {
    id.strip_prefix("a-")?.parse().ok()
}

/// RFC 3339 in UTC with milliseconds.
pub(super) fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}
