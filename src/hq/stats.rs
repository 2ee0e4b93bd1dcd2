//! The figures of `GET /v1/stats`: per-store totals, per-campaign attribution aggregates and
//! per-flow step completeness, kept up to date at ingest so a request never scans records.
//!
//! Three inputs feed [`Aggregates`], all only once the batch they come from is durable:
//! - [`StoreTotals`] per store (records by kind, duplicates, batches, last `ts`, last arrival),
//!   replaced whole after each batch; the writer persists the same struct under `T` + store;
//! - one [`AttributionSummary`] per stored attribution record, also persisted (`A` + hq_seq),
//!   so a restart rebuilds the campaign figures by reading only those, not the records;
//! - one [`ConsultationSummary`] per stored consultation record (`C` + hq_seq), likewise:
//!   each step of the consultation as done, skipped (with its reason) or missing.
//!
//! Counts are exact. The median answer latency is exact too: the latencies of answered prompts
//! are kept in memory (8 bytes per answered prompt) and the median is taken per request; so is
//! the median `held_ms` of held scans (8 bytes per consultation that held one). Everything
//! else is counters per store, campaign or flow, per station, clerk, step, option and skip
//! reason: it grows with the configuration and the staff, not with the records.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::daily::{Daily, Day, DayCounters};

/// What the statistics keep of one attribution record (persisted in compact JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AttributionSummary {
    /// Store code.
    #[serde(rename = "s")]
    pub store: String,
    /// Campaign id.
    #[serde(rename = "c")]
    pub campaign: String,
    /// `answered`, `timeout` or `skipped`.
    #[serde(rename = "o")]
    pub outcome: String,
    /// Option key chosen.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Label of the option chosen.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub answer_label: Option<String>,
    /// Station the prompt was shown at.
    #[serde(rename = "st", default, skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    /// Clerk who answered or skipped.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub clerk: Option<String>,
    /// The question asked.
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    /// Milliseconds from opening to resolution.
    #[serde(rename = "ms", default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The record's instant (`ts`), epoch milliseconds (0 in a summary from before HQ kept it).
    #[serde(rename = "t", default)]
    pub t: i64,
    /// The offset of the record's `ts`, in minutes east of UTC (absent: 0).
    #[serde(rename = "z", default, skip_serializing_if = "is_zero")]
    pub offset_minutes: i32,
    /// The prompt's id (what a sale line's `prompt` names).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// When the prompt opened, as written.
    #[serde(rename = "oa", default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    /// The receipt of the sale known at resolution.
    #[serde(rename = "rc", default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// Whether an offset is zero (UTC): left out of a summary.
fn is_zero(minutes: &i32) -> bool {
    *minutes == 0
}

impl AttributionSummary {
    /// Bytes this summary takes in memory, its strings included.
    pub(crate) fn memory_size(&self) -> usize {
        let optional = [
            &self.answer,
            &self.answer_label,
            &self.station,
            &self.clerk,
            &self.question,
            &self.prompt,
            &self.opened_at,
            &self.receipt,
        ];
        std::mem::size_of::<Self>()
            + self.store.capacity()
            + self.campaign.capacity()
            + self.outcome.capacity()
            + optional
                .iter()
                .filter_map(|text| text.as_ref().map(String::capacity))
                .sum::<usize>()
    }
}

/// What the statistics keep of one consultation record (persisted in compact JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsultationSummary {
    /// Store code.
    #[serde(rename = "s")]
    pub store: String,
    /// Flow id.
    #[serde(rename = "f")]
    pub flow: String,
    /// `completed`, `incomplete` or `abandoned`.
    #[serde(rename = "o")]
    pub outcome: String,
    /// The clerk who opened it, the one its completeness is counted for.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub clerk: Option<String>,
    /// Its steps, in the flow's order.
    #[serde(rename = "st", default)]
    pub steps: Vec<StepSummary>,
    /// How long its held scan waited.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
    /// Why its held scan went on (`steps`, `timeout`, `closed`, `shutdown`, `restart`).
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    /// The record's instant (`ts`), epoch milliseconds (0 in a summary from before HQ kept it).
    #[serde(rename = "t", default)]
    pub t: i64,
    /// The offset of the record's `ts`, in minutes east of UTC (absent: 0).
    #[serde(rename = "z", default, skip_serializing_if = "is_zero")]
    pub offset_minutes: i32,
    /// The consultation's id (what a sale's `consultation` names).
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When it opened, as written.
    #[serde(rename = "oa", default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    /// The customer's reference, if one was given.
    #[serde(rename = "cu", default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The linked sale's receipt.
    #[serde(rename = "rc", default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// One step of a [`ConsultationSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepSummary {
    /// The step's key.
    #[serde(rename = "k")]
    pub key: String,
    /// Its label.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Done, skipped or missing.
    #[serde(rename = "x")]
    pub status: StepStatus,
    /// The skip reason, when skipped.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The value recorded (a `choose` option, or the product code of an `auto = "scan"` step).
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The values recorded by a `multi` step.
    #[serde(rename = "vs", default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// What became of one step of a closed consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StepStatus {
    /// `at` set and not skipped: the field is filled.
    #[serde(rename = "d")]
    Done,
    /// Skipped, with a reason.
    #[serde(rename = "s")]
    Skipped,
    /// Neither done nor skipped (`at` null).
    #[serde(rename = "m")]
    Missing,
}

