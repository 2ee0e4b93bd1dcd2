//! The gateway core: the one place where device input becomes records.
//!
//! A single task owns this step. It receives [`DeviceEvent`]s from every device task, decides what
//! each one is (a scan, a bad frame, a connection change), decodes it, and appends the record to
//! the journal. Nothing is dropped here: a frame that cannot be decoded is still recorded as a
//! scan with `error` set, and binary noise is recorded as a `device` `bad_frame` with its bytes in
//! the detail, so the record of what the device sent is never lost.
//!
//! The core appends in the order events arrive, so records of one device keep their order.
//! Each turn it takes whatever events have queued (up to [`MAX_BATCH_RECORDS`]); consecutive
//! plain scans among them (no answer card, no campaign) go to the journal as one
//! `append_batch`, written before the next other record. A burst (an MQTT backlog after an
//! outage, a busy store) then costs one journal round trip instead of one per scan. MQTT
//! messages come in groups ([`DeviceEvent::Messages`], the messages of one read), and their
//! device waits to acknowledge them: the core tells it once per group, with the durability of
//! the group's last record (or `None` if one was refused).
//!
//! For scans it also asks the prompt engine two questions, both answered without a round trip:
//! is this an answer card (then the scan is recorded with `answer_code: true` and answers the
//! station's oldest open prompt), and does it target a campaign today (then the scan record
//! carries `campaign` and, once it is in the journal, a prompt opens with the scan's id).
//!
//! Bad frames are logged through [`log_limit`]: a few lines per device per interval, then one
//! summary with how many were held back and a sample, so line noise cannot flood the log (the
//! records and `posgw_bad_frames_total` still count every one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Local};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::DecoderKind;
use crate::consult::{ConsultHandle, Flows, HeldScan, SaleSeen, ScanSeen};
use crate::decode::escpos::Receipt;
use crate::decode::{self, DecodeContext, DecodedScan};
use crate::devices::{Ack, Delivery, DeviceEvent, DeviceInfo};
use crate::journal::{
    Appended, Durable, JournalError, JournalHandle, MessageId, MAX_BATCH_RECORDS,
};
use crate::metrics::Metrics;
use crate::prompts::{OpenRequest, PromptsHandle, SaleLink};
use crate::record::attribution::Channel;
use crate::record::device::DeviceData;
use crate::record::sale::{Sale, SaleData};
use crate::record::scan::ScanData;
use crate::record::{Data, Kind};
use crate::sales;

pub mod log_limit;

use log_limit::{LogLimit, Suppressed};

/// Device events that may wait for the core before device tasks feel backpressure.
const QUEUE_EVENTS: usize = 1024;

/// Longest excerpt of a bad frame kept in its record's `detail`.
const BAD_FRAME_EXCERPT: usize = 256;

/// Bad frames logged per device and [`BAD_FRAME_LOG_INTERVAL`]; the rest are summarised (they
/// are all recorded and counted all the same).
const BAD_FRAME_LOG_BURST: u32 = 5;
/// See [`BAD_FRAME_LOG_BURST`].
const BAD_FRAME_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Health of the write path, shown by `/healthz`.
#[derive(Debug, Default)]
pub struct Health {
    /// Set when the journal refused an append; cleared by the next successful one.
    journal_failed: AtomicBool,
}

impl Health {
    /// `None` when healthy, else why not.
    pub fn problem(&self) -> Option<&'static str> {
        self.journal_failed
            .load(Ordering::Relaxed)
            .then_some("journal unavailable: records cannot be stored")
    }
}

/// The running core: where device tasks send their events.
pub struct CoreHandle {
    /// Device tasks clone this; the core stops when the last clone is dropped.
    pub events: mpsc::Sender<DeviceEvent>,
    /// Finishes once every queued event has been written.
    pub task: JoinHandle<()>,
    /// Write-path health for the API.
    pub health: Arc<Health>,
}

/// Starts the core task.
pub fn spawn(
    journal: JournalHandle,
    metrics: Metrics,
    prompts: PromptsHandle,
    consult: ConsultHandle,
) -> CoreHandle {
    let (events, rx) = mpsc::channel(QUEUE_EVENTS);
    let health = Arc::new(Health::default());
    let core = Core {
        journal,
        metrics,
        prompts,
        flows: consult.flows(),
        consult,
        health: health.clone(),
        card_answers: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
        bad_frame_log: std::sync::Mutex::new(LogLimit::new(
            BAD_FRAME_LOG_INTERVAL,
            BAD_FRAME_LOG_BURST,
        )),
    };
    let task = tokio::spawn(core.run(rx));
    CoreHandle {
        events,
        task,
        health,
    }
}

