//! The daily aggregates: per store and store-local day (in `[hq] timezone`), what the records
//! of that day amount to (consultation steps, prompts, tracked and traced sales, per flow,
//! campaign and clerk), plus the day's record count, backlog and the hours HQ heard from the
//! store. The yardsticks (`yardsticks`) and the alert rules read them, so neither ever scans
//! records; the failing cases an alert lists come from [`Case`]s, read through the day index.
//!
//! [`Daily`] lives inside the statistics' `Aggregates` and is fed the same way: by the
//! flusher, from the summaries of a batch once it is durable, and at start from the stored
//! summaries and the per-store-day counters (`Y`). A record counts toward the day of its own
//! `ts`, so a batch that arrives late lands in the days its records were made. A consultation
//! counts for the clerk who opened it, an attribution for its clerk when it names one, a
//! tracked sale for its clerk, else the clerk of its evidence.
//!
//! Memory grows per store-day with the flows, steps, values, campaigns and clerks of that day
//! (measured figures in the design doc of `hq`), never per record.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use super::stats::{AttributionSummary, ConsultationSummary, SaleSummary, StepStatus};

/// A store-local day in `[hq] timezone`.
pub(crate) type Day = chrono::NaiveDate;

/// The daily figures of every store.
#[derive(Debug, Clone)]
pub(crate) struct Daily {
    /// The zone days are counted in.
    timezone: chrono_tz::Tz,
    /// Per store code, per day.
    stores: BTreeMap<String, BTreeMap<Day, DayFigures>>,
}

impl Default for Daily {
    fn default() -> Self {
        Daily::new(super::config::DEFAULT_TIMEZONE)
    }
}

/// What one store did on one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DayFigures {
    /// Records whose `ts` falls on the day.
    pub records: u64,
    /// Consultations by flow id.
    pub flows: BTreeMap<String, FlowDay>,
    /// Prompts by campaign id.
    pub campaigns: BTreeMap<String, CampaignDay>,
    /// By clerk.
    pub clerks: BTreeMap<String, ClerkDay>,
    /// The longest a record of the day took to reach HQ: HQ's receive time minus its `ts`, in
    /// whole minutes (0 when it came at once, or from a clock ahead of HQ's).
    pub backlog_max_minutes: u64,
    /// Bit h set when HQ accepted a batch from the store during local hour h of the day, by
    /// HQ's clock.
    pub heard_hours: u32,
    /// Sales of a flow or campaign product, or linked to a consultation.
    pub sales_tracked: u64,
    /// Those of them HQ holds the first contact, handler and conversation of.
    pub sales_traced: u64,
}

/// The consultations of one flow on one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FlowDay {
    /// Consultation records.
    pub consultations: u64,
    /// Steps of those consultations (done, skipped or missing).
    pub steps_required: u64,
    /// Steps done.
    pub steps_filled: u64,
    /// By step key.
    pub steps: BTreeMap<String, StepDay>,
}

/// One step of a flow on one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepDay {
    /// Consultations whose record has the step.
    pub consultations: u64,
    /// Done: `at` set, not skipped.
    pub done: u64,
    /// Skipped, with a reason.
    pub skipped: u64,
    /// Neither.
    pub missing: u64,
    /// Value -> consultations whose step holds it (each of `values` for a `multi` step).
    pub values: BTreeMap<String, u64>,
    /// Skip reason -> consultations.
    pub skip_reasons: BTreeMap<String, u64>,
    /// The step's label, as last seen.
    pub label: Option<String>,
}

/// The prompts of one campaign on one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CampaignDay {
    /// Attribution records (every prompt has one).
    pub opened: u64,
    /// Answered.
    pub answered: u64,
    /// Timed out.
    pub timeout: u64,
    /// Skipped.
    pub skipped: u64,
}

/// What one clerk did on one day.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ClerkDay {
    /// Steps of the consultations the clerk opened.
    pub steps_required: u64,
    /// Those done.
    pub steps_filled: u64,
    /// Prompts whose record names the clerk.
    pub prompts_opened: u64,
    /// Those answered.
    pub prompts_answered: u64,
    /// Tracked sales the clerk rang up (or, without a clerk, handled by the evidence's).
    pub sales_tracked: u64,
    /// Those traced.
    pub sales_traced: u64,
}

