//! The notifier task: the one owner of the outbox. It takes requests from its handles,
//! schedules attempts (at most one in flight per target, `max_in_flight` over all), records
//! each attempt's outcome, and reports recorded deliveries.
//!
//! In memory it keeps the pending entries (bounded by `max_pending`) with their notices and
//! a queue of due times per target; delivered and abandoned entries live only in sled. Every
//! change is written to sled before memory follows; only the promises flush (an accepted
//! enqueue, a delivery before it is reported): losing an attempt count in a crash costs
//! nothing but a number.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::handle::{
    Command, Delivered, DeliveryState, DeliveryStatus, Notice, NotifyError, NotifyOptions,
    MAX_ALERT_ID, MAX_NOTICE_BYTES,
};
use super::outbox::{Entry, Key, Outbox, State};
use super::send::Sender;
use super::settings::NotifySettings;
use crate::hq::metrics::HqMetrics;

/// An undelivered entry as the task holds it.
struct Pending {
    /// When it was enqueued.
    created_at: DateTime<Utc>,
    /// Attempts finished so far.
    attempts: u32,
    /// Why the latest attempt failed.
    last_error: Option<String>,
    /// When the next attempt is due, by the wall clock (what is stored).
    next_attempt_at: DateTime<Utc>,
    /// The same on the monotonic clock (what is scheduled); in its target's queue unless in
    /// flight.
    due: Instant,
    /// What to deliver.
    notice: Arc<Notice>,
}

impl Pending {
    /// The entry as stored.
    fn entry(&self) -> Entry {
        Entry {
            created_at: self.created_at,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            state: State::Pending {
                next_attempt_at: self.next_attempt_at,
                notice: (*self.notice).clone(),
            },
        }
    }

    /// The entry as stored once finished in `state`.
    fn finished(&self, state: State) -> Entry {
        Entry {
            created_at: self.created_at,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            state,
        }
    }
}

/// Most delivery reports waiting for the receiver of `Delivered`.
const REPORTS_MAX: usize = 10_000;

/// What one attempt task returns.
type Outcome = (Key, Result<(), String>);

/// What woke the task.
enum Event {
    /// A request from a handle.
    Command(Command),
    /// An attempt finished (or its task failed).
    Finished(Result<(tokio::task::Id, Outcome), tokio::task::JoinError>),
    /// An entry became due.
    Due,
    /// The receiver of `Delivered` has room for one more.
    Report(Result<mpsc::OwnedPermit<Delivered>, mpsc::error::SendError<()>>),
    /// Time to remove old finished entries.
    Prune,
}

/// The task's state.
pub(super) struct Notifier {
    /// The outbox tree.
    outbox: Outbox,
    /// The configured targets by id.
    targets: HashMap<String, Arc<NotifySettings>>,
    /// Timings and bounds.
    options: NotifyOptions,
    /// `posgw_hq_notify_*`.
    metrics: HqMetrics,
    /// Posts messages.
    sender: Sender,
    /// Undelivered entries, in flight or waiting.
    pending: HashMap<Key, Pending>,
    /// Per target, its waiting entries by due time (entries in flight are not in it).
    queues: HashMap<String, BTreeSet<(Instant, Key)>>,
    /// Per target with an attempt in flight, that attempt's entry.
    busy: HashMap<String, Key>,
    /// The attempts in flight.
    in_flight: JoinSet<Outcome>,
    /// Which entry each attempt task is for (to recover it when a task panics).
    tasks: HashMap<tokio::task::Id, Key>,
    /// Recorded deliveries not yet handed to `delivered`: the ones found at start and the
    /// new ones while the receiver is behind; at most [`REPORTS_MAX`].
    reports: VecDeque<Delivered>,
    /// Reports dropped because `reports` was full, since the last time that was logged.
    reports_dropped: u64,
    /// Where deliveries are reported; `None` once the receiver has gone.
    delivered: Option<mpsc::Sender<Delivered>>,
}

