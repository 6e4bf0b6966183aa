//! What mounting an image takes, worked out before anything is mounted:
//! the image manifest for the platform, its SOCI index (found the way the
//! reference snapshotter finds it, docs/format.md §5.2) and the zTOC of each layer
//! that has one (docs/format.md §5.3).

use std::path::Path;
use std::sync::Arc;

use crate::error::{invalid, Context as _, Result};
use futures_util::future::try_join_all;
use sochi_format::{
    media_types, Descriptor, Digest, ImageManifest, Platform, PrefetchArtifact, Sha256Digest,
    SociIndex, Ztoc, MAX_PREFETCH_ARTIFACT_SIZE,
};
use sochi_registry::{Client, DiscoveryOptions, Reference};
use sochi_spans::PrefetchRefusal;

/// Where the image's index came from, for logs and `--json` output.
#[derive(Clone, Debug)]
pub struct IndexSource {
    /// Digest of the SOCI index manifest.
    pub digest: Digest,
    /// How it was found (v2 annotation, referrers, ...).
    pub found_by: String,
}

/// One layer of the image and, if the index has one, its zTOC.
#[derive(Clone, Debug)]
pub struct PlannedLayer {
    /// The layer's descriptor in the image manifest.
    pub descriptor: Descriptor,
    /// The layer's zTOC, checked against its descriptor in the index.
    pub ztoc: Option<Arc<Ztoc>>,
    /// Why the layer has no zTOC, when it has none.
    pub no_ztoc_reason: Option<String>,
    /// The layer's uncompressed digest from the image config (`diff_id`),
    /// which an unpack checks.
    pub diff_id: Digest,
    /// The layer's prefetch artifact, if the index has one for it (and
    /// the layer has a zTOC).
    pub prefetch: Option<LayerPrefetch>,
}

/// A layer's prefetch artifact (docs/format.md §3.8), read and checked
/// against the layer's zTOC when the image is planned.
#[derive(Clone, Debug)]
pub enum LayerPrefetch {
    /// Fine: the span ranges to fetch, in order ([`sochi_spans::prefetch_order`]).
    Ready {
        /// The artifact's digest.
        artifact: Digest,
        /// Half-open span ranges, within the layer's spans, with their
        /// priorities (lower first).
        ranges: sochi_spans::PrefetchRanges,
    },
    /// Refused (logged once, when planned): the layer mounts without it.
    Refused {
        /// The artifact's digest.
        artifact: Digest,
        /// Why.
        reason: PrefetchRefusal,
    },
}

/// An image ready to be mounted.
#[derive(Clone, Debug)]
pub struct ImagePlan {
    /// The repository the image (and its blobs) live in.
    pub repository: Reference,
    /// The platform's image manifest.
    pub manifest: Descriptor,
    /// Its layers, bottom first.
    pub layers: Vec<PlannedLayer>,
    /// The SOCI index used, if one was found.
    pub index: Option<IndexSource>,
}

impl ImagePlan {
    /// Layers that will be mounted lazily.
    pub fn lazy_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.ztoc.is_some()).count()
    }
}

/// Resolves `reference` for `platform`, finds its SOCI index and fetches
/// the zTOCs (concurrently). An image without an index is planned with
/// every layer unpacked locally. Artifacts found in `cache` (a directory
/// of blobs named by digest hex, checked on load) are not fetched again,
/// and what is fetched is kept there.
pub async fn plan_image(
    client: &Client,
    reference: &Reference,
    platform: &Platform,
    discovery: &DiscoveryOptions,
    cache: Option<&Path>,
) -> Result<ImagePlan> {
    let (manifest_descriptor, bytes) = client
        .resolve_platform(reference, platform)
        .await
        .with_context(|| format!("resolving {reference}"))?;
    if let Some(dir) = cache {
        store_cached(dir, &manifest_descriptor.digest, &bytes);
    }
    plan_manifest(
        client,
        reference,
        manifest_descriptor,
        &bytes,
        discovery,
        cache,
    )
    .await
}

