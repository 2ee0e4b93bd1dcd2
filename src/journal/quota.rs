//! The quota (`[uplink] max_journal_bytes`): which records are evicted when the backlog is
//! over it (the oldest `scan` and `device` records, one segment per pass), and what a round of
//! evictions removed ([`Eviction`]).

use super::error::JournalError;
use super::record::RecordHead;
use super::store::Store;

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
