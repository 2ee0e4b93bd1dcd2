//! Making the journal durable: what one flush must fsync ([`FlushJob`]: the message
//! identities, the record log's files and folder, and sled when a removal's changes are due),
//! taken from the store and run on a blocking thread; the blocking flush of offline commands
//! and salvage, the floor it records, and the counters saved at close. When a flush starts is
//! the actor's group commit (`actor`).

use std::fs::File;
use std::sync::Arc;

use sled::Db;

use super::error::JournalError;
use super::faults::SharedFaults;
use super::floor::{self, Floor};
use super::layout::META_COUNTERS;
use super::messages;
use super::segments::SyncJob;
use super::store::Store;

/// What a flush must do, taken from the store by [`Store::flush_job`] and run on a blocking
/// thread: fsync the log's files, then sled when asked to.
pub(crate) struct FlushJob {
    /// The message identities' file, when it changed.
    messages: Option<Arc<File>>,
    /// The log files and folder.
    log: SyncJob,
    /// The database, when its changes are to be made durable too.
    db: Option<Db>,
    /// The store's faults (a slow disk, in tests).
    faults: SharedFaults,
}

impl FlushJob {
    /// fsyncs the record log, then sled.
    pub(crate) fn run(&self) -> Result<(), JournalError> {
        self.faults.before_flush();
        if let Some(messages) = &self.messages {
            messages
                .sync_data()
                .map_err(|err| JournalError::Flush(format!("message identities: {err}")))?;
        }
        self.log
            .run()
            .map_err(|err| JournalError::Flush(format!("record log: {err}")))?;
        if let Some(db) = &self.db {
            db.flush()
                .map_err(|err| JournalError::Flush(err.to_string()))?;
        }
        Ok(())
    }
}

impl Store {
    /// What a flush started now must fsync; everything appended so far is handed to the kernel.
    /// `with_meta`: sled's changes too. Only removals leave sled changes for a flush to make
    /// durable (everything else that writes sled flushes it itself), and nothing waits on those.
    pub(crate) fn flush_job(&mut self, with_meta: bool) -> Result<FlushJob, JournalError> {
        self.track_segments()?;
        // A write the log took back (a full disk) is retried at the next flush; one it could
        // not take back is the end, like a failed fsync.
        let messages = match &self.messages {
            Some(messages) => messages::lock(messages)
                .sync_job()
                .map_err(|err| JournalError::storage("writing the message identities", err))?,
            None => None,
        };
        let log = self.log.sync_job().map_err(|err| {
            if self.log.is_torn() {
                JournalError::Flush(format!("record log: {err}"))
            } else {
                JournalError::storage("writing the record log", err)
            }
        })?;
        Ok(FlushJob {
            faults: self.faults.clone(),
            messages,
            log,
            db: with_meta.then(|| self.db.clone()),
        })
    }

    /// fsyncs everything written so far (blocking), then records it in the floor file.
    pub(crate) fn flush(&mut self) -> Result<(), JournalError> {
        let floor = self.floor();
        self.flush_job(true)?.run()?;
        if let Some(dir) = &self.floor_dir {
            if let Err(reason) = floor::write(dir, &floor) {
                tracing::warn!(%reason, "cannot update the journal floor");
            }
        }
        Ok(())
    }

    /// Saves the backlog figures so the next open need not count every record. Call only as
    /// the very last write before the final flush of a close: any later change would make them
    /// wrong (the next open removes them before changing anything).
    pub(crate) fn save_counters(&self) -> Result<(), JournalError> {
        let mut counters = Vec::with_capacity(24);
        for figure in [self.backlog_records, self.backlog_bytes, self.dead_records] {
            counters.extend_from_slice(&figure.to_be_bytes());
        }
        self.meta
            .insert(META_COUNTERS, counters)
            .map(|_| ())
            .map_err(|err| JournalError::storage("saving the journal counters", err))
    }

    /// The floor as of now: what a flush started now makes durable.
    pub(crate) fn floor(&self) -> Floor {
        Floor {
            epoch: self.epoch.clone(),
            seq: self.next_seq - 1,
            position: self.next_position - 1,
        }
    }
}