/// [`plan_image`] for an image manifest known by digest (what a
/// snapshotter gets from containerd's labels).
pub async fn plan_image_manifest(
    client: &Client,
    repository: &Reference,
    manifest_digest: &str,
    discovery: &DiscoveryOptions,
    cache: Option<&Path>,
) -> Result<ImagePlan> {
    let reference = repository.with_digest(manifest_digest);
    let (descriptor, bytes) = match cache.and_then(|dir| load_cached(dir, manifest_digest)) {
        Some(bytes) => {
            let mut descriptor = Descriptor::of(media_types::OCI_MANIFEST, &bytes);
            if let Ok(manifest) = ImageManifest::from_json(&bytes) {
                if !manifest.media_type.is_empty() {
                    descriptor.media_type = manifest.media_type;
                }
            }
            (descriptor, bytes)
        }
        None => {
            let (descriptor, bytes) = client
                .get_manifest(&reference)
                .await
                .with_context(|| format!("fetching the image manifest {reference}"))?;
            if let Some(dir) = cache {
                store_cached(dir, manifest_digest, &bytes);
            }
            (descriptor, bytes)
        }
    };
    plan_manifest(client, repository, descriptor, &bytes, discovery, cache).await
}

async fn plan_manifest(
    client: &Client,
    reference: &Reference,
    manifest_descriptor: Descriptor,
    bytes: &[u8],
    discovery: &DiscoveryOptions,
    cache: Option<&Path>,
) -> Result<ImagePlan> {
    let manifest = ImageManifest::from_json(bytes)
        .with_context(|| format!("decoding the image manifest {}", manifest_descriptor.digest))?;
    let diff_ids = layer_diff_ids(client, reference, &manifest, cache).await?;
    let cached_index = discovery
        .explicit_index
        .as_deref()
        .and_then(|digest| Some((digest, cache.and_then(|dir| load_cached(dir, digest))?)))
        .and_then(|(digest, bytes)| {
            Some((Digest::from(digest), SociIndex::from_bytes(&bytes).ok()?))
        });
    let (index_digest, found_by, index) = match cached_index {
        Some((digest, index)) => (digest, "cache".to_string(), index),
        None => {
            let discovered = client
                .discover_soci_index(reference, &manifest_descriptor.digest, discovery)
                .await
                .with_context(|| {
                    format!(
                        "looking for the SOCI index of {}@{}",
                        reference.repository, manifest_descriptor.digest
                    )
                })?;
            let Some(discovered) = discovered else {
                tracing::info!(image = %manifest_descriptor.digest, "no SOCI index: every layer is unpacked locally");
                let layers = manifest
                    .layers()
                    .iter()
                    .zip(&diff_ids)
                    .map(|(layer, diff_id)| PlannedLayer {
                        descriptor: layer.clone(),
                        ztoc: None,
                        no_ztoc_reason: Some("the image has no SOCI index".into()),
                        diff_id: diff_id.clone().into(),
                        prefetch: None,
                    })
                    .collect();
                return Ok(ImagePlan {
                    repository: reference.clone(),
                    manifest: manifest_descriptor,
                    layers,
                    index: None,
                });
            };
            if let Some(dir) = cache {
                store_cached(dir, &discovered.descriptor.digest, &discovered.bytes);
            }
            (
                discovered.descriptor.digest.clone(),
                discovered.found_by.to_string(),
                discovered.index,
            )
        }
    };
    let index = &index;
    let fetches = manifest
        .layers()
        .iter()
        .zip(&diff_ids)
        .map(|(layer, diff_id)| {
            plan_layer(client, reference, index, layer, diff_id.clone(), cache)
        });
    let layers = try_join_all(fetches).await?;
    Ok(ImagePlan {
        repository: reference.clone(),
        manifest: manifest_descriptor,
        layers,
        index: Some(IndexSource {
            digest: index_digest,
            found_by,
        }),
    })
}

