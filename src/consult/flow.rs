//! What a consultation flow is: the configured checklist (`[[flow]]`), which products open it,
//! and the hold rule. Pure data and lookups, built by `config` and read by the engine, the core
//! (does this scan belong to a flow?) and the serial scanner task (is this frame to be held?).

use std::sync::Arc;
use std::time::Duration;

use crate::config::SkuPattern;

/// One configured flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Unique id (`rx-5step`), recorded as the consultation's `flow`.
    pub id: String,
    /// What the clerk sees (`处方推荐五步法`).
    pub name: String,
    /// Products whose scan opens the flow at its station (exact codes or `prefix*`).
    pub skus: Vec<SkuPattern>,
    /// The checklist, in order.
    pub steps: Vec<Step>,
    /// The only reasons a step may be skipped with.
    pub skip_reasons: Vec<String>,
    /// Index of the `hold` step: a flow product's scan waits until every step before it is
    /// done or skipped. `None`: scans are never held.
    pub hold: Option<usize>,
    /// The longest a scan is held; then it is released anyway.
    pub hold_timeout: Duration,
    /// A consultation open this long closes (`abandoned`, or `completed` when every step is
    /// settled and only the sale never came).
    pub timeout: Duration,
}

/// One step of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Machine key (`symptoms`), unique within the flow.
    pub key: String,
    /// What the clerk sees (`症状记录`).
    pub label: String,
    /// The values the step may record; empty: the step is simply done.
    pub choose: Vec<String>,
    /// Several values of `choose` may be recorded at once.
    pub multi: bool,
    /// Whether something other than the clerk completes it.
    pub auto: Option<Auto>,
}

/// What completes a step without the clerk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto {
    /// The scan of one of the flow's products (the value is the product code when the step
    /// has no `choose` list).
    Scan,
    /// The sale's medical-insurance payment: approved → the first `choose` value, declined →
    /// the second.
    Sale,
}

impl Flow {
    /// Whether `code` (one spelling of a scanned product) is one of the flow's products.
    pub fn matches(&self, code: &str) -> bool {
        self.skus.iter().any(|sku| sku.matches(code))
    }

    /// The index of the step named `key`.
    pub fn step(&self, key: &str) -> Option<usize> {
        self.steps.iter().position(|step| step.key == key)
    }
}

/// The flows in force, in configuration order (the first matching flow wins), shared by the
/// engine and every scanner task; a reload builds a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flows {
    flows: Vec<Arc<Flow>>,
}

impl Flows {
    /// The flows, in configuration order.
    pub fn new(flows: Vec<Flow>) -> Self {
        Flows {
            flows: flows.into_iter().map(Arc::new).collect(),
        }
    }

    /// No flow configured.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The flow with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Flow>> {
        self.flows.iter().find(|flow| flow.id == id)
    }

    /// Every flow, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Flow>> {
        self.flows.iter()
    }

    /// The first flow one of `codes` (in any of its GTIN spellings) belongs to.
    pub fn flow_for(&self, codes: &[&str]) -> Option<&Arc<Flow>> {
        self.flows.iter().find(|flow| {
            codes
                .iter()
                .any(|code| crate::prompts::spellings(code).any(|spelling| flow.matches(spelling)))
        })
    }

    /// Whether any flow holds scans: only then does a scanner forward frame by frame.
    pub fn holds_any(&self) -> bool {
        self.flows.iter().any(|flow| flow.hold.is_some())
    }

    /// The flow that holds the scan in `frame` (as the scanner sent it, without terminator),
    /// if any. Decodes the frame the way the core does, so a GS1 code's GTIN matches too.
    pub fn holding(&self, frame: &[u8]) -> Option<&Arc<Flow>> {
        if !self.holds_any() || crate::decode::noise_reason(frame).is_some() {
            return None;
        }
        let context = crate::decode::DecodeContext {
            current_year: chrono::Datelike::year(&chrono::Local::now()),
        };
        let decoded = crate::decode::decode_scan(frame, &context);
        if decoded.error.is_some() {
            return None;
        }
        let codes = [decoded.gtin.as_deref().unwrap_or_default(), &decoded.code];
        let codes = if decoded.gtin.is_some() {
            &codes[..]
        } else {
            &codes[1..]
        };
        self.flow_for(codes).filter(|flow| flow.hold.is_some())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The contract's five-step flow, holding at `recommend`.
    pub(crate) fn five_steps() -> Flow {
        let step = |key: &str, label: &str, choose: &[&str], multi, auto| Step {
            key: key.into(),
            label: label.into(),
            choose: choose.iter().map(|value| value.to_string()).collect(),
            multi,
            auto,
        };
        Flow {
            id: "rx-5step".into(),
            name: "处方推荐五步法".into(),
            skus: vec![
                SkuPattern::Exact("6901234567892".into()),
                SkuPattern::Prefix("69012345".into()),
            ],
            steps: vec![
                step("consult", "客户问诊", &[], false, None),
                step(
                    "symptoms",
                    "症状记录",
                    &["高血压", "心悸", "失眠", "胸闷"],
                    true,
                    None,
                ),
                step("recommend", "药品推荐", &[], false, Some(Auto::Scan)),
                step(
                    "insurance",
                    "医保核验",
                    &["通过", "未通过", "自费"],
                    false,
                    Some(Auto::Sale),
                ),
                step("guidance", "用药指导", &[], false, None),
            ],
            skip_reasons: vec!["客户明确拒绝".into(), "复购老客".into(), "紧急情况".into()],
            hold: Some(2),
            hold_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(1800),
        }
    }

    #[test]
    fn a_flow_product_is_held_in_any_spelling_and_others_pass() {
        let flows = Flows::new(vec![five_steps()]);
        assert_eq!(flows.holding(b"6901234567892").unwrap().id, "rx-5step");
        // With an AIM symbology identifier, and as a GS1 element string (GTIN-14 with a zero).
        assert!(flows.holding(b"]E06901234567892").is_some());
        assert!(flows.holding(b"]d2010690123456789217271231").is_some());
        // The prefix pattern.
        assert!(flows.holding(b"6901234500005").is_some());
        assert!(flows.holding(b"4006381333931").is_none());
        assert!(flows.holding(b"\x00\x01garbage").is_none());
    }

    #[test]
    fn a_flow_without_hold_holds_nothing() {
        let mut flow = five_steps();
        flow.hold = None;
        let flows = Flows::new(vec![flow]);
        assert!(!flows.holds_any());
        assert!(flows.holding(b"6901234567892").is_none());
        assert!(flows.flow_for(&["6901234567892"]).is_some());
    }
}
