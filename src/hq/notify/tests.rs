//! The notifier against real HTTP receivers on loopback, each checking what its vendor
//! checks (message format, DingTalk's and Feishu's signatures with their published
//! algorithms, computed here independently), and a real sled database reopened across
//! restarts. Tests wait on signals (the receivers' request counts, the `Delivered` channel),
//! with a generous time limit only so a failure ends the test.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::*;
use crate::hq::metrics::HqMetrics;

/// Longest wait for anything; only reached when a test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// How a receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Check format and signature like the vendor, answer accordingly.
    Check,
    /// This HTTP status, no vendor body.
    Status(u16),
    /// 200 with the vendor's rate-limit code.
    RateLimited,
    /// 200 with an error code whose message echoes the request's query and the secret.
    Echo,
    /// Wait until released, then check.
    Hang,
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Seen {
    /// The query string as sent.
    query: String,
    /// The JSON body.
    body: Value,
    /// Whether it was answered as a success.
    success: bool,
}

/// A receiver's state, shared with its handler.
struct ReceiverState {
    /// Which vendor it plays.
    kind: NotifyKind,
    /// The secret it checks signatures with.
    secret: Option<String>,
    /// Answers for the next requests, then `default`.
    plan: Mutex<VecDeque<Answer>>,
    /// The answer once the plan is used up.
    default: Answer,
    /// Every request, in arrival order.
    seen: Mutex<Vec<Seen>>,
    /// Requests arrived so far (bumped on arrival).
    arrived: watch::Sender<usize>,
    /// Requests answered as a success.
    successes: AtomicUsize,
    /// Releases `Hang` answers.
    release: Notify,
}

/// A local robot.
struct Receiver {
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// Shared with the handler.
    state: Arc<ReceiverState>,
    /// The server task.
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts a receiver playing `kind`.
    async fn start(
        kind: NotifyKind,
        secret: Option<&str>,
        plan: &[Answer],
        default: Answer,
    ) -> Self {
        let state = Arc::new(ReceiverState {
            kind,
            secret: secret.map(str::to_string),
            plan: Mutex::new(plan.iter().copied().collect()),
            default,
            seen: Mutex::new(Vec::new()),
            arrived: watch::Sender::new(0),
            successes: AtomicUsize::new(0),
            release: Notify::new(),
        });
        let router = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { base, state, task }
    }

    /// A target posting to this receiver at `path`, signing with `secret`.
    fn target(&self, id: &str, path: &str, secret: Option<&str>) -> NotifySettings {
        NotifySettings {
            id: id.to_string(),
            kind: self.state.kind,
            url: format!("{}{path}", self.base),
            secret: secret.map(str::to_string),
        }
    }

