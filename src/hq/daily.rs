//! The daily aggregates: per store and store-local day (in `[hq] timezone`), what the records
//! of that day amount to (consultation steps, prompts, tracked and traced sales, per flow,
//! campaign and clerk), plus the day's record count, backlog and the hours HQ heard from the
//! store. The yardsticks (`yardsticks`) and the alert rules read them, so neither ever scans
//! records; the failing cases an alert lists come from [`Case`]s, read by store and time.
//!
//! [`Daily`] lives inside the statistics' `Aggregates` and is fed the same way: by the
//! flusher, from the summaries of a batch once it is durable, and at start from the stored
//! summaries and the per-store-day counters (`Y`). A record counts toward the day of its own
//! `ts`, so a batch that arrives late lands in the days its records were made. A consultation
//! counts for the clerk who opened it, an attribution for its clerk when it names one, a
//! tracked sale for its clerk, else the clerk of its evidence.
//!
//! Memory grows per store-day with the flows, steps, values, campaigns and clerks of that day
//! (measured figures in the design doc of `hq`), never per record, and only the last
//! [`KEPT_DAYS`] days are kept.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use super::stats::{AttributionSummary, ConsultationSummary, SaleSummary, StepStatus};

/// A store-local day in `[hq] timezone`.
pub(crate) type Day = chrono::NaiveDate;

/// Days kept in memory per store, back from its latest day up to today (the longest
/// `/v1/yardsticks` range): older days are forgotten, so memory is bounded by stores × this
/// many days. Their summaries stay on disk. (From the store's latest day rather than today,
/// so a store that stopped sending keeps its last figures.)
pub(crate) const KEPT_DAYS: i64 = 400;

/// The daily figures of every store.
#[derive(Debug, Clone)]
pub(crate) struct Daily {
    /// The zone days are counted in.
    timezone: chrono_tz::Tz,
    /// Per store code, per day.
    stores: BTreeMap<String, BTreeMap<Day, DayFigures>>,
    /// Finds the day of a summary's instant (most fall on the day before them).
    finder: DayFinder,
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
            finder: DayFinder::new(timezone),
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
        let day = self.finder.day(t);
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

    /// Forgets each store's days more than [`KEPT_DAYS`] before its latest day that is not
    /// after tomorrow (a clock far ahead does not push real days out). Cheap when there are
    /// none: a look at each store's first and latest day.
    pub(crate) fn forget_old_days(&mut self, today: Day) {
        let tomorrow = today + chrono::Duration::days(1);
        for days in self.stores.values_mut() {
            let Some((latest, _)) = days.range(..=tomorrow).next_back() else {
                continue;
            };
            let oldest = *latest - chrono::Duration::days(KEPT_DAYS);
            while days.first_key_value().is_some_and(|(day, _)| *day < oldest) {
                days.pop_first();
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
#[derive(Debug, Clone)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::stats::{Evidence, EvidenceKind, StepSummary};

    /// Epoch milliseconds of an RFC 3339 time.
    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .timestamp_millis()
    }

    fn day(text: &str) -> Day {
        Day::parse_from_str(text, "%Y-%m-%d").expect("day")
    }

    fn attribution(
        store: &str,
        ts: &str,
        outcome: &str,
        clerk: Option<&str>,
    ) -> AttributionSummary {
        AttributionSummary {
            store: store.into(),
            campaign: "c1".into(),
            outcome: outcome.into(),
            answer: None,
            answer_label: None,
            station: Some("till-1".into()),
            clerk: clerk.map(Into::into),
            question: None,
            latency_ms: None,
            t: ms(ts),
            offset_minutes: 480,
            prompt: Some("p-1".into()),
            opened_at: Some(ts.into()),
            receipt: None,
        }
    }

    /// A consultation of flow f1 whose steps a, b, c are `statuses` ('d' done, 's' skipped,
    /// 'm' missing); step b holds the values 高血压 and 心悸 when done.
    fn consultation(
        store: &str,
        ts: &str,
        clerk: Option<&str>,
        statuses: &str,
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
                reason: (status == 's').then(|| "客户明确拒绝".to_string()),
                value: (*key == "a" && status == 'd').then(|| "通过".to_string()),
                values: if *key == "b" && status == 'd' {
                    vec!["高血压".into(), "心悸".into()]
                } else {
                    Vec::new()
                },
            })
            .collect();
        ConsultationSummary {
            store: store.into(),
            flow: "f1".into(),
            outcome: "incomplete".into(),
            clerk: clerk.map(Into::into),
            steps,
            held_ms: None,
            released_by: None,
            t: ms(ts),
            offset_minutes: 480,
            id: Some("k1".into()),
            opened_at: Some(ts.into()),
            customer: Some("ref-1".into()),
            receipt: None,
        }
    }

