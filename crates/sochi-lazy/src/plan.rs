//! What mounting an image takes, worked out before anything is mounted:
//! the image manifest for the platform, its SOCI index (found the way the
//! reference snapshotter finds it, spec §5.2) and the zTOC of each layer
//! that has one (spec §5.3).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures_util::future::try_join_all;
use sochi_format::{media_types, Descriptor, ImageManifest, Platform, Ztoc};
use sochi_registry::{Client, DiscoveryOptions, Reference};

/// Where the image's index came from, for logs and `--json` output.
#[derive(Clone, Debug)]
pub struct IndexSource {
    /// Digest of the SOCI index manifest.
    pub digest: String,
    /// How it was found (v2 annotation, referrers, ...).
    pub found_by: String,
}

/// One layer of the image and, if the index has one, its zTOC.
#[derive(Clone, Debug)]
pub struct PlannedLayer {
    /// The layer's descriptor in the image manifest.
    pub descriptor: Descriptor,
    /// The layer's zTOC, checked against its descriptor in the index.
    pub ztoc: Option<Arc<Ztoc>>,
    /// Why the layer has no zTOC, when it has none.
    pub no_ztoc_reason: Option<String>,
}

/// An image ready to be mounted.
#[derive(Clone, Debug)]
pub struct ImagePlan {
    /// The repository the image (and its blobs) live in.
    pub repository: Reference,
    /// The platform's image manifest.
    pub manifest: Descriptor,
    /// Its layers, bottom first.
    pub layers: Vec<PlannedLayer>,
    /// The SOCI index used, if one was found.
    pub index: Option<IndexSource>,
}

impl ImagePlan {
    /// Layers that will be mounted lazily.
    pub fn lazy_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.ztoc.is_some()).count()
    }
}

/// Resolves `reference` for `platform`, finds its SOCI index and fetches
/// the zTOCs (concurrently). An image without an index is planned with
/// every layer unpacked locally.
pub async fn plan_image(
    client: &Client,
    reference: &Reference,
    platform: &Platform,
    discovery: &DiscoveryOptions,
) -> Result<ImagePlan> {
    let (manifest_descriptor, bytes) = client
        .resolve_platform(reference, platform)
        .await
        .with_context(|| format!("resolving {reference}"))?;
    let manifest = ImageManifest::from_json(&bytes)
        .with_context(|| format!("decoding the image manifest {}", manifest_descriptor.digest))?;
    let discovered = client
        .discover_soci_index(reference, &manifest_descriptor.digest, discovery)
        .await
        .with_context(|| {
            format!(
                "looking for the SOCI index of {}@{}",
                reference.repository, manifest_descriptor.digest
            )
        })?;
    let Some(discovered) = discovered else {
        tracing::info!(image = %manifest_descriptor.digest, "no SOCI index: every layer is unpacked locally");
        let layers = manifest
            .layers()
            .iter()
            .map(|layer| PlannedLayer {
                descriptor: layer.clone(),
                ztoc: None,
                no_ztoc_reason: Some("the image has no SOCI index".into()),
            })
            .collect();
        return Ok(ImagePlan {
            repository: reference.clone(),
            manifest: manifest_descriptor,
            layers,
            index: None,
        });
    };
    let index = &discovered.index;
    let fetches = manifest.layers().iter().map(|layer| async move {
        let Some(ztoc_descriptor) = index.ztoc_for_layer(&layer.digest) else {
            return Ok::<_, anyhow::Error>(PlannedLayer {
                descriptor: layer.clone(),
                ztoc: None,
                no_ztoc_reason: Some("the SOCI index has no zTOC for it (small layer?)".into()),
            });
        };
        let bytes = client
            .read_blob(reference, ztoc_descriptor)
            .await
            .with_context(|| {
                format!(
                    "fetching the zTOC {} of layer {}",
                    ztoc_descriptor.digest, layer.digest
                )
            })?;
        let ztoc = Ztoc::from_bytes(&bytes).with_context(|| {
            format!(
                "decoding the zTOC {} of layer {}",
                ztoc_descriptor.digest, layer.digest
            )
        })?;
        check_ztoc_fits_layer(&ztoc, layer)?;
        Ok(PlannedLayer {
            descriptor: layer.clone(),
            ztoc: Some(Arc::new(ztoc)),
            no_ztoc_reason: None,
        })
    });
    let layers = try_join_all(fetches).await?;
    Ok(ImagePlan {
        repository: reference.clone(),
        manifest: manifest_descriptor,
        layers,
        index: Some(IndexSource {
            digest: discovered.descriptor.digest.clone(),
            found_by: format!("{:?}", discovered.found_by),
        }),
    })
}

/// A zTOC must describe a layer of the layer's size and a compression the
/// layer has (spec §1.3); anything else is a zTOC for another layer.
fn check_ztoc_fits_layer(ztoc: &Ztoc, layer: &Descriptor) -> Result<()> {
    if ztoc.compressed_archive_size != layer.size {
        bail!(
            "the zTOC of layer {} describes {} compressed bytes, the layer has {}",
            layer.digest,
            ztoc.compressed_archive_size,
            layer.size
        );
    }
    let zstd = [media_types::OCI_LAYER_ZSTD, media_types::DOCKER_LAYER_ZSTD];
    if zstd.contains(&layer.media_type.as_str()) {
        bail!(
            "layer {} is zstd-compressed, which zTOCs cannot describe",
            layer.digest
        );
    }
    Ok(())
}