struct Core {
    journal: JournalHandle,
    metrics: Metrics,
    prompts: PromptsHandle,
    /// The consultation engine: flow products' scans and every sale go there.
    consult: ConsultHandle,
    /// The flows in force (which scans belong to a consultation).
    flows: tokio::sync::watch::Receiver<Arc<Flows>>,
    health: Arc<Health>,
    /// Answer-card answers in flight; drained before the core ends so none is lost at shutdown.
    card_answers: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Bad-frame log lines per device: a few per interval, the rest summarised. Only the core
    /// task locks it, never across an `.await`.
    bad_frame_log: std::sync::Mutex<LogLimit>,
}

/// What a decoded scan becomes: its record's data, and what it asks of the prompt engine.
struct ScanPlan {
    /// The record's `data`, serialised.
    data: Data,
    /// The answer option, when the code is an answer card.
    card: Option<String>,
    /// The campaign whose prompt it opens.
    campaign: Option<String>,
    /// The product code a prompt or consultation shows (empty without either).
    sku: String,
    /// The flow whose consultation the scan joins.
    flow: Option<String>,
}

impl ScanPlan {
    /// A scan that only becomes its record: no answer card, no prompt.
    fn is_plain(&self) -> bool {
        self.card.is_none() && self.campaign.is_none() && self.flow.is_none()
    }
}

/// Plain scans waiting to be appended together, each with the message group it came in and the
/// message it came from.
type PlainScans = Vec<(Data, Option<usize>, Option<MessageId>)>;

/// The message groups of one turn ([`DeviceEvent::Messages`]), by index: each device is told
/// once the last record of its group is settled.
#[derive(Default)]
struct Groups(Vec<Group>);

struct Group {
    /// Where the durability goes.
    ack: Option<Ack>,
    /// Records not settled yet.
    left: usize,
    /// Set once a record of the group was refused.
    refused: bool,
    /// The durability of the group's latest record so far.
    latest: Option<Durable>,
}

impl Groups {
    /// A group of `len` events (never empty: the MQTT task sends none).
    fn open(&mut self, ack: Ack, len: usize) -> usize {
        self.0.push(Group {
            ack: Some(ack),
            left: len,
            refused: false,
            latest: None,
        });
        self.0.len() - 1
    }

    /// Settles one record of `group` (none: the event came alone): its durability, or `None`
    /// when it was not written. The durability of the group's latest record covers the whole
    /// group (the journal makes records durable in position order); a message delivered again
    /// settles with the durability of the older record it became.
    fn settle(&mut self, group: Option<usize>, written: Option<&Durable>) {
        let Some(group) = group.and_then(|index| self.0.get_mut(index)) else {
            return;
        };
        match written {
            None => group.refused = true,
            Some(durable) => {
                if group
                    .latest
                    .as_ref()
                    .is_none_or(|latest| latest.position() < durable.position())
                {
                    group.latest = Some(durable.clone());
                }
            }
        }
        group.left = group.left.saturating_sub(1);
        if group.left == 0 {
            if let Some(ack) = group.ack.take() {
                // The device may have stopped waiting (shutdown): then nobody is told.
                let _ = ack.send(if group.refused {
                    None
                } else {
                    group.latest.take()
                });
            }
        }
    }
}

impl Core {
    async fn run(self, mut events: mpsc::Receiver<DeviceEvent>) {
        loop {
            // Bad frames held back from the log are summarised when their interval is over,
            // also when no event comes after them.
            let expiry = self.bad_frame_log().next_expiry();
            let event = tokio::select! {
                event = events.recv() => event,
                () = sleep_until_or_never(expiry) => {
                    let summaries = self.bad_frame_log().expired(tokio::time::Instant::now());
                    summaries.iter().for_each(log_suppressed);
                    continue;
                }
            };
            let Some(event) = event else { break };
            // Whatever queued meanwhile is handled in the same turn, so that a burst of plain
            // scans (an MQTT backlog, a busy store) goes to the journal as one batch.
            let mut turn = vec![event];
            while turn.len() < MAX_BATCH_RECORDS {
                match events.try_recv() {
                    Ok(event) => turn.push(event),
                    Err(_) => break,
                }
            }
            self.handle_turn(turn).await;
            // Reap finished card answers so the set stays small.
            let mut answers = self.card_answers.lock().await;
            while answers.try_join_next().is_some() {}
        }
        let mut answers = self.card_answers.lock().await;
        while answers.join_next().await.is_some() {}
        let end = tokio::time::Instant::now() + BAD_FRAME_LOG_INTERVAL;
        let summaries = self.bad_frame_log().expired(end);
        summaries.iter().for_each(log_suppressed);
    }

