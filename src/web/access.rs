//! Who may use the local API, checked in front of every route: [`protect`].
//!
//! - **Host** (every request): the `Host` header must be an IP literal, `localhost` (or a name
//!   under `.localhost`), this machine's host name (also as `NAME.local`) or a name listed in
//!   `[api] hosts`. A web page that had its own domain resolve to the gateway (DNS rebinding)
//!   sends its domain and is refused (403).
//! - **State-changing requests** (every method but GET, HEAD, OPTIONS): an `Origin` header, when
//!   present, must be this very server (`http://` + the `Host`), and `Sec-Fetch-Site`, when
//!   present, `same-origin` or `none`; anything else is a cross-site request and refused (403).
//!   The body must be declared `Content-Type: application/json` (415 otherwise), which a plain
//!   HTML form cannot send.
//! - **Pairing**: a request from loopback is trusted as before. A request from any other address
//!   (a clerk screen on the store LAN when `api.listen` is not a loopback address) needs the
//!   pairing cookie; without it the clerk page and the API answer 401 with a pointer to `/pair`.
//!   `/healthz`, `/metrics`, `/pair`, `POST /api/v1/pair` and `/assets/…` stay open. A station
//!   pairs once: `/pair` asks for the pairing token, `POST /api/v1/pair {"token":"…"}` checks it
//!   and sets the cookie `posgw_pairing` (HttpOnly, SameSite=Strict, ten years).
//!
//! The pairing token is 128 random bits in hex, created on first start in `data_dir` as
//! `api-pairing.token` (mode 0600) and kept across restarts; delete the file and restart to
//! unpair every station. It is shown in the log at start when the API listens beyond loopback,
//! and in `/api/v1/status` (`pairing_token`) and `posgw status` to loopback callers only.

use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

/// The cookie a paired station sends.
const COOKIE: &str = "posgw_pairing";

/// The token file in `data_dir`.
const TOKEN_FILE: &str = "api-pairing.token";

/// The pairing page.
const PAIR_HTML: &str = include_str!("assets/pair.html");

/// The pairing token, put into a request's extensions when it comes from loopback (so that
/// `/api/v1/status` can show it there and nowhere else).
#[derive(Debug, Clone)]
pub struct LocalPairingToken(pub Arc<str>);

/// What the checks need.
#[derive(Debug, Clone)]
pub struct Access {
    /// The pairing token (also the cookie's value).
    token: Arc<str>,
    /// Host names accepted besides IP literals and localhost, lowercase.
    names: Arc<[String]>,
}

impl Access {
    /// The pairing token of `data_dir` (created on first use); the host names accepted are
    /// `hosts` (`[api] hosts`, lowercase) and this machine's name.
    pub fn open(data_dir: &Path, hosts: &[String]) -> std::io::Result<Access> {
        let token = pairing_token(data_dir)?;
        let mut names = hosts.to_vec();
        if let Some(name) = machine_host_name() {
            let name = name.to_ascii_lowercase();
            names.push(format!("{name}.local"));
            names.push(name);
        }
        Ok(Access::new(&token, names))
    }

    /// Checks with this token and these extra host names.
    pub fn new(token: &str, names: Vec<String>) -> Access {
        Access {
            token: token.into(),
            names: names.into(),
        }
    }

    /// The pairing token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// True for a `Host` header value this server answers to.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // An IPv6 literal, with or without a port.
            Some(rest) => {
                return rest
                    .split_once(']')
                    .is_some_and(|(ip, _)| ip.parse::<Ipv6Addr>().is_ok())
            }
            None => match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            },
        };
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
    }

    /// True when the request carries the pairing cookie.
    fn paired(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                name == COOKIE && constant_time_eq(value.as_bytes(), self.token.as_bytes())
            })
    }
}

/// Puts the checks of the module doc in front of `router` and adds the pairing routes.
pub fn protect(router: Router, access: Access) -> Router {
    let pairing = Router::new()
        .route("/pair", get(pair_page))
        .route("/api/v1/pair", post(pair))
        .with_state(access.clone());
    router
        .merge(pairing)
        .layer(axum::middleware::from_fn_with_state(access, guard))
}

/// Paths open to unpaired stations beyond loopback.
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/metrics" | "/pair" | "/api/v1/pair")
        || path.starts_with("/assets/")
}

/// The checks, in the module doc's order.
async fn guard(State(access): State<Access>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // HTTP/1.1 requires Host; a request without one comes from no browser, so no rebinding.
    if let Some(host) = &host {
        if !access.host_allowed(host) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "Host '{host}' is not this gateway: use its IP address, localhost or its host name"
                ),
            );
        }
    }
    let method = request.method();
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        if let Some(problem) = cross_site(headers, host.as_deref()) {
            return refuse(StatusCode::FORBIDDEN, problem);
        }
        if !is_json(headers) {
            let found = headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("none");
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be application/json, found '{found}'"),
            );
        }
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    if is_loopback(peer) {
        request
            .extensions_mut()
            .insert(LocalPairingToken(access.token.clone()));
    } else if !open_path(request.uri().path()) && !access.paired(request.headers()) {
        return unpaired(request.uri().path());
    }
    next.run(request).await
}

/// True for a peer on 127.0.0.0/8 or ::1 (also as an IPv4-mapped IPv6 address, as a dual-stack
/// listener sees it). No peer address means the request did not come over a socket: remote.
fn is_loopback(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback())
}

