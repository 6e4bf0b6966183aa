//! Prefetch artifacts as the reference builds them (`soci create
//! --prefetch-file`, docs/format.md §3.8): the files named at build time
//! become, per layer, ranges of spans to fetch before the layer is mounted.
//!
//! 1. Each path is cleaned like a tar name (`Clean("/" + p)`, leading `/`
//!    dropped), so `/x`, `./x`, `x/` and `a/../x` all mean `x`.
//! 2. The layers that have a zTOC are searched from the top (last) layer
//!    down; the first TOC entry of a layer whose *raw* name equals the
//!    cleaned path wins. Names are not cleaned: an entry stored as `./x` or
//!    `x/` (a directory, as tar writes it) is never found.
//! 3. Its spans are `SpanOf(offset)..=SpanOf(offset + size)` (the end
//!    clamped to the start), whatever the entry's type: a directory, a
//!    link or an empty file is the one span holding its offset.
//! 4. A layer's ranges are sorted and merged where they overlap or touch
//!    ([`PrefetchArtifact::merged`]), and each layer with ranges gets one
//!    artifact; its descriptors follow all the zTOC descriptors in the
//!    index, in layer order.
//!
//! A path found in no layer is not an error: the reference logs a warning
//! and goes on, and so does this (a `warn` event), reporting it as
//! [`PrefetchPathReport::found`] `None`.

use std::collections::HashMap;

use sochi_format::{
    annotations, media_types, Descriptor, Digest, LoadOrder, PrefetchArtifact, PrefetchSpan,
    SpanGeometry, Ztoc,
};

use crate::error::{Error, Result};
use crate::extract::clean_name;

/// One layer's prefetch artifact, made by [`build_prefetch`].
#[derive(Clone, Debug)]
pub struct PrefetchBlob {
    /// The layer it is for.
    pub layer: Descriptor,
    /// Its descriptor as the index lists it.
    pub descriptor: Descriptor,
    /// The artifact.
    pub artifact: PrefetchArtifact,
    /// Its bytes (the blob).
    pub bytes: Vec<u8>,
}

impl PrefetchBlob {
    /// `artifact` of `layer`, encoded, with the descriptor the index lists.
    fn new(layer: &Descriptor, artifact: PrefetchArtifact) -> PrefetchBlob {
        let bytes = artifact.to_bytes();
        PrefetchBlob {
            layer: layer.clone(),
            descriptor: prefetch_descriptor(layer, &bytes),
            artifact,
            bytes,
        }
    }
}

/// Where one prefetch path was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchHit {
    /// The layer whose zTOC has the entry.
    pub layer: Digest,
    /// First span of the entry.
    pub start_span: i32,
    /// Last span of the entry (inclusive).
    pub end_span: i32,
}

/// What became of one prefetch path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefetchPathReport {
    /// The path as given.
    pub path: String,
    /// The path as searched for (cleaned).
    pub cleaned: String,
    /// Where it was found; `None` when no layer has it.
    pub found: Option<PrefetchHit>,
}

/// The prefetch artifacts of one image, and what became of each path.
#[derive(Clone, Debug, Default)]
pub struct PrefetchBuild {
    /// One per layer with ranges, in layer order.
    pub blobs: Vec<PrefetchBlob>,
    /// One per path, in the order given.
    pub paths: Vec<PrefetchPathReport>,
    /// Layers a load order names that the image has not, or that have no
    /// zTOC: their runs are left out.
    pub unmatched_layers: Vec<String>,
}

/// A prefetch path as the reference searches for it: `Clean("/" + path)`
/// with the leading `/` dropped (`/a/./b/../c/` → `a/c`, `/` → ``).
pub fn clean_prefetch_path(path: &str) -> String {
    // Cleaning only removes whole components, so UTF-8 in, UTF-8 out.
    String::from_utf8_lossy(&clean_name(path.as_bytes())).into_owned()
}