    fn bad_frame_log(&self) -> std::sync::MutexGuard<'_, LogLimit> {
        self.bad_frame_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handles events in order; consecutive plain scans are appended as one batch (in order with
    /// everything else: the batch is written before the next other record).
    async fn handle_turn(&self, events: Vec<DeviceEvent>) {
        let mut plain = PlainScans::new();
        let mut groups = Groups::default();
        // The date a campaign runs on and the year expiry dates are read against: one clock
        // reading per turn (a turn lasts well under a millisecond).
        let now = chrono::Local::now();
        for event in events {
            match event {
                DeviceEvent::Messages { events, ack } => {
                    let group = Some(groups.open(ack, events.len()));
                    for (delivery, event) in events {
                        if self
                            .already_recorded(delivery, group, &mut plain, &mut groups)
                            .await
                        {
                            continue;
                        }
                        let origin = Some(delivery.id);
                        self.handle_event(event, group, origin, now, &mut plain, &mut groups)
                            .await;
                    }
                }
                event => {
                    self.handle_event(event, None, None, now, &mut plain, &mut groups)
                        .await
                }
            }
        }
        self.append_plain(&mut plain, &mut groups).await;
    }

    /// Whether a message the broker delivered again (DUP) became a record already (before a
    /// crash, or before the connection was renewed): then it is settled with that record's
    /// durability and not recorded again. The plain scans before it are appended first, so a
    /// first delivery earlier in the same turn is found.
    async fn already_recorded(
        &self,
        delivery: Delivery,
        group: Option<usize>,
        plain: &mut PlainScans,
        groups: &mut Groups,
    ) -> bool {
        if !delivery.redelivered {
            return false;
        }
        self.append_plain(plain, groups).await;
        let Some(durable) = self.journal.recorded(delivery.id) else {
            return false;
        };
        tracing::debug!(
            pkid = delivery.id.pkid,
            "message delivered again is recorded already"
        );
        self.metrics.mqtt_redelivered_skipped.inc();
        groups.settle(group, Some(&durable));
        true
    }

    /// One event, of message group `group` if it came in one (from MQTT message `origin`): a
    /// plain scan joins `plain`, anything else is written after the plain scans before it.
    async fn handle_event(
        &self,
        event: DeviceEvent,
        group: Option<usize>,
        origin: Option<MessageId>,
        now: DateTime<Local>,
        plain: &mut PlainScans,
        groups: &mut Groups,
    ) {
        let written = match event {
            DeviceEvent::Frame { device, bytes } if matches!(device.decoder, DecoderKind::Scan) => {
                match self.plan_scan(&device, &bytes, now) {
                    Ok(plan) if plan.is_plain() => {
                        plain.push((plan.data, group, origin));
                        if plain.len() >= MAX_BATCH_RECORDS {
                            self.append_plain(plain, groups).await;
                        }
                        return;
                    }
                    Ok(plan) => {
                        self.append_plain(plain, groups).await;
                        self.record_scan(&device, plan, origin, None).await
                    }
                    Err(noise) => {
                        self.append_plain(plain, groups).await;
                        self.bad_frame(&device, &noise, origin).await
                    }
                }
            }
            DeviceEvent::HeldFrame {
                device,
                bytes,
                held,
            } => {
                self.append_plain(plain, groups).await;
                match self.plan_scan(&device, &bytes, now) {
                    Ok(plan) => self.record_scan(&device, plan, origin, Some(held)).await,
                    Err(noise) => {
                        drop(held);
                        self.bad_frame(&device, &noise, origin).await
                    }
                }
            }
            other => {
                self.append_plain(plain, groups).await;
                self.handle(other, origin).await
            }
        };
        groups.settle(group, written.as_ref().map(|appended| &appended.durable));
    }

    /// Appends the waiting plain scans in one batch and settles each one's group.
    async fn append_plain(&self, plain: &mut PlainScans, groups: &mut Groups) {
        if plain.is_empty() {
            return;
        }
        let mut data = Vec::with_capacity(plain.len());
        let mut of = Vec::with_capacity(plain.len());
        let mut origins = Vec::with_capacity(plain.len());
        for (record, group, origin) in plain.drain(..) {
            data.push(record);
            of.push(group);
            origins.push(origin);
        }
        if origins.iter().all(Option::is_none) {
            origins.clear();
        }
        // Kept to log the records if the journal refuses them (the only copy left then);
        // cloning `Data` copies no bytes.
        let copies = data.clone();
        match self
            .journal
            .append_batch_from(Kind::Scan, data, origins)
            .await
        {
            Ok(batch) => {
                self.health.journal_failed.store(false, Ordering::Relaxed);
                for group in of {
                    groups.settle(group, Some(&batch.durable));
                }
            }
            Err(error) => {
                self.health.journal_failed.store(true, Ordering::Relaxed);
                for record in &copies {
                    tracing::error!(kind = ?Kind::Scan, %error, record = %record.text(), "journal append failed; record lost");
                }
                for group in of {
                    groups.settle(group, None);
                }
            }
        }
    }

    /// Handles an event that is not a plain scan (from MQTT message `origin`); returns the
    /// record a device frame became (`None`: not written, or not a frame).
    async fn handle(&self, event: DeviceEvent, origin: Option<MessageId>) -> Option<Appended> {
        match event {
            DeviceEvent::Connected { device, detail } => {
                self.metrics.set_connected(&device.id, true);
                self.device_record(&device, "connected", &detail).await;
                None
            }
            DeviceEvent::Disconnected { device, detail } => {
                self.metrics.set_connected(&device.id, false);
                self.device_record(&device, "disconnected", &detail).await;
                None
            }
            DeviceEvent::Error { device, detail } => {
                self.device_record(&device, "error", &detail).await;
                None
            }
            DeviceEvent::BadFrame { device, detail } => {
                self.bad_frame(&device, &detail, origin).await
            }
            DeviceEvent::HeldFrame {
                device,
                bytes,
                held,
            } => match self.plan_scan(&device, &bytes, chrono::Local::now()) {
                Ok(plan) => self.record_scan(&device, plan, origin, Some(held)).await,
                Err(noise) => {
                    drop(held);
                    self.bad_frame(&device, &noise, origin).await
                }
            },
            DeviceEvent::Frame { device, bytes } => {
                match device.decoder {
                    DecoderKind::Scan => self.scan(&device, &bytes, origin).await,
                    DecoderKind::JsonSale => match sales::parse_json_sale(&bytes) {
                        Ok(sale) => self.sale(&device, sale, origin).await,
                        Err(reason) => {
                            let detail = format!("{reason}; message {}", excerpt(&bytes));
                            self.bad_frame(&device, &detail, origin).await
                        }
                    },
                    DecoderKind::Escpos => {
                        // The tap hands over whole receipts, never frames; say so if it happens.
                        let detail =
                            format!("unexpected frame from a printer tap: {}", excerpt(&bytes));
                        self.bad_frame(&device, &detail, origin).await
                    }
                }
            }
            DeviceEvent::Receipt { device, receipt } => {
                self.receipt(&device, &receipt).await;
                None
            }
            DeviceEvent::Messages { events, ack } => {
                // Groups are never nested; the device hears nothing and the broker redelivers.
                tracing::error!(count = events.len(), "nested message group not recorded");
                drop(ack);
                None
            }
        }
    }

    /// A printed receipt: a `sale` with its text and what the patterns found, plus a note when
    /// it did not end with a paper cut, and a `bad_frame` for unknown printer commands in it.
    async fn receipt(&self, device: &DeviceInfo, receipt: &Receipt) {
        let Some(escpos) = device.profile.escpos.as_ref() else {
            return;
        };
        let untrusted = match receipt.untrusted_lengths {
            0 => String::new(),
            n => format!(
                "{n} ESC/POS payload length(s) not trusted (longer than max_receipt, or after \
                 garbled bytes) and skipped only to the next ESC @ or cut"
            ),
        };
        let detail = match (receipt.unknown_commands, untrusted.is_empty()) {
            (0, true) => None,
            (0, false) => Some(format!("{untrusted} in a receipt")),
            (n, true) => Some(format!(
                "{n} unknown ESC/POS command(s) skipped in a receipt"
            )),
            (n, false) => Some(format!(
                "{n} unknown ESC/POS command(s) skipped and {untrusted} in a receipt"
            )),
        };
        if let Some(detail) = detail {
            self.bad_frame(device, &detail, None).await;
        }
        if let Some(note) = sales::unusual_end(receipt, escpos.max_receipt) {
            tracing::warn!(device = %device.id, "{note}");
            self.device_record(device, "error", &note).await;
        }
        if receipt.is_blank() {
            tracing::debug!(device = %device.id, "blank receipt (a cut or an init with nothing printed) ignored");
            return;
        }
        self.sale(device, sales::from_receipt(receipt, &escpos.patterns), None)
            .await;
    }

    /// Links the sale's lines to prompts at the device's station and writes the record.
    async fn sale(
        &self,
        device: &DeviceInfo,
        mut sale: Sale,
        origin: Option<MessageId>,
    ) -> Option<Appended> {
        let now = chrono::Local::now();
        mark_products(&mut sale, &self.flows.borrow(), |codes| {
            self.prompts.campaign_for(codes, now.date_naive())
        });
        let link = SaleLink {
            station: device.station.to_string(),
            receipt: sale.receipt.clone(),
            at: now,
            skus: sale.lines.iter().map(|line| line.sku.clone()).collect(),
        };
        let mut linked = Vec::new();
        if link.skus.iter().any(Option::is_some) {
            let prompts = self.prompts.link_sale(link).await;
            for (line, prompt) in sale.lines.iter_mut().zip(prompts) {
                linked.extend(prompt.clone());
                line.prompt = prompt;
            }
        }
        if !self.flows.borrow().is_empty() {
            sale.consultation = self
                .consult
                .link_sale(SaleSeen {
                    station: device.station.to_string(),
                    receipt: sale.receipt.clone(),
                    insurance: sale.insurance(),
                })
                .await;
        }
        let data = SaleData {
            device: &device.id,
            station: &device.station,
            sale,
        };
        let appended = self.append(Kind::Sale, &data, origin).await;
        if !linked.is_empty() {
            // The links stick only with the record that names them.
            self.prompts
                .sale_recorded(device.station.to_string(), linked, appended.is_some())
                .await;
        }
        appended
    }

    async fn scan(
        &self,
        device: &DeviceInfo,
        frame: &[u8],
        origin: Option<MessageId>,
    ) -> Option<Appended> {
        match self.plan_scan(device, frame, chrono::Local::now()) {
            Ok(plan) => self.record_scan(device, plan, origin, None).await,
            Err(noise) => self.bad_frame(device, &noise, origin).await,
        }
    }

    /// Decodes a scanned frame and decides what it becomes; `Err` is the detail of a
    /// `bad_frame` for noise.
    fn plan_scan(
        &self,
        device: &DeviceInfo,
        frame: &[u8],
        now: DateTime<Local>,
    ) -> Result<ScanPlan, String> {
        if let Some(reason) = decode::noise_reason(frame) {
            return Err(format!("{reason}: {}", excerpt(frame)));
        }
        let context = DecodeContext {
            current_year: now.year(),
        };
        let decoded = decode::decode_scan(frame, &context);
        let raw = decode::escape_raw(frame);
        let card = self.prompts.answer_card(&decoded.code);
        let codes = [
            decoded.gtin.as_deref().unwrap_or_default(),
            &decoded.code,
            &raw,
        ];
        let codes = if decoded.gtin.is_some() {
            &codes[..]
        } else {
            &codes[1..]
        };
        // A misread opens no prompt and joins no consultation: it could match a prefix by
        // accident, and would count against the clerk's completeness.
        let product = decoded.error.is_none() && card.is_none();
        let campaign = product
            .then(|| self.prompts.campaign_for(codes, now.date_naive()))
            .flatten();
        let flow = product
            .then(|| {
                self.flows
                    .borrow()
                    .flow_for(codes)
                    .map(|flow| flow.id.clone())
            })
            .flatten();
        // Only a prompt or a consultation shows it.
        let sku = if campaign.is_some() || flow.is_some() {
            product_code(&decoded)
        } else {
            String::new()
        };
        if let Some(error) = &decoded.error {
            tracing::debug!(device = %device.id, %raw, "undecodable scan: {error}");
        }
        let data = ScanData {
            device: &device.id,
            station: &device.station,
            raw: &raw,
            decoded: &decoded,
            campaign: campaign.as_deref(),
            answer_code: card.is_some(),
        }
        .encode();
        Ok(ScanPlan {
            data,
            card,
            campaign,
            sku,
            flow,
        })
    }

    /// Appends a scan's record, then answers the oldest prompt (an answer card) or opens one
    /// (a campaign product).
    async fn record_scan(
        &self,
        device: &DeviceInfo,
        plan: ScanPlan,
        origin: Option<MessageId>,
        held: Option<HeldScan>,
    ) -> Option<Appended> {
        // A held frame this returns without handing on is delivered when dropped.
        let appended = self.append_raw(Kind::Scan, plan.data, origin).await?;
        let scan_id = appended.id.clone();
        if let Some(flow) = plan.flow {
            self.consult
                .scan(ScanSeen {
                    station: device.station.to_string(),
                    flow,
                    scan_id: scan_id.clone(),
                    sku: plan.sku.clone(),
                    held,
                })
                .await;
        }
        if let Some(option) = plan.card {
            // Answered on its own task: the engine confirms only once the attribution is
            // durable, and the next scan must not wait for that.
            let prompts = self.prompts.clone();
            let station = device.station.to_string();
            self.card_answers.lock().await.spawn(async move {
                match prompts
                    .answer_oldest(&station, &option, Channel::Card)
                    .await
                {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::info!(%station, %option, "answer card scanned, but no prompt is open at this station; ignored")
                    }
                    Err(error) => {
                        tracing::warn!(%station, %option, %error, "answer card not taken")
                    }
                }
            });
        } else if let Some(campaign) = plan.campaign {
            let request = OpenRequest {
                station: device.station.to_string(),
                campaign: campaign.clone(),
                sku: plan.sku,
                scan_id,
                opened_at: chrono::Local::now(),
            };
            if let Err(error) = self.prompts.open(request).await {
                tracing::error!(%campaign, %error, "cannot open the prompt for a targeted scan");
            }
        }
        Some(appended)
    }

