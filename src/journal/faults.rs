//! Fault injection: the seam through which tests make the journal's storage fail on purpose.
//!
//! A store is opened with a [`Faults`] value and asks it, at the few points where a real disk
//! fails in ways a test cannot bring about on demand, whether to fail there. Production opens
//! with [`NoFaults`], whose hooks do nothing; tests pass their own. Failures a test can cause
//! for real (a full disk through a file size limit, a deleted or damaged file) do not go
//! through here.

use std::fmt::Debug;
use std::sync::Arc;

/// Where the store asks whether to fail. Every hook defaults to "carry on".
pub(crate) trait Faults: Debug + Send + Sync {
    /// Before a new record's frame goes into the record log: an error fails that append, as a
    /// failing write would.
    fn before_append(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Before the records of a failed append are taken back out of the record log: an error
    /// means they could not be.
    fn before_roll_back(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// On the flusher's thread, before a flush's fsyncs: a slow disk waits here.
    fn before_flush(&self) {}
}

/// The production [`Faults`]: nothing fails.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NoFaults;

impl Faults for NoFaults {}

/// The faults a store was opened with, shared with the flushes it hands out.
pub(crate) type SharedFaults = Arc<dyn Faults>;

/// [`NoFaults`], shared.
pub(crate) fn none() -> SharedFaults {
    Arc::new(NoFaults)
}
