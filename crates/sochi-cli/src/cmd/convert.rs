//! `sochi convert SRC DST`: the SOCI-enabled image (index manifest v2), as
//! `soci convert` makes it. Source and destination are each a registry
//! reference or an OCI layout (`oci:PATH[:TAG]`), in any mix.
//!
//! Each layer is read once from the source, by the indexer; the same stream
//! fills a layout destination, or is uploaded to a registry on another
//! host. A registry destination gets only the blobs it lacks (mounted
//! within one registry, without a download), children before parents, and
//! the tag last, so a failed run never leaves a tag pointing at missing
//! blobs.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sochi_build::{convert, ConvertOutput};
use sochi_format::{media_types, Descriptor, ImageIndex};
use sochi_registry::Reference;
use sochi_store::{OciLayout, StagedLayout, REF_NAME};

use super::{open_image, BuildArgs, Global, OpenedImage};
use crate::image_ref::ImageRef;
use crate::output::print_json_line;
use crate::progress::LayerBars;
use crate::registry::is_manifest;
use crate::tee_source::TeeToLayout;
use crate::tee_upload::{LazyBlob, TeeToRegistry};

/// Flags of `convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    build: BuildArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Blobs uploaded at once to a registry destination.
    #[arg(long, default_value_t = 3)]
    max_concurrent_uploads: usize,
    /// The source image: a registry reference or oci:PATH[:TAG].
    source: String,
    /// The destination: a registry reference with a tag (no digest), or
    /// oci:PATH[:TAG] (created if missing).
    destination: String,
}

#[derive(Serialize)]
struct Report {
    image: String,
    size: i64,
    destination: String,
    indexes: Vec<IndexReport>,
}

#[derive(Serialize)]
struct IndexReport {
    index: String,
    platform: String,
    manifest: String,
    ztocs: usize,
}

