//! containerd's Snapshots service over sochi's snapshot store (docs/format.md §6).
//!
//! A `Prepare` that carries `containerd.io/snapshot.ref` is a layer being
//! pulled: sochi tries to provide it (lazily over FUSE, or unpacked by
//! itself when the index has no zTOC for it), commits it under the target
//! name and answers `AlreadyExists`, so containerd skips fetching it
//! (environment.md §4, the remote-snapshot contract). When the image has no
//! SOCI index, or providing fails, it falls back to a plain active snapshot
//! that containerd fills itself; every fallback is logged and counted.
//!
//! Directory layout under the root: `snapshotter/metadata.json` and
//! `snapshotter/snapshots/<id>/{fs,work}` (`fs` is the FUSE mountpoint of a
//! lazy layer, the upper dir of an active snapshot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use crate::api::containerd::services::snapshots::v1 as pb;
use crate::api::containerd::types::Mount;
use crate::decision::{decide, Decision, Fallback, LayerRequest};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::metadata::{now_nanos, Kind, MetaStore, RemoteLayer, Snapshot};
use crate::remote::{Outcome, RemoteLayers};
use sochi_format::snapshot_labels as labels;

/// Whether sochi provided a layer: committed under this target, or why
/// not.
enum Provided {
    Yes(String),
    No(String),
}

/// Layer outcomes, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Layers mounted lazily.
    pub lazy: AtomicU64,
    /// Layers fetched whole and unpacked by sochi (no zTOC).
    pub unpacked: AtomicU64,
    /// Layers handed back to containerd because the image has no index.
    pub no_index: AtomicU64,
    /// Layers handed back to containerd because providing them failed.
    pub failed: AtomicU64,
    /// Layers handed back to containerd because the client sent no image
    /// labels (e.g. `ctr pull`).
    pub no_labels: AtomicU64,
    /// Layers handed back to containerd because the registry wants
    /// credentials sochi does not have.
    pub no_credentials: AtomicU64,
}

/// The service state shared by all requests.
pub struct Snapshotter {
    root: PathBuf,
    store: Mutex<MetaStore>,
    remote: Arc<RemoteLayers>,
    /// Layer outcomes.
    pub counters: Counters,
    /// Held while this snapshotter serves the root.
    _lock: sochi_lazy::FileLock,
}

fn snapshots_dir(root: &Path) -> PathBuf {
    root.join("snapshotter").join("snapshots")
}

