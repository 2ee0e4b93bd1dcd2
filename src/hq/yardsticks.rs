//! `GET /v1/yardsticks?region=&store=&from=&to=`: the chain's three yardsticks over a range of
//! store-local days, for the chain, each region, store and clerk the caller may see, each
//! with its goal and industry baseline. Computed from the daily figures (`daily`) alone, so a
//! request costs the store-days of its range, never a record scan.
//!
//! - **completeness** (过程数据完整率): (consultation steps done + prompts answered) ÷
//!   (steps of all consultations + prompts opened);
//! - **alert_response**: alerts opened in the range that were acknowledged within 24 h of
//!   opening ÷ alerts opened in the range (from the alert store, as [`AlertFact`]s), leaving
//!   out alerts still inside their 24 h and not acknowledged yet (they may still be in time);
//! - **traceability**: tracked sales (of flow or campaign products, or linked to a
//!   consultation) that HQ can trace to first contact, handler and conversation ÷ tracked sales.
//!
//! Each figure is `{"value": ratio or null when its denominator is 0, ...its counts}`. Scope
//! as the other read endpoints: an `admin` sees everything; a `region` user its region's
//! stores and clerks in full and every region's aggregate (the chain's too); a `store` user
//! its store. `store=` and `region=` narrow what is counted; one outside the scope is a 403
//! (a region user may name another region and gets its aggregate only).

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{StatusCode, Uri};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::access::{Directory, Scope};
use super::daily::{ClerkDay, Daily, Day, DayFigures};

/// The chain's goals, per yardstick.
pub(crate) const GOALS: Yardsticks = Yardsticks {
    completeness: 0.85,
    alert_response: 0.90,
    traceability: 1.0,
};
/// The industry baselines the goals are measured against.
pub(crate) const BASELINES: Yardsticks = Yardsticks {
    completeness: 0.513,
    alert_response: 0.387,
    traceability: 0.621,
};
/// Days in the range when `from` is not given (up to `to`, inclusive).
const DEFAULT_DAYS: i64 = 30;
/// Most days one request may cover.
pub(crate) const MAX_DAYS: i64 = 400;
/// An alert acknowledged within this long of opening counts as answered.
const RESPONSE_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// The `regions` key of stores in no region (admin only).
const NO_REGION: &str = "(none)";

/// One value per yardstick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Yardsticks {
    /// Process data completeness.
    pub completeness: f64,
    /// Alerts acknowledged within 24 h.
    pub alert_response: f64,
    /// Tracked sales traced.
    pub traceability: f64,
}

/// One alert, as the alert store knows it: what `alert_response` counts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AlertFact {
    /// The store it is about.
    pub store: String,
    /// The store's region when it opened.
    pub region: Option<String>,
    /// When it opened.
    pub opened_at: DateTime<Utc>,
    /// When it was acknowledged, if it was.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// 400 or 403.
    pub status: StatusCode,
    /// Why.
    pub message: String,
}

impl Refusal {
    fn bad(message: String) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn outside(what: String) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message: format!("{what} is outside what this user may see"),
        }
    }
}

/// The query string as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Only this region's stores.
    region: Option<String>,
    /// Only this store.
    store: Option<String>,
    /// First day, `YYYY-MM-DD`.
    from: Option<String>,
    /// Last day, `YYYY-MM-DD`, inclusive.
    to: Option<String>,
}

/// A checked query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    /// Only this region's stores.
    pub region: Option<String>,
    /// Only this store.
    pub store: Option<String>,
    /// First day.
    pub from: Day,
    /// Last day, inclusive.
    pub to: Day,
}

/// Reads the query string; `today` is the default last day. An empty value counts as absent.
pub(crate) fn parse_query(uri: &Uri, today: Day) -> Result<Query, Refusal> {
    let params = match uri.query() {
        None => Params::default(),
        Some(_) => {
            axum::extract::Query::<Params>::try_from_uri(uri)
                .map_err(|rejection| Refusal::bad(format!("bad query: {}", rejection.body_text())))?
                .0
        }
    };
    let present = |value: Option<String>| value.filter(|text| !text.trim().is_empty());
    let day = |name: &str, text: Option<String>| -> Result<Option<Day>, Refusal> {
        present(text)
            .map(|text| {
                Day::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
                    Refusal::bad(format!("'{name}' must be a day YYYY-MM-DD, found '{text}'"))
                })
            })
            .transpose()
    };
    let to = day("to", params.to)?.unwrap_or(today);
    let from = match day("from", params.from)? {
        Some(from) => from,
        None => to - chrono::Duration::days(DEFAULT_DAYS - 1),
    };
    if to < from {
        return Err(Refusal::bad(format!(
            "'to' ({to}) is before 'from' ({from})"
        )));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_DAYS {
        return Err(Refusal::bad(format!(
            "the range is {days} days; at most {MAX_DAYS}"
        )));
    }
    Ok(Query {
        region: present(params.region).map(|r| r.trim().to_string()),
        store: present(params.store).map(|s| s.trim().to_string()),
        from,
        to,
    })
}

