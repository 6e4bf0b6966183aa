//! The snapshot metadata store: every snapshot containerd created through
//! this snapshotter, by key (active, view) or name (committed), kept in one
//! JSON file written atomically after each change, so a restarted
//! snapshotter knows its snapshots (and re-mounts the remote ones).
//!
//! Snapshots are few (one per layer and container); a map in memory and a
//! whole-file rewrite per change are simpler than a database and fast
//! enough.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sochi_format::Digest;

/// What a snapshot is (containerd's `snapshots.Kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only view of a parent.
    View,
    /// Writable, not yet committed.
    Active,
    /// Committed, immutable.
    Committed,
}

/// How a committed layer snapshot's content is provided by sochi itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The image reference from containerd's labels.
    pub image_ref: String,
    /// The image manifest digest.
    pub manifest: Digest,
    /// The layer digest.
    pub layer: Digest,
    /// The SOCI index used.
    pub index: Option<Digest>,
    /// `lazy` (FUSE) or `unpacked` (fetched whole by sochi).
    pub mode: String,
    /// Why an `unpacked` layer is not lazy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Directory name under `snapshots/`.
    pub id: u64,
    /// Kind.
    pub kind: Kind,
    /// Name of the parent (a committed snapshot), empty for none.
    pub parent: String,
    /// Labels as containerd set them.
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the epoch.
    pub created: u128,
    /// Last update, nanoseconds since the epoch.
    pub updated: u128,
    /// Set for layers sochi provides (remote or unpacked by sochi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteLayer>,
    /// Why a layer snapshot was handed back to containerd (no index, an
    /// error), so that `sochi snapshotter layers` can say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// All snapshots, persisted in `path`.
#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    state: State,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    snapshots: BTreeMap<String, Snapshot>,
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl MetaStore {
    /// Loads the store at `path`, or starts an empty one.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Metadata {
            context: format!("reading snapshot metadata {}", path.display()),
            source,
        };
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| failed(e.into()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(error) => return Err(failed(error.into())),
        };
        Ok(MetaStore {
            path: path.to_path_buf(),
            state,
        })
    }

    fn save(&self) -> Result<()> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Metadata {
            context: format!("writing snapshot metadata {}", self.path.display()),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| failed(e.into()))?;
        let temp = self.path.with_extension("json.tmp");
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &self.path))
            .map_err(|e| failed(e.into()))
    }

    /// The snapshot named `key`.
    pub fn get(&self, key: &str) -> Option<&Snapshot> {
        self.state.snapshots.get(key)
    }

    /// Every snapshot with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Snapshot)> {
        self.state.snapshots.iter()
    }

    /// A fresh directory id.
    pub fn next_id(&mut self) -> u64 {
        self.state.next_id += 1;
        self.state.next_id
    }

    /// Adds or replaces `key` and saves.
    pub fn put(&mut self, key: &str, snapshot: Snapshot) -> Result<()> {
        self.state.snapshots.insert(key.to_string(), snapshot);
        self.save()
    }

    /// Removes `key` and saves.
    pub fn remove(&mut self, key: &str) -> Result<Option<Snapshot>> {
        let removed = self.state.snapshots.remove(key);
        self.save()?;
        Ok(removed)
    }

    /// Renames `key` to `name` (commit) and saves.
    pub fn rename(&mut self, key: &str, name: &str, snapshot: Snapshot) -> Result<()> {
        self.state.snapshots.remove(key);
        self.state.snapshots.insert(name.to_string(), snapshot);
        self.save()
    }

    /// Whether any snapshot has `key` as its parent.
    pub fn has_children(&self, key: &str) -> bool {
        self.state.snapshots.values().any(|s| s.parent == key)
    }

    /// The committed chain from `parent` down: `parent`, its parent, ...
    pub fn chain(&self, parent: &str) -> Vec<(String, Snapshot)> {
        let mut chain = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let Some(snapshot) = self.state.snapshots.get(&next) else {
                break;
            };
            chain.push((next.clone(), snapshot.clone()));
            if chain.len() > 10_000 {
                break;
            }
            next = snapshot.parent.clone();
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: u64, kind: Kind, parent: &str) -> Snapshot {
        Snapshot {
            id,
            kind,
            parent: parent.into(),
            labels: BTreeMap::new(),
            created: 1,
            updated: 1,
            remote: None,
            fallback: None,
        }
    }

    #[test]
    fn persists_and_walks_chains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        let mut store = MetaStore::open(&path).unwrap();
        let a = store.next_id();
        store.put("a", snapshot(a, Kind::Committed, "")).unwrap();
        let b = store.next_id();
        store.put("k", snapshot(b, Kind::Active, "a")).unwrap();
        store
            .rename("k", "b", snapshot(b, Kind::Committed, "a"))
            .unwrap();
        let store = MetaStore::open(&path).unwrap();
        let chain: Vec<String> = store.chain("b").into_iter().map(|(k, _)| k).collect();
        assert_eq!(chain, ["b", "a"]);
        assert!(store.has_children("a"));
        assert!(store.get("k").is_none());
        let mut store = store;
        assert_eq!(store.next_id(), 3);
    }
}

/// How one layer snapshot was provided, for `sochi snapshotter layers`.
/// Serialized as its `--json` prints it:
/// `{"snapshot","image","layer","mode","reason"}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerRecord {
    /// The snapshot's name.
    pub snapshot: String,
    /// The image reference containerd gave (empty if none).
    pub image: String,
    /// The layer digest, `-` for a snapshot prepared without labels.
    pub layer: String,
    /// `lazy`, `unpacked`, or `containerd` (handed back).
    pub mode: String,
    /// Why it is not lazy, where known.
    pub reason: Option<String>,
}

/// The layer snapshots in the metadata under `root`: those containerd's
/// labels name, and those a client prepared without labels (recorded as a
/// fallback); only those of `image` when given.
pub fn layer_records(root: &Path, image: Option<&str>) -> Result<Vec<LayerRecord>> {
    use sochi_format::snapshot_labels as labels;
    let path = root.join("snapshotter").join("metadata.json");
    if !path.exists() {
        return Err(Error::NotFound {
            what: format!("snapshotter metadata at {}", path.display()),
        });
    }
    let store = MetaStore::open(&path)?;
    let mut records = Vec::new();
    for (name, snapshot) in store.iter() {
        let layer = match (
            snapshot.labels.get(labels::LAYER_DIGEST),
            &snapshot.fallback,
        ) {
            (Some(layer), _) => layer.clone(),
            (None, Some(_)) => "-".to_string(),
            (None, None) => continue,
        };
        let image_ref = snapshot
            .labels
            .get(labels::IMAGE_REF)
            .cloned()
            .unwrap_or_default();
        if image.is_some_and(|wanted| wanted != image_ref) {
            continue;
        }
        let (mode, reason) = match (&snapshot.remote, &snapshot.fallback) {
            (Some(remote), _) => (remote.mode.clone(), remote.reason.clone()),
            (None, Some(why)) => ("containerd".to_string(), Some(why.clone())),
            (None, None) => ("containerd".to_string(), None),
        };
        records.push(LayerRecord {
            snapshot: name.clone(),
            image: image_ref,
            layer,
            mode,
            reason,
        });
    }
    Ok(records)
}
