//! The HTTP side of the receiver: routes, bearer-token checks, and the entry points
//! [`run`] (for `posgw hq`) and [`start`] (in-process, for tests and `posgw demo`).

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::access::{
    Caller, Directory, FailureLimiter, Scope, Sessions, SESSION_COOKIE, SESSION_LIFETIME,
};
use super::alerts::{self, AlertSettings, AlertState, AlertsHandle, LifecycleError};
use super::budget::{self, BodyBudget, Reservation};
use super::config::HqSettings;
use super::manage::{ManageDb, Mirror};
use super::metrics::HqMetrics;
use super::record::{self, DecompressError, Encoding, IncomingBatch, Rejection};
use super::stats::StoreView;
use super::storage::StoreHandle;
use super::store::RecordQuery;
use super::yardsticks;

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
    hangups: std::io::Result<tokio::signal::unix::Signal>,
) -> anyhow::Result<()> {
    let app = App::open(&settings).await?;
    let reloader = app.reloader();
    tokio::spawn(async move {
        let mut hangups = match hangups {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reloading is off");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading stores, regions, users and the fleet configuration");
            let _ = reloader.reload();
        }
    });
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
    /// Reloads stores, regions and users, as SIGHUP does for `posgw hq`.
    reloader: Reloader,
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

    /// Reads the configuration file again and applies its stores, regions and users (what
    /// SIGHUP does for `posgw hq`); on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        self.reloader.reload()
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
    let reloader = app.reloader();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(app, listener, async move {
        let _ = stopped.await;
    }));
    Ok(RunningHq {
        local_addr,
        stop,
        task,
        reloader,
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
    let management = app.management.clone();
    let connections = app.metrics.connections.clone();
    let limits = crate::serve::Limits::hq(crate::serve::open_files_limit());
    tracing::info!(
        max_connections = limits.max_connections,
        "HQ receiver connection cap"
    );
    crate::serve::serve(listener, router(app), limits, connections, shutdown).await;
    // The alert task lets go of its store handle and the management database.
    management.shut_down().await;
    // The router (and its handle clones) is gone now; this waits for the last flush.
    store.close().await;
    tracing::info!(%address, "HQ receiver stopped");
    Ok(())
}

/// Re-reads the configuration and swaps in its tokens, regions and users.
#[derive(Clone)]
struct Reloader {
    /// The main configuration file (`None`: settings built in code, nothing to reload).
    path: Option<PathBuf>,
    /// The directory in use.
    directory: Arc<RwLock<Arc<Directory>>>,
    /// The management owners (the alert task takes the rules, regions and targets; the fleet
    /// the campaigns, flows, stores and regions), and the settings to start them with.
    management: Arc<Management>,
}

impl Reloader {
    fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        match super::config::load_config(path) {
            Ok(settings) => {
                let directory = Directory::new(&settings);
                *self.directory.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(directory);
                self.management.reload(&settings);
                tracing::info!(
                    stores = settings.stores.len(),
                    regions = settings.regions.len(),
                    users = settings.users.len(),
                    "configuration reloaded (listen, data_dir, sizes, timezone and \
                     evaluate_every need a restart)"
                );
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "reload refused; the configuration in use stays");
                Err(error)
            }
        }
    }
}