/// One layer of an image with a SOCI index: its zTOC (from the cache, else
/// fetched and cached), decoded and checked against the layer, or why it
/// has none.
async fn plan_layer(
    client: &Client,
    reference: &Reference,
    index: &SociIndex,
    layer: &Descriptor,
    diff_id: String,
    cache: Option<&Path>,
) -> Result<PlannedLayer> {
    let Some(ztoc_descriptor) = index.ztoc_for_layer(&layer.digest) else {
        return Ok(PlannedLayer {
            descriptor: layer.clone(),
            ztoc: None,
            no_ztoc_reason: Some("the SOCI index has no zTOC for it (small layer?)".into()),
            diff_id: diff_id.into(),
            prefetch: None,
        });
    };
    let bytes = match cache.and_then(|dir| load_cached(dir, &ztoc_descriptor.digest)) {
        Some(bytes) => bytes,
        None => {
            let bytes = client
                .read_blob(reference, ztoc_descriptor)
                .await
                .with_context(|| {
                    format!(
                        "fetching the zTOC {} of layer {}",
                        ztoc_descriptor.digest, layer.digest
                    )
                })?;
            if let Some(dir) = cache {
                store_cached(dir, &ztoc_descriptor.digest, &bytes);
            }
            bytes
        }
    };
    let ztoc = Ztoc::from_bytes(&bytes).with_context(|| {
        format!(
            "decoding the zTOC {} of layer {}",
            ztoc_descriptor.digest, layer.digest
        )
    })?;
    check_ztoc_fits_layer(&ztoc, layer)?;
    let prefetch = match index.prefetches().find(|d| {
        d.annotations
            .get(sochi_format::annotations::LAYER_DIGEST)
            .map(String::as_str)
            == Some(layer.digest.as_str())
    }) {
        Some(descriptor) => {
            Some(plan_prefetch(client, reference, descriptor, layer, &ztoc, cache).await)
        }
        None => None,
    };
    Ok(PlannedLayer {
        descriptor: layer.clone(),
        ztoc: Some(Arc::new(ztoc)),
        no_ztoc_reason: None,
        diff_id: diff_id.into(),
        prefetch,
    })
}

/// Reads a layer's prefetch artifact (from the cache, else fetched and
/// cached) and checks it against the layer's zTOC. A bad artifact is
/// refused with one log line naming the layer and the artifact: the layer
/// mounts without it, never fails for it.
async fn plan_prefetch(
    client: &Client,
    reference: &Reference,
    descriptor: &Descriptor,
    layer: &Descriptor,
    ztoc: &Ztoc,
    cache: Option<&Path>,
) -> LayerPrefetch {
    let artifact = descriptor.digest.clone();
    let refuse = |reason: PrefetchRefusal, detail: String| {
        tracing::warn!(layer = %layer.digest, %artifact, reason = reason.label(), error = %detail, "prefetch artifact refused; the layer mounts without prefetch");
        LayerPrefetch::Refused {
            artifact: artifact.clone(),
            reason,
        }
    };
    // Not fetched at all when its descriptor says it is too big.
    if !usize::try_from(descriptor.size).is_ok_and(|size| size <= MAX_PREFETCH_ARTIFACT_SIZE) {
        return refuse(
            PrefetchRefusal::TooBig,
            format!(
                "its descriptor says {} bytes, more than the {MAX_PREFETCH_ARTIFACT_SIZE} sochi reads",
                descriptor.size
            ),
        );
    }
    let bytes = match cache.and_then(|dir| load_cached(dir, &artifact)) {
        Some(bytes) => bytes,
        // `read_blob` checks the size and the digest.
        None => match client.read_blob(reference, descriptor).await {
            Ok(bytes) => {
                if let Some(dir) = cache {
                    store_cached(dir, &artifact, &bytes);
                }
                bytes
            }
            Err(error) => return refuse(PrefetchRefusal::Fetch, sochi_format::error_chain(&error)),
        },
    };
    match check_prefetch(&bytes, &artifact, ztoc) {
        Ok(ranges) => {
            tracing::debug!(layer = %layer.digest, %artifact, ranges = ranges.len(), "prefetch artifact read");
            LayerPrefetch::Ready { artifact, ranges }
        }
        Err((reason, detail)) => refuse(reason, detail),
    }
}