/// Prefetch paths as the reference's CLI reads them: each trimmed of
/// white space, the empty ones dropped.
pub fn trim_prefetch_paths<S: AsRef<str>>(paths: impl IntoIterator<Item = S>) -> Vec<String> {
    paths
        .into_iter()
        .map(|p| p.as_ref().trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The paths of a `--prefetch-files-json` file: a JSON array of strings,
/// read as Go's `json.Unmarshal` into `[]string` reads it (`null` is no
/// paths, a `null` element an empty path), then trimmed and the empty ones
/// dropped.
///
/// # Errors
///
/// The bytes are not such a JSON array.
pub fn prefetch_paths_from_json(bytes: &[u8]) -> Result<Vec<String>> {
    let paths: Option<Vec<Option<String>>> =
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "a JSON array of prefetch paths",
            source,
        })?;
    Ok(trim_prefetch_paths(
        paths.unwrap_or_default().into_iter().flatten(),
    ))
}

/// The descriptor an index lists for a prefetch artifact (docs/format.md
/// §3.8): its media type and the layer digest annotation, nothing else.
pub fn prefetch_descriptor(layer: &Descriptor, bytes: &[u8]) -> Descriptor {
    let mut descriptor = Descriptor::of(media_types::SOCI_PREFETCH, bytes);
    descriptor.annotations.insert(
        annotations::LAYER_DIGEST.to_string(),
        layer.digest.to_string(),
    );
    descriptor
}

/// Builds the prefetch artifacts of `paths` (as given; cleaned here) over
/// the layers of one image manifest, bottom first, each with its zTOC if
/// it has one.
pub fn build_prefetch(paths: &[String], layers: &[(&Descriptor, Option<&Ztoc>)]) -> PrefetchBuild {
    let mut build = PrefetchBuild::default();
    if paths.is_empty() {
        return build;
    }
    // The reference keys layers by digest; a layer listed twice has the
    // same zTOC and gets the same artifact twice.
    let mut geometries: HashMap<&str, Option<SpanGeometry<'_>>> = HashMap::new();
    let mut ranges: HashMap<&str, Vec<PrefetchSpan>> = HashMap::new();
    for path in paths {
        let cleaned = clean_prefetch_path(path);
        let mut found = None;
        'layers: for (layer, ztoc) in layers.iter().rev() {
            let Some(ztoc) = ztoc else { continue };
            let Some(entry) = ztoc.toc.iter().find(|e| e.name == cleaned.as_bytes()) else {
                continue;
            };
            let digest = layer.digest.as_str();
            let geometry = geometries.entry(digest).or_insert_with(|| {
                ztoc.span_geometry()
                    .map_err(|error| {
                        let error = sochi_format::error_chain(&error);
                        tracing::warn!(layer = %layer.digest, %error, "prefetch: cannot read the spans of the layer's zTOC");
                    })
                    .ok()
            });
            // As the reference does when it cannot read the zinfo: warn, and
            // search no further down.
            let Some(spans) = geometry.as_ref().and_then(|g| entry_spans(g, entry)) else {
                tracing::warn!(layer = %layer.digest, %path, "prefetch: the entry's spans do not fit the layer's zTOC");
                break 'layers;
            };
            ranges.entry(digest).or_default().push(PrefetchSpan {
                start_span: spans.0,
                end_span: spans.1,
                priority: 0,
            });
            found = Some(PrefetchHit {
                layer: layer.digest.clone(),
                start_span: spans.0,
                end_span: spans.1,
            });
            break;
        }
        if found.is_none() {
            tracing::warn!(path = %path, "prefetch file {path} not found in any layer");
        }
        build.paths.push(PrefetchPathReport {
            path: path.clone(),
            cleaned,
            found,
        });
    }
    for (layer, _) in layers {
        let Some(layer_ranges) = ranges.get(layer.digest.as_str()) else {
            continue;
        };
        let Some(artifact) = PrefetchArtifact::merged(layer_ranges.iter().copied()) else {
            continue;
        };
        let blob = PrefetchBlob::new(layer, artifact);
        tracing::info!(layer = %layer.digest, prefetch = %blob.descriptor.digest, ranges = blob.artifact.prefetch_spans.len(), "prefetch artifact built");
        build.blobs.push(blob);
    }
    build
}

