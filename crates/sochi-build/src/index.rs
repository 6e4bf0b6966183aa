//! An image manifest → its SOCI index: one zTOC per indexable layer, built
//! concurrently, descriptors kept in layer order (docs/format.md §3.1, §4.2),
//! then the prefetch artifacts asked for (§3.8).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sochi_format::{
    annotations, media_types, Descriptor, IndexVersion, LoadOrder, SociIndex, Ztoc,
};

use crate::error::{Error, Result};
use crate::layer::{
    build_layer_ztoc, has_xattrs, LayerCompression, LayerKind, LayerOptions, LayerZtoc,
    DEFAULT_SPAN_SIZE,
};
use crate::prefetch::{build_load_order_prefetch, build_prefetch, PrefetchBuild};
use crate::source::{ImageSource, PlatformManifest};

/// The reference's default minimum layer size (10 MiB, compressed).
pub const DEFAULT_MIN_LAYER_SIZE: u64 = 10 << 20;

/// A zTOC that already exists for a layer (reused instead of rebuilt):
/// given the layer and the span size, the stored zTOC, if any.
pub type ReuseLookup<'a> = &'a (dyn Fn(&Descriptor, u64) -> Option<ReusedZtoc> + Sync);

/// A stored zTOC a [`ReuseLookup`] found.
#[derive(Clone, Debug)]
pub struct ReusedZtoc {
    /// Its descriptor, with the SOCI annotations.
    pub descriptor: Descriptor,
    /// Its bytes (read again only for prefetch artifacts).
    pub bytes: Vec<u8>,
}

/// Events reported while building, for progress bars and logs.
#[derive(Clone, Debug)]
pub enum BuildEvent<'a> {
    /// A layer started; `size` is its compressed size.
    LayerStarted {
        /// The layer.
        layer: &'a Descriptor,
    },
    /// Bytes of a layer read so far.
    LayerProgress {
        /// The layer.
        layer: &'a Descriptor,
        /// Bytes read.
        read: u64,
    },
    /// A layer is done.
    LayerDone {
        /// The layer.
        layer: &'a Descriptor,
        /// What happened to it.
        outcome: &'a LayerOutcome,
    },
}

/// Options of an index build (the reference's `create`/`convert` flags).
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Span size (default 4 MiB).
    pub span_size: u64,
    /// Layers smaller than this (compressed) get no zTOC (default 10 MiB).
    pub min_layer_size: u64,
    /// `--optimizations xattr`: mark zTOCs of layers without xattrs.
    pub optimize_xattrs: bool,
    /// Layers indexed at once (default: the number of cores).
    pub jobs: usize,
    /// `--prefetch-file` paths, as given (trimmed, none empty): each layer
    /// holding one gets a prefetch artifact (docs/format.md §3.8).
    pub prefetch_paths: Vec<String>,
    /// `--load-order`: a recorded load order, made into prefetch artifacts
    /// in first-use order (docs/prefetch.md); not with `prefetch_paths`.
    pub load_order: Option<std::sync::Arc<LoadOrder>>,
    /// `--zstd-frames`: index multi-frame zstd layers with the sochi zTOC
    /// variant (docs/zstd.md), which the reference and AWS Fargate cannot
    /// read. Off, zstd layers are skipped as the reference skips them.
    pub zstd_frames: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            span_size: DEFAULT_SPAN_SIZE,
            min_layer_size: DEFAULT_MIN_LAYER_SIZE,
            optimize_xattrs: false,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefetch_paths: Vec::new(),
            load_order: None,
            zstd_frames: false,
        }
    }
}

/// What happened to one layer.
#[derive(Clone, Debug)]
pub enum LayerOutcome {
    /// A zTOC was built.
    Built {
        /// Its descriptor, with the SOCI annotations.
        descriptor: Descriptor,
        /// The zTOC.
        ztoc: Box<LayerZtoc>,
    },
    /// An existing zTOC was reused.
    Reused {
        /// Its descriptor, with the SOCI annotations.
        descriptor: Descriptor,
        /// Its bytes (read for prefetch artifacts).
        ztoc_bytes: Vec<u8>,
    },
    /// No zTOC, and why.
    Skipped {
        /// A sentence for the user.
        reason: String,
    },
}

/// A built index and what happened to every layer.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    /// The platform manifest indexed.
    pub image: PlatformManifest,
    /// The index.
    pub index: SociIndex,
    /// Its Go-canonical bytes.
    pub bytes: Vec<u8>,
    /// Its descriptor (artifact type = the index version).
    pub descriptor: Descriptor,
    /// Per layer, in layer order.
    pub layers: Vec<(Descriptor, LayerOutcome)>,
    /// The prefetch artifacts (listed in the index after the zTOCs) and
    /// what became of each prefetch path.
    pub prefetch: PrefetchBuild,
}

