//! Evaluation of one rule over one store's daily figures: each day's value of the rule's
//! metric, and the runs of consecutive breaching days. Pure functions, no state: the alert
//! task decides which runs become alerts.
//!
//! A day counts when it has at least `min_count` cases; a day with fewer counts neither way:
//! it neither extends a run nor breaks it (a store closed on Sunday does not end a run that
//! began on Saturday). A counting day that does not breach ends the run. Days are store-local
//! days of the records' own `ts`, so a batch that arrives late lands in its own days and may
//! complete a run there.

use std::collections::BTreeMap;

use chrono::Duration;

use super::super::daily::{Day, DayFigures};
use super::rules::{AlertRule, Metric};

/// One day's value of a rule's metric and how many cases it rests on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DayValue {
    /// The store-local day.
    pub day: Day,
    /// The metric's value that day.
    pub value: f64,
    /// The cases it rests on (consultations, prompts, records; 1 for offline hours).
    pub count: u64,
}

/// The value of `metric` on a day with `figures`, with its count; `None` when the day has no
/// case of it.
pub(crate) fn day_value(metric: &Metric, day: Day, figures: &DayFigures) -> Option<DayValue> {
    let (numerator, count) = match metric {
        Metric::StepCompleteness { flow, step } => {
            let step = figures.flows.get(flow)?.steps.get(step)?;
            (step.done as f64, step.consultations)
        }
        Metric::StepRate { flow, step, value } => {
            let step = figures.flows.get(flow)?.steps.get(step)?;
            let holding = step.values.get(value).copied().unwrap_or(0);
            (holding as f64, step.consultations)
        }
        Metric::CampaignCompleteness { campaign } => {
            let campaign = figures.campaigns.get(campaign)?;
            (campaign.answered as f64, campaign.opened)
        }
        Metric::PromptTimeoutRate { campaign } => {
            let (timeouts, opened) = figures
                .campaigns
                .iter()
                .filter(|(id, _)| campaign.as_ref().is_none_or(|wanted| wanted == *id))
                .fold((0, 0), |(timeouts, opened), (_, day)| {
                    (timeouts + day.timeout, opened + day.opened)
                });
            (timeouts as f64, opened)
        }
        Metric::BacklogAgeMinutes => {
            return (figures.records > 0).then_some(DayValue {
                day,
                value: figures.backlog_max_minutes as f64,
                count: figures.records,
            })
        }
        Metric::GatewayOfflineHours => {
            return Some(DayValue {
                day,
                value: offline_hours(figures.heard_hours, 24),
                count: 1,
            })
        }
    };
    (count > 0).then(|| DayValue {
        day,
        value: numerator / count as f64,
        count,
    })
}

/// Hours among the first `hours` of a day in which HQ heard nothing (`heard` has bit h set
/// for hour h heard).
fn offline_hours(heard: u32, hours: u32) -> f64 {
    let mask = if hours >= 32 {
        u32::MAX
    } else {
        (1u32 << hours) - 1
    };
    f64::from(hours - (heard & mask).count_ones())
}

/// The metric's value for every day that has one, in day order: for shares, whole days up to
/// yesterday; for `backlog_age_minutes` up to today. For `gateway_offline_hours` every day from
/// the first HQ heard the store to `today` has a value: a day HQ heard nothing at all has no
/// figures and is 24 hours offline; `today` counts only the hours up to `hour_now`.
pub(crate) fn values(
    metric: &Metric,
    days: &BTreeMap<Day, DayFigures>,
    today: Day,
    hour_now: u32,
) -> Vec<DayValue> {
    if *metric != Metric::GatewayOfflineHours {
        // Shares are judged on whole days: a morning's few cases are not the day's rate. The
        // backlog's age only grows during a day, so today's counts as soon as it breaches.
        let last = if metric.is_rate() {
            today - Duration::days(1)
        } else {
            today
        };
        return days
            .iter()
            .filter(|(day, _)| **day <= last)
            .filter_map(|(day, figures)| day_value(metric, *day, figures))
            .collect();
    }
    // From the first day HQ heard the store: days before it (records summarised from an older
    // HQ, which kept no arrival hours) say nothing about the gateway being offline.
    let Some(first) = days
        .iter()
        .find(|(_, figures)| figures.heard_hours != 0)
        .map(|(day, _)| *day)
    else {
        return Vec::new();
    };
    let mut values = Vec::new();
    let mut day = first;
    while day <= today {
        let heard = days.get(&day).map_or(0, |figures| figures.heard_hours);
        let hours = if day == today { hour_now + 1 } else { 24 };
        values.push(DayValue {
            day,
            value: offline_hours(heard, hours),
            count: 1,
        });
        day += Duration::days(1);
    }
    values
}

