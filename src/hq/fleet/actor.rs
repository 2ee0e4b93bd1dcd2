//! The owner of the fleet's state: one task holds `hq.toml`'s entries, the editor's, the
//! content in force, its version and history, each store's document version and the stores'
//! latest heartbeats, and is the only writer of the `"fleet"` tree. Others use a
//! [`FleetHandle`]: commands over a bounded channel, and for the hot path (`GET
//! /v1/fleet/{store}/config`) a published snapshot of every store's document, its bytes and
//! ETag made once per change, which a request reads under a lock held for an `Arc` clone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::config::{validate_json, FleetSettings, Known};
use super::content::{
    chain, changes, document_hash, hash_hex, join, version_hash, Content, EditorEntry, Kind, Source,
};
use super::db::{FleetDb, History, Seen, StoreVersion, MAX_HISTORY};
use crate::fleet::wire::Heartbeat;
use crate::hq::access::Scope;
use crate::hq::config::{HqSettings, RegionSettings};

/// Commands waiting for the actor at most; senders wait beyond.
const COMMAND_QUEUE: usize = 1024;

/// A store's document as served: made once per change.
#[derive(Debug)]
pub struct StoreDocument {
    /// The version it last changed at.
    pub version: u64,
    /// `"…"`: a hash of `body`.
    pub etag: String,
    /// The JSON body.
    pub body: Bytes,
}

/// What `GET /v1/fleet/{store}/config` reads: every configured store's document.
#[derive(Debug, Default)]
pub struct Published {
    /// Store code -> its document.
    pub documents: HashMap<String, Arc<StoreDocument>>,
}

/// Why the editor refused a change.
#[derive(Debug)]
pub struct EditorError {
    /// 404, 409, 422 or 503.
    pub status: u16,
    /// What went wrong.
    pub message: String,
    /// The validators' problems (422).
    pub errors: Vec<String>,
}

impl EditorError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        EditorError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    fn storage(error: sled::Error) -> Self {
        tracing::error!(%error, "fleet: the management database failed");
        EditorError::new(503, format!("the management database failed: {error}"))
    }
}

/// A request to the actor.
enum Command {
    /// `hq.toml` was loaded again.
    Reload {
        fleet: FleetSettings,
        stores: Vec<String>,
        regions: Vec<RegionSettings>,
        file: String,
        reply: oneshot::Sender<()>,
    },
    /// `PUT /v1/fleet/{kind}s/{id}`.
    Put {
        kind: Kind,
        id: String,
        body: Value,
        by: String,
        reply: oneshot::Sender<Result<Value, EditorError>>,
    },
    /// `DELETE /v1/fleet/{kind}s/{id}`.
    Delete {
        kind: Kind,
        id: String,
        by: String,
        reply: oneshot::Sender<Result<Value, EditorError>>,
    },
    /// `GET /v1/fleet/editor`.
    Editor { reply: oneshot::Sender<Value> },
    /// `POST /v1/fleet/{store}/heartbeat`.
    Heartbeat {
        store: String,
        heartbeat: Box<Heartbeat>,
        reply: oneshot::Sender<()>,
    },
    /// `GET /v1/fleet`.
    View {
        scope: Scope,
        reply: oneshot::Sender<Value>,
    },
    /// Flush and stop.
    Close { reply: oneshot::Sender<()> },
}

/// The handle to the fleet's owner. Cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    /// The actor's queue.
    commands: mpsc::Sender<Command>,
    /// Every store's document, replaced whole on each change.
    published: Arc<RwLock<Arc<Published>>>,
}

impl FleetHandle {
    /// Reads the `"fleet"` tree of `db` and starts the owner with `settings`' configuration;
    /// the version moves on if `hq.toml` changed since the last run.
    pub(crate) async fn open(
        db: crate::hq::manage::ManageDb,
        settings: &HqSettings,
    ) -> anyhow::Result<FleetHandle> {
        let db = FleetDb::new(db)?;
        let loading = db.clone();
        let stored = tokio::task::spawn_blocking(move || loading.load())
            .await
            .map_err(|error| anyhow::anyhow!("reading the fleet tree panicked: {error}"))??;
        let published = Arc::new(RwLock::new(Arc::new(Published::default())));
        let mut actor = Actor {
            db,
            file: settings.fleet.clone(),
            file_name: file_name(settings),
            known: Known::default(),
            stores: Vec::new(),
            store_region: HashMap::new(),
            editor: stored.editor,
            content: Content::default(),
            version: stored.version,
            hash: stored.hash,
            history_len: stored.history_len,
            store_versions: stored.stores,
            heartbeats: stored.heartbeats,
            published: published.clone(),
        };
        actor.directory(
            settings.stores.iter().map(|s| s.code.clone()).collect(),
            &settings.regions,
        );
        let who = actor.file_name.clone();
        actor.rebuild(&who)?;
        actor.db.flush().await?;
        tracing::info!(
            version = actor.version,
            campaigns = actor.content.campaigns.len(),
            flows = actor.content.flows.len(),
            "fleet configuration in force"
        );
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(actor.run(receiver));
        Ok(FleetHandle {
            commands,
            published,
        })
    }

