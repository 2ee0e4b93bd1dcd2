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
        /// The underlying error, kept whole (a record log error keeps its I/O error: see
        /// [`JournalError::io_kind`]). Not this error's `source()`: the message already ends in
        /// its text, and a chain printer would repeat it.
        reason: Box<dyn std::error::Error + Send + Sync>,
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
    /// Wraps a storage error (record log or sled, or a message) met while doing `context`.
    pub(crate) fn storage(
        context: &'static str,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Storage {
            context,
            reason: err.into(),
        }
    }

    /// The kind of the I/O error behind this one, if a file-system call failed: an
    /// [`JournalError::Io`], or a [`JournalError::Storage`] whose error (or one of its sources)
    /// is an I/O error, as a record log error that met one is.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            Self::Storage { reason, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(reason.as_ref());
                while let Some(error) = cause {
                    if let Some(io) = error.downcast_ref::<std::io::Error>() {
                        return Some(io.kind());
                    }
                    cause = error.source();
                }
                None
            }
            _ => None,
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