    fn sale(store: &str, ts: &str, clerk: Option<&str>, traced_by: Option<&str>) -> SaleSummary {
        SaleSummary {
            store: store.into(),
            t: ms(ts),
            receipt: Some("R-1".into()),
            clerk: clerk.map(Into::into),
            prompts: vec!["p-1".into()],
            consultation: None,
            traced: traced_by.map(|clerk| Evidence {
                kind: EvidenceKind::Attribution,
                clerk: Some(clerk.into()),
                hq_seq: 1,
            }),
        }
    }

    #[test]
    fn a_record_counts_in_its_own_local_day() {
        let mut shanghai = Daily::new(chrono_tz::Asia::Shanghai);
        let mut utc = Daily::new(chrono_tz::UTC);
        // 23:59 and 00:01 in Shanghai are 15:59 and 16:01 UTC: two days there, one in UTC.
        for ts in [
            "2026-11-27T23:59:00.000+08:00",
            "2026-11-28T00:01:00.000+08:00",
        ] {
            shanghai.add_attribution(&attribution("S1", ts, "answered", Some("c-1")));
            utc.add_attribution(&attribution("S1", ts, "answered", Some("c-1")));
        }
        let days: Vec<Day> = shanghai.store("S1").expect("S1").keys().copied().collect();
        assert_eq!(days, [day("2026-11-27"), day("2026-11-28")]);
        let days: Vec<&Day> = utc.store("S1").expect("S1").keys().collect();
        assert_eq!(days, [&day("2026-11-27")]);
        assert_eq!(
            utc.store("S1").expect("S1")[&day("2026-11-27")].campaigns["c1"].opened,
            2
        );
        // The day of an instant written with any offset.
        let instant = DateTime::parse_from_rfc3339("2026-11-27T17:00:00+00:00").expect("ts");
        assert_eq!(shanghai.day_of(instant), day("2026-11-28"));
        assert_eq!(utc.day_of(instant), day("2026-11-27"));
        assert_eq!(shanghai.timezone(), chrono_tz::Asia::Shanghai);
        // A late record (arriving days later) lands in its own day, not today's.
        shanghai.add_attribution(&attribution(
            "S1",
            "2026-11-20T10:00:00.000+08:00",
            "timeout",
            None,
        ));
        let late = &shanghai.store("S1").expect("S1")[&day("2026-11-20")];
        assert_eq!(late.campaigns["c1"].timeout, 1);
        assert!(late.clerks.is_empty(), "a timeout names no clerk");
        assert_eq!(shanghai.stores().count(), 1);
    }

    #[test]
    fn consultations_prompts_and_sales_count_for_their_clerks() {
        let mut daily = Daily::new(chrono_tz::Asia::Shanghai);
        let ts = "2026-11-27T10:00:00.000+08:00";
        daily.add_consultation(&consultation("S1", ts, Some("c-1"), "dsm"));
        daily.add_consultation(&consultation("S1", ts, None, "ddd"));
        daily.add_attribution(&attribution("S1", ts, "answered", Some("c-2")));
        daily.add_attribution(&attribution("S1", ts, "skipped", Some("c-2")));
        daily.add_sale(&sale("S1", ts, Some("c-1"), None));
        // A sale without a clerk counts for its evidence's, once traced.
        let untraced = sale("S1", ts, None, None);
        daily.add_sale(&untraced);
        let figures = daily.store("S1").expect("S1")[&day("2026-11-27")].clone();
        assert_eq!((figures.sales_tracked, figures.sales_traced), (2, 0));
        assert!(!figures.clerks.contains_key("c-3"));
        daily.remove_sale(&untraced);
        daily.add_sale(&sale("S1", ts, None, Some("c-3")));
        let figures = &daily.store("S1").expect("S1")[&day("2026-11-27")];
        let flow = &figures.flows["f1"];
        assert_eq!(
            (flow.consultations, flow.steps_required, flow.steps_filled),
            (2, 6, 4)
        );
        let b = &flow.steps["b"];
        assert_eq!(
            (b.consultations, b.done, b.skipped, b.missing),
            (2, 1, 1, 0)
        );
        assert_eq!(b.values["高血压"], 1);
        assert_eq!(b.values["心悸"], 1);
        assert_eq!(b.skip_reasons["客户明确拒绝"], 1);
        assert_eq!(b.label.as_deref(), Some("label-b"));
        assert_eq!(flow.steps["a"].values["通过"], 2);
        assert_eq!(
            figures.clerks["c-1"],
            ClerkDay {
                steps_required: 3,
                steps_filled: 1,
                sales_tracked: 1,
                ..ClerkDay::default()
            }
        );
        assert_eq!(
            figures.clerks["c-2"],
            ClerkDay {
                prompts_opened: 2,
                prompts_answered: 1,
                ..ClerkDay::default()
            }
        );
        assert_eq!(
            figures.clerks["c-3"],
            ClerkDay {
                sales_tracked: 1,
                sales_traced: 1,
                ..ClerkDay::default()
            }
        );
        assert_eq!((figures.sales_tracked, figures.sales_traced), (2, 1));
        assert_eq!(
            figures.campaigns["c1"],
            CampaignDay {
                opened: 2,
                answered: 1,
                timeout: 0,
                skipped: 1
            }
        );
    }

