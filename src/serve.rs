//! Serving an axum router over TCP with bounds: the one HTTP/1.1 server loop behind the local
//! API (`posgw run`) and the HQ receiver (`posgw hq`).
//!
//! Owns the listener, the accepted connections and their count. What it bounds:
//!
//! - **Connections**: at most [`Limits::max_connections`] at once, derived from the process's
//!   open-files limit so that sockets can never take the file descriptors the journal, the
//!   database or a token file need. A connection over the cap is answered `503` (best effort,
//!   without waiting) and closed at once, and counted (`*_connections_refused_total`). The
//!   local API also limits what one peer address may hold ([`Limits::per_peer`]), so one
//!   machine cannot lock the others out.
//! - **Request head**: a client has [`Limits::header_timeout`] to send a whole request head,
//!   from the moment the server waits for one; this also closes keep-alive connections that
//!   stay idle that long (hyper's header read timeout).
//! - **Request head size**: at most [`Limits::read_buffer`] bytes (431 beyond), which also
//!   bounds each connection's read buffer.
//! - **Request body**: the whole body must arrive within [`Limits::body_timeout`] of the head;
//!   after that the handler reading it gets an error and the client `408 Request Timeout`
//!   (retried by a gateway's uplink, unlike a 400). An answer given before the body was read
//!   to its end (a refusal: 401, 413, 503 for a full body budget) says `Connection: close`:
//!   hyper closes such a connection after the answer, and a client that kept it for its next
//!   request would send that request into a closed socket.
//! - **Responses**: a client that reads nothing of an answer for [`Limits::write_timeout`] is
//!   disconnected. Long-lived answers (the clerk page's event stream) count against the
//!   connection cap like any other and stay open as long as the client reads them.
//! - **Shutdown**: when the shutdown future completes the listener closes, every connection is
//!   asked to finish its request in flight and close, and whatever is still open after
//!   [`Limits::shutdown_grace`] is dropped. A stop never waits on a client.
//!
//! Each request carries the peer's address as axum's `ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower::ServiceExt;

/// File descriptors kept out of the connection budget for everything else the process opens
/// (journal segments, sled's files, serial ports, pseudo-terminals, MQTT, HQ, token files).
const RESERVED_FDS: u64 = 128;

/// Read buffer per connection: request heads up to 32 KiB (hyper's default is about 400 KiB, so
/// a full cap of connections sending huge heads would take 100 MB at the gateway).
const READ_BUFFER: usize = 32 * 1024;

/// The bounds of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// Connections open at once from one peer address, if limited; more are refused.
    pub per_peer: Option<usize>,
    /// Time to send a request head (also the keep-alive idle time).
    pub header_timeout: Duration,
    /// Time to send a request body, from the end of its head.
    pub body_timeout: Duration,
    /// Time a client may leave an answer unread before it is disconnected.
    pub write_timeout: Duration,
    /// Time connections get to finish at shutdown before they are dropped.
    pub shutdown_grace: Duration,
    /// Largest read buffer of a connection, hence the largest request head (431 beyond).
    pub read_buffer: usize,
}

impl Limits {
    /// The local API: a few clerk screens, the POS software and monitoring. Small bodies.
    /// One address (a clerk screen, the POS PC, an attacker on the store LAN) may hold a
    /// quarter of the connections, so it cannot lock the others out.
    pub fn gateway(open_files: u64) -> Limits {
        let max_connections = connection_cap(open_files, 256);
        Limits {
            max_connections,
            per_peer: Some((max_connections / 4).max(4)),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            read_buffer: READ_BUFFER,
        }
    }

    /// The HQ receiver: one keep-alive connection per store's gateway plus dashboards; bodies
    /// up to `max_body` over slow store links. No limit per address: many stores may reach HQ
    /// through one NAT or VPN address.
    pub fn hq(open_files: u64) -> Limits {
        Limits {
            max_connections: connection_cap(open_files, 4096),
            per_peer: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            read_buffer: READ_BUFFER,
        }
    }
}