impl Notifier {
    /// Opens the outbox, removes finished entries past the retention, resumes the pending
    /// ones (abandoning those whose target is gone) and lines up the recorded deliveries for
    /// reporting again.
    pub(super) fn open(
        db: &crate::hq::manage::ManageDb,
        targets: Vec<NotifySettings>,
        options: NotifyOptions,
        metrics: HqMetrics,
        delivered: mpsc::Sender<Delivered>,
    ) -> anyhow::Result<Notifier> {
        let outbox = Outbox::open(db)?;
        let sender = Sender::new(options.request_timeout)?;
        let mut notifier = Notifier {
            outbox,
            targets: HashMap::new(),
            options,
            metrics,
            sender,
            pending: HashMap::new(),
            queues: HashMap::new(),
            busy: HashMap::new(),
            in_flight: JoinSet::new(),
            tasks: HashMap::new(),
            reports: VecDeque::new(),
            reports_dropped: 0,
            delivered: Some(delivered),
        };
        notifier.set_targets(targets);
        notifier.prune();
        let (entries, bad_keys) = notifier
            .outbox
            .load()
            .map_err(|error| anyhow::anyhow!("cannot read the notification outbox: {error}"))?;
        for key in bad_keys {
            tracing::error!(
                key,
                "notify: an outbox key cannot be read; the entry is left as is"
            );
        }
        let now = now_ms();
        let mut abandoned = Vec::new();
        for (key, entry) in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(reason) => {
                    tracing::error!(
                        alert = %key.alert_id,
                        target = %key.target,
                        %reason,
                        "notify: an outbox entry cannot be read; it is left as is"
                    );
                    continue;
                }
            };
            match entry.state {
                State::Pending {
                    next_attempt_at,
                    notice,
                } => {
                    let pending = Pending {
                        created_at: entry.created_at,
                        attempts: entry.attempts,
                        last_error: entry.last_error,
                        next_attempt_at,
                        due: instant_of(next_attempt_at, now),
                        notice: Arc::new(notice),
                    };
                    if notifier.targets.contains_key(&key.target) {
                        notifier.schedule(key, pending);
                    } else {
                        abandoned.push((key, pending));
                    }
                }
                State::Delivered { delivered_at } => notifier.report(Delivered {
                    alert_id: key.alert_id,
                    target: key.target,
                    delivered_at,
                }),
                State::Abandoned { .. } => {}
            }
        }
        for (key, pending) in abandoned {
            notifier.abandon(key, pending);
        }
        if !notifier.pending.is_empty() {
            tracing::info!(
                pending = notifier.pending.len(),
                "notify: resuming undelivered notifications"
            );
        }
        notifier.count_pending();
        Ok(notifier)
    }

    /// Serves requests and runs attempts until the last handle is dropped. Attempts still in
    /// flight then are cancelled; their entries stay pending and are tried at the next start.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // `interval` refuses a zero period.
        let every = self.options.prune_every.max(Duration::from_millis(1));
        let mut prune = tokio::time::interval_at(Instant::now() + every, every);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_due();
            let wake = self.next_wake();
            let has_reports = self.delivered.is_some() && !self.reports.is_empty();
            let reporter = self.delivered.clone();
            let report = async move {
                match reporter {
                    Some(reporter) => reporter.reserve_owned().await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => Event::Command(command),
                    None => break,
                },
                Some(finished) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                    Event::Finished(finished)
                }
                () = sleep_until(wake), if wake.is_some() => Event::Due,
                permit = report, if has_reports => Event::Report(permit),
                _ = prune.tick() => Event::Prune,
            };
            match event {
                Event::Command(command) => self.command(command).await,
                Event::Finished(Ok((id, (key, result)))) => {
                    self.tasks.remove(&id);
                    self.finish(key, result).await;
                }
                Event::Finished(Err(error)) => {
                    if let Some(key) = self.tasks.remove(&error.id()) {
                        self.finish(key, Err("the delivery task failed".to_string()))
                            .await;
                    }
                }
                Event::Due => {}
                Event::Report(Ok(permit)) => {
                    if let Some(delivered) = self.reports.pop_front() {
                        permit.send(delivered);
                    }
                }
                Event::Report(Err(_)) => {
                    tracing::info!(
                        "notify: the receiver of delivery reports has gone; reports stop"
                    );
                    self.delivered = None;
                    self.reports.clear();
                }
                Event::Prune => self.prune(),
            }
        }
    }

    /// Serves one request.
    async fn command(&mut self, command: Command) {
        match command {
            Command::Enqueue {
                notice,
                targets,
                reply,
            } => {
                let result = self.enqueue(notice, targets).await;
                let _ = reply.send(result);
            }
            Command::Reload { targets, reply } => {
                self.set_targets(targets);
                let _ = reply.send(());
            }
            Command::Status { alert_id, reply } => {
                let _ = reply.send(self.status(&alert_id));
            }
        }
    }

    /// Queues `notice` for `targets` (see `NotifierHandle::enqueue`).
    async fn enqueue(&mut self, notice: Notice, targets: Vec<String>) -> Result<(), NotifyError> {
        if notice.alert_id.is_empty() || notice.alert_id.len() > MAX_ALERT_ID {
            return Err(NotifyError::BadAlertId(notice.alert_id.len()));
        }
        let size = serde_json::to_vec(&notice).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_NOTICE_BYTES {
            return Err(NotifyError::TooLarge {
                alert_id: notice.alert_id,
                size,
            });
        }
        let mut unique: Vec<String> = Vec::new();
        for target in targets {
            if !unique.contains(&target) {
                unique.push(target);
            }
        }
        let unknown: Vec<String> = unique
            .iter()
            .filter(|target| !self.targets.contains_key(*target))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(NotifyError::UnknownTargets(unknown));
        }
        if unique.is_empty() {
            return Ok(());
        }
        let mut new = Vec::new();
        for target in unique {
            let key = Key {
                alert_id: notice.alert_id.clone(),
                target,
            };
            if !self.outbox.contains(&key).map_err(NotifyError::Storage)? {
                new.push(key);
            }
        }
        if self.pending.len() + new.len() > self.options.max_pending {
            self.metrics.notify_refused.inc_by(new.len() as u64);
            tracing::error!(
                alert = %notice.alert_id,
                entries = new.len(),
                limit = self.options.max_pending,
                "notify: the outbox is full; the alert's notifications were refused"
            );
            return Err(NotifyError::OutboxFull {
                limit: self.options.max_pending,
                alert_id: notice.alert_id,
            });
        }
        let now = now_ms();
        let notice = Arc::new(notice);
        let entries: Vec<(Key, Pending)> = new
            .into_iter()
            .map(|key| {
                let pending = Pending {
                    created_at: now,
                    attempts: 0,
                    last_error: None,
                    next_attempt_at: now,
                    due: Instant::now(),
                    notice: notice.clone(),
                };
                (key, pending)
            })
            .collect();
        let stored: Vec<(Key, Entry)> = entries
            .iter()
            .map(|(key, pending)| (key.clone(), pending.entry()))
            .collect();
        self.outbox
            .insert_all(&stored)
            .map_err(NotifyError::Storage)?;
        // Written: from here on the entries are the outbox's, whether or not the flush works
        // (a failed flush is answered with an error; the caller's retry finds them and
        // flushes again).
        for (key, pending) in entries {
            self.schedule(key, pending);
        }
        self.count_pending();
        // Also when every entry existed already: an earlier write of them may not be on disk.
        self.outbox.flush().await.map_err(|error| {
            tracing::error!(%error, "notify: the outbox cannot be flushed");
            NotifyError::Storage(error)
        })
    }

    /// Replaces the targets; abandons the waiting entries of targets no longer configured.
    /// An entry in flight to such a target is settled when its attempt ends.
    fn set_targets(&mut self, targets: Vec<NotifySettings>) {
        self.targets = targets
            .into_iter()
            .map(|target| (target.id.clone(), Arc::new(target)))
            .collect();
        let gone: Vec<Key> = self
            .pending
            .keys()
            .filter(|key| !self.targets.contains_key(&key.target))
            .filter(|key| self.busy.get(&key.target) != Some(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(pending) = self.take(&key) {
                self.abandon(key, pending);
            }
        }
        self.count_pending();
    }

    /// The deliveries of one alert, from the outbox.
    fn status(&self, alert_id: &str) -> Result<Vec<DeliveryStatus>, NotifyError> {
        let entries = self
            .outbox
            .for_alert(alert_id)
            .map_err(NotifyError::Storage)?;
        let mut statuses = Vec::new();
        for (key, entry) in entries {
            let Ok(entry) = entry else { continue };
            let (state, next_attempt_at, delivered_at) = match entry.state {
                State::Pending {
                    next_attempt_at, ..
                } => (DeliveryState::Pending, Some(next_attempt_at), None),
                State::Delivered { delivered_at } => {
                    (DeliveryState::Delivered, None, Some(delivered_at))
                }
                State::Abandoned { .. } => (DeliveryState::Abandoned, None, None),
            };
            statuses.push(DeliveryStatus {
                target: key.target,
                state,
                attempts: entry.attempts,
                last_error: entry.last_error,
                next_attempt_at,
                delivered_at,
            });
        }
        Ok(statuses)
    }

    /// Starts attempts for due entries of idle targets, earliest first, while there is room.
    fn start_due(&mut self) {
        let now = Instant::now();
        while self.in_flight.len() < self.options.max_in_flight.max(1) {
            let next = self
                .queues
                .iter()
                .filter(|(target, _)| !self.busy.contains_key(*target))
                .filter_map(|(_, queue)| queue.first())
                .filter(|(due, _)| *due <= now)
                .min()
                .cloned();
            let Some((due, key)) = next else { break };
            self.unqueue(&key, due);
            self.launch(key);
        }
    }

    /// When the next waiting entry of an idle target is due, if there is room to start it.
    fn next_wake(&self) -> Option<Instant> {
        if self.in_flight.len() >= self.options.max_in_flight.max(1) {
            return None;
        }
        self.queues
            .iter()
            .filter(|(target, _)| !self.busy.contains_key(*target))
            .filter_map(|(_, queue)| queue.first().map(|(due, _)| *due))
            .min()
    }

    /// Starts one attempt for `key` (taken off its queue already).
    fn launch(&mut self, key: Key) {
        let Some(pending) = self.pending.get(&key) else {
            return;
        };
        let Some(target) = self.targets.get(&key.target).cloned() else {
            // Not reachable: set_targets abandons the waiting entries of removed targets.
            if let Some(pending) = self.take(&key) {
                self.abandon(key, pending);
            }
            return;
        };
        let notice = pending.notice.clone();
        let sender = self.sender.clone();
        self.busy.insert(key.target.clone(), key.clone());
        let task_key = key.clone();
        let handle = self.in_flight.spawn(async move {
            let result = sender.attempt(target, notice).await;
            (task_key, result)
        });
        self.tasks.insert(handle.id(), key);
    }

    /// Records the outcome of an attempt for `key`.
    async fn finish(&mut self, key: Key, result: Result<(), String>) {
        if self.busy.get(&key.target) == Some(&key) {
            self.busy.remove(&key.target);
        }
        let Some(mut pending) = self.pending.remove(&key) else {
            return;
        };
        pending.attempts = pending.attempts.saturating_add(1);
        let result = match result {
            Ok(()) => self.record_delivery(&key, &pending).await,
            Err(reason) => Err(reason),
        };
        match result {
            Ok(delivered_at) => {
                self.metrics.notify_attempt(&key.target, "delivered");
                tracing::info!(
                    alert = %key.alert_id,
                    target = %key.target,
                    attempts = pending.attempts,
                    "notify: delivered"
                );
                self.hurry(&key.target);
                self.report(Delivered {
                    alert_id: key.alert_id,
                    target: key.target,
                    delivered_at,
                });
            }
            Err(reason) => {
                self.metrics.notify_attempt(&key.target, "failed");
                pending.last_error = Some(reason.clone());
                if self.targets.contains_key(&key.target) {
                    self.retry(key, pending, &reason);
                } else {
                    self.abandon(key, pending);
                }
            }
        }
        self.count_pending();
    }

    /// Writes and flushes the delivered state; the time of delivery, or why it could not be
    /// recorded (then the entry is retried: at least once, as promised).
    async fn record_delivery(&self, key: &Key, pending: &Pending) -> Result<DateTime<Utc>, String> {
        let delivered_at = now_ms();
        let entry = pending.finished(State::Delivered { delivered_at });
        let recorded = match self.outbox.put(key, &entry) {
            Ok(()) => self.outbox.flush().await,
            Err(error) => Err(error),
        };
        recorded.map(|()| delivered_at).map_err(|error| {
            tracing::error!(
                alert = %key.alert_id,
                target = %key.target,
                %error,
                "notify: delivered but cannot record it; it will be sent again"
            );
            format!("delivered but not recorded ({error}); sending again")
        })
    }

    /// Schedules the next attempt after a failure.
    fn retry(&mut self, key: Key, mut pending: Pending, reason: &str) {
        let delay = backoff(
            pending.attempts,
            self.options.retry_initial,
            self.options.retry_max,
            rand::thread_rng().gen_range(0.5..=1.0),
        );
        pending.next_attempt_at = now_ms() + delay;
        pending.due = Instant::now() + delay;
        tracing::warn!(
            alert = %key.alert_id,
            target = %key.target,
            attempt = pending.attempts,
            %reason,
            "notify: delivery failed; retrying in {delay:.1?}"
        );
        if let Err(error) = self.outbox.put(&key, &pending.entry()) {
            tracing::error!(%error, "notify: cannot record a failed attempt");
        }
        self.schedule(key, pending);
    }

    /// Gives up on an entry whose target is no longer configured.
    fn abandon(&mut self, key: Key, pending: Pending) {
        let entry = pending.finished(State::Abandoned {
            abandoned_at: now_ms(),
        });
        if let Err(error) = self.outbox.put(&key, &entry) {
            tracing::error!(%error, "notify: cannot record an abandoned notification");
        }
        self.metrics.notify_attempt(&key.target, "abandoned");
        tracing::warn!(
            alert = %key.alert_id,
            target = %key.target,
            attempts = pending.attempts,
            "notify: the target is no longer configured; notification abandoned"
        );
    }

    /// After a success to `target`, its other waiting entries are tried now: it works again.
    fn hurry(&mut self, target: &str) {
        let now = Instant::now();
        if let Some(queue) = self.queues.get_mut(target) {
            let keys: Vec<(Instant, Key)> = std::mem::take(queue).into_iter().collect();
            for (due, key) in keys {
                let due = due.min(now);
                if let Some(pending) = self.pending.get_mut(&key) {
                    pending.due = due;
                }
                queue.insert((due, key));
            }
        }
    }

    /// Holds `pending` and queues it for its due time.
    fn schedule(&mut self, key: Key, pending: Pending) {
        self.queues
            .entry(key.target.clone())
            .or_default()
            .insert((pending.due, key.clone()));
        self.pending.insert(key, pending);
    }

    /// Takes a waiting entry out of memory.
    fn take(&mut self, key: &Key) -> Option<Pending> {
        let pending = self.pending.remove(key)?;
        self.unqueue(key, pending.due);
        Some(pending)
    }

    /// Removes `key` due at `due` from its target's queue.
    fn unqueue(&mut self, key: &Key, due: Instant) {
        if let Some(queue) = self.queues.get_mut(&key.target) {
            queue.remove(&(due, key.clone()));
            if queue.is_empty() {
                self.queues.remove(&key.target);
            }
        }
    }

    /// Removes finished entries older than the retention.
    fn prune(&mut self) {
        let retention =
            chrono::Duration::from_std(self.options.retention).unwrap_or(chrono::Duration::MAX);
        let before = now_ms()
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        match self.outbox.prune(before) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "notify: removed old finished notifications"),
            Err(error) => tracing::error!(%error, "notify: cannot prune the outbox"),
        }
    }

    /// Lines up a report for the `delivered` channel. When [`REPORTS_MAX`] wait already
    /// (the receiver stopped reading) the oldest is dropped: it is on disk and is reported
    /// again at the next start, so only the report is lost, never the delivery's record.
    fn report(&mut self, delivered: Delivered) {
        if self.delivered.is_none() {
            return;
        }
        if self.reports.len() >= REPORTS_MAX {
            self.reports.pop_front();
            self.reports_dropped += 1;
            if self.reports_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.reports_dropped,
                    "notify: delivery reports are not being read; the oldest are dropped \
                     (they are reported again at the next start)"
                );
            }
        }
        self.reports.push_back(delivered);
    }

    /// Publishes the number of undelivered entries.
    fn count_pending(&self) {
        self.metrics.notify_pending.set(self.pending.len() as i64);
    }
}