/// Runs `convert`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let (options, selection) = args.build.options()?;
    let src_ref = ImageRef::parse(&args.source)?;
    let dst_ref = ImageRef::parse(&args.destination)?;
    if let ImageRef::Registry(r) = &dst_ref {
        if r.digest.is_some() {
            bail!("the destination {r} must be a tag, not a digest");
        }
    }
    let opened = open_image(global, &src_ref)?;
    // A new layout destination is written aside and renamed into place at
    // the end: a failed convert leaves no half-made layout.
    let staged = match &dst_ref {
        ImageRef::Layout { path, .. } => Some(StagedLayout::new(path)?),
        ImageRef::Registry(_) => None,
    };
    let bars = LayerBars::new();
    let events = |e: sochi_build::BuildEvent<'_>| bars.on_event(e);

    // Between two registries, the indexer's stream also feeds the upload.
    let tee_upload = match (&src_ref, &dst_ref, &opened.registry) {
        (ImageRef::Registry(src), ImageRef::Registry(dst), Some(registry))
            if src.registry != dst.registry =>
        {
            Some(TeeToRegistry {
                inner: opened.source.as_ref(),
                registry: registry.clone(),
                dst: dst.clone(),
                uploads: Default::default(),
            })
        }
        _ => None,
    };
    let output = match (&dst_ref, &tee_upload) {
        (ImageRef::Layout { .. }, _) => {
            let work_dir = staged.as_ref().map(StagedLayout::work_dir);
            let dst = OciLayout::create(work_dir.context("no staged layout")?)?;
            let tee = TeeToLayout {
                inner: opened.source.as_ref(),
                dst,
            };
            convert(&tee, &opened.image, &selection, &options, None, &events)
        }
        (ImageRef::Registry(_), Some(tee)) => {
            convert(tee, &opened.image, &selection, &options, None, &events)
        }
        (ImageRef::Registry(_), None) => convert(
            opened.source.as_ref(),
            &opened.image,
            &selection,
            &options,
            None,
            &events,
        ),
    }
    .with_context(|| format!("converting {src_ref}"))?;
    if let Some(tee) = &tee_upload {
        tee.finish_uploads()?;
    }

    match &dst_ref {
        ImageRef::Layout { tag, .. } => {
            let staged = staged.context("no staged layout")?;
            write_layout(&opened, &output, staged.work_dir(), tag.as_deref())?;
            staged.commit()?;
        }
        ImageRef::Registry(dst) => push_registry(
            global,
            &src_ref,
            &opened,
            &output,
            dst,
            args.max_concurrent_uploads,
        )?,
    }

    let report = Report {
        image: output.image.digest.clone(),
        size: output.image.size,
        destination: dst_ref.to_string(),
        indexes: output
            .indexes
            .iter()
            .map(|b| IndexReport {
                index: b.descriptor.digest.clone(),
                platform: b.image.platform.to_spec_string(),
                manifest: b.image.descriptor.digest.clone(),
                ztocs: b.index.ztocs().count(),
            })
            .collect(),
    };
    if args.json {
        print_json_line(&report)?;
    } else {
        for i in &report.indexes {
            println!("soci index {} ({}, {} ztocs)", i.index, i.platform, i.ztocs);
        }
        println!("image {} -> {}", report.image, report.destination);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the converted image into an OCI layout: source blobs not there
/// yet (the indexer's stream already copied the layers it read), the new
/// blobs, then `index.json`.
fn write_layout(
    opened: &OpenedImage,
    output: &ConvertOutput,
    path: &Path,
    tag: Option<&str>,
) -> Result<()> {
    let dst = OciLayout::create(path)?;
    for blob in &output.source_blobs {
        copy_into_layout(opened, &dst, blob)?;
    }
    for (descriptor, bytes) in &output.new_blobs {
        dst.write_blob(bytes)
            .with_context(|| format!("writing {} to {}", descriptor.digest, path.display()))?;
    }
    let mut top = output.image.clone();
    if let Some(tag) = tag {
        top.annotations
            .insert(REF_NAME.to_string(), tag.to_string());
    }
    let mut index = dst.index().unwrap_or_default();
    let mut manifests: Vec<Descriptor> = index.manifests.take().unwrap_or_default();
    // Replace whatever carried the same tag (or, untagged, everything).
    manifests.retain(|d| match tag {
        Some(tag) => d.annotations.get(REF_NAME).map(String::as_str) != Some(tag),
        None => false,
    });
    manifests.push(top);
    let index = ImageIndex {
        schema_version: 2,
        media_type: media_types::OCI_INDEX.to_string(),
        manifests: Some(manifests),
        ..index
    };
    dst.set_index(&index)?;
    Ok(())
}

fn copy_into_layout(opened: &OpenedImage, dst: &OciLayout, descriptor: &Descriptor) -> Result<()> {
    let digest = descriptor.sha256()?;
    if dst.contains(&digest) {
        return Ok(());
    }
    if let Ok(src) = OciLayout::open(&opened.layer_source) {
        if fs::hard_link(src.blob_path(&digest), dst.blob_path(&digest)).is_ok() {
            return Ok(());
        }
    }
    if is_manifest(descriptor) || descriptor.size < (1 << 20) {
        let bytes = opened
            .source
            .read_blob(descriptor)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", descriptor.digest))?;
        dst.write_blob(&bytes)?;
        return Ok(());
    }
    let mut reader = opened
        .source
        .open_blob(descriptor)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", descriptor.digest))?;
    dst.write_blob_from(&digest, &mut reader).with_context(|| {
        format!(
            "copying {} into {}",
            descriptor.digest,
            dst.root().display()
        )
    })?;
    Ok(())
}

/// Pushes the converted image: missing blobs (mounted or uploaded), then
/// manifests by digest, then the image index under the tag.
fn push_registry(
    global: &Global,
    src_ref: &ImageRef,
    opened: &OpenedImage,
    output: &ConvertOutput,
    dst: &Reference,
    concurrency: usize,
) -> Result<()> {
    let registry = match &opened.registry {
        Some(r) => r.clone(),
        None => std::sync::Arc::new(global.registry()?),
    };
    let top = ImageIndex::from_json(
        output
            .new_blobs
            .last()
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default(),
    )?;
    let referenced: Vec<&str> = top.manifests().iter().map(|d| d.digest.as_str()).collect();
    let same_registry = match src_ref {
        ImageRef::Registry(src) if src.registry == dst.registry => Some(src.repository.clone()),
        _ => None,
    };

    // Source blobs: layers and configs (and manifests the index keeps).
    let blobs: Vec<&Descriptor> = output
        .source_blobs
        .iter()
        .filter(|d| !is_manifest(d))
        .collect();
    let layout = OciLayout::open(&opened.layer_source).ok();
    registry
        .block_on(
            stream::iter(blobs.into_iter().map(|d| {
                let client = registry.client.clone();
                let dst = dst.clone();
                let mount_from = same_registry.clone();
                let src_ref = src_ref.clone();
                let layout = layout.clone();
                async move {
                    if client.blob_size(&dst, &d.digest).await?.is_some() {
                        return Ok(());
                    }
                    match (&src_ref, layout) {
                        (ImageRef::Registry(src), _) => {
                            // Mounted within one registry; else streamed, and
                            // only if the registry wants the bytes.
                            let body = LazyBlob::new(client.clone(), src.clone(), d.digest.clone());
                            client
                                .push_blob_stream(&dst, d, body, mount_from.as_deref())
                                .await?;
                        }
                        (ImageRef::Layout { .. }, Some(layout)) => {
                            let file =
                                tokio::fs::File::open(layout.blob_path(&d.sha256()?)).await?;
                            client.push_blob_stream(&dst, d, file, None).await?;
                        }
                        (ImageRef::Layout { .. }, None) => bail!("source layout is gone"),
                    }
                    anyhow::Ok(())
                }
            }))
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>(),
        )
        .context("copying the image's blobs")?;

    // Original manifests the new index still lists (other platforms).
    for d in output
        .source_blobs
        .iter()
        .filter(|d| is_manifest(d) && referenced.contains(&d.digest.as_str()))
    {
        let bytes = opened
            .source
            .read_blob(d)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", d.digest))?;
        registry.block_on(registry.client.put_manifest(
            &dst.with_digest(&d.digest),
            &d.media_type,
            &bytes,
        ))?;
    }

    // New blobs, then new manifests by digest, then the index by tag.
    let (last, rest) = output
        .new_blobs
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("conversion produced nothing"))?;
    let (manifests, blobs): (Vec<_>, Vec<_>) = rest.iter().partition(|(d, _)| is_manifest(d));
    registry.block_on(
        stream::iter(blobs.into_iter().map(|(d, bytes)| {
            let client = registry.client.clone();
            let dst = dst.clone();
            let bytes = bytes.clone();
            async move {
                client
                    .push_blob(&dst, d, bytes.into(), None)
                    .await
                    .with_context(|| format!("pushing {}", d.digest))
            }
        }))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<_>>(),
    )?;
    for (d, bytes) in manifests {
        registry
            .block_on(registry.client.put_manifest(
                &dst.with_digest(&d.digest),
                &d.media_type,
                bytes,
            ))
            .with_context(|| format!("pushing manifest {}", d.digest))?;
    }
    let (d, bytes) = last;
    registry
        .block_on(registry.client.put_manifest(dst, &d.media_type, bytes))
        .with_context(|| format!("pushing the image index {} as {dst}", d.digest))?;
    Ok(())
}
