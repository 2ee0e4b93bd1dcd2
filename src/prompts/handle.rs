//! Starting the engine, and the cheap, cloneable handle everyone else uses.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::NaiveDate;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::campaigns::{Campaigns, SharedCampaigns};
use super::clock::{Clock, SystemClock};
use super::engine::{Command, Engine, SaleLink, Subscription, Written};
use super::journal::PromptJournal;
use super::model::{
    OpenRequest, Opened, PromptError, PromptEvent, PromptView, Resolution, StationToday,
};
use super::state::PersistedState;
use super::writer;
use crate::config::CampaignSettings;
use crate::metrics::Metrics;
use crate::record::attribution::Channel;

/// Requests that may wait for the engine before callers feel back-pressure.
const QUEUE: usize = 256;

/// What the engine is configured with.
#[derive(Debug, Clone)]
pub struct PromptsConfig {
    /// `[[campaign]]`, in configuration order (the first matching campaign wins).
    pub campaigns: Vec<CampaignSettings>,
    /// `[answer_codes]`: scanned code -> option key.
    pub answer_codes: BTreeMap<String, String>,
    /// Preset skip reasons offered on the clerk page (`[prompts] skip_reasons`); free text is
    /// always allowed too.
    pub skip_reasons: Vec<String>,
    /// How long before a sale a prompt for one of its products may have opened or been
    /// resolved and still be linked to it (`[prompts] sale_link_window`).
    pub sale_link_window: std::time::Duration,
}

impl Default for PromptsConfig {
    /// No campaigns, no answer cards, no preset reasons, the default 10-minute link window.
    fn default() -> Self {
        PromptsConfig {
            campaigns: Vec::new(),
            answer_codes: BTreeMap::new(),
            skip_reasons: Vec::new(),
            sale_link_window: std::time::Duration::from_secs(600),
        }
    }
}

/// Starts the engine on the system clock. Loads the persisted open prompts first: those past
/// their expiry are resolved as `timeout` (their records are in the journal when this returns),
/// the others resume.
///
/// Fails when the journal cannot give the persisted state or take the timeout records. An
/// unreadable state is not an error: it is logged and the engine starts empty.
pub async fn spawn<J: PromptJournal>(
    config: PromptsConfig,
    journal: J,
    metrics: Metrics,
) -> Result<PromptsHandle, String> {
    spawn_with_clock(config, journal, metrics, Arc::new(SystemClock)).await
}

/// [`spawn`] with a given wall clock (tests pass a [`TokioClock`](super::TokioClock)).
pub async fn spawn_with_clock<J: PromptJournal>(
    config: PromptsConfig,
    journal: J,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
) -> Result<PromptsHandle, String> {
    let campaigns = SharedCampaigns::new(Campaigns::new(config.campaigns, config.answer_codes));
    let saved = journal
        .load_open_prompts()
        .await
        .map_err(|error| format!("failed to load open prompts: {error}"))?;

    let (writer_queue, writer_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(writer::run(journal, writer_rx));
    let mut engine = Engine::new(
        campaigns.clone(),
        clock,
        metrics,
        writer_queue,
        config.sale_link_window,
    );
    if let Some(bytes) = saved {
        match PersistedState::decode(&bytes) {
            Ok(state) => {
                for written in engine.restore(state) {
                    match written.await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            return Err(format!(
                                "failed to record a prompt that expired while stopped: {error}"
                            ))
                        }
                        Err(_) => return Err("prompt writer stopped".to_owned()),
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "open prompts from before the restart are lost; starting empty");
            }
        }
    }

    let (commands, commands_rx) = mpsc::channel(QUEUE);
    tokio::spawn(engine.run(commands_rx, writer_task));
    Ok(PromptsHandle {
        commands,
        campaigns,
        skip_reasons: Arc::new(RwLock::new(config.skip_reasons.into())),
    })
}

/// The handle to the prompt engine. Cheap to clone; the engine stops when the last clone is
/// dropped or [`close`](Self::close) is called.
#[derive(Clone)]
pub struct PromptsHandle {
    /// The engine's request queue.
    commands: mpsc::Sender<Command>,
    /// The configuration, read without a round trip.
    campaigns: SharedCampaigns,
    /// Preset skip reasons for the clerk page.
    skip_reasons: Arc<RwLock<Arc<[String]>>>,
}

impl PromptsHandle {
    /// Which campaign a scan targets on `today` (store-local), if any.
    ///
    /// Pass every spelling of the scanned code the record has: `gtin`, `code` and `raw`. Each
    /// 14-digit GTIN is also tried as EAN-13, UPC-A and EAN-8 (leading zeros dropped). When
    /// several campaigns match, the first in configuration order wins (logged at debug).
    pub fn campaign_for(&self, codes: &[&str], today: NaiveDate) -> Option<String> {
        self.campaigns
            .current()
            .campaign_for(codes, today)
            .map(str::to_owned)
    }

    /// The option key when `code` is an answer card (`[answer_codes]`).
    pub fn answer_card(&self, code: &str) -> Option<String> {
        self.campaigns
            .current()
            .answer_card(code)
            .map(str::to_owned)
    }

