//! What the fleet keeps on disk: the tree `"fleet"` of HQ's management database
//! (`data_dir/manage`, sled 0.34, opened by [`open_manage_db`]). Keys are text prefixes:
//!
//! ```text
//! meta/version          u64 BE: the configuration version in force
//! meta/hash             the hash that version was given for (content + each store's part)
//! history/VERSION       u64 BE key; JSON {"version","at","who","what":[...]}: the last 1,000
//! editor/campaign/ID    JSON EditorEntry: a campaign made in the editor (and its targets)
//! editor/flow/ID        JSON EditorEntry: a flow made in the editor
//! store/CODE            JSON {"version","hash"}: the version a store's document last changed at
//! heartbeat/CODE        JSON {"received_at","heartbeat"}: the store's latest heartbeat
//! ```
//!
//! A version change (meta and its history entry) is one sled batch; editor changes and
//! version changes are flushed (fsynced) before the editor's request is answered. Heartbeats
//! are not flushed one by one: sled writes them out within its flush interval (500 ms), and
//! losing the last one in a crash costs only a "last seen" a poll older.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::content::{EditorEntry, Kind};
use crate::fleet::wire::Heartbeat;

/// sled's page cache of the management database: small, its trees are small.
const MANAGE_CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// History entries kept; older ones are deleted as new ones come.
pub const MAX_HISTORY: usize = 1_000;
/// The fleet's tree.
const TREE: &str = "fleet";

/// Opens (or creates) HQ's management database, `data_dir/manage`. Blocking; sled may panic
/// on a damaged database, so call it where a panic is caught (a blocking task).
pub fn open_manage_db(data_dir: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(data_dir.join("manage"))
        .cache_capacity(MANAGE_CACHE_BYTES)
        .open()
}

/// One version change, as the editor lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The version it made.
    pub version: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `hq.toml`, or the editor user's name.
    pub who: String,
    /// What changed, one line each.
    pub what: Vec<String>,
}

/// The version a store's document last changed at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreVersion {
    /// The configuration version.
    pub version: u64,
    /// The document's hash (its version left out).
    pub hash: String,
}

/// A store's latest heartbeat and when HQ received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// HQ's clock (RFC 3339, UTC).
    pub received_at: String,
    /// What the gateway sent.
    pub heartbeat: Heartbeat,
}

/// Everything the tree held at start.
#[derive(Debug, Default)]
pub struct Stored {
    /// `meta/version` (0: none yet).
    pub version: u64,
    /// `meta/hash` (empty: none yet).
    pub hash: String,
    /// History entries held.
    pub history_len: usize,
    /// The editor's entries.
    pub editor: BTreeMap<(Kind, String), EditorEntry>,
    /// Each store's document version.
    pub stores: HashMap<String, StoreVersion>,
    /// Each store's latest heartbeat.
    pub heartbeats: HashMap<String, Seen>,
}

/// The `"fleet"` tree.
#[derive(Clone)]
pub struct FleetDb {
    /// The management database (for flushes).
    db: crate::hq::manage::ManageDb,
    /// Its `"fleet"` tree.
    tree: crate::hq::manage::ManageTree,
}

impl FleetDb {
    /// The fleet's tree of the management database.
    pub(crate) fn new(db: crate::hq::manage::ManageDb) -> sled::Result<FleetDb> {
        let tree = db.open_tree(TREE)?;
        Ok(FleetDb { db, tree })
    }

    /// Reads everything back (at start). Entries that do not parse are logged and skipped.
    pub fn load(&self) -> sled::Result<Stored> {
        let mut stored = Stored::default();
        if let Some(bytes) = self.tree.get("meta/version")? {
            stored.version = u64_of(&bytes);
        }
        if let Some(bytes) = self.tree.get("meta/hash")? {
            stored.hash = String::from_utf8_lossy(&bytes).into_owned();
        }
        stored.history_len = self.tree.scan_prefix("history/").count();
        for item in self.tree.scan_prefix("editor/") {
            let (key, value) = item?;
            match serde_json::from_slice::<EditorEntry>(&value) {
                Ok(entry) => {
                    stored.editor.insert((entry.kind, entry.id.clone()), entry);
                }
                Err(error) => tracing::error!(
                    key = %String::from_utf8_lossy(&key),
                    %error,
                    "fleet: an editor entry in the database does not parse; skipped"
                ),
            }
        }
        for item in self.tree.scan_prefix("store/") {
            let (key, value) = item?;
            let code = String::from_utf8_lossy(&key["store/".len()..]).into_owned();
            if let Ok(version) = serde_json::from_slice::<StoreVersion>(&value) {
                stored.stores.insert(code, version);
            }
        }
        for item in self.tree.scan_prefix("heartbeat/") {
            let (key, value) = item?;
            let code = String::from_utf8_lossy(&key["heartbeat/".len()..]).into_owned();
            if let Ok(seen) = serde_json::from_slice::<Seen>(&value) {
                stored.heartbeats.insert(code, seen);
            }
        }
        Ok(stored)
    }