impl ConsultationSummary {
    /// Bytes this summary takes in memory, its strings included.
    pub(crate) fn memory_size(&self) -> usize {
        let optional = [
            &self.clerk,
            &self.released_by,
            &self.id,
            &self.opened_at,
            &self.customer,
            &self.receipt,
        ];
        std::mem::size_of::<Self>()
            + self.store.capacity()
            + self.flow.capacity()
            + self.outcome.capacity()
            + optional
                .iter()
                .filter_map(|text| text.as_ref().map(String::capacity))
                .sum::<usize>()
            + self
                .steps
                .iter()
                .map(|step| {
                    std::mem::size_of::<StepSummary>()
                        + step.key.capacity()
                        + step.label.as_ref().map_or(0, String::capacity)
                        + step.reason.as_ref().map_or(0, String::capacity)
                        + step.value.as_ref().map_or(0, String::capacity)
                        + step
                            .values
                            .iter()
                            .map(|value| value.capacity() + 24)
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// What HQ keeps of a *tracked* sale record (persisted in compact JSON under `L` + hq_seq once
/// traced, under each of its `W` keys while it waits; see `join`):
/// a sale with a line naming a `prompt`, `flow` or `campaign`, or naming a `consultation`.
/// Sales of nothing tracked get no summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SaleSummary {
    /// Store code.
    #[serde(rename = "s")]
    pub store: String,
    /// The record's instant (`ts`), epoch milliseconds.
    #[serde(rename = "t", default)]
    pub t: i64,
    /// The receipt number.
    #[serde(rename = "rc", default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// The clerk who rang it up.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub clerk: Option<String>,
    /// The prompt ids its lines name, each once.
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// The consultation it names (`data.consultation`).
    #[serde(rename = "cn", default, skip_serializing_if = "Option::is_none")]
    pub consultation: Option<String>,
    /// The evidence of its first contact, handler and conversation, once HQ holds it.
    #[serde(rename = "tr", default, skip_serializing_if = "Option::is_none")]
    pub traced: Option<Evidence>,
}

impl SaleSummary {
    /// The clerk the sale counts for: its own, else the one of its evidence.
    pub(crate) fn counted_clerk(&self) -> Option<&str> {
        self.clerk
            .as_deref()
            .or_else(|| self.traced.as_ref().and_then(|e| e.clerk.as_deref()))
    }

    /// Bytes this summary takes in memory, its strings included.
    pub(crate) fn memory_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.store.capacity()
            + [&self.receipt, &self.clerk, &self.consultation]
                .iter()
                .filter_map(|text| text.as_ref().map(String::capacity))
                .sum::<usize>()
            + self
                .prompts
                .iter()
                .map(|p| p.capacity() + 24)
                .sum::<usize>()
            + self
                .traced
                .as_ref()
                .map_or(0, |e| e.clerk.as_ref().map_or(0, String::capacity))
    }
}

/// A record that shows a tracked sale's first contact, handler and conversation: an answered
/// attribution with its opening time and clerk, or a consultation with its opening time and a
/// step done (its clerk, else the sale's, is the handler). Persisted under `E` (see `join`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Evidence {
    /// What kind of record it is.
    #[serde(rename = "x")]
    pub kind: EvidenceKind,
    /// Its clerk, if it names one.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub clerk: Option<String>,
    /// Its hq_seq.
    #[serde(rename = "q")]
    pub hq_seq: u64,
}

/// The kinds of record that are evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum EvidenceKind {
    /// A consultation record.
    #[serde(rename = "c")]
    Consultation,
    /// An attribution record.
    #[serde(rename = "a")]
    Attribution,
}

/// What HQ keeps of a record, for the kinds it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Summary {
    /// An attribution record's.
    Attribution(AttributionSummary),
    /// A consultation record's.
    Consultation(ConsultationSummary),
    /// A tracked sale record's.
    Sale(SaleSummary),
}

impl Summary {
    /// Bytes this summary takes in memory, its strings included.
    pub(crate) fn memory_size(&self) -> usize {
        match self {
            Summary::Attribution(summary) => summary.memory_size(),
            Summary::Consultation(summary) => summary.memory_size(),
            Summary::Sale(summary) => summary.memory_size(),
        }
    }
}

/// Running totals of one store (persisted as JSON under `T` + store code).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTotals {
    /// Records stored (duplicates not counted).
    pub records: u64,
    /// Records received again after they were stored, or twice in one batch.
    pub duplicates: u64,
    /// Batches accepted (2xx), including all-duplicate ones.
    pub batches: u64,
    /// Records stored, by `kind`.
    pub by_kind: BTreeMap<String, u64>,
    /// The latest record `ts` seen (as the gateway wrote it); by instant, not by text.
    pub last_record_ts: Option<String>,
    /// When HQ last accepted a batch of this store (RFC 3339, UTC).
    pub last_received_at: Option<String>,
}

/// A store's batches as counted where they were received (PostgreSQL's `store_counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BatchCounts {
    /// Batches accepted, including all-duplicate ones.
    pub batches: u64,
    /// Records received again, or twice in one batch.
    pub duplicates: u64,
    /// When the last one was accepted (RFC 3339, UTC).
    pub last_received_at: Option<String>,
}

impl BatchCounts {
    fn apply(&self, totals: &mut StoreTotals) {
        totals.batches = self.batches;
        totals.duplicates = self.duplicates;
        if self.last_received_at.is_some() {
            totals.last_received_at = self.last_received_at.clone();
        }
    }
}