    /// Waits until at least `count` requests arrived.
    async fn wait_arrived(&self, count: usize) {
        let mut arrived = self.state.arrived.subscribe();
        tokio::time::timeout(LIMIT, arrived.wait_for(|arrived| *arrived >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} requests did not arrive"))
            .expect("receiver alive");
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    fn successes(&self) -> usize {
        self.state.successes.load(Ordering::SeqCst)
    }
}

/// The receivers' one handler: any path, any method.
async fn receive(
    State(state): State<Arc<ReceiverState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.arrived.send_modify(|arrived| *arrived += 1);
    let query = query.unwrap_or_default();
    let answer = state
        .plan
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or(state.default);
    let json_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not json").into_response();
    };
    if answer == Answer::Hang {
        state.release.notified().await;
    }
    let (status, answer_body, success) = match answer {
        Answer::Check | Answer::Hang => {
            let (answer_body, success) = check(&state, &query, &body);
            let success = success && json_type;
            (200, answer_body, success)
        }
        Answer::Status(status) => (status, json!({}), false),
        Answer::RateLimited => (
            200,
            vendor_error(state.kind, 45009, "api freq out of limit"),
            false,
        ),
        Answer::Echo => {
            let message = format!(
                "invalid request {query} secret {}",
                state.secret.as_deref().unwrap_or("")
            );
            (200, vendor_error(state.kind, 93000, &message), false)
        }
    };
    if success {
        state.successes.fetch_add(1, Ordering::SeqCst);
    }
    state.seen.lock().expect("lock").push(Seen {
        query,
        body,
        success,
    });
    let status = StatusCode::from_u16(status).expect("status");
    (status, axum::Json(answer_body)).into_response()
}

/// A vendor's error answer.
fn vendor_error(kind: NotifyKind, code: i64, message: &str) -> Value {
    match kind {
        NotifyKind::Feishu => json!({"code": code, "msg": message, "data": {}}),
        _ => json!({"errcode": code, "errmsg": message}),
    }
}

/// What the vendor would answer to this request, and whether that is a success.
fn check(state: &ReceiverState, query: &str, body: &Value) -> (Value, bool) {
    let now = chrono::Utc::now();
    match state.kind {
        NotifyKind::Wecom => {
            let content = body["markdown"]["content"].as_str().unwrap_or("");
            if body["msgtype"] != "markdown" || content.is_empty() || content.len() > 4096 {
                return (
                    json!({"errcode": 40008, "errmsg": "invalid message type"}),
                    false,
                );
            }
            (json!({"errcode": 0, "errmsg": "ok"}), true)
        }
        NotifyKind::Dingtalk => {
            if let Some(secret) = &state.secret {
                let parameter = |name: &str| {
                    query.split('&').find_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        (key == name).then(|| {
                            percent_encoding::percent_decode_str(value)
                                .decode_utf8_lossy()
                                .to_string()
                        })
                    })
                };
                let timestamp = parameter("timestamp").unwrap_or_default();
                let sign = parameter("sign").unwrap_or_default();
                // DingTalk's published algorithm: HmacSHA256 keyed by the secret over
                // "timestamp\nsecret", base64, then URL-encoded in the query.
                let expected = STANDARD.encode(hmac(
                    secret.as_bytes(),
                    format!("{timestamp}\n{secret}").as_bytes(),
                ));
                let fresh = timestamp
                    .parse::<i64>()
                    .is_ok_and(|ms| (now.timestamp_millis() - ms).abs() < 3_600_000);
                if sign != expected || !fresh {
                    return (
                        json!({"errcode": 310000, "errmsg": "sign not match"}),
                        false,
                    );
                }
            }
            let title = body["markdown"]["title"].as_str().unwrap_or("");
            let text = body["markdown"]["text"].as_str().unwrap_or("");
            if body["msgtype"] != "markdown" || title.is_empty() || text.is_empty() {
                return (
                    json!({"errcode": 40035, "errmsg": "缺少参数 markdown"}),
                    false,
                );
            }
            (json!({"errcode": 0, "errmsg": "ok"}), true)
        }
        NotifyKind::Feishu => {
            if let Some(secret) = &state.secret {
                let timestamp = body["timestamp"].as_str().unwrap_or("");
                let sign = body["sign"].as_str().unwrap_or("");
                // Feishu's published algorithm: HmacSHA256 keyed by "timestamp\nsecret" over
                // an empty message, base64.
                let expected =
                    STANDARD.encode(hmac(format!("{timestamp}\n{secret}").as_bytes(), b""));
                let fresh = timestamp
                    .parse::<i64>()
                    .is_ok_and(|s| (now.timestamp() - s).abs() < 3600);
                if sign != expected || !fresh {
                    return (
                        json!({"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time", "data": {}}),
                        false,
                    );
                }
            }
            let card = &body["card"];
            if body["msg_type"] != "interactive"
                || card["header"]["title"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()
                || card["elements"][0]["tag"] != "markdown"
            {
                return (
                    json!({"code": 11246, "msg": "card content is invalid", "data": {}}),
                    false,
                );
            }
            (
                json!({"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"}),
                true,
            )
        }
        NotifyKind::Webhook => (json!({}), true),
    }
}

