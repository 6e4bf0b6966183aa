//! What mounting an image takes, worked out before anything is mounted:
//! the image manifest for the platform, its SOCI index (found the way the
//! reference snapshotter finds it, docs/format.md §5.2) and the zTOC of each layer
//! that has one (docs/format.md §5.3).
//!
//! An index that cannot serve the image never fails the plan: an index
//! the image names but the repository does not have, an index made for
//! other layer blobs, or a zTOC that does not describe its layer leaves
//! those layers to be unpacked, with a warning, the reason and a counter
//! ([`not_lazy`]). Copies of an image recompressed with zstd are the usual
//! cause (issue 16, docs/zstd.md).

use std::path::Path;
use std::sync::Arc;

use crate::error::{invalid, Context as _, Result};
use futures_util::future::try_join_all;
use sochi_format::{
    media_types, Descriptor, Digest, ImageManifest, Platform, PrefetchArtifact, Sha256Digest,
    SociIndex, Ztoc, MAX_PREFETCH_ARTIFACT_SIZE,
};
use sochi_registry::{Client, DiscoveryOptions, FoundBy, Reference};
use sochi_spans::PrefetchRefusal;

use self::chunked::{plan_chunked, ChunkedPlan};
pub use self::not_lazy::render_plan_metrics;
use self::not_lazy::{is_zstd, not_lazy, NotLazy};

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
    /// Why the image is planned without the index it names, when the
    /// repository does not have that index.
    pub index_problem: Option<String>,
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
    // zstd:chunked layers carry their own table of contents: lazy with or
    // without an index.
    let chunked = try_join_all(
        manifest
            .layers()
            .iter()
            .map(|layer| plan_chunked(client, reference, layer, cache)),
    )
    .await?;
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
            let discovered = match client
                .discover_soci_index(reference, &manifest_descriptor.digest, discovery)
                .await
            {
                Ok(discovered) => discovered,
                // Named by the image (not by the caller) but not there: a
                // copy that kept the annotation and left the index behind.
                Err(error @ sochi_registry::Error::SociIndexNotFound { found_by, .. })
                    if found_by != FoundBy::Explicit =>
                {
                    let why = format!("the image's SOCI index is missing: {error}");
                    tracing::warn!(image = %manifest_descriptor.digest, reason = %why, "SOCI index missing: every layer is unpacked");
                    let mut plan = unindexed_plan(
                        reference,
                        manifest_descriptor,
                        &manifest,
                        &diff_ids,
                        &chunked,
                        NotLazy::IndexMissing,
                        &why,
                    );
                    plan.index_problem = Some(why);
                    return Ok(plan);
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "looking for the SOCI index of {}@{}",
                            reference.repository, manifest_descriptor.digest
                        )
                    })
                }
            };
            let Some(discovered) = discovered else {
                tracing::info!(image = %manifest_descriptor.digest, "no SOCI index: every layer is unpacked locally");
                return Ok(unindexed_plan(
                    reference,
                    manifest_descriptor,
                    &manifest,
                    &diff_ids,
                    &chunked,
                    NotLazy::NoIndex,
                    "the image has no SOCI index",
                ));
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
    let stale = names_none_of(index, &manifest).then(|| {
        let why = format!(
            "the SOCI index {index_digest} names none of the image's layers (it was made for other layer blobs: a recompressed copy?)"
        );
        tracing::warn!(image = %manifest_descriptor.digest, index = %index_digest, "the SOCI index names none of the image's layers: every layer is unpacked");
        why
    });
    let fetches =
        manifest
            .layers()
            .iter()
            .zip(&diff_ids)
            .zip(&chunked)
            .map(|((layer, diff_id), chunked)| {
                let context = LayerContext {
                    client,
                    reference,
                    index,
                    stale: stale.as_deref(),
                    cache,
                };
                plan_layer(context, layer, diff_id.clone(), chunked)
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
        index_problem: None,
    })
}

/// The plan of an image without a usable index: every layer unpacked, for
/// `why` (`detail` in words), but zstd:chunked ones.
fn unindexed_plan(
    reference: &Reference,
    manifest_descriptor: Descriptor,
    manifest: &ImageManifest,
    diff_ids: &[String],
    chunked: &[ChunkedPlan],
    why: NotLazy,
    detail: &str,
) -> ImagePlan {
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .zip(chunked)
        .map(|((layer, diff_id), chunked)| {
            without_index(layer, diff_id.clone(), chunked, why, detail)
        })
        .collect();
    ImagePlan {
        repository: reference.clone(),
        manifest: manifest_descriptor,
        layers,
        index: None,
        index_problem: None,
    }
}

/// A layer no SOCI index serves: lazy when it is zstd:chunked and its
/// table of contents can serve it, else unpacked for `why` (`detail`).
fn without_index(
    layer: &Descriptor,
    diff_id: String,
    chunked: &ChunkedPlan,
    why: NotLazy,
    detail: &str,
) -> PlannedLayer {
    let (ztoc, reason) = match chunked {
        ChunkedPlan::Lazy(ztoc) => (Some(Arc::clone(ztoc)), None),
        ChunkedPlan::Unpacked(reason) => (None, Some(not_lazy(layer, NotLazy::ChunkedToc, reason))),
        ChunkedPlan::NotChunked => (None, Some(not_lazy(layer, why, detail))),
    };
    PlannedLayer {
        descriptor: layer.clone(),
        ztoc,
        no_ztoc_reason: reason,
        diff_id: diff_id.into(),
        prefetch: None,
    }
}

