//! `sochi convert SRC DST`: the SOCI-enabled image (index manifest v2),
//! as `soci convert --standalone --format oci-dir` writes it.

use std::fs;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;
use sochi_build::convert;
use sochi_format::{media_types, Descriptor, ImageIndex};
use sochi_store::{OciLayout, REF_NAME};

use super::{BuildArgs, Global};
use crate::image_ref::ImageRef;
use crate::layout_source::LayoutSource;
use crate::output::print_json_line;
use crate::progress::LayerBars;

/// Flags of `convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    build: BuildArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The source image: oci:PATH[:TAG].
    source: String,
    /// The destination: oci:PATH[:TAG] (created if missing).
    destination: String,
}

#[derive(Serialize)]
struct Report {
    image: String,
    size: i64,
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
pub fn run(_global: &Global, args: Args) -> Result<ExitCode> {
    let (options, selection) = args.build.options()?;
    let ImageRef::Layout {
        path: src_path,
        tag: src_tag,
    } = ImageRef::parse(&args.source)?;
    let ImageRef::Layout {
        path: dst_path,
        tag: dst_tag,
    } = ImageRef::parse(&args.destination)?;
    let src = OciLayout::open(&src_path)?;
    let image = src.resolve(src_tag.as_deref())?;
    let source = LayoutSource(src.clone());
    let bars = LayerBars::new();
    let output = convert(&source, &image, &selection, &options, None, &|e| {
        bars.on_event(e)
    })
    .with_context(|| format!("converting {}", args.source))?;

    let dst = OciLayout::create(&dst_path)?;
    for blob in &output.source_blobs {
        copy_blob(&src, &dst, blob)?;
    }
    for (descriptor, bytes) in &output.new_blobs {
        dst.write_blob(bytes)
            .with_context(|| format!("writing {} to {}", descriptor.digest, dst_path.display()))?;
    }
    let mut top = output.image.clone();
    if let Some(tag) = &dst_tag {
        top.annotations.insert(REF_NAME.to_string(), tag.clone());
    }
    let mut index = dst.index().unwrap_or_default();
    let mut manifests: Vec<Descriptor> = index.manifests.take().unwrap_or_default();
    // Replace whatever carried the same tag (or, untagged, everything).
    manifests.retain(|d| match &dst_tag {
        Some(tag) => d.annotations.get(REF_NAME) != Some(tag),
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

    let report = Report {
        image: output.image.digest.clone(),
        size: output.image.size,
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
        println!("image {}", report.image);
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies a blob between layouts: a hard link when both are on one file
/// system, else a verified copy.
fn copy_blob(src: &OciLayout, dst: &OciLayout, descriptor: &Descriptor) -> Result<()> {
    let digest = descriptor.sha256()?;
    if dst.contains(&digest) {
        return Ok(());
    }
    let from = src.blob_path(&digest);
    let to = dst.blob_path(&digest);
    if fs::hard_link(&from, &to).is_ok() {
        return Ok(());
    }
    let mut file = src.open_blob(&digest)?;
    dst.write_blob_from(&digest, &mut file).with_context(|| {
        format!(
            "copying {} into {}",
            descriptor.digest,
            dst.root().display()
        )
    })?;
    Ok(())
}
