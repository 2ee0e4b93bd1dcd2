//! The HTTP side of the receiver: routes, bearer-token checks, and the entry points
//! [`run`] (for `posgw hq`) and [`start`] (in-process, for tests and `posgw demo`).

use anyhow::Context as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::budget::{self, BodyBudget, Reservation};
use super::config::HqSettings;
use super::metrics::HqMetrics;
use super::record::{self, DecompressError, Encoding, IncomingBatch, Rejection};
use super::store::RecordQuery;
use super::writer::StoreHandle;

/// `limit` of `/v1/records` when not given.
const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` of `/v1/records`.
const MAX_LIMIT: usize = 10_000;
/// The first plain grant of a body adds this fraction of its size for the records' index.
const INDEX_ESTIMATE_DIVISOR: u64 = 8;
/// Seconds a gateway is asked to wait after a 503.
const RETRY_AFTER_SECONDS: &str = "5";
/// Response header of `/v1/records` giving the `after` of the next page.
pub const NEXT_AFTER_HEADER: &str = "posgw-next-after";

/// Opens the database, then listens on `hq.listen` and serves until `shutdown` completes, then
/// finishes the requests in flight, flushes and closes the database.
///
/// The port is bound only once the database is open and recovered: a receiver still recovering
/// after a crash refuses connections (gateways retry) instead of accepting requests it cannot
/// answer yet.
pub async fn run(
    settings: HqSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::open(&settings).await?;
    let listen = settings.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (hq.listen)"))?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("hq listening on http://{addr}");
    }
    serve(app, listener, shutdown).await
}

/// A receiver started in-process by [`start`].
pub struct RunningHq {
    /// The address it is listening on.
    local_addr: SocketAddr,
    /// Completing this stops it.
    stop: oneshot::Sender<()>,
    /// The serving task; its result is the receiver's.
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningHq {
    /// The address the receiver is listening on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR`, the base of every endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops the receiver and waits until the database is flushed and closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|error| anyhow::anyhow!("the HQ receiver task failed: {error}"))?
    }
}

/// Opens the database and starts serving on `listener` in a background task.
///
/// Errors opening the database are returned here, not from the task.
pub async fn start(settings: HqSettings, listener: TcpListener) -> anyhow::Result<RunningHq> {
    let local_addr = listener.local_addr()?;
    let app = App::open(&settings).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(app, listener, async move {
        let _ = stopped.await;
    }));
    Ok(RunningHq {
        local_addr,
        stop,
        task,
    })
}

/// Serves until `shutdown`, then closes the database.
async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "HQ receiver listening");
    let store = app.store.clone();
    let connections = app.metrics.connections.clone();
    let limits = crate::serve::Limits::hq(crate::serve::open_files_limit());
    tracing::info!(
        max_connections = limits.max_connections,
        "HQ receiver connection cap"
    );
    crate::serve::serve(listener, router(app), limits, connections, shutdown).await;
    // The router (and its handle clones) is gone now; this waits for the last flush.
    store.close().await;
    tracing::info!(%address, "HQ receiver stopped");
    Ok(())
}

/// Shared state of the handlers. Cheap to clone.
#[derive(Clone)]
struct App {
    /// The database.
    store: StoreHandle,
    /// Who may do what.
    auth: Arc<Auth>,
    /// Metric families.
    metrics: HqMetrics,
    /// Largest body, compressed and decompressed.
    max_body: u64,
    /// Bytes of bodies held at once.
    budget: BodyBudget,
}

impl App {
    async fn open(settings: &HqSettings) -> anyhow::Result<App> {
        let metrics = HqMetrics::new();
        let store = StoreHandle::open(&settings.data_dir, metrics.clone()).await?;
        Ok(App {
            store,
            auth: Arc::new(Auth {
                stores: settings
                    .stores
                    .iter()
                    .map(|store| (store.token.clone(), store.code.clone()))
                    .collect(),
                admin: settings.admin_token.clone(),
            }),
            budget: BodyBudget::new(
                settings.effective_body_budget(),
                budget::WAIT,
                metrics.clone(),
            ),
            metrics,
            max_body: settings.max_body,
        })
    }
}