/// The runs of at least `rule.days` consecutive breaching days among `values` (days with
/// fewer than `min_count` cases skipped), each with every day of the run, in day order.
pub(crate) fn runs(rule: &AlertRule, values: &[DayValue]) -> Vec<Vec<DayValue>> {
    let mut runs = Vec::new();
    let mut current: Vec<DayValue> = Vec::new();
    for value in values {
        if value.count < rule.min_count.max(1) {
            continue;
        }
        if rule.threshold.breached(value.value) {
            current.push(*value);
        } else if !current.is_empty() {
            let run = std::mem::take(&mut current);
            if run.len() as u64 >= rule.days {
                runs.push(run);
            }
        }
    }
    if current.len() as u64 >= rule.days {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::super::rules::Threshold;
    use super::*;
    use crate::hq::daily::{FlowDay, StepDay};

    fn day(text: &str) -> Day {
        text.parse().expect("day")
    }

    fn insurance_rule(days: u64, min_count: u64) -> AlertRule {
        AlertRule {
            id: "insurance-pass-low".into(),
            name: "医保核验通过率".into(),
            metric: Metric::StepRate {
                flow: "rx-5step".into(),
                step: "insurance".into(),
                value: "通过".into(),
            },
            threshold: Threshold::Below(0.65),
            days,
            min_count,
            regions: None,
            attach_days: 3,
        }
    }

    /// Figures of a day with `passed` of `total` consultations passing the insurance check.
    fn insurance_day(passed: u64, total: u64) -> DayFigures {
        let mut step = StepDay {
            consultations: total,
            done: total,
            ..StepDay::default()
        };
        step.values.insert("通过".into(), passed);
        step.values.insert("未通过".into(), total - passed);
        let mut flow = FlowDay {
            consultations: total,
            ..FlowDay::default()
        };
        flow.steps.insert("insurance".into(), step);
        let mut figures = DayFigures::default();
        figures.flows.insert("rx-5step".into(), flow);
        figures
    }

    fn values_of(days: &[(&str, u64, u64)]) -> Vec<DayValue> {
        let rule = insurance_rule(2, 5);
        let map: BTreeMap<Day, DayFigures> = days
            .iter()
            .map(|(text, passed, total)| (day(text), insurance_day(*passed, *total)))
            .collect();
        values(&rule.metric, &map, day("2026-12-31"), 23)
    }

    #[test]
    fn step_rate_is_the_share_of_consultations_holding_the_value() {
        let values = values_of(&[("2026-12-01", 5, 10)]);
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].value, 0.5);
        assert_eq!(values[0].count, 10);
    }

    #[test]
    fn two_breaching_days_in_a_row_make_a_run_and_a_good_day_ends_it() {
        let rule = insurance_rule(2, 5);
        let values = values_of(&[
            ("2026-12-01", 5, 10),
            ("2026-12-02", 3, 10),
            ("2026-12-03", 9, 10),
            ("2026-12-04", 1, 10),
        ]);
        let runs = runs(&rule, &values);
        assert_eq!(runs.len(), 1);
        let days: Vec<Day> = runs[0].iter().map(|value| value.day).collect();
        assert_eq!(days, vec![day("2026-12-01"), day("2026-12-02")]);
    }

    #[test]
    fn a_day_with_too_few_cases_counts_neither_way() {
        let rule = insurance_rule(2, 5);
        // 12-02 has 3 cases, all failing; 12-03 has 3, all passing: both are skipped, so
        // 12-01 and 12-04 make a run of two.
        let values = values_of(&[
            ("2026-12-01", 1, 10),
            ("2026-12-02", 0, 3),
            ("2026-12-03", 3, 3),
            ("2026-12-04", 2, 10),
        ]);
        let runs = runs(&rule, &values);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].len(), 2);
        assert_eq!(runs[0][1].day, day("2026-12-04"));
    }

    #[test]
    fn shares_are_judged_on_whole_days_only() {
        let rule = insurance_rule(2, 5);
        let map: BTreeMap<Day, DayFigures> = [("2026-12-01", 1), ("2026-12-02", 1)]
            .iter()
            .map(|(text, passed)| (day(text), insurance_day(*passed, 10)))
            .collect();
        // On 12-02 its morning is not yet a day: no run of two.
        let today = values(&rule.metric, &map, day("2026-12-02"), 10);
        assert_eq!(today.len(), 1);
        assert!(runs(&rule, &today).is_empty());
        let next = values(&rule.metric, &map, day("2026-12-03"), 0);
        assert_eq!(runs(&rule, &next).len(), 1);
    }

    #[test]
    fn offline_hours_start_on_the_first_day_hq_heard_the_store() {
        let mut days = BTreeMap::new();
        days.insert(day("2026-11-01"), DayFigures::default()); // summarised, never heard
        days.insert(
            day("2026-12-02"),
            DayFigures {
                heard_hours: 0x00FF_FFFF,
                ..DayFigures::default()
            },
        );
        let values = values(&Metric::GatewayOfflineHours, &days, day("2026-12-02"), 23);
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].value, 0.0);
    }

    #[test]
    fn one_breaching_day_is_not_a_run_of_two() {
        let rule = insurance_rule(2, 5);
        assert!(runs(&rule, &values_of(&[("2026-12-01", 1, 10)])).is_empty());
        assert!(runs(
            &rule,
            &values_of(&[("2026-12-01", 1, 10), ("2026-12-02", 8, 10)])
        )
        .is_empty());
    }

    #[test]
    fn offline_hours_count_silent_days_and_only_past_hours_of_today() {
        let mut days = BTreeMap::new();
        let mut heard = DayFigures {
            heard_hours: 0x00FF_FFFF,
            ..DayFigures::default()
        };
        days.insert(day("2026-12-01"), heard.clone());
        heard.heard_hours = 0b111; // hours 0, 1, 2
        days.insert(day("2026-12-03"), heard);
        let values = values(&Metric::GatewayOfflineHours, &days, day("2026-12-03"), 4);
        let hours: Vec<f64> = values.iter().map(|value| value.value).collect();
        // 12-01 heard all day; 12-02 nothing; 12-03 hours 0..=4 elapsed, 3 heard.
        assert_eq!(hours, vec![0.0, 24.0, 2.0]);
    }

    #[test]
    fn above_thresholds_breach_upwards() {
        let mut rule = insurance_rule(1, 1);
        rule.metric = Metric::BacklogAgeMinutes;
        rule.threshold = Threshold::Above(60.0);
        let mut days = BTreeMap::new();
        days.insert(
            day("2026-12-01"),
            DayFigures {
                records: 10,
                backlog_max_minutes: 61,
                ..DayFigures::default()
            },
        );
        days.insert(
            day("2026-12-02"),
            DayFigures {
                records: 10,
                backlog_max_minutes: 60,
                ..DayFigures::default()
            },
        );
        let values = values(&rule.metric, &days, day("2026-12-02"), 12);
        let runs = runs(&rule, &values);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0][0].day, day("2026-12-01"));
    }
}
