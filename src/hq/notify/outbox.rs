//! The outbox's storage: one entry per (alert, target) in the sled tree `notify_outbox` of
//! HQ's database, its key and value format, and the few operations the notifier needs.
//!
//! Only the notifier task calls this (it owns the outbox); nothing here decides anything.
//! Writes are not flushed here except by [`Outbox::flush`], which the notifier calls where a
//! promise depends on it (an accepted enqueue, a recorded delivery).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::handle::Notice;

/// Name of the tree in HQ's sled database (HQ's records live in `"hq"`, never touched here).
pub(crate) const TREE: &str = "notify_outbox";

/// Which delivery an entry is: the alert and the target id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    /// The alert's id.
    pub alert_id: String,
    /// The `[[notify]]` target's id.
    pub target: String,
}

impl Key {
    /// `[alert_id length, u16 BE][alert_id][target]`: one alert's entries share a prefix.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Self::alert_prefix(&self.alert_id);
        bytes.extend_from_slice(self.target.as_bytes());
        bytes
    }

    /// The prefix of every key of `alert_id`'s entries. Alert ids are at most
    /// [`super::handle::MAX_ALERT_ID`] bytes, checked before anything is stored.
    pub(crate) fn alert_prefix(alert_id: &str) -> Vec<u8> {
        let length = u16::try_from(alert_id.len()).unwrap_or(u16::MAX);
        let mut bytes = Vec::with_capacity(2 + alert_id.len());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(alert_id.as_bytes());
        bytes
    }

    /// Reads a key back; `None` for bytes that no version of [`Key::encode`] wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Key> {
        let (length, rest) = bytes.split_first_chunk::<2>()?;
        let length = usize::from(u16::from_be_bytes(*length));
        if rest.len() < length {
            return None;
        }
        let (alert_id, target) = rest.split_at(length);
        Some(Key {
            alert_id: String::from_utf8(alert_id.to_vec()).ok()?,
            target: String::from_utf8(target.to_vec()).ok()?,
        })
    }
}

/// One entry's value, stored as compact JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// When the alert was enqueued for this target.
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Attempts made so far (the successful one included).
    pub attempts: u32,
    /// Why the latest failed attempt failed (never holding the URL or secret).
    pub last_error: Option<String>,
    /// Where the delivery stands.
    #[serde(flatten)]
    pub state: State,
}

/// Where a delivery stands, stored as the entry's `"state"` field and its own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum State {
    /// Not delivered yet: tried at `next_attempt_at` (at once after a restart if past).
    Pending {
        /// When the next attempt is due.
        #[serde(with = "rfc3339")]
        next_attempt_at: DateTime<Utc>,
        /// What to deliver; dropped from the entry once it is delivered or abandoned.
        notice: Notice,
    },
    /// Delivered (the robot answered success) and recorded before anyone was told.
    Delivered {
        /// When the successful answer came.
        #[serde(with = "rfc3339")]
        delivered_at: DateTime<Utc>,
    },
    /// Given up because the target was removed from the configuration.
    Abandoned {
        /// When it was given up.
        #[serde(with = "rfc3339")]
        abandoned_at: DateTime<Utc>,
    },
}

impl State {
    /// When a finished entry finished; `None` while pending.
    fn finished_at(&self) -> Option<DateTime<Utc>> {
        match self {
            State::Pending { .. } => None,
            State::Delivered { delivered_at } => Some(*delivered_at),
            State::Abandoned { abandoned_at } => Some(*abandoned_at),
        }
    }
}

/// An entry read back, or why it could not be.
pub(crate) type Loaded = (Key, Result<Entry, String>);

/// The tree, behind the operations the notifier uses.
pub(crate) struct Outbox {
    /// `notify_outbox` in HQ's database.
    tree: crate::hq::manage::ManageTree,
}

impl Outbox {
    /// Opens (or creates) the tree in `db`.
    pub(crate) fn open(db: &crate::hq::manage::ManageDb) -> anyhow::Result<Outbox> {
        let tree = db
            .open_tree(TREE)
            .map_err(|error| anyhow::anyhow!("cannot open the notification outbox: {error}"))?;
        Ok(Outbox { tree })
    }

    /// Every entry, in key order; an entry that cannot be read comes back as its reason.
    /// Keys that cannot be read at all are returned as errors of their own.
    pub(crate) fn load(&self) -> Result<(Vec<Loaded>, Vec<String>), String> {
        let mut entries = Vec::new();
        let mut bad_keys = Vec::new();
        for item in self.tree.iter() {
            let (key, value) = item.map_err(|error| error.to_string())?;
            match Key::decode(&key) {
                Some(decoded) => entries.push((decoded, decode(&value))),
                None => bad_keys.push(format!("{:02x?}", &key[..key.len().min(32)])),
            }
        }
        Ok((entries, bad_keys))
    }

    /// Whether an entry exists for `key`, in any state.
    pub(crate) fn contains(&self, key: &Key) -> Result<bool, String> {
        self.tree
            .contains_key(key.encode())
            .map_err(|error| error.to_string())
    }

