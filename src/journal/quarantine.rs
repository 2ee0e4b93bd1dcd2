//! Quarantine: a damaged journal is moved aside whole (`quarantine-<UTC time>/`, with its
//! floor), never deleted, for `journal salvage` to read; the fresh journal that replaces it says
//! so in its first record.

use std::path::{Path, PathBuf};

use super::error::JournalError;
use super::floor;
use super::layout::JOURNAL_DIR;

/// Prefix of folders holding a damaged journal that has not been salvaged yet.
pub(crate) const QUARANTINE_PREFIX: &str = "quarantine-";
/// Prefix a quarantine folder is renamed to once salvage has copied what it could.
pub(crate) const SALVAGED_PREFIX: &str = "salvaged-";

/// A damaged journal that was moved aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// Where the damaged journal folder now is (`data_dir/quarantine-<UTC time>`).
    pub quarantine: PathBuf,
    /// Why it could not be used.
    pub reason: String,
}

/// Moves `data_dir/journal` to a new `data_dir/quarantine-<UTC time>` folder.
pub(crate) fn quarantine(data_dir: &Path) -> Result<PathBuf, JournalError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut target = data_dir.join(format!("{QUARANTINE_PREFIX}{stamp}"));
    let mut n = 2;
    while target.exists() || data_dir.join(format!("{SALVAGED_PREFIX}{stamp}")).exists() {
        target = data_dir.join(format!("{QUARANTINE_PREFIX}{stamp}-{n}"));
        n += 1;
    }
    let source = data_dir.join(JOURNAL_DIR);
    std::fs::rename(&source, &target).map_err(|err| {
        JournalError::io(
            format!(
                "cannot move damaged journal {} to {}",
                source.display(),
                target.display()
            ),
            err,
        )
    })?;
    Ok(target)
}

/// Moves `data_dir`'s floor into `quarantine`, the folder its damaged journal was just moved
/// to: the floor belonged to that journal and goes with it (salvage reads from it the last seq
/// that was durable, to tell which records it could not recover); the fresh journal writes its
/// own at its first flush. A floor that cannot be moved is removed.
pub(crate) fn move_floor_aside(data_dir: &Path, quarantine: &Path) {
    if let Err(err) = std::fs::rename(floor::path(data_dir), quarantine.join(floor::FLOOR_FILE)) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %err, "cannot move the floor of the damaged journal aside");
            if let Err(err) = std::fs::remove_file(floor::path(data_dir)) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %err, "cannot remove the floor of the damaged journal");
                }
            }
        }
    }
}

/// The `data` of the `journal_replaced` gateway record.
pub(crate) fn replaced_event(replaced: &Replaced, version: &str) -> serde_json::Value {
    serde_json::json!({
        "event": "journal_replaced",
        "version": version,
        "detail": format!(
            "{}; damaged journal moved to {}; run `posgw journal salvage` to recover records",
            replaced.reason,
            replaced.quarantine.display()
        ),
    })
}