/// HMAC-SHA256, straight from the `hmac` crate.
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// A listener that accepts connections and closes them at once, counting them: a robot
/// that is down, with a signal for each attempt.
struct Slammer {
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// Connections accepted so far.
    accepted: watch::Receiver<usize>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl Drop for Slammer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Slammer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (count, accepted) = watch::channel(0);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
                count.send_modify(|count| *count += 1);
            }
        });
        Slammer {
            base,
            accepted,
            task,
        }
    }

    fn target(&self, id: &str, kind: NotifyKind, path: &str) -> NotifySettings {
        NotifySettings {
            id: id.to_string(),
            kind,
            url: format!("{}{path}", self.base),
            secret: None,
        }
    }

    async fn wait_accepted(&mut self, count: usize) {
        tokio::time::timeout(LIMIT, self.accepted.wait_for(|accepted| *accepted >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} connections did not arrive"))
            .expect("slammer alive");
    }
}

/// A running notifier on a sled database in a folder.
struct Running {
    db: sled::Db,
    handle: NotifierHandle,
    task: JoinHandle<()>,
    delivered: mpsc::Receiver<Delivered>,
    metrics: HqMetrics,
}

/// Opens HQ's kind of sled database (no timed flushes: only explicit ones make data durable).
fn open_db(dir: &Path) -> sled::Db {
    sled::Config::new()
        .path(dir.join("hq"))
        .flush_every_ms(None)
        .open()
        .expect("open sled")
}

/// Retries within milliseconds.
fn fast() -> NotifyOptions {
    NotifyOptions {
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        ..NotifyOptions::default()
    }
}

/// Starts a notifier on `dir`'s database.
fn start(dir: &Path, targets: Vec<NotifySettings>, options: NotifyOptions) -> Running {
    let db = open_db(dir);
    let metrics = HqMetrics::new();
    let (tx, delivered) = mpsc::channel(16);
    let (handle, task) = spawn(
        &crate::hq::manage::ManageDb::local(db.clone()),
        targets,
        options,
        metrics.clone(),
        tx,
    )
    .expect("spawn");
    Running {
        db,
        handle,
        task,
        delivered,
        metrics,
    }
}

impl Running {
    /// Stops as at shutdown: the last handle dropped, the task ends, the database closes.
    async fn stop(self) {
        drop(self.handle);
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("the notifier stops")
            .expect("no panic");
        drop(self.db);
    }

    /// Stops as a `kill -9` would (as far as the notifier is concerned): the task is cut off
    /// wherever it is and nothing more is written.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.handle);
        drop(self.db);
    }

    /// The next delivery report.
    async fn next_delivered(&mut self) -> Delivered {
        tokio::time::timeout(LIMIT, self.delivered.recv())
            .await
            .expect("a delivery report in time")
            .expect("the notifier is running")
    }

    /// Reports until `alert_id`'s, which is returned; the others before it are returned too.
    async fn delivered_until(&mut self, alert_id: &str) -> (Delivered, Vec<Delivered>) {
        let mut before = Vec::new();
        loop {
            let delivered = self.next_delivered().await;
            if delivered.alert_id == alert_id {
                return (delivered, before);
            }
            before.push(delivered);
        }
    }

    async fn status(&self, alert_id: &str) -> Vec<DeliveryStatus> {
        self.handle.status(alert_id).await.expect("status")
    }

    /// The value of one metrics line, by its start.
    fn metric(&self, line_start: &str) -> Option<String> {
        self.metrics
            .render()
            .lines()
            .find(|line| line.starts_with(line_start))
            .and_then(|line| line.rsplit(' ').next().map(str::to_string))
    }
}

/// An alert's notice.
fn notice(alert_id: &str) -> Notice {
    Notice {
        alert_id: alert_id.to_string(),
        title: format!("【预警】WZ-LC-001 医保核验通过率连续2天低于65% ({alert_id})"),
        markdown: "**医保核验通过率**\n- 11-26: 60%\n- 11-27: 58%\n[详情](https://hq.example/a)"
            .into(),
        text: "医保核验通过率 11-26: 60%, 11-27: 58%".into(),
        alert: json!({"id": alert_id, "store": "WZ-LC-001", "rule": "insurance-pass-rate"}),
    }
}