    /// Writes several entries at once (one sled batch, atomic also across a crash).
    pub(crate) fn insert_all(&self, entries: &[(Key, Entry)]) -> Result<(), String> {
        let mut batch = crate::hq::manage::ManageBatch::default();
        for (key, entry) in entries {
            batch.insert(key.encode(), encode(entry)?);
        }
        self.tree
            .apply_batch(batch)
            .map_err(|error| error.to_string())
    }

    /// Writes one entry.
    pub(crate) fn put(&self, key: &Key, entry: &Entry) -> Result<(), String> {
        self.tree
            .insert(key.encode(), encode(entry)?)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// The entries of one alert, one per target it was enqueued for.
    pub(crate) fn for_alert(&self, alert_id: &str) -> Result<Vec<Loaded>, String> {
        let mut entries = Vec::new();
        for item in self.tree.scan_prefix(Key::alert_prefix(alert_id)) {
            let (key, value) = item.map_err(|error| error.to_string())?;
            if let Some(key) = Key::decode(&key).filter(|key| key.alert_id == alert_id) {
                entries.push((key, decode(&value)));
            }
        }
        Ok(entries)
    }

    /// Removes delivered and abandoned entries that finished before `before`; returns how many.
    pub(crate) fn prune(&self, before: DateTime<Utc>) -> Result<usize, String> {
        let mut batch = crate::hq::manage::ManageBatch::default();
        let mut removed = 0;
        for item in self.tree.iter() {
            let (key, value) = item.map_err(|error| error.to_string())?;
            let finished = decode(&value)
                .ok()
                .and_then(|entry| entry.state.finished_at());
            if finished.is_some_and(|finished| finished < before) {
                batch.remove(key);
                removed += 1;
            }
        }
        if removed > 0 {
            self.tree
                .apply_batch(batch)
                .map_err(|error| error.to_string())?;
        }
        Ok(removed)
    }

    /// Makes every write so far durable (an fsync of HQ's database, on sled's thread pool).
    pub(crate) async fn flush(&self) -> Result<(), String> {
        self.tree
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// An entry as stored.
fn encode(entry: &Entry) -> Result<Vec<u8>, String> {
    serde_json::to_vec(entry).map_err(|error| format!("cannot encode an outbox entry: {error}"))
}

/// A stored entry read back.
fn decode(bytes: &[u8]) -> Result<Entry, String> {
    serde_json::from_slice(bytes).map_err(|error| format!("unreadable outbox entry: {error}"))
}

/// Times as RFC 3339 text in UTC with milliseconds (`2026-11-27T08:30:00.000Z`), for serde.
pub(crate) mod rfc3339 {
    use super::*;

    /// The text form of `time`.
    pub(crate) fn format(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub(crate) fn serialize<S: serde::Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// For `Option` fields of answers (`serialize_with`).
    pub(crate) fn serialize_option<S: serde::Serializer>(
        time: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_some(&format(time)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice {
            alert_id: "a-1".into(),
            title: "【预警】WZ-LC-001".into(),
            markdown: "**x**".into(),
            text: "x".into(),
            alert: serde_json::json!({"id": "a-1", "store": "WZ-LC-001"}),
        }
    }

    #[test]
    fn keys_round_trip_and_share_the_alert_prefix() {
        let key = Key {
            alert_id: "a:1/温州".into(),
            target: "east-wz".into(),
        };
        let bytes = key.encode();
        assert_eq!(Key::decode(&bytes), Some(key.clone()));
        assert!(bytes.starts_with(&Key::alert_prefix("a:1/温州")));
        // "a" is a prefix of "ab" as text, not as a key prefix: lengths differ.
        assert!(!Key {
            alert_id: "ab".into(),
            target: "t".into()
        }
        .encode()
        .starts_with(&Key::alert_prefix("a")));
        assert_eq!(Key::decode(&[0, 9, b'a']), None);
        assert_eq!(Key::decode(&[0]), None);
    }

    #[test]
    fn entries_are_json_with_a_state_field() {
        let time = DateTime::parse_from_rfc3339("2026-11-27T08:30:00.123Z")
            .expect("time")
            .with_timezone(&Utc);
        let pending = Entry {
            created_at: time,
            attempts: 2,
            last_error: Some("HTTP 500".into()),
            state: State::Pending {
                next_attempt_at: time,
                notice: notice(),
            },
        };
        let json: serde_json::Value =
            serde_json::from_slice(&encode(&pending).expect("encode")).expect("json");
        assert_eq!(json["state"], "pending");
        assert_eq!(json["attempts"], 2);
        assert_eq!(json["next_attempt_at"], "2026-11-27T08:30:00.123Z");
        assert_eq!(json["notice"]["alert"]["store"], "WZ-LC-001");
        assert_eq!(
            decode(&encode(&pending).expect("encode")).expect("decode"),
            pending
        );
        let delivered = Entry {
            state: State::Delivered { delivered_at: time },
            ..pending
        };
        let json: serde_json::Value =
            serde_json::from_slice(&encode(&delivered).expect("encode")).expect("json");
        assert_eq!(json["state"], "delivered");
        assert_eq!(json["delivered_at"], "2026-11-27T08:30:00.123Z");
        assert!(json.get("notice").is_none());
        assert!(decode(b"{\"state\":\"lost\"}").is_err());
    }
}