    /// The document of `store`, if it is configured.
    pub fn document(&self, store: &str) -> Option<Arc<StoreDocument>> {
        let published = self
            .published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        published.documents.get(store).cloned()
    }

    /// Puts a reloaded `hq.toml`'s fleet configuration, stores and regions in force (queued
    /// in order; the change is published once the owner has taken it).
    pub fn reload(&self, settings: &HqSettings) {
        let (reply, _done) = oneshot::channel();
        let command = Command::Reload {
            fleet: settings.fleet.clone(),
            stores: settings.stores.iter().map(|s| s.code.clone()).collect(),
            regions: settings.regions.clone(),
            file: file_name(settings),
            reply,
        };
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            let commands = self.commands.clone();
            tokio::spawn(async move { commands.send(command).await });
        }
    }

    /// Saves a campaign or flow from the editor.
    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        body: Value,
        by: &str,
    ) -> Result<Value, EditorError> {
        let (reply, answer) = oneshot::channel();
        self.ask(
            Command::Put {
                kind,
                id: id.to_string(),
                body,
                by: by.to_string(),
                reply,
            },
            answer,
        )
        .await
        .unwrap_or_else(|| Err(EditorError::new(503, "the fleet is shutting down")))
    }

    /// Deletes (ends) an editor campaign or flow.
    pub async fn delete(&self, kind: Kind, id: &str, by: &str) -> Result<Value, EditorError> {
        let (reply, answer) = oneshot::channel();
        self.ask(
            Command::Delete {
                kind,
                id: id.to_string(),
                by: by.to_string(),
                reply,
            },
            answer,
        )
        .await
        .unwrap_or_else(|| Err(EditorError::new(503, "the fleet is shutting down")))
    }

    /// The editor's listing.
    pub async fn editor(&self) -> Option<Value> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::Editor { reply }, answer).await
    }

    /// Records a store's heartbeat.
    pub async fn heartbeat(&self, store: &str, heartbeat: Heartbeat) -> Option<()> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Heartbeat {
            store: store.to_string(),
            heartbeat: Box::new(heartbeat),
            reply,
        };
        self.ask(command, answer).await
    }

    /// The fleet view for `scope`.
    pub async fn view(&self, scope: Scope) -> Option<Value> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::View { scope, reply }, answer).await
    }

    /// Flushes the tree; the actor stops.
    pub async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        let _ = self.ask(Command::Close { reply }, answer).await;
    }

    async fn ask<T>(&self, command: Command, answer: oneshot::Receiver<T>) -> Option<T> {
        self.commands.send(command).await.ok()?;
        answer.await.ok()
    }
}