/// At most half of what the open-files limit leaves after the 128 descriptors kept for
/// everything else (`RESERVED_FDS`), and at most `most`; never below 8.
pub fn connection_cap(open_files: u64, most: usize) -> usize {
    let budget = open_files.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(budget)
        .unwrap_or(usize::MAX)
        .clamp(8, most.max(8))
}

/// Raises the soft open-files limit to the hard one (where allowed) and returns the soft limit
/// now in force. Under the systemd units `LimitNOFILE=` sets both, and the system call filter
/// refuses `setrlimit`: the limit is then simply read.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let error = io::Error::last_os_error();
            tracing::debug!(%error, "cannot raise the open-files limit");
        }
    }
    limit.rlim_cur
}

/// The open-files soft limit in force (1024 when it cannot be read).
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// The connection figures of one server, registered as `{prefix}connections` (open now),
/// `{prefix}connections_max` (the cap) and `{prefix}connections_refused_total`.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// The cap in force.
    pub max: Gauge,
    /// Connections refused because the cap was reached.
    pub refused: Counter,
}

impl ConnectionMetrics {
    /// Registers the three series; `prefix` is e.g. `"api_"` (empty for the receiver).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        registry.register(
            format!("{prefix}connections"),
            "HTTP connections open now",
            self.open.clone(),
        );
        registry.register(
            format!("{prefix}connections_max"),
            "HTTP connections allowed at once (derived from the open-files limit)",
            self.max.clone(),
        );
        registry.register(
            format!("{prefix}connections_refused"),
            "HTTP connections refused because the connection cap was reached",
            self.refused.clone(),
        );
    }
}

/// The answer to a connection over the cap, written without waiting.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 5\r\ncontent-type: text/plain\r\ncontent-length: 30\r\n\r\ntoo many connections; retry\r\n\r\n";

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then closes as the
/// module doc describes. Returns once every connection is closed or dropped.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    metrics
        .max
        .set(i64::try_from(limits.max_connections).unwrap_or(i64::MAX));
    let (closing_tx, closing) = watch::channel(false);
    let peers = Peers::default();
    let mut connections = JoinSet::new();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admit(&permits, &peers, limits.per_peer, peer) {
                    Some(permit) => {
                        connections.spawn(connection(
                            stream,
                            peer,
                            router.clone(),
                            limits,
                            closing.clone(),
                            Open::new(permit, &metrics.open, &peers, peer),
                        ));
                    }
                    None => {
                        metrics.refused.inc();
                        // Best effort: the socket buffer is empty, so this does not block.
                        let _ = stream.try_write(REFUSAL);
                        drop(stream);
                    }
                },
                Err(error) => {
                    if accept_errors.note(&error) {
                        // Out of file descriptors (or memory): give the process a moment.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            grace = ?limits.shutdown_grace,
            "HTTP connections still open at shutdown; closing them"
        );
        connections.shutdown().await;
    }
}

/// Connections open per peer address (IPv4-mapped addresses counted as IPv4).
type Peers = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A permit for a connection from `peer`, unless the cap or the peer's share is used up.
fn admit(
    permits: &Arc<Semaphore>,
    peers: &Peers,
    per_peer: Option<usize>,
    peer: SocketAddr,
) -> Option<OwnedSemaphorePermit> {
    if let Some(most) = per_peer {
        let open = peers.lock().map_or(0, |peers| {
            peers.get(&peer.ip().to_canonical()).copied().unwrap_or(0)
        });
        if open >= most {
            return None;
        }
    }
    permits.clone().try_acquire_owned().ok()
}

