//! The quota (`[uplink] max_journal_bytes`, [`JournalConfig::max_bytes`]): when eviction
//! starts and stops ([`Quota`], kept by the actor and asked after every append), which records
//! go (the oldest `scan` and `device` records, one segment per pass: [`Store::evict`]), and how
//! each round is written down (a `gateway` `evicted` record) and logged.

use tokio::time::{Duration, Instant};

use super::error::JournalError;
use super::handle::JournalConfig;
use super::store::Store;
use crate::record::{Data, Kind, RecordHead};

/// Once over [`JournalConfig::max_bytes`], records are evicted until the backlog is down to this
/// share of it (in percent), so the journal does not evict again on the very next append.
const QUOTA_LOW_WATER_PERCENT: u64 = 95;
/// Most records evicted after one append: eviction is sled work on the actor's task, so a large
/// round is spread over the appends that follow.
const EVICT_PER_APPEND: usize = 2048;
/// While evictions go on without the backlog getting back under the quota (records that are
/// never evicted fill it), they are summed up in one `evicted` record at most this often.
const EVICTED_RECORD_EVERY: Duration = Duration::from_secs(60);
/// How often "over quota with records that are never evicted" is logged at most.
const OVER_QUOTA_LOG_EVERY: Duration = Duration::from_secs(60);

/// The quota policy of a running journal: whether a round of evictions is going on, what it
/// removed that is not written down yet, and what was logged when.
#[derive(Debug)]
pub(crate) struct Quota {
    /// See [`JournalConfig::max_bytes`]; `None`: no quota, nothing is ever evicted.
    max_bytes: Option<u64>,
    /// See [`JournalConfig::version`], for the `evicted` record.
    version: &'static str,
    /// Set from the append that takes the backlog over the quota until it is back at
    /// `QUOTA_LOW_WATER_PERCENT` (or nothing is left to evict).
    evicting: bool,
    /// Evictions not yet written down in an `evicted` record, and when the first of them was.
    pending_eviction: Option<(Eviction, Instant)>,
    /// Whether this process has logged its first eviction (as an error) yet.
    eviction_logged: bool,
    /// When "over quota with records that are never evicted" was last logged.
    over_quota_logged: Option<Instant>,
}

/// What [`Quota`] did to the store, for the actor's figures and flush timers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enforced {
    /// Records evicted (removed from the log).
    pub(crate) evicted: u64,
    /// Whether an `evicted` record was appended.
    pub(crate) recorded: bool,
}

impl Quota {
    /// The policy for a journal opened with `config`.
    pub(crate) fn new(config: &JournalConfig) -> Quota {
        Quota {
            max_bytes: config.max_bytes,
            version: config.version,
            evicting: false,
            pending_eviction: None,
            eviction_logged: false,
            over_quota_logged: None,
        }
    }

    /// Keeps the backlog within [`JournalConfig::max_bytes`] after an append: evicts the oldest
    /// scan and device records (a bounded number per call) until the backlog is back at
    /// `QUOTA_LOW_WATER_PERCENT` of the quota, and writes what it evicted down in a `gateway`
    /// `evicted` record. Records of other kinds stay even past the quota, loudly.
    pub(crate) fn after_append(&mut self, store: &mut Store) -> Enforced {
        let mut enforced = Enforced::default();
        let Some(max) = self.max_bytes else {
            return enforced;
        };
        if !self.evicting {
            if store.backlog_bytes <= max {
                return enforced;
            }
            self.evicting = true;
        }
        let target = max / 100 * QUOTA_LOW_WATER_PERCENT;
        let evicted = match store.evict(target, EVICT_PER_APPEND) {
            Ok(pass) => pass,
            Err(err) => {
                tracing::error!(error = %err, "cannot evict journal records");
                self.evicting = false;
                return enforced;
            }
        };
        let stuck = evicted.records == 0;
        if !stuck {
            enforced.evicted = evicted.records;
            if !self.eviction_logged {
                self.eviction_logged = true;
                tracing::error!(
                    max_bytes = max,
                    "journal over max_journal_bytes: evicting the oldest scan and device records"
                );
            }
            match &mut self.pending_eviction {
                Some((pending, _)) => pending.add(evicted),
                None => self.pending_eviction = Some((evicted, Instant::now())),
            }
        }
        let back_under = store.backlog_bytes <= target;
        if back_under || stuck {
            self.evicting = false;
        }
        if !back_under && store.backlog_bytes > max && stuck {
            self.log_over_quota(store, max);
        }
        let due = self
            .pending_eviction
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= EVICTED_RECORD_EVERY);
        if back_under || due {
            enforced.recorded = self.record_eviction(store, max);
        }
        enforced
    }

    /// At close: writes down the evictions not yet recorded. Returns whether it appended an
    /// `evicted` record.
    pub(crate) fn at_close(&mut self, store: &mut Store) -> bool {
        match self.max_bytes {
            Some(max) => self.record_eviction(store, max),
            None => false,
        }
    }

    /// Logs (at most once a minute) that records which are never evicted fill the quota.
    fn log_over_quota(&mut self, store: &Store, max: u64) {
        if self
            .over_quota_logged
            .is_some_and(|logged| logged.elapsed() < OVER_QUOTA_LOG_EVERY)
        {
            return;
        }
        self.over_quota_logged = Some(Instant::now());
        let free = store
            .floor_dir
            .as_deref()
            .and_then(|dir| nix::sys::statvfs::statvfs(dir).ok())
            .map(|stat| {
                format!(
                    "{} bytes",
                    stat.blocks_available().saturating_mul(stat.fragment_size())
                )
            })
            .unwrap_or_else(|| "unknown".to_string());
        tracing::error!(
            backlog_bytes = store.backlog_bytes,
            max_bytes = max,
            "journal over quota with {} sale/attribution/gateway records that are never \
             evicted; free disk: {free}",
            store.backlog_records
        );
    }

    /// Writes the evictions not yet recorded into a `gateway` `evicted` record. Returns whether
    /// it appended one.
    fn record_eviction(&mut self, store: &mut Store, max: u64) -> bool {
        let Some((evicted, _)) = self.pending_eviction.take() else {
            return false;
        };
        let detail = format!(
            "evicted {} scan/device records ({} bytes, oldest {}, newest {}): journal over \
             max_journal_bytes ({max} bytes)",
            evicted.records,
            evicted.bytes,
            evicted.first_id.as_deref().unwrap_or("?"),
            evicted.last_id.as_deref().unwrap_or("?"),
        );
        tracing::warn!(%detail, "journal records evicted");
        let event = serde_json::json!({
            "event": "evicted",
            "version": self.version,
            "detail": detail,
        });
        let result = Data::serialize(&event)
            .map_err(JournalError::from)
            .and_then(|data| store.append(Kind::Gateway, &data));
        match result {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(error = %err, "cannot record the eviction in the journal");
                false
            }
        }
    }
}