/// The counts behind the completeness and traceability figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    /// Consultation steps done.
    steps_filled: u64,
    /// Steps of all consultations.
    steps_required: u64,
    /// Prompts answered.
    prompts_answered: u64,
    /// Prompts opened.
    prompts_opened: u64,
    /// Tracked sales traced.
    traced: u64,
    /// Tracked sales.
    sales: u64,
}

impl Counts {
    fn of_day(day: &DayFigures) -> Counts {
        let mut counts = Counts {
            traced: day.sales_traced,
            sales: day.sales_tracked,
            ..Counts::default()
        };
        for flow in day.flows.values() {
            counts.steps_filled += flow.steps_filled;
            counts.steps_required += flow.steps_required;
        }
        for campaign in day.campaigns.values() {
            counts.prompts_answered += campaign.answered;
            counts.prompts_opened += campaign.opened;
        }
        counts
    }

    fn of_clerk(day: &ClerkDay) -> Counts {
        Counts {
            steps_filled: day.steps_filled,
            steps_required: day.steps_required,
            prompts_answered: day.prompts_answered,
            prompts_opened: day.prompts_opened,
            traced: day.sales_traced,
            sales: day.sales_tracked,
        }
    }

    fn add(&mut self, other: &Counts) {
        self.steps_filled += other.steps_filled;
        self.steps_required += other.steps_required;
        self.prompts_answered += other.prompts_answered;
        self.prompts_opened += other.prompts_opened;
        self.traced += other.traced;
        self.sales += other.sales;
    }

    fn filled(&self) -> u64 {
        self.steps_filled + self.prompts_answered
    }

    fn required(&self) -> u64 {
        self.steps_required + self.prompts_opened
    }
}

/// Alerts opened, and those acknowledged within 24 h.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AlertCounts {
    /// Opened in the range.
    alerts: u64,
    /// Of those, acknowledged within 24 h of opening.
    within_24h: u64,
}

impl AlertCounts {
    fn add(&mut self, other: &AlertCounts) {
        self.alerts += other.alerts;
        self.within_24h += other.within_24h;
    }
}

/// What one store's days of the range amount to (read under the statistics' lock).
#[derive(Debug, Default)]
struct StoreRange {
    /// The days with figures: counts and records.
    days: BTreeMap<Day, (Counts, u64)>,
    /// Over the range.
    total: Counts,
    /// Per clerk over the range.
    clerks: BTreeMap<String, Counts>,
}

/// The figures of `stores` over `from..=to`, clerks only for those `full` says: a short read.
fn read_ranges(
    daily: &Daily,
    stores: &BTreeSet<String>,
    full: &dyn Fn(&str) -> bool,
    from: Day,
    to: Day,
) -> BTreeMap<String, StoreRange> {
    let mut ranges = BTreeMap::new();
    for code in stores {
        let mut range = StoreRange::default();
        if let Some(days) = daily.store(code) {
            let full = full(code);
            for (day, figures) in days.range(from..=to) {
                let counts = Counts::of_day(figures);
                range.total.add(&counts);
                if full {
                    range.days.insert(*day, (counts, figures.records));
                    for (clerk, clerk_day) in &figures.clerks {
                        range
                            .clerks
                            .entry(clerk.clone())
                            .or_default()
                            .add(&Counts::of_clerk(clerk_day));
                    }
                }
            }
        }
        ranges.insert(code.clone(), range);
    }
    ranges
}

/// `part / whole`, or null when `whole` is 0.
fn ratio(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!(part as f64 / whole as f64)
    }
}

/// The three figures of a set of stores (or a clerk).
fn figures(counts: &Counts, alerts: &AlertCounts) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(
        "completeness".into(),
        json!({
            "value": ratio(counts.filled(), counts.required()),
            "filled": counts.filled(), "required": counts.required(),
            "steps_filled": counts.steps_filled, "steps_required": counts.steps_required,
            "prompts_answered": counts.prompts_answered, "prompts_opened": counts.prompts_opened,
        }),
    );
    map.insert(
        "alert_response".into(),
        json!({
            "value": ratio(alerts.within_24h, alerts.alerts),
            "within_24h": alerts.within_24h, "alerts": alerts.alerts,
        }),
    );
    map.insert(
        "traceability".into(),
        json!({"value": ratio(counts.traced, counts.sales), "traced": counts.traced, "sales": counts.sales}),
    );
    map
}