/// The routes.
fn router(app: App) -> Router {
    let body_limit = usize::try_from(app.max_body).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/v1/batches",
            post(post_batches).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/v1/records", get(get_records))
        .route("/v1/stats", get(get_stats))
        .route("/v1/trace", get(get_trace))
        .route("/", get(super::dashboard::page))
        .route("/assets/{file}", get(super::dashboard::asset))
        .route("/healthz", get(get_healthz))
        .route("/metrics", get(get_metrics))
        .with_state(app)
}

/// The tokens: one per store, plus the admin token of the read endpoints.
struct Auth {
    /// (token, store code) pairs.
    stores: Vec<(String, String)>,
    /// The admin token, if configured.
    admin: Option<String>,
}

/// Who sent a request.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    /// A store's gateway (its code).
    Store(String),
    /// An analyst with the admin token.
    Admin,
    /// No token, or an unknown one.
    Unknown,
}

impl Auth {
    fn identify(&self, headers: &HeaderMap) -> Caller {
        let Some(token) = bearer_token(headers) else {
            return Caller::Unknown;
        };
        // Every token is compared, in constant time per token, so timing tells nothing about
        // which token (or which prefix) came close.
        let mut caller = Caller::Unknown;
        for (store_token, code) in &self.stores {
            if constant_time_eq(store_token.as_bytes(), token.as_bytes()) {
                caller = Caller::Store(code.clone());
            }
        }
        if let Some(admin) = &self.admin {
            if constant_time_eq(admin.as_bytes(), token.as_bytes()) {
                caller = Caller::Admin;
            }
        }
        caller
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

/// Byte equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An error answer: a status and a JSON body `{"error": .., "line": ..}`.
#[derive(Debug)]
struct ApiError {
    /// The status code.
    status: StatusCode,
    /// What went wrong.
    message: String,
    /// The body line at fault (400 and 403 of `/v1/batches`).
    line: Option<usize>,
    /// A 503 because the body budget stayed full (counted in a metric, not logged).
    busy: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            line: None,
            busy: false,
        }
    }

    /// 503: the body budget had no room within its wait; the gateway retries.
    fn busy() -> Self {
        ApiError {
            busy: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver holds as many batches as its body_budget allows; retry later",
            )
        }
    }

    fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(line) = self.line {
            body["line"] = line.into();
        }
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"posgw-hq\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// `POST /v1/batches`.
async fn post_batches(State(app): State<App>, request: Request) -> Response {
    let response = match ingest(&app, request).await {
        Ok(outcome) => Json(serde_json::json!({
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
        }))
        .into_response(),
        Err(error) => {
            if error.status.is_server_error() && !error.busy {
                tracing::warn!(error = %error.message, "batch not stored");
            } else {
                tracing::debug!(status = %error.status, error = %error.message, "batch refused");
            }
            error.into_response()
        }
    };
    app.metrics.request("batches", response.status().as_u16());
    response
}

/// The checks of `POST /v1/batches`, in order: token (401/403), content type and encoding
/// (415), size (413), every record (400/403), then the store (503 when it cannot write).
async fn ingest(app: &App, request: Request) -> Result<super::writer::IngestOutcome, ApiError> {
    let headers = request.headers();
    let store = match app.auth.identify(headers) {
        Caller::Store(code) => code,
        Caller::Admin => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the admin token cannot post batches; use the store's token",
            ))
        }
        Caller::Unknown => {
            return Err(ApiError::unauthorized(
                "a store's token is required: Authorization: Bearer TOKEN",
            ))
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !record::is_ndjson(content_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/x-ndjson, found '{content_type}'"),
        ));
    }
    let encoding_header = match headers.get(header::CONTENT_ENCODING) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content encoding is not readable text",
            )
        })?),
    };
    let encoding = Encoding::from_header(encoding_header).map_err(|found| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content encoding must be gzip, zstd or none, found '{found}'"),
        )
    })?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than max_body ({} bytes)", app.max_body),
        )
    };
    if declared.is_some_and(|length| length > app.max_body) {
        return Err(too_large());
    }
    // Room in the body budget before the body is read: its declared length, or max_body
    // when it declares none (given back down to its real size once read).
    let mut reservation = app.budget.empty();
    reservation
        .reserve_sent(declared.unwrap_or(app.max_body))
        .await
        .map_err(|_| ApiError::busy())?;
    // The route's DefaultBodyLimit makes this fail with 413 past max_body, also for chunked
    // bodies that declared no length.
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(
                    rejection.status(),
                    format!("cannot read the body: {rejection}"),
                )
            }
        })?;

    reservation.shrink_sent_to(body.len() as u64);
    let max_body = app.max_body;
    let (batch, reservation) = tokio::task::spawn_blocking(move || {
        decode_batch(body, encoding, max_body, &store, reservation)
    })
    .await
    .map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("checking the batch panicked: {error}"),
        )
    })??;
    app.metrics.batch_bytes.observe(batch.body.len() as f64);
    let stored = app
        .store
        .ingest(batch)
        .await
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.0));
    // Held until the batch is answered: until then it waits in the writer's queue.
    drop(reservation);
    stored
}

