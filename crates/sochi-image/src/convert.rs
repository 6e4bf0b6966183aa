//! `convert`: the SOCI-enabled image (index manifest v2), as `soci
//! convert` makes it. Source and destination are each a registry
//! reference or an OCI layout (`oci:PATH[:TAG]`), in any mix.
//!
//! Each layer is read once from the source, by the indexer; the same stream
//! fills a layout destination, or is uploaded to a registry on another
//! host. A registry destination gets only the blobs it lacks (mounted
//! within one registry, without a download), children before parents, and
//! the tag last, so a failed run never leaves a tag pointing at missing
//! blobs. A new layout destination is written beside it and renamed into
//! place at the end, so a failed run leaves no half-made layout.

use std::fs;
use std::path::Path;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sochi_build::{convert, BuildEvent, BuildOptions, ConvertOutput, PlatformSelection};
use sochi_format::{media_types, Descriptor, Digest, ImageIndex};
use sochi_registry::{ClientConfig, Reference};
use sochi_store::{OciLayout, StagedLayout, REF_NAME};

use crate::error::{Context as _, Error, Result};
use crate::image_ref::ImageRef;
use crate::open::{OpenedImage, REGISTRY_THREADS};
use crate::registry::{is_manifest, Registry};
use crate::tee_source::TeeToLayout;
use crate::tee_upload::{LazyBlob, TeeToRegistry};

/// What `convert` does.
#[derive(Debug)]
pub struct ConvertRequest<'a> {
    /// The source image as named.
    pub source: &'a ImageRef,
    /// The destination: a registry reference with a tag, or a layout.
    pub destination: &'a ImageRef,
    /// Index build options.
    pub options: BuildOptions,
    /// Which platforms.
    pub selection: PlatformSelection,
    /// Blobs uploaded at once to a registry destination.
    pub max_concurrent_uploads: usize,
}

/// What `convert` made. Serialized as `sochi convert --json` prints it:
/// `{"image","size","destination","indexes":[…]}`.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The new image (index) digest.
    pub image: Digest,
    /// Its size.
    pub size: i64,
    /// Where it went.
    pub destination: String,
    /// The SOCI index of each platform.
    pub indexes: Vec<ConvertedIndex>,
}

