//! Snapshots, the diff service and image records over gRPC: what
//! unpacking one layer and recording the image take.
//!
//! Through containerd's metadata layer (`metadata/snapshot.go`, 1.6),
//! `Prepare` with the label `containerd.io/snapshot.ref = <chainID>`
//! answers `AlreadyExists` when the chain ID is committed already, or when
//! the snapshotter committed it itself (a remote snapshot); otherwise it
//! answers the mounts to unpack the layer into.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info as SnapshotInfo, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, Image, UpdateImageRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::{Descriptor as ProtoDescriptor, Mount};
use sochi_format::Descriptor;

use crate::client::Containerd;
use crate::error::{Error, Result};

/// What `Prepare` answered.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// An active snapshot to unpack the layer into, mounted like this.
    Mounts(Vec<Mount>),
    /// The target chain ID exists (the snapshotter mounted the layer
    /// remotely, or it was there already); containerd's message.
    AlreadyExists(String),
}

impl Containerd {
    /// Snapshot `key` of `snapshotter` (a committed name such as a chain ID,
    /// or an active key), or `None` if there is none.
    pub(crate) async fn stat_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<SnapshotInfo>> {
        let request = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match self.snapshots().stat(request).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(Error::status("Snapshots.Stat", key, status)),
        }
    }

    /// Whether `snapshotter` has snapshot `key`, which then stays as long as
    /// this connection's lease (see [`Containerd::lease_resource`]).
    pub(crate) async fn snapshot_kept(&self, snapshotter: &str, key: &str) -> Result<bool> {
        self.lease_resource(&format!("snapshots/{snapshotter}"), key)
            .await?;
        Ok(self.stat_snapshot(snapshotter, key).await?.is_some())
    }

    /// Prepares active snapshot `key` on `parent` ("" for none).
    pub(crate) async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared> {
        let request = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        match self.snapshots().prepare(request).await {
            Ok(response) => Ok(Prepared::Mounts(response.into_inner().mounts)),
            Err(status) if status.code() == Code::AlreadyExists => {
                Ok(Prepared::AlreadyExists(status.message().to_string()))
            }
            Err(status) => Err(Error::status("Snapshots.Prepare", key, status)),
        }
    }

    /// Commits active snapshot `key` as `name`. `false` when `name` exists
    /// already (someone else committed the same chain meanwhile).
    pub(crate) async fn commit_snapshot(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool> {
        let request = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
        };
        match self.snapshots().commit(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::AlreadyExists => Ok(false),
            Err(status) => Err(Error::status("Snapshots.Commit", name, status)),
        }
    }

    /// Removes snapshot `key`.
    pub(crate) async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        let request = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        self.snapshots()
            .remove(request)
            .await
            .map_err(|status| Error::status("Snapshots.Remove", key, status))?;
        Ok(())
    }

    /// Unpacks layer blob `layer` (in the content store) into `mounts`;
    /// returns its uncompressed digest (diff ID).
    pub(crate) async fn apply_layer(
        &self,
        layer: &Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<String> {
        let request = ApplyRequest {
            diff: Some(to_proto(layer)),
            mounts,
            ..ApplyRequest::default()
        };
        let response = self
            .diff()
            .apply(request)
            .await
            .map_err(|status| Error::status("Diff.Apply", layer.digest.as_str(), status))?;
        match response.into_inner().applied {
            Some(applied) => Ok(applied.digest),
            None => Err(Error::Protocol {
                call: "Diff.Apply",
                target: layer.digest.to_string(),
                detail: "no applied descriptor in the answer".into(),
            }),
        }
    }

    /// Creates image record `name` pointing at `target`, or points an
    /// existing one there. `true` when it was created.
    pub(crate) async fn put_image(&self, name: &str, target: &Descriptor) -> Result<bool> {
        let image = Image {
            name: name.to_string(),
            target: Some(to_proto(target)),
            ..Image::default()
        };
        let create = CreateImageRequest {
            image: Some(image.clone()),
            ..CreateImageRequest::default()
        };
        match self.images().create(create).await {
            Ok(_) => return Ok(true),
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => return Err(Error::status("Images.Create", name, status)),
        }
        // No field mask: target and labels are replaced, as containerd's
        // own client does on AlreadyExists.
        let update = UpdateImageRequest {
            image: Some(image),
            ..UpdateImageRequest::default()
        };
        self.images()
            .update(update)
            .await
            .map_err(|status| Error::status("Images.Update", name, status))?;
        Ok(false)
    }
}

fn to_proto(descriptor: &Descriptor) -> ProtoDescriptor {
    ProtoDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.to_string(),
        size: descriptor.size,
        annotations: HashMap::new(),
    }
}
