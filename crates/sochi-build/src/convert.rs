//! An image → a SOCI-enabled image (SOCI index manifest v2, docs/format.md §4.6):
//! the image's index gains one SOCI index descriptor per platform, and each
//! indexed image manifest carries `com.amazon.soci.index-digest`.
//!
//! The conversion decides what to write; it does no output I/O. Callers
//! copy [`ConvertOutput::source_blobs`] from the source and write
//! [`ConvertOutput::new_blobs`] in order (children before parents), to an
//! OCI layout or a registry.

use sochi_format::{
    annotations, is_image_index, is_index_media_type, media_types, Descriptor, ImageIndex,
    ImageManifest, IndexVersion, EMPTY_CONFIG,
};

use crate::error::{Error, Result};
use crate::index::{build_index, BuildEvent, BuildOptions, BuiltIndex, ReuseLookup};
use crate::source::{read_blob, select_manifests, ImageSource, PlatformSelection};

/// What a conversion produced.
#[derive(Debug)]
pub struct ConvertOutput {
    /// The new top-level OCI image index (the SOCI-enabled image).
    pub image: Descriptor,
    /// Blobs made by the conversion, children before parents; the last is
    /// the image index.
    pub new_blobs: Vec<(Descriptor, Vec<u8>)>,
    /// Blobs of the source image the new image still references.
    pub source_blobs: Vec<Descriptor>,
    /// One SOCI index per indexed platform.
    pub indexes: Vec<BuiltIndex>,
}

