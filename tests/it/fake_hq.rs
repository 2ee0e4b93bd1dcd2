//! A scriptable HQ receiver for uplink tests: real HTTP on loopback, faults on demand.
//!
//! It speaks docs/hq-protocol.md (bearer token, NDJSON, gzip/zstd) and stores records by id.
//! Faults: a queue of answers to give before behaving (503, 429 with Retry-After, a dropped
//! connection, a slow answer), a record-count limit above which it answers 413, and a poison
//! marker: a batch containing a record whose text contains it gets a 400.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// One scripted misbehaviour, used up by one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RetryAfter(u64),
    /// Close the connection without an answer.
    Drop,
    /// Answer normally, after this long.
    Slow(Duration),
}

#[derive(Default)]
pub struct Inner {
    pub script: VecDeque<Fault>,
    /// Requests with more records than this get 413.
    pub max_records: Option<usize>,
    /// A batch containing a record with this text gets 400.
    pub poison: Option<String>,
    /// Every record stored, in arrival order, once per id.
    pub stored: Vec<Value>,
    pub ids: HashSet<String>,
    /// Records received again after they were stored.
    pub duplicates: u64,
    /// Status codes answered, in order.
    pub answers: Vec<u16>,
}

#[derive(Clone)]
pub struct FakeHq {
    pub inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
    pub token: String,
}

impl FakeHq {
    pub async fn start(token: &str) -> FakeHq {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hq = FakeHq {
            inner,
            addr,
            token: token.to_owned(),
        };
        let app = Router::new()
            .route("/v1/batches", post(batches))
            .with_state(hq.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        hq
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/batches", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn stored_count(&self) -> usize {
        self.lock().stored.len()
    }
}

async fn batches(State(hq): State<FakeHq>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = hq.lock().script.pop_front();
    match fault {
        Some(Fault::Status(code)) => return answer(&hq, code, "scripted failure"),
        Some(Fault::RetryAfter(secs)) => {
            hq.lock().answers.push(429);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "slow down",
            )
                .into_response();
        }
        Some(Fault::Drop) => {
            hq.lock().answers.push(0);
            // A panic in the handler makes hyper drop the connection without an answer.
            panic!("fake HQ drops this connection on purpose");
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let expected = format!("Bearer {}", hq.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return answer(&hq, 401, "unknown token");
    }
    let text = match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        None => String::from_utf8(body.to_vec()).ok(),
        Some("gzip") => {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut text)
                .ok()
                .map(|_| text)
        }
        Some("zstd") => zstd::stream::decode_all(&body[..])
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        Some(_) => return answer(&hq, 415, "unknown encoding"),
    };
    let Some(text) = text else {
        return answer(&hq, 400, "body does not decode");
    };
    let mut records = Vec::new();
    for line in text.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(record) if record["id"].is_string() => records.push(record),
            _ => return answer(&hq, 400, "malformed record"),
        }
    }
    let (max_records, poison) = {
        let inner = hq.lock();
        (inner.max_records, inner.poison.clone())
    };
    if max_records.is_some_and(|max| records.len() > max) {
        return answer(&hq, 413, "too many records");
    }
    if let Some(poison) = poison {
        if text.contains(&poison) {
            return answer(&hq, 400, "poison record");
        }
    }
    let mut inner = hq.lock();
    let mut duplicates = 0;
    for record in records {
        let id = record["id"].as_str().unwrap().to_owned();
        if inner.ids.insert(id) {
            inner.stored.push(record);
        } else {
            duplicates += 1;
        }
    }
    inner.duplicates += duplicates;
    inner.answers.push(200);
    (
        StatusCode::OK,
        format!("{{\"accepted\":1,\"duplicates\":{duplicates}}}"),
    )
        .into_response()
}

fn answer(hq: &FakeHq, code: u16, message: &str) -> Response {
    hq.lock().answers.push(code);
    (StatusCode::from_u16(code).unwrap(), message.to_owned()).into_response()
}
