//! The alert task: owns the alerts (in memory and in the `alerts` tree), runs the rules,
//! announces new alerts to the outbox, records deliveries, acknowledgements and resolutions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::super::daily::Day;
use super::super::notify::{Delivered, NotifierHandle};
use super::super::storage::StoreHandle;
use super::cases::failing_case;
use super::evaluate::{self, DayValue};
use super::rules::{AlertRule, Threshold};
use super::{
    key_of, message, number_of_id, stamp, Alert, AlertCase, AlertSettings, AlertState, AlertValue,
    Command, LifecycleError, KEEP_DAYS, MAX_CASES, MAX_TEXT_CHARS, NEXT_KEY, RECENT_DAYS,
};

/// Case reads of new alerts in flight at once.
const CASE_READS: usize = 4;

/// The alert task's state.
pub(super) struct AlertTask {
    /// The persisted alerts (`a` + number → JSON) and `next`.
    pub(super) tree: crate::hq::manage::ManageTree,
    /// The management database, for flushing.
    pub(super) db: crate::hq::manage::ManageDb,
    /// HQ's records, for the daily figures and cases.
    pub(super) store: StoreHandle,
    /// The outbox.
    pub(super) notifier: NotifierHandle,
    /// The notifier's task, awaited when stopping.
    pub(super) notifier_task: JoinHandle<()>,
    /// Rules, regions, link.
    pub(super) settings: AlertSettings,
    /// Every kept alert, by number.
    pub(super) alerts: BTreeMap<u64, Alert>,
    /// Number of the next alert.
    pub(super) next: u64,
    /// Alerts the outbox refused (a storage error, a full outbox): tried again at each tick.
    pub(super) unannounced: std::collections::BTreeSet<u64>,
}