/// Builds prefetch artifacts from a recorded load order (docs/prefetch.md)
/// over the layers of one image manifest, bottom first, each with its
/// zTOC if it has one.
///
/// Unlike [`build_prefetch`], a layer's ranges keep the order of first
/// use: each run's uncompressed bytes are mapped to the spans of the
/// layer's zTOC (which may have another span size than the recording's),
/// spans listed by an earlier run are left out, and a range that
/// continues the one before it is merged into it. Each range carries the
/// position of its run in the whole load order as its `priority` (lower
/// first), which the reference parses and ignores: the artifact stays
/// valid for it, and sochi fetches in that order.
pub fn build_load_order_prefetch(
    order: &LoadOrder,
    layers: &[(&Descriptor, Option<&Ztoc>)],
) -> PrefetchBuild {
    let mut build = PrefetchBuild::default();
    for layer in &order.layers {
        let known = layers
            .iter()
            .any(|(d, ztoc)| d.digest.as_str() == layer.digest && ztoc.is_some());
        if !known && !build.unmatched_layers.contains(&layer.digest) {
            tracing::warn!(layer = %layer.digest, "the load order names a layer that the image has not, or that has no zTOC: its reads are not prefetched");
            build.unmatched_layers.push(layer.digest.clone());
        }
    }
    let mut done: Vec<&str> = Vec::new();
    for (layer, ztoc) in layers {
        let digest = layer.digest.as_str();
        let Some(ztoc) = ztoc else { continue };
        if done.contains(&digest) {
            continue;
        }
        done.push(digest);
        let geometry = match ztoc.span_geometry() {
            Ok(geometry) => geometry,
            Err(error) => {
                let error = sochi_format::error_chain(&error);
                tracing::warn!(layer = %digest, %error, "load order: cannot read the spans of the layer's zTOC");
                continue;
            }
        };
        let mut seen = vec![false; geometry.span_count()];
        let mut ranges: Vec<PrefetchSpan> = Vec::new();
        for (position, run) in order.runs_of(digest) {
            if run.start_offset >= geometry.uncompressed_archive_size() {
                continue;
            }
            let first = geometry.span_of(run.start_offset).index();
            let last = geometry
                .span_of(run.end_offset.saturating_sub(1).max(run.start_offset))
                .index();
            let priority = i64::try_from(position).unwrap_or(i64::MAX);
            for span in first..=last.min(seen.len().saturating_sub(1)) {
                let Some(seen) = seen.get_mut(span) else {
                    break;
                };
                if std::mem::replace(seen, true) {
                    continue;
                }
                let Ok(span) = i32::try_from(span) else { break };
                match ranges.last_mut() {
                    Some(range) if range.end_span.checked_add(1) == Some(span) => {
                        range.end_span = span;
                    }
                    _ => ranges.push(PrefetchSpan {
                        start_span: span,
                        end_span: span,
                        priority,
                    }),
                }
            }
        }
        if ranges.is_empty() {
            continue;
        }
        let artifact = PrefetchArtifact {
            version: sochi_format::PREFETCH_ARTIFACT_VERSION.to_string(),
            prefetch_spans: ranges,
        };
        let blob = PrefetchBlob::new(layer, artifact);
        tracing::info!(layer = %digest, prefetch = %blob.descriptor.digest, ranges = blob.artifact.prefetch_spans.len(), "prefetch artifact built from the load order");
        build.blobs.push(blob);
    }
    build
}

/// `SpanOf(offset)` and `SpanOf(offset + size)`, the end clamped to the
/// start, as Go `int32` span ids; `None` when the entry's offsets or spans
/// do not fit (never for a zTOC sochi or the reference built).
fn entry_spans(
    geometry: &SpanGeometry<'_>,
    entry: &sochi_format::FileMetadata,
) -> Option<(i32, i32)> {
    let offset = u64::try_from(entry.uncompressed_offset).ok()?;
    let end = offset.checked_add(u64::try_from(entry.uncompressed_size).ok()?)?;
    let start_span = i32::try_from(geometry.span_of(offset).index()).ok()?;
    let end_span = i32::try_from(geometry.span_of(end).index()).ok()?;
    Some((start_span, end_span.max(start_span)))
}

#[cfg(test)]
mod tests;