/// The span ranges of the prefetch artifact `bytes` (digest `artifact`)
/// in the order they are fetched, or why it is refused: not a prefetch
/// artifact sochi reads (JSON, version, no ranges), too big, or naming
/// spans the layer's zTOC does not have.
pub(crate) fn check_prefetch(
    bytes: &[u8],
    artifact: &Digest,
    ztoc: &Ztoc,
) -> std::result::Result<sochi_spans::PrefetchRanges, (PrefetchRefusal, String)> {
    let parsed = PrefetchArtifact::from_bytes(bytes).map_err(|error| {
        let reason = if bytes.len() > MAX_PREFETCH_ARTIFACT_SIZE {
            PrefetchRefusal::TooBig
        } else {
            PrefetchRefusal::Invalid
        };
        (reason, sochi_format::error_chain(&error))
    })?;
    let out_of_range = |error: sochi_format::Error| {
        (
            PrefetchRefusal::OutOfRange,
            sochi_format::error_chain(&error),
        )
    };
    let span_count = ztoc.span_geometry().map_err(out_of_range)?.span_count();
    parsed
        .validate_against(artifact, span_count)
        .map_err(out_of_range)?;
    Ok(sochi_spans::prefetch_order(&parsed))
}

/// The `diff_id` of each layer, from the image config (fetched once, then
/// cached by digest): one per layer, or the image is refused, as
/// containerd refuses it.
async fn layer_diff_ids(
    client: &Client,
    reference: &Reference,
    manifest: &ImageManifest,
    cache: Option<&Path>,
) -> Result<Vec<String>> {
    let config = &manifest.config;
    let bytes = match cache.and_then(|dir| load_cached(dir, &config.digest)) {
        Some(bytes) => bytes,
        None => {
            let bytes = client
                .read_blob(reference, config)
                .await
                .with_context(|| format!("fetching the image config {}", config.digest))?;
            if let Some(dir) = cache {
                store_cached(dir, &config.digest, &bytes);
            }
            bytes
        }
    };
    let diff_ids = sochi_format::image_diff_ids(&bytes)
        .with_context(|| format!("reading the image config {}", config.digest))?;
    if diff_ids.len() != manifest.layers().len() {
        invalid!(
            "the image config {} names {} layers (diff_ids), the manifest {}",
            config.digest,
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    Ok(diff_ids.iter().map(ToString::to_string).collect())
}

/// A cached artifact whose bytes still hash to `digest`.
fn load_cached(dir: &Path, digest: &str) -> Option<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = std::fs::read(dir.join(hex)).ok()?;
    (Sha256Digest::of(&bytes).to_string() == digest).then_some(bytes)
}

/// Keeps an artifact (already digest-checked by the client); a failure
/// only costs a fetch next time.
fn store_cached(dir: &Path, digest: &str, bytes: &[u8]) {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return;
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return;
    }
    let created = {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::local_state::PRIVATE_DIR_MODE)
            .create(dir)
    };
    let write = created.and_then(|()| {
        let temp = dir.join(format!("{hex}.tmp-{}", std::process::id()));
        std::fs::write(&temp, bytes)?;
        std::fs::rename(&temp, dir.join(hex))
    });
    if let Err(error) = write {
        tracing::debug!(%digest, %error, "cannot cache artifact");
    }
}

/// A zTOC must describe a layer of the layer's size and a compression the
/// layer has (docs/format.md §1.3); anything else is a zTOC for another layer.
fn check_ztoc_fits_layer(ztoc: &Ztoc, layer: &Descriptor) -> Result<()> {
    if ztoc.compressed_archive_size != layer.size {
        invalid!(
            "the zTOC of layer {} describes {} compressed bytes, the layer has {}",
            layer.digest,
            ztoc.compressed_archive_size,
            layer.size
        );
    }
    let zstd = [media_types::OCI_LAYER_ZSTD, media_types::DOCKER_LAYER_ZSTD];
    if zstd.contains(&layer.media_type.as_str()) {
        invalid!(
            "layer {} is zstd-compressed, which zTOCs cannot describe",
            layer.digest
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