/// One platform's SOCI index in a [`ConvertReport`].
#[derive(Debug, Clone, Serialize)]
pub struct ConvertedIndex {
    /// The SOCI index manifest digest.
    pub index: Digest,
    /// The platform.
    pub platform: String,
    /// The image manifest it indexes.
    pub manifest: Digest,
    /// zTOCs it lists.
    pub ztocs: usize,
    /// Prefetch artifacts it lists (not in the JSON when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub prefetch_artifacts: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Converts the image `opened` (opened from `request.source`) and writes
/// the result to `request.destination`; `registry` configures the client
/// of a registry destination.
pub fn convert_image(
    registry: &ClientConfig,
    opened: &OpenedImage,
    request: &ConvertRequest<'_>,
    events: &(dyn Fn(BuildEvent<'_>) + Sync),
) -> Result<ConvertReport> {
    let (src_ref, dst_ref) = (request.source, request.destination);
    if let ImageRef::Registry(r) = dst_ref {
        if r.digest.is_some() {
            return Err(Error::Invalid(format!(
                "the destination {r} must be a tag, not a digest"
            )));
        }
    }
    let staged = match dst_ref {
        ImageRef::Layout { path, .. } => Some(
            StagedLayout::new(path)
                .with_context(|| format!("preparing the layout {}", path.display()))?,
        ),
        ImageRef::Registry(_) => None,
    };
    // Between two registries, the indexer's stream also feeds the upload.
    let tee_upload = match (src_ref, dst_ref, &opened.registry) {
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
    let (options, selection) = (&request.options, &request.selection);
    let output = match (&staged, &tee_upload) {
        (Some(staged), _) => {
            let dst = OciLayout::create(staged.work_dir())
                .with_context(|| format!("creating the layout {dst_ref}"))?;
            let tee = TeeToLayout {
                inner: opened.source.as_ref(),
                dst,
            };
            convert(&tee, &opened.image, selection, options, None, events)
        }
        (None, Some(tee)) => convert(tee, &opened.image, selection, options, None, events),
        (None, None) => convert(
            opened.source.as_ref(),
            &opened.image,
            selection,
            options,
            None,
            events,
        ),
    }
    .with_context(|| format!("converting {src_ref}"))?;
    if let Some(tee) = &tee_upload {
        tee.finish_uploads()?;
    }
    match (dst_ref, staged) {
        (ImageRef::Layout { tag, .. }, Some(staged)) => {
            write_layout(opened, &output, staged.work_dir(), tag.as_deref())?;
            staged
                .commit()
                .with_context(|| format!("putting the layout {dst_ref} in place"))?;
        }
        (ImageRef::Registry(dst), _) => push_registry(
            registry,
            src_ref,
            opened,
            &output,
            dst,
            request.max_concurrent_uploads,
        )?,
        (ImageRef::Layout { .. }, None) => {
            return Err(Error::Invalid("a layout destination was not staged".into()))
        }
    }
    Ok(ConvertReport {
        image: output.image.digest.clone(),
        size: output.image.size,
        destination: dst_ref.to_string(),
        indexes: output
            .indexes
            .iter()
            .map(|b| ConvertedIndex {
                index: b.descriptor.digest.clone(),
                platform: b.image.platform.to_spec_string(),
                manifest: b.image.descriptor.digest.clone(),
                ztocs: b.index.ztocs().count(),
                prefetch_artifacts: b.index.prefetches().count(),
            })
            .collect(),
    })
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
    let dst = OciLayout::create(path)
        .with_context(|| format!("creating the layout {}", path.display()))?;
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
    dst.set_index(&index)
        .with_context(|| format!("writing the index of {}", path.display()))?;
    Ok(())
}

fn copy_into_layout(opened: &OpenedImage, dst: &OciLayout, descriptor: &Descriptor) -> Result<()> {
    let digest = descriptor
        .sha256()
        .with_context(|| format!("blob {}", descriptor.digest))?;
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
            .with_context(|| format!("reading {}", descriptor.digest))?;
        dst.write_blob(&bytes).with_context(|| {
            format!("writing {} to {}", descriptor.digest, dst.root().display())
        })?;
        return Ok(());
    }
    let mut reader = opened
        .source
        .open_blob(descriptor)
        .with_context(|| format!("opening {}", descriptor.digest))?;
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
    registry: &ClientConfig,
    src_ref: &ImageRef,
    opened: &OpenedImage,
    output: &ConvertOutput,
    dst: &Reference,
    concurrency: usize,
) -> Result<()> {
    let registry = match &opened.registry {
        Some(r) => r.clone(),
        None => std::sync::Arc::new(Registry::connect(registry.clone(), REGISTRY_THREADS)?),
    };
    let top = ImageIndex::from_json(
        output
            .new_blobs
            .last()
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default(),
    )
    .context("decoding the converted image index")?;
    let referenced: Vec<&str> = top.manifests().iter().map(|d| d.digest.as_str()).collect();
    push_source_blobs(&registry, src_ref, opened, output, dst, concurrency)?;

    // Original manifests the new index still lists (other platforms).
    for d in output
        .source_blobs
        .iter()
        .filter(|d| is_manifest(d) && referenced.contains(&d.digest.as_str()))
    {
        let bytes = opened
            .source
            .read_blob(d)
            .with_context(|| format!("reading {}", d.digest))?;
        registry
            .block_on(registry.client.put_manifest(
                &dst.with_digest(&d.digest),
                &d.media_type,
                &bytes,
            ))
            .with_context(|| format!("pushing manifest {}", d.digest))?;
    }

    push_new_content(&registry, output, dst, concurrency)
}

/// Copies the source's layers and configs the destination lacks: mounted
/// within one registry, else streamed from the source registry or layout.
fn push_source_blobs(
    registry: &Registry,
    src_ref: &ImageRef,
    opened: &OpenedImage,
    output: &ConvertOutput,
    dst: &Reference,
    concurrency: usize,
) -> Result<()> {
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
    registry.block_on(
        stream::iter(blobs.into_iter().map(|d| {
            let client = registry.client.clone();
            let dst = dst.clone();
            let mount_from = same_registry.clone();
            let src_ref = src_ref.clone();
            let layout = layout.clone();
            async move {
                let context = || format!("copying {} to {dst}", d.digest);
                if client
                    .blob_size(&dst, &d.digest)
                    .await
                    .with_context(context)?
                    .is_some()
                {
                    return Ok(());
                }
                match (&src_ref, layout) {
                    (ImageRef::Registry(src), _) => {
                        // Mounted within one registry; else streamed, and
                        // only if the registry wants the bytes.
                        let body = LazyBlob::new(client.clone(), src.clone(), d.digest.to_string());
                        client
                            .push_blob_stream(&dst, d, body, mount_from.as_deref())
                            .await
                            .with_context(context)?;
                    }
                    (ImageRef::Layout { .. }, Some(layout)) => {
                        let digest = d.sha256().with_context(context)?;
                        let file = tokio::fs::File::open(layout.blob_path(&digest))
                            .await
                            .with_context(context)?;
                        client
                            .push_blob_stream(&dst, d, file, None)
                            .await
                            .with_context(context)?;
                    }
                    (ImageRef::Layout { .. }, None) => {
                        return Err(Error::Invalid(format!(
                            "{}: the source layout is gone",
                            context()
                        )))
                    }
                }
                Ok(())
            }
        }))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>(),
    )?;
    Ok(())
}

/// Pushes what the conversion made, children before parents: the new
/// blobs, the new manifests by digest, and the image index under the tag
/// last.
fn push_new_content(
    registry: &Registry,
    output: &ConvertOutput,
    dst: &Reference,
    concurrency: usize,
) -> Result<()> {
    let (last, rest) = output
        .new_blobs
        .split_last()
        .ok_or_else(|| Error::Invalid("the conversion produced nothing".into()))?;
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