/// What one [`Store::evict`] pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Eviction {
    /// Records removed.
    pub(crate) records: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// The id of the oldest record removed.
    pub(crate) first_id: Option<String>,
    /// The id of the newest record removed.
    pub(crate) last_id: Option<String>,
}

impl Eviction {
    /// Adds a later pass to this one.
    pub(crate) fn add(&mut self, later: Eviction) {
        self.records += later.records;
        self.bytes += later.bytes;
        if self.first_id.is_none() {
            self.first_id = later.first_id;
        }
        if later.last_id.is_some() {
            self.last_id = later.last_id;
        }
    }
}

impl Store {
    /// Deletes the oldest `scan` and `device` records (position order), at most `max_records`,
    /// until the backlog is at most `target_bytes`; other kinds are never evicted. Returns what
    /// it removed (nothing once no scan or device record is left). The floors are made durable
    /// first, so evicted seqs are never issued again.
    pub(crate) fn evict(
        &mut self,
        target_bytes: u64,
        max_records: usize,
    ) -> Result<Eviction, JournalError> {
        // (position, bytes, id) of each record to evict, and the last position looked at.
        let mut chosen: Vec<(u64, u64, String)> = Vec::new();
        let mut bytes = 0u64;
        let mut scanned_to = None;
        let backlog_bytes = self.backlog_bytes;
        self.log
            .read(
                self.evict_from.saturating_sub(1).max(self.acked),
                u64::MAX,
                &mut |position, value| {
                    if backlog_bytes.saturating_sub(bytes) <= target_bytes
                        || chosen.len() >= max_records
                    {
                        return false;
                    }
                    scanned_to = Some(position);
                    let Some(head) = RecordHead::parse(value) else {
                        return true;
                    };
                    if !matches!(head.kind.as_deref(), Some("scan" | "device")) {
                        return true;
                    }
                    bytes += value.len() as u64;
                    chosen.push((position, value.len() as u64, head.id.into_owned()));
                    true
                },
            )
            .map_err(|err| JournalError::storage("reading records to evict", err))?;
        // One segment per pass: a rewrite is all or nothing, so the counters and the `evicted`
        // record always match what left the log.
        if let Some(&(first, _, _)) = chosen.first() {
            let boundary = self.log.segment_end(first);
            if chosen
                .last()
                .is_some_and(|(position, _, _)| *position >= boundary)
            {
                chosen.retain(|(position, _, _)| *position < boundary);
                scanned_to = chosen.last().map(|(position, _, _)| *position);
            }
        }
        let mut eviction = Eviction::default();
        if !chosen.is_empty() {
            let positions: Vec<u64> = chosen.iter().map(|(position, _, _)| *position).collect();
            let bytes: u64 = chosen.iter().map(|(_, size, _)| size).sum();
            self.protect_floors_now()?;
            self.take_out(&positions, bytes, "evicting records")?;
            eviction.records = positions.len() as u64;
            eviction.bytes = bytes;
            eviction.first_id = chosen.first().map(|(_, _, id)| id.clone());
            eviction.last_id = chosen.pop().map(|(_, _, id)| id);
        }
        // Only once the removal succeeded: a failed one leaves its records to the next pass.
        if let Some(scanned_to) = scanned_to {
            self.evict_from = scanned_to + 1;
        }
        Ok(eviction)
    }
}