impl Snapshotter {
    /// Opens the store under `root` and mounts again every layer sochi
    /// provided before a restart (span caches and zTOCs are reused, so
    /// nothing is fetched twice). Blocking.
    ///
    /// One snapshotter owns a root: a second one on the same root is
    /// refused (it would take the first one's layers for leftovers). What
    /// a crash left is removed first: snapshot directories containerd was
    /// never told of, and layer state of snapshots that are gone.
    pub fn open(root: &Path, remote: Arc<RemoteLayers>) -> Result<Snapshotter> {
        let dir = root.join("snapshotter");
        let state = |context: &str| {
            let context = format!("{context} under {}", root.display());
            move |source: sochi_lazy::Error| Error::Serve {
                context,
                source: Box::new(source),
            }
        };
        sochi_lazy::root_dir(root).map_err(state("creating the root"))?;
        sochi_lazy::private_dir(&snapshots_dir(root))
            .map_err(state("creating the snapshot directory"))?;
        let lock_path = dir.join("lock");
        let lock = sochi_lazy::FileLock::try_acquire(&lock_path)
            .map_err(state("locking the root"))?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "another snapshotter serves {} (it holds {})",
                    root.display(),
                    lock_path.display()
                ))
            })?;
        let store = MetaStore::open(&dir.join("metadata.json"))?;
        let snapshotter = Snapshotter {
            root: root.to_path_buf(),
            store: Mutex::new(store),
            remote,
            counters: Counters::default(),
            _lock: lock,
        };
        snapshotter.remove_orphans();
        let provided: Vec<String> = snapshotter
            .store
            .lock()
            .iter()
            .filter(|(_, s)| s.remote.is_some())
            .map(|(_, s)| s.id.to_string())
            .collect();
        sochi_lazy::sweep_layer_state(root, crate::remote::USER_PREFIX, &|id| {
            provided.iter().any(|p| p == id)
        })
        .map_err(state("removing what a crash left"))?;
        snapshotter.restore();
        Ok(snapshotter)
    }

    fn restore(&self) {
        let provided: Vec<(String, Snapshot)> = self
            .store
            .lock()
            .iter()
            .filter(|(_, s)| s.remote.is_some())
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (name, snapshot) in provided {
            let Some(remote) = &snapshot.remote else {
                continue;
            };
            let dir = self.snapshot_dir(snapshot.id);
            let fs_dir = dir.join("fs");
            // A mount the keeper holds is taken over (running containers
            // keep it); any other mount of the previous process is dead or
            // stale: take it away.
            // (Nothing here may touch a kept mount before it is taken over:
            // a stat of it would wait for this very process.)
            if !self.remote.is_kept(snapshot.id) {
                let _ = sochi_lazy::unmount(&fs_dir);
                let _ = std::fs::create_dir_all(&fs_dir);
            }
            let request = LayerRequest {
                image_ref: remote.image_ref.clone(),
                manifest: remote.manifest.clone(),
                layer: remote.layer.clone(),
                index: remote.index.clone(),
            };
            match self.remote.provide(snapshot.id, &dir, &fs_dir, &request) {
                Outcome::Provided { mode, .. } => {
                    tracing::info!(snapshot = %name, layer = %remote.layer, mode, "layer mounted again after restart")
                }
                other => {
                    tracing::error!(snapshot = %name, layer = %remote.layer, outcome = ?other, "cannot mount a layer again after restart")
                }
            }
        }
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        snapshots_dir(&self.root).join(id.to_string())
    }

    /// Prepare (active) or View.
    fn create(
        &self,
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>> {
        {
            let store = self.store.lock();
            if store.get(&key).is_some() {
                return Err(Error::snapshot_exists(&key));
            }
            if !parent.is_empty() {
                match store.get(&parent) {
                    Some(p) if p.kind == Kind::Committed => {}
                    Some(_) => {
                        return Err(Error::FailedPrecondition(format!(
                            "parent {parent:?} is not committed"
                        )))
                    }
                    None => {
                        return Err(Error::NotFound {
                            what: format!("parent {parent:?}"),
                        })
                    }
                }
            }
        }
        let decision = decide(
            kind,
            &labels,
            |target| self.store.lock().get(target).is_some(),
            |request| self.remote.offer(request),
        );
        let fallback = match decision {
            Decision::Ordinary => None,
            Decision::TargetExists(target) => {
                return Err(Error::AlreadyExists {
                    what: format!("target snapshot {target:?}"),
                })
            }
            Decision::Provide {
                target, request, ..
            } => match self.try_provide(&target, &parent, &labels, &request)? {
                Provided::Yes(target) => {
                    return Err(Error::AlreadyExists {
                        what: format!("target snapshot {target:?}"),
                    })
                }
                Provided::No(reason) => Some(reason),
            },
            Decision::HandBack(fallback) => Some(self.hand_back(&labels, &fallback)),
        };
        let id = self.store.lock().next_id();
        let dir = self.snapshot_dir(id);
        std::fs::create_dir_all(dir.join("fs"))
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        if kind == Kind::Active {
            std::fs::create_dir_all(dir.join("work"))
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let now = now_nanos();
        let snapshot = Snapshot {
            id,
            kind,
            parent,
            labels,
            created: now,
            updated: now,
            remote: None,
            fallback,
        };
        let mut store = self.store.lock();
        store.put(&key, snapshot)?;
        mounts_of(&store, &self.root, &key)
    }

    /// Counts and logs a layer going back to containerd; returns the
    /// reason to record.
    fn hand_back(&self, labels: &BTreeMap<String, String>, fallback: &Fallback) -> String {
        let counter = match fallback {
            Fallback::NoLabels => &self.counters.no_labels,
            Fallback::NoIndex(_) => &self.counters.no_index,
            Fallback::NoCredentials(_) => &self.counters.no_credentials,
            Fallback::Failed(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let layer = labels
            .get(labels::LAYER_DIGEST)
            .map(String::as_str)
            .unwrap_or("-");
        let reason = fallback.reason();
        match fallback {
            Fallback::Failed(why) => {
                tracing::error!(%layer, error = %why, "cannot provide the layer: containerd pulls it")
            }
            _ => tracing::warn!(%layer, %reason, "containerd pulls the layer"),
        }
        reason
    }

    /// Tries to provide a layer.
    fn try_provide(
        &self,
        target: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
        request: &LayerRequest,
    ) -> Result<Provided> {
        let id = self.store.lock().next_id();
        let dir = self.snapshot_dir(id);
        let fs_dir = dir.join("fs");
        std::fs::create_dir_all(&fs_dir)
            .map_err(Error::io(format!("creating {}", fs_dir.display())))?;
        match self.remote.provide(id, &dir, &fs_dir, request) {
            Outcome::Provided {
                mode,
                index,
                reason,
            } => {
                let mut labels = labels.clone();
                if mode == "lazy" {
                    labels.insert(labels::REMOTE.into(), "remote snapshot".into());
                }
                labels.insert(labels::HAS_SOCI_INDEX.into(), "true".into());
                labels.insert(labels::SOCHI_MODE.into(), mode.into());
                let now = now_nanos();
                let snapshot = Snapshot {
                    id,
                    kind: Kind::Committed,
                    parent: parent.to_string(),
                    labels,
                    created: now,
                    updated: now,
                    remote: Some(RemoteLayer {
                        image_ref: request.image_ref.clone(),
                        manifest: request.manifest.clone(),
                        layer: request.layer.clone(),
                        index,
                        mode: mode.into(),
                        reason: reason.clone(),
                    }),
                    fallback: None,
                };
                let counter = if mode == "lazy" {
                    &self.counters.lazy
                } else {
                    &self.counters.unpacked
                };
                counter.fetch_add(1, Ordering::Relaxed);
                match &reason {
                    Some(reason) => {
                        tracing::warn!(layer = %request.layer, %reason, "layer not lazy: fetched and unpacked by sochi")
                    }
                    None => tracing::info!(layer = %request.layer, "layer mounted lazily"),
                }
                self.store.lock().put(target, snapshot)?;
                Ok(Provided::Yes(target.to_string()))
            }
            Outcome::NoIndex => {
                let _ = std::fs::remove_dir_all(&dir);
                Ok(Provided::No(
                    self.hand_back(labels, &Fallback::NoIndex(None)),
                ))
            }
            Outcome::Failed(why) => {
                let _ = sochi_lazy::unmount(&fs_dir);
                let _ = std::fs::remove_dir_all(&dir);
                Ok(Provided::No(self.hand_back(labels, &Fallback::Failed(why))))
            }
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        mounts_of(&self.store.lock(), &self.root, key)
    }

    fn commit(&self, name: String, key: String, labels: BTreeMap<String, String>) -> Result<()> {
        let mut store = self.store.lock();
        if store.get(&name).is_some() {
            return Err(Error::snapshot_exists(&name));
        }
        let Some(snapshot) = store.get(&key).cloned() else {
            return Err(Error::snapshot_not_found(&key));
        };
        if snapshot.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        let mut committed = snapshot;
        committed.kind = Kind::Committed;
        committed.labels.extend(labels);
        committed.updated = now_nanos();
        store.rename(&key, &name, committed)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let removed = {
            let mut store = self.store.lock();
            if store.get(key).is_none() {
                return Err(Error::snapshot_not_found(key));
            }
            if store.has_children(key) {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} has children"
                )));
            }
            store.remove(key)?
        };
        if let Some(snapshot) = removed {
            if snapshot.remote.is_some() {
                self.remote.release(snapshot.id);
            }
            let dir = self.snapshot_dir(snapshot.id);
            let _ = sochi_lazy::unmount(&dir.join("fs"));
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), %error, "cannot remove a snapshot directory");
            }
        }
        Ok(())
    }

    fn info(&self, key: &str) -> Result<pb::Info> {
        let store = self.store.lock();
        let snapshot = store
            .get(key)
            .ok_or_else(|| Error::snapshot_not_found(key))?;
        Ok(to_info(key, snapshot))
    }

    fn update(&self, info: pb::Info, paths: Vec<String>) -> Result<pb::Info> {
        let mut store = self.store.lock();
        let Some(mut snapshot) = store.get(&info.name).cloned() else {
            return Err(Error::snapshot_not_found(&info.name));
        };
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            snapshot.labels = info.labels.into_iter().collect();
        } else {
            for path in paths {
                let Some(label) = path.strip_prefix("labels.") else {
                    return Err(Error::InvalidArgument(format!("cannot update {path:?}")));
                };
                match info.labels.get(label) {
                    Some(value) => snapshot.labels.insert(label.to_string(), value.clone()),
                    None => snapshot.labels.remove(label),
                };
            }
        }
        snapshot.updated = now_nanos();
        store.put(&info.name, snapshot.clone())?;
        Ok(to_info(&info.name, &snapshot))
    }

    fn list(&self, filters: &[String]) -> Result<Vec<pb::Info>> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f).map_err(Error::InvalidArgument))
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.store.lock();
        Ok(store
            .iter()
            .map(|(key, snapshot)| to_info(key, snapshot))
            .filter(|info| filters.is_empty() || filters.iter().any(|f| f.matches(info)))
            .collect())
    }

    fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let snapshot = self
            .store
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::snapshot_not_found(key))?;
        if snapshot.remote.is_some() {
            return Ok((0, 0));
        }
        Ok(disk_usage(&self.snapshot_dir(snapshot.id).join("fs")))
    }

    fn cleanup(&self) -> Result<()> {
        let dir = snapshots_dir(&self.root);
        std::fs::read_dir(&dir).map_err(Error::io(format!("reading {}", dir.display())))?;
        self.remove_orphans();
        Ok(())
    }

    /// Removes snapshot directories the store does not know: a Prepare
    /// that failed or was killed half-way (its layer unmounted first).
    fn remove_orphans(&self) {
        let known: Vec<u64> = self.store.lock().iter().map(|(_, s)| s.id).collect();
        let dir = snapshots_dir(&self.root);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let orphan = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| !known.contains(&id));
            if orphan {
                tracing::info!(dir = %entry.path().display(), "removing a snapshot directory containerd does not know");
                let _ = sochi_lazy::unmount(&entry.path().join("fs"));
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Unmounts every provided layer (shutdown).
    pub fn shutdown(&self) {
        self.remote.unmount_all();
    }
}