/// Shared state of the handlers. Cheap to clone.
#[derive(Clone)]
struct App {
    /// The database.
    store: StoreHandle,
    /// The alert task (rules, alerts, the notifier's outbox) and the fleet's owner, when this
    /// receiver runs them.
    management: Arc<Management>,
    /// Who may do what: tokens, users, regions (replaced on reload).
    directory: Arc<RwLock<Arc<Directory>>>,
    /// The main configuration file, for reloads.
    config_path: Option<PathBuf>,
    /// Login sessions.
    sessions: Arc<Sessions>,
    /// Failed logins.
    limiter: Arc<FailureLimiter>,
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
        // The management database first: if it cannot be opened, the record store was not.
        let data_dir = settings.data_dir.clone();
        let manage = tokio::task::spawn_blocking(move || super::fleet::open_manage_db(&data_dir))
            .await
            .map_err(|error| anyhow::anyhow!("opening the management database panicked: {error}"))?
            .map_err(|error| {
                let path = settings.data_dir.join("manage");
                if error.to_string().contains("could not acquire lock") {
                    anyhow::anyhow!(
                        "the HQ management database at {} is in use by another process",
                        path.display()
                    )
                } else {
                    anyhow::anyhow!(
                        "cannot open the HQ management database at {}: {error}",
                        path.display()
                    )
                }
            })?;
        let store = StoreHandle::open_storage(
            &settings.storage,
            &settings.data_dir,
            settings.timezone,
            metrics.clone(),
        )
        .await?;
        let management = Management::start(settings, manage, &store, &metrics).await?;
        let sessions = Arc::new(Sessions::default());
        if let Some(pg) = store.postgres() {
            tokio::spawn(share_sessions(pg.clone(), Arc::downgrade(&sessions)));
        }
        Ok(App {
            sessions,
            store,
            management,
            directory: Arc::new(RwLock::new(Arc::new(Directory::new(settings)))),
            config_path: settings.files.first().cloned(),
            limiter: Arc::new(FailureLimiter::default()),
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

impl App {
    fn reloader(&self) -> Reloader {
        Reloader {
            path: self.config_path.clone(),
            directory: self.directory.clone(),
            management: self.management.clone(),
        }
    }

    /// The alert task; 503 on a receiver that does not run it now.
    fn alerts(&self) -> Result<AlertsHandle, ApiError> {
        self.management
            .running()
            .map(|running| running.alerts)
            .ok_or_else(not_managing)
    }

    /// The directory in use.
    fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Who sent a request: a bearer token, else a session cookie.
    fn identify(&self, headers: &HeaderMap) -> Caller {
        let directory = self.directory();
        if let Some(token) = bearer_token(headers) {
            return directory.identify_token(token);
        }
        session_id(headers)
            .and_then(|id| self.sessions.user(id))
            .and_then(|name| directory.reader(&name))
            .unwrap_or(Caller::Unknown)
    }
}

/// The session id of the request's cookie, if it sends one.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The routes.
fn router(app: App) -> Router {
    let body_limit = usize::try_from(app.max_body).unwrap_or(usize::MAX);
    let identify: super::fleet::Identify = {
        let app = app.clone();
        Arc::new(move |headers: &HeaderMap| app.identify(headers))
    };
    let current: super::fleet::Current = {
        let management = app.management.clone();
        Arc::new(move || management.running().map(|running| running.fleet))
    };
    let fleet = super::fleet::routes(current, app.metrics.clone(), identify);
    Router::new()
        .route(
            "/v1/batches",
            post(post_batches).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/v1/records", get(get_records))
        .route("/v1/stats", get(get_stats))
        .route("/v1/trace", get(get_trace))
        .route("/v1/yardsticks", get(get_yardsticks))
        .route("/v1/login", post(post_login))
        .route("/v1/logout", post(post_logout))
        .route("/v1/me", get(get_me))
        .route("/v1/alerts", get(get_alerts))
        .route("/v1/alerts/evaluate", post(post_evaluate))
        .route("/v1/alerts/{id}", get(get_alert))
        .route("/v1/alerts/{id}/ack", post(post_ack))
        .route("/v1/alerts/{id}/resolve", post(post_resolve))
        .route("/login", get(super::dashboard::login_page))
        .route("/", get(super::dashboard::page))
        .route("/assets/{file}", get(super::dashboard::asset))
        .route("/healthz", get(get_healthz))
        .route("/healthz/manage", get(get_healthz_manage))
        .route("/metrics", get(get_metrics))
        .with_state(app)
        .merge(fleet)
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
            // While the database is known to be down (said once, by the health check), each
            // gateway's retry is not a line of its own.
            if error.status.is_server_error() && !error.busy && app.store.failure().is_none() {
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
    let store = match app.identify(headers) {
        Caller::Store(code) => code,
        Caller::Reader { .. } => {
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
        within: None,
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
    let (_, scope) = require_reader(app, headers)?;
    let mut query = record_query(uri)?;
    if let Some(store) = &query.store {
        if !scope.sees_store(store) {
            return Err(outside_scope(&format!("store '{store}'")));
        }
    } else {
        match &scope {
            Scope::All => {}
            Scope::Store(code) => query.store = Some(code.clone()),
            Scope::Region { stores, .. } => {
                query.within = Some(stores.iter().cloned().collect());
            }
        }
    }
    let page = app.store.read(query).await.map_err(|error| {
        if app.store.failure().is_none() {
            tracing::error!(error = format!("{error:#}"), "reading records failed");
        }
        // A shared database that does not answer now may answer in a moment: the reader
        // (or the balancer in front) tries again. Its error text stays in the log.
        if app.store.is_shared() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read records now: the database does not answer",
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read records: {error:#}"),
            )
        }
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
    let response = match require_reader(&app, &headers) {
        Ok((_, scope)) => {
            let report = match &scope {
                Scope::All => app.store.stats(),
                Scope::Store(code) => app.store.stats_for(|store| {
                    if store == code {
                        StoreView::Full
                    } else {
                        StoreView::Hidden
                    }
                }),
                Scope::Region { stores, .. } => {
                    let directory = app.directory();
                    app.store.stats_for(|store| {
                        if stores.contains(store) {
                            StoreView::Full
                        } else {
                            StoreView::Region(
                                directory.region_of(store).unwrap_or("(none)").to_string(),
                            )
                        }
                    })
                }
            };
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
    let response = match require_reader(&app, &headers) {
        Ok((_, scope)) => super::dashboard::trace(&app.store, &uri, &scope).await,
        Err(error) => error.into_response(),
    };
    app.metrics.request("trace", response.status().as_u16());
    response
}

/// `GET /v1/yardsticks`: the three yardsticks over store-local days (see `yardsticks`).
async fn get_yardsticks(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let response = match yardsticks(&app, &headers, &uri).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics
        .request("yardsticks", response.status().as_u16());
    response
}

async fn yardsticks(
    app: &App,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<serde_json::Value, ApiError> {
    let (_, scope) = require_reader(app, headers)?;
    let today = app
        .store
        .daily(|daily| daily.day_of(chrono::Utc::now().fixed_offset()));
    let refused = |refusal: yardsticks::Refusal| ApiError::new(refusal.status, refusal.message);
    let query = yardsticks::parse_query(uri, today).map_err(refused)?;
    let directory = app.directory();
    let alerts = app.alerts()?.facts().await.map_err(unavailable)?;
    let context = yardsticks::Context {
        directory: &directory,
        scope: &scope,
        alerts: &alerts,
    };
    yardsticks::answer(&query, &context, |read| {
        app.store.daily(|daily| read(daily))
    })
    .map_err(refused)
}

/// The reader's name and scope; 401 for no or an unknown token or session, and for a store's
/// token (a gateway posts, it does not read).
fn require_reader(app: &App, headers: &HeaderMap) -> Result<(String, Scope), ApiError> {
    match app.identify(headers) {
        Caller::Reader { name, scope } => Ok((name, scope)),
        _ => Err(ApiError::unauthorized(
            "sign in at /login, or send the admin or a user's token: Authorization: Bearer TOKEN",
        )),
    }
}

/// 403: `what` is outside the caller's scope.
fn outside_scope(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("{what} is outside what this user may see"),
    )
}

/// The body of `POST /v1/login`.
#[derive(Debug, Deserialize)]
struct LoginBody {
    /// The user's name.
    name: String,
    /// The password, never logged.
    password: String,
}

/// `POST /v1/login`: a session cookie for a user's name and password.
async fn post_login(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let response = match login(&app, peer, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    app.metrics.request("login", response.status().as_u16());
    response
}

async fn login(app: &App, peer: SocketAddr, body: &[u8]) -> Result<Response, ApiError> {
    let LoginBody { name, password } = serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"name\":…,\"password\":…}}: {error}"),
        )
    })?;
    let address = peer.ip();
    if let Some(wait) = app.limiter.blocked(&name, address) {
        // Logged once when the block starts (below); each refusal is counted by status.
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins; try again in {wait} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(response);
    }
    let directory = app.directory();
    let checked_name = name.clone();
    let ok = tokio::task::spawn_blocking(move || directory.check_login(&checked_name, &password))
        .await
        .unwrap_or(false);
    let Some(Caller::Reader { scope, .. }) = ok.then(|| app.directory().reader(&name)).flatten()
    else {
        let now_blocked = app.limiter.failed(&name, address);
        tracing::warn!(name, %address, "failed login");
        if now_blocked {
            tracing::warn!(name, %address, "too many failed logins: this name or address is refused for a minute");
        }
        return Err(ApiError::unauthorized("wrong name or password"));
    };
    let id = app.sessions.create(&name);
    if let Some(pg) = app.store.postgres() {
        let hash = super::access::session_hash(&id);
        let expires_at = chrono::Utc::now()
            + chrono::Duration::from_std(SESSION_LIFETIME).unwrap_or(chrono::Duration::zero());
        if let Err(error) = pg.save_session(&hash, &name, expires_at).await {
            // A session the other receivers do not know would work here only.
            app.sessions.remove(&id);
            tracing::error!(error = %format!("{error:#}"), "cannot save a login session");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot sign in now: the database does not answer",
            ));
        }
    }
    tracing::info!(name, %address, "login");
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Json(me_body(&name, &scope)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `{"name","role","region"?,"store"?}` of a reader.
fn me_body(name: &str, scope: &Scope) -> serde_json::Value {
    match scope {
        Scope::All => serde_json::json!({"name": name, "role": "admin"}),
        Scope::Region { id, .. } => {
            serde_json::json!({"name": name, "role": "region", "region": id})
        }
        Scope::Store(code) => serde_json::json!({"name": name, "role": "store", "store": code}),
    }
}

/// `POST /v1/logout`: ends the session of the cookie and clears it.
async fn post_logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        // Ended for every receiver first: a session ended here only would come back from
        // the table at the next look.
        if let Some(pg) = app.store.postgres() {
            if let Err(error) = pg.end_session(&super::access::session_hash(id)).await {
                tracing::error!(error = %format!("{error:#}"), "cannot end a login session");
                app.metrics.request("logout", 503);
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot sign out now: the database does not answer; try again",
                )
                .into_response();
            }
        }
        app.sessions.remove(id);
    }
    app.metrics.request("logout", 204);
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
    )
        .into_response()
}

/// `GET /v1/me`: who the request's token or session is, and what it may see.
async fn get_me(State(app): State<App>, headers: HeaderMap) -> Response {
    let response = match require_reader(&app, &headers) {
        Ok((name, scope)) => Json(me_body(&name, &scope)).into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics.request("me", response.status().as_u16());
    response
}

/// What the alert task takes from the configuration.
fn alert_settings(settings: &HqSettings) -> AlertSettings {
    AlertSettings {
        rules: settings.alerts.clone(),
        regions: settings.regions.clone(),
        notify: settings.notify.clone(),
        stores: settings
            .stores
            .iter()
            .map(|store| store.code.clone())
            .collect(),
        public_url: settings.public_url.clone(),
    }
}

/// Starts the notifier and the alert task in the management database `db`.
fn start_alerts(
    settings: &HqSettings,
    db: &ManageDb,
    store: &StoreHandle,
    metrics: HqMetrics,
) -> anyhow::Result<AlertsHandle> {
    let (delivered_sender, delivered) = tokio::sync::mpsc::channel(1024);
    let notifier = super::notify::spawn(
        db,
        settings.notify.clone(),
        super::notify::NotifyOptions::default(),
        metrics,
        delivered_sender,
    )?;
    let (handle, _task) = alerts::spawn(
        db,
        store.clone(),
        notifier,
        delivered,
        alert_settings(settings),
        settings.evaluate_every,
    )?;
    Ok(handle)
}

/// 503 on a receiver that does not run the alerts and the fleet now.
fn not_managing() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "this receiver does not run the alerts and the fleet now: another one holds the \
         management lock (GET /healthz/manage answers 200 there)",
    )
}

/// What runs the management state on this receiver now.
#[derive(Clone)]
struct Running {
    /// The alert task and its notifier.
    alerts: AlertsHandle,
    /// The fleet's owner.
    fleet: super::fleet::FleetHandle,
    /// With PostgreSQL: flushes the management database now and then, so that changes no
    /// owner flushes at once (heartbeats) reach the database too.
    flusher: Option<Arc<tokio::task::JoinHandle<()>>>,
}

/// How often the managing receiver writes changes no owner flushed yet (heartbeats).
const MANAGE_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The management owners (`hq::manage`): with sled started at once for good; with PostgreSQL
/// started while this receiver holds the jobs lock, from the state in the database.
struct Management {
    /// What runs now.
    running: RwLock<Option<Running>>,
    /// The settings to start with (the latest reload's).
    settings: Mutex<HqSettings>,
    /// Reloads so far: a takeover that saw a reload land while it started the owners applies
    /// the reloaded settings to them.
    reloads: std::sync::atomic::AtomicU64,
    /// The task that starts and stops them as the lock comes and goes (PostgreSQL).
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Management {
    /// Starts the owners over `db` (sled), or the task that starts them when this receiver
    /// takes the jobs lock (PostgreSQL).
    async fn start(
        settings: &HqSettings,
        db: sled::Db,
        store: &StoreHandle,
        metrics: &HqMetrics,
    ) -> anyhow::Result<Arc<Management>> {
        let management = Arc::new(Management {
            running: RwLock::new(None),
            settings: Mutex::new(settings.clone()),
            reloads: std::sync::atomic::AtomicU64::new(0),
            follower: Mutex::new(None),
        });
        match store.postgres() {
            None => {
                let running =
                    start_running(settings, ManageDb::local(db), store, metrics.clone()).await?;
                *management
                    .running
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Some(running);
            }
            Some(pg) => {
                let task = tokio::spawn(follow_leadership(
                    Arc::downgrade(&management),
                    db,
                    pg.clone(),
                    store.clone(),
                    metrics.clone(),
                ));
                *management
                    .follower
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(task);
            }
        }
        Ok(management)
    }

    /// What runs now, if anything.
    fn running(&self) -> Option<Running> {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes reloaded settings: now if running, at the next start otherwise.
    fn reload(&self, settings: &HqSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings.clone();
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(running) = self.running() {
            if !running.alerts.reload_now(alert_settings(settings)) {
                tracing::error!("the alert task did not take the reloaded rules and targets");
            }
            running.fleet.reload(settings);
        }
    }

    /// Stops whatever runs, for good.
    async fn shut_down(&self) {
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
        self.stop_running().await;
    }

    /// Stops the owners, if they run.
    async fn stop_running(&self) {
        let running = self
            .running
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(running) = running {
            if let Some(flusher) = &running.flusher {
                flusher.abort();
            }
            running.alerts.stop().await;
            running.fleet.close().await;
        }
    }
}

/// Starts the fleet's owner and the alert task over `db`.
async fn start_running(
    settings: &HqSettings,
    db: ManageDb,
    store: &StoreHandle,
    metrics: HqMetrics,
) -> anyhow::Result<Running> {
    let fleet = super::fleet::FleetHandle::open(db.clone(), settings).await?;
    let alerts = start_alerts(settings, &db, store, metrics)?;
    let flusher = db.is_mirrored().then(|| {
        let db = db.clone();
        Arc::new(tokio::spawn(async move {
            let mut timer = tokio::time::interval(MANAGE_FLUSH_EVERY);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                if let Err(error) = db.flush_async().await {
                    tracing::warn!(%error, "cannot write the management state");
                }
            }
        }))
    });
    Ok(Running {
        alerts,
        fleet,
        flusher,
    })
}

/// How long a receiver that took the jobs lock waits before trying again to start the owners
/// after a failure (the database went away meanwhile).
const TAKE_OVER_RETRY: Duration = Duration::from_secs(2);

/// With PostgreSQL: while this receiver holds the jobs lock, the owners run here, started
/// from the state in the database; when it loses the lock, they stop.
async fn follow_leadership(
    management: std::sync::Weak<Management>,
    db: sled::Db,
    pg: super::pg::PgStore,
    store: StoreHandle,
    metrics: HqMetrics,
) {
    let mut leading = store.leadership().watch();
    loop {
        if leading.wait_for(|leading| *leading).await.is_err() {
            return;
        }
        let Some(this) = management.upgrade() else {
            return;
        };
        let reloads = this.reloads.load(std::sync::atomic::Ordering::Acquire);
        let started = async {
            let epoch = pg.next_manage_epoch().await?;
            let keys = super::manage::load_from(&pg, &db).await?;
            let settings = this
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mirrored = ManageDb::mirrored(db.clone(), Mirror::new(pg.clone(), epoch));
            let running = start_running(&settings, mirrored, &store, metrics.clone()).await?;
            anyhow::Ok((keys, running))
        }
        .await;
        match started {
            Ok((keys, running)) => {
                tracing::info!(keys, "this receiver runs the alerts and the fleet now");
                *this.running.write().unwrap_or_else(|e| e.into_inner()) = Some(running);
                // A reload that came while the owners started found none to give its settings to.
                if this.reloads.load(std::sync::atomic::Ordering::Acquire) != reloads {
                    let settings = this
                        .settings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    this.reload(&settings);
                }
            }
            Err(error) => {
                tracing::error!(
                    error = %format!("{error:#}"),
                    "cannot take over the alerts and the fleet; trying again"
                );
                drop(this);
                tokio::time::sleep(TAKE_OVER_RETRY).await;
                continue;
            }
        }
        drop(this);
        let lost = leading.wait_for(|leading| !*leading).await.is_ok();
        if let Some(this) = management.upgrade() {
            this.stop_running().await;
            if lost {
                tracing::warn!("this receiver lost the management lock; alerts and fleet stopped");
            }
        }
        if !lost {
            return;
        }
    }
}

/// How often a receiver on PostgreSQL learns the sessions other receivers made or ended.
const SESSIONS_EVERY: Duration = Duration::from_secs(1);
/// How far back each look goes past the latest change seen: a session saved by a transaction
/// that committed later than its timestamp says is still found.
const SESSIONS_OVERLAP: Duration = Duration::from_secs(60);

/// With PostgreSQL: every [`SESSIONS_EVERY`], takes the sessions the receivers made or ended
/// from the `sessions` table, so a browser signed in on one receiver is on all of them.
async fn share_sessions(pg: super::pg::PgStore, sessions: std::sync::Weak<Sessions>) {
    let mut since = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let mut timer = tokio::time::interval(SESSIONS_EVERY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        let rows = match pg.sessions_since(since).await {
            Ok(rows) => rows,
            // The health check reports a database that is gone; sessions known still work.
            Err(error) => {
                tracing::debug!(error = %format!("{error:#}"), "cannot read the sessions");
                continue;
            }
        };
        let now = chrono::Utc::now();
        for row in rows {
            let lasting = (row.expires_at - now).to_std().unwrap_or(Duration::ZERO);
            if row.ended || lasting.is_zero() {
                sessions.forget(&row.hash);
            } else {
                sessions.learn(&row.hash, &row.user, lasting);
            }
            let overlap = chrono::Duration::from_std(SESSIONS_OVERLAP).unwrap_or_default();
            since = since.max(row.changed_at - overlap);
        }
    }
}

/// Alerts in a `GET /v1/alerts` answer when `limit` is not given.
const DEFAULT_ALERTS: usize = 500;
/// Largest `limit` of `GET /v1/alerts`.
const MAX_ALERTS: usize = 5000;

/// The query of `GET /v1/alerts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsParams {
    /// `open`, `acknowledged` or `resolved`.
    state: Option<String>,
    /// A region id.
    region: Option<String>,
    /// Most alerts in the answer (newest first), 1 to 5000; default 500.
    limit: Option<String>,
}

/// `GET /v1/alerts`: the alerts the caller sees in full, plus per-region counts (every
/// region for admins and region users, none for store users).
async fn get_alerts(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let response = match alerts_answer(&app, &headers, &uri).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics.request("alerts", response.status().as_u16());
    response
}

async fn alerts_answer(
    app: &App,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<serde_json::Value, ApiError> {
    let (_, scope) = require_reader(app, headers)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let params = match uri.query() {
        None => AlertsParams::default(),
        Some(_) => {
            axum::extract::Query::<AlertsParams>::try_from_uri(uri)
                .map_err(|rejection| bad(format!("bad query: {}", rejection.body_text())))?
                .0
        }
    };
    let state = match params.state.as_deref().filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => Some(AlertState::parse(text).ok_or_else(|| {
            bad(format!(
                "'state' must be open, acknowledged or resolved, found '{text}'"
            ))
        })?),
    };
    let limit = match params.limit.as_deref().filter(|text| !text.is_empty()) {
        None => DEFAULT_ALERTS,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_ALERTS).contains(limit))
            .ok_or_else(|| bad(format!("'limit' must be 1 to {MAX_ALERTS}, found '{text}'")))?,
    };
    let directory = app.directory();
    let region = params.region.filter(|text| !text.is_empty());
    if let Some(region) = &region {
        if !directory.has_region(region) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no region '{region}'"),
            ));
        }
    }
    let all = app.alerts()?.list().await.map_err(unavailable)?;
    let mut counts: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    if !matches!(scope, Scope::Store(_)) {
        for alert in &all {
            let region = alert.region.clone().unwrap_or_else(|| "(none)".to_string());
            if region == "(none)" && !matches!(scope, Scope::All) {
                continue;
            }
            let entry = counts.entry(region).or_insert_with(|| {
                BTreeMap::from([("open", 0), ("acknowledged", 0), ("resolved", 0)])
            });
            let key = match alert.state {
                AlertState::Open => "open",
                AlertState::Acknowledged => "acknowledged",
                AlertState::Resolved => "resolved",
            };
            *entry.entry(key).or_default() += 1;
        }
    }
    let alerts: Vec<&alerts::Alert> = all
        .iter()
        .filter(|alert| scope.sees_store(&alert.store))
        .filter(|alert| state.is_none_or(|state| alert.state == state))
        .filter(|alert| {
            region
                .as_ref()
                .is_none_or(|region| alert.region.as_ref() == Some(region))
        })
        .take(limit)
        .collect();
    Ok(serde_json::json!({ "alerts": alerts, "regions": counts }))
}

