//! Who may use the local API: cross-site and DNS-rebinding requests are refused, bodies must be
//! JSON objects, and a station beyond loopback must pair once.
//!
//! "Beyond loopback" is tested for real: the gateway listens on 0.0.0.0 and the client connects
//! to this machine's own non-loopback address (the one a datagram socket would use to reach the
//! outside), so the gateway sees a peer that is not 127.0.0.0/8 or ::1. A machine with no such
//! address cannot run that test, and it says so.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use reqwest::header;
use serde_json::Value;

use crate::harness::{Gateway, PtyScanner, Store};
use crate::prompts::{campaign_store, EventStream};

/// Opens a prompt at till-1 by scanning a campaign product; returns its id.
async fn open_prompt(gateway: &Gateway, scanner: &mut PtyScanner) -> String {
    let mut events = EventStream::open(gateway, "till-1").await;
    scanner.send(b"]E06901234567892\r\n").await;
    loop {
        let (name, data) = events.next().await;
        if name == "prompt" {
            return data["id"].as_str().expect("prompt id").to_owned();
        }
    }
}

/// Ids of the prompts open now.
async fn open_ids(gateway: &Gateway) -> Vec<String> {
    let (code, body) = gateway
        .get("/api/v1/prompts")
        .await
        .expect("prompts answer");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Vec<Value>>(&body)
        .expect("prompt list")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Rewrites the store's config with `from` replaced by `to`.
fn replace_in_config(store: &Store, from: &str, to: &str) {
    let config = std::fs::read_to_string(store.config_path()).unwrap();
    std::fs::write(store.config_path(), config.replace(from, to)).unwrap();
}

/// POSTs `body` to `url` with `headers`; returns the response.
async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut request = client.post(url).body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn cross_site_posts_foreign_hosts_and_non_object_bodies_are_refused() {
    let store = campaign_store("120s");
    replace_in_config(
        &store,
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nhosts = [\"till-pc.store.example\"]",
    );
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let gateway = Gateway::start(&store).await;
    gateway.wait_device("scanner-1", "connected").await;
    let id = open_prompt(&gateway, &mut scanner).await;
    let client = crate::harness::client();
    let answer = format!("{}/api/v1/prompts/{id}/answer", gateway.api);
    let host = gateway.api.trim_start_matches("http://").to_owned();

    // What a form or fetch on another web site can send without a preflight.
    let response = post(
        &client,
        &answer,
        &[
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ],
        r#"{"option":"doctor"}"#,
    )
    .await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cross-origin"),
        "{body}"
    );
    // The same from a browser that names the site instead of the origin.
    let response = post(
        &client,
        &answer,
        &[
            ("sec-fetch-site", "cross-site"),
            ("content-type", "application/json"),
        ],
        r#"{"option":"doctor"}"#,
    )
    .await;
    assert_eq!(response.status(), 403);
    // Without an Origin (curl, the POS software) a text/plain body is still not JSON.
    let response = post(
        &client,
        &answer,
        &[("content-type", "text/plain")],
        r#"{"option":"doctor"}"#,
    )
    .await;
    assert_eq!(response.status(), 415);
    // DNS rebinding: a page of evil.example whose name now resolves to the gateway.
    for (method, url) in [
        ("GET", format!("{}/api/v1/status", gateway.api)),
        ("POST", answer.clone()),
    ] {
        let response = client
            .request(method.parse().unwrap(), &url)
            .header(header::HOST, "evil.example")
            .header(header::CONTENT_TYPE, "application/json")
            .body(r#"{"option":"doctor"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {url}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Host"), "{body}");
    }
    // Names the gateway answers to: localhost and the configured ones.
    for name in ["localhost", "till-pc.store.example"] {
        let port = host.rsplit(':').next().unwrap();
        let response = client
            .get(format!("{}/api/v1/status", gateway.api))
            .header(header::HOST, format!("{name}:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
    }
    // A JSON array is not an answer.
    let response = post(
        &client,
        &answer,
        &[("content-type", "application/json")],
        r#"["doctor"]"#,
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("JSON object"),
        "{body}"
    );
    assert_eq!(
        open_ids(&gateway).await,
        vec![id.clone()],
        "nothing was answered"
    );

    // The clerk page's own request: same origin, JSON object.
    let response = post(
        &client,
        &answer,
        &[
            ("origin", &format!("http://{host}")),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
        ],
        r#"{"option":"doctor","clerk":"c-17"}"#,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(open_ids(&gateway).await.is_empty());
    assert!(gateway.stop().await.success());
}

/// This machine's address on its way out: not loopback (fails the test when there is none).
fn non_loopback_address() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    // No datagram is sent: connecting a UDP socket only picks the route and source address.
    socket
        .connect("192.0.2.1:9")
        .or_else(|_| socket.connect("203.0.113.1:9"))
        .expect("this test needs a route to a non-loopback network");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this test needs a non-loopback local address, found {ip}"
    );
    ip
}

/// The store of [`campaign_store`], with the API on every address.
fn store_on_every_address() -> Store {
    let store = campaign_store("120s");
    replace_in_config(&store, "listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"");
    store
}

#[tokio::test]
async fn a_station_beyond_loopback_must_pair_once_and_then_works() {
    let store = store_on_every_address();
    let mut scanner = PtyScanner::plug(&store.path("scanner"));
    let mut gateway = Gateway::start(&store).await;
    // The harness talks to the gateway over loopback.
    let port: u16 = gateway.api.rsplit(':').next().unwrap().parse().unwrap();
    gateway.api = format!("http://127.0.0.1:{port}");
    gateway.wait_device("scanner-1", "connected").await;
    let id = open_prompt(&gateway, &mut scanner).await;

    let remote = SocketAddr::new(non_loopback_address(), port);
    let base = format!("http://{remote}");
    let client = crate::harness::client();
    let get = |path: &str, cookie: Option<&str>| {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send()
    };

    // Unpaired: the clerk page and the API refuse with a pointer to /pair; health stays open.
    for path in [
        "/",
        "/station/till-1",
        "/api/v1/prompts",
        "/api/v1/status",
        "/api/v1/events?station=till-1",
    ] {
        let response = get(path, None).await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert!(response.text().await.unwrap().contains("/pair"), "{path}");
    }
    let response = post(
        &client,
        &format!("{base}/api/v1/prompts/{id}/answer"),
        &[("content-type", "application/json")],
        r#"{"option":"doctor"}"#,
    )
    .await;
    assert_eq!(response.status(), 401);
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    let response = get("/pair", None).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("pair-token"));
    assert_eq!(open_ids(&gateway).await, vec![id.clone()]);

    // Loopback sees the token; `posgw status` shows it; the start-up log shows it too.
    let token = gateway.status().await["pairing_token"]
        .as_str()
        .expect("status gives loopback callers the pairing token")
        .to_owned();
    assert_eq!(token.len(), 32);
    let output = crate::harness::posgw()
        .args(["status", "--api", &gateway.api])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(&token));
    assert_eq!(
        gateway.log_count(&token),
        1,
        "the log shows the token at start"
    );

    // A wrong token pairs nothing; the right one sets the cookie.
    let pair = |token: String| {
        client
            .post(format!("{base}/api/v1/pair"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "token": token }).to_string())
            .send()
    };
    let response = pair("0".repeat(32)).await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let response = pair(token.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .expect("pairing sets a cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // Paired: the page, the stream and the answer work; status keeps the token to loopback.
    for path in ["/", "/station/till-1", "/api/v1/prompts"] {
        assert_eq!(
            get(path, Some(&cookie)).await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let status: Value = get("/api/v1/status", Some(&cookie))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["pairing_token"].is_null(), "{status}");
    assert_eq!(status["store"], "WZ-LC-001");
    let response = post(
        &client,
        &format!("{base}/api/v1/prompts/{id}/answer"),
        &[("cookie", &cookie), ("content-type", "application/json")],
        r#"{"option":"doctor","clerk":"c-17"}"#,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(open_ids(&gateway).await.is_empty());

    // Pairing survives a restart.
    assert!(gateway.stop().await.success());
    let gateway = Gateway::start(&store).await;
    let port: u16 = gateway.api.rsplit(':').next().unwrap().parse().unwrap();
    let response = client
        .get(format!(
            "http://{}/api/v1/prompts",
            SocketAddr::new(remote.ip(), port)
        ))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(gateway.stop().await.success());
}
