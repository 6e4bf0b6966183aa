//! The lazy pull (`sochi pull`): an image from a registry into containerd,
//! with every layer offered to the snapshotter as a remote snapshot first.
//!
//! The steps (environment.md §4, "Remote snapshotter"; docs/format.md §6.1–6.3):
//!
//! 1. Resolve the platform's image manifest (never the SOCI index manifest
//!    beside it in an image index) and fetch its config.
//! 2. Take a lease, so nothing written is garbage-collected before the
//!    image record holds it; it is deleted at the end and expires by
//!    itself in case this process dies.
//! 3. Store the manifest and config in containerd's content store, with
//!    the labels that tie manifest → config → top snapshot for the GC.
//! 4. For each layer, bottom first: a committed snapshot named by its
//!    chain ID means "present". Else `Prepare` it with the remote-snapshot
//!    labels: `AlreadyExists` means the snapshotter mounted it ("lazy");
//!    mounts mean it declined, and the layer is fetched into the content
//!    store, applied through the diff service and committed ("pulled").
//! 5. Label the manifest with the layer blobs now in the store, and create
//!    (or update) the image record pointing at the manifest.
//!
//! Then `ctr run --snapshotter <name> IMAGE …` finds every snapshot of the
//! image and runs it without unpacking anything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::tonic::Code;
use serde::Serialize;
use sochi_format::{Descriptor, Digest, ImageManifest, Platform};
use sochi_registry::{Client, Reference};

use crate::client::Containerd;
use crate::error::{Error, Result};
use crate::labels::{
    chain_ids, snapshot_labels, GC_REF_CONTENT_CONFIG, GC_REF_CONTENT_LAYER_PREFIX,
    GC_REF_SNAPSHOT_PREFIX, UNCOMPRESSED,
};
use crate::snapshots::Prepared;

/// How long a pull's lease outlives a pull that never deletes it.
pub const DEFAULT_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

/// How often `Prepare` is tried when the snapshotter is unavailable, and
/// the pause between tries.
const PREPARE_ATTEMPTS: u32 = 3;
const PREPARE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What to pull into containerd, and how.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The snapshotter to unpack into (`sochi`, or e.g. `overlayfs` for a
    /// full pull).
    pub snapshotter: String,
    /// The platform to pull from an image index.
    pub platform: Platform,
    /// When the pull's lease expires if it is not deleted.
    pub lease_expiry: Duration,
}

impl PullOptions {
    /// Pull the host's platform into `snapshotter`.
    pub fn new(snapshotter: &str) -> PullOptions {
        PullOptions {
            snapshotter: snapshotter.to_string(),
            platform: Platform::host(),
            lease_expiry: DEFAULT_LEASE_EXPIRY,
        }
    }
}

/// What happened to one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullOutcome {
    /// Its snapshot was committed already (an earlier pull, another image).
    Present,
    /// The snapshotter mounted it remotely (`Prepare` answered
    /// `AlreadyExists`); nothing was downloaded here.
    Lazy,
    /// The snapshotter declined: the blob was fetched into containerd's
    /// content store and unpacked through the diff service.
    Pulled,
}

impl PullOutcome {
    /// `present`, `lazy` or `pulled`.
    pub fn as_str(self) -> &'static str {
        match self {
            PullOutcome::Present => "present",
            PullOutcome::Lazy => "lazy",
            PullOutcome::Pulled => "pulled",
        }
    }
}

/// One layer of a [`PullReport`]. Serialized as
/// `{"index", "digest", "media_type", "size", "diff_id", "chain_id", "outcome", "seconds"}`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Position, bottom first.
    pub index: usize,
    /// Layer (compressed) digest.
    pub digest: Digest,
    /// Layer media type.
    pub media_type: String,
    /// Compressed size in bytes.
    pub size: i64,
    /// Uncompressed digest (`rootfs.diff_ids[index]`).
    pub diff_id: Digest,
    /// Chain ID: the committed snapshot's name.
    pub chain_id: Digest,
    /// What happened.
    pub outcome: PullOutcome,
    /// Time spent on this layer.
    pub seconds: f64,
}

