//! Integration tests of the reference HQ receiver (`posgw hq`) over real HTTP on loopback:
//! each test has its own temp folder (config, token files, database) and port.
//!
//! Most tests run the receiver in-process (`posgw::hq::start`); the crash test runs the
//! `posgw hq -c PATH` binary as a child and kills it with SIGKILL mid-stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{cpu_time, free_port, posgw, proc_status_kb, Gateway};
use posgw::hq::{self, RunningHq};
use reqwest::StatusCode;
use serde_json::Value;

/// How long any wait in a test may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const ADMIN: &str = "admin-secret";
pub(crate) const TOKEN_1: &str = "store-1-secret";
pub(crate) const TOKEN_2: &str = "store-2-secret";

/// A receiver's folder: `hq.toml`, token files, `data/`.
pub(crate) struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    /// Stores S1 and S2 with their tokens, the admin token, and `extra` lines in `[hq]`.
    pub(crate) fn new(listen: &str, extra: &str) -> Folder {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, token) in [
            ("admin.token", ADMIN),
            ("s1.token", TOKEN_1),
            ("s2.token", TOKEN_2),
        ] {
            std::fs::write(dir.path().join(name), format!("{token}\n")).expect("write token");
        }
        let config = format!(
            "[hq]\nlisten = \"{listen}\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n{extra}\n\
             [[store]]\ncode = \"S1\"\ntoken_file = \"s1.token\"\n\n\
             [[store]]\ncode = \"S2\"\ntoken_file = \"s2.token\"\n"
        );
        std::fs::write(dir.path().join("hq.toml"), config).expect("write config");
        Folder { dir }
    }

    /// As [`Folder::new`], storing in `backend`.
    pub(crate) fn on(backend: &Backend, listen: &str, extra: &str) -> Folder {
        let folder = Folder::new(listen, extra);
        if let Backend::Postgres(cluster) = backend {
            std::fs::write(folder.dir.path().join("db.url"), cluster.url()).expect("write url");
            let mut config = std::fs::OpenOptions::new()
                .append(true)
                .open(folder.config())
                .expect("open config");
            writeln!(
                config,
                "\n[storage]\nbackend = \"postgres\"\nurl_file = \"db.url\""
            )
            .expect("append storage");
        }
        folder
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("hq.toml")
    }

    /// Starts the receiver in-process on a fresh loopback port.
    pub(crate) async fn start(&self) -> Receiver {
        let settings = hq::load_config(&self.config()).expect("config loads");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let running = hq::start(settings, listener)
            .await
            .expect("receiver starts");
        Receiver::new(running.url(), Some(running))
    }
}

/// Where a receiver under test keeps its records: the behaviour tests run on both.
pub(crate) enum Backend {
    /// The embedded default.
    Sled,
    /// A PostgreSQL cluster of the test's own.
    Postgres(crate::pg::PgCluster),
}

impl Backend {
    /// A fresh PostgreSQL cluster.
    pub(crate) fn postgres() -> Backend {
        Backend::Postgres(crate::pg::PgCluster::start())
    }
}

/// Runs each named `async fn NAME(backend: Backend)` as two tests, `on_sled::NAME` and
/// `on_postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sled).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::postgres()).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_backends;

on_both_backends!(
    batches_in_every_encoding_are_stored_as_sent_with_hq_seq,
    duplicates_within_and_across_batches_are_counted_and_stored_once,
    refused_requests_store_nothing,
    records_page_by_after_and_limit_and_filter_by_store_and_kind,
    stats_give_outcomes_completeness_and_median_latency,
    restart_keeps_records_dedup_and_stats,
    health_and_metrics,
    records_pages_are_capped_by_bytes_and_paging_returns_every_record,
);

/// A receiver under test and an HTTP client for it.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) client: reqwest::Client,
    running: Option<RunningHq>,
}