fn ids(targets: &[&str]) -> Vec<String> {
    targets.iter().map(|id| id.to_string()).collect()
}

#[tokio::test]
async fn every_kind_gets_its_format_and_a_valid_signature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wecom = Receiver::start(NotifyKind::Wecom, None, &[], Answer::Check).await;
    let ding = Receiver::start(NotifyKind::Dingtalk, Some("SECding"), &[], Answer::Check).await;
    let feishu = Receiver::start(
        NotifyKind::Feishu,
        Some("feishu-secret"),
        &[],
        Answer::Check,
    )
    .await;
    let hook = Receiver::start(NotifyKind::Webhook, None, &[], Answer::Check).await;
    let targets = vec![
        wecom.target("wecom", "/cgi-bin/webhook/send?key=wecom-key-1234", None),
        ding.target(
            "ding",
            "/robot/send?access_token=ding-token-1234",
            Some("SECding"),
        ),
        feishu.target(
            "feishu",
            "/open-apis/bot/v2/hook/feishu-hook-1234",
            Some("feishu-secret"),
        ),
        hook.target("hook", "/posgw/alerts", None),
    ];
    let mut running = start(dir.path(), targets, fast());
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["wecom", "ding", "feishu", "hook"]))
        .await
        .expect("enqueue");
    let mut reported = Vec::new();
    for _ in 0..4 {
        let delivered = running.next_delivered().await;
        assert_eq!(delivered.alert_id, "a-1");
        reported.push(delivered.target);
    }
    reported.sort();
    assert_eq!(reported, ["ding", "feishu", "hook", "wecom"]);

    let expected = notice("a-1");
    let seen = wecom.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].success);
    assert_eq!(seen[0].query, "key=wecom-key-1234");
    assert_eq!(
        seen[0].body["markdown"]["content"],
        format!("{}\n{}", expected.title, expected.markdown)
    );
    let seen = ding.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].success, "{:?}", seen[0]);
    assert!(seen[0]
        .query
        .starts_with("access_token=ding-token-1234&timestamp="));
    assert_eq!(seen[0].body["markdown"]["title"], expected.title);
    let seen = feishu.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].success, "{:?}", seen[0]);
    assert_eq!(
        seen[0].body["card"]["elements"][0]["content"],
        expected.markdown
    );
    let seen = hook.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, expected.alert);

    let statuses = running.status("a-1").await;
    assert_eq!(statuses.len(), 4);
    for status in &statuses {
        assert_eq!(status.state, DeliveryState::Delivered, "{status:?}");
        assert_eq!(status.attempts, 1);
        assert!(status.delivered_at.is_some());
    }
    assert_eq!(
        running.metric("posgw_hq_notify_deliveries_total{target=\"ding\",result=\"delivered\"}"),
        Some("1".into())
    );
    assert_eq!(running.metric("posgw_hq_notify_pending "), Some("0".into()));
    running.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_fails_is_retried_and_a_reload_fixes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ding = Receiver::start(NotifyKind::Dingtalk, Some("SECright"), &[], Answer::Check).await;
    let feishu = Receiver::start(NotifyKind::Feishu, Some("right"), &[], Answer::Check).await;
    let wrong = vec![
        ding.target(
            "ding",
            "/robot/send?access_token=t1234567",
            Some("SECwrong"),
        ),
        feishu.target("feishu", "/open-apis/bot/v2/hook/h1234567", Some("wrong")),
    ];
    let mut running = start(dir.path(), wrong, fast());
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["ding", "feishu"]))
        .await
        .expect("enqueue");
    // A third request to each means the first two failures were recorded and retried.
    ding.wait_arrived(3).await;
    feishu.wait_arrived(3).await;
    assert_eq!(ding.successes(), 0);
    assert_eq!(feishu.successes(), 0);
    let statuses = running.status("a-1").await;
    let errors: Vec<(&str, DeliveryState, &str)> = statuses
        .iter()
        .map(|status| {
            (
                status.target.as_str(),
                status.state,
                status.last_error.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(errors[0].0, "ding");
    assert_eq!(errors[0].1, DeliveryState::Pending);
    assert_eq!(errors[0].2, "HTTP 200, code 310000: sign not match");
    assert_eq!(errors[1].0, "feishu");
    assert!(
        errors[1]
            .2
            .starts_with("HTTP 200, code 19021: sign match fail"),
        "{}",
        errors[1].2
    );
    assert!(statuses.iter().all(|status| status.attempts >= 2));

    running
        .handle
        .reload(vec![
            ding.target(
                "ding",
                "/robot/send?access_token=t1234567",
                Some("SECright"),
            ),
            feishu.target("feishu", "/open-apis/bot/v2/hook/h1234567", Some("right")),
        ])
        .await
        .expect("reload");
    let mut reported = vec![
        running.next_delivered().await.target,
        running.next_delivered().await.target,
    ];
    reported.sort();
    assert_eq!(reported, ["ding", "feishu"]);
    assert_eq!(ding.successes(), 1);
    assert_eq!(feishu.successes(), 1);
    running.stop().await;
}

#[tokio::test]
async fn retried_through_errors_until_success_and_never_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wecom = Receiver::start(
        NotifyKind::Wecom,
        None,
        &[
            Answer::Status(500),
            Answer::Status(502),
            Answer::RateLimited,
        ],
        Answer::Check,
    )
    .await;
    let targets = vec![wecom.target("wecom", "/send?key=k1234567", None)];
    let mut running = start(dir.path(), targets.clone(), fast());
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["wecom"]))
        .await
        .expect("enqueue");
    let delivered = running.next_delivered().await;
    assert_eq!(
        (delivered.alert_id.as_str(), delivered.target.as_str()),
        ("a-1", "wecom")
    );
    assert_eq!(wecom.seen().len(), 4);
    assert_eq!(wecom.successes(), 1);
    let status = running.status("a-1").await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, DeliveryState::Delivered);
    assert_eq!(status[0].attempts, 4);
    assert_eq!(
        status[0].last_error.as_deref(),
        Some("HTTP 200, code 45009: api freq out of limit")
    );
    assert_eq!(status[0].delivered_at, Some(delivered.delivered_at));
    assert_eq!(
        running.metric("posgw_hq_notify_deliveries_total{target=\"wecom\",result=\"failed\"}"),
        Some("3".into())
    );
    running.stop().await;

    // Restarted on the same database: the delivery is reported again (the receiver of
    // reports treats that as a no-op), and nothing is sent again.
    let mut running = start(dir.path(), targets, fast());
    assert_eq!(running.next_delivered().await, delivered);
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["wecom"]))
        .await
        .expect("enqueue again");
    // A later alert to the same target: a resend of a-1 would have been due before it and
    // one target gets one attempt at a time, so once it is delivered a resend would show.
    running
        .handle
        .enqueue(notice("fence"), &ids(&["wecom"]))
        .await
        .expect("enqueue fence");
    let (_, before) = running.delivered_until("fence").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(wecom.successes(), 2);
    assert_eq!(wecom.seen().len(), 5);
    running.stop().await;
}