impl StoreTotals {
    /// Keeps `ts` when it is later than the latest seen so far.
    pub(crate) fn see_ts(&mut self, ts: &DateTime<FixedOffset>, text: &str) {
        let later = match self
            .last_record_ts
            .as_deref()
            .and_then(|latest| DateTime::parse_from_rfc3339(latest).ok())
        {
            Some(latest) => *ts > latest,
            None => true,
        };
        if later {
            self.last_record_ts = Some(text.to_string());
        }
    }
}

/// Outcome counts of a set of prompts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Prompts the clerk answered.
    pub answered: u64,
    /// Prompts nobody answered in time.
    pub timeout: u64,
    /// Prompts the clerk skipped.
    pub skipped: u64,
}

impl Outcomes {
    fn add(&mut self, outcome: &str) {
        match outcome {
            "answered" => self.answered += 1,
            "timeout" => self.timeout += 1,
            // Validation admits only the three outcomes.
            _ => self.skipped += 1,
        }
    }

    fn merge(&mut self, other: &Outcomes) {
        self.answered += other.answered;
        self.timeout += other.timeout;
        self.skipped += other.skipped;
    }

    fn opened(&self) -> u64 {
        self.answered + self.timeout + self.skipped
    }
}

/// Prompts of one station or clerk within a campaign.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// Prompts opened (every attribution record).
    pub opened: u64,
    /// Prompts by outcome.
    pub outcomes: Outcomes,
    /// `answered / opened`.
    pub completeness: f64,
}

/// The figures of one campaign (in one store, or over all stores).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CampaignReport {
    /// The question text of the latest record that carried one.
    pub question: Option<String>,
    /// Prompts opened: every attribution record of the campaign.
    pub opened: u64,
    /// Prompts by outcome.
    pub outcomes: Outcomes,
    /// `answered / opened`, from 0 to 1.
    pub completeness: f64,
    /// Answered prompts by option key.
    pub answers: BTreeMap<String, u64>,
    /// Option key -> label, as last seen in the records.
    pub answer_labels: BTreeMap<String, String>,
    /// Median `latency_ms` of answered prompts (mean of the middle two for an even count);
    /// null when no answered prompt has a latency.
    pub median_latency_ms: Option<f64>,
    /// Prompts by station.
    pub stations: BTreeMap<String, Breakdown>,
    /// Prompts by clerk (prompts without a clerk, like timeouts, are not in here).
    pub clerks: BTreeMap<String, Breakdown>,
}

/// The figures of one store.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreReport {
    /// Totals by kind, duplicates, last times.
    #[serde(flatten)]
    pub totals: StoreTotals,
    /// Campaign figures of this store, by campaign id.
    pub campaigns: BTreeMap<String, CampaignReport>,
    /// Consultation figures of this store, by flow id.
    pub flows: BTreeMap<String, FlowReport>,
    /// Set on an entry that collapses another region's stores (`region:ID`): the region id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Set on a collapsed entry: how many stores it sums.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_count: Option<u64>,
}

/// The body of `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsReport {
    /// The highest durable `hq_seq` these figures include (records up to it are counted).
    pub hq_seq: u64,
    /// Records stored over all stores.
    pub records: u64,
    /// Per store, by store code.
    pub stores: BTreeMap<String, StoreReport>,
    /// Per campaign over all stores, by campaign id.
    pub campaigns: BTreeMap<String, CampaignReport>,
    /// Per flow over all stores, by flow id.
    pub flows: BTreeMap<String, FlowReport>,
}

/// Consultations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowOutcomes {
    /// Every step done or skipped.
    pub completed: u64,
    /// Closed with steps neither done nor skipped.
    pub incomplete: u64,
    /// Abandoned by the clerk, or open past the flow's timeout.
    pub abandoned: u64,
}

impl FlowOutcomes {
    fn add(&mut self, outcome: &str) {
        match outcome {
            "completed" => self.completed += 1,
            "incomplete" => self.incomplete += 1,
            // Validation admits only the three outcomes.
            _ => self.abandoned += 1,
        }
    }

    fn merge(&mut self, other: &FlowOutcomes) {
        self.completed += other.completed;
        self.incomplete += other.incomplete;
        self.abandoned += other.abandoned;
    }

    fn total(&self) -> u64 {
        self.completed + self.incomplete + self.abandoned
    }
}

/// One step of a flow over a set of consultations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepReport {
    /// The step's key.
    pub key: String,
    /// Its label, as last seen; null if no record had one.
    pub label: Option<String>,
    /// Consultations whose record has this step (`done + skipped + missing`).
    pub consultations: u64,
    /// Done: `at` set, not skipped.
    pub done: u64,
    /// Skipped, with a reason.
    pub skipped: u64,
    /// Neither done nor skipped.
    pub missing: u64,
    /// `done / consultations`, from 0 to 1: a skipped step is not a filled field.
    pub completeness: f64,
    /// Skipped steps by reason.
    pub skip_reasons: BTreeMap<String, u64>,
}

/// Step completeness of a set of consultations (a clerk's, or a whole flow's).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FlowBreakdown {
    /// Consultation records.
    pub consultations: u64,
    /// Consultations by outcome.
    pub outcomes: FlowOutcomes,
    /// Steps done over all steps of all these consultations (过程数据完整率: required fields
    /// filled / required fields), from 0 to 1.
    pub completeness: f64,
    /// Each step, in the flow's order (as in the latest record that had the step).
    pub steps: Vec<StepReport>,
}

/// Held scans released one way.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeldReport {
    /// Consultations whose held scan went on this way.
    pub consultations: u64,
    /// Median `held_ms` (mean of the middle two for an even count); null when none says.
    pub median_held_ms: Option<f64>,
}

