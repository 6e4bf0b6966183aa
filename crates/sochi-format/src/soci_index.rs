//! The SOCI index manifest (docs/format.md §4).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::oci::{media_types, Descriptor, ImageManifest};
use crate::ztoc::BUILD_TOOL_IDENTIFIER;

/// Annotation keys of SOCI artifacts (docs/format.md §4.1).
pub mod annotations {
    /// On a zTOC / prefetch descriptor: the layer it indexes.
    pub const LAYER_DIGEST: &str = "com.amazon.soci.image-layer-digest";
    /// On a zTOC descriptor: the layer's media type (capital T).
    pub const LAYER_MEDIA_TYPE: &str = "com.amazon.soci.image-layer-mediaType";
    /// On a zTOC descriptor: the span size it was built with.
    pub const SPAN_SIZE: &str = "com.amazon.soci.span-size";
    /// On a zTOC descriptor: the layer has no xattrs (`--optimizations xattr`).
    pub const DISABLE_XATTRS: &str = "com.amazon.soci.disable-xattrs";
    /// On the index: who built it.
    pub const BUILD_TOOL: &str = "com.amazon.soci.build-tool-identifier";
    /// v2: on the image manifest, the SOCI index digest.
    pub const INDEX_DIGEST: &str = "com.amazon.soci.index-digest";
    /// v2: on the SOCI index descriptor, the image manifest digest.
    pub const IMAGE_MANIFEST_DIGEST: &str = "com.amazon.soci.image-manifest-digest";
}

/// SOCI index manifest version, signalled only by `config.mediaType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexVersion {
    /// Bound to its image through `subject`, found via referrers.
    V1,
    /// Bound through the image manifest's `com.amazon.soci.index-digest`.
    V2,
}

impl IndexVersion {
    /// The config media type (= artifact type) of this version.
    pub fn media_type(self) -> &'static str {
        match self {
            IndexVersion::V1 => media_types::SOCI_INDEX_V1,
            IndexVersion::V2 => media_types::SOCI_INDEX_V2,
        }
    }
}

/// The 2-byte config blob every SOCI index points at.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// A SOCI index: the zTOC (and prefetch) descriptors of one image manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SociIndex {
    /// v1 or v2.
    pub version: IndexVersion,
    /// zTOC descriptors in layer order, then prefetch descriptors.
    pub blobs: Vec<Descriptor>,
    /// v1 only: the image manifest (media type, digest, size only).
    pub subject: Option<Descriptor>,
    /// Index annotations (the build tool id).
    pub annotations: BTreeMap<String, String>,
}

impl SociIndex {
    /// A new index with the reference's build tool annotation.
    pub fn new(version: IndexVersion, blobs: Vec<Descriptor>, subject: Option<Descriptor>) -> Self {
        let mut annotations = BTreeMap::new();
        annotations.insert(
            annotations::BUILD_TOOL.to_string(),
            BUILD_TOOL_IDENTIFIER.to_string(),
        );
        let subject = subject.map(|s| Descriptor {
            media_type: s.media_type,
            digest: s.digest,
            size: s.size,
            ..Descriptor::default()
        });
        SociIndex {
            version,
            blobs,
            subject,
            annotations,
        }
    }

    /// The config descriptor: `{}` with the version's media type.
    pub fn config_descriptor(&self) -> Descriptor {
        Descriptor::of(self.version.media_type(), EMPTY_CONFIG)
    }

    /// The manifest as the reference encodes it (docs/format.md §4.2, §4.3).
    pub fn to_manifest(&self) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: media_types::OCI_MANIFEST.to_string(),
            artifact_type: None,
            config: self.config_descriptor(),
            layers: Some(self.blobs.clone()),
            subject: match self.version {
                IndexVersion::V1 => self.subject.clone(),
                IndexVersion::V2 => None,
            },
            annotations: self.annotations.clone(),
        }
    }

    /// The Go-canonical bytes of the index manifest.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_manifest().to_go_json()
    }

    /// Decodes an index manifest; refuses unknown config media types.
    pub fn from_bytes(bytes: &[u8]) -> Result<SociIndex> {
        let manifest = ImageManifest::from_json(bytes)?;
        let version = match manifest.config.media_type.as_str() {
            media_types::SOCI_INDEX_V1 => IndexVersion::V1,
            media_types::SOCI_INDEX_V2 => IndexVersion::V2,
            other => {
                return Err(Error::Invalid {
                    what: "soci index",
                    detail: format!("unknown index version (config media type {other:?})"),
                })
            }
        };
        Ok(SociIndex {
            version,
            blobs: manifest.layers.unwrap_or_default(),
            subject: manifest.subject,
            annotations: manifest.annotations,
        })
    }

    /// The zTOC descriptors (not the prefetch ones).
    pub fn ztocs(&self) -> impl Iterator<Item = &Descriptor> {
        self.blobs
            .iter()
            .filter(|d| d.media_type == media_types::ZTOC)
    }

    /// The prefetch artifact descriptors (docs/format.md §3.8).
    pub fn prefetches(&self) -> impl Iterator<Item = &Descriptor> {
        self.blobs
            .iter()
            .filter(|d| d.media_type == media_types::SOCI_PREFETCH)
    }

    /// The zTOC descriptor of a layer, if indexed.
    pub fn ztoc_for_layer(&self, layer_digest: &str) -> Option<&Descriptor> {
        self.ztocs().find(|d| {
            d.annotations
                .get(annotations::LAYER_DIGEST)
                .map(String::as_str)
                == Some(layer_digest)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_V1: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/index-v1/index.json"
    );

    #[test]
    fn fixture_v1_index_round_trips() {
        let bytes = std::fs::read(FIXTURE_V1).unwrap();
        let index = SociIndex::from_bytes(&bytes).unwrap();
        assert_eq!(index.version, IndexVersion::V1);
        assert_eq!(index.ztocs().count(), 3);
        assert_eq!(index.to_bytes(), bytes);
    }

    #[test]
    fn unknown_index_version_is_refused() {
        let bad = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":2},"layers":[]}"#;
        assert!(SociIndex::from_bytes(bad).is_err());
    }
}
