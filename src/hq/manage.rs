//! The management state's storage and who runs it: the alerts and their deliveries (`alerts`,
//! `notify`), the fleet's configuration versions, editor entries and heartbeats (`fleet`).
//!
//! The owners of that state (the alert task, the notifier, the fleet actor) keep it in the
//! sled database `data_dir/manage`, through [`ManageDb`] and [`ManageTree`]: sled's own calls,
//! with every write also noted in a [`Mirror`]. With the sled backend the mirror is off and
//! nothing else happens. With PostgreSQL, each flush (the point where an owner makes a change
//! durable before it answers) also writes the changes noted since the last one to the
//! `manage_kv` table in one transaction, so a change that was answered is in the database.
//!
//! With PostgreSQL only one receiver runs the owners at a time: the one holding the jobs lock
//! (`pg::Leadership`). When it takes the lock, `server::Management` starts a new management
//! epoch, reloads `data_dir/manage` from `manage_kv` ([`load_from`]) and starts them; when it
//! loses the lock it stops them. The epoch fences a receiver that lost the lock without
//! knowing yet: the database refuses its writes once another took over. Meanwhile the others
//! answer the management routes with 503, and `GET /healthz/manage` tells a balancer which
//! receiver to send them to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use super::pg::PgStore;

/// One change noted for the database: a key of a tree set to a value, or removed.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The tree (`alerts`, `notify_outbox`, `fleet`).
    pub tree: String,
    /// The key.
    pub key: Vec<u8>,
    /// The value; `None`: removed.
    pub value: Option<Vec<u8>>,
}

/// A key of one of the management trees: (tree, key).
type TreeKey = (String, Vec<u8>);

/// The changes not yet in PostgreSQL, and where they go.
pub(crate) struct Mirror {
    /// The database.
    pg: PgStore,
    /// The management epoch this receiver took over in (`PgStore::next_manage_epoch`): the
    /// database refuses its writes once another receiver took over after it.
    epoch: i64,
    /// The last change of each key not written yet (at most one entry a key, however long
    /// the database is away).
    pending: Mutex<BTreeMap<TreeKey, Option<Vec<u8>>>>,
    /// One flush at a time: a later flush's changes never commit before an earlier one's.
    flushing: tokio::sync::Mutex<()>,
}