#[tokio::test]
async fn an_accepted_enqueue_survives_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut down = Slammer::start().await;
    let running = start(
        dir.path(),
        vec![down.target("ops", NotifyKind::Webhook, "/alerts")],
        fast(),
    );
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["ops"]))
        .await
        .expect("enqueue");
    down.wait_accepted(1).await;
    running.kill().await;

    // Same target id, now reachable (as if the robot came back, or its URL was fixed).
    let hook = Receiver::start(NotifyKind::Webhook, None, &[], Answer::Check).await;
    let mut running = start(
        dir.path(),
        vec![hook.target("ops", "/alerts", None)],
        fast(),
    );
    let delivered = running.next_delivered().await;
    assert_eq!(
        (delivered.alert_id.as_str(), delivered.target.as_str()),
        ("a-1", "ops")
    );
    assert_eq!(hook.successes(), 1);
    assert_eq!(hook.seen()[0].body, notice("a-1").alert);
    let status = running.status("a-1").await;
    // The attempt before the kill may or may not be counted: failed attempts are not flushed.
    assert!(status[0].attempts >= 1, "{status:?}");
    running.stop().await;
}

#[tokio::test]
async fn the_same_alert_enqueued_twice_is_delivered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wecom = Receiver::start(NotifyKind::Wecom, None, &[], Answer::Check).await;
    let mut running = start(
        dir.path(),
        vec![wecom.target("wecom", "/send?key=k1234567", None)],
        fast(),
    );
    let twice = ids(&["wecom", "wecom"]);
    running
        .handle
        .enqueue(notice("a-1"), &twice)
        .await
        .expect("first");
    running
        .handle
        .enqueue(notice("a-1"), &twice)
        .await
        .expect("second");
    running.next_delivered().await;
    running
        .handle
        .enqueue(notice("a-1"), &twice)
        .await
        .expect("after delivery");
    running
        .handle
        .enqueue(notice("fence"), &ids(&["wecom"]))
        .await
        .expect("fence");
    let (_, before) = running.delivered_until("fence").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(wecom.successes(), 2);
    assert_eq!(wecom.seen().len(), 2);
    assert_eq!(running.status("a-1").await.len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_full_outbox_refuses_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut down = Slammer::start().await;
    let options = NotifyOptions {
        max_pending: 3,
        retry_initial: Duration::from_secs(3600),
        retry_max: Duration::from_secs(3600),
        ..fast()
    };
    let running = start(
        dir.path(),
        vec![
            down.target("a", NotifyKind::Webhook, "/a"),
            down.target("b", NotifyKind::Webhook, "/b"),
        ],
        options,
    );
    for alert in ["a-1", "a-2"] {
        running
            .handle
            .enqueue(notice(alert), &ids(&["a"]))
            .await
            .expect("room");
    }
    // Two new entries, one place left: refused whole.
    let error = running
        .handle
        .enqueue(notice("a-3"), &ids(&["a", "b"]))
        .await
        .expect_err("full");
    assert_eq!(
        error,
        NotifyError::OutboxFull {
            limit: 3,
            alert_id: "a-3".into()
        }
    );
    assert!(
        error
            .to_string()
            .contains("outbox is full (3 undelivered entries)"),
        "{error}"
    );
    assert_eq!(
        running.metric("posgw_hq_notify_refused_total"),
        Some("2".into())
    );
    assert!(running.status("a-3").await.is_empty());
    running
        .handle
        .enqueue(notice("a-3"), &ids(&["b"]))
        .await
        .expect("one fits");
    // Existing entries take no room.
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["a"]))
        .await
        .expect("already queued");
    let error = running
        .handle
        .enqueue(notice("a-4"), &ids(&["a"]))
        .await
        .expect_err("full");
    assert!(matches!(error, NotifyError::OutboxFull { .. }));
    assert_eq!(
        running.metric("posgw_hq_notify_refused_total"),
        Some("3".into())
    );
    assert_eq!(running.metric("posgw_hq_notify_pending "), Some("3".into()));
    down.wait_accepted(3).await;
    running.stop().await;
}