/// The consultation figures of one flow (in one store, or over all stores).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FlowReport {
    /// Consultations, outcomes, completeness and steps of the flow.
    #[serde(flatten)]
    pub figures: FlowBreakdown,
    /// The same per clerk: the clerk who opened the consultation (`data.clerk`), for every
    /// step of it, so a step nobody did counts against someone; consultations without a clerk
    /// are not in here.
    pub clerks: BTreeMap<String, FlowBreakdown>,
    /// Consultations that held a scan, by `released_by`.
    pub held: BTreeMap<String, HeldReport>,
}

/// Running counts of one step.
#[derive(Debug, Clone, Default)]
struct StepTally {
    /// Label as last seen.
    label: Option<String>,
    /// Index of the step in the latest record that had it (for the order of the report).
    position: usize,
    /// Done, skipped, missing.
    done: u64,
    skipped: u64,
    missing: u64,
    /// Skips by reason.
    reasons: BTreeMap<String, u64>,
}

impl StepTally {
    fn add(&mut self, position: usize, step: &StepSummary) {
        self.position = position;
        if step.label.is_some() {
            self.label.clone_from(&step.label);
        }
        match step.status {
            StepStatus::Done => self.done += 1,
            StepStatus::Missing => self.missing += 1,
            StepStatus::Skipped => {
                self.skipped += 1;
                let reason = step.reason.as_deref().unwrap_or_default();
                match self.reasons.get_mut(reason) {
                    Some(count) => *count += 1,
                    None => {
                        self.reasons.insert(reason.to_string(), 1);
                    }
                }
            }
        }
    }

    fn merge(&mut self, other: &StepTally) {
        if other.label.is_some() {
            self.label.clone_from(&other.label);
        }
        self.done += other.done;
        self.skipped += other.skipped;
        self.missing += other.missing;
        for (reason, count) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += count;
        }
    }

    fn report(&self, key: &str) -> StepReport {
        let consultations = self.done + self.skipped + self.missing;
        StepReport {
            key: key.to_string(),
            label: self.label.clone(),
            consultations,
            done: self.done,
            skipped: self.skipped,
            missing: self.missing,
            completeness: ratio(self.done, consultations),
            skip_reasons: self.reasons.clone(),
        }
    }
}

/// Running step counts of a set of consultations.
#[derive(Debug, Clone, Default)]
struct StepsTally {
    /// By outcome.
    outcomes: FlowOutcomes,
    /// By step key.
    steps: BTreeMap<String, StepTally>,
}

impl StepsTally {
    fn add(&mut self, summary: &ConsultationSummary) {
        self.outcomes.add(&summary.outcome);
        for (position, step) in summary.steps.iter().enumerate() {
            match self.steps.get_mut(&step.key) {
                Some(tally) => tally.add(position, step),
                None => {
                    let mut tally = StepTally::default();
                    tally.add(position, step);
                    self.steps.insert(step.key.clone(), tally);
                }
            }
        }
    }

    fn merge(&mut self, other: &StepsTally) {
        self.outcomes.merge(&other.outcomes);
        for (key, tally) in &other.steps {
            match self.steps.get_mut(key) {
                Some(mine) => mine.merge(tally),
                None => {
                    self.steps.insert(key.clone(), tally.clone());
                }
            }
        }
    }

    fn report(&self) -> FlowBreakdown {
        let mut steps: Vec<(&String, &StepTally)> = self.steps.iter().collect();
        steps.sort_by(|a, b| (a.1.position, a.0).cmp(&(b.1.position, b.0)));
        let steps: Vec<StepReport> = steps
            .into_iter()
            .map(|(key, tally)| tally.report(key))
            .collect();
        let done: u64 = steps.iter().map(|step| step.done).sum();
        let fields: u64 = steps.iter().map(|step| step.consultations).sum();
        FlowBreakdown {
            consultations: self.outcomes.total(),
            outcomes: self.outcomes,
            completeness: ratio(done, fields),
            steps,
        }
    }
}

/// Running figures of one flow in one store.
#[derive(Debug, Clone, Default)]
struct FlowTally {
    /// Every consultation.
    all: StepsTally,
    /// By the clerk who opened it.
    clerks: BTreeMap<String, StepsTally>,
    /// Held scans by `released_by`: how many, and the `held_ms` of those that say.
    held: BTreeMap<String, (u64, Vec<u64>)>,
}

impl FlowTally {
    fn add(&mut self, summary: &ConsultationSummary) {
        self.all.add(summary);
        if let Some(clerk) = &summary.clerk {
            self.clerks.entry(clerk.clone()).or_default().add(summary);
        }
        if let Some(released_by) = &summary.released_by {
            let (count, held) = self.held.entry(released_by.clone()).or_default();
            *count += 1;
            if let Some(ms) = summary.held_ms {
                held.push(ms);
            }
        }
    }

    fn merge(&mut self, other: &FlowTally) {
        self.all.merge(&other.all);
        for (clerk, tally) in &other.clerks {
            self.clerks.entry(clerk.clone()).or_default().merge(tally);
        }
        for (released_by, (count, held)) in &other.held {
            let mine = self.held.entry(released_by.clone()).or_default();
            mine.0 += count;
            mine.1.extend_from_slice(held);
        }
    }