impl AlertTask {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut delivered: mpsc::Receiver<Delivered>,
        every: Duration,
    ) {
        self.resend_undelivered().await;
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deliveries_open = true;
        let stopped = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Stop(reply)) => break Some(reply),
                    Some(command) => self.handle(command).await,
                    None => break None,
                },
                delivery = delivered.recv(), if deliveries_open => match delivery {
                    Some(delivery) => self.delivered(delivery).await,
                    None => deliveries_open = false,
                },
                _ = timer.tick() => {
                    self.announce_again().await;
                    // With several receivers on one database, one evaluates.
                    if !self.store.runs_jobs() {
                        continue;
                    }
                    if let Err(error) = self.evaluate().await {
                        tracing::error!(error = %format!("{error:#}"), "alert evaluation failed");
                    }
                }
            }
        };
        let AlertTask {
            notifier,
            notifier_task,
            tree,
            db,
            store,
            ..
        } = self;
        drop((notifier, tree, db, store));
        // The notifier stops once its last handle is gone.
        let _ = notifier_task.await;
        if let Some(reply) = stopped {
            let _ = reply.send(());
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Evaluate(reply) => {
                let _ = reply.send(self.evaluate().await);
            }
            Command::List(reply) => {
                let _ = reply.send(self.alerts.values().rev().cloned().collect());
            }
            Command::Facts(reply) => {
                let _ = reply.send(self.alerts.values().map(super::fact_of).collect());
            }
            Command::Get(id, reply) => {
                let alert = number_of_id(&id).and_then(|number| self.alerts.get(&number));
                let _ = reply.send(alert.cloned());
            }
            Command::Ack {
                id,
                by,
                note,
                reply,
            } => {
                let _ = reply.send(self.ack(&id, &by, note).await);
            }
            Command::Resolve {
                id,
                by,
                action,
                reply,
            } => {
                let _ = reply.send(self.resolve(&id, &by, action).await);
            }
            Command::Reload(settings) => {
                if let Err(error) = self.notifier.reload(settings.notify.clone()).await {
                    tracing::error!(%error, "the notifier did not take the new targets");
                }
                self.settings = settings;
                tracing::info!(rules = self.settings.rules.len(), "alert rules reloaded");
            }
            Command::Delivery(id, reply) => {
                let status = match self.notifier.status(&id).await {
                    Ok(status) => status,
                    Err(error) => {
                        tracing::warn!(%error, alert = %id, "no delivery status from the notifier");
                        Vec::new()
                    }
                };
                let _ = reply.send(status);
            }
            // The loop takes `Stop` before it gets here.
            Command::Stop(_) => {}
        }
    }

    /// Writes alert `number` and flushes.
    async fn persist(&mut self, number: u64) -> Result<(), String> {
        self.persist_all(&[number]).await
    }

    /// Writes alerts `numbers` and the next number, then flushes once.
    async fn persist_all(&mut self, numbers: &[u64]) -> Result<(), String> {
        let mut batch = crate::hq::manage::ManageBatch::default();
        for number in numbers {
            if let Some(alert) = self.alerts.get(number) {
                let json = serde_json::to_vec(alert).map_err(|error| error.to_string())?;
                batch.insert(key_of(*number), json);
            }
        }
        batch.insert(NEXT_KEY, self.next.to_be_bytes());
        self.tree
            .apply_batch(batch)
            .map_err(|error| error.to_string())?;
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// Hands every alert not delivered yet to the outbox again (it ignores repeats), and
    /// forgets alerts past [`KEEP_DAYS`].
    async fn resend_undelivered(&mut self) {
        let cutoff = Utc::now() - chrono::Duration::days(KEEP_DAYS);
        let expired: Vec<u64> = self
            .alerts
            .iter()
            .filter(|(_, alert)| {
                DateTime::parse_from_rfc3339(&alert.opened_at).is_ok_and(|opened| opened < cutoff)
            })
            .map(|(number, _)| *number)
            .collect();
        for number in expired {
            self.alerts.remove(&number);
            if let Err(error) = self.tree.remove(key_of(number)) {
                tracing::warn!(%error, "cannot forget an expired alert");
            }
        }
        // Alerts not delivered yet and still recent go to the outbox again (it ignores what
        // it holds); older ones are history, not news.
        let recent = Utc::now() - chrono::Duration::days(RECENT_DAYS);
        let pending: Vec<Alert> = self
            .alerts
            .values()
            .filter(|alert| alert.delivered_at.is_none() && !alert.targets.is_empty())
            .filter(|alert| {
                DateTime::parse_from_rfc3339(&alert.opened_at).is_ok_and(|opened| opened >= recent)
            })
            .cloned()
            .collect();
        for alert in pending {
            self.announce(&alert).await;
        }
    }

    /// Tries again the alerts the outbox refused.
    async fn announce_again(&mut self) {
        let numbers: Vec<u64> = std::mem::take(&mut self.unannounced).into_iter().collect();
        for number in numbers {
            if let Some(alert) = self.alerts.get(&number).cloned() {
                self.announce(&alert).await;
            }
        }
    }

    /// Puts `alert`'s message in the outbox for its targets that are configured; a refusal is
    /// kept to try again at the next tick.
    async fn announce(&mut self, alert: &Alert) {
        let known: Vec<String> = alert
            .targets
            .iter()
            .filter(|target| {
                self.settings
                    .notify
                    .iter()
                    .any(|notify| notify.id == **target)
            })
            .cloned()
            .collect();
        if known.is_empty() {
            tracing::warn!(
                alert = %alert.id,
                store = %alert.store,
                "alert opened, but the store's region has no configured [[notify]] target"
            );
            return;
        }
        let notice = message::notice(alert, self.settings.public_url.as_deref());
        if let Err(error) = self.notifier.enqueue(notice, &known).await {
            tracing::error!(
                alert = %alert.id,
                %error,
                "cannot put an alert in the outbox; trying again at the next evaluation"
            );
            if let Some(number) = number_of_id(&alert.id) {
                self.unannounced.insert(number);
            }
        }
    }

    /// A target confirmed delivery.
    async fn delivered(&mut self, delivery: Delivered) {
        let Some(number) = number_of_id(&delivery.alert_id) else {
            return;
        };
        let Some(alert) = self.alerts.get_mut(&number) else {
            return;
        };
        if alert.delivered_at.is_some() {
            return;
        }
        alert.delivered_at = Some(stamp(delivery.delivered_at));
        tracing::info!(alert = %alert.id, target = %delivery.target, "alert delivered");
        if let Err(error) = self.persist(number).await {
            tracing::error!(%error, "cannot record an alert's delivery");
        }
    }

    /// Runs every rule; persists and announces the alerts it opens.
    async fn evaluate(&mut self) -> anyhow::Result<Vec<Alert>> {
        let now = Utc::now();
        let settings = self.settings.clone();
        let store_regions = settings.store_regions();
        // (rule index, store, run): computed under the figures' lock, which is held only for
        // arithmetic over the per-day counters.
        let candidates: Vec<(usize, String, Vec<DayValue>)> = self.store.daily(|daily| {
            let local = now.with_timezone(&daily.timezone());
            let today = local.date_naive();
            let oldest = today - chrono::Duration::days(RECENT_DAYS);
            let mut found = Vec::new();
            for (index, rule) in settings.rules.iter().enumerate() {
                for (store, days) in daily.stores() {
                    if !settings.stores.contains(store) {
                        continue;
                    }
                    if let Some(watched) = &rule.regions {
                        let region = store_regions.get(store).map(|region| region.id.as_str());
                        if !region.is_some_and(|region| watched.contains(region)) {
                            continue;
                        }
                    }
                    let values = evaluate::values(&rule.metric, days, today, local.hour());
                    for run in evaluate::runs(rule, &values) {
                        if run.last().is_some_and(|last| last.day >= oldest) {
                            found.push((index, store.to_string(), run));
                        }
                    }
                }
            }
            found
        });
        // The days each (rule, store) already has an alert for.
        let mut covered: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
        for alert in self.alerts.values() {
            covered
                .entry((alert.rule.as_str(), alert.store.as_str()))
                .or_default()
                .extend(alert.days.iter().map(String::as_str));
        }
        let fresh: Vec<(usize, String, Vec<DayValue>)> = candidates
            .into_iter()
            .filter(|(index, store, run)| {
                let rule = &settings.rules[*index];
                covered
                    .get(&(rule.id.as_str(), store.as_str()))
                    .is_none_or(|days| {
                        !run.iter()
                            .any(|value| days.contains(value.day.to_string().as_str()))
                    })
            })
            .collect();
        // The cases of the new alerts, read a few at a time (each reads its store's last days).
        let cases: Vec<anyhow::Result<(Vec<AlertCase>, usize)>> = futures_util::stream::iter(
            fresh
                .iter()
                .map(|(index, store, run)| {
                    (
                        self.store.clone(),
                        settings.rules[*index].clone(),
                        store.clone(),
                        run.clone(),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .map(|(handle, rule, store, run)| async move {
            failing_cases(handle, &rule, &store, &run).await
        })
        .buffered(CASE_READS)
        .collect()
        .await;
        let mut opened = Vec::new();
        for ((index, store, run), cases) in fresh.into_iter().zip(cases) {
            let rule = &settings.rules[index];
            let region = store_regions.get(store.as_str()).copied();
            let (cases, cases_total) = cases.unwrap_or_else(|error| {
                tracing::warn!(
                    store = %store,
                    rule = %rule.id,
                    error = %format!("{error:#}"),
                    "cannot read an alert's cases; it opens without them"
                );
                (Vec::new(), 0)
            });
            let number = self.next;
            self.next += 1;
            let alert = Alert {
                id: format!("a-{number}"),
                rule: rule.id.clone(),
                title: message::title(rule, &store, region.map(|r| r.name.as_str()), run.len()),
                metric: rule.metric.name().to_string(),
                threshold: BTreeMap::from([match rule.threshold {
                    Threshold::Below(limit) => ("below".to_string(), limit),
                    Threshold::Above(limit) => ("above".to_string(), limit),
                }]),
                store: store.clone(),
                region: region.map(|region| region.id.clone()),
                state: AlertState::Open,
                days: run.iter().map(|value| value.day.to_string()).collect(),
                values: run
                    .iter()
                    .map(|value| AlertValue {
                        day: value.day.to_string(),
                        value: value.value,
                        count: value.count,
                    })
                    .collect(),
                opened_at: stamp(now),
                delivered_at: None,
                acknowledged_at: None,
                acknowledged_by: None,
                note: None,
                resolved_at: None,
                resolved_by: None,
                action: None,
                response_minutes: None,
                cases,
                cases_total,
                targets: region
                    .map(|region| region.notify.clone())
                    .unwrap_or_default(),
            };
            self.alerts.insert(number, alert.clone());
            opened.push(alert);
        }
        if opened.is_empty() {
            return Ok(opened);
        }
        // Persisted, all with one fsync, before any is announced: a crash after this never
        // opens them again, and a crash before it leaves nothing to announce.
        let numbers: Vec<u64> = opened
            .iter()
            .filter_map(|alert| number_of_id(&alert.id))
            .collect();
        if let Err(error) = self.persist_all(&numbers).await {
            for number in &numbers {
                self.alerts.remove(number);
            }
            anyhow::bail!("cannot store {} new alerts: {error}", numbers.len());
        }
        for alert in &opened {
            tracing::warn!(
                alert = %alert.id,
                rule = %alert.rule,
                store = %alert.store,
                days = ?alert.days,
                "alert opened"
            );
            self.announce(alert).await;
        }
        Ok(opened)
    }

    /// The failing cases of the `attach_days` days ending with the run's last day, at most
    /// [`MAX_CASES`], with their total.
    async fn ack(
        &mut self,
        id: &str,
        by: &str,
        note: Option<String>,
    ) -> Result<Alert, LifecycleError> {
        let number = number_of_id(id).ok_or(LifecycleError::NotFound)?;
        let note = match note.map(|note| note.trim().to_string()) {
            Some(note) if note.chars().count() > MAX_TEXT_CHARS => {
                return Err(LifecycleError::Invalid(format!(
                    "the note is longer than {MAX_TEXT_CHARS} characters"
                )))
            }
            Some(note) if note.is_empty() => None,
            note => note,
        };
        let alert = self
            .alerts
            .get_mut(&number)
            .ok_or(LifecycleError::NotFound)?;
        if alert.acknowledged_at.is_some() {
            return Err(LifecycleError::AlreadyAcknowledged);
        }
        let before = alert.clone();
        acknowledge(alert, by, Utc::now());
        alert.note = note;
        let alert = alert.clone();
        self.commit(number, before).await?;
        tracing::info!(alert = %alert.id, by, "alert acknowledged");
        Ok(alert)
    }

    async fn resolve(
        &mut self,
        id: &str,
        by: &str,
        action: String,
    ) -> Result<Alert, LifecycleError> {
        let number = number_of_id(id).ok_or(LifecycleError::NotFound)?;
        let action = action.trim().to_string();
        if action.is_empty() {
            return Err(LifecycleError::Invalid(
                "write what was done in 'action' (like \"本周三前由技术顾问上门演示\")".to_string(),
            ));
        }
        if action.chars().count() > MAX_TEXT_CHARS {
            return Err(LifecycleError::Invalid(format!(
                "the action is longer than {MAX_TEXT_CHARS} characters"
            )));
        }
        let alert = self
            .alerts
            .get_mut(&number)
            .ok_or(LifecycleError::NotFound)?;
        if alert.resolved_at.is_some() {
            return Err(LifecycleError::AlreadyResolved);
        }
        let before = alert.clone();
        let now = Utc::now();
        if alert.acknowledged_at.is_none() {
            acknowledge(alert, by, now);
        }
        alert.state = AlertState::Resolved;
        alert.resolved_at = Some(stamp(now));
        alert.resolved_by = Some(by.to_string());
        alert.action = Some(action);
        let alert = alert.clone();
        self.commit(number, before).await?;
        tracing::info!(alert = %alert.id, by, "alert resolved");
        Ok(alert)
    }

    /// Persists alert `number`, or puts `before` back when that fails.
    async fn commit(&mut self, number: u64, before: Alert) -> Result<(), LifecycleError> {
        if let Err(error) = self.persist(number).await {
            self.alerts.insert(number, before);
            return Err(LifecycleError::Storage(error));
        }
        Ok(())
    }
}

/// Marks `alert` acknowledged by `by` at `now`.
fn acknowledge(alert: &mut Alert, by: &str, now: DateTime<Utc>) {
    alert.state = AlertState::Acknowledged;
    alert.acknowledged_at = Some(stamp(now));
    alert.acknowledged_by = Some(by.to_string());
    alert.response_minutes = DateTime::parse_from_rfc3339(&alert.opened_at)
        .ok()
        .map(|opened| (now - opened.with_timezone(&Utc)).num_minutes().max(0));
}

/// The failing cases of the `attach_days` days ending with the run's last day, at most
/// [`MAX_CASES`], with their total.
async fn failing_cases(
    store: StoreHandle,
    rule: &AlertRule,
    code: &str,
    run: &[DayValue],
) -> anyhow::Result<(Vec<AlertCase>, usize)> {
    let (Some(last), true) = (run.last(), rule.attach_days > 0) else {
        return Ok((Vec::new(), 0));
    };
    let from: Day = last.day - chrono::Duration::days(rule.attach_days as i64 - 1);
    let cases = store.cases(code, from, last.day).await?;
    let failing: Vec<AlertCase> = cases
        .iter()
        .filter_map(|case| failing_case(&rule.metric, case))
        .collect();
    let total = failing.len();
    Ok((failing.into_iter().take(MAX_CASES).collect(), total))
}
