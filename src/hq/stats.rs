//! The figures of `GET /v1/stats`: per-store totals and per-campaign attribution aggregates,
//! kept up to date at ingest so a request never scans records.
//!
//! Two inputs feed [`Aggregates`], both only once the batch they come from is durable:
//! - [`StoreTotals`] per store (records by kind, duplicates, batches, last `ts`, last arrival),
//!   replaced whole after each batch; the writer persists the same struct under `T` + store;
//! - one [`AttributionSummary`] per stored attribution record, also persisted (`A` + hq_seq),
//!   so a restart rebuilds the campaign figures by reading only those, not the records.
//!
//! Counts are exact. The median answer latency is exact too: the latencies of answered prompts
//! are kept in memory (8 bytes per answered prompt) and the median is taken per request.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

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

/// Everything `/v1/stats` reports, kept current by the store's flusher.
#[derive(Debug, Default)]
pub(crate) struct Aggregates {
    /// Highest durable hq_seq included.
    hq_seq: u64,
    /// Totals by store code.
    stores: BTreeMap<String, StoreTotals>,
    /// Campaign tallies by (store code, campaign id).
    campaigns: BTreeMap<(String, String), CampaignTally>,
}

impl Aggregates {
    /// Counts one durable attribution record.
    pub(crate) fn add_attribution(&mut self, summary: &AttributionSummary) {
        self.campaigns
            .entry((summary.store.clone(), summary.campaign.clone()))
            .or_default()
            .add(summary);
    }

    /// Replaces a store's totals with the ones as of its latest durable batch.
    pub(crate) fn set_store_totals(&mut self, store: &str, totals: StoreTotals) {
        self.stores.insert(store.to_string(), totals);
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
                    campaigns: BTreeMap::new(),
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