/// Whether `index` has zTOCs but none for a layer of `manifest`: it was
/// made for other layer blobs (the image was recompressed since).
fn names_none_of(index: &SociIndex, manifest: &ImageManifest) -> bool {
    index.ztocs().next().is_some()
        && manifest
            .layers()
            .iter()
            .all(|layer| index.ztoc_for_layer(&layer.digest).is_none())
}

/// What planning one layer of an indexed image reads.
#[derive(Clone, Copy)]
struct LayerContext<'a> {
    client: &'a Client,
    reference: &'a Reference,
    index: &'a SociIndex,
    /// Why the index is stale, when it names none of the image's layers.
    stale: Option<&'a str>,
    cache: Option<&'a Path>,
}

/// One layer of an image with a SOCI index: its zTOC (from the cache, else
/// fetched and cached), decoded and checked against the layer, or why it
/// has none. A zTOC the repository does not have, or one that does not
/// describe the layer, leaves the layer to be unpacked (with a warning);
/// a zTOC that does not decode fails the plan.
async fn plan_layer(
    context: LayerContext<'_>,
    layer: &Descriptor,
    diff_id: String,
    chunked: &ChunkedPlan,
) -> Result<PlannedLayer> {
    let LayerContext {
        client,
        reference,
        index,
        stale,
        cache,
    } = context;
    let unpacked =
        |why: NotLazy, detail: &str| without_index(layer, diff_id.clone(), chunked, why, detail);
    if !matches!(chunked, ChunkedPlan::NotChunked) {
        // No zTOC describes zstd: the layer's own table decides (lazy, or
        // unpacked for the table's reason; `why` is not used then).
        return Ok(unpacked(NotLazy::ChunkedToc, "zstd:chunked"));
    }
    let Some(ztoc_descriptor) = index.ztoc_for_layer(&layer.digest) else {
        return Ok(match stale {
            Some(why) => unpacked(NotLazy::IndexStale, why),
            None => unpacked(
                NotLazy::NoZtoc,
                "the SOCI index has no zTOC for it (small layer?)",
            ),
        });
    };
    let bytes = match cache.and_then(|dir| load_cached(dir, &ztoc_descriptor.digest)) {
        Some(bytes) => bytes,
        None => {
            let bytes = match client.read_blob(reference, ztoc_descriptor).await {
                Ok(bytes) => bytes,
                Err(error) if error.is_not_found() => {
                    let why = format!(
                        "the zTOC {} the SOCI index names for it is not in the repository (404)",
                        ztoc_descriptor.digest
                    );
                    tracing::warn!(layer = %layer.digest, reason = %why, "zTOC missing: the layer is unpacked");
                    return Ok(unpacked(NotLazy::ZtocMismatch, &why));
                }
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "fetching the zTOC {} of layer {}",
                            ztoc_descriptor.digest, layer.digest
                        )
                    })
                }
            };
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
    if let Err(why) = check_ztoc_fits_layer(&ztoc, layer) {
        tracing::warn!(layer = %layer.digest, ztoc = %ztoc_descriptor.digest, reason = %why, "the zTOC does not describe the layer: the layer is unpacked");
        return Ok(unpacked(NotLazy::ZtocMismatch, &why));
    }
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
/// layer has (docs/format.md §1.3); anything else is a zTOC for another
/// layer, and the error says why.
fn check_ztoc_fits_layer(ztoc: &Ztoc, layer: &Descriptor) -> std::result::Result<(), String> {
    if ztoc.compressed_archive_size != layer.size {
        return Err(format!(
            "the SOCI index's zTOC for it describes {} compressed bytes, the layer has {} (made for another blob)",
            ztoc.compressed_archive_size, layer.size
        ));
    }
    // A zTOC whose spans are checked only after decoding and whose files
    // are not checked against tar headers is what sochi makes of a
    // zstd:chunked layer's own table; from an index it would be a file
    // tree bound to nothing in the layer.
    if !ztoc.has_tar_headers() {
        return Err(
            "the SOCI index's zTOC for it has digests of uncompressed spans and no tar headers to check files against (only a layer's own zstd:chunked table is read so)".into(),
        );
    }
    // Only sochi's multi-frame variant (`--zstd-frames`) describes zstd,
    // and it describes nothing else.
    let zstd_ztoc = ztoc.compression.algorithm == sochi_format::CompressionAlgorithm::Zstd;
    match (is_zstd(layer), zstd_ztoc) {
        (true, false) => Err(format!(
            "the SOCI index has a {} zTOC for it, which cannot describe zstd",
            ztoc.compression.algorithm.as_str()
        )),
        (false, true) => Err(format!(
            "the SOCI index has a zstd zTOC for it, but the layer is not zstd ({})",
            layer.media_type
        )),
        _ => Ok(()),
    }
}

mod chunked;
mod not_lazy;
#[cfg(test)]
mod tests;