/// What [`pull`] did. Serialized as one JSON document:
/// `{"image", "manifest", "media_type", "config", "platform", "snapshotter",
/// "namespace", "chain_id", "layers": [LayerReport…], "lazy", "pulled",
/// "present", "image_created", "seconds"}`.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The image record's name (the normalized reference).
    pub image: String,
    /// The image manifest digest (the record's target).
    pub manifest: Digest,
    /// The manifest media type.
    pub media_type: String,
    /// The config digest.
    pub config: String,
    /// The image's platform (`os/arch[/variant]`), from its config.
    pub platform: String,
    /// The snapshotter the layers are in.
    pub snapshotter: String,
    /// The containerd namespace.
    pub namespace: String,
    /// The top layer's chain ID (empty for an image without layers).
    pub chain_id: Digest,
    /// Per layer, bottom first.
    pub layers: Vec<LayerReport>,
    /// Layers mounted remotely.
    pub lazy: usize,
    /// Layers fetched and unpacked here.
    pub pulled: usize,
    /// Layers whose snapshot was there already.
    pub present: usize,
    /// Whether the image record is new (else an existing one now points at
    /// this manifest).
    pub image_created: bool,
    /// Wall time of the whole pull.
    pub seconds: f64,
}

/// Pulls `image` from `registry` into containerd (see the module docs).
/// The image record is named `image.to_string()`, e.g.
/// `127.0.0.1:5000/py:soci`, which is what `ctr run` takes.
pub async fn pull(
    containerd: &Containerd,
    registry: &Client,
    image: &Reference,
    options: &PullOptions,
) -> Result<PullReport> {
    if options.snapshotter.is_empty() {
        return Err(Error::InvalidArgument {
            what: "snapshotter",
            detail: "empty".into(),
        });
    }
    let started = Instant::now();
    let (manifest_descriptor, manifest_bytes) = registry
        .resolve_platform(image, &options.platform)
        .await
        .map_err(|source| Error::Registry {
            what: format!(
                "resolving {image} for {}",
                options.platform.to_spec_string()
            ),
            source: Box::new(source),
        })?;
    let manifest = ImageManifest::from_json(&manifest_bytes).map_err(|source| Error::Format {
        what: "manifest",
        digest: manifest_descriptor.digest.to_string(),
        source,
    })?;
    let config_bytes = registry
        .read_blob(image, &manifest.config)
        .await
        .map_err(|source| Error::Registry {
            what: format!("fetching the config {} of {image}", manifest.config.digest),
            source: Box::new(source),
        })?;
    let diff_ids = diff_ids(&manifest.config.digest, &config_bytes)?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Inconsistent {
            manifest: manifest_descriptor.digest.to_string(),
            detail: format!(
                "{} layers, but its config {} lists {} diff IDs",
                manifest.layers().len(),
                manifest.config.digest,
                diff_ids.len()
            ),
        });
    }
    let platform = Platform::from_image_config(&config_bytes)
        .map(|p| p.to_spec_string())
        .unwrap_or_else(|_| options.platform.to_spec_string());

    let lease = unique_id("sochi-pull");
    containerd
        .create_lease(&lease, options.lease_expiry)
        .await?;
    let image_pull = ImagePull {
        containerd: containerd.with_lease(&lease)?,
        registry,
        image,
        name: image.to_string(),
        snapshotter: &options.snapshotter,
        manifest_descriptor: &manifest_descriptor,
        manifest: &manifest,
        chain: chain_ids(&diff_ids),
        diff_ids,
    };
    let result = image_pull.run(&manifest_bytes, &config_bytes).await;
    // Everything the image needs is referenced from its record now; on
    // failure what was written becomes garbage.
    if let Err(error) = containerd.delete_lease(&lease).await {
        tracing::warn!(%lease, %error, "deleting the pull's lease failed; it expires by itself");
    }
    let (layers, image_created) = result?;
    let count = |outcome| layers.iter().filter(|l| l.outcome == outcome).count();
    Ok(PullReport {
        image: image_pull.name.clone(),
        manifest: manifest_descriptor.digest.clone(),
        media_type: manifest_descriptor.media_type.clone(),
        config: manifest.config.digest.to_string(),
        platform,
        snapshotter: options.snapshotter.clone(),
        namespace: containerd.namespace().to_string(),
        chain_id: image_pull.chain.last().cloned().unwrap_or_default().into(),
        lazy: count(PullOutcome::Lazy),
        pulled: count(PullOutcome::Pulled),
        present: count(PullOutcome::Present),
        layers,
        image_created,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One pull, inside its lease.
struct ImagePull<'a> {
    containerd: Containerd,
    registry: &'a Client,
    image: &'a Reference,
    name: String,
    snapshotter: &'a str,
    manifest_descriptor: &'a Descriptor,
    manifest: &'a ImageManifest,
    diff_ids: Vec<String>,
    chain: Vec<String>,
}

impl ImagePull<'_> {
    async fn run(
        &self,
        manifest_bytes: &[u8],
        config_bytes: &[u8],
    ) -> Result<(Vec<LayerReport>, bool)> {
        let config = &self.manifest.config;
        let mut config_labels = BTreeMap::new();
        if let Some(top) = self.chain.last() {
            config_labels.insert(
                format!("{GC_REF_SNAPSHOT_PREFIX}{}", self.snapshotter),
                top.clone(),
            );
        }
        self.containerd
            .put_content(
                &format!("config-{}", config.digest),
                &config.digest,
                config_bytes,
                &config_labels,
            )
            .await?;
        let manifest_labels =
            BTreeMap::from([(GC_REF_CONTENT_CONFIG.to_string(), config.digest.to_string())]);
        self.containerd
            .put_content(
                &format!("manifest-{}", self.manifest_descriptor.digest),
                &self.manifest_descriptor.digest,
                manifest_bytes,
                &manifest_labels,
            )
            .await?;

        let mut reports = Vec::with_capacity(self.chain.len());
        for (index, layer) in self.manifest.layers().iter().enumerate() {
            let started = Instant::now();
            let outcome = self
                .layer(index)
                .await
                .map_err(|error| error.in_layer(index, &layer.digest))?;
            let report = LayerReport {
                index,
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
                size: layer.size,
                diff_id: self.diff_ids[index].clone().into(),
                chain_id: self.chain[index].clone().into(),
                outcome,
                seconds: started.elapsed().as_secs_f64(),
            };
            tracing::info!(
                index,
                layer = %layer.digest,
                outcome = outcome.as_str(),
                seconds = report.seconds,
                "layer done"
            );
            reports.push(report);
        }

        // Layer blobs in the store (pulled now or before) stay as long as
        // the manifest does.
        let mut layer_labels = BTreeMap::new();
        for (index, layer) in self.manifest.layers().iter().enumerate() {
            if self.containerd.content_kept(&layer.digest).await? {
                layer_labels.insert(
                    format!("{GC_REF_CONTENT_LAYER_PREFIX}{index}"),
                    layer.digest.to_string(),
                );
            }
        }
        self.containerd
            .add_content_labels(&self.manifest_descriptor.digest, &layer_labels)
            .await?;
        let created = self
            .containerd
            .put_image(&self.name, self.manifest_descriptor)
            .await?;
        Ok((reports, created))
    }

    /// Makes the snapshot of layer `index`.
    async fn layer(&self, index: usize) -> Result<PullOutcome> {
        let layers = self.manifest.layers();
        let chain_id = &self.chain[index];
        if self
            .containerd
            .snapshot_kept(self.snapshotter, chain_id)
            .await?
        {
            return Ok(PullOutcome::Present);
        }
        let parent = match index {
            0 => "",
            _ => self.chain[index - 1].as_str(),
        };
        let labels = snapshot_labels(
            &self.name,
            &self.manifest_descriptor.digest,
            layers,
            index,
            chain_id,
        );
        let (key, prepared) = self.prepare(parent, labels).await?;
        match prepared {
            Prepared::AlreadyExists(message) => {
                // Either the snapshotter committed the layer itself, or a
                // concurrent pull did; both leave the chain ID committed.
                // The check above leased the chain ID already.
                if self
                    .containerd
                    .stat_snapshot(self.snapshotter, chain_id)
                    .await?
                    .is_none()
                {
                    return Err(Error::Protocol {
                        call: "Snapshots.Prepare",
                        target: key,
                        detail: format!(
                            "answered AlreadyExists ({message}), but there is no snapshot {chain_id}"
                        ),
                    });
                }
                Ok(PullOutcome::Lazy)
            }
            Prepared::Mounts(mounts) => {
                let result = self.unpack(index, &key, mounts).await;
                if !matches!(result, Ok(PullOutcome::Pulled)) {
                    if let Err(error) = self
                        .containerd
                        .remove_snapshot(self.snapshotter, &key)
                        .await
                    {
                        tracing::warn!(%key, %error, "removing the active snapshot failed");
                    }
                }
                result
            }
        }
    }

    /// `Prepare` of a new active snapshot on `parent`; its key and the
    /// answer. A proxy snapshotter that has just (re)started answers
    /// `Unavailable` for about a second while containerd's gRPC client
    /// backs off (environment.md §4), so that is tried again a few times,
    /// each time under a new key.
    async fn prepare(
        &self,
        parent: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<(String, Prepared)> {
        let chain_id = labels
            .get(sochi_format::snapshot_labels::TARGET)
            .cloned()
            .unwrap_or_default();
        let mut attempt = 1;
        loop {
            // containerd's unpacker names its active snapshots the same way.
            let key = format!("{} {chain_id}", unique_id("extract"));
            match self
                .containerd
                .prepare_snapshot(self.snapshotter, &key, parent, labels.clone())
                .await
            {
                Err(error)
                    if error.code() == Some(Code::Unavailable) && attempt < PREPARE_ATTEMPTS =>
                {
                    tracing::warn!(%key, %error, attempt, "the snapshotter is unavailable; trying again");
                    tokio::time::sleep(PREPARE_RETRY_DELAY).await;
                    attempt += 1;
                }
                result => return result.map(|prepared| (key, prepared)),
            }
        }
    }

    /// Fetches layer `index` into the content store, applies it to the
    /// active snapshot `key` (mounted as `mounts`) and commits it.
    async fn unpack(
        &self,
        index: usize,
        key: &str,
        mounts: Vec<containerd_client::types::Mount>,
    ) -> Result<PullOutcome> {
        let layer = &self.manifest.layers()[index];
        let diff_id = &self.diff_ids[index];
        let chain_id = &self.chain[index];
        if !self.containerd.content_kept(&layer.digest).await? {
            let body = self
                .registry
                .get_blob(self.image, &layer.digest)
                .await
                .map_err(|source| Error::Registry {
                    what: format!("fetching layer {} of {}", layer.digest, self.image),
                    source: Box::new(source),
                })?;
            let labels = BTreeMap::from([(UNCOMPRESSED.to_string(), diff_id.clone())]);
            self.containerd
                .write_content(
                    &format!("layer-{}", layer.digest),
                    &layer.digest,
                    layer.size,
                    &labels,
                    body,
                )
                .await?;
        }
        let applied = self.containerd.apply_layer(layer, mounts).await?;
        if applied != *diff_id {
            return Err(Error::DiffIdMismatch {
                index,
                digest: layer.digest.to_string(),
                expected: diff_id.clone(),
                actual: applied,
            });
        }
        let labels = [(
            sochi_format::snapshot_labels::TARGET.to_string(),
            chain_id.clone(),
        )]
        .into();
        if self
            .containerd
            .commit_snapshot(self.snapshotter, chain_id, key, labels)
            .await?
        {
            Ok(PullOutcome::Pulled)
        } else {
            Ok(PullOutcome::Present)
        }
    }
}

/// `rootfs.diff_ids` of image config `bytes`.
fn diff_ids(digest: &str, bytes: &[u8]) -> Result<Vec<String>> {
    sochi_format::image_diff_ids(bytes)
        .map(|ids| ids.iter().map(ToString::to_string).collect())
        .map_err(|error| Error::Config {
            digest: digest.to_string(),
            detail: error.to_string(),
        })
}

/// `<prefix>-<nanoseconds>-<pid>-<counter>`: unique on this machine without
/// a random number generator.
fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos}-{}-{count}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_ids_come_from_rootfs() {
        let a = format!("sha256:{}", "a".repeat(64));
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{a}"]}}}}"#
        );
        assert_eq!(diff_ids("sha256:c", config.as_bytes()).unwrap(), vec![a]);
    }

    #[test]
    fn a_config_without_rootfs_or_with_a_bad_diff_id_is_an_error() {
        let error = diff_ids("sha256:c", br#"{"os":"linux"}"#).unwrap_err();
        assert!(error.to_string().contains("no rootfs"), "{error}");
        let error = diff_ids("sha256:c", br#"{"rootfs":{"diff_ids":["md5:1"]}}"#).unwrap_err();
        assert!(error.to_string().contains("md5:1"), "{error}");
        assert!(diff_ids("sha256:c", b"not json").is_err());
    }

    #[test]
    fn unique_ids_differ() {
        assert_ne!(unique_id("extract"), unique_id("extract"));
    }

    #[test]
    fn outcomes_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&PullOutcome::Lazy).unwrap(),
            r#""lazy""#
        );
        assert_eq!(PullOutcome::Pulled.as_str(), "pulled");
    }
}