    fn report(&self) -> FlowReport {
        FlowReport {
            figures: self.all.report(),
            clerks: self
                .clerks
                .iter()
                .map(|(clerk, tally)| (clerk.clone(), tally.report()))
                .collect(),
            held: self
                .held
                .iter()
                .map(|(released_by, (count, held))| {
                    let report = HeldReport {
                        consultations: *count,
                        median_held_ms: median(held),
                    };
                    (released_by.clone(), report)
                })
                .collect(),
        }
    }
}

/// Running figures of one campaign in one store.
#[derive(Debug, Clone, Default)]
struct CampaignTally {
    /// Latest question text seen.
    question: Option<String>,
    /// Counts by outcome.
    outcomes: Outcomes,
    /// Answered prompts by option key.
    answers: BTreeMap<String, u64>,
    /// Option key -> label.
    labels: BTreeMap<String, String>,
    /// `latency_ms` of answered prompts, in arrival order.
    latencies: Vec<u64>,
    /// Counts by station.
    stations: BTreeMap<String, Outcomes>,
    /// Counts by clerk.
    clerks: BTreeMap<String, Outcomes>,
}

impl CampaignTally {
    fn add(&mut self, summary: &AttributionSummary) {
        if summary.question.is_some() {
            self.question.clone_from(&summary.question);
        }
        self.outcomes.add(&summary.outcome);
        if summary.outcome == "answered" {
            if let Some(answer) = &summary.answer {
                *self.answers.entry(answer.clone()).or_default() += 1;
                if let Some(label) = &summary.answer_label {
                    self.labels.insert(answer.clone(), label.clone());
                }
            }
            if let Some(latency) = summary.latency_ms {
                self.latencies.push(latency);
            }
        }
        if let Some(station) = &summary.station {
            self.stations
                .entry(station.clone())
                .or_default()
                .add(&summary.outcome);
        }
        if let Some(clerk) = &summary.clerk {
            self.clerks
                .entry(clerk.clone())
                .or_default()
                .add(&summary.outcome);
        }
    }

    fn merge(&mut self, other: &CampaignTally) {
        if other.question.is_some() {
            self.question.clone_from(&other.question);
        }
        self.outcomes.merge(&other.outcomes);
        for (answer, count) in &other.answers {
            *self.answers.entry(answer.clone()).or_default() += count;
        }
        self.labels
            .extend(other.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.latencies.extend_from_slice(&other.latencies);
        for (station, outcomes) in &other.stations {
            self.stations
                .entry(station.clone())
                .or_default()
                .merge(outcomes);
        }
        for (clerk, outcomes) in &other.clerks {
            self.clerks
                .entry(clerk.clone())
                .or_default()
                .merge(outcomes);
        }
    }

    fn report(&self) -> CampaignReport {
        let breakdown = |outcomes: &Outcomes| Breakdown {
            opened: outcomes.opened(),
            outcomes: *outcomes,
            completeness: ratio(outcomes.answered, outcomes.opened()),
        };
        CampaignReport {
            question: self.question.clone(),
            opened: self.outcomes.opened(),
            outcomes: self.outcomes,
            completeness: ratio(self.outcomes.answered, self.outcomes.opened()),
            answers: self.answers.clone(),
            answer_labels: self.labels.clone(),
            median_latency_ms: median(&self.latencies),
            stations: self
                .stations
                .iter()
                .map(|(k, v)| (k.clone(), breakdown(v)))
                .collect(),
            clerks: self
                .clerks
                .iter()
                .map(|(k, v)| (k.clone(), breakdown(v)))
                .collect(),
        }
    }
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The median of `values`: the middle one, or the mean of the middle two; `None` when empty.
fn median(values: &[u64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let odd = values.len() % 2 == 1;
    let mut values = values.to_vec();
    let middle = values.len() / 2;
    let (below, upper, _) = values.select_nth_unstable(middle);
    let upper = *upper as f64;
    if odd {
        return Some(upper);
    }
    // For an even count the lower middle is the largest of the lower half.
    let lower = below.iter().copied().max().map_or(upper, |v| v as f64);
    Some((lower + upper) / 2.0)
}

/// How one store shows in a scoped `/v1/stats` (see [`Aggregates::report_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreView {
    /// In full, under its code.
    Full,
    /// Summed into the entry `region:ID` of its region (no clerks or stations).
    Region(String),
    /// Not at all.
    Hidden,
}

/// Adds `other`'s totals to `totals` (latest times kept).
fn merge_totals(totals: &mut StoreTotals, other: &StoreTotals) {
    totals.records += other.records;
    totals.duplicates += other.duplicates;
    totals.batches += other.batches;
    for (kind, count) in &other.by_kind {
        *totals.by_kind.entry(kind.clone()).or_default() += count;
    }
    if let Some(text) = &other.last_record_ts {
        if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
            totals.see_ts(&ts, text);
        }
    }
    // RFC 3339 in UTC with millis, always the same width: text order is time order.
    if other.last_received_at > totals.last_received_at {
        totals.last_received_at = other.last_received_at.clone();
    }
}

/// Everything `/v1/stats` reports, and the daily figures (`daily`), kept current by the
/// store's flusher.
#[derive(Debug, Default)]
pub(crate) struct Aggregates {
    /// Highest durable hq_seq included.
    hq_seq: u64,
    /// Totals by store code.
    stores: BTreeMap<String, StoreTotals>,
    /// Campaign tallies by (store code, campaign id).
    campaigns: BTreeMap<(String, String), CampaignTally>,
    /// Flow tallies by (store code, flow id).
    flows: BTreeMap<(String, String), FlowTally>,
    /// The same records by store-local day, for the yardsticks and alert rules.
    daily: Daily,
    /// Batch counts taken from PostgreSQL, over the records' own (`set_batch_counts`).
    batch_counts: BTreeMap<String, BatchCounts>,
}

impl Aggregates {
    /// No figures yet; days are store-local days in `timezone`.
    pub(crate) fn new(timezone: chrono_tz::Tz) -> Self {
        Aggregates {
            daily: Daily::new(timezone),
            ..Aggregates::default()
        }
    }