    /// Records a new version and its history entry in one batch, then deletes history beyond
    /// [`MAX_HISTORY`]; returns the history entries held.
    pub fn save_version(&self, hash: &str, history: &History) -> sled::Result<usize> {
        let mut batch = crate::hq::manage::ManageBatch::default();
        batch.insert("meta/version", history.version.to_be_bytes());
        batch.insert("meta/hash", hash.as_bytes());
        batch.insert(
            history_key(history.version),
            serde_json::to_vec(history).unwrap_or_default(),
        );
        self.tree.apply_batch(batch)?;
        let mut held = self.tree.scan_prefix("history/").count();
        while held > MAX_HISTORY {
            match self.tree.scan_prefix("history/").next() {
                Some(item) => {
                    self.tree.remove(item?.0)?;
                    held -= 1;
                }
                None => break,
            }
        }
        Ok(held)
    }

    /// The newest `limit` history entries, newest first.
    pub fn history(&self, limit: usize) -> Vec<History> {
        self.tree
            .scan_prefix("history/")
            .rev()
            .filter_map(Result::ok)
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .take(limit)
            .collect()
    }

    /// Saves (or replaces) an editor entry.
    pub fn put_editor(&self, entry: &EditorEntry) -> sled::Result<()> {
        self.tree.insert(
            editor_key(entry.kind, &entry.id),
            serde_json::to_vec(entry).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// Deletes an editor entry.
    pub fn remove_editor(&self, kind: Kind, id: &str) -> sled::Result<()> {
        self.tree.remove(editor_key(kind, id))?;
        Ok(())
    }

    /// Saves a store's document version.
    pub fn save_store(&self, code: &str, version: &StoreVersion) -> sled::Result<()> {
        self.tree.insert(
            format!("store/{code}"),
            serde_json::to_vec(version).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// Saves a store's latest heartbeat (not flushed by itself).
    pub fn save_heartbeat(&self, code: &str, seen: &Seen) -> sled::Result<()> {
        self.tree.insert(
            format!("heartbeat/{code}"),
            serde_json::to_vec(seen).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// Writes everything out and fsyncs.
    pub async fn flush(&self) -> sled::Result<()> {
        self.db.flush_async().await.map(|_| ())
    }
}

/// `history/` + the version, big-endian (keys sort by version).
fn history_key(version: u64) -> Vec<u8> {
    let mut key = b"history/".to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// `editor/KIND/ID`.
fn editor_key(kind: Kind, id: &str) -> String {
    format!("editor/{}/{id}", kind.as_str())
}

/// A u64 from 8 big-endian bytes (0 when shorter).
fn u64_of(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = FleetDb::new(crate::hq::manage::ManageDb::local(
            open_manage_db(dir.path()).expect("open"),
        ))
        .expect("tree");
        for version in 1..=(MAX_HISTORY as u64 + 5) {
            let held = db
                .save_version(
                    "h",
                    &History {
                        version,
                        at: "t".into(),
                        who: "hq.toml".into(),
                        what: vec![],
                    },
                )
                .expect("save");
            assert!(held <= MAX_HISTORY);
        }
        let newest = db.history(2);
        assert_eq!(newest[0].version, MAX_HISTORY as u64 + 5);
        assert_eq!(newest[1].version, MAX_HISTORY as u64 + 4);
        let stored = db.load().expect("load");
        assert_eq!(stored.version, MAX_HISTORY as u64 + 5);
        assert_eq!(stored.history_len, MAX_HISTORY);
        assert_eq!(db.history(usize::MAX).last().expect("oldest").version, 6);
    }
}
