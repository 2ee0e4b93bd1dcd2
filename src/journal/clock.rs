//! Clock metadata stamped on every record: local wall time with offset, boot id, milliseconds
//! since boot and whether the kernel says the system clock is synchronised. The stamp's shape,
//! [`ClockStamp`], is the record format's (`crate::record`); this takes them.
//!
//! HQ uses `clock` to decide how far to trust `ts`: two records with the same boot id can be
//! ordered and spaced by `mono_ms` even when the wall clock jumped between them, and
//! `synced: false` flags stamps taken before NTP (or chrony) set the clock.
//!
//! Everything here runs on the journal's hot path, so the expensive parts are cached: the boot id
//! is read once per process (it cannot change without a reboot) and `adjtimex` is asked at most
//! once per [`SYNC_RECHECK`]. `CLOCK_BOOTTIME` goes through the vDSO and is cheap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Local;

use crate::record::ClockStamp;

/// Where Linux publishes the random id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// How long a cached "is the clock synchronised" answer is reused; the kernel flag changes
/// rarely (NTP gaining or losing sync), so once a second is plenty.
pub const SYNC_RECHECK: Duration = Duration::from_secs(1);

/// A source of [`ClockStamp`]s with the slow parts cached; owned by one task (no locking).
#[derive(Debug)]
pub struct Clock {
    /// The boot id, read once.
    boot: Arc<str>,
    /// The last `adjtimex` answer and when it was taken.
    synced_cache: Option<(Instant, bool)>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// Reads the boot id now; the first stamp asks `adjtimex`.
    pub fn new() -> Self {
        Self {
            boot: read_boot_id().into(),
            synced_cache: None,
        }
    }

    /// The cached boot id.
    pub fn boot_id(&self) -> &Arc<str> {
        &self.boot
    }

    /// Takes a stamp for a record being written now.
    pub fn stamp(&mut self) -> ClockStamp {
        let now = Instant::now();
        let synced = match self.synced_cache {
            Some((at, synced)) if now.duration_since(at) < SYNC_RECHECK => synced,
            _ => {
                let synced = kernel_clock_synced();
                self.synced_cache = Some((now, synced));
                synced
            }
        };
        ClockStamp {
            wall: Local::now(),
            boot: self.boot.clone(),
            mono_ms: boottime_ms(),
            synced,
        }
    }
}

/// Reads the current boot id; `"unknown"` when the file is missing (not Linux, or a sandbox
/// without /proc) so that a missing /proc never stops records from being written.
pub fn read_boot_id() -> String {
    match std::fs::read_to_string(BOOT_ID_PATH) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
        Ok(_) | Err(_) => "unknown".to_string(),
    }
}

/// Milliseconds since boot, including suspend (`CLOCK_BOOTTIME`); 0 if the clock is unavailable.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

/// Whether the kernel considers the system clock synchronised: `adjtimex` with `modes = 0` only
/// reads; the clock is unsynchronised when it returns `TIME_ERROR` or the status has `STA_UNSYNC`
/// (which is what NTP daemons clear once they have disciplined the clock). A failing call counts
/// as unsynchronised: claiming trust we cannot back is worse than under-claiming.
pub fn kernel_clock_synced() -> bool {
    // SAFETY: an all-zero timex is a valid value (modes = 0 means "read only").
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    timex.modes = 0;
    // SAFETY: `timex` is a valid, writable struct; with modes 0 adjtimex changes nothing.
    let state = unsafe { libc::adjtimex(&mut timex) };
    state >= 0 && state != libc::TIME_ERROR && (timex.status & libc::STA_UNSYNC) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_cached_and_mono_advances() {
        let mut clock = Clock::new();
        let a = clock.stamp();
        let b = clock.stamp();
        assert_eq!(a.boot, b.boot);
        assert!(!a.boot.is_empty());
        assert!(b.mono_ms >= a.mono_ms);
        assert!(a.mono_ms > 0);
    }
}