/// Converts `image` (a manifest or an index) from `source`.
pub fn convert(
    source: &dyn ImageSource,
    image: &Descriptor,
    selection: &PlatformSelection,
    options: &BuildOptions,
    reuse: Option<ReuseLookup<'_>>,
    events: &(dyn Fn(BuildEvent<'_>) + Sync),
) -> Result<ConvertOutput> {
    let image_bytes = read_blob(source, image, "image")?;
    let wanted = select_manifests(source, image, selection)?;
    let mut index = if wanted.len() > 1 || is_image_index(&image.media_type, &image_bytes) {
        let mut index = ImageIndex::from_json(&image_bytes).map_err(|source| Error::Format {
            context: format!("image index {}", image.digest),
            source,
        })?;
        index.media_type = media_types::OCI_INDEX.to_string();
        index
    } else {
        let mut descriptor = image.clone();
        descriptor.platform = wanted.first().map(|w| w.platform.clone());
        ImageIndex {
            schema_version: 2,
            media_type: media_types::OCI_INDEX.to_string(),
            manifests: Some(vec![descriptor]),
            ..ImageIndex::default()
        }
    };

    let mut indexes = Vec::new();
    for platform_manifest in &wanted {
        match build_index(
            source,
            platform_manifest,
            IndexVersion::V2,
            options,
            reuse,
            events,
        ) {
            Ok(built) => indexes.push(built),
            Err(Error::Invalid(reason)) if reason.starts_with("no ztocs created") => {
                tracing::warn!(platform = %platform_manifest.platform.to_spec_string(), "{reason}; platform not indexed");
            }
            Err(e) => return Err(e),
        }
    }
    if indexes.is_empty() {
        return Err(Error::Invalid(format!(
            "no ztocs created for any platform of image {}",
            image.digest
        )));
    }

    let mut new_blobs: Vec<(Descriptor, Vec<u8>)> = Vec::new();
    let mut source_blobs: Vec<Descriptor> = Vec::new();
    for built in &indexes {
        for (_, descriptor, ztoc) in built.built_ztocs() {
            new_blobs.push((descriptor.clone(), ztoc.bytes.clone()));
        }
        for blob in &built.prefetch.blobs {
            new_blobs.push((blob.descriptor.clone(), blob.bytes.clone()));
        }
    }
    let config = Descriptor::of(media_types::SOCI_INDEX_V2, EMPTY_CONFIG);
    new_blobs.push((config, EMPTY_CONFIG.to_vec()));
    for built in &indexes {
        new_blobs.push((built.descriptor.clone(), built.bytes.clone()));
    }

    // Rewrite every image manifest we have (docs/format.md §4.6 step 3).
    let mut manifests = index.manifests.take().unwrap_or_default();
    rewrite_manifests(
        source,
        &mut manifests,
        &indexes,
        &mut new_blobs,
        &mut source_blobs,
    )?;

    // Add (or replace) one SOCI index descriptor per platform (step 4).
    add_index_descriptors(&mut manifests, &indexes);
    index.manifests = Some(manifests);
    let index_bytes = index.to_go_json();
    let image_descriptor = Descriptor::of(media_types::OCI_INDEX, &index_bytes);
    new_blobs.push((image_descriptor.clone(), index_bytes));
    source_blobs.dedup_by(|a, b| a.digest == b.digest);

    Ok(ConvertOutput {
        image: image_descriptor,
        new_blobs,
        source_blobs,
        indexes,
    })
}

/// Rewrites, in place, each image manifest of the index the source has:
/// OCI media types, and the index-digest annotation of its platform's new
/// SOCI index. What the new image keeps from the source goes to
/// `source_blobs`; the rewritten manifests go to `new_blobs`.
fn rewrite_manifests(
    source: &dyn ImageSource,
    manifests: &mut [Descriptor],
    indexes: &[BuiltIndex],
    new_blobs: &mut Vec<(Descriptor, Vec<u8>)>,
    source_blobs: &mut Vec<Descriptor>,
) -> Result<()> {
    for descriptor in manifests.iter_mut() {
        let is_soci = matches!(
            descriptor.artifact_type.as_deref(),
            Some(media_types::SOCI_INDEX_V1 | media_types::SOCI_INDEX_V2)
        );
        if is_soci || is_index_media_type(&descriptor.media_type) || !source.has_blob(descriptor) {
            if source.has_blob(descriptor) {
                source_blobs.push(descriptor.clone());
            }
            continue;
        }
        let bytes = read_blob(source, descriptor, "image manifest")?;
        let mut manifest = ImageManifest::from_json(&bytes).map_err(|source| Error::Format {
            context: format!("image manifest {}", descriptor.digest),
            source,
        })?;
        source_blobs.push(descriptor.clone());
        source_blobs.push(manifest.config.clone());
        source_blobs.extend(manifest.layers().iter().cloned());
        manifest.media_type = media_types::OCI_MANIFEST.to_string();
        manifest.config.media_type = media_types::OCI_CONFIG.to_string();
        if let Some(built) = indexes
            .iter()
            .find(|b| b.image.descriptor.digest == descriptor.digest)
        {
            manifest.annotations.insert(
                annotations::INDEX_DIGEST.to_string(),
                built.descriptor.digest.to_string(),
            );
        }
        let rewritten = manifest.to_go_json();
        let new_descriptor = Descriptor {
            annotations: manifest.annotations.clone(),
            platform: descriptor.platform.clone(),
            urls: descriptor.urls.clone(),
            artifact_type: descriptor.artifact_type.clone(),
            data: None,
            ..Descriptor::of(media_types::OCI_MANIFEST, &rewritten)
        };
        new_blobs.push((new_descriptor.clone(), rewritten));
        *descriptor = new_descriptor;
    }
    Ok(())
}

/// Puts each platform's SOCI index descriptor in the image index, in place
/// of that platform's old v2 one if there is one.
fn add_index_descriptors(manifests: &mut Vec<Descriptor>, indexes: &[BuiltIndex]) {
    for built in indexes {
        let image_digest = match manifests.iter().find(|d| {
            d.annotations
                .get(annotations::INDEX_DIGEST)
                .map(String::as_str)
                == Some(built.descriptor.digest.as_str())
        }) {
            Some(d) => d.digest.clone(),
            None => built.image.descriptor.digest.clone(),
        };
        let mut soci = built.descriptor.clone();
        soci.annotations.insert(
            annotations::IMAGE_MANIFEST_DIGEST.to_string(),
            image_digest.to_string(),
        );
        soci.platform = Some(built.image.platform.clone());
        soci.artifact_type = Some(media_types::SOCI_INDEX_V2.to_string());
        let existing = manifests.iter_mut().find(|d| {
            d.artifact_type.as_deref() == Some(media_types::SOCI_INDEX_V2)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.matches(&built.image.platform))
        });
        match existing {
            Some(slot) => *slot = soci,
            None => manifests.push(soci),
        }
    }
}
