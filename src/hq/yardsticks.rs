//! PLACEHOLDER on h/alerts (h/daily implements it).
#![allow(dead_code)]
pub(crate) struct AlertFact {
    pub store: String,
    pub region: Option<String>,
    pub opened_at: chrono::DateTime<chrono::Utc>,
    pub acknowledged_at: Option<chrono::DateTime<chrono::Utc>>,
    pub acknowledged_by: Option<String>,
}