/// Decompresses and validates a body (CPU work, run on a blocking thread), growing
/// `reservation` (which holds the body as sent) for the decompressed body and its parsed
/// records, and giving back the sent body's share once it is decompressed.
fn decode_batch(
    body: Bytes,
    encoding: Encoding,
    max_body: u64,
    store: &str,
    mut reservation: Reservation,
) -> Result<(IncomingBatch, Reservation), ApiError> {
    // The first grant is the size the body states, plus an estimate of its records' index
    // (an entry per record of 400 bytes; checked against the real index once parsed).
    let plain = record::decompress_granted(body, encoding, max_body, &mut |allowed| {
        reservation
            .grow_plain_blocking(allowed + allowed / INDEX_ESTIMATE_DIVISOR)
            .is_ok()
    })
    .map_err(|error| match error {
        DecompressError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body decompresses to more than max_body ({max_body} bytes)"),
        ),
        DecompressError::Corrupt(reason) => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("body cannot be decompressed: {reason}"),
        ),
        DecompressError::Busy => ApiError::busy(),
    })?;
    // The body as sent is gone (an identity body became `plain` without a copy).
    reservation.release_sent();
    reservation
        .grow_plain_blocking(plain.capacity() as u64 + record::parse_size(&plain))
        .map_err(|_| ApiError::busy())?;
    let batch = record::parse_batch(plain, store).map_err(|rejection| match rejection {
        Rejection::Malformed { line, message } => ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("line {line}: {message}"),
            line: Some(line),
            busy: false,
        },
        Rejection::WrongStore { line, message } => ApiError {
            status: StatusCode::FORBIDDEN,
            message,
            line: Some(line),
            busy: false,
        },
    })?;
    // Summaries are only known once parsed (a few hundred bytes for an attribution, a few
    // KiB at most for a consultation of 32 steps).
    reservation
        .grow_plain_blocking(batch.memory_size())
        .map_err(|_| ApiError::busy())?;
    reservation.shrink_plain_to(batch.memory_size());
    Ok((batch, reservation))
}

/// The query string of `/v1/records`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsParams {
    /// Only this store's records.
    store: Option<String>,
    /// Only records of this kind.
    kind: Option<String>,
    /// Only records after this hq_seq.
    after: Option<String>,
    /// At most this many records.
    limit: Option<String>,
}

/// Turns the query string into a [`RecordQuery`]; an empty value counts as absent.
fn record_query(uri: &Uri) -> Result<RecordQuery, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let params = match uri.query() {
        None => RecordsParams::default(),
        Some(_) => {
            axum::extract::Query::<RecordsParams>::try_from_uri(uri)
                .map_err(|rejection| bad(format!("bad query: {}", rejection.body_text())))?
                .0
        }
    };
    let present = |value: Option<String>| value.filter(|text| !text.is_empty());
    let after = match present(params.after) {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            bad(format!(
                "'after' must be an hq_seq (an integer), found '{text}'"
            ))
        })?,
    };
    let limit = match present(params.limit) {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| bad(format!("'limit' must be 1 to {MAX_LIMIT}, found '{text}'")))?,
    };
    Ok(RecordQuery {
        store: present(params.store),
        kind: present(params.kind),
        after,
        limit,
    })
}

