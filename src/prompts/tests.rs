//! Engine tests: an in-memory journal, tokio's paused clock and a [`TokioClock`] that follows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, TimeZone};

use super::*;
use crate::config::{CampaignSettings, PromptOption, SkuPattern};
use crate::metrics::Metrics;
use crate::record::attribution::{AttributionData, Channel, Outcome};

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Local> {
    Local
        .with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("unambiguous local time")
}

fn t0() -> DateTime<Local> {
    at(2026, 11, 27, 16, 0, 0)
}

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn campaign(id: &str, skus: &[&str], options: &[(&str, &str)], timeout_s: u64) -> CampaignSettings {
    CampaignSettings {
        id: id.to_owned(),
        skus: skus
            .iter()
            .map(|sku| match sku.strip_suffix('*') {
                Some(prefix) => SkuPattern::Prefix(prefix.to_owned()),
                None => SkuPattern::Exact((*sku).to_owned()),
            })
            .collect(),
        question: format!("{id}: 推荐话术来源"),
        options: options
            .iter()
            .map(|(key, label)| PromptOption {
                key: (*key).to_owned(),
                label: (*label).to_owned(),
            })
            .collect(),
        timeout: Duration::from_secs(timeout_s),
        starts: None,
        ends: None,
    }
}

fn config() -> PromptsConfig {
    PromptsConfig {
        campaigns: vec![
            campaign(
                "xinsong",
                &["690*"],
                &[
                    ("doctor", "医生推荐"),
                    ("referral", "老客转介"),
                    ("poster", "海报引导"),
                ],
                120,
            ),
            campaign(
                "vit",
                &["693*"],
                &[("doctor", "医生推荐"), ("poster", "海报引导")],
                60,
            ),
        ],
        answer_codes: BTreeMap::from([("ATTR-DOCTOR".to_owned(), "doctor".to_owned())]),
        skip_reasons: vec!["顾客赶时间".to_owned()],
        ..PromptsConfig::default()
    }
}

struct Store {
    prompts: PromptsHandle,
    journal: MemoryPromptJournal,
    clock: TokioClock,
    metrics: Metrics,
}

async fn start_at(journal: MemoryPromptJournal, now: DateTime<Local>) -> Store {
    let clock = TokioClock::starting_at(now);
    let metrics = Metrics::new();
    let prompts = spawn_with_clock(config(), journal.clone(), metrics.clone(), Arc::new(clock))
        .await
        .expect("engine starts");
    Store {
        prompts,
        journal,
        clock,
        metrics,
    }
}

async fn start() -> Store {
    start_at(MemoryPromptJournal::new(), t0()).await
}

impl Store {
    async fn open(&self, station: &str, sku: &str) -> Opened {
        let campaign = self
            .prompts
            .campaign_for(&[sku], self.clock.now().date_naive())
            .expect("targeted sku");
        self.prompts
            .open(OpenRequest {
                station: station.to_owned(),
                campaign,
                sku: sku.to_owned(),
                scan_id: format!("WZ/gw-1/e/{sku}"),
                opened_at: self.clock.now(),
            })
            .await
            .expect("open")
    }

    fn ids(prompts: &[PromptView]) -> Vec<String> {
        prompts.iter().map(|prompt| prompt.id.clone()).collect()
    }
}

/// Lets the writer task catch up (the in-memory journal never blocks).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn metric(metrics: &Metrics, outcome: &str) -> bool {
    metrics
        .render()
        .contains(&format!("posgw_prompts_total{{outcome=\"{outcome}\"}} 1"))
}