/// The counters of a store-day that come from batches rather than summaries (persisted under
/// `Y` + store + 0 + day as 20 bytes: records u64, backlog u64, heard hours u32, big-endian).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DayCounters {
    /// Records whose `ts` falls on the day.
    pub records: u64,
    /// See [`DayFigures::backlog_max_minutes`].
    pub backlog_max_minutes: u64,
    /// See [`DayFigures::heard_hours`].
    pub heard_hours: u32,
}

impl DayCounters {
    /// The persisted form.
    pub(crate) fn encode(&self) -> [u8; 20] {
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&self.records.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.backlog_max_minutes.to_be_bytes());
        bytes[16..].copy_from_slice(&self.heard_hours.to_be_bytes());
        bytes
    }

    /// Reads the persisted form; `None` when it is not 20 bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<DayCounters> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        Some(DayCounters {
            records: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            backlog_max_minutes: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            heard_hours: u32::from_be_bytes(bytes[16..].try_into().ok()?),
        })
    }

    /// Adds `other` (counts summed, maxima kept, hours joined).
    pub(crate) fn merge(&mut self, other: &DayCounters) {
        self.records += other.records;
        self.backlog_max_minutes = self.backlog_max_minutes.max(other.backlog_max_minutes);
        self.heard_hours |= other.heard_hours;
    }
}

impl Daily {
    /// No figures; days in `timezone`.
    pub(crate) fn new(timezone: chrono_tz::Tz) -> Self {
        Daily {
            timezone,
            stores: BTreeMap::new(),
        }
    }

    /// The zone days are counted in.
    pub(crate) fn timezone(&self) -> chrono_tz::Tz {
        self.timezone
    }

    /// The store-local day of an instant.
    pub(crate) fn day_of(&self, instant: DateTime<FixedOffset>) -> Day {
        instant.with_timezone(&self.timezone).date_naive()
    }

    /// The day figures of one store, if it has any.
    pub(crate) fn store(&self, store: &str) -> Option<&BTreeMap<Day, DayFigures>> {
        self.stores.get(store)
    }

    /// Every store with day figures, by code.
    pub(crate) fn stores(&self) -> impl Iterator<Item = (&str, &BTreeMap<Day, DayFigures>)> {
        self.stores.iter().map(|(code, days)| (code.as_str(), days))
    }

    /// The figures of `store` on the day of epoch milliseconds `t`, created when new.
    fn day_mut(&mut self, store: &str, t: i64) -> &mut DayFigures {
        let day = day_of_millis(self.timezone, t);
        entry(&mut self.stores, store).entry(day).or_default()
    }

    /// Counts an attribution record.
    pub(crate) fn add_attribution(&mut self, summary: &AttributionSummary) {
        let figures = self.day_mut(&summary.store, summary.t);
        let answered = summary.outcome == "answered";
        let campaign = entry(&mut figures.campaigns, &summary.campaign);
        campaign.opened += 1;
        match summary.outcome.as_str() {
            "answered" => campaign.answered += 1,
            "timeout" => campaign.timeout += 1,
            // Validation admits only the three outcomes.
            _ => campaign.skipped += 1,
        }
        if let Some(clerk) = &summary.clerk {
            let clerk = entry(&mut figures.clerks, clerk);
            clerk.prompts_opened += 1;
            clerk.prompts_answered += u64::from(answered);
        }
    }

    /// Counts a consultation record, every step for the clerk who opened it.
    pub(crate) fn add_consultation(&mut self, summary: &ConsultationSummary) {
        let figures = self.day_mut(&summary.store, summary.t);
        let required = summary.steps.len() as u64;
        let filled = summary
            .steps
            .iter()
            .filter(|step| step.status == StepStatus::Done)
            .count() as u64;
        let flow = entry(&mut figures.flows, &summary.flow);
        flow.consultations += 1;
        flow.steps_required += required;
        flow.steps_filled += filled;
        for step in &summary.steps {
            let day = entry(&mut flow.steps, &step.key);
            day.consultations += 1;
            match step.status {
                StepStatus::Done => day.done += 1,
                StepStatus::Skipped => {
                    day.skipped += 1;
                    *entry(
                        &mut day.skip_reasons,
                        step.reason.as_deref().unwrap_or_default(),
                    ) += 1;
                }
                StepStatus::Missing => day.missing += 1,
            }
            for value in step.value.iter().chain(&step.values) {
                *entry(&mut day.values, value) += 1;
            }
            if step.label.is_some() {
                day.label.clone_from(&step.label);
            }
        }
        if let Some(clerk) = &summary.clerk {
            let clerk = entry(&mut figures.clerks, clerk);
            clerk.steps_required += required;
            clerk.steps_filled += filled;
        }
    }