    async fn bad_frame(
        &self,
        device: &DeviceInfo,
        detail: &str,
        origin: Option<MessageId>,
    ) -> Option<Appended> {
        let (log, ended) =
            self.bad_frame_log()
                .admit(&device.id, tokio::time::Instant::now(), || {
                    detail.to_owned()
                });
        if let Some(summary) = ended {
            log_suppressed(&summary);
        }
        if log {
            tracing::warn!(device = %device.id, "bad frame: {detail}");
        }
        self.metrics.bad_frame(&device.id);
        let data = DeviceData {
            device: &device.id,
            event: "bad_frame",
            detail,
        };
        self.append(Kind::Device, &data, origin).await
    }

    async fn device_record(
        &self,
        device: &DeviceInfo,
        event: &'static str,
        detail: &str,
    ) -> Option<Appended> {
        let data = DeviceData {
            device: &device.id,
            event,
            detail,
        };
        self.append(Kind::Device, &data, None).await
    }

    /// Appends a record already serialised (from MQTT message `origin`); `None` when the
    /// journal refused it (logged).
    async fn append_raw(
        &self,
        kind: Kind,
        data: Data,
        origin: Option<MessageId>,
    ) -> Option<Appended> {
        // The journal takes its own; this one is for the log if it refuses the record.
        let copy = data.clone();
        let result = self.journal.append_from(kind, data, origin).await;
        self.settle(kind, result, || copy.text().into_owned())
    }