    #[test]
    fn days_past_the_kept_ones_are_forgotten() {
        let mut daily = Daily::new(chrono_tz::Asia::Shanghai);
        for ts in [
            "2025-10-22T10:00:00.000+08:00",
            "2025-10-23T10:00:00.000+08:00",
            "2026-11-27T10:00:00.000+08:00",
        ] {
            daily.add_attribution(&attribution("S1", ts, "answered", Some("c-1")));
        }
        // 400 days back from the latest day up to tomorrow is kept; a store's clock far
        // ahead does not count.
        daily.add_attribution(&attribution(
            "S1",
            "2099-01-01T10:00:00.000+08:00",
            "answered",
            None,
        ));
        daily.forget_old_days(day("2026-11-26"));
        let days: Vec<Day> = daily.store("S1").expect("S1").keys().copied().collect();
        assert_eq!(
            days,
            [day("2025-10-23"), day("2026-11-27"), day("2099-01-01")],
            "the latest day is 2026-11-27; the 22nd is 401 days before it"
        );
    }

    #[test]
    fn day_counters_and_keys_round_trip() {
        let counters = DayCounters {
            records: 12,
            backlog_max_minutes: 1440,
            heard_hours: 1 << 9 | 1 << 23,
        };
        assert_eq!(DayCounters::decode(&counters.encode()), Some(counters));
        assert_eq!(DayCounters::decode(b"short"), None);
        let mut merged = counters;
        merged.merge(&DayCounters {
            records: 1,
            backlog_max_minutes: 3,
            heard_hours: 1,
        });
        assert_eq!(
            merged,
            DayCounters {
                records: 13,
                backlog_max_minutes: 1440,
                heard_hours: 1 | 1 << 9 | 1 << 23,
            }
        );
        let d = day("2026-11-27");
        assert_eq!(day_from_bytes(&day_bytes(d)), Some(d));
        assert!(day_bytes(d) < day_bytes(day("2026-11-28")));
        let mut daily = Daily::new(chrono_tz::Asia::Shanghai);
        daily.set_counters("S1", d, counters);
        let figures = &daily.store("S1").expect("S1")[&d];
        assert_eq!(
            (figures.records, figures.heard_hours),
            (12, counters.heard_hours)
        );
    }

    #[test]
    fn the_day_finder_agrees_with_the_zone_across_midnight() {
        let zone = chrono_tz::Asia::Shanghai;
        let mut finder = DayFinder::new(zone);
        let midnight = ms("2026-11-28T00:00:00.000+08:00");
        for t in [
            midnight - 1,
            midnight,
            midnight + 1,
            midnight - 1,
            midnight + 86_400_000,
        ] {
            assert_eq!(finder.day(t), day_of_millis(zone, t), "{t}");
        }
        assert_eq!(day_start_millis(zone, day("2026-11-28")), midnight);
        assert_eq!(
            ts_text(ms("2026-11-27T16:01:02.345+08:00"), 480),
            "2026-11-27T16:01:02.345+08:00"
        );
    }
}