impl BuiltIndex {
    /// The zTOCs built in this run (not reused ones), in layer order.
    pub fn built_ztocs(&self) -> impl Iterator<Item = (&Descriptor, &Descriptor, &LayerZtoc)> {
        self.layers
            .iter()
            .filter_map(|(layer, outcome)| match outcome {
                LayerOutcome::Built { descriptor, ztoc } => {
                    Some((layer, descriptor, ztoc.as_ref()))
                }
                _ => None,
            })
    }
}

/// The descriptor of a zTOC as the index lists it (docs/format.md §4.2).
pub fn ztoc_descriptor(
    layer: &Descriptor,
    ztoc: &LayerZtoc,
    span_size: u64,
    optimize_xattrs: bool,
) -> Descriptor {
    annotated_ztoc(
        layer,
        &ztoc.bytes,
        span_size,
        optimize_xattrs && !ztoc.has_xattrs,
    )
}

/// The descriptor an index lists for a zTOC built earlier and kept (the
/// reuse of docs/format.md §3.1 step 5): the same annotations
/// [`ztoc_descriptor`] gives a new one.
///
/// # Errors
///
/// The bytes are not a zTOC (only read when `optimize_xattrs` asks).
pub fn stored_ztoc_descriptor(
    layer: &Descriptor,
    ztoc_bytes: &[u8],
    span_size: u64,
    optimize_xattrs: bool,
) -> Result<Descriptor> {
    let disable_xattrs = if optimize_xattrs {
        let ztoc = sochi_format::Ztoc::from_bytes(ztoc_bytes).map_err(|source| Error::Format {
            context: format!("the stored zTOC of layer {}", layer.digest),
            source,
        })?;
        !has_xattrs(&ztoc.toc)
    } else {
        false
    };
    Ok(annotated_ztoc(layer, ztoc_bytes, span_size, disable_xattrs))
}

fn annotated_ztoc(
    layer: &Descriptor,
    ztoc_bytes: &[u8],
    span_size: u64,
    disable_xattrs: bool,
) -> Descriptor {
    let mut annotations = BTreeMap::new();
    annotations.insert(
        annotations::LAYER_DIGEST.to_string(),
        layer.digest.to_string(),
    );
    annotations.insert(
        annotations::LAYER_MEDIA_TYPE.to_string(),
        layer.media_type.clone(),
    );
    annotations.insert(annotations::SPAN_SIZE.to_string(), span_size.to_string());
    if disable_xattrs {
        annotations.insert(annotations::DISABLE_XATTRS.to_string(), "true".to_string());
    }
    Descriptor {
        annotations,
        ..Descriptor::of(media_types::ZTOC, ztoc_bytes)
    }
}

/// Builds the SOCI index of one platform manifest.
///
/// Layers are indexed `options.jobs` at a time, each streamed once from
/// `source`; an error in any layer fails the build (as the reference does),
/// except unsupported compressions, which are skipped.
pub fn build_index(
    source: &dyn ImageSource,
    image: &PlatformManifest,
    version: IndexVersion,
    options: &BuildOptions,
    reuse: Option<ReuseLookup<'_>>,
    events: &(dyn Fn(BuildEvent<'_>) + Sync),
) -> Result<BuiltIndex> {
    let layers = image.manifest.layers();
    let kinds = layers
        .iter()
        .map(|l| LayerKind::from_media_type(&l.media_type))
        .collect::<Result<Vec<_>>>()?;
    let slots: Vec<Mutex<Option<Result<LayerOutcome>>>> =
        layers.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let workers = options.jobs.clamp(1, layers.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (Some(layer), Some(kind)) = (layers.get(i), kinds.get(i)) else {
                    break;
                };
                let outcome = index_one_layer(source, layer, *kind, options, reuse, events);
                if outcome.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Some(slot) = slots.get(i) {
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(outcome);
                    }
                }
            });
        }
    });
    let mut outcomes = Vec::with_capacity(layers.len());
    for (layer, slot) in layers.iter().zip(slots) {
        let outcome = slot.into_inner().ok().flatten().unwrap_or_else(|| {
            Err(Error::Invalid(format!(
                "layer {} was not indexed",
                layer.digest
            )))
        });
        outcomes.push((layer.clone(), outcome?));
    }
    let mut blobs: Vec<Descriptor> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            LayerOutcome::Built { descriptor, .. } | LayerOutcome::Reused { descriptor, .. } => {
                Some(descriptor.clone())
            }
            LayerOutcome::Skipped { .. } => None,
        })
        .collect();
    let prefetch = prefetch_artifacts(options, &outcomes)?;
    blobs.extend(prefetch.blobs.iter().map(|b| b.descriptor.clone()));
    if blobs.is_empty() {
        return Err(Error::Invalid(format!(
            "no ztocs created for image {} ({}): all layers were either skipped or produced errors",
            image.descriptor.digest,
            image.platform.to_spec_string()
        )));
    }
    let subject = (version == IndexVersion::V1).then(|| image.descriptor.clone());
    let index = SociIndex::new(version, blobs, subject);
    let bytes = index.to_bytes();
    let descriptor = Descriptor {
        artifact_type: Some(version.media_type().to_string()),
        ..Descriptor::of(media_types::OCI_MANIFEST, &bytes)
    };
    Ok(BuiltIndex {
        image: image.clone(),
        index,
        bytes,
        descriptor,
        layers: outcomes,
        prefetch,
    })
}