/// Goals or baselines as JSON.
fn yardsticks_json(values: &Yardsticks) -> Value {
    json!({
        "completeness": values.completeness,
        "alert_response": values.alert_response,
        "traceability": values.traceability,
    })
}

/// Everything the answer needs besides the daily figures.
pub(crate) struct Context<'a> {
    /// Stores, regions.
    pub directory: &'a Directory,
    /// What the caller may see.
    pub scope: &'a Scope,
    /// The alerts (from the alert store).
    pub alerts: &'a [AlertFact],
}

/// The `/v1/yardsticks` body for `query`. `daily` is called once, with a short read.
pub(crate) fn answer(
    query: &Query,
    context: &Context<'_>,
    daily: impl FnOnce(&mut dyn FnMut(&Daily)),
) -> Result<Value, Refusal> {
    let Context {
        directory,
        scope,
        alerts,
    } = *context;
    let region_of = |code: &str| directory.region_of(code).map(str::to_owned);
    // The stores HQ knows: configured ones and any that sent records (since removed).
    let mut known: BTreeSet<String> = directory.store_codes().map(str::to_owned).collect();
    let mut timezone = super::config::DEFAULT_TIMEZONE;
    let mut ranges = BTreeMap::new();
    let mut in_daily: BTreeSet<String> = BTreeSet::new();
    // One read: the stores with figures, then the ranges of those selected.
    let mut selected: BTreeSet<String> = BTreeSet::new();
    let mut failure: Option<Refusal> = None;
    daily(&mut |daily: &Daily| {
        timezone = daily.timezone();
        in_daily.extend(daily.stores().map(|(code, _)| code.to_owned()));
        known.extend(in_daily.iter().cloned());
        match select(query, scope, directory, &known) {
            Ok(stores) => selected = stores,
            Err(refusal) => {
                failure = Some(refusal);
                return;
            }
        }
        ranges = read_ranges(
            daily,
            &selected,
            &|code| scope.sees_store(code),
            query.from,
            query.to,
        );
    });
    if let Some(refusal) = failure {
        return Err(refusal);
    }

    // Alerts opened in the range, per store.
    let now = Utc::now();
    let mut alerts_by_store: BTreeMap<&str, AlertCounts> = BTreeMap::new();
    let mut alert_region: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let mut supervisors: BTreeMap<&str, AlertCounts> = BTreeMap::new();
    for alert in alerts {
        if !selected.contains(&alert.store) {
            continue;
        }
        let day = alert.opened_at.with_timezone(&timezone).date_naive();
        if day < query.from || day > query.to {
            continue;
        }
        let within = alert
            .acknowledged_at
            .is_some_and(|at| at >= alert.opened_at && at - alert.opened_at <= RESPONSE_WINDOW);
        // An alert still inside its 24 h, not acknowledged yet, is neither in time nor late.
        if alert.acknowledged_at.is_none() && now - alert.opened_at < RESPONSE_WINDOW {
            continue;
        }
        let counts = alerts_by_store.entry(&alert.store).or_default();
        counts.alerts += 1;
        counts.within_24h += u64::from(within);
        alert_region
            .entry(&alert.store)
            .or_insert_with(|| alert.region.clone());
        if let (Some(by), true) = (&alert.acknowledged_by, scope.sees_store(&alert.store)) {
            if alert.acknowledged_at.is_some() {
                let supervisor = supervisors.entry(by).or_default();
                supervisor.alerts += 1;
                supervisor.within_24h += u64::from(within);
            }
        }
    }
    let store_alerts = |code: &str| alerts_by_store.get(code).copied().unwrap_or_default();

    // The chain: everything selected.
    let mut chain = (Counts::default(), AlertCounts::default());
    for (code, range) in &ranges {
        chain.0.add(&range.total);
        chain.1.add(&store_alerts(code));
    }

    // Regions: every region touched by the selection (every region without filters), and for
    // an admin the stores in none; a store user sees no region.
    let mut regions = Map::new();
    if !matches!(scope, Scope::Store(_)) {
        let mut per_region: BTreeMap<String, (Counts, AlertCounts, u64)> = BTreeMap::new();
        for region in directory.regions() {
            let listed = query.region.as_ref().is_none_or(|id| *id == region.id)
                && query
                    .store
                    .as_ref()
                    .is_none_or(|code| region.stores.contains(code));
            if listed {
                per_region.insert(region.id.clone(), Default::default());
            }
        }
        for code in &selected {
            let region = region_of(code)
                .or_else(|| alert_region.get(code.as_str()).cloned().flatten())
                .unwrap_or_else(|| NO_REGION.to_string());
            if region == NO_REGION && !matches!(scope, Scope::All) {
                continue;
            }
            let entry = per_region.entry(region).or_default();
            if let Some(range) = ranges.get(code) {
                entry.0.add(&range.total);
            }
            entry.1.add(&store_alerts(code));
            entry.2 += 1;
        }
        for (id, (counts, alerts, stores)) in per_region {
            let mut figures = figures(&counts, &alerts);
            let name = directory
                .regions()
                .iter()
                .find(|region| region.id == id)
                .map(|region| Value::from(region.name.clone()))
                .unwrap_or(Value::Null);
            figures.insert("name".into(), name);
            figures.insert("stores".into(), stores.into());
            regions.insert(id, Value::Object(figures));
        }
    }

    // Stores and clerks seen in full.
    let mut stores = Map::new();
    let mut clerks: BTreeMap<String, (Counts, Vec<String>)> = BTreeMap::new();
    for (code, range) in &ranges {
        if !scope.sees_store(code) {
            continue;
        }
        let mut figures = figures(&range.total, &store_alerts(code));
        figures.insert("region".into(), region_of(code).into());
        let mut days = Vec::new();
        let mut day = query.from;
        while day <= query.to {
            let (counts, records) = range.days.get(&day).copied().unwrap_or_default();
            days.push(json!({
                "day": day.format("%Y-%m-%d").to_string(),
                "completeness": ratio(counts.filled(), counts.required()),
                "traceability": ratio(counts.traced, counts.sales),
                "records": records,
            }));
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
        figures.insert("days".into(), Value::Array(days));
        stores.insert(code.clone(), Value::Object(figures));
        for (clerk, counts) in &range.clerks {
            let entry = clerks.entry(clerk.clone()).or_default();
            entry.0.add(counts);
            entry.1.push(code.clone());
        }
    }
    let clerks: Map<String, Value> = clerks
        .into_iter()
        .map(|(clerk, (counts, codes))| {
            let mut figures = figures(&counts, &AlertCounts::default());
            figures.insert("store".into(), codes[0].clone().into());
            figures.insert("stores".into(), codes.into());
            (clerk, Value::Object(figures))
        })
        .collect();
    let supervisors: Map<String, Value> = supervisors
        .into_iter()
        .map(|(name, counts)| {
            (
                name.to_string(),
                json!({"acknowledged": counts.alerts, "within_24h": counts.within_24h}),
            )
        })
        .collect();

    Ok(json!({
        "from": query.from.format("%Y-%m-%d").to_string(),
        "to": query.to.format("%Y-%m-%d").to_string(),
        "timezone": timezone.name(),
        "goals": yardsticks_json(&GOALS),
        "baselines": yardsticks_json(&BASELINES),
        "chain": Value::Object(figures(&chain.0, &chain.1)),
        "regions": regions,
        "stores": stores,
        "clerks": clerks,
        "supervisors": supervisors,
    }))
}

/// The stores a query counts: the caller's view (a store user's store; every store for the
/// others, other regions to be shown as aggregates only), narrowed by `store=` and `region=`;
/// a filter outside the scope is a 403, an unknown one a 400.
fn select(
    query: &Query,
    scope: &Scope,
    directory: &Directory,
    known: &BTreeSet<String>,
) -> Result<BTreeSet<String>, Refusal> {
    if let Some(code) = &query.store {
        if !scope.sees_store(code) {
            return Err(Refusal::outside(format!("store '{code}'")));
        }
        if !known.contains(code) {
            return Err(Refusal::bad(format!("unknown store '{code}'")));
        }
    }
    if let Some(id) = &query.region {
        if let Scope::Store(_) = scope {
            return Err(Refusal::outside(format!("region '{id}'")));
        }
        let configured = directory.regions().iter().any(|region| region.id == *id);
        let none = id == NO_REGION && matches!(scope, Scope::All);
        if !configured && !none {
            return Err(Refusal::bad(format!("unknown region '{id}'")));
        }
    }
    Ok(known
        .iter()
        .filter(|code| match scope {
            Scope::Store(own) => *code == own,
            _ => true,
        })
        .filter(|code| query.store.as_ref().is_none_or(|store| store == *code))
        .filter(|code| {
            query
                .region
                .as_ref()
                .is_none_or(|id| directory.region_of(code).unwrap_or(NO_REGION) == id.as_str())
        })
        .cloned()
        .collect())
}
