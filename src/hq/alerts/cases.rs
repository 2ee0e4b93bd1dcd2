//! Which records of a store's last days fail a rule, as the cases an alert lists.

use super::super::daily::Case;
use super::rules::Metric;
use super::AlertCase;

/// `case` as a failing case of `metric`, or `None` when it does not fail it.
pub(super) fn failing_case(metric: &Metric, case: &Case) -> Option<AlertCase> {
    match (metric, case) {
        (
            Metric::StepCompleteness { flow, step } | Metric::StepRate { flow, step, .. },
            Case::Consultation {
                ts,
                opened_at,
                clerk,
                customer,
                flow: case_flow,
                steps,
                ..
            },
        ) => {
            if case_flow != flow {
                return None;
            }
            let measured = steps.iter().find(|candidate| candidate.key == *step)?;
            let passes = match metric {
                Metric::StepRate { value, .. } => {
                    measured.value.as_deref() == Some(value.as_str())
                        || measured.values.iter().any(|held| held == value)
                }
                _ => measured.done,
            };
            if passes {
                return None;
            }
            let value = match (&measured.skipped, &measured.value) {
                (Some(reason), _) => Some(format!("跳过: {reason}")),
                (None, Some(value)) => Some(value.clone()),
                (None, None) if !measured.values.is_empty() => Some(measured.values.join("、")),
                (None, None) => None,
            };
            let symptoms = steps
                .iter()
                .filter(|other| other.key != *step)
                .flat_map(|other| other.values.iter().cloned())
                .collect();
            Some(AlertCase {
                time: opened_at.clone().unwrap_or_else(|| ts.clone()),
                clerk: clerk.clone(),
                customer: customer.clone(),
                symptoms,
                value,
            })
        }
        (
            Metric::CampaignCompleteness { .. } | Metric::PromptTimeoutRate { .. },
            Case::Prompt {
                ts,
                opened_at,
                clerk,
                campaign: case_campaign,
                outcome,
                ..
            },
        ) => {
            let fails = match metric {
                Metric::CampaignCompleteness { campaign } => {
                    case_campaign == campaign && outcome != "answered"
                }
                Metric::PromptTimeoutRate { campaign } => {
                    campaign
                        .as_ref()
                        .is_none_or(|wanted| wanted == case_campaign)
                        && outcome == "timeout"
                }
                _ => false,
            };
            fails.then(|| AlertCase {
                time: opened_at.clone().unwrap_or_else(|| ts.clone()),
                clerk: clerk.clone(),
                customer: None,
                symptoms: Vec::new(),
                value: Some(outcome.clone()),
            })
        }
        _ => None,
    }
}