impl Receiver {
    fn new(url: String, running: Option<RunningHq>) -> Receiver {
        Receiver {
            url,
            client: client(),
            running,
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
    }

    /// Posts an NDJSON body, compressed as `encoding` says ("identity" sends no header).
    pub(crate) async fn post(
        &self,
        token: Option<&str>,
        body: &str,
        encoding: &str,
    ) -> (StatusCode, Value) {
        self.post_raw(
            token,
            encode(body.as_bytes(), encoding),
            Some(encoding),
            "application/x-ndjson",
        )
        .await
    }

    async fn post_raw(
        &self,
        token: Option<&str>,
        body: Vec<u8>,
        encoding: Option<&str>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/v1/batches", self.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(encoding) = encoding.filter(|e| *e != "identity") {
            request = request.header("content-encoding", encoding);
        }
        let response = request.send().await.expect("post");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /v1/records?QUERY` with the admin token: the raw lines and the next-after header.
    async fn records_page(&self, query: &str) -> (Vec<String>, u64) {
        let response = self
            .client
            .get(format!("{}/v1/records?{query}", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get records");
        assert_eq!(response.status(), StatusCode::OK, "records {query}");
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let next = response.headers()[hq::NEXT_AFTER_HEADER]
            .to_str()
            .expect("header")
            .parse()
            .expect("number");
        let text = response.text().await.expect("body");
        (text.lines().map(str::to_string).collect(), next)
    }

    /// Every record (paged), parsed.
    pub(crate) async fn all_records(&self) -> Vec<Value> {
        let mut records = Vec::new();
        let mut after = 0;
        loop {
            let (lines, next) = self
                .records_page(&format!("after={after}&limit=10000"))
                .await;
            if lines.is_empty() {
                return records;
            }
            records.extend(lines.iter().map(|line| parse(line)));
            after = next;
        }
    }

    pub(crate) async fn stats(&self) -> Value {
        let response = self
            .client
            .get(format!("{}/v1/stats", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get stats");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("stats json")
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("bad line {line}: {error}"))
}

/// `body` compressed as `encoding` (`identity`, `gzip` or `zstd`).
fn encode(body: &[u8], encoding: &str) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(body).expect("gzip");
            encoder.finish().expect("gzip")
        }
        "zstd" => zstd::encode_all(body, 3).expect("zstd"),
        _ => body.to_vec(),
    }
}

/// One record as a gateway writes it.
pub(crate) fn record(store: &str, gateway: &str, seq: u64, kind: &str, data: &str) -> String {
    format!(
        r#"{{"id":"{store}/{gateway}/7f3a9c21/{seq}","store":"{store}","gateway":"{gateway}","epoch":"7f3a9c21","seq":{seq},"ts":"2026-11-27T16:01:02.345+08:00","clock":{{"boot":"3b1c","mono_ms":{seq},"synced":true}},"kind":"{kind}","data":{data}}}"#
    )
}

fn scan(store: &str, seq: u64) -> String {
    record(
        store,
        "gw-1",
        seq,
        "scan",
        &format!(r#"{{"device":"scanner-1","station":"till-1","code":"69012345{seq:05}"}}"#),
    )
}

/// Attribution of campaign c1: `outcome`, with `answer` and `latency_ms` when answered.
fn attribution(
    store: &str,
    seq: u64,
    outcome: &str,
    answer: Option<&str>,
    latency: Option<u64>,
) -> String {
    let answer = answer.map_or("null".to_string(), |a| format!("\"{a}\""));
    let latency = latency.map_or("null".to_string(), |l| l.to_string());
    let clerk = if outcome == "timeout" {
        "null"
    } else {
        "\"c-17\""
    };
    record(
        store,
        "gw-1",
        seq,
        "attribution",
        &format!(
            r#"{{"prompt":"p-{seq}","campaign":"c1","station":"till-1","sku":"6901234567892","question":"推荐话术来源","outcome":"{outcome}","answer":{answer},"answer_label":null,"channel":"web","clerk":{clerk},"latency_ms":{latency}}}"#
        ),
    )
}

pub(crate) fn lines(records: &[String]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

async fn batches_in_every_encoding_are_stored_as_sent_with_hq_seq(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    let batches: Vec<Vec<String>> = vec![
        (1..=3).map(|seq| scan("S1", seq)).collect(),
        (4..=5).map(|seq| scan("S1", seq)).collect(),
        (6..=9).map(|seq| scan("S1", seq)).collect(),
    ];
    for (batch, encoding) in batches.iter().zip(["identity", "gzip", "zstd"]) {
        let (status, body) = hq.post(Some(TOKEN_1), &lines(batch), encoding).await;
        assert_eq!(status, StatusCode::OK, "{encoding}: {body}");
        assert_eq!(
            body,
            serde_json::json!({"accepted": batch.len(), "duplicates": 0})
        );
    }
    let (got, next) = hq.records_page("").await;
    let sent: Vec<&String> = batches.iter().flatten().collect();
    assert_eq!(got.len(), sent.len());
    for (index, (line, original)) in got.iter().zip(sent).enumerate() {
        // The record exactly as sent, with only the hq_seq field added at the end.
        let expected = format!(
            "{},\"hq_seq\":{}}}",
            &original[..original.len() - 1],
            index + 1
        );
        assert_eq!(line, &expected);
    }
    assert_eq!(next, 9);
    hq.stop().await;
}

async fn duplicates_within_and_across_batches_are_counted_and_stored_once(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    let first = lines(&[scan("S1", 1), scan("S1", 2), scan("S1", 2)]);
    assert_eq!(
        hq.post(Some(TOKEN_1), &first, "gzip").await.1,
        serde_json::json!({"accepted": 2, "duplicates": 1})
    );
    let second = lines(&[scan("S1", 1), scan("S1", 2), scan("S1", 3)]);
    assert_eq!(
        hq.post(Some(TOKEN_1), &second, "identity").await.1,
        serde_json::json!({"accepted": 1, "duplicates": 2})
    );
    // The same seq under another epoch is another record.
    let other_epoch = scan("S1", 1).replace("7f3a9c21", "0badcafe");
    assert_eq!(
        hq.post(Some(TOKEN_1), &other_epoch, "identity").await.1,
        serde_json::json!({"accepted": 1, "duplicates": 0})
    );
    let records = hq.all_records().await;
    assert_eq!(
        ids(&records),
        [
            "S1/gw-1/7f3a9c21/1",
            "S1/gw-1/7f3a9c21/2",
            "S1/gw-1/7f3a9c21/3",
            "S1/gw-1/0badcafe/1"
        ]
    );
    let stats = hq.stats().await;
    assert_eq!(stats["stores"]["S1"]["duplicates"], 3);
    assert_eq!(stats["stores"]["S1"]["records"], 4);
    hq.stop().await;
}

async fn refused_requests_store_nothing(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "max_body = \"64KiB\"");
    let hq = folder.start().await;
    let good = lines(&[scan("S1", 1), scan("S1", 2)]);

    let (status, _) = hq.post(None, &good, "identity").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token");
    let (status, _) = hq.post(Some("guess"), &good, "identity").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown token");
    let (status, _) = hq.post(Some(ADMIN), &good, "identity").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the admin token may not post"
    );

    let (status, body) = hq.post(Some(TOKEN_2), &good, "gzip").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "S1's records with S2's token"
    );
    assert_eq!(body["line"], 1);

    let bad = format!("{}{{\"id\":\"S1/gw-1/7f3a9c21/3\"}}\n", good);
    let (status, body) = hq.post(Some(TOKEN_1), &bad, "zstd").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["line"], 3);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("missing field"),
        "{body}"
    );
    let (status, body) = hq
        .post(Some(TOKEN_1), &format!("{good}not json\n"), "identity")
        .await;
    assert_eq!(
        (status, &body["line"]),
        (StatusCode::BAD_REQUEST, &Value::from(3))
    );
    let (status, _) = hq
        .post_raw(
            Some(TOKEN_1),
            b"not gzip at all".to_vec(),
            Some("gzip"),
            "application/x-ndjson",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "corrupt gzip");

    let big: Vec<String> = (1..=400).map(|seq| scan("S1", seq)).collect();
    let (status, _) = hq.post(Some(TOKEN_1), &lines(&big), "identity").await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over max_body as sent"
    );

    let (status, _) = hq
        .post_raw(
            Some(TOKEN_1),
            good.clone().into_bytes(),
            Some("br"),
            "application/x-ndjson",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unknown encoding"
    );
    let (status, _) = hq
        .post_raw(
            Some(TOKEN_1),
            good.clone().into_bytes(),
            None,
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "not ndjson");

    assert!(hq.all_records().await.is_empty(), "nothing stored");
    assert_eq!(hq.stats().await["records"], 0);

    // The same good batch is then taken whole.
    let (status, body) = hq.post(Some(TOKEN_1), &good, "identity").await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, Value::from(2))
    );
    hq.stop().await;
}

#[tokio::test]
async fn decompression_bomb_is_refused_with_413() {
    let folder = Folder::new("127.0.0.1:0", "max_body = \"1MiB\"");
    let hq = folder.start().await;
    // 64 MiB of newlines: a few dozen KiB compressed, far below max_body as sent.
    let inflated = vec![b'\n'; 64 << 20];
    for encoding in ["gzip", "zstd"] {
        let bomb = encode(&inflated, encoding);
        assert!(
            bomb.len() < 1 << 20,
            "{encoding} bomb is small: {}",
            bomb.len()
        );
        let (status, body) = hq
            .post_raw(Some(TOKEN_1), bomb, Some(encoding), "application/x-ndjson")
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{encoding}: {body}");
    }
    assert!(hq.all_records().await.is_empty());
    hq.stop().await;
}

async fn records_page_by_after_and_limit_and_filter_by_store_and_kind(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    // hq_seq 1..=3 S1 scans, 4..=5 S2 (scan, attribution), 6..=7 S1 (attribution, scan).
    hq.post(
        Some(TOKEN_1),
        &lines(&[scan("S1", 1), scan("S1", 2), scan("S1", 3)]),
        "gzip",
    )
    .await;
    hq.post(
        Some(TOKEN_2),
        &lines(&[scan("S2", 1), attribution("S2", 2, "timeout", None, None)]),
        "gzip",
    )
    .await;
    hq.post(
        Some(TOKEN_1),
        &lines(&[attribution("S1", 4, "skipped", None, None), scan("S1", 5)]),
        "gzip",
    )
    .await;

    let seqs = |lines: &[String]| -> Vec<u64> {
        lines
            .iter()
            .map(|l| parse(l)["hq_seq"].as_u64().expect("hq_seq"))
            .collect()
    };
    let (page, next) = hq.records_page("limit=2").await;
    assert_eq!((seqs(&page), next), (vec![1, 2], 2));
    let (page, next) = hq.records_page("after=2&limit=2").await;
    assert_eq!((seqs(&page), next), (vec![3, 4], 4));
    let (page, next) = hq.records_page("after=7").await;
    assert_eq!((seqs(&page), next), (vec![], 7));

    let (page, _) = hq.records_page("store=S1").await;
    assert_eq!(seqs(&page), [1, 2, 3, 6, 7]);
    let (page, next) = hq.records_page("store=S1&after=2&limit=2").await;
    assert_eq!((seqs(&page), next), (vec![3, 6], 6));
    let (page, _) = hq.records_page("store=S2").await;
    assert_eq!(seqs(&page), [4, 5]);
    let (page, _) = hq.records_page("kind=attribution").await;
    assert_eq!(seqs(&page), [5, 6]);
    let (page, _) = hq.records_page("store=S1&kind=scan&after=1").await;
    assert_eq!(seqs(&page), [2, 3, 7]);
    let (page, _) = hq.records_page("store=S3").await;
    assert!(page.is_empty());

    for bad in ["limit=0", "limit=10001", "after=-1", "sotre=S1"] {
        let response = hq
            .client
            .get(format!("{}/v1/records?{bad}", hq.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // Read endpoints want the admin token; a store's token is not enough.
    for path in ["/v1/records", "/v1/stats"] {
        for token in [None, Some(TOKEN_1)] {
            let mut request = hq.client.get(format!("{}{path}", hq.url));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("get");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} {token:?}"
            );
        }
    }
    hq.stop().await;
}

/// S1: answered 1000/4000/2000 ms (doctor, doctor, poster), one timeout, one skipped.
/// S2: answered 3000 ms (poster). Plus scans, which do not count as prompts.
async fn post_known_attributions(hq: &Receiver) {
    let s1 = [
        scan("S1", 1),
        attribution("S1", 2, "answered", Some("doctor"), Some(1000)),
        attribution("S1", 3, "answered", Some("doctor"), Some(4000)),
        attribution("S1", 4, "timeout", None, None),
        attribution("S1", 5, "answered", Some("poster"), Some(2000)),
        attribution("S1", 6, "skipped", None, Some(800)),
    ];
    let s2 = [
        scan("S2", 1),
        attribution("S2", 2, "answered", Some("poster"), Some(3000)),
    ];
    assert_eq!(
        hq.post(Some(TOKEN_1), &lines(&s1), "gzip").await.0,
        StatusCode::OK
    );
    assert_eq!(
        hq.post(Some(TOKEN_2), &lines(&s2), "zstd").await.0,
        StatusCode::OK
    );
}

fn check_known_stats(stats: &Value) {
    assert_eq!(stats["records"], 8);
    assert_eq!(stats["hq_seq"], 8);
    let s1 = &stats["stores"]["S1"];
    assert_eq!(
        s1["by_kind"],
        serde_json::json!({"attribution": 5, "scan": 1})
    );
    assert_eq!(s1["last_record_ts"], "2026-11-27T16:01:02.345+08:00");
    let c1 = &s1["campaigns"]["c1"];
    assert_eq!(c1["opened"], 5);
    assert_eq!(
        c1["outcomes"],
        serde_json::json!({"answered": 3, "timeout": 1, "skipped": 1})
    );
    assert_eq!(c1["completeness"], 0.6);
    assert_eq!(c1["median_latency_ms"], 2000.0, "answered prompts only");
    assert_eq!(c1["answers"], serde_json::json!({"doctor": 2, "poster": 1}));
    assert_eq!(c1["question"], "推荐话术来源");
    assert_eq!(c1["stations"]["till-1"]["opened"], 5);
    assert_eq!(c1["clerks"]["c-17"]["opened"], 4);
    let all = &stats["campaigns"]["c1"];
    assert_eq!(all["opened"], 6);
    assert_eq!(all["completeness"], 4.0 / 6.0);
    assert_eq!(
        all["median_latency_ms"], 2500.0,
        "median of 1000, 2000, 3000, 4000"
    );
    assert_eq!(
        all["answers"],
        serde_json::json!({"doctor": 2, "poster": 2})
    );
    assert_eq!(
        stats["stores"]["S2"]["campaigns"]["c1"]["completeness"],
        1.0
    );
}

async fn stats_give_outcomes_completeness_and_median_latency(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    post_known_attributions(&hq).await;
    check_known_stats(&hq.stats().await);
    // Duplicates change no figure but the duplicate count.
    post_known_attributions(&hq).await;
    let stats = hq.stats().await;
    check_known_stats(&stats);
    assert_eq!(stats["stores"]["S1"]["duplicates"], 6);
    hq.stop().await;
}

async fn restart_keeps_records_dedup_and_stats(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    post_known_attributions(&hq).await;
    let before = hq.all_records().await;
    hq.stop().await;

    let hq = folder.start().await;
    assert_eq!(hq.all_records().await, before);
    check_known_stats(&hq.stats().await);
    // Everything already held is a duplicate; new records continue the hq_seq.
    post_known_attributions(&hq).await;
    let (status, body) = hq.post(Some(TOKEN_1), &scan("S1", 7), "identity").await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, Value::from(1))
    );
    let records = hq.all_records().await;
    assert_eq!(records.len(), 9);
    assert_eq!(records[8]["hq_seq"], 9);
    assert_eq!(records[8]["id"], "S1/gw-1/7f3a9c21/7");
    hq.stop().await;
}

async fn health_and_metrics(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    hq.post(
        Some(TOKEN_1),
        &lines(&[scan("S1", 1), scan("S1", 1)]),
        "gzip",
    )
    .await;
    hq.post(None, "", "identity").await;
    let health = hq
        .client
        .get(format!("{}/healthz", hq.url))
        .send()
        .await
        .expect("get");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.expect("body"), "ok");
    let metrics = hq
        .client
        .get(format!("{}/metrics", hq.url))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    for expected in [
        "posgw_hq_records_total{store=\"S1\"} 1",
        "posgw_hq_duplicates_total{store=\"S1\"} 1",
        "posgw_hq_requests_total{endpoint=\"batches\",code=\"200\"} 1",
        "posgw_hq_requests_total{endpoint=\"batches\",code=\"401\"} 1",
        "posgw_hq_stored_seq 1",
    ] {
        assert!(metrics.contains(expected), "{expected} in\n{metrics}");
    }
    hq.stop().await;
}

#[test]
fn config_errors_name_file_line_and_column() {
    let folder = Folder::new("127.0.0.1:0", "max_body = \"huge\"\nlisten_on = \"x\"");
    let error = hq::load_config(&folder.config())
        .expect_err("bad config")
        .to_string();
    let path = folder.config().display().to_string();
    assert_eq!(
        error,
        format!("{path}:6:1: unknown key 'listen_on' in [hq], did you mean 'listen'?"),
        "unknown keys stop loading before values are checked"
    );
    std::fs::write(
        folder.config(),
        "[hq]\nmax_body = \"huge\"\n[[store]]\ncode = \"S1\"\ntoken_file = \"nope.token\"\n",
    )
    .expect("write");
    let error = hq::load_config(&folder.config())
        .expect_err("bad config")
        .to_string();
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines.len(), 2, "{error}");
    assert!(lines[0].starts_with(&format!("{path}:2:12: 'max_body' in [hq] must be a size")));
    assert!(
        lines[1].starts_with(&format!("{path}:5:14: cannot read token file")),
        "{}",
        lines[1]
    );
}

/// A `posgw hq` child process, killed with SIGKILL and reaped when dropped, so a failing
/// test never leaves a receiver running (or holding the test's stderr open).
pub(crate) struct HqProcess(Child);

impl HqProcess {
    /// SIGKILL (std's `Child::kill` sends SIGKILL on Unix) and reap.
    pub(crate) fn kill_9(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reap");
    }
}

impl Drop for HqProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client whose every request gives up after a while: a receiver that accepts connections
/// but never answers fails the test instead of hanging it. Like the harness's client it drops
/// idle connections before the receiver would ([`crate::harness::POOL_IDLE`]).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .pool_idle_timeout(crate::harness::POOL_IDLE)
        .build()
        .expect("client")
}

/// `posgw hq -c CONFIG` as a child process.
pub(crate) fn spawn_hq_process(config: &Path) -> HqProcess {
    HqProcess(
        posgw()
            .arg("hq")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start posgw hq"),
    )
}

pub(crate) async fn wait_healthy(client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{url}/healthz")).send().await {
            if response.status() == StatusCode::OK {
                return;
            }
        }
        assert!(started.elapsed() < DEADLINE, "receiver did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records per batch in the crash test; each batch is one gateway's next seq range.
const CRASH_BATCH: u64 = 250;

/// Posts batches of `gateway` from `first_batch` on, back to back, until a post fails after
/// `killed` was set; acknowledged batches go into `acknowledged`.
async fn post_until_killed(
    client: reqwest::Client,
    url: String,
    gateway: u64,
    first_batch: u64,
    acknowledged: Arc<Mutex<HashSet<(u64, u64)>>>,
    killed: Arc<AtomicBool>,
) {
    for batch in first_batch.. {
        let body: String = (1..=CRASH_BATCH)
            .map(|n| {
                let seq = batch * CRASH_BATCH + n;
                let data = format!(r#"{{"batch":{batch},"pad":"{}"}}"#, "x".repeat(300));
                format!(
                    "{}\n",
                    record("S1", &format!("gw-{gateway}"), seq, "scan", &data)
                )
            })
            .collect();
        let sent = client
            .post(format!("{url}/v1/batches"))
            .bearer_auth(TOKEN_1)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(encode(body.as_bytes(), "gzip"))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::OK => {
                acknowledged.lock().expect("lock").insert((gateway, batch));
            }
            _ if killed.load(Ordering::SeqCst) => return,
            Ok(response) => panic!("unexpected status {}", response.status()),
            Err(error) => panic!("post failed before the kill: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_batch_and_shows_no_partial_one() {
    let port = free_port();
    let folder = Folder::new(&format!("127.0.0.1:{port}"), "");
    let url = format!("http://127.0.0.1:{port}");
    let client = client();
    let acknowledged: Arc<Mutex<HashSet<(u64, u64)>>> = Arc::default();
    let mut child = spawn_hq_process(&folder.config());

    // Three rounds: four gateways post back to back, the receiver is killed with SIGKILL
    // while posts are in flight, and restarted. Like real gateways, each resumes with its
    // first batch that was not acknowledged (which HQ may hold already: duplicates).
    for round in 0..3u64 {
        wait_healthy(&client, &url).await;
        let killed = Arc::new(AtomicBool::new(false));
        let target = acknowledged.lock().expect("lock").len() + 20 + 7 * round as usize;
        let mut posters = Vec::new();
        for gateway in 0..4u64 {
            let first_batch = (0..)
                .find(|batch| {
                    !acknowledged
                        .lock()
                        .expect("lock")
                        .contains(&(gateway, *batch))
                })
                .unwrap_or_default();
            posters.push(tokio::spawn(post_until_killed(
                client.clone(),
                url.clone(),
                gateway,
                first_batch,
                acknowledged.clone(),
                killed.clone(),
            )));
        }
        let started = Instant::now();
        while acknowledged.lock().expect("lock").len() < target {
            assert!(started.elapsed() < DEADLINE, "batches are not acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A varying extra moment, so the kill lands at different points of the write path.
        tokio::time::sleep(Duration::from_millis(3 * round)).await;
        killed.store(true, Ordering::SeqCst);
        child.kill_9();
        for poster in posters {
            tokio::time::timeout(DEADLINE, poster)
                .await
                .expect("a poster ends once the receiver is killed")
                .expect("poster");
        }
        child = spawn_hq_process(&folder.config());
    }

    wait_healthy(&client, &url).await;
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let hq = Receiver::new(url.clone(), None);
    let records = hq.all_records().await;
    let mut per_batch: HashMap<(u64, u64), u64> = HashMap::new();
    let mut seen = HashSet::new();
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record["hq_seq"], index as u64 + 1, "hq_seq has no gaps");
        assert!(
            seen.insert(record["id"].as_str().expect("id").to_string()),
            "stored once"
        );
        let gateway: u64 = record["gateway"].as_str().expect("gateway")[3..]
            .parse()
            .expect("n");
        *per_batch
            .entry((gateway, record["data"]["batch"].as_u64().expect("batch")))
            .or_default() += 1;
    }
    for batch in &acknowledged {
        assert_eq!(
            per_batch.get(batch),
            Some(&CRASH_BATCH),
            "acknowledged batch {batch:?} whole"
        );
    }
    let partial: BTreeMap<_, _> = per_batch
        .iter()
        .filter(|(_, n)| **n != CRASH_BATCH)
        .collect();
    assert!(partial.is_empty(), "partial batches: {partial:?}");
    eprintln!(
        "crash test: {} batches acknowledged over 3 kills, {} stored",
        acknowledged.len(),
        per_batch.len()
    );
    let stats = hq.stats().await;
    assert_eq!(
        stats["records"],
        records.len() as u64,
        "totals match the records"
    );
    child.kill_9();
}

/// Records in the many-epochs batch: each carries an epoch of its own. Enough for a quadratic
/// path to stand out by an order of magnitude (with the old list search put back, measured in
/// a debug build: 26x the one-stream batch at 15k records, 39x at 30k), few enough that the
/// linear path takes about a second of CPU.
const MANY_EPOCHS: u64 = 30_000;
/// How many times the one-stream batch's CPU time a many-epochs batch may take. Linear, it
/// costs about 3x in a debug build (a dedup range to write per stream; 4x at 120k records,
/// sled's tree being n log n); quadratic, 39x.
const MANY_EPOCHS_CPU_RATIO: f64 = 10.0;

/// A batch of `MANY_EPOCHS` minimal records of `store`; `epoch(n)` is record n's epoch.
fn epochs_batch(store: &str, epoch: impl Fn(u64) -> String) -> Vec<u8> {
    let body: String = (1..=MANY_EPOCHS)
        .map(|n| {
            let (epoch, seq) = (epoch(n), if epoch(1) == epoch(2) { n } else { 1 });
            format!(
                r#"{{"id":"{store}/gw-1/{epoch}/{seq}","store":"{store}","gateway":"gw-1","epoch":"{epoch}","seq":{seq},"ts":"2026-11-27T16:01:02.345+08:00","kind":"scan","data":{{}}}}"#
            ) + "\n"
        })
        .collect();
    body.into_bytes()
}

/// The receiver runs as a child process and is timed by the CPU time it spends, not by the
/// wall clock: on a shared machine a debug build's wall time varied from 16 s to over 30 s for
/// the same 120k-record batch, while CPU time is the receiver's own work whatever else runs
/// (and no other test's work, as in-process timing would be under `cargo test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_records_with_many_epochs_is_stored_in_linear_time() {
    let folder = Folder::new("127.0.0.1:0", "max_body = \"64MiB\"");
    let config = folder.config();
    let receiver =
        Gateway::spawn(&["hq", "-c", config.to_str().unwrap()], "hq listening on ").await;
    let pid = receiver.child.id();
    // Only a guard against a receiver that never answers: the figures below are CPU time.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(150))
        .pool_idle_timeout(crate::harness::POOL_IDLE)
        .build()
        .expect("client");
    let post = |token: &'static str, body: Vec<u8>| {
        let (client, url) = (&client, &receiver.api);
        async move {
            let cpu = cpu_time(pid);
            let response = client
                .post(format!("{url}/v1/batches"))
                .bearer_auth(token)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), StatusCode::OK);
            let answer: Value = response.json().await.expect("answer");
            (answer, cpu_time(pid) - cpu)
        }
    };
    // The yardstick: as many records of one stream, on this machine.
    let (answer, one_stream) = post(TOKEN_2, epochs_batch("S2", |_| "e".to_string())).await;
    assert_eq!(answer["accepted"], MANY_EPOCHS);
    // One gateway that restarted its journal before every record: a stream per record. When
    // every record searched the batch's list of streams, 120k of them took 57 s in release and
    // did not finish within 180 s in a debug build.
    let body = epochs_batch("S1", |n| format!("e{n}"));
    let (answer, many) = post(TOKEN_1, body.clone()).await;
    assert_eq!(
        answer,
        serde_json::json!({"accepted": MANY_EPOCHS, "duplicates": 0})
    );
    // Deduplication across all those streams is just as quick.
    let (answer, again) = post(TOKEN_1, body).await;
    assert_eq!(
        answer,
        serde_json::json!({"accepted": 0, "duplicates": MANY_EPOCHS})
    );
    let ratio = |spent: Duration| spent.as_secs_f64() / one_stream.as_secs_f64();
    eprintln!(
        "{MANY_EPOCHS} records, receiver CPU: one stream {one_stream:?}, one stream each \
         {many:?} ({:.1}x), again {again:?} ({:.1}x)",
        ratio(many),
        ratio(again)
    );
    assert!(
        ratio(many) <= MANY_EPOCHS_CPU_RATIO,
        "a batch of {MANY_EPOCHS} streams took {many:?} of CPU, {:.1}x the one-stream batch",
        ratio(many)
    );
    assert!(
        ratio(again) <= MANY_EPOCHS_CPU_RATIO,
        "the same batch again took {again:?} of CPU, {:.1}x the one-stream batch",
        ratio(again)
    );
    assert!(receiver.stop().await.success());
}

