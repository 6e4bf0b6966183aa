//! The one table of layer media types: which descriptors are layers, and
//! how each is compressed. The index builder, the lazy mount and the local
//! unpack all read it, so they agree on what a layer is.
//!
//! It follows containerd's `images.IsLayerType` and `DiffCompression`
//! (which the reference uses, docs/format.md §3.1): a layer type is an OCI
//! `application/vnd.oci.image.layer.*` or a Docker rootfs diff type; its
//! compression is the `+gzip`/`+zstd` suffix of an OCI type (the
//! non-distributable ones included), `.gzip` of a Docker type (foreign ones
//! included), else none.

use crate::oci::media_types;
use crate::CompressionAlgorithm;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip (one or more members).
    Gzip,
    /// A plain tar.
    Uncompressed,
    /// zstd (one or more frames).
    Zstd,
}

/// Prefixes of the layer media types (containerd `IsLayerType`).
const OCI_LAYER_PREFIX: &str = "application/vnd.oci.image.layer.";
const DOCKER_LAYER_PREFIX: &str = "application/vnd.docker.image.rootfs.";

/// The gzip magic (RFC 1952, ID1 ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The zstd frame magic (RFC 8878, 0xFD2FB528 little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Whether `media_type` names a layer (containerd `IsLayerType`); the
/// SOCI prefetch artifact, listed among layers by some tools, is not one.
pub fn is_layer_media_type(media_type: &str) -> bool {
    media_type.starts_with(OCI_LAYER_PREFIX) || media_type.starts_with(DOCKER_LAYER_PREFIX)
}

impl LayerCompression {
    /// The compression `media_type` declares, or `None` when it is not a
    /// layer type or one whose compression sochi does not know.
    pub fn of_media_type(media_type: &str) -> Option<LayerCompression> {
        if !is_layer_media_type(media_type) {
            return None;
        }
        if media_type.starts_with(OCI_LAYER_PREFIX) {
            let (base, suffix) = media_type
                .split_once('+')
                .map_or((media_type, None), |(base, suffix)| (base, Some(suffix)));
            if !base.ends_with(".tar") {
                return None;
            }
            return match suffix {
                None => Some(LayerCompression::Uncompressed),
                Some("gzip") => Some(LayerCompression::Gzip),
                Some("zstd") => Some(LayerCompression::Zstd),
                Some(_) => None,
            };
        }
        if media_type.ends_with(".tar.gzip") {
            Some(LayerCompression::Gzip)
        } else if media_type.ends_with(".tar.zstd") {
            Some(LayerCompression::Zstd)
        } else if media_type.ends_with(".tar") {
            // containerd calls this "unknown" and detects the compression
            // from the bytes when it unpacks; the reference indexes it as
            // a plain tar.
            Some(LayerCompression::Uncompressed)
        } else {
            None
        }
    }

    /// Guesses from the first bytes of a blob: the gzip or zstd magic, or
    /// a plain tar.
    pub fn sniff(first_bytes: &[u8]) -> LayerCompression {
        if first_bytes.starts_with(&GZIP_MAGIC) {
            LayerCompression::Gzip
        } else if first_bytes.starts_with(&ZSTD_MAGIC) {
            LayerCompression::Zstd
        } else {
            LayerCompression::Uncompressed
        }
    }

    /// The zTOC's compression algorithm, if a zTOC can describe the layer.
    pub fn algorithm(self) -> Option<CompressionAlgorithm> {
        match self {
            LayerCompression::Gzip => Some(CompressionAlgorithm::Gzip),
            LayerCompression::Uncompressed => Some(CompressionAlgorithm::Uncompressed),
            LayerCompression::Zstd => None,
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => media_types::OCI_LAYER_GZIP,
            LayerCompression::Uncompressed => media_types::OCI_LAYER_TAR,
            LayerCompression::Zstd => media_types::OCI_LAYER_ZSTD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_type_has_its_compression() {
        for (media_type, expected) in [
            (media_types::OCI_LAYER_GZIP, Some(LayerCompression::Gzip)),
            (
                media_types::OCI_LAYER_TAR,
                Some(LayerCompression::Uncompressed),
            ),
            (media_types::OCI_LAYER_ZSTD, Some(LayerCompression::Zstd)),
            (media_types::DOCKER_LAYER_GZIP, Some(LayerCompression::Gzip)),
            (
                media_types::DOCKER_LAYER_TAR,
                Some(LayerCompression::Uncompressed),
            ),
            (media_types::DOCKER_LAYER_ZSTD, Some(LayerCompression::Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(LayerCompression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                Some(LayerCompression::Uncompressed),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Some(LayerCompression::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(LayerCompression::Gzip),
            ),
            ("application/vnd.oci.image.layer.v1.tar+lz4", None),
            ("application/vnd.oci.image.layer.v1.squashfs", None),
            (media_types::SOCI_PREFETCH, None),
            (media_types::OCI_CONFIG, None),
        ] {
            assert_eq!(
                LayerCompression::of_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
        assert!(is_layer_media_type(
            "application/vnd.oci.image.layer.v1.tar+lz4"
        ));
        assert!(!is_layer_media_type(media_types::SOCI_PREFETCH));
    }

    #[test]
    fn magic_bytes_tell_the_compression() {
        assert_eq!(
            LayerCompression::sniff(&[0x1f, 0x8b, 8]),
            LayerCompression::Gzip
        );
        assert_eq!(
            LayerCompression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            LayerCompression::Zstd
        );
        assert_eq!(
            LayerCompression::sniff(b"etc/"),
            LayerCompression::Uncompressed
        );
        assert_eq!(LayerCompression::sniff(&[]), LayerCompression::Uncompressed);
    }
}
