//! The engine task: the one owner of open prompts, recent resolutions and today's figures.
//!
//! Every request arrives on one bounded queue and is handled to completion before the next, with
//! no `.await` on anything slow: journal writes go to the writer task, events to a broadcast
//! channel. That keeps `open` at memory speed and makes each request atomic with respect to the
//! others (a subscription's snapshot and its event stream are taken in one step).
//!
//! One timer: the loop sleeps until the earliest prompt deadline or the next store-local
//! midnight, whichever comes first, and re-computes it after every request.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::campaigns::SharedCampaigns;
use super::clock::Clock;
use super::model::{
    OpenRequest, Opened, OptionView, PromptError, PromptEvent, PromptView, Resolution, StationToday,
};
use super::state::{PersistedPrompt, PersistedState, VERSION};
use super::today::Today;
use super::writer::WriterMsg;
use crate::metrics::Metrics;
use crate::record::attribution::{AttributionData, Channel, Outcome};

/// Resolved prompt ids remembered, so a late answer gets "already resolved" rather than
/// "unknown". At a busy store's few hundred prompts a day this covers weeks.
const RECENT_RESOLVED: usize = 10_000;
/// Longest a prompt's timer is set for: far beyond any configured timeout, and far from the
/// overflow of `Instant + Duration`.
const FARTHEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the handle learns once a resolution's record is written (or why not).
pub(crate) type Written = oneshot::Receiver<Result<(), String>>;

/// A request to the engine.
pub(crate) enum Command {
    /// Open (or find) the prompt for a targeted scan.
    Open {
        request: OpenRequest,
        reply: oneshot::Sender<Result<Opened, PromptError>>,
    },
    /// Answer one prompt.
    Answer {
        id: String,
        option: String,
        clerk: Option<String>,
        channel: Channel,
        reply: oneshot::Sender<Result<(Resolution, Written), PromptError>>,
    },
    /// Skip one prompt.
    Skip {
        id: String,
        reason: String,
        clerk: Option<String>,
        reply: oneshot::Sender<Result<(Resolution, Written), PromptError>>,
    },
    /// Answer the oldest prompt of a station that offers an option.
    AnswerOldest {
        station: String,
        option: String,
        channel: Channel,
        reply: oneshot::Sender<Option<(Resolution, Written)>>,
    },
    /// The open prompts, of one station or all, oldest first.
    List {
        station: Option<String>,
        reply: oneshot::Sender<Vec<PromptView>>,
    },
    /// A snapshot plus the event stream from that moment on.
    Subscribe {
        station: Option<String>,
        reply: oneshot::Sender<Subscription>,
    },
    /// Today's figures of every station with a prompt today, plus these (zeros when idle).
    Today {
        stations: Vec<String>,
        reply: oneshot::Sender<Vec<StationToday>>,
    },
    /// Link a sale's lines to prompts of its station (see [`Engine::link_sale`]).
    LinkSale {
        sale: SaleLink,
        reply: oneshot::Sender<Vec<Option<String>>>,
    },
    /// The sale that [`Command::LinkSale`] linked these prompts to was written (`recorded`), or
    /// could not be (the links are taken back, so the sale written again links anew).
    SaleRecorded {
        station: String,
        prompts: Vec<String>,
        recorded: bool,
    },
    /// Stop: flush the writer, then reply.
    Close { reply: oneshot::Sender<()> },
}

/// A sale to link to prompts: where and when it happened, and its lines' product codes.
#[derive(Debug, Clone)]
pub struct SaleLink {
    /// The station of the register.
    pub station: String,
    /// The receipt number, when the register gave one.
    pub receipt: Option<String>,
    /// When the sale was recorded.
    pub at: DateTime<Local>,
    /// Each line's SKU (EAN/GTIN or internal code), `None` when the line has none.
    pub skus: Vec<Option<String>>,
}

/// A prompt resolved within the sale-link window, still linkable to a sale that comes after.
struct RecentPrompt {
    /// The prompt's id.
    id: String,
    /// Its counter.
    station: String,
    /// Its product, normalised for matching ([`sku_key`]).
    sku: String,
    /// When it was resolved.
    resolved_at: DateTime<Local>,
}

/// A snapshot of open prompts and figures, and every event after it.
#[derive(Debug)]
pub struct Subscription {
    /// The open prompts (of the station asked for, or all), oldest first.
    pub prompts: Vec<PromptView>,
    /// Today's figures (of the station asked for, zeros included, or of every active station).
    pub today: Vec<StationToday>,
    /// The engine's wall clock at the snapshot (lets a page correct its own clock's skew).
    pub now: DateTime<Local>,
    /// Every event from the moment of the snapshot (of all stations: filter by
    /// [`PromptEvent::station`]).
    pub events: broadcast::Receiver<PromptEvent>,
}