#[tokio::test(start_paused = true)]
async fn answer_writes_one_complete_record() {
    let store = start().await;
    let opened = store.open("till-1", "6901234567892").await;
    assert!(opened.new);
    let prompt = opened.prompt;
    assert_eq!(prompt.id.len(), 10);
    assert!(prompt.id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        prompt.expires_at,
        prompt.opened_at + chrono::Duration::seconds(120)
    );
    assert_eq!(prompt.options.len(), 3);

    tokio::time::sleep(Duration::from_millis(3200)).await;
    let resolution = store
        .prompts
        .answer(&prompt.id, "doctor", Some("c-17".into()), Channel::Web)
        .await
        .expect("answer");
    let records = store.journal.records();
    assert_eq!(records, vec![resolution.clone()]);
    let expected = AttributionData {
        prompt: prompt.id.clone(),
        campaign: "xinsong".into(),
        station: "till-1".into(),
        sku: "6901234567892".into(),
        scan: "WZ/gw-1/e/6901234567892".into(),
        question: "xinsong: 推荐话术来源".into(),
        outcome: Outcome::Answered,
        answer: Some("doctor".into()),
        answer_label: Some("医生推荐".into()),
        channel: Some(Channel::Web),
        clerk: Some("c-17".into()),
        opened_at: t0(),
        resolved_at: t0() + ms(3200),
        latency_ms: 3200,
        skip_reason: None,
        receipt: None,
    };
    assert_eq!(resolution, expected);
    assert!(store.prompts.open_prompts(None).await.is_empty());
    assert!(metric(&store.metrics, "opened"));
    assert!(metric(&store.metrics, "answered"));
}