fn timestamp(nanos: u128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}

fn to_info(key: &str, snapshot: &Snapshot) -> pb::Info {
    let kind = match snapshot.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: key.to_string(),
        parent: snapshot.parent.clone(),
        kind: kind as i32,
        created_at: Some(timestamp(snapshot.created)),
        updated_at: Some(timestamp(snapshot.updated)),
        labels: snapshot.labels.clone().into_iter().collect(),
    }
}

/// The mounts that make snapshot `key` usable.
fn mounts_of(store: &MetaStore, root: &Path, key: &str) -> Result<Vec<Mount>> {
    let snapshot = store
        .get(key)
        .ok_or_else(|| Error::snapshot_not_found(key))?;
    let dir = snapshots_dir(root).join(snapshot.id.to_string());
    let lowers: Vec<String> = store
        .chain(&snapshot.parent)
        .iter()
        .map(|(_, s)| {
            snapshots_dir(root)
                .join(s.id.to_string())
                .join("fs")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let bind = |source: String, rw: bool| Mount {
        r#type: "bind".into(),
        source,
        target: String::new(),
        options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
    };
    let mounts = match snapshot.kind {
        Kind::Active if lowers.is_empty() => vec![bind(path(dir.join("fs")), true)],
        Kind::Active => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", path(dir.join("work"))),
                format!("upperdir={}", path(dir.join("fs"))),
                format!("lowerdir={}", lowers.join(":")),
            ],
        }],
        Kind::View | Kind::Committed if lowers.is_empty() => {
            vec![bind(path(dir.join("fs")), false)]
        }
        Kind::View if lowers.len() == 1 => vec![bind(lowers[0].clone(), false)],
        Kind::View => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["index=off".into(), format!("lowerdir={}", lowers.join(":"))],
        }],
        Kind::Committed => vec![bind(path(dir.join("fs")), false)],
    };
    Ok(mounts)
}