/// An open prompt and what the engine keeps beside it.
struct OpenPrompt {
    /// What clients see.
    view: PromptView,
    /// Id of the scan record that opened it.
    scan: String,
    /// When it times out, on tokio's clock.
    deadline: Instant,
    /// The receipt of the sale a line of which was linked to it (the attribution carries it).
    receipt: Option<String>,
    /// Whether a sale line was linked to it already (one prompt, one sale line).
    linked: bool,
}

/// How a prompt is being resolved.
enum Resolve {
    Answered {
        option: OptionView,
        clerk: Option<String>,
        channel: Channel,
    },
    Skipped {
        reason: String,
        clerk: Option<String>,
    },
    Timeout,
}

/// The engine's state.
pub(crate) struct Engine {
    /// The campaigns in force (replaced on reload).
    campaigns: SharedCampaigns,
    /// Wall time for timestamps and the day.
    clock: Arc<dyn Clock>,
    /// `posgw_prompts_total`.
    metrics: Metrics,
    /// Open prompts per station, oldest first.
    stations: BTreeMap<String, VecDeque<OpenPrompt>>,
    /// Outcomes of recently resolved prompts by id.
    resolved: HashMap<String, Outcome>,
    /// The same ids in resolution order, to forget the oldest.
    resolved_order: VecDeque<String>,
    /// Prompts resolved within the last `sale_link_window` and not linked to a sale yet,
    /// oldest first.
    recent: VecDeque<RecentPrompt>,
    /// Resolved prompts linked to a sale whose record is not written yet, by id: put back into
    /// `recent` if it cannot be.
    linking: HashMap<String, RecentPrompt>,
    /// How long before a sale a prompt may have opened (or resolved) and still be linked to it.
    sale_link_window: chrono::Duration,
    /// Today's figures.
    today: Today,
    /// Events to subscribers; sending never blocks, slow receivers lag.
    events: broadcast::Sender<PromptEvent>,
    /// The writer task's queue; unbounded so the engine never waits on the journal (its growth
    /// is bounded by how fast clerks scan).
    writer: mpsc::UnboundedSender<WriterMsg>,
}

impl Engine {
    /// An engine with nothing open.
    pub(crate) fn new(
        campaigns: SharedCampaigns,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        writer: mpsc::UnboundedSender<WriterMsg>,
        sale_link_window: Duration,
    ) -> Self {
        let today = Today::new(clock.now().date_naive());
        let (events, _) = broadcast::channel(1024);
        Engine {
            campaigns,
            clock,
            metrics,
            stations: BTreeMap::new(),
            resolved: HashMap::new(),
            resolved_order: VecDeque::new(),
            recent: VecDeque::new(),
            linking: HashMap::new(),
            sale_link_window: chrono::Duration::from_std(sale_link_window)
                .unwrap_or_else(|_| chrono::Duration::minutes(10)),
            today,
            events,
            writer,
        }
    }

    /// Takes over a persisted state: prompts past their expiry are resolved as `timeout` at
    /// their `expires_at`, the others resume with their original deadline. Returns the write
    /// receipts of the timeout records, for the caller to wait on.
    pub(crate) fn restore(&mut self, state: PersistedState) -> Vec<Written> {
        let now = self.clock.now();
        if state.today.day == now.date_naive() {
            self.today = state.today;
        }
        let mut written = Vec::new();
        let mut resumed = 0usize;
        for PersistedPrompt {
            view,
            scan,
            receipt,
            linked,
        } in state.prompts
        {
            let deadline = self.deadline(view.expires_at, now);
            let prompt = OpenPrompt {
                view,
                scan,
                deadline,
                receipt,
                linked,
            };
            if prompt.view.expires_at <= now {
                let (_, receipt) = self.finish(prompt, Resolve::Timeout, true);
                written.push(receipt);
            } else {
                resumed += 1;
                self.queue(&prompt.view.station.clone()).push_back(prompt);
            }
        }
        tracing::info!(resumed, expired = written.len(), "restored open prompts");
        self.save();
        written
    }

