//! PLACEHOLDER on h/alerts: the binding types of the daily aggregates (h/daily implements them).
#![allow(dead_code)]
use std::collections::BTreeMap;

pub(crate) type Day = chrono::NaiveDate;

#[derive(Debug, Default)]
pub(crate) struct Daily {
    stores: BTreeMap<String, BTreeMap<Day, DayFigures>>,
    tz: chrono_tz::Tz,
}

impl Daily {
    pub(crate) fn timezone(&self) -> chrono_tz::Tz {
        self.tz
    }
    pub(crate) fn day_of(&self, instant: chrono::DateTime<chrono::FixedOffset>) -> Day {
        instant.with_timezone(&self.tz).date_naive()
    }
    pub(crate) fn store(&self, store: &str) -> Option<&BTreeMap<Day, DayFigures>> {
        self.stores.get(store)
    }
    pub(crate) fn stores(&self) -> impl Iterator<Item = (&str, &BTreeMap<Day, DayFigures>)> {
        self.stores
            .iter()
            .map(|(store, days)| (store.as_str(), days))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DayFigures {
    pub records: u64,
    pub flows: BTreeMap<String, FlowDay>,
    pub campaigns: BTreeMap<String, CampaignDay>,
    pub clerks: BTreeMap<String, ClerkDay>,
    pub backlog_max_minutes: u64,
    pub heard_hours: u32,
    pub sales_tracked: u64,
    pub sales_traced: u64,
}
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FlowDay {
    pub consultations: u64,
    pub steps_required: u64,
    pub steps_filled: u64,
    pub steps: BTreeMap<String, StepDay>,
}
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepDay {
    pub consultations: u64,
    pub done: u64,
    pub skipped: u64,
    pub missing: u64,
    pub values: BTreeMap<String, u64>,
    pub skip_reasons: BTreeMap<String, u64>,
    pub label: Option<String>,
}
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CampaignDay {
    pub opened: u64,
    pub answered: u64,
    pub timeout: u64,
    pub skipped: u64,
}
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ClerkDay {
    pub steps_required: u64,
    pub steps_filled: u64,
    pub prompts_opened: u64,
    pub prompts_answered: u64,
    pub sales_tracked: u64,
    pub sales_traced: u64,
}

pub(crate) enum Case {
    Consultation {
        hq_seq: u64,
        ts: String,
        opened_at: Option<String>,
        clerk: Option<String>,
        customer: Option<String>,
        flow: String,
        outcome: String,
        steps: Vec<CaseStep>,
    },
    Prompt {
        hq_seq: u64,
        ts: String,
        opened_at: Option<String>,
        clerk: Option<String>,
        station: Option<String>,
        campaign: String,
        outcome: String,
    },
}
pub(crate) struct CaseStep {
    pub key: String,
    pub label: Option<String>,
    pub done: bool,
    pub skipped: Option<String>,
    pub value: Option<String>,
    pub values: Vec<String>,
}