    /// Counts one durable attribution record.
    pub(crate) fn add_attribution(&mut self, summary: &AttributionSummary) {
        self.campaigns
            .entry((summary.store.clone(), summary.campaign.clone()))
            .or_default()
            .add(summary);
        self.daily.add_attribution(summary);
    }

    /// Counts one durable consultation record.
    pub(crate) fn add_consultation(&mut self, summary: &ConsultationSummary) {
        self.flows
            .entry((summary.store.clone(), summary.flow.clone()))
            .or_default()
            .add(summary);
        self.daily.add_consultation(summary);
    }

    /// Counts one durable record's summary.
    pub(crate) fn add(&mut self, summary: &Summary) {
        match summary {
            Summary::Attribution(summary) => self.add_attribution(summary),
            Summary::Consultation(summary) => self.add_consultation(summary),
            Summary::Sale(summary) => self.daily.add_sale(summary),
        }
    }

    /// A tracked sale counted before became traced (`before` as it was counted).
    pub(crate) fn retrace(&mut self, before: &SaleSummary, after: &SaleSummary) {
        self.daily.remove_sale(before);
        self.daily.add_sale(after);
    }

    /// Replaces the per-day counters of a store-local day (as persisted under `Y`).
    pub(crate) fn set_day_counters(&mut self, store: &str, day: Day, counters: DayCounters) {
        self.daily.set_counters(store, day, counters);
    }

    /// Forgets daily figures of days long past (see [`Daily::forget_old_days`]).
    pub(crate) fn forget_old_days(&mut self, now: chrono::DateTime<chrono::Utc>) {
        let today = self.daily.day_of(now.fixed_offset());
        self.daily.forget_old_days(today);
    }

    /// The daily figures.
    pub(crate) fn daily(&self) -> &Daily {
        &self.daily
    }

    /// Replaces a store's totals with the ones as of its latest durable batch.
    pub(crate) fn set_store_totals(&mut self, store: &str, mut totals: StoreTotals) {
        if let Some(counts) = self.batch_counts.get(store) {
            counts.apply(&mut totals);
        }
        self.stores.insert(store.to_string(), totals);
    }

    /// Takes the batch counts of every store from elsewhere (PostgreSQL, where every receiver
    /// counts the batches it took: a receiver's cache sees only the records), over what the
    /// stored records say.
    pub(crate) fn set_batch_counts(&mut self, counts: BTreeMap<String, BatchCounts>) {
        for (store, counts) in &counts {
            if let Some(totals) = self.stores.get_mut(store) {
                counts.apply(totals);
            } else {
                let mut totals = StoreTotals::default();
                counts.apply(&mut totals);
                self.stores.insert(store.clone(), totals);
            }
        }
        self.batch_counts = counts;
    }

    /// Whether the durable records of `store` (of any store when `None`) include `kind`.
    pub(crate) fn holds_kind(&self, store: Option<&str>, kind: &str) -> bool {
        let held = |totals: &StoreTotals| totals.by_kind.get(kind).is_some_and(|n| *n > 0);
        match store {
            Some(code) => self.stores.get(code).is_some_and(held),
            None => self.stores.values().any(held),
        }
    }

    /// Records that everything up to `hq_seq` is included.
    pub(crate) fn set_hq_seq(&mut self, hq_seq: u64) {
        self.hq_seq = self.hq_seq.max(hq_seq);
    }