    /// Counts a tracked sale.
    pub(crate) fn add_sale(&mut self, summary: &SaleSummary) {
        let traced = u64::from(summary.traced.is_some());
        let figures = self.day_mut(&summary.store, summary.t);
        figures.sales_tracked += 1;
        figures.sales_traced += traced;
        if let Some(clerk) = summary.counted_clerk() {
            let clerk = entry(&mut figures.clerks, clerk);
            clerk.sales_tracked += 1;
            clerk.sales_traced += traced;
        }
    }

    /// Takes back a tracked sale counted by [`Daily::add_sale`] (before counting it anew).
    pub(crate) fn remove_sale(&mut self, summary: &SaleSummary) {
        let traced = u64::from(summary.traced.is_some());
        let figures = self.day_mut(&summary.store, summary.t);
        figures.sales_tracked = figures.sales_tracked.saturating_sub(1);
        figures.sales_traced = figures.sales_traced.saturating_sub(traced);
        if let Some(code) = summary.counted_clerk() {
            if let Some(clerk) = figures.clerks.get_mut(code) {
                clerk.sales_tracked = clerk.sales_tracked.saturating_sub(1);
                clerk.sales_traced = clerk.sales_traced.saturating_sub(traced);
                // A restart rebuilds without the entry: keep memory equal to that.
                if *clerk == ClerkDay::default() {
                    figures.clerks.remove(code);
                }
            }
        }
    }

    /// Sets a store-day's batch counters (records, backlog, hours heard).
    pub(crate) fn set_counters(&mut self, store: &str, day: Day, counters: DayCounters) {
        let figures = entry(&mut self.stores, store).entry(day).or_default();
        figures.records = counters.records;
        figures.backlog_max_minutes = counters.backlog_max_minutes;
        figures.heard_hours = counters.heard_hours;
    }
}

/// The entry of `key` in `map`, created when new (allocating the key only then).
fn entry<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// The day of epoch milliseconds `t` in `timezone`.
pub(crate) fn day_of_millis(timezone: chrono_tz::Tz, t: i64) -> Day {
    DateTime::<Utc>::from_timestamp_millis(t)
        .unwrap_or_default()
        .with_timezone(&timezone)
        .date_naive()
}

/// The first instant of `day` in `timezone`, epoch milliseconds (midnight, or the first hour
/// that exists where a clock change skips midnight).
pub(crate) fn day_start_millis(timezone: chrono_tz::Tz, day: Day) -> i64 {
    for hour in 0..4 {
        let Some(local) = day.and_hms_opt(hour, 0, 0) else {
            continue;
        };
        if let Some(instant) = timezone.from_local_datetime(&local).earliest() {
            return instant.timestamp_millis();
        }
    }
    day.and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp_millis()
}

/// Finds the day of many instants in a row fast: records of a batch are mostly of one day, so
/// the bounds of the last day found are kept and a time zone lookup is made only outside them.
#[derive(Debug)]
pub(crate) struct DayFinder {
    /// The zone.
    timezone: chrono_tz::Tz,
    /// The last day found, and its first and past-last instant (epoch ms).
    last: Option<(Day, i64, i64)>,
}

impl DayFinder {
    /// A finder for `timezone`.
    pub(crate) fn new(timezone: chrono_tz::Tz) -> Self {
        DayFinder {
            timezone,
            last: None,
        }
    }

