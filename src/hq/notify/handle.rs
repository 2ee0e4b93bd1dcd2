//! What the rest of HQ uses: so far the [`Notice`] a delivery carries.

use serde::{Deserialize, Serialize};

/// An alert to deliver, rendered once by the alert rules for every kind of target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Notice {
    /// Unique per alert; the delivery key is (alert_id, target id).
    pub alert_id: String,
    /// Short, e.g. "【预警】WZ-LC-001 医保核验通过率连续2天低于65%".
    pub title: String,
    /// The body in markdown (lists of days and cases, a link): WeCom, DingTalk and Feishu.
    pub markdown: String,
    /// The same as plain text, for kinds without markdown (none of today's four; stored so
    /// one can be added without changing the outbox format).
    pub text: String,
    /// The alert as JSON, posted as is to `webhook` targets.
    pub alert: serde_json::Value,
}
