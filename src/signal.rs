//! The process's stop signals, shared by every long-running command (`run`, `hq`, `demo`), and
//! the gateway's reload signal.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A future that completes on SIGTERM or SIGINT.
///
/// The handlers are installed by this call, not when the future is first polled: until then
/// either signal ends the process by its default action (killed by the signal, no clean stop,
/// no exit status 0). Call it before binding a socket, since whoever sees the socket answer
/// (systemd, a script, a test) may ask for a stop at once. A signal that arrives before the
/// future is polled is kept: the future then completes on its first poll.
///
/// Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let term = listen(SignalKind::terminate(), "SIGTERM");
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = received(term) => tracing::info!("SIGTERM received"),
            () = received(interrupt) => tracing::info!("SIGINT received"),
        }
    }
}

/// SIGHUP, the gateway's reload request, caught from this call on (the stream keeps one that
/// arrives before it is read). Like [`shutdown_signal`], call it before binding a socket:
/// without a handler SIGHUP ends the process. Must be called inside a Tokio runtime.
pub fn reload_signal() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Installs the handler for `kind`; `None` (logged) if that is impossible.
fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::error!(%error, "cannot listen for {name}; it will not stop posgw cleanly");
            None
        }
    }
}

/// Completes when the signal arrives; never without a handler (or once the runtime is gone).
async fn received(stream: Option<Signal>) {
    if let Some(mut stream) = stream {
        if stream.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}