/// Largest `/v1/records` page in bytes (a single larger record still comes alone).
const RECORDS_PAGE_BYTES: usize = 4 * 1024 * 1024;

async fn records_pages_are_capped_by_bytes_and_paging_returns_every_record(backend: Backend) {
    let folder = Folder::on(&backend, "127.0.0.1:0", "");
    let hq = folder.start().await;
    // Sales of about 1 MiB (receipts with very many lines, or a huge text), and one of 6 MiB,
    // larger than a page on its own.
    let big = |seq: u64, size: usize| {
        record(
            "S1",
            "gw-1",
            seq,
            "sale",
            &format!(r#"{{"receipt":"R-{seq}","text":"{}"}}"#, "x".repeat(size)),
        )
    };
    let mut sent = Vec::new();
    for batch in 0..3u64 {
        let records: Vec<String> = (1..=4).map(|n| big(batch * 4 + n, 1024 * 1024)).collect();
        sent.extend(records.clone());
        let (status, body) = hq.post(Some(TOKEN_1), &lines(&records), "gzip").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let huge = big(13, 6 * 1024 * 1024);
    sent.push(huge.clone());
    let (status, body) = hq.post(Some(TOKEN_1), &lines(&[huge]), "gzip").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sent.push(scan("S1", 14));
    hq.post(Some(TOKEN_1), &lines(&sent[13..]), "identity")
        .await;

    // Every page, with or without a kind filter (the dashboard reads `kind=sale`), stays
    // within the cap unless it is a single record, and paging by `posgw-next-after` returns
    // every record once, in order.
    for filter in ["", "kind=sale&", "store=S1&"] {
        let mut got: Vec<Value> = Vec::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            let response = hq
                .client
                .get(format!(
                    "{}/v1/records?{filter}after={after}&limit=10000",
                    hq.url
                ))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("get records");
            assert_eq!(response.status(), StatusCode::OK);
            let next: u64 = response.headers()[hq::NEXT_AFTER_HEADER]
                .to_str()
                .expect("header")
                .parse()
                .expect("number");
            let body = response.bytes().await.expect("body");
            let count = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            assert!(
                body.len() <= RECORDS_PAGE_BYTES || count == 1,
                "page after {after} ({filter}) is {} bytes in {count} records",
                body.len()
            );
            if count == 0 {
                break;
            }
            pages += 1;
            got.extend(
                body.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice::<Value>(l).expect("json")),
            );
            assert!(next > after, "next-after moves on");
            after = next;
        }
        let expected: Vec<&String> = if filter.starts_with("kind") {
            sent[..13].iter().collect()
        } else {
            sent.iter().collect()
        };
        assert_eq!(got.len(), expected.len(), "{filter}");
        for (record, original) in got.iter().zip(expected) {
            let original: Value = serde_json::from_str(original).expect("json");
            assert_eq!(record["id"], original["id"]);
            assert_eq!(record["data"], original["data"], "whole record");
        }
        assert!(pages >= 4, "{pages} pages for about 18 MiB ({filter})");
    }
    hq.stop().await;
}