#[tokio::test]
async fn unknown_targets_and_bad_notices_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Receiver::start(NotifyKind::Webhook, None, &[], Answer::Check).await;
    let running = start(dir.path(), vec![hook.target("ops", "/", None)], fast());
    let error = running
        .handle
        .enqueue(notice("a-1"), &ids(&["ops", "east-wz", "north"]))
        .await
        .expect_err("unknown");
    assert_eq!(
        error.to_string(),
        "unknown notify target(s): east-wz, north; nothing was queued"
    );
    assert!(running.status("a-1").await.is_empty());
    let error = running
        .handle
        .enqueue(notice(""), &ids(&["ops"]))
        .await
        .expect_err("empty id");
    assert_eq!(error, NotifyError::BadAlertId(0));
    let mut huge = notice("a-2");
    huge.markdown = "x".repeat(300 * 1024);
    assert!(matches!(
        running.handle.enqueue(huge, &ids(&["ops"])).await,
        Err(NotifyError::TooLarge { .. })
    ));
    running
        .handle
        .enqueue(notice("a-3"), &[])
        .await
        .expect("no targets, nothing to do");
    running.stop().await;
}

#[tokio::test]
async fn a_slow_target_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = Receiver::start(NotifyKind::Wecom, None, &[Answer::Hang], Answer::Check).await;
    let fast_robot = Receiver::start(NotifyKind::Wecom, None, &[], Answer::Check).await;
    let mut running = start(
        dir.path(),
        vec![
            slow.target("slow", "/send?key=k1234567", None),
            fast_robot.target("fast", "/send?key=k7654321", None),
        ],
        fast(),
    );
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["slow", "fast"]))
        .await
        .expect("enqueue");
    running
        .handle
        .enqueue(notice("a-2"), &ids(&["slow", "fast"]))
        .await
        .expect("enqueue");
    slow.wait_arrived(1).await;
    let first = running.next_delivered().await;
    let second = running.next_delivered().await;
    assert_eq!(
        (first.target.as_str(), second.target.as_str()),
        ("fast", "fast")
    );
    // The slow robot holds one attempt; its second alert waits behind it, not beside it.
    assert_eq!(slow.seen().len(), 0);
    assert_eq!(*slow.state.arrived.borrow(), 1);
    slow.state.release.notify_waiters();
    let mut rest = [
        running.next_delivered().await,
        running.next_delivered().await,
    ];
    rest.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    assert_eq!(rest[0].target, "slow");
    assert_eq!(
        (rest[0].alert_id.as_str(), rest[1].alert_id.as_str()),
        ("a-1", "a-2")
    );
    running.stop().await;
}