/// One accepted connection: its permit, its place in the `open` gauge and in its peer's count,
/// all given back on drop (also when the task is aborted at shutdown).
struct Open {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
    peers: Peers,
    peer: IpAddr,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge, peers: &Peers, peer: SocketAddr) -> Open {
        gauge.inc();
        let peer = peer.ip().to_canonical();
        if let Ok(mut peers) = peers.lock() {
            *peers.entry(peer).or_default() += 1;
        }
        Open {
            _permit: permit,
            gauge: gauge.clone(),
            peers: peers.clone(),
            peer,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Ok(mut peers) = self.peers.lock() {
            if let Some(open) = peers.get_mut(&self.peer) {
                *open -= 1;
                if *open == 0 {
                    peers.remove(&self.peer);
                }
            }
        }
    }
}

/// Serves one connection until it closes, shutting it down gracefully when `closing` turns true.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    open: Open,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let late = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            Body::new(BodyDeadline::new(
                body,
                body_timeout,
                late.clone(),
                ended.clone(),
            ))
        });
        let router = router.clone();
        async move {
            let mut response = router.oneshot(request).await?;
            // Whatever the handler made of the failed body (axum says 400), the client was too
            // slow: 408, which a gateway's uplink retries instead of taking its batch as bad.
            if late.load(Ordering::Relaxed) {
                return Ok::<_, Infallible>(body_too_late(body_timeout));
            }
            // Answered with body bytes still unread: hyper will close the connection after
            // this answer (see the module doc), so the answer says so.
            if !ended.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.read_buffer.max(8192));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut asked_to_close = *closing.borrow();
    if asked_to_close {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                }
                break;
            }
            changed = closing.changed(), if !asked_to_close => {
                // A closed channel also means the server is going away.
                let _ = changed;
                asked_to_close = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(open);
}

/// Counts accept errors and logs them at most every 10 s.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Notes one error; true when it is a resource shortage worth pausing for.
    fn note(&mut self, error: &io::Error) -> bool {
        let shortage = matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        // A peer that gave up before we accepted it is nothing to report.
        if !shortage {
            return false;
        }
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(%error, errors = self.unlogged, "cannot accept HTTP connections");
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
        true
    }
}

/// A stream whose writes fail with `TimedOut` once they have made no progress for `timeout`:
/// a client that stops reading cannot hold a connection (or a shutdown) forever.
struct WriteDeadline {
    inner: TcpStream,
    timeout: Duration,
    /// Running while writes make no progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, timeout: Duration) -> WriteDeadline {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of the answer in time",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// The answer to a request whose body did not arrive in time.
fn body_too_late(timeout: Duration) -> Response {
    let message = format!(
        "the request body did not arrive within {} s",
        timeout.as_secs()
    );
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, "close")],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// A request body that fails once its deadline has passed with data still missing.
struct BodyDeadline {
    inner: Incoming,
    deadline: tokio::time::Instant,
    /// Set the first time the body has to wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline passed: the answer becomes 408.
    late: Arc<AtomicBool>,
    /// Set once the body has been read to its end (at once for a request without a body).
    ended: Arc<AtomicBool>,
}

impl BodyDeadline {
    fn new(
        inner: Incoming,
        timeout: Duration,
        late: Arc<AtomicBool>,
        ended: Arc<AtomicBool>,
    ) -> BodyDeadline {
        ended.store(http_body::Body::is_end_stream(&inner), Ordering::Relaxed);
        BodyDeadline {
            inner,
            deadline: tokio::time::Instant::now() + timeout,
            timer: None,
            late,
            ended,
        }
    }
}

