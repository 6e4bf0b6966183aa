//! `create`: the v1 SOCI index of each selected platform of an image, kept
//! with its zTOCs and prefetch artifacts in the local store and recorded in
//! the artifacts database (what `push` and `ztoc get-file` find later).
//! zTOCs the store already has for a layer and span size are reused.

use serde::Serialize;
use sochi_build::{
    build_index, select_manifests, stored_ztoc_descriptor, BuildEvent, BuildOptions, BuiltIndex,
    LayerOutcome, PlatformSelection, ReuseLookup, ReusedZtoc,
};
use sochi_format::{media_types, Descriptor, Digest, IndexVersion, Sha256Digest, EMPTY_CONFIG};
use sochi_store::{ArtifactEntry, ArtifactKind, Store};

use crate::error::{Context as _, Result};
use crate::image_ref::ImageRef;
use crate::open::OpenedImage;

/// What `create` does.
#[derive(Debug)]
pub struct CreateRequest<'a> {
    /// The image as named (recorded with the artifacts).
    pub image_ref: &'a ImageRef,
    /// Index build options.
    pub options: BuildOptions,
    /// Which platforms.
    pub selection: PlatformSelection,
    /// Rebuild zTOCs the store has already.
    pub force: bool,
}

/// One index `create` built. Serialized as `sochi create --json` prints
/// it: `{"index","size","platform","manifest","layers":[…]}`, plus
/// `"prefetch":[…]` and `"prefetch_not_found":[…]` when prefetch paths
/// were given.
#[derive(Debug, Clone, Serialize)]
pub struct IndexReport {
    /// The SOCI index manifest digest.
    pub index: Digest,
    /// Its size.
    pub size: i64,
    /// The platform (`os/arch[/variant]`).
    pub platform: String,
    /// The image manifest it indexes.
    pub manifest: Digest,
    /// Each layer, bottom first.
    pub layers: Vec<LayerReport>,
    /// The prefetch artifacts, in layer order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefetch: Vec<PrefetchReport>,
    /// Prefetch paths (as given) that no layer has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefetch_not_found: Vec<String>,
    /// Layers a load order names that the image has not (or that got no
    /// zTOC): their reads are not prefetched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load_order_unmatched_layers: Vec<String>,
}

/// One prefetch artifact of an index. Serialized as
/// `{"layer","artifact","span_ranges":[[start,end],…]}`.
#[derive(Debug, Clone, Serialize)]
pub struct PrefetchReport {
    /// The layer it is for.
    pub layer: Digest,
    /// The artifact's digest.
    pub artifact: Digest,
    /// Its span ranges, both ends inclusive.
    pub span_ranges: Vec<[i32; 2]>,
}

impl PrefetchReport {
    /// The prefetch artifacts of `built`, in layer order, and the paths
    /// (as given) no layer has.
    pub fn of(built: &BuiltIndex) -> (Vec<PrefetchReport>, Vec<String>) {
        let artifacts = built
            .prefetch
            .blobs
            .iter()
            .map(|b| PrefetchReport {
                layer: b.layer.digest.clone(),
                artifact: b.descriptor.digest.clone(),
                span_ranges: b
                    .artifact
                    .prefetch_spans
                    .iter()
                    .map(|s| [s.start_span, s.end_span])
                    .collect(),
            })
            .collect();
        let not_found = built
            .prefetch
            .paths
            .iter()
            .filter(|p| p.found.is_none())
            .map(|p| p.path.clone())
            .collect();
        (artifacts, not_found)
    }
}

/// What became of one layer. Serialized as
/// `{"layer","ztoc","skipped","reused"}`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The layer digest.
    pub layer: Digest,
    /// Its zTOC's digest, if it has one.
    pub ztoc: Option<Digest>,
    /// Why it has none.
    pub skipped: Option<String>,
    /// Whether the zTOC was already in the store.
    pub reused: bool,
}