/// The prefetch artifacts of the prefetch paths (as the reference makes
/// them, docs/format.md §3.8) or of the load order over the zTOCs the
/// layers got, built or reused.
fn prefetch_artifacts(
    options: &BuildOptions,
    outcomes: &[(Descriptor, LayerOutcome)],
) -> Result<PrefetchBuild> {
    let paths = &options.prefetch_paths;
    if paths.is_empty() && options.load_order.is_none() {
        return Ok(PrefetchBuild::default());
    }
    if !paths.is_empty() && options.load_order.is_some() {
        return Err(Error::Invalid(
            "prefetch paths and a load order cannot be used together".into(),
        ));
    }
    let reused = outcomes
        .iter()
        .map(|(layer, outcome)| match outcome {
            LayerOutcome::Reused {
                descriptor,
                ztoc_bytes,
            } => Ztoc::from_bytes(ztoc_bytes)
                .map(Some)
                .map_err(|source| Error::Format {
                    context: format!(
                        "the stored zTOC {} of layer {}",
                        descriptor.digest, layer.digest
                    ),
                    source,
                }),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let layers: Vec<(&Descriptor, Option<&Ztoc>)> = outcomes
        .iter()
        .zip(&reused)
        .map(|((layer, outcome), reused)| {
            let ztoc = match outcome {
                LayerOutcome::Built { ztoc, .. } => Some(&ztoc.ztoc),
                _ => reused.as_ref(),
            };
            (layer, ztoc)
        })
        .collect();
    Ok(match &options.load_order {
        Some(order) => build_load_order_prefetch(order, &layers),
        None => build_prefetch(paths, &layers),
    })
}

fn index_one_layer(
    source: &dyn ImageSource,
    layer: &Descriptor,
    kind: LayerKind,
    options: &BuildOptions,
    reuse: Option<ReuseLookup<'_>>,
    events: &(dyn Fn(BuildEvent<'_>) + Sync),
) -> Result<LayerOutcome> {
    let compression = match kind {
        LayerKind::Ignored => {
            return Ok(LayerOutcome::Skipped {
                reason: "not a layer (prefetch artifact)".to_string(),
            })
        }
        LayerKind::Unsupported
            if options.zstd_frames
                && LayerCompression::of_media_type(&layer.media_type)
                    == Some(LayerCompression::Zstd) =>
        {
            LayerCompression::Zstd
        }
        LayerKind::Unsupported => {
            return Ok(LayerOutcome::Skipped {
                reason: format!("compressed in an unsupported format ({})", layer.media_type),
            })
        }
        LayerKind::Indexable(c) => c,
    };
    let size = u64::try_from(layer.size).unwrap_or(0);
    if size < options.min_layer_size {
        return Ok(LayerOutcome::Skipped {
            reason: format!(
                "layer size {size} is below the minimum layer size {}",
                options.min_layer_size
            ),
        });
    }
    if let Some(reused) = reuse.and_then(|lookup| lookup(layer, options.span_size)) {
        let outcome = LayerOutcome::Reused {
            descriptor: reused.descriptor,
            ztoc_bytes: reused.bytes,
        };
        events(BuildEvent::LayerDone {
            layer,
            outcome: &outcome,
        });
        return Ok(outcome);
    }
    let digest = layer.sha256().map_err(|source| Error::Format {
        context: format!("layer descriptor {}", layer.digest),
        source,
    })?;
    events(BuildEvent::LayerStarted { layer });
    let blob = source.open_blob(layer).map_err(|source| Error::Source {
        context: format!("opening layer {}", layer.digest),
        source,
    })?;
    let layer_options = LayerOptions {
        span_size: options.span_size,
        compression,
        expect: Some((digest, size)),
        source_verifies_digest: source.verifies_digests(),
    };
    let progress = |read| events(BuildEvent::LayerProgress { layer, read });
    let ztoc = match build_layer_ztoc(blob, &layer_options, &layer.digest, &progress) {
        Ok(ztoc) => ztoc,
        Err(Error::NotIndexable { reason, .. }) => {
            let outcome = LayerOutcome::Skipped { reason };
            events(BuildEvent::LayerDone {
                layer,
                outcome: &outcome,
            });
            return Ok(outcome);
        }
        Err(error) => return Err(error),
    };
    tracing::info!(layer = %layer.digest, ztoc = %ztoc.digest, spans = ztoc.ztoc.compression.span_digests.len(), "layer indexed");
    let descriptor = ztoc_descriptor(layer, &ztoc, options.span_size, options.optimize_xattrs);
    let outcome = LayerOutcome::Built {
        descriptor,
        ztoc: Box::new(ztoc),
    };
    events(BuildEvent::LayerDone {
        layer,
        outcome: &outcome,
    });
    Ok(outcome)
}

#[cfg(test)]
pub(crate) mod tests;
