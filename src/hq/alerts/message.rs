//! The words of an alert: its one-line title and the message the group robots get (markdown
//! and plain text), listing the run's daily values, the failing cases and the dashboard link.
//! Cases name a time, a clerk code, a customer reference and symptom keywords: never a name.

use std::fmt::Write as _;

use super::super::notify::Notice;
use super::rules::{AlertRule, Threshold};
use super::{Alert, MESSAGE_CASES};

/// Most days of a run a message lists (the last ones).
const MESSAGE_DAYS: usize = 7;

/// A threshold or value as people read it: a percentage for shares, a number otherwise.
fn shown(rate: bool, value: f64) -> String {
    if rate {
        format!("{:.1}%", value * 100.0)
    } else {
        format!("{value:.0}")
    }
}

/// `WZ-LC-001（温州片区）医保核验通过率 连续 2 天低于 65.0%`.
pub(super) fn title(rule: &AlertRule, store: &str, region: Option<&str>, days: usize) -> String {
    let place = match region {
        Some(region) => format!("{store}（{region}）"),
        None => store.to_string(),
    };
    let rate = rule.metric.is_rate();
    let (word, limit) = match rule.threshold {
        Threshold::Below(limit) => ("低于", limit),
        Threshold::Above(limit) => ("高于", limit),
    };
    format!(
        "{place} {} 连续 {days} 天{word} {}",
        rule.name,
        shown(rate, limit)
    )
}

/// The message for the robots.
pub(super) fn notice(alert: &Alert, public_url: Option<&str>) -> Notice {
    let rate = !matches!(
        alert.metric.as_str(),
        "gateway_offline_hours" | "backlog_age_minutes"
    );
    let link =
        public_url.map(|base| format!("{}/#alerts/{}", base.trim_end_matches('/'), alert.id));
    let mut markdown = String::new();
    let mut text = String::new();
    // The link first: WeCom cuts a message at 4096 bytes, and the link is what matters.
    if let Some(link) = &link {
        let _ = writeln!(markdown, "[在看板确认处理]({link})\n");
        let _ = writeln!(text, "在看板确认处理: {link}\n");
    }
    let _ = writeln!(markdown, "**规则** {}（{}）", alert.rule, alert.metric);
    let _ = writeln!(text, "规则: {}（{}）", alert.rule, alert.metric);
    let skipped_days = alert.values.len().saturating_sub(MESSAGE_DAYS);
    if skipped_days > 0 {
        let line = format!("（前 {skipped_days} 天略）");
        let _ = writeln!(markdown, "- {line}");
        let _ = writeln!(text, "  {line}");
    }
    for value in alert.values.iter().skip(skipped_days) {
        let line = format!(
            "{}: {}（{} 例）",
            value.day,
            shown(rate, value.value),
            value.count
        );
        let _ = writeln!(markdown, "- {line}");
        let _ = writeln!(text, "  {line}");
    }
    if alert.cases_total > 0 {
        let shown_cases = alert.cases.len().min(MESSAGE_CASES);
        let heading = if shown_cases < alert.cases_total {
            format!(
                "未达标案例 {} 例（列出前 {shown_cases} 例）",
                alert.cases_total
            )
        } else {
            format!("未达标案例 {} 例", alert.cases_total)
        };
        let _ = writeln!(markdown, "\n**{heading}**");
        let _ = writeln!(text, "\n{heading}:");
        for (number, case) in alert.cases.iter().take(shown_cases).enumerate() {
            let mut parts = vec![case.time.clone()];
            parts.push(format!("店员 {}", case.clerk.as_deref().unwrap_or("—")));
            if let Some(customer) = &case.customer {
                parts.push(format!("顾客 {customer}"));
            }
            if !case.symptoms.is_empty() {
                parts.push(format!("症状 {}", case.symptoms.join("、")));
            }
            if let Some(value) = &case.value {
                parts.push(value.clone());
            }
            let line = parts.join(" · ");
            let _ = writeln!(markdown, "{}. {line}", number + 1);
            let _ = writeln!(text, "{}. {line}", number + 1);
        }
    }
    let json = serde_json::to_value(alert).unwrap_or_default();
    Notice {
        alert_id: alert.id.clone(),
        title: format!("【预警】{}", alert.title),
        markdown,
        text,
        alert: json,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{AlertCase, AlertState, AlertValue};
    use super::*;

    fn alert(cases: usize) -> Alert {
        Alert {
            id: "a-7".into(),
            rule: "insurance-pass-low".into(),
            title: "S1 医保核验通过率 连续 2 天低于 65.0%".into(),
            metric: "step_rate".into(),
            threshold: BTreeMap::from([("below".to_string(), 0.65)]),
            store: "S1".into(),
            region: Some("east-wz".into()),
            state: AlertState::Open,
            days: vec!["2026-12-01".into(), "2026-12-02".into()],
            values: vec![AlertValue {
                day: "2026-12-01".into(),
                value: 0.5,
                count: 10,
            }],
            opened_at: "2026-12-03T01:00:00.000Z".into(),
            delivered_at: None,
            acknowledged_at: None,
            acknowledged_by: None,
            note: None,
            resolved_at: None,
            resolved_by: None,
            action: None,
            response_minutes: None,
            cases: (0..cases)
                .map(|index| AlertCase {
                    time: format!("2026-12-01T10:{index:02}:00+08:00"),
                    clerk: Some("c-17".into()),
                    customer: Some(format!("ref{index}")),
                    symptoms: vec!["高血压".into()],
                    value: Some("未通过".into()),
                })
                .collect(),
            cases_total: cases + 5,
            targets: vec!["wz".into()],
        }
    }

    #[test]
    fn the_message_lists_days_cases_and_the_link() {
        let notice = notice(&alert(3), Some("https://hq.example.com/"));
        assert_eq!(notice.alert_id, "a-7");
        assert!(notice.title.starts_with("【预警】S1"));
        for text in [&notice.markdown, &notice.text] {
            assert!(text.contains("2026-12-01: 50.0%（10 例）"), "{text}");
            assert!(
                text.contains("店员 c-17 · 顾客 ref0 · 症状 高血压 · 未通过"),
                "{text}"
            );
            assert!(text.contains("未达标案例 8 例（列出前 3 例）"), "{text}");
            assert!(
                text.contains("https://hq.example.com/#alerts/a-7"),
                "{text}"
            );
        }
        assert_eq!(notice.alert["id"], "a-7");
    }

    #[test]
    fn a_message_lists_at_most_twenty_cases_and_no_link_without_a_public_url() {
        let notice = notice(&alert(40), None);
        assert!(notice.markdown.contains("20. "));
        assert!(!notice.markdown.contains("21. "));
        assert!(!notice.markdown.contains("#alerts/"));
    }
}