/// `GET /v1/records`.
async fn get_records(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let response = match read_records(&app, &headers, &uri).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    app.metrics.request("records", response.status().as_u16());
    response
}

async fn read_records(app: &App, headers: &HeaderMap, uri: &Uri) -> Result<Response, ApiError> {
    require_admin(app, headers)?;
    let query = record_query(uri)?;
    let page = app.store.read(query).await.map_err(|error| {
        tracing::error!(error = format!("{error:#}"), "reading records failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read records: {error:#}"),
        )
    })?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            ),
            (
                header::HeaderName::from_static(NEXT_AFTER_HEADER),
                HeaderValue::from(page.next_after),
            ),
        ],
        page.body,
    )
        .into_response())
}

/// `GET /v1/stats`.
async fn get_stats(State(app): State<App>, headers: HeaderMap) -> Response {
    let response = match require_admin(&app, &headers) {
        Ok(()) => {
            let report = app.store.stats();
            let mut body = serde_json::to_value(&report).unwrap_or_default();
            body["generated_at"] = chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into();
            Json(body).into_response()
        }
        Err(error) => error.into_response(),
    };
    app.metrics.request("stats", response.status().as_u16());
    response
}

/// `GET /v1/trace`: a receipt traced to its attributions and scans (see `dashboard`).
async fn get_trace(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let response = match require_admin(&app, &headers) {
        Ok(()) => super::dashboard::trace(&app.store, &uri).await,
        Err(error) => error.into_response(),
    };
    app.metrics.request("trace", response.status().as_u16());
    response
}

/// 401 unless the request carries the admin token.
fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match app.auth.identify(headers) {
        Caller::Admin => Ok(()),
        _ => Err(ApiError::unauthorized(
            "the admin token is required: Authorization: Bearer TOKEN",
        )),
    }
}

/// `GET /healthz`: `ok`, or 503 with the reason the database stopped accepting batches.
async fn get_healthz(State(app): State<App>) -> Response {
    let response = match app.store.failure() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    };
    app.metrics.request("healthz", response.status().as_u16());
    response
}

/// `GET /metrics`.
async fn get_metrics(State(app): State<App>) -> Response {
    app.metrics.request("metrics", 200);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("header"),
        );
        headers
    }

    #[test]
    fn tokens_identify_callers() {
        let auth = Auth {
            stores: vec![("tok-a".into(), "S1".into()), ("tok-b".into(), "S2".into())],
            admin: Some("tok-admin".into()),
        };
        assert_eq!(
            auth.identify(&headers("Bearer tok-b")),
            Caller::Store("S2".into())
        );
        assert_eq!(
            auth.identify(&headers("bearer  tok-a ")),
            Caller::Store("S1".into())
        );
        assert_eq!(auth.identify(&headers("Bearer tok-admin")), Caller::Admin);
        assert_eq!(auth.identify(&headers("Bearer tok-c")), Caller::Unknown);
        assert_eq!(auth.identify(&headers("Basic tok-a")), Caller::Unknown);
        assert_eq!(auth.identify(&headers("Bearer")), Caller::Unknown);
        assert_eq!(auth.identify(&HeaderMap::new()), Caller::Unknown);
    }

    #[test]
    fn record_queries() {
        let uri: Uri = "/v1/records?store=S1&kind=&after=5&limit=10"
            .parse()
            .expect("uri");
        assert_eq!(
            record_query(&uri).expect("valid"),
            RecordQuery {
                store: Some("S1".into()),
                kind: None,
                after: 5,
                limit: 10
            }
        );
        let uri: Uri = "/v1/records".parse().expect("uri");
        assert_eq!(record_query(&uri).expect("valid").limit, DEFAULT_LIMIT);
        for bad in ["limit=0", "limit=10001", "after=x", "stor=S1"] {
            let uri: Uri = format!("/v1/records?{bad}").parse().expect("uri");
            let error = record_query(&uri).expect_err(bad);
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