    /// The day of epoch milliseconds `t`.
    pub(crate) fn day(&mut self, t: i64) -> Day {
        if let Some((day, start, end)) = self.last {
            if (start..end).contains(&t) {
                return day;
            }
        }
        let day = day_of_millis(self.timezone, t);
        let start = day_start_millis(self.timezone, day);
        let end = day
            .succ_opt()
            .map_or(i64::MAX, |next| day_start_millis(self.timezone, next));
        self.last = Some((day, start, end));
        day
    }
}

/// A day as the 4 bytes of a key (days from the common era, big-endian: keys sort by day).
pub(crate) fn day_bytes(day: Day) -> [u8; 4] {
    // Days from 0001-01-01: positive for every date a record can carry.
    (chrono::Datelike::num_days_from_ce(&day).max(0) as u32).to_be_bytes()
}

/// The day of 4 key bytes written by [`day_bytes`].
pub(crate) fn day_from_bytes(bytes: &[u8]) -> Option<Day> {
    let days = u32::from_be_bytes(bytes.try_into().ok()?);
    NaiveDate::from_num_days_from_ce_opt(i32::try_from(days).ok()?)
}

/// A record's `ts` rebuilt from a summary's instant and offset, RFC 3339 with milliseconds
/// (as the gateway writes it).
pub(crate) fn ts_text(t: i64, offset_minutes: i32) -> String {
    let offset = FixedOffset::east_opt(offset_minutes * 60)
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"));
    DateTime::<Utc>::from_timestamp_millis(t)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// One record an alert may list as a failing case: a consultation or a prompt, with what a
/// supervisor needs to follow it up (time, clerk, customer reference, steps and values).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Case {
    /// A consultation record.
    Consultation {
        /// Its hq_seq.
        hq_seq: u64,
        /// Its `ts` (when it closed).
        ts: String,
        /// When it opened, as written.
        opened_at: Option<String>,
        /// Who opened it.
        clerk: Option<String>,
        /// The customer's reference.
        customer: Option<String>,
        /// Its flow.
        flow: String,
        /// `completed`, `incomplete` or `abandoned`.
        outcome: String,
        /// Its steps, in the flow's order.
        steps: Vec<CaseStep>,
    },
    /// An attribution record (a prompt's resolution).
    Prompt {
        /// Its hq_seq.
        hq_seq: u64,
        /// Its `ts` (when the prompt was resolved).
        ts: String,
        /// When the prompt opened, as written.
        opened_at: Option<String>,
        /// Who answered or skipped it.
        clerk: Option<String>,
        /// Where it was shown.
        station: Option<String>,
        /// Its campaign.
        campaign: String,
        /// `answered`, `timeout` or `skipped`.
        outcome: String,
    },
}

/// One step of a consultation [`Case`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct CaseStep {
    /// The step's key.
    pub key: String,
    /// Its label.
    pub label: Option<String>,
    /// Done (`at` set, not skipped).
    pub done: bool,
    /// The skip reason, when skipped.
    pub skipped: Option<String>,
    /// The value recorded.
    pub value: Option<String>,
    /// The values of a `multi` step.
    pub values: Vec<String>,
}

impl Case {
    /// The case of a consultation record's summary.
    pub(crate) fn consultation(hq_seq: u64, summary: ConsultationSummary) -> Case {
        Case::Consultation {
            hq_seq,
            ts: ts_text(summary.t, summary.offset_minutes),
            opened_at: summary.opened_at,
            clerk: summary.clerk,
            customer: summary.customer,
            flow: summary.flow,
            outcome: summary.outcome,
            steps: summary
                .steps
                .into_iter()
                .map(|step| CaseStep {
                    done: step.status == StepStatus::Done,
                    key: step.key,
                    label: step.label,
                    skipped: step.reason,
                    value: step.value,
                    values: step.values,
                })
                .collect(),
        }
    }

    /// The case of an attribution record's summary.
    pub(crate) fn prompt(hq_seq: u64, summary: AttributionSummary) -> Case {
        Case::Prompt {
            hq_seq,
            ts: ts_text(summary.t, summary.offset_minutes),
            opened_at: summary.opened_at,
            clerk: summary.clerk,
            station: summary.station,
            campaign: summary.campaign,
            outcome: summary.outcome,
        }
    }
}