/// Posts `body` until it is accepted, retrying after 503 like a gateway; returns the 503s
/// (including those the client could not read because the receiver refused the body unread).
async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    encoding: &str,
) -> usize {
    let mut busy = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never accepted"
        );
        let mut request = client
            .post(format!("{url}/v1/batches"))
            .bearer_auth(TOKEN_1)
            .header("content-type", "application/x-ndjson")
            .body(body.clone());
        if encoding != "identity" {
            request = request.header("content-encoding", encoding);
        }
        let response = match request.send().await {
            Ok(response) => response,
            // The receiver answered 503 before reading the body and closed the connection:
            // the client sees its body write fail, and retries (as the uplink does).
            Err(error) if error.is_request() => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(error) => panic!("post: {error}"),
        };
        match response.status() {
            StatusCode::OK => return busy,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "a 503 says when to retry"
                );
                busy += 1;
            }
            other => panic!(
                "unexpected {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Concurrent large bodies in the memory test, and their size.
const LARGE_BODIES: usize = 32;
const LARGE_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The receiver's peak RSS under those bodies must stay below this. Without a bound it was
/// 409 MB (every body held as sent, decompressed and parsed at once); with the default budget
/// (4 x 8 MiB) 171 to 192 MB, of which about 45 MB is the idle receiver and the rest the
/// budget, the writer's copy of one batch, and what the allocator keeps of freed bodies.
const LARGE_BODIES_PEAK_KB: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_bodies_keep_the_receivers_memory_bounded() {
    let port = free_port();
    let folder = Folder::new(&format!("127.0.0.1:{port}"), "max_body = \"8MiB\"");
    let url = format!("http://127.0.0.1:{port}");
    let child = spawn_hq_process(&folder.config());
    let client = client();
    wait_healthy(&client, &url).await;
    let pid = child.0.id();

    // One body of records of about 1 KiB, just under max_body, for gateway "gw-XX".
    let mut template = String::new();
    for seq in 1.. {
        let line = record(
            "S1",
            "gw-XX",
            seq,
            "scan",
            &format!(r#"{{"code":"{seq}","pad":"{}"}}"#, "p".repeat(800)),
        ) + "\n";
        if template.len() + line.len() > LARGE_BODY_BYTES - 1024 {
            break;
        }
        template.push_str(&line);
    }
    let records_per_body = template.lines().count();
    // Half go as sent, half gzip (small on the wire, 8 MiB once inflated). Each half is one
    // gateway's batch posted again and again (duplicates after the first), so what the test
    // measures is the bodies in flight, not what the database keeps of records it stored.
    let identity = template.replace("gw-XX", "gw-id").into_bytes();
    let gzipped = encode(template.replace("gw-XX", "gw-gz").as_bytes(), "gzip");
    let mut posters = Vec::new();
    for n in 0..LARGE_BODIES {
        let (body, encoding) = if n % 2 == 0 {
            (identity.clone(), "identity")
        } else {
            (gzipped.clone(), "gzip")
        };
        let (client, url) = (client.clone(), url.clone());
        posters.push(tokio::spawn(async move {
            post_until_accepted(&client, &url, body, encoding).await
        }));
    }
    let mut busy = 0;
    for poster in posters {
        busy += poster.await.expect("poster");
    }
    let peak = proc_status_kb(pid, "VmHWM");
    let now = proc_status_kb(pid, "VmRSS");
    eprintln!(
        "{LARGE_BODIES} bodies of 8 MiB: peak RSS {} MB, now {} MB, {busy} answers of 503",
        peak / 1024,
        now / 1024
    );
    let stats = Receiver::new(url.clone(), None).stats().await;
    assert_eq!(
        stats["records"],
        (records_per_body * 2) as u64,
        "every body stored in the end"
    );
    // Every 503 is counted, and nothing stays reserved once all are answered.
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("get metrics")
        .text()
        .await
        .expect("metrics");
    for expected in [
        format!("posgw_hq_body_budget_refused_total {busy}\n"),
        "posgw_hq_body_budget_bytes 0\n".to_string(),
    ] {
        assert!(metrics.contains(&expected), "{expected} in\n{metrics}");
    }
    assert!(
        peak < LARGE_BODIES_PEAK_KB,
        "peak RSS {} MB under {LARGE_BODIES} concurrent 8 MiB bodies",
        peak / 1024
    );
    drop(child);
}

/// MiB of records stored per round of the ingest plateau test, in records of 1 MiB (large
/// sales: the kind sled kept in memory for good) posted 8 to a batch.
const PLATEAU_ROUND_MIB: usize = 200;
/// How much the receiver's RSS may grow from N to 4N stored bytes. Before: it grew by about
/// what was written (sled's cache was 1 GiB, and values over 128 KiB stayed in memory anyway).
const PLATEAU_GROWTH_KB: u64 = 160 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_memory_plateaus() {
    let port = free_port();
    let folder = Folder::new(&format!("127.0.0.1:{port}"), "");
    let url = format!("http://127.0.0.1:{port}");
    let child = spawn_hq_process(&folder.config());
    let client = client();
    wait_healthy(&client, &url).await;
    let pid = child.0.id();
    let pad = "s".repeat(1024 * 1024);
    let mut seq = 0;
    let mut post_round = async |client: &reqwest::Client| {
        for _ in 0..PLATEAU_ROUND_MIB / 8 {
            let body: String = (0..8)
                .map(|_| {
                    seq += 1;
                    record(
                        "S1",
                        "gw-1",
                        seq,
                        "sale",
                        &format!(r#"{{"receipt":"R-{seq}","text":"{pad}"}}"#),
                    ) + "\n"
                })
                .collect();
            post_until_accepted(client, &url, body.into_bytes(), "identity").await;
        }
    };
    // The first round takes sled to its working size (about 200 MB in all on a debug build).
    post_round(&client).await;
    let after_n = proc_status_kb(pid, "VmRSS");
    for _ in 0..3 {
        post_round(&client).await;
    }
    let after_4n = proc_status_kb(pid, "VmRSS");
    eprintln!(
        "ingest: RSS {} MB after {PLATEAU_ROUND_MIB} MiB of records, {} MB after {}",
        after_n / 1024,
        after_4n / 1024,
        4 * PLATEAU_ROUND_MIB
    );
    assert!(
        after_4n < after_n + PLATEAU_GROWTH_KB,
        "RSS grew from {} MB to {} MB",
        after_n / 1024,
        after_4n / 1024
    );
    drop(child);
}