/// Why a state-changing request is cross-site, if it is.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    if let Some(site) = headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok())
    {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!(
                "cross-site request refused (Sec-Fetch-Site: {site})"
            ));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("?");
    let same = host.is_some_and(|host| {
        origin
            .strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    });
    (!same).then(|| format!("cross-origin request refused (Origin: {origin})"))
}

/// True for `Content-Type: application/json` (parameters such as charset allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// `{"error":"…"}` with `status`.
fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// 401 for an unpaired station: a page pointing to `/pair`, or a JSON error for the API.
fn unpaired(path: &str) -> Response {
    const MESSAGE: &str = "this station is not paired with the gateway: open /pair and enter the pairing token (shown by `posgw status` on the gateway PC)";
    if path.starts_with("/api/") {
        return refuse(StatusCode::UNAUTHORIZED, MESSAGE.to_owned());
    }
    let body = "<!doctype html><meta charset=\"utf-8\"><title>未配对 Not paired</title>\
         <p>此收银台尚未与网关配对。This station is not paired with the gateway yet. \
         <a href=\"/pair\">配对 Pair it</a></p>";
    (StatusCode::UNAUTHORIZED, Html(body)).into_response()
}

/// `GET /pair`.
async fn pair_page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAIR_HTML)).into_response()
}

/// `POST /api/v1/pair` body.
#[derive(Debug, serde::Deserialize)]
struct PairBody {
    /// The pairing token as typed.
    token: String,
}

/// `POST /api/v1/pair`: the right token sets the cookie.
async fn pair(State(access): State<Access>, body: axum::body::Bytes) -> Response {
    let token = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) if value.is_object() => match serde_json::from_value::<PairBody>(value) {
            Ok(body) => body.token,
            Err(error) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("invalid request body: {error}"),
                )
            }
        },
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object like {\"token\":\"…\"}".to_owned(),
            )
        }
    };
    if !constant_time_eq(token.trim().as_bytes(), access.token.as_bytes()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "wrong pairing token: `posgw status` on the gateway PC shows it".to_owned(),
        );
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=315360000",
        access.token
    );
    let mut response = Json(serde_json::json!({ "paired": true })).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Reads the token file of `data_dir`, creating it (0600, 128 random bits) on first use.
fn pairing_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 16 => return Ok(text.trim().to_owned()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is too short to be a pairing token; delete it to have a new one made",
                    path.display()
                ),
            ))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let token: String = rand::random::<[u8; 16]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    std::fs::create_dir_all(data_dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    Ok(token)
}

/// This machine's host name, if it has one.
fn machine_host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// Byte equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn host_names_are_ip_literals_localhost_or_this_machine() {
        let access = Access::new(
            "0123456789abcdef",
            vec!["till-pc".into(), "till-pc.local".into()],
        );
        for good in [
            "127.0.0.1:7380",
            "192.168.1.20:7380",
            "10.0.0.5",
            "[::1]:7380",
            "[fe80::1]",
            "localhost:7380",
            "LOCALHOST",
            "app.localhost:7380",
            "till-pc:7380",
            "Till-PC.local",
            "till-pc.",
        ] {
            assert!(access.host_allowed(good), "{good}");
        }
        for bad in [
            "evil.example:7380",
            "evil.example",
            "127.0.0.1.nip.io:7380",
            "localhost.evil.example",
            "[evil]:80",
            "",
        ] {
            assert!(!access.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn only_same_origin_state_changes_pass() {
        let host = Some("127.0.0.1:7380");
        assert!(cross_site(&headers(&[]), host).is_none());
        assert!(cross_site(&headers(&[("origin", "http://127.0.0.1:7380")]), host).is_none());
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-origin")]), host).is_none());
        for bad in [
            headers(&[("origin", "http://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "https://127.0.0.1:7380")]),
            headers(&[("origin", "http://127.0.0.1:7381")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
        ] {
            assert!(cross_site(&bad, host).is_some(), "{bad:?}");
        }
        assert!(cross_site(&headers(&[("origin", "http://127.0.0.1:7380")]), None).is_some());
    }

    #[test]
    fn loopback_peers() {
        for local in [
            "127.0.0.1:5000",
            "127.0.0.2:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(
                is_loopback(Some(local.parse().expect("address"))),
                "{local}"
            );
        }
        for remote in [
            "192.0.2.2:5000",
            "[fd00::2]:5000",
            "[::ffff:192.0.2.2]:5000",
            "0.0.0.0:5000",
        ] {
            assert!(
                !is_loopback(Some(remote.parse().expect("address"))),
                "{remote}"
            );
        }
        assert!(!is_loopback(None));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[])));
    }

    #[test]
    fn the_cookie_must_carry_the_token() {
        let access = Access::new("0123456789abcdef", vec![]);
        assert!(access.paired(&headers(&[(
            "cookie",
            "a=b; posgw_pairing=0123456789abcdef"
        )])));
        assert!(!access.paired(&headers(&[("cookie", "posgw_pairing=0123456789abcdee")])));
        assert!(!access.paired(&headers(&[("cookie", "other=0123456789abcdef")])));
        assert!(!access.paired(&headers(&[])));
    }

    #[test]
    fn the_pairing_token_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = pairing_token(dir.path()).expect("created");
        assert_eq!(first.len(), 32);
        assert_eq!(pairing_token(dir.path()).expect("read"), first);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