/// `GET /v1/alerts/{id}`: one alert in the caller's scope, with `delivery`: each target's
/// state, attempts, last error and delivery time.
async fn get_alert(
    State(app): State<App>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let (_, scope) = require_reader(&app, &headers)?;
        let alert = app
            .alerts()?
            .get(&id)
            .await
            .map_err(unavailable)?
            .filter(|alert| scope.sees_store(&alert.store))
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no alert '{id}'")))?;
        let delivery = app.alerts()?.delivery(&id).await.map_err(unavailable)?;
        let mut body = serde_json::to_value(&alert).unwrap_or_default();
        body["delivery"] = serde_json::to_value(delivery).unwrap_or_default();
        Ok::<_, ApiError>(body)
    };
    let response = match answer.await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics.request("alert", response.status().as_u16());
    response
}

/// 503 for a failure of the alert task.
fn unavailable(error: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}"))
}

/// `POST /v1/alerts/evaluate` (admin): runs every rule now.
async fn post_evaluate(State(app): State<App>, headers: HeaderMap) -> Response {
    let response = match require_reader(&app, &headers) {
        Ok((_, Scope::All)) => match app.alerts() {
            Ok(alerts) => match alerts.evaluate().await {
                Ok(opened) => Json(serde_json::json!({ "opened": opened })).into_response(),
                Err(error) => unavailable(error).into_response(),
            },
            Err(error) => error.into_response(),
        },
        Ok(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "only an admin may run the alert rules on demand",
        )
        .into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics
        .request("alerts_evaluate", response.status().as_u16());
    response
}

/// The body of `POST /v1/alerts/{id}/ack`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// What the supervisor wants to say.
    note: Option<String>,
}

