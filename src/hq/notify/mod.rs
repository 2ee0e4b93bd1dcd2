//! PLACEHOLDER on h/alerts: the notifier's API as briefed (h/notify implements it).
#![allow(dead_code)]
pub(crate) struct Notice {
    pub alert_id: String,
    pub title: String,
    pub markdown: String,
    pub text: String,
    pub alert: serde_json::Value,
}
pub(crate) struct Delivered {
    pub alert_id: String,
    pub target: String,
    pub delivered_at: String,
}
#[derive(Clone)]
pub(crate) struct NotifierHandle;
impl NotifierHandle {
    pub(crate) async fn enqueue(&self, _notice: Notice, _targets: &[String]) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) fn spawn_placeholder(
    _delivered: tokio::sync::mpsc::Sender<Delivered>,
) -> (NotifierHandle, tokio::task::JoinHandle<()>) {
    (NotifierHandle, tokio::spawn(async {}))
}
