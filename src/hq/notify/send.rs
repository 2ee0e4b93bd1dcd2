//! One delivery attempt over HTTP: post the vendor's message, read a bounded answer, judge it.
//!
//! A failure comes back as a short reason for logs, `status()` and the outbox. Reasons never
//! hold the URL or the secret: `reqwest` errors are taken `without_url()`, and every reason is
//! scrubbed of the URL, its query values and path segments and the secret before it leaves.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use reqwest::header::{HeaderValue, CONTENT_TYPE};

use super::handle::Notice;
use super::settings::NotifySettings;
use super::vendor;

/// Most bytes of an answer read; robots answer with a few dozen.
pub(crate) const ANSWER_MAX: usize = 64 * 1024;
/// Time to set up a connection, within the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most characters of a failure's reason kept.
const REASON_MAX: usize = 300;
/// What a scrubbed secret reads as.
const REDACTED: &str = "<redacted>";
/// Parts of a URL shorter than this are not scrubbed on their own (`send`, `hook`, `v2`):
/// they name no secret and scrubbing them would garble reasons.
const SCRUB_MIN: usize = 8;

/// Posts messages; cheap to clone (the client is shared).
#[derive(Clone)]
pub(crate) struct Sender {
    /// The HTTP client (rustls, no redirects, bounded time).
    client: reqwest::Client,
}

impl Sender {
    /// A sender whose every request ends within `timeout`.
    pub(crate) fn new(timeout: Duration) -> anyhow::Result<Sender> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            // A redirect would repost the alert somewhere the configuration does not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("posgw-hq/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot create the HTTP client for notifications")?;
        Ok(Sender { client })
    }

    /// Delivers `notice` to `target` once: `Ok` when the target answered success.
    pub(crate) async fn attempt(
        &self,
        target: Arc<NotifySettings>,
        notice: Arc<Notice>,
    ) -> Result<(), String> {
        let message = vendor::message(&target, &notice, Utc::now());
        self.post(target.kind, message)
            .await
            .map_err(|reason| scrub(&reason, &target))
    }

    /// The request and the reading of its answer.
    async fn post(
        &self,
        kind: super::settings::NotifyKind,
        message: vendor::Message,
    ) -> Result<(), String> {
        let mut response = self
            .client
            .post(&message.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(message.body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut complete = true;
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > ANSWER_MAX {
                complete = false;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        vendor::judge(kind, status, complete.then_some(&body[..]))
    }
}

/// A request error and its causes, without the URL.
fn describe(error: reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut reason = format!("{what}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// `reason` without the target's URL, the URL's longer parts, or the secret; shortened.
pub(crate) fn scrub(reason: &str, target: &NotifySettings) -> String {
    let mut secrets: Vec<&str> = vec![target.url.as_str()];
    if let Some(secret) = &target.secret {
        secrets.push(secret);
    }
    let (before_query, query) = target
        .url
        .split_once('?')
        .unwrap_or((target.url.as_str(), ""));
    secrets.push(before_query);
    secrets.extend(
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(_, value)| value),
    );
    let path = before_query
        .split_once("://")
        .map_or(before_query, |(_, rest)| rest);
    secrets.extend(path.split('/').skip(1));
    // Longest first, so a part never breaks a longer match.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut text = reason.to_string();
    for secret in secrets {
        let worth = secret.len() >= SCRUB_MIN || Some(secret) == target.secret.as_deref();
        if worth && !secret.is_empty() {
            text = text.replace(secret, REDACTED);
        }
    }
    if text.chars().count() > REASON_MAX {
        text = text.chars().take(REASON_MAX).collect::<String>() + "…";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hq::notify::settings::NotifyKind;

    #[test]
    fn scrub_removes_url_parts_and_secret() {
        let target = NotifySettings {
            id: "t".into(),
            kind: NotifyKind::Dingtalk,
            url: "https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef".into(),
            secret: Some("SECsecret".into()),
        };
        let reason = "errcode 300001: token 0123456789abcdef is not exist for \
                      https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef, \
                      secret SECsecret";
        let scrubbed = scrub(reason, &target);
        for part in ["0123456789abcdef", "SECsecret", "oapi.dingtalk.com/robot"] {
            assert!(!scrubbed.contains(part), "{scrubbed}");
        }
        assert!(
            scrubbed.starts_with("errcode 300001: token <redacted>"),
            "{scrubbed}"
        );
        let feishu = NotifySettings {
            id: "f".into(),
            kind: NotifyKind::Feishu,
            url:
                "https://open.feishu.cn/open-apis/bot/v2/hook/3f6b2a6e-1234-4c1d-9e7a-0b1c2d3e4f50"
                    .into(),
            secret: None,
        };
        let scrubbed = scrub(
            "bad hook 3f6b2a6e-1234-4c1d-9e7a-0b1c2d3e4f50 here",
            &feishu,
        );
        assert_eq!(scrubbed, "bad hook <redacted> here");
        assert_eq!(
            scrub(&"x".repeat(400), &feishu).chars().count(),
            REASON_MAX + 1
        );
    }

    fn notice() -> Arc<Notice> {
        Arc::new(Notice {
            alert_id: "a-1".into(),
            title: "t".into(),
            markdown: "m".into(),
            text: "t".into(),
            alert: serde_json::json!({"id": "a-1"}),
        })
    }

    /// A local server answering every request with `answer`; its base URL.
    async fn serve(answer: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
        let router = axum::Router::new().fallback(move || {
            let answer = answer.clone();
            async move { answer }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (base, task)
    }

    fn target(kind: NotifyKind, url: String) -> Arc<NotifySettings> {
        Arc::new(NotifySettings {
            id: "t".into(),
            kind,
            url,
            secret: None,
        })
    }

    #[tokio::test]
    async fn answers_are_read_only_up_to_the_bound() {
        let sender = Sender::new(Duration::from_secs(5)).expect("client");
        let mut huge = br#"{"errcode":0,"errmsg":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', ANSWER_MAX));
        huge.extend(br#""}"#);
        let (base, server) = serve(huge).await;
        let url = format!("{base}/send?key=k0123456789");
        let reason = sender
            .attempt(target(NotifyKind::Wecom, url.clone()), notice())
            .await
            .expect_err("too large to judge");
        assert_eq!(
            reason,
            "HTTP 200 with an answer too large to be the wecom robot's"
        );
        // A webhook needs no body: any 2xx is a success, however long.
        sender
            .attempt(target(NotifyKind::Webhook, url), notice())
            .await
            .expect("delivered");
        server.abort();
    }

    #[tokio::test]
    async fn transport_errors_name_no_url() {
        let sender = Sender::new(Duration::from_secs(5)).expect("client");
        // A port nothing listens on any more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let url = format!("http://{address}/robot/send?access_token=t0123456789");
        let reason = sender
            .attempt(target(NotifyKind::Dingtalk, url), notice())
            .await
            .expect_err("nothing listens");
        assert!(reason.starts_with("cannot connect: "), "{reason}");
        assert!(!reason.contains("t0123456789"), "{reason}");
        assert!(!reason.contains("/robot/send"), "{reason}");
    }
}
