//! Where image blobs come from. The builder defines the trait it needs;
//! sochi-image implements it (a registry, an OCI layout, and tees that copy
//! what is read into a layout or an upload).

use std::io::Read;

use sochi_format::{
    is_image_index, is_index_media_type, Descriptor, ImageIndex, ImageManifest, Platform,
};

use crate::error::{Error, Result, SourceError};

/// Read access to the blobs of one image.
pub trait ImageSource: Sync {
    /// Reads a small blob (manifest, index, config) whole, verified against
    /// the descriptor's digest and size.
    fn read_blob(&self, descriptor: &Descriptor) -> std::result::Result<Vec<u8>, SourceError>;
    /// Streams a (layer) blob; the reader is verified by the caller.
    fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> std::result::Result<Box<dyn Read + Send + '_>, SourceError>;
    /// Whether the blob can be read (a layout may hold only some platforms).
    fn has_blob(&self, descriptor: &Descriptor) -> bool;
    /// Whether the streams of [`ImageSource::open_blob`] check the blob's
    /// digest themselves and fail at the end on a mismatch (a registry
    /// client does): the builder then does not hash the layer a second time.
    fn verifies_digests(&self) -> bool {
        false
    }
}

/// Which platforms of a multi-platform image to index.
#[derive(Clone, Debug, Default)]
pub enum PlatformSelection {
    /// The host's platform (or a single-manifest image's own).
    #[default]
    Host,
    /// These platforms.
    Some(Vec<Platform>),
    /// Every platform of the image.
    All,
}

/// One platform-specific image manifest of an image.
#[derive(Clone, Debug)]
pub struct PlatformManifest {
    /// Its descriptor (with the platform filled in).
    pub descriptor: Descriptor,
    /// The decoded manifest.
    pub manifest: ImageManifest,
    /// The platform it is for.
    pub platform: Platform,
}

pub(crate) fn read_blob(source: &dyn ImageSource, d: &Descriptor, what: &str) -> Result<Vec<u8>> {
    source.read_blob(d).map_err(|source| Error::Source {
        context: format!("reading {what} {}", d.digest),
        source,
    })
}

fn format_err(context: String) -> impl FnOnce(sochi_format::Error) -> Error {
    move |source| Error::Format { context, source }
}

/// The platform of a single manifest, read from its config.
pub fn manifest_platform(source: &dyn ImageSource, manifest: &ImageManifest) -> Result<Platform> {
    let config = read_blob(source, &manifest.config, "image config")?;
    Platform::from_image_config(&config).map_err(format_err(format!(
        "image config {}",
        manifest.config.digest
    )))
}

/// The image manifests to index, in the image's order.
pub fn select_manifests(
    source: &dyn ImageSource,
    image: &Descriptor,
    selection: &PlatformSelection,
) -> Result<Vec<PlatformManifest>> {
    let bytes = read_blob(source, image, "image")?;
    if !is_image_index(&image.media_type, &bytes) {
        let manifest = ImageManifest::from_json(&bytes)
            .map_err(format_err(format!("image manifest {}", image.digest)))?;
        let platform = manifest_platform(source, &manifest)?;
        if let PlatformSelection::Some(wanted) = selection {
            if !wanted.iter().any(|w| w.matches(&platform)) {
                return Err(Error::Invalid(format!(
                    "image {} is for {}, not for the platforms asked",
                    image.digest,
                    platform.to_spec_string()
                )));
            }
        }
        let mut descriptor = image.clone();
        descriptor.platform = Some(platform.clone());
        return Ok(vec![PlatformManifest {
            descriptor,
            manifest,
            platform,
        }]);
    }
    let index = ImageIndex::from_json(&bytes)
        .map_err(format_err(format!("image index {}", image.digest)))?;
    let host = [Platform::host()];
    let mut out = Vec::new();
    for d in index.manifests() {
        if d.artifact_type.is_some() || is_index_media_type(&d.media_type) {
            continue;
        }
        let Some(platform) = d.platform.clone() else {
            continue;
        };
        let wanted = match selection {
            PlatformSelection::All => true,
            PlatformSelection::Host => host.iter().any(|h| h.matches(&platform)),
            PlatformSelection::Some(list) => list.iter().any(|w| w.matches(&platform)),
        };
        if !wanted {
            continue;
        }
        let bytes = read_blob(source, d, "image manifest")?;
        let manifest = ImageManifest::from_json(&bytes)
            .map_err(format_err(format!("image manifest {}", d.digest)))?;
        out.push(PlatformManifest {
            descriptor: d.clone(),
            manifest,
            platform,
        });
        if matches!(selection, PlatformSelection::Host) {
            break;
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "image index {} has no manifest for the platforms asked",
            image.digest
        )));
    }
    Ok(out)
}