#[tokio::test(start_paused = true)]
async fn skip_needs_a_reason_and_records_it() {
    let store = start().await;
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    assert_eq!(
        store.prompts.skip(&prompt.id, "  ", None).await,
        Err(PromptError::EmptyReason)
    );
    assert_eq!(store.prompts.open_prompts(None).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resolution = store
        .prompts
        .skip(&prompt.id, " 顾客赶时间 ", Some("c-3".into()))
        .await
        .expect("skip");
    assert_eq!(resolution.outcome, Outcome::Skipped);
    assert_eq!(resolution.skip_reason.as_deref(), Some("顾客赶时间"));
    assert_eq!(resolution.clerk.as_deref(), Some("c-3"));
    assert_eq!(
        (
            resolution.answer,
            resolution.answer_label,
            resolution.channel
        ),
        (None, None, None)
    );
    assert_eq!(resolution.latency_ms, 5000);
    assert_eq!(store.journal.records().len(), 1);
    assert!(metric(&store.metrics, "skipped"));
}

#[tokio::test(start_paused = true)]
async fn timeout_resolves_at_expires_at() {
    let store = start().await;
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    tokio::time::sleep(Duration::from_secs(119)).await;
    settle().await;
    assert!(store.journal.records().is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    let records = store.journal.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.outcome, Outcome::Timeout);
    assert_eq!(record.resolved_at, prompt.expires_at);
    assert_eq!(record.latency_ms, 120_000);
    assert_eq!(
        (record.answer.clone(), record.channel, record.clerk.clone()),
        (None, None, None)
    );
    assert!(store.prompts.open_prompts(None).await.is_empty());
    assert!(metric(&store.metrics, "timeout"));
    // A late answer is told it is too late, not that the prompt never existed.
    assert_eq!(
        store
            .prompts
            .answer(&prompt.id, "doctor", None, Channel::Web)
            .await,
        Err(PromptError::AlreadyResolved)
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_fire_in_deadline_order_across_campaigns() {
    let store = start().await;
    let long = store.open("till-1", "6901234567892").await.prompt; // 120 s
    let short = store.open("till-1", "6931234567890").await.prompt; // 60 s
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    let resolved: Vec<String> = store
        .journal
        .records()
        .into_iter()
        .map(|r| r.prompt)
        .collect();
    assert_eq!(resolved, vec![short.id.clone()]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    let records = store.journal.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].prompt, long.id);
}

#[tokio::test(start_paused = true)]
async fn rescan_returns_the_open_prompt_and_other_skus_stack() {
    let store = start().await;
    let first = store.open("till-1", "6901234567892").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = store.open("till-1", "6901234567892").await;
    assert!(!again.new);
    assert_eq!(again.prompt, first.prompt);
    let second = store.open("till-1", "6905555555555").await;
    assert!(second.new);
    let elsewhere = store.open("till-2", "6901234567892").await;
    assert!(elsewhere.new);

    let till1 = store.prompts.open_prompts(Some("till-1")).await;
    assert_eq!(
        Store::ids(&till1),
        vec![first.prompt.id.clone(), second.prompt.id.clone()]
    );
    let till2 = store.prompts.open_prompts(Some("till-2")).await;
    assert_eq!(Store::ids(&till2), vec![elsewhere.prompt.id.clone()]);
    assert_eq!(store.prompts.open_prompts(None).await.len(), 3);
    assert!(store
        .metrics
        .render()
        .contains("posgw_prompts_total{outcome=\"opened\"} 3"));

    // Once answered, the same product opens a new prompt (the next customer).
    store
        .prompts
        .answer(&first.prompt.id, "poster", None, Channel::Web)
        .await
        .expect("answer");
    let next = store.open("till-1", "6901234567892").await;
    assert!(next.new);
    assert_ne!(next.prompt.id, first.prompt.id);
}

#[tokio::test(start_paused = true)]
async fn answer_card_answers_the_oldest_prompt_offering_the_option() {
    let store = start().await;
    assert_eq!(
        store.prompts.answer_card("ATTR-DOCTOR").as_deref(),
        Some("doctor")
    );
    assert_eq!(store.prompts.answer_card("6901234567892"), None);
    let vit = store.open("till-1", "6931234567890").await.prompt; // doctor, poster
    let xinsong = store.open("till-1", "6901234567892").await.prompt; // + referral
    store.open("till-2", "6901234567892").await;

    let referral = store
        .prompts
        .answer_oldest("till-1", "referral", Channel::Card)
        .await
        .expect("engine")
        .expect("a prompt offers referral");
    assert_eq!(referral.prompt, xinsong.id);
    assert_eq!(referral.channel, Some(Channel::Card));
    assert_eq!(referral.clerk, None);

    let doctor = store
        .prompts
        .answer_oldest("till-1", "doctor", Channel::Card)
        .await
        .expect("engine")
        .expect("a prompt offers doctor");
    assert_eq!(doctor.prompt, vit.id);
    assert_eq!(doctor.answer_label.as_deref(), Some("医生推荐"));

    assert_eq!(
        store
            .prompts
            .answer_oldest("till-1", "doctor", Channel::Card)
            .await,
        Ok(None)
    );
    assert_eq!(store.prompts.open_prompts(Some("till-2")).await.len(), 1);
    assert_eq!(store.journal.records().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn error_cases() {
    let store = start().await;
    let prompt = store.open("till-1", "6931234567890").await.prompt;
    assert_eq!(
        store
            .prompts
            .answer("nope", "doctor", None, Channel::Web)
            .await,
        Err(PromptError::NotFound)
    );
    assert_eq!(
        store.prompts.skip("nope", "reason", None).await,
        Err(PromptError::NotFound)
    );
    assert_eq!(
        store
            .prompts
            .answer(&prompt.id, "referral", None, Channel::Web)
            .await,
        Err(PromptError::OptionNotOffered("referral".into()))
    );
    store
        .prompts
        .answer(&prompt.id, "doctor", None, Channel::Mqtt)
        .await
        .expect("answer");
    assert_eq!(
        store
            .prompts
            .answer(&prompt.id, "doctor", None, Channel::Web)
            .await,
        Err(PromptError::AlreadyResolved)
    );
    assert_eq!(
        store.prompts.skip(&prompt.id, "x", None).await,
        Err(PromptError::AlreadyResolved)
    );
    let unknown = store
        .prompts
        .open(OpenRequest {
            station: "till-1".into(),
            campaign: "gone".into(),
            sku: "1".into(),
            scan_id: "s".into(),
            opened_at: t0(),
        })
        .await;
    assert_eq!(unknown, Err(PromptError::UnknownCampaign("gone".into())));
    assert_eq!(store.journal.records().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn journal_failure_is_reported_as_unavailable() {
    let store = start().await;
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    store.journal.set_failure(Some("disk full"));
    let result = store
        .prompts
        .answer(&prompt.id, "doctor", None, Channel::Web)
        .await;
    assert!(
        matches!(result, Err(PromptError::Unavailable(message)) if message.contains("disk full"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_record_is_retried_and_its_prompt_stays_saved_until_it_is_in() {
    let store = start().await;
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    settle().await;
    store.journal.set_failure(Some("disk full"));
    let result = store
        .prompts
        .answer(&prompt.id, "doctor", None, Channel::Web)
        .await;
    assert!(result.is_err());
    settle().await;
    // The record is missing, so the saved state still holds the prompt: a restart now would
    // resolve it rather than forget it.
    assert_eq!(saved_prompts(&store.journal), 1);
    store.journal.set_failure(None);
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    let records = store.journal.records();
    assert_eq!(records.len(), 1, "written on retry");
    assert_eq!(records[0].prompt, prompt.id);
    assert_eq!(records[0].answer.as_deref(), Some("doctor"));
    assert_eq!(
        saved_prompts(&store.journal),
        0,
        "state saved once the record is in"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_resumes_unexpired_and_times_out_expired() {
    let before = start().await;
    let expired = before.open("till-1", "6901234567892").await.prompt; // expires t0+120s
    tokio::time::sleep(Duration::from_secs(100)).await;
    let resumed = before.open("till-1", "6905555555555").await.prompt; // expires t0+220s
    let other = before.open("till-2", "6931234567890").await.prompt; // expires t0+160s
    before.prompts.close().await;
    assert_eq!(
        before.prompts.open_prompts(None).await,
        Vec::<PromptView>::new(),
        "a closed engine answers nothing"
    );
    assert!(matches!(
        before
            .prompts
            .answer(&resumed.id, "doctor", None, Channel::Web)
            .await,
        Err(PromptError::Unavailable(_))
    ));
    let state = before.journal.state().expect("state saved");
    assert!(before.journal.records().is_empty());

    // The gateway was down from t0+100s to t0+150s.
    let after = start_at(
        MemoryPromptJournal::with_state(state),
        t0() + chrono::Duration::seconds(150),
    )
    .await;
    // The expired prompt's record is already in the journal when spawn returns.
    let records = after.journal.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].prompt, expired.id);
    assert_eq!(records[0].outcome, Outcome::Timeout);
    assert_eq!(records[0].resolved_at, expired.expires_at);
    assert_eq!(records[0].latency_ms, 120_000);
    assert_eq!(records[0].scan, "WZ/gw-1/e/6901234567892");
    assert!(metric(&after.metrics, "timeout"));

    let open = after.prompts.open_prompts(None).await;
    assert_eq!(open, vec![resumed.clone(), other.clone()]);
    assert_eq!(
        after
            .prompts
            .answer(&expired.id, "doctor", None, Channel::Web)
            .await,
        Err(PromptError::AlreadyResolved)
    );
    // Today's figures came through the restart too.
    let today = after.prompts.today().await;
    assert_eq!(
        (today[0].station.as_str(), today[0].opened, today[0].timeout),
        ("till-1", 2, 1)
    );

    // Resumed prompts keep their original deadlines: till-2's at t0+160s, till-1's at t0+220s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(after.journal.records().len(), 2);
    assert_eq!(after.journal.records()[1].resolved_at, other.expires_at);
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    let records = after.journal.records();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].prompt, resumed.id);
    assert_eq!(records[2].resolved_at, resumed.expires_at);
    assert_eq!(saved_prompts(&after.journal), 0);
}

/// The number of prompts in a journal's saved state.
fn saved_prompts(journal: &MemoryPromptJournal) -> usize {
    let bytes = journal.state().expect("state saved");
    state::PersistedState::decode(&bytes)
        .expect("state decodes")
        .prompts
        .len()
}

#[tokio::test(start_paused = true)]
async fn every_change_is_persisted() {
    let store = start().await;
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    settle().await;
    assert_eq!(saved_prompts(&store.journal), 1);
    store
        .prompts
        .answer(&prompt.id, "doctor", None, Channel::Web)
        .await
        .expect("answer");
    settle().await;
    assert_eq!(saved_prompts(&store.journal), 0);
}

#[tokio::test(start_paused = true)]
async fn unreadable_state_starts_empty() {
    let store = start_at(MemoryPromptJournal::with_state(b"garbage".to_vec()), t0()).await;
    assert!(store.prompts.open_prompts(None).await.is_empty());
    let failing = MemoryPromptJournal::new();
    failing.set_failure(Some("journal closed"));
    let result = spawn(config(), failing, Metrics::new()).await;
    assert!(matches!(result, Err(message) if message.contains("journal closed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_has_no_gap_and_no_duplicate() {
    for _round in 0..20 {
        let prompts = spawn(config(), MemoryPromptJournal::new(), Metrics::new())
            .await
            .expect("engine");
        let opener = {
            let prompts = prompts.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    prompts
                        .open(OpenRequest {
                            station: "till-1".into(),
                            campaign: "xinsong".into(),
                            sku: format!("690{n:010}"),
                            scan_id: format!("scan-{n}"),
                            opened_at: Local::now(),
                        })
                        .await
                        .expect("open");
                }
            })
        };
        tokio::task::yield_now().await;
        let (snapshot, mut events) = prompts.subscribe(Some("till-1")).await;
        opener.await.expect("opener");
        let mut seen: Vec<String> = snapshot.into_iter().map(|prompt| prompt.id).collect();
        while let Ok(event) = events.try_recv() {
            if let PromptEvent::Prompt(prompt) = event {
                seen.push(prompt.id);
            }
        }
        let all = Store::ids(&prompts.open_prompts(Some("till-1")).await);
        assert_eq!(
            seen, all,
            "snapshot + events == every prompt, in order, once"
        );
        prompts.close().await;
    }
}

#[tokio::test(start_paused = true)]
async fn events_and_stats_are_broadcast() {
    let store = start().await;
    let (snapshot, mut events) = store.prompts.subscribe(Some("till-1")).await;
    assert!(snapshot.is_empty());
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    store
        .prompts
        .answer(&prompt.id, "referral", None, Channel::Web)
        .await
        .expect("answer");
    assert_eq!(
        events.try_recv().expect("prompt"),
        PromptEvent::Prompt(prompt.clone())
    );
    let PromptEvent::Stats(stats) = events.try_recv().expect("stats") else {
        panic!("expected stats");
    };
    assert_eq!((stats.opened, stats.open), (1, 1));
    assert_eq!(
        events.try_recv().expect("resolved"),
        PromptEvent::Resolved {
            id: prompt.id.clone(),
            station: "till-1".into(),
            outcome: Outcome::Answered,
            answer: Some("referral".into()),
        }
    );
    let PromptEvent::Stats(stats) = events.try_recv().expect("stats") else {
        panic!("expected stats");
    };
    assert_eq!(
        (stats.opened, stats.answered, stats.open, stats.completeness),
        (1, 1, 0, Some(1.0))
    );
    assert_eq!(stats.station, "till-1");
}

#[tokio::test(start_paused = true)]
async fn today_figures_reset_at_midnight() {
    let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).expect("date");
    let store = start_at(MemoryPromptJournal::new(), at(2026, 11, 27, 23, 58, 0)).await;
    let answered = store.open("till-1", "6901234567892").await.prompt;
    store
        .prompts
        .answer(&answered.id, "doctor", None, Channel::Web)
        .await
        .expect("answer");
    let skipped = store.open("till-1", "6905555555555").await.prompt;
    store
        .prompts
        .skip(&skipped.id, "busy", None)
        .await
        .expect("skip");
    tokio::time::sleep(Duration::from_secs(30)).await;
    store.open("till-1", "6901234567892").await; // times out at 00:00:30
    store.open("till-2", "6931234567890").await; // times out at 23:59:30

    tokio::time::sleep(Duration::from_secs(61)).await;
    let today = store.prompts.today().await;
    assert_eq!(today.len(), 2);
    let till1 = &today[0];
    assert_eq!(till1.day, day(27));
    assert_eq!(
        (
            till1.opened,
            till1.answered,
            till1.skipped,
            till1.timeout,
            till1.open
        ),
        (3, 1, 1, 0, 1)
    );
    assert_eq!(till1.completeness, Some(1.0 / 3.0));
    assert_eq!(
        (
            today[1].station.as_str(),
            today[1].timeout,
            today[1].completeness
        ),
        ("till-2", 1, Some(0.0))
    );

    let (_, mut events) = store.prompts.subscribe(Some("till-1")).await;
    // 23:59:31 -> 00:00:10: the day turns; subscribers get zeroed figures.
    tokio::time::sleep(Duration::from_secs(39)).await;
    let mut reset = Vec::new();
    while let Ok(event) = events.try_recv() {
        reset.push(event);
    }
    assert!(reset.contains(&PromptEvent::Stats(StationToday::empty("till-1", day(28)))));
    assert!(reset.contains(&PromptEvent::Stats(StationToday::empty("till-2", day(28)))));
    assert!(store.prompts.today().await.is_empty());

    // Yesterday's last prompt times out today: recorded, but not in today's figures.
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    let records = store.journal.records();
    assert_eq!(records.last().map(|r| r.outcome), Some(Outcome::Timeout));
    assert!(store.prompts.today().await.is_empty());
    let next = store.open("till-1", "6901234567892").await;
    assert!(next.new);
    let today = store.prompts.today().await;
    assert_eq!((today[0].day, today[0].opened), (day(28), 1));
}

#[tokio::test(start_paused = true)]
async fn campaign_for_uses_the_window_and_config_order() {
    let mut config = config();
    config.campaigns.insert(0, {
        let mut early = campaign("winter", &["6901234567892"], &[("doctor", "医生推荐")], 30);
        early.starts = NaiveDate::from_ymd_opt(2026, 12, 1);
        early
    });
    let prompts = spawn(config, MemoryPromptJournal::new(), Metrics::new())
        .await
        .expect("engine");
    let nov = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
    let dec = NaiveDate::from_ymd_opt(2026, 12, 2).expect("date");
    let codes = ["06901234567892", "6901234567892", "]E06901234567892"];
    assert_eq!(
        prompts.campaign_for(&codes, nov).as_deref(),
        Some("xinsong")
    );
    assert_eq!(prompts.campaign_for(&codes, dec).as_deref(), Some("winter"));
    assert_eq!(prompts.campaign_for(&["4006381333931"], dec), None);
    assert_eq!(&*prompts.skip_reasons(), ["顾客赶时间".to_owned()]);
}

impl Store {
    async fn sale(
        &self,
        station: &str,
        receipt: &str,
        skus: &[Option<&str>],
    ) -> Vec<Option<String>> {
        self.sale_written(station, receipt, skus, true).await
    }

    /// A sale as the core handles it: linked, then written (or not, with `recorded` false).
    async fn sale_written(
        &self,
        station: &str,
        receipt: &str,
        skus: &[Option<&str>],
        recorded: bool,
    ) -> Vec<Option<String>> {
        let linked = self
            .prompts
            .link_sale(SaleLink {
                station: station.to_owned(),
                receipt: Some(receipt.to_owned()),
                at: self.clock.now(),
                skus: skus.iter().map(|sku| sku.map(str::to_owned)).collect(),
            })
            .await;
        let ids = linked.iter().flatten().cloned().collect();
        self.prompts
            .sale_recorded(station.to_owned(), ids, recorded)
            .await;
        linked
    }
}

#[tokio::test(start_paused = true)]
async fn a_sale_that_could_not_be_written_leaves_its_prompts_to_link_again() {
    let store = start().await;
    let open = store.open("till-1", "6901234567892").await.prompt;
    let answered = store.open("till-1", "6931234567890").await.prompt;
    store
        .prompts
        .answer(&answered.id, "doctor", None, Channel::Web)
        .await
        .expect("answer");
    let skus = [Some("6901234567892"), Some("6931234567890")];
    let expected = vec![Some(open.id.clone()), Some(answered.id.clone())];
    // The journal refused the sale: both links are taken back...
    assert_eq!(
        store.sale_written("till-1", "R-1", &skus, false).await,
        expected
    );
    // ...so the open prompt is still this customer's (a re-scan returns it)...
    assert!(!store.open("till-1", "6901234567892").await.new);
    // ...and the sale, written again, links the same prompts.
    assert_eq!(store.sale("till-1", "R-1", &skus).await, expected);
    // Now they are taken.
    assert_eq!(store.sale("till-1", "R-2", &skus).await, vec![None, None]);
    let resolution = store
        .prompts
        .answer(&open.id, "poster", None, Channel::Web)
        .await
        .expect("answer");
    assert_eq!(resolution.receipt.as_deref(), Some("R-1"));
}

#[tokio::test(start_paused = true)]
async fn a_sale_links_its_line_to_the_open_prompt_and_the_late_answer_carries_the_receipt() {
    let store = start().await;
    let prompt = store.open("till-1", "6901234567892").await.prompt;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The register writes the GTIN-14 spelling; a line without a code and another product
    // link to nothing.
    let linked = store
        .sale(
            "till-1",
            "R-1001",
            &[None, Some("06901234567892"), Some("6939999999999")],
        )
        .await;
    assert_eq!(linked, vec![None, Some(prompt.id.clone()), None]);
    // The next customer's scan of the product opens a prompt of its own.
    let next = store.open("till-1", "6901234567892").await;
    assert!(
        next.new,
        "a prompt linked to a sale is not the next customer's"
    );
    // Answered after the sale: the attribution names the receipt.
    let resolution = store
        .prompts
        .answer(&prompt.id, "poster", None, Channel::Mqtt)
        .await
        .expect("answer");
    assert_eq!(resolution.receipt.as_deref(), Some("R-1001"));
    // One prompt, one sale line: the next customer's sale links to the next customer's
    // prompt, and the one after that to nothing.
    let again = store
        .sale("till-1", "R-1002", &[Some("6901234567892")])
        .await;
    assert_eq!(again, vec![Some(next.prompt.id.clone())]);
    let third = store
        .sale("till-1", "R-1003", &[Some("6901234567892")])
        .await;
    assert_eq!(third, vec![None]);
}

#[tokio::test(start_paused = true)]
async fn a_sale_after_the_answer_links_within_the_window_at_the_same_station_only() {
    let store = start().await;
    let first = store.open("till-1", "6901234567892").await.prompt;
    store
        .prompts
        .answer(&first.id, "doctor", None, Channel::Web)
        .await
        .expect("answer");
    let other_station = store.sale("till-2", "R-9", &[Some("6901234567892")]).await;
    assert_eq!(other_station, vec![None], "another counter's sale");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let linked = store.sale("till-1", "R-1", &[Some("6901234567892")]).await;
    assert_eq!(linked, vec![Some(first.id.clone())]);

    // Two customers in turn: each sale takes the oldest prompt still unlinked.
    let second = store.open("till-1", "6901234567892").await.prompt;
    store
        .prompts
        .skip(&second.id, "顾客赶时间", None)
        .await
        .expect("skip");
    let third = store.open("till-1", "6901234567892").await.prompt;
    let both = store
        .sale(
            "till-1",
            "R-2",
            &[Some("6901234567892"), Some("6901234567892")],
        )
        .await;
    assert_eq!(both, vec![Some(second.id.clone()), Some(third.id.clone())]);

    // Past the window (10 minutes by default) a resolved prompt no longer links.
    let late = store.open("till-1", "6931234567890").await.prompt;
    store
        .prompts
        .answer(&late.id, "doctor", None, Channel::Web)
        .await
        .expect("answer");
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert_eq!(
        store.sale("till-1", "R-3", &[Some("6931234567890")]).await,
        vec![None]
    );
}

#[tokio::test(start_paused = true)]
async fn a_linked_open_prompt_keeps_its_receipt_across_a_restart() {
    let before = start().await;
    let prompt = before.open("till-1", "6901234567892").await.prompt;
    let linked = before.sale("till-1", "R-7", &[Some("6901234567892")]).await;
    assert_eq!(linked, vec![Some(prompt.id.clone())]);
    before.prompts.close().await;
    let state = before.journal.state().expect("state saved");
    let after = start_at(
        MemoryPromptJournal::with_state(state),
        t0() + chrono::Duration::seconds(10),
    )
    .await;
    let resolution = after
        .prompts
        .answer(&prompt.id, "doctor", None, Channel::Web)
        .await
        .expect("answer");
    assert_eq!(resolution.receipt.as_deref(), Some("R-7"));
}

/// Finding 6 of issue 11: `timeout = "2500000000h"` passed the config check, then the first scan
/// panicked the engine (`DateTime + Duration` overflow) and no prompt ever opened again. The
/// config now refuses it; the engine must still not panic on a timeout past the calendar.
#[tokio::test(start_paused = true)]
async fn a_timeout_past_the_calendar_opens_prompts_instead_of_panicking() {
    let mut config = config();
    config.campaigns[0].timeout = Duration::from_secs(2_500_000_000 * 3600);
    let clock = TokioClock::starting_at(t0());
    let prompts = spawn_with_clock(
        config,
        MemoryPromptJournal::new(),
        Metrics::new(),
        Arc::new(clock),
    )
    .await
    .expect("engine starts");
    for sku in ["6901234567892", "6901234567893"] {
        let campaign = prompts
            .campaign_for(&[sku], clock.now().date_naive())
            .expect("targeted sku");
        let opened = prompts
            .open(OpenRequest {
                station: "till-1".to_owned(),
                campaign,
                sku: sku.to_owned(),
                scan_id: format!("WZ/gw-1/e/{sku}"),
                opened_at: clock.now(),
            })
            .await
            .expect("the engine is alive and opens the prompt");
        assert!(opened.prompt.expires_at > opened.prompt.opened_at);
    }
    assert_eq!(prompts.open_prompts(None).await.len(), 2);
}