/// The wall clock now, to the millisecond: what the outbox stores, so a time reported before
/// and after a restart is the same value.
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// Sleeps until `wake` (never, for `None`).
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake).await,
        None => std::future::pending().await,
    }
}

/// The monotonic instant of the wall-clock time `at`, `now` being the wall clock now; a time
/// past is now.
fn instant_of(at: DateTime<Utc>, now: DateTime<Utc>) -> Instant {
    let ahead = (at - now).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + ahead
}

/// The delay after `attempts` failed attempts: `initial` doubled per further failure, at most
/// `max`, times `jitter` (drawn from 0.5 to 1, so targets failing together spread out).
pub(super) fn backoff(attempts: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let delay = initial.saturating_mul(1 << doublings).min(max);
    delay.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit_with_jitter() {
        let second = Duration::from_secs(1);
        let initial = 5 * second;
        let max = 600 * second;
        let delays: Vec<u64> = (1..=10)
            .map(|attempts| backoff(attempts, initial, max, 1.0).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
        assert_eq!(backoff(1, initial, max, 0.5), Duration::from_millis(2500));
        assert_eq!(backoff(u32::MAX, initial, max, 1.0), max);
        assert_eq!(backoff(0, initial, max, 1.0), initial);
    }

    #[test]
    fn past_times_are_due_now() {
        let now = now_ms();
        let before = Instant::now();
        assert!(instant_of(now - chrono::Duration::hours(1), now) <= Instant::now());
        assert!(
            instant_of(now + chrono::Duration::seconds(60), now)
                >= before + Duration::from_secs(59)
        );
    }
}
