//! HQ users over real HTTP on loopback: login sessions, the failed-login limit, scope on
//! every read endpoint per role, reload of users on SIGHUP, and `posgw hq passwd`.
//!
//! Stores S1 (region east), S2 and S3 (region west); users `boss` (admin), `li` (region
//! east), `wang` (store S3), each with password "pw-NAME".

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{free_port, posgw};
use posgw::hq::{self, RunningHq};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "users-admin-secret";
const DEADLINE: Duration = Duration::from_secs(30);

/// A folder with hq.toml, tokens and data/.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(listen: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, token) in [
            ("admin.token", ADMIN),
            ("s1.token", "tok-s1"),
            ("s2.token", "tok-s2"),
            ("s3.token", "tok-s3"),
            ("li.token", "tok-li"),
        ] {
            std::fs::write(dir.path().join(name), token).expect("write token");
        }
        let setup = Setup { dir };
        setup.write_config(listen, "");
        setup
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("hq.toml")
    }

    /// Writes hq.toml with `more` appended.
    fn write_config(&self, listen: &str, more: &str) {
        let users: String = [
            ("boss", "role = \"admin\""),
            (
                "li",
                "role = \"region\"\nregion = \"east\"\ntoken_file = \"li.token\"",
            ),
            ("wang", "role = \"store\"\nstore = \"S3\""),
        ]
        .iter()
        .map(|(name, role)| {
            let hash = hq::hash_password(&format!("pw-{name}")).expect("hash");
            format!("[[user]]\nname = \"{name}\"\n{role}\npassword_hash = \"{hash}\"\n\n")
        })
        .collect();
        let config = format!(
            "[hq]\nlisten = \"{listen}\"\ndata_dir = \"data\"\nadmin_token_file = \"admin.token\"\n\n\
             [[store]]\ncode = \"S1\"\ntoken_file = \"s1.token\"\n\
             [[store]]\ncode = \"S2\"\ntoken_file = \"s2.token\"\n\
             [[store]]\ncode = \"S3\"\ntoken_file = \"s3.token\"\n\n\
             [[region]]\nid = \"east\"\nname = \"温州片区\"\nstores = [\"S1\"]\n\
             [[region]]\nid = \"west\"\nstores = [\"S2\", \"S3\"]\n\n{users}{more}"
        );
        std::fs::write(self.config(), config).expect("write config");
    }

    async fn start(&self) -> (RunningHq, reqwest::Client) {
        let settings = hq::load_config(&self.config()).expect("config loads");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let running = hq::start(settings, listener).await.expect("starts");
        (running, client())
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .pool_idle_timeout(crate::harness::POOL_IDLE)
        .build()
        .expect("client")
}

/// One record of `store`.
fn record(store: &str, seq: u64, kind: &str, data: Value) -> String {
    json!({
        "id": format!("{store}/gw-1/ep1/{seq}"), "store": store, "gateway": "gw-1",
        "epoch": "ep1", "seq": seq, "ts": "2026-11-27T16:01:02.345+08:00",
        "clock": {"boot": "b", "mono_ms": seq, "synced": true}, "kind": kind, "data": data,
    })
    .to_string()
}

/// A sale with receipt `R-STORE` and an answered attribution by clerk `clerk-STORE`.
async fn post_store(client: &reqwest::Client, url: &str, store: &str) {
    let token = format!("tok-{}", store.to_lowercase());
    let body = [
        record(
            store,
            1,
            "attribution",
            json!({"prompt": "p-1", "campaign": "c1", "station": "till-1", "sku": "6901234567892",
                   "question": "来源", "outcome": "answered", "answer": "doctor",
                   "answer_label": "医生推荐", "channel": "web",
                   "clerk": format!("clerk-{store}"), "latency_ms": 4000}),
        ),
        record(
            store,
            2,
            "sale",
            json!({"device": "register-1", "station": "till-1", "receipt": format!("R-{store}"),
                   "clerk": format!("clerk-{store}"), "currency": "CNY", "text": null,
                   "total": 8.5, "lines": [{"sku": "6900000000001", "name": "x", "qty": 1,
                   "unit_price": 8.5, "amount": 8.5, "prompt": null}]}),
        ),
    ]
    .map(|line| line + "\n")
    .concat();
    let response = client
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::OK, "{store}");
}

/// Logs in; returns the status and the session cookie's `name=value`.
async fn login(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    password: &str,
) -> (StatusCode, Option<String>, reqwest::header::HeaderMap) {
    let response = client
        .post(format!("{url}/v1/login"))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .expect("login");
    let status = response.status();
    let headers = response.headers().clone();
    let cookie = headers
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::to_owned);
    (status, cookie, headers)
}