/// The name history gives `hq.toml` (the main file's name, as configured).
fn file_name(settings: &HqSettings) -> String {
    settings
        .files
        .first()
        .and_then(|path| path.file_name())
        .map_or_else(
            || "hq.toml".to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
}

/// The fleet's state; see the module doc.
struct Actor {
    /// The `"fleet"` tree.
    db: FleetDb,
    /// `hq.toml`'s entries.
    file: FleetSettings,
    /// `hq.toml`'s name, for history and 409s.
    file_name: String,
    /// The stores and regions targeting may name.
    known: Known,
    /// Configured stores, in file order.
    stores: Vec<String>,
    /// Store -> its region.
    store_region: HashMap<String, String>,
    /// The editor's entries (in force or set aside).
    editor: BTreeMap<(Kind, String), EditorEntry>,
    /// What is in force.
    content: Content,
    /// Its version.
    version: u64,
    /// The hash that version was given for.
    hash: String,
    /// History entries held.
    history_len: usize,
    /// Each store's document version.
    store_versions: HashMap<String, StoreVersion>,
    /// Each store's latest heartbeat (also of stores no longer configured, not shown).
    heartbeats: HashMap<String, Seen>,
    /// Where the documents are published.
    published: Arc<RwLock<Arc<Published>>>,
}

impl Actor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Reload {
                    fleet,
                    stores,
                    regions,
                    file,
                    reply,
                } => {
                    self.file = fleet;
                    self.file_name = file;
                    self.directory(stores, &regions);
                    let who = self.file_name.clone();
                    if let Err(error) = self.rebuild(&who) {
                        tracing::error!(%error, "fleet: cannot record the reloaded configuration");
                    }
                    self.flush().await;
                    let _ = reply.send(());
                }
                Command::Put {
                    kind,
                    id,
                    body,
                    by,
                    reply,
                } => {
                    let result = self.put(kind, &id, body, &by).await;
                    let _ = reply.send(result);
                }
                Command::Delete {
                    kind,
                    id,
                    by,
                    reply,
                } => {
                    let result = self.delete(kind, &id, &by).await;
                    let _ = reply.send(result);
                }
                Command::Editor { reply } => {
                    let _ = reply.send(self.listing());
                }
                Command::Heartbeat {
                    store,
                    heartbeat,
                    reply,
                } => {
                    let seen = Seen {
                        received_at: now(),
                        heartbeat: *heartbeat,
                    };
                    if let Err(error) = self.db.save_heartbeat(&store, &seen) {
                        tracing::warn!(%error, store, "fleet: cannot save a heartbeat");
                    }
                    self.heartbeats.insert(store, seen);
                    let _ = reply.send(());
                }
                Command::View { scope, reply } => {
                    let _ = reply.send(self.view(&scope));
                }
                Command::Close { reply } => {
                    self.flush().await;
                    let _ = reply.send(());
                    return;
                }
            }
        }
        self.flush().await;
    }

    async fn flush(&self) {
        if let Err(error) = self.db.flush().await {
            tracing::error!(%error, "fleet: cannot flush the management database");
        }
    }

    /// Takes a configuration's stores and regions.
    fn directory(&mut self, stores: Vec<String>, regions: &[RegionSettings]) {
        self.known = Known::new(&stores, regions);
        self.store_region = regions
            .iter()
            .flat_map(|region| {
                region
                    .stores
                    .iter()
                    .map(|store| (store.clone(), region.id.clone()))
            })
            .collect();
        self.stores = stores;
    }

    /// Joins the file's and the editor's entries, moves the version on if what any store gets
    /// changed (recording `who` and what), and publishes every store's document.
    fn rebuild(&mut self, who: &str) -> sled::Result<()> {
        let content = join(&self.file, &self.editor, &self.known);
        for aside in &content.set_aside {
            if !self.content.set_aside.contains(aside) {
                tracing::warn!(
                    kind = aside.kind.as_str(),
                    id = aside.id,
                    reasons = aside.reasons.join("; "),
                    "fleet: an editor entry is set aside (kept, not in force)"
                );
            }
        }
        let mut documents = Vec::with_capacity(self.stores.len());
        let mut hashes = BTreeMap::new();
        for store in &self.stores {
            let region = self.store_region.get(store).map(String::as_str);
            let document = content.document_for(store, region);
            hashes.insert(store.clone(), document_hash(&document));
            documents.push((store.clone(), document));
        }
        let hash = version_hash(&content, &hashes);
        if hash != self.hash {
            let mut what = changes(&self.content, &content);
            if what.is_empty() {
                what.push(if self.version == 0 {
                    "first configuration".to_string()
                } else {
                    "what the stores get changed (stores or regions of hq.toml)".to_string()
                });
            }
            let history = History {
                version: self.version + 1,
                at: now(),
                who: who.to_string(),
                what,
            };
            self.history_len = self.db.save_version(&hash, &history)?;
            self.version = history.version;
            self.hash = hash;
            tracing::info!(
                version = self.version,
                who,
                what = history.what.join("; "),
                "fleet configuration version changed"
            );
        }
        let mut published = Published::default();
        for (store, mut document) in documents {
            let hash = &hashes[&store];
            let version = match self.store_versions.get(&store) {
                Some(known) if &known.hash == hash => known.version,
                _ => {
                    let version = StoreVersion {
                        version: self.version,
                        hash: hash.clone(),
                    };
                    self.db.save_store(&store, &version)?;
                    self.store_versions.insert(store.clone(), version);
                    self.version
                }
            };
            document.version = version;
            let body = serde_json::to_vec(&document).unwrap_or_default();
            let etag = format!("\"{}\"", &hash_hex(&body)[..32]);
            published.documents.insert(
                store,
                Arc::new(StoreDocument {
                    version,
                    etag,
                    body: body.into(),
                }),
            );
        }
        self.content = content;
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(published);
        Ok(())
    }

    /// The editor's entries in force (not set aside), but `except`.
    fn active_editor(&self, except: (Kind, &str)) -> Vec<&EditorEntry> {
        self.editor
            .values()
            .filter(|entry| (entry.kind, entry.id.as_str()) != except)
            .filter(|entry| {
                !self
                    .content
                    .set_aside
                    .iter()
                    .any(|aside| aside.kind == entry.kind && aside.id == entry.id)
            })
            .collect()
    }

    /// 409 when `hq.toml` has an entry `id`.
    fn refuse_file_entry(&self, id: &str) -> Result<(), EditorError> {
        let in_file = self
            .file
            .campaigns
            .iter()
            .map(|entry| ("campaign", entry))
            .chain(self.file.flows.iter().map(|entry| ("flow", entry)))
            .find(|(_, entry)| entry.id == id);
        match in_file {
            Some((kind, _)) => Err(EditorError::new(
                409,
                format!(
                    "'{id}' is a {kind} of {}: it is read-only here; change it in that file \
                     (and reload posgw hq)",
                    self.file_name
                ),
            )),
            None => Ok(()),
        }
    }

    async fn put(
        &mut self,
        kind: Kind,
        id: &str,
        mut body: Value,
        by: &str,
    ) -> Result<Value, EditorError> {
        let Some(fields) = body.as_object_mut() else {
            return Err(EditorError::new(
                422,
                format!(
                    "the body must be a JSON object: the {} in the gateway's keys, with \
                     optional 'stores' and 'regions'",
                    kind.as_str()
                ),
            ));
        };
        match fields.get("id") {
            None | Some(Value::Null) => {
                fields.insert("id".into(), id.into());
            }
            Some(Value::String(written)) if written == id => {}
            Some(other) => {
                return Err(EditorError::new(
                    422,
                    format!("the body's 'id' ({other}) is not the path's '{id}'"),
                ))
            }
        }
        self.refuse_file_entry(id)?;
        let entry = EditorEntry {
            kind,
            id: id.to_string(),
            entry: Value::Null,
            targets: Default::default(),
            by: by.to_string(),
            at: now(),
        };
        let label = entry.label();
        let mut candidate = chain(&self.file, self.active_editor((kind, id)));
        match kind {
            Kind::Campaign => candidate.campaigns.push((label.clone(), body)),
            Kind::Flow => candidate.flows.push((label.clone(), body)),
        }
        let settings = validate_json(&candidate, &self.known).map_err(|problems| {
            refused(problems.iter().map(|problem| {
                if problem.path.as_os_str() == label.as_str() {
                    problem.message.clone()
                } else {
                    format!("{}: {}", problem.path.display(), problem.message)
                }
            }))
        })?;
        let validated = match kind {
            Kind::Campaign => settings.campaigns,
            Kind::Flow => settings.flows,
        }
        .into_iter()
        .find(|fleet| fleet.id == id)
        .ok_or_else(|| EditorError::new(422, "the entry did not validate"))?;
        let entry = EditorEntry {
            entry: validated.entry,
            targets: validated.targets,
            ..entry
        };
        let unchanged = self
            .editor
            .get(&(kind, id.to_string()))
            .is_some_and(|old| old.entry == entry.entry && old.targets == entry.targets);
        if !unchanged {
            self.db.put_editor(&entry).map_err(EditorError::storage)?;
            self.editor.insert((kind, id.to_string()), entry.clone());
            self.rebuild(by).map_err(EditorError::storage)?;
            self.db.flush().await.map_err(EditorError::storage)?;
        }
        Ok(json!({
            "version": self.version,
            "changed": !unchanged,
            kind.as_str(): entry.with_targets(),
        }))
    }

    async fn delete(&mut self, kind: Kind, id: &str, by: &str) -> Result<Value, EditorError> {
        self.refuse_file_entry(id)?;
        if !self.editor.contains_key(&(kind, id.to_string())) {
            return Err(EditorError::new(
                404,
                format!("no {} '{id}' in the editor", kind.as_str()),
            ));
        }
        let candidate = chain(&self.file, self.active_editor((kind, id)));
        validate_json(&candidate, &self.known)
            .map_err(|problems| refused(problems.iter().map(ToString::to_string)))?;
        self.db
            .remove_editor(kind, id)
            .map_err(EditorError::storage)?;
        self.editor.remove(&(kind, id.to_string()));
        self.rebuild(by).map_err(EditorError::storage)?;
        self.db.flush().await.map_err(EditorError::storage)?;
        Ok(json!({"version": self.version}))
    }

    /// `GET /v1/fleet/editor`'s body.
    fn listing(&self) -> Value {
        let entries = |kind: Kind| -> Vec<Value> {
            let mut out: Vec<Value> = self
                .content
                .entries()
                .filter(|entry| entry.kind == kind)
                .map(|entry| {
                    let mut item = json!({
                        "id": entry.fleet.id,
                        "entry": entry.fleet.with_targets(),
                        "stores": entry.fleet.targets.stores,
                        "regions": entry.fleet.targets.regions,
                        "in_force": true,
                    });
                    match &entry.source {
                        Source::File => item["source"] = self.file_name.clone().into(),
                        Source::Editor { by, at } => {
                            item["source"] = "editor".into();
                            item["by"] = by.clone().into();
                            item["at"] = at.clone().into();
                        }
                    }
                    item
                })
                .collect();
            for aside in self.content.set_aside.iter().filter(|a| a.kind == kind) {
                if let Some(entry) = self.editor.get(&(kind, aside.id.clone())) {
                    out.push(json!({
                        "id": entry.id,
                        "entry": entry.with_targets(),
                        "stores": entry.targets.stores,
                        "regions": entry.targets.regions,
                        "source": "editor",
                        "by": entry.by,
                        "at": entry.at,
                        "in_force": false,
                        "set_aside": aside.reasons,
                    }));
                }
            }
            out
        };
        json!({
            "version": self.version,
            "file": self.file_name,
            "campaigns": entries(Kind::Campaign),
            "flows": entries(Kind::Flow),
            "answer_codes": self.content.answer_codes,
            "skip_reasons": self.content.skip_reasons,
            "history": self.db.history(MAX_HISTORY.min(self.history_len.max(1))),
        })
    }

    /// `GET /v1/fleet`'s body for `scope` (region users: their stores only).
    fn view(&self, scope: &Scope) -> Value {
        let now = Utc::now();
        let stores: Vec<Value> = self
            .stores
            .iter()
            .filter(|store| scope.sees_store(store))
            .map(|store| {
                let expected = self
                    .store_versions
                    .get(store)
                    .map_or(self.version, |known| known.version);
                let region = self.store_region.get(store);
                let mut item = json!({
                    "store": store,
                    "region": region,
                    "expected_version": expected,
                    "last_heartbeat_at": null,
                    "online": false,
                    "config_version": null,
                    "stale": false,
                });
                let Some(seen) = self.heartbeats.get(store) else {
                    return item;
                };
                let beat = &seen.heartbeat;
                let age_ms = DateTime::parse_from_rfc3339(&seen.received_at)
                    .map(|at| (now - at.with_timezone(&Utc)).num_milliseconds())
                    .unwrap_or(i64::MAX);
                let online = age_ms >= 0 && (age_ms as u64) < beat.poll_ms.saturating_mul(3);
                let backlog_age_s = beat
                    .journal
                    .oldest_backlog_ts
                    .as_deref()
                    .and_then(|ts| DateTime::parse_from_rfc3339(ts).ok())
                    .map(|ts| (now - ts.with_timezone(&Utc)).num_seconds().max(0));
                let down: Vec<&str> = beat
                    .devices
                    .iter()
                    .filter(|device| device.state != "connected")
                    .map(|device| device.id.as_str())
                    .collect();
                item["last_heartbeat_at"] = seen.received_at.clone().into();
                item["online"] = online.into();
                item["poll_s"] = (beat.poll_ms as f64 / 1000.0).into();
                item["gateway"] = beat.gateway.clone().into();
                item["gateway_version"] = beat.version.clone().into();
                item["config_version"] = beat.config_version.into();
                item["stale"] = beat.config_version.is_none_or(|v| v < expected).into();
                item["devices"] = json!(beat.devices);
                item["devices_down"] = json!(down);
                item["backlog_records"] = beat.journal.backlog_records.into();
                item["oldest_backlog_ts"] = beat.journal.oldest_backlog_ts.clone().into();
                item["backlog_age_s"] = backlog_age_s.into();
                item["uplink"] = json!(beat.uplink);
                item["clock_synced"] = beat.clock.synced.into();
                item["refused"] = json!(beat.refused);
                item["clashes"] = json!(beat.clashes);
                item
            })
            .collect();
        json!({
            "version": self.version,
            "generated_at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "stores": stores,
        })
    }
}

/// A 422 listing the validators' problems.
fn refused(problems: impl Iterator<Item = String>) -> EditorError {
    EditorError {
        errors: problems.collect(),
        ..EditorError::new(422, "the configuration does not validate")
    }
}

/// Now, RFC 3339 UTC with milliseconds.
fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
