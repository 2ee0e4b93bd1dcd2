//! The last good copy of HQ's document: `data_dir/fleet-config.json`, written after each
//! document the gateway applied, read at start so a gateway that cannot reach HQ (or restarts
//! while HQ is down) keeps HQ's campaigns and flows.
//!
//! Written atomically: the new copy goes to `fleet-config.json.tmp`, is fsynced, renamed over
//! the old one, and the folder is fsynced, so a power cut leaves the old copy or the new one,
//! never half of either. A copy that does not parse, or is another store's (the store code
//! changed), is ignored with a warning: the gateway then starts on its local file alone.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::FleetDocument;

/// The copy's file name in `data_dir`.
pub const FILE_NAME: &str = "fleet-config.json";
/// Largest copy read: twice the largest document the gateway accepts from HQ.
const MAX_COPY_BYTES: u64 = 2 * super::client::MAX_DOCUMENT_BYTES as u64;

/// What the copy holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastGood {
    /// The store it was fetched for.
    pub store: String,
    /// Where from.
    pub url: String,
    /// HQ's ETag of it, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// When it was fetched (RFC 3339, store-local).
    pub fetched_at: String,
    /// The document.
    pub document: FleetDocument,
}

/// Where the copy lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The copy for `store`; `Ok(None)` when there is none, `Err` (why) when it cannot be used.
pub fn load(data_dir: &Path, store: &str) -> Result<Option<LastGood>, String> {
    let path = path(data_dir);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_COPY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if bytes.len() as u64 > MAX_COPY_BYTES {
        return Err(format!(
            "{} is larger than {MAX_COPY_BYTES} bytes",
            path.display()
        ));
    }
    let copy: LastGood = serde_json::from_slice(&bytes)
        .map_err(|error| format!("{} does not parse: {error}", path.display()))?;
    if copy.store != store {
        return Err(format!(
            "{} belongs to store '{}', not '{store}'",
            path.display(),
            copy.store
        ));
    }
    Ok(Some(copy))
}

/// Replaces the copy atomically (temp file, fsync, rename, fsync of the folder).
pub fn save(data_dir: &Path, copy: &LastGood) -> std::io::Result<()> {
    let target = path(data_dir);
    let temporary = data_dir.join(format!("{FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec_pretty(copy).map_err(std::io::Error::other)?;
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &target)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(store: &str) -> LastGood {
        LastGood {
            store: store.into(),
            url: "http://hq/v1/fleet".into(),
            etag: Some("\"e\"".into()),
            fetched_at: "2026-12-07T10:00:00.000+08:00".into(),
            document: FleetDocument {
                version: 3,
                skip_reasons: vec!["忙".into()],
                ..FleetDocument::default()
            },
        }
    }

    #[test]
    fn a_saved_copy_loads_for_its_store_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path(), "S1"), Ok(None));
        save(dir.path(), &copy("S1")).expect("save");
        save(dir.path(), &copy("S1")).expect("save over");
        assert_eq!(load(dir.path(), "S1"), Ok(Some(copy("S1"))));
        assert!(!dir.path().join("fleet-config.json.tmp").exists());
        assert!(load(dir.path(), "S2")
            .expect_err("other store")
            .contains("belongs to store 'S1'"));
        std::fs::write(path(dir.path()), "{").expect("write");
        assert!(load(dir.path(), "S1")
            .expect_err("broken")
            .contains("does not parse"));
    }
}