/// The error a late body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl http_body::Body for BodyDeadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.late.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
            Poll::Ready(frame) => {
                if frame.is_none() || this.inner.is_end_stream() {
                    this.ended.store(true, Ordering::Relaxed);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server echoing POST bodies, with short limits; its address and a stopper.
    async fn echo_server(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let router = Router::new().route("/", post(|body: Bytes| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            router,
            limits,
            ConnectionMetrics::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        (addr, stop)
    }

    const SHORT: Limits = Limits {
        max_connections: 2,
        per_peer: None,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
        shutdown_grace: Duration::from_millis(300),
        read_buffer: 8192,
    };

    /// Everything the server sends until it closes the connection.
    async fn read_all(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Sends `request` on a new connection and reads the answer until the server closes it.
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        read_all(&mut stream).await
    }

    #[tokio::test]
    async fn a_body_that_comes_too_slowly_gets_408_not_400() {
        let (addr, _stop) = echo_server(SHORT).await;
        let answer = exchange(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("did not arrive"), "{answer}");
        // A body that does arrive in time is answered.
        let answer = exchange(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
    }

    #[tokio::test]
    async fn an_answer_before_the_body_was_read_closes_the_connection_and_says_so() {
        let router = Router::new()
            .route("/", post(|body: Bytes| async move { body }))
            .route("/refuse", post(|| async { StatusCode::FORBIDDEN }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve(
            listener,
            router,
            SHORT,
            ConnectionMetrics::default(),
            std::future::pending(),
        ));
        // Refused unread: the answer says the connection closes, and it does (read_all). A
        // body this small hyper would have drained and kept the connection for: the handler
        // cannot know, so the answer closes it in every case.
        let answer = exchange(
            addr,
            b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        // Read to its end, a body leaves the connection open for the next request.
        let answer = exchange(
            addr,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!(answer.matches("HTTP/1.1 200 ").count(), 2, "{answer}");
        assert_eq!(answer.matches("connection: close").count(), 1, "{answer}");
    }

    #[tokio::test]
    async fn a_request_head_over_the_read_buffer_gets_431() {
        let (addr, _stop) = echo_server(SHORT).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(20_000)
        );
        stream.write_all(head.as_bytes()).await.expect("send");
        let answer = read_all(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn one_address_cannot_take_the_share_of_the_others() {
        let limits = Limits {
            max_connections: 4,
            per_peer: Some(1),
            ..SHORT
        };
        let (addr, _stop) = echo_server(limits).await;
        let _held = TcpStream::connect(addr).await.expect("connect");
        let mut second = TcpStream::connect(addr).await.expect("connect");
        assert!(read_all(&mut second).await.starts_with("HTTP/1.1 503 "));
        // Another loopback address is another peer.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        let mut other = socket.connect(addr).await.expect("connect");
        other
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            )
            .await
            .expect("send");
        assert!(read_all(&mut other).await.starts_with("HTTP/1.1 200 "));
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_gets_503_and_a_silent_one_is_closed() {
        let metrics = ConnectionMetrics::default();
        let router = Router::new().route("/", post(|body: Bytes| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve(
            listener,
            router,
            SHORT,
            metrics.clone(),
            std::future::pending(),
        ));
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Connections are accepted in order: the third is over the cap of 2.
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let answer = read_all(&mut third).await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert_eq!(metrics.refused.get(), 1);
        assert_eq!(metrics.max.get(), 2);
        // The silent ones are closed after the header timeout, freeing their places.
        for mut stream in silent {
            assert_eq!(read_all(&mut stream).await, "");
        }
        let mut next = TcpStream::connect(addr).await.expect("connect");
        next.write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        )
        .await
        .expect("send");
        assert!(read_all(&mut next).await.starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn the_connection_cap_leaves_most_descriptors_to_the_rest_of_the_process() {
        assert_eq!(connection_cap(1024, 256), 256);
        assert_eq!(connection_cap(512, 256), 192);
        assert_eq!(connection_cap(100, 256), 8);
        assert_eq!(connection_cap(65_536, 4096), 4096);
        assert_eq!(connection_cap(u64::MAX, 256), 256);
        // Sockets never get more than half of what is left after the reserve.
        for open_files in [256, 1024, 4096] {
            let cap = connection_cap(open_files, usize::MAX) as u64;
            assert!(cap * 2 + RESERVED_FDS <= open_files, "{open_files}: {cap}");
        }
    }
}