impl Mirror {
    pub(crate) fn new(pg: PgStore, epoch: i64) -> Arc<Mirror> {
        Arc::new(Mirror {
            pg,
            epoch,
            pending: Mutex::new(BTreeMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    fn note(&self, changes: impl IntoIterator<Item = Change>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            pending.insert((change.tree, change.key), change.value);
        }
    }

    /// Writes the changes noted so far in one transaction; on failure they stay noted (the
    /// next flush tries them again) and the error says why.
    async fn flush(&self) -> anyhow::Result<()> {
        let _turn = self.flushing.lock().await;
        let changes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if changes.is_empty() {
            return Ok(());
        }
        let last: BTreeMap<(&str, &[u8]), Option<&[u8]>> = changes
            .iter()
            .map(|((tree, key), value)| ((tree.as_str(), key.as_slice()), value.as_deref()))
            .collect();
        let result = self.pg.write_manage(self.epoch, &last).await;
        if result.is_err() {
            // Kept for the next flush, unless a later change of the key came meanwhile.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (key, value) in changes {
                pending.entry(key).or_insert(value);
            }
        }
        result
    }
}

/// The management database: sled, and the mirror (PostgreSQL only). Cheap to clone.
#[derive(Clone)]
pub(crate) struct ManageDb {
    db: sled::Db,
    mirror: Option<Arc<Mirror>>,
}

impl ManageDb {
    /// `db` alone (the sled backend, tests).
    pub(crate) fn local(db: sled::Db) -> ManageDb {
        ManageDb { db, mirror: None }
    }

    /// `db`, its changes also written to PostgreSQL at each flush.
    pub(crate) fn mirrored(db: sled::Db, mirror: Arc<Mirror>) -> ManageDb {
        ManageDb {
            db,
            mirror: Some(mirror),
        }
    }

    pub(crate) fn open_tree(&self, name: &'static str) -> sled::Result<ManageTree> {
        Ok(ManageTree {
            tree: self.db.open_tree(name)?,
            name,
            mirror: self.mirror.clone(),
        })
    }

    /// Whether the changes also go to PostgreSQL.
    pub(crate) fn is_mirrored(&self) -> bool {
        self.mirror.is_some()
    }

    /// Makes every write so far durable: fsyncs sled, then writes the changes to PostgreSQL.
    pub(crate) async fn flush_async(&self) -> sled::Result<usize> {
        let flushed = self.db.flush_async().await?;
        mirror_flush(&self.mirror).await?;
        Ok(flushed)
    }
}

/// Writes the mirror's changes, if there is a mirror; its error as sled's.
async fn mirror_flush(mirror: &Option<Arc<Mirror>>) -> sled::Result<()> {
    if let Some(mirror) = mirror {
        mirror.flush().await.map_err(|error| {
            sled::Error::Io(std::io::Error::other(format!(
                "cannot write the management state to PostgreSQL: {error:#}"
            )))
        })?;
    }
    Ok(())
}

/// A sled tree of the management database whose writes are noted in the mirror.
#[derive(Clone)]
pub(crate) struct ManageTree {
    tree: sled::Tree,
    name: &'static str,
    mirror: Option<Arc<Mirror>>,
}

impl ManageTree {
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<sled::IVec>> {
        self.tree.get(key)
    }

    pub(crate) fn contains_key(&self, key: impl AsRef<[u8]>) -> sled::Result<bool> {
        self.tree.contains_key(key)
    }

    pub(crate) fn iter(&self) -> sled::Iter {
        self.tree.iter()
    }

    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> sled::Iter {
        self.tree.scan_prefix(prefix)
    }

    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> sled::Result<Option<sled::IVec>> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let old = self.tree.insert(key, value)?;
        if let Some(mirror) = &self.mirror {
            mirror.note([Change {
                tree: self.name.to_string(),
                key: key.to_vec(),
                value: Some(value.to_vec()),
            }]);
        }
        Ok(old)
    }

    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<sled::IVec>> {
        let key = key.as_ref();
        let old = self.tree.remove(key)?;
        if let Some(mirror) = &self.mirror {
            mirror.note([Change {
                tree: self.name.to_string(),
                key: key.to_vec(),
                value: None,
            }]);
        }
        Ok(old)
    }

    /// Applies `batch` atomically (one sled batch).
    pub(crate) fn apply_batch(&self, batch: ManageBatch) -> sled::Result<()> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in &batch.changes {
            match value {
                Some(value) => sled_batch.insert(key.as_slice(), value.as_slice()),
                None => sled_batch.remove(key.as_slice()),
            }
        }
        self.tree.apply_batch(sled_batch)?;
        if let Some(mirror) = &self.mirror {
            mirror.note(batch.changes.into_iter().map(|(key, value)| Change {
                tree: self.name.to_string(),
                key,
                value,
            }));
        }
        Ok(())
    }

    /// As [`ManageDb::flush_async`] (sled flushes the whole database from any tree).
    pub(crate) async fn flush_async(&self) -> sled::Result<usize> {
        let flushed = self.tree.flush_async().await?;
        mirror_flush(&self.mirror).await?;
        Ok(flushed)
    }
}

/// Writes for [`ManageTree::apply_batch`], applied together.
#[derive(Debug, Default)]
pub(crate) struct ManageBatch {
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl ManageBatch {
    pub(crate) fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.changes
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.changes.push((key.as_ref().to_vec(), None));
    }
}

/// The trees of the management database.
pub(crate) const TREES: [&str; 3] = ["alerts", "notify_outbox", "fleet"];

/// Makes the management trees of `db` what PostgreSQL holds (`manage_kv`): the receiver that
/// takes over management starts from the last state any receiver made durable.
pub(crate) async fn load_from(pg: &PgStore, db: &sled::Db) -> anyhow::Result<usize> {
    let rows = pg.read_manage().await?;
    let db = db.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        for name in TREES {
            db.drop_tree(name)
                .with_context(|| format!("cannot empty the {name} tree"))?;
        }
        let count = rows.len();
        for (tree, key, value) in rows {
            let Some(name) = TREES.iter().find(|name| **name == tree) else {
                tracing::warn!(%tree, "an unknown management tree in PostgreSQL; skipped");
                continue;
            };
            db.open_tree(name)?.insert(key, value)?;
        }
        db.flush()?;
        Ok(count)
    })
    .await
    .map_err(|error| anyhow::anyhow!("loading the management state panicked: {error}"))?
}
