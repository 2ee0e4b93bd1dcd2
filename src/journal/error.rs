//! The journal's error type.

use std::path::PathBuf;

use crate::record::InvalidData;

/// Everything the journal can fail with. Messages are lowercase and name what failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process (usually a running gateway) holds the journal; never treated as damage.
    #[error("journal at {} is in use by another process (stop the gateway first)", path.display())]
    InUse {
        /// The journal folder.
        path: PathBuf,
    },
    /// The journal (its record log or its sled metadata) could not be opened, or its contents
    /// make no sense.
    #[error("journal at {} is damaged: {reason}", path.display())]
    Damaged {
        /// The journal folder.
        path: PathBuf,
        /// What went wrong (a file or sled error, a panic message or a failed consistency check).
        reason: String,
    },
    /// An offline command found no journal where it looked.
    #[error("no journal at {}", path.display())]
    Missing {
        /// Where the journal was expected.
        path: PathBuf,
    },
    /// A file-system operation around the journal failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The record log's files or sled reported an error while the journal was running.
    #[error("journal storage error while {context}: {reason}")]
    Storage {
        /// What was being done.
        context: &'static str,
        /// The underlying error's message.
        reason: String,
    },
    /// An fsync failed, so records at or after `position` are not known to be durable.
    #[error("journal flush failed: {0}")]
    Flush(String),
    /// The record's `data` was not a JSON object (or could not be serialised).
    #[error("record data is invalid: {0}")]
    InvalidData(String),
    /// A reader asked for something the journal cannot do.
    #[error("journal request rejected: {0}")]
    Rejected(String),
    /// The journal actor has stopped (closed, or failed).
    #[error("journal is closed")]
    Closed,
}

impl From<InvalidData> for JournalError {
    fn from(error: InvalidData) -> Self {
        Self::InvalidData(error.0)
    }
}

impl JournalError {
    /// Wraps a storage error (record log or sled) met while doing `context`.
    pub(crate) fn storage(context: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Storage {
            context,
            reason: err.to_string(),
        }
    }

    /// Wraps an I/O error with a context naming the path.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