/// Bytes and inodes under `dir`, not following links.
fn disk_usage(dir: &Path) -> (i64, i64) {
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut inodes) = (0i64, 0i64);
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            bytes += i64::try_from(meta.len()).unwrap_or(0);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// The tonic service: each call runs on a blocking thread (mounting,
/// fetching and the store do blocking I/O).
#[derive(Clone)]
pub struct Service(pub Arc<Snapshotter>);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Status::from),
        Err(joined) => Err(Status::from(Error::Io {
            context: "a snapshotter task failed".into(),
            source: std::io::Error::other(joined),
        })),
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        let inner = Arc::clone(&self.0);
        let mounts = blocking(move || {
            inner.create(
                r.key,
                r.parent,
                r.labels.into_iter().collect(),
                Kind::Active,
            )
        })
        .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let inner = Arc::clone(&self.0);
        let mounts = blocking(move || {
            inner.create(r.key, r.parent, r.labels.into_iter().collect(), Kind::View)
        })
        .await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = request.into_inner().key;
        let mounts = self.0.mounts(&key)?;
        Ok(Response::new(pb::MountsResponse { mounts }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let inner = Arc::clone(&self.0);
        blocking(move || inner.commit(r.name, r.key, r.labels.into_iter().collect())).await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        let inner = Arc::clone(&self.0);
        blocking(move || inner.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let info = self.0.info(&request.into_inner().key)?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let inner = Arc::clone(&self.0);
        let info = blocking(move || inner.update(info, paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let infos = self.0.list(&request.into_inner().filters)?;
        let pages: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(100)
            .map(|chunk| {
                Ok(pb::ListSnapshotsResponse {
                    info: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(pages)))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let inner = Arc::clone(&self.0);
        let (size, inodes) = blocking(move || inner.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let inner = Arc::clone(&self.0);
        blocking(move || inner.cleanup()).await?;
        Ok(Response::new(()))
    }
}