/// Who a request is made as.
#[derive(Clone, Copy)]
enum As<'a> {
    Cookie(&'a str),
    Token(&'a str),
    Nobody,
}

async fn get(client: &reqwest::Client, url: &str, path: &str, who: As<'_>) -> (StatusCode, String) {
    let mut request = client.get(format!("{url}{path}"));
    request = match who {
        As::Cookie(cookie) => request.header("cookie", cookie),
        As::Token(token) => request.bearer_auth(token),
        As::Nobody => request,
    };
    let response = request.send().await.expect("get");
    (response.status(), response.text().await.expect("body"))
}

/// The stores of a `/v1/records` answer.
fn stores_of(ndjson: &str) -> Vec<String> {
    let mut stores: Vec<String> = ndjson
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["store"]
                .as_str()
                .expect("store")
                .to_string()
        })
        .collect();
    stores.dedup();
    stores
}

#[tokio::test]
async fn login_sets_a_strict_session_cookie_and_logout_ends_it() {
    let setup = Setup::new(&format!("127.0.0.1:{}", free_port()));
    let (running, client) = setup.start().await;
    let url = running.url();

    let (status, cookie, headers) = login(&client, &url, "li", "pw-li").await;
    assert_eq!(status, StatusCode::OK);
    let set_cookie = headers["set-cookie"].to_str().expect("text");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = cookie.expect("cookie");
    let id = cookie.split_once('=').expect("pair").1;
    assert_eq!(id.len(), 64, "256 bits in hex");

    let (status, me) = get(&client, &url, "/v1/me", As::Cookie(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let me: Value = serde_json::from_str(&me).expect("json");
    assert_eq!(
        me,
        json!({"name": "li", "role": "region", "region": "east"})
    );

    // The admin token keeps working, as an admin; a user's token is that user.
    let (status, me) = get(&client, &url, "/v1/me", As::Token(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(me.contains("\"role\":\"admin\""), "{me}");
    let (_, me) = get(&client, &url, "/v1/me", As::Token("tok-li")).await;
    assert!(me.contains("\"name\":\"li\""), "{me}");
    // A store's gateway token does not read.
    let (status, _) = get(&client, &url, "/v1/stats", As::Token("tok-s1")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let response = client
        .post(format!("{url}/v1/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.headers()["set-cookie"]
        .to_str()
        .expect("text")
        .contains("Max-Age=0"));
    let (status, _) = get(&client, &url, "/v1/me", As::Cookie(&cookie)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(
        &client,
        &url,
        "/v1/stats",
        As::Cookie("posgw_hq_session=forged"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The login page is served, its script too.
    let (status, page) = get(&client, &url, "/login", As::Nobody).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("/assets/login.js"), "{page}");
    let (status, _) = get(&client, &url, "/assets/login.js", As::Nobody).await;
    assert_eq!(status, StatusCode::OK);
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn failed_logins_are_limited_per_name_then_answered_429() {
    let setup = Setup::new(&format!("127.0.0.1:{}", free_port()));
    let (running, client) = setup.start().await;
    let url = running.url();
    for attempt in 0..5 {
        let (status, cookie, _) = login(&client, &url, "wang", "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert!(cookie.is_none());
    }
    // The sixth, even with the right password, waits.
    let (status, cookie, headers) = login(&client, &url, "wang", "pw-wang").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(cookie.is_none());
    let wait: u64 = headers["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    // The same address is limited too (all tests come from 127.0.0.1).
    let (status, _, _) = login(&client, &url, "boss", "pw-boss").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn every_read_endpoint_keeps_to_the_callers_scope() {
    let setup = Setup::new(&format!("127.0.0.1:{}", free_port()));
    let (running, client) = setup.start().await;
    let url = running.url();
    for store in ["S1", "S2", "S3"] {
        post_store(&client, &url, store).await;
    }
    let (_, boss, _) = login(&client, &url, "boss", "pw-boss").await;
    let (_, li, _) = login(&client, &url, "li", "pw-li").await;
    let (_, wang, _) = login(&client, &url, "wang", "pw-wang").await;
    let (boss, li, wang) = (
        boss.expect("cookie"),
        li.expect("cookie"),
        wang.expect("cookie"),
    );
    let (boss, li, wang) = (As::Cookie(&boss), As::Cookie(&li), As::Cookie(&wang));

    // /v1/records
    let (status, body) = get(&client, &url, "/v1/records", As::Nobody).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for (who, expected) in [
        (boss, vec!["S1", "S2", "S3"]),
        (li, vec!["S1"]),
        (wang, vec!["S3"]),
        (As::Token(ADMIN), vec!["S1", "S2", "S3"]),
        (As::Token("tok-li"), vec!["S1"]),
    ] {
        let (status, body) = get(&client, &url, "/v1/records", who).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stores_of(&body), expected);
    }
    for (who, store, expected) in [
        (boss, "S2", StatusCode::OK),
        (li, "S1", StatusCode::OK),
        (li, "S2", StatusCode::FORBIDDEN),
        (wang, "S3", StatusCode::OK),
        (wang, "S1", StatusCode::FORBIDDEN),
    ] {
        let (status, body) = get(&client, &url, &format!("/v1/records?store={store}"), who).await;
        assert_eq!(status, expected, "{store}: {body}");
    }

    // /v1/trace
    for (who, receipt, expected) in [
        (boss, "R-S2", StatusCode::OK),
        (li, "R-S1", StatusCode::OK),
        (li, "R-S2", StatusCode::FORBIDDEN),
        (wang, "R-S3", StatusCode::OK),
        (wang, "R-S1", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = get(&client, &url, &format!("/v1/trace?receipt={receipt}"), who).await;
        assert_eq!(status, expected, "{receipt}: {body}");
    }
    let (status, _) = get(&client, &url, "/v1/trace?receipt=R-S1&store=S1", wang).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(&client, &url, "/v1/trace?receipt=R-S2&store=S2", li).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // /v1/stats
    let stats = |text: String| serde_json::from_str::<Value>(&text).expect("json");
    let (status, body) = get(&client, &url, "/v1/stats", boss).await;
    assert_eq!(status, StatusCode::OK);
    let all = stats(body);
    let keys = |report: &Value| -> Vec<String> {
        report["stores"]
            .as_object()
            .expect("stores")
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(&all), ["S1", "S2", "S3"]);
    assert_eq!(all["records"], 6);

    let (_, body) = get(&client, &url, "/v1/stats", li).await;
    let regional = stats(body);
    assert_eq!(keys(&regional), ["S1", "region:west"]);
    let west = &regional["stores"]["region:west"];
    assert_eq!(west["region"], "west");
    assert_eq!(west["store_count"], 2);
    assert_eq!(west["records"], 4);
    assert_eq!(west["campaigns"]["c1"]["opened"], 2);
    assert_eq!(
        west["campaigns"]["c1"]["clerks"],
        json!({}),
        "no clerks of another region"
    );
    assert_eq!(
        regional["stores"]["S1"]["campaigns"]["c1"]["clerks"]["clerk-S1"]["opened"],
        1
    );
    // Over all stores: every region counted, only the own region's clerks named.
    assert_eq!(regional["campaigns"]["c1"]["opened"], 3);
    let clerks: Vec<&String> = regional["campaigns"]["c1"]["clerks"]
        .as_object()
        .expect("clerks")
        .keys()
        .collect();
    assert_eq!(clerks, ["clerk-S1"]);
    assert!(!regional.to_string().contains("clerk-S2"));

    let (_, body) = get(&client, &url, "/v1/stats", wang).await;
    let own = stats(body);
    assert_eq!(keys(&own), ["S3"]);
    assert_eq!(own["records"], 2);
    assert_eq!(own["campaigns"]["c1"]["opened"], 1);
    assert!(!own.to_string().contains("clerk-S1"));
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn reload_applies_new_users_and_keeps_the_old_config_on_errors() {
    let listen = format!("127.0.0.1:{}", free_port());
    let setup = Setup::new(&listen);
    let (running, client) = setup.start().await;
    let url = running.url();
    let (status, _, _) = login(&client, &url, "zhao", "pw-zhao").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, li, _) = login(&client, &url, "li", "pw-li").await;
    let li = li.expect("cookie");

    // A broken file is refused whole.
    setup.write_config(
        &listen,
        "[[user]]\nname = \"zhao\"\nrole = \"region\"\nregion = \"nowhere\"\n",
    );
    let error = running.reload().expect_err("refused");
    assert!(error.to_string().contains("not a [[region]]"), "{error}");
    let (status, _) = get(&client, &url, "/v1/me", As::Cookie(&li)).await;
    assert_eq!(status, StatusCode::OK);

    // zhao arrives.
    let hash = hq::hash_password("pw-zhao").expect("hash");
    setup.write_config(
        &listen,
        &format!("[[user]]\nname = \"zhao\"\nrole = \"store\"\nstore = \"S1\"\npassword_hash = \"{hash}\"\n"),
    );
    running.reload().expect("reloads");
    let (status, _, _) = login(&client, &url, "zhao", "pw-zhao").await;
    assert_eq!(status, StatusCode::OK);
    running.stop().await.expect("stop");
}

#[tokio::test]
async fn posgw_hq_reloads_users_on_sighup() {
    let listen = format!("127.0.0.1:{}", free_port());
    let setup = Setup::new(&listen);
    let mut child = posgw()
        .arg("hq")
        .arg("-c")
        .arg(setup.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start posgw hq");
    let url = format!("http://{listen}");
    let client = client();
    let started = Instant::now();
    while client.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < DEADLINE, "hq did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = login(&client, &url, "zhao", "pw-zhao").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let hash = hq::hash_password("pw-zhao").expect("hash");
    setup.write_config(
        &listen,
        &format!("[[user]]\nname = \"zhao\"\nrole = \"admin\"\npassword_hash = \"{hash}\"\n"),
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let started = Instant::now();
    loop {
        // A failed attempt counts against the login limit (5 a minute): wait before each.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _, _) = login(&client, &url, "zhao", "pw-zhao").await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(started.elapsed() < DEADLINE, "SIGHUP did not reload");
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn posgw_hq_passwd_prints_an_argon2id_hash_of_stdin() {
    let mut child = posgw()
        .args(["hq", "passwd"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse\n")
        .expect("write");
    let output = child.wait_with_output().expect("output");
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).expect("utf-8");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(hq::verify_password("correct horse", hash));
    assert!(!hq::verify_password("correct horse\n", hash));
}
