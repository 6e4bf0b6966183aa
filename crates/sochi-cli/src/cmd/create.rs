//! `sochi create IMAGE`: build the v1 SOCI index of an image and keep it,
//! with its zTOCs, in the local store.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;
use sochi_build::{build_index, has_xattrs, select_manifests, LayerOutcome, ReuseLookup};
use sochi_format::{annotations, media_types, Descriptor, IndexVersion, Ztoc, EMPTY_CONFIG};
use sochi_store::{ArtifactEntry, ArtifactKind, Store};

use super::{now, open_image, BuildArgs, Global};
use crate::image_ref::ImageRef;
use crate::output::print_json_line;
use crate::progress::LayerBars;

/// Flags of `create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    build: BuildArgs,
    /// Print one JSON document per index instead of text.
    #[arg(long)]
    json: bool,
    /// The image: a registry reference, or oci:PATH[:TAG].
    image: String,
}

#[derive(Serialize)]
struct LayerReport {
    layer: String,
    ztoc: Option<String>,
    skipped: Option<String>,
    reused: bool,
}

#[derive(Serialize)]
struct IndexReport {
    index: String,
    size: i64,
    platform: String,
    manifest: String,
    layers: Vec<LayerReport>,
}

/// Runs `create`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let image_ref = ImageRef::parse(&args.image)?;
    let (options, selection) = args.build.options()?;
    let store = global.store()?;
    let opened = open_image(global, &image_ref)?;
    let (source, image) = (opened.source.as_ref(), &opened.image);
    let manifests = select_manifests(source, image, &selection)?;
    let bars = LayerBars::new();
    let reuse_fn = |layer: &Descriptor, span_size: u64| {
        reuse_ztoc(&store, layer, span_size, options.optimize_xattrs)
    };
    let reuse: Option<ReuseLookup<'_>> = (!args.build.force).then_some(&reuse_fn);
    for manifest in &manifests {
        let built = build_index(source, manifest, IndexVersion::V1, &options, reuse, &|e| {
            bars.on_event(e)
        })
        .with_context(|| format!("building the SOCI index of {image_ref}"))?;
        let created_at = now();
        let platform = built.image.platform.to_spec_string();
        let mut entries = Vec::new();
        for (layer, descriptor, ztoc) in built.built_ztocs() {
            store.content().write_blob(&ztoc.bytes)?;
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
        store.content().write_blob(EMPTY_CONFIG)?;
        store.content().write_blob(&built.bytes)?;
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
        store.artifacts().put(entries)?;

        let layers: Vec<LayerReport> = built
            .layers
            .iter()
            .map(|(layer, outcome)| match outcome {
                LayerOutcome::Built { descriptor, .. } => LayerReport {
                    layer: layer.digest.clone(),
                    ztoc: Some(descriptor.digest.clone()),
                    skipped: None,
                    reused: false,
                },
                LayerOutcome::Reused { descriptor } => LayerReport {
                    layer: layer.digest.clone(),
                    ztoc: Some(descriptor.digest.clone()),
                    skipped: None,
                    reused: true,
                },
                LayerOutcome::Skipped { reason } => LayerReport {
                    layer: layer.digest.clone(),
                    ztoc: None,
                    skipped: Some(reason.clone()),
                    reused: false,
                },
            })
            .collect();
        if args.json {
            print_json_line(&IndexReport {
                index: built.descriptor.digest.clone(),
                size: built.descriptor.size,
                platform,
                manifest: built.image.descriptor.digest.clone(),
                layers,
            })?;
        } else {
            for l in &layers {
                match (&l.ztoc, &l.skipped) {
                    (Some(z), _) if l.reused => {
                        println!("layer {} -> ztoc {z} (already exists)", l.layer)
                    }
                    (Some(z), _) => println!("layer {} -> ztoc {z}", l.layer),
                    (None, Some(reason)) => {
                        println!("layer {} -> ztoc skipped - {reason}", l.layer)
                    }
                    (None, None) => {}
                }
            }
            println!("index {} ({platform})", built.descriptor.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A zTOC already in the store for this layer and span size, as the index
/// should list it (docs/format.md §3.1 step 5).
fn reuse_ztoc(
    store: &Store,
    layer: &Descriptor,
    span_size: u64,
    optimize_xattrs: bool,
) -> Option<Descriptor> {
    let entries = store.artifacts().list().ok()?;
    let entry = entries.iter().rev().find(|e| {
        e.kind == ArtifactKind::SociLayer
            && e.original_digest == layer.digest
            && e.span_size == span_size
    })?;
    let digest = sochi_format::Sha256Digest::parse(&entry.digest).ok()?;
    let bytes = store.content().read_blob(&digest).ok()?;
    let mut descriptor = Descriptor::of(media_types::ZTOC, &bytes);
    descriptor
        .annotations
        .insert(annotations::LAYER_DIGEST.to_string(), layer.digest.clone());
    descriptor.annotations.insert(
        annotations::LAYER_MEDIA_TYPE.to_string(),
        layer.media_type.clone(),
    );
    descriptor
        .annotations
        .insert(annotations::SPAN_SIZE.to_string(), span_size.to_string());
    if optimize_xattrs {
        let ztoc = Ztoc::from_bytes(&bytes).ok()?;
        if !has_xattrs(&ztoc.toc) {
            descriptor
                .annotations
                .insert(annotations::DISABLE_XATTRS.to_string(), "true".to_string());
        }
    }
    Some(descriptor)
}