/// Seconds since the Unix epoch (the artifacts database's clock).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds the v1 SOCI index of each selected platform of `opened` and
/// keeps it in `store`; `events` sees the progress of every layer.
pub fn create_indexes(
    store: &Store,
    opened: &OpenedImage,
    request: &CreateRequest<'_>,
    events: &(dyn Fn(BuildEvent<'_>) + Sync),
) -> Result<Vec<IndexReport>> {
    let (source, image) = (opened.source.as_ref(), &opened.image);
    let image_ref = request.image_ref;
    let options = &request.options;
    let manifests = select_manifests(source, image, &request.selection)
        .with_context(|| format!("selecting the platforms of {image_ref}"))?;
    let reuse_fn = |layer: &Descriptor, span_size: u64| {
        reuse_ztoc(store, layer, span_size, options.optimize_xattrs)
    };
    let reuse: Option<ReuseLookup<'_>> = (!request.force).then_some(&reuse_fn);
    let mut reports = Vec::with_capacity(manifests.len());
    for manifest in &manifests {
        let built = build_index(source, manifest, IndexVersion::V1, options, reuse, events)
            .with_context(|| format!("building the SOCI index of {image_ref}"))?;
        let created_at = now();
        let platform = built.image.platform.to_spec_string();
        let mut entries = Vec::new();
        for (layer, descriptor, ztoc) in built.built_ztocs() {
            store
                .content()
                .write_blob(&ztoc.bytes)
                .with_context(|| format!("storing the zTOC of layer {}", layer.digest))?;
            entries.push(ArtifactEntry {
                digest: descriptor.digest.clone(),
                size: descriptor.size,
                original_digest: layer.digest.clone(),
                image_digest: image.digest.clone(),
                image_ref: image_ref.to_string(),
                platform: platform.clone(),
                kind: ArtifactKind::SociLayer,
                media_type: media_types::ZTOC.to_string(),
                artifact_type: String::new(),
                created_at,
                span_size: options.span_size,
                layer_media_type: layer.media_type.clone(),
                layer_source: opened.layer_source.clone(),
            });
        }
        for blob in &built.prefetch.blobs {
            store.content().write_blob(&blob.bytes).with_context(|| {
                format!(
                    "storing the prefetch artifact of layer {}",
                    blob.layer.digest
                )
            })?;
            entries.push(ArtifactEntry {
                digest: blob.descriptor.digest.clone(),
                size: blob.descriptor.size,
                original_digest: blob.layer.digest.clone(),
                image_digest: image.digest.clone(),
                image_ref: image_ref.to_string(),
                platform: platform.clone(),
                kind: ArtifactKind::SociPrefetch,
                media_type: media_types::SOCI_PREFETCH.to_string(),
                artifact_type: String::new(),
                created_at,
                span_size: 0,
                layer_media_type: blob.layer.media_type.clone(),
                layer_source: String::new(),
            });
        }
        let stored = store
            .content()
            .write_blob(EMPTY_CONFIG)
            .and_then(|_| store.content().write_blob(&built.bytes));
        stored.with_context(|| format!("storing the SOCI index {}", built.descriptor.digest))?;
        entries.push(ArtifactEntry {
            digest: built.descriptor.digest.clone(),
            size: built.descriptor.size,
            original_digest: built.image.descriptor.digest.clone(),
            image_digest: image.digest.clone(),
            image_ref: image_ref.to_string(),
            platform: platform.clone(),
            kind: ArtifactKind::SociIndex,
            media_type: media_types::OCI_MANIFEST.to_string(),
            artifact_type: media_types::SOCI_INDEX_V1.to_string(),
            created_at,
            span_size: options.span_size,
            layer_media_type: String::new(),
            layer_source: String::new(),
        });
        store
            .artifacts()
            .put(entries)
            .context("recording the artifacts")?;
        let (prefetch, prefetch_not_found) = PrefetchReport::of(&built);
        reports.push(IndexReport {
            index: built.descriptor.digest.clone(),
            size: built.descriptor.size,
            platform,
            manifest: built.image.descriptor.digest.clone(),
            layers: built
                .layers
                .iter()
                .map(|(layer, outcome)| layer_report(layer, outcome))
                .collect(),
            prefetch,
            prefetch_not_found,
            load_order_unmatched_layers: built.prefetch.unmatched_layers.clone(),
        });
    }
    Ok(reports)
}

fn layer_report(layer: &Descriptor, outcome: &LayerOutcome) -> LayerReport {
    let (ztoc, skipped, reused) = match outcome {
        LayerOutcome::Built { descriptor, .. } => (Some(descriptor.digest.clone()), None, false),
        LayerOutcome::Reused { descriptor, .. } => (Some(descriptor.digest.clone()), None, true),
        LayerOutcome::Skipped { reason } => (None, Some(reason.clone()), false),
    };
    LayerReport {
        layer: layer.digest.clone(),
        ztoc,
        skipped,
        reused,
    }
}

/// A zTOC already in the store for this layer and span size, as the index
/// should list it (docs/format.md §3.1 step 5). Anything unreadable is a
/// miss: the layer is indexed again.
fn reuse_ztoc(
    store: &Store,
    layer: &Descriptor,
    span_size: u64,
    optimize_xattrs: bool,
) -> Option<ReusedZtoc> {
    let entries = store.artifacts().list().ok()?;
    let entry = entries.iter().rev().find(|e| {
        e.kind == ArtifactKind::SociLayer
            && e.original_digest == layer.digest
            && e.span_size == span_size
    })?;
    let digest = Sha256Digest::parse(&entry.digest).ok()?;
    let bytes = store.content().read_blob(&digest).ok()?;
    let descriptor = stored_ztoc_descriptor(layer, &bytes, span_size, optimize_xattrs).ok()?;
    Some(ReusedZtoc { descriptor, bytes })
}
