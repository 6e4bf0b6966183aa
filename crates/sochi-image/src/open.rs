//! Opening an image for reading, from an OCI layout or a registry.

use std::sync::Arc;

use sochi_build::ImageSource;
use sochi_format::Descriptor;
use sochi_registry::ClientConfig;

use crate::error::{Context as _, Result};
use crate::image_ref::ImageRef;
use crate::layout_source::LayoutSource;
use crate::registry::Registry;

/// How many async workers a registry client of this crate runs on.
pub const REGISTRY_THREADS: usize = 2;

/// An image opened for reading.
pub struct OpenedImage {
    /// Where its blobs come from.
    pub source: Box<dyn ImageSource>,
    /// The image (manifest or index) descriptor.
    pub image: Descriptor,
    /// The layout directory its layers can be read from later, if local
    /// (recorded in the artifacts database); empty for a registry.
    pub layer_source: String,
    /// The registry client, when the image is in a registry (it keeps its
    /// runtime alive as long as the source).
    pub registry: Option<Arc<Registry>>,
}

impl std::fmt::Debug for OpenedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedImage")
            .field("image", &self.image.digest)
            .field("layer_source", &self.layer_source)
            .finish_non_exhaustive()
    }
}

/// Opens `image`: a layout is read from disk, a registry image through a
/// client configured by `registry`.
pub fn open_image(registry: &ClientConfig, image: &ImageRef) -> Result<OpenedImage> {
    match image {
        ImageRef::Layout { path, tag } => {
            let layout = sochi_store::OciLayout::open(path)
                .with_context(|| format!("opening the layout {}", path.display()))?;
            let descriptor = layout
                .resolve(tag.as_deref())
                .with_context(|| format!("finding the image in {image}"))?;
            Ok(OpenedImage {
                source: Box::new(LayoutSource(layout)),
                image: descriptor,
                layer_source: path
                    .canonicalize()
                    .unwrap_or(path.clone())
                    .display()
                    .to_string(),
                registry: None,
            })
        }
        ImageRef::Registry(reference) => {
            let client = Arc::new(Registry::connect(registry.clone(), REGISTRY_THREADS)?);
            let (descriptor, _) = client.resolve(reference)?;
            Ok(OpenedImage {
                source: Box::new(client.source(reference)),
                image: descriptor,
                layer_source: String::new(),
                registry: Some(client),
            })
        }
    }
}