#[tokio::test]
async fn a_removed_target_abandons_its_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = Receiver::start(NotifyKind::Webhook, None, &[Answer::Hang], Answer::Check).await;
    let down = Slammer::start().await;
    let options = NotifyOptions {
        max_in_flight: 1,
        ..fast()
    };
    let mut running = start(
        dir.path(),
        vec![
            slow.target("slow", "/", None),
            down.target("gone", NotifyKind::Webhook, "/"),
        ],
        options,
    );
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["slow"]))
        .await
        .expect("enqueue");
    slow.wait_arrived(1).await;
    // The one attempt slot is taken: "gone" waits, untried.
    running
        .handle
        .enqueue(notice("a-2"), &ids(&["gone"]))
        .await
        .expect("enqueue");
    assert_eq!(running.metric("posgw_hq_notify_pending "), Some("2".into()));
    running
        .handle
        .reload(vec![slow.target("slow", "/", None)])
        .await
        .expect("reload");
    let status = running.status("a-2").await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, DeliveryState::Abandoned);
    assert_eq!(status[0].attempts, 0);
    assert_eq!(
        running.metric("posgw_hq_notify_deliveries_total{target=\"gone\",result=\"abandoned\"}"),
        Some("1".into())
    );
    assert_eq!(running.metric("posgw_hq_notify_pending "), Some("1".into()));
    // Abandoned is final: enqueueing it again changes nothing, even with the target back.
    running
        .handle
        .reload(vec![
            slow.target("slow", "/", None),
            down.target("gone", NotifyKind::Webhook, "/"),
        ])
        .await
        .expect("reload");
    running
        .handle
        .enqueue(notice("a-2"), &ids(&["gone"]))
        .await
        .expect("no-op");
    assert_eq!(
        running.status("a-2").await[0].state,
        DeliveryState::Abandoned
    );
    slow.state.release.notify_waiters();
    assert_eq!(running.next_delivered().await.alert_id, "a-1");
    assert_eq!(*down.accepted.borrow(), 0);
    running.stop().await;

    // A restart without a target abandons its pending entries too.
    let mut down = down;
    let running = start(
        dir.path(),
        vec![down.target("gone", NotifyKind::Webhook, "/")],
        NotifyOptions {
            retry_initial: Duration::from_secs(3600),
            ..fast()
        },
    );
    running
        .handle
        .enqueue(notice("a-3"), &ids(&["gone"]))
        .await
        .expect("enqueue");
    down.wait_accepted(1).await;
    running.stop().await;
    let running = start(dir.path(), Vec::new(), fast());
    assert_eq!(
        running.status("a-3").await[0].state,
        DeliveryState::Abandoned
    );
    running.stop().await;
}