    /// The preset skip reasons.
    pub fn skip_reasons(&self) -> Arc<[String]> {
        self.skip_reasons
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts new campaigns, answer cards and skip reasons in force (a configuration reload).
    /// Prompts already open keep their question and options and can still be answered; scans
    /// from now on are matched against the new campaigns. The sale-link window is not reloaded.
    pub fn reload(&self, config: PromptsConfig) {
        self.campaigns
            .replace(Campaigns::new(config.campaigns, config.answer_codes));
        *self
            .skip_reasons
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config.skip_reasons.into();
    }

    /// Opens a prompt for a targeted scan, or returns the station's open prompt for the same
    /// `sku` (`new: false`): a customer holding two boxes of one product is one prompt.
    pub async fn open(&self, request: OpenRequest) -> Result<Opened, PromptError> {
        self.ask(|reply| Command::Open { request, reply }).await?
    }

    /// Answers a prompt with one of its option keys. Returns once the record is in the journal.
    pub async fn answer(
        &self,
        id: &str,
        option: &str,
        clerk: Option<String>,
        channel: Channel,
    ) -> Result<Resolution, PromptError> {
        let resolved = self
            .ask(|reply| Command::Answer {
                id: id.to_owned(),
                option: option.to_owned(),
                clerk,
                channel,
                reply,
            })
            .await??;
        written(resolved).await
    }

    /// Skips a prompt; `reason` must not be blank (it is recorded trimmed). Returns once the
    /// record is in the journal.
    pub async fn skip(
        &self,
        id: &str,
        reason: &str,
        clerk: Option<String>,
    ) -> Result<Resolution, PromptError> {
        let resolved = self
            .ask(|reply| Command::Skip {
                id: id.to_owned(),
                reason: reason.to_owned(),
                clerk,
                reply,
            })
            .await??;
        written(resolved).await
    }

    /// Answers the oldest open prompt of `station` that offers `option` (an answer card, or
    /// a bare answer without a prompt id). `Ok(None)` when no open prompt there offers it.
    pub async fn answer_oldest(
        &self,
        station: &str,
        option: &str,
        channel: Channel,
    ) -> Result<Option<Resolution>, PromptError> {
        let resolved = self
            .ask(|reply| Command::AnswerOldest {
                station: station.to_owned(),
                option: option.to_owned(),
                channel,
                reply,
            })
            .await?;
        match resolved {
            Some(resolved) => written(resolved).await.map(Some),
            None => Ok(None),
        }
    }

    /// The open prompts of one station (or all), oldest first; empty when the engine stopped.
    pub async fn open_prompts(&self, station: Option<&str>) -> Vec<PromptView> {
        let station = station.map(str::to_owned);
        self.ask(|reply| Command::List { station, reply })
            .await
            .unwrap_or_default()
    }

    /// The open prompts of one station (or all) and every event after that snapshot, taken in
    /// one step: nothing is missed or seen twice. The receiver carries every station's events;
    /// filter on [`PromptEvent::station`]. When the engine is stopped the snapshot is empty and
    /// the receiver is closed.
    pub async fn subscribe(
        &self,
        station: Option<&str>,
    ) -> (Vec<PromptView>, broadcast::Receiver<PromptEvent>) {
        let subscription = self.subscription(station).await;
        (subscription.prompts, subscription.events)
    }

    /// [`subscribe`](Self::subscribe) plus today's figures, as one snapshot (for the clerk page).
    pub async fn subscription(&self, station: Option<&str>) -> Subscription {
        let station = station.map(str::to_owned);
        match self
            .ask(|reply| Command::Subscribe { station, reply })
            .await
        {
            Ok(subscription) => subscription,
            Err(_) => {
                let (_, events) = broadcast::channel(1);
                Subscription {
                    now: chrono::Local::now(),
                    prompts: Vec::new(),
                    today: Vec::new(),
                    events,
                }
            }
        }
    }

    /// Today's figures of every station that had a prompt today, by station name.
    pub async fn today(&self) -> Vec<StationToday> {
        self.today_with(&[]).await
    }

    /// Links a sale's lines to prompts at its station (the prompt id per line, `None` where no
    /// prompt matches); an open prompt that gets linked will carry the receipt in its
    /// attribution. With the engine stopped, nothing is linked.
    pub async fn link_sale(&self, sale: SaleLink) -> Vec<Option<String>> {
        let lines = sale.skus.len();
        self.ask(|reply| Command::LinkSale { sale, reply })
            .await
            .unwrap_or_else(|_| vec![None; lines])
    }

    /// Tells the engine whether the sale whose lines [`link_sale`](Self::link_sale) linked to
    /// `prompts` was written to the journal. The links are saved only once it was; if it could
    /// not be, they are taken back so that the sale, when it comes again, links anew.
    pub async fn sale_recorded(&self, station: String, prompts: Vec<String>, recorded: bool) {
        let _ = self
            .commands
            .send(Command::SaleRecorded {
                station,
                prompts,
                recorded,
            })
            .await;
    }

    /// [`today`](Self::today), plus zero figures for those of `stations` that had no prompt.
    pub async fn today_with(&self, stations: &[String]) -> Vec<StationToday> {
        let stations = stations.to_vec();
        self.ask(|reply| Command::Today { stations, reply })
            .await
            .unwrap_or_default()
    }

    /// Stops the engine: later requests fail with `Unavailable`, subscribers' streams end, and
    /// this returns once every queued record and the final open-prompt state are written. Open
    /// prompts stay open in the saved state and resume at the next start.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Sends a request and waits for its reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PromptError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}

fn stopped() -> PromptError {
    PromptError::Unavailable("prompt engine stopped".to_owned())
}

/// Waits until a resolution's record is in the journal.
async fn written((resolution, written): (Resolution, Written)) -> Result<Resolution, PromptError> {
    match written.await {
        Ok(Ok(())) => Ok(resolution),
        Ok(Err(error)) => Err(PromptError::Unavailable(format!(
            "attribution record not written: {error}"
        ))),
        Err(_) => Err(stopped()),
    }
}