    /// The `/v1/stats` body.
    pub(crate) fn report(&self) -> StatsReport {
        let mut report = StatsReport {
            hq_seq: self.hq_seq,
            ..StatsReport::default()
        };
        for (code, totals) in &self.stores {
            report.records += totals.records;
            report.stores.insert(
                code.clone(),
                StoreReport {
                    totals: totals.clone(),
                    ..StoreReport::default()
                },
            );
        }
        let mut overall: BTreeMap<&str, CampaignTally> = BTreeMap::new();
        for ((store, campaign), tally) in &self.campaigns {
            report
                .stores
                .entry(store.clone())
                .or_default()
                .campaigns
                .insert(campaign.clone(), tally.report());
            overall.entry(campaign).or_default().merge(tally);
        }
        report.campaigns = overall
            .into_iter()
            .map(|(campaign, tally)| (campaign.to_string(), tally.report()))
            .collect();
        let mut overall: BTreeMap<&str, FlowTally> = BTreeMap::new();
        for ((store, flow), tally) in &self.flows {
            report
                .stores
                .entry(store.clone())
                .or_default()
                .flows
                .insert(flow.clone(), tally.report());
            overall.entry(flow).or_default().merge(tally);
        }
        report.flows = overall
            .into_iter()
            .map(|(flow, tally)| (flow.to_string(), tally.report()))
            .collect();
        report
    }
}

impl Aggregates {
    /// The `/v1/stats` body as a caller of limited scope sees it: each store as `view` says.
    /// The figures over all stores count every store that is not hidden, but their clerk and
    /// station breakdowns hold only the stores shown in full.
    pub(crate) fn report_for(&self, view: impl Fn(&str) -> StoreView) -> StatsReport {
        let mut report = StatsReport {
            hq_seq: self.hq_seq,
            ..StatsReport::default()
        };
        // Store code -> (entry key, shown in full).
        let mut keys: BTreeMap<&str, Option<(String, bool)>> = BTreeMap::new();
        let all_codes = self
            .stores
            .keys()
            .chain(self.campaigns.keys().map(|(store, _)| store))
            .chain(self.flows.keys().map(|(store, _)| store));
        for code in all_codes {
            keys.entry(code.as_str())
                .or_insert_with(|| match view(code) {
                    StoreView::Full => Some((code.clone(), true)),
                    StoreView::Region(id) => Some((format!("region:{id}"), false)),
                    StoreView::Hidden => None,
                });
        }
        let key = |code: &str| keys.get(code).cloned().flatten();
        for (code, totals) in &self.stores {
            let Some((entry_key, full)) = key(code) else {
                continue;
            };
            report.records += totals.records;
            let entry = report.stores.entry(entry_key.clone()).or_default();
            if full {
                entry.totals = totals.clone();
            } else {
                merge_totals(&mut entry.totals, totals);
                entry.region = entry_key.strip_prefix("region:").map(str::to_owned);
                entry.store_count = Some(entry.store_count.unwrap_or(0) + 1);
            }
        }
        let mut per_entry: BTreeMap<(String, &str), CampaignTally> = BTreeMap::new();
        let mut overall: BTreeMap<&str, CampaignTally> = BTreeMap::new();
        let mut overall_full: BTreeMap<&str, CampaignTally> = BTreeMap::new();
        for ((store, campaign), tally) in &self.campaigns {
            let Some((entry_key, full)) = key(store) else {
                continue;
            };
            per_entry
                .entry((entry_key, campaign))
                .or_default()
                .merge(tally);
            overall.entry(campaign).or_default().merge(tally);
            if full {
                overall_full.entry(campaign).or_default().merge(tally);
            }
        }
        for ((entry_key, campaign), tally) in per_entry {
            let mut figures = tally.report();
            if entry_key.starts_with("region:") {
                figures.clerks.clear();
                figures.stations.clear();
            }
            report
                .stores
                .entry(entry_key)
                .or_default()
                .campaigns
                .insert(campaign.to_string(), figures);
        }
        for (campaign, tally) in overall {
            let mut figures = tally.report();
            let full = overall_full.get(campaign).map(CampaignTally::report);
            figures.clerks = full.as_ref().map(|f| f.clerks.clone()).unwrap_or_default();
            figures.stations = full.map(|f| f.stations).unwrap_or_default();
            report.campaigns.insert(campaign.to_string(), figures);
        }
        let mut per_entry: BTreeMap<(String, &str), FlowTally> = BTreeMap::new();
        let mut overall: BTreeMap<&str, FlowTally> = BTreeMap::new();
        let mut overall_full: BTreeMap<&str, FlowTally> = BTreeMap::new();
        for ((store, flow), tally) in &self.flows {
            let Some((entry_key, full)) = key(store) else {
                continue;
            };
            per_entry.entry((entry_key, flow)).or_default().merge(tally);
            overall.entry(flow).or_default().merge(tally);
            if full {
                overall_full.entry(flow).or_default().merge(tally);
            }
        }
        for ((entry_key, flow), tally) in per_entry {
            let mut figures = tally.report();
            if entry_key.starts_with("region:") {
                figures.clerks.clear();
            }
            report
                .stores
                .entry(entry_key)
                .or_default()
                .flows
                .insert(flow.to_string(), figures);
        }
        for (flow, tally) in overall {
            let mut figures = tally.report();
            figures.clerks = overall_full
                .get(flow)
                .map(|full| full.report().clerks)
                .unwrap_or_default();
            report.flows.insert(flow.to_string(), figures);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(
        store: &str,
        outcome: &str,
        answer: Option<&str>,
        latency: Option<u64>,
    ) -> AttributionSummary {
        AttributionSummary {
            store: store.into(),
            campaign: "c1".into(),
            outcome: outcome.into(),
            answer: answer.map(Into::into),
            answer_label: answer.map(|a| format!("label-{a}")),
            station: Some("till-1".into()),
            clerk: (outcome != "timeout").then(|| "c-7".to_string()),
            question: Some("why?".into()),
            latency_ms: latency,
            t: 0,
            offset_minutes: 0,
            prompt: None,
            opened_at: None,
            receipt: None,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5]), Some(5.0));
        assert_eq!(median(&[9, 1, 5]), Some(5.0));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2.5));
        assert_eq!(median(&[10, 10, 1, 1]), Some(5.5));
    }

    #[test]
    fn campaign_figures_per_store_and_overall() {
        let mut aggregates = Aggregates::default();
        for s in [
            summary("S1", "answered", Some("doctor"), Some(1000)),
            summary("S1", "answered", Some("poster"), Some(3000)),
            summary("S1", "timeout", None, None),
            summary("S1", "skipped", None, Some(200)),
            summary("S2", "answered", Some("doctor"), Some(2000)),
        ] {
            aggregates.add_attribution(&s);
        }
        let report = aggregates.report();
        let s1 = &report.stores["S1"].campaigns["c1"];
        assert_eq!(s1.opened, 4);
        assert_eq!(
            s1.outcomes,
            Outcomes {
                answered: 2,
                timeout: 1,
                skipped: 1
            }
        );
        assert_eq!(s1.completeness, 0.5);
        assert_eq!(s1.median_latency_ms, Some(2000.0), "answered only");
        assert_eq!(s1.answers["doctor"], 1);
        assert_eq!(s1.answer_labels["poster"], "label-poster");
        assert_eq!(s1.stations["till-1"].opened, 4);
        assert_eq!(s1.clerks["c-7"].opened, 3, "timeouts have no clerk");
        let all = &report.campaigns["c1"];
        assert_eq!(all.opened, 5);
        assert_eq!(all.completeness, 0.6);
        assert_eq!(all.median_latency_ms, Some(2000.0));
        assert_eq!(all.answers["doctor"], 2);
    }

    /// A consultation of flow f1 whose steps are `statuses` ('d' done, 's' skipped, 'm'
    /// missing) for the steps a, b, c.
    fn consultation(
        store: &str,
        clerk: Option<&str>,
        statuses: &str,
        held: Option<(&str, u64)>,
    ) -> ConsultationSummary {
        let steps = ["a", "b", "c"]
            .iter()
            .zip(statuses.chars())
            .map(|(key, status)| StepSummary {
                key: key.to_string(),
                label: Some(format!("label-{key}")),
                status: match status {
                    'd' => StepStatus::Done,
                    's' => StepStatus::Skipped,
                    _ => StepStatus::Missing,
                },
                reason: (status == 's').then(|| format!("reason-{key}")),
                value: None,
                values: Vec::new(),
            })
            .collect();
        ConsultationSummary {
            store: store.into(),
            flow: "f1".into(),
            outcome: if statuses.contains('m') {
                "incomplete".into()
            } else {
                "completed".into()
            },
            clerk: clerk.map(Into::into),
            steps,
            held_ms: held.map(|(_, ms)| ms),
            released_by: held.map(|(by, _)| by.to_string()),
            t: 0,
            offset_minutes: 0,
            id: None,
            opened_at: None,
            customer: None,
            receipt: None,
        }
    }

    #[test]
    fn flow_figures_per_step_store_clerk_and_overall() {
        let mut aggregates = Aggregates::default();
        for summary in [
            consultation("S1", Some("c-1"), "ddd", Some(("steps", 1000))),
            consultation("S1", Some("c-1"), "dsm", Some(("steps", 3000))),
            consultation("S1", Some("c-2"), "smm", Some(("timeout", 120_000))),
            consultation("S1", None, "dds", None),
            consultation("S2", Some("c-1"), "ddd", Some(("steps", 2000))),
        ] {
            aggregates.add(&Summary::Consultation(summary));
        }
        let report = aggregates.report();
        let s1 = &report.stores["S1"].flows["f1"];
        assert_eq!(s1.figures.consultations, 4);
        assert_eq!(
            s1.figures.outcomes,
            FlowOutcomes {
                completed: 2,
                incomplete: 2,
                abandoned: 0
            }
        );
        // 3 + 1 + 0 + 2 of 12 steps done.
        assert_eq!(s1.figures.completeness, 0.5);
        let keys: Vec<&str> = s1.figures.steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"], "in the flow's order");
        let b = &s1.figures.steps[1];
        assert_eq!(
            (b.consultations, b.done, b.skipped, b.missing),
            (4, 2, 1, 1)
        );
        assert_eq!(b.completeness, 0.5);
        assert_eq!(b.label.as_deref(), Some("label-b"));
        assert_eq!(
            b.skip_reasons,
            BTreeMap::from([("reason-b".to_string(), 1)])
        );
        let c = &s1.figures.steps[2];
        assert_eq!((c.done, c.skipped, c.missing), (1, 1, 2));
        // Per clerk: the opener's; the consultation without one is only in the flow's figures.
        assert_eq!(s1.clerks.len(), 2);
        let c1 = &s1.clerks["c-1"];
        assert_eq!(c1.consultations, 2);
        assert_eq!(c1.completeness, 4.0 / 6.0);
        assert_eq!(c1.steps[2].missing, 1);
        assert_eq!(s1.clerks["c-2"].steps[0].skip_reasons["reason-a"], 1);
        assert_eq!(s1.held["steps"].consultations, 2);
        assert_eq!(s1.held["steps"].median_held_ms, Some(2000.0));
        assert_eq!(s1.held["timeout"].median_held_ms, Some(120_000.0));
        // Over all stores.
        let all = &report.flows["f1"];
        assert_eq!(all.figures.consultations, 5);
        assert_eq!(all.figures.completeness, 9.0 / 15.0);
        assert_eq!(all.clerks["c-1"].consultations, 3);
        assert_eq!(all.held["steps"].consultations, 3);
        assert_eq!(all.held["steps"].median_held_ms, Some(2000.0));
        assert_eq!(report.stores["S2"].flows["f1"].figures.completeness, 1.0);
    }

    #[test]
    fn consultation_summaries_round_trip_compactly() {
        let summary = consultation("S1", Some("c-1"), "dsm", Some(("steps", 1000)));
        let json = serde_json::to_string(&summary).expect("json");
        assert!(json.contains(r#""x":"s","r":"reason-b""#), "{json}");
        let back: ConsultationSummary = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, summary);
    }

    #[test]
    fn latest_ts_is_by_instant() {
        let mut totals = StoreTotals::default();
        for text in [
            "2026-11-27T16:00:00+08:00",
            "2026-11-27T09:00:00+00:00",
            "2026-11-27T07:00:00+00:00",
        ] {
            let ts = DateTime::parse_from_rfc3339(text).expect("ts");
            totals.see_ts(&ts, text);
        }
        assert_eq!(
            totals.last_record_ts.as_deref(),
            Some("2026-11-27T09:00:00+00:00")
        );
    }
}
