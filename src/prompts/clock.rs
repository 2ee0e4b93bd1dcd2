//! The engine's wall clock, passed in so tests control time.
//!
//! Timers run on tokio's monotonic clock; timestamps (`resolved_at`, the store-local day) come
//! from a [`Clock`]. [`TokioClock`] ties the two together so a test that calls
//! `tokio::time::pause()` and `advance()` moves both at once.

use chrono::{DateTime, Local};

/// Source of the current store-local time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in the store's time zone.
    fn now(&self) -> DateTime<Local>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }
}

/// Wall time that starts at a fixed moment and then follows tokio's clock, so it stands still
/// and jumps with `tokio::time::pause()` / `advance()`. For tests and simulations.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    /// The wall time at `start`.
    base: DateTime<Local>,
    /// The tokio instant that corresponds to `base`.
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base` now.
    pub fn starting_at(base: DateTime<Local>) -> Self {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Local> {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        // A test cannot advance tokio's clock past chrono's range; saturate rather than panic.
        chrono::Duration::from_std(elapsed)
            .ok()
            .and_then(|elapsed| self.base.checked_add_signed(elapsed))
            .unwrap_or(self.base)
    }
}