    /// Runs until every handle is dropped or `Close` arrives.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        writer_task: tokio::task::JoinHandle<()>,
    ) {
        let close_reply = loop {
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Close { reply }) => break Some(reply),
                    Some(command) => self.handle(command),
                    None => break None,
                },
                () = tokio::time::sleep_until(wake) => self.tick(),
            }
        };
        // Dropping our writer sender lets the writer drain and stop; dropping the broadcast
        // sender ends every subscriber's stream (so HTTP shutdown is not held up by SSE).
        let Engine { writer, events, .. } = self;
        drop(writer);
        drop(events);
        if let Err(error) = writer_task.await {
            tracing::error!(%error, "prompt writer task failed");
        }
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    fn handle(&mut self, command: Command) {
        self.roll_day();
        // A reply that cannot be delivered means the caller gave up; the work is done anyway.
        match command {
            Command::Open { request, reply } => {
                let _ = reply.send(self.open(request));
            }
            Command::Answer {
                id,
                option,
                clerk,
                channel,
                reply,
            } => {
                let _ = reply.send(self.answer(&id, &option, clerk, channel));
            }
            Command::Skip {
                id,
                reason,
                clerk,
                reply,
            } => {
                let _ = reply.send(self.skip(&id, &reason, clerk));
            }
            Command::AnswerOldest {
                station,
                option,
                channel,
                reply,
            } => {
                let _ = reply.send(self.answer_oldest(&station, &option, channel));
            }
            Command::List { station, reply } => {
                let _ = reply.send(self.list(station.as_deref()));
            }
            Command::Subscribe { station, reply } => {
                let today = match &station {
                    Some(station) => vec![self.today.station(station)],
                    None => self.today.all(),
                };
                let _ = reply.send(Subscription {
                    now: self.clock.now(),
                    prompts: self.list(station.as_deref()),
                    today,
                    events: self.events.subscribe(),
                });
            }
            Command::Today { stations, reply } => {
                let mut all = self.today.all();
                for station in stations {
                    if !all.iter().any(|today| today.station == station) {
                        all.push(self.today.station(&station));
                    }
                }
                all.sort_by(|a, b| a.station.cmp(&b.station));
                let _ = reply.send(all);
            }
            Command::LinkSale { sale, reply } => {
                let _ = reply.send(self.link_sale(&sale));
            }
            Command::SaleRecorded {
                station,
                prompts,
                recorded,
            } => self.sale_recorded(&station, &prompts, recorded),
            Command::Close { reply } => {
                // Handled by the loop; unreachable here but harmless.
                let _ = reply.send(());
            }
        }
    }

    fn open(&mut self, request: OpenRequest) -> Result<Opened, PromptError> {
        let campaigns = self.campaigns.current();
        let Some(campaign) = campaigns.get(&request.campaign) else {
            return Err(PromptError::UnknownCampaign(request.campaign));
        };
        // One prompt per customer, not per scan: a re-scan of the same product at the same
        // counter while its prompt is open returns that prompt.
        if let Some(existing) = self
            .stations
            .get(&request.station)
            // A prompt already linked to a sale belongs to that customer: the next one's scan
            // opens a new prompt.
            .and_then(|queue| {
                queue
                    .iter()
                    .find(|prompt| prompt.view.sku == request.sku && !prompt.linked)
            })
        {
            tracing::debug!(prompt = %existing.view.id, sku = %request.sku, "re-scan of a product with an open prompt");
            return Ok(Opened {
                prompt: existing.view.clone(),
                new: false,
            });
        }
        // Configuration bounds the timeout (a day at most); a longer one is held to a year
        // rather than overflowing `DateTime + Duration` (a panic that stopped every prompt).
        let timeout = chrono::Duration::from_std(campaign.timeout.min(FARTHEST_WAIT))
            .unwrap_or(chrono::Duration::zero());
        let expires_at = request
            .opened_at
            .checked_add_signed(timeout)
            .unwrap_or(request.opened_at);
        let view = PromptView {
            id: self.new_id(),
            campaign: campaign.id.clone(),
            station: request.station,
            sku: request.sku,
            question: campaign.question.clone(),
            options: campaign
                .options
                .iter()
                .map(|option| OptionView {
                    key: option.key.clone(),
                    label: option.label.clone(),
                })
                .collect(),
            opened_at: request.opened_at,
            expires_at,
        };
        let deadline = self.deadline(expires_at, self.clock.now());
        self.metrics.prompt("opened");
        self.today
            .opened(&view.station, view.opened_at.date_naive());
        tracing::debug!(prompt = %view.id, station = %view.station, campaign = %view.campaign, sku = %view.sku, "prompt opened");
        let station = view.station.clone();
        self.queue(&station).push_back(OpenPrompt {
            view: view.clone(),
            scan: request.scan_id,
            deadline,
            receipt: None,
            linked: false,
        });
        self.save();
        self.broadcast(PromptEvent::Prompt(view.clone()));
        self.broadcast_stats(&station);
        Ok(Opened {
            prompt: view,
            new: true,
        })
    }

    fn answer(
        &mut self,
        id: &str,
        option: &str,
        clerk: Option<String>,
        channel: Channel,
    ) -> Result<(Resolution, Written), PromptError> {
        let (station, index) = self.find(id)?;
        let offered = self.stations[&station][index]
            .view
            .option(option)
            .cloned()
            .ok_or_else(|| PromptError::OptionNotOffered(option.to_owned()))?;
        let prompt = self.take(&station, index);
        Ok(self.finish(
            prompt,
            Resolve::Answered {
                option: offered,
                clerk,
                channel,
            },
            false,
        ))
    }

    fn skip(
        &mut self,
        id: &str,
        reason: &str,
        clerk: Option<String>,
    ) -> Result<(Resolution, Written), PromptError> {
        let (station, index) = self.find(id)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(PromptError::EmptyReason);
        }
        let prompt = self.take(&station, index);
        Ok(self.finish(
            prompt,
            Resolve::Skipped {
                reason: reason.to_owned(),
                clerk,
            },
            false,
        ))
    }

    fn answer_oldest(
        &mut self,
        station: &str,
        option: &str,
        channel: Channel,
    ) -> Option<(Resolution, Written)> {
        let queue = self.stations.get(station)?;
        let index = queue
            .iter()
            .position(|prompt| prompt.view.option(option).is_some())?;
        let offered = queue[index].view.option(option).cloned()?;
        let prompt = self.take(station, index);
        Some(self.finish(
            prompt,
            Resolve::Answered {
                option: offered,
                clerk: None,
                channel,
            },
            false,
        ))
    }

    fn list(&self, station: Option<&str>) -> Vec<PromptView> {
        self.stations
            .iter()
            .filter(|(name, _)| station.is_none_or(|station| station == name.as_str()))
            .flat_map(|(_, queue)| queue.iter().map(|prompt| prompt.view.clone()))
            .collect()
    }

    /// Resolves every prompt past its deadline and starts a new day at midnight.
    fn tick(&mut self) {
        self.roll_day();
        let now = Instant::now();
        let expired: Vec<(String, usize)> = self
            .stations
            .iter()
            .flat_map(|(station, queue)| {
                queue
                    .iter()
                    .enumerate()
                    .filter(|(_, prompt)| prompt.deadline <= now)
                    .map(|(index, _)| (station.clone(), index))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Take from the back so earlier indexes stay valid.
        for (station, index) in expired.into_iter().rev() {
            let prompt = self.take(&station, index);
            self.finish(prompt, Resolve::Timeout, false);
        }
    }

    /// Starts a new day's figures when the store-local date changed, and tells subscribers.
    fn roll_day(&mut self) {
        let mut stations: BTreeSet<String> = self.today.stations.keys().cloned().collect();
        if self.today.roll(self.clock.now().date_naive()) {
            tracing::debug!(day = %self.today.day, "new day for prompt figures");
            stations.extend(self.stations.keys().cloned());
            for station in &stations {
                self.broadcast_stats(station);
            }
            self.save();
        }
    }

    /// The earliest prompt deadline or the next midnight.
    fn next_wake(&self) -> Instant {
        let earliest = self
            .stations
            .values()
            .flat_map(|queue| queue.iter().map(|prompt| prompt.deadline))
            .min();
        let midnight = self.next_midnight();
        earliest.map_or(midnight, |earliest| earliest.min(midnight))
    }

    fn next_midnight(&self) -> Instant {
        let now = self.clock.now();
        let midnight = now
            .date_naive()
            .succ_opt()
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .and_then(|midnight| midnight.and_local_timezone(Local).earliest());
        // Where midnight does not exist (a DST jump at 00:00), look again in an hour.
        let wait = midnight
            .and_then(|midnight| (midnight - now).to_std().ok())
            .unwrap_or(Duration::from_secs(3600));
        Instant::now() + wait
    }

    /// The tokio deadline of a wall-clock expiry.
    fn deadline(&self, expires_at: DateTime<Local>, now: DateTime<Local>) -> Instant {
        // `Instant + Duration` panics past the platform's range; a far expiry waits a year
        // (and is looked at again then) instead.
        let wait = (expires_at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(FARTHEST_WAIT);
        Instant::now() + wait
    }

    /// Where an open prompt is, or why it is not open.
    fn find(&self, id: &str) -> Result<(String, usize), PromptError> {
        for (station, queue) in &self.stations {
            if let Some(index) = queue.iter().position(|prompt| prompt.view.id == id) {
                return Ok((station.clone(), index));
            }
        }
        if self.resolved.contains_key(id) {
            Err(PromptError::AlreadyResolved)
        } else {
            Err(PromptError::NotFound)
        }
    }

    fn take(&mut self, station: &str, index: usize) -> OpenPrompt {
        let queue = self
            .stations
            .get_mut(station)
            .expect("find() returned this station");
        let prompt = queue.remove(index).expect("find() returned this index");
        if queue.is_empty() {
            self.stations.remove(station);
        }
        prompt
    }

    fn queue(&mut self, station: &str) -> &mut VecDeque<OpenPrompt> {
        self.stations.entry(station.to_owned()).or_default()
    }

    /// Records a resolution: the attribution record, the metric, the figures, the events and
    /// the saved state. `restoring` skips the events (nobody is subscribed yet).
    fn finish(
        &mut self,
        prompt: OpenPrompt,
        how: Resolve,
        restoring: bool,
    ) -> (Resolution, Written) {
        let OpenPrompt {
            view,
            scan,
            receipt,
            linked,
            ..
        } = prompt;
        let (outcome, resolved_at, answer, answer_label, channel, clerk, skip_reason) = match how {
            Resolve::Answered {
                option,
                clerk,
                channel,
            } => (
                Outcome::Answered,
                self.clock.now(),
                Some(option.key),
                Some(option.label),
                Some(channel),
                clerk,
                None,
            ),
            Resolve::Skipped { reason, clerk } => (
                Outcome::Skipped,
                self.clock.now(),
                None,
                None,
                None,
                clerk,
                Some(reason),
            ),
            // A timeout happened at the expiry, however late we notice (a restart, a busy loop).
            Resolve::Timeout => (
                Outcome::Timeout,
                view.expires_at,
                None,
                None,
                None,
                None,
                None,
            ),
        };
        let data = AttributionData {
            prompt: view.id,
            campaign: view.campaign,
            station: view.station,
            sku: view.sku,
            scan,
            question: view.question,
            outcome,
            answer,
            answer_label,
            channel,
            clerk,
            opened_at: view.opened_at,
            resolved_at,
            latency_ms: (resolved_at - view.opened_at).num_milliseconds(),
            skip_reason,
            // Known when a sale line was linked to the prompt before it was resolved.
            receipt,
        };
        if !linked {
            // A sale rung up after the answer can still be linked, for a while. Bounded by the
            // window, and by count for a store whose registers never report sales.
            let since = resolved_at - self.sale_link_window;
            while self
                .recent
                .front()
                .is_some_and(|recent| recent.resolved_at < since)
                || self.recent.len() >= RECENT_RESOLVED
            {
                self.recent.pop_front();
            }
            self.recent.push_back(RecentPrompt {
                id: data.prompt.clone(),
                station: data.station.clone(),
                sku: sku_key(&data.sku),
                resolved_at,
            });
        }
        tracing::debug!(prompt = %data.prompt, outcome = outcome.as_str(), "prompt resolved");
        self.metrics.prompt(outcome.as_str());
        self.today
            .resolved(&data.station, data.opened_at.date_naive(), outcome);
        self.remember(&data.prompt, outcome);

        let (done, written) = oneshot::channel();
        // Order matters: the record before the state without the prompt (see `writer`).
        let _ = self.writer.send(WriterMsg::Append {
            data: Box::new(data.clone()),
            done: Some(done),
        });
        if !restoring {
            self.save();
            self.broadcast(PromptEvent::Resolved {
                id: data.prompt.clone(),
                station: data.station.clone(),
                outcome,
                answer: data.answer.clone(),
            });
            self.broadcast_stats(&data.station);
        }
        (data, written)
    }

    /// Links each line of a sale to a prompt of the same station for the same product: an open
    /// prompt opened at most `sale_link_window` before the sale, or one resolved at most that
    /// long before it. Each prompt links to one sale line only (one prompt per customer), and
    /// the oldest candidate goes first, so two customers buying the same product in turn get
    /// their own prompts. An open prompt that gets linked remembers the receipt, and its
    /// attribution carries it when it resolves. Returns the prompt id per line.
    fn link_sale(&mut self, sale: &SaleLink) -> Vec<Option<String>> {
        let since = sale.at - self.sale_link_window;
        while self
            .recent
            .front()
            .is_some_and(|recent| recent.resolved_at < since)
        {
            self.recent.pop_front();
        }
        let mut linked = Vec::with_capacity(sale.skus.len());
        for sku in &sale.skus {
            let Some(key) = sku.as_deref().map(sku_key) else {
                linked.push(None);
                continue;
            };
            // Candidates: (opened_at, which). Resolved ones opened before the open ones.
            let recent = self.recent.iter().position(|recent| {
                recent.station == sale.station && recent.sku == key && recent.resolved_at >= since
            });
            let open = self.stations.get_mut(&sale.station).and_then(|queue| {
                queue.iter_mut().find(|prompt| {
                    !prompt.linked
                        && prompt.view.opened_at >= since
                        && sku_key(&prompt.view.sku) == key
                })
            });
            let id = match (recent, open) {
                (Some(index), _) => self.recent.remove(index).map(|recent| {
                    let id = recent.id.clone();
                    self.linking.insert(id.clone(), recent);
                    id
                }),
                (None, Some(prompt)) => {
                    prompt.linked = true;
                    prompt.receipt.clone_from(&sale.receipt);
                    Some(prompt.view.id.clone())
                }
                (None, None) => None,
            };
            linked.push(id);
        }
        // Saved once the sale is written (`sale_recorded`): a state naming links to a sale a
        // crash then took back would keep the redelivered sale from linking.
        linked
    }

    /// Makes the links of a written sale stick (saved with the open prompts), or takes back
    /// those of a sale that could not be written.
    fn sale_recorded(&mut self, station: &str, prompts: &[String], recorded: bool) {
        if recorded {
            for id in prompts {
                self.linking.remove(id);
            }
            self.save();
            return;
        }
        for id in prompts {
            if let Some(recent) = self.linking.remove(id) {
                let at = self
                    .recent
                    .iter()
                    .position(|other| other.resolved_at > recent.resolved_at)
                    .unwrap_or(self.recent.len());
                self.recent.insert(at, recent);
            } else if let Some(prompt) = self
                .stations
                .get_mut(station)
                .and_then(|queue| queue.iter_mut().find(|prompt| prompt.view.id == *id))
            {
                prompt.linked = false;
                prompt.receipt = None;
            }
        }
        tracing::debug!(
            station,
            prompts = prompts.len(),
            "sale not written; its prompt links taken back"
        );
    }

    fn remember(&mut self, id: &str, outcome: Outcome) {
        self.resolved.insert(id.to_owned(), outcome);
        self.resolved_order.push_back(id.to_owned());
        while self.resolved_order.len() > RECENT_RESOLVED {
            if let Some(old) = self.resolved_order.pop_front() {
                self.resolved.remove(&old);
            }
        }
    }

    /// Queues the current state for saving.
    fn save(&self) {
        let state = PersistedState {
            version: VERSION,
            prompts: self
                .stations
                .values()
                .flat_map(|queue| {
                    queue.iter().map(|prompt| PersistedPrompt {
                        view: prompt.view.clone(),
                        scan: prompt.scan.clone(),
                        receipt: prompt.receipt.clone(),
                        linked: prompt.linked,
                    })
                })
                .collect(),
            today: self.today.clone(),
        };
        let _ = self.writer.send(WriterMsg::Save(state.encode()));
    }

    fn broadcast(&self, event: PromptEvent) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    fn broadcast_stats(&self, station: &str) {
        self.broadcast(PromptEvent::Stats(self.today.station(station)));
    }

    /// A fresh id, unique among open and remembered prompts.
    fn new_id(&self) -> String {
        crate::record::short_id(|id| self.find(id) != Err(PromptError::NotFound))
    }
}

/// A product code in the form sale lines and prompts are matched by: codes of digits only that
/// can be GTINs (8, 12, 13 or 14 digits) as GTIN-14, so `6901234567892` on a receipt matches the
/// GTIN `06901234567892` of a scan; anything else as written, trimmed.
pub(crate) fn sku_key(sku: &str) -> String {
    let sku = sku.trim();
    if matches!(sku.len(), 8 | 12 | 13 | 14) && sku.bytes().all(|b| b.is_ascii_digit()) {
        format!("{sku:0>14}")
    } else {
        sku.to_owned()
    }
}