    /// Appends a record (from MQTT message `origin`); `None` when the journal refused it
    /// (logged and counted).
    async fn append<T: Serialize>(
        &self,
        kind: Kind,
        data: &T,
        origin: Option<MessageId>,
    ) -> Option<Appended> {
        let result = match Data::serialize(data) {
            Ok(serialized) => self.journal.append_from(kind, serialized, origin).await,
            Err(error) => Err(error.into()),
        };
        self.settle(kind, result, || {
            serde_json::to_string(data).unwrap_or_default()
        })
    }

    /// Notes that the journal took a record, or says a refused one is lost: as loudly as
    /// possible, with the record itself (`record`) so it can be recovered from the log.
    fn settle(
        &self,
        kind: Kind,
        result: Result<Appended, JournalError>,
        record: impl FnOnce() -> String,
    ) -> Option<Appended> {
        match result {
            Ok(appended) => {
                self.health.journal_failed.store(false, Ordering::Relaxed);
                Some(appended)
            }
            Err(error) => {
                self.health.journal_failed.store(true, Ordering::Relaxed);
                tracing::error!(?kind, %error, record = %record(), "journal append failed; record lost");
                None
            }
        }
    }
}

/// Logs the summary of bad frames held back from the log.
fn log_suppressed(summary: &Suppressed) {
    tracing::warn!(
        device = %summary.key,
        suppressed = summary.count,
        "{} more bad frame(s) within {}s not logged (each is recorded and counted in \
         posgw_bad_frames_total); the first: {}",
        summary.count,
        BAD_FRAME_LOG_INTERVAL.as_secs(),
        summary.sample
    );
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Marks each sale line whose SKU is a flow's product with that flow's id and each whose SKU a
/// campaign running today targets with the campaign's id, matched as scans are (the first
/// flow or campaign in configuration order, any GTIN spelling), so HQ can tell which sales
/// must be traceable (`campaign_for` is the prompt engine's).
fn mark_products(sale: &mut Sale, flows: &Flows, campaign_for: impl Fn(&[&str]) -> Option<String>) {
    for line in &mut sale.lines {
        let Some(sku) = line.sku.as_deref() else {
            continue;
        };
        let codes = [sku];
        line.flow = flows.flow_for(&codes).map(|flow| flow.id.clone());
        line.campaign = campaign_for(&codes);
    }
}

/// The product code a prompt shows and records: the EAN-13 (or EAN-8, UPC-A) inside the GTIN
/// when there is one, as registers print it on sale lines, else the scanned code.
fn product_code(decoded: &DecodedScan) -> String {
    match &decoded.gtin {
        Some(gtin) => {
            let trimmed = gtin.trim_start_matches('0');
            if trimmed.len() <= 13 && gtin.len() == 14 {
                // 06901234567892 -> 6901234567892; 00000069012341 -> 69012341 (EAN-8).
                let keep = if trimmed.len() <= 8 { 8 } else { 13 };
                gtin[gtin.len() - keep..].to_owned()
            } else {
                gtin.clone()
            }
        }
        None => decoded.code.clone(),
    }
}

/// The start of a frame in the contract's escaped form, cut to a readable length.
fn excerpt(frame: &[u8]) -> String {
    let cut = &frame[..frame.len().min(BAD_FRAME_EXCERPT)];
    let mut text = decode::escape_raw(cut);
    if frame.len() > cut.len() {
        text.push_str(&format!("… ({} bytes)", frame.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// A group's device hears once, after the last of its records is settled: that record's
    /// durability, or `None` when any of them was refused.
    #[tokio::test]
    async fn a_group_is_answered_once_after_its_last_record() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let journal = crate::journal::open_for_test(dir.path(), Duration::from_millis(5)).await;
        let mut durable = Vec::new();
        for code in ["1", "2", "3"] {
            let appended = journal
                .append_value(Kind::Scan, &serde_json::json!({ "code": code }))
                .await
                .expect("append");
            durable.push(appended.durable);
        }
        let mut groups = Groups::default();
        let (ack, mut whole) = oneshot::channel();
        let all = Some(groups.open(ack, 3));
        let (ack, mut refused) = oneshot::channel();
        let partly = Some(groups.open(ack, 2));

        groups.settle(all, Some(&durable[0]));
        groups.settle(partly, None);
        groups.settle(all, Some(&durable[1]));
        groups.settle(None, Some(&durable[1])); // an event that came alone: nobody to tell
        assert!(whole.try_recv().is_err(), "not before its last record");
        groups.settle(all, Some(&durable[2]));
        groups.settle(partly, Some(&durable[2]));

        let last = whole.try_recv().expect("answered").expect("durable");
        tokio::time::timeout(Duration::from_secs(5), last.wait())
            .await
            .expect("in time")
            .expect("the last record is durable");
        assert!(
            refused.try_recv().expect("answered").is_none(),
            "a group with a refused record is not acknowledged"
        );
    }
}