/// The body of `POST /v1/alerts/{id}/resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// What was done.
    action: String,
}

/// `POST /v1/alerts/{id}/ack`.
async fn post_ack(
    State(app): State<App>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = match lifecycle(&app, &headers, &id, &body, false).await {
        Ok(alert) => Json(alert).into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics
        .request("alerts_ack", response.status().as_u16());
    response
}

/// `POST /v1/alerts/{id}/resolve`.
async fn post_resolve(
    State(app): State<App>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = match lifecycle(&app, &headers, &id, &body, true).await {
        Ok(alert) => Json(alert).into_response(),
        Err(error) => error.into_response(),
    };
    app.metrics
        .request("alerts_resolve", response.status().as_u16());
    response
}

/// Acknowledges (`resolve` false) or resolves alert `id` for the caller, in its scope.
async fn lifecycle(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
    resolve: bool,
) -> Result<alerts::Alert, ApiError> {
    let (name, scope) = require_reader(app, headers)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no alert '{id}'"));
    let alert = app
        .alerts()?
        .get(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    if !scope.sees_store(&alert.store) {
        return Err(outside_scope(&format!(
            "alert '{id}' (store {})",
            alert.store
        )));
    }
    let unprocessable = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
    let result = if resolve {
        let body: ResolveBody = serde_json::from_slice(body).map_err(|error| {
            unprocessable(format!(
                "the body must be {{\"action\": \"what was done\"}}: {error}"
            ))
        })?;
        app.alerts()?.resolve(id, &name, body.action).await
    } else {
        let body: AckBody = if body.iter().all(u8::is_ascii_whitespace) {
            AckBody::default()
        } else {
            serde_json::from_slice(body).map_err(|error| {
                unprocessable(format!(
                    "the body must be {{\"note\": \"…\"}} or empty: {error}"
                ))
            })?
        };
        app.alerts()?.ack(id, &name, body.note).await
    };
    result.map_err(|error| match error {
        LifecycleError::NotFound => not_found(),
        LifecycleError::AlreadyAcknowledged => ApiError::new(
            StatusCode::CONFLICT,
            format!("alert '{id}' is already acknowledged"),
        ),
        LifecycleError::AlreadyResolved => ApiError::new(
            StatusCode::CONFLICT,
            format!("alert '{id}' is already resolved"),
        ),
        LifecycleError::Invalid(message) => unprocessable(message),
        LifecycleError::Storage(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message),
    })
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

/// `GET /healthz/manage`: `ok` on the receiver that runs the alerts and the fleet now (with
/// sled, the only one; with PostgreSQL, the holder of the jobs lock), 503 on the others: a
/// balancer's health check for the management routes.
async fn get_healthz_manage(State(app): State<App>) -> Response {
    let response = match app.management.running() {
        Some(_) => (StatusCode::OK, "ok").into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "this receiver does not run the alerts and the fleet now",
        )
            .into_response(),
    };
    app.metrics
        .request("healthz_manage", response.status().as_u16());
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

    #[test]
    fn session_cookies_are_found() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; posgw_hq_session=abc ; c=d"),
        );
        assert_eq!(session_id(&headers), Some("abc"));
        assert_eq!(session_id(&HeaderMap::new()), None);
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
                limit: 10,
                within: None,
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
