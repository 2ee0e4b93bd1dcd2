//! Rate-limited log lines: at most [`LogLimit::burst`] lines per key (a device) per interval;
//! the lines held back are counted, and once the interval is over one summary line says how
//! many there were, with one of them as a sample.
//!
//! A line on a noisy input (a scanner cable picking up interference, a register sending binary)
//! would otherwise be written once per bad frame: 30 s of noise on one port made 1.9 GB of log.
//! What is logged is only the operator's view; the records and the metrics still count every
//! event. The owner keeps one [`LogLimit`] and calls it from one task (the core); it holds one
//! small window per key, so its memory is bounded by the number of configured devices.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Lines of one key held back in a window, to be summarised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// Whose lines (the device id).
    pub key: Arc<str>,
    /// How many were held back.
    pub count: u64,
    /// The first of them.
    pub sample: String,
}

/// One key's current window.
#[derive(Debug)]
struct Window {
    /// When its first line came.
    started: Instant,
    /// Lines logged in it.
    logged: u32,
    /// Lines held back in it.
    suppressed: u64,
    /// The first line held back.
    sample: Option<String>,
}

/// The limiter; see the module doc.
#[derive(Debug)]
pub struct LogLimit {
    /// Length of a window.
    interval: Duration,
    /// Lines logged per key and window.
    burst: u32,
    /// The window of each key that logged something.
    windows: HashMap<Arc<str>, Window>,
}

impl LogLimit {
    /// A limiter of `burst` lines per key per `interval`.
    pub fn new(interval: Duration, burst: u32) -> Self {
        LogLimit {
            interval,
            burst,
            windows: HashMap::new(),
        }
    }

    /// Lines logged per key and interval.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Length of the interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Asks to log `line` for `key` at `now`. Returns whether to log it and, when a window of
    /// `key` that held lines back has just ended, its summary (to be logged first).
    pub fn admit(
        &mut self,
        key: &Arc<str>,
        now: Instant,
        line: impl FnOnce() -> String,
    ) -> (bool, Option<Suppressed>) {
        let mut ended = None;
        let window = self.windows.entry(key.clone()).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
            sample: None,
        });
        if now.duration_since(window.started) >= self.interval {
            ended = take_summary(key, window);
            *window = Window {
                started: now,
                logged: 0,
                suppressed: 0,
                sample: None,
            };
        }
        if window.logged < self.burst {
            window.logged += 1;
            return (true, ended);
        }
        window.suppressed += 1;
        if window.sample.is_none() {
            window.sample = Some(line());
        }
        (false, ended)
    }

    /// The summaries of every window that ended by `now` with lines held back (for a timer,
    /// so a burst that stops is still summarised, and at shutdown with `now` far ahead).
    pub fn expired(&mut self, now: Instant) -> Vec<Suppressed> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.windows.retain(|key, window| {
            if now.duration_since(window.started) < interval {
                return true;
            }
            out.extend(take_summary(key, window));
            false
        });
        out
    }

    /// When the earliest window holding lines back ends, if any does.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|window| window.suppressed > 0)
            .map(|window| window.started + self.interval)
            .min()
    }
}

/// The summary of `window`, if it held lines back.
fn take_summary(key: &Arc<str>, window: &mut Window) -> Option<Suppressed> {
    (window.suppressed > 0).then(|| Suppressed {
        key: key.clone(),
        count: window.suppressed,
        sample: window.sample.take().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_held_back_and_summarised_once_the_interval_is_over() {
        let mut limit = LogLimit::new(Duration::from_secs(10), 3);
        let scanner: Arc<str> = "scanner-1".into();
        let register: Arc<str> = "register-1".into();
        let start = Instant::now();
        let mut logged = 0;
        for i in 0..1000 {
            let (log, ended) = limit.admit(&scanner, start, || format!("frame {i}"));
            assert_eq!(ended, None);
            logged += usize::from(log);
        }
        assert_eq!(logged, 3);
        // Another key has its own window.
        assert_eq!(limit.admit(&register, start, String::new), (true, None));
        assert_eq!(limit.next_expiry(), Some(start + Duration::from_secs(10)));
        assert!(limit.expired(start + Duration::from_secs(9)).is_empty());

        // The next line after the interval is logged, after the summary of the last window.
        let later = start + Duration::from_secs(10);
        let (log, ended) = limit.admit(&scanner, later, || "late".into());
        assert!(log);
        assert_eq!(
            ended,
            Some(Suppressed {
                key: scanner.clone(),
                count: 997,
                sample: "frame 3".into(),
            })
        );
        assert_eq!(limit.next_expiry(), None);
    }

    #[test]
    fn a_burst_that_stops_is_summarised_by_the_timer() {
        let mut limit = LogLimit::new(Duration::from_secs(10), 1);
        let scanner: Arc<str> = "scanner-1".into();
        let start = Instant::now();
        for i in 0..5 {
            limit.admit(&scanner, start + Duration::from_secs(i), || format!("{i}"));
        }
        let summaries = limit.expired(start + Duration::from_secs(10));
        assert_eq!(
            summaries,
            [Suppressed {
                key: scanner.clone(),
                count: 4,
                sample: "1".into(),
            }]
        );
        assert!(limit.expired(start + Duration::from_secs(60)).is_empty());
        assert_eq!(limit.next_expiry(), None);
        // A fresh window starts with the next line.
        assert_eq!(
            limit.admit(&scanner, start + Duration::from_secs(61), String::new),
            (true, None)
        );
    }
}
