//! systemd integration (`Type=notify`): READY once start-up is complete, STATUS lines for the
//! current state, STOPPING on shutdown, and watchdog pings at half of `WatchdogSec`.
//!
//! Without `NOTIFY_SOCKET` (run by hand, in tests, under another supervisor) every call does
//! nothing. A failure to notify is logged, never fatal: the gateway's job is the store's data,
//! not systemd's bookkeeping.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Start-up is complete: the API listens and the devices run.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new one-line status (after a reload, say).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for, as `sd_watchdog_enabled(3)` reads it:
/// `WATCHDOG_USEC`, for this process unless `WATCHDOG_PID` names another one.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half of `WatchdogSec` until `stop` fires, when systemd asked for it.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let every = interval / 2;
    tracing::info!("systemd watchdog: pinging every {every:?}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
                () = stop.cancelled() => return,
            }
        }
    });
}