#[tokio::test]
async fn finished_entries_are_pruned_after_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Receiver::start(NotifyKind::Webhook, None, &[], Answer::Check).await;
    let targets = vec![hook.target("ops", "/", None)];
    let mut running = start(dir.path(), targets.clone(), fast());
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["ops"]))
        .await
        .expect("enqueue");
    running.next_delivered().await;
    running.stop().await;
    let mut running = start(
        dir.path(),
        targets,
        NotifyOptions {
            retention: Duration::ZERO,
            ..fast()
        },
    );
    assert!(running.status("a-1").await.is_empty());
    running
        .handle
        .enqueue(notice("fence"), &ids(&["ops"]))
        .await
        .expect("enqueue");
    // No report of a-1 comes first: it was removed before reports were lined up.
    let (_, before) = running.delivered_until("fence").await;
    assert!(before.is_empty(), "{before:?}");
    running.stop().await;
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn urls_and_secrets_never_show() {
    // The test runtime runs every task on this thread, so this subscriber sees the
    // notifier's logs.
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "SECtopsecretsigningkey";
    let token = "access-token-0123456789";
    let hook_id = "0b1c2d3e-hook-4f50-9e7a";
    // A robot that echoes the query and the secret in its error message, then accepts.
    let echo = Receiver::start(
        NotifyKind::Dingtalk,
        Some(secret),
        &[Answer::Echo],
        Answer::Check,
    )
    .await;
    let mut down = Slammer::start().await;
    let echo_target = echo.target(
        "ding",
        &format!("/robot/send?access_token={token}"),
        Some(secret),
    );
    let down_target = NotifySettings {
        id: "feishu".into(),
        kind: NotifyKind::Feishu,
        url: format!("{}/open-apis/bot/v2/hook/{hook_id}", down.base),
        secret: Some(secret.into()),
    };
    let mut running = start(
        dir.path(),
        vec![echo_target.clone(), down_target.clone()],
        fast(),
    );
    running
        .handle
        .enqueue(notice("a-1"), &ids(&["ding", "feishu"]))
        .await
        .expect("enqueue");
    let delivered = running.next_delivered().await;
    assert_eq!(delivered.target, "ding");
    down.wait_accepted(3).await;
    let statuses = running.status("a-1").await;
    let ding = &statuses[0];
    assert!(
        ding.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("HTTP 200, code 93000: invalid request"),
        "{ding:?}"
    );
    let feishu = &statuses[1];
    assert_eq!(feishu.state, DeliveryState::Pending);
    assert!(feishu.last_error.is_some(), "{feishu:?}");
    let errors = [running
        .handle
        .enqueue(notice("a-2"), &ids(&["nowhere"]))
        .await
        .expect_err("unknown")
        .to_string()];
    running.stop().await;

    let mut texts = vec![
        format!("{statuses:?}"),
        serde_json::to_string(&statuses).expect("json"),
        format!("{echo_target:?} {down_target:?}"),
        String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8"),
    ];
    texts.extend(errors);
    for text in &texts {
        for needle in [
            echo_target.url.as_str(),
            down_target.url.as_str(),
            secret,
            token,
            hook_id,
            &down.base,
            &echo.base,
        ] {
            assert!(!text.contains(needle), "{needle:?} shows in {text}");
        }
    }
    let logs = &texts[3];
    assert!(logs.contains("notify: delivery failed"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
}
